//! Counters the model keeps as it works, for management (QMF, the agent, the CLI).
//!
//! They are plain integers inside the structures the broker lock already guards, so
//! keeping them costs no extra lock and no allocation per message.

use super::message::Message;

/// A message count and the bytes of those messages' bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages.
    pub msgs: u64,
    /// Body bytes.
    pub bytes: u64,
}

impl Tally {
    /// Counts one message of `size` bytes.
    pub fn add(&mut self, size: u64) {
        self.msgs += 1;
        self.bytes += size;
    }

    /// The sum of two tallies.
    #[must_use]
    pub fn plus(self, other: Tally) -> Tally {
        Tally {
            msgs: self.msgs + other.msgs,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// What a queue counts (qpidd's queue statistics, under their meaning). Bytes are counted
/// as qpidd counts them: header and body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Every message that entered the queue (recovered ones included).
    pub enqueues: Tally,
    /// Every message that left it, whatever the cause.
    pub dequeues: Tally,
    /// Persistent messages that entered.
    pub persist_enqueues: Tally,
    /// Persistent messages that left.
    pub persist_dequeues: Tally,
    /// Messages that entered by a transaction's commit.
    pub txn_enqueues: Tally,
    /// Messages that left by a transaction's commit.
    pub txn_dequeues: Tally,
    /// Messages handed to a consumer that acquired them.
    pub acquires: u64,
    /// Acquired messages given back.
    pub releases: u64,
    /// Messages given back marked redelivered.
    pub redeliveries: u64,
    /// Messages dropped because their time to live passed.
    pub discards_ttl: u64,
    /// Messages a ring queue dropped to make room.
    pub discards_ring: u64,
    /// Messages a last-value queue replaced.
    pub discards_lvq: u64,
    /// Messages refused because the queue was full (reject policy).
    pub discards_overflow: u64,
    /// Messages a consumer rejected.
    pub discards_subscriber: u64,
    /// Messages removed by a purge.
    pub discards_purge: u64,
    /// Messages moved elsewhere by management (reroute, move).
    pub reroutes: u64,
    /// The most consumers the queue had at once.
    pub consumers_high: u32,
}

impl QueueStats {
    /// Counts a message entering; `txn` when a commit brings it.
    pub fn enqueued(&mut self, msg: &Message, txn: bool) {
        let size = msg.credit_size();
        self.enqueues.add(size);
        if msg.is_persistent() {
            self.persist_enqueues.add(size);
        }
        if txn {
            self.txn_enqueues.add(size);
        }
    }

    /// Counts a message leaving.
    pub fn dequeued(&mut self, msg: &Message) {
        let size = msg.credit_size();
        self.dequeues.add(size);
        if msg.is_persistent() {
            self.persist_dequeues.add(size);
        }
    }
}

/// What an exchange counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Messages published to it.
    pub receives: Tally,
    /// Messages it routed to no queue.
    pub drops: Tally,
    /// Messages it routed to at least one queue.
    pub routes: Tally,
    /// The most bindings it had at once.
    pub bindings_high: u32,
}

impl ExchangeStats {
    /// Counts one message published to the exchange, routed to `queues` queues.
    pub fn routed(&mut self, size: u64, queues: usize) {
        self.receives.add(size);
        if queues == 0 {
            self.drops.add(size);
        } else {
            self.routes.add(size);
        }
    }
}

/// Broker-wide counts that no single queue keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Messages published that reached no queue.
    pub discards_no_route: u64,
    /// Messages lost with a deleted queue that had no alternate exchange.
    pub abandoned: u64,
    /// Messages a deleted queue passed to its alternate exchange.
    pub abandoned_via_alt: u64,
    /// The statistics of queues that no longer exist, so broker totals never go back.
    pub gone: QueueStats,
}

impl QueueStats {
    /// Adds another queue's counters into this one (broker totals).
    pub fn absorb(&mut self, o: &QueueStats) {
        self.enqueues = self.enqueues.plus(o.enqueues);
        self.dequeues = self.dequeues.plus(o.dequeues);
        self.persist_enqueues = self.persist_enqueues.plus(o.persist_enqueues);
        self.persist_dequeues = self.persist_dequeues.plus(o.persist_dequeues);
        self.txn_enqueues = self.txn_enqueues.plus(o.txn_enqueues);
        self.txn_dequeues = self.txn_dequeues.plus(o.txn_dequeues);
        self.acquires += o.acquires;
        self.releases += o.releases;
        self.redeliveries += o.redeliveries;
        self.discards_ttl += o.discards_ttl;
        self.discards_ring += o.discards_ring;
        self.discards_lvq += o.discards_lvq;
        self.discards_overflow += o.discards_overflow;
        self.discards_subscriber += o.discards_subscriber;
        self.discards_purge += o.discards_purge;
        self.reroutes += o.reroutes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistent_and_transactional_messages_are_counted_apart() {
        let mut s = QueueStats::default();
        let mut durable = crate::core::Draft::new("q", "12345");
        durable.delivery.delivery_mode = Some(crate::wire::MessageDeliveryMode::PERSISTENT);
        let durable = durable.seal();
        let plain = Message::new("q", "abc");
        let (a, b) = (plain.credit_size(), durable.credit_size());
        assert!(a > 3 && b > 5, "headers count too");
        s.enqueued(&plain, false);
        s.enqueued(&durable, true);
        s.dequeued(&durable);
        assert_eq!(
            s.enqueues,
            Tally {
                msgs: 2,
                bytes: a + b
            }
        );
        assert_eq!(s.persist_enqueues, Tally { msgs: 1, bytes: b });
        assert_eq!(s.txn_enqueues, Tally { msgs: 1, bytes: b });
        assert_eq!(s.persist_dequeues, Tally { msgs: 1, bytes: b });
        let mut total = QueueStats::default();
        total.absorb(&s);
        total.absorb(&s);
        assert_eq!(total.enqueues.msgs, 4);
    }
}
