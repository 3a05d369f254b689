//! `idshift status DIR | --container NAME`: what a tree's ids say about the map it uses, any
//! pending shift, and for a container whether its config agrees.

use super::{lxcpath_or_default, threads};
use crate::cli::StatusArgs;
use crate::container::Container;
use crate::error::{Error, Result};
use crate::idmap::source::Source;
use crate::report::{self, Printer};
use crate::shift::View;
use crate::status;

pub fn run(args: StatusArgs) -> Result<()> {
    let mut map = (!args.map.is_empty())
        .then(|| Source::Specs(args.map.clone()).map())
        .transpose()?;
    let container = match &args.container {
        Some(name) => Some(Container::open(&lxcpath_or_default(&args.lxcpath), name)?),
        None => None,
    };
    let configured = container.as_ref().map(Container::rootfs_view).transpose()?;
    // The container's map is the one its ids should lie in, unless another is asked for.
    if let (None, Some(View::Map(m))) = (&map, &configured) {
        map = Some(m.clone());
    }
    let dir = match (&container, &args.dir) {
        (Some(c), _) => c.rootfs.clone(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => return Err(Error::Usage("give DIR or --container NAME".into())),
    };
    let mut s = status::scan(
        &dir,
        map.as_ref(),
        threads(args.threads),
        args.cross_mounts,
        &Printer::PLAIN,
    )?;
    if let (Some(c), Some(view)) = (&container, configured) {
        s.judge_container(&c.name, view);
    }
    report::print(args.json, &s, || s.render());
    Ok(())
}
