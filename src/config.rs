//! `clacks serve` settings: a TOML file, overridden by `CLACKS_*` environment variables,
//! overridden by flags. Pure: the caller reads the file and the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clacks_broker::auth::{LdapConfig, Source};
use clacks_broker::server::ServerConfig;
use serde::Deserialize;

use crate::cli::ServeArgs;

/// One layer of settings: what the file, the environment or the flags say.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `listen = "127.0.0.1:5672"`.
    pub listen: Option<String>,
    /// `max_frame_size = 65535`.
    pub max_frame_size: Option<u16>,
    /// `channel_max = 65534`.
    pub channel_max: Option<u16>,
    /// `heartbeat_max = 120`.
    pub heartbeat_max: Option<u16>,
    /// `auth = true`.
    pub auth: Option<bool>,
    /// `allow_anonymous = true`.
    pub allow_anonymous: Option<bool>,
    /// `realm = "QPID"`.
    pub realm: Option<String>,
    /// `max_connections = 1024`.
    pub max_connections: Option<usize>,
    /// `max_pending_connections = 4096`: accepted and not yet logged in.
    pub max_pending_connections: Option<usize>,
    /// `data_dir = "./clacks-data"`: where durable state lives.
    pub data_dir: Option<String>,
    /// `min_free_disk_bytes = 33554432`: below this much free space on the data
    /// directory's disk, persistent messages are refused.
    pub min_free_disk_bytes: Option<u64>,
    /// `[users]` table: `guest = "guest"`.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// `stamp_user_id = true`: write the sender into messages without a user-id.
    pub stamp_user_id: Option<bool>,
    /// `acl_file = "/etc/clacks/acl"`.
    pub acl_file: Option<String>,
    /// `auth_sources = ["local", "ldap"]`: where passwords are checked, in order.
    pub auth_sources: Option<Vec<Source>>,
    /// `auth_failure_delay_ms = 1000`.
    pub auth_failure_delay_ms: Option<u64>,
    /// `max_connections_per_user = 0` (no limit).
    pub max_connections_per_user: Option<usize>,
    /// `max_sessions = 256` per connection.
    pub max_sessions: Option<usize>,
    /// `max_queues_per_user = 0` (no limit).
    pub max_queues_per_user: Option<usize>,
    /// `max_message_size = 104857600`: larger messages are refused (bytes).
    pub max_message_size: Option<usize>,
    /// `default_queue_max_size = 104857600`: the limit of queues that set no
    /// `qpid.max_size` (bytes; 0: none).
    pub default_queue_max_size: Option<u64>,
    /// `max_queued_bytes = 0`: what all queues together may hold (bytes; default half the
    /// memory, 0: no limit).
    pub max_queued_bytes: Option<u64>,
    /// `handshake_timeout_ms = 10000`: a connection not open by then is closed.
    pub handshake_timeout_ms: Option<u64>,
    /// `[tls]` table.
    pub tls: Option<TlsSettings>,
    /// `[ldap]` table.
    pub ldap: Option<LdapConfig>,
    /// `[agent]` table.
    pub agent: Option<AgentSettings>,
    /// `[federation]`: links to other brokers.
    pub federation: Option<FederationSettings>,
    /// `[management]`: the QMF agent.
    pub management: Option<ManagementSettings>,
    /// `[http]`: the Clacks gateway, the status page, health, readiness and metrics.
    pub http: Option<HttpSettings>,
    /// `[client]` table: for the agent client commands (`clacks call`, ...), so that one
    /// file can serve both; `serve` does not use it.
    pub client: Option<ClientSettings>,
}

/// The `[client]` table, read by the agent client commands.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// `url = "amqp://user@host:5672/org.clacks"`.
    pub url: Option<String>,
    /// `domain = "org.clacks"`.
    pub domain: Option<String>,
}

/// The `[agent]` table: the Clacks agent inside `clacks serve`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// `enabled = true`.
    pub enabled: Option<bool>,
    /// `domain = "org.clacks"`.
    pub domain: Option<String>,
    /// `node = "host1"` (default: the host name).
    pub node: Option<String>,
    /// `admins = ["admin"]`: users who may call every command (default: `admin`).
    pub admins: Option<Vec<String>>,
    /// `acl_file = "agent.acl"`: the agent ACL (JSON); without it only admins may call.
    pub acl_file: Option<String>,
    /// `status_interval_ms = 10000`: between two NodeStatus events.
    pub status_interval_ms: Option<u64>,
    /// `node_timeout_ms = 60000`: a node silent for longer is dropped.
    pub node_timeout_ms: Option<u64>,
    /// `acl_base = "org.clacks"`: the base whose ACL sets count (default: the domain).
    pub acl_base: Option<String>,
    /// `trusted_agents = ["agent2"]`: broker identities of other agents whose forwarded
    /// calls may name the original caller (the agent's own identity always is).
    pub trusted_agents: Option<Vec<String>>,
    /// `call_timeout_ms = 30000`: how long a call forwarded to another node may take.
    pub call_timeout_ms: Option<u64>,
    /// `events_dir = "events"`: more event schemas (`Name.xsd`) besides the core ones.
    pub events_dir: Option<String>,
    /// `scripts_dir = "scripts"`: script plugins (a TOML manifest beside each program).
    pub scripts_dir: Option<String>,
    /// `script_timeout_ms = 30000`: a script's time limit unless its manifest sets one.
    pub script_timeout_ms: Option<u64>,
    /// `reconnect_min_ms = 500`: the first pause before reconnecting to the broker.
    pub reconnect_min_ms: Option<u64>,
    /// `reconnect_max_ms = 30000`: the longest pause between reconnect attempts.
    pub reconnect_max_ms: Option<u64>,
}

/// The `[federation]` table.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationSettings {
    /// `peers = ["hub"]`: identities whose federation links keep their messages' user-id.
    pub peers: Option<Vec<String>>,
    /// `retry_min_ms = 500`: the first pause before a link connects again (doubling).
    pub retry_min_ms: Option<u64>,
    /// `retry_max_ms = 30000`: the longest pause between a link's attempts.
    pub retry_max_ms: Option<u64>,
    /// `window = 100`: messages a route has in flight before it waits for completions.
    pub window: Option<u32>,
    /// `heartbeat_s = 10`: a link whose remote is silent for two intervals has failed.
    pub heartbeat_s: Option<u16>,
}

/// The `[management]` table: the broker's QMF agent (qpid-config, qpid-stat, ...).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementSettings {
    /// `enabled = true`: answer QMF requests and raise QMF events.
    pub enabled: Option<bool>,
    /// `publish_interval_s = 10`: between unsolicited object updates (qpid-tool).
    pub publish_interval_s: Option<u64>,
    /// `heartbeat_s = 10`: between agent heartbeats.
    pub heartbeat_s: Option<u64>,
}

/// The `[http]` table.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `enabled = true`.
    pub enabled: Option<bool>,
    /// `listen = "127.0.0.1:8080"`.
    pub listen: Option<String>,
    /// `tls = false`: HTTPS with the broker's certificate (`[tls] cert`, or the
    /// self-signed one in the data directory).
    pub tls: Option<bool>,
    /// `cookie_lifetime_s = 1800`: how long a gateway login lasts.
    pub cookie_lifetime_s: Option<u64>,
    /// `cookie_secret = "..."`: the key session cookies are signed with (default: a
    /// random one per start). Sessions live in memory, so a restart logs everyone out
    /// whatever the key.
    pub cookie_secret: Option<String>,
}

/// The HTTP listener as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPlan {
    /// Its address.
    pub listen: SocketAddr,
    /// Whether the configuration named the address (it must bind then).
    pub named: bool,
    /// HTTPS, with these certificate and key files (`None`: the self-signed pair).
    pub tls: Option<Option<(PathBuf, PathBuf)>>,
    /// How long a gateway login lasts.
    pub cookie_lifetime: std::time::Duration,
    /// The session cookies' signing key.
    pub cookie_secret: Option<String>,
}

/// The default `cookie_lifetime_s`, as the original gateway's.
pub const DEFAULT_COOKIE_LIFETIME_S: u64 = 1800;

/// The `[tls]` table.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// `enabled = true`.
    pub enabled: Option<bool>,
    /// `listen = "127.0.0.1:5671"`.
    pub listen: Option<String>,
    /// `cert = "server.pem"`; with `key`. Absent: a self-signed one in the data directory.
    pub cert: Option<String>,
    /// `key = "server-key.pem"`.
    pub key: Option<String>,
    /// `client_ca = "ca.pem"`: verify client certificates (for EXTERNAL) against this CA.
    pub client_ca: Option<String>,
}

impl Settings {
    /// Reads a TOML config file's text.
    ///
    /// # Errors
    /// Syntax errors, unknown keys, values of the wrong type.
    pub fn from_toml(text: &str) -> anyhow::Result<Settings> {
        Ok(toml::from_str(text)?)
    }

    /// Reads `CLACKS_LISTEN`, `CLACKS_MAX_FRAME_SIZE`, `CLACKS_CHANNEL_MAX`,
    /// `CLACKS_HEARTBEAT_MAX`, `CLACKS_AUTH`, `CLACKS_ALLOW_ANONYMOUS`, `CLACKS_REALM`,
    /// `CLACKS_MAX_CONNECTIONS` and `CLACKS_USERS` (`name=password,name=password`)
    /// through `var`.
    ///
    /// # Errors
    /// A variable that does not parse, named in the message.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        fn parsed<T: std::str::FromStr>(
            var: &impl Fn(&str) -> Option<String>,
            name: &str,
        ) -> anyhow::Result<Option<T>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| anyhow!("{name}={v:?} is not a valid value"))
                })
                .transpose()
        }
        fn flag(var: &impl Fn(&str) -> Option<String>, name: &str) -> anyhow::Result<Option<bool>> {
            var(name)
                .map(|v| parse_bool(&v).with_context(|| format!("{name}={v:?}")))
                .transpose()
        }
        let mut users = BTreeMap::new();
        if let Some(list) = var("CLACKS_USERS") {
            for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let (name, password) = parse_user(entry).context("CLACKS_USERS")?;
                users.insert(name, password);
            }
        }
        Ok(Settings {
            listen: var("CLACKS_LISTEN"),
            max_frame_size: parsed(&var, "CLACKS_MAX_FRAME_SIZE")?,
            channel_max: parsed(&var, "CLACKS_CHANNEL_MAX")?,
            heartbeat_max: parsed(&var, "CLACKS_HEARTBEAT_MAX")?,
            auth: flag(&var, "CLACKS_AUTH")?,
            allow_anonymous: flag(&var, "CLACKS_ALLOW_ANONYMOUS")?,
            realm: var("CLACKS_REALM"),
            max_connections: parsed(&var, "CLACKS_MAX_CONNECTIONS")?,
            max_pending_connections: parsed(&var, "CLACKS_MAX_PENDING_CONNECTIONS")?,
            data_dir: var("CLACKS_DATA_DIR"),
            min_free_disk_bytes: parsed(&var, "CLACKS_MIN_FREE_DISK_BYTES")?,
            users,
            stamp_user_id: flag(&var, "CLACKS_STAMP_USER_ID")?,
            acl_file: var("CLACKS_ACL_FILE"),
            auth_failure_delay_ms: parsed(&var, "CLACKS_AUTH_FAILURE_DELAY_MS")?,
            max_connections_per_user: parsed(&var, "CLACKS_MAX_CONNECTIONS_PER_USER")?,
            max_sessions: parsed(&var, "CLACKS_MAX_SESSIONS")?,
            max_queues_per_user: parsed(&var, "CLACKS_MAX_QUEUES_PER_USER")?,
            max_message_size: parsed(&var, "CLACKS_MAX_MESSAGE_SIZE")?,
            default_queue_max_size: parsed(&var, "CLACKS_DEFAULT_QUEUE_MAX_SIZE")?,
            max_queued_bytes: parsed(&var, "CLACKS_MAX_QUEUED_BYTES")?,
            handshake_timeout_ms: parsed(&var, "CLACKS_HANDSHAKE_TIMEOUT_MS")?,
            tls: var("CLACKS_TLS_LISTEN").map(|listen| TlsSettings {
                listen: Some(listen),
                ..TlsSettings::default()
            }),
            ..Settings::default()
        })
    }

    /// What the `serve` flags set.
    ///
    /// # Errors
    /// A `--user` that is not NAME=PASSWORD.
    pub fn from_flags(args: &ServeArgs) -> anyhow::Result<Settings> {
        let mut users = BTreeMap::new();
        for entry in &args.users {
            let (name, password) = parse_user(entry).context("--user")?;
            users.insert(name, password);
        }
        Ok(Settings {
            listen: args.listen.clone(),
            max_frame_size: args.max_frame_size,
            channel_max: args.channel_max,
            heartbeat_max: args.heartbeat_max,
            auth: args.auth,
            allow_anonymous: args.allow_anonymous,
            realm: args.realm.clone(),
            max_connections: args.max_connections,
            data_dir: args.data_dir.clone(),
            users,
            stamp_user_id: args.stamp_user_id,
            acl_file: args.acl_file.clone(),
            tls: args.tls_listen.clone().map(|listen| TlsSettings {
                listen: Some(listen),
                ..TlsSettings::default()
            }),
            ..Settings::default()
        })
    }

    /// These settings with `over`'s on top (users merge by name).
    #[must_use]
    pub fn overlay(mut self, over: Settings) -> Settings {
        self.users.extend(over.users);
        Settings {
            listen: over.listen.or(self.listen),
            max_frame_size: over.max_frame_size.or(self.max_frame_size),
            channel_max: over.channel_max.or(self.channel_max),
            heartbeat_max: over.heartbeat_max.or(self.heartbeat_max),
            auth: over.auth.or(self.auth),
            allow_anonymous: over.allow_anonymous.or(self.allow_anonymous),
            realm: over.realm.or(self.realm),
            max_connections: over.max_connections.or(self.max_connections),
            max_pending_connections: over
                .max_pending_connections
                .or(self.max_pending_connections),
            data_dir: over.data_dir.or(self.data_dir),
            min_free_disk_bytes: over.min_free_disk_bytes.or(self.min_free_disk_bytes),
            users: self.users,
            stamp_user_id: over.stamp_user_id.or(self.stamp_user_id),
            acl_file: over.acl_file.or(self.acl_file),
            auth_sources: over.auth_sources.or(self.auth_sources),
            auth_failure_delay_ms: over.auth_failure_delay_ms.or(self.auth_failure_delay_ms),
            max_connections_per_user: over
                .max_connections_per_user
                .or(self.max_connections_per_user),
            max_sessions: over.max_sessions.or(self.max_sessions),
            max_queues_per_user: over.max_queues_per_user.or(self.max_queues_per_user),
            max_message_size: over.max_message_size.or(self.max_message_size),
            default_queue_max_size: over.default_queue_max_size.or(self.default_queue_max_size),
            max_queued_bytes: over.max_queued_bytes.or(self.max_queued_bytes),
            handshake_timeout_ms: over.handshake_timeout_ms.or(self.handshake_timeout_ms),
            tls: match (self.tls, over.tls) {
                (Some(base), Some(o)) => Some(TlsSettings {
                    enabled: o.enabled.or(base.enabled),
                    listen: o.listen.or(base.listen),
                    cert: o.cert.or(base.cert),
                    key: o.key.or(base.key),
                    client_ca: o.client_ca.or(base.client_ca),
                }),
                (base, o) => o.or(base),
            },
            ldap: over.ldap.or(self.ldap),
            agent: over.agent.or(self.agent),
            federation: over.federation.or(self.federation),
            management: over.management.or(self.management),
            http: over.http.or(self.http),
            client: over.client.or(self.client),
        }
    }

    /// The server configuration: the server's defaults where nothing was set.
    ///
    /// # Errors
    /// An address that is not IP:PORT, a frame size outside 4096-65535, zero connections.
    pub fn into_server_config(self) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::default();
        if let Some(listen) = self.listen {
            config.listen = listen
                .parse::<SocketAddr>()
                .map_err(|_| anyhow!("listen address {listen:?} is not IP:PORT"))?;
        }
        if let Some(size) = self.max_frame_size {
            if size < 4096 {
                bail!("max_frame_size {size} is below the 0-10 minimum of 4096");
            }
            config.max_frame_size = size;
        }
        if let Some(n) = self.channel_max {
            config.channel_max = n;
        }
        if let Some(hb) = self.heartbeat_max {
            config.heartbeat_max = hb;
        }
        if let Some(auth) = self.auth {
            config.auth = auth;
        }
        if let Some(anonymous) = self.allow_anonymous {
            config.allow_anonymous = anonymous;
        }
        if let Some(realm) = self.realm {
            config.realm = realm;
        }
        if let Some(peers) = self.federation.as_ref().and_then(|f| f.peers.clone()) {
            config.federation_peers = peers;
        }
        if let Some(n) = self.max_connections {
            if n == 0 || n > 1_000_000 {
                bail!("max_connections must be between 1 and 1000000");
            }
            config.max_connections = n;
        }
        if let Some(n) = self.max_pending_connections {
            if n == 0 || n > 1_000_000 {
                bail!("max_pending_connections must be between 1 and 1000000");
            }
            config.max_pending_connections = n;
        }
        config.users.extend(self.users);
        if let Some(stamp) = self.stamp_user_id {
            config.stamp_user_id = stamp;
        }
        config.acl_file = self.acl_file.filter(|f| !f.is_empty()).map(PathBuf::from);
        if let Some(sources) = self.auth_sources {
            if sources.is_empty() {
                bail!("auth_sources must name at least one of local, ldap");
            }
            config.auth_sources = sources;
        }
        if config.auth_sources.contains(&Source::Ldap) && self.ldap.is_none() {
            bail!("auth_sources names ldap but there is no [ldap] table");
        }
        config.ldap = self.ldap;
        if let Some(ms) = self.auth_failure_delay_ms {
            config.auth_failure_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = self.handshake_timeout_ms {
            if ms == 0 {
                bail!("handshake_timeout_ms must be at least 1");
            }
            config.handshake_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = self.max_connections_per_user {
            config.max_connections_per_user = n;
        }
        if let Some(n) = self.max_sessions {
            if n == 0 {
                bail!("max_sessions must be at least 1");
            }
            config.max_sessions = n;
        }
        if let Some(n) = self.max_queues_per_user {
            config.max_queues_per_user = n;
        }
        if let Some(n) = self.max_message_size {
            if n < 4096 {
                bail!("max_message_size must be at least 4096");
            }
            config.max_message_size = n;
        }
        if let Some(n) = self.default_queue_max_size {
            config.default_queue_max_size = Some(n).filter(|n| *n > 0);
        }
        if let Some(n) = self.max_queued_bytes {
            config.max_queued_bytes = Some(n).filter(|n| *n > 0);
        }
        Ok(config)
    }

    /// Where the HTTP listener goes; `None` when off. Beside the AMQP listener as the
    /// TLS one is: 8080 beside 5672, a free port beside a free port, and elsewhere only
    /// where `[http] listen` says.
    ///
    /// # Errors
    /// A listen address that is not IP:PORT.
    pub fn http_listen(&self, main: SocketAddr) -> anyhow::Result<Option<SocketAddr>> {
        let h = self.http.clone().unwrap_or_default();
        if h.enabled == Some(false) {
            return Ok(None);
        }
        if let Some(l) = h.listen {
            return l
                .parse()
                .map(Some)
                .map_err(|_| anyhow!("http listen address {l:?} is not IP:PORT"));
        }
        Ok(match main.port() {
            0 => Some(SocketAddr::new(main.ip(), 0)),
            5672 => Some(SocketAddr::new(main.ip(), DEFAULT_HTTP_PORT)),
            _ => None,
        })
    }

    /// The HTTP listener's address and settings; `None` when off.
    ///
    /// # Errors
    /// A listen address that is not IP:PORT.
    pub fn http_plan(&self, main: SocketAddr) -> anyhow::Result<Option<HttpPlan>> {
        let Some(listen) = self.http_listen(main)? else {
            return Ok(None);
        };
        let h = self.http.clone().unwrap_or_default();
        let t = self.tls.clone().unwrap_or_default();
        let tls = match (h.tls.unwrap_or(false), t.cert, t.key) {
            (false, ..) => None,
            (true, Some(c), Some(k)) => Some(Some((PathBuf::from(c), PathBuf::from(k)))),
            (true, None, None) => Some(None),
            _ => bail!("[tls] needs both cert and key, or neither (a self-signed one is made)"),
        };
        Ok(Some(HttpPlan {
            listen,
            named: h.listen.is_some(),
            tls,
            cookie_lifetime: std::time::Duration::from_secs(
                h.cookie_lifetime_s.unwrap_or(DEFAULT_COOKIE_LIFETIME_S),
            ),
            cookie_secret: h.cookie_secret,
        }))
    }

    /// Where the amqps listener goes and which certificate it shows; `None` when off.
    ///
    /// # Errors
    /// A listen address that is not IP:PORT, or a cert without a key.
    pub fn tls_plan(&self, main: SocketAddr) -> anyhow::Result<Option<TlsPlan>> {
        let t = self.tls.clone().unwrap_or_default();
        if t.enabled == Some(false) {
            return Ok(None);
        }
        let listen = match t.listen {
            Some(l) => l
                .parse::<SocketAddr>()
                .map_err(|_| anyhow!("tls listen address {l:?} is not IP:PORT"))?,
            // Beside the plain listener: 5671 beside 5672, a free port beside a free port;
            // beside any other port, only where the config says.
            None => match main.port() {
                0 => SocketAddr::new(main.ip(), 0),
                5672 => SocketAddr::new(main.ip(), clacks_broker::server::tls::TLS_PORT),
                other => {
                    tracing::info!(
                        "no TLS listener: the plain one is on port {other}; set [tls] listen"
                    );
                    return Ok(None);
                }
            },
        };
        let files = match (t.cert, t.key) {
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => None,
            _ => bail!("[tls] needs both cert and key, or neither (a self-signed one is made)"),
        };
        Ok(Some(TlsPlan {
            listen,
            files,
            client_ca: t.client_ca.map(PathBuf::from),
        }))
    }
}

/// The amqps listener as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    /// Its address.
    pub listen: SocketAddr,
    /// Certificate and key files; `None`: the self-signed pair in the data directory.
    pub files: Option<(PathBuf, PathBuf)>,
    /// CA for client certificates.
    pub client_ca: Option<PathBuf>,
}

/// The HTTP port beside the standard AMQP port.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// The default `min_free_disk_bytes`: room for the writes already accepted to finish.
pub const DEFAULT_MIN_FREE_DISK: u64 = 32 << 20;

/// Where durable state lives when nothing says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./clacks-data";

/// Everything `clacks serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The server's settings.
    pub server: ServerConfig,
    /// The data directory.
    pub data_dir: std::path::PathBuf,
    /// Free space the data directory's disk keeps for writes under way.
    pub min_free_disk: u64,
    /// The amqps listener, if on.
    pub tls: Option<TlsPlan>,
    /// The HTTP listener, if on.
    pub http: Option<HttpPlan>,
    /// The in-process agent's settings.
    pub agent: AgentSettings,
    /// Federation link timings.
    pub federation: FederationSettings,
    /// The QMF agent, unless switched off.
    pub management: Option<clacks_broker::management::ManagementConfig>,
}

/// Merges file, environment and flags, in that order of precedence (last wins).
///
/// # Errors
/// Whatever layer does not parse or validate.
pub fn serve_config(
    file: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    flags: &ServeArgs,
) -> anyhow::Result<ServeConfig> {
    let file = match file {
        Some(text) => Settings::from_toml(text).context("config file")?,
        None => Settings::default(),
    };
    let merged = file
        .overlay(Settings::from_env(env)?)
        .overlay(Settings::from_flags(flags)?);
    let data_dir = merged
        .data_dir
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_DATA_DIR.to_string())
        .into();
    let server = merged.clone().into_server_config()?;
    let tls = merged.tls_plan(server.listen)?;
    let http = merged.http_plan(server.listen)?;
    Ok(ServeConfig {
        http,
        server,
        data_dir,
        min_free_disk: merged.min_free_disk_bytes.unwrap_or(DEFAULT_MIN_FREE_DISK),
        tls,
        agent: merged.agent.unwrap_or_default(),
        federation: merged.federation.unwrap_or_default(),
        management: management_config(merged.management.unwrap_or_default()),
    })
}

/// The QMF agent's settings; `None` when switched off.
fn management_config(m: ManagementSettings) -> Option<clacks_broker::management::ManagementConfig> {
    if m.enabled == Some(false) {
        return None;
    }
    let defaults = clacks_broker::management::ManagementConfig::default();
    let secs = |s: Option<u64>, d: std::time::Duration| {
        s.map_or(d, |s| std::time::Duration::from_secs(s.max(1)))
    };
    Some(clacks_broker::management::ManagementConfig {
        publish_interval: secs(m.publish_interval_s, defaults.publish_interval),
        heartbeat_interval: secs(m.heartbeat_s, defaults.heartbeat_interval),
        ..defaults
    })
}

/// The server part of [`serve_config`].
#[cfg(test)]
fn server_config(
    file: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    flags: &ServeArgs,
) -> anyhow::Result<ServerConfig> {
    serve_config(file, env, flags).map(|c| c.server)
}

fn parse_bool(v: &str) -> anyhow::Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("not a boolean (true/false)"),
    }
}

fn parse_user(entry: &str) -> anyhow::Result<(String, String)> {
    match entry.split_once('=') {
        Some((name, password)) if !name.is_empty() => Ok((name.into(), password.into())),
        _ => bail!("{entry:?} is not NAME=PASSWORD"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const FILE: &str = r#"
        listen = "0.0.0.0:5673"
        max_frame_size = 8192
        heartbeat_max = 30
        allow_anonymous = false
        realm = "CLACKS"
        max_connections = 10

        [users]
        guest = "guest"
        alice = "file-pw"
    "#;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_without_any_source() {
        let c = server_config(None, env(&[]), &ServeArgs::default()).expect("config");
        let d = ServerConfig::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.max_frame_size, d.max_frame_size);
        assert!(c.users.is_empty());
    }

    #[test]
    fn file_values_apply() {
        let c = server_config(Some(FILE), env(&[]), &ServeArgs::default()).expect("config");
        assert_eq!(c.listen.to_string(), "0.0.0.0:5673");
        assert_eq!(c.max_frame_size, 8192);
        assert_eq!(c.heartbeat_max, 30);
        assert!(!c.allow_anonymous);
        assert_eq!(c.realm, "CLACKS");
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.users.get("alice").map(String::as_str), Some("file-pw"));
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let e = env(&[
            ("CLACKS_LISTEN", "127.0.0.1:6000"),
            ("CLACKS_HEARTBEAT_MAX", "5"),
            ("CLACKS_ALLOW_ANONYMOUS", "yes"),
            ("CLACKS_USERS", "alice=env-pw, bob=b"),
        ]);
        let flags = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            users: vec!["bob=flag-pw".into()],
            ..ServeArgs::default()
        };
        let c = server_config(Some(FILE), e, &flags).expect("config");
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.heartbeat_max, 5);
        assert!(c.allow_anonymous);
        assert_eq!(c.max_frame_size, 8192, "from the file, untouched");
        assert_eq!(c.users.get("guest").map(String::as_str), Some("guest"));
        assert_eq!(c.users.get("alice").map(String::as_str), Some("env-pw"));
        assert_eq!(c.users.get("bob").map(String::as_str), Some("flag-pw"));
    }

    #[test]
    fn bad_values_are_reported_by_name() {
        let err = |r: anyhow::Result<ServerConfig>| format!("{:#}", r.expect_err("error"));
        let none = ServeArgs::default();
        assert!(err(server_config(Some("nonsense = 1"), env(&[]), &none)).contains("unknown field"));
        assert!(err(server_config(
            None,
            env(&[("CLACKS_MAX_FRAME_SIZE", "big")]),
            &none
        ))
        .contains("CLACKS_MAX_FRAME_SIZE"));
        assert!(
            err(server_config(None, env(&[("CLACKS_AUTH", "maybe")]), &none))
                .contains("CLACKS_AUTH")
        );
        assert!(err(server_config(
            None,
            env(&[("CLACKS_USERS", "nopass")]),
            &none
        ))
        .contains("NAME=PASSWORD"));
        let small = ServeArgs {
            max_frame_size: Some(100),
            ..ServeArgs::default()
        };
        assert!(err(server_config(None, env(&[]), &small)).contains("4096"));
        let host = ServeArgs {
            listen: Some("localhost:5672".into()),
            ..ServeArgs::default()
        };
        assert!(err(server_config(None, env(&[]), &host)).contains("IP:PORT"));
    }

    /// The packaged config as shipped, and with every setting it lists switched on: each
    /// name and type must be one the broker takes.
    #[test]
    fn the_packaged_config_lists_only_real_settings() {
        let shipped = include_str!("package/clacks.toml");
        let as_shipped = Settings::from_toml(shipped).expect("the shipped config");
        assert_eq!(as_shipped.data_dir.as_deref(), Some("/var/lib/clacks"));
        let mut listed = 0;
        let all_on: String = shipped
            .lines()
            .map(|line| {
                let Some(setting) = line.strip_prefix("# ") else {
                    return line.to_string();
                };
                let header = setting.starts_with('[') && setting.ends_with(']');
                let assignment = setting
                    .split_once(" = ")
                    .is_some_and(|(k, _)| !k.is_empty() && !k.contains(' '));
                if assignment {
                    listed += 1;
                }
                if header || assignment {
                    setting.to_string()
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let on = Settings::from_toml(&all_on).expect("every listed setting");
        assert!(listed > 60, "only {listed} settings listed");
        assert_eq!(on.http.and_then(|h| h.cookie_lifetime_s), Some(1800));
        assert!(on.ldap.is_some() && on.users.contains_key("alice"));
        assert_eq!(
            on.agent.and_then(|a| a.reconnect_max_ms),
            Some(30000),
            "the agent's last setting"
        );
    }

    #[test]
    fn the_http_listener_sits_beside_the_amqp_one_unless_told_otherwise() {
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let none = Settings::default();
        assert_eq!(none.http_listen(at(5672)).expect("ok"), Some(at(8080)));
        assert_eq!(none.http_listen(at(0)).expect("ok"), Some(at(0)));
        assert_eq!(none.http_listen(at(6000)).expect("ok"), None);
        let off = Settings::from_toml("[http]\nenabled = false").expect("toml");
        assert_eq!(off.http_listen(at(5672)).expect("ok"), None);
        let set = Settings::from_toml("[http]\nlisten = \"127.0.0.1:9000\"").expect("toml");
        assert_eq!(set.http_listen(at(6000)).expect("ok"), Some(at(9000)));
        let bad = Settings::from_toml("[http]\nlisten = \"nowhere\"").expect("toml");
        assert!(bad.http_listen(at(5672)).is_err());
    }
}
