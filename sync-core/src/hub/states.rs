//! The hub's row states as the merge and the filters of accounts read
//! them: each stored state with the values it takes from its log entries
//! filled in.

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Expr, ExprTrait};
use sea_orm::{ConnectionTrait, Value};

use super::tables::{CHANGES, HUB_ROWS_V1};
use crate::model::error::Result;
use crate::model::merge::RowState;
use crate::model::typed;
use crate::store::codec::{db_sequence, sequence};
use crate::store::rows::{self, Referred};

/// The hub's states of `keys` of `table`, with the values they take from
/// log entries filled in.
pub(super) async fn load_states<C: ConnectionTrait>(
    tx: &C,
    table: &str,
    keys: &[String],
) -> Result<HashMap<String, (RowState, Option<Referred>)>> {
    let stored = rows::load_stored(tx, HUB_ROWS_V1, table, keys).await?;
    let seqs: Vec<u64> = stored.values().filter_map(|s| s.reference).collect();
    // Each entry is of one row, so one state at most refers to it.
    let mut entries = columns(tx, &seqs).await?;
    stored
        .into_iter()
        .map(|(k, s)| {
            let entry = s.reference.and_then(|seq| entries.remove(&seq));
            Ok((k, s.fill(entry)?))
        })
        .collect()
}

/// The columns (names and values) of the log entries `seqs`.
pub(super) async fn columns<C: ConnectionTrait>(
    db: &C,
    seqs: &[u64],
) -> Result<HashMap<u64, Vec<(String, Value)>>> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = HashMap::with_capacity(sorted.len());
    for chunk in sorted.chunks(500) {
        let keys = chunk
            .iter()
            .map(|s| db_sequence(*s))
            .collect::<Result<Vec<_>>>()?;
        let q = sea_orm::sea_query::Query::select()
            .columns(["hub_seq", "payload"].map(Alias::new))
            .from(Alias::new(CHANGES.name))
            .and_where(Expr::col(Alias::new("hub_seq")).is_in(keys))
            .to_owned();
        for r in db.query_all(&q).await? {
            let payload: String = r.try_get("", "payload")?;
            out.insert(
                sequence(&r, "hub_seq")?,
                typed::columns_from_text(&payload)?,
            );
        }
    }
    Ok(out)
}
