//! HTTPS for the HTTP and Virtual Y listeners when a certificate is configured (DESIGN §7: rustls, reloaded on
//! SIGHUP through the same [`TlsConfig`] as TURNS). axum's `serve` speaks plain TCP only, so this is the accept loop
//! for TLS: handshake with the current certificate, then HTTP/1.1 with upgrades (WebSocket) on the router, which sees
//! the client address as `ConnectInfo<SocketAddr>` as with `serve`.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::relay_io::tls::TlsConfig;

/// Time allowed for the TLS handshake of one connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, tls: TlsConfig, router: Router, shutdown: CancellationToken) {
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        // TCP_NODELAY, as on the plain listener (see daemon::spawn_http).
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.acceptor();
        let router = router.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
            };
            let service = TowerToHyperService::new(router.layer(axum::Extension(ConnectInfo(remote))));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%remote, error = %e, "https connection") },
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}
