//! `idshift completions SHELL`: a completion script for the shell, on stdout.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::Result;

pub fn run(shell: clap_complete::Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "idshift", &mut script);
    crate::report::out(&String::from_utf8_lossy(&script));
    Ok(())
}
