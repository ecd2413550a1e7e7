//! vy mode on virtual time: what a Virtual Y browser (simple-peer over the Virtual Y signaling server) would see.
//! Conformance cases of research/signaling.md §10.6 "VY" that are hub behaviour (7 to 9 are the driver's).

mod support;

use std::time::Duration;

use duet_signaling::{CloseReason, DropReason, HubEvent, LeaveReason, Mode, Output, Role, VyAdmission, close_code};
use support::*;

const OFFER: &str = r#"{"type":"offer","sdp":"x"}"#;
const BOOKING: &str = "bkg_1";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Instructor (host, conn 1) and customer (guest, conn 2) paired in vy mode; outputs drained.
fn vy_paired() -> Sim {
    let mut sim = Sim::new();
    sim.connect_vy(1, BOOKING, Role::Host);
    sim.connect_vy(2, BOOKING, Role::Guest);
    sim
}

// ----- VY 1, 2: pairing -----

#[test]
fn vy1_customer_then_instructor_both_get_exactly_ready_once() {
    let mut sim = Sim::new();
    let out = sim.connect_vy(2, BOOKING, Role::Guest);
    assert_eq!(out.send_count(), 0, "nothing on connect: {out:?}");
    assert!(out.closes().is_empty());

    let out = sim.connect_vy(1, BOOKING, Role::Host);
    assert_eq!(out.texts(1), ["ready"]);
    assert_eq!(out.texts(2), ["ready"]);
    assert_eq!(out.send_count(), 2);
    assert_eq!(out.texts(1)[0].len(), 5, "the exact 5-byte text");
    assert!(out.events().iter().any(|e| matches!(e, HubEvent::Ready { session: 1, .. })));
}

#[test]
fn vy2_instructor_then_customer_is_the_same() {
    let mut sim = Sim::new();
    assert_eq!(sim.connect_vy(1, BOOKING, Role::Host).send_count(), 0);
    let out = sim.connect_vy(2, BOOKING, Role::Guest);
    assert_eq!(out.texts(1), ["ready"]);
    assert_eq!(out.texts(2), ["ready"]);
    assert_eq!(out.send_count(), 2);
    assert_eq!(sim.hub.stats().vy.ready_total, 1);
}

// ----- VY 3: relay -----

#[test]
fn vy3_frames_reach_the_other_slot_byte_identical() {
    let mut sim = vy_paired();
    let out = sim.text(1, OFFER);
    assert_eq!(out.texts(2), [OFFER]);
    assert_eq!(out.send_count(), 1);

    // Anything text goes through unchanged, not just JSON: the Virtual Y server never parses.
    for frame in ["{ \"sdp\" : \"v=0\\r\\n\\u00e9\" }  ", "not json", "", "ünï😀", r#"{"type":"error","code":"x"}"#]
    {
        let out = sim.text(2, frame);
        assert_eq!(out.texts(1), [frame]);
        assert_eq!(out.send_count(), 1);
    }
    assert!(sim.text(1, "x").events().contains(&&HubEvent::Relayed { bytes: 1 }));
}

// ----- VY 4: no queue -----

#[test]
fn vy4_a_frame_without_partner_is_dropped_and_never_delivered_later() {
    let mut sim = Sim::new();
    sim.connect_vy(1, BOOKING, Role::Host);
    let out = sim.text(1, OFFER);
    assert_eq!(out.send_count(), 0, "no error frame either");
    assert!(out.events().contains(&&HubEvent::Dropped { reason: DropReason::NoPeer }));

    sim.at(secs(1));
    let out = sim.connect_vy(2, BOOKING, Role::Guest);
    assert_eq!(out.texts(2), ["ready"], "only ready, not the old offer");
    assert_eq!(out.texts(1), ["ready"]);
    sim.at(secs(120));
    assert_eq!(sim.timeout().send_count(), 0);
}

#[test]
fn vy_closing_a_socket_tells_the_partner_nothing() {
    let mut sim = vy_paired();
    let out = sim.disconnect(2);
    assert_eq!(out.send_count(), 0);
    assert!(out.closes().is_empty());
    // A frame now goes nowhere.
    assert_eq!(sim.text(1, OFFER).send_count(), 0);
    // The customer comes back: ready to both again.
    let out = sim.connect_vy(3, BOOKING, Role::Guest);
    assert_eq!(out.texts(1), ["ready"]);
    assert_eq!(out.texts(3), ["ready"]);
}

// ----- VY 5: a live participant is never displaced; a dead one is replaced, and the close race -----

#[test]
fn vy5_a_newcomer_never_displaces_a_live_participant_whatever_role_it_claims() {
    let mut sim = vy_paired();
    // A stranger claims the instructor's role (isInstructorRole=true), then the customer's.
    for (c, role) in [(3, Role::Host), (4, Role::Guest)] {
        let out = sim.connect_vy(c, BOOKING, role);
        assert_eq!(out.closes(), [(c, close_code::ROOM_FULL)]);
        assert_eq!(out.send_count(), 0, "the refused socket gets no frame and nobody hears of it: {out:?}");
        assert!(out.events().iter().any(|e| matches!(e, HubEvent::Refused { code: close_code::ROOM_FULL, .. })));
    }
    // The real pair still talks, and the refused sockets' frames go nowhere.
    assert_eq!(sim.text(2, OFFER).texts(1), [OFFER]);
    assert_eq!(sim.text(3, OFFER).send_count(), 0);
    assert_eq!(sim.hub.connection_count(), 2);
    assert_eq!(sim.hub.stats().closes.slot_taken, 2);
}

#[test]
fn vy5_an_occupant_answering_its_pings_stays_live_across_many_intervals() {
    let mut sim = vy_paired();
    for i in 1..=10u64 {
        sim.at(secs(20 * i));
        sim.ping_sent(1);
        sim.at(secs(20 * i) + Duration::from_millis(300));
        // A newcomer while the ping is out but within pong_timeout: still refused.
        assert_eq!(sim.connect_vy(100 + i, BOOKING, Role::Host).closes(), [(100 + i, close_code::ROOM_FULL)]);
        sim.pong(1);
    }
    assert_eq!(sim.text(1, OFFER).texts(2), [OFFER]);
}

#[test]
fn vy5_a_refused_newcomer_probes_the_occupant_and_a_dead_one_is_replaced() {
    let mut sim = vy_paired();
    // The instructor's network died silently; the Virtual Y client reconnects every second.
    let out = sim.connect_vy(3, BOOKING, Role::Host);
    assert_eq!(out.closes(), [(3, close_code::ROOM_FULL)]);
    assert_eq!(out.pings(), [1], "the occupant is probed at once");
    sim.at(secs(1));
    let out = sim.connect_vy(4, BOOKING, Role::Host);
    assert_eq!(out.closes(), [(4, close_code::ROOM_FULL)]);
    assert!(out.pings().is_empty(), "one probe at a time");
    // No pong within pong_timeout (5 s): the next retry takes the slot.
    sim.at(secs(6));
    let out = sim.connect_vy(5, BOOKING, Role::Host);
    assert_eq!(out.closes(), [(1, close_code::REPLACED)]);
    assert_eq!(out.texts(5), ["ready"]);
    assert_eq!(out.texts(2), ["ready"], "the customer gets ready again, nothing else");
    assert_eq!(out.send_count(), 2);

    // The old socket's close completes 30 s later (ws 7's closeTimeout on a half-open socket): nothing happens.
    sim.at(secs(36));
    let out = sim.disconnect(1);
    assert!(out.0.iter().all(|o| matches!(o, Output::Event(_))), "{out:?}");
    assert_eq!(sim.hub.connection_count(), 2);

    // The replacement relays both ways; frames from the replaced socket are ignored.
    assert_eq!(sim.text(5, OFFER).texts(2), [OFFER]);
    assert_eq!(sim.text(2, "{\"type\":\"answer\",\"sdp\":\"y\"}").texts(5), ["{\"type\":\"answer\",\"sdp\":\"y\"}"]);
    assert_eq!(sim.text(1, OFFER).send_count(), 0);
}

#[test]
fn vy5_a_probed_occupant_that_answers_keeps_its_slot() {
    let mut sim = vy_paired();
    assert_eq!(sim.connect_vy(3, BOOKING, Role::Guest).pings(), [2]);
    sim.at(secs(2));
    // Any frame proves it alive as well as a pong does.
    sim.text(2, OFFER);
    sim.at(secs(30));
    assert_eq!(sim.connect_vy(4, BOOKING, Role::Guest).closes(), [(4, close_code::ROOM_FULL)]);
    sim.at(secs(31));
    sim.pong(2);
    sim.at(secs(60));
    assert_eq!(sim.connect_vy(5, BOOKING, Role::Guest).closes(), [(5, close_code::ROOM_FULL)]);
}

#[test]
fn vy5_a_participant_whose_socket_closed_gets_back_at_once() {
    let mut sim = vy_paired();
    sim.disconnect(1);
    let out = sim.connect_vy(3, BOOKING, Role::Host);
    assert!(out.closes().is_empty());
    assert_eq!(out.texts(3), ["ready"]);
}

#[test]
fn vy5_customer_reconnect_also_repeats_ready() {
    let mut sim = vy_paired();
    sim.ping_sent(2);
    sim.at(secs(5));
    let out = sim.connect_vy(4, BOOKING, Role::Guest);
    assert_eq!(out.closes(), [(2, close_code::REPLACED)]);
    assert_eq!(out.texts(1), ["ready"]);
    assert_eq!(out.texts(4), ["ready"]);
    assert!(out.events().iter().any(|e| matches!(e, HubEvent::Left { reason: LeaveReason::Replaced, .. })));
    assert_eq!(sim.hub.stats().vy.ready_total, 2);
}

#[test]
fn vy_open_relay_rooms_are_freed_when_empty_and_capped() {
    let mut sim = Sim::with_config(duet_signaling::HubConfig { max_rooms: 6, ..Default::default() });
    for i in 0..2000u64 {
        sim.connect_vy_with(i, VyAdmission::open_relay(&format!("m{i}"), Role::Host));
        let out = sim.disconnect(i);
        assert!(out.events().iter().any(|e| matches!(e, HubEvent::RoomFreed { .. })));
    }
    assert_eq!(sim.hub.room_count(), 0, "2000 connect/close cycles leave no room");
    assert_eq!(sim.hub.stats().rooms, 0);
    // The caps: open-relay rooms get at most half of max_rooms (3), so booked rooms still open; then the total.
    for i in 0..3u64 {
        sim.connect_vy_with(10_000 + i, VyAdmission::open_relay(&format!("k{i}"), Role::Guest));
    }
    let out = sim.connect_vy_with(10_003, VyAdmission::open_relay("k3", Role::Guest));
    assert_eq!(out.closes(), [(10_003, close_code::TRY_AGAIN_LATER)]);
    for i in 0..3u64 {
        assert!(sim.connect(20_000 + i, &format!("bkg_{i}"), Role::Host).closes().is_empty());
    }
    let out = sim.connect(10_004, "bkg_native", Role::Host);
    assert_eq!(out.closes(), [(10_004, close_code::TRY_AGAIN_LATER)]);
    assert_eq!(sim.hub.room_count(), 6);
    // A room that exists still takes its second participant.
    let out = sim.connect_vy_with(10_005, VyAdmission::open_relay("k0", Role::Host));
    assert_eq!(out.texts(10_005), ["ready"]);
}

// ----- VY 6: nothing but ready and relay -----

#[test]
fn vy6_ten_idle_minutes_produce_no_frame_and_no_close() {
    let mut sim = vy_paired();
    // vy rooms have no warnings: the only timer is the hard end.
    assert_eq!(sim.hub.poll_timeout(), Some(sim.t0 + HARD_END));
    for s in 1..=600 {
        sim.at(secs(s));
        let out = sim.timeout();
        assert!(out.0.is_empty(), "at {s}s: {out:?}");
    }
    // Through the native warning times (T-5 min, T-1 min) up to just before the hard end: still nothing.
    for s in [HARD_END.as_secs() - 300, HARD_END.as_secs() - 60, HARD_END.as_secs() - 1] {
        sim.at(secs(s));
        assert!(sim.timeout().0.is_empty());
    }
}

#[test]
fn vy_errors_are_silent_drops_or_plain_closes() {
    let mut sim = vy_paired();
    // Binary frames are dropped, not relayed, no error.
    let out = sim.binary(1, 10);
    assert_eq!(out.send_count(), 0);
    assert!(out.events().contains(&&HubEvent::Dropped { reason: DropReason::Binary }));

    // Oversized text: close 1009 and nothing else, to anyone.
    let big = "x".repeat(65_537);
    let out = sim.text(1, &big);
    assert_eq!(out.send_count(), 0);
    assert_eq!(out.closes(), [(1, close_code::TOO_BIG)]);

    // Rate: the burst (2 × 50) passes, the next frame closes 4029, the partner hears nothing about it.
    let mut sim = vy_paired();
    for _ in 0..100 {
        assert_eq!(sim.text(2, OFFER).texts(1), [OFFER]);
    }
    let out = sim.text(2, OFFER);
    assert_eq!(out.send_count(), 0);
    assert_eq!(out.closes(), [(2, close_code::RATE_LIMITED)]);
}

#[test]
fn vy_strict_mode_drops_what_simple_peer_would_choke_on() {
    let mut sim = Sim::new();
    sim.connect_vy_with(1, VyAdmission::booking(BOOKING, Role::Host, sim.t0 + HARD_END).with_strict(true));
    sim.connect_vy(2, BOOKING, Role::Guest);
    for bad in ["hello", "[1]", r#"{"type":"offer"}"#, r#"{"sdp":""}"#] {
        let out = sim.text(1, bad);
        assert_eq!(out.send_count(), 0, "{bad}");
        assert!(out.events().contains(&&HubEvent::Dropped { reason: DropReason::BadMessage }));
    }
    let candidate = r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host"}}"#;
    assert_eq!(sim.text(1, candidate).texts(2), [candidate]);
    // Strictness is per socket: the non-strict customer's frames are relayed as they are.
    assert_eq!(sim.text(2, "hello").texts(1), ["hello"]);
}

// ----- window and cancellation -----

#[test]
fn vy_hard_end_closes_4003_without_any_frame() {
    let mut sim = vy_paired();
    sim.at(HARD_END);
    let out = sim.timeout();
    assert_eq!(out.send_count(), 0);
    let mut closes = out.closes();
    closes.sort_unstable();
    assert_eq!(closes, [(1, close_code::OUTSIDE_WINDOW), (2, close_code::OUTSIDE_WINDOW)]);
    assert_eq!(sim.hub.room_count(), 0);
    assert_eq!(sim.hub.poll_timeout(), None);

    // Admitted at or after the hard end (a late driver): closed at once.
    let out = sim.connect_vy(3, BOOKING, Role::Guest);
    assert_eq!(out.closes(), [(3, close_code::OUTSIDE_WINDOW)]);
    assert_eq!(out.send_count(), 0);
}

#[test]
fn vy_cancel_closes_4004_and_also_the_native_room_of_the_booking() {
    let mut sim = vy_paired();
    sim.connect(5, BOOKING, Role::Host);
    sim.hub.close_booking(sim.now, BOOKING, CloseReason::Cancelled);
    let out = sim.drain();
    let mut closes = out.closes();
    closes.sort_unstable();
    assert_eq!(closes, [(1, 4004), (2, 4004), (5, 4004)]);
    assert_eq!(out.send_count(), 0);
    assert_eq!(sim.hub.room_count(), 0);
}

#[test]
fn vy_and_native_sockets_of_one_booking_are_never_paired() {
    let mut sim = Sim::new();
    let out = sim.connect(1, BOOKING, Role::Host);
    assert_eq!(out.types(1), ["welcome"]);
    let out = sim.connect_vy(2, BOOKING, Role::Guest);
    assert_eq!(out.send_count(), 0, "no ready across protocols");
    assert_eq!(sim.hub.room_count(), 2);
    // A native signal has no partner; a vy frame has none either.
    assert_eq!(sim.text(1, r#"{"type":"signal","data":{"sdp":"x"}}"#).types(1), ["error"]);
    assert_eq!(sim.text(2, OFFER).send_count(), 0);
    assert_eq!(sim.hub.stats().connections_by_mode(), [(Mode::Native, 1), (Mode::Vy, 1)]);
    assert_eq!((sim.hub.stats().native.rooms, sim.hub.stats().vy.rooms), (1, 1));
}

#[test]
fn vy_open_relay_has_its_own_room_and_no_end() {
    let mut sim = Sim::new();
    let host = VyAdmission::open_relay("7348347", VyAdmission::role_from_query(Some("true")));
    let guest = VyAdmission::open_relay("7348347", VyAdmission::role_from_query(None));
    assert_eq!(host.room, "vy:7348347");
    sim.connect_vy_with(1, host);
    let out = sim.connect_vy_with(2, guest);
    assert_eq!((out.texts(1), out.texts(2)), (vec!["ready"], vec!["ready"]));
    assert_eq!(sim.hub.poll_timeout(), None);
    sim.at(secs(10 * 24 * 3600));
    assert!(sim.timeout().0.is_empty());
    assert_eq!(sim.text(2, OFFER).texts(1), [OFFER]);
    sim.hub.close_booking(sim.now, "vy:7348347", CloseReason::Shutdown);
    assert_eq!(sim.drain().closes().len(), 2);
}

#[test]
fn vy_role_is_instructor_only_for_the_exact_text_true() {
    assert_eq!(VyAdmission::role_from_query(Some("true")), Role::Host);
    for other in [None, Some(""), Some("True"), Some("1"), Some("false"), Some("true ")] {
        assert_eq!(VyAdmission::role_from_query(other), Role::Guest, "{other:?}");
    }
}

#[test]
fn vy_stats_count_per_mode() {
    let mut sim = vy_paired();
    sim.connect(7, "bkg_2", Role::Host);
    sim.text(1, OFFER);
    let st = sim.hub.stats();
    assert_eq!(st.vy.connections, 2);
    assert_eq!(st.vy.connections_total, 2);
    assert_eq!(st.vy.relayed, 1);
    assert_eq!(st.native.connections, 1);
    assert_eq!(st.connections, 3);
    assert_eq!(st.mode(Mode::Peerjs).connections, 0);
    sim.disconnect(1);
    assert_eq!(sim.hub.stats().vy.connections, 1);
}

#[test]
fn websocket_pings_count_against_the_message_rate() {
    let mut sim = Sim::with_config(duet_signaling::HubConfig { messages_per_second: 5, ..Default::default() });
    sim.connect_vy(1, BOOKING, Role::Host);
    // Burst = 2 x rate: the eleventh ping in the same instant is over.
    for _ in 0..10 {
        sim.hub.handle_ping(sim.now, support::conn(1));
    }
    assert!(sim.drain().closes().is_empty());
    sim.hub.handle_ping(sim.now, support::conn(1));
    assert_eq!(sim.drain().closes(), [(1, close_code::RATE_LIMITED)]);
}
