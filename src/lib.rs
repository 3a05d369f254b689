//! idshift: enter and shift the uid/gid mappings of unprivileged Linux containers.
//!
//! - [`idmap`]: the mapping model and one parser per source of maps;
//! - [`userns`]: `exec`, running a command in a new user namespace;
//! - [`sys`]: the only place with `unsafe` and raw `libc` calls.
//!
//! The binary is a thin layer: [`cli`] defines the arguments, [`run`] turns them into domain
//! values once and maps errors to exit statuses.
#![deny(unsafe_code)]

pub mod cli;
pub mod demo;
pub mod error;
pub mod idmap;
pub mod inuse;
pub mod migrate;
pub mod mount;
pub mod policy;
pub mod ranges;
pub mod report;
pub mod shift;
pub mod status;
pub mod sys;
pub mod userns;

use std::ffi::OsString;
use std::process::ExitCode;

use cli::{
    Cli, Command, ExecArgs, MapSource, MigrateArgs, MountArgs, ProgressArg, RangesArgs, ShiftArgs,
    ShiftCommon, StatusArgs,
};
use error::{Error, Result};
use idmap::lxc::{default_lxcpath, LxcConfig};
use idmap::subid::{SubIdFiles, User};
use idmap::{IdKind, IdMap};
use userns::{ExecSpec, Mapper};

/// Exit statuses of idshift itself.
pub mod exit {
    /// Done, except the listed failures; or a failure of the system.
    pub const FAILED: u8 = 1;
    /// A usage error: bad arguments, a malformed map, an unknown container; or idshift was
    /// started setuid/setgid, which it refuses before reading its arguments.
    pub const USAGE: u8 = 2;
    /// `shift`: refused (another shift pending, another map recorded, outliers under --strict).
    pub const REFUSED: u8 = 3;
    /// `exec`: idshift failed and the command did not run.
    pub const EXEC_FAILED: u8 = 125;
    /// `exec`: the command was found but could not be executed.
    pub const EXEC_CANNOT_RUN: u8 = 126;
    /// `exec`: the command was not found.
    pub const EXEC_NOT_FOUND: u8 = 127;
}

/// Why idshift refuses to run at all: it was started setuid or setgid (real and effective ids
/// differ). Installed that way it would give any user a namespace that maps host root; the
/// system's newuidmap/newgidmap are the only privileged helpers, and they apply /etc/subuid.
pub fn setuid_refusal() -> Option<String> {
    use nix::unistd::{getegid, geteuid, getgid, getuid};
    let (uid, euid, gid, egid) = (getuid(), geteuid(), getgid(), getegid());
    (uid != euid || gid != egid).then(|| {
        format!(
            "refusing to run setuid/setgid (uid {uid}, euid {euid}, gid {gid}, egid {egid}): \
             the privilege boundary is newuidmap/newgidmap"
        )
    })
}

/// The exit status of an error outside `exec`.
fn error_status(err: &Error) -> u8 {
    match err {
        Error::Refused(_) => exit::REFUSED,
        e if e.is_usage() => exit::USAGE,
        _ => exit::FAILED,
    }
}

/// Prints an error as one line and returns its exit status.
fn report(err: Error) -> ExitCode {
    report::err_line(&err.to_string());
    ExitCode::from(error_status(&err))
}

/// The exit status of a command that reports nothing but failure.
fn finish(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(err),
    }
}

/// Runs a parsed command line and returns the process exit status.
pub fn run(cli: Cli) -> ExitCode {
    use clap::CommandFactory;
    match cli.command {
        Command::Shift(args) => shift(args).map(ExitCode::from).unwrap_or_else(report),
        Command::Migrate(args) => migrate(args).map(ExitCode::from).unwrap_or_else(report),
        Command::Status(args) => finish(status(args)),
        Command::Ranges(args) => finish(ranges(args)),
        Command::Mount(args) => finish(mount(args)),
        Command::Umount { dst, force } => finish(mount::umount(
            &dst,
            if force {
                mount::Ownership::Forced
            } else {
                mount::Ownership::Checked
            },
        )),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "idshift",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { out_dir } => finish(match &out_dir {
            Some(dir) => {
                clap_mangen::generate_to(Cli::command(), dir).map_err(|e| Error::io(dir, e))
            }
            None => clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::BrokenPipe => Ok(()),
                    _ => Err(e),
                })
                .map_err(|e| Error::Failed(format!("writing the man page: {e}"))),
        }),
        Command::Demo(args) => finish(demo::run(args.keep)),
        Command::Exec(args) => match exec(args) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(err) => {
                report::err_line(&err.to_string());
                ExitCode::from(match err {
                    Error::Exec {
                        errno: nix::errno::Errno::ENOENT,
                        ..
                    } => exit::EXEC_NOT_FOUND,
                    Error::Exec { .. } => exit::EXEC_CANNOT_RUN,
                    _ => exit::EXEC_FAILED,
                })
            }
        },
    }
}

impl MapSource {
    /// The map the options name; with none, the caller's delegated ranges.
    pub fn resolve(&self) -> Result<IdMap> {
        if let Some(name) = &self.container {
            let lxcpath = self.lxcpath.clone().unwrap_or_else(default_lxcpath);
            return LxcConfig::for_container(&lxcpath, name)?.map();
        }
        if let Some(path) = &self.lxc_config {
            return LxcConfig::read(path)?.map();
        }
        if let Some(path) = &self.oci_config {
            return idmap::oci::read(path);
        }
        if !self.map.is_empty() {
            return Ok(IdMap::from_specs(&self.map)?);
        }
        SubIdFiles::default().default_map(&User::current())
    }
}

fn mount(args: MountArgs) -> Result<()> {
    let map = IdMap::from_specs(&args.map)?;
    policy::check(
        &policy::Subject {
            what: report::escape_path(&args.src),
            owners: vec![&args.src, &args.dst],
            paths: vec![&args.src, &args.dst],
            rootfs_within: None,
            maps: vec![("the mount's", &map)],
        },
        args.force,
        &warn,
    )?;
    let opts = mount::MountOptions {
        recursive: args.recursive,
        setuid: if args.suid {
            mount::Setuid::Honoured
        } else {
            mount::Setuid::Ignored
        },
    };
    for w in mount::mount(&map, &args.src, &args.dst, opts)? {
        warn(&w);
    }
    Ok(())
}

fn exec(args: ExecArgs) -> Result<i32> {
    let mut map = args.source.resolve()?;
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
    let command = if args.command.is_empty() {
        // The caller's shell may not exist in a container's rootfs.
        let shell = std::env::var_os("SHELL").filter(|s| !s.is_empty() && args.rootfs.is_none());
        vec![shell.unwrap_or_else(|| OsString::from("/bin/sh"))]
    } else {
        args.command
    };
    if let Some(rootfs) = &args.rootfs {
        let container = args.source.container.as_deref().map(|name| {
            let lxcpath = args.source.lxcpath.clone().unwrap_or_else(default_lxcpath);
            (lxcpath, name.to_string())
        });
        // Root entering a rootfs another user controls, with a map from wherever: not beyond
        // what is delegated to them.
        let container_dir = container.as_ref().map(|(lxcpath, name)| lxcpath.join(name));
        let config = container_dir
            .as_ref()
            .map(|d| d.join("config"))
            .or_else(|| args.source.lxc_config.clone())
            .or_else(|| args.source.oci_config.clone());
        let mut paths: Vec<&std::path::Path> = config.iter().map(|p| p.as_path()).collect();
        paths.extend(container_dir.iter().map(|p| p.as_path()));
        paths.extend(container.iter().map(|(lxcpath, _)| lxcpath.as_path()));
        // With a config, its owner decides; without one, whoever controls the rootfs.
        let owners = if paths.is_empty() {
            vec![rootfs.as_path()]
        } else {
            paths.clone()
        };
        paths.push(rootfs);
        policy::check(
            &policy::Subject {
                what: match &container {
                    Some((_, name)) => format!("container '{name}'"),
                    None => report::escape_path(rootfs),
                },
                owners,
                paths,
                rootfs_within: container_dir
                    .as_ref()
                    .map(|d| (rootfs.as_path(), d.clone())),
                maps: vec![("the exec", &map)],
            },
            args.force,
            &warn,
        )?;
        refuse_in_use(
            rootfs,
            container.as_ref().map(|(p, n)| (p.as_path(), n.as_str())),
            args.force,
        )?;
    }
    let spec = ExecSpec {
        uid: target(IdKind::Uid, args.uid)?,
        gid: target(IdKind::Gid, args.gid)?,
        map,
        command,
        rootfs: args.rootfs,
        env: args.env,
    };
    userns::run(&spec, &Mapper::default())
}

/// Prints a warning line.
fn warn(text: &str) {
    report::err_line(&format!("warning: {text}"));
}

/// Refuses (exit 3; under `exec`, 125) a tree that is in use, unless `force`, which says what
/// it overrides.
fn refuse_in_use(
    dir: &std::path::Path,
    container: Option<(&std::path::Path, &str)>,
    force: bool,
) -> Result<()> {
    let Some(why) = inuse::in_use(dir, container) else {
        return Ok(());
    };
    let dir = report::escape_path(dir);
    if force {
        report::err_line(&format!(
            "warning: --force: going ahead on {dir} although it is in use: {why}"
        ));
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{dir}: in use: {why}; stop what uses it first (or give --force)"
    )))
}

fn threads(asked: Option<u16>) -> usize {
    asked.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

fn container_map(lxcpath: &Option<std::path::PathBuf>, name: &str) -> Result<IdMap> {
    let lxcpath = lxcpath.clone().unwrap_or_else(default_lxcpath);
    LxcConfig::for_container(&lxcpath, name)?.map()
}

impl ShiftArgs {
    /// The FROM and TO views the arguments name.
    pub fn views(&self) -> Result<(shift::View, shift::View)> {
        use shift::View;
        if !self.map.is_empty() {
            let map = View::Map(IdMap::from_specs(&self.map)?);
            return Ok(if self.reverse {
                (map, View::Host)
            } else {
                (View::Host, map)
            });
        }
        let side =
            |specs: &[idmap::MapSpec], container: &Option<String>, which: &str| -> Result<View> {
                match (specs.is_empty(), container) {
                    (false, _) => Ok(View::Map(IdMap::from_specs(specs)?)),
                    (true, Some(name)) => Ok(View::Map(container_map(&self.lxcpath, name)?)),
                    (true, None) => Err(Error::Usage(format!(
                        "give a MAP (host view -> MAP), or both --from and --to (missing {which})"
                    ))),
                }
            };
        Ok((
            side(&self.from, &self.from_container, "--from")?,
            side(&self.to, &self.to_container, "--to")?,
        ))
    }
}

fn shift_options(
    dir: std::path::PathBuf,
    from: shift::View,
    to: shift::View,
    c: &ShiftCommon,
) -> shift::ShiftOptions {
    shift::ShiftOptions {
        dir,
        from,
        to,
        dry_run: c.dry_run,
        threads: threads(c.threads),
        cross_mounts: c.cross_mounts,
        strict: c.strict,
        verbose: c.verbose,
        force: c.force,
        progress: match c.progress {
            ProgressArg::Auto => shift::Progress::Auto,
            ProgressArg::Always => shift::Progress::Always,
            ProgressArg::Never => shift::Progress::Never,
        },
    }
}

fn shift(args: ShiftArgs) -> Result<u8> {
    let (from, to) = args.views()?;
    let opts = shift_options(args.dir.clone(), from, to, &args.common);
    let container = args.from_container.as_ref().or(args.to_container.as_ref());
    let lxcpath = args.lxcpath.clone().unwrap_or_else(default_lxcpath);
    for name in [&args.from_container, &args.to_container]
        .into_iter()
        .flatten()
    {
        let config = lxcpath.join(name).join("config");
        let container_dir = lxcpath.join(name);
        let maps: Vec<(&'static str, &IdMap)> = [("FROM", &opts.from), ("TO", &opts.to)]
            .into_iter()
            .filter_map(|(which, v)| match v {
                shift::View::Map(m) => Some((which, m)),
                shift::View::Host => None,
            })
            .collect();
        policy::check(
            &policy::Subject {
                what: format!("container '{name}'"),
                owners: vec![&config, &container_dir, &lxcpath],
                paths: vec![&config, &container_dir, &lxcpath],
                rootfs_within: None,
                maps,
            },
            args.common.force,
            &warn,
        )?;
    }
    refuse_in_use(
        &opts.dir,
        container.map(|name| (lxcpath.as_path(), name.as_str())),
        args.common.force,
    )?;
    run_shift(&opts, args.common.json)
}

/// Runs a shift where it can run: here as root; otherwise inside a user namespace that maps
/// the caller's delegated ranges onto themselves (refused before anything changes when the maps
/// name ids the caller does not own). Prints the summary; returns the exit status.
fn run_shift(opts: &shift::ShiftOptions, json: bool) -> Result<u8> {
    if nix::unistd::geteuid().is_root() {
        return shift_and_print(opts, json);
    }
    let own = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let ns = shift::delegated::namespace_map(
        &opts.from,
        &opts.to,
        &User::current(),
        own,
        &SubIdFiles::default(),
    )?;
    let code = userns::call(&ns, &Mapper::default(), || {
        shift_and_print(opts, json).unwrap_or_else(|err| {
            report::err_line(&err.to_string());
            error_status(&err)
        })
    })?;
    Ok(u8::try_from(code).unwrap_or(exit::FAILED))
}

fn shift_and_print(opts: &shift::ShiftOptions, json: bool) -> Result<u8> {
    let summary = shift::run(opts, &report::Printer)?;
    report::print(json, &summary, || summary.render());
    Ok(if summary.error_count > 0 {
        exit::FAILED
    } else {
        0
    })
}

fn migrate(args: MigrateArgs) -> Result<u8> {
    let target = match (args.to.as_deref(), args.to_map.is_empty()) {
        (Some("auto"), _) => migrate::Target::Auto,
        (Some(base), _) => migrate::Target::Base(base.parse().map_err(|_| {
            Error::Usage(format!(
                "--to '{base}': expected a host id (0-4294967294) or 'auto'"
            ))
        })?),
        (None, false) => migrate::Target::Map(IdMap::from_specs(&args.to_map)?),
        (None, true) => return Err(Error::Usage("give --to HOSTBASE|auto or --to-map".into())),
    };
    let lxcpath = args.lxcpath.clone().unwrap_or_else(default_lxcpath);
    let m = migrate::prepare(&args.name, &lxcpath, &target)?;
    let c = &args.common;
    let container_dir = lxcpath.join(&m.name);
    policy::check(
        &policy::Subject {
            what: format!("container '{}'", m.name),
            owners: vec![&m.config.path, &container_dir, &lxcpath],
            paths: vec![&m.config.path, &container_dir, &lxcpath, &m.rootfs],
            rootfs_within: Some((&m.rootfs, container_dir.clone())),
            maps: vec![("FROM", &m.from), ("TO", &m.to)],
        },
        c.force,
        &warn,
    )?;
    refuse_in_use(&m.rootfs, Some((&lxcpath, &m.name)), c.force)?;
    let note = |text: String| {
        if c.json {
            report::err_line(&text)
        } else {
            report::out(&format!("{text}\n"))
        }
    };
    if m.from != m.to {
        let opts = shift_options(
            m.rootfs.clone(),
            shift::View::Map(m.from.clone()),
            shift::View::Map(m.to.clone()),
            c,
        );
        let code = run_shift(&opts, c.json)?;
        if code != 0 {
            report::err_line(&format!(
                "container '{}': {} still names '{}': the rootfs shift did not finish; fix what \
                 is listed and run the same migrate again",
                m.name,
                m.config.path.display(),
                m.from
            ));
            return Ok(code);
        }
    }
    match migrate::new_config_text(&m)? {
        None => note(format!(
            "{}: already names '{}'",
            m.config.path.display(),
            m.to
        )),
        Some(_) if c.dry_run => note(format!(
            "{}: would name '{}' (now '{}')",
            m.config.path.display(),
            m.to,
            m.from
        )),
        Some(text) => {
            migrate::replace_file(&m.config.path, &text)?;
            note(format!(
                "{}: now names '{}' (was '{}')",
                m.config.path.display(),
                m.to,
                m.from
            ));
        }
    }
    Ok(0)
}

fn status(args: StatusArgs) -> Result<()> {
    let map = (!args.map.is_empty())
        .then(|| IdMap::from_specs(&args.map))
        .transpose()?;
    let s = status::scan(
        &args.dir,
        map.as_ref(),
        threads(args.threads),
        args.cross_mounts,
        &report::Printer,
    )?;
    report::print(args.json, &s, || s.render());
    Ok(())
}

fn ranges(args: RangesArgs) -> Result<()> {
    let user = match &args.user {
        Some(spec) => User::lookup(spec)?,
        None => User::current(),
    };
    let lxcpath = match (&args.lxcpath, &args.user) {
        (Some(p), _) => p.clone(),
        (None, None) => default_lxcpath(),
        (None, Some(_)) => ranges::lxcpath_of(&user)?,
    };
    let r = ranges::gather(&user, &SubIdFiles::default(), &lxcpath)?;
    report::print(args.json, &r, || r.render());
    Ok(())
}
