//! `/etc/subuid` and `/etc/subgid`: `OWNER:START:COUNT` lines, OWNER a user name or a numeric uid.
//!
//! Unlike lxc-usernsexec, every line of the user counts (in file order), numeric-uid lines count,
//! and a last line without a newline is read like any other.
//!
//! As newuidmap does, a malformed line of another user does not stop the caller: it is set
//! aside ([`Parsed::malformed`]) and the commands that read the files for a user print
//! [`SubIdFiles::skipped`] as warnings. A malformed line that could be the user's (its owner
//! field is their name or uid) is an error. A range the user is given twice is used once.

use std::fs;
use std::path::{Path, PathBuf};

use super::spec::parse_number;
use super::{ByKind, IdKind, IdMap, IdMapEntry, IdRange};
use crate::error::{Error, Result};
use crate::report::escape_path;

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

/// A subid file read leniently: the well-formed lines, and the malformed ones set aside so that
/// the caller decides whose they are (see [`Parsed::for_user`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub lines: Vec<SubIdLine>,
    pub malformed: Vec<Malformed>,
}

/// A line that is not `OWNER:START:COUNT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed {
    pub path: PathBuf,
    pub line: usize,
    /// The line, trimmed.
    pub text: String,
    /// Its first field: whose the line would be.
    pub owner: String,
    pub reason: String,
}

const FIELDS: &str = "expected OWNER:START:COUNT";

impl Malformed {
    /// Whether the line could be `user`'s: its owner field is the user's name or uid.
    pub fn could_be(&self, user: &User) -> bool {
        self.owner == user.name
            || (!self.owner.is_empty()
                && self.owner.bytes().all(|b| b.is_ascii_digit())
                && self.owner.parse::<u32>() == Ok(user.uid))
    }

    /// The error a malformed line of the user's is.
    pub fn error(&self) -> Error {
        let reason = if self.reason == FIELDS {
            format!("{FIELDS}, found '{}'", self.text)
        } else {
            self.reason.clone()
        };
        Error::Syntax {
            path: self.path.clone(),
            line: self.line,
            reason,
        }
    }

    /// The warning a skipped line of another user is worth.
    pub fn warning(&self) -> String {
        format!(
            "{}:{}: skipped a malformed line of another user ('{}': {})",
            escape_path(&self.path),
            self.line,
            self.text,
            self.reason
        )
    }
}

impl Parsed {
    /// The lines as `user` may rely on them: an error if a malformed line could be theirs;
    /// malformed lines of other users are left in `malformed` (as newuidmap ignores them).
    pub fn for_user(self, user: &User) -> Result<Parsed> {
        match self.malformed.iter().find(|m| m.could_be(user)) {
            Some(m) => Err(m.error()),
            None => Ok(self),
        }
    }

    /// Warnings for the malformed lines that are not `user`'s, one each.
    pub fn warnings(&self, user: &User) -> Vec<String> {
        self.malformed
            .iter()
            .filter(|m| !m.could_be(user))
            .map(Malformed::warning)
            .collect()
    }
}

/// Parses a whole subid file. Blank lines and `#` comments are skipped; any other line that is
/// not `OWNER:START:COUNT` is set aside in [`Parsed::malformed`], naming the file and line.
pub fn parse(text: &str, path: &Path) -> Parsed {
    let mut out = Parsed::default();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok((owner, range)) => out.lines.push(SubIdLine {
                line: idx + 1,
                owner,
                range,
            }),
            Err(reason) => out.malformed.push(Malformed {
                path: path.to_path_buf(),
                line: idx + 1,
                text: line.to_string(),
                owner: line.split(':').next().unwrap_or_default().to_string(),
                reason,
            }),
        }
    }
    out
}

fn parse_line(line: &str) -> std::result::Result<(Owner, IdRange), String> {
    let fields: Vec<&str> = line.split(':').collect();
    let [owner, start, count] = fields[..] else {
        return Err(FIELDS.into());
    };
    if owner.is_empty() {
        return Err("the owner is empty".into());
    }
    let start = parse_number(start, "START")?;
    let count = parse_number(count, "COUNT")?;
    let range = IdRange::new(start, count).ok_or_else(|| {
        format!("{start}:{count} is empty or runs past 4294967294 (the largest valid id)")
    })?;
    let owner = match owner.parse::<u32>() {
        Ok(uid) if owner.bytes().all(|b| b.is_ascii_digit()) => Owner::Uid(uid),
        _ => Owner::Name(owner.to_string()),
    };
    Ok((owner, range))
}

/// Reads and parses a subid file.
pub fn read(path: &Path) -> Result<Parsed> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(parse(&text, path))
}

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

/// The ranges delegated to `user`, in file order. A range given twice (the same line repeated,
/// or once by name and once by uid) is used once, at its first line.
pub fn ranges_for(lines: &[SubIdLine], user: &User) -> Vec<IdRange> {
    let mut out: Vec<IdRange> = Vec::new();
    for l in lines.iter().filter(|l| l.is_for(&user.name, user.uid)) {
        if !out.contains(&l.range) {
            out.push(l.range);
        }
    }
    out
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

    /// What is delegated to `user`: [`SubIdFiles::ranges`] with touching or overlapping lines
    /// merged, so that a map may span two lines (as newuidmap allows).
    pub fn delegated(&self, kind: IdKind, user: &User) -> Result<Vec<IdRange>> {
        self.ranges(kind, user).map(merged)
    }

    /// The user's delegated ranges of `kind`, in file order, each once; a missing file delegates
    /// nothing. A malformed line that could be the user's is an error; those of other users are
    /// skipped here and listed by [`SubIdFiles::skipped`].
    pub fn ranges(&self, kind: IdKind, user: &User) -> Result<Vec<IdRange>> {
        let parsed = self.parsed(kind)?.for_user(user)?;
        Ok(ranges_for(&parsed.lines, user))
    }

    /// Warnings for the malformed lines of other users in both files, one line each, for the
    /// commands that read the files for `user` to print. Unreadable files give none: reading
    /// them for the ranges reports that.
    pub fn skipped(&self, user: &User) -> Vec<String> {
        IdKind::BOTH
            .into_iter()
            .filter_map(|kind| self.parsed(kind).ok())
            .flat_map(|p| p.warnings(user))
            .collect()
    }

    fn parsed(&self, kind: IdKind) -> Result<Parsed> {
        let path = self.path(kind);
        match fs::read_to_string(path) {
            Ok(text) => Ok(parse(&text, path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Parsed::default()),
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
                        escape_path(self.path(kind))
                    ))
                })?;
            }
        }
        if entries.is_empty() {
            return Err(Error::Usage(format!(
                "no subordinate ids for user {} (uid {}) in {} or {}; give a map with -m",
                user.name,
                user.uid,
                escape_path(&self.paths.uid),
                escape_path(&self.paths.gid)
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
        let parsed = parse(text, Path::new("/etc/subuid")).for_user(&alice())?;
        Ok(ranges_for(&parsed.lines, &alice())
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
        empty_owner_is_nobodys: ":1:1\n" => Ok(vec![]),
        own_uid_line_malformed: "bob:1:1\n1000:100000\n"
            => Err("/etc/subuid:2: expected OWNER:START:COUNT, found '1000:100000'".into()),
        own_name_without_fields: "alice\n"
            => Err("/etc/subuid:1: expected OWNER:START:COUNT, found 'alice'".into()),
        others_malformed_skipped: "bob:100000\nbob:abc:65536\n1001:1:0\ncarol:4294967295:2\nalice:100000:65536\n:1:1\n"
            => Ok(vec![(100000, 65536)]),
        exact_duplicate_used_once: "alice:100000:65536\nalice:100000:65536\n"
            => Ok(vec![(100000, 65536)]),
        name_and_uid_duplicate_used_once: "alice:100000:65536\nalice:200000:10\n1000:100000:65536\n"
            => Ok(vec![(100000, 65536), (200000, 10)]),
        same_start_other_count_kept: "alice:100000:65536\nalice:100000:10\n"
            => Ok(vec![(100000, 65536), (100000, 10)]),
    }

    fn warnings(text: &str) -> Vec<String> {
        parse(text, Path::new("/etc/subuid")).warnings(&alice())
    }

    #[test]
    fn malformed_lines_of_others_are_warned_one_each() {
        let text = "bob:100000\nbob:abc:65536\n# note\n\n1001:1:0\ncarol:4294967295:2\n\
                    alice:100000:65536\ndave:1:2:3\n";
        assert_eq!(
            warnings(text),
            [
                "/etc/subuid:1: skipped a malformed line of another user ('bob:100000': expected OWNER:START:COUNT)",
                "/etc/subuid:2: skipped a malformed line of another user ('bob:abc:65536': START 'abc' is not a decimal number)",
                "/etc/subuid:5: skipped a malformed line of another user ('1001:1:0': 1:0 is empty or runs past 4294967294 (the largest valid id))",
                "/etc/subuid:6: skipped a malformed line of another user ('carol:4294967295:2': 4294967295:2 is empty or runs past 4294967294 (the largest valid id))",
                "/etc/subuid:8: skipped a malformed line of another user ('dave:1:2:3': expected OWNER:START:COUNT)",
            ]
        );
    }

    #[test]
    fn own_malformed_lines_are_not_warnings() {
        assert!(warnings("alice:1\n1000:x:1\n").is_empty());
        assert!(warnings("bob:1:1\n# bob:x\n\n").is_empty());
    }

    #[test]
    fn start_overflow_of_another_user_is_skipped() {
        let w = warnings("bob:4294967296:1\nalice:1:1\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("/etc/subuid:1: skipped a malformed line of another user ('bob:4294967296:1': START"), "{w:?}");
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
    fn default_map_skips_others_malformed_lines_and_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(
            dir.path(),
            "bob:100000\nalice:100000:65536\n",
            Some("bob:abc:65536\nalice:200000:65536\n"),
        );
        let map = f.default_map(&alice()).unwrap();
        assert_eq!(map.to_string(), "u:0:100000:65536 g:0:200000:65536");
        let skipped = f.skipped(&alice());
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].ends_with("/subuid:1: skipped a malformed line of another user ('bob:100000': expected OWNER:START:COUNT)"), "{skipped:?}");
        assert!(
            skipped[1]
                .contains("/subgid:1: skipped a malformed line of another user ('bob:abc:65536'"),
            "{skipped:?}"
        );
        assert!(f
            .skipped(&User {
                name: "bob".into(),
                uid: 1001
            })
            .is_empty());
    }

    #[test]
    fn default_map_fails_on_own_malformed_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), "alice:100000:65536\n", Some("alice:200000\n"));
        let err = f.default_map(&alice()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("/subgid:1: expected OWNER:START:COUNT, found 'alice:200000'"),
            "{err}"
        );
        assert!(err.is_usage(), "{err}");
    }

    #[test]
    fn default_map_uses_a_duplicated_range_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(
            dir.path(),
            "alice:100000:65536\nalice:100000:65536\n1000:100000:65536\n",
            Some("alice:200000:65536\n1000:200000:65536\n"),
        );
        let map = f.default_map(&alice()).unwrap();
        assert_eq!(map.to_string(), "u:0:100000:65536 g:0:200000:65536");
        assert_eq!(f.delegated(IdKind::Uid, &alice()).unwrap().len(), 1);
    }

    #[test]
    fn overlapping_delegations_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path(), "alice:100000:65536\nalice:100000:10\n", None);
        let err = f.default_map(&alice()).unwrap_err().to_string();
        assert!(err.contains("overlap in host uids"), "{err}");
    }
}
