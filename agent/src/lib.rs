//! The Clacks agent: domain naming, command registry, JSON-RPC dispatch, events and presence.
//!
//! In progress: the wire formats (names, JSON-RPC messages, error records) and the
//! capability map are here; the running agent (queues, dispatch, presence) comes next.

pub mod acl;
pub mod dispatch;
pub mod jsonrpc;
pub mod names;
pub mod registry;
