//! The HTTP side of `clacks serve`, on one listener beside the AMQP ones (plain or TLS
//! with the broker's certificate): the Clacks JSON-RPC gateway at `/rpc`, the status page
//! at `/`, `/metrics` in the Prometheus text format, `/healthz` and `/readyz`.

mod listener;
mod metrics;
mod rpc;
mod sessions;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use clacks_broker::auth::Authenticator;
use clacks_broker::core::Broker;
use clacks_broker::federation::Federation;
use clacks_broker::server::Admin;
use clacks_storage::Refusal;

pub use listener::{PeerAddr, PlainListener, TlsListener};
pub use sessions::Sessions;

/// What the handlers read.
pub struct Web {
    /// The broker model.
    pub broker: Arc<Broker>,
    /// Connections.
    pub admin: Admin,
    /// Federation links.
    pub federation: Federation,
    /// The agent in this process, if it runs.
    pub agent: Option<Arc<clacks_agent::state::AgentState>>,
    /// When the broker started, in seconds since the epoch.
    pub started: f64,
    /// Checks gateway logins as AMQP ones are checked.
    pub auth: Arc<Authenticator>,
    /// The gateway's logged-in users.
    pub sessions: Sessions,
    /// Who may see the status page (the agent's admins).
    pub admins: Vec<String>,
    /// Whether the listener is TLS (cookies are marked Secure then).
    pub secure: bool,
    /// Gateway logins checked at once.
    pub logins: tokio::sync::Semaphore,
}

/// Gateway logins checked at once; more are told to come back.
pub const CONCURRENT_LOGINS: usize = 4;
/// The largest request body taken (JSON-RPC requests are small).
const MAX_BODY: usize = 64 << 10;

/// The routes.
fn app(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(status::page))
        .route("/status.js", get(status::script))
        .route("/status.css", get(status::style))
        .route("/status.json", get(status::status))
        .route("/rpc", post(rpc::rpc).options(rpc::options))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(web)
}

/// Serves the HTTP side on `listener` (over TLS with `tls`) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    web: Arc<Web>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(web).into_make_service_with_connect_info::<PeerAddr>();
    match tls {
        None => {
            axum::serve(PlainListener::new(listener), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            axum::serve(TlsListener::new(listener, config), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Ready while the store takes durable work; 503 with the reason while it does not.
async fn readyz(State(web): State<Arc<Web>>) -> impl IntoResponse {
    match web.broker.journal().and_then(|j| j.refusal()) {
        Some(Refusal::Failing(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store writes fail: {e}\n"),
        ),
        _ => (StatusCode::OK, "ready\n".to_string()),
    }
}

/// The listener's address when the HTTP side is on.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))
}
