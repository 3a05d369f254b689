//! `idshift mount` and `idshift umount`: an idmapped bind mount shows a tree through a map
//! without changing a byte on disk (`open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)` +
//! `move_mount`, Linux ≥ 5.12, per filesystem).

use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::idmap::{IdKind, IdMap};
use crate::report::escape_path;
use crate::sys;
pub use crate::sys::mount::Setuid;
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
    let fd = sys::fs::open_dir(None, &c).map_err(|e| Error::sys(escape_path(path), e))?;
    let st = sys::fs::statx(fd.as_fd(), None).map_err(|e| Error::sys(escape_path(path), e))?;
    mounts
        .iter()
        .find(|m| m.id == st.mnt_id)
        .cloned()
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            reason: "its mount is not in /proc/self/mountinfo".into(),
        })
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::Usage(format!(
            "{}: the path contains a NUL byte",
            escape_path(path)
        ))
    })
}

fn require_root(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NeedsRoot {
            what: what.to_string(),
            why: "idmapped mounts need CAP_SYS_ADMIN in the initial user namespace (without \
                  root, use `idshift exec` or `idshift shift`)",
        })
    }
}

/// How to make an idmapped mount.
#[derive(Clone, Copy, Debug)]
pub struct MountOptions {
    /// Also the filesystems mounted below SRC (`AT_RECURSIVE`).
    pub recursive: bool,
    /// `nosuid` (the default) or not; `nodev` always.
    pub setuid: Setuid,
}

/// Shows `src` at `dst` through `map` (on-disk id → id shown): an idmapped bind mount, `nodev`
/// and, unless asked otherwise, `nosuid`. Records it under [`RECORDS`] so that `umount` knows
/// it is idshift's. Returns warnings for the command layer to print.
pub fn mount(map: &IdMap, src: &Path, dst: &Path, opts: MountOptions) -> Result<Vec<String>> {
    require_root("idshift mount")?;
    if map.is_empty() {
        return Err(Error::Usage("the map is empty".into()));
    }
    // The kernel refuses a namespace without both maps with EINVAL, which reads as the
    // filesystem's fault; name the missing half instead.
    for kind in IdKind::BOTH {
        if !map.has(kind) {
            return Err(Error::Usage(format!(
                "the map '{map}' has no {} entries: an idmapped mount needs both a uid and a \
                 gid map (add {}:… entries, or give b:… for both)",
                kind.name(),
                kind.letter()
            )));
        }
    }
    for (path, what) in [(src, "SRC"), (dst, "DST")] {
        let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_dir() {
            return Err(Error::Usage(format!(
                "{}: {what} must be a directory (not a symlink)",
                escape_path(path)
            )));
        }
    }
    // DST is held from here on as the directory it is now (no symlink on the way): nothing
    // swapped in while the namespace is made can move the mount elsewhere.
    let dst_real = dst.canonicalize().map_err(|e| Error::io(dst, e))?;
    let target = sys::fs::open_dir_no_symlinks(&cstring(&dst_real)?).map_err(|e| {
        Error::sys(
            format!("{}: changed while it was checked", escape_path(dst)),
            e,
        )
    })?;
    let tree = sys::mount::open_tree_clone(&cstring(src)?, opts.recursive)
        .map_err(|e| Error::sys(format!("{}: cannot clone the mount", escape_path(src)), e))?;
    let userns = userns::namespace_fd(map, &Mapper::default())?;
    if let Err(errno) =
        sys::mount::set_idmap(tree.as_fd(), userns.as_fd(), opts.recursive, opts.setuid)
    {
        return Err(refusal(src, opts.recursive, errno));
    }
    let dst_c = cstring(&dst_real)?;
    sys::mount::attach_to(tree.as_fd(), target.as_fd()).map_err(|e| {
        Error::sys(
            format!("{}: cannot attach the idmapped mount", escape_path(dst)),
            e,
        )
    })?;
    // The tree fd now is the root of the attached mount. An unrecorded mount is one `umount`
    // would refuse: take it down again rather than leave it.
    if let Err(err) = sys::mount::mount_id(tree.as_fd())
        .map_err(|e| Error::sys(format!("{}: statx", escape_path(dst)), e))
        .and_then(|id| Record::new(id, src, dst, map).write())
    {
        let _ = sys::mount::detach(&dst_c);
        return Err(err);
    }
    Ok(root_warning(map, dst, opts.setuid).into_iter().collect())
}

/// The warning for a map that shows some on-disk id as uid or gid 0: setuid files that
/// container root planted (owned by its host id on disk) appear setuid *root* at DST.
fn root_warning(map: &IdMap, dst: &Path, setuid: Setuid) -> Option<String> {
    let shown_as_root: Vec<String> = IdKind::BOTH
        .into_iter()
        .filter_map(|kind| {
            map.to_ns(kind, 0)
                .map(|disk| format!("on-disk {} {disk} as {} 0", kind.name(), kind.name()))
        })
        .collect();
    if shown_as_root.is_empty() {
        return None;
    }
    let what = shown_as_root.join(" and ");
    Some(match setuid {
        Setuid::Ignored => format!(
            "the map shows {what}: setuid files owned by container root appear setuid root at {}; \
             it is mounted nosuid, so they run without privilege (--suid would honour them)",
            escape_path(dst)
        ),
        Setuid::Honoured => format!(
            "the map shows {what}: setuid files owned by container root appear setuid root at {}, \
             and --suid honours them: anyone who can reach them runs them as host root",
            escape_path(dst)
        ),
    })
}

/// Where `mount` records each idmapped mount it makes, so that `umount` removes only those.
///
/// A marker in the mount itself cannot work: an idmapped mount carries no name or tag, and
/// any flag idshift sets (nosuid, nodev, the idmap) LXC, Incus and systemd-nspawn set too. So
/// the record lives beside it: a root-only directory on the `/run` tmpfs (gone at reboot, as
/// the mounts are), one file per mount, named by the mount's id and holding the device and
/// inode of the directory it shows. The id is the 64-bit one the kernel never reuses before
/// reboot (`STATX_MNT_ID_UNIQUE`, Linux ≥ 6.8), so a stale record (a mount removed with
/// umount(8)) can never match another mount; on older kernels it is the reusable id, and the
/// root's (device, inode) must match as well.
pub const RECORDS: &str = "/run/idshift/mounts";

/// One record: what [`mount`] made.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    id: sys::mount::MountId,
    text: String,
}

impl Record {
    fn new(id: sys::mount::MountId, src: &Path, dst: &Path, map: &IdMap) -> Record {
        Record {
            id,
            text: format!(
                "root {}:{}\nsrc {}\ndst {}\nmap {map}\n",
                id.dev,
                id.ino,
                escape_path(src),
                escape_path(dst)
            ),
        }
    }

    /// The file of the mount `id`.
    fn path(id: sys::mount::MountId) -> PathBuf {
        let kind = if id.unique { "u" } else { "m" };
        Path::new(RECORDS).join(format!("{kind}{}", id.id))
    }

    fn write(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(RECORDS)
            .map_err(|e| Error::io(RECORDS, e))?;
        let path = Record::path(self.id);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &self.text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Whether the mount `id` is one idshift recorded (same id, same root inode).
    fn exists_for(id: sys::mount::MountId) -> bool {
        let want = format!("root {}:{}\n", id.dev, id.ino);
        std::fs::read_to_string(Record::path(id)).is_ok_and(|text| text.starts_with(&want))
    }

    fn remove(id: sys::mount::MountId) {
        let _ = std::fs::remove_file(Record::path(id));
    }
}

/// Whether `dir` can be shown through an idmapped mount with `map`: the mount is made and
/// dropped without being attached anywhere (what LXC's `idmap=container` will need).
pub fn probe(map: &IdMap, dir: &Path) -> Result<()> {
    require_root("an idmapped mount")?;
    let tree = sys::mount::open_tree_clone(&cstring(dir)?, false)
        .map_err(|e| Error::sys(format!("{}: cannot clone the mount", escape_path(dir)), e))?;
    let userns = userns::namespace_fd(map, &Mapper::default())?;
    sys::mount::set_idmap(tree.as_fd(), userns.as_fd(), false, Setuid::Ignored)
        .map_err(|errno| refusal(dir, false, errno))
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
        Errno::EINVAL | Errno::EPERM | Errno::EOPNOTSUPP => Error::Unsupported {
            what: escape_path(src),
            why: format!(
                "the kernel does not support idmapped mounts on this filesystem ({types}): {errno}"
            ),
        },
        _ => Error::sys(
            format!("{}: cannot idmap the mount ({types})", escape_path(src)),
            errno,
        ),
    }
}

/// Whether `umount` checks that idshift made the mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Only mounts recorded by [`mount`] (others: [`Error::Refused`]).
    Checked,
    /// `--force`: any idmapped mount.
    Forced,
}

/// Removes an idmapped mount made by [`mount`] (with the mounts below it). Not a mount point,
/// or not idmapped: a usage error. Idmapped but not recorded by `mount` (LXC's, Incus's,
/// nspawn's): refused unless `Ownership::Forced`.
pub fn umount(dst: &Path, ownership: Ownership) -> Result<()> {
    require_root("idshift umount")?;
    let target = dst.canonicalize().map_err(|e| Error::io(dst, e))?;
    let mounts = mountinfo()?;
    let Some(m) = mounts.iter().rev().find(|m| m.mount_point == target) else {
        return Err(Error::Usage(format!(
            "{}: not a mount point",
            escape_path(dst)
        )));
    };
    if !m.is_idmapped() {
        return Err(Error::Usage(format!(
            "{}: not an idmapped mount ({} mounted {}); use umount(8)",
            escape_path(dst),
            m.fs_type,
            m.options
        )));
    }
    let target_c = cstring(&target)?;
    // The mount on top at DST: the root of the mount that `umount2` detaches.
    let root = sys::fs::open_dir(None, &target_c).map_err(|e| Error::sys(escape_path(dst), e))?;
    let id = sys::mount::mount_id(root.as_fd())
        .map_err(|e| Error::sys(format!("{}: statx", escape_path(dst)), e))?;
    drop(root);
    if ownership == Ownership::Checked && !Record::exists_for(id) {
        return Err(Error::Refused(format!(
            "{}: an idmapped mount that idshift did not make (no record in {RECORDS}; LXC, \
             Incus or systemd-nspawn may own it); --force removes it anyway",
            escape_path(dst)
        )));
    }
    sys::mount::detach(&target_c)
        .map_err(|e| Error::sys(format!("{}: cannot unmount", escape_path(dst)), e))?;
    Record::remove(id);
    Ok(())
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
