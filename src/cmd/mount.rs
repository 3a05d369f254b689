//! `idshift mount SRC DST MAP` and `idshift umount DST`: a tree presented shifted through an
//! idmapped mount, without changing an inode.

use std::path::Path;

use super::warn;
use crate::cli::MountArgs;
use crate::error::Result;
use crate::idmap::source::Source;
use crate::mount::{self, MountOptions, Ownership, Setuid};
use crate::policy;
use crate::report::escape_path;

pub fn run(args: MountArgs) -> Result<()> {
    let map = Source::Specs(args.map.clone()).map()?;
    policy::check(
        &policy::Subject {
            what: escape_path(&args.src),
            owners: vec![&args.src, &args.dst],
            paths: vec![&args.src, &args.dst],
            rootfs_within: None,
            maps: vec![("the mount's", &map)],
        },
        args.force,
        &warn,
    )?;
    let opts = MountOptions {
        recursive: args.recursive,
        setuid: if args.suid {
            Setuid::Honoured
        } else {
            Setuid::Ignored
        },
    };
    for w in mount::mount(&map, &args.src, &args.dst, opts)? {
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
