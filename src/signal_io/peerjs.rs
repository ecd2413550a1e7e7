//! PeerJS mode (off by default): a drop-in for peerjs-server 1.0 (research/signaling.md §4, §10.4) mounted at
//! `[signaling.peerjs] path`:
//! - `GET {path}`: the server description JSON;
//! - `GET {path}{key}/id`: a fresh client id (UUID v4, text);
//! - `GET {path}{key}/peers`: the ids of the key's namespace (401 unless `allow_discovery`);
//! - `GET {path}peerjs?key=&id=&token=` WebSocket: `OPEN`, `ID-TAKEN`, `ERROR`, relay with forced `src`, queue and
//!   `EXPIRE`, `LEAVE`, `HEARTBEAT` timeout (the [`PeerjsServer`](duet_signaling::peerjs::PeerjsServer) core).
//!
//! `key` is either the static key of the config (behaves as upstream) or a session token from `POST /v1/join`: the
//! client is then scoped to its booking (ids namespaced per booking, the window enforced, closed at the hard end or
//! on cancel).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use duet_signaling::Mode;
use duet_signaling::peerjs::{PeerjsError, Registration, SERVER_INFO, Scope};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::native::{admitted, configure, instant_of, precheck};
use super::{Admit, connection, vy};
use crate::app::{AppState, unix_now};
use crate::booking::api::ApiError;
use crate::booking::store::{Kind, Status};

/// The namespace and scope of a `key`, or `None` when the key is neither the static key nor a live session token.
async fn namespace_of(state: &AppState, key: &str) -> Option<(String, Option<Scope>)> {
    let cfg = &state.hub.config.peerjs;
    // Constant time: the static key is a shared secret (compare every byte whatever the first difference).
    if cfg.allow_static_key && bool::from(key.as_bytes().ct_eq(cfg.key.as_bytes())) {
        return Some((format!("key:{key}"), None));
    }
    let claims = state.session_keys().verify(key).ok()?;
    let b = state.store.booking(None, &claims.bkg).await.ok()??;
    let participant = b.participants.iter().find(|p| p.id == claims.sub)?;
    let (role, epoch, participant) = (participant.role, participant.link_epoch, participant.id.clone());
    let now = unix_now();
    if b.status != Status::Confirmed
        || b.kind != Kind::Hosted
        || b.sequence != claims.seq
        || epoch != claims.pep
        || now < b.window.opens_for(role)
        || now >= b.window.hard_end_at
    {
        return None;
    }
    let scope = Scope { booking: b.id.clone(), participant, hard_end_at: instant_of(b.window.hard_end_at) };
    Some((b.id, Some(scope)))
}

/// The PeerJS routes under `path` (which starts and ends with `/`).
pub fn routes(path: &str) -> Router<AppState> {
    Router::new()
        .route(path, get(info))
        .route(&format!("{path}{{key}}/id"), get(id))
        .route(&format!("{path}{{key}}/peers"), get(peers))
        .route(&format!("{path}peerjs"), get(upgrade))
}

/// `GET {path}`: the server description, unless the request is a Virtual Y upgrade (`?meetingId=`), which any
/// path accepts.
async fn info(
    state: State<AppState>,
    connect: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if query.as_deref().is_some_and(|q| q.contains("meetingId=")) {
        return vy::fallback(state, connect, headers, RawQuery(query), ws).await;
    }
    ([(header::CONTENT_TYPE, "application/json")], SERVER_INFO).into_response()
}

/// `GET {path}{key}/id`: upstream does not check the key here (a wrong key is refused on the socket with `ERROR`).
async fn id(Path(_key): Path<String>) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], uuid::Uuid::new_v4().to_string()).into_response()
}

async fn peers(State(state): State<AppState>, Path(key): Path<String>) -> Response {
    let ns = match namespace_of(&state, &key).await {
        Some((ns, _)) if state.hub.config.peerjs.allow_discovery => ns,
        _ => return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "peer discovery is off").into_response(),
    };
    axum::Json(state.hub.peerjs_ids(ns).await).into_response()
}

#[derive(Deserialize)]
struct WsQuery {
    key: Option<String>,
    id: Option<String>,
    token: Option<String>,
}

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let (ip, pending) = match precheck(&state, Mode::Peerjs, peer, &headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let key = q.key.unwrap_or_default();
    let (admit, slot) = match namespace_of(&state, &key).await {
        Some((namespace, scope)) => {
            let slot = match admitted(&state, Mode::Peerjs, ip) {
                Ok(s) => s,
                Err(r) => return *r,
            };
            let registration =
                Registration { namespace, id: q.id.unwrap_or_default(), token: q.token.unwrap_or_default(), scope };
            (Admit::Peerjs(registration), slot)
        }
        // Refused sockets keep their pending place until the core has sent `ERROR` and closed them.
        None if key.is_empty() => (Admit::PeerjsReject(PeerjsError::InvalidWsParameters), pending),
        None => {
            state.hub.count_refused(Mode::Peerjs, "bad_token");
            (Admit::PeerjsReject(PeerjsError::InvalidKey), pending)
        }
    };
    configure(ws, &state).on_upgrade(move |socket| connection(socket, state.hub.clone(), admit, slot))
}
