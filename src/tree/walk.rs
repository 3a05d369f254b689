//! The parallel walk: directory fds all the way down, never a path string, never a symlink
//! followed, staying on the root's mount unless told otherwise.
//!
//! Each directory is one rayon task: it opens itself (`O_NOFOLLOW` under its parent's fd),
//! checks its mount, reads its entries a `getdents64` call at a time, spawns a task per
//! subdirectory, and hands the visitor its own inode and its non-directory entries in batches.
//! A directory's first [`CHUNK`] entries are its own task's; every further [`CHUNK`] is a task
//! of its own, run by any thread, so that one huge directory keeps every thread busy, while at
//! most [`CHUNKS_IN_FLIGHT`] chunks per directory wait (the reader works through one itself
//! when that many do), so its listing is never held whole. A task keeps only its parent's fd
//! (shared) and its name until it runs, so the fds open at once stay few.
//!
//! A walk that someone else changes under it can miss entries: a directory moved, mid-walk,
//! from one not read yet into one already read is never visited. Each directory's (dev, ino,
//! mtime) is noted when it is opened, and after the walk every directory is looked at again:
//! one whose entries changed since (its mtime moved, or it is no longer where it was) is
//! reported to the visitor ([`Visitor::changed`]), so that no walk claims a tree it may not have
//! seen whole. Kernels since 6.13 give a directory whose times were just read a fine-grained
//! mtime at its next change; on older ones (coarse timestamps) a change within the same clock
//! tick as the directory's previous one can go unseen.

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

    /// Runs once per batch of a directory's inodes (its own inode is in the first one; a large
    /// directory's entries come in several batches, finished on any thread, in any order).
    fn finish(&self, dir: BorrowedFd<'_>, dir_path: &Path, batch: Vec<Self::Item>);

    /// A failure that stops the walk at one inode or directory.
    fn error(&self, path: PathBuf, op: &'static str, errno: Errno);

    /// A mount point left alone.
    fn mount_skipped(&self, path: PathBuf);

    /// A directory whose entries were added, removed or renamed while the walk ran (or that is
    /// no longer where it was): what was moved into it may not have been visited.
    fn changed(&self, path: PathBuf);
}

/// Non-directory entries handed to the visitor in one batch.
pub const CHUNK: usize = 1024;

/// Chunks of one directory waiting for a thread before its reader processes one itself.
pub const CHUNKS_IN_FLIGHT: usize = 64;

/// A directory as the walk found it, to be looked at again at the end.
struct Seen {
    path: Arc<PathBuf>,
    dev: u64,
    ino: u64,
    mtime_ns: i128,
}

struct Walk<'v, V: Visitor> {
    visitor: &'v V,
    root_mnt: u64,
    root_dev: u64,
    cross_mounts: bool,
    seen: std::sync::Mutex<Vec<Seen>>,
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
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Seen {
                path: Arc::clone(&path),
                dev: st.dev,
                ino: st.ino,
                mtime_ns: st.mtime_ns,
            });
        let mut batch = Vec::new();
        let here = At {
            dir: fd.as_fd(),
            name: None,
            dir_path: &path,
        };
        self.visitor.visit(here, &st, &mut batch);
        let mut in_flight: Option<Arc<std::sync::atomic::AtomicUsize>> = None;
        let mut names: Vec<CString> = Vec::new();
        {
            let mut reader = sysfs::DirReader::new(fd.as_fd());
            loop {
                let entries = match reader.next_batch() {
                    Ok(Some(entries)) => entries,
                    Ok(None) => break,
                    Err(e) => {
                        self.visitor.error(path.to_path_buf(), "read directory", e);
                        break;
                    }
                };
                names.reserve(entries.len());
                for entry in entries {
                    if entry.kind == libc::DT_DIR {
                        self.spawn_subdir(scope, &fd, &path, entry.name);
                    } else {
                        names.push(entry.name);
                    }
                }
                // The first chunk stays with this task (with the directory's own inode); the
                // others go to any thread, or are done here when enough already wait.
                while names.len() >= 2 * CHUNK {
                    let chunk: Vec<CString> = names.drain(names.len() - CHUNK..).collect();
                    let counter = in_flight.get_or_insert_with(Default::default);
                    self.hand_out(scope, &fd, &path, chunk, counter);
                }
            }
        }
        self.entries(scope, &fd, &path, names, &mut batch);
        self.visitor.finish(fd.as_fd(), &path, batch);
    }

    /// `chunk` as a task of its own, or done here when [`CHUNKS_IN_FLIGHT`] already wait.
    fn hand_out<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        fd: &Arc<OwnedFd>,
        path: &Arc<PathBuf>,
        chunk: Vec<CString>,
        in_flight: &Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::Ordering;
        if in_flight.fetch_add(1, Ordering::AcqRel) >= CHUNKS_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            self.chunk(scope, fd, path, chunk);
            return;
        }
        let (fd, path, in_flight) = (Arc::clone(fd), Arc::clone(path), Arc::clone(in_flight));
        scope.spawn(move |scope| {
            self.chunk(scope, &fd, &path, chunk);
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// One chunk of a directory's entries as a batch of its own, finished.
    fn chunk<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        fd: &Arc<OwnedFd>,
        path: &Arc<PathBuf>,
        names: Vec<CString>,
    ) {
        let mut batch = Vec::new();
        self.entries(scope, fd, path, names, &mut batch);
        self.visitor.finish(fd.as_fd(), path, batch);
    }

    /// Stats and visits non-directory entries of `fd` (a directory found among them, whose
    /// type `getdents` did not say or which replaced the entry since, is walked as one).
    fn entries<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        fd: &Arc<OwnedFd>,
        path: &Arc<PathBuf>,
        names: Vec<CString>,
        batch: &mut Vec<V::Item>,
    ) {
        for name in names {
            let at = At {
                dir: fd.as_fd(),
                name: Some(&name),
                dir_path: path,
            };
            let st = match sysfs::statx(fd.as_fd(), Some(&name)) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue, // gone since readdir
                Err(e) => {
                    self.visitor.error(at.path(), "stat", e);
                    continue;
                }
            };
            if st.is_dir() {
                // DT_UNKNOWN, or replaced by a directory since readdir.
                self.spawn_subdir(scope, fd, path, name);
                continue;
            }
            if !self.same_mount(&st) {
                self.visitor.mount_skipped(at.path());
                continue;
            }
            self.visitor.visit(at, &st, batch);
        }
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
        seen: std::sync::Mutex::new(Vec::new()),
    };
    let path = Arc::new(root_path.to_path_buf());
    // The walk reads the root through its own fd; this one only looks at it again at the end.
    let reader = Arc::new(root.try_clone().map_err(io_errno)?);
    pool.scope(|scope| walk.dir(scope, reader, st, path));
    let seen = walk.seen.into_inner().unwrap_or_else(|e| e.into_inner());
    recheck(pool, root.as_fd(), root_path, &seen, visitor);
    Ok(())
}

/// Looks at every directory the walk read again, from the root down by name without following
/// a symlink: one that is gone, is another inode now, or whose mtime moved (an entry added,
/// removed or renamed) is reported as changed.
fn recheck<V: Visitor>(
    pool: &rayon::ThreadPool,
    root: BorrowedFd<'_>,
    root_path: &Path,
    seen: &[Seen],
    visitor: &V,
) {
    use rayon::prelude::*;
    pool.install(|| {
        seen.par_iter().for_each(|s| {
            let now = match s.path.strip_prefix(root_path) {
                Ok(rel) => stat_beneath(root, rel.as_os_str().as_encoded_bytes()),
                Err(_) => Err(Errno::EINVAL),
            };
            let same =
                now.is_ok_and(|n| n.dev == s.dev && n.ino == s.ino && n.mtime_ns == s.mtime_ns);
            if !same {
                visitor.changed(s.path.to_path_buf());
            }
        })
    });
}

/// `statx` of `rel` (no symlink followed at its end) under `dir`, however long `rel` is: past
/// what one path lookup takes, the directories on the way are opened a part at a time.
fn stat_beneath(dir: BorrowedFd<'_>, rel: &[u8]) -> std::result::Result<Stat, Errno> {
    const PART: usize = 2048;
    if rel.is_empty() {
        return sysfs::statx(dir, None);
    }
    if rel.len() <= PART {
        return sysfs::statx(dir, Some(&CString::new(rel).map_err(|_| Errno::EINVAL)?));
    }
    let cut = rel[..PART]
        .iter()
        .rposition(|&b| b == b'/')
        .ok_or(Errno::ENAMETOOLONG)?;
    let part = CString::new(&rel[..cut]).map_err(|_| Errno::EINVAL)?;
    let next = sysfs::open_dir(Some(dir), &part)?;
    stat_beneath(next.as_fd(), &rel[cut + 1..])
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it sees; when the first of `a` and `z` is finished, moves the other's
    /// subdirectory into it (the adversary's move from a directory not read yet into one
    /// already read).
    struct Mover {
        root: PathBuf,
        visited: Mutex<Vec<PathBuf>>,
        moved: Mutex<Option<PathBuf>>,
        changed: Mutex<Vec<PathBuf>>,
    }

    impl Visitor for Mover {
        type Item = ();

        fn visit(&self, at: At<'_>, _: &Stat, _: &mut Vec<()>) {
            self.visited.lock().unwrap().push(at.path());
        }

        fn finish(&self, _: BorrowedFd<'_>, dir_path: &Path, _: Vec<()>) {
            let name = dir_path.file_name().and_then(|n| n.to_str());
            let other = match name {
                Some("a") => "z",
                Some("z") => "a",
                _ => return,
            };
            let mut moved = self.moved.lock().unwrap();
            if moved.is_none() {
                let from = self.root.join(other).join("inner");
                std::fs::rename(&from, dir_path.join("moved")).unwrap();
                *moved = Some(dir_path.to_path_buf());
            }
        }

        fn error(&self, path: PathBuf, op: &'static str, errno: Errno) {
            panic!("{}: {op}: {errno}", crate::report::escape_path(&path));
        }

        fn mount_skipped(&self, path: PathBuf) {
            panic!("{}: mount", crate::report::escape_path(&path));
        }

        fn changed(&self, path: PathBuf) {
            self.changed.lock().unwrap().push(path);
        }
    }

    /// Walks `root` on `threads` threads with a [`Mover`].
    fn walk_with_mover(root: &Path, threads: usize) -> Mover {
        let name = CString::new(root.as_os_str().as_encoded_bytes()).unwrap();
        let fd = sysfs::open_dir(None, &name).unwrap();
        let mover = Mover {
            root: root.to_path_buf(),
            visited: Mutex::new(Vec::new()),
            moved: Mutex::new(None),
            changed: Mutex::new(Vec::new()),
        };
        walk(&pool(threads).unwrap(), fd.as_fd(), root, false, &mover).unwrap();
        mover
    }

    #[test]
    fn a_directory_moved_into_one_already_read_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        for d in ["a/inner", "z/inner"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            std::fs::write(root.join(d).join("file"), "x").unwrap();
        }
        let mover = walk_with_mover(&root, 1);
        let into = mover.moved.lock().unwrap().clone().expect("the mover ran");
        let visited = mover.visited.lock().unwrap();
        // The moved directory was read neither where it was nor where it went...
        assert!(
            !visited.contains(&into.join("moved/file")),
            "{visited:?}: the walk saw the moved entry; the test no longer races"
        );
        // ...and the walk says so.
        let changed = mover.changed.lock().unwrap();
        assert!(changed.contains(&into), "not reported: {changed:?}");
    }

    #[test]
    fn an_undisturbed_walk_reports_no_change() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        let mover = walk_with_mover(&root, 2);
        assert_eq!(mover.visited.lock().unwrap().len(), 3);
        assert!(mover.changed.lock().unwrap().is_empty());
    }
}
