//! Wire encoding of `vy` mode, the drop-in for open-y-subprojects/virtual_y_signaling_server (research/signaling.md
//! §1.3, §10.2): the server's only own frame is the literal text `ready`; everything else is the partner's frame,
//! byte-identical. No room logic here.

use serde::Deserializer as _;

use crate::native::ShapeVisitor;

/// The exact 5-byte text frame sent to both sockets each time the pair completes (`sendAll('ready')` upstream).
pub(crate) const READY: &str = "ready";

/// Strict-mode filter (research §10.2 rule 4): true when the whole frame is one JSON object with a truthy `sdp`,
/// `candidate`, `renegotiate` or `transceiverRequest` (what simple-peer's `signal()` accepts without destroying the
/// peer with `ERR_SIGNALING`). Surrounding JSON whitespace is allowed; trailing data is not.
pub(crate) fn is_strict_signal(text: &str) -> bool {
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(ShapeVisitor).unwrap_or(false) && de.end().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_filter_accepts_signals_and_nothing_else() {
        assert!(is_strict_signal(r#"{"type":"offer","sdp":"v=0"}"#));
        assert!(is_strict_signal(" {\"candidate\":{\"candidate\":\"c\"}}\n"));
        assert!(is_strict_signal(r#"{"renegotiate":true}"#));
        assert!(is_strict_signal(r#"{"transceiverRequest":{"kind":"audio"}}"#));
        for bad in [
            "ready",
            "",
            "null",
            "[]",
            r#"[{"sdp":"x"}]"#,
            r#"{"type":"offer"}"#,
            r#"{"sdp":""}"#,
            r#"{"sdp":"x"} {}"#,
            r#"{"sdp":"x""#,
            r#""{\"sdp\":\"x\"}""#,
        ] {
            assert!(!is_strict_signal(bad), "{bad}");
        }
    }
}
