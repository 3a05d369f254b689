//! The new mount API calls behind `idshift mount`: `open_tree`, `mount_setattr`, `move_mount`,
//! and `umount2`. nix has no wrappers for the first three; the raw syscalls are used.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC [| AT_RECURSIVE])`—A detached
/// copy of the mount at `path` (with the mounts below it when `recursive`), not yet attached
/// anywhere. A symlink in the last component is not followed.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/open_tree.2.html)
pub fn open_tree_clone(path: &CStr, recursive: bool) -> Result<OwnedFd, Errno> {
    let flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint
        | if recursive {
            libc::AT_RECURSIVE as libc::c_uint
        } else {
            0
        };
    // SAFETY: the path is a valid C string; the call takes no other pointers.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    Errno::result(fd)?;
    // SAFETY: open_tree returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What an idmapped mount honours besides the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setuid {
    /// `MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV`: setuid/setgid bits and file capabilities give
    /// nothing, device nodes cannot be opened.
    Ignored,
    /// Only `MOUNT_ATTR_NODEV`: setuid/setgid bits and file capabilities work as on disk.
    Honoured,
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH [| AT_RECURSIVE], {MOUNT_ATTR_IDMAP | MOUNT_ATTR_NODEV
/// [| MOUNT_ATTR_NOSUID], userns})`—Make a detached mount show its files through the id mapping
/// of the user namespace `userns`, in one call with its `nosuid`/`nodev` flags.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/mount_setattr.2.html)
pub fn set_idmap(
    tree: BorrowedFd,
    userns: BorrowedFd,
    recursive: bool,
    setuid: Setuid,
) -> Result<(), Errno> {
    let mut attr: libc::mount_attr = {
        // SAFETY: mount_attr is a plain struct of integers; all zeroes is its empty value.
        unsafe { std::mem::zeroed() }
    };
    attr.attr_set = libc::MOUNT_ATTR_IDMAP
        | libc::MOUNT_ATTR_NODEV
        | match setuid {
            Setuid::Ignored => libc::MOUNT_ATTR_NOSUID,
            Setuid::Honoured => 0,
        };
    attr.userns_fd = userns.as_raw_fd() as u64;
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: "" is a valid C string and `attr` a live mount_attr whose size is passed along.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// `STATX_MNT_ID_UNIQUE` (Linux ≥ 6.8), which libc does not define yet.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// A mount's identity, from `statx` of its root: its mount id and the (device, inode) of the
/// directory it shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountId {
    /// The 64-bit mount id that is never reused until reboot (`STATX_MNT_ID_UNIQUE`), or, on
    /// kernels before 6.8, the reusable one of `/proc/self/mountinfo`.
    pub id: u64,
    /// Whether `id` is the unique kind.
    pub unique: bool,
    pub dev: u64,
    pub ino: u64,
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID_UNIQUE | STATX_INO)`—The identity of the mount
/// `fd` is on (of its root, when `fd` is the root of a mount).
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/statx.2.html)
pub fn mount_id(fd: BorrowedFd) -> Result<MountId, Errno> {
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let flags = libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW;
    let mask = libc::STATX_INO | STATX_MNT_ID_UNIQUE;
    // SAFETY: "" is a valid C string, `buf` a writable statx of the right size.
    let r = unsafe { libc::statx(fd.as_raw_fd(), c"".as_ptr(), flags, mask, buf.as_mut_ptr()) };
    Errno::result(r)?;
    // SAFETY: statx succeeded and filled the buffer (which was zeroed to begin with).
    let s = unsafe { buf.assume_init() };
    let unique = s.stx_mask & STATX_MNT_ID_UNIQUE != 0;
    if !unique && s.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(Errno::ENOSYS);
    }
    Ok(MountId {
        id: s.stx_mnt_id,
        unique,
        dev: libc::makedev(s.stx_dev_major, s.stx_dev_minor),
        ino: s.stx_ino,
    })
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`—Attach a detached mount
/// at `target`.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/move_mount.2.html)
pub fn attach(tree: BorrowedFd, target: &CStr) -> Result<(), Errno> {
    // SAFETY: both paths are valid C strings; the call takes no other pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(r).map(drop)
}

/// `move_mount(tree, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)`—Attach
/// a detached mount onto the directory `target` was opened on: no path is looked up again, so
/// nothing swapped in since can redirect it.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/move_mount.2.html)
pub fn attach_to(tree: BorrowedFd, target: BorrowedFd) -> Result<(), Errno> {
    // SAFETY: both fds are valid; the empty paths are valid C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(r).map(drop)
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, {MOUNT_ATTR_NODEV})`—Make a detached
/// mount (and those below it) `nodev`: no device node on it can be opened.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/mount_setattr.2.html)
pub fn set_nodev(tree: BorrowedFd) -> Result<(), Errno> {
    let mut attr: libc::mount_attr = {
        // SAFETY: mount_attr is a plain struct of integers; all zeroes is its empty value.
        unsafe { std::mem::zeroed() }
    };
    attr.attr_set = libc::MOUNT_ATTR_NODEV;
    // SAFETY: valid fd, empty C string, and a mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// `umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW)`—Detach the mount at `target` (and the mounts
/// below it) from the tree; the kernel frees it once no process uses it.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/umount.2.html)
pub fn detach(target: &CStr) -> Result<(), Errno> {
    // SAFETY: the path is a valid C string.
    let r = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    Errno::result(r).map(drop)
}
