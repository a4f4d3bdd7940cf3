//! Management objects: the model's queues, exchanges, bindings, subscriptions and
//! sessions, the server's connections and the federation's links and routes, each as a
//! QMF object of qpidd's class with qpidd's object name.
//!
//! Every object is built from one [`View`]: a snapshot of the model plus the connection
//! registry and the federation listing taken together, so a reply never mixes moments.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::core::snapshot::{Parts, Snapshot};
use crate::core::stats::QueueStats;
use crate::federation::{LinkInfo, LinkState, RouteInfo, RouteSource};
use crate::server::ConnectionInfo;
use crate::wire::{FieldTable, Uuid, Value};

use super::schema::{Class, Schema, PACKAGE};
use super::Context;

/// The broker object's key, as qpidd names it.
pub const BROKER_KEY: &str = "amqp-broker";

/// Nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    ns(SystemTime::now())
}

fn ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The full QMF object name of an object of `class` with `key`.
pub fn object_name(class: &str, key: &str) -> String {
    format!("{PACKAGE}:{class}:{key}")
}

/// A reference to an object, as a property value.
pub fn reference(class: &str, key: &str) -> Value {
    let mut m = FieldTable::new();
    m.insert("_object_name", object_name(class, key));
    Value::Map(m)
}

/// The vhost every object lives in (qpidd has one, `/`).
fn vhost_key() -> String {
    format!("{},/", object_name("broker", BROKER_KEY))
}

/// One object, ready to encode.
#[derive(Debug, Clone)]
pub struct Object {
    /// Its class.
    pub class: &'static Class,
    /// Its key (the object name after `package:class:`).
    pub key: String,
    /// Properties and statistics by name.
    pub values: FieldTable,
    /// When it was made (ns since the epoch).
    pub created: u64,
}

impl Object {
    /// The full object name.
    pub fn name(&self) -> String {
        object_name(self.class.name, &self.key)
    }

    /// The object as QMF version 2 sends it.
    pub fn to_map(&self, now: u64) -> FieldTable {
        let mut id = FieldTable::new();
        id.insert("_object_name", self.name());
        let mut m = FieldTable::new();
        m.insert("_values", Value::Map(self.values.clone()));
        m.insert("_object_id", Value::Map(id));
        m.insert("_schema_id", Value::Map(self.class.schema_id()));
        m.insert("_update_ts", Value::Uint64(now));
        m.insert("_create_ts", Value::Uint64(self.created));
        m.insert("_delete_ts", Value::Uint64(0));
        m
    }
}

/// Fixed facts about this broker.
#[derive(Debug, Clone)]
pub struct BrokerFacts {
    /// Software version.
    pub version: String,
    /// The AMQP port.
    pub port: u16,
    /// The data directory, if any.
    pub data_dir: Option<String>,
    /// Identifies the machine (stable for the process).
    pub system_id: Uuid,
    /// The federation tag.
    pub federation_tag: String,
    /// The most connections allowed.
    pub max_connections: usize,
    /// When the broker started.
    pub started: SystemTime,
    /// Seconds between unsolicited updates.
    pub publish_interval: u64,
    /// The machine's host name and kernel release (read once, at start).
    pub node: (String, String),
}

/// Everything objects are made from, taken at one moment.
pub struct View {
    /// The model.
    pub model: Snapshot,
    /// Open connections by id.
    pub connections: HashMap<u64, ConnectionInfo>,
    /// Links.
    pub links: Vec<LinkInfo>,
    /// Routes.
    pub routes: Vec<RouteInfo>,
}

/// Which parts of the model a class needs.
fn parts_for(class: Option<&str>) -> Parts {
    match class {
        None => Parts::ALL,
        Some("queue") => Parts {
            queues: true,
            ..Parts::default()
        },
        Some("exchange") => Parts {
            exchanges: true,
            ..Parts::default()
        },
        Some("binding") => Parts {
            bindings: true,
            ..Parts::default()
        },
        Some("subscription") => Parts {
            subscriptions: true,
            sessions: true,
            ..Parts::default()
        },
        Some("session") => Parts {
            sessions: true,
            subscriptions: true,
            ..Parts::default()
        },
        Some(_) => Parts::default(),
    }
}

impl View {
    /// What objects of `class` (or of every class) are made from.
    pub(crate) fn take(ctx: &Context, class: Option<&str>) -> View {
        View {
            model: ctx.admin.broker().snapshot(parts_for(class)),
            connections: ctx
                .admin
                .connections()
                .into_iter()
                .map(|c| (c.id, c))
                .collect(),
            links: ctx
                .federation
                .as_ref()
                .map(|f| f.list_links())
                .unwrap_or_default(),
            routes: ctx
                .federation
                .as_ref()
                .map(|f| f.list_routes())
                .unwrap_or_default(),
        }
    }
}

/// Builds property and statistic maps in schema terms.
#[derive(Default)]
struct Values(FieldTable);

impl Values {
    fn str(mut self, k: &str, v: impl Into<String>) -> Self {
        self.0.insert(k, Value::Str16(v.into()));
        self
    }
    fn bool(mut self, k: &str, v: bool) -> Self {
        self.0.insert(k, Value::Bool(v));
        self
    }
    fn u16(mut self, k: &str, v: u16) -> Self {
        self.0.insert(k, Value::Uint16(v));
        self
    }
    fn u32(mut self, k: &str, v: u32) -> Self {
        self.0.insert(k, Value::Uint32(v));
        self
    }
    fn u64(mut self, k: &str, v: u64) -> Self {
        self.0.insert(k, Value::Uint64(v));
        self
    }
    fn map(mut self, k: &str, v: FieldTable) -> Self {
        self.0.insert(k, Value::Map(v));
        self
    }
    fn reference(mut self, k: &str, class: &str, key: &str) -> Self {
        self.0.insert(k, reference(class, key));
        self
    }
    /// A hilo32 statistic: now, and its high and low marks.
    fn hilo(self, k: &str, now: u32, high: u32) -> Self {
        self.u32(k, now)
            .u32(&format!("{k}High"), high.max(now))
            .u32(&format!("{k}Low"), now)
    }
    /// The enqueue, dequeue and discard counters a queue and the broker share.
    fn queue_stats(self, s: &QueueStats) -> Self {
        self.u64("msgTotalEnqueues", s.enqueues.msgs)
            .u64("msgTotalDequeues", s.dequeues.msgs)
            .u64("byteTotalEnqueues", s.enqueues.bytes)
            .u64("byteTotalDequeues", s.dequeues.bytes)
            .u64("msgPersistEnqueues", s.persist_enqueues.msgs)
            .u64("msgPersistDequeues", s.persist_dequeues.msgs)
            .u64("bytePersistEnqueues", s.persist_enqueues.bytes)
            .u64("bytePersistDequeues", s.persist_dequeues.bytes)
            .u64("msgTxnEnqueues", s.txn_enqueues.msgs)
            .u64("msgTxnDequeues", s.txn_dequeues.msgs)
            .u64("byteTxnEnqueues", s.txn_enqueues.bytes)
            .u64("byteTxnDequeues", s.txn_dequeues.bytes)
            .u64("msgFtdEnqueues", 0)
            .u64("msgFtdDequeues", 0)
            .u64("byteFtdEnqueues", 0)
            .u64("byteFtdDequeues", 0)
            .u64("msgFtdDepth", 0)
            .u64("byteFtdDepth", 0)
            .u64("releases", s.releases)
            .u64("acquires", s.acquires)
            .u64("discardsTtl", s.discards_ttl)
            .u64("discardsRing", s.discards_ring)
            .u64("discardsLvq", s.discards_lvq)
            .u64("discardsOverflow", s.discards_overflow)
            .u64("discardsSubscriber", s.discards_subscriber)
            .u64("discardsPurge", s.discards_purge)
            .u64("reroutes", s.reroutes)
    }
}

/// A connection's address as qpidd names it: `qpid.<local>-<peer>`.
pub fn connection_address(c: &ConnectionInfo) -> String {
    match (c.local, c.addr) {
        (Some(l), Some(p)) => format!("qpid.{l}-{p}"),
        (None, Some(p)) => format!("qpid.{p}"),
        _ => format!("qpid.in-process-{}", c.id),
    }
}

/// A session's full name: the user it belongs to and the name it attached with.
fn session_key(view: &View, connection: u64, name: &str) -> String {
    let user = view
        .connections
        .get(&connection)
        .map_or("anonymous", |c| c.user.as_str());
    format!("{user}.{name}")
}

/// Makes the objects of one class (or all) from a view.
pub struct Builder<'a> {
    schema: &'static Schema,
    facts: &'a BrokerFacts,
    view: &'a View,
    /// When each object was first seen (ns), kept across calls by the agent.
    first_seen: &'a mut HashMap<String, u64>,
    now: u64,
}

impl<'a> Builder<'a> {
    /// A builder over `view`.
    pub fn new(
        facts: &'a BrokerFacts,
        view: &'a View,
        first_seen: &'a mut HashMap<String, u64>,
    ) -> Builder<'a> {
        Builder {
            schema: Schema::get(),
            facts,
            view,
            first_seen,
            now: now_ns(),
        }
    }

    fn object(&mut self, class: &str, key: String, values: Values) -> Option<Object> {
        let class = self.schema.class(class)?;
        let name = object_name(class.name, &key);
        let now = self.now;
        let created = *self.first_seen.entry(name).or_insert(now);
        Some(Object {
            class,
            key,
            values: values.0,
            created,
        })
    }

    /// The objects of `class`; every class for `None`. Unknown classes have none.
    pub fn build(&mut self, class: Option<&str>) -> Vec<Object> {
        let all = [
            "system",
            "broker",
            "vhost",
            "queue",
            "exchange",
            "binding",
            "connection",
            "session",
            "subscription",
            "link",
            "bridge",
        ];
        let mut out = Vec::new();
        for c in all.iter().filter(|c| class.is_none_or(|x| x == **c)) {
            match *c {
                "system" => out.extend(self.system()),
                "broker" => out.extend(self.broker()),
                "vhost" => out.extend(self.vhost()),
                "queue" => self.queues(&mut out),
                "exchange" => self.exchanges(&mut out),
                "binding" => self.bindings(&mut out),
                "connection" => self.connections(&mut out),
                "session" => self.sessions(&mut out),
                "subscription" => self.subscriptions(&mut out),
                "link" => self.links(&mut out),
                _ => self.bridges(&mut out),
            }
        }
        out
    }

    fn system(&mut self) -> Option<Object> {
        let (host, release) = &self.facts.node;
        let mut v = Values::default()
            .str("osName", std::env::consts::OS)
            .str("nodeName", host.clone())
            .str("release", release.clone())
            .str("version", "")
            .str("machine", std::env::consts::ARCH);
        v.0.insert("systemId", Value::Uuid(self.facts.system_id));
        self.object("system", self.facts.system_id.to_string(), v)
    }

    fn broker(&mut self) -> Option<Object> {
        let m = &self.view.model.broker;
        let t = &m.totals;
        let uptime = SystemTime::now()
            .duration_since(self.facts.started)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut v = Values::default()
            .str("name", BROKER_KEY)
            .reference("systemRef", "system", &self.facts.system_id.to_string())
            .u16("port", self.facts.port)
            .u16("workerThreads", 2)
            .u16(
                "maxConns",
                u16::try_from(self.facts.max_connections).unwrap_or(u16::MAX),
            )
            .u16("connBacklog", 128)
            .u32("stagingThreshold", 0)
            .bool("mgmtPublish", true)
            .u16(
                "mgmtPubInterval",
                u16::try_from(self.facts.publish_interval).unwrap_or(u16::MAX),
            )
            .str("version", self.facts.version.clone())
            .u64("uptime", uptime)
            .u64("queueCount", m.queue_count)
            .queue_stats(t)
            .u64("msgDepth", m.depth)
            .u64(
                "byteDepth",
                t.enqueues.bytes.saturating_sub(t.dequeues.bytes),
            )
            .u64("discardsNoRoute", m.discards_no_route)
            .u64("abandoned", m.abandoned)
            .u64("abandonedViaAlt", m.abandoned_via_alt);
        if let Some(d) = &self.facts.data_dir {
            v = v.str("dataDir", d.clone());
        }
        self.object("broker", BROKER_KEY.into(), v)
    }

    fn vhost(&mut self) -> Option<Object> {
        let v = Values::default()
            .reference("brokerRef", "broker", BROKER_KEY)
            .str("name", "/")
            .str("federationTag", self.facts.federation_tag.clone());
        self.object("vhost", vhost_key(), v)
    }

    fn queues(&mut self, out: &mut Vec<Object>) {
        let vhost = vhost_key();
        for q in &self.view.model.queues {
            let s = &q.stats;
            let mut v = Values::default()
                .reference("vhostRef", "vhost", &vhost)
                .str("name", q.name.clone())
                .bool("durable", q.durable)
                .bool("autoDelete", q.auto_delete)
                .bool("exclusive", q.exclusive)
                .map("arguments", q.args.clone())
                .queue_stats(s)
                .u64("msgDepth", q.depth)
                .u64("byteDepth", q.byte_depth())
                .hilo("consumerCount", q.consumers, s.consumers_high)
                .hilo("bindingCount", q.bindings, q.bindings)
                .hilo(
                    "unackedMessages",
                    u32::try_from(q.unacked).unwrap_or(u32::MAX),
                    0,
                )
                .u64("messageLatencySamples", 0)
                .u64("messageLatencyMin", 0)
                .u64("messageLatencyMax", 0)
                .u64("messageLatencyAverage", 0)
                .bool("flowStopped", false)
                .u32("flowStoppedCount", 0)
                .str("redirectPeer", "")
                .bool("redirectSource", false)
                .str("creator", q.creator.clone().unwrap_or_default());
            if let Some(alt) = &q.alternate {
                v = v.reference("altExchange", "exchange", alt);
            }
            if let Some(o) = self.object("queue", q.name.clone(), v) {
                out.push(o);
            }
        }
    }

    fn exchanges(&mut self, out: &mut Vec<Object>) {
        let vhost = vhost_key();
        for e in &self.view.model.exchanges {
            let s = &e.stats;
            let mut v = Values::default()
                .reference("vhostRef", "vhost", &vhost)
                .str("name", e.name.clone())
                .str("type", e.kind.clone())
                .bool("durable", e.durable)
                .bool("autoDelete", e.auto_delete)
                .map("arguments", e.args.clone())
                .hilo("producerCount", 0, 0)
                .hilo("bindingCount", e.bindings, s.bindings_high)
                .u64("msgReceives", s.receives.msgs)
                .u64("msgDrops", s.drops.msgs)
                .u64("msgRoutes", s.routes.msgs)
                .u64("byteReceives", s.receives.bytes)
                .u64("byteDrops", s.drops.bytes)
                .u64("byteRoutes", s.routes.bytes);
            if let Some(alt) = &e.alternate {
                v = v.reference("altExchange", "exchange", alt);
            }
            if let Some(o) = self.object("exchange", e.name.clone(), v) {
                out.push(o);
            }
        }
    }

    fn bindings(&mut self, out: &mut Vec<Object>) {
        for b in &self.view.model.bindings {
            let key = format!(
                "{},{},{}",
                object_name("exchange", &b.exchange),
                object_name("queue", &b.queue),
                b.key
            );
            let v = Values::default()
                .reference("exchangeRef", "exchange", &b.exchange)
                .reference("queueRef", "queue", &b.queue)
                .str("bindingKey", b.key.clone())
                .map("arguments", b.args.clone())
                .u64("msgMatched", 0);
            if let Some(o) = self.object("binding", key, v) {
                out.push(o);
            }
        }
    }

    fn connections(&mut self, out: &mut Vec<Object>) {
        let vhost = vhost_key();
        let mut list: Vec<&ConnectionInfo> = self.view.connections.values().collect();
        list.sort_by_key(|c| c.id);
        for c in list {
            let address = connection_address(c);
            let d = &c.details;
            let live = &d.live;
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let prop = |k: &str| d.properties.get(k).cloned();
            let mut v = Values::default()
                .reference("vhostRef", "vhost", &vhost)
                .str("address", address.clone())
                .bool("incoming", true)
                .bool("SystemConnection", c.addr.is_none())
                .bool("userProxyAuth", false)
                .bool("federationLink", d.federation_link)
                .str("authIdentity", c.user.clone())
                .bool("shadow", false)
                .str("saslMechanism", d.mechanism.clone())
                .u16("saslSsf", if c.tls { 256 } else { 0 })
                .map("remoteProperties", d.properties.clone())
                .str("protocol", "amqp0-10")
                .bool(
                    "closing",
                    live.closing.load(std::sync::atomic::Ordering::Relaxed),
                )
                .u64("framesFromClient", 0)
                .u64("framesToClient", 0)
                .u64("bytesFromClient", load(&live.bytes_from))
                .u64("bytesToClient", load(&live.bytes_to))
                .u64("msgsFromClient", load(&live.msgs_from))
                .u64("msgsToClient", load(&live.msgs_to));
            if let Some(name) = prop("qpid.client_process").as_ref().and_then(Value::as_str) {
                v = v.str("remoteProcessName", name);
            }
            for (from, to) in [
                ("qpid.client_pid", "remotePid"),
                ("qpid.client_ppid", "remoteParentPid"),
            ] {
                if let Some(n) = prop(from).and_then(|x| x.as_i64()) {
                    v = v.u32(to, u32::try_from(n).unwrap_or(0));
                }
            }
            if let Some(mut o) = self.object("connection", address, v) {
                o.created = ns(c.since);
                out.push(o);
            }
        }
    }

    fn sessions(&mut self, out: &mut Vec<Object>) {
        let vhost = vhost_key();
        for s in &self.view.model.sessions {
            let Some(conn) = self.view.connections.get(&s.connection) else {
                continue;
            };
            let key = session_key(self.view, s.connection, &s.name);
            let v = Values::default()
                .reference("vhostRef", "vhost", &vhost)
                .str("name", key.clone())
                .str("fullName", key.clone())
                .u16("channelId", s.channel)
                .reference("connectionRef", "connection", &connection_address(conn))
                .u32("detachedLifespan", 0)
                .bool("attached", true)
                // The model does not keep per-session unsettled counts; qpid-stat shows 0.
                .u64("unackedMessages", 0)
                .u64("TxnStarts", 0)
                .u64("TxnCommits", 0)
                .u64("TxnRejects", 0)
                .u32("TxnCount", 0)
                .u32("clientCredit", 0)
                .u32("framesOutstanding", 0);
            if let Some(o) = self.object("session", key, v) {
                out.push(o);
            }
        }
    }

    fn subscriptions(&mut self, out: &mut Vec<Object>) {
        let sessions: HashMap<crate::core::SessionId, (u64, &str)> = self
            .view
            .model
            .sessions
            .iter()
            .map(|s| (s.id, (s.connection, s.name.as_str())))
            .collect();
        for s in &self.view.model.subscriptions {
            let Some((connection, name)) = sessions.get(&s.session) else {
                continue;
            };
            let session = session_key(self.view, *connection, name);
            let key = format!(
                "{},{},{}",
                object_name("session", &session),
                object_name("queue", &s.queue),
                s.destination
            );
            let v = Values::default()
                .reference("sessionRef", "session", &session)
                .reference("queueRef", "queue", &s.queue)
                .str("name", s.destination.clone())
                .bool("browsing", s.browsing)
                .bool("acknowledged", s.acknowledged)
                .bool("exclusive", s.exclusive)
                .str("creditMode", if s.window { "WINDOW" } else { "CREDIT" })
                .map("arguments", FieldTable::new())
                .u64("delivered", s.delivered);
            if let Some(o) = self.object("subscription", key, v) {
                out.push(o);
            }
        }
    }

    fn links(&mut self, out: &mut Vec<Object>) {
        let vhost = vhost_key();
        for l in &self.view.links {
            let (transport, host, port) = split_url(&l.spec.url);
            let (state, error) = match &l.state {
                LinkState::Connecting => ("Connecting", String::new()),
                LinkState::Operational => ("Operational", String::new()),
                LinkState::Failed(e) => ("Failed", e.clone()),
            };
            let v = Values::default()
                .reference("vhostRef", "vhost", &vhost)
                .str("name", l.spec.name.clone())
                .str("host", host)
                .u16("port", port)
                .str("transport", transport)
                .bool("durable", l.spec.durable)
                .str("state", state)
                .str("lastError", error);
            if let Some(o) = self.object("link", l.spec.name.clone(), v) {
                out.push(o);
            }
        }
    }

    fn bridges(&mut self, out: &mut Vec<Object>) {
        for r in &self.view.routes {
            let s = &r.spec;
            let (src, key, is_queue) = match &s.source {
                RouteSource::Exchange { exchange, key, .. } => {
                    (exchange.clone(), key.clone(), false)
                }
                RouteSource::Queue { queue } => (queue.clone(), String::new(), true),
            };
            let v = Values::default()
                .reference("linkRef", "link", &s.link)
                .str("name", s.name.clone())
                .u16("channelId", 0)
                .bool("durable", s.durable)
                .str("src", src)
                .str("dest", s.dest.clone())
                .str("key", key)
                .bool("srcIsQueue", is_queue)
                .bool("srcIsLocal", s.push)
                .str("tag", "")
                .str("excludes", "")
                .bool("dynamic", false)
                .u16("sync", 0)
                .u32("credit", 0);
            if let Some(o) = self.object("bridge", s.name.clone(), v) {
                out.push(o);
            }
        }
    }
}

/// A link URL's transport (`tcp` or `ssl`), host and port, as the client reads it.
pub fn split_url(url: &str) -> (String, String, u16) {
    match crate::client::ConnectOptions::parse(url) {
        Ok(o) => {
            let transport = if o.tls.is_some() { "ssl" } else { "tcp" };
            (transport.to_string(), o.host, o.port)
        }
        Err(_) => ("tcp".to_string(), url.to_string(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_urls_split_into_transport_host_and_port() {
        assert_eq!(
            split_url("amqp://u:p@10.0.0.1:5673"),
            ("tcp".into(), "10.0.0.1".into(), 5673)
        );
        assert_eq!(
            split_url("amqps://broker.example"),
            ("ssl".into(), "broker.example".into(), 5671)
        );
    }

    #[test]
    fn references_name_their_target() {
        let Value::Map(m) = reference("queue", "q1") else {
            panic!("a map");
        };
        assert_eq!(
            m.get("_object_name").and_then(Value::as_str),
            Some("org.apache.qpid.broker:queue:q1")
        );
    }
}
