//! Test harness shared by the integration tests: one fresh database per test
//! on each dialect, and trials that report a dialect without a server as
//! ignored, by name, with the reason (a failure when `CI=true`).
//!
//! A suite whose `main` calls [`over_every_transport`] first runs each of
//! its trials twice: with devices that open the hub database themselves
//! (named `dialect::test`, as before), and with devices that reach it
//! through a hub server over HTTP (`dialect::test::http`). A test makes
//! every hub a device syncs with through [`reach`] (or [`hub_for`]), which
//! wraps the `SqlHub` per the trial's transport; an HTTP trial whose test
//! never reached a hub fails, so that a test that cannot run over HTTP is
//! declared direct-only ([`trial_direct`], [`direct_trials!`]) instead of
//! running twice the same.
#![allow(dead_code, unreachable_pub)]

pub mod block;
pub mod device;
pub mod entities;
pub mod http;
pub mod kill;
pub mod rows;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use libtest_mimic::{Completion, Failed, Trial};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait, Schema};
use tidesync::hub::{Hub, SqlHub};

pub use http::Transport;

/// A test's boxed error.
mod url;
pub use url::with_database;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What a test body returns.
pub type TestResult = Result<(), BoxError>;

/// The three dialects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    pub const ALL: [Dialect; 3] = [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql];

    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// The environment variable with the server URL, if the dialect needs one.
    pub fn env_var(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some("TIDESYNC_TEST_POSTGRES"),
            Dialect::MySql => Some("TIDESYNC_TEST_MYSQL"),
        }
    }

    /// The server URL, `Ok(None)` for SQLite; `Err(reason)` when it is not
    /// configured.
    pub fn server_url(self) -> Result<Option<String>, String> {
        match self.env_var() {
            None => Ok(None),
            Some(var) => match std::env::var(var) {
                Ok(url) if !url.is_empty() => Ok(Some(url)),
                _ => Err(format!("{var} is not set")),
            },
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh database of one dialect, dropped by [`TestDb::drop`].
pub struct TestDb {
    pub dialect: Dialect,
    pub url: String,
    pub db: DatabaseConnection,
    name: String,
    admin_url: Option<String>,
}

/// The seed a worker process was given in `var` (0 when unset).
pub fn env_seed(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A worker process's exit: success, or the error on stderr and failure.
pub fn worker_exit<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

impl TestDb {
    /// Create a fresh, empty database named after `tag`.
    pub async fn create(dialect: Dialect, tag: &str) -> Result<TestDb, BoxError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!("ts_{tag}_{}_{n}", std::process::id());
        match dialect.server_url()? {
            None => {
                let dir = std::env::temp_dir().join("tidesync-tests");
                std::fs::create_dir_all(&dir)?;
                let path = dir.join(format!("{name}.db"));
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let db = Database::connect(&url).await?;
                Ok(TestDb {
                    dialect,
                    url,
                    db,
                    name: path.display().to_string(),
                    admin_url: None,
                })
            }
            Some(base) => {
                let admin = Database::connect(&base).await?;
                // utf8mb4 on MySQL, whatever the server default, so tables
                // created by the tests hold every character.
                let create = match dialect {
                    Dialect::MySql => {
                        format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                    }
                    _ => format!("CREATE DATABASE {name}"),
                };
                admin.execute_unprepared(&create).await?;
                admin.close().await?;
                let url = with_database(&base, &name);
                let db = Database::connect(&url).await?;
                Ok(TestDb {
                    dialect,
                    url,
                    db,
                    name,
                    admin_url: Some(base),
                })
            }
        }
    }

    /// A copy of this SQLite database as a backup makes it (`VACUUM INTO`),
    /// as a new test database named after `tag`: a device restored from
    /// this one's backup, or a copied database file.
    pub async fn copy(&self, tag: &str) -> Result<TestDb, BoxError> {
        if self.dialect != Dialect::Sqlite {
            return Err(format!("copying a {} database", self.dialect.name()).into());
        }
        let copy = TestDb::create(Dialect::Sqlite, tag).await?;
        copy.db.close().await?;
        std::fs::remove_file(&copy.name)?;
        self.db
            .execute_unprepared(&format!("VACUUM INTO '{}'", copy.name.replace('\'', "''")))
            .await?;
        Ok(TestDb {
            db: Database::connect(&copy.url).await?,
            ..copy
        })
    }

    /// The names of this database's tables.
    pub async fn table_names(&self) -> Result<Vec<String>, BoxError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT name AS t FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%'"
            }
            Dialect::Postgres => {
                "SELECT tablename::text AS t FROM pg_tables WHERE schemaname = 'public'"
            }
            Dialect::MySql => {
                "SELECT CAST(table_name AS CHAR) AS t FROM information_schema.tables \
                 WHERE table_schema = DATABASE()"
            }
        };
        let rows = self
            .db
            .query_all_raw(sea_orm::Statement::from_string(self.backend(), sql))
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String>("", "t")?))
            .collect()
    }

    /// Back up every table under the name prefix `prefix` in the same
    /// database (`CREATE TABLE .. AS SELECT`), to restore with
    /// [`TestDb::restore`]: a hub's backup.
    pub async fn back_up(&self, prefix: &str) -> TestResult {
        let q = |t: &str| quote(self.backend(), t);
        for t in self.table_names().await? {
            let copy = format!("{prefix}{t}");
            self.db
                .execute_unprepared(&format!(
                    "CREATE TABLE {} AS SELECT * FROM {}",
                    q(&copy),
                    q(&t)
                ))
                .await?;
        }
        Ok(())
    }

    /// Put every table backed up under `prefix` back as it was then.
    pub async fn restore(&self, prefix: &str) -> TestResult {
        let q = |t: &str| quote(self.backend(), t);
        for t in self.table_names().await? {
            let Some(original) = t.strip_prefix(prefix) else {
                continue;
            };
            self.db
                .execute_unprepared(&format!("DELETE FROM {}", q(original)))
                .await?;
            self.db
                .execute_unprepared(&format!(
                    "INSERT INTO {} SELECT * FROM {}",
                    q(original),
                    q(&t)
                ))
                .await?;
        }
        Ok(())
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Another connection pool to the same database (a "second process").
    pub async fn connect_again(&self) -> Result<DatabaseConnection, BoxError> {
        Ok(Database::connect(&self.url).await?)
    }

    /// Create an entity's table the way an application would.
    pub async fn create_table<E: EntityTrait>(&self, e: E) -> TestResult {
        let schema = Schema::new(self.backend());
        for ty in schema.create_enum_from_entity(e) {
            self.db.execute(&ty).await?;
        }
        self.db.execute(&schema.create_table_from_entity(e)).await?;
        Ok(())
    }

    /// Close the connection and drop the database; errors are returned, not
    /// swallowed.
    pub async fn drop(self) -> TestResult {
        self.db.close().await?;
        match self.admin_url {
            None => {
                for suffix in ["", "-wal", "-shm"] {
                    let p = format!("{}{suffix}", self.name);
                    if std::path::Path::new(&p).exists() {
                        std::fs::remove_file(&p)?;
                    }
                }
            }
            Some(admin) => {
                let admin = Database::connect(&admin).await?;
                let sql = match self.dialect {
                    Dialect::Postgres => format!("DROP DATABASE {} WITH (FORCE)", self.name),
                    _ => format!("DROP DATABASE {}", self.name),
                };
                admin.execute_unprepared(&sql).await?;
                admin.close().await?;
            }
        }
        Ok(())
    }
}

/// A test body over a fresh database.
pub type DbTest = fn(TestDb) -> Pin<Box<dyn Future<Output = TestResult> + Send>>;

/// Run a future to completion on the test binary's runtime.
///
/// One multi-threaded runtime for the whole binary, never dropped. A runtime
/// per trial, dropped at its end while sqlx pools of the trial were still
/// alive, once hung: sqlx 0.9.0's pool maintenance task kept a worker busy
/// during the shutdown and the drop never returned (20 minutes at 100% CPU,
/// seen in `tests/convergence.rs`).
pub fn block_on<F: Future>(f: F) -> F::Output {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime")
        })
        .block_on(f)
}

/// `true` when running in CI, where a missing server is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The transports of this test binary's trials: direct only, unless its
/// `main` called [`over_every_transport`] before making any.
static TRANSPORTS: OnceLock<&'static [Transport]> = OnceLock::new();

fn transports() -> &'static [Transport] {
    TRANSPORTS.get_or_init(|| &[Transport::Direct])
}

/// Run every trial made from now on over each transport: direct (named as
/// before) and over HTTP (named `...::http`). Call it first in `main`.
pub fn over_every_transport() {
    if TRANSPORTS.set(&Transport::ALL).is_err() {
        panic!("over_every_transport() must come before the first trial is made");
    }
}

/// The trial running on this task: its transport, and how many hubs its
/// test reached through it.
struct Current {
    transport: Transport,
    reached: AtomicUsize,
}

tokio::task_local! {
    static CURRENT: Arc<Current>;
}

/// The transport of the trial running on this task.
///
/// # Panics
/// Outside a trial's task: a task spawned by the test, or a future run by
/// `Handle::block_on`, does not inherit it; wrap it in [`carry`].
pub fn transport() -> Transport {
    CURRENT
        .try_with(|c| c.transport)
        .expect("no trial on this task: wrap spawned futures in common::carry")
}

/// `f`, run as part of the current trial (its transport): for a future
/// spawned as a task or run with `Handle::block_on`.
pub fn carry<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let current = CURRENT
        .try_with(Arc::clone)
        .expect("common::carry outside a trial's task");
    CURRENT.scope(current, f)
}

/// The user devices sign in as over HTTP. The suites' tables declare no
/// owners and the servers share them: every user sees every row.
pub const USER: &str = "device";

/// `hub` as a device reaches it in the current trial: itself (direct), or
/// a hub server of its own serving it over HTTP (with the `SqlHub`'s
/// configuration: policy, clock skew), kept running while the returned
/// hub lives. Each device gets its own server on the hub database: the
/// servers of one trial share it as separate processes would.
pub async fn reach(hub: SqlHub) -> Result<Arc<dyn Hub>, BoxError> {
    let transport = transport();
    let _ = CURRENT.try_with(|c| c.reached.fetch_add(1, Ordering::Relaxed));
    transport.reach(hub, USER).await
}

/// A device's hub on the hub database `db` (its own connection pool), as
/// the current trial's transport reaches it.
pub async fn hub_for(db: &TestDb) -> Result<Arc<dyn Hub>, BoxError> {
    reach(SqlHub::new(db.connect_again().await?)).await
}

/// How worker processes of a test reach the hub: the hub database's URL
/// (direct), or over HTTP a hub server's URL and a token. The server runs
/// in the test process, as long as this value: it outlives the workers
/// the test kills.
pub struct WorkerHub {
    /// The hub database's URL, or the server's.
    pub url: String,
    /// The token to sign in with, over HTTP.
    pub token: Option<String>,
    _server: Option<Arc<http::TestServer>>,
}

impl WorkerHub {
    /// The hub on `db` for workers, per the current trial's transport.
    pub async fn start(db: &TestDb) -> Result<WorkerHub, BoxError> {
        match transport() {
            Transport::Direct => Ok(WorkerHub {
                url: db.url.clone(),
                token: None,
                _server: None,
            }),
            Transport::Http => {
                let _ = CURRENT.try_with(|c| c.reached.fetch_add(1, Ordering::Relaxed));
                let hub = SqlHub::new(db.connect_again().await?);
                let server = sync_http::HubServer::new(hub).await?.share_undeclared(true);
                let server = http::TestServer::start(server).await?;
                Ok(WorkerHub {
                    url: server.url.clone(),
                    token: Some(server.token(USER).await?),
                    _server: Some(server),
                })
            }
        }
    }

    /// Worker side: the hub at `url`, a database's or (with a token) a hub
    /// server's.
    pub async fn reach(url: &str, token: Option<String>) -> Result<Arc<dyn Hub>, BoxError> {
        Ok(match token {
            Some(token) => Arc::new(sync_http::HttpBackend::new(url, token)?),
            None => Arc::new(SqlHub::new(Database::connect(url).await?)),
        })
    }
}

/// Run `test`'s body over `transport` and check that a trial over HTTP
/// did reach a hub.
fn run_over<F: Future<Output = TestResult>>(transport: Transport, body: F) -> Result<(), Failed> {
    let current = Arc::new(Current {
        transport,
        reached: AtomicUsize::new(0),
    });
    block_on(CURRENT.scope(current.clone(), body)).map_err(|e| Failed::from(e.to_string()))?;
    if transport == Transport::Http && current.reached.load(Ordering::Relaxed) == 0 {
        return Err(Failed::from(
            "run over HTTP, the test never reached a hub through common::reach: \
             declare it direct-only",
        ));
    }
    Ok(())
}

/// The reason to skip a trial needing the servers of `dialects` when one
/// is not configured; in CI, the failure.
fn missing_server(dialects: &[Dialect]) -> Option<Result<Completion, Failed>> {
    for d in dialects {
        if let Err(reason) = d.server_url() {
            if in_ci() {
                return Some(Err(Failed::from(format!(
                    "{reason}, and CI=true requires every dialect"
                ))));
            }
            return Some(Ok(Completion::ignored_with(format!("skipped: {reason}"))));
        }
    }
    None
}

/// The trials of `test` on `dialect`, one per transport of this binary,
/// named `dialect::name` (direct) and `dialect::name::http`. Without the
/// dialect's server each is reported as ignored with the reason (failed
/// in CI).
pub fn trial(dialect: Dialect, name: &str, test: DbTest) -> Vec<Trial> {
    trial_needing(transports(), dialect, &[], name, test)
}

/// One trial of `test` on `dialect`, direct only (named `dialect::name`):
/// for a test whose point is the SQL hub itself, or that reaches no hub.
pub fn trial_direct(dialect: Dialect, name: &str, test: DbTest) -> Trial {
    trial_needing(&[Transport::Direct], dialect, &[], name, test)
        .pop()
        .expect("one trial")
}

/// One trial of `test` on `dialect` (its database given), direct only,
/// which also needs a PostgreSQL server.
pub fn trial_direct_with_postgres(dialect: Dialect, name: &str, test: DbTest) -> Trial {
    trial_needing(
        &[Transport::Direct],
        dialect,
        &[Dialect::Postgres],
        name,
        test,
    )
    .pop()
    .expect("one trial")
}

/// The trials of `test` on `dialect` (its database given), which also
/// needs a PostgreSQL server: reported as ignored without either (failed
/// in CI).
pub fn trial_with_postgres(dialect: Dialect, name: &str, test: DbTest) -> Vec<Trial> {
    trial_needing(transports(), dialect, &[Dialect::Postgres], name, test)
}

/// The trials of `test` on `dialect` over `transports`, which also need
/// the servers of `also`.
fn trial_needing(
    transports: &[Transport],
    dialect: Dialect,
    also: &'static [Dialect],
    name: &str,
    test: DbTest,
) -> Vec<Trial> {
    transports
        .iter()
        .map(|&transport| {
            let full = format!("{}::{name}{}", dialect.name(), transport.suffix());
            let tag = name.to_owned();
            Trial::ignorable_test(full.clone(), move || {
                let mut needed = vec![dialect];
                needed.extend_from_slice(also);
                if let Some(skip) = missing_server(&needed) {
                    return skip;
                }
                let started = std::time::Instant::now();
                run_over(transport, async move {
                    let db = TestDb::create(dialect, &tag)
                        .await
                        .map_err(|e| format!("setup: {e}"))?;
                    test(db).await
                })?;
                report_time(&full, started);
                Ok(Completion::Completed)
            })
        })
        .collect()
}

/// `test` on every dialect, over each transport of this binary.
pub fn on_every_dialect(name: &str, test: DbTest) -> Vec<Trial> {
    Dialect::ALL
        .iter()
        .flat_map(|d| trial(*d, name, test))
        .collect()
}

/// `test` on every dialect, direct only.
pub fn on_every_dialect_direct(name: &str, test: DbTest) -> Vec<Trial> {
    Dialect::ALL
        .iter()
        .map(|d| trial_direct(*d, name, test))
        .collect()
}

/// With `TIDESYNC_TEST_TIMES` set, print how long a trial took (to find
/// what makes a suite slow).
fn report_time(name: &str, started: std::time::Instant) {
    if std::env::var_os("TIDESYNC_TEST_TIMES").is_some() {
        eprintln!("time {:>8.2}s {name}", started.elapsed().as_secs_f64());
    }
}

/// Run the trials with the standard command-line arguments.
///
/// Unless `--test-threads` says otherwise, trials run on twice as many
/// threads as the machine has cores (`TIDESYNC_TEST_THREADS` sets another
/// number): most of a trial's time is spent waiting for a database server
/// or a hub server, and with one trial per core the cores sit idle.
pub fn run(trials: Vec<Trial>) -> std::process::ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    if args.test_threads.is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        args.test_threads = Some(
            std::env::var("TIDESYNC_TEST_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(2 * cores),
        );
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// The trials of the named tests (`async fn(TestDb) -> TestResult`) on
/// every dialect, named `dialect::test`, over each transport of the binary
/// (`dialect::test::http` over HTTP).
#[macro_export]
macro_rules! trials {
    ($($name:ident),* $(,)?) => {{
        let mut trials = Vec::new();
        $(trials.extend($crate::common::on_every_dialect(stringify!($name), |db| Box::pin($name(db))));)*
        trials
    }};
}

/// The trials of the named tests on every dialect, direct only.
#[macro_export]
macro_rules! direct_trials {
    ($($name:ident),* $(,)?) => {{
        let mut trials = Vec::new();
        $(trials.extend($crate::common::on_every_dialect_direct(stringify!($name), |db| Box::pin($name(db))));)*
        trials
    }};
}

/// Fail the test with a message unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

/// Fail the test unless the two values are equal.
#[macro_export]
macro_rules! ensure_eq {
    ($a:expr, $b:expr $(,)?) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(format!("{} != {}\n  left: {:?}\n right: {:?}", stringify!($a), stringify!($b), a, b).into());
        }
    }};
    ($a:expr, $b:expr, $($msg:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(format!("{}\n  left: {:?}\n right: {:?}", format!($($msg)+), a, b).into());
        }
    }};
}

/// A test over several fresh databases.
pub type MultiDbTest = fn(Vec<TestDb>) -> Pin<Box<dyn Future<Output = TestResult> + Send>>;

/// The trials (one per transport of this binary) over a fresh database on
/// each of `dialects` (in that order), skipped by name when one of their
/// servers is not configured.
pub fn multi_trial(name: &str, dialects: Vec<Dialect>, test: MultiDbTest) -> Vec<Trial> {
    transports()
        .iter()
        .map(|&transport| {
            let tag = name.to_owned();
            let dialects = dialects.clone();
            let full = format!("{name}{}", transport.suffix());
            Trial::ignorable_test(full.clone(), move || {
                if let Some(skip) = missing_server(&dialects) {
                    return skip;
                }
                let started = std::time::Instant::now();
                run_over(transport, async move {
                    let mut dbs = Vec::new();
                    for (i, d) in dialects.iter().enumerate() {
                        let db = TestDb::create(*d, &format!("{tag}{i}"))
                            .await
                            .map_err(|e| format!("setup: {e}"))?;
                        dbs.push(db);
                    }
                    test(dbs).await
                })?;
                report_time(&full, started);
                Ok(Completion::Completed)
            })
        })
        .collect()
}

/// `ident` quoted for the database `kind` (tests write some SQL by hand).
pub fn quote(kind: DbBackend, ident: &str) -> String {
    match kind {
        DbBackend::MySql => format!("`{}`", ident.replace('`', "``")),
        _ => format!("\"{}\"", ident.replace('"', "\"\"")),
    }
}

/// The text tidesync keys a row by in its metadata: the key's typed values
/// as JSON.
pub fn pk_key(values: &[sea_orm::Value]) -> String {
    serde_json::to_string(values).expect("typed values serialise")
}

/// The changes a hub applied, by origin, each origin's sequences in the
/// order of their hub positions, as its batch records hold them (one per
/// push transaction: the first position, then the origin sequence of each
/// change, 8 bytes little-endian).
#[allow(dead_code)]
pub async fn applied_by_origin(
    db: &DatabaseConnection,
) -> Result<std::collections::BTreeMap<String, Vec<u64>>, BoxError> {
    let rows = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT origin, n, seqs FROM _tidesync_batches ORDER BY first_hub",
        ))
        .await?;
    let mut out: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for r in rows {
        let origin: String = r.try_get("", "origin")?;
        let n: i32 = r.try_get("", "n")?;
        let seqs: Vec<u8> = r.try_get("", "seqs")?;
        if seqs.len() != n as usize * 8 {
            return Err(format!("a batch record of {n} changes holds {} bytes", seqs.len()).into());
        }
        out.entry(origin).or_default().extend(
            seqs.chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())),
        );
    }
    Ok(out)
}

/// `SELECT COUNT(*)` of `table`.
pub async fn count_rows(db: &DatabaseConnection, table: &str) -> Result<i64, BoxError> {
    let kind = db.get_database_backend();
    let sql = format!("SELECT COUNT(*) AS n FROM {}", quote(kind, table));
    Ok(db
        .query_one_raw(sea_orm::Statement::from_string(kind, sql))
        .await?
        .ok_or("no count")?
        .try_get("", "n")?)
}

/// Register the column `column` of `table` on the hub `db` (installed, no
/// push yet) with a spec no release reads: the users' rows of `table` then
/// cannot carry their states (see `hub_state_count`), which the hub keeps
/// in version rows alone, as it kept every live row's before hub schema
/// version 6. A spec recorded is never changed, so this lasts.
pub async fn keep_states_in_version_rows(
    db: &DatabaseConnection,
    table: &str,
    column: &str,
) -> Result<(), BoxError> {
    db.execute_unprepared(&format!(
        "INSERT INTO _tidesync_hub_columns (tbl, col, ord, spec) \
         VALUES ('{table}', '{column}', 1, '{{}}')"
    ))
    .await?;
    Ok(())
}

/// How many row states a hub keeps of `table`: its users' rows that carry
/// one (`_tidesync_seq` set: live rows) and its version rows (rows gone,
/// rows their users' rows cannot carry). A row kept in both places counts
/// twice.
pub async fn hub_state_count(db: &DatabaseConnection, table: &str) -> Result<i64, BoxError> {
    let kind = db.get_database_backend();
    let sql = format!(
        "SELECT COUNT(*) AS n FROM {} WHERE {} IS NOT NULL",
        quote(kind, table),
        quote(kind, "_tidesync_seq")
    );
    let live: i64 = db
        .query_one_raw(sea_orm::Statement::from_string(kind, sql))
        .await?
        .ok_or("no count")?
        .try_get("", "n")?;
    Ok(live + count_rows(db, &format!("_ts_hv_{table}")).await?)
}

/// A value of a replica's `_tidesync_meta`, read by hand.
pub async fn read_meta<C: sea_orm::ConnectionTrait>(
    db: &C,
    key: &str,
) -> Result<Option<String>, BoxError> {
    read_meta_of(db, "_tidesync_meta", key).await
}

/// A value of one of tidesync's key/value tables (`_tidesync_meta`, a
/// hub's `_tidesync_hub_access`...), read by hand.
pub async fn read_meta_of<C: sea_orm::ConnectionTrait>(
    db: &C,
    table: &str,
    key: &str,
) -> Result<Option<String>, BoxError> {
    let kind = db.get_database_backend();
    let sql = format!(
        "SELECT {} FROM {table} WHERE {} = '{}'",
        quote(kind, "value"),
        quote(kind, "key"),
        key.replace('\'', "''")
    );
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(kind, sql))
        .await?;
    Ok(row.map(|r| r.try_get_by_index::<String>(0)).transpose()?)
}

/// Set a value of a replica's `_tidesync_meta` by hand (inserted if
/// missing).
pub async fn write_meta<C: sea_orm::ConnectionTrait>(
    db: &C,
    key: &str,
    value: &str,
) -> Result<(), BoxError> {
    let kind = db.get_database_backend();
    let (k, v) = (quote(kind, "key"), quote(kind, "value"));
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    db.execute_unprepared(&format!(
        "DELETE FROM _tidesync_meta WHERE {k} = {}",
        lit(key)
    ))
    .await?;
    db.execute_unprepared(&format!(
        "INSERT INTO _tidesync_meta ({k}, {v}) VALUES ({}, {})",
        lit(key),
        lit(value)
    ))
    .await?;
    Ok(())
}

/// The value of `key` in a key/value metadata table of tidesync
/// (`_tidesync_meta`, `_tidesync_hub_meta`).
pub async fn meta_value(
    db: &DatabaseConnection,
    table: &str,
    key: &str,
) -> Result<String, BoxError> {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
    let q = Query::select()
        .column(Alias::new("value"))
        .from(Alias::new(table))
        .and_where(Expr::col(Alias::new("key")).eq(key))
        .to_owned();
    let row = db
        .query_one(&q)
        .await?
        .ok_or_else(|| format!("no `{key}` in {table}"))?;
    Ok(row.try_get("", "value")?)
}

/// Remove `key` from a key/value metadata table of tidesync.
pub async fn remove_meta(db: &DatabaseConnection, table: &str, key: &str) -> TestResult {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
    let q = Query::delete()
        .from_table(Alias::new(table))
        .and_where(Expr::col(Alias::new("key")).eq(key))
        .to_owned();
    db.execute(&q).await?;
    Ok(())
}

/// Set `key` in a key/value metadata table of tidesync.
pub async fn set_meta(db: &DatabaseConnection, table: &str, key: &str, value: &str) -> TestResult {
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
    let q = Query::update()
        .table(Alias::new(table))
        .value(Alias::new("value"), value)
        .and_where(Expr::col(Alias::new("key")).eq(key))
        .to_owned();
    db.execute(&q).await?;
    Ok(())
}
