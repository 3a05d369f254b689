//! LXC container configs: `lxc.idmap = u 0 100000 65536` lines (and the legacy `lxc.id_map`),
//! found by container name under an lxcpath or given as a file.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::spec::parse_number;
use super::{IdMap, MapSpec, SpecKind};
use crate::error::{Error, Result};
use crate::report::escape_path;

/// How deep `lxc.include` may nest (LXC itself has no limit but a loop; a chain this long is a
/// mistake).
const MAX_INCLUDE_DEPTH: usize = 16;

/// What idshift reads from a container config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LxcConfig {
    pub path: PathBuf,
    /// The `lxc.idmap` entries in effect, with their line numbers (in the file that has them).
    pub idmap: Vec<(usize, MapSpec)>,
    /// Whether an included file has an `lxc.idmap` line (an entry or a clearing one): the map
    /// is then not the config's own to rewrite in place (see [`rewrite_idmap`]).
    pub idmap_in_includes: bool,
    /// `lxc.rootfs.path` (or the legacy `lxc.rootfs`), as written (bytes: a path need not be
    /// UTF-8).
    pub rootfs: Option<OsString>,
    /// `lxc.mount.entry` lines in effect (an empty value clears them, as LXC does).
    pub mount_entries: Vec<MountEntry>,
    /// `lxc.rootfs.options`, split at commas (`idmap=container`: LXC mounts the rootfs, kept in
    /// the host view, through an idmapped mount with the container's map).
    pub rootfs_options: Vec<String>,
}

/// The `lxc.rootfs.options` value that has LXC idmap the rootfs with the container's map.
pub const IDMAP_CONTAINER: &str = "idmap=container";

impl LxcConfig {
    /// Whether LXC mounts the rootfs through an idmapped mount (`idmap=container`).
    pub fn rootfs_idmapped(&self) -> bool {
        self.rootfs_options.iter().any(|o| o == IDMAP_CONTAINER)
    }
}

/// `text` with `lxc.rootfs.options` holding `idmap=container` (`on`) or not, every other option
/// kept in order; the line is added at the end, or removed when it is left empty.
pub fn with_rootfs_idmap(text: &[u8], on: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 40);
    let mut seen = false;
    for line in text.split_inclusive(|&b| b == b'\n') {
        match key_value(line) {
            Some((b"lxc.rootfs.options", value)) => {
                seen = true;
                let mut options: Vec<&[u8]> = value
                    .split(|&b| b == b',')
                    .map(|o| o.trim_ascii())
                    .filter(|o| !o.is_empty() && *o != IDMAP_CONTAINER.as_bytes())
                    .collect();
                if on {
                    options.push(IDMAP_CONTAINER.as_bytes());
                }
                if !options.is_empty() {
                    let indent = line.len() - line.trim_ascii_start().len();
                    out.extend_from_slice(&line[..indent]);
                    out.extend_from_slice(b"lxc.rootfs.options = ");
                    out.extend_from_slice(&options.join(&b","[..]));
                    out.push(b'\n');
                }
            }
            _ => out.extend_from_slice(line),
        }
    }
    if on && !seen {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(b"lxc.rootfs.options = idmap=container\n");
    }
    out
}

/// One `lxc.mount.entry = SOURCE TARGET TYPE OPTIONS [DUMP PASS]` (fstab fields; `\040` and the
/// other octal escapes decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub source: PathBuf,
    pub target: PathBuf,
    pub fstype: String,
    pub options: Vec<String>,
}

impl MountEntry {
    /// `SRC TGT TYPE OPTS ...`, or `None` for fewer than four fields.
    fn parse(value: &[u8]) -> Option<MountEntry> {
        let mut fields = value
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty())
            .map(unescape_fstab);
        let source = PathBuf::from(OsString::from_vec(fields.next()?));
        let target = PathBuf::from(OsString::from_vec(fields.next()?));
        let fstype = String::from_utf8_lossy(&fields.next()?).into_owned();
        let options = String::from_utf8_lossy(&fields.next()?)
            .split(',')
            .map(str::to_string)
            .collect();
        Some(MountEntry {
            source,
            target,
            fstype,
            options,
        })
    }

    /// A bind mount (`bind` or `rbind` among the options): its source is a host path.
    pub fn is_bind(&self) -> bool {
        self.options.iter().any(|o| o == "bind" || o == "rbind")
    }
}

/// An fstab field with `\NNN` octal escapes (`\040` for a space) decoded.
fn unescape_fstab(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(
                    d.iter()
                        .fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// `KEY = VALUE` of a config line, both trimmed; `None` for a blank line, a comment or a line
/// without `=`. LXC reads configs as bytes: only the keys idshift uses are ASCII.
fn key_value(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = raw.trim_ascii();
    if line.is_empty() || line.starts_with(b"#") {
        return None;
    }
    let eq = line.iter().position(|&b| b == b'=')?;
    Some((line[..eq].trim_ascii(), line[eq + 1..].trim_ascii()))
}

fn is_idmap_key(key: &[u8]) -> bool {
    key == b"lxc.idmap" || key == b"lxc.id_map"
}

impl LxcConfig {
    fn empty(path: &Path) -> LxcConfig {
        LxcConfig {
            path: path.to_path_buf(),
            idmap: Vec::new(),
            idmap_in_includes: false,
            rootfs: None,
            mount_entries: Vec::new(),
            rootfs_options: Vec::new(),
        }
    }

    /// Parses one file's text without following its `lxc.include` lines; `path` is only for
    /// messages.
    pub fn parse(text: impl AsRef<[u8]>, path: &Path) -> Result<LxcConfig> {
        let mut config = LxcConfig::empty(path);
        config.apply(text.as_ref(), path, None)?;
        Ok(config)
    }

    /// Applies `text` (the file `path`) to what is read so far, in order. With `chain` (the
    /// files being read, outermost first) `lxc.include` lines are followed where they stand.
    fn apply(
        &mut self,
        text: &[u8],
        path: &Path,
        mut chain: Option<&mut Vec<PathBuf>>,
    ) -> Result<()> {
        let included = chain.as_ref().is_some_and(|c| c.len() > 1);
        for (idx, raw) in text.split(|&b| b == b'\n').enumerate() {
            let Some((key, value)) = key_value(raw) else {
                continue;
            };
            let syntax = |reason: String| Error::Syntax {
                path: path.to_path_buf(),
                line: idx + 1,
                reason,
            };
            if is_idmap_key(key) {
                self.idmap_in_includes |= included;
                if value.is_empty() {
                    self.idmap.clear();
                    continue;
                }
                let value = std::str::from_utf8(value)
                    .map_err(|_| syntax("lxc.idmap: not ASCII ('u|g NSID HOSTID COUNT')".into()))?;
                self.idmap
                    .push((idx + 1, parse_idmap_value(value).map_err(syntax)?));
            } else if key == b"lxc.rootfs.path" || key == b"lxc.rootfs" {
                self.rootfs = (!value.is_empty()).then(|| OsStr::from_bytes(value).to_owned());
            } else if key == b"lxc.rootfs.options" {
                self.rootfs_options = String::from_utf8_lossy(value)
                    .split(',')
                    .map(|o| o.trim().to_string())
                    .filter(|o| !o.is_empty())
                    .collect();
            } else if key == b"lxc.mount.entry" {
                if value.is_empty() {
                    self.mount_entries.clear();
                } else if let Some(entry) = MountEntry::parse(value) {
                    self.mount_entries.push(entry);
                }
            } else if key == b"lxc.include" && !value.is_empty() {
                if let Some(chain) = chain.as_deref_mut() {
                    let target = Path::new(OsStr::from_bytes(value));
                    self.include(target, path, idx + 1, chain)?;
                }
            }
        }
        Ok(())
    }

    /// Follows `lxc.include = target` of `from`'s line `line`: a directory includes each of its
    /// `*.conf` files in name order, as LXC does; a file is read in place. A relative path is
    /// taken from the including file's directory. As with LXC, a missing file is an error but a
    /// missing directory (a value ending in `/`, like `userns.conf.d/`) includes nothing; a file
    /// that includes itself (directly or not) is an error.
    fn include(
        &mut self,
        target: &Path,
        from: &Path,
        line: usize,
        chain: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let target = match from.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target.to_path_buf(),
        };
        let here = |reason: String| Error::Syntax {
            path: from.to_path_buf(),
            line,
            reason,
        };
        if !target.exists() && target.as_os_str().as_bytes().ends_with(b"/") {
            return Ok(());
        }
        let files = if target.is_dir() {
            let entries = std::fs::read_dir(&target).map_err(|e| Error::io(&target, e))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension() == Some(OsStr::new("conf")) && p.is_file())
                .collect();
            files.sort();
            files
        } else {
            vec![target]
        };
        for file in files {
            let real = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if chain.contains(&real) || chain.len() > MAX_INCLUDE_DEPTH {
                let names: Vec<String> = chain
                    .iter()
                    .chain(std::iter::once(&real))
                    .map(|p| escape_path(p))
                    .collect();
                return Err(here(format!(
                    "lxc.include loop (or deeper than {MAX_INCLUDE_DEPTH}): {}",
                    names.join(" -> ")
                )));
            }
            let text = super::read_config_bytes(&file)?
                .ok_or_else(|| here(format!("lxc.include {}: no such file", escape_path(&file))))?;
            chain.push(real);
            self.apply(&text, &file, Some(chain))?;
            chain.pop();
        }
        Ok(())
    }

    /// Reads a config file, following its `lxc.include` lines as LXC does.
    pub fn read(path: &Path) -> Result<LxcConfig> {
        let text = super::read_config_bytes(path)?
            .ok_or_else(|| Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)))?;
        LxcConfig::load(&text, path)
    }

    fn load(text: &[u8], path: &Path) -> Result<LxcConfig> {
        let mut config = LxcConfig::empty(path);
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        config.apply(text, path, Some(&mut vec![real]))?;
        Ok(config)
    }

    /// Reads the config of container `name` under `lxcpath`.
    pub fn for_container(lxcpath: &Path, name: &str) -> Result<LxcConfig> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Error::Usage(format!("invalid container name '{name}'")));
        }
        let path = lxcpath.join(name).join("config");
        match super::read_config_bytes(&path)? {
            Some(text) => LxcConfig::load(&text, &path),
            None => Err(Error::Usage(format!(
                "container '{name}' not found: no {}",
                escape_path(&path)
            ))),
        }
    }

    /// The container's map; a config without `lxc.idmap` lines is an error.
    pub fn map(&self) -> Result<IdMap> {
        if self.idmap.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no lxc.idmap lines (not an unprivileged container?)",
                escape_path(&self.path)
            )));
        }
        IdMap::from_specs(self.idmap.iter().map(|(_, spec)| spec))
            .map_err(|e| Error::Usage(format!("{}: {e}", escape_path(&self.path))))
    }
}

/// `text` (a config's own file) with its `lxc.idmap` (and `lxc.id_map`) lines replaced by
/// `map`'s entries. In place: where the first such line was, with its key spelling and
/// indentation; every other line, comment and blank line stays as it was, byte for byte. With
/// `explicit` (an included file has `lxc.idmap` lines, which must not be edited: it may be
/// shared) the own lines are removed and, at the end — after every include —, an `lxc.idmap =`
/// line clears what the includes set, followed by the new lines.
pub fn rewrite_idmap(text: &[u8], map: &IdMap, explicit: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 64);
    let mut written = explicit;
    for line in text.split_inclusive(|&b| b == b'\n') {
        match key_value(line) {
            Some((key, _)) if is_idmap_key(key) => {
                if !written {
                    let indent = line.len() - line.trim_ascii_start().len();
                    push_idmap_lines(&mut out, &line[..indent], key, map);
                    written = true;
                }
            }
            _ => out.extend_from_slice(line),
        }
    }
    if explicit || !written {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        if explicit {
            out.extend_from_slice(b"lxc.idmap =\n");
        }
        push_idmap_lines(&mut out, b"", b"lxc.idmap", map);
    }
    out
}

/// `text` without its `lxc.idmap` (and `lxc.id_map`) lines: a privileged container's config.
/// Every other line stays as it was, in order. With `explicit` (an included file has
/// `lxc.idmap` lines) an `lxc.idmap =` line at the end clears what they set.
pub fn without_idmap(text: &[u8], explicit: bool) -> Vec<u8> {
    let mut out: Vec<u8> = text
        .split_inclusive(|&b| b == b'\n')
        .filter(|line| !key_value(line).is_some_and(|(key, _)| is_idmap_key(key)))
        .flatten()
        .copied()
        .collect();
    if explicit {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(b"lxc.idmap =\n");
    }
    out
}

/// `{indent}{key} = u 0 100000 65536`, one line per entry of `map`.
fn push_idmap_lines(out: &mut Vec<u8>, indent: &[u8], key: &[u8], map: &IdMap) {
    for e in map.all_entries() {
        out.extend_from_slice(indent);
        out.extend_from_slice(key);
        out.extend_from_slice(
            format!(
                " = {} {} {} {}\n",
                e.kind().letter(),
                e.ns_start(),
                e.host_start(),
                e.count()
            )
            .as_bytes(),
        );
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
    let map = LxcConfig::read(&path).and_then(|c| {
        if c.idmap.is_empty() {
            Err(Error::Usage(
                "privileged (no lxc.idmap lines: new containers use host ids)".into(),
            ))
        } else {
            c.map()
        }
    });
    Some((path, map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LxcConfig> {
        LxcConfig::parse(text, Path::new("c1/config"))
    }

    /// [`rewrite_idmap`] in place, on text.
    fn rw(text: &str, map: &IdMap) -> String {
        String::from_utf8(rewrite_idmap(text.as_bytes(), map, false)).unwrap()
    }

    fn without(text: &str) -> String {
        String::from_utf8(without_idmap(text.as_bytes(), false)).unwrap()
    }

    fn rootfs(c: &LxcConfig) -> Option<&str> {
        c.rootfs.as_deref().map(|p| p.to_str().unwrap())
    }

    #[test]
    fn a_latin1_byte_is_read_and_kept() {
        let text = b"# caf\xe9 (Latin-1)\nlxc.idmap = u 0 100000 65536\nlxc.rootfs.path = dir:/srv/\xe9t\xe9\n";
        let c = LxcConfig::parse(text, Path::new("c1/config")).unwrap();
        assert_eq!(c.map().unwrap().to_string(), "u:0:100000:65536");
        assert_eq!(
            c.rootfs.as_deref().unwrap().as_bytes(),
            b"dir:/srv/\xe9t\xe9"
        );
        let map = IdMap::parse_list("u:0:200000:65536").unwrap();
        assert_eq!(
            rewrite_idmap(text, &map, false),
            b"# caf\xe9 (Latin-1)\nlxc.idmap = u 0 200000 65536\nlxc.rootfs.path = dir:/srv/\xe9t\xe9\n"
        );
        let err = LxcConfig::parse(b"lxc.idmap = u 0 1\xe9 1\n", Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c:1: lxc.idmap: not ASCII"), "{err}");
    }

    /// Writes `files` (relative path, text) under a fresh directory.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn includes_are_followed_in_place_files_and_directories_of_conf() {
        let t = tree(&[
            ("c1/config", "lxc.idmap = u 0 1 1\nlxc.include = common.conf\nlxc.include = d\nlxc.idmap = g 0 300000 65536\n"),
            ("c1/common.conf", "lxc.idmap =\nlxc.idmap = u 0 100000 65536\n"),
            ("c1/d/10-b.conf", "lxc.idmap =\nlxc.idmap = u 0 200000 65536\n"),
            ("c1/d/02-a.conf", "lxc.idmap = u 0 999 1\n"),
            ("c1/d/notes.txt", "lxc.idmap = this is not read\n"),
        ]);
        let c = LxcConfig::read(&t.path().join("c1/config")).unwrap();
        // 02-a before 10-b (name order), whose clearing line wipes everything before it.
        assert_eq!(
            c.map().unwrap().to_string(),
            "u:0:200000:65536 g:0:300000:65536"
        );
        assert!(c.idmap_in_includes);
        // parse() alone does not follow includes.
        let text = std::fs::read(t.path().join("c1/config")).unwrap();
        let own = LxcConfig::parse(&text, Path::new("c1/config")).unwrap();
        assert_eq!(own.map().unwrap().to_string(), "u:0:1:1 g:0:300000:65536");
        assert!(!own.idmap_in_includes);
    }

    #[test]
    fn include_loops_and_missing_files_are_refused() {
        let t = tree(&[
            ("a.conf", "lxc.include = b.conf\n"),
            ("b.conf", "lxc.arch = x\nlxc.include = a.conf\n"),
            ("m.conf", "lxc.include = /nonexistent/idshift.conf\n"),
            (
                "n.conf",
                "lxc.include = /nonexistent/idshift.conf.d/\nlxc.idmap = u 0 1 1\n",
            ),
        ]);
        let err = LxcConfig::read(&t.path().join("a.conf"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("b.conf:2: lxc.include loop"), "{err}");
        assert!(
            err.contains("a.conf -> ") && err.contains("b.conf -> "),
            "{err}"
        );
        let err = LxcConfig::read(&t.path().join("m.conf"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.conf:1: lxc.include /nonexistent/idshift.conf: no such file"),
            "{err}"
        );
    }

    #[test]
    fn a_map_from_an_include_is_overridden_in_the_own_config() {
        let t = tree(&[
            (
                "c1/config",
                "lxc.include = shared.conf\nlxc.uts.name = c1\n",
            ),
            (
                "c1/shared.conf",
                "lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n",
            ),
        ]);
        let config = t.path().join("c1/config");
        let c = LxcConfig::read(&config).unwrap();
        assert!(c.idmap_in_includes);
        let map = IdMap::parse_list("b:0:200000:65536").unwrap();
        let new = rewrite_idmap(&std::fs::read(&config).unwrap(), &map, true);
        assert_eq!(
            String::from_utf8_lossy(&new),
            "lxc.include = shared.conf\nlxc.uts.name = c1\nlxc.idmap =\n\
             lxc.idmap = u 0 200000 65536\nlxc.idmap = g 0 200000 65536\n"
        );
        std::fs::write(&config, &new).unwrap();
        assert_eq!(LxcConfig::read(&config).unwrap().map().unwrap(), map);
        // Idempotent: the same rewrite again changes nothing.
        assert_eq!(rewrite_idmap(&new, &map, true), new);
        // To the host view: the include's lines cleared, none added.
        let host = without_idmap(&new, true);
        std::fs::write(&config, &host).unwrap();
        assert!(LxcConfig::read(&config).unwrap().idmap.is_empty());
    }

    #[test]
    fn mount_entries_are_read_with_fstab_escapes_and_cleared_by_an_empty_line() {
        let c = parse(
            "lxc.mount.entry = /old none bind 0 0\nlxc.mount.entry =\n\
             lxc.mount.entry = /srv/my\\040data srv/data none bind,create=dir 0 0\n\
             lxc.mount.entry = proc proc proc nodev,noexec 0 0\nlxc.mount.entry = short\n",
        )
        .unwrap();
        assert_eq!(c.mount_entries.len(), 2);
        let data = &c.mount_entries[0];
        assert_eq!(data.source, Path::new("/srv/my data"));
        assert_eq!(data.target, Path::new("srv/data"));
        assert!(data.is_bind());
        assert!(!c.mount_entries[1].is_bind());
    }

    #[test]
    fn rootfs_idmap_option_is_merged_and_removed() {
        let on = with_rootfs_idmap(b"lxc.arch = x\nlxc.rootfs.options = ro,noatime\n", true);
        assert_eq!(
            on,
            b"lxc.arch = x\nlxc.rootfs.options = ro,noatime,idmap=container\n"
        );
        assert!(parse(std::str::from_utf8(&on).unwrap())
            .unwrap()
            .rootfs_idmapped());
        assert_eq!(with_rootfs_idmap(&on, true), on, "never duplicated");
        assert_eq!(
            with_rootfs_idmap(&on, false),
            b"lxc.arch = x\nlxc.rootfs.options = ro,noatime\n"
        );
        assert_eq!(
            with_rootfs_idmap(b"lxc.arch = x", true),
            b"lxc.arch = x\nlxc.rootfs.options = idmap=container\n"
        );
        assert_eq!(
            with_rootfs_idmap(
                b"lxc.rootfs.options = idmap=container\nlxc.arch = x\n",
                false
            ),
            b"lxc.arch = x\n"
        );
    }

    #[test]
    fn without_idmap_drops_only_the_idmap_lines() {
        let text = "# lxc.idmap = u 0 1 1 (a comment stays)\nlxc.arch = linux64\n  lxc.idmap = u 0 100000 65536\nlxc.id_map = g 0 100000 65536\nlxc.idmapx = kept\nlxc.uts.name = c1";
        assert_eq!(
            without(text),
            "# lxc.idmap = u 0 1 1 (a comment stays)\nlxc.arch = linux64\nlxc.idmapx = kept\nlxc.uts.name = c1"
        );
        assert_eq!(without("lxc.arch = x\n"), "lxc.arch = x\n");
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
            rootfs(&c),
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
        let new = rw(text, &map);
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
        assert_eq!(rootfs(&back), Some("dir:/c1/rootfs"));
    }

    #[test]
    fn rewrite_keeps_the_legacy_key_and_adds_lines_when_there_were_none() {
        let map = IdMap::parse_list("u:0:1:2").unwrap();
        assert_eq!(
            rw("  lxc.id_map=u 0 5 2\nlxc.id_map = g 0 5 2\n", &map),
            "  lxc.id_map = u 0 1 2\n"
        );
        assert_eq!(
            rw("lxc.arch = x", &map),
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
