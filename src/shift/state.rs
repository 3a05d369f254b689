//! What a shift keeps outside the tree's contents, so that a killed shift can be finished or
//! rolled back:
//!
//! - a journal beside DIR (`PARENT/.NAME.idshift-journal`): a header naming the tree (device,
//!   inode, birth time and a random id), the shift (FROM, TO) and the map recorded on DIR before
//!   it began; then one record per inode whose change the disk alone could not finish or tell
//!   apart afterwards, holding its identity and original owner, mode, capability and ACLs,
//!   written and synced before the inode's first change;
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
use std::path::PathBuf;
use std::sync::Mutex;

use nix::errno::Errno;

use super::View;
use crate::error::{Error, Result};
use crate::sys::{fs as sysfs, xattr};
use crate::tree::{Tree, TreeId};

pub const MAP_XATTR: &CStr = c"user.idshift.map";
pub const PENDING_XATTR: &CStr = c"user.idshift.pending";
const MAGIC: &str = "idshift-journal 2";
/// A journal larger than this is not read (records are ~60 bytes; this is millions of them).
const MAX_JOURNAL: u64 = 1 << 30;
/// The record xattr is small; anything larger is not ours.
const MAX_RECORD: usize = 4096;

/// Journal records by inode `(dev, ino)`; the last record of an inode wins.
pub type Records = HashMap<(u64, u64), Original>;

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
    /// The inode was finished after this record was taken (a `d DEV INO` line followed it).
    pub done: bool,
    /// The inode's ctime right after the last step a run took on it (`c DEV INO CTIME`): while
    /// it is still that, nobody changed the inode since, and what that run's chown removed may
    /// be restored from the record.
    pub stepped: Option<i128>,
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
    file: Mutex<File>,
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

fn hex(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "-".into(),
        Some(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn unhex(s: &str) -> Option<Option<Vec<u8>>> {
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

fn opt_num(v: Option<i128>) -> String {
    v.map_or("-".into(), |n| n.to_string())
}

fn parse_opt_num(s: &str) -> Option<Option<i128>> {
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

fn parse_key(text: &str) -> Option<(u64, u64)> {
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
            done: false,
            stepped: None,
        },
    ))
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
type Parsed = (Header, Records, Records, bool);

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
    if magic != "2" {
        return Err(format!(
            "it is a journal of format {magic}, not 2 (an older idshift's)"
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
        if let Some(key) = line.strip_prefix("d ").and_then(parse_key) {
            for records in [&mut forward, &mut rollback] {
                if let Some(o) = records.get_mut(&key) {
                    o.done = true;
                }
            }
            continue;
        }
        if let Some((key, ctime)) = line.strip_prefix("c ").and_then(|rest| {
            let (key, ctime) = rest.rsplit_once(' ')?;
            Some((parse_key(key)?, ctime.parse::<i128>().ok()?))
        }) {
            // A run is at work on the inode again: not finished, last stepped then.
            for records in [&mut forward, &mut rollback] {
                if let Some(o) = records.get_mut(&key) {
                    o.done = false;
                    o.stepped = Some(ctime);
                }
            }
            continue;
        }
        match parse_record(line) {
            Some((RecordKind::Forward, key, o)) => forward.insert(key, o),
            Some((RecordKind::Rollback, key, o)) => rollback.insert(key, o),
            None => return Err(format!("a record is malformed: '{}'", line.escape_debug())),
        };
    }
    Ok((header, forward, rollback, done))
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

/// Looks beside the tree for an unfinished shift, reading only what can be trusted.
pub fn find(tree: &Tree) -> Result<Found> {
    let name = tree.journal_name();
    let mark = pending_mark(tree.root.as_fd()).ok().flatten();
    let handle = match sysfs::open_path(tree.parent.as_fd(), &name) {
        Ok(h) => h,
        Err(Errno::ENOENT) => {
            return Ok(if mark.is_some() {
                Found::Lost
            } else {
                Found::Nothing
            })
        }
        Err(e) => {
            return Err(Error::sys(
                format!("{}: open", tree.journal_path().display()),
                e,
            ))
        }
    };
    let st = sysfs::statx(handle.as_fd(), None)
        .map_err(|e| Error::sys(format!("{}: stat", tree.journal_path().display()), e))?;
    let euid = nix::unistd::geteuid().as_raw();
    // Whatever it claims, a journal we cannot trust may stand for this tree's pending shift.
    let untrusted_because = |why: String| Found::Unusable {
        why,
        maybe_ours: true,
    };
    if let Some(why) = untrusted(&st, euid) {
        return Ok(untrusted_because(why));
    }
    let size = st.size;
    if size > MAX_JOURNAL {
        return Ok(untrusted_because(format!(
            "it is {size} bytes, larger than any journal idshift writes"
        )));
    }
    let mut file = match sysfs::reopen_rw(&handle) {
        Ok(f) => f,
        Err(e) => return Ok(untrusted_because(format!("it cannot be opened: {e}"))),
    };
    let mut bytes = Vec::with_capacity(size as usize);
    (&mut file)
        .take(MAX_JOURNAL + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(tree.journal_path(), e))?;
    // A journal of ours that cannot be read speaks for this tree if the tree is marked.
    let unreadable = |why: String| Found::Unusable {
        why,
        maybe_ours: mark.is_some(),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(unreadable("it is not text".into()));
    };
    let (header, forward, rollback, done) = match parse(&text) {
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
        file: Mutex::new(file),
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
                    format!("{}: moving it aside", tree.journal_path().display()),
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
        .map_err(|e| Error::sys(format!("{}: remove", tree.journal_path().display()), e))?;
    let _ = sysfs::fsync(tree.parent.as_fd());
    Ok(())
}

/// The time now, in ns since the epoch.
fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// A random id for a new journal.
fn random_id() -> Result<String> {
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
        // Written whole under a temporary name, then renamed into place: a journal is either
        // absent or has its whole header.
        let mut tmp_name = name.as_bytes().to_vec();
        tmp_name.extend_from_slice(b".new");
        let tmp_name = CString::new(tmp_name).expect("no NUL");
        match sysfs::unlink(tree.parent.as_fd(), &tmp_name) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(cannot("clear the way for the journal", e.into())),
        }
        super::crash_point();
        let mut file = sysfs::create_private(tree.parent.as_fd(), &tmp_name)
            .map_err(|e| cannot("create the journal", e.into()))?;
        let written = file
            .write_all(format_header(&header).as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| {
                sysfs::rename_noreplace(tree.parent.as_fd(), &tmp_name, &name).map_err(Into::into)
            })
            .and_then(|()| sysfs::fsync(tree.parent.as_fd()).map_err(Into::into));
        if let Err(e) = written {
            let _ = sysfs::unlink(tree.parent.as_fd(), &tmp_name);
            return Err(cannot("write the journal", e));
        }
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
            file: Mutex::new(file),
        })
    }

    /// Marks an inode finished (`d DEV INO`): from now on its record restores nothing it lost.
    /// Not synced by itself (the next group commit's sync carries it): a crash that loses it
    /// leaves only a record that still applies as before.
    pub fn mark_done(&self, key: (u64, u64)) -> std::io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(format!("d {} {}\n", key.0, key.1).as_bytes())
    }

    /// Notes the inode's ctime right after a step on it (`c DEV INO CTIME`), unsynced like
    /// [`Journal::mark_done`].
    pub fn mark_stepped(&self, key: (u64, u64), ctime: i128) -> std::io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(format!("c {} {} {ctime}\n", key.0, key.1).as_bytes())
    }

    /// Appends records and makes them durable before the caller changes those inodes.
    pub fn append(&self, text: &str) -> std::io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        super::crash_point();
        f.write_all(text.as_bytes())?;
        f.sync_data()
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
            done: false,
            stepped: None,
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
        let (h2, fwd, back, done) = parse(&text).unwrap();
        assert!(!done);
        assert!(!fwd[&(1, 2)].done);
        let marked = parse(&(text.clone().replace("r 1 3 - 0", "") + "d 1 2\n")).unwrap();
        assert!(marked.1[&(1, 2)].done, "a d line marks the record done");
        let again = format_record(RecordKind::Forward, (1, 2), &Original::default());
        let superseded = parse(&(text.replace("r 1 3 - 0", "") + "d 1 2\n" + &again)).unwrap();
        assert!(!superseded.1[&(1, 2)].done, "a later record is not done");
        let stepped = parse(&(text.replace("r 1 3 - 0", "") + "d 1 2\nc 1 2 77\n")).unwrap();
        let o = &stepped.1[&(1, 2)];
        assert_eq!(
            (o.done, o.stepped),
            (false, Some(77)),
            "a later step reopens it"
        );
        assert!(parse(&(format_header(&h) + "done\n")).unwrap().3);
        let resumed = format_header(&h) + "done\nr 1 2 - 0 0 0 - - -\n";
        assert!(!parse(&resumed).unwrap().3, "resumed after done");
        assert!(parse(&(resumed + "done\n")).unwrap().3);
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
