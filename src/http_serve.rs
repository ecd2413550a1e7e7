//! The one accept path of the HTTP and Virtual Y listeners, plain or TLS (rustls, reloaded on SIGHUP
//! through the same [`TlsConfig`] as TURNS).
//!
//! Per connection, in order:
//! 1. **Caps at accept.** A global cap (`[http] max_connections`, one count shared by both listeners) and a per-client
//!    cap (`max_connections_per_ip`, keyed by [`IpKey`] of the TCP peer: an IPv4 address or an IPv6 /64). A peer in
//!    `trusted_proxies` carries many clients, so it counts only against the global cap. Over a cap the socket is
//!    closed at once, before any byte is read, and `duet_http_connections_refused_total{listener,reason}` counts it.
//!    A slot is held for the whole life of the connection, including an upgraded WebSocket.
//! 2. `TCP_NODELAY` (see the comment in [`serve`]: Nagle delayed relayed signaling frames).
//! 3. With TLS, the handshake must finish within `header_read_timeout`.
//! 4. HTTP/1.1 by hyper with a timer: the request head must arrive within `header_read_timeout` (else hyper closes
//!    the connection), and hyper starts that timer again as soon as a response is written, so a
//!    kept-alive connection idle between requests is closed after the same time. A WebSocket upgrade is an ordinary
//!    request until the `101`, so it has the same deadline. The request head (request line and headers) is capped at
//!    [`MAX_HEAD_BYTES`] and the read buffer at the same size: a longer head, complete or not, gets
//!    `431 Request Header Fields Too Large` and the connection closes.
//! 5. The router sees the TCP peer as `ConnectInfo<SocketAddr>`, as with `axum::serve`. A write to the client that
//!    makes no progress for `request_timeout` fails and closes the connection (a client that stops reading);
//!    the router itself answers 408 to a request not handled within `request_timeout` (`daemon`).
//! 6. On `shutdown` the listener stops accepting, each connection finishes its request in flight
//!    (hyper's graceful shutdown) for at most [`SHUTDOWN_GRACE`], then closes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use duet_relay::policy::IpNet;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::client_ip::{IpKey, is_trusted};
use crate::config::HttpLimits;
use crate::metrics::Metrics;
use crate::relay_io::tls::TlsConfig;

/// Largest request head (request line and headers), bytes, and largest read buffer of one connection. Browsers send
/// 1-4 KiB; nginx's default `large_client_header_buffers` is 4 x 8 KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Longest wait for a connection's request in flight after `shutdown`.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The connection caps shared by every listener of the daemon that serves the public router.
pub struct ConnectionLimits {
    limits: HttpLimits,
    trusted: Vec<IpNet>,
    global: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpKey, u32>>,
    metrics: Metrics,
}

/// A connection's place under the caps; released when dropped.
pub struct Admission {
    _global: OwnedSemaphorePermit,
    per_ip: Option<(Arc<ConnectionLimits>, IpKey)>,
    open: prometheus::IntGauge,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.open.dec();
        if let Some((limits, key)) = &self.per_ip {
            let mut map = limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

/// Why a connection was refused at accept (the `reason` label of the refusal metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` connections are open.
    Global,
    /// `max_connections_per_ip` connections from this client key are open.
    PerIp,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Global => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

impl ConnectionLimits {
    /// Caps from `[http]`; `trusted` are the `trusted_proxies`, exempt from the per-IP cap.
    pub fn new(limits: HttpLimits, trusted: Vec<IpNet>, metrics: Metrics) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            global: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            trusted,
            per_ip: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Takes a slot for a connection from `peer` on `listener`, or counts and returns the refusal.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, listener: &str) -> Result<Admission, Refusal> {
        let r = self.try_admit(peer, listener);
        if let Err(refusal) = r {
            self.metrics.http_connections_refused.with_label_values(&[listener, refusal.label()]).inc();
        }
        r
    }

    fn try_admit(self: &Arc<Self>, peer: IpAddr, listener: &str) -> Result<Admission, Refusal> {
        let global = self.global.clone().try_acquire_owned().map_err(|_| Refusal::Global)?;
        let per_ip = if is_trusted(&self.trusted, peer) {
            None
        } else {
            let key = IpKey::of(peer);
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key).or_insert(0);
            if *n >= self.limits.max_connections_per_ip {
                return Err(Refusal::PerIp);
            }
            *n += 1;
            Some((self.clone(), key))
        };
        let open = self.metrics.http_connections.with_label_values(&[listener]);
        open.inc();
        Ok(Admission { _global: global, per_ip, open })
    }
}

/// Serves `router` on `listener` (HTTPS with `tls`, plain HTTP otherwise) under `limits` until `shutdown`; every
/// connection runs as a task of `tasks`. `name` labels logs and metrics (`http`, `vy`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsConfig>,
    router: Router,
    limits: Arc<ConnectionLimits>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    name: &'static str,
) {
    let timeout = limits.limits.header_read_timeout;
    let write_timeout = limits.limits.request_timeout;
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, listener = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let admission = match limits.admit(remote.ip(), name) {
            Ok(a) => a,
            Err(refusal) => {
                tracing::debug!(%remote, listener = name, ?refusal, "connection refused by a cap");
                drop(tcp);
                continue;
            }
        };
        // TCP_NODELAY: without it 4-7 % of relayed signaling frames waited 1-2 ms for Nagle (p99 1.39 ms at 5 000
        // signals/s, 0.36 ms with it; benches/signal_vs_peerjs.sh). peerjs-server's `ws` sets it too.
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        let acceptor = tls.as_ref().map(TlsConfig::acceptor);
        tasks.spawn(async move {
            let _admission = admission;
            match acceptor {
                None => {
                    serve_connection(with_write_timeout(tcp, write_timeout), remote, router, timeout, shutdown).await
                }
                Some(acceptor) => {
                    let stream = tokio::select! {
                        r = tokio::time::timeout(timeout, acceptor.accept(tcp)) => match r {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                            Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
                        },
                        _ = shutdown.cancelled() => return,
                    };
                    serve_connection(with_write_timeout(stream, write_timeout), remote, router, timeout, shutdown).await
                }
            }
        });
    }
}

/// `io` whose writes fail when they make no progress for `timeout` (tokio-io-timeout): hyper has no write timeout of
/// its own, so without this a client that sends requests (or holds a WebSocket) and never reads would hold its
/// connection forever once its TCP window is full. Reads have no timeout here (an idle WebSocket is fine; hyper's
/// header timer bounds the wait for a request).
fn with_write_timeout<I: AsyncRead + AsyncWrite>(io: I, timeout: Duration) -> std::pin::Pin<Box<TimeoutStream<I>>> {
    let mut io = TimeoutStream::new(io);
    io.set_write_timeout(Some(timeout));
    Box::pin(io)
}

/// HTTP/1.1 with upgrades on one connection (module docs, steps 4-6).
async fn serve_connection<I>(io: I, remote: SocketAddr, router: Router, timeout: Duration, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(remote));
        req
    }));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%remote, error = %e, "http connection") },
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(global: usize, per_ip: u32, trusted: &[&str]) -> Arc<ConnectionLimits> {
        ConnectionLimits::new(
            HttpLimits {
                max_connections: global,
                max_connections_per_ip: per_ip,
                header_read_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(30),
            },
            trusted.iter().map(|s| s.parse().unwrap()).collect(),
            Metrics::new(),
        )
    }

    #[test]
    fn per_ip_cap_keys_by_ip_key_and_releases_on_drop() {
        let l = limits(100, 2, &[]);
        let a = l.admit("2001:db8::1".parse().unwrap(), "http").unwrap();
        let _b = l.admit("2001:db8::2".parse().unwrap(), "http").unwrap();
        // Same /64: refused; another /64 and another IPv4 address: admitted.
        assert_eq!(l.admit("2001:db8::3".parse().unwrap(), "http").err(), Some(Refusal::PerIp));
        let _c = l.admit("2001:db8:0:1::1".parse().unwrap(), "http").unwrap();
        let _d = l.admit("192.0.2.1".parse().unwrap(), "vy").unwrap();
        drop(a);
        let _e = l.admit("2001:db8::3".parse().unwrap(), "http").unwrap();
        let text = l.metrics.render();
        assert!(
            text.contains("duet_http_connections_refused_total{listener=\"http\",reason=\"max_connections_per_ip\"} 1"),
            "{text}"
        );
        assert!(text.contains("duet_http_connections{listener=\"http\"} 3"), "{text}");
    }

    #[test]
    fn trusted_proxies_count_only_against_the_global_cap() {
        let l = limits(3, 1, &["10.0.0.0/8"]);
        let held: Vec<_> = (0..3).map(|_| l.admit("10.0.0.2".parse().unwrap(), "http").unwrap()).collect();
        assert_eq!(l.admit("10.0.0.2".parse().unwrap(), "http").err(), Some(Refusal::Global));
        assert_eq!(l.admit("192.0.2.1".parse().unwrap(), "http").err(), Some(Refusal::Global));
        drop(held);
        assert!(l.per_ip.lock().unwrap().is_empty());
        let _a = l.admit("192.0.2.1".parse().unwrap(), "http").unwrap();
        assert_eq!(l.admit("192.0.2.1".parse().unwrap(), "http").err(), Some(Refusal::PerIp));
    }
}
