//! A FUSE filesystem for power-loss tests, in the spirit of Jepsen's LazyFS.
//!
//! [`LazyFs::mount`] shows a backing directory at a mountpoint. File data written through
//! the mount stays in memory (like a page cache) until the file is fsynced; then it is
//! written to the backing file and synced. [`LazyFs::crash`] is the power cut: everything
//! not fsynced is dropped and the mount stops working.
//!
//! Limits and simplifications:
//! - namespace changes (create, mkdir, rename, unlink, rmdir, chmod...) are applied to the
//!   backing directory at once, i.e. metadata is durable immediately;
//! - `sync_file_range(2)` never reaches a FUSE filesystem, so it makes nothing durable.
//!   `sled` 0.34 relies on it in `flush` on Linux: its data survives a crash here only once
//!   its files are fsynced (as `clacks-storage` does after each flush);
//! - hard links, device nodes and fallocate modes other than 0 are refused; a file
//!   unlinked while open loses its unsynced data, and later I/O through it fails (ENOENT);
//! - files are opened with direct I/O, so shared writable mmap may be refused.

mod attr;
mod data;
mod fs;
mod inodes;
mod state;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption};
use rustix::mount::{unmount, UnmountFlags};

use crate::state::Shared;

/// Counters of a mounted [`LazyFs`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// fsync and fsyncdir calls served successfully.
    pub fsyncs: u64,
    /// write calls served.
    pub writes: u64,
    /// Bytes written (or added by growing a file) and not fsynced yet.
    pub unsynced_bytes: u64,
}

/// A mounted lazy filesystem; see the crate docs.
///
/// Dropping it without [`crash`](LazyFs::crash) or [`unmount`](LazyFs::unmount) unmounts
/// cleanly, as `unmount` does, ignoring errors.
#[derive(Debug)]
pub struct LazyFs {
    shared: Arc<Shared>,
    /// `None` once unmounted.
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

impl LazyFs {
    /// Mounts at `mountpoint` a view of the directory `backing` (both exist).
    ///
    /// Returns once the kernel has finished the FUSE handshake, so the mount is usable at
    /// once; a background thread serves it.
    ///
    /// # Errors
    /// When either path is missing or not a directory, or the mount fails (no `/dev/fuse`,
    /// no permission).
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<LazyFs> {
        // Absolute, so that later changes of the working directory don't matter.
        let backing = backing.canonicalize()?;
        let mountpoint = mountpoint.canonicalize()?;
        for dir in [&backing, &mountpoint] {
            if !dir.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        let shared = Arc::new(Shared::new(backing));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("clacks-lazyfs".into()),
            MountOption::Subtype("lazyfs".into()),
        ];
        let session =
            fuser::spawn_mount(fs::LazyFsImpl::new(shared.clone()), &mountpoint, &config)?;
        Ok(LazyFs {
            shared,
            session: Some(session),
            mountpoint,
        })
    }

    /// Power cut: every file change not fsynced is dropped, every later operation on the
    /// mount fails with EIO, then the filesystem is unmounted (lazily if busy) and its
    /// thread joined. Returns the bytes of unsynced data that were dropped.
    ///
    /// If files are still open on the mount, the unmount can only be lazy and the thread
    /// cannot be joined yet: it keeps answering EIO to those files and ends by itself once
    /// the last one is closed.
    ///
    /// # Errors
    /// When the unmount fails.
    pub fn crash(mut self) -> io::Result<u64> {
        let dropped = self.shared.lock().crash();
        self.end_session()?;
        Ok(dropped)
    }

    /// Clean unmount: pending changes are written to the backing files first (as an
    /// orderly shutdown would).
    ///
    /// If files are still open, the unmount is lazy (as for [`crash`](LazyFs::crash)) and
    /// whatever they still write goes straight to the backing files.
    ///
    /// # Errors
    /// When writing pending data back or the unmount fails; the unmount is tried anyway.
    pub fn unmount(mut self) -> io::Result<()> {
        let written = self.shared.lock().shut_down();
        let unmounted = self.end_session();
        written.and(unmounted)
    }

    /// Counters so far: fsyncs served, writes, bytes currently held unsynced.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats()
    }

    /// Unmounts and joins the session thread; lazily, without joining, if the mount is
    /// busy.
    fn end_session(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // fuser's own unmount is not lazy as root, so it is done here; fuser's attempt
        // when the session is dropped then finds nothing to unmount.
        match unmount(&self.mountpoint, UnmountFlags::empty()) {
            // The kernel ends the connection: the session thread sees it and returns. If a
            // request was in flight then (a lock being released, say), it sees the
            // connection aborted instead; the session is over all the same.
            Ok(()) => match session.join() {
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(()),
                ended => ended,
            },
            Err(rustix::io::Errno::BUSY) => {
                let detached = unmount(&self.mountpoint, UnmountFlags::DETACH);
                // Dropping detaches the thread; it ends when the last open file is closed.
                drop(session);
                detached.map_err(io::Error::from)
            }
            Err(e) => {
                drop(session);
                Err(e.into())
            }
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.shared.lock().shut_down();
            let _ = self.end_session();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handle_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::LazyFs>();
    }
}
