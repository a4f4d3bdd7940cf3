//! The 0-10 server: listener, per-connection drivers and the adapter onto `core`.

mod admin;
pub mod amqp091;
mod connection;
mod session;
pub mod tls;

pub use admin::{
    Admin, AdminError, ConnectionDetails, ConnectionInfo, ConnectionLive, ConnectionRegistry,
    UserInfo, UserSource,
};

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::auth::{Acl, AuthConfig, Authenticator, Credentials, LdapConfig, PeerInfo, Source};
use crate::core::observer::ModelEvent;
use crate::core::Broker;

/// The amqps listener.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Address to listen on (port 5671 by convention; 0 picks a free one).
    pub listen: SocketAddr,
    /// Certificate, key and client-certificate policy.
    pub config: Arc<rustls::ServerConfig>,
}

/// Everything the server needs to know at start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Whether PLAIN credentials are checked against `users` (off: any name is accepted,
    /// as qpidd's `--auth no`).
    pub auth: bool,
    /// Users seeded from the config: name → password (hashed at start, kept in memory).
    pub users: HashMap<String, String>,
    /// Users from the store, with their verifiers.
    pub stored_users: HashMap<String, Credentials>,
    /// Where PLAIN passwords are checked, in order.
    pub auth_sources: Vec<Source>,
    /// The LDAP directory, when `auth_sources` names it.
    pub ldap: Option<LdapConfig>,
    /// How long a failed login waits before its connection is closed.
    pub auth_failure_delay: Duration,
    /// Whether ANONYMOUS is offered.
    pub allow_anonymous: bool,
    /// Whether a transfer without `user-id` gets the sender's identity written in.
    pub stamp_user_id: bool,
    /// Identities whose federation links (`qpid.fed_link` in their client properties) may
    /// pass messages on with their original `user-id`, as qpidd exempts links.
    pub federation_peers: Vec<String>,
    /// The ACL rules file; none: everything is allowed to authenticated users.
    pub acl_file: Option<PathBuf>,
    /// The amqps listener, if any.
    pub tls: Option<TlsListener>,
    /// The SASL realm appended to user names (`guest` → `guest@QPID`).
    pub realm: String,
    /// Largest frame the broker offers in `connection.tune` (4096..=65535).
    pub max_frame_size: u16,
    /// Highest channel number offered in `connection.tune`.
    pub channel_max: u16,
    /// Largest heartbeat interval (seconds) the broker accepts; 0 disables heartbeats.
    pub heartbeat_max: u16,
    /// Connections open at once; one more is closed after login with connection-forced.
    pub max_connections: usize,
    /// Connections accepted and not yet logged in; beyond this the broker stops accepting
    /// until one logs in or times out.
    pub max_pending_connections: usize,
    /// Connections one user may have open; 0 for no limit.
    pub max_connections_per_user: usize,
    /// Sessions one connection may have attached.
    pub max_sessions: usize,
    /// Largest message (or other command assembly) the broker takes, in bytes; a larger
    /// one is refused with resource-limit-exceeded as soon as its announced size or what
    /// arrived passes this, and nothing more of it is buffered.
    pub max_message_size: usize,
    /// Queues one user may have declared and not deleted; 0 for no limit.
    pub max_queues_per_user: usize,
    /// How long a connection has to finish its handshake (TLS, protocol header, login,
    /// open) before it is closed: silent sockets must not hold their place for long.
    pub handshake_timeout: Duration,
    /// The size limit (bytes of bodies) of queues whose declare sets no `qpid.max_size`;
    /// `None`: unlimited.
    pub default_queue_max_size: Option<u64>,
    /// What all queues together may hold, counting headers and bookkeeping; at the limit
    /// reject queues refuse and ring queues drop their oldest. `None`: unlimited.
    pub max_queued_bytes: Option<u64>,
}

/// The default `max_message_size`: as much as the default queue limit can hold.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 100 << 20;

/// The default `default_queue_max_size`, qpidd's default queue limit.
pub const DEFAULT_QUEUE_MAX_SIZE: u64 = 100 << 20;

/// The default `max_queued_bytes`: half the machine's memory, so that queues alone cannot
/// make it swap; unlimited where the memory size cannot be read.
pub fn default_max_queued_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024 / 2)
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5672)),
            auth: true,
            users: HashMap::new(),
            stored_users: HashMap::new(),
            auth_sources: vec![Source::Local],
            ldap: None,
            auth_failure_delay: Duration::from_secs(1),
            allow_anonymous: false,
            stamp_user_id: true,
            federation_peers: Vec::new(),
            acl_file: None,
            tls: None,
            realm: "QPID".into(),
            max_frame_size: 0xffff,
            channel_max: 0xfffe,
            heartbeat_max: 120,
            max_connections: 1024,
            max_pending_connections: 4096,
            max_connections_per_user: 0,
            max_sessions: 256,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            default_queue_max_size: Some(DEFAULT_QUEUE_MAX_SIZE),
            max_queued_bytes: default_max_queued_bytes(),
            max_queues_per_user: 0,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            auth: self.auth,
            realm: self.realm.clone(),
            allow_anonymous: self.allow_anonymous,
            sources: self.auth_sources.clone(),
            ldap: self.ldap.clone(),
            failure_delay: self.auth_failure_delay,
        }
    }
}

/// What every connection shares.
pub(crate) struct ServerContext {
    pub broker: Arc<Broker>,
    pub config: ServerConfig,
    /// Identifies this broker to federation peers (`qpid.federation_tag`).
    pub federation_tag: String,
    pub auth: Arc<Authenticator>,
    /// The rules in force; `None` when no rules file is configured.
    pub acl: RwLock<Option<Arc<Acl>>>,
    /// Bumped on every reload, so connections re-read `acl` only when it changed.
    pub acl_generation: std::sync::atomic::AtomicU64,
    /// The logged-in connections (limits and administration).
    pub connections: ConnectionRegistry,
    /// Held while an administrator changes local users, so that a check and its write are
    /// not interleaved with another change.
    pub user_changes: Arc<tokio::sync::Mutex<()>>,
}

/// A login being judged (see [`ServerContext::judge`]).
pub(crate) type Verdict = tokio::sync::oneshot::Receiver<Result<crate::auth::Identity, String>>;

/// The verdict on the login being judged, once it comes; it never comes while none is
/// pending (for a `select!` branch, which both doors' drivers have).
pub(crate) async fn verdict_of(
    pending: &mut Option<Verdict>,
) -> Result<crate::auth::Identity, String> {
    match pending.as_mut() {
        Some(rx) => rx
            .await
            .unwrap_or_else(|_| Err("authentication aborted".into())),
        None => std::future::pending().await,
    }
}

impl ServerContext {
    /// Registers logged-in connection `id` of `user`, or says which limit it would break.
    pub(crate) fn admit(
        &self,
        id: u64,
        user: &str,
        peer: &PeerInfo,
        details: admin::ConnectionDetails,
    ) -> Result<(), String> {
        self.connections.admit(
            id,
            user,
            peer,
            details,
            self.config.max_connections,
            self.config.max_connections_per_user,
        )?;
        if let Some(c) = self.connections.get(id) {
            self.tell(ModelEvent::ClientConnected {
                address: crate::management::objects::connection_address(&c),
                user: c.user,
                properties: c.details.properties,
            });
        }
        Ok(())
    }

    /// Which connection limit a login of `user` would break, if any.
    pub(crate) fn would_refuse(&self, user: &str) -> Option<String> {
        self.connections.would_refuse(
            user,
            self.config.max_connections,
            self.config.max_connections_per_user,
        )
    }

    /// Forgets a connection [`ServerContext::admit`] registered.
    pub(crate) fn leave(&self, id: u64) {
        if let Some(c) = self.connections.leave(id) {
            self.tell(ModelEvent::ClientDisconnected {
                address: crate::management::objects::connection_address(&c),
                user: c.user,
                properties: c.details.properties,
            });
        }
    }

    /// Tells management, if it watches, and lets it publish at once.
    fn tell(&self, event: ModelEvent) {
        if let Some(o) = self.broker.observer() {
            o.event(event);
            o.flush(&self.broker);
        }
    }

    /// Judges a login off the connection's task (password hashing and the directory take
    /// time); the verdict arrives on the returned channel, a refusal after the delay.
    pub(crate) fn judge(
        &self,
        claim: Result<crate::auth::Claim, String>,
        peer: &PeerInfo,
    ) -> Verdict {
        let auth = self.auth.clone();
        let peer = peer.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(auth.decide_slowly(claim, &peer).await);
        });
        rx
    }

    /// Brings a connection's copy of the rules up to date: one atomic load, and the rules
    /// re-read only after a reload.
    pub(crate) fn refresh_acl(&self, held: &mut (u64, Option<Arc<Acl>>)) {
        if self
            .acl_generation
            .load(std::sync::atomic::Ordering::Acquire)
            != held.0
        {
            *held = self.acl();
        }
    }

    /// The rules in force now and their generation.
    pub(crate) fn acl(&self) -> (u64, Option<Arc<Acl>>) {
        let acl = self.acl.read().unwrap_or_else(|e| e.into_inner());
        let generation = self
            .acl_generation
            .load(std::sync::atomic::Ordering::Acquire);
        (generation, acl.clone())
    }
}

/// Reads the configured ACL file.
fn load_acl(path: &std::path::Path) -> Result<Acl, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.parse::<Acl>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Re-reads the ACL file on demand (SIGHUP), keeping the old rules if the new ones are bad.
#[derive(Clone)]
pub struct AclReloader(Arc<ServerContext>);

impl AclReloader {
    /// Whether the broker has an ACL file to reload.
    pub fn configured(&self) -> bool {
        self.0.config.acl_file.is_some()
    }

    /// Loads the file again; returns the number of rules now in force.
    ///
    /// # Errors
    /// No file configured, or one that does not read or parse (the old rules stay).
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.0.config.acl_file else {
            return Err("no ACL file configured".into());
        };
        let acl = load_acl(path)?;
        let n = acl.len();
        *self.0.acl.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(acl));
        self.0
            .acl_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(n)
    }
}

/// A bound, not yet running broker server.
pub struct Server {
    listener: TcpListener,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    ctx: Arc<ServerContext>,
    /// Tells every connection, in-process ones included, that the server stops.
    stop: (watch::Sender<bool>, watch::Receiver<bool>),
}

/// Opens in-process connections to a server: no socket, no password; the peer logs in with
/// EXTERNAL as the identity it was made for (the broker's own agent).
#[derive(Clone)]
pub struct InternalConnector {
    ctx: Arc<ServerContext>,
    stop: watch::Receiver<bool>,
}

impl InternalConnector {
    /// A byte stream to a new connection served as any other, whose EXTERNAL login is `user`.
    pub fn connect(&self, user: &str) -> tokio::io::DuplexStream {
        let (ours, theirs) = tokio::io::duplex(256 * 1024);
        let info = PeerInfo {
            addr: None,
            local: None,
            tls: false,
            transport_user: Some(user.to_string()),
        };
        let ctx = self.ctx.clone();
        let stop = self.stop.clone();
        tokio::spawn(connection::serve(theirs, ctx, stop, info, None));
        ours
    }
}

impl Server {
    /// Binds the listener and creates an empty broker.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        Self::bind_with(config, Arc::new(Broker::new())).await
    }

    /// Binds the listeners in front of an existing broker.
    ///
    /// # Errors
    /// When an address cannot be bound, a password cannot be hashed or the ACL file does
    /// not read.
    pub async fn bind_with(config: ServerConfig, broker: Arc<Broker>) -> io::Result<Server> {
        broker.set_memory_limits(config.default_queue_max_size, config.max_queued_bytes);
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        let mut users = config.stored_users.clone();
        for (name, password) in &config.users {
            if users.contains_key(name) {
                tracing::warn!(
                    user = %name,
                    "the config's password for this user replaces the stored one for this run"
                );
            }
            let c = Credentials::from_password(password).map_err(|e| invalid(e.to_string()))?;
            users.insert(name.clone(), c);
        }
        let auth = Authenticator::new(config.auth_config(), users).map_err(invalid)?;
        let acl = match &config.acl_file {
            Some(path) => Some(Arc::new(load_acl(path).map_err(invalid)?)),
            None => None,
        };
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        let listener = bind(config.listen).await?;
        let tls = match &config.tls {
            Some(t) => Some((
                bind(t.listen).await?,
                tokio_rustls::TlsAcceptor::from(t.config.clone()),
            )),
            None => None,
        };
        let ctx = Arc::new(ServerContext {
            broker,
            federation_tag: random_tag(),
            config,
            auth: Arc::new(auth),
            acl: RwLock::new(acl),
            acl_generation: std::sync::atomic::AtomicU64::new(0),
            connections: ConnectionRegistry::default(),
            user_changes: Arc::new(tokio::sync::Mutex::new(())),
        });
        Ok(Server {
            listener,
            tls,
            ctx,
            stop: watch::channel(false),
        })
    }

    /// The address of the amqps listener, if there is one.
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_tls_addr(&self) -> io::Result<Option<SocketAddr>> {
        self.tls.as_ref().map(|(l, _)| l.local_addr()).transpose()
    }

    /// This broker's federation tag (`qpid.federation_tag`), fresh at each start.
    pub fn federation_tag(&self) -> String {
        self.ctx.federation_tag.clone()
    }

    /// A handle that opens in-process connections (for the agent in `clacks serve`).
    pub fn internal_connector(&self) -> InternalConnector {
        InternalConnector {
            ctx: self.ctx.clone(),
            stop: self.stop.1.clone(),
        }
    }

    /// A handle that reloads the ACL file while the server runs.
    pub fn acl_reloader(&self) -> AclReloader {
        AclReloader(self.ctx.clone())
    }

    /// The authenticator (its local users can change while the server runs).
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.ctx.auth.clone()
    }

    /// A handle for administering the running server (queues, connections, local users).
    pub fn admin(&self) -> Admin {
        Admin::new(&self.ctx)
    }

    /// The broker behind this server.
    pub fn broker(&self) -> Arc<Broker> {
        self.ctx.broker.clone()
    }

    /// The address actually bound (the real port when 0 was asked).
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections until `shutdown` completes, then closes them all (each peer gets
    /// `connection.close` 320) and waits for them to finish.
    ///
    /// # Errors
    /// Fatal listener errors.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let (stop_tx, stop_rx) = self.stop;
        // Connections that have not logged in have a budget of their own: silent sockets
        // fill it, not `max_connections` (which `admit` applies at login), and the
        // handshake timeout empties it.
        let pending = Arc::new(Semaphore::new(
            self.ctx
                .config
                .max_pending_connections
                .clamp(1, Semaphore::MAX_PERMITS),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let broker = self.ctx.broker.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                every.tick().await;
                broker.tick(std::time::Instant::now());
            }
        });
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = pending.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = self.listener.accept() => a.map(|(s, p)| (s, p, None)),
                a = accept_tls(&self.tls) => a.map(|(s, p, t)| (s, p, Some(t))),
            };
            match accepted {
                Ok((stream, peer, tls)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().ok();
                    tracing::debug!(%peer, tls = tls.is_some(), "connection accepted");
                    let ctx = self.ctx.clone();
                    let stop = stop_rx.clone();
                    tasks.spawn(async move {
                        let mut info = PeerInfo {
                            addr: Some(peer),
                            local,
                            tls: tls.is_some(),
                            transport_user: None,
                        };
                        match tls {
                            None => connection::serve(stream, ctx, stop, info, Some(permit)).await,
                            Some(acceptor) => {
                                let handshake = tokio::time::timeout(
                                    ctx.config.handshake_timeout,
                                    acceptor.accept(stream),
                                );
                                match handshake.await {
                                    Ok(Ok(stream)) => {
                                        info.transport_user = stream
                                            .get_ref()
                                            .1
                                            .peer_certificates()
                                            .and_then(|c| c.first())
                                            .and_then(tls::certificate_user);
                                        connection::serve(stream, ctx, stop, info, Some(permit))
                                            .await;
                                    }
                                    Ok(Err(e)) => {
                                        tracing::info!(%peer, "TLS handshake failed: {e}");
                                    }
                                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                                }
                            }
                        }
                        tracing::debug!(%peer, "connection closed");
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
            while tasks.try_join_next().is_some() {}
        }
        ticker.abort();
        let _ = stop_tx.send(true);
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(std::time::Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tracing::warn!("connections did not close in time; stopping anyway");
        }
        Ok(())
    }
}

/// The next connection on the amqps listener, with the acceptor for its handshake; never
/// completes when there is no such listener.
async fn accept_tls(
    tls: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> io::Result<(tokio::net::TcpStream, SocketAddr, tokio_rustls::TlsAcceptor)> {
    match tls {
        Some((listener, acceptor)) => {
            let (s, p) = listener.accept().await?;
            Ok((s, p, acceptor.clone()))
        }
        None => std::future::pending().await,
    }
}

/// A random identifier in UUID text form, from the process's hasher seeds (no extra crate).
fn random_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    crate::wire::Uuid(bytes).to_string()
}
