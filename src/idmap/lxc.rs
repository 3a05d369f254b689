//! LXC container configs: `lxc.idmap = u 0 100000 65536` lines (and the legacy `lxc.id_map`),
//! found by container name under an lxcpath or given as a file.

use std::path::{Path, PathBuf};

use super::spec::parse_number;
use super::{IdMap, MapSpec, SpecKind};
use crate::error::{Error, Result};

/// What idshift reads from a container config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LxcConfig {
    pub path: PathBuf,
    /// The `lxc.idmap` entries in effect, with their line numbers.
    pub idmap: Vec<(usize, MapSpec)>,
    /// `lxc.rootfs.path` (or the legacy `lxc.rootfs`), as written.
    pub rootfs: Option<String>,
}

impl LxcConfig {
    /// Parses config text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<LxcConfig> {
        let mut config = LxcConfig {
            path: path.to_path_buf(),
            idmap: Vec::new(),
            rootfs: None,
        };
        for (idx, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let syntax = |reason: String| Error::Syntax {
                path: path.to_path_buf(),
                line: idx + 1,
                reason,
            };
            match key {
                "lxc.idmap" | "lxc.id_map" if value.is_empty() => config.idmap.clear(),
                "lxc.idmap" | "lxc.id_map" => {
                    config
                        .idmap
                        .push((idx + 1, parse_idmap_value(value).map_err(syntax)?));
                }
                "lxc.rootfs.path" | "lxc.rootfs" => {
                    config.rootfs = (!value.is_empty()).then(|| value.to_string());
                }
                _ => {}
            }
        }
        Ok(config)
    }

    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<LxcConfig> {
        let text = super::read_config(path)?
            .ok_or_else(|| Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)))?;
        LxcConfig::parse(&text, path)
    }

    /// Reads the config of container `name` under `lxcpath`.
    pub fn for_container(lxcpath: &Path, name: &str) -> Result<LxcConfig> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Error::Usage(format!("invalid container name '{name}'")));
        }
        let path = lxcpath.join(name).join("config");
        match super::read_config(&path)? {
            Some(text) => LxcConfig::parse(&text, &path),
            None => Err(Error::Usage(format!(
                "container '{name}' not found: no {}",
                path.display()
            ))),
        }
    }

    /// The container's map; a config without `lxc.idmap` lines is an error.
    pub fn map(&self) -> Result<IdMap> {
        if self.idmap.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no lxc.idmap lines (not an unprivileged container?)",
                self.path.display()
            )));
        }
        IdMap::from_specs(self.idmap.iter().map(|(_, spec)| spec))
            .map_err(|e| Error::Usage(format!("{}: {e}", self.path.display())))
    }
}

/// `text` with its `lxc.idmap` (and `lxc.id_map`) lines replaced by `map`'s entries: they go
/// where the first such line was, with its key spelling and indentation; every other line,
/// comment and blank line stays as it was, in order.
pub fn rewrite_idmap(text: &str, map: &IdMap) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut written = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let key = trimmed.split_once('=').map(|(k, _)| k.trim());
        match key {
            Some(key @ ("lxc.idmap" | "lxc.id_map")) if !trimmed.starts_with('#') => {
                if !written {
                    push_idmap_lines(&mut out, &line[..line.len() - trimmed.len()], key, map);
                    written = true;
                }
            }
            _ => out.push_str(line),
        }
    }
    if !written {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        push_idmap_lines(&mut out, "", "lxc.idmap", map);
    }
    out
}

/// `text` without its `lxc.idmap` (and `lxc.id_map`) lines: a privileged container's config.
/// Every other line stays as it was, in order.
pub fn without_idmap(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|line| {
            let trimmed = line.trim_start();
            trimmed.starts_with('#')
                || !matches!(
                    trimmed.split_once('=').map(|(k, _)| k.trim()),
                    Some("lxc.idmap" | "lxc.id_map")
                )
        })
        .collect()
}

/// `{indent}{key} = u 0 100000 65536`, one line per entry of `map`.
fn push_idmap_lines(out: &mut String, indent: &str, key: &str, map: &IdMap) {
    for e in map.all_entries() {
        out.push_str(&format!(
            "{indent}{key} = {} {} {} {}\n",
            e.kind().letter(),
            e.ns_start(),
            e.host_start(),
            e.count()
        ));
    }
}

/// `u 0 100000 65536` → a spec; LXC knows only `u` and `g`.
fn parse_idmap_value(value: &str) -> std::result::Result<MapSpec, String> {
    let fields: Vec<&str> = value.split_ascii_whitespace().collect();
    let [kind, ns, host, count] = fields[..] else {
        return Err(format!(
            "lxc.idmap '{value}': expected 'u|g NSID HOSTID COUNT'"
        ));
    };
    let kind = match kind {
        "u" => SpecKind::Uid,
        "g" => SpecKind::Gid,
        other => {
            return Err(format!(
                "lxc.idmap '{value}': type '{other}' is not 'u' or 'g'"
            ))
        }
    };
    let num = |f: &str, what: &str| {
        parse_number(f, what).map_err(|e| format!("lxc.idmap '{value}': {e}"))
    };
    let (ns, host, count) = (num(ns, "NSID")?, num(host, "HOSTID")?, num(count, "COUNT")?);
    MapSpec::new(kind, ns, host, count).map_err(|e| format!("lxc.idmap '{value}': {}", e.reason))
}

/// The default lxcpath: `/var/lib/lxc` for root, `$XDG_DATA_HOME/lxc` or
/// `~/.local/share/lxc` for other users, as LXC itself chooses.
pub fn default_lxcpath() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/lxc");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("lxc");
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".local/share/lxc")
}

/// LXC's default config for the new containers of the user with uid `uid` (as lxc-create
/// reads it): `/etc/lxc/default.conf` for root, `~/.config/lxc/default.conf` for other users
/// (the caller's `$HOME` when it is the caller, else the passwd entry's home).
pub fn default_config_path(uid: u32) -> Option<PathBuf> {
    if uid == 0 {
        return Some(PathBuf::from("/etc/lxc/default.conf"));
    }
    let own_home = (uid == nix::unistd::getuid().as_raw())
        .then(|| std::env::var_os("HOME").filter(|v| !v.is_empty()))
        .flatten()
        .map(PathBuf::from);
    let home = own_home.or_else(|| {
        nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.dir)
    })?;
    Some(home.join(".config/lxc/default.conf"))
}

/// The default config of the user with uid `uid` and its map, if the file exists: the map, or
/// why there is none (no `lxc.idmap` lines: new containers would be privileged).
pub fn default_config(uid: u32) -> Option<(PathBuf, Result<IdMap>)> {
    let path = default_config_path(uid)?;
    if !path.exists() {
        return None;
    }
    let map = LxcConfig::read(&path).and_then(|c| c.map());
    Some((path, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LxcConfig> {
        LxcConfig::parse(text, Path::new("c1/config"))
    }

    #[test]
    fn without_idmap_drops_only_the_idmap_lines() {
        let text = "# lxc.idmap = u 0 1 1 (a comment stays)\nlxc.arch = linux64\n  lxc.idmap = u 0 100000 65536\nlxc.id_map = g 0 100000 65536\nlxc.idmapx = kept\nlxc.uts.name = c1";
        assert_eq!(
            without_idmap(text),
            "# lxc.idmap = u 0 1 1 (a comment stays)\nlxc.arch = linux64\nlxc.idmapx = kept\nlxc.uts.name = c1"
        );
        assert_eq!(without_idmap("lxc.arch = x\n"), "lxc.arch = x\n");
    }

    #[test]
    fn reads_idmap_and_rootfs_as_lxc_create_writes_them() {
        let text =
            "# Template used to create this container: /usr/share/lxc/templates/lxc-download\n\
                    lxc.include = /usr/share/lxc/config/common.conf\n\
                    lxc.include = /usr/share/lxc/config/userns.conf\n\
                    lxc.arch = linux64\n\
                    lxc.idmap = u 0 100000 65536\n\
                    lxc.idmap = g 0 100000 65536\n\
                    lxc.rootfs.path = dir:/home/alice/.local/share/lxc/c1/rootfs\n\
                    lxc.uts.name = c1\n";
        let c = parse(text).unwrap();
        assert_eq!(
            c.map().unwrap().to_string(),
            "u:0:100000:65536 g:0:100000:65536"
        );
        assert_eq!(c.idmap[0].0, 5);
        assert_eq!(
            c.rootfs.as_deref(),
            Some("dir:/home/alice/.local/share/lxc/c1/rootfs")
        );
    }

    #[test]
    fn legacy_key_and_loose_spacing() {
        let c =
            parse("lxc.id_map=u 0 100000 1000\n  lxc.id_map =   g  0  100000  1000  \n").unwrap();
        assert_eq!(
            c.map().unwrap().to_string(),
            "u:0:100000:1000 g:0:100000:1000"
        );
    }

    #[test]
    fn empty_value_clears_earlier_entries() {
        let c = parse("lxc.idmap = u 0 1 1\nlxc.idmap =\nlxc.idmap = u 0 100000 65536\n").unwrap();
        assert_eq!(c.map().unwrap().to_string(), "u:0:100000:65536");
    }

    macro_rules! bad_config_tests {
        ($($name:ident: $text:expr => $want:expr,)*) => {$(
            #[test]
            fn $name() {
                let err = parse($text).and_then(|c| c.map()).unwrap_err().to_string();
                assert_eq!(err, $want);
            }
        )*};
    }

    bad_config_tests! {
        no_idmap: "lxc.arch = linux64\n"
            => "c1/config: no lxc.idmap lines (not an unprivileged container?)",
        both_kind: "lxc.arch = x\nlxc.idmap = b 0 100000 65536\n"
            => "c1/config:2: lxc.idmap 'b 0 100000 65536': type 'b' is not 'u' or 'g'",
        three_fields: "lxc.idmap = u 0 100000\n"
            => "c1/config:1: lxc.idmap 'u 0 100000': expected 'u|g NSID HOSTID COUNT'",
        junk_number: "lxc.idmap = u 0 100000 65536x\n"
            => "c1/config:1: lxc.idmap 'u 0 100000 65536x': COUNT '65536x' is not a decimal number",
        zero_count: "lxc.idmap = g 0 100000 0\n"
            => "c1/config:1: lxc.idmap 'g 0 100000 0': COUNT must be at least 1",
        overlap: "lxc.idmap = u 0 100000 65536\nlxc.idmap = u 1 200000 1\n"
            => "c1/config: invalid map 'u:0:100000:65536 u:1:200000:1': the entries overlap in namespace uids 1-1",
    }

    #[test]
    fn rewrite_keeps_every_other_line_in_order() {
        let text = "# Template used to create this container\n\
                    lxc.include = /usr/share/lxc/config/userns.conf\n\
                    lxc.idmap = u 0 100000 65536\n\
                    # lxc.idmap = u 0 1 1 (a comment, kept)\n\
                    lxc.idmap = g 0 100000 65536\n\
                    \n\
                    lxc.rootfs.path = dir:/c1/rootfs\n\
                    lxc.uts.name = c1";
        let map = IdMap::parse_list("u:0:200000:65536 g:0:200000:65536").unwrap();
        let new = rewrite_idmap(text, &map);
        assert_eq!(
            new,
            "# Template used to create this container\n\
             lxc.include = /usr/share/lxc/config/userns.conf\n\
             lxc.idmap = u 0 200000 65536\n\
             lxc.idmap = g 0 200000 65536\n\
             # lxc.idmap = u 0 1 1 (a comment, kept)\n\
             \n\
             lxc.rootfs.path = dir:/c1/rootfs\n\
             lxc.uts.name = c1"
        );
        let back = parse(&new).unwrap();
        assert_eq!(back.map().unwrap(), map);
        assert_eq!(back.rootfs.as_deref(), Some("dir:/c1/rootfs"));
    }

    #[test]
    fn rewrite_keeps_the_legacy_key_and_adds_lines_when_there_were_none() {
        let map = IdMap::parse_list("u:0:1:2").unwrap();
        assert_eq!(
            rewrite_idmap("  lxc.id_map=u 0 5 2\nlxc.id_map = g 0 5 2\n", &map),
            "  lxc.id_map = u 0 1 2\n"
        );
        assert_eq!(
            rewrite_idmap("lxc.arch = x", &map),
            "lxc.arch = x\nlxc.idmap = u 0 1 2\n"
        );
    }

    #[test]
    fn container_lookup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c1")).unwrap();
        std::fs::write(
            dir.path().join("c1/config"),
            "lxc.idmap = u 0 100000 65536\n",
        )
        .unwrap();
        let c = LxcConfig::for_container(dir.path(), "c1").unwrap();
        assert_eq!(c.map().unwrap().to_string(), "u:0:100000:65536");
        let missing = LxcConfig::for_container(dir.path(), "c2")
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("container 'c2' not found: no "),
            "{missing}"
        );
        assert!(missing.ends_with("c2/config"), "{missing}");
        for bad in ["", "..", "a/b"] {
            assert!(LxcConfig::for_container(dir.path(), bad).is_err());
        }
    }
}
