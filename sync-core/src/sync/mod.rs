//! Layer 5, sync: the [`engine`] that syncs a replica with a hub through
//! the [`Hub`](crate::hub::Hub) trait, and the [`background`] task that runs
//! it on a schedule. `background` builds on `engine`, never the reverse.

pub(crate) mod background;
pub(crate) mod engine;
