//! The sled store, made durable: sled 0.34's own flush only calls `sync_file_range`, so after
//! each flush every file sled wrote since the last sync gets an fdatasync, and the directory
//! an fsync when files came or went. Large values never reach sled's blob files: messages
//! are cut into chunks (see `record`).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::{kv, record, Recovered, Store, StoreError, StoreOp, StoredMessage};

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
        let ways = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        self.with_db(|db| recover(db, ways, PIECE))
    }
}

/// A queue with more messages than this (by position) is read in several pieces at once.
const PIECE: u64 = 50_000;

/// Reads everything back: first every record but the messages, then the messages of the
/// queues found, in pieces on `ways` threads (walking sled's tree is most of a restart with
/// many stored messages).
fn recover(db: &sled::Db, ways: usize, piece: u64) -> Result<Recovered, StoreError> {
    let mut records = kv::Records::default();
    let messages_from = [record::MESSAGE];
    let messages_to = [record::MESSAGE + 1];
    for entry in db
        .range(..&messages_from[..])
        .chain(db.range(&messages_to[..]..))
    {
        let (k, v) = entry?;
        records.push(&k, v.to_vec())?;
    }
    // In key order, so that the messages come out as a walk of the whole tree gives them.
    let prefixes: std::collections::BTreeSet<Vec<u8>> = records
        .queues()
        .map(|q| record::message_prefix(q, None))
        .collect();
    let mut pieces = Vec::new();
    for prefix in &prefixes {
        split_queue(db, prefix, ways, piece, &mut pieces)?;
    }
    let messages = read_pieces(db, &pieces, ways)?;
    Ok(records.finish(messages))
}

/// A run of one queue's message keys: from `start` to before `end`, or to the last key
/// under `prefix`.
struct Piece<'a> {
    prefix: &'a [u8],
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// Cuts the messages under `prefix` into up to `ways` runs of about equal positions, at
/// message boundaries (a message's chunks share its position).
fn split_queue<'a>(
    db: &sled::Db,
    prefix: &'a [u8],
    ways: usize,
    piece: u64,
    pieces: &mut Vec<Piece<'a>>,
) -> Result<(), StoreError> {
    let mut keys = db.scan_prefix(prefix).keys();
    let Some(first) = keys.next() else {
        return Ok(());
    };
    let first = first?;
    let last = keys
        .next_back()
        .transpose()?
        .unwrap_or_else(|| first.clone());
    let position = |k: &[u8]| {
        k.get(prefix.len()..prefix.len() + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt("message key of wrong length".into()))
    };
    let (low, high) = (position(&first)?, position(&last)?);
    let span = u128::from(high.saturating_sub(low));
    let parts = (span / u128::from(piece.max(1)) + 1).min(ways.max(1) as u128);
    let key_at = |i: u128| {
        let mut k = prefix.to_vec();
        // At most `span` past `low`, so it fits.
        let at = low + u64::try_from(span * i / parts).unwrap_or(0);
        k.extend_from_slice(&at.to_be_bytes());
        k
    };
    for i in 0..parts {
        pieces.push(Piece {
            prefix,
            start: key_at(i),
            end: (i + 1 < parts).then(|| key_at(i + 1)),
        });
    }
    Ok(())
}

/// Reads `pieces` on up to `ways` threads, this one among them; their messages, in the
/// order of the pieces.
fn read_pieces(
    db: &sled::Db,
    pieces: &[Piece<'_>],
    ways: usize,
) -> Result<Vec<StoredMessage>, StoreError> {
    let next = AtomicUsize::new(0);
    // Each thread takes the next piece not yet taken, and says which it was.
    let take = || {
        let mut mine = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(p) = pieces.get(index) else {
                return mine;
            };
            mine.push((index, read_piece(db, p)));
        }
    };
    let mut read = std::thread::scope(|scope| {
        // A thread that cannot be started leaves its share to the others.
        let helpers: Vec<_> = (1..ways.min(pieces.len()))
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("clacks-recover".into())
                    .spawn_scoped(scope, take)
                    .ok()
            })
            .collect();
        let mut read = take();
        for helper in helpers {
            // Joined here, so a thread that panicked is only pieces missing below.
            if let Ok(theirs) = helper.join() {
                read.extend(theirs);
            }
        }
        read
    });
    if read.len() != pieces.len() {
        return Err(StoreError::Io("a recovery thread failed".into()));
    }
    // In piece order, so that the first error is the same whatever the timing.
    read.sort_unstable_by_key(|(index, _)| *index);
    let mut out = Vec::new();
    for (_, messages) in read {
        out.extend(messages?);
    }
    Ok(out)
}

/// The messages of one piece, joined from their chunks.
fn read_piece(db: &sled::Db, p: &Piece<'_>) -> Result<Vec<StoredMessage>, StoreError> {
    let entries = match &p.end {
        Some(end) => db.range(p.start.as_slice()..end.as_slice()),
        None => db.range(p.start.as_slice()..),
    };
    let mut messages = kv::Messages::default();
    for entry in entries {
        let (k, v) = entry?;
        if !k.starts_with(p.prefix) {
            break;
        }
        messages.push(&k[1..], v.to_vec())?;
    }
    Ok(messages.finish())
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
        let s = reopen(dir.path());
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

    /// Opens the store again once sled's threads of the last open have let its file go:
    /// they do so a moment after the store is dropped.
    fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match SledStore::open(dir) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("lock"), "reopen: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[test]
    fn messages_read_in_pieces_on_several_threads_come_back_as_one_walk_gives_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SledStore::open(dir.path()).expect("open");
        let mut ops = vec![queue("a"), queue("bb"), queue("empty"), queue("short")];
        // Positions with gaps, messages of several chunks among them, and messages of a
        // queue that is gone (never read back).
        for (name, count, step) in [("a", 700u64, 3u64), ("bb", 300, 1), ("gone", 50, 1)] {
            for i in 0..count {
                let size = if i % 97 == 5 {
                    70_000
                } else {
                    10 + (i % 50) as usize
                };
                ops.push(StoreOp::Enqueue {
                    queue: name.into(),
                    seq: 1000 + i * step,
                    data: Bytes::from(vec![(i % 251) as u8; size]),
                });
            }
        }
        ops.push(StoreOp::Enqueue {
            queue: "short".into(),
            seq: 7,
            data: Bytes::from_static(b"only"),
        });
        ops.push(StoreOp::Delivered {
            queue: "bb".into(),
            seq: 1010,
        });
        s.apply(&ops).expect("apply");
        let walked = s
            .with_db(|db| {
                kv::recover(db.iter().map(|e| {
                    e.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(StoreError::from)
                }))
            })
            .expect("walk");
        assert_eq!(walked.messages.len(), 1001);
        assert!(walked.messages.iter().any(|m| m.delivered));
        for (ways, piece) in [(1, PIECE), (2, 100), (4, 7), (3, 1)] {
            let pieces = s.with_db(|db| recover(db, ways, piece)).expect("recover");
            assert_eq!(pieces, walked, "{ways} threads, pieces of {piece}");
        }
    }
}
