//! Scenario tests of the native v1 hub on virtual time: what two browsers in a booking would see.

mod support;

use std::time::Duration;

use duet_signaling::{CloseReason, DropReason, HubConfig, HubEvent, LeaveReason, Output, Role, close_code};
use serde_json::{Value, json};
use support::*;

const OFFER: &str =
    r#"{"type":"signal","session":1,"data":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}"#;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ----- pairing -----

#[test]
fn guest_then_host_both_get_welcome_and_ready_session_1() {
    let mut sim = Sim::new();
    let out = sim.connect(2, "bkg_1", Role::Guest);
    assert_eq!(out.types(2), ["welcome"]);
    let w = &out.frames(2)[0];
    assert_eq!(w["v"], 1);
    assert_eq!(w["booking"], "bkg_1");
    assert_eq!(w["you"], json!({"peer": "par_bkg_1_guest", "role": "guest"}));
    assert_eq!(w["initiator"], false);
    assert_eq!(w["ping_interval_s"], 20);
    // ice_servers and window are embedded verbatim.
    assert!(out.texts(2)[0].contains(ICE));
    assert!(out.texts(2)[0].contains(WINDOW));

    let out = sim.connect(1, "bkg_1", Role::Host);
    assert_eq!(out.types(1), ["welcome", "ready"]);
    assert_eq!(out.frames(1)[0]["initiator"], true);
    assert_eq!(
        out.frames(1)[1],
        json!({"type": "ready", "session": 1, "peer": {"peer": "par_bkg_1_guest", "role": "guest"}})
    );
    assert_eq!(
        out.frames(2),
        [json!({"type": "ready", "session": 1, "peer": {"peer": "par_bkg_1_host", "role": "host"}})]
    );
    assert!(out.events().contains(&&HubEvent::Ready { booking: "bkg_1".into(), session: 1 }));
    assert_eq!(sim.hub.connection_count(), 2);
    assert_eq!(sim.hub.room_count(), 1);
}

#[test]
fn host_then_guest_forms_the_same_pair() {
    let mut sim = Sim::new();
    let out = sim.connect(1, "bkg_1", Role::Host);
    assert_eq!(out.types(1), ["welcome"]);
    assert!(out.events().contains(&&HubEvent::RoomOpened { booking: "bkg_1".into() }));
    let out = sim.connect(2, "bkg_1", Role::Guest);
    assert_eq!(out.types(2), ["welcome", "ready"]);
    assert_eq!(
        out.frames(1),
        [json!({"type": "ready", "session": 1, "peer": {"peer": "par_bkg_1_guest", "role": "guest"}})]
    );
    assert_eq!(out.frames(2)[1]["session"], 1);
}

#[test]
fn bookings_are_separate_rooms() {
    let mut sim = Sim::paired();
    let out = sim.connect(3, "bkg_2", Role::Host);
    assert_eq!(out.types(3), ["welcome"], "another booking's host must not pair with bkg_1");
    assert_eq!(sim.hub.room_count(), 2);
    let out = sim.text(3, OFFER);
    assert_eq!(out.frames(3)[0]["code"], "no_peer");
    assert!(out.texts(1).is_empty() && out.texts(2).is_empty());
}

// ----- relay -----

#[test]
fn signal_reaches_the_partner_with_data_byte_identical() {
    let mut sim = Sim::paired();
    let data = "{ \"type\" : \"offer\",\"sdp\":\"v=0\\r\\na=x:\\u00e9\\/\"  ,\"extra\":[1.50,1e3] }";
    let frame = format!("{{\"type\":\"signal\",\"session\":1,\"data\":{data}}}");
    let out = sim.text(1, &frame);
    let texts = out.texts(2);
    assert_eq!(texts.len(), 1);
    assert!(texts[0].ends_with(&format!("\"data\":{data}}}")), "{}", texts[0]);
    let v: Value = serde_json::from_str(texts[0]).expect("json");
    assert_eq!(v["type"], "signal");
    assert_eq!(v["session"], 1);
    assert_eq!(v["from"], "par_bkg_1_host");
    assert!(out.texts(1).is_empty(), "sender gets no echo or ack");
    assert!(out.events().contains(&&HubEvent::Relayed { bytes: data.len() }));
}

#[test]
fn every_simple_peer_signal_type_is_relayed_both_ways() {
    let mut sim = Sim::paired();
    let from_guest = [
        r#"{"type":"answer","sdp":"v=0"}"#,
        r#"{"type":"candidate","candidate":{"candidate":"candidate:0 1 UDP 2122252543 192.0.2.1 50000 typ host","sdpMLineIndex":0,"sdpMid":"0"}}"#,
        r#"{"type":"renegotiate","renegotiate":true}"#,
        r#"{"type":"transceiverRequest","transceiverRequest":{"kind":"video"}}"#,
    ];
    for data in from_guest {
        let out = sim.text(2, &format!(r#"{{"type":"signal","data":{data}}}"#));
        let texts = out.texts(1);
        assert_eq!(texts.len(), 1, "{data}");
        assert!(texts[0].contains(data));
    }
    let out = sim.text(1, OFFER);
    assert_eq!(out.frames(2)[0]["data"]["type"], "offer");
    assert_eq!(sim.hub.stats().signals_relayed, 5);
}

#[test]
fn signal_without_partner_is_dropped_not_queued() {
    let mut sim = Sim::new();
    sim.connect(2, "bkg_1", Role::Guest);
    let out = sim.text(2, r#"{"type":"signal","data":{"type":"answer","sdp":"v=0"}}"#);
    assert_eq!(out.frames(2)[0]["type"], "error");
    assert_eq!(out.frames(2)[0]["code"], "no_peer");
    let out = sim.connect(1, "bkg_1", Role::Host);
    assert_eq!(out.types(1), ["welcome", "ready"], "the earlier signal must not be delivered late");
    assert_eq!(sim.hub.stats().drops.no_peer, 1);
}

#[test]
fn stale_session_is_dropped_with_an_error() {
    let mut sim = Sim::paired();
    // The guest reconnects: session 2.
    sim.disconnect(2);
    let out = sim.connect(3, "bkg_1", Role::Guest);
    assert_eq!(out.frames(1)[0]["session"], 2);
    // The host's old peer still emits for session 1.
    let out = sim.text(1, OFFER);
    assert_eq!(
        out.frames(1),
        [json!({"type": "error", "code": "stale_session", "message": out.frames(1)[0]["message"]})]
    );
    assert!(out.texts(3).is_empty());
    assert!(out.events().contains(&&HubEvent::Dropped { reason: DropReason::StaleSession }));
    // The current session and an absent session both pass.
    let out = sim.text(1, &OFFER.replace("\"session\":1", "\"session\":2"));
    assert_eq!(out.frames(3)[0]["session"], 2);
    let out = sim.text(1, r#"{"type":"signal","data":{"sdp":"x","type":"offer"}}"#);
    assert_eq!(out.frames(3)[0]["session"], 2);
    assert_eq!(sim.hub.stats().drops.stale_session, 1);
}

#[test]
fn bad_messages_get_an_error_and_the_socket_stays() {
    let mut sim = Sim::paired();
    for bad in [
        "ready",
        "not json",
        "{\"type\":",
        "[]",
        "42",
        r#"{"type":"offer","sdp":"v=0"}"#,
        r#"{"type":"signal"}"#,
        r#"{"type":"signal","data":{"type":"offer"}}"#,
        r#"{"type":"signal","data":{"candidate":null}}"#,
        r#"{"type":"signal","data":"{\"sdp\":\"v=0\"}"}"#,
        r#"{"type":"signal","session":"1","data":{"sdp":"v=0"}}"#,
        r#"{"nope":1}"#,
    ] {
        let out = sim.text(1, bad);
        assert_eq!(out.frames(1).len(), 1, "{bad}");
        assert_eq!(out.frames(1)[0]["code"], "bad_message", "{bad}");
        assert!(out.texts(2).is_empty(), "{bad} must not reach the partner");
        assert!(out.closes().is_empty(), "{bad} must not close the socket");
    }
    assert_eq!(sim.hub.connection_count(), 2);
    assert_eq!(sim.text(1, OFFER).texts(2).len(), 1);
    assert_eq!(sim.hub.stats().drops.bad_message, 12);
}

#[test]
fn binary_frames_are_refused_but_do_not_close() {
    let mut sim = Sim::paired();
    sim.hub.handle_binary(sim.now, conn(1), 10);
    let out = sim.drain();
    assert_eq!(out.frames(1)[0]["code"], "bad_message");
    assert!(out.closes().is_empty() && out.texts(2).is_empty());
    assert_eq!(sim.hub.stats().drops.binary, 1);
}

#[test]
fn ping_gets_pong_with_t_echoed_verbatim() {
    let mut sim = Sim::new();
    sim.connect(1, "bkg_1", Role::Host);
    let out = sim.text(1, r#"{"type":"ping","t":1767261600123}"#);
    assert_eq!(out.texts(1), [r#"{"type":"pong","t":1767261600123}"#]);
    let out = sim.text(1, r#"{"type":"ping","t":{"a": 1.50}}"#);
    assert_eq!(out.texts(1), [r#"{"type":"pong","t":{"a": 1.50}}"#]);
    let out = sim.text(1, r#"{"type":"ping"}"#);
    assert_eq!(out.frames(1), [json!({"type": "pong"})]);
}

// ----- leaving, replacement and the close race -----

#[test]
fn leave_closes_1000_and_tells_the_partner() {
    let mut sim = Sim::paired();
    let out = sim.text(2, r#"{"type":"leave"}"#);
    assert_eq!(out.closes(), [(2, close_code::NORMAL)]);
    assert_eq!(
        out.frames(1),
        [json!({"type": "peer-left", "session": 1, "peer": "par_bkg_1_guest", "reason": "left"})]
    );
    assert!(
        out.events().iter().any(|e| matches!(e, HubEvent::Left { reason: LeaveReason::Left, role: Role::Guest, .. }))
    );
    assert_eq!(sim.hub.connection_count(), 1);
    // The closed socket's own disconnect is a no-op.
    assert!(sim.disconnect(2).0.is_empty());
}

#[test]
fn disconnect_tells_the_partner_closed_and_a_rejoin_is_session_2() {
    let mut sim = Sim::paired();
    let out = sim.disconnect(1);
    assert_eq!(
        out.frames(2),
        [json!({"type": "peer-left", "session": 1, "peer": "par_bkg_1_host", "reason": "closed"})]
    );
    assert!(out.closes().is_empty());
    let out = sim.text(2, r#"{"type":"signal","data":{"sdp":"x"}}"#);
    assert_eq!(out.frames(2)[0]["code"], "no_peer");
    let out = sim.connect(5, "bkg_1", Role::Host);
    assert_eq!(out.frames(5)[1]["session"], 2);
    assert_eq!(out.frames(2)[0]["session"], 2);
}

#[test]
fn liveness_timeout_tells_the_partner_timeout() {
    let mut sim = Sim::paired();
    sim.hub.handle_liveness_timeout(sim.now, conn(2));
    let out = sim.drain();
    assert_eq!(out.frames(1)[0]["reason"], "timeout");
    assert!(out.closes().is_empty());
}

#[test]
fn newest_connection_per_role_wins_and_the_old_close_does_not_evict_it() {
    let mut sim = Sim::paired();
    sim.at(secs(10));
    let out = sim.connect(3, "bkg_1", Role::Host);
    assert_eq!(out.closes(), [(1, close_code::REPLACED)]);
    assert!(out.0.iter().any(|o| matches!(o, Output::Close { conn: c, reason: "replaced", .. } if c.0 == 1)));
    assert!(out.texts(1).is_empty(), "the replaced socket gets only its close");
    assert_eq!(
        out.frames(2),
        [
            json!({"type": "peer-left", "session": 1, "peer": "par_bkg_1_host", "reason": "replaced"}),
            json!({"type": "ready", "session": 2, "peer": {"peer": "par_bkg_1_host", "role": "host"}}),
        ]
    );
    assert_eq!(out.types(3), ["welcome", "ready"]);
    assert_eq!(out.frames(3)[1]["session"], 2);
    assert!(out.events().iter().any(|e| matches!(e, HubEvent::Left { reason: LeaveReason::Replaced, .. })));

    // The old socket is half-open: its close arrives 30 s later (ws 7 closeTimeout) — the Virtual Y race.
    sim.at(secs(40));
    let out = sim.disconnect(1);
    assert!(out.0.is_empty(), "a stale close must change nothing: {out:?}");
    // Frames still in flight from the old socket are ignored.
    let out = sim.text(1, &OFFER.replace("\"session\":1", "\"session\":2"));
    assert_eq!(out.send_count(), 0);
    assert_eq!(sim.hub.connection_count(), 2);
    // The replacement still talks to the guest.
    let out = sim.text(2, r#"{"type":"signal","session":2,"data":{"type":"answer","sdp":"v=0"}}"#);
    assert_eq!(out.frames(3)[0]["from"], "par_bkg_1_guest");
    assert_eq!(sim.hub.stats().closes.replaced, 1);
    assert_eq!(sim.hub.stats().drops.unknown_connection, 1);
}

#[test]
fn replacing_a_lone_peer_sends_no_ready() {
    let mut sim = Sim::new();
    sim.connect(1, "bkg_1", Role::Guest);
    let out = sim.connect(2, "bkg_1", Role::Guest);
    assert_eq!(out.closes(), [(1, close_code::REPLACED)]);
    assert_eq!(out.types(2), ["welcome"]);
    let out = sim.connect(3, "bkg_1", Role::Host);
    assert_eq!(out.frames(3)[1]["session"], 1, "no pairing happened before");
}

// ----- limits -----

#[test]
fn too_big_frame_closes_1009_and_exact_limit_passes() {
    let mut sim = Sim::with_config(HubConfig { max_message_bytes: 200, ..HubConfig::default() });
    sim.connect(1, "bkg_1", Role::Host);
    sim.connect(2, "bkg_1", Role::Guest);
    let prefix = r#"{"type":"signal","data":{"sdp":""#;
    let make = |len: usize| format!("{prefix}{}\"}}}}", "a".repeat(len - prefix.len() - 3));
    let exact = make(200);
    assert_eq!(exact.len(), 200);
    let out = sim.text(1, &exact);
    assert_eq!(out.texts(2).len(), 1);
    let out = sim.text(1, &make(201));
    assert_eq!(out.frames(1)[0]["code"], "too_big");
    assert_eq!(out.closes(), [(1, close_code::TOO_BIG)]);
    assert_eq!(out.frames(2)[0]["type"], "peer-left");
    assert_eq!(out.frames(2)[0]["reason"], "closed");
    assert_eq!(sim.hub.stats().closes.too_big, 1);
}

#[test]
fn rate_limit_allows_a_burst_of_twice_the_rate_then_closes_4029() {
    let mut sim = Sim::with_config(HubConfig { messages_per_second: 5, ..HubConfig::default() });
    sim.connect(1, "bkg_1", Role::Host);
    sim.connect(2, "bkg_1", Role::Guest);
    for _ in 0..10 {
        let out = sim.text(1, r#"{"type":"ping"}"#);
        assert!(out.closes().is_empty());
    }
    let out = sim.text(1, r#"{"type":"ping"}"#);
    assert_eq!(out.frames(1)[0]["code"], "rate_limited");
    assert_eq!(out.closes(), [(1, close_code::RATE_LIMITED)]);
    assert_eq!(out.frames(2)[0]["type"], "peer-left");
    assert_eq!(sim.hub.stats().closes.rate_limited, 1);
}

#[test]
fn a_steady_rate_at_the_limit_is_never_closed() {
    let mut sim = Sim::with_config(HubConfig { messages_per_second: 5, ..HubConfig::default() });
    sim.connect(1, "bkg_1", Role::Host);
    for i in 0..100u64 {
        sim.at(Duration::from_millis(200 * i));
        let out = sim.text(1, r#"{"type":"ping"}"#);
        assert!(out.closes().is_empty(), "closed at message {i}");
    }
}

// ----- window -----

#[test]
fn warnings_at_t_minus_5_and_1_then_4003_at_hard_end() {
    let mut sim = Sim::paired();
    assert_eq!(sim.hub.poll_timeout(), Some(sim.t0 + HARD_END - secs(300)));
    // Early wake-ups do nothing.
    sim.at(HARD_END - secs(301));
    assert!(sim.timeout().0.is_empty());

    sim.at(HARD_END - secs(300));
    let out = sim.timeout();
    let warn = json!({"type": "window", "event": "closing", "closes_at": HARD_END_RFC3339, "in_s": 300});
    assert_eq!(out.frames(1), std::slice::from_ref(&warn));
    assert_eq!(out.frames(2), [warn]);
    assert_eq!(sim.hub.poll_timeout(), Some(sim.t0 + HARD_END - secs(60)));

    // Slightly late wake-up still says 60.
    sim.at(HARD_END - secs(60) + Duration::from_millis(30));
    let out = sim.timeout();
    assert_eq!(out.frames(1)[0]["in_s"], 60);
    assert_eq!(out.frames(2)[0]["in_s"], 60);
    assert_eq!(sim.hub.poll_timeout(), Some(sim.t0 + HARD_END));

    sim.at(HARD_END);
    let out = sim.timeout();
    let mut closes = out.closes();
    closes.sort();
    assert_eq!(closes, [(1, close_code::OUTSIDE_WINDOW), (2, close_code::OUTSIDE_WINDOW)]);
    assert_eq!(out.send_count(), 0, "no peer-left when the whole room closes");
    assert!(
        out.events().contains(&&HubEvent::RoomClosed { booking: "bkg_1".into(), reason: CloseReason::WindowClosed })
    );
    assert_eq!(sim.hub.poll_timeout(), None);
    assert_eq!((sim.hub.connection_count(), sim.hub.room_count()), (0, 0));
    assert_eq!(sim.hub.stats().window_warnings, 4);
    assert_eq!(sim.hub.stats().closes.outside_window, 2);
}

#[test]
fn a_late_wakeup_sends_one_warning_with_the_real_time_left() {
    let mut sim = Sim::paired();
    sim.at(HARD_END - secs(30));
    let out = sim.timeout();
    assert_eq!(
        out.frames(1),
        [json!({"type": "window", "event": "closing", "closes_at": HARD_END_RFC3339, "in_s": 30})]
    );
    assert_eq!(sim.hub.poll_timeout(), Some(sim.t0 + HARD_END));
    // Sleeping through everything closes the room.
    sim.at(HARD_END + secs(3600));
    let out = sim.timeout();
    assert_eq!(out.closes().len(), 2);
    assert_eq!(sim.hub.room_count(), 0);
}

#[test]
fn joining_after_t_minus_5_skips_that_warning() {
    let mut sim = Sim::new();
    sim.at(HARD_END - secs(200));
    sim.connect(1, "bkg_1", Role::Host);
    assert_eq!(sim.hub.poll_timeout(), Some(sim.t0 + HARD_END - secs(60)));
}

#[test]
fn an_admission_with_a_later_hard_end_moves_the_room_deadline() {
    let mut sim = Sim::paired();
    let adm = sim.admission_ending("bkg_1", Role::Guest, HARD_END + secs(1800));
    sim.hub.handle_connect(sim.now, conn(3), adm);
    sim.drain();
    assert_eq!(sim.hub.poll_timeout(), Some(sim.t0 + HARD_END + secs(1800) - secs(300)));
}

#[test]
fn connect_after_hard_end_is_closed_4003() {
    let mut sim = Sim::new();
    sim.at(HARD_END);
    let out = sim.connect(1, "bkg_1", Role::Host);
    assert_eq!(out.closes(), [(1, close_code::OUTSIDE_WINDOW)]);
    assert_eq!(out.send_count(), 0);
    assert_eq!((sim.hub.connection_count(), sim.hub.room_count()), (0, 0));
}

#[test]
fn empty_room_survives_until_hard_end_and_keeps_its_session_counter() {
    let mut sim = Sim::paired();
    sim.disconnect(1);
    sim.disconnect(2);
    assert_eq!(sim.hub.room_count(), 1);
    sim.connect(3, "bkg_1", Role::Host);
    let out = sim.connect(4, "bkg_1", Role::Guest);
    assert_eq!(out.frames(4)[1]["session"], 2);
    sim.disconnect(3);
    sim.disconnect(4);
    sim.at(HARD_END);
    let out = sim.timeout();
    assert!(out.closes().is_empty());
    assert!(
        out.events().contains(&&HubEvent::RoomClosed { booking: "bkg_1".into(), reason: CloseReason::WindowClosed })
    );
    assert_eq!(sim.hub.room_count(), 0);
}

// ----- cancel and shutdown -----

#[test]
fn cancel_closes_the_booking_4004_and_leaves_others_alone() {
    let mut sim = Sim::paired();
    sim.connect(3, "bkg_2", Role::Host);
    sim.hub.close_booking(sim.now, "bkg_1", CloseReason::Cancelled);
    let out = sim.drain();
    let mut closes = out.closes();
    closes.sort();
    assert_eq!(closes, [(1, close_code::UNKNOWN_BOOKING), (2, close_code::UNKNOWN_BOOKING)]);
    assert!(out.events().iter().any(|e| matches!(e, HubEvent::Left { reason: LeaveReason::Cancelled, .. })));
    assert_eq!((sim.hub.connection_count(), sim.hub.room_count()), (1, 1));
    // bkg_2's timers remain; bkg_1's are gone.
    assert_eq!(sim.hub.poll_timeout(), Some(sim.t0 + HARD_END - secs(300)));
    // Unknown booking: nothing.
    sim.hub.close_booking(sim.now, "bkg_404", CloseReason::Cancelled);
    assert!(sim.drain().0.is_empty());
}

#[test]
fn shutdown_closes_everything_1001() {
    let mut sim = Sim::paired();
    sim.connect(3, "bkg_2", Role::Guest);
    sim.hub.close_all(sim.now, CloseReason::Shutdown);
    let out = sim.drain();
    let mut closes = out.closes();
    closes.sort();
    assert_eq!(closes, [(1, 1001), (2, 1001), (3, 1001)]);
    assert_eq!((sim.hub.connection_count(), sim.hub.room_count(), sim.hub.poll_timeout()), (0, 0, None));
    // The room slot is reused cleanly afterwards.
    let out = sim.connect(4, "bkg_1", Role::Host);
    assert_eq!(out.types(4), ["welcome"]);
    assert_eq!(sim.hub.room_count(), 1);
}

// ----- counters -----

#[test]
fn counters_follow_a_whole_meeting() {
    let mut sim = Sim::paired();
    sim.text(1, OFFER);
    sim.text(2, r#"{"type":"signal","session":1,"data":{"type":"answer","sdp":"v=0"}}"#);
    sim.text(2, r#"{"type":"signal","session":9,"data":{"type":"answer","sdp":"v=0"}}"#);
    sim.text(2, "garbage");
    sim.text(2, r#"{"type":"ping","t":1}"#);
    sim.connect(3, "bkg_1", Role::Guest); // replaces 2, session 2
    sim.text(3, r#"{"type":"leave"}"#);
    sim.text(1, r#"{"type":"signal","data":{"sdp":"x"}}"#); // no peer
    let s = sim.hub.stats();
    assert_eq!(s.connections_total, 3);
    assert_eq!(s.connections, 1);
    assert_eq!((s.rooms, s.rooms_total), (1, 1));
    assert_eq!(s.ready_total, 2);
    assert_eq!(s.signals_relayed, 2);
    assert_eq!(s.pongs, 1);
    assert_eq!(s.drops.stale_session, 1);
    assert_eq!(s.drops.bad_message, 1);
    assert_eq!(s.drops.no_peer, 1);
    assert_eq!(s.closes.replaced, 1);
    assert_eq!(s.closes.normal, 1);
    assert_eq!(s.closes.get(close_code::NORMAL), 1);
}
