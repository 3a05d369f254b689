//! `idshift status`: a read-only scan of a tree's ownership.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::idmap::{IdKind, IdMap, IdMapEntry, BLOCK};
use crate::report::escape_path;
use crate::report::Reporter;
use crate::shift::losses::{self, Ledger};
use crate::shift::state::{self, Found};
use crate::shift::steps::Held;
use crate::shift::{caps, ways_out, View};
use crate::sys::fs::Stat;
use crate::sys::xattr;
use crate::tree::walk::{self, At, Visitor};
use crate::tree::Tree;

/// What `status` reports (`"schema": 2` in JSON, described in the README).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub schema: u32,
    #[serde(serialize_with = "crate::report::ser_path")]
    pub dir: PathBuf,
    pub inodes: u64,
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    pub other: u64,
    pub root_uid: u32,
    pub root_gid: u32,
    /// Inode counts by block start (`uid / 65536 * 65536`): `[{"start": N, "inodes": N}]`.
    #[serde(serialize_with = "ser_blocks")]
    pub uid_blocks: BTreeMap<u32, u64>,
    #[serde(serialize_with = "ser_blocks")]
    pub gid_blocks: BTreeMap<u32, u64>,
    pub lowest_uid: Option<u32>,
    pub highest_uid: Option<u32>,
    pub lowest_gid: Option<u32>,
    pub highest_gid: Option<u32>,
    /// The map the tree appears to use, from the owner of its root and the ids seen.
    pub apparent_map: Apparent,
    pub setuid_files: u64,
    pub setgid_files: u64,
    pub caps_v2: u64,
    pub caps_v3: u64,
    /// v3 capability rootids and how many files carry each: `[{"rootid": N, "files": N}]`,
    /// `"rootid": null` for a rootid not mapped where idshift runs.
    #[serde(serialize_with = "ser_rootids")]
    pub caps_rootids: BTreeMap<u32, u64>,
    pub acl_access: u64,
    pub acl_default: u64,
    /// With `--map`: inodes whose uid or gid the map's host side does not cover.
    pub outlier_inodes: Option<u64>,
    pub outlier_ids: Vec<OutlierId>,
    #[serde(serialize_with = "crate::report::ser_opt_view")]
    pub recorded_map: Option<View>,
    /// Inodes whose ids the recorded map's host side does not cover: the record is stale (the
    /// tree was changed by another tool since), or the tree holds outliers.
    pub record_contradicted_by: Option<u64>,
    /// The journal beside the tree, if there is one to speak of.
    pub pending: Option<Pending>,
    /// The tree's loss list: what the chown of an interrupted shift took from files changed
    /// before it could be written back.
    pub losses: Vec<StatusLoss>,
    #[serde(serialize_with = "crate::report::ser_paths")]
    pub mounts_skipped: Vec<PathBuf>,
    pub errors: u64,
    /// With `--container`: the container whose rootfs this is, and whether its config agrees
    /// with the rootfs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Agreement>,
}

/// A container's configured view set against what its rootfs holds.
#[derive(Clone, Debug, Serialize)]
pub struct Agreement {
    pub name: String,
    /// The config's `lxc.idmap` map, or the host view for a privileged container.
    #[serde(serialize_with = "crate::report::ser_view")]
    pub configured: View,
    /// Whether the rootfs is in that view: the recorded map decides when there is one, else
    /// the owner of the rootfs's root (the host id of container root); `null` with a shift
    /// pending.
    pub agrees: Option<bool>,
}

impl Status {
    /// Sets the configured view of container `name` against this scan of its rootfs.
    pub fn judge_container(&mut self, name: &str, configured: View) {
        let agrees = crate::container::agrees(
            &configured,
            self.recorded_map.as_ref(),
            self.pending.as_ref().is_some_and(|p| p.state == "pending"),
            (self.root_uid, self.root_gid),
        );
        self.container = Some(Agreement {
            name: name.to_string(),
            configured,
            agrees,
        });
    }
}

/// The map a tree appears to use.
#[derive(Clone, Debug, Serialize)]
pub struct Apparent {
    /// The host view when the tree's root is owned by 0:0, else a 65536 block at root's owner;
    /// `null` when no whole block fits there (an owner within 65536 of the last id).
    #[serde(serialize_with = "crate::report::ser_opt_view")]
    pub view: Option<View>,
    /// Whether every id seen lies within `view` (`null` for the host view, or without a view).
    pub every_id_within: Option<bool>,
}

/// An id outside `--map`, and how many inodes hold it.
#[derive(Clone, Debug, Serialize)]
pub struct OutlierId {
    /// `"uid"` or `"gid"`.
    pub kind: &'static str,
    pub id: u32,
    pub inodes: u64,
}

/// A loss of the tree's list, and whether the file holds it again.
#[derive(Clone, Debug, Serialize)]
pub struct StatusLoss {
    #[serde(serialize_with = "crate::report::ser_path")]
    pub path: PathBuf,
    pub what: String,
    /// The file holds what it lost again (the next shift clears it from the list).
    pub restored: bool,
}

/// What the journal beside the tree says.
#[derive(Clone, Debug, Serialize)]
pub struct Pending {
    /// `"pending"`: a shift is unfinished; `"completed"`: its journal is removed by the next
    /// run; `"unusable"`: the journal is not used (`reason`); `"lost"`: the tree is marked as
    /// under a shift but its journal is gone.
    pub state: &'static str,
    #[serde(serialize_with = "crate::report::ser_path")]
    pub journal: PathBuf,
    #[serde(serialize_with = "crate::report::ser_opt_view")]
    pub from: Option<View>,
    #[serde(serialize_with = "crate::report::ser_opt_view")]
    pub to: Option<View>,
    pub reason: Option<String>,
    /// The command that finishes the pending shift.
    pub finish: Option<String>,
    /// The command that rolls it back.
    pub rollback: Option<String>,
}

fn ser_counts<S: serde::Serializer>(
    m: &BTreeMap<u32, u64>,
    s: S,
    key: &'static str,
    count: &'static str,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    struct Pair(&'static str, Option<u32>, &'static str, u64);
    impl Serialize for Pair {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry(self.0, &self.1)?;
            m.serialize_entry(self.2, &self.3)?;
            m.end()
        }
    }
    s.collect_seq(m.iter().map(|(&k, &n)| {
        Pair(
            key,
            (k != u32::MAX || key != "rootid").then_some(k),
            count,
            n,
        )
    }))
}

fn ser_blocks<S: serde::Serializer>(m: &BTreeMap<u32, u64>, s: S) -> Result<S::Ok, S::Error> {
    ser_counts(m, s, "start", "inodes")
}

fn ser_rootids<S: serde::Serializer>(m: &BTreeMap<u32, u64>, s: S) -> Result<S::Ok, S::Error> {
    ser_counts(m, s, "rootid", "files")
}

#[derive(Clone, Copy)]
pub struct Facts {
    uid: u32,
    gid: u32,
    mode: u32,
    caps_rootid: Option<(bool, u32)>,
    acl_access: bool,
    acl_default: bool,
}

struct Scan<'a> {
    map: Option<&'a IdMap>,
    ledger: Ledger<'a>,
    record: Option<IdMap>,
    reporter: &'a dyn Reporter,
    acc: Mutex<Status>,
    outliers: Mutex<BTreeMap<(IdKind, u32), u64>>,
}

impl Scan<'_> {
    fn facts(&self, at: At<'_>, st: &Stat) -> Result<Facts, (&'static str, Errno)> {
        let mut f = Facts {
            uid: st.uid,
            gid: st.gid,
            mode: st.mode,
            caps_rootid: None,
            acl_access: false,
            acl_default: false,
        };
        if st.is_symlink() {
            return Ok(f);
        }
        let names = xattr::list(at.dir, at.name).map_err(|e| ("list xattrs", e))?;
        for name in names.split(|&b| b == 0) {
            match name {
                b"system.posix_acl_access" => f.acl_access = true,
                b"system.posix_acl_default" => f.acl_default = true,
                b"security.capability" => {
                    f.caps_rootid = match xattr::get(at.dir, at.name, caps::NAME) {
                        Ok(Some(v)) => caps::decode(&v)
                            .ok()
                            .map(|c| (c.revision == caps::REVISION_3, c.rootid)),
                        Ok(None) => None,
                        Err(Errno::EOVERFLOW) => Some((true, u32::MAX)),
                        Err(e) => return Err(("read capability", e)),
                    }
                }
                _ => {}
            }
        }
        Ok(f)
    }
}

impl Visitor for Scan<'_> {
    type Item = Facts;

    fn visit(&self, at: At<'_>, st: &Stat, batch: &mut Vec<Facts>) {
        match self.facts(at, st) {
            Ok(f) => {
                if !self.ledger.is_empty() {
                    let now = Held {
                        uid: f.uid,
                        gid: f.gid,
                        mode: f.mode & 0o7777,
                        caps: f.caps_rootid.map(|_| Vec::new()),
                    };
                    self.ledger.check((st.dev, st.ino), st.btime_ns, &now);
                }
                batch.push(f)
            }
            Err((op, e)) => self.error(at.path(), op, e),
        }
    }

    fn finish(&self, _dir: BorrowedFd<'_>, _path: &Path, batch: Vec<Facts>) {
        let mut acc = self.acc.lock().unwrap_or_else(|e| e.into_inner());
        let mut outliers = Vec::new();
        for f in &batch {
            acc.inodes += 1;
            match f.mode & libc::S_IFMT {
                libc::S_IFDIR => acc.directories += 1,
                libc::S_IFREG => acc.files += 1,
                libc::S_IFLNK => acc.symlinks += 1,
                _ => acc.other += 1,
            }
            *acc.uid_blocks.entry(f.uid / BLOCK * BLOCK).or_default() += 1;
            *acc.gid_blocks.entry(f.gid / BLOCK * BLOCK).or_default() += 1;
            acc.lowest_uid = Some(acc.lowest_uid.map_or(f.uid, |x| x.min(f.uid)));
            acc.highest_uid = Some(acc.highest_uid.map_or(f.uid, |x| x.max(f.uid)));
            acc.lowest_gid = Some(acc.lowest_gid.map_or(f.gid, |x| x.min(f.gid)));
            acc.highest_gid = Some(acc.highest_gid.map_or(f.gid, |x| x.max(f.gid)));
            let special = f.mode & libc::S_IFMT == libc::S_IFREG;
            acc.setuid_files += (special && f.mode & 0o4000 != 0) as u64;
            acc.setgid_files += (special && f.mode & 0o2000 != 0) as u64;
            match f.caps_rootid {
                Some((true, root)) => {
                    acc.caps_v3 += 1;
                    *acc.caps_rootids.entry(root).or_default() += 1;
                }
                Some((false, _)) => acc.caps_v2 += 1,
                None => {}
            }
            acc.acl_access += f.acl_access as u64;
            acc.acl_default += f.acl_default as u64;
            if let Some(map) = self.map {
                let mut out = false;
                for (kind, id) in [(IdKind::Uid, f.uid), (IdKind::Gid, f.gid)] {
                    if map.to_ns(kind, id).is_none() {
                        outliers.push((kind, id));
                        out = true;
                    }
                }
                *acc.outlier_inodes.get_or_insert(0) += out as u64;
            }
            if let Some(rec) = &self.record {
                let outside = rec.to_ns(IdKind::Uid, f.uid).is_none()
                    || rec.to_ns(IdKind::Gid, f.gid).is_none();
                *acc.record_contradicted_by.get_or_insert(0) += outside as u64;
            }
        }
        drop(acc);
        if !outliers.is_empty() {
            let mut map = self.outliers.lock().unwrap_or_else(|e| e.into_inner());
            for o in outliers {
                *map.entry(o).or_default() += 1;
            }
        }
    }

    fn error(&self, path: PathBuf, op: &'static str, errno: Errno) {
        self.reporter.inode_error(&crate::shift::inode::InodeError {
            path,
            op,
            errno: errno as i32,
            message: errno.desc().to_string(),
        });
        self.acc.lock().unwrap_or_else(|e| e.into_inner()).errors += 1;
    }

    fn mount_skipped(&self, path: PathBuf) {
        self.acc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mounts_skipped
            .push(path);
    }

    fn changed(&self, path: PathBuf) {
        self.reporter.inode_error(&crate::shift::inode::InodeError {
            path,
            op: "scan",
            errno: 0,
            message: "its entries changed while status read the tree: the counts may be off".into(),
        });
        self.acc.lock().unwrap_or_else(|e| e.into_inner()).errors += 1;
    }
}

/// Scans DIR; `map`, when given, is the map the tree should be in (host side), for outliers.
pub fn scan(
    dir: &Path,
    map: Option<&IdMap>,
    threads: usize,
    cross_mounts: bool,
    reporter: &dyn Reporter,
) -> Result<Status> {
    let tree = Tree::open(dir)?;
    let st = tree.stat;
    let journal = tree.journal_path();
    let pending = |state, from, to, reason| {
        Some(Pending {
            state,
            journal: journal.clone(),
            from,
            to,
            reason,
            finish: None,
            rollback: None,
        })
    };
    let pending = match state::find(&tree)? {
        Found::Nothing | Found::Abandoned(_) => None,
        Found::Pending(j) => {
            let h = &j.header;
            let mut p = pending(
                if j.done { "completed" } else { "pending" },
                Some(h.from.clone()),
                Some(h.to.clone()),
                None,
            );
            if let (Some(p), false) = (&mut p, j.done) {
                let (f, b) = ways_out(dir, &h.from, &h.to);
                p.finish = Some(f);
                p.rollback = Some(b);
            }
            p
        }
        Found::Unusable { why, .. } => pending("unusable", None, None, Some(why)),
        Found::Lost => pending("lost", None, None, None),
    };
    let listed = losses::read(&tree)?;
    if let Some(text) = &listed.unused {
        reporter.warning(text);
    }
    let recorded = state::recorded(tree.root.as_fd());
    let record = match &recorded {
        Some(crate::shift::View::Map(m)) => Some(m.clone()),
        _ => None,
    };
    let scan = Scan {
        map,
        ledger: Ledger::new(None, listed, Default::default()),
        record,
        reporter,
        acc: Mutex::new(Status {
            schema: 2,
            dir: dir.to_path_buf(),
            root_uid: st.uid,
            root_gid: st.gid,
            outlier_inodes: map.map(|_| 0),
            recorded_map: recorded,
            pending,
            ..Status::default()
        }),
        outliers: Mutex::new(BTreeMap::new()),
    };
    let pool = walk::pool(threads)?;
    walk::walk(&pool, tree.root.as_fd(), dir, cross_mounts, &scan)
        .map_err(|e| Error::sys(format!("{}: stat", escape_path(dir)), e))?;
    let ledger = scan.ledger.finish()?;
    let mut status = scan.acc.into_inner().unwrap_or_else(|e| e.into_inner());
    let restored: Vec<_> = ledger.restored.iter().map(|l| l.key).collect();
    status.losses = ledger
        .lost
        .iter()
        .chain(&ledger.restored)
        .map(|l| StatusLoss {
            path: l.path.clone(),
            what: l.lost.to_string(),
            restored: restored.contains(&l.key),
        })
        .collect();
    if let Some(why) = ledger.unaccounted {
        status.losses.push(StatusLoss {
            path: dir.to_path_buf(),
            what: format!(
                "setuid/setgid bits or capabilities the tree is marked with (user.idshift.losses), \
                 but {why}"
            ),
            restored: false,
        });
    }
    status.outlier_ids = scan
        .outliers
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(&(kind, id), &inodes)| OutlierId {
            kind: kind.name(),
            id,
            inodes,
        })
        .collect();
    status.apparent_map = apparent_map(&status);
    Ok(status)
}

/// The map a tree seems to be in: a container whose root owns the tree, covering what is seen.
fn apparent_map(s: &Status) -> Apparent {
    if s.root_uid == 0 && s.root_gid == 0 {
        return Apparent {
            view: Some(View::Host),
            every_id_within: None,
        };
    }
    let fits = |lo: Option<u32>, hi: Option<u32>, base: u32| {
        lo.is_some_and(|l| l >= base) && hi.is_some_and(|h| h - base < BLOCK)
    };
    let block = |kind, root| IdMapEntry::new(kind, 0, root, BLOCK);
    let map = block(IdKind::Uid, s.root_uid)
        .and_then(|u| Ok([u, block(IdKind::Gid, s.root_gid)?]))
        .and_then(IdMap::new);
    match map {
        Ok(map) => Apparent {
            view: Some(View::Map(map)),
            every_id_within: Some(
                fits(s.lowest_uid, s.highest_uid, s.root_uid)
                    && fits(s.lowest_gid, s.highest_gid, s.root_gid),
            ),
        },
        // A root owner within 65536 of the last id: no container map starts there.
        Err(_) => Apparent {
            view: None,
            every_id_within: None,
        },
    }
}

impl Default for Apparent {
    fn default() -> Apparent {
        Apparent {
            view: Some(View::Host),
            every_id_within: None,
        }
    }
}

impl fmt::Display for Apparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = match &self.view {
            Some(View::Map(m)) => m,
            Some(View::Host) => return f.write_str("host view (the tree's root is owned by 0:0)"),
            None => {
                return f.write_str(
                    "no container map (root's owner lies within 65536 of the last id, so no \
                     block of 65536 ids starts there)",
                )
            }
        };
        match (map.to_host(IdKind::Uid, 0), map.to_host(IdKind::Gid, 0)) {
            (Some(u), Some(g)) if u == g => write!(f, "b:0:{u}:{BLOCK}")?,
            _ => write!(f, "{map}")?,
        }
        if self.every_id_within == Some(true) {
            f.write_str(" (every id lies within it)")
        } else {
            f.write_str(" (root's owner; some ids lie outside it: see the blocks)")
        }
    }
}

impl Pending {
    /// The text of `unfinished shift:`.
    fn describe(&self) -> String {
        let journal = escape_path(&self.journal);
        let shift = match (&self.from, &self.to) {
            (Some(from), Some(to)) => format!("from '{from}' to '{to}'"),
            _ => String::new(),
        };
        match self.state {
            "completed" => format!(
                "none (the shift {shift} completed; its journal {journal} is removed by the next \
                 run)"
            ),
            "pending" => format!("{shift} (journal {journal})"),
            "unusable" => format!(
                "journal {journal} is not used: {} (the next shift moves it aside)",
                self.reason.as_deref().unwrap_or("")
            ),
            _ => format!("marked as under a shift, but its journal {journal} is gone"),
        }
    }
}

fn blocks(b: &BTreeMap<u32, u64>) -> String {
    b.iter()
        .map(|(start, n)| format!("{start}-{}: {n}", start + (BLOCK - 1)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Status {
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}: {} inodes ({} directories, {} files, {} symlinks, {} other)\n",
            escape_path(&self.dir),
            self.inodes,
            self.directories,
            self.files,
            self.symlinks,
            self.other
        );
        if let Some(c) = &self.container {
            out += &format!(
                "  container:       {} (configured: {}): {}\n",
                c.name,
                c.configured,
                match c.agrees {
                    Some(true) => "the rootfs agrees",
                    Some(false) => "the rootfs does NOT agree with its config",
                    None => "a shift is pending, run it to the end first",
                }
            );
        }
        out += &format!("  root owned by:   {}:{}\n", self.root_uid, self.root_gid);
        out += &format!("  appears to use:  {}\n", self.apparent_map);
        out += &format!(
            "  recorded map:    {}{}\n",
            self.recorded_map
                .as_ref()
                .map_or("none".to_string(), View::to_string),
            match self.record_contradicted_by {
                Some(n) if n > 0 => format!(
                    " (contradicted: {n} inodes hold ids outside it; changed by another tool \
                     since, or outliers)"
                ),
                _ => String::new(),
            }
        );
        out += &format!(
            "  unfinished shift: {}\n",
            self.pending
                .as_ref()
                .map_or("none".to_string(), Pending::describe)
        );
        if let Some(Pending {
            finish: Some(f),
            rollback: Some(b),
            ..
        }) = &self.pending
        {
            out += &format!("    finish it:     {f}\n    roll it back:  {b}\n");
        }
        out += &format!("  uids by block:   {}\n", blocks(&self.uid_blocks));
        out += &format!("  gids by block:   {}\n", blocks(&self.gid_blocks));
        out += &format!(
            "  setuid files: {}, setgid files: {}\n",
            self.setuid_files, self.setgid_files
        );
        let roots: Vec<String> = self
            .caps_rootids
            .iter()
            .map(|(r, n)| {
                if *r == u32::MAX {
                    format!("unmapped here ×{n}")
                } else {
                    format!("{r} ×{n}")
                }
            })
            .collect();
        out += &format!(
            "  file capabilities: {} v2 (rootid 0), {} v3{}\n",
            self.caps_v2,
            self.caps_v3,
            if roots.is_empty() {
                String::new()
            } else {
                format!(" (rootids: {})", roots.join(", "))
            }
        );
        out += &format!(
            "  ACLs: {} access, {} default\n",
            self.acl_access, self.acl_default
        );
        if let Some(n) = self.outlier_inodes {
            out += &format!("  outside the map: {n} inodes");
            if !self.outlier_ids.is_empty() {
                let shown: Vec<String> = self
                    .outlier_ids
                    .iter()
                    .take(20)
                    .map(|o| format!("{} {} ({})", o.kind, o.id, o.inodes))
                    .collect();
                out += &format!(" — {}", shown.join(", "));
            }
            out += "\n";
        }
        for l in &self.losses {
            out += &format!(
                "  lost by an interrupted shift: {}: {}{}\n",
                escape_path(&l.path),
                l.what,
                if l.restored {
                    " (restored since; the next shift clears it)"
                } else {
                    " (restore it by hand, or accept the loss: shift --accept-loss PATH)"
                }
            );
        }
        for m in &self.mounts_skipped {
            out += &format!("  mount point not scanned: {}\n", escape_path(m));
        }
        if self.errors > 0 {
            out += &format!(
                "  {} inodes could not be read (listed above)\n",
                self.errors
            );
        }
        out
    }
}
