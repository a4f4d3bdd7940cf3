//! Federation: links (client connections from this broker to other 0-10 brokers, ours or
//! qpidd) and the routes that move messages over them, as qpid-route sets them up on qpidd.
//!
//! A route moves messages from a source on one broker to an exchange on the other. Pull
//! routes take from the remote side: an exchange route declares a private bridge queue
//! there (carrying qpidd's `qpid.trace.id`/`qpid.trace.exclude` arguments, so messages never
//! go round a loop twice), binds it to the remote exchange and consumes it; a queue route
//! consumes a remote queue. Push routes do the same from local to remote. Either way a
//! message is accepted on its source only once the destination completed its transfer,
//! which our broker (and qpidd with a store) does after a persistent message is on disk:
//! a crash of either side loses nothing and at worst repeats a message.
//!
//! The local side of every route is an in-process connection as [`FEDERATION_IDENTITY`],
//! a federation peer: messages keep the `user-id` they came with.

mod pump;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use clacks_storage::{FederationKind, FederationRecord, GroupCommit, StoreOp};

use crate::client::{ClientError, ConnectOptions, Connection};
use crate::server::InternalConnector;

/// The identity of the broker's own federation connections.
pub const FEDERATION_IDENTITY: &str = "clacks-federation";

/// A link as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// Its name (unique on this broker).
    pub name: String,
    /// `amqp[s]://user:password@host:port` of the remote broker.
    pub url: String,
    /// Kept in the store and restored at start.
    #[serde(default)]
    pub durable: bool,
    /// For `amqps://`: the CA certificates (PEM) to trust instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Where a route takes its messages from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RouteSource {
    /// Messages an exchange routes with this key (an xml exchange: this query).
    Exchange {
        /// The source exchange.
        exchange: String,
        /// The binding key.
        key: String,
        /// For an xml source exchange, the binding's XQuery (`.` when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<String>,
    },
    /// Every message of a queue.
    Queue {
        /// The source queue.
        queue: String,
    },
}

/// A route as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Its name (unique on this broker).
    pub name: String,
    /// The link it travels.
    pub link: String,
    /// What it moves.
    pub source: RouteSource,
    /// The exchange on the receiving side.
    pub dest: String,
    /// Replaces the routing key on the way when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_key: Option<String>,
    /// From this broker to the remote one (else from remote to local).
    #[serde(default)]
    pub push: bool,
    /// Kept in the store and restored at start.
    #[serde(default)]
    pub durable: bool,
}

/// How a link is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "error", rename_all = "lowercase")]
pub enum LinkState {
    /// Connecting (for the first time or again).
    Connecting,
    /// Connected; its routes run.
    Operational,
    /// The last attempt failed, with this error; another follows.
    Failed(String),
}

/// A link with its state, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct LinkInfo {
    /// As configured.
    #[serde(flatten)]
    pub spec: LinkSpec,
    /// Now.
    #[serde(flatten)]
    pub state: LinkState,
    /// The remote broker's federation tag, once known.
    pub remote_tag: Option<String>,
}

/// A route with its figures, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct RouteInfo {
    /// As configured.
    #[serde(flatten)]
    pub spec: RouteSpec,
    /// Messages moved since the broker started.
    pub forwarded: u64,
    /// Why it last stopped, if it did.
    pub last_error: Option<String>,
}

/// Why a federation change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FederationError {
    /// A link or route of that name exists.
    #[error("{0} exists")]
    Exists(String),
    /// No link or route of that name.
    #[error("no {0}")]
    NotFound(String),
    /// A bad URL or argument.
    #[error("{0}")]
    Invalid(String),
    /// The store could not keep a durable link or route.
    #[error("store: {0}")]
    Store(String),
}

/// The store write of a durable link or route.
fn put(
    kind: FederationKind,
    name: &str,
    spec: &impl Serialize,
) -> Result<StoreOp, FederationError> {
    let data = serde_json::to_vec(spec).map_err(|e| FederationError::Invalid(e.to_string()))?;
    Ok(StoreOp::PutFederation(FederationRecord {
        kind,
        name: name.to_string(),
        data: data.into(),
    }))
}

/// Timings and limits of links.
#[derive(Debug, Clone, Copy)]
pub struct FederationSettings {
    /// The first pause before connecting again; it doubles up to `retry_max`.
    pub retry_min: Duration,
    /// The longest pause between attempts.
    pub retry_max: Duration,
    /// Messages a route moves before it waits for the destination's completions (also
    /// the credit it grants on its source).
    pub window: u32,
    /// Heartbeat asked of the remote broker, in seconds: a link whose peer falls silent
    /// for two intervals counts as failed (a cut cable sends no reset).
    pub heartbeat: u16,
}

impl Default for FederationSettings {
    fn default() -> Self {
        Self {
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            window: 100,
            heartbeat: 10,
        }
    }
}

/// Runtime figures of a route.
#[derive(Debug, Default)]
pub(crate) struct RouteStats {
    forwarded: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl RouteStats {
    pub(crate) fn moved(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, why: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

struct LinkEntry {
    spec: LinkSpec,
    state: Arc<Mutex<(LinkState, Option<String>)>>,
    routes: watch::Sender<Vec<(RouteSpec, Arc<RouteStats>)>>,
    stop: watch::Sender<bool>,
}

struct Inner {
    connector: InternalConnector,
    local_tag: String,
    settings: FederationSettings,
    links: Mutex<HashMap<String, LinkEntry>>,
    /// Where durable links and routes are written; `None` without a store.
    journal: Option<Arc<GroupCommit>>,
}

/// The broker's links and routes; clones share them.
#[derive(Clone)]
pub struct Federation {
    inner: Arc<Inner>,
}

impl Federation {
    /// Links of a broker whose in-process connections `connector` opens and whose
    /// federation tag is `local_tag`; durable ones are written through `journal`.
    pub fn new(
        connector: InternalConnector,
        local_tag: String,
        settings: FederationSettings,
        journal: Option<Arc<GroupCommit>>,
    ) -> Federation {
        Federation {
            inner: Arc::new(Inner {
                connector,
                local_tag,
                settings,
                links: Mutex::new(HashMap::new()),
                journal,
            }),
        }
    }

    /// Starts the durable links and routes read back from the store; a record that does
    /// not decode is skipped with a log line.
    pub fn restore(&self, records: Vec<FederationRecord>) {
        let (links, routes): (Vec<_>, Vec<_>) = records
            .into_iter()
            .partition(|r| r.kind == FederationKind::Link);
        for r in links {
            match serde_json::from_slice::<LinkSpec>(&r.data) {
                Ok(spec) => {
                    let started = self
                        .check_link(&spec)
                        .and_then(|opts| self.start_link(spec, opts));
                    if let Err(e) = started {
                        tracing::error!(link = %r.name, "stored link not restored: {e}");
                    }
                }
                Err(e) => tracing::error!(link = %r.name, "stored link unreadable: {e}"),
            }
        }
        for r in routes {
            match serde_json::from_slice::<RouteSpec>(&r.data) {
                Ok(spec) => {
                    if let Err(e) = self.start_route(spec) {
                        tracing::error!(route = %r.name, "stored route not restored: {e}");
                    }
                }
                Err(e) => tracing::error!(route = %r.name, "stored route unreadable: {e}"),
            }
        }
    }

    /// Writes `ops` and waits until they are on disk (nothing to do without a store).
    async fn persist(&self, ops: Vec<StoreOp>) -> Result<(), FederationError> {
        let Some(journal) = &self.inner.journal else {
            return Ok(());
        };
        if ops.is_empty() {
            return Ok(());
        }
        let ticket = journal.submit(ops);
        crate::core::journal::wait_durable(journal, ticket)
            .await
            .map_err(FederationError::Store)
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, LinkEntry>> {
        self.inner.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a link and starts connecting it; a durable one is on disk first.
    ///
    /// # Errors
    /// A link of that name exists, the URL does not parse, the store failed.
    pub async fn add_link(&self, spec: LinkSpec) -> Result<(), FederationError> {
        // Checked before anything is stored, so that no bad record waits for the next start.
        let opts = self.check_link(&spec)?;
        if spec.durable {
            self.persist(vec![put(FederationKind::Link, &spec.name, &spec)?])
                .await?;
        }
        self.start_link(spec, opts)
    }

    /// The connection options of a new link: a name not in use, a URL that parses.
    fn check_link(&self, spec: &LinkSpec) -> Result<ConnectOptions, FederationError> {
        if spec.name.is_empty() {
            return Err(FederationError::Invalid("a link needs a name".into()));
        }
        if self.links().contains_key(&spec.name) {
            return Err(FederationError::Exists(format!("link {}", spec.name)));
        }
        let mut opts = ConnectOptions::parse(&spec.url)
            .map_err(|e| FederationError::Invalid(e.to_string()))?;
        if let Some(ca) = &spec.tls_ca {
            let Some(tls) = opts.tls.as_mut() else {
                return Err(FederationError::Invalid(
                    "a CA to trust needs an amqps:// URL".into(),
                ));
            };
            tls.ca = Some(ca.clone());
        }
        Ok(opts)
    }

    fn start_link(&self, spec: LinkSpec, opts: ConnectOptions) -> Result<(), FederationError> {
        let mut links = self.links();
        // Another call may have taken the name since it was checked.
        if links.contains_key(&spec.name) {
            return Err(FederationError::Exists(format!("link {}", spec.name)));
        }
        let state = Arc::new(Mutex::new((LinkState::Connecting, None)));
        let (routes, routes_rx) = watch::channel(Vec::new());
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(run_link(
            self.inner.clone(),
            spec.name.clone(),
            opts,
            state.clone(),
            routes_rx,
            stop_rx,
        ));
        links.insert(
            spec.name.clone(),
            LinkEntry {
                spec,
                state,
                routes,
                stop,
            },
        );
        Ok(())
    }

    /// Removes a link with its routes (from the store too); its connection closes.
    ///
    /// # Errors
    /// No such link; the store failed.
    pub async fn remove_link(&self, name: &str) -> Result<Vec<RouteSpec>, FederationError> {
        let entry = self
            .links()
            .remove(name)
            .ok_or_else(|| FederationError::NotFound(format!("link {name}")))?;
        let _ = entry.stop.send(true);
        let routes: Vec<RouteSpec> = entry
            .routes
            .borrow()
            .iter()
            .map(|(r, _)| r.clone())
            .collect();
        let mut ops: Vec<StoreOp> = routes
            .iter()
            .filter(|r| r.durable)
            .map(|r| StoreOp::DeleteFederation {
                kind: FederationKind::Route,
                name: r.name.clone(),
            })
            .collect();
        if entry.spec.durable {
            ops.push(StoreOp::DeleteFederation {
                kind: FederationKind::Link,
                name: name.to_string(),
            });
        }
        self.persist(ops).await?;
        Ok(routes)
    }

    /// Adds a route to its link (running at once when the link is up); a durable one is
    /// on disk first and needs a durable link.
    ///
    /// # Errors
    /// No such link, a route of that name exists, the store failed.
    pub async fn add_route(&self, spec: RouteSpec) -> Result<(), FederationError> {
        // Checked before anything is stored, so that no bad record waits for the next start.
        self.check_route(&spec)?;
        if spec.durable {
            let link_durable = self.links().get(&spec.link).map(|l| l.spec.durable);
            if link_durable == Some(false) {
                return Err(FederationError::Invalid(format!(
                    "a durable route needs a durable link; {} is not",
                    spec.link
                )));
            }
            self.persist(vec![put(FederationKind::Route, &spec.name, &spec)?])
                .await?;
        }
        self.start_route(spec)
    }

    /// A new route: a name not in use, a destination, a link that exists.
    fn check_route(&self, spec: &RouteSpec) -> Result<(), FederationError> {
        if spec.name.is_empty() || spec.dest.is_empty() {
            return Err(FederationError::Invalid(
                "a route needs a name and a destination exchange".into(),
            ));
        }
        let links = self.links();
        if links
            .values()
            .any(|l| l.routes.borrow().iter().any(|(r, _)| r.name == spec.name))
        {
            return Err(FederationError::Exists(format!("route {}", spec.name)));
        }
        if !links.contains_key(&spec.link) {
            return Err(FederationError::NotFound(format!("link {}", spec.link)));
        }
        Ok(())
    }

    fn start_route(&self, spec: RouteSpec) -> Result<(), FederationError> {
        self.check_route(&spec)?;
        let links = self.links();
        let link = links
            .get(&spec.link)
            .ok_or_else(|| FederationError::NotFound(format!("link {}", spec.link)))?;
        link.routes
            .send_modify(|routes| routes.push((spec, Arc::new(RouteStats::default()))));
        Ok(())
    }

    /// Removes a route (from the store too); its bridge queue goes with its session.
    ///
    /// # Errors
    /// No such route; the store failed.
    pub async fn remove_route(&self, name: &str) -> Result<RouteSpec, FederationError> {
        let removed = self.links().values().find_map(|link| {
            let mut removed = None;
            link.routes.send_if_modified(|routes| {
                let at = routes.iter().position(|(r, _)| r.name == name);
                removed = at.map(|i| routes.remove(i).0);
                removed.is_some()
            });
            removed
        });
        let spec = removed.ok_or_else(|| FederationError::NotFound(format!("route {name}")))?;
        if spec.durable {
            self.persist(vec![StoreOp::DeleteFederation {
                kind: FederationKind::Route,
                name: name.to_string(),
            }])
            .await?;
        }
        Ok(spec)
    }

    /// The links, sorted by name, with their state.
    pub fn list_links(&self) -> Vec<LinkInfo> {
        let mut out: Vec<LinkInfo> = self
            .links()
            .values()
            .map(|l| {
                let (state, remote_tag) = l.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                LinkInfo {
                    spec: l.spec.clone(),
                    state,
                    remote_tag,
                }
            })
            .collect();
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        out
    }

    /// The routes, sorted by name, with their figures.
    pub fn list_routes(&self) -> Vec<RouteInfo> {
        let mut out: Vec<RouteInfo> = self
            .links()
            .values()
            .flat_map(|l| {
                l.routes
                    .borrow()
                    .iter()
                    .map(|(spec, stats)| RouteInfo {
                        spec: spec.clone(),
                        forwarded: stats.forwarded.load(Ordering::Relaxed),
                        last_error: stats
                            .last_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        out
    }

    /// Stops every link (at broker shutdown).
    pub fn stop_all(&self) {
        for link in self.links().values() {
            let _ = link.stop.send(true);
        }
    }
}

/// Connects a link again and again, running its routes while it is up.
async fn run_link(
    inner: Arc<Inner>,
    name: String,
    mut opts: ConnectOptions,
    state: Arc<Mutex<(LinkState, Option<String>)>>,
    mut routes: watch::Receiver<Vec<(RouteSpec, Arc<RouteStats>)>>,
    mut stop: watch::Receiver<bool>,
) {
    opts.client_properties.insert("qpid.fed_link", 1i64);
    opts.client_properties
        .insert("qpid.federation_tag", inner.local_tag.as_str());
    if opts.heartbeat.is_none() && inner.settings.heartbeat > 0 {
        opts.heartbeat = Some(inner.settings.heartbeat);
    }
    let set = |s: LinkState, tag: Option<String>| {
        let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
        *guard = (s, tag.or_else(|| guard.1.clone()));
    };
    let mut pause = inner.settings.retry_min;
    while !*stop.borrow() {
        set(LinkState::Connecting, None);
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            r = serve_link(&inner, &opts, &set, &mut routes) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let err = match outcome {
            Ok(()) => return,
            Err(e) => e.to_string(),
        };
        tracing::warn!(link = %name, "federation link down: {err}");
        set(LinkState::Failed(err), None);
        if started.elapsed() > inner.settings.retry_max {
            pause = inner.settings.retry_min;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        pause = (pause * 2).min(inner.settings.retry_max);
    }
}

/// One connection of a link: runs the routes until the link fails.
async fn serve_link(
    inner: &Arc<Inner>,
    opts: &ConnectOptions,
    set: &impl Fn(LinkState, Option<String>),
    routes: &mut watch::Receiver<Vec<(RouteSpec, Arc<RouteStats>)>>,
) -> Result<(), ClientError> {
    let remote = Arc::new(Connection::open(opts.clone()).await?);
    let remote_tag = remote
        .negotiated()
        .server_properties
        .get("qpid.federation_tag")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or_default();
    let mut local_opts = ConnectOptions::new("in-process", 0);
    local_opts.mechanism = Some("EXTERNAL".into());
    local_opts.client_properties.insert("qpid.fed_link", 1i64);
    let stream = inner.connector.connect(FEDERATION_IDENTITY);
    let local = Arc::new(Connection::open_on(stream, local_opts).await?);
    set(LinkState::Operational, Some(remote_tag.clone()));
    let tags = pump::Tags {
        local: inner.local_tag.clone(),
        remote: remote_tag,
    };
    let mut running: HashMap<String, AbortOnDrop> = HashMap::new();
    let result = loop {
        // Start what is new, stop what went.
        let wanted: Vec<(RouteSpec, Arc<RouteStats>)> = routes.borrow_and_update().clone();
        running.retain(|name, _| wanted.iter().any(|(r, _)| &r.name == name));
        for (spec, stats) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                running.entry(spec.name.clone())
            {
                slot.insert(AbortOnDrop(tokio::spawn(pump::run(
                    remote.clone(),
                    local.clone(),
                    spec,
                    stats,
                    tags.clone(),
                    inner.settings,
                ))));
            }
        }
        tokio::select! {
            changed = routes.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
            }
            err = remote.closed() => break Err(err),
            err = local.closed() => break Err(err),
        }
    };
    result
}

/// A route's task, stopped when its entry goes: when the route is removed, and when the
/// link's future is dropped (link removed, broker stopping), so that no pump outlives it
/// holding the connections open.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
