//! Convergence (invariant 3), as a property: 3 to 5 replicas make random
//! offline inserts, updates (often of the same row and column), deletes and
//! writes of a local-only column, sync in a random interleaving, sometimes
//! crash mid-sync (the sync is cancelled at a random point, rolling back
//! whatever transaction it was in); after a final round of syncs the hub and
//! every replica hold, column by column, exactly the rows a model of the
//! conflict policy predicts.
//!
//! The model: each edit is captured at once and the next edit starts at
//! least [`EDIT_GAP`] later, so every edit has its own millisecond of wall
//! time, and (all replicas sharing this machine's clock) the hybrid logical
//! clock orders the edits as they happened. Per-column last-writer-wins
//! then leaves in each column the value of the latest edit that wrote it,
//! and a row is live when some column was written after its latest delete
//! (`sync_core::merge`: a delete wins unless an update is later). Every
//! edit writes values no other edit writes, so each one changes what it
//! writes. The local-only column (`#[syncable(skip)]` `last_opened`) never
//! leaves its replica: the hub holds NULL, a replica what it wrote there
//! last (or NULL, when the row may have been deleted and brought back by a
//! pull since).
//!
//! `TIDESYNC_PROPTEST_CASES` sets the number of cases per hub dialect
//! and transport (default 100 direct and 40 over HTTP, sized for CI; raise
//! it for a longer hunt). A failing case is shrunk and printed with the seed to
//! replay it: `TIDESYNC_PROPTEST_SEED=<seed> cargo test --test convergence`.
//! At the end each dialect prints how many crash steps cancelled a sync
//! mid-way and how many let it finish; most must be cancelled.
//!
//! The property runs twice per hub dialect: with replicas on the hub
//! database (direct), and with each replica reaching it through a hub
//! server of its own over HTTP (`::http`; a crash drops the replica's
//! requests in flight, and its server with it). A second test,
//! `two_servers_on_one_hub_converge`, has devices sync through two hub
//! servers on one hub database in turn, each sync through the other
//! server, several devices at once: it is about HTTP itself, so it runs
//! once per dialect (named without `::http`). `TIDESYNC_SERVER_ROUNDS`
//! sets its rounds (default 15).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::entities::contacts;
use common::rows::{self, Synced};
use common::{BoxError, Dialect, TestDb, TestResult, run, trial, trial_direct};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rand::Rng;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, ConnectionTrait, Database};
use tidesync::hub::SqlHub;
use tidesync::{Replica, SyncEngine, SyncReport};

fn main() -> std::process::ExitCode {
    common::over_every_transport();
    let mut trials: Vec<_> = Dialect::ALL
        .iter()
        .flat_map(|d| trial(*d, "replicas_converge", |t| Box::pin(property(t))))
        .collect();
    trials.extend(Dialect::ALL.iter().map(|d| {
        trial_direct(*d, "two_servers_on_one_hub_converge", |t| {
            Box::pin(two_servers(t))
        })
    }));
    run(trials)
}

/// Few keys: collisions on the same row and column are common.
const KEYS: u128 = 5;

/// The least time between the end of one edit (its capture) and the start
/// of the next. SQLite's clock, which stamps a write, has millisecond
/// resolution; two milliseconds leave a whole one between any two edits.
const EDIT_GAP: Duration = Duration::from_millis(2);

/// What an update writes.
#[derive(Clone, Copy, Debug)]
enum Field {
    Name,
    Email,
    UpdatedAt,
    NameAndUpdatedAt,
}

#[derive(Clone, Debug)]
enum Step {
    /// Insert the row if this replica does not have it.
    Insert {
        replica: usize,
        key: u128,
        name: u8,
    },
    /// Update the row if this replica has it.
    Update {
        replica: usize,
        key: u128,
        field: Field,
        value: u8,
    },
    /// Delete the row if this replica has it.
    Delete {
        replica: usize,
        key: u128,
    },
    /// Write the local-only column of the row if this replica has it.
    Touch {
        replica: usize,
        key: u128,
    },
    Sync {
        replica: usize,
    },
    /// A sync cancelled at a random point (a crash mid-sync): after
    /// `1 + at/256` of the polls a sync typically takes.
    CrashSync {
        replica: usize,
        at: u8,
    },
}

fn step(replicas: usize) -> impl Strategy<Value = Step> {
    let r = 0..replicas;
    let field = prop_oneof![
        Just(Field::Name),
        Just(Field::Email),
        Just(Field::UpdatedAt),
        Just(Field::NameAndUpdatedAt),
    ];
    prop_oneof![
        3 => (r.clone(), 0..KEYS, any::<u8>()).prop_map(|(replica, key, name)| Step::Insert { replica, key, name }),
        4 => (r.clone(), 0..KEYS, field, any::<u8>())
            .prop_map(|(replica, key, field, value)| Step::Update { replica, key, field, value }),
        1 => (r.clone(), 0..KEYS).prop_map(|(replica, key)| Step::Delete { replica, key }),
        1 => (r.clone(), 0..KEYS).prop_map(|(replica, key)| Step::Touch { replica, key }),
        3 => r.clone().prop_map(|replica| Step::Sync { replica }),
        1 => (r, any::<u8>()).prop_map(|(replica, at)| Step::CrashSync { replica, at }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (3..=5usize).prop_flat_map(|n| (Just(n), prop::collection::vec(step(n), 1..40)))
}

/// The expected replicated state of one row: each synced column's value
/// with the number of the edit that wrote it last, and the latest delete.
#[derive(Clone, Debug, Default)]
struct Expected {
    name: Option<(u64, String)>,
    email: Option<(u64, Option<String>)>,
    updated_at: Option<(u64, DateTimeUtc)>,
    deleted: Option<u64>,
}

impl Expected {
    /// The row's synced columns, or `None` when it is not live: no column
    /// was written after the latest delete.
    fn row(&self) -> Option<Synced> {
        // Every update follows an insert, which writes every column.
        let (Some((n, name)), Some((e, email)), Some((u, updated_at))) =
            (&self.name, &self.email, &self.updated_at)
        else {
            return None;
        };
        let last = *n.max(e).max(u);
        self.deleted.is_none_or(|d| last > d).then(|| Synced {
            name: name.clone(),
            email: email.clone(),
            updated_at: *updated_at,
        })
    }
}

/// A case's model: the edits made so far, in the order they were made.
#[derive(Default)]
struct Model {
    /// Edits made (the number of the next one).
    edits: u64,
    /// When the last edit's capture ended.
    last_edit: Option<Instant>,
    rows: BTreeMap<Uuid, Expected>,
    /// Keys some replica deleted.
    deleted: BTreeSet<Uuid>,
    /// Per replica, the local-only value it wrote last into each row.
    local: Vec<BTreeMap<Uuid, Option<DateTimeUtc>>>,
}

impl Model {
    /// Wait until [`EDIT_GAP`] after the last edit, then number this one.
    /// A sleep never ends early, so the edits' wall times are ordered.
    async fn next_edit(&mut self) -> u64 {
        if let Some(last) = self.last_edit {
            let wait = EDIT_GAP.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        self.edits += 1;
        self.edits
    }

    /// The expected synced rows.
    fn expected(&self) -> BTreeMap<Uuid, Synced> {
        self.rows
            .iter()
            .filter_map(|(k, e)| Some((*k, e.row()?)))
            .collect()
    }
}

/// A distinct timestamp for edit `t` (whole seconds: every dialect holds
/// them exactly).
fn stamp(base: i64, t: u64) -> DateTimeUtc {
    Utc.timestamp_opt(base + t as i64, 0).unwrap()
}

/// Poll `f` only when it is woken, at most `limit` times, then drop it (a
/// crash while it waits there). Returns its output if it finished, and the
/// number of polls.
async fn polled<F: Future>(limit: u32, f: F) -> (Option<F::Output>, u32) {
    let mut f = std::pin::pin!(f);
    let mut polls = 0u32;
    let out = std::future::poll_fn(|cx| {
        if polls == limit {
            return Poll::Ready(None);
        }
        polls += 1;
        f.as_mut().poll(cx).map(Some)
    })
    .await;
    (out, polls)
}

/// Crash steps and the polls of finished syncs, over a whole run.
#[derive(Default)]
struct SyncStats {
    /// Crash steps whose sync was dropped before it finished.
    cancelled: u64,
    /// Crash steps whose sync finished before the crash point.
    completed: u64,
    /// Polls of the most recent finished syncs.
    polls: Vec<u32>,
}

impl SyncStats {
    const KEPT: usize = 101;

    fn finished(&mut self, polls: u32) {
        if self.polls.len() == Self::KEPT {
            self.polls.remove(0);
        }
        self.polls.push(polls);
    }

    /// The median number of polls of the recent finished syncs.
    fn typical(&self) -> u32 {
        if self.polls.len() < 5 {
            return 60;
        }
        let mut p = self.polls.clone();
        p.sort_unstable();
        p[p.len() / 2]
    }
}

/// A sync that finished must have gone through cleanly.
fn check_report(r: &SyncReport) -> Result<(), String> {
    if r.halted.is_some() || !r.local_errors.is_empty() || !r.rejected.is_empty() {
        return Err(format!("sync reported problems: {r:?}"));
    }
    Ok(())
}

struct World {
    dir: std::path::PathBuf,
    hub_url: String,
    /// Each replica slot's own hub connection pool, kept across cases and
    /// replaced when that replica crashes (a process takes its connections
    /// with it).
    hub_pools: tokio::sync::Mutex<Vec<Option<DatabaseConnection>>>,
    stats: Mutex<SyncStats>,
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
        // Over HTTP, a server of its own on that pool (replaced with it).
        let engine =
            SyncEngine::new(replica, common::reach(SqlHub::new(hub)).await?).with_batch_size(3);
        Ok((db, engine))
    }

    /// Empty the hub's tables (one hub database per dialect for all cases).
    /// Only a table that does not exist yet (no sync has installed the hub,
    /// or a cancelled one installed part of it) is passed over; any other
    /// error fails the case.
    async fn reset_hub(&self, hub: &DatabaseConnection) -> Result<(), BoxError> {
        let backend = hub.get_database_backend();
        let q = |name: &str| common::quote(backend, name);
        let mut statements: Vec<String> = [
            "contacts",
            "_tidesync_changes",
            "_tidesync_hub_rows",
            "_ts_hv_contacts",
            "_tidesync_peers",
            "_tidesync_rejected",
            "_tidesync_batches",
        ]
        .iter()
        .map(|t| format!("DELETE FROM {}", q(t)))
        .collect();
        statements.push(format!(
            "UPDATE {} SET {} = '1' WHERE {} = 'next_seq'",
            q("_tidesync_hub_meta"),
            q("value"),
            q("key"),
        ));
        for sql in statements {
            match hub.execute_unprepared(&sql).await {
                Ok(_) => {}
                Err(e) if rows::is_missing_table(&e) => {}
                Err(e) => return Err(format!("resetting the hub: {sql}: {e}").into()),
            }
        }
        Ok(())
    }

    /// A sync to completion, counting its polls.
    async fn sync(&self, engine: &SyncEngine) -> Result<(), String> {
        let (report, polls) = polled(u32::MAX, engine.sync_now()).await;
        let report = report
            .ok_or("a sync without a poll limit stopped")?
            .map_err(|e| e.to_string())?;
        self.stats.lock().unwrap().finished(polls);
        check_report(&report)
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
        let mut model = Model {
            local: vec![BTreeMap::new(); n],
            ..Model::default()
        };
        for s in steps {
            let edited = match *s {
                Step::Insert { replica, key, name } => {
                    let id = Uuid::from_u128(key + 1);
                    let db = &dbs[replica];
                    let t = model.next_edit().await;
                    let absent = contacts::Entity::find_by_id(id)
                        .one(db)
                        .await
                        .map_err(|e| e.to_string())?
                        .is_none();
                    if absent {
                        let m = contacts::Model {
                            id,
                            name: format!("n{name}-{t}"),
                            email: None,
                            last_opened: Some(stamp(1_600_000_000, t)),
                            updated_at: stamp(1_700_000_000, t),
                        };
                        contacts::ActiveModel::from(m.clone())
                            .insert(db)
                            .await
                            .map_err(|e| e.to_string())?;
                        let e = model.rows.entry(id).or_default();
                        e.name = Some((t, m.name));
                        e.email = Some((t, m.email));
                        e.updated_at = Some((t, m.updated_at));
                        model.local[replica].insert(id, m.last_opened);
                    }
                    Some(replica)
                }
                Step::Update {
                    replica,
                    key,
                    field,
                    value,
                } => {
                    let id = Uuid::from_u128(key + 1);
                    let t = model.next_edit().await;
                    let name = format!("u{value}-{t}");
                    let email = Some(format!("e{value}-{t}"));
                    let updated_at = stamp(1_700_000_000, t);
                    let mut am = contacts::ActiveModel {
                        id: Set(id),
                        ..Default::default()
                    };
                    match field {
                        Field::Name => am.name = Set(name.clone()),
                        Field::Email => am.email = Set(email.clone()),
                        Field::UpdatedAt => am.updated_at = Set(updated_at),
                        Field::NameAndUpdatedAt => {
                            am.name = Set(name.clone());
                            am.updated_at = Set(updated_at);
                        }
                    }
                    let updated = contacts::Entity::update_many()
                        .set(am)
                        .filter(contacts::Column::Id.eq(id))
                        .exec(&dbs[replica])
                        .await
                        .map_err(|e| e.to_string())?
                        .rows_affected;
                    if updated == 1 {
                        let e = model.rows.entry(id).or_default();
                        match field {
                            Field::Name => e.name = Some((t, name)),
                            Field::Email => e.email = Some((t, email)),
                            Field::UpdatedAt => e.updated_at = Some((t, updated_at)),
                            Field::NameAndUpdatedAt => {
                                e.name = Some((t, name));
                                e.updated_at = Some((t, updated_at));
                            }
                        }
                    }
                    Some(replica)
                }
                Step::Delete { replica, key } => {
                    let id = Uuid::from_u128(key + 1);
                    let t = model.next_edit().await;
                    let deleted = contacts::Entity::delete_by_id(id)
                        .exec(&dbs[replica])
                        .await
                        .map_err(|e| e.to_string())?
                        .rows_affected;
                    if deleted == 1 {
                        model.rows.entry(id).or_default().deleted = Some(t);
                        model.deleted.insert(id);
                    }
                    Some(replica)
                }
                Step::Touch { replica, key } => {
                    let id = Uuid::from_u128(key + 1);
                    let t = model.next_edit().await;
                    let opened = Some(stamp(1_600_000_000, t));
                    let touched = contacts::Entity::update_many()
                        .col_expr(contacts::Column::LastOpened, Expr::value(opened))
                        .filter(contacts::Column::Id.eq(id))
                        .exec(&dbs[replica])
                        .await
                        .map_err(|e| e.to_string())?
                        .rows_affected;
                    if touched == 1 {
                        model.local[replica].insert(id, opened);
                    }
                    let r = engines[replica]
                        .replica()
                        .capture()
                        .await
                        .map_err(|e| e.to_string())?;
                    if r.captured != 0 {
                        return Err(format!(
                            "a write of the local-only column was captured: {r:?}"
                        ));
                    }
                    model.last_edit = Some(Instant::now());
                    None
                }
                Step::Sync { replica } => {
                    self.sync(&engines[replica]).await?;
                    None
                }
                Step::CrashSync { replica, at } => {
                    let typical = self.stats.lock().unwrap().typical();
                    let limit = 1 + (u32::from(at) * typical) / 256;
                    let (report, polls) = polled(limit, engines[replica].sync_now()).await;
                    match report {
                        Some(report) => {
                            check_report(&report.map_err(|e| e.to_string())?)?;
                            let mut stats = self.stats.lock().unwrap();
                            stats.completed += 1;
                            stats.finished(polls);
                        }
                        None => self.stats.lock().unwrap().cancelled += 1,
                    }
                    // The process died: its connections with it. Restart it.
                    let (db, engine) = self
                        .start(case, replica, true)
                        .await
                        .map_err(|e| e.to_string())?;
                    engines[replica] = engine;
                    dbs[replica] = db;
                    None
                }
            };
            // Every edit is captured at once, so that its change carries
            // its own time.
            if let Some(replica) = edited {
                let r = engines[replica]
                    .replica()
                    .capture()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.rejected.is_empty() {
                    return Err(format!("capture refused a row: {r:?}"));
                }
                model.last_edit = Some(Instant::now());
            }
        }
        // Final round: everyone syncs twice.
        for _ in 0..2 {
            for e in &engines {
                self.sync(e).await?;
            }
        }
        let want = model.expected();
        let hub_rows = rows::contacts(hub).await.map_err(|e| e.to_string())?;
        if rows::synced(&hub_rows) != want {
            return Err(format!(
                "the hub differs from the model:\n{}",
                rows::differences(&rows::synced(&hub_rows), &want, 5)
            ));
        }
        if let Some(m) = hub_rows.values().find(|m| m.last_opened.is_some()) {
            return Err(format!("a local-only value reached the hub: {m:?}"));
        }
        for (i, (db, engine)) in dbs.iter().zip(&engines).enumerate() {
            let got = rows::contacts(db).await.map_err(|e| e.to_string())?;
            if rows::synced(&got) != want {
                return Err(format!(
                    "replica {i} differs from the model:\n{}",
                    rows::differences(&rows::synced(&got), &want, 5)
                ));
            }
            for (id, m) in &got {
                // What this replica wrote there last, if it wrote anything.
                let own = model.local[i].get(id).copied().flatten();
                // A delete may have removed the row here, and a pull brought
                // it back without the local value.
                let ok =
                    m.last_opened == own || (m.last_opened.is_none() && model.deleted.contains(id));
                if !ok {
                    return Err(format!(
                        "replica {i}: local-only column of {id} is {:?}, but this replica wrote {own:?} there last",
                        m.last_opened
                    ));
                }
            }
            let pending = engine
                .replica()
                .pending_count()
                .await
                .map_err(|e| e.to_string())?;
            if pending != 0 {
                return Err(format!(
                    "replica {i}: {pending} changes left to push after the final syncs"
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
    // CI-sized: over HTTP each case costs about twice as much, and the
    // direct cases already cover the merging; HTTP adds the transport.
    let default = match common::transport() {
        common::Transport::Direct => 100,
        _ => 40,
    };
    let cases: u32 = std::env::var("TIDESYNC_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
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
    // One directory per trial: the direct and HTTP trials of a dialect
    // run at once in this process.
    static TRIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = base.join(format!(
        "tidesync-conv-{}-{}-{}",
        hub.dialect.name(),
        std::process::id(),
        TRIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let world = World {
        dir: dir.clone(),
        hub_url: hub.url.clone(),
        hub_pools: tokio::sync::Mutex::new(Vec::new()),
        stats: Mutex::new(SyncStats::default()),
    };
    let handle = tokio::runtime::Handle::current();
    let hub_db = hub.db.clone();
    let counter = std::sync::atomic::AtomicU64::new(0);
    let result = tokio::task::block_in_place(|| {
        runner.run(&scenario(), |(n, steps)| {
            let case = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            handle
                .block_on(common::carry(world.run_case(&hub_db, case, n, &steps)))
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
    let (cancelled, completed, typical) = {
        let s = world.stats.lock().unwrap();
        (s.cancelled, s.completed, s.typical())
    };
    eprintln!(
        "{}: {cases} cases converged (seed {seed}); crash steps: {cancelled} cancelled mid-sync, \
         {completed} let the sync finish (a sync typically takes {typical} polls)",
        hub.dialect.name()
    );
    // Crash points are drawn within a typical sync's polls, so most crashes
    // must land inside the sync; over few crash steps chance decides.
    let crashes = cancelled + completed;
    let dialect = hub.dialect.name();
    hub.drop().await?;
    ensure!(
        crashes < 20 || cancelled * 2 >= crashes,
        "{dialect} hub: only {cancelled} of {crashes} crash steps cancelled the sync mid-way (seed {seed})"
    );
    Ok(())
}

/// What the test knows of a row: its owner (the device that inserted it,
/// the only one that renames or deletes it), its latest name, whether it
/// is shared (every device sets its email; never deleted) and whether it
/// was deleted.
struct Known {
    owner: usize,
    name: String,
    shared: bool,
    deleted: bool,
}

/// Two hub servers on one hub database, devices syncing through them in
/// turn (each sync through the other server than the last), all devices
/// at once: every change is logged once, in its origin's order; the hub
/// holds every row inserted and not deleted, each with its latest name;
/// and every device converges with the hub.
async fn two_servers(hub: TestDb) -> TestResult {
    use common::http::{Balancer, TestServer};
    use sync_http::{HttpBackend, HubServer};
    const DEVICES: usize = 3;
    let rounds: usize = std::env::var("TIDESYNC_SERVER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed = rand::random::<u64>();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let dialect = hub.dialect.name();
    // Both servers start at once on the new hub database.
    let (first, second) = (hub.connect_again().await?, hub.connect_again().await?);
    let (first, second) = tokio::join!(
        HubServer::new(SqlHub::new(first)),
        HubServer::new(SqlHub::new(second))
    );
    let mut servers = Vec::new();
    for server in [first?, second?] {
        servers.push(TestServer::start(server.share_undeclared(true)).await?);
    }
    let mut devices = Vec::new();
    let mut hubs = Vec::new();
    for i in 0..DEVICES {
        // A token from the first server: the second finds it in the hub
        // database too.
        let token = servers[0].token(&format!("user{i}")).await?;
        // Each device behind a balancer of its own, which takes the
        // servers in turn: the device has one backend, as behind a load
        // balancer, and its requests land on either server.
        let balancer = Balancer::start(servers.iter().map(|s| s.url.clone()).collect()).await?;
        if i % 2 == 1 {
            balancer.switch();
        }
        let backend = Arc::new(HttpBackend::new(&balancer.url, token)?);
        let local = TestDb::create(Dialect::Sqlite, &format!("alt{i}")).await?;
        tidesync::create_table::<contacts::Entity, _>(&local.db).await?;
        let replica = Replica::builder(local.db.clone())
            .register::<contacts::Entity>()
            .open()
            .await?;
        let engine = Arc::new(SyncEngine::new(replica, backend).with_batch_size(4));
        devices.push((local, engine));
        hubs.push(balancer);
    }
    let mut known: BTreeMap<Uuid, Known> = BTreeMap::new();
    let result = async {
        for round in 0..rounds {
            for (i, (local, engine)) in devices.iter().enumerate() {
                let db = &local.db;
                for _ in 0..rng.random_range(1..6) {
                    let have: Vec<Uuid> = contacts::Entity::find()
                        .all(db)
                        .await?
                        .into_iter()
                        .map(|m| m.id)
                        .collect();
                    let mine: Vec<Uuid> = have
                        .iter()
                        .filter(|id| known.get(id).is_some_and(|k| k.owner == i && !k.deleted))
                        .copied()
                        .collect();
                    let shared: Vec<Uuid> = have
                        .iter()
                        .filter(|id| known.get(id).is_some_and(|k| k.shared))
                        .copied()
                        .collect();
                    let name = format!("d{i}-r{round}-{}", rng.random::<u32>());
                    match rng.random_range(0..10) {
                        0..4 => {
                            let id = Uuid::now_v7();
                            contacts::ActiveModel {
                                id: Set(id),
                                name: Set(name.clone()),
                                email: Set(None),
                                last_opened: Set(None),
                                updated_at: Set(Utc
                                    .timestamp_opt(1_700_000_000 + round as i64, 0)
                                    .unwrap()),
                            }
                            .insert(db)
                            .await?;
                            known.insert(
                                id,
                                Known {
                                    owner: i,
                                    name,
                                    shared: rng.random_bool(0.5),
                                    deleted: false,
                                },
                            );
                        }
                        4..6 if !mine.is_empty() => {
                            let id = mine[rng.random_range(0..mine.len())];
                            contacts::Entity::update_many()
                                .col_expr(contacts::Column::Name, Expr::value(name.clone()))
                                .filter(contacts::Column::Id.eq(id))
                                .exec(db)
                                .await?;
                            known.get_mut(&id).ok_or("known")?.name = name;
                        }
                        6..9 if !shared.is_empty() => {
                            let id = shared[rng.random_range(0..shared.len())];
                            contacts::Entity::update_many()
                                .col_expr(contacts::Column::Email, Expr::value(name))
                                .filter(contacts::Column::Id.eq(id))
                                .exec(db)
                                .await?;
                        }
                        _ => {
                            let private: Vec<Uuid> = mine
                                .iter()
                                .filter(|id| !known[*id].shared)
                                .copied()
                                .collect();
                            if let Some(id) = private.first() {
                                contacts::Entity::delete_by_id(*id).exec(db).await?;
                                known.get_mut(id).ok_or("known")?.deleted = true;
                            }
                        }
                    }
                }
                engine.replica().capture().await?;
            }
            // Every device syncs at once, each through the other server
            // than its last sync.
            let mut syncs = Vec::new();
            for ((_, engine), balancer) in devices.iter().zip(&hubs) {
                balancer.switch();
                let engine = engine.clone();
                syncs.push(tokio::spawn(async move { engine.sync_now().await }));
            }
            for s in syncs {
                check_report(&s.await??)?;
            }
        }
        // Final rounds, one device at a time.
        for _ in 0..2 {
            for ((_, engine), balancer) in devices.iter().zip(&hubs) {
                balancer.switch();
                check_report(&engine.sync_now().await?)?;
            }
        }
        Ok::<_, BoxError>(())
    }
    .await;
    result.map_err(|e| format!("{dialect} hub, seed {seed}: {e}"))?;

    // Each change once, in its origin's order.
    let by_origin = common::applied_by_origin(&hub.db).await?;
    ensure_eq!(by_origin.len(), DEVICES, "one origin per device");
    for (origin, seqs) in &by_origin {
        ensure!(
            *seqs == (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "origin {origin}: the hub applied sequences {seqs:?}, not each once in order"
        );
    }
    // Nothing lost: every row not deleted, with its owner's latest name.
    let hub_rows = rows::contacts(&hub.db).await?;
    let want: BTreeMap<Uuid, &str> = known
        .iter()
        .filter(|(_, k)| !k.deleted)
        .map(|(id, k)| (*id, k.name.as_str()))
        .collect();
    let got: BTreeMap<Uuid, &str> = hub_rows
        .iter()
        .map(|(id, m)| (*id, m.name.as_str()))
        .collect();
    ensure!(
        got == want,
        "{dialect} hub, seed {seed}: the hub's rows are not the ones written:\n{}",
        rows::differences(&got, &want, 5)
    );
    for (i, (local, engine)) in devices.iter().enumerate() {
        ensure_eq!(engine.replica().pending_count().await?, 0);
        let on_device = rows::contacts(&local.db).await?;
        ensure!(
            rows::synced(&on_device) == rows::synced(&hub_rows),
            "{dialect} hub, seed {seed}: device {i} differs from the hub:\n{}",
            rows::differences(&rows::synced(&on_device), &rows::synced(&hub_rows), 5)
        );
    }
    for (i, h) in hubs.iter().enumerate() {
        let pushes = h.pushes();
        ensure!(
            pushes.iter().all(|n| *n > 0),
            "device {i} pushed through both servers: {pushes:?}"
        );
    }
    eprintln!(
        "{dialect}: {rounds} rounds through two servers, {} changes applied, {} rows (seed {seed})",
        by_origin.values().map(Vec::len).sum::<usize>(),
        want.len()
    );
    drop(hubs);
    for (local, engine) in devices {
        drop(engine);
        local.drop().await?;
    }
    drop(servers);
    hub.drop().await
}
