//! The sync engine: capture, push the outbox, pull the hub's changes,
//! report. Its phases live in the submodules: [`push`], [`pull`],
//! [`bootstrap`] (the first pull from a hub), [`prefetch`] (hub calls that
//! overlap local work).

mod bootstrap;
mod clock;
mod identity;
mod prefetch;
mod pull;
mod push;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OnceCell};

use crate::model::conflict::ColumnConflict;
use crate::model::error::{Error, Result};
use crate::model::protocol::{Hub, HubInfo, RejectPolicy, Rejection};
use crate::replica::Replica;

pub use clock::WrongClock;
pub use identity::{HubBehind, Renewal, RenewalCause};

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
    pub conflicts: Vec<ColumnConflict>,
    /// Concurrent edits settled by the clock (`merge`).
    pub settled: Vec<ColumnConflict>,
    /// Conflicts settled by a registered resolver.
    pub resolved: usize,
    /// The new node id this replica took because another device used its
    /// own (a copy of this database, or this database restored from an
    /// older backup; see [`Renewal`]). Nothing of either device is lost:
    /// pending changes went out under the new id, and the hub's rows were
    /// loaded again.
    pub renewed: Vec<Renewal>,
    /// The hub held less than this replica knew it held (it was restored
    /// from an older backup): every row state of this replica was queued to
    /// be pushed again, and the hub's rows were loaded again.
    pub hub_behind: Option<HubBehind>,
    /// The hub refused a change of this device for a stamp too far ahead
    /// of its clock: whether the device's clock is still wrong (its changes
    /// wait, with `halted` set), or was wrong and is right now (the changes
    /// stamped in the future were stamped again and pushed).
    pub wrong_clock: Option<WrongClock>,
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
/// # async fn demo(replica: sync_core::Replica, hub: std::sync::Arc<dyn sync_core::hub::Hub>) -> sync_core::Result<()> {
/// let engine = sync_core::SyncEngine::new(replica, hub);
/// let report = engine.sync_now().await?;
/// println!("{report}");
/// # Ok(()) }
/// ```
pub struct SyncEngine {
    replica: Replica,
    hub: Arc<dyn Hub>,
    info: OnceCell<HubInfo>,
    batch: u64,
    /// Rows per pull or bootstrap page.
    page: u64,
    policy: RejectPolicy,
    running: Mutex<()>,
    progress: Counters,
    /// Whether the hub told this sync's identity check how far it applied
    /// this replica's changes: only then can a restored or copied database
    /// be told apart, and a bootstrap leave out the rows of this
    /// replica's id (see `bootstrap`).
    standing_known: std::sync::atomic::AtomicBool,
}

/// Changes per push request, by default.
const PUSH_BATCH: u64 = 500;

/// Rows per pull or bootstrap page, by default: a page is applied in one
/// local transaction, and its fixed costs (the commit, the metadata, the
/// check for local writes to seal first) are shared by four times as many
/// rows as at 500 (BENCHMARKS.md, "Pages of 2000 rows": pulls from the
/// servers went from 0.32-0.33x to 0.41-0.43x of raw batched writes of
/// 500 rows a transaction). The hub also caps a page by bytes (about
/// 4 MiB of values).
const PULL_PAGE: u64 = 2_000;

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
            .field("hub", &self.info.get())
            .finish()
    }
}

impl SyncEngine {
    /// An engine over a replica and a hub, pushing batches of 500 changes
    /// and pulling pages of 2000.
    pub fn new(replica: Replica, hub: Arc<dyn Hub>) -> Self {
        SyncEngine {
            replica,
            hub,
            info: OnceCell::new(),
            batch: PUSH_BATCH,
            page: PULL_PAGE,
            policy: RejectPolicy::Halt,
            running: Mutex::new(()),
            progress: Counters::default(),
            standing_known: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Changes per push request and rows per pull or bootstrap page (at
    /// least 1); see [`with_page_size`](Self::with_page_size) to set the
    /// pages alone.
    pub fn with_batch_size(mut self, batch: u64) -> Self {
        self.batch = Ord::max(batch, 1);
        self.page = self.batch;
        self
    }

    /// Rows per pull or bootstrap page (at least 1; default 2000). A hub
    /// server answers at most 2000, and any hub cuts a page at about
    /// 4 MiB of values.
    pub fn with_page_size(mut self, page: u64) -> Self {
        self.page = Ord::max(page, 1);
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

    /// The hub's identity, installing against it on first use.
    async fn hub_info(&self) -> Result<&HubInfo> {
        self.info
            .get_or_try_init(|| async {
                let specs: Vec<_> = self.replica.tables().cloned().collect();
                self.hub.install(&specs).await.map_err(Error::or_offline)
            })
            .await
    }

    /// Capture local writes, push them, pull the hub's changes. One call at a
    /// time per engine (a second caller waits). The writes are sealed into
    /// changes as the push sends them (see [`Replica::capture`]).
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
        if let Err(e) = self.sync_steps(&mut report).await {
            // Whatever stopped the sync (the hub out of reach, mostly), the
            // writes made so far are sealed into the outbox, as the push
            // would have: they keep the clocks of their writes, and
            // `pending` lists them.
            if let Err(sealing) = self.replica.capture().await {
                tracing::warn!("sealing after a failed sync: {sealing}");
            }
            return Err(e);
        }
        report.duration = started.elapsed();
        Ok(report)
    }

    async fn sync_steps(&self, report: &mut SyncReport) -> Result<()> {
        let hub = self.hub_info().await?.clone();
        let mut identity = self.check_identity(&hub, report).await?;
        if let Some((_, RenewalCause::HubAhead { .. })) = identity {
            // The hub holds changes of this id this replica has not
            // numbered: they may be its own markers, sealed and pushed by
            // the device whose backup this database was restored from.
            // Sealed here, they take those same sequences, and the drain
            // below finds them acknowledged as they are.
            let sealed = self.replica.capture().await?;
            report.local_errors.extend(sealed.rejected);
            identity = self.check_identity(&hub, report).await?;
        }
        if let Some((old, cause)) = identity {
            // The hub holds changes of this id up to a sequence this
            // replica never numbered. Its pending changes go first under
            // the old id: the hub acknowledges those it holds as they were
            // sent (this replica's own, pushed before a restore: sent again
            // under a new id, they would meet later edits as conflicts),
            // and the first it holds otherwise renews the id at once.
            self.push(&hub, report).await?;
            if report.renewed.is_empty() {
                self.renew(old, cause, report).await?;
            }
        }
        self.push(&hub, report).await?;
        self.after_wrong_clock(&hub, report).await?;
        self.pull(&hub, report).await
    }
}

/// Changes pushed and pulled so far by the sync in progress, or by the last
/// one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncProgress {
    /// Local changes the hub acknowledged.
    pub pushed: usize,
    /// Remote changes (and snapshot rows) merged locally.
    pub pulled: usize,
}
