//! `idshift status DIR`: what a tree's ids say about the map it uses, and any pending shift.

use super::threads;
use crate::cli::StatusArgs;
use crate::error::Result;
use crate::idmap::source::Source;
use crate::report::{self, Printer};
use crate::status;

pub fn run(args: StatusArgs) -> Result<()> {
    let map = (!args.map.is_empty())
        .then(|| Source::Specs(args.map.clone()).map())
        .transpose()?;
    let s = status::scan(
        &args.dir,
        map.as_ref(),
        threads(args.threads),
        args.cross_mounts,
        &Printer::PLAIN,
    )?;
    report::print(args.json, &s, || s.render());
    Ok(())
}
