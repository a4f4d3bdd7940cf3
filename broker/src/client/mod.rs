//! The async AMQP 0-10 client: connections, sessions, commands, transfers and
//! subscriptions, on tokio. Layer: `client` uses `wire` only; it never touches `server` or
//! `core`.
//!
//! ```text
//!   Connection ──(requests over a channel)──► driver task ──► socket
//!   Session, Subscription                      │  Machine (no I/O): negotiation,
//!        ▲                                     │  heartbeats, command ids, completion
//!        └────────(oneshot replies, deliveries)┘
//! ```
//! One spawned driver task owns the socket and a sans-IO `Machine` that holds all
//! protocol state; the handles only send requests and wait for replies. The command
//! helpers (`declare_queue`, `query_queue`, `sync`, ...) set the sync bit and return once
//! the broker's `session.completed` covers the command (with its `execution.result`, if it
//! has one). Transfers and acknowledgements return a [`Completion`] instead, so that many
//! can be in flight; awaiting one makes sure the broker reports it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), clacks_broker::client::ClientError> {
//! use clacks_broker::client::{Connection, ConnectOptions, Message, SubscribeOptions};
//! use clacks_broker::wire::QueueDeclare;
//!
//! let conn = Connection::open(ConnectOptions::parse("amqp://guest:guest@127.0.0.1:5672")?).await?;
//! let session = conn.session("demo").await?;
//! session
//!     .declare_queue(QueueDeclare { queue: Some("q".into()), ..Default::default() })
//!     .await?;
//! session.send("", Message::new("hello").with_routing_key("q")).await?;
//! let mut sub = session.subscribe("q", SubscribeOptions::default()).await?;
//! if let Some(delivery) = sub.next().await? {
//!     // Sent at once; awaiting the completion waits for the broker to have processed it.
//!     sub.accept(&delivery).await?.await?;
//! }
//! conn.close().await
//! # }
//! ```

mod connection;
mod driver;
mod error;
mod machine;
mod message;
mod options;
mod session;
mod subscription;
mod tls;

pub use connection::Connection;
pub use error::ClientError;
pub use machine::Negotiated;
pub use message::{random_uuid, Delivery, Message};
pub use options::{
    default_client_properties, ConnectOptions, TlsOptions, DEFAULT_PORT, DEFAULT_TLS_PORT,
};
pub use session::{Completion, Session};
pub use subscription::{SubscribeOptions, Subscription};

#[cfg(test)]
mod tests;
