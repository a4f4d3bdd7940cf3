//! What the running agent knows and shares between its workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use clacks_broker::client::{Message, Session};

use crate::acl::AgentAcl;
use crate::events::{SchemaSet, ValidatedEvent};
use crate::forward::{ForwardError, Forwarder};
use crate::jsonrpc::ErrorRegistry;
use crate::names;
use crate::plugin::Plugin;
use crate::registry::{Capabilities, CommandInfo};

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The domain (`org.clacks`).
    pub domain: String,
    /// This node's id.
    pub node: String,
    /// Broker identities of agents whose forwarded calls may name the original caller.
    pub trusted_agents: Vec<String>,
    /// How long a call forwarded to another node may take.
    pub call_timeout: Duration,
    /// The broker identity the agent logs in as, written into the `user-id` of what it
    /// sends: qpidd checks but does not stamp it, and the receiver needs it.
    pub identity: Option<String>,
}

impl AgentConfig {
    /// Settings for `node` in `domain`, trusting no other agent, with a 30 s call timeout.
    pub fn new(domain: &str, node: &str) -> AgentConfig {
        AgentConfig {
            domain: domain.to_string(),
            node: node.to_string(),
            trusted_agents: Vec::new(),
            call_timeout: Duration::from_secs(30),
            identity: None,
        }
    }

    /// `message` from this agent: its identity in `user-id`, when known.
    pub fn signed(&self, mut message: Message) -> Message {
        if let Some(id) = &self.identity {
            message.message_properties.user_id = Some(id.clone().into_bytes().into());
        }
        message
    }
}

/// What the agent holds of its current broker connection: where events go out and
/// forwarded calls leave from. Replaced after a reconnect.
#[derive(Clone)]
pub struct Link {
    /// Publishes events.
    pub publisher: Session,
    /// Sends calls to other nodes.
    pub forwarder: Arc<Forwarder>,
}

/// How often this node reports its status, and when others count as gone.
#[derive(Debug, Clone, Copy)]
pub struct PresenceTimers {
    /// Between two `NodeStatus` events.
    pub status_interval: Duration,
    /// A node not heard of for longer is dropped.
    pub node_timeout: Duration,
}

impl Default for PresenceTimers {
    fn default() -> Self {
        Self {
            status_interval: Duration::from_secs(10),
            node_timeout: Duration::from_secs(60),
        }
    }
}

/// Shared state of one agent.
/// What a node's last `NodeStatus` said besides its load, for `getNodes`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeStatus {
    /// `Latency` as reported.
    pub latency: f64,
    /// `Workers`: threads the node's agent runs.
    pub workers: u64,
    /// `Indexed`: whether its object index has finished its first scan.
    pub indexed: bool,
    /// When it arrived, in seconds since the epoch.
    pub received: f64,
}

pub struct AgentState {
    /// Settings.
    pub config: AgentConfig,
    /// Commands this node serves, by name.
    pub local: HashMap<String, CommandInfo>,
    /// The plugin of each local command.
    pub plugins: HashMap<String, Arc<dyn Plugin>>,
    /// Commands of every node.
    pub capabilities: Mutex<Capabilities>,
    /// Live nodes and their load.
    pub loads: Mutex<HashMap<String, f64>>,
    /// The rest of each live node's last status.
    statuses: Mutex<HashMap<String, NodeStatus>>,
    /// Calls answered here, by method and outcome (metrics).
    calls: Mutex<std::collections::BTreeMap<(String, bool), u64>>,
    /// Error records for `get_error`.
    pub errors: ErrorRegistry,
    /// The rules calls are checked against.
    pub acl: RwLock<AgentAcl>,
    /// The event schemas outgoing events are validated against.
    pub schemas: SchemaSet,
    /// When each other node was last heard of.
    last_seen: Mutex<HashMap<String, Instant>>,
    /// The current connection's publisher and forwarder, while connected.
    link: RwLock<Option<Link>>,
    /// A `shutdown` call asked this agent to stop once its reply is out.
    stop_asked: AtomicBool,
    /// Wakes the service when a stop is due.
    stop: tokio::sync::Notify,
}

impl AgentState {
    /// State for these plugins; this node knows itself as a live provider of its commands.
    pub fn new(
        config: AgentConfig,
        plugins: Vec<Arc<dyn Plugin>>,
        acl: AgentAcl,
        schemas: SchemaSet,
    ) -> AgentState {
        let mut local = HashMap::new();
        let mut by_name = HashMap::new();
        for p in plugins {
            for c in p.commands() {
                by_name.insert(c.name.clone(), p.clone());
                local.insert(c.name.clone(), c);
            }
        }
        let mut capabilities = Capabilities::default();
        let commands: Vec<CommandInfo> = local.values().cloned().collect();
        capabilities.add_node(&config.node, &commands);
        let loads = HashMap::from([(config.node.clone(), 0.0)]);
        AgentState {
            config,
            local,
            plugins: by_name,
            capabilities: Mutex::new(capabilities),
            loads: Mutex::new(loads),
            statuses: Mutex::new(HashMap::new()),
            calls: Mutex::new(std::collections::BTreeMap::new()),
            errors: ErrorRegistry::default(),
            acl: RwLock::new(acl),
            schemas,
            last_seen: Mutex::new(HashMap::new()),
            link: RwLock::new(None),
            stop_asked: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
        }
    }

    /// Whether the ACL lets `user` act on `topic` (flag `x`) with these options.
    pub fn allows(
        &self,
        user: &str,
        topic: &str,
        options: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        self.acl
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .check(user, topic, "x", options)
    }

    /// Sets (or with `None` clears) the current connection's link.
    pub fn set_link(&self, link: Option<Link>) {
        *self.link.write().unwrap_or_else(|e| e.into_inner()) = link;
    }

    /// The current link, if connected.
    pub fn link(&self) -> Option<Link> {
        self.link.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Validates `xml` and publishes it on the domain's exchange; returns the event's name.
    ///
    /// # Errors
    /// The validation error, or why it could not be sent.
    pub async fn publish_event(&self, xml: &str) -> Result<String, String> {
        let event = self.schemas.validate(xml).map_err(|e| e.to_string())?;
        self.publish_validated(&event).await?;
        Ok(event.name)
    }

    /// Publishes an event that passed validation on the domain's exchange.
    ///
    /// # Errors
    /// Why it could not be sent.
    pub async fn publish_validated(&self, event: &ValidatedEvent) -> Result<(), String> {
        let link = self
            .link()
            .ok_or("the agent is not connected to its broker")?;
        let message = self
            .config
            .signed(Message::new(event.wire_text()).with_routing_key(names::EVENT_KEY));
        link.publisher
            .send(names::events_exchange(&self.config.domain), message)
            .await
            .map_err(|e| format!("event {} not published: {e}", event.name))
    }

    /// Sends `request` to `node`'s private queue of `target` for `caller` and waits for
    /// the result.
    ///
    /// # Errors
    /// Not connected, the node unreachable or silent, or its error.
    pub async fn ask_node(
        &self,
        node: &str,
        target: &str,
        caller: &str,
        request: &crate::jsonrpc::Request,
    ) -> Result<serde_json::Value, ForwardError> {
        let link = self.link().ok_or(ForwardError::NotConnected)?;
        tracing::debug!(%node, method = %request.method, "forwarding a call");
        let queue = names::private_queue(&self.config.domain, target, node);
        link.forwarder
            .call(node, &queue, caller, request, &self.config)
            .await
    }

    /// Marks this agent to stop after the reply of the current call.
    pub fn ask_stop(&self) {
        self.stop_asked.store(true, Ordering::SeqCst);
    }

    /// Starts the stop asked for, if any (called once a reply went out).
    pub fn stop_if_asked(&self) {
        if self.stop_asked.load(Ordering::SeqCst) {
            self.stop.notify_one();
        }
    }

    /// Completes when a stop asked for by a call is due.
    pub async fn stopped(&self) {
        self.stop.notified().await;
    }

    /// Notes that `node` is alive (its load stays as last reported).
    pub fn seen(&self, node: &str, now: Instant) {
        self.loads().entry(node.to_string()).or_insert(0.0);
        if node != self.config.node {
            self.last_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node.to_string(), now);
        }
    }

    /// Drops `node` from the node table and the capability map (never this node).
    pub fn forget(&self, node: &str) {
        if node == self.config.node {
            return;
        }
        self.loads().remove(node);
        self.statuses().remove(node);
        self.capabilities().remove_node(node);
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    /// Other nodes not heard of within `timeout` of `now`.
    pub fn stale(&self, now: Instant, timeout: Duration) -> Vec<String> {
        let seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut stale: Vec<String> = seen
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) > timeout)
            .map(|(n, _)| n.clone())
            .collect();
        stale.sort();
        stale
    }

    /// The targets this node serves, sorted.
    pub fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self.local.values().map(|c| c.target.clone()).collect();
        t.sort();
        t.dedup();
        t
    }

    /// The capability map, locked.
    pub fn capabilities(&self) -> MutexGuard<'_, Capabilities> {
        self.capabilities.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a call answered here. Methods nobody on the bus offers count as
    /// `(unknown)`, so that callers cannot make the table grow without bound.
    pub fn count_call(&self, method: &str, ok: bool) {
        let known = self.local.contains_key(method) || self.capabilities().get(method).is_some();
        let method = if known { method } else { "(unknown)" };
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((method.to_string(), ok))
            .or_default() += 1;
    }

    /// Calls answered here so far: (method, succeeded, how many), by method.
    pub fn call_counts(&self) -> Vec<(String, bool, u64)> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((m, ok), n)| (m.clone(), *ok, *n))
            .collect()
    }

    /// The rest of each node's last status, locked.
    pub fn statuses(&self) -> MutexGuard<'_, HashMap<String, NodeStatus>> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live nodes and loads, locked.
    pub fn loads(&self) -> MutexGuard<'_, HashMap<String, f64>> {
        self.loads.lock().unwrap_or_else(|e| e.into_inner())
    }
}
