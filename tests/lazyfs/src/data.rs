//! The lazy part: in-memory copies of file data that only fsync makes durable.

use std::collections::hash_map::{self, HashMap};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::Errno;

/// Largest file a copy may hold. Copies live in memory, so a stray write far past the end
/// must fail (EFBIG) rather than make the test process allocate without bound.
const MAX_LEN: usize = 1 << 32;

/// Disjoint, non-touching byte ranges `[start, end)`, keyed by start.
#[derive(Debug, Default)]
pub(crate) struct Ranges {
    spans: BTreeMap<usize, usize>,
    total: usize,
}

impl Ranges {
    /// Marks `[start, end)`, merging with the ranges it overlaps or touches.
    pub(crate) fn insert(&mut self, start: usize, end: usize) {
        if start >= end {
            return;
        }
        let (mut lo, mut hi) = (start, end);
        // Candidates start at or before `end`; walking down, they stop mattering once one
        // ends before `start` (the spans are disjoint and sorted).
        let merged: Vec<(usize, usize)> = self
            .spans
            .range(..=end)
            .rev()
            .take_while(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in merged {
            self.spans.remove(&s);
            self.total -= e - s;
            lo = lo.min(s);
            hi = hi.max(e);
        }
        self.spans.insert(lo, hi);
        self.total += hi - lo;
    }

    /// Forgets everything at or past `len` (the file was cut there).
    pub(crate) fn clip(&mut self, len: usize) {
        for (s, e) in self.spans.split_off(&len) {
            self.total -= e - s;
        }
        if let Some(mut last) = self.spans.last_entry() {
            let end = *last.get();
            if end > len {
                *last.get_mut() = len;
                self.total -= end - len;
            }
        }
    }

    /// Bytes covered.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// The ranges, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.spans.iter().map(|(&s, &e)| (s, e))
    }
}

/// One file's content as the mount shows it, and what of it changed since it was loaded.
#[derive(Debug)]
pub(crate) struct Copy {
    bytes: Vec<u8>,
    /// Ranges that differ (or may differ) from the backing file. Everything else equals
    /// it, so writing these back (plus the length) makes the backing file equal the copy.
    dirty: Ranges,
    mtime: SystemTime,
}

impl Copy {
    fn new(bytes: Vec<u8>) -> Copy {
        Copy {
            bytes,
            dirty: Ranges::default(),
            mtime: SystemTime::now(),
        }
    }

    /// Size of the file as the mount shows it.
    pub(crate) fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Time of the last change through the mount.
    pub(crate) fn mtime(&self) -> SystemTime {
        self.mtime
    }

    /// Overrides the modification time (setattr).
    pub(crate) fn set_mtime(&mut self, mtime: SystemTime) {
        self.mtime = mtime;
    }

    /// Up to `size` bytes from `offset`; short at the end of the file.
    pub(crate) fn read(&self, offset: u64, size: u32) -> &[u8] {
        let len = self.bytes.len();
        let start = usize::try_from(offset).map_or(len, |o| o.min(len));
        let end = usize::try_from(size).map_or(len, |s| start.saturating_add(s).min(len));
        &self.bytes[start..end]
    }

    /// Sets the length; growth is zeros and counts as changed.
    fn resize(&mut self, len: usize) -> Result<(), Errno> {
        if len > MAX_LEN {
            return Err(Errno::EFBIG);
        }
        let old = self.bytes.len();
        if len > old {
            // try_reserve turns an impossible allocation into ENOSPC instead of an abort.
            self.bytes
                .try_reserve_exact(len - old)
                .map_err(|_| Errno::ENOSPC)?;
            self.bytes.resize(len, 0);
            self.dirty.insert(old, len);
        } else {
            self.bytes.truncate(len);
            self.dirty.clip(len);
        }
        self.mtime = SystemTime::now();
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let start = usize::try_from(offset).map_err(|_| Errno::EFBIG)?;
        let end = start.checked_add(data.len()).ok_or(Errno::EFBIG)?;
        if end > self.bytes.len() {
            self.resize(end)?;
        }
        self.bytes[start..end].copy_from_slice(data);
        self.dirty.insert(start, end);
        self.mtime = SystemTime::now();
        Ok(())
    }

    /// Writes the changed ranges and the length to `path`, then forgets them as changed.
    fn write_back(&mut self, path: &Path, sync: bool) -> Result<(), Errno> {
        let file = OpenOptions::new().write(true).open(path)?;
        for (s, e) in self.dirty.iter() {
            file.write_all_at(&self.bytes[s..e], s as u64)?;
        }
        file.set_len(self.len())?;
        if sync {
            file.sync_all()?;
        }
        self.dirty = Ranges::default();
        Ok(())
    }
}

/// The copies of every file changed since its last fsync, by inode number.
#[derive(Debug, Default)]
pub(crate) struct Copies {
    map: HashMap<u64, Copy>,
}

impl Copies {
    /// The copy of `ino`, if it has one.
    pub(crate) fn get(&self, ino: u64) -> Option<&Copy> {
        self.map.get(&ino)
    }

    /// Mutable copy of `ino`, if it has one.
    pub(crate) fn get_mut(&mut self, ino: u64) -> Option<&mut Copy> {
        self.map.get_mut(&ino)
    }

    /// The copy of `ino`, first loading `path` into memory if there is none yet.
    /// `keep` bounds how much of the current content is needed (a truncate needs no more
    /// than the new length).
    fn load(&mut self, ino: u64, path: &Path, keep: Option<u64>) -> Result<&mut Copy, Errno> {
        match self.map.entry(ino) {
            hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            hash_map::Entry::Vacant(v) => {
                let meta = fs::metadata(path)?;
                if meta.is_dir() {
                    return Err(Errno::EISDIR);
                }
                if !meta.is_file() {
                    return Err(Errno::EINVAL);
                }
                let wanted = keep.map_or(meta.len(), |k| k.min(meta.len()));
                let wanted = usize::try_from(wanted)
                    .ok()
                    .filter(|&w| w <= MAX_LEN)
                    .ok_or(Errno::EFBIG)?;
                let bytes = if wanted == 0 {
                    Vec::new()
                } else {
                    let file = fs::File::open(path)?;
                    let mut bytes = Vec::new();
                    bytes.try_reserve_exact(wanted).map_err(|_| Errno::ENOSPC)?;
                    bytes.resize(wanted, 0);
                    let got = read_full(&file, &mut bytes, 0)?;
                    bytes.truncate(got);
                    bytes
                };
                // A prefix loaded for a truncate is shorter than the backing file, which is
                // right: persisting sets the backing length to the copy's.
                Ok(v.insert(Copy::new(bytes)))
            }
        }
    }

    /// Writes `data` at `offset` into the copy of `ino` (backed by `path`).
    pub(crate) fn write(
        &mut self,
        ino: u64,
        path: &Path,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        self.load(ino, path, None)?.write(offset, data)
    }

    /// Sets the length of the copy of `ino` (truncate or extend with zeros).
    pub(crate) fn truncate(&mut self, ino: u64, path: &Path, len: u64) -> Result<(), Errno> {
        let len_usize = usize::try_from(len).map_err(|_| Errno::EFBIG)?;
        self.load(ino, path, Some(len))?.resize(len_usize)
    }

    /// Makes the copy of `ino` at least `end` bytes long (fallocate mode 0).
    pub(crate) fn allocate(&mut self, ino: u64, path: &Path, end: u64) -> Result<(), Errno> {
        let end = usize::try_from(end).map_err(|_| Errno::EFBIG)?;
        let copy = self.load(ino, path, None)?;
        if end > copy.bytes.len() {
            copy.resize(end)?;
        }
        Ok(())
    }

    /// Writes the copy of `ino` to `path` durably and drops it (fsync). On failure the copy
    /// stays, as dirty pages stay in a page cache after a failed writeback.
    pub(crate) fn persist(&mut self, ino: u64, path: &Path) -> Result<(), Errno> {
        if let hash_map::Entry::Occupied(mut e) = self.map.entry(ino) {
            e.get_mut().write_back(path, true)?;
            e.remove();
        }
        Ok(())
    }

    /// Writes the changes of `ino` to `path` without syncing, keeping the copy (used once
    /// the mount is shutting down and changes must no longer stay in memory only).
    pub(crate) fn write_through(&mut self, ino: u64, path: &Path) -> Result<(), Errno> {
        match self.map.get_mut(&ino) {
            Some(copy) => copy.write_back(path, false),
            None => Ok(()),
        }
    }

    /// Forgets the copy of `ino` (its file is gone); returns its unsynced bytes.
    pub(crate) fn discard(&mut self, ino: u64) -> u64 {
        self.map.remove(&ino).map_or(0, |c| c.dirty.total() as u64)
    }

    /// Forgets every copy (power cut); returns the unsynced bytes dropped.
    pub(crate) fn discard_all(&mut self) -> u64 {
        let dropped = self.unsynced_bytes();
        self.map.clear();
        dropped
    }

    /// The inodes that have a copy.
    pub(crate) fn inos(&self) -> Vec<u64> {
        self.map.keys().copied().collect()
    }

    /// Bytes written (or added by growing a file) and not fsynced yet, over all files.
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        self.map.values().map(|c| c.dirty.total() as u64).sum()
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends; returns bytes read.
pub(crate) fn read_full(file: &fs::File, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(r: &Ranges) -> Vec<(usize, usize)> {
        r.iter().collect()
    }

    #[test]
    fn ranges_merge_overlapping_and_touching() {
        let mut r = Ranges::default();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.total(), 20);
        r.insert(20, 30);
        assert_eq!(spans(&r), vec![(10, 40)]);
        r.insert(0, 5);
        r.insert(3, 12);
        assert_eq!(spans(&r), vec![(0, 40)]);
        assert_eq!(r.total(), 40);
        r.insert(50, 50);
        assert_eq!(r.total(), 40);
        r.insert(45, 60);
        r.insert(1, 2);
        assert_eq!(spans(&r), vec![(0, 40), (45, 60)]);
        assert_eq!(r.total(), 55);
    }

    #[test]
    fn ranges_clip() {
        let mut r = Ranges::default();
        r.insert(0, 10);
        r.insert(20, 30);
        r.insert(40, 50);
        r.clip(25);
        assert_eq!(spans(&r), vec![(0, 10), (20, 25)]);
        assert_eq!(r.total(), 15);
        r.clip(20);
        assert_eq!(spans(&r), vec![(0, 10)]);
        r.clip(0);
        assert_eq!(r.total(), 0);
    }

    #[test]
    fn copy_write_truncate_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let mut copies = Copies::default();
        copies.write(7, &path, 2, b"ab").unwrap();
        copies.write(7, &path, 12, b"z").unwrap();
        let copy = copies.get(7).unwrap();
        assert_eq!(copy.read(0, 100), b"01ab456789\0\0z");
        // Bytes 2..4 written, 10..13 grown or written.
        assert_eq!(copies.unsynced_bytes(), 5);
        assert_eq!(fs::read(&path).unwrap(), b"0123456789");
        copies.truncate(7, &path, 3).unwrap();
        assert_eq!(copies.unsynced_bytes(), 1);
        copies.persist(7, &path).unwrap();
        assert!(copies.get(7).is_none());
        assert_eq!(fs::read(&path).unwrap(), b"01a");
    }

    #[test]
    fn shrink_then_grow_zeroes_the_backing_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"abcdefgh").unwrap();
        let mut copies = Copies::default();
        copies.truncate(1, &path, 2).unwrap();
        copies.write(1, &path, 6, b"X").unwrap();
        copies.persist(1, &path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"ab\0\0\0\0X");
    }

    #[test]
    fn discard_all_reports_dropped_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"").unwrap();
        let mut copies = Copies::default();
        copies.write(1, &path, 0, b"hello").unwrap();
        assert_eq!(copies.discard_all(), 5);
        assert_eq!(copies.unsynced_bytes(), 0);
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn huge_offsets_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"").unwrap();
        let mut copies = Copies::default();
        assert_eq!(
            copies.write(1, &path, u64::MAX - 1, b"xy"),
            Err(Errno::EFBIG)
        );
        assert_eq!(copies.truncate(1, &path, 1 << 40), Err(Errno::EFBIG));
    }
}
