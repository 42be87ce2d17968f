//! Syncing in the background: on an interval and on demand, backing off
//! while the hub cannot be reached, with a status a UI can watch. Builds
//! on the engine (and adds [`SyncEngine::start`] to it); the engine does
//! not know this module.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::model::error::Error;
use crate::sync::engine::{SyncEngine, SyncProgress, SyncReport};

/// How a background sync runs: on an interval and on demand, backing off
/// while the hub cannot be reached, with a status a UI can watch.
///
/// ```no_run
/// # async fn demo(engine: sync_core::SyncEngine) {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use sync_core::{AutoSync, SyncPhase};
///
/// let engine = Arc::new(engine);
/// let sync = engine.start(AutoSync::every(Duration::from_secs(30)));
///
/// // After a local write the user expects to see elsewhere soon:
/// sync.sync_soon();
///
/// // A UI follows the status:
/// let mut status = sync.watch();
/// while status.changed().await.is_ok() {
///     let s = status.borrow().clone();
///     match s.phase {
///         SyncPhase::Syncing => println!("syncing: {} pushed, {} pulled", s.progress.pushed, s.progress.pulled),
///         SyncPhase::Waiting { retry_in, .. } => println!("offline, retrying in {retry_in:?}"),
///         _ => println!("{} changes waiting to go out", s.pending),
///     }
/// #   break;
/// }
/// sync.stop().await;
/// # }
/// ```
///
/// The task calls [`SyncEngine::sync_now`], so everything said there holds:
/// a sync that fails (hub unreachable, connection dropped mid-batch) loses
/// nothing and the next one resumes where it stopped. After a failure the
/// task waits for a backoff that doubles with each failure in a row, from
/// [`AutoSync::backoff`]'s minimum to its maximum, each wait drawn at random
/// between half and all of it (so that many devices coming back at once do
/// not retry in step); [`SyncHandle::sync_soon`] cuts a wait short. After a
/// success it waits for the interval.
#[derive(Clone, Debug)]
pub struct AutoSync {
    interval: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl Default for AutoSync {
    /// Every 30 seconds; after a failure, wait 1 second, then 2, 4, ... up
    /// to 5 minutes.
    fn default() -> Self {
        AutoSync {
            interval: Duration::from_secs(30),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl AutoSync {
    /// Sync every `interval` (after a success), with the default backoff.
    pub fn every(interval: Duration) -> Self {
        AutoSync {
            interval,
            ..AutoSync::default()
        }
    }

    /// After a failure wait `min`, then twice as long after each further
    /// failure in a row, never more than `max` (at least `min`).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = Ord::max(min, max);
        self
    }

    /// The longest wait after `failures` failures in a row (1 for the
    /// first), before jitter.
    fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.min_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff)
    }
}

/// What the background sync is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncPhase {
    /// Waiting for the next interval or a [`SyncHandle::sync_soon`].
    Idle,
    /// A sync is running; [`SyncStatus::progress`] tells how far it is.
    Syncing,
    /// The last `failures` syncs in a row failed ([`SyncStatus::last_error`]
    /// says why); the next one starts in `retry_in`, or at a
    /// [`SyncHandle::sync_soon`].
    Waiting {
        /// Failures in a row.
        failures: u32,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
    /// The task has ended ([`SyncHandle::stop`], or the handle was dropped).
    Stopped,
}

/// The status of a background sync, as [`SyncHandle::watch`] sends it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SyncStatus {
    /// What the task is doing.
    pub phase: SyncPhase,
    /// Local writes not yet acknowledged by the hub
    /// ([`Replica::pending_count`](crate::replica::Replica::pending_count)), as of
    /// the end of the last sync.
    pub pending: u64,
    /// How far the sync in progress (or the last one) is.
    pub progress: SyncProgress,
    /// When the last successful sync ended.
    pub last_sync: Option<SystemTime>,
    /// The report of the last successful sync.
    pub last_report: Option<Arc<SyncReport>>,
    /// Why the last sync failed, until one succeeds. An
    /// [`Error::Offline`] means the hub could not be reached.
    pub last_error: Option<Arc<Error>>,
    /// Successful syncs since the task started.
    pub syncs: u64,
}

impl SyncStatus {
    fn new() -> Self {
        SyncStatus {
            phase: SyncPhase::Idle,
            pending: 0,
            progress: SyncProgress::default(),
            last_sync: None,
            last_report: None,
            last_error: None,
            syncs: 0,
        }
    }
}

/// A background sync started by [`SyncEngine::start`]. Dropping it stops
/// the task after the sync in progress, as [`SyncHandle::stop`] does
/// without waiting.
#[derive(Debug)]
pub struct SyncHandle {
    soon: Arc<Notify>,
    status: watch::Receiver<SyncStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SyncHandle {
    /// Sync as soon as the sync in progress, if any, ends: without waiting
    /// for the interval or the backoff.
    pub fn sync_soon(&self) {
        self.soon.notify_one();
    }

    /// The status now.
    pub fn status(&self) -> SyncStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every status change.
    pub fn watch(&self) -> watch::Receiver<SyncStatus> {
        self.status.clone()
    }

    /// Stop: let the sync in progress, if any, end, and wait for the task.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// How often the status shows the progress of a running sync.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl SyncEngine {
    /// Sync in the background on a tokio task: now, then as `options` say.
    /// See [`AutoSync`] for how it runs.
    ///
    /// `sync_now` may still be called while the task runs: the two take
    /// turns.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(self: &Arc<Self>, options: AutoSync) -> SyncHandle {
        let soon = Arc::new(Notify::new());
        let (status_tx, status) = watch::channel(SyncStatus::new());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(
            Arc::clone(self),
            options,
            Arc::clone(&soon),
            status_tx,
            stop_rx,
        ));
        SyncHandle {
            soon,
            status,
            stop,
            task,
        }
    }
}

async fn run(
    engine: Arc<SyncEngine>,
    options: AutoSync,
    soon: Arc<Notify>,
    status: watch::Sender<SyncStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    let mut jitter = Jitter::new(&engine);
    loop {
        status.send_modify(|s| {
            s.phase = SyncPhase::Syncing;
            s.progress = SyncProgress::default();
        });
        let outcome = {
            let sync = engine.sync_now();
            tokio::pin!(sync);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tokio::select! {
                    r = &mut sync => break r,
                    _ = tick.tick() => {
                        let p = engine.progress();
                        status.send_if_modified(|s| std::mem::replace(&mut s.progress, p) != p);
                    }
                }
            }
        };
        let pending = engine.replica().pending_count().await;
        let wait = match outcome {
            Ok(report) => {
                failures = 0;
                status.send_modify(|s| {
                    s.phase = SyncPhase::Idle;
                    s.progress = engine.progress();
                    s.last_sync = Some(SystemTime::now());
                    s.last_report = Some(Arc::new(report));
                    s.last_error = None;
                    s.syncs += 1;
                    if let Ok(n) = pending {
                        s.pending = n;
                    }
                });
                options.interval
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let retry_in = jitter.draw(options.ceiling(failures));
                status.send_modify(|s| {
                    s.phase = SyncPhase::Waiting { failures, retry_in };
                    s.progress = engine.progress();
                    s.last_error = Some(Arc::new(e));
                    if let Ok(n) = pending {
                        s.pending = n;
                    }
                });
                retry_in
            }
        };
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = soon.notified() => {}
            // Stopped, or the handle was dropped.
            _ = stop.changed() => break,
        }
    }
    status.send_modify(|s| s.phase = SyncPhase::Stopped);
}

/// Random waits between half and all of a ceiling (xorshift; seeded by the
/// node and the time, so devices differ).
struct Jitter(u64);

impl Jitter {
    fn new(engine: &SyncEngine) -> Self {
        let node = engine.replica().node_id().0;
        let mut seed = u64::from_le_bytes(node[..8].try_into().unwrap_or([7; 8]));
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        seed ^= u64::from(nanos).rotate_left(32);
        Jitter(seed | 1)
    }

    fn draw(&mut self, ceiling: Duration) -> Duration {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        // A fraction in [0.5, 1].
        let fraction = 0.5 + (x >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        ceiling.mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let o = AutoSync::default().backoff(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u128> = (1..=7).map(|f| o.ceiling(f).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(o.ceiling(u32::MAX), Duration::from_secs(1));
        // A maximum below the minimum is the minimum.
        let o = AutoSync::default().backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(o.ceiling(5), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        let mut j = Jitter(0x9e37_79b9_7f4a_7c15);
        let ceiling = Duration::from_millis(1000);
        let draws: Vec<Duration> = (0..1000).map(|_| j.draw(ceiling)).collect();
        assert!(draws.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
        // Spread out, not one value.
        let low = draws.iter().filter(|d| **d < ceiling * 3 / 4).count();
        assert!((300..700).contains(&low), "{low} of 1000 in the lower half");
    }
}
