//! Shared state of the HTTP side: what every handler needs, cloned cheaply (all fields are `Arc` or handles).

use std::sync::Arc;
use std::time::Duration;

use crate::booking::link_seal::LinkSealer;
use crate::booking::store::Store;
use crate::booking::tokens::SessionKeys;
use crate::config::BookingPolicy;
use crate::metrics::Metrics;
use crate::relay_io::RelayHandle;
use crate::signal_io::HubHandle;

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// Booking store.
    pub store: Store,
    /// Join-window defaults.
    pub policy: BookingPolicy,
    /// Session-token keys (newest signs, all verify); replaced on SIGHUP, read with [`AppState::session_keys`].
    pub session_keys: Arc<std::sync::RwLock<Arc<SessionKeys>>>,
    /// Session-token lifetime (capped at `hard_end_at`).
    pub session_ttl: Duration,
    /// Secret that signs new TURN credentials (the first of the rotation list; replaced on SIGHUP).
    pub turn_secret: Arc<std::sync::RwLock<Vec<u8>>>,
    /// Base URL of join links (`http://host:port`).
    pub public_base: Arc<str>,
    /// `ice_servers` URLs: (`stun:` URLs, `turn:` URLs).
    pub ice_urls: Arc<(Vec<String>, Vec<String>)>,
    /// Relay control.
    pub relay: RelayHandle,
    /// Hub control.
    pub hub: HubHandle,
    /// Metrics.
    pub metrics: Metrics,
    /// Cancelled on SIGTERM: new joins get 503 while running calls finish.
    pub draining: tokio_util::sync::CancellationToken,
    /// `[webhooks]`: the SSRF guard's allow list and the rotation overlap.
    pub webhooks: Arc<crate::config::WebhookConfig>,
    /// Seals and opens the link tokens kept encrypted at rest (keys derived from the session keys; replaced on
    /// SIGHUP), read with [`AppState::link_sealer`].
    pub link_sealer: Arc<std::sync::RwLock<Arc<LinkSealer>>>,
    /// `[booking_page]`, the form-token key and the per-client booking limit of the pages.
    pub pages: Arc<crate::booking::pages::PageState>,
    /// The cluster link (`None`: a single node).
    pub cluster: Option<crate::cluster::Cluster>,
}

impl AppState {
    /// The current session-token keys.
    pub fn session_keys(&self) -> Arc<SessionKeys> {
        self.session_keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current link sealer.
    pub fn link_sealer(&self) -> Arc<LinkSealer> {
        self.link_sealer.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The WebSocket URL of the native signaling endpoint.
    pub fn signal_url(&self) -> String {
        let base = &self.public_base;
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_string()
        };
        format!("{ws}/v1/signal")
    }
}

/// Current Unix time in seconds (the daemon owns the clock; the cores get it as an argument).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
