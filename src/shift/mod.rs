//! `idshift shift`: remap the ownership of a whole tree from one view to another in one pass.
//!
//! A tree is seen either in the host view (ids as they are) or through a container map. For each
//! on-disk host id h of kind k, c = FROM⁻¹(h) is the container's id; TO(c) is the new host id.
//! An id FROM does not map is an outlier: left, counted and listed.

pub mod acl;
pub mod caps;
pub mod delegated;
pub mod inode;
pub mod losses;
pub mod state;
pub mod steps;

use std::fmt;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::idmap::{IdKind, IdMap, MapError};
use crate::report::escape_path;
use crate::report::Reporter;
use crate::sys::fs as sysfs;
use crate::tree::{walk, Tree};
use inode::{Direction, InodeError, Outlier, Rules, ShiftVisitor};
use losses::{Ledger, Loss};
use state::{Found, Journal, Plans};

/// How a tree's ids are read: as host ids, or as a container's ids through its map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    Host,
    Map(IdMap),
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            View::Host => f.write_str("host"),
            View::Map(m) => write!(f, "{m}"),
        }
    }
}

impl FromStr for View {
    type Err = MapError;

    fn from_str(s: &str) -> Result<View, MapError> {
        if s.trim() == "host" {
            Ok(View::Host)
        } else {
            IdMap::parse_list(s).map(View::Map)
        }
    }
}

impl View {
    /// Whether container root is host uid 0 in this view.
    fn root_is_host_root(&self) -> bool {
        match self {
            View::Host => true,
            View::Map(m) => m.to_host(IdKind::Uid, 0) == Some(0),
        }
    }
}

/// Old host id → new host id, for every id FROM maps.
#[derive(Clone, Debug)]
pub struct Translation {
    map: IdMap,
}

impl Translation {
    /// FROM⁻¹ then TO. Host → MAP is MAP itself (fuidshift's view); MAP → host its inverse.
    /// TO must map every container id FROM maps: that is checked here, before anything changes.
    pub fn new(from: &View, to: &View) -> Result<Translation> {
        let map = match (from, to) {
            (View::Host, View::Host) => {
                return Err(Error::Usage(
                    "FROM and TO are both the host view: nothing to do".into(),
                ))
            }
            (a, b) if a == b => {
                return Err(Error::Usage(format!(
                    "FROM and TO are the same map '{a}': nothing to do"
                )))
            }
            (View::Host, View::Map(m)) => m.clone(),
            (View::Map(m), View::Host) => m.inverse(),
            (View::Map(a), View::Map(b)) => {
                let (t, unmapped) = a.compose(b);
                if let Some((kind, range)) = unmapped.first() {
                    return Err(Error::Usage(format!(
                        "the TO map '{b}' does not map container {}s {range}, which the FROM map \
                         '{a}' maps: add them to TO",
                        kind.name()
                    )));
                }
                t
            }
        };
        Ok(Translation { map })
    }

    /// The new host id of old host id `id` (an id in FROM's host ranges); `None` otherwise.
    pub fn apply(&self, kind: IdKind, id: u32) -> Option<u32> {
        self.map.to_host(kind, id)
    }

    /// The old host id that `id` (an id in TO's host ranges) came from; `None` otherwise.
    pub fn unapply(&self, kind: IdKind, id: u32) -> Option<u32> {
        self.map.to_ns(kind, id)
    }

    /// Whether some host id lies in both FROM's and TO's ranges: such an id alone cannot say
    /// whether its inode was shifted already.
    pub fn overlaps(&self) -> bool {
        IdKind::BOTH.into_iter().any(|kind| {
            let entries = self.map.entries(kind);
            entries.iter().any(|a| {
                entries
                    .iter()
                    .any(|b| a.ns_range().intersect(b.host_range()).is_some())
            })
        })
    }
}

/// What to shift and how.
#[derive(Clone, Debug)]
pub struct ShiftOptions {
    pub dir: PathBuf,
    pub from: View,
    pub to: View,
    pub dry_run: bool,
    pub threads: usize,
    pub cross_mounts: bool,
    pub strict: bool,
    pub verbose: bool,
    /// Go ahead, from what the inodes hold, although a pending shift's journal cannot be used.
    pub force: bool,
    /// Inodes of the tree's loss list whose loss the user accepts (paths as given).
    pub accept_loss: Vec<PathBuf>,
}

/// A loss in the tree's list, as a run reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LostEntry {
    #[serde(serialize_with = "crate::report::ser_path")]
    pub path: PathBuf,
    /// What was lost: "its setuid bit", "its file capability", …
    pub what: String,
    /// Found by this run (not in the list before).
    pub new: bool,
}

/// The result of a shift, printed as text or JSON (`"schema": 2`, described in the README).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub schema: u32,
    #[serde(serialize_with = "crate::report::ser_path")]
    pub dir: PathBuf,
    #[serde(serialize_with = "crate::report::ser_view")]
    pub from: View,
    #[serde(serialize_with = "crate::report::ser_view")]
    pub to: View,
    pub dry_run: bool,
    /// The tree records TO, no shift was pending, and the walk found nothing to change.
    pub already_shifted: bool,
    /// An interrupted run of the same shift was finished.
    pub resumed: bool,
    /// A pending shift was rolled back (this run was its exact reverse).
    pub rolled_back: bool,
    /// Journal records of the pending shift this run could use.
    pub records: u64,
    pub inodes: u64,
    pub changed: u64,
    pub already_done: u64,
    pub hardlinks_skipped: u64,
    pub modes_restored: u64,
    pub caps_rewritten: u64,
    pub acls_rewritten: u64,
    pub outlier_inodes: u64,
    pub acl_outlier_entries: u64,
    pub outliers: Vec<Outlier>,
    #[serde(serialize_with = "crate::report::ser_paths")]
    pub mounts_skipped: Vec<PathBuf>,
    pub error_count: u64,
    pub errors: Vec<InodeError>,
    /// The tree's losses still standing: what the chown of an interrupted run took from files
    /// changed since (exit 1 while any is listed).
    pub lost: Vec<LostEntry>,
    /// Losses of the list that the files hold again, and that `--accept-loss` accepted:
    /// cleared from the list.
    pub losses_restored: u64,
    pub losses_accepted: u64,
    pub warnings: Vec<String>,
    pub seconds: f64,
    pub inodes_per_second: f64,
}

impl Summary {
    fn new(o: &ShiftOptions) -> Summary {
        Summary {
            schema: 2,
            dir: o.dir.clone(),
            from: o.from.clone(),
            to: o.to.clone(),
            dry_run: o.dry_run,
            already_shifted: false,
            resumed: false,
            rolled_back: false,
            records: 0,
            inodes: 0,
            changed: 0,
            already_done: 0,
            hardlinks_skipped: 0,
            modes_restored: 0,
            caps_rewritten: 0,
            acls_rewritten: 0,
            outlier_inodes: 0,
            acl_outlier_entries: 0,
            outliers: Vec::new(),
            mounts_skipped: Vec::new(),
            error_count: 0,
            errors: Vec::new(),
            lost: Vec::new(),
            losses_restored: 0,
            losses_accepted: 0,
            warnings: Vec::new(),
            seconds: 0.0,
            inodes_per_second: 0.0,
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        use crate::report::escape_path;
        let dir = escape_path(&self.dir);
        let mut out = String::new();
        let verb = if self.dry_run {
            "would change"
        } else {
            "changed"
        };
        if self.already_shifted {
            return format!(
                "{dir}: already shifted to '{}': {} inodes checked, nothing to do\n",
                self.to, self.inodes
            ) + &self.render_losses();
        }
        let how = if self.rolled_back {
            format!(
                " (rolled back the pending shift from '{}' to '{}', {} journal records)",
                self.to, self.from, self.records
            )
        } else if self.resumed {
            format!(
                " (resumed: {} already done, {} journal records)",
                self.already_done, self.records
            )
        } else {
            String::new()
        };
        out += &format!(
            "{dir}: {} inodes scanned, owner {verb} on {}{how}\n",
            self.inodes, self.changed,
        );
        out += &format!(
            "  setuid/setgid restored: {}, capabilities rewritten: {}, ACLs rewritten: {}, hardlinks seen again: {}\n",
            self.modes_restored, self.caps_rewritten, self.acls_rewritten, self.hardlinks_skipped
        );
        if self.outlier_inodes > 0 || self.acl_outlier_entries > 0 {
            out += &format!(
                "  outliers left as they are: {} inodes, {} ACL entries; ids outside FROM:\n",
                self.outlier_inodes, self.acl_outlier_entries
            );
            for o in self.outliers.iter().take(20) {
                let id = if o.unmapped {
                    format!(
                        "{} (the overflow id: its real owner is outside your delegated ranges)",
                        o.id
                    )
                } else {
                    o.id.to_string()
                };
                out += &format!(
                    "    {} {id}: {} (e.g. {})\n",
                    o.kind,
                    o.inodes,
                    escape_path(&o.example)
                );
            }
            if self.outliers.len() > 20 {
                out += &format!("    … and {} more ids\n", self.outliers.len() - 20);
            }
        }
        for m in &self.mounts_skipped {
            out += &format!(
                "  mount point left alone (use --cross-mounts): {}\n",
                escape_path(m)
            );
        }
        if self.error_count > 0 {
            let (finish, back) = ways_out(&self.dir, &self.from, &self.to);
            out += &format!(
                "  {} inodes could not be changed (listed above); the shift stays pending: fix \
                 the cause and run the same command again ({finish}), or its reverse ({back})\n",
                self.error_count
            );
        }
        out += &self.render_losses();
        out += &format!(
            "  {:.2} s, {:.0} inodes/s\n",
            self.seconds, self.inodes_per_second
        );
        out
    }

    fn render_losses(&self) -> String {
        use crate::report::escape_path;
        let mut out = String::new();
        let cleared = [
            (self.losses_restored, "restored on disk"),
            (self.losses_accepted, "accepted"),
        ];
        for (n, how) in cleared.into_iter().filter(|(n, _)| *n > 0) {
            out += &format!("  losses cleared from the list, {how}: {n}\n");
        }
        if !self.lost.is_empty() {
            out += &format!(
                "  {} files lost what the chown of an interrupted run took, because they were \
                 changed before it could be written back (listed above); restore it by hand, or \
                 accept the loss with --accept-loss PATH\n",
                self.lost.len()
            );
            for l in self.lost.iter().take(20) {
                out += &format!("    {}: {}\n", escape_path(&l.path), l.what);
            }
            if self.lost.len() > 20 {
                out += &format!("    … and {} more\n", self.lost.len() - 20);
            }
        }
        out
    }
}

/// The test hook behind `IDSHIFT_CRASH_AFTER_STEPS=N`: the process kills itself with SIGKILL
/// before its Nth change to the disk (journal writes, chown, chmod, xattr writes, the final
/// bookkeeping), so tests can check that the same command finishes the job from any point.
/// Only in builds with debug assertions (the test builds); a release binary has no such hook.
#[cfg(debug_assertions)]
pub(crate) fn crash_point() {
    use std::sync::OnceLock;
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static STEPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let limit = LIMIT.get_or_init(|| {
        std::env::var("IDSHIFT_CRASH_AFTER_STEPS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(n) = *limit {
        if STEPS.fetch_add(1, Relaxed) + 1 >= n {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::SIGKILL);
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub(crate) fn crash_point() {}

/// The two commands that end a pending shift `from` → `to` of `dir`: finishing it, and rolling
/// it back.
pub fn ways_out(dir: &Path, from: &View, to: &View) -> (String, String) {
    let dir = escape_path(dir);
    let cmd = |a: &View, b: &View| match (a, b) {
        (View::Host, View::Map(m)) => format!("idshift shift {dir} {m}"),
        (View::Map(m), View::Host) => format!("idshift shift -r {dir} {m}"),
        (a, b) => format!("idshift shift {dir} --from {a} --to {b}"),
    };
    (cmd(from, to), cmd(to, from))
}

/// Where a shift stands when the walk begins.
struct Start {
    journal: Option<Journal>,
    direction: Direction,
    /// An earlier run may have changed inodes.
    partial: bool,
    /// The tree records TO already: the walk verifies that claim.
    verify_record: bool,
}

/// Reads what lies beside the tree and decides how this run starts: fresh, resuming the
/// pending shift, or rolling it back. Refuses (exit 3) a different shift on a pending tree,
/// and anything the disk and the hints together cannot settle.
fn start(
    tree: &Tree,
    opts: &ShiftOptions,
    overlap: bool,
    reporter: &dyn Reporter,
    summary: &mut Summary,
) -> Result<Start> {
    let dir = escape_path(&opts.dir);
    let journal_path = escape_path(&tree.journal_path());
    let mut warn = |text: String| {
        reporter.warning(&text);
        summary.warnings.push(text);
    };
    let marked = matches!(
        crate::sys::xattr::get(tree.root.as_fd(), None, state::PENDING_XATTR),
        Ok(Some(_))
    );
    let mut partial = false;
    match state::find(tree)? {
        Found::Pending(j) => {
            let h = &j.header;
            let direction = if h.from == opts.from && h.to == opts.to {
                Some(Direction::Forward)
            } else if h.from == opts.to && h.to == opts.from {
                Some(Direction::Rollback)
            } else {
                None
            };
            match direction {
                // A completed shift's leftover journal: its reverse is a new shift, not a
                // rollback.
                Some(Direction::Rollback) if j.done => {
                    if !opts.dry_run {
                        state::remove(tree)?;
                    }
                }
                Some(direction) => {
                    return Ok(Start {
                        journal: Some(*j),
                        direction,
                        partial: true,
                        verify_record: false,
                    })
                }
                // A completed shift's leftover journal: another shift may begin.
                None if j.done => {
                    if !opts.dry_run {
                        state::remove(tree)?;
                    }
                }
                None => {
                    let (finish, back) = ways_out(&opts.dir, &h.from, &h.to);
                    return Err(Error::Refused(format!(
                        "{dir}: an unfinished shift {h} is pending (journal {journal_path}); \
                         finish it ({finish}) or roll it back ({back}) first"
                    )));
                }
            }
        }
        Found::Nothing => {}
        Found::Abandoned(h) => {
            if !opts.dry_run {
                state::remove(tree)?;
            }
            // The shift was killed before it changed anything: its reverse has nothing to
            // roll back (and must not shift the untouched tree the other way).
            if h.from == opts.to && h.to == opts.from {
                return Err(Error::Refused(format!(
                    "{dir}: the shift {h} was killed before it changed anything: there is \
                     nothing to roll back (its journal is removed); nothing was changed"
                )));
            }
        }
        Found::Unusable { why, maybe_ours } => {
            let ours = maybe_ours || marked;
            if overlap && ours {
                return Err(Error::Refused(format!(
                    "{journal_path}: not used: {why}; with overlapping FROM and TO ranges its \
                     records are needed to tell shifted inodes from unshifted ones, so nothing \
                     was changed (run the shift as the journal's owner)"
                )));
            }
            if ours && !opts.force {
                return Err(Error::Refused(format!(
                    "{journal_path}: not used: {why}; it may hold an unfinished shift of this \
                     tree, whose records this run cannot use: finish or roll it back as the \
                     journal's owner, or give --force to shift from what the inodes hold now \
                     (setuid bits and capabilities an interrupted run had not written back yet \
                     are then lost); nothing was changed"
                )));
            }
            partial = ours;
            if opts.dry_run {
                warn(format!(
                    "{journal_path}: not used: {why}; a real run moves it aside"
                ));
            } else {
                let aside = state::set_aside(tree)?;
                warn(format!(
                    "{journal_path}: not used: {why}; moved aside to {}",
                    escape_path(&aside)
                ));
            }
        }
        Found::Lost => {
            if overlap || !opts.force {
                return Err(Error::Refused(format!(
                    "{dir}: marked as under a shift (user.idshift.pending), but no journal of it \
                     is at {journal_path} (removed, or the tree was reached through another \
                     path): which shift is pending cannot be told; run it through the path it \
                     was started on{}; nothing was changed",
                    if overlap {
                        ""
                    } else {
                        ", or give --force to shift from what the inodes hold now (setuid bits \
                         and capabilities an interrupted run had not written back are then lost)"
                    }
                )));
            }
            partial = true;
            warn(format!(
                "--force: {dir} is marked as under a shift, but its journal {journal_path} is \
                 gone: shifting from what each inode holds"
            ));
        }
    }
    let mut verify_record = false;
    if let Some(rec) = state::recorded(tree.root.as_fd()) {
        if rec == opts.to {
            partial = true;
            verify_record = true;
        } else if rec != opts.from {
            return Err(Error::Refused(format!(
                "{dir}: the tree records map '{rec}', not the FROM map '{}'; shift from '{rec}', \
                 or, if another tool changed the tree since, remove the stale record \
                 (setfattr -x user.idshift.map {dir})",
                opts.from
            )));
        }
    }
    Ok(Start {
        journal: None,
        direction: Direction::Forward,
        partial,
        verify_record,
    })
}

/// Runs a shift (or the rollback of a pending one), reporting per-inode events to `reporter`.
/// `Err(Error::Refused)` when the tree may not be shifted as asked (exit 3).
pub fn run(opts: &ShiftOptions, reporter: &dyn Reporter) -> Result<Summary> {
    let started = Instant::now();
    let tr = Translation::new(&opts.from, &opts.to)?;
    let tree = Tree::open(&opts.dir)?;
    tree.lock()?;
    sysfs::raise_nofile_limit();
    let mut summary = Summary::new(opts);
    let dir = escape_path(&opts.dir);
    let overlap = tr.overlaps();
    if overlap && tree.stat.btime_ns.is_none() {
        return Err(Error::Refused(format!(
            "{dir}: FROM and TO share host ids, and this filesystem keeps no birth times to tell \
             an inode from a new one that reuses its number after a crash; shift in two steps \
             through a free range instead; nothing was changed"
        )));
    }
    let listed = losses::read(&tree)?;
    let accepted = accepted(&opts.accept_loss, &listed, &tree)?;
    if let Some(text) = &listed.unused {
        reporter.warning(text);
        summary.warnings.push(text.clone());
    }
    let begin = start(&tree, opts, overlap, reporter, &mut summary)?;
    let ledger = Ledger::new((!opts.dry_run).then_some(&tree), listed, accepted);
    // In a rollback the rules speak of the pending shift, TO → FROM undone.
    let pending_tr;
    let fwd = match begin.direction {
        Direction::Forward => &tr,
        Direction::Rollback => {
            pending_tr = Translation::new(&opts.to, &opts.from)?;
            &pending_tr
        }
    };
    let rules = Rules {
        tr: fwd,
        direction: begin.direction,
        overlap,
        partial: begin.partial,
    };
    summary.resumed = begin.journal.is_some() && begin.direction == Direction::Forward;
    summary.rolled_back = begin.direction == Direction::Rollback;
    if summary.resumed || summary.rolled_back {
        let j = begin.journal.as_ref().expect("a pending journal");
        summary.records = (j.forward.len() + j.rollback.len()) as u64;
    }
    if opts.to.root_is_host_root() && !opts.from.root_is_host_root() {
        let text = "container root becomes host uid 0: the container's setuid-root files are \
                    now setuid root on the host";
        reporter.warning(text);
        summary.warnings.push(text.into());
    }
    let pool = walk::pool(opts.threads)?;
    let empty = state::Records::new();
    let no_plans = Plans::new();
    let namespace = crate::idmap::proc::current_map()?;

    // A read-only pass first where the run must know the whole tree before changing it:
    // --strict (outliers), or a record of TO that overlapping ranges cannot check inode by inode.
    let check_overlap = begin.verify_record && overlap;
    if opts.strict || (begin.journal.is_none() && check_overlap) {
        let mut check = ShiftVisitor::new(rules, &empty, &empty, &no_plans, None, &ledger, &Quiet);
        check.namespace = namespace.clone();
        walk::walk(
            &pool,
            tree.root.as_fd(),
            &opts.dir,
            opts.cross_mounts,
            &check,
        )
        .map_err(|e| Error::sys(format!("{dir}: stat"), e))?;
        let s = &check.stats;
        let (inodes, entries) = (
            s.outlier_inodes.load(Relaxed),
            s.acl_outlier_entries.load(Relaxed),
        );
        if opts.strict && inodes + entries > 0 {
            let ids: Vec<String> = check
                .outliers()
                .iter()
                .take(10)
                .map(|o| format!("{} {}", o.kind, o.id))
                .collect();
            return Err(Error::Refused(format!(
                "{dir}: --strict: {inodes} inodes and {entries} ACL entries hold ids outside the \
                 FROM map ({}); nothing was changed",
                ids.join(", ")
            )));
        }
        if check_overlap {
            let left = s.from_only.load(Relaxed);
            if left > 0 {
                return Err(Error::Refused(format!(
                    "{dir}: the tree records map '{}', but {left} inodes hold ids only the FROM \
                     map '{}' covers: another tool changed it since, and with overlapping ranges \
                     the other inodes cannot be told apart; nothing was changed",
                    opts.to, opts.from
                )));
            }
            summary.already_shifted = true;
            summary.inodes = s.inodes.load(Relaxed);
            summary.already_done = s.already_done.load(Relaxed);
            summary.error_count = s.errors.load(Relaxed);
            summary.errors = check.errors();
            drop(check);
            summary.settled(settle_losses(ledger, &opts.dir, reporter)?);
            summary.seconds = started.elapsed().as_secs_f64();
            return Ok(summary);
        }
    }

    let journal = match (begin.journal, opts.dry_run) {
        (j @ Some(_), _) => j,
        (None, true) => None,
        (None, false) => Some(Journal::create(&tree, &opts.from, &opts.to)?),
    };
    let (forward, rollback, plans) = journal.as_ref().map_or((&empty, &empty, &no_plans), |j| {
        (&j.forward, &j.rollback, &j.plans)
    });
    if begin.direction == Direction::Rollback && tree.stat.btime_ns.is_none() {
        return Err(Error::Refused(format!(
            "{dir}: this filesystem keeps no birth times, so files created since the shift \
             began cannot be told from files it shifted: a rollback is refused; finish the \
             shift instead; nothing was changed"
        )));
    }
    let mut visitor = ShiftVisitor::new(
        rules,
        forward,
        rollback,
        plans,
        journal.as_ref(),
        &ledger,
        reporter,
    );
    visitor.born_since = journal.as_ref().map(|j| j.header.started);
    visitor.dry_run = opts.dry_run;
    visitor.verbose = opts.verbose;
    visitor.namespace = namespace;
    let total = state::recorded_inodes(tree.root.as_fd());
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| reporter.progress(&visitor.stats.inodes, total, &done));
        let walked = walk::walk(
            &pool,
            tree.root.as_fd(),
            &opts.dir,
            opts.cross_mounts,
            &visitor,
        );
        visitor.flush();
        done.store(true, Relaxed);
        walked
    })
    .map_err(|e| Error::sys(format!("{dir}: stat"), e))?;

    let s = &visitor.stats;
    summary.inodes = s.inodes.load(Relaxed);
    summary.changed = s.changed.load(Relaxed);
    summary.already_done = s.already_done.load(Relaxed);
    summary.hardlinks_skipped = s.hardlinks_skipped.load(Relaxed);
    summary.modes_restored = s.modes_restored.load(Relaxed);
    summary.caps_rewritten = s.caps_rewritten.load(Relaxed);
    summary.acls_rewritten = s.acls_rewritten.load(Relaxed);
    summary.outlier_inodes = s.outlier_inodes.load(Relaxed);
    summary.acl_outlier_entries = s.acl_outlier_entries.load(Relaxed);
    summary.error_count = s.errors.load(Relaxed);
    summary.outliers = visitor.outliers();
    summary.errors = visitor.errors();
    summary.mounts_skipped = visitor.mounts_skipped();
    // A step plan of the pending shift whose inode this walk never saw (beyond a mount it did
    // not cross, or moved out of the tree) ends with the journal: what it still owes is listed.
    if summary.error_count == 0 && !opts.dry_run {
        for (key, plan) in visitor.unseen_plans() {
            let debt = plan.debt();
            if !debt.is_empty() {
                ledger.found(Loss {
                    key,
                    btime: plan.btime,
                    lost: debt,
                    path: plan.path.clone(),
                })?;
            }
        }
    }
    drop(visitor);
    if begin.verify_record && summary.changed > 0 {
        let text = format!(
            "{dir}: the tree recorded map '{}', but {} inodes were still in '{}' (another tool \
             changed it since): shifted them",
            opts.to, summary.changed, opts.from
        );
        reporter.warning(&text);
        summary.warnings.push(text);
    }
    if begin.verify_record && summary.changed == 0 && summary.error_count == 0 {
        summary.already_shifted = true;
    }
    // The loss list first: a crash before the journal is done leaves both, and the next run
    // finds the same.
    summary.settled(settle_losses(ledger, &opts.dir, reporter)?);
    if let (Some(j), 0) = (journal, summary.error_count) {
        if !opts.dry_run {
            // The view now on disk: TO after a shift, FROM after a rollback. A completed
            // rollback thus records FROM, and running it again is checked against that.
            j.finish(&tree, Some(&opts.to), summary.inodes)?;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.inodes_per_second = summary.inodes as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// The listed losses that `--accept-loss` names: a file of the list (by its path, or by the path
/// the list gives for it when it is gone), or the tree itself for the losses its mark says no
/// list names. A usage error for anything else.
fn accepted(paths: &[PathBuf], listed: &losses::Listed, tree: &Tree) -> Result<losses::Accepted> {
    let mut accepted = losses::Accepted::default();
    for p in paths {
        let shown = escape_path(p);
        let key = match std::fs::symlink_metadata(p) {
            Ok(m) => Some((m.dev(), m.ino())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::Usage(format!("--accept-loss {shown}: {e}"))),
        };
        let listed_as = |l: &&Loss| match key {
            Some(key) => l.key == key,
            None => l.path == *p,
        };
        if let Some(l) = listed.losses.iter().find(listed_as) {
            accepted.keys.insert(l.key);
        } else if key == Some((tree.stat.dev, tree.stat.ino)) && listed.unaccounted.is_some() {
            accepted.unaccounted = true;
        } else {
            return Err(Error::Usage(format!(
                "--accept-loss {shown}: the tree's loss list has no loss of this file ({} \
                 listed; `idshift status` shows them); nothing was changed",
                listed.losses.len()
            )));
        }
    }
    Ok(accepted)
}

/// The tree's loss list where nothing walks the tree (a `migrate` whose config already names
/// its rootfs's view): the losses `accept` names are cleared (unless `dry_run`), the others
/// reported one line each and returned.
pub fn listed_losses(
    dir: &Path,
    accept: &[PathBuf],
    dry_run: bool,
    reporter: &dyn Reporter,
) -> Result<Vec<LostEntry>> {
    let tree = Tree::open(dir)?;
    let listed = losses::read(&tree)?;
    if let Some(text) = &listed.unused {
        reporter.warning(text);
    }
    let accepted = accepted(accept, &listed, &tree)?;
    if !dry_run && !accept.is_empty() {
        tree.lock()?;
    }
    let ledger = Ledger::new((!dry_run).then_some(&tree), listed, accepted);
    Ok(settle_losses(ledger, dir, reporter)?.lost)
}

/// Reports each standing loss (one line); `found`: the inodes whose loss this run found.
fn report_losses(lost: &[Loss], found: &[(u64, u64)], reporter: &dyn Reporter) -> Vec<LostEntry> {
    lost.iter()
        .map(|l| {
            let shown = escape_path(&l.path);
            reporter.inode_error(&InodeError {
                path: l.path.clone(),
                op: "lost",
                errno: 0,
                message: format!(
                    "{}, taken by the chown of an interrupted run, was not written back: the \
                     file was changed before it could be (its mode, owner, content or \
                     capability); restore it by hand, or accept the loss (--accept-loss {shown})",
                    l.lost
                ),
            });
            LostEntry {
                path: l.path.clone(),
                what: l.lost.to_string(),
                new: found.contains(&l.key),
            }
        })
        .collect()
}

/// What a run's ledger came to.
struct Settled {
    lost: Vec<LostEntry>,
    restored: u64,
    accepted: u64,
}

impl Summary {
    fn settled(&mut self, s: Settled) {
        self.lost = s.lost;
        self.losses_restored = s.restored;
        self.losses_accepted = s.accepted;
    }
}

/// Ends the run's ledger of the tree `dir`: the loss list written, what stands reported (one
/// line each).
fn settle_losses(ledger: Ledger<'_>, dir: &Path, reporter: &dyn Reporter) -> Result<Settled> {
    let out = ledger.finish()?;
    let mut lost = report_losses(&out.lost, &out.found, reporter);
    if let Some(why) = out.unaccounted {
        let message = format!(
            "the tree is marked (user.idshift.losses) with setuid/setgid bits or capabilities \
             that interrupted runs' chowns took from files changed since, but {why}; check the \
             tree's setuid files and capabilities (idshift status), then accept them \
             (--accept-loss {})",
            escape_path(dir)
        );
        reporter.inode_error(&InodeError {
            path: dir.to_path_buf(),
            op: "lost",
            errno: 0,
            message: message.clone(),
        });
        lost.push(LostEntry {
            path: dir.to_path_buf(),
            what: message,
            new: false,
        });
    }
    Ok(Settled {
        lost,
        restored: out.restored.len() as u64,
        accepted: out.accepted.len() as u64,
    })
}

/// A reporter that reports nothing (read-only pre-scans).
struct Quiet;

impl Reporter for Quiet {
    fn change(&self, _: &str) {}
    fn inode_error(&self, _: &InodeError) {}
    fn warning(&self, _: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(s: &str) -> View {
        s.parse().unwrap()
    }

    #[test]
    fn host_to_map_is_the_map_and_back_is_its_inverse() {
        let fwd = Translation::new(&View::Host, &view("b:0:100000:65536")).unwrap();
        assert_eq!(fwd.apply(IdKind::Uid, 0), Some(100000));
        assert_eq!(fwd.apply(IdKind::Gid, 65535), Some(165535));
        assert_eq!(fwd.apply(IdKind::Uid, 65536), None, "outlier");
        let back = Translation::new(&view("b:0:100000:65536"), &View::Host).unwrap();
        assert_eq!(back.apply(IdKind::Uid, 100000), Some(0));
        assert_eq!(back.apply(IdKind::Uid, 0), None);
    }

    #[test]
    fn map_to_map_in_one_step_and_overlapping_ranges() {
        let t = Translation::new(&view("b:0:100000:65536"), &view("b:0:101000:65536")).unwrap();
        assert_eq!(t.apply(IdKind::Uid, 100000), Some(101000));
        assert_eq!(t.apply(IdKind::Uid, 165535), Some(166535));
        assert_eq!(t.apply(IdKind::Uid, 165536), None);
    }

    #[test]
    fn refuses_what_cannot_be_done() {
        assert!(Translation::new(&View::Host, &View::Host).is_err());
        assert!(Translation::new(&view("b:0:1:10"), &view("b:0:1:10")).is_err());
        let err = Translation::new(&view("b:0:100000:65536"), &view("b:0:200000:1000"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not map container uids 1000-65535"),
            "{err}"
        );
    }

    #[test]
    fn view_text_round_trips() {
        for s in ["host", "u:0:100000:65536 g:0:100000:65536"] {
            assert_eq!(view(s).to_string(), s);
        }
    }
}
