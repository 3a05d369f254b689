//! `idshift mount` and `idshift umount`: an idmapped bind mount shows a tree through a map
//! without changing a byte on disk (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)` +
//! `move_mount`, Linux ≥ 5.12, per filesystem).

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::idmap::IdMap;
use crate::sys;
use crate::userns::{self, Mapper};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u64,
    pub parent: u64,
    pub mount_point: PathBuf,
    /// The per-mount options (`rw,noatime,idmapped`).
    pub options: String,
    pub fs_type: String,
}

impl MountInfo {
    pub fn is_idmapped(&self) -> bool {
        self.options.split(',').any(|o| o == "idmapped")
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parses the text of `/proc/PID/mountinfo` (see proc_pid_mountinfo(5)); lines it cannot read
/// are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let fs_type = right.split(' ').next()?;
            Some(MountInfo {
                id: f.first()?.parse().ok()?,
                parent: f.get(1)?.parse().ok()?,
                mount_point: unescape(f.get(4)?),
                options: f.get(5)?.to_string(),
                fs_type: fs_type.to_string(),
            })
        })
        .collect()
}

fn mountinfo() -> Result<Vec<MountInfo>> {
    let path = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(parse_mountinfo(&text))
}

/// The mount `path` is on, by the mount id `statx` reports.
fn mount_of(path: &Path, mounts: &[MountInfo]) -> Result<MountInfo> {
    let c = cstring(path)?;
    let fd = sys::fs::open_dir(None, &c).map_err(|e| Error::sys(path.display().to_string(), e))?;
    let st =
        sys::fs::statx(fd.as_fd(), None).map_err(|e| Error::sys(path.display().to_string(), e))?;
    mounts
        .iter()
        .find(|m| m.id == st.mnt_id)
        .cloned()
        .ok_or_else(|| {
            Error::Failed(format!(
                "{}: its mount is not in /proc/self/mountinfo",
                path.display()
            ))
        })
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Usage(format!("{}: the path contains a NUL byte", path.display())))
}

fn require_root(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "{what} needs root: idmapped mounts need CAP_SYS_ADMIN in the initial user namespace \
             (without root, use `idshift exec` or `idshift shift`)"
        )))
    }
}

/// Shows `src` at `dst` through `map` (on-disk id → id shown): an idmapped bind mount.
pub fn mount(map: &IdMap, src: &Path, dst: &Path, recursive: bool) -> Result<()> {
    require_root("idshift mount")?;
    if map.is_empty() {
        return Err(Error::Usage("the map is empty".into()));
    }
    for (path, what) in [(src, "SRC"), (dst, "DST")] {
        let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_dir() {
            return Err(Error::Usage(format!(
                "{}: {what} must be a directory (not a symlink)",
                path.display()
            )));
        }
    }
    let tree = sys::mount::open_tree_clone(&cstring(src)?, recursive)
        .map_err(|e| Error::sys(format!("{}: cannot clone the mount", src.display()), e))?;
    let userns = userns::namespace_fd(map, &Mapper::default())?;
    if let Err(errno) = sys::mount::set_idmap(tree.as_fd(), userns.as_fd(), recursive) {
        return Err(refusal(src, recursive, errno));
    }
    sys::mount::attach(tree.as_fd(), &cstring(dst)?).map_err(|e| {
        Error::sys(
            format!("{}: cannot attach the idmapped mount", dst.display()),
            e,
        )
    })
}

/// Why the kernel refused to idmap `src`, naming the filesystem types involved.
fn refusal(src: &Path, recursive: bool, errno: Errno) -> Error {
    let mounts = mountinfo().unwrap_or_default();
    let mut types = match mount_of(src, &mounts) {
        Ok(m) => vec![m.fs_type],
        Err(_) => vec![],
    };
    if recursive {
        if let Ok(root) = src.canonicalize() {
            for m in &mounts {
                if m.mount_point.starts_with(&root) && !types.contains(&m.fs_type) {
                    types.push(m.fs_type.clone());
                }
            }
        }
    }
    let types = if types.is_empty() {
        "unknown".to_string()
    } else {
        types.join(", ")
    };
    match errno {
        Errno::EINVAL | Errno::EPERM | Errno::EOPNOTSUPP => Error::Failed(format!(
            "{}: the kernel does not support idmapped mounts on this filesystem ({types}): {errno}",
            src.display()
        )),
        _ => Error::sys(
            format!("{}: cannot idmap the mount ({types})", src.display()),
            errno,
        ),
    }
}

/// Removes an idmapped mount made by [`mount`] (with the mounts below it); refuses anything else.
pub fn umount(dst: &Path) -> Result<()> {
    require_root("idshift umount")?;
    let target = dst.canonicalize().map_err(|e| Error::io(dst, e))?;
    let mounts = mountinfo()?;
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == target) else {
        return Err(Error::Usage(format!(
            "{}: not a mount point",
            dst.display()
        )));
    };
    if !m.is_idmapped() {
        return Err(Error::Usage(format!(
            "{}: not an idmapped mount ({} mounted {}); use umount(8)",
            dst.display(),
            m.fs_type,
            m.options
        )));
    }
    sys::mount::detach(&cstring(&target)?)
        .map_err(|e| Error::sys(format!("{}: cannot unmount", dst.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    98 22 8:1 /srv/a /mnt/with\\040space rw,relatime,idmapped shared:1 master:2 - ext4 /dev/sda1 rw\n\
                    garbage line\n\
                    99 22 0:50 / /dev/shm rw,nosuid - tmpfs tmpfs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, Path::new("/"));
        assert!(!m[0].is_idmapped());
        assert_eq!(m[1].id, 98);
        assert_eq!(m[1].parent, 22);
        assert_eq!(m[1].mount_point, Path::new("/mnt/with space"));
        assert!(m[1].is_idmapped());
        assert_eq!(m[2].fs_type, "tmpfs");
    }

    #[test]
    fn unescapes_only_octal_triples() {
        assert_eq!(unescape("a\\134b"), Path::new("a\\b"));
        assert_eq!(unescape("a\\9b"), Path::new("a\\9b"));
        assert_eq!(unescape("end\\04"), Path::new("end\\04"));
    }
}
