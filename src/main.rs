use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything reads the arguments or the environment: a setuid or setgid idshift would
    // hand every user a root-mapped namespace. The privilege boundary is newuidmap/newgidmap.
    if let Some(why) = idshift::cmd::setuid_refusal() {
        idshift::report::err_line(&why);
        return ExitCode::from(idshift::cmd::exit::USAGE);
    }
    match idshift::cli::Cli::try_parse() {
        Ok(cli) => idshift::cmd::run(cli),
        Err(err) => {
            let _ = err.print();
            if !err.use_stderr() {
                return ExitCode::SUCCESS; // --help, --version
            }
            let exec = std::env::args_os().nth(1).is_some_and(|a| a == "exec");
            ExitCode::from(if exec {
                idshift::cmd::exit::EXEC_FAILED
            } else {
                idshift::cmd::exit::USAGE
            })
        }
    }
}
