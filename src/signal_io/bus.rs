//! The signaling bus between nodes (cluster mode, README "Cluster mode"): the wire form of what a proxy node (the
//! node holding a socket) and a home node (the node holding the socket's room) tell each other over Redis.
//!
//! A room's state machine lives on its home. A socket that lands on another node is proxied: its node forwards the
//! socket's inputs to the home ([`ToHome`]) and writes the home's outputs for it ([`ToProxy`]). Connection ids are
//! unique in the whole cluster (the node number sits in their top bits, [`node_of`]), so both sides name a socket the
//! same way and the home feeds a remote socket to the hub exactly like a local one.
//!
//! One frame is `<kind><conn> <arg>\n<payload>`: `kind` one ASCII letter, `conn` and `arg` decimal, `payload` the
//! rest, verbatim (a relayed text frame is never re-encoded). Kinds to the home: `C` connect (payload: the admission
//! as JSON), `T` text, `B` binary (`arg`: length), `P` client ping, `O` pong, `S` ping sent, `D` disconnect (`arg`:
//! 1 after a ping timeout), `H` hold (`conn`: the sender's node number in the top bits, payload: the ids of the sockets
//! the sender proxies to this home, comma-separated). Kinds to the proxy: `t` text, `c` close (`arg`: code, payload:
//! reason), `p` ping.
//!
//! The hold list repairs what a lost frame would leave: a `D` dropped during a Redis outage would keep a socket that
//! is gone in its room. Every proxy node sends each live node its hold list every few seconds; a remote socket
//! missing from two lists in a row (a socket that connects between the two is in the second) leaves its room.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use duet_signaling::peerjs::{Registration, Scope};
use duet_signaling::{Admission, ConnectionId, Role, VyAdmission};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Admit;

/// Bits of a connection id below the node number.
pub const NODE_SHIFT: u32 = 40;

/// The node number in a connection id (0 for a single node).
pub fn node_of(conn: ConnectionId) -> u32 {
    (conn.0 >> NODE_SHIFT) as u32
}

/// A socket's input, for its room's home.
#[derive(Debug)]
pub enum ToHome {
    /// A new socket and its admission.
    Connect(WireAdmit),
    /// A text frame.
    Text(String),
    /// A binary frame of this many bytes.
    Binary(usize),
    /// The client sent a WebSocket ping.
    Ping,
    /// The client answered a ping.
    Pong,
    /// The proxy sent a ping.
    PingSent,
    /// The socket is gone (`timed_out`: two pings went unanswered).
    Disconnect {
        /// After a ping timeout.
        timed_out: bool,
    },
    /// The sockets (ids) the sending node proxies to this home now; sent with the sender's node number as `conn`.
    Hold(Vec<u64>),
}

/// A home's output for a proxied socket.
#[derive(Debug, PartialEq, Eq)]
pub enum ToProxy {
    /// Write this text frame.
    Text(String),
    /// Close with this code and reason.
    Close(u16, String),
    /// Send a WebSocket ping.
    Ping,
}

/// A decoded bus frame.
#[derive(Debug)]
pub enum Frame {
    /// For a room homed here.
    Home(ConnectionId, ToHome),
    /// For a socket held here.
    Proxy(ConnectionId, ToProxy),
}

fn frame(out: &mut Vec<u8>, kind: u8, conn: ConnectionId, arg: u64, payload: &[u8]) {
    out.reserve(payload.len() + 32);
    out.push(kind);
    out.extend_from_slice(conn.0.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(arg.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload);
}

/// Appends an input for the home to `out`.
pub fn encode_home(out: &mut Vec<u8>, conn: ConnectionId, msg: &ToHome) {
    match msg {
        ToHome::Connect(a) => frame(out, b'C', conn, 0, &serde_json::to_vec(a).unwrap_or_default()),
        ToHome::Text(t) => encode_text_home(out, conn, t),
        ToHome::Binary(n) => frame(out, b'B', conn, *n as u64, b""),
        ToHome::Ping => frame(out, b'P', conn, 0, b""),
        ToHome::Pong => frame(out, b'O', conn, 0, b""),
        ToHome::PingSent => frame(out, b'S', conn, 0, b""),
        ToHome::Disconnect { timed_out } => frame(out, b'D', conn, u64::from(*timed_out), b""),
        ToHome::Hold(ids) => {
            let list: Vec<String> = ids.iter().map(u64::to_string).collect();
            frame(out, b'H', conn, 0, list.join(",").as_bytes())
        }
    }
}

/// Appends a text frame for the home to `out` ([`ToHome::Text`] without owning the text: the relay path).
pub fn encode_text_home(out: &mut Vec<u8>, conn: ConnectionId, text: &str) {
    frame(out, b'T', conn, 0, text.as_bytes());
}

/// Appends an output for the proxy to `out`.
pub fn encode_proxy(out: &mut Vec<u8>, conn: ConnectionId, msg: &ToProxy) {
    match msg {
        ToProxy::Text(t) => frame(out, b't', conn, 0, t.as_bytes()),
        ToProxy::Close(code, reason) => frame(out, b'c', conn, u64::from(*code), reason.as_bytes()),
        ToProxy::Ping => frame(out, b'p', conn, 0, b""),
    }
}

/// Decodes a bus frame; `None` for anything malformed (dropped by the caller, counted).
pub fn decode(bytes: &[u8]) -> Option<Frame> {
    let (&kind, rest) = bytes.split_first()?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&rest[..nl]).ok()?;
    let payload = &rest[nl + 1..];
    let (conn, arg) = head.split_once(' ')?;
    let conn = ConnectionId(conn.parse().ok()?);
    let arg: u64 = arg.parse().ok()?;
    let text = || String::from_utf8(payload.to_vec()).ok();
    Some(match kind {
        b'C' => Frame::Home(conn, ToHome::Connect(serde_json::from_slice(payload).ok()?)),
        b'T' => Frame::Home(conn, ToHome::Text(text()?)),
        b'B' => Frame::Home(conn, ToHome::Binary(usize::try_from(arg).ok()?)),
        b'P' => Frame::Home(conn, ToHome::Ping),
        b'O' => Frame::Home(conn, ToHome::Pong),
        b'S' => Frame::Home(conn, ToHome::PingSent),
        b'D' => Frame::Home(conn, ToHome::Disconnect { timed_out: arg == 1 }),
        b'H' => {
            let text = std::str::from_utf8(payload).ok()?;
            let ids = if text.is_empty() {
                Vec::new()
            } else {
                text.split(',').map(|i| i.parse().ok()).collect::<Option<Vec<u64>>>()?
            };
            Frame::Home(conn, ToHome::Hold(ids))
        }
        b't' => Frame::Proxy(conn, ToProxy::Text(text()?)),
        b'c' => Frame::Proxy(conn, ToProxy::Close(u16::try_from(arg).ok()?, text()?)),
        b'p' => Frame::Proxy(conn, ToProxy::Ping),
        _ => return None,
    })
}

/// An admission on the wire. Monotonic instants travel as unix milliseconds (nodes keep their clocks in step with
/// NTP; a skew of a few ms moves a hard end by as much). Externally tagged (`{"native":{…}}`): the verbatim JSON
/// values cannot pass through serde's buffering of an internally tagged enum.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireAdmit {
    /// [`Admission`].
    Native {
        /// Booking id.
        booking: String,
        /// Participant id.
        participant: String,
        /// Role.
        role: Role,
        /// `ice_servers`, verbatim.
        ice_servers: Box<RawValue>,
        /// `window`, verbatim.
        window: Box<RawValue>,
        /// Hard end, unix ms.
        hard_end_ms: i64,
        /// Hard end, RFC 3339.
        hard_end_rfc3339: String,
    },
    /// [`VyAdmission`].
    Vy {
        /// Room key.
        room: String,
        /// Participant id (may be empty).
        participant: String,
        /// Role.
        role: Role,
        /// Hard end, unix ms (`None`: open relay).
        hard_end_ms: Option<i64>,
        /// Strict mode.
        strict: bool,
    },
    /// [`Registration`].
    Peerjs {
        /// Namespace.
        namespace: String,
        /// PeerJS id.
        id: String,
        /// PeerJS token.
        token: String,
        /// Booking scope: booking, participant, hard end (unix ms).
        scope: Option<(String, String, i64)>,
    },
}

fn unix_ms_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A monotonic instant as unix milliseconds.
fn to_ms(at: Instant) -> i64 {
    let now = Instant::now();
    let base = unix_ms_now();
    if at >= now {
        base.saturating_add(at.duration_since(now).as_millis() as i64)
    } else {
        base.saturating_sub(now.duration_since(at).as_millis() as i64)
    }
}

/// Unix milliseconds as a monotonic instant (clamped to now when in the past by more than the process has run).
fn from_ms(ms: i64) -> Instant {
    let now = Instant::now();
    let delta = ms - unix_ms_now();
    if delta >= 0 {
        now + Duration::from_millis(delta as u64)
    } else {
        now.checked_sub(Duration::from_millis(delta.unsigned_abs())).unwrap_or(now)
    }
}

impl WireAdmit {
    /// The wire form of `admit`; `None` for a PeerJS refusal (never proxied: it closes where it is).
    pub fn of(admit: &Admit) -> Option<WireAdmit> {
        Some(match admit {
            Admit::Native(a) => WireAdmit::Native {
                booking: a.booking.clone(),
                participant: a.participant.clone(),
                role: a.role,
                ice_servers: a.ice_servers.clone(),
                window: a.window.clone(),
                hard_end_ms: to_ms(a.hard_end_at),
                hard_end_rfc3339: a.hard_end_at_rfc3339.clone(),
            },
            Admit::Vy(a) => WireAdmit::Vy {
                room: a.room.clone(),
                participant: a.participant.clone(),
                role: a.role,
                hard_end_ms: a.hard_end_at.map(to_ms),
                strict: a.strict,
            },
            Admit::Peerjs(r) => WireAdmit::Peerjs {
                namespace: r.namespace.clone(),
                id: r.id.clone(),
                token: r.token.clone(),
                scope: r.scope.as_ref().map(|s| (s.booking.clone(), s.participant.clone(), to_ms(s.hard_end_at))),
            },
            Admit::PeerjsReject(_) => return None,
        })
    }

    /// Back to an admission, on the home.
    pub fn into_admit(self) -> Admit {
        match self {
            WireAdmit::Native { booking, participant, role, ice_servers, window, hard_end_ms, hard_end_rfc3339 } => {
                Admit::Native(Admission {
                    booking,
                    participant,
                    role,
                    ice_servers,
                    window,
                    hard_end_at: from_ms(hard_end_ms),
                    hard_end_at_rfc3339: hard_end_rfc3339,
                })
            }
            WireAdmit::Vy { room, participant, role, hard_end_ms, strict } => {
                Admit::Vy(VyAdmission { room, participant, role, hard_end_at: hard_end_ms.map(from_ms), strict })
            }
            WireAdmit::Peerjs { namespace, id, token, scope } => Admit::Peerjs(Registration {
                namespace,
                id,
                token,
                scope: scope.map(|(booking, participant, ms)| Scope { booking, participant, hard_end_at: from_ms(ms) }),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(conn: ConnectionId, msg: &ToHome) -> Vec<u8> {
        let mut out = Vec::new();
        encode_home(&mut out, conn, msg);
        out
    }

    fn proxy(conn: ConnectionId, msg: &ToProxy) -> Vec<u8> {
        let mut out = Vec::new();
        encode_proxy(&mut out, conn, msg);
        out
    }

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let conn = ConnectionId((5u64 << NODE_SHIFT) | 42);
        assert_eq!(node_of(conn), 5);
        let text = r#"{"type":"signal","data":{"sdp":"v=0\r\n…"}}"#;
        match decode(&home(conn, &ToHome::Text(text.into()))) {
            Some(Frame::Home(c, ToHome::Text(t))) => {
                assert_eq!(c, conn);
                assert_eq!(t, text);
            }
            other => panic!("{other:?}"),
        }
        match decode(&home(conn, &ToHome::Hold(vec![1, 2 << 40]))) {
            Some(Frame::Home(_, ToHome::Hold(ids))) => assert_eq!(ids, vec![1, 2 << 40]),
            other => panic!("{other:?}"),
        }
        match decode(&home(conn, &ToHome::Hold(Vec::new()))) {
            Some(Frame::Home(_, ToHome::Hold(ids))) => assert!(ids.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(
            decode(
                b"H1 0
1,x"
            )
            .is_none()
        );
        match decode(&home(conn, &ToHome::Disconnect { timed_out: true })) {
            Some(Frame::Home(_, ToHome::Disconnect { timed_out })) => assert!(timed_out),
            other => panic!("{other:?}"),
        }
        let close = ToProxy::Close(4008, "replaced".into());
        match decode(&proxy(conn, &close)) {
            Some(Frame::Proxy(c, m)) => {
                assert_eq!(c, conn);
                assert_eq!(m, close);
            }
            other => panic!("{other:?}"),
        }
        for bad in [&b""[..], b"T", b"T12", b"Tx 0\n", b"Z1 0\n", b"c1 99999999\nx", b"C1 0\n{", b"T1 0\n\xff"] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn admissions_round_trip_with_their_instants() {
        let end = Instant::now() + Duration::from_secs(3600);
        let admit = Admit::Native(Admission {
            booking: "bkg_1".into(),
            participant: "par_1".into(),
            role: Role::Guest,
            ice_servers: RawValue::from_string("[]".into()).expect("json"),
            window: RawValue::from_string("{}".into()).expect("json"),
            hard_end_at: end,
            hard_end_at_rfc3339: "2026-12-08T10:00:00Z".into(),
        });
        let wire = WireAdmit::of(&admit).expect("proxied");
        let bytes = home(ConnectionId(1), &ToHome::Connect(wire));
        let Some(Frame::Home(_, ToHome::Connect(w))) = decode(&bytes) else { panic!("decodes") };
        let Admit::Native(a) = w.into_admit() else { panic!("native") };
        assert_eq!((a.booking.as_str(), a.participant.as_str(), a.role), ("bkg_1", "par_1", Role::Guest));
        let skew = if a.hard_end_at > end { a.hard_end_at - end } else { end - a.hard_end_at };
        assert!(skew < Duration::from_millis(50), "{skew:?}");
        assert!(WireAdmit::of(&Admit::PeerjsReject(duet_signaling::peerjs::PeerjsError::InvalidKey)).is_none());
    }
}
