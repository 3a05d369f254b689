//! `exec --rootfs`: entering a container's rootfs rather than a chroot.
//!
//! The plan is built before the fork ([`RootfsPlan`]): the clean environment, where the command
//! is looked for, the terminal. In the child, the container's PID 1 ([`init`]) makes the mounts
//! slaves, binds the rootfs onto itself `nodev`, mounts a fresh `/proc` and a minimal `/dev`,
//! opens the command's terminal, `pivot_root`s with the host's tree detached, drops
//! `CAP_SYS_ADMIN` from the bounding set, takes the ids asked for and runs the command as PID 2.
//!
//! The command is executed with `execve` along a list of candidate paths made from the
//! container's `PATH` before the fork, not with `execvpe`: glibc's and musl's `execvpe` search
//! the `PATH` of the calling process's own environment (the caller's, on the host), not the one
//! in the `envp` they are given.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};

use super::child::{Ids, Stage, Status};
use super::{exec_errno, signals, terminal, EnvSetting};
use crate::error::{Error, Result};
use crate::sys;

/// The `--rootfs` plan, built before the fork.
pub(super) struct RootfsPlan {
    /// The rootfs, entered before the mount namespace is made.
    pub dir: CString,
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
    pub fn new(
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
                crate::report::escape_path(dir)
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
pub(super) fn init(
    ids: Ids,
    argv: &[CString],
    rootfs: &RootfsPlan,
    status: Status,
    old_mask: &SigSet,
) -> ! {
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
