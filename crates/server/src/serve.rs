//! Serving the router over plain HTTP or TLS (rustls, ring provider), with the
//! connection limits of `limits`.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use crate::limits::Limits;
use crate::limits::{PerAddress, TimeoutBody};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate {path}: {message}")]
    Cert { path: String, message: String },
    #[error("TLS private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS certificate {cert} with key {key}: {message}")]
    Config { cert: String, key: String, message: String },
}

pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert { path: cert.display().to_string(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: cert.display().to_string(), message: "no certificate in PEM file".into() });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: match e {
            pem::Error::NoItemsFound => "no private key in PEM file".into(),
            e => e.to_string(),
        },
    })?;
    // rustls checks here that the key belongs to the certificate.
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
        .map_err(|e| TlsError::Config {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            message: match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    "the private key does not belong to the certificate".into()
                }
                e => e.to_string(),
            },
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Plain HTTP on a non-loopback address exposes tokens and credentials to the network.
pub fn warn_if_plain_public(addr: SocketAddr, tls: bool) {
    if !tls && !addr.ip().is_loopback() {
        let line = "!".repeat(78);
        tracing::warn!("{line}");
        tracing::warn!("SERVING PLAIN HTTP ON {addr}, A NON-LOOPBACK ADDRESS: API tokens and machine");
        tracing::warn!("credentials cross the network unencrypted. Use --tls-cert and --tls-key.");
        tracing::warn!("{line}");
    }
}

/// Serves until `shutdown` resolves, with the limits of this process (see `limits`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, tls, app, shutdown, Limits::for_process(16)).await
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
/// Connections are served by our own loop rather than `axum::serve`, which has
/// neither timeouts nor a cap: idle sockets would hold descriptors forever, and
/// once the open-file limit is reached no one else gets in.
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = PerAddress::default();
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper starts this timer whenever it waits for a request's head: on a new
    // connection and between requests of a kept-alive one, so it is the idle timeout too.
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    tracing::info!(
        max_connections = limits.max_connections,
        max_per_address = limits.max_per_address,
        header_timeout = ?limits.header_timeout,
        "connection limits"
    );
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.map_err(io::Error::other)?,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = accept(&listener, &slots, limits.max_connections) => accepted,
            () = &mut shutdown => break,
        };
        let Some(address_slot) = per_address.take(peer.ip(), limits.max_per_address) else {
            tokio::spawn(refuse_busy_address(tcp, peer, tls.is_some(), slot));
            continue;
        };
        let conn = Conn { http: http.clone(), app: app.clone(), body_timeout: limits.body_timeout };
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            conn.run(tcp, peer, tls, watcher).await;
            drop((slot, address_slot));
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

static CAP_WARNED: AtomicI64 = AtomicI64::new(0);
static ACCEPT_WARNED: AtomicI64 = AtomicI64::new(0);
static ADDRESS_WARNED: AtomicI64 = AtomicI64::new(0);

/// True at most once every 10 s per `last`: a flood of connections must not
/// become a flood of log lines.
fn once_in_a_while(last: &AtomicI64) -> bool {
    let now = crate::util::now();
    let before = last.load(Ordering::Relaxed);
    now - before >= 10 && last.compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// The next connection. A failed accept (out of descriptors after all, or the
/// client gave up in the queue) is logged and retried after a pause, never fatal.
async fn accept(listener: &TcpListener, slots: &Semaphore, cap: usize) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if slots.available_permits() == 0 && once_in_a_while(&CAP_WARNED) {
                    tracing::warn!(cap, "connection cap reached: new connections wait until one closes");
                }
                return (tcp, peer);
            }
            Err(e) => {
                if once_in_a_while(&ACCEPT_WARNED) {
                    tracing::warn!(error = %e, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection from an address that already holds its share: a plain HTTP
/// client is told so (503, JSON like every refusal) and the connection closed;
/// a TLS one is closed (an answer would need a handshake first).
async fn refuse_busy_address(mut tcp: TcpStream, peer: SocketAddr, tls: bool, slot: OwnedSemaphorePermit) {
    if once_in_a_while(&ADDRESS_WARNED) {
        tracing::warn!(%peer, "too many connections from one address: refused (logged at most every 10 s)");
    }
    if !tls {
        let body = r#"{"error":"too many connections from this address; try again later"}"#;
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // Bounded: a client that does not read must not hold this task.
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(response.as_bytes())).await;
    }
    drop((tcp, slot));
}

/// What serving one connection needs.
struct Conn {
    http: hyper::server::conn::http1::Builder,
    app: Router,
    body_timeout: Duration,
}

impl Conn {
    async fn run(self, tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>, watcher: Watcher) {
        let _ = tcp.set_nodelay(true);
        match tls {
            None => self.serve(tcp, peer, watcher).await,
            // The handshake has its own deadline: a client that never finishes it
            // holds its slot no longer than one that never sends a request.
            Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => self.serve(stream, peer, watcher).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            },
        }
    }

    async fn serve<S>(self, stream: S, peer: SocketAddr, watcher: Watcher)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Conn { http, app, body_timeout } = self;
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let req = req.map(|body| axum::body::Body::new(TimeoutBody::new(body, body_timeout)));
            tower_service::Service::call(&mut app.clone(), req)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(connection).await {
            // Timeouts and clients that go away mid-request end up here; not the server's fault.
            tracing::debug!(%peer, error = %e, "connection ended");
        }
    }
}
