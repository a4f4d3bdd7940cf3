//! Durability against `kill -9`: a publisher sends persistent messages and records the ones
//! the broker completed; the broker is killed at a random moment, restarted on the same data
//! directory and drained. Every completed message must be there exactly once, and messages
//! held unaccepted by a consumer before the crash come back marked redelivered.
//!
//! `CLACKS_LONG=1` (tests/run.sh --long) runs 200 cycles instead of 20.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use clacks_broker::client::{ConnectOptions, Connection, Message, SubscribeOptions};
use clacks_broker::wire::QueueDeclare;
use common::Binary;

const QUEUE: &str = "crash-q";

/// A small xorshift generator seeded from the clock: each run kills at other moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn connect(broker: &Binary) -> Connection {
    let opts = ConnectOptions::parse(&format!("amqp://guest:guest@{}", broker.addr)).expect("url");
    Connection::open(opts).await.expect("connect")
}

/// What one cycle saw before the kill.
struct Before {
    completed: BTreeSet<u64>,
    /// Messages a consumer held unaccepted, and whether a later publish completed (which
    /// makes their delivered marks durable: the store writes batches in order).
    held: BTreeSet<u64>,
    held_confirmed: bool,
}

/// Publishes until killed (by the caller, after `run_for`).
async fn publish_and_hold(broker: &Binary, first: u64, run_for: Duration) -> Before {
    let conn = connect(broker).await;
    let session = conn.session_unique().await.expect("session");
    session
        .declare_queue(QueueDeclare {
            queue: Some(QUEUE.into()),
            durable: true,
            ..Default::default()
        })
        .await
        .expect("declare");
    // A consumer that takes a few messages and never accepts them.
    let holder = conn.session_unique().await.expect("session");
    let mut sub = holder
        .subscribe(
            QUEUE,
            SubscribeOptions {
                capacity: Some(3),
                ..Default::default()
            },
        )
        .await
        .expect("subscribe");
    let mut before = Before {
        completed: BTreeSet::new(),
        held: BTreeSet::new(),
        held_confirmed: false,
    };
    let deadline = Instant::now() + run_for;
    let mut n = first;
    let mut window = std::collections::VecDeque::new();
    while Instant::now() < deadline {
        let msg = Message::new(n.to_string())
            .with_routing_key(QUEUE)
            .with_durable(true);
        let Ok(c) = session.transfer("", msg).await else {
            break;
        };
        window.push_back((n, c));
        n += 1;
        if window.len() >= 20 {
            let (id, c) = window.pop_front().expect("window");
            if c.await.is_err() {
                break;
            }
            before.completed.insert(id);
            if !before.held.is_empty() {
                before.held_confirmed = true;
            }
        }
        if before.held.len() < 3 {
            if let Ok(Ok(Some(d))) =
                tokio::time::timeout(Duration::from_millis(1), sub.next()).await
            {
                let body = String::from_utf8_lossy(&d.body).parse().expect("number");
                before.held.insert(body);
            }
        }
    }
    // Whatever is still in flight may or may not have made it.
    std::mem::forget(conn);
    before
}

/// Drains the queue after a restart: body → redelivered.
async fn drain(broker: &Binary) -> HashMap<u64, (u32, bool)> {
    let conn = connect(broker).await;
    let session = conn.session_unique().await.expect("session");
    let depth = session
        .query_queue(QUEUE)
        .await
        .expect("query")
        .message_count
        .unwrap_or(0);
    let mut sub = session
        .subscribe(
            QUEUE,
            SubscribeOptions {
                capacity: Some(200),
                ..Default::default()
            },
        )
        .await
        .expect("subscribe after restart");
    let mut seen: HashMap<u64, (u32, bool)> = HashMap::new();
    // The recovered depth is known; a short wait afterwards catches any extra copy.
    let mut received = 0;
    loop {
        let wait = if received < depth {
            Duration::from_secs(30)
        } else {
            Duration::from_millis(100)
        };
        let Ok(Ok(Some(d))) = tokio::time::timeout(wait, sub.next()).await else {
            break;
        };
        received += 1;
        let n: u64 = String::from_utf8_lossy(&d.body).parse().expect("number");
        let e = seen.entry(n).or_insert((0, false));
        e.0 += 1;
        e.1 |= d.redelivered();
        sub.accept(&d)
            .await
            .expect("accept")
            .await
            .expect("accepted");
    }
    conn.close().await.expect("close");
    seen
}

#[test]
fn completed_persistent_messages_survive_kill_9() {
    let cycles = if std::env::var_os("CLACKS_LONG").is_some() {
        200
    } else {
        20
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut rng = Rng(seed);
    let mut broker = Binary::start("");
    let mut next = 0u64;
    let mut total_completed = 0;
    let mut redelivery_checks = 0;
    for cycle in 0..cycles {
        let run_for = Duration::from_millis(100 + rng.next() % 400);
        let before = rt.block_on(publish_and_hold(&broker, next, run_for));
        next += 1_000_000;
        let dir = broker.kill();
        broker = Binary::start_in(dir, "");
        let seen = rt.block_on(drain(&broker));
        for n in &before.completed {
            let (count, _) = seen.get(n).unwrap_or_else(|| {
                panic!("cycle {cycle} (seed {seed}): completed message {n} lost")
            });
            assert_eq!(
                *count, 1,
                "cycle {cycle} (seed {seed}): message {n} delivered {count} times"
            );
        }
        for (n, (count, _)) in &seen {
            assert_eq!(
                *count, 1,
                "cycle {cycle} (seed {seed}): message {n} came back {count} times"
            );
        }
        if before.held_confirmed {
            redelivery_checks += before.held.len();
            for n in &before.held {
                let (_, redelivered) = seen.get(n).unwrap_or_else(|| {
                    panic!("cycle {cycle} (seed {seed}): held message {n} lost")
                });
                assert!(
                    redelivered,
                    "cycle {cycle} (seed {seed}): held message {n} not marked redelivered"
                );
            }
        }
        assert!(
            !before.completed.is_empty(),
            "cycle {cycle}: the publisher completed nothing"
        );
        total_completed += before.completed.len();
    }
    assert!(total_completed > cycles * 10);
    assert!(
        redelivery_checks > 0,
        "no held message was ever checked for redelivery"
    );
}
