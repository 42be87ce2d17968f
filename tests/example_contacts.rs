//! The `contacts` example run as a user would: the built binary, two devices
//! with local SQLite files, and a hub on every dialect; with the default
//! policy (`lww`) and with `--policy manual`, whose conflicts are listed and
//! resolved by hand; and through a hub server (a `HubServer` in this test's
//! process, over the hub database) with two users, each seeing only their
//! own contacts.
//!
//! The test builds the example itself (`cargo build --example contacts`,
//! with this test's cargo, target folder and profile: a no-op when it is
//! fresh), so a binary built from older sources is never run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use common::http::TestServer;
use common::{BoxError, Dialect, TestDb, TestResult, on_every_dialect, run};
use libtest_mimic::Trial;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::Value;
// In an application: `tidesync::http::HubServer` (feature `http-server`);
// the tests use the `sync_http` dev-dependency directly.
use sync_http::HubServer;
use tidesync::hub::SqlHub;
use uuid::Uuid;

fn main() -> std::process::ExitCode {
    let mut trials = on_every_dialect("two_devices_through_the_cli", |hub| {
        Box::pin(two_devices_through_the_cli(hub))
    });
    trials.extend(on_every_dialect("manual_conflict_keep_local", |hub| {
        Box::pin(manual_conflict_resolved_by_hand(hub, "local"))
    }));
    trials.extend(on_every_dialect("manual_conflict_keep_remote", |hub| {
        Box::pin(manual_conflict_resolved_by_hand(hub, "remote"))
    }));
    trials.extend(on_every_dialect("two_users_through_a_hub_server", |hub| {
        Box::pin(two_users_through_a_hub_server(hub))
    }));
    trials.extend(on_every_dialect(
        "hub_server_unreachable_or_token_refused_exits_1",
        |hub| Box::pin(hub_server_unreachable_or_token_refused_exits_1(hub)),
    ));
    trials.extend(on_every_dialect("a_database_from_before_owners", |hub| {
        Box::pin(a_database_from_before_owners(hub))
    }));
    trials.push(Trial::test("bad_input_exits_2", || {
        bad_input_exits_2().map_err(|e| e.to_string().into())
    }));
    trials.push(Trial::test("demo_runs_and_cleans_up", || {
        demo_runs_and_cleans_up().map_err(|e| e.to_string().into())
    }));
    run(trials)
}

/// The example binary, built (once per run of this test) from the current
/// sources.
fn binary() -> Result<PathBuf, BoxError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_example().map_err(|e| e.to_string()))
        .clone()
        .map_err(Into::into)
}

/// `cargo build --example contacts`, run by the cargo running this test
/// (`CARGO`, else `cargo` from `PATH`) with this test's profile and target
/// folder (`CARGO_TARGET_DIR` when set, else the folder holding this test's
/// profile folder), so a fresh example costs nothing and a stale one is
/// rebuilt; the path is the one cargo reports for the artifact.
fn build_example() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    // <target>/<profile>/deps/<this test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the profile folder")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("cannot name the profile folder")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--example", "contacts", "--message-format=json"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        let target = profile_dir
            .parent()
            .ok_or("cannot locate the target folder")?;
        cmd.arg("--target-dir").arg(target);
    }
    // Not the variables cargo set for this test: build scripts that read
    // them would see them change between this build and a plain one, and
    // each would rebuild half the dependency tree.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --example contacts` failed:\n{}",
            text(&out.stderr)
        )
        .into());
    }
    let mut built = None;
    for line in text(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "contacts"
            && msg["target"]["kind"] == serde_json::json!(["example"])
        {
            built = msg["executable"].as_str().map(PathBuf::from);
        }
    }
    let bin = built.ok_or("cargo reported no `contacts` example executable")?;
    ensure!(bin.exists(), "{} does not exist", bin.display());
    Ok(bin)
}

/// A fresh, empty folder for one test's files.
fn scratch(tag: &str) -> Result<PathBuf, BoxError> {
    let dir = std::env::temp_dir().join(format!(
        "tidesync-example-contacts-{}-{tag}",
        std::process::id()
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Run the binary in `cwd` with `args` (and none of its variables from
/// this test's environment).
fn contacts(cwd: &Path, args: &[&str]) -> Result<Output, BoxError> {
    Ok(Command::new(binary()?)
        .args(args)
        .current_dir(cwd)
        .env_remove("CONTACTS_TOKEN")
        .env_remove("CONTACTS_USER")
        .output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fail unless the command exited with `code`.
fn expect_code(out: &Output, code: i32, what: &str) -> TestResult {
    if out.status.code() != Some(code) {
        return Err(format!(
            "{what}: expected exit {code}, got {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// A hub URL of the same dialect that does not answer.
fn unreachable_hub(dialect: Dialect, dir: &Path) -> String {
    match dialect {
        Dialect::Sqlite => format!(
            "sqlite://{}?mode=rw",
            dir.join("no-such-dir").join("hub.db").display()
        ),
        Dialect::Postgres => "postgres://postgres@127.0.0.1:1/hub".into(),
        Dialect::MySql => "mysql://root@127.0.0.1:1/hub".into(),
    }
}

/// A hub server URL that does not answer.
const UNREACHABLE_SERVER: &str = "http://127.0.0.1:1";

/// One device: a local SQLite file, driven through the binary.
#[derive(Clone)]
struct Device {
    name: &'static str,
    dir: PathBuf,
    db: String,
    /// The hub it syncs with.
    hub: String,
    /// Given as `--hub` to the local commands, which must not touch it.
    offline_hub: String,
    /// `--policy`, given to every command when set.
    policy: Option<&'static str>,
    /// `--user` and `--token`, given to every command when set.
    user: Option<String>,
    token: Option<String>,
}

impl Device {
    fn new(name: &'static str, dir: &Path, hub: &str, offline_hub: &str) -> Device {
        Device {
            name,
            dir: dir.to_owned(),
            db: format!(
                "sqlite://{}?mode=rwc",
                dir.join(format!("{name}.db")).display()
            ),
            hub: hub.to_owned(),
            offline_hub: offline_hub.to_owned(),
            policy: None,
            user: None,
            token: None,
        }
    }

    /// A device of `user` syncing through the hub server at `url` with
    /// `token`.
    fn of_user(name: &'static str, dir: &Path, url: &str, user: &str, token: &str) -> Device {
        Device {
            user: Some(user.to_owned()),
            token: Some(token.to_owned()),
            ..Device::new(name, dir, url, UNREACHABLE_SERVER)
        }
    }

    /// The same device with another token.
    fn with_token(&self, token: &str) -> Device {
        Device {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The same device, run with `--policy manual`.
    fn manual(mut self) -> Device {
        self.policy = Some("manual");
        self
    }

    fn run(&self, hub: &str, args: &[&str]) -> Result<Output, BoxError> {
        let mut all = vec!["--db", &self.db, "--hub", hub];
        if let Some(policy) = self.policy {
            all.extend(["--policy", policy]);
        }
        if let Some(user) = &self.user {
            all.extend(["--user", user]);
        }
        if let Some(token) = &self.token {
            all.extend(["--token", token]);
        }
        all.extend_from_slice(args);
        contacts(&self.dir, &all)
    }

    /// A local command (no hub reachable), which must succeed; its stdout.
    fn local(&self, args: &[&str]) -> Result<String, BoxError> {
        let out = self.run(&self.offline_hub, args)?;
        expect_code(&out, 0, &format!("{} {args:?}", self.name))?;
        Ok(text(&out.stdout))
    }

    fn add(&self, args: &[&str]) -> Result<Uuid, BoxError> {
        let mut all = vec!["add"];
        all.extend_from_slice(args);
        let stdout = self.local(&all)?;
        let id = Uuid::parse_str(stdout.trim())
            .map_err(|e| format!("`add` printed {stdout:?}, not an id: {e}"))?;
        ensure_eq!(stdout, format!("{id}\n"), "`add` prints the id alone");
        ensure_eq!(id.get_version_num(), 7, "ids are UUID v7");
        Ok(id)
    }

    /// `sync` with the real hub, which must succeed; its one-line report
    /// and its stderr.
    fn sync_noting(&self) -> Result<(String, String), BoxError> {
        let out = self.run(&self.hub, &["sync"])?;
        expect_code(&out, 0, &format!("{} sync", self.name))?;
        let stdout = text(&out.stdout);
        ensure!(
            stdout.starts_with("pushed ") && stdout.lines().count() == 1,
            "sync prints one report line, got {stdout:?}"
        );
        ensure!(
            stdout.contains(", conflicts "),
            "the report counts conflicts, got {stdout:?}"
        );
        Ok((stdout, text(&out.stderr)))
    }

    /// `sync` with the real hub, which must succeed with nothing on stderr;
    /// its one-line report.
    fn sync(&self) -> Result<String, BoxError> {
        let (stdout, stderr) = self.sync_noting()?;
        ensure!(stderr.is_empty(), "sync reported problems: {stderr}");
        Ok(stdout)
    }

    /// `conflicts --json`, checked for shape.
    fn conflicts(&self) -> Result<Vec<Value>, BoxError> {
        let stdout = self.local(&["conflicts", "--json"])?;
        let rows: Vec<Value> = serde_json::from_str(&stdout)
            .map_err(|e| format!("conflicts --json printed {stdout:?}: {e}"))?;
        for row in &rows {
            let obj = row.as_object().ok_or("a conflict is not an object")?;
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            ensure_eq!(
                keys,
                ["base", "column", "id", "local", "remote", "row", "table"]
            );
            ensure!(row["id"].is_i64(), "a conflict's id is a number: {row}");
        }
        Ok(rows)
    }

    /// `list --json`, checked for shape and order.
    fn list(&self) -> Result<Vec<Value>, BoxError> {
        let stdout = self.local(&["list", "--json"])?;
        let rows: Vec<Value> = serde_json::from_str(&stdout)
            .map_err(|e| format!("list --json printed {stdout:?}: {e}"))?;
        for row in &rows {
            let obj = row.as_object().ok_or("a row is not an object")?;
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            ensure_eq!(keys, ["email", "id", "name", "phone"]);
        }
        let order: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r["name"].to_string(), r["id"].to_string()))
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        ensure_eq!(order, sorted, "list is sorted by name then id");
        Ok(rows)
    }
}

/// The row of `id` in `rows`, if any.
fn row(rows: &[Value], id: Uuid) -> Option<&Value> {
    rows.iter().find(|r| r["id"] == id.to_string())
}

/// The hub's `contacts.email` values.
async fn hub_emails(hub: &TestDb) -> Result<Vec<Option<String>>, BoxError> {
    let rows = hub
        .db
        .query_all_raw(Statement::from_string(
            hub.backend(),
            "SELECT email FROM contacts",
        ))
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r.try_get("", "email")?);
    }
    Ok(out)
}

/// The hub's contacts table in the shape and order of `list --json`.
async fn hub_rows(hub: &TestDb) -> Result<Vec<Value>, BoxError> {
    let rows = hub
        .db
        .query_all_raw(Statement::from_string(
            hub.backend(),
            "SELECT id, name, email, phone FROM contacts",
        ))
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(serde_json::json!({
            "id": r.try_get::<Uuid>("", "id")?.to_string(),
            "name": r.try_get::<String>("", "name")?,
            "email": r.try_get::<Option<String>>("", "email")?,
            "phone": r.try_get::<Option<String>>("", "phone")?,
        }));
    }
    out.sort_by_key(|r| (r["name"].to_string(), r["id"].to_string()));
    Ok(out)
}

async fn two_devices_through_the_cli(hub: TestDb) -> TestResult {
    if let Err(e) = binary() {
        hub.drop().await?;
        return Err(e);
    }
    let dir = scratch(hub.dialect.name())?;
    let offline = unreachable_hub(hub.dialect, &dir);
    let a = Device::new("a", &dir, &hub.url, &offline);
    let b = Device::new("b", &dir, &hub.url, &offline);

    // Added on A, reaches B.
    let ada = a.add(&["Ada Lovelace", "--email", "ada@example.org"])?;
    ensure!(a.sync()?.starts_with("pushed 1,"), "A pushes its add");
    b.sync()?;
    let on_b = b.list()?;
    ensure_eq!(
        on_b,
        vec![serde_json::json!({
            "id": ada.to_string(), "name": "Ada Lovelace",
            "email": "ada@example.org", "phone": null,
        })]
    );

    // Offline: both edit the same contact, each adds one.
    a.local(&["edit", &ada.to_string(), "--phone", "+44 20 7946 0000"])?;
    b.local(&["edit", &ada.to_string(), "--email", "ada@engine.org"])?;
    let grace = a.add(&["Grace Hopper"])?;
    let edsger = b.add(&["Edsger Dijkstra", "--phone", "+31 40 000"])?;
    a.sync()?;
    b.sync()?;
    a.sync()?;
    let (on_a, on_b) = (a.list()?, b.list()?);
    ensure_eq!(on_a, on_b, "A and B converge");
    ensure_eq!(on_a.len(), 3);
    let ada_row = row(&on_a, ada).ok_or("Ada is missing")?;
    ensure_eq!(ada_row["phone"], "+44 20 7946 0000", "A's edit survives");
    ensure_eq!(ada_row["email"], "ada@engine.org", "B's edit survives");
    ensure!(row(&on_a, edsger).is_some(), "B's add reached A");
    ensure_eq!(hub_rows(&hub).await?, on_a, "the hub's contacts table");

    // Deleted on B, gone everywhere.
    b.local(&["delete", &ada.to_string()])?;
    b.sync()?;
    a.sync()?;
    let (on_a, on_b) = (a.list()?, b.list()?);
    ensure_eq!(on_a, on_b, "A and B converge after the delete");
    ensure!(row(&on_a, ada).is_none(), "the delete reached A");
    ensure_eq!(hub_rows(&hub).await?, on_a, "the hub's contacts table");

    // The hub unreachable: sync exits 1, the edit stays queued.
    a.local(&["edit", &grace.to_string(), "--phone", "+1 202 555 0100"])?;
    let out = a.run(&offline, &["sync"])?;
    expect_code(&out, 1, "sync with an unreachable hub")?;
    let stderr = text(&out.stderr);
    ensure!(
        out.stdout.is_empty() && stderr.contains("unreachable") && stderr.lines().count() == 1,
        "one line on stderr, nothing on stdout; got {stderr:?}"
    );
    ensure!(
        a.sync()?.starts_with("pushed 1,"),
        "the queued edit goes out on the next sync"
    );
    b.sync()?;
    let on_b = b.list()?;
    ensure_eq!(on_b, a.list()?);
    ensure_eq!(
        row(&on_b, grace).ok_or("Grace is missing on B")?["phone"],
        "+1 202 555 0100"
    );
    ensure_eq!(hub_rows(&hub).await?, on_b, "the hub's contacts table");

    std::fs::remove_dir_all(&dir)?;
    hub.drop().await
}

/// `--policy manual`: A and B change the same contact's email offline; B,
/// syncing second, gets the conflict, lists it, resolves it keeping `keep`
/// (`local` or `remote`), and both devices and the hub converge on that
/// value.
async fn manual_conflict_resolved_by_hand(hub: TestDb, keep: &'static str) -> TestResult {
    if let Err(e) = binary() {
        hub.drop().await?;
        return Err(e);
    }
    let dir = scratch(&format!("{}-keep-{keep}", hub.dialect.name()))?;
    let offline = unreachable_hub(hub.dialect, &dir);
    let a = Device::new("a", &dir, &hub.url, &offline).manual();
    let b = Device::new("b", &dir, &hub.url, &offline).manual();
    let (base, on_laptop, on_phone) = ("ada@example.org", "ada@laptop.org", "ada@phone.org");

    let ada = a.add(&["Ada Lovelace", "--email", base])?;
    a.sync()?;
    b.sync()?;
    ensure_eq!(b.list()?, a.list()?, "B has A's contact");

    // Offline: both change the email; B also sets the phone.
    a.local(&["edit", &ada.to_string(), "--email", on_laptop])?;
    b.local(&[
        "edit",
        &ada.to_string(),
        "--email",
        on_phone,
        "--phone",
        "+44 20 7946 0000",
    ])?;
    let report = a.sync()?;
    ensure!(
        report.starts_with("pushed 1,") && report.contains(", conflicts 0,"),
        "A syncs first, without conflict: {report:?}"
    );
    let (report, stderr) = b.sync_noting()?;
    ensure!(
        report.starts_with("pushed 1,") && report.contains(", conflicts 1,"),
        "B syncs second and reports one conflict: {report:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    ensure_eq!(lines.len(), 2, "one line per conflict and a hint: {stderr}");
    for needle in [
        "contacts".to_owned(),
        ada.to_string(),
        "email".into(),
        format!("local \"{on_phone}\""),
        format!("remote \"{on_laptop}\""),
    ] {
        ensure!(
            lines[0].contains(&needle),
            "the conflict line names {needle}: {stderr}"
        );
    }
    ensure!(
        lines[1].contains("conflicts") && lines[1].contains("resolve"),
        "a hint to run `conflicts` and `resolve`: {stderr}"
    );

    // Only B holds it, with base, local and remote.
    ensure_eq!(a.conflicts()?, Vec::<Value>::new(), "A holds no conflict");
    let held = b.conflicts()?;
    ensure_eq!(held.len(), 1, "B holds one conflict: {held:?}");
    let id = held[0]["id"].as_i64().ok_or("the id is not a number")?;
    ensure_eq!(
        held[0],
        serde_json::json!({
            "id": id, "table": "contacts", "row": ada.to_string(), "column": "email",
            "base": base, "local": on_phone, "remote": on_laptop,
        })
    );
    let table = b.local(&["conflicts"])?;
    ensure!(
        table.lines().count() == 2
            && table.starts_with("id ")
            && [on_phone, on_laptop, "email"]
                .iter()
                .all(|v| table.contains(v)),
        "conflicts without --json prints a table: {table:?}"
    );

    // The rest of B's edit went through; A keeps its email meanwhile.
    a.sync()?;
    let on_a = a.list()?;
    let row_a = row(&on_a, ada).ok_or("Ada is missing on A")?;
    ensure_eq!(row_a["phone"], "+44 20 7946 0000", "B's phone reached A");
    ensure_eq!(row_a["email"], on_laptop, "B's held email did not");
    ensure_eq!(hub_emails(&hub).await?, vec![Some(on_laptop.to_owned())]);

    // Resolved offline on B.
    let chosen = if keep == "local" { on_phone } else { on_laptop };
    let out = b.local(&["resolve", &id.to_string(), "--keep", keep])?;
    ensure!(
        out.contains(&format!("conflict {id} resolved")) && out.contains(chosen),
        "resolve says what it kept: {out:?}"
    );
    ensure_eq!(b.conflicts()?, Vec::<Value>::new(), "no conflict left on B");
    let on_b = b.list()?;
    ensure_eq!(
        row(&on_b, ada).ok_or("Ada is missing on B")?["email"],
        chosen,
        "the resolution is written locally at once"
    );
    let again = b.run(&offline, &["resolve", &id.to_string(), "--keep", keep])?;
    expect_code(&again, 2, "resolving a conflict twice")?;

    let report = b.sync()?;
    let pushed = if keep == "local" { 1 } else { 0 };
    ensure!(
        report.starts_with(&format!("pushed {pushed},")),
        "keeping local sends the value, taking remote sends nothing: {report:?}"
    );
    a.sync()?;
    let (on_a, on_b) = (a.list()?, b.list()?);
    ensure_eq!(on_a, on_b, "A and B converge");
    ensure_eq!(
        on_a,
        vec![serde_json::json!({
            "id": ada.to_string(), "name": "Ada Lovelace",
            "email": chosen, "phone": "+44 20 7946 0000",
        })]
    );
    ensure_eq!(hub_emails(&hub).await?, vec![Some(chosen.to_owned())]);
    ensure_eq!(a.conflicts()?, Vec::<Value>::new(), "A holds no conflict");

    std::fs::remove_dir_all(&dir)?;
    hub.drop().await
}

/// A hub server on `hub`'s database, in this process.
async fn serve(hub: &TestDb) -> Result<Arc<TestServer>, BoxError> {
    let sql = SqlHub::new(hub.connect_again().await?);
    TestServer::start(HubServer::new(sql).await?).await
}

/// The hub's contacts as (owner, name), sorted.
async fn hub_owners(hub: &TestDb) -> Result<Vec<(String, String)>, BoxError> {
    let rows = hub
        .db
        .query_all_raw(Statement::from_string(
            hub.backend(),
            "SELECT owner, name FROM contacts",
        ))
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let owner: Option<String> = r.try_get("", "owner")?;
        out.push((owner.unwrap_or_default(), r.try_get("", "name")?));
    }
    out.sort();
    Ok(out)
}

fn owned(owner: &str, name: &str) -> (String, String) {
    (owner.to_owned(), name.to_owned())
}

/// The names of `list --json`'s rows, in its order.
fn names(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| r["name"].as_str())
        .map(str::to_owned)
        .collect()
}

/// Through a hub server: alice with two devices, bob with two; each
/// user's devices converge and hold none of the other user's contacts.
async fn two_users_through_a_hub_server(hub: TestDb) -> TestResult {
    if let Err(e) = binary() {
        hub.drop().await?;
        return Err(e);
    }
    let dir = scratch(&format!("{}-two-users", hub.dialect.name()))?;
    let server = serve(&hub).await?;
    let url = server.url.clone();
    let token = |user: &'static str| {
        let server = server.clone();
        async move { server.token(user).await }
    };
    let a1 = Device::of_user("alice-laptop", &dir, &url, "alice", &token("alice").await?);
    let a2 = Device::of_user("alice-phone", &dir, &url, "alice", &token("alice").await?);
    let b1 = Device::of_user("bob-laptop", &dir, &url, "bob", &token("bob").await?);

    let ada = a1.add(&["Ada Lovelace", "--email", "ada@example.org"])?;
    let alan = b1.add(&["Alan Turing"])?;
    ensure!(a1.sync()?.starts_with("pushed 1,"), "alice's laptop pushes");
    ensure!(b1.sync()?.starts_with("pushed 1,"), "bob's laptop pushes");
    a2.sync()?;
    ensure_eq!(a2.list()?, a1.list()?, "alice's phone has her contact");
    ensure_eq!(names(&a2.list()?), ["Ada Lovelace"], "and none of bob's");
    ensure_eq!(
        names(&b1.list()?),
        ["Alan Turing"],
        "bob has none of alice's"
    );

    // Offline: alice's two devices edit Ada, her phone adds a contact; bob
    // edits Alan and adds one.
    a1.local(&["edit", &ada.to_string(), "--phone", "+44 20 7946 0000"])?;
    a2.local(&["edit", &ada.to_string(), "--email", "ada@engine.org"])?;
    let grace = a2.add(&["Grace Hopper"])?;
    b1.local(&["edit", &alan.to_string(), "--phone", "+44 161 000 0000"])?;
    b1.add(&["Edsger Dijkstra"])?;
    a1.sync()?;
    b1.sync()?;
    a2.sync()?;
    a1.sync()?;
    let (on_a1, on_b1) = (a1.list()?, b1.list()?);
    ensure_eq!(on_a1, a2.list()?, "alice's devices converge");
    ensure_eq!(names(&on_a1), ["Ada Lovelace", "Grace Hopper"]);
    let ada_row = row(&on_a1, ada).ok_or("Ada is missing")?;
    ensure_eq!(ada_row["phone"], "+44 20 7946 0000", "the laptop's edit");
    ensure_eq!(ada_row["email"], "ada@engine.org", "the phone's edit");
    ensure_eq!(names(&on_b1), ["Alan Turing", "Edsger Dijkstra"]);
    ensure_eq!(
        row(&on_b1, alan).ok_or("Alan is missing")?["phone"],
        "+44 161 000 0000"
    );
    ensure_eq!(
        hub_owners(&hub).await?,
        vec![
            owned("alice", "Ada Lovelace"),
            owned("alice", "Grace Hopper"),
            owned("bob", "Alan Turing"),
            owned("bob", "Edsger Dijkstra"),
        ],
        "the hub holds every contact with its owner"
    );

    // A new device of bob's loads his contacts only.
    let b2 = Device::of_user("bob-phone", &dir, &url, "bob", &token("bob").await?);
    b2.sync()?;
    ensure_eq!(
        b2.list()?,
        on_b1,
        "bob's new device converges with his laptop"
    );

    // A delete reaches alice's other device.
    a2.local(&["delete", &grace.to_string()])?;
    a2.sync()?;
    a1.sync()?;
    ensure_eq!(
        names(&a1.list()?),
        ["Ada Lovelace"],
        "the delete reached the laptop"
    );

    // Bob's token with `--user alice`: the server refuses the contact
    // (this device's changes halt there), and nobody gets it.
    let wrong = Device::of_user("wrong-user", &dir, &url, "alice", &token("bob").await?);
    wrong.add(&["Eve"])?;
    let (report, stderr) = wrong.sync_noting()?;
    ensure!(
        report.contains("halted") && stderr.contains("another user"),
        "a contact of another user is refused: {report:?} {stderr:?}"
    );
    a1.sync()?;
    b1.sync()?;
    ensure!(
        hub_owners(&hub)
            .await?
            .iter()
            .all(|(_, name)| name != "Eve")
            && !names(&a1.list()?).iter().any(|n| n == "Eve")
            && !names(&b1.list()?).iter().any(|n| n == "Eve"),
        "the refused contact is on no device and not on the hub"
    );

    // A device's database holds one user's contacts.
    let bob_on_alices = Device {
        user: Some("bob".into()),
        ..a1.clone()
    };
    let out = bob_on_alices.run(UNREACHABLE_SERVER, &["list"])?;
    expect_code(&out, 2, "bob on alice's database")?;
    ensure!(
        text(&out.stderr).contains("contacts of `alice`"),
        "the refusal names the database's user: {}",
        text(&out.stderr)
    );

    drop(server);
    std::fs::remove_dir_all(&dir)?;
    hub.drop().await
}

/// `sync` failed with exit 1, nothing on stdout and one line on stderr
/// saying `why`, that the edit stays queued, and not `secret`.
fn expect_exit_1(out: &Output, why: &str, secret: &str, what: &str) -> TestResult {
    expect_code(out, 1, what)?;
    let stderr = text(&out.stderr);
    ensure!(
        out.stdout.is_empty()
            && stderr.lines().count() == 1
            && stderr.contains(why)
            && stderr.contains("1 local change(s) stay queued"),
        "{what}: one line on stderr saying {why:?} and that the edit stays queued, \
         nothing on stdout; got {stderr:?}"
    );
    ensure!(
        !stderr.contains(secret),
        "{what}: the token is not printed: {stderr:?}"
    );
    Ok(())
}

/// Through a hub server, `sync` exits 1 with the reason when the server
/// does not answer or refuses the token (wrong, malformed, revoked), and
/// the edit goes out on the next sync with a valid one.
async fn hub_server_unreachable_or_token_refused_exits_1(hub: TestDb) -> TestResult {
    if let Err(e) = binary() {
        hub.drop().await?;
        return Err(e);
    }
    let dir = scratch(&format!("{}-refused", hub.dialect.name()))?;
    let server = serve(&hub).await?;
    let url = server.url.clone();
    let token = server.token("alice").await?;
    let a = Device::of_user("a", &dir, &url, "alice", &token);
    let ada = a.add(&["Ada Lovelace"])?;
    ensure!(a.sync()?.starts_with("pushed 1,"), "the first sync pushes");

    a.local(&["edit", &ada.to_string(), "--phone", "+44 20 7946 0000"])?;
    let unknown = format!("tsk_0123456789abcdef_{}", "ab".repeat(32));
    let revoked = server.token("alice").await?;
    ensure!(
        a.with_token(&revoked).sync()?.starts_with("pushed 1,"),
        "a second token of alice's works until it is revoked"
    );
    a.local(&["edit", &ada.to_string(), "--phone", "+44 20 7946 0001"])?;
    ensure_eq!(server.server.tokens().revoke(&revoked).await?, 1);
    for (device, hub_url, why, secret, what) in [
        (
            a.with_token(&unknown),
            &url,
            "refused the token",
            unknown.as_str(),
            "a wrong token",
        ),
        (
            a.with_token("nonsense"),
            &url,
            "refused the token",
            "nonsense",
            "a malformed token",
        ),
        (
            a.with_token(&revoked),
            &url,
            "refused the token",
            revoked.as_str(),
            "a revoked token",
        ),
        (
            a.clone(),
            &UNREACHABLE_SERVER.to_owned(),
            "unreachable",
            token.as_str(),
            "no server",
        ),
    ] {
        let out = device.run(hub_url, &["sync"])?;
        expect_exit_1(&out, why, secret, what)?;
    }

    // The user and token may come from the environment instead.
    let out = Command::new(binary()?)
        .args(["--db", &a.db, "--hub", &url, "sync"])
        .current_dir(&dir)
        .env("CONTACTS_USER", "alice")
        .env("CONTACTS_TOKEN", &token)
        .output()?;
    expect_code(&out, 0, "sync with CONTACTS_USER and CONTACTS_TOKEN")?;
    ensure!(
        text(&out.stdout).starts_with("pushed 1,"),
        "the queued edit goes out with a valid token: {}",
        text(&out.stdout)
    );

    // The server stops: unreachable, the edit stays queued.
    a.local(&["edit", &ada.to_string(), "--phone", "+44 20 7946 0002"])?;
    drop(server);
    let out = a.run(&url, &["sync"])?;
    expect_exit_1(&out, "unreachable", &token, "a stopped server")?;

    std::fs::remove_dir_all(&dir)?;
    hub.drop().await
}

/// The example's `contacts` entity before contacts had owners: what a
/// database made by that release holds.
mod contacts_before_owners {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "contacts")]
    #[syncable(conflict = "lww")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
        pub email: Option<String>,
        pub phone: Option<String>,
        #[syncable(skip)]
        pub updated_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}
}

/// A device database and a hub made before contacts had owners (one
/// contact synced, one queued) keep working: the program adds the column,
/// gives the contacts to the device's user, and `sync` sends that.
async fn a_database_from_before_owners(hub: TestDb) -> TestResult {
    use contacts_before_owners as old;
    use sea_orm::{ActiveModelTrait, Database, Schema, Set};

    if let Err(e) = binary() {
        hub.drop().await?;
        return Err(e);
    }
    let dir = scratch(&format!("{}-before-owners", hub.dialect.name()))?;
    let offline = unreachable_hub(hub.dialect, &dir);
    let a = Device::new("a", &dir, &hub.url, &offline);
    let b = Device::new("b", &dir, &hub.url, &offline);

    // What the earlier release did: its table, a synced contact and a
    // queued one.
    let db = Database::connect(&a.db).await?;
    let mut table = Schema::new(db.get_database_backend()).create_table_from_entity(old::Entity);
    db.execute(table.if_not_exists()).await?;
    let replica = tidesync::Replica::builder(db.clone())
        .register::<old::Entity>()
        .open()
        .await?;
    let contact = |name: &str| old::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name.into()),
        email: Set(None),
        phone: Set(None),
        updated_at: Set(None),
    };
    contact("Ada Lovelace").insert(&db).await?;
    let engine =
        tidesync::SyncEngine::new(replica, Arc::new(SqlHub::new(hub.connect_again().await?)));
    ensure_eq!(
        engine.sync_now().await?.pushed,
        1,
        "the earlier release syncs"
    );
    contact("Grace Hopper").insert(&db).await?;
    drop(engine);
    db.close().await?;

    ensure_eq!(
        names(&a.list()?),
        ["Ada Lovelace", "Grace Hopper"],
        "the database opens"
    );
    ensure!(
        a.sync()?.starts_with("pushed 2,"),
        "the queued contact, and the owner given to the synced one"
    );
    ensure_eq!(
        hub_owners(&hub).await?,
        vec![owned("me", "Ada Lovelace"), owned("me", "Grace Hopper")],
        "the hub's table got the column and the owners"
    );
    b.sync()?;
    ensure_eq!(b.list()?, a.list()?, "another device gets both");

    std::fs::remove_dir_all(&dir)?;
    hub.drop().await
}

fn bad_input_exits_2() -> TestResult {
    binary()?;
    let dir = scratch("bad-input")?;
    let db = format!("sqlite://{}?mode=rwc", dir.join("a.db").display());
    let hub = format!("sqlite://{}?mode=rwc", dir.join("hub.db").display());
    let unknown = Uuid::now_v7().to_string();
    for (args, what) in [
        (
            vec!["edit", &unknown, "--name", "x"],
            "edit of an unknown id",
        ),
        (vec!["delete", &unknown], "delete of an unknown id"),
        (vec!["delete", "not-a-uuid"], "a malformed id"),
        (vec!["edit", &unknown], "edit without a field"),
        (vec!["add", ""], "an empty name"),
        (vec!["frobnicate"], "an unknown command"),
        (
            vec!["resolve", "999", "--keep", "local"],
            "resolve of an unknown conflict",
        ),
        (
            vec!["--policy", "manual", "resolve", "999", "--keep", "remote"],
            "resolve of an unknown conflict, policy manual",
        ),
        (vec!["resolve", "1", "--keep", "both"], "a bad --keep"),
        (vec!["resolve", "1"], "resolve without --keep"),
        (
            vec!["resolve", "x", "--keep", "local"],
            "a malformed conflict id",
        ),
        (vec!["--policy", "sometimes", "list"], "an unknown policy"),
    ] {
        let mut all = vec!["--db", &db, "--hub", &hub];
        all.extend(args);
        let out = contacts(&dir, &all)?;
        expect_code(&out, 2, what)?;
        ensure!(!out.stderr.is_empty(), "{what}: a message on stderr");
        ensure!(out.stdout.is_empty(), "{what}: nothing on stdout");
    }
    let out = contacts(
        &dir,
        &[
            "--db", &db, "--hub", &hub, "resolve", "999", "--keep", "local",
        ],
    )?;
    let stderr = text(&out.stderr);
    ensure!(
        stderr.contains("no conflict with id 999") && stderr.lines().count() == 1,
        "an unknown conflict id is named on one line: {stderr:?}"
    );
    for (args, what) in [
        (
            vec!["--hub", UNREACHABLE_SERVER, "list"],
            "a hub server without --user",
        ),
        (
            vec!["--hub", UNREACHABLE_SERVER, "--user", "alice", "sync"],
            "a hub server without a token",
        ),
        (
            vec![
                "--hub",
                "http://a b",
                "--user",
                "alice",
                "--token",
                "t",
                "sync",
            ],
            "a malformed hub server URL",
        ),
        (
            vec!["--hub", UNREACHABLE_SERVER, "--user", " ", "list"],
            "an empty user",
        ),
    ] {
        let mut all = vec!["--db", &db];
        all.extend(args);
        let out = contacts(&dir, &all)?;
        expect_code(&out, 2, what)?;
        ensure!(!out.stderr.is_empty(), "{what}: a message on stderr");
        ensure!(out.stdout.is_empty(), "{what}: nothing on stdout");
    }
    for (db, hub, what) in [
        ("nope://x", hub.as_str(), "a bad local URL"),
        (db.as_str(), "nope://x", "a bad hub URL"),
        (db.as_str(), "not a url", "an unparsable hub URL"),
    ] {
        let out = contacts(&dir, &["--db", db, "--hub", hub, "sync"])?;
        expect_code(&out, 2, what)?;
        ensure!(!out.stderr.is_empty(), "{what}: a message on stderr");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `demo` runs both parts, narrating them, and removes every file it made.
/// It works in a fresh folder under the temporary directory: that directory
/// is a scratch folder here (`TMPDIR`), so the test knows where to look, and
/// checks that the folder the demo names is in it and gone afterwards, and
/// that neither the temporary directory nor the current folder holds
/// anything.
fn demo_runs_and_cleans_up() -> TestResult {
    let dir = scratch("demo")?;
    let (cwd, tmp) = (dir.join("cwd"), dir.join("tmp"));
    std::fs::create_dir_all(&cwd)?;
    std::fs::create_dir_all(&tmp)?;
    let out = Command::new(binary()?)
        .arg("demo")
        .current_dir(&cwd)
        .env("TMPDIR", &tmp)
        .env("TMP", &tmp)
        .env("TEMP", &tmp)
        .output()?;
    expect_code(&out, 0, "demo")?;
    let stdout = text(&out.stdout);
    for expected in [
        "A sets Ada's phone",
        "B changes Ada's email",
        "B deletes Alan Turing",
        "hub unreachable",
        "A and B hold identical rows",
        // Part two, `manual`: a conflict resolved by hand.
        "`--policy manual`",
        "Offline, A changes Ada's email to ada@laptop.example.org",
        "Offline, B changes Ada's email to countess@phone.example.org",
        "B syncs: pushed 1, pulled 0, conflicts 1,",
        "! conflict 1: contacts ",
        "base   \"ada@example.org\"",
        "local  \"countess@phone.example.org\"",
        "remote \"ada@laptop.example.org\"",
        "`contacts resolve 1 --keep local`",
        "A and B converge on the email chosen by hand, countess@phone.example.org",
        // Part three: two users through a hub server.
        "10. Part three: a hub server and two users",
        "A hub server runs in this process at http://127.0.0.1:",
        "alice's phone syncs with a revoked token: the hub refused the token",
        "alice's contacts are absent from bob's devices and bob's",
        "the hub holds all 5 (3 of alice, 2 of bob)",
    ] {
        ensure!(
            stdout.contains(expected),
            "the demo prints {expected:?}:\n{stdout}"
        );
    }
    ensure!(
        !stdout.contains("tsk_"),
        "the demo prints no token:\n{stdout}"
    );
    let used = stdout
        .split_once("(SQLite too, in ")
        .and_then(|(_, rest)| rest.split_once(")."))
        .map(|(path, _)| PathBuf::from(path))
        .ok_or_else(|| format!("the demo names its folder:\n{stdout}"))?;
    ensure!(
        used.parent() == Some(tmp.as_path()),
        "the demo works in the temporary directory, {}, not in {}",
        tmp.display(),
        used.display()
    );
    ensure!(
        !used.exists(),
        "the demo removes its folder {}",
        used.display()
    );
    for (folder, what) in [(&tmp, "temporary directory"), (&cwd, "current folder")] {
        let left: Vec<_> = std::fs::read_dir(folder)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        ensure!(
            left.is_empty(),
            "the demo leaves nothing in the {what}: {left:?}"
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
