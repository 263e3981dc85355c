//! The `fleetlet` CLI binary: parses the command line and runs it.

use clap::Parser;
use fleetlet_cli::{Cli, CliError, output, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `diff --exit-code` reports changes by its status alone, like `git diff`.
        Err(CliError::Changes) => std::process::ExitCode::from(1),
        // The reader of the output went away (`| head -1`): quiet, with 128 + SIGPIPE like a
        // program SIGPIPE ended.
        Err(error @ CliError::OutputClosed) => std::process::ExitCode::from(error.exit_code()),
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
            output::note_line(&format!("fleetlet: {message}"));
            std::process::ExitCode::from(error.exit_code())
        }
    }
}
