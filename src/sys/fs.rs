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
    /// The device, as `makedev(major, minor)`.
    pub dev: u64,
    /// The mount the inode was reached through (`STATX_MNT_ID`); 0 if the kernel has none.
    pub mnt_id: u64,
    /// Status change time, in nanoseconds since the epoch.
    pub ctime_ns: i128,
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
    let mask = libc::STATX_BASIC_STATS | libc::STATX_MNT_ID;
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
        dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
        mnt_id: if s.stx_mask & libc::STATX_MNT_ID != 0 {
            s.stx_mnt_id
        } else {
            0
        },
        ctime_ns: ns(s.stx_ctime),
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
    let base = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
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

/// `openat(dir, name, O_PATH|O_NOFOLLOW)`—A handle on any inode, opening nothing.
fn open_path(dir: BorrowedFd, name: &CStr) -> Result<OwnedFd, Errno> {
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

/// Reads every entry of a directory but `.` and `..`, with `getdents64`.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/getdents64.2.html)
pub fn read_dir(dir: BorrowedFd) -> Result<Vec<DirEntry>, Errno> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length; the kernel fills it with linux_dirent64 records.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        let n = Errno::result(n)? as usize;
        if n == 0 {
            return Ok(out);
        }
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
