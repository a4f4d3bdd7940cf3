//! Administering a running server: the registry of logged-in connections, and [`Admin`],
//! the handle through which the agent lists and changes queues, connections and local
//! users.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use clacks_storage::{GroupCommit, StoreOp, Ticket, UserRecord};

use super::ServerContext;
use crate::auth::credentials::random_password;
use crate::auth::{Authenticator, Credentials, PeerInfo};
use crate::core::journal::journaled;
use crate::core::snapshot::{ExchangeView, Parts, QueueView};
use crate::core::{BindingSummary, Broker, Error as CoreError, SessionId};
use crate::wire::FieldTable;

/// What a connection counts as it runs, and how management asks it to close. Shared
/// between the connection's task and the registry; plain relaxed atomics, bumped once per
/// message.
#[derive(Debug, Default)]
pub struct ConnectionLive {
    /// Messages the peer sent.
    pub msgs_from: AtomicU64,
    /// Messages sent to the peer.
    pub msgs_to: AtomicU64,
    /// Bytes read from the peer.
    pub bytes_from: AtomicU64,
    /// Bytes written to the peer.
    pub bytes_to: AtomicU64,
    /// Set when management asked the connection to close.
    pub closing: AtomicBool,
    /// Wakes the connection's task to close it.
    pub close: tokio::sync::Notify,
}

impl ConnectionLive {
    /// Counts one and returns nothing; relaxed, as nothing else is ordered by it.
    pub fn bump(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Asks the connection to close (management's `close`).
    pub fn request_close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.close.notify_one();
    }
}

/// What a connection said about itself at login, for the registry.
#[derive(Debug, Clone, Default)]
pub struct ConnectionDetails {
    /// The client properties of `connection.start-ok`.
    pub properties: FieldTable,
    /// The SASL mechanism it logged in with.
    pub mechanism: String,
    /// Whether it is another broker's federation link.
    pub federation_link: bool,
    /// Its counters.
    pub live: Arc<ConnectionLive>,
}

/// One logged-in connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The broker's id of the connection.
    pub id: u64,
    /// The user it logged in as (the form stamped into `user-id`).
    pub user: String,
    /// The peer's address; `None` for an in-process connection (the agent's).
    pub addr: Option<SocketAddr>,
    /// Our end of it.
    pub local: Option<SocketAddr>,
    /// Whether it came over the amqps listener.
    pub tls: bool,
    /// When it logged in.
    pub since: SystemTime,
    /// Sessions attached now.
    pub sessions: usize,
    /// Client properties, mechanism, counters.
    pub details: ConnectionDetails,
}

#[derive(Debug, Default)]
struct Registry {
    open: HashMap<u64, ConnectionInfo>,
    per_user: HashMap<String, usize>,
}

/// The logged-in connections, by id, with per-user counts for the connection limits.
/// Cheap to clone: clones share one registry.
#[derive(Debug, Clone, Default)]
pub struct ConnectionRegistry(Arc<Mutex<Registry>>);

impl ConnectionRegistry {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers connection `id` of `user`, unless that would exceed `max_total` open
    /// connections or `max_per_user` (0: no limit) of this user; the error says which.
    pub(crate) fn admit(
        &self,
        id: u64,
        user: &str,
        peer: &PeerInfo,
        details: ConnectionDetails,
        max_total: usize,
        max_per_user: usize,
    ) -> Result<(), String> {
        let mut r = self.lock();
        if let Some(why) = limit_reached(&r, user, max_total, max_per_user) {
            return Err(why);
        }
        *r.per_user.entry(user.to_string()).or_insert(0) += 1;
        r.open.insert(
            id,
            ConnectionInfo {
                id,
                user: user.to_string(),
                addr: peer.addr,
                local: peer.local,
                tls: peer.tls,
                since: SystemTime::now(),
                sessions: 0,
                details,
            },
        );
        Ok(())
    }

    /// Which limit one more connection of `user` would break, if any (checked again by
    /// [`Self::admit`]; asked first so that a login that cannot be let in costs no hash).
    pub(crate) fn would_refuse(
        &self,
        user: &str,
        max_total: usize,
        max_per_user: usize,
    ) -> Option<String> {
        limit_reached(&self.lock(), user, max_total, max_per_user)
    }

    /// Forgets connection `id`; returns what was known of it.
    pub(crate) fn leave(&self, id: u64) -> Option<ConnectionInfo> {
        let mut r = self.lock();
        let c = r.open.remove(&id)?;
        if let Some(n) = r.per_user.get_mut(&c.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                r.per_user.remove(&c.user);
            }
        }
        Some(c)
    }

    /// The open connections, by id (their `sessions` is 0: the broker counts those).
    pub fn list(&self) -> Vec<ConnectionInfo> {
        let mut out: Vec<ConnectionInfo> = self.lock().open.values().cloned().collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// The connection `id`, if it is open.
    pub fn get(&self, id: u64) -> Option<ConnectionInfo> {
        self.lock().open.get(&id).cloned()
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The limit that one more connection of `user` would break.
fn limit_reached(
    r: &Registry,
    user: &str,
    max_total: usize,
    max_per_user: usize,
) -> Option<String> {
    if r.open.len() >= max_total {
        return Some(format!("connection limit of {max_total} reached"));
    }
    let mine = r.per_user.get(user).copied().unwrap_or(0);
    (max_per_user > 0 && mine >= max_per_user)
        .then(|| format!("{user} already has {mine} connections, the most allowed"))
}

/// Where a local user comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserSource {
    /// The store (`clacks user add`, or added at run time).
    Store,
    /// The configuration file's `[users]`, which wins over a stored user of the same name.
    Config,
}

impl UserSource {
    /// `"store"` or `"config"`.
    pub fn as_str(self) -> &'static str {
        match self {
            UserSource::Store => "store",
            UserSource::Config => "config",
        }
    }
}

/// One local user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The name, without realm.
    pub name: String,
    /// Where it comes from.
    pub source: UserSource,
}

/// Why an administrative change was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// What was named does not exist (the text names it: `queue q1`).
    #[error("{0}")]
    NotFound(String),
    /// An argument that cannot be used (an empty name or password).
    #[error("{0}")]
    Invalid(String),
    /// The change is not possible now (a user that exists, a queue in use).
    #[error("{0}")]
    Refused(String),
    /// The store or the system failed.
    #[error("{0}")]
    Failed(String),
}

/// The session id of administrative operations: no attached session has it (ids start at
/// 1), so an exclusive queue stays its owner's.
const ADMIN_SESSION: SessionId = SessionId(0);

/// Length of generated passwords.
const GENERATED_PASSWORD_LEN: usize = 20;

/// A handle for administering a running server: its broker, its logged-in connections and
/// its local users, whose changes go durably through the broker's store. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    broker: Arc<Broker>,
    auth: Arc<Authenticator>,
    connections: ConnectionRegistry,
    /// The store's writer; `None` for a broker without a store (users then live in memory).
    journal: Option<Arc<GroupCommit>>,
    /// Users the configuration file defines.
    config_users: Arc<HashSet<String>>,
    /// Shared by every handle of one server.
    user_changes: Arc<tokio::sync::Mutex<()>>,
    /// The server, for its ACL.
    server: Arc<ServerContext>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("connections", &self.connections.len())
            .field("durable", &self.journal.is_some())
            .finish_non_exhaustive()
    }
}

impl Admin {
    pub(super) fn new(ctx: &Arc<ServerContext>) -> Admin {
        Admin {
            broker: ctx.broker.clone(),
            auth: ctx.auth.clone(),
            connections: ctx.connections.clone(),
            journal: ctx.broker.journal().cloned(),
            config_users: Arc::new(ctx.config.users.keys().cloned().collect()),
            user_changes: ctx.user_changes.clone(),
            server: ctx.clone(),
        }
    }

    /// The registry of logged-in connections.
    pub fn registry(&self) -> ConnectionRegistry {
        self.connections.clone()
    }

    /// The connection `id`, if it is open.
    pub fn connection(&self, id: u64) -> Option<ConnectionInfo> {
        self.connections.get(id)
    }

    /// The ACL in force, if a rules file is configured.
    pub fn acl(&self) -> Option<Arc<crate::auth::Acl>> {
        self.server.acl().1
    }

    /// The server's federation tag.
    pub fn federation_tag(&self) -> &str {
        &self.server.federation_tag
    }

    /// The server's settings.
    pub fn config(&self) -> &super::ServerConfig {
        &self.server.config
    }

    /// Asks connection `id` to close (it answers `connection.close` 320); false when no
    /// such connection is open.
    pub fn close_connection(&self, id: u64) -> bool {
        match self.connections.get(id) {
            Some(c) => {
                c.details.live.request_close();
                true
            }
            None => false,
        }
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Every queue, sorted by name.
    pub fn queues(&self) -> Vec<QueueView> {
        self.broker
            .snapshot(Parts {
                queues: true,
                ..Parts::default()
            })
            .queues
    }

    /// Every exchange, sorted by name.
    pub fn exchanges(&self) -> Vec<ExchangeView> {
        let mut all = self
            .broker
            .snapshot(Parts {
                exchanges: true,
                ..Parts::default()
            })
            .exchanges;
        // The nameless default exchange is not listed.
        all.retain(|e| !e.name.is_empty());
        all
    }

    /// The bindings of `exchange`, or of all exchanges.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] for an unknown exchange.
    pub fn bindings(&self, exchange: Option<&str>) -> Result<Vec<BindingSummary>, AdminError> {
        self.broker.list_bindings(exchange).map_err(|e| match e {
            CoreError::NotFound(_) => {
                AdminError::NotFound(format!("exchange {}", exchange.unwrap_or_default()))
            }
            other => AdminError::Failed(other.to_string()),
        })
    }

    /// The logged-in connections, by id, with their sessions counted.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let mut list = self.connections.list();
        let counts = self.broker.session_counts();
        for c in &mut list {
            c.sessions = counts.get(&c.id).copied().unwrap_or(0);
        }
        list
    }

    /// Drops the available messages of queue `name`; returns how many, once the store has
    /// them gone.
    ///
    /// # Errors
    /// Unknown queue, another session's exclusive queue, a store failure.
    pub async fn purge_queue(&self, name: &str) -> Result<usize, AdminError> {
        let (result, ticket) = journaled(|| self.broker.purge_queue(ADMIN_SESSION, name));
        let n = result.map_err(|e| queue_error(name, e))?;
        self.durable(ticket).await?;
        Ok(n)
    }

    /// Deletes queue `name` (its messages go to its alternate exchange, if any), once the
    /// store has it gone.
    ///
    /// # Errors
    /// Unknown queue, another session's exclusive queue, consumers with `if_unused`,
    /// messages with `if_empty`, a store failure.
    pub async fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(), AdminError> {
        let (result, ticket) = journaled(|| {
            self.broker
                .delete_queue(ADMIN_SESSION, name, if_unused, if_empty)
        });
        result.map_err(|e| queue_error(name, e))?;
        self.durable(ticket).await
    }

    /// The local users, sorted by name.
    pub fn users(&self) -> Vec<UserInfo> {
        self.auth
            .user_names()
            .into_iter()
            .map(|name| {
                let source = if self.config_users.contains(&name) {
                    UserSource::Config
                } else {
                    UserSource::Store
                };
                UserInfo { name, source }
            })
            .collect()
    }

    /// Adds local user `name`, stored durably and able to log in at once. Without a
    /// password, a random one is made and returned.
    ///
    /// # Errors
    /// A bad name, an empty password, an existing user, a store failure.
    pub async fn add_user(
        &self,
        name: &str,
        password: Option<&str>,
    ) -> Result<Option<String>, AdminError> {
        check_user_name(name)?;
        let (password, generated) = match password {
            Some("") => {
                return Err(AdminError::Invalid(
                    "empty passwords are not allowed".into(),
                ))
            }
            Some(p) => (p.to_string(), false),
            None => (
                random_password(GENERATED_PASSWORD_LEN)
                    .map_err(|e| AdminError::Failed(e.to_string()))?,
                true,
            ),
        };
        let _changing = self.user_changes.lock().await;
        if self.auth.user_names().iter().any(|n| n == name) {
            return Err(AdminError::Refused(format!("user {name} exists")));
        }
        let hashed = password.clone();
        // Argon2 takes tens of milliseconds of CPU: keep it off the reactor.
        let credentials = tokio::task::spawn_blocking(move || Credentials::from_password(&hashed))
            .await
            .map_err(|e| AdminError::Failed(e.to_string()))?
            .map_err(|e| AdminError::Failed(e.to_string()))?;
        if let Some(journal) = &self.journal {
            let ticket = journal.submit(vec![StoreOp::PutUser(UserRecord {
                name: name.to_string(),
                credentials: credentials.encode(),
            })]);
            wait_durable(journal, ticket).await?;
        }
        self.auth.set_user(name, credentials);
        Ok(generated.then_some(password))
    }

    /// Removes local user `name` from the store and from logins at once (its open
    /// connections stay).
    ///
    /// # Errors
    /// An unknown user, one the configuration file defines, a store failure.
    pub async fn remove_user(&self, name: &str) -> Result<(), AdminError> {
        let _changing = self.user_changes.lock().await;
        if self.config_users.contains(name) {
            return Err(AdminError::Refused(format!(
                "user {name} is defined in the configuration file; remove it there"
            )));
        }
        if !self.auth.remove_user(name) {
            return Err(AdminError::NotFound(format!("user {name}")));
        }
        if let Some(journal) = &self.journal {
            let ticket = journal.submit(vec![StoreOp::DeleteUser(name.to_string())]);
            wait_durable(journal, ticket).await.map_err(|e| {
                AdminError::Failed(format!(
                    "user {name} can no longer log in, but the store failed and may bring \
                     the user back at the next start: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Waits until `ticket`, if any, is durable.
    async fn durable(&self, ticket: Option<Ticket>) -> Result<(), AdminError> {
        match (&self.journal, ticket) {
            (Some(journal), Some(ticket)) => wait_durable(journal, ticket).await,
            _ => Ok(()),
        }
    }
}

/// Waits for the store to confirm `ticket`.
async fn wait_durable(journal: &GroupCommit, ticket: Ticket) -> Result<(), AdminError> {
    crate::core::journal::wait_durable(journal, ticket)
        .await
        .map_err(AdminError::Failed)
}

/// An error of a queue operation, in the caller's terms.
fn queue_error(name: &str, e: CoreError) -> AdminError {
    match e {
        CoreError::NotFound(_) => AdminError::NotFound(format!("queue {name}")),
        CoreError::IllegalArgument(m) | CoreError::InvalidArgument(m) => AdminError::Invalid(m),
        CoreError::ResourceLocked(m) | CoreError::PreconditionFailed(m) => AdminError::Refused(m),
        other => AdminError::Failed(other.to_string()),
    }
}

/// User names as `clacks user add` takes them: not empty, no whitespace, control
/// characters or `@` (the realm is added to the name).
fn check_user_name(name: &str) -> Result<(), AdminError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c == '@' || c.is_whitespace() || c.is_control())
    {
        return Err(AdminError::Invalid(
            "user names are non-empty, without spaces or '@' (the realm is added)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Step;
    use crate::server::{Server, ServerConfig};
    use clacks_storage::{MemoryStore, Recovered, Store};

    fn peer(addr: Option<&str>) -> PeerInfo {
        PeerInfo {
            addr: addr.map(|a| a.parse().expect("addr")),
            local: None,
            tls: false,
            transport_user: None,
        }
    }

    #[test]
    fn the_registry_lists_and_limits_connections() {
        let r = ConnectionRegistry::default();
        r.admit(
            7,
            "alice",
            &peer(Some("127.0.0.1:4000")),
            ConnectionDetails::default(),
            3,
            2,
        )
        .expect("first");
        r.admit(3, "alice", &peer(None), ConnectionDetails::default(), 3, 2)
            .expect("second");
        let e = r
            .admit(9, "alice", &peer(None), ConnectionDetails::default(), 3, 2)
            .expect_err("per user");
        assert!(e.contains("alice already has 2"), "{e}");
        r.admit(9, "bob", &peer(None), ConnectionDetails::default(), 3, 2)
            .expect("bob");
        let e = r
            .admit(10, "carol", &peer(None), ConnectionDetails::default(), 3, 0)
            .expect_err("total");
        assert!(e.contains("limit of 3"), "{e}");
        let ids: Vec<u64> = r.list().iter().map(|c| c.id).collect();
        assert_eq!(ids, [3, 7, 9]);
        assert_eq!(
            r.list()[1].addr,
            Some("127.0.0.1:4000".parse().expect("addr"))
        );
        r.leave(7);
        r.leave(7);
        r.admit(11, "alice", &peer(None), ConnectionDetails::default(), 3, 2)
            .expect("room again");
        assert_eq!(r.len(), 3);
    }

    async fn server(store: Arc<MemoryStore>) -> Server {
        let journal = GroupCommit::start(store).expect("writer");
        let broker = Broker::recover(Arc::new(journal), Recovered::default()).expect("broker");
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..ServerConfig::default()
        };
        config.users.insert("guest".into(), "guest".into());
        Server::bind_with(config, Arc::new(broker))
            .await
            .expect("bind")
    }

    async fn plain_login(admin: &Admin, user: &str, pw: &str) -> bool {
        let initial = format!("\0{user}\0{pw}");
        match admin.auth.start(&peer(None), "PLAIN", initial.as_bytes()) {
            (_, Step::Done(claim)) => admin.auth.decide(claim, &peer(None)).await.is_ok(),
            _ => false,
        }
    }

    #[tokio::test]
    async fn users_change_in_the_store_and_for_logins_at_once() {
        let store = Arc::new(MemoryStore::new());
        let server = server(store.clone()).await;
        let admin = server.admin();
        assert_eq!(
            admin.users(),
            [UserInfo {
                name: "guest".into(),
                source: UserSource::Config
            }]
        );
        assert_eq!(admin.add_user("alice", Some("pw")).await, Ok(None));
        assert!(plain_login(&admin, "alice", "pw").await);
        let generated = admin
            .add_user("bob", None)
            .await
            .expect("bob")
            .expect("a generated password");
        assert_eq!(generated.len(), GENERATED_PASSWORD_LEN);
        assert!(plain_login(&admin, "bob", &generated).await);
        let stored: Vec<String> = store
            .recover()
            .expect("recover")
            .users
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(stored, ["alice", "bob"]);
        assert!(matches!(
            admin.add_user("alice", Some("other")).await,
            Err(AdminError::Refused(_))
        ));
        assert!(matches!(
            admin.add_user("guest", Some("x")).await,
            Err(AdminError::Refused(_))
        ));
        for (name, pw) in [
            ("", Some("x")),
            ("a b", Some("x")),
            ("a@R", None),
            ("c", Some("")),
        ] {
            assert!(
                matches!(admin.add_user(name, pw).await, Err(AdminError::Invalid(_))),
                "{name:?} {pw:?}"
            );
        }
        let sources: Vec<(String, &str)> = admin
            .users()
            .into_iter()
            .map(|u| (u.name, u.source.as_str()))
            .collect();
        assert_eq!(
            sources,
            [
                ("alice".to_string(), "store"),
                ("bob".to_string(), "store"),
                ("guest".to_string(), "config")
            ]
        );

        admin.remove_user("alice").await.expect("remove");
        assert!(!plain_login(&admin, "alice", "pw").await);
        assert_eq!(store.recover().expect("recover").users.len(), 1);
        assert!(matches!(
            admin.remove_user("alice").await,
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            admin.remove_user("guest").await,
            Err(AdminError::Refused(_))
        ));
    }

    #[tokio::test]
    async fn queues_are_purged_and_deleted_durably() {
        use crate::core::{Draft, QueueDeclare};
        let store = Arc::new(MemoryStore::new());
        let server = server(store.clone()).await;
        let admin = server.admin();
        let broker = admin.broker().clone();
        let session = broker.new_session(broker.new_connection());
        broker
            .declare_queue(
                session,
                QueueDeclare {
                    name: "q".into(),
                    durable: true,
                    ..QueueDeclare::default()
                },
            )
            .expect("declare");
        for _ in 0..3 {
            let mut m = Draft::new("q", &b"x"[..]);
            m.delivery.delivery_mode = Some(crate::wire::MessageDeliveryMode::PERSISTENT);
            broker.publish("", Arc::new(m.seal())).expect("publish");
        }
        assert_eq!(admin.queues()[0].depth, 3);
        assert_eq!(admin.purge_queue("q").await, Ok(3));
        assert!(store.recover().expect("recover").messages.is_empty());
        assert!(matches!(
            admin.purge_queue("nope").await,
            Err(AdminError::NotFound(_))
        ));
        admin.delete_queue("q", false, false).await.expect("delete");
        assert!(admin.queues().is_empty());
        assert!(store.recover().expect("recover").queues.is_empty());
        assert!(matches!(
            admin.delete_queue("q", false, false).await,
            Err(AdminError::NotFound(_))
        ));
        assert!(matches!(
            admin.bindings(Some("nope")),
            Err(AdminError::NotFound(_))
        ));
    }
}
