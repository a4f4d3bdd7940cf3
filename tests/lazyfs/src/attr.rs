//! Attributes the kernel sees: the backing file's metadata, with the in-memory copy's
//! size and modification time when there is one.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::data::Copy;

/// Builds the attributes of inode `ino` from the backing metadata and its copy, if any.
pub(crate) fn build(ino: u64, meta: &Metadata, copy: Option<&Copy>) -> Result<FileAttr, Errno> {
    let kind = FileType::from_std(meta.file_type()).ok_or(Errno::EIO)?;
    let (size, blocks, mtime) = match copy {
        // Unsynced data is visible through the mount, as a page cache would show it.
        Some(c) => (c.len(), c.len().div_ceil(512), c.mtime()),
        None => (
            meta.len(),
            meta.blocks(),
            time(meta.mtime(), meta.mtime_nsec()),
        ),
    };
    Ok(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime,
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: u32::try_from(meta.rdev()).unwrap_or(0),
        blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
        flags: 0,
    })
}

/// A stat(2) time as a `SystemTime`; times that can't be represented become the epoch.
fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(u64::try_from(nsecs).unwrap_or(0));
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(0, 0), UNIX_EPOCH);
        assert_eq!(time(1, 5), UNIX_EPOCH + Duration::new(1, 5));
        assert_eq!(time(-1, 0), UNIX_EPOCH - Duration::from_secs(1));
        // Nothing panics on extremes.
        let _ = time(i64::MAX, i64::MAX);
        let _ = time(i64::MIN, -1);
    }
}
