//! A TCP proxy for the network-fault tests: it adds a delay to every chunk it forwards, and can
//! cut a connection in the middle of the server's answer (the link dying mid-response), which
//! nftables alone cannot aim at. It knows nothing of HTTP: it counts bytes.
//!
//! The faults are switched at run time through [`ProxyControl`]: a delay, and a number of the next
//! connections to cut, each after a random number of answer bytes (1 to 200, counted over the
//! connection's answers, so a cut may fall in a later answer of a kept-alive connection).
//!
//! Its accepted connections get the manager's own retransmission settings
//! (`fleetlet_manager::server::tcp::tune`), as README asks of a proxy in front of a manager: the
//! proxy, not the manager, is then the one resending an answer a partition dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The proxy's switches and counters, shared with its tasks.
#[derive(Debug, Default)]
pub struct ProxyControl {
    /// Milliseconds to wait before forwarding each chunk, in both directions.
    pub delay_ms: AtomicU64,
    /// How many of the next new connections get their answer cut short.
    pub cut_next: AtomicU64,
    /// Connections accepted so far.
    pub connections: AtomicU64,
    /// Connections cut in the middle of an answer so far.
    pub cuts: AtomicU64,
}

/// A running proxy; its tasks stop when the value is dropped.
#[derive(Debug)]
pub struct Proxy {
    pub address: SocketAddr,
    pub control: Arc<ProxyControl>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` (port 0 for any) and forwards every connection to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let control = Arc::new(ProxyControl::default());
        let shared = Arc::clone(&control);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                fleetlet_manager::server::tcp::tune(&client);
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let cut = shared
                    .cut_next
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                let cut_at = cut.then(|| rand::rng().random_range(1..=200usize));
                connections.spawn(relay(client, upstream, cut_at, Arc::clone(&shared)));
                // Reap finished relays so the set does not grow for the proxy's whole life.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            address,
            control,
            task,
        })
    }

    pub fn set_delay(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.control.delay_ms.store(millis, Ordering::Relaxed);
    }

    /// Cuts the answers of the next `connections` new connections.
    pub fn cut_next(&self, connections: u64) {
        self.control.cut_next.store(connections, Ordering::Relaxed);
    }

    pub fn cuts(&self) -> u64 {
        self.control.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which aborts every relay.
        self.task.abort();
    }
}

/// Forwards one connection both ways until either side closes, or until `cut_at` bytes of the
/// answer have gone through, when both sides are dropped at once.
async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    cut_at: Option<usize>,
    control: Arc<ProxyControl>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let request = pump(client_read, server_write, None, &control);
    let answer = pump(server_read, client_write, cut_at, &control);
    tokio::select! {
        _ = request => {}
        cut = answer => if cut { control.cuts.fetch_add(1, Ordering::Relaxed); },
    }
}

/// Copies `from` to `to`, each chunk after the current delay; stops at end of stream or an error
/// (false), or after `limit` bytes (true: the connection is to be cut).
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    limit: Option<usize>,
    control: &ProxyControl,
) -> bool {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut sent = 0usize;
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => read,
        };
        let delay = control.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let take = limit.map_or(read, |limit| read.min(limit - sent));
        if to.write_all(&buffer[..take]).await.is_err() {
            return false;
        }
        sent += take;
        if limit.is_some_and(|limit| sent >= limit) {
            let _ = to.flush().await;
            return true;
        }
    }
}
