//! Wire encoding of `native` v1 (research/signaling.md §10.3, DESIGN.md §5): parsing client frames and building
//! server frames. No room logic here; another mode (`vy`, `peerjs`) gets its own module next to this one.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::Role;

/// Protocol version announced in `welcome`.
pub(crate) const VERSION: u32 = 1;

/// A parsed client frame. Borrows from the frame's text, so `data` stays byte-identical.
#[derive(Debug)]
pub(crate) enum ClientMsg<'a> {
    /// `{"type":"signal","session":N?,"data":{…}}`.
    Signal {
        /// The session the client believes is current; `None` means "the current one".
        session: Option<u64>,
        /// The simple-peer signal, verbatim.
        data: &'a RawValue,
    },
    /// `{"type":"ping","t":…}`; `t` is echoed verbatim in `pong`.
    Ping {
        /// Any JSON value, or absent.
        t: Option<&'a RawValue>,
    },
    /// `{"type":"leave"}`.
    Leave,
}

/// Why a client frame is a `bad_message`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WireError {
    /// Not a JSON object with the expected field types.
    #[error("frame is not a JSON object with a valid `type`")]
    NotJson,
    /// `type` is not one of `signal`, `ping`, `leave`.
    #[error("unknown message type")]
    UnknownType,
    /// `signal` without a `data` object.
    #[error("signal without data")]
    MissingData,
    /// `data` is not an object with a truthy `sdp`, `candidate`, `renegotiate` or `transceiverRequest`.
    #[error("data is not a simple-peer signal")]
    NotASignal,
}

impl WireError {
    /// The human-readable `message` of the `error` frame.
    pub(crate) fn message(&self) -> &'static str {
        match self {
            WireError::NotJson => "frame is not a JSON object with a valid type",
            WireError::UnknownType => "unknown message type (expected signal, ping or leave)",
            WireError::MissingData => "signal needs a data object",
            WireError::NotASignal => "data must be an object with sdp, candidate, renegotiate or transceiverRequest",
        }
    }
}

/// The raw shape of a client frame; unknown fields are ignored.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    session: Option<u64>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    t: Option<&'a RawValue>,
}

/// Parses one client text frame.
pub(crate) fn parse(text: &str) -> Result<ClientMsg<'_>, WireError> {
    // A derived struct also accepts a JSON array; the protocol only has objects.
    if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return Err(WireError::NotJson);
    }
    let frame: Frame<'_> = serde_json::from_str(text).map_err(|_| WireError::NotJson)?;
    match &*frame.kind {
        "signal" => {
            let data = frame.data.ok_or(WireError::MissingData)?;
            if is_simple_peer_signal(data) {
                Ok(ClientMsg::Signal { session: frame.session, data })
            } else {
                Err(WireError::NotASignal)
            }
        }
        "ping" => Ok(ClientMsg::Ping { t: frame.t }),
        "leave" => Ok(ClientMsg::Leave),
        _ => Err(WireError::UnknownType),
    }
}

/// True when `data` is a JSON object with at least one truthy `sdp`, `candidate`, `renegotiate` or
/// `transceiverRequest`: anything else makes simple-peer's `signal()` destroy the receiving peer with `ERR_SIGNALING`
/// (feross/simple-peer v9.11 index.js; research/signaling.md §3, §10.2 rule 4).
pub(crate) fn is_simple_peer_signal(data: &RawValue) -> bool {
    let mut de = serde_json::Deserializer::from_str(data.get());
    de.deserialize_map(ShapeVisitor).unwrap_or(false)
}

/// Walks an object's keys without allocating; true if a signal key holds a truthy value.
pub(crate) struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a simple-peer signal object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut ok = false;
        while let Some(SignalKey(is_signal_key)) = map.next_key()? {
            if is_signal_key {
                let Truthy(t) = map.next_value()?;
                ok |= t;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(ok)
    }
}

/// An object key: true for the four keys simple-peer acts on.
struct SignalKey(bool);

impl<'de> Deserialize<'de> for SignalKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = SignalKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SignalKey, E> {
                Ok(SignalKey(matches!(v, "sdp" | "candidate" | "renegotiate" | "transceiverRequest")))
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// JavaScript truthiness of a JSON value: false for `null`, `false`, `0`, `""`; true otherwise.
struct Truthy(bool);

impl<'de> Deserialize<'de> for Truthy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TruthyVisitor;
        impl<'de> Visitor<'de> for TruthyVisitor {
            type Value = Truthy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Truthy, E> {
                Ok(Truthy(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Truthy, E> {
                Ok(Truthy(v != 0))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Truthy, E> {
                Ok(Truthy(v != 0))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Truthy, E> {
                Ok(Truthy(v != 0.0 && !v.is_nan()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Truthy, E> {
                Ok(Truthy(!v.is_empty()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Truthy, E> {
                Ok(Truthy(false))
            }
            fn visit_none<E: de::Error>(self) -> Result<Truthy, E> {
                Ok(Truthy(false))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Truthy, D2::Error> {
                Truthy::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Truthy, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Truthy(true))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Truthy, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Truthy(true))
            }
        }
        d.deserialize_any(TruthyVisitor)
    }
}

/// Appends `s` as a JSON string literal (RFC 8259 §7): quotes, backslash and control characters escaped.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x00..=0x1f => None,
            _ => continue,
        };
        // `i` is the index of an ASCII byte, hence a char boundary.
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Inputs of a `welcome` frame.
pub(crate) struct Welcome<'a> {
    pub(crate) booking: &'a str,
    pub(crate) participant: &'a str,
    pub(crate) role: Role,
    pub(crate) ice_servers: &'a RawValue,
    pub(crate) window: &'a RawValue,
    pub(crate) ping_interval_s: u64,
}

/// `{"type":"welcome","v":1,"booking":…,"you":{"peer":…,"role":…},"initiator":…,"ice_servers":…,"window":…,
/// "ping_interval_s":…}`.
pub(crate) fn welcome(w: &Welcome<'_>) -> String {
    let mut s = String::with_capacity(
        128 + w.booking.len() + w.participant.len() + w.ice_servers.get().len() + w.window.get().len(),
    );
    let _ = write!(s, "{{\"type\":\"welcome\",\"v\":{VERSION},\"booking\":");
    push_json_str(&mut s, w.booking);
    s.push_str(",\"you\":{\"peer\":");
    push_json_str(&mut s, w.participant);
    let _ = write!(
        s,
        ",\"role\":\"{}\"}},\"initiator\":{},\"ice_servers\":{},\"window\":{},\"ping_interval_s\":{}}}",
        w.role.as_str(),
        w.role.is_initiator(),
        w.ice_servers.get(),
        w.window.get(),
        w.ping_interval_s
    );
    s
}

/// `{"type":"ready","session":N,"peer":{"peer":<other participant>,"role":<other role>}}`.
pub(crate) fn ready(session: u64, peer: &str, role: Role) -> String {
    let mut s = String::with_capacity(72 + peer.len());
    let _ = write!(s, "{{\"type\":\"ready\",\"session\":{session},\"peer\":{{\"peer\":");
    push_json_str(&mut s, peer);
    let _ = write!(s, ",\"role\":\"{}\"}}}}", role.as_str());
    s
}

/// `{"type":"signal","session":N,"from":<participant>,"data":<data verbatim>}`.
pub(crate) fn signal(session: u64, from: &str, data: &RawValue) -> String {
    let data = data.get();
    let mut s = String::with_capacity(64 + from.len() + data.len());
    let _ = write!(s, "{{\"type\":\"signal\",\"session\":{session},\"from\":");
    push_json_str(&mut s, from);
    s.push_str(",\"data\":");
    s.push_str(data);
    s.push('}');
    s
}

/// `{"type":"peer-left","session":N,"peer":<participant>,"reason":"closed"|"replaced"|"left"|"timeout"}`.
pub(crate) fn peer_left(session: u64, peer: &str, reason: &str) -> String {
    let mut s = String::with_capacity(80 + peer.len());
    let _ = write!(s, "{{\"type\":\"peer-left\",\"session\":{session},\"peer\":");
    push_json_str(&mut s, peer);
    s.push_str(",\"reason\":");
    push_json_str(&mut s, reason);
    s.push('}');
    s
}

/// `{"type":"window","event":"closing","closes_at":<rfc3339>,"in_s":N}`.
pub(crate) fn window_closing(closes_at: &str, in_s: u64) -> String {
    let mut s = String::with_capacity(80 + closes_at.len());
    s.push_str("{\"type\":\"window\",\"event\":\"closing\",\"closes_at\":");
    push_json_str(&mut s, closes_at);
    let _ = write!(s, ",\"in_s\":{in_s}}}");
    s
}

/// `{"type":"window","event":"changed","sequence":N,"window":{…}}`: the booking was rescheduled or extended.
pub(crate) fn window_changed(sequence: u64, window: &RawValue) -> String {
    format!("{{\"type\":\"window\",\"event\":\"changed\",\"sequence\":{sequence},\"window\":{}}}", window.get())
}

/// Machine-readable `code` of an `error` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    StaleSession,
    NoPeer,
    BadMessage,
    RateLimited,
    TooBig,
}

impl ErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            ErrorCode::StaleSession => "stale_session",
            ErrorCode::NoPeer => "no_peer",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooBig => "too_big",
        }
    }
}

/// `{"type":"error","code":…,"message":…}`.
pub(crate) fn error(code: ErrorCode, message: &str) -> String {
    let mut s = String::with_capacity(48 + message.len());
    let _ = write!(s, "{{\"type\":\"error\",\"code\":\"{}\",\"message\":", code.as_str());
    push_json_str(&mut s, message);
    s.push('}');
    s
}

/// `{"type":"pong","t":<echo>}`, or `{"type":"pong"}` when the ping had no `t`.
pub(crate) fn pong(t: Option<&RawValue>) -> String {
    match t {
        Some(t) => {
            let mut s = String::with_capacity(24 + t.get().len());
            s.push_str("{\"type\":\"pong\",\"t\":");
            s.push_str(t.get());
            s.push('}');
            s
        }
        None => "{\"type\":\"pong\"}".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or(Value::Null)
    }

    #[test]
    fn parses_the_three_client_messages() {
        let text = r#"{"type":"signal","session":3,"data":{"type":"offer","sdp":"v=0\r\n"}}"#;
        match parse(text) {
            Ok(ClientMsg::Signal { session, data }) => {
                assert_eq!(session, Some(3));
                assert_eq!(data.get(), r#"{"type":"offer","sdp":"v=0\r\n"}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(parse(r#"{"type":"ping","t":17}"#), Ok(ClientMsg::Ping { t: Some(t) }) if t.get() == "17"));
        assert!(matches!(parse(r#"{"type":"ping"}"#), Ok(ClientMsg::Ping { t: None })));
        assert!(matches!(parse(r#" {"type":"leave","extra":[1]} "#), Ok(ClientMsg::Leave)));
        assert!(matches!(
            parse(r#"{"type":"signal","data":{"candidate":{"candidate":"c"}}}"#),
            Ok(ClientMsg::Signal { session: None, .. })
        ));
    }

    #[test]
    fn rejects_what_simple_peer_would_choke_on() {
        assert_eq!(parse("ready").err(), Some(WireError::NotJson));
        assert_eq!(parse("").err(), Some(WireError::NotJson));
        assert_eq!(parse(r#"["signal",1,{"sdp":"x"},null]"#).err(), Some(WireError::NotJson));
        assert_eq!(parse(r#"{"type":"offer","sdp":"x"}"#).err(), Some(WireError::UnknownType));
        assert_eq!(parse(r#"{"type":"signal"}"#).err(), Some(WireError::MissingData));
        assert_eq!(parse(r#"{"type":"signal","data":null}"#).err(), Some(WireError::MissingData));
        assert_eq!(parse(r#"{"type":"signal","data":{"type":"offer"}}"#).err(), Some(WireError::NotASignal));
        assert_eq!(parse(r#"{"type":"signal","data":{"sdp":""}}"#).err(), Some(WireError::NotASignal));
        assert_eq!(parse(r#"{"type":"signal","data":{"sdp":null}}"#).err(), Some(WireError::NotASignal));
        assert_eq!(parse(r#"{"type":"signal","data":[{"sdp":"x"}]}"#).err(), Some(WireError::NotASignal));
        assert_eq!(parse(r#"{"type":"signal","data":"{\"sdp\":\"x\"}"}"#).err(), Some(WireError::NotASignal));
        assert_eq!(parse(r#"{"type":"signal","session":-1,"data":{"sdp":"x"}}"#).err(), Some(WireError::NotJson));
        assert_eq!(parse(r#"{"type":"signal","session":"1","data":{"sdp":"x"}}"#).err(), Some(WireError::NotJson));
        assert_eq!(parse(r#"{"type":"ping","type":"ping"}"#).err(), Some(WireError::NotJson));
    }

    #[test]
    fn accepts_every_simple_peer_signal_shape() {
        for data in [
            r#"{"type":"offer","sdp":"v=0"}"#,
            r#"{"type":"answer","sdp":"v=0"}"#,
            r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMLineIndex":0,"sdpMid":"0"}}"#,
            r#"{"type":"renegotiate","renegotiate":true}"#,
            r#"{"type":"transceiverRequest","transceiverRequest":{"kind":"video"}}"#,
            r#"{"s\u0064p":"escaped key"}"#,
        ] {
            let raw: Box<RawValue> = match RawValue::from_string(data.to_owned()) {
                Ok(r) => r,
                Err(e) => panic!("{data}: {e}"),
            };
            assert!(is_simple_peer_signal(&raw), "{data}");
        }
    }

    #[test]
    fn server_frames_are_valid_json_with_the_documented_fields() {
        let ice = RawValue::from_string(r#"[{"urls":["stun:x"]}]"#.to_owned()).ok();
        let win = RawValue::from_string(r#"{"opens_at":"a"}"#.to_owned()).ok();
        let (Some(ice), Some(win)) = (ice, win) else { panic!("raw values") };
        let w = welcome(&Welcome {
            booking: "bkg_\"1\"",
            participant: "par_1",
            role: Role::Host,
            ice_servers: &ice,
            window: &win,
            ping_interval_s: 20,
        });
        let v = json(&w);
        assert_eq!(v["type"], "welcome");
        assert_eq!(v["v"], 1);
        assert_eq!(v["booking"], "bkg_\"1\"");
        assert_eq!(v["you"]["peer"], "par_1");
        assert_eq!(v["you"]["role"], "host");
        assert_eq!(v["initiator"], true);
        assert_eq!(v["ice_servers"][0]["urls"][0], "stun:x");
        assert_eq!(v["window"]["opens_at"], "a");
        assert_eq!(v["ping_interval_s"], 20);

        let v = json(&ready(2, "par_2", Role::Guest));
        assert_eq!((v["type"].as_str(), v["session"].as_u64()), (Some("ready"), Some(2)));
        assert_eq!((v["peer"]["peer"].as_str(), v["peer"]["role"].as_str()), (Some("par_2"), Some("guest")));

        let v = json(&peer_left(4, "par_2", "replaced"));
        assert_eq!(v["type"], "peer-left");
        assert_eq!(v["session"], 4);
        assert_eq!(v["reason"], "replaced");

        let v = json(&window_closing("2026-01-01T11:00:00Z", 300));
        assert_eq!(v["event"], "closing");
        assert_eq!(v["closes_at"], "2026-01-01T11:00:00Z");
        assert_eq!(v["in_s"], 300);

        let v = json(&error(ErrorCode::NoPeer, "no \"peer\""));
        assert_eq!(v["code"], "no_peer");
        assert_eq!(v["message"], "no \"peer\"");

        assert_eq!(json(&pong(None)), json(r#"{"type":"pong"}"#));
    }

    #[test]
    fn signal_keeps_data_byte_identical() {
        let text = "{\"type\":\"signal\",\"data\":{ \"sdp\" : \"v=0\\r\\n\\u00e9\" ,\"type\":\"offer\"  }}";
        let Ok(ClientMsg::Signal { data, .. }) = parse(text) else { panic!("parse") };
        let out = signal(7, "par_\u{7}", data);
        assert!(out.contains("{ \"sdp\" : \"v=0\\r\\n\\u00e9\" ,\"type\":\"offer\"  }"), "{out}");
        let v = json(&out);
        assert_eq!(v["from"], "par_\u{7}");
        assert_eq!(v["session"], 7);
    }

    #[test]
    fn json_string_escaping_round_trips() {
        for s in ["", "plain", "quote\" back\\slash", "ctl\u{0}\u{1f}\n\r\t", "ünï😀"] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            let back: Result<String, _> = serde_json::from_str(&out);
            assert_eq!(back.ok().as_deref(), Some(s));
        }
    }
}
