//! tidesync over HTTP: devices that must not hold database credentials
//! reach the hub through a server, with accounts.
//!
//! - [`HttpBackend`] (feature `client`): a [`Hub`](sync_core::hub::Hub)
//!   reached over HTTP(S) with a bearer token.
//! - [`HubServer`] (feature `server`): any `SqlHub` served over HTTP, with
//!   tokens kept as hashes in the hub database, optional JWTs, and each
//!   user's rows kept theirs. The `tidesync-hub` binary runs it.
//! - [`wire`]: the protocol between them.

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "server")]
pub mod server;
pub mod wire;

#[cfg(feature = "client")]
pub use client::{HttpBackend, HttpBackendBuilder};
#[cfg(feature = "server")]
pub use server::{HubServer, JwtKey, TokenInfo, Tokens};
