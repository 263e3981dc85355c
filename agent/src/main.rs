//! The `fleetlet-agent` binary: parses the configuration, sets up logging, runs the agent, and
//! drains it on SIGTERM/SIGINT within the 5 s systemd and operators expect.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use fleetlet_agent::config::Config;
use fleetlet_agent::shutdown::{DRAIN_TIMEOUT, Shutdown, wait_for_termination_signal};
use fleetlet_agent::status::is_converged;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Async worker threads. The agent's async work is waiting (long-polls, timers, child
/// processes); file work runs on tokio's blocking pool. Two workers keep a slow store flush
/// from stalling the watchdog or the long-poll, and, unlike one per core, keep the thread
/// count (each thread a stack) the same on a 2-core and an 8-core device. All threads share
/// one malloc arena ([`fleetlet_agent::memory`]).
const WORKER_THREADS: usize = 2;
/// The blocking pool (file and store work) grows to at most this many threads per resource
/// applied at once (`FLEETLET_CONCURRENCY`), and at least [`MIN_BLOCKING_THREADS`]. Tokio's
/// default is 512, and since a finished blocking thread is not always back in the pool before
/// the next apply asks for one, a pass of short applies at concurrency 8 kept 40 to 60 threads
/// alive, each with its stack and its share of malloc arenas. The headroom is for the
/// session-storage summaries that run beside the applies.
const BLOCKING_THREADS_PER_APPLY: usize = 2;
const MIN_BLOCKING_THREADS: usize = 16;
/// Idle blocking-pool threads exit after this long instead of tokio's 10 s, so the threads a
/// pass's applies needed do not stay between passes.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    // Before any thread exists, so that no second malloc arena is ever created.
    fleetlet_agent::memory::use_one_malloc_arena();
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            say(&format!("fleetlet-agent: {error}"));
            return ExitCode::from(2);
        }
    };
    // Logs go to stderr so that `--once` can print the status, and only it, on stdout. A log
    // line that cannot be written (stderr on a full disk, a dead pipe) is dropped: losing a log
    // line must never stop the agent, and tracing's own report of the failure would panic.
    tracing_subscriber::fmt()
        .with_writer(LossyStderr)
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(
            (BLOCKING_THREADS_PER_APPLY * config.concurrency).max(MIN_BLOCKING_THREADS),
        )
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            say(&format!(
                "fleetlet-agent: could not start the async runtime: {error}"
            ));
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async_main(config));
    // Blocking file writes still running past the drain deadline are abandoned: each one is
    // atomic, so a cut-off write leaves the old file in place.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

async fn async_main(config: Config) -> ExitCode {
    if config.once {
        return match fleetlet_agent::run_once(config).await {
            Ok(status) => {
                let printed = serde_json::to_string_pretty(&status)
                    .map_err(std::io::Error::other)
                    .and_then(|json| writeln!(std::io::stdout().lock(), "{json}"));
                if let Err(error) = printed {
                    tracing::error!(%error, "could not print the status");
                }
                if is_converged(&status) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                tracing::error!(%error, "agent failed");
                ExitCode::from(2)
            }
        };
    }
    let shutdown = Shutdown::new();
    let mut agent = tokio::spawn(fleetlet_agent::run(config, shutdown.signal()));
    let outcome = tokio::select! {
        outcome = &mut agent => outcome,
        signal = wait_for_termination_signal() => {
            match signal {
                Ok(name) => tracing::info!(signal = name, "shutting down"),
                Err(error) => tracing::error!(%error, "could not listen for signals; shutting down"),
            }
            shutdown.trigger();
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut agent).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::warn!("in-flight work did not finish in time; exiting anyway");
                    agent.abort();
                    return ExitCode::SUCCESS;
                }
            }
        }
    };
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            tracing::error!(%error, "agent failed");
            ExitCode::FAILURE
        }
        Err(join_error) => {
            tracing::error!(error = %join_error, "agent task failed");
            ExitCode::FAILURE
        }
    }
}

/// Writes a line to stderr if it can; `eprintln!` would panic when stderr cannot be written.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Stderr for the log, dropping what cannot be written instead of failing (see `main`).
#[derive(Debug, Clone, Copy)]
struct LossyStderr;

impl<'a> MakeWriter<'a> for LossyStderr {
    type Writer = LossyWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LossyWriter
    }
}

/// One log line's writer: every write "succeeds"; a failed one is dropped.
#[derive(Debug)]
struct LossyWriter;

impl Write for LossyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
