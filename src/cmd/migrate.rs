//! `idshift migrate NAME --to BASE|auto|--to-map MAP`: move a stopped LXC container to another
//! id range, rootfs first, config after ([`crate::migrate::carry_out`]).

use super::shift::{options, shift_where_allowed};
use super::{lxcpath_or_default, refuse_in_use, warn, warn_skipped};
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
    let m = migrate::prepare(&args.name, &lxcpath, &target)?;
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
    let sharing = migrate::sharing_range(&lxcpath, &m.name, &m.to)?;
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
            maps: [("FROM", &m.from), ("TO", &m.to)]
                .into_iter()
                .filter_map(|(which, v)| match v {
                    View::Map(map) => Some((which, map)),
                    View::Host => None,
                })
                .collect(),
        },
        c.force,
        &warn,
    )?;
    refuse_in_use(&m.rootfs, Some((&lxcpath, &m.name)), c.force)?;
    let binds = if m.from == m.to {
        Vec::new()
    } else {
        migrate::bind_sources(&m, &lxcpath)
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
        for dir in std::iter::once(&m.rootfs).chain(&binds) {
            let opts = options(dir.clone(), m.from.clone(), m.to.clone(), c);
            let code = shift_where_allowed(&opts, c, interrupted.clone())?;
            if code != 0 {
                return Ok(code);
            }
        }
        Ok(0)
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
        Outcome::AlreadyNamed => format!("{config}: already names '{}'", m.to),
        Outcome::WouldName => format!("{config}: would name '{}' (now '{}')", m.to, m.from),
        Outcome::Renamed => format!("{config}: now names '{}' (was '{}')", m.to, m.from),
    };
    // With --json, stdout holds the shift's report only.
    if c.json {
        report::err_line(&note);
    } else {
        report::out(&format!("{note}\n"));
    }
    Ok(0)
}
