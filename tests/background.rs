//! Syncing in the background (`SyncEngine::start`) through a SQL hub of
//! every dialect: on demand, on the interval, backing off while the hub is
//! unreachable, catching up when it is back, and stopping.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::entities::contacts;
use common::{BoxError, Dialect, TestDb, TestResult, run};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, DatabaseConnection};
use tidesync::hub::{Cursor, Hub, HubInfo, PullBatch, PushAck, SnapshotPage, SqlHub};
use tidesync::{
    AutoSync, Change, Error, Replica, SyncEngine, SyncHandle, SyncPhase, SyncStatus, TableSpec,
};

fn main() -> std::process::ExitCode {
    let trials = trials![
        syncs_at_once_on_demand_and_on_the_interval,
        backs_off_while_offline_and_catches_up,
    ];
    run(trials)
}

/// A device: a local SQLite database and an engine for `backend`.
async fn device(backend: Arc<dyn Hub>, tag: &str) -> Result<(TestDb, Arc<SyncEngine>), BoxError> {
    let local = TestDb::create(Dialect::Sqlite, tag).await?;
    local.create_table(contacts::Entity).await?;
    let replica = Replica::builder(local.db.clone())
        .register::<contacts::Entity>()
        .open()
        .await?;
    Ok((local, Arc::new(SyncEngine::new(replica, backend))))
}

async fn add(db: &DatabaseConnection, name: &str) -> TestResult {
    contacts::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name.into()),
        email: Set(None),
        last_opened: Set(None),
        updated_at: Set(Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap()),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// Wait up to 60 s for the status to satisfy `done`.
async fn until(
    handle: &SyncHandle,
    what: &str,
    done: impl Fn(&SyncStatus) -> bool,
) -> Result<SyncStatus, BoxError> {
    until_within(handle, what, Duration::from_secs(60), done).await
}

/// Wait up to `limit` for the status to satisfy `done`.
async fn until_within(
    handle: &SyncHandle,
    what: &str,
    limit: Duration,
    done: impl Fn(&SyncStatus) -> bool,
) -> Result<SyncStatus, BoxError> {
    let mut rx = handle.watch();
    let deadline = Instant::now() + limit;
    loop {
        let s = rx.borrow_and_update().clone();
        if done(&s) {
            return Ok(s);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, rx.changed()).await.is_err() {
            return Err(
                format!("timed out after {limit:?} waiting for {what}; status: {s:?}").into(),
            );
        }
    }
}

/// Wait up to 60 s for `db` to hold `n` contacts.
async fn until_rows(db: &DatabaseConnection, n: u64) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = contacts::Entity::find().count(db).await?;
        if have == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{have} contacts after 60 s, expected {n}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn syncs_at_once_on_demand_and_on_the_interval(hub: TestDb) -> TestResult {
    let backend = || async {
        Ok::<_, BoxError>(Arc::new(SqlHub::new(hub.connect_again().await?)) as Arc<dyn Hub>)
    };
    let (a_db, a) = device(backend().await?, "bg_a").await?;
    let (b_db, b) = device(backend().await?, "bg_b").await?;
    // `a` waits an hour between syncs, so only a demand makes it sync again;
    // `b` syncs every 100 ms.
    let a_sync = a.start(AutoSync::every(Duration::from_secs(3600)));
    let b_sync = b.start(AutoSync::every(Duration::from_millis(100)));
    // The first sync starts at once (it installs the hub).
    let first = until(&a_sync, "a's first sync", |s| s.syncs == 1).await?;
    ensure!(first.last_error.is_none(), "{first:?}");
    ensure_eq!(first.pending, 0);
    ensure!(
        first.last_sync.is_some() && first.last_report.is_some(),
        "{first:?}"
    );

    // A demand: `a` pushes at once, and `b` pulls on its interval.
    for i in 0..30 {
        add(&a_db.db, &format!("n{i}")).await?;
    }
    a_sync.sync_soon();
    let s = until(&a_sync, "a's second sync", |s| s.syncs == 2).await?;
    let report = s.last_report.clone().ok_or("no report")?;
    ensure_eq!(report.pushed, 30);
    ensure_eq!(s.progress.pushed, 30, "progress shows the last sync");
    ensure_eq!(s.pending, 0, "the outbox is empty after the push");
    ensure_eq!(s.phase, SyncPhase::Idle);
    until_rows(&b_db.db, 30).await?;
    // The rows arrive in the sync's own transactions, before it reports.
    let b_status = until(&b_sync, "b's interval sync", |s| s.syncs >= 2).await?;
    ensure!(b_status.last_error.is_none(), "{b_status:?}");

    // `sync_now` still works while the task runs: the two take turns.
    add(&a_db.db, "direct").await?;
    ensure_eq!(a.sync_now().await?.pushed, 1);
    until_rows(&b_db.db, 31).await?;

    // Stopping ends the task; dropping a handle does too.
    let watch_b = b_sync.watch();
    a_sync.stop().await;
    drop(b_sync);
    let deadline = Instant::now() + Duration::from_secs(60);
    while watch_b.borrow().phase != SyncPhase::Stopped {
        ensure!(
            Instant::now() < deadline,
            "b's task did not stop after its handle was dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hub_rows = contacts::Entity::find().count(&hub.db).await?;
    ensure_eq!(hub_rows, 31);
    a_db.drop().await?;
    b_db.drop().await?;
    hub.drop().await
}

/// A hub that is unreachable while `down` is set, and records when each
/// request it refused arrived.
struct Switch {
    inner: SqlHub,
    down: AtomicBool,
    refused: Mutex<Vec<Instant>>,
}

impl Switch {
    fn new(inner: SqlHub) -> Self {
        Switch {
            inner,
            down: AtomicBool::new(true),
            refused: Mutex::new(Vec::new()),
        }
    }

    fn check(&self) -> tidesync::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.lock().unwrap().push(Instant::now());
            return Err(Error::Offline("no route to host (test)".into()));
        }
        Ok(())
    }

    /// When each refused request arrived, in order.
    fn refused(&self) -> Vec<Instant> {
        self.refused.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Hub for Switch {
    async fn install(&self, tables: &[TableSpec]) -> tidesync::Result<HubInfo> {
        self.check()?;
        self.inner.install(tables).await
    }

    async fn push(&self, batch: &[Change]) -> tidesync::Result<PushAck> {
        self.check()?;
        self.inner.push(batch).await
    }

    async fn standing(
        &self,
        origin: tidesync::NodeId,
        at: Option<Cursor>,
    ) -> tidesync::Result<tidesync::hub::Standing> {
        self.check()?;
        self.inner.standing(origin, at).await
    }

    async fn pull(&self, cursor: Cursor, limit: u64) -> tidesync::Result<PullBatch> {
        self.check()?;
        self.inner.pull(cursor, limit).await
    }

    async fn pull_states(
        &self,
        cursor: Cursor,
        limit: u64,
        origin: tidesync::NodeId,
    ) -> tidesync::Result<tidesync::hub::StatePage> {
        self.check()?;
        self.inner.pull_states(cursor, limit, origin).await
    }

    async fn snapshot(
        &self,
        after: Option<String>,
        limit: u64,
    ) -> tidesync::Result<(Cursor, SnapshotPage)> {
        self.check()?;
        self.inner.snapshot(after, limit).await
    }

    async fn snapshot_excluding(
        &self,
        after: Option<String>,
        limit: u64,
        origin: tidesync::NodeId,
    ) -> tidesync::Result<(Cursor, SnapshotPage)> {
        self.check()?;
        self.inner.snapshot_excluding(after, limit, origin).await
    }
}

/// While the hub is unreachable the task really waits between attempts:
/// each failure reports `Offline` with a backoff that doubles up to the
/// maximum, and the next attempt (a failed sync makes exactly one request,
/// refused and timed by the `Switch`) comes no sooner than the `retry_in`
/// that failure reported, so attempts in a window are few. Once the hub is
/// back, the next attempt pushes everything. With an hour's backoff a
/// `sync_soon` still syncs at once, and without one nothing is attempted.
async fn backs_off_while_offline_and_catches_up(hub: TestDb) -> TestResult {
    let switch = Arc::new(Switch::new(SqlHub::new(hub.connect_again().await?)));
    let (local, engine) = device(switch.clone(), "bg_offline").await?;
    for i in 0..3 {
        add(&local.db, &format!("offline {i}")).await?;
    }
    // Waits long enough that an attempt made without waiting (a few
    // milliseconds later) cannot pass for one made after the wait.
    let min = Duration::from_millis(100);
    let max = Duration::from_millis(400);
    let ceiling = |failures: u32| Ord::min(min * 2u32.pow(failures - 1), max);
    let handle = engine.start(AutoSync::every(Duration::from_secs(3600)).backoff(min, max));

    // Each failure in a row waits longer, up to the maximum, each wait
    // between half and all of its ceiling.
    let mut rx = handle.watch();
    let mut seen: Vec<(u32, Duration)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.last().is_none_or(|(f, _)| *f < 6) {
        let s = rx.borrow_and_update().clone();
        if let SyncPhase::Waiting { failures, retry_in } = s.phase
            && seen.last().is_none_or(|(f, _)| *f != failures)
        {
            match s.last_error.as_deref() {
                Some(Error::Offline(_)) => {}
                other => return Err(format!("expected Offline, got {other:?}").into()),
            }
            ensure_eq!(s.pending, 3, "nothing is lost while offline");
            ensure_eq!(s.syncs, 0);
            seen.push((failures, retry_in));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            tokio::time::timeout(left, rx.changed()).await.is_ok(),
            "timed out; failures seen: {seen:?}"
        );
    }
    for (failures, retry_in) in &seen {
        let ceiling = ceiling(*failures);
        ensure!(
            *retry_in >= ceiling / 2 && *retry_in <= ceiling,
            "failure {failures}: waited {retry_in:?}, ceiling {ceiling:?} ({seen:?})"
        );
    }
    // The status may skip a state a slow reader did not see, never go back.
    ensure!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "failures in a row only grow: {seen:?}"
    );

    // The attempts really waited: attempt k + 1 came at least the
    // `retry_in` failure k reported after attempt k (a sleep never ends
    // early), and every wait at least half its ceiling.
    let refused = switch.refused();
    ensure!(
        refused.len() >= 6,
        "{} attempts for 6 failures",
        refused.len()
    );
    let gaps: Vec<Duration> = refused.windows(2).map(|w| w[1] - w[0]).collect();
    for (failures, retry_in) in &seen {
        if let Some(gap) = gaps.get(*failures as usize - 1) {
            ensure!(
                gap >= retry_in,
                "attempt {} came {gap:?} after failure {failures}, which reported retry_in {retry_in:?} (gaps: {gaps:?})",
                failures + 1
            );
        }
    }
    for (k, gap) in gaps.iter().enumerate() {
        let floor = ceiling(k as u32 + 1) / 2;
        ensure!(
            *gap >= floor,
            "attempt {} came {gap:?} after attempt {}, less than half the backoff {floor:?} (gaps: {gaps:?})",
            k + 2,
            k + 1
        );
    }
    // So a window holds few attempts: at the maximum, at most one per
    // half of it.
    let before = switch.refused().len();
    let window = Duration::from_millis(1000);
    tokio::time::sleep(window).await;
    let during = switch.refused().len() - before;
    let most = (window.as_millis() / (max / 2).as_millis()) as usize + 1;
    ensure!(
        during <= most,
        "{during} attempts in {window:?} with a backoff of at least {:?}",
        max / 2
    );

    // Back online: the next attempt (at most `max` away) pushes everything.
    switch.down.store(false, Ordering::SeqCst);
    let s = until(&handle, "the first successful sync", |s| s.syncs == 1).await?;
    ensure!(s.last_error.is_none(), "{s:?}");
    ensure_eq!(s.pending, 0);
    ensure_eq!(
        s.phase,
        SyncPhase::Idle,
        "after a success it waits for the interval"
    );
    ensure_eq!(contacts::Entity::find().count(&hub.db).await?, 3);
    handle.stop().await;

    // Offline again, backing off for an hour.
    switch.down.store(true, Ordering::SeqCst);
    add(&local.db, "later").await?;
    let hour = Duration::from_secs(3600);
    let handle = engine.start(AutoSync::every(hour).backoff(hour, hour));
    let s = until(&handle, "a failure", |s| {
        matches!(s.phase, SyncPhase::Waiting { .. })
    })
    .await?;
    let SyncPhase::Waiting { retry_in, .. } = s.phase else {
        unreachable!()
    };
    ensure!(retry_in >= hour / 2, "retry in {retry_in:?}");
    let attempts = switch.refused().len();
    // The hub is back, but nothing tries it during the backoff...
    switch.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = handle.status();
    ensure_eq!(s.syncs, 0, "no attempt during the backoff: {s:?}");
    ensure_eq!(switch.refused().len(), attempts);
    // ... until a demand cuts the wait short: the sync comes within
    // seconds, not the hour.
    handle.sync_soon();
    let s = until_within(
        &handle,
        "the sync on demand",
        Duration::from_secs(30),
        |s| s.syncs == 1,
    )
    .await?;
    ensure_eq!(s.pending, 0);
    ensure_eq!(contacts::Entity::find().count(&hub.db).await?, 4);
    handle.stop().await;
    local.drop().await?;
    hub.drop().await
}
