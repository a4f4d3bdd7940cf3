//! The broker's QMF agent: Qpid's management protocol over the broker's own exchanges, so
//! that `qpid-config`, `qpid-stat`, `qpid-route`, `qpid-tool` and `qpid-printevents` work
//! against this broker as against qpidd.
//!
//! ```text
//!  qmf.default.direct "broker" ─┐            ┌─ _query_response / _method_response
//!  qmf.default.topic console.* ─┼─► Tap ─► agent task ─► reply-to (broker.publish)
//!  qpid.management "broker" ───┘    │
//!  model events (under the lock) ───┴─► outbox ─► qmf.default.topic agent.ind.event.*
//! ```
//! Version 2 (maps) carries queries, methods and events; version 1 (binary) carries only
//! the schema exchange that `qmf.console` performs before anything else. Objects are built
//! from one snapshot of the model (see [`objects`]); nothing here keeps its own copy.

mod agent;
mod codec;
mod events;
mod lifecycle;
mod methods;
pub mod objects;
pub mod schema;
mod schema_table;
mod v1;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::client::random_uuid;
use crate::core::observer::{ModelEvent, Observer};
use crate::core::{Broker, Message};
use crate::federation::Federation;
use crate::server::{Admin, ConnectionRegistry};
use crate::wire::Uuid;

pub use objects::BrokerFacts;

/// The exchanges management speaks on, with their types.
pub const EXCHANGES: &[(&str, &str)] = &[
    ("qpid.management", "topic"),
    ("qmf.default.direct", "direct"),
    ("qmf.default.topic", "topic"),
];

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct ManagementConfig {
    /// Between unsolicited object updates (qpidd's `mgmt-pub-interval`).
    pub publish_interval: Duration,
    /// Between agent heartbeats.
    pub heartbeat_interval: Duration,
    /// The broker's version, as reported.
    pub version: String,
    /// The AMQP port, as reported.
    pub port: u16,
    /// The data directory, as reported.
    pub data_dir: Option<String>,
    /// The log level in force at start, as `getLogLevel` reports it.
    pub log_level: String,
    /// Applies a level `setLogLevel` asks for, when the process allows it.
    pub log_control: Option<LogControl>,
}

/// Changes the process's log filter (`setLogLevel`); the error says why a level is refused.
#[derive(Clone)]
pub struct LogControl(pub Arc<SetLogLevel>);

/// Sets the log level from a level text.
pub type SetLogLevel = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

impl Default for ManagementConfig {
    fn default() -> Self {
        ManagementConfig {
            publish_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            version: env!("CARGO_PKG_VERSION").to_string(),
            port: 5672,
            data_dir: None,
            log_level: "info".into(),
            log_control: None,
        }
    }
}

/// What the agent works with.
pub(crate) struct Context {
    /// The server: model, connections, ACL.
    pub admin: Admin,
    /// Links and routes, when federation runs.
    pub federation: Option<Federation>,
    /// Fixed facts reported on the broker object.
    pub facts: BrokerFacts,
    /// `apache.org:qpidd:<uuid>`.
    pub name: String,
    /// See [`ManagementConfig::log_control`].
    pub log_hook: Option<LogControl>,
}

/// Work for the agent task.
#[derive(Debug)]
enum Input {
    /// A message addressed to the agent, and the exchange it came through.
    Request(String, Arc<Message>),
    /// A console subscribed to unsolicited updates: send everything soon.
    Refresh,
}

/// How many requests may wait for the agent before more are dropped.
const BACKLOG: usize = 4096;

/// The model's observer: hands requests to the agent task, and keeps events to publish as
/// soon as the broker lock is free (they are turned into messages only then, off the lock).
#[derive(Debug)]
pub(crate) struct Tap {
    name: String,
    requests: mpsc::Sender<Input>,
    outbox: Mutex<Vec<ModelEvent>>,
    pending: AtomicBool,
    connections: ConnectionRegistry,
}

impl Observer for Tap {
    fn wants(&self, exchange: &str, key: &str) -> bool {
        match exchange {
            "qpid.management" => key == "broker" || key.starts_with("agent.1."),
            "qmf.default.direct" => key == "broker" || key == self.name,
            "qmf.default.topic" => key.starts_with("console.request"),
            _ => false,
        }
    }

    fn request(&self, exchange: &str, msg: &Arc<Message>) {
        if self
            .requests
            .try_send(Input::Request(exchange.to_string(), msg.clone()))
            .is_err()
        {
            tracing::warn!(
                exchange,
                "management request dropped: the agent is busy or gone"
            );
        }
    }

    fn event(&self, event: ModelEvent) {
        if let ModelEvent::Bound { exchange, key, .. } = &event {
            let wants_data = exchange == "qpid.management"
                || (exchange == "qmf.default.topic" && key.starts_with("agent.ind.data"));
            if wants_data {
                let _ = self.requests.try_send(Input::Refresh);
            }
        }
        self.outbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        self.pending.store(true, Ordering::Release);
    }

    fn flush(&self, broker: &Broker) {
        // Every lock release comes here: a plain load keeps the common case cheap.
        if !self.pending.load(Ordering::Relaxed) || !self.pending.swap(false, Ordering::Acquire) {
            return;
        }
        let out = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        for event in out {
            for (exchange, msg) in events::messages(&self.name, &self.connections, event) {
                // Events nobody listens for are not sent (nor counted as unroutable).
                if broker.has_route(&exchange, msg.routing_key()) {
                    let _ = broker.publish(&exchange, Arc::new(msg));
                }
            }
        }
    }
}

/// The running agent.
pub struct Management {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Management {
    /// Starts the agent on the server `admin` administers, with `federation`'s links and
    /// routes as objects when given. Declares the management exchanges.
    pub fn start(
        admin: Admin,
        federation: Option<Federation>,
        config: ManagementConfig,
    ) -> Management {
        let broker = admin.broker().clone();
        for (name, kind) in EXCHANGES {
            broker.declare_system_exchange(name, kind);
        }
        let instance = random_uuid();
        let name = format!("{}:{}:{}", codec::VENDOR, codec::PRODUCT, instance);
        let (tx, rx) = mpsc::channel(BACKLOG);
        let tap = Arc::new(Tap {
            name: name.clone(),
            requests: tx,
            outbox: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            connections: admin.registry(),
        });
        broker.set_observer(tap.clone());
        let facts = BrokerFacts {
            version: config.version.clone(),
            port: config.port,
            data_dir: config.data_dir.clone(),
            system_id: system_uuid(),
            federation_tag: admin.federation_tag().to_string(),
            max_connections: admin.config().max_connections,
            started: std::time::SystemTime::now(),
            publish_interval: config.publish_interval.as_secs().max(1),
            node: (kernel_value("hostname"), kernel_value("osrelease")),
        };
        let ctx = Context {
            admin,
            federation,
            facts,
            name,
            log_hook: config.log_control.clone(),
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(agent::run(ctx, config, rx, stopped));
        Management { stop, task }
    }

    /// Stops the agent.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A value the kernel publishes under `/proc/sys/kernel` (empty when it cannot be read).
fn kernel_value(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The machine's id (from `/etc/machine-id` when there is one, else random).
fn system_uuid() -> Uuid {
    let id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let hex: Vec<u8> = id
        .trim()
        .as_bytes()
        .chunks(2)
        .filter_map(|p| std::str::from_utf8(p).ok())
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    match <[u8; 16]>::try_from(hex.as_slice()) {
        Ok(b) => Uuid(b),
        Err(_) => random_uuid(),
    }
}
