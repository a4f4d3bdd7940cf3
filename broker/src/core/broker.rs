//! The broker value: registries of exchanges and queues behind one lock, and every operation
//! the 0-10 commands map onto. Synchronous and free of I/O; sessions are plain ids.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use clacks_storage::{BindingRecord, ExchangeRecord, GroupCommit, QueueRecord, StoreOp};

use super::consumer::{Consumer, Credit, DeliverySink};
use super::error::Error;
use super::exchange::{xml, Exchange, XmlAnswers, XmlPending};
use super::journal::{note_ticket, OpLog};
use super::message::Message;
use super::observer::{ModelEvent, Observer};
use super::queue::{Position, Queue};
use super::stats::BrokerStats;
use super::SessionId;
use crate::wire::FieldTable;

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
    /// Queue name (shared with the queue, not copied per message).
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

    /// A broker whose durable state goes through `journal`, rebuilt from what the store
    /// recovered: durable exchanges, queues, bindings and persistent messages in order.
    ///
    /// # Errors
    /// Records that do not decode.
    pub fn recover(
        journal: Arc<GroupCommit>,
        recovered: clacks_storage::Recovered,
    ) -> Result<Broker, Error> {
        let mut broker = Broker::new();
        broker.journal = Some(journal);
        let log = OpLog::default();
        let mut st = broker.state.lock().unwrap_or_else(|e| e.into_inner());
        st.log = Some(log.clone());
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            Error::Internal(format!("cannot recover {what}: {e}"))
        };
        for r in recovered.exchanges {
            let mut ex = Exchange::new(&r.name, &r.kind)?;
            ex.durable = true;
            ex.auto_delete = r.auto_delete;
            ex.alternate = r.alternate;
            ex.args = decode_args(&r.args).map_err(|e| corrupt(&r.name, &e))?;
            st.exchanges.insert(r.name, ex);
        }
        for r in recovered.queues {
            let args = decode_args(&r.args).map_err(|e| corrupt(&r.name, &e))?;
            let mut q = Queue::new(&r.name, args)?;
            q.durable = true;
            q.auto_delete = r.auto_delete;
            q.alternate = r.alternate;
            q.log = Some(log.clone());
            st.queues.insert(r.name, q);
        }
        for b in recovered.bindings {
            let args = decode_args(&b.args).map_err(|e| corrupt(&b.queue, &e))?;
            if let Some(ex) = st.exchanges.get_mut(&b.exchange) {
                // A binding this broker can no longer use (an xml query the engine now
                // refuses) must not keep the broker from starting.
                if let Err(e) = ex.bind(&b.queue, &b.key, &args) {
                    tracing::warn!(
                        "binding of queue {} to exchange {} with key {:?} not recovered: {e}",
                        b.queue,
                        b.exchange,
                        b.key
                    );
                }
            }
        }
        let decoded = decode_stored_messages(&recovered.messages);
        for (m, msg) in recovered.messages.iter().zip(decoded) {
            let msg = msg.map_err(|e| corrupt(&m.queue, &e))?;
            if let Some(q) = st.queues.get_mut(&*m.queue) {
                q.restore(m.seq, Arc::new(msg), m.delivered);
            }
        }
        drop(st);
        broker.dtx_restore(recovered.prepared, std::time::Instant::now());
        Ok(broker)
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
                let position = st.queues.get_mut(queue)?.hold_seq(*seq)?;
                Some(Held {
                    queue: Arc::from(queue.as_str()),
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

    /// Periodic work that needs the clock: expired messages go, and auto-delete queues
    /// whose timeout ran out are deleted.
    pub fn tick(&self, now: std::time::Instant) {
        self.dtx_expire(now);
        let mut st = self.lock();
        let mut due = Vec::new();
        for q in st.queues.values_mut() {
            q.expire(now);
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
    }

    /// `queue.declare`.
    ///
    /// # Errors
    /// 404 for a passive declare of a missing queue or a missing alternate exchange, 405 for
    /// another session's exclusive queue, 542 for bad arguments.
    pub fn declare_queue(&self, session: SessionId, d: QueueDeclare) -> Result<(), Error> {
        let mut st = self.lock();
        let connection = st.sessions.get(&session).copied();
        if let Some(q) = st.queues.get_mut(&d.name) {
            let locked = || {
                Error::ResourceLocked(format!("cannot grant exclusive access to queue {}", d.name))
            };
            match q.owner {
                // Passive checks of someone else's queue are fine (request/reply clients).
                Some(owner) if owner != session && (d.exclusive || !d.passive) => {
                    return Err(locked())
                }
                Some(_) => {}
                None if d.exclusive => {
                    if d.passive || q.consumer_count() > 0 {
                        return Err(locked());
                    }
                    q.owner = Some(session);
                    q.owner_connection = connection;
                }
                None => {}
            }
            if !d.passive {
                st.notify(ModelEvent::QueueDeclared {
                    connection: connection.unwrap_or(0),
                    name: d.name.clone(),
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    alternate: d.alternate.clone(),
                    args: d.args.clone(),
                    created: false,
                });
            }
            return Ok(());
        }
        if d.passive {
            return Err(Error::NotFound(format!("queue not found: {}", d.name)));
        }
        if d.name.is_empty() {
            return Err(Error::InvalidArgument(
                "queue name must not be empty".into(),
            ));
        }
        if let Some(alt) = &d.alternate {
            if !alt.is_empty() && !st.exchanges.contains_key(alt) {
                return Err(Error::NotFound(format!(
                    "alternate exchange not found: {alt}"
                )));
            }
        }
        if let (Some(user), limit @ 1..) = (&d.creator, d.creator_limit) {
            let owned = st
                .queues
                .values()
                .filter(|q| q.creator.as_deref() == Some(user))
                .count();
            if owned >= limit {
                return Err(Error::LimitExceeded(format!(
                    "{user} may not have more than {limit} queues"
                )));
            }
        }
        let mut q = Queue::new(&d.name, d.args)?;
        q.observer = st.observer.clone();
        q.creator = d.creator;
        q.durable = d.durable;
        q.auto_delete = d.auto_delete;
        q.alternate = d.alternate.filter(|a| !a.is_empty());
        q.owner = d.exclusive.then_some(session);
        q.owner_connection = if d.exclusive { connection } else { None };
        if q.durable {
            q.log = st.log.clone();
            st.record(StoreOp::PutQueue(QueueRecord {
                name: q.name.clone(),
                alternate: q.alternate.clone(),
                auto_delete: q.auto_delete,
                args: encode_args(&q.args),
            }));
        }
        st.notify(ModelEvent::QueueDeclared {
            connection: connection.unwrap_or(0),
            name: q.name.clone(),
            durable: q.durable,
            exclusive: d.exclusive,
            auto_delete: q.auto_delete,
            alternate: q.alternate.clone(),
            args: q.args.clone(),
            created: true,
        });
        st.queues.insert(d.name, q);
        Ok(())
    }

    /// `queue.delete`. Messages left on the queue go to its alternate exchange, if any.
    ///
    /// # Errors
    /// 404 missing, 405 exclusive elsewhere, 406 if-unused/if-empty violated.
    pub fn delete_queue(
        &self,
        session: SessionId,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        let q = st.usable_queue(session, name, "delete")?;
        if if_unused && q.consumer_count() > 0 {
            return Err(Error::PreconditionFailed(format!(
                "cannot delete queue {name}: it has consumers"
            )));
        }
        if if_empty && q.depth() > 0 {
            return Err(Error::PreconditionFailed(format!(
                "cannot delete queue {name}: it is not empty"
            )));
        }
        let connection = st.sessions.get(&session).copied().unwrap_or(0);
        st.remove_queue(name, connection);
        Ok(())
    }

    /// `queue.purge`: drops available messages, returns how many.
    ///
    /// # Errors
    /// 404 missing, 405 exclusive elsewhere.
    pub fn purge_queue(&self, session: SessionId, name: &str) -> Result<usize, Error> {
        if name.is_empty() {
            return Err(Error::IllegalArgument(
                "no queue name given to purge".into(),
            ));
        }
        let mut st = self.lock();
        st.usable_queue(session, name, "purge")?;
        Ok(st.queues.get_mut(name).map_or(0, Queue::purge))
    }

    /// `queue.query`: `None` when the queue does not exist.
    pub fn query_queue(&self, name: &str) -> Option<QueueInfo> {
        let st = self.lock();
        let q = st.queues.get(name)?;
        Some(QueueInfo {
            name: q.name.clone(),
            alternate: q.alternate.clone(),
            durable: q.durable,
            exclusive: q.owner.is_some(),
            auto_delete: q.auto_delete,
            args: q.args.clone(),
            message_count: u32::try_from(q.message_count()).unwrap_or(u32::MAX),
            subscriber_count: u32::try_from(q.consumer_count()).unwrap_or(u32::MAX),
        })
    }

    /// The bindings of `exchange`, or of every exchange, by exchange name and then in the
    /// order they were made.
    ///
    /// # Errors
    /// 404 when the named exchange does not exist.
    pub fn list_bindings(&self, exchange: Option<&str>) -> Result<Vec<BindingSummary>, Error> {
        let st = self.lock();
        let mut exchanges: Vec<&Exchange> = match exchange {
            Some(name) => vec![st
                .exchanges
                .get(name)
                .ok_or_else(|| Error::NotFound(format!("exchange not found: {name}")))?],
            None => st.exchanges.values().collect(),
        };
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(exchanges
            .into_iter()
            .flat_map(|e| {
                e.bindings().iter().map(|b| BindingSummary {
                    exchange: e.name.clone(),
                    queue: b.queue.clone(),
                    key: b.key.clone(),
                    args: b.args.clone(),
                })
            })
            .collect())
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

    /// `exchange.declare`.
    ///
    /// # Errors
    /// 530 for reserved names or a type/alternate mismatch with an existing exchange, 404 for
    /// an unknown type, a missing alternate or a passive declare of a missing exchange.
    pub fn declare_exchange(&self, d: ExchangeDeclare) -> Result<(), Error> {
        let mut st = self.lock();
        if let Some(ex) = st.exchanges.get(&d.name) {
            if !d.passive && !d.kind.is_empty() && ex.kind != d.kind {
                return Err(Error::NotAllowed(format!(
                    "exchange {} declared with type {}, not {}",
                    d.name, ex.kind, d.kind
                )));
            }
            if !d.passive {
                if let Some(alt) = d.alternate.as_ref().filter(|a| !a.is_empty()) {
                    if ex.alternate.as_ref() != Some(alt) {
                        return Err(Error::NotAllowed(format!(
                            "exchange {} exists with another alternate exchange",
                            d.name
                        )));
                    }
                }
            }
            if !d.passive {
                st.notify(ModelEvent::ExchangeDeclared {
                    connection: d.connection,
                    name: d.name.clone(),
                    kind: ex.kind.clone(),
                    alternate: ex.alternate.clone(),
                    durable: ex.durable,
                    auto_delete: ex.auto_delete,
                    args: ex.args.clone(),
                    created: false,
                });
            }
            return Ok(());
        }
        if d.name.is_empty() {
            return if d.passive {
                Ok(())
            } else {
                Err(Error::NotAllowed(
                    "cannot redeclare the default exchange".into(),
                ))
            };
        }
        if d.passive {
            return Err(Error::NotFound(format!("exchange not found: {}", d.name)));
        }
        if d.name.starts_with("amq.") || d.name.starts_with("qpid.") {
            return Err(Error::NotAllowed(format!(
                "exchange names beginning with amq. or qpid. are reserved: {}",
                d.name
            )));
        }
        let mut ex = Exchange::new(&d.name, &d.kind)?;
        if let Some(alt) = d.alternate.filter(|a| !a.is_empty()) {
            if !st.exchanges.contains_key(&alt) {
                return Err(Error::NotFound(format!(
                    "alternate exchange not found: {alt}"
                )));
            }
            ex.alternate = Some(alt);
        }
        ex.durable = d.durable;
        ex.auto_delete = d.auto_delete;
        ex.args = d.args;
        if ex.durable {
            st.record(StoreOp::PutExchange(ExchangeRecord {
                name: ex.name.clone(),
                kind: ex.kind.clone(),
                alternate: ex.alternate.clone(),
                auto_delete: ex.auto_delete,
                args: encode_args(&ex.args),
            }));
        }
        st.notify(ModelEvent::ExchangeDeclared {
            connection: d.connection,
            name: ex.name.clone(),
            kind: ex.kind.clone(),
            alternate: ex.alternate.clone(),
            durable: ex.durable,
            auto_delete: ex.auto_delete,
            args: ex.args.clone(),
            created: true,
        });
        st.exchanges.insert(d.name, ex);
        Ok(())
    }

    /// `exchange.delete`.
    ///
    /// # Errors
    /// 404 missing, 542 for the default exchange, 530 when it is some object's alternate, 406
    /// for if-unused with bindings.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        self.delete_exchange_by(0, name, if_unused)
    }

    /// [`Broker::delete_exchange`] on behalf of `connection` (named in the event).
    ///
    /// # Errors
    /// As [`Broker::delete_exchange`].
    pub fn delete_exchange_by(
        &self,
        connection: u64,
        name: &str,
        if_unused: bool,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "cannot delete the default exchange".into(),
            ));
        }
        let ex = st
            .exchanges
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("exchange not found: {name}")))?;
        if STANDARD_EXCHANGES.iter().any(|(n, _)| *n == name)
            || st.system_exchanges.iter().any(|n| n == name)
        {
            return Err(Error::NotAllowed(format!(
                "cannot delete the standard exchange {name}"
            )));
        }
        if if_unused && !ex.bindings().is_empty() {
            return Err(Error::PreconditionFailed(format!(
                "cannot delete exchange {name}: it has bindings"
            )));
        }
        let used_as_alternate = st
            .queues
            .values()
            .any(|q| q.alternate.as_deref() == Some(name))
            || st
                .exchanges
                .values()
                .any(|e| e.alternate.as_deref() == Some(name));
        if used_as_alternate {
            return Err(Error::NotAllowed(format!(
                "cannot delete exchange {name}: it is in use as an alternate exchange"
            )));
        }
        st.remove_exchange(name);
        st.notify(ModelEvent::ExchangeDeleted {
            connection,
            name: name.to_string(),
        });
        Ok(())
    }

    /// `exchange.query`: `None` when the exchange does not exist.
    pub fn query_exchange(&self, name: &str) -> Option<ExchangeInfo> {
        if name.is_empty() {
            return Some(ExchangeInfo {
                kind: "direct".into(),
                durable: true,
                args: FieldTable::new(),
            });
        }
        let st = self.lock();
        st.exchanges.get(name).map(|e| ExchangeInfo {
            kind: e.kind.clone(),
            durable: e.durable,
            args: e.args.clone(),
        })
    }

    /// `exchange.bind`.
    ///
    /// # Errors
    /// 404 missing queue or exchange, 542 for the default exchange, 405 for another session's
    /// exclusive queue, 541 for arguments the type cannot use.
    pub fn bind(
        &self,
        session: SessionId,
        queue: &str,
        exchange: &str,
        key: &str,
        args: &FieldTable,
    ) -> Result<(), Error> {
        // An xml query compiles without the lock: a hard one takes the engine tens of
        // milliseconds. Missing queues and exchanges are still reported first, below.
        // Only bindings with a query look the exchange up: others skip that lock round.
        let prepared = if args.get("xquery").is_some()
            && self
                .lock()
                .exchanges
                .get(exchange)
                .is_some_and(|e| e.kind == "xml")
        {
            Some(xml::compile_binding_query(args))
        } else {
            None
        };
        let mut st = self.lock();
        if exchange.is_empty() {
            return Err(Error::InvalidArgument(
                "bind on the default exchange is not allowed".into(),
            ));
        }
        let queue_durable = st.usable_queue(session, queue, "bind")?.durable;
        let ex = st.exchange_mut(exchange)?;
        let prepared = match prepared {
            // Replaced meanwhile by an exchange of another type: compile as it needs.
            Some(_) if ex.kind != "xml" => None,
            Some(p) => Some(p?),
            None => None,
        };
        let new = ex.bind_prepared(queue, key, args, prepared)?;
        let count = u32::try_from(ex.bindings().len()).unwrap_or(u32::MAX);
        ex.stats.bindings_high = ex.stats.bindings_high.max(count);
        let durable = ex.durable;
        if new {
            let connection = st.sessions.get(&session).copied().unwrap_or(0);
            st.notify(ModelEvent::Bound {
                connection,
                exchange: exchange.to_string(),
                queue: queue.to_string(),
                key: key.to_string(),
                args: args.clone(),
            });
        }
        if new && durable && queue_durable {
            st.record(StoreOp::PutBinding(BindingRecord {
                exchange: exchange.to_string(),
                queue: queue.to_string(),
                key: key.to_string(),
                args: encode_args(args),
            }));
        }
        Ok(())
    }

    /// `exchange.unbind`: an absent binding between existing objects is no error.
    ///
    /// # Errors
    /// 404 missing queue or exchange, 542 for the default exchange.
    pub fn unbind(
        &self,
        session: SessionId,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        if exchange.is_empty() {
            return Err(Error::InvalidArgument(
                "unbind from the default exchange is not allowed".into(),
            ));
        }
        let queue_durable = st.usable_queue(session, queue, "unbind")?.durable;
        let ex = st.exchange_mut(exchange)?;
        let removed = ex.unbind(queue, key);
        if removed && ex.durable && queue_durable {
            st.record(StoreOp::DeleteBinding {
                exchange: exchange.to_string(),
                queue: queue.to_string(),
                key: key.to_string(),
            });
        }
        if removed {
            let connection = st.sessions.get(&session).copied().unwrap_or(0);
            st.notify(ModelEvent::Unbound {
                connection,
                exchange: exchange.to_string(),
                queue: queue.to_string(),
                key: key.to_string(),
            });
        }
        st.remove_unused_exchanges();
        Ok(())
    }

    /// `exchange.bound`, criterion by criterion as qpidd computes it.
    pub fn bound(
        &self,
        exchange: &str,
        queue: Option<&str>,
        key: Option<&str>,
        args: Option<&FieldTable>,
    ) -> BoundInfo {
        let st = self.lock();
        let queue = queue.filter(|q| !q.is_empty());
        let key = key.filter(|k| !k.is_empty());
        let args = args.filter(|a| !a.is_empty());
        let queue_missing = queue.is_some_and(|q| !st.queues.contains_key(q));
        let Some(ex) = st.exchanges.get(exchange) else {
            return BoundInfo {
                exchange_not_found: true,
                queue_not_found: queue_missing,
                ..BoundInfo::default()
            };
        };
        if queue_missing {
            return BoundInfo {
                queue_not_found: true,
                ..BoundInfo::default()
            };
        }
        let b = ex.bindings();
        let exact = b.iter().any(|x| {
            queue.is_none_or(|q| x.queue == q)
                && key.is_none_or(|k| x.key == k)
                && args.is_none_or(|a| x.args == *a)
        });
        if exact && (queue.is_some() || key.is_some() || args.is_some()) {
            return BoundInfo::default();
        }
        if queue.is_none() && key.is_none() && args.is_none() {
            return BoundInfo {
                queue_not_matched: b.is_empty(),
                ..BoundInfo::default()
            };
        }
        BoundInfo {
            queue_not_matched: queue.is_some_and(|q| !b.iter().any(|x| x.queue == q)),
            key_not_matched: key.is_some_and(|k| !b.iter().any(|x| x.key == k)),
            args_not_matched: args.is_some_and(|a| !b.iter().any(|x| x.args == *a)),
            ..BoundInfo::default()
        }
    }

    /// The queues a message sent to `exchange` reaches, after alternate exchanges for
    /// unroutable messages.
    ///
    /// # Errors
    /// 404 when the exchange does not exist.
    pub fn route(&self, exchange: &str, msg: &Arc<Message>) -> Result<Vec<String>, Error> {
        self.route_locked(exchange, msg).map(|(_, queues)| queues)
    }

    /// Routes a message and returns the lock still held, so that enqueueing follows under
    /// the same lock. xml exchanges on the way are evaluated with the lock released (the
    /// evaluation threads work from a snapshot of their bindings), and routing starts over
    /// with their answers.
    fn route_locked(
        &self,
        exchange: &str,
        msg: &Arc<Message>,
    ) -> Result<(Locked<'_>, Vec<String>), Error> {
        let mut answers = XmlAnswers::default();
        loop {
            let mut st = self.lock();
            match st.route(exchange, msg, &answers)? {
                Ok(queues) => {
                    st.count_routed(exchange, msg, queues.len());
                    return Ok((st, queues));
                }
                Err(XmlPending { exchange, bindings }) => {
                    drop(st);
                    let queues = xml::evaluate(bindings, msg.clone());
                    // Each round answers one more exchange, so this ends.
                    answers.insert(exchange, queues);
                }
            }
        }
    }

    /// Routes and enqueues a message in one step (no transaction).
    ///
    /// # Errors
    /// 404 missing exchange; 506 when a queue is full under the reject policy.
    pub fn publish(&self, exchange: &str, msg: Arc<Message>) -> Result<usize, Error> {
        let (mut st, queues) = self.route_locked(exchange, &msg)?;
        st.enqueue_all(&queues, &msg)?;
        Ok(queues.len())
    }

    /// Commits a transaction: messages routed earlier are enqueued (queues that went away
    /// meanwhile are skipped) and held messages are accepted, all under one lock, so their
    /// durable changes form one atomic batch.
    ///
    /// # Errors
    /// 506 when a queue is full under the reject policy.
    pub fn commit_tx(
        &self,
        enqueues: Vec<(Vec<String>, Arc<Message>)>,
        accepts: &[Held],
    ) -> Result<(), Error> {
        self.commit_work(enqueues, accepts, None)
    }

    /// [`Broker::commit_tx`] with one more durable change in the same batch (a prepared
    /// transaction branch's record going away).
    ///
    /// # Errors
    /// 506 when a queue is full under the reject policy.
    pub(super) fn commit_work(
        &self,
        enqueues: Vec<(Vec<String>, Arc<Message>)>,
        accepts: &[Held],
        also: Option<StoreOp>,
    ) -> Result<(), Error> {
        let mut st = self.lock();
        if let Some(op) = also {
            st.record(op);
        }
        for (queues, msg) in &enqueues {
            st.enqueue_counted(queues, msg, true)?;
        }
        for h in accepts {
            if let Some(q) = st.queues.get_mut(&*h.queue) {
                if let Some(msg) = q.accept(h.position) {
                    q.stats.txn_dequeues.add(msg.credit_size());
                }
            }
        }
        Ok(())
    }

    /// `message.subscribe`.
    ///
    /// # Errors
    /// 404 missing queue, 530 destination in use, 405 exclusivity conflicts.
    pub fn subscribe(&self, session: SessionId, s: Subscribe) -> Result<(), Error> {
        if s.queue.is_empty() {
            return Err(Error::IllegalArgument(
                "no queue given to subscribe to".into(),
            ));
        }
        let mut st = self.lock();
        let connection = st.sessions.get(&session).copied().unwrap_or(0);
        if st
            .subscriptions
            .contains_key(&(session, s.destination.clone()))
        {
            return Err(Error::NotAllowed(format!(
                "destination {} already in use",
                s.destination
            )));
        }
        let q = st
            .queues
            .get_mut(&s.queue)
            .ok_or_else(|| Error::NotFound(format!("queue not found: {}", s.queue)))?;
        // Browsing another session's exclusive queue is allowed, as qpidd allows it.
        if s.acquire && q.owner.is_some_and(|o| o != session) {
            return Err(Error::ResourceLocked(format!(
                "cannot subscribe to exclusive queue {}",
                s.queue
            )));
        }
        if q.consumers.iter().any(|c| c.exclusive) || (s.exclusive && q.consumer_count() > 0) {
            return Err(Error::ResourceLocked(format!(
                "queue {} has an exclusive consumer",
                s.queue
            )));
        }
        q.consumers.push(Consumer {
            session,
            connection,
            epoch: 0,
            destination: Arc::from(s.destination.as_str()),
            acquire: s.acquire,
            accept_explicit: s.accept_explicit,
            exclusive: s.exclusive,
            credit: Credit::initial(),
            cursor: None,
            sink: s.sink,
            delivered: 0,
        });
        q.had_consumers = true;
        let count = u32::try_from(q.consumer_count()).unwrap_or(u32::MAX);
        q.stats.consumers_high = q.stats.consumers_high.max(count);
        st.notify(ModelEvent::Subscribed {
            connection,
            queue: s.queue.clone(),
            destination: s.destination.clone(),
            exclusive: s.exclusive,
        });
        st.subscriptions.insert((session, s.destination), s.queue);
        Ok(())
    }

    fn with_consumer(
        &self,
        session: SessionId,
        destination: &str,
        f: impl FnOnce(&mut Consumer),
    ) -> Result<(), Error> {
        let mut st = self.lock();
        let queue = st
            .subscriptions
            .get(&(session, destination.to_string()))
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("unknown destination: {destination}")))?;
        let Some(q) = st.queues.get_mut(&queue) else {
            // The queue was deleted under the subscription: nothing left to deliver.
            return Ok(());
        };
        let Some(c) = q.consumer_mut(session, destination) else {
            return Err(Error::NotFound(format!(
                "unknown destination: {destination}"
            )));
        };
        f(c);
        q.dispatch();
        Ok(())
    }

    /// `message.set-flow-mode`: credit (false) or window (true); credit drops to zero.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn set_flow_mode(
        &self,
        session: SessionId,
        destination: &str,
        window: bool,
    ) -> Result<(), Error> {
        self.with_consumer(session, destination, |c| {
            c.credit = Credit {
                messages: 0,
                bytes: 0,
                window,
            };
            c.epoch += 1;
        })
    }

    /// `message.flow`: adds message (`bytes` false) or byte credit, then delivers.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn flow(
        &self,
        session: SessionId,
        destination: &str,
        bytes: bool,
        value: u32,
    ) -> Result<(), Error> {
        self.with_consumer(session, destination, |c| {
            if bytes {
                c.credit.add_bytes(value);
            } else {
                c.credit.add_messages(value);
            }
        })
    }

    /// Window mode: completed deliveries (`messages` of them, `bytes` in all) give their
    /// credit back, unless the window was reset (stop, set-flow-mode) since they were sent.
    pub fn restore_credit(
        &self,
        session: SessionId,
        destination: &str,
        messages: u32,
        bytes: u64,
        epoch: u64,
    ) {
        let _ = self.with_consumer(session, destination, |c| {
            if c.credit.window && c.epoch == epoch {
                c.credit.add_messages(messages);
                if c.credit.bytes != u32::MAX {
                    c.credit.add_bytes(u32::try_from(bytes).unwrap_or(u32::MAX));
                }
            }
        });
    }

    /// `message.flush`: what credit allows has already been delivered (every change
    /// dispatches at once), so the flush only drops the remaining credit.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn flush(&self, session: SessionId, destination: &str) -> Result<(), Error> {
        self.with_consumer(session, destination, |c| {
            c.credit.messages = 0;
            c.credit.bytes = 0;
        })
    }

    /// `message.stop`: credit to zero; outstanding deliveries no longer move the window.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn stop(&self, session: SessionId, destination: &str) -> Result<(), Error> {
        self.with_consumer(session, destination, |c| {
            c.credit.messages = 0;
            c.credit.bytes = 0;
            c.epoch += 1;
        })
    }

    /// `message.cancel`. An auto-delete queue left without consumers goes away.
    ///
    /// # Errors
    /// 404 unknown destination.
    pub fn cancel(&self, session: SessionId, destination: &str) -> Result<(), Error> {
        let mut st = self.lock();
        let queue = st
            .subscriptions
            .remove(&(session, destination.to_string()))
            .ok_or_else(|| Error::NotFound(format!("unknown destination: {destination}")))?;
        st.drop_consumer(session, destination, &queue);
        Ok(())
    }

    /// `message.accept` of held messages: they leave their queues.
    pub fn accept(&self, held: &[Held]) {
        let mut st = self.lock();
        for h in held {
            if let Some(q) = st.queues.get_mut(&*h.queue) {
                q.accept(h.position);
            }
        }
    }

    /// `message.release` of held messages: back to their queues.
    pub fn release(&self, held: &[Held], redelivered: bool) {
        let mut st = self.lock();
        let mut touched = Vec::new();
        for h in held {
            if let Some(q) = st.queues.get_mut(&*h.queue) {
                q.release(h.position, redelivered);
                touched.push(h.queue.clone());
            }
        }
        st.dispatch_queues(&touched);
    }

    /// `message.reject`: held messages leave their queues for the alternate exchange.
    pub fn reject(&self, held: &[Held]) {
        let mut st = self.lock();
        for h in held {
            let Some(q) = st.queues.get_mut(&*h.queue) else {
                continue;
            };
            let alt = q.alternate.clone();
            if let (Some(msg), Some(alt)) = (q.reject(h.position), alt) {
                st.reroute(&alt, &msg);
            }
        }
    }

    /// `message.acquire` of browsed messages; returns those now held.
    pub fn acquire(&self, held: &[Held]) -> Vec<Held> {
        let mut st = self.lock();
        held.iter()
            .filter(|h| {
                st.queues
                    .get_mut(&*h.queue)
                    .is_some_and(|q| q.acquire(h.position))
            })
            .cloned()
            .collect()
    }

    /// A session ended: its consumers go, held messages return marked redelivered, its
    /// exclusive queues are released (and deleted if auto-delete).
    pub fn end_session(&self, session: SessionId, held: &[Held]) {
        let mut st = self.lock();
        // Held messages go back first, so that a queue deleted below passes them on to its
        // alternate exchange in order.
        let mut touched = Vec::new();
        for h in held {
            if let Some(q) = st.queues.get_mut(&*h.queue) {
                q.release(h.position, true);
                touched.push(h.queue.clone());
            }
        }
        let mine: Vec<(String, String)> = st
            .subscriptions
            .keys()
            .filter(|(s, _)| *s == session)
            .map(|(_, d)| d.clone())
            .filter_map(|d| {
                st.subscriptions
                    .get(&(session, d.clone()))
                    .map(|q| (d, q.clone()))
            })
            .collect();
        for (dest, queue) in mine {
            st.subscriptions.remove(&(session, dest.clone()));
            st.drop_consumer(session, &dest, &queue);
        }
        let owned: Vec<String> = st
            .queues
            .values()
            .filter(|q| q.owner == Some(session))
            .map(|q| q.name.clone())
            .collect();
        for name in owned {
            let delete = match st.queues.get_mut(&name) {
                Some(q) => {
                    q.owner = None;
                    q.owner_connection = None;
                    q.auto_delete && q.consumer_count() == 0
                }
                None => false,
            };
            if delete {
                st.auto_delete(&name);
            }
        }
        st.dispatch_queues(&touched);
        st.sessions.remove(&session);
        st.session_names.remove(&session);
    }
}

impl State {
    /// Tells management, if it watches.
    pub(super) fn notify(&self, event: ModelEvent) {
        if let Some(o) = &self.observer {
            o.event(event);
        }
    }

    /// Counts a published message on its exchange (and as unroutable when it reached no
    /// queue), and hands it to management when addressed there.
    fn count_routed(&mut self, exchange: &str, msg: &Arc<Message>, queues: usize) {
        let Some(ex) = self.exchanges.get_mut(exchange) else {
            return;
        };
        // A request management takes counts as routed, to management.
        let to_management = self
            .observer
            .as_ref()
            .is_some_and(|o| o.wants(exchange, msg.routing_key()));
        ex.stats
            .routed(msg.credit_size(), queues + usize::from(to_management));
        if to_management {
            if let Some(o) = &self.observer {
                o.request(exchange, msg);
            }
        } else if queues == 0 {
            self.stats.discards_no_route += 1;
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

    /// The queues a message reaches, following alternate exchanges when it is unroutable;
    /// `Ok(Err(..))` when an xml exchange on the way has no answer in `answers` yet.
    pub(super) fn route(
        &self,
        exchange: &str,
        msg: &Message,
        answers: &XmlAnswers,
    ) -> Result<Result<Vec<String>, XmlPending>, Error> {
        let mut out = Vec::new();
        if exchange.is_empty() {
            let key = msg.routing_key();
            if self.queues.contains_key(key) {
                out.push(key.to_string());
            }
            return Ok(Ok(out));
        }
        let ex = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| Error::NotFound(format!("exchange not found: {exchange}")))?;
        if let Err(pending) = ex.route_with(msg, &mut out, answers) {
            return Ok(Err(pending));
        }
        out.retain(|q| self.queues.contains_key(q));
        if out.is_empty() {
            // Unroutable: follow the alternate exchanges, guarding against cycles.
            let mut alt = ex.alternate.clone();
            let mut hops = 0;
            while let (Some(name), true) = (alt, hops < 8) {
                hops += 1;
                let Some(a) = self.exchanges.get(&name) else {
                    break;
                };
                if let Err(pending) = a.route_with(msg, &mut out, answers) {
                    return Ok(Err(pending));
                }
                out.retain(|q| self.queues.contains_key(q));
                if !out.is_empty() {
                    break;
                }
                alt = a.alternate.clone();
            }
        }
        Ok(Ok(out))
    }

    fn enqueue_all(&mut self, queues: &[String], msg: &Arc<Message>) -> Result<(), Error> {
        self.enqueue_counted(queues, msg, false)
    }

    /// Enqueues on every queue or none; `txn` when a commit brings the message.
    fn enqueue_counted(
        &mut self,
        queues: &[String],
        msg: &Arc<Message>,
        txn: bool,
    ) -> Result<(), Error> {
        // Check every limit first so that a refused message reaches no queue at all.
        for name in queues {
            if let Some(q) = self.queues.get_mut(name) {
                if let Err(e) = q.check_room(msg.size()) {
                    q.stats.discards_overflow += 1;
                    return Err(e);
                }
            }
        }
        for name in queues {
            if let Some(q) = self.queues.get_mut(name) {
                q.enqueue_counted(msg.clone(), txn)?;
                q.dispatch();
            }
        }
        Ok(())
    }

    pub(super) fn reroute(&mut self, exchange: &str, msg: &Arc<Message>) {
        let mut answers = XmlAnswers::default();
        let routed = loop {
            match self.route(exchange, msg, &answers) {
                Ok(Ok(queues)) => break Ok(queues),
                Ok(Err(XmlPending { exchange, bindings })) => {
                    // Rejected and orphaned messages reach an xml alternate exchange while
                    // the lock is held; rare enough to evaluate here rather than defer.
                    let queues = xml::evaluate(bindings, msg.clone());
                    answers.insert(exchange, queues);
                }
                Err(e) => break Err(e),
            }
        };
        if let Ok(queues) = routed {
            for name in queues {
                if let Some(q) = self.queues.get_mut(&name) {
                    if q.enqueue(msg.clone()).is_ok() {
                        q.dispatch();
                    }
                }
            }
        }
    }

    fn dispatch_queues<S: AsRef<str>>(&mut self, names: &[S]) {
        for n in names {
            if let Some(q) = self.queues.get_mut(n.as_ref()) {
                q.dispatch();
            }
        }
    }

    fn drop_consumer(&mut self, session: SessionId, destination: &str, queue: &str) {
        let connection = self.sessions.get(&session).copied().unwrap_or(0);
        self.notify(ModelEvent::Unsubscribed {
            connection,
            destination: destination.to_string(),
        });
        let delete = match self.queues.get_mut(queue) {
            Some(q) => {
                q.remove_consumer(session, destination);
                q.dispatch();
                q.auto_delete && q.had_consumers && q.consumer_count() == 0 && q.owner.is_none()
            }
            None => false,
        };
        if delete {
            self.auto_delete(queue);
        }
    }

    /// An auto-delete queue became unused: delete it now, or after its timeout.
    fn auto_delete(&mut self, name: &str) {
        match self.queues.get_mut(name) {
            Some(q) if q.settings.auto_delete_timeout > 0 => q.pending_delete = Some(None),
            Some(_) => self.remove_queue(name, 0),
            None => {}
        }
    }

    /// Deletes auto-delete exchanges that lost their last binding, unless something uses
    /// them as an alternate.
    fn remove_unused_exchanges(&mut self) {
        let unused: Vec<String> = self
            .exchanges
            .values()
            .filter(|e| e.is_unused_auto_delete())
            .map(|e| e.name.clone())
            .filter(|n| {
                !self
                    .queues
                    .values()
                    .any(|q| q.alternate.as_ref() == Some(n))
                    && !self
                        .exchanges
                        .values()
                        .any(|e| e.alternate.as_ref() == Some(n))
            })
            .collect();
        for n in unused {
            self.remove_exchange(&n);
        }
    }

    /// Adds a durable change to the batch of the current lock (none without a store).
    pub(super) fn record(&self, op: StoreOp) {
        if let Some(log) = &self.log {
            log.push(op);
        }
    }

    fn remove_exchange(&mut self, name: &str) {
        let Some(ex) = self.exchanges.remove(name) else {
            return;
        };
        if ex.durable {
            for b in ex.bindings() {
                if self.queues.get(&b.queue).is_some_and(|q| q.durable) {
                    self.record(StoreOp::DeleteBinding {
                        exchange: name.to_string(),
                        queue: b.queue.clone(),
                        key: b.key.clone(),
                    });
                }
            }
            self.record(StoreOp::DeleteExchange(name.to_string()));
        }
    }

    /// Deletes a queue; `connection` asked for it (0: the broker itself).
    pub(super) fn remove_queue(&mut self, name: &str, connection: u64) {
        let Some(mut q) = self.queues.remove(name) else {
            return;
        };
        self.notify(ModelEvent::QueueDeleted {
            connection,
            name: name.to_string(),
        });
        let mut ops = Vec::new();
        for ex in self.exchanges.values_mut() {
            if q.durable && ex.durable {
                for b in ex.bindings().iter().filter(|b| b.queue == name) {
                    ops.push(StoreOp::DeleteBinding {
                        exchange: ex.name.clone(),
                        queue: name.to_string(),
                        key: b.key.clone(),
                    });
                }
            }
            ex.unbind_queue(name);
        }
        if q.durable {
            ops.push(StoreOp::DeleteQueue(name.to_string()));
        }
        for op in ops {
            self.record(op);
        }
        self.remove_unused_exchanges();
        // Subscriptions outlive their queue (the peer still cancels them); they point at no
        // queue from now on, so a new queue of the same name is not mistaken for it.
        for qn in self.subscriptions.values_mut() {
            if qn == name {
                qn.clear();
            }
        }
        let left = q.drain();
        match q.alternate.clone() {
            Some(alt) => {
                self.stats.abandoned_via_alt += left.len() as u64;
                for msg in left {
                    self.reroute(&alt, &msg);
                }
            }
            None => self.stats.abandoned += left.len() as u64,
        }
        self.stats.gone.absorb(&q.stats);
    }
}

/// Declare arguments as stored: a 0-10 map.
/// Decodes stored messages on every core: with a million messages in the store, decoding is
/// a good part of the time to start.
fn decode_stored_messages(
    stored: &[clacks_storage::StoredMessage],
) -> Vec<Result<Message, crate::wire::DecodeError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || stored.len() < 10_000 {
        return stored
            .iter()
            .map(|m| Message::decode_stored(&m.data))
            .collect();
    }
    let per_thread = stored.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = stored
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|m| Message::decode_stored(&m.data))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| {
                p.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

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
