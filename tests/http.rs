//! The HTTP side of `clacks serve` over a real socket: health, readiness, and Prometheus
//! metrics that `promtool check metrics` accepts and whose figures agree with
//! `clacks call listQueues`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use clacks_broker::client::Message;
use clacks_broker::wire::QueueDeclare;
use common::{guest_session, Binary};
use serde_json::Value;

/// The HTTP listener's address from the broker's start-up lines.
fn http_addr(b: &Binary) -> SocketAddr {
    b.banner
        .iter()
        .find_map(|l| l.strip_prefix("listening (http) on "))
        .expect("an HTTP listener beside the AMQP one on a free port")
        .trim()
        .parse()
        .expect("address")
}

/// `GET path`: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a header and a body");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

/// The value of one sample line, by its exact name and labels.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let broker = Binary::start("[agent]\nadmins = [\"guest\"]\n");
    let http = http_addr(&broker);
    assert_eq!(get(http, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(http, "/readyz").0, 200);
    assert_eq!(get(http, "/nothing-here").0, 404);

    let (_c, s) = guest_session(&broker).await;
    for (name, durable) in [("metered", true), ("odd \"name\"", false)] {
        s.declare_queue(QueueDeclare {
            queue: Some(name.into()),
            durable,
            ..Default::default()
        })
        .await
        .expect("declare");
    }
    for i in 0..3 {
        let m = Message::new(format!("m{i}"))
            .with_routing_key("metered")
            .with_durable(true);
        s.send("", m).await.expect("send");
    }

    let (code, metrics) = get(http, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        sample(&metrics, r#"clacks_queue_messages{queue="metered"}"#),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"clacks_queue_enqueued_messages_total{queue="metered"}"#
        ),
        Some(3.0)
    );
    assert!(
        metrics.contains(r#"clacks_queue_messages{queue="odd \"name\""} 0"#),
        "label values are escaped: {metrics}"
    );
    assert!(sample(&metrics, "clacks_connections").is_some_and(|n| n >= 1.0));
    assert!(sample(&metrics, "clacks_store_writes_total").is_some_and(|n| n >= 1.0));

    // Prometheus' own checker takes it as it is.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("feed promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // The same figures as the agent's listQueues.
    let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args([
            "call",
            "--json",
            "-b",
            &format!("amqp://guest:guest@{}", broker.addr),
        ])
        .arg("listQueues")
        .output()
        .expect("clacks call");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queues: Value = serde_json::from_slice(&out.stdout).expect("json");
    // (The agent's own queues move while it answers: the test's queues stand still.)
    let mut compared = 0;
    for q in queues.as_array().expect("a list") {
        let name = q["name"].as_str().expect("name");
        if !["metered", "odd \"name\""].contains(&name) {
            continue;
        }
        let series = format!(
            "clacks_queue_messages{{queue=\"{}\"}}",
            name.replace('\\', "\\\\").replace('"', "\\\"")
        );
        assert_eq!(
            sample(&metrics, &series),
            q["messages"].as_f64(),
            "{name}: {metrics}"
        );
        compared += 1;
    }
    assert_eq!(compared, 2, "both test queues listed: {queues}");

    // The agent's calls, by method and outcome; made-up methods share one label.
    for method in ["noSuchMethod", "anotherMadeUpOne"] {
        let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
            .args(["call", "-b", &format!("amqp://guest:guest@{}", broker.addr)])
            .arg(method)
            .output()
            .expect("clacks call");
        assert!(!out.status.success(), "{method} is not a command");
    }
    let (_, metrics) = get(http, "/metrics");
    assert!(
        sample(
            &metrics,
            r#"clacks_agent_calls_total{method="listQueues",outcome="ok"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"clacks_agent_calls_total{method="(unknown)",outcome="error"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains("noSuchMethod"),
        "no label per made-up method"
    );
}
