//! The Clacks agent: domain naming, command registry, JSON-RPC dispatch, events and presence.
//!
//! Nothing is implemented yet; the agent arrives with its own issue.
