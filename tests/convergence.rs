//! Convergence (invariant 3), as a property: 3 to 5 replicas make random
//! offline inserts, updates (often of the same row and column) and deletes,
//! sync in a random interleaving, sometimes crash mid-sync (the sync is
//! cancelled at a random point, rolling back whatever transaction it was
//! in); after a final round of syncs every replica and the hub hold
//! identical rows.
//!
//! `TIDESYNC_PROPTEST_CASES` sets the number of cases per hub dialect
//! (default 500). A failing case is shrunk and printed with the seed to
//! replay it: `TIDESYNC_PROPTEST_SEED=<seed> cargo test --test convergence`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::entities::contacts;
use common::{BoxError, Dialect, TestDb, TestResult, run, trial};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, ConnectionTrait, Database};
use tidesync::backends::SqlBackend;
use tidesync::{Replica, SyncEngine};

fn main() -> std::process::ExitCode {
    let trials = Dialect::ALL
        .iter()
        .map(|d| trial(*d, "replicas_converge", |t| Box::pin(property(t))))
        .collect();
    run(trials)
}

/// Few keys, few values: collisions on the same row and column are common.
const KEYS: u128 = 5;

#[derive(Clone, Debug)]
enum Step {
    Insert {
        replica: usize,
        key: u128,
        name: u8,
    },
    Update {
        replica: usize,
        key: u128,
        email: bool,
        value: u8,
    },
    Delete {
        replica: usize,
        key: u128,
    },
    Sync {
        replica: usize,
    },
    /// A sync cancelled after `polls` polls (a crash mid-sync).
    CrashSync {
        replica: usize,
        polls: u8,
    },
}

fn step(replicas: usize) -> impl Strategy<Value = Step> {
    let r = 0..replicas;
    prop_oneof![
        3 => (r.clone(), 0..KEYS, any::<u8>()).prop_map(|(replica, key, name)| Step::Insert { replica, key, name }),
        4 => (r.clone(), 0..KEYS, any::<bool>(), any::<u8>())
            .prop_map(|(replica, key, email, value)| Step::Update { replica, key, email, value }),
        1 => (r.clone(), 0..KEYS).prop_map(|(replica, key)| Step::Delete { replica, key }),
        3 => r.clone().prop_map(|replica| Step::Sync { replica }),
        1 => (r, 1..60u8).prop_map(|(replica, polls)| Step::CrashSync { replica, polls }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (3..=5usize).prop_flat_map(|n| (Just(n), prop::collection::vec(step(n), 1..40)))
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

/// Poll a future at most `polls` times, then drop it (a crash at that point).
async fn crash_after<F: std::future::Future>(polls: u8, f: F) {
    let mut f = std::pin::pin!(f);
    for _ in 0..polls {
        let done = std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(_) => std::task::Poll::Ready(true),
            std::task::Poll::Pending => std::task::Poll::Ready(false),
        })
        .await;
        if done {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

struct World {
    dir: std::path::PathBuf,
    hub_url: String,
    /// Each replica slot's own hub connection pool, kept across cases and
    /// replaced when that replica crashes (a process takes its connections
    /// with it).
    hub_pools: tokio::sync::Mutex<Vec<Option<DatabaseConnection>>>,
}

impl World {
    /// Open (or reopen after a crash) replica `i`: its local database and
    /// its own connection pool to the hub, as a device process has.
    async fn start(
        &self,
        case: u64,
        i: usize,
        crashed: bool,
    ) -> Result<(DatabaseConnection, SyncEngine), BoxError> {
        let path = self.dir.join(format!("c{case}-r{i}.db"));
        let db = Database::connect(format!("sqlite://{}?mode=rwc", path.display())).await?;
        tidesync::create_table::<contacts::Entity, _>(&db).await?;
        let replica = Replica::builder(db.clone())
            .register::<contacts::Entity>()
            .open()
            .await?;
        let mut pools = self.hub_pools.lock().await;
        if pools.len() <= i {
            pools.resize(i + 1, None);
        }
        if crashed {
            // Dropped, not closed: `close` would wait for a connection the
            // cancelled sync may still hold; it goes when the last clone does.
            pools[i] = None;
        }
        let hub = match &pools[i] {
            Some(p) => p.clone(),
            None => {
                let p = Database::connect(
                    sea_orm::ConnectOptions::new(&self.hub_url)
                        .max_connections(2)
                        .to_owned(),
                )
                .await?;
                pools[i] = Some(p.clone());
                p
            }
        };
        drop(pools);
        let engine = SyncEngine::new(replica, Arc::new(SqlBackend::new(hub))).with_batch_size(3);
        Ok((db, engine))
    }

    /// Empty the hub's tables (one hub database per dialect for all cases).
    async fn reset_hub(&self, hub: &DatabaseConnection) -> Result<(), BoxError> {
        for t in [
            "contacts",
            "_tidesync_changes",
            "_tidesync_hub_rows",
            "_tidesync_peers",
            "_tidesync_rejected",
        ] {
            let sql = format!(
                "DELETE FROM {}",
                tidesync::core::schema::quote(hub.get_database_backend(), t)
            );
            let _ = hub.execute_unprepared(&sql).await; // absent before the first install
        }
        let meta = format!(
            "UPDATE {} SET {} = '1' WHERE {} = 'next_seq'",
            tidesync::core::schema::quote(hub.get_database_backend(), "_tidesync_hub_meta"),
            tidesync::core::schema::quote(hub.get_database_backend(), "value"),
            tidesync::core::schema::quote(hub.get_database_backend(), "key"),
        );
        let _ = hub.execute_unprepared(&meta).await;
        Ok(())
    }

    async fn run_case(
        &self,
        hub: &DatabaseConnection,
        case: u64,
        n: usize,
        steps: &[Step],
    ) -> Result<(), String> {
        self.reset_hub(hub).await.map_err(|e| e.to_string())?;
        let mut engines = Vec::new();
        let mut dbs = Vec::new();
        for i in 0..n {
            let path = self.dir.join(format!("c{case}-r{i}.db"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            let (db, engine) = self
                .start(case, i, false)
                .await
                .map_err(|e| e.to_string())?;
            engines.push(engine);
            dbs.push(db);
        }
        let stamp = |v: u8| Utc.timestamp_opt(1_700_000_000 + i64::from(v), 0).unwrap();
        for s in steps {
            match *s {
                Step::Insert { replica, key, name } => {
                    let id = Uuid::from_u128(key + 1);
                    let db = &dbs[replica];
                    if contacts::Entity::find_by_id(id)
                        .one(db)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_none()
                    {
                        contacts::ActiveModel {
                            id: Set(id),
                            name: Set(format!("n{name}")),
                            email: Set(None),
                            last_opened: Set(None),
                            updated_at: Set(stamp(name)),
                        }
                        .insert(db)
                        .await
                        .map_err(|e| e.to_string())?;
                    }
                }
                Step::Update {
                    replica,
                    key,
                    email,
                    value,
                } => {
                    let id = Uuid::from_u128(key + 1);
                    let mut am = contacts::ActiveModel {
                        id: Set(id),
                        ..Default::default()
                    };
                    if email {
                        am.email = Set(Some(format!("e{value}")));
                    } else {
                        am.name = Set(format!("u{value}"));
                    }
                    // No-op when the row is not there.
                    let _ = contacts::Entity::update_many()
                        .set(am)
                        .filter(contacts::Column::Id.eq(id))
                        .exec(&dbs[replica])
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Step::Delete { replica, key } => {
                    contacts::Entity::delete_by_id(Uuid::from_u128(key + 1))
                        .exec(&dbs[replica])
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Step::Sync { replica } => {
                    let r = engines[replica]
                        .sync_now()
                        .await
                        .map_err(|e| e.to_string())?;
                    if r.halted.is_some() || !r.local_errors.is_empty() || !r.rejected.is_empty() {
                        return Err(format!("sync reported problems: {r:?}"));
                    }
                }
                Step::CrashSync { replica, polls } => {
                    crash_after(polls, engines[replica].sync_now()).await;
                    // The process died: its connections with it. Restart it.
                    let (db, engine) = self
                        .start(case, replica, true)
                        .await
                        .map_err(|e| e.to_string())?;
                    engines[replica] = engine;
                    dbs[replica] = db;
                }
            }
        }
        // Final round: everyone syncs twice.
        for _ in 0..2 {
            for e in &engines {
                e.sync_now().await.map_err(|e| e.to_string())?;
            }
        }
        let want = rows(hub).await.map_err(|e| e.to_string())?;
        for (i, db) in dbs.iter().enumerate() {
            let got = rows(db).await.map_err(|e| e.to_string())?;
            if got != want {
                return Err(format!(
                    "replica {i} differs from the hub:\n  replica: {got:?}\n  hub:     {want:?}"
                ));
            }
        }
        for db in dbs {
            db.close().await.map_err(|e| e.to_string())?;
        }
        for i in 0..n {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!(
                    "{}{suffix}",
                    self.dir.join(format!("c{case}-r{i}.db")).display()
                ));
            }
        }
        Ok(())
    }
}

async fn property(hub: TestDb) -> TestResult {
    let cases: u32 = std::env::var("TIDESYNC_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let seed: u64 = match std::env::var("TIDESYNC_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => s,
        None => rand::random(),
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    // Replica files on tmpfs when there is one: the property is about merging,
    // not fsync, and thousands of small databases are created.
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "tidesync-conv-{}-{}",
        hub.dialect.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let world = World {
        dir: dir.clone(),
        hub_url: hub.url.clone(),
        hub_pools: tokio::sync::Mutex::new(Vec::new()),
    };
    let handle = tokio::runtime::Handle::current();
    let hub_db = hub.db.clone();
    let counter = std::sync::atomic::AtomicU64::new(0);
    let result = tokio::task::block_in_place(|| {
        runner.run(&scenario(), |(n, steps)| {
            let case = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            handle
                .block_on(world.run_case(&hub_db, case, n, &steps))
                .map_err(TestCaseError::fail)
        })
    });
    std::fs::remove_dir_all(&dir)?;
    if let Err(e) = result {
        return Err(format!(
            "{} hub: {e}\nreplay with TIDESYNC_PROPTEST_SEED={seed} cargo test --test convergence",
            hub.dialect.name()
        )
        .into());
    }
    eprintln!(
        "{}: {cases} cases converged (seed {seed})",
        hub.dialect.name()
    );
    hub.drop().await
}
