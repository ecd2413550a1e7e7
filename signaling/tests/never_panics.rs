//! Property tests: no input panics the hub, and its outputs stay consistent with a simple model of live sockets.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use duet_signaling::{CloseReason, HubConfig, Output, Role};
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
    Text { conn: u64, text: String },
    Binary { conn: u64, len: usize },
    Disconnect { conn: u64 },
    Advance { secs: u64 },
    Cancel { booking: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..6u64, 0..2u8, any::<bool>()).prop_map(|(conn, booking, host)| Op::Connect { conn, booking, host }),
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
                    Output::Event(_) => {}
                }
            }
            prop_assert!(sim.hub.connection_count() <= 2 * sim.hub.room_count());
            prop_assert!(sim.hub.connection_count() <= live.len());
            prop_assert_eq!(sim.hub.stats().connections, sim.hub.connection_count());
            prop_assert_eq!(sim.hub.stats().rooms, sim.hub.room_count());
            if let Some(t) = sim.hub.poll_timeout() {
                prop_assert!(sim.hub.room_count() > 0);
                prop_assert!(t <= sim.t0 + HARD_END);
            }
        }
    }
}
