//! The AMQP 0-10 side of Clacks: codec, broker core, server and client.
//!
//! ```text
//!   server ──► core (exchanges, queues, consumers)
//!     │
//!     └──► wire ◄── client
//! ```
//! `wire` is the codec generated from the spec and does no I/O. `core` is the broker model:
//! synchronous, no sockets. `server` drives connections over tokio and adapts commands onto
//! `core`; `client` is the async 0-10 client used by the CLI (and later the agent and
//! federation).

pub mod auth;
pub mod client;
pub mod core;
pub mod federation;
pub mod management;
pub mod server;
pub mod wire;
