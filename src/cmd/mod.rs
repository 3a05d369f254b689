//! The application layer: one file per subcommand, each turning clap's arguments ([`crate::cli`])
//! into domain values once and calling its engine. This module dispatches, prints errors as one
//! line through [`crate::report`], and maps them to the exit statuses of [`exit`].

mod completions;
mod demo;
mod exec;
mod interrupt;
mod list;
mod man;
mod migrate;
mod mount;
mod ranges;
mod shift;
mod status;

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::{Error, Result};
use crate::idmap::subid::{SubIdFiles, User};
use crate::inuse;
use crate::report::{self, escape_path};

/// Exit statuses of idshift itself.
pub mod exit {
    /// Done, except the listed failures; or a failure of the system.
    pub const FAILED: u8 = 1;
    /// A usage error: bad arguments, a malformed map, an unknown container; or idshift was
    /// started setuid/setgid, which it refuses before reading its arguments.
    pub const USAGE: u8 = 2;
    /// Refused: the tree is in use, another shift is pending, another map is recorded,
    /// outliers under `--strict`, or root acting beyond what a user's config may ask.
    pub const REFUSED: u8 = 3;
    /// `exec`: idshift failed and the command did not run.
    pub const EXEC_FAILED: u8 = 125;
    /// `exec`: the command was found but could not be executed.
    pub const EXEC_CANNOT_RUN: u8 = 126;
    /// `exec`: the command was not found.
    pub const EXEC_NOT_FOUND: u8 = 127;
}

/// Why idshift refuses to run at all: it was started setuid or setgid (real and effective ids
/// differ). Installed that way it would give any user a namespace that maps host root; the
/// system's newuidmap/newgidmap are the only privileged helpers, and they apply /etc/subuid.
pub fn setuid_refusal() -> Option<String> {
    use nix::unistd::{getegid, geteuid, getgid, getuid};
    let (uid, euid, gid, egid) = (getuid(), geteuid(), getgid(), getegid());
    (uid != euid || gid != egid).then(|| {
        format!(
            "refusing to run setuid/setgid (uid {uid}, euid {euid}, gid {gid}, egid {egid}): \
             the privilege boundary is newuidmap/newgidmap"
        )
    })
}

/// Runs a parsed command line and returns the process exit status.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Shift(args) => status_of(shift::run(args)),
        Command::Migrate(args) => status_of(migrate::run(args)),
        Command::Status(args) => status_of(status::run(args).map(|()| 0)),
        Command::List(args) => status_of(list::run(args).map(|()| 0)),
        Command::Ranges(args) => status_of(ranges::run(args).map(|()| 0)),
        Command::Mount(args) => status_of(mount::run(args).map(|()| 0)),
        Command::Umount { dst, force } => status_of(mount::umount(&dst, force).map(|()| 0)),
        Command::Completions { shell } => status_of(completions::run(shell).map(|()| 0)),
        Command::Man { out_dir } => status_of(man::run(out_dir.as_deref()).map(|()| 0)),
        Command::Demo(args) => status_of(demo::run(args.keep).map(|()| 0)),
        Command::Exec(args) => exec::run(args),
    }
}

/// The exit status of an error outside `exec`.
pub(crate) fn error_status(err: &Error) -> u8 {
    match err {
        Error::Refused(_) => exit::REFUSED,
        e if e.is_usage() => exit::USAGE,
        _ => exit::FAILED,
    }
}

/// Prints an error as one line and returns its exit status.
fn status_of(result: Result<u8>) -> ExitCode {
    ExitCode::from(result.unwrap_or_else(|err| {
        report::err_line(&line_of(&err));
        error_status(&err)
    }))
}

/// The one line an error is told in: a permission a caller without root was refused says that
/// root may have it (the usual cause: `sudo` forgotten on root's containers).
fn line_of(err: &Error) -> String {
    use nix::errno::Errno;
    let uid = nix::unistd::geteuid();
    match err.errno() {
        Some(Errno::EACCES | Errno::EPERM)
            if !uid.is_root() && !matches!(err, Error::Exec { .. }) =>
        {
            format!("{err} (you are uid {uid}, not root: if this is root's, run it with sudo)")
        }
        _ => err.to_string(),
    }
}

/// Prints a warning line.
fn warn(text: &str) {
    report::err_line(&format!("warning: {text}"));
}

/// Warns of the malformed lines of other users that reading the subid files for `user` skipped
/// (engines return them; the commands that read the files print them, once).
fn warn_skipped(files: &SubIdFiles, user: &User) {
    for w in files.skipped(user) {
        warn(&w);
    }
}

/// Refuses (exit 3; under `exec`, 125) a tree that is in use, unless `force`, which says what
/// it overrides.
fn refuse_in_use(dir: &Path, container: Option<(&Path, &str)>, force: bool) -> Result<()> {
    let Some(why) = inuse::in_use(dir, container) else {
        return Ok(());
    };
    let dir = escape_path(dir);
    if force {
        warn(&format!(
            "--force: going ahead on {dir} although it is in use: {why}"
        ));
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{dir}: in use: {why}; stop what uses it first (or give --force)"
    )))
}

/// The number of threads asked for, else 8 per CPU (at least 4, at most 64).
///
/// A walk's threads mostly wait on the disk when the tree is not in the page cache (the usual
/// case for a rootfs shifted once): measured on 2 cores and a 200k-inode tree, one thread per
/// core took 1.3 s cold where 16 took 0.82 s (64: 0.82 s), while warm 16 cost ~2% more than 2.
fn threads(asked: Option<u16>) -> usize {
    asked.map(usize::from).unwrap_or_else(|| {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        (cores * 8).clamp(4, 64)
    })
}

/// The LXC path given, else LXC's default for the caller.
fn lxcpath_or_default(asked: &Option<std::path::PathBuf>) -> std::path::PathBuf {
    asked
        .clone()
        .unwrap_or_else(crate::idmap::lxc::default_lxcpath)
}
