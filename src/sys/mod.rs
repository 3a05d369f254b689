//! The only home of `libc::` calls and `unsafe` in idshift.
//!
//! Everything here is a thin, documented wrapper; callers outside `sys` stay safe Rust.
#![allow(unsafe_code)]

pub mod fs;
pub mod mount;
pub mod pow;
pub mod tty;
pub mod userns;
pub mod xattr;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal};
use nix::unistd::ForkResult;

/// `fork()`—Create a child process, refusing when the process has more than one thread.
///
/// After a fork in a multithreaded process only async-signal-safe functions may run in the
/// child, and the child code of idshift allocates. Checking the thread count first makes this
/// sound to call: only the calling thread could start another one in between.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/fork.2.html)
///  - [proc_pid_stat(5)](https://man7.org/linux/man-pages/man5/proc_pid_stat.5.html) (num_threads)
pub fn fork() -> Result<ForkResult, Errno> {
    if thread_count()? != 1 {
        return Err(Errno::EDEADLK);
    }
    // SAFETY: the process is single-threaded (checked above), so the child may run any code.
    unsafe { nix::unistd::fork() }
}

/// The number of threads of this process, from `/proc/self/stat`.
fn thread_count() -> Result<u64, Errno> {
    let stat = std::fs::read("/proc/self/stat")
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let close = stat.iter().rposition(|&b| b == b')').ok_or(Errno::EINVAL)?;
    let rest = std::str::from_utf8(&stat[close + 1..]).map_err(|_| Errno::EINVAL)?;
    // num_threads is field 20; field 3 (state) is the first after the name.
    rest.split_ascii_whitespace()
        .nth(20 - 3)
        .and_then(|f| f.parse().ok())
        .ok_or(Errno::EINVAL)
}

/// `_exit(code)`—End the process at once, without running exit handlers or flushing stdio.
///
/// For a forked child whose parent owns those buffers and handlers.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/_exit.2.html)
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// `signal(SIGPIPE, SIG_DFL)`—Give a command the default SIGPIPE action back.
///
/// The Rust runtime ignores SIGPIPE at start-up and an ignored signal stays ignored across
/// `execve`; a command started by `exec` must die of SIGPIPE like it would from a shell.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man2/signal.2.html)
pub fn default_sigpipe() -> Result<(), Errno> {
    // SAFETY: installing SIG_DFL runs no handler code, so no signal-safety rule can be broken.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
}

/// Ends the process by `signal` as if it had never been caught: its default action back, the
/// signal unblocked in the calling thread, and raised.
///
/// For a thread that took a terminating signal from a signalfd to say something first.
///
/// # References
///  - [sigaction(2)](https://man7.org/linux/man-pages/man2/sigaction.2.html)
///  - [raise(3)](https://man7.org/linux/man-pages/man3/raise.3.html)
pub fn die_of(signal: Signal) -> ! {
    // SAFETY: installing SIG_DFL runs no handler code, so no signal-safety rule can be broken.
    let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(signal);
    let _ = set.thread_unblock();
    let _ = nix::sys::signal::raise(signal);
    // A terminating signal with its default action does not come back; should it, still end.
    exit_now(128 + signal as i32)
}

/// `sysconf(_SC_PAGESIZE)`—The size of one memory page, which bounds one write to
/// `/proc/PID/{uid,gid}_map`.
///
/// # References
///  - [Linux](https://man7.org/linux/man-pages/man3/sysconf.3.html)
pub fn page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        // Never fails on Linux; 4096 is the smallest page of any architecture it runs on.
        _ => 4096,
    }
}
