//! Capabilities handed to participants: link tokens (in join URLs), session tokens (JWT HS256, DESIGN §3) and TURN
//! REST credentials (README, "Join window"). Link tokens are looked up by their SHA-256 (the only form the join path reads) and kept
//! otherwise only encrypted, for invitations ([`super::link_seal`]); the rest is derived at join time.

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
/// Key id (JWT header `kid`) of the single `session_key` of older `secrets.toml` files, and of the first generated
/// entry of `session_keys`.
pub const LEGACY_KID: &str = "s1";

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
    /// The participant's link epoch when issued; a rotation or revocation of the participant's link bumps it and
    /// invalidates the token. Tokens issued before this claim existed carry none and are read as 0.
    #[serde(default)]
    pub pep: i64,
}

/// Signs and verifies session tokens (HS256, RFC 7518 §3.2). The newest key signs, with its id in the JWT header
/// `kid` (RFC 7515 §4.1.4); every key verifies the tokens carrying its `kid`, so tokens signed before a rotation stay
/// valid until they expire or their key is removed.
#[derive(Clone)]
pub struct SessionKeys {
    /// `kid` and key of the signing (newest) key.
    signing: (String, EncodingKey),
    /// Every key by `kid`, the signing one first.
    verifying: Vec<(String, DecodingKey)>,
}

/// Why a session token was refused (close code 4001).
#[derive(Debug, thiserror::Error)]
#[error("invalid session token: {0}")]
pub struct TokenError(#[from] jsonwebtoken::errors::Error);

impl SessionKeys {
    /// The signing key `key` (at least 32 bytes, checked by `secrets.toml` loading) with id `kid`.
    pub fn new(kid: &str, key: &[u8]) -> SessionKeys {
        SessionKeys {
            signing: (kid.to_string(), EncodingKey::from_secret(key)),
            verifying: vec![(kid.to_string(), DecodingKey::from_secret(key))],
        }
    }

    /// Adds an older key that still verifies its tokens but no longer signs.
    pub fn with_older(mut self, kid: &str, key: &[u8]) -> SessionKeys {
        self.verifying.push((kid.to_string(), DecodingKey::from_secret(key)));
        self
    }

    /// The `kid` new tokens carry.
    pub fn signing_kid(&self) -> &str {
        &self.signing.0
    }

    /// Signs claims (HS256, `kid` of the newest key).
    pub fn sign(&self, claims: &SessionClaims) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(self.signing.0.clone());
        // Encoding HS256 with an in-memory key and serialisable claims cannot fail.
        jsonwebtoken::encode(&h, claims, &self.signing.1).expect("HS256 encoding of plain claims")
    }

    /// Verifies with the key named by the header's `kid` (a missing or unknown `kid` is refused): signature (HS256
    /// only: `alg:none` and others are refused), `exp` (required), `nbf`, `iss`, `aud`, with 5 s leeway.
    pub fn verify(&self, token: &str) -> Result<SessionClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token)?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.iter().find(|(k, _)| k == kid))
            .map(|(_, key)| key)
            .ok_or_else(|| TokenError(jsonwebtoken::errors::ErrorKind::InvalidToken.into()))?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_audience(&[AUDIENCE]);
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        Ok(jsonwebtoken::decode::<SessionClaims>(token, key, &v)?.claims)
    }
}

/// TURN REST credentials of one participant (coturn-compatible, DESIGN §4): `username =
/// "<expiry-unix>:<booking-id>:<participant-id>"` (`…:<participant-id>.<link epoch>` once the participant's link
/// was rotated or revoked), `credential = base64(HMAC-SHA1(turn_secret, username))`.
pub fn turn_credentials(
    secret: &[u8],
    expiry: i64,
    booking: &str,
    participant: &str,
    link_epoch: i64,
) -> (String, String) {
    // The link epoch (after a rotation or revocation) lets the relay refuse credentials of older links.
    let username = if link_epoch > 0 {
        format!("{expiry}:{booking}:{participant}.{link_epoch}")
    } else {
        format!("{expiry}:{booking}:{participant}")
    };
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
            pep: 0,
        }
    }

    #[test]
    fn roundtrip_and_tamper() {
        let k = SessionKeys::new(LEGACY_KID, &[7u8; 32]);
        let far = 4_000_000_000;
        let t = k.sign(&claims(far));
        assert_eq!(k.verify(&t).unwrap(), claims(far));
        let other = SessionKeys::new(LEGACY_KID, &[8u8; 32]);
        assert!(other.verify(&t).is_err(), "another key must not verify");
        assert!(k.verify(&k.sign(&claims(1000))).is_err(), "expired");
    }

    fn kid_of(token: &str) -> Option<String> {
        jsonwebtoken::decode_header(token).unwrap().kid
    }

    #[test]
    fn rotation_signs_with_the_newest_kid_and_verifies_older_ones() {
        let far = 4_000_000_000;
        let old = SessionKeys::new("s1", &[1u8; 32]);
        let old_token = old.sign(&claims(far));
        assert_eq!(kid_of(&old_token).as_deref(), Some("s1"));

        let rotated = SessionKeys::new("s2", &[2u8; 32]).with_older("s1", &[1u8; 32]);
        assert_eq!(rotated.signing_kid(), "s2");
        let new_token = rotated.sign(&claims(far));
        assert_eq!(kid_of(&new_token).as_deref(), Some("s2"));
        assert_eq!(rotated.verify(&old_token).unwrap(), claims(far), "a token of the older key still verifies");
        assert_eq!(rotated.verify(&new_token).unwrap(), claims(far));

        // The old key removed: its tokens are refused; a new token never verifies with the old key alone.
        let retired = SessionKeys::new("s2", &[2u8; 32]);
        assert!(retired.verify(&old_token).is_err());
        assert!(old.verify(&new_token).is_err(), "unknown kid");
        // The right kid with another key's signature, and no kid at all, are refused.
        let forged = SessionKeys::new("s2", &[9u8; 32]).sign(&claims(far));
        assert!(rotated.verify(&forged).is_err());
        let mut h = Header::new(Algorithm::HS256);
        h.kid = None;
        let no_kid = jsonwebtoken::encode(&h, &claims(far), &EncodingKey::from_secret(&[2u8; 32])).unwrap();
        assert!(rotated.verify(&no_kid).is_err(), "a token without kid");
    }

    #[test]
    fn alg_none_is_refused() {
        let k = SessionKeys::new(LEGACY_KID, &[7u8; 32]);
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
        let (u, p) = turn_credentials(b"testsecret", 1_800_000_000, "bkg_1", "par_1", 0);
        assert_eq!(u, "1800000000:bkg_1:par_1");
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"testsecret").unwrap();
        m.update(u.as_bytes());
        let want = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
        assert_eq!(p, want);
    }
}
