//! Layer 4, the hub: [`SqlHub`], a hub that is an ordinary PostgreSQL,
//! MySQL/MariaDB or SQLite database reached directly, and the [`Hub`] trait
//! with the messages a replica and a hub exchange, for writing other hubs.
//!
//! A push is one hub transaction: take the sequence lock, skip what this
//! origin already delivered, check each change against the hub's dialect,
//! merge the changes into the row states (per-column last-writer-wins), write
//! the resulting rows into the users' tables with multi-row statements
//! (parents first, deletes children first), give the changes consecutive
//! hub sequence numbers and each changed row's version row the position
//! of its latest change, record the batch (`batches`: the changes' ids and
//! digests, one row) and the origin's progress, commit. Because positions
//! are assigned and committed under one lock, a puller reading the rows
//! after its cursor never skips a change that commits late (see `since`).
//!
//! The row states are in one version table per synced table (see
//! `versions`): the key in the users' table's own types, the column
//! clocks, the delete clock, the values in binary and the row's position.
//! Pulls read them, pulls of changes (clients of earlier releases) too,
//! each row as the changes of its clocks. The log of releases before hub
//! schema version 5 (`log`) is no longer written; it is kept, and read for
//! the changes applied before batch records.
//!
//! Everything needed to write another hub (a transport to a remote one, a
//! wrapper that counts or fails calls) is exported here: implement [`Hub`]
//! with these types and pass it to `SyncEngine::new`.

mod access;
mod batches;
mod held;
mod log;
mod merge;
mod owner;
mod push;
mod resent;
mod since;
mod snapshot;
mod states;
pub(crate) mod tables;
mod token;
mod users;
mod validate;
mod versions;
mod visible;

use sea_orm::sea_query::{Alias, Order, Query};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tokio::sync::RwLock;

pub use crate::model::conflict::{Merged, merge_with_policy};
pub use crate::model::merge::RowState;
pub use crate::model::protocol::{
    ClockAhead, Cursor, Hub, HubInfo, PullBatch, PushAck, RejectPolicy, Rejection, STATE_ORIGIN,
    SnapshotPage, SnapshotRow, Standing, StatePage, Unreadable,
};
pub use access::{Account, Authorize, UserHub};

use crate::model::change::{Change, ChangeId, TableSpec};
use crate::model::clock::NodeId;
use crate::model::error::{Error, ErrorKind, Result};
use crate::store::codec::sequence;
use tables::REJECTED;

/// The default of [`SqlHub::with_max_clock_skew`].
const DEFAULT_MAX_SKEW: std::time::Duration = std::time::Duration::from_secs(300);

/// A hub in a SQL database. See the [module docs](self).
pub struct SqlHub {
    db: DatabaseConnection,
    policy: RejectPolicy,
    /// How far ahead of the hub's clock a pushed change may be stamped.
    max_skew: std::time::Duration,
    /// The tables of the last install.
    tables: RwLock<Vec<TableSpec>>,
    /// The version tables seen with every column of a position (they keep
    /// them: see `since`).
    positioned: since::Seen,
}

impl std::fmt::Debug for SqlHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlHub")
            .field("database", &self.db.get_database_backend())
            .field("policy", &self.policy)
            .finish()
    }
}

impl SqlHub {
    /// A hub over an existing connection.
    pub fn new(db: DatabaseConnection) -> Self {
        SqlHub {
            db,
            policy: RejectPolicy::Halt,
            max_skew: DEFAULT_MAX_SKEW,
            tables: RwLock::new(Vec::new()),
            positioned: since::Seen::default(),
        }
    }

    /// Connect to a hub by URL (`postgres://`, `mysql://`, `sqlite://`),
    /// giving up after 10 seconds.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL no driver accepts; [`Error::Offline`]
    /// when the server cannot be reached (or refuses the login: the message
    /// says which).
    pub async fn connect(url: &str) -> Result<Self> {
        let timeout = std::time::Duration::from_secs(10);
        Self::connect_with(
            sea_orm::ConnectOptions::new(url)
                .connect_timeout(timeout)
                .acquire_timeout(timeout)
                .to_owned(),
        )
        .await
    }

    /// Connect with SeaORM's connection options (pool size, timeouts, ...).
    ///
    /// # Errors
    /// As [`SqlHub::connect`].
    pub async fn connect_with(options: sea_orm::ConnectOptions) -> Result<Self> {
        let url = options.get_url().to_owned();
        let scheme_ok = [
            "postgres://",
            "postgresql://",
            "mysql://",
            "mariadb://",
            "sqlite:",
        ]
        .iter()
        .any(|p| url.starts_with(p));
        if !scheme_ok {
            return Err(Error::Config(format!(
                "`{url}` is not a hub URL: expected postgres://, mysql:// or sqlite:"
            )));
        }
        match Database::connect(options).await {
            Ok(db) => Ok(Self::new(db)),
            Err(e @ sea_orm::DbErr::Conn(_)) if e.to_string().contains("URL") => {
                Err(Error::Config(e.to_string()))
            }
            Err(e) => Err(Error::Offline(e.to_string())),
        }
    }

    /// How far ahead of the hub database's clock a pushed change may be
    /// stamped (default five minutes). A change stamped further ahead comes
    /// from a device whose clock is wrong: merged, it would win every later
    /// edit of its columns and carry its time to every device. It is
    /// refused whatever the policy, and its origin's stream halts there: it
    /// stays queued on the device, and the device's `SyncReport::halted`
    /// names the device and the skew.
    pub fn with_max_clock_skew(mut self, max: std::time::Duration) -> Self {
        self.max_skew = max;
        self
    }

    /// Choose what happens to a change the hub cannot apply.
    pub fn with_policy(mut self, policy: RejectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The hub's connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The last sequence of `origin` this hub holds (applied or parked), 0
    /// for an origin it never heard of.
    async fn applied(&self, origin: NodeId) -> Result<u64> {
        push::applied(&self.db, origin).await
    }

    /// Changes parked by policy `Park`: (change id, table, reason).
    pub async fn rejected(&self) -> Result<Vec<Rejection>> {
        let q = Query::select()
            .columns(["origin", "origin_seq", "tbl", "reason"].map(Alias::new))
            .from(Alias::new(REJECTED))
            .order_by(Alias::new("origin"), Order::Asc)
            .order_by(Alias::new("origin_seq"), Order::Asc)
            .to_owned();
        let mut out = Vec::new();
        for r in self.db.query_all(&q).await? {
            let origin: String = r.try_get("", "origin")?;
            out.push(Rejection {
                id: ChangeId {
                    origin: origin.parse()?,
                    seq: sequence(&r, "origin_seq")?,
                },
                table: r.try_get("", "tbl")?,
                reason: r.try_get("", "reason")?,
            });
        }
        Ok(out)
    }
}

impl SqlHub {
    /// Install `tables`. Returns them as the hub placed them (their
    /// schema, the ownership it records). A direct install keeps them to
    /// merge its own pushes with ([`Hub::install`]); an account's keeps
    /// them in its [`UserHub`], never here (a server's users would
    /// otherwise set the specs of each other's direct pushes).
    async fn install_tables(&self, tables: &[TableSpec]) -> Result<(HubInfo, Vec<TableSpec>)> {
        // An install is idempotent. Two at once on a hub that lacks a
        // table (devices whose first syncs meet, or two hub servers) race
        // in PostgreSQL's `CREATE TABLE IF NOT EXISTS`, whose loser fails
        // with a unique violation in the catalog (`pg_type`) or "type
        // (relation) already exists", as in an `insert_if_missing` of the
        // metadata: it installs again and finds what the other made. It
        // waits a little longer each time first: installing again at once,
        // it would meet the other install at its next table.
        let lost_a_race = |e: &Error| {
            e.kind() == ErrorKind::UniqueViolation
                || matches!(
                    crate::dialect::native_code(e).as_deref(),
                    Some("42P07" | "42710")
                )
        };
        let mut attempts = 0;
        let (info, placed) = loop {
            let installed = match tables::install(&self.db, tables).await {
                Ok((info, placed)) => versions::install_all(&self.db, &placed)
                    .await
                    .map(|()| (info, placed)),
                Err(e) => Err(e),
            };
            match installed {
                Err(e) if lost_a_race(&e) && attempts < 10 => {
                    attempts += 1;
                    tracing::debug!("install raced another one, installing again: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(25 * attempts)).await;
                }
                other => break other.map_err(Error::or_offline)?,
            }
        };
        Ok((info, placed))
    }

    /// A push of the device whose tables are `specs`, checked against
    /// `account` if there is one.
    async fn push_as(
        &self,
        batch: &[Change],
        account: Option<&Account>,
        specs: &[TableSpec],
    ) -> Result<PushAck> {
        let max_skew_us = u64::try_from(self.max_skew.as_micros()).unwrap_or(u64::MAX);
        push::push(&self.db, specs, self.policy, max_skew_us, batch, account).await
    }

    /// The rows changed after `cursor`, leaving out those whose every
    /// column `skip`'s pushes set.
    async fn states(&self, cursor: Cursor, limit: u64, skip: Option<NodeId>) -> Result<StatePage> {
        let specs = self.tables.read().await.clone();
        since::read(
            &self.db,
            &self.positioned,
            &specs,
            cursor,
            limit,
            skip,
            None,
        )
        .await
    }

    /// A snapshot page, of the rows `visible` shows if given, leaving out
    /// those whose every column `skip`'s pushes set.
    async fn snapshot_for(
        &self,
        after: Option<String>,
        limit: u64,
        visible: Option<&visible::Visible>,
        specs: Option<&[TableSpec]>,
        skip: Option<NodeId>,
    ) -> Result<(Cursor, SnapshotPage)> {
        match specs {
            Some(specs) => snapshot::page(&self.db, specs, after, limit, visible, skip).await,
            None => {
                let specs = self.tables.read().await.clone();
                snapshot::page(&self.db, &specs, after, limit, visible, skip).await
            }
        }
    }
}

#[async_trait::async_trait]
impl Hub for SqlHub {
    async fn install(&self, tables: &[TableSpec]) -> Result<HubInfo> {
        let (info, placed) = self.install_tables(tables).await?;
        *self.tables.write().await = placed;
        Ok(info)
    }

    async fn push(&self, batch: &[Change]) -> Result<PushAck> {
        let specs = self.tables.read().await.clone();
        self.push_as(batch, None, &specs).await
    }

    async fn standing(&self, origin: NodeId, at: Option<Cursor>) -> Result<Standing> {
        let applied = push::applied(&self.db, origin)
            .await
            .map_err(Error::or_offline)?;
        let at = match at {
            Some(c) => log::id_at(&self.db, c, None).await?,
            None => None,
        };
        Ok(Standing {
            applied: Some(applied),
            tip: Some(Cursor(log::tip(&self.db).await?)),
            at,
        })
    }

    /// The rows changed after `cursor`, as changes (see
    /// [`StatePage`]'s conversion): the hub keeps states, not the changes
    /// that made them.
    async fn pull(&self, cursor: Cursor, limit: u64) -> Result<PullBatch> {
        Ok(self.states(cursor, limit, None).await?.into())
    }

    async fn pull_excluding(
        &self,
        cursor: Cursor,
        limit: u64,
        origin: NodeId,
    ) -> Result<PullBatch> {
        Ok(self.states(cursor, limit, Some(origin)).await?.into())
    }

    async fn pull_states(&self, cursor: Cursor, limit: u64, origin: NodeId) -> Result<StatePage> {
        self.states(cursor, limit, Some(origin)).await
    }

    async fn snapshot(&self, after: Option<String>, limit: u64) -> Result<(Cursor, SnapshotPage)> {
        self.snapshot_for(after, limit, None, None, None).await
    }

    async fn snapshot_excluding(
        &self,
        after: Option<String>,
        limit: u64,
        origin: NodeId,
    ) -> Result<(Cursor, SnapshotPage)> {
        self.snapshot_for(after, limit, None, None, Some(origin))
            .await
    }
}
