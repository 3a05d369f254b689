//! `idshift exec [MAP] [--rootfs DIR] -- COMMAND`: a command as root of a new user namespace
//! with a container's mapping, optionally inside the container's rootfs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{exit, lxcpath_or_default, refuse_in_use, warn};
use crate::cli::{ExecArgs, MapSource};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::idmap::source::Source;
use crate::idmap::subid::{SubIdFiles, User};
use crate::idmap::IdKind;
use crate::policy;
use crate::report::{self, escape_path};
use crate::userns::{self, ExecSpec, Mapper};

/// Runs the command; its exit status, or 125/126/127 when idshift or the exec failed.
pub fn run(args: ExecArgs) -> ExitCode {
    // Set only where the hint can apply (no -s, no --rootfs, the caller's uid unmapped).
    let mut private_dir = None;
    match exec(args, &mut private_dir) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            // Refused on the way, or (searched along PATH) not seen from the namespace at all.
            let hint = match &err {
                Error::Exec { program, errno } => match errno {
                    nix::errno::Errno::EACCES => private_dir.clone(),
                    nix::errno::Errno::ENOENT if !program.contains('/') => private_dir.clone(),
                    _ => None,
                },
                _ => None,
            };
            match hint {
                Some(dir) => report::err_line(&format!(
                    "{err} ({} is yours and closed to others, and the namespace does not map \
                     your uid: -s (--map-self) maps it too)",
                    escape_path(&dir)
                )),
                None => report::err_line(&super::line_of(&err)),
            }
            ExitCode::from(match err {
                Error::Exec {
                    errno: nix::errno::Errno::ENOENT,
                    ..
                } => exit::EXEC_NOT_FOUND,
                Error::Exec { .. } => exit::EXEC_CANNOT_RUN,
                _ => exit::EXEC_FAILED,
            })
        }
    }
}

/// The first directory on the way to `program` (a path, else where `PATH` has it) that the
/// caller owns and others may not enter, like a 0700 home: the namespace's root, another host
/// uid, is refused there.
fn private_dir_on_the_way(program: &str, me: u32) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let cwd = std::env::current_dir().ok()?;
    let path = if program.contains('/') {
        cwd.join(program)
    } else {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| cwd.join(dir).join(program))
            .find(|p| p.symlink_metadata().is_ok())?
    };
    path.ancestors()
        .skip(1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .find(|dir| {
            std::fs::metadata(dir)
                .is_ok_and(|m| m.is_dir() && m.uid() == me && m.mode() & 0o001 == 0)
        })
        .map(Path::to_path_buf)
}

/// The map source the options name; with none, the caller's delegated ranges.
fn source(s: &MapSource) -> Source {
    if let Some(name) = &s.container {
        Source::Container {
            lxcpath: lxcpath_or_default(&s.lxcpath),
            name: name.clone(),
        }
    } else if let Some(path) = &s.lxc_config {
        Source::LxcConfig(path.clone())
    } else if let Some(path) = &s.oci_config {
        Source::OciConfig(path.clone())
    } else if s.default {
        Source::DefaultConfig(User::current())
    } else if !s.map.is_empty() {
        Source::Specs(s.map.clone())
    } else {
        Source::Delegated(User::current())
    }
}

/// Runs the command; on the way, sets `private_dir` to what a refusal would be about (see
/// [`private_dir_on_the_way`]).
fn exec(args: ExecArgs, private_dir: &mut Option<PathBuf>) -> Result<i32> {
    let source = source(&args.source);
    if let Source::Delegated(user) = &source {
        super::warn_skipped(&SubIdFiles::default(), user);
    }
    let mut map = source.map()?;
    if args.map_self {
        map = map.with_host_id(IdKind::Uid, nix::unistd::geteuid().as_raw())?;
        map = map.with_host_id(IdKind::Gid, nix::unistd::getegid().as_raw())?;
    }
    let target = |kind: IdKind, asked: Option<u32>| -> Result<Option<u32>> {
        match (map.has(kind), asked) {
            (true, asked) => Ok(Some(asked.unwrap_or(0))),
            (false, None) => Ok(None),
            (false, Some(_)) => Err(Error::Usage(format!(
                "--{} needs a map with {} entries",
                kind.name(),
                kind.name()
            ))),
        }
    };
    // Looked at in the host view, before idshift enters the namespace (where the caller's
    // directories show as owned by the overflow id): the 0700 directory a refusal would be
    // about. A few stats, only of the command's own path, and only where the namespace leaves
    // the caller's uid unmapped (else such a directory is no obstacle).
    let me = nix::unistd::geteuid().as_raw();
    if let Some(program) = args.command.first() {
        if !args.map_self && args.rootfs.is_none() && map.to_ns(IdKind::Uid, me).is_none() {
            *private_dir = private_dir_on_the_way(&program.to_string_lossy(), me);
        }
    }
    let command = if args.command.is_empty() {
        // The caller's shell may not exist in a container's rootfs.
        let shell = std::env::var_os("SHELL").filter(|s| !s.is_empty() && args.rootfs.is_none());
        vec![shell.unwrap_or_else(|| OsString::from("/bin/sh"))]
    } else {
        args.command
    };
    let rootfs = match &args.rootfs {
        Some(given) => Some(rootfs_of(given.as_deref(), &args.source)?),
        None => None,
    };
    if let Some(rootfs) = &rootfs {
        check_rootfs(rootfs, &source, &map, args.force)?;
    }
    let spec = ExecSpec {
        uid: target(IdKind::Uid, args.uid)?,
        gid: target(IdKind::Gid, args.gid)?,
        map,
        command,
        rootfs,
        env: args.env,
    };
    userns::run(&spec, &Mapper::default())
}

/// The rootfs to enter: the one given, else the `--container`'s. A path given with
/// `--container` that is another container's rootfs under the lxcpath is refused (its files
/// would be written as this container's root); any other path than the container's own is
/// named in a warning.
fn rootfs_of(given: Option<&Path>, s: &MapSource) -> Result<PathBuf> {
    let container = match &s.container {
        Some(name) => Some(Container::open(&lxcpath_or_default(&s.lxcpath), name)?),
        None => None,
    };
    let (given, c) = match (given, container) {
        (given, None) => {
            return given
                .map(Path::to_path_buf)
                .ok_or_else(|| Error::Usage("--rootfs without DIR needs --container NAME".into()))
        }
        (_, Some(c)) if c.config.rootfs_idmapped() => {
            return Err(Error::Usage(format!(
                "container '{}' keeps its rootfs in the host view (lxc.rootfs.options = \
                 idmap=container), which this map does not show as its root's: start it and use \
                 lxc-attach, or migrate it --no-idmapped first",
                c.name
            )))
        }
        (None, Some(c)) => return Ok(c.rootfs),
        (Some(given), Some(c)) => (given, c),
    };
    let identity = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
    };
    let id = identity(given);
    if id.is_some() && id == identity(&c.rootfs) {
        return Ok(given.to_path_buf());
    }
    let others = crate::container::names(&c.lxcpath).unwrap_or_default();
    for name in others.iter().filter(|name| **name != c.name) {
        if let Ok(other) = Container::open(&c.lxcpath, name) {
            if id.is_some() && identity(&other.rootfs) == id {
                return Err(Error::Usage(format!(
                    "--rootfs {} is container '{name}''s rootfs, not '{}''s: give --container \
                     {name}, or --rootfs alone for '{}''s own",
                    escape_path(given),
                    c.name,
                    c.name
                )));
            }
        }
    }
    warn(&format!(
        "--rootfs {} is not container '{}''s rootfs ({}); entering it with that container's map",
        escape_path(given),
        c.name,
        escape_path(&c.rootfs)
    ));
    Ok(given.to_path_buf())
}

/// Refuses a rootfs root may not enter for its owner with this map (beyond what is delegated
/// to them), or one in use, unless `force`.
fn check_rootfs(
    rootfs: &Path,
    source: &Source,
    map: &crate::idmap::IdMap,
    force: bool,
) -> Result<()> {
    let container = match source {
        Source::Container { lxcpath, name } => Some((lxcpath.as_path(), name.as_str())),
        _ => None,
    };
    let container_dir = container.map(|(lxcpath, name)| lxcpath.join(name));
    let config = source.config_file();
    let mut paths: Vec<&Path> = config.iter().map(|p| p.as_path()).collect();
    paths.extend(container_dir.iter().map(|p| p.as_path()));
    paths.extend(container.iter().map(|(lxcpath, _)| *lxcpath));
    // With a config, its owner decides; without one, whoever controls the rootfs.
    let owners = if paths.is_empty() {
        vec![rootfs]
    } else {
        paths.clone()
    };
    paths.push(rootfs);
    policy::check(
        &policy::Subject {
            what: match container {
                Some((_, name)) => format!("container '{name}'"),
                None => escape_path(rootfs),
            },
            owners,
            paths,
            rootfs_within: container_dir.as_ref().map(|d| (rootfs, d.clone())),
            maps: vec![("the exec", map)],
        },
        force,
        &warn,
    )?;
    refuse_in_use(rootfs, container, force)
}
