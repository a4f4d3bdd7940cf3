//! The sled store, made durable: sled 0.34's own flush only calls `sync_file_range`, so after
//! each flush every file sled wrote since the last sync gets an fdatasync, and the directory
//! an fsync when files came or went. Large values never reach sled's blob files: messages
//! are cut into chunks (see `record`).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::{kv, Recovered, Store, StoreError, StoreOp};

/// Size and modification time: a change means the file needs a sync.
type Stamp = (u64, Option<SystemTime>);

/// Broker state in a sled database under a data directory that one process holds.
pub struct SledStore {
    /// Always there; an `Option` so that a broken one can be leaked on drop.
    db: Option<sled::Db>,
    /// A write failed. sled 0.34 cannot recover from that in a running process: every
    /// later flush, its own drop included, waits forever for the write that failed. So
    /// the database is left alone until the broker restarts and reads what is on disk;
    /// the reserve of free space the group commit keeps is what makes this rare.
    broken: AtomicBool,
    dir: PathBuf,
    /// Held for the life of the store: the exclusive lock on the data directory.
    _lock: File,
    /// What each file looked like at the last sync.
    synced: Mutex<HashMap<PathBuf, Stamp>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, refusing a directory another process holds.
    ///
    /// # Errors
    /// `Locked` when another process has it; I/O errors.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        std::fs::create_dir_all(dir)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(dir.display().to_string()));
        }
        let sled_dir = dir.join("sled");
        let store = SledStore {
            db: Some(open_sled(&sled_dir)?),
            broken: AtomicBool::new(false),
            dir: sled_dir,
            _lock: lock,
            synced: Mutex::new(HashMap::new()),
        };
        store.sync()?;
        Ok(store)
    }

    /// Bytes the data directory takes on disk.
    ///
    /// # Errors
    /// I/O errors while walking it.
    pub fn disk_usage(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for (_, (len, _)) in files(&self.dir)? {
            total += len;
        }
        Ok(total)
    }

    /// A failure inside sled: the database is in doubt from now on (see `broken`).
    fn broke(&self, e: sled::Error) -> StoreError {
        self.broken.store(true, Ordering::SeqCst);
        e.into()
    }

    /// Runs `f` on the open database.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&sled::Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &self.db {
            Some(db) => f(db),
            None => Err(StoreError::Io("the store is closed".into())),
        }
    }

    /// Flushes sled, then makes every file it changed durable.
    fn sync(&self) -> Result<(), StoreError> {
        self.with_db(|db| db.flush().map(drop).map_err(|e| self.broke(e)))?;
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let now = files(&self.dir)?;
        for (path, stamp) in &now {
            if synced.get(path) != Some(stamp) {
                match File::open(path) {
                    Ok(f) => f.sync_data()?,
                    // sled removed it since the listing: nothing of it to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let names_changed =
            now.len() != synced.len() || now.keys().any(|p| !synced.contains_key(p));
        if names_changed {
            // New or removed files are only durable once their directory entry is.
            let mut dirs: Vec<&Path> = now.keys().filter_map(|p| p.parent()).collect();
            dirs.push(&self.dir);
            dirs.sort();
            dirs.dedup();
            for d in dirs {
                File::open(d)?.sync_all()?;
            }
        }
        *synced = now;
        Ok(())
    }
}

fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    Ok(sled::Config::new()
        .path(dir)
        // We decide when to flush: at each group commit.
        .flush_every_ms(None)
        .cache_capacity(64 << 20)
        .open()?)
}

/// Every regular file under `dir`, with its stamp.
fn files(dir: &Path) -> Result<HashMap<PathBuf, Stamp>, StoreError> {
    let mut out = HashMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed since the listing (sled's temporary snapshot files).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if meta.is_dir() {
                todo.push(entry.path());
            } else if meta.is_file() {
                out.insert(entry.path(), (meta.len(), meta.modified().ok()));
            }
        }
    }
    Ok(out)
}

impl Store for SledStore {
    fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.resume()?;
        self.apply_synced(ops)
    }

    fn resume(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Io(
                "a write to the store failed; restart the broker once the disk has room".into(),
            ));
        }
        Ok(())
    }

    fn available_space(&self) -> Option<u64> {
        fs2::available_space(&self.dir).ok()
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        self.with_db(|db| {
            kv::recover(db.iter().map(|e| {
                e.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            }))
        })
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if self.broken.load(Ordering::SeqCst) {
            // Dropping it would wait forever for the write that failed.
            std::mem::forget(self.db.take());
        }
    }
}

impl SledStore {
    fn apply_synced(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.with_db(|db| {
            let writes = kv::writes(ops, |prefix| {
                db.scan_prefix(prefix)
                    .keys()
                    .map(|k| k.map(|k| k.to_vec()).map_err(StoreError::from))
                    .collect()
            })?;
            let mut batch = sled::Batch::default();
            for (k, v) in writes {
                match v {
                    Some(v) => batch.insert(k, v),
                    None => batch.remove(k),
                }
            }
            db.apply_batch(batch).map_err(|e| self.broke(e))
        })?;
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::queue;
    use crate::{BindingRecord, ExchangeRecord};
    use bytes::Bytes;

    #[test]
    fn state_survives_reopen_and_removals_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = Bytes::from(vec![7u8; 100_000]);
        {
            let s = SledStore::open(dir.path()).expect("open");
            s.apply(&[
                queue("q"),
                StoreOp::PutExchange(ExchangeRecord {
                    name: "x".into(),
                    kind: "topic".into(),
                    alternate: Some("alt".into()),
                    auto_delete: true,
                    args: Bytes::new(),
                }),
                StoreOp::PutBinding(BindingRecord {
                    exchange: "x".into(),
                    queue: "q".into(),
                    key: "a.#".into(),
                    args: Bytes::from_static(b"b"),
                }),
                StoreOp::PutExchangeBinding(crate::ExchangeBindingRecord {
                    source: "x".into(),
                    destination: "amq.fanout".into(),
                    key: "a.*".into(),
                    args: Bytes::from_static(b"e"),
                }),
                StoreOp::Enqueue {
                    queue: "q".into(),
                    seq: 2,
                    data: big.clone(),
                },
                StoreOp::Enqueue {
                    queue: "q".into(),
                    seq: 1,
                    data: Bytes::from_static(b"small"),
                },
                StoreOp::Delivered {
                    queue: "q".into(),
                    seq: 2,
                },
                StoreOp::PutUser(crate::UserRecord {
                    name: "alice".into(),
                    credentials: Bytes::from_static(b"verifiers"),
                }),
                StoreOp::PutFederation(crate::FederationRecord {
                    kind: crate::FederationKind::Link,
                    name: "hub".into(),
                    data: Bytes::from_static(b"{link}"),
                }),
                StoreOp::PutFederation(crate::FederationRecord {
                    kind: crate::FederationKind::Route,
                    name: "hub".into(),
                    data: Bytes::from_static(b"{route}"),
                }),
                StoreOp::PutPrepared(crate::PreparedRecord {
                    xid: Bytes::from_static(b"xid-1"),
                    data: Bytes::from_static(b"work"),
                }),
            ])
            .expect("apply");
            // A second process (here: a second open) is refused.
            assert!(matches!(
                SledStore::open(dir.path()),
                Err(StoreError::Locked(_))
            ));
        }
        let s = SledStore::open(dir.path()).expect("reopen");
        let r = s.recover().expect("recover");
        assert_eq!(r.exchanges.len(), 1);
        assert_eq!(r.exchanges[0].alternate.as_deref(), Some("alt"));
        assert_eq!(r.bindings[0].key, "a.#");
        assert_eq!(
            r.exchange_bindings,
            [crate::ExchangeBindingRecord {
                source: "x".into(),
                destination: "amq.fanout".into(),
                key: "a.*".into(),
                args: Bytes::from_static(b"e"),
            }]
        );
        assert_eq!(r.messages.len(), 2);
        assert_eq!((r.messages[0].seq, r.messages[0].delivered), (1, false));
        assert_eq!(r.messages[1].data, big);
        assert!(r.messages[1].delivered);
        assert_eq!(r.users.len(), 1);
        assert_eq!(
            (r.users[0].name.as_str(), &r.users[0].credentials[..]),
            ("alice", &b"verifiers"[..])
        );
        // A link and a route may share a name: the kind keeps them apart.
        let fed: Vec<_> = r
            .federation
            .iter()
            .map(|f| (f.kind, f.name.as_str(), &f.data[..]))
            .collect();
        assert_eq!(
            fed,
            [
                (crate::FederationKind::Link, "hub", &b"{link}"[..]),
                (crate::FederationKind::Route, "hub", &b"{route}"[..])
            ]
        );
        assert_eq!(
            r.prepared,
            [crate::PreparedRecord {
                xid: Bytes::from_static(b"xid-1"),
                data: Bytes::from_static(b"work"),
            }]
        );
        s.apply(&[
            StoreOp::Dequeue {
                queue: "q".into(),
                seq: 2,
            },
            StoreOp::DeleteQueue("q".into()),
            StoreOp::DeleteBinding {
                exchange: "x".into(),
                queue: "q".into(),
                key: "a.#".into(),
            },
            StoreOp::DeleteExchangeBinding {
                source: "x".into(),
                destination: "amq.fanout".into(),
                key: "a.*".into(),
            },
            StoreOp::DeleteExchange("x".into()),
            StoreOp::DeleteUser("alice".into()),
            StoreOp::DeleteFederation {
                kind: crate::FederationKind::Link,
                name: "hub".into(),
            },
            StoreOp::DeleteFederation {
                kind: crate::FederationKind::Route,
                name: "hub".into(),
            },
            StoreOp::DeletePrepared(Bytes::from_static(b"xid-1")),
        ])
        .expect("apply");
        assert_eq!(s.recover().expect("recover"), Recovered::default());
        let records = s.with_db(|db| Ok(db.len())).expect("open");
        assert_eq!(records, 0, "no orphan records");
    }

    #[test]
    fn enqueue_then_dequeue_in_one_batch_leaves_nothing() {
        let store = crate::MemoryStore::new();
        store
            .apply(&[
                queue("q"),
                StoreOp::Enqueue {
                    queue: "q".into(),
                    seq: 1,
                    data: Bytes::from(vec![1u8; 70_000]),
                },
                StoreOp::Dequeue {
                    queue: "q".into(),
                    seq: 1,
                },
            ])
            .expect("apply");
        assert_eq!(store.len(), 1, "only the queue record remains");
    }
}
