//! Property tests: no input panics the hub, and its outputs stay consistent with a simple model of live sockets.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use duet_signaling::peerjs::{PeerjsConfig, PeerjsServer, Registration, Scope};
use duet_signaling::{CloseReason, HubConfig, Output, Role, VyAdmission};
use proptest::prelude::*;
use support::*;

/// Client-ish text: arbitrary strings, and JSON-shaped frames with arbitrary parts.
fn client_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,64}",
        (any::<Option<u64>>(), "\\PC{0,40}").prop_map(|(s, data)| match s {
            Some(s) => format!(r#"{{"type":"signal","session":{s},"data":{data}}}"#),
            None => format!(r#"{{"type":"signal","data":{data}}}"#),
        }),
        "[a-z\"{}\\[\\]:,0-9 \\\\]{0,48}".prop_map(|s| format!(r#"{{"type":"signal","data":{{"sdp":{s}}}}}"#)),
        "[a-z\"{}\\[\\]:,0-9 ]{0,32}".prop_map(|s| format!(r#"{{"type":"ping","t":{s}}}"#)),
        Just(r#"{"type":"leave"}"#.to_owned()),
        Just(r#"{"type":"signal","session":1,"data":{"type":"offer","sdp":"v=0"}}"#.to_owned()),
    ]
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(texts in prop::collection::vec(client_text(), 1..40)) {
        let mut sim = Sim::paired();
        sim.connect(3, "bkg_2", Role::Guest);
        for (i, t) in texts.iter().enumerate() {
            let c = [1, 2, 3, 99][i % 4];
            sim.hub.handle_text(sim.now, conn(c), t);
            for out in sim.drain().0 {
                if let Output::Send { text, .. } = out {
                    // Every server frame is valid JSON.
                    prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{}", text);
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Connect { conn: u64, booking: u8, host: bool },
    ConnectVy { conn: u64, booking: u8, host: bool, strict: bool, open: bool },
    Text { conn: u64, text: String },
    Binary { conn: u64, len: usize },
    Disconnect { conn: u64 },
    Advance { secs: u64 },
    Cancel { booking: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..6u64, 0..2u8, any::<bool>()).prop_map(|(conn, booking, host)| Op::Connect { conn, booking, host }),
        1 => (0..6u64, 0..2u8, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(conn, booking, host, strict, open)| Op::ConnectVy { conn, booking, host, strict, open }),
        3 => (0..6u64, client_text()).prop_map(|(conn, text)| Op::Text { conn, text }),
        1 => (0..6u64, 0..100_000usize).prop_map(|(conn, len)| Op::Binary { conn, len }),
        1 => (0..6u64).prop_map(|conn| Op::Disconnect { conn }),
        1 => (0..400u64).prop_map(|secs| Op::Advance { secs }),
        1 => (0..2u8).prop_map(|booking| Op::Cancel { booking }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random sequences of inputs never panic; the hub never sends to a socket it closed or that disconnected, and
    /// never holds more than two connections per room.
    #[test]
    fn random_sessions_keep_invariants(ops in prop::collection::vec(op(), 1..80)) {
        let mut sim = Sim::with_config(HubConfig { messages_per_second: 3, max_message_bytes: 4096, ..HubConfig::default() });
        let mut live: HashSet<u64> = HashSet::new();
        let mut elapsed = Duration::ZERO;
        for op in ops {
            match op {
                Op::Connect { conn: c, booking, host } => {
                    let role = if host { Role::Host } else { Role::Guest };
                    let adm = sim.admission(&format!("bkg_{booking}"), role);
                    sim.hub.handle_connect(sim.now, conn(c), adm);
                    live.insert(c);
                }
                Op::ConnectVy { conn: c, booking, host, strict, open } => {
                    let role = if host { Role::Host } else { Role::Guest };
                    let adm = if open {
                        VyAdmission::open_relay(&booking.to_string(), role)
                    } else {
                        sim.vy_admission(&format!("bkg_{booking}"), role)
                    };
                    sim.hub.handle_connect_vy(sim.now, conn(c), adm.with_strict(strict));
                    live.insert(c);
                }
                Op::Text { conn: c, text } => sim.hub.handle_text(sim.now, conn(c), &text),
                Op::Binary { conn: c, len } => sim.hub.handle_binary(sim.now, conn(c), len),
                Op::Disconnect { conn: c } => {
                    sim.hub.handle_disconnect(sim.now, conn(c));
                    live.remove(&c);
                }
                Op::Advance { secs } => {
                    elapsed += Duration::from_secs(secs);
                    sim.at(elapsed);
                    if sim.hub.poll_timeout().is_some_and(|t| t <= sim.now) {
                        sim.hub.handle_timeout(sim.now);
                    }
                }
                Op::Cancel { booking } => sim.hub.close_booking(sim.now, &format!("bkg_{booking}"), CloseReason::Cancelled),
            }
            // A reconnect with a live id implicitly drops the old one, so track sends in order.
            for out in sim.drain().0 {
                match out {
                    Output::Send { conn: c, .. } => prop_assert!(live.contains(&c.0), "send to dead {c:?}"),
                    Output::Close { conn: c, .. } => { live.remove(&c.0); }
                    Output::Ping { conn: c } => prop_assert!(live.contains(&c.0), "ping to dead {c:?}"),
                    Output::Event(_) => {}
                }
            }
            prop_assert!(sim.hub.connection_count() <= 2 * sim.hub.room_count());
            let st = sim.hub.stats();
            prop_assert_eq!(st.native.connections + st.vy.connections, st.connections);
            prop_assert_eq!(st.native.rooms + st.vy.rooms, st.rooms);
            prop_assert!(sim.hub.connection_count() <= live.len());
            prop_assert_eq!(sim.hub.stats().connections, sim.hub.connection_count());
            prop_assert_eq!(sim.hub.stats().rooms, sim.hub.room_count());
            if let Some(t) = sim.hub.poll_timeout() {
                prop_assert!(sim.hub.room_count() > 0);
                prop_assert!(t <= sim.t0 + HARD_END);
            }
        }
    }

    /// vy sockets only ever receive `ready` or a byte-identical copy of a frame some socket sent.
    #[test]
    fn vy_sends_only_ready_or_relayed_frames(
        ops in prop::collection::vec((0..4u64, any::<bool>(), client_text()), 1..60),
    ) {
        let mut sim = Sim::new();
        let mut sent: HashSet<String> = HashSet::new();
        for (c, connect, text) in ops {
            if connect {
                let role = if c % 2 == 0 { Role::Host } else { Role::Guest };
                let adm = sim.vy_admission("bkg_1", role);
                sim.hub.handle_connect_vy(sim.now, conn(c), adm);
            } else {
                sim.hub.handle_text(sim.now, conn(c), &text);
                sent.insert(text);
            }
            for out in sim.drain().0 {
                if let Output::Send { text, .. } = out {
                    prop_assert!(text == "ready" || sent.contains(&text), "{}", text);
                }
            }
        }
    }
}

// ----- peerjs -----

#[derive(Clone, Debug)]
enum PjOp {
    Connect { conn: u64, ns: u8, id: u8, token: u8, scoped: bool },
    Text { conn: u64, text: String },
    Binary { conn: u64, len: usize },
    Disconnect { conn: u64 },
    SendFailed { conn: u64, text: String },
    Advance { millis: u64 },
    Cancel { booking: u8 },
}

fn pj_text() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        Just("OFFER".to_owned()),
        Just("ANSWER".to_owned()),
        Just("CANDIDATE".to_owned()),
        Just("LEAVE".to_owned()),
        Just("EXPIRE".to_owned()),
        Just("HEARTBEAT".to_owned()),
        Just("OPEN".to_owned()),
        "\\PC{0,8}"
    ];
    prop_oneof![
        any::<String>(),
        (kind.clone(), 0..4u8, "[a-z\"{}\\[\\]:,0-9 ]{0,24}")
            .prop_map(|(k, d, p)| format!(r#"{{"type":"{k}","dst":"p{d}","payload":{p}}}"#)),
        (kind.clone(), 0..4u8).prop_map(|(k, d)| format!(r#"{{"type":"{k}","src":"x","dst":"p{d}"}}"#)),
        kind.clone().prop_map(|k| format!(r#"{{"type":"{k}"}}"#)),
        (kind, "[a-z\"{}\\[\\]:,0-9 ]{0,16}").prop_map(|(k, d)| format!(r#"{{"type":"{k}","dst":{d}}}"#)),
    ]
}

fn pj_op() -> impl Strategy<Value = PjOp> {
    prop_oneof![
        2 => (0..6u64, 0..2u8, 0..4u8, 0..2u8, any::<bool>())
            .prop_map(|(conn, ns, id, token, scoped)| PjOp::Connect { conn, ns, id, token, scoped }),
        4 => (0..6u64, pj_text()).prop_map(|(conn, text)| PjOp::Text { conn, text }),
        1 => (0..6u64, 0..100_000usize).prop_map(|(conn, len)| PjOp::Binary { conn, len }),
        1 => (0..6u64).prop_map(|conn| PjOp::Disconnect { conn }),
        1 => (0..6u64, pj_text()).prop_map(|(conn, text)| PjOp::SendFailed { conn, text }),
        2 => (0..20_000u64).prop_map(|millis| PjOp::Advance { millis }),
        1 => (0..2u8).prop_map(|booking| PjOp::Cancel { booking }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random inputs never panic the peerjs server; it never sends to a socket it closed or that disconnected, every
    /// frame it sends is JSON, and its gauges agree with what it reports.
    #[test]
    fn peerjs_random_inputs_keep_invariants(ops in prop::collection::vec(pj_op(), 1..80)) {
        let t0 = std::time::Instant::now();
        let config = PeerjsConfig { messages_per_second: 3, max_message_bytes: 4096, max_queued_per_peer: 4, ..PeerjsConfig::default() };
        let mut server = PeerjsServer::new(config);
        let mut now = t0;
        let mut live: HashSet<u64> = HashSet::new();
        for op in ops {
            match op {
                PjOp::Connect { conn: c, ns, id, token, scoped } => {
                    let scope = scoped.then(|| Scope { booking: format!("bkg_{ns}"), participant: format!("par_{token}"), hard_end_at: t0 + Duration::from_secs(120) });
                    let registration = Registration { namespace: format!("bkg_{ns}"), id: format!("p{id}"), token: format!("t{token}"), scope };
                    server.handle_connect(now, conn(c), registration);
                    live.insert(c);
                }
                PjOp::Text { conn: c, text } => server.handle_text(now, conn(c), &text),
                PjOp::Binary { conn: c, len } => server.handle_binary(now, conn(c), len),
                PjOp::Disconnect { conn: c } => {
                    server.handle_disconnect(now, conn(c));
                    live.remove(&c);
                }
                PjOp::SendFailed { conn: c, text } => server.handle_send_failed(now, conn(c), &text),
                PjOp::Advance { millis } => {
                    now += Duration::from_millis(millis);
                    while let Some(t) = server.poll_timeout().filter(|t| *t <= now) {
                        server.handle_timeout(t);
                    }
                }
                PjOp::Cancel { booking } => server.close_booking(now, &format!("bkg_{booking}"), CloseReason::Cancelled),
            }
            while let Some(out) = server.poll_output() {
                match out {
                    Output::Send { conn: c, text } => {
                        prop_assert!(live.contains(&c.0), "send to dead {c:?}");
                        prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "{}", text);
                    }
                    Output::Close { conn: c, .. } => { live.remove(&c.0); }
                    Output::Ping { conn: c } => prop_assert!(live.contains(&c.0), "ping to dead {c:?}"),
                    Output::Event(_) => {}
                }
            }
            prop_assert_eq!(server.stats().connections, server.connection_count());
            prop_assert!(server.connection_count() <= live.len());
            if let Some(t) = server.poll_timeout() {
                prop_assert!(t > now, "a due timer was left unhandled");
            }
        }
    }
}
