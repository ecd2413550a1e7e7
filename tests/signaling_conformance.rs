//! Process-level conformance of the signaling hub (issue 4): the real `duet` binary, a WebSocket client
//! (tokio-tungstenite) and the three wire protocols.
//!
//! - **vy** (drop-in for the Virtual Y signaling server): the conformance cases 1-9 of research/signaling.md §10.6
//!   (contract in §1.3 and §10.2), the dedicated listener, the open relay and cancellation.
//! - **peerjs** (drop-in for peerjs-server 1.0): the §10.6 PeerJS cases 1-5 (contract in §4 and §10.4), the HTTP
//!   routes, and a session token as `key` scoping a client to its booking.
//! - **native** v1 (§10.3): welcome, ready and its session counter, verbatim `data`, stale sessions, peer-left,
//!   newest connection per role, rate limit, `Origin` allow-list, per-IP cap, window warnings and the 4003 room close.
//! - Garbage at every layer (TCP, WebSocket framing, each protocol) never takes the hub down.
//!
//! Every wait is bounded; every test boots a daemon of its own (its config is the test's subject).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Backend, Daemon, assert_alive, booking_body, cancel_booking, join_as, metric, participant, ready_addr};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for anything the hub should do promptly.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing else arrives" is watched.
const QUIET: Duration = Duration::from_millis(600);

// ---------------------------------------------------------------------------------------------------------------
// WebSocket client helpers
// ---------------------------------------------------------------------------------------------------------------

/// One thing read from a socket (the payloads are read through `Debug`, in failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Got {
    Text(String),
    Binary(usize),
    Ping,
    Pong,
    Close(Option<u16>),
    End,
    Failed(String),
    Nothing,
}

/// The next message within `within` (`Got::Nothing` when none came). Reading also answers pings and closes.
async fn recv(ws: &mut Ws, within: Duration) -> Got {
    match timeout(within, ws.next()).await {
        Err(_) => Got::Nothing,
        Ok(None) => Got::End,
        Ok(Some(Err(e))) => Got::Failed(e.to_string()),
        Ok(Some(Ok(m))) => match m {
            Message::Text(t) => Got::Text(t.to_string()),
            Message::Binary(b) => Got::Binary(b.len()),
            Message::Ping(_) => Got::Ping,
            Message::Pong(_) => Got::Pong,
            Message::Close(f) => Got::Close(f.map(|f| u16::from(f.code))),
            Message::Frame(_) => Got::Failed("raw frame".into()),
        },
    }
}

/// The next text frame within [`WAIT`] (control frames skipped); panics on anything else.
async fn next_text(ws: &mut Ws, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        match recv(ws, deadline.saturating_duration_since(Instant::now())).await {
            Got::Text(t) => return t,
            Got::Ping | Got::Pong => continue,
            Got::Nothing => panic!("{what}: no text frame within {WAIT:?}"),
            other => panic!("{what}: expected a text frame, got {other:?}"),
        }
    }
}

/// The next text frame as JSON.
async fn next_json(ws: &mut Ws, what: &str) -> Value {
    let t = next_text(ws, what).await;
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{what}: the server sent non-JSON text ({e}): {t:?}"))
}

/// Watches `ws` for `dur` and panics if anything but ping/pong control frames arrives; returns the pings seen.
async fn quiet(ws: &mut Ws, dur: Duration, what: &str) -> usize {
    let deadline = Instant::now() + dur;
    let mut pings = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return pings;
        }
        match recv(ws, left).await {
            Got::Nothing => return pings,
            Got::Ping => pings += 1,
            Got::Pong => {}
            other => panic!("{what}: expected nothing but control frames for {dur:?}, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame (within `within`): the text frames seen before it and its code.
async fn closed_within(ws: &mut Ws, within: Duration, what: &str) -> (Vec<String>, Option<u16>) {
    let deadline = Instant::now() + within;
    let mut texts = Vec::new();
    loop {
        match recv(ws, deadline.saturating_duration_since(Instant::now())).await {
            Got::Text(t) => texts.push(t),
            Got::Ping | Got::Pong | Got::Binary(_) => continue,
            Got::Close(code) => return (texts, code),
            Got::Nothing => panic!("{what}: no close within {within:?} (texts so far: {texts:?})"),
            other => panic!("{what}: the connection ended without a close frame: {other:?} (texts: {texts:?})"),
        }
    }
}

/// Reads until the close frame (within [`WAIT`]) and asserts its code and that no text frame came before it.
async fn expect_close(ws: &mut Ws, code: u16, what: &str) {
    let (texts, got) = closed_within(ws, WAIT, what).await;
    assert!(texts.is_empty(), "{what}: text frames before the close: {texts:?}");
    assert_eq!(got, Some(code), "{what}: close code");
}

/// After a close frame: reads until the TCP connection ends (the close handshake completed), at most [`WAIT`].
async fn until_end(ws: &mut Ws) {
    let deadline = Instant::now() + WAIT;
    loop {
        match recv(ws, deadline.saturating_duration_since(Instant::now())).await {
            Got::End | Got::Failed(_) | Got::Nothing => return,
            _ => continue,
        }
    }
}

async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string())).await.unwrap_or_else(|e| panic!("send {text:?}: {e}"));
}

/// An upgrade attempt: the socket, or the refusal's HTTP status and body.
async fn upgrade(url: &str, origin: Option<&str>) -> Result<Ws, (u16, String)> {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
    upgrade_with(url, &headers).await
}

/// An upgrade attempt with extra request headers (`Origin`, `X-Forwarded-For`, ...).
async fn upgrade_with(url: &str, headers: &[(&'static str, &str)]) -> Result<Ws, (u16, String)> {
    let mut req = url.into_client_request().unwrap_or_else(|e| panic!("bad URL {url}: {e}"));
    for (name, value) in headers {
        req.headers_mut().append(*name, value.parse().unwrap());
    }
    match timeout(WAIT, tokio_tungstenite::connect_async(req)).await {
        Err(_) => panic!("upgrade at {url} did not finish within {WAIT:?}"),
        Ok(Ok((ws, resp))) => {
            assert_eq!(resp.status().as_u16(), 101, "upgrade at {url}");
            Ok(ws)
        }
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
            Err((resp.status().as_u16(), body))
        }
        Ok(Err(e)) => panic!("upgrade at {url}: {e}"),
    }
}

/// An upgrade that must succeed (HTTP 101).
async fn connect(url: &str) -> Ws {
    upgrade(url, None).await.unwrap_or_else(|(s, body)| panic!("upgrade at {url} refused with HTTP {s}: {body}"))
}

/// The refusal status of an upgrade that must be refused.
async fn refused(url: &str, origin: Option<&str>) -> (u16, String) {
    match upgrade(url, origin).await {
        Ok(_) => panic!("upgrade at {url} (Origin {origin:?}) was accepted (101); it must be refused"),
        Err(r) => r,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Protocol helpers
// ---------------------------------------------------------------------------------------------------------------

/// A Virtual Y URL as the Virtual Y client builds it (`role` is the raw `isInstructorRole` value, `None` omits it).
fn vy_url(addr: SocketAddr, path: &str, meeting: &str, role: Option<&str>) -> String {
    match role {
        Some(r) => format!("ws://{addr}{path}?meetingId={meeting}&isInstructorRole={r}"),
        None => format!("ws://{addr}{path}?meetingId={meeting}"),
    }
}

/// A fresh meeting id, like the Virtual Y `personal_training` entity UUID.
fn meeting_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A booking whose `external_id` is a fresh meeting id: (meeting id, booking).
async fn vy_booking(d: &Daemon, start_in_s: i64, len_s: i64) -> (String, Value) {
    let meeting = meeting_id();
    let mut body = booking_body(start_in_s, len_s);
    body["external_id"] = json!(meeting);
    let (status, booking) = d.create_booking(&body).await;
    assert_eq!(status, 201, "create a booking with external_id: {booking}");
    assert_eq!(booking["external_id"], meeting.as_str(), "{booking}");
    (meeting, booking)
}

async fn expect_ready(ws: &mut Ws, who: &str) {
    assert_eq!(next_text(ws, &format!("ready for the {who}")).await, "ready", "{who}: the first frame must be `ready`");
}

/// Customer first (nothing is sent to it alone), then the instructor; both get `ready`. Returns (instructor,
/// customer).
async fn vy_pair(addr: SocketAddr, meeting: &str) -> (Ws, Ws) {
    let mut c = connect(&vy_url(addr, "/", meeting, Some("false"))).await;
    quiet(&mut c, Duration::from_millis(300), "vy customer alone").await;
    let mut i = connect(&vy_url(addr, "/", meeting, Some("true"))).await;
    expect_ready(&mut c, "customer").await;
    expect_ready(&mut i, "instructor").await;
    (i, c)
}

/// `text` sent on `from` arrives on `to` byte-identical, as a text frame.
async fn vy_relayed(from: &mut Ws, to: &mut Ws, text: &str, what: &str) {
    send_text(from, text).await;
    assert_eq!(next_text(to, what).await, text, "{what}: the relayed frame must be byte-identical");
}

/// The native signaling URL of a join response.
fn signal_url(join: &Value) -> String {
    let base = join["signal_url"].as_str().expect("join has signal_url");
    let token = join["session_token"].as_str().expect("join has session_token");
    format!("{base}?token={token}")
}

/// Connects a native socket and returns it with its welcome.
async fn native(join: &Value, who: &str) -> (Ws, Value) {
    let mut ws = connect(&signal_url(join)).await;
    let welcome = next_json(&mut ws, &format!("welcome of the {who}")).await;
    assert_eq!(welcome["type"], "welcome", "{who}: the first frame must be the welcome: {welcome}");
    (ws, welcome)
}

/// The next native frame, which must be of `kind`.
async fn expect_kind(ws: &mut Ws, kind: &str, who: &str) -> Value {
    let v = next_json(ws, &format!("{kind} for the {who}")).await;
    assert_eq!(v["type"], kind, "{who}: expected a {kind} frame, got {v}");
    v
}

/// Host and guest of `booking` on native sockets, paired: (host, guest, session).
async fn native_pair(d: &Daemon, booking: &Value) -> (Ws, Ws, u64) {
    let (mut h, _) = native(&join_as(d, booking, "host").await, "host").await;
    let (mut g, _) = native(&join_as(d, booking, "guest").await, "guest").await;
    let rh = expect_kind(&mut h, "ready", "host").await;
    let rg = expect_kind(&mut g, "ready", "guest").await;
    assert_eq!(rh["session"], rg["session"], "both sides get the same session: {rh} {rg}");
    (h, g, rh["session"].as_u64().expect("session is a number"))
}

/// Virtual Y mode is off by default.
const VY: &str = "[signaling.vy]\nenabled = true\n";

const PEERJS: &str = "[signaling.peerjs]\nenabled = true\n";

/// The PeerJS socket URL as the peerjs client builds it.
fn pj_url(addr: SocketAddr, path: &str, key: &str, id: &str, token: &str) -> String {
    format!("ws://{addr}{path}peerjs?key={key}&id={id}&token={token}&version=1.5.5")
}

/// A PeerJS socket that must get exactly `{"type":"OPEN"}` first.
async fn pj_open(addr: SocketAddr, key: &str, id: &str, token: &str) -> Ws {
    let mut ws = connect(&pj_url(addr, "/", key, id, token)).await;
    assert_eq!(next_text(&mut ws, &format!("OPEN for {id}")).await, r#"{"type":"OPEN"}"#, "peerjs {id}");
    ws
}

/// `{"type":T,"dst":D,"payload":P}` with a spoofed `src` that the server must overwrite.
fn pj_msg(kind: &str, dst: &str, payload: &str) -> String {
    format!(r#"{{"type":"{kind}","src":"spoofed","dst":"{dst}","payload":{payload}}}"#)
}

/// What the server must deliver for [`pj_msg`]: src forced to the sender, the four fields only, payload verbatim.
fn pj_delivered(kind: &str, src: &str, dst: &str, payload: &str) -> String {
    format!(r#"{{"type":"{kind}","src":"{src}","dst":"{dst}","payload":{payload}}}"#)
}

const HEARTBEAT: &str = r#"{"type":"HEARTBEAT"}"#;

crate::on_both_backends!(
    vy_cancel_closes_4004,
    native_welcome_ready_sessions_signal_and_peer_left,
    native_newest_connection_per_role_wins
);

// ---------------------------------------------------------------------------------------------------------------
// vy: research/signaling.md §10.6 VY cases 1-9
// ---------------------------------------------------------------------------------------------------------------

/// VY 1, 2 and 7: `ready` exactly once to both, in either arrival order; no role means customer, and so does any
/// `isInstructorRole` other than exactly `true`.
#[tokio::test]
async fn vy_ready_exactly_once_in_either_order_and_role_defaults_to_customer() {
    let mut d = Daemon::start(VY);

    // 1: customer, then instructor.
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let (mut i, mut c) = vy_pair(d.http, &m).await;
    quiet(&mut i, QUIET, "VY 1: instructor after its one ready").await;
    quiet(&mut c, QUIET, "VY 1: customer after its one ready").await;

    // 2: instructor, then customer.
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let mut i = connect(&vy_url(d.http, "/", &m, Some("true"))).await;
    quiet(&mut i, Duration::from_millis(300), "VY 2: instructor alone").await;
    let mut c = connect(&vy_url(d.http, "/", &m, Some("false"))).await;
    expect_ready(&mut i, "instructor (VY 2)").await;
    expect_ready(&mut c, "customer (VY 2)").await;
    quiet(&mut i, QUIET, "VY 2: instructor after its one ready").await;
    quiet(&mut c, QUIET, "VY 2: customer after its one ready").await;

    // 7: `?meetingId=…` without a role is the customer (the Virtual Y README's test URL).
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let mut i = connect(&vy_url(d.http, "/", &m, Some("true"))).await;
    quiet(&mut i, Duration::from_millis(300), "VY 7: instructor alone").await;
    let mut c = connect(&vy_url(d.http, "/", &m, None)).await;
    expect_ready(&mut c, "role-less customer (VY 7)").await;
    expect_ready(&mut i, "instructor (VY 7)").await;
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"x"}"#, "VY 7: instructor to role-less customer").await;

    // `TRUE` is not exactly `true`: a customer. While the role-less customer is live it is refused (4009); once that
    // one has left, it pairs with the instructor (an instructor would have been refused: the instructor is live).
    let mut c2 = connect(&vy_url(d.http, "/", &m, Some("TRUE"))).await;
    expect_close(&mut c2, 4009, "VY 7: isInstructorRole=TRUE while both slots are live").await;
    c.close(None).await.unwrap();
    until_end(&mut c).await;
    let mut c2 = connect(&vy_url(d.http, "/", &m, Some("TRUE"))).await;
    expect_ready(&mut c2, "isInstructorRole=TRUE customer").await;
    expect_ready(&mut i, "instructor after the customer was replaced").await;
    vy_relayed(&mut c2, &mut i, r#"{"type":"answer","sdp":"y"}"#, "VY 7: TRUE customer to instructor").await;

    let text = d.metrics().await;
    assert_eq!(
        metric(&text, "duet_signal_connections{mode=\"vy\"}"),
        Some(6.0),
        "vy sockets open: the pairs of cases 1 and 2, and of case 7 (its first customer left)"
    );
    assert!(metric(&text, "duet_signal_ready_total").unwrap_or(0.0) >= 4.0, "ready count in metrics:\n{text}");
    assert_alive(&mut d);
}

/// VY 3 and 4: frames reach the partner byte-identical as text, in both directions and whatever they hold; a frame
/// sent while the partner is absent is dropped for good; binary frames are never relayed.
#[tokio::test]
async fn vy_relays_text_verbatim_and_drops_frames_while_alone() {
    let d = Daemon::start(VY);
    let (m, _) = vy_booking(&d, 60, 1800).await;

    // 4: the customer is alone; its frames go nowhere and are not kept for later.
    let mut c = connect(&vy_url(d.http, "/", &m, Some("false"))).await;
    send_text(&mut c, r#"{"type":"candidate","candidate":{"candidate":"sent-while-alone"}}"#).await;
    send_text(&mut c, "ready").await;
    quiet(&mut c, Duration::from_millis(400), "VY 4: the lone customer's frames are not echoed").await;
    let mut i = connect(&vy_url(d.http, "/", &m, Some("true"))).await;
    expect_ready(&mut c, "customer").await;
    expect_ready(&mut i, "instructor").await;
    quiet(&mut i, Duration::from_secs(1), "VY 4: nothing sent while the instructor was absent may arrive later").await;

    // 3: the instructor's offer reaches the customer byte-identical as a text frame.
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"x"}"#, "VY 3").await;

    // Verbatim means verbatim: whitespace, escapes, non-ASCII, every simple-peer signal type, even non-JSON (the
    // Virtual Y server relays everything; strict mode is off by default).
    let frames = [
        "{ \"type\" : \"answer\",\"sdp\":\"v=0\\r\\no=- 46 2 IN IP4 127.0.0.1\\r\\n\\u00e9 \u{fc}\"  }",
        r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdpMLineIndex":0,"sdpMid":"0"}}"#,
        r#"{"type":"renegotiate","renegotiate":true}"#,
        r#"{"type":"transceiverRequest","transceiverRequest":{"kind":"video"}}"#,
        "not json at all \u{1f600}",
        "",
    ];
    for f in frames {
        vy_relayed(&mut c, &mut i, f, &format!("customer to instructor: {f:?}")).await;
        vy_relayed(&mut i, &mut c, f, &format!("instructor to customer: {f:?}")).await;
    }

    // Binary frames are dropped (a relayed Blob would break the client's JSON.parse); the socket stays usable.
    i.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    quiet(&mut c, QUIET, "a binary frame must not be relayed").await;
    quiet(&mut i, Duration::from_millis(100), "a binary frame gets no answer in vy mode").await;
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"after binary"}"#, "relay after a binary frame").await;
}

/// VY 5 (issue 7): roles are self-declared in Virtual Y, so a newcomer never displaces a live participant, whatever
/// role it claims: it is closed with 4009 before any frame of the room, and the real pair goes on talking. (Before
/// the fix an anonymous `isInstructorRole=true` closed the real host with 4008 and received the guest's offer.)
#[tokio::test]
async fn vy_a_stranger_never_takes_over_a_live_meeting() {
    let d = Daemon::start(VY);
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let (mut i, mut c) = vy_pair(d.http, &m).await;
    for role in ["true", "false"] {
        let mut stranger = connect(&vy_url(d.http, "/", &m, Some(role))).await;
        let (texts, code) = closed_within(&mut stranger, WAIT, "the stranger").await;
        assert_eq!(code, Some(4009), "isInstructorRole={role}: the stranger is refused");
        assert!(texts.is_empty(), "isInstructorRole={role}: the stranger got frames of the room: {texts:?}");
    }
    // The guest's offer still reaches the real host, and only it.
    vy_relayed(&mut c, &mut i, r#"{"type":"offer","sdp":"v=0 secret-sdp-from-guest"}"#, "guest to the real host").await;
    vy_relayed(&mut i, &mut c, r#"{"type":"answer","sdp":"v=0 host"}"#, "host to the guest").await;
    let text = d.metrics().await;
    let refused = metric(&text, r#"duet_signal_upgrades_refused_total{mode="vy",reason="slot_taken"}"#);
    assert_eq!(refused, Some(2.0), "{text}");
    assert_eq!(metric(&text, r#"duet_signal_closes_total{code="4009"}"#), Some(2.0));

    // A plain reconnect (the old socket closed) gets back at once; the partner hears nothing but `ready`.
    c.close(None).await.unwrap();
    until_end(&mut c).await;
    quiet(&mut i, QUIET, "the instructor when the customer left").await;
    let mut c = connect(&vy_url(d.http, "/", &m, Some("false"))).await;
    expect_ready(&mut c, "customer after its reconnect").await;
    expect_ready(&mut i, "instructor after the customer's reconnect").await;
}

/// The Virtual Y client reconnects every second and ignores close codes: a participant whose old socket died
/// silently (it answers no ping) is refused while the server probes the old socket, and gets back in within one
/// ping interval; the replaced socket is closed with 4008.
#[tokio::test]
async fn vy_a_participant_whose_socket_died_gets_back_within_a_ping_interval() {
    let d = Daemon::start(&format!("{VY}[signaling]\nping_interval = \"4s\"\npong_timeout = \"1s\"\n"));
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let (dead, mut c) = vy_pair(d.http, &m).await;
    // `dead` is never read again: it answers no ping, as a socket whose network went away.
    let started = Instant::now();
    let mut refusals = 0;
    let mut i = loop {
        assert!(started.elapsed() < Duration::from_secs(4), "not back within one ping interval ({refusals} refusals)");
        let mut ws = connect(&vy_url(d.http, "/", &m, Some("true"))).await;
        match recv(&mut ws, WAIT).await {
            Got::Text(t) if t == "ready" => break ws,
            Got::Close(Some(4009)) => refusals += 1,
            other => panic!("the returning instructor got {other:?}"),
        }
        sleep(Duration::from_millis(500)).await;
    };
    assert!(refusals >= 1, "the first retry must be refused while the old socket may still be live");
    expect_ready(&mut c, "the customer when the instructor is back").await;
    vy_relayed(&mut c, &mut i, r#"{"type":"offer","sdp":"again"}"#, "customer to the returned instructor").await;
    drop(dead);
}

/// VY 6: an idle pair sees no frame but WebSocket pings (here every second), answers them automatically, and stays
/// connected.
#[tokio::test]
async fn vy_idle_sockets_get_only_pings() {
    let d = Daemon::start(&format!("{VY}[signaling]\nping_interval = \"1s\"\n"));
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let (mut i, mut c) = vy_pair(d.http, &m).await;
    let idle = Duration::from_millis(3500);
    let (pi, pc) =
        tokio::join!(quiet(&mut i, idle, "VY 6: idle instructor"), quiet(&mut c, idle, "VY 6: idle customer"));
    assert!(pi >= 2 && pc >= 2, "VY 6: WebSocket pings every 1 s expected; in {idle:?} saw {pi} and {pc}");
    // The pongs kept both sockets alive: the relay still works.
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"after idle"}"#, "VY 6: relay after the idle period").await;

    // A socket that never answers pings (a raw client that reads nothing, so sends no pongs) is closed after two
    // unanswered ones; its partner is told nothing, and the slot is free for the next connection.
    c.close(None).await.unwrap();
    until_end(&mut c).await;
    let path = format!("/?meetingId={m}&isInstructorRole=false");
    let mut dead = raw_upgrade(d.http, &path).await.expect("raw customer upgraded");
    expect_ready(&mut i, "instructor with the raw customer").await;
    quiet(&mut i, Duration::from_secs(4), "the instructor while the customer answers no ping").await;
    let frames = server_frames(&mut dead, WAIT).await;
    let pings = frames.iter().filter(|(op, _)| *op == 0x9).count();
    assert_eq!(frames.first(), Some(&(0x1, b"ready".to_vec())), "the raw customer's frames: {frames:?}");
    assert!(pings >= 2, "pings before the timeout: {frames:?}");
    let close = frames.iter().find(|(op, _)| *op == 0x8).unwrap_or_else(|| panic!("no close frame: {frames:?}"));
    assert_eq!(close.1.get(..2), Some(&1001u16.to_be_bytes()[..]), "two unanswered pings close with 1001: {close:?}");
    let mut c = connect(&vy_url(d.http, "/", &m, Some("false"))).await;
    expect_ready(&mut c, "customer after the ping timeout").await;
    expect_ready(&mut i, "instructor after the customer's ping timeout").await;
}

/// Strict mode (research §10.2 rule 4, off by default): only simple-peer signal objects are relayed, silently.
#[tokio::test]
async fn vy_strict_mode_relays_only_simple_peer_signals() {
    let d = Daemon::start("[signaling.vy]\nenabled = true\nstrict = true\n");
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let (mut i, mut c) = vy_pair(d.http, &m).await;
    for junk in ["not json", r#"{"type":"offer"}"#, r#"[{"sdp":"x"}]"#, r#"{"sdp":""}"#, r#"{"sdp":"x"} {}"#, "ready"] {
        send_text(&mut i, junk).await;
    }
    quiet(&mut c, QUIET, "strict mode drops frames simple-peer would choke on").await;
    quiet(&mut i, Duration::from_millis(100), "strict mode drops silently").await;
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"x"}"#, "strict: an offer").await;
    vy_relayed(&mut c, &mut i, r#"{"renegotiate":true}"#, "strict: renegotiate").await;
}

/// VY 8 and 9: any path works; the booking's window gates the upgrade (403 outside, 101 inside, per role: the
/// instructor is the host and may enter earlier); a missing or empty meetingId is refused.
#[tokio::test]
async fn vy_any_path_and_the_booking_window_gate() {
    let mut d = Daemon::start(VY);

    // 8: paths other than `/` (the Virtual Y server only worked with `/`; Duet accepts any).
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let mut c = connect(&vy_url(d.http, "/personal-training/signal", &m, Some("false"))).await;
    quiet(&mut c, Duration::from_millis(300), "VY 8: customer alone").await;
    let mut i = connect(&vy_url(d.http, "/x", &m, Some("true"))).await;
    expect_ready(&mut c, "customer on a deep path").await;
    expect_ready(&mut i, "instructor on /x").await;
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"x"}"#, "VY 8").await;

    // 9: a booking starting in 2 hours: 403 at the upgrade for both roles.
    let (late, _) = vy_booking(&d, 7200, 1800).await;
    for role in [Some("true"), Some("false"), None] {
        let (status, body) = refused(&vy_url(d.http, "/", &late, role), None).await;
        assert_eq!(status, 403, "VY 9: outside the window (role {role:?}) must be 403 at the upgrade: {body}");
    }
    // A meeting id no booking carries is never open either.
    let (status, _) = refused(&vy_url(d.http, "/", &meeting_id(), Some("true")), None).await;
    assert_eq!(status, 403, "an unknown meetingId must be refused with 403");

    // The window is per role: 12 minutes before the start the host (instructor, 15 min early) may enter, the
    // guest (customer, 10 min early) not yet.
    let (soon, _) = vy_booking(&d, 720, 1800).await;
    let _instructor = connect(&vy_url(d.http, "/", &soon, Some("true"))).await;
    let (status, body) = refused(&vy_url(d.http, "/", &soon, Some("false")), None).await;
    assert_eq!(status, 403, "the customer 12 min before the start is outside its window: {body}");

    // meetingId empty: 400 before the upgrade (§10.2). meetingId absent: not a vy request at all; it must not
    // be upgraded either.
    let (status, body) = refused(&format!("ws://{}/?meetingId=&isInstructorRole=true", d.http), None).await;
    assert_eq!(status, 400, "an empty meetingId must be refused with 400: {body}");
    let (status, body) = refused(&format!("ws://{}/?isInstructorRole=true", d.http), None).await;
    assert!(status == 400 || status == 404, "no meetingId must be refused (400 or 404), got {status}: {body}");
    assert_alive(&mut d);
}

/// `[signaling.vy] listen`: a listener of its own (its address is `vy` in the ready line) serving vy on any path,
/// sharing rooms with the main listener, and serving nothing else.
#[tokio::test]
async fn vy_dedicated_listener() {
    let (d, ready) = common::start_with_ready("[signaling.vy]\nenabled = true\nlisten = \"127.0.0.1:0\"\n");
    let vy = ready_addr(&ready, "vy").unwrap_or_else(|| panic!("the ready line must name the vy listener: {ready}"));
    assert_ne!(vy, d.http, "the vy listener is a listener of its own");
    let (m, _) = vy_booking(&d, 60, 1800).await;

    let (mut i, mut c) = vy_pair(vy, &m).await;
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"x"}"#, "relay on the vy listener").await;
    vy_relayed(&mut c, &mut i, r#"{"type":"answer","sdp":"y"}"#, "relay on the vy listener, back").await;

    // Same hub: the customer's slot is live, so a customer arriving on the main listener is refused; once the first
    // one has left, the second pairs with the instructor on the vy listener.
    let mut c2 = connect(&vy_url(d.http, "/", &m, Some("false"))).await;
    expect_close(&mut c2, 4009, "a second customer from the other listener while the first is live").await;
    c.close(None).await.unwrap();
    until_end(&mut c).await;
    let mut c2 = connect(&vy_url(d.http, "/", &m, Some("false"))).await;
    expect_ready(&mut c2, "customer on the main listener").await;
    expect_ready(&mut i, "instructor on the vy listener").await;
    vy_relayed(&mut i, &mut c2, r#"{"type":"offer","sdp":"across listeners"}"#, "across listeners").await;

    // The window gate applies there too, and the listener serves no API.
    let (late, _) = vy_booking(&d, 7200, 1800).await;
    let (status, _) = refused(&vy_url(vy, "/", &late, Some("true")), None).await;
    assert_eq!(status, 403, "outside the window on the vy listener");
    let r = reqwest::get(format!("http://{vy}/duet.js")).await.expect("GET /duet.js on the vy listener");
    assert_eq!(r.status().as_u16(), 404, "the vy listener serves only Virtual Y upgrades");
}

/// `require_booking = false`: the literal open relay of the original server, any meetingId, one room each.
#[tokio::test]
async fn vy_open_relay_without_booking() {
    let d = Daemon::start("[signaling.vy]\nenabled = true\nrequire_booking = false\n");
    let (mut i, mut c) = vy_pair(d.http, "7348347").await;
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"x"}"#, "open relay").await;
    vy_relayed(&mut c, &mut i, r#"{"type":"answer","sdp":"y"}"#, "open relay, back").await;

    // Another meeting is another room: its instructor neither pairs with this customer nor receives its frames.
    let mut other = connect(&vy_url(d.http, "/", "another-meeting", Some("true"))).await;
    send_text(&mut c, r#"{"type":"candidate","candidate":{"candidate":"c"}}"#).await;
    assert_eq!(next_text(&mut i, "own partner").await, r#"{"type":"candidate","candidate":{"candidate":"c"}}"#);
    quiet(&mut other, QUIET, "the instructor of another meeting").await;
}

/// Cancelling the booking closes its vy sockets with 4004; new upgrades are refused.
async fn vy_cancel_closes_4004(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, VY) else { return };
    let (m, booking) = vy_booking(&d, 60, 1800).await;
    let (mut i, mut c) = vy_pair(d.http, &m).await;
    let id = booking["id"].as_str().unwrap();
    let (status, body) = cancel_booking(&d, id).await;
    assert_eq!(status, 200, "cancel: {body}");
    expect_close(&mut i, 4004, "instructor after cancel").await;
    expect_close(&mut c, 4004, "customer after cancel").await;
    let (status, _) = refused(&vy_url(d.http, "/", &m, Some("true")), None).await;
    assert_eq!(status, 403, "a cancelled booking's meeting is not open");
}

// ---------------------------------------------------------------------------------------------------------------
// peerjs: research/signaling.md §10.6 PeerJS cases 1-5, §4, §10.4
// ---------------------------------------------------------------------------------------------------------------

/// PeerJS 1 and 2: `OPEN` on a fresh id; the same id with another token gets `ID-TAKEN` and a close while the
/// registered socket is untouched; the same token re-attaches without `OPEN`; bad parameters get upstream's `ERROR`.
#[tokio::test]
async fn peerjs_open_id_taken_reattach_and_errors() {
    let d = Daemon::start(PEERJS);
    let mut alice = pj_open(d.http, "peerjs", "alice", "t1").await;
    quiet(&mut alice, Duration::from_millis(300), "PeerJS 1: only OPEN").await;

    let mut thief = connect(&pj_url(d.http, "/", "peerjs", "alice", "t2")).await;
    let (texts, _code) = closed_within(&mut thief, WAIT, "PeerJS 2: same id, other token").await;
    assert_eq!(texts, [r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#], "PeerJS 2");

    let mut bob = pj_open(d.http, "peerjs", "bob", "tb").await;
    let payload = r#"{"sdp":{"type":"offer","sdp":"v=0"},"type":"data","connectionId":"dc_1"}"#;
    send_text(&mut bob, &pj_msg("OFFER", "alice", payload)).await;
    assert_eq!(
        next_text(&mut alice, "alice after the ID-TAKEN attempt").await,
        pj_delivered("OFFER", "bob", "alice", payload),
        "the registered socket keeps its id"
    );

    // Same token: re-attach, no OPEN; the previous socket is closed (4008) and messages go to the new one.
    let mut alice2 = connect(&pj_url(d.http, "/", "peerjs", "alice", "t1")).await;
    expect_close(&mut alice, 4008, "alice's previous socket after a same-token re-attach").await;
    quiet(&mut alice2, Duration::from_millis(300), "no OPEN on a same-token re-attach").await;
    send_text(&mut bob, &pj_msg("ANSWER", "alice", payload)).await;
    assert_eq!(next_text(&mut alice2, "re-attached alice").await, pj_delivered("ANSWER", "bob", "alice", payload));

    // Upstream's ERROR texts, then a close.
    for (url, msg) in [
        (pj_url(d.http, "/", "peerjs", "carol", ""), "No id, token, or key supplied to websocket server"),
        (format!("ws://{}/peerjs?key=peerjs&token=x", d.http), "No id, token, or key supplied to websocket server"),
        (pj_url(d.http, "/", "not-the-key", "carol", "tc"), "Invalid key provided"),
    ] {
        let mut ws = connect(&url).await;
        let (texts, _) = closed_within(&mut ws, WAIT, &format!("ERROR for {url}")).await;
        let expected = format!(r#"{{"type":"ERROR","payload":{{"msg":"{msg}"}}}}"#);
        assert_eq!(texts, [expected], "{url}");
    }
}

/// PeerJS 3 and 4, and the relay: `src` forced and `payload` verbatim; an OFFER to an offline id is delivered when
/// it connects within `expire_timeout`, otherwise the sender gets one `EXPIRE` with `src` = the target; LEAVE is
/// relayed.
#[tokio::test]
async fn peerjs_relay_queue_and_expire() {
    let d = Daemon::start(&format!("{PEERJS}expire_timeout = \"1s\"\n"));
    let mut alice = pj_open(d.http, "peerjs", "alice", "ta").await;
    let mut bob = pj_open(d.http, "peerjs", "bob", "tb").await;
    let payload =
        "{ \"sdp\" : {\"type\":\"offer\",\"sdp\":\"v=0\\r\\n\\u00e9\"},\"type\":\"media\",\"connectionId\":\"mc_x\"}";
    let sent =
        format!(r#"{{"type":"OFFER","src":"mallory","dst":"bob","extra":"dropped","payload":{payload},"more":[1]}}"#);
    send_text(&mut alice, &sent).await;
    assert_eq!(
        next_text(&mut bob, "relayed OFFER").await,
        pj_delivered("OFFER", "alice", "bob", payload),
        "src forced to the sender, only type/src/dst/payload, payload byte-identical"
    );

    // 3: carol is offline; she connects well within expire_timeout and gets the OFFER after OPEN.
    send_text(&mut alice, &pj_msg("OFFER", "carol", payload)).await;
    sleep(Duration::from_millis(200)).await;
    let mut carol = pj_open(d.http, "peerjs", "carol", "tc").await;
    assert_eq!(
        next_text(&mut carol, "PeerJS 3: queued OFFER").await,
        pj_delivered("OFFER", "alice", "carol", payload),
        "PeerJS 3: the queued OFFER is delivered with src forced"
    );
    quiet(&mut alice, Duration::from_millis(1500), "PeerJS 3: no EXPIRE for a delivered queue").await;

    // 4: dave never connects: one EXPIRE with src = dave.
    let t0 = Instant::now();
    send_text(&mut alice, &pj_msg("OFFER", "dave", payload)).await;
    send_text(&mut alice, &pj_msg("CANDIDATE", "dave", r#"{"candidate":{"candidate":"c"}}"#)).await;
    let expire = next_json(&mut alice, "PeerJS 4: EXPIRE").await;
    assert_eq!(expire, json!({"type": "EXPIRE", "src": "dave", "dst": "alice"}), "PeerJS 4");
    assert!(t0.elapsed() >= Duration::from_millis(800), "EXPIRE came before expire_timeout: {:?}", t0.elapsed());
    quiet(&mut alice, QUIET, "PeerJS 4: one EXPIRE per sender and target").await;
    let mut dave = pj_open(d.http, "peerjs", "dave", "td").await;
    quiet(&mut dave, QUIET, "the expired messages are gone").await;

    // LEAVE to a connected peer is relayed (upstream's transmission handler); to an absent one it is not queued.
    send_text(&mut alice, r#"{"type":"LEAVE","dst":"bob"}"#).await;
    assert_eq!(next_json(&mut bob, "LEAVE").await, json!({"type": "LEAVE", "src": "alice", "dst": "bob"}));
    send_text(&mut alice, r#"{"type":"LEAVE","dst":"erin"}"#).await;
    // Let the hub see the LEAVE while erin is still absent (sockets are separate: no ordering between them).
    sleep(Duration::from_millis(300)).await;
    let mut erin = pj_open(d.http, "peerjs", "erin", "te").await;
    quiet(&mut erin, QUIET, "LEAVE is never queued").await;
}

/// PeerJS 5: a socket without HEARTBEAT for longer than `alive_timeout` is closed and its id freed; one that sends
/// HEARTBEATs stays.
#[tokio::test]
async fn peerjs_heartbeat_timeout() {
    let d = Daemon::start(&format!("{PEERJS}alive_timeout = \"2s\"\n"));
    let mut silent = pj_open(d.http, "peerjs", "silent", "ts").await;
    let t0 = Instant::now();
    let mut alive = pj_open(d.http, "peerjs", "alive", "tl").await;
    let beating = tokio::spawn(async move {
        for _ in 0..8 {
            alive.send(Message::text(HEARTBEAT)).await.expect("send HEARTBEAT");
            sleep(Duration::from_millis(500)).await;
        }
        alive
    });
    let (texts, code) = closed_within(&mut silent, Duration::from_secs(2) + WAIT, "PeerJS 5: silent socket").await;
    let after = t0.elapsed();
    assert!(texts.is_empty(), "PeerJS 5: frames before the close: {texts:?}");
    assert_eq!(code, Some(1001), "PeerJS 5: closed for silence (1001 \"alive timeout\")");
    assert!(after >= Duration::from_millis(1500), "closed after {after:?}, before alive_timeout (2 s)");
    let mut alive = timeout(WAIT, beating).await.expect("heartbeats within 4 s").expect("heartbeat task");

    // 4 s of HEARTBEATs: still registered and reachable. The silent id is free again.
    let mut x = pj_open(d.http, "peerjs", "x", "tx").await;
    send_text(&mut x, &pj_msg("OFFER", "alive", "{}")).await;
    assert_eq!(next_text(&mut alive, "the heartbeating socket").await, pj_delivered("OFFER", "x", "alive", "{}"));
    let _silent_again = pj_open(d.http, "peerjs", "silent", "another-token").await;
}

/// The HTTP routes of peerjs-server: `GET {path}` JSON, `GET {path}{key}/id` a UUID v4, `GET {path}{key}/peers` 401
/// unless `allow_discovery`; a custom `path`; vy upgrades still work on `/`.
#[tokio::test]
async fn peerjs_http_routes() {
    let d = Daemon::start(&format!("{VY}{PEERJS}"));
    let r = reqwest::get(d.url("/")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET /");
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "GET / content-type {ct}");
    let info: Value = r.json().await.unwrap();
    assert_eq!(info["name"], "PeerJS Server", "{info}");
    assert_eq!(info["description"], "A server side element to broker connections between PeerJS clients.");

    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = reqwest::get(d.url("/peerjs/id?ts=17000000000000.123&version=1.5.5")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "GET /peerjs/id");
        let id = r.text().await.unwrap();
        let u = uuid::Uuid::parse_str(&id).unwrap_or_else(|e| panic!("/peerjs/id is not a UUID ({e}): {id:?}"));
        assert_eq!(u.get_version_num(), 4, "/peerjs/id must be a UUID v4: {id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "fresh ids");
    let r = reqwest::get(d.url("/peerjs/peers")).await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "GET /peerjs/peers without allow_discovery");

    // A session token works as key for /id too.
    let b = d.booking_now(60, 1800).await;
    let token = join_as(&d, &b, "guest").await["session_token"].as_str().unwrap().to_string();
    let r = reqwest::get(d.url(&format!("/{token}/id"))).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET /{{session token}}/id");

    // vy on `/` is still vy when peerjs is mounted at `/`.
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let (mut i, mut c) = vy_pair(d.http, &m).await;
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"x"}"#, "vy beside peerjs").await;

    // A custom path and discovery.
    let d = Daemon::start(&format!("{VY}{PEERJS}path = \"/myapp\"\nallow_discovery = true\n"));
    let r = reqwest::get(d.url("/myapp/")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET /myapp/");
    let mut alice = connect(&pj_url(d.http, "/myapp/", "peerjs", "alice", "ta")).await;
    assert_eq!(next_text(&mut alice, "OPEN at /myapp/peerjs").await, r#"{"type":"OPEN"}"#);
    let r = reqwest::get(d.url("/myapp/peerjs/peers")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET /myapp/peerjs/peers with allow_discovery");
    let peers: Value = r.json().await.unwrap();
    assert_eq!(peers, json!(["alice"]), "discovery lists the registered ids");
    // Elsewhere, an upgrade without meetingId is a malformed Virtual Y request (research §10.2: 400), not PeerJS.
    let (status, _) = refused(&pj_url(d.http, "/", "peerjs", "bob", "tb"), None).await;
    assert_eq!(status, 400, "the socket lives under the configured path only");
}

/// A session token from `POST /v1/join` as `key` scopes the client to its booking: the two participants talk; a
/// client with another booking's token, or the static key, cannot reach them (its messages expire); cancelling the
/// booking closes its sockets with 4004.
#[tokio::test]
async fn peerjs_session_token_scopes_to_the_booking() {
    let d = Daemon::start(&format!("{PEERJS}expire_timeout = \"1s\"\n"));
    let b1 = d.booking_now(60, 1800).await;
    let b2 = d.booking_now(60, 1800).await;
    let key = |j: &Value| j["session_token"].as_str().unwrap().to_string();
    let host1 = key(&join_as(&d, &b1, "host").await);
    let guest1 = key(&join_as(&d, &b1, "guest").await);
    let guest2 = key(&join_as(&d, &b2, "guest").await);

    let mut alice = pj_open(d.http, &host1, "alice", "ta").await;
    let mut bob = pj_open(d.http, &guest1, "bob", "tb").await;
    let offer = r#"{"sdp":{"type":"offer","sdp":"v=0"},"type":"media","connectionId":"mc_1"}"#;
    send_text(&mut alice, &pj_msg("OFFER", "bob", offer)).await;
    assert_eq!(next_text(&mut bob, "bob from alice").await, pj_delivered("OFFER", "alice", "bob", offer));
    send_text(&mut bob, &pj_msg("ANSWER", "alice", offer)).await;
    assert_eq!(next_text(&mut alice, "alice from bob").await, pj_delivered("ANSWER", "bob", "alice", offer));

    // Another booking's token: its own namespace (the same id is not "taken"), and bob is unreachable.
    let mut mallory = pj_open(d.http, &guest2, "alice", "tm").await;
    send_text(&mut mallory, &pj_msg("OFFER", "bob", offer)).await;
    assert_eq!(next_json(&mut mallory, "EXPIRE for mallory").await, json!({"type":"EXPIRE","src":"bob","dst":"alice"}));
    // The static key is another namespace again.
    let mut eve = pj_open(d.http, "peerjs", "eve", "te").await;
    send_text(&mut eve, &pj_msg("OFFER", "bob", offer)).await;
    assert_eq!(next_json(&mut eve, "EXPIRE for eve").await, json!({"type":"EXPIRE","src":"bob","dst":"eve"}));
    quiet(&mut bob, QUIET, "bob hears from nobody outside his booking").await;
    quiet(&mut alice, QUIET, "alice hears from nobody outside her booking").await;

    let (status, body) = cancel_booking(&d, b1["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "cancel: {body}");
    expect_close(&mut alice, 4004, "scoped alice after cancel").await;
    expect_close(&mut bob, 4004, "scoped bob after cancel").await;
    quiet(&mut mallory, QUIET, "another booking's client is untouched by the cancel").await;
    // As upstream, `/{key}/id` hands out ids without checking the key; the socket is where a dead key is refused.
    let mut late = connect(&pj_url(d.http, "/", &host1, "carol", "tc")).await;
    let text = next_text(&mut late, "ERROR for a cancelled booking's token").await;
    assert!(text.contains("Invalid key provided"), "a cancelled booking's token is no key any more: {text}");
}

// ---------------------------------------------------------------------------------------------------------------
// native v1: research/signaling.md §10.3
// ---------------------------------------------------------------------------------------------------------------

/// welcome fields; ready with the session counter, again after a reconnect; `data` relayed byte-identical;
/// stale session, no peer, ping/pong; peer-left on close and on leave.
async fn native_welcome_ready_sessions_signal_and_peer_left(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let b = d.booking_now(60, 1800).await;
    let host_id = participant(&b, "host")["id"].as_str().unwrap().to_string();
    let guest_id = participant(&b, "guest")["id"].as_str().unwrap().to_string();
    let hj = join_as(&d, &b, "host").await;
    let gj = join_as(&d, &b, "guest").await;

    let (mut h, w) = native(&hj, "host").await;
    assert_eq!(w["v"], 1, "{w}");
    assert_eq!(w["booking"], b["id"], "{w}");
    assert_eq!(w["you"], json!({"peer": host_id, "role": "host"}), "{w}");
    assert_eq!(w["initiator"], true, "the host initiates: {w}");
    assert_eq!(w["ice_servers"], hj["ice_servers"], "welcome carries the join's ICE servers: {w}");
    let turn = common::turn_server(&w["ice_servers"]);
    assert!(turn["urls"][0].as_str().unwrap().starts_with("turn:"), "{turn}");
    assert!(turn["credential"].as_str().is_some_and(|c| !c.is_empty()), "{turn}");
    for k in ["host_opens_at", "opens_at", "join_cutoff_at", "hard_end_at"] {
        assert_eq!(w["window"][k], b["window"][k], "welcome window.{k}: {w}");
    }
    assert_eq!(w["ping_interval_s"], 20, "{w}");
    send_text(&mut h, r#"{"type":"signal","data":{"type":"offer","sdp":"x"}}"#).await;
    let e = expect_kind(&mut h, "error", "host alone").await;
    assert_eq!(e["code"], "no_peer", "a signal with nobody to receive it: {e}");
    quiet(&mut h, Duration::from_millis(300), "no ready while alone").await;

    let (mut g, wg) = native(&gj, "guest").await;
    assert_eq!(wg["you"], json!({"peer": guest_id, "role": "guest"}), "{wg}");
    assert_eq!(wg["initiator"], false, "{wg}");
    let rh = expect_kind(&mut h, "ready", "host").await;
    let rg = expect_kind(&mut g, "ready", "guest").await;
    assert_eq!(rh, json!({"type":"ready","session":1,"peer":{"peer": guest_id, "role":"guest"}}));
    assert_eq!(rg, json!({"type":"ready","session":1,"peer":{"peer": host_id, "role":"host"}}));

    // `data` byte-identical (odd spacing, escapes, non-ASCII, key order).
    let data = "{ \"sdp\" : \"v=0\\r\\no=- 46 2 IN IP4 127.0.0.1\\r\\n\\u00e9 \u{fc}\" ,\"type\":\"offer\"  }";
    send_text(&mut h, &format!(r#"{{"type":"signal","session":1,"data":{data}}}"#)).await;
    let got = next_text(&mut g, "signal for the guest").await;
    assert!(got.contains(&format!("\"data\":{data}")), "data must be relayed byte-identical; got {got}");
    let v: Value = serde_json::from_str(&got).unwrap();
    assert_eq!((&v["type"], &v["session"], &v["from"]), (&json!("signal"), &json!(1), &json!(host_id)), "{v}");
    // Without `session`: the current one.
    send_text(&mut g, r#"{"type":"signal","data":{"type":"answer","sdp":"y"}}"#).await;
    let v = expect_kind(&mut h, "signal", "host").await;
    assert_eq!(v, json!({"type":"signal","session":1,"from": guest_id,"data":{"type":"answer","sdp":"y"}}));

    // peer-left on close; ready with the next session after the guest comes back.
    g.close(None).await.unwrap();
    until_end(&mut g).await;
    let left = expect_kind(&mut h, "peer-left", "host").await;
    assert_eq!(left, json!({"type":"peer-left","session":1,"peer": guest_id,"reason":"closed"}));
    let (mut g, _) = native(&gj, "guest again").await;
    let rh = expect_kind(&mut h, "ready", "host after the reconnect").await;
    let rg = expect_kind(&mut g, "ready", "guest after the reconnect").await;
    assert_eq!((&rh["session"], &rg["session"]), (&json!(2), &json!(2)), "session counts up: {rh} {rg}");

    // A signal for session 1 is stale now: error, and the partner gets nothing.
    send_text(&mut h, r#"{"type":"signal","session":1,"data":{"type":"offer","sdp":"old"}}"#).await;
    let e = expect_kind(&mut h, "error", "host, stale signal").await;
    assert_eq!(e["code"], "stale_session", "{e}");
    quiet(&mut g, QUIET, "a stale signal must not be relayed").await;
    send_text(&mut h, r#"{"type":"signal","session":2,"data":{"candidate":{"candidate":"c"}}}"#).await;
    let v = expect_kind(&mut g, "signal", "guest, session 2").await;
    assert_eq!(v["data"], json!({"candidate":{"candidate":"c"}}), "{v}");

    // App-level ping: pong with `t` verbatim.
    send_text(&mut g, r#"{"type":"ping","t":1767261600123}"#).await;
    assert_eq!(next_text(&mut g, "pong").await, r#"{"type":"pong","t":1767261600123}"#);

    // leave: closed 1000, partner told `left`.
    send_text(&mut g, r#"{"type":"leave"}"#).await;
    expect_close(&mut g, 1000, "guest after leave").await;
    let left = expect_kind(&mut h, "peer-left", "host after the guest left").await;
    assert_eq!(left["reason"], "left", "{left}");
}

/// Newest connection per role wins: the old socket is closed 4008, the partner sees peer-left `replaced` then a new
/// ready, and the new socket keeps its slot after the old close completed.
async fn native_newest_connection_per_role_wins(backend: Backend) {
    let Some(d) = Daemon::start_on(backend, "") else { return };
    let b = d.booking_now(60, 1800).await;
    let host_id = participant(&b, "host")["id"].as_str().unwrap().to_string();
    let (mut h1, mut g, s1) = native_pair(&d, &b).await;
    let (mut h2, _) = native(&join_as(&d, &b, "host").await, "second host").await;
    expect_close(&mut h1, 4008, "the replaced host").await;
    until_end(&mut h1).await;
    drop(h1);
    let left = expect_kind(&mut g, "peer-left", "guest").await;
    assert_eq!(left, json!({"type":"peer-left","session":s1,"peer": host_id,"reason":"replaced"}));
    let rg = expect_kind(&mut g, "ready", "guest").await;
    let rh = expect_kind(&mut h2, "ready", "new host").await;
    assert_eq!((&rg["session"], &rh["session"]), (&json!(s1 + 1), &json!(s1 + 1)), "{rg} {rh}");
    quiet(&mut h2, QUIET, "the new host after the old close").await;
    send_text(&mut g, r#"{"type":"signal","data":{"type":"answer","sdp":"y"}}"#).await;
    let v = expect_kind(&mut h2, "signal", "the new host").await;
    assert_eq!(v["session"], s1 + 1, "{v}");
}

/// Over `messages_per_second`: native gets `error rate_limited` then 4029 (partner: peer-left); vy and peerjs
/// sockets get only the 4029 close.
#[tokio::test]
async fn rate_limit_closes_4029_in_every_mode() {
    let d = Daemon::start(&format!("{VY}[signaling]\nmessages_per_second = 2\n\n{PEERJS}"));
    let b = d.booking_now(60, 1800).await;
    let (mut h, mut g, _) = native_pair(&d, &b).await;
    for n in 0..12 {
        if h.send(Message::text(format!(r#"{{"type":"ping","t":{n}}}"#))).await.is_err() {
            break;
        }
    }
    let (texts, code) = closed_within(&mut h, WAIT, "native flood").await;
    assert_eq!(code, Some(4029), "native: over the rate closes 4029; texts {texts:?}");
    let last: Value = serde_json::from_str(texts.last().expect("an error frame before the close")).unwrap();
    assert_eq!((&last["type"], &last["code"]), (&json!("error"), &json!("rate_limited")), "{texts:?}");
    assert!(texts[..texts.len() - 1].iter().all(|t| t.starts_with(r#"{"type":"pong""#)), "{texts:?}");
    let left = expect_kind(&mut g, "peer-left", "guest of the flooder").await;
    assert_eq!(left["type"], "peer-left", "{left}");

    let (m, _) = vy_booking(&d, 60, 1800).await;
    let (mut i, mut c) = vy_pair(d.http, &m).await;
    let frame = r#"{"type":"candidate","candidate":{"candidate":"flood"}}"#;
    for _ in 0..12 {
        if i.send(Message::text(frame)).await.is_err() {
            break;
        }
    }
    expect_close(&mut i, 4029, "vy flood: only the close, no frame of the hub's own").await;
    let mut relayed = 0;
    loop {
        match recv(&mut c, QUIET).await {
            Got::Text(t) => {
                assert_eq!(t, frame, "the vy partner only ever sees relayed frames");
                relayed += 1;
            }
            Got::Ping | Got::Pong => {}
            Got::Nothing => break,
            other => panic!("the vy partner of a flooder: {other:?}"),
        }
    }
    assert!((1..=5).contains(&relayed), "frames within the burst are relayed, then none: {relayed}");

    let mut p = pj_open(d.http, "peerjs", "flooder", "tf").await;
    for _ in 0..12 {
        if p.send(Message::text(HEARTBEAT)).await.is_err() {
            break;
        }
    }
    expect_close(&mut p, 4029, "peerjs flood").await;
}

/// `allowed_origins`: a foreign `Origin` gets HTTP 403 before the upgrade in every mode; a listed one and none
/// (not a browser) are upgraded.
#[tokio::test]
async fn origin_allow_list_refuses_foreign_origins() {
    let d = Daemon::start(&format!("{VY}[signaling]\nallowed_origins = [\"https://clinic.example\"]\n\n{PEERJS}"));
    let b = d.booking_now(60, 1800).await;
    let native_url = signal_url(&join_as(&d, &b, "host").await);
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let vy = vy_url(d.http, "/", &m, Some("true"));
    let pj = pj_url(d.http, "/", "peerjs", "alice", "ta");
    for (mode, url) in [("native", &native_url), ("vy", &vy), ("peerjs", &pj)] {
        let (status, body) = refused(url, Some("https://evil.example")).await;
        assert_eq!(status, 403, "{mode}: a foreign Origin must get 403: {body}");
        assert!(body.contains("origin_not_allowed"), "{mode}: 403 body names the reason: {body}");
        let ws = upgrade(url, Some("https://clinic.example")).await;
        assert!(ws.is_ok(), "{mode}: a listed Origin must be upgraded: {:?}", ws.err());
        drop(ws);
        let ws = upgrade(url, None).await;
        assert!(ws.is_ok(), "{mode}: no Origin (not a browser) must be upgraded: {:?}", ws.err());
    }
}

/// `max_connections_per_ip`: the third socket from one IP gets HTTP 429 before the upgrade, whatever the mode; a
/// place is given back when a socket closes.
#[tokio::test]
async fn per_ip_socket_cap_answers_429() {
    let d = Daemon::start(&format!("{VY}[signaling]\nmax_connections_per_ip = 2\n\n{PEERJS}"));
    let b = d.booking_now(60, 1800).await;
    let (mut h, _g, _) = native_pair(&d, &b).await;
    let (m, _) = vy_booking(&d, 60, 1800).await;
    for url in [
        signal_url(&join_as(&d, &b, "host").await),
        vy_url(d.http, "/", &m, Some("true")),
        pj_url(d.http, "/", "peerjs", "alice", "ta"),
    ] {
        let (status, body) = refused(&url, None).await;
        assert_eq!(status, 429, "third socket from one IP at {url}: {body}");
    }
    h.close(None).await.unwrap();
    until_end(&mut h).await;
    let url = vy_url(d.http, "/", &m, Some("true"));
    let deadline = Instant::now() + WAIT;
    loop {
        match upgrade(&url, None).await {
            Ok(_) => break,
            Err((429, _)) if Instant::now() < deadline => sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("after a socket closed, a new one must be admitted: {e:?}"),
        }
    }
}

/// `window` warnings before `hard_end_at` (T-5 min and T-1 min), and the room closed with 4003 at `hard_end_at`
/// (native and vy sockets of the booking), after which the meeting is not open any more.
#[tokio::test]
async fn window_warnings_and_room_closed_4003_at_hard_end() {
    let d = Daemon::start(&format!("{VY}[booking]\noverrun_grace = \"1s\"\n\n{PEERJS}"));

    // Warnings: bookings whose hard end is a little over 5 min and 1 min away get their warning within seconds.
    for (len, lead) in [(299, 300), (59, 60)] {
        let (status, b) = d.create_booking(&booking_body(2, len)).await;
        assert_eq!(status, 201, "{b}");
        let (mut h, w) = native(&join_as(&d, &b, "host").await, "host").await;
        let warn = expect_kind(&mut h, "window", &format!("T-{lead}s warning")).await;
        assert_eq!(warn["event"], "closing", "{warn}");
        assert_eq!(warn["closes_at"], w["window"]["hard_end_at"], "{warn}");
        let in_s = warn["in_s"].as_i64().expect("in_s");
        assert!((lead - 1..=lead + 1).contains(&in_s), "T-{lead}s warning says in_s = {in_s}: {warn}");
    }

    // Hard end: start in 2 s, end in 4 s, 1 s grace (early_join lets both in at once).
    let m = meeting_id();
    let mut body = booking_body(2, 2);
    body["external_id"] = json!(m);
    let (status, b) = d.create_booking(&body).await;
    assert_eq!(status, 201, "{b}");
    let (mut h, mut g, _) = native_pair(&d, &b).await;
    let (mut i, mut c) = vy_pair(d.http, &m).await;
    let key = |j: Value| j["session_token"].as_str().unwrap().to_string();
    let mut alice = pj_open(d.http, &key(join_as(&d, &b, "host").await), "alice", "ta").await;
    let mut bob = pj_open(d.http, &key(join_as(&d, &b, "guest").await), "bob", "tb").await;
    let within = Duration::from_secs(12);
    for (ws, who) in [
        (&mut h, "native host"),
        (&mut g, "native guest"),
        (&mut i, "vy instructor"),
        (&mut c, "vy customer"),
        (&mut alice, "scoped peerjs alice"),
        (&mut bob, "scoped peerjs bob"),
    ] {
        let (texts, code) = closed_within(ws, within, who).await;
        assert_eq!(code, Some(4003), "{who}: closed at hard_end_at with 4003 (texts {texts:?})");
        assert!(texts.iter().all(|t| !t.contains("\"signal\"")), "{who}: {texts:?}");
        if !who.starts_with("native") {
            assert!(texts.is_empty(), "{who}: nothing but the close: {texts:?}");
        }
    }
    let (status, _) = refused(&vy_url(d.http, "/", &m, Some("true")), None).await;
    assert_eq!(status, 403, "after the hard end the meeting is closed for vy");
    let token = participant(&b, "guest")["link_token"].as_str().unwrap().to_string();
    let (status, _, body) = d.join(&token).await;
    assert_eq!(status, 410, "join after the hard end: {body}");
}

/// `max_message_bytes`: a bigger frame closes the socket with 1009 in every mode (the hub's own check, for frames up
/// to twice the limit); native says `too_big` first; the vy partner gets nothing.
#[tokio::test]
async fn oversized_frames_close_1009_in_every_mode() {
    let d = Daemon::start(&format!("{VY}[signaling]\nmax_message_bytes = 1024\n\n{PEERJS}"));
    for size in [1500] {
        let (m, _) = vy_booking(&d, 60, 1800).await;
        let (mut i, mut c) = vy_pair(d.http, &m).await;
        let big = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "x".repeat(size));
        let _ = i.send(Message::text(big.clone())).await;
        expect_close(&mut i, 1009, &format!("vy, {size}-byte frame")).await;
        quiet(&mut c, QUIET, "the vy partner of an oversized frame").await;

        let b = d.booking_now(60, 1800).await;
        let (mut h, mut g, _) = native_pair(&d, &b).await;
        let _ = h.send(Message::text(format!(r#"{{"type":"signal","data":{big}}}"#))).await;
        let (texts, code) = closed_within(&mut h, WAIT, &format!("native, {size}-byte frame")).await;
        assert_eq!(code, Some(1009), "native {size}: texts {texts:?}");
        assert!(texts.iter().all(|t| t.contains("too_big")), "native {size}: only `error too_big` before: {texts:?}");
        let left = expect_kind(&mut g, "peer-left", "native partner of an oversized frame").await;
        assert_eq!(left["type"], "peer-left");

        let mut p = pj_open(d.http, "peerjs", &format!("big{size}"), "t").await;
        let _ = p.send(Message::text(pj_msg("OFFER", "x", &big))).await;
        expect_close(&mut p, 1009, &format!("peerjs, {size}-byte frame")).await;
    }
}

/// A frame beyond the transport's cap (twice `max_message_bytes`, here a 140 KiB frame at the default 64 KiB) must
/// be closed with 1009 too (DESIGN/daemon contract: "frames > 64 KiB -> close 1009"; research §10.2 rule 5).
#[tokio::test]
async fn frames_beyond_the_transport_cap_close_1009() {
    let mut d = Daemon::start(&format!("{VY}{PEERJS}"));
    let big = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "x".repeat(140 * 1024));
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let (mut i, _c) = vy_pair(d.http, &m).await;
    let _ = i.send(Message::text(big.clone())).await;
    let (_, vy) = closed_within(&mut i, WAIT, "vy, 140 KiB frame").await;
    let b = d.booking_now(60, 1800).await;
    let (mut h, _g, _) = native_pair(&d, &b).await;
    let _ = h.send(Message::text(format!(r#"{{"type":"signal","data":{big}}}"#))).await;
    let (_, native) = closed_within(&mut h, WAIT, "native, 140 KiB frame").await;
    let mut p = pj_open(d.http, "peerjs", "big", "t").await;
    let _ = p.send(Message::text(pj_msg("OFFER", "x", &big))).await;
    let (_, peerjs) = closed_within(&mut p, WAIT, "peerjs, 140 KiB frame").await;
    assert_alive(&mut d);
    assert_eq!(
        (vy, native, peerjs),
        (Some(1009), Some(1009), Some(1009)),
        "close codes (vy, native, peerjs) for a frame over the transport's cap"
    );
}

/// SIGTERM drains (DESIGN §7): running calls keep their sockets, `/readyz` and new joins answer 503, and at
/// `drain_deadline` every socket of every mode is closed with 1001 and the daemon exits.
#[tokio::test]
async fn sigterm_drains_then_closes_every_socket_1001() {
    let mut d = Daemon::start(&format!(
        "{VY}{PEERJS}
[shutdown]
drain_deadline = \"2s\"
"
    ));
    let b = d.booking_now(60, 1800).await;
    let (mut h, mut g, _) = native_pair(&d, &b).await;
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let (mut i, mut c) = vy_pair(d.http, &m).await;
    let mut p = pj_open(d.http, "peerjs", "alice", "ta").await;
    let pid = d.child.id().to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("run kill -TERM");
    assert!(status.success(), "kill -TERM {pid}");
    sleep(Duration::from_millis(300)).await;
    let ready = reqwest::get(format!("http://{}/readyz", d.admin)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503, "readyz while draining");
    let token = b["participants"][1]["link_token"].as_str().unwrap();
    let (status, headers, body) = d.join(token).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("draining")), "a join while draining: {body}");
    assert!(headers.contains_key("retry-after"), "Retry-After while draining");
    quiet(&mut h, QUIET, "a running call keeps its socket while draining").await;
    for (ws, who) in
        [(&mut h, "native host"), (&mut g, "native guest"), (&mut i, "vy instructor"), (&mut c, "vy customer")]
    {
        let (texts, code) = closed_within(ws, WAIT, &format!("{who} at shutdown")).await;
        assert_eq!(code, Some(1001), "{who}: closed with 1001 at shutdown (texts {texts:?})");
    }
    let (texts, code) = closed_within(&mut p, WAIT, "peerjs at shutdown").await;
    assert_eq!(code, Some(1001), "peerjs: closed with 1001 at shutdown (texts {texts:?})");
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "the daemon did not exit within 10 s of SIGTERM (drain_deadline 2 s)");
        sleep(Duration::from_millis(100)).await;
    }
}

/// One slow reader never blocks the others: a customer that reads nothing while its instructor floods big frames
/// fills its bounded queue and is closed (1008 "queue full"); another room relays promptly all along.
#[tokio::test]
async fn slow_reader_is_closed_and_blocks_nobody() {
    let d = Daemon::start(&format!("{VY}[signaling]\nmessages_per_second = 100000\n"));
    let (ma, _) = vy_booking(&d, 60, 1800).await;
    let (mb, _) = vy_booking(&d, 60, 1800).await;
    let (mut ia, mut ca) = vy_pair(d.http, &ma).await;
    let (mut ib, mut cb) = vy_pair(d.http, &mb).await;
    let big = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "x".repeat(60_000));
    let frames = 600;
    let flood = tokio::spawn(async move {
        for _ in 0..frames {
            ia.send(Message::text(big.clone())).await.expect("the flooding instructor can always send");
        }
        ia
    });
    for n in 0..10 {
        let t0 = Instant::now();
        vy_relayed(&mut ib, &mut cb, &format!(r#"{{"type":"candidate","candidate":{{"n":{n}}}}}"#), "room B").await;
        assert!(t0.elapsed() < Duration::from_secs(2), "room B waited {:?} behind room A's slow reader", t0.elapsed());
        sleep(Duration::from_millis(50)).await;
    }
    let mut ia = timeout(Duration::from_secs(60), flood).await.expect("the flood finished in time").unwrap();
    let (texts, code) = closed_within(&mut ca, Duration::from_secs(30), "the slow reader").await;
    assert_eq!(code, Some(1008), "a full queue closes the slow reader with 1008 (got {} frames first)", texts.len());
    assert!(texts.len() < frames, "the slow reader was closed before it got all {frames} frames");
    quiet(&mut ia, Duration::from_millis(300), "the flooding instructor is not closed").await;
}

// ---------------------------------------------------------------------------------------------------------------
// Garbage
// ---------------------------------------------------------------------------------------------------------------

/// Sends a WebSocket handshake for `path_and_query` over raw TCP; the stream after the 101, or `None` if refused.
async fn raw_upgrade(addr: SocketAddr, path_and_query: &str) -> Option<TcpStream> {
    let mut s = timeout(WAIT, TcpStream::connect(addr)).await.expect("TCP connect in time").expect("TCP connect");
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match timeout(WAIT, s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return None,
        }
    }
    head.starts_with(b"HTTP/1.1 101").then_some(s)
}

/// Server frames read from a raw socket until it ends or `within` passes: (opcode, payload) each (server frames
/// are unmasked; no fragmentation expected).
async fn server_frames(s: &mut TcpStream, within: Duration) -> Vec<(u8, Vec<u8>)> {
    let deadline = Instant::now() + within;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = timeout(deadline.saturating_duration_since(Instant::now()), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let op = bytes[at] & 0x0f;
        let (len, head) = match bytes[at + 1] & 0x7f {
            126 if at + 4 <= bytes.len() => (u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize, 4),
            127 => panic!("unexpectedly large server frame"),
            n => (n as usize, 2),
        };
        let end = (at + head + len).min(bytes.len());
        frames.push((op, bytes[at + head..end].to_vec()));
        at = at + head + len;
    }
    frames
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Malformed input at every layer in every mode never takes the hub down: the daemon keeps running and new pairs
/// still form and relay in all three modes.
#[tokio::test]
async fn garbage_never_crashes_the_hub() {
    let mut d = Daemon::start(&format!("{VY}{PEERJS}"));
    let b = d.booking_now(60, 1800).await;
    let (m, _) = vy_booking(&d, 60, 1800).await;

    // Not HTTP at all.
    for junk in [&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], &b"GET\r\n\r\n"[..], &[0u8; 300][..]] {
        let mut s = TcpStream::connect(d.http).await.unwrap();
        let _ = s.write_all(junk).await;
        let mut buf = [0u8; 512];
        let _ = timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    }
    assert_alive(&mut d);

    // Broken WebSocket framing after a good handshake, in each mode.
    let token = join_as(&d, &b, "host").await["session_token"].as_str().unwrap().to_string();
    let paths = [
        format!("/?meetingId={m}&isInstructorRole=true"),
        format!("/v1/signal?token={token}"),
        "/peerjs?key=peerjs&id=junk&token=tj".to_string(),
    ];
    let mut huge = vec![0x82u8, 0xff];
    huge.extend_from_slice(&u64::MAX.to_be_bytes()[..]);
    huge[2] = 0x7f;
    huge.extend_from_slice(&[1, 2, 3, 4]);
    let junks: Vec<Vec<u8>> = vec![
        frame(0x83, b"reserved opcode"),
        vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], // unmasked client frame
        frame(0x81, &[0xc3, 0x28, 0xa0, 0xa1]),         // invalid UTF-8 in a text frame
        huge,                                           // 2^63-byte frame announced
        frame(0x09, b"fragmented ping"),                // control frame without FIN
        frame(0x80, b"continuation of nothing"),
        frame(0x88, b"x"), // close frame with a 1-byte payload
        frame(0xf1, b"rsv bits set"),
        (0..=255u8).cycle().take(700).map(|b| b.wrapping_mul(37)).collect(),
        [frame(0x01, b"{\"type\":"), frame(0x81, b"interleaved")].concat(),
    ];
    for path in &paths {
        for junk in &junks {
            let Some(mut s) = raw_upgrade(d.http, path).await else { panic!("handshake for {path} refused") };
            let _ = s.write_all(junk).await;
            let mut buf = vec![0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Ok(Ok(n)) = timeout(deadline.saturating_duration_since(Instant::now()), s.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
            }
        }
        assert_alive(&mut d);
    }

    // Well-framed garbage per protocol. native: bad_message and the socket stays.
    let (mut h, mut g, _) = native_pair(&d, &b).await;
    for junk in [
        "{",
        "[]",
        "null",
        "\"signal\"",
        r#"{"type":"signal"}"#,
        r#"{"type":"signal","data":{"foo":1}}"#,
        r#"{"type":"signal","data":"{\"sdp\":\"x\"}"}"#,
        r#"{"type":"signal","session":-1,"data":{"sdp":"x"}}"#,
        r#"{"type":"nope"}"#,
        r#"{"type":1}"#,
        "",
    ] {
        send_text(&mut h, junk).await;
        let e = expect_kind(&mut h, "error", &format!("native after {junk:?}")).await;
        assert_eq!(e["code"], "bad_message", "{junk:?}: {e}");
    }
    h.send(Message::binary(vec![0xffu8; 10])).await.unwrap();
    assert_eq!(expect_kind(&mut h, "error", "native after binary").await["code"], "bad_message");
    quiet(&mut g, QUIET, "nothing of the garbage reaches the partner").await;
    send_text(&mut h, r#"{"type":"signal","data":{"sdp":"still works"}}"#).await;
    assert_eq!(expect_kind(&mut g, "signal", "after garbage").await["data"]["sdp"], "still works");

    // peerjs: garbage is ignored, nothing is sent, the socket stays.
    let mut p1 = pj_open(d.http, "peerjs", "p1", "t1").await;
    let mut p2 = pj_open(d.http, "peerjs", "p2", "t2").await;
    for junk in [
        "{",
        "[1,2]",
        "null",
        r#"{"type":"OFFER"}"#,
        r#"{"type":"OFFER","dst":5,"payload":{}}"#,
        r#"{"type":"OFFER","dst":{"x":1}}"#,
        r#"{"type":"NOPE","dst":"p2"}"#,
        r#"{"type":"OPEN","dst":"p2"}"#,
        r#"{"type":"ID-TAKEN","dst":"p2"}"#,
        "",
    ] {
        send_text(&mut p1, junk).await;
    }
    p1.send(Message::binary(vec![0u8; 16])).await.unwrap();
    quiet(&mut p1, QUIET, "peerjs garbage gets no answer").await;
    quiet(&mut p2, Duration::from_millis(100), "peerjs garbage is not relayed").await;
    send_text(&mut p1, &pj_msg("OFFER", "p2", "{}")).await;
    assert_eq!(next_text(&mut p2, "peerjs after garbage").await, pj_delivered("OFFER", "p1", "p2", "{}"));

    // Still alive, and fresh pairs form in every mode.
    assert_alive(&mut d);
    let b2 = d.booking_now(60, 1800).await;
    let (mut h, mut g, _) = native_pair(&d, &b2).await;
    send_text(&mut g, r#"{"type":"signal","data":{"sdp":"fresh"}}"#).await;
    assert_eq!(expect_kind(&mut h, "signal", "fresh native pair").await["data"]["sdp"], "fresh");
    let (m2, _) = vy_booking(&d, 60, 1800).await;
    let (mut i, mut c) = vy_pair(d.http, &m2).await;
    vy_relayed(&mut i, &mut c, r#"{"type":"offer","sdp":"fresh"}"#, "fresh vy pair").await;
    assert_alive(&mut d);
}

// ---------------------------------------------------------------------------------------------------------------
// Issue 7: limits of the public signaling surfaces
// ---------------------------------------------------------------------------------------------------------------

/// The upgrade's status as seen through a trusted proxy that forwarded it for `client`.
async fn status_for(url: &str, client: &str) -> u16 {
    match upgrade_with(url, &[("x-forwarded-for", client)]).await {
        Ok(_) => 101,
        Err((status, _)) => status,
    }
}

/// Refused Virtual Y upgrades are limited per client: after a burst of 20 unknown meeting ids the client gets 429
/// before any lookup (ids cannot be enumerated fast), counted; another client is not affected. (Before: 300 guesses
/// answered in 0.1 s.)
#[tokio::test]
async fn vy_refused_upgrades_are_rate_limited_per_client() {
    let d = Daemon::start(&format!("{VY}[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n"));
    let (m, _) = vy_booking(&d, 60, 1800).await;
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(status_for(&vy_url(d.http, "/", &meeting_id(), Some("true")), "198.51.100.9").await);
    }
    assert_eq!(statuses[..20], [403; 20], "{statuses:?}");
    assert_eq!(statuses[20..], [429; 5], "{statuses:?}");
    // While its bucket is empty, even a real meeting is answered 429 for that client; another client gets in.
    assert_eq!(status_for(&vy_url(d.http, "/", &m, Some("true")), "198.51.100.9").await, 429);
    assert_eq!(status_for(&vy_url(d.http, "/", &meeting_id(), Some("true")), "198.51.100.10").await, 403);
    assert_eq!(status_for(&vy_url(d.http, "/", &m, Some("true")), "198.51.100.10").await, 101);
    let text = d.metrics().await;
    let refused =
        |reason: &str| metric(&text, &format!("duet_signal_upgrades_refused_total{{mode=\"vy\",reason=\"{reason}\"}}"));
    assert_eq!(refused("outside_window"), Some(21.0), "{text}");
    assert_eq!(refused("rate_limited"), Some(6.0), "{text}");
}

/// `require_booking = false`: 300 connect-and-close cycles with unique meeting ids leave no room behind (before:
/// one room each, forever).
#[tokio::test]
async fn vy_open_relay_rooms_are_freed_when_their_last_socket_goes() {
    let d = Daemon::start("[signaling.vy]\nenabled = true\nrequire_booking = false\n");
    for n in 0..300 {
        let mut ws = connect(&vy_url(d.http, "/", &format!("cycle-{n}"), Some("true"))).await;
        ws.close(None).await.unwrap();
        until_end(&mut ws).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let text = d.metrics().await;
        let rooms = metric(&text, "duet_rooms_active");
        if rooms == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "rooms left after 300 cycles: {rooms:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// PeerJS: a guest's session token that registers four ids replaces its own older ones and never locks the host
/// out of its booking (before: the fourth id used up the booking's cap and the host got `ERROR`).
#[tokio::test]
async fn peerjs_a_guest_cannot_lock_the_host_out_of_its_booking() {
    let d = Daemon::start(PEERJS);
    let b = d.booking_now(60, 1800).await;
    let guest = join_as(&d, &b, "guest").await["session_token"].as_str().unwrap().to_string();
    let host = join_as(&d, &b, "host").await["session_token"].as_str().unwrap().to_string();
    let mut guests = Vec::new();
    for n in 0..4 {
        guests.push(pj_open(d.http, &guest, &format!("g{n}"), "t").await);
    }
    expect_close(&mut guests[0], 4008, "the guest's oldest id").await;
    expect_close(&mut guests[1], 4008, "the guest's second id").await;
    let mut h = pj_open(d.http, &host, "h", "t").await;
    send_text(&mut h, &pj_msg("OFFER", "g3", "{}")).await;
    assert_eq!(
        next_text(&mut guests[3], "offer to the guest's newest id").await,
        pj_delivered("OFFER", "h", "g3", "{}")
    );
}

/// WebSocket pings count against the message rate (before: 3 000 pings got 3 000 pongs).
#[tokio::test]
async fn websocket_pings_are_rate_limited() {
    let d = Daemon::start("");
    let b = d.booking_now(60, 1800).await;
    let (mut h, _) = native(&join_as(&d, &b, "host").await, "host").await;
    for _ in 0..3000 {
        if h.send(Message::Ping(Vec::new().into())).await.is_err() {
            break;
        }
    }
    let (texts, code) = closed_within(&mut h, WAIT, "the pinging host").await;
    assert_eq!(code, Some(4029), "texts before the close: {texts:?}");
}

/// Bogus upgrades (bad tokens) do not take the client's socket places: they wait in the short pending cap while
/// their 4001 is delivered, and the client's two real sockets still get in (before: the bogus ones used up the
/// per-IP cap and the real ones got 429).
#[tokio::test]
async fn bogus_upgrades_do_not_use_up_a_clients_sockets() {
    let d = Daemon::start("[signaling]\nmax_connections_per_ip = 2\n");
    let b = d.booking_now(60, 1800).await;
    let mut bogus = Vec::new();
    for _ in 0..6 {
        // Never read: each keeps its refused socket (and pending place) until the server's close linger ends.
        bogus.push(upgrade(&format!("ws://{}/v1/signal?token=forged", d.http), None).await);
    }
    assert!(bogus.iter().all(Result::is_ok), "bad tokens are upgraded to see their close code");
    let (mut h, mut g, _) = native_pair(&d, &b).await;
    send_text(&mut g, r#"{"type":"signal","data":{"sdp":"x"}}"#).await;
    assert_eq!(expect_kind(&mut h, "signal", "host").await["data"]["sdp"], "x");
    let text = d.metrics().await;
    assert_eq!(metric(&text, r#"duet_signal_upgrades_refused_total{mode="native",reason="bad_token"}"#), Some(6.0));
}

/// Behind `trusted_proxies` each forwarded client has its own socket cap (IPv6 clients by /64); a peer that is not
/// a trusted proxy cannot choose its address with `X-Forwarded-For`.
#[tokio::test]
async fn sockets_are_counted_per_forwarded_client_behind_trusted_proxies() {
    let cfg = "[signaling]\nmax_connections_per_ip = 1\n";
    let d = Daemon::start(&format!("[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{cfg}"));
    let as_client = async |b: &Value, role: &str, header: &'static str, value: &str| {
        upgrade_with(&signal_url(&join_as(&d, b, role).await), &[(header, value)]).await.map_err(|e| e.0)
    };
    let b = d.booking_now(60, 1800).await;
    let _x = as_client(&b, "host", "x-forwarded-for", "203.0.113.1").await.expect("client X");
    let second = as_client(&b, "guest", "x-forwarded-for", "10.9.9.9, 203.0.113.1").await;
    assert_eq!(second.err(), Some(429), "client X already holds its one socket");
    let _y = as_client(&b, "guest", "x-forwarded-for", "203.0.113.2").await.expect("client Y");
    let b2 = d.booking_now(60, 1800).await;
    let _v6 = as_client(&b2, "host", "x-forwarded-for", "2001:db8:1:2::1").await.expect("v6 client");
    let same64 = as_client(&b2, "guest", "x-forwarded-for", "2001:db8:1:2:ffff::9").await;
    assert_eq!(same64.err(), Some(429), "one /64 is one client");
    // A `Forwarded` header the client wrote itself is not believed (the proxy sets X-Forwarded-For): both sockets
    // count as the proxy's own address.
    let b3 = d.booking_now(60, 1800).await;
    let _first = as_client(&b3, "host", "forwarded", "for=198.51.100.77").await.expect("first");
    let spoofed = as_client(&b3, "guest", "forwarded", "for=198.51.100.78").await;
    assert_eq!(spoofed.err(), Some(429), "a client-written Forwarded header is ignored");

    // Without trusted proxies the header is ignored: both sockets are 127.0.0.1's.
    let d2 = Daemon::start(cfg);
    let b = d2.booking_now(60, 1800).await;
    let first = signal_url(&join_as(&d2, &b, "host").await);
    let _x = upgrade_with(&first, &[("x-forwarded-for", "203.0.113.1")]).await.expect("first");
    let other = signal_url(&join_as(&d2, &b, "guest").await);
    let other = upgrade_with(&other, &[("x-forwarded-for", "203.0.113.2")]).await;
    assert_eq!(other.err().map(|e| e.0), Some(429), "a forged X-Forwarded-For is not believed");
}

/// A client that stops reading cannot pin its socket: the write times out (`send_timeout`), the socket goes, and
/// the participant can connect again (before: the stuck write held the socket and its place forever).
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
    let d =
        Daemon::start("[signaling]\nmessages_per_second = 100000\nsend_timeout = \"1s\"\nmax_connections_per_ip = 2\n");
    let b = d.booking_now(60, 1800).await;
    let (h, g, _) = native_pair(&d, &b).await;
    // The guest `g` reads nothing from now on. The host floods it with large signals (and drains its own socket).
    let big = format!(r#"{{"type":"signal","data":{{"sdp":"{}"}}}}"#, "x".repeat(60_000));
    let (mut tx, mut rx) = h.split();
    let (left_tx, mut left) = tokio::sync::watch::channel(false);
    let drain = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if matches!(&m, Message::Text(t) if t.contains("peer-left")) {
                let _ = left_tx.send(true);
            }
        }
    });
    // Until the hub gives up on the guest's full queue and tells the host it left.
    for _ in 0..1000 {
        if *left.borrow_and_update() {
            break;
        }
        let _ = timeout(Duration::from_secs(2), tx.send(Message::text(big.clone()))).await;
        // Paced, so the guest's socket task keeps up until the TCP window is full and its write blocks.
        sleep(Duration::from_millis(2)).await;
    }
    assert!(*left.borrow(), "the guest's queue never filled");
    // Long enough for the stuck write to time out.
    sleep(Duration::from_secs(4)).await;
    let (mut g2, _) = native(&join_as(&d, &b, "guest").await, "the guest again").await;
    expect_kind(&mut g2, "ready", "the returning guest").await;
    let text = d.metrics().await;
    assert_eq!(metric(&text, r#"duet_signal_drops_total{reason="send_timeout"}"#), Some(1.0), "{text}");
    drop((g, drain));
}
