//! `clacks serve`: configure, bind, announce the address, run until SIGINT or SIGTERM.

use std::io::Write;

use anyhow::Context;
use std::sync::Arc;

use clacks_broker::core::Broker;
use clacks_broker::server::Server;
use clacks_storage::{GroupCommit, SledStore, Store};

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
    let broker = open_broker(&serve.data_dir)?;
    let config = serve.server;
    let listen = config.listen;
    let server = Server::bind_with(config, broker)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = server.local_addr()?;
    // Tests and scripts read this line to learn the port.
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    tracing::info!(%addr, "broker started");
    let broker = server.broker();
    server.run(shutdown_signal()).await?;
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

/// Opens the store in `dir` and rebuilds the broker from it.
fn open_broker(dir: &std::path::Path) -> anyhow::Result<Arc<Broker>> {
    let store = SledStore::open(dir)
        .with_context(|| format!("cannot open the data directory {}", dir.display()))?;
    let recovered = store
        .recover()
        .with_context(|| format!("cannot read the data directory {}", dir.display()))?;
    let (queues, messages) = (recovered.queues.len(), recovered.messages.len());
    let journal = GroupCommit::start(Arc::new(store)).context("cannot start the store writer")?;
    let broker = Broker::recover(Arc::new(journal), recovered)
        .with_context(|| format!("cannot recover from {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), queues, messages, "durable state recovered");
    Ok(Arc::new(broker))
}

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
