//! The `tidesync-hub` binary as a process: tokens made, listed and
//! revoked on the command line, devices syncing through `serve` over HTTP
//! and HTTPS (each user seeing only their rows), signals, exit codes, and
//! no secret ever printed. The account flow runs on every hub dialect
//! (PostgreSQL and MariaDB when `TIDESYNC_TEST_POSTGRES` /
//! `TIDESYNC_TEST_MYSQL` are set; skipped by name otherwise, a failure
//! when `CI=true`).
// The entities' items are `pub` as SeaORM's derives expect.
#![allow(unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed, Trial};
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, EntityTrait, Schema, Set, Statement};
use sync_http::HttpBackend;
use tidesync::{Error, Replica, ReplicaBuilder, SyncEngine};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_tidesync-hub");

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), BoxError>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

// The root package's test entities and URL helper, shared with its suites.
#[path = "../../tests/common/entities.rs"]
#[allow(dead_code)]
mod entities;
#[path = "../../tests/common/url.rs"]
mod url;

use entities::{labels, notes};
use url::with_database;

/// Tasks: each user's own; a table the hub of some tests lacks.
mod tasks {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "tasks")]
    #[syncable(owner = "owner")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub owner: String,
        pub title: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
}

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let mut trials = Vec::new();
    for dialect in Dialect::ALL {
        trials.push(on_hub(
            dialect,
            "users_sync_their_rows_until_revoked_then_sigterm",
            |hub| Box::pin(users_sync_their_rows_until_revoked_then_sigterm(hub)),
        ));
    }
    for dialect in Dialect::ALL {
        trials.push(on_hub(
            dialect,
            "no_new_tables_serves_only_the_tables_installed_first",
            |hub| Box::pin(no_new_tables_serves_only_the_tables_installed_first(hub)),
        ));
        trials.push(on_hub(
            dialect,
            "existing_tables_are_adopted_only_when_asked",
            |hub| Box::pin(existing_tables_are_adopted_only_when_asked(hub)),
        ));
    }
    trials.push(on_hub(
        Dialect::Sqlite,
        "https_with_a_self_signed_certificate",
        |hub| Box::pin(https_with_a_self_signed_certificate(hub)),
    ));
    trials.push(on_hub(
        Dialect::Sqlite,
        "sigterm_finishes_the_request_in_flight",
        |hub| Box::pin(sigterm_finishes_the_request_in_flight(hub)),
    ));
    trials.push(on_hub(Dialect::Sqlite, "jwts_of_a_shared_secret", |hub| {
        Box::pin(jwts_of_a_shared_secret(hub))
    }));
    trials.push(on_hub(
        Dialect::Sqlite,
        "runtime_errors_exit_1_naming_what_failed",
        |hub| Box::pin(runtime_errors_exit_1_naming_what_failed(hub)),
    ));
    trials.push(Trial::test("cli::usage_errors_exit_2", || {
        usage_errors_exit_2().map_err(|e| Failed::from(e.to_string()))
    }));
    trials.push(Trial::test("cli::help_shows_no_secret", || {
        help_shows_no_secret().map_err(|e| Failed::from(e.to_string()))
    }));
    libtest_mimic::run(&args, trials).exit_code()
}

// ---------------------------------------------------------------------
// Hub databases, one fresh per test.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    const ALL: [Dialect; 3] = [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql];

    fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// The server URL (`Ok(None)` for SQLite), or why there is none.
    fn server_url(self) -> Result<Option<String>, String> {
        let var = match self {
            Dialect::Sqlite => return Ok(None),
            Dialect::Postgres => "TIDESYNC_TEST_POSTGRES",
            Dialect::MySql => "TIDESYNC_TEST_MYSQL",
        };
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => Ok(Some(url)),
            _ => Err(format!("{var} is not set")),
        }
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A fresh hub database, and a temporary folder for the test's files.
struct HubDb {
    dialect: Dialect,
    url: String,
    dir: tempfile::TempDir,
    /// The server's URL and the database's name, to drop it.
    server: Option<(String, String, Dialect)>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl HubDb {
    async fn create(dialect: Dialect, tag: &str) -> Result<HubDb, BoxError> {
        let dir = tempfile::Builder::new().prefix("tidesync-hub-").tempdir()?;
        let Some(base) = dialect.server_url()? else {
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("hub.db").display());
            return Ok(HubDb {
                dialect,
                url,
                dir,
                server: None,
            });
        };
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(20)
            .collect();
        let name = format!(
            "ts_bin_{}_{}_{}",
            tag.to_ascii_lowercase(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = Database::connect(&base).await?;
        let create = match dialect {
            Dialect::MySql => {
                format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            }
            _ => format!("CREATE DATABASE {name}"),
        };
        admin.execute_unprepared(&create).await?;
        admin.close().await?;
        Ok(HubDb {
            dialect,
            url: with_database(&base, &name),
            dir,
            server: Some((base, name, dialect)),
        })
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }
}

async fn drop_database(base: &str, name: &str, dialect: Dialect) -> TestResult {
    let admin = Database::connect(base).await?;
    let sql = match dialect {
        Dialect::Postgres => format!("DROP DATABASE {name} WITH (FORCE)"),
        _ => format!("DROP DATABASE {name}"),
    };
    admin.execute_unprepared(&sql).await?;
    admin.close().await?;
    Ok(())
}

type HubTest = fn(HubDb) -> std::pin::Pin<Box<dyn std::future::Future<Output = TestResult> + Send>>;

/// A trial of `test` on a fresh hub database of `dialect`, named
/// `dialect::name`; without the dialect's server it is ignored with the
/// reason (failed in CI).
fn on_hub(dialect: Dialect, name: &str, test: HubTest) -> Trial {
    let tag = name.to_owned();
    Trial::ignorable_test(format!("{}::{name}", dialect.name()), move || {
        if let Err(reason) = dialect.server_url() {
            if in_ci() {
                return Err(Failed::from(format!(
                    "{reason}, and CI=true requires every dialect"
                )));
            }
            eprintln!("{}::{tag}: skipped: {reason}", dialect.name());
            return Ok(Completion::ignored_with(format!("skipped: {reason}")));
        }
        block_on(async move {
            let hub = HubDb::create(dialect, &tag)
                .await
                .map_err(|e| Failed::from(format!("setup: {e}")))?;
            let server = hub.server.clone();
            let result = test(hub).await;
            // The database is dropped whatever the outcome (the test's
            // server processes are stopped by then).
            if let Some((base, name, dialect)) = server
                && let Err(e) = drop_database(&base, &name, dialect).await
            {
                eprintln!("could not drop the test database {name}: {e}");
            }
            result.map_err(|e| Failed::from(e.to_string()))
        })?;
        Ok(Completion::Completed)
    })
}

/// One runtime for the whole binary, never dropped (see the root suites'
/// `block_on`).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
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

// ---------------------------------------------------------------------
// The binary.

/// Run the binary to completion with `args` (no TIDESYNC_HUB_DB from the
/// environment), `stdin` on its standard input.
fn cli(args: &[&str], stdin: &str) -> Result<Output, BoxError> {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("TIDESYNC_HUB_DB")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !stderr.contains("panicked"),
        "tidesync-hub {args:?} panicked: {stderr}"
    );
    Ok(output)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `tidesync-hub --db DB ARGS...`, which must succeed: its stdout.
fn ok(db: &str, args: &[&str]) -> Result<String, BoxError> {
    let mut all = vec!["--db", db];
    all.extend_from_slice(args);
    let out = cli(&all, "")?;
    ensure!(
        out.status.success(),
        "tidesync-hub {args:?}: {}\n{}",
        out.status,
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// A new token for `user`: the last line of `token add`.
fn token_add(db: &str, user: &str) -> Result<String, BoxError> {
    let out = ok(db, &["token", "add", user])?;
    let token = out.lines().last().unwrap_or("").trim().to_owned();
    ensure!(token.starts_with("tsk_"), "not a token: {out:?}");
    Ok(token)
}

/// A token's id: the part between `tsk_` and the secret.
fn token_id(token: &str) -> &str {
    &token[4..20]
}

fn token_secret(token: &str) -> &str {
    &token[21..]
}

/// A `tidesync-hub serve` process, killed if still running when dropped.
struct Server {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
    /// The thread reading stderr into `stderr`, until the pipe closes.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Start `serve` on a free port of 127.0.0.1 and wait for its
    /// `listening on` line.
    fn start(db: &str, extra: &[&str]) -> Result<Server, BoxError> {
        let mut args = vec!["--db", db, "serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .env_remove("TIDESYNC_HUB_DB")
            // The default filter, as an operator gets it.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = {
            let mut pipe = child.stderr.take().ok_or("no stderr")?;
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = stderr.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            })
        };
        let (lines, listening) = mpsc::channel::<String>();
        {
            let pipe = child.stdout.take().ok_or("no stdout")?;
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut server = Server {
            child,
            url: String::new(),
            stderr,
            reader: Some(reader),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                if let Some(reader) = server.reader.take() {
                    let _ = reader.join();
                }
                return Err(format!(
                    "serve exited ({status}) before listening:\n{}",
                    server.log()
                )
                .into());
            }
            match listening.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        server.url = url.trim().to_owned();
                        return Ok(server);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(e) => {
                    return Err(format!("no `listening on` line ({e}):\n{}", server.log()).into());
                }
            }
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Send `signal` (`TERM`, `INT`) and wait for the exit: its status and
    /// how long it took.
    fn stop(&mut self, signal: &str) -> Result<(ExitStatus, Duration), BoxError> {
        let kill = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?;
        ensure!(kill.success(), "kill -{signal} failed");
        self.stop_wait()
    }

    /// Wait for the exit of a server already signalled.
    fn stop_wait(&mut self) -> Result<(ExitStatus, Duration), BoxError> {
        let started = Instant::now();
        let signal = "TERM";
        loop {
            if let Some(status) = self.child.try_wait()? {
                let took = started.elapsed();
                // Every line it wrote, up to its last, is in the log.
                if let Some(reader) = self.reader.take() {
                    reader.join().map_err(|_| "the stderr reader panicked")?;
                }
                return Ok((status, took));
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "still running 30 s after SIG{signal}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------
// Devices.

/// A device: a SQLite replica of notes and labels syncing through a
/// hub server.
struct Device {
    db: sea_orm::DatabaseConnection,
    engine: SyncEngine,
}

impl Device {
    async fn new(hub: &HubDb, tag: &str, backend: HttpBackend) -> Result<Device, BoxError> {
        Device::of(hub, tag, backend, |b| {
            b.register::<notes::Entity>().register::<labels::Entity>()
        })
        .await
    }

    /// A device of the tables `register` registers.
    async fn of(
        hub: &HubDb,
        tag: &str,
        backend: HttpBackend,
        register: fn(ReplicaBuilder) -> ReplicaBuilder,
    ) -> Result<Device, BoxError> {
        let url = format!(
            "sqlite://{}?mode=rwc",
            hub.path(&format!("{tag}.db")).display()
        );
        let db = Database::connect(&url).await?;
        let replica = register(Replica::builder(db.clone()))
            .create_tables()
            .open()
            .await?;
        Ok(Device {
            db,
            engine: SyncEngine::new(replica, Arc::new(backend)),
        })
    }

    async fn note(&self, owner: &str, body: &str) -> TestResult {
        notes::ActiveModel {
            id: Set(Uuid::new_v4()),
            owner: Set(owner.into()),
            body: Set(body.into()),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    async fn task(&self, owner: &str, title: &str) -> TestResult {
        tasks::ActiveModel {
            id: Set(Uuid::new_v4()),
            owner: Set(owner.into()),
            title: Set(title.into()),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    async fn label(&self, name: &str) -> TestResult {
        labels::ActiveModel {
            id: Set(Uuid::new_v4()),
            name: Set(name.into()),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// A sync that must go through whole.
    async fn sync(&self) -> TestResult {
        let r = self.engine.sync_now().await?;
        ensure!(
            r.halted.is_none() && r.rejected.is_empty() && r.local_errors.is_empty(),
            "sync reported problems: {r:?}"
        );
        Ok(())
    }

    /// The notes as (owner, body), sorted.
    async fn notes(&self) -> Result<Vec<(String, String)>, BoxError> {
        let mut out: Vec<_> = notes::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| (m.owner, m.body))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn labels(&self) -> Result<Vec<String>, BoxError> {
        let mut out: Vec<_> = labels::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| m.name)
            .collect();
        out.sort();
        Ok(out)
    }
}

fn pair(owner: &str, body: &str) -> (String, String) {
    (owner.to_owned(), body.to_owned())
}

/// `GET path` on a plain-HTTP server: the status line and body.
fn http_get(url: &str, path: &str) -> Result<String, BoxError> {
    let addr = url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    Ok(answer)
}

// ---------------------------------------------------------------------
// The tests.

async fn users_sync_their_rows_until_revoked_then_sigterm(hub: HubDb) -> TestResult {
    let db = hub.url.as_str();
    let alice1 = token_add(db, "alice")?;
    let alice2 = token_add(db, "alice")?;
    let bob = token_add(db, "bob")?;
    // The list: ids, users, times; never a secret.
    let list = ok(db, &["token", "list"])?;
    let rows: Vec<&str> = list.lines().skip(1).collect();
    ensure!(rows.len() == 3, "three tokens listed: {list}");
    for (token, user) in [(&alice1, "alice"), (&alice2, "alice"), (&bob, "bob")] {
        ensure!(
            rows.iter()
                .any(|r| r.starts_with(token_id(token)) && r.contains(user)),
            "{user}'s token {} not listed: {list}",
            token_id(token)
        );
        ensure!(
            !list.contains(token_secret(token)),
            "token list prints a secret: {list}"
        );
    }

    let mut server = Server::start(db, &["--policy", "park"])?;
    ensure!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );
    let health = http_get(&server.url, "/health")?;
    ensure!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );

    let a1 = Device::new(&hub, "a1", HttpBackend::new(&server.url, alice1.clone())?).await?;
    let a2 = Device::new(&hub, "a2", HttpBackend::new(&server.url, alice2.clone())?).await?;
    let b1 = Device::new(&hub, "b1", HttpBackend::new(&server.url, bob.clone())?).await?;
    a1.note("alice", "alice's first").await?;
    a1.label("work").await?;
    b1.note("bob", "bob's first").await?;
    b1.label("home").await?;
    for d in [&a1, &b1, &a2, &a1, &b1] {
        d.sync().await?;
    }
    ensure!(
        a2.notes().await? == vec![pair("alice", "alice's first")],
        "alice's second device: {:?}",
        a2.notes().await?
    );
    ensure!(
        b1.notes().await? == vec![pair("bob", "bob's first")],
        "bob sees: {:?}",
        b1.notes().await?
    );
    for d in [&a1, &a2, &b1] {
        ensure!(
            d.labels().await? == vec!["home".to_owned(), "work".to_owned()],
            "shared labels: {:?}",
            d.labels().await?
        );
    }
    // Bob writing alice's note is refused (parked), and alice never sees it.
    b1.note("alice", "forged by bob").await?;
    let r = b1.engine.sync_now().await?;
    ensure!(r.rejected.len() == 1, "the forged note is parked: {r:?}");
    a1.sync().await?;
    ensure!(
        a1.notes().await? == vec![pair("alice", "alice's first")],
        "alice sees: {:?}",
        a1.notes().await?
    );

    // Revoked by id: that device is refused, alice's other one goes on.
    let out = ok(db, &["token", "revoke", token_id(&alice1)])?;
    ensure!(out.trim() == "revoked 1 token", "{out}");
    a1.note("alice", "after revoke").await?;
    match a1.engine.sync_now().await {
        Err(Error::Unauthorized(_)) => {}
        other => return Err(format!("a revoked token synced: {other:?}").into()),
    }
    a2.note("alice", "alice's second").await?;
    a2.sync().await?;
    // Revoked by user: every token of hers.
    let out = ok(db, &["token", "revoke", "alice"])?;
    ensure!(out.trim() == "revoked 1 token", "{out}");
    match a2.engine.sync_now().await {
        Err(Error::Unauthorized(_)) => {}
        other => return Err(format!("a revoked user synced: {other:?}").into()),
    }
    // Nothing left to revoke: exit 1.
    let again = cli(&["--db", db, "token", "revoke", "alice"], "")?;
    ensure!(
        again.status.code() == Some(1) && text(&again.stdout).trim() == "revoked 0 tokens",
        "{:?} {}",
        again.status,
        text(&again.stdout)
    );
    // A whole token, read from stdin.
    let by_stdin = cli(&["--db", db, "token", "revoke", "-"], &format!("{bob}\n"))?;
    ensure!(
        by_stdin.status.success() && text(&by_stdin.stdout).trim() == "revoked 1 token",
        "{:?} {} {}",
        by_stdin.status,
        text(&by_stdin.stdout),
        text(&by_stdin.stderr)
    );
    match b1.engine.sync_now().await {
        Err(Error::Unauthorized(_)) => {}
        other => return Err(format!("bob's revoked token synced: {other:?}").into()),
    }

    // SIGTERM, with the devices' idle connections still open: exit 0, soon.
    let (status, took) = server.stop("TERM")?;
    let log = server.log();
    ensure!(status.success(), "exit after SIGTERM: {status}\n{log}");
    ensure!(
        took < Duration::from_secs(10),
        "SIGTERM took {took:?} to stop the server"
    );
    let product = match hub.dialect {
        Dialect::Sqlite => "serving the SQLite 3.",
        Dialect::Postgres => "serving the PostgreSQL ",
        Dialect::MySql if log.contains("MariaDB") => "serving the MariaDB ",
        Dialect::MySql => "serving the MySQL ",
    };
    for expected in [
        product,
        "plain HTTP",
        "user=alice ",
        "user=bob ",
        "status=401",
        "SIGTERM received",
        "stopped",
    ] {
        ensure!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
    // By default the SQL drivers' per-statement lines are left out (their
    // warnings, such as a slow statement under load, are kept).
    ensure!(
        !log.lines()
            .any(|l| l.contains("sqlx::query") && !l.contains(" WARN ") && !l.contains(" ERROR ")),
        "statements logged by default:\n{log}"
    );
    for token in [&alice1, &alice2, &bob] {
        ensure!(
            !log.contains(token_secret(token)),
            "a token in the log:\n{log}"
        );
    }
    // The hub kept every accepted note, and none of the refused ones.
    let hub_db = Database::connect(db).await?;
    let mut on_hub: Vec<_> = notes::Entity::find()
        .all(&hub_db)
        .await?
        .into_iter()
        .map(|m| (m.owner, m.body))
        .collect();
    on_hub.sort();
    hub_db.close().await?;
    ensure!(
        on_hub
            == vec![
                pair("alice", "alice's first"),
                pair("alice", "alice's second"),
                pair("bob", "bob's first"),
            ],
        "on the hub: {on_hub:?}"
    );
    Ok(())
}

/// A sync that must fail at its install, refused by the hub: the hub's
/// reason.
async fn refused_install(device: &Device) -> Result<String, BoxError> {
    match device.engine.sync_now().await {
        Err(Error::Config(m)) => Ok(m),
        other => Err(format!("the install was not refused: {other:?}").into()),
    }
}

/// The names of the hub database's tables.
async fn tables(hub: &HubDb) -> Result<Vec<String>, BoxError> {
    let sql = match hub.dialect {
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
    let conn = Database::connect(&hub.url).await?;
    let rows = conn
        .query_all_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await;
    conn.close().await?;
    let mut names = rows?
        .iter()
        .map(|r| r.try_get::<String>("", "t"))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    Ok(names)
}

/// Fail unless the hub database holds `table` exactly when `held`.
async fn ensure_table(hub: &HubDb, table: &str, held: bool) -> TestResult {
    let all = tables(hub).await?;
    ensure!(
        all.iter().any(|t| t == table) == held,
        "table {table} {} in the hub database: {all:?}",
        if held { "missing" } else { "created" }
    );
    Ok(())
}

/// The notes on the hub as (owner, body), sorted.
async fn hub_notes(db: &str) -> Result<Vec<(String, String)>, BoxError> {
    let conn = Database::connect(db).await?;
    let found = notes::Entity::find().all(&conn).await;
    conn.close().await?;
    let mut out: Vec<_> = found?.into_iter().map(|m| (m.owner, m.body)).collect();
    out.sort();
    Ok(out)
}

/// `--no-new-tables`: a device's install of a table the hub database lacks
/// is refused whole, creating nothing; the tables an operator installed
/// first (directly, or once through a server without the option) are
/// served.
async fn no_new_tables_serves_only_the_tables_installed_first(hub: HubDb) -> TestResult {
    let db = hub.url.as_str();
    let alice = token_add(db, "alice")?;
    let mut closed = Server::start(db, &["--no-new-tables"])?;
    let a1 = Device::new(&hub, "a1", HttpBackend::new(&closed.url, alice.clone())?).await?;
    a1.note("alice", "written before the install").await?;
    let why = refused_install(&a1).await?;
    ensure!(
        why.contains("no new tables") && why.contains("`notes`"),
        "the refusal: {why}"
    );
    ensure_table(&hub, "notes", false).await?;
    ensure_table(&hub, "labels", false).await?;

    // The operator installs the application's tables directly; the closed
    // server serves them.
    use tidesync::hub::Hub;
    let direct = tidesync::hub::SqlHub::connect(db).await?;
    direct
        .install(&[
            tidesync::table_spec::<notes::Entity>(),
            tidesync::table_spec::<labels::Entity>(),
        ])
        .await?;
    direct.connection().close_by_ref().await?;
    a1.sync().await?;
    ensure!(
        hub_notes(db).await? == vec![pair("alice", "written before the install")],
        "on the hub: {:?}",
        hub_notes(db).await?
    );

    // A device naming one table more is refused whole: not even its notes
    // go through, and `tasks` is not made.
    let with_tasks = |b: ReplicaBuilder| b.register::<notes::Entity>().register::<tasks::Entity>();
    let t1 = Device::of(
        &hub,
        "t1",
        HttpBackend::new(&closed.url, alice.clone())?,
        with_tasks,
    )
    .await?;
    t1.note("alice", "from the tasks app").await?;
    t1.task("alice", "a task").await?;
    let why = refused_install(&t1).await?;
    ensure!(
        why.contains("no new tables") && why.contains("`tasks`"),
        "the refusal: {why}"
    );
    ensure_table(&hub, "tasks", false).await?;
    ensure!(
        hub_notes(db).await?.len() == 1,
        "a refused install pushed: {:?}",
        hub_notes(db).await?
    );

    // Installed once through a server that takes new tables, `tasks` is
    // served by the closed one as well (the record is in the database).
    let mut open = Server::start(db, &[])?;
    let t2 = Device::of(
        &hub,
        "t2",
        HttpBackend::new(&open.url, alice.clone())?,
        with_tasks,
    )
    .await?;
    t2.sync().await?;
    ensure_table(&hub, "tasks", true).await?;
    t1.sync().await?;
    ensure!(
        hub_notes(db).await?
            == vec![
                pair("alice", "from the tasks app"),
                pair("alice", "written before the install"),
            ],
        "on the hub: {:?}",
        hub_notes(db).await?
    );
    let conn = Database::connect(db).await?;
    let on_hub = tasks::Entity::find().all(&conn).await;
    conn.close().await?;
    let on_hub: Vec<_> = on_hub?.into_iter().map(|t| (t.owner, t.title)).collect();
    ensure!(
        on_hub == vec![pair("alice", "a task")],
        "tasks on the hub: {on_hub:?}"
    );

    for (server, closed_to_new) in [(&mut closed, true), (&mut open, false)] {
        let (status, _) = server.stop("TERM")?;
        let log = server.log();
        ensure!(status.success(), "{status}\n{log}");
        ensure!(
            log.contains(", no new tables") == closed_to_new,
            "the startup line of a server {}closed to new tables:\n{log}",
            if closed_to_new { "" } else { "not " }
        );
    }
    Ok(())
}

/// `--adopt-existing-tables`: a table of the hub database that tidesync
/// did not make (the application's own, or one an operator made by hand)
/// is refused to devices, unless the server adopts it; adopted, it is
/// recorded in the hub database and served by every server.
async fn existing_tables_are_adopted_only_when_asked(hub: HubDb) -> TestResult {
    let db = hub.url.as_str();
    // `notes` made by hand in the hub database, with a row of its own.
    {
        let conn = Database::connect(db).await?;
        let schema = Schema::new(conn.get_database_backend());
        conn.execute(&schema.create_table_from_entity(notes::Entity))
            .await?;
        notes::ActiveModel {
            id: Set(Uuid::new_v4()),
            owner: Set("operator".into()),
            body: Set("made by hand".into()),
        }
        .insert(&conn)
        .await?;
        conn.close().await?;
    }
    let by_hand = vec![pair("operator", "made by hand")];
    let alice = token_add(db, "alice")?;
    let only_notes = |b: ReplicaBuilder| b.register::<notes::Entity>();

    let mut plain = Server::start(db, &[])?;
    let a1 = Device::of(
        &hub,
        "a1",
        HttpBackend::new(&plain.url, alice.clone())?,
        only_notes,
    )
    .await?;
    a1.note("alice", "first device").await?;
    let why = refused_install(&a1).await?;
    ensure!(
        why.contains("not one of its synced tables") && why.contains("`notes`"),
        "the refusal: {why}"
    );
    ensure!(
        hub_notes(db).await? == by_hand,
        "a refused install touched the table: {:?}",
        hub_notes(db).await?
    );

    let mut adopting = Server::start(db, &["--adopt-existing-tables"])?;
    let a2 = Device::of(
        &hub,
        "a2",
        HttpBackend::new(&adopting.url, alice.clone())?,
        only_notes,
    )
    .await?;
    a2.note("alice", "second device").await?;
    a2.sync().await?;
    ensure!(
        hub_notes(db).await?
            == vec![
                pair("alice", "second device"),
                pair("operator", "made by hand")
            ],
        "after the adoption: {:?}",
        hub_notes(db).await?
    );
    // The adoption is the hub database's record: the server without the
    // option now serves the table.
    a1.sync().await?;
    a2.sync().await?;
    ensure!(
        hub_notes(db).await?
            == vec![
                pair("alice", "first device"),
                pair("alice", "second device"),
                pair("operator", "made by hand"),
            ],
        "on the hub: {:?}",
        hub_notes(db).await?
    );
    for d in [&a1, &a2] {
        ensure!(
            d.notes().await?
                == vec![
                    pair("alice", "first device"),
                    pair("alice", "second device")
                ],
            "alice's device: {:?}",
            d.notes().await?
        );
    }

    for (server, adopts) in [(&mut plain, false), (&mut adopting, true)] {
        let (status, _) = server.stop("TERM")?;
        let log = server.log();
        ensure!(status.success(), "{status}\n{log}");
        ensure!(
            log.contains(", adopting existing tables") == adopts,
            "the startup line of a server {}adopting tables:\n{log}",
            if adopts { "" } else { "not " }
        );
    }
    Ok(())
}

/// A pull whose body is half sent on a raw connection: the rest is sent by
/// `finish`, which returns the answer's status line.
struct HalfSent {
    conn: std::net::TcpStream,
    rest: Vec<u8>,
}

impl HalfSent {
    fn start(url: &str, token: &str) -> Result<HalfSent, BoxError> {
        let addr = url.trim_start_matches("http://");
        let body = br#"{"cursor": 0, "limit": 10}"#;
        let mut conn = std::net::TcpStream::connect(addr)?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        write!(
            conn,
            "POST /v1/pull HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )?;
        let (first, rest) = body.split_at(body.len() / 2);
        conn.write_all(first)?;
        conn.flush()?;
        Ok(HalfSent {
            conn,
            rest: rest.to_vec(),
        })
    }

    fn finish(mut self) -> Result<String, BoxError> {
        self.conn.write_all(&self.rest)?;
        let mut answer = String::new();
        // Up to the end of the status line is enough.
        let mut reader = BufReader::new(self.conn);
        reader.read_line(&mut answer)?;
        Ok(answer.trim().to_owned())
    }
}

async fn sigterm_finishes_the_request_in_flight(hub: HubDb) -> TestResult {
    let db = hub.url.as_str();
    let token = token_add(db, "alice")?;
    let mut server = Server::start(db, &[])?;
    {
        use tidesync::hub::Hub;
        HttpBackend::new(&server.url, token.clone())?
            .install(&[tidesync::table_spec::<notes::Entity>()])
            .await?;
    }
    let pending = HalfSent::start(&server.url, &token)?;
    // The body is being read when SIGTERM comes.
    std::thread::sleep(Duration::from_millis(300));
    let pid = server.child.id().to_string();
    ensure!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()?
            .success(),
        "kill"
    );
    // New connections are refused once the signal is handled (however
    // slowly a loaded machine gets to it)...
    let signalled = Instant::now();
    while http_get(&server.url, "/health").is_ok() {
        ensure!(
            signalled.elapsed() < Duration::from_secs(10),
            "new connections still served 10 s after SIGTERM:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...while the server waits for the request in flight.
    std::thread::sleep(Duration::from_millis(300));
    ensure!(
        server.child.try_wait()?.is_none(),
        "stopped with a request in flight:\n{}",
        server.log()
    );
    let status = pending.finish()?;
    ensure!(
        status == "HTTP/1.1 200 OK",
        "the request in flight got {status:?}"
    );
    let (exit, took) = server.stop_wait()?;
    ensure!(
        exit.success() && took < Duration::from_secs(10),
        "{exit} after {took:?}:\n{}",
        server.log()
    );

    // A request that never ends holds the exit only for the grace period.
    let mut server = Server::start(db, &["--shutdown-grace", "1"])?;
    let _stuck = HalfSent::start(&server.url, &token)?;
    std::thread::sleep(Duration::from_millis(300));
    let (exit, took) = server.stop("TERM")?;
    ensure!(
        exit.success() && took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{exit} after {took:?}:\n{}",
        server.log()
    );
    ensure!(server.log().contains("stopped anyway"), "{}", server.log());
    Ok(())
}

async fn https_with_a_self_signed_certificate(hub: HubDb) -> TestResult {
    let db = hub.url.as_str();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let cert_pem = cert.cert.pem();
    let (cert_path, key_path) = (hub.path("cert.pem"), hub.path("key.pem"));
    std::fs::write(&cert_path, &cert_pem)?;
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;
    let token = token_add(db, "alice")?;
    let mut server = Server::start(
        db,
        &[
            "--tls-cert",
            &cert_path.display().to_string(),
            "--tls-key",
            &key_path.display().to_string(),
        ],
    )?;
    ensure!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let trusting = |url: &str| {
        HttpBackend::builder(url, token.clone())
            .timeout(Duration::from_secs(20))
            .add_root_certificate(cert_pem.as_bytes())?
            .build()
    };
    let a1 = Device::new(&hub, "a1", trusting(&server.url)?).await?;
    // By name as well as by address.
    let by_name = server.url.replace("127.0.0.1", "localhost");
    let a2 = Device::new(&hub, "a2", trusting(&by_name)?).await?;
    a1.note("alice", "over TLS").await?;
    a1.sync().await?;
    a2.sync().await?;
    ensure!(
        a2.notes().await? == vec![pair("alice", "over TLS")],
        "{:?}",
        a2.notes().await?
    );
    // A device that does not trust the certificate gets nothing.
    let distrusting = Device::new(
        &hub,
        "d",
        HttpBackend::builder(&server.url, token.clone())
            .timeout(Duration::from_secs(20))
            .build()?,
    )
    .await?;
    match distrusting.engine.sync_now().await {
        Err(Error::Offline(m)) => ensure!(!m.contains(&token), "the token in an error: {m}"),
        other => return Err(format!("synced with an untrusted certificate: {other:?}").into()),
    }
    // Nor does plain HTTP on the TLS port.
    let plain = server.url.replace("https://", "http://");
    let p = Device::new(&hub, "p", HttpBackend::new(&plain, token.clone())?).await?;
    ensure!(
        p.engine.sync_now().await.is_err(),
        "plain HTTP answered on the TLS port"
    );
    ensure!(
        !server.log().contains("plain HTTP"),
        "the plain HTTP warning under TLS:\n{}",
        server.log()
    );
    // Ctrl-C stops it as SIGTERM does.
    let (status, took) = server.stop("INT")?;
    ensure!(
        status.success() && took < Duration::from_secs(10),
        "after SIGINT: {status} in {took:?}\n{}",
        server.log()
    );
    ensure!(server.log().contains("SIGINT received"), "{}", server.log());
    Ok(())
}

async fn jwts_of_a_shared_secret(hub: HubDb) -> TestResult {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let db = hub.url.as_str();
    let secret = "a-shared-secret-of-at-least-32-bytes!";
    let secret_path = hub.path("jwt.secret");
    // With the trailing newline of `echo secret > file`.
    std::fs::write(&secret_path, format!("{secret}\n"))?;
    let mut server = Server::start(
        db,
        &[
            "--jwt-hs256-secret-file",
            &secret_path.display().to_string(),
            "--jwt-issuer",
            "https://idp.example",
        ],
    )?;
    let jwt = |sub: &str, iss: &str, key: &str| {
        let exp = chrono::Utc::now().timestamp() + 3600;
        encode(
            &Header::default(),
            &serde_json::json!({"sub": sub, "exp": exp, "iss": iss}),
            &EncodingKey::from_secret(key.as_bytes()),
        )
    };
    let carol = Device::new(
        &hub,
        "carol",
        HttpBackend::new(&server.url, jwt("carol", "https://idp.example", secret)?)?,
    )
    .await?;
    carol.note("carol", "signed in by JWT").await?;
    carol.sync().await?;
    for (what, token) in [
        (
            "another issuer",
            jwt("carol", "https://other.example", secret)?,
        ),
        (
            "another key",
            jwt(
                "carol",
                "https://idp.example",
                "not-the-secret-at-all-0123456789",
            )?,
        ),
    ] {
        let d = Device::new(&hub, "x", HttpBackend::new(&server.url, token)?).await?;
        match d.engine.sync_now().await {
            Err(Error::Unauthorized(_)) => {}
            other => return Err(format!("a JWT of {what} synced: {other:?}").into()),
        }
    }
    let (status, _) = server.stop("TERM")?;
    ensure!(status.success(), "{status}");
    ensure!(
        server.log().contains("HS256 JWTs") && server.log().contains("user=carol "),
        "{}",
        server.log()
    );
    Ok(())
}

async fn runtime_errors_exit_1_naming_what_failed(hub: HubDb) -> TestResult {
    let db = hub.url.as_str();
    // A database server that is not there: the host named, the password not.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = closed.local_addr()?.port();
    drop(closed);
    let unreachable = format!("postgres://hub:hunter2-secret@127.0.0.1:{port}/hub");
    for args in [
        vec!["token", "list"],
        vec!["token", "add", "alice"],
        vec!["serve", "--listen", "127.0.0.1:0"],
    ] {
        let mut all = vec!["--db", unreachable.as_str()];
        all.extend(args.iter().copied());
        let out = cli(&all, "")?;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        ensure!(out.status.code() == Some(1), "{args:?}: {:?}", out.status);
        ensure!(
            stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("hub:***@"),
            "{args:?}: the host is not named: {stderr}"
        );
        ensure!(
            !stderr.contains("hunter2") && !stdout.contains("hunter2"),
            "{args:?}: the password is printed: {stderr}"
        );
    }
    // The same URL in the environment.
    let out = Command::new(BIN)
        .args(["token", "list"])
        .env("TIDESYNC_HUB_DB", &unreachable)
        .output()?;
    ensure!(
        out.status.code() == Some(1) && !text(&out.stderr).contains("hunter2"),
        "{:?} {}",
        out.status,
        text(&out.stderr)
    );

    // Files that are missing or hold no PEM: named, exit 1.
    let missing = hub.path("missing.pem").display().to_string();
    let garbage = hub.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n")?;
    let garbage = garbage.display().to_string();
    for (args, named) in [
        (
            vec![
                "--tls-cert",
                missing.as_str(),
                "--tls-key",
                garbage.as_str(),
            ],
            &missing,
        ),
        (
            vec![
                "--tls-cert",
                garbage.as_str(),
                "--tls-key",
                garbage.as_str(),
            ],
            &garbage,
        ),
        (vec!["--jwt-hs256-secret-file", missing.as_str()], &missing),
        (vec!["--jwt-rs256-public-key", garbage.as_str()], &garbage),
    ] {
        let mut all = vec!["--db", db, "serve", "--listen", "127.0.0.1:0"];
        all.extend(args.iter().copied());
        let out = cli(&all, "")?;
        let stderr = text(&out.stderr);
        ensure!(
            out.status.code() == Some(1) && stderr.contains(named.as_str()),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }

    // An address taken by another server.
    let mut first = Server::start(db, &[])?;
    let taken = first.url.trim_start_matches("http://").to_owned();
    let out = cli(&["--db", db, "serve", "--listen", &taken], "")?;
    ensure!(
        out.status.code() == Some(1) && text(&out.stderr).contains(&taken),
        "{:?} {}",
        out.status,
        text(&out.stderr)
    );
    let (status, _) = first.stop("TERM")?;
    ensure!(status.success(), "{status}");

    // Nothing to revoke.
    for target in ["nobody", "0123456789abcdef"] {
        let out = cli(&["--db", db, "token", "revoke", target], "")?;
        ensure!(
            out.status.code() == Some(1) && text(&out.stdout).trim() == "revoked 0 tokens",
            "{target}: {:?} {}",
            out.status,
            text(&out.stdout)
        );
    }
    let unknown = format!("tsk_0123456789abcdef_{}", "ab".repeat(32));
    let out = cli(&["--db", db, "token", "revoke", &unknown], "")?;
    ensure!(
        out.status.code() == Some(1) && !text(&out.stderr).contains(&unknown[21..]),
        "{:?} {}",
        out.status,
        text(&out.stderr)
    );
    Ok(())
}

fn usage_errors_exit_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("hub.db").display());
    let db = db.as_str();
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--db", db],
        vec!["--db", db, "frobnicate"],
        vec!["serve"],
        vec!["token", "list"],
        vec!["--db", db, "serve", "--tls-cert", "cert.pem"],
        vec!["--db", db, "serve", "--tls-key", "key.pem"],
        vec![
            "--db",
            db,
            "serve",
            "--jwt-hs256-secret-file",
            "a",
            "--jwt-rs256-public-key",
            "b",
        ],
        vec!["--db", db, "serve", "--jwt-issuer", "https://idp.example"],
        vec!["--db", db, "serve", "--jwt-audience", "hub"],
        vec!["--db", db, "serve", "--listen", "nonsense"],
        vec!["--db", db, "serve", "--listen", "127.0.0.1"],
        vec!["--db", db, "serve", "--policy", "ignore"],
        vec!["--db", db, "serve", "--max-body-bytes", "-1"],
        vec!["--db", db, "serve", "--max-body-bytes", "10"],
        vec!["--db", db, "serve", "--max-body-bytes", "lots"],
        vec!["--db", db, "serve", "--shutdown-grace", "soon"],
        vec!["--db", db, "serve", "--unknown-flag"],
        vec![
            "--db",
            db,
            "serve",
            "--no-new-tables",
            "--adopt-existing-tables",
        ],
        vec!["--db", db, "serve", "--no-new-tables", "yes"],
        vec!["--db", "ftp://hub:hunter2@host/hub", "token", "list"],
        vec!["--db", "hub:hunter2@host/hub", "token", "list"],
        vec!["--db", "", "token", "list"],
        vec!["--db", db, "token"],
        vec!["--db", db, "token", "add"],
        vec!["--db", db, "token", "add", ""],
        vec!["--db", db, "token", "add", "a\nb"],
        vec!["--db", db, "token", "revoke"],
        vec!["--db", db, "token", "add", "alice", "bob"],
    ];
    for args in cases {
        let out = cli(&args, "")?;
        let stderr = text(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "{args:?}: exit {:?}, expected 2\n{stderr}",
            out.status
        );
        ensure!(
            stderr.contains("error") || stderr.contains("Usage"),
            "{args:?}: no message: {stderr:?}"
        );
        ensure!(
            out.stdout.is_empty(),
            "{args:?}: stdout {:?}",
            text(&out.stdout)
        );
        ensure!(
            !stderr.contains("hunter2"),
            "{args:?}: the password is printed: {stderr}"
        );
    }
    // None of it created the hub database.
    ensure!(
        !dir.path().join("hub.db").exists(),
        "a usage error touched the database"
    );
    Ok(())
}

fn help_shows_no_secret() -> TestResult {
    for args in [
        vec!["--help"],
        vec!["-h"],
        vec!["serve", "--help"],
        vec!["token", "--help"],
        vec!["token", "add", "--help"],
        vec!["token", "revoke", "--help"],
        vec!["--version"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env("TIDESYNC_HUB_DB", "postgres://hub:hunter2@db/hub")
            .output()?;
        let stdout = text(&out.stdout);
        ensure!(out.status.success(), "{args:?}: {:?}", out.status);
        ensure!(!stdout.is_empty(), "{args:?}: nothing printed");
        ensure!(
            !stdout.contains("hunter2") && !text(&out.stderr).contains("hunter2"),
            "{args:?} shows the URL in the environment: {stdout}"
        );
    }
    let help = text(&Command::new(BIN).args(["serve", "--help"]).output()?.stdout);
    for option in [
        "--listen",
        "--tls-cert",
        "--tls-key",
        "--max-body-bytes",
        "--policy",
        "--share-undeclared",
        "--no-new-tables",
        "--adopt-existing-tables",
        "--jwt-hs256-secret-file",
        "--jwt-rs256-public-key",
        "--jwt-issuer",
        "--jwt-audience",
        "TIDESYNC_HUB_DB",
    ] {
        ensure!(
            help.contains(option),
            "serve --help lacks {option}:\n{help}"
        );
    }
    Ok(())
}
