//! OCI runtime `config.json`: `linux.uidMappings` and `linux.gidMappings`.

use std::path::Path;

use serde::Deserialize;

use super::{IdKind, IdMap, IdMapEntry};
use crate::error::{Error, Result};
use crate::report::escape_path;

#[derive(Deserialize)]
struct Spec {
    linux: Option<Linux>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Linux {
    #[serde(default)]
    uid_mappings: Vec<Mapping>,
    #[serde(default)]
    gid_mappings: Vec<Mapping>,
}

#[derive(Deserialize)]
struct Mapping {
    #[serde(rename = "containerID")]
    container_id: u32,
    #[serde(rename = "hostID")]
    host_id: u32,
    size: u32,
}

/// Parses config.json text; `path` is only for messages.
pub fn parse(text: &str, path: &Path) -> Result<IdMap> {
    let spec: Spec = serde_json::from_str(text).map_err(|e| Error::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        reason: e.to_string(),
    })?;
    let linux = spec.linux.unwrap_or(Linux {
        uid_mappings: Vec::new(),
        gid_mappings: Vec::new(),
    });
    let mut entries = Vec::new();
    for (kind, list) in [
        (IdKind::Uid, &linux.uid_mappings),
        (IdKind::Gid, &linux.gid_mappings),
    ] {
        for m in list {
            entries.push(
                IdMapEntry::new(kind, m.container_id, m.host_id, m.size)
                    .map_err(|e| Error::Usage(format!("{}: {e}", escape_path(path))))?,
            );
        }
    }
    if entries.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no linux.uidMappings or linux.gidMappings",
            escape_path(path)
        )));
    }
    IdMap::new(entries).map_err(|e| Error::Usage(format!("{}: {e}", escape_path(path))))
}

/// Reads and parses a config.json file.
pub fn read(path: &Path) -> Result<IdMap> {
    let text = super::read_config(path)?
        .ok_or_else(|| Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)))?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> std::result::Result<String, String> {
        parse(text, Path::new("config.json"))
            .map(|m| m.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_both_lists() {
        let text = r#"{"ociVersion": "1.0.2", "process": {"args": ["sh"]},
            "linux": {"namespaces": [{"type": "user"}],
              "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
              "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536},
                              {"containerID": 65536, "hostID": 300000, "size": 1}]}}"#;
        assert_eq!(
            parse_str(text).unwrap(),
            "u:0:100000:65536 g:0:100000:65536 g:65536:300000:1"
        );
    }

    #[test]
    fn errors_name_the_file_and_reason() {
        assert_eq!(
            parse_str(r#"{"linux": {}}"#).unwrap_err(),
            "config.json: no linux.uidMappings or linux.gidMappings"
        );
        assert_eq!(
            parse_str(r#"{"process": {}}"#).unwrap_err(),
            "config.json: no linux.uidMappings or linux.gidMappings"
        );
        assert_eq!(
            parse_str(
                r#"{"linux": {"uidMappings": [{"containerID": 0, "hostID": 1, "size": 0}]}}"#
            )
            .unwrap_err(),
            "config.json: invalid map 'u:0:1:0': COUNT must be at least 1"
        );
        let neg = parse_str(
            r#"{"linux": {"uidMappings": [{"containerID": -1, "hostID": 1, "size": 1}]}}"#,
        )
        .unwrap_err();
        assert!(
            neg.starts_with("config.json:1: invalid value: integer `-1`"),
            "{neg}"
        );
        let overlap = parse_str(
            r#"{"linux": {"uidMappings": [{"containerID": 0, "hostID": 1, "size": 10},
                                          {"containerID": 5, "hostID": 100, "size": 1}]}}"#,
        )
        .unwrap_err();
        assert!(
            overlap.contains("overlap in namespace uids 5-5"),
            "{overlap}"
        );
        assert!(parse_str("{not json")
            .unwrap_err()
            .starts_with("config.json:1: "));
    }
}
