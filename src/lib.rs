#![doc = include_str!("../README.md")]

pub use sync_core::{
    ApplyReport, AutoSync, CaptureReport, Change, ChangeId, ColumnBase, ColumnConflict, ColumnSpec,
    ConflictPolicy, Error, ErrorKind, HeldConflict, Hlc, HlcClock, NodeId, Op, Replica,
    ReplicaBuilder, Resolution, Resolver, Result, RowState, SyncEngine, SyncHandle, SyncHooks,
    SyncPhase, SyncProgress, SyncReport, SyncStatus, Syncable, TableSpec, create_table, table_spec,
    validate_active_model,
};
pub use sync_derive::Syncable;

/// Lower-level building blocks: the clock, values, merge, the metadata schema.
pub mod core {
    pub use sync_core::{
        apply, backend, background, capture, change, clock, conflict, engine, error, merge, pull,
        resolve, schema, store, value,
    };
}

/// Hub backends: the [`Backend`](backends::Backend) trait and the SQL hub.
pub mod backends {
    pub use sync_backends::sql;
    pub use sync_backends::{
        Backend, Cursor, HubInfo, PullBatch, PushAck, RejectPolicy, Rejection, SnapshotPage,
        SnapshotRow, SqlBackend, Unreadable,
    };
}

/// The most used items, for `use tidesync::prelude::*`.
pub mod prelude {
    pub use crate::backends::SqlBackend;
    pub use crate::{ConflictPolicy, Replica, SyncEngine, SyncHooks, Syncable};
}

#[doc(hidden)]
pub mod __private {
    pub use async_trait;
    pub use sea_orm;
    pub use sync_core::validate_active_model;
}
