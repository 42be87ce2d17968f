//! Applying what comes from the hub (pulled changes, snapshot rows) to the
//! local database.
//!
//! One local transaction per page: mark the session as applying (so the
//! capture triggers skip our writes), take the capture lock, lock the target
//! rows, capture any pending local write first (so the row states are
//! current and no local write is overwritten unseen), merge the remote
//! changes into the row states, write the resulting rows, save the states,
//! store the caller's metadata (the pull cursor), and commit. A crash
//! anywhere rolls all of it back; the page is pulled again and merging is
//! idempotent.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait, Value};

use super::applying::{begin_applying, end_applying};
use super::capture::{CaptureReport, seal_all};
use super::conflicts::{open_conflicts, update_remote};
use super::entity::TableHandle;
use super::parked::{Parked, park};
use super::seal_state::SealState;
use super::tables::{LOCAL_META, PARKED, dirty_table};
use super::versions::{self, Versions};
use crate::dialect::{self, Dialect, check_value};
use crate::model::change::{ChangeId, TableSpec};
use crate::model::clock::{HlcClock, NodeId, wall_clock_us};
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::merge::RowState;
use crate::model::value::{parse_pk_key, pk_key};
use crate::store::codec::{integer_id, sequence};
use crate::store::write::{
    delete_rows, execute_all, execute_while, keys_match, lock_rows, row_statements,
};

/// One remote fact about one row: a change (as a one-change state) or a
/// snapshot row.
#[derive(Debug, Clone)]
pub(crate) struct Delta {
    pub(crate) table: String,
    pub(crate) pk: Vec<Value>,
    pub(crate) state: RowState,
    /// The change it came from, if any (snapshot rows have none).
    pub(crate) id: Option<ChangeId>,
    /// The stored text of an unreadable change, kept if it is parked;
    /// otherwise the state is serialised then (only then).
    pub(crate) raw: Option<String>,
    /// Set when it is to be parked without applying (e.g. unreadable).
    pub(crate) park: Option<String>,
}

impl Delta {
    /// Its row in `_tidesync_parked`, with `reason`.
    fn parked<'a>(&'a self, reason: &'a str) -> Result<Parked<'a>> {
        let (origin, seq) = self.id.map_or(("snapshot".to_owned(), 0), |id| {
            (id.origin.to_string(), id.seq)
        });
        Ok(Parked {
            table: &self.table,
            key: pk_key(&self.pk)?,
            origin,
            seq,
            payload: match &self.raw {
                Some(raw) => raw.clone(),
                None => serde_json::to_string(&self.state)?,
            },
            reason,
        })
    }
}

/// Park deltas that cannot be applied here, with the reason.
async fn park_deltas(tx: &DatabaseTransaction, deltas: &[&Delta], reason: &str) -> Result<()> {
    let rows = deltas
        .iter()
        .map(|d| d.parked(reason))
        .collect::<Result<Vec<_>>>()?;
    park(tx, &rows).await
}

/// What applying a page did.
#[derive(Debug, Default)]
pub(crate) struct ApplyReport {
    /// Remote changes or snapshot rows that changed local rows.
    pub(crate) applied: usize,
    /// Remote changes or rows that could not be applied locally and were
    /// parked in `_tidesync_parked`, with the reason.
    pub(crate) parked: Vec<Error>,
    /// Local writes captured on the way (see [`CaptureReport`]).
    pub(crate) captured: CaptureReport,
}

/// The merged rows of one table, to write and save.
struct TableWrite<'a> {
    spec: &'a TableSpec,
    /// The table's version rows, where the states are saved.
    versions: Versions<'a>,
    rows: Vec<RowWrite<'a>>,
}

/// A row's deltas merged so far, in [`merge_table`].
struct Merged<'a, 'k> {
    key: &'k str,
    pk: &'a [Value],
    state: Cow<'a, RowState>,
    /// The row's state here before the page, if it had one: whether it was
    /// live.
    was_live: Option<bool>,
    /// Whether a delta changed the state (merging reports it).
    changed: bool,
    sources: Vec<&'a Delta>,
}

/// One merged row: its new state (live or dead) to save, the row to write
/// or delete, and the deltas it comes from (parked if it cannot be
/// written).
struct RowWrite<'a> {
    key: String,
    /// The key values.
    pk: &'a [Value],
    state: Cow<'a, RowState>,
    /// Whether the row exists in the table now.
    existed: bool,
    /// The key to delete, for a row that dies.
    delete: Option<Vec<Value>>,
    sources: Vec<&'a Delta>,
}

/// The metadata a page stores in its transaction.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PageMeta<'a> {
    /// Keys and values to store (the pull cursor, a bootstrap's progress).
    pub(crate) store: &'a [(&'a str, &'a str)],
    /// Keys to remove.
    pub(crate) forget: &'a [&'a str],
    /// Rows of `_tidesync_parked` the page applies again (see
    /// [`refused`]): removed in its transaction; those still refused are
    /// parked again.
    pub(crate) unpark: &'a [i64],
    /// The node id the metadata was read for: if the replica took another
    /// one meanwhile (in another process), `store` and `forget` are left
    /// alone (the renewal forgot the cursors: they must stay forgotten).
    pub(crate) node: Option<NodeId>,
    /// Park a new row that collides with a row the application wrote
    /// meanwhile (as any refused row), instead of failing the page to be
    /// applied again: the last try of a page, or a page that is not tried
    /// again.
    pub(crate) park_raced: bool,
}

/// Apply remote deltas and, in the same transaction, store and remove the
/// metadata of `meta`.
pub(crate) async fn apply_page(
    db: &DatabaseConnection,
    tables: &[Arc<dyn TableHandle>],
    deltas: Vec<Delta>,
    meta: PageMeta<'_>,
) -> Result<ApplyReport> {
    let mut report = ApplyReport::default();
    let tx = db.begin().await?;
    let d = dialect::of_db(&tx)?;
    begin_applying(&tx).await?;
    SealState::lock(&tx).await?;
    if !meta.unpark.is_empty() {
        unpark(&tx, meta.unpark).await?;
    }
    let by_table = route(&tx, d, tables, deltas, &mut report).await?;
    // Lock the rows, then read: on MySQL (REPEATABLE READ) the first plain
    // read takes the snapshot, which must hold the application's writes to
    // these rows that the locks waited for. Then capture pending local
    // writes so states are current.
    for h in tables {
        if let Some(ds) = by_table.get(&h.spec().name) {
            let keys: Vec<Vec<Value>> = ds.iter().map(|d| d.pk.clone()).collect();
            lock_rows(&tx, d, h.spec(), &keys).await?;
        }
    }
    let mut state = SealState::load(&tx).await?;
    seal_all(&tx, tables, &mut state, &mut report.captured).await?;
    // Merge, per table in registration order.
    let mut writes = Vec::new();
    let wall = wall_clock_us();
    for h in tables {
        if let Some(ds) = by_table.get(&h.spec().name) {
            let merged =
                merge_table(&tx, d, h.as_ref(), ds, &mut state.clock, wall, &mut report).await?;
            writes.push(merged);
        }
    }
    write_tables(&tx, d, &writes, meta.park_raced, &mut report).await?;
    for h in by_table
        .values()
        .flatten()
        .filter_map(|d| d.state.max_clock())
    {
        state.saw(h);
    }
    if meta.node.is_some_and(|n| n != state.node) {
        state.save(&tx).await?;
    } else {
        state.save_with(&tx, meta.store).await?;
        if !meta.forget.is_empty() {
            LOCAL_META.remove(&tx, meta.forget).await?;
        }
    }
    end_applying(&tx).await?;
    drop(writes);
    // Free the page's row states while the database commits.
    let (committed, ()) = tokio::join!(biased; tx.commit(), async move { drop(by_table) });
    committed?;
    Ok(report)
}

/// What a pulled row refused by this replica's table is parked with (see
/// [`Error::Refused`]).
const REFUSED: &str = "refused by this replica's table";

/// Up to `limit` pulled rows parked because this replica's table refused
/// them ([`Error::Refused`]), oldest first, with their ids in
/// `_tidesync_parked`: a later page may have made them fit (the delete that
/// frees a unique value the row takes came in the next page), so the
/// engine applies them again at the end of each pull.
pub(crate) async fn refused(db: &DatabaseConnection, limit: u64) -> Result<Vec<(i64, Delta)>> {
    let q = Query::select()
        .columns(["id", "tbl", "pk", "origin", "seq", "payload"].map(Alias::new))
        .from(Alias::new(PARKED))
        .and_where(Expr::col(Alias::new("reason")).like(format!("%{REFUSED}%")))
        .order_by(Alias::new("id"), Order::Asc)
        .limit(limit)
        .to_owned();
    let mut out = Vec::new();
    for r in db.query_all(&q).await? {
        let id = integer_id(&r, "id")?;
        let origin: String = r.try_get("", "origin")?;
        let seq = sequence(&r, "seq")?;
        let payload: String = r.try_get("", "payload")?;
        let key: String = r.try_get("", "pk")?;
        out.push((
            id,
            Delta {
                table: r.try_get("", "tbl")?,
                pk: parse_pk_key(&key)?,
                state: serde_json::from_str(&payload)?,
                id: origin.parse().ok().map(|origin| ChangeId { origin, seq }),
                raw: None,
                park: None,
            },
        ));
    }
    Ok(out)
}

/// Remove rows of `_tidesync_parked` by id.
async fn unpark(tx: &DatabaseTransaction, ids: &[i64]) -> Result<()> {
    for chunk in ids.chunks(500) {
        let q = Query::delete()
            .from_table(Alias::new(PARKED))
            .and_where(Expr::col(Alias::new("id")).is_in(chunk.iter().copied()))
            .to_owned();
        tx.execute(&q).await?;
    }
    Ok(())
}

/// Group deltas by registered table, keeping arrival order within a table;
/// park the ones to park, those of unknown tables, and those whose key this
/// replica cannot hold or look up.
async fn route(
    tx: &DatabaseTransaction,
    d: &dyn Dialect,
    tables: &[Arc<dyn TableHandle>],
    deltas: Vec<Delta>,
    report: &mut ApplyReport,
) -> Result<BTreeMap<String, Vec<Delta>>> {
    let mut by_table: BTreeMap<String, Vec<Delta>> = BTreeMap::new();
    let mut unknown: Vec<String> = Vec::new();
    for delta in deltas {
        if let Some(reason) = &delta.park {
            park_deltas(tx, &[&delta], reason).await?;
            continue;
        }
        let Some(h) = tables.iter().find(|h| h.spec().name == delta.table) else {
            let reason = format!("table `{}` is not registered on this replica", delta.table);
            park_deltas(tx, &[&delta], &reason).await?;
            if !unknown.contains(&delta.table) {
                unknown.push(delta.table.clone());
                report.parked.push(Error::UnknownTable(delta.table.clone()));
            }
            continue;
        };
        let spec = h.spec();
        // A key this dialect cannot hold (a u64 above i64::MAX on SQLite,
        // say) cannot even be looked up.
        let bad = spec
            .pk
            .iter()
            .zip(&delta.pk)
            .find_map(|(c, v)| check_value(&spec.name, &c.name, Some(&c.ty), v, Some(d)).err());
        let bad = bad.or_else(|| {
            (delta.pk.len() != spec.pk.len()).then(|| {
                Error::Corrupt(format!(
                    "{}: key has {} values, the table {}",
                    spec.name,
                    delta.pk.len(),
                    spec.pk.len()
                ))
            })
        });
        match bad {
            Some(e) => {
                park_deltas(tx, &[&delta], &e.to_string()).await?;
                report.parked.push(e);
            }
            None => by_table.entry(delta.table.clone()).or_default().push(delta),
        }
    }
    Ok(by_table)
}

/// Merge one table's deltas into its row states: the rows to write, and
/// the states to save. Columns with a conflict held here keep the local
/// value until it is resolved; what arrives for them updates the
/// conflict's remote side.
async fn merge_table<'a>(
    tx: &DatabaseTransaction,
    d: &dyn Dialect,
    handle: &'a dyn TableHandle,
    ds: &'a [Delta],
    clock: &mut HlcClock,
    wall: u64,
    report: &mut ApplyReport,
) -> Result<TableWrite<'a>> {
    let spec = handle.spec();
    let keys: Vec<String> = ds.iter().map(|d| pk_key(&d.pk)).collect::<Result<_>>()?;
    let mut versions = versions::open(tx, handle).await?;
    let key_values: Vec<&[Value]> = ds.iter().map(|d| d.pk.as_slice()).collect();
    // Each state is taken from here by the first delta of its row: what
    // the row was is kept as whether it was live, and whether it changed
    // as what merging reports (it says whether the state changed).
    let mut before = versions.load_keyed(tx, &key_values, &keys).await?;
    let held = if spec.policy.holds_conflicts() {
        open_conflicts(tx, &spec.name, &keys).await?
    } else {
        Vec::new()
    };
    // A row that only one delta writes and that has no state here takes
    // the delta's state as it is (merging it into nothing is the
    // identity), without copying its values. Rows in the order of their
    // first delta.
    let mut index: FxHashMap<&str, usize> = FxHashMap::default();
    let mut merged: Vec<Merged<'a, '_>> = Vec::with_capacity(ds.len());
    for (delta, key) in ds.iter().zip(&keys) {
        let held_here: Vec<&str> = held
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, c)| c.as_str())
            .collect();
        let (m, merge) = match index.entry(key.as_str()) {
            Entry::Occupied(e) => (&mut merged[*e.get()], true),
            Entry::Vacant(e) => {
                let fresh = held_here.is_empty()
                    && !before.contains_key(key)
                    && delta.state.clocks.keys().eq(delta.state.vals.keys());
                e.insert(merged.len());
                let was = before.remove(key);
                merged.push(Merged {
                    key: key.as_str(),
                    pk: &delta.pk,
                    was_live: was.as_ref().map(RowState::is_live),
                    changed: false,
                    state: match fresh {
                        true => Cow::Borrowed(&delta.state),
                        false => Cow::Owned(was.unwrap_or_default()),
                    },
                    sources: Vec::new(),
                });
                (merged.last_mut().expect("just pushed"), !fresh)
            }
        };
        if merge {
            m.changed |= merge_delta(
                tx,
                &spec.name,
                key,
                m.state.to_mut(),
                &delta.state,
                &held_here,
            )
            .await?;
        }
        m.sources.push(delta);
        if let Some(h) = delta.state.max_clock() {
            clock.observe(h, wall);
        }
    }
    let mut rows = Vec::new();
    for Merged {
        key,
        pk,
        state: s,
        was_live,
        changed,
        sources,
    } in merged
    {
        if was_live.is_some() && !changed {
            continue; // nothing new (e.g. our own rows in a snapshot)
        }
        let existed = was_live == Some(true);
        if s.is_live()
            && let Err(e) = check_row(d, spec, &s)
        {
            park_deltas(tx, &sources, &e.to_string()).await?;
            report.parked.push(e);
            continue;
        }
        // Dead states are saved too, not written as rows.
        let delete = (!s.is_live() && was_live != Some(false)).then(|| pk.to_vec());
        rows.push(RowWrite {
            key: key.to_owned(),
            pk,
            state: s,
            existed,
            delete,
            sources,
        });
    }
    // Columns another release of the app added come with pulled states.
    versions
        .register(tx, rows.iter().map(|r| r.state.as_ref()))
        .await?;
    Ok(TableWrite {
        spec,
        versions,
        rows,
    })
}

/// Whether the dialect can hold every value of a merged row.
fn check_row(d: &dyn Dialect, spec: &TableSpec, s: &RowState) -> Result<()> {
    for c in &spec.columns {
        if let Some(v) = s.vals.get(&c.name) {
            check_value(&spec.name, &c.name, Some(&c.ty), v, Some(d))?;
        }
    }
    Ok(())
}

/// Merge `incoming` into `state`, except the columns `held` (a conflict is
/// open on them), whose incoming value updates the conflict instead.
/// Returns whether the state changed.
async fn merge_delta(
    tx: &DatabaseTransaction,
    table: &str,
    key: &str,
    state: &mut RowState,
    incoming: &RowState,
    held: &[&str],
) -> Result<bool> {
    if held.is_empty() {
        return Ok(state.merge(incoming));
    }
    let mut incoming = incoming.clone();
    for col in held {
        if let (Some(v), Some(h)) = (incoming.vals.remove(*col), incoming.clocks.remove(*col)) {
            update_remote(tx, table, key, col, &v, h).await?;
        }
    }
    Ok(state.merge(&incoming))
}

/// Write the merged tables and save their states, counting what was
/// applied and parking what cannot be written.
///
/// First the whole page at once, deletes first (children first): a delete
/// may free a unique value an insert of the page takes (a value that moved
/// from one row to another comes as the insert, then the delete). If that
/// fails, upserts first (parents first): an upsert may move a child away
/// from a parent the page deletes. If that fails too, row by row, each in
/// a savepoint, in passes until a pass writes nothing more; the rows still
/// refused are parked with the reason and reported, and their states are
/// not saved.
async fn write_tables(
    tx: &DatabaseTransaction,
    d: &dyn Dialect,
    writes: &[TableWrite<'_>],
    park_raced: bool,
    report: &mut ApplyReport,
) -> Result<()> {
    for deletes_first in [true, false] {
        let sp = tx.begin().await?;
        match write_all(&sp, d, writes, deletes_first).await {
            Ok(()) => {
                sp.commit().await?;
                report.applied += writes
                    .iter()
                    .flat_map(|w| &w.rows)
                    .map(|r| r.sources.len())
                    .sum::<usize>();
                return Ok(());
            }
            Err(e) if e.is_retryable() => return Err(e),
            Err(_) => sp.rollback().await?,
        }
    }
    write_row_by_row(tx, d, writes, park_raced, report).await
}

/// Write every row of the page and save the states, in multi-row
/// statements: upserts parents first, deletes children first, either
/// before the other. The database writes the rows while the statements
/// that save the states are built.
async fn write_all(
    tx: &DatabaseTransaction,
    d: &dyn Dialect,
    writes: &[TableWrite<'_>],
    deletes_first: bool,
) -> Result<()> {
    if deletes_first {
        delete_all(tx, writes).await?;
    }
    let mut upserts = Vec::new();
    for w in writes {
        let live: Vec<(&RowState, bool)> = w
            .rows
            .iter()
            .filter(|r| r.state.is_live())
            .map(|r| (r.state.as_ref(), r.existed))
            .collect();
        upserts.extend(row_statements(w.spec, &live, d, true)?);
    }
    let saves = execute_while(tx, upserts, || {
        let mut out = Vec::new();
        for w in writes {
            let states: Vec<_> = w.rows.iter().map(|r| (r.pk, r.state.as_ref())).collect();
            out.extend(w.versions.statements(&states)?);
        }
        Ok(out)
    })
    .await?;
    if !deletes_first {
        delete_all(tx, writes).await?;
    }
    execute_all(tx, saves).await
}

/// Delete the rows of the page that die, children first.
async fn delete_all(tx: &DatabaseTransaction, writes: &[TableWrite<'_>]) -> Result<()> {
    for w in writes.iter().rev() {
        let dead: Vec<Vec<Value>> = w.rows.iter().filter_map(|r| r.delete.clone()).collect();
        delete_rows(tx, w.spec, &dead).await?;
    }
    Ok(())
}

/// Write the rows one by one, each with its state in a savepoint, in
/// passes (deletes children first, then upserts parents first) until a pass
/// writes nothing more; park the rows still refused.
async fn write_row_by_row(
    tx: &DatabaseTransaction,
    d: &dyn Dialect,
    writes: &[TableWrite<'_>],
    park_raced: bool,
    report: &mut ApplyReport,
) -> Result<()> {
    let deletes = writes.iter().rev().flat_map(|w| {
        w.rows
            .iter()
            .filter(|r| r.delete.is_some())
            .map(move |r| (w, r))
    });
    let upserts = writes.iter().flat_map(|w| {
        w.rows
            .iter()
            .filter(|r| r.delete.is_none())
            .map(move |r| (w, r))
    });
    let mut todo: Vec<(&TableWrite<'_>, &RowWrite<'_>, Option<Error>)> =
        deletes.chain(upserts).map(|(s, r)| (s, r, None)).collect();
    loop {
        let before = todo.len();
        let mut refused = Vec::new();
        for (table, row, _) in todo {
            let sp = tx.begin().await?;
            match write_one(&sp, d, table, row).await {
                Ok(()) => {
                    sp.commit().await?;
                    report.applied += row.sources.len();
                }
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    sp.rollback().await?;
                    refused.push((table, row, Some(e)));
                }
            }
        }
        todo = refused;
        if todo.is_empty() || todo.len() == before {
            break;
        }
    }
    for (table, row, error) in &todo {
        let spec = table.spec;
        let taken = !row.existed
            && row.delete.is_none()
            && error
                .as_ref()
                .is_some_and(|e| e.kind() == ErrorKind::UniqueViolation);
        if taken && !park_raced && has_marker(tx, d, spec, row).await? {
            // The application inserted this key and committed while the
            // insert waited for it (PostgreSQL): capture that write first.
            return Err(raced(spec, &row.key));
        }
    }
    for (table, row, error) in todo {
        let e = Error::Refused {
            table: table.spec.name.clone(),
            key: row.key.clone(),
            reason: error.map_or_else(String::new, |e| e.to_string()),
        };
        park_deltas(tx, &row.sources, &e.to_string()).await?;
        report.parked.push(e);
    }
    Ok(())
}

/// Whether the row of `row`'s key has a capture marker now.
async fn has_marker(
    tx: &DatabaseTransaction,
    d: &dyn Dialect,
    spec: &TableSpec,
    row: &RowWrite<'_>,
) -> Result<bool> {
    let q = Query::select()
        .expr(Expr::val(1))
        .from(Alias::new(dirty_table(&spec.name)))
        .and_where(keys_match(spec, &[row.pk.to_vec()], d))
        .to_owned();
    Ok(tx.query_one(&q).await?.is_some())
}

/// The error that makes a page be applied again: an application write
/// took the key of a new row while the page waited for it.
fn raced(spec: &TableSpec, key: &str) -> Error {
    Error::Database {
        source: sea_orm::DbErr::Custom(format!(
            "{}: the application wrote the row {key} while it was pulled; apply the page again",
            spec.name
        )),
        kind: ErrorKind::Serialization,
    }
}

/// Write one row (or delete it) and save its state.
async fn write_one(
    tx: &DatabaseTransaction,
    d: &dyn Dialect,
    table: &TableWrite<'_>,
    row: &RowWrite<'_>,
) -> Result<()> {
    let spec = table.spec;
    if let Some(pk) = &row.delete {
        delete_rows(tx, spec, std::slice::from_ref(pk)).await?;
    } else if row.state.is_live() {
        for q in row_statements(spec, &[(row.state.as_ref(), row.existed)], d, true)? {
            tx.execute_raw(q).await?;
        }
    }
    for q in table.versions.statements(&[(row.pk, row.state.as_ref())])? {
        tx.execute_raw(q).await?;
    }
    Ok(())
}
