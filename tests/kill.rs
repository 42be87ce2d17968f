//! Crash safety (invariant 1): a child process writes through SeaORM (single
//! writes, transactions committed and rolled back, bulk paths, captures) and
//! is killed with SIGKILL at random moments. After each kill the database is
//! reopened and checked:
//!
//! - every row whose committed state differs from what the outbox replays to
//!   has a dirty marker (so it will be captured), and after a capture the
//!   outbox replays to exactly the table;
//! - no change carries a value written only by a rolled-back transaction;
//! - sequences are gap-free from 1 and clocks increase with them.
//!
//! Most kills aim at the worker's writes or its captures, chosen at random:
//! the parent waits until the worker announces the phase, then kills after
//! a random part of a duration that phase took before; the rest land during
//! start-up. Where each kill landed is counted and printed. Enough kills
//! must land in the worker's writes and in its captures, and the workers
//! must have captured changes themselves (not only left markers for the
//! parent's capture after the kill).
//!
//! `TIDESYNC_KILLS` sets the number of kills per dialect (default 100, sized for CI);
//! `TIDESYNC_KILL_SEED` replays a run (each run prints its seed).
//!
//! Direct only: the workers write and capture on a database of each
//! dialect and never sync, so no hub is reached and HTTP has nothing to
//! add. Killing devices that sync over HTTP is `tests/kill_sync.rs`.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::entities::contacts;
use common::kill::{Killer, STARTUP, Worker, announce, kill_seed};
use common::{Dialect, TestDb, TestResult, run, trial_direct};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::Value as SqValue;
use sea_orm::{
    ActiveValue::Set, Database, IntoActiveModel, QueryOrder, QuerySelect, Statement,
    TransactionTrait,
};
use tidesync::{Change, Op, Replica};

const WORKER_URL: &str = "TIDESYNC_KILL_WORKER_URL";
const WORKER_SEED: &str = "TIDESYNC_KILL_WORKER_SEED";

/// The phases of a worker.
const WRITE: &str = "write";
const CAPTURE: &str = "capture";

fn main() -> std::process::ExitCode {
    if let Ok(url) = std::env::var(WORKER_URL) {
        let seed = common::env_seed(WORKER_SEED);
        return common::worker_exit(common::block_on(worker(url, seed)));
    }
    let trials = Dialect::ALL
        .iter()
        .map(|d| trial_direct(*d, "capture_survives_sigkill", |t| Box::pin(kill_loop(t))))
        .collect();
    run(trials)
}

async fn open(db: &DatabaseConnection) -> Result<Replica, tidesync::Error> {
    Replica::builder(db.clone())
        .register::<contacts::Entity>()
        .open()
        .await
}

fn contact(rng: &mut StdRng, name: String) -> contacts::ActiveModel {
    contacts::ActiveModel {
        id: Set(Uuid::from_u128(rng.random())),
        name: Set(name),
        email: Set(rng
            .random_bool(0.5)
            .then(|| format!("e{}@x", rng.random::<u16>()))),
        last_opened: Set(None),
        updated_at: Set(Utc
            .timestamp_micros(rng.random_range(1_000_000..2_147_000_000_000_000))
            .unwrap()),
    }
}

async fn random_id(db: &impl ConnectionTrait, rng: &mut StdRng) -> Result<Option<Uuid>, DbErr> {
    let n = contacts::Entity::find().count(db).await?;
    if n == 0 {
        return Ok(None);
    }
    let m = contacts::Entity::find()
        .order_by_asc(contacts::Column::Id)
        .offset(rng.random_range(0..n))
        .one(db)
        .await?;
    Ok(m.map(|m| m.id))
}

/// Writes forever (until killed), announcing its phase: writing or
/// capture. Values written inside transactions that are rolled back start
/// with "ROLLBACK"; they must never be captured.
async fn worker(url: String, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let db = Database::connect(&url).await?;
    let replica = open(&db).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut step = 0u64;
    loop {
        step += 1;
        let name = format!("s{seed}-{step}");
        let action = rng.random_range(0..100);
        announce(if action < 88 { WRITE } else { CAPTURE });
        match action {
            0..20 => {
                contact(&mut rng, name).insert(&db).await?;
            }
            20..35 => {
                if let Some(id) = random_id(&db, &mut rng).await? {
                    contacts::ActiveModel {
                        id: Set(id),
                        name: Set(name),
                        ..Default::default()
                    }
                    .update(&db)
                    .await?;
                }
            }
            35..42 => {
                if let Some(id) = random_id(&db, &mut rng).await? {
                    contacts::Entity::delete_by_id(id).exec(&db).await?;
                }
            }
            42..55 => {
                let rows: Vec<_> = (0..rng.random_range(1..6))
                    .map(|i| contact(&mut rng, format!("{name}-{i}")))
                    .collect();
                contacts::Entity::insert_many(rows).exec(&db).await?;
            }
            55..62 => {
                contacts::Entity::update_many()
                    .col_expr(contacts::Column::Email, Expr::value(format!("bulk-{name}")))
                    .filter(contacts::Column::Name.like(format!("%{}", rng.random_range(0..10))))
                    .exec(&db)
                    .await?;
            }
            62..66 => {
                contacts::Entity::delete_many()
                    .filter(contacts::Column::Name.like(format!("%{}7", rng.random_range(0..10))))
                    .exec(&db)
                    .await?;
            }
            66..88 => {
                let commit = rng.random_bool(0.6);
                let label = if commit {
                    name.clone()
                } else {
                    format!("ROLLBACK-{name}")
                };
                let tx = db.begin().await?;
                for i in 0..rng.random_range(1..5) {
                    match rng.random_range(0..3) {
                        0 => {
                            contact(&mut rng, format!("{label}-{i}"))
                                .insert(&tx)
                                .await?;
                        }
                        1 => {
                            if let Some(id) = random_id(&tx, &mut rng).await? {
                                let mut am = contacts::Entity::find_by_id(id)
                                    .one(&tx)
                                    .await?
                                    .ok_or("row")?
                                    .into_active_model();
                                am.name = Set(format!("{label}-{i}"));
                                am.email = Set(Some(format!("{label}@x")));
                                am.update(&tx).await?;
                            }
                        }
                        _ => {
                            if let Some(id) = random_id(&tx, &mut rng).await? {
                                contacts::Entity::delete_by_id(id).exec(&tx).await?;
                            }
                        }
                    }
                }
                if commit {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
            }
            _ => {
                replica.capture().await?;
            }
        }
    }
}

type Row = BTreeMap<String, SqValue>;

fn synced(m: &contacts::Model) -> Row {
    [
        ("id", m.id.into()),
        ("name", m.name.clone().into()),
        ("email", m.email.clone().into()),
        ("updated_at", m.updated_at.into()),
    ]
    .into_iter()
    .map(|(k, v): (&str, SqValue)| (k.to_string(), v))
    .collect()
}

/// The state the outbox replays to, kept across kills.
#[derive(Default)]
struct Replay {
    rows: BTreeMap<Uuid, Row>,
    last_seq: u64,
    last_hlc: Option<tidesync::Hlc>,
}

impl Replay {
    fn apply(&mut self, c: &Change) -> TestResult {
        ensure_eq!(c.id.seq, self.last_seq + 1, "sequence must be gap-free");
        if let Some(h) = self.last_hlc {
            ensure!(
                c.hlc > h,
                "clock must increase with the sequence: {} then {}",
                h,
                c.hlc
            );
        }
        self.last_seq = c.id.seq;
        self.last_hlc = Some(c.hlc);
        for (col, v) in &c.columns {
            if let SqValue::String(Some(s)) = v {
                ensure!(
                    !s.starts_with("ROLLBACK"),
                    "rolled-back value captured: {col} = {s} in {c:?}"
                );
            }
        }
        let Some((_, SqValue::Uuid(Some(id)))) = c.pk.first() else {
            return Err(format!("bad key {:?}", c.pk).into());
        };
        match c.op {
            Op::Delete => {
                ensure!(
                    self.rows.remove(id).is_some(),
                    "delete of a row never inserted: {c:?}"
                );
            }
            Op::Insert => {
                ensure!(!self.rows.contains_key(id), "insert of a live row: {c:?}");
                self.rows.insert(*id, c.columns.iter().cloned().collect());
            }
            Op::Update => {
                let row = self
                    .rows
                    .get_mut(id)
                    .ok_or_else(|| format!("update of a missing row: {c:?}"))?;
                for (k, v) in &c.columns {
                    row.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(())
    }

    async fn catch_up(&mut self, r: &Replica) -> TestResult {
        // The outbox is never trimmed in this test (nothing is pushed).
        let all = r.pending(u64::MAX).await?;
        for c in all.iter().skip(self.last_seq as usize) {
            self.apply(c)?;
        }
        Ok(())
    }
}

async fn table(db: &DatabaseConnection) -> Result<BTreeMap<Uuid, Row>, DbErr> {
    Ok(contacts::Entity::find()
        .all(db)
        .await?
        .iter()
        .map(|m| (m.id, synced(m)))
        .collect())
}

async fn markers(t: &TestDb, db: &DatabaseConnection) -> Result<Vec<Uuid>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(
            t.backend(),
            "SELECT id FROM _ts_d_contacts",
        ))
        .await?;
    rows.iter().map(|r| r.try_get::<Uuid>("", "id")).collect()
}

async fn kill_loop(t: TestDb) -> TestResult {
    let seed = kill_seed();
    let dialect = t.dialect.name();
    eprintln!("{dialect}: kill seed {seed}");
    if let Err(e) = kills(&t, seed).await {
        return Err(format!(
            "{dialect}: {e}\nreplay with TIDESYNC_KILL_SEED={seed} cargo test --test kill"
        )
        .into());
    }
    t.drop().await
}

async fn kills(t: &TestDb, seed: u64) -> TestResult {
    t.create_table(contacts::Entity).await?;
    let kills: u32 = std::env::var("TIDESYNC_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let exe = std::env::current_exe()?;
    let mut killer = Killer::new(seed);
    let mut replay = Replay::default();
    // Changes the workers captured themselves, and those the parent's
    // capture after a kill made of the markers they left.
    let (mut by_workers, mut by_parent) = (0, 0);
    for kill in 0..kills {
        let worker = Worker::spawn(
            Command::new(&exe)
                .env(WORKER_URL, &t.url)
                .env(WORKER_SEED, killer.rng.random::<u64>().to_string()),
        )?;
        // Mostly aim at the worker's first or second writes, or at its
        // first capture (later rounds only make the outbox, replayed after
        // every kill, longer). A kill in the second writes lets the first
        // capture finish: its duration is measured whole, not only when it
        // is short enough to beat a kill. Sometimes kill during start-up
        // (opening the replica, installing the triggers).
        let landed = if killer.rng.random_bool(0.9) {
            if killer.rng.random_bool(0.5) {
                let nth = killer.rng.random_range(1..=2);
                killer.kill_in(worker, WRITE, nth)
            } else {
                killer.kill_in(worker, CAPTURE, 1)
            }
        } else {
            let delay = Duration::from_millis(killer.rng.random_range(0..40));
            killer.kill_after(worker, delay)
        }
        .map_err(|e| format!("kill {kill}: {e}"))?;

        let db = t.connect_again().await?;
        let r = open(&db).await?;
        let before = replay.last_seq;
        replay.catch_up(&r).await?;
        by_workers += replay.last_seq - before;
        // Before capture: every difference between the table and the outbox
        // must be covered by a marker.
        let now = table(&db).await?;
        let marked = markers(t, &db).await?;
        let ids: std::collections::BTreeSet<&Uuid> = now.keys().chain(replay.rows.keys()).collect();
        for id in ids {
            if now.get(id) != replay.rows.get(id) {
                ensure!(
                    marked.contains(id),
                    "kill {kill} (in {landed}): row {id} changed but has no marker and no change"
                );
            }
        }
        let report = r.capture().await?;
        ensure!(report.rejected.is_empty(), "{:?}", report.rejected);
        let before = replay.last_seq;
        replay.catch_up(&r).await?;
        by_parent += replay.last_seq - before;
        ensure!(
            replay.rows == now,
            "kill {kill} (in {landed}): outbox does not replay to the table"
        );
        ensure!(
            markers(t, &db).await?.is_empty(),
            "kill {kill} (in {landed}): markers left after capture"
        );
        db.close().await?;
    }
    let dialect = t.dialect.name();
    eprintln!(
        "{dialect}: {kills} kills, {} changes checked ({by_workers} captured by the workers, \
         {by_parent} by the parent after a kill); kills by phase: {}",
        replay.last_seq,
        killer.summary()
    );
    // Only kills inside the worker's work count, and only changes the
    // workers' own captures committed: start-up kills test little, and the
    // parent's capture after a kill would meet a floor of changes even if
    // the workers never captured.
    let (writes, captures) = (killer.landed(WRITE), killer.landed(CAPTURE));
    ensure!(
        writes >= kills / 5 && captures >= kills / 5,
        "too few kills landed in the worker's writes ({writes}) or captures ({captures}) of \
         {kills}: {}",
        killer.summary()
    );
    ensure!(
        killer.landed(STARTUP) <= kills / 4,
        "too many kills landed during start-up: {}",
        killer.summary()
    );
    ensure!(
        by_workers >= u64::from(kills / 4),
        "the workers' own captures committed too little to test anything ({by_workers} \
         changes in {kills} kills)"
    );
    Ok(())
}
