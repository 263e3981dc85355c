//! The connection loop: plain HTTP or HTTPS (rustls), with the limits that `axum::serve` cannot
//! set: the size of a request's header block, and how long a client may take to finish its TLS
//! handshake or send its headers. A slow or silent client costs one task and a socket for at most
//! those timeouts, and never delays another client's handshake. Each connection's TCP
//! retransmission is tuned so that an answer lost in a partition arrives soon after it heals
//! (`tcp.rs`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1::Builder as Http1Builder;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub mod tcp;

/// The request line and headers together may not exceed this; hyper answers 431 beyond it.
/// Real clients send well under 8 KiB; 64 KiB leaves room for long bearer tokens and proxies.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// At most this many header fields per request.
pub const MAX_HEADERS: usize = 64;
/// A client must have sent its complete headers this long after it started a request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake must finish within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS certificate or key cannot be used. Paths are named; key material never is.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate file {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the TLS certificate file {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read the TLS key file {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the TLS acceptor from a PEM certificate chain (leaf first) and a PEM private key.
pub fn tls_acceptor(certificate: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate {
            path: certificate.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: certificate.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections to
/// finish their current request (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = Http1Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let graceful = GracefulShutdown::new();
    let mut warned_uncapped = false;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                // Usually out of file descriptors: pausing lets other connections close.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tuned = tcp::tune(&stream);
        if !tuned.interval_capped && !warned_uncapped {
            warned_uncapped = true;
            tracing::warn!(
                ?tuned,
                "this kernel cannot cap TCP retransmission intervals (TCP_RTO_MAX_MS, Linux 6.15): \
                 an answer lost in a network partition may reach its agent seconds to minutes \
                 after the link heals"
            );
        }
        let service = TowerToHyperService::new(app.clone());
        // One task per connection, and a plain connection's task is only as large as a plain
        // connection: a single future for both cases would be sized for the TLS stream (its
        // rustls state is inline), and every held long-poll would carry that size.
        match &tls {
            Some(acceptor) => {
                tokio::spawn(serve_tls(
                    acceptor.clone(),
                    stream,
                    peer,
                    http.clone(),
                    service,
                    graceful.watcher(),
                ));
            }
            None => {
                let connection = http.serve_connection(TokioIo::new(stream), service);
                let watched = graceful.watcher().watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = watched.await {
                        log_connection_error(peer, &error);
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One HTTPS connection: the handshake (bounded by [`TLS_HANDSHAKE_TIMEOUT`]), then HTTP.
async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    http: Http1Builder,
    service: TowerToHyperService<Router>,
    watcher: Watcher,
) {
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let connection = http.serve_connection(TokioIo::new(stream), service);
    if let Err(error) = watcher.watch(connection).await {
        log_connection_error(peer, &error);
    }
}

fn log_connection_error(peer: SocketAddr, error: &hyper::Error) {
    // Clients that hang up or time out are routine; nothing here is the server's fault.
    tracing::debug!(%peer, %error, "connection ended with an error");
}
