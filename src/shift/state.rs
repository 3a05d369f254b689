//! What a shift keeps outside the tree's contents, so that a killed shift can be finished or
//! rolled back:
//!
//! - a journal beside DIR (`PARENT/.NAME.idshift-journal`): a header naming the tree (device,
//!   inode, birth time and a random id), the shift (FROM, TO) and the map recorded on DIR before
//!   it began; then one record per inode whose change the disk alone could not finish or tell
//!   apart afterwards, holding its identity and original owner, mode, capability and ACLs,
//!   written and synced before the inode's first change; for an inode whose chown takes what
//!   later steps write back, the run's step plan (`p`, synced with the record, see
//!   [`super::steps`]) and a note after each step (`s`, unsynced); `x` when a plan no longer
//!   speaks for its inode (another process changed it: the loss is in the tree's loss list);
//! - `user.idshift.pending` on DIR: the journal's random id (an identifier to compare, never a
//!   path), where the filesystem has user xattrs;
//! - `user.idshift.map` on DIR once a shift is complete: the view now on disk (a claim the shift
//!   checks, never a reason to skip work).
//!
//! The journal is read only when idshift could have written it itself: a regular file reached
//! without following a symlink, owned by the caller, writable by nobody else, one link, of a
//! bounded size. Anything else beside the tree is hostile input and is not read.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Mutex;

use nix::errno::Errno;

use super::steps::{Held, Step, StepPlan};
use super::View;
use crate::error::{Error, Result};
use crate::report::escape_path;
use crate::sys::{fs as sysfs, xattr};
use crate::tree::{Tree, TreeId};

pub const MAP_XATTR: &CStr = c"user.idshift.map";
pub const PENDING_XATTR: &CStr = c"user.idshift.pending";
const MAGIC: &str = "idshift-journal 3";
/// A journal larger than this is not read (records are ~60 bytes; this is millions of them).
const MAX_JOURNAL: u64 = 1 << 30;
/// The record xattr is small; anything larger is not ours.
const MAX_RECORD: usize = 4096;

/// Journal records by inode `(dev, ino)`; the last record of an inode wins.
pub type Records = HashMap<(u64, u64), Original>;

/// The step plans in force, by inode `(dev, ino)`: the last `p` line of an inode, with the
/// steps noted after it, unless an `x` line retired it.
pub type Plans = HashMap<(u64, u64), StepPlan>;

/// The state of an inode before a shift changed it, as the journal keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Original {
    /// The inode's birth time, with `(dev, ino)` its identity; `None` where the filesystem
    /// keeps none.
    pub btime: Option<i128>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub caps: Option<Vec<u8>>,
    pub acl_access: Option<Vec<u8>>,
    pub acl_default: Option<Vec<u8>>,
}

/// Which run wrote a record: the shift itself, or a rollback of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Forward,
    Rollback,
}

/// The header of a journal: which tree, which shift.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub tree: TreeId,
    /// A random id, also kept in `user.idshift.pending` on the tree.
    pub id: String,
    pub from: View,
    pub to: View,
    /// `user.idshift.map` as it was before the shift began (restored by a rollback).
    pub previous: Option<Vec<u8>>,
    /// When the journal was created, before the shift changed anything (ns since the epoch).
    pub started: i128,
}

impl std::fmt::Display for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "from '{}' to '{}'", self.from, self.to)
    }
}

/// A journal idshift may use: its header, its records and the open file to append to.
pub struct Journal {
    pub header: Header,
    /// The shift completed; only its bookkeeping was left (its records still tell which inodes
    /// it changed).
    pub done: bool,
    pub path: PathBuf,
    pub forward: Records,
    pub rollback: Records,
    pub plans: Plans,
    file: File,
    /// Appends are serialised by this lock for the length of one `write` only, never across a
    /// sync: a note is never held up by another thread's group commit.
    appending: Mutex<()>,
}

/// What lies beside a tree.
pub enum Found {
    /// No journal and no pending mark.
    Nothing,
    /// A journal of this tree, written by the caller.
    Pending(Box<Journal>),
    /// A journal that is not used; `why` says why (another tree's, not the caller's, corrupt).
    /// `maybe_ours`: it may be this tree's unfinished shift, whose records are then lost.
    Unusable { why: String, maybe_ours: bool },
    /// This tree's journal from a run killed before it changed anything (written, but the tree
    /// was never marked, and it holds no record): safe to remove. Its header says which shift
    /// was begun.
    Abandoned(Box<Header>),

    /// The tree is marked as under a shift, but its journal is gone.
    Lost,
}

pub(super) fn hex(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "-".into(),
        Some(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

pub(super) fn unhex(s: &str) -> Option<Option<Vec<u8>>> {
    if s == "-" {
        return Some(None);
    }
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Some)
}

pub(super) fn opt_num(v: Option<i128>) -> String {
    v.map_or("-".into(), |n| n.to_string())
}

pub(super) fn parse_opt_num(s: &str) -> Option<Option<i128>> {
    if s == "-" {
        Some(None)
    } else {
        s.parse().ok().map(Some)
    }
}

/// One journal record: `r|b DEV INO BTIME UID GID MODE CAPS ACL DACL`, binary values in hex or `-`.
pub fn format_record(kind: RecordKind, key: (u64, u64), o: &Original) -> String {
    format!(
        "{} {} {} {} {} {} {:o} {} {} {}\n",
        match kind {
            RecordKind::Forward => 'r',
            RecordKind::Rollback => 'b',
        },
        key.0,
        key.1,
        opt_num(o.btime),
        o.uid,
        o.gid,
        o.mode,
        hex(&o.caps),
        hex(&o.acl_access),
        hex(&o.acl_default)
    )
}

pub(super) fn parse_key(text: &str) -> Option<(u64, u64)> {
    let (dev, ino) = text.split_once(' ')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

fn parse_record(line: &str) -> Option<(RecordKind, (u64, u64), Original)> {
    let f: Vec<&str> = line.split(' ').collect();
    let [kind, dev, ino, btime, uid, gid, mode, caps, acl, dacl] = f[..] else {
        return None;
    };
    let kind = match kind {
        "r" => RecordKind::Forward,
        "b" => RecordKind::Rollback,
        _ => return None,
    };
    Some((
        kind,
        (dev.parse().ok()?, ino.parse().ok()?),
        Original {
            btime: parse_opt_num(btime)?,
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            mode: u32::from_str_radix(mode, 8).ok()?,
            caps: unhex(caps)?,
            acl_access: unhex(acl)?,
            acl_default: unhex(dacl)?,
        },
    ))
}

fn format_held(h: &Held) -> String {
    format!("{} {} {:o} {}", h.uid, h.gid, h.mode, hex(&h.caps))
}

fn parse_held(f: &[&str]) -> Option<Held> {
    let [uid, gid, mode, caps] = f[..] else {
        return None;
    };
    Some(Held {
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        mode: u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| m & !0o7777 == 0)?,
        caps: unhex(caps)?,
    })
}

/// A step plan: `p DEV INO BTIME SIZE MTIME  UID GID MODE CAPS  UID GID MODE CAPS  MODE CAPS
/// PATH` (base, end, the mode and capability owed at the base, and the path in hex).
pub fn format_plan(key: (u64, u64), p: &StepPlan) -> String {
    format!(
        "p {} {} {} {} {} {} {} {:o} {} {}\n",
        key.0,
        key.1,
        opt_num(p.btime),
        p.size,
        p.mtime,
        format_held(&p.base),
        format_held(&p.end),
        p.owed.mode,
        hex(&p.owed.caps),
        hex(&Some(p.path.as_os_str().as_bytes().to_vec()))
    )
}

fn parse_plan(rest: &str) -> Option<((u64, u64), StepPlan)> {
    let f: Vec<&str> = rest.split(' ').collect();
    if f.len() != 16 {
        return None;
    }
    let base = parse_held(&f[5..9])?;
    let owed = parse_held(&[f[5], f[6], f[13], f[14]])?;
    let mut plan = StepPlan::new(
        parse_opt_num(f[2])?,
        (f[3].parse().ok()?, f[4].parse().ok()?),
        base,
        owed,
        parse_held(&f[9..13])?,
    );
    plan.path = std::path::PathBuf::from(std::ffi::OsString::from_vec(unhex(f[15])??));
    Some(((f[0].parse().ok()?, f[1].parse().ok()?), plan))
}

fn format_header(h: &Header) -> String {
    format!(
        "{MAGIC}\ntree {} {} {} {}\nfrom {}\nto {}\nprevious {}\nstarted {}\n",
        h.tree.dev,
        h.tree.ino,
        opt_num(h.tree.btime),
        h.id,
        h.from,
        h.to,
        hex(&h.previous),
        h.started
    )
}

/// A parsed journal: its header, its records, and whether the shift completed.
type Parsed = (Header, Records, Records, Plans, bool);

/// Parses a journal's text: its header and records, and a last `done` line once the shift
/// completed. `Err` says what is wrong with it. A last line cut short by a crash is ignored
/// (its inode was not changed yet).
fn parse(text: &str) -> std::result::Result<Parsed, String> {
    let mut lines = text.split_inclusive('\n');
    let mut next = |prefix: &str| -> std::result::Result<&str, String> {
        let line = lines.next().ok_or("its header is cut short")?;
        let line = line.strip_suffix('\n').ok_or("its header is cut short")?;
        line.strip_prefix(prefix)
            .ok_or_else(|| format!("expected '{prefix}…', found '{}'", line.escape_debug()))
    };
    let magic = next("idshift-journal ")?;
    if magic != "3" {
        return Err(format!(
            "it is a journal of format {magic}, not 3 (another version of idshift's)"
        ));
    }
    let tree = next("tree ")?;
    let t: Vec<&str> = tree.split(' ').collect();
    let [dev, ino, btime, id] = t[..] else {
        return Err("its tree line is malformed".into());
    };
    let bad = |what: &str| format!("its {what} is malformed");
    let tree = TreeId {
        dev: dev.parse().map_err(|_| bad("device"))?,
        ino: ino.parse().map_err(|_| bad("inode"))?,
        btime: parse_opt_num(btime).ok_or_else(|| bad("birth time"))?,
    };
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("id"));
    }
    let from: View = next("from ")?.parse().map_err(|_| bad("FROM map"))?;
    let to: View = next("to ")?.parse().map_err(|_| bad("TO map"))?;
    let previous = unhex(next("previous ")?).ok_or_else(|| bad("previous record"))?;
    let started = next("started ")?.parse().map_err(|_| bad("start time"))?;
    let header = Header {
        tree,
        id: id.to_string(),
        from,
        to,
        previous,
        started,
    };
    let (mut forward, mut rollback) = (Records::new(), Records::new());
    let mut plans = Plans::new();
    let mut done = false;
    for line in lines {
        let Some(line) = line.strip_suffix('\n') else {
            break; // torn last line
        };
        // `done` ends a completed shift; a run that resumes it (new files since) appends more.
        done = line == "done";
        if done {
            continue;
        }
        let malformed = || format!("a line is malformed: '{}'", line.escape_debug());
        if let Some(rest) = line.strip_prefix("p ") {
            let (key, plan) = parse_plan(rest).ok_or_else(malformed)?;
            plans.insert(key, plan);
            continue;
        }
        if let Some(rest) = line.strip_prefix("s ") {
            let (key, step) = rest.rsplit_once(' ').ok_or_else(malformed)?;
            let key = parse_key(key).ok_or_else(malformed)?;
            let step = Step::parse(step).ok_or_else(malformed)?;
            if let Some(plan) = plans.get_mut(&key) {
                plan.note(step);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("x ") {
            plans.remove(&parse_key(rest).ok_or_else(malformed)?);
            continue;
        }
        match parse_record(line) {
            Some((RecordKind::Forward, key, o)) => forward.insert(key, o),
            Some((RecordKind::Rollback, key, o)) => rollback.insert(key, o),
            None => return Err(format!("a record is malformed: '{}'", line.escape_debug())),
        };
    }
    Ok((header, forward, rollback, plans, done))
}

/// Why a journal file may not be trusted, from its status: `None` when idshift could have
/// written it itself.
fn untrusted(st: &sysfs::Stat, euid: u32) -> Option<String> {
    if st.is_symlink() {
        return Some("it is a symlink".into());
    }
    if !st.is_regular() {
        return Some("it is not a regular file".into());
    }
    if st.uid != euid {
        return Some(format!(
            "it is owned by uid {}, not by you (uid {euid}): a journal another user can write \
             cannot steer this run",
            st.uid
        ));
    }
    if st.mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by others (mode {:04o})",
            st.mode & 0o7777
        ));
    }
    if st.nlink != 1 {
        return Some(format!("it has {} links", st.nlink));
    }
    None
}

/// The pending mark on DIR: `Ok(None)` when there is none, `Err` when the filesystem keeps no
/// user xattrs.
fn pending_mark(root: BorrowedFd) -> std::result::Result<Option<Vec<u8>>, Errno> {
    match xattr::get(root, None, PENDING_XATTR) {
        Ok(v) => Ok(v),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A file idshift keeps beside a tree, as found.
pub(super) enum Beside {
    Absent,
    /// There, but not to be read: why.
    Untrusted(String),
    /// Read whole; the file is open for appending.
    Read(File, Vec<u8>),
}

/// How far a file beside the tree must be trusted before it is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Trust {
    /// It steers the run (the journal): only a file idshift could have written itself, as the
    /// caller ([`untrusted`]); opened for appending.
    Steers,
    /// It can only add to what is reported (the loss list): any regular file, whoever wrote
    /// it; opened read-only.
    Reports,
}

/// Reads `name` beside the tree if it may be trusted as `trust` says and it is at most `max`
/// bytes; never follows a symlink, never blocks on a FIFO.
pub(super) fn read_beside(tree: &Tree, name: &CStr, max: u64, trust: Trust) -> Result<Beside> {
    let path = || tree.beside(name);
    let handle = match sysfs::open_path(tree.parent.as_fd(), name) {
        Ok(h) => h,
        Err(Errno::ENOENT) => return Ok(Beside::Absent),
        Err(e) => return Err(Error::sys(format!("{}: open", escape_path(&path())), e)),
    };
    let st = sysfs::statx(handle.as_fd(), None)
        .map_err(|e| Error::sys(format!("{}: stat", escape_path(&path())), e))?;
    let why = match trust {
        Trust::Steers => untrusted(&st, nix::unistd::geteuid().as_raw()),
        Trust::Reports => (!st.is_regular()).then(|| "it is not a regular file".to_string()),
    };
    if let Some(why) = why {
        return Ok(Beside::Untrusted(why));
    }
    if st.size > max {
        return Ok(Beside::Untrusted(format!(
            "it is {} bytes, larger than any such file idshift writes",
            st.size
        )));
    }
    let opened = match trust {
        Trust::Steers => sysfs::reopen_rw(&handle).map_err(std::io::Error::from),
        Trust::Reports => {
            use std::os::unix::fs::OpenOptionsExt;
            let link = sysfs::proc_fd_path(&handle);
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(std::ffi::OsStr::from_bytes(link.as_bytes()))
        }
    };
    let mut file = match opened {
        Ok(f) => f,
        Err(e) => return Ok(Beside::Untrusted(format!("it cannot be opened: {e}"))),
    };
    let mut bytes = Vec::with_capacity(st.size as usize);
    (&mut file)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path(), e))?;
    Ok(Beside::Read(file, bytes))
}

/// Looks beside the tree for an unfinished shift, reading only what can be trusted.
pub fn find(tree: &Tree) -> Result<Found> {
    let name = tree.journal_name();
    let mark = pending_mark(tree.root.as_fd()).ok().flatten();
    let (file, bytes) = match read_beside(tree, &name, MAX_JOURNAL, Trust::Steers)? {
        Beside::Absent => {
            return Ok(if mark.is_some() {
                Found::Lost
            } else {
                Found::Nothing
            })
        }
        // Whatever it claims, a journal we cannot trust may stand for this tree's pending
        // shift.
        Beside::Untrusted(why) => {
            return Ok(Found::Unusable {
                why,
                maybe_ours: true,
            })
        }
        Beside::Read(file, bytes) => (file, bytes),
    };
    // A journal of ours that cannot be read speaks for this tree if the tree is marked.
    let unreadable = |why: String| Found::Unusable {
        why,
        maybe_ours: mark.is_some(),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(unreadable("it is not text".into()));
    };
    let (header, forward, rollback, plans, done) = match parse(&text) {
        Ok(p) => p,
        Err(why) => return Ok(unreadable(why)),
    };
    let here = tree.id();
    if header.tree != here {
        return Ok(Found::Unusable {
            why: format!(
                "it belongs to another tree (device {}, inode {}), not to this one (device {}, \
                 inode {}): the tree was replaced since",
                header.tree.dev, header.tree.ino, here.dev, here.ino
            ),
            maybe_ours: false,
        });
    }
    match pending_mark(tree.root.as_fd()) {
        // A completed shift killed while clearing its mark.
        _ if done => {}
        // The filesystem keeps no user xattrs: the root's identity is all there is.
        Err(_) => {}
        Ok(Some(m)) if m == header.id.as_bytes() => {}
        Ok(None) if forward.is_empty() && rollback.is_empty() => {
            return Ok(Found::Abandoned(Box::new(header)))
        }
        Ok(_) => {
            return Ok(Found::Unusable {
                why: "the tree does not carry its id, yet it holds records (the tree's pending \
                      mark was removed or replaced)"
                    .into(),
                maybe_ours: true,
            })
        }
    }
    Ok(Found::Pending(Box::new(Journal {
        done,
        header,
        path: tree.journal_path(),
        forward,
        rollback,
        plans,
        file,
        appending: Mutex::new(()),
    })))
}

/// Moves an unusable journal aside (kept for inspection): `.NAME.idshift-journal.aside-SECS`.
pub fn set_aside(tree: &Tree) -> Result<PathBuf> {
    let name = tree.journal_name();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for n in 0..100 {
        let suffix = if n == 0 {
            format!(".aside-{secs}")
        } else {
            format!(".aside-{secs}-{n}")
        };
        let mut aside = name.as_bytes().to_vec();
        aside.extend_from_slice(suffix.as_bytes());
        let aside = CString::new(aside).expect("no NUL");
        match sysfs::rename_noreplace(tree.parent.as_fd(), &name, &aside) {
            Ok(()) => {
                let _ = sysfs::fsync(tree.parent.as_fd());
                return Ok(tree.beside(&aside));
            }
            Err(Errno::EEXIST) => continue,
            Err(e) => {
                return Err(Error::sys(
                    format!("{}: moving it aside", escape_path(&tree.journal_path())),
                    e,
                ))
            }
        }
    }
    Err(Error::Journal {
        path: tree.journal_path(),
        action: "find a free name to move it aside under",
        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    })
}

/// Removes the tree's pending mark, then its journal (of a run that completed, or that was
/// killed before it changed anything).
pub fn remove(tree: &Tree) -> Result<()> {
    super::crash_point();
    match xattr::remove_self(tree.root.as_fd(), PENDING_XATTR) {
        Ok(()) | Err(Errno::ENODATA) | Err(Errno::EOPNOTSUPP) => {}
        Err(e) => return Err(Error::sys("clearing the pending mark", e)),
    }
    super::crash_point();
    sysfs::unlink(tree.parent.as_fd(), &tree.journal_name())
        .map_err(|e| Error::sys(format!("{}: remove", escape_path(&tree.journal_path())), e))?;
    let _ = sysfs::fsync(tree.parent.as_fd());
    Ok(())
}

/// The time now, in ns since the epoch.
fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Where a file written beside the tree may go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// Only where nothing is (a journal: never over another run's).
    New,
    /// Over what is there (a loss list replaced by its next version).
    Replace,
}

/// The stage at which [`write_beside`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    ClearTheWay,
    Create,
    Write,
}

/// Writes `text` beside the tree as `name`, whole or not at all: into a new private file under
/// a temporary name, synced, renamed into place, the directory synced. Returns the file, open
/// for appending; on failure the stage and the error, with nothing left behind.
pub(super) fn write_beside(
    tree: &Tree,
    name: &CStr,
    text: &[u8],
    place: Place,
) -> std::result::Result<File, (Stage, std::io::Error)> {
    let parent = tree.parent.as_fd();
    let mut tmp = name.to_bytes().to_vec();
    tmp.extend_from_slice(b".new");
    let tmp = CString::new(tmp).expect("no NUL");
    match sysfs::unlink(parent, &tmp) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err((Stage::ClearTheWay, e.into())),
    }
    let mut file = sysfs::create_private(parent, &tmp).map_err(|e| (Stage::Create, e.into()))?;
    let written = file
        .write_all(text)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            match place {
                Place::New => sysfs::rename_noreplace(parent, &tmp, name),
                Place::Replace => nix::fcntl::renameat(parent, tmp.as_c_str(), parent, name),
            }
            .map_err(Into::into)
        })
        .and_then(|()| sysfs::fsync(parent).map_err(Into::into));
    if let Err(e) = written {
        let _ = sysfs::unlink(parent, &tmp);
        return Err((Stage::Write, e));
    }
    Ok(file)
}

/// A random id for a new journal or loss list.
pub(super) fn random_id() -> Result<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::io("/dev/urandom", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Journal {
    /// Starts a shift: writes and syncs a new journal beside the tree, then marks the tree with
    /// its id. Nothing in the tree has changed until this returns; on failure nothing is left.
    pub fn create(tree: &Tree, from: &View, to: &View) -> Result<Journal> {
        let header = Header {
            tree: tree.id(),
            id: random_id()?,
            from: from.clone(),
            to: to.clone(),
            previous: recorded_raw(tree.root.as_fd()),
            started: now_ns(),
        };
        let name = tree.journal_name();
        let path = tree.journal_path();
        let cannot = |action: &'static str, source: std::io::Error| Error::Journal {
            path: path.clone(),
            action,
            source,
        };
        // A journal is either absent or has its whole header.
        super::crash_point();
        let file = write_beside(tree, &name, format_header(&header).as_bytes(), Place::New)
            .map_err(|(stage, e)| {
                let action = match stage {
                    Stage::ClearTheWay => "clear the way for the journal",
                    Stage::Create => "create the journal",
                    Stage::Write => "write the journal",
                };
                cannot(action, e)
            })?;
        super::crash_point();
        let marked = match xattr::set(tree.root.as_fd(), None, PENDING_XATTR, header.id.as_bytes())
        {
            Ok(()) | Err(Errno::EOPNOTSUPP) => sysfs::fsync(tree.root.as_fd()),
            Err(e) => Err(e),
        };
        if let Err(e) = marked {
            let _ = sysfs::unlink(tree.parent.as_fd(), &name);
            return Err(Error::Journal {
                path: tree.path.clone(),
                action: "mark the tree as under a shift",
                source: e.into(),
            });
        }
        Ok(Journal {
            done: false,
            header,
            path,
            forward: Records::new(),
            rollback: Records::new(),
            plans: Plans::new(),
            file,
            appending: Mutex::new(()),
        })
    }

    /// Appends `text` in one `write`, holding the lock for that write alone.
    fn write(&self, text: &str) -> std::io::Result<()> {
        let _one_at_a_time = self.appending.lock().unwrap_or_else(|e| e.into_inner());
        (&self.file).write_all(text.as_bytes())
    }

    /// Notes a step of the inode's plan done (`s DEV INO STEP`), unsynced: a crash that loses
    /// the note leaves a plan on which the inode's state is still recognised.
    pub fn note(&self, key: (u64, u64), step: Step) -> std::io::Result<()> {
        super::crash_point();
        self.write(&format!("s {} {} {}\n", key.0, key.1, step.name()))
    }

    /// Retires the inode's plan (`x DEV INO`): another process changed the inode, and what it
    /// lost is in the tree's loss list. Unsynced: lost in a crash, the next run finds the same.
    pub fn retire(&self, key: (u64, u64)) -> std::io::Result<()> {
        super::crash_point();
        self.write(&format!("x {} {}\n", key.0, key.1))
    }

    /// Appends records and makes them durable before the caller changes those inodes.
    pub fn append(&self, text: &str) -> std::io::Result<()> {
        super::crash_point();
        self.write(text)?;
        self.file.sync_data()
    }

    /// Ends the run: records `done` on the tree (the view now on disk: TO after a shift, FROM
    /// after a rollback), ends the journal with a `done` line, then drops the pending mark and
    /// the journal, in that order: a crash before the `done` line leaves a run that the same
    /// command finishes, a crash after it a journal the next run removes.
    pub fn finish(self, tree: &Tree, done: Option<&View>, inodes: u64) -> Result<()> {
        let root = tree.root.as_fd();
        super::crash_point();
        let recorded = match (done, &self.header.previous) {
            (Some(view), _) => xattr::set(
                root,
                None,
                MAP_XATTR,
                format!("{view}\ninodes {inodes}\n").as_bytes(),
            ),
            (None, Some(previous)) => xattr::set(root, None, MAP_XATTR, previous),
            (None, None) => match xattr::remove_self(root, MAP_XATTR) {
                Err(Errno::ENODATA) => Ok(()),
                other => other,
            },
        };
        ok_unsupported(recorded)
            .and_then(|()| sysfs::fsync(root))
            .map_err(|e| Error::sys("recording the map on the directory", e))?;
        self.append("done\n")
            .map_err(|e| Error::io(&self.path, e))?;
        remove(tree)
    }
}

fn ok_unsupported(r: std::result::Result<(), Errno>) -> std::result::Result<(), Errno> {
    match r {
        Err(Errno::EOPNOTSUPP) => Ok(()),
        other => other,
    }
}

/// The record on DIR of its last complete shift, as stored.
fn recorded_raw(dir: BorrowedFd) -> Option<Vec<u8>> {
    xattr::get(dir, None, MAP_XATTR)
        .ok()
        .flatten()
        .filter(|v| v.len() <= MAX_RECORD)
}

/// The record on DIR of its last complete shift: `VIEW\ninodes N\n`.
fn recorded_lines(dir: BorrowedFd) -> Option<Vec<String>> {
    Some(
        String::from_utf8(recorded_raw(dir)?)
            .ok()?
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// The view recorded on DIR by the last complete shift.
pub fn recorded(dir: BorrowedFd) -> Option<View> {
    recorded_lines(dir)?.first()?.parse().ok()
}

/// The number of inodes the last complete shift saw (for a progress bar's ETA).
pub fn recorded_inodes(dir: BorrowedFd) -> Option<u64> {
    recorded_lines(dir)?
        .get(1)?
        .strip_prefix("inodes ")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(s: &str) -> View {
        s.parse().unwrap()
    }

    #[test]
    fn records_round_trip() {
        let o = Original {
            btime: Some(1_700_000_000_123_456_789),
            uid: 0,
            gid: 5,
            mode: 0o104755,
            caps: Some(vec![1, 0, 0, 2, 0xff]),
            acl_access: None,
            acl_default: Some(vec![2, 0, 0, 0]),
        };
        let line = format_record(RecordKind::Forward, (2049, 77), &o);
        assert_eq!(
            line,
            "r 2049 77 1700000000123456789 0 5 104755 01000002ff - 02000000\n"
        );
        assert_eq!(
            parse_record(line.trim_end()),
            Some((RecordKind::Forward, (2049, 77), o.clone()))
        );
        let no_btime = Original { btime: None, ..o };
        let line = format_record(RecordKind::Rollback, (1, 2), &no_btime);
        assert!(line.starts_with("b 1 2 - "), "{line}");
        assert_eq!(
            parse_record(line.trim_end()),
            Some((RecordKind::Rollback, (1, 2), no_btime))
        );
        assert_eq!(parse_record("r 2049 77 - 0 5"), None, "a line cut short");
        assert_eq!(parse_record("r 2049 77 - 0 5 755 0 - -"), None, "odd hex");
        assert_eq!(parse_record("x 2049 77 - 0 5 755 - - -"), None, "kind");
    }

    fn header() -> Header {
        Header {
            tree: TreeId {
                dev: 2049,
                ino: 12,
                btime: Some(5),
            },
            id: "0123456789abcdef0123456789abcdef".into(),
            from: View::Host,
            to: view("b:0:100000:65536"),
            previous: Some(b"host\n".to_vec()),
            started: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn journal_text_round_trips_and_last_record_wins() {
        let h = header();
        let mut text = format_header(&h);
        for uid in [7, 9] {
            text += &format_record(
                RecordKind::Forward,
                (1, 2),
                &Original {
                    uid,
                    ..Default::default()
                },
            );
        }
        text += "r 1 3 - 0"; // torn
        let (h2, fwd, back, plans, done) = parse(&text).unwrap();
        assert!(!done);
        assert!(plans.is_empty());
        // A step plan, its notes, and its retirement.
        let base = Held {
            uid: 100000,
            gid: 100000,
            mode: 0o4755,
            caps: Some(vec![1, 2]),
        };
        let end = Held {
            uid: 200000,
            gid: 200000,
            ..base.clone()
        };
        let owed = Held {
            mode: 0o6755,
            ..base.clone()
        };
        let mut plan = StepPlan::new(Some(5), (10, -3), base, owed, end);
        plan.path = "r/a b".into();
        let line = format_plan((1, 2), &plan);
        assert_eq!(
            line,
            "p 1 2 5 10 -3 100000 100000 4755 0102 200000 200000 4755 0102 6755 0102 722f612062\n"
        );
        let body = text.replace("r 1 3 - 0", "") + &line;
        let parsed = parse(&body).unwrap().3;
        assert_eq!(parsed[&(1, 2)], plan, "a plan round trips");
        let noted = parse(&(body.clone() + "s 1 2 owner\ns 1 2 mode\n"))
            .unwrap()
            .3;
        assert_eq!(noted[&(1, 2)].noted, 2, "two steps noted");
        let noted = parse(&(body.clone() + "s 1 2 mode\ns 1 2 owner\n"))
            .unwrap()
            .3;
        assert_eq!(noted[&(1, 2)].noted, 2, "a later note of an earlier step");
        let again = parse(&(body.clone() + "s 1 2 owner\n" + &line)).unwrap().3;
        assert_eq!(again[&(1, 2)].noted, 0, "a new plan starts over");
        let retired = parse(&(body.clone() + "s 1 2 owner\nx 1 2\ns 1 2 mode\n")).unwrap();
        assert!(retired.3.is_empty(), "retired; a later note has no plan");
        for bad in [
            "s 1 2 chmod\n",
            "p 1 2 5 10\n",
            "x 1\n",
            "p 1 2 5 10 -3 1 1 99999 - 2 2 755 - 755 - 61\n",
            "p 1 2 5 10 -3 1 1 755 - 2 2 755 - 755 -\n",
        ] {
            let err = parse(&(body.clone() + bad)).unwrap_err();
            assert!(err.contains("malformed"), "{bad:?}: {err}");
        }
        assert!(parse(&(format_header(&h) + "done\n")).unwrap().4);
        let resumed = format_header(&h) + "done\nr 1 2 - 0 0 0 - - -\n";
        assert!(!parse(&resumed).unwrap().4, "resumed after done");
        assert!(parse(&(resumed + "done\n")).unwrap().4);
        assert_eq!(h2, h);
        assert_eq!(fwd.len(), 1);
        assert_eq!(fwd[&(1, 2)].uid, 9, "the last record wins");
        assert!(back.is_empty());
    }

    #[test]
    fn malformed_journals_say_what_is_wrong() {
        let good = format_header(&header());
        let cases = [
            ("", "cut short"),
            ("idshift-journal 1\nfrom host\n", "format 1"),
            (&good[..good.len() - 3], "cut short"),
            (&good.replace("tree 2049 12 5", "tree x 12 5"), "device"),
            (&good.replace("0123456789abcdef", "zz"), "id"),
            (&(good.clone() + "r 1 2 3\n"), "record is malformed"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn trust_needs_a_private_regular_file_of_the_caller() {
        let st = |mode: u32, uid: u32, nlink: u32| sysfs::Stat {
            mode,
            uid,
            gid: 0,
            nlink,
            ino: 1,
            dev: 1,
            mnt_id: 0,
            size: 10,
            ctime_ns: 0,
            btime_ns: None,
            mtime_ns: 0,
            atime_ns: 0,
        };
        assert_eq!(untrusted(&st(0o100600, 0, 1), 0), None);
        assert!(untrusted(&st(0o120777, 0, 1), 0)
            .unwrap()
            .contains("symlink"));
        assert!(untrusted(&st(0o010600, 0, 1), 0)
            .unwrap()
            .contains("regular"));
        assert!(untrusted(&st(0o020666, 0, 1), 0)
            .unwrap()
            .contains("regular"));
        assert!(untrusted(&st(0o100600, 1001, 1), 0)
            .unwrap()
            .contains("uid 1001"));
        assert!(untrusted(&st(0o100620, 0, 1), 0)
            .unwrap()
            .contains("writable"));
        assert!(untrusted(&st(0o100600, 0, 2), 0).unwrap().contains("links"));
    }
}
