//! The Clacks agent: domain naming, command registry, JSON-RPC dispatch, events and presence,
//! the command plugins, and the entry the HTTP gateway calls through.

pub mod acl;
pub mod core_commands;
pub mod dispatch;
pub mod events;
pub mod forward;
pub mod gateway;
pub mod jsonrpc;
pub mod names;
pub mod plugin;
pub mod plugins;
pub mod presence;
pub mod registry;
pub mod service;
pub mod state;
