//! Serving an axum router over HTTP/1.1, plain or with TLS (rustls), with graceful shutdown:
//! when asked to stop, the listener closes, idle connections close, and requests in flight run
//! to completion.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
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

/// How long a connection may take to send a request's head, or wait idle for the next one.
const HEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// Connections being refused at once (each answered 503 and closed); past this, more are
/// closed unanswered.
const REFUSING_AT_ONCE: usize = 64;

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
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key)
            .map_err(|e| pem_error(key, e.to_string()))?
            .permissions()
            .mode();
        // (Readable by a group is common: a group of services that share certificates.)
        if mode & 0o004 != 0 {
            return Err(pem_error(
                key,
                format!(
                    "the private key is readable by every user (mode {:o}); `chmod 600` (or 640 for a group) it",
                    mode & 0o777
                ),
            ));
        }
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
    /// Set once to stop, with how long requests in flight may still run.
    stop: watch::Sender<Option<Duration>>,
    /// The accept loop (taken by [`HttpServer::shut_down`]; aborted if the server is dropped
    /// without one, as on a start that fails after the listener began).
    task: Option<JoinHandle<()>>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl HttpServer {
    /// Serves `router` on `listener` until [`HttpServer::shut_down`], each client address
    /// holding at most a quarter of the connections served at once.
    pub fn start(
        listener: TcpListener,
        router: axum::Router,
        tls: Option<TlsAcceptor>,
        name: &'static str,
    ) -> std::io::Result<HttpServer> {
        Self::start_with_client_cap(listener, router, tls, name, None)
    }

    /// [`HttpServer::start`] with `per_client` connections at most for each client address
    /// (None: a quarter of those served at once; 0: no cap).
    pub fn start_with_client_cap(
        listener: TcpListener,
        router: axum::Router,
        tls: Option<TlsAcceptor>,
        name: &'static str,
        per_client: Option<usize>,
    ) -> std::io::Result<HttpServer> {
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(None);
        let task = tokio::spawn(accept_loop(
            listener, router, tls, stopped, name, per_client,
        ));
        Ok(HttpServer {
            local_addr,
            stop,
            task: Some(task),
        })
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish (up to `grace`), then returns once
    /// every connection's task has ended (those still running after `grace` are cancelled
    /// first): nothing a request does runs on after this returns.
    pub async fn shut_down(mut self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!("the listener's task failed: {e}");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<TlsAcceptor>,
    mut stopped: watch::Receiver<Option<Duration>>,
    name: &'static str,
    per_client: Option<usize>,
) {
    let graceful = GracefulShutdown::new();
    // Connections served at once (file descriptors are shared with the index and the fabric).
    let cap = crate::fd_limit::connection_cap();
    let connections = Arc::new(Semaphore::new(cap));
    let per_client = PerClient::new(match per_client {
        None => per_client_cap(cap),
        Some(0) => usize::MAX,
        Some(n) => n,
    });
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    // The connections' tasks: cancelled, and waited for, when a shutdown's grace period ends
    // with requests still running.
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
        let Some(client_slot) = per_client.take(peer.ip()) else {
            // One client holding its share of the connections gets no more: it cannot take
            // every connection from the others.
            drop(slot);
            if name == S3_LISTENER {
                CONNECTIONS_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if tls.is_none()
                && let Ok(permit) = refusing.clone().try_acquire_owned()
            {
                tasks.spawn(async move {
                    refuse(stream).await;
                    drop(permit);
                });
            }
            continue;
        };
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
            drop(client_slot);
            drop(slot);
        });
    }
    drop(listener);
    drop(router);
    let grace = stopped.borrow().unwrap_or_default();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("{name}: requests still running after {grace:?}; closing their connections");
        tasks.shutdown().await;
    }
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
        .header_read_timeout(HEADER_TIMEOUT)
        // Bodies are streamed on in chunks of at most this much per connection: memory
        // stays bounded with many concurrent uploads.
        .max_buf_size(READ_BUFFER)
        // As many header lines as the signature check takes (hyper's default, 100, refuses
        // a PUT with some 90 metadata entries, which S3 takes).
        .max_headers(s3api::auth::MAX_SIGNED_HEADERS)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    watcher.watch(connection).await
}

/// Most connections one client address may hold of a listener's `cap`: a quarter, so that
/// several clients are needed to take them all (at least 16).
fn per_client_cap(cap: usize) -> usize {
    (cap / 4).max(16)
}

/// The client an address stands for, as connections are counted: an IPv4 address (also one
/// an IPv6 socket shows mapped), or an IPv6 /64 — one host is given a whole /64 and may use
/// any address in it, so counting addresses would give it a fresh share for each.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Each client's connections, counted against a cap.
struct PerClient {
    cap: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection of a client, counted until dropped.
struct ClientSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerClient {
    fn new(cap: usize) -> PerClient {
        PerClient {
            cap,
            counts: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip` (counted as its client's: see [`client_of`]),
    /// or None if that client holds its cap already.
    fn take(&self, ip: IpAddr) -> Option<ClientSlot> {
        let ip = client_of(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            ip,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The name the S3 listener is started with: its refusals are the ones counted in
/// [`CONNECTIONS_REFUSED`] (not the admin port's).
pub const S3_LISTENER: &str = "s3";

/// Connections to the S3 port refused for their client's share of the connections, since the
/// start (a metric: those requests never reach the S3 service, which counts the others).
pub static CONNECTIONS_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Answers a connection refused for its client's connection count with 503 SlowDown (which
/// SDKs retry after a pause), reads what the client had sent for a moment (closing with unread
/// bytes would reset the connection before the answer is read), and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request_id = format!(
        "{:016X}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    );
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Too many connections from this client; please reduce your connection count.</Message><RequestId>{request_id}</RequestId></Error>"
    );
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nx-amz-request-id: {request_id}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answered = async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 16 << 10];
        let mut drained = 0;
        while drained < (256 << 10) {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answered).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_cap_and_gets_slots_back() {
        let clients = PerClient::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = clients.take(a).unwrap();
        let _second = clients.take(a).unwrap();
        assert!(clients.take(a).is_none());
        assert!(clients.take(b).is_some(), "another client is not held back");
        drop(first);
        assert!(clients.take(a).is_some());
        assert_eq!(per_client_cap(4096), 1024);
        assert_eq!(per_client_cap(64), 16);
    }

    /// Addresses of one IPv6 /64 are one client; an IPv4 address is the same client whether
    /// it comes plain or mapped into IPv6.
    #[test]
    fn a_client_is_an_ipv4_address_or_an_ipv6_slash_64() {
        let clients = PerClient::new(2);
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let _one = clients.take(ip("2001:db8:1:2::1")).unwrap();
        let _two = clients.take(ip("2001:db8:1:2:ffff:1:2:3")).unwrap();
        assert!(clients.take(ip("2001:db8:1:2::99")).is_none(), "same /64");
        assert!(clients.take(ip("2001:db8:1:3::1")).is_some(), "another /64");
        let _mapped = clients.take(ip("::ffff:10.1.2.3")).unwrap();
        let _plain = clients.take(ip("10.1.2.3")).unwrap();
        assert!(clients.take(ip("10.1.2.3")).is_none(), "one IPv4 client");
        assert!(clients.take(ip("10.1.2.4")).is_some());
    }

    /// The per-client cap as configured: one connection each turns a second one from the same
    /// address away; no cap (behind a load balancer) serves both. Only the S3 port's refusals
    /// are counted (the metric says S3).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_per_client_cap_is_as_configured() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn status(stream: &mut tokio::net::TcpStream) -> String {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        }
        for (cap, second, name, counted) in [
            (Some(1), "503", S3_LISTENER, 1),
            (Some(1), "503", "admin", 0),
            (Some(0), "200", S3_LISTENER, 0),
        ] {
            let before = CONNECTIONS_REFUSED.load(std::sync::atomic::Ordering::Relaxed);
            let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let server =
                HttpServer::start_with_client_cap(listener, router, None, name, cap).unwrap();
            let mut one = tokio::net::TcpStream::connect(server.local_addr())
                .await
                .unwrap();
            assert!(status(&mut one).await.contains("200"));
            let mut two = tokio::net::TcpStream::connect(server.local_addr())
                .await
                .unwrap();
            let answer = status(&mut two).await;
            assert!(answer.contains(second), "cap {cap:?}: {answer}");
            let refused = CONNECTIONS_REFUSED.load(std::sync::atomic::Ordering::Relaxed) - before;
            assert_eq!(refused, counted, "{name} cap {cap:?}");
            drop((one, two));
            server.shut_down(Duration::from_millis(100)).await;
        }
    }

    /// A server dropped without a shutdown (a start that failed after its listener began)
    /// stops serving: its port does not stay taken.
    #[tokio::test]
    async fn a_dropped_server_stops_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = HttpServer::start(listener, axum::Router::new(), None, "test").unwrap();
        let address = server.local_addr();
        drop(server);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(address).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still accepting after the drop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A shutdown whose grace period ends with a request still running cancels it, and has
    /// waited for it when it returns: nothing the request does runs on after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_returns_after_the_requests_it_cut_short_have_ended() {
        struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                // Slow to end, as a request winding down may be.
                std::thread::sleep(Duration::from_millis(200));
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Arc::new(tokio::sync::Notify::new());
        let router = {
            let (ended, started) = (ended.clone(), started.clone());
            axum::Router::new().route(
                "/slow",
                axum::routing::get(move || {
                    let guard = SetOnDrop(ended.clone());
                    let started = started.clone();
                    async move {
                        started.notify_one();
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        drop(guard);
                        "done"
                    }
                }),
            )
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = HttpServer::start(listener, router, None, "test").unwrap();
        let address = server.local_addr();
        let client = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            stream
                .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
        started.notified().await;
        server.shut_down(Duration::from_millis(100)).await;
        assert!(
            ended.load(std::sync::atomic::Ordering::SeqCst),
            "the request was still running when the shutdown returned"
        );
        client.await.unwrap();
    }
}
