//! `idshift completions SHELL`: a completion script for the shell, on stdout.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{Error, Result};

pub fn run(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "idshift", &mut script);
    let text = String::from_utf8(script)
        .map_err(|e| Error::Failed(format!("the completion script is not UTF-8: {e}")))?;
    crate::report::out(&text);
    Ok(())
}
