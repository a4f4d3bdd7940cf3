//! Group commit: sessions submit batches of operations without waiting; one writer thread
//! applies everything that has queued up as one store write with one sync, then tells each
//! submitter that its batch is durable. Many transfers, one sync.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

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
}

#[derive(Default)]
struct State {
    next: u64,
    durable: u64,
    /// Recent failed ticket ranges (inclusive), so a late waiter still hears of the failure.
    failures: Vec<(u64, u64, StoreError)>,
    waiters: BTreeMap<u64, Vec<Callback>>,
    stats: GroupStats,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer in front of a store.
pub struct GroupCommit {
    shared: Arc<Shared>,
    queue: Mutex<mpsc::Sender<(u64, Vec<StoreOp>)>>,
}

impl GroupCommit {
    /// Starts the writer thread for `store`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<GroupCommit> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
        });
        let (tx, rx) = mpsc::channel::<(u64, Vec<StoreOp>)>();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("clacks-store".into())
            .spawn(move || write_loop(&*store, &writer, &rx))?;
        Ok(GroupCommit {
            shared,
            queue: Mutex::new(tx),
        })
    }

    /// Queues `ops` to be written in order after everything submitted before.
    pub fn submit(&self, ops: Vec<StoreOp>) -> Ticket {
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
    while let Ok((first, mut ops)) = rx.recv() {
        let mut last = first;
        // Everything already queued joins this commit.
        while let Ok((t, more)) = rx.try_recv() {
            ops.extend(more);
            last = t;
        }
        let result = if ops.is_empty() {
            Ok(())
        } else {
            store.apply(&ops)
        };
        if let Err(e) = &result {
            tracing::error!("store write failed: {e}");
        }
        let mut st = shared.lock();
        st.durable = last;
        st.stats.commits += 1;
        st.stats.batches += last - first + 1;
        st.stats.largest = st.stats.largest.max(last - first + 1);
        if let Err(e) = &result {
            st.failures.push((first, last, e.clone()));
            if st.failures.len() > 64 {
                st.failures.remove(0);
            }
        }
        let later = st.waiters.split_off(&(last + 1));
        let ready = std::mem::replace(&mut st.waiters, later);
        drop(st);
        for done in ready.into_values().flatten() {
            done(result.clone());
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
}
