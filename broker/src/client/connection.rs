//! `Connection`: open (TCP or any byte stream), attach sessions, close.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::driver::{self, Request, Shared};
use super::error::ClientError;
use super::machine::Negotiated;
use super::message::random_uuid;
use super::options::ConnectOptions;
use super::session::Session;

/// An open 0-10 connection to a broker.
///
/// A handle onto the driver task that owns the socket. Sessions keep the connection alive:
/// it closes when [`Connection::close`] is called, or when this handle and every session
/// and subscription made from it are dropped.
pub struct Connection {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    negotiated: Negotiated,
    driver: JoinHandle<()>,
}

impl Connection {
    /// Connects over TCP and negotiates (`connection.start` … `open-ok`).
    ///
    /// # Errors
    /// Connect failures, [`ClientError::Timeout`] past `opts.connect_timeout`,
    /// [`ClientError::Auth`] when the login is refused, [`ClientError::Version`] when the
    /// peer does not speak 0-10.
    pub async fn open(opts: ConnectOptions) -> Result<Connection, ClientError> {
        let addr = (opts.host.clone(), opts.port);
        let stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connecting"))??;
        stream.set_nodelay(true)?;
        let Some(tls) = opts.tls.clone() else {
            return Self::open_on(stream, opts).await;
        };
        let config = super::tls::client_config(&tls)?;
        let name = tls.server_name.as_deref().unwrap_or(&opts.host);
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
            .map_err(|e| ClientError::InvalidArgument(format!("server name {name}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream =
            tokio::time::timeout(opts.connect_timeout, connector.connect(server_name, stream))
                .await
                .map_err(|_| ClientError::Timeout("TLS handshake"))?
                .map_err(|e| ClientError::Tls(e.to_string()))?;
        Self::open_on(stream, opts).await
    }

    /// Negotiates over an already connected byte stream (a TLS stream, or an in-memory
    /// duplex to an in-process broker). `opts.host` and `opts.port` are not used.
    ///
    /// # Errors
    /// As [`Connection::open`], without the connect step.
    pub async fn open_on<S>(stream: S, opts: ConnectOptions) -> Result<Connection, ClientError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let limit = opts.connect_timeout;
        let driver::Spawned {
            tx,
            opened,
            shared,
            handle: driver,
        } = driver::spawn(stream, opts);
        let negotiated = match tokio::time::timeout(limit, opened).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(shared.error()),
            Err(_) => {
                driver.abort();
                return Err(ClientError::Timeout("negotiating the connection"));
            }
        };
        Ok(Connection {
            tx,
            shared,
            negotiated,
            driver,
        })
    }

    /// What was negotiated: frame size, heartbeat, the broker's properties.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// Whether the connection has ended (closed by either side, or lost).
    pub fn is_closed(&self) -> bool {
        self.shared.is_ended()
    }

    /// Waits until the connection ends and returns why: [`ClientError::Closed`] after a
    /// close this side asked for, otherwise the broker's close, an I/O error or a
    /// heartbeat timeout. For supervisors that reconnect (federation links).
    pub async fn closed(&self) -> ClientError {
        self.shared.wait_ended().await
    }

    /// Attaches a session called `name` and waits for `session.attached`.
    ///
    /// Names are per user on the broker; attaching a name in use elsewhere fails with
    /// [`ClientError::Detached`] (session-busy).
    ///
    /// # Errors
    /// When the connection is closed or the broker refuses the name.
    pub async fn session(&self, name: &str) -> Result<Session, ClientError> {
        let (reply, rx) = oneshot::channel();
        let request = Request::Attach {
            name: Bytes::copy_from_slice(name.as_bytes()),
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| self.shared.error())?;
        let channel = rx.await.map_err(|_| self.shared.error())??;
        Ok(Session::new(
            channel,
            name.to_string(),
            self.tx.clone(),
            self.shared.clone(),
        ))
    }

    /// Attaches a session with a fresh random (UUID) name, as qpid clients do.
    ///
    /// # Errors
    /// As [`Connection::session`].
    pub async fn session_unique(&self) -> Result<Session, ClientError> {
        self.session(&random_uuid().to_string()).await
    }

    /// Closes the connection (`connection.close` 200, waits for `close-ok`). Sessions and
    /// subscriptions still open fail with [`ClientError::Closed`].
    ///
    /// # Errors
    /// When the connection had already failed, that failure.
    pub async fn close(self) -> Result<(), ClientError> {
        let (reply, rx) = oneshot::channel();
        let result = match self.tx.send(Request::Close { reply }).await {
            Ok(()) => rx.await.unwrap_or_else(|_| ended(&self.shared)),
            Err(_) => ended(&self.shared),
        };
        let _ = self.driver.await;
        result
    }
}

/// The outcome of a close that found the driver gone: fine if it ended normally.
fn ended(shared: &Shared) -> Result<(), ClientError> {
    match shared.error() {
        ClientError::Closed => Ok(()),
        e => Err(e),
    }
}
