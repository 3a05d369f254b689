//! The tree's loss list: what the chown of an interrupted run took from an inode (setuid or
//! setgid bits, a file capability) when another process changed the inode before a later run
//! could write it back. The change wins, so nothing is written back; the loss is kept beside the
//! tree (`PARENT/.NAME.idshift-losses`, bound to the tree's identity) and every later shift and
//! `status` name it, until the inode holds what it lost again (seen on disk) or the user accepts
//! the loss (`--accept-loss PATH`). Nothing else clears it: not a walk that misses the file, not
//! another user running the shift.
//!
//! The list can only add to what is reported, never grant anything, so it is read whoever wrote
//! it. While it names a loss, the tree's root carries its random id (`user.idshift.losses`,
//! where the filesystem keeps user xattrs): a tree so marked whose list is gone, or is another
//! tree's (renamed, copied, the list removed), has losses no run can name, and every run says
//! so (exit 1) until `--accept-loss DIR` accepts them.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Mutex;

use nix::errno::Errno;

use super::state::{self, hex, opt_num, parse_opt_num, unhex, Beside, Place, Trust};
use super::steps::{Held, Lost};
use crate::error::{Error, Result};
use crate::sys::{fs as sysfs, xattr};
use crate::tree::{Tree, TreeId};

const FORMAT: &str = "idshift-losses 1";
/// On the tree's root while its list names a loss: the list's id.
pub const MARK: &std::ffi::CStr = c"user.idshift.losses";
/// A list larger than this is not read (a line is ~100 bytes).
const MAX_LIST: u64 = 64 << 20;

/// One inode's loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub key: (u64, u64),
    pub btime: Option<i128>,
    pub lost: Lost,
    /// Where the run that found it saw the inode, for messages.
    pub path: PathBuf,
}

impl Loss {
    /// Whether this loss is of the inode `key` born at `btime`.
    fn is_of(&self, key: (u64, u64), btime: Option<i128>) -> bool {
        self.key == key && self.btime == btime
    }
}

fn file_name(tree: &Tree) -> CString {
    let mut n = tree.journal_name().into_bytes();
    n.truncate(n.len() - b"journal".len());
    n.extend_from_slice(b"losses");
    CString::new(n).expect("no NUL")
}

/// The list's path, for messages.
pub fn path(tree: &Tree) -> PathBuf {
    tree.beside(&file_name(tree))
}

/// The list's header: the tree, the list's id and the id of the list it replaced (`-`: none
/// the mark may still name).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    tree: TreeId,
    id: String,
    previous: String,
}

fn format(h: &Header, losses: &[Loss]) -> String {
    let mut text = format!(
        "{FORMAT}\ntree {} {} {} {} {}\n",
        h.tree.dev,
        h.tree.ino,
        opt_num(h.tree.btime),
        h.id,
        h.previous
    );
    for l in losses {
        text += &format!(
            "l {} {} {} {:o} {} {}\n",
            l.key.0,
            l.key.1,
            opt_num(l.btime),
            l.lost.bits,
            hex(&l.lost.caps),
            hex(&Some(l.path.as_os_str().as_bytes().to_vec()))
        );
    }
    text
}

fn parse(text: &str) -> std::result::Result<(Header, Vec<Loss>), String> {
    let mut lines = text.lines();
    if lines.next() != Some(FORMAT) {
        return Err(format!("it does not begin with '{FORMAT}'"));
    }
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix("tree "))
        .and_then(|t| {
            let f: Vec<&str> = t.split(' ').collect();
            let [dev, ino, btime, id, previous] = f[..] else {
                return None;
            };
            Some(Header {
                tree: TreeId {
                    dev: dev.parse().ok()?,
                    ino: ino.parse().ok()?,
                    btime: parse_opt_num(btime)?,
                },
                id: id.to_string(),
                previous: previous.to_string(),
            })
        })
        .ok_or("its tree line is malformed")?;
    let losses = lines
        .map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let [l, dev, ino, btime, bits, caps, path] = f[..] else {
                return None;
            };
            (l == "l").then_some(())?;
            Some(Loss {
                key: (dev.parse().ok()?, ino.parse().ok()?),
                btime: parse_opt_num(btime)?,
                lost: Lost {
                    bits: u32::from_str_radix(bits, 8)
                        .ok()
                        .filter(|b| b & !super::steps::SETID == 0)?,
                    caps: unhex(caps)?,
                },
                path: PathBuf::from(std::ffi::OsString::from_vec(unhex(path)??)),
            })
        })
        .collect::<Option<Vec<Loss>>>()
        .ok_or("a line is malformed")?;
    Ok((header, losses))
}

/// The tree's loss list as a run finds it.
#[derive(Clone, Debug, Default)]
pub struct Listed {
    pub losses: Vec<Loss>,
    /// The tree is marked with losses that no usable list names: why.
    pub unaccounted: Option<String>,
    /// A list that stands there unused, on a tree not marked: why (a warning).
    pub unused: Option<String>,
    /// The list's id (the previous id of a list written next).
    id: Option<String>,
}

/// Reads the tree's loss list and its mark.
pub fn read(tree: &Tree) -> Result<Listed> {
    let shown = crate::report::escape_path(&path(tree));
    let mark = match xattr::get(tree.root.as_fd(), None, MARK) {
        Ok(Some(m)) => Some(String::from_utf8_lossy(&m).into_owned()),
        _ => None,
    };
    let found = match state::read_beside(tree, &file_name(tree), MAX_LIST, Trust::Reports)? {
        Beside::Absent => Err(ABSENT.to_string()),
        Beside::Untrusted(why) => Err(format!("it is not used: {why}")),
        Beside::Read(_, bytes) => String::from_utf8(bytes)
            .map_err(|_| "it is not used: it is not text".to_string())
            .and_then(|text| parse(&text).map_err(|why| format!("it is not used: {why}")))
            .and_then(|(h, losses)| {
                if h.tree == tree.id() {
                    Ok((h, losses))
                } else {
                    Err("it belongs to another tree (the tree was replaced or copied)".into())
                }
            }),
    };
    let mut listed = Listed::default();
    match (found, mark) {
        (Ok((h, losses)), mark) => {
            let named = mark.as_ref().is_none_or(|m| *m == h.id || *m == h.previous);
            if !named {
                listed.unaccounted = Some(format!(
                    "{shown} does not name every loss the tree is marked with"
                ));
            }
            listed.losses = losses;
            listed.id = Some(h.id);
        }
        (Err(why), Some(_)) => listed.unaccounted = Some(format!("{shown}: {why}")),
        (Err(why), None) if why == ABSENT => {}
        (Err(why), None) => listed.unused = Some(format!("{shown}: {why}")),
    }
    Ok(listed)
}

const ABSENT: &str = "it is not there (the tree was renamed or copied, or the list removed)";

/// Writes the list durably (a new file renamed over the old one), then marks the tree with its
/// id; an empty list: the mark removed, then the file. While the tree has `unaccounted` losses,
/// its mark is left as it is (so they stay unaccounted).
fn write(tree: &Tree, losses: &[Loss], previous: Option<&str>, unaccounted: bool) -> Result<()> {
    let (name, parent, root) = (file_name(tree), tree.parent.as_fd(), tree.root.as_fd());
    let cannot = |action: &str, e: Errno| {
        Error::sys(
            format!("{}: {action}", crate::report::escape_path(&path(tree))),
            e,
        )
    };
    let ok_unsupported = |r: std::result::Result<(), Errno>| match r {
        Err(Errno::EOPNOTSUPP) | Err(Errno::ENODATA) => Ok(()),
        other => other,
    };
    super::crash_point();
    if losses.is_empty() {
        if !unaccounted {
            ok_unsupported(xattr::remove_self(root, MARK))
                .and_then(|()| sysfs::fsync(root))
                .map_err(|e| cannot("unmark the tree", e))?;
        }
        return match sysfs::unlink(parent, &name) {
            Ok(()) | Err(Errno::ENOENT) => sysfs::fsync(parent).map_err(|e| cannot("sync", e)),
            Err(e) => Err(cannot("remove", e)),
        };
    }
    let header = Header {
        tree: tree.id(),
        id: state::random_id()?,
        previous: match (unaccounted, previous) {
            (false, Some(p)) => p.to_string(),
            _ => "-".into(),
        },
    };
    state::write_beside(
        tree,
        &name,
        format(&header, losses).as_bytes(),
        Place::Replace,
    )
    .map_err(|(_, e)| Error::io(path(tree), e))?;
    if unaccounted {
        return Ok(());
    }
    super::crash_point();
    ok_unsupported(xattr::set(root, None, MARK, header.id.as_bytes()))
        .and_then(|()| sysfs::fsync(root))
        .map_err(|e| cannot("mark the tree", e))
}

/// What a run made of the losses it knew and found.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Still lost (known before, or found by this run).
    pub lost: Vec<Loss>,
    /// The inodes whose loss this run found (also in `lost`).
    pub found: Vec<(u64, u64)>,
    /// The inode holds what it lost again.
    pub restored: Vec<Loss>,
    /// Accepted by `--accept-loss`.
    pub accepted: Vec<Loss>,
    /// The tree is marked with losses no usable list names (and they were not accepted): why.
    pub unaccounted: Option<String>,
}

#[derive(Default)]
struct Seen {
    seen: HashSet<(u64, u64)>,
    restored: Vec<Loss>,
    found: Vec<Loss>,
}

/// The losses of one run: the list at its start, what the walk sees of them, and the losses it
/// finds, each written to the list as soon as it is found (unless a dry run).
pub struct Ledger<'a> {
    tree: Option<&'a Tree>,
    known: HashMap<(u64, u64), Loss>,
    accepted: Accepted,
    /// The losses the tree is marked with that no list names, unless accepted.
    unaccounted: Option<String>,
    /// The id of the list read (the previous id of the next one written).
    id: Option<String>,
    seen: Mutex<Seen>,
}

/// What `--accept-loss` named: listed losses, and the tree's unaccounted ones.
#[derive(Clone, Debug, Default)]
pub struct Accepted {
    pub keys: HashSet<(u64, u64)>,
    pub unaccounted: bool,
}

impl<'a> Ledger<'a> {
    /// `tree` is where found losses are written (`None`: a dry run, or `status`, writes
    /// nothing).
    pub fn new(tree: Option<&'a Tree>, listed: Listed, accepted: Accepted) -> Self {
        Ledger {
            tree,
            known: listed.losses.into_iter().map(|l| (l.key, l)).collect(),
            unaccounted: listed.unaccounted.filter(|_| !accepted.unaccounted),
            id: listed.id,
            accepted,
            seen: Mutex::new(Seen::default()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The known loss of this inode, if any.
    fn known(&self, key: (u64, u64), btime: Option<i128>) -> Option<&Loss> {
        self.known.get(&key).filter(|l| l.is_of(key, btime))
    }

    /// The walk sees an inode of the list: restored if it holds what it lost.
    pub fn check(&self, key: (u64, u64), btime: Option<i128>, now: &Held) {
        let Some(loss) = self.known(key, btime) else {
            return;
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.seen.insert(key) && loss.lost.restored_in(now) {
            seen.restored.push(loss.clone());
        }
    }

    /// Adds a loss found by this run, and writes the list with it before the caller goes on.
    pub fn found(&self, loss: Loss) -> Result<()> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.seen.insert(loss.key);
        seen.found.retain(|l| l.key != loss.key);
        seen.found.push(loss);
        match self.tree {
            Some(tree) => write(
                tree,
                &self.list(&seen),
                self.id.as_deref(),
                self.unaccounted.is_some(),
            ),
            None => Ok(()),
        }
    }

    /// The list as it stands: the known losses not seen restored, and the ones found.
    fn list(&self, seen: &Seen) -> Vec<Loss> {
        let found: HashSet<_> = seen.found.iter().map(|l| l.key).collect();
        let restored: HashSet<_> = seen.restored.iter().map(|l| l.key).collect();
        let mut list: Vec<Loss> = self
            .known
            .values()
            .filter(|l| !found.contains(&l.key) && !restored.contains(&l.key))
            .cloned()
            .collect();
        list.extend(seen.found.iter().cloned());
        list.sort_by(|a, b| a.path.cmp(&b.path));
        list
    }

    /// Ends the run: what became of each loss; writes the list (unless a dry run) where it
    /// changed.
    pub fn finish(self) -> Result<Outcome> {
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out = Outcome::default();
        let mut list = Vec::new();
        for l in self.list(&seen) {
            let found = seen.found.iter().any(|f| f.key == l.key);
            if self.accepted.keys.contains(&l.key) && !found {
                out.accepted.push(l);
            } else {
                list.push(l);
            }
        }
        let changed =
            !(seen.found.is_empty() && seen.restored.is_empty() && out.accepted.is_empty())
                || self.accepted.unaccounted;
        if let (Some(tree), true) = (self.tree, changed) {
            write(tree, &list, self.id.as_deref(), self.unaccounted.is_some())?;
        }
        out.unaccounted = self.unaccounted;
        out.found = seen.found.iter().map(|l| l.key).collect();
        out.restored = seen.restored;
        out.lost = list;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_round_trips_and_refuses_what_it_did_not_write() {
        let tree = Header {
            tree: TreeId {
                dev: 2049,
                ino: 12,
                btime: Some(5),
            },
            id: "0123456789abcdef0123456789abcdef".into(),
            previous: "-".into(),
        };
        let losses = vec![Loss {
            key: (2049, 77),
            btime: None,
            lost: Lost {
                bits: 0o4000,
                caps: Some(vec![1, 2]),
            },
            path: PathBuf::from(std::ffi::OsStr::from_bytes(b"rootfs/usr/bin/a\nb\xff")),
        }];
        let text = format(&tree, &losses);
        assert_eq!(parse(&text).unwrap(), (tree, losses));
        for bad in [
            "idshift-losses 2\n",
            "idshift-losses 1\ntree x 1 2 a -\n",
            "idshift-losses 1\ntree 1 2 - a\n",
            "idshift-losses 1\ntree 1 2 - a -\nl 1 2 - 7777 - 61\n",
            "idshift-losses 1\ntree 1 2 - a -\nl 1 2 - 4000 - 6\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
