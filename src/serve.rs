//! `clacks serve`: configure, bind, announce the address, run until SIGINT or SIGTERM.

use std::io::Write;

use anyhow::Context;
use std::sync::Arc;

use clacks_broker::auth::credentials::{random_password, Credentials};
use clacks_broker::auth::Source;
use clacks_broker::core::Broker;
use clacks_broker::server::{tls, Server, ServerConfig, TlsListener};
use clacks_storage::{GroupCommit, Recovered, SledStore, Store, StoreOp, UserRecord};

use crate::cli::ServeArgs;
use crate::config;

/// Runs the broker until a shutdown signal.
///
/// # Errors
/// Bad configuration, an address that cannot be bound, a fatal listener error.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?,
        ),
        None => None,
    };
    let serve = config::serve_config(file.as_deref(), |k| std::env::var(k).ok(), &args)?;
    let mut config = serve.server;
    // Before anyone can learn our pid from the address line: SIGHUP must not kill us.
    #[cfg(unix)]
    let hangup_signal = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup()).context("cannot watch SIGHUP")?
    };
    #[cfg(not(unix))]
    let hangup_signal = ();
    let mut out = std::io::stdout().lock();
    if let Some(plan) = &serve.tls {
        let (cert, key) = match &plan.files {
            Some(files) => files.clone(),
            None => {
                let made = tls::ensure_self_signed(&serve.data_dir).map_err(anyhow::Error::msg)?;
                if made.created {
                    writeln!(
                        out,
                        "made a self-signed TLS certificate {}",
                        made.cert.display()
                    )?;
                }
                (made.cert, made.key)
            }
        };
        let leaf = tls::read_certificates(&cert).map_err(anyhow::Error::msg)?;
        if let Some(first) = leaf.first() {
            writeln!(
                out,
                "TLS certificate SHA-256 fingerprint {}",
                tls::fingerprint(first)
            )?;
        }
        config.tls = Some(TlsListener {
            listen: plan.listen,
            config: tls::server_config(&cert, &key, plan.client_ca.as_deref())
                .map_err(anyhow::Error::msg)?,
        });
    }
    let broker = open_broker(&serve.data_dir, &mut config, &mut out)?;
    let server = Server::bind_with(config, broker).await?;
    let addr = server.local_addr()?;
    // Tests and scripts read these lines to learn the ports.
    if let Some(tls_addr) = server.local_tls_addr()? {
        writeln!(out, "listening (amqps) on {tls_addr}")?;
    }
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    tracing::info!(%addr, "broker started");
    let broker = server.broker();
    let hangup = tokio::spawn(reload_on_hangup(server.acl_reloader(), hangup_signal));
    let agent = start_agent(&server, &serve.agent)?;
    // The agent goes first, so that it can still remove its queues.
    let shutdown = async move {
        shutdown_signal().await;
        if let Some((stop, task)) = agent {
            let _ = stop.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    };
    server.run(shutdown).await?;
    hangup.abort();
    if let Some(journal) = broker.journal() {
        let s = journal.stats();
        tracing::info!(
            commits = s.commits,
            batches = s.batches,
            largest = s.largest,
            mean = format!("{:.1}", s.batches as f64 / s.commits.max(1) as f64),
            "group commit: store syncs and the command batches they covered"
        );
    }
    tracing::info!("broker stopped");
    Ok(())
}

/// Opens the store in `dir`, takes its users into `config` (making the first admin when
/// nobody could log in otherwise) and rebuilds the broker from it.
fn open_broker(
    dir: &std::path::Path,
    config: &mut ServerConfig,
    out: &mut impl Write,
) -> anyhow::Result<Arc<Broker>> {
    let store = SledStore::open(dir)
        .with_context(|| format!("cannot open the data directory {}", dir.display()))?;
    let mut recovered = store
        .recover()
        .with_context(|| format!("cannot read the data directory {}", dir.display()))?;
    take_users(&store, &mut recovered, config, out)?;
    let (queues, messages) = (recovered.queues.len(), recovered.messages.len());
    let journal = GroupCommit::start(Arc::new(store)).context("cannot start the store writer")?;
    let broker = Broker::recover(Arc::new(journal), recovered)
        .with_context(|| format!("cannot recover from {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), queues, messages, "durable state recovered");
    Ok(Arc::new(broker))
}

/// Moves the stored users into the server's configuration. On a first start with no users
/// anywhere (and no directory to ask), creates `admin` with a random password and prints it
/// once: there is no built-in guest.
fn take_users(
    store: &SledStore,
    recovered: &mut Recovered,
    config: &mut ServerConfig,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for user in std::mem::take(&mut recovered.users) {
        match Credentials::decode(&user.credentials) {
            Ok(c) => {
                config.stored_users.insert(user.name, c);
            }
            Err(e) => tracing::error!(user = %user.name, "stored user skipped: {e}"),
        }
    }
    let nobody = config.stored_users.is_empty()
        && config.users.is_empty()
        && !config.auth_sources.contains(&Source::Ldap);
    if config.auth && nobody {
        let password = random_password(20)?;
        let credentials = Credentials::from_password(&password)?;
        store.apply(&[StoreOp::PutUser(UserRecord {
            name: "admin".into(),
            credentials: credentials.encode(),
        })])?;
        config.stored_users.insert("admin".into(), credentials);
        writeln!(
            out,
            "first start: created user admin with password {password}\n\
             (shown only this once; change it with: clacks user passwd admin)"
        )?;
    }
    Ok(())
}

/// The identity the in-process agent logs in as (EXTERNAL over the internal connector).
const AGENT_IDENTITY: &str = "clacks-agent";

/// A stop switch and the task of the running agent.
type AgentHandle = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// Starts the Clacks agent inside the broker, unless the config turns it off.
fn start_agent(
    server: &Server,
    settings: &config::AgentSettings,
) -> anyhow::Result<Option<AgentHandle>> {
    use clacks_agent::acl::AgentAcl;
    use clacks_agent::state::{AgentConfig, AgentState};
    use clacks_broker::client::{ConnectOptions, Connection};

    if settings.enabled == Some(false) {
        return Ok(None);
    }
    let domain = settings
        .domain
        .clone()
        .unwrap_or_else(|| clacks_agent::names::DEFAULT_DOMAIN.to_string());
    if !clacks_agent::names::valid_domain(&domain) {
        anyhow::bail!("agent domain {domain:?} is not a dotted ASCII name");
    }
    let node = settings.node.clone().unwrap_or_else(host_name);
    let admins = settings
        .admins
        .clone()
        .unwrap_or_else(|| vec!["admin".to_string()]);
    let acl = match &settings.acl_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the agent ACL {path}"))?;
            AgentAcl::parse(&text, &domain, &admins)?
        }
        None => AgentAcl::admins_only(&admins),
    };
    let state = Arc::new(AgentState::new(
        AgentConfig {
            domain: domain.clone(),
            node,
        },
        vec![
            Arc::new(clacks_agent::core_commands::Core),
            Arc::new(clacks_agent::plugins::broker::BrokerPlugin::new(
                server.admin(),
            )),
        ],
        acl,
    ));
    let defaults = clacks_agent::state::PresenceTimers::default();
    let ms = |v: Option<u64>, d: std::time::Duration| {
        v.map_or(d, |ms| std::time::Duration::from_millis(ms.max(1)))
    };
    let timers = clacks_agent::state::PresenceTimers {
        status_interval: ms(settings.status_interval_ms, defaults.status_interval),
        node_timeout: ms(settings.node_timeout_ms, defaults.node_timeout),
    };
    let stream = server.internal_connector().connect(AGENT_IDENTITY);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut opts = ConnectOptions::new("in-process", 0);
        opts.mechanism = Some("EXTERNAL".into());
        let conn = match Connection::open_on(stream, opts).await {
            Ok(c) => c,
            Err(e) => return tracing::error!("the agent cannot log in: {e}"),
        };
        let stop = async {
            let _ = stopped.await;
        };
        if let Err(e) = clacks_agent::service::serve(conn, state, timers, stop).await {
            tracing::error!("the agent stopped: {e}");
        }
    });
    tracing::info!(%domain, "agent started");
    Ok(Some((stop, task)))
}

/// This machine's host name (the default node id).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Reloads the ACL file whenever the process gets SIGHUP.
#[cfg(unix)]
async fn reload_on_hangup(
    reloader: clacks_broker::server::AclReloader,
    mut hup: tokio::signal::unix::Signal,
) {
    {
        while hup.recv().await.is_some() {
            match reloader.reload() {
                Ok(rules) => tracing::info!(rules, "ACL reloaded"),
                Err(e) => tracing::error!("ACL not reloaded, the old rules stay: {e}"),
            }
        }
    }
}

/// Without SIGHUP there is nothing to reload on.
#[cfg(not(unix))]
async fn reload_on_hangup(_reloader: clacks_broker::server::AclReloader, _hup: ()) {}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}
