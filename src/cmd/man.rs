//! `idshift man [DIR]`: the man page on stdout, or one page per command written into DIR.

use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{Error, Result};

pub fn run(out_dir: Option<&Path>) -> Result<()> {
    match out_dir {
        Some(dir) => clap_mangen::generate_to(Cli::command(), dir).map_err(|e| Error::io(dir, e)),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(|e| Error::io("the man page", e))?;
            crate::report::out(&String::from_utf8_lossy(&page));
            Ok(())
        }
    }
}
