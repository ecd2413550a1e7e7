//! A webhook receiver on 127.0.0.1 for process-level tests (tests/webhooks.rs, tests/call_report.rs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// A webhook receiver on 127.0.0.1:0 (axum): records every request; answers 500 to the first `fail_first` requests,
/// a 307 to `/landed` on `/redirect`, else 204 (on `/slow` after 2 s).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    pub fail_first: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let fail_first: Arc<AtomicUsize> = Arc::default();
        let (h, f) = (hits.clone(), fail_first.clone());
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: String| {
            let (h, f) = (h.clone(), f.clone());
            async move {
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                h.lock().unwrap().push(Hit { path: uri.path().to_string(), headers, body });
                if uri.path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                if uri.path() == "/redirect" {
                    return (StatusCode::TEMPORARY_REDIRECT, [("location", "/landed")]).into_response();
                }
                if f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                StatusCode::NO_CONTENT.into_response()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, hits, fail_first }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) until `done` holds for the hits; returns them.
    pub async fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let hits = self.hits();
            if done(&hits) {
                return hits;
            }
            if tokio::time::Instant::now() > deadline {
                let seen: Vec<String> = hits.iter().map(|h| format!("{} {}", h.path, h.body)).collect();
                panic!("receiver: {what} not seen within {limit:?}; got {seen:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
