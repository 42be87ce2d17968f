//! The sync engine: capture, push the outbox, pull the hub's changes, report.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query};
use sea_orm::{ConnectionTrait, TransactionTrait};
use tokio::sync::{Mutex, OnceCell};

use crate::backend::{Backend, Cursor, HubInfo, RejectPolicy, Rejection, Unreadable};
use crate::background::SyncProgress;
use crate::change::Change;
use crate::error::{Error, Result};
use crate::merge::RowState;
use crate::pull::{Delta, apply_deltas, apply_deltas_with};
use crate::replica::Replica;
use crate::schema::{self, OUTBOX};

/// What one [`SyncEngine::sync_now`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Local changes the hub acknowledged (applied, or parked by policy).
    pub pushed: usize,
    /// Remote changes (and snapshot rows) merged locally.
    pub pulled: usize,
    /// Changes the hub refused and parked in its rejected-changes table.
    pub rejected: Vec<Rejection>,
    /// The change that halted this replica's stream at the hub (policy
    /// `Halt`); it and later changes stay in the outbox.
    pub halted: Option<Rejection>,
    /// Remote changes parked locally (`_tidesync_parked`), and local rows
    /// that could not be captured, with the reasons.
    pub local_errors: Vec<Error>,
    /// Concurrent edits of a column now held for a decision (`manual`, or a
    /// resolver that declined): see [`Replica::conflicts`].
    pub conflicts: Vec<crate::conflict::ColumnConflict>,
    /// Concurrent edits settled by the clock (`merge`).
    pub settled: Vec<crate::conflict::ColumnConflict>,
    /// Conflicts settled by a registered resolver.
    pub resolved: usize,
    /// Wall time the sync took.
    pub duration: Duration,
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pushed {}, pulled {}, conflicts {}, rejected {}, {} in {} ms",
            self.pushed,
            self.pulled,
            self.conflicts.len(),
            self.rejected.len() + self.local_errors.len(),
            if self.halted.is_some() {
                "halted"
            } else {
                "ok"
            },
            self.duration.as_millis()
        )
    }
}

/// Syncs one replica with one hub.
///
/// ```no_run
/// # async fn demo(replica: sync_core::Replica, hub: std::sync::Arc<dyn sync_core::backend::Backend>) -> sync_core::Result<()> {
/// let engine = sync_core::SyncEngine::new(replica, hub);
/// let report = engine.sync_now().await?;
/// println!("{report}");
/// # Ok(()) }
/// ```
pub struct SyncEngine {
    replica: Replica,
    backend: Arc<dyn Backend>,
    hub: OnceCell<HubInfo>,
    batch: u64,
    policy: RejectPolicy,
    running: Mutex<()>,
    progress: Counters,
}

/// How far the sync in progress is (see [`SyncEngine::progress`]).
#[derive(Debug, Default)]
struct Counters {
    pushed: AtomicUsize,
    pulled: AtomicUsize,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("replica", &self.replica)
            .field("hub", &self.hub.get())
            .finish()
    }
}

impl SyncEngine {
    /// An engine over a replica and a hub, with batches of 500 changes.
    pub fn new(replica: Replica, backend: Arc<dyn Backend>) -> Self {
        SyncEngine {
            replica,
            backend,
            hub: OnceCell::new(),
            batch: 500,
            policy: RejectPolicy::Halt,
            running: Mutex::new(()),
            progress: Counters::default(),
        }
    }

    /// Changes per push or pull request (at least 1).
    pub fn with_batch_size(mut self, batch: u64) -> Self {
        self.batch = Ord::max(batch, 1);
        self
    }

    /// What to do with a change of the outbox, or pulled from the hub, that
    /// cannot be read or applied here: halt there (the default) or park it
    /// in `_tidesync_parked` and go on.
    pub fn with_policy(mut self, policy: RejectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The local replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Changes pushed and pulled so far by the sync in progress, or by the
    /// last one.
    pub fn progress(&self) -> SyncProgress {
        SyncProgress {
            pushed: self.progress.pushed.load(Ordering::Relaxed),
            pulled: self.progress.pulled.load(Ordering::Relaxed),
        }
    }

    async fn hub(&self) -> Result<&HubInfo> {
        self.hub
            .get_or_try_init(|| async {
                let specs: Vec<_> = self.replica.tables().cloned().collect();
                self.backend
                    .install(&specs)
                    .await
                    .map_err(Error::or_offline)
            })
            .await
    }

    /// Capture local writes, push them, pull the hub's changes. One call at a
    /// time per engine (a second caller waits).
    ///
    /// # Errors
    /// [`Error::Offline`] when the hub cannot be reached: nothing is lost,
    /// the same call later resumes where this one stopped.
    pub async fn sync_now(&self) -> Result<SyncReport> {
        let _guard = self.running.lock().await;
        self.progress.pushed.store(0, Ordering::Relaxed);
        self.progress.pulled.store(0, Ordering::Relaxed);
        let started = Instant::now();
        let mut report = SyncReport::default();
        let hub = self.hub().await?.clone();
        let captured = self.replica.capture().await?;
        report.local_errors.extend(captured.rejected);
        self.push(&mut report).await?;
        self.pull(&hub, &mut report).await?;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Push the outbox. Acknowledged changes at its head are dropped by
    /// range, every [`ACK_EVERY`] changes and at the end (also after an
    /// error): a crash in between only makes the next sync re-send them, and
    /// the hub acknowledges a re-sent change without applying it again.
    async fn push(&self, report: &mut SyncReport) -> Result<()> {
        let mut head = AckedHead::default();
        let pushed = self.push_batches(report, &mut head).await;
        let dropped = match head.through {
            Some(seq) => self.replica.acknowledge_through(seq).await,
            None => Ok(()),
        };
        pushed.and(dropped)
    }

    async fn push_batches(&self, report: &mut SyncReport, head: &mut AckedHead) -> Result<()> {
        // Every change up to `after` is acknowledged or parked.
        let mut after = 0;
        let mut ahead = None;
        loop {
            let (batch, unreadable) = match ahead.take() {
                Some(read) => read?,
                None => self.replica.outbox_batch(after, self.batch).await?,
            };
            let empty = batch.is_empty();
            if let Some(last) = batch.last().map(|c| c.id.seq) {
                // The hub works on this batch while the next one is read
                // from the outbox: when everything is acknowledged (the
                // usual case) the next batch starts right after this one.
                let sending = Prefetch::spawn({
                    let backend = Arc::clone(&self.backend);
                    async move {
                        let ack = backend.push(&batch).await;
                        (batch, ack)
                    }
                });
                if unreadable.is_none() {
                    ahead = Some(self.replica.outbox_batch(last, self.batch).await);
                }
                let (batch, ack) = sending.get().await;
                let ack = ack.map_err(Error::or_offline)?;
                let acked: Vec<u64> = ack.acknowledged.iter().map(|id| id.seq).collect();
                let prefix = acked.len() <= batch.len()
                    && acked.iter().zip(&batch).all(|(a, c)| *a == c.id.seq);
                match acked.last() {
                    // The batch is the head of the outbox: drop it by range,
                    // later.
                    Some(last) if prefix => {
                        head.through = Some(*last);
                        head.unflushed += acked.len();
                        if head.unflushed >= ACK_EVERY {
                            self.replica.acknowledge_through(*last).await?;
                            head.unflushed = 0;
                        }
                    }
                    _ => self.replica.acknowledge(&acked).await?,
                }
                report.pushed += acked.len();
                self.progress.pushed.store(report.pushed, Ordering::Relaxed);
                report.rejected.extend(ack.parked);
                report.settled.extend(ack.settled);
                if !ack.conflicts.is_empty() {
                    let ids = self.replica.record_conflicts(&ack.conflicts).await?;
                    for (id, c) in ids.into_iter().zip(ack.conflicts) {
                        let decided = self
                            .replica
                            .resolver_for(&c.table)
                            .and_then(|r| r.resolve(&c));
                        match decided {
                            Some(resolution) => {
                                // A new change: the loop pushes it next
                                // (the batch read ahead may predate it).
                                self.replica.resolve(id, resolution).await?;
                                report.resolved += 1;
                                ahead = None;
                            }
                            None => report.conflicts.push(c),
                        }
                    }
                }
                if let Some(h) = ack.halted {
                    report.halted = Some(h);
                    return Ok(());
                }
                if acked.len() < batch.len() {
                    return Err(Error::Corrupt(format!(
                        "the hub acknowledged {} of {} changes without halting",
                        acked.len(),
                        batch.len()
                    )));
                }
                after = last;
            }
            let Some(bad) = unreadable else {
                if empty {
                    return Ok(());
                }
                continue;
            };
            // A change of our own outbox that cannot be read back.
            let me = self.replica.node_id();
            let rejection = Rejection {
                id: crate::change::ChangeId {
                    origin: me,
                    seq: bad.position.0,
                },
                table: bad.table.clone(),
                reason: bad.reason.clone(),
            };
            match self.policy {
                RejectPolicy::Park => {
                    self.replica.park_outbox(&bad).await?;
                    report.local_errors.push(Error::Corrupt(bad.reason));
                }
                _ => {
                    report.halted = Some(rejection);
                    return Ok(());
                }
            }
        }
    }

    /// Pull pages of the hub's log after the stored cursor (bootstrapping
    /// first if there is none). The next page is fetched while the current
    /// one is applied; an error of that fetch surfaces at the next turn,
    /// after the current page and its cursor have committed.
    async fn pull(&self, hub: &HubInfo, report: &mut SyncReport) -> Result<()> {
        let key = format!("cursor:{}", hub.hub_id);
        let mut cursor = match schema::read_meta(self.replica.connection(), &key).await? {
            Some(c) => Cursor(
                c.parse()
                    .map_err(|_| Error::Corrupt(format!("cursor `{c}`")))?,
            ),
            None => self.bootstrap(hub, &key, report).await?,
        };
        let me = self.replica.node_id();
        let fetch = |cursor: Cursor| {
            let backend = Arc::clone(&self.backend);
            let limit = self.batch;
            Prefetch::spawn(async move { backend.pull_excluding(cursor, limit, me).await })
        };
        let mut ahead = fetch(cursor);
        loop {
            let page = ahead.get().await.map_err(Error::or_offline)?;
            let got = page.changes.len();
            let mut deltas: Vec<Delta> = page
                .changes
                .into_iter()
                .filter(|c| c.id.origin != me)
                .map(delta_of_change)
                .collect();
            let mut next = page.next;
            let mut halt = false;
            if let Some(bad) = &page.unreadable {
                report.local_errors.push(Error::Corrupt(bad.reason.clone()));
                match self.policy {
                    RejectPolicy::Park => {
                        // Parked with the batch, and the cursor moves past it.
                        deltas.push(Delta {
                            table: bad.table.clone(),
                            pk: Vec::new(),
                            state: RowState::default(),
                            id: None,
                            raw: Some(bad.raw.clone()),
                            park: Some(bad.reason.clone()),
                        });
                        next = bad.position;
                    }
                    _ => halt = true,
                }
            }
            if got == 0 && next == cursor {
                return Ok(());
            }
            if halt {
                // Apply what came before the unreadable change, then stop.
                if !deltas.is_empty() {
                    self.apply_page(deltas, &key, next, report).await?;
                } else {
                    schema::upsert_meta(self.replica.connection(), &key, &next.0.to_string())
                        .await?;
                }
                return Ok(());
            }
            ahead = fetch(next);
            if deltas.is_empty() {
                // Only our own changes (left out by the hub) or none: move
                // the cursor, nothing to merge.
                schema::upsert_meta(self.replica.connection(), &key, &next.0.to_string()).await?;
            } else {
                self.apply_page(deltas, &key, next, report).await?;
            }
            cursor = next;
        }
    }

    /// Apply one pulled page and store the cursor after it, in one local
    /// transaction.
    async fn apply_page(
        &self,
        deltas: Vec<Delta>,
        key: &str,
        next: Cursor,
        report: &mut SyncReport,
    ) -> Result<()> {
        let applied = apply_deltas(
            self.replica.connection(),
            self.replica.handles(),
            self.replica.node_id(),
            deltas,
            key,
            &next.0.to_string(),
        )
        .await?;
        report.pulled += applied.applied;
        self.progress.pulled.store(report.pulled, Ordering::Relaxed);
        self.replica.wrote(applied.applied as u64).await;
        report.local_errors.extend(applied.parked);
        report.local_errors.extend(applied.captured.rejected);
        Ok(())
    }

    /// Load the hub's current rows into a replica that never pulled from it.
    /// The next page is fetched while the current one is applied.
    ///
    /// Each page is applied in one local transaction with the progress
    /// (`bootstrap:<hub id>`): the snapshot's start cursor (returned with
    /// its first page) and the key of the page's last row. A bootstrap
    /// interrupted between pages (offline, a crash) resumes after that key
    /// at the next sync, however large the first copy. The last page stores
    /// the pull cursor (the start cursor) and removes the progress in its
    /// transaction. Pulling from the start cursor merges again what changed
    /// on the hub while the snapshot was read, in the pages applied before
    /// or after: merging twice is harmless.
    async fn bootstrap(&self, hub: &HubInfo, key: &str, report: &mut SyncReport) -> Result<Cursor> {
        let progress_key = format!("bootstrap:{}", hub.hub_id);
        let resume = match schema::read_meta(self.replica.connection(), &progress_key).await? {
            Some(v) => match serde_json::from_str::<Progress>(&v) {
                Ok(p) => Some(p),
                // Starting over is always safe: progress this release cannot
                // read costs a restart, never a bootstrap that fails for ever.
                Err(e) => {
                    tracing::warn!(
                        "{progress_key} `{v}` unreadable ({e}): the snapshot starts over"
                    );
                    None
                }
            },
            None => None,
        };
        let fetch = |after: Option<String>| {
            let backend = Arc::clone(&self.backend);
            let limit = self.batch;
            Prefetch::spawn(async move { backend.snapshot(after, limit).await })
        };
        let mut start = resume.as_ref().map(|p| Cursor(p.start));
        let mut check_tip = resume.is_some();
        let mut ahead = Some(fetch(resume.map(|p| p.after)));
        while let Some(call) = ahead.take() {
            let (cursor, page) = call.get().await.map_err(Error::or_offline)?;
            if std::mem::take(&mut check_tip) && start.is_some_and(|s| cursor < s) {
                // The hub's tip is below the cursor the snapshot started at:
                // it was restored from an older backup (or replaced under the
                // same id). Resuming would pull from a cursor above its tip
                // and skip the changes it logs up to there: start over.
                tracing::warn!(
                    "hub {} is behind the bootstrap that started at {} (tip {}): the snapshot starts over",
                    hub.hub_id,
                    start.map_or(0, |s| s.0),
                    cursor.0
                );
                start = None;
                ahead = Some(fetch(None));
                continue;
            }
            let start = *start.get_or_insert(cursor);
            ahead = page.next.clone().map(|n| fetch(Some(n)));
            let deltas = page
                .rows
                .into_iter()
                .map(|row| Delta {
                    raw: None,
                    table: row.table,
                    pk: row.pk.into_iter().map(|(_, v)| v).collect(),
                    state: row.state,
                    id: None,
                    park: None,
                })
                .collect::<Vec<_>>();
            let start_text = start.0.to_string();
            let progress;
            let (meta, forget): (&[(&str, &str)], &[&str]) = match page.next {
                Some(after) => {
                    progress = serde_json::to_string(&Progress {
                        start: start.0,
                        after,
                    })?;
                    (&[(progress_key.as_str(), progress.as_str())], &[])
                }
                None => (&[(key, start_text.as_str())], &[progress_key.as_str()]),
            };
            let applied = apply_deltas_with(
                self.replica.connection(),
                self.replica.handles(),
                self.replica.node_id(),
                deltas,
                meta,
                forget,
            )
            .await?;
            report.pulled += applied.applied;
            self.progress.pulled.store(report.pulled, Ordering::Relaxed);
            self.replica.wrote(applied.applied as u64).await;
            report.local_errors.extend(applied.parked);
            report.local_errors.extend(applied.captured.rejected);
            if ahead.is_none() {
                return Ok(start);
            }
        }
        Err(Error::Corrupt("bootstrap ended without a last page".into()))
    }
}

/// How far an interrupted bootstrap got (see [`SyncEngine::bootstrap`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct Progress {
    /// The hub's cursor when the snapshot started: the pull starts there.
    start: u64,
    /// The snapshot continues after this key (a page's `next`).
    after: String,
}

/// A hub call running on its own task while the engine does local work, so
/// that our CPU, the local database and the hub work at the same time.
/// Dropped unfinished (the sync was cancelled or failed), the call is
/// aborted, as the future itself would have been.
struct Prefetch<T>(Option<tokio::task::JoinHandle<T>>);

impl<T: Send + 'static> Prefetch<T> {
    fn spawn(call: impl std::future::Future<Output = T> + Send + 'static) -> Self {
        Prefetch(Some(tokio::spawn(call)))
    }

    /// The call's result; its panic, if it panicked.
    async fn get(mut self) -> T {
        let handle = self.0.take().expect("a prefetch is awaited once");
        match handle.await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl<T> Drop for Prefetch<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// How many acknowledged changes may wait in the outbox before they are
/// dropped (see [`SyncEngine::push`]).
const ACK_EVERY: usize = 10_000;

/// The acknowledged head of the outbox not yet dropped.
#[derive(Debug, Default)]
struct AckedHead {
    /// Every change up to this sequence is acknowledged.
    through: Option<u64>,
    /// How many of them are still in the outbox.
    unflushed: usize,
}

fn delta_of_change(mut c: Change) -> Delta {
    let table = std::mem::take(&mut c.table);
    let pk = std::mem::take(&mut c.pk)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let id = c.id;
    Delta {
        table,
        pk,
        state: RowState::of_change(c),
        id: Some(id),
        raw: None,
        park: None,
    }
}

impl Replica {
    /// The oldest captured changes after sequence `after`, up to `limit`
    /// and about 4 MiB, stopping before the first one that cannot be read
    /// back (returned apart).
    pub(crate) async fn outbox_batch(
        &self,
        after: u64,
        limit: u64,
    ) -> Result<(Vec<Change>, Option<Unreadable>)> {
        let q = Query::select()
            .columns(crate::capture::outbox_columns())
            .from(Alias::new(OUTBOX))
            .and_where(Expr::col(Alias::new("seq")).gt(after as i64))
            .order_by(Alias::new("seq"), Order::Asc)
            .limit(limit)
            .to_owned();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for r in self.connection().query_all(&q).await? {
            match crate::capture::change_from_outbox(self.node_id(), &r) {
                Ok(c) => {
                    bytes += c
                        .columns
                        .iter()
                        .map(|(_, v)| crate::value::approx_size(v))
                        .sum::<usize>();
                    out.push(c);
                    if bytes > 4 << 20 {
                        break;
                    }
                }
                Err(e) => {
                    let seq: i64 = r.try_get("", "seq")?;
                    let bad = Unreadable {
                        position: Cursor(seq as u64),
                        table: r.try_get("", "tbl").unwrap_or_default(),
                        raw: r.try_get("", "payload").unwrap_or_default(),
                        reason: format!("outbox change {seq} is malformed: {e}"),
                    };
                    return Ok((out, Some(bad)));
                }
            }
        }
        Ok((out, None))
    }

    /// Move an unreadable outbox change to `_tidesync_parked`.
    pub(crate) async fn park_outbox(&self, bad: &Unreadable) -> Result<()> {
        let tx = self.connection().begin().await?;
        let q = Query::insert()
            .into_table(Alias::new(crate::pull::PARKED))
            .columns(["tbl", "pk", "origin", "seq", "payload", "reason"].map(Alias::new))
            .values_panic([
                bad.table.clone().into(),
                String::new().into(),
                self.node_id().to_string().into(),
                (bad.position.0 as i64).into(),
                bad.raw.clone().into(),
                bad.reason.clone().into(),
            ])
            .to_owned();
        tx.execute(&q).await?;
        let del = Query::delete()
            .from_table(Alias::new(OUTBOX))
            .and_where(Expr::col(Alias::new("seq")).eq(bad.position.0 as i64))
            .to_owned();
        tx.execute(&del).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drop the outbox's changes up to `seq`, when every one of them was
    /// acknowledged (the head of the outbox, read in order).
    pub(crate) async fn acknowledge_through(&self, seq: u64) -> Result<()> {
        let q = Query::delete()
            .from_table(Alias::new(OUTBOX))
            .and_where(Expr::col(Alias::new("seq")).lte(seq as i64))
            .to_owned();
        self.connection().execute(&q).await?;
        Ok(())
    }

    /// Drop acknowledged changes from the outbox.
    pub(crate) async fn acknowledge(&self, seqs: &[u64]) -> Result<()> {
        for chunk in seqs.chunks(500) {
            let q = Query::delete()
                .from_table(Alias::new(OUTBOX))
                .and_where(Expr::col(Alias::new("seq")).is_in(chunk.iter().map(|s| *s as i64)))
                .to_owned();
            self.connection().execute(&q).await?;
        }
        Ok(())
    }
}
