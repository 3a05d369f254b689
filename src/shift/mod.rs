//! `idshift shift`: remap the ownership of a whole tree from one view to another in one pass.
//!
//! A tree is seen either in the host view (ids as they are) or through a container map. For each
//! on-disk host id h of kind k, c = FROM⁻¹(h) is the container's id; TO(c) is the new host id.
//! An id FROM does not map is an outlier: left, counted and listed.

pub mod acl;
pub mod caps;
pub mod delegated;
pub mod inode;
pub mod state;
pub mod walk;

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::idmap::{IdKind, IdMap, MapError};
use crate::sys::fs as sysfs;
use inode::{InodeError, Outlier, ShiftVisitor};
use state::{Journal, Pending};

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

    /// The new host id of old host id `id`; `None` for an outlier.
    pub fn apply(&self, kind: IdKind, id: u32) -> Option<u32> {
        self.map.to_host(kind, id)
    }
}

/// How much to show while shifting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Progress {
    /// A progress bar when stderr is a terminal.
    Auto,
    Always,
    Never,
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
    pub progress: Progress,
}

/// The result of a shift, printed as text or JSON.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub dir: PathBuf,
    pub from: String,
    pub to: String,
    pub dry_run: bool,
    /// The tree already carried TO and no shift was pending: nothing was scanned.
    pub already_shifted: bool,
    /// An interrupted run of the same shift was finished.
    pub resumed: bool,
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
    pub mounts_skipped: Vec<PathBuf>,
    pub error_count: u64,
    pub errors: Vec<InodeError>,
    pub warnings: Vec<String>,
    pub seconds: f64,
    pub inodes_per_second: f64,
}

impl Summary {
    fn new(o: &ShiftOptions) -> Summary {
        Summary {
            dir: o.dir.clone(),
            from: o.from.to_string(),
            to: o.to.to_string(),
            dry_run: o.dry_run,
            already_shifted: false,
            resumed: false,
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
            warnings: Vec::new(),
            seconds: 0.0,
            inodes_per_second: 0.0,
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verb = if self.dry_run {
            "would change"
        } else {
            "changed"
        };
        if self.already_shifted {
            return format!(
                "{}: already shifted to '{}'; nothing to do\n",
                self.dir.display(),
                self.to
            );
        }
        out += &format!(
            "{}: {} inodes scanned, owner {verb} on {}{}\n",
            self.dir.display(),
            self.inodes,
            self.changed,
            if self.resumed {
                format!(
                    " (resumed: {} done by the interrupted run)",
                    self.already_done
                )
            } else {
                String::new()
            }
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
                out += &format!(
                    "    {} {}: {} (e.g. {})\n",
                    o.kind,
                    o.id,
                    o.inodes,
                    o.example.display()
                );
            }
            if self.outliers.len() > 20 {
                out += &format!("    … and {} more ids\n", self.outliers.len() - 20);
            }
        }
        for m in &self.mounts_skipped {
            out += &format!(
                "  mount point left alone (use --cross-mounts): {}\n",
                m.display()
            );
        }
        if self.error_count > 0 {
            out += &format!(
                "  {} inodes could not be changed (listed above); fix the cause and run the same command again\n",
                self.error_count
            );
        }
        out += &format!(
            "  {:.2} s, {:.0} inodes/s\n",
            self.seconds, self.inodes_per_second
        );
        out
    }
}

/// The test hook behind `IDSHIFT_CRASH_AFTER_STEPS=N`: the process kills itself with SIGKILL
/// before its Nth change to the disk (journal writes, chown, chmod, xattr writes, the final
/// bookkeeping), so tests can check that the same command finishes the job from any point.
pub(crate) fn crash_point() {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static STEPS: AtomicU64 = AtomicU64::new(0);
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

/// A time no earlier ctime can reach and no later one can fall below: after the fine-grained
/// clock was read, wait until the coarse clock (what the kernel stamps ctimes with) is past it.
/// On filesystems with whole-second timestamps the threshold is a whole second.
fn ctime_threshold(whole_seconds: bool) -> i128 {
    use nix::time::{clock_gettime, ClockId};
    let now = |id| {
        clock_gettime(id)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0)
    };
    let mut fine = now(ClockId::CLOCK_REALTIME);
    if whole_seconds {
        fine = (fine / 1_000_000_000 + 1) * 1_000_000_000 - 1;
    }
    loop {
        let coarse = now(ClockId::CLOCK_REALTIME_COARSE);
        if coarse > fine {
            return if whole_seconds { fine + 1 } else { coarse };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Opens DIR itself, refusing a symlink in its last component and anything but a directory.
pub fn open_root(dir: &Path) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Usage(format!("{}: path contains a NUL byte", dir.display())))?;
    sysfs::open_dir(None, &c).map_err(|e| match e {
        Errno::ELOOP => Error::Usage(format!(
            "{}: is a symlink; refusing to follow it (give the real directory)",
            dir.display()
        )),
        Errno::ENOTDIR if dir.is_symlink() => Error::Usage(format!(
            "{}: is a symlink; refusing to follow it (give the real directory)",
            dir.display()
        )),
        Errno::ENOTDIR => Error::Usage(format!("{}: not a directory", dir.display())),
        Errno::ENOENT => Error::Usage(format!("{}: no such directory", dir.display())),
        e => Error::sys(format!("{}: open", dir.display()), e),
    })
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("idshift-walk-{i}"))
        .build()
        .map_err(|e| Error::Failed(format!("cannot start {threads} threads: {e}")))
}

/// Whether to show progress at all.
fn wants_progress(mode: Progress) -> bool {
    use std::io::IsTerminal;
    match mode {
        Progress::Never => false,
        Progress::Always => true,
        Progress::Auto => std::io::stderr().is_terminal(),
    }
}

/// Shows the walk's inode `counter` until `done`: a bar on a terminal, a plain line a second
/// into a log (`--progress always`). Runs on its own thread.
fn show_progress(counter: &AtomicU64, total: Option<u64>, done: &AtomicBool) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        let start = Instant::now();
        let mut last = Instant::now();
        while !done.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let n = counter.load(Relaxed);
                let rate = n as f64 / start.elapsed().as_secs_f64();
                match total {
                    Some(t) => eprintln!("idshift: {n}/{t} inodes, {rate:.0}/s"),
                    None => eprintln!("idshift: {n} inodes, {rate:.0}/s"),
                }
            }
        }
        return;
    }
    let style = |template: &str| {
        indicatif::ProgressStyle::with_template(template)
            .expect("valid template")
            .with_key(
                "rate",
                |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} inodes/s", s.per_sec());
                },
            )
    };
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n)
            .with_style(style("{bar:40} {pos}/{len} inodes  {rate}  ETA {eta}")),
        None => indicatif::ProgressBar::new_spinner()
            .with_style(style("{spinner} {pos} inodes  {rate}")),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(10));
    while !done.load(Relaxed) {
        bar.set_position(counter.load(Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}

/// Runs a shift. `Err(Error::Refused)` when the tree may not be shifted as asked (exit 3).
pub fn run(opts: &ShiftOptions) -> Result<Summary> {
    let start = Instant::now();
    let tr = Translation::new(&opts.from, &opts.to)?;
    let root = open_root(&opts.dir)?;
    let root_file = File::from(root.try_clone().map_err(|e| Error::io(&opts.dir, e))?);
    sysfs::raise_nofile_limit();
    let mut summary = Summary::new(opts);
    if opts.to.root_is_host_root() && !opts.from.root_is_host_root() {
        summary.warnings.push(
            "container root becomes host uid 0: the container's setuid-root files are now setuid root on the host"
                .into(),
        );
    }

    let pending = state::find_pending(root.as_fd(), &opts.dir)?;
    let (since_ns, records, resuming) = match pending {
        Some((p, records)) => {
            if p.from != opts.from || p.to != opts.to {
                return Err(Error::Refused(format!(
                    "{}: an unfinished shift {p} is pending (journal {}); run that shift again to finish it",
                    opts.dir.display(),
                    p.journal.display()
                )));
            }
            summary.resumed = true;
            (Some(p.since_ns), records, true)
        }
        None => {
            if let Some(rec) = state::recorded(root.as_fd()) {
                if rec == opts.to {
                    summary.already_shifted = true;
                    summary.seconds = start.elapsed().as_secs_f64();
                    return Ok(summary);
                }
                if rec != opts.from {
                    return Err(Error::Refused(format!(
                        "{}: the tree records map '{rec}', not the FROM map '{}'; shift from '{rec}' \
                         (or remove the user.idshift.map xattr if the record is stale)",
                        opts.dir.display(),
                        opts.from
                    )));
                }
            }
            (None, state::Records::new(), false)
        }
    };
    let pool = pool(opts.threads)?;

    if opts.strict && !resuming {
        let mut check = ShiftVisitor::new(&tr, &records, None);
        check.since_ns = since_ns;
        walk::walk(
            &pool,
            root.try_clone().map_err(|e| Error::io(&opts.dir, e))?,
            &opts.dir,
            opts.cross_mounts,
            &check,
        )
        .map_err(|e| Error::sys(format!("{}: stat", opts.dir.display()), e))?;
        let n = check.stats.outlier_inodes.load(Relaxed)
            + check.stats.acl_outlier_entries.load(Relaxed);
        if n > 0 {
            let ids: Vec<String> = check
                .outliers()
                .iter()
                .take(10)
                .map(|o| format!("{} {}", o.kind, o.id))
                .collect();
            return Err(Error::Refused(format!(
                "{}: --strict: {n} ids outside the FROM map ({}); nothing was changed",
                opts.dir.display(),
                ids.join(", ")
            )));
        }
    }

    // Set up the journal (not in a dry run): header with the threshold, then DIR's own record,
    // then the pending mark on DIR.
    let mut journal = None;
    let mut pend = None;
    let mut since_ns = since_ns;
    let mut records = records;
    if !opts.dry_run {
        let path = state::journal_path(&opts.dir)?;
        if resuming {
            journal = Some(Journal::reopen(&path)?);
            pend = Some(Pending {
                from: opts.from.clone(),
                to: opts.to.clone(),
                since_ns: since_ns.expect("resuming has a threshold"),
                journal: path,
            });
        } else {
            let st = sysfs::statx(root.as_fd(), None)
                .map_err(|e| Error::sys(format!("{}: stat", opts.dir.display()), e))?;
            let whole = st.ctime_ns % 1_000_000_000 == 0 && st.mtime_ns % 1_000_000_000 == 0;
            let p = Pending {
                from: opts.from.clone(),
                to: opts.to.clone(),
                since_ns: ctime_threshold(whole),
                journal: path,
            };
            let j = Journal::create(&p)?;
            // DIR's own original: the pending mark changes DIR's ctime.
            let root_orig = read_root_original(&root, &st)?;
            j.append(&state::format_record((st.dev, st.ino), &root_orig))
                .map_err(|e| Error::io(&p.journal, e))?;
            records.insert((st.dev, st.ino), root_orig);
            state::mark_pending(&root_file, &p)?;
            since_ns = Some(p.since_ns);
            journal = Some(j);
            pend = Some(p);
        }
    }

    let mut visitor = ShiftVisitor::new(&tr, &records, journal.as_ref());
    visitor.dry_run = opts.dry_run;
    visitor.verbose = opts.verbose;
    visitor.since_ns = since_ns;
    visitor.resuming = resuming;
    visitor.namespace = crate::userns::current_map()?;
    let total = state::recorded_inodes(root.as_fd());
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        if wants_progress(opts.progress) {
            scope.spawn(|| show_progress(&visitor.stats.inodes, total, &done));
        }
        let walked = walk::walk(&pool, root, &opts.dir, opts.cross_mounts, &visitor);
        done.store(true, Relaxed);
        walked
    })
    .map_err(|e| Error::sys(format!("{}: stat", opts.dir.display()), e))?;

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
    if let (Some(p), 0) = (&pend, summary.error_count) {
        state::finish(&root_file, p, summary.inodes)?;
    }
    summary.seconds = start.elapsed().as_secs_f64();
    summary.inodes_per_second = summary.inodes as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// DIR's own original state, for its journal record.
fn read_root_original(root: &OwnedFd, st: &sysfs::Stat) -> Result<state::Original> {
    let get = |attr| {
        crate::sys::xattr::get(root.as_fd(), None, attr)
            .map_err(|e| Error::sys("reading the directory's ACLs", e))
    };
    Ok(state::Original {
        uid: st.uid,
        gid: st.gid,
        mode: st.mode,
        caps: None,
        acl_access: get(acl::ACCESS)?,
        acl_default: get(acl::DEFAULT)?,
    })
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

    #[test]
    fn threshold_is_past_now() {
        use nix::time::{clock_gettime, ClockId};
        let before = clock_gettime(ClockId::CLOCK_REALTIME).unwrap();
        let t = ctime_threshold(false);
        let before = before.tv_sec() as i128 * 1_000_000_000 + before.tv_nsec() as i128;
        assert!(t > before);
        let w = ctime_threshold(true);
        assert_eq!(w % 1_000_000_000, 0);
        assert!(w > before);
    }
}
