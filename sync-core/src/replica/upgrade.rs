//! An app upgrade that adds columns to a synced entity.
//!
//! Before the upgrade, a device pulls values of a column its entity does
//! not have yet (another device, upgraded earlier, wrote them): they are
//! kept in the row states, not in the local table. When the entity gains
//! the column, the app's migration adds it to the local table, empty. At
//! the next [`open`](super::ReplicaBuilder::open) the replica fills it from
//! the row states, in an applying session (so the fill is not captured as
//! the user's write): where the local value is NULL, and in every row
//! without a pending marker, whatever the migration put there (a DEFAULT).
//!
//! The replica keeps each table's synced columns as of the last open in its
//! metadata (`columns:<table>`); the fill runs only for the columns added
//! since. A replica of a release that did not keep the list starts keeping
//! it, with nothing to fill.
//!
//! Capture, for its part, never takes a column that is NULL now and absent
//! from the row state for a change (see `capture::diff`): such a NULL was
//! not written by the user.

use sea_orm::sea_query::{Alias, Cond, Expr, ExprTrait, Query, Table};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};

use super::applying::{begin_applying, end_applying};
use super::entity::TableHandle;
use super::seal_state::SealState;
use super::tables::{LOCAL_META, ROWS, ROWS_V1, dirty_table};
use super::versions::{self, register};
use crate::dialect::{self, Place};
use crate::model::change::ColumnSpec;
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::value::{is_null, parse_pk_key, pk_key};
use crate::store::ddl::existing_columns;
use crate::store::rows;
use crate::store::write::{keys_match, value_expr};

/// Row states read per transaction of the fill.
const PAGE: u64 = 500;

/// Give the synced columns of `handle`'s table their ordinals, and move
/// the table's row states written by format 1 (JSON in `_tidesync_rows`)
/// into its version table.
///
/// - The first time, `_tidesync_rows` is renamed `_tidesync_rows_v1`: a
///   process of format 1 still running on this database then fails on
///   its next capture or pull instead of working from states that have
///   moved (one that opens later is refused by the schema version).
/// - A page per transaction under the capture lock: each page's states are
///   saved and deleted from the old table together, so a conversion that
///   stops goes on from where it was at the next open. A state already in
///   the version table is merged with the old one (per column the later
///   clock), never overwritten.
/// - A state that cannot be read (its JSON or key text garbled) stays in
///   the old table, with a warning: the row then has no state here, and
///   its next capture sends it whole, as a new row.
pub(crate) async fn convert_states(
    db: &DatabaseConnection,
    handle: &dyn TableHandle,
) -> Result<()> {
    let spec = handle.spec();
    let names: Vec<String> = spec.columns.iter().map(|c| c.name.clone()).collect();
    // Under the capture lock, as every other registration (capture, pulls,
    // resolving a conflict): two processes never pick an ordinal at once.
    let tx = db.begin().await?;
    SealState::lock(&tx).await?;
    register(&tx, &spec.name, &names).await?;
    tx.commit().await?;
    let d = dialect::of_db(db)?;
    let exists = |store| async move {
        Ok::<_, Error>(!existing_columns(db, d, Place::own(store)).await?.is_empty())
    };
    if exists(ROWS).await? && !exists(ROWS_V1).await? {
        let rename = Table::rename()
            .table(Alias::new(ROWS), Alias::new(ROWS_V1))
            .to_owned();
        if let Err(e) = db.execute(&rename).await {
            // Another process renamed it meanwhile.
            if !exists(ROWS_V1).await? {
                return Err(e.into());
            }
        }
    }
    // The old table again, if a process of format 1 opened the database
    // since (it creates the table before it reads the schema version).
    for store in [ROWS_V1, ROWS] {
        if exists(store).await? {
            rows::upgrade_row_state_table(db, store).await?;
            convert_from(db, handle, store).await?;
        }
    }
    Ok(())
}

/// Move the states of `handle`'s table from the format 1 table `store`
/// (see [`convert_states`]).
async fn convert_from(
    db: &DatabaseConnection,
    handle: &dyn TableHandle,
    store: &str,
) -> Result<()> {
    let spec = handle.spec();
    let d = dialect::of_db(db)?;
    let mut after: Option<String> = None;
    loop {
        let tx = db.begin().await?;
        SealState::lock(&tx).await?;
        let mut q = Query::select();
        q.columns(rows::STATE_COLUMNS.map(Alias::new))
            .from(Alias::new(store))
            .and_where(Expr::col(Alias::new("tbl")).eq(spec.name.as_str()))
            .order_by(Alias::new("pk"), sea_orm::Order::Asc)
            .limit(PAGE);
        if let Some(a) = &after {
            q.and_where(Expr::col(Alias::new("pk")).gt(a.as_str()));
        }
        let raw = tx.query_all(&q).await?;
        let mut done: Vec<String> = Vec::new();
        let mut states: Vec<(Vec<sea_orm::Value>, RowState)> = Vec::new();
        for r in &raw {
            let stored: String = r.try_get("", "pk")?;
            let read = rows::key_text(r).and_then(|key| {
                let state = rows::StoredState::decode(r)?.fill(None)?.0;
                Ok((parse_pk_key(&key)?, state))
            });
            match read {
                Ok(state) => {
                    states.push(state);
                    done.push(stored.clone());
                }
                Err(e) => tracing::warn!(
                    table = %spec.name,
                    key = %stored,
                    error = %e,
                    "a row state of format 1 cannot be read: left in {store}"
                ),
            }
            after = Some(stored);
        }
        let mut versions = versions::open(&tx, handle).await?;
        let keys: Vec<Vec<sea_orm::Value>> = states.iter().map(|(k, _)| k.clone()).collect();
        let mut held = versions.load(&tx, &keys).await?;
        for (key, state) in &mut states {
            if let Some(mut newer) = held.remove(&pk_key(key)?) {
                newer.merge(state);
                *state = newer;
            }
        }
        let states: Vec<(&[sea_orm::Value], &RowState)> =
            states.iter().map(|(k, s)| (k.as_slice(), s)).collect();
        versions.save(&tx, &states).await?;
        if !done.is_empty() {
            let delete = Query::delete()
                .from_table(Alias::new(store))
                .and_where(Expr::col(Alias::new("tbl")).eq(spec.name.as_str()))
                .and_where(d.key_in(&done)?)
                .to_owned();
            tx.execute(&delete).await?;
        }
        tx.commit().await?;
        if (raw.len() as u64) < PAGE {
            return Ok(());
        }
    }
}

/// Fill the columns `handle`'s table gained since the last open from the
/// row states, and remember its columns.
pub(crate) async fn follow_columns(
    db: &DatabaseConnection,
    handle: &dyn TableHandle,
) -> Result<()> {
    let spec = handle.spec();
    let key = format!("columns:{}", spec.name);
    let names: Vec<&str> = spec.columns.iter().map(|c| c.name.as_str()).collect();
    let now = serde_json::to_string(&names)?;
    let Some(stored) = LOCAL_META.read(db, &key).await? else {
        return LOCAL_META.upsert(db, &key, &now).await;
    };
    if stored == now {
        return Ok(());
    }
    let known: Vec<String> = serde_json::from_str(&stored)
        .map_err(|e| Error::Corrupt(format!("{key} in the replica metadata: {e}")))?;
    let added: Vec<&ColumnSpec> = spec
        .columns
        .iter()
        .filter(|c| !known.contains(&c.name))
        .collect();
    if !added.is_empty() {
        fill(db, handle, &added).await?;
    }
    LOCAL_META.upsert(db, &key, &now).await
}

/// Write the values the row states hold for the `added` columns into the
/// rows, page by page of states: where the row's value is NULL, and in any
/// row without a pending marker.
async fn fill(
    db: &DatabaseConnection,
    handle: &dyn TableHandle,
    added: &[&ColumnSpec],
) -> Result<()> {
    let spec = handle.spec();
    let d = dialect::of_db(db)?;
    let mut after: Option<Vec<sea_orm::Value>> = None;
    loop {
        let tx = db.begin().await?;
        begin_applying(&tx).await?;
        let mut versions = versions::open(&tx, handle).await?;
        let page = versions.page(&tx, after.as_deref(), true, PAGE).await?;
        after = page.last().map(|(k, _)| k.clone());
        for (key, state) in &page {
            let pk = std::slice::from_ref(key);
            // No user wrote the column where it is NULL, nor anywhere in a
            // row without a pending marker (what the migration put there, a
            // DEFAULT say). A row with a marker keeps a value: the user may
            // have written it before this open.
            let unmarked = Expr::exists(
                Query::select()
                    .expr(Expr::val(1))
                    .from(Alias::new(dirty_table(&spec.name)))
                    .and_where(keys_match(spec, pk, d))
                    .to_owned(),
            )
            .not();
            for c in added {
                let Some(v) = state.vals.get(&c.name).filter(|v| !is_null(v)) else {
                    continue;
                };
                let update = Query::update()
                    .table(Place::of(d, spec).table_ref())
                    .value(Alias::new(&c.name), value_expr(&spec.name, c, v, d)?)
                    .and_where(keys_match(spec, pk, d))
                    .cond_where(
                        Cond::any()
                            .add(Expr::col(Alias::new(&c.name)).is_null())
                            .add(unmarked.clone()),
                    )
                    .to_owned();
                tx.execute(&update).await?;
            }
        }
        end_applying(&tx).await?;
        tx.commit().await?;
        if (page.len() as u64) < PAGE {
            return Ok(());
        }
    }
}
