//! The library's one error type, and the exit statuses it leads to.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::idmap::MapError;
use crate::report::escape_path;

/// Everything that can go wrong, with enough context to name the thing and the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed or overlapping map.
    #[error(transparent)]
    Map(#[from] MapError),
    /// A malformed line in a file (`/etc/subuid`, an LXC config).
    #[error("{}:{line}: {reason}", escape_path(path))]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A file that could not be read or written.
    #[error("{}: {source}", escape_path(path))]
    Io { path: PathBuf, source: io::Error },
    /// Input the user can fix: an unknown container, no map at all, an option that does not fit.
    #[error("{0}")]
    Usage(String),
    /// A system call that failed, with what it was doing.
    #[error("{what}: {errno}")]
    Sys { what: String, errno: Errno },
    /// `execvp` of the command failed: exit 127 when it was not found, 126 otherwise.
    #[error("cannot run '{program}': {errno}")]
    Exec { program: String, errno: Errno },
    /// The tree may not be shifted as asked: another shift is pending, it records another map,
    /// or `--strict` found outliers. Exit 3; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The journal beside a tree, or the tree's pending mark, could not be written: the shift
    /// did not begin.
    #[error(
        "{}: cannot {action} ({source}); nothing was changed",
        escape_path(path)
    )]
    Journal {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// The kernel or the filesystem cannot do what is asked.
    #[error("{what}: {why}")]
    Unsupported { what: String, why: String },
    /// Only root may do this.
    #[error("{what} needs root: {why}")]
    NeedsRoot { what: String, why: &'static str },
    /// A map idshift built from valid parts came out invalid (a range list that cannot be
    /// mapped as it is).
    #[error("{what}: {source}")]
    Derived { what: String, source: MapError },
    /// Data read from a file that its format does not allow.
    #[error("{}: {reason}", escape_path(path))]
    Corrupt { path: PathBuf, reason: String },
    /// A program that could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn { program: String, source: io::Error },
    /// A program that ran and failed.
    #[error("{program} failed: {status}{}", detail(.stderr))]
    Program {
        program: String,
        status: String,
        stderr: String,
    },
    /// The worker threads could not be started.
    #[error("cannot start {threads} threads: {reason}")]
    Threads { threads: usize, reason: String },
    /// A child process of idshift's own broke off or garbled its part of the set-up.
    #[error("the namespace child: {0}")]
    Child(String),
    /// newuidmap or newgidmap is not installed, and an unprivileged caller needs it.
    #[error(
        "{} not found: an unprivileged user needs it to map {kind}s (install the 'uidmap' package)",
        escape_path(program)
    )]
    HelperMissing {
        program: PathBuf,
        kind: &'static str,
    },
    /// newuidmap or newgidmap refused to write the map.
    #[error("{} refused the map ({status}){}", escape_path(program), detail(.message))]
    MapRefused {
        program: PathBuf,
        status: String,
        message: String,
    },
}

/// `: TEXT` for a program's last words on stderr, or nothing.
fn detail(stderr: &str) -> String {
    match stderr.trim() {
        "" => String::new(),
        text => format!(": {text}"),
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn sys(what: impl Into<String>, errno: Errno) -> Error {
        Error::Sys {
            what: what.into(),
            errno,
        }
    }

    /// The errno behind the error, where there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Io { source, .. } | Error::Journal { source, .. } => {
                source.raw_os_error().map(Errno::from_raw)
            }
            Error::Sys { errno, .. } | Error::Exec { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the user's input is at fault (exit 2) rather than the system (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Map(_) | Error::Syntax { .. } | Error::Usage(_))
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        match err {
            Error::Io { source, .. } => source,
            Error::Sys { errno, .. } => io::Error::from_raw_os_error(errno as i32),
            other => io::Error::other(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
