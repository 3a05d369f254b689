//! What `idshift exec` runs and how ([`ExecSpec`]), checked before anything starts.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::idmap::{IdKind, IdMap};

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
    /// in this directory, `pivot_root` into it, a terminal of its own, and a clean environment.
    pub rootfs: Option<PathBuf>,
    /// `--env`: variables added to the clean environment of `--rootfs`.
    pub env: Vec<EnvSetting>,
}

/// `--env NAME=VALUE` (set) or `--env NAME` (the caller's value, if it has one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvSetting {
    pub name: String,
    pub value: Option<String>,
}

impl std::str::FromStr for EnvSetting {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (s, None),
        };
        if name.is_empty() || s.contains('\0') {
            return Err(format!("'{s}': expected NAME or NAME=VALUE"));
        }
        Ok(EnvSetting {
            name: name.to_string(),
            value,
        })
    }
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
        super::check_writable(&self.map)?;
        if let Some(dir) = &self.rootfs {
            for kind in IdKind::BOTH {
                if self.map.to_host(kind, 0).is_none() {
                    return Err(Error::Usage(format!(
                        "--rootfs {}: the map must map {} 0 (container root), and '{}' does not",
                        crate::report::escape_path(dir),
                        kind.name(),
                        self.map
                    )));
                }
            }
        }
        for (kind, id) in [(IdKind::Uid, self.uid), (IdKind::Gid, self.gid)] {
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
