//! Serving an axum router over HTTP/1.1, plain or with TLS (rustls), with graceful shutdown:
//! when asked to stop, the listener closes, idle connections close, and requests in flight run
//! to completion.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::write_stall::WriteStallLimit;

/// Largest read buffer of one HTTP connection.
const READ_BUFFER: usize = 128 << 10;

/// How long a response may wait for its client to read before the connection is cut (a client
/// that stops reading would otherwise hold its share of the read budget forever).
const WRITE_STALL_LIMIT: Duration = Duration::from_secs(60);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the certificate and key.
    #[error("certificate and key do not form a usable TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Loads a PEM certificate chain and private key into a TLS acceptor offering HTTP/1.1.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let pem_error = |path: &Path, problem: String| TlsError::Pem {
        path: path.display().to_string(),
        problem,
    };
    let cert_text = std::fs::read(cert).map_err(|e| pem_error(cert, e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut cert_text.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(cert, "holds no certificate".into()));
    }
    let key_text = std::fs::read(key).map_err(|e| pem_error(key, e.to_string()))?;
    let private_key = rustls_pemfile::private_key(&mut key_text.as_slice())
        .map_err(|e| pem_error(key, format!("not a PEM private key: {e}")))?
        .ok_or_else(|| pem_error(key, "holds no private key".into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, private_key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A running HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Serves `router` on `listener` until [`HttpServer::shut_down`].
    pub fn start(
        listener: TcpListener,
        router: axum::Router,
        tls: Option<TlsAcceptor>,
        name: &'static str,
    ) -> std::io::Result<HttpServer> {
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, router, tls, stopped, name));
        Ok(HttpServer {
            local_addr,
            stop,
            task,
        })
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish (up to `grace`), then returns.
    pub async fn shut_down(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            tracing::warn!("requests still running after {grace:?}; closing their connections");
            self.task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    mut stopped: watch::Receiver<bool>,
    name: &'static str,
) {
    let graceful = GracefulShutdown::new();
    // Connections served at once (file descriptors are shared with the index and the fabric).
    let connections = Arc::new(Semaphore::new(crate::fd_limit::connection_cap()));
    // The connections' tasks: dropped (so aborted) with this task, when a shutdown's grace
    // period ends with requests still running.
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        // At the limit, new connections wait in the listen backlog (a stop is still heard).
        let slot = tokio::select! {
            slot = connections.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stopped.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("{name}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = WriteStallLimit::new(stream, WRITE_STALL_LIMIT);
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tasks.spawn(async move {
            let result = match tls {
                None => serve_connection(stream, service, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls_stream)) => serve_connection(tls_stream, service, watcher).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    drop(router);
    graceful.shutdown().await;
}

async fn serve_connection<S>(
    stream: S,
    service: TowerToHyperService<axum::Router>,
    watcher: hyper_util::server::graceful::Watcher,
) -> Result<(), hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60))
        // Bodies are streamed on in chunks of at most this much per connection: memory
        // stays bounded with many concurrent uploads.
        .max_buf_size(READ_BUFFER)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    watcher.watch(connection).await
}
