//! `fanout` routing: every bound queue, whatever the key.

/// Bound queues, one entry per binding.
#[derive(Debug, Default)]
pub struct FanoutRouter {
    queues: Vec<String>,
}

impl FanoutRouter {
    pub(super) fn add(&mut self, queue: &str) {
        self.queues.push(queue.to_string());
    }

    pub(super) fn remove(&mut self, queue: &str) {
        if let Some(i) = self.queues.iter().position(|q| q == queue) {
            self.queues.remove(i);
        }
    }

    pub(super) fn route(&self, out: &mut Vec<String>) {
        out.extend(self.queues.iter().cloned());
    }
}
