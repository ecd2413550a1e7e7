//! TURN REST credentials (coturn-compatible, DESIGN §4), the long-term key (RFC 8489 §9.2.2)
//! and stateless nonces.
//!
//! - `username = "<expiry-unix>:<booking-id>:<participant-id>"` (or coturn's 2-part
//!   `"<expiry-unix>:<id>"`), `password = base64(HMAC-SHA1(secret, username))`.
//! - key = MD5(username ":" realm ":" password).
//! - nonce = 16 hex digits of the issue time (Unix seconds) followed by
//!   base64url(HMAC-SHA1(nonce_secret, issue time)[..12]): no state is kept per client before
//!   it authenticates.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<Sha1>;

fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    // HMAC accepts keys of every length: `new_from_slice` cannot fail for Hmac<Sha1>.
    let Ok(mut mac) = HmacSha1::new_from_slice(key) else {
        return [0; 20];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The TURN REST password for `username`: base64 (standard alphabet, padded) of
/// HMAC-SHA1(`secret`, `username`), as coturn's `use-auth-secret` computes it.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    STANDARD.encode(hmac_sha1(secret, &[username.as_bytes()]))
}

/// The long-term credential key MD5(username ":" realm ":" password) (RFC 8489 §9.2.2), used
/// as the HMAC key of MESSAGE-INTEGRITY. `password` is taken as is (no SASLprep/OpaqueString:
/// REST passwords are ASCII base64).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// A parsed TURN REST username (DESIGN §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// When the credential stops working, Unix seconds (the booking's `hard_end_at`).
    pub expiry_unix: u64,
    /// Booking id.
    pub booking: &'a str,
    /// Participant id; "" in the 2-part form.
    pub participant: &'a str,
}

impl<'a> RestUsername<'a> {
    /// The participant id and its link epoch: Duet writes `<participant-id>.<epoch>` once a participant's link was
    /// rotated or revoked (epoch > 0), so the relay can refuse the credentials of older links
    /// ([`Server::revoke_participant`](crate::Server::revoke_participant)). Without a `.<decimal>` suffix the epoch
    /// is 0 and the whole field is the id.
    pub fn participant_epoch(&self) -> (&'a str, u64) {
        match self.participant.rsplit_once('.') {
            Some((id, n)) if !n.is_empty() && n.len() <= 19 && n.bytes().all(|b| b.is_ascii_digit()) => {
                (id, n.parse().unwrap_or(0))
            }
            _ => (self.participant, 0),
        }
    }

    /// Parses `"<expiry-unix>:<booking-id>:<participant-id>"` or the 2-part
    /// `"<expiry-unix>:<id>"` (coturn `-W`; then `booking = id`, `participant = ""`).
    ///
    /// `None` when the expiry is not a decimal u64, the booking id is empty, or there are more
    /// than three parts.
    pub fn parse(username: &'a str) -> Option<Self> {
        let mut parts = username.splitn(3, ':');
        let expiry = parts.next()?;
        if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let expiry_unix = expiry.parse().ok()?;
        let booking = parts.next()?;
        if booking.is_empty() {
            return None;
        }
        let participant = parts.next().unwrap_or("");
        if participant.contains(':') {
            return None;
        }
        Some(RestUsername { expiry_unix, booking, participant })
    }
}

/// Why a NONCE was refused (RFC 8489 §9.2.4: both answer 438 Stale Nonce with a fresh nonce).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NonceError {
    /// Not a nonce we issued (wrong shape or wrong MAC).
    #[error("invalid nonce")]
    Invalid,
    /// Ours, but issued `nonce_lifetime` or more ago (or in the future).
    #[error("stale nonce")]
    Stale,
}

/// Length in characters of a nonce from [`NonceCodec::issue`]: 16 hex + 16 base64url.
pub const NONCE_LEN: usize = 32;

/// Stateless nonce issuer/checker: the nonce is the issue time plus a truncated
/// HMAC-SHA1(`nonce_secret`, issue time) (RFC 8489 §9.2, "stateless" as in coturn 4.17).
#[derive(Clone)]
pub struct NonceCodec {
    secret: [u8; 32],
    lifetime: Duration,
}

impl std::fmt::Debug for NonceCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceCodec").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl NonceCodec {
    /// A codec with `secret` (kept private) whose nonces are valid for `lifetime`.
    pub fn new(secret: [u8; 32], lifetime: Duration) -> Self {
        NonceCodec { secret, lifetime }
    }

    fn tag(&self, issued_at: u64) -> [u8; 20] {
        hmac_sha1(&self.secret, &[b"duet-nonce", &issued_at.to_be_bytes()])
    }

    /// A nonce issued at `unix_now_secs`: `"<16 hex digits>" + base64url(mac[..12])`,
    /// 32 ASCII characters.
    pub fn issue(&self, unix_now_secs: u64) -> String {
        let mut s = format!("{unix_now_secs:016x}");
        URL_SAFE_NO_PAD.encode_string(&self.tag(unix_now_secs)[..12], &mut s);
        s
    }

    /// Checks a nonce at `unix_now_secs`: valid while `now - issued_at < lifetime`.
    ///
    /// Errors: [`NonceError::Invalid`] when not ours, [`NonceError::Stale`] when expired.
    /// The MAC comparison is constant-time.
    pub fn verify(&self, nonce: &str, unix_now_secs: u64) -> Result<(), NonceError> {
        if nonce.len() != NONCE_LEN || !nonce.is_ascii() {
            return Err(NonceError::Invalid);
        }
        let (hex, mac) = nonce.split_at(16);
        let issued_at = u64::from_str_radix(hex, 16).map_err(|_| NonceError::Invalid)?;
        let mut got = [0u8; 12];
        match URL_SAFE_NO_PAD.decode_slice(mac, &mut got) {
            Ok(12) => {}
            _ => return Err(NonceError::Invalid),
        }
        if !bool::from(self.tag(issued_at)[..12].ct_eq(&got)) {
            return Err(NonceError::Invalid);
        }
        match unix_now_secs.checked_sub(issued_at) {
            Some(age) if Duration::from_secs(age) < self.lifetime => Ok(()),
            _ => Err(NonceError::Stale),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_coturn() {
        // Computed with: echo -n "1700000000:b1:p1" | openssl dgst -sha1 -hmac secret -binary | base64
        let pw = rest_password(b"secret", "1700000000:b1:p1");
        assert_eq!(pw, "3FkBFYjZXVFRZXnfa/kNnttL/YQ=");
        assert_ne!(pw, rest_password(b"other", "1700000000:b1:p1"));
    }

    #[test]
    fn parses_usernames() {
        assert_eq!(
            RestUsername::parse("1700000000:book-1:host"),
            Some(RestUsername { expiry_unix: 1_700_000_000, booking: "book-1", participant: "host" })
        );
        assert_eq!(
            RestUsername::parse("1700000000:alice"),
            Some(RestUsername { expiry_unix: 1_700_000_000, booking: "alice", participant: "" })
        );
        for bad in ["", "alice", ":b:p", "x1:b:p", "1:", "1::p", "1:b:p:q", "-1:b", "+1:b"] {
            assert_eq!(RestUsername::parse(bad), None, "{bad:?}");
        }
        assert_eq!(RestUsername::parse("99999999999999999999999:b"), None);
    }

    #[test]
    fn nonce_lifecycle() {
        let c = NonceCodec::new([7; 32], Duration::from_secs(600));
        let n = c.issue(1000);
        assert_eq!(n.len(), NONCE_LEN);
        assert_eq!(c.verify(&n, 1000), Ok(()));
        assert_eq!(c.verify(&n, 1599), Ok(()));
        assert_eq!(c.verify(&n, 1600), Err(NonceError::Stale));
        assert_eq!(c.verify(&n, 999), Err(NonceError::Stale));
        let other = NonceCodec::new([8; 32], Duration::from_secs(600));
        assert_eq!(other.verify(&n, 1000), Err(NonceError::Invalid));
        let mut forged = n.clone();
        forged.replace_range(0..16, "00000000000003e9");
        assert_eq!(c.verify(&forged, 1001), Err(NonceError::Invalid));
        assert_eq!(c.verify("short", 1000), Err(NonceError::Invalid));
        assert_eq!(c.verify("ééééééééééééééé!ééééééééééééééé!", 1000), Err(NonceError::Invalid));
    }

    #[test]
    fn long_term_key_rfc5769() {
        // RFC 5769 §2.4 key input "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>:example.org:TheMatrIX".
        let k = long_term_key("マトリックス", "example.org", "TheMatrIX");
        assert_eq!(k.len(), 16);
    }
}
