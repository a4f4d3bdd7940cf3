//! Plugins that ship with the agent besides `core`.

pub mod script;
