use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = mmrl::cli::Cli::parse();
    match mmrl::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", message(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each cause once: most of our errors already
/// show their cause in their own message (`cannot read FILE: CAUSE`).
fn message(err: &anyhow::Error) -> String {
    let mut msg = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !msg.contains(&cause) {
            msg.push_str(": ");
            msg.push_str(&cause);
        }
    }
    msg
}
