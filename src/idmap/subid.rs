//! `/etc/subuid` and `/etc/subgid`: `OWNER:START:COUNT` lines, OWNER a user name or a numeric uid.
//!
//! Unlike lxc-usernsexec, every line of the user counts (in file order), numeric-uid lines count,
//! and a last line without a newline is read like any other.

use std::fs;
use std::path::{Path, PathBuf};

use super::spec::parse_number;
use super::{ByKind, IdKind, IdMap, IdMapEntry, IdRange};
use crate::error::{Error, Result};

pub const SUBUID: &str = "/etc/subuid";
pub const SUBGID: &str = "/etc/subgid";

/// Who a line delegates its range to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Name(String),
    Uid(u32),
}

/// One delegation line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubIdLine {
    pub line: usize,
    pub owner: Owner,
    pub range: IdRange,
}

impl SubIdLine {
    /// Whether the line delegates to the user with this name and uid.
    pub fn is_for(&self, user: &str, uid: u32) -> bool {
        match &self.owner {
            Owner::Name(name) => name == user,
            Owner::Uid(n) => *n == uid,
        }
    }
}

/// The user an operation acts for: a name (possibly unknown) and a uid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
}

impl User {
    /// The real user of this process, named from the passwd database where it has an entry.
    pub fn current() -> User {
        let uid = nix::unistd::getuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map_or_else(|| uid.as_raw().to_string(), |u| u.name);
        User {
            name,
            uid: uid.as_raw(),
        }
    }

    /// A user given by name or number, as `idshift ranges USER` takes it.
    pub fn lookup(spec: &str) -> Result<User> {
        let found = match spec.parse::<u32>() {
            Ok(n) => nix::unistd::User::from_uid(n.into()),
            Err(_) => nix::unistd::User::from_name(spec),
        };
        match found {
            Ok(Some(u)) => Ok(User {
                name: u.name,
                uid: u.uid.as_raw(),
            }),
            _ => match spec.parse::<u32>() {
                Ok(uid) => Ok(User {
                    name: spec.to_string(),
                    uid,
                }),
                Err(_) => Err(Error::Usage(format!("no such user: '{spec}'"))),
            },
        }
    }
}

/// Parses a whole subid file. Blank lines and `#` comments are skipped; any other line that is
/// not `OWNER:START:COUNT` is an error naming the file and line.
pub fn parse(text: &str, path: &Path) -> Result<Vec<SubIdLine>> {
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |reason: String| Error::Syntax {
            path: path.to_path_buf(),
            line: idx + 1,
            reason,
        };
        let fields: Vec<&str> = line.split(':').collect();
        let [owner, start, count] = fields[..] else {
            return Err(syntax(format!(
                "expected OWNER:START:COUNT, found '{line}'"
            )));
        };
        if owner.is_empty() {
            return Err(syntax("the owner is empty".into()));
        }
        let start = parse_number(start, "START").map_err(syntax)?;
        let count = parse_number(count, "COUNT").map_err(syntax)?;
        let range = IdRange::new(start, count).ok_or_else(|| {
            syntax(format!(
                "{start}:{count} is empty or runs past 4294967294 (the largest valid id)"
            ))
        })?;
        let owner = match owner.parse::<u32>() {
            Ok(uid) if owner.bytes().all(|b| b.is_ascii_digit()) => Owner::Uid(uid),
            _ => Owner::Name(owner.to_string()),
        };
        out.push(SubIdLine {
            line: idx + 1,
            owner,
            range,
        });
    }
    Ok(out)
}

/// Reads and parses a subid file.
pub fn read(path: &Path) -> Result<Vec<SubIdLine>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text, path)
}

/// The ranges delegated to `user`, in file order.
/// Sorted ranges with overlapping or touching ones merged (a subuid file may repeat a range, or
/// split one across lines).
pub fn merged(mut ranges: Vec<IdRange>) -> Vec<IdRange> {
    ranges.sort_by_key(|r| r.start());
    let mut out: Vec<IdRange> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start() <= last.end() => {
                let end = last.end().max(r.end());
                *last = IdRange::new(last.start(), end - last.start()).expect("within u32");
            }
            _ => out.push(r),
        }
    }
    out
}

pub fn ranges_for(lines: &[SubIdLine], user: &User) -> Vec<IdRange> {
    lines
        .iter()
        .filter(|l| l.is_for(&user.name, user.uid))
        .map(|l| l.range)
        .collect()
}

/// Where the subid files are; tests point this elsewhere.
#[derive(Clone, Debug)]
pub struct SubIdFiles {
    pub paths: ByKind<PathBuf>,
}

impl Default for SubIdFiles {
    fn default() -> Self {
        SubIdFiles::new(SUBUID, SUBGID)
    }
}

impl SubIdFiles {
    pub fn new(subuid: impl Into<PathBuf>, subgid: impl Into<PathBuf>) -> Self {
        SubIdFiles {
            paths: ByKind::new(subuid.into(), subgid.into()),
        }
    }

    pub fn path(&self, kind: IdKind) -> &Path {
        &self.paths[kind]
    }

    /// The user's delegated ranges of `kind`, in file order; a missing file delegates nothing.
    /// What is delegated to `user`: [`SubIdFiles::ranges`] with touching or overlapping lines
    /// merged, so that a map may span two lines (as newuidmap allows).
    pub fn delegated(&self, kind: IdKind, user: &User) -> Result<Vec<IdRange>> {
        self.ranges(kind, user).map(merged)
    }

    pub fn ranges(&self, kind: IdKind, user: &User) -> Result<Vec<IdRange>> {
        let path = self.path(kind);
        match fs::read_to_string(path) {
            Ok(text) => Ok(ranges_for(&parse(&text, path)?, user)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// The default map of `exec`: every delegated range, mapped from namespace id 0 upward in
    /// file order, uids and gids each on their own.
    pub fn default_map(&self, user: &User) -> Result<IdMap> {
        let mut entries = Vec::new();
        for kind in IdKind::BOTH {
            let mut next: u32 = 0;
            for range in self.ranges(kind, user)? {
                entries.push(IdMapEntry::new(kind, next, range.start(), range.count())?);
                next = next.checked_add(range.count()).ok_or_else(|| {
                    Error::Usage(format!(
                        "the {} ranges of {} in {} add up to more than 4294967295 ids",
                        kind.name(),
                        user.name,
                        self.path(kind).display()
                    ))
                })?;
            }
        }
        if entries.is_empty() {
            return Err(Error::Usage(format!(
                "no subordinate ids for user {} (uid {}) in {} or {}; give a map with -m",
                user.name,
                user.uid,
                self.paths.uid.display(),
                self.paths.gid.display()
            )));
        }
        Ok(IdMap::new(entries)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> User {
        User {
            name: "alice".into(),
            uid: 1000,
        }
    }

    fn ranges(text: &str) -> Result<Vec<(u32, u32)>> {
        let lines = parse(text, Path::new("/etc/subuid"))?;
        Ok(ranges_for(&lines, &alice())
            .into_iter()
            .map(|r| (r.start(), r.count()))
            .collect())
    }

    macro_rules! subid_tests {
        ($($name:ident: $text:expr => $want:expr,)*) => {$(
            #[test]
            fn $name() {
                let got = ranges($text).map_err(|e| e.to_string());
                assert_eq!(got, $want);
            }
        )*};
    }

    subid_tests! {
        single: "alice:100000:65536\n" => Ok(vec![(100000, 65536)]),
        several_in_file_order: "alice:300000:65536\nbob:100000:65536\nalice:200000:10\n"
            => Ok(vec![(300000, 65536), (200000, 10)]),
        numeric_uid_line: "1000:500000:65536\n1001:600000:1\nalice:100000:1\n"
            => Ok(vec![(500000, 65536), (100000, 1)]),
        no_final_newline: "bob:1:1\nalice:100000:65536" => Ok(vec![(100000, 65536)]),
        comments_and_blanks: "# delegated ranges\n\n  \nalice:100000:65536\r\n#alice:1:1\n"
            => Ok(vec![(100000, 65536)]),
        other_users_only: "bob:100000:65536\n" => Ok(vec![]),
        empty_file: "" => Ok(vec![]),
        prefix_is_not_a_match: "alicex:100000:65536\nalic:1:1\n" => Ok(vec![]),
        missing_field: "alice:100000\n"
            => Err("/etc/subuid:1: expected OWNER:START:COUNT, found 'alice:100000'".into()),
        junk_count: "bob:1:1\nalice:100000:65536x\n"
            => Err("/etc/subuid:2: COUNT '65536x' is not a decimal number".into()),
        zero_count: "alice:100000:0\n"
            => Err("/etc/subuid:1: 100000:0 is empty or runs past 4294967294 (the largest valid id)".into()),
        past_limit: "alice:4294967295:1\n"
            => Err("/etc/subuid:1: 4294967295:1 is empty or runs past 4294967294 (the largest valid id)".into()),
        empty_owner: ":1:1\n" => Err("/etc/subuid:1: the owner is empty".into()),
    }

    fn files(dir: &Path, subuid: &str, subgid: Option<&str>) -> SubIdFiles {
        std::fs::write(dir.join("subuid"), subuid).unwrap();
        if let Some(g) = subgid {
            std::fs::write(dir.join("subgid"), g).unwrap();
        }
        SubIdFiles::new(dir.join("subuid"), dir.join("subgid"))
    }

    #[test]
    fn default_map_stacks_ranges_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(
            dir.path(),
            "alice:100000:65536\n1000:300000:1000",
            Some("alice:200000:65536\n"),
        );
        let map = f.default_map(&alice()).unwrap();
        assert_eq!(
            map.to_string(),
            "u:0:100000:65536 u:65536:300000:1000 g:0:200000:65536"
        );
    }

    #[test]
    fn default_map_without_subgid_file_maps_uids_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), "alice:100000:65536\n", None);
        let map = f.default_map(&alice()).unwrap();
        assert_eq!(map.to_string(), "u:0:100000:65536");
    }

    #[test]
    fn default_map_without_any_range_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), "bob:100000:65536\n", Some(""));
        let err = f.default_map(&alice()).unwrap_err().to_string();
        assert!(
            err.starts_with("no subordinate ids for user alice (uid 1000) in "),
            "{err}"
        );
    }

    #[test]
    fn overlapping_delegations_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), "alice:100000:65536\nalice:100000:10\n", None);
        let err = f.default_map(&alice()).unwrap_err().to_string();
        assert!(err.contains("overlap in host uids"), "{err}");
    }
}
