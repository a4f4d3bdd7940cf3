//! `clacks serve`: configure, bind, announce the address, run until SIGINT or SIGTERM.

use std::io::Write;

use anyhow::Context;
use clacks_broker::server::Server;

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
    let config = config::server_config(file.as_deref(), |k| std::env::var(k).ok(), &args)?;
    let listen = config.listen;
    let server = Server::bind(config)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = server.local_addr()?;
    // Tests and scripts read this line to learn the port.
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    drop(out);
    tracing::info!(%addr, "broker started");
    server.run(shutdown_signal()).await?;
    tracing::info!("broker stopped");
    Ok(())
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
