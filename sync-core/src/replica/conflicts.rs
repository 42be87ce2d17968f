//! Conflicts held on a replica (`manual` and custom policies): stored with
//! base, local and remote values in `_tidesync_conflicts` until resolved,
//! and their resolution as a new change that syncs like any other.

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Expr, ExprTrait, LockType, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait, Value};
use serde::{Deserialize, Serialize};

use super::Replica;
use super::applying::{begin_applying, end_applying};
use super::capture::{CaptureReport, seal_all};
use super::seal_state::SealState;
use super::tables::{CONFLICTS, OUTBOX};
use super::versions;
use crate::dialect::{self, Place};
use crate::model::change::{Change, ColumnBase, ColumnSpec, Op, TableSpec};
use crate::model::clock::{Hlc, wall_clock_us};
use crate::model::conflict::{ColumnConflict, Resolution};
use crate::model::error::{Error, Result};
use crate::model::typed;
use crate::model::value::{parse_pk_key, pk_key};
use crate::store::codec::{db_sequence, integer_id};
use crate::store::write::{keys_match, lock_rows, value_expr};

/// The columns of [`CONFLICTS`] a [`HeldConflict`] is read from.
const HELD_COLUMNS: [&str; 9] = [
    "id",
    "tbl",
    "pk",
    "col",
    "base",
    "local",
    "local_clock",
    "remote",
    "remote_clock",
];

/// A conflict held on this replica, with its id for [`Replica::resolve`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldConflict {
    /// Id to resolve it by.
    pub id: i64,
    /// The conflict: `local` is this replica's value, `remote` the one the
    /// hub holds.
    pub conflict: ColumnConflict,
}

/// A value as the conflicts table stores it (typed JSON).
fn json(v: &Value) -> Result<String> {
    Ok(typed::to_text(v)?)
}

impl Replica {
    /// Store conflicts the hub held back; a conflict already open on the
    /// same row and column is updated instead of duplicated (unless it
    /// holds a later local edit: a change sent again brings its conflicts
    /// again).
    pub(crate) async fn record_conflicts(&self, conflicts: &[ColumnConflict]) -> Result<Vec<i64>> {
        let tx = self.connection().begin().await?;
        let mut ids = Vec::new();
        for c in conflicts {
            let key = pk_key(&c.pk.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>())?;
            let existing = tx
                .query_one(
                    &Query::select()
                        .column(Alias::new("id"))
                        .from(Alias::new(CONFLICTS))
                        .and_where(Expr::col(Alias::new("tbl")).eq(c.table.as_str()))
                        .and_where(Expr::col(Alias::new("pk")).eq(key.as_str()))
                        .and_where(Expr::col(Alias::new("col")).eq(c.column.as_str()))
                        .to_owned(),
                )
                .await?;
            let base: Option<String> = c.base.as_ref().map(json).transpose()?;
            match existing {
                Some(r) => {
                    let id = integer_id(&r, "id")?;
                    // Each side only moves forward: a change sent again
                    // brings an older conflict of the column again.
                    tx.execute(
                        &Query::update()
                            .table(Alias::new(CONFLICTS))
                            .values([
                                (Alias::new("local"), json(&c.local)?.into()),
                                (Alias::new("local_clock"), c.local_clock.to_string().into()),
                            ])
                            .and_where(Expr::col(Alias::new("id")).eq(id))
                            .and_where(
                                Expr::col(Alias::new("local_clock")).lte(c.local_clock.to_string()),
                            )
                            .to_owned(),
                    )
                    .await?;
                    update_remote(&tx, &c.table, &key, &c.column, &c.remote, c.remote_clock)
                        .await?;
                    ids.push(id);
                }
                None => {
                    tx.execute(
                        &Query::insert()
                            .into_table(Alias::new(CONFLICTS))
                            // Every held column but the generated id.
                            .columns(HELD_COLUMNS[1..].iter().map(|c| Alias::new(*c)))
                            .values_panic([
                                c.table.clone().into(),
                                key.into(),
                                c.column.clone().into(),
                                base.into(),
                                json(&c.local)?.into(),
                                c.local_clock.to_string().into(),
                                json(&c.remote)?.into(),
                                c.remote_clock.to_string().into(),
                            ])
                            .to_owned(),
                    )
                    .await?;
                    let r = tx
                        .query_one(
                            &Query::select()
                                .expr_as(Expr::col(Alias::new("id")).max(), Alias::new("id"))
                                .from(Alias::new(CONFLICTS))
                                .to_owned(),
                        )
                        .await?
                        .ok_or_else(|| Error::Corrupt("conflict not stored".into()))?;
                    ids.push(integer_id(&r, "id")?);
                }
            }
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// The held conflict `id` as stored.
    pub(crate) async fn held(&self, id: i64) -> Result<HeldConflict> {
        self.held_on(self.connection(), id).await
    }

    /// The held conflict `id` as `db` reads it.
    async fn held_on<C: ConnectionTrait>(&self, db: &C, id: i64) -> Result<HeldConflict> {
        let row = db
            .query_one(
                &Query::select()
                    .columns(HELD_COLUMNS.map(Alias::new))
                    .from(Alias::new(CONFLICTS))
                    .and_where(Expr::col(Alias::new("id")).eq(id))
                    .to_owned(),
            )
            .await?
            .ok_or_else(|| Error::Config(format!("no conflict with id {id}")))?;
        self.held_of_row(&row)
    }

    /// Conflicts waiting for a decision, oldest first.
    pub async fn conflicts(&self) -> Result<Vec<HeldConflict>> {
        let q = Query::select()
            .columns(HELD_COLUMNS.map(Alias::new))
            .from(Alias::new(CONFLICTS))
            .order_by(Alias::new("id"), Order::Asc)
            .to_owned();
        let mut out = Vec::new();
        for r in self.connection().query_all(&q).await? {
            out.push(self.held_of_row(&r)?);
        }
        Ok(out)
    }

    /// The held conflict `id`, with the spec of its table and column.
    async fn held_in(
        &self,
        tx: &DatabaseTransaction,
        id: i64,
    ) -> Result<(HeldConflict, TableSpec, ColumnSpec)> {
        let held = self.held_on(tx, id).await?;
        let c = &held.conflict;
        let spec = self
            .tables()
            .find(|t| t.name == c.table)
            .cloned()
            .ok_or_else(|| Error::UnknownTable(c.table.clone()))?;
        let column = spec.column(&c.column).cloned().ok_or_else(|| {
            Error::Config(format!("{}.{}: no such synced column", c.table, c.column))
        })?;
        Ok((held, spec, column))
    }

    /// The table and key of the conflict `id`, read with a lock.
    async fn held_row(&self, tx: &DatabaseTransaction, id: i64) -> Result<(TableSpec, Vec<Value>)> {
        let mut q = Query::select();
        q.columns(["tbl", "pk"].map(Alias::new))
            .from(Alias::new(CONFLICTS))
            .and_where(Expr::col(Alias::new("id")).eq(id));
        if dialect::of_db(tx)?.locks_rows() {
            q.lock(LockType::Update);
        }
        let row = tx
            .query_one(&q)
            .await?
            .ok_or_else(|| Error::Config(format!("no conflict with id {id}")))?;
        let table: String = row.try_get("", "tbl")?;
        let key: String = row.try_get("", "pk")?;
        let spec = self
            .tables()
            .find(|t| t.name == table)
            .cloned()
            .ok_or(Error::UnknownTable(table))?;
        Ok((spec, parse_pk_key(&key)?))
    }

    fn held_of_row(&self, r: &sea_orm::QueryResult) -> Result<HeldConflict> {
        let table: String = r.try_get("", "tbl")?;
        let key: String = r.try_get("", "pk")?;
        let values = parse_pk_key(&key)?;
        let names = self
            .tables()
            .find(|t| t.name == table)
            .map(TableSpec::pk_names)
            .unwrap_or_else(|| (0..values.len()).map(|i| format!("key{i}")).collect());
        let base: Option<String> = r.try_get("", "base")?;
        let local: String = r.try_get("", "local")?;
        let remote: String = r.try_get("", "remote")?;
        let local_clock: String = r.try_get("", "local_clock")?;
        let remote_clock: String = r.try_get("", "remote_clock")?;
        Ok(HeldConflict {
            id: integer_id(r, "id")?,
            conflict: ColumnConflict {
                table,
                pk: names.into_iter().zip(values).collect(),
                column: r.try_get("", "col")?,
                base: base.map(|b| typed::from_text(&b)).transpose()?,
                local: typed::from_text(&local)?,
                local_clock: local_clock.parse()?,
                remote: typed::from_text(&remote)?,
                remote_clock: remote_clock.parse()?,
            },
        })
    }

    /// Resolve a held conflict: keep this replica's value, take the
    /// remote one, or write another. Keeping or writing a value makes a new
    /// change (based on the remote value, so the hub applies it) that syncs
    /// like any other; taking the remote value writes it locally and sends
    /// nothing.
    ///
    /// # Errors
    /// [`Error::Config`] when there is no conflict with that id; an
    /// [`Error::Unrepresentable`] value is refused before anything is
    /// written.
    pub async fn resolve(&self, id: i64, resolution: Resolution) -> Result<()> {
        let tx = self.connection().begin().await?;
        begin_applying(&tx).await?;
        SealState::lock(&tx).await?;
        // Lock the conflict and its row before any plain read: on MySQL
        // (REPEATABLE READ) that read takes the snapshot, which must hold an
        // application write to the row that the lock waited for.
        let (spec, pk) = self.held_row(&tx, id).await?;
        lock_rows(&tx, dialect::of_db(&tx)?, &spec, &[pk]).await?;
        let mut state = SealState::load(&tx).await?;
        // Capture pending local writes first, as a pull does: an edit of the
        // held column made since the conflict was recorded is the local
        // value now, and goes out as a change of its own (rows it cannot
        // capture keep their markers for the next capture).
        seal_all(
            &tx,
            self.handles(),
            &mut state,
            &mut CaptureReport::default(),
        )
        .await?;
        let (held, spec, column) = self.held_in(&tx, id).await?;
        let c = &held.conflict;
        let pk: Vec<Value> = c.pk.iter().map(|(_, v)| v.clone()).collect();
        let key = pk_key(&pk)?;
        let handle = self
            .handles()
            .iter()
            .find(|h| h.spec().name == spec.name)
            .ok_or_else(|| Error::UnknownTable(spec.name.clone()))?;
        let mut versions = versions::open(&tx, handle.as_ref()).await?;
        let mut row_state = versions
            .load(&tx, std::slice::from_ref(&pk))
            .await?
            .remove(&key)
            .unwrap_or_default();
        let local = match row_state.vals.get(&c.column) {
            Some(v) if row_state.is_live() => v.clone(),
            _ => c.local.clone(),
        };
        let (value, change) = match resolution {
            Resolution::TakeRemote => {
                row_state.vals.insert(c.column.clone(), c.remote.clone());
                row_state.clocks.insert(c.column.clone(), c.remote_clock);
                (c.remote.clone(), None)
            }
            Resolution::KeepLocal | Resolution::Value(_) => {
                let value = match resolution {
                    Resolution::Value(v) => v,
                    _ => local,
                };
                let (id, hlc) = state.next(wall_clock_us());
                let change = Change {
                    id,
                    table: spec.name.clone(),
                    pk: c.pk.clone(),
                    op: Op::Update,
                    columns: vec![(c.column.clone(), value.clone())],
                    hlc,
                    base: vec![ColumnBase {
                        column: c.column.clone(),
                        value: Some(c.remote.clone()),
                        clock: Some(c.remote_clock),
                    }],
                };
                row_state.vals.insert(c.column.clone(), value.clone());
                row_state.clocks.insert(c.column.clone(), hlc);
                (value, Some(change))
            }
        };
        write_column(&tx, &spec, &pk, &column, &value).await?;
        versions.save(&tx, &[(&pk, &row_state)]).await?;
        if let Some(change) = change {
            let ids = vec![db_sequence(change.id.seq)?.into()];
            for q in OUTBOX.inserts(tx.get_database_backend(), [(ids, &change)])? {
                tx.execute_raw(q).await?;
            }
        }
        tx.execute(
            &Query::delete()
                .from_table(Alias::new(CONFLICTS))
                .and_where(Expr::col(Alias::new("id")).eq(id))
                .to_owned(),
        )
        .await?;
        state.save(&tx).await?;
        end_applying(&tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// `UPDATE table SET column = value WHERE key = pk` (no-op if the row is
/// gone).
async fn write_column(
    tx: &DatabaseTransaction,
    spec: &TableSpec,
    pk: &[Value],
    column: &ColumnSpec,
    value: &Value,
) -> Result<()> {
    let d = dialect::of_db(tx)?;
    let expr = value_expr(&spec.name, column, value, d)?;
    let q = Query::update()
        .table(Place::of(d, spec).table_ref())
        .value(Alias::new(&column.name), expr)
        .and_where(keys_match(spec, &[pk.to_vec()], d))
        .to_owned();
    tx.execute(&q).await?;
    Ok(())
}

/// Open conflicts of some rows of a table: `(key text, column)` pairs.
pub(crate) async fn open_conflicts(
    tx: &DatabaseTransaction,
    table: &str,
    keys: &[String],
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let q = Query::select()
            .columns([Alias::new("pk"), Alias::new("col")])
            .from(Alias::new(CONFLICTS))
            .and_where(Expr::col(Alias::new("tbl")).eq(table))
            .and_where(Expr::col(Alias::new("pk")).is_in(chunk.iter().cloned()))
            .to_owned();
        for r in tx.query_all(&q).await? {
            out.push((r.try_get("", "pk")?, r.try_get("", "col")?));
        }
    }
    Ok(out)
}

/// The remote value and clock of each held column of some rows of a table,
/// by `(key text, column)` (the latest of several conflicts on one).
pub(crate) async fn held_remotes(
    tx: &DatabaseTransaction,
    table: &str,
    keys: &[String],
) -> Result<HashMap<(String, String), (Value, Hlc)>> {
    let mut out: HashMap<(String, String), (Value, Hlc)> = HashMap::new();
    for chunk in keys.chunks(500) {
        let q = Query::select()
            .columns(["pk", "col", "remote", "remote_clock"].map(Alias::new))
            .from(Alias::new(CONFLICTS))
            .and_where(Expr::col(Alias::new("tbl")).eq(table))
            .and_where(Expr::col(Alias::new("pk")).is_in(chunk.iter().cloned()))
            .to_owned();
        for r in tx.query_all(&q).await? {
            let remote: String = r.try_get("", "remote")?;
            let clock: String = r.try_get("", "remote_clock")?;
            let (value, clock) = (typed::from_text(&remote)?, clock.parse::<Hlc>()?);
            let slot = (r.try_get("", "pk")?, r.try_get("", "col")?);
            if out.get(&slot).is_none_or(|(_, c)| *c < clock) {
                out.insert(slot, (value, clock));
            }
        }
    }
    Ok(out)
}

/// A newer remote value for a held column: keep it on the conflict.
pub(crate) async fn update_remote(
    tx: &DatabaseTransaction,
    table: &str,
    key: &str,
    column: &str,
    value: &Value,
    clock: Hlc,
) -> Result<()> {
    let q = Query::update()
        .table(Alias::new(CONFLICTS))
        .values([
            (Alias::new("remote"), json(value)?.into()),
            (Alias::new("remote_clock"), clock.to_string().into()),
        ])
        .and_where(Expr::col(Alias::new("tbl")).eq(table))
        .and_where(Expr::col(Alias::new("pk")).eq(key))
        .and_where(Expr::col(Alias::new("col")).eq(column))
        .and_where(Expr::col(Alias::new("remote_clock")).lt(clock.to_string()))
        .to_owned();
    tx.execute(&q).await?;
    Ok(())
}
