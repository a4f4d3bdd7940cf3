//! Durable storage for the broker.
//!
//! ```text
//!   broker core ──StoreOp batches──► GroupCommit (writer thread) ──► Store (sled)
//! ```
//! [`Store`] is the only way broker state reaches the disk: `apply` returns once a batch is
//! durable (synced), and `recover` reads everything back at start. [`GroupCommit`] collects
//! batches from many sessions into one write and one sync, and tells each submitter when its
//! batch is durable. The record layouts on disk live in `record`; nothing else knows them.

mod group;
mod kv;
mod memory;
mod record;
mod sled_store;
#[cfg(test)]
mod testing;

pub use group::{Callback, GroupCommit, GroupStats, Refusal, Ticket};
pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// A key and its value as a store keeps them; `None`: the key is removed.
pub type RawRecord = (Vec<u8>, Option<Vec<u8>>);

/// The keys and values (`None`: removed) a store writes for `ops` in an empty store: what
/// a data directory holds, for tools and fuzzing seeds.
///
/// # Errors
/// Operations that cannot be encoded.
pub fn encode_records(ops: &[StoreOp]) -> Result<Vec<RawRecord>, StoreError> {
    kv::writes(ops, |_| Ok(Vec::new()))
}

/// Rebuilds the durable state from raw keys and values, in key order, as a store holds
/// them: what a store's `recover` does, for tools and fuzzing.
///
/// # Errors
/// Records that do not decode.
pub fn recover_entries(
    entries: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>>,
) -> Result<Recovered, StoreError> {
    kv::recover(entries)
}

use bytes::Bytes;
use thiserror::Error;

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRecord {
    /// Name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Alternate exchange.
    pub alternate: Option<String>,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Declare arguments, encoded as a 0-10 map by the broker.
    pub args: Bytes,
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// Name.
    pub name: String,
    /// Alternate exchange.
    pub alternate: Option<String>,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Declare arguments, encoded as a 0-10 map by the broker.
    pub args: Bytes,
}

/// A binding between durable objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRecord {
    /// Exchange name.
    pub exchange: String,
    /// Queue name.
    pub queue: String,
    /// Binding key.
    pub key: String,
    /// Binding arguments, encoded as a 0-10 map by the broker.
    pub args: Bytes,
}

/// A binding between two durable exchanges (AMQP 0-9-1 `exchange.bind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeBindingRecord {
    /// The exchange messages come from.
    pub source: String,
    /// The exchange they go on to.
    pub destination: String,
    /// Binding key.
    pub key: String,
    /// Binding arguments, encoded as a 0-10 map by the broker.
    pub args: Bytes,
}

/// A local user: the name and its credentials, encoded by the broker (the store does not
/// look inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// User name (without realm).
    pub name: String,
    /// Password verifiers as the broker encodes them.
    pub credentials: Bytes,
}

/// A persistent message on a durable queue, as recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its queue (the name is shared among the queue's messages, not copied for each).
    pub queue: std::sync::Arc<str>,
    /// Its position in the queue (arrival order).
    pub seq: u64,
    /// Whether it had been delivered (and not accepted) before.
    pub delivered: bool,
    /// The message as the broker encoded it.
    pub data: Bytes,
}

/// One change to durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Create or replace an exchange.
    PutExchange(ExchangeRecord),
    /// Remove an exchange.
    DeleteExchange(String),
    /// Create or replace a queue.
    PutQueue(QueueRecord),
    /// Remove a queue with all its messages.
    DeleteQueue(String),
    /// Create a binding.
    PutBinding(BindingRecord),
    /// Remove a binding.
    DeleteBinding {
        /// Exchange name.
        exchange: String,
        /// Queue name.
        queue: String,
        /// Binding key.
        key: String,
    },
    /// Create a binding between two exchanges.
    PutExchangeBinding(ExchangeBindingRecord),
    /// Remove a binding between two exchanges.
    DeleteExchangeBinding {
        /// The exchange messages come from.
        source: String,
        /// The exchange they go on to.
        destination: String,
        /// Binding key.
        key: String,
    },
    /// A message enters a queue.
    Enqueue {
        /// Queue name.
        queue: String,
        /// Position in the queue.
        seq: u64,
        /// The encoded message.
        data: Bytes,
    },
    /// A message leaves a queue (accepted, purged, dropped by a limit).
    Dequeue {
        /// Queue name.
        queue: String,
        /// Position in the queue.
        seq: u64,
    },
    /// A message was handed to a consumer: it comes back marked redelivered.
    Delivered {
        /// Queue name.
        queue: String,
        /// Position in the queue.
        seq: u64,
    },
    /// Create or replace a local user.
    PutUser(UserRecord),
    /// Remove a local user.
    DeleteUser(String),
    /// Create or replace a durable federation link or route.
    PutFederation(FederationRecord),
    /// Remove a federation link or route.
    DeleteFederation {
        /// Link or route.
        kind: FederationKind,
        /// Its name.
        name: String,
    },
    /// A distributed transaction branch was prepared: its work, kept until it is committed
    /// or rolled back.
    PutPrepared(PreparedRecord),
    /// A prepared branch was committed or rolled back (by its encoded xid).
    DeletePrepared(Bytes),
}

/// A prepared distributed-transaction branch, in the broker's own encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedRecord {
    /// The branch's xid, encoded.
    pub xid: Bytes,
    /// Its work (enqueues and dequeues), as the broker encodes it.
    pub data: Bytes,
}

/// What a federation record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FederationKind {
    /// A link to another broker.
    Link,
    /// A route over a link.
    Route,
}

/// A durable federation link or route, in the broker's own encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationRecord {
    /// Link or route.
    pub kind: FederationKind,
    /// Its name.
    pub name: String,
    /// Its settings as the broker encodes them.
    pub data: Bytes,
}

/// Everything durable, as read back at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Exchanges.
    pub exchanges: Vec<ExchangeRecord>,
    /// Queues.
    pub queues: Vec<QueueRecord>,
    /// Bindings.
    pub bindings: Vec<BindingRecord>,
    /// Bindings between exchanges.
    pub exchange_bindings: Vec<ExchangeBindingRecord>,
    /// Messages, by queue, in queue order.
    pub messages: Vec<StoredMessage>,
    /// Local users, by name.
    pub users: Vec<UserRecord>,
    /// Durable federation links and routes.
    pub federation: Vec<FederationRecord>,
    /// Prepared distributed-transaction branches, in doubt.
    pub prepared: Vec<PreparedRecord>,
}

/// Why the store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another process")]
    Locked(String),
    /// The disk is full.
    #[error("no space left on the store's disk")]
    Full,
    /// Any other I/O or database failure.
    #[error("store i/o error: {0}")]
    Io(String),
    /// A record that does not decode.
    #[error("corrupt store record: {0}")]
    Corrupt(String),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(28) {
            StoreError::Full
        } else {
            StoreError::Io(e.to_string())
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => io.into(),
            sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
            other => StoreError::Io(other.to_string()),
        }
    }
}

/// Durable storage of broker state.
pub trait Store: Send + Sync {
    /// Applies a batch of changes atomically; returns once they are on disk.
    ///
    /// # Errors
    /// The disk is full or failed; nothing of the batch is then promised.
    fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError>;

    /// Makes the store usable again after a failed [`Store::apply`] (reopening what the
    /// failure left in doubt); nothing to do when it did not fail.
    ///
    /// # Errors
    /// When it still cannot be used (the disk still full, say).
    fn resume(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Bytes free for the store on its disk, when it lives on one.
    fn available_space(&self) -> Option<u64> {
        None
    }

    /// Reads back everything durable.
    ///
    /// # Errors
    /// I/O errors and records that do not decode.
    fn recover(&self) -> Result<Recovered, StoreError>;
}
