//! The `fleetlet` CLI binary: parses the command line and runs it.

use clap::Parser;
use fleetlet_manager::cli::{Cli, CliError, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `diff --exit-code` reports changes by its status alone, like `git diff`.
        Err(CliError::Changes) => std::process::ExitCode::from(1),
        Err(error) => {
            // The causes say why a request failed (refused connection, untrusted certificate);
            // reqwest's own message stops at "error sending request".
            let mut message = error.to_string();
            let mut cause = std::error::Error::source(&error);
            while let Some(inner) = cause {
                let text = inner.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
                cause = inner.source();
            }
            eprintln!("fleetlet: {message}");
            std::process::ExitCode::from(error.exit_code())
        }
    }
}
