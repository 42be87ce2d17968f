//! Hub backends for tidesync.
//!
//! A hub is where replicas meet: it takes the changes a replica captured,
//! hands back the changes other replicas made, and keeps the users' tables
//! current so other programs can query them. The [`Backend`] trait lives in
//! `sync-core`; this crate implements it and depends on the core, never the
//! reverse.
//!
//! - [`SqlBackend`]: the hub is a PostgreSQL, MySQL/MariaDB or SQLite
//!   database reached directly; all SQL is built with sea-query.

pub mod sql;

pub use sql::SqlBackend;
pub use sync_core::backend::{
    Backend, Cursor, HubInfo, PullBatch, PushAck, RejectPolicy, Rejection, SnapshotPage,
    SnapshotRow, Unreadable,
};
pub use sync_core::{Error, Result};
