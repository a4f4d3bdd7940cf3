//! Message groups over real sockets: three consumers on their own connections share a
//! grouped queue; every group is worked by one consumer at a time and in order, and the
//! group a consumer held when its connection died goes on to the others.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clacks_broker::client::{Connection, Message, SubscribeOptions, Subscription};
use clacks_broker::wire::{FieldTable, QueueDeclare, Value};
use common::{guest_session, Binary};

const DEADLINE: Duration = Duration::from_secs(60);
/// Fewer groups than consumers, so that without groups two would work one at once.
const GROUPS: usize = 2;
const PER_GROUP: usize = 20;

/// What the consumers did, checked as they do it.
#[derive(Default)]
struct Ledger {
    /// The consumer working each group now.
    holder: HashMap<String, usize>,
    /// The sequence numbers each group was worked in.
    done: HashMap<String, Vec<i64>>,
    /// Who worked which group.
    workers: HashMap<String, Vec<usize>>,
    /// The group the dying consumer held when it died.
    died_holding: Option<String>,
}

fn header(m: &clacks_broker::client::Delivery, key: &str) -> Value {
    m.message_properties
        .application_headers
        .as_ref()
        .and_then(|h| h.get(key))
        .cloned()
        .unwrap_or(Value::Void)
}

/// Works messages until the ledger has them all; the consumer `dies` (its connection is
/// dropped holding an unsettled message) after that many.
async fn consume(
    id: usize,
    conn: Connection,
    mut sub: Subscription,
    ledger: Arc<Mutex<Ledger>>,
    dies_after: Option<usize>,
) {
    let mut worked = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
        let Ok(Ok(Some(d))) = next else {
            let l = ledger.lock().expect("ledger");
            if l.done.values().map(Vec::len).sum::<usize>() == GROUPS * PER_GROUP {
                return;
            }
            continue;
        };
        let group = header(&d, "customer").as_str().expect("group").to_string();
        let seq = header(&d, "seq").as_i64().expect("seq");
        {
            let mut l = ledger.lock().expect("ledger");
            let holder = *l.holder.entry(group.clone()).or_insert(id);
            assert_eq!(
                holder, id,
                "group {group} given to {id} while {holder} works it"
            );
        }
        if dies_after == Some(worked) {
            // Dies holding the message: no accept, the connection just goes (and with it
            // the claim on the group, which the broker must now hand on).
            let mut l = ledger.lock().expect("ledger");
            l.holder.remove(&group);
            l.died_holding = Some(group);
            drop(l);
            drop(sub);
            drop(conn);
            return;
        }
        // The work itself, long enough for the others to ask for more meanwhile.
        tokio::time::sleep(Duration::from_millis(2)).await;
        {
            let mut l = ledger.lock().expect("ledger");
            l.done.entry(group.clone()).or_default().push(seq);
            l.workers.entry(group.clone()).or_default().push(id);
            // Let go of the group before the accept frees it at the broker.
            l.holder.remove(&group);
        }
        sub.accept(&d).await.expect("accept");
        worked += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_worked_in_order_by_one_consumer_at_a_time() {
    let b = Binary::start("");
    let (_pconn, producer) = guest_session(&b).await;
    let mut args = FieldTable::new();
    args.insert("qpid.group_header_key", "customer");
    args.insert("qpid.shared_msg_group", Value::Int64(1));
    producer
        .declare_queue(QueueDeclare {
            queue: Some("work".into()),
            arguments: Some(args),
            ..QueueDeclare::default()
        })
        .await
        .expect("declare");
    for seq in 0..PER_GROUP {
        for g in 0..GROUPS {
            let mut h = FieldTable::new();
            h.insert("customer", format!("customer-{g}"));
            h.insert("seq", Value::Int64(seq as i64));
            let mut m = Message::new(format!("{g}/{seq}")).with_routing_key("work");
            m.message_properties.application_headers = Some(h);
            producer.send("", m).await.expect("send");
        }
    }
    producer.sync().await.expect("sync");

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // All three subscribe before any starts working, so that they share the queue.
    let mut consumers = Vec::new();
    for _ in 0..3 {
        let (conn, s) = guest_session(&b).await;
        let sub = s
            .subscribe(
                "work",
                SubscribeOptions {
                    capacity: Some(1),
                    ..SubscribeOptions::default()
                },
            )
            .await
            .expect("subscribe");
        consumers.push((conn, sub));
    }
    let mut tasks = Vec::new();
    for (id, (conn, sub)) in consumers.into_iter().enumerate() {
        // Consumer 2 dies holding the second message it is given.
        let dies = (id == 2).then_some(1);
        tasks.push(tokio::spawn(consume(id, conn, sub, ledger.clone(), dies)));
    }
    for t in tasks {
        tokio::time::timeout(DEADLINE, t)
            .await
            .expect("consumers finish in time")
            .expect("consumer task");
    }
    let l = ledger.lock().expect("ledger");
    for g in 0..GROUPS {
        let group = format!("customer-{g}");
        let seqs = l.done.get(&group).cloned().unwrap_or_default();
        assert_eq!(
            seqs,
            (0..PER_GROUP as i64).collect::<Vec<_>>(),
            "{group} worked once each, in order"
        );
    }
    let held = l
        .died_holding
        .clone()
        .expect("consumer 2 died holding a message");
    let by_dead = l.workers.values().flatten().filter(|w| **w == 2).count();
    assert_eq!(by_dead, 1, "the dead consumer finished one message");
    assert!(
        l.workers[&held].iter().any(|w| *w != 2),
        "{held}, held by the dead consumer, went on to another: {:?}",
        l.workers
    );
}
