//! peerjs mode on virtual time: what PeerJS >= 1.0 browser clients would see from a peerjs-server 1.0.x drop-in.
//! Conformance cases "PeerJS 1–5" of research/signaling.md §10.6, plus upstream details (§4.2).

use std::time::{Duration, Instant};

use duet_signaling::peerjs::{PeerjsConfig, PeerjsError, PeerjsServer, Registration, Scope};
use duet_signaling::{CloseReason, ConnectionId, DropReason, HubEvent, PeerjsEvent, close_code};

mod support;
use support::Outs;

const OPEN: &str = r#"{"type":"OPEN"}"#;
const ID_TAKEN: &str = r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#;
const NS: &str = "peerjs";
const PAYLOAD: &str =
    r#"{"sdp":{"type":"offer","sdp":"v=0\r\n"},"type":"media","connectionId":"mc_abc","metadata":null}"#;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

struct P {
    server: PeerjsServer,
    t0: Instant,
    now: Instant,
}

fn reg(ns: &str, id: &str, token: &str) -> Registration {
    Registration { namespace: ns.into(), id: id.into(), token: token.into(), scope: None }
}

impl P {
    fn new() -> Self {
        Self::with(PeerjsConfig::default())
    }
    fn with(config: PeerjsConfig) -> Self {
        let t0 = Instant::now();
        P { server: PeerjsServer::new(config), t0, now: t0 }
    }
    fn at(&mut self, d: Duration) {
        self.now = self.t0 + d;
    }
    fn drain(&mut self) -> Outs {
        Outs(std::iter::from_fn(|| self.server.poll_output()).collect())
    }
    fn connect_reg(&mut self, c: u64, r: Registration) -> Outs {
        self.server.handle_connect(self.now, ConnectionId(c), r);
        self.drain()
    }
    fn connect(&mut self, c: u64, id: &str, token: &str) -> Outs {
        self.connect_reg(c, reg(NS, id, token))
    }
    fn text(&mut self, c: u64, text: &str) -> Outs {
        self.server.handle_text(self.now, ConnectionId(c), text);
        self.drain()
    }
    fn disconnect(&mut self, c: u64) -> Outs {
        self.server.handle_disconnect(self.now, ConnectionId(c));
        self.drain()
    }
    /// Runs every timer due up to `t0 + d`, in order, like a driver sleeping until `poll_timeout`.
    fn run_until(&mut self, d: Duration) -> Outs {
        let end = self.t0 + d;
        let mut all = Vec::new();
        while let Some(t) = self.server.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.server.handle_timeout(self.now);
            all.extend(self.drain().0);
        }
        self.now = end;
        Outs(all)
    }
}

fn offer(dst: &str) -> String {
    format!(r#"{{"type":"OFFER","src":"forged","dst":"{dst}","payload":{PAYLOAD},"extra":1}}"#)
}

fn relayed(kind: &str, src: &str, dst: &str) -> String {
    format!(r#"{{"type":"{kind}","src":"{src}","dst":"{dst}","payload":{PAYLOAD}}}"#)
}

// ----- PeerJS 1, 2: registration -----

#[test]
fn pj1_open_on_a_fresh_id_only() {
    let mut p = P::new();
    let out = p.connect(1, "alice", "tok1");
    assert_eq!(out.texts(1), [OPEN]);
    assert!(out.closes().is_empty());
    assert!(p.server.is_registered(NS, "alice"));
    assert_eq!(p.server.peer_ids(NS), ["alice"]);
    assert_eq!(p.server.stats().connections, 1);
}

#[test]
fn pj2_same_id_other_token_gets_id_taken_and_close() {
    let mut p = P::new();
    p.connect(1, "alice", "tok1");
    let out = p.connect(2, "alice", "other");
    assert_eq!(out.texts(2), [ID_TAKEN]);
    assert_eq!(out.closes(), [(2, close_code::POLICY)]);
    assert_eq!(out.send_count(), 1, "the registered socket hears nothing");
    // The first registration is untouched: messages still reach it.
    p.connect(3, "bob", "tokb");
    assert_eq!(p.text(3, &offer("alice")).texts(1), [relayed("OFFER", "bob", "alice")]);
}

#[test]
fn same_token_reconnect_reattaches_without_open_and_survives_the_old_close() {
    let mut p = P::new();
    p.connect(1, "alice", "tok1");
    let out = p.connect(2, "alice", "tok1");
    assert!(out.texts(2).is_empty(), "no OPEN on a re-attach: {out:?}");
    assert_eq!(out.closes(), [(1, close_code::REPLACED)]);
    assert!(
        out.events().iter().any(|e| matches!(e, HubEvent::Peerjs(PeerjsEvent::Registered { reattached: true, .. })))
    );
    // The old socket's late close does not unregister the id.
    p.at(secs(30));
    p.disconnect(1);
    assert!(p.server.is_registered(NS, "alice"));
    p.connect(3, "bob", "tokb");
    assert_eq!(p.text(3, &offer("alice")).texts(2), [relayed("OFFER", "bob", "alice")]);
    // Closing the current socket frees the id: a new token gets OPEN.
    p.disconnect(2);
    assert_eq!(p.connect(4, "alice", "new").texts(4), [OPEN]);
}

#[test]
fn missing_parameters_bad_key_and_limits_get_upstream_errors() {
    let mut p = P::with(PeerjsConfig { concurrent_limit: 2, ..PeerjsConfig::default() });
    for r in [reg(NS, "", "t"), reg(NS, "a", ""), reg("", "a", "t")] {
        let out = p.connect_reg(9, r);
        assert_eq!(
            out.texts(9),
            [r#"{"type":"ERROR","payload":{"msg":"No id, token, or key supplied to websocket server"}}"#]
        );
        assert_eq!(out.closes(), [(9, close_code::POLICY)]);
    }
    p.server.reject(ConnectionId(8), PeerjsError::InvalidKey);
    let out = p.drain();
    assert_eq!(out.texts(8), [r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#]);
    assert_eq!(out.closes(), [(8, close_code::POLICY)]);

    p.connect(1, "a", "t");
    p.connect(2, "b", "t");
    let out = p.connect(3, "c", "t");
    assert_eq!(out.texts(3), [r#"{"type":"ERROR","payload":{"msg":"Server has reached its concurrent user limit"}}"#]);
    assert_eq!(out.closes(), [(3, close_code::POLICY)]);
    // A same-token re-attach is not a new registration and passes the limit.
    assert!(p.connect(4, "a", "t").closes() == [(1, close_code::REPLACED)]);
    assert_eq!(p.server.stats().errors_total, 5);
}

// ----- relay -----

#[test]
fn relay_forces_src_and_keeps_only_type_src_dst_payload() {
    let mut p = P::new();
    p.connect(1, "alice", "ta");
    p.connect(2, "bob", "tb");
    let out = p.text(1, &offer("bob"));
    assert_eq!(out.texts(2), [relayed("OFFER", "alice", "bob")]);
    assert_eq!(out.send_count(), 1);
    let answer = format!(r#"{{"type":"ANSWER","dst":"alice","payload":{PAYLOAD}}}"#);
    assert_eq!(p.text(2, &answer).texts(1), [relayed("ANSWER", "bob", "alice")]);
    // No payload: the key is omitted, as JSON.stringify omits undefined.
    assert_eq!(
        p.text(2, r#"{"type":"CANDIDATE","dst":"alice"}"#).texts(1),
        [r#"{"type":"CANDIDATE","src":"bob","dst":"alice"}"#]
    );
    assert_eq!(p.server.stats().relayed_total, 3);
}

#[test]
fn ignored_frames_send_nothing() {
    let mut p = P::new();
    p.connect(1, "alice", "ta");
    p.connect(2, "bob", "tb");
    for frame in [
        "",
        "garbage",
        "[]",
        "42",
        r#"{"type":"OPEN","dst":"bob"}"#,
        r#"{"type":"offer","dst":"bob"}"#,
        r#"{"type":7,"dst":"bob"}"#,
        r#"{"type":"OFFER"}"#,
        r#"{"type":"OFFER","dst":null}"#,
        r#"{"type":"OFFER","dst":17}"#,
        r#"{"dst":"bob"}"#,
    ] {
        let out = p.text(1, frame);
        assert_eq!(out.send_count(), 0, "{frame}");
        assert!(out.closes().is_empty(), "{frame}");
    }
    let out = p.text(1, r#"{"type":"HEARTBEAT"}"#);
    assert!(out.0.is_empty());
}

#[test]
fn leave_without_dst_unregisters_the_sender() {
    let mut p = P::new();
    p.connect(1, "alice", "ta");
    let out = p.text(1, r#"{"type":"LEAVE"}"#);
    assert_eq!(out.closes(), [(1, close_code::NORMAL)]);
    assert!(!p.server.is_registered(NS, "alice"));
}

// ----- PeerJS 3, 4: queue and EXPIRE -----

#[test]
fn pj3_offer_to_an_offline_id_is_delivered_when_it_connects_within_5s() {
    let mut p = P::new();
    p.connect(1, "alice", "ta");
    let out = p.text(1, &offer("bob"));
    assert_eq!(out.send_count(), 0);
    p.text(1, r#"{"type":"CANDIDATE","dst":"bob","payload":{"candidate":"c1"}}"#);
    p.at(Duration::from_millis(4900));
    let out = p.connect(2, "bob", "tb");
    assert_eq!(
        out.texts(2),
        [
            OPEN,
            &relayed("OFFER", "alice", "bob"),
            r#"{"type":"CANDIDATE","src":"alice","dst":"bob","payload":{"candidate":"c1"}}"#
        ]
    );
    // No EXPIRE later.
    let out = p.run_until(secs(30));
    assert_eq!(out.send_count(), 0, "{out:?}");
    assert_eq!(p.server.stats().queued, 0);
}

#[test]
fn pj4_not_connecting_sends_one_expire_back_with_src_the_target() {
    let mut p = P::new();
    p.connect(1, "alice", "ta");
    for _ in 0..3 {
        p.text(1, &offer("bob"));
    }
    assert_eq!(p.server.stats().queued, 3);
    let out = p.run_until(Duration::from_millis(4999));
    assert_eq!(out.send_count(), 0);
    let out = p.run_until(secs(5));
    assert_eq!(out.texts(1), [r#"{"type":"EXPIRE","src":"bob","dst":"alice"}"#]);
    assert_eq!(out.send_count(), 1);
    // Bob arriving afterwards gets only OPEN: the messages are gone.
    let out = p.connect(2, "bob", "tb");
    assert_eq!(out.texts(2), [OPEN]);
    assert_eq!(p.run_until(secs(60)).texts(1), Vec::<&str>::new());
}

#[test]
fn leave_and_expire_for_an_absent_id_are_not_queued() {
    let mut p = P::new();
    p.connect(1, "alice", "ta");
    p.text(1, r#"{"type":"LEAVE","dst":"bob"}"#);
    p.text(1, r#"{"type":"EXPIRE","dst":"bob"}"#);
    assert_eq!(p.server.stats().queued, 0);
    assert_eq!(p.connect(2, "bob", "tb").texts(2), [OPEN]);
    assert_eq!(p.run_until(secs(10)).send_count(), 0);
}

#[test]
fn queues_are_bounded() {
    let mut p = P::with(PeerjsConfig { max_queued_per_peer: 2, ..PeerjsConfig::default() });
    p.connect(1, "alice", "ta");
    for _ in 0..3 {
        p.text(1, &offer("bob"));
    }
    assert_eq!(p.server.stats().drops.get(DropReason::QueueFull), 1);
    assert_eq!(p.connect(2, "bob", "tb").texts(2).len(), 3, "OPEN and two messages");
}

// ----- PeerJS 5: liveness -----

#[test]
fn pj5_no_heartbeat_for_alive_timeout_closes_the_socket() {
    let mut p = P::new();
    p.connect(1, "alice", "ta");
    p.connect(2, "bob", "tb");
    // Bob sends HEARTBEAT every 5 s as PeerJS does; alice is silent.
    let mut closes = Vec::new();
    for s in (5..=600).step_by(5) {
        closes.extend(p.run_until(secs(s)).closes());
        p.text(2, r#"{"type":"HEARTBEAT"}"#);
    }
    assert_eq!(closes, [(1, close_code::SHUTDOWN)]);
    assert!(!p.server.is_registered(NS, "alice"));
    assert!(p.server.is_registered(NS, "bob"));
    assert_eq!(p.server.stats().alive_timeouts, 1);
    // The id is free again.
    assert_eq!(p.connect(3, "alice", "new").texts(3), [OPEN]);
}

#[test]
fn the_alive_timeout_is_exactly_60s_after_the_last_heartbeat() {
    let mut p = P::new();
    p.connect(1, "alice", "ta");
    p.at(secs(30));
    p.text(1, r#"{"type":"HEARTBEAT"}"#);
    assert!(p.run_until(Duration::from_millis(89_999)).closes().is_empty());
    assert_eq!(p.run_until(secs(90)).closes(), [(1, close_code::SHUTDOWN)]);
}

// ----- failed sends -----

#[test]
fn a_failed_send_closes_the_destination_and_sends_leave_to_the_sender() {
    let mut p = P::new();
    p.connect(1, "alice", "ta");
    p.connect(2, "bob", "tb");
    let out = p.text(1, &offer("bob"));
    let failed = out.texts(2)[0].to_owned();
    p.server.handle_send_failed(p.now, ConnectionId(2), &failed);
    let out = p.drain();
    assert_eq!(out.closes(), [(2, close_code::POLICY)]);
    assert_eq!(out.texts(1), [r#"{"type":"LEAVE","src":"bob","dst":"alice"}"#]);
    assert!(!p.server.is_registered(NS, "bob"));
    // An OPEN that could not be sent: closed, no LEAVE to anyone.
    p.server.handle_send_failed(p.now, ConnectionId(1), OPEN);
    let out = p.drain();
    assert_eq!(out.closes(), [(1, close_code::POLICY)]);
    assert_eq!(out.send_count(), 0);
}

// ----- namespaces and booking scopes -----

#[test]
fn ids_are_namespaced() {
    let mut p = P::new();
    p.connect_reg(1, reg("k1", "alice", "t"));
    assert_eq!(p.connect_reg(2, reg("k2", "alice", "other")).texts(2), [OPEN]);
    p.connect_reg(3, reg("k2", "bob", "t"));
    let out = p.text(1, &offer("bob"));
    assert_eq!(out.send_count(), 0, "bob of k2 is not reachable from k1");
    assert_eq!(p.server.peer_ids("k2"), ["alice", "bob"]);
}

#[test]
fn scoped_ids_close_at_the_hard_end_and_on_cancel() {
    let mut p = P::new();
    let scope =
        |b: &str| Some(Scope { booking: b.into(), participant: "par_x".into(), hard_end_at: p.t0 + secs(3600) });
    let (s1, s2) = (scope("bkg_1"), scope("bkg_2"));
    p.connect_reg(1, Registration { scope: s1.clone(), ..reg("bkg_1", "host", "t") });
    p.connect_reg(2, Registration { scope: s1.clone(), ..reg("bkg_1", "guest", "t") });
    p.connect_reg(3, Registration { scope: s2.clone(), ..reg("bkg_2", "x", "t") });
    assert_eq!(p.text(1, &offer("guest")).texts(2), [relayed("OFFER", "host", "guest")]);
    assert_eq!(p.server.poll_timeout(), Some(p.t0 + secs(60)), "the alive timeout comes first");

    p.server.close_booking(p.now, "bkg_2", CloseReason::Cancelled);
    assert_eq!(p.drain().closes(), [(3, close_code::UNKNOWN_BOOKING)]);

    // Keep both alive with heartbeats until the hard end.
    let mut closes = Vec::new();
    for s in (10..=3600).step_by(10) {
        closes.extend(p.run_until(secs(s)).closes());
        for c in [1, 2] {
            p.text(c, r#"{"type":"HEARTBEAT"}"#);
        }
    }
    closes.sort_unstable();
    assert_eq!(closes, [(1, close_code::OUTSIDE_WINDOW), (2, close_code::OUTSIDE_WINDOW)]);
    // Registering after the hard end: closed at once.
    let out = p.connect_reg(4, Registration { scope: s1, ..reg("bkg_1", "host", "t") });
    assert_eq!(out.closes(), [(4, close_code::OUTSIDE_WINDOW)]);
    assert_eq!(out.send_count(), 0);
}

#[test]
fn scoped_limit_and_cross_booking_ids() {
    let mut p = P::with(PeerjsConfig { scoped_limit: 2, ..PeerjsConfig::default() });
    let end = p.t0 + secs(3600);
    let scoped = |ns: &str, b: &str, id: &str| Registration {
        scope: Some(Scope { booking: b.into(), participant: format!("par_{id}"), hard_end_at: end }),
        ..reg(ns, id, "t")
    };
    p.connect_reg(1, scoped("bkg_1", "bkg_1", "a"));
    p.connect_reg(2, scoped("bkg_1", "bkg_1", "b"));
    let out = p.connect_reg(3, scoped("bkg_1", "bkg_1", "c"));
    assert_eq!(out.closes(), [(3, close_code::POLICY)]);
    // Same namespace, same id and token, but another booking: taken.
    let out = p.connect_reg(4, scoped("bkg_1", "bkg_9", "a"));
    assert_eq!(out.texts(4), [ID_TAKEN]);
}

#[test]
fn one_participant_cannot_use_up_its_bookings_ids_and_lock_the_other_out() {
    let mut p = P::new();
    let end = p.t0 + secs(3600);
    let as_participant = |participant: &str, id: &str| Registration {
        scope: Some(Scope { booking: "bkg_1".into(), participant: participant.into(), hard_end_at: end }),
        ..reg("bkg_1", id, "t")
    };
    // The guest's session token registers four ids: from the third on, each replaces the guest's oldest.
    assert_eq!(p.connect_reg(1, as_participant("par_guest", "g1")).texts(1), [OPEN]);
    assert_eq!(p.connect_reg(2, as_participant("par_guest", "g2")).texts(2), [OPEN]);
    let out = p.connect_reg(3, as_participant("par_guest", "g3"));
    assert_eq!(out.texts(3), [OPEN]);
    assert_eq!(out.closes(), [(1, close_code::REPLACED)]);
    let out = p.connect_reg(4, as_participant("par_guest", "g4"));
    assert_eq!(out.closes(), [(2, close_code::REPLACED)]);
    assert_eq!(p.server.peer_ids("bkg_1"), ["g3", "g4"]);
    // The host still gets in with two ids of its own.
    assert_eq!(p.connect_reg(5, as_participant("par_host", "h1")).texts(5), [OPEN]);
    assert_eq!(p.connect_reg(6, as_participant("par_host", "h2")).texts(6), [OPEN]);
    assert_eq!(p.text(5, &offer("g4")).texts(4), [relayed("OFFER", "h1", "g4")]);
}

#[test]
fn websocket_pings_count_against_the_message_rate() {
    let mut p = P::with(PeerjsConfig { messages_per_second: 5, ..PeerjsConfig::default() });
    p.connect_reg(1, reg("k", "a", "t"));
    // Burst = 2 x rate.
    for _ in 0..11 {
        p.server.handle_ping(p.now, duet_signaling::ConnectionId(1));
    }
    let out = p.drain();
    assert_eq!(out.closes(), [(1, close_code::RATE_LIMITED)]);
}
