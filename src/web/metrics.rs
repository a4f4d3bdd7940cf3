//! `/metrics`: the broker's figures in the Prometheus text format, named after
//! Prometheus' naming guide (units in the name, `_total` on counters).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use clacks_broker::core::snapshot::Parts;
use clacks_broker::federation::LinkState;

use super::Web;

/// `/metrics` in the Prometheus text format.
pub(super) async fn metrics(State(web): State<Arc<Web>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&web),
    )
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family: its help, its type and its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Every metric, from one snapshot of the model.
pub fn render(web: &Web) -> String {
    let snap = web.broker.snapshot(Parts {
        queues: true,
        ..Parts::default()
    });
    let mut out = String::new();
    let one = |v: f64| vec![(String::new(), v)];
    family(
        &mut out,
        "clacks_build_info",
        "gauge",
        "The running version.",
        &[(
            format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            1.0,
        )],
    );
    family(
        &mut out,
        "clacks_start_time_seconds",
        "gauge",
        "When the broker started, in seconds since the epoch.",
        &one(web.started),
    );
    family(
        &mut out,
        "clacks_connections",
        "gauge",
        "Connections logged in.",
        &one(web.admin.connections().len() as f64),
    );
    let per_queue = |f: &dyn Fn(&clacks_broker::core::snapshot::QueueView) -> f64| {
        snap.queues
            .iter()
            .map(|q| (format!("{{queue=\"{}\"}}", label(&q.name)), f(q)))
            .collect::<Vec<_>>()
    };
    family(
        &mut out,
        "clacks_queue_messages",
        "gauge",
        "Messages on the queue, acquired ones included.",
        &per_queue(&|q| q.depth as f64),
    );
    family(
        &mut out,
        "clacks_queue_bytes",
        "gauge",
        "Bytes of message bodies on the queue.",
        &per_queue(&|q| q.bytes as f64),
    );
    family(
        &mut out,
        "clacks_queue_unacked_messages",
        "gauge",
        "Messages delivered and not yet settled.",
        &per_queue(&|q| q.unacked as f64),
    );
    family(
        &mut out,
        "clacks_queue_consumers",
        "gauge",
        "Consumers of the queue.",
        &per_queue(&|q| f64::from(q.consumers)),
    );
    family(
        &mut out,
        "clacks_queue_enqueued_messages_total",
        "counter",
        "Messages enqueued on the queue since it was made or recovered.",
        &per_queue(&|q| q.stats.enqueues.msgs as f64),
    );
    family(
        &mut out,
        "clacks_queue_dequeued_messages_total",
        "counter",
        "Messages that left the queue since it was made or recovered.",
        &per_queue(&|q| q.stats.dequeues.msgs as f64),
    );
    let (queued, limit) = web.broker.queued_memory();
    family(
        &mut out,
        "clacks_queued_memory_bytes",
        "gauge",
        "What all queued messages cost, as max_queued_bytes counts it.",
        &one(queued as f64),
    );
    if let Some(limit) = limit {
        family(
            &mut out,
            "clacks_queued_memory_limit_bytes",
            "gauge",
            "max_queued_bytes.",
            &one(limit as f64),
        );
    }
    if let Some(journal) = web.broker.journal() {
        let s = journal.stats();
        family(
            &mut out,
            "clacks_store_writes_total",
            "counter",
            "Store writes, each ending in the syncs that make it durable.",
            &one(s.commits as f64),
        );
        family(
            &mut out,
            "clacks_store_batches_total",
            "counter",
            "Batches of durable changes the store writes covered.",
            &one(s.batches as f64),
        );
        family(
            &mut out,
            "clacks_store_failed_writes_total",
            "counter",
            "Store writes that failed (and were tried again).",
            &one(s.failed_writes as f64),
        );
        family(
            &mut out,
            "clacks_store_write_seconds_total",
            "counter",
            "Time spent in store writes and their syncs.",
            &one(s.write_micros as f64 / 1e6),
        );
        family(
            &mut out,
            "clacks_store_refusing",
            "gauge",
            "1 while the store refuses persistent messages (disk near full, or writes failing).",
            &one(f64::from(u8::from(journal.refusal().is_some()))),
        );
    }
    let links: Vec<(String, f64)> = web
        .federation
        .list_links()
        .iter()
        .map(|l| {
            let up = matches!(l.state, LinkState::Operational);
            (
                format!("{{link=\"{}\"}}", label(&l.spec.name)),
                f64::from(u8::from(up)),
            )
        })
        .collect();
    if let Some(agent) = &web.agent {
        let calls: Vec<(String, f64)> = agent
            .call_counts()
            .into_iter()
            .map(|(method, ok, n)| {
                let outcome = if ok { "ok" } else { "error" };
                let method = if method.is_empty() {
                    "(invalid)"
                } else {
                    &method
                };
                (
                    format!("{{method=\"{}\",outcome=\"{outcome}\"}}", label(method)),
                    n as f64,
                )
            })
            .collect();
        family(
            &mut out,
            "clacks_agent_calls_total",
            "counter",
            "Clacks calls this node's agent answered, by method and outcome.",
            &calls,
        );
    }
    family(
        &mut out,
        "clacks_federation_link_up",
        "gauge",
        "1 while the federation link is operational.",
        &links,
    );
    out
}
