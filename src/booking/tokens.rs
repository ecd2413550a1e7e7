//! Capabilities handed to participants: link tokens (in join URLs), session tokens (JWT HS256, DESIGN §3) and TURN
//! REST credentials (DESIGN §4). Only link-token hashes are stored; the rest is derived at join time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::window::Role;

/// Issuer of session tokens.
pub const ISSUER: &str = "duet";
/// Audience of session tokens: the signaling hub.
pub const AUDIENCE: &str = "duet:signal";
/// Key id in the JWT header (for future rotation).
pub const KID: &str = "s1";

/// A fresh link token: 256 random bits, base64url without padding (43 characters).
pub fn new_link_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// SHA-256 of a link token: the only form stored.
pub fn link_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A random identifier with a type prefix, e.g. `bkg_3f9c…` (128 bits, hex).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Claims of a session token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionClaims {
    /// Issuer, [`ISSUER`].
    pub iss: String,
    /// Audience, [`AUDIENCE`].
    pub aud: String,
    /// Participant id.
    pub sub: String,
    /// Token id (random).
    pub jti: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before: the participant's opening instant, Unix seconds.
    pub nbf: i64,
    /// Expiry: `min(now + session_ttl, hard_end_at)`, Unix seconds.
    pub exp: i64,
    /// Booking id.
    pub bkg: String,
    /// Role in the booking.
    pub role: Role,
    /// The booking's `sequence` when issued; a reschedule or cancel bumps it and invalidates the token.
    pub seq: i64,
}

/// Signs and verifies session tokens with one HS256 key.
#[derive(Clone)]
pub struct SessionKeys {
    enc: EncodingKey,
    dec: DecodingKey,
}

/// Why a session token was refused (close code 4001).
#[derive(Debug, thiserror::Error)]
#[error("invalid session token: {0}")]
pub struct TokenError(#[from] jsonwebtoken::errors::Error);

impl SessionKeys {
    /// From a key of at least 32 bytes.
    pub fn new(key: &[u8]) -> SessionKeys {
        SessionKeys { enc: EncodingKey::from_secret(key), dec: DecodingKey::from_secret(key) }
    }

    /// Signs claims (HS256, `kid` set).
    pub fn sign(&self, claims: &SessionClaims) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(KID.into());
        // Encoding HS256 with an in-memory key and serialisable claims cannot fail.
        jsonwebtoken::encode(&h, claims, &self.enc).expect("HS256 encoding of plain claims")
    }

    /// Verifies signature (HS256 only: `alg:none` and others are refused), `exp` (required), `nbf`, `iss`, `aud`,
    /// with 5 s leeway.
    pub fn verify(&self, token: &str) -> Result<SessionClaims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_audience(&[AUDIENCE]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        Ok(jsonwebtoken::decode::<SessionClaims>(token, &self.dec, &v)?.claims)
    }
}

/// TURN REST credentials of one participant (coturn-compatible, DESIGN §4): `username =
/// "<expiry-unix>:<booking-id>:<participant-id>"`, `credential = base64(HMAC-SHA1(turn_secret, username))`.
pub fn turn_credentials(secret: &[u8], expiry: i64, booking: &str, participant: &str) -> (String, String) {
    let username = format!("{expiry}:{booking}:{participant}");
    let credential = duet_relay::auth::rest_password(secret, &username);
    (username, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> SessionClaims {
        SessionClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "par_1".into(),
            jti: "j".into(),
            iat: 0,
            nbf: 0,
            exp,
            bkg: "bkg_1".into(),
            role: Role::Guest,
            seq: 0,
        }
    }

    #[test]
    fn roundtrip_and_tamper() {
        let k = SessionKeys::new(&[7u8; 32]);
        let far = 4_000_000_000;
        let t = k.sign(&claims(far));
        assert_eq!(k.verify(&t).unwrap(), claims(far));
        let other = SessionKeys::new(&[8u8; 32]);
        assert!(other.verify(&t).is_err(), "another key must not verify");
        assert!(k.verify(&k.sign(&claims(1000))).is_err(), "expired");
    }

    #[test]
    fn alg_none_is_refused() {
        let k = SessionKeys::new(&[7u8; 32]);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(4_000_000_000)).unwrap());
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(k.verify(&format!("{head}.{body}.")).is_err());
    }

    #[test]
    fn link_tokens_are_long_and_distinct() {
        let a = new_link_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, new_link_token());
        assert_eq!(link_token_hash(&a).len(), 32);
    }

    #[test]
    fn turn_credentials_match_coturn_rest_format() {
        // coturn: password = base64(HMAC-SHA1(secret, username)); checked against `openssl dgst -sha1 -hmac`.
        let (u, p) = turn_credentials(b"testsecret", 1_800_000_000, "bkg_1", "par_1");
        assert_eq!(u, "1800000000:bkg_1:par_1");
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"testsecret").unwrap();
        m.update(u.as_bytes());
        let want = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
        assert_eq!(p, want);
    }
}
