//! The tree's loss list: what the chown of an interrupted run took from an inode (setuid or
//! setgid bits, a file capability) when another process changed the inode before a later run
//! could write it back. The change wins, so nothing is written back; the loss is kept beside the
//! tree (`PARENT/.NAME.idshift-losses`, read only where idshift could have written it itself,
//! like the journal, and bound to the tree's identity) and every later shift and `status` name
//! it, until the inode holds what it lost again (seen on disk) or the user accepts the loss
//! (`--accept-loss PATH`).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Mutex;

use nix::errno::Errno;

use super::state::{self, hex, opt_num, parse_key, parse_opt_num, unhex, Beside};
use super::steps::{Held, Lost};
use crate::error::{Error, Result};
use crate::sys::fs as sysfs;
use crate::tree::{Tree, TreeId};

const FORMAT: &str = "idshift-losses 1";
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

fn format(tree: TreeId, losses: &[Loss]) -> String {
    let mut text = format!(
        "{FORMAT}\ntree {} {} {}\n",
        tree.dev,
        tree.ino,
        opt_num(tree.btime)
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

fn parse(text: &str) -> std::result::Result<(TreeId, Vec<Loss>), String> {
    let mut lines = text.lines();
    if lines.next() != Some(FORMAT) {
        return Err(format!("it does not begin with '{FORMAT}'"));
    }
    let tree = lines
        .next()
        .and_then(|l| l.strip_prefix("tree "))
        .and_then(|t| {
            let (key, btime) = t.rsplit_once(' ')?;
            let (dev, ino) = parse_key(key)?;
            Some(TreeId {
                dev,
                ino,
                btime: parse_opt_num(btime)?,
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
    Ok((tree, losses))
}

/// The tree's loss list, and a warning when a file stands there that is not used.
pub fn read(tree: &Tree) -> Result<(Vec<Loss>, Option<String>)> {
    let shown = crate::report::escape_path(&path(tree));
    let not_used = |why: String| Ok((Vec::new(), Some(format!("{shown}: not used: {why}"))));
    let bytes = match state::read_beside(tree, &file_name(tree), MAX_LIST)? {
        Beside::Absent => return Ok((Vec::new(), None)),
        Beside::Untrusted(why) => return not_used(why),
        Beside::Read(_, bytes) => bytes,
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return not_used("it is not text".into());
    };
    match parse(&text) {
        Err(why) => not_used(why),
        Ok((id, _)) if id != tree.id() => {
            not_used("it belongs to another tree (the tree was replaced since)".into())
        }
        Ok((_, losses)) => Ok((losses, None)),
    }
}

/// Writes the list durably (a new file renamed over the old one); removes it when empty.
pub fn write(tree: &Tree, losses: &[Loss]) -> Result<()> {
    let (name, parent) = (file_name(tree), tree.parent.as_fd());
    let cannot = |action: &str, e: Errno| {
        Error::sys(
            format!("{}: {action}", crate::report::escape_path(&path(tree))),
            e,
        )
    };
    super::crash_point();
    if losses.is_empty() {
        return match sysfs::unlink(parent, &name) {
            Ok(()) | Err(Errno::ENOENT) => sysfs::fsync(parent).map_err(|e| cannot("sync", e)),
            Err(e) => Err(cannot("remove", e)),
        };
    }
    let mut tmp = name.as_bytes().to_vec();
    tmp.extend_from_slice(b".new");
    let tmp = CString::new(tmp).expect("no NUL");
    match sysfs::unlink(parent, &tmp) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(cannot("clear the way", e)),
    }
    let mut file = sysfs::create_private(parent, &tmp).map_err(|e| cannot("create", e))?;
    let written = file
        .write_all(format(tree.id(), losses).as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = sysfs::unlink(parent, &tmp);
        return Err(Error::io(path(tree), e));
    }
    nix::fcntl::renameat(parent, tmp.as_c_str(), parent, name.as_c_str())
        .map_err(|e| cannot("rename into place", e))?;
    sysfs::fsync(parent).map_err(|e| cannot("sync", e))
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
    /// Not in the tree any more (a complete walk did not see the inode).
    pub gone: Vec<Loss>,
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
    accepted: HashSet<(u64, u64)>,
    seen: Mutex<Seen>,
}

impl<'a> Ledger<'a> {
    /// `tree` is where found losses are written (`None`: a dry run writes nothing).
    pub fn new(tree: Option<&'a Tree>, known: Vec<Loss>, accepted: HashSet<(u64, u64)>) -> Self {
        Ledger {
            tree,
            known: known.into_iter().map(|l| (l.key, l)).collect(),
            accepted,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// A ledger that knows of no loss and writes none (read-only passes).
    pub fn empty() -> Ledger<'static> {
        Ledger::new(None, Vec::new(), HashSet::new())
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The known loss of this inode, if any.
    pub fn known(&self, key: (u64, u64), btime: Option<i128>) -> Option<&Loss> {
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
            Some(tree) => write(tree, &self.list(&seen)),
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

    /// Ends the run: what became of each loss. `complete`: the walk saw every inode of the
    /// tree, so a known loss it did not see is of an inode that is gone. Writes the list
    /// (unless a dry run).
    pub fn finish(self, complete: bool) -> Result<Outcome> {
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out = Outcome::default();
        let mut list = Vec::new();
        for l in self.list(&seen) {
            if !seen.seen.contains(&l.key) && complete {
                out.gone.push(l);
            } else if self.accepted.contains(&l.key) && !seen.found.iter().any(|f| f.key == l.key) {
                out.accepted.push(l);
            } else {
                list.push(l);
            }
        }
        if let Some(tree) = self.tree {
            if !(list.is_empty() && self.known.is_empty() && seen.found.is_empty()) {
                write(tree, &list)?;
            }
        }
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
        let tree = TreeId {
            dev: 2049,
            ino: 12,
            btime: Some(5),
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
        let text = format(tree, &losses);
        assert_eq!(parse(&text).unwrap(), (tree, losses));
        for bad in [
            "idshift-losses 2\n",
            "idshift-losses 1\ntree x 1 2\n",
            "idshift-losses 1\ntree 1 2 -\nl 1 2 - 7777 - 61\n",
            "idshift-losses 1\ntree 1 2 -\nl 1 2 - 4000 - 6\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
