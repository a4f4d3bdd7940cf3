//! The broker model: exchanges, queues, bindings, consumers, credit and delivery.
//! Synchronous, no sockets and no framing; the server adapts 0-10 commands onto it.

pub mod broker;
pub mod consumer;
pub mod dtx;
pub mod error;
pub mod exchange;
pub mod groups;
pub mod journal;
pub mod memory;
pub mod message;
pub mod observer;
pub mod queue;
pub mod snapshot;
pub mod stats;

pub use broker::{BindingSummary, Broker, ExchangeDeclare, Held, QueueDeclare, Subscribe};
pub use consumer::{Credit, Delivery, DeliverySink};
pub use error::Error;
pub use message::{Draft, Message};
pub use queue::Position;

/// Identifies an attached session to the broker (exclusive ownership, consumers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);
