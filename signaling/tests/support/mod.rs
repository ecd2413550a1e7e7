//! Virtual-time harness shared by the scenario tests: an `Instant` base plus `Duration`s, never the wall clock.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use duet_signaling::{Admission, ConnectionId, Hub, HubConfig, HubEvent, Output, Role, VyAdmission};
use serde_json::Value;
use serde_json::value::RawValue;

/// The booking's hard end relative to the base instant.
pub const HARD_END: Duration = Duration::from_secs(3600);
/// `hard_end_at` on the wire.
pub const HARD_END_RFC3339: &str = "2026-01-01T11:15:00Z";
pub const ICE: &str = r#"[{"urls":["stun:turn.example.org:3478"]},{"urls":["turn:turn.example.org:3478?transport=udp"],"username":"1767266100:bkg_1:par_h","credential":"c2VjcmV0"}]"#;
pub const WINDOW: &str = r#"{"host_opens_at":"2026-01-01T09:45:00Z","opens_at":"2026-01-01T09:50:00Z","join_cutoff_at":"2026-01-01T11:00:00Z","hard_end_at":"2026-01-01T11:15:00Z"}"#;

pub fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).expect("test constant is valid JSON")
}

pub fn conn(n: u64) -> ConnectionId {
    ConnectionId(n)
}

/// The participant id the harness gives a role in a booking.
pub fn participant(booking: &str, role: Role) -> String {
    format!("par_{}_{}", booking, role.as_str())
}

pub struct Sim {
    pub hub: Hub,
    pub t0: Instant,
    pub now: Instant,
}

impl Sim {
    pub fn new() -> Self {
        Self::with_config(HubConfig::default())
    }

    pub fn with_config(config: HubConfig) -> Self {
        let t0 = Instant::now();
        Sim { hub: Hub::new(config), t0, now: t0 }
    }

    /// Moves virtual time to `t0 + d`.
    pub fn at(&mut self, d: Duration) {
        self.now = self.t0 + d;
    }

    pub fn admission(&self, booking: &str, role: Role) -> Admission {
        self.admission_ending(booking, role, HARD_END)
    }

    pub fn admission_ending(&self, booking: &str, role: Role, hard_end: Duration) -> Admission {
        Admission {
            booking: booking.to_owned(),
            participant: participant(booking, role),
            role,
            ice_servers: raw(ICE),
            window: raw(WINDOW),
            hard_end_at: self.t0 + hard_end,
            hard_end_at_rfc3339: HARD_END_RFC3339.to_owned(),
        }
    }

    /// Connects and returns the outputs.
    pub fn connect(&mut self, c: u64, booking: &str, role: Role) -> Outs {
        let adm = self.admission(booking, role);
        self.hub.handle_connect(self.now, conn(c), adm);
        self.drain()
    }

    /// A vy admission for booking `room` ending at `HARD_END`.
    pub fn vy_admission(&self, room: &str, role: Role) -> VyAdmission {
        VyAdmission::booking(room, role, self.t0 + HARD_END)
    }

    /// Connects a vy socket gated by booking `room` and returns the outputs.
    pub fn connect_vy(&mut self, c: u64, room: &str, role: Role) -> Outs {
        let adm = self.vy_admission(room, role);
        self.connect_vy_with(c, adm)
    }

    pub fn connect_vy_with(&mut self, c: u64, adm: VyAdmission) -> Outs {
        self.hub.handle_connect_vy(self.now, conn(c), adm);
        self.drain()
    }

    pub fn binary(&mut self, c: u64, len: usize) -> Outs {
        self.hub.handle_binary(self.now, conn(c), len);
        self.drain()
    }

    pub fn text(&mut self, c: u64, text: &str) -> Outs {
        self.hub.handle_text(self.now, conn(c), text);
        self.drain()
    }

    pub fn disconnect(&mut self, c: u64) -> Outs {
        self.hub.handle_disconnect(self.now, conn(c));
        self.drain()
    }

    /// The driver sent a WebSocket ping to `c`.
    pub fn ping_sent(&mut self, c: u64) -> Outs {
        self.hub.handle_ping_sent(self.now, conn(c));
        self.drain()
    }

    /// `c` answered with a pong.
    pub fn pong(&mut self, c: u64) -> Outs {
        self.hub.handle_pong(self.now, conn(c));
        self.drain()
    }

    pub fn timeout(&mut self) -> Outs {
        self.hub.handle_timeout(self.now);
        self.drain()
    }

    pub fn drain(&mut self) -> Outs {
        Outs(std::iter::from_fn(|| self.hub.poll_output()).collect())
    }

    /// Host (conn 1) and guest (conn 2) of `bkg_1` paired; outputs drained.
    pub fn paired() -> Self {
        let mut sim = Sim::new();
        sim.connect(1, "bkg_1", Role::Host);
        sim.connect(2, "bkg_1", Role::Guest);
        sim
    }
}

/// Outputs of one step, with queries.
#[derive(Debug)]
pub struct Outs(pub Vec<Output>);

impl Outs {
    /// Raw text frames sent to `c`, in order.
    pub fn texts(&self, c: u64) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Output::Send { conn: to, text } if *to == conn(c) => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Frames sent to `c`, parsed.
    pub fn frames(&self, c: u64) -> Vec<Value> {
        self.texts(c).into_iter().map(|t| serde_json::from_str(t).expect("server frames are JSON")).collect()
    }

    /// `type` of each frame sent to `c`.
    pub fn types(&self, c: u64) -> Vec<String> {
        self.frames(c).iter().map(|v| v["type"].as_str().unwrap_or("?").to_owned()).collect()
    }

    /// `(conn, code)` of every Close.
    pub fn closes(&self) -> Vec<(u64, u16)> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Output::Close { conn, code, .. } => Some((conn.0, *code)),
                _ => None,
            })
            .collect()
    }

    pub fn events(&self) -> Vec<&HubEvent> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// Number of Send outputs to anyone.
    /// Connections the hub asked the driver to probe with a WebSocket ping.
    pub fn pings(&self) -> Vec<u64> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Output::Ping { conn } => Some(conn.0),
                _ => None,
            })
            .collect()
    }

    pub fn send_count(&self) -> usize {
        self.0.iter().filter(|o| matches!(o, Output::Send { .. })).count()
    }
}
