//! `idshift ranges [USER]`: the subordinate ranges delegated to a user, the ranges the user's
//! LXC containers use, overlaps between containers, and the first free 65536 block.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::idmap::lxc::LxcConfig;
use crate::idmap::subid::{SubIdFiles, User};
use crate::idmap::{IdKind, IdMap, IdRange};

/// The size of the block `migrate --to auto` needs.
pub const BLOCK: u32 = 65536;

#[derive(Clone, Debug, Serialize)]
pub struct Container {
    pub name: String,
    /// `u:0:100000:65536 g:0:100000:65536`, or why it could not be read.
    pub map: Result<String, String>,
    /// Host ranges of the map outside the user's delegated ranges.
    pub undelegated: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ranges {
    pub user: String,
    pub uid: u32,
    pub subuid: Vec<String>,
    pub subgid: Vec<String>,
    pub lxcpath: PathBuf,
    pub containers: Vec<Container>,
    /// Pairs of containers sharing host ids: a security smell.
    pub overlaps: Vec<String>,
    /// The first 65536 host ids delegated as both uids and gids and used by no container.
    pub first_free_block: Option<u32>,
}

fn fmt_range(r: &IdRange) -> String {
    format!("{}:{}", r.start(), r.count())
}

/// The first block of `BLOCK` ids, starting at a delegated range's start or a multiple of
/// `BLOCK` past it, that lies in both `uids` and `gids` and meets none of `used`.
pub fn first_free_block(uids: &[IdRange], gids: &[IdRange], used: &[IdRange]) -> Option<u32> {
    let mut candidates: Vec<u32> = uids
        .iter()
        .flat_map(|r| (0..r.count() / BLOCK).map(move |k| r.start() + k * BLOCK))
        .collect();
    candidates.sort_unstable();
    candidates.into_iter().find(|&start| {
        let block = IdRange::new(start, BLOCK).expect("inside a valid range");
        let within = |rs: &[IdRange]| {
            rs.iter()
                .any(|r| r.start() <= start && block.end() <= r.end())
        };
        within(uids) && within(gids) && used.iter().all(|u| u.intersect(block).is_none())
    })
}

/// Host ranges of `map` (both kinds).
fn host_ranges(map: &IdMap) -> Vec<(IdKind, IdRange)> {
    map.all_entries()
        .map(|e| (e.kind, e.host_range()))
        .collect()
}

/// Parts of `r` that no range of `delegated` covers.
fn uncovered(r: IdRange, delegated: &[IdRange]) -> bool {
    !delegated
        .iter()
        .any(|d| d.start() <= r.start() && r.end() <= d.end())
}

/// The containers under `lxcpath`, sorted by name: every directory with a `config`.
fn containers(lxcpath: &Path) -> Result<Vec<(String, Result<IdMap>)>> {
    let entries = match std::fs::read_dir(lxcpath) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(lxcpath, e)),
    };
    let mut out: Vec<(String, Result<IdMap>)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("config").is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let map = LxcConfig::for_container(lxcpath, &name).and_then(|c| c.map());
            (name, map)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Gathers the report for `user`, whose containers live under `lxcpath`.
pub fn gather(user: &User, files: &SubIdFiles, lxcpath: &Path) -> Result<Ranges> {
    let subuid = files.ranges(IdKind::Uid, user)?;
    let subgid = files.ranges(IdKind::Gid, user)?;
    let found = containers(lxcpath)?;
    let mut used = Vec::new();
    let mut report = Vec::new();
    let mut maps: Vec<(&str, Vec<(IdKind, IdRange)>)> = Vec::new();
    for (name, map) in &found {
        match map {
            Ok(m) => {
                let ranges = host_ranges(m);
                let undelegated = ranges
                    .iter()
                    .filter(|(k, r)| {
                        uncovered(*r, if *k == IdKind::Uid { &subuid } else { &subgid })
                    })
                    .map(|(k, r)| format!("{} {}", k.name(), fmt_range(r)))
                    .collect();
                used.extend(ranges.iter().map(|(_, r)| *r));
                maps.push((name, ranges));
                report.push(Container {
                    name: name.clone(),
                    map: Ok(m.to_string()),
                    undelegated,
                });
            }
            Err(e) => report.push(Container {
                name: name.clone(),
                map: Err(e.to_string()),
                undelegated: Vec::new(),
            }),
        }
    }
    let mut overlaps = Vec::new();
    for (i, (a, ra)) in maps.iter().enumerate() {
        for (b, rb) in &maps[i + 1..] {
            for (ka, x) in ra {
                for (kb, y) in rb {
                    if ka == kb {
                        if let Some(both) = x.intersect(*y) {
                            overlaps.push(format!("{a} and {b} share host {}s {both}", ka.name()));
                        }
                    }
                }
            }
        }
    }
    Ok(Ranges {
        user: user.name.clone(),
        uid: user.uid,
        subuid: subuid.iter().map(fmt_range).collect(),
        subgid: subgid.iter().map(fmt_range).collect(),
        lxcpath: lxcpath.to_path_buf(),
        containers: report,
        overlaps,
        first_free_block: first_free_block(&subuid, &subgid, &used),
    })
}

/// The lxcpath of another user: `~USER/.local/share/lxc` (or `/var/lib/lxc` for root).
pub fn lxcpath_of(user: &User) -> Result<PathBuf> {
    if user.uid == 0 {
        return Ok(PathBuf::from("/var/lib/lxc"));
    }
    let home = nix::unistd::User::from_uid(user.uid.into())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .ok_or_else(|| {
            Error::Usage(format!("user {} has no home directory; give -P", user.name))
        })?;
    Ok(home.join(".local/share/lxc"))
}

impl Ranges {
    pub fn render(&self) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let mut out = format!("{} (uid {}):\n", self.user, self.uid);
        out += &format!(
            "  subuid: {}\n  subgid: {}\n",
            list(&self.subuid),
            list(&self.subgid)
        );
        out += &format!("  containers under {}:", self.lxcpath.display());
        if self.containers.is_empty() {
            out += " none\n";
        } else {
            out += "\n";
        }
        for c in &self.containers {
            match &c.map {
                Ok(m) => out += &format!("    {}: {m}", c.name),
                Err(e) => out += &format!("    {}: unreadable: {e}", c.name),
            }
            if !c.undelegated.is_empty() {
                out += &format!(" (not delegated: {})", c.undelegated.join(", "));
            }
            out += "\n";
        }
        for o in &self.overlaps {
            out += &format!("  overlap: {o}\n");
        }
        match self.first_free_block {
            Some(b) => out += &format!("  first free block: {b} (b:0:{b}:{BLOCK})\n"),
            None => out += "  first free block: none (no delegated 65536 ids are unused)\n",
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u32, count: u32) -> IdRange {
        IdRange::new(start, count).unwrap()
    }

    #[test]
    fn free_block_skips_used_and_needs_both_kinds() {
        let d = [r(100000, 65536), r(200000, 131072)];
        assert_eq!(first_free_block(&d, &d, &[]), Some(100000));
        assert_eq!(first_free_block(&d, &d, &[r(100000, 65536)]), Some(200000));
        assert_eq!(
            first_free_block(&d, &d, &[r(100000, 1), r(200010, 5)]),
            Some(265536)
        );
        assert_eq!(first_free_block(&d, &[r(200000, 65536)], &[]), Some(200000));
        assert_eq!(first_free_block(&[r(0, 1000)], &[r(0, 1000)], &[]), None);
    }

    #[test]
    fn report_lists_containers_overlaps_and_undelegated_ranges() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("subuid"),
            "alice:100000:65536\n1000:200000:131072",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("subgid"),
            "alice:100000:65536\nalice:200000:131072\n",
        )
        .unwrap();
        let lxc = dir.path().join("lxc");
        for (name, conf) in [
            (
                "c1",
                "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n",
            ),
            (
                "c2",
                "lxc.idmap = u 0 100000 10\nlxc.idmap = g 0 500000 10\n",
            ),
            ("c3", "lxc.arch = linux64\n"),
        ] {
            std::fs::create_dir_all(lxc.join(name)).unwrap();
            std::fs::write(lxc.join(name).join("config"), conf).unwrap();
        }
        let files = SubIdFiles {
            subuid: dir.path().join("subuid"),
            subgid: dir.path().join("subgid"),
        };
        let user = User {
            name: "alice".into(),
            uid: 1000,
        };
        let rep = gather(&user, &files, &lxc).unwrap();
        assert_eq!(rep.subuid, ["100000:65536", "200000:131072"]);
        assert_eq!(rep.containers.len(), 3);
        assert_eq!(rep.containers[1].undelegated, ["gid 500000:10"]);
        assert!(rep.containers[2].map.is_err());
        assert_eq!(rep.overlaps, ["c1 and c2 share host uids 100000-100009"]);
        assert_eq!(rep.first_free_block, Some(200000));
        assert!(rep
            .render()
            .contains("first free block: 200000 (b:0:200000:65536)"));
    }
}
