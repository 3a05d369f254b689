//! Unprivileged shifting: a caller without root may shift between id ranges delegated to them
//! in /etc/subuid and /etc/subgid. The shift then runs inside a user namespace (maps written by
//! newuidmap/newgidmap) that maps those ranges and the caller's own ids each onto themselves,
//! so the ids the walk sees and writes are the host ids, and every id outside them reads as
//! unmapped (the overflow id, or -1 in an ACL) and is never written.

use super::View;
use crate::error::{Error, Result};
use crate::idmap::subid::{SubIdFiles, User};
use crate::idmap::{ByKind, IdKind, IdMap, IdMapEntry, IdRange};

/// The namespace map for shifting `from` → `to` as `user` with `own` ids (uid, gid): refused,
/// before anything changes, when either map names host ids not delegated to `user`.
pub fn namespace_map(
    from: &View,
    to: &View,
    user: &User,
    own: ByKind<u32>,
    files: &SubIdFiles,
) -> Result<IdMap> {
    let (View::Map(from), View::Map(to)) = (from, to) else {
        return Err(Error::Refused(
            "shifting from or to the host view touches host ids (root's files among them): \
             that needs root; without root, shift between two ranges delegated to you"
                .into(),
        ));
    };
    let mut entries = Vec::new();
    for kind in IdKind::BOTH {
        // Touching or overlapping lines are one delegation: a map may span two of them.
        let delegated = files.delegated(kind, user)?;
        for (which, map) in [("FROM", from), ("TO", to)] {
            for e in map.entries(kind) {
                let r = e.host_range();
                if !delegated.iter().any(|d| d.covers(r)) {
                    return Err(Error::Refused(format!(
                        "host {}s {r} of the {which} map '{e}' are not delegated to {} in {}: \
                         without root, idshift only shifts between ranges you own (see \
                         `idshift ranges`); nothing was changed",
                        kind.name(),
                        user.name,
                        crate::report::escape_path(files.path(kind))
                    )));
                }
            }
        }
        let own = own[kind];
        let mut ranges: Vec<IdRange> = delegated;
        if !ranges.iter().any(|r| r.contains(own)) {
            ranges.push(IdRange::new(own, 1).expect("one id"));
        }
        for r in ranges {
            entries.push(
                IdMapEntry::new(kind, r.start(), r.start(), r.count()).map_err(|source| {
                    Error::Derived {
                        what: "the namespace map".into(),
                        source,
                    }
                })?,
            );
        }
    }
    IdMap::new(entries).map_err(|source| Error::Derived {
        what: "the namespace map".into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path) -> SubIdFiles {
        std::fs::write(
            dir.join("subuid"),
            "alice:200000:65536\n1000:300000:65536\nbob:100000:65536\nalice:200000:1000\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("subgid"),
            "alice:200000:65536\nalice:300000:65536\n",
        )
        .unwrap();
        SubIdFiles::new(dir.join("subuid"), dir.join("subgid"))
    }

    fn alice() -> User {
        User {
            name: "alice".into(),
            uid: 1000,
        }
    }

    fn view(text: &str) -> View {
        View::Map(IdMap::parse_list(text).unwrap())
    }

    #[test]
    fn maps_the_delegated_ranges_and_own_ids_onto_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let alice = alice();
        let map = namespace_map(
            &view("b:0:200000:65536"),
            &view("b:0:300000:65536"),
            &alice,
            ByKind::new(1000, 1000),
            &files(dir.path()),
        )
        .unwrap();
        assert_eq!(
            map.to_string(),
            "u:200000:200000:65536 u:300000:300000:65536 u:1000:1000:1 \
             g:200000:200000:65536 g:300000:300000:65536 g:1000:1000:1"
        );
    }

    #[test]
    fn a_map_may_span_two_touching_delegated_lines() {
        let dir = tempfile::tempdir().unwrap();
        let line = "alice:200000:65536\nalice:265536:65536\nalice:300000:1\n";
        std::fs::write(dir.path().join("subuid"), line).unwrap();
        std::fs::write(dir.path().join("subgid"), line).unwrap();
        let f = SubIdFiles::new(dir.path().join("subuid"), dir.path().join("subgid"));
        let map = namespace_map(
            &view("b:0:200000:131072"),
            &view("b:0:210000:65536"),
            &alice(),
            ByKind::new(1000, 1000),
            &f,
        )
        .unwrap();
        assert!(
            map.to_string()
                .starts_with("u:200000:200000:131072 u:1000:1000:1"),
            "{map}"
        );
    }

    #[test]
    fn refuses_ranges_not_delegated_and_the_host_view() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let alice = alice();
        let err = namespace_map(
            &view("b:0:200000:65536"),
            &view("b:0:100000:65536"),
            &alice,
            ByKind::new(1000, 1000),
            &f,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Refused(_)));
        let msg = err.to_string();
        assert!(msg.starts_with("host uids 100000-165535 of the TO map 'u:0:100000:65536' are not delegated to alice in "), "{msg}");
        // One id past the delegated range is enough to refuse.
        let err = namespace_map(
            &view("b:0:200000:65536"),
            &view("b:0:300001:65536"),
            &alice,
            ByKind::new(1000, 1000),
            &f,
        )
        .unwrap_err();
        assert!(err.to_string().contains("300001-365536"), "{err}");
        let err = namespace_map(
            &View::Host,
            &view("b:0:200000:65536"),
            &alice,
            ByKind::new(1000, 1000),
            &f,
        )
        .unwrap_err();
        assert!(err.to_string().contains("needs root"), "{err}");
    }
}
