//! `direct` routing: the routing key equals the binding key.

use std::collections::HashMap;

/// Queues by binding key.
#[derive(Debug, Default)]
pub struct DirectRouter {
    by_key: HashMap<String, Vec<String>>,
}

impl DirectRouter {
    pub(super) fn add(&mut self, queue: &str, key: &str) {
        self.by_key
            .entry(key.to_string())
            .or_default()
            .push(queue.to_string());
    }

    pub(super) fn remove(&mut self, queue: &str, key: &str) {
        if let Some(qs) = self.by_key.get_mut(key) {
            qs.retain(|q| q != queue);
            if qs.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    pub(super) fn route(&self, key: &str, out: &mut Vec<String>) {
        if let Some(qs) = self.by_key.get(key) {
            out.extend(qs.iter().cloned());
        }
    }
}
