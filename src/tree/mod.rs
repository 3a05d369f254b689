//! A tree, opened once: its parent directory (where the journal lives), its last component,
//! and its root opened under the parent without following a symlink. Every later use goes
//! through these fds, so the tree is the same inode from start to end. [`walk`] visits it in
//! parallel. Shared by `shift`, `status` and `migrate`.

pub mod walk;

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::report::escape_path;
use crate::sys::fs::{self as sysfs, Stat};

/// The identity of a tree: its root's device, inode and birth time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeId {
    pub dev: u64,
    pub ino: u64,
    pub btime: Option<i128>,
}

pub struct Tree {
    /// DIR as given, for messages.
    pub path: PathBuf,
    pub parent: OwnedFd,
    parent_path: PathBuf,
    name: CString,
    pub root: OwnedFd,
    pub stat: Stat,
}

/// DIR split into its parent and last component, refusing forms whose last component is not
/// the tree's own name (`.`, `..`, or a filesystem root).
fn split(dir: &Path) -> Result<(PathBuf, CString)> {
    let bytes = dir.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err(Error::Usage(format!(
            "{}: path contains a NUL byte",
            escape_path(dir)
        )));
    }
    // A trailing slash would make the kernel follow a symlink in the last component: strip it
    // and open the last component ourselves, without following.
    let trimmed = {
        let mut end = bytes.len();
        while end > 1 && bytes[end - 1] == b'/' {
            end -= 1;
        }
        &bytes[..end]
    };
    let (parent, name): (&[u8], &[u8]) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => (b"/", &trimmed[1..]),
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (b".", trimmed),
    };
    if name.is_empty() || name == b"." || name == b".." {
        return Err(Error::Usage(format!(
            "{}: give the directory by its own name (not '.', '..' or a filesystem root): the \
             journal goes beside it",
            escape_path(dir)
        )));
    }
    Ok((
        PathBuf::from(OsStr::from_bytes(parent)),
        CString::new(name).expect("no NUL"),
    ))
}

impl Tree {
    /// Opens DIR: its parent (symlinks in the parent's path are followed), then its last
    /// component under the parent with `O_NOFOLLOW`, so a symlink there is refused whatever
    /// the spelling (`DIR`, `DIR/`).
    pub fn open(dir: &Path) -> Result<Tree> {
        let (parent_path, name) = split(dir)?;
        let c = CString::new(parent_path.as_os_str().as_bytes()).expect("no NUL");
        let parent = sysfs::open_dir_following(&c).map_err(|e| match e {
            Errno::ENOENT | Errno::ENOTDIR => {
                Error::Usage(format!("{}: no such directory", escape_path(dir)))
            }
            e => Error::sys(format!("{}: open", escape_path(&parent_path)), e),
        })?;
        let symlink = || {
            Error::Usage(format!(
                "{}: is a symlink; refusing to follow it (give the real directory)",
                escape_path(dir)
            ))
        };
        let root = match sysfs::open_dir(Some(parent.as_fd()), &name) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(symlink()),
            Err(Errno::ENOTDIR) => {
                let st = sysfs::statx(parent.as_fd(), Some(&name))
                    .map_err(|e| Error::sys(format!("{}: stat", escape_path(dir)), e))?;
                return Err(if st.is_symlink() {
                    symlink()
                } else {
                    Error::Usage(format!("{}: not a directory", escape_path(dir)))
                });
            }
            Err(Errno::ENOENT) => {
                return Err(Error::Usage(format!(
                    "{}: no such directory",
                    escape_path(dir)
                )))
            }
            Err(e) => return Err(Error::sys(format!("{}: open", escape_path(dir)), e)),
        };
        let stat = sysfs::statx(root.as_fd(), None)
            .map_err(|e| Error::sys(format!("{}: stat", escape_path(dir)), e))?;
        Ok(Tree {
            path: dir.to_path_buf(),
            parent,
            parent_path,
            name,
            root,
            stat,
        })
    }

    pub fn id(&self) -> TreeId {
        TreeId {
            dev: self.stat.dev,
            ino: self.stat.ino,
            btime: self.stat.btime_ns,
        }
    }

    /// `.NAME.idshift-journal`, the journal's name in the parent.
    pub fn journal_name(&self) -> CString {
        let mut n = b".".to_vec();
        n.extend_from_slice(self.name.as_bytes());
        n.extend_from_slice(b".idshift-journal");
        CString::new(n).expect("no NUL")
    }

    /// The path of an entry of the parent, for messages.
    pub fn beside(&self, name: &CStr) -> PathBuf {
        self.parent_path.join(OsStr::from_bytes(name.to_bytes()))
    }

    pub fn journal_path(&self) -> PathBuf {
        self.beside(&self.journal_name())
    }

    /// Takes the tree's exclusive lock for as long as the tree is open: one run at a time,
    /// however the tree is reached (the lock is on the root's inode). A second run is refused
    /// naming the process that holds it.
    pub fn lock(&self) -> Result<()> {
        // The holder may be ending as we look: when /proc/locks no longer names it, try again.
        for _ in 0..50 {
            match sysfs::try_lock_exclusive(self.root.as_fd()) {
                Ok(()) => return Ok(()),
                Err(Errno::EWOULDBLOCK) => {}
                Err(e) => return Err(Error::sys(format!("{}: lock", escape_path(&self.path)), e)),
            }
            if let Some(pid) = lock_holder(self.stat.dev, self.stat.ino) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                return Err(Error::Refused(format!(
                    "{}: another idshift run (process {pid}, {}) is working on this tree; wait \
                     for it to finish, then run again",
                    escape_path(&self.path),
                    comm.trim()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(Error::Refused(format!(
            "{}: another idshift run holds this tree's lock; wait for it to finish, then run \
             again",
            escape_path(&self.path)
        )))
    }
}

/// The pid holding a `flock` on inode `(dev, ino)`, from `/proc/locks`.
fn lock_holder(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    lock_holder_in(&text, dev, ino)
}

fn lock_holder_in(text: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t)
    );
    text.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF" ("->" marks a waiter).
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_the_last_component_and_refuses_dots() {
        let ok = |p: &str, parent: &str, name: &str| {
            let (a, b) = split(Path::new(p)).unwrap();
            assert_eq!(
                (a.to_str().unwrap(), b.to_str().unwrap()),
                (parent, name),
                "{p}"
            );
        };
        ok("rootfs", ".", "rootfs");
        ok("rootfs/", ".", "rootfs");
        ok("a/b/rootfs//", "a/b", "rootfs");
        ok("/rootfs", "/", "rootfs");
        ok("/a/../rootfs", "/a/..", "rootfs");
        for bad in ["/", "//", ".", "..", "a/.", "a/..", "a/./", ""] {
            assert!(split(Path::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lock_holder_from_proc_locks() {
        let text = "1: POSIX  ADVISORY  WRITE 99 fd:00:5678 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 77 fd:00:9 0 EOF\n";
        let dev = libc::makedev(0xfd, 0) as u64;
        assert_eq!(lock_holder_in(text, dev, 5678), Some(1234));
        assert_eq!(lock_holder_in(text, dev, 9), Some(77));
        assert_eq!(lock_holder_in(text, dev, 1), None);
    }
}
