//! `contacts`: the seed scenario of tidesync as a command-line program.
//!
//! An address book kept in a local database (one per device) and synced
//! through a hub database. Every command but `sync` works offline: it only
//! touches the local database, whose capture triggers record each write in
//! the outbox. `sync` pushes the outbox to the hub and pulls what other
//! devices wrote; concurrent edits of one contact merge per column (last
//! writer wins on the hybrid logical clock), so both survive.
//!
//! ```text
//! contacts [--db URL] [--hub URL] add <NAME> [--email E] [--phone P]   # prints the new id
//! contacts [--db URL] [--hub URL] edit <ID> [--name N] [--email E] [--phone P]
//! contacts [--db URL] [--hub URL] delete <ID>
//! contacts [--db URL] [--hub URL] list [--json]
//! contacts [--db URL] [--hub URL] sync
//! contacts demo                                  # two devices, scripted
//! ```
//!
//! - URLs are `sqlite://path?mode=rwc`, `postgres://user@host/db` or
//!   `mysql://user@host/db`. `--db` defaults to `sqlite://contacts.db?mode=rwc`
//!   and `--hub` to `sqlite://contacts-hub.db?mode=rwc`, both in the current
//!   folder. The options go before or after the command.
//! - `add` prints the new id (a UUID v7) alone on stdout.
//! - `edit` changes only the fields given; an empty `--email ''` or
//!   `--phone ''` clears the field.
//! - `list --json` prints `[{"id","name","email","phone"}]` (null when
//!   absent), sorted by name then id; without `--json`, a table.
//! - `sync` prints one line, e.g. `pushed 2, pulled 1, rejected 0, ok in 9 ms`,
//!   and any change the hub refused on stderr.
//! - `demo` runs a two-device walkthrough in a fresh temporary folder with an
//!   embedded SQLite hub, narrating each step, and checks the outcome.
//!
//! Exit codes: 0 success; 1 the hub is unreachable (`sync` only: the local
//! edits stay queued and go out on the next successful sync); 2 anything else
//! (bad arguments, bad URL, unknown id, database error), with a message on
//! stderr.
//!
//! ```sh
//! cargo run --example contacts -- demo
//! cargo run --example contacts -- add "Ada Lovelace" --email ada@example.org
//! cargo run --example contacts -- sync
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};
use sea_orm::entity::prelude::*;
use sea_orm::{
    ActiveValue::Set, ConnectOptions, Database, DatabaseConnection, IntoActiveModel, RuntimeErr,
    Schema,
};
use tidesync::backends::SqlBackend;
use tidesync::{Replica, SyncEngine, SyncReport};

/// The synced entity: one contact.
pub mod contacts {
    use sea_orm::entity::prelude::*;
    use tidesync::Syncable;

    /// A contact. The key is minted on the device (UUID v7), so two devices
    /// adding contacts offline never collide.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "contacts")]
    pub struct Model {
        /// Minted on the device that adds the contact.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        /// Display name.
        pub name: String,
        /// Email address, if known.
        pub email: Option<String>,
        /// Phone number, if known.
        pub phone: Option<String>,
        /// When this device last wrote the row.
        pub updated_at: DateTimeUtc,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}
    // No `impl ActiveModelBehavior`: `Syncable` generates it.
}

const DEFAULT_DB: &str = "sqlite://contacts.db?mode=rwc";
const DEFAULT_HUB: &str = "sqlite://contacts-hub.db?mode=rwc";

/// Offline-first contacts synced with tidesync.
#[derive(Debug, Parser)]
#[command(name = "contacts", version)]
struct Cli {
    /// This device's local database.
    #[arg(long, global = true, value_name = "URL", default_value = DEFAULT_DB)]
    db: String,
    /// The hub database the devices sync through (used by `sync` only).
    #[arg(long, global = true, value_name = "URL", default_value = DEFAULT_HUB)]
    hub: String,
    #[command(subcommand)]
    command: Command,
}

/// One variant per command; each maps to one `cmd_*` function in `run`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Add a contact and print its new id.
    Add {
        /// The contact's name.
        name: String,
        /// Email address.
        #[arg(long)]
        email: Option<String>,
        /// Phone number.
        #[arg(long)]
        phone: Option<String>,
    },
    /// Change some fields of a contact (an empty value clears email/phone).
    #[command(group(ArgGroup::new("fields").required(true).multiple(true)))]
    Edit {
        /// The contact's id.
        id: Uuid,
        /// New name.
        #[arg(long, group = "fields")]
        name: Option<String>,
        /// New email address ('' clears it).
        #[arg(long, group = "fields")]
        email: Option<String>,
        /// New phone number ('' clears it).
        #[arg(long, group = "fields")]
        phone: Option<String>,
    },
    /// Delete a contact.
    Delete {
        /// The contact's id.
        id: Uuid,
    },
    /// List the contacts, sorted by name.
    List {
        /// Print a JSON array of {"id","name","email","phone"}.
        #[arg(long)]
        json: bool,
    },
    /// Push local edits to the hub and pull the other devices' edits.
    Sync,
    /// Two devices editing offline and syncing through a SQLite hub.
    Demo,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors (unknown command, bad uuid) exit 2 with clap's message.
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("contacts: {failure}");
            failure.exit_code()
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Add { name, email, phone } => {
            let local = Local::open(&cli.db).await?;
            let contact = local.add(&name, email, phone).await?;
            println!("{}", contact.id);
        }
        Command::Edit {
            id,
            name,
            email,
            phone,
        } => {
            let local = Local::open(&cli.db).await?;
            local.edit(id, Edit { name, email, phone }).await?;
        }
        Command::Delete { id } => Local::open(&cli.db).await?.delete(id).await?,
        Command::List { json } => {
            let rows = Local::open(&cli.db).await?.list().await?;
            if json {
                println!("{}", to_json(&rows)?);
            } else {
                print!("{}", Table(&rows));
            }
        }
        Command::Sync => {
            let local = Local::open(&cli.db).await?;
            let report = local.sync(&cli.hub).await?;
            println!("{report}");
            for problem in problems(&report) {
                eprintln!("contacts: {problem}");
            }
        }
        Command::Demo => demo().await?,
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Failures and exit codes

/// Why a command failed; each maps to an exit code.
#[derive(Debug)]
enum Failure {
    /// The hub cannot be reached (exit 1); `queued` local writes wait for
    /// the next sync.
    Offline { reason: String, queued: u64 },
    /// No contact has this id (exit 2).
    NotFound(Uuid),
    /// An argument the command cannot use (exit 2).
    Invalid(String),
    /// Anything else: a database error, a bad URL (exit 2).
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Offline { .. } => ExitCode::from(1),
            _ => ExitCode::from(2),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Offline { reason, queued } => write!(
                f,
                "hub unreachable ({reason}); {queued} local change(s) stay queued for the next sync"
            ),
            Failure::NotFound(id) => write!(f, "no contact with id {id}"),
            Failure::Invalid(msg) => f.write_str(msg),
            Failure::Other(e) => write!(f, "{e}"),
        }
    }
}

impl From<tidesync::Error> for Failure {
    fn from(e: tidesync::Error) -> Self {
        match e {
            tidesync::Error::Offline(reason) => Failure::Offline { reason, queued: 0 },
            e => Failure::Other(Box::new(e)),
        }
    }
}

impl From<DbErr> for Failure {
    fn from(e: DbErr) -> Self {
        Failure::Other(Box::new(e))
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Other(Box::new(e))
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Other(Box::new(e))
    }
}

// ---------------------------------------------------------------------------
// The local database of one device

/// Fields to change in `edit`: `None` keeps the value; `Some("")` clears
/// email or phone.
#[derive(Debug, Default)]
struct Edit {
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
}

/// One device's local database, with the `contacts` table and capture
/// installed.
struct Local {
    db: DatabaseConnection,
}

impl Local {
    /// Connect, create the table if missing, install capture (idempotent).
    async fn open(url: &str) -> Result<Local, Failure> {
        let db = Database::connect(url)
            .await
            .map_err(|e| Failure::Invalid(format!("cannot open the local database: {e}")))?;
        let mut table =
            Schema::new(db.get_database_backend()).create_table_from_entity(contacts::Entity);
        db.execute(table.if_not_exists()).await?;
        let local = Local { db };
        // Opening the replica installs the capture triggers before any write.
        local.replica().await?;
        Ok(local)
    }

    /// A replica over this database (cheap: opening is idempotent).
    async fn replica(&self) -> Result<Replica, Failure> {
        Ok(Replica::builder(self.db.clone())
            .register::<contacts::Entity>()
            .open()
            .await?)
    }

    async fn add(
        &self,
        name: &str,
        email: Option<String>,
        phone: Option<String>,
    ) -> Result<contacts::Model, Failure> {
        let contact = contacts::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set(non_empty_name(name)?),
            email: Set(email.filter(|e| !e.is_empty())),
            phone: Set(phone.filter(|p| !p.is_empty())),
            updated_at: Set(chrono::Utc::now()),
        };
        Ok(contact.insert(&self.db).await?)
    }

    async fn edit(&self, id: Uuid, edit: Edit) -> Result<contacts::Model, Failure> {
        let mut contact = contacts::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(Failure::NotFound(id))?
            .into_active_model();
        if let Some(name) = edit.name {
            contact.name = Set(non_empty_name(&name)?);
        }
        if let Some(email) = edit.email {
            contact.email = Set(Some(email).filter(|e| !e.is_empty()));
        }
        if let Some(phone) = edit.phone {
            contact.phone = Set(Some(phone).filter(|p| !p.is_empty()));
        }
        contact.updated_at = Set(chrono::Utc::now());
        Ok(contact.update(&self.db).await?)
    }

    async fn delete(&self, id: Uuid) -> Result<(), Failure> {
        let deleted = contacts::Entity::delete_by_id(id).exec(&self.db).await?;
        if deleted.rows_affected == 0 {
            return Err(Failure::NotFound(id));
        }
        Ok(())
    }

    /// Every contact, sorted by name then id (in Rust, so the order does not
    /// depend on the database's collation).
    async fn list(&self) -> Result<Vec<contacts::Model>, Failure> {
        let mut rows = contacts::Entity::find().all(&self.db).await?;
        rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(rows)
    }

    /// Local writes not yet acknowledged by the hub.
    async fn queued(&self) -> Result<u64, Failure> {
        Ok(self.replica().await?.pending_count().await?)
    }

    /// One sync with the hub at `hub_url`. An unreachable hub is
    /// [`Failure::Offline`], with the number of writes still queued.
    async fn sync(&self, hub_url: &str) -> Result<SyncReport, Failure> {
        let result = async {
            let hub = connect_hub(hub_url).await?;
            let engine = SyncEngine::new(self.replica().await?, Arc::new(hub));
            Ok::<_, Failure>(engine.sync_now().await?)
        }
        .await;
        match result {
            Err(Failure::Offline { reason, .. }) => Err(Failure::Offline {
                reason,
                queued: self.queued().await?,
            }),
            other => other,
        }
    }

    async fn close(self) -> Result<(), Failure> {
        Ok(self.db.close().await?)
    }
}

/// How long `sync` waits for the hub before calling it unreachable.
const HUB_TIMEOUT: Duration = Duration::from_secs(5);

/// Connect to the hub. Not `SqlBackend::connect(url)`, which keeps sqlx's
/// defaults: sqlx retries a refused connection until the pool's acquire
/// timeout, 30 s, too long for a command line; and it calls a malformed URL
/// "offline" too, where this program says "bad URL" (exit 2).
async fn connect_hub(url: &str) -> Result<SqlBackend, Failure> {
    let mut options = ConnectOptions::new(url);
    options
        .connect_timeout(HUB_TIMEOUT)
        .acquire_timeout(HUB_TIMEOUT);
    match Database::connect(options).await {
        Ok(db) => Ok(SqlBackend::new(db)),
        Err(e) if is_bad_url(&e) => Err(Failure::Invalid(format!("bad hub URL: {e}"))),
        Err(e) => Err(Failure::Offline {
            reason: e.to_string(),
            queued: 0,
        }),
    }
}

/// A connection error that no retry can fix: the URL itself is wrong.
fn is_bad_url(e: &DbErr) -> bool {
    match e {
        // Unparsable, or no driver for the scheme.
        DbErr::Conn(RuntimeErr::Internal(_)) => true,
        DbErr::Conn(RuntimeErr::SqlxError(e)) => {
            matches!(**e, sea_orm::sqlx::Error::Configuration(_))
        }
        _ => false,
    }
}

fn non_empty_name(name: &str) -> Result<String, Failure> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Failure::Invalid("a contact's name cannot be empty".into()));
    }
    Ok(name.to_owned())
}

/// What a sync reported beyond its counts, one line each.
fn problems(report: &SyncReport) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(h) = &report.halted {
        out.push(format!(
            "the hub halted this device's changes at {} ({}): {}; they stay queued",
            h.id, h.table, h.reason
        ));
    }
    for r in &report.rejected {
        out.push(format!(
            "the hub parked change {} ({}): {}",
            r.id, r.table, r.reason
        ));
    }
    for e in &report.local_errors {
        out.push(format!("local: {e}"));
    }
    out
}

// ---------------------------------------------------------------------------
// Output

/// A contact as `list --json` prints it.
#[derive(serde::Serialize)]
struct ContactJson<'a> {
    id: Uuid,
    name: &'a str,
    email: Option<&'a str>,
    phone: Option<&'a str>,
}

fn to_json(rows: &[contacts::Model]) -> Result<String, Failure> {
    let rows: Vec<ContactJson<'_>> = rows
        .iter()
        .map(|c| ContactJson {
            id: c.id,
            name: &c.name,
            email: c.email.as_deref(),
            phone: c.phone.as_deref(),
        })
        .collect();
    Ok(serde_json::to_string(&rows)?)
}

/// Contacts as a text table (`-` for an absent value).
struct Table<'a>(&'a [contacts::Model]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "(no contacts)");
        }
        let header = ["id", "name", "email", "phone"].map(String::from);
        let rows: Vec<[String; 4]> = self
            .0
            .iter()
            .map(|c| {
                [
                    c.id.to_string(),
                    c.name.clone(),
                    c.email.clone().unwrap_or_else(|| "-".into()),
                    c.phone.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let mut widths = [0usize; 4];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            writeln!(f, "{}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The demo

/// A device in the demo: a name and its local database.
struct Device {
    name: &'static str,
    local: Local,
}

impl Device {
    /// Sync and narrate the outcome.
    async fn sync(&self, hub_url: &str) -> Result<(), Failure> {
        let report = self.local.sync(hub_url).await?;
        println!("   {} syncs: {report}", self.name);
        for problem in problems(&report) {
            println!("     ! {problem}");
        }
        Ok(())
    }

    async fn show(&self) -> Result<Vec<contacts::Model>, Failure> {
        let rows = self.local.list().await?;
        println!("   on device {}:", self.name);
        for line in Table(&rows).to_string().lines() {
            println!("     {line}");
        }
        Ok(rows)
    }
}

/// `sqlite://` URL of a file, created if missing.
fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Fail the demo with a message unless `cond` (the walkthrough checks itself).
fn expect(cond: bool, what: &str) -> Result<(), Failure> {
    if cond {
        Ok(())
    } else {
        Err(Failure::Other(format!("demo check failed: {what}").into()))
    }
}

async fn demo() -> Result<(), Failure> {
    let dir = std::env::temp_dir().join(format!("tidesync-contacts-demo-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    if let Err(e) = walkthrough(&dir).await {
        eprintln!("contacts: the demo's files are kept in {}", dir.display());
        return Err(e);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

async fn walkthrough(dir: &Path) -> Result<(), Failure> {
    let hub = sqlite_url(&dir.join("hub.db"));
    let file = |name: &str| -> PathBuf { dir.join(name) };
    println!("tidesync contacts demo");
    println!("Two devices, A (a laptop) and B (a phone), each with its own SQLite");
    println!(
        "database, sync through a hub database (SQLite too, in {}).",
        dir.display()
    );
    let a = Device {
        name: "A",
        local: Local::open(&sqlite_url(&file("device-a.db"))).await?,
    };
    let b = Device {
        name: "B",
        local: Local::open(&sqlite_url(&file("device-b.db"))).await?,
    };

    println!();
    println!("1. A adds two contacts, then both devices sync.");
    let ada = a
        .local
        .add("Ada Lovelace", Some("ada@example.org".into()), None)
        .await?;
    let alan = a
        .local
        .add(
            "Alan Turing",
            Some("alan@example.org".into()),
            Some("+44 161 000 0000".into()),
        )
        .await?;
    println!("   A adds Ada Lovelace ({}) and Alan Turing", ada.id);
    a.sync(&hub).await?;
    println!("     (a first sync also loads the hub's rows: here A's own two)");
    b.sync(&hub).await?;
    b.show().await?;

    println!();
    println!("2. Both devices go offline and edit (no hub involved).");
    let ada_phone = "+44 20 7946 0000";
    let ada_email = "ada@analytical-engine.org";
    a.local
        .edit(
            ada.id,
            Edit {
                phone: Some(ada_phone.into()),
                ..Edit::default()
            },
        )
        .await?;
    println!("   A sets Ada's phone to {ada_phone}");
    b.local
        .edit(
            ada.id,
            Edit {
                email: Some(ada_email.into()),
                ..Edit::default()
            },
        )
        .await?;
    println!("   B changes Ada's email to {ada_email} (the same contact, concurrently)");
    b.local.delete(alan.id).await?;
    println!("   B deletes Alan Turing");
    let grace = a
        .local
        .add("Grace Hopper", None, Some("+1 202 555 0100".into()))
        .await?;
    println!("   A adds Grace Hopper");
    let edsger = b
        .local
        .add("Edsger Dijkstra", Some("ewd@example.org".into()), None)
        .await?;
    println!("   B adds Edsger Dijkstra");
    println!(
        "   queued: {} change(s) on A, {} on B",
        a.local.queued().await?,
        b.local.queued().await?
    );

    println!();
    println!("3. Back online: A syncs, B syncs, A syncs again.");
    a.sync(&hub).await?;
    b.sync(&hub).await?;
    a.sync(&hub).await?;

    println!();
    println!("4. The hub becomes unreachable while A edits.");
    let grace_email = "grace@navy.example.mil";
    a.local
        .edit(
            grace.id,
            Edit {
                email: Some(grace_email.into()),
                ..Edit::default()
            },
        )
        .await?;
    println!("   A adds an email to Grace Hopper: {grace_email}");
    // A hub address that does not answer: a file in a folder that is missing.
    let unreachable = format!(
        "sqlite://{}?mode=rw",
        file("unreachable").join("hub.db").display()
    );
    match a.local.sync(&unreachable).await {
        Err(offline @ Failure::Offline { .. }) => println!("   A syncs: {offline}"),
        Err(other) => return Err(other),
        Ok(report) => {
            return Err(Failure::Other(
                format!("demo check failed: sync with no hub reported {report}").into(),
            ));
        }
    }
    println!("   The hub is back:");
    a.sync(&hub).await?;
    b.sync(&hub).await?;

    println!();
    println!("5. Final rows.");
    let rows_a = a.show().await?;
    let rows_b = b.show().await?;
    expect(rows_a == rows_b, "A and B hold identical rows")?;
    let find = |id: Uuid| rows_a.iter().find(|c| c.id == id);
    let ada_now = find(ada.id);
    expect(
        ada_now.is_some_and(|c| {
            c.phone.as_deref() == Some(ada_phone) && c.email.as_deref() == Some(ada_email)
        }),
        "Ada keeps A's phone and B's email",
    )?;
    expect(find(alan.id).is_none(), "Alan is deleted everywhere")?;
    expect(find(edsger.id).is_some(), "B's Edsger reached A")?;
    expect(
        find(grace.id).is_some_and(|c| c.email.as_deref() == Some(grace_email)),
        "the edit queued while offline reached B",
    )?;
    println!("   A and B hold identical rows: Ada has A's phone and B's email (both");
    println!("   edits survived), Alan is gone on both, each device's new contact is on");
    println!("   the other, and the edit made while the hub was unreachable went out on");
    println!("   the next sync.");
    a.local.close().await?;
    b.local.close().await?;
    Ok(())
}
