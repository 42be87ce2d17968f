//! Applying the hub's changes to the local database.
//!
//! One local transaction per batch: mark the session as applying (so the
//! capture triggers skip our writes), take the capture lock, lock the target
//! rows, capture any pending local write first (so the row states are
//! current and no local write is overwritten unseen), merge the remote
//! changes into the row states, write the resulting rows, save the states,
//! advance the pull cursor, and commit. A crash anywhere rolls all of it back;
//! the batch is pulled again and merging is idempotent.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use sea_orm::sea_query::{Alias, Expr, ExprTrait, LockType, OnConflict, Query, ValueTuple};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, TransactionTrait, Value};

use crate::apply;
use crate::capture::{self, CaptureReport, SealState, TableHandle};
use crate::change::{ChangeId, TableSpec};
use crate::clock::wall_clock_us;
use crate::error::{Error, Result};
use crate::merge::RowState;
use crate::schema::{self, APPLYING, ROWS};
use crate::store;
use crate::value::{check_value, pk_key};

/// Local table of pulled changes that could not be applied here, with why.
pub const PARKED: &str = "_tidesync_parked";

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
    /// The text kept when it is parked.
    fn payload(&self) -> Result<String> {
        Ok(match &self.raw {
            Some(raw) => raw.clone(),
            None => serde_json::to_string(&self.state)?,
        })
    }
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Remote changes or snapshot rows that changed local rows.
    pub applied: usize,
    /// Remote changes or rows that could not be applied locally and were
    /// parked in `_tidesync_parked`, with the reason.
    pub parked: Vec<Error>,
    /// Local writes captured on the way (see [`CaptureReport`]).
    pub captured: CaptureReport,
}

/// Insert this session into `_tidesync_applying`.
pub(crate) async fn begin_applying(tx: &DatabaseTransaction) -> Result<()> {
    let backend = tx.get_database_backend();
    let q = Query::insert()
        .into_table(Alias::new(APPLYING))
        .columns([Alias::new("session")])
        .values_panic([Expr::cust(schema::session_expr(backend))])
        .on_conflict(
            OnConflict::column(Alias::new("session"))
                .do_nothing_on([Alias::new("session")])
                .to_owned(),
        )
        .to_owned();
    tx.execute(&q).await?;
    Ok(())
}

pub(crate) async fn end_applying(tx: &DatabaseTransaction) -> Result<()> {
    let backend = tx.get_database_backend();
    let q = Query::delete()
        .from_table(Alias::new(APPLYING))
        .and_where(Expr::col(Alias::new("session")).eq(Expr::cust(schema::session_expr(backend))))
        .to_owned();
    tx.execute(&q).await?;
    Ok(())
}

/// Capture every pending marker inside `tx`.
pub(crate) async fn seal_all(
    tx: &DatabaseTransaction,
    tables: &[std::sync::Arc<dyn TableHandle>],
    state: &mut SealState,
    report: &mut CaptureReport,
) -> Result<()> {
    const BATCH: u64 = 500;
    // A table without any marker in the first phase has none to delete.
    let mut unmarked = Vec::new();
    for (phase, table) in capture::phases(tables) {
        let name = &table.spec().name;
        if phase == capture::Phase::Deletes && unmarked.contains(&name) {
            continue;
        }
        let mut skip = 0u64;
        loop {
            let sealed =
                capture::seal_table(tx, table.as_ref(), state, BATCH, skip, phase, report).await?;
            if skip == 0 && sealed.read == 0 {
                unmarked.push(name);
            }
            skip += sealed.kept as u64;
            if sealed.read < BATCH as usize || sealed.read == sealed.kept {
                break;
            }
        }
    }
    Ok(())
}

/// Lock the existing rows with these keys until the transaction ends
/// (PostgreSQL and MySQL; SQLite's write lock already covers the database).
async fn lock_rows(tx: &DatabaseTransaction, spec: &TableSpec, keys: &[Vec<Value>]) -> Result<()> {
    if tx.get_database_backend() == DbBackend::Sqlite || keys.is_empty() {
        return Ok(());
    }
    for chunk in keys.chunks(500) {
        let cond = if spec.pk.len() == 1 {
            Expr::col(Alias::new(&spec.pk[0].name)).is_in(chunk.iter().map(|k| k[0].clone()))
        } else {
            Expr::tuple(spec.pk.iter().map(|c| Expr::col(Alias::new(&c.name))))
                .in_tuples(chunk.iter().map(|k| ValueTuple::Many(k.clone())))
        };
        let q = Query::select()
            .columns(spec.pk.iter().map(|c| Alias::new(&c.name)))
            .from(Alias::new(&spec.name))
            .and_where(cond)
            .lock(LockType::Update)
            .to_owned();
        tx.query_all(&q).await?;
    }
    Ok(())
}

/// Park deltas that cannot be applied here.
async fn park(tx: &DatabaseTransaction, deltas: &[&Delta], reason: &str) -> Result<()> {
    for d in deltas {
        let (origin, seq) = d.id.map_or(("snapshot".to_owned(), 0i64), |id| {
            (id.origin.to_string(), id.seq as i64)
        });
        let q = Query::insert()
            .into_table(Alias::new(PARKED))
            .columns(["tbl", "pk", "origin", "seq", "payload", "reason"].map(Alias::new))
            .values_panic([
                d.table.clone().into(),
                pk_key(&d.pk)?.into(),
                origin.into(),
                seq.into(),
                d.payload()?.into(),
                reason.into(),
            ])
            .to_owned();
        tx.execute(&q).await?;
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

/// Apply remote deltas and, in the same transaction, store `cursor` under
/// `cursor_key` in the local metadata.
pub(crate) async fn apply_deltas(
    db: &sea_orm::DatabaseConnection,
    tables: &[std::sync::Arc<dyn TableHandle>],
    node: crate::clock::NodeId,
    deltas: Vec<Delta>,
    cursor_key: &str,
    cursor: &str,
) -> Result<ApplyReport> {
    apply_deltas_with(db, tables, node, deltas, &[(cursor_key, cursor)], &[]).await
}

/// Apply remote deltas and, in the same transaction, store `meta` in the
/// local metadata and remove the keys `forget` from it (a bootstrap's last
/// page stores the pull cursor and removes its progress).
pub(crate) async fn apply_deltas_with(
    db: &sea_orm::DatabaseConnection,
    tables: &[std::sync::Arc<dyn TableHandle>],
    node: crate::clock::NodeId,
    deltas: Vec<Delta>,
    meta: &[(&str, &str)],
    forget: &[&str],
) -> Result<ApplyReport> {
    let mut report = ApplyReport::default();
    let tx = db.begin().await?;
    let backend = tx.get_database_backend();
    begin_applying(&tx).await?;
    let mut state = SealState::lock_and_load(&tx, node).await?;

    // Park what must be parked; group the rest by table, keeping arrival
    // order within a table.
    let (to_park, deltas): (Vec<Delta>, Vec<Delta>) =
        deltas.into_iter().partition(|d| d.park.is_some());
    for d in &to_park {
        park(&tx, &[d], d.park.as_deref().unwrap_or_default()).await?;
    }
    let mut by_table: BTreeMap<String, Vec<Delta>> = BTreeMap::new();
    for d in deltas {
        by_table.entry(d.table.clone()).or_default().push(d);
    }
    let mut unknown: Vec<(String, Vec<Delta>)> = Vec::new();
    for t in by_table.keys().cloned().collect::<Vec<_>>() {
        if !tables.iter().any(|h| h.spec().name == t) {
            let ds = by_table.remove(&t).unwrap_or_default();
            unknown.push((t, ds));
        }
    }
    for (t, ds) in &unknown {
        let refs: Vec<&Delta> = ds.iter().collect();
        let reason = format!("table `{t}` is not registered on this replica");
        park(&tx, &refs, &reason).await?;
        report.parked.push(Error::UnknownTable(t.clone()));
    }
    // A key this dialect cannot hold (a u64 above i64::MAX on SQLite, say)
    // cannot even be looked up: park it.
    for h in tables {
        let spec = h.spec();
        let Some(ds) = by_table.get_mut(&spec.name) else {
            continue;
        };
        let mut kept = Vec::with_capacity(ds.len());
        for d in ds.drain(..) {
            let bad = spec.pk.iter().zip(&d.pk).find_map(|(c, v)| {
                check_value(&spec.name, &c.name, Some(&c.ty), v, Some(backend)).err()
            });
            match bad {
                Some(e) => {
                    park(&tx, &[&d], &e.to_string()).await?;
                    report.parked.push(e);
                }
                None if d.pk.len() == spec.pk.len() => kept.push(d),
                None => {
                    let reason = format!(
                        "{}: key has {} values, the table {}",
                        spec.name,
                        d.pk.len(),
                        spec.pk.len()
                    );
                    park(&tx, &[&d], &reason).await?;
                    report.parked.push(Error::Corrupt(reason));
                }
            }
        }
        *ds = kept;
    }

    // Lock, then capture pending local writes so states are current.
    for h in tables {
        if let Some(ds) = by_table.get(&h.spec().name) {
            let keys: Vec<Vec<Value>> = ds.iter().map(|d| d.pk.clone()).collect();
            lock_rows(&tx, h.spec(), &keys).await?;
        }
    }
    seal_all(&tx, tables, &mut state, &mut report.captured).await?;

    // Merge, per table in registration order.
    let mut writes: Vec<TableWrite<'_>> = Vec::new();
    let wall = wall_clock_us();
    for h in tables {
        let spec = h.spec();
        let Some(ds) = by_table.get(&spec.name) else {
            continue;
        };
        let keys: Vec<String> = ds.iter().map(|d| pk_key(&d.pk)).collect::<Result<_>>()?;
        let before = store::load_states(&tx, ROWS, &spec.name, &keys).await?;
        // Columns with a conflict held here keep the local value until it is
        // resolved; what arrives for them updates the conflict's remote side.
        let held = if spec.policy.holds_conflicts() {
            crate::resolve::open_conflicts(&tx, &spec.name, &keys).await?
        } else {
            Vec::new()
        };
        // A row that only one delta writes and that has no state here takes
        // the delta's state as it is (merging it into nothing is the
        // identity), without copying its values.
        let mut after: HashMap<&str, Cow<'_, RowState>> = HashMap::new();
        let mut pks: HashMap<&str, &Vec<Value>> = HashMap::new();
        let mut sources: HashMap<&str, Vec<&Delta>> = HashMap::new();
        for (d, key) in ds.iter().zip(&keys) {
            let is_held = held.iter().any(|(k, _)| k == key);
            let s = match after.entry(key.as_str()) {
                Entry::Vacant(e)
                    if !is_held
                        && !before.contains_key(key)
                        && d.state.clocks.keys().eq(d.state.vals.keys()) =>
                {
                    e.insert(Cow::Borrowed(&d.state));
                    None
                }
                e => Some(
                    e.or_insert_with(|| Cow::Owned(before.get(key).cloned().unwrap_or_default()))
                        .to_mut(),
                ),
            };
            if let Some(s) = s {
                if is_held {
                    let mut incoming = d.state.clone();
                    for (_, col) in held.iter().filter(|(k, _)| k == key) {
                        if let (Some(v), Some(h)) =
                            (incoming.vals.remove(col), incoming.clocks.remove(col))
                        {
                            crate::resolve::update_remote(&tx, &spec.name, key, col, &v, h).await?;
                        }
                    }
                    s.merge(&incoming);
                } else {
                    s.merge(&d.state);
                }
            }
            if let Some(h) = d.state.max_clock() {
                state.clock.observe(h, wall);
            }
            pks.insert(key.as_str(), &d.pk);
            sources.entry(key.as_str()).or_default().push(d);
        }
        let mut live = Vec::new();
        let mut dead = Vec::new();
        'rows: for (key, s) in after {
            let was = before.get(key);
            if was.is_some_and(|w| w.same(&s)) {
                continue; // nothing new (e.g. our own rows in a snapshot)
            }
            if s.is_live() {
                for c in &spec.columns {
                    let Some(v) = s.vals.get(&c.name) else {
                        continue;
                    };
                    if let Err(e) = check_value(&spec.name, &c.name, Some(&c.ty), v, Some(backend))
                    {
                        park(&tx, &sources[key], &e.to_string()).await?;
                        report.parked.push(e);
                        continue 'rows;
                    }
                }
                live.push((key.to_owned(), s));
            } else {
                if was.is_some_and(|w| w.is_live()) || was.is_none() {
                    dead.push(pks[key].clone());
                }
                live.push((key.to_owned(), s)); // saved below, not written as a row
            }
            report.applied += sources[key].len();
        }
        writes.push(TableWrite {
            spec,
            states: live,
            dead,
        });
    }
    // Upserts parents first, deletes children first. The database writes
    // the rows while the statements that save the states are built.
    let mut upserts = Vec::new();
    for w in &writes {
        let rows: Vec<&RowState> = w
            .states
            .iter()
            .map(|(_, s)| s.as_ref())
            .filter(|s| s.is_live())
            .collect();
        for q in apply::upsert_statements(w.spec, &rows, backend)? {
            upserts.push(backend.build(&q));
        }
    }
    let saves = apply::execute_while(&tx, upserts, || {
        let mut out = Vec::new();
        for w in &writes {
            let states: Vec<_> = w
                .states
                .iter()
                .map(|(k, s)| (k.as_str(), s.as_ref(), None))
                .collect();
            for q in store::state_statements(ROWS, &w.spec.name, &states)? {
                out.push(backend.build(&q));
            }
        }
        Ok(out)
    })
    .await?;
    for w in writes.iter().rev() {
        apply::delete_rows(&tx, w.spec, &w.dead).await?;
    }
    apply::execute_all(&tx, saves).await?;
    state.save_with(&tx, meta).await?;
    if !forget.is_empty() {
        let q = Query::delete()
            .from_table(Alias::new(schema::META))
            .and_where(Expr::col(Alias::new("key")).is_in(forget.iter().copied()))
            .to_owned();
        tx.execute(&q).await?;
    }
    end_applying(&tx).await?;
    tx.commit().await?;
    Ok(report)
}
