//! The status page at `/` (plain HTML, CSS and JavaScript built into the binary) and
//! `/status.json`, the figures it polls: broker, queues, exchanges and bindings,
//! connections, federation links and routes, and the Clacks nodes. For admins only.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use clacks_broker::core::snapshot::Parts;
use clacks_broker::federation::{LinkState, RouteSource};
use serde_json::{json, Value};

use super::{rpc, Web};

const PAGE: &str = include_str!("assets/status.html");
const SCRIPT: &str = include_str!("assets/status.js");
const STYLE: &str = include_str!("assets/status.css");

/// The page's own files only, never inside another site's frame, types as declared.
const HARDENING: [(header::HeaderName, &str); 3] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; frame-ancestors 'none'; form-action 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    for (name, value) in HARDENING {
        r.headers_mut()
            .insert(name, header::HeaderValue::from_static(value));
    }
    r
}

/// `GET /`: the page; it logs in through `/rpc` and then polls `/status.json`.
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /status.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /status.css`.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// `GET /status.json`: 401 without a session, 403 for a user who is not an admin.
pub(super) async fn status(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let Some((_, user)) = rpc::session(&web, &headers) else {
        return (StatusCode::UNAUTHORIZED, "not logged in\n").into_response();
    };
    if !web.admins.contains(&user) {
        return (StatusCode::FORBIDDEN, "for admins only\n").into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        figures(&web, &user).to_string(),
    )
        .into_response()
}

/// Everything the page shows, from one snapshot of the model.
pub fn figures(web: &Web, user: &str) -> Value {
    let snap = web.broker.snapshot(Parts {
        queues: true,
        exchanges: true,
        bindings: true,
        ..Parts::default()
    });
    let (queued, limit) = web.broker.queued_memory();
    let connections = web.admin.connections();
    let store = match web.broker.journal().and_then(|j| j.refusal()) {
        None => "ok".to_string(),
        Some(refusal) => refusal.to_string(),
    };
    let mut bindings: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for b in &snap.bindings {
        bindings
            .entry(b.exchange.as_str())
            .or_default()
            .push(json!({ "queue": b.queue, "key": b.key }));
    }
    let queues: Vec<Value> = snap
        .queues
        .iter()
        .map(|q| {
            json!({
                "name": q.name,
                "durable": q.durable,
                "depth": q.depth,
                "bytes": q.bytes,
                "unacked": q.unacked,
                "consumers": q.consumers,
                "enqueued": q.stats.enqueues.msgs,
                "dequeued": q.stats.dequeues.msgs,
            })
        })
        .collect();
    let exchanges: Vec<Value> = snap
        .exchanges
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "type": e.kind,
                "durable": e.durable,
                "bindings": bindings.remove(e.name.as_str()).unwrap_or_default(),
            })
        })
        .collect();
    let connections: Vec<Value> = connections
        .iter()
        .map(|c| {
            json!({
                "user": c.user,
                "address": c.addr.map_or_else(|| "in process".to_string(), |a| a.to_string()),
                "tls": c.tls,
                "sessions": c.sessions,
                "since": c.since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            })
        })
        .collect();
    let links: Vec<Value> = web
        .federation
        .list_links()
        .iter()
        .map(|l| {
            let (state, error) = match &l.state {
                LinkState::Connecting => ("connecting", None),
                LinkState::Operational => ("operational", None),
                LinkState::Failed(why) => ("failed", Some(why.clone())),
            };
            json!({
                "name": l.spec.name,
                "url": without_password(&l.spec.url),
                "durable": l.spec.durable,
                "state": state,
                "error": error,
            })
        })
        .collect();
    let routes: Vec<Value> = web
        .federation
        .list_routes()
        .iter()
        .map(|r| {
            let source = match &r.spec.source {
                RouteSource::Exchange { exchange, key, .. } => format!("exchange {exchange} {key}"),
                RouteSource::Queue { queue } => format!("queue {queue}"),
            };
            json!({
                "name": r.spec.name,
                "link": r.spec.link,
                "direction": if r.spec.push { "push" } else { "pull" },
                "source": source,
                "dest": r.spec.dest,
                "forwarded": r.forwarded,
                "error": r.last_error,
            })
        })
        .collect();
    let nodes: Vec<Value> = match &web.agent {
        None => Vec::new(),
        Some(agent) => {
            let loads = agent.loads().clone();
            let statuses = agent.statuses();
            let mut nodes: Vec<Value> = loads
                .iter()
                .map(|(node, load)| {
                    let s = statuses.get(node);
                    json!({
                        "node": node,
                        "load": load,
                        "latency": s.map(|s| s.latency),
                        "workers": s.map(|s| s.workers),
                        "received": s.map(|s| s.received),
                    })
                })
                .collect();
            nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
            nodes
        }
    };
    json!({
        "user": user,
        "broker": {
            "version": env!("CARGO_PKG_VERSION"),
            "started": web.started,
            "rss_bytes": resident_bytes(),
            "queued_bytes": queued,
            "queued_limit_bytes": limit,
            "connections": connections.len(),
            "store": store,
        },
        "queues": queues,
        "exchanges": exchanges,
        "connections": connections,
        "links": links,
        "routes": routes,
        "nodes": nodes,
    })
}

/// A link URL fit to show: its password left out (with or without a scheme before it).
fn without_password(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}{user}@{host}")
        }
        None => url.to_string(),
    }
}

/// The process's resident memory, from /proc (Linux); `None` elsewhere.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn link_passwords_are_not_shown() {
        assert_eq!(
            without_password("amqp://fed:secret@hub:5672"),
            "amqp://fed@hub:5672"
        );
        assert_eq!(without_password("amqp://hub:5672"), "amqp://hub:5672");
        assert_eq!(without_password("hub:5672"), "hub:5672");
        assert_eq!(without_password("fed:secret@hub:5672"), "fed@hub:5672");
        assert_eq!(without_password("a:b:c@d@hub"), "a@hub");
    }
}
