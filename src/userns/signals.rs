//! Signals while the command runs: which ones idshift passes on, the mask that holds them for a
//! signalfd, the loop that forwards them and waits for the command, and the shell's exit code.
//!
//! The same loop serves the supervisor and, under `--rootfs`, the container's PID 1 (which also
//! reaps the orphans of its PID namespace).

use nix::errno::Errno;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::sys;

/// The signals idshift passes on to the command.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The forwarded signals and SIGCHLD: what the forwarding loop reads.
pub(super) fn forwarded_and_sigchld() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Whether signals the kernel sent (the caller's terminal: Ctrl-C, a hangup) are passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KernelSignals {
    /// The command shares the terminal and got them already.
    Skip,
    /// The command is in a session of its own (`--rootfs`): only idshift got them.
    Forward,
}

/// Blocks `set` (to be read from a signalfd); the caller's mask comes back when the guard drops.
pub(super) fn block(set: &SigSet) -> Result<MaskGuard> {
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(set), Some(&mut old_mask))
        .map_err(|e| Error::sys("sigprocmask", e))?;
    Ok(MaskGuard(old_mask))
}

/// Restores the signal mask it holds when dropped.
pub(super) struct MaskGuard(SigSet);

impl MaskGuard {
    /// The caller's mask, which the command gets.
    pub fn old_mask(&self) -> &SigSet {
        &self.0
    }
}

impl Drop for MaskGuard {
    fn drop(&mut self) {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

/// PID 1 under `--rootfs` (and its parent): waits for `child`, passing forwarded signals on and
/// reaping every other child too (as PID 1 must), and exits with the child's status (128+N for
/// signal N).
pub(super) fn relay_and_exit(child: Pid) -> ! {
    let code = match SignalFd::with_flags(&forwarded_and_sigchld(), SfdFlags::SFD_CLOEXEC) {
        Ok(signals) => forward_until_exit(child, &signals, true, KernelSignals::Skip),
        Err(_) => wait_blocking(child),
    };
    sys::exit_now(code.unwrap_or(125))
}

/// Passes the forwarded signals that arrive on `signals` on to `child` until it ends, and
/// returns its exit code (128+N for signal N). With `reap_others` every other child that ends
/// is reaped too: PID 1 inherits the orphans of its namespace.
pub(super) fn forward_until_exit(
    child: Pid,
    signals: &SignalFd,
    reap_others: bool,
    kernel: KernelSignals,
) -> Result<i32> {
    let reap = if reap_others {
        Pid::from_raw(-1)
    } else {
        child
    };
    loop {
        let info = match signals.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(e) => {
                // Without signals we can still wait for the command.
                return wait_blocking(child).map_err(|_| Error::sys("reading signals", e));
            }
        };
        let signo = info.ssi_signo as i32;
        if signo == libc::SIGCHLD {
            // One SIGCHLD may stand for several children that ended.
            loop {
                match waitpid(reap, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(status) if status.pid() == Some(child) => {
                        if let Some(code) = exit_code(status) {
                            return Ok(code);
                        }
                    }
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(_) if reap_others => break,
                    Err(e) => return Err(Error::sys("waitpid", e)),
                }
            }
            continue;
        }
        // A signal the terminal sent to the whole foreground process group reached the command
        // already; only signals sent to idshift alone are passed on.
        if info.ssi_code == libc::SI_KERNEL && kernel == KernelSignals::Skip {
            continue;
        }
        if let Ok(sig) = Signal::try_from(signo) {
            let _ = kill(child, sig);
        }
    }
}

fn wait_blocking(child: Pid) -> Result<i32> {
    loop {
        match waitpid(child, None) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return Ok(code);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("waitpid", e)),
        }
    }
}

/// The shell's convention: the exit code, or 128+N for death by signal N.
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}
