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
use super::tables::{LOCAL_META, ROWS, dirty_table};
use crate::dialect::{self, Place};
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::error::{Error, Result};
use crate::model::value::{is_null, parse_pk_key};
use crate::store::rows;
use crate::store::write::{keys_match, value_expr};

/// Row states read per transaction of the fill.
const PAGE: u64 = 500;

/// Fill the columns `spec` gained since the last open from the row states,
/// and remember its columns.
pub(crate) async fn follow_columns(db: &DatabaseConnection, spec: &TableSpec) -> Result<()> {
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
        fill(db, spec, &added).await?;
    }
    LOCAL_META.upsert(db, &key, &now).await
}

/// Write the values the row states hold for the `added` columns into the
/// rows, page by page of states: where the row's value is NULL, and in any
/// row without a pending marker.
async fn fill(db: &DatabaseConnection, spec: &TableSpec, added: &[&ColumnSpec]) -> Result<()> {
    let d = dialect::of_db(db)?;
    let mut after: Option<String> = None;
    loop {
        let tx = db.begin().await?;
        begin_applying(&tx).await?;
        let page = rows::state_page(&tx, ROWS, &spec.name, after.as_deref(), PAGE).await?;
        after = page.last().map(|(k, _)| k.clone());
        for (key, state) in &page {
            if !state.is_live() {
                continue;
            }
            let pk = [parse_pk_key(key)?];
            // No user wrote the column where it is NULL, nor anywhere in a
            // row without a pending marker (what the migration put there, a
            // DEFAULT say). A row with a marker keeps a value: the user may
            // have written it before this open.
            let unmarked = Expr::exists(
                Query::select()
                    .expr(Expr::val(1))
                    .from(Alias::new(dirty_table(&spec.name)))
                    .and_where(keys_match(spec, &pk, d))
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
                    .and_where(keys_match(spec, &pk, d))
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
