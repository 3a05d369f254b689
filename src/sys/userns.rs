//! A user namespace made by a placeholder process, for its creator to map and then join.
//!
//! A process cannot write a map of more than its own id into its own namespace (the writer must
//! hold CAP_SETUID in the parent namespace), so `unshare(CLONE_NEWUSER)` + "write your own
//! maps" only works for `unshare --map-root-user`. Here the namespace is made by a child that
//! shares our memory (`CLONE_VM`: no page tables are copied, as `vfork`) and only waits; we
//! write its maps from the parent namespace (directly, or through newuidmap/newgidmap), join
//! it with `setns` and let the child go. No other process is left when [`Holder::join`]
//! returns: the caller may `execve` straight away, as `unshare` does.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// The child's stack. It only makes two calls to `syscall(2)`; the pages it never touches are
/// never faulted in (the buffer is not zeroed: a page fault costs as much as the rest of the
/// start-up in a VM).
const STACK_SIZE: usize = 32 * 1024;

/// A child in a new user namespace, waiting for its creator to join the namespace.
pub struct Holder {
    pid: Pid,
    /// Closing it lets the child exit (it reads end of file).
    release: Option<OwnedFd>,
    /// The child runs on it until it exits, which `Drop` waits for before it is freed.
    _stack: Vec<u8>,
}

/// `clone(CLONE_NEWUSER | CLONE_VM)`—Make a new user namespace, held by a child that waits.
///
/// The namespace has no maps yet; write them for [`Holder::pid`], then [`Holder::join`].
/// Fails as `unshare(CLONE_NEWUSER)` would (EPERM, ENOSPC, EUSERS…).
///
/// # References
///  - [clone(2)](https://man7.org/linux/man-pages/man2/clone.2.html)
///  - [user_namespaces(7)](https://man7.org/linux/man-pages/man7/user_namespaces.7.html)
///    ("Defining user and group ID mappings")
pub fn hold_new() -> Result<Holder, Errno> {
    let (wait_r, release) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let mut stack: Vec<u8> = Vec::with_capacity(STACK_SIZE);
    // The stack grows down: the child starts 16 bytes below the 16-byte-aligned end of the
    // buffer, and finds both ends of the pipe in those 16 bytes (its one argument points there;
    // a pointer, as two descriptors do not fit in one on 32-bit targets).
    let top = (stack.as_mut_ptr() as usize + stack.capacity()) & !15;
    let top = (top - 16) as *mut libc::c_int;
    // SAFETY: `top` lies 16 bytes below the end of the allocation (STACK_SIZE bytes, far more
    // than 16), is aligned for c_int, and nothing else refers to that memory yet.
    unsafe {
        top.write(wait_r.as_raw_fd());
        top.add(1).write(release.as_raw_fd());
    }
    let flags = CloneFlags::CLONE_NEWUSER.bits() | CloneFlags::CLONE_VM.bits() | libc::SIGCHLD;
    // SAFETY: `wait_for_release` touches nothing of ours but the two descriptors `top` points
    // to and its own frame below them on `stack`, which outlives the child (`Drop` reaps it
    // before `_stack` is freed). It allocates nothing and takes no lock, so sharing our memory
    // cannot race with us; it makes its system calls through `syscall(2)`, which writes `errno`
    // (shared with us through the TLS block) only if one fails, and a read of a pipe we hold
    // open does not fail (no signal handler of ours interrupts it).
    let pid = unsafe { libc::clone(wait_for_release, top.cast(), flags, top.cast()) };
    // The child has its own copies of both ends (no CLONE_FILES) and closes its write end.
    drop(wait_r);
    if pid == -1 {
        return Err(Errno::last());
    }
    Ok(Holder {
        pid: Pid::from_raw(pid),
        release: Some(release),
        _stack: stack,
    })
}

/// The child: close its copy of the write end, block until the parent closes its own (or
/// dies), then exit.
extern "C" fn wait_for_release(arg: *mut libc::c_void) -> libc::c_int {
    let fds = arg.cast::<libc::c_int>();
    let mut byte = 0u8;
    // SAFETY: `arg` points to the two descriptors `hold_new` wrote above this stack, which
    // lives until the child is reaped; the rest are plain system calls on our own descriptors,
    // and `byte` is a live one-byte buffer on this stack.
    unsafe {
        let (read, write) = (fds.read(), fds.add(1).read());
        libc::syscall(libc::SYS_close, write);
        libc::syscall(libc::SYS_read, read, &mut byte as *mut u8, 1usize);
    }
    0
}

impl Holder {
    /// The child in the namespace: its `/proc/PID/{uid,gid}_map` are the ones to write.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// `setns(CLONE_NEWUSER)`—Join the namespace (the caller gets every capability in it, with
    /// its ids as the maps show them), then let the child go and reap it.
    ///
    /// The caller must be single-threaded (EINVAL otherwise).
    ///
    /// # References
    ///  - [setns(2)](https://man7.org/linux/man-pages/man2/setns.2.html)
    pub fn join(mut self) -> Result<(), Errno> {
        let path = format!("/proc/{}/ns/user", self.pid);
        let ns = nix::fcntl::open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let joined = nix::sched::setns(&ns, CloneFlags::CLONE_NEWUSER);
        self.release_and_reap();
        joined
    }

    fn release_and_reap(&mut self) {
        if let Some(release) = self.release.take() {
            use nix::sys::wait::{waitpid, WaitPidFlag};
            drop(release);
            // End of file reaches the child only once every copy of the write end is closed: a
            // fork of another thread may hold one (until it execs). The child has nothing left
            // to do, so it is also killed; it is ours (same ids), so this cannot be refused.
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            while waitpid(self.pid, Some(WaitPidFlag::__WALL)) == Err(Errno::EINTR) {}
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.release_and_reap();
    }
}
