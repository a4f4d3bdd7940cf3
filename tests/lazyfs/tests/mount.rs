//! Real mounts in temporary directories. Needs /dev/fuse and the right to mount (root).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clacks_lazyfs::LazyFs;
use tempfile::TempDir;

/// A backing directory and a mountpoint under one temporary directory.
struct Dirs {
    // Declared (so dropped) after nothing that mounts: tests bind the `LazyFs` later,
    // so it is dropped, and unmounted, before this is removed.
    _tmp: TempDir,
    backing: PathBuf,
    mnt: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    Dirs {
        _tmp: tmp,
        backing,
        mnt,
    }
}

fn mount(d: &Dirs) -> LazyFs {
    LazyFs::mount(&d.backing, &d.mnt).unwrap()
}

/// Names in `dir` as getdents returns them, `.` and `..` included.
fn raw_names(dir: &Path) -> BTreeSet<String> {
    let mut listing = rustix::fs::Dir::new(File::open(dir).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    while let Some(entry) = listing.read() {
        names.insert(entry.unwrap().file_name().to_string_lossy().into_owned());
    }
    names
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn reads_see_unsynced_writes() {
    let d = dirs();
    let lazy = mount(&d);
    let path = d.mnt.join("f");
    fs::write(&path, b"hello world").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"hello world");
    assert_eq!(fs::metadata(&path).unwrap().len(), 11);

    // Overwrite in the middle and grow past the end, still without fsync.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"W", 6).unwrap();
    f.write_all_at(b"!", 13).unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"hello World\0\0!");
    assert_eq!(fs::metadata(&path).unwrap().len(), 14);

    // Nothing reached the backing file yet.
    assert_eq!(fs::metadata(d.backing.join("f")).unwrap().len(), 0);
    let stats = lazy.stats();
    assert!(stats.writes >= 3, "{stats:?}");
    assert_eq!(stats.unsynced_bytes, 14);
    assert_eq!(stats.fsyncs, 0);
    lazy.unmount().unwrap();
    assert_eq!(fs::read(d.backing.join("f")).unwrap(), b"hello World\0\0!");
}

#[test]
fn crash_keeps_only_fsynced_data() {
    let d = dirs();
    let lazy = mount(&d);
    let mut a = File::create(d.mnt.join("a")).unwrap();
    a.write_all(b"durable").unwrap();
    a.sync_all().unwrap();
    a.write_all(b" lost").unwrap();
    drop(a);
    fs::write(d.mnt.join("b"), b"gone").unwrap();
    assert_eq!(fs::read(d.mnt.join("a")).unwrap(), b"durable lost");
    assert_eq!(lazy.stats().fsyncs, 1);

    let dropped = lazy.crash().unwrap();
    assert_eq!(dropped, 9);
    assert_eq!(fs::read(d.backing.join("a")).unwrap(), b"durable");
    assert_eq!(fs::read(d.backing.join("b")).unwrap(), b"");

    // Mount again over the same backing directory at the same mountpoint.
    let lazy = mount(&d);
    assert_eq!(fs::read(d.mnt.join("a")).unwrap(), b"durable");
    assert!(d.mnt.join("b").exists());
    assert_eq!(fs::metadata(d.mnt.join("b")).unwrap().len(), 0);
    assert_eq!(lazy.stats().unsynced_bytes, 0);
    lazy.unmount().unwrap();
}

#[test]
fn namespace_operations_pass_through() {
    let d = dirs();
    let lazy = mount(&d);
    let m = |p: &str| d.mnt.join(p);
    let b = |p: &str| d.backing.join(p);

    // mkdir, create, rename, then fsync of the renamed file.
    fs::create_dir(m("d")).unwrap();
    assert!(b("d").is_dir());
    fs::write(m("d/x"), b"abc").unwrap();
    fs::rename(m("d/x"), m("d/y")).unwrap();
    assert!(!m("d/x").exists());
    assert_eq!(fs::read(m("d/y")).unwrap(), b"abc");
    File::open(m("d/y")).unwrap().sync_all().unwrap();
    assert_eq!(fs::read(b("d/y")).unwrap(), b"abc");

    // Truncate is lazy too.
    let mut z = File::create(m("z")).unwrap();
    z.write_all(b"12345678").unwrap();
    z.sync_data().unwrap();
    z.set_len(3).unwrap();
    drop(z);
    assert_eq!(fs::read(m("z")).unwrap(), b"123");
    assert_eq!(fs::read(b("z")).unwrap(), b"12345678");

    // fallocate mode 0 extends with zeros; other modes are refused.
    let f = OpenOptions::new().write(true).open(m("z")).unwrap();
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 5).unwrap();
    let err = rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, 100);
    assert_eq!(err, Err(rustix::io::Errno::OPNOTSUPP));
    drop(f);
    assert_eq!(fs::read(m("z")).unwrap(), b"123\0\0");

    // Rename over an existing file: the new content replaces it.
    fs::write(m("w"), b"new").unwrap();
    fs::rename(m("w"), m("z")).unwrap();
    assert_eq!(fs::read(m("z")).unwrap(), b"new");
    assert!(!b("w").exists());

    // A renamed directory keeps the unsynced data of the files inside.
    fs::create_dir(m("e")).unwrap();
    fs::write(m("e/f"), b"inside").unwrap();
    fs::rename(m("e"), m("g")).unwrap();
    assert_eq!(fs::read(m("g/f")).unwrap(), b"inside");
    File::open(m("g/f")).unwrap().sync_data().unwrap();
    assert_eq!(fs::read(b("g/f")).unwrap(), b"inside");

    // readdir, with . and ..
    assert_eq!(raw_names(&d.mnt), names(&[".", "..", "d", "g", "z"]));
    assert_eq!(raw_names(&m("d")), names(&[".", "..", "y"]));

    // unlink and rmdir
    let err = fs::remove_dir(m("d")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DirectoryNotEmpty);
    fs::remove_file(m("d/y")).unwrap();
    fs::remove_dir(m("d")).unwrap();
    assert!(!b("d").exists());
    assert!(fs::metadata(m("d")).is_err());

    // Directory fsync and statfs pass through.
    File::open(&d.mnt).unwrap().sync_all().unwrap();
    let stats = rustix::fs::statvfs(&d.mnt).unwrap();
    assert!(stats.f_blocks > 0);

    // Pending data and truncation reach the backing files on a clean unmount.
    fs::write(m("p"), b"pending").unwrap();
    assert!(lazy.stats().unsynced_bytes > 0);
    lazy.unmount().unwrap();
    assert_eq!(fs::read(b("p")).unwrap(), b"pending");
    assert_eq!(fs::read(b("z")).unwrap(), b"new");
    assert_eq!(fs::read(b("g/f")).unwrap(), b"inside");
}

#[test]
fn sled_like_positional_writes() {
    let d = dirs();
    let lazy = mount(&d);
    let path = d.mnt.join("db");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    f.write_all_at(b"AAAA", 0).unwrap();
    f.write_all_at(b"BBBB", 4096).unwrap();
    f.write_all_at(b"CC", 100).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"DDDD", 8192).unwrap();
    f.write_all_at(b"EE", 0).unwrap();
    let mut buf = [0; 4];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"EEAA");
    assert_eq!(f.metadata().unwrap().len(), 8196);
    drop(f);

    let dropped = lazy.crash().unwrap();
    assert!(dropped >= 6, "{dropped}");

    let mut expected = vec![0; 4100];
    expected[..4].copy_from_slice(b"AAAA");
    expected[100..102].copy_from_slice(b"CC");
    expected[4096..].copy_from_slice(b"BBBB");
    assert_eq!(fs::read(d.backing.join("db")).unwrap(), expected);
    let lazy = mount(&d);
    assert_eq!(fs::read(&path).unwrap(), expected);
    lazy.unmount().unwrap();
}

#[test]
fn flock_works() {
    let d = dirs();
    let lazy = mount(&d);
    let path = d.mnt.join("LOCK");
    let first = File::create(&path).unwrap();
    first.try_lock().unwrap();
    let second = File::open(&path).unwrap();
    assert!(matches!(
        second.try_lock(),
        Err(fs::TryLockError::WouldBlock)
    ));
    drop(first);
    second.try_lock().unwrap();
    drop(second);
    lazy.unmount().unwrap();
}

#[test]
fn after_a_crash_open_files_get_eio() {
    let d = dirs();
    let lazy = mount(&d);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.mnt.join("f"))
        .unwrap();
    f.write_all(b"x").unwrap();
    // The open file makes the mount busy: the unmount is lazy.
    assert_eq!(lazy.crash().unwrap(), 1);
    assert_eq!(f.write(b"y").unwrap_err().raw_os_error(), Some(5));
    assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(5));
    let mut buf = [0; 1];
    assert_eq!(f.read(&mut buf).unwrap_err().raw_os_error(), Some(5));
    drop(f);
    // The mountpoint is free again at once.
    assert!(raw_names(&d.mnt).is_subset(&names(&[".", ".."])));
    assert_eq!(fs::read(d.backing.join("f")).unwrap(), b"");
}

#[test]
fn drop_unmounts_cleanly() {
    let d = dirs();
    let lazy = mount(&d);
    fs::write(d.mnt.join("f"), b"kept").unwrap();
    drop(lazy);
    assert_eq!(fs::read(d.backing.join("f")).unwrap(), b"kept");
    assert!(!d.mnt.join("f").exists());
}

#[test]
fn mount_rejects_missing_directories() {
    let d = dirs();
    assert!(LazyFs::mount(&d.backing.join("nope"), &d.mnt).is_err());
    assert!(LazyFs::mount(&d.backing, &d.mnt.join("nope")).is_err());
}

/// A process that exits with files open on its own mount must not hang in the kernel
/// waiting for its (already dead) serving thread.
#[test]
fn exiting_with_files_open_does_not_hang() {
    const CHILD: &str = "LAZYFS_EXIT_CHILD";
    if let Some(root) = std::env::var_os(CHILD) {
        let root = PathBuf::from(root);
        let lazy = LazyFs::mount(&root.join("backing"), &root.join("mnt")).unwrap();
        let mut f = File::create(root.join("mnt/open")).unwrap();
        f.write_all(b"x").unwrap();
        let _dir = File::open(root.join("mnt")).unwrap();
        // Skips every destructor: the mount and the files are still open at exit.
        std::mem::forget(lazy);
        std::process::exit(0);
    }
    let d = dirs();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "exiting_with_files_open_does_not_hang"])
        .env(CHILD, d.backing.parent().unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The child's mount is dead but still in the mount table.
    let _ = rustix::mount::unmount(&d.mnt, rustix::mount::UnmountFlags::DETACH);
    let status = status.expect("the child hung at exit");
    assert!(status.success(), "{status}");
}
