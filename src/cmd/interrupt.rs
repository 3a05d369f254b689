//! What a Ctrl-C (or SIGTERM, SIGHUP) during a shift leaves, said before the process ends.
//!
//! A shift may be killed at any point and the same command finishes it (the journal keeps its
//! state), so an interrupt needs no clean-up, only words: while a [`Notice`] is alive these
//! signals are blocked in every thread started after it and read by one thread of its own,
//! which prints the notice and then ends the process by the same signal, as the shell expects.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::AsFd;

use crate::report;

/// Prints a text if the process is interrupted while it lives.
pub struct Notice {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    old_mask: SigSet,
}

impl Notice {
    /// Starts watching for SIGINT, SIGTERM and SIGHUP; on one, prints `text` as an error line
    /// and ends the process by that signal. Without a signalfd, watches nothing.
    pub fn new(text: String) -> Notice {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        let mut old_mask = SigSet::empty();
        let _ = nix::sys::signal::pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&set),
            Some(&mut old_mask),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let thread = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)
            .ok()
            .map(|fd| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || watch(&fd, &stop, &text))
            });
        Notice {
            stop,
            thread,
            old_mask,
        }
    }
}

/// Waits for a signal on `fd` until `stop`; on one, prints `text` and dies of it.
fn watch(fd: &SignalFd, stop: &AtomicBool, text: &str) {
    while !stop.load(Relaxed) {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(100u16)), Ok(n) if n > 0) {
            continue;
        }
        if let Ok(Some(info)) = fd.read_signal() {
            if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                report::err_line(text);
                crate::sys::die_of(signal);
            }
        }
    }
}

impl Drop for Notice {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // A signal that came after the watch ended is delivered now, with its default action.
        let _ =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}
