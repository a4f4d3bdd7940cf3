//! Memory bounds over real sockets: the broker-wide limit on queued bytes refuses the
//! publisher with resource-limit-exceeded and leaves others working, ring queues make room
//! at it, the default per-queue limit applies unless a declare sets its own, and a large
//! message within the limits passes.

mod common;

use std::time::Duration;

use bytes::Bytes;
use clacks_broker::client::{ClientError, ConnectOptions, Connection, Message, Session};
use clacks_broker::server::ServerConfig;
use clacks_broker::wire::{FieldTable, QueueDeclare, QueueDelete, Value};
use common::{depth, InProcess};

async fn broker(max_queued: Option<u64>, default_queue_max: Option<u64>) -> InProcess {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allow_anonymous: true,
        max_queued_bytes: max_queued,
        default_queue_max_size: default_queue_max,
        ..ServerConfig::default()
    };
    config.users.insert("guest".into(), "guest".into());
    InProcess::with_config(config).await
}

async fn session(b: &InProcess) -> (Connection, Session) {
    let url = format!("amqp://guest:guest@{}", b.addr);
    let conn = Connection::open(ConnectOptions::parse(&url).expect("url"))
        .await
        .expect("connect");
    let s = conn.session_unique().await.expect("session");
    (conn, s)
}

async fn declare(s: &Session, name: &str, args: FieldTable) {
    s.declare_queue(QueueDeclare {
        queue: Some(name.into()),
        arguments: Some(args),
        ..QueueDeclare::default()
    })
    .await
    .expect("declare");
}

fn message(queue: &str, size: usize) -> Message {
    Message::new(Bytes::from(vec![b'x'; size])).with_routing_key(queue)
}

/// Sends 1 KiB messages to `queue` until the broker refuses one; how many it took.
async fn fill(s: &Session, queue: &str) -> (u32, ClientError) {
    for n in 0..100_000 {
        if let Err(e) = s.send("", message(queue, 1024)).await {
            return (n, e);
        }
    }
    panic!("the broker never refused");
}

#[tokio::test]
async fn the_broker_wide_limit_refuses_the_publisher_and_others_carry_on() {
    let b = broker(Some(512 << 10), None).await;
    let (_c1, s1) = session(&b).await;
    declare(&s1, "a", FieldTable::new()).await;
    declare(&s1, "b", FieldTable::new()).await;
    let (taken, refused) = fill(&s1, "a").await;
    assert!(
        (300..512).contains(&taken),
        "about 512 KiB of 1 KiB messages with their overhead, took {taken}"
    );
    match refused {
        ClientError::Session { code, text } => {
            assert_eq!(code, 506);
            assert!(text.contains("max_queued_bytes"), "{text}");
        }
        other => panic!("expected resource-limit-exceeded, got {other}"),
    }

    // Another client is refused too while the broker is full, but is still served.
    let (_c2, s2) = session(&b).await;
    assert!(matches!(
        s2.send("", message("b", 1024)).await,
        Err(ClientError::Session { code: 506, .. })
    ));
    let (_c3, s3) = session(&b).await;
    assert_eq!(depth(&s3, "a").await, taken);

    // Draining frees room: publishing works again.
    let drained = common::bodies(&s3, "a").await;
    assert_eq!(drained.len() as u32, taken);
    s3.send("", message("b", 1024)).await.expect("room again");
    assert_eq!(depth(&s3, "b").await, 1);
}

#[tokio::test]
async fn a_ring_queue_makes_room_at_the_broker_limit() {
    let b = broker(Some(256 << 10), None).await;
    let (_c, s) = session(&b).await;
    let mut ring = FieldTable::new();
    ring.insert("qpid.policy_type", Value::from("ring".to_string()));
    declare(&s, "ring", ring).await;
    for _ in 0..2000 {
        s.send("", message("ring", 1024))
            .await
            .expect("a ring never refuses");
    }
    let kept = depth(&s, "ring").await;
    assert!(
        (100..256).contains(&kept),
        "the ring keeps what fits in 256 KiB, kept {kept}"
    );
}

#[tokio::test]
async fn the_default_queue_limit_applies_unless_the_declare_sets_one() {
    let b = broker(None, Some(64 << 10)).await;
    let (_c, s) = session(&b).await;
    declare(&s, "plain", FieldTable::new()).await;
    let (taken, refused) = fill(&s, "plain").await;
    assert_eq!(taken, 64, "64 KiB of 1 KiB bodies");
    assert!(matches!(refused, ClientError::Session { code: 506, .. }));

    let (_c, s) = session(&b).await;
    let mut unlimited = FieldTable::new();
    unlimited.insert("qpid.max_size", Value::Int64(0));
    declare(&s, "unlimited", unlimited).await;
    for _ in 0..200 {
        s.send("", message("unlimited", 1024))
            .await
            .expect("qpid.max_size 0 means no limit");
    }
    let mut own = FieldTable::new();
    own.insert("qpid.max_size", Value::Int64(4096));
    declare(&s, "own", own).await;
    for _ in 0..4 {
        s.send("", message("own", 1024)).await.expect("within");
    }
    assert!(s.send("", message("own", 1024)).await.is_err());
}

#[tokio::test]
async fn a_fifty_megabyte_message_passes_with_the_defaults() {
    let b = broker(
        clacks_broker::server::default_max_queued_bytes(),
        Some(clacks_broker::server::DEFAULT_QUEUE_MAX_SIZE),
    )
    .await;
    let (_c, s) = session(&b).await;
    declare(&s, "big", FieldTable::new()).await;
    s.send("", message("big", 50 << 20)).await.expect("50 MB");
    let mut sub = s
        .subscribe("big", clacks_broker::client::SubscribeOptions::default())
        .await
        .expect("subscribe");
    let d = tokio::time::timeout(Duration::from_secs(60), sub.next())
        .await
        .expect("in time")
        .expect("session")
        .expect("message");
    assert_eq!(d.body.len(), 50 << 20);
}

#[tokio::test]
async fn ten_thousand_queues_declare_and_delete() {
    // 10,000 messages of 200 bytes cost about 5 MB with their overhead.
    let b = broker(Some(6 << 20), Some(4 << 20)).await;
    let (_c, s) = session(&b).await;
    for i in 0..10_000 {
        let name = format!("q{i}");
        declare(&s, &name, FieldTable::new()).await;
        s.send("", message(&name, 200)).await.expect("send");
    }
    for i in 0..10_000 {
        s.delete_queue(QueueDelete {
            queue: Some(format!("q{i}")),
            ..QueueDelete::default()
        })
        .await
        .expect("delete");
    }
    // Every deleted queue's messages left the budget: a large message fits again.
    declare(&s, "after", FieldTable::new()).await;
    s.send("", message("after", 2 << 20))
        .await
        .expect("the budget is free again");
}
