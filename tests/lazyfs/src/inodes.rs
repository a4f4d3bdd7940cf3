//! Inode numbers for the paths under the backing directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The kernel's fixed number for the root of a FUSE mount.
pub(crate) const ROOT: u64 = 1;

/// Two-way map between the inode numbers the kernel sees and paths relative to the backing
/// directory (the root is the empty path).
///
/// Numbers are never reused: a number the kernel still holds for a removed file can then
/// never alias a newer one.
#[derive(Debug)]
pub(crate) struct Inodes {
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next: u64,
}

impl Inodes {
    /// A table that knows only the root.
    pub(crate) fn new() -> Inodes {
        let mut inodes = Inodes {
            paths: HashMap::new(),
            inos: HashMap::new(),
            next: ROOT + 1,
        };
        inodes.paths.insert(ROOT, PathBuf::new());
        inodes.inos.insert(PathBuf::new(), ROOT);
        inodes
    }

    /// The path of `ino`, if it still names one.
    pub(crate) fn path(&self, ino: u64) -> Option<&Path> {
        self.paths.get(&ino).map(PathBuf::as_path)
    }

    /// The number of `path`, giving it a fresh one the first time it is seen.
    pub(crate) fn assign(&mut self, path: &Path) -> u64 {
        if let Some(&ino) = self.inos.get(path) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.paths.insert(ino, path.to_path_buf());
        self.inos.insert(path.to_path_buf(), ino);
        ino
    }

    /// Forgets `path` (a removed file); returns its number if it had one.
    pub(crate) fn remove(&mut self, path: &Path) -> Option<u64> {
        let ino = self.inos.remove(path)?;
        self.paths.remove(&ino);
        Some(ino)
    }

    /// Forgets `path` and every path below it (a removed directory); returns their numbers.
    pub(crate) fn remove_tree(&mut self, path: &Path) -> Vec<u64> {
        let gone: Vec<(u64, PathBuf)> = self
            .paths
            .iter()
            .filter(|(&ino, p)| ino != ROOT && p.starts_with(path))
            .map(|(&ino, p)| (ino, p.clone()))
            .collect();
        for (ino, p) in &gone {
            self.paths.remove(ino);
            self.inos.remove(p);
        }
        gone.into_iter().map(|(ino, _)| ino).collect()
    }

    /// Moves `from` and everything below it to `to`, as a successful rename(2) did.
    /// Whatever `to` named before is forgotten; its numbers are returned.
    pub(crate) fn rename(&mut self, from: &Path, to: &Path) -> Vec<u64> {
        if from == to {
            return Vec::new();
        }
        let replaced = self.remove_tree(to);
        let moved: Vec<(u64, PathBuf)> = self
            .paths
            .iter()
            .filter(|(&ino, p)| ino != ROOT && p.starts_with(from))
            .map(|(&ino, p)| (ino, p.clone()))
            .collect();
        // Two passes, so an old path can never clobber a new one mid-way.
        for (_, old) in &moved {
            self.inos.remove(old);
        }
        for (ino, old) in moved {
            let new = match old.strip_prefix(from) {
                Ok(rest) if !rest.as_os_str().is_empty() => to.join(rest),
                _ => to.to_path_buf(),
            };
            self.inos.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
        replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_is_stable_and_unique() {
        let mut t = Inodes::new();
        let a = t.assign(Path::new("a"));
        let b = t.assign(Path::new("b"));
        assert_ne!(a, b);
        assert_ne!(a, ROOT);
        assert_eq!(t.assign(Path::new("a")), a);
        assert_eq!(t.path(a), Some(Path::new("a")));
        assert_eq!(t.path(ROOT), Some(Path::new("")));
    }

    #[test]
    fn rename_moves_children_and_drops_target() {
        let mut t = Inodes::new();
        let d = t.assign(Path::new("d"));
        let f = t.assign(Path::new("d/f"));
        let g = t.assign(Path::new("d/sub/g"));
        let old = t.assign(Path::new("e"));
        let replaced = t.rename(Path::new("d"), Path::new("e"));
        assert_eq!(replaced, vec![old]);
        assert_eq!(t.path(d), Some(Path::new("e")));
        assert_eq!(t.path(f), Some(Path::new("e/f")));
        assert_eq!(t.path(g), Some(Path::new("e/sub/g")));
        assert_eq!(t.path(old), None);
        // A fresh lookup of the old name gets a new number.
        assert_ne!(t.assign(Path::new("d/f")), f);
    }

    #[test]
    fn rename_does_not_touch_siblings_with_a_common_prefix() {
        let mut t = Inodes::new();
        let ab = t.assign(Path::new("ab"));
        t.assign(Path::new("a"));
        t.rename(Path::new("a"), Path::new("c"));
        assert_eq!(t.path(ab), Some(Path::new("ab")));
    }

    #[test]
    fn remove_forgets() {
        let mut t = Inodes::new();
        let a = t.assign(Path::new("a"));
        assert_eq!(t.remove(Path::new("a")), Some(a));
        assert_eq!(t.path(a), None);
        assert_eq!(t.remove(Path::new("a")), None);
        let d = t.assign(Path::new("d"));
        let x = t.assign(Path::new("d/x"));
        let mut gone = t.remove_tree(Path::new("d"));
        gone.sort_unstable();
        assert_eq!(gone, vec![d, x]);
        assert_eq!(t.path(ROOT), Some(Path::new("")));
    }
}
