//! The 0-10 server: listener, per-connection drivers and the adapter onto `core`.

mod connection;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};

use crate::core::Broker;

/// Everything the server needs to know at start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Whether PLAIN credentials are checked against `users` (off: any name is accepted,
    /// as qpidd's `--auth no`).
    pub auth: bool,
    /// Local users for PLAIN: name → password.
    pub users: HashMap<String, String>,
    /// Whether ANONYMOUS is offered.
    pub allow_anonymous: bool,
    /// The SASL realm appended to user names (`guest` → `guest@QPID`).
    pub realm: String,
    /// Largest frame the broker offers in `connection.tune` (4096..=65535).
    pub max_frame_size: u16,
    /// Highest channel number offered in `connection.tune`.
    pub channel_max: u16,
    /// Largest heartbeat interval (seconds) the broker accepts; 0 disables heartbeats.
    pub heartbeat_max: u16,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5672)),
            auth: true,
            users: HashMap::new(),
            allow_anonymous: true,
            realm: "QPID".into(),
            max_frame_size: 0xffff,
            channel_max: 0xfffe,
            heartbeat_max: 120,
            max_connections: 1024,
        }
    }
}

/// What every connection shares.
pub(crate) struct ServerContext {
    pub broker: Arc<Broker>,
    pub config: ServerConfig,
    /// Identifies this broker to federation peers (`qpid.federation_tag`).
    pub federation_tag: String,
}

/// A bound, not yet running broker server.
pub struct Server {
    listener: tokio::net::TcpListener,
    ctx: Arc<ServerContext>,
}

impl Server {
    /// Binds the listener and creates an empty broker.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        Self::bind_with(config, Arc::new(Broker::new())).await
    }

    /// Binds the listener in front of an existing broker.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind_with(config: ServerConfig, broker: Arc<Broker>) -> io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let ctx = Arc::new(ServerContext {
            broker,
            federation_tag: random_tag(),
            config,
        });
        Ok(Server { listener, ctx })
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
        let (stop_tx, stop_rx) = watch::channel(false);
        let limit = Arc::new(Semaphore::new(self.ctx.config.max_connections.max(1)));
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
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%peer, "connection accepted");
                    let ctx = self.ctx.clone();
                    let stop = stop_rx.clone();
                    tasks.spawn(async move {
                        connection::serve(stream, ctx, stop).await;
                        drop(permit);
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
