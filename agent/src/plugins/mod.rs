//! Plugins that ship with the agent besides `core`: the broker administration and the
//! script plugins.

mod args;
pub mod broker;
pub mod federation;
pub mod script;
