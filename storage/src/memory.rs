//! A store in memory, for tests of the broker core: same key space, no disk.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::{kv, Recovered, Store, StoreError, StoreOp};

/// Keeps the key space in a map; `apply` is atomic and "durable" at once.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Number of keys held (tests check that nothing is left behind).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemoryStore {
    fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let writes = kv::writes(ops, |prefix| {
            Ok(map
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect())
        })?;
        for (k, v) in writes {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        kv::recover(map.iter().map(|(k, v)| Ok((k.clone(), v.clone()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::queue;
    use bytes::Bytes;

    fn enqueue(queue: &str, seq: u64, data: Vec<u8>) -> StoreOp {
        StoreOp::Enqueue {
            queue: queue.into(),
            seq,
            data: Bytes::from(data),
        }
    }

    #[test]
    fn recovery_joins_chunks_and_keeps_each_queue_in_order() {
        let store = MemoryStore::new();
        // Larger than three chunks, so that it is stored in four keys.
        let big: Vec<u8> = (0..3 * crate::record::CHUNK + 10)
            .map(|i| (i % 251) as u8)
            .collect();
        store
            .apply(&[
                queue("b"),
                queue("a"),
                enqueue("b", 7, b"b7".to_vec()),
                enqueue("a", 2, big.clone()),
                enqueue("a", 1, Vec::new()),
                enqueue("a", 3, b"a3".to_vec()),
                enqueue("gone", 1, b"no queue".to_vec()),
                StoreOp::Delivered {
                    queue: "a".into(),
                    seq: 3,
                },
            ])
            .expect("apply");
        let r = store.recover().expect("recover");
        let got: Vec<(&str, u64, bool, usize)> = r
            .messages
            .iter()
            .map(|m| (&*m.queue, m.seq, m.delivered, m.data.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 1, false, 0),
                ("a", 2, false, big.len()),
                ("a", 3, true, 2),
                ("b", 7, false, 2)
            ]
        );
        assert_eq!(r.messages[1].data, big);
        assert!(
            std::sync::Arc::ptr_eq(&r.messages[0].queue, &r.messages[2].queue),
            "one name per queue"
        );
    }
}
