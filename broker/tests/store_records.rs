//! The broker keeps the store consistent with memory: whatever leaves a durable queue
//! (accept, ring overflow, last-value replacement, purge, delete) leaves the store too, so no
//! orphan record remains and nothing comes back after a restart.

use std::sync::{Arc, Mutex};

use clacks_broker::core::broker::{QueueDeclare, Subscribe};
use clacks_broker::core::{Broker, Delivery, DeliverySink, Draft, Held, Message, SessionId};
use clacks_broker::wire::{
    DeliveryProperties, FieldTable, MessageDeliveryMode, MessageProperties, Value,
};
use clacks_storage::{GroupCommit, MemoryStore, Recovered, Store};

fn persistent(key: &str, body: &str, lvq: Option<&str>) -> Arc<Message> {
    let mut m = Draft::new(key, body.to_string());
    m.delivery = DeliveryProperties {
        routing_key: Some(key.into()),
        delivery_mode: Some(MessageDeliveryMode::PERSISTENT),
        ..Default::default()
    };
    if let Some(v) = lvq {
        let mut h = FieldTable::new();
        h.insert("k", v);
        m.set_properties(MessageProperties {
            application_headers: Some(h),
            ..Default::default()
        });
    }
    Arc::new(m.seal())
}

#[derive(Default)]
struct Collect(Mutex<Vec<Delivery>>);
impl DeliverySink for Collect {
    fn deliver(&self, d: Delivery) {
        self.0.lock().expect("lock").push(d);
    }
}

/// Waits until every batch submitted so far is durable.
fn settle(broker: &Broker) {
    let journal = broker.journal().expect("journal");
    let (tx, rx) = std::sync::mpsc::channel();
    let t = journal.submit(Vec::new());
    journal.when_durable(t, Box::new(move |r| tx.send(r).expect("send")));
    rx.recv().expect("durable").expect("ok");
}

fn declare(broker: &Broker, name: &str, args: FieldTable) {
    broker
        .declare_queue(
            SessionId(0),
            QueueDeclare {
                name: name.into(),
                durable: true,
                args,
                ..Default::default()
            },
        )
        .expect("declare");
}

#[test]
fn removals_leave_no_records_behind() {
    let store = Arc::new(MemoryStore::new());
    let journal = Arc::new(GroupCommit::start(store.clone()).expect("writer"));
    let broker = Broker::recover(journal, Recovered::default()).expect("broker");
    let session = broker.new_session(broker.new_connection());

    let mut ring = FieldTable::new();
    ring.insert("qpid.max_count", Value::Int64(2));
    ring.insert("qpid.policy_type", "ring");
    declare(&broker, "ring", ring);
    let mut lvq = FieldTable::new();
    lvq.insert("qpid.last_value_queue_key", "k");
    declare(&broker, "lvq", lvq);
    declare(&broker, "plain", FieldTable::new());
    for i in 0..5 {
        broker
            .publish("", persistent("ring", &format!("r{i}"), None))
            .expect("publish");
        broker
            .publish("", persistent("lvq", &format!("v{i}"), Some("same")))
            .expect("publish");
        broker
            .publish("", persistent("plain", &format!("p{i}"), None))
            .expect("publish");
    }
    settle(&broker);
    let r = store.recover().expect("recover");
    let count = |q: &str| r.messages.iter().filter(|m| &*m.queue == q).count();
    assert_eq!((count("ring"), count("lvq"), count("plain")), (2, 1, 5));

    // Accept two of the plain queue's messages through a consumer.
    let sink = Arc::new(Collect::default());
    broker
        .subscribe(
            session,
            Subscribe {
                queue: "plain".into(),
                destination: "c".into(),
                acquire: true,
                accept_explicit: true,
                exclusive: false,
                sink: sink.clone(),
            },
        )
        .expect("subscribe");
    broker.flow(session, "c", false, 2).expect("flow");
    broker.flow(session, "c", true, u32::MAX).expect("flow");
    let held: Vec<Held> = sink
        .0
        .lock()
        .expect("lock")
        .iter()
        .map(|d| Held {
            queue: d.queue.clone(),
            position: d.position,
        })
        .collect();
    assert_eq!(held.len(), 2);
    broker.accept(&held);
    settle(&broker);
    let r = store.recover().expect("recover");
    assert_eq!(
        r.messages.iter().filter(|m| &*m.queue == "plain").count(),
        3
    );

    broker.purge_queue(session, "lvq").expect("purge");
    broker
        .delete_queue(session, "ring", false, false)
        .expect("delete");
    broker.end_session(session, &[]);
    broker
        .delete_queue(SessionId(9), "plain", false, false)
        .expect("delete");
    settle(&broker);
    let r = store.recover().expect("recover");
    assert!(
        r.messages.is_empty(),
        "no message records left: {:?}",
        r.messages
    );
    assert_eq!(r.queues.len(), 1, "only the lvq queue record remains");
    assert_eq!(store.len(), 1, "no orphan keys");
}
