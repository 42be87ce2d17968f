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

use sea_orm::sea_query::{Alias, Cond, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};

use super::applying::{begin_applying, end_applying};
use super::entity::TableHandle;
use super::seal_state::SealState;
use super::tables::{LOCAL_META, ROWS, dirty_table};
use super::versions::{Versions, register};
use crate::dialect::{self, Place};
use crate::model::change::ColumnSpec;
use crate::model::error::{Error, Result};
use crate::model::value::{is_null, parse_pk_key};
use crate::store::rows;
use crate::store::user_tables::existing_columns;
use crate::store::write::{keys_match, value_expr};

/// Row states read per transaction of the fill.
const PAGE: u64 = 500;

/// Give the synced columns of `handle`'s table their ordinals, and move
/// the table's row states written by format 1 (JSON in `_tidesync_rows`)
/// into its version table, a page per transaction under the capture lock:
/// each page's states are saved and deleted from the old table together,
/// so a conversion that stops goes on from where it was at the next open.
pub(crate) async fn convert_states(
    db: &DatabaseConnection,
    handle: &dyn TableHandle,
) -> Result<()> {
    let spec = handle.spec();
    let names: Vec<String> = spec.columns.iter().map(|c| c.name.clone()).collect();
    register(db, &spec.name, &names).await?;
    let d = dialect::of_db(db)?;
    if existing_columns(db, d, Place::own(ROWS)).await?.is_empty() {
        return Ok(());
    }
    rows::upgrade_row_state_table(db, ROWS).await?;
    loop {
        let tx = db.begin().await?;
        SealState::lock(&tx).await?;
        let page = rows::state_page(&tx, ROWS, &spec.name, None, PAGE).await?;
        if page.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        let keys: Vec<Vec<sea_orm::Value>> = page
            .iter()
            .map(|(k, _)| parse_pk_key(k))
            .collect::<Result<_>>()?;
        let states: Vec<(&[sea_orm::Value], &crate::model::merge::RowState)> = keys
            .iter()
            .zip(&page)
            .map(|(k, (_, s))| (k.as_slice(), s))
            .collect();
        let mut versions = Versions::open(&tx, handle).await?;
        versions.save(&tx, &states).await?;
        let done: Vec<String> = page
            .iter()
            .map(|(k, _)| rows::storage_key(k).into_owned())
            .collect();
        let delete = Query::delete()
            .from_table(Alias::new(ROWS))
            .and_where(Expr::col(Alias::new("tbl")).eq(spec.name.as_str()))
            .and_where(d.key_in(&done)?)
            .to_owned();
        tx.execute(&delete).await?;
        tx.commit().await?;
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
        let versions = Versions::open(&tx, handle).await?;
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
