//! `exec --rootfs` and the caller's terminal: the command never gets it.
//!
//! A command that shares the caller's controlling terminal can push input into it (`TIOCSTI`:
//! the caller's shell — root's — runs it once idshift exits) and read what the caller types
//! next. So, as `lxc-attach` and sudo's `use_pty` do: when any of stdin, stdout and stderr is a
//! terminal, the container's PID 1 opens a new pseudo-terminal in the container's own devpts
//! instance and passes its master to idshift over a unix socket (`SCM_RIGHTS`); the command
//! runs in a new session with the slave as its controlling terminal, and as each of its
//! stdin, stdout and stderr that was a terminal (the others are passed on as they are).
//! idshift relays bytes both ways and window-size changes (SIGWINCH → `TIOCSWINSZ`), with the
//! caller's terminal in raw mode meanwhile, so that Ctrl-C, Ctrl-Z and job control act on the
//! new terminal, inside. The caller's terminal settings come back on every way out (a
//! [`RawMode`] guard). Without a terminal, the command just gets a new session: no controlling
//! terminal at all.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::sys::tty::{self, WinSize};

/// What the container's PID 1 needs to give the command a terminal; built before the fork.
pub(super) struct Plan {
    /// Which of stdin, stdout, stderr were the caller's terminal (they become the slave).
    pub on_tty: [bool; 3],
    /// The caller's terminal settings and size, for the new terminal.
    pub termios: Option<Termios>,
    pub size: Option<WinSize>,
    /// The child's end of the socket the master goes back through.
    pub sock: OwnedFd,
}

/// idshift's side: the caller's terminal and the socket the master comes through.
pub(super) struct Host {
    /// Stdin, when it is a terminal: its input is relayed, and it is put in raw mode.
    input: Option<BorrowedFd<'static>>,
    /// Where the command's terminal output goes: stdout or stderr if a terminal, else stdin.
    output: BorrowedFd<'static>,
    /// The terminal whose size the command's follows.
    tty: BorrowedFd<'static>,
    sock: OwnedFd,
}

/// `Some` when any of stdin, stdout, stderr is a terminal: the command will get a new one.
pub(super) fn plan() -> Result<Option<(Plan, Host)>> {
    let fds = [tty::std_fd(0), tty::std_fd(1), tty::std_fd(2)];
    let on_tty = fds.map(|fd| nix::unistd::isatty(fd).unwrap_or(false));
    let Some(first) = (0..3).find(|&i| on_tty[i]) else {
        return Ok(None);
    };
    let tty = fds[first];
    let output = [1, 2, 0].into_iter().find(|&i| on_tty[i]).map(|i| fds[i]);
    let (parent, child) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("socketpair", e))?;
    Ok(Some((
        Plan {
            on_tty,
            termios: tcgetattr(tty).ok(),
            size: tty::window_size(tty).ok(),
            sock: child,
        },
        Host {
            input: on_tty[0].then_some(fds[0]),
            output: output.unwrap_or(tty),
            tty,
            sock: parent,
        },
    )))
}

/// In the container's PID 1, once its devpts is mounted: a new terminal from `ptmx`, with the
/// caller's settings and size, whose master goes to idshift. Returns the slave and its number.
pub(super) fn open_in_container(
    plan: &Plan,
    ptmx: &std::ffi::CStr,
) -> std::result::Result<(OwnedFd, u32), Errno> {
    let (master, slave, number) = tty::open_pty(ptmx)?;
    if let Some(t) = &plan.termios {
        tcsetattr(&slave, SetArg::TCSANOW, t)?;
    }
    if let Some(size) = plan.size {
        tty::set_window_size(master.as_fd(), size)?;
    }
    tty::send_fd(plan.sock.as_fd(), master.as_fd())?;
    Ok((slave, number))
}

/// In the command's process, before it runs: a new session (so no controlling terminal of the
/// caller's), and with a terminal, the slave as its controlling terminal and in place of each
/// standard fd that was the caller's terminal.
pub(super) fn attach(terminal: Option<(&OwnedFd, [bool; 3])>) -> std::result::Result<(), Errno> {
    nix::unistd::setsid()?;
    let Some((slave, on_tty)) = terminal else {
        return Ok(());
    };
    tty::set_controlling_terminal(slave.as_fd())?;
    if on_tty[0] {
        nix::unistd::dup2_stdin(slave)?;
    }
    if on_tty[1] {
        nix::unistd::dup2_stdout(slave)?;
    }
    if on_tty[2] {
        nix::unistd::dup2_stderr(slave)?;
    }
    Ok(())
}

/// The master the container's PID 1 sent (it sends before it starts the command, so it is
/// there once the command runs).
pub(super) fn receive_master(host: &Host) -> Result<OwnedFd> {
    tty::recv_fd(host.sock.as_fd()).map_err(|e| Error::sys("receiving the command's terminal", e))
}

/// The caller's terminal in raw mode until dropped, then as it was.
struct RawMode {
    fd: BorrowedFd<'static>,
    saved: Termios,
}

impl RawMode {
    /// Raw mode on the caller's stdin terminal, if idshift is in its foreground: in the
    /// background a change of settings would stop idshift (SIGTTOU), and the keys are not the
    /// caller's to give anyway.
    fn enter(fd: BorrowedFd<'static>) -> Option<RawMode> {
        let foreground = nix::unistd::tcgetpgrp(fd).ok() == Some(nix::unistd::getpgrp());
        if !foreground {
            return None;
        }
        let saved = tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSADRAIN, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(self.fd, SetArg::TCSADRAIN, &self.saved);
    }
}

/// Bytes waiting to be written to one side.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
}

impl Pending {
    /// Writes what it can; `false` when the other side is gone (the rest is dropped).
    fn flush(&mut self, fd: BorrowedFd) -> bool {
        match nix::unistd::write(fd, &self.buf) {
            Ok(0) => {
                self.buf.clear();
                false
            }
            Ok(n) => {
                self.buf.drain(..n);
                true
            }
            Err(Errno::EINTR | Errno::EAGAIN) => true,
            Err(_) => {
                self.buf.clear();
                false
            }
        }
    }
}

/// Relays between the caller's terminal and `master` until `child` (idshift's child, outside
/// the container) ends, passing every forwarded signal on — the command is in a session of
/// its own, so even those the caller's terminal sent to idshift's group never reached it — and
/// window-size changes to the command's terminal. Returns the exit code (128+N for signal N).
pub(super) fn relay(child: Pid, signals: &SignalFd, master: OwnedFd, host: &Host) -> Result<i32> {
    let nonblock = nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(nonblock))
        .map_err(|e| Error::sys("fcntl", e))?;
    // Input is relayed only while idshift is in the foreground of the caller's terminal: in the
    // background a read would stop it (SIGTTIN). Brought to the foreground (`fg` sends
    // SIGCONT), it takes over the keys and raw mode.
    let mut raw = host.input.and_then(RawMode::enter);
    let mut input_open = raw.is_some();
    let mut master_open = true;
    let mut output_open = true;
    let (mut to_master, mut to_output) = (Pending::default(), Pending::default());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Read a side only when what was read from it before is written: bounded buffers, and
        // a command that stops reading stops the caller's input, not idshift's memory.
        let mut master_events = PollFlags::empty();
        if master_open && to_output.buf.is_empty() {
            master_events |= PollFlags::POLLIN;
        }
        if master_open && !to_master.buf.is_empty() {
            master_events |= PollFlags::POLLOUT;
        }
        let input_events = match input_open && to_master.buf.is_empty() {
            true => PollFlags::POLLIN,
            false => PollFlags::empty(),
        };
        let output_events = match output_open && !to_output.buf.is_empty() {
            true => PollFlags::POLLOUT,
            false => PollFlags::empty(),
        };
        // A side that is gone is not polled at all (a hung-up terminal reports POLLHUP
        // whatever is asked, which would spin this loop): the signalfd, asked for nothing,
        // stands in for it.
        let idle = signals.as_fd();
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(master.as_fd(), master_events),
            PollFd::new(
                match input_open {
                    true => host.input.unwrap_or(host.tty),
                    false => idle,
                },
                input_events,
            ),
            PollFd::new(
                match output_open {
                    true => host.output,
                    false => idle,
                },
                output_events,
            ),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("poll", e)),
        }
        let ready = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        let (sig, m, i, o) = (ready(0), ready(1), ready(2), ready(3));
        let any = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        if m.intersects(any) && master_events.contains(PollFlags::POLLIN) {
            match nix::unistd::read(&master, &mut buf) {
                Ok(0) | Err(Errno::EIO) => master_open = false,
                Ok(n) => to_output.buf.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => master_open = false,
            }
        } else if m.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            master_open = false;
        }
        if m.contains(PollFlags::POLLOUT) {
            master_open &= to_master.flush(master.as_fd());
        }
        if let (true, Some(input)) = (i.intersects(any), host.input) {
            match nix::unistd::read(input, &mut buf) {
                Ok(n) if n > 0 => to_master.buf.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                _ => input_open = false,
            }
        }
        if o.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
            output_open = false;
        } else if o.contains(PollFlags::POLLOUT) {
            output_open = to_output.flush(host.output);
        }
        if !master_open {
            to_master.buf.clear();
        }
        if !output_open {
            to_output.buf.clear();
        }
        if !sig.contains(PollFlags::POLLIN) {
            continue;
        }
        let Ok(Some(info)) = signals.read_signal() else {
            continue;
        };
        match Signal::try_from(info.ssi_signo as i32) {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(child)? {
                    drain(&master, &mut to_output, host.output, output_open, &mut buf);
                    return Ok(code);
                }
            }
            // Stopped from outside (not by the keys, which go to the command): give the
            // terminal back as it was, then stop.
            Ok(Signal::SIGTSTP) => {
                drop(raw.take());
                let _ = kill(nix::unistd::getpid(), Signal::SIGSTOP);
            }
            Ok(Signal::SIGCONT) => {
                // Whoever had the terminal meanwhile may have set it as it likes: take it over
                // again from what it is now.
                drop(raw.take());
                raw = host.input.and_then(RawMode::enter);
                input_open = raw.is_some();
                if let Ok(size) = tty::window_size(host.tty) {
                    let _ = tty::set_window_size(master.as_fd(), size);
                }
            }
            Ok(Signal::SIGWINCH) => {
                if let Ok(size) = tty::window_size(host.tty) {
                    let _ = tty::set_window_size(master.as_fd(), size);
                }
            }
            Ok(sig) => {
                let _ = kill(child, sig);
            }
            Err(_) => {}
        }
    }
}

/// The exit code of `child` if it has ended.
fn reap(child: Pid) -> Result<Option<i32>> {
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(128 + sig as i32)),
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("waitpid", e)),
        }
    }
}

/// After the end: what the command wrote last, still in the terminal, goes out too. (Every
/// process that held the slave is gone with the container's PID 1, so this ends.)
fn drain(
    master: &OwnedFd,
    pending: &mut Pending,
    output: BorrowedFd,
    mut open: bool,
    buf: &mut [u8],
) {
    loop {
        while open && !pending.buf.is_empty() {
            let before = pending.buf.len();
            open = pending.flush(output);
            if pending.buf.len() == before {
                // Not writable now (EAGAIN): wait for it.
                let mut fds = [PollFd::new(output, PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut fds, PollTimeout::from(1000u16));
            }
        }
        match nix::unistd::read(master, buf) {
            Ok(n) if n > 0 => pending.buf.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            _ => return,
        }
    }
}
