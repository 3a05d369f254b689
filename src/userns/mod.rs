//! `idshift exec`: run a command as in-container root in a new user namespace.
//!
//! fork → the child `unshare(CLONE_NEWUSER)`s and says so → the parent writes the child's maps
//! (directly or through newuidmap/newgidmap) and says go → the child drops supplementary groups,
//! `setresgid`/`setresuid`s to the ids asked for and `execvp`s the command. Every set-up failure
//! of the child comes back over a close-on-exec pipe, so the parent knows the command never ran;
//! end of file on that pipe means `execvp` succeeded. The parent then forwards signals and
//! turns the command's end into an exit status.
//!
//! The path is single-threaded from `main` to `fork` (no thread pool is ever started here).

pub mod mapper;

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

pub use mapper::Mapper;

use crate::error::{Error, Result};
use crate::idmap::{IdKind, IdMap, KERNEL_MAX_EXTENTS};
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

/// What to run and how.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    pub map: IdMap,
    /// The uid to become inside; `None` keeps the (unmapped) uid, for maps without uid entries.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The command and its arguments; never empty.
    pub command: Vec<OsString>,
}

impl ExecSpec {
    /// Checks, before anything starts, that the kernel can take the map and that the ids to
    /// become are mapped.
    pub fn validate(&self) -> Result<()> {
        if self.map.is_empty() {
            return Err(Error::Usage("the map is empty".into()));
        }
        if self.command.is_empty() {
            return Err(Error::Usage("no command to run".into()));
        }
        for (kind, id) in [(IdKind::Uid, self.uid), (IdKind::Gid, self.gid)] {
            let n = self.map.entries(kind).len();
            if n > KERNEL_MAX_EXTENTS {
                return Err(Error::Usage(format!(
                    "the map has {n} {} entries; the kernel takes at most {KERNEL_MAX_EXTENTS}",
                    kind.name()
                )));
            }
            if let Some(id) = id {
                if self.map.to_host(kind, id).is_none() {
                    return Err(Error::Usage(format!(
                        "{} {id} is not mapped by '{}' (map it, or choose another with --{})",
                        kind.name(),
                        self.map,
                        kind.name()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Where the child stopped, sent back over the status pipe with the errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    Ready = 0,
    Unshare = 1,
    Setgroups = 2,
    Setresgid = 3,
    Setresuid = 4,
    Prepare = 5,
    Exec = 6,
}

impl Stage {
    fn from_byte(b: u8) -> Option<Stage> {
        Some(match b {
            0 => Stage::Ready,
            1 => Stage::Unshare,
            2 => Stage::Setgroups,
            3 => Stage::Setresgid,
            4 => Stage::Setresuid,
            5 => Stage::Prepare,
            6 => Stage::Exec,
            _ => return None,
        })
    }
}

const MSG_LEN: usize = 5;

/// Runs the command and returns its exit status (128+N when it died of signal N).
///
/// Errors mean the command did not run: [`Error::Exec`] when `execvp` itself failed, any other
/// error when idshift could not set the namespace up.
pub fn run(spec: &ExecSpec, mapper: &Mapper) -> Result<i32> {
    spec.validate()?;
    // Everything the child needs is built before the fork.
    let argv: Vec<CString> = spec
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Usage("a command argument contains a NUL byte".into()))?;
    let child_plan = ChildPlan {
        uid: spec.uid.filter(|_| spec.map.has(IdKind::Uid)),
        gid: spec.gid.filter(|_| spec.map.has(IdKind::Gid)),
        setgroups: spec.map.has(IdKind::Gid) && mapper.setgroups_allowed(&spec.map),
        argv: &argv,
    };

    let mut blocked = SigSet::empty();
    for sig in FORWARDED {
        blocked.add(sig);
    }
    blocked.add(Signal::SIGCHLD);
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut old_mask))
        .map_err(|e| Error::sys("sigprocmask", e))?;
    let _restore = MaskGuard(old_mask);
    let signals = SignalFd::with_flags(&blocked, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::sys("signalfd", e))?;
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let parent = nix::unistd::getpid();

    // The exec path is single-threaded (`sys::fork` checks): `main` parses arguments and comes
    // here without starting any thread.
    match sys::fork().map_err(|e| Error::sys("fork", e))? {
        nix::unistd::ForkResult::Child => {
            drop((go_w, status_r, signals));
            child(&child_plan, go_r, status_w, &old_mask, parent)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((go_r, status_w));
            supervise(child, spec, mapper, go_w, File::from(status_r), &signals)
        }
    }
}

/// A new user namespace with `map`, as a file descriptor (for `mount_setattr`'s
/// `MOUNT_ATTR_IDMAP`). A child process creates it, the maps are written, the namespace file is
/// opened, and the child exits: the fd keeps the namespace alive.
pub fn namespace_fd(map: &IdMap, mapper: &Mapper) -> Result<OwnedFd> {
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    match sys::fork().map_err(|e| Error::sys("fork", e))? {
        nix::unistd::ForkResult::Child => {
            drop((go_w, status_r));
            let msg = match nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
                Ok(()) => [Stage::Ready as u8, 0, 0, 0, 0],
                Err(e) => {
                    let mut msg = [Stage::Unshare as u8, 0, 0, 0, 0];
                    msg[1..].copy_from_slice(&(e as i32).to_le_bytes());
                    msg
                }
            };
            let _ = nix::unistd::write(&status_w, &msg);
            // Wait until the parent has opened the namespace (it closes its end).
            let _ = nix::unistd::read(&go_r, &mut [0u8; 1]);
            sys::exit_now(0)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((go_r, status_w));
            let _guard = ChildGuard(Some(child));
            match read_message(&mut File::from(status_r))? {
                Some((Stage::Ready, _)) => {}
                Some((_, errno)) => {
                    return Err(Error::sys("cannot create a user namespace", errno));
                }
                None => return Err(Error::Failed("the child exited during set-up".into())),
            }
            mapper.write(child, map)?;
            let path = mapper.proc_root.join(format!("{child}/ns/user"));
            let ns = File::open(&path).map_err(|e| Error::io(&path, e))?;
            drop(go_w);
            Ok(OwnedFd::from(ns))
        }
    }
}

struct ChildPlan<'a> {
    uid: Option<u32>,
    gid: Option<u32>,
    setgroups: bool,
    argv: &'a [CString],
}

/// The child: never returns.
fn child(plan: &ChildPlan, go: OwnedFd, status: OwnedFd, old_mask: &SigSet, parent: Pid) -> ! {
    let fail = |stage: Stage, errno: Errno| -> ! {
        let mut msg = [0u8; MSG_LEN];
        msg[0] = stage as u8;
        msg[1..].copy_from_slice(&(errno as i32).to_le_bytes());
        let _ = nix::unistd::write(&status, &msg);
        sys::exit_now(125)
    };
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER) {
        fail(Stage::Unshare, e);
    }
    if nix::unistd::write(&status, &[Stage::Ready as u8, 0, 0, 0, 0]) != Ok(MSG_LEN) {
        sys::exit_now(125);
    }
    let mut byte = [0u8; 1];
    if nix::unistd::read(&go, &mut byte) != Ok(1) {
        // The parent could not write the maps and reports why.
        sys::exit_now(125);
    }
    if let Some(gid) = plan.gid {
        if plan.setgroups {
            if let Err(e) = nix::unistd::setgroups(&[]) {
                fail(Stage::Setgroups, e);
            }
        }
        let gid = Gid::from_raw(gid);
        if let Err(e) = nix::unistd::setresgid(gid, gid, gid) {
            fail(Stage::Setresgid, e);
        }
    }
    if let Some(uid) = plan.uid {
        let uid = Uid::from_raw(uid);
        if let Err(e) = nix::unistd::setresuid(uid, uid, uid) {
            fail(Stage::Setresuid, e);
        }
    }
    // After the id changes, which clear it: the command dies with idshift.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(Stage::Prepare, e);
    }
    if nix::unistd::getppid() != parent {
        sys::exit_now(125);
    }
    if let Err(e) = sys::default_sigpipe()
        .and_then(|()| sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None))
    {
        fail(Stage::Prepare, e);
    }
    let Err(e) = nix::unistd::execvp(&plan.argv[0], plan.argv);
    fail(Stage::Exec, exec_errno(&plan.argv[0], e))
}

/// `execvp` answers EACCES when some directory of `PATH` cannot be searched (common inside a
/// namespace, where the host's `/root` is unmapped) even if the command is nowhere: like a shell,
/// call that "not found" unless a file of that name exists on the path.
fn exec_errno(program: &CString, errno: Errno) -> Errno {
    let name = program.as_bytes();
    if errno != Errno::EACCES || name.contains(&b'/') {
        return errno;
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let exists = std::env::split_paths(&path).any(|dir| {
        dir.join(std::ffi::OsStr::from_bytes(name))
            .symlink_metadata()
            .is_ok()
    });
    if exists {
        errno
    } else {
        Errno::ENOENT
    }
}

/// Kills and reaps the child unless disarmed: no child outlives a failed set-up.
struct ChildGuard(Option<Pid>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// Restores the signal mask when `run` returns.
struct MaskGuard(SigSet);

impl Drop for MaskGuard {
    fn drop(&mut self) {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

/// Reads one child message; `None` at end of file.
fn read_message(status: &mut File) -> Result<Option<(Stage, Errno)>> {
    let mut msg = [0u8; MSG_LEN];
    let mut got = 0;
    while got < MSG_LEN {
        match status.read(&mut msg[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(Error::Failed("short message from the child".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Failed(format!("reading the child's status: {e}"))),
        }
    }
    let stage = Stage::from_byte(msg[0])
        .ok_or_else(|| Error::Failed("bad message from the child".into()))?;
    let errno = Errno::from_raw(i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]));
    Ok(Some((stage, errno)))
}

fn stage_error(stage: Stage, errno: Errno, spec: &ExecSpec) -> Error {
    let what = match stage {
        Stage::Unshare => {
            let hint = if errno == Errno::ENOSPC {
                " (the limit in /proc/sys/user/max_user_namespaces is reached)"
            } else if errno == Errno::EPERM {
                " (user namespaces may be disabled for unprivileged users)"
            } else {
                ""
            };
            return Error::Failed(format!("cannot create a user namespace: {errno}{hint}"));
        }
        Stage::Setgroups => "cannot drop supplementary groups in the namespace".to_string(),
        Stage::Setresgid => format!(
            "cannot become gid {} in the namespace",
            spec.gid.unwrap_or(0)
        ),
        Stage::Setresuid => format!(
            "cannot become uid {} in the namespace",
            spec.uid.unwrap_or(0)
        ),
        Stage::Prepare | Stage::Ready => "cannot prepare the command".to_string(),
        Stage::Exec => {
            return Error::Exec {
                program: spec.command[0].to_string_lossy().into_owned(),
                errno,
            }
        }
    };
    Error::sys(what, errno)
}

fn supervise(
    child: Pid,
    spec: &ExecSpec,
    mapper: &Mapper,
    go: OwnedFd,
    mut status: File,
    signals: &SignalFd,
) -> Result<i32> {
    let mut guard = ChildGuard(Some(child));
    match read_message(&mut status)? {
        Some((Stage::Ready, _)) => {}
        Some((stage, errno)) => return Err(stage_error(stage, errno, spec)),
        None => return Err(Error::Failed("the child exited during set-up".into())),
    }
    mapper.write(child, &spec.map)?;
    nix::unistd::write(&go, &[1]).map_err(|e| Error::sys("signalling the child", e))?;
    drop(go);
    if let Some((stage, errno)) = read_message(&mut status)? {
        return Err(stage_error(stage, errno, spec));
    }
    // The command runs: from here on the child is reaped below, not killed.
    guard.0 = None;
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
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => match exit_code(status) {
                    Some(code) => return Ok(code),
                    None => continue,
                },
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("waitpid", e)),
            }
        }
        // A signal the terminal sent to the whole foreground process group reached the command
        // already; only signals sent to idshift alone are passed on.
        if info.ssi_code == libc::SI_KERNEL {
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
