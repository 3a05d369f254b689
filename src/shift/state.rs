//! What a shift keeps outside the tree's contents, so that a killed shift can be finished:
//!
//! - a journal beside DIR (`PARENT/.NAME.idshift-journal`): a header naming the shift (FROM,
//!   TO, and the ctime threshold `since`), then one record per inode whose change takes more
//!   than one step, holding its original owner, mode, capability and ACLs, written and synced
//!   before the first step;
//! - `user.idshift.pending` on DIR, naming the journal (where the filesystem has user xattrs);
//! - `user.idshift.map` on DIR once a shift is complete: the view now on disk.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;

use super::View;
use crate::error::{Error, Result};
use crate::sys::{fs as sysfs, xattr};

pub const MAP_XATTR: &CStr = c"user.idshift.map";
pub const PENDING_XATTR: &CStr = c"user.idshift.pending";
const MAGIC: &str = "idshift-journal 1";

/// Journal records by inode `(dev, ino)`.
pub type Records = HashMap<(u64, u64), Original>;

/// The original state of an inode, as the journal keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Original {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub caps: Option<Vec<u8>>,
    pub acl_access: Option<Vec<u8>>,
    pub acl_default: Option<Vec<u8>>,
}

/// The header of a journal: which shift is under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub from: View,
    pub to: View,
    /// Inodes whose ctime is at or after this (ns since the epoch) were changed by the shift.
    pub since_ns: i128,
    pub journal: PathBuf,
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "from '{}' to '{}'", self.from, self.to)
    }
}

/// The journal's place: beside DIR, named after it.
pub fn journal_path(dir: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(dir).map_err(|e| Error::io(dir, e))?;
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Err(Error::Usage(format!(
            "{}: cannot shift a filesystem root in place (no parent directory for the journal)",
            dir.display()
        )));
    };
    let mut file = std::ffi::OsString::from(".");
    file.push(name);
    file.push(".idshift-journal");
    Ok(parent.join(file))
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
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Some)
}

/// One journal record: `DEV INO UID GID MODE CAPS ACL DACL`, binary values in hex or `-`.
pub fn format_record(key: (u64, u64), o: &Original) -> String {
    format!(
        "{} {} {} {} {:o} {} {} {}\n",
        key.0,
        key.1,
        o.uid,
        o.gid,
        o.mode,
        hex(&o.caps),
        hex(&o.acl_access),
        hex(&o.acl_default)
    )
}

fn parse_record(line: &str) -> Option<((u64, u64), Original)> {
    let f: Vec<&str> = line.split(' ').collect();
    let [dev, ino, uid, gid, mode, caps, acl, dacl] = f[..] else {
        return None;
    };
    Some((
        (dev.parse().ok()?, ino.parse().ok()?),
        Original {
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            mode: u32::from_str_radix(mode, 8).ok()?,
            caps: unhex(caps)?,
            acl_access: unhex(acl)?,
            acl_default: unhex(dacl)?,
        },
    ))
}

/// An open journal, appended to by the walk's threads.
pub struct Journal {
    file: Mutex<File>,
}

impl Journal {
    /// Creates a new journal with its header, synced along with its directory entry.
    pub fn create(p: &Pending) -> Result<Journal> {
        let path = &p.journal;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let header = format!(
            "{MAGIC}\nfrom {}\nto {}\nsince {}\n",
            p.from, p.to, p.since_ns
        );
        file.write_all(header.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(path, e))?;
        if let Some(parent) = path.parent() {
            if let Ok(d) = File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(Journal {
            file: Mutex::new(file),
        })
    }

    /// Reopens an existing journal to append to it.
    pub fn reopen(path: &Path) -> Result<Journal> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Journal {
            file: Mutex::new(file),
        })
    }

    /// Appends records and makes them durable before the caller changes those inodes.
    pub fn append(&self, text: &str) -> std::io::Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        super::crash_point();
        f.write_all(text.as_bytes())?;
        f.sync_data()
    }
}

/// Reads a journal: its header and the original state of every recorded inode. A last line
/// cut short by a crash is ignored (its inode was not changed yet).
pub fn load(path: &Path) -> Result<(Pending, Records)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut lines = BufReader::new(file).lines();
    let bad = |what: &str| Error::Failed(format!("{}: corrupt journal: {what}", path.display()));
    let mut next = |prefix: &str| -> Result<String> {
        let line = lines
            .next()
            .ok_or_else(|| bad("truncated header"))?
            .map_err(|e| Error::io(path, e))?;
        line.strip_prefix(prefix)
            .map(str::to_string)
            .ok_or_else(|| bad(&format!("expected '{prefix}'")))
    };
    next(MAGIC)?;
    let from: View = next("from ")?.parse().map_err(|_| bad("from"))?;
    let to: View = next("to ")?.parse().map_err(|_| bad("to"))?;
    let since_ns: i128 = next("since ")?.parse().map_err(|_| bad("since"))?;
    let mut records = HashMap::new();
    for line in lines {
        let line = line.map_err(|e| Error::io(path, e))?;
        if let Some((key, orig)) = parse_record(&line) {
            // The first record of an inode holds its true original.
            records.entry(key).or_insert(orig);
        }
    }
    Ok((
        Pending {
            from,
            to,
            since_ns,
            journal: path.to_path_buf(),
        },
        records,
    ))
}

/// The unfinished shift of DIR, if any: its journal beside DIR, or the one DIR's pending xattr
/// names (should DIR have been moved since).
pub fn find_pending(dir: BorrowedFd, dir_path: &Path) -> Result<Option<(Pending, Records)>> {
    let beside = journal_path(dir_path)?;
    if beside.exists() {
        return load(&beside).map(Some);
    }
    if let Ok(Some(named)) = xattr::get(dir, None, PENDING_XATTR) {
        let named = PathBuf::from(String::from_utf8_lossy(&named).into_owned());
        if named.exists() {
            return load(&named).map(Some);
        }
    }
    Ok(None)
}

/// The record on DIR of its last complete shift: `VIEW\ninodes N\n`.
fn recorded_lines(dir: BorrowedFd) -> Option<Vec<String>> {
    let value = xattr::get(dir, None, MAP_XATTR).ok()??;
    Some(
        String::from_utf8(value)
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

fn ok_unsupported(r: std::result::Result<(), Errno>) -> std::result::Result<(), Errno> {
    match r {
        Err(Errno::EOPNOTSUPP) => Ok(()),
        other => other,
    }
}

/// Marks DIR as under a shift (best effort where user xattrs are unsupported).
pub fn mark_pending(dir: &File, p: &Pending) -> Result<()> {
    super::crash_point();
    let path = p.journal.to_string_lossy();
    ok_unsupported(xattr::set(
        dir.as_fd(),
        None,
        PENDING_XATTR,
        path.as_bytes(),
    ))
    .and_then(|()| sysfs::fsync(dir.as_fd()))
    .map_err(|e| Error::sys("marking the shift on the directory", e))
}

/// Records the view now on disk, then drops the pending mark and the journal, in that order,
/// so that a crash in between leaves a shift that the same command finishes.
pub fn finish(dir: &File, p: &Pending, inodes: u64) -> Result<()> {
    super::crash_point();
    let record = format!("{}\ninodes {inodes}\n", p.to);
    ok_unsupported(xattr::set(dir.as_fd(), None, MAP_XATTR, record.as_bytes()))
        .and_then(|()| sysfs::fsync(dir.as_fd()))
        .map_err(|e| Error::sys("recording the new map on the directory", e))?;
    super::crash_point();
    ok_unsupported(xattr::remove_self(dir.as_fd(), PENDING_XATTR))
        .map_err(|e| Error::sys("clearing the pending mark", e))?;
    super::crash_point();
    std::fs::remove_file(&p.journal).map_err(|e| Error::io(&p.journal, e))?;
    if let Some(parent) = p.journal.parent() {
        if let Ok(d) = File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let o = Original {
            uid: 0,
            gid: 5,
            mode: 0o104755,
            caps: Some(vec![1, 0, 0, 2, 0xff]),
            acl_access: None,
            acl_default: Some(vec![2, 0, 0, 0]),
        };
        let line = format_record((2049, 77), &o);
        assert_eq!(line, "2049 77 0 5 104755 01000002ff - 02000000\n");
        assert_eq!(parse_record(line.trim_end()), Some(((2049, 77), o)));
        assert_eq!(parse_record("2049 77 0 5"), None, "a line cut short");
        assert_eq!(parse_record("2049 77 0 5 755 0 - -"), None, "odd hex");
    }

    #[test]
    fn journal_beside_the_directory() {
        assert_eq!(
            journal_path(Path::new("/home/a/.local/share/lxc/c1/rootfs")).unwrap(),
            Path::new("/home/a/.local/share/lxc/c1/.rootfs.idshift-journal")
        );
        assert!(journal_path(Path::new("/")).is_err());
    }

    #[test]
    fn journal_create_append_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pending {
            from: View::Host,
            to: View::Map(crate::idmap::IdMap::parse_list("b:0:100000:65536").unwrap()),
            since_ns: 1_700_000_000_123_456_789,
            journal: dir.path().join(".t.idshift-journal"),
        };
        let j = Journal::create(&p).unwrap();
        j.append(&format_record(
            (1, 2),
            &Original {
                uid: 7,
                ..Default::default()
            },
        ))
        .unwrap();
        j.append(&format_record(
            (1, 2),
            &Original {
                uid: 9,
                ..Default::default()
            },
        ))
        .unwrap();
        // A torn last line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p.journal)
            .unwrap()
            .write_all(b"1 3 0")
            .unwrap();
        let (q, records) = load(&p.journal).unwrap();
        assert_eq!(q, p);
        assert_eq!(records.len(), 1);
        assert_eq!(records[&(1, 2)].uid, 7, "the first record wins");
        assert!(Journal::create(&p).is_err(), "never overwrites a journal");
    }
}
