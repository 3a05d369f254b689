//! What a Ctrl-C (or SIGTERM, SIGHUP) during a shift leaves, said before the process ends.
//!
//! A shift may be killed at any point and the same command finishes it (the journal keeps its
//! state), so an interrupt needs no clean-up, only words: while a [`Notice`] is alive these
//! signals are blocked in every thread started after it and read by one thread of its own,
//! which prints the notice and then ends the process by the same signal, as the shell expects.

use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::AsFd;

use crate::report;

/// Prints a text if the process is interrupted while it lives.
pub struct Notice {
    /// Closed to end the watch at once (its thread polls the other end with the signalfd).
    wake: Option<OwnedFd>,
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
        let watch_parts = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)
            .ok()
            .zip(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok());
        let (wake, thread) = match watch_parts {
            Some((fd, (woken, wake))) => {
                let thread = std::thread::spawn(move || watch(&fd, &woken, &text));
                (Some(wake), Some(thread))
            }
            None => (None, None),
        };
        Notice {
            wake,
            thread,
            old_mask,
        }
    }
}

/// Waits for a signal on `fd` until `woken` reads end of file (the [`Notice`] is dropped); on
/// a signal, prints `text` and dies of it.
fn watch(fd: &SignalFd, woken: &OwnedFd, text: &str) {
    loop {
        let mut fds = [
            PollFd::new(fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(woken.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].any().unwrap_or(true) {
            return;
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
        // Closing the write end wakes the watch now (it used to poll every 100 ms, and a
        // shift's end waited for the next tick).
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // A signal that came after the watch ended is delivered now, with its default action.
        let _ =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}
