//! Durable storage for the broker: the `Store` trait and its sled implementation.
//!
//! Nothing is implemented yet; persistence arrives with its own issue.
