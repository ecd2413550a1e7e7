//! Bad input at every public surface: the booking API, the signaling WebSocket and the STUN/TURN relay. Each case
//! checks the documented rejection and then that the daemon still serves a valid request afterwards.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use stun::agent::TransactionId;
use stun::attributes::{
    ATTR_ERROR_CODE, ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_TRANSPORT, ATTR_UNKNOWN_ATTRIBUTES, ATTR_USERNAME,
    ATTR_XOR_RELAYED_ADDRESS, ATTR_XORMAPPED_ADDRESS, AttrType, RawAttribute,
};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    BINDING_REQUEST, CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, Getter, METHOD_ALLOCATE,
    METHOD_BINDING, Message, MessageType, Setter,
};
use stun::textattrs::TextAttribute;
use stun::uattrs::UnknownAttributes;
use stun::xoraddr::XorMappedAddress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use common::{Backend, Daemon, assert_alive, booking_body, join_as, rfc3339_in, turn_credentials};

const RECV_TIMEOUT: Duration = Duration::from_secs(5);

crate::on_both_backends!(
    api_rejects_missing_and_wrong_api_key,
    api_rejects_malformed_bodies,
    api_refuses_bookings_beyond_the_horizon,
    api_unknown_booking_and_link_are_404,
    api_huge_body_is_refused_not_fatal,
    api_double_booking_is_409_slot_unavailable
);

// ---------------------------------------------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------------------------------------------

/// A valid create-booking request still succeeds, and the process is still running.
async fn api_still_serves(d: &mut Daemon, after: &str) {
    assert_alive(d);
    let (status, body) = d.create_booking(&booking_body(600, 1800)).await;
    assert_eq!(status, 201, "a valid booking after {after} must still be created: {body}");
}

/// POST /v1/bookings with a raw body and an optional Authorization header; returns (status, headers, JSON body).
async fn post_booking_raw(
    d: &Daemon,
    auth: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = d.client().post(d.url("/v1/bookings")).header("content-type", "application/json").body(body);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let r = req.send().await.expect("POST /v1/bookings");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("status {status}: the error body is not JSON: {text:?}"));
    (status, headers, json)
}

/// Checks an error response `{"error": code, "message": …}` with the given status (and `field` when given); returns
/// what differs.
fn api_error_mismatch(case: &str, got: (u16, Value), status: u16, code: &str, field: Option<&str>) -> Option<String> {
    let (got_status, body) = got;
    let mut wrong = Vec::new();
    if got_status != status {
        wrong.push(format!("status {got_status}, want {status}"));
    }
    if body["error"] != code {
        wrong.push(format!("error {}, want {code:?}", body["error"]));
    }
    if !body["message"].is_string() {
        wrong.push("no human-readable message".to_string());
    }
    if let Some(field) = field
        && body["field"] != field
    {
        wrong.push(format!("field {}, want {field:?}", body["field"]));
    }
    (!wrong.is_empty()).then(|| format!("{case}: {}; body {body}", wrong.join(", ")))
}

/// Asserts an error response `{"error": code, "message": …}` with the given status (and `field` when given).
fn assert_api_error(case: &str, got: (u16, Value), status: u16, code: &str, field: Option<&str>) {
    if let Some(msg) = api_error_mismatch(case, got, status, code, field) {
        panic!("{msg}");
    }
}

async fn api_rejects_missing_and_wrong_api_key(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, "") else { return };
    let body = booking_body(600, 1800).to_string();

    let (status, headers, json) = post_booking_raw(&d, None, body.clone()).await;
    assert_api_error("no API key", (status, json), 401, "unauthorized", None);
    let www = headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("401 without WWW-Authenticate; headers {headers:?}"));
    assert!(
        www.to_ascii_lowercase().starts_with("bearer"),
        "WWW-Authenticate must announce the Bearer scheme, got {www:?}"
    );
    api_still_serves(&mut d, "a request without API key").await;

    let wrong = format!("Bearer {}x", d.api_key);
    let (status, _, json) = post_booking_raw(&d, Some(&wrong), body.clone()).await;
    assert_api_error("wrong API key", (status, json), 401, "unauthorized", None);
    api_still_serves(&mut d, "a wrong API key").await;

    let basic = format!("Basic {}", d.api_key);
    let (status, _, json) = post_booking_raw(&d, Some(&basic), body).await;
    assert_api_error("API key under the Basic scheme", (status, json), 401, "unauthorized", None);
    api_still_serves(&mut d, "a Basic Authorization header").await;

    let r = d.client().get(d.url("/v1/bookings/bkg_doesnotexist")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "GET a booking without API key must be refused before lookup");
}

async fn api_rejects_malformed_bodies(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, "") else { return };
    let auth = format!("Bearer {}", d.api_key);

    let cases: Vec<(&str, String, u16, &str, Option<&str>)> = {
        let mut unknown_field = booking_body(600, 1800);
        unknown_field["colour"] = json!("blue");
        let mut wrong_type = booking_body(600, 1800);
        wrong_type["title"] = json!(42);
        let mut missing_start = booking_body(600, 1800);
        missing_start.as_object_mut().unwrap().remove("start_at");
        // A future local time with no offset, e.g. "2026-11-21T07:10:00".
        let naive = |offset_s: i64| rfc3339_in(offset_s).trim_end_matches('Z').to_string();
        let mut start_no_offset = booking_body(600, 1800);
        start_no_offset["start_at"] = json!(naive(600));
        let mut end_no_offset = booking_body(600, 1800);
        end_no_offset["end_at"] = json!(naive(2400));
        let mut end_before_start = booking_body(600, 1800);
        end_before_start["end_at"] = json!(rfc3339_in(300));
        let mut end_equals_start = booking_body(600, 1800);
        end_equals_start["end_at"] = end_equals_start["start_at"].clone();
        let mut two_hosts = booking_body(600, 1800);
        two_hosts["participants"][1]["role"] = json!("host");
        let mut one_participant = booking_body(600, 1800);
        one_participant["participants"].as_array_mut().unwrap().pop();
        vec![
            ("malformed JSON", "{\"title\": \"x\",".to_string(), 400, "invalid_request", None),
            ("not a JSON object", "[1, 2, 3]".to_string(), 400, "invalid_request", None),
            ("unknown field", unknown_field.to_string(), 400, "invalid_request", None),
            ("wrong type", wrong_type.to_string(), 400, "invalid_request", None),
            ("missing start_at", missing_start.to_string(), 422, "missing_field", Some("start_at")),
            ("start_at without offset", start_no_offset.to_string(), 422, "invalid_datetime", Some("start_at")),
            ("end_at without offset", end_no_offset.to_string(), 422, "invalid_datetime", Some("end_at")),
            ("end before start", end_before_start.to_string(), 422, "invalid_duration", None),
            ("end equals start", end_equals_start.to_string(), 422, "invalid_duration", None),
            ("two hosts", two_hosts.to_string(), 422, "invalid_participants", None),
            ("one participant", one_participant.to_string(), 422, "invalid_participants", None),
        ]
    };
    // Every case runs; the mismatches are reported together.
    let mut mismatches = Vec::new();
    for (case, body, status, code, field) in cases {
        let (got, _, json) = post_booking_raw(&d, Some(&auth), body).await;
        mismatches.extend(api_error_mismatch(case, (got, json), status, code, field));
        api_still_serves(&mut d, case).await;
    }
    assert!(mismatches.is_empty(), "error responses differ from the contract:\n{}", mismatches.join("\n"));
}

/// Issue 7 item 15: a booking may start at most `[booking] horizon` (default 365 days) from now; later (year 9999
/// included) answers `422 outside_booking_horizon` naming `start_at`, and nothing is stored.
async fn api_refuses_bookings_beyond_the_horizon(backend: Backend) {
    const DAY: i64 = 86_400;
    let Some(mut d) = Daemon::start_on(backend, "") else { return };
    let auth = format!("Bearer {}", d.api_key);
    let mut year_9999 = booking_body(600, 1800);
    year_9999["start_at"] = json!("9999-06-01T10:00:00Z");
    year_9999["end_at"] = json!("9999-06-01T10:30:00Z");
    let mut mismatches = Vec::new();
    for (case, body) in [("start in year 9999", year_9999), ("start in 366 days", booking_body(366 * DAY, 1800))] {
        let (got, _, json) = post_booking_raw(&d, Some(&auth), body.to_string()).await;
        mismatches.extend(api_error_mismatch(case, (got, json), 422, "outside_booking_horizon", Some("start_at")));
        api_still_serves(&mut d, case).await;
    }
    assert!(mismatches.is_empty(), "bookings beyond the default horizon:\n{}", mismatches.join("\n"));
    let (status, body) = d.create_booking(&booking_body(364 * DAY, 1800)).await;
    assert_eq!(status, 201, "a booking 364 days ahead is inside the default 365-day horizon: {body}");

    let Some(d) = Daemon::start_on(backend, "[booking]\nhorizon = \"2h\"\n") else { return };
    let (status, body) = d.create_booking(&booking_body(3 * 3600, 1800)).await;
    assert_api_error("3 h ahead with horizon = 2h", (status, body), 422, "outside_booking_horizon", Some("start_at"));
    let (status, body) = d.create_booking(&booking_body(3600, 1800)).await;
    assert_eq!(status, 201, "a booking 1 h ahead is inside a 2 h horizon: {body}");
}

/// Overlap with the host's bookings, buffers included (README, "No double booking"): `409 slot_unavailable` naming
/// `start_at`, and buffers outside 0-86400 s are `422 invalid_field` (more in `tests/double_booking.rs`).
async fn api_double_booking_is_409_slot_unavailable(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, "") else { return };
    let mut first = booking_body(3600, 1800);
    first["participants"][0]["ref"] = json!("coach:7");
    first["buffer_after_s"] = json!(600);
    let (status, body) = d.create_booking(&first).await;
    assert_eq!(status, 201, "{body}");
    let mut next = first.clone();
    next["buffer_after_s"] = json!(0);
    next["start_at"] = first["end_at"].clone();
    next["end_at"] = json!(rfc3339_in(3600 + 1800 + 1800));
    let got = d.create_booking(&next).await;
    assert_api_error("inside the first's buffer_after_s", got, 409, "slot_unavailable", Some("start_at"));
    let mut bad = next.clone();
    bad["buffer_before_s"] = json!(86_401);
    let got = d.create_booking(&bad).await;
    assert_api_error("buffer_before_s 86401", got, 422, "invalid_field", Some("buffer_before_s"));
    api_still_serves(&mut d, "a refused double booking").await;
}

async fn api_unknown_booking_and_link_are_404(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, "") else { return };

    let r = d.client().get(d.url("/v1/bookings/bkg_doesnotexist")).bearer_auth(&d.api_key).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("404 body must be JSON");
    assert_api_error("GET unknown booking", (status, body), 404, "not_found", None);
    api_still_serves(&mut d, "GET of an unknown booking").await;

    let (status, _, body) = d.join("lnk_not_a_real_link_token").await;
    assert_api_error("join with unknown link token", (status, body), 404, "link_invalid_or_revoked", None);
    api_still_serves(&mut d, "a join with an unknown link token").await;

    // The link token of a real booking with one character changed is unknown too.
    let booking = d.booking_now(60, 1800).await;
    let mut token = booking["participants"][0]["link_token"].as_str().unwrap().to_string();
    let last = token.pop().unwrap();
    token.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _, body) = d.join(&token).await;
    assert_api_error("join with a tampered link token", (status, body), 404, "link_invalid_or_revoked", None);
    join_as(&d, &booking, "host").await;
    // Requests are counted by route template, never by the raw path (which holds the link token).
    let m = d.metrics().await;
    let refused = common::metric(&m, r#"duet_http_requests_total{code="404",route="/v1/join/{link_token}"}"#);
    assert!(refused.unwrap_or(0.0) >= 2.0, "404 joins by route template:\n{m}");
    assert!(common::metric(&m, r#"duet_http_requests_total{code="200",route="/v1/join/{link_token}"}"#).is_some());
    let token = booking["participants"][0]["link_token"].as_str().unwrap();
    assert!(!m.contains(token), "a link token leaked into the metrics");
}

/// Sends a POST with a `len`-byte JSON body over a raw socket, reading the response while still writing (a server
/// may answer 413 from the Content-Length alone). Returns the status and the response body.
async fn post_huge_body(d: &Daemon, len: usize) -> (u16, String) {
    let stream = TcpStream::connect(d.http).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let prefix = b"{\"title\":\"";
    let suffix = b"\"}";
    let filler = len - prefix.len() - suffix.len();
    let head = format!(
        "POST /v1/bookings HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n",
        d.http, d.api_key
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(prefix).await?;
        let chunk = vec![b'a'; 64 * 1024];
        let mut left = filler;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(&chunk[..n]).await?;
            left -= n;
        }
        wr.write_all(suffix).await?;
        wr.flush().await
    });
    let mut resp = Vec::new();
    let read = timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 8192];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => resp.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&resp).into_owned();
    if text.is_empty() {
        panic!("no HTTP response to a {len}-byte body (read result {read:?})");
    }
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unparsable HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn api_huge_body_is_refused_not_fatal(backend: Backend) {
    let Some(mut d) = Daemon::start_on(backend, "") else { return };
    let (status, body) = post_huge_body(&d, 2 * 1024 * 1024 + 512).await;
    assert!(
        status == 413 || status == 400,
        "a 2 MiB booking body must be refused with 413 (or 400), got {status}: {body:.200}"
    );
    let json: Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("the {status} error body must be JSON: {body:.200}"));
    assert!(json["error"].is_string(), "the {status} error body must name an error code: {json}");
    api_still_serves(&mut d, "a 2 MiB body").await;
}

// ---------------------------------------------------------------------------------------------------------------
// Signaling WebSocket
// ---------------------------------------------------------------------------------------------------------------

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

fn signal_url(join: &Value) -> String {
    let base = join["signal_url"].as_str().expect("join has signal_url");
    let token = join["session_token"].as_str().expect("join has session_token");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}token={token}")
}

/// The next text frame as JSON (transport-level ping/pong frames skipped); panics on close, binary or timeout.
async fn next_json(ws: &mut Ws, waiting_for: &str) -> Value {
    loop {
        let msg = timeout(RECV_TIMEOUT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no message within {RECV_TIMEOUT:?} while waiting for {waiting_for}"));
        match msg {
            Some(Ok(WsMessage::Text(t))) => {
                return serde_json::from_str(&t).unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {t:?}"));
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("waiting for {waiting_for}, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame and returns its code; panics if the stream ends without one.
async fn close_code(ws: &mut Ws, waiting_for: &str) -> u16 {
    loop {
        let msg = timeout(RECV_TIMEOUT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no close within {RECV_TIMEOUT:?} ({waiting_for})"));
        match msg {
            Some(Ok(WsMessage::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(WsMessage::Close(None))) => panic!("{waiting_for}: close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{waiting_for}: connection failed without a close frame: {e}"),
            None => panic!("{waiting_for}: connection ended without a close frame"),
        }
    }
}

/// Connects with a join response's session token and returns the socket after checking the welcome.
async fn connect_signal(join: &Value) -> Ws {
    let url = signal_url(join);
    let (mut ws, _) = timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .unwrap_or_else(|_| panic!("WebSocket connect to {url} timed out"))
        .unwrap_or_else(|e| panic!("WebSocket connect to {url}: {e}"));
    let welcome = next_json(&mut ws, "welcome").await;
    assert_eq!(welcome["type"], "welcome", "first message must be the welcome: {welcome}");
    assert_eq!(welcome["v"], 1, "welcome version: {welcome}");
    ws
}

/// Sends an app-level ping and expects a pong: the socket is still usable.
async fn assert_ping_pong(ws: &mut Ws, after: &str) {
    ws.send(WsMessage::text(json!({"type": "ping", "t": 1234}).to_string()))
        .await
        .unwrap_or_else(|e| panic!("send ping after {after}: {e}"));
    let pong = next_json(ws, &format!("pong after {after}")).await;
    assert_eq!(pong["type"], "pong", "after {after} the socket must still answer pings: {pong}");
}

#[tokio::test]
async fn ws_bad_token_is_refused() {
    let mut d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let join = join_as(&d, &booking, "host").await;
    let base = join["signal_url"].as_str().unwrap().to_string();

    for bad in ["not-a-token", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"] {
        let url = format!("{base}?token={bad}");
        match timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("connect with a bad token timed out")
        {
            Ok((mut ws, _)) => {
                let code = close_code(&mut ws, "close after a bad token").await;
                assert_eq!(code, 4001, "a bad session token must be closed with 4001");
            }
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401, "a refused upgrade for a bad token must be 401");
            }
            Err(e) => panic!("bad token: expected close 4001 or HTTP 401, got {e}"),
        }
        assert_alive(&mut d);
    }
    // The genuine token still works.
    let mut ws = connect_signal(&join).await;
    assert_ping_pong(&mut ws, "bad-token connections").await;
}

#[tokio::test]
async fn ws_garbage_and_binary_frames_get_errors_and_socket_survives() {
    let mut d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let join = join_as(&d, &booking, "host").await;
    let mut ws = connect_signal(&join).await;

    ws.send(WsMessage::text("this is {not json")).await.unwrap();
    let err = next_json(&mut ws, "error for garbage text").await;
    assert_eq!(err["type"], "error", "garbage text: {err}");
    assert_eq!(err["code"], "bad_message", "garbage text: {err}");
    assert_ping_pong(&mut ws, "garbage text").await;

    ws.send(WsMessage::binary(vec![0u8, 159, 146, 150, 255])).await.unwrap();
    let err = next_json(&mut ws, "error for a binary frame").await;
    assert_eq!(err["type"], "error", "binary frame: {err}");
    assert_ping_pong(&mut ws, "a binary frame").await;
    assert_alive(&mut d);
}

#[tokio::test]
async fn ws_oversized_frame_closes_1009_and_daemon_accepts_new_connections() {
    let mut d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let join = join_as(&d, &booking, "host").await;
    let mut ws = connect_signal(&join).await;

    let big = json!({"type": "signal", "session": 1, "data": {"sdp": "x".repeat(70 * 1024)}}).to_string();
    assert!(big.len() > 64 * 1024);
    // The server may close while the frame is still being written; a send error is fine, the close code is not.
    let _ = ws.send(WsMessage::text(big)).await;
    let code = close_code(&mut ws, "close after a 70 KiB frame").await;
    assert_eq!(code, 1009, "a frame over 64 KiB must be closed with 1009 (message too big)");
    drop(ws);
    assert_alive(&mut d);

    // Both participants can still connect and get paired.
    let host = join_as(&d, &booking, "host").await;
    let guest = join_as(&d, &booking, "guest").await;
    let mut host_ws = connect_signal(&host).await;
    let mut guest_ws = connect_signal(&guest).await;
    for (ws, who) in [(&mut host_ws, "host"), (&mut guest_ws, "guest")] {
        let ready = next_json(ws, &format!("ready for the {who}")).await;
        assert_eq!(ready["type"], "ready", "{who} after reconnect: {ready}");
    }
    assert_ping_pong(&mut guest_ws, "reconnecting after a 1009 close").await;
}

// ---------------------------------------------------------------------------------------------------------------
// STUN/TURN relay
// ---------------------------------------------------------------------------------------------------------------

async fn relay_socket(d: &Daemon) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(d.turn_udp).await.unwrap();
    sock
}

fn build(setters: Vec<Box<dyn Setter>>) -> Message {
    let mut m = Message::new();
    m.build(&setters).expect("build STUN message");
    m
}

fn binding_request(extra: Vec<Box<dyn Setter>>) -> Message {
    let mut setters: Vec<Box<dyn Setter>> = vec![Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)];
    setters.extend(extra);
    build(setters)
}

fn raw_attr(typ: u16, value: &[u8]) -> Box<dyn Setter> {
    Box::new(RawAttribute { typ: AttrType(typ), length: value.len() as u16, value: value.to_vec() })
}

fn text_attr(typ: AttrType, text: &str) -> Box<dyn Setter> {
    Box::new(TextAttribute::new(typ, text.to_string()))
}

/// An Allocate request for UDP; with `auth = Some((username, realm, nonce, password))` it is signed.
fn allocate_request(auth: Option<(&str, &str, &str, &str)>, extra: Vec<Box<dyn Setter>>) -> Message {
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        raw_attr(ATTR_REQUESTED_TRANSPORT.0, &[17, 0, 0, 0]),
    ];
    setters.extend(extra);
    if let Some((user, realm, nonce, password)) = auth {
        setters.push(text_attr(ATTR_USERNAME, user));
        setters.push(text_attr(ATTR_REALM, realm));
        setters.push(text_attr(ATTR_NONCE, nonce));
        setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
            user.to_string(),
            realm.to_string(),
            password.to_string(),
        )));
    }
    build(setters)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sends `req` and returns the first datagram back, which must answer `req`'s transaction.
async fn transact(sock: &UdpSocket, req: &Message, what: &str) -> Message {
    sock.send(&req.raw).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = timeout(RECV_TIMEOUT, sock.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no response to {what} within {RECV_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("recv for {what}: {e}"));
    let mut resp = Message::new();
    resp.raw = buf[..n].to_vec();
    if let Err(e) = resp.decode() {
        panic!("{what}: undecodable response ({e}): {}", hex(&buf[..n]));
    }
    assert_eq!(
        resp.transaction_id, req.transaction_id,
        "{what}: the first datagram back answers another transaction: {resp}"
    );
    resp
}

fn error_code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

fn text_of(m: &Message, t: AttrType) -> Option<String> {
    TextAttribute::get_from_as(m, t).ok().map(|a| a.text)
}

/// A Binding request gets a success response whose XOR-MAPPED-ADDRESS is our own address.
async fn assert_binding_works(sock: &UdpSocket, after: &str) {
    let req = binding_request(vec![]);
    let resp = transact(sock, &req, &format!("Binding after {after}")).await;
    assert_eq!(
        resp.typ,
        MessageType::new(METHOD_BINDING, CLASS_SUCCESS_RESPONSE),
        "Binding after {after} must succeed: {resp} (error {:?})",
        error_code(&resp)
    );
    let mut xma = XorMappedAddress::default();
    xma.get_from(&resp).unwrap_or_else(|e| panic!("Binding success after {after} without XOR-MAPPED-ADDRESS: {e}"));
    let me = sock.local_addr().unwrap();
    assert_eq!(SocketAddr::new(xma.ip, xma.port), me, "XOR-MAPPED-ADDRESS must be the client's address");
}

/// Nothing arrives for `dur`: malformed datagrams are silently discarded (RFC 8489 §6.3), never answered.
async fn assert_silence(sock: &UdpSocket, what: &str) {
    let mut buf = vec![0u8; 2048];
    if let Ok(r) = timeout(Duration::from_millis(300), sock.recv(&mut buf)).await {
        let n = r.unwrap_or_else(|e| panic!("recv after {what}: {e}"));
        panic!("{what} must be silently discarded, but the relay answered {n} bytes: {}", hex(&buf[..n]));
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[tokio::test]
async fn relay_discards_malformed_datagrams_and_keeps_serving() {
    let mut d = Daemon::start("");
    let sock = relay_socket(&d).await;
    assert_binding_works(&sock, "startup").await;

    let valid = binding_request(vec![raw_attr(0x8022, b"duet-test")]).raw;
    let mut too_long = valid.clone();
    // Claim 256 bytes of attributes; the datagram carries far fewer.
    too_long[2..4].copy_from_slice(&256u16.to_be_bytes());
    let mut stun_like_noise = noise(7, 40);
    stun_like_noise[0] &= 0x3f; // top bits 00, as in STUN
    stun_like_noise[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an empty datagram", vec![]),
        ("a truncated STUN header (12 of 20 bytes)", valid[..12].to_vec()),
        ("a STUN header alone with a nonzero length", {
            let mut h = valid[..20].to_vec();
            h[2..4].copy_from_slice(&12u16.to_be_bytes());
            h
        }),
        ("a STUN message whose length field exceeds the datagram", too_long),
        ("1 random byte", noise(1, 1)),
        ("37 random bytes", noise(2, 37)),
        ("548 random bytes", noise(3, 548)),
        ("1400 random bytes", noise(4, 1400)),
        ("random bytes with a STUN magic cookie", stun_like_noise),
        ("ChannelData on an unbound channel", {
            let mut c = vec![0x40, 0x00, 0x00, 0x04];
            c.extend_from_slice(b"ping");
            c
        }),
    ];
    for (what, bytes) in cases {
        sock.send(&bytes).await.unwrap();
        assert_silence(&sock, what).await;
        assert_binding_works(&sock, what).await;
    }
    assert_alive(&mut d);
    // A fresh client is served too.
    assert_binding_works(&relay_socket(&d).await, "malformed datagrams from another client").await;
}

/// The 401 challenge for an unauthenticated Allocate: (realm, nonce).
async fn challenge(sock: &UdpSocket) -> (String, String) {
    let resp = transact(sock, &allocate_request(None, vec![]), "unauthenticated Allocate").await;
    assert_eq!(
        resp.typ,
        MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE),
        "unauthenticated Allocate must be refused: {resp}"
    );
    assert_eq!(error_code(&resp), Some(401), "unauthenticated Allocate: {resp}");
    let realm = text_of(&resp, ATTR_REALM).expect("401 must carry REALM");
    let nonce = text_of(&resp, ATTR_NONCE).expect("401 must carry NONCE");
    assert_eq!(realm, "duet", "configured default realm");
    (realm, nonce)
}

#[tokio::test]
async fn relay_refuses_allocate_signed_with_wrong_password() {
    let mut d = Daemon::start("");
    let booking = d.booking_now(60, 1800).await;
    let (_, username, credential) = turn_credentials(&join_as(&d, &booking, "host").await);
    let sock = relay_socket(&d).await;
    let failures_before = common::metric(&d.metrics().await, "duet_turn_auth_failures_total").unwrap_or(0.0);

    let (realm, nonce) = challenge(&sock).await;
    let wrong = format!("{credential}x");
    let req = allocate_request(Some((&username, &realm, &nonce, &wrong)), vec![]);
    let resp = transact(&sock, &req, "Allocate signed with a wrong password").await;
    assert_eq!(
        resp.typ,
        MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE),
        "an Allocate with a wrong MESSAGE-INTEGRITY must be refused: {resp}"
    );
    assert_eq!(error_code(&resp), Some(401), "wrong MESSAGE-INTEGRITY must be answered 401: {resp}");
    assert!(!resp.contains(ATTR_XOR_RELAYED_ADDRESS), "no relayed address for a failed Allocate");
    let failures_after = common::metric(&d.metrics().await, "duet_turn_auth_failures_total").unwrap_or(0.0);
    assert!(
        failures_after > failures_before,
        "duet_turn_auth_failures_total must count the wrong password ({failures_before} -> {failures_after})"
    );
    assert_alive(&mut d);

    // The right password on the same 5-tuple still gets an allocation (the 401 came from the password).
    let (realm, nonce) = challenge(&sock).await;
    let req = allocate_request(Some((&username, &realm, &nonce, &credential)), vec![]);
    let resp = transact(&sock, &req, "Allocate with the right password").await;
    assert_eq!(
        resp.typ,
        MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE),
        "Allocate with the join credentials must succeed: {resp} (error {:?})",
        error_code(&resp)
    );
    let mut relayed = XorMappedAddress::default();
    relayed.get_from_as(&resp, ATTR_XOR_RELAYED_ADDRESS).expect("Allocate success carries XOR-RELAYED-ADDRESS");
    assert_eq!(relayed.ip.to_string(), "127.0.0.1", "relayed address");
    assert_ne!(relayed.port, 0, "relayed port");
    assert_binding_works(&sock, "a wrong-password Allocate").await;
}

#[tokio::test]
async fn relay_answers_unknown_comprehension_required_attribute_with_420() {
    let mut d = Daemon::start("");
    let sock = relay_socket(&d).await;
    const UNKNOWN_REQUIRED: u16 = 0x7F31;
    const UNKNOWN_OPTIONAL: u16 = 0xBF31;

    let req = binding_request(vec![raw_attr(UNKNOWN_REQUIRED, &[1, 2, 3, 4])]);
    let resp = transact(&sock, &req, "Binding with an unknown comprehension-required attribute").await;
    assert_eq!(
        resp.typ,
        MessageType::new(METHOD_BINDING, CLASS_ERROR_RESPONSE),
        "unknown comprehension-required attribute: {resp}"
    );
    assert_eq!(error_code(&resp), Some(420), "unknown comprehension-required attribute: {resp}");
    let mut unknown = UnknownAttributes(vec![]);
    unknown.get_from(&resp).unwrap_or_else(|e| panic!("420 must carry UNKNOWN-ATTRIBUTES ({e}): {resp}"));
    assert!(
        unknown.0.contains(&AttrType(UNKNOWN_REQUIRED)),
        "UNKNOWN-ATTRIBUTES must list 0x{UNKNOWN_REQUIRED:04x}, got {unknown}"
    );
    assert!(resp.contains(ATTR_ERROR_CODE) && resp.contains(ATTR_UNKNOWN_ATTRIBUTES));
    assert_binding_works(&sock, "a 420").await;

    // Unknown comprehension-optional attributes are ignored.
    let req = binding_request(vec![raw_attr(UNKNOWN_OPTIONAL, &[1, 2, 3, 4])]);
    let resp = transact(&sock, &req, "Binding with an unknown comprehension-optional attribute").await;
    assert_eq!(
        resp.typ,
        MessageType::new(METHOD_BINDING, CLASS_SUCCESS_RESPONSE),
        "an unknown comprehension-optional attribute must be ignored: {resp} (error {:?})",
        error_code(&resp)
    );
    assert!(resp.contains(ATTR_XORMAPPED_ADDRESS));

    // An authenticated Allocate with an unknown comprehension-required attribute is refused with 420 too.
    let booking = d.booking_now(60, 1800).await;
    let (_, username, credential) = turn_credentials(&join_as(&d, &booking, "guest").await);
    let (realm, nonce) = challenge(&sock).await;
    let req = allocate_request(
        Some((&username, &realm, &nonce, &credential)),
        vec![raw_attr(UNKNOWN_REQUIRED, &[9, 9, 9, 9])],
    );
    let resp = transact(&sock, &req, "signed Allocate with an unknown comprehension-required attribute").await;
    assert_eq!(
        (resp.typ, error_code(&resp)),
        (MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE), Some(420)),
        "signed Allocate with an unknown comprehension-required attribute: {resp}"
    );
    assert_binding_works(&sock, "a 420 on Allocate").await;
    assert_alive(&mut d);
}
