//! The `fleetlet-manager` binary: parses the configuration, sets up logging, runs the manager.

use clap::Parser;
use fleetlet_manager::config::Config;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator. Every held connection (an agent's long-poll) keeps two
/// 8 KiB hyper buffers of which it writes a few hundred bytes; jemalloc serves them from pages
/// that only ever hold 8 KiB blocks, so the unwritten pages stay unmapped, where glibc's malloc
/// mixes them with everything else and ends up with all of them resident (BENCHMARKS.md, target 6).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match fleetlet_manager::run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line, so a supervisor's log shows the whole reason.
            eprintln!("fleetlet-manager: error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
