#![doc = include_str!("../README.md")]

pub use sync_core::{
    CaptureReport, Change, ChangeId, ColumnSpec, ConflictPolicy, Error, ErrorKind, Hlc, HlcClock,
    NodeId, Op, Replica, ReplicaBuilder, Result, SyncHooks, Syncable, TableSpec,
    validate_active_model,
};
pub use sync_derive::Syncable;

/// Lower-level building blocks: the clock, values, the metadata schema.
pub mod core {
    pub use sync_core::{capture, change, clock, error, schema, value};
}

/// Hub backends.
pub mod backends {
    pub use sync_backends::{Backend, Cursor, Error, PullBatch, PushAck, Result};
}

/// The most used items, for `use tidesync::prelude::*`.
pub mod prelude {
    pub use crate::{ConflictPolicy, Replica, SyncHooks, Syncable};
}

#[doc(hidden)]
pub mod __private {
    pub use async_trait;
    pub use sea_orm;
    pub use sync_core::validate_active_model;
}
