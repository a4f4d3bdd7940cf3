//! Overload over real sockets, as long-mode tests that report their figures (run them with
//! `tests/run.sh --long`): thousands of authenticated connections with a session each
//! against the real broker, an honest client's round trips measured meanwhile, and a clean
//! refusal past `max_connections`.

mod common;

use std::time::{Duration, Instant};

use clacks_broker::client::{ClientError, ConnectOptions, Connection, Session};
use common::Binary;
use tokio::task::JoinSet;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Round trips of `queue.query`: (p50, p99) in microseconds.
async fn round_trips(s: &Session) -> (u128, u128) {
    let mut times = Vec::with_capacity(500);
    for _ in 0..500 {
        let t = Instant::now();
        s.query_queue("honest").await.expect("query");
        times.push(t.elapsed().as_micros());
    }
    times.sort_unstable();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

/// Opens `n` connections as guest with a session each, 50 at a time in flight.
async fn open_many(url: &str, n: usize) -> Vec<(Connection, Session)> {
    let opts = ConnectOptions::parse(url).expect("url");
    let mut out = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut started = 0;
    while out.len() < n {
        while started < n && set.len() < 50 {
            let opts = opts.clone();
            set.spawn(async move {
                let c = Connection::open(opts).await?;
                let s = c.session_unique().await?;
                Ok::<_, ClientError>((c, s))
            });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(pair))) => out.push(pair),
            Some(Ok(Err(e))) => panic!("connection {} refused: {e}", out.len() + 1),
            Some(Err(e)) => panic!("task failed: {e}"),
            None => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: tests/run.sh --long"]
async fn two_thousand_connections_are_served_and_the_next_refused() {
    // This process holds a socket per connection too.
    rlimit::increase_nofile_limit(10_000).expect("raise the open-file limit");
    // The agent stays off: its own connections would count against the limit.
    let broker = Binary::start("max_connections = 2001\n[agent]\nenabled = false\n");
    let pid = broker.child.id();
    let url = format!("amqp://guest:guest@{}", broker.addr);
    let honest = Connection::open(ConnectOptions::parse(&url).expect("url"))
        .await
        .expect("honest client");
    let hs = honest.session_unique().await.expect("session");
    hs.declare_queue(clacks_broker::wire::QueueDeclare {
        queue: Some("honest".into()),
        ..Default::default()
    })
    .await
    .expect("declare");
    let idle = rss_kib(pid);
    let (p50, p99) = round_trips(&hs).await;
    println!("1 connection: RSS {idle} KiB; round trip p50 {p50} us, p99 {p99} us");

    let mut held = Vec::new();
    let mut before = idle;
    for total in [1000usize, 2000] {
        let opened = Instant::now();
        held.extend(open_many(&url, total - held.len()).await);
        let took = opened.elapsed();
        assert_eq!(held.len(), total);
        let rss = rss_kib(pid);
        let per = rss.saturating_sub(before) * 1024 / 1000;
        let (p50, p99) = round_trips(&hs).await;
        println!(
            "{total} connections with a session each (opened in {} ms): RSS {rss} KiB, \
             about {per} bytes per connection; honest round trip p50 {p50} us, p99 {p99} us",
            took.as_millis()
        );
        before = rss;
    }
    assert_eq!(held.len(), 2000);

    // One past the limit (2,000 plus the honest client) gets a clean refusal.
    match Connection::open(ConnectOptions::parse(&url).expect("url")).await {
        Err(ClientError::Connection { code, text }) => {
            assert_eq!(code, 320, "{text}");
            println!("connection 2002 refused: {code} {text}");
        }
        Err(ClientError::Auth(text)) => {
            assert!(text.contains("connection limit"), "{text}");
            println!("connection 2002 refused at login: {text}");
        }
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("connection past max_connections let in"),
    }
    // Everyone let in is still served.
    for (_, s) in held.iter().step_by(97) {
        tokio::time::timeout(Duration::from_secs(30), s.query_queue("honest"))
            .await
            .expect("in time")
            .expect("served");
    }
    hs.query_queue("honest").await.expect("honest still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: tests/run.sh --long"]
async fn one_expiring_message_in_a_million_does_not_slow_everyone_down() {
    let broker = Binary::start("[agent]\nenabled = false\n");
    let url = format!("amqp://guest:guest@{}", broker.addr);
    let conn = Connection::open(ConnectOptions::parse(&url).expect("url"))
        .await
        .expect("connect");
    let s = conn.session_unique().await.expect("session");
    let mut unlimited = clacks_broker::wire::FieldTable::new();
    unlimited.insert("qpid.max_size", clacks_broker::wire::Value::Int64(0));
    for name in ["deep", "honest"] {
        s.declare_queue(clacks_broker::wire::QueueDeclare {
            queue: Some(name.into()),
            arguments: Some(unlimited.clone()),
            ..Default::default()
        })
        .await
        .expect("declare");
    }
    let (p50, p99) = round_trips(&s).await;
    println!("empty broker: round trip p50 {p50} us, p99 {p99} us");
    let mut expiring = clacks_broker::client::Message::new("soon").with_routing_key("deep");
    expiring.delivery_properties.ttl = Some(60_000);
    s.send("", expiring).await.expect("send");
    let mut last = None;
    for i in 0..1_000_000u32 {
        let m = clacks_broker::client::Message::new(format!("{i:08}")).with_routing_key("deep");
        last = Some(s.transfer("", m).await.expect("transfer"));
    }
    if let Some(done) = last {
        done.await.expect("enqueued");
    }
    s.sync().await.expect("sync");
    assert_eq!(
        s.query_queue("deep").await.expect("query").message_count,
        Some(1_000_001)
    );
    let (p50, p99) = round_trips(&s).await;
    println!("1,000,001 queued, one of them with a TTL: round trip p50 {p50} us, p99 {p99} us");
}
