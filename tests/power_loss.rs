//! Power loss, simulated: the data directory lives on `clacks-lazyfs`, a FUSE filesystem
//! that keeps every write not yet fsynced in memory only. Each cycle prepares a distributed
//! transaction branch with a persistent message; then, while a publisher streams
//! persistent messages, the test cuts the power (the unsynced writes are dropped and the
//! mount fails from then on), kills the broker, mounts the filesystem again and restarts
//! the broker on what the "disk" kept. The store must open, every message the broker
//! confirmed must be there, and the prepared branch must be in doubt and commit its
//! message: unlike `kill -9`, this catches a missing or misordered sync.
//!
//! The federation path gets the same treatment: a broker on the lazy filesystem pulls a
//! durable queue from a hub broker on a normal disk through a durable route, and loses
//! its power mid-stream. A message the hub confirmed to its publisher may then be on the
//! hub still or at the destination, never nowhere: the route accepts a message at the
//! source only once the destination completed it, so what it accepted must survive the cut.
//!
//! 10 cycles each; `CLACKS_LONG=1` (tests/run.sh --long) runs 100. Needs root and /dev/fuse.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clacks_broker::client::{ConnectOptions, Connection, Message, Session, SubscribeOptions};
use clacks_broker::wire::{
    DtxCommit, DtxEnd, DtxPrepare, DtxRecover, DtxSelect, DtxStart, ExchangeBind, QueueDeclare,
    RecoverResult, Value, XaResult, Xid,
};
use clacks_lazyfs::LazyFs;
use common::{cli, Binary, Rng};

const QUEUE: &str = "power-q";
/// Where each cycle's transaction branch puts its message.
const DTX_QUEUE: &str = "power-dtx";

fn xid(cycle: u32) -> Xid {
    Xid {
        format: Some(0),
        global_id: Some(Bytes::from(format!("cycle-{cycle}"))),
        branch_id: Some(Bytes::from_static(b"b")),
    }
}

/// The xa-result status of a dtx command.
async fn xa(s: &Session, c: impl Into<clacks_broker::wire::Command>) -> u16 {
    let r = s.call(c).await.expect("dtx command").expect("a result");
    XaResult::from_struct32(&r)
        .expect("xa-result")
        .status
        .expect("status")
        .0
}

/// Prepares a branch that enqueues one persistent message on [`DTX_QUEUE`]; returns once
/// the prepare is confirmed.
async fn prepare_branch(broker: &Binary, cycle: u32) {
    let conn = connect(broker).await;
    let s = conn.session_unique().await.expect("session");
    s.call(DtxSelect {}).await.expect("select");
    let start = DtxStart {
        xid: Some(xid(cycle)),
        join: false,
        resume: false,
    };
    assert_eq!(xa(&s, start).await, 0);
    let m = Message::new(format!("branch-{cycle}"))
        .with_routing_key(DTX_QUEUE)
        .with_durable(true);
    s.send("", m).await.expect("send in the branch");
    let end = DtxEnd {
        xid: Some(xid(cycle)),
        fail: false,
        suspend: false,
    };
    assert_eq!(xa(&s, end).await, 0);
    assert_eq!(
        xa(
            &s,
            DtxPrepare {
                xid: Some(xid(cycle))
            }
        )
        .await,
        0
    );
    // The branch stays prepared: its connection is left open until the power goes.
    std::mem::forget(s);
    std::mem::forget(conn);
}

/// After the restart: the branch is in doubt, and its commit delivers its message.
async fn commit_branch(broker: &Binary, cycle: u32, seed: u64) {
    let conn = connect(broker).await;
    let s = conn.session_unique().await.expect("session");
    let r = s
        .call(DtxRecover {})
        .await
        .expect("recover")
        .expect("result");
    let doubt: Vec<String> = RecoverResult::from_struct32(&r)
        .expect("recover-result")
        .in_doubt
        .map(|l| {
            l.items
                .iter()
                .filter_map(|v| match v {
                    Value::Struct32(x) => Xid::from_struct32(x).ok()?.global_id,
                    _ => None,
                })
                .map(|g| String::from_utf8_lossy(&g).into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        doubt.contains(&format!("cycle-{cycle}")),
        "cycle {cycle} (seed {seed}): the prepared branch was lost: {doubt:?}"
    );
    let commit = DtxCommit {
        xid: Some(xid(cycle)),
        one_phase: false,
    };
    assert_eq!(xa(&s, commit).await, 0, "cycle {cycle}: commit");
    let bodies = common::bodies(&s, DTX_QUEUE).await;
    assert_eq!(
        bodies,
        [format!("branch-{cycle}")],
        "cycle {cycle} (seed {seed}): the committed branch's message"
    );
    conn.close().await.expect("close");
}

fn config(data: &Path) -> String {
    format!(
        "data_dir = {:?}\nmin_free_disk_bytes = 0\n[agent]\nenabled = false\n",
        data.display().to_string()
    )
}

async fn connect(broker: &Binary) -> Connection {
    let opts = ConnectOptions::parse(&format!("amqp://guest:guest@{}", broker.addr)).expect("url");
    Connection::open(opts).await.expect("connect")
}

/// Publishes persistent messages to `queue`, numbered from `first`, until `stop`, 20 in
/// flight; the numbers the broker confirmed.
async fn publish(
    conn: Connection,
    queue: &'static str,
    first: u64,
    stop: Arc<AtomicBool>,
) -> BTreeSet<u64> {
    let mut confirmed = BTreeSet::new();
    let Ok(session) = conn.session_unique().await else {
        return confirmed;
    };
    let mut window = std::collections::VecDeque::new();
    let mut n = first;
    while !stop.load(Ordering::SeqCst) {
        let msg = Message::new(n.to_string())
            .with_routing_key(queue)
            .with_durable(true);
        let Ok(c) = session.transfer("", msg).await else {
            break;
        };
        window.push_back((n, c));
        n += 1;
        if window.len() >= 20 {
            let Some((id, c)) = window.pop_front() else {
                break;
            };
            // After the power cut nothing completes: stop waiting once told to.
            tokio::select! {
                r = c => match r {
                    Ok(()) => { confirmed.insert(id); }
                    Err(_) => break,
                },
                () = wait_for(&stop) => break,
            }
        }
    }
    // Whatever is still in flight may or may not have made it.
    std::mem::forget(session);
    std::mem::forget(conn);
    confirmed
}

async fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Drains the queue after the restart: every number found (duplicates are no loss).
async fn drain(broker: &Binary) -> BTreeSet<u64> {
    let conn = connect(broker).await;
    let session = conn.session_unique().await.expect("session");
    let query = session.query_queue(QUEUE).await.expect("query");
    if query.queue.is_none() {
        // The durable queue itself was lost: so is every message on it.
        return BTreeSet::new();
    }
    let depth = query.message_count.unwrap_or(0);
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
    let mut seen = BTreeSet::new();
    let mut last_accept = None;
    for _ in 0..depth {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("a recovered message in time")
            .expect("session")
            .expect("message");
        seen.insert(String::from_utf8_lossy(&d.body).parse().expect("number"));
        // Accepts stream: waiting on each would cost a store sync per message.
        last_accept = Some(sub.accept(&d).await.expect("accept"));
    }
    if let Some(accepted) = last_accept {
        accepted.await.expect("accepted");
    }
    conn.close().await.expect("close");
    seen
}

fn cycles() -> u32 {
    if std::env::var_os("CLACKS_LONG").is_some() {
        100
    } else {
        10
    }
}

#[test]
fn confirmed_messages_survive_power_loss() {
    let cycles = cycles();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut rng, seed) = Rng::from_clock();
    let backing = tempfile::tempdir().expect("backing dir");
    let mount = tempfile::tempdir().expect("mount point");
    let data = mount.path().join("data");
    let mut fs = LazyFs::mount(backing.path(), mount.path()).expect("mount clacks-lazyfs");
    let mut broker = Binary::start(&config(&data));
    let (mut confirmed_total, mut dropped_total) = (0usize, 0u64);
    let mut next = 0u64;
    for cycle in 0..cycles {
        // A fresh queue declare each cycle: the first one makes it durable on disk.
        let conn = rt.block_on(async {
            let conn = connect(&broker).await;
            let s = conn.session_unique().await.expect("session");
            for q in [QUEUE, DTX_QUEUE] {
                s.declare_queue(QueueDeclare {
                    queue: Some(q.into()),
                    durable: true,
                    ..Default::default()
                })
                .await
                .expect("declare");
            }
            prepare_branch(&broker, cycle).await;
            conn
        });
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = rt.spawn(publish(conn, QUEUE, next, stop.clone()));
        std::thread::sleep(Duration::from_millis(150 + rng.next() % 350));

        // The power goes: what was not synced is gone, and so is the broker.
        dropped_total += fs.crash().expect("crash");
        let dir = broker.kill();
        stop.store(true, Ordering::SeqCst);
        let confirmed = rt.block_on(publisher).expect("publisher");
        next += 1_000_000;

        fs = LazyFs::mount(backing.path(), mount.path()).expect("mount again");
        let started = Instant::now();
        broker = Binary::start_in(dir, &config(&data));
        let seen = rt.block_on(drain(&broker));
        rt.block_on(commit_branch(&broker, cycle, seed));
        let lost: Vec<&u64> = confirmed.difference(&seen).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle} (seed {seed}): {} of {} confirmed messages lost after the power cut, \
             first {:?}",
            lost.len(),
            confirmed.len(),
            lost.first()
        );
        confirmed_total += confirmed.len();
        println!(
            "cycle {cycle}: {} confirmed, {} recovered, restart and drain in {} ms",
            confirmed.len(),
            seen.len(),
            started.elapsed().as_millis()
        );
    }
    assert!(confirmed_total > 0, "the publisher got nothing confirmed");
    assert!(
        dropped_total > 0,
        "no power cut dropped anything: the test did not test"
    );
    println!(
        "{cycles} power cuts: {confirmed_total} confirmed messages all recovered, \
         {cycles} prepared branches in doubt and committed; {dropped_total} unsynced bytes dropped"
    );
    drop(broker);
    let _ = fs.unmount();
}

/// The hub's queue that the route drains, and the destination's queue it fills.
const OUTBOX: &str = "outbox";
const INBOX: &str = "inbox";

/// The destination broker's config: its data on the lazy filesystem, an agent for the
/// link commands, and quick federation retries.
fn destination_config(data: &Path) -> String {
    format!(
        "data_dir = {:?}\nmin_free_disk_bytes = 0\n[agent]\nadmins = [\"guest\"]\n\
         [federation]\nretry_min_ms = 100\nretry_max_ms = 500\nheartbeat_s = 1\n",
        data.display().to_string()
    )
}

/// Declares a durable queue, bound to amq.direct by its name when `bind`.
async fn declare_durable(broker: &Binary, queue: &str, bind: bool) {
    let conn = connect(broker).await;
    let s = conn.session_unique().await.expect("session");
    s.declare_queue(QueueDeclare {
        queue: Some(queue.into()),
        durable: true,
        ..Default::default()
    })
    .await
    .expect("declare");
    if bind {
        s.bind(ExchangeBind {
            queue: Some(queue.into()),
            exchange: Some("amq.direct".into()),
            binding_key: Some(queue.into()),
            arguments: None,
        })
        .await
        .expect("bind");
    }
    conn.close().await.expect("close");
}

/// Receives from `queue` until every number of `expected` came (duplicates are no loss);
/// the numbers still missing when nothing more arrives in time.
async fn receive_all(broker: &Binary, queue: &str, expected: &BTreeSet<u64>) -> BTreeSet<u64> {
    let conn = connect(broker).await;
    let session = conn.session_unique().await.expect("session");
    let mut sub = session
        .subscribe(
            queue,
            SubscribeOptions {
                capacity: Some(200),
                ..Default::default()
            },
        )
        .await
        .expect("subscribe");
    let mut missing = expected.clone();
    let mut last_accept = None;
    while !missing.is_empty() {
        // Generous: after a restart the link reconnects with a backoff before it moves
        // what stayed at the hub.
        let Ok(next) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await else {
            break;
        };
        let d = next.expect("session").expect("message");
        missing.remove(&String::from_utf8_lossy(&d.body).parse().expect("number"));
        last_accept = Some(sub.accept(&d).await.expect("accept"));
    }
    if let Some(accepted) = last_accept {
        accepted.await.expect("accepted");
    }
    conn.close().await.expect("close");
    missing
}

#[test]
fn federated_messages_survive_power_loss_of_the_destination() {
    let cycles = cycles();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut rng, seed) = Rng::from_clock();
    let hub = Binary::start("[agent]\nenabled = false\n[users]\nfed = \"fedpw\"\n");
    let backing = tempfile::tempdir().expect("backing dir");
    let mount = tempfile::tempdir().expect("mount point");
    let data = mount.path().join("data");
    let mut fs = LazyFs::mount(backing.path(), mount.path()).expect("mount clacks-lazyfs");
    let mut dest = Binary::start(&destination_config(&data));

    // Set up once: the link, the route and the inbox must themselves survive every cut.
    rt.block_on(declare_durable(&hub, OUTBOX, false));
    rt.block_on(declare_durable(&dest, INBOX, true));
    let hub_url = format!("amqp://fed:fedpw@{}", hub.addr);
    cli(&dest, &["link", "add", "hub", &hub_url, "--durable"]);
    cli(
        &dest,
        &[
            "route",
            "add",
            "drain",
            "--link",
            "hub",
            "--queue",
            OUTBOX,
            "--dest",
            "amq.direct",
            "--dest-key",
            INBOX,
            "--durable",
        ],
    );

    let (mut confirmed_total, mut dropped_total) = (0usize, 0u64);
    let mut next = 0u64;
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let conn = rt.block_on(connect(&hub));
        let publisher = rt.spawn(publish(conn, OUTBOX, next, stop.clone()));
        std::thread::sleep(Duration::from_millis(300 + rng.next() % 500));

        dropped_total += fs.crash().expect("crash");
        let dir = dest.kill();
        stop.store(true, Ordering::SeqCst);
        let confirmed = rt.block_on(publisher).expect("publisher");
        next += 1_000_000;

        fs = LazyFs::mount(backing.path(), mount.path()).expect("mount again");
        let started = Instant::now();
        dest = Binary::start_in(dir, &destination_config(&data));
        // The restarted destination's route drains the hub again: every message the hub
        // confirmed reaches the inbox, whether it had crossed before the cut or not.
        let missing = rt.block_on(receive_all(&dest, INBOX, &confirmed));
        assert!(
            missing.is_empty(),
            "cycle {cycle} (seed {seed}): {} of {} confirmed messages never reached the \
             destination after its power cut, first {:?}",
            missing.len(),
            confirmed.len(),
            missing.first()
        );
        let left_at_hub = rt.block_on(async {
            let conn = connect(&hub).await;
            let s = conn.session_unique().await.expect("session");
            common::depth(&s, OUTBOX).await
        });
        confirmed_total += confirmed.len();
        println!(
            "cycle {cycle}: {} confirmed at the hub, all at the destination {} ms after its \
             restart ({left_at_hub} left at the hub)",
            confirmed.len(),
            started.elapsed().as_millis()
        );
    }
    assert!(confirmed_total > 0, "the hub confirmed nothing");
    assert!(
        dropped_total > 0,
        "no power cut dropped anything: the test did not test"
    );
    println!(
        "{cycles} power cuts of a federation destination: {confirmed_total} messages all \
         delivered; {dropped_total} unsynced bytes dropped"
    );
    drop(dest);
    let _ = fs.unmount();
}
