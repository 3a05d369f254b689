//! Terminals for `exec --rootfs`: a new pseudo-terminal pair, making it a controlling terminal,
//! window sizes, and passing a file descriptor between processes (`SCM_RIGHTS`).

use std::ffi::CStr;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags};

/// Stdin, stdout or stderr (`n` 0, 1 or 2) as a borrowed fd for the life of the process.
pub fn std_fd(n: u8) -> BorrowedFd<'static> {
    assert!(n <= 2, "not a standard fd: {n}");
    // SAFETY: fds 0-2 are open for the whole life of the process (the Rust runtime opens
    // /dev/null on any that is closed at start-up, and idshift never closes them).
    unsafe { BorrowedFd::borrow_raw(n.into()) }
}

/// A terminal's window size (`struct winsize`).
#[derive(Clone, Copy, Debug)]
pub struct WinSize(libc::winsize);

/// `ioctl(fd, TIOCGWINSZ)`—The window size of the terminal `fd`.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/TIOCGWINSZ.2const.html)
pub fn window_size(fd: BorrowedFd) -> Result<WinSize, Errno> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize through the pointer, which is live.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) })?;
    Ok(WinSize(ws))
}

/// `ioctl(fd, TIOCSWINSZ, size)`—Set the window size of the terminal `fd` (its foreground
/// process group gets SIGWINCH).
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/TIOCSWINSZ.2const.html)
pub fn set_window_size(fd: BorrowedFd, size: WinSize) -> Result<(), Errno> {
    // SAFETY: TIOCSWINSZ reads one struct winsize through the pointer, which is live.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size.0) }).map(drop)
}

/// A new pseudo-terminal pair from the multiplexer `ptmx` (`/dev/ptmx`, or the `ptmx` of a
/// devpts instance): `open(ptmx, O_RDWR|O_NOCTTY|O_CLOEXEC)`, `unlockpt` (`TIOCSPTLCK` 0), and
/// the slave opened from the master itself (`TIOCGPTPEER`, Linux ≥ 4.13), so that no path in
/// a devpts that someone else can mount over is looked up. Returns (master, slave, number).
///
/// # References
///  - [pts(4)](https://man7.org/linux/man-pages/man4/pts.4.html)
///  - [ioctl_tty(2)](https://man7.org/linux/man-pages/man2/ioctl_tty.2.html)
pub fn open_pty(ptmx: &CStr) -> Result<(OwnedFd, OwnedFd, u32), Errno> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: a valid C string; the returned fd, if any, is owned by us alone.
    let fd = Errno::result(unsafe { libc::open(ptmx.as_ptr(), flags) })?;
    // SAFETY: open returned a new, open fd.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which is live.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) })?;
    let mut number: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer, which is live.
    Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut number) })?;
    // SAFETY: TIOCGPTPEER takes the open flags by value and returns a new fd.
    let fd = Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) })?;
    // SAFETY: the ioctl returned a new, open fd.
    let slave = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok((master, slave, number))
}

/// `ioctl(fd, TIOCSCTTY, 0)`—Make the terminal `fd` the controlling terminal of the calling
/// session leader (never stealing one that is another session's).
///
/// # References
///  - [ioctl_tty(2)](https://man7.org/linux/man-pages/man2/TIOCSCTTY.2const.html)
pub fn set_controlling_terminal(fd: BorrowedFd) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an int by value (0: do not steal).
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

/// `sendmsg(sock, [0], SCM_RIGHTS [fd])`—Pass `fd` to the process at the other end of the
/// unix socket `sock`.
///
/// # References
///  - [unix(7)](https://man7.org/linux/man-pages/man7/unix.7.html)
pub fn send_fd(sock: BorrowedFd, fd: BorrowedFd) -> Result<(), Errno> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let byte = [0u8];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&byte)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map(drop)
}

/// `recvmsg(sock, MSG_DONTWAIT | MSG_CMSG_CLOEXEC)`—The fd that [`send_fd`] passed, if it is
/// there now (`EAGAIN` if not).
pub fn recv_fd(sock: BorrowedFd) -> Result<OwnedFd, Errno> {
    let mut byte = [0u8];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut got = None;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for fd in fds {
                // SAFETY: the kernel installed this fd in our table for this message; nothing
                // else owns it. Extra fds (there should be none) are closed as they drop.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                got.get_or_insert(owned);
            }
        }
    }
    got.ok_or(Errno::EBADMSG)
}
