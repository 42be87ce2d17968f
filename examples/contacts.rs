//! `contacts`: the seed scenario of tidesync as a command-line program.
//!
//! An address book kept in a local database (one per device) and synced
//! through a hub: a hub database the program opens itself, or a hub server
//! it reaches over HTTP with a token. Every command but `sync` works
//! offline: it only touches the local database, whose capture triggers
//! record each write in the outbox. `sync` pushes the outbox to the hub and
//! pulls what other devices wrote. Concurrent edits of different fields of
//! one contact always merge (both survive); concurrent edits of the same
//! field follow the conflict policy chosen with `--policy`:
//!
//! - `lww` (default): the later write wins (hybrid logical clock);
//! - `manual`: the device that syncs second gets a *conflict*: its edit of
//!   that field is held back (the rest of its edits sync), both values are
//!   kept, and the user settles it with `resolve`.
//!
//! ```text
//! contacts [OPTIONS] add <NAME> [--email E] [--phone P]   # prints the new id
//! contacts [OPTIONS] edit <ID> [--name N] [--email E] [--phone P]
//! contacts [OPTIONS] delete <ID>
//! contacts [OPTIONS] list [--json]
//! contacts [OPTIONS] sync
//! contacts [OPTIONS] conflicts [--json]
//! contacts [OPTIONS] resolve <CONFLICT-ID> --keep local|remote
//! contacts demo                                  # devices and users, scripted
//!
//! OPTIONS: --db URL  --hub URL  --token TOKEN  --user NAME  --policy lww|manual
//! ```
//!
//! - Database URLs are `sqlite://path?mode=rwc`, `postgres://user@host/db`
//!   or `mysql://user@host/db`. `--db` defaults to
//!   `sqlite://contacts.db?mode=rwc` and `--hub` to
//!   `sqlite://contacts-hub.db?mode=rwc`, both in the current folder. The
//!   options go before or after the command.
//! - `--hub` is either a hub database (a database URL: `sync` opens it
//!   itself) or a hub server (`http://host:port` or `https://...`: a
//!   `HubServer`, as part three of `demo` runs one), which `sync` reaches
//!   with the bearer token `--token` (or `$CONTACTS_TOKEN`, which keeps it
//!   out of the process list). Only `sync` uses the token.
//! - Each contact belongs to a user: its `owner` column, declared with
//!   `#[syncable(owner = "owner")]`, holds the user named by `--user` (or
//!   `$CONTACTS_USER`) on the device that added it. Through a hub server
//!   each user syncs only their own contacts: `--user` is required, it must
//!   be the user the token signs in (the server refuses a contact of
//!   another user), and a device's database holds one user's address book
//!   (a database holding another user's contacts is refused, exit 2).
//!   Through a hub database, which has no accounts, every device sees
//!   every contact, as before owners existed, and `--user` defaults to
//!   `me`.
//! - A local database made before contacts had owners gets the `owner`
//!   column (empty) when it is first opened by this version, and its
//!   contacts are then given to the user: a write like any other, synced
//!   by the next `sync`.
//! - `--policy` is the conflict policy of the `contacts` table (default
//!   `lww`). Give every device the same one, on every command: the policy is
//!   a compile-time attribute of an entity (`#[syncable(conflict = "...")]`),
//!   so this program has two entities over the same table and registers the
//!   one chosen.
//! - `add` prints the new id (a UUID v7) alone on stdout.
//! - `edit` changes only the fields given; an empty `--email ''` or
//!   `--phone ''` clears the field.
//! - `list --json` prints `[{"id","name","email","phone"}]` (null when
//!   absent), sorted by name then id; without `--json`, a table.
//! - `sync` prints one line, e.g.
//!   `pushed 2, pulled 1, conflicts 0, rejected 0, ok in 9 ms`, and on stderr
//!   any change the hub refused and, with `--policy manual`, one line per
//!   conflict held back by this sync, then a hint to run `conflicts` and
//!   `resolve`. Conflicts are not errors: the exit code stays 0.
//! - `conflicts` lists the conflicts held on this device, oldest first.
//!   `--json` prints `[{"id","table","row","column","base","local","remote"}]`:
//!   `id` is the number to give `resolve`, `row` the contact's id, `base` the
//!   field's value before both edits (null when unknown), `local` this
//!   device's value, `remote` the other one (the hub's); values are JSON
//!   strings, or null for an empty field. Without `--json`, a table.
//! - `resolve <ID> --keep local` keeps this device's value (it goes out on
//!   the next `sync` and wins everywhere); `--keep remote` takes the other
//!   device's value (nothing to send). Works offline. An unknown id exits 2.
//! - `demo` runs a scripted walkthrough, narrating each step, and checks
//!   the outcome: two devices with an embedded SQLite hub, first with `lww`
//!   (edits of different fields merge, a delete, an edit queued while the
//!   hub is unreachable), then on fresh files with `manual` (both devices
//!   change the same email; the conflict is shown and resolved by hand);
//!   then two users with two devices each, through a hub server it starts
//!   in the same process on `127.0.0.1` (each user's devices converge, and
//!   neither user sees the other's contacts). Its files live in a fresh
//!   folder under the system's temporary directory (`$TMPDIR` on Unix),
//!   named in its output, removed at the end and kept when it fails; it
//!   writes nothing in the current folder.
//!
//! Exit codes: 0 success; 1 the hub is unreachable, or a hub server refuses
//! the token (`sync` only, with the reason on one line: the local edits stay
//! queued and go out on the next successful sync); 2 anything else (bad
//! arguments, bad URL, unknown contact or conflict id, database error, a
//! demo whose devices did not converge), with a message on stderr.
//!
//! ```sh
//! cargo run --example contacts -- demo
//! cargo run --example contacts -- add "Ada Lovelace" --email ada@example.org
//! cargo run --example contacts -- sync
//! cargo run --example contacts -- --policy manual sync
//! cargo run --example contacts -- --policy manual conflicts
//! cargo run --example contacts -- --policy manual resolve 1 --keep local
//! CONTACTS_TOKEN=tsk_... cargo run --example contacts -- \
//!     --hub http://127.0.0.1:8080 --user alice sync
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand, ValueEnum};
use sea_orm::entity::prelude::*;
use sea_orm::{
    ActiveValue::Set, ConnectOptions, Database, DatabaseConnection, IntoActiveModel, RuntimeErr,
    Schema,
};
// In an application: `tidesync::http::{HttpBackend, HubServer}` (features
// `http-client` and `http-server`); examples of this package use the
// `sync_http` dev-dependency directly.
use sync_http::{HttpBackend, HubServer};
use tidesync::hub::{Hub, SqlHub};
use tidesync::{HeldConflict, Replica, ReplicaBuilder, Resolution, SyncEngine, SyncReport};

/// Defines an entity module over the `contacts` table with the conflict
/// policy `$policy`. The policy is a compile-time attribute of an entity, so
/// choosing it at run time takes one entity per policy; their fields are
/// identical.
macro_rules! contacts_entity {
    ($(#[$attr:meta])* $module:ident, $policy:literal) => {
        $(#[$attr])*
        pub mod $module {
            use sea_orm::entity::prelude::*;
            use tidesync::Syncable;

            /// A contact. The key is minted on the device (UUID v7), so two
            /// devices adding contacts offline never collide.
            #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
            #[sea_orm(table_name = "contacts")]
            #[syncable(conflict = $policy, owner = "owner")]
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
                /// The user whose address book holds the contact: the
                /// device's user (`--user`) when it adds one. A hub server
                /// shows each row only to its owner. Nullable because it
                /// came after the first release: a database made before
                /// it gets the column empty and its rows are then given to
                /// the user (see [`Local::open`]).
                pub owner: Option<String>,
                /// When this device last wrote the row. Local-only: never
                /// synced (empty on rows that came from another device), so
                /// two devices editing different fields never both change
                /// it, which under `manual` would be a conflict of its own.
                #[syncable(skip)]
                pub updated_at: Option<DateTimeUtc>,
            }

            /// No relations.
            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}
            // No `impl ActiveModelBehavior`: `Syncable` generates it.
        }
    };
}

contacts_entity!(
    /// The `contacts` table with the `lww` policy: of two concurrent edits
    /// of a field, the later one wins.
    contacts_lww,
    "lww"
);

contacts_entity!(
    /// The `contacts` table with the `manual` policy: two concurrent edits
    /// of a field make a conflict, settled by `resolve`.
    contacts_manual,
    "manual"
);

/// Reads and writes go through `contacts_lww` whatever the policy: both
/// modules map the same table, and the capture triggers record every write
/// whichever entity made it. The policy only decides which entity the
/// replica registers (see [`Local::replica`]).
use contacts_lww as contacts;

const DEFAULT_DB: &str = "sqlite://contacts.db?mode=rwc";
const DEFAULT_HUB: &str = "sqlite://contacts-hub.db?mode=rwc";
/// The owner of the contacts a device adds when `--user` is not given
/// (through a hub database only).
const DEFAULT_USER: &str = "me";

/// Offline-first contacts synced with tidesync.
#[derive(Debug, Parser)]
#[command(name = "contacts", version)]
struct Cli {
    /// This device's local database.
    #[arg(long, global = true, value_name = "URL", default_value = DEFAULT_DB)]
    db: String,
    /// The hub the devices sync through (used by `sync` only): a hub
    /// database (sqlite://, postgres://, mysql://), or a hub server
    /// (http:// or https://) reached with --token.
    #[arg(long, global = true, value_name = "URL", default_value = DEFAULT_HUB)]
    hub: String,
    /// The bearer token of a hub server (used by `sync` only).
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "CONTACTS_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Who you are: the owner of the contacts this device adds. Required
    /// with a hub server, where it must be the user the token signs in,
    /// each user syncs only their own contacts, and a device's database
    /// holds one user's; with a hub database it defaults to `me`, and every
    /// device sees every contact.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "CONTACTS_USER",
        hide_env_values = true
    )]
    user: Option<String>,
    /// How concurrent edits of the same field are settled (give every device
    /// the same policy).
    #[arg(long, global = true, value_enum, default_value_t = Policy::Lww)]
    policy: Policy,
    #[command(subcommand)]
    command: Command,
}

/// The conflict policy of the `contacts` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Policy {
    /// The later edit wins.
    Lww,
    /// The device that syncs second gets a conflict to `resolve`.
    Manual,
}

/// Which side of a conflict `resolve` keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Keep {
    /// This device's value (sent on the next sync).
    Local,
    /// The other device's value, as the hub holds it.
    Remote,
}

/// One variant per command; each maps to one arm in `run`.
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
    /// List the conflicts held on this device (`--policy manual`).
    Conflicts {
        /// Print a JSON array of {"id","table","row","column","base","local","remote"}.
        #[arg(long)]
        json: bool,
    },
    /// Settle a conflict; the choice goes out on the next sync.
    Resolve {
        /// The conflict's id, as `conflicts` prints it.
        id: i64,
        /// Keep this device's value, or take the other device's.
        #[arg(long, value_enum)]
        keep: Keep,
    },
    /// Two devices editing offline and syncing through a SQLite hub, then
    /// two users with two devices each through a hub server.
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
    match &cli.command {
        Command::Add { name, email, phone } => {
            let local = cli.local().await?;
            let contact = local.add(name, email.clone(), phone.clone()).await?;
            println!("{}", contact.id);
        }
        Command::Edit {
            id,
            name,
            email,
            phone,
        } => {
            let edit = Edit {
                name: name.clone(),
                email: email.clone(),
                phone: phone.clone(),
            };
            cli.local().await?.edit(*id, edit).await?;
        }
        Command::Delete { id } => cli.local().await?.delete(*id).await?,
        Command::List { json } => {
            let rows = cli.local().await?.list().await?;
            if *json {
                println!("{}", to_json(&rows)?);
            } else {
                print!("{}", Table(&rows));
            }
        }
        Command::Sync => {
            let local = cli.local().await?;
            let report = local.sync(&cli.hub()).await?;
            println!("{report}");
            for line in local.notes(&report).await? {
                eprintln!("contacts: {line}");
            }
        }
        Command::Conflicts { json } => {
            let held = cli.local().await?.conflicts().await?;
            if *json {
                println!("{}", conflicts_json(&held)?);
            } else {
                print!("{}", ConflictTable(&held));
            }
        }
        Command::Resolve { id, keep } => {
            let held = cli.local().await?.resolve(*id, *keep).await?;
            println!("{}", resolved(&held, *keep));
        }
        Command::Demo => demo().await?,
    }
    Ok(())
}

impl Cli {
    /// The hub `--hub` names.
    fn hub(&self) -> HubAddr {
        HubAddr::new(&self.hub, self.token.clone())
    }

    /// This device's user: `--user`, else (through a hub database only)
    /// [`DEFAULT_USER`].
    fn user(&self) -> Result<String, Failure> {
        match &self.user {
            Some(user) => valid_user(user),
            None if self.hub().is_server() => Err(Failure::Invalid(
                "a hub server keeps each user's contacts apart: name yours with --user \
                 (or CONTACTS_USER), the user the token signs in"
                    .into(),
            )),
            None => Ok(DEFAULT_USER.into()),
        }
    }

    /// The local database, opened as this device's user. Through a hub
    /// server it must hold no other user's contacts (the server would
    /// refuse them, and halt this device's changes at the first).
    async fn local(&self) -> Result<Local, Failure> {
        let local = Local::open(&self.db, self.policy, self.user()?).await?;
        if self.hub().is_server() {
            local.refuse_other_users().await?;
        }
        Ok(local)
    }
}

/// A user name as a hub server takes it: 1 to 255 bytes, no control
/// characters, no spaces around it.
fn valid_user(user: &str) -> Result<String, Failure> {
    let user = user.trim();
    if user.is_empty() || user.len() > 255 || user.chars().any(char::is_control) {
        return Err(Failure::Invalid(format!(
            "--user takes a name of 1 to 255 bytes without control characters, not {user:?}"
        )));
    }
    Ok(user.to_owned())
}

// ---------------------------------------------------------------------------
// Failures and exit codes

/// Why a command failed; each maps to an exit code.
#[derive(Debug)]
enum Failure {
    /// The hub cannot be reached (exit 1); `queued` local writes wait for
    /// the next sync.
    Offline { reason: String, queued: u64 },
    /// The hub server refuses the token (exit 1): wrong, expired or
    /// revoked; `queued` local writes wait for a sync with a good one.
    Refused { reason: String, queued: u64 },
    /// No contact has this id (exit 2).
    NotFound(Uuid),
    /// No conflict has this id (exit 2).
    NoConflict(i64),
    /// An argument the command cannot use (exit 2).
    Invalid(String),
    /// Anything else: a database error, a bad URL (exit 2).
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Offline { .. } | Failure::Refused { .. } => ExitCode::from(1),
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
            Failure::Refused { reason, queued } => write!(
                f,
                "the hub refused the token ({reason}); {queued} local change(s) stay queued \
                 for a sync with a valid token"
            ),
            Failure::NotFound(id) => write!(f, "no contact with id {id}"),
            Failure::NoConflict(id) => write!(
                f,
                "no conflict with id {id} on this device (`contacts conflicts` lists them)"
            ),
            Failure::Invalid(msg) => f.write_str(msg),
            Failure::Other(e) => write!(f, "{e}"),
        }
    }
}

impl From<tidesync::Error> for Failure {
    fn from(e: tidesync::Error) -> Self {
        match e {
            tidesync::Error::Offline(reason) => Failure::Offline { reason, queued: 0 },
            tidesync::Error::Unauthorized(reason) => Failure::Refused { reason, queued: 0 },
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
/// installed, used by one user.
struct Local {
    db: DatabaseConnection,
    policy: Policy,
    /// The owner of the contacts this device adds.
    user: String,
}

impl Local {
    /// Connect, create the table if missing (or add the columns it lacks),
    /// install capture (idempotent), give the contacts without an owner to
    /// `user`.
    async fn open(url: &str, policy: Policy, user: String) -> Result<Local, Failure> {
        let db = Database::connect(url)
            .await
            .map_err(|e| Failure::Invalid(format!("cannot open the local database: {e}")))?;
        let mut table =
            Schema::new(db.get_database_backend()).create_table_from_entity(contacts::Entity);
        db.execute(table.if_not_exists()).await?;
        let local = Local { db, policy, user };
        // Opening the replica installs the capture triggers before any
        // write. `create_tables` adds the nullable columns the entity has
        // and the table lacks: `owner`, in a database made before it (an
        // existing table is not created again above). The column comes
        // empty; giving its rows an owner is a write made after the
        // replica opened, so capture records it and `sync` sends it
        // (README, "Schema evolution").
        local.builder().create_tables().open().await?;
        contacts::Entity::update_many()
            .col_expr(contacts::Column::Owner, Expr::value(local.user.clone()))
            .filter(contacts::Column::Owner.is_null())
            .exec(&local.db)
            .await?;
        Ok(local)
    }

    /// Refuse a database holding contacts of another user.
    async fn refuse_other_users(&self) -> Result<(), Failure> {
        let other = contacts::Entity::find()
            .filter(contacts::Column::Owner.ne(self.user.as_str()))
            .one(&self.db)
            .await?;
        match other.and_then(|c| c.owner) {
            Some(owner) => Err(Failure::Invalid(format!(
                "this database holds contacts of `{owner}`: through a hub server a device \
                 holds one user's address book; give `{}` a database of their own (--db)",
                self.user
            ))),
            None => Ok(()),
        }
    }

    /// A replica builder over this database, with the entity of the chosen
    /// policy registered.
    fn builder(&self) -> ReplicaBuilder {
        let builder = Replica::builder(self.db.clone());
        match self.policy {
            Policy::Lww => builder.register::<contacts_lww::Entity>(),
            Policy::Manual => builder.register::<contacts_manual::Entity>(),
        }
    }

    /// A replica over this database (cheap: opening is idempotent).
    async fn replica(&self) -> Result<Replica, Failure> {
        Ok(self.builder().open().await?)
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
            owner: Set(Some(self.user.clone())),
            updated_at: Set(Some(chrono::Utc::now())),
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
        contact.updated_at = Set(Some(chrono::Utc::now()));
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

    /// Conflicts held on this device, oldest first.
    async fn conflicts(&self) -> Result<Vec<HeldConflict>, Failure> {
        Ok(self.replica().await?.conflicts().await?)
    }

    /// Settle conflict `id`; returns it as it was.
    async fn resolve(&self, id: i64, keep: Keep) -> Result<HeldConflict, Failure> {
        let replica = self.replica().await?;
        let held = replica
            .conflicts()
            .await?
            .into_iter()
            .find(|h| h.id == id)
            .ok_or(Failure::NoConflict(id))?;
        let resolution = match keep {
            Keep::Local => Resolution::KeepLocal,
            Keep::Remote => Resolution::TakeRemote,
        };
        replica.resolve(id, resolution).await?;
        Ok(held)
    }

    /// One sync with `hub`. An unreachable hub is [`Failure::Offline`], a
    /// refused token [`Failure::Refused`], with the number of writes still
    /// queued.
    async fn sync(&self, hub: &HubAddr) -> Result<SyncReport, Failure> {
        let result = async {
            let engine = SyncEngine::new(self.replica().await?, hub.connect().await?);
            Ok::<_, Failure>(engine.sync_now().await?)
        }
        .await;
        match result {
            Err(Failure::Offline { reason, .. }) => Err(Failure::Offline {
                reason,
                queued: self.queued().await?,
            }),
            Err(Failure::Refused { reason, .. }) => Err(Failure::Refused {
                reason,
                queued: self.queued().await?,
            }),
            other => other,
        }
    }

    /// What a sync reported beyond its counts, one line each: the hub's
    /// refusals, local errors, then each conflict it held back (with the id
    /// to resolve it by) and a hint.
    async fn notes(&self, report: &SyncReport) -> Result<Vec<String>, Failure> {
        let mut out = problems(report);
        if report.conflicts.is_empty() {
            return Ok(out);
        }
        let held = self.conflicts().await?;
        for c in &report.conflicts {
            let id = held
                .iter()
                .find(|h| {
                    h.conflict.table == c.table
                        && h.conflict.column == c.column
                        && row_text(&h.conflict.pk) == row_text(&c.pk)
                })
                .map_or_else(|| "?".to_owned(), |h| h.id.to_string());
            out.push(format!(
                "conflict {id}: {} {}, {}: local {} vs remote {}; this device's edit of it is held back",
                c.table,
                row_text(&c.pk),
                c.column,
                shown(Some(&c.local)),
                shown(Some(&c.remote)),
            ));
        }
        out.push(
            "see `contacts conflicts`, settle each with `contacts resolve <id> --keep local|remote`, then sync"
                .into(),
        );
        Ok(out)
    }

    async fn close(self) -> Result<(), Failure> {
        Ok(self.db.close().await?)
    }
}

/// How long `sync` waits for the hub before calling it unreachable.
const HUB_TIMEOUT: Duration = Duration::from_secs(5);

/// Where `sync` finds the hub (`--hub`).
#[derive(Clone, Debug)]
enum HubAddr {
    /// A hub database, which this program opens itself.
    Database(String),
    /// A hub server, reached over HTTP(S) with a bearer token (`None`: no
    /// token given).
    Server { url: String, token: Option<String> },
}

impl HubAddr {
    /// `url` is a hub server when it is `http://` or `https://`.
    fn new(url: &str, token: Option<String>) -> HubAddr {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http" | "https") => HubAddr::Server {
                url: url.to_owned(),
                token,
            },
            _ => HubAddr::Database(url.to_owned()),
        }
    }

    fn is_server(&self) -> bool {
        matches!(self, HubAddr::Server { .. })
    }

    /// The hub, ready for an engine. A hub server is not contacted yet:
    /// the engine's first call finds out whether it answers and takes the
    /// token.
    async fn connect(&self) -> Result<Arc<dyn Hub>, Failure> {
        match self {
            HubAddr::Database(url) => Ok(Arc::new(connect_hub(url).await?)),
            HubAddr::Server { token: None, .. } => Err(Failure::Invalid(
                "a hub server needs a token: give --token (or set CONTACTS_TOKEN)".into(),
            )),
            HubAddr::Server {
                url,
                token: Some(token),
            } => {
                let backend = HttpBackend::builder(url, token.as_str())
                    .connect_timeout(HUB_TIMEOUT)
                    .build()
                    .map_err(|e| Failure::Invalid(format!("bad hub URL: {e}")))?;
                Ok(Arc::new(backend))
            }
        }
    }
}

/// Connect to the hub. Not `SqlHub::connect(url)`, which keeps sqlx's
/// defaults: sqlx retries a refused connection until the pool's acquire
/// timeout, 30 s, too long for a command line; and it calls a malformed URL
/// "offline" too, where this program says "bad URL" (exit 2).
async fn connect_hub(url: &str) -> Result<SqlHub, Failure> {
    let mut options = ConnectOptions::new(url);
    options
        .connect_timeout(HUB_TIMEOUT)
        .acquire_timeout(HUB_TIMEOUT);
    match Database::connect(options).await {
        Ok(db) => Ok(SqlHub::new(db)),
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

/// The hub's refusals and local errors of a sync, one line each.
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

/// A contact as `list --json` prints it; also what the devices must agree
/// on (every field but the local-only `updated_at`).
#[derive(Debug, PartialEq, serde::Serialize)]
struct ContactJson<'a> {
    id: Uuid,
    name: &'a str,
    email: Option<&'a str>,
    phone: Option<&'a str>,
}

fn synced_fields(rows: &[contacts::Model]) -> Vec<ContactJson<'_>> {
    rows.iter()
        .map(|c| ContactJson {
            id: c.id,
            name: &c.name,
            email: c.email.as_deref(),
            phone: c.phone.as_deref(),
        })
        .collect()
}

fn to_json(rows: &[contacts::Model]) -> Result<String, Failure> {
    Ok(serde_json::to_string(&synced_fields(rows))?)
}

/// A field's value as plain JSON: a string, or null for an empty field (any
/// other type, which the `contacts` table does not have, as its debug text).
fn plain(value: &Value) -> serde_json::Value {
    match value {
        Value::String(Some(s)) => serde_json::Value::String(s.to_string()),
        Value::String(None) => serde_json::Value::Null,
        other => serde_json::Value::String(format!("{other:?}")),
    }
}

/// A value for the text outputs: JSON text, so `"x"`, `""` and `null` differ.
/// `None` (a base nobody knows) is null too.
fn shown(value: Option<&Value>) -> String {
    value.map_or(serde_json::Value::Null, plain).to_string()
}

/// A row's key as text: the contact's id (key columns joined by `,` for a
/// composite key).
fn row_text(pk: &[(String, Value)]) -> String {
    pk.iter()
        .map(|(_, v)| match v {
            Value::Uuid(Some(u)) => u.to_string(),
            Value::String(Some(s)) => s.to_string(),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A held conflict as `conflicts --json` prints it.
#[derive(serde::Serialize)]
struct ConflictJson<'a> {
    id: i64,
    table: &'a str,
    row: String,
    column: &'a str,
    base: serde_json::Value,
    local: serde_json::Value,
    remote: serde_json::Value,
}

fn conflicts_json(held: &[HeldConflict]) -> Result<String, Failure> {
    let rows: Vec<ConflictJson<'_>> = held
        .iter()
        .map(|h| {
            let c = &h.conflict;
            ConflictJson {
                id: h.id,
                table: &c.table,
                row: row_text(&c.pk),
                column: &c.column,
                base: c.base.as_ref().map_or(serde_json::Value::Null, plain),
                local: plain(&c.local),
                remote: plain(&c.remote),
            }
        })
        .collect();
    Ok(serde_json::to_string(&rows)?)
}

/// What `resolve` prints.
fn resolved(held: &HeldConflict, keep: Keep) -> String {
    let c = &held.conflict;
    let (value, outcome) = match keep {
        Keep::Local => (&c.local, "kept this device's value; the next sync sends it"),
        Keep::Remote => (&c.remote, "took the other device's value"),
    };
    format!(
        "conflict {} resolved: {} {}, {} = {} ({outcome})",
        held.id,
        c.table,
        row_text(&c.pk),
        c.column,
        shown(Some(value)),
    )
}

/// Rows as a text table, columns padded to their widest cell.
fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut widths = vec![0usize; header.len()];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Contacts as a text table (`-` for an absent value).
struct Table<'a>(&'a [contacts::Model]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "(no contacts)");
        }
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|c| {
                vec![
                    c.id.to_string(),
                    c.name.clone(),
                    c.email.clone().unwrap_or_else(|| "-".into()),
                    c.phone.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        f.write_str(&text_table(&["id", "name", "email", "phone"], &rows))
    }
}

/// Held conflicts as a text table (values as JSON: `null` is an empty field
/// or, for `base`, an unknown one).
struct ConflictTable<'a>(&'a [HeldConflict]);

impl fmt::Display for ConflictTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return writeln!(f, "(no conflicts)");
        }
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|h| {
                let c = &h.conflict;
                vec![
                    h.id.to_string(),
                    c.table.clone(),
                    row_text(&c.pk),
                    c.column.clone(),
                    shown(c.base.as_ref()),
                    shown(Some(&c.local)),
                    shown(Some(&c.remote)),
                ]
            })
            .collect();
        let header = ["id", "table", "row", "column", "base", "local", "remote"];
        f.write_str(&text_table(&header, &rows))
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
    /// A device of the default user.
    async fn open(name: &'static str, path: &Path, policy: Policy) -> Result<Device, Failure> {
        Self::of_user(name, path, policy, DEFAULT_USER).await
    }

    /// A device of `user`.
    async fn of_user(
        name: &'static str,
        path: &Path,
        policy: Policy,
        user: &str,
    ) -> Result<Device, Failure> {
        Ok(Device {
            name,
            local: Local::open(&sqlite_url(path), policy, user.to_owned()).await?,
        })
    }

    /// Sync and narrate the outcome.
    async fn sync(&self, hub: &HubAddr) -> Result<SyncReport, Failure> {
        let report = self.local.sync(hub).await?;
        println!("   {} syncs: {report}", self.name);
        for note in self.local.notes(&report).await? {
            println!("     ! {note}");
        }
        Ok(report)
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
    let result = async {
        walkthrough(&dir).await?;
        manual_conflict(&dir).await?;
        two_users(&dir).await
    }
    .await;
    if let Err(e) = result {
        eprintln!("contacts: the demo's files are kept in {}", dir.display());
        return Err(e);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Part one, policy `lww`: edits of different fields merge, a delete, an
/// edit queued while the hub is unreachable.
async fn walkthrough(dir: &Path) -> Result<(), Failure> {
    let hub = HubAddr::Database(sqlite_url(&dir.join("hub.db")));
    let file = |name: &str| -> PathBuf { dir.join(name) };
    println!("tidesync contacts demo");
    println!("Two devices, A (a laptop) and B (a phone), each with its own SQLite");
    println!(
        "database, sync through a hub database (SQLite too, in {}).",
        dir.display()
    );
    println!("Part one uses the default policy, `lww`; part two, `manual`; part three");
    println!("has two users, each with two devices, syncing through a hub server.");
    let a = Device::open("A", &file("device-a.db"), Policy::Lww).await?;
    let b = Device::open("B", &file("device-b.db"), Policy::Lww).await?;

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
    let unreachable = HubAddr::Database(format!(
        "sqlite://{}?mode=rw",
        file("unreachable").join("hub.db").display()
    ));
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
    expect(
        synced_fields(&rows_a) == synced_fields(&rows_b),
        "A and B hold identical rows",
    )?;
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

/// Part two, policy `manual`, on fresh files: both devices change the same
/// email offline; the conflict is shown and resolved by hand.
async fn manual_conflict(dir: &Path) -> Result<(), Failure> {
    let hub = HubAddr::Database(sqlite_url(&dir.join("hub-manual.db")));
    println!();
    println!("6. Part two: the same field edited on both devices, `--policy manual`.");
    println!("   Fresh devices and hub. Under `lww` the later edit would win; under");
    println!("   `manual` the device that syncs second gets a conflict to settle by hand.");
    let a = Device::open("A", &dir.join("device-a-manual.db"), Policy::Manual).await?;
    let b = Device::open("B", &dir.join("device-b-manual.db"), Policy::Manual).await?;
    let first_email = "ada@example.org";
    let ada = a
        .local
        .add("Ada Lovelace", Some(first_email.into()), None)
        .await?;
    println!("   A adds Ada Lovelace <{first_email}>, then both devices sync.");
    a.sync(&hub).await?;
    b.sync(&hub).await?;
    let email_a = "ada@laptop.example.org";
    let email_b = "countess@phone.example.org";
    let phone_b = "+44 20 7946 0001";
    a.local
        .edit(
            ada.id,
            Edit {
                email: Some(email_a.into()),
                ..Edit::default()
            },
        )
        .await?;
    println!("   Offline, A changes Ada's email to {email_a}");
    b.local
        .edit(
            ada.id,
            Edit {
                email: Some(email_b.into()),
                phone: Some(phone_b.into()),
                ..Edit::default()
            },
        )
        .await?;
    println!("   Offline, B changes Ada's email to {email_b} and sets her phone to {phone_b}");

    println!();
    println!("7. A syncs first, then B: B's edit of the email meets A's and is held back.");
    a.sync(&hub).await?;
    let report = b.sync(&hub).await?;
    expect(report.conflicts.len() == 1, "B's sync raises one conflict")?;
    a.sync(&hub).await?;
    let on_a = a.local.list().await?;
    expect(
        on_a.iter().any(|c| {
            c.id == ada.id
                && c.email.as_deref() == Some(email_a)
                && c.phone.as_deref() == Some(phone_b)
        }),
        "A got B's phone and kept its own email while the conflict is open",
    )?;
    println!("   A now has B's phone (the rest of B's edit went through) and still its");
    println!("   own email: only the field edited on both sides waits for a decision.");

    println!();
    println!("8. B lists its conflicts (`contacts conflicts`) and keeps its own value.");
    let held = b.local.conflicts().await?;
    let [conflict] = held.as_slice() else {
        return Err(Failure::Other(
            format!(
                "demo check failed: B holds {} conflicts, not one",
                held.len()
            )
            .into(),
        ));
    };
    let c = &conflict.conflict;
    println!(
        "   conflict {} on {} {}, field {}:",
        conflict.id,
        c.table,
        row_text(&c.pk),
        c.column
    );
    println!(
        "     base   {}  (before both edits)",
        shown(c.base.as_ref())
    );
    println!("     local  {}  (B's edit)", shown(Some(&c.local)));
    println!(
        "     remote {}  (A's edit, on the hub)",
        shown(Some(&c.remote))
    );
    let s = |v: &str| Value::String(Some(v.into()));
    expect(
        c.column == "email"
            && row_text(&c.pk) == ada.id.to_string()
            && c.base == Some(s(first_email))
            && c.local == s(email_b)
            && c.remote == s(email_a),
        "the conflict holds base, B's and A's emails",
    )?;
    let settled = b.local.resolve(conflict.id, Keep::Local).await?;
    println!("   B runs `contacts resolve {} --keep local`:", conflict.id);
    println!("     {}", resolved(&settled, Keep::Local));
    b.sync(&hub).await?;
    a.sync(&hub).await?;

    println!();
    println!("9. Final rows.");
    let rows_a = a.show().await?;
    let rows_b = b.show().await?;
    expect(
        synced_fields(&rows_a) == synced_fields(&rows_b),
        "A and B converge after the resolution",
    )?;
    expect(
        rows_a.iter().any(|c| {
            c.id == ada.id
                && c.email.as_deref() == Some(email_b)
                && c.phone.as_deref() == Some(phone_b)
        }),
        "Ada has the email chosen by hand (B's) and B's phone on both devices",
    )?;
    expect(
        b.local.conflicts().await?.is_empty(),
        "no conflict is left on B",
    )?;
    println!("   A and B converge on the email chosen by hand, {email_b},");
    println!("   with B's phone, and no conflict is left.");
    a.local.close().await?;
    b.local.close().await?;
    Ok(())
}

/// A hub server in this process, on an ephemeral port of 127.0.0.1, over a
/// SQLite hub database; stopped by [`DemoServer::stop`].
struct DemoServer {
    url: String,
    server: HubServer,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl DemoServer {
    async fn start(hub_db: &Path) -> Result<DemoServer, Failure> {
        let hub = SqlHub::connect(&sqlite_url(hub_db)).await?;
        // The contacts table declares its owners, so the server needs no
        // `share_undeclared`.
        let server = HubServer::new(hub).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(DemoServer {
            url,
            server,
            stop,
            task,
        })
    }

    /// A new token of `user`.
    async fn token(&self, user: &str) -> Result<String, Failure> {
        Ok(self.server.tokens().add(user).await?)
    }

    /// A device's way to this server with `token`.
    fn with_token(&self, token: &str) -> HubAddr {
        HubAddr::Server {
            url: self.url.clone(),
            token: Some(token.to_owned()),
        }
    }

    /// Every contact on the hub, as (owner, name), sorted.
    async fn contacts(&self) -> Result<Vec<(String, String)>, Failure> {
        let db = self.server.hub().connection();
        let mut rows: Vec<(String, String)> = contacts::Entity::find()
            .all(db)
            .await?
            .into_iter()
            .map(|c| (c.owner.unwrap_or_default(), c.name))
            .collect();
        rows.sort();
        Ok(rows)
    }

    async fn stop(self) -> Result<(), Failure> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| Failure::Other(Box::new(e)))??;
        Ok(self.server.hub().connection().clone().close().await?)
    }
}

/// Part three: two users, each with a laptop and a phone, through a hub
/// server; each user's devices converge and never hold the other's
/// contacts.
async fn two_users(dir: &Path) -> Result<(), Failure> {
    println!();
    println!("10. Part three: a hub server and two users, alice and bob, each with a");
    println!("    laptop and a phone. The devices reach the hub over HTTP with a token");
    println!("    instead of database credentials, and each contact belongs to the user");
    println!("    who added it (its `owner` column, `#[syncable(owner = \"owner\")]`).");
    let server = DemoServer::start(&dir.join("hub-server.db")).await?;
    let result = async {
        println!(
            "   A hub server runs in this process at {}, over a SQLite hub.",
            server.url
        );
        let alice = server.with_token(&server.token("alice").await?);
        let bob = server.with_token(&server.token("bob").await?);
        println!("   It makes a token for each user (`server.tokens().add(user)`).");
        let policy = Policy::Lww;
        let file = |name: &str| dir.join(name);
        let alice_laptop =
            Device::of_user("alice's laptop", &file("alice-laptop.db"), policy, "alice").await?;
        let alice_phone =
            Device::of_user("alice's phone", &file("alice-phone.db"), policy, "alice").await?;
        let bob_laptop =
            Device::of_user("bob's laptop", &file("bob-laptop.db"), policy, "bob").await?;
        let bob_phone =
            Device::of_user("bob's phone", &file("bob-phone.db"), policy, "bob").await?;

        println!();
        println!("11. Each user adds contacts on their laptop, then every device syncs.");
        let ada = alice_laptop
            .local
            .add("Ada Lovelace", Some("ada@example.org".into()), None)
            .await?;
        alice_laptop.local.add("Grace Hopper", None, None).await?;
        let alan = bob_laptop
            .local
            .add("Alan Turing", Some("alan@example.org".into()), None)
            .await?;
        println!("   alice's laptop adds Ada Lovelace and Grace Hopper; bob's laptop adds");
        println!("   Alan Turing");
        alice_laptop.sync(&alice).await?;
        bob_laptop.sync(&bob).await?;
        alice_phone.sync(&alice).await?;
        bob_phone.sync(&bob).await?;

        println!();
        println!("12. Every device goes offline and edits.");
        let ada_phone = "+44 20 7946 0000";
        let ada_email = "ada@analytical-engine.org";
        let alan_phone = "+44 161 000 0000";
        alice_laptop
            .local
            .edit(
                ada.id,
                Edit {
                    phone: Some(ada_phone.into()),
                    ..Edit::default()
                },
            )
            .await?;
        println!("   alice's laptop sets Ada's phone to {ada_phone}");
        alice_phone
            .local
            .edit(
                ada.id,
                Edit {
                    email: Some(ada_email.into()),
                    ..Edit::default()
                },
            )
            .await?;
        println!("   alice's phone changes Ada's email to {ada_email}");
        alice_phone.local.add("Barbara Liskov", None, None).await?;
        println!("   alice's phone adds Barbara Liskov");
        bob_phone
            .local
            .edit(
                alan.id,
                Edit {
                    phone: Some(alan_phone.into()),
                    ..Edit::default()
                },
            )
            .await?;
        println!("   bob's phone sets Alan's phone to {alan_phone}");
        bob_laptop.local.add("Edsger Dijkstra", None, None).await?;
        println!("   bob's laptop adds Edsger Dijkstra");

        println!();
        println!("13. Back online: each user's devices sync, the first one twice.");
        alice_laptop.sync(&alice).await?;
        bob_phone.sync(&bob).await?;
        alice_phone.sync(&alice).await?;
        bob_laptop.sync(&bob).await?;
        alice_laptop.sync(&alice).await?;
        bob_phone.sync(&bob).await?;

        println!();
        println!("14. A token the server revoked is refused; nothing is read or written.");
        let revoked = server.token("alice").await?;
        server.server.tokens().revoke(&revoked).await?;
        match alice_phone.local.sync(&server.with_token(&revoked)).await {
            Err(refused @ Failure::Refused { .. }) => {
                println!("   alice's phone syncs with a revoked token: {refused}")
            }
            Err(other) => return Err(other),
            Ok(report) => {
                return Err(Failure::Other(
                    format!("demo check failed: a revoked token synced: {report}").into(),
                ));
            }
        }

        println!();
        println!("15. Final rows.");
        let on_alice_laptop = alice_laptop.show().await?;
        let on_alice_phone = alice_phone.show().await?;
        let on_bob_laptop = bob_laptop.show().await?;
        let on_bob_phone = bob_phone.show().await?;
        expect(
            synced_fields(&on_alice_laptop) == synced_fields(&on_alice_phone),
            "alice's devices hold identical rows",
        )?;
        expect(
            synced_fields(&on_bob_laptop) == synced_fields(&on_bob_phone),
            "bob's devices hold identical rows",
        )?;
        let names = |rows: &[contacts::Model]| -> Vec<String> {
            rows.iter().map(|c| c.name.clone()).collect()
        };
        expect(
            names(&on_alice_laptop) == ["Ada Lovelace", "Barbara Liskov", "Grace Hopper"],
            "alice has her three contacts and none of bob's",
        )?;
        expect(
            names(&on_bob_laptop) == ["Alan Turing", "Edsger Dijkstra"],
            "bob has his two contacts and none of alice's",
        )?;
        expect(
            on_alice_laptop.iter().any(|c| {
                c.id == ada.id
                    && c.phone.as_deref() == Some(ada_phone)
                    && c.email.as_deref() == Some(ada_email)
            }),
            "Ada keeps the laptop's phone and the phone's email",
        )?;
        expect(
            on_bob_laptop
                .iter()
                .any(|c| c.id == alan.id && c.phone.as_deref() == Some(alan_phone)),
            "Alan has the phone set on bob's phone",
        )?;
        let on_hub = server.contacts().await?;
        let owners = |user: &str| on_hub.iter().filter(|(o, _)| o == user).count();
        expect(
            on_hub.len() == 5 && owners("alice") == 3 && owners("bob") == 2,
            "the hub holds alice's three contacts and bob's two",
        )?;
        println!("   Each user's devices hold identical rows, with both offline edits of");
        println!("   Ada merged; alice's contacts are absent from bob's devices and bob's");
        println!(
            "   from alice's, while the hub holds all {} (3 of alice, 2 of bob).",
            on_hub.len()
        );
        for d in [alice_laptop, alice_phone, bob_laptop, bob_phone] {
            d.local.close().await?;
        }
        Ok(())
    }
    .await;
    let stopped = server.stop().await;
    result.and(stopped)
}
