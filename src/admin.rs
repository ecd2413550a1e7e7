//! The admin listener (default `127.0.0.1:9464`): `/metrics` (Prometheus text; HTTP Basic auth when
//! `[admin] metrics_basic_auth_user` is set), `/healthz` (process alive), `/readyz` (JSON: ready, degraded or not
//! ready, with the reasons and each check; README, "Operations").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::booking::store::Store;
use crate::cluster::Cluster;
use crate::config::Secret;
use crate::metrics::Metrics;
use crate::relay_io::RelayHandle;

/// The public listeners' health for `/readyz`: each listener's name (`http`, `vy`) and whether its serve task still
/// runs. A serve task that ends while the daemon is not shutting down marks its listener down.
#[derive(Clone, Default)]
pub struct Listeners(Arc<Mutex<BTreeMap<&'static str, bool>>>);

impl Listeners {
    /// Records a bound listener as serving.
    pub fn up(&self, name: &'static str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(name, true);
    }

    /// Marks a listener as no longer serving.
    pub fn down(&self, name: &'static str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(name, false);
    }

    fn snapshot(&self) -> BTreeMap<&'static str, bool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

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
    /// The cluster link (`None`: a single node), whose Redis link `/readyz` reports.
    pub cluster: Option<Cluster>,
    /// The public listeners, reported by `/readyz`.
    pub listeners: Listeners,
    /// HTTP Basic credentials of `/metrics` (`None`: open).
    pub metrics_auth: Option<Arc<(String, Secret)>>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics).route_layer(axum::middleware::from_fn_with_state(state.clone(), basic_auth)))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// `/metrics` behind HTTP Basic auth (RFC 7617) when configured: 401 with `WWW-Authenticate: Basic
/// realm="duet-metrics"` unless the user and password match (compared in constant time).
async fn basic_auth(State(s): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(auth) = &s.metrics_auth else { return next.run(request).await };
    if credentials_match(request.headers(), &auth.0, auth.1.expose()) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"duet-metrics\", charset=\"UTF-8\"")],
        axum::Json(json!({"error": "unauthorized", "message": "the metrics endpoint needs HTTP Basic credentials"})),
    )
        .into_response()
}

fn credentials_match(headers: &HeaderMap, user: &str, password: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some((scheme, b64)) = value.split_once(' ') else { return false };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = STANDARD.decode(b64.trim()) else { return false };
    let expected = format!("{user}:{password}");
    decoded.len() == expected.len() && bool::from(decoded.as_slice().ct_eq(expected.as_bytes()))
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    s.relay.export_metrics();
    s.metrics.database_up.set(i64::from(s.store.ping().await));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

/// `{"status": "ready"|"degraded"|"not_ready", "reasons": [...], "checks": {...}}`. 503 when draining, the database
/// does not answer, or a listener stopped; 200 `degraded` while only the Redis link is down (calls and same-node
/// signaling go on, the balancer should keep sending work).
async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    let draining = s.draining.is_cancelled();
    if draining {
        reasons.push("draining");
    }
    let database = s.store.ping().await;
    if !database {
        reasons.push("database_unreachable");
    }
    let listeners = s.listeners.snapshot();
    if listeners.values().any(|up| !up) {
        reasons.push("listener_down");
    }
    let fatal = !reasons.is_empty();
    let redis = s.cluster.as_ref().map(|c| c.health());
    if let Some(Some(reason)) = redis {
        reasons.push(reason);
    }
    let mut checks = json!({
        "database": if database { "ok" } else { "unreachable" },
        "draining": draining,
        "listeners": listeners.iter().map(|(k, up)| (k.to_string(), json!(if *up { "ok" } else { "down" }))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some(c) = &s.cluster {
        checks["redis"] = json!(if c.is_up() { "ok" } else { "down" });
        checks["node"] = json!(c.node_id());
    }
    let (code, status) = if fatal {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    } else if reasons.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::OK, "degraded")
    };
    (code, axum::Json(json!({"status": status, "reasons": reasons, "checks": checks})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_checked_exactly() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().expect("header"));
            m
        };
        let good = format!("Basic {}", STANDARD.encode("prom:a-long-password-123"));
        assert!(credentials_match(&h(&good), "prom", "a-long-password-123"));
        assert!(credentials_match(&h(&good.replace("Basic", "basic")), "prom", "a-long-password-123"));
        for bad in [
            format!("Basic {}", STANDARD.encode("prom:a-long-password-12")),
            format!("Basic {}", STANDARD.encode("prom2:a-long-password-123")),
            format!("Bearer {}", STANDARD.encode("prom:a-long-password-123")),
            "Basic !!!".to_string(),
            "Basic".to_string(),
        ] {
            assert!(!credentials_match(&h(&bad), "prom", "a-long-password-123"), "{bad}");
        }
        assert!(!credentials_match(&HeaderMap::new(), "prom", "a-long-password-123"));
    }
}
