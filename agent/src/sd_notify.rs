//! The systemd notify protocol, written by hand: a datagram to `$NOTIFY_SOCKET` saying
//! `READY=1`, `STOPPING=1` or `WATCHDOG=1`. No crate is needed for one `sendto`.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use crate::shutdown::ShutdownSignal;

/// Where and how often to tell systemd how the agent is doing.
#[derive(Debug, Clone, Default)]
pub struct SystemdNotifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
}

impl SystemdNotifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Self { socket, watchdog }
    }

    /// Sends one state line; failures are logged, never fatal: the agent works without systemd.
    pub fn notify(&self, state: &str) {
        let Some(socket) = &self.socket else { return };
        if let Err(error) = send(socket, state) {
            tracing::warn!(%error, socket = %socket.display(), "could not notify systemd");
        }
    }

    /// Pings the watchdog at half its interval until shutdown.
    pub async fn run_watchdog(self, shutdown: ShutdownSignal) {
        let Some(interval) = self.watchdog else {
            return;
        };
        let mut ticker = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                () = shutdown.triggered() => return,
                _ = ticker.tick() => self.notify("WATCHDOG=1"),
            }
        }
    }
}

fn send(socket: &std::path::Path, state: &str) -> std::io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    let text = socket.as_os_str().to_string_lossy();
    // A leading '@' names a socket in the abstract namespace (Linux only).
    if let Some(name) = text.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        datagram.send_to_addr(state.as_bytes(), &address)?;
    } else {
        datagram.send_to(state.as_bytes(), socket)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
