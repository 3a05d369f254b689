//! One inode's shift as a short, ordered plan: read what chown would lose → (journal it) →
//! `fchownat` → restore setuid/setgid (never on a symlink) → rewrite `security.capability` with
//! the shifted rootid → rewrite the ACLs.
//!
//! Which inodes a resumed run skips: those a journal record does not cover and whose ctime is at
//! or after the shift's threshold — a plan of one step is atomic, so such an inode is done. Plans
//! of more steps are journaled (with the inode's original state) before their first step, and a
//! journaled inode is always brought to its target from that original, whatever step it reached.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use nix::errno::Errno;

use super::state::{format_record, Journal, Original, Records};
use super::walk::{At, Visitor};
use super::{acl, caps, crash_point, Translation};
use crate::idmap::{IdKind, IdMap};
use crate::sys::fs::{self as sysfs, Stat};
use crate::sys::xattr;

/// Counters, shared by the walk's threads.
#[derive(Debug, Default)]
pub struct Stats {
    pub inodes: AtomicU64,
    pub changed: AtomicU64,
    pub already_done: AtomicU64,
    pub hardlinks_skipped: AtomicU64,
    pub modes_restored: AtomicU64,
    pub caps_rewritten: AtomicU64,
    pub acls_rewritten: AtomicU64,
    pub outlier_inodes: AtomicU64,
    pub acl_outlier_entries: AtomicU64,
    pub errors: AtomicU64,
}

/// A failure at one inode.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InodeError {
    pub path: PathBuf,
    pub op: &'static str,
    pub errno: i32,
    pub message: String,
}

/// An id FROM does not map: left as it is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outlier {
    pub kind: &'static str,
    pub id: u32,
    pub inodes: u64,
    pub example: PathBuf,
}

/// The set of hardlinked inodes seen, sharded to keep threads apart.
struct LinkSet(Vec<Mutex<HashSet<(u64, u64)>>>);

impl LinkSet {
    fn new() -> LinkSet {
        LinkSet((0..64).map(|_| Mutex::new(HashSet::new())).collect())
    }

    /// True the first time a key is seen.
    fn first(&self, key: (u64, u64)) -> bool {
        let shard = &self.0[(key.1 as usize ^ key.0 as usize) % self.0.len()];
        shard.lock().unwrap_or_else(|e| e.into_inner()).insert(key)
    }
}

/// The changes one inode needs.
pub struct Plan {
    name: Option<CString>,
    key: (u64, u64),
    symlink: bool,
    orig: Original,
    uid: u32,
    gid: u32,
    chown: bool,
    mode: Option<u32>,
    caps: Option<Vec<u8>>,
    acl_access: Option<Vec<u8>>,
    acl_default: Option<Vec<u8>>,
    journal: bool,
}

impl Plan {
    fn describe(&self, path: &Path) -> String {
        let mut parts = Vec::new();
        if self.chown {
            parts.push(format!(
                "owner {}:{} -> {}:{}",
                self.orig.uid, self.orig.gid, self.uid, self.gid
            ));
        }
        if let Some(m) = self.mode {
            parts.push(format!("mode {m:04o} restored"));
        }
        if self.caps.is_some() {
            parts.push("capability rewritten".into());
        }
        if self.acl_access.is_some() {
            parts.push("ACL remapped".into());
        }
        if self.acl_default.is_some() {
            parts.push("default ACL remapped".into());
        }
        format!("{}: {}", path.display(), parts.join(", "))
    }
}

/// Everything the shift visitor needs; counters and lists fill up as the walk goes.
pub struct ShiftVisitor<'a> {
    pub tr: &'a Translation,
    pub dry_run: bool,
    pub verbose: bool,
    /// The ctime threshold of this shift; `None` in a dry run of a fresh tree.
    pub since_ns: Option<i128>,
    /// Whether an earlier run of this shift may have changed inodes.
    pub resuming: bool,
    pub records: &'a Records,
    pub journal: Option<&'a Journal>,
    /// The map of the user namespace the shift runs in, `None` in the initial one: a value
    /// naming an id outside it could not be written back, so its inode is left untouched.
    pub namespace: Option<IdMap>,
    links: LinkSet,
    pub stats: Stats,
    outliers: Mutex<BTreeMap<(IdKind, u32), (u64, PathBuf)>>,
    errors: Mutex<Vec<InodeError>>,
    mounts: Mutex<Vec<PathBuf>>,
}

/// How many per-inode errors are kept for the summary (all are counted and printed).
const MAX_KEPT_ERRORS: usize = 1000;

impl<'a> ShiftVisitor<'a> {
    pub fn new(
        tr: &'a Translation,
        records: &'a Records,
        journal: Option<&'a Journal>,
    ) -> ShiftVisitor<'a> {
        ShiftVisitor {
            tr,
            dry_run: journal.is_none(),
            verbose: false,
            since_ns: None,
            resuming: false,
            records,
            journal,
            namespace: None,
            links: LinkSet::new(),
            stats: Stats::default(),
            outliers: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(Vec::new()),
            mounts: Mutex::new(Vec::new()),
        }
    }

    pub fn outliers(&self) -> Vec<Outlier> {
        let map = self.outliers.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(&(kind, id), (n, path))| Outlier {
                kind: kind.name(),
                id,
                inodes: *n,
                example: path.clone(),
            })
            .collect()
    }

    pub fn errors(&self) -> Vec<InodeError> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn mounts_skipped(&self) -> Vec<PathBuf> {
        self.mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn outlier(&self, kind: IdKind, id: u32, at: &At<'_>) {
        let mut map = self.outliers.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((kind, id)).or_insert_with(|| (0, at.path())).0 += 1;
    }

    /// Maps one id; an id FROM does not map stays and is listed.
    fn map_id(&self, kind: IdKind, id: u32, at: &At<'_>, outlier: &mut bool) -> u32 {
        match self.tr.apply(kind, id) {
            Some(new) => new,
            None => {
                self.outlier(kind, id, at);
                *outlier = true;
                id
            }
        }
    }

    /// The inode's ids, mode and the xattrs a shift touches, as they are now.
    fn read_original(&self, at: &At<'_>, st: &Stat) -> Result<Original, (&'static str, Errno)> {
        let mut orig = Original {
            uid: st.uid,
            gid: st.gid,
            mode: st.mode,
            ..Original::default()
        };
        if st.is_symlink() {
            return Ok(orig); // no ACLs and no capabilities on symlinks
        }
        let names = xattr::list(at.dir, at.name).map_err(|e| ("list xattrs", e))?;
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let (slot, which) = match name {
                b"security.capability" => (&mut orig.caps, caps::NAME),
                b"system.posix_acl_access" => (&mut orig.acl_access, acl::ACCESS),
                b"system.posix_acl_default" => (&mut orig.acl_default, acl::DEFAULT),
                _ => continue,
            };
            *slot = match xattr::get(at.dir, at.name, which) {
                Ok(v) => v,
                // A capability whose rootid this namespace cannot name: present, foreign; a
                // chown would drop it and it could not be written back.
                Err(Errno::EOVERFLOW) => {
                    return Err((
                        "read capability (root id not mapped here)",
                        Errno::EOVERFLOW,
                    ))
                }
                Err(e) => return Err(("read xattr", e)),
            };
        }
        Ok(orig)
    }

    fn remap_acl(&self, value: &Option<Vec<u8>>, at: &At<'_>) -> Result<Option<Vec<u8>>, String> {
        let Some(bytes) = value else { return Ok(None) };
        let r = acl::remap(bytes, |k, id| self.tr.apply(k, id)).map_err(|e| e.to_string())?;
        if !r.outliers.is_empty() {
            self.stats
                .acl_outlier_entries
                .fetch_add(r.outliers.len() as u64, Relaxed);
            for (kind, id) in r.outliers {
                self.outlier(kind, id, at);
            }
        }
        Ok(r.value)
    }

    fn plan(&self, at: At<'_>, st: &Stat) -> Option<Plan> {
        let key = (st.dev, st.ino);
        if !st.is_dir() && st.nlink > 1 && !self.links.first(key) {
            self.stats.hardlinks_skipped.fetch_add(1, Relaxed);
            return None;
        }
        let record = self.records.get(&key);
        let touched = self.since_ns.is_some_and(|t| st.ctime_ns >= t);
        if record.is_none() && self.resuming && touched {
            self.stats.already_done.fetch_add(1, Relaxed);
            return None;
        }
        let orig = match record {
            Some(r) => r.clone(),
            None => match self.read_original(&at, st) {
                Ok(o) => o,
                Err((op, e)) => {
                    self.error(at.path(), op, e);
                    return None;
                }
            },
        };
        let mut outlier = false;
        let uid = self.map_id(IdKind::Uid, orig.uid, &at, &mut outlier);
        let gid = self.map_id(IdKind::Gid, orig.gid, &at, &mut outlier);
        if outlier {
            self.stats.outlier_inodes.fetch_add(1, Relaxed);
        }
        let chown = (uid, gid) != (orig.uid, orig.gid);
        let symlink = st.is_symlink();
        let mode = (chown && !symlink && !st.is_dir() && orig.mode & 0o6000 != 0)
            .then_some(orig.mode & 0o7777);
        let caps = match &orig.caps {
            None => None,
            Some(c) => match caps::remap(c, |root| self.tr.apply(IdKind::Uid, root)) {
                Ok(new) => {
                    let target = new.unwrap_or_else(|| c.clone());
                    (chown || &target != c).then_some(target)
                }
                Err(e) => {
                    self.error_msg(at.path(), "decode capability", e.to_string());
                    return None;
                }
            },
        };
        let remapped = (
            self.remap_acl(&orig.acl_access, &at),
            self.remap_acl(&orig.acl_default, &at),
        );
        let (acl_access, acl_default) = match remapped {
            (Ok(a), Ok(d)) => (a, d),
            (Err(e), _) | (_, Err(e)) => {
                self.error_msg(at.path(), "decode ACL", e);
                return None;
            }
        };
        if let Some(why) = self.cannot_write_back(caps.as_deref(), [&acl_access, &acl_default]) {
            self.error_msg(at.path(), "keep xattrs", why);
            return None;
        }
        let steps = [
            chown,
            mode.is_some(),
            caps.is_some(),
            acl_access.is_some(),
            acl_default.is_some(),
        ]
        .iter()
        .filter(|&&s| s)
        .count();
        if steps == 0 {
            return None;
        }
        // A fresh inode already past the threshold (a ctime in the future) could not be told
        // from a changed one after a crash: journal it too.
        let journal = record.is_none() && (steps > 1 || (!self.resuming && touched));
        Some(Plan {
            name: at.name.map(|n| n.to_owned()),
            key,
            symlink,
            orig,
            uid,
            gid,
            chown,
            mode,
            caps,
            acl_access,
            acl_default,
            journal,
        })
    }

    /// Why a capability or ACL this plan writes could not be written as it is meant: an ACL
    /// entry read as -1 (an id the namespace cannot name), or, inside a user namespace, an id or
    /// capability root id outside it (the kernel refuses those, and a chown would already have
    /// dropped the capability).
    fn cannot_write_back(
        &self,
        caps: Option<&[u8]>,
        acls: [&Option<Vec<u8>>; 2],
    ) -> Option<String> {
        let mapped = |kind: IdKind, id: u32| {
            id != u32::MAX
                && self
                    .namespace
                    .as_ref()
                    .map_or(true, |ns| ns.to_host(kind, id).is_some())
        };
        if let Some(rootid) = caps.and_then(|c| caps::decode(c).ok()).map(|c| c.rootid) {
            if !mapped(IdKind::Uid, rootid) {
                return Some(format!(
                    "its file capability belongs to root id {rootid}, which this user namespace \
                     does not map: it could not be restored after the chown (shift as root)"
                ));
            }
        }
        for value in acls.into_iter().flatten() {
            for e in acl::decode(value).unwrap_or_default() {
                match e.id_kind() {
                    Some(kind) if !mapped(kind, e.id) => {
                        let id = if e.id == u32::MAX {
                            "-1 (unmapped)".to_string()
                        } else {
                            e.id.to_string()
                        };
                        return Some(format!(
                            "its ACL names {} {id}, which cannot be written back from here \
                             (shift as root)",
                            kind.name()
                        ));
                    }
                    _ => {}
                }
            }
        }
        None
    }

    fn count(&self, plan: &Plan) {
        let s = &self.stats;
        s.changed.fetch_add(plan.chown as u64, Relaxed);
        s.modes_restored
            .fetch_add(plan.mode.is_some() as u64, Relaxed);
        s.caps_rewritten
            .fetch_add(plan.caps.is_some() as u64, Relaxed);
        let acls = plan.acl_access.is_some() as u64 + plan.acl_default.is_some() as u64;
        s.acls_rewritten.fetch_add(acls, Relaxed);
    }

    fn apply(&self, dir: BorrowedFd<'_>, plan: &Plan) -> Result<(), (&'static str, Errno)> {
        let name = plan.name.as_deref();
        if plan.chown {
            crash_point();
            sysfs::chown(dir, name, plan.uid, plan.gid).map_err(|e| ("chown", e))?;
        }
        if let (Some(mode), Some(name)) = (plan.mode, name) {
            debug_assert!(!plan.symlink);
            crash_point();
            sysfs::chmod(dir, name, mode).map_err(|e| ("restore mode", e))?;
        }
        let writes = [
            (&plan.caps, caps::NAME, "write capability"),
            (&plan.acl_access, acl::ACCESS, "write ACL"),
            (&plan.acl_default, acl::DEFAULT, "write default ACL"),
        ];
        for (value, attr, op) in writes {
            if let Some(v) = value {
                crash_point();
                xattr::set(dir, name, attr, v).map_err(|e| (op, e))?;
            }
        }
        Ok(())
    }

    fn error(&self, path: PathBuf, op: &'static str, errno: Errno) {
        self.error_msg(path, op, errno.desc().to_string());
        if let Some(e) = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_mut()
        {
            e.errno = errno as i32;
        }
    }

    fn error_msg(&self, path: PathBuf, op: &'static str, message: String) {
        eprintln!("idshift: {}: {op}: {message}", path.display());
        self.stats.errors.fetch_add(1, Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < MAX_KEPT_ERRORS {
            errors.push(InodeError {
                path,
                op,
                errno: 0,
                message,
            });
        }
    }
}

impl Visitor for ShiftVisitor<'_> {
    type Item = Plan;

    fn visit(&self, at: At<'_>, st: &Stat, batch: &mut Vec<Plan>) {
        self.stats.inodes.fetch_add(1, Relaxed);
        if let Some(plan) = self.plan(at, st) {
            batch.push(plan);
        }
    }

    fn finish(&self, dir: BorrowedFd<'_>, dir_path: &Path, batch: Vec<Plan>) {
        let path_of = |p: &Plan| match &p.name {
            None => dir_path.to_path_buf(),
            Some(n) => dir_path.join(super::walk::os(n)),
        };
        let mut journaled = true;
        if let Some(journal) = self.journal {
            let text: String = batch
                .iter()
                .filter(|p| p.journal)
                .map(|p| format_record(p.key, &p.orig))
                .collect();
            if !text.is_empty() {
                if let Err(e) = journal.append(&text) {
                    journaled = false;
                    self.error_msg(dir_path.to_path_buf(), "write journal", e.to_string());
                }
            }
        }
        for plan in &batch {
            if self.verbose {
                println!("{}", plan.describe(&path_of(plan)));
            }
            if self.dry_run {
                self.count(plan);
                continue;
            }
            if plan.journal && !journaled {
                continue; // never change what could not be recorded
            }
            match self.apply(dir, plan) {
                Ok(()) => self.count(plan),
                Err((op, e)) => self.error(path_of(plan), op, e),
            }
        }
    }

    fn error(&self, path: PathBuf, op: &'static str, errno: Errno) {
        ShiftVisitor::error(self, path, op, errno);
    }

    fn mount_skipped(&self, path: PathBuf) {
        self.mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path);
    }
}
