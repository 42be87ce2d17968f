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
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sea_orm::sea_query::{Alias, LockType, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait, Value};

use super::applying::{begin_applying, end_applying};
use super::capture::{CaptureReport, seal_all};
use super::conflicts::{open_conflicts, update_remote};
use super::entity::TableHandle;
use super::parked::{Parked, park};
use super::seal_state::SealState;
use super::tables::{LOCAL_META, ROWS};
use crate::dialect::{self, Dialect, check_value};
use crate::model::change::{ChangeId, TableSpec};
use crate::model::clock::{HlcClock, NodeId, wall_clock_us};
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::value::pk_key;
use crate::store::rows;
use crate::store::write::{delete_rows, execute_all, execute_while, keys_match, upsert_statements};

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

/// Lock the existing rows with these keys until the transaction ends,
/// where the dialect locks rows (a SQLite write transaction already holds
/// the whole database).
async fn lock_rows(
    tx: &DatabaseTransaction,
    d: &dyn Dialect,
    spec: &TableSpec,
    keys: &[Vec<Value>],
) -> Result<()> {
    if !d.locks_rows() || keys.is_empty() {
        return Ok(());
    }
    for chunk in keys.chunks(500) {
        let q = Query::select()
            .columns(spec.pk.iter().map(|c| Alias::new(&c.name)))
            .from(Alias::new(&spec.name))
            .and_where(keys_match(spec, chunk, d))
            .lock(LockType::Update)
            .to_owned();
        tx.query_all(&q).await?;
    }
    Ok(())
}

/// The merged rows of one table, to write and save.
struct TableWrite<'a> {
    spec: &'a TableSpec,
    /// New states (live and dead) by key.
    states: Vec<(String, Cow<'a, RowState>)>,
    /// Keys of rows to delete.
    dead: Vec<Vec<Value>>,
}

/// The metadata a page stores in its transaction.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PageMeta<'a> {
    /// Keys and values to store (the pull cursor, a bootstrap's progress).
    pub(crate) store: &'a [(&'a str, &'a str)],
    /// Keys to remove.
    pub(crate) forget: &'a [&'a str],
}

/// Apply remote deltas and, in the same transaction, store and remove the
/// metadata of `meta`.
pub(crate) async fn apply_page(
    db: &DatabaseConnection,
    tables: &[Arc<dyn TableHandle>],
    node: NodeId,
    deltas: Vec<Delta>,
    meta: PageMeta<'_>,
) -> Result<ApplyReport> {
    let mut report = ApplyReport::default();
    let tx = db.begin().await?;
    let d = dialect::of_db(&tx)?;
    begin_applying(&tx).await?;
    let mut state = SealState::lock_and_load(&tx, node).await?;
    let by_table = route(&tx, d, tables, deltas, &mut report).await?;
    // Lock, then capture pending local writes so states are current.
    for h in tables {
        if let Some(ds) = by_table.get(&h.spec().name) {
            let keys: Vec<Vec<Value>> = ds.iter().map(|d| d.pk.clone()).collect();
            lock_rows(&tx, d, h.spec(), &keys).await?;
        }
    }
    seal_all(&tx, tables, &mut state, &mut report.captured).await?;
    // Merge, per table in registration order.
    let mut writes = Vec::new();
    let wall = wall_clock_us();
    for h in tables {
        if let Some(ds) = by_table.get(&h.spec().name) {
            let merged =
                merge_table(&tx, d, h.spec(), ds, &mut state.clock, wall, &mut report).await?;
            writes.push(merged);
        }
    }
    write_tables(&tx, d, &writes).await?;
    state.save_with(&tx, meta.store).await?;
    if !meta.forget.is_empty() {
        LOCAL_META.remove(&tx, meta.forget).await?;
    }
    end_applying(&tx).await?;
    tx.commit().await?;
    Ok(report)
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
    spec: &'a TableSpec,
    ds: &'a [Delta],
    clock: &mut HlcClock,
    wall: u64,
    report: &mut ApplyReport,
) -> Result<TableWrite<'a>> {
    let keys: Vec<String> = ds.iter().map(|d| pk_key(&d.pk)).collect::<Result<_>>()?;
    let before = rows::load_states(tx, ROWS, &spec.name, &keys).await?;
    let held = if spec.policy.holds_conflicts() {
        open_conflicts(tx, &spec.name, &keys).await?
    } else {
        Vec::new()
    };
    // A row that only one delta writes and that has no state here takes
    // the delta's state as it is (merging it into nothing is the
    // identity), without copying its values.
    let mut after: HashMap<&str, Cow<'_, RowState>> = HashMap::new();
    let mut pks: HashMap<&str, &Vec<Value>> = HashMap::new();
    let mut sources: HashMap<&str, Vec<&Delta>> = HashMap::new();
    for (delta, key) in ds.iter().zip(&keys) {
        let held_here: Vec<&str> = held
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, c)| c.as_str())
            .collect();
        let s = match after.entry(key.as_str()) {
            Entry::Vacant(e)
                if held_here.is_empty()
                    && !before.contains_key(key)
                    && delta.state.clocks.keys().eq(delta.state.vals.keys()) =>
            {
                e.insert(Cow::Borrowed(&delta.state));
                None
            }
            e => Some(
                e.or_insert_with(|| Cow::Owned(before.get(key).cloned().unwrap_or_default()))
                    .to_mut(),
            ),
        };
        if let Some(s) = s {
            merge_delta(tx, &spec.name, key, s, &delta.state, &held_here).await?;
        }
        if let Some(h) = delta.state.max_clock() {
            clock.observe(h, wall);
        }
        pks.insert(key.as_str(), &delta.pk);
        sources.entry(key.as_str()).or_default().push(delta);
    }
    let mut write = TableWrite {
        spec,
        states: Vec::new(),
        dead: Vec::new(),
    };
    for (key, s) in after {
        let was = before.get(key);
        if was.is_some_and(|w| w.same(&s)) {
            continue; // nothing new (e.g. our own rows in a snapshot)
        }
        if s.is_live() {
            if let Err(e) = check_row(d, spec, &s) {
                park_deltas(tx, &sources[key], &e.to_string()).await?;
                report.parked.push(e);
                continue;
            }
        } else if was.is_none_or(|w| w.is_live()) {
            write.dead.push(pks[key].clone());
        }
        // Dead states are saved too, not written as rows.
        write.states.push((key.to_owned(), s));
        report.applied += sources[key].len();
    }
    Ok(write)
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
async fn merge_delta(
    tx: &DatabaseTransaction,
    table: &str,
    key: &str,
    state: &mut RowState,
    incoming: &RowState,
    held: &[&str],
) -> Result<()> {
    if held.is_empty() {
        state.merge(incoming);
        return Ok(());
    }
    let mut incoming = incoming.clone();
    for col in held {
        if let (Some(v), Some(h)) = (incoming.vals.remove(*col), incoming.clocks.remove(*col)) {
            update_remote(tx, table, key, col, &v, h).await?;
        }
    }
    state.merge(&incoming);
    Ok(())
}

/// Write the merged tables: upserts parents first, deletes children first,
/// then the states. The database writes the rows while the statements that
/// save the states are built.
async fn write_tables(
    tx: &DatabaseTransaction,
    d: &dyn Dialect,
    writes: &[TableWrite<'_>],
) -> Result<()> {
    let kind = tx.get_database_backend();
    let mut upserts = Vec::new();
    for w in writes {
        let live: Vec<&RowState> = w
            .states
            .iter()
            .map(|(_, s)| s.as_ref())
            .filter(|s| s.is_live())
            .collect();
        for q in upsert_statements(w.spec, &live, d)? {
            upserts.push(kind.build(&q));
        }
    }
    let saves = execute_while(tx, upserts, || {
        let mut out = Vec::new();
        for w in writes {
            let states: Vec<_> = w
                .states
                .iter()
                .map(|(k, s)| (k.as_str(), s.as_ref(), None))
                .collect();
            for q in rows::state_statements(ROWS, &w.spec.name, &states)? {
                out.push(kind.build(&q));
            }
        }
        Ok(out)
    })
    .await?;
    for w in writes.iter().rev() {
        delete_rows(tx, w.spec, &w.dead).await?;
    }
    execute_all(tx, saves).await
}
