//! Running the Clacks agent: inside `clacks serve` over an in-process connection, or alone
//! (`clacks agent`) against any 0-10 broker, reconnecting with backoff either way.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clacks_agent::acl::AgentAcl;
use clacks_agent::events::SchemaSet;
use clacks_agent::plugin::Plugin;
use clacks_agent::service::{self, Ended};
use clacks_agent::state::{AgentConfig, AgentState, PresenceTimers};
use clacks_broker::client::{ClientError, Connection};
use tokio::sync::watch;

use crate::cli::AgentArgs;
use crate::config::{AgentSettings, Settings};

/// A configured agent, ready to connect.
pub struct Agent {
    /// Its shared state.
    pub state: Arc<AgentState>,
    timers: PresenceTimers,
    acl: AclSource,
    backoff: (Duration, Duration),
}

/// Where the agent's rules come from, so that SIGHUP can read them again.
#[derive(Clone)]
pub struct AclSource {
    file: Option<PathBuf>,
    base: String,
    admins: Vec<String>,
}

impl AclSource {
    fn read(&self) -> anyhow::Result<AgentAcl> {
        match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the agent ACL {}", path.display()))?;
                Ok(AgentAcl::parse(&text, &self.base, &self.admins)?)
            }
            None => Ok(AgentAcl::admins_only(&self.admins)),
        }
    }
}

/// Reads the agent ACL again into a running agent; a file that does not parse keeps the
/// rules in force.
#[derive(Clone)]
pub struct AclReload {
    source: AclSource,
    state: Arc<AgentState>,
}

impl AclReload {
    /// Re-reads the rules.
    ///
    /// # Errors
    /// An unreadable or invalid file (the old rules stay).
    pub fn reload(&self) -> anyhow::Result<()> {
        let acl = self.source.read()?;
        *self.state.acl.write().unwrap_or_else(|e| e.into_inner()) = acl;
        Ok(())
    }

    /// Re-reads the rules and logs the outcome (what SIGHUP does).
    pub fn reload_logged(&self) {
        match self.reload() {
            Ok(()) => tracing::info!("agent ACL reloaded"),
            Err(e) => tracing::error!("agent ACL not reloaded, the old rules stay: {e:#}"),
        }
    }
}

/// A setting in milliseconds (at least 1), or `default` when unset.
pub fn millis(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, |ms| Duration::from_millis(ms.max(1)))
}

impl Agent {
    /// Builds the agent the settings describe, with `extra` plugins besides `core` and the
    /// scripts; `own_identity` (the broker identity it logs in as) is trusted for forwarded
    /// calls along with the configured agent identities.
    ///
    /// # Errors
    /// A bad domain, an unreadable ACL, event schema or scripts directory.
    pub fn new(
        settings: &AgentSettings,
        own_identity: Option<&str>,
        extra: Vec<Arc<dyn Plugin>>,
    ) -> anyhow::Result<Agent> {
        let domain = settings
            .domain
            .clone()
            .unwrap_or_else(|| clacks_agent::names::DEFAULT_DOMAIN.to_string());
        if !clacks_agent::names::valid_domain(&domain) {
            anyhow::bail!("agent domain {domain:?} is not a dotted ASCII name");
        }
        let node = settings.node.clone().unwrap_or_else(host_name);
        let acl = AclSource {
            file: settings.acl_file.as_ref().map(PathBuf::from),
            base: settings.acl_base.clone().unwrap_or_else(|| domain.clone()),
            admins: admins(settings),
        };
        let mut config = AgentConfig::new(&domain, &node);
        config.trusted_agents = settings.trusted_agents.clone().unwrap_or_default();
        config
            .trusted_agents
            .extend(own_identity.map(str::to_string));
        config.identity = own_identity.map(str::to_string);
        config.call_timeout = millis(settings.call_timeout_ms, config.call_timeout);
        let schemas = SchemaSet::load(settings.events_dir.as_deref().map(std::path::Path::new))
            .context("cannot load the event schemas")?;
        let mut plugins: Vec<Arc<dyn Plugin>> = vec![Arc::new(clacks_agent::core_commands::Core)];
        plugins.extend(extra);
        if let Some(dir) = &settings.scripts_dir {
            let timeout = millis(settings.script_timeout_ms, Duration::from_secs(30));
            let scripts = clacks_agent::plugins::script::load(std::path::Path::new(dir), timeout)?;
            plugins.extend(scripts);
        }
        let mut names = std::collections::HashSet::new();
        for p in &plugins {
            for c in p.commands() {
                if !names.insert(c.name.clone()) {
                    anyhow::bail!("command {} is defined by two plugins", c.name);
                }
            }
        }
        let state = Arc::new(AgentState::new(config, plugins, acl.read()?, schemas));
        let defaults = PresenceTimers::default();
        let timers = PresenceTimers {
            status_interval: millis(settings.status_interval_ms, defaults.status_interval),
            node_timeout: millis(settings.node_timeout_ms, defaults.node_timeout),
        };
        let backoff = (
            millis(settings.reconnect_min_ms, Duration::from_millis(500)),
            millis(settings.reconnect_max_ms, Duration::from_secs(30)),
        );
        Ok(Agent {
            state,
            timers,
            acl,
            backoff,
        })
    }

    /// A handle that reloads this agent's ACL.
    pub fn acl_reload(&self) -> AclReload {
        AclReload {
            source: self.acl.clone(),
            state: self.state.clone(),
        }
    }

    /// Serves over connections from `connect` until `stop` turns true or a `shutdown`
    /// call stops the agent; a lost connection is opened again after a growing pause
    /// (the node announces itself anew each time).
    pub async fn run<F, Fut>(self, connect: F, mut stop: watch::Receiver<bool>) -> Ended
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Connection, ClientError>>,
    {
        let (min, max) = self.backoff;
        let mut pause = min;
        loop {
            if *stop.borrow() {
                return Ended::Shutdown;
            }
            let started = Instant::now();
            match connect().await {
                Ok(conn) => {
                    let mut until = stop.clone();
                    let stopped = async move {
                        let _ = until.wait_for(|s| *s).await;
                    };
                    match service::serve(conn, self.state.clone(), self.timers, stopped).await {
                        Ok(ended) => return ended,
                        Err(e) => tracing::warn!("the agent lost its broker: {e}"),
                    }
                }
                Err(e) => tracing::warn!("the agent cannot connect: {e}"),
            }
            // A connection that lasted starts the next series of pauses afresh.
            if started.elapsed() > max {
                pause = min;
            }
            tracing::info!("the agent reconnects in {} ms", pause.as_millis());
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => return Ended::Shutdown,
            }
            pause = (pause * 2).min(max);
        }
    }
}

/// `clacks agent`: the agent alone against a broker given by URL, until SIGINT or SIGTERM
/// or a `shutdown` call; SIGHUP reloads its ACL.
///
/// # Errors
/// Bad settings; the broker URL cannot be understood.
pub async fn run_standalone(args: AgentArgs) -> anyhow::Result<()> {
    let mut settings = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            Settings::from_toml(&text)?.agent.unwrap_or_default()
        }
        None => AgentSettings::default(),
    };
    if let Some(domain) = url_domain(&args.conn.broker) {
        settings.domain = Some(domain);
    }
    if let Some(domain) = &args.domain {
        settings.domain = Some(domain.clone());
    }
    if let Some(node) = &args.node {
        settings.node = Some(node.clone());
    }
    if !args.trust.is_empty() {
        settings
            .trusted_agents
            .get_or_insert_with(Vec::new)
            .extend(args.trust.iter().cloned());
    }
    if !args.admin.is_empty() {
        settings.admins = Some(args.admin.clone());
    }
    let opts = crate::client_cmds::connect_options(&args.conn)?;
    // The identity the broker stamps on this agent's messages (a forwarded call between
    // two nodes of one agent account is trusted).
    let own = opts.username.clone();
    let agent = Agent::new(&settings, own.as_deref(), Vec::new())?;
    let (stop_tx, stop) = watch::channel(false);
    let reload = agent.acl_reload();
    tokio::spawn(async move {
        crate::serve::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let hangup = tokio::spawn(reload_agent_acl_on_hangup(reload));
    let ended = agent
        .run(
            || {
                let opts = opts.clone();
                async move { Connection::open(opts).await }
            },
            stop,
        )
        .await;
    hangup.abort();
    tracing::info!(?ended, "agent stopped");
    Ok(())
}

/// Reloads the agent ACL on each SIGHUP.
#[cfg(unix)]
async fn reload_agent_acl_on_hangup(reload: AclReload) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return tracing::warn!("cannot watch SIGHUP; the agent ACL will not be reloaded");
    };
    while hangup.recv().await.is_some() {
        reload.reload_logged();
    }
}

#[cfg(not(unix))]
async fn reload_agent_acl_on_hangup(_reload: AclReload) {}

/// The domain a broker URL names in its path (`amqp://host:5672/org.example`).
pub fn url_domain(url: &str) -> Option<String> {
    crate::agent_client::conn::split_domain(url)
        .1
        .map(str::to_string)
}

/// This machine's host name (the default node id).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The users who may do anything: `[agent] admins`, or `admin`.
pub fn admins(settings: &AgentSettings) -> Vec<String> {
    settings
        .admins
        .clone()
        .unwrap_or_else(|| vec!["admin".to_string()])
}

#[cfg(test)]
mod tests {
    use super::url_domain;

    #[test]
    fn the_url_path_names_the_domain() {
        assert_eq!(
            url_domain("amqp://u:p@h:5672/org.example").as_deref(),
            Some("org.example")
        );
        assert_eq!(url_domain("amqps://h/org.x/").as_deref(), Some("org.x"));
        assert_eq!(url_domain("amqp://h:5672"), None);
        assert_eq!(url_domain("h:5672/"), None);
    }
}
