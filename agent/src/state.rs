//! What the running agent knows and shares between its workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::acl::AgentAcl;
use crate::jsonrpc::ErrorRegistry;
use crate::plugin::Plugin;
use crate::registry::{Capabilities, CommandInfo};

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The domain (`org.clacks`).
    pub domain: String,
    /// This node's id.
    pub node: String,
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
    /// Error records for `get_error`.
    pub errors: ErrorRegistry,
    /// The rules calls are checked against.
    pub acl: RwLock<AgentAcl>,
    /// When each other node was last heard of.
    last_seen: Mutex<HashMap<String, Instant>>,
}

impl AgentState {
    /// State for these plugins; this node knows itself as a live provider of its commands.
    pub fn new(config: AgentConfig, plugins: Vec<Arc<dyn Plugin>>, acl: AgentAcl) -> AgentState {
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
            errors: ErrorRegistry::default(),
            acl: RwLock::new(acl),
            last_seen: Mutex::new(HashMap::new()),
        }
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

    /// Live nodes and loads, locked.
    pub fn loads(&self) -> MutexGuard<'_, HashMap<String, f64>> {
        self.loads.lock().unwrap_or_else(|e| e.into_inner())
    }
}
