//! `idshift shift DIR MAP` / `--from … --to …`: the shift engine on one tree, as root in this
//! process, otherwise inside a user namespace of the caller's delegated ranges.

use std::path::{Path, PathBuf};

use super::interrupt::Notice;
use super::{error_status, exit, lxcpath_or_default, refuse_in_use, threads, warn};
use crate::cli::{ProgressArg, ShiftArgs, ShiftCommon, ViewArg};
use crate::container::Container;
use crate::error::{Error, Result};
use crate::idmap::source::Source;
use crate::idmap::subid::{SubIdFiles, User};
use crate::idmap::MapSpec;
use crate::policy;
use crate::report::{self, escape_path, Printer, Progress};
use crate::shift::{self, View};
use crate::userns::{self, Mapper};

pub fn run(args: ShiftArgs) -> Result<u8> {
    let lxcpath = lxcpath_or_default(&args.lxcpath);
    let container = match &args.container {
        Some(name) => Some(Container::open(&lxcpath, name)?),
        None => None,
    };
    let (from, to) = views(&args, &lxcpath, container.as_ref())?;
    let dir = match (&container, &args.dir) {
        (Some(c), _) => c.rootfs.clone(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => return Err(Error::Usage("give DIR or --container NAME".into())),
    };
    let opts = options(dir, from, to, &args.common);
    for name in [&args.container, &args.from_container, &args.to_container]
        .into_iter()
        .flatten()
    {
        let container_dir = lxcpath.join(name);
        let config = container_dir.join("config");
        let maps = policy::view_maps(&opts.from, &opts.to);
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
    let container = args
        .container
        .as_ref()
        .or(args.from_container.as_ref())
        .or(args.to_container.as_ref());
    refuse_in_use(
        &opts.dir,
        container.map(|name| (lxcpath.as_path(), name.as_str())),
        args.common.force,
    )?;
    let (finish, rollback) = shift::ways_out(&opts.dir, &opts.from, &opts.to);
    let dir = escape_path(&opts.dir);
    let interrupted = if opts.dry_run {
        "interrupted: nothing was changed (a dry run)".to_string()
    } else {
        format!(
            "interrupted: if the shift had begun, {dir} is left pending (`idshift status {dir}` \
             shows it): run `{finish}` to finish it, or `{rollback}` to roll it back"
        )
    };
    shift_where_allowed(&opts, &args.common, interrupted)
}

/// The FROM and TO views the arguments name: host view and MAP (or the reverse with `-r`), or
/// each side from its maps (`host` by name), its container, or for FROM the `--container`'s own
/// view.
fn views(args: &ShiftArgs, lxcpath: &Path, own: Option<&Container>) -> Result<(View, View)> {
    if !args.map.is_empty() {
        let map = View::Map(Source::Specs(args.map.clone()).map()?);
        return Ok(if args.reverse {
            (map, View::Host)
        } else {
            (View::Host, map)
        });
    }
    let side = |given: &[ViewArg], container: &Option<String>, which: &str| -> Result<View> {
        if given.iter().any(|v| matches!(v, ViewArg::Host)) {
            if given.len() > 1 {
                return Err(Error::Usage(format!(
                    "{which} host: the host view takes no map entries beside it"
                )));
            }
            return Ok(View::Host);
        }
        let specs: Vec<MapSpec> = given
            .iter()
            .filter_map(|v| match v {
                ViewArg::Spec(spec) => Some(*spec),
                ViewArg::Host => None,
            })
            .collect();
        let source = match (specs.is_empty(), container) {
            (false, _) => Source::Specs(specs),
            (true, Some(name)) => Source::Container {
                lxcpath: lxcpath.to_path_buf(),
                name: name.clone(),
            },
            (true, None) => {
                return Err(Error::Usage(format!(
                    "give a MAP (host view -> MAP), or --to (missing {which}); --from host / \
                     --to host name the host view"
                )))
            }
        };
        Ok(View::Map(source.map()?))
    };
    // Only a TO given: the tree is taken to be in the host view (as `shift DIR MAP` does);
    // a tree recorded in another view is refused by the engine, ids outside it are listed.
    let from = match own {
        Some(c) => c.rootfs_view()?,
        None if args.from.is_empty() && args.from_container.is_none() => View::Host,
        None => side(&args.from, &args.from_container, "--from")?,
    };
    let to = side(&args.to, &args.to_container, "--to")?;
    if from == View::Host && to == View::Host {
        return Err(Error::Usage(
            "FROM and TO are both the host view: nothing to shift".into(),
        ));
    }
    Ok((from, to))
}

/// The engine's options from the arguments `shift` and `migrate` share.
pub(super) fn options(dir: PathBuf, from: View, to: View, c: &ShiftCommon) -> shift::ShiftOptions {
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
        accept_loss: c.accept_loss.clone(),
    }
}

/// Runs a shift where it can run: here as root; otherwise inside a user namespace that maps
/// the caller's delegated ranges onto themselves (refused before anything changes when the maps
/// name ids the caller does not own). Prints the summary; returns the exit status. Interrupted
/// (SIGINT, SIGTERM, SIGHUP) while the shift runs, it prints `interrupted` first.
pub(super) fn shift_where_allowed(
    opts: &shift::ShiftOptions,
    c: &ShiftCommon,
    interrupted: String,
) -> Result<u8> {
    let printer = Printer {
        progress: match c.progress {
            ProgressArg::Auto => Progress::Auto,
            ProgressArg::Always => Progress::Always,
            ProgressArg::Never => Progress::Never,
        },
    };
    if nix::unistd::geteuid().is_root() {
        let _notice = Notice::new(interrupted);
        return shift_and_print(opts, &printer, c.json);
    }
    let own = crate::idmap::ByKind::new(
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let (user, files) = (User::current(), SubIdFiles::default());
    super::warn_skipped(&files, &user);
    let ns = shift::delegated::namespace_map(&opts.from, &opts.to, &user, own, &files)?;
    let code = userns::call(&ns, &Mapper::default(), || {
        // In the namespace's process, which the terminal interrupts as it does its parent.
        let _notice = Notice::new(interrupted);
        shift_and_print(opts, &printer, c.json).unwrap_or_else(|err| {
            report::err_line(&err.to_string());
            error_status(&err)
        })
    })?;
    Ok(u8::try_from(code).unwrap_or(exit::FAILED))
}

fn shift_and_print(opts: &shift::ShiftOptions, printer: &Printer, json: bool) -> Result<u8> {
    let summary = shift::run(opts, printer)?;
    report::print(json, &summary, || summary.render());
    Ok(if summary.error_count > 0 || !summary.lost.is_empty() {
        exit::FAILED
    } else {
        0
    })
}
