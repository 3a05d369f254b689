//! Root acting on something a user controls is not steered by it.
//!
//! When root runs `migrate`, `shift --from-container`, `exec --container --rootfs` or `mount` on
//! a container, config, lxcpath or tree that belongs to another user, what that user wrote (the
//! config's maps, its `lxc.rootfs.path`, symlinks in their directories) must not make root do
//! more than the user could do themselves. So root refuses (exit 3, naming the reason):
//! - a map covering host uid or gid 0 (the user's files would become root's);
//! - a map naming host ids not delegated to that user in /etc/subuid and /etc/subgid;
//! - a rootfs outside `LXCPATH/NAME`;
//! - a config or rootfs path with a symlink component the user controls.
//!
//! `--force` overrides, and says what it overrides. Callers other than root are bounded by
//! newuidmap/newgidmap and by the delegated user namespace already: nothing to check.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::idmap::subid::{SubIdFiles, User};
use crate::idmap::{IdKind, IdMap};

/// What root is about to act on.
#[derive(Default)]
pub struct Subject<'a> {
    /// What the action is, for messages ("container 'c1'", "SRC").
    pub what: String,
    /// The files and directories whose owner says who controls the subject (config, lxcpath,
    /// container directory, rootfs, mount source).
    pub paths: Vec<&'a Path>,
    /// The rootfs and the `LXCPATH/NAME` directory it must lie in.
    pub rootfs_within: Option<(&'a Path, PathBuf)>,
    /// The maps root would apply, each named ("FROM", "TO", "the container's").
    pub maps: Vec<(&'static str, &'a IdMap)>,
}

/// The first user other than root owning one of `paths`, if any. Only accounts count: a
/// rootfs owned by a container's subordinate id (100000) belongs to whoever owns its container.
fn controller(paths: &[&Path]) -> Option<u32> {
    paths
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| m.uid())
        .find(|&uid| uid != 0 && matches!(nix::unistd::User::from_uid(uid.into()), Ok(Some(_))))
}

/// A symlink on the way to `path` that `uid` controls: the link itself is theirs, or it lies
/// in a directory they own.
fn controlled_symlink(path: &Path, uid: u32) -> Option<PathBuf> {
    let mut at = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::CurDir => continue,
            Component::RootDir => {
                at.push("/");
                continue;
            }
            _ => {}
        }
        let parent_owner = std::fs::metadata(if at.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &at
        })
        .map(|m| m.uid())
        .ok();
        at.push(c);
        let Ok(m) = std::fs::symlink_metadata(&at) else {
            return None;
        };
        if m.file_type().is_symlink() && (m.uid() == uid || parent_owner == Some(uid)) {
            return Some(at);
        }
    }
    None
}

/// Why root should not act on `s`, one reason a line: empty when it may.
pub fn reasons(s: &Subject, uid: u32, files: &SubIdFiles) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let user = User::lookup(&uid.to_string()).unwrap_or(User {
        name: uid.to_string(),
        uid,
    });
    for kind in IdKind::BOTH {
        let delegated = files.ranges(kind, &user)?;
        for (which, map) in &s.maps {
            for e in map.entries(kind) {
                let r = e.host_range();
                if r.contains(0) {
                    out.push(format!(
                        "{which} map '{map}' maps container {} {} onto host {} 0",
                        kind.name(),
                        e.ns_start,
                        kind.name()
                    ));
                } else if !delegated
                    .iter()
                    .any(|d| d.start() <= r.start() && r.end() <= d.end())
                {
                    out.push(format!(
                        "{which} map '{map}' names host {}s {r}, not delegated to {} in {}",
                        kind.name(),
                        user.name,
                        files.path(kind).display()
                    ));
                }
            }
        }
    }
    if let Some((rootfs, within)) = &s.rootfs_within {
        let real = std::fs::canonicalize(rootfs).unwrap_or_else(|_| rootfs.to_path_buf());
        let base = std::fs::canonicalize(within).unwrap_or_else(|_| within.clone());
        if !real.starts_with(&base) {
            out.push(format!(
                "its rootfs {} lies outside {}",
                real.display(),
                base.display()
            ));
        }
    }
    for p in &s.paths {
        if let Some(link) = controlled_symlink(p, uid) {
            out.push(format!(
                "{} is reached through {}, a symlink {} controls",
                p.display(),
                link.display(),
                user.name
            ));
        }
    }
    out.dedup();
    Ok(out)
}

/// Refuses (exit 3) root acting on what another user controls beyond their delegation, unless
/// `force`, which says what it overrides (through `warn`).
pub fn check(s: &Subject, force: bool, warn: &dyn Fn(&str)) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let Some(uid) = controller(&s.paths) else {
        return Ok(());
    };
    let why = reasons(s, uid, &SubIdFiles::default())?;
    if why.is_empty() {
        return Ok(());
    }
    let owner = User::lookup(&uid.to_string())
        .map(|u| format!("{} (uid {uid})", u.name))
        .unwrap_or_else(|_| format!("uid {uid}"));
    let why = why.join("; ");
    if force {
        warn(&format!(
            "--force: acting as root on {}, which {owner} controls, although {why}",
            s.what
        ));
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{} belongs to {owner}, and {why}: root does not act on a user's behalf beyond what is \
         delegated to them; nothing was changed (--force overrides)",
        s.what
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, text: &str) -> SubIdFiles {
        let (u, g) = (dir.join("subuid"), dir.join("subgid"));
        std::fs::write(&u, text).unwrap();
        std::fs::write(&g, text).unwrap();
        SubIdFiles {
            subuid: u,
            subgid: g,
        }
    }

    #[test]
    fn maps_must_stay_within_the_users_delegation_and_off_host_root() {
        let tmp = tempfile::tempdir().unwrap();
        let f = files(tmp.path(), "4242:200000:65536\n");
        let ok = IdMap::parse_list("b:0:200000:65536").unwrap();
        let root = IdMap::parse_list("b:0:0:65536").unwrap();
        let other = IdMap::parse_list("b:0:1300000:65536").unwrap();
        let s = |m| Subject {
            maps: vec![("FROM", m)],
            ..Subject::default()
        };
        assert!(reasons(&s(&ok), 4242, &f).unwrap().is_empty());
        let r = reasons(&s(&root), 4242, &f).unwrap();
        assert!(r[0].contains("onto host uid 0"), "{r:?}");
        let r = reasons(&s(&other), 4242, &f).unwrap();
        assert!(r[0].contains("not delegated"), "{r:?}");
    }

    #[test]
    fn rootfs_outside_its_container_and_symlinks_of_the_user() {
        let tmp = tempfile::tempdir().unwrap();
        let f = files(tmp.path(), "");
        let c = tmp.path().join("lxc/c1");
        std::fs::create_dir_all(c.join("rootfs")).unwrap();
        let inside = Subject {
            rootfs_within: Some((&c.join("rootfs"), c.clone())),
            ..Subject::default()
        };
        assert!(reasons(&inside, 0, &f).unwrap().is_empty());
        let etc = Path::new("/etc");
        let outside = Subject {
            rootfs_within: Some((etc, c.clone())),
            ..Subject::default()
        };
        assert!(reasons(&outside, 0, &f).unwrap()[0].contains("outside"));
        // A symlink in a directory uid 0 (the test's own) owns: "controlled" by uid 0 here.
        std::os::unix::fs::symlink("/etc", c.join("link")).unwrap();
        let via = c.join("link/passwd");
        let linked = Subject {
            paths: vec![&via],
            ..Subject::default()
        };
        let me = nix::unistd::geteuid().as_raw();
        assert!(reasons(&linked, me, &f).unwrap()[0].contains("a symlink"));
    }
}
