#![doc = include_str!("../README.md")]

pub use sync_core::{
    AutoSync, CaptureReport, Change, ChangeId, ColumnBase, ColumnConflict, ColumnSpec,
    ConflictPolicy, Error, ErrorKind, HeldConflict, Hlc, HubBehind, NodeId, Op, Ownership,
    ReconcileReport, RejectPolicy, Renewal, RenewalCause, Replica, ReplicaBuilder, Resolution,
    Resolver, Result, SyncEngine, SyncHandle, SyncHooks, SyncPhase, SyncProgress, SyncReport,
    SyncStatus, Syncable, TableSpec, WrongClock, create_table, table_spec, validate_active_model,
};
pub use sync_derive::Syncable;

pub use sync_core::hub;

/// Sync over HTTP: [`HttpBackend`](http::HttpBackend) (feature
/// `http-client`) and [`HubServer`](http::HubServer) (feature
/// `http-server`).
#[cfg(any(feature = "http-client", feature = "http-server"))]
pub mod http {
    pub use sync_http::*;
}

/// The most used items, for `use tidesync::prelude::*`.
pub mod prelude {
    pub use crate::hub::SqlHub;
    pub use crate::{ConflictPolicy, Replica, SyncEngine, SyncHooks, Syncable};
}

#[doc(hidden)]
pub mod __private {
    pub use async_trait;
    pub use sea_orm;
    pub use sync_core::validate_active_model;
}
