//! `idshift exec`: run a command as in-container root in a new user namespace.
//!
//! fork → the child `unshare(CLONE_NEWUSER)`s and says so → the parent writes the child's maps
//! (directly or through newuidmap/newgidmap, [`mapper`]) and says go → the child drops
//! supplementary groups, `setresgid`/`setresuid`s to the ids asked for and `execvp`s the
//! command. Every set-up failure of the child comes back over a close-on-exec pipe, so the
//! parent knows the command never ran; end of file on that pipe means `execvp` succeeded
//! ([`child`] is that protocol, the one `run`, `call` and `namespace_fd` share). The parent then
//! forwards signals ([`signals`]) and turns the command's end into an exit status.
//!
//! `--rootfs` enters a container rather than a chroot: its own mount, PID and user
//! namespaces, `pivot_root` into the rootfs with the host's tree detached (nothing of it stays
//! reachable, whatever the command does with CAP_SYS_CHROOT), a terminal of its own instead of
//! the caller's ([`terminal`]), and a clean environment.
//!
//! The path is single-threaded from `main` to `fork` (no thread pool is ever started
//! here).

mod child;
pub mod mapper;
mod signals;
mod spec;
mod terminal;

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
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
use child::{Channel, Describe, Forked, Ids, Stage, Status};
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
    let (action, host) = match &spec.rootfs {
        None => (Action::Exec(&argv), None),
        Some(dir) => {
            let (terminal, host) = terminal::plan()?.unzip();
            let owner = (spec.uid.unwrap_or(0), spec.gid.unwrap_or(0));
            let plan = RootfsPlan::new(dir, owner, &argv[0], &spec.env, terminal)?;
            (Action::ExecIn(&argv, Box::new(plan)), host)
        }
    };
    let plan = ChildPlan {
        ids: Ids {
            uid: spec.uid.filter(|_| spec.map.has(IdKind::Uid)),
            gid: spec.gid.filter(|_| spec.map.has(IdKind::Gid)),
            setgroups: spec.map.has(IdKind::Gid) && mapper.setgroups_allowed(&spec.map),
        },
        action,
    };
    let describe = Describe {
        uid: spec.uid,
        gid: spec.gid,
        program: Some(spec.command[0].to_string_lossy().into_owned()),
        rootfs: spec.rootfs.clone(),
    };
    let relay = match (&spec.rootfs, host) {
        (None, _) => Relay::Signals(KernelSignals::Skip),
        (Some(_), None) => Relay::Signals(KernelSignals::Forward),
        (Some(_), Some(host)) => Relay::Terminal(host),
    };
    launch(&spec.map, mapper, plan, &describe, relay)
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

/// A new user namespace with `map`, as a file descriptor (for `mount_setattr`'s
/// `MOUNT_ATTR_IDMAP`). A child process creates it, the maps are written, the namespace file is
/// opened, and the child is ended: the fd keeps the namespace alive.
pub fn namespace_fd(map: &IdMap, mapper: &Mapper) -> Result<OwnedFd> {
    match child::fork()? {
        Forked::Child(channel) => {
            // Never goes on: the parent ends it once it has opened the namespace.
            channel.enter(None, CloneFlags::empty());
            sys::exit_now(0)
        }
        Forked::Parent(mut supervisor) => {
            supervisor.ready(&|_, errno| Error::sys("cannot create a user namespace", errno))?;
            mapper.write(supervisor.pid(), map)?;
            let path = mapper
                .proc_root
                .join(format!("{}/ns/user", supervisor.pid()));
            let ns = File::open(&path).map_err(|e| Error::io(&path, e))?;
            // The supervisor, dropped, kills and reaps the child.
            Ok(OwnedFd::from(ns))
        }
    }
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
    /// `execvp` the command.
    Exec(&'a [CString]),
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
        Action::Exec(argv) => {
            status.become_ids(plan.ids);
            // After the id changes, which clear it: the command dies with idshift.
            status.prepare_exec(old_mask, parent);
            let Err(e) = nix::unistd::execvp(&argv[0], argv);
            let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
            status.fail(Stage::Exec, exec_errno(&argv[0], e, &path))
        }
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
                    init(plan.ids, argv, &rootfs, status, old_mask)
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

/// The `--rootfs` plan, built before the fork.
struct RootfsPlan {
    dir: CString,
    /// The clean environment: `PATH`, `HOME`, the caller's `TERM`, `LANG` and `LC_*`, and what
    /// `--env` adds.
    env: Vec<CString>,
    /// Where the command is looked for, inside: `dir/NAME` for each directory of the
    /// container's `PATH`, or the one path given.
    candidates: Vec<CString>,
    /// The command gets a terminal of its own (the caller has one).
    terminal: Option<terminal::Plan>,
    /// The ids the command's terminal is handed to.
    owner: (u32, u32),
}

/// `CAP_SYS_ADMIN` (linux/capability.h), dropped from the bounding set under `--rootfs`.
const CAP_SYS_ADMIN: i32 = 21;

/// `PATH` inside a container, as Debian's root gets it.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The caller's variables a container's command gets: the terminal type and the locale.
fn passes_through(name: &str) -> bool {
    matches!(name, "TERM" | "LANG") || name.starts_with("LC_")
}

impl RootfsPlan {
    fn new(
        dir: &std::path::Path,
        owner: (u32, u32),
        program: &CString,
        settings: &[EnvSetting],
        terminal: Option<terminal::Plan>,
    ) -> Result<RootfsPlan> {
        let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::Usage(format!(
                "{}: --rootfs must be a directory (not a symlink)",
                dir.display()
            )));
        }
        let home = if owner.0 == 0 { "/root" } else { "/" };
        let mut vars: Vec<(String, std::ffi::OsString)> = vec![
            ("PATH".into(), CONTAINER_PATH.into()),
            ("HOME".into(), home.into()),
        ];
        for (name, value) in std::env::vars_os() {
            if let Some(name) = name.to_str().filter(|n| passes_through(n)) {
                vars.push((name.to_string(), value));
            }
        }
        for s in settings {
            let value = match &s.value {
                Some(v) => Some(v.into()),
                None => std::env::var_os(&s.name),
            };
            vars.retain(|(n, _)| *n != s.name);
            if let Some(value) = value {
                vars.push((s.name.clone(), value));
            }
        }
        let nul = |what: &str| Error::Usage(format!("{what} contains a NUL byte"));
        let env = vars
            .into_iter()
            .map(|(name, value)| {
                let mut bytes = name.into_bytes();
                bytes.push(b'=');
                bytes.extend_from_slice(value.as_bytes());
                CString::new(bytes).map_err(|_| nul("an environment variable"))
            })
            .collect::<Result<_>>()?;
        let name = program.as_bytes();
        let candidates = if name.contains(&b'/') {
            vec![program.clone()]
        } else {
            CONTAINER_PATH
                .split(':')
                .map(|d| {
                    let mut path = format!("{d}/").into_bytes();
                    path.extend_from_slice(name);
                    CString::new(path).map_err(|_| nul("the command"))
                })
                .collect::<Result<_>>()?
        };
        Ok(RootfsPlan {
            dir: CString::new(dir.as_os_str().as_bytes()).map_err(|_| nul("the --rootfs path"))?,
            env,
            candidates,
            terminal,
            owner,
        })
    }
}

/// PID 1 of the new PID namespace, in the rootfs: mounts, `pivot_root`, then the command as
/// PID 2, in a session of its own.
fn init(ids: Ids, argv: &[CString], rootfs: &RootfsPlan, status: Status, old_mask: &SigSet) -> ! {
    // Mounting needs the namespace's root (validated to be mapped); the ids asked for come after.
    let root = Ids {
        uid: Some(0),
        gid: Some(0),
        ..ids
    };
    status.become_ids(root);
    let slave = enter_rootfs(&status, rootfs);
    // No program run from here on may mount, remount or unmount: the command cannot lift the
    // rootfs's `nodev` nor take the minimal /dev away to reach the rootfs's own device nodes.
    if let Err(e) = sys::fs::drop_bounding_cap(CAP_SYS_ADMIN) {
        status.fail(Stage::Prepare, e);
    }
    status.become_ids(ids);
    // After the id changes, which clear it. (Its parent is outside this PID namespace, so
    // getppid() is 0 here and cannot tell whether that parent is still there.)
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        status.fail(Stage::Prepare, e);
    }
    let me = nix::unistd::getpid();
    match sys::fork() {
        Err(e) => status.fail(Stage::Prepare, e),
        Ok(nix::unistd::ForkResult::Child) => {
            let on_tty = rootfs.terminal.as_ref().map_or([false; 3], |t| t.on_tty);
            if let Err(e) = terminal::attach(slave.as_ref().map(|s| (s, on_tty))) {
                status.fail(Stage::Session, e);
            }
            drop(slave);
            // Only 0, 1 and 2 reach the command: an fd the caller had open (a directory, a
            // socket) would be a way out of the rootfs.
            if let Err(e) = sys::fs::cloexec_from(3) {
                status.fail(Stage::Prepare, e);
            }
            status.prepare_exec(old_mask, me);
            let e = exec_in_container(argv, rootfs);
            status.fail(Stage::Exec, e)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            // The command's terminal ends (the master reads EIO) when the command's processes
            // are gone, not while PID 1 holds it too.
            drop((slave, status));
            signals::relay_and_exit(child)
        }
    }
}

/// `execve` of the command with the clean environment, looked up along the container's `PATH`
/// (never the caller's) as `execvp` would: the first candidate that runs; a file without `#!`
/// runs under `/bin/sh`; EACCES if some candidate was there but could not run, else ENOENT.
fn exec_in_container(argv: &[CString], rootfs: &RootfsPlan) -> Errno {
    let mut denied = false;
    let searched = rootfs.candidates.len() > 1;
    for path in &rootfs.candidates {
        let Err(e) = nix::unistd::execve(path, argv, &rootfs.env);
        match e {
            Errno::ENOEXEC => {
                let mut sh = vec![c"/bin/sh".to_owned(), path.clone()];
                sh.extend(argv[1..].iter().cloned());
                let Err(e) = nix::unistd::execve(c"/bin/sh", &sh, &rootfs.env);
                return e;
            }
            _ if !searched => return e,
            Errno::EACCES => denied = true,
            Errno::ENOENT | Errno::ENOTDIR | Errno::ESTALE | Errno::ENODEV | Errno::ETIMEDOUT => {}
            e => return e,
        }
    }
    if denied {
        exec_errno(&argv[0], Errno::EACCES, CONTAINER_PATH.as_ref())
    } else {
        Errno::ENOENT
    }
}

/// In the rootfs (the working directory): mounts made slave, the rootfs bound onto itself, a
/// fresh `/proc`, a minimal `/dev` where the rootfs has a `dev` directory, the command's
/// terminal (if it gets one), then `pivot_root` with the host's tree detached. Returns the
/// terminal's slave.
fn enter_rootfs(status: &Status, rootfs: &RootfsPlan) -> Option<OwnedFd> {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    // Nothing mounted or unmounted here propagates to the host.
    if let Err(e) = mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none) {
        status.fail(Stage::MountSlave, e);
    }
    // `pivot_root` needs the new root to be a mount: the rootfs (with what is mounted below it)
    // is bound onto itself, and entered through the new mount's own fd (the working directory
    // is the directory below it).
    // The bind is `nodev`: a device node in the rootfs (a root-made tree has /dev/console, and
    // could have a disk's) opens nothing of the host's.
    let new_root = match sys::mount::open_tree_clone(c".", true).and_then(|tree| {
        sys::mount::set_nodev(tree.as_fd())?;
        sys::mount::attach(tree.as_fd(), c".")?;
        nix::unistd::fchdir(&tree)?;
        Ok(tree)
    }) {
        Ok(tree) => tree,
        Err(e) => status.fail(Stage::Bind, e),
    };
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = mount(Some("proc"), "proc", Some("proc"), hardened, none) {
        status.fail(Stage::MountProc, e);
    }
    let devpts = match std::path::Path::new("dev").is_dir() {
        true => minimal_dev().unwrap_or_else(|e| status.fail(Stage::MountDev, e)),
        false => false,
    };
    let slave = rootfs.terminal.as_ref().map(|plan| {
        // The container's own devpts instance, so that the terminal is one of its /dev/pts
        // (`tty` names it, /dev/tty opens it); the host's only where the rootfs has no /dev.
        let ptmx = if devpts {
            c"dev/pts/ptmx"
        } else {
            c"/dev/ptmx"
        };
        let (slave, number) = terminal::open_in_container(plan, ptmx)
            .unwrap_or_else(|e| status.fail(Stage::Terminal, e));
        // The command's /dev/tty is its own terminal: the host's /dev/tty is never bound in.
        if devpts {
            if let Err(e) = std::os::unix::fs::symlink(format!("pts/{number}"), "dev/tty") {
                status.fail(Stage::MountDev, io_errno(e));
            }
        }
        let (uid, gid) = rootfs.owner;
        if let Err(e) = nix::unistd::fchown(&slave, Some(uid.into()), Some(gid.into())) {
            status.fail(Stage::Terminal, e);
        }
        slave
    });
    if let Err(e) = pivot_root(&new_root) {
        status.fail(Stage::PivotRoot, e);
    }
    slave
}

/// `pivot_root` into the working directory (a mount) and detach the old root, as LXC does
/// (`lxc_pivot_root`): after this no path leads to the host's tree, and a chroot inside cannot
/// be left for it — there is no mount above the new root to `..` into.
fn pivot_root(new_root: &OwnedFd) -> std::result::Result<(), Errno> {
    use nix::fcntl::{open, OFlag};
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let old_root = open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // The old root ends up mounted on top of the new one.
    nix::unistd::pivot_root(".", ".")?;
    nix::unistd::fchdir(&old_root)?;
    let none: Option<&str> = None;
    mount(none, ".", none, MsFlags::MS_SLAVE | MsFlags::MS_REC, none)?;
    umount2(".", MntFlags::MNT_DETACH)?;
    nix::unistd::fchdir(new_root)?;
    nix::unistd::chdir("/")
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// A tmpfs on `dev` with the host's harmless character devices bound in, a private devpts
/// instance, and the usual symlinks — what LXC gives an unprivileged container, except the
/// host's `/dev/tty`: the command's terminal is one of this devpts. Returns whether the devpts
/// instance is there.
fn minimal_dev() -> std::result::Result<bool, Errno> {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    mount(
        Some("tmpfs"),
        "dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=1024k"),
    )?;
    for name in ["null", "zero", "full", "random", "urandom"] {
        let host = format!("/dev/{name}");
        if std::fs::symlink_metadata(&host).is_err() {
            continue;
        }
        let target = format!("dev/{name}");
        File::create(&target).map_err(io_errno)?;
        mount(
            Some(host.as_str()),
            target.as_str(),
            none,
            MsFlags::MS_BIND,
            none,
        )?;
    }
    for dir in ["dev/pts", "dev/shm"] {
        std::fs::create_dir(dir).map_err(io_errno)?;
    }
    // Without a devpts instance (an old kernel) a command just gets no new terminals.
    let devpts = mount(
        Some("devpts"),
        "dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .is_ok();
    if devpts {
        std::os::unix::fs::symlink("pts/ptmx", "dev/ptmx").map_err(io_errno)?;
    }
    for (link, to) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, link).map_err(io_errno)?;
    }
    Ok(devpts)
}
