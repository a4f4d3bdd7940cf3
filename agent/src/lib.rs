//! The Clacks agent: domain naming, command registry, JSON-RPC dispatch, events and presence.
//!
//! Implemented so far: [`events`] (event XML, its XSD schemas and validation).

pub mod events;
