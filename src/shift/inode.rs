//! One inode's shift as a short, ordered plan: read what chown would lose → (journal it) →
//! `fchownat` → restore setuid/setgid (never on a symlink) → rewrite `security.capability` with
//! the shifted rootid → rewrite the ACLs.
//!
//! **The disk decides.** What an inode needs comes from the ids it holds now: an id in FROM's
//! host ranges is shifted, an id in TO's ranges (after an interrupted run) is done, any other
//! id is an outlier and stays. The journal is consulted only where the ids cannot say it alone:
//! an inode whose change takes several steps (a chown drops setuid bits and capabilities that
//! must be written back), and, when FROM and TO overlap, every inode the shift changes (its new
//! ids look like ids still to shift). Such inodes are journaled with their identity (device,
//! inode, birth time) and original state before their first step; a record is applied only to
//! the inode it was taken from, and only while the inode holds the record's original ids or
//! their translation — anything else means another process changed it since, and the inode is
//! shifted from what it holds now. A record never writes an id that FROM/TO do not produce, nor
//! a mode bit or capability beyond what the shift itself would have restored.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use nix::errno::Errno;

use super::losses::{Ledger, Loss};
use super::state::{format_plan, format_record, Journal, Original, Plans, RecordKind, Records};
use super::steps::{after_chown, Held, Step, StepPlan, SETID};
use super::{acl, caps, crash_point, Translation};
use crate::idmap::{IdKind, IdMap};
use crate::report::escape_path;
use crate::report::Reporter;
use crate::sys::fs::{self as sysfs, Stat};
use crate::sys::xattr;
use crate::tree::walk::{At, Visitor};

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
    /// Inodes with an id only FROM maps (not TO): certainly not shifted.
    pub from_only: AtomicU64,
    pub records_used: AtomicU64,
    pub errors: AtomicU64,
}

/// A failure at one inode.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InodeError {
    #[serde(serialize_with = "crate::report::ser_path")]
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
    /// Read inside a user namespace that does not map the real id (an unprivileged shift): `id`
    /// is then the kernel's overflow id, not the owner's; the real id is outside the caller's
    /// delegated ranges (`idshift status` as root shows it).
    pub unmapped: bool,
    pub inodes: u64,
    #[serde(serialize_with = "crate::report::ser_path")]
    pub example: PathBuf,
}

/// Which way a run goes relative to the shift it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// FROM → TO (a fresh shift or its resumption).
    Forward,
    /// Back from a pending FROM → TO shift to every inode's original state.
    Rollback,
}

/// How ids are judged in this run.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    /// The shift's translation, FROM → TO (also in a rollback).
    pub tr: &'a Translation,
    pub direction: Direction,
    /// FROM and TO share host ids.
    pub overlap: bool,
    /// An earlier run may have changed inodes: ids in TO's ranges are done, not outliers.
    pub partial: bool,
}

/// What to do with one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Map(u32),
    Done,
    Outlier,
}

impl Rules<'_> {
    fn fate(&self, kind: IdKind, id: u32) -> Fate {
        let fwd = self.tr.apply(kind, id);
        let back = self.tr.unapply(kind, id);
        match self.direction {
            Direction::Forward => match (fwd, back) {
                (Some(new), _) => Fate::Map(new),
                (None, Some(_)) if self.partial => Fate::Done,
                _ => Fate::Outlier,
            },
            // An inode the forward run changed so that its ids lie in FROM too has a record;
            // without one, such ids were never changed and stay.
            Direction::Rollback => match (back, fwd) {
                (Some(old), None) => Fate::Map(old),
                (Some(old), Some(_)) if !self.overlap => Fate::Map(old),
                (_, Some(_)) => Fate::Done,
                (None, None) => Fate::Outlier,
            },
        }
    }

    /// The fate as a translation: mapped ids change, all others stay.
    fn fresh(&self, kind: IdKind, id: u32) -> Option<u32> {
        Some(match self.fate(kind, id) {
            Fate::Map(new) => new,
            _ => id,
        })
    }
}

/// How a record's start ids become its goal ids.
#[derive(Clone, Copy, Debug)]
enum Xlate {
    /// FROM → TO.
    Forward,
    /// TO → FROM: undoing the forward shift.
    Back,
    /// The rollback's rule for ids without a record.
    Rollback,
}

/// A record that speaks for an inode in this run.
struct Speaks {
    start: Original,
    goal: Original,
    xlate: Xlate,
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
    from: (u32, u32),
    uid: u32,
    gid: u32,
    chown: bool,
    mode: Option<u32>,
    caps: Option<Vec<u8>>,
    acl_access: Option<Vec<u8>>,
    acl_default: Option<Vec<u8>>,
    /// The record to journal before the first step, if the inode needs one.
    record: Option<(RecordKind, Original)>,
    /// The step plan to journal (synced with the record) before the first step: the chown
    /// takes what a later step writes back.
    step_plan: Option<StepPlan>,
    /// Note each step of the owner, mode and capability as it is done (`s DEV INO STEP`): a step
    /// plan is in force for the inode.
    tracked: bool,
}

impl Plan {
    fn steps(&self) -> usize {
        [
            self.chown,
            self.mode.is_some(),
            self.caps.is_some(),
            self.acl_access.is_some(),
            self.acl_default.is_some(),
        ]
        .iter()
        .filter(|&&s| s)
        .count()
    }

    fn describe(&self, path: &Path) -> String {
        let mut parts = Vec::new();
        if self.chown {
            parts.push(format!(
                "owner {}:{} -> {}:{}",
                self.from.0, self.from.1, self.uid, self.gid
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
        format!("{}: {}", escape_path(path), parts.join(", "))
    }
}

/// Translates the ids of a state (owner, capability rootid, ACL entries) with `f`
/// (`None` = keep the id). Fails on an undecodable value or an ACL that would name one id twice.
fn translate(
    o: &Original,
    f: &dyn Fn(IdKind, u32) -> Option<u32>,
) -> Result<Original, (&'static str, String)> {
    let id = |kind, x| f(kind, x).unwrap_or(x);
    let caps = match &o.caps {
        None => None,
        Some(c) => Some(
            caps::remap(c, |root| f(IdKind::Uid, root))
                .map_err(|e| ("decode capability", e.to_string()))?
                .unwrap_or_else(|| c.clone()),
        ),
    };
    let remap_acl = |v: &Option<Vec<u8>>| -> Result<Option<Vec<u8>>, (&'static str, String)> {
        let Some(bytes) = v else { return Ok(None) };
        let r =
            acl::remap(bytes, |k, x| Some(id(k, x))).map_err(|e| ("decode ACL", e.to_string()))?;
        let value = r.value.unwrap_or_else(|| bytes.clone());
        if let Some((kind, dup)) = acl::duplicate(&value) {
            return Err((
                "remap ACL",
                format!(
                    "its ACL would name {} {dup} twice (an entry maps onto one already there); \
                     left as it is",
                    kind.name()
                ),
            ));
        }
        Ok(Some(value))
    };
    Ok(Original {
        btime: o.btime,
        uid: id(IdKind::Uid, o.uid),
        gid: id(IdKind::Gid, o.gid),
        mode: o.mode,
        caps,
        acl_access: remap_acl(&o.acl_access)?,
        acl_default: remap_acl(&o.acl_default)?,
    })
}

/// The mode a plan writes back: `eff`'s setuid/setgid bits, after a chown (which clears them)
/// or where the inode `cur` lacks them; never on a symlink or a directory.
fn mode_step(eff: &Original, cur: &Original, chown: bool, st: &Stat) -> Option<u32> {
    let want = eff.mode & 0o7777;
    let plain = !st.is_symlink() && !st.is_dir();
    (plain && want & SETID != 0 && (chown || want != cur.mode & 0o7777)).then_some(want)
}

/// Everything the shift visitor needs; counters and lists fill up as the walk goes.
pub struct ShiftVisitor<'a> {
    pub rules: Rules<'a>,
    pub dry_run: bool,
    pub verbose: bool,
    pub forward: &'a Records,
    pub rollback: &'a Records,
    pub journal: Option<&'a Journal>,
    /// The step plans in force (from the journal of the pending shift).
    pub plans: &'a Plans,
    /// The tree's losses: the known ones are checked, the ones found are added.
    pub ledger: &'a Ledger<'a>,
    pub reporter: &'a dyn Reporter,
    /// The map of the user namespace the shift runs in, `None` in the initial one: a value
    /// naming an id outside it could not be written back, so its inode is left untouched.
    pub namespace: Option<IdMap>,
    /// When the pending shift began (ns since the epoch): in a rollback, an inode born since
    /// then without a record was not changed by the shift and is left.
    pub born_since: Option<i128>,
    links: LinkSet,
    pub stats: Stats,
    outliers: Mutex<BTreeMap<(IdKind, u32), (u64, PathBuf)>>,
    errors: Mutex<Vec<InodeError>>,
    mounts: Mutex<Vec<PathBuf>>,
    group: Mutex<Group>,
    /// The inodes of `plans` the walk saw.
    plans_seen: Mutex<HashSet<(u64, u64)>>,
}

/// How many per-inode errors are kept for the summary (all are counted and reported).
const MAX_KEPT_ERRORS: usize = 1000;

/// A group commit is written once this many plans, or plans of this many directories (each
/// holds its directory open), wait for their records.
const GROUP_PLANS: usize = 4096;
const GROUP_DIRS: usize = 256;

/// Plans waiting for their records to be written and synced together.
#[derive(Default)]
struct Group {
    text: String,
    plans: usize,
    dirs: Vec<(std::os::fd::OwnedFd, PathBuf, Vec<Plan>)>,
}

impl<'a> ShiftVisitor<'a> {
    pub fn new(
        rules: Rules<'a>,
        forward: &'a Records,
        rollback: &'a Records,
        plans: &'a Plans,
        journal: Option<&'a Journal>,
        ledger: &'a Ledger<'a>,
        reporter: &'a dyn Reporter,
    ) -> ShiftVisitor<'a> {
        ShiftVisitor {
            rules,
            dry_run: journal.is_none(),
            verbose: false,
            forward,
            rollback,
            journal,
            plans,
            ledger,
            reporter,
            namespace: None,
            born_since: None,
            links: LinkSet::new(),
            stats: Stats::default(),
            outliers: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(Vec::new()),
            mounts: Mutex::new(Vec::new()),
            group: Mutex::new(Group::default()),
            plans_seen: Mutex::new(HashSet::new()),
        }
    }

    /// The step plans in force whose inodes the walk did not see.
    pub fn unseen_plans(&self) -> Vec<((u64, u64), &StepPlan)> {
        let seen = self.plans_seen.lock().unwrap_or_else(|e| e.into_inner());
        self.plans
            .iter()
            .filter(|(key, _)| !seen.contains(key))
            .map(|(key, plan)| (*key, plan))
            .collect()
    }

    pub fn outliers(&self) -> Vec<Outlier> {
        let map = self.outliers.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(&(kind, id), (n, path))| Outlier {
                kind: kind.name(),
                id,
                unmapped: self
                    .namespace
                    .as_ref()
                    .is_some_and(|ns| ns.to_host(kind, id).is_none()),
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

    /// The inode's ids, mode and the xattrs a shift touches, as they are now.
    fn read_current(&self, at: &At<'_>, st: &Stat) -> Result<Original, (&'static str, Errno)> {
        let mut orig = Original {
            btime: st.btime_ns,
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

    /// Counts the outliers and certainly-unshifted ids of a state judged afresh.
    fn judge(&self, cur: &Original, at: &At<'_>) -> bool {
        let mut outlier = false;
        let mut from_only = false;
        for (kind, id) in [(IdKind::Uid, cur.uid), (IdKind::Gid, cur.gid)] {
            match self.rules.fate(kind, id) {
                Fate::Outlier => {
                    self.outlier(kind, id, at);
                    outlier = true;
                }
                Fate::Map(_) => {
                    from_only |= self.rules.direction == Direction::Forward
                        && self.rules.tr.unapply(kind, id).is_none();
                }
                Fate::Done => {}
            }
        }
        for value in [&cur.acl_access, &cur.acl_default].into_iter().flatten() {
            for e in acl::decode(value).unwrap_or_default() {
                if let Some(kind) = e.id_kind() {
                    if self.rules.fate(kind, e.id) == Fate::Outlier {
                        self.stats.acl_outlier_entries.fetch_add(1, Relaxed);
                        self.outlier(kind, e.id, at);
                    }
                }
            }
        }
        if outlier {
            self.stats.outlier_inodes.fetch_add(1, Relaxed);
        }
        if from_only {
            self.stats.from_only.fetch_add(1, Relaxed);
        }
        outlier
    }

    /// The record that speaks for this inode in this run, if one does: it must have been taken
    /// from this very inode (device, inode, birth time), and the inode must still hold, for at
    /// least one of its owner and group, the record's start or goal id.
    fn recorded(
        &self,
        key: (u64, u64),
        st: &Stat,
    ) -> Result<Option<Speaks>, (&'static str, String)> {
        let same = |o: &Original| o.btime == st.btime_ns;
        // A forward record: the inode before the shift changed it; a rollback's record: the
        // inode before the rollback changed it. Each goes to its goal by its own run's rule,
        // and back the other way.
        let kinds = [
            (
                self.forward,
                Direction::Forward,
                Xlate::Forward,
                Xlate::Back,
            ),
            (
                self.rollback,
                Direction::Rollback,
                Xlate::Rollback,
                Xlate::Forward,
            ),
        ];
        for (records, written_by, there, back) in kinds {
            let Some(o) = records.get(&key).filter(|o| same(o)) else {
                continue;
            };
            let goal = translate(o, &|k, id| Some(self.xlate(there, k, id)))?;
            let holds = [o, &goal]
                .iter()
                .any(|x| st.uid == x.uid || st.gid == x.gid);
            if !holds {
                continue;
            }
            return Ok(Some(if self.rules.direction == written_by {
                Speaks {
                    start: o.clone(),
                    goal,
                    xlate: there,
                }
            } else {
                Speaks {
                    start: goal,
                    goal: o.clone(),
                    xlate: back,
                }
            }));
        }
        Ok(None)
    }

    /// One id through a record's translation (ids it does not map stay).
    fn xlate(&self, x: Xlate, kind: IdKind, id: u32) -> u32 {
        let tr = self.rules.tr;
        match x {
            Xlate::Forward => tr.apply(kind, id),
            Xlate::Back => tr.unapply(kind, id),
            Xlate::Rollback => match (tr.unapply(kind, id), tr.apply(kind, id)) {
                (Some(old), None) => Some(old),
                (Some(old), Some(_)) if !self.rules.overlap => Some(old),
                _ => None,
            },
        }
        .unwrap_or(id)
    }

    fn plan(&self, at: At<'_>, st: &Stat) -> Option<Plan> {
        let key = (st.dev, st.ino);
        if !st.is_dir() && st.nlink > 1 && !self.links.first(key) {
            self.stats.hardlinks_skipped.fetch_add(1, Relaxed);
            return None;
        }
        let cur = match self.read_current(&at, st) {
            Ok(o) => o,
            Err((op, e)) => {
                self.error(at.path(), op, e);
                return None;
            }
        };
        let now = Held {
            uid: cur.uid,
            gid: cur.gid,
            mode: cur.mode & 0o7777,
            caps: cur.caps.clone(),
        };
        self.ledger.check(key, st.btime_ns, &now);
        // A step plan in force: the inode is on it (what its chown took comes back), or another
        // process changed it since (the change wins; what was not written back is a loss).
        let planned_before = self.plans.get(&key);
        if planned_before.is_some() {
            self.plans_seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
        }
        let in_force = planned_before.filter(|p| p.btime == st.btime_ns);
        let (eff, continued) = match in_force {
            Some(p) => match p.position(&now, st.size, st.mtime_ns) {
                Some(position) => {
                    let held = p.effective(position, &now);
                    let eff = Original {
                        mode: cur.mode & !0o7777 | held.mode,
                        caps: held.caps,
                        ..cur.clone()
                    };
                    (eff, Some(p))
                }
                None => {
                    if let Err(e) = self.record_loss(key, st, &at, p.lost(&now)) {
                        self.error_msg(at.path(), "record loss", format!("{e}; left unchanged"));
                        return None;
                    }
                    (cur.clone(), None)
                }
            },
            None => (cur.clone(), None),
        };
        let planned = match self.recorded(key, st) {
            Ok(Some(speaks)) => {
                self.stats.records_used.fetch_add(1, Relaxed);
                self.between(&speaks, &eff, &cur, st)
            }
            // Born after the shift began and never recorded: the shift did not change it, so a
            // rollback has nothing to return it to.
            Ok(None)
                if self.rules.direction == Direction::Rollback
                    && self
                        .born_since
                        .is_some_and(|t| st.btime_ns.is_some_and(|b| b >= t)) =>
            {
                self.stats.already_done.fetch_add(1, Relaxed);
                return None;
            }
            Ok(None) => self.afresh(&eff, &cur, st, &at),
            Err(e) => Err(e),
        };
        let mut plan = match planned {
            Ok(p) => p,
            Err((op, msg)) => {
                self.error_msg(at.path(), op, msg);
                return None;
            }
        };
        if let Some(why) =
            self.cannot_write_back(plan.caps.as_deref(), [&plan.acl_access, &plan.acl_default])
        {
            self.error_msg(at.path(), "keep xattrs", why);
            return None;
        }
        if plan.steps() == 0 && plan.record.is_none() {
            self.stats.already_done.fetch_add(1, Relaxed);
            return None;
        }
        self.track(&mut plan, &now, &eff, continued, st, &at);
        plan.name = at.name.map(|n| n.to_owned());
        plan.key = key;
        plan.symlink = st.is_symlink();
        Some(plan)
    }

    /// Another process changed an inode after its plan's chown, before what the chown took was
    /// written back: the loss goes to the tree's list (durably, before the plan is retired).
    fn record_loss(
        &self,
        key: (u64, u64),
        st: &Stat,
        at: &At<'_>,
        lost: super::steps::Lost,
    ) -> Result<(), String> {
        if !lost.is_empty() {
            let loss = Loss {
                key,
                btime: st.btime_ns,
                lost,
                path: at.path(),
            };
            self.ledger.found(loss).map_err(|e| e.to_string())?;
        }
        if let (Some(j), false) = (self.journal, self.dry_run) {
            j.retire(key).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Decides how the plan's steps are journaled: a new step plan where its chown takes what
    /// a later step writes back (or where it would leave the inode otherwise than the plan in
    /// force), and notes after each step while a step plan is in force.
    fn track(
        &self,
        plan: &mut Plan,
        now: &Held,
        eff: &Original,
        continued: Option<&StepPlan>,
        st: &Stat,
        at: &At<'_>,
    ) {
        if st.is_symlink() || st.is_dir() {
            return; // a chown takes nothing from them
        }
        let end = Held {
            uid: plan.uid,
            gid: plan.gid,
            mode: plan.mode.unwrap_or(if plan.chown {
                after_chown(now.mode)
            } else {
                now.mode
            }),
            caps: match (&plan.caps, plan.chown) {
                (Some(c), _) => Some(c.clone()),
                (None, true) => None,
                (None, false) => now.caps.clone(),
            },
        };
        let restores = plan.mode.is_some() || plan.caps.is_some();
        let fresh =
            StepPlan::needed(now, &end) || (restores && continued.is_some_and(|p| p.end != end));
        if fresh {
            let owed = Held {
                mode: eff.mode & 0o7777,
                caps: eff.caps.clone(),
                ..now.clone()
            };
            let mut step_plan =
                StepPlan::new(st.btime_ns, (st.size, st.mtime_ns), now.clone(), owed, end);
            step_plan.path = at.path();
            plan.step_plan = Some(step_plan);
        }
        plan.tracked = fresh || (restores && continued.is_some());
    }

    /// The plan for an inode no record speaks for: every id judged by what it is now. `eff` is
    /// the inode as it should be (what a chown of an interrupted run took, back), `cur` as it is.
    fn afresh(
        &self,
        eff: &Original,
        cur: &Original,
        st: &Stat,
        at: &At<'_>,
    ) -> Result<Plan, (&'static str, String)> {
        self.judge(eff, at);
        let goal = translate(eff, &|k, id| self.rules.fresh(k, id))?;
        let chown = (goal.uid, goal.gid) != (cur.uid, cur.gid);
        let mode = mode_step(eff, cur, chown, st);
        let caps = goal
            .caps
            .clone()
            .filter(|c| chown || Some(c) != cur.caps.as_ref());
        let changed =
            |a: &Option<Vec<u8>>, b: &Option<Vec<u8>>| (a != b).then(|| a.clone()).flatten();
        let mut plan = Plan {
            name: None,
            key: (0, 0),
            symlink: false,
            from: (cur.uid, cur.gid),
            uid: goal.uid,
            gid: goal.gid,
            chown,
            mode,
            caps,
            acl_access: changed(&goal.acl_access, &cur.acl_access),
            acl_default: changed(&goal.acl_default, &cur.acl_default),
            record: None,
            step_plan: None,
            tracked: false,
        };
        let steps = plan.steps();
        // An outlier whose id lies in TO's ranges looks shifted afterwards: recorded unchanged,
        // so that a rollback leaves it.
        let outlier_in_to = [(IdKind::Uid, eff.uid), (IdKind::Gid, eff.gid)]
            .into_iter()
            .any(|(k, id)| {
                self.rules.fate(k, id) == Fate::Outlier && self.rules.tr.unapply(k, id).is_some()
            });
        plan.record = match self.rules.direction {
            Direction::Forward
                if steps > 1 || (steps > 0 && self.rules.overlap) || outlier_in_to =>
            {
                Some((RecordKind::Forward, eff.clone()))
            }
            Direction::Rollback if steps > 1 => Some((RecordKind::Rollback, eff.clone())),
            _ => None,
        };
        Ok(plan)
    }

    /// The plan for an inode a record speaks for, from its `start` to its `goal`, judged id by
    /// id: an id at the goal stays, an id at the start goes to the goal, any other id (changed
    /// by another process since) is judged afresh. `eff` is the inode as it should be (what a
    /// chown of an interrupted run took, back: see [`super::steps`]), `cur` as it is; the mode
    /// bits and capability are `eff`'s.
    fn between(
        &self,
        sp: &Speaks,
        eff: &Original,
        cur: &Original,
        st: &Stat,
    ) -> Result<Plan, (&'static str, String)> {
        let (start, goal) = (&sp.start, &sp.goal);
        let fresh = |k, id| self.rules.fresh(k, id).unwrap_or(id);
        let one = |k, c: u32, s: u32, g: u32| {
            if c == g {
                g
            } else if c == s {
                self.xlate(sp.xlate, k, c)
            } else {
                fresh(k, c)
            }
        };
        let uid = one(IdKind::Uid, cur.uid, start.uid, goal.uid);
        let gid = one(IdKind::Gid, cur.gid, start.gid, goal.gid);
        let chown = (uid, gid) != (cur.uid, cur.gid);
        let mode = mode_step(eff, cur, chown, st);
        // A capability: its rootid judged like an id.
        let rootid = |v: &[u8]| caps::decode(v).ok().map(|c| c.rootid);
        let cap_now = |c: &Vec<u8>| -> Result<Vec<u8>, (&'static str, String)> {
            let (Some(r), s, g) = (
                rootid(c),
                start.caps.as_deref().and_then(rootid),
                goal.caps.as_deref().and_then(rootid),
            ) else {
                return Ok(c.clone());
            };
            let new = match (s, g) {
                (_, Some(g)) if r == g => r,
                (Some(s), Some(g)) if r == s => g,
                _ => fresh(IdKind::Uid, r),
            };
            caps::remap(c, |_| Some(new))
                .map(|v| v.unwrap_or_else(|| c.clone()))
                .map_err(|e| ("decode capability", e.to_string()))
        };
        let caps = match &eff.caps {
            Some(c) => Some(cap_now(c)?),
            None => None,
        }
        .filter(|c| chown || Some(c) != cur.caps.as_ref());
        // An ACL: each entry judged like an id (an entry of the goal stays, one of the start
        // goes to the goal, a new one is judged afresh).
        let acl = |g: &Option<Vec<u8>>, s: &Option<Vec<u8>>, c: &Option<Vec<u8>>| {
            let Some(bytes) = c else { return Ok(None) };
            if c == g {
                return Ok(None);
            }
            let named = |v: &Option<Vec<u8>>| -> Vec<(IdKind, u32)> {
                v.as_deref()
                    .and_then(|b| acl::decode(b).ok())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| Some((e.id_kind()?, e.id)))
                    .collect()
            };
            let (in_goal, in_start) = (named(g), named(s));
            let r = acl::remap(bytes, |k, id| {
                Some(if in_goal.contains(&(k, id)) {
                    id
                } else if in_start.contains(&(k, id)) {
                    self.xlate(sp.xlate, k, id)
                } else {
                    fresh(k, id)
                })
            })
            .map_err(|e| ("decode ACL", e.to_string()))?;
            if let Some((kind, dup)) = r.value.as_deref().and_then(acl::duplicate) {
                return Err((
                    "remap ACL",
                    format!(
                        "its ACL would name {} {dup} twice (an entry maps onto one already \
                         there); left as it is",
                        kind.name()
                    ),
                ));
            }
            Ok(r.value)
        };
        Ok(Plan {
            name: None,
            key: (0, 0),
            symlink: false,
            from: (cur.uid, cur.gid),
            uid,
            gid,
            chown,
            mode,
            caps,
            acl_access: acl(&goal.acl_access, &start.acl_access, &cur.acl_access)?,
            acl_default: acl(&goal.acl_default, &start.acl_default, &cur.acl_default)?,
            record: None,
            step_plan: None,
            tracked: false,
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
                    .is_none_or(|ns| ns.to_host(kind, id).is_some())
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
        // After each step of a step plan, a note (unsynced, never held up by a group commit):
        // a later run that finds the inode at an earlier state of the plan knows that another
        // process undid the step.
        let noted = |step: Step| -> Result<(), (&'static str, Errno)> {
            if let (true, Some(j)) = (plan.tracked, self.journal) {
                j.note(plan.key, step).map_err(|e| {
                    (
                        "write journal",
                        Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    )
                })?;
            }
            Ok(())
        };
        if plan.chown {
            crash_point();
            sysfs::chown(dir, name, plan.uid, plan.gid).map_err(|e| ("chown", e))?;
            noted(Step::Owner)?;
        }
        if let (Some(mode), Some(name)) = (plan.mode, name) {
            debug_assert!(!plan.symlink);
            crash_point();
            sysfs::chmod(dir, name, mode).map_err(|e| ("restore mode", e))?;
            noted(Step::Mode)?;
        }
        if let Some(v) = &plan.caps {
            crash_point();
            xattr::set(dir, name, caps::NAME, v).map_err(|e| ("write capability", e))?;
            noted(Step::Caps)?;
        }
        let acls = [
            (&plan.acl_access, acl::ACCESS, "write ACL"),
            (&plan.acl_default, acl::DEFAULT, "write default ACL"),
        ];
        for (value, attr, op) in acls {
            if let Some(v) = value {
                crash_point();
                xattr::set(dir, name, attr, v).map_err(|e| (op, e))?;
            }
        }
        Ok(())
    }

    /// Carries out one plan whose record, if it needs one, is durable.
    fn carry_out(&self, dir: BorrowedFd<'_>, dir_path: &Path, plan: &Plan) {
        let path_of = || match &plan.name {
            None => dir_path.to_path_buf(),
            Some(n) => dir_path.join(crate::tree::walk::os(n)),
        };
        if self.verbose && plan.steps() > 0 {
            self.reporter.change(&plan.describe(&path_of()));
        }
        if self.dry_run {
            self.count(plan);
            return;
        }
        match self.apply(dir, plan) {
            Ok(()) => self.count(plan),
            Err((op, e)) => self.error(path_of(), op, e),
        }
    }

    /// A plan left undone because its record could not be written first.
    fn left_unrecorded(&self, dir_path: &Path, plan: &Plan, e: &std::io::Error) {
        self.push_error(InodeError {
            path: match &plan.name {
                None => dir_path.to_path_buf(),
                Some(n) => dir_path.join(crate::tree::walk::os(n)),
            },
            op: "write journal",
            errno: e.raw_os_error().unwrap_or(0),
            message: format!("{e}; left unchanged"),
        });
    }

    /// Writes a group's records with one sync, then carries out its plans; never changes what
    /// could not be recorded first.
    fn commit(&self, group: Group) {
        if group.dirs.is_empty() {
            return;
        }
        let journal = self
            .journal
            .expect("records are grouped only with a journal");
        let written = journal.append(&group.text);
        for (dir, dir_path, plans) in &group.dirs {
            for plan in plans {
                match &written {
                    Ok(()) => self.carry_out(dir.as_fd(), dir_path, plan),
                    Err(e) => self.left_unrecorded(dir_path, plan, e),
                }
            }
        }
    }

    /// Commits what is still waiting; the walk calls this once it has visited every inode.
    pub fn flush(&self) {
        let group = std::mem::take(&mut *self.group.lock().unwrap_or_else(|e| e.into_inner()));
        self.commit(group);
    }

    fn error(&self, path: PathBuf, op: &'static str, errno: Errno) {
        self.push_error(InodeError {
            path,
            op,
            errno: errno as i32,
            message: errno.desc().to_string(),
        });
    }

    fn error_msg(&self, path: PathBuf, op: &'static str, message: String) {
        self.push_error(InodeError {
            path,
            op,
            errno: 0,
            message,
        });
    }

    fn push_error(&self, e: InodeError) {
        self.reporter.inode_error(&e);
        self.stats.errors.fetch_add(1, Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.len() < MAX_KEPT_ERRORS {
            errors.push(e);
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
        let (recorded, now): (Vec<Plan>, Vec<Plan>) = batch.into_iter().partition(|p| {
            (p.record.is_some() || p.step_plan.is_some()) && !self.dry_run && self.journal.is_some()
        });
        for plan in &now {
            self.carry_out(dir, dir_path, plan);
        }
        if recorded.is_empty() {
            return;
        }
        // Plans that need a record wait for a group commit: their records are written and
        // synced with other directories' in one fdatasync, then they are carried out.
        let dir = match dir.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                for plan in &recorded {
                    self.left_unrecorded(dir_path, plan, &e);
                }
                return;
            }
        };
        let full = {
            let mut group = self.group.lock().unwrap_or_else(|e| e.into_inner());
            for p in &recorded {
                if let Some((kind, o)) = &p.record {
                    group.text += &format_record(*kind, p.key, o);
                }
                if let Some(sp) = &p.step_plan {
                    group.text += &format_plan(p.key, sp);
                }
            }
            group.plans += recorded.len();
            group.dirs.push((dir, dir_path.to_path_buf(), recorded));
            (group.plans >= GROUP_PLANS || group.dirs.len() >= GROUP_DIRS)
                .then(|| std::mem::take(&mut *group))
        };
        if let Some(group) = full {
            self.commit(group);
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

    fn changed(&self, path: PathBuf) {
        self.error_msg(
            path,
            "walk",
            "its entries changed while the shift ran (added, removed or renamed): what was moved \
             in may be unshifted; run the same command again to finish"
                .into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shift::View;

    fn tr(from: &str, to: &str) -> Translation {
        Translation::new(&from.parse::<View>().unwrap(), &to.parse::<View>().unwrap()).unwrap()
    }

    #[test]
    fn fates_forward_and_back() {
        let t = tr("host", "b:0:100000:65536");
        let mut r = Rules {
            tr: &t,
            direction: Direction::Forward,
            overlap: t.overlaps(),
            partial: false,
        };
        assert!(!r.overlap);
        assert_eq!(r.fate(IdKind::Uid, 5), Fate::Map(100005));
        assert_eq!(
            r.fate(IdKind::Uid, 100005),
            Fate::Outlier,
            "fresh: an outlier"
        );
        r.partial = true;
        assert_eq!(r.fate(IdKind::Uid, 100005), Fate::Done, "resumed: done");
        assert_eq!(r.fate(IdKind::Uid, 70000), Fate::Outlier);
        r.direction = Direction::Rollback;
        assert_eq!(r.fate(IdKind::Uid, 100005), Fate::Map(5));
        assert_eq!(r.fate(IdKind::Uid, 5), Fate::Done);
        assert_eq!(r.fate(IdKind::Uid, 70000), Fate::Outlier);
    }

    #[test]
    fn overlapping_ids_are_left_by_a_rollback_without_a_record() {
        let t = tr("b:0:100000:65536", "b:0:100007:65536");
        let r = Rules {
            tr: &t,
            direction: Direction::Rollback,
            overlap: t.overlaps(),
            partial: true,
        };
        assert!(r.overlap);
        assert_eq!(
            r.fate(IdKind::Uid, 100010),
            Fate::Done,
            "in both: never changed"
        );
        assert_eq!(r.fate(IdKind::Uid, 165540), Fate::Map(165533), "only in TO");
        assert_eq!(r.fate(IdKind::Uid, 100003), Fate::Done, "only in FROM");
    }

    #[test]
    fn translate_refuses_an_acl_that_would_name_an_id_twice() {
        use acl::*;
        let bytes = encode(&[
            AclEntry {
                tag: TAG_USER_OBJ,
                perm: 6,
                id: UNDEFINED_ID,
            },
            AclEntry {
                tag: TAG_USER,
                perm: 6,
                id: 5,
            },
            AclEntry {
                tag: TAG_USER,
                perm: 4,
                id: 100005,
            },
            AclEntry {
                tag: TAG_GROUP_OBJ,
                perm: 4,
                id: UNDEFINED_ID,
            },
            AclEntry {
                tag: TAG_MASK,
                perm: 6,
                id: UNDEFINED_ID,
            },
            AclEntry {
                tag: TAG_OTHER,
                perm: 0,
                id: UNDEFINED_ID,
            },
        ]);
        let t = tr("host", "b:0:100000:65536");
        let o = Original {
            acl_access: Some(bytes),
            ..Original::default()
        };
        let err = translate(&o, &|k, id| t.apply(k, id)).unwrap_err();
        assert!(err.1.contains("uid 100005 twice"), "{err:?}");
    }
}
