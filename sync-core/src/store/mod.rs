//! Layer 3, the store: how tidesync keeps its data in a SQL database,
//! shared by the replica and the hub.
//!
//! - [`rows`]: row states (values and per-column clocks) as JSON in a
//!   row-state table: the hub's states, and a replica's before schema
//!   version 2;
//! - [`clocks`]: a row's column clocks as stored;
//! - [`versions`]: row states in binary, for version tables;
//! - [`version_table`]: row states in version tables, one per synced
//!   table (a replica's, and a hub's);
//! - [`write`]: batched writes of rows into the users' tables;
//! - [`user_tables`]: the users' tables as tidesync creates them;
//! - [`ddl`]: building blocks of every table's DDL;
//! - [`meta`]: key/value metadata tables;
//! - [`codec`]: stored changes, for the outbox and the hub log alike;
//! - [`stats`]: planner help.
//!
//! The store names no table of its own: the replica and the hub own their
//! tables and pass their names in.

pub(crate) mod clocks;
pub(crate) mod codec;
pub(crate) mod ddl;
pub(crate) mod meta;
pub(crate) mod rows;
pub(crate) mod stats;
pub(crate) mod user_tables;
pub(crate) mod version_table;
pub(crate) mod versions;
pub(crate) mod write;
