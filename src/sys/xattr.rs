//! Extended attributes of an inode named by a directory fd and one component, never followed:
//! `listxattrat`/`getxattrat`/`setxattrat` (Linux ≥ 6.13), else an `O_PATH` handle and its
//! `/proc/self/fd` magic link, which resolves to the inode itself.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;

use super::fs::proc_fd_path;

/// The number of `setxattrat` (Linux 6.13), followed by `getxattrat` and `listxattrat`; `None`
/// where this table does not know it, and then every call takes the fallback. The locked libc
/// has these constants for m68k only.
///
/// Since Linux 5.1 every architecture numbers new syscalls alike (463-465 here), except alpha
/// (110 further: 573-575; no Rust target) and MIPS, whose tables count from the ABI's base
/// (o32 4000, n64 5000, n32 6000). x32 (x86_64 with 32-bit pointers, which sets
/// `__X32_SYSCALL_BIT`) is left to the fallback.
///
/// # References
///  - Linux 6.13: `include/uapi/asm-generic/unistd.h`, `arch/x86/entry/syscalls/syscall_64.tbl`,
///    `arch/mips/kernel/syscalls/syscall_{o32,n64,n32}.tbl`, `arch/alpha/kernel/syscalls/syscall.tbl`
const SETXATTRAT: Option<libc::c_long> = if cfg!(any(
    target_arch = "x86",
    all(target_arch = "x86_64", target_pointer_width = "64"),
    target_arch = "arm",
    target_arch = "aarch64",
    target_arch = "riscv32",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "s390x",
    target_arch = "sparc",
    target_arch = "sparc64",
    target_arch = "m68k",
    target_arch = "csky",
    target_arch = "hexagon",
)) {
    Some(463)
} else if cfg!(any(target_arch = "mips", target_arch = "mips32r6")) {
    Some(4000 + 463)
} else if cfg!(all(
    any(target_arch = "mips64", target_arch = "mips64r6"),
    target_pointer_width = "64"
)) {
    Some(5000 + 463)
} else if cfg!(any(target_arch = "mips64", target_arch = "mips64r6")) {
    Some(6000 + 463)
} else {
    None
};

/// The number of `setxattrat` plus `offset` (1: `getxattrat`, 2: `listxattrat`); ENOSYS where
/// unknown, which sends the caller to the fallback as an old kernel does.
fn xattrat(offset: libc::c_long) -> Result<libc::c_long, Errno> {
    SETXATTRAT.map(|n| n + offset).ok_or(Errno::ENOSYS)
}

/// `struct xattr_args` of `getxattrat`/`setxattrat`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Cleared the first time the kernel answers ENOSYS to an `*xattrat` call.
static HAVE_AT: AtomicBool = AtomicBool::new(true);

fn at_flags(name: Option<&CStr>) -> libc::c_uint {
    (libc::AT_SYMLINK_NOFOLLOW
        | if name.is_none() {
            libc::AT_EMPTY_PATH
        } else {
            0
        }) as _
}

/// The fallback's path for the target: `/proc/self/fd/N` of the dir or of an `O_PATH` handle.
fn fallback_path(
    dir: BorrowedFd,
    name: Option<&CStr>,
) -> Result<(Option<OwnedFd>, CString), Errno> {
    match name {
        None => Ok((None, proc_fd_path(&dir))),
        Some(name) => {
            let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: valid fd and C string.
            let fd = Errno::result(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
            // SAFETY: openat returned a new, open fd that we alone own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let path = proc_fd_path(&fd);
            Ok((Some(fd), path))
        }
    }
}

/// Runs `at` unless the kernel lacks the `*xattrat` calls, then `fallback` on the magic link.
fn with_target<T>(
    dir: BorrowedFd,
    name: Option<&CStr>,
    at: impl FnOnce() -> Result<T, Errno>,
    fallback: impl FnOnce(&CStr) -> Result<T, Errno>,
) -> Result<T, Errno> {
    if HAVE_AT.load(Ordering::Relaxed) {
        match at() {
            Err(Errno::ENOSYS) => HAVE_AT.store(false, Ordering::Relaxed),
            other => return other,
        }
    }
    let (_handle, path) = fallback_path(dir, name)?;
    fallback(&path)
}

/// Calls `read(buf)` with a growing buffer until the value fits.
fn read_sized(
    mut read: impl FnMut(&mut [u8]) -> Result<usize, Errno>,
    first: usize,
) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; first];
    loop {
        match read(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => {
                let size = read(&mut [])?;
                buf = vec![0u8; size.max(buf.len() * 2)];
            }
            Err(e) => return Err(e),
        }
    }
}

/// `listxattrat(dir, name, AT_SYMLINK_NOFOLLOW)`—The NUL-separated names of the inode's xattrs.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/listxattr.2.html)
pub fn list(dir: BorrowedFd, name: Option<&CStr>) -> Result<Vec<u8>, Errno> {
    let path = name.unwrap_or(c"");
    with_target(
        dir,
        name,
        || {
            read_sized(
                |buf| {
                    let nr = xattrat(2)?;
                    // SAFETY: valid fd and C string; `buf` is writable for its length.
                    let r = unsafe {
                        libc::syscall(
                            nr,
                            dir.as_raw_fd(),
                            path.as_ptr(),
                            at_flags(name),
                            buf.as_mut_ptr(),
                            buf.len(),
                        )
                    };
                    Errno::result(r).map(|n| n as usize)
                },
                256,
            )
        },
        |link| {
            read_sized(
                |buf| {
                    // SAFETY: valid C string; `buf` is writable for its length.
                    let r = unsafe {
                        libc::listxattr(link.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                    };
                    Errno::result(r).map(|n| n as usize)
                },
                256,
            )
        },
    )
}

/// `getxattrat(dir, name, attr)`—The value of one xattr, `None` if the inode has none of that name.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/getxattr.2.html)
pub fn get(dir: BorrowedFd, name: Option<&CStr>, attr: &CStr) -> Result<Option<Vec<u8>>, Errno> {
    let path = name.unwrap_or(c"");
    let got = with_target(
        dir,
        name,
        || {
            read_sized(
                |buf| {
                    let nr = xattrat(1)?;
                    let mut args = XattrArgs {
                        value: buf.as_mut_ptr() as u64,
                        size: buf.len() as u32,
                        flags: 0,
                    };
                    // SAFETY: valid fd and C strings; `args` points at a writable buffer of `size`.
                    let r = unsafe {
                        libc::syscall(
                            nr,
                            dir.as_raw_fd(),
                            path.as_ptr(),
                            at_flags(name),
                            attr.as_ptr(),
                            &mut args as *mut XattrArgs,
                            std::mem::size_of::<XattrArgs>(),
                        )
                    };
                    Errno::result(r).map(|n| n as usize)
                },
                128,
            )
        },
        |link| {
            read_sized(
                |buf| {
                    // SAFETY: valid C strings; `buf` is writable for its length.
                    let r = unsafe {
                        libc::getxattr(
                            link.as_ptr(),
                            attr.as_ptr(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                        )
                    };
                    Errno::result(r).map(|n| n as usize)
                },
                128,
            )
        },
    );
    match got {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `setxattrat(dir, name, attr, value)`—Create or replace one xattr.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/setxattr.2.html)
pub fn set(dir: BorrowedFd, name: Option<&CStr>, attr: &CStr, value: &[u8]) -> Result<(), Errno> {
    let path = name.unwrap_or(c"");
    with_target(
        dir,
        name,
        || {
            let nr = xattrat(0)?;
            let args = XattrArgs {
                value: value.as_ptr() as u64,
                size: value.len() as u32,
                flags: 0,
            };
            // SAFETY: valid fd and C strings; `args` points at `value`, readable for `size`.
            let r = unsafe {
                libc::syscall(
                    nr,
                    dir.as_raw_fd(),
                    path.as_ptr(),
                    at_flags(name),
                    attr.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            };
            Errno::result(r).map(drop)
        },
        |link| {
            // SAFETY: valid C strings; `value` is readable for its length.
            let r = unsafe {
                libc::setxattr(
                    link.as_ptr(),
                    attr.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            Errno::result(r).map(drop)
        },
    )
}

/// `removexattr` of one xattr of `dir` itself (the state idshift keeps on a tree's root).
pub fn remove_self(dir: BorrowedFd, attr: &CStr) -> Result<(), Errno> {
    let link = proc_fd_path(&dir);
    // SAFETY: valid C strings.
    let r = unsafe { libc::removexattr(link.as_ptr(), attr.as_ptr()) };
    match Errno::result(r) {
        Ok(_) | Err(Errno::ENODATA) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Forces the fallback path, for tests of it.
pub fn disable_at_calls_for_tests() {
    HAVE_AT.store(false, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    // The round trip through both paths is tests/xattr.rs: it needs user xattrs on the
    // scratch filesystem, and says so when they are missing.
    use super::*;

    #[test]
    fn xattrat_numbers_follow_the_unified_table() {
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert_eq!(
                (xattrat(0), xattrat(1), xattrat(2)),
                (Ok(463), Ok(464), Ok(465))
            );
        }
        if SETXATTRAT.is_none() {
            assert_eq!(xattrat(0), Err(Errno::ENOSYS));
        }
    }
}
