//! Graceful shutdown: one trigger, many listeners.
//!
//! SIGTERM or SIGINT trigger it; the engine then stops taking new work, lets in-flight applies
//! finish, flushes the store and returns. Everything that waits (long-polls, sleeps, backoffs)
//! also waits on the signal so that nothing holds the process past its drain deadline.

use std::time::Duration;

use tokio::sync::watch;

/// After a termination signal, the agent gets this long to finish in-flight work and flush;
/// then the binary exits anyway, and the next start converges what was cut short.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(4500);

/// The side that triggers shutdown.
#[derive(Debug)]
pub struct Shutdown {
    sender: watch::Sender<bool>,
}

/// The side that observes shutdown. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    receiver: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> Self {
        let (sender, _) = watch::channel(false);
        Self { sender }
    }

    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            receiver: self.sender.subscribe(),
        }
    }

    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownSignal {
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown is triggered (at once if it already was). If the trigger side is
    /// dropped without triggering, this never resolves: nobody can ask for shutdown any more.
    pub async fn triggered(&self) {
        let mut receiver = self.receiver.clone();
        if receiver.wait_for(|triggered| *triggered).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for SIGTERM or SIGINT. An error means the signal handlers could not be installed.
pub async fn wait_for_termination_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests;
