//! The core of tidesync: the change model, the hybrid logical clock, the
//! [`Syncable`] trait, capture of local writes and the local store.
//!
//! It knows no transport: hub backends live in `sync-backends` and depend on
//! this crate, never the reverse. Applications use the `tidesync` facade.

pub mod apply;
pub mod backend;
pub mod background;
pub mod capture;
pub mod change;
pub mod clock;
pub mod conflict;
pub mod engine;
pub mod error;
pub mod merge;
pub mod pull;
pub mod replica;
pub mod resolve;
pub mod schema;
pub mod store;
pub mod syncable;
pub mod value;

pub use backend::{
    Backend, Cursor, HubInfo, PullBatch, PushAck, Rejection, SnapshotPage, SnapshotRow,
};
pub use background::{AutoSync, SyncHandle, SyncPhase, SyncProgress, SyncStatus};
pub use capture::{CaptureReport, create_table, table_spec};
pub use change::{Change, ChangeId, ColumnBase, ColumnSpec, Op, TableSpec};
pub use clock::{Hlc, HlcClock, NodeId};
pub use conflict::{ColumnConflict, Resolution, Resolver};
pub use engine::{SyncEngine, SyncReport};
pub use error::{Error, ErrorKind, Result};
pub use merge::RowState;
pub use pull::ApplyReport;
pub use replica::{Replica, ReplicaBuilder};
pub use resolve::HeldConflict;
pub use syncable::{ConflictPolicy, SyncHooks, Syncable};
pub use value::validate_active_model;
