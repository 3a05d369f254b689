//! Writing a child's uid and gid maps: directly into `/proc/PID/{uid,gid}_map`, or through the
//! system's setuid helpers `newuidmap`/`newgidmap`, which apply the /etc/subuid policy.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::idmap::{ByKind, IdKind, IdMap};

/// How one kind's map gets written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Write `/proc/PID/{uid,gid}_map` ourselves.
    Direct,
    /// Run `newuidmap`/`newgidmap`.
    Helper,
}

/// Writes maps for a child process; `/proc` and the helpers are injectable for tests.
#[derive(Clone, Debug)]
pub struct Mapper {
    pub proc_root: PathBuf,
    /// `newuidmap` and `newgidmap`.
    pub helpers: ByKind<PathBuf>,
    /// Whether the caller may write any map itself (euid 0 in the initial namespace).
    pub privileged: bool,
    /// The caller's effective uid and gid, which an unprivileged caller may map directly.
    pub own_ids: ByKind<u32>,
}

impl Default for Mapper {
    fn default() -> Self {
        Mapper {
            proc_root: PathBuf::from("/proc"),
            helpers: ByKind::new("newuidmap".into(), "newgidmap".into()),
            privileged: nix::unistd::geteuid().is_root(),
            own_ids: ByKind::new(
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
        }
    }
}

impl Mapper {
    /// Root writes every map directly. Anyone else writes directly only the one map the kernel
    /// allows without privilege (their own id, once) and uses the helpers for the rest.
    pub fn method(&self, map: &IdMap, kind: IdKind) -> Method {
        if self.privileged {
            return Method::Direct;
        }
        let own = self.own_ids[kind];
        match map.entries(kind) {
            [e] if e.count() == 1 && e.host_start() == own => Method::Direct,
            _ => Method::Helper,
        }
    }

    /// Whether the child may call `setgroups` once its maps are written: not after an
    /// unprivileged direct `gid_map` write, which needs `setgroups` set to `deny` first.
    pub fn setgroups_allowed(&self, map: &IdMap) -> bool {
        !map.has(IdKind::Gid) || self.privileged || self.method(map, IdKind::Gid) == Method::Helper
    }

    /// Writes the uid and gid maps of `pid`. Helpers run side by side; every failure names what
    /// failed and passes on the helper's own message.
    pub fn write(&self, pid: Pid, map: &IdMap) -> Result<()> {
        let mut helpers: Vec<(PathBuf, Child)> = Vec::new();
        let mut result = Ok(());
        for kind in IdKind::BOTH {
            if !map.has(kind) {
                continue;
            }
            let step = match self.method(map, kind) {
                Method::Direct => self.write_direct(pid, map, kind),
                Method::Helper => self.spawn_helper(pid, map, kind).map(|h| helpers.push(h)),
            };
            if step.is_err() {
                result = step;
                break;
            }
        }
        for (program, child) in helpers {
            let waited = wait_helper(&program, child);
            if result.is_ok() {
                result = waited;
            }
        }
        result
    }

    fn write_direct(&self, pid: Pid, map: &IdMap, kind: IdKind) -> Result<()> {
        let dir = self.proc_root.join(pid.as_raw().to_string());
        if kind == IdKind::Gid && !self.privileged {
            write_once(&dir.join("setgroups"), b"deny")?;
        }
        let file = format!("{}_map", kind.name());
        write_once(&dir.join(file), map.proc_text(kind).as_bytes())
    }

    fn spawn_helper(&self, pid: Pid, map: &IdMap, kind: IdKind) -> Result<(PathBuf, Child)> {
        let program = &self.helpers[kind];
        let mut cmd = Command::new(program);
        cmd.arg(pid.as_raw().to_string());
        for e in map.entries(kind) {
            cmd.args([
                e.ns_start().to_string(),
                e.host_start().to_string(),
                e.count().to_string(),
            ]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::HelperMissing {
                        program: program.clone(),
                        kind: kind.name(),
                    }
                } else {
                    Error::io(program, e)
                }
            })?;
        Ok((program.clone(), child))
    }
}

/// Waits for a helper; a non-zero exit is an error carrying its message.
fn wait_helper(program: &Path, child: Child) -> Result<()> {
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(program, e))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let message = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let status = match out.status.code() {
        Some(code) => format!("exit status {code}"),
        None => format!("{}", out.status),
    };
    Err(Error::MapRefused {
        program: program.to_path_buf(),
        status,
        message,
    })
}

/// The kernel takes a map in one `write`; a short write would leave it half-set.
fn write_once(path: &Path, data: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    match file.write(data) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(n) => Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write ({n} of {} bytes)", data.len()),
            ),
        )),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::MapSpec;

    fn map(specs: &[&str]) -> IdMap {
        let specs: Vec<MapSpec> = specs.iter().map(|s| s.parse().unwrap()).collect();
        IdMap::from_specs(&specs).unwrap()
    }

    fn fake_proc(pid: i32) -> (tempfile::TempDir, Mapper) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(pid.to_string());
        std::fs::create_dir(&p).unwrap();
        for f in ["uid_map", "gid_map", "setgroups"] {
            std::fs::write(p.join(f), "").unwrap();
        }
        let mapper = Mapper {
            proc_root: dir.path().to_path_buf(),
            helpers: ByKind::new(
                "/nonexistent/newuidmap".into(),
                "/nonexistent/newgidmap".into(),
            ),
            privileged: true,
            own_ids: ByKind::new(0, 0),
        };
        (dir, mapper)
    }

    fn read(dir: &Path, pid: i32, f: &str) -> String {
        std::fs::read_to_string(dir.join(pid.to_string()).join(f)).unwrap()
    }

    #[test]
    fn privileged_writes_both_maps_directly_and_leaves_setgroups() {
        let (dir, mapper) = fake_proc(42);
        let m = map(&["b:0:100000:65536", "u:65536:1000:1"]);
        mapper.write(Pid::from_raw(42), &m).unwrap();
        assert_eq!(
            read(dir.path(), 42, "uid_map"),
            "0 100000 65536\n65536 1000 1\n"
        );
        assert_eq!(read(dir.path(), 42, "gid_map"), "0 100000 65536\n");
        assert_eq!(read(dir.path(), 42, "setgroups"), "");
        assert!(mapper.setgroups_allowed(&m));
    }

    #[test]
    fn only_one_kind_writes_only_that_file() {
        let (dir, mapper) = fake_proc(7);
        mapper
            .write(Pid::from_raw(7), &map(&["u:0:100000:10"]))
            .unwrap();
        assert_eq!(read(dir.path(), 7, "uid_map"), "0 100000 10\n");
        assert_eq!(read(dir.path(), 7, "gid_map"), "");
    }

    #[test]
    fn unprivileged_own_id_is_direct_with_setgroups_deny() {
        let (dir, mut mapper) = fake_proc(9);
        mapper.privileged = false;
        mapper.own_ids = ByKind::new(1000, 1001);
        let m = map(&["u:0:1000:1", "g:0:1001:1"]);
        assert_eq!(mapper.method(&m, IdKind::Uid), Method::Direct);
        assert!(!mapper.setgroups_allowed(&m));
        mapper.write(Pid::from_raw(9), &m).unwrap();
        assert_eq!(read(dir.path(), 9, "setgroups"), "deny");
        assert_eq!(read(dir.path(), 9, "gid_map"), "0 1001 1\n");
        assert_eq!(read(dir.path(), 9, "uid_map"), "0 1000 1\n");
    }

    #[test]
    fn unprivileged_ranges_go_through_the_helpers() {
        let (_dir, mut mapper) = fake_proc(9);
        mapper.privileged = false;
        mapper.own_ids = ByKind::new(1000, 1000);
        let m = map(&["b:0:100000:65536"]);
        assert_eq!(mapper.method(&m, IdKind::Uid), Method::Helper);
        assert_eq!(mapper.method(&m, IdKind::Gid), Method::Helper);
        assert!(mapper.setgroups_allowed(&m));
        let err = mapper.write(Pid::from_raw(9), &m).unwrap_err().to_string();
        assert!(
            err.starts_with("/nonexistent/newuidmap not found: an unprivileged user needs it"),
            "{err}"
        );
    }

    #[test]
    fn helper_exit_status_and_message_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("newuidmap");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"newuidmap: uid range [0-1) -> [5-6) not allowed\" >&2\nexit 1\n",
        )
        .unwrap();
        let ok = dir.path().join("newgidmap");
        std::fs::write(&ok, "#!/bin/sh\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in [&fake, &ok] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mapper = Mapper {
            proc_root: dir.path().into(),
            helpers: ByKind::new(fake.clone(), ok),
            privileged: false,
            own_ids: ByKind::new(1000, 1000),
        };
        let err = mapper
            .write(Pid::from_raw(1), &map(&["b:0:5:1"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{} refused the map (exit status 1): newuidmap: uid range [0-1) -> [5-6) not allowed",
                crate::report::escape_path(&fake)
            )
        );
    }
}
