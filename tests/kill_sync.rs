//! Crash safety of replication (invariants 1 and 4): device processes that
//! write and sync in a loop are killed with SIGKILL at random points of
//! capture, push and pull. After every kill the hub's log holds each origin's
//! changes exactly once, in order, without gaps; at the end every device
//! converges with the hub after a final sync.
//!
//! `TIDESYNC_KILLS` sets the number of kills per hub dialect (default 200).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::entities::contacts;
use common::{Dialect, TestDb, TestResult, run, trial};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, Database, QueryOrder, QuerySelect};
use tidesync::backends::{Backend, Cursor, SqlBackend};
use tidesync::{Replica, SyncEngine};

const DEVICE: &str = "TIDESYNC_SYNC_WORKER_DEVICE";
const HUB: &str = "TIDESYNC_SYNC_WORKER_HUB";
const SEED: &str = "TIDESYNC_SYNC_WORKER_SEED";

fn main() -> std::process::ExitCode {
    if let (Ok(device), Ok(hub)) = (std::env::var(DEVICE), std::env::var(HUB)) {
        let seed = common::env_seed(SEED);
        return common::worker_exit(common::block_on(worker(device, hub, seed)));
    }
    let trials = Dialect::ALL
        .iter()
        .map(|d| trial(*d, "sync_survives_sigkill", |t| Box::pin(kill_loop(t))))
        .collect();
    run(trials)
}

async fn engine(
    device: &DatabaseConnection,
    hub: &str,
) -> Result<SyncEngine, Box<dyn std::error::Error + Send + Sync>> {
    let replica = Replica::builder(device.clone())
        .register::<contacts::Entity>()
        .open()
        .await?;
    let backend = SqlBackend::new(Database::connect(hub).await?);
    // Small batches: many push and pull transactions to be killed in.
    Ok(SyncEngine::new(replica, Arc::new(backend)).with_batch_size(7))
}

/// Writes and syncs forever (until killed).
async fn worker(
    device: String,
    hub: String,
    seed: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let db = Database::connect(&device).await?;
    let engine = engine(&db, &hub).await?;
    println!("ready");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut step = 0u64;
    loop {
        step += 1;
        for _ in 0..rng.random_range(1..8) {
            let n = contacts::Entity::find().count(&db).await?;
            match rng.random_range(0..10) {
                0..5 => {
                    contacts::ActiveModel {
                        id: Set(Uuid::from_u128(rng.random())),
                        name: Set(format!("s{seed}-{step}")),
                        email: Set(None),
                        last_opened: Set(None),
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
        engine.sync_now().await?;
    }
}

type Rows = BTreeMap<Uuid, (String, Option<String>)>;

async fn rows(db: &DatabaseConnection) -> Result<Rows, DbErr> {
    Ok(contacts::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|m| (m.id, (m.name, m.email)))
        .collect())
}

/// Every origin's changes are on the hub once each, numbered 1..=n.
async fn check_log(backend: &SqlBackend) -> TestResult {
    let log = backend.pull(Cursor(0), u64::MAX).await?;
    let mut by_origin: BTreeMap<_, Vec<u64>> = BTreeMap::new();
    for c in &log.changes {
        by_origin.entry(c.id.origin).or_default().push(c.id.seq);
    }
    for (origin, seqs) in by_origin {
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
    let kills: u32 = std::env::var("TIDESYNC_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let exe = std::env::current_exe()?;
    let devices = [
        TestDb::create(Dialect::Sqlite, "dev-a").await?,
        TestDb::create(Dialect::Sqlite, "dev-b").await?,
    ];
    for d in &devices {
        d.create_table(contacts::Entity).await?;
    }
    let backend = SqlBackend::new(hub.connect_again().await?);
    let mut rng = StdRng::seed_from_u64(0x5eed_5eed ^ u64::from(std::process::id()));
    for kill in 0..kills {
        let device = &devices[(kill % 2) as usize];
        let mut child = Command::new(&exe)
            .env(DEVICE, &device.url)
            .env(HUB, &hub.url)
            .env(SEED, rng.random::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().ok_or("stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let out = child.wait_with_output()?;
            return Err(format!(
                "kill {kill}: worker did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..150))).await;
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            return Err(format!(
                "kill {kill}: worker exited by itself ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        child.kill()?;
        child.wait()?;
        if kill % 20 == 19 {
            check_log(&backend)
                .await
                .map_err(|e| format!("after kill {kill}: {e}"))?;
        }
    }
    check_log(&backend).await?;
    // Final syncs: everything converges.
    let mut engines = Vec::new();
    for d in &devices {
        engines.push(engine(&d.db, &hub.url).await?);
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
    check_log(&backend).await?;
    let hub_rows = rows(&hub.db).await?;
    for (d, e) in devices.iter().zip(&engines) {
        ensure_eq!(
            e.replica().pending_count().await?,
            0,
            "nothing left to push"
        );
        ensure!(
            rows(&d.db).await? == hub_rows,
            "device {} differs from the hub",
            d.url
        );
    }
    let changes = backend.pull(Cursor(0), u64::MAX).await?.changes.len();
    ensure!(
        changes > kills as usize,
        "too few changes to test anything: {changes}"
    );
    eprintln!(
        "{}: {kills} kills, {changes} changes on the hub, {} rows converged",
        hub.dialect.name(),
        hub_rows.len()
    );
    for d in devices {
        d.drop().await?;
    }
    hub.drop().await
}
