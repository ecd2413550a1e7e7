//! Link tokens encrypted at rest (`participants.link_token_enc`), so invitations (ICS) and emails can carry each
//! participant's own join link while the API keeps finding participants by the SHA-256 of the token only.
//!
//! Format: `v1.<kid>.<base64url(nonce || ciphertext)>`, where `kid` names the `[[session_keys]]` entry of
//! `secrets.toml` whose key material the encryption key was derived from: HKDF-SHA256 (RFC 5869) with that key as
//! input keying material, no salt and the info [`HKDF_INFO`]; the AEAD is ChaCha20-Poly1305 (RFC 8439) with a random
//! 96-bit nonce per value and the participant id as associated data (a value copied to another participant's row
//! does not open). A value sealed under a session key that was later removed from `secrets.toml` no longer opens:
//! the invitation then omits the link and says so, until the link is rotated.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

/// HKDF `info` of the link-token key: binds the derived key to this one use of the session key material.
pub const HKDF_INFO: &[u8] = b"duet participants.link_token_enc v1";

/// Version prefix of sealed values.
const VERSION: &str = "v1";

/// Nonce length of ChaCha20-Poly1305: 12 bytes (RFC 8439 §2.8).
const NONCE_LEN: usize = 12;

/// Seals and opens link tokens. The first key seals; every key opens the values carrying its `kid`.
pub struct LinkSealer {
    keys: Vec<(String, ChaCha20Poly1305)>,
}

impl std::fmt::Debug for LinkSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSealer").field("kids", &self.keys.iter().map(|k| &k.0).collect::<Vec<_>>()).finish()
    }
}

impl LinkSealer {
    /// The sealer of the session keys `(kid, key material)` of `secrets.toml`, the signing (first) one sealing.
    /// With no keys nothing seals and nothing opens.
    pub fn new(session_keys: &[(String, Vec<u8>)]) -> LinkSealer {
        let keys = session_keys
            .iter()
            .map(|(kid, material)| {
                let mut okm = [0u8; 32];
                // HKDF-SHA256 can expand up to 255 * 32 bytes; 32 always succeeds.
                let _ = Hkdf::<Sha256>::new(None, material).expand(HKDF_INFO, &mut okm);
                (kid.clone(), ChaCha20Poly1305::new(Key::from_slice(&okm)))
            })
            .collect();
        LinkSealer { keys }
    }

    /// `token` sealed for participant `participant` (`v1.<kid>.<base64url>`); `None` when there is no key.
    pub fn seal(&self, participant: &str, token: &str) -> Option<String> {
        let (kid, cipher) = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: token.as_bytes(), aad: participant.as_bytes() })
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Some(format!("{VERSION}.{kid}.{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// The token sealed in `sealed` for `participant`; `None` when the format, the key id, the participant or the
    /// authentication tag does not match.
    pub fn open(&self, participant: &str, sealed: &str) -> Option<String> {
        let mut parts = sealed.splitn(3, '.');
        if parts.next()? != VERSION {
            return None;
        }
        let kid = parts.next()?;
        let raw = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (_, cipher) = self.keys.iter().find(|(k, _)| k == kid)?;
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let pt = cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: participant.as_bytes() }).ok()?;
        String::from_utf8(pt).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_per_participant_with_fresh_nonces_and_opens_after_rotation() {
        let s1 = LinkSealer::new(&[("s1".into(), vec![1u8; 32])]);
        let a = s1.seal("par_a", "token-a").unwrap();
        let b = s1.seal("par_a", "token-a").unwrap();
        assert!(a.starts_with("v1.s1."));
        assert_ne!(a, b, "a random nonce per value");
        assert_eq!(s1.open("par_a", &a).as_deref(), Some("token-a"));
        assert_eq!(s1.open("par_b", &a), None, "bound to its participant");
        // A new signing key in front: old values still open, new ones use the new kid.
        let s2 = LinkSealer::new(&[("s2".into(), vec![2u8; 32]), ("s1".into(), vec![1u8; 32])]);
        assert_eq!(s2.open("par_a", &a).as_deref(), Some("token-a"));
        assert!(s2.seal("par_a", "t").unwrap().starts_with("v1.s2."));
        // The key removed: nothing opens.
        let s3 = LinkSealer::new(&[("s2".into(), vec![2u8; 32])]);
        assert_eq!(s3.open("par_a", &a), None);
        // Another key under the same kid: the tag fails.
        let forged = LinkSealer::new(&[("s1".into(), vec![9u8; 32])]);
        assert_eq!(forged.open("par_a", &a), None);
        assert_eq!(s1.open("par_a", "v1.s1.AAAA"), None);
        assert_eq!(s1.open("par_a", "v2.s1.AAAA"), None);
    }
}
