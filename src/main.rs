use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = mmrl::cli::Cli::parse();
    match mmrl::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
