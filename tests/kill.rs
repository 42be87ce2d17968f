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
//! `TIDESYNC_KILLS` sets the number of kills per dialect (default 200).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::entities::contacts;
use common::{Dialect, TestDb, TestResult, run, trial};
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

fn main() -> std::process::ExitCode {
    if let Ok(url) = std::env::var(WORKER_URL) {
        let seed = common::env_seed(WORKER_SEED);
        return common::worker_exit(common::block_on(worker(url, seed)));
    }
    let trials = Dialect::ALL
        .iter()
        .map(|d| trial(*d, "capture_survives_sigkill", |t| Box::pin(kill_loop(t))))
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

/// Writes forever (until killed). Values written inside transactions that
/// are rolled back start with "ROLLBACK"; they must never be captured.
async fn worker(url: String, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    let db = Database::connect(&url).await?;
    let replica = open(&db).await?;
    println!("ready");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut step = 0u64;
    loop {
        step += 1;
        let name = format!("s{seed}-{step}");
        match rng.random_range(0..100) {
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
    t.create_table(contacts::Entity).await?;
    let kills: u32 = std::env::var("TIDESYNC_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let exe = std::env::current_exe()?;
    let mut rng = StdRng::seed_from_u64(0x5eed ^ u64::from(std::process::id()));
    let mut replay = Replay::default();
    let mut total_changes = 0;
    for kill in 0..kills {
        let seed: u64 = rng.random();
        let mut child = Command::new(&exe)
            .env(WORKER_URL, &t.url)
            .env(WORKER_SEED, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Mostly kill mid-write; sometimes during start-up and install.
        if rng.random_bool(0.9) {
            let mut line = String::new();
            BufReader::new(child.stdout.take().ok_or("stdout")?).read_line(&mut line)?;
            if line.trim() != "ready" {
                let out = child.wait_with_output()?;
                return Err(format!(
                    "worker did not start: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(5..120))).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        }
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            return Err(format!(
                "worker exited by itself ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        child.kill()?;
        child.wait()?;

        let db = t.connect_again().await?;
        let r = open(&db).await?;
        replay.catch_up(&r).await?;
        // Before capture: every difference between the table and the outbox
        // must be covered by a marker.
        let now = table(&db).await?;
        let marked = markers(&t, &db).await?;
        let ids: std::collections::BTreeSet<&Uuid> = now.keys().chain(replay.rows.keys()).collect();
        for id in ids {
            if now.get(id) != replay.rows.get(id) {
                ensure!(
                    marked.contains(id),
                    "kill {kill}: row {id} changed but has no marker and no change"
                );
            }
        }
        let report = r.capture().await?;
        ensure!(report.rejected.is_empty(), "{:?}", report.rejected);
        replay.catch_up(&r).await?;
        ensure!(
            replay.rows == now,
            "kill {kill}: outbox does not replay to the table"
        );
        ensure!(
            markers(&t, &db).await?.is_empty(),
            "kill {kill}: markers left after capture"
        );
        total_changes = replay.last_seq;
        db.close().await?;
    }
    ensure!(
        total_changes > u64::from(kills),
        "the workers wrote too little to test anything ({total_changes} changes)"
    );
    eprintln!(
        "{}: {kills} kills, {total_changes} changes checked",
        t.dialect.name()
    );
    t.drop().await
}
