//! The broker value: registries of exchanges and queues behind one lock, and every operation
//! the 0-10 commands map onto. Synchronous and free of I/O; sessions are plain ids.
//!
//! This file holds the state, the lock and the housekeeping; the operations live by what
//! they touch: `topology` (queues, exchanges, bindings), `routing` (publishing and
//! transactions), `consumers` (subscriptions, credit, settling) and `recovery` (the start
//! from a store).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use clacks_storage::{
    BindingRecord, ExchangeBindingRecord, ExchangeRecord, GroupCommit, QueueRecord, Refusal,
    StoreError, StoreOp,
};

use super::consumer::{Consumer, Credit, DeliverySink};
use super::error::Error;
use super::exchange::{xml, Exchange, XmlAnswers, XmlPending};
use super::journal::{note_ticket, OpLog};
use super::memory::MemoryBudget;
use super::message::Message;
use super::observer::{ModelEvent, Observer};
use super::queue::{Position, Queue};
use super::stats::BrokerStats;
use super::SessionId;
use crate::wire::FieldTable;

mod consumers;
mod recovery;
mod routing;
mod topology;

/// The exchanges every broker has, with their types.
pub const STANDARD_EXCHANGES: &[(&str, &str)] = &[
    ("amq.direct", "direct"),
    ("amq.topic", "topic"),
    ("amq.fanout", "fanout"),
    ("amq.match", "headers"),
    // qpidd declares it when its xml module is loaded; Qpid addresses name it.
    ("xml", "xml"),
];

/// Arguments of `queue.declare`.
#[derive(Debug, Clone, Default)]
pub struct QueueDeclare {
    /// Queue name.
    pub name: String,
    /// Alternate exchange name, if any.
    pub alternate: Option<String>,
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restart.
    pub durable: bool,
    /// Owned by the declaring session.
    pub exclusive: bool,
    /// Deleted when unused.
    pub auto_delete: bool,
    /// Arguments.
    pub args: FieldTable,
    /// Who declares it, for the per-user queue limit.
    pub creator: Option<String>,
    /// How many queues one creator may have; 0 for no limit.
    pub creator_limit: usize,
}

/// Arguments of `exchange.declare`.
#[derive(Debug, Clone, Default)]
pub struct ExchangeDeclare {
    /// Exchange name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Alternate exchange name, if any.
    pub alternate: Option<String>,
    /// Only check that it exists.
    pub passive: bool,
    /// Survives restart.
    pub durable: bool,
    /// Deleted with its last binding.
    pub auto_delete: bool,
    /// Arguments.
    pub args: FieldTable,
    /// The connection declaring it (for management events; 0 for none).
    pub connection: u64,
}

/// What `queue.query` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueInfo {
    /// Name.
    pub name: String,
    /// Alternate exchange.
    pub alternate: Option<String>,
    /// Durable flag.
    pub durable: bool,
    /// Whether some session owns it.
    pub exclusive: bool,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Declare arguments.
    pub args: FieldTable,
    /// Available messages.
    pub message_count: u32,
    /// Consumers.
    pub subscriber_count: u32,
}

/// What `exchange.query` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeInfo {
    /// Type name.
    pub kind: String,
    /// Durable flag.
    pub durable: bool,
    /// Declare arguments.
    pub args: FieldTable,
}

/// One binding as an administrator lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingSummary {
    /// The exchange.
    pub exchange: String,
    /// The bound queue.
    pub queue: String,
    /// The binding key.
    pub key: String,
    /// The binding arguments as given (an xml binding's `xquery` among them).
    pub args: FieldTable,
}

/// What `exchange.bound` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BoundInfo {
    /// The exchange does not exist.
    pub exchange_not_found: bool,
    /// The named queue does not exist.
    pub queue_not_found: bool,
    /// The queue is not bound to the exchange.
    pub queue_not_matched: bool,
    /// No binding has the key.
    pub key_not_matched: bool,
    /// No binding has the arguments.
    pub args_not_matched: bool,
}

/// Arguments of `message.subscribe`.
#[derive(Clone)]
pub struct Subscribe {
    /// Queue to consume from.
    pub queue: String,
    /// Destination naming the consumer within its session.
    pub destination: String,
    /// Pre-acquired (false = browse).
    pub acquire: bool,
    /// Accept-mode explicit.
    pub accept_explicit: bool,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// Where deliveries go.
    pub sink: Arc<dyn DeliverySink>,
}

/// A message held by a session: where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Held {
    /// Queue name: the queue's own shared name, so that it also tells that incarnation
    /// of the queue from a later queue of the same name.
    pub queue: Arc<str>,
    /// Position in the queue.
    pub position: Position,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) exchanges: HashMap<String, Exchange>,
    pub(super) queues: HashMap<String, Queue>,
    /// (session, destination) → queue name.
    pub(super) subscriptions: HashMap<(SessionId, String), String>,
    /// The connection of each live session.
    pub(super) sessions: HashMap<SessionId, u64>,
    next_session: u64,
    next_connection: u64,
    /// Where durable changes collect while the lock is held; `None` without a store.
    log: Option<OpLog>,
    /// Management, once it watches.
    pub(super) observer: Option<Arc<dyn Observer>>,
    /// Broker-wide counters.
    pub(super) stats: BrokerStats,
    /// The name and channel of each attached session, for management.
    pub(super) session_names: HashMap<SessionId, (String, u16)>,
    /// Exchanges the broker made for its own services (management): never deleted.
    system_exchanges: Vec<String>,
    /// The size limit of queues whose declare sets none.
    pub(super) default_queue_max_size: Option<u64>,
    /// What all queues together may hold.
    pub(super) budget: Arc<MemoryBudget>,
    /// The store's writer, to ask before durable work whether the store takes it.
    pub(super) store: Option<Arc<GroupCommit>>,
}

impl State {
    /// Refuses a change the store could not keep: persistent messages while the disk is
    /// short of its reserve or writes fail, and (`removing`) the removal of persistent messages
    /// while writes fail, which would otherwise come back after a restart.
    /// `bytes` is what the change adds to the disk.
    pub(super) fn check_store(&self, bytes: u64, removing: bool) -> Result<(), Error> {
        match self.store.as_ref().and_then(|s| s.refusal_for(bytes)) {
            None => Ok(()),
            Some(Refusal::LowSpace { .. }) if removing => Ok(()),
            Some(r @ (Refusal::LowSpace { .. } | Refusal::Failing(StoreError::Full))) => {
                Err(Error::LimitExceeded(r.to_string()))
            }
            Some(r) => Err(Error::Internal(r.to_string())),
        }
    }
}

/// The broker model. Cheap to share: clone the `Arc`.
pub struct Broker {
    state: Mutex<State>,
    journal: Option<Arc<GroupCommit>>,
    /// Stamp `delivery-properties.timestamp` on received messages (management's
    /// `setTimestampConfig`).
    timestamping: std::sync::atomic::AtomicBool,
    /// Management, once it watches (also kept in the state for calls under the lock).
    observer: std::sync::OnceLock<Arc<dyn Observer>>,
    /// Distributed transaction branches (taken before the state lock, never after).
    pub(super) dtx: Mutex<super::dtx::Branches>,
}

/// The locked state; on release, the durable changes made under it go to the store as one
/// batch, and then (with the lock free) management publishes what it has to say.
pub(super) struct Locked<'a> {
    /// `None` only while being dropped.
    guard: Option<MutexGuard<'a, State>>,
    broker: &'a Broker,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_deref().expect("the guard is held until drop")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard
            .as_deref_mut()
            .expect("the guard is held until drop")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        if let (Some(journal), Some(log)) = (self.broker.journal.as_deref(), &guard.log) {
            let ops = log.take();
            if !ops.is_empty() {
                // Submitted before the lock is released, so batches reach the store in the
                // order their changes were made.
                note_ticket(journal.submit(ops));
            }
        }
        drop(guard);
        // Events raised under the lock go out now, before the caller reports the command
        // complete, so whoever listens sees them in order with the change.
        if let Some(o) = self.broker.observer.get() {
            o.flush(self.broker);
        }
    }
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker {
    /// A broker with the standard exchanges.
    pub fn new() -> Broker {
        let mut state = State::default();
        for (name, kind) in STANDARD_EXCHANGES {
            if let Ok(mut ex) = Exchange::new(name, kind) {
                ex.durable = true;
                state.exchanges.insert((*name).to_string(), ex);
            }
        }
        Broker {
            state: Mutex::new(state),
            journal: None,
            timestamping: std::sync::atomic::AtomicBool::new(false),
            observer: std::sync::OnceLock::new(),
            dtx: Mutex::new(super::dtx::Branches::default()),
        }
    }

    /// Sets the memory limits: the size limit of every queue whose declare named none
    /// (`qpid.max_size`), and the bytes all queues together may hold (`None`: no limit).
    /// Applies to the queues there are and to those declared later.
    pub fn set_memory_limits(&self, default_queue_max_size: Option<u64>, max_queued: Option<u64>) {
        let mut st = self.lock();
        st.default_queue_max_size = default_queue_max_size;
        st.budget.set_max(max_queued.unwrap_or(0));
        let budget = st.budget.clone();
        for q in st.queues.values_mut() {
            q.limit_memory(default_queue_max_size, &budget);
        }
    }

    /// Bytes queued across the broker as its memory limit counts them, and that limit.
    pub fn queued_memory(&self) -> (u64, Option<u64>) {
        let st = self.lock();
        (st.budget.used(), st.budget.max())
    }

    pub(super) fn lock(&self) -> Locked<'_> {
        Locked {
            // A panic elsewhere must not take the whole broker down with a poisoned lock.
            guard: Some(self.state.lock().unwrap_or_else(|e| e.into_inner())),
            broker: self,
        }
    }

    /// Lets management watch the model: requests addressed to it and events from now on.
    /// Only the first observer set counts.
    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        if self.observer.set(observer.clone()).is_err() {
            return;
        }
        let mut st = self.lock();
        for q in st.queues.values_mut() {
            q.observer = Some(observer.clone());
        }
        st.observer = Some(observer);
    }

    /// Management's observer, if one watches.
    pub fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer.get()
    }

    /// Whether received messages get a timestamp.
    pub fn timestamping(&self) -> bool {
        self.timestamping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns the timestamping of received messages on or off.
    pub fn set_timestamping(&self, on: bool) {
        self.timestamping
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The group commit in front of the store, if the broker has one.
    pub fn journal(&self) -> Option<&Arc<GroupCommit>> {
        self.journal.as_ref()
    }

    /// A fresh connection id (never 0).
    pub fn new_connection(&self) -> u64 {
        let mut st = self.lock();
        st.next_connection += 1;
        st.next_connection
    }

    /// A fresh session id on connection `connection`.
    pub fn new_session(&self, connection: u64) -> SessionId {
        let mut st = self.lock();
        st.next_session += 1;
        let id = SessionId(st.next_session);
        st.sessions.insert(id, connection);
        id
    }

    /// Makes an exchange the broker's own services use (reserved names allowed), unless it
    /// exists; it is not stored and cannot be deleted.
    pub fn declare_system_exchange(&self, name: &str, kind: &str) {
        let mut st = self.lock();
        if !st.exchanges.contains_key(name) {
            if let Ok(mut ex) = Exchange::new(name, kind) {
                ex.durable = true;
                st.exchanges.insert(name.to_string(), ex);
            }
        }
        if !st.system_exchanges.iter().any(|n| n == name) {
            st.system_exchanges.push(name.to_string());
        }
    }

    /// Takes messages back out of their queues for recovered prepared transaction branches
    /// that accepted them: (queue, sequence) to where they are held now.
    pub(super) fn hold_recovered(&self, accepts: &[(String, u64)]) -> Vec<Held> {
        let mut st = self.lock();
        accepts
            .iter()
            .filter_map(|(queue, seq)| {
                let q = st.queues.get_mut(queue)?;
                let position = q.hold_seq(*seq)?;
                Some(Held {
                    queue: q.shared_name.clone(),
                    position,
                })
            })
            .collect()
    }

    /// Records the name and channel a session attached with (for management views).
    pub fn describe_session(&self, id: SessionId, name: &str, channel: u16) {
        self.lock()
            .session_names
            .insert(id, (name.to_string(), channel));
    }

    /// The number of live sessions of each connection that has any, by connection id.
    pub fn session_counts(&self) -> HashMap<u64, usize> {
        let st = self.lock();
        let mut counts = HashMap::new();
        for connection in st.sessions.values() {
            *counts.entry(*connection).or_insert(0) += 1;
        }
        counts
    }

    /// Periodic work that needs the clock: expired messages go (to a dead-letter exchange
    /// when their queue has one for them), and auto-delete queues whose timeout ran out
    /// and queues unused for their `x-expires` are deleted.
    pub fn tick(&self, now: std::time::Instant) {
        self.dtx_expire(now);
        let mut st = self.lock();
        let mut due = Vec::new();
        let mut expired_unused = Vec::new();
        let mut dead_letters = Vec::new();
        for q in st.queues.values_mut() {
            dead_letters.append(&mut q.expire(now));
            // `last_used` moves on a redeclare, a get and the last consumer's going.
            if let Some(expires) = q.settings.expires {
                if q.consumer_count() == 0 && now.saturating_duration_since(q.last_used) >= expires
                {
                    expired_unused.push(q.name.clone());
                    continue;
                }
            }
            if let Some(deadline) = q.pending_delete {
                if q.consumer_count() > 0 || q.owner.is_some() {
                    q.pending_delete = None;
                    continue;
                }
                match deadline {
                    None => {
                        let wait = std::time::Duration::from_secs(q.settings.auto_delete_timeout);
                        q.pending_delete = Some(Some(now + wait));
                    }
                    Some(t) if t <= now => due.push(q.name.clone()),
                    Some(_) => {}
                }
            }
        }
        for name in due {
            st.remove_queue(&name, 0);
        }
        // An expired queue's messages go with it, as RabbitMQ's do, not to its alternate.
        for name in expired_unused {
            if let Some(q) = st.queues.get_mut(&name) {
                q.alternate = None;
            }
            st.remove_queue(&name, 0);
        }
        drop(st);
        // Published as any message, so that xml exchanges on the way are evaluated off the
        // lock; one that cannot be routed or taken is dropped, as RabbitMQ drops it.
        for (exchange, msg) in dead_letters {
            if let Err(e) = self.publish(&exchange, msg) {
                tracing::debug!("expired message not dead-lettered to {exchange:?}: {e}");
            }
        }
    }
}

impl State {
    /// Tells management, if it watches.
    pub(super) fn notify(&self, event: ModelEvent) {
        if let Some(o) = &self.observer {
            o.event(event);
        }
    }

    /// The queue `name`, if it exists and `session` may use it (not another's exclusive
    /// queue); `action` names the attempt in the error.
    fn usable_queue(&self, session: SessionId, name: &str, action: &str) -> Result<&Queue, Error> {
        let q = self.queue(name)?;
        if q.owner.is_some_and(|o| o != session) {
            return Err(Error::ResourceLocked(format!(
                "cannot {action} queue {name}: exclusive to another session"
            )));
        }
        Ok(q)
    }

    /// The queue a held message came from, if that very queue is still there: a queue
    /// deleted and declared again under the same name is another queue, whose positions
    /// mean other messages.
    pub(super) fn held_queue(&mut self, h: &Held) -> Option<&mut Queue> {
        self.queues
            .get_mut(&*h.queue)
            .filter(|q| Arc::ptr_eq(&q.shared_name, &h.queue))
    }

    /// The queue `name`, or 404.
    pub(super) fn queue(&self, name: &str) -> Result<&Queue, Error> {
        self.queues
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("queue not found: {name}")))
    }

    /// The queue `name` to change, or 404.
    pub(super) fn queue_mut(&mut self, name: &str) -> Result<&mut Queue, Error> {
        self.queues
            .get_mut(name)
            .ok_or_else(|| Error::NotFound(format!("queue not found: {name}")))
    }

    fn exchange_mut(&mut self, name: &str) -> Result<&mut Exchange, Error> {
        self.exchanges
            .get_mut(name)
            .ok_or_else(|| Error::NotFound(format!("exchange not found: {name}")))
    }

    /// Adds a durable change to the batch of the current lock (none without a store).
    pub(super) fn record(&self, op: StoreOp) {
        if let Some(log) = &self.log {
            log.push(op);
        }
    }
}

/// Declare arguments as stored: a 0-10 map.
fn encode_args(args: &FieldTable) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::new();
    crate::wire::prim::put_map(&mut buf, args);
    buf.freeze()
}

fn decode_args(raw: &bytes::Bytes) -> Result<FieldTable, crate::wire::DecodeError> {
    if raw.is_empty() {
        return Ok(FieldTable::new());
    }
    crate::wire::prim::get_map(&mut raw.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::consumer::Delivery;

    fn declare(b: &Broker, session: SessionId, name: &str, exclusive: bool) {
        b.declare_queue(
            session,
            QueueDeclare {
                name: name.into(),
                exclusive,
                ..QueueDeclare::default()
            },
        )
        .expect("declare");
    }

    /// Keeps what a fetch delivers.
    #[derive(Default)]
    struct Collect(Mutex<Vec<Delivery>>);

    impl DeliverySink for Collect {
        fn deliver(&self, delivery: Delivery) {
            if let Ok(mut got) = self.0.lock() {
                got.push(delivery);
            }
        }
    }

    #[test]
    fn a_held_message_of_a_deleted_queue_never_settles_its_namesake() {
        let b = Broker::new();
        let s = b.new_session(b.new_connection());
        declare(&b, s, "q", false);
        b.publish("", Arc::new(Message::new("q", &b"old"[..])))
            .expect("publish");
        let sink = Arc::new(Collect::default());
        b.fetch(s, "q", true, sink.clone()).expect("fetch");
        let held: Vec<Held> = sink
            .0
            .lock()
            .expect("lock")
            .iter()
            .map(Delivery::held)
            .collect();
        assert_eq!(held.len(), 1);
        b.delete_queue(s, "q", false, false).expect("delete");
        // A new queue of the same name, whose first message has the same position.
        declare(&b, s, "q", false);
        b.publish("", Arc::new(Message::new("q", &b"new"[..])))
            .expect("publish");
        b.fetch(s, "q", true, sink.clone()).expect("fetch");
        b.accept(&held);
        b.reject(&held);
        b.release(&held, true);
        // Acquired messages count: the new queue's one is held by its own fetch.
        let depth = |b: &Broker| {
            b.snapshot(crate::core::snapshot::Parts::ALL)
                .queues
                .iter()
                .find(|q| q.name == "q")
                .map(|q| q.depth)
        };
        assert_eq!(depth(&b), Some(1), "the new queue's message is untouched");
        let new: Vec<Held> = sink.0.lock().expect("lock")[1..]
            .iter()
            .map(Delivery::held)
            .collect();
        b.accept(&new);
        assert_eq!(depth(&b), Some(0), "its own delivery settles it");
    }

    #[test]
    fn listings_are_sorted_and_count_what_they_say() {
        let b = Broker::new();
        let conn = b.new_connection();
        let s = b.new_session(conn);
        declare(&b, s, "zeta", false);
        declare(&b, s, "alpha", true);
        b.publish("", Arc::new(Message::new("alpha", &b"hello"[..])))
            .expect("publish");
        let snap = b.snapshot(crate::core::snapshot::Parts::ALL);
        let queues = &snap.queues;
        let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert_eq!((queues[0].depth, queues[0].bytes), (1, 5));
        assert_eq!(queues[0].stats.enqueues.msgs, 1);
        assert!(queues[0].exclusive && !queues[1].exclusive);

        b.bind(s, "zeta", "amq.direct", "k2", &FieldTable::new())
            .expect("bind");
        b.bind(s, "alpha", "amq.direct", "k1", &FieldTable::new())
            .expect("bind");
        let mut args = FieldTable::new();
        args.insert("x-match", "any");
        b.bind(s, "zeta", "amq.match", "h", &args).expect("bind");
        let exchanges = b.snapshot(crate::core::snapshot::Parts::ALL).exchanges;
        let direct = exchanges
            .iter()
            .find(|e| e.name == "amq.direct")
            .expect("amq.direct");
        assert_eq!((direct.kind.as_str(), direct.bindings), ("direct", 2));
        assert!(exchanges.windows(2).all(|w| w[0].name < w[1].name));

        let all = b.list_bindings(None).expect("all");
        let seen: Vec<(&str, &str)> = all
            .iter()
            .map(|x| (x.exchange.as_str(), x.queue.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("amq.direct", "zeta"),
                ("amq.direct", "alpha"),
                ("amq.match", "zeta")
            ]
        );
        assert_eq!(all[2].args, args);
        assert_eq!(b.list_bindings(Some("amq.match")).expect("one").len(), 1);
        assert!(matches!(
            b.list_bindings(Some("nope")),
            Err(Error::NotFound(_))
        ));

        let other = b.new_session(conn);
        let counts = b.session_counts();
        assert_eq!(counts.get(&conn), Some(&2));
        b.end_session(other, &[]);
        assert_eq!(b.session_counts().get(&conn), Some(&1));
    }
}
