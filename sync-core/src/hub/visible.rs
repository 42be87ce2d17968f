//! What one user sees of the hub: the filter of pulls and snapshots
//! under an account (see `access`).

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::owner::owner_of_row;
use super::tables::{HUB_ACCESS, HUB_META};
use super::versions::load_any;
use crate::model::change::ChangeId;
use crate::model::clock::NodeId;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::syncable::Ownership;
use crate::model::value::pk_key;
use crate::store::codec::sequence;

/// What one user sees of the hub: the tables' ownership as recorded.
#[derive(Debug)]
pub(super) struct Visible {
    user: String,
    share_undeclared: bool,
    tables: HashMap<String, Ownership>,
    /// The hub's secret for fingerprints of entries not shown.
    fingerprint_key: String,
}

impl Visible {
    /// The hub's records, for `user` (who also sees the tables that
    /// declare no ownership if `share_undeclared`).
    pub(super) async fn load<C: ConnectionTrait>(
        db: &C,
        user: &str,
        share_undeclared: bool,
    ) -> Result<Self> {
        let q = Query::select()
            .columns([Alias::new("key"), Alias::new("value")])
            .from(Alias::new(HUB_ACCESS.0))
            .to_owned();
        let mut tables = HashMap::new();
        for r in db
            .query_all(&q)
            .await
            .map_err(|e| Error::from(e).or_offline())?
        {
            let (name, record): (String, String) = (r.try_get("", "key")?, r.try_get("", "value")?);
            let ownership = Ownership::from_record(&record).ok_or_else(|| {
                Error::Corrupt(format!(
                    "`{}` records `{record}` for `{name}`",
                    HUB_ACCESS.0
                ))
            })?;
            tables.insert(name, ownership);
        }
        Ok(Visible {
            user: user.to_owned(),
            share_undeclared,
            tables,
            fingerprint_key: fingerprint_key(db).await?,
        })
    }

    /// What a user is told of a log entry that is not theirs, in place of
    /// its change id: a fingerprint of its position and id under the hub's
    /// secret (sequence 0, which no change has). It tells nothing of the
    /// entry, but another entry at that position has another one, so a
    /// device whose cursor sits on such an entry still finds a hub
    /// restored from a backup and written past its cursor again (it keeps
    /// what it was told at its cursor and compares it with what the hub
    /// tells at the next sync).
    pub(super) fn fingerprint(&self, r: &QueryResult) -> Result<ChangeId> {
        let origin: String = r.try_get("", "origin")?;
        Ok(self.fingerprint_of(sequence(r, "hub_seq")?, &origin, sequence(r, "origin_seq")?))
    }

    /// [`Visible::fingerprint`] of the change of `origin` and `origin_seq`
    /// at hub position `hub_seq`.
    pub(super) fn fingerprint_of(&self, hub_seq: u64, origin: &str, origin_seq: u64) -> ChangeId {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(self.fingerprint_key.as_bytes())
            .chain_update(format!("\n{hub_seq}\n{origin}\n{origin_seq}"))
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        ChangeId {
            origin: NodeId(id),
            seq: 0,
        }
    }

    /// The user this hub records as the one who pushed under `origin`.
    pub(super) async fn pusher<C: ConnectionTrait>(
        db: &C,
        origin: NodeId,
    ) -> Result<Option<String>> {
        super::tables::HUB_ORIGINS
            .read(db, &origin.to_string())
            .await
    }

    /// The user this filter is of.
    pub(super) fn user(&self) -> &str {
        &self.user
    }

    /// Whether every user reads `table`'s rows.
    fn shared(&self, table: &str) -> bool {
        match self.tables.get(table) {
            Some(Ownership::Shared) => true,
            Some(Ownership::Owner(_)) => false,
            // A table no install of this release recorded: undeclared.
            Some(Ownership::Undeclared) | None => self.share_undeclared,
        }
    }

    /// Which of these log rows are this
    /// user's: an entry without an owner of a table with owners is the
    /// user's if its row is now.
    pub(super) async fn shown<C: ConnectionTrait>(
        &self,
        db: &C,
        rows: &[QueryResult],
    ) -> Result<Vec<bool>> {
        let mut shown = Vec::with_capacity(rows.len());
        // (row index, table, key text, key) of the entries to look up.
        type Lookup = (usize, String, String, Vec<(String, Value)>);
        let mut lookups: Vec<Lookup> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let owner: Option<String> = r.try_get("", "owner")?;
            let tbl: String = r.try_get("", "tbl")?;
            shown.push(match owner {
                Some(o) => o == self.user,
                None if self.shared(&tbl) => true,
                None => {
                    if let Some(Ownership::Owner(_)) = self.tables.get(&tbl) {
                        let pk: String = r.try_get("", "pk")?;
                        if let Ok(pk) = serde_json::from_str::<Vec<(String, Value)>>(&pk) {
                            let values: Vec<Value> = pk.iter().map(|(_, v)| v.clone()).collect();
                            if let Ok(key) = pk_key(&values) {
                                lookups.push((i, tbl, key, pk));
                            }
                        }
                    }
                    false
                }
            });
        }
        let mut by_table: HashMap<&str, Vec<(Vec<Value>, String)>> = HashMap::new();
        for (_, tbl, key, pk) in &lookups {
            let values = pk.iter().map(|(_, v)| v.clone()).collect();
            by_table.entry(tbl).or_default().push((values, key.clone()));
        }
        let mut states = HashMap::new();
        for (tbl, keys) in by_table {
            for (key, state) in load_any(db, tbl, &keys).await? {
                states.insert((tbl.to_owned(), key), state);
            }
        }
        for (i, tbl, key, pk) in &lookups {
            let Some(Ownership::Owner(column)) = self.tables.get(tbl) else {
                continue;
            };
            if let Some(state) = states.get(&(tbl.clone(), key.clone())) {
                shown[*i] = owner_of_row(column, pk, state) == self.user;
            }
        }
        Ok(shown)
    }

    /// Which rows of `table` may be this user's, as the column `owner`
    /// records their owners (a version row's, a users' row's): none
    /// (`None`), all (`Some(None)`), or those the condition keeps: rows
    /// recorded with this user as owner, and rows recorded without one
    /// (see [`Visible::shows_row`]), of a table with owners.
    pub(super) fn rows_of(&self, table: &str, owner: &str) -> Option<Option<SimpleExpr>> {
        if self.shared(table) {
            return Some(None);
        }
        match self.tables.get(table) {
            Some(Ownership::Owner(_)) => Some(Some(
                Expr::col(Alias::new(owner))
                    .eq(self.user.as_str())
                    .or(Expr::col(Alias::new(owner)).is_null()),
            )),
            _ => None,
        }
    }

    /// Whether every row of `table` is this user's to read (a shared
    /// table).
    pub(super) fn shows_table(&self, table: &str) -> bool {
        self.shared(table)
    }

    /// Whether a row of the snapshot is this user's.
    pub(super) fn shows_row(&self, table: &str, pk: &[(String, Value)], state: &RowState) -> bool {
        match self.tables.get(table) {
            Some(Ownership::Owner(column)) => owner_of_row(column, pk, state) == self.user,
            _ => self.shared(table),
        }
    }
}

/// The hub's secret for fingerprints (see [`Visible::fingerprint`]), made
/// by the first server that needs it: every server on the hub database
/// reads the same one.
async fn fingerprint_key<C: ConnectionTrait>(db: &C) -> Result<String> {
    const KEY: &str = "fingerprint_key";
    if let Some(k) = HUB_META.read(db, KEY).await.map_err(Error::or_offline)? {
        return Ok(k);
    }
    let fresh = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    HUB_META
        .insert_if_missing(db, KEY, &fresh)
        .await
        .map_err(Error::or_offline)?;
    HUB_META
        .read(db, KEY)
        .await
        .map_err(Error::or_offline)?
        .ok_or_else(|| Error::Corrupt(format!("hub meta `{KEY}` vanished")))
}
