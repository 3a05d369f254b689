//! `idshift list [-P DIR]... [--json | --names]`: the containers and how their configs and
//! rootfses stand.

use crate::cli::ListArgs;
use crate::error::Result;
use crate::idmap::lxc::default_lxcpath;
use crate::{list, report};

pub fn run(args: ListArgs) -> Result<()> {
    let lxcpaths = if args.lxcpath.is_empty() {
        vec![default_lxcpath()]
    } else {
        args.lxcpath
    };
    if args.names {
        let mut out = String::new();
        for lxcpath in &lxcpaths {
            for name in crate::container::names(lxcpath)? {
                out += &name;
                out += "\n";
            }
        }
        report::out(&out);
        return Ok(());
    }
    let l = list::gather(&lxcpaths)?;
    report::print(args.json, &l, || l.render());
    Ok(())
}
