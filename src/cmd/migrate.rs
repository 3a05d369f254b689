//! `idshift migrate NAME --to BASE|auto|--to-map MAP`: move a stopped LXC container to another
//! id range, rootfs first, config after ([`crate::migrate::carry_out`]).

use super::shift::{options, shift_where_allowed};
use super::{exit, lxcpath_or_default, refuse_in_use, warn, warn_skipped};
use crate::cli::MigrateArgs;
use crate::error::{Error, Result};
use crate::idmap::source::Source;
use crate::idmap::subid::{SubIdFiles, User};
use crate::migrate::{self, Outcome, Target};
use crate::policy;
use crate::report::{self, escape_path};
use crate::shift::View;

pub fn run(args: MigrateArgs) -> Result<u8> {
    let target = match (args.to.as_deref(), args.to_map.is_empty()) {
        (Some("host"), _) => Target::Host,
        (Some("auto"), _) => {
            warn_skipped(&SubIdFiles::default(), &User::current());
            Target::Auto
        }
        (Some(base), _) => Target::Base(base.parse().map_err(|_| {
            Error::Usage(format!(
                "--to '{base}': expected a host id (0-4294967294), 'auto' or 'host'"
            ))
        })?),
        (None, false) => Target::Map(Source::Specs(args.to_map.clone()).map()?),
        (None, true) => {
            return Err(Error::Usage(
                "give --to HOSTBASE|auto|host or --to-map".into(),
            ))
        }
    };
    let lxcpath = lxcpath_or_default(&args.lxcpath);
    let want_idmapped = match (args.idmapped, args.no_idmapped) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let m = migrate::prepare(&args.name, &lxcpath, &target)?.idmapped(want_idmapped)?;
    // Host ids 0-65535 are never delegated: only root converts between the views.
    if (m.from == View::Host || m.to == View::Host)
        && m.from != m.to
        && !nix::unistd::geteuid().is_root()
    {
        return Err(Error::NeedsRoot {
            what: format!("container '{}'", m.name),
            why: "converting between privileged (host view, no lxc.idmap) and unprivileged \
                  means owning host ids 0-65535, which are never delegated: run it with sudo",
        });
    }
    if let Some(line) = migrate::default_config_warning(&m) {
        warn(&line);
    }
    let others = migrate::other_containers(&lxcpath, &m.name)?;
    let sharing = migrate::sharing_range(&others, &m.to);
    if !sharing.is_empty() && m.from != m.to {
        let line = format!(
            "container '{}': the new map '{}' shares host ids with container(s) {}: each \
             would own the other's files",
            m.name,
            m.to,
            sharing.join(", ")
        );
        if matches!(target, Target::Auto) {
            return Err(Error::Refused(format!(
                "{line}; --to auto never picks a used range: see `idshift ranges`"
            )));
        }
        warn(&format!(
            "{line}; choose a free range (see `idshift ranges`)"
        ));
    }
    let c = &args.common;
    let container_dir = lxcpath.join(&m.name);
    policy::check(
        &policy::Subject {
            what: format!("container '{}'", m.name),
            owners: vec![&m.config.path, &container_dir, &lxcpath],
            paths: vec![&m.config.path, &container_dir, &lxcpath, &m.rootfs],
            rootfs_within: Some((&m.rootfs, container_dir.clone())),
            maps: policy::view_maps(&m.from, &m.to),
        },
        c.force,
        &warn,
    )?;
    refuse_in_use(&m.rootfs, Some((&lxcpath, &m.name)), c.force)?;
    let binds = if m.from == m.to {
        Vec::new()
    } else {
        migrate::bind_sources(&m, &others)
    };
    for b in &binds {
        let path = escape_path(&b.path);
        if !args.with_mounts {
            warn(&format!(
                "container '{}': bind-mount source {path} (lxc.mount.entry) is owned by the old \
                 map and is left as it is: --with-mounts shifts it too",
                m.name
            ));
        } else if !b.shared_with.is_empty() {
            return Err(Error::Refused(format!(
                "container '{}': bind-mount source {path} is also mounted by container(s) {}: \
                 shifting it would take it from them; migrate without --with-mounts",
                m.name,
                b.shared_with.join(", ")
            )));
        } else {
            policy::check(
                &policy::Subject {
                    what: format!("container '{}'", m.name),
                    owners: vec![&m.config.path, &container_dir, &lxcpath],
                    paths: vec![&b.path],
                    rootfs_within: None,
                    maps: Vec::new(),
                },
                c.force,
                &warn,
            )?;
        }
    }
    let binds: Vec<std::path::PathBuf> = if args.with_mounts {
        binds.into_iter().map(|b| b.path).collect()
    } else {
        Vec::new()
    };
    if m.idmapped && !m.config.rootfs_idmapped() {
        prepare_idmapped(&m, &container_dir, c.dry_run)?;
    } else if !m.idmapped && m.config.rootfs_idmapped() {
        leave_idmapped(&m, &container_dir, c.dry_run)?;
    }
    // The shifts' exit status: 1 for a complete shift that names losses of its tree's list.
    let status = std::cell::Cell::new(0);
    let outcome = migrate::carry_out(&m, c.dry_run, |m| {
        let interrupted = if c.dry_run {
            "interrupted: nothing was changed (a dry run)".to_string()
        } else {
            format!(
                "interrupted: container '{}' is left mid-migrate (its config still names '{}'): \
                 run the same `idshift migrate` again to finish it",
                m.name, m.from
            )
        };
        // The rootfs, then each bind-mount source asked for; the config only after all.
        let rootfs = std::iter::once((&m.rootfs, &m.rootfs_from, &m.rootfs_to));
        let binds = binds.iter().map(|b| (b, &m.from, &m.to));
        for (dir, from, to) in rootfs.chain(binds) {
            if from == to {
                continue;
            }
            let opts = options(dir.clone(), from.clone(), to.clone(), c);
            let code = shift_where_allowed(&opts, c, interrupted.clone())?;
            if code != 0 {
                // The disk says whether it finished (a shift that names a listed loss exits 1).
                let complete = code == exit::FAILED && !c.dry_run && migrate::at_target(dir, to);
                if !complete {
                    return Ok((code, false));
                }
                status.set(code);
            }
        }
        Ok((status.get(), true))
    })?;
    let config = escape_path(&m.config.path);
    let note = match outcome {
        Outcome::ShiftUnfinished(code) => {
            report::err_line(&format!(
                "container '{}': {config} still names '{}': the rootfs shift did not finish; fix \
                 what is listed and run the same migrate again",
                m.name, m.from
            ));
            return Ok(code);
        }
        Outcome::AlreadyNamed => {
            // Nothing to shift: the rootfs's loss list is still named (and accepted here).
            let printer = report::Printer {
                progress: report::Progress::Never,
            };
            let lost = crate::shift::listed_losses(&m.rootfs, &c.accept_loss, c.dry_run, &printer)?;
            if !lost.is_empty() {
                status.set(exit::FAILED);
            }
            format!("{config}: already names '{}'", m.to)
        }
        Outcome::WouldName => format!("{config}: would name '{}' (now '{}')", m.to, m.from),
        Outcome::Renamed => format!("{config}: now names '{}' (was '{}')", m.to, m.from),
    };
    // With --json, stdout holds the shift's report only.
    if c.json {
        report::err_line(&note);
    } else {
        report::out(&format!("{note}\n"));
    }
    Ok(status.get())
}

/// Before a container first goes idmapped: root only; the kernel must idmap its rootfs with the
/// new map (probed by making the mount, never attached); and a rootfs kept in the host view
/// holds host root's setuid files, so no other host user may reach it: the container directory
/// loses its search bit for others (said in a warning), as LXC's own directories have it.
fn prepare_idmapped(
    m: &migrate::Migration,
    container_dir: &std::path::Path,
    dry_run: bool,
) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NeedsRoot {
            what: format!("container '{}': --idmapped", m.name),
            why: "idmapped mounts need CAP_SYS_ADMIN in the initial user namespace (an \
                  unprivileged user cannot idmap their own filesystems)",
        });
    }
    if let View::Map(map) = &m.to {
        crate::mount::probe(map, &m.rootfs).map_err(|e| Error::Unsupported {
            what: format!("container '{}': --idmapped", m.name),
            why: e.to_string(),
        })?;
    }
    others_may_search(
        container_dir,
        false,
        dry_run,
        "the rootfs is kept in the host view (its setuid files are host root's), so other host \
         users must not reach it",
    )
}

/// Back to a shifted rootfs: the container's root, a host id of its map, must reach the rootfs
/// again through the container directory that `--idmapped` closed to others.
fn leave_idmapped(
    m: &migrate::Migration,
    container_dir: &std::path::Path,
    dry_run: bool,
) -> Result<()> {
    if m.to == View::Host {
        return Ok(());
    }
    others_may_search(
        container_dir,
        true,
        dry_run,
        &format!(
            "the container's root (a host id of '{}') must reach its shifted rootfs",
            m.to
        ),
    )
}

/// Gives `dir` the search bit for others (`on`) or takes it away, saying so with `why` in a
/// warning; a dry run only says it would.
fn others_may_search(dir: &std::path::Path, on: bool, dry_run: bool, why: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if (mode & 0o001 != 0) == on {
        return Ok(());
    }
    if !dry_run {
        let new = if on { mode | 0o001 } else { mode & !0o001 };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(new))
            .map_err(|e| Error::io(dir, e))?;
    }
    warn(&format!(
        "{}: {} o{}x: {why}",
        escape_path(dir),
        if dry_run { "would be made" } else { "made" },
        if on { "+" } else { "-" }
    ));
    Ok(())
}
