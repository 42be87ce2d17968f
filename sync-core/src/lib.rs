//! The core of tidesync: the change model, the hybrid logical clock, the
//! [`Syncable`] trait, capture of local writes and the local store.
//!
//! It knows no transport: hub backends live in `sync-backends` and depend on
//! this crate, never the reverse. Applications use the `tidesync` facade.

pub mod capture;
pub mod change;
pub mod clock;
pub mod error;
pub mod merge;
pub mod replica;
pub mod schema;
pub mod store;
pub mod syncable;
pub mod value;

pub use capture::CaptureReport;
pub use change::{Change, ChangeId, ColumnSpec, Op, TableSpec};
pub use clock::{Hlc, HlcClock, NodeId};
pub use error::{Error, ErrorKind, Result};
pub use merge::RowState;
pub use replica::{Replica, ReplicaBuilder};
pub use syncable::{ConflictPolicy, SyncHooks, Syncable};
pub use value::validate_active_model;
