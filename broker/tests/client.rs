//! The client library against the real server on 127.0.0.1:0: negotiation, every command
//! helper, transfers, subscriptions with credit, errors, large messages, heartbeats.

use std::time::Duration;

use bytes::Bytes;
use clacks_broker::client::{ClientError, ConnectOptions, Connection, Message, SubscribeOptions};
use clacks_broker::server::{Server, ServerConfig};
use clacks_broker::wire::{
    ExchangeBind, ExchangeBound, ExchangeDeclare, ExchangeDelete, ExchangeUnbind,
    MessageAcceptMode, MessageRejectCode, QueueDeclare, QueueDelete, SequenceSet,
};
use tokio::sync::oneshot;

struct Broker {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Broker {
    async fn start() -> Self {
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            allow_anonymous: true,
            auth_failure_delay: std::time::Duration::from_millis(20),
            ..ServerConfig::default()
        };
        config.users.insert("guest".into(), "guest".into());
        let server = Server::bind(config).await.expect("bind");
        let url = format!("amqp://guest:guest@{}", server.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("server run");
        });
        Broker {
            url,
            stop: Some(stop),
            task,
        }
    }

    async fn connect(&self) -> Connection {
        Connection::open(ConnectOptions::parse(&self.url).expect("url"))
            .await
            .expect("connect")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn queue(name: &str) -> QueueDeclare {
    QueueDeclare {
        queue: Some(name.into()),
        ..QueueDeclare::default()
    }
}

async fn next(sub: &mut clacks_broker::client::Subscription) -> clacks_broker::client::Delivery {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivery in time")
        .expect("no error")
        .expect("subscription open")
}

#[tokio::test]
async fn negotiates_plain_and_anonymous() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    assert_eq!(conn.negotiated().mechanism, "PLAIN");
    assert!(conn.negotiated().max_frame_size >= 4096);
    conn.close().await.expect("close");

    let addr = broker.url.rsplit('@').next().expect("addr").to_string();
    let conn = Connection::open(ConnectOptions::parse(&addr).expect("url"))
        .await
        .expect("anonymous");
    assert_eq!(conn.negotiated().mechanism, "ANONYMOUS");
    conn.close().await.expect("close");

    let bad = format!("amqp://guest:wrong@{addr}");
    let err = Connection::open(ConnectOptions::parse(&bad).expect("url"))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, ClientError::Auth(_)), "{err}");

    // SCRAM-SHA-256: the password never crosses the wire, and a wrong one is refused.
    for (password, ok) in [("guest", true), ("wrong", false)] {
        let mut opts =
            ConnectOptions::parse(&format!("amqp://guest:{password}@{addr}")).expect("url");
        opts.mechanism = Some("SCRAM-SHA-256".into());
        match Connection::open(opts).await {
            Ok(conn) => {
                assert!(ok, "wrong SCRAM password accepted");
                assert_eq!(conn.negotiated().mechanism, "SCRAM-SHA-256");
                conn.close().await.expect("close");
            }
            Err(e) => {
                assert!(!ok, "SCRAM login failed: {e}");
                assert!(matches!(e, ClientError::Auth(_)), "{e}");
            }
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn queue_and_exchange_commands() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    let s = conn.session_unique().await.expect("session");
    s.declare_queue(QueueDeclare {
        durable: false,
        auto_delete: false,
        ..queue("cq")
    })
    .await
    .expect("declare");
    let q = s.query_queue("cq").await.expect("query");
    assert_eq!(q.queue.as_deref(), Some("cq"));
    assert_eq!(q.message_count, Some(0));
    assert!(s.query_queue("nope").await.expect("query").queue.is_none());

    s.declare_exchange(ExchangeDeclare {
        exchange: Some("cx".into()),
        r#type: Some("topic".into()),
        ..ExchangeDeclare::default()
    })
    .await
    .expect("exchange");
    let x = s.query_exchange("cx").await.expect("xquery");
    assert_eq!(x.r#type.as_deref(), Some("topic"));
    assert!(!x.not_found);
    assert!(s.query_exchange("nox").await.expect("xquery").not_found);

    s.bind(ExchangeBind {
        queue: Some("cq".into()),
        exchange: Some("cx".into()),
        binding_key: Some("a.#".into()),
        arguments: None,
    })
    .await
    .expect("bind");
    let bound = |key: &str| ExchangeBound {
        exchange: Some("cx".into()),
        queue: Some("cq".into()),
        binding_key: Some(key.into()),
        arguments: None,
    };
    let b = s.bound(bound("a.#")).await.expect("bound");
    assert!(!b.exchange_not_found && !b.queue_not_found && !b.key_not_matched);
    let b = s.bound(bound("zzz")).await.expect("bound");
    assert!(b.key_not_matched);

    s.send("cx", Message::new("one").with_routing_key("a.b"))
        .await
        .expect("send");
    s.send("cx", Message::new("two").with_routing_key("b.a"))
        .await
        .expect("send");
    assert_eq!(s.query_queue("cq").await.expect("q").message_count, Some(1));
    s.purge_queue("cq").await.expect("purge");
    assert_eq!(s.query_queue("cq").await.expect("q").message_count, Some(0));

    s.unbind(ExchangeUnbind {
        queue: Some("cq".into()),
        exchange: Some("cx".into()),
        binding_key: Some("a.#".into()),
    })
    .await
    .expect("unbind");
    assert!(s.bound(bound("a.#")).await.expect("bound").key_not_matched);
    s.delete_exchange(ExchangeDelete {
        exchange: Some("cx".into()),
        if_unused: false,
    })
    .await
    .expect("delete exchange");
    s.delete_queue(QueueDelete {
        queue: Some("cq".into()),
        ..QueueDelete::default()
    })
    .await
    .expect("delete queue");
    assert!(s.query_queue("cq").await.expect("q").queue.is_none());
    s.close().await.expect("detach");
    conn.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn pipelined_transfers_and_credit_limited_receive() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    let s = conn.session("producer").await.expect("session");
    s.declare_queue(queue("pq")).await.expect("declare");
    let mut pending = Vec::new();
    for i in 0..500u32 {
        let m = Message::new(format!("m{i}"))
            .with_routing_key("pq")
            .with_header("n", i64::from(i));
        pending.push(s.transfer("", m).await.expect("transfer"));
    }
    for c in pending {
        c.await.expect("complete");
    }
    assert_eq!(
        s.query_queue("pq").await.expect("q").message_count,
        Some(500)
    );

    let conn2 = broker.connect().await;
    let r = conn2.session("consumer").await.expect("session");
    let opts = SubscribeOptions {
        capacity: Some(10),
        ..SubscribeOptions::default()
    };
    let mut sub = r.subscribe("pq", opts).await.expect("subscribe");
    let mut ids = SequenceSet::new();
    for i in 0..500u32 {
        let d = next(&mut sub).await;
        assert_eq!(&d.body[..], format!("m{i}").as_bytes());
        assert_eq!(d.header("n").and_then(|v| v.as_i64()), Some(i64::from(i)));
        assert_eq!(d.accept_mode, MessageAcceptMode::EXPLICIT);
        ids.add(d.id);
        if i % 50 == 49 {
            r.accept(std::mem::take(&mut ids))
                .await
                .expect("accept")
                .await
                .expect("accepted");
        }
    }
    sub.cancel().await.expect("cancel");
    assert_eq!(r.query_queue("pq").await.expect("q").message_count, Some(0));
    conn2.close().await.expect("close");
    conn.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn release_and_reject() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    let s = conn.session("s").await.expect("session");
    s.declare_queue(queue("rq")).await.expect("declare");
    for body in ["a", "b"] {
        s.send("", Message::new(body).with_routing_key("rq"))
            .await
            .expect("send");
    }
    let mut sub = s
        .subscribe("rq", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let a = next(&mut sub).await;
    let b = next(&mut sub).await;
    s.reject(
        SequenceSet::from_range(b.id, b.id),
        MessageRejectCode::UNSPECIFIED,
        "no",
    )
    .await
    .expect("reject")
    .await
    .expect("rejected");
    s.release(SequenceSet::from_range(a.id, a.id), true)
        .await
        .expect("release")
        .await
        .expect("released");
    let again = next(&mut sub).await;
    assert_eq!(&again.body[..], b"a");
    assert!(again.redelivered());
    sub.accept(&again)
        .await
        .expect("accept")
        .await
        .expect("accepted");
    sub.cancel().await.expect("cancel");
    assert_eq!(s.query_queue("rq").await.expect("q").message_count, Some(0));
    conn.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn session_errors_carry_the_broker_code() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    let s = conn.session("e").await.expect("session");
    let err = s
        .declare_queue(QueueDeclare {
            passive: true,
            ..queue("missing")
        })
        .await
        .expect_err("404");
    assert_eq!(err.session_code(), Some(404), "{err}");
    assert!(
        s.sync().await.is_err(),
        "session is broken after an exception"
    );
    let err = s.sync().await.expect_err("still broken");
    assert!(matches!(
        err,
        ClientError::Session { .. } | ClientError::Detached { .. }
    ));

    let s2 = conn.session("e2").await.expect("new session");
    let err = s2
        .subscribe("missing", SubscribeOptions::default())
        .await
        .err()
        .expect("404");
    assert_eq!(err.session_code(), Some(404), "{err}");
    let s3 = conn.session("e3").await.expect("new session");
    let err = s3
        .send("no-such-exchange", Message::new("x"))
        .await
        .expect_err("404");
    assert_eq!(err.session_code(), Some(404), "{err}");
    conn.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn transactions() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    let s = conn.session("tx").await.expect("session");
    s.declare_queue(queue("tq")).await.expect("declare");
    s.tx_select().await.expect("select");
    s.send("", Message::new("1").with_routing_key("tq"))
        .await
        .expect("send");
    assert_eq!(s.query_queue("tq").await.expect("q").message_count, Some(0));
    s.tx_commit().await.expect("commit");
    assert_eq!(s.query_queue("tq").await.expect("q").message_count, Some(1));
    s.send("", Message::new("2").with_routing_key("tq"))
        .await
        .expect("send");
    s.tx_rollback().await.expect("rollback");
    assert_eq!(s.query_queue("tq").await.expect("q").message_count, Some(1));
    conn.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn large_messages_cross_in_many_frames() {
    let broker = Broker::start().await;
    let mut opts = ConnectOptions::parse(&broker.url).expect("url");
    opts.max_frame_size = 4096;
    let conn = Connection::open(opts).await.expect("connect");
    assert_eq!(conn.negotiated().max_frame_size, 4096);
    let s = conn.session("big").await.expect("session");
    s.declare_queue(queue("bq")).await.expect("declare");
    let body: Bytes = (0..1_000_000u32)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<_>>()
        .into();
    s.send("", Message::new(body.clone()).with_routing_key("bq"))
        .await
        .expect("send");
    let mut sub = s
        .subscribe("bq", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let d = next(&mut sub).await;
    assert_eq!(d.body, body);
    conn.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_an_idle_connection() {
    let broker = Broker::start().await;
    let opts = ConnectOptions::parse(&broker.url)
        .expect("url")
        .with_heartbeat(1);
    let conn = Connection::open(opts).await.expect("connect");
    assert_eq!(conn.negotiated().heartbeat, 1);
    let s = conn.session("hb").await.expect("session");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    s.sync()
        .await
        .expect("still alive after 3.5 idle heartbeat intervals");
    conn.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn server_shutdown_ends_the_connection() {
    let broker = Broker::start().await;
    let conn = broker.connect().await;
    let s = conn.session("sd").await.expect("session");
    s.declare_queue(queue("sdq")).await.expect("declare");
    let mut sub = s
        .subscribe("sdq", SubscribeOptions::default())
        .await
        .expect("subscribe");
    broker.stop().await;
    let r = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("ended in time");
    assert!(r.is_err(), "{r:?}");
    let why = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed in time");
    assert!(
        matches!(why, ClientError::Connection { code: 320, .. }),
        "{why}"
    );
    assert!(conn.is_closed());
    let err = s.sync().await.expect_err("connection gone");
    assert!(
        matches!(
            err,
            ClientError::Connection { code: 320, .. } | ClientError::Closed | ClientError::Io(_)
        ),
        "{err}"
    );
}

#[tokio::test]
async fn in_process_connections_log_in_as_their_identity() {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..ServerConfig::default()
    };
    config_users_none(&config);
    let server = Server::bind(config).await.expect("bind");
    let connector = server.internal_connector();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let mut opts = ConnectOptions::new("in-process", 0);
    opts.mechanism = Some("EXTERNAL".into());
    let conn = Connection::open_on(connector.connect("clacks-agent"), opts)
        .await
        .expect("internal login");
    assert_eq!(conn.negotiated().mechanism, "EXTERNAL");
    let s = conn.session_unique().await.expect("session");
    s.declare_queue(QueueDeclare {
        queue: Some("internal".into()),
        ..QueueDeclare::default()
    })
    .await
    .expect("declare");
    s.send("", Message::new("hi").with_routing_key("internal"))
        .await
        .expect("send");
    let mut sub = s
        .subscribe("internal", SubscribeOptions::default())
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("in time")
        .expect("no error")
        .expect("delivery");
    assert_eq!(
        d.message_properties.user_id.as_deref(),
        Some(&b"clacks-agent"[..]),
        "stamped with the internal identity"
    );
    // The server's stop reaches in-process connections too.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("server stops")
        .expect("join")
        .expect("run");
}

/// The internal identity needs no configured user.
fn config_users_none(config: &ServerConfig) {
    assert!(config.users.is_empty() && config.stored_users.is_empty());
}
