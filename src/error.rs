//! The library's one error type, and the exit statuses it leads to.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::idmap::MapError;

/// Everything that can go wrong, with enough context to name the thing and the reason.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed or overlapping map.
    #[error(transparent)]
    Map(#[from] MapError),
    /// A malformed line in a file (`/etc/subuid`, an LXC config).
    #[error("{}:{line}: {reason}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A file that could not be read or written.
    #[error("{}: {source}", path.display())]
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
    /// Anything else that stopped the run, already phrased for the user.
    #[error("{0}")]
    Failed(String),
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
