//! Crash safety of replication (invariants 1 and 4): device processes that
//! write and sync in a loop are killed with SIGKILL inside each phase of
//! their work: writing, capture, push and pull. After every kill the hub's
//! batch records hold each origin's changes exactly once, in order,
//! without gaps; at the end every device converges with the hub after a
//! final sync, and the hub and the devices hold, column by column, what
//! per-column last-writer-wins makes of every change the devices captured,
//! each device's local-only column its own. The changes captured are
//! journaled by the workers, not by the library: after each capture, a
//! worker copies its outbox into a table of its own (`kill_journal`)
//! before it pushes, so the oracle holds every change that may have
//! reached the hub, whatever the hub keeps of them.
//!
//! Each kill aims at a phase chosen at random: the parent waits until the
//! worker announces it, then kills after a random part of a duration that
//! phase took before. Where each kill landed is counted and printed, and
//! capture, push and pull must each get a share of the kills.
//!
//! `TIDESYNC_KILLS` sets the number of kills per hub dialect (default 100:
//! a kill now waits for its phase, so each takes longer than a blind one;
//! 100 of them take about as long as 200 did and reach push and pull far
//! more often); `TIDESYNC_KILL_SEED` replays a run (each run prints its
//! seed).
//!
//! The test runs twice per hub dialect: with workers that open the hub
//! database (direct), and with workers that reach it over HTTP (`::http`)
//! through a hub server in the test process, which outlives every worker
//! killed mid-request. The final syncs go the same way; the batch records
//! are checked on the hub database.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use common::entities::contacts;
use common::kill::{Killer, Worker, announce, kill_seed};
use common::rows::{self, Synced};
use common::{Dialect, TestDb, TestResult, run, trial};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::Value;
use sea_orm::{ActiveValue::Set, Database, QueryOrder, QuerySelect};
use tidesync::hub::{Cursor, Hub, HubInfo, PullBatch, PushAck, SnapshotPage};
use tidesync::{Change, Hlc, NodeId, Op, Replica, SyncEngine, TableSpec};

const DEVICE: &str = "TIDESYNC_SYNC_WORKER_DEVICE";
const INDEX: &str = "TIDESYNC_SYNC_WORKER_INDEX";
const HUB: &str = "TIDESYNC_SYNC_WORKER_HUB";
/// With a hub server's URL in `HUB`: the token to sign in with.
const TOKEN: &str = "TIDESYNC_SYNC_WORKER_TOKEN";
const SEED: &str = "TIDESYNC_SYNC_WORKER_SEED";

/// The phases of a worker.
const WRITE: &str = "write";
const CAPTURE: &str = "capture";
const INSTALL: &str = "install";
const PUSH: &str = "push";
const PULL: &str = "pull";

fn main() -> std::process::ExitCode {
    if let (Ok(device), Ok(hub)) = (std::env::var(DEVICE), std::env::var(HUB)) {
        let seed = common::env_seed(SEED);
        let index = common::env_seed(INDEX);
        let token = std::env::var(TOKEN).ok();
        return common::worker_exit(common::block_on(worker(device, index, hub, token, seed)));
    }
    common::over_every_transport();
    let trials = Dialect::ALL
        .iter()
        .flat_map(|d| trial(*d, "sync_survives_sigkill", |t| Box::pin(kill_loop(t))))
        .collect();
    run(trials)
}

/// A hub that announces the worker's phase at each call: install, push,
/// pull (a pull's local work, between its hub calls, is in the pull phase
/// too).
struct Announced(Arc<dyn Hub>);

#[async_trait::async_trait]
impl Hub for Announced {
    async fn install(&self, tables: &[TableSpec]) -> tidesync::Result<HubInfo> {
        announce(INSTALL);
        self.0.install(tables).await
    }

    async fn push(&self, batch: &[Change]) -> tidesync::Result<PushAck> {
        announce(PUSH);
        self.0.push(batch).await
    }

    async fn standing(
        &self,
        origin: tidesync::NodeId,
        at: Option<Cursor>,
    ) -> tidesync::Result<tidesync::hub::Standing> {
        self.0.standing(origin, at).await
    }

    async fn pull(&self, cursor: Cursor, limit: u64) -> tidesync::Result<PullBatch> {
        announce(PULL);
        self.0.pull(cursor, limit).await
    }

    async fn pull_excluding(
        &self,
        cursor: Cursor,
        limit: u64,
        origin: NodeId,
    ) -> tidesync::Result<PullBatch> {
        announce(PULL);
        self.0.pull_excluding(cursor, limit, origin).await
    }

    async fn pull_states(
        &self,
        cursor: Cursor,
        limit: u64,
        origin: NodeId,
    ) -> tidesync::Result<tidesync::hub::StatePage> {
        announce(PULL);
        self.0.pull_states(cursor, limit, origin).await
    }

    async fn snapshot(
        &self,
        after: Option<String>,
        limit: u64,
    ) -> tidesync::Result<(Cursor, SnapshotPage)> {
        announce(PULL);
        self.0.snapshot(after, limit).await
    }

    async fn snapshot_excluding(
        &self,
        after: Option<String>,
        limit: u64,
        origin: tidesync::NodeId,
    ) -> tidesync::Result<(Cursor, SnapshotPage)> {
        announce(PULL);
        self.0.snapshot_excluding(after, limit, origin).await
    }
}

async fn engine(
    device: &DatabaseConnection,
    hub: Arc<dyn Hub>,
) -> Result<SyncEngine, Box<dyn std::error::Error + Send + Sync>> {
    let replica = Replica::builder(device.clone())
        .register::<contacts::Entity>()
        .open()
        .await?;
    // Small batches: many push and pull transactions to be killed in.
    Ok(SyncEngine::new(replica, hub).with_batch_size(7))
}

/// The local-only value device `index` writes into row `id`: each device's
/// own, so one that travels is seen.
fn opened(id: Uuid, index: u64) -> DateTime<Utc> {
    let secs = 1_000_000_000 + index as i64 * 100_000_000 + (id.as_u128() % 10_000_000) as i64;
    Utc.timestamp_opt(secs, 0).unwrap()
}

/// Writes and syncs forever (until killed), announcing each phase.
async fn worker(
    device: String,
    index: u64,
    hub: String,
    token: Option<String>,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let db = Database::connect(&device).await?;
    let hub = Announced(common::WorkerHub::reach(&hub, token).await?);
    let engine = engine(&db, Arc::new(hub)).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut step = 0u64;
    loop {
        step += 1;
        announce(WRITE);
        for _ in 0..rng.random_range(1..8) {
            let n = contacts::Entity::find().count(&db).await?;
            match rng.random_range(0..10) {
                0..5 => {
                    let id = Uuid::from_u128(rng.random());
                    contacts::ActiveModel {
                        id: Set(id),
                        name: Set(format!("s{seed}-{step}")),
                        email: Set(None),
                        last_opened: Set(Some(opened(id, index))),
                        updated_at: Set(Utc
                            .timestamp_micros(rng.random_range(0..2_000_000_000_000_000))
                            .unwrap()),
                    }
                    .insert(&db)
                    .await?;
                }
                5..9 if n > 0 => {
                    let m = contacts::Entity::find()
                        .order_by_asc(contacts::Column::Id)
                        .offset(rng.random_range(0..n))
                        .one(&db)
                        .await?
                        .ok_or("row")?;
                    contacts::ActiveModel {
                        id: Set(m.id),
                        email: Set(Some(format!("e{seed}-{step}"))),
                        ..Default::default()
                    }
                    .update(&db)
                    .await?;
                }
                _ if n > 0 => {
                    let m = contacts::Entity::find()
                        .order_by_asc(contacts::Column::Id)
                        .offset(rng.random_range(0..n))
                        .one(&db)
                        .await?
                        .ok_or("row")?;
                    contacts::Entity::delete_by_id(m.id).exec(&db).await?;
                }
                _ => {}
            }
        }
        announce(CAPTURE);
        engine.replica().capture().await?;
        journal(&db, engine.replica()).await?;
        // Install (the first time), push and pull announce themselves.
        engine.sync_now().await?;
    }
}

/// What per-column last-writer-wins makes of a log: for each row, each
/// column's value with the greatest clock, live when some column's clock is
/// greater than the latest delete's. Written here from the rule, not with
/// the library's merge.
fn last_writer_wins(log: &[Change]) -> Result<BTreeMap<Uuid, Synced>, String> {
    #[derive(Default)]
    struct Row {
        columns: BTreeMap<String, (Hlc, Value)>,
        deleted: Option<Hlc>,
    }
    let mut rows: BTreeMap<Uuid, Row> = BTreeMap::new();
    for c in log {
        let Some((_, Value::Uuid(Some(id)))) = c.pk.first() else {
            return Err(format!("bad key {:?}", c.pk));
        };
        let row = rows.entry(*id).or_default();
        match c.op {
            Op::Delete => {
                if row.deleted.is_none_or(|d| c.hlc > d) {
                    row.deleted = Some(c.hlc);
                }
            }
            Op::Insert | Op::Update => {
                for (col, v) in &c.columns {
                    if row.columns.get(col).is_none_or(|(h, _)| c.hlc > *h) {
                        row.columns.insert(col.clone(), (c.hlc, v.clone()));
                    }
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (id, row) in rows {
        let Some(last) = row.columns.values().map(|(h, _)| *h).max() else {
            continue;
        };
        if row.deleted.is_some_and(|d| d >= last) {
            continue;
        }
        let col = |name: &str| {
            row.columns
                .get(name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("row {id}: no value for {name} in the log"))
        };
        let name = match col("name")? {
            Value::String(Some(s)) => s,
            v => return Err(format!("row {id}: name {v:?}")),
        };
        let email = match col("email")? {
            Value::String(s) => s,
            v => return Err(format!("row {id}: email {v:?}")),
        };
        let updated_at = match col("updated_at")? {
            Value::ChronoDateTimeUtc(Some(t)) => t,
            v => return Err(format!("row {id}: updated_at {v:?}")),
        };
        out.insert(
            id,
            Synced {
                name,
                email,
                updated_at,
            },
        );
    }
    Ok(out)
}

/// The test's journal of what a device captured (see the module doc).
const JOURNAL: &str = "kill_journal";

/// Copy `replica`'s outbox into the journal of its database (each change
/// once: a change still in the outbox after a kill is copied again).
async fn journal(
    db: &DatabaseConnection,
    replica: &Replica,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let pending = replica.pending(1_000_000).await?;
    for chunk in pending.chunks(200) {
        let mut rows = Vec::with_capacity(chunk.len());
        for c in chunk {
            let text = serde_json::to_string(c)?.replace('\'', "''");
            rows.push(format!("('{}', {}, '{text}')", c.id.origin, c.id.seq));
        }
        db.execute_unprepared(&format!(
            "INSERT OR IGNORE INTO {JOURNAL} (origin, seq, change) VALUES {}",
            rows.join(", ")
        ))
        .await?;
    }
    Ok(())
}

/// Every change a device's journal holds.
async fn journaled(db: &DatabaseConnection) -> Result<Vec<Change>, common::BoxError> {
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            format!("SELECT change FROM {JOURNAL} ORDER BY origin, seq"),
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let text: String = r.try_get("", "change")?;
        out.push(serde_json::from_str(&text)?);
    }
    Ok(out)
}

/// Every origin's changes are on the hub once each, numbered 1..=n.
async fn check_log(hub: &TestDb) -> TestResult {
    for (origin, seqs) in common::applied_by_origin(&hub.db).await? {
        let want: Vec<u64> = (1..=seqs.len() as u64).collect();
        ensure!(
            seqs == want,
            "origin {origin}: hub holds sequences {seqs:?}, not 1..={} once each in order",
            want.len()
        );
    }
    Ok(())
}

async fn kill_loop(hub: TestDb) -> TestResult {
    let seed = kill_seed();
    let dialect = hub.dialect.name();
    eprintln!("{dialect}: kill seed {seed}");
    let devices = [
        TestDb::create(Dialect::Sqlite, "dev-a").await?,
        TestDb::create(Dialect::Sqlite, "dev-b").await?,
    ];
    let result = kills(&hub, &devices, seed).await;
    if let Err(e) = result {
        return Err(format!(
            "{dialect} hub: {e}\nreplay with TIDESYNC_KILL_SEED={seed} cargo test --test kill_sync"
        )
        .into());
    }
    for d in devices {
        d.drop().await?;
    }
    hub.drop().await
}

async fn kills(hub: &TestDb, devices: &[TestDb; 2], seed: u64) -> TestResult {
    let kills: u32 = std::env::var("TIDESYNC_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let exe = std::env::current_exe()?;
    for d in devices {
        d.create_table(contacts::Entity).await?;
        d.db.execute_unprepared(&format!(
            "CREATE TABLE {JOURNAL} (origin TEXT NOT NULL, seq INTEGER NOT NULL, \
             change TEXT NOT NULL, PRIMARY KEY (origin, seq))"
        ))
        .await?;
    }
    // Over HTTP, a hub server in this process for every worker.
    let workers_hub = common::WorkerHub::start(hub).await?;
    let mut killer = Killer::new(seed);
    let mut targets = [WRITE, CAPTURE, PUSH, PULL];
    for kill in 0..kills {
        let index = kill % 2;
        let device = &devices[index as usize];
        let mut cmd = Command::new(&exe);
        cmd.env(DEVICE, &device.url)
            .env(INDEX, index.to_string())
            .env(HUB, &workers_hub.url)
            .env(SEED, killer.rng.random::<u64>().to_string());
        if let Some(token) = &workers_hub.token {
            cmd.env(TOKEN, token);
        }
        let worker = Worker::spawn(&mut cmd)?;
        // Aim at each phase in turn, in a random order within each four
        // kills; at a phase of the first or second round, and at the pull
        // of the first: it brings what the other device wrote meanwhile,
        // later ones little (and are so short that a kill aimed at them
        // often lands after them).
        if kill % 4 == 0 {
            targets.shuffle(&mut killer.rng);
        }
        let target = targets[(kill % 4) as usize];
        let nth = if target == PULL {
            1
        } else {
            killer.rng.random_range(1..=2)
        };
        killer
            .kill_in(worker, target, nth)
            .map_err(|e| format!("kill {kill}: {e}"))?;
        if kill % 20 == 19 {
            check_log(hub)
                .await
                .map_err(|e| format!("after kill {kill}: {e}"))?;
        }
    }
    let dialect = hub.dialect.name();
    eprintln!("{dialect}: kills by phase: {}", killer.summary());
    check_log(hub).await?;
    // Final syncs: everything converges. What the last workers wrote and
    // did not capture is captured and journaled first.
    let mut engines = Vec::new();
    for d in devices {
        let e = engine(&d.db, common::hub_for(hub).await?).await?;
        e.replica().capture().await?;
        journal(&d.db, e.replica()).await?;
        engines.push(e);
    }
    for _ in 0..2 {
        for e in &engines {
            let r = e.sync_now().await?;
            ensure!(
                r.halted.is_none() && r.local_errors.is_empty() && r.rejected.is_empty(),
                "{r:?}"
            );
        }
    }
    check_log(hub).await?;
    let mut log = Vec::new();
    for d in devices {
        log.extend(journaled(&d.db).await?);
    }
    let mut captured: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for c in &log {
        captured
            .entry(c.id.origin.to_string())
            .or_default()
            .push(c.id.seq);
    }
    ensure_eq!(
        common::applied_by_origin(&hub.db).await?,
        captured,
        "the hub applied each change the devices captured, and no other"
    );
    let want = last_writer_wins(&log)?;
    let hub_rows = rows::contacts(&hub.db).await?;
    ensure!(
        rows::synced(&hub_rows) == want,
        "the hub's rows are not what last-writer-wins makes of the captured changes:\n{}",
        rows::differences(&rows::synced(&hub_rows), &want, 5)
    );
    ensure!(
        hub_rows.values().all(|m| m.last_opened.is_none()),
        "a local-only value reached the hub"
    );
    for (i, (d, e)) in devices.iter().zip(&engines).enumerate() {
        ensure_eq!(
            e.replica().pending_count().await?,
            0,
            "nothing left to push"
        );
        let got = rows::contacts(&d.db).await?;
        ensure!(
            rows::synced(&got) == want,
            "device {i} differs from what last-writer-wins makes of the captured changes:\n{}",
            rows::differences(&rows::synced(&got), &want, 5)
        );
        for m in got.values() {
            // Its own value, or none (the row came from the other device,
            // or came back after a delete).
            ensure!(
                m.last_opened.is_none() || m.last_opened == Some(opened(m.id, i as u64)),
                "device {i}: row {} holds a local-only value it did not write: {:?}",
                m.id,
                m.last_opened
            );
        }
    }
    ensure!(
        log.len() > kills as usize,
        "too few changes to test anything: {}",
        log.len()
    );
    eprintln!(
        "{dialect}: {kills} kills, {} changes on the hub, {} rows converged",
        log.len(),
        want.len()
    );
    // Each phase that moves data gets its share of the kills (a quarter of
    // them aim at each of write, capture, push and pull; most land there).
    for phase in [CAPTURE, PUSH, PULL] {
        ensure!(
            killer.landed(phase) >= kills / 10,
            "only {} of {kills} kills landed in {phase}: {}",
            killer.landed(phase),
            killer.summary()
        );
    }
    Ok(())
}
