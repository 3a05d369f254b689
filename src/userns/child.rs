//! The one protocol by which idshift starts a process in a new user namespace.
//!
//! [`fork`] makes two close-on-exec pipes and forks. The child ([`Channel::enter`]) `unshare`s
//! and says [`Stage::Ready`] on the status pipe; the parent ([`Supervisor`]) writes the child's
//! maps and sends one byte on the go pipe; the child goes on with its set-up. Each message is
//! five bytes: the [`Stage`] and an errno. Every set-up failure of the child comes back as a
//! message ([`Status::fail`]) and the child exits 125, so the parent knows the command never
//! ran; end of file on the status pipe means the child got past set-up (an `execve` succeeded
//! and closed the pipe, or the child ended). Until it is released, the supervisor kills and
//! reaps the child when dropped: no child outlives a failed set-up.
//!
//! The child side also holds the set-up steps every kind of child shares: taking the ids asked
//! for, dying with the parent, and the last steps before a command.

use std::ffi::CStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::error::{Error, Result};
use crate::sys;

/// Where the child stopped, sent back over the status pipe with the errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Stage {
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

fn message(stage: Stage, errno: i32) -> [u8; MSG_LEN] {
    let mut msg = [0u8; MSG_LEN];
    msg[0] = stage as u8;
    msg[1..].copy_from_slice(&errno.to_le_bytes());
    msg
}

/// What becomes of a failed stage: an [`Error`] for the caller.
pub(super) type Explain<'a> = &'a dyn Fn(Stage, Errno) -> Error;

/// Both sides of the fork.
pub(super) enum Forked {
    Child(Channel),
    Parent(Supervisor),
}

/// `fork` with the two pipes between parent and child. The caller must be single-threaded
/// (`sys::fork` checks).
pub(super) fn fork() -> Result<Forked> {
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    Ok(match sys::fork().map_err(|e| Error::sys("fork", e))? {
        ForkResult::Child => {
            drop((go_w, status_r));
            Forked::Child(Channel {
                go: go_r,
                status: Status(status_w),
            })
        }
        ForkResult::Parent { child } => {
            drop((go_r, status_w));
            Forked::Parent(Supervisor {
                pid: child,
                go: Some(go_w),
                status: File::from(status_r),
                armed: true,
            })
        }
    })
}

/// The child's ends of the pipes.
pub(super) struct Channel {
    go: OwnedFd,
    status: Status,
}

impl Channel {
    /// Enters the new namespaces: `chdir(dir)` first when there is one (before a new mount
    /// namespace is made, so that its copy becomes the working directory, reached with the
    /// caller's own rights), then `unshare(CLONE_NEWUSER | flags)`; says ready and waits until
    /// the maps are written. Returns the status end, for the rest of set-up.
    pub fn enter(self, dir: Option<&CStr>, flags: CloneFlags) -> Status {
        let status = self.status;
        if let Some(dir) = dir {
            if let Err(e) = nix::unistd::chdir(dir) {
                status.fail(Stage::Rootfs, e);
            }
        }
        if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWUSER | flags) {
            status.fail(Stage::Unshare, e);
        }
        if nix::unistd::write(&status.0, &message(Stage::Ready, 0)) != Ok(MSG_LEN) {
            sys::exit_now(125);
        }
        let mut byte = [0u8; 1];
        if nix::unistd::read(&self.go, &mut byte) != Ok(1) {
            // The parent could not write the maps and reports why.
            sys::exit_now(125);
        }
        status
    }
}

/// The child's end of the status pipe (close-on-exec: it closes when the command runs).
pub(super) struct Status(OwnedFd);

impl Status {
    /// Tells the parent where set-up failed, and exits 125.
    pub fn fail(&self, stage: Stage, errno: Errno) -> ! {
        let _ = nix::unistd::write(&self.0, &message(stage, errno as i32));
        sys::exit_now(125)
    }
}

/// The parent's side of a child in set-up.
pub(super) struct Supervisor {
    pid: Pid,
    go: Option<OwnedFd>,
    status: File,
    /// Kill and reap the child on drop (until [`Supervisor::release`]).
    armed: bool,
}

impl Supervisor {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits until the child is in its new namespaces (and its maps can be written).
    pub fn ready(&mut self, explain: Explain) -> Result<()> {
        match self.read_message()? {
            Some((Stage::Ready, _)) => Ok(()),
            Some((stage, errno)) => Err(explain(stage, errno)),
            None => Err(Error::Child("it exited during set-up".into())),
        }
    }

    /// Lets the child go on, and waits until its set-up is over (the status pipe closes) or
    /// fails.
    pub fn go(&mut self, explain: Explain) -> Result<()> {
        let go = self.go.take().expect("go is sent once");
        nix::unistd::write(&go, &[1]).map_err(|e| Error::sys("signalling the child", e))?;
        drop(go);
        match self.read_message()? {
            Some((stage, errno)) => Err(explain(stage, errno)),
            None => Ok(()),
        }
    }

    /// The command runs: from here on the caller reaps the child; it is not killed.
    pub fn release(mut self) -> Pid {
        self.armed = false;
        self.pid
    }

    /// Reads one child message; `None` at end of file.
    fn read_message(&mut self) -> Result<Option<(Stage, Errno)>> {
        let mut msg = [0u8; MSG_LEN];
        let mut got = 0;
        while got < MSG_LEN {
            match self.status.read(&mut msg[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(Error::Child("a short message".into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Child(format!("reading its status: {e}"))),
            }
        }
        let stage =
            Stage::from_byte(msg[0]).ok_or_else(|| Error::Child("a garbled message".into()))?;
        let errno = Errno::from_raw(i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]));
        Ok(Some((stage, errno)))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.armed {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// The ids the child takes inside; `None` keeps the (unmapped) one.
#[derive(Clone, Copy)]
pub(super) struct Ids {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Whether `setgroups` may be called (not after an unprivileged direct `gid_map` write).
    pub setgroups: bool,
}

impl Ids {
    /// Drops supplementary groups (where allowed) and becomes `gid` and `uid`; the stage that
    /// failed, and why.
    pub fn become_them(self) -> std::result::Result<(), (Stage, Errno)> {
        if let Some(gid) = self.gid {
            if self.setgroups {
                nix::unistd::setgroups(&[]).map_err(|e| (Stage::Setgroups, e))?;
            }
            let gid = Gid::from_raw(gid);
            nix::unistd::setresgid(gid, gid, gid).map_err(|e| (Stage::Setresgid, e))?;
        }
        if let Some(uid) = self.uid {
            let uid = Uid::from_raw(uid);
            nix::unistd::setresuid(uid, uid, uid).map_err(|e| (Stage::Setresuid, e))?;
        }
        Ok(())
    }
}

impl Status {
    /// Drops supplementary groups (where allowed) and becomes `gid` and `uid`.
    pub fn become_ids(&self, ids: Ids) {
        if let Err((stage, e)) = ids.become_them() {
            self.fail(stage, e);
        }
    }

    /// Dies with `parent` (set after any id change, which clears it).
    pub fn die_with(&self, parent: Pid) {
        if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
            self.fail(Stage::Prepare, e);
        }
        if nix::unistd::getppid() != parent {
            sys::exit_now(125);
        }
    }

    /// The last steps before the command: die with the parent, default SIGPIPE, the caller's
    /// mask.
    pub fn prepare_exec(&self, old_mask: &SigSet, parent: Pid) {
        self.die_with(parent);
        if let Err(e) = sys::default_sigpipe()
            .and_then(|()| sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None))
        {
            self.fail(Stage::Prepare, e);
        }
    }
}

/// What a failure message names: the ids asked for and the program.
#[derive(Debug, Default)]
pub(super) struct Describe {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub program: Option<String>,
    pub rootfs: Option<std::path::PathBuf>,
}

impl Describe {
    /// The error for a child that failed at `stage`.
    pub fn stage_error(&self, stage: Stage, errno: Errno) -> Error {
        let rootfs = || {
            self.rootfs
                .as_ref()
                .map(|p| crate::report::escape_path(p))
                .unwrap_or_default()
        };
        let what = match stage {
            Stage::Unshare => {
                let hint = if errno == Errno::ENOSPC {
                    " (the limit in /proc/sys/user/max_user_namespaces is reached)"
                } else if errno == Errno::EPERM {
                    " (user namespaces may be disabled for unprivileged users)"
                } else {
                    ""
                };
                return Error::Unsupported {
                    what: "cannot create a user namespace".into(),
                    why: format!("{errno}{hint}"),
                };
            }
            Stage::Setgroups => "cannot drop supplementary groups in the namespace".to_string(),
            Stage::Setresgid => {
                format!(
                    "cannot become gid {} in the namespace",
                    self.gid.unwrap_or(0)
                )
            }
            Stage::Setresuid => {
                format!(
                    "cannot become uid {} in the namespace",
                    self.uid.unwrap_or(0)
                )
            }
            Stage::Prepare | Stage::Ready => "cannot prepare the command".to_string(),
            Stage::Rootfs => format!("cannot enter the rootfs {}", rootfs()),
            Stage::MountSlave => "cannot make the mounts of the new mount namespace slaves".into(),
            Stage::MountProc => format!("cannot mount a fresh /proc on {}/proc", rootfs()),
            Stage::MountDev => format!("cannot mount a minimal /dev on {}/dev", rootfs()),
            Stage::Bind => format!("cannot bind {} onto itself", rootfs()),
            Stage::PivotRoot => format!("cannot pivot_root into {}", rootfs()),
            Stage::Terminal => format!("cannot open a terminal for the command in {}", rootfs()),
            Stage::Session => "cannot give the command a session of its own".to_string(),
            Stage::Exec => {
                return Error::Exec {
                    program: self.program.clone().unwrap_or_default(),
                    errno,
                }
            }
        };
        Error::sys(what, errno)
    }
}
