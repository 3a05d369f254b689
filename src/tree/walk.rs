//! The parallel walk: directory fds all the way down, never a path string, never a symlink
//! followed, staying on the root's mount unless told otherwise.
//!
//! Each directory is one rayon task: it opens itself (`O_NOFOLLOW` under its parent's fd),
//! checks its mount, reads its entries, hands the visitor its own inode and every non-directory
//! entry as one batch, and spawns a task per subdirectory. A task keeps only its parent's fd
//! (shared) and its name until it runs, so the fds open at once stay few.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::sys::fs::{self as sysfs, Stat};

/// The pool a walk runs on: `threads` workers named `idshift-walk-N`.
pub fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("idshift-walk-{i}"))
        .build()
        .map_err(|e| Error::Threads {
            threads,
            reason: e.to_string(),
        })
}

/// The inode being visited: an entry of `dir`, or `dir` itself when `name` is `None`.
#[derive(Clone, Copy)]
pub struct At<'a> {
    pub dir: BorrowedFd<'a>,
    pub name: Option<&'a CStr>,
    /// The directory's path, for messages only.
    pub dir_path: &'a Path,
}

impl At<'_> {
    /// The full path, built only when a message needs it.
    pub fn path(&self) -> PathBuf {
        match self.name {
            None => self.dir_path.to_path_buf(),
            Some(n) => self.dir_path.join(os(n)),
        }
    }
}

/// A file name as an `OsStr` (Unix names are bytes).
pub fn os(name: &CStr) -> &std::ffi::OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(name.to_bytes())
}

/// What the walk does at each inode.
pub trait Visitor: Sync {
    /// What `visit` leaves for `finish` (e.g. a planned change).
    type Item: Send;

    /// Looks at one inode; may push work for the end of its directory's batch.
    fn visit(&self, at: At<'_>, stat: &Stat, batch: &mut Vec<Self::Item>);

    /// Runs once per directory, after its own inode and every non-directory entry.
    fn finish(&self, dir: BorrowedFd<'_>, dir_path: &Path, batch: Vec<Self::Item>);

    /// A failure that stops the walk at one inode or directory.
    fn error(&self, path: PathBuf, op: &'static str, errno: Errno);

    /// A mount point left alone.
    fn mount_skipped(&self, path: PathBuf);
}

struct Walk<'v, V: Visitor> {
    visitor: &'v V,
    root_mnt: u64,
    root_dev: u64,
    cross_mounts: bool,
}

impl<V: Visitor> Walk<'_, V> {
    fn same_mount(&self, st: &Stat) -> bool {
        if self.cross_mounts {
            return true;
        }
        if st.mnt_id != 0 && self.root_mnt != 0 {
            st.mnt_id == self.root_mnt
        } else {
            st.dev == self.root_dev
        }
    }

    /// Walks one directory that is already open and stat-ed.
    fn dir<'s>(&'s self, scope: &rayon::Scope<'s>, fd: Arc<OwnedFd>, st: Stat, path: Arc<PathBuf>) {
        let mut batch = Vec::new();
        let here = At {
            dir: fd.as_fd(),
            name: None,
            dir_path: &path,
        };
        self.visitor.visit(here, &st, &mut batch);
        let entries = match sysfs::read_dir(fd.as_fd()) {
            Ok(e) => e,
            Err(e) => {
                self.visitor.error(path.to_path_buf(), "read directory", e);
                self.visitor.finish(fd.as_fd(), &path, batch);
                return;
            }
        };
        for entry in entries {
            if entry.kind == libc::DT_DIR {
                self.spawn_subdir(scope, &fd, &path, entry.name);
                continue;
            }
            let at = At {
                dir: fd.as_fd(),
                name: Some(&entry.name),
                dir_path: &path,
            };
            let st = match sysfs::statx(fd.as_fd(), Some(&entry.name)) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue, // gone since readdir
                Err(e) => {
                    self.visitor.error(at.path(), "stat", e);
                    continue;
                }
            };
            if st.is_dir() {
                // DT_UNKNOWN, or replaced by a directory since readdir.
                self.spawn_subdir(scope, &fd, &path, entry.name);
                continue;
            }
            if !self.same_mount(&st) {
                self.visitor.mount_skipped(at.path());
                continue;
            }
            self.visitor.visit(at, &st, &mut batch);
        }
        self.visitor.finish(fd.as_fd(), &path, batch);
    }

    fn spawn_subdir<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        parent: &Arc<OwnedFd>,
        parent_path: &Arc<PathBuf>,
        name: CString,
    ) {
        let parent = Arc::clone(parent);
        let parent_path = Arc::clone(parent_path);
        scope.spawn(move |scope| {
            let path = parent_path.join(os(&name));
            let fd = match sysfs::open_dir(Some(parent.as_fd()), &name) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return,
                // A symlink or a file now stands there: it is someone's entry, not a directory
                // to walk; the next run sees it as what it is.
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                    self.visitor.error(
                        path,
                        "open directory (replaced during the walk)",
                        Errno::ELOOP,
                    );
                    return;
                }
                Err(e) => {
                    self.visitor.error(path, "open directory", e);
                    return;
                }
            };
            drop(parent);
            let st = match sysfs::statx(fd.as_fd(), None) {
                Ok(st) => st,
                Err(e) => {
                    self.visitor.error(path, "stat", e);
                    return;
                }
            };
            if !self.same_mount(&st) {
                self.visitor.mount_skipped(path);
                return;
            }
            self.dir(scope, Arc::new(fd), st, Arc::new(path));
        });
    }
}

/// Walks the tree under `root` (already opened with `O_NOFOLLOW`) on `pool`. The walk reads
/// the root through a new open of it, so the caller's fd (and its directory offset, and any
/// lock on it) is left as it was: two walks of one root see the same entries.
pub fn walk<V: Visitor>(
    pool: &rayon::ThreadPool,
    root: BorrowedFd<'_>,
    root_path: &Path,
    cross_mounts: bool,
    visitor: &V,
) -> std::result::Result<(), Errno> {
    let root = sysfs::open_dir(Some(root), c".")?;
    let st = sysfs::statx(root.as_fd(), None)?;
    let walk = Walk {
        visitor,
        root_mnt: st.mnt_id,
        root_dev: st.dev,
        cross_mounts,
    };
    let path = Arc::new(root_path.to_path_buf());
    pool.scope(|scope| walk.dir(scope, Arc::new(root), st, path));
    Ok(())
}
