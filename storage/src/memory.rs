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
