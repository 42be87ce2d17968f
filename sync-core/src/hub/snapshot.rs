//! A snapshot of the hub's rows, page by page in (table, key) order, for
//! bootstrapping a new replica.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, Value};

use super::log;
use super::states;
use super::tables::{HUB_KEYS, HUB_ROWS};
use super::visible::Visible;
use crate::dialect;
use crate::model::change::{ColumnSpec, TableSpec};
use crate::model::error::{Error, Result};
use crate::model::protocol::{Cursor, SnapshotPage, SnapshotRow};
use crate::model::value::{approx_size, parse_pk_key};
use crate::store::rows::{STATE_COLUMNS, StoredState, key_text, storage_key};

/// The hub's cursor now, and up to `limit` rows after the key `after` (a
/// page's `next`: the JSON of its last `(table, stored key, 1)`, valid
/// across restarts and limits). Through an account the token may name a
/// row of another user, which the page passed over: a `UserHub` hands out
/// its tokens sealed and bound to the user (see `token`), never this one.
///
/// A token of an earlier release is `(table, key text)`, in the order of key
/// texts: a key stored under its hash since (a SQLite hub holding a key over
/// 700 characters) sorts before every key text, so the rows of the table
/// stored by hash come again after such a token (a row twice merges to the
/// same state; a row left out would be missing for good).
pub(super) async fn page<C: ConnectionTrait>(
    db: &C,
    specs: &[TableSpec],
    after: Option<String>,
    limit: u64,
    visible: Option<&Visible>,
) -> Result<(Cursor, SnapshotPage)> {
    let cursor = Cursor(log::tip(db).await?);
    let mut q = Query::select();
    q.column(Alias::new("tbl"))
        .columns(STATE_COLUMNS.map(Alias::new))
        .from(Alias::new(HUB_ROWS))
        .order_by(Alias::new("tbl"), Order::Asc)
        .order_by(Alias::new("pk"), Order::Asc)
        .limit(Ord::min(limit, i64::MAX as u64));
    if let Some(after) = &after {
        let bad = || Error::Config(format!("snapshot token `{after}` is not one a hub gave"));
        let token: Vec<serde_json::Value> = serde_json::from_str(after).map_err(|_| bad())?;
        let (tbl, pk, stored) = match token.as_slice() {
            [serde_json::Value::String(t), serde_json::Value::String(k)] => (t, k, false),
            [
                serde_json::Value::String(t),
                serde_json::Value::String(k),
                _,
            ] => (t, k, true),
            _ => return Err(bad()),
        };
        let columns = [Expr::col(Alias::new("tbl")), Expr::col(Alias::new("pk"))];
        let values = [
            Value::from(tbl.clone()),
            Value::from(storage_key(pk).into_owned()),
        ];
        let mut cond = dialect::of_db(db)?.after(columns, values);
        if !stored {
            cond = cond.or(Expr::col(Alias::new("tbl"))
                .eq(tbl.clone())
                .and(Expr::col(Alias::new("pk")).like("#%")));
        }
        q.and_where(cond);
    }
    let rows = db
        .query_all(&q)
        .await
        .map_err(|e| Error::from(e).or_offline())?;
    let stored = rows
        .iter()
        .map(StoredState::decode)
        .collect::<Result<Vec<_>>>()?;
    let seqs: Vec<u64> = stored.iter().filter_map(|s| s.reference).collect();
    // Each entry is of one row, so one state at most refers to it.
    let mut entries = states::columns(db, &seqs)
        .await
        .map_err(Error::or_offline)?;
    let recorded = recorded_keys(db, specs, &rows).await?;
    let mut page = SnapshotPage::default();
    let mut last = None;
    let mut bytes = 0;
    let mut cut = false;
    for (r, stored) in rows.iter().zip(stored) {
        let tbl: String = r.try_get("", "tbl")?;
        let key = key_text(r)?;
        let entry = stored.reference.and_then(|seq| entries.remove(&seq));
        let (state, _) = stored.fill(entry)?;
        let values = parse_pk_key(&key)?;
        let names: Vec<String> = match specs.iter().find(|s| s.name == tbl) {
            Some(s) => s.pk_names(),
            None => match recorded.get(&tbl) {
                Some(names) => names.clone(),
                None => (0..values.len()).map(|i| format!("key{i}")).collect(),
            },
        };
        let pk: Vec<(String, Value)> = names.into_iter().zip(values).collect();
        if visible.is_some_and(|v| !v.shows_row(&tbl, &pk, &state)) {
            // Passed over: the next page starts after it.
            last = Some((tbl, r.try_get::<String>("", "pk")?));
            continue;
        }
        // A page of at most about `PAGE_BYTES` of values (and at least one
        // row): the next page starts at this row.
        let size = state.vals.values().map(approx_size).sum::<usize>() + 64;
        if !page.rows.is_empty() && bytes + size > log::PAGE_BYTES {
            cut = true;
            break;
        }
        bytes += size;
        // The stored key: the next page starts after it.
        last = Some((tbl.clone(), r.try_get::<String>("", "pk")?));
        page.rows.push(SnapshotRow {
            table: tbl,
            pk,
            state,
        });
    }
    if cut || rows.len() as u64 == limit {
        page.next = last
            .map(|(t, k)| serde_json::to_string(&(t, k, 1)))
            .transpose()?;
    }
    Ok((cursor, page))
}

/// The key column names the hub records (see [`HUB_KEYS`]) for the tables
/// of `rows` that `specs` lacks: a server that has not seen this device's
/// install (another server's device, a restart) names keys as the hub
/// does, never after whichever install came last.
async fn recorded_keys<C: ConnectionTrait>(
    db: &C,
    specs: &[TableSpec],
    rows: &[sea_orm::QueryResult],
) -> Result<std::collections::HashMap<String, Vec<String>>> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        let tbl: String = r.try_get("", "tbl")?;
        if !specs.iter().any(|s| s.name == tbl) && !names.contains(&tbl) {
            names.push(tbl);
        }
    }
    let mut out = std::collections::HashMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    let named: Vec<&str> = names.iter().map(String::as_str).collect();
    let records = HUB_KEYS
        .read_many(db, &named)
        .await
        .map_err(Error::or_offline)?;
    for (table, text) in records {
        let key: Vec<ColumnSpec> = serde_json::from_str(&text).map_err(|e| {
            Error::Corrupt(format!(
                "`{}` records `{text}` for table `{table}`: {e}",
                HUB_KEYS.0
            ))
        })?;
        out.insert(table, key.into_iter().map(|c| c.name).collect());
    }
    Ok(out)
}
