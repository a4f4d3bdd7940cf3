//! The Clacks agent: domain naming, command registry, JSON-RPC dispatch, events and presence.
//!
//! In progress: the wire formats (names, JSON-RPC messages and error records, event XML
//! with its schemas), the capability map, call planning and the agent ACL are here; the
//! running agent (queues, presence, the command plugins) comes next.

pub mod acl;
pub mod core_commands;
pub mod dispatch;
pub mod events;
pub mod jsonrpc;
pub mod names;
pub mod plugin;
pub mod plugins;
pub mod presence;
pub mod registry;
pub mod service;
pub mod state;
