//! Federation between `clacks serve` processes: links and routes set up over the bus with
//! `clacks call`, exchange, queue and push routes, the trace that stops loops, the
//! original user-id kept, and a link that reports its failure and recovers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use clacks_broker::client::{ConnectOptions, Connection, Message, Session, Subscription};
use clacks_broker::wire::{ExchangeBind, QueueDeclare};
use common::{cli, Binary};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// A broker that federates: agent admins guest, users for links and senders, quick retries.
fn broker(listen: &str) -> Binary {
    broker_in(tempfile::tempdir().expect("dir"), listen)
}

/// As [`broker`], in `dir` (restarting on the same data directory).
fn broker_in(dir: tempfile::TempDir, listen: &str) -> Binary {
    let config = format!(
        "listen = \"{listen}\"\nallow_anonymous = true\nauth_failure_delay_ms = 50\n\
         [tls]\nenabled = false\n[agent]\nadmins = [\"guest\"]\n\
         [federation]\npeers = [\"fed\"]\nretry_min_ms = 100\nretry_max_ms = 500\nheartbeat_s = 1\n\
         [users]\nguest = \"guest\"\nfed = \"fedpw\"\nalice = \"alicepw\"\n"
    );
    Binary::start_with_config(dir, &config, &[])
}

/// `clacks call` on `b` as guest; the JSON result.
fn call(b: &Binary, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args([
            "call",
            "--json",
            "-b",
            &format!("amqp://guest:guest@{}", b.addr),
        ])
        .args(args)
        .output()
        .expect("clacks call");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("json")
}

/// Polls `listLinks` on `b` until the link `name` is in `state`.
fn until_link(b: &Binary, name: &str, state: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let links = call(b, &["listLinks"]);
        if let Some(link) = links
            .as_array()
            .and_then(|l| l.iter().find(|l| l["name"] == name))
        {
            if link["state"] == state {
                return link.clone();
            }
        }
        assert!(Instant::now() < deadline, "{name} never {state}: {links}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn session(b: &Binary, credentials: &str) -> (Connection, Session) {
    let url = format!("amqp://{credentials}@{}", b.addr);
    let conn = Connection::open(ConnectOptions::parse(&url).expect("url"))
        .await
        .expect("connect");
    let s = conn.session_unique().await.expect("session");
    (conn, s)
}

/// A private queue bound to `exchange` with `key`, subscribed.
async fn listen(s: &Session, queue: &str, exchange: &str, key: &str) -> Subscription {
    s.declare_private_queue(queue).await.expect("declare");
    s.bind(ExchangeBind {
        queue: Some(queue.into()),
        exchange: Some(exchange.into()),
        binding_key: Some(key.into()),
        arguments: None,
    })
    .await
    .expect("bind");
    s.subscribe(queue, Default::default())
        .await
        .expect("subscribe")
}

/// The next message's body and user-id.
async fn next(sub: &mut Subscription) -> (String, String) {
    let d = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("a message in time")
        .expect("session")
        .expect("message");
    sub.accept(&d).await.expect("accept");
    let user = d
        .message_properties
        .user_id
        .as_deref()
        .map(|u| String::from_utf8_lossy(u).into_owned())
        .unwrap_or_default();
    (String::from_utf8_lossy(&d.body).into_owned(), user)
}

/// Nothing more arrives: a marker sent after the rest comes next.
async fn marker_next(sub: &mut Subscription, marker: &str) {
    let (body, _) = next(sub).await;
    assert_eq!(body, marker, "an unexpected message came before the marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_move_messages_between_brokers_once_with_their_user_ids() {
    let a = broker("127.0.0.1:0");
    let b = broker("127.0.0.1:0");
    // B owns the link to A: it pulls A's news and pushes its own back.
    let url = format!("amqp://fed:fedpw@{}", a.addr);
    assert_eq!(cli(&b, &["link", "add", "toA", &url]), "link toA added\n");
    let link = until_link(&b, "toA", "operational");
    assert!(
        link["remote_tag"].as_str().is_some_and(|t| !t.is_empty()),
        "{link}"
    );
    let listed = cli(&b, &["link", "list"]);
    assert!(
        listed.contains(&format!("toA\toperational\tamqp://fed@{}", a.addr)),
        "the password is not shown: {listed}"
    );
    call(
        &b,
        &[
            "addRoute",
            "name=news-in",
            "link=toA",
            "type=exchange",
            "source=amq.topic",
            "key=news.#",
            "dest=amq.topic",
        ],
    );
    call(
        &b,
        &[
            "addRoute",
            "name=news-out",
            "link=toA",
            "type=exchange",
            "source=amq.topic",
            "key=news.#",
            "dest=amq.topic",
            "push=true",
        ],
    );

    let (_ca, sa) = session(&a, "alice:alicepw").await;
    let (_cb, sb) = session(&b, "guest:guest").await;
    let mut on_a = listen(&sa, "news-a", "amq.topic", "news.#").await;
    let mut on_b = listen(&sb, "news-b", "amq.topic", "news.#").await;
    // The routes bind when the link is up; wait until a first message crosses, then drain
    // the probes' other copies.
    let probe = Message::new("probe").with_routing_key("news.probe");
    until_crossed(&sa, "amq.topic", probe, &mut on_b, &mut [&mut on_a]).await;

    // A message published on A reaches B once, as alice, and is not pushed back to A.
    sa.send(
        "amq.topic",
        Message::new("from-a")
            .with_routing_key("news.a")
            .with_durable(true),
    )
    .await
    .expect("send");
    assert_eq!(next(&mut on_b).await, ("from-a".into(), "alice".into()));
    assert_eq!(next(&mut on_a).await, ("from-a".into(), "alice".into()));
    // And one published on B (as guest) reaches A once, not echoed back to B.
    sb.send(
        "amq.topic",
        Message::new("from-b").with_routing_key("news.b"),
    )
    .await
    .expect("send");
    assert_eq!(next(&mut on_a).await, ("from-b".into(), "guest".into()));
    assert_eq!(next(&mut on_b).await, ("from-b".into(), "guest".into()));
    sa.send(
        "amq.topic",
        Message::new("end-a").with_routing_key("news.end"),
    )
    .await
    .expect("send");
    marker_next(&mut on_b, "end-a").await;
    marker_next(&mut on_a, "end-a").await;

    // A queue route drains a queue of A into B.
    sa.declare_queue(QueueDeclare {
        queue: Some("work".into()),
        durable: true,
        ..QueueDeclare::default()
    })
    .await
    .expect("declare");
    for i in 0..5 {
        sa.send(
            "",
            Message::new(format!("job-{i}"))
                .with_routing_key("work")
                .with_durable(true),
        )
        .await
        .expect("send");
    }
    let mut jobs = listen(&sb, "jobs-b", "amq.direct", "jobs").await;
    cli(
        &b,
        &[
            "route",
            "add",
            "drain",
            "--link",
            "toA",
            "--queue",
            "work",
            "--dest",
            "amq.direct",
            "--dest-key",
            "jobs",
        ],
    );
    for i in 0..5 {
        assert_eq!(next(&mut jobs).await.0, format!("job-{i}"));
    }
    let deadline = Instant::now() + DEADLINE;
    while sa.query_queue("work").await.expect("query").message_count != Some(0) {
        assert!(Instant::now() < deadline, "work was not drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let routes = call(&b, &["listRoutes"]);
    let drain = routes
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "drain"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(drain["forwarded"], 5, "{routes}");
    let listed = cli(&b, &["route", "list"]);
    assert!(
        listed.contains("drain\ttoA\tpull\tqueue work\tamq.direct\t5\t-"),
        "{listed}"
    );
    // Removing the link takes its routes along.
    assert_eq!(
        cli(&b, &["link", "del", "toA"]),
        "link toA removed with 3 route(s)\n"
    );
    assert_eq!(call(&b, &["listRoutes"]), serde_json::json!([]));
    // The link's connection went with it: its bridge queues on A are gone.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let queues = call(&a, &["listQueues"]);
        let bridges = queues
            .as_array()
            .map(|q| {
                q.iter()
                    .filter(|q| {
                        q["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("qpid.bridge_queue_"))
                    })
                    .count()
            })
            .unwrap_or(0);
        if bridges == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bridge queues left on A: {queues}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_reports_the_remote_gone_and_recovers_when_it_returns() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr_a = format!("127.0.0.1:{port}");
    let a = broker(&addr_a);
    let b = broker("127.0.0.1:0");
    call(
        &b,
        &["addLink", "toA", &format!("amqp://fed:fedpw@{addr_a}")],
    );
    call(
        &b,
        &[
            "addRoute",
            "name=in",
            "link=toA",
            "type=exchange",
            "source=amq.fanout",
            "dest=amq.fanout",
        ],
    );
    until_link(&b, "toA", "operational");
    drop(a.kill());
    let failed = until_link(&b, "toA", "failed");
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );

    let a = broker(&addr_a);
    until_link(&b, "toA", "operational");
    let (_ca, sa) = session(&a, "alice:alicepw").await;
    let (_cb, sb) = session(&b, "guest:guest").await;
    let mut on_b = listen(&sb, "fan-b", "amq.fanout", "").await;
    let d = send_until_received(&sa, "amq.fanout", Message::new("again"), &mut on_b).await;
    assert_eq!(&d.body[..], b"again");
}

/// Polls `listRoutes` on `b` until route `name` moved at least `n` messages; the count.
fn until_forwarded(b: &Binary, name: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let routes = call(b, &["listRoutes"]);
        let moved = routes
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == name))
            .and_then(|r| r["forwarded"].as_u64())
            .unwrap_or(0);
        if moved >= n {
            return moved;
        }
        assert!(
            Instant::now() < deadline,
            "{name} moved {moved} of {n}: {routes}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    format!("127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_survive_a_kill_of_either_side_mid_stream() {
    const N: usize = 3000;
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = broker(&addr_a);
    let b = broker(&addr_b);
    {
        let (_c, sa) = session(&a, "alice:alicepw").await;
        sa.declare_queue(QueueDeclare {
            queue: Some("outbox".into()),
            durable: true,
            ..QueueDeclare::default()
        })
        .await
        .expect("declare");
        let mut pending = Vec::new();
        for i in 0..N {
            let m = Message::new(format!("m{i}"))
                .with_routing_key("outbox")
                .with_durable(true);
            pending.push(sa.transfer("", m).await.expect("transfer"));
        }
        for p in pending {
            p.await.expect("stored");
        }
        let (_c, sb) = session(&b, "guest:guest").await;
        sb.declare_queue(QueueDeclare {
            queue: Some("inbox".into()),
            durable: true,
            ..QueueDeclare::default()
        })
        .await
        .expect("declare");
        sb.bind(ExchangeBind {
            queue: Some("inbox".into()),
            exchange: Some("amq.direct".into()),
            binding_key: Some("inbox".into()),
            arguments: None,
        })
        .await
        .expect("bind");
    }
    cli(
        &b,
        &[
            "link",
            "add",
            "toA",
            &format!("amqp://fed:fedpw@{addr_a}"),
            "--durable",
        ],
    );
    cli(
        &b,
        &[
            "route",
            "add",
            "drain",
            "--link",
            "toA",
            "--queue",
            "outbox",
            "--dest",
            "amq.direct",
            "--dest-key",
            "inbox",
            "--durable",
        ],
    );
    // The source dies mid-stream and comes back; then the destination does.
    until_forwarded(&b, "drain", 200);
    let a = broker_in(a.kill(), &addr_a);
    let before = until_forwarded(&b, "drain", 1);
    until_forwarded(&b, "drain", before + 300);
    let b = broker_in(b.kill(), &addr_b);
    // The link and route came back from B's store.
    until_link(&b, "toA", "operational");

    let (_ca, sa) = session(&a, "alice:alicepw").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sa.query_queue("outbox").await.expect("query").message_count != Some(0) {
        assert!(Instant::now() < deadline, "outbox was not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_cb, sb) = session(&b, "guest:guest").await;
    let got = common::bodies(&sb, "inbox").await;
    let unique: std::collections::BTreeSet<&String> = got.iter().collect();
    let duplicates = got.len() - unique.len();
    eprintln!(
        "{} received, {} duplicates after two crashes",
        got.len(),
        duplicates
    );
    assert_eq!(unique.len(), N, "every message arrived");
    for i in 0..N {
        assert!(unique.contains(&format!("m{i}")), "m{i} lost");
    }
}

/// Sends `message` on `from` again and again until `sub` receives a copy (routes bind
/// once their link is up); that first delivery, accepted.
async fn send_until_received(
    from: &Session,
    exchange: &str,
    message: Message,
    sub: &mut Subscription,
) -> clacks_broker::client::Delivery {
    let deadline = Instant::now() + DEADLINE;
    loop {
        from.send(exchange, message.clone()).await.expect("send");
        if let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await
        {
            sub.accept(&d).await.expect("accept");
            return d;
        }
        assert!(Instant::now() < deadline, "nothing crossed");
    }
}

/// Waits until a probe published on `from` reaches `sub` (the routes are bound), then
/// drains what else the probes left on `subs`.
async fn until_crossed(
    from: &Session,
    exchange: &str,
    probe: Message,
    sub: &mut Subscription,
    subs: &mut [&mut Subscription],
) {
    send_until_received(from, exchange, probe, sub).await;
    for s in std::iter::once(sub).chain(subs.iter_mut().map(|s| &mut **s)) {
        while let Ok(Ok(Some(d))) = tokio::time::timeout(Duration::from_millis(500), s.next()).await
        {
            s.accept(&d).await.expect("accept");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_of_three_delivers_each_message_once_per_subscriber() {
    let a = broker("127.0.0.1:0");
    let b = broker("127.0.0.1:0");
    let c = broker("127.0.0.1:0");
    // Each broker pulls amq.fanout from the one before it: A -> B -> C -> A.
    for (owner, source) in [(&b, &a), (&c, &b), (&a, &c)] {
        cli(
            owner,
            &[
                "link",
                "add",
                "prev",
                &format!("amqp://fed:fedpw@{}", source.addr),
            ],
        );
        cli(
            owner,
            &[
                "route",
                "add",
                "ring",
                "--link",
                "prev",
                "--exchange",
                "amq.fanout",
                "--dest",
                "amq.fanout",
            ],
        );
    }
    let (_ca, sa) = session(&a, "alice:alicepw").await;
    let (_cb, sb) = session(&b, "guest:guest").await;
    let (_cc, sc) = session(&c, "guest:guest").await;
    let mut on_a = listen(&sa, "ring-a", "amq.fanout", "").await;
    let mut on_b = listen(&sb, "ring-b", "amq.fanout", "").await;
    let mut on_c = listen(&sc, "ring-c", "amq.fanout", "").await;
    let probe = Message::new("probe");
    until_crossed(
        &sa,
        "amq.fanout",
        probe,
        &mut on_c,
        &mut [&mut on_a, &mut on_b],
    )
    .await;

    sa.send("amq.fanout", Message::new("once"))
        .await
        .expect("send");
    sa.send("amq.fanout", Message::new("end"))
        .await
        .expect("send");
    for sub in [&mut on_a, &mut on_b, &mut on_c] {
        assert_eq!(next(sub).await, ("once".into(), "alice".into()));
        marker_next(sub, "end").await;
    }
}

/// An appliance: the broker with its agent as `node`, quick presence, federating.
fn appliance(node: &str, scripts: Option<&std::path::Path>) -> Binary {
    let scripts = scripts.map_or(String::new(), |d| {
        format!("scripts_dir = {:?}\n", d.display().to_string())
    });
    let config = format!(
        "listen = \"127.0.0.1:0\"\nauth_failure_delay_ms = 50\n[tls]\nenabled = false\n\
         [agent]\nnode = \"{node}\"\nadmins = [\"guest\"]\nstatus_interval_ms = 200\n\
         node_timeout_ms = 3000\n{scripts}\
         [federation]\npeers = [\"fed\"]\nretry_min_ms = 100\nretry_max_ms = 500\nheartbeat_s = 1\n\
         [users]\nguest = \"guest\"\nfed = \"fedpw\"\n"
    );
    Binary::start_with_config(tempfile::tempdir().expect("dir"), &config, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_appliances_federated_on_their_domain_see_each_other() {
    use std::os::unix::fs::PermissionsExt;
    let scripts = tempfile::tempdir().expect("dir");
    std::fs::write(
        scripts.path().join("whoami.toml"),
        "target = \"tools\"\nhelp = \"Where it ran.\"",
    )
    .expect("manifest");
    let program = scripts.path().join("whoami");
    std::fs::write(&program, "#!/bin/sh\necho '\"node-b\"'\n").expect("script");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let a = appliance("node-a", None);
    let b = appliance("node-b", Some(scripts.path()));
    // Each pulls the other's events into its own domain exchange (an xml exchange: the
    // route binds with `.`).
    for (owner, other) in [(&a, &b), (&b, &a)] {
        cli(
            owner,
            &[
                "link",
                "add",
                "peer",
                &format!("amqp://fed:fedpw@{}", other.addr),
            ],
        );
        cli(
            owner,
            &[
                "route",
                "add",
                "events",
                "--link",
                "peer",
                "--exchange",
                "org.clacks",
                "--key",
                "event",
                "--dest",
                "org.clacks",
            ],
        );
    }
    for (broker, what) in [(&a, "A"), (&b, "B")] {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let nodes = cli(broker, &["nodes"]);
            if nodes.contains("node-a") && nodes.contains("node-b") {
                break;
            }
            assert!(Instant::now() < deadline, "{what} sees only: {nodes}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // node-b's script is known on A, but its private queue lives on B: A does not send the
    // call into the void, it says so, and node-b stays listed.
    let deadline = Instant::now() + DEADLINE;
    while call(&a, &["getMethods"]).get("whoami").is_none() {
        assert!(Instant::now() < deadline, "whoami never announced to A");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_clacks"))
        .args([
            "call",
            "-b",
            &format!("amqp://guest:guest@{}", a.addr),
            "whoami",
        ])
        .output()
        .expect("clacks call");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no provider of whoami can be reached from this broker"),
        "{err}"
    );
    assert!(cli(&a, &["nodes"]).contains("node-b"));
    // On B the same call runs.
    assert_eq!(call(&b, &["whoami"]), Value::String("node-b".into()));
}

/// A network namespace joined to this one by a veth pair, removed when dropped.
struct Namespace {
    name: String,
    host_if: String,
    host_ip: String,
    inner_ip: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip");
    assert!(status.success(), "ip {args:?} failed");
}

impl Namespace {
    fn new() -> Namespace {
        let id = std::process::id() % 200 + 20;
        let ns = Namespace {
            name: format!("clacksfed{id}"),
            host_if: format!("cfh{id}"),
            host_ip: format!("10.213.{id}.1"),
            inner_ip: format!("10.213.{id}.2"),
        };
        let inner_if = format!("cfn{id}");
        // Leftovers of an earlier run with the same id go first.
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &ns.host_if])
            .status();
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ]);
        ip(&["link", "set", &inner_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &ns.host_if,
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/24", ns.inner_ip),
            "dev",
            &inner_if,
        ]);
        inside(&["link", "set", &inner_if, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }

    fn cable(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_cable_fails_the_link_and_nothing_is_lost_when_it_returns() {
    let ns = Namespace::new();
    let addr_a = format!("{}:5672", ns.inner_ip);
    let config = format!(
        "listen = \"{addr_a}\"\nauth_failure_delay_ms = 50\n[tls]\nenabled = false\n\
         [agent]\nenabled = false\n[users]\nguest = \"guest\"\nfed = \"fedpw\"\n"
    );
    let a = Binary::start_with_config(
        tempfile::tempdir().expect("dir"),
        &config,
        &["ip", "netns", "exec", &ns.name],
    );
    let b = broker("127.0.0.1:0");
    let (_ca, sa) = session(&a, "guest:guest").await;
    sa.declare_queue(QueueDeclare {
        queue: Some("outbox".into()),
        durable: true,
        ..QueueDeclare::default()
    })
    .await
    .expect("declare");
    let (_cb, sb) = session(&b, "guest:guest").await;
    let mut inbox = listen(&sb, "inbox", "amq.direct", "inbox").await;
    cli(
        &b,
        &["link", "add", "toA", &format!("amqp://fed:fedpw@{addr_a}")],
    );
    cli(
        &b,
        &[
            "route",
            "add",
            "drain",
            "--link",
            "toA",
            "--queue",
            "outbox",
            "--dest",
            "amq.direct",
            "--dest-key",
            "inbox",
        ],
    );
    until_link(&b, "toA", "operational");
    sa.send(
        "",
        Message::new("before")
            .with_routing_key("outbox")
            .with_durable(true),
    )
    .await
    .expect("send");
    assert_eq!(next(&mut inbox).await.0, "before");

    // The cable goes: no reset reaches B, its heartbeat finds the silence.
    ns.cable(false);
    let failed = until_link(&b, "toA", "failed");
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    // Meanwhile messages pile up on A, sent from inside its namespace.
    let sent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_clacks"),
            "send",
        ])
        .args([
            "-b",
            &format!("amqp://guest:guest@{addr_a}"),
            "--durable",
            "--count",
            "20",
        ])
        .args(["--content", "during", "outbox"])
        .output()
        .expect("clacks send");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    ns.cable(true);
    until_link(&b, "toA", "operational");
    // Every message arrives. "before" may come twice: its accept can have been on the way
    // to A when the cable went (duplicates after a failure are allowed, losses are not).
    let mut during = 0;
    while during < 20 {
        match next(&mut inbox).await.0.as_str() {
            "during" => during += 1,
            "before" => eprintln!("a duplicate of the message sent before the cut"),
            other => panic!("unexpected {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_over_tls_trusts_the_remote_certificate_it_is_given() {
    // A with its TLS listener and the certificate it makes at first start.
    let config = "listen = \"127.0.0.1:0\"\nauth_failure_delay_ms = 50\n\
         [agent]\nenabled = false\n[users]\nguest = \"guest\"\nfed = \"fedpw\"\nalice = \"alicepw\"\n";
    let a = Binary::start_with_config(tempfile::tempdir().expect("dir"), config, &[]);
    let tls = a.tls_addr.expect("an amqps listener");
    let cert = a.dir.path().join("clacks-data/tls-cert.pem");
    assert!(cert.exists(), "{}", cert.display());
    let b = broker("127.0.0.1:0");
    let url = format!("amqps://fed:fedpw@localhost:{}", tls.port());
    cli(
        &b,
        &[
            "link",
            "add",
            "secure",
            &url,
            "--link-ca",
            &cert.display().to_string(),
        ],
    );
    cli(
        &b,
        &[
            "route",
            "add",
            "in",
            "--link",
            "secure",
            "--exchange",
            "amq.fanout",
            "--dest",
            "amq.fanout",
        ],
    );
    until_link(&b, "secure", "operational");
    let (_ca, sa) = session(&a, "alice:alicepw").await;
    let (_cb, sb) = session(&b, "guest:guest").await;
    let mut on_b = listen(&sb, "secure-b", "amq.fanout", "").await;
    let d = send_until_received(&sa, "amq.fanout", Message::new("sealed"), &mut on_b).await;
    assert_eq!(&d.body[..], b"sealed");
    // Without the CA the certificate is not trusted: the link reports why.
    cli(&b, &["link", "add", "untrusting", &url]);
    let failed = until_link(&b, "untrusting", "failed");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("certificate")),
        "{failed}"
    );
}
