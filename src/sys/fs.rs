//! Directory-fd based file operations for the shift engine: every call names its target as a
//! directory fd plus one path component (or the fd itself), never as a path string, and never
//! follows a symlink.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// `""`, for the `AT_EMPTY_PATH` calls that act on the fd itself.
const EMPTY: &CStr = c"";

/// What the shift engine needs to know of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub ino: u64,
    pub size: u64,
    /// The device, as `makedev(major, minor)`.
    pub dev: u64,
    /// The mount the inode was reached through (`STATX_MNT_ID`); 0 if the kernel has none.
    pub mnt_id: u64,
    /// Status change time, in nanoseconds since the epoch.
    pub ctime_ns: i128,
    /// Birth time, where the filesystem keeps one (`STATX_BTIME`): with `(dev, ino)` it tells
    /// an inode from a later one that reuses its number.
    pub btime_ns: Option<i128>,
    pub mtime_ns: i128,
    pub atime_ns: i128,
}

impl Stat {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == libc::S_IFLNK
    }

    pub fn is_regular(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }
}

fn ns(t: libc::statx_timestamp) -> i128 {
    t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
}

/// `statx(dir, name, AT_SYMLINK_NOFOLLOW)`, or of `dir` itself when `name` is `None`.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/statx.2.html)
pub fn statx(dir: BorrowedFd, name: Option<&CStr>) -> Result<Stat, Errno> {
    let mut buf = MaybeUninit::<libc::statx>::zeroed();
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | libc::AT_STATX_SYNC_AS_STAT
        | if name.is_none() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    let mask = libc::STATX_BASIC_STATS | libc::STATX_MNT_ID | libc::STATX_BTIME;
    // SAFETY: the path is a valid C string, `buf` is a writable statx of the right size.
    let r = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.unwrap_or(EMPTY).as_ptr(),
            flags,
            mask,
            buf.as_mut_ptr(),
        )
    };
    Errno::result(r)?;
    // SAFETY: statx succeeded and filled the buffer (which was zeroed to begin with).
    let s = unsafe { buf.assume_init() };
    Ok(Stat {
        mode: s.stx_mode as u32,
        uid: s.stx_uid,
        gid: s.stx_gid,
        nlink: s.stx_nlink,
        ino: s.stx_ino,
        size: s.stx_size,
        dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
        mnt_id: if s.stx_mask & libc::STATX_MNT_ID != 0 {
            s.stx_mnt_id
        } else {
            0
        },
        ctime_ns: ns(s.stx_ctime),
        btime_ns: (s.stx_mask & libc::STATX_BTIME != 0).then(|| ns(s.stx_btime)),
        mtime_ns: ns(s.stx_mtime),
        atime_ns: ns(s.stx_atime),
    })
}

/// `openat(dir, name, O_DIRECTORY|O_NOFOLLOW|O_NOATIME)`—Open a directory without following a
/// symlink and without touching its atime (retried without `O_NOATIME` where that is refused).
/// With `dir` `None`, `name` is a path opened from the current directory (the walk's root).
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/openat.2.html)
pub fn open_dir(dir: Option<BorrowedFd>, name: &CStr) -> Result<OwnedFd, Errno> {
    open_dir_flags(dir, name, libc::O_NOFOLLOW)
}

/// `openat(AT_FDCWD, path, O_DIRECTORY)`—Open a directory by path, following symlinks (for
/// the parent of a tree: only a tree's own last component must not be a symlink).
pub fn open_dir_following(path: &CStr) -> Result<OwnedFd, Errno> {
    open_dir_flags(None, path, 0)
}

fn open_dir_flags(dir: Option<BorrowedFd>, name: &CStr, extra: i32) -> Result<OwnedFd, Errno> {
    let base = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | extra;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    for flags in [base | libc::O_NOATIME, base] {
        // SAFETY: valid C string; the returned fd, if any, is owned by us alone.
        let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags) };
        match Errno::result(fd) {
            // SAFETY: openat returned a new, open fd.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(Errno::EPERM) if flags & libc::O_NOATIME != 0 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EPERM)
}

/// `openat(dir, name, O_PATH|O_NOFOLLOW)`—A handle on any inode, opening nothing: a symlink,
/// a FIFO or a device is not opened, only named, so it can be checked before it is read.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/openat.2.html) (`O_PATH`)
pub fn open_path(dir: BorrowedFd, name: &CStr) -> Result<OwnedFd, Errno> {
    let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid C string; the returned fd, if any, is owned by us alone.
    let fd = Errno::result(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: openat returned a new, open fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`—Change the owner without following;
/// of `dir` itself (`AT_EMPTY_PATH`) when `name` is `None`.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/fchownat.2.html)
pub fn chown(dir: BorrowedFd, name: Option<&CStr>, uid: u32, gid: u32) -> Result<(), Errno> {
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_none() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: valid fd and C string.
    let r = unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.unwrap_or(EMPTY).as_ptr(),
            uid,
            gid,
            flags,
        )
    };
    Errno::result(r).map(drop)
}

/// `fchmodat2(dir, name, mode, AT_SYMLINK_NOFOLLOW)`—Set the mode of a non-symlink without
/// following (Linux ≥ 6.6); elsewhere through an `O_PATH` handle and its `/proc/self/fd` link,
/// after checking that the handle is not a symlink.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/fchmodat.2.html)
pub fn chmod(dir: BorrowedFd, name: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: valid fd and C string; fchmodat2 takes (int, const char *, mode_t, unsigned int).
    let r = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode & 0o7777,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match Errno::result(r) {
        Ok(_) => Ok(()),
        Err(Errno::ENOSYS) => {
            let handle = open_path(dir, name)?;
            if statx(handle.as_fd_borrowed(), None)?.is_symlink() {
                return Err(Errno::ELOOP);
            }
            let link = proc_fd_path(&handle);
            // SAFETY: valid C string; the magic link names the inode we checked.
            Errno::result(unsafe { libc::chmod(link.as_ptr(), mode & 0o7777) }).map(drop)
        }
        Err(e) => Err(e),
    }
}

trait AsFdBorrowed {
    fn as_fd_borrowed(&self) -> BorrowedFd<'_>;
}

impl AsFdBorrowed for OwnedFd {
    fn as_fd_borrowed(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

/// `/proc/self/fd/N` for an fd, as a C string.
pub(crate) fn proc_fd_path(fd: &impl AsRawFd) -> std::ffi::CString {
    std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

/// Reopens an `O_PATH` handle for reading and writing (appending) through its
/// `/proc/self/fd` link: the same inode, never a path resolved anew.
pub fn reopen_rw(handle: &OwnedFd) -> Result<std::fs::File, Errno> {
    let link = proc_fd_path(handle);
    let flags = libc::O_RDWR | libc::O_APPEND | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;
    // SAFETY: valid C string; the returned fd, if any, is owned by us alone.
    let fd = Errno::result(unsafe { libc::open(link.as_ptr(), flags) })?;
    // SAFETY: open returned a new, open fd.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `openat(dir, name, O_CREAT|O_EXCL|O_WRONLY|O_NOFOLLOW, 0600)`—Create a new private file.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/openat.2.html)
pub fn create_private(dir: BorrowedFd, name: &CStr) -> Result<std::fs::File, Errno> {
    let flags = libc::O_CREAT
        | libc::O_EXCL
        | libc::O_WRONLY
        | libc::O_APPEND
        | libc::O_NOFOLLOW
        | libc::O_CLOEXEC
        | libc::O_NOCTTY;
    // SAFETY: valid fd and C string; the returned fd, if any, is owned by us alone.
    let fd = Errno::result(unsafe {
        libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o600 as libc::c_uint)
    })?;
    // SAFETY: openat returned a new, open fd.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `unlinkat(dir, name, 0)`—Remove a file entry of `dir`.
pub fn unlink(dir: BorrowedFd, name: &CStr) -> Result<(), Errno> {
    // SAFETY: valid fd and C string.
    Errno::result(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

/// `renameat2(dir, from, dir, to, RENAME_NOREPLACE)`—Rename within one directory, never over
/// an existing entry.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/rename.2.html)
pub fn rename_noreplace(dir: BorrowedFd, from: &CStr, to: &CStr) -> Result<(), Errno> {
    // SAFETY: valid fd and C strings.
    let r = unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            from.as_ptr(),
            dir.as_raw_fd(),
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    Errno::result(r).map(drop)
}

/// `flock(fd, LOCK_EX|LOCK_NB)`—Take the exclusive lock on an open file (a tree's root), or
/// fail with `EWOULDBLOCK` when another open file description holds it. Released when every
/// fd of this description is closed, also when the process dies.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/flock.2.html)
pub fn try_lock_exclusive(fd: BorrowedFd) -> Result<(), Errno> {
    // SAFETY: valid fd.
    Errno::result(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }).map(drop)
}

/// `openat2(AT_FDCWD, path, {O_PATH | O_DIRECTORY | O_CLOEXEC, RESOLVE_NO_SYMLINKS})`—A handle
/// on the directory at `path`, refusing (`ELOOP`) a symlink anywhere on the way: for a path that
/// was checked already, so that a symlink swapped in since cannot redirect its use.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/openat2.2.html)
pub fn open_dir_no_symlinks(path: &CStr) -> Result<OwnedFd, Errno> {
    let mut how: libc::open_how = {
        // SAFETY: open_how is a plain struct of integers; all zeroes is its empty value.
        unsafe { std::mem::zeroed() }
    };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: valid C string, and an open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = Errno::result(fd)?;
    // SAFETY: openat2 returned a new, open fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`—Mark every fd from `first` up close-on-exec,
/// so that a program about to be executed inherits none of them.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/close_range.2.html)
pub fn cloexec_from(first: u32) -> Result<(), Errno> {
    // SAFETY: close_range takes no pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(r).map(drop)
}

/// `prctl(PR_CAPBSET_DROP, cap)`—Remove a capability from the bounding set, so that no program
/// executed from here on can hold it.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/PR_CAPBSET_DROP.2const.html)
pub fn drop_bounding_cap(cap: i32) -> Result<(), Errno> {
    // SAFETY: prctl with integer arguments only.
    Errno::result(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })
        .map(drop)
}

/// `fsync(fd)`—Make what was written to a file (or a directory's entries and xattrs) durable.
pub fn fsync(fd: BorrowedFd) -> Result<(), Errno> {
    // SAFETY: valid fd.
    Errno::result(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
}

/// One directory entry.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: std::ffi::CString,
    /// `d_type` (`DT_DIR`, `DT_REG`, …; `DT_UNKNOWN` where the filesystem does not say).
    pub kind: u8,
}

/// A directory read a `getdents64` call at a time (about a thousand entries), so that a huge
/// directory is never held whole.
pub struct DirReader<'fd> {
    dir: BorrowedFd<'fd>,
    buf: Vec<u8>,
}

impl<'fd> DirReader<'fd> {
    pub fn new(dir: BorrowedFd<'fd>) -> Self {
        DirReader {
            dir,
            buf: vec![0u8; 32 * 1024],
        }
    }

    /// The next entries (never `.` or `..`; possibly none from one call), or `None` at the end.
    ///
    /// # References
    ///  - [getdents64(2)](https://man7.org/linux/man-pages/man2/getdents64.2.html)
    pub fn next_batch(&mut self) -> Result<Option<Vec<DirEntry>>, Errno> {
        let buf = &mut self.buf;
        // SAFETY: `buf` is writable for its length; the kernel fills it with linux_dirent64 records.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                self.dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        let n = Errno::result(n)? as usize;
        if n == 0 {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut off = 0;
        while off < n {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            let kind = buf[off + 18];
            let name_bytes = &buf[off + 19..off + reclen];
            let name = CStr::from_bytes_until_nul(name_bytes).map_err(|_| Errno::EIO)?;
            let bytes = name.to_bytes();
            if bytes != b"." && bytes != b".." {
                out.push(DirEntry {
                    name: name.to_owned(),
                    kind,
                });
            }
            off += reclen;
        }
        Ok(Some(out))
    }
}

/// Raises the soft limit on open files to the hard limit (the walk keeps a directory fd open
/// per directory being worked on).
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
