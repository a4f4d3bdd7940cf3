//! The model as management sees it, and the operations only management performs.
//!
//! A [`Snapshot`] is taken in one pass under the broker lock, so every window onto the
//! model (QMF, the agent's `broker` target, the CLI) reads the same objects and counters.

use std::sync::Arc;

use super::broker::Broker;
use super::error::Error;
use super::message::Message;
use super::queue::TRACE_HEADER;
use super::stats::{ExchangeStats, QueueStats};
use super::SessionId;
use crate::wire::FieldTable;

/// One queue with its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    /// Name.
    pub name: String,
    /// Survives a restart.
    pub durable: bool,
    /// Goes away when unused.
    pub auto_delete: bool,
    /// Owned by a session.
    pub exclusive: bool,
    /// Alternate exchange.
    pub alternate: Option<String>,
    /// Declare arguments.
    pub args: FieldTable,
    /// Who declared it, when known.
    pub creator: Option<String>,
    /// Messages held, acquired ones included.
    pub depth: u64,
    /// Body bytes held.
    pub bytes: u64,
    /// Messages acquired and not yet settled.
    pub unacked: u64,
    /// Consumers now.
    pub consumers: u32,
    /// Bindings now (the default exchange's included, as qpidd counts).
    pub bindings: u32,
    /// Counters.
    pub stats: QueueStats,
}

impl QueueView {
    /// Bytes held as management counts them (headers and bodies): what entered minus what
    /// left.
    pub fn byte_depth(&self) -> u64 {
        self.stats
            .enqueues
            .bytes
            .saturating_sub(self.stats.dequeues.bytes)
    }
}

/// One exchange with its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeView {
    /// Name (empty: the default exchange).
    pub name: String,
    /// Type.
    pub kind: String,
    /// Survives a restart.
    pub durable: bool,
    /// Goes away with its last binding.
    pub auto_delete: bool,
    /// Alternate exchange.
    pub alternate: Option<String>,
    /// Declare arguments.
    pub args: FieldTable,
    /// Bindings now.
    pub bindings: u32,
    /// Counters.
    pub stats: ExchangeStats,
}

/// One binding.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingView {
    /// The exchange (empty: the default exchange).
    pub exchange: String,
    /// The queue.
    pub queue: String,
    /// The key.
    pub key: String,
    /// The arguments.
    pub args: FieldTable,
}

/// One consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionView {
    /// Its session.
    pub session: SessionId,
    /// Its queue.
    pub queue: String,
    /// Its destination.
    pub destination: String,
    /// Browsing rather than acquiring.
    pub browsing: bool,
    /// Accept-mode explicit.
    pub acknowledged: bool,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// Window (true) or credit flow control.
    pub window: bool,
    /// Messages delivered.
    pub delivered: u64,
}

/// One attached session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// The broker's id.
    pub id: SessionId,
    /// Its connection.
    pub connection: u64,
    /// The name it attached with.
    pub name: String,
    /// Its channel.
    pub channel: u16,
}

/// Broker-wide figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BrokerView {
    /// Queues now.
    pub queue_count: u64,
    /// Messages held on all queues.
    pub depth: u64,
    /// Bytes held on all queues.
    pub bytes: u64,
    /// The counters of every queue there is or was.
    pub totals: QueueStats,
    /// Published messages that reached no queue.
    pub discards_no_route: u64,
    /// Messages lost with deleted queues.
    pub abandoned: u64,
    /// Messages deleted queues passed to their alternate exchange.
    pub abandoned_via_alt: u64,
}

/// Which parts of the model a snapshot takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parts {
    /// Queues.
    pub queues: bool,
    /// Exchanges.
    pub exchanges: bool,
    /// Bindings.
    pub bindings: bool,
    /// Subscriptions.
    pub subscriptions: bool,
    /// Sessions.
    pub sessions: bool,
}

impl Parts {
    /// Everything.
    pub const ALL: Parts = Parts {
        queues: true,
        exchanges: true,
        bindings: true,
        subscriptions: true,
        sessions: true,
    };
}

/// The model at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Queues, by name.
    pub queues: Vec<QueueView>,
    /// Exchanges, by name, the default exchange first.
    pub exchanges: Vec<ExchangeView>,
    /// Bindings, by exchange, then in the order they were made.
    pub bindings: Vec<BindingView>,
    /// Consumers.
    pub subscriptions: Vec<SubscriptionView>,
    /// Attached sessions.
    pub sessions: Vec<SessionView>,
    /// Broker-wide figures (always taken).
    pub broker: BrokerView,
}

impl Broker {
    /// The parts of the model asked for, as one consistent picture.
    pub fn snapshot(&self, parts: Parts) -> Snapshot {
        let st = self.lock();
        let mut snap = Snapshot::default();
        let mut totals = st.stats.gone;
        let mut bound: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for ex in st.exchanges.values() {
            for b in ex.bindings() {
                *bound.entry(b.queue.as_str()).or_default() += 1;
            }
        }
        for q in st.queues.values() {
            totals.absorb(&q.stats);
            snap.broker.depth += q.depth() as u64;
            snap.broker.bytes += q.byte_count();
            if parts.queues {
                snap.queues.push(QueueView {
                    name: q.name.clone(),
                    durable: q.durable,
                    auto_delete: q.auto_delete,
                    exclusive: q.owner.is_some(),
                    alternate: q.alternate.clone(),
                    args: q.args.clone(),
                    creator: q.creator.clone(),
                    depth: q.depth() as u64,
                    bytes: q.byte_count(),
                    unacked: q.unacked() as u64,
                    consumers: u32::try_from(q.consumer_count()).unwrap_or(u32::MAX),
                    // The default exchange binds every queue too.
                    bindings: bound.get(q.name.as_str()).copied().unwrap_or(0) + 1,
                    stats: q.stats,
                });
            }
            if parts.subscriptions {
                snap.subscriptions
                    .extend(q.consumers.iter().map(|c| SubscriptionView {
                        session: c.session,
                        queue: q.name.clone(),
                        destination: c.destination.to_string(),
                        browsing: !c.acquire,
                        acknowledged: c.accept_explicit,
                        exclusive: c.exclusive,
                        window: c.credit.window,
                        delivered: c.delivered,
                    }));
            }
        }
        snap.broker.queue_count = st.queues.len() as u64;
        snap.broker.totals = totals;
        snap.broker.discards_no_route = st.stats.discards_no_route;
        snap.broker.abandoned = st.stats.abandoned;
        snap.broker.abandoned_via_alt = st.stats.abandoned_via_alt;
        if parts.exchanges {
            snap.exchanges.push(ExchangeView {
                name: String::new(),
                kind: "direct".into(),
                durable: true,
                auto_delete: false,
                alternate: None,
                args: FieldTable::new(),
                bindings: u32::try_from(st.queues.len()).unwrap_or(u32::MAX),
                stats: ExchangeStats::default(),
            });
            let mut named: Vec<ExchangeView> = st
                .exchanges
                .values()
                .map(|e| ExchangeView {
                    name: e.name.clone(),
                    kind: e.kind.clone(),
                    durable: e.durable,
                    auto_delete: e.auto_delete,
                    alternate: e.alternate.clone(),
                    args: e.args.clone(),
                    bindings: u32::try_from(e.bindings().len()).unwrap_or(u32::MAX),
                    stats: e.stats,
                })
                .collect();
            named.sort_by(|a, b| a.name.cmp(&b.name));
            snap.exchanges.extend(named);
        }
        if parts.bindings {
            let mut names: Vec<&String> = st.exchanges.keys().collect();
            names.sort();
            for q in st.queues.values() {
                snap.bindings.push(BindingView {
                    exchange: String::new(),
                    queue: q.name.clone(),
                    key: q.name.clone(),
                    args: FieldTable::new(),
                });
            }
            for name in names {
                if let Some(e) = st.exchanges.get(name) {
                    snap.bindings
                        .extend(e.bindings().iter().map(|b| BindingView {
                            exchange: e.name.clone(),
                            queue: b.queue.clone(),
                            key: b.key.clone(),
                            args: b.args.clone(),
                        }));
                }
            }
        }
        if parts.sessions {
            for (id, connection) in &st.sessions {
                let (name, channel) = st
                    .session_names
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| (format!("session-{}", id.0), 0));
                snap.sessions.push(SessionView {
                    id: *id,
                    connection: *connection,
                    name,
                    channel,
                });
            }
            snap.sessions.sort_by_key(|s| s.id);
        }
        drop(st);
        snap.queues.sort_by(|a, b| a.name.cmp(&b.name));
        snap
    }

    /// The message groups of `queue` as management's `query` reports them: `None` for a
    /// queue without groups.
    ///
    /// # Errors
    /// 404 when the queue does not exist.
    pub fn queue_groups(&self, queue: &str) -> Result<Option<FieldTable>, Error> {
        let st = self.lock();
        let q = st.queue(queue)?;
        Ok(q.group_state()
            .map(|(key, groups)| super::groups::state_map(&key, &groups)))
    }

    /// Whether a message with routing key `key` sent to `exchange` (not an xml exchange)
    /// would reach any queue; nothing is counted.
    pub fn has_route(&self, exchange: &str, key: &str) -> bool {
        let probe = Message::new(key, bytes::Bytes::new());
        let st = self.lock();
        matches!(
            st.route(exchange, &probe, &super::exchange::XmlAnswers::default()),
            Ok(Ok(queues)) if !queues.is_empty()
        )
    }

    /// Removes up to `limit` (0: all) available messages of `queue` that `filter` accepts;
    /// returns how many went.
    ///
    /// # Errors
    /// 404 when the queue does not exist.
    pub fn purge_matching(
        &self,
        queue: &str,
        limit: usize,
        filter: impl Fn(&Message) -> bool,
    ) -> Result<usize, Error> {
        let mut st = self.lock();
        let q = st.queue_mut(queue)?;
        let n = q.take_matching(limit, filter).len();
        q.stats.discards_purge += n as u64;
        Ok(n)
    }

    /// Moves up to `limit` (0: all) available messages that `filter` accepts from queue
    /// `from` to the end of queue `to`, in order; returns how many moved.
    ///
    /// # Errors
    /// 404 when either queue does not exist; 506 when `to` cannot take them all.
    pub fn move_messages(
        &self,
        from: &str,
        to: &str,
        limit: usize,
        filter: impl Fn(&Message) -> bool,
    ) -> Result<usize, Error> {
        let mut st = self.lock();
        st.queue(to)?;
        let mut taken = st.queue_mut(from)?.take_matching(limit, filter).into_iter();
        let dest = st.queue_mut(to)?;
        let mut moved = 0;
        let mut refused = None;
        for msg in taken.by_ref() {
            if let Err(e) = dest.enqueue(Arc::clone(&msg)) {
                refused = Some((e, msg));
                break;
            }
            moved += 1;
        }
        dest.dispatch();
        let Some((error, first)) = refused else {
            return Ok(moved);
        };
        // What the destination refused goes back where it came from rather than being lost;
        // the source held it a moment ago, so it has the room.
        let source = st.queue_mut(from)?;
        for msg in std::iter::once(first).chain(taken) {
            if let Err(e) = source.enqueue(msg) {
                tracing::warn!(queue = from, error = %e, "cannot return a message a move could not place");
            }
        }
        source.dispatch();
        Err(error)
    }

    /// Takes up to `limit` (0: all) available messages that `filter` accepts off `queue`
    /// and routes them through `exchange` (`None`: the queue's alternate exchange);
    /// returns how many went.
    ///
    /// # Errors
    /// 404 when the queue or the exchange does not exist, or the queue has no alternate.
    pub fn reroute_messages(
        &self,
        queue: &str,
        exchange: Option<&str>,
        limit: usize,
        filter: impl Fn(&Message) -> bool,
    ) -> Result<usize, Error> {
        let mut st = self.lock();
        let q = st.queue(queue)?;
        let target = match exchange {
            Some(e) => e.to_string(),
            None => q.alternate.clone().ok_or_else(|| {
                Error::NotFound(format!("queue {queue} has no alternate exchange"))
            })?,
        };
        if !target.is_empty() && !st.exchanges.contains_key(&target) {
            return Err(Error::NotFound(format!("exchange not found: {target}")));
        }
        let q = st.queue_mut(queue)?;
        let taken = q.take_matching(limit, filter);
        q.stats.reroutes += taken.len() as u64;
        // Under the same lock, so the store sees the move as one batch. A rerouted message
        // starts its travels afresh: its federation trace is emptied (the header stays).
        for msg in &taken {
            let trace = msg
                .headers()
                .and_then(|h| h.get(TRACE_HEADER))
                .and_then(crate::wire::Value::as_str);
            match trace {
                Some(t) if !t.is_empty() => {
                    let fresh = msg.with_header(TRACE_HEADER, crate::wire::Value::from(""));
                    st.reroute(&target, &Arc::new(fresh));
                }
                _ => st.reroute(&target, msg),
            }
        }
        Ok(taken.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::broker::QueueDeclare;

    #[test]
    fn a_move_the_destination_refuses_loses_nothing() {
        let b = Broker::new();
        let s = b.new_session(b.new_connection());
        let mut small = FieldTable::new();
        small.insert("qpid.max_count", 2i64);
        small.insert("qpid.policy_type", "reject");
        for (name, args) in [("src", FieldTable::new()), ("dst", small)] {
            b.declare_queue(
                s,
                QueueDeclare {
                    name: name.into(),
                    args,
                    ..QueueDeclare::default()
                },
            )
            .expect("declare");
        }
        for i in 0..5 {
            let body = format!("m{i}");
            b.publish("", Arc::new(Message::new("src", body.into_bytes())))
                .expect("publish");
        }
        let moved = b.move_messages("src", "dst", 0, |_| true);
        assert!(matches!(moved, Err(Error::LimitExceeded(_))), "{moved:?}");
        let depths: Vec<(String, u64)> = b
            .snapshot(Parts::ALL)
            .queues
            .into_iter()
            .map(|q| (q.name, q.depth))
            .collect();
        assert_eq!(depths, [("dst".to_string(), 2), ("src".to_string(), 3)]);
    }
}
