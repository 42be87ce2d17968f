//! Turning dirty markers into typed changes.
//!
//! A marker says "row `pk` was written"; the change is the difference
//! between the row as it is now and its last captured state (the *shadow*
//! in the table's version table, see `versions`). Sealing a batch is one local transaction: read the
//! markers, the rows and the shadows, append the changes to the outbox with
//! their sequence numbers and clocks, update the shadows, delete the
//! markers that were not rewritten meanwhile, and persist the clock. A crash
//! at any point leaves either the markers or the changes, never neither.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::sea_query::{Alias, Asterisk, Expr, ExprTrait, Query, SimpleExpr, ValueTuple};
use sea_orm::{ConnectionTrait, DatabaseTransaction, TransactionTrait, Value};

use super::applying::{begin_applying, end_applying, is_applying};
use super::entity::{Marker, RowImage, TableHandle, rowid_name};
use super::seal_state::SealState;
use super::tables::{OUTBOX, dirty_table, version_table};
use super::versions::{self, Versions};
use crate::dialect::{self, Place, check_value};
use crate::model::change::{Op, TableSpec};
use crate::model::error::{Error, Result};
use crate::model::merge::RowState;
use crate::model::value::{is_null, pk_key, same_value, to_micros};
use crate::store::codec::{StoredText, db_sequence};
use crate::store::write::{execute_all, execute_while, keys_match, value_expr};

/// What one capture pass did.
#[derive(Debug, Default)]
pub struct CaptureReport {
    /// Changes appended to the outbox.
    pub captured: usize,
    /// Markers looked at.
    pub examined: usize,
    /// Rows that could not be captured (e.g. a NaN): their markers stay and
    /// are retried by the next capture, after the row is fixed.
    pub rejected: Vec<Error>,
}

/// Diff one row against its shadow. `None` when nothing changed. A row
/// that is `reborn` (deleted, or moved to another key, then inserted again
/// since the shadow) is a new row: an insert of every column, even where
/// its values equal the shadow's.
pub(crate) fn diff(
    spec: &TableSpec,
    current: Option<&[Value]>,
    shadow: Option<&RowState>,
    reborn: bool,
) -> Option<(Op, Vec<(String, Value)>)> {
    let live_shadow = shadow.filter(|s| s.is_live());
    match (current, live_shadow) {
        (None, None) => None,
        (None, Some(_)) => Some((Op::Delete, Vec::new())),
        (Some(row), None) => Some((
            Op::Insert,
            spec.columns
                .iter()
                .map(|c| c.name.clone())
                .zip(row.iter().cloned())
                .collect(),
        )),
        (Some(_), Some(_)) if reborn => diff(spec, current, None, false),
        (Some(row), Some(s)) => {
            let changed: Vec<(String, Value)> = spec
                .columns
                .iter()
                .zip(row)
                .filter(|(c, v)| match s.vals.get(&c.name) {
                    Some(old) => !same_value(old, v),
                    // A column the state never had (added by an app
                    // upgrade): its NULL was not written by the user.
                    None => !is_null(v),
                })
                .map(|(c, v)| (c.name.clone(), v.clone()))
                .collect();
            (!changed.is_empty()).then_some((Op::Update, changed))
        }
    }
}

/// Seal up to `limit` markers of one table (skipping `offset` rejected ones):
/// append their changes to the outbox, save the shadows, delete the markers
/// that were not rewritten meanwhile.
pub(crate) async fn seal_table(
    tx: &DatabaseTransaction,
    table: &dyn TableHandle,
    state: &mut SealState,
    round: Round,
    report: &mut CaptureReport,
) -> Result<Sealed> {
    let spec = table.spec();
    let read = match dialect::of_db(tx)?.joins_keys() && rowid_name(spec).is_some() {
        true => read_joined(tx, table, round).await?,
        false => read_apart(tx, table, round).await?,
    };
    let Some(Read {
        markers,
        keys,
        rows,
        mut versions,
        shadows,
    }) = read
    else {
        return Ok(Sealed::default());
    };
    let mut current: HashMap<String, Vec<Value>> = HashMap::with_capacity(rows.len());
    // Values finer than a microsecond, cut (see `to_micros`): the change
    // carries the cut value, and the row is written with it below.
    // Not a key (a key that fine refuses its row, see `finer_key`), and
    // not in a row whose key is that fine.
    let mut finer: Vec<Finer> = Vec::new();
    for (pk, mut vals) in rows {
        let mut cut = Vec::new();
        if pk.iter().all(|v| to_micros(v).is_none()) {
            for (i, (c, v)) in spec.columns.iter().zip(vals.iter_mut()).enumerate() {
                if spec.pk.iter().any(|k| k.name == c.name) {
                    continue;
                }
                if let Some(whole) = to_micros(v) {
                    cut.push((i, std::mem::replace(v, whole)));
                }
            }
        }
        if !cut.is_empty() {
            finer.push((pk.clone(), cut, vals.clone()));
        }
        current.insert(pk_key(&pk)?, vals);
    }
    let read = MarkedRows {
        shadows,
        markers: &markers,
        keys: &keys,
        current,
    };
    let batch = seal_markers(spec, state, round.phase, read, report)?;
    let kept = batch.kept;
    report.captured += batch.outbox.len();
    versions
        .register(tx, batch.shadows.iter().map(|(_, s)| s))
        .await?;
    write_sealed(tx, spec, &versions, batch).await?;
    cut_finer_times(tx, spec, &finer).await?;
    Ok(Sealed {
        read: markers.len(),
        kept,
    })
}

/// What sealing reads for a batch of markers: the markers in key order,
/// their key texts, the rows under their keys as they are now, and their
/// version rows' states by key text.
struct Read<'a> {
    markers: Vec<Marker>,
    keys: Vec<String>,
    rows: Vec<RowImage>,
    versions: Versions<'a>,
    shadows: HashMap<String, RowState>,
}

/// [`Read`] in one query, the markers joined with their rows and version
/// rows (where the dialect [joins keys](crate::dialect::Dialect::joins_keys);
/// see [`TableHandle::marked`]). `None`: no marker.
///
/// The marker holds its key as the table holds it (the triggers copy
/// it), the version row as tidesync bound it: one stored text of many for
/// a date-time or a decimal (a date-time with its offset, or written by
/// raw SQL with a `T`, against the form the driver binds; see
/// [`stored_as_bound`]). So the join finds the row under any stored form,
/// and a version row only where the two forms agree: for keys of other
/// kinds, the markers the join found no version row for have it looked up
/// by their keys, as [`read_apart`] does.
///
/// A row or version row joined under a key whose text is not the
/// marker's (a value of another type the database takes as equal) is
/// not the marker's: the row counts as absent, as when read by the
/// marker's key, and the version row is refused as
/// [`Versions::load`] refuses it.
async fn read_joined<'a>(
    tx: &DatabaseTransaction,
    table: &'a dyn TableHandle,
    round: Round,
) -> Result<Option<Read<'a>>> {
    let spec = table.spec();
    let marked = table
        .marked(tx, &version_table(&spec.name), round.limit, round.offset)
        .await?;
    if marked.is_empty() {
        return Ok(None);
    }
    let mut versions = versions::open(tx, table).await?;
    let mut markers = Vec::with_capacity(marked.len());
    let mut keys: Vec<String> = Vec::with_capacity(marked.len());
    let mut rows = Vec::with_capacity(marked.len());
    let mut shadows = HashMap::with_capacity(marked.len());
    for m in marked {
        let key = pk_key(&m.marker.pk)?;
        if keys.last() == Some(&key) {
            return Err(Error::Corrupt(format!(
                "{}: the key {key} joined more than one row",
                spec.name
            )));
        }
        if let Some(row) = m.row
            && pk_key(&row.0)? == key
        {
            rows.push(row);
        }
        if let Some(v) = m.version {
            let state = versions
                .stored(
                    tx,
                    &m.marker.pk,
                    &v.key,
                    (&v.clocks, v.del.as_deref(), &v.vals),
                )
                .await?;
            shadows.insert(key.clone(), state);
        }
        markers.push(m.marker);
        keys.push(key);
    }
    if !spec.pk.iter().all(stored_as_bound) {
        let unjoined: Vec<Vec<Value>> = markers
            .iter()
            .zip(&keys)
            .filter(|(_, k)| !shadows.contains_key(*k))
            .map(|(m, _)| m.pk.clone())
            .collect();
        if !unjoined.is_empty() {
            shadows.extend(versions.load(tx, &unjoined).await?);
        }
    }
    Ok(Some(Read {
        markers,
        keys,
        rows,
        versions,
        shadows,
    }))
}

/// Whether a key column's values are stored in one form only, the form
/// the driver binds (integers, text, bytes, UUIDs), so that a key copied
/// by a trigger and the same key bound by tidesync compare equal as
/// stored. A date-time, a decimal, a float or JSON has several stored
/// forms of one value on SQLite (text with any offset or separator).
fn stored_as_bound(c: &crate::model::change::ColumnSpec) -> bool {
    use sea_orm::sea_query::ArrayType as K;
    matches!(
        c.kind,
        Some(
            K::Bool
                | K::TinyInt
                | K::SmallInt
                | K::Int
                | K::BigInt
                | K::TinyUnsigned
                | K::SmallUnsigned
                | K::Unsigned
                | K::BigUnsigned
                | K::String
                | K::Char
                | K::Bytes
                | K::Uuid
        )
    )
}

/// [`Read`] in three queries: the markers, then their rows and their
/// version rows by the markers' keys (where the dialect does not join
/// keys). `None`: no marker.
async fn read_apart<'a>(
    tx: &DatabaseTransaction,
    table: &'a dyn TableHandle,
    round: Round,
) -> Result<Option<Read<'a>>> {
    let markers = table.markers(tx, round.limit, round.offset).await?;
    if markers.is_empty() {
        return Ok(None);
    }
    let pks: Vec<Vec<Value>> = markers.iter().map(|m| m.pk.clone()).collect();
    let keys: Vec<String> = pks.iter().map(|p| pk_key(p)).collect::<Result<_>>()?;
    let rows = table.rows(tx, &pks).await?;
    let mut versions = versions::open(tx, table).await?;
    let shadows = versions.load(tx, &pks).await?;
    Ok(Some(Read {
        markers,
        keys,
        rows,
        versions,
        shadows,
    }))
}

/// A row with times finer than a microsecond: its key, the columns cut
/// (index, value read), and its values once cut.
type Finer = (Vec<Value>, Vec<(usize, Value)>, Vec<Value>);

/// Write the cut values of `finer` (key, columns cut with the value read,
/// the row's values) into their rows, as a pulled change is written (the
/// capture triggers leave it alone), where the column still holds the
/// value read: the row holds what every other replica holds.
async fn cut_finer_times(
    tx: &DatabaseTransaction,
    spec: &TableSpec,
    finer: &[Finer],
) -> Result<()> {
    if finer.is_empty() {
        return Ok(());
    }
    let d = dialect::of_db(tx)?;
    // Inside a pulled page's transaction the session applies already, and
    // must go on applying after this.
    let applying = is_applying(tx).await?;
    if !applying {
        begin_applying(tx).await?;
    }
    for (pk, cut, vals) in finer {
        for (i, read) in cut {
            let c = &spec.columns[*i];
            let q = Query::update()
                .table(Place::of(d, spec).table_ref())
                .value(
                    Alias::new(&c.name),
                    value_expr(&spec.name, c, &vals[*i], d)?,
                )
                .and_where(keys_match(spec, std::slice::from_ref(pk), d))
                .and_where(Expr::col(Alias::new(&c.name)).eq(value_expr(&spec.name, c, read, d)?))
                .to_owned();
            tx.execute(&q).await?;
        }
    }
    if !applying {
        end_applying(tx).await?;
    }
    Ok(())
}

/// A key value finer than a microsecond refuses its row: cut, it would be
/// another key, and PostgreSQL and MySQL cannot hold it whole.
fn finer_key(spec: &TableSpec, pk: &[Value]) -> Option<Error> {
    spec.pk.iter().zip(pk).find_map(|(c, v)| {
        to_micros(v).map(|_| {
            Error::unrepresentable(
                &spec.name,
                &c.name,
                crate::model::value::render(v),
                "a key time finer than a microsecond: PostgreSQL and MySQL keep microseconds, \
                 so the key would name another row there",
            )
        })
    })
}

/// What sealing a page of markers produced.
#[derive(Default)]
struct SealedBatch {
    /// The outbox rows of the new changes, in order, with their sizes.
    outbox: Vec<(Vec<Value>, usize)>,
    /// The shadows after them, by key.
    shadows: Vec<(Vec<Value>, RowState)>,
    /// Markers to delete: key values (or `rowid`, see `by_rowid`) and the
    /// version read.
    markers: Vec<ValueTuple>,
    /// Sealed markers whose row went: key values and the `gone` read. One
    /// that a later write kept in place has its `gone` cleared, unless the
    /// row went again since (a newer `gone`): sealed as a new row once, it
    /// is not new at the next capture.
    gone: Vec<ValueTuple>,
    /// Markers left in place (rejected, or waiting for the other phase).
    kept: usize,
    /// The name of the `rowid` (see [`rowid_name`]) where `markers` and
    /// `gone` name markers by it instead of by their key values: read with
    /// it, a marker is deleted as stored (a key bound again may be stored
    /// otherwise, a date-time written by raw SQL with a `T`, and would
    /// match no marker).
    by_rowid: Option<&'static str>,
}

/// A page of markers with what capture reads for them.
struct MarkedRows<'a> {
    markers: &'a [Marker],
    /// The key text of each marker.
    keys: &'a [String],
    /// The rows as they are now, by key text (a deleted row is absent).
    current: HashMap<String, Vec<Value>>,
    /// Their last captured states, by key text.
    shadows: HashMap<String, RowState>,
}

/// Diff each marked row against its shadow into a change. Markers are
/// keyed by row, so each row is sealed once: its shadow is taken out of
/// the map, not copied.
fn seal_markers(
    spec: &TableSpec,
    state: &mut SealState,
    phase: Phase,
    read: MarkedRows<'_>,
    report: &mut CaptureReport,
) -> Result<SealedBatch> {
    let MarkedRows {
        markers,
        keys,
        current,
        mut shadows,
    } = read;
    let mut out = SealedBatch {
        outbox: Vec::with_capacity(markers.len()),
        shadows: Vec::with_capacity(markers.len()),
        markers: Vec::with_capacity(markers.len()),
        ..SealedBatch::default()
    };
    for (marker, key) in markers.iter().zip(keys) {
        report.examined += 1;
        let row = current.get(key).map(Vec::as_slice);
        let shadow = shadows.remove(key);
        let diffed = diff(spec, row, shadow.as_ref(), marker.gone > 0);
        let deferred = matches!(
            (&diffed, phase),
            (Some((Op::Delete, _)), Phase::Upserts)
                | (Some((Op::Insert | Op::Update, _)), Phase::Deletes)
        );
        let rejected = row
            .and_then(|row| {
                spec.columns
                    .iter()
                    .zip(row)
                    .find_map(|(c, v)| check_value(&spec.name, &c.name, Some(&c.ty), v, None).err())
            })
            .or_else(|| finer_key(spec, &marker.pk));
        if deferred || rejected.is_some() {
            report.rejected.extend(rejected.filter(|_| !deferred));
            out.kept += 1;
            continue;
        }
        // With room for the version or `gone` pushed after.
        let mut id = Vec::with_capacity(marker.pk.len() + 1);
        match marker.rowid {
            Some(rowid) => {
                out.by_rowid = rowid_name(spec);
                id.push(Value::BigInt(Some(rowid)));
            }
            None => id.extend(marker.pk.iter().cloned()),
        }
        if marker.gone > 0 {
            let mut tuple = id.clone();
            tuple.push(Value::BigInt(Some(marker.gone)));
            out.gone.push(ValueTuple::Many(tuple));
        }
        let mut tuple = id;
        tuple.push(Value::BigInt(Some(marker.ver)));
        out.markers.push(ValueTuple::Many(tuple));
        let Some((op, columns)) = diffed else {
            continue;
        };
        let change = state.change(spec, marker, op, columns, shadow.as_ref());
        let ids = vec![db_sequence(change.id.seq)?.into()];
        out.outbox.push(OUTBOX.sized_row(ids, &change)?);
        // A change kept is sent as it is, and pushed again after a crash
        // as the outbox gives it back: the two must be one, or the hub
        // sees another change under its id (a copy of the device).
        debug_assert!(
            StoredText::of(&change)?.reads_back_as(&change)?,
            "a sealed change must read back as it was made: {change:?}"
        );
        state.keep(&change);
        let next = match shadow {
            Some(mut next) => {
                next.apply(&change);
                next
            }
            None => RowState::of_change(change),
        };
        out.shadows.push((marker.pk.clone(), next));
    }
    Ok(out)
}

/// Write a sealed batch: the outbox (while the statements that save the
/// shadows are built), the shadows, then delete the sealed markers, only
/// those whose version is unchanged: a write that committed after the row
/// was read bumped `ver` and keeps its marker.
async fn write_sealed(
    tx: &DatabaseTransaction,
    spec: &TableSpec,
    versions: &Versions<'_>,
    batch: SealedBatch,
) -> Result<()> {
    if !batch.outbox.is_empty() {
        let inserts = OUTBOX.batch(tx.get_database_backend(), batch.outbox)?;
        let saves = execute_while(tx, inserts, || {
            let states: Vec<_> = batch
                .shadows
                .iter()
                .map(|(k, s)| (k.as_slice(), s))
                .collect();
            versions.statements(&states)
        })
        .await?;
        execute_all(tx, saves).await?;
    }
    let key_and = |column: &str| -> SimpleExpr {
        let mut cols: Vec<SimpleExpr> = match batch.by_rowid {
            Some(rowid) => vec![Expr::col(Alias::new(rowid))],
            None => spec
                .pk
                .iter()
                .map(|c| Expr::col(Alias::new(&c.name)))
                .collect(),
        };
        cols.push(Expr::col(Alias::new(column)));
        Expr::tuple(cols)
    };
    if !batch.markers.is_empty() {
        let del = Query::delete()
            .from_table(Alias::new(dirty_table(&spec.name)))
            .and_where(key_and("ver").in_tuples(batch.markers))
            .to_owned();
        tx.execute(&del).await?;
    }
    if !batch.gone.is_empty() {
        let clear = Query::update()
            .table(Alias::new(dirty_table(&spec.name)))
            .value(Alias::new("gone"), 0)
            .and_where(key_and("gone").in_tuples(batch.gone))
            .to_owned();
        tx.execute(&clear).await?;
    }
    Ok(())
}

/// Which markers one [`seal_table`] call reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Round {
    /// The changes it emits.
    pub(crate) phase: Phase,
    /// At most this many markers.
    pub(crate) limit: u64,
    /// After skipping this many (kept by earlier calls of the pass).
    pub(crate) offset: u64,
}

/// Capture every pending marker of `tables` inside `tx`, in batches of
/// `BATCH` markers, round by round (see [`phases`] and [`Pass`]). Every
/// marker present is sealed (or refused): callers that apply remote changes
/// next rely on it.
pub(crate) async fn seal_all(
    tx: &DatabaseTransaction,
    tables: &[Arc<dyn TableHandle>],
    state: &mut SealState,
    report: &mut CaptureReport,
) -> Result<()> {
    let mut pass = Pass::new(tables);
    loop {
        match pass.step(tx, state, report, SEAL_ALL_RESTARTS).await? {
            Step::More => {}
            Step::Done => return Ok(()),
            // Writes keep arriving: seal the rest in order without going
            // back (a child may then precede its parent, which the hub
            // refuses by name), rather than leave a local write uncaptured
            // under the rows the caller writes next.
            Step::Stopped => pass.checked = false,
        }
    }
}

/// How often the pass of [`seal_all`] goes back before it seals the rest
/// without checking for arrivals.
const SEAL_ALL_RESTARTS: usize = 64;

/// A capture pass: the rounds of [`phases`], each sealing one table's
/// markers of one phase batch by batch, so that the outbox order satisfies
/// the foreign keys between synced tables.
///
/// Writes committed while a pass runs may add markers to a table whose
/// round is over: a new parent committed with its child, read by the
/// child's round after the parent's round ended. So after each batch is
/// sealed (in a savepoint), the pass counts the markers of the tables whose
/// rounds of this phase came before: another count than the round left in
/// place means markers arrived (or another pass sealed some, after which
/// the count cannot tell); the batch is rolled back and the pass goes back
/// to that round. The count is taken after the batch read its markers, so
/// a parent committed with a child the batch read is counted. In the
/// deletes phase, a child table with pending markers other than refused
/// rows also sends the pass back (to the child's upserts round): a child
/// may have moved away from a parent about to be deleted.
pub(crate) struct Pass<'t> {
    tables: &'t [Arc<dyn TableHandle>],
    rounds: Vec<(Phase, usize)>,
    /// The current round.
    at: usize,
    /// Markers kept so far by the current round's batches.
    offset: u64,
    /// Markers each finished round left in place.
    kept: Vec<u64>,
    /// Rows refused by each table's upserts round (their markers stay).
    refused: Vec<u64>,
    /// Tables without any marker in their upserts round.
    unmarked: Vec<bool>,
    /// Times the pass went back.
    restarts: usize,
    /// Whether batches check for markers that arrived meanwhile.
    checked: bool,
}

/// What one [`Pass::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A batch was sealed or rolled back; there is more to do.
    More,
    /// Every round is done.
    Done,
    /// The pass went back more often than it may: it ends here, and the
    /// markers left wait for the next pass.
    Stopped,
}

impl Step {
    /// Whether the pass is over.
    pub(crate) fn finished(self) -> bool {
        self != Step::More
    }
}

impl<'t> Pass<'t> {
    pub(crate) fn new(tables: &'t [Arc<dyn TableHandle>]) -> Self {
        let index = |t: &Arc<dyn TableHandle>| {
            tables
                .iter()
                .position(|x| Arc::ptr_eq(x, t))
                .unwrap_or_default()
        };
        let rounds = phases(tables).map(|(p, t)| (p, index(t))).collect();
        Pass {
            tables,
            rounds,
            at: 0,
            offset: 0,
            kept: vec![0; tables.len() * 2],
            refused: vec![0; tables.len()],
            unmarked: vec![false; tables.len()],
            restarts: 0,
            checked: true,
        }
    }

    /// Seal the current round's next batch in a savepoint of `tx`, or go
    /// back if markers arrived meanwhile (at most `max_restarts` times).
    pub(crate) async fn step(
        &mut self,
        tx: &DatabaseTransaction,
        state: &mut SealState,
        report: &mut CaptureReport,
        max_restarts: usize,
    ) -> Result<Step> {
        let Some(&(phase, t)) = self.rounds.get(self.at) else {
            return Ok(Step::Done);
        };
        if phase == Phase::Deletes && self.unmarked[t] {
            self.finish_round();
            return Ok(Step::More);
        }
        let before = (
            state.next_seq,
            report.captured,
            report.examined,
            report.rejected.len(),
            state.kept.as_ref().map_or(0, Vec::len),
        );
        let sp = tx.begin().await?;
        let round = Round {
            phase,
            limit: BATCH,
            offset: self.offset,
        };
        let sealed = seal_table(&sp, self.tables[t].as_ref(), state, round, report).await?;
        let refused = (report.rejected.len() - before.3) as u64;
        let arrived = match self.checked {
            true => self.arrived(&sp).await?,
            false => None,
        };
        if let Some(back) = arrived {
            sp.rollback().await?;
            state.next_seq = before.0;
            report.captured = before.1;
            report.examined = before.2;
            report.rejected.truncate(before.3);
            state.unkeep(before.4);
            if self.restarts >= max_restarts {
                return Ok(Step::Stopped);
            }
            self.restarts += 1;
            self.at = back;
            self.offset = 0;
            return Ok(Step::More);
        }
        sp.commit().await?;
        if phase == Phase::Upserts {
            if self.offset == 0 {
                // The round starts (again).
                self.refused[t] = 0;
                self.unmarked[t] = sealed.read == 0;
            }
            self.refused[t] += refused;
        }
        self.offset += sealed.kept as u64;
        if sealed.done() {
            self.finish_round();
        }
        Ok(Step::More)
    }

    /// Record what the current round left in place and move to the next.
    fn finish_round(&mut self) {
        self.kept[self.at] = self.offset;
        self.at += 1;
        self.offset = 0;
    }

    /// The round to go back to, if markers arrived in a table whose round
    /// of this phase is over (or, in the deletes phase, a child table has
    /// markers pending).
    async fn arrived(&self, tx: &DatabaseTransaction) -> Result<Option<usize>> {
        let (phase, _) = self.rounds[self.at];
        for (r, &(p, t)) in self.rounds[..self.at].iter().enumerate() {
            if p != phase {
                continue;
            }
            let n = count_markers(tx, self.tables[t].spec()).await?;
            if n != self.kept[r] {
                // New markers: their round again (for a child in the
                // deletes phase, its upserts first). Fewer than the round
                // left: another pass sealed some meanwhile (a `resolve`
                // during the push, `capture` called beside a sync, another
                // process), and the count no longer tells new markers
                // apart: the round again too.
                return Ok(Some(self.round_of(Phase::Upserts, t).unwrap_or(r)));
            }
            if phase == Phase::Deletes && n > self.refused[t] {
                // A child's upserts arrived after its upserts round.
                return Ok(self.round_of(Phase::Upserts, t));
            }
        }
        Ok(None)
    }

    /// The index of the round of `phase` for table `t`.
    fn round_of(&self, phase: Phase, t: usize) -> Option<usize> {
        self.rounds.iter().position(|&(p, x)| p == phase && x == t)
    }
}

/// How many markers a table has now.
async fn count_markers(tx: &DatabaseTransaction, spec: &TableSpec) -> Result<u64> {
    let q = Query::select()
        .expr_as(Expr::col(Asterisk).count(), Alias::new("n"))
        .from(Alias::new(dirty_table(&spec.name)))
        .to_owned();
    let n: i64 = match tx.query_one(&q).await? {
        Some(r) => r.try_get("", "n")?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// How many markers one capture transaction seals.
pub(crate) const BATCH: u64 = 500;

/// Which changes a sealing round emits. A capture pass seals inserts and
/// updates table by table in registration order (parents first), then
/// deletes in reverse order (children first), so the outbox order satisfies
/// foreign keys between synced tables whatever the batch boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Inserts and updates; delete markers wait.
    Upserts,
    /// Deletes; other markers wait for the next pass.
    Deletes,
}

/// What one [`seal_table`] call did with the markers it read.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sealed {
    /// Markers read.
    pub(crate) read: usize,
    /// Markers left in place (rejected, or waiting for the other phase).
    pub(crate) kept: usize,
}

impl Sealed {
    /// Whether the table has no more markers for this pass: fewer than a
    /// batch were read. A batch whose markers were all kept (deletes in
    /// the upserts round, say) is not the end: the next read skips them,
    /// and the markers after them (a new parent after a batch of parent
    /// deletes that sort first) must be sealed in this round, before the
    /// children's.
    pub(crate) fn done(&self) -> bool {
        self.read < BATCH as usize
    }
}

/// The (phase, table) rounds of a capture pass, in the order that keeps
/// foreign keys satisfied.
pub(crate) fn phases(
    tables: &[Arc<dyn TableHandle>],
) -> impl Iterator<Item = (Phase, &Arc<dyn TableHandle>)> {
    tables
        .iter()
        .map(|t| (Phase::Upserts, t))
        .chain(tables.iter().rev().map(|t| (Phase::Deletes, t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{column, table};

    use crate::replica::entity::MarkedRow;
    use sea_orm::sea_query::ColumnType;

    fn spec() -> TableSpec {
        let c = |n: &str| column(n, ColumnType::Text, true);
        table("t", &["id"], vec![c("id"), c("a"), c("b")])
    }

    fn s(v: &str) -> Value {
        Value::String(Some(v.into()))
    }

    fn shadow(vals: &[(&str, Value)], deleted: bool) -> RowState {
        let t = |p| crate::model::clock::Hlc {
            physical: p,
            ..Default::default()
        };
        RowState {
            vals: vals
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            clocks: vals.iter().map(|(k, _)| (k.to_string(), t(1))).collect(),
            deleted_at: deleted.then(|| t(2)),
        }
    }

    #[test]
    fn new_row_is_an_insert_of_every_column() {
        let (op, cols) = diff(
            &spec(),
            Some(&[s("1"), s("x"), Value::String(None)]),
            None,
            false,
        )
        .unwrap();
        assert_eq!(op, Op::Insert);
        assert_eq!(cols.len(), 3);
    }

    #[test]
    fn update_lists_only_changed_columns() {
        let sh = shadow(&[("id", s("1")), ("a", s("x")), ("b", s("y"))], false);
        let (op, cols) = diff(&spec(), Some(&[s("1"), s("x"), s("z")]), Some(&sh), false).unwrap();
        assert_eq!(op, Op::Update);
        assert_eq!(cols, vec![("b".to_string(), s("z"))]);
        assert!(diff(&spec(), Some(&[s("1"), s("x"), s("y")]), Some(&sh), false).is_none());
    }

    /// A column the state never had (the entity gained it): NULL is not a
    /// change, a value is.
    #[test]
    fn a_column_new_to_the_state_changes_only_with_a_value() {
        let sh = shadow(&[("id", s("1")), ("a", s("x"))], false);
        let null = [s("1"), s("x"), Value::String(None)];
        assert!(diff(&spec(), Some(&null), Some(&sh), false).is_none());
        let (op, cols) = diff(&spec(), Some(&[s("1"), s("x"), s("y")]), Some(&sh), false).unwrap();
        assert_eq!(op, Op::Update);
        assert_eq!(cols, vec![("b".to_string(), s("y"))]);
    }

    #[test]
    fn missing_row_with_live_shadow_is_a_delete() {
        let sh = shadow(&[("id", s("1"))], false);
        assert_eq!(diff(&spec(), None, Some(&sh), false).unwrap().0, Op::Delete);
        let gone = shadow(&[("id", s("1"))], true);
        assert!(diff(&spec(), None, Some(&gone), false).is_none());
        assert!(diff(&spec(), None, None, false).is_none());
    }

    #[test]
    fn row_inserted_again_is_an_insert_even_of_the_same_values() {
        let sh = shadow(&[("id", s("1")), ("a", s("x")), ("b", s("y"))], false);
        let row = [s("1"), s("x"), s("y")];
        assert!(diff(&spec(), Some(&row), Some(&sh), false).is_none());
        let (op, cols) = diff(&spec(), Some(&row), Some(&sh), true).unwrap();
        assert_eq!(op, Op::Insert);
        assert_eq!(cols.len(), 3);
        assert_eq!(diff(&spec(), None, Some(&sh), true).unwrap().0, Op::Delete);
        assert!(diff(&spec(), None, None, true).is_none());
    }

    #[test]
    fn row_back_after_delete_is_an_insert() {
        let gone = shadow(&[("id", s("1")), ("a", s("x"))], true);
        let (op, cols) =
            diff(&spec(), Some(&[s("1"), s("x"), s("y")]), Some(&gone), false).unwrap();
        assert_eq!(op, Op::Insert);
        assert_eq!(cols.len(), 3);
    }

    /// A table known by its spec only: enough for [`phases`].
    struct Named(TableSpec);

    #[async_trait::async_trait]
    impl TableHandle for Named {
        fn spec(&self) -> &TableSpec {
            &self.0
        }
        async fn markers(&self, _: &DatabaseTransaction, _: u64, _: u64) -> Result<Vec<Marker>> {
            unreachable!("not read in these tests")
        }
        fn read_key(&self, _: &sea_orm::QueryResult) -> Result<Vec<Value>> {
            unreachable!("not read in these tests")
        }
        async fn rows(&self, _: &DatabaseTransaction, _: &[Vec<Value>]) -> Result<Vec<RowImage>> {
            unreachable!("not read in these tests")
        }
        async fn scan(&self, _: &DatabaseTransaction, _: u64, _: u64) -> Result<Vec<RowImage>> {
            unreachable!("not read in these tests")
        }
        async fn marked(
            &self,
            _: &DatabaseTransaction,
            _: &str,
            _: u64,
            _: u64,
        ) -> Result<Vec<MarkedRow>> {
            unreachable!("not read in these tests")
        }
    }

    /// A table is done for the round when a read came back short, never
    /// after a full batch, even one whose markers were all kept (the next
    /// read skips them).
    #[test]
    fn a_table_is_done_after_a_short_read_only() {
        let sealed = |read: u64, kept: u64| Sealed {
            read: read as usize,
            kept: kept as usize,
        };
        assert!(sealed(0, 0).done());
        assert!(sealed(BATCH - 1, 0).done());
        assert!(sealed(BATCH - 1, BATCH - 1).done());
        assert!(!sealed(BATCH, 0).done());
        assert!(!sealed(BATCH, BATCH - 1).done());
        assert!(!sealed(BATCH, BATCH).done());
    }

    #[test]
    fn upserts_are_sealed_parents_first_and_deletes_children_first() {
        let tables: Vec<Arc<dyn TableHandle>> = ["parent", "child", "grandchild"]
            .into_iter()
            .map(|n| {
                Arc::new(Named(TableSpec {
                    name: n.into(),
                    ..spec()
                })) as Arc<dyn TableHandle>
            })
            .collect();
        let rounds: Vec<(Phase, &str)> = phases(&tables)
            .map(|(p, t)| (p, t.spec().name.as_str()))
            .collect();
        assert_eq!(
            rounds,
            [
                (Phase::Upserts, "parent"),
                (Phase::Upserts, "child"),
                (Phase::Upserts, "grandchild"),
                (Phase::Deletes, "grandchild"),
                (Phase::Deletes, "child"),
                (Phase::Deletes, "parent"),
            ]
        );
        assert_eq!(phases(&[]).count(), 0);
    }
}
