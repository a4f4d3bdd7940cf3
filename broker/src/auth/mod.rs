//! Who may connect and what they may do: SASL, local users, LDAP, identities and the ACL.

pub mod acl;
pub mod credentials;
pub mod ldap;
mod sasl;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rsasl::prelude::SASLConfig;

pub use acl::{Acl, Action, ObjectKind};
pub use credentials::Credentials;
use credentials::ProvenPassword;
pub use ldap::{LdapConfig, LdapVerdict};
pub use sasl::{Claim, Exchange, Step};

/// A place users' passwords are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Users kept in the store (and seeded from the config).
    Local,
    /// An LDAP directory (PLAIN only).
    Ldap,
}

/// How connections authenticate.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Off: any PLAIN name is taken at its word, as qpidd's `--auth no`.
    pub auth: bool,
    /// The realm of authenticated ids (`alice` → `alice@QPID`).
    pub realm: String,
    /// Whether ANONYMOUS is offered.
    pub allow_anonymous: bool,
    /// Where PLAIN passwords are checked, in order.
    pub sources: Vec<Source>,
    /// The directory, when `sources` names it.
    pub ldap: Option<LdapConfig>,
    /// How long a failed login waits before the connection is closed.
    pub failure_delay: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            auth: true,
            realm: "QPID".into(),
            allow_anonymous: false,
            sources: vec![Source::Local],
            ldap: None,
            failure_delay: Duration::from_secs(1),
        }
    }
}

/// An authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `user@REALM`, as qpidd reports it.
    pub full: String,
    /// The form stamped into `user-id` and seen by the ACL and the agent: the bare name in
    /// the broker's own realm, `user@REALM` in any other.
    pub stamp: String,
    /// Logged in with ANONYMOUS.
    pub anonymous: bool,
}

impl Identity {
    /// The identity of `name` (which may carry `@REALM`) under the broker's `realm`.
    pub fn user(name: &str, realm: &str) -> Identity {
        let (full, stamp) = match name.rsplit_once('@') {
            Some((user, r)) if r == realm => (name.to_string(), user.to_string()),
            Some(_) => (name.to_string(), name.to_string()),
            None => (format!("{name}@{realm}"), name.to_string()),
        };
        Identity {
            full,
            stamp,
            anonymous: false,
        }
    }

    /// The ANONYMOUS identity.
    pub fn anonymous() -> Identity {
        Identity {
            full: "anonymous".into(),
            stamp: "anonymous".into(),
            anonymous: true,
        }
    }

    /// Whether a message's `user-id` names this identity.
    pub fn owns_user_id(&self, claimed: &[u8]) -> bool {
        claimed == self.full.as_bytes() || claimed == self.stamp.as_bytes()
    }
}

/// What the transport knows about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address.
    pub addr: Option<std::net::SocketAddr>,
    /// Our end of the connection.
    pub local: Option<std::net::SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The user the transport vouches for, who may log in with EXTERNAL: the common name
    /// of a verified TLS client certificate, or the broker's own in-process agent.
    pub transport_user: Option<String>,
}

/// Checks logins for every connection.
pub struct Authenticator {
    config: AuthConfig,
    users: sasl::UserTable,
    sasl: Arc<SASLConfig>,
    failures: Mutex<HashMap<IpAddr, u64>>,
    /// Password hashes checked at once: each argon2 check takes ~19 MiB and tens of
    /// milliseconds, so unauthenticated peers must not be able to run many together.
    hashing: tokio::sync::Semaphore,
    /// Checked for unknown users, so that a refusal takes as long as for known ones.
    decoy: Credentials,
    /// Passwords argon2 accepted, by user: repeated logins are cheap. A wrong password
    /// still goes through argon2 (bounded by `hashing`).
    proven: Mutex<HashMap<String, ProvenPassword>>,
    /// Argon2 checks run so far (tests read it).
    argon2_runs: std::sync::atomic::AtomicU64,
}

/// Peers whose failures are remembered; beyond this the counts start over.
const MAX_FAILURE_PEERS: usize = 10_000;

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator with `users` as the local users.
    ///
    /// # Errors
    /// When the SASL library cannot be set up.
    pub fn new(
        config: AuthConfig,
        users: HashMap<String, Credentials>,
    ) -> Result<Authenticator, String> {
        let users = Arc::new(RwLock::new(users));
        let sasl = sasl::config(users.clone(), &config.realm)?;
        let decoy = credentials::random_password(20)
            .and_then(|p| Credentials::from_password(&p))
            .map_err(|e| e.to_string())?;
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Authenticator {
            config,
            users,
            sasl,
            failures: Mutex::new(HashMap::new()),
            hashing: tokio::sync::Semaphore::new(cpus),
            decoy,
            proven: Mutex::new(HashMap::new()),
            argon2_runs: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Adds or replaces a local user.
    pub fn set_user(&self, name: &str, credentials: Credentials) {
        self.write_users().insert(name.to_string(), credentials);
        self.forget_proven(name);
    }

    /// Removes a local user; returns whether there was one.
    pub fn remove_user(&self, name: &str) -> bool {
        self.forget_proven(name);
        self.write_users().remove(name).is_some()
    }

    fn forget_proven(&self, name: &str) {
        self.proven
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The local users' names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = users.keys().cloned().collect();
        names.sort();
        names
    }

    fn write_users(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Credentials>> {
        self.users.write().unwrap_or_else(|e| e.into_inner())
    }

    fn local(&self) -> bool {
        self.config.sources.contains(&Source::Local)
    }

    /// The mechanisms offered to this peer, in the order offered.
    pub fn mechanisms(&self, peer: &PeerInfo) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.config.auth && self.local() {
            m.push("SCRAM-SHA-256");
        }
        m.push("PLAIN");
        if peer.transport_user.is_some() {
            m.push("EXTERNAL");
        }
        if self.config.allow_anonymous || !self.config.auth {
            m.push("ANONYMOUS");
        }
        m
    }

    /// Starts an exchange with the client's chosen mechanism and initial response.
    pub fn start(&self, peer: &PeerInfo, mechanism: &str, initial: &[u8]) -> (Exchange, Step) {
        if !self.mechanisms(peer).contains(&mechanism) {
            return Exchange::refused(format!("mechanism {mechanism} not offered"));
        }
        Exchange::start(&self.sasl, mechanism, initial)
    }

    /// Judges a finished exchange's claim: the identity, or why not.
    pub async fn decide(&self, claim: Claim, peer: &PeerInfo) -> Result<Identity, String> {
        let realm = &self.config.realm;
        match claim {
            Claim::Anonymous => Ok(Identity::anonymous()),
            Claim::External { authzid } => {
                let Some(user) = &peer.transport_user else {
                    return Err("EXTERNAL without a client certificate".into());
                };
                let id = Identity::user(user, realm);
                if !authzid.is_empty() && Identity::user(&authzid, realm) != id {
                    return Err(format!("certificate of {user} cannot act as {authzid}"));
                }
                Ok(id)
            }
            Claim::Scram { authzid, authcid } => authorize(authzid, authcid, realm),
            Claim::Plain {
                authzid,
                authcid,
                password,
            } => {
                if self.config.auth {
                    self.check_password(&authcid, &password).await?;
                }
                authorize(authzid, authcid, realm)
            }
        }
    }

    /// Judges a claim (or the reason there is none) as [`Authenticator::decide`] does, but
    /// answers a refusal only after the configured delay, to slow down guessing. Every
    /// door (0-10, 0-9-1, the HTTP gateway) logs in through here.
    pub async fn decide_slowly(
        &self,
        claim: Result<Claim, String>,
        peer: &PeerInfo,
    ) -> Result<Identity, String> {
        let verdict = match claim {
            Ok(claim) => self.decide(claim, peer).await,
            Err(why) => Err(why),
        };
        if verdict.is_err() {
            tokio::time::sleep(self.config.failure_delay).await;
        }
        verdict
    }

    /// Whether `password` was already proven for `user`, whose credentials are `known`.
    fn proven_login(&self, user: &str, known: Option<&Credentials>, password: &str) -> bool {
        let Some(known) = known else {
            return false;
        };
        self.proven
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .is_some_and(|p| p.accepts(known, password.as_bytes()))
    }

    async fn check_password(&self, authcid: &str, password: &str) -> Result<(), String> {
        let id = Identity::user(authcid, &self.config.realm);
        let mut outage = None;
        for source in &self.config.sources {
            match source {
                Source::Local => {
                    let known = self
                        .users
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id.stamp)
                        .cloned();
                    if self.proven_login(&id.stamp, known.as_ref(), password) {
                        return Ok(());
                    }
                    let found = known.is_some();
                    let c = known.unwrap_or_else(|| self.decoy.clone());
                    let Ok(_permit) = self.hashing.acquire().await else {
                        continue;
                    };
                    // In a login storm most waited here while the first one was proven.
                    if found && self.proven_login(&id.stamp, Some(&c), password) {
                        return Ok(());
                    }
                    self.argon2_runs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let pw = password.to_string();
                    // Argon2 takes tens of milliseconds of CPU: keep it off the reactor.
                    let accepted =
                        tokio::task::spawn_blocking(move || c.verify(pw.as_bytes()).then_some(c))
                            .await
                            .ok()
                            .flatten();
                    if let (Some(c), true) = (accepted, found) {
                        if let Some(p) = ProvenPassword::new(&c, password.as_bytes()) {
                            self.proven
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(id.stamp.clone(), p);
                        }
                        return Ok(());
                    }
                }
                Source::Ldap => {
                    let Some(ldap) = &self.config.ldap else {
                        continue;
                    };
                    match ldap.verify(&id.stamp, password).await {
                        LdapVerdict::Accepted => return Ok(()),
                        LdapVerdict::Rejected(why) => {
                            tracing::debug!(user = %id.stamp, "LDAP refused: {why}");
                        }
                        LdapVerdict::Unavailable(why) => {
                            tracing::error!(
                                user = %id.stamp,
                                "LDAP unavailable, login refused: {why}"
                            );
                            outage = Some(why);
                        }
                    }
                }
            }
        }
        Err(match outage {
            Some(_) => format!("authentication failed for {authcid}: directory unavailable"),
            None => format!("authentication failed for {authcid}"),
        })
    }

    /// Counts a failed login from `peer` and returns how many there have been.
    pub fn note_failure(&self, peer: &PeerInfo) -> u64 {
        let Some(ip) = peer.addr.map(|a| a.ip()) else {
            return 0;
        };
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() >= MAX_FAILURE_PEERS && !f.contains_key(&ip) {
            f.clear();
        }
        let n = f.entry(ip).or_insert(0);
        *n += 1;
        *n
    }
}

/// The identity of a proven `authcid`, which may act as `authzid` only when both name the
/// same user.
fn authorize(authzid: String, authcid: String, realm: &str) -> Result<Identity, String> {
    let id = Identity::user(&authcid, realm);
    if !authzid.is_empty() && Identity::user(&authzid, realm) != id {
        return Err(format!("{authcid} may not act as {authzid}"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_in_and_out_of_the_realm() {
        let a = Identity::user("alice", "QPID");
        assert_eq!((a.full.as_str(), a.stamp.as_str()), ("alice@QPID", "alice"));
        assert_eq!(Identity::user("alice@QPID", "QPID"), a);
        let b = Identity::user("bob@EXAMPLE.COM", "QPID");
        assert_eq!(b.stamp, "bob@EXAMPLE.COM");
        assert!(a.owns_user_id(b"alice") && a.owns_user_id(b"alice@QPID"));
        assert!(!a.owns_user_id(b"bob") && !b.owns_user_id(b"bob"));
    }

    fn peer() -> PeerInfo {
        PeerInfo {
            addr: None,
            local: None,
            tls: false,
            transport_user: None,
        }
    }

    fn plain(user: &str, pw: &str) -> Vec<u8> {
        format!("\0{user}\0{pw}").into_bytes()
    }

    async fn login(auth: &Authenticator, mech: &str, initial: &[u8]) -> Result<Identity, String> {
        match auth.start(&peer(), mech, initial) {
            (_, Step::Done(claim)) => auth.decide(claim, &peer()).await,
            (_, Step::Failed(e)) => Err(e),
            (_, Step::Challenge(_)) => Err("challenge".into()),
        }
    }

    #[tokio::test]
    async fn plain_against_local_users() {
        let mut users = HashMap::new();
        users.insert(
            "alice".into(),
            Credentials::from_password("pw").expect("hash"),
        );
        let auth = Authenticator::new(AuthConfig::default(), users).expect("auth");
        let id = login(&auth, "PLAIN", &plain("alice", "pw"))
            .await
            .expect("in");
        assert_eq!(id.stamp, "alice");
        assert!(login(&auth, "PLAIN", &plain("alice@QPID", "pw"))
            .await
            .is_ok());
        assert!(login(&auth, "PLAIN", &plain("alice", "nope"))
            .await
            .is_err());
        assert!(login(&auth, "PLAIN", &plain("mallory", "pw"))
            .await
            .is_err());
        // Empty passwords never reach a source.
        assert!(login(&auth, "PLAIN", &plain("alice", "")).await.is_err());
        assert!(login(&auth, "PLAIN", b"garbage").await.is_err());
        // ANONYMOUS is off by default.
        assert!(login(&auth, "ANONYMOUS", b"x@y").await.is_err());
        assert!(!auth.mechanisms(&peer()).contains(&"ANONYMOUS"));
        assert!(!auth.mechanisms(&peer()).contains(&"EXTERNAL"));
    }

    fn argon2_runs(auth: &Authenticator) -> u64 {
        auth.argon2_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_logins_of_a_known_user_skip_argon2() {
        let mut users = HashMap::new();
        users.insert(
            "bob".into(),
            Credentials::from_password("pw").expect("hash"),
        );
        let auth = Arc::new(Authenticator::new(AuthConfig::default(), users).expect("auth"));
        // A storm of simultaneous logins: only those that start before the first one is
        // proven (at most one per permit) pay for argon2.
        let storm: Vec<_> = (0..20)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { login(&auth, "PLAIN", &plain("bob", "pw")).await })
            })
            .collect();
        for t in storm {
            assert!(t.await.expect("task").is_ok());
        }
        let permits = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        let after_storm = argon2_runs(&auth);
        assert!(
            (1..=permits).contains(&after_storm),
            "{after_storm} argon2 runs for 20 logins"
        );
        assert!(login(&auth, "PLAIN", &plain("bob", "pw")).await.is_ok());
        assert_eq!(
            argon2_runs(&auth),
            after_storm,
            "a proven password is not hashed again"
        );
        // A wrong password still costs a full check, and fails.
        assert!(login(&auth, "PLAIN", &plain("bob", "guess")).await.is_err());
        assert_eq!(argon2_runs(&auth), after_storm + 1);
        // A changed password drops what was proven.
        auth.set_user("bob", Credentials::from_password("new").expect("hash"));
        assert!(login(&auth, "PLAIN", &plain("bob", "pw")).await.is_err());
        assert!(login(&auth, "PLAIN", &plain("bob", "new")).await.is_ok());
        assert!(login(&auth, "PLAIN", &plain("bob", "new")).await.is_ok());
        assert_eq!(argon2_runs(&auth), after_storm + 3);
        assert!(auth.remove_user("bob"));
        assert!(login(&auth, "PLAIN", &plain("bob", "new")).await.is_err());
    }

    #[tokio::test]
    async fn scram_sha256_with_rsasl_client() {
        use rsasl::prelude::{Mechname, SASLClient, State};
        let mut users = HashMap::new();
        users.insert(
            "alice".into(),
            Credentials::from_password("pw").expect("hash"),
        );
        let auth = Authenticator::new(AuthConfig::default(), users).expect("auth");
        for (pw, ok) in [("pw", true), ("wrong", false)] {
            let cfg = SASLConfig::with_credentials(None, "alice".into(), pw.into()).expect("cfg");
            let mech = Mechname::parse(b"SCRAM-SHA-256").expect("name");
            let mut client = SASLClient::new(cfg)
                .start_suggested(&[mech])
                .expect("start");
            let mut out = Vec::new();
            client.step(None, &mut out).expect("first");
            let (mut ex, mut step) = auth.start(&peer(), "SCRAM-SHA-256", &out);
            let result = loop {
                match step {
                    Step::Challenge(c) => {
                        let mut out = Vec::new();
                        match client.step(Some(&c), &mut out) {
                            Ok(State::Running | State::Finished(_)) => step = ex.step(&out),
                            Err(e) => break Err(e.to_string()),
                        }
                    }
                    Step::Done(claim) => break auth.decide(claim, &peer()).await,
                    Step::Failed(e) => break Err(e),
                }
            };
            assert_eq!(result.is_ok(), ok, "{pw}: {result:?}");
        }
    }

    #[test]
    fn a_short_scram_final_message_fails_the_login_instead_of_panicking() {
        // Found by fuzzing: rsasl's parser sliced attributes shorter than two bytes.
        let auth = Authenticator::new(AuthConfig::default(), HashMap::new()).expect("auth");
        for last in [&b""[..], b"c", b"c=biws,r", b"c=biws,r=x,p"] {
            let (mut ex, step) = auth.start(&peer(), "SCRAM-SHA-256", b"n,,n=ktcvw,r=abcdef");
            assert!(matches!(step, Step::Challenge(_)), "{step:?}");
            match ex.step(last) {
                Step::Failed(_) => {}
                other => panic!("{last:?}: {other:?}"),
            }
        }
        for first in [&b"n,a,n=x,r=abc"[..], b"n,,n,r=abc", b"n,,n=x,r"] {
            let (_, step) = auth.start(&peer(), "SCRAM-SHA-256", first);
            assert!(matches!(step, Step::Failed(_)), "{first:?}: {step:?}");
        }
    }
}
