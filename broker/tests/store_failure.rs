//! A store that fails (full disk, I/O error): the write in doubt is kept and tried again
//! (its publisher waits), new persistent messages are refused with resource-limit-exceeded
//! before they reach a queue, what was confirmed stays, and everyone else carries on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clacks_broker::client::{ClientError, ConnectOptions, Connection, Message};
use clacks_broker::core::Broker;
use clacks_broker::server::{Server, ServerConfig};
use clacks_broker::wire::QueueDeclare;
use clacks_storage::{GroupCommit, MemoryStore, Recovered, Store, StoreError, StoreOp};

/// A store whose writes fail while `full` is set.
#[derive(Default)]
struct FlakyStore {
    inner: MemoryStore,
    full: AtomicBool,
}

impl Store for FlakyStore {
    fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(StoreError::Full);
        }
        self.inner.apply(ops)
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        self.inner.recover()
    }
}

#[tokio::test]
async fn a_failing_store_keeps_its_write_and_refuses_new_persistent_messages() {
    let store = Arc::new(FlakyStore::default());
    let journal = Arc::new(GroupCommit::start(store.clone()).expect("writer"));
    let broker = Arc::new(Broker::recover(journal.clone(), Recovered::default()).expect("broker"));
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allow_anonymous: true,
        ..ServerConfig::default()
    };
    let server = Server::bind_with(config, broker).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let opts = ConnectOptions::parse(&addr.to_string()).expect("url");

    let conn = Connection::open(opts.clone()).await.expect("connect");
    let s = conn.session_unique().await.expect("session");
    s.declare_queue(QueueDeclare {
        queue: Some("d".into()),
        durable: true,
        ..Default::default()
    })
    .await
    .expect("declare");
    let durable = |body: &str| {
        Message::new(body.to_string())
            .with_routing_key("d")
            .with_durable(true)
    };
    s.send("", durable("confirmed"))
        .await
        .expect("first message");

    store.full.store(true, Ordering::SeqCst);
    // The write carrying this message fails: it is not given up but kept, and its
    // publisher waits, until the store takes it.
    let stalled = s
        .transfer_sync("", durable("stalled"))
        .await
        .expect("transfer");
    // Once the writer knows, the broker refuses new persistent messages before they
    // enter a queue.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while journal.refusal().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the failure was noticed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let probe = conn.session_unique().await.expect("session");
    let refused = match probe.send("", durable("refused")).await {
        Err(ClientError::Session { code, text }) => (code, text),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused.0, 506, "{}", refused.1);

    // Another client is served meanwhile: transient work needs no store.
    let other = Connection::open(opts.clone()).await.expect("connect");
    let s2 = other.session_unique().await.expect("session");
    s2.declare_queue(QueueDeclare {
        queue: Some("t".into()),
        ..Default::default()
    })
    .await
    .expect("declare transient");
    s2.send("", Message::new("fine").with_routing_key("t"))
        .await
        .expect("transient send");
    assert_eq!(
        s2.query_queue("d").await.expect("query").message_count,
        Some(2),
        "the refused message never reached the queue"
    );

    store.full.store(false, Ordering::SeqCst);
    tokio::time::timeout(std::time::Duration::from_secs(30), stalled)
        .await
        .expect("the kept write goes through once the store works")
        .expect("confirmed");
    let s3 = conn
        .session_unique()
        .await
        .expect("new session after the failure");
    s3.send("", durable("after"))
        .await
        .expect("store works again");
    let recovered = store.recover().expect("recover");
    let bodies: Vec<_> = recovered.messages.iter().map(|m| m.data.clone()).collect();
    assert_eq!(
        bodies.len(),
        3,
        "confirmed, kept and later messages are stored; the refused one is not"
    );
    let _ = stop.send(());
}
