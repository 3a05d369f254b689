//! `idshift exec`: run a command as in-container root in a new user namespace.
//!
//! fork → the child `unshare(CLONE_NEWUSER)`s and says so → the parent writes the child's maps
//! (directly or through newuidmap/newgidmap) and says go → the child drops supplementary groups,
//! `setresgid`/`setresuid`s to the ids asked for and `execvp`s the command. Every set-up failure
//! of the child comes back over a close-on-exec pipe, so the parent knows the command never ran;
//! end of file on that pipe means `execvp` succeeded. The parent then forwards signals and
//! turns the command's end into an exit status.
//!
//! `--rootfs` enters a container rather than a chroot: its own mount, PID and user namespaces,
//! `pivot_root` into the rootfs with the host's tree detached (nothing of it stays reachable,
//! whatever the command does with CAP_SYS_CHROOT), a terminal of its own instead of the
//! caller's ([`terminal`]), and a clean environment.
//!
//! The path is single-threaded from `main` to `fork` (no thread pool is ever started here).

pub mod mapper;
mod signals;
mod spec;
mod terminal;

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::waitpid;
use nix::unistd::{Gid, Pid, Uid};

pub use mapper::Mapper;
pub use signals::FORWARDED;
pub use spec::{EnvSetting, ExecSpec};

use crate::error::{Error, Result};
use crate::idmap::{IdKind, IdMap};
use crate::sys;
use signals::KernelSignals;

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
    Rootfs = 7,
    MountSlave = 8,
    MountProc = 9,
    MountDev = 10,
    PivotRoot = 11,
    Bind = 12,
    Terminal = 13,
    Session = 14,
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
            7 => Stage::Rootfs,
            8 => Stage::MountSlave,
            9 => Stage::MountProc,
            10 => Stage::MountDev,
            11 => Stage::PivotRoot,
            12 => Stage::Bind,
            13 => Stage::Terminal,
            14 => Stage::Session,
            _ => return None,
        })
    }
}

const MSG_LEN: usize = 5;

/// What a failure message names: the ids asked for and the program.
#[derive(Debug, Default)]
struct Describe {
    uid: Option<u32>,
    gid: Option<u32>,
    program: Option<String>,
    rootfs: Option<std::path::PathBuf>,
}

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
            drop((go_w, status_r, signals, relay));
            child(plan, go_r, status_w, mask.old_mask(), parent)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((go_r, status_w));
            let mut guard = start(child, map, mapper, go_w, File::from(status_r), describe)?;
            match relay {
                Relay::Signals(kernel) => {
                    // The command runs: from here on the child is reaped below, not killed.
                    guard.0 = None;
                    signals::forward_until_exit(child, &signals, false, kernel)
                }
                Relay::Terminal(host) => {
                    let master = terminal::receive_master(&host)?;
                    guard.0 = None;
                    terminal::relay(child, &signals, master, &host)
                }
            }
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

/// The ids the command runs as inside; `None` keeps the (unmapped) one.
#[derive(Clone, Copy)]
struct Ids {
    uid: Option<u32>,
    gid: Option<u32>,
    /// Whether `setgroups` may be called (not after an unprivileged direct `gid_map` write).
    setgroups: bool,
}

struct ChildPlan<'a> {
    ids: Ids,
    action: Action<'a>,
}

/// Tells the parent where set-up failed, and exits 125.
fn fail(status: &OwnedFd, stage: Stage, errno: Errno) -> ! {
    let mut msg = [0u8; MSG_LEN];
    msg[0] = stage as u8;
    msg[1..].copy_from_slice(&(errno as i32).to_le_bytes());
    let _ = nix::unistd::write(status, &msg);
    sys::exit_now(125)
}

/// The child: never returns.
fn child(plan: ChildPlan, go: OwnedFd, status: OwnedFd, old_mask: &SigSet, parent: Pid) -> ! {
    let mut flags = CloneFlags::CLONE_NEWUSER;
    if let Action::ExecIn(_, rootfs) = &plan.action {
        // Entered before the mount namespace is made, so that the new namespace's copy of it
        // becomes the working directory (and with the caller's own right to reach it).
        if let Err(e) = nix::unistd::chdir(rootfs.dir.as_c_str()) {
            fail(&status, Stage::Rootfs, e);
        }
        flags |= CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
    }
    if let Err(e) = nix::sched::unshare(flags) {
        fail(&status, Stage::Unshare, e);
    }
    if nix::unistd::write(&status, &[Stage::Ready as u8, 0, 0, 0, 0]) != Ok(MSG_LEN) {
        sys::exit_now(125);
    }
    let mut byte = [0u8; 1];
    if nix::unistd::read(&go, &mut byte) != Ok(1) {
        // The parent could not write the maps and reports why.
        sys::exit_now(125);
    }
    match plan.action {
        Action::Exec(argv) => {
            become_ids(plan.ids, &status);
            // After the id changes, which clear it: the command dies with idshift.
            prepare_exec(&status, old_mask, parent);
            let Err(e) = nix::unistd::execvp(&argv[0], argv);
            let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
            fail(&status, Stage::Exec, exec_errno(&argv[0], e, &path))
        }
        Action::ExecIn(argv, rootfs) => {
            die_with(parent, &status);
            // Out of the caller's session: only idshift is in it (and gets what its terminal
            // sends, to pass on); nothing of the container can have it as controlling terminal.
            if let Err(e) = nix::unistd::setsid() {
                fail(&status, Stage::Session, e);
            }
            // The first child in the new PID namespace is its PID 1.
            match sys::fork() {
                Err(e) => fail(&status, Stage::Prepare, e),
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
            prepare_exec(&status, old_mask, parent);
            drop(status);
            let code = f();
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            sys::exit_now(code.into())
        }
    }
}

/// Drops supplementary groups (where allowed) and becomes `gid` and `uid`.
fn become_ids(ids: Ids, status: &OwnedFd) {
    if let Some(gid) = ids.gid {
        if ids.setgroups {
            if let Err(e) = nix::unistd::setgroups(&[]) {
                fail(status, Stage::Setgroups, e);
            }
        }
        let gid = Gid::from_raw(gid);
        if let Err(e) = nix::unistd::setresgid(gid, gid, gid) {
            fail(status, Stage::Setresgid, e);
        }
    }
    if let Some(uid) = ids.uid {
        let uid = Uid::from_raw(uid);
        if let Err(e) = nix::unistd::setresuid(uid, uid, uid) {
            fail(status, Stage::Setresuid, e);
        }
    }
}

/// Dies with `parent` (set after any id change, which clears it).
fn die_with(parent: Pid, status: &OwnedFd) {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(status, Stage::Prepare, e);
    }
    if nix::unistd::getppid() != parent {
        sys::exit_now(125);
    }
}

/// The last steps before the command: die with the parent, default SIGPIPE, the caller's mask.
fn prepare_exec(status: &OwnedFd, old_mask: &SigSet, parent: Pid) {
    die_with(parent, status);
    if let Err(e) = sys::default_sigpipe()
        .and_then(|()| sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None))
    {
        fail(status, Stage::Prepare, e);
    }
}

/// PID 1 of the new PID namespace, in the rootfs: mounts, `pivot_root`, then the command as
/// PID 2, in a session of its own.
fn init(ids: Ids, argv: &[CString], rootfs: &RootfsPlan, status: OwnedFd, old_mask: &SigSet) -> ! {
    // Mounting needs the namespace's root (validated to be mapped); the ids asked for come after.
    let root = Ids {
        uid: Some(0),
        gid: Some(0),
        ..ids
    };
    become_ids(root, &status);
    let slave = enter_rootfs(&status, rootfs);
    // No program run from here on may mount, remount or unmount: the command cannot lift the
    // rootfs's `nodev` nor take the minimal /dev away to reach the rootfs's own device nodes.
    if let Err(e) = sys::fs::drop_bounding_cap(CAP_SYS_ADMIN) {
        fail(&status, Stage::Prepare, e);
    }
    become_ids(ids, &status);
    // After the id changes, which clear it. (Its parent is outside this PID namespace, so
    // getppid() is 0 here and cannot tell whether that parent is still there.)
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(&status, Stage::Prepare, e);
    }
    let me = nix::unistd::getpid();
    match sys::fork() {
        Err(e) => fail(&status, Stage::Prepare, e),
        Ok(nix::unistd::ForkResult::Child) => {
            let on_tty = rootfs.terminal.as_ref().map_or([false; 3], |t| t.on_tty);
            if let Err(e) = terminal::attach(slave.as_ref().map(|s| (s, on_tty))) {
                fail(&status, Stage::Session, e);
            }
            drop(slave);
            // Only 0, 1 and 2 reach the command: an fd the caller had open (a directory, a
            // socket) would be a way out of the rootfs.
            if let Err(e) = sys::fs::cloexec_from(3) {
                fail(&status, Stage::Prepare, e);
            }
            prepare_exec(&status, old_mask, me);
            let e = exec_in_container(argv, rootfs);
            fail(&status, Stage::Exec, e)
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
fn enter_rootfs(status: &OwnedFd, rootfs: &RootfsPlan) -> Option<OwnedFd> {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    // Nothing mounted or unmounted here propagates to the host.
    if let Err(e) = mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none) {
        fail(status, Stage::MountSlave, e);
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
        Err(e) => fail(status, Stage::Bind, e),
    };
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = mount(Some("proc"), "proc", Some("proc"), hardened, none) {
        fail(status, Stage::MountProc, e);
    }
    let devpts = match std::path::Path::new("dev").is_dir() {
        true => minimal_dev().unwrap_or_else(|e| fail(status, Stage::MountDev, e)),
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
            .unwrap_or_else(|e| fail(status, Stage::Terminal, e));
        // The command's /dev/tty is its own terminal: the host's /dev/tty is never bound in.
        if devpts {
            if let Err(e) = std::os::unix::fs::symlink(format!("pts/{number}"), "dev/tty") {
                fail(status, Stage::MountDev, io_errno(e));
            }
        }
        let (uid, gid) = rootfs.owner;
        if let Err(e) = nix::unistd::fchown(&slave, Some(uid.into()), Some(gid.into())) {
            fail(status, Stage::Terminal, e);
        }
        slave
    });
    if let Err(e) = pivot_root(&new_root) {
        fail(status, Stage::PivotRoot, e);
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

/// `execvp` answers EACCES when some directory of `PATH` cannot be searched (common inside a
/// namespace, where the host's `/root` is unmapped) even if the command is nowhere: like a shell,
/// call that "not found" unless a file of that name exists on the path.
fn exec_errno(program: &CString, errno: Errno, path: &std::ffi::OsStr) -> Errno {
    let name = program.as_bytes();
    if errno != Errno::EACCES || name.contains(&b'/') {
        return errno;
    }
    let exists = std::env::split_paths(path).any(|dir| {
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

fn stage_error(stage: Stage, errno: Errno, d: &Describe) -> Error {
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
        Stage::Setresgid => format!("cannot become gid {} in the namespace", d.gid.unwrap_or(0)),
        Stage::Setresuid => format!("cannot become uid {} in the namespace", d.uid.unwrap_or(0)),
        Stage::Prepare | Stage::Ready => "cannot prepare the command".to_string(),
        Stage::Rootfs => format!("cannot enter the rootfs {}", rootfs(d)),
        Stage::MountSlave => "cannot make the mounts of the new mount namespace slaves".into(),
        Stage::MountProc => format!("cannot mount a fresh /proc on {}/proc", rootfs(d)),
        Stage::MountDev => format!("cannot mount a minimal /dev on {}/dev", rootfs(d)),
        Stage::Bind => format!("cannot bind {} onto itself", rootfs(d)),
        Stage::PivotRoot => format!("cannot pivot_root into {}", rootfs(d)),
        Stage::Terminal => format!("cannot open a terminal for the command in {}", rootfs(d)),
        Stage::Session => "cannot give the command a session of its own".to_string(),
        Stage::Exec => {
            return Error::Exec {
                program: d.program.clone().unwrap_or_default(),
                errno,
            }
        }
    };
    Error::sys(what, errno)
}

fn rootfs(d: &Describe) -> String {
    d.rootfs
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Writes the child's maps, lets it go on, and waits until the command runs (the status pipe
/// closes) or set-up fails. Returns the guard that kills the child, still armed.
fn start(
    child: Pid,
    map: &IdMap,
    mapper: &Mapper,
    go: OwnedFd,
    mut status: File,
    describe: &Describe,
) -> Result<ChildGuard> {
    let guard = ChildGuard(Some(child));
    match read_message(&mut status)? {
        Some((Stage::Ready, _)) => {}
        Some((stage, errno)) => return Err(stage_error(stage, errno, describe)),
        None => return Err(Error::Failed("the child exited during set-up".into())),
    }
    mapper.write(child, map)?;
    nix::unistd::write(&go, &[1]).map_err(|e| Error::sys("signalling the child", e))?;
    drop(go);
    if let Some((stage, errno)) = read_message(&mut status)? {
        return Err(stage_error(stage, errno, describe));
    }
    Ok(guard)
}
