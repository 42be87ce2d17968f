//! Hub backends for tidesync.
//!
//! A [`Backend`] is where replicas meet: it takes the changes a replica
//! captured, hands back the changes other replicas made, and keeps the hub
//! tables. The SQL hub (PostgreSQL, MySQL/MariaDB, SQLite through sea-query)
//! and the HTTP transport implement it; this crate depends on `sync-core`,
//! never the reverse.

use sync_core::{Change, ChangeId, TableSpec};

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of a hub backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The hub cannot be reached; the batch was not applied and can be
    /// retried as-is.
    #[error("hub unreachable: {0}")]
    Offline(String),
    /// An error of the core (database, payload, values).
    #[error(transparent)]
    Core(#[from] sync_core::Error),
}

impl Error {
    /// `true` when retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Offline(_) => true,
            Error::Core(e) => e.is_retryable(),
        }
    }
}

/// A position in the hub's change log: pull returns the changes after it.
/// Cursors are gap-free: a change that commits late is never skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(pub u64);

/// The hub's answer to a push.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PushAck {
    /// Changes of the batch that the hub now holds (applied now or before).
    pub acknowledged: Vec<ChangeId>,
}

/// A page of changes from the hub.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PullBatch {
    /// Changes after the requested cursor, in hub order.
    pub changes: Vec<Change>,
    /// The cursor to ask from next time.
    pub next: Cursor,
}

/// A hub. Three required methods; everything else is built on them.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Prepare the hub for these tables (idempotent).
    async fn install(&self, tables: &[TableSpec]) -> Result<()>;

    /// Apply a batch of one origin's changes, in order, at most once each.
    async fn push(&self, batch: &[Change]) -> Result<PushAck>;

    /// Up to `limit` changes after `cursor`.
    async fn pull(&self, cursor: Cursor, limit: u64) -> Result<PullBatch>;
}
