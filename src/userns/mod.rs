//! `idshift exec`: run a command as in-container root in a new user namespace.
//!
//! A plain `exec` has no supervisor ([`exec_direct`]): a placeholder child makes the
//! namespace, idshift writes its maps from outside, joins it and becomes the command, as
//! `unshare` does. Where a process must stay outside (`--rootfs`, with its PID 1, terminal
//! relay and a new session; the unprivileged shift's `call`) it is:
//!
//! fork → the child `unshare(CLONE_NEWUSER)`s and says so → the parent writes the child's maps
//! (directly or through newuidmap/newgidmap, `mapper.rs`) and says go → the child drops
//! supplementary groups, `setresgid`/`setresuid`s to the ids asked for and `execvp`s the
//! command. Every set-up failure of the child comes back over a close-on-exec pipe, so the
//! parent knows the command never ran; end of file on that pipe means `execvp` succeeded
//! (`child.rs` is that protocol, the one `run` and `call` share). The parent then
//! forwards signals (`signals.rs`) and turns the command's end into an exit status.
//!
//! `--rootfs` enters a container rather than a chroot (`rootfs.rs`): its own mount, PID and user
//! namespaces, `pivot_root` into the rootfs with the host's tree detached (nothing of it stays
//! reachable, whatever the command does with CAP_SYS_CHROOT), a terminal of its own instead of
//! the caller's (`terminal.rs`), and a clean environment.
//!
//! Everything the child needs (arguments, environment, candidate paths) is built before the
//! fork. The path is single-threaded from `main` to `fork` (no thread pool is ever started
//! here).

mod child;
pub mod mapper;
mod rootfs;
mod signals;
mod spec;
mod terminal;

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

pub use mapper::Mapper;
pub use signals::FORWARDED;
pub use spec::{EnvSetting, ExecSpec};

use crate::error::{Error, Result};
use crate::idmap::{IdKind, IdMap};
use crate::sys;
use child::{Channel, Describe, Forked, Ids, Stage};
use rootfs::RootfsPlan;
use signals::KernelSignals;

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
    let ids = Ids {
        uid: spec.uid.filter(|_| spec.map.has(IdKind::Uid)),
        gid: spec.gid.filter(|_| spec.map.has(IdKind::Gid)),
        setgroups: spec.map.has(IdKind::Gid) && mapper.setgroups_allowed(&spec.map),
    };
    let describe = Describe {
        uid: spec.uid,
        gid: spec.gid,
        program: Some(spec.command[0].to_string_lossy().into_owned()),
        rootfs: spec.rootfs.clone(),
    };
    let (action, host) = match &spec.rootfs {
        None => {
            // The environment the command inherits is the caller's: `execvp` searches its PATH.
            let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
            return exec_direct(&spec.map, mapper, ids, &argv, &path, &describe);
        }
        Some(dir) => {
            let (terminal, host) = terminal::plan()?.unzip();
            let owner = (spec.uid.unwrap_or(0), spec.gid.unwrap_or(0));
            let plan = RootfsPlan::new(dir, owner, &argv[0], &spec.env, terminal)?;
            (Action::ExecIn(&argv, Box::new(plan)), host)
        }
    };
    let plan = ChildPlan { ids, action };
    let relay = match host {
        None => Relay::Signals(KernelSignals::Forward),
        Some(host) => Relay::Terminal(host),
    };
    launch(&spec.map, mapper, plan, &describe, relay)
}

/// A plain `exec` without a supervisor, as `unshare` does it: idshift becomes the command in
/// the new namespace, so signals, job control and the exit status are the command's own, with
/// nothing to forward. Only returns on failure, and then the command never ran (or could not be
/// executed: [`Error::Exec`]).
///
/// A process cannot map more than its own id into a namespace it is in, so the namespace is
/// made by a placeholder child sharing idshift's memory (`sys::userns`); idshift writes its maps
/// from outside (directly or through newuidmap/newgidmap), joins it with `setns`, and the child
/// is reaped before the command runs: the command never inherits a child.
fn exec_direct(
    map: &IdMap,
    mapper: &Mapper,
    ids: Ids,
    argv: &[CString],
    path: &OsStr,
    describe: &Describe,
) -> Result<i32> {
    let holder = sys::userns::hold_new().map_err(|e| describe.stage_error(Stage::Unshare, e))?;
    mapper.write(holder.pid(), map)?;
    holder
        .join()
        .map_err(|e| Error::sys("cannot join the new user namespace", e))?;
    ids.become_them()
        .map_err(|(stage, e)| describe.stage_error(stage, e))?;
    sys::default_sigpipe().map_err(|e| describe.stage_error(Stage::Prepare, e))?;
    let Err(e) = nix::unistd::execvp(&argv[0], argv);
    Err(describe.stage_error(Stage::Exec, exec_errno(&argv[0], e, path)))
}

/// What idshift does while the command runs.
enum Relay {
    /// Pass the forwarded signals on.
    Signals(KernelSignals),
    /// Also relay the command's own terminal and the caller's (`--rootfs` on a terminal).
    Terminal(terminal::Host),
}

/// Runs `f` in a child process inside a new user namespace with `map` and returns the code it
/// returns (128+N if it died of signal N). The child keeps its ids: it holds every capability
/// in the namespace, over the inodes whose owners the map names. Forwarded signals end it.
///
/// For work that must happen inside a namespace with no command to run: the unprivileged shift.
/// The caller must be single-threaded (`sys::fork` checks); `f` may start threads.
pub fn call(map: &IdMap, mapper: &Mapper, f: impl FnOnce() -> u8) -> Result<i32> {
    if map.is_empty() {
        return Err(Error::Usage("the map is empty".into()));
    }
    check_writable(map)?;
    let plan = ChildPlan {
        ids: Ids {
            uid: None,
            gid: None,
            setgroups: false,
        },
        action: Action::Call(Box::new(f)),
    };
    launch(
        map,
        mapper,
        plan,
        &Describe::default(),
        Relay::Signals(KernelSignals::Skip),
    )
}

/// Checks that the kernel takes `map` in one write per kind (lines and page size, see
/// [`IdMap::check_writable`]); a usage error otherwise. Every path that writes a map (exec,
/// `call`, the namespace of an idmapped mount) checks here before it forks, so a too-large map
/// is named instead of failing as a bare `EINVAL` from `uid_map`.
pub fn check_writable(map: &IdMap) -> Result<()> {
    map.check_writable(sys::page_size()).map_err(Error::Usage)
}

/// A new user namespace with `map`, as a file descriptor (for `mount_setattr`'s
/// `MOUNT_ATTR_IDMAP`). A placeholder child creates it (`sys::userns`, no fork: callable with
/// threads running), the maps are written, the namespace file is opened, and the child is let
/// go: the fd keeps the namespace alive.
pub fn namespace_fd(map: &IdMap, mapper: &Mapper) -> Result<OwnedFd> {
    check_writable(map)?;
    let holder =
        sys::userns::hold_new().map_err(|e| Error::sys("cannot create a user namespace", e))?;
    mapper.write(holder.pid(), map)?;
    let path = mapper.proc_root.join(format!("{}/ns/user", holder.pid()));
    let ns = File::open(&path).map_err(|e| Error::io(&path, e))?;
    // The holder, dropped, lets its child go and reaps it; the namespace lives on in `ns`.
    Ok(OwnedFd::from(ns))
}

/// Forks the child that enters the namespace and supervises it.
fn launch(
    map: &IdMap,
    mapper: &Mapper,
    plan: ChildPlan,
    describe: &Describe,
    relay: Relay,
) -> Result<i32> {
    let mut blocked = signals::forwarded_and_sigchld();
    if let Relay::Terminal(_) = relay {
        // Read from the signalfd, not acted on: a window-size change, and a continue (the
        // continuing itself always happens).
        blocked.add(Signal::SIGWINCH);
        blocked.add(Signal::SIGCONT);
        // A stop sent to idshift itself (`kill -TSTP`): the terminal is given back first.
        blocked.add(Signal::SIGTSTP);
    }
    let mask = signals::block(&blocked)?;
    let signalfd = SignalFd::with_flags(&blocked, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::sys("signalfd", e))?;
    let parent = nix::unistd::getpid();

    // The exec path is single-threaded (`sys::fork` checks): `main` parses arguments and comes
    // here without starting any thread.
    match child::fork()? {
        Forked::Child(channel) => {
            drop((signalfd, relay));
            child_main(plan, channel, mask.old_mask(), parent)
        }
        Forked::Parent(mut supervisor) => {
            let explain = |stage, errno| describe.stage_error(stage, errno);
            supervisor.ready(&explain)?;
            mapper.write(supervisor.pid(), map)?;
            supervisor.go(&explain)?;
            match relay {
                Relay::Signals(kernel) => {
                    // The command runs: from here on the child is reaped below, not killed.
                    let child = supervisor.release();
                    signals::forward_until_exit(child, &signalfd, false, kernel)
                }
                Relay::Terminal(host) => {
                    let master = terminal::receive_master(&host)?;
                    let child = supervisor.release();
                    terminal::relay(child, &signalfd, master, &host)
                }
            }
        }
    }
}

/// What the child does once its maps are written.
enum Action<'a> {
    /// Enter the rootfs (mount and PID namespaces, `/proc`, `/dev`, pivot_root), then run the
    /// command as PID 2 under a small PID 1 that forwards signals and reaps.
    ExecIn(&'a [CString], Box<RootfsPlan>),
    /// Run this function and exit with its code.
    Call(Box<dyn FnOnce() -> u8 + 'a>),
}

struct ChildPlan<'a> {
    ids: Ids,
    action: Action<'a>,
}

/// The child: never returns.
fn child_main(plan: ChildPlan, channel: Channel, old_mask: &SigSet, parent: Pid) -> ! {
    let (dir, flags) = match &plan.action {
        Action::ExecIn(_, rootfs) => (
            Some(rootfs.dir.as_c_str()),
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID,
        ),
        _ => (None, CloneFlags::empty()),
    };
    let status = channel.enter(dir, flags);
    match plan.action {
        Action::ExecIn(argv, rootfs) => {
            status.die_with(parent);
            // Out of the caller's session: only idshift is in it (and gets what its terminal
            // sends, to pass on); nothing of the container can have it as controlling terminal.
            if let Err(e) = nix::unistd::setsid() {
                status.fail(Stage::Session, e);
            }
            // The first child in the new PID namespace is its PID 1.
            match sys::fork() {
                Err(e) => status.fail(Stage::Prepare, e),
                Ok(nix::unistd::ForkResult::Child) => {
                    rootfs::init(plan.ids, argv, &rootfs, status, old_mask)
                }
                Ok(nix::unistd::ForkResult::Parent { child }) => {
                    drop(status);
                    signals::relay_and_exit(child)
                }
            }
        }
        Action::Call(f) => {
            status.prepare_exec(old_mask, parent);
            drop(status);
            let code = f();
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            sys::exit_now(code.into())
        }
    }
}

/// `execvp` answers EACCES when some directory of `PATH` cannot be searched (common inside a
/// namespace, where the host's `/root` is unmapped) even if the command is nowhere: like a shell,
/// call that "not found" unless a file of that name exists on the path.
fn exec_errno(program: &CString, errno: Errno, path: &OsStr) -> Errno {
    let name = program.as_bytes();
    if errno != Errno::EACCES || name.contains(&b'/') {
        return errno;
    }
    let exists = std::env::split_paths(path)
        .any(|dir| dir.join(OsStr::from_bytes(name)).symlink_metadata().is_ok());
    if exists {
        errno
    } else {
        Errno::ENOENT
    }
}
