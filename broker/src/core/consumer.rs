//! Consumers: credit in message and byte units, credit or window mode, and the deliveries
//! they are handed.

use std::fmt;
use std::sync::Arc;

use super::broker::Held;
use super::message::Message;
use super::queue::Position;
use super::SessionId;

/// `0xFFFFFFFF` in `message.flow`: no limit.
pub const UNLIMITED: u32 = u32::MAX;

/// Message and byte credit of one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// Messages it may still receive.
    pub messages: u32,
    /// Bytes it may still receive.
    pub bytes: u32,
    /// Window mode: credit comes back when deliveries complete, rather than by `flow`.
    pub window: bool,
}

impl Credit {
    /// No credit, window mode (qpidd's initial state until `set-flow-mode`).
    pub fn initial() -> Self {
        Credit {
            messages: 0,
            bytes: 0,
            window: true,
        }
    }

    /// Unlimited credit (tests).
    pub fn unlimited() -> Self {
        Credit {
            messages: UNLIMITED,
            bytes: UNLIMITED,
            window: false,
        }
    }

    /// `n` messages, unlimited bytes (tests).
    pub fn messages(n: u32) -> Self {
        Credit {
            messages: n,
            bytes: UNLIMITED,
            window: false,
        }
    }

    /// Whether a message of `size` bytes may go out now.
    pub fn can_take(&self, size: u64) -> bool {
        self.messages > 0 && (self.bytes == UNLIMITED || u64::from(self.bytes) >= size)
    }

    /// Spends credit for one delivery.
    pub fn consume(&mut self, size: u64) {
        if self.messages != UNLIMITED {
            self.messages -= 1;
        }
        if self.bytes != UNLIMITED {
            self.bytes = self
                .bytes
                .saturating_sub(u32::try_from(size).unwrap_or(u32::MAX));
        }
    }

    /// Adds message credit (`message.flow` unit message); saturates at unlimited.
    pub fn add_messages(&mut self, n: u32) {
        self.messages = add_credit(self.messages, n);
    }

    /// Adds byte credit (`message.flow` unit byte).
    pub fn add_bytes(&mut self, n: u32) {
        self.bytes = add_credit(self.bytes, n);
    }
}

fn add_credit(have: u32, more: u32) -> u32 {
    if have == UNLIMITED || more == UNLIMITED {
        UNLIMITED
    } else {
        have.saturating_add(more).min(UNLIMITED - 1)
    }
}

/// Where a queue hands the messages a consumer is to receive.
pub trait DeliverySink: Send + Sync {
    /// Takes one delivery; must not block (the broker lock is held).
    fn deliver(&self, delivery: Delivery);

    /// The consumer `destination` of `session` lost its queue (deleted under it); must not
    /// block. 0-10 sessions learn nothing (qpidd tells them nothing either); 0-9-1 clients
    /// that asked for it get a `basic.cancel`.
    fn cancelled(&self, _session: SessionId, _destination: &Arc<str>) {}
}

/// One message handed to one consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The consumer's session.
    pub session: SessionId,
    /// The consumer's destination (shared, not copied, per delivery).
    pub destination: Arc<str>,
    /// The queue it came from (shared, not copied, per delivery).
    pub queue: Arc<str>,
    /// Its position (id) in that queue.
    pub position: Position,
    /// The message.
    pub msg: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Whether the consumer now holds it (false for browsers).
    pub acquired: bool,
    /// Whether the consumer must accept it (accept-mode explicit).
    pub accept_explicit: bool,
    /// Already gone from the queue (acquired with accept-mode none): nothing to settle.
    pub settled: bool,
    /// The consumer was in window mode: completing the delivery gives its credit back.
    pub window: bool,
    /// Size counted against byte credit.
    pub size: u64,
    /// The consumer's window epoch when sent: completions restore credit only within it.
    pub epoch: u64,
}

impl Delivery {
    /// Where the delivered message lives, for settling it later.
    pub fn held(&self) -> Held {
        Held {
            queue: self.queue.clone(),
            position: self.position,
        }
    }
}

/// A subscription on a queue.
pub struct Consumer {
    /// Owning session.
    pub session: SessionId,
    /// The connection of that session (for `no-local`).
    pub connection: u64,
    /// Bumped by stop and set-flow-mode: older deliveries no longer move the window.
    pub epoch: u64,
    /// The destination named in `message.subscribe`.
    pub destination: Arc<str>,
    /// Pre-acquired (true) or browsing (false).
    pub acquire: bool,
    /// Accept-mode explicit.
    pub accept_explicit: bool,
    /// Subscribed exclusively: no one else may consume.
    pub exclusive: bool,
    /// Credit state.
    pub credit: Credit,
    /// For browsers: the last position seen.
    pub cursor: Option<Position>,
    /// Where deliveries go.
    pub sink: Arc<dyn DeliverySink>,
    /// Messages delivered to it so far.
    pub delivered: u64,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("session", &self.session)
            .field("destination", &self.destination)
            .field("acquire", &self.acquire)
            .field("credit", &self.credit)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_arithmetic() {
        let mut c = Credit::initial();
        assert!(!c.can_take(1));
        c.add_messages(2);
        c.add_bytes(10);
        assert!(c.can_take(10));
        assert!(!c.can_take(11));
        c.consume(6);
        assert_eq!((c.messages, c.bytes), (1, 4));
        c.add_bytes(UNLIMITED);
        assert!(c.can_take(1 << 40));
        c.consume(100);
        assert_eq!((c.messages, c.bytes), (0, UNLIMITED));
        c.add_messages(u32::MAX - 1);
        c.add_messages(5);
        assert_eq!(c.messages, UNLIMITED - 1);
    }
}
