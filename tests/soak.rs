//! A soak run, long mode only (`tests/run.sh --long`; `CLACKS_SOAK_SECS`, default an hour):
//! mixed traffic against two federated brokers (transient and persistent messages, Clacks
//! calls, a federation route, connections opened and closed) while the first broker's RSS,
//! open file descriptors and threads are sampled every minute. The figures are printed, and
//! none may keep growing.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clacks_broker::client::{
    ConnectOptions, Connection, Message, Session, SubscribeOptions, Subscription,
};
use clacks_broker::wire::{ExchangeBind, QueueDeclare};
use common::Binary;

fn broker() -> Binary {
    Binary::start_with_config(
        tempfile::tempdir().expect("dir"),
        "listen = \"127.0.0.1:0\"\nallow_anonymous = true\nauth_failure_delay_ms = 50\n\
         [tls]\nenabled = false\n[agent]\nadmins = [\"guest\"]\n\
         [federation]\npeers = [\"fed\"]\nretry_min_ms = 100\nretry_max_ms = 500\n\
         [users]\nguest = \"guest\"\nfed = \"fedpw\"\n",
        &[],
    )
}

/// RSS (KiB), open descriptors and threads of a process.
fn sample(pid: u32) -> (u64, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (field("VmRSS:"), fds, field("Threads:"))
}

fn clacks(b: &Binary, args: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args(args)
        .args(["-b", &format!("amqp://guest:guest@{}", b.addr)])
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn session(b: &Binary) -> (Connection, Session) {
    let opts = ConnectOptions::parse(&format!("amqp://guest:guest@{}", b.addr)).expect("url");
    let c = Connection::open(opts).await.expect("connect");
    let s = c.session_unique().await.expect("session");
    (c, s)
}

async fn queue(s: &Session, name: &str, durable: bool) {
    s.declare_queue(QueueDeclare {
        queue: Some(name.into()),
        durable,
        ..Default::default()
    })
    .await
    .expect("declare");
}

/// Consumes and accepts everything on `sub`, counting, until `stop`.
async fn consume(mut sub: Subscription, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        if let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        {
            if let Ok(done) = sub.accept(&d).await {
                let _ = done.await;
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Publishes to `key` on `exchange` at about `per_second`, counting, until `stop`. A
/// refusal ends a session: the producer opens another and goes on (and counts it).
#[allow(clippy::too_many_arguments)]
async fn produce(
    addr: std::net::SocketAddr,
    exchange: &'static str,
    key: &'static str,
    durable: bool,
    per_second: u64,
    count: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let opts = ConnectOptions::parse(&format!("amqp://guest:guest@{addr}")).expect("url");
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut current: Option<(Connection, Session)> = None;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if current.is_none() {
            let Ok(c) = Connection::open(opts.clone()).await else {
                continue;
            };
            let Ok(s) = c.session_unique().await else {
                continue;
            };
            current = Some((c, s));
        }
        let Some((_, s)) = &current else {
            continue;
        };
        for _ in 0..per_second / 10 {
            let m = Message::new(vec![b'x'; 512])
                .with_routing_key(key)
                .with_durable(durable);
            if s.send(exchange, m).await.is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            } else {
                refused.fetch_add(1, Ordering::Relaxed);
                current = None;
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: tests/run.sh --long"]
async fn an_hour_of_mixed_traffic_leaves_memory_descriptors_and_threads_flat() {
    let secs: u64 = std::env::var("CLACKS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3600);
    let a = broker();
    let b = broker();
    let pid = a.child.id();
    // B pulls what A publishes with key "fed" on amq.direct.
    let url = format!("amqp://fed:fedpw@{}", a.addr);
    assert!(clacks(&b, &["link", "add", "toA", &url]), "link");
    assert!(
        clacks(
            &b,
            &[
                "route",
                "add",
                "soak",
                "--link",
                "toA",
                "--exchange",
                "amq.direct",
                "--key",
                "fed",
                "--dest",
                "amq.direct",
            ]
        ),
        "route"
    );
    let (_ca, sa) = session(&a).await;
    let (_cb, sb) = session(&b).await;
    queue(&sa, "soak-t", false).await;
    queue(&sa, "soak-p", true).await;
    queue(&sb, "soak-fed", false).await;
    sb.bind(ExchangeBind {
        queue: Some("soak-fed".into()),
        exchange: Some("amq.direct".into()),
        binding_key: Some("fed".into()),
        ..Default::default()
    })
    .await
    .expect("bind");

    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..6).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, (q, durable, rate)) in [("soak-t", false, 500), ("soak-p", true, 100)]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(produce(
            a.addr,
            "",
            q,
            durable,
            rate,
            counters[i * 2].clone(),
            refused.clone(),
            stop.clone(),
        )));
        let sub = sa
            .subscribe(q, SubscribeOptions::default())
            .await
            .expect("subscribe");
        tasks.push(tokio::spawn(consume(
            sub,
            counters[i * 2 + 1].clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(produce(
        a.addr,
        "amq.direct",
        "fed",
        false,
        50,
        counters[4].clone(),
        refused.clone(),
        stop.clone(),
    )));
    let sub = sb
        .subscribe("soak-fed", SubscribeOptions::default())
        .await
        .expect("subscribe");
    tasks.push(tokio::spawn(consume(
        sub,
        counters[5].clone(),
        stop.clone(),
    )));

    // Connections come and go, and Clacks calls are made, while the samples are taken.
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = started;
    let (mut calls, mut churned) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next_sample {
            let s = sample(pid);
            println!(
                "{:>5} s: RSS {} KiB, {} fds, {} threads; sent/received: transient {}/{}, \
                 persistent {}/{}, federated {}/{} ({} refused); {calls} calls, {churned} connections",
                started.elapsed().as_secs(),
                s.0,
                s.1,
                s.2,
                counters[0].load(Ordering::Relaxed),
                counters[1].load(Ordering::Relaxed),
                counters[2].load(Ordering::Relaxed),
                counters[3].load(Ordering::Relaxed),
                counters[4].load(Ordering::Relaxed),
                counters[5].load(Ordering::Relaxed),
                refused.load(Ordering::Relaxed),
            );
            samples.push(s);
            next_sample += Duration::from_secs(60);
        }
        let (c, s) = session(&a).await;
        queue(&s, &format!("churn-{}", churned % 50), false).await;
        let _ = c.close().await;
        churned += 1;
        let a_url = a.addr;
        let ok = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_clacks"))
                .args([
                    "call",
                    "-b",
                    &format!("amqp://guest:guest@{a_url}"),
                    "getNodes",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .await
        .unwrap_or(false);
        calls += u64::from(ok);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    assert!(calls > 0, "no Clacks call succeeded");
    assert!(
        counters[5].load(Ordering::Relaxed) > 0,
        "nothing crossed the route"
    );
    // Flat: after the first minute (start-up, caches), nothing keeps growing.
    if samples.len() >= 3 {
        let base = samples[1];
        let last = samples[samples.len() - 1];
        assert!(
            last.1 <= base.1 + 20,
            "descriptors grew: {base:?} -> {last:?}"
        );
        assert!(last.2 <= base.2 + 4, "threads grew: {base:?} -> {last:?}");
        assert!(
            last.0 <= base.0 + base.0 / 2 + 10_240,
            "RSS grew: {base:?} -> {last:?}"
        );
    }
}
