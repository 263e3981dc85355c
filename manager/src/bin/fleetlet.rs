//! The `fleetlet` CLI binary: parses the command line and runs it.

use clap::Parser;
use fleetlet_manager::cli::{Cli, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fleetlet: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
