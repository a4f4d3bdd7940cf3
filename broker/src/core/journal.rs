//! How the broker model hands durable changes to the store: operations collect in an
//! [`OpLog`] while the broker lock is held, and leave as one batch when the lock is released.
//! The ticket of that batch is kept per thread, so the caller of a broker operation learns
//! (with [`journaled`]) whether it must wait for durability before completing its command.

use std::cell::Cell;
use std::sync::{Arc, Mutex};

use clacks_storage::{GroupCommit, StoreOp, Ticket};

/// Operations waiting to be submitted, shared by the broker and its durable queues.
#[derive(Debug, Clone, Default)]
pub struct OpLog(Arc<Mutex<Vec<StoreOp>>>);

impl OpLog {
    /// Adds one operation.
    pub fn push(&self, op: StoreOp) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// Takes everything recorded so far.
    pub fn take(&self) -> Vec<StoreOp> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

thread_local! {
    /// The newest ticket submitted by broker operations on this thread.
    static LAST_TICKET: Cell<Option<Ticket>> = const { Cell::new(None) };
}

/// Tickets are issued in increasing order, so the last one noted is the newest.
pub(crate) fn note_ticket(t: Ticket) {
    LAST_TICKET.with(|c| c.set(Some(t)));
}

/// Runs broker operations `f`; returns its value and the newest ticket it submitted, if
/// any. Tickets become durable in order, so waiting for that one covers everything `f`
/// changed.
pub fn journaled<T>(f: impl FnOnce() -> T) -> (T, Option<Ticket>) {
    // Forget tickets of work nobody waited for (a session ending, a timer).
    LAST_TICKET.with(|c| c.set(None));
    let value = f();
    (value, LAST_TICKET.with(|c| c.take()))
}

/// Waits until the store has `ticket` on disk; the error says why it never will.
///
/// # Errors
/// The store's write failed, or its writer stopped.
pub async fn wait_durable(journal: &GroupCommit, ticket: Ticket) -> Result<(), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    journal.when_durable(
        ticket,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the store writer stopped".into()),
    }
}
