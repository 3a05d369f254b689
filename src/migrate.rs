//! `idshift migrate NAME`: move a stopped LXC container to another id range — shift its rootfs
//! from the map in its config to the new one, then rewrite the config's `lxc.idmap` lines
//! atomically. Killed at any point, the same command finishes the job: the shift resumes from
//! its journal, and the config names the new map only once the rootfs records it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::idmap::lxc::{rewrite_idmap, with_rootfs_idmap, without_idmap, LxcConfig};
use crate::idmap::subid::{SubIdFiles, User};
use crate::idmap::{IdKind, IdMap, IdMapEntry, BLOCK};
use crate::report::escape_path;
use crate::shift::{self, state, View};

/// Where the container goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// Container root at this host id; every entry moves by the same offset.
    Base(u32),
    /// The first free 65536 block delegated to the caller (`idshift ranges`).
    Auto,
    /// This map.
    Map(IdMap),
    /// The host view: a privileged container (no `lxc.idmap` lines). Root only.
    Host,
}

/// A migration, resolved: what is shifted from and to, and which config is rewritten.
#[derive(Clone, Debug)]
pub struct Migration {
    pub name: String,
    pub config: LxcConfig,
    pub rootfs: PathBuf,
    /// The view the config names now: its map, or the host view for a privileged container.
    pub from: View,
    pub to: View,
    /// The view the rootfs is in now and the one it goes to: the config's, except for a
    /// container LXC mounts through an idmapped mount (`idmap=container`), whose rootfs stays
    /// in the host view.
    pub rootfs_from: View,
    pub rootfs_to: View,
    /// Whether the config will have `lxc.rootfs.options = idmap=container`.
    pub idmapped: bool,
}

impl Migration {
    /// The same migration with the rootfs kept in the host view and LXC idmapping it
    /// (`Some(true)`, `--idmapped`), or shifted into the map as usual (`Some(false)`,
    /// `--no-idmapped`); `None` keeps what the config says.
    pub fn idmapped(mut self, want: Option<bool>) -> Result<Migration> {
        let want = want.unwrap_or(self.idmapped);
        if want && self.to == View::Host {
            return Err(Error::Usage(format!(
                "container '{}': --idmapped needs a map to idmap the rootfs with; --to host makes \
                 the container privileged (give --no-idmapped)",
                self.name
            )));
        }
        self.idmapped = want;
        self.rootfs_to = if want { View::Host } else { self.to.clone() };
        Ok(self)
    }

    /// Whether this migration changes no inode: only the config is rewritten.
    pub fn config_only(&self) -> bool {
        self.rootfs_from == self.rootfs_to
    }
}

/// Reads the container's config, finds its rootfs, refuses a running container, and works out
/// the new map (an interrupted migrate's own target first, so that `auto` resumes the same).
pub fn prepare(name: &str, lxcpath: &Path, target: &Target) -> Result<Migration> {
    let c = crate::container::Container::open(lxcpath, name)?;
    let (from, rootfs_from) = (c.view()?, c.rootfs_view()?);
    let crate::container::Container { config, rootfs, .. } = c;
    if !rootfs.is_dir() {
        return Err(Error::Usage(format!(
            "container '{name}': its rootfs {} is missing (lxc.rootfs.path in {})",
            escape_path(&rootfs),
            escape_path(&config.path)
        )));
    }
    let idmapped = config.rootfs_idmapped();
    // An idmapped container's rootfs stays in the host view: no unfinished target to find.
    let resumed = match (target, idmapped) {
        (Target::Auto, false) => unfinished_target(&rootfs, &from)?,
        _ => None,
    };
    let to = match target {
        Target::Host => View::Host,
        Target::Map(map) => View::Map(map.clone()),
        Target::Base(base) => View::Map(moved(&from, *base)?),
        Target::Auto => match resumed {
            Some(view) => view,
            None => View::Map(moved(&from, free_block(lxcpath)?)?),
        },
    };
    let rootfs_to = if idmapped { View::Host } else { to.clone() };
    Ok(Migration {
        name: name.to_string(),
        config,
        rootfs,
        from,
        to,
        rootfs_from,
        rootfs_to,
        idmapped,
    })
}

/// `from` with container root moved to host id `base`: each kind's entries shift by the offset
/// that takes its namespace id 0 to `base`.
pub fn moved(from: &View, base: u32) -> Result<IdMap> {
    let from = match from {
        View::Map(m) => m,
        // A privileged container: its first 65536 ids of both kinds go to BASE.
        View::Host => {
            let entries = IdKind::BOTH
                .into_iter()
                .map(|kind| {
                    IdMapEntry::new(kind, 0, base, BLOCK).map_err(|_| {
                        Error::Usage(format!(
                            "--to {base}: a block of {BLOCK} ids there would pass the last id"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(IdMap::new(entries)?);
        }
    };
    let mut entries = Vec::new();
    for kind in IdKind::BOTH {
        if !from.has(kind) {
            continue;
        }
        let Some(root) = from.to_host(kind, 0) else {
            return Err(Error::Usage(format!(
                "the container's map '{from}' has no {} 0 to move to {base}; give --to-map",
                kind.name()
            )));
        };
        let offset = i64::from(base) - i64::from(root);
        for e in from.entries(kind) {
            let host = u32::try_from(i64::from(e.host_start()) + offset).ok();
            let entry = host.and_then(|h| IdMapEntry::new(kind, e.ns_start(), h, e.count()).ok());
            entries.push(entry.ok_or_else(|| {
                Error::Usage(format!(
                    "--to {base}: entry '{e}' would move past the last id"
                ))
            })?);
        }
    }
    Ok(IdMap::new(entries)?)
}

/// The view an interrupted migrate was moving the rootfs to: a pending shift from `from`, or
/// a finished one whose view the config does not name yet.
pub(crate) fn unfinished_target(rootfs: &Path, from: &View) -> Result<Option<View>> {
    let tree = crate::tree::Tree::open(rootfs)?;
    if let state::Found::Pending(j) = state::find(&tree)? {
        if &j.header.from == from {
            return Ok(Some(j.header.to.clone()));
        }
    }
    match state::recorded(tree.root.as_fd()) {
        Some(v) if &v != from => Ok(Some(v)),
        _ => Ok(None),
    }
}

/// Whether the tree at `dir` holds `view`, as its record says, with no shift of it pending: a
/// shift that exited 1 there finished, and named only losses of the tree's list.
pub fn at_target(dir: &Path, view: &View) -> bool {
    let Ok(tree) = crate::tree::Tree::open(dir) else {
        return false;
    };
    let settled = match state::find(&tree) {
        Ok(state::Found::Nothing) => true,
        Ok(state::Found::Pending(j)) => j.done,
        _ => false,
    };
    settled && state::recorded(tree.root.as_fd()).as_ref() == Some(view)
}

/// The containers of `others` whose configured maps share host ids of the same kind with
/// `view`'s map: a container moved there would own their files, and they its.
pub fn sharing_range(others: &[(String, LxcConfig)], view: &View) -> Vec<String> {
    let View::Map(map) = view else {
        return Vec::new();
    };
    others
        .iter()
        .filter(|(_, config)| config.map().is_ok_and(|m| shares_host_ids(map, &m)))
        .map(|(other, _)| other.clone())
        .collect()
}

/// The configs of the containers under `lxcpath` other than `name`, read once for the checks
/// that look at them all ([`sharing_range`], [`bind_sources`]); unreadable ones are left out.
pub fn other_containers(lxcpath: &Path, name: &str) -> Result<Vec<(String, LxcConfig)>> {
    Ok(crate::container::names(lxcpath)?
        .into_iter()
        .filter(|other| other != name)
        .filter_map(|other| {
            let config = LxcConfig::for_container(lxcpath, &other).ok()?;
            Some((other, config))
        })
        .collect())
}

/// A directory the container bind-mounts (`lxc.mount.entry … bind`) whose owner lies in the
/// map it is moved from: its files are the container's, and stay in the old range unless
/// shifted with the rootfs (`--with-mounts`).
#[derive(Clone, Debug)]
pub struct BindSource {
    pub path: PathBuf,
    /// Other containers of the lxcpath that bind-mount the same directory: shifting it would
    /// take it from them.
    pub shared_with: Vec<String>,
}

/// The bind-mount sources of `m`'s container owned by its old map (none when it moves from the
/// host view: every directory of the host is "owned" by that).
pub fn bind_sources(m: &Migration, others: &[(String, LxcConfig)]) -> Vec<BindSource> {
    use std::os::unix::fs::MetadataExt;
    let View::Map(from) = &m.from else {
        return Vec::new();
    };
    let inverse = from.inverse();
    let identity = |p: &Path| {
        std::fs::symlink_metadata(p)
            .ok()
            .filter(|meta| meta.is_dir())
            .map(|meta| (meta.dev(), meta.ino(), meta.uid()))
    };
    let binds = |config: &LxcConfig| -> Vec<PathBuf> {
        config
            .mount_entries
            .iter()
            .filter(|e| e.is_bind() && e.source.is_absolute())
            .map(|e| e.source.clone())
            .collect()
    };
    let others: Vec<(&String, Vec<(u64, u64)>)> = others
        .iter()
        .map(|(name, config)| {
            let ids = binds(config)
                .iter()
                .filter_map(|p| identity(p).map(|(dev, ino, _)| (dev, ino)))
                .collect();
            (name, ids)
        })
        .collect();
    let mut out: Vec<BindSource> = Vec::new();
    for path in binds(&m.config) {
        let Some((dev, ino, uid)) = identity(&path) else {
            continue;
        };
        if inverse.to_host(IdKind::Uid, uid).is_none() || out.iter().any(|b| b.path == path) {
            continue;
        }
        let shared_with = others
            .iter()
            .filter(|(_, ids)| ids.contains(&(dev, ino)))
            .map(|(name, _)| (*name).clone())
            .collect();
        out.push(BindSource { path, shared_with });
    }
    out
}

/// Whether `a` and `b` map some host id of the same kind.
fn shares_host_ids(a: &IdMap, b: &IdMap) -> bool {
    a.all_entries().any(|e| {
        b.entries(e.kind())
            .iter()
            .any(|o| o.host_range().intersect(e.host_range()).is_some())
    })
}

/// A warning when the target shares host ids with the map LXC's default config gives new
/// containers of the config's owner: the next `lxc-create` would put a container there.
pub fn default_config_warning(m: &Migration) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let View::Map(to) = &m.to else { return None };
    let owner = std::fs::metadata(&m.config.path).ok()?.uid();
    let (path, map) = crate::idmap::lxc::default_config(owner)?;
    let map = map.ok()?;
    shares_host_ids(to, &map).then(|| {
        format!(
            "container '{}': the new map '{to}' shares host ids with '{map}', the map {} gives \
             new containers: edit its lxc.idmap lines before the next lxc-create",
            m.name,
            escape_path(&path)
        )
    })
}

/// The caller's first free 65536 block.
fn free_block(lxcpath: &Path) -> Result<u32> {
    let user = User::current();
    let r = crate::ranges::gather(&user, &SubIdFiles::default(), lxcpath)?;
    r.first_free_block.ok_or_else(|| {
        Error::Usage(format!(
            "--to auto: no free 65536 block of uids and gids is delegated to {} in /etc/subuid \
             and /etc/subgid (see `idshift ranges`); give --to HOSTBASE or --to-map",
            user.name
        ))
    })
}

/// How a migration ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The rootfs shift did not finish (this is its exit status); the config still names FROM.
    ShiftUnfinished(u8),
    /// The config named TO already.
    AlreadyNamed,
    /// A dry run: the config would name TO.
    WouldName,
    /// The config now names TO.
    Renamed,
}

/// Carries out a prepared migration in its crash-safe order: the rootfs first, through
/// `shift_rootfs` (which shifts `m.rootfs` from `m.from` to `m.to` and returns the shift's exit
/// status, and whether every tree it shifted now holds its target view), and the config only
/// once that shift finished with nothing left over but losses already listed. Killed at any
/// point, the config never names a map the rootfs does not hold yet, and the same migration run
/// again finishes the job.
pub fn carry_out(
    m: &Migration,
    dry_run: bool,
    shift_rootfs: impl FnOnce(&Migration) -> Result<(u8, bool)>,
) -> Result<Outcome> {
    if !m.config_only() {
        let (code, complete) = shift_rootfs(m)?;
        if !complete {
            return Ok(Outcome::ShiftUnfinished(code));
        }
    }
    Ok(match new_config_text(m)? {
        None => Outcome::AlreadyNamed,
        Some(_) if dry_run => Outcome::WouldName,
        Some(text) => {
            replace_file(&m.config.path, &text)?;
            Outcome::Renamed
        }
    })
}

/// The config text with the new map, or `None` if it already names it.
pub fn new_config_text(m: &Migration) -> Result<Option<Vec<u8>>> {
    let path = &m.config.path;
    let text = crate::idmap::read_config_bytes(path)?
        .ok_or_else(|| Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)))?;
    // A map set in an included file is overridden in the config's own file, never edited
    // there (an include may be shared by many containers).
    let explicit = m.config.idmap_in_includes;
    let new = match &m.to {
        View::Map(map) => rewrite_idmap(&text, map, explicit),
        View::Host => without_idmap(&text, explicit),
    };
    let new = if m.idmapped != m.config.rootfs_idmapped() {
        with_rootfs_idmap(&new, m.idmapped)
    } else {
        new
    };
    Ok((new != text).then_some(new))
}

/// Replaces `path` with `text` atomically: a temporary file beside it with the same mode and
/// owner, written and fsynced, renamed over it, and the directory fsynced.
pub fn replace_file(path: &Path, text: &[u8]) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.idshift-tmp"));
    shift::crash_point();
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.mode() & 0o7777)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let written = (|| {
        f.write_all(text)?;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        }
        f.sync_all()?;
        shift::crash_point();
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_moves_every_entry_by_root_offset() {
        let from =
            IdMap::parse_list("u:0:100000:1000 u:1000:5000:1 u:1001:101001:64535 g:0:100000:65536")
                .unwrap();
        assert_eq!(
            moved(&View::Map(from.clone()), 300000).unwrap().to_string(),
            "u:0:300000:1000 u:1000:205000:1 u:1001:301001:64535 g:0:300000:65536"
        );
        assert!(moved(&View::Map(from), u32::MAX - 10).is_err());
        assert_eq!(
            moved(&View::Host, 300000).unwrap().to_string(),
            "u:0:300000:65536 g:0:300000:65536",
            "a privileged container gets a block of each kind"
        );
        assert!(moved(&View::Host, u32::MAX - 10).is_err());
        let no_root = IdMap::parse_list("u:1:100000:10").unwrap();
        assert!(moved(&View::Map(no_root), 1)
            .unwrap_err()
            .to_string()
            .contains("no uid 0"));
    }

    /// A container `c1` under a temporary LXC path, its config naming b:0:100000:65536.
    fn container() -> (tempfile::TempDir, Migration) {
        let lxcpath = tempfile::tempdir().unwrap();
        let dir = lxcpath.path().join("c1");
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(
            dir.join("config"),
            "lxc.uts.name = c1\nlxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n",
        )
        .unwrap();
        let m = prepare("c1", lxcpath.path(), &Target::Base(300000)).unwrap();
        (lxcpath, m)
    }

    fn config_map(m: &Migration) -> String {
        LxcConfig::read(&m.config.path)
            .unwrap()
            .map()
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_config_changes_only_after_the_rootfs_shift_finished() {
        let (_keep, m) = container();
        assert_eq!(m.to.to_string(), "u:0:300000:65536 g:0:300000:65536");
        let shifted = std::cell::Cell::new(false);
        let outcome = carry_out(&m, false, |m| {
            assert_eq!(
                config_map(m),
                "u:0:100000:65536 g:0:100000:65536",
                "config changed first"
            );
            shifted.set(true);
            Ok((0, true))
        });
        assert_eq!(outcome.unwrap(), Outcome::Renamed);
        assert!(
            shifted.get(),
            "the config was rewritten without shifting the rootfs"
        );
        assert_eq!(config_map(&m), "u:0:300000:65536 g:0:300000:65536");
        let again = carry_out(
            &prepare(
                "c1",
                _keep.path(),
                &match &m.to {
                    View::Map(map) => Target::Map(map.clone()),
                    View::Host => Target::Host,
                },
            )
            .unwrap(),
            false,
            |_| panic!("nothing to shift when the config names the target"),
        );
        assert_eq!(again.unwrap(), Outcome::AlreadyNamed);
    }

    #[test]
    fn an_unfinished_or_failed_shift_leaves_the_config_alone() {
        let (_keep, m) = container();
        assert_eq!(
            carry_out(&m, false, |_| Ok((1, false))).unwrap(),
            Outcome::ShiftUnfinished(1)
        );
        assert_eq!(config_map(&m), "u:0:100000:65536 g:0:100000:65536");
        let err = carry_out(&m, false, |_| Err(Error::Refused("in use".into())));
        assert!(matches!(err, Err(Error::Refused(_))));
        assert_eq!(config_map(&m), "u:0:100000:65536 g:0:100000:65536");
        assert_eq!(
            carry_out(&m, true, |_| Ok((0, true))).unwrap(),
            Outcome::WouldName
        );
        assert_eq!(
            config_map(&m),
            "u:0:100000:65536 g:0:100000:65536",
            "a dry run writes nothing"
        );
        // Complete, with a listed loss (exit 1): the config follows the rootfs.
        assert_eq!(
            carry_out(&m, false, |_| Ok((1, true))).unwrap(),
            Outcome::Renamed
        );
        assert_eq!(config_map(&m), "u:0:300000:65536 g:0:300000:65536");
    }

    #[test]
    fn replace_file_keeps_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        replace_file(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config")]);
    }
}
