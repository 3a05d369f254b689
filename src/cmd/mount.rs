//! `idshift mount SRC DST MAP` and `idshift umount DST`: a tree presented shifted through an
//! idmapped mount, without changing an inode.

use std::path::Path;

use super::{lxcpath_or_default, refuse_in_use, warn};
use crate::cli::MountArgs;
use crate::container::Container;
use crate::error::{Error, Result};
use crate::idmap::source::Source;
use crate::mount::{self, MountOptions, Ownership, Setuid};
use crate::policy;
use crate::report::escape_path;

pub fn run(args: MountArgs) -> Result<()> {
    // With --container the one path given is DST.
    let (container, src, dst) = match (&args.container, &args.dst) {
        (Some(name), None) => {
            let c = Container::open(&lxcpath_or_default(&args.lxcpath), name)?;
            let (src, dst) = (c.rootfs.clone(), args.src.clone());
            (Some(c), src, dst)
        }
        (Some(name), Some(_)) => {
            return Err(Error::Usage(format!(
                "--container {name}: give DST only (SRC is the container's rootfs)"
            )))
        }
        (None, Some(dst)) => (None, args.src.clone(), dst.clone()),
        (None, None) => return Err(Error::Usage("give SRC and DST".into())),
    };
    // The container's files as its root sees them: on-disk host ids shown as namespace ids.
    if let Some(c) = container.as_ref().filter(|c| c.config.rootfs_idmapped()) {
        return Err(Error::Usage(format!(
            "container '{}' keeps its rootfs in the host view (lxc.rootfs.options = \
             idmap=container): {} already shows its files as its root sees them",
            c.name,
            escape_path(&c.rootfs)
        )));
    }
    let map = match &container {
        Some(c) => c.map()?.inverse(),
        None => Source::Specs(args.map.clone()).map()?,
    };
    let config = container.as_ref().map(|c| c.config.path.clone());
    let dir = container.as_ref().map(Container::dir);
    let mut owners: Vec<&Path> = config
        .iter()
        .chain(dir.iter())
        .map(|p| p.as_path())
        .collect();
    if owners.is_empty() {
        owners.push(&src);
    }
    owners.push(&dst);
    policy::check(
        &policy::Subject {
            what: match &container {
                Some(c) => format!("container '{}'", c.name),
                None => escape_path(&src),
            },
            owners,
            paths: vec![&src, &dst],
            rootfs_within: container.as_ref().map(|c| (src.as_path(), c.dir())),
            maps: vec![("the mount's", &map)],
        },
        args.force,
        &warn,
    )?;
    if let Some(c) = &container {
        refuse_in_use(&src, Some(c.in_use_key()), args.force)?;
    }
    let opts = MountOptions {
        recursive: args.recursive,
        setuid: if args.suid {
            Setuid::Honoured
        } else {
            Setuid::Ignored
        },
    };
    for w in mount::mount(&map, &src, &dst, opts)? {
        warn(&w);
    }
    Ok(())
}

pub fn umount(dst: &Path, force: bool) -> Result<()> {
    mount::umount(
        dst,
        if force {
            Ownership::Forced
        } else {
            Ownership::Checked
        },
    )
}
