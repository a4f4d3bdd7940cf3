//! Group commit: sessions submit batches of operations without waiting; one writer thread
//! applies everything that has queued up as one store write with one sync, then tells each
//! submitter that its batch is durable. Many transfers, one sync.
//!
//! The writer also keeps the disk from filling: it samples the free space after each write
//! and [`GroupCommit::refusal_for`] turns new durable work away while the space left, less
//! twice what is still in flight, is below the reserve. A write that fails anyway is not
//! given up: its batches stay pending, and their submitters waiting, while the writer tries
//! the store again; nothing is confirmed that is not on disk, and nothing refused is kept.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::{Store, StoreError, StoreOp};

/// Identifies a submitted batch; tickets are durable in the order they were issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// Called once a batch is durable, or failed.
pub type Callback = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Figures of the group commit so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Syncs done.
    pub commits: u64,
    /// Batches submitted and made durable.
    pub batches: u64,
    /// The most batches one sync covered.
    pub largest: u64,
    /// Writes that failed (and were tried again).
    pub failed_writes: u64,
    /// Time spent in store writes (each a write and its syncs), in microseconds.
    pub write_micros: u64,
}

/// Why the store turns new durable work away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The disk has less free space than the reserve kept for writes already under way.
    LowSpace {
        /// Bytes free.
        free: u64,
        /// Bytes to keep free.
        reserve: u64,
    },
    /// A write failed and is being tried again.
    Failing(StoreError),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::LowSpace { free, reserve } => write!(
                f,
                "message store is full: {free} bytes free on its disk, the reserve is {reserve}"
            ),
            Refusal::Failing(e) => write!(f, "message store writes fail ({e}); retrying"),
        }
    }
}

/// How often a writer with work in doubt, or a disk near its reserve, looks again.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// A store write takes up to about this many times the bytes it carries (sled's log and
/// its segment copies), so in-flight bytes count this much against the free space.
const WRITE_AMPLIFICATION: u64 = 2;

#[derive(Default)]
struct State {
    next: u64,
    durable: u64,
    /// Recent failed ticket ranges (inclusive), so a late waiter still hears of the failure.
    failures: Vec<(u64, u64, StoreError)>,
    waiters: BTreeMap<u64, Vec<Callback>>,
    stats: GroupStats,
    /// The last write failure, while its batches are being tried again.
    failing: Option<StoreError>,
}

/// What [`GroupCommit::refusal_for`] reads for every persistent message, without a lock.
struct Gate {
    /// Bytes the disk must keep free.
    reserve: AtomicU64,
    /// Free bytes at the last sample (`u64::MAX` when the store has no disk).
    free: AtomicU64,
    /// Bytes submitted and not yet written.
    in_flight: AtomicU64,
    /// Whether `State::failing` is set.
    failing: AtomicBool,
}

impl Gate {
    /// Whether `more` bytes would bring the disk within its reserve.
    fn short_of_space(&self, more: u64) -> Option<Refusal> {
        let reserve = self.reserve.load(Ordering::Relaxed);
        let free = self.free.load(Ordering::Relaxed);
        let in_flight = self.in_flight.load(Ordering::Relaxed).saturating_add(more);
        let need = reserve.saturating_add(in_flight.saturating_mul(WRITE_AMPLIFICATION));
        (free < need).then_some(Refusal::LowSpace { free, reserve })
    }

    /// Whether the writer should sample the disk again without waiting for work: near
    /// the reserve, space can come back at any time.
    fn near_reserve(&self) -> bool {
        let reserve = self.reserve.load(Ordering::Relaxed);
        self.short_of_space(reserve).is_some()
    }
}

struct Shared {
    state: Mutex<State>,
    gate: Gate,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer in front of a store.
pub struct GroupCommit {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    queue: Mutex<mpsc::Sender<(u64, Vec<StoreOp>)>>,
}

/// The bytes a batch carries, as they count against the disk's free space.
fn batch_bytes(ops: &[StoreOp]) -> u64 {
    ops.iter()
        .map(|op| match op {
            StoreOp::Enqueue { data, .. } => data.len() as u64,
            _ => 64,
        })
        .sum()
}

impl GroupCommit {
    /// Starts the writer thread for `store`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<GroupCommit> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            gate: Gate {
                reserve: AtomicU64::new(0),
                free: AtomicU64::new(store.available_space().unwrap_or(u64::MAX)),
                in_flight: AtomicU64::new(0),
                failing: AtomicBool::new(false),
            },
        });
        let (tx, rx) = mpsc::channel::<(u64, Vec<StoreOp>)>();
        let writer = shared.clone();
        let writer_store = store.clone();
        std::thread::Builder::new()
            .name("clacks-store".into())
            .spawn(move || write_loop(&*writer_store, &writer, &rx))?;
        Ok(GroupCommit {
            shared,
            store,
            queue: Mutex::new(tx),
        })
    }

    /// Queues `ops` to be written in order after everything submitted before.
    pub fn submit(&self, ops: Vec<StoreOp>) -> Ticket {
        self.shared
            .gate
            .in_flight
            .fetch_add(batch_bytes(&ops), Ordering::Relaxed);
        // The ticket is taken and the batch queued under one lock, so that tickets reach the
        // writer in order.
        let mut st = self.shared.lock();
        st.next += 1;
        let ticket = st.next;
        let sent = self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((ticket, ops));
        if sent.is_err() {
            st.failures.push((
                ticket,
                ticket,
                StoreError::Io("store writer stopped".into()),
            ));
            st.durable = st.durable.max(ticket);
        }
        Ticket(ticket)
    }

    /// Calls `done` once `ticket` is durable (at once if it already is).
    pub fn when_durable(&self, ticket: Ticket, done: Callback) {
        let mut st = self.shared.lock();
        if ticket.0 <= st.durable {
            let result = outcome(&st, ticket.0);
            drop(st);
            done(result);
        } else {
            st.waiters.entry(ticket.0).or_default().push(done);
        }
    }

    /// Figures so far.
    pub fn stats(&self) -> GroupStats {
        self.shared.lock().stats
    }

    /// Keeps `bytes` free on the store's disk: short of that, [`GroupCommit::refusal_for`]
    /// says the store is full, so that it never runs out of space in the middle of a write.
    pub fn set_min_free(&self, bytes: u64) {
        let gate = &self.shared.gate;
        gate.reserve.store(bytes, Ordering::Relaxed);
        if let Some(free) = self.store.available_space() {
            gate.free.store(free, Ordering::Relaxed);
        }
    }

    /// Why new durable work of about `bytes` (a persistent message, a purge) should be
    /// refused now: a failed write not yet made good, or a disk that would come within
    /// its reserve. `None` when the store takes it.
    pub fn refusal_for(&self, bytes: u64) -> Option<Refusal> {
        let gate = &self.shared.gate;
        if gate.failing.load(Ordering::Acquire) {
            if let Some(e) = self.shared.lock().failing.clone() {
                return Some(Refusal::Failing(e));
            }
        }
        gate.short_of_space(bytes)
    }

    /// [`GroupCommit::refusal_for`] work that adds nothing to the disk.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal_for(0)
    }
}

fn outcome(st: &State, ticket: u64) -> Result<(), StoreError> {
    match st
        .failures
        .iter()
        .find(|(lo, hi, _)| (*lo..=*hi).contains(&ticket))
    {
        Some((_, _, e)) => Err(e.clone()),
        None => Ok(()),
    }
}

fn write_loop(store: &dyn Store, shared: &Shared, rx: &mpsc::Receiver<(u64, Vec<StoreOp>)>) {
    // Batches written in vain, kept in order to be written again: (first, last, ops).
    let mut doubt: Option<(u64, u64, Vec<StoreOp>)> = None;
    let mut failures_logged = 0u32;
    loop {
        // Once the broker is gone, so is the writer: what it could not write was never
        // confirmed to anyone.
        let received = if doubt.is_some() || shared.gate.near_reserve() {
            match rx.recv_timeout(RETRY_INTERVAL) {
                Ok(batch) => Some(batch),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(batch) => Some(batch),
                Err(_) => break,
            }
        };
        let (mut first, mut last, mut ops) = doubt.take().unwrap_or((0, 0, Vec::new()));
        if let Some((t, more)) = received {
            if first == 0 {
                first = t;
            }
            last = t;
            ops.extend(more);
            // Everything already queued joins this commit.
            while let Ok((t, more)) = rx.try_recv() {
                ops.extend(more);
                last = t;
            }
        }
        let began = std::time::Instant::now();
        let result = if ops.is_empty() {
            Ok(())
        } else {
            store.resume().and_then(|()| store.apply(&ops))
        };
        let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(free) = store.available_space() {
            shared.gate.free.store(free, Ordering::Relaxed);
        }
        let mut st = shared.lock();
        if !ops.is_empty() {
            st.stats.write_micros = st.stats.write_micros.saturating_add(took);
        }
        if let Err(e) = result {
            st.stats.failed_writes += 1;
            if failures_logged < 10 || failures_logged.is_multiple_of(300) {
                tracing::error!("store write failed, kept to be tried again: {e}");
            }
            failures_logged += 1;
            st.failing = Some(e);
            shared.gate.failing.store(true, Ordering::Release);
            doubt = Some((first, last, ops));
            continue;
        }
        if st.failing.take().is_some() {
            shared.gate.failing.store(false, Ordering::Release);
            tracing::info!("store writes succeed again");
            failures_logged = 0;
        }
        if last == 0 {
            continue;
        }
        let written = batch_bytes(&ops);
        let _ = shared
            .gate
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(written))
            });
        st.durable = last;
        st.stats.commits += 1;
        st.stats.batches += last - first + 1;
        st.stats.largest = st.stats.largest.max(last - first + 1);
        let later = st.waiters.split_off(&(last + 1));
        let ready = std::mem::replace(&mut st.waiters, later);
        drop(st);
        for done in ready.into_values().flatten() {
            done(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn waiters_hear_in_order_and_late_waiters_at_once() {
        let store = Arc::new(MemoryStore::new());
        let g = GroupCommit::start(store).expect("start");
        let (tx, rx) = mpsc::channel();
        let mut last = Ticket(0);
        for i in 0..100u64 {
            last = g.submit(vec![StoreOp::Delivered {
                queue: "q".into(),
                seq: i,
            }]);
            let tx = tx.clone();
            g.when_durable(
                last,
                Box::new(move |r| tx.send((i, r.is_ok())).expect("send")),
            );
        }
        let got: Vec<(u64, bool)> = (0..100).map(|_| rx.recv().expect("recv")).collect();
        assert!(got.iter().all(|(_, ok)| *ok));
        let mut ids: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..100).collect::<Vec<_>>());
        let (tx2, rx2) = mpsc::channel();
        g.when_durable(last, Box::new(move |r| tx2.send(r.is_ok()).expect("send")));
        assert!(rx2.recv().expect("late waiter"));
        let stats = g.stats();
        assert_eq!(stats.batches, 100);
        assert!(stats.commits <= 100);
    }

    /// A store whose writes fail while `failing` is set and whose disk has `free` bytes.
    #[derive(Default)]
    struct Disk {
        inner: MemoryStore,
        failing: std::sync::atomic::AtomicBool,
        free: AtomicU64,
        resumes: AtomicU64,
    }

    impl Store for Disk {
        fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Full);
            }
            self.inner.apply(ops)
        }
        fn resume(&self) -> Result<(), StoreError> {
            self.resumes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn available_space(&self) -> Option<u64> {
            Some(self.free.load(Ordering::SeqCst))
        }
        fn recover(&self) -> Result<crate::Recovered, StoreError> {
            self.inner.recover()
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn enqueue(seq: u64) -> Vec<StoreOp> {
        vec![
            crate::testing::queue("q"),
            StoreOp::Enqueue {
                queue: "q".into(),
                seq,
                data: bytes::Bytes::from_static(b"m"),
            },
        ]
    }

    #[test]
    fn a_failed_write_is_kept_and_tried_again_until_it_goes_through() {
        let disk = Arc::new(Disk::default());
        disk.free.store(1 << 30, Ordering::SeqCst);
        let g = GroupCommit::start(disk.clone()).expect("start");
        g.set_min_free(1 << 20);
        assert_eq!(g.refusal(), None);
        disk.failing.store(true, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        for seq in 1..=2 {
            let tx = tx.clone();
            let t = g.submit(enqueue(seq));
            g.when_durable(t, Box::new(move |r| tx.send(r).expect("send")));
        }
        wait_until("the failure is reported", || {
            matches!(g.refusal(), Some(Refusal::Failing(StoreError::Full)))
        });
        assert!(rx.try_recv().is_err(), "nobody hears of a write in doubt");
        disk.failing.store(false, Ordering::SeqCst);
        assert_eq!(rx.recv().expect("first"), Ok(()));
        assert_eq!(rx.recv().expect("second"), Ok(()));
        assert_eq!(disk.inner.recover().expect("recover").messages.len(), 2);
        assert!(disk.resumes.load(Ordering::SeqCst) >= 1, "reopened first");
        assert!(g.stats().failed_writes >= 1);
        wait_until("the refusal ends", || g.refusal().is_none());
    }

    #[test]
    fn a_disk_below_its_reserve_refuses_until_space_returns() {
        let disk = Arc::new(Disk::default());
        disk.free.store(100, Ordering::SeqCst);
        let g = GroupCommit::start(disk.clone()).expect("start");
        g.set_min_free(1000);
        assert_eq!(
            g.refusal(),
            Some(Refusal::LowSpace {
                free: 100,
                reserve: 1000
            })
        );
        // Nothing is written meanwhile: the writer looks again by itself.
        disk.free.store(5000, Ordering::SeqCst);
        wait_until("space is noticed", || g.refusal().is_none());
    }
}
