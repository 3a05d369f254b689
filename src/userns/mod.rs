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
    /// `--rootfs`: also a private mount and PID namespace, a fresh `/proc` and a minimal `/dev`
    /// in this directory, `chroot` into it, and a container's `PATH` and `HOME`.
    pub rootfs: Option<std::path::PathBuf>,
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
        if let Some(dir) = &self.rootfs {
            for kind in IdKind::BOTH {
                if self.map.to_host(kind, 0).is_none() {
                    return Err(Error::Usage(format!(
                        "--rootfs {}: the map must map {} 0 (container root), and '{}' does not",
                        dir.display(),
                        kind.name(),
                        self.map
                    )));
                }
            }
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
    Rootfs = 7,
    MountSlave = 8,
    MountProc = 9,
    MountDev = 10,
    Chroot = 11,
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
            11 => Stage::Chroot,
            _ => return None,
        })
    }
}

const MSG_LEN: usize = 5;

/// The map of the user namespace this process is in, from `/proc/self/{uid,gid}_map`; `None`
/// in the initial namespace (which maps every id to itself).
pub fn current_map() -> Result<Option<IdMap>> {
    let mut entries = Vec::new();
    let mut initial = true;
    for kind in IdKind::BOTH {
        let path = format!("/proc/self/{}_map", kind.name());
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        for line in text.lines() {
            let f: Vec<u32> = line
                .split_ascii_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            let [ns, host, count] = f[..] else {
                return Err(Error::Failed(format!("{path}: unexpected line '{line}'")));
            };
            if (ns, host, count) == (0, 0, u32::MAX) {
                continue;
            }
            initial = false;
            entries.push(
                crate::idmap::IdMapEntry::new(kind, ns, host, count)
                    .map_err(|e| Error::Failed(format!("{path}: {e}")))?,
            );
        }
    }
    if initial {
        return Ok(None);
    }
    Ok(Some(
        IdMap::new(entries).map_err(|e| Error::Failed(format!("/proc/self: {e}")))?,
    ))
}

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
    let action = match &spec.rootfs {
        None => Action::Exec(&argv),
        Some(dir) => Action::ExecIn(&argv, RootfsPlan::new(dir, spec.uid.unwrap_or(0))?),
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
    launch(&spec.map, mapper, plan, &describe)
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
    launch(map, mapper, plan, &Describe::default())
}

/// The `--rootfs` plan, built before the fork.
struct RootfsPlan {
    dir: CString,
    /// `HOME` inside: `/root` for uid 0, else `/`.
    home: &'static str,
}

/// `PATH` inside a container, as Debian's root gets it.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl RootfsPlan {
    fn new(dir: &std::path::Path, uid: u32) -> Result<RootfsPlan> {
        let meta = std::fs::symlink_metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::Usage(format!(
                "{}: --rootfs must be a directory (not a symlink)",
                dir.display()
            )));
        }
        Ok(RootfsPlan {
            dir: CString::new(dir.as_os_str().as_bytes())
                .map_err(|_| Error::Usage("the --rootfs path contains a NUL byte".into()))?,
            home: if uid == 0 { "/root" } else { "/" },
        })
    }
}

/// Forks the child that enters the namespace and supervises it.
fn launch(map: &IdMap, mapper: &Mapper, plan: ChildPlan, describe: &Describe) -> Result<i32> {
    let blocked = forwarded_and_sigchld();
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
            child(plan, go_r, status_w, &old_mask, parent)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop((go_r, status_w));
            supervise(
                child,
                map,
                mapper,
                go_w,
                File::from(status_r),
                &signals,
                describe,
            )
        }
    }
}

fn forwarded_and_sigchld() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set.add(Signal::SIGCHLD);
    set
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
    /// Enter the rootfs (mount and PID namespaces, `/proc`, `/dev`, chroot), then run the
    /// command as PID 2 under a small PID 1 that forwards signals and reaps.
    ExecIn(&'a [CString], RootfsPlan),
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
            fail(&status, Stage::Exec, exec_errno(&argv[0], e))
        }
        Action::ExecIn(argv, rootfs) => {
            die_with(parent, &status);
            // The first child in the new PID namespace is its PID 1.
            match sys::fork() {
                Err(e) => fail(&status, Stage::Prepare, e),
                Ok(nix::unistd::ForkResult::Child) => {
                    init(plan.ids, argv, &rootfs, status, old_mask)
                }
                Ok(nix::unistd::ForkResult::Parent { child }) => {
                    drop(status);
                    relay(child)
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

/// PID 1 of the new PID namespace, in the rootfs: mounts, chroot, then the command as PID 2.
fn init(ids: Ids, argv: &[CString], rootfs: &RootfsPlan, status: OwnedFd, old_mask: &SigSet) -> ! {
    // Mounting needs the namespace's root (validated to be mapped); the ids asked for come after.
    let root = Ids {
        uid: Some(0),
        gid: Some(0),
        ..ids
    };
    become_ids(root, &status);
    enter_rootfs(&status);
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
            prepare_exec(&status, old_mask, me);
            // The caller's environment with the container's PATH (which execvp searches, inside
            // the chroot) and HOME. This process is single-threaded.
            std::env::set_var("PATH", CONTAINER_PATH);
            std::env::set_var("HOME", rootfs.home);
            let Err(e) = nix::unistd::execvp(&argv[0], argv);
            fail(&status, Stage::Exec, exec_errno(&argv[0], e))
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(status);
            relay(child)
        }
    }
}

/// In the rootfs (the working directory): mounts made slave, a fresh `/proc`, a minimal `/dev`
/// where the rootfs has a `dev` directory, then `chroot`.
fn enter_rootfs(status: &OwnedFd) {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    if let Err(e) = mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none) {
        fail(status, Stage::MountSlave, e);
    }
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = mount(Some("proc"), "proc", Some("proc"), hardened, none) {
        fail(status, Stage::MountProc, e);
    }
    if std::path::Path::new("dev").is_dir() {
        if let Err(e) = minimal_dev() {
            fail(status, Stage::MountDev, e);
        }
    }
    if let Err(e) = nix::unistd::chroot(".").and_then(|()| nix::unistd::chdir("/")) {
        fail(status, Stage::Chroot, e);
    }
}

/// A tmpfs on `dev` with the host's harmless character devices bound in, a private devpts
/// instance, and the usual symlinks — what LXC gives an unprivileged container.
fn minimal_dev() -> std::result::Result<(), Errno> {
    use nix::mount::{mount, MsFlags};
    let none: Option<&str> = None;
    let io = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    mount(
        Some("tmpfs"),
        "dev",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=1024k"),
    )?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let host = format!("/dev/{name}");
        if std::fs::symlink_metadata(&host).is_err() {
            continue;
        }
        let target = format!("dev/{name}");
        File::create(&target).map_err(io)?;
        mount(
            Some(host.as_str()),
            target.as_str(),
            none,
            MsFlags::MS_BIND,
            none,
        )?;
    }
    for dir in ["dev/pts", "dev/shm"] {
        std::fs::create_dir(dir).map_err(io)?;
    }
    // Without a devpts instance (an old kernel) a command just gets no new terminals.
    if mount(
        Some("devpts"),
        "dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .is_ok()
    {
        std::os::unix::fs::symlink("pts/ptmx", "dev/ptmx").map_err(io)?;
    }
    for (link, to) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, link).map_err(io)?;
    }
    Ok(())
}

/// PID 1 under `--rootfs` (and its parent): waits for `child`, passing forwarded signals on and
/// reaping every other child too (as PID 1 must), and exits with the child's status (128+N for
/// signal N).
fn relay(child: Pid) -> ! {
    let code = match SignalFd::with_flags(&forwarded_and_sigchld(), SfdFlags::SFD_CLOEXEC) {
        Ok(signals) => forward_until_exit(child, &signals, true),
        Err(_) => wait_blocking(child),
    };
    sys::exit_now(code.unwrap_or(125))
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
        Stage::Chroot => format!("cannot chroot into {}", rootfs(d)),
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

fn supervise(
    child: Pid,
    map: &IdMap,
    mapper: &Mapper,
    go: OwnedFd,
    mut status: File,
    signals: &SignalFd,
    describe: &Describe,
) -> Result<i32> {
    let mut guard = ChildGuard(Some(child));
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
    // The command runs: from here on the child is reaped below, not killed.
    guard.0 = None;
    forward_until_exit(child, signals, false)
}

/// Passes the forwarded signals that arrive on `signals` on to `child` until it ends, and
/// returns its exit code (128+N for signal N). With `reap_others` every other child that ends
/// is reaped too: PID 1 inherits the orphans of its namespace.
fn forward_until_exit(child: Pid, signals: &SignalFd, reap_others: bool) -> Result<i32> {
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
