//! Queues: messages in order (by priority level, then arrival), consumers served round robin
//! under their credit, acquire/release/accept, limits with reject or ring policy, and the
//! last-value and priority variants as qpidd has them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use clacks_storage::StoreOp;

use super::consumer::{Consumer, Delivery};
use super::error::Error;
use super::groups::{GroupState, Groups};
use super::journal::OpLog;
use super::memory::MemoryBudget;
use super::message::Message;
use super::observer::{ModelEvent, Observer, Threshold};
use super::stats::QueueStats;
use super::SessionId;
use crate::wire::{FieldTable, Value};

/// Where a message sits in its queue: priority band first (lower sorts first, so the band is
/// stored inverted), then arrival sequence. Unique within a queue; also the message's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    band: u8,
    /// Arrival order within the queue.
    pub seq: u64,
}

/// What to do when a limit would be passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPolicy {
    /// Refuse the new message (resource-limit-exceeded).
    Reject,
    /// Drop the oldest messages to make room.
    Ring,
}

/// Queue behaviour parsed once from the declare arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// `qpid.max_count`.
    pub max_count: Option<u64>,
    /// `qpid.max_size` (bytes of message bodies).
    pub max_size: Option<u64>,
    /// Whether the declare named `qpid.max_size` (0 for none); if not, the broker's
    /// default limit applies.
    pub max_size_given: bool,
    /// `qpid.policy_type`.
    pub policy: LimitPolicy,
    /// `qpid.last_value_queue_key`: the header whose value replaces older messages.
    pub lvq_key: Option<String>,
    /// `qpid.priorities`: number of priority levels (0 = plain FIFO).
    pub priorities: u8,
    /// `qpid.fairshare` (and `x-qpid-fairshare`): per-level delivery quota before moving on.
    pub fairshare: Vec<(u8, u32)>,
    /// `no-local`: drop messages published on the connection that owns or exclusively
    /// consumes the queue.
    pub no_local: bool,
    /// `qpid.auto_delete_timeout`: seconds an unused auto-delete queue lingers.
    pub auto_delete_timeout: u64,
    /// `qpid.queue_msg_sequence`: the application header that gets each message's number.
    pub sequence_key: Option<String>,
    /// `qpid.trace.id`: the broker id added to the `x-qpid.trace` header of each message
    /// (federation bridge queues).
    pub trace_id: Option<String>,
    /// `x-message-ttl` (RabbitMQ's, in milliseconds): how long a message may wait here,
    /// whatever its own TTL says (the earlier of the two counts).
    pub message_ttl: Option<std::time::Duration>,
    /// `x-expires` (RabbitMQ's, in milliseconds): the queue is deleted once it has had no
    /// consumer, redeclare or get for this long.
    pub expires: Option<std::time::Duration>,
    /// `x-dead-letter-exchange` (RabbitMQ's; `""` is the default exchange): where rejected
    /// and expired messages go, marked as dead letters. Without it rejected messages go to
    /// the alternate exchange as they are, and expired ones are dropped.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`: the routing key dead letters get (their own otherwise).
    pub dead_letter_routing_key: Option<String>,
    /// `qpid.trace.exclude`: messages whose trace names one of these brokers are dropped,
    /// so that a message never travels a federation loop twice.
    pub trace_exclude: Vec<String>,
}

/// The application header listing the brokers a message passed through on federation
/// links, comma-separated.
pub const TRACE_HEADER: &str = "x-qpid.trace";

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_count: None,
            max_size: None,
            max_size_given: false,
            policy: LimitPolicy::Reject,
            lvq_key: None,
            priorities: 0,
            fairshare: Vec::new(),
            no_local: false,
            auto_delete_timeout: 0,
            message_ttl: None,
            expires: None,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            sequence_key: None,
            trace_id: None,
            trace_exclude: Vec::new(),
        }
    }
}

fn arg_u64(args: &FieldTable, key: &str) -> Result<Option<u64>, Error> {
    match args.get(key) {
        None | Some(Value::Void) => Ok(None),
        Some(v) => v
            .as_i64()
            .and_then(|n| u64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| Error::InvalidArgument(format!("{key} must be a non-negative integer"))),
    }
}

/// A text argument, if given as text.
fn arg_text(args: &FieldTable, key: &str) -> Option<String> {
    args.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The broker ids of a comma-separated trace list.
fn trace_ids(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

impl QueueSettings {
    /// Reads the arguments qpidd understands; unknown ones are left for `queue.query`.
    ///
    /// # Errors
    /// `InvalidArgument` for values of the wrong type or out of range.
    pub fn from_args(args: &FieldTable) -> Result<QueueSettings, Error> {
        let mut s = QueueSettings {
            max_count: arg_u64(args, "qpid.max_count")?.filter(|n| *n > 0),
            max_size: arg_u64(args, "qpid.max_size")?.filter(|n| *n > 0),
            max_size_given: arg_u64(args, "qpid.max_size")?.is_some(),
            no_local: args.get("no-local").is_some_and(|v| {
                v.as_i64()
                    .map_or_else(|| v.as_str() != Some("false"), |n| n != 0)
            }),
            auto_delete_timeout: arg_u64(args, "qpid.auto_delete_timeout")?.unwrap_or(0),
            message_ttl: arg_u64(args, "x-message-ttl")?.map(std::time::Duration::from_millis),
            expires: match arg_u64(args, "x-expires")? {
                Some(0) => {
                    return Err(Error::InvalidArgument(
                        "x-expires must be a positive integer".into(),
                    ))
                }
                ms => ms.map(std::time::Duration::from_millis),
            },
            dead_letter_exchange: arg_text(args, "x-dead-letter-exchange"),
            dead_letter_routing_key: arg_text(args, "x-dead-letter-routing-key"),
            sequence_key: arg_text(args, "qpid.queue_msg_sequence"),
            trace_id: args
                .get("qpid.trace.id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            trace_exclude: args
                .get("qpid.trace.exclude")
                .and_then(Value::as_str)
                .map(trace_ids)
                .unwrap_or_default(),
            ..QueueSettings::default()
        };
        if let Some(p) = args.get("qpid.policy_type") {
            s.policy = match p.as_str() {
                Some("reject") => LimitPolicy::Reject,
                Some("ring") | Some("ring_strict") => LimitPolicy::Ring,
                // Flow-to-disk and flow control are not offered; qpidd accepts the names.
                Some("flow_to_disk") | Some("none") => LimitPolicy::Reject,
                _ => {
                    return Err(Error::InvalidArgument(
                        "qpid.policy_type must be reject or ring".into(),
                    ))
                }
            };
        }
        s.lvq_key = match args.get("qpid.last_value_queue_key") {
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| {
                        Error::InvalidArgument("qpid.last_value_queue_key must be a string".into())
                    })?
                    .to_string(),
            ),
            None if args.get("qpid.last_value_queue").and_then(Value::as_i64) == Some(1) => {
                Some("qpid.LVQ_key".into())
            }
            None => None,
        };
        let levels = arg_u64(args, "qpid.priorities")?.or(arg_u64(args, "x-qpid-priorities")?);
        if let Some(n) = levels {
            if n > 10 {
                return Err(Error::InvalidArgument(
                    "qpid.priorities must be 1 to 10".into(),
                ));
            }
            s.priorities = n as u8;
        }
        if s.priorities > 0 {
            let all = arg_u64(args, "qpid.fairshare")?.or(arg_u64(args, "x-qpid-fairshare")?);
            for level in 0..s.priorities {
                let own = arg_u64(args, &format!("qpid.fairshare-{level}"))?
                    .or(arg_u64(args, &format!("x-qpid-fairshare-{level}"))?)
                    .or(all);
                if let Some(limit) = own.filter(|n| *n > 0) {
                    s.fairshare
                        .push((level, u32::try_from(limit).unwrap_or(u32::MAX)));
                }
            }
        }
        Ok(s)
    }

    /// The priority level of a message priority, as qpidd maps the ten AMQP priorities
    /// onto fewer levels: the lowest priorities share level 0.
    pub fn level(&self, priority: u8) -> u8 {
        if self.priorities == 0 {
            return 0;
        }
        let levels = u32::from(self.priorities);
        let first = 5 - levels.div_ceil(2).min(5);
        let p = u32::from(priority);
        if p <= first {
            0
        } else {
            (p - first).min(levels - 1) as u8
        }
    }
}

/// A message held by a queue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The shared message.
    pub msg: Arc<Message>,
    /// Whether it was delivered before and given back.
    pub redelivered: bool,
    /// When it expires here: its own TTL or the queue's, whichever comes first.
    pub expires_at: Option<std::time::Instant>,
}

/// A queue and its consumers.
#[derive(Debug)]
pub struct Queue {
    /// Name.
    pub name: String,
    /// The name again, shared by every delivery and held message instead of copied.
    pub shared_name: Arc<str>,
    /// Whether it survives a restart.
    pub durable: bool,
    /// The session that owns it exclusively, if any.
    pub owner: Option<SessionId>,
    /// Whether it goes away when its last consumer leaves (or its owner ends).
    pub auto_delete: bool,
    /// Where rejected and orphaned messages go.
    pub alternate: Option<String>,
    /// Declare arguments as given.
    pub args: FieldTable,
    /// Parsed arguments.
    pub settings: QueueSettings,
    available: BTreeMap<Position, Entry>,
    acquired: HashMap<Position, Entry>,
    lvq: HashMap<String, Position>,
    bytes: u64,
    next_seq: u64,
    pub(super) consumers: Vec<Consumer>,
    next_consumer: usize,
    /// Whether a consumer was ever attached (auto-delete waits for the first one).
    pub(super) had_consumers: bool,
    /// Deliveries per priority level in the current fair-share round.
    fair_used: HashMap<u8, u32>,
    /// The connection of the owning session (for `no-local`).
    pub(super) owner_connection: Option<u64>,
    /// The user who declared it (per-user queue limits); not kept across restarts.
    pub(super) creator: Option<String>,
    /// Set when auto-delete triggered with a timeout; the deadline is set by `tick`.
    pub(super) pending_delete: Option<Option<std::time::Instant>>,
    /// When it last had a consumer, a declare or a get (for `x-expires`).
    pub(super) last_used: std::time::Instant,
    /// Messages with a time to live, by expiry: expiring costs what expires, not a scan
    /// of the queue. Acquired messages leave it when due and come back on release.
    expiries: BTreeSet<(std::time::Instant, Position)>,
    /// Where a durable queue records changes to its persistent messages.
    pub(super) log: Option<OpLog>,
    /// What the queue has counted since it was made (or recovered).
    pub stats: QueueStats,
    /// Where threshold crossings are reported.
    pub(super) observer: Option<Arc<dyn Observer>>,
    /// The `qpid.alert_*` threshold and whether the queue is above it.
    threshold: Option<Threshold>,
    /// Message groups (`qpid.group_header_key`) and who holds them.
    groups: Option<Groups>,
    /// The broker-wide budget this queue's messages count against.
    pub(super) budget: Arc<MemoryBudget>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        // A deleted queue's messages no longer cost anything.
        self.budget.sub(self.footprint());
    }
}

impl Queue {
    /// A new empty queue.
    pub fn new(name: &str, args: FieldTable) -> Result<Queue, Error> {
        Ok(Queue {
            name: name.to_string(),
            shared_name: Arc::from(name),
            durable: false,
            owner: None,
            auto_delete: false,
            alternate: None,
            settings: QueueSettings::from_args(&args)?,
            threshold: Threshold::from_args(&args)?,
            groups: Groups::from_args(&args),
            args,
            available: BTreeMap::new(),
            acquired: HashMap::new(),
            lvq: HashMap::new(),
            bytes: 0,
            next_seq: 1,
            consumers: Vec::new(),
            next_consumer: 0,
            had_consumers: false,
            fair_used: HashMap::new(),
            owner_connection: None,
            creator: None,
            pending_delete: None,
            last_used: std::time::Instant::now(),
            expiries: BTreeSet::new(),
            log: None,
            stats: QueueStats::default(),
            observer: None,
            budget: Arc::new(MemoryBudget::unlimited()),
        })
    }

    /// Puts the queue under the broker's memory limits: `default_max_size` unless its
    /// declare set `qpid.max_size`, and the broker-wide `budget`.
    pub(super) fn limit_memory(
        &mut self,
        default_max_size: Option<u64>,
        budget: &Arc<MemoryBudget>,
    ) {
        if !self.settings.max_size_given {
            self.settings.max_size = default_max_size;
        }
        if !Arc::ptr_eq(&self.budget, budget) {
            let held = self.footprint();
            self.budget.sub(held);
            budget.add(held);
            self.budget = budget.clone();
        }
    }

    /// What the messages held here cost the broker-wide budget.
    fn footprint(&self) -> u64 {
        self.available
            .values()
            .chain(self.acquired.values())
            .map(|e| e.msg.footprint())
            .sum()
    }

    fn count_in(&mut self, msg: &Message) {
        self.bytes += msg.size();
        self.budget.add(msg.footprint());
    }

    fn count_out(&mut self, msg: &Message) {
        self.bytes -= msg.size();
        self.budget.sub(msg.footprint());
    }

    /// Messages waiting to be acquired.
    pub fn message_count(&self) -> usize {
        self.available.len()
    }

    /// Messages held, acquired ones included.
    pub fn depth(&self) -> usize {
        self.available.len() + self.acquired.len()
    }

    /// Bytes of the message bodies held, acquired ones included.
    pub fn byte_count(&self) -> u64 {
        self.bytes
    }

    /// Number of consumers.
    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// The queue's message groups with their messages and holders; `None` for a queue
    /// without groups.
    pub fn group_state(&self) -> Option<(String, Vec<GroupState>)> {
        let g = self.groups.as_ref()?;
        let all = self.available.values().chain(self.acquired.values());
        Some((g.key().to_string(), g.state(all.map(|e| &*e.msg))))
    }

    /// Acquires the available message with arrival number `seq` for a recovered
    /// transaction branch; where it is held.
    pub fn hold_seq(&mut self, seq: u64) -> Option<Position> {
        let pos = self.available.keys().find(|p| p.seq == seq).copied()?;
        self.acquire(pos).then_some(pos)
    }

    /// Messages acquired by consumers and not yet settled.
    pub fn unacked(&self) -> usize {
        self.acquired.len()
    }

    /// Takes out up to `limit` (0: no limit) available messages that `filter` accepts, in
    /// queue order (management's purge, move and reroute). Counted as dequeues.
    pub fn take_matching(
        &mut self,
        limit: usize,
        filter: impl Fn(&Message) -> bool,
    ) -> Vec<Arc<Message>> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let picked: Vec<Position> = self
            .available
            .iter()
            .filter(|(_, e)| filter(&e.msg))
            .map(|(p, _)| *p)
            .take(limit)
            .collect();
        picked
            .into_iter()
            .filter_map(|p| self.remove_available(p))
            .map(|e| e.msg)
            .collect()
    }

    /// Adds a message, applying last-value replacement and limits.
    ///
    /// # Errors
    /// `LimitExceeded` when a limit is reached under the reject policy.
    pub fn enqueue(&mut self, msg: Arc<Message>) -> Result<(), Error> {
        self.enqueue_counted(msg, false)
    }

    /// [`Queue::enqueue`], counted as transactional when `txn` (a commit brings it).
    ///
    /// # Errors
    /// As [`Queue::enqueue`].
    pub fn enqueue_counted(&mut self, msg: Arc<Message>, txn: bool) -> Result<(), Error> {
        if self.settings.no_local && msg.origin != 0 {
            let local = self.owner_connection == Some(msg.origin)
                || self
                    .consumers
                    .iter()
                    .any(|c| c.exclusive && c.connection == msg.origin);
            if local {
                return Ok(());
            }
        }
        if self.next_seq == u64::MAX {
            // Only a damaged store gets here: its last message took the last number.
            return Err(Error::LimitExceeded(format!(
                "queue {} has used up its message numbers",
                self.name
            )));
        }
        let msg = match self.traced(msg) {
            Some(msg) => msg,
            None => return Ok(()),
        };
        let lvq_value = self.lvq_value(&msg);
        if let Some(v) = &lvq_value {
            if let Some(pos) = self.lvq.get(v).copied() {
                if self.remove_available(pos).is_some() {
                    self.stats.discards_lvq += 1;
                }
            }
        }
        let band = 255 - self.settings.level(msg.priority());
        match self.make_room(&msg, band) {
            Err(e) => {
                self.stats.discards_overflow += 1;
                return Err(e);
            }
            Ok(false) => {
                self.stats.discards_ring += 1;
                return Ok(());
            }
            Ok(true) => {}
        }
        let msg = match &self.settings.sequence_key {
            Some(key) => Arc::new(msg.with_header(key, Value::Int64(self.next_seq as i64))),
            None => msg,
        };
        let pos = Position {
            band,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let expires_at = self.expiry_of(&msg);
        if let Some(t) = expires_at {
            self.expiries.insert((t, pos));
        }
        if self.persists(&msg) {
            self.record(StoreOp::Enqueue {
                queue: self.name.clone(),
                seq: pos.seq,
                data: msg.encode_stored(),
            });
        }
        self.count_in(&msg);
        self.stats.enqueued(&msg, txn);
        if let Some(v) = lvq_value {
            self.lvq.insert(v, pos);
        }
        self.available.insert(
            pos,
            Entry {
                msg,
                redelivered: false,
                expires_at,
            },
        );
        self.check_threshold();
        Ok(())
    }

    /// Reports a crossing of the `qpid.alert_*` threshold, either way.
    fn check_threshold(&mut self) {
        let Some(t) = &mut self.threshold else {
            return;
        };
        let (depth, bytes) = (
            self.available.len() as u64 + self.acquired.len() as u64,
            self.stats
                .enqueues
                .bytes
                .saturating_sub(self.stats.dequeues.bytes),
        );
        let compat = t.compat;
        for crossing in t.crossed(depth, bytes).into_iter().flatten() {
            let Some(o) = &self.observer else {
                return;
            };
            o.event(ModelEvent::Threshold {
                queue: self.name.clone(),
                crossing,
                compat,
                msg_depth: depth,
                byte_depth: bytes,
            });
        }
    }

    /// Applies the federation trace: `None` when the message already passed a broker this
    /// queue excludes, else the message with this queue's trace id added.
    fn traced(&self, msg: Arc<Message>) -> Option<Arc<Message>> {
        if self.settings.trace_id.is_none() && self.settings.trace_exclude.is_empty() {
            return Some(msg);
        }
        let trace = msg
            .headers()
            .and_then(|h| h.get(TRACE_HEADER))
            .and_then(Value::as_str)
            .map(trace_ids)
            .unwrap_or_default();
        if trace
            .iter()
            .any(|t| self.settings.trace_exclude.contains(t))
        {
            return None;
        }
        match &self.settings.trace_id {
            Some(id) if !trace.contains(id) => {
                let mut trace = trace;
                trace.push(id.clone());
                Some(Arc::new(
                    msg.with_header(TRACE_HEADER, Value::from(trace.join(","))),
                ))
            }
            _ => Some(msg),
        }
    }

    fn over_limit(&self, size: u64) -> bool {
        self.settings
            .max_count
            .is_some_and(|m| self.depth() as u64 + 1 > m)
            || self
                .settings
                .max_size
                .is_some_and(|m| self.bytes + size > m)
    }

    /// Whether `msg` would be refused (reject policy only; a ring queue makes room
    /// instead), by this queue's limits or the broker-wide one.
    ///
    /// # Errors
    /// `LimitExceeded` naming the queue and its limits, or the broker's.
    pub fn check_room(&self, msg: &Message) -> Result<(), Error> {
        if self.settings.policy != LimitPolicy::Reject {
            return Ok(());
        }
        if self.over_limit(msg.size()) {
            return Err(Error::LimitExceeded(format!(
                "maximum depth exceeded on {}: current=[count: {}, size: {}], max=[count: {}, size: {}]",
                self.name,
                self.depth(),
                self.bytes,
                self.settings.max_count.unwrap_or(0),
                self.settings.max_size.unwrap_or(0)
            )));
        }
        self.check_budget(msg.footprint())
    }

    fn check_budget(&self, cost: u64) -> Result<(), Error> {
        if self.budget.would_exceed(cost) {
            return Err(Error::LimitExceeded(format!(
                "broker memory limit reached enqueuing on {}: queued {} bytes, max_queued_bytes {}",
                self.name,
                self.budget.used(),
                self.budget.max().unwrap_or(0)
            )));
        }
        Ok(())
    }

    /// Makes room for `msg` in priority `band`. Returns false when the message itself is
    /// the one a ring queue drops (it ranks below everything held).
    fn make_room(&mut self, msg: &Message, band: u8) -> Result<bool, Error> {
        self.check_room(msg)?;
        let (size, cost) = (msg.size(), msg.footprint());
        let limited = self.settings.max_count.is_some() || self.settings.max_size.is_some();
        if self.settings.policy == LimitPolicy::Reject
            || (!limited && !self.budget.would_exceed(cost))
        {
            return Ok(true);
        }
        // A ring counts what it can still drop: messages held by consumers are not its to
        // discard, so they do not count against it either.
        let held_bytes: u64 = if self.settings.max_size.is_some() {
            self.acquired.values().map(|e| e.msg.size()).sum()
        } else {
            0
        };
        loop {
            let over_budget = self.budget.would_exceed(cost);
            let over = over_budget
                || self
                    .settings
                    .max_count
                    .is_some_and(|m| self.available.len() as u64 + 1 > m)
                || self
                    .settings
                    .max_size
                    .is_some_and(|m| self.bytes - held_bytes + size > m);
            if !over {
                return Ok(true);
            }
            // The oldest message of the lowest priority level goes; a newcomer of a lower
            // level than everything held goes instead.
            let Some(lowest_band) = self.available.keys().next_back().map(|p| p.band) else {
                if over_budget {
                    // Nothing of ours left to drop: the broker is full of others' messages.
                    self.check_budget(cost)?;
                }
                return Ok(size == 0 || self.settings.max_size.is_none_or(|m| size <= m));
            };
            if band > lowest_band {
                return Ok(false);
            }
            let oldest = self
                .available
                .range(
                    Position {
                        band: lowest_band,
                        seq: 0,
                    }..,
                )
                .next()
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                if self.remove_available(p).is_some() {
                    self.stats.discards_ring += 1;
                }
            }
        }
    }

    /// The last-value key of `msg` on this queue, if it is a last-value queue.
    fn lvq_value(&self, msg: &Message) -> Option<String> {
        let key = self.settings.lvq_key.as_ref()?;
        let v = msg.headers()?.get(key)?;
        Some(v.as_str().map_or_else(|| format!("{v:?}"), str::to_string))
    }

    /// Whether changes to `msg` here must reach the store.
    pub(super) fn persists(&self, msg: &Message) -> bool {
        self.durable && self.log.is_some() && msg.is_persistent()
    }

    fn record(&self, op: StoreOp) {
        if let Some(log) = &self.log {
            log.push(op);
        }
    }

    fn record_dequeue(&self, pos: Position, msg: &Message) {
        if self.persists(msg) {
            self.record(StoreOp::Dequeue {
                queue: self.name.clone(),
                seq: pos.seq,
            });
        }
    }

    /// Puts back a message recovered from the store, at its old position.
    pub fn restore(&mut self, seq: u64, msg: Arc<Message>, delivered: bool) {
        let pos = Position {
            band: 255 - self.settings.level(msg.priority()),
            seq,
        };
        // A damaged store may hold any number here (found by fuzzing recovery).
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        self.count_in(&msg);
        // The queue's TTL counts from the restart: the store keeps no arrival time.
        let expires_at = self.expiry_of(&msg);
        if let Some(t) = expires_at {
            self.expiries.insert((t, pos));
        }
        self.stats.enqueued(&msg, false);
        if let Some(v) = self.lvq_value(&msg) {
            self.lvq.insert(v, pos);
        }
        self.available.insert(
            pos,
            Entry {
                msg,
                redelivered: delivered,
                expires_at,
            },
        );
    }

    fn remove_available(&mut self, pos: Position) -> Option<Entry> {
        let e = self.available.remove(&pos)?;
        self.forget_expiry(pos, e.expires_at);
        self.record_dequeue(pos, &e.msg);
        self.count_out(&e.msg);
        self.stats.dequeued(&e.msg);
        if self.settings.lvq_key.is_some() {
            self.lvq.retain(|_, p| *p != pos);
        }
        self.check_threshold();
        Some(e)
    }

    /// Whether any message here must reach the store when it leaves.
    pub(super) fn holds_persistent(&self) -> bool {
        self.durable
            && self.log.is_some()
            && self
                .available
                .values()
                .chain(self.acquired.values())
                .any(|e| e.msg.is_persistent())
    }

    /// Drops every available message; returns how many.
    pub fn purge(&mut self) -> usize {
        let n = self.available.len();
        for (pos, e) in std::mem::take(&mut self.available) {
            self.forget_expiry(pos, e.expires_at);
            self.record_dequeue(pos, &e.msg);
            self.count_out(&e.msg);
            self.stats.dequeued(&e.msg);
        }
        self.stats.discards_purge += n as u64;
        self.lvq.clear();
        self.check_threshold();
        n
    }

    /// Takes every message out, acquired ones included, in queue order (queue deletion,
    /// for the alternate exchange).
    pub fn drain(&mut self) -> Vec<Arc<Message>> {
        let mut all: Vec<(Position, Entry)> = std::mem::take(&mut self.available)
            .into_iter()
            .chain(std::mem::take(&mut self.acquired))
            .collect();
        all.sort_by_key(|(p, _)| *p);
        for (_, e) in &all {
            self.count_out(&e.msg);
        }
        self.expiries.clear();
        self.lvq.clear();
        if let Some(g) = &mut self.groups {
            g.clear();
        }
        for (_, e) in &all {
            self.stats.dequeued(&e.msg);
        }
        all.into_iter().map(|(_, e)| e.msg).collect()
    }

    /// Takes out available messages whose time to live has passed: dropped, or returned
    /// as dead letters for the queue's dead-letter exchange, with where they go.
    pub fn expire(&mut self, now: std::time::Instant) -> Vec<(String, Arc<Message>)> {
        let mut dead = Vec::new();
        while let Some(&(t, pos)) = self.expiries.first() {
            if t > now {
                break;
            }
            self.expiries.pop_first();
            // An acquired one stays with its consumer; release puts it back here.
            if let Some(e) = self.remove_available(pos) {
                self.stats.discards_ttl += 1;
                if let Some(letter) = self.dead_letter(e.msg, "expired") {
                    dead.push(letter);
                }
            }
        }
        dead
    }

    /// Where a message that dies here (`reason`: expired or rejected) goes, and as what:
    /// marked as a dead letter to the dead-letter exchange, or as it is to the alternate
    /// exchange when only that is set (and it was rejected); `None` when it is dropped.
    pub fn dead_letter(&self, msg: Arc<Message>, reason: &str) -> Option<(String, Arc<Message>)> {
        match (&self.settings.dead_letter_exchange, &self.alternate) {
            (Some(dlx), _) => {
                if reason == "expired" && msg.expired_in_a_cycle(&self.name) {
                    return None;
                }
                let letter = msg.dead_lettered(
                    &self.name,
                    reason,
                    self.settings.dead_letter_routing_key.as_deref(),
                );
                Some((dlx.clone(), Arc::new(letter)))
            }
            (None, Some(alt)) if reason == "rejected" => Some((alt.clone(), msg)),
            _ => None,
        }
    }

    fn forget_expiry(&mut self, pos: Position, expires_at: Option<std::time::Instant>) {
        if let Some(t) = expires_at {
            self.expiries.remove(&(t, pos));
        }
    }

    /// When a message arriving now expires here.
    fn expiry_of(&self, msg: &Message) -> Option<std::time::Instant> {
        let queue = self
            .settings
            .message_ttl
            .and_then(|ttl| std::time::Instant::now().checked_add(ttl));
        match (msg.expires_at, queue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A delivered message is accepted: it leaves the queue.
    pub fn accept(&mut self, pos: Position) -> Option<Arc<Message>> {
        let e = self.acquired.remove(&pos)?;
        if let Some(g) = &mut self.groups {
            g.settled(&e.msg);
        }
        self.settle(pos, &e);
        Some(e.msg)
    }

    /// What leaving the queue costs a message no longer in `available` or `acquired`.
    fn settle(&mut self, pos: Position, e: &Entry) {
        let msg = &e.msg;
        self.forget_expiry(pos, e.expires_at);
        self.record_dequeue(pos, msg);
        self.count_out(msg);
        self.stats.dequeued(msg);
        self.check_threshold();
    }

    /// An acquired message goes back to its place, marked redelivered if asked.
    pub fn release(&mut self, pos: Position, redelivered: bool) {
        if let Some(mut e) = self.acquired.remove(&pos) {
            if let Some(g) = &mut self.groups {
                g.settled(&e.msg);
            }
            e.redelivered |= redelivered;
            if let Some(t) = e.expires_at {
                self.expiries.insert((t, pos));
            }
            self.stats.releases += 1;
            self.stats.redeliveries += u64::from(redelivered);
            self.available.insert(pos, e);
        }
    }

    /// An acquired message is rejected: it leaves the queue and is returned for rerouting.
    pub fn reject(&mut self, pos: Position) -> Option<Arc<Message>> {
        let msg = self.accept(pos)?;
        self.stats.discards_subscriber += 1;
        Some(msg)
    }

    /// Acquires a message delivered to a browser; false when someone else has it.
    pub fn acquire(&mut self, pos: Position) -> bool {
        // A message whose group someone holds is theirs to take.
        let held = match (&self.groups, self.available.get(&pos)) {
            (Some(g), Some(e)) => g.is_held(&e.msg),
            _ => false,
        };
        if held {
            return false;
        }
        match self.available.remove(&pos) {
            Some(e) => {
                if let Some(g) = &mut self.groups {
                    g.acquired(&e.msg, None);
                }
                self.acquired.insert(pos, e);
                self.stats.acquires += 1;
                if self.settings.lvq_key.is_some() {
                    self.lvq.retain(|_, p| *p != pos);
                }
                true
            }
            None => false,
        }
    }

    /// The next message for consumer `idx`: for a browser the one after its cursor, else
    /// the first it may acquire (by priority, fair share and groups).
    fn next_for(&mut self, idx: usize) -> Option<Position> {
        let c = &self.consumers[idx];
        let (acquire, cursor) = (c.acquire, c.cursor);
        if let (true, Some(g)) = (acquire, &self.groups) {
            let me = (c.session, c.destination.clone());
            return self
                .available
                .iter()
                .find(|(_, e)| g.may_take(&e.msg, &me))
                .map(|(p, _)| *p);
        }
        if !acquire {
            let from = cursor.map_or(Bound::Unbounded, Bound::Excluded);
            return self
                .available
                .range((from, Bound::Unbounded))
                .next()
                .map(|(p, _)| *p);
        }
        if self.settings.fairshare.is_empty() {
            return self.available.keys().next().copied();
        }
        // Fair share: each level delivers up to its quota per round, highest level first;
        // when every level with messages has had its quota, a new round starts.
        for _ in 0..2 {
            let mut next = self.available.keys().next().copied();
            while let Some(pos) = next {
                let level = 255 - pos.band;
                let used = self.fair_used.get(&level).copied().unwrap_or(0);
                if self.fair_limit(level).is_none_or(|limit| used < limit) {
                    return Some(pos);
                }
                next = match pos.band.checked_add(1) {
                    Some(band) => self
                        .available
                        .range(Position { band, seq: 0 }..)
                        .next()
                        .map(|(p, _)| *p),
                    None => None,
                };
            }
            self.fair_used.clear();
        }
        self.available.keys().next().copied()
    }

    fn fair_limit(&self, level: u8) -> Option<u32> {
        self.settings
            .fairshare
            .iter()
            .find(|(l, _)| *l == level)
            .map(|(_, n)| *n)
    }

    /// Hands available messages to consumers with credit, round robin, until no consumer
    /// can take one.
    pub fn dispatch(&mut self) {
        loop {
            let n = self.consumers.len();
            if n == 0 || self.available.is_empty() {
                return;
            }
            let mut delivered = false;
            for i in 0..n {
                let idx = (self.next_consumer + i) % n;
                let Some(pos) = self.next_for(idx) else {
                    continue;
                };
                let Some(size) = self.available.get(&pos).map(|e| e.msg.credit_size()) else {
                    continue;
                };
                if !self.consumers[idx].credit.can_take(size) {
                    continue;
                }
                self.consumers[idx].credit.consume(size);
                let c = &self.consumers[idx];
                // Accept-mode none: the message is done once handed over (as in qpidd), so
                // it leaves the queue now instead of waiting for a second trip to the lock.
                let settled = c.acquire && !c.accept_explicit;
                let browsing = !c.acquire;
                let entry = if settled {
                    let Some(e) = self.available.remove(&pos) else {
                        continue;
                    };
                    if self.settings.lvq_key.is_some() {
                        self.lvq.retain(|_, p| *p != pos);
                    }
                    self.stats.acquires += 1;
                    self.settle(pos, &e);
                    e
                } else if self.consumers[idx].acquire {
                    let c = &self.consumers[idx];
                    let Some(e) = self.available.remove(&pos) else {
                        continue;
                    };
                    if self.settings.lvq_key.is_some() {
                        self.lvq.retain(|_, p| *p != pos);
                    }
                    if !e.redelivered && self.persists(&e.msg) {
                        // Marked so that after a restart it comes back as redelivered.
                        self.record(StoreOp::Delivered {
                            queue: self.name.clone(),
                            seq: pos.seq,
                        });
                    }
                    if let Some(g) = &mut self.groups {
                        g.acquired(&e.msg, Some(&(c.session, c.destination.clone())));
                    }
                    self.acquired.insert(pos, e.clone());
                    self.stats.acquires += 1;
                    e
                } else {
                    debug_assert!(browsing);
                    let Some(e) = self.available.get(&pos).cloned() else {
                        continue;
                    };
                    e
                };
                if self.consumers[idx].acquire && !self.settings.fairshare.is_empty() {
                    *self.fair_used.entry(255 - pos.band).or_default() += 1;
                }
                let c = &mut self.consumers[idx];
                c.delivered += 1;
                if !c.acquire {
                    c.cursor = Some(pos);
                }
                c.sink.deliver(Delivery {
                    session: c.session,
                    destination: c.destination.clone(),
                    queue: self.shared_name.clone(),
                    position: pos,
                    msg: entry.msg,
                    redelivered: entry.redelivered,
                    acquired: c.acquire,
                    accept_explicit: c.accept_explicit,
                    settled,
                    window: c.credit.window,
                    size,
                    epoch: c.epoch,
                });
                self.next_consumer = idx + 1;
                delivered = true;
                break;
            }
            if !delivered {
                return;
            }
        }
    }

    /// The consumer of `session` named `destination`.
    pub(super) fn consumer_mut(
        &mut self,
        session: SessionId,
        destination: &str,
    ) -> Option<&mut Consumer> {
        self.consumers
            .iter_mut()
            .find(|c| c.session == session && &*c.destination == destination)
    }

    /// Removes a consumer; returns whether it was there.
    pub(super) fn remove_consumer(&mut self, session: SessionId, destination: &str) -> bool {
        let before = self.consumers.len();
        self.consumers
            .retain(|c| !(c.session == session && &*c.destination == destination));
        self.next_consumer = 0;
        self.consumers.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::consumer::{Credit, DeliverySink};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Delivery>>);
    impl DeliverySink for Collect {
        fn deliver(&self, d: Delivery) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(d);
        }
    }

    fn consumer(sink: Arc<Collect>, dest: &str, acquire: bool) -> Consumer {
        Consumer {
            session: SessionId(1),
            connection: 1,
            epoch: 0,
            destination: dest.into(),
            acquire,
            accept_explicit: true,
            exclusive: false,
            credit: Credit::unlimited(),
            cursor: None,
            sink,
            delivered: 0,
        }
    }

    fn body(d: &Delivery) -> String {
        String::from_utf8_lossy(&d.msg.body).into_owned()
    }

    fn expiring(body: &str, at: std::time::Instant) -> Arc<Message> {
        let mut m = Message::new("q", body.to_string());
        m.expires_at = Some(at);
        Arc::new(m)
    }

    #[test]
    fn a_queue_ttl_caps_every_message_and_the_earlier_expiry_counts() {
        let mut args = FieldTable::new();
        args.insert("x-message-ttl", Value::Int64(60_000));
        let mut q = Queue::new("q", args).expect("queue");
        let now = std::time::Instant::now();
        q.enqueue(Arc::new(Message::new("q", "no ttl of its own")))
            .expect("enqueue");
        q.enqueue(expiring("own ttl sooner", now)).expect("enqueue");
        q.enqueue(expiring(
            "own ttl later",
            now + std::time::Duration::from_secs(3600),
        ))
        .expect("enqueue");
        q.expire(now);
        assert_eq!(q.stats.discards_ttl, 1, "its own, sooner TTL counts");
        q.expire(now + std::time::Duration::from_secs(61));
        assert_eq!(q.stats.discards_ttl, 3, "the queue's TTL caps the rest");
        assert!(q.expiries.is_empty());
        let mut bad = FieldTable::new();
        bad.insert("x-message-ttl", Value::Str16("soon".into()));
        assert!(Queue::new("q", bad).is_err());
    }

    #[test]
    fn expiry_takes_what_is_due_from_its_index_and_spares_acquired_messages() {
        let now = std::time::Instant::now();
        let later = now + std::time::Duration::from_secs(60);
        let mut q = Queue::new("q", FieldTable::new()).expect("queue");
        for i in 0..1000 {
            q.enqueue(Arc::new(Message::new("q", format!("m{i}"))))
                .expect("enqueue");
        }
        q.enqueue(expiring("gone", now)).expect("enqueue");
        q.enqueue(expiring("held", later)).expect("enqueue");
        q.enqueue(expiring("purged", later)).expect("enqueue");
        q.expire(now);
        assert_eq!(q.stats.discards_ttl, 1);
        assert_eq!(q.message_count(), 1002);
        assert_eq!(q.expiries.len(), 2);

        // A consumer holds "held" past its expiry: it is not taken from under them...
        let held = q.hold_seq(1002).expect("held");
        q.expire(later);
        assert_eq!(q.stats.discards_ttl, 2, "only the available one expired");
        assert_eq!(q.unacked(), 1);
        // ...and once released it expires as any other.
        q.release(held, false);
        q.expire(later);
        assert_eq!(q.stats.discards_ttl, 3);
        assert_eq!(q.message_count(), 1000);
        assert!(q.expiries.is_empty());

        q.enqueue(expiring("purged again", later)).expect("enqueue");
        q.purge();
        assert!(q.expiries.is_empty(), "a purge leaves nothing in the index");
    }

    #[test]
    fn a_restored_message_with_the_last_sequence_number_does_not_overflow() {
        let mut q = Queue::new("q", FieldTable::new()).expect("queue");
        q.restore(u64::MAX, Arc::new(Message::new("q", "stored")), false);
        // No number is left for a new message: it is refused, the stored one kept.
        assert!(matches!(
            q.enqueue(Arc::new(Message::new("q", "new"))),
            Err(Error::LimitExceeded(_))
        ));
        assert_eq!(q.message_count(), 1);
        q.restore(7, Arc::new(Message::new("q", "older")), false);
        assert_eq!(q.message_count(), 2);
    }

    #[test]
    fn round_robin_between_consumers() {
        let mut q = Queue::new("q", FieldTable::new()).expect("queue");
        let sink = Arc::new(Collect::default());
        q.consumers.push(consumer(sink.clone(), "a", true));
        q.consumers.push(consumer(sink.clone(), "b", true));
        for i in 0..4 {
            q.enqueue(Arc::new(Message::new("q", format!("m{i}"))))
                .expect("enqueue");
        }
        q.dispatch();
        let got = sink.0.lock().expect("lock");
        let dests: Vec<&str> = got.iter().map(|d| &*d.destination).collect();
        assert_eq!(dests, ["a", "b", "a", "b"]);
        assert_eq!(q.message_count(), 0);
        assert_eq!(q.depth(), 4);
    }

    #[test]
    fn federation_trace_is_stamped_and_excluded_brokers_are_refused() {
        let mut args = FieldTable::new();
        args.insert("qpid.trace.id", "B");
        args.insert("qpid.trace.exclude", "A, C");
        let mut q = Queue::new("bridge", args).expect("queue");
        let plain = Message::new("k", "fresh");
        let from_d = plain.with_header(TRACE_HEADER, Value::from("D".to_string()));
        let from_a = plain.with_header(TRACE_HEADER, Value::from("D,A".to_string()));
        for m in [plain, from_d, from_a] {
            q.enqueue(Arc::new(m)).expect("enqueue");
        }
        let traces: Vec<String> = q
            .available
            .values()
            .map(|e| {
                e.msg
                    .headers()
                    .and_then(|h| h.get(TRACE_HEADER))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(traces, ["B", "D,B"], "the message that passed A is dropped");
    }

    #[test]
    fn ring_drops_oldest_and_reject_refuses() {
        let mut args = FieldTable::new();
        args.insert("qpid.max_count", Value::Int64(2));
        args.insert("qpid.policy_type", "ring");
        let mut q = Queue::new("q", args).expect("queue");
        for i in 0..3 {
            q.enqueue(Arc::new(Message::new("q", format!("m{i}"))))
                .expect("enqueue");
        }
        assert_eq!(q.message_count(), 2);
        let mut args = FieldTable::new();
        args.insert("qpid.max_count", Value::Int64(1));
        let mut q = Queue::new("q", args).expect("queue");
        q.enqueue(Arc::new(Message::new("q", "a")))
            .expect("enqueue");
        assert!(matches!(
            q.enqueue(Arc::new(Message::new("q", "b"))),
            Err(Error::LimitExceeded(_))
        ));
    }

    #[test]
    fn release_restores_order_and_marks_redelivered() {
        let mut q = Queue::new("q", FieldTable::new()).expect("queue");
        let sink = Arc::new(Collect::default());
        q.consumers.push(consumer(sink.clone(), "a", true));
        q.consumers[0].credit = Credit::messages(1);
        q.enqueue(Arc::new(Message::new("q", "first")))
            .expect("enqueue");
        q.enqueue(Arc::new(Message::new("q", "second")))
            .expect("enqueue");
        q.dispatch();
        let first = sink.0.lock().expect("lock").remove(0);
        assert_eq!(body(&first), "first");
        q.release(first.position, true);
        q.consumers[0].credit = Credit::messages(1);
        q.dispatch();
        let again = sink.0.lock().expect("lock").remove(0);
        assert_eq!(body(&again), "first");
        assert!(again.redelivered);
    }

    #[test]
    fn priority_levels_follow_qpidd() {
        let mut args = FieldTable::new();
        args.insert("qpid.priorities", Value::Int64(10));
        let s = QueueSettings::from_args(&args).expect("settings");
        assert_eq!(
            (0..10).map(|p| s.level(p)).collect::<Vec<_>>(),
            (0..10).collect::<Vec<u8>>()
        );
        let mut args = FieldTable::new();
        args.insert("qpid.priorities", Value::Int64(3));
        let s = QueueSettings::from_args(&args).expect("settings");
        assert_eq!(
            (0..10).map(|p| s.level(p)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1, 2, 2, 2, 2, 2]
        );
    }

    #[test]
    fn last_value_replaces() {
        let mut args = FieldTable::new();
        args.insert("qpid.last_value_queue_key", "k");
        let mut q = Queue::new("q", args).expect("queue");
        for (k, v) in [("a", "1"), ("b", "1"), ("a", "2")] {
            let mut m = crate::core::Draft::new("q", v);
            let mut h = FieldTable::new();
            h.insert("k", k);
            m.set_properties(crate::wire::MessageProperties {
                application_headers: Some(h),
                ..Default::default()
            });
            q.enqueue(Arc::new(m.seal())).expect("enqueue");
        }
        assert_eq!(q.message_count(), 2);
    }
}
