//! Command plugins beyond the core ones.

pub mod broker;
