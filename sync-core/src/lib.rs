//! The engine of tidesync: capture of local writes, the replica's store, the
//! SQL hub and the sync engine. Applications use it through the `tidesync`
//! facade, which re-exports exactly this crate's public items.
//!
//! # Layers
//!
//! Five layers, each module importing only from its own layer or the
//! layers below, and never in a circle (`tests/layers.rs` checks both):
//!
//! 1. `model`: pure, no I/O. Changes, the hybrid logical clock, the
//!    row-state merge, conflicts, portable value checks, the `Syncable`
//!    trait, the [`Hub`](hub::Hub) trait and its messages, errors.
//! 2. `dialect`: everything that differs between PostgreSQL, MySQL and
//!    SQLite, one file per database. The only place that matches on the
//!    kind of database.
//! 3. `store`: how tidesync keeps data in a SQL database: row states,
//!    batched row writes, the users' tables, key/value metadata, and one
//!    codec of stored changes for the outbox and the hub log.
//! 4. `replica` and [`hub`], side by side: the device's database
//!    (capture, outbox, applying pulled pages, held conflicts) and the SQL
//!    hub (install, push, log, snapshot). Each names and creates its own
//!    `_tidesync_*` tables. Neither imports the other.
//! 5. `sync`: the engine and its background task, written against the
//!    [`Hub`](hub::Hub) trait.
//!
//! A local write travels up and across: a trigger (dialect) leaves a
//! marker, capture (replica) diffs the row against its shadow (store) into a
//! [`Change`] (model) in the outbox (replica, store codec); the engine
//! (sync) pushes it; the SQL hub (hub) merges it into its row states
//! (store) and logs it; another replica's engine pulls it and applies it
//! (replica).
//!
//! Everything but the items re-exported below is crate-private: the public
//! API is this list, checked in CI against a recorded copy.

pub(crate) mod dialect;
pub mod hub;
pub(crate) mod model;
pub(crate) mod replica;
pub(crate) mod store;
pub(crate) mod sync;

pub use dialect::validate_active_model;
pub use model::change::{Change, ChangeId, ColumnBase, ColumnSpec, Op, TableSpec};
pub use model::clock::{Hlc, NodeId};
pub use model::conflict::{ColumnConflict, Resolution, Resolver};
pub use model::error::{Error, ErrorKind, Result};
pub use model::protocol::RejectPolicy;
pub use model::syncable::{ConflictPolicy, Ownership, SyncHooks, Syncable};
pub use replica::capture::CaptureReport;
pub use replica::conflicts::HeldConflict;
pub use replica::reconcile::ReconcileReport;
pub use replica::{Replica, ReplicaBuilder, create_table, table_spec};
pub use sync::background::{AutoSync, SyncHandle, SyncPhase, SyncStatus};
pub use sync::engine::{
    HubBehind, Renewal, RenewalCause, SyncEngine, SyncProgress, SyncReport, WrongClock,
};
