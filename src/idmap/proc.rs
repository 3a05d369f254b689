//! `/proc/PID/uid_map` and `gid_map`: the map of a running user namespace, as the kernel shows
//! it — one `NSID HOSTID COUNT` extent a line, the numbers padded with spaces.
//!
//! The initial namespace shows the one identity extent `0 0 4294967295`, which no [`IdMap`] can
//! hold (`-1` is never a valid id): it is left out, and a namespace with nothing else is the
//! initial one ([`read`] answers `None`).

use std::path::Path;

use super::{IdKind, IdMap, IdMapEntry};
use crate::error::{Error, Result};

/// The extent of the initial namespace: every id is itself.
const IDENTITY: (u32, u32, u32) = (0, 0, u32::MAX);

/// The extents of one map file's text, in file order, without the identity extent. The error
/// says what is wrong with which line; the caller names the file.
pub fn parse(kind: IdKind, text: &str) -> std::result::Result<Vec<IdMapEntry>, String> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let f: Vec<u32> = line
            .split_ascii_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        let [ns, host, count] = f[..] else {
            return Err(format!("unexpected line '{line}'"));
        };
        if (ns, host, count) == IDENTITY {
            continue;
        }
        entries.push(IdMapEntry::new(kind, ns, host, count).map_err(|e| e.to_string())?);
    }
    Ok(entries)
}

/// The map of the user namespace of the process whose `/proc/PID` directory is `dir`; `None`
/// in the initial namespace (which maps every id to itself).
pub fn read(dir: &Path) -> Result<Option<IdMap>> {
    let mut entries = Vec::new();
    for kind in IdKind::BOTH {
        let path = dir.join(format!("{}_map", kind.name()));
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let extents = parse(kind, &text).map_err(|reason| Error::Corrupt {
            path: path.clone(),
            reason,
        })?;
        entries.extend(extents);
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let map = IdMap::new(entries).map_err(|e| Error::Corrupt {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Some(map))
}

/// The map of the user namespace this process is in, from `/proc/self/{uid,gid}_map`; `None`
/// in the initial namespace.
pub fn current_map() -> Result<Option<IdMap>> {
    read(Path::new("/proc/self"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: IdKind, ns: u32, host: u32, count: u32) -> IdMapEntry {
        IdMapEntry::new(kind, ns, host, count).unwrap()
    }

    #[test]
    fn kernel_padding_and_several_extents() {
        let text = "         0     100000      65536\n     65536    1000000          1\n";
        assert_eq!(
            parse(IdKind::Uid, text).unwrap(),
            vec![
                entry(IdKind::Uid, 0, 100000, 65536),
                entry(IdKind::Uid, 65536, 1000000, 1)
            ]
        );
    }

    #[test]
    fn identity_extent_is_left_out() {
        assert_eq!(parse(IdKind::Gid, "0 0 4294967295\n").unwrap(), vec![]);
        assert_eq!(parse(IdKind::Gid, "").unwrap(), vec![]);
    }

    macro_rules! bad_line_tests {
        ($($name:ident: $text:expr, $why:expr;)*) => {$(
            #[test]
            fn $name() {
                let err = parse(IdKind::Uid, $text).unwrap_err();
                assert!(err.contains($why), "{err}");
            }
        )*};
    }

    bad_line_tests! {
        two_numbers: "0 100000\n", "unexpected line '0 100000'";
        four_numbers: "0 100000 1 2\n", "unexpected line";
        negative: "0 -1 1\n", "unexpected line";
        zero_count: "0 100000 0\n", "COUNT must be at least 1";
        past_the_last_id: "4294967290 0 10\n", "namespace range runs past";
    }

    #[test]
    fn read_gives_none_for_the_initial_namespace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("uid_map"), "0 0 4294967295\n").unwrap();
        std::fs::write(dir.path().join("gid_map"), "0 0 4294967295\n").unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
    }

    #[test]
    fn read_gives_both_kinds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("uid_map"), "0 100000 65536\n").unwrap();
        std::fs::write(dir.path().join("gid_map"), "0 200000 10\n").unwrap();
        let map = read(dir.path()).unwrap().expect("a namespace map");
        assert_eq!(map.to_host(IdKind::Uid, 5), Some(100005));
        assert_eq!(map.to_host(IdKind::Gid, 5), Some(200005));
        assert_eq!(map.to_host(IdKind::Gid, 10), None);
    }

    #[test]
    fn read_names_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("uid_map"), "0 100000 65536\n").unwrap();
        std::fs::write(dir.path().join("gid_map"), "junk\n").unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("gid_map: unexpected line 'junk'"), "{err}");
    }
}
