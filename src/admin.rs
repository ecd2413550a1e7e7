//! The admin listener (default `127.0.0.1:9464`): `/metrics` (Prometheus text), `/healthz` (process alive),
//! `/readyz` (database reachable and not draining; 503 with JSON reasons otherwise).

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::booking::store::Store;
use crate::metrics::Metrics;
use crate::relay_io::RelayHandle;

/// State of the admin routes.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics registry.
    pub metrics: Metrics,
    /// Relay, whose core counters are exported at scrape time.
    pub relay: RelayHandle,
    /// Store, pinged by `/readyz`.
    pub store: Store,
    /// Cancelled when draining.
    pub draining: CancellationToken,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    s.relay.export_metrics();
    s.metrics.database_up.set(i64::from(s.store.ping().await));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if s.draining.is_cancelled() {
        reasons.push("draining");
    }
    if !s.store.ping().await {
        reasons.push("database_unreachable");
    }
    if reasons.is_empty() {
        (StatusCode::OK, axum::Json(json!({"status": "ready"})))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "not_ready", "reasons": reasons})))
    }
}
