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
use crate::report::escape_path;
use crate::shift::View;

/// What root is about to act on.
#[derive(Default)]
pub struct Subject<'a> {
    /// What the action is, for messages ("container 'c1'", "SRC").
    pub what: String,
    /// The files and directories whose owner says who controls the subject: the config, the
    /// container directory and the lxcpath (whose owner decides what root is asked to do), or,
    /// with no config, the tree itself (`exec --rootfs DIR -m …`, a mount's SRC and DST).
    pub owners: Vec<&'a Path>,
    /// The paths that must not pass through a symlink the controlling user controls.
    pub paths: Vec<&'a Path>,
    /// The rootfs and the `LXCPATH/NAME` directory it must lie in.
    pub rootfs_within: Option<(&'a Path, PathBuf)>,
    /// The maps root would apply, each named ("FROM", "TO", "the container's").
    pub maps: Vec<(&'static str, &'a IdMap)>,
}

/// The maps of a FROM and a TO view, named so, for [`Subject::maps`]: the host view maps
/// nothing and has nothing to check.
pub fn view_maps<'a>(from: &'a View, to: &'a View) -> Vec<(&'static str, &'a IdMap)> {
    [("FROM", from), ("TO", to)]
        .into_iter()
        .filter_map(|(which, v)| match v {
            View::Map(m) => Some((which, m)),
            View::Host => None,
        })
        .collect()
}

/// Who controls an id that owns a file: the account with that uid, or else the account whose
/// delegated range (/etc/subuid) holds it — a rootfs owned by 200000 is the user's whose range
/// that is, and so is a directory a user gave to one of their ids. `None` for root (uid 0, or an
/// id delegated to root); an id that no account has nor is delegated is its own controller,
/// with nothing delegated to it.
fn account_of(uid: u32, files: &SubIdFiles) -> Option<User> {
    if uid == 0 {
        return None;
    }
    if let Ok(Some(u)) = nix::unistd::User::from_uid(uid.into()) {
        return Some(User { name: u.name, uid });
    }
    let parsed = crate::idmap::subid::read(files.path(IdKind::Uid)).unwrap_or_default();
    let owner = parsed
        .lines
        .iter()
        .find(|l| l.range.contains(uid))
        .map(|l| match &l.owner {
            crate::idmap::subid::Owner::Name(name) => User::lookup(name),
            crate::idmap::subid::Owner::Uid(n) => User::lookup(&n.to_string()),
        });
    match owner {
        Some(Ok(user)) if user.uid == 0 => None,
        Some(Ok(user)) => Some(user),
        _ => Some(User {
            name: format!("uid {uid}"),
            uid,
        }),
    }
}

/// The first account other than root that controls one of `paths`, if any.
fn controller(paths: &[&Path], files: &SubIdFiles) -> Option<User> {
    paths
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .find_map(|m| account_of(m.uid(), files))
}

/// A symlink on the way to `path` whose owner, or its directory's owner, `theirs` accepts.
fn controlled_symlink_by(path: &Path, theirs: &dyn Fn(u32) -> bool) -> Option<PathBuf> {
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
        if m.file_type().is_symlink() && (theirs(m.uid()) || parent_owner.is_some_and(theirs)) {
            return Some(at);
        }
    }
    None
}

/// Why root should not act on `s`, one reason a line: empty when it may.
pub fn reasons(s: &Subject, user: &User, files: &SubIdFiles) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let uid = user.uid;
    for kind in IdKind::BOTH {
        let delegated = files.delegated(kind, user)?;
        for (which, map) in &s.maps {
            for e in map.entries(kind) {
                let r = e.host_range();
                if r.contains(0) {
                    out.push(format!(
                        "{which} map '{map}' maps container {} {} onto host {} 0",
                        kind.name(),
                        e.ns_start(),
                        kind.name()
                    ));
                } else if !delegated.iter().any(|d| d.covers(r)) {
                    out.push(format!(
                        "{which} map '{map}' names host {}s {r}, not delegated to {} in {}",
                        kind.name(),
                        user.name,
                        escape_path(files.path(kind))
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
                escape_path(&real),
                escape_path(&base)
            ));
        }
    }
    // A symlink on the way that belongs to the user or to one of the ids they control.
    let theirs = |id: u32| id == uid || account_of(id, files).is_some_and(|a| a.uid == uid);
    for p in &s.paths {
        if let Some(link) = controlled_symlink_by(p, &theirs) {
            out.push(format!(
                "{} is reached through {}, a symlink {} controls",
                escape_path(p),
                escape_path(&link),
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
    let files = SubIdFiles::default();
    let Some(user) = controller(&s.owners, &files) else {
        return Ok(());
    };
    let why = reasons(s, &user, &files)?;
    if why.is_empty() {
        return Ok(());
    }
    let owner = format!("{} (uid {})", user.name, user.uid);
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
        SubIdFiles::new(u, g)
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
        let u = User {
            name: "4242".into(),
            uid: 4242,
        };
        assert!(reasons(&s(&ok), &u, &f).unwrap().is_empty());
        let r = reasons(&s(&root), &u, &f).unwrap();
        assert!(r[0].contains("onto host uid 0"), "{r:?}");
        let r = reasons(&s(&other), &u, &f).unwrap();
        assert!(r[0].contains("not delegated"), "{r:?}");
    }

    #[test]
    fn an_id_belongs_to_its_account_or_to_whom_it_is_delegated() {
        let tmp = tempfile::tempdir().unwrap();
        let f = files(tmp.path(), "root:100000:65536\n424242:200000:65536\n");
        assert!(account_of(0, &f).is_none());
        assert!(account_of(100005, &f).is_none(), "root's own range");
        // An id of a delegated range belongs to the range's owner (here a bare uid).
        let a = account_of(200005, &f).unwrap_or_else(|| panic!("no controller"));
        assert_eq!(a.uid, 424242);
        let unknown = account_of(999999, &f).unwrap();
        assert_eq!((unknown.uid, unknown.name.as_str()), (999999, "uid 999999"));
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap();
        if me.uid.as_raw() != 0 {
            assert_eq!(account_of(me.uid.as_raw(), &f).unwrap().name, me.name);
        }
    }

    #[test]
    fn rootfs_outside_its_container_and_symlinks_of_the_user() {
        let tmp = tempfile::tempdir().unwrap();
        let f = files(tmp.path(), "");
        let c = tmp.path().join("lxc/c1");
        let rootfs = c.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let inside = Subject {
            rootfs_within: Some((&rootfs, c.clone())),
            ..Subject::default()
        };
        let nobody = User {
            name: "x".into(),
            uid: 4243,
        };
        assert!(reasons(&inside, &nobody, &f).unwrap().is_empty());
        let etc = Path::new("/etc");
        let outside = Subject {
            rootfs_within: Some((etc, c.clone())),
            ..Subject::default()
        };
        assert!(reasons(&outside, &nobody, &f).unwrap()[0].contains("outside"));
        // A symlink in a directory uid 0 (the test's own) owns: "controlled" by uid 0 here.
        std::os::unix::fs::symlink("/etc", c.join("link")).unwrap();
        let via = c.join("link/passwd");
        let linked = Subject {
            paths: vec![&via],
            ..Subject::default()
        };
        let me = User {
            name: "me".into(),
            uid: nix::unistd::geteuid().as_raw(),
        };
        assert!(reasons(&linked, &me, &f).unwrap()[0].contains("a symlink"));
    }
}
