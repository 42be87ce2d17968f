//! Layer 1, the model: what tidesync knows without any database. Pure code,
//! no I/O.
//!
//! - [`change`]: a captured change and the description of a synced table;
//! - [`column_type`]: the serde form of a column type, as a
//!   [`TableSpec`](change::TableSpec) travels;
//! - [`clock`]: node ids and the hybrid logical clock;
//! - [`merge`]: a row's replicated state and its merge rule;
//! - [`conflict`]: concurrent edits of a column and how they are settled;
//! - [`syncable`]: the trait `#[derive(Syncable)]` implements;
//! - [`value`]: checks that hold on every database, key text;
//! - [`value_kind`]: which value variant a column holds, and its serde form;
//! - [`protocol`]: the [`Hub`](protocol::Hub) trait, what a replica
//!   and a hub say to each other;
//! - [`error`]: the error type.

pub(crate) mod change;
pub(crate) mod clock;
pub(crate) mod column_type;
pub(crate) mod conflict;
pub(crate) mod error;
pub(crate) mod merge;
pub(crate) mod protocol;
pub(crate) mod syncable;
pub(crate) mod typed;
pub(crate) mod value;
pub(crate) mod value_kind;

#[cfg(test)]
pub(crate) mod testing;
