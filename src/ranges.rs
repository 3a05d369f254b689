//! `idshift ranges [USER]`: the subordinate ranges delegated to a user, the ranges the user's
//! LXC containers use, overlaps between containers, and the first free 65536 block.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::idmap::lxc::LxcConfig;
use crate::idmap::subid::{SubIdFiles, User};
use crate::idmap::{ByKind, IdKind, IdMap, IdRange, BLOCK};
use crate::report::escape_path;

/// A container under the lxcpath and what its map takes from the host.
#[derive(Clone, Debug, Serialize)]
pub struct Container {
    pub name: String,
    /// Its map, or `null` when its config could not be read (`error` says why).
    #[serde(serialize_with = "crate::report::ser_opt_map")]
    pub map: Option<IdMap>,
    pub error: Option<String>,
    /// Host ranges of the map outside the user's delegated ranges.
    pub undelegated: Vec<KindRange>,
    /// The map an unfinished migrate or shift is taking its rootfs to (a journal pending from
    /// the configured map, or a recorded map the config does not name yet): its ids count as
    /// used.
    #[serde(serialize_with = "crate::report::ser_opt_map")]
    pub pending_target: Option<IdMap>,
}

/// LXC's default config (`default.conf`): the map new containers get.
#[derive(Clone, Debug, Serialize)]
pub struct DefaultConfig {
    #[serde(serialize_with = "crate::report::ser_path")]
    pub path: PathBuf,
    /// Its map, or `null` (`error` says why: unreadable, or no `lxc.idmap` lines).
    #[serde(serialize_with = "crate::report::ser_opt_map")]
    pub map: Option<IdMap>,
    pub error: Option<String>,
}

/// LXC's default config for the new containers of the user with uid `uid`, if it exists.
pub fn default_config_of(uid: u32) -> Option<DefaultConfig> {
    crate::idmap::lxc::default_config(uid).map(|(path, map)| {
        let (map, error) = match map {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e.to_string())),
        };
        DefaultConfig { path, map, error }
    })
}

impl DefaultConfig {
    /// `  new containers (PATH): MAP`, or why it has none.
    pub fn line(&self) -> String {
        let path = escape_path(&self.path);
        match (&self.map, &self.error) {
            (Some(m), _) => format!("  new containers ({path}): {m}\n"),
            (None, e) => format!(
                "  new containers ({path}): {}\n",
                e.as_deref().unwrap_or("")
            ),
        }
    }
}

/// Another user's delegation that shares ids with one of the user's ranges: files of either
/// user's containers there belong to both.
#[derive(Clone, Debug, Serialize)]
pub struct Shared {
    /// The other line's owner (a name, or a uid as written).
    pub owner: String,
    #[serde(serialize_with = "crate::report::ser_path")]
    pub file: PathBuf,
    pub line: usize,
    /// The other line's whole range.
    pub range: KindRange,
    /// The ids it shares with the user's ranges.
    pub shared: KindRange,
}

/// A run of host uids or gids: `{"kind": "uid", "start": 100000, "count": 65536}`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct KindRange {
    pub kind: &'static str,
    pub start: u32,
    pub count: u32,
}

impl KindRange {
    fn new(kind: IdKind, r: IdRange) -> KindRange {
        KindRange {
            kind: kind.name(),
            start: r.start(),
            count: r.count(),
        }
    }
}

impl std::fmt::Display for KindRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}:{}", self.kind, self.start, self.count)
    }
}

/// Two containers sharing host ids: a security smell.
#[derive(Clone, Debug, Serialize)]
pub struct Overlap {
    pub a: String,
    pub b: String,
    /// The host ids both map.
    pub shared: KindRange,
}

/// What `ranges` reports (`"schema": 1` in JSON, described in the README).
#[derive(Clone, Debug, Serialize)]
pub struct Ranges {
    pub schema: u32,
    pub user: String,
    pub uid: u32,
    /// The user's ranges in /etc/subuid and /etc/subgid: `[{"start": N, "count": N}]`.
    #[serde(serialize_with = "ser_ranges")]
    pub subuid: Vec<IdRange>,
    #[serde(serialize_with = "ser_ranges")]
    pub subgid: Vec<IdRange>,
    #[serde(serialize_with = "crate::report::ser_path")]
    pub lxcpath: PathBuf,
    pub containers: Vec<Container>,
    pub overlaps: Vec<Overlap>,
    /// Other users' delegations that overlap the user's.
    pub shared_with_others: Vec<Shared>,
    /// LXC's default config for the user's new containers, when it exists.
    pub default_config: Option<DefaultConfig>,
    /// The first 65536 host ids delegated as both uids and gids, used by no container nor
    /// pending target, and delegated to no other user.
    pub first_free_block: Option<u32>,
}

fn ser_ranges<S: serde::Serializer>(ranges: &[IdRange], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Range {
        start: u32,
        count: u32,
    }
    s.collect_seq(ranges.iter().map(|r| Range {
        start: r.start(),
        count: r.count(),
    }))
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
        let within = |rs: &[IdRange]| rs.iter().any(|r| r.covers(block));
        within(uids) && within(gids) && used.iter().all(|u| u.intersect(block).is_none())
    })
}

/// Host ranges of `map` (both kinds).
fn host_ranges(map: &IdMap) -> Vec<(IdKind, IdRange)> {
    map.all_entries()
        .map(|e| (e.kind(), e.host_range()))
        .collect()
}

/// Whether no single range of `delegated` covers all of `r`.
fn uncovered(r: IdRange, delegated: &[IdRange]) -> bool {
    !delegated.iter().any(|d| d.covers(r))
}

/// The containers under `lxcpath`, sorted by name: every directory with a `config`.
fn containers(lxcpath: &Path) -> Result<Vec<(String, Result<LxcConfig>)>> {
    Ok(crate::container::names(lxcpath)?
        .into_iter()
        .map(|name| {
            let config = LxcConfig::for_container(lxcpath, &name);
            (name, config)
        })
        .collect())
}

/// Gathers the report for `user`, whose containers live under `lxcpath`.
pub fn gather(user: &User, files: &SubIdFiles, lxcpath: &Path) -> Result<Ranges> {
    // The lines as they are, for the report; merged where a map may span touching lines.
    let delegated = ByKind::try_from_fn(|kind| files.ranges(kind, user))?;
    let merged = ByKind::try_from_fn(|kind| files.delegated(kind, user))?;
    let found = containers(lxcpath)?;
    let mut used = Vec::new();
    let mut report = Vec::new();
    let mut maps: Vec<(&str, Vec<(IdKind, IdRange)>)> = Vec::new();
    for (name, config) in &found {
        match config
            .as_ref()
            .map_err(ToString::to_string)
            .and_then(|config| {
                let map = config.map().map_err(|e| e.to_string())?;
                Ok((config, map))
            }) {
            Ok((config, ref m)) => {
                let ranges = host_ranges(m);
                let undelegated = ranges
                    .iter()
                    .filter(|&&(k, r)| uncovered(r, &merged[k]))
                    .map(|&(k, r)| KindRange::new(k, r))
                    .collect();
                used.extend(ranges.iter().map(|(_, r)| *r));
                maps.push((name, ranges));
                let pending_target = pending_target(lxcpath, name, config, m);
                if let Some(t) = &pending_target {
                    used.extend(host_ranges(t).iter().map(|(_, r)| *r));
                }
                report.push(Container {
                    name: name.clone(),
                    map: Some(m.clone()),
                    error: None,
                    undelegated,
                    pending_target,
                });
            }
            Err(e) => report.push(Container {
                name: name.clone(),
                map: None,
                error: Some(e),
                undelegated: Vec::new(),
                pending_target: None,
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
                            overlaps.push(Overlap {
                                a: a.to_string(),
                                b: b.to_string(),
                                shared: KindRange::new(*ka, both),
                            });
                        }
                    }
                }
            }
        }
    }
    let shared_with_others = shared_with_others(user, files, &delegated)?;
    used.extend(
        shared_with_others
            .iter()
            .filter_map(|s| IdRange::new(s.range.start, s.range.count)),
    );
    let first_free_block = first_free_block(&merged.uid, &merged.gid, &used);
    let ByKind {
        uid: subuid,
        gid: subgid,
    } = delegated;
    Ok(Ranges {
        schema: 1,
        user: user.name.clone(),
        uid: user.uid,
        subuid,
        subgid,
        lxcpath: lxcpath.to_path_buf(),
        containers: report,
        overlaps,
        shared_with_others,
        default_config: default_config_of(user.uid),
        first_free_block,
    })
}

/// Other users' lines in /etc/subuid and /etc/subgid whose ranges meet one of `mine`.
fn shared_with_others(
    user: &User,
    files: &SubIdFiles,
    mine: &ByKind<Vec<IdRange>>,
) -> Result<Vec<Shared>> {
    let mut out = Vec::new();
    for kind in IdKind::BOTH {
        let path = files.path(kind);
        let parsed = match crate::idmap::subid::read(path) {
            Ok(parsed) => parsed,
            // No file: nothing is delegated to anyone (the user's own ranges said so already).
            Err(_) => continue,
        };
        for line in parsed
            .lines
            .iter()
            .filter(|l| !l.is_for(&user.name, user.uid))
        {
            for r in &mine[kind] {
                if let Some(both) = line.range.intersect(*r) {
                    out.push(Shared {
                        owner: match &line.owner {
                            crate::idmap::subid::Owner::Name(n) => n.clone(),
                            crate::idmap::subid::Owner::Uid(u) => u.to_string(),
                        },
                        file: path.to_path_buf(),
                        line: line.line,
                        range: KindRange::new(kind, line.range),
                        shared: KindRange::new(kind, both),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The map container `name`'s rootfs is being taken to by an unfinished migrate or shift, if
/// any (an unreadable rootfs has none to report).
fn pending_target(
    lxcpath: &Path,
    name: &str,
    config: &LxcConfig,
    configured: &IdMap,
) -> Option<IdMap> {
    let c = crate::container::Container::with_config(lxcpath, name, config.clone()).ok()?;
    let from = crate::shift::View::Map(configured.clone());
    match crate::migrate::unfinished_target(&c.rootfs, &from) {
        Ok(Some(crate::shift::View::Map(m))) if &m != configured => Some(m),
        _ => None,
    }
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
        let list = |v: &[IdRange]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter().map(fmt_range).collect::<Vec<_>>().join(", ")
            }
        };
        let mut out = format!("{} (uid {}):\n", self.user, self.uid);
        out += &format!(
            "  subuid: {}\n  subgid: {}\n",
            list(&self.subuid),
            list(&self.subgid)
        );
        out += &format!("  containers under {}:", escape_path(&self.lxcpath));
        if self.containers.is_empty() {
            out += " none\n";
        } else {
            out += "\n";
        }
        for c in &self.containers {
            match (&c.map, &c.error) {
                (Some(m), _) => out += &format!("    {}: {m}", c.name),
                (None, e) => {
                    out += &format!("    {}: unreadable: {}", c.name, e.as_deref().unwrap_or(""))
                }
            }
            if let Some(t) = &c.pending_target {
                out += &format!(" (unfinished migrate or shift to {t}: counted as used)");
            }
            if !c.undelegated.is_empty() {
                let list: Vec<String> = c.undelegated.iter().map(|r| r.to_string()).collect();
                out += &format!(" (not delegated: {})", list.join(", "));
            }
            out += "\n";
        }
        for o in &self.overlaps {
            let shared = IdRange::new(o.shared.start, o.shared.count).expect("from a range");
            out += &format!(
                "  overlap: {} and {} share host {}s {shared}\n",
                o.a, o.b, o.shared.kind
            );
        }
        for o in &self.shared_with_others {
            let shared = IdRange::new(o.shared.start, o.shared.count).expect("from a range");
            out += &format!(
                "  also delegated to {} ({} line {}): host {}s {shared} (never picked as free)\n",
                o.owner,
                escape_path(&o.file),
                o.line,
                o.shared.kind
            );
        }
        if let Some(d) = &self.default_config {
            let path = escape_path(&d.path);
            match (&d.map, &d.error) {
                (Some(m), _) => out += &format!("  new containers ({path}): {m}\n"),
                (None, e) => {
                    out += &format!(
                        "  new containers ({path}): {}\n",
                        e.as_deref().unwrap_or("")
                    )
                }
            }
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
    fn a_map_spanning_touching_lines_is_delegated() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["subuid", "subgid"] {
            std::fs::write(
                dir.path().join(f),
                "alice:100000:65536\nalice:165536:65536\n",
            )
            .unwrap();
        }
        let lxc = dir.path().join("lxc");
        std::fs::create_dir_all(lxc.join("big")).unwrap();
        std::fs::write(
            lxc.join("big/config"),
            "lxc.idmap = u 0 100000 131072\nlxc.idmap = g 0 100000 131072\n",
        )
        .unwrap();
        let files = SubIdFiles::new(dir.path().join("subuid"), dir.path().join("subgid"));
        let user = User {
            name: "alice".into(),
            uid: 1000,
        };
        let rep = gather(&user, &files, &lxc).unwrap();
        assert!(rep.containers[0].undelegated.is_empty(), "{}", rep.render());
        assert_eq!(rep.subuid.len(), 2, "the lines are reported as they are");
        assert_eq!(rep.first_free_block, None);
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
        let files = SubIdFiles::new(dir.path().join("subuid"), dir.path().join("subgid"));
        let user = User {
            name: "alice".into(),
            uid: 1000,
        };
        let rep = gather(&user, &files, &lxc).unwrap();
        assert_eq!(rep.subuid, [r(100000, 65536), r(200000, 131072)]);
        assert_eq!(rep.containers.len(), 3);
        let undelegated: Vec<String> = rep.containers[1]
            .undelegated
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(undelegated, ["gid 500000:10"]);
        assert!(rep.containers[2].map.is_none() && rep.containers[2].error.is_some());
        assert_eq!(rep.first_free_block, Some(200000));
        let text = rep.render();
        assert!(
            text.contains("overlap: c1 and c2 share host uids 100000-100009"),
            "{text}"
        );
        assert!(text.contains("first free block: 200000 (b:0:200000:65536)"));
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(
            json["subuid"][1],
            serde_json::json!({"start": 200000, "count": 131072})
        );
        assert_eq!(
            json["overlaps"][0],
            serde_json::json!({"a": "c1", "b": "c2",
                "shared": {"kind": "uid", "start": 100000, "count": 10}})
        );
        assert_eq!(json["containers"][0]["map"]["uid"][0]["host"], 100000);
        assert!(json["containers"][2]["map"].is_null());
    }
}
