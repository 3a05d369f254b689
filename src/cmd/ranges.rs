//! `idshift ranges [--user U]`: the ranges delegated to a user, which containers use them, and
//! the first free block.

use crate::cli::RangesArgs;
use crate::error::Result;
use crate::idmap::lxc::default_lxcpath;
use crate::idmap::subid::{SubIdFiles, User};
use crate::ranges;
use crate::report;

pub fn run(args: RangesArgs) -> Result<()> {
    let user = match &args.user {
        Some(spec) => User::lookup(spec)?,
        None => User::current(),
    };
    let lxcpath = match (&args.lxcpath, &args.user) {
        (Some(p), _) => p.clone(),
        (None, None) => default_lxcpath(),
        (None, Some(_)) => ranges::lxcpath_of(&user)?,
    };
    let files = SubIdFiles::default();
    super::warn_skipped(&files, &user);
    let r = ranges::gather(&user, &files, &lxcpath)?;
    report::print(args.json, &r, || r.render());
    Ok(())
}
