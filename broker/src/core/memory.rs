//! What queued messages may cost: a broker-wide budget over every queue, so that no client
//! can make the broker swap, beside the size limit each queue has (set, or the default).

use std::sync::atomic::{AtomicU64, Ordering};

/// What a queued message costs beyond its body and header: its entry, its indexes and the
/// allocator's rounding, as measured with small messages.
pub const MESSAGE_OVERHEAD: u64 = 256;

/// The bytes all queues hold, against a limit. Changed only under the broker lock; atomic
/// so that management and metrics read it without taking the lock.
#[derive(Debug, Default)]
pub struct MemoryBudget {
    used: AtomicU64,
    /// 0: no limit.
    max: AtomicU64,
}

impl MemoryBudget {
    /// A budget with no limit.
    pub fn unlimited() -> MemoryBudget {
        MemoryBudget::default()
    }

    /// The bytes counted now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit, if there is one.
    pub fn max(&self) -> Option<u64> {
        Some(self.max.load(Ordering::Relaxed)).filter(|m| *m > 0)
    }

    /// Sets the limit; 0 removes it.
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Whether `cost` more bytes would pass the limit.
    pub fn would_exceed(&self, cost: u64) -> bool {
        self.max()
            .is_some_and(|m| self.used().saturating_add(cost) > m)
    }

    pub(crate) fn add(&self, cost: u64) {
        self.used.fetch_add(cost, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, cost: u64) {
        // Never below zero, whatever a bug elsewhere does.
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(cost))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_past_its_limit_and_none_refuses_nothing() {
        let b = MemoryBudget::unlimited();
        b.add(u64::MAX / 2);
        assert!(!b.would_exceed(u64::MAX / 2));
        b.set_max(1000);
        assert!(b.would_exceed(1));
        b.sub(u64::MAX / 2 - 900);
        assert_eq!(b.used(), 900);
        assert!(!b.would_exceed(100));
        assert!(b.would_exceed(101));
        b.sub(5000);
        assert_eq!(b.used(), 0);
    }
}
