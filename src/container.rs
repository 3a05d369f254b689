//! An LXC container named on the command line (`--container NAME [-P DIR]`): its config, its
//! rootfs directory and the view its rootfs is kept in, resolved once for every command.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::idmap::lxc::LxcConfig;
use crate::idmap::IdMap;
use crate::shift::View;

/// A container under an lxcpath.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub lxcpath: PathBuf,
    pub config: LxcConfig,
    /// From `lxc.rootfs.path` (`dir:` or a plain path), else `LXCPATH/NAME/rootfs`; other
    /// storage backends are refused by name.
    pub rootfs: PathBuf,
}

impl Container {
    /// Reads container `name`'s config under `lxcpath` and resolves its rootfs directory (which
    /// need not exist: callers that open it say so).
    pub fn open(lxcpath: &Path, name: &str) -> Result<Container> {
        Container::with_config(lxcpath, name, LxcConfig::for_container(lxcpath, name)?)
    }

    /// The container whose config (`LXCPATH/NAME/config`) is already read.
    pub fn with_config(lxcpath: &Path, name: &str, config: LxcConfig) -> Result<Container> {
        let rootfs = rootfs_dir(&config, lxcpath, name)?;
        Ok(Container {
            name: name.to_string(),
            lxcpath: lxcpath.to_path_buf(),
            config,
            rootfs,
        })
    }

    /// `LXCPATH/NAME`.
    pub fn dir(&self) -> PathBuf {
        self.lxcpath.join(&self.name)
    }

    /// The view the container's files are in on disk: its map, or the host view for a
    /// privileged container (no `lxc.idmap` lines).
    pub fn view(&self) -> Result<View> {
        if self.config.idmap.is_empty() {
            Ok(View::Host)
        } else {
            self.config.map().map(View::Map)
        }
    }

    /// The view its rootfs is kept in on disk: the host view when LXC idmaps it
    /// (`lxc.rootfs.options = idmap=container`), else [`view`](Self::view).
    pub fn rootfs_view(&self) -> Result<View> {
        if self.config.rootfs_idmapped() {
            Ok(View::Host)
        } else {
            self.view()
        }
    }

    /// The container's map; a privileged container has none (an error naming its config).
    pub fn map(&self) -> Result<IdMap> {
        self.config.map()
    }

    /// For [`crate::inuse::in_use`] and the refusal of a running container.
    pub fn in_use_key(&self) -> (&Path, &str) {
        (&self.lxcpath, &self.name)
    }
}

/// Whether a rootfs is in the view `expected`: the recorded view decides when there is one,
/// else the owner of its root (`root`: uid, gid) must be the host id of container root (0 for
/// the host view); `None` while a shift is pending.
pub fn agrees(
    expected: &View,
    recorded: Option<&View>,
    pending: bool,
    root: (u32, u32),
) -> Option<bool> {
    use crate::idmap::IdKind;
    if pending {
        return None;
    }
    if let Some(recorded) = recorded {
        return Some(recorded == expected);
    }
    let host_root = |kind| match expected {
        View::Host => Some(0),
        View::Map(m) => m.to_host(kind, 0),
    };
    Some(host_root(IdKind::Uid) == Some(root.0) && host_root(IdKind::Gid) == Some(root.1))
}

/// The container names under `lxcpath`, sorted: every directory with a `config`.
pub fn names(lxcpath: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(lxcpath) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(lxcpath, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// `lxc.rootfs.path` (`dir:` prefix or a plain path), else LXC's default `LXCPATH/NAME/rootfs`;
/// other storage backends are refused.
fn rootfs_dir(config: &LxcConfig, lxcpath: &Path, name: &str) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let Some(value) = &config.rootfs else {
        return Ok(lxcpath.join(name).join("rootfs"));
    };
    let bytes = value.as_bytes();
    let path = match bytes.iter().position(|&b| b == b':') {
        Some(i) if &bytes[..i] == b"dir" => &bytes[i + 1..],
        Some(i) if !bytes.starts_with(b"/") => {
            return Err(Error::Usage(format!(
                "container '{name}': rootfs '{}' uses the {} backend; idshift handles \
                 directory rootfses (dir:) only",
                value.to_string_lossy(),
                String::from_utf8_lossy(&bytes[..i])
            )))
        }
        _ => bytes,
    };
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootfs_path_forms() {
        let cfg = |v: Option<&str>| LxcConfig {
            path: "c1/config".into(),
            idmap: vec![],
            idmap_in_includes: false,
            rootfs: v.map(Into::into),
            mount_entries: vec![],
            rootfs_options: vec![],
        };
        let p = Path::new("/l");
        assert_eq!(
            rootfs_dir(&cfg(Some("dir:/a/rootfs")), p, "c1").unwrap(),
            Path::new("/a/rootfs")
        );
        assert_eq!(
            rootfs_dir(&cfg(Some("/a/rootfs")), p, "c1").unwrap(),
            Path::new("/a/rootfs")
        );
        assert_eq!(
            rootfs_dir(&cfg(None), p, "c1").unwrap(),
            Path::new("/l/c1/rootfs")
        );
        let err = rootfs_dir(&cfg(Some("btrfs:/a")), p, "c1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("btrfs backend"), "{err}");
    }
}
