//! The filesystem's state and its operations, independent of how FUSE replies.
//!
//! Namespace operations go straight to the backing directory (taken as durable at once);
//! file data goes through [`Copies`] and reaches the backing files only on fsync.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType};

use crate::data::{read_full, Copies};
use crate::inodes::{Inodes, ROOT};
use crate::{attr, Stats};

/// File type bits of a mode, and the regular-file type (values fixed by POSIX on Linux).
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
/// open(2) flag bits the create call honours (x86-64 and aarch64 share these values).
const O_EXCL: i32 = 0o200;
const O_TRUNC: i32 = 0o1000;

/// The state shared by the FUSE session thread and the [`crate::LazyFs`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(backing: PathBuf) -> Shared {
        Shared {
            state: Mutex::new(State::new(backing)),
        }
    }

    /// Locks the state. A panic elsewhere must not wedge the mount, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How data changes are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Changes stay in memory until fsync.
    Lazy,
    /// Shutting down cleanly: changes go to the backing files at once.
    WriteThrough,
    /// Power cut: everything fails with EIO.
    Crashed,
}

/// One entry of a directory listing.
#[derive(Debug)]
struct DirEntry {
    ino: u64,
    kind: FileType,
    name: OsString,
}

/// Attribute changes asked by setattr.
#[derive(Debug, Default)]
pub(crate) struct SetAttr {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<SystemTime>,
    pub(crate) mtime: Option<SystemTime>,
}

#[derive(Debug)]
pub(crate) struct State {
    backing: PathBuf,
    inodes: Inodes,
    copies: Copies,
    /// Open backing files by handle, for reads of files without a copy.
    files: HashMap<u64, File>,
    /// Directory listings taken at opendir, so offsets stay stable while reading.
    dirs: HashMap<u64, Vec<DirEntry>>,
    next_fh: u64,
    mode: Mode,
    fsyncs: u64,
    writes: u64,
}

type Res<T> = Result<T, Errno>;

impl State {
    fn new(backing: PathBuf) -> State {
        State {
            backing,
            inodes: Inodes::new(),
            copies: Copies::default(),
            files: HashMap::new(),
            dirs: HashMap::new(),
            next_fh: 1,
            mode: Mode::Lazy,
            fsyncs: 0,
            writes: 0,
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            fsyncs: self.fsyncs,
            writes: self.writes,
            unsynced_bytes: self.copies.unsynced_bytes(),
        }
    }

    /// Power cut: drops every unsynced change and fails everything from now on. Returns
    /// the unsynced bytes dropped.
    pub(crate) fn crash(&mut self) -> u64 {
        self.mode = Mode::Crashed;
        self.files.clear();
        self.dirs.clear();
        self.copies.discard_all()
    }

    /// Orderly shutdown: writes every copy back durably and switches to write-through,
    /// so that changes still arriving (from files kept open) are not lost either.
    pub(crate) fn shut_down(&mut self) -> io::Result<()> {
        if self.mode == Mode::Crashed {
            return Ok(());
        }
        self.mode = Mode::WriteThrough;
        let mut result = Ok(());
        for ino in self.copies.inos() {
            let Some(path) = self.inodes.path(ino).map(|p| self.backing.join(p)) else {
                self.copies.discard(ino);
                continue;
            };
            if let Err(e) = self.copies.persist(ino, &path) {
                result = Err(io::Error::from_raw_os_error(e.code()));
            }
        }
        result
    }

    fn live(&self) -> Res<()> {
        match self.mode {
            Mode::Crashed => Err(Errno::EIO),
            Mode::Lazy | Mode::WriteThrough => Ok(()),
        }
    }

    /// The backing path of `ino`; ENOENT once it names nothing.
    fn full(&self, ino: u64) -> Res<PathBuf> {
        self.inodes
            .path(ino)
            .map(|p| self.backing.join(p))
            .ok_or(Errno::ENOENT)
    }

    /// The relative path of `name` in directory `parent`.
    fn child(&self, parent: u64, name: &OsStr) -> Res<PathBuf> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.contains(&b'/') || name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        let dir = self.inodes.path(parent).ok_or(Errno::ENOENT)?;
        Ok(dir.join(name))
    }

    /// Attributes of the file at relative path `rel`, numbering it if new.
    fn attr_at(&mut self, rel: &Path) -> Res<FileAttr> {
        let meta = fs::symlink_metadata(self.backing.join(rel))?;
        let ino = self.inodes.assign(rel);
        attr::build(ino, &meta, self.copies.get(ino))
    }

    /// After a data change: in write-through mode it goes to the backing file right away.
    fn changed(&mut self, ino: u64, full: &Path) -> Res<()> {
        if self.mode == Mode::WriteThrough {
            self.copies.write_through(ino, full)?;
        }
        Ok(())
    }

    fn new_fh(&mut self) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        fh
    }

    pub(crate) fn lookup(&mut self, parent: u64, name: &OsStr) -> Res<FileAttr> {
        self.live()?;
        let rel = self.child(parent, name)?;
        self.attr_at(&rel)
    }

    pub(crate) fn getattr(&mut self, ino: u64) -> Res<FileAttr> {
        self.live()?;
        let meta = fs::symlink_metadata(self.full(ino)?)?;
        attr::build(ino, &meta, self.copies.get(ino))
    }

    pub(crate) fn setattr(&mut self, ino: u64, set: &SetAttr) -> Res<FileAttr> {
        self.live()?;
        let full = self.full(ino)?;
        if let Some(size) = set.size {
            self.copies.truncate(ino, &full, size)?;
            self.changed(ino, &full)?;
        }
        if let Some(mode) = set.mode {
            fs::set_permissions(&full, Permissions::from_mode(mode & 0o7777))?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            std::os::unix::fs::lchown(&full, set.uid, set.gid)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let mut times = FileTimes::new();
            if let Some(t) = set.atime {
                times = times.set_accessed(t);
            }
            if let Some(t) = set.mtime {
                times = times.set_modified(t);
                if let Some(copy) = self.copies.get_mut(ino) {
                    copy.set_mtime(t);
                }
            }
            // Symlinks can't be opened without following them; their times are left alone.
            if !fs::symlink_metadata(&full)?.file_type().is_symlink() {
                File::open(&full)?.set_times(times)?;
            }
        }
        self.getattr(ino)
    }

    pub(crate) fn readlink(&mut self, ino: u64) -> Res<Vec<u8>> {
        self.live()?;
        let target = fs::read_link(self.full(ino)?)?;
        Ok(target.into_os_string().into_vec())
    }

    pub(crate) fn mknod(&mut self, parent: u64, name: &OsStr, mode: u32) -> Res<FileAttr> {
        self.live()?;
        // Only regular files: devices, fifos and sockets have no use in these tests.
        if mode & S_IFMT != S_IFREG {
            return Err(Errno::EPERM);
        }
        let rel = self.child(parent, name)?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o7777)
            .open(self.backing.join(&rel))?;
        self.attr_at(&rel)
    }

    pub(crate) fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> Res<FileAttr> {
        self.live()?;
        let rel = self.child(parent, name)?;
        fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(self.backing.join(&rel))?;
        self.attr_at(&rel)
    }

    pub(crate) fn symlink(&mut self, parent: u64, name: &OsStr, target: &Path) -> Res<FileAttr> {
        self.live()?;
        let rel = self.child(parent, name)?;
        std::os::unix::fs::symlink(target, self.backing.join(&rel))?;
        self.attr_at(&rel)
    }

    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> Res<()> {
        self.live()?;
        let rel = self.child(parent, name)?;
        fs::remove_file(self.backing.join(&rel))?;
        if let Some(ino) = self.inodes.remove(&rel) {
            self.copies.discard(ino);
        }
        Ok(())
    }

    pub(crate) fn rmdir(&mut self, parent: u64, name: &OsStr) -> Res<()> {
        self.live()?;
        let rel = self.child(parent, name)?;
        fs::remove_dir(self.backing.join(&rel))?;
        for ino in self.inodes.remove_tree(&rel) {
            self.copies.discard(ino);
        }
        Ok(())
    }

    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Res<()> {
        self.live()?;
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        let to_full = self.backing.join(&to);
        // Not atomic against outside changes, but only this mount changes the backing dir.
        if no_replace && fs::symlink_metadata(&to_full).is_ok() {
            return Err(Errno::EEXIST);
        }
        fs::rename(self.backing.join(&from), &to_full)?;
        // The copy travels with the inode; whatever was replaced is gone with its copy.
        for ino in self.inodes.rename(&from, &to) {
            self.copies.discard(ino);
        }
        Ok(())
    }

    pub(crate) fn open(&mut self, ino: u64) -> Res<u64> {
        self.live()?;
        let file = File::open(self.full(ino)?)?;
        let fh = self.new_fh();
        self.files.insert(fh, file);
        Ok(fh)
    }

    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Res<(FileAttr, u64)> {
        self.live()?;
        let rel = self.child(parent, name)?;
        let full = self.backing.join(&rel);
        let mut options = OpenOptions::new();
        options.read(true).write(true).mode(mode & 0o7777);
        if flags & O_EXCL != 0 {
            options.create_new(true);
        } else {
            options.create(true);
        }
        // O_TRUNC is never passed down: cutting an existing file is a data change, so it
        // is made lazily below like any other.
        let file = options.open(&full)?;
        let ino = self.inodes.assign(&rel);
        let size = match self.copies.get(ino) {
            Some(copy) => copy.len(),
            None => file.metadata()?.len(),
        };
        if flags & O_TRUNC != 0 && size > 0 {
            self.copies.truncate(ino, &full, 0)?;
            self.changed(ino, &full)?;
        }
        let attr = self.attr_at(&rel)?;
        let fh = self.new_fh();
        self.files.insert(fh, file);
        Ok((attr, fh))
    }

    pub(crate) fn read(&mut self, ino: u64, fh: u64, offset: u64, size: u32) -> Res<Vec<u8>> {
        self.live()?;
        if let Some(copy) = self.copies.get(ino) {
            return Ok(copy.read(offset, size).to_vec());
        }
        let opened;
        let file = match self.files.get(&fh) {
            Some(f) => f,
            None => {
                opened = File::open(self.full(ino)?)?;
                &opened
            }
        };
        let mut buf = vec![0; usize::try_from(size).map_err(|_| Errno::EINVAL)?];
        let got = read_full(file, &mut buf, offset)?;
        buf.truncate(got);
        Ok(buf)
    }

    pub(crate) fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Res<u32> {
        self.live()?;
        let written = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let full = self.full(ino)?;
        self.copies.write(ino, &full, offset, data)?;
        self.writes += 1;
        self.changed(ino, &full)?;
        Ok(written)
    }

    pub(crate) fn fallocate(&mut self, ino: u64, offset: u64, length: u64, mode: i32) -> Res<()> {
        self.live()?;
        // Punching holes, zeroing ranges and keep-size would all need more than a copy can
        // express cheaply; nothing under test uses them.
        if mode != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let full = self.full(ino)?;
        self.copies.allocate(ino, &full, end)?;
        self.changed(ino, &full)
    }

    /// Flush (on every close) persists nothing: only fsync does.
    pub(crate) fn flush(&self) -> Res<()> {
        self.live()
    }

    pub(crate) fn release(&mut self, fh: u64) -> Res<()> {
        self.files.remove(&fh);
        self.live()
    }

    pub(crate) fn fsync(&mut self, ino: u64) -> Res<()> {
        self.live()?;
        // A file unlinked while open has nothing left to make durable.
        let Ok(full) = self.full(ino) else {
            return Ok(());
        };
        if self.copies.get(ino).is_some() {
            self.copies.persist(ino, &full)?;
        } else {
            File::open(&full)?.sync_all()?;
        }
        self.fsyncs += 1;
        Ok(())
    }

    pub(crate) fn opendir(&mut self, ino: u64) -> Res<u64> {
        self.live()?;
        let listing = self.list(ino)?;
        let fh = self.new_fh();
        self.dirs.insert(fh, listing);
        Ok(fh)
    }

    /// `.`, `..` and the entries of directory `ino`.
    fn list(&mut self, ino: u64) -> Res<Vec<DirEntry>> {
        let rel = self.inodes.path(ino).ok_or(Errno::ENOENT)?.to_path_buf();
        let parent = match rel.parent() {
            Some(p) if ino != ROOT => self.inodes.assign(p),
            _ => ROOT,
        };
        let mut listing = vec![
            DirEntry {
                ino,
                kind: FileType::Directory,
                name: ".".into(),
            },
            DirEntry {
                ino: parent,
                kind: FileType::Directory,
                name: "..".into(),
            },
        ];
        for entry in fs::read_dir(self.backing.join(&rel))? {
            let entry = entry?;
            let Some(kind) = FileType::from_std(entry.file_type()?) else {
                continue;
            };
            let name = entry.file_name();
            let ino = self.inodes.assign(&rel.join(&name));
            listing.push(DirEntry { ino, kind, name });
        }
        Ok(listing)
    }

    /// Feeds the entries of listing `fh` from `offset` to `add` until it reports a full
    /// buffer. `add` gets (inode, offset of the next entry, kind, name).
    pub(crate) fn readdir(
        &mut self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Res<()> {
        self.live()?;
        if !self.dirs.contains_key(&fh) {
            // Not opened through us (should not happen): list now.
            let listing = self.list(ino)?;
            self.dirs.insert(fh, listing);
        }
        let listing = self.dirs.get(&fh).map_or(&[][..], Vec::as_slice);
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in listing.iter().enumerate().skip(skip) {
            if add(e.ino, i as u64 + 1, e.kind, &e.name) {
                break;
            }
        }
        Ok(())
    }

    pub(crate) fn releasedir(&mut self, fh: u64) -> Res<()> {
        self.dirs.remove(&fh);
        self.live()
    }

    pub(crate) fn fsyncdir(&mut self, ino: u64) -> Res<()> {
        self.live()?;
        File::open(self.full(ino)?)?.sync_all()?;
        self.fsyncs += 1;
        Ok(())
    }

    pub(crate) fn statfs(&self) -> Res<rustix::fs::StatVfs> {
        self.live()?;
        rustix::fs::statvfs(&self.backing).map_err(|e| Errno::from_i32(e.raw_os_error()))
    }

    /// Everything runs as root, so access is granted to whatever exists.
    pub(crate) fn access(&self, ino: u64) -> Res<()> {
        self.live()?;
        fs::symlink_metadata(self.full(ino)?)?;
        Ok(())
    }
}
