//! `clacks serve`: configure, bind, announce the address, run until SIGINT or SIGTERM.

use std::io::Write;

use anyhow::Context;
use std::sync::Arc;

use clacks_broker::auth::credentials::{random_password, Credentials};
use clacks_broker::auth::Source;
use clacks_broker::core::Broker;
use clacks_broker::federation::{Federation, FederationSettings as FederationTimings};
use clacks_broker::management::{LogControl, Management, ManagementConfig};
use clacks_broker::server::{tls, Server, ServerConfig, TlsListener};
use clacks_storage::{
    FederationRecord, GroupCommit, Recovered, SledStore, Store, StoreOp, UserRecord,
};
use sd_notify::NotifyState;

use crate::agent_run::{AclReload, Agent};
use crate::cli::ServeArgs;
use crate::config;

/// The process's log filter as management sees it: where it started, and how to change it.
pub struct LogLevel {
    /// The filter at start.
    pub initial: String,
    /// Replaces the filter; the error says why a level is refused.
    pub set: Arc<clacks_broker::management::SetLogLevel>,
}

/// A log filter from qpidd's level syntax (`info+`, `debug+:Broker`, `notice`) or a
/// tracing filter directive (`clacks_broker=debug`).
///
/// # Errors
/// A level neither syntax knows.
pub fn log_filter(spec: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let first = spec
        .split([',', ' '])
        .find(|w| !w.is_empty())
        .unwrap_or("info");
    let level = first
        .split(':')
        .next()
        .unwrap_or(first)
        .trim_end_matches('+');
    let directive = match level {
        "trace" | "debug" | "info" | "warn" | "error" => level.to_string(),
        "notice" => "info".into(),
        "warning" => "warn".into(),
        "critical" => "error".into(),
        _ => spec.to_string(),
    };
    tracing_subscriber::EnvFilter::try_new(&directive).map_err(|e| format!("{spec}: {e}"))
}

/// Descriptors beyond the connections': the store, the listeners, logs, federation links.
const SPARE_FILES: u64 = 256;

/// Raises the soft open-file limit to the hard one, as every connection holds a socket,
/// and says so when even the hard limit cannot cover the connection limits: past it,
/// accepts fail with `Too many open files` instead of a clean refusal at login.
fn raise_open_file_limit(connections: usize) {
    #[cfg(unix)]
    {
        use rlimit::Resource;
        let wanted = u64::try_from(connections)
            .unwrap_or(u64::MAX)
            .saturating_add(SPARE_FILES);
        let (soft, hard) = match rlimit::getrlimit(Resource::NOFILE) {
            Ok(limits) => limits,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit");
                return;
            }
        };
        let raised = if soft < hard {
            match rlimit::setrlimit(Resource::NOFILE, hard, hard) {
                Ok(()) => {
                    tracing::info!(from = soft, to = hard, "raised the open-file limit");
                    hard
                }
                Err(e) => {
                    tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                    soft
                }
            }
        } else {
            soft
        };
        if raised < wanted {
            tracing::warn!(
                limit = raised,
                wanted,
                "the open-file limit cannot cover max_connections and max_pending_connections; \
                 raise it (ulimit -n, LimitNOFILE=) or lower them"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = connections;
}

/// The HTTPS server config: the broker's certificate, or the self-signed one in `data_dir`.
fn https_config(
    files: Option<(std::path::PathBuf, std::path::PathBuf)>,
    data_dir: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (cert, key) = match files {
        Some(files) => files,
        None => {
            let made = tls::ensure_self_signed(data_dir).map_err(anyhow::Error::msg)?;
            (made.cert, made.key)
        }
    };
    let config = tls::server_config(&cert, &key, None).map_err(anyhow::Error::msg)?;
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Runs the broker until a shutdown signal.
///
/// # Errors
/// Bad configuration, an address that cannot be bound, a fatal listener error.
pub async fn run(args: ServeArgs, log: LogLevel) -> anyhow::Result<()> {
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
    raise_open_file_limit(config.max_connections + config.max_pending_connections);
    let (broker, stored_links) =
        open_broker(&serve.data_dir, serve.min_free_disk, &mut config, &mut out)?;
    let server = Server::bind_with(config, broker).await?;
    let addr = server.local_addr()?;
    let http_tls = match serve.http.as_ref().and_then(|h| h.tls.clone()) {
        Some(files) => Some(https_config(files, &serve.data_dir)?),
        None => None,
    };
    let http = match &serve.http {
        Some(h) if h.named => Some(crate::web::bind(h.listen).await?),
        // The default port may be someone else's: the broker starts without HTTP then.
        Some(h) => match crate::web::bind(h.listen).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("no HTTP listener: {e:#}; set [http] listen to choose a port");
                None
            }
        },
        None => None,
    };
    // Tests and scripts read these lines to learn the ports.
    if let Some(tls_addr) = server.local_tls_addr()? {
        writeln!(out, "listening (amqps) on {tls_addr}")?;
    }
    if let Some(l) = &http {
        let scheme = if http_tls.is_some() { "https" } else { "http" };
        let at = l.local_addr()?;
        if http_tls.is_none() && !at.ip().is_loopback() {
            tracing::warn!(
                %at,
                "the gateway takes passwords over plain HTTP on a network address; \
                 set [http] tls = true"
            );
        }
        writeln!(out, "listening ({scheme}) on {at}")?;
    }
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    tracing::info!(%addr, "broker started");
    let broker = server.broker();
    let federation = start_federation(&server, &serve.federation);
    federation.restore(stored_links);
    let management = serve.management.clone().map(|m| {
        Management::start(
            server.admin(),
            Some(federation.clone()),
            ManagementConfig {
                port: addr.port(),
                data_dir: Some(serve.data_dir.display().to_string()),
                log_level: log.initial,
                log_control: Some(LogControl(log.set)),
                ..m
            },
        )
    });
    let (agent, agent_acl, agent_state) = match start_agent(&server, &serve.agent, &federation)? {
        Some((handle, acl, state)) => (Some(handle), Some(acl), Some(state)),
        None => (None, None, None),
    };
    let (web_stop, web_stopped) = tokio::sync::oneshot::channel::<()>();
    let web = match (http, &serve.http) {
        (Some(listener), Some(plan)) => {
            let web = Arc::new(crate::web::Web {
                broker: server.broker(),
                admin: server.admin(),
                federation: federation.clone(),
                agent: agent_state,
                started: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
                auth: server.authenticator(),
                sessions: crate::web::Sessions::new(
                    plan.cookie_secret.as_deref(),
                    plan.cookie_lifetime,
                )?,
                admins: crate::agent_run::admins(&serve.agent),
                secure: http_tls.is_some(),
                logins: tokio::sync::Semaphore::new(crate::web::CONCURRENT_LOGINS),
            });
            Some(tokio::spawn(async move {
                let stopped = async {
                    let _ = web_stopped.await;
                };
                if let Err(e) = crate::web::serve(listener, http_tls, web, stopped).await {
                    tracing::error!("HTTP listener failed: {e}");
                }
            }))
        }
        _ => None,
    };
    let hangup = tokio::spawn(reload_on_hangup(
        server.acl_reloader(),
        agent_acl,
        hangup_signal,
    ));
    // Under systemd (Type=notify) the unit is started once all of the above is.
    let status = format!("listening on {addr}");
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        tracing::warn!("cannot tell the service manager we are ready: {e}");
    }
    // The agent goes first, so that it can still remove its queues.
    let shutdown = async move {
        shutdown_signal().await;
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
        federation.stop_all();
        if let Some((stop, task)) = agent {
            let _ = stop.send(true);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
    };
    server.run(shutdown).await?;
    let _ = web_stop.send(());
    if let Some(task) = web {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    if let Some(m) = management {
        m.stop().await;
    }
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
    min_free_disk: u64,
    config: &mut ServerConfig,
    out: &mut impl Write,
) -> anyhow::Result<(Arc<Broker>, Vec<FederationRecord>)> {
    let started = std::time::Instant::now();
    let store = SledStore::open(dir)
        .with_context(|| format!("cannot open the data directory {}", dir.display()))?;
    let mut recovered = store
        .recover()
        .with_context(|| format!("cannot read the data directory {}", dir.display()))?;
    take_users(&store, &mut recovered, config, out)?;
    let federation = std::mem::take(&mut recovered.federation);
    let (queues, messages) = (recovered.queues.len(), recovered.messages.len());
    let read = started.elapsed();
    let journal = GroupCommit::start(Arc::new(store)).context("cannot start the store writer")?;
    journal.set_min_free(min_free_disk);
    let broker = Broker::recover(Arc::new(journal), recovered)
        .with_context(|| format!("cannot recover from {}", dir.display()))?;
    tracing::info!(
        dir = %dir.display(),
        queues,
        messages,
        read_ms = read.as_millis(),
        rebuild_ms = (started.elapsed() - read).as_millis(),
        "durable state recovered"
    );
    Ok((Arc::new(broker), federation))
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

/// The broker's federation links, empty at start (they are added over the bus).
fn start_federation(server: &Server, settings: &config::FederationSettings) -> Federation {
    let defaults = FederationTimings::default();
    let ms = crate::agent_run::millis;
    Federation::new(
        server.internal_connector(),
        server.federation_tag(),
        FederationTimings {
            retry_min: ms(settings.retry_min_ms, defaults.retry_min),
            retry_max: ms(settings.retry_max_ms, defaults.retry_max),
            window: settings.window.unwrap_or(defaults.window).max(1),
            heartbeat: settings.heartbeat_s.unwrap_or(defaults.heartbeat),
        },
        server.broker().journal().cloned(),
    )
}

/// The running agent: its stop switch and its task.
type AgentHandle = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
);

/// Starts the Clacks agent inside the broker, unless the config turns it off; it logs in
/// over the in-process connector and reconnects the same way if that connection fails.
fn start_agent(
    server: &Server,
    settings: &config::AgentSettings,
    federation: &Federation,
) -> anyhow::Result<Option<(AgentHandle, AclReload, Arc<clacks_agent::state::AgentState>)>> {
    use clacks_broker::client::{ConnectOptions, Connection};

    if settings.enabled == Some(false) {
        return Ok(None);
    }
    let agent = Agent::new(
        settings,
        Some(AGENT_IDENTITY),
        vec![
            Arc::new(clacks_agent::plugins::broker::BrokerPlugin::new(
                server.admin(),
            )),
            Arc::new(clacks_agent::plugins::federation::FederationPlugin::new(
                federation.clone(),
            )),
        ],
    )?;
    let reload = agent.acl_reload();
    let state = agent.state.clone();
    let domain = agent.state.config.domain.clone();
    let connector = server.internal_connector();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let connect = || {
            let stream = connector.connect(AGENT_IDENTITY);
            async move {
                let mut opts = ConnectOptions::new("in-process", 0);
                opts.mechanism = Some("EXTERNAL".into());
                Connection::open_on(stream, opts).await
            }
        };
        let ended = agent.run(connect, stopped).await;
        tracing::info!(?ended, "agent stopped");
    });
    tracing::info!(%domain, "agent started");
    Ok(Some(((stop, task), reload, state)))
}

/// Reloads the ACL file, and the agent's, whenever the process gets SIGHUP.
#[cfg(unix)]
async fn reload_on_hangup(
    reloader: clacks_broker::server::AclReloader,
    agent: Option<AclReload>,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        if reloader.configured() {
            match reloader.reload() {
                Ok(rules) => tracing::info!(rules, "ACL reloaded"),
                Err(e) => tracing::error!("ACL not reloaded, the old rules stay: {e}"),
            }
        } else if agent.is_none() {
            tracing::warn!("SIGHUP: no ACL file configured, nothing to reload");
        }
        if let Some(agent) = &agent {
            agent.reload_logged();
        }
    }
}

/// Without SIGHUP there is nothing to reload on.
#[cfg(not(unix))]
async fn reload_on_hangup(
    _reloader: clacks_broker::server::AclReloader,
    _agent: Option<AclReload>,
    _hup: (),
) {
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
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
