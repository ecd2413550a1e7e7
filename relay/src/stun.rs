//! STUN message codec (RFC 8489 §5, §14) with the attributes TURN uses (RFC 8656 §18).
//!
//! Decoding is zero-copy and bounded: [`Message::decode`] validates the header and walks the
//! attribute TLVs once, never reading past the buffer; typed attribute values are parsed on
//! demand by [`RawAttribute::parse`]. Nothing here allocates except [`MessageEncoder`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// The fixed magic cookie in bytes 4..8 of every RFC 8489 message (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length in bytes of the STUN header (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;
/// Value XORed into the CRC-32 of a FINGERPRINT attribute (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Length in bytes of a MESSAGE-INTEGRITY value, HMAC-SHA1 (RFC 8489 §14.5).
pub const MESSAGE_INTEGRITY_LEN: usize = 20;

/// Maximum USERNAME length in bytes (RFC 8489 §14.3: "less than 513 bytes").
pub const MAX_USERNAME_LEN: usize = 512;
/// Maximum REALM / NONCE / SOFTWARE length in bytes (RFC 8489 §14.9, §14.10, §14.14: < 763 bytes).
pub const MAX_TEXT_LEN: usize = 762;
/// Maximum ERROR-CODE reason phrase length in bytes (RFC 8489 §14.8: < 128 characters, ≤ 763 bytes).
pub const MAX_REASON_LEN: usize = 763;

/// Attribute type codes (RFC 8489 §18.3, RFC 8656 §18).
pub mod attr {
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME (RFC 8489 §14.3).
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 8489 §14.8).
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13).
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME (RFC 8656 §18.2).
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA (RFC 8656 §18.4).
    pub const DATA: u16 = 0x0013;
    /// REALM (RFC 8489 §14.9).
    pub const REALM: u16 = 0x0014;
    /// NONCE (RFC 8489 §14.10).
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT (RFC 8656 §18.7).
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT (RFC 8656 §18.8).
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT (RFC 8656 §18.9).
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6).
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    /// USERHASH (RFC 8489 §14.4).
    pub const USERHASH: u16 = 0x001E;
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN (RFC 8656 §18.10).
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11).
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// ICMP (RFC 8656 §18.13).
    pub const ICMP: u16 = 0x8004;
    /// SOFTWARE (RFC 8489 §14.14).
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT (RFC 8489 §14.7).
    pub const FINGERPRINT: u16 = 0x8028;

    /// Whether an attribute type is comprehension-required (type < 0x8000, RFC 8489 §14).
    pub const fn is_comprehension_required(typ: u16) -> bool {
        typ < 0x8000
    }
}

/// Address family codes used in address attributes and REQUESTED-ADDRESS-FAMILY
/// (RFC 8489 §14.1, RFC 8656 §18.6).
pub mod family {
    /// IPv4.
    pub const IPV4: u8 = 0x01;
    /// IPv6.
    pub const IPV6: u8 = 0x02;
}

/// IANA protocol number of UDP, the only REQUESTED-TRANSPORT value we relay (RFC 8656 §18.8).
pub const PROTOCOL_UDP: u8 = 17;

/// STUN error codes used by the server (RFC 8489 §14.8, RFC 8656 §19).
pub mod error_code {
    /// 400 Bad Request.
    pub const BAD_REQUEST: u16 = 400;
    /// 401 Unauthenticated.
    pub const UNAUTHENTICATED: u16 = 401;
    /// 403 Forbidden.
    pub const FORBIDDEN: u16 = 403;
    /// 420 Unknown Attribute.
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    /// 437 Allocation Mismatch.
    pub const ALLOCATION_MISMATCH: u16 = 437;
    /// 438 Stale Nonce.
    pub const STALE_NONCE: u16 = 438;
    /// 440 Address Family not Supported.
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: u16 = 440;
    /// 441 Wrong Credentials.
    pub const WRONG_CREDENTIALS: u16 = 441;
    /// 442 Unsupported Transport Protocol.
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: u16 = 442;
    /// 443 Peer Address Family Mismatch.
    pub const PEER_ADDRESS_FAMILY_MISMATCH: u16 = 443;
    /// 486 Allocation Quota Reached.
    pub const ALLOCATION_QUOTA_REACHED: u16 = 486;
    /// 500 Server Error.
    pub const SERVER_ERROR: u16 = 500;
    /// 508 Insufficient Capacity.
    pub const INSUFFICIENT_CAPACITY: u16 = 508;

    /// The RFC's reason phrase for a code (fixed text, leaks nothing), or "" for unknown codes.
    pub const fn reason(code: u16) -> &'static str {
        match code {
            BAD_REQUEST => "Bad Request",
            UNAUTHENTICATED => "Unauthenticated",
            FORBIDDEN => "Forbidden",
            UNKNOWN_ATTRIBUTE => "Unknown Attribute",
            ALLOCATION_MISMATCH => "Allocation Mismatch",
            STALE_NONCE => "Stale Nonce",
            ADDRESS_FAMILY_NOT_SUPPORTED => "Address Family not Supported",
            WRONG_CREDENTIALS => "Wrong Credentials",
            UNSUPPORTED_TRANSPORT_PROTOCOL => "Unsupported Transport Protocol",
            PEER_ADDRESS_FAMILY_MISMATCH => "Peer Address Family Mismatch",
            ALLOCATION_QUOTA_REACHED => "Allocation Quota Reached",
            SERVER_ERROR => "Server Error",
            INSUFFICIENT_CAPACITY => "Insufficient Capacity",
            _ => "",
        }
    }
}

/// The class of a STUN message: the C1/C0 bits of the message type (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// 0b00: request.
    Request,
    /// 0b01: indication.
    Indication,
    /// 0b10: success response.
    SuccessResponse,
    /// 0b11: error response.
    ErrorResponse,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::SuccessResponse => 0b10,
            Class::ErrorResponse => 0b11,
        }
    }

    const fn from_bits(bits: u16) -> Self {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
}

/// A 12-bit STUN method (RFC 8489 §5, §18.2; RFC 8656 §17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    /// Binding (RFC 8489 §18.2).
    pub const BINDING: Method = Method(0x001);
    /// Allocate (RFC 8656 §17).
    pub const ALLOCATE: Method = Method(0x003);
    /// Refresh (RFC 8656 §17).
    pub const REFRESH: Method = Method(0x004);
    /// Send (indication only, RFC 8656 §17).
    pub const SEND: Method = Method(0x006);
    /// Data (indication only, RFC 8656 §17).
    pub const DATA: Method = Method(0x007);
    /// CreatePermission (RFC 8656 §17).
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// ChannelBind (RFC 8656 §17).
    pub const CHANNEL_BIND: Method = Method(0x009);
}

/// The 96-bit transaction ID of a STUN message (RFC 8489 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TransactionId(pub [u8; 12]);

/// Encodes class and method into the 14-bit message type (RFC 8489 §5, figure 3).
pub const fn message_type(class: Class, method: Method) -> u16 {
    let m = method.0 & 0x0FFF;
    let c = class.bits();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

/// Splits a 14-bit message type into class and method (RFC 8489 §5).
pub const fn split_message_type(typ: u16) -> (Class, Method) {
    let m = (typ & 0x000F) | ((typ >> 1) & 0x0070) | ((typ >> 2) & 0x0F80);
    let c = ((typ >> 4) & 0b01) | ((typ >> 7) & 0b10);
    (Class::from_bits(c), Method(m))
}

/// Why a buffer is not a well-formed STUN message or attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer than 20 bytes, or an attribute running past the end of the message.
    #[error("truncated STUN message")]
    Truncated,
    /// The two most significant bits are not zero (RFC 8489 §5): not STUN.
    #[error("not a STUN message (leading bits)")]
    NotStun,
    /// The magic cookie is wrong: not an RFC 8489 message.
    #[error("bad magic cookie")]
    BadMagicCookie,
    /// The length field is not a multiple of 4 or disagrees with the buffer length.
    #[error("bad message length")]
    BadLength,
    /// An attribute followed FINGERPRINT (RFC 8489 §14.7: it must be last).
    #[error("attribute after FINGERPRINT")]
    AttributeAfterFingerprint,
    /// A known attribute's value has the wrong size or content.
    #[error("malformed attribute {0:#06x}")]
    BadAttribute(u16),
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message would exceed the 16-bit length field (65 535 bytes of attributes).
    #[error("STUN message too long")]
    TooLong,
    /// An attribute value is out of range (e.g. an odd-length UNKNOWN-ATTRIBUTES list,
    /// an ERROR-CODE outside 300..=699, or a text longer than the RFC limit).
    #[error("invalid attribute {0:#06x}")]
    InvalidAttribute(u16),
}

/// Why MESSAGE-INTEGRITY or FINGERPRINT did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// The message has no such attribute.
    #[error("attribute missing")]
    Missing,
    /// The value does not match.
    #[error("mismatch")]
    Mismatch,
}

/// One attribute as found in a message: type, value (without padding) and the byte offset of
/// its 4-byte header within the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// Attribute type (see [`attr`]).
    pub typ: u16,
    /// Value bytes, without padding.
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
}

/// A decoded, typed attribute (RFC 8489 §14, RFC 8656 §18). Borrowed from the message bytes.
///
/// Addresses in the XOR-* variants are the plain (un-XORed) addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attribute<'a> {
    /// MAPPED-ADDRESS (RFC 8489 §14.1). Decoded; the server never sends it.
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    XorMappedAddress(SocketAddr),
    /// USERNAME, UTF-8, at most 512 bytes (RFC 8489 §14.3).
    Username(&'a str),
    /// USERHASH, 32 bytes (RFC 8489 §14.4). Decoded; not supported for authentication.
    UserHash(&'a [u8]),
    /// MESSAGE-INTEGRITY, the raw 20-byte HMAC-SHA1 (RFC 8489 §14.5). To compute one, use
    /// [`MessageEncoder::message_integrity`].
    MessageIntegrity(&'a [u8]),
    /// MESSAGE-INTEGRITY-SHA256, 16..=32 bytes in steps of 4 (RFC 8489 §14.6). Decoded only.
    MessageIntegritySha256(&'a [u8]),
    /// FINGERPRINT, the CRC-32 ^ 0x5354554e value (RFC 8489 §14.7).
    Fingerprint(u32),
    /// ERROR-CODE: `code` in 300..=699 and a reason phrase (RFC 8489 §14.8).
    ErrorCode {
        /// The numeric code, e.g. 401.
        code: u16,
        /// The reason phrase, UTF-8.
        reason: &'a str,
    },
    /// REALM, UTF-8, < 763 bytes (RFC 8489 §14.9).
    Realm(&'a str),
    /// NONCE, < 763 bytes (RFC 8489 §14.10).
    Nonce(&'a str),
    /// PASSWORD-ALGORITHMS, raw value (RFC 8489 §14.11).
    PasswordAlgorithms(&'a [u8]),
    /// PASSWORD-ALGORITHM (RFC 8489 §14.12).
    PasswordAlgorithm {
        /// Algorithm number (0x0001 MD5, 0x0002 SHA-256).
        algorithm: u16,
        /// Algorithm parameters, unpadded.
        parameters: &'a [u8],
    },
    /// UNKNOWN-ATTRIBUTES: big-endian 16-bit attribute types, so an even number of bytes
    /// (RFC 8489 §14.13). See [`unknown_attribute_types`].
    UnknownAttributes(&'a [u8]),
    /// SOFTWARE, UTF-8, < 763 bytes (RFC 8489 §14.14).
    Software(&'a str),
    /// CHANNEL-NUMBER, the raw 16-bit number (validity is the server's business, RFC 8656 §18.1).
    ChannelNumber(u16),
    /// LIFETIME in seconds (RFC 8656 §18.2).
    Lifetime(u32),
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3). May appear several times.
    XorPeerAddress(SocketAddr),
    /// DATA (RFC 8656 §18.4).
    Data(&'a [u8]),
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    XorRelayedAddress(SocketAddr),
    /// REQUESTED-ADDRESS-FAMILY: 0x01 IPv4, 0x02 IPv6 (RFC 8656 §18.6).
    RequestedAddressFamily(u8),
    /// EVEN-PORT; `true` when the R bit asks to reserve the next port (RFC 8656 §18.7).
    EvenPort(bool),
    /// REQUESTED-TRANSPORT: IANA protocol number, 17 = UDP (RFC 8656 §18.8).
    RequestedTransport(u8),
    /// DONT-FRAGMENT, no value (RFC 8656 §18.9).
    DontFragment,
    /// RESERVATION-TOKEN, 8 bytes (RFC 8656 §18.10).
    ReservationToken([u8; 8]),
    /// ADDITIONAL-ADDRESS-FAMILY: must be 0x02 IPv6 (RFC 8656 §18.11).
    AdditionalAddressFamily(u8),
    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
    AddressErrorCode {
        /// Family the error is about (0x01 / 0x02).
        family: u8,
        /// The numeric code, e.g. 440.
        code: u16,
        /// Reason phrase, UTF-8.
        reason: &'a str,
    },
    /// ICMP (RFC 8656 §18.13).
    Icmp {
        /// ICMP type.
        typ: u8,
        /// ICMP code.
        code: u8,
        /// Error data (e.g. MTU for "fragmentation needed").
        data: u32,
    },
    /// Any other attribute, kept raw.
    Unknown {
        /// Attribute type.
        typ: u16,
        /// Value bytes, unpadded.
        value: &'a [u8],
    },
}

/// Iterates the 16-bit attribute types in an UNKNOWN-ATTRIBUTES value (an odd trailing byte is
/// ignored).
pub fn unknown_attribute_types(value: &[u8]) -> impl Iterator<Item = u16> + '_ {
    value.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

fn decode_address(value: &[u8], xor: Option<&TransactionId>) -> Option<SocketAddr> {
    let fam = *value.get(1)?;
    let mut port = be16(value, 2)?;
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match (fam, value.len()) {
        (family::IPV4, 8) => {
            let mut b: [u8; 4] = value.get(4..8)?.try_into().ok()?;
            if xor.is_some() {
                for (x, k) in b.iter_mut().zip(MAGIC_COOKIE.to_be_bytes()) {
                    *x ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(b))
        }
        (family::IPV6, 20) => {
            let mut b: [u8; 16] = value.get(4..20)?.try_into().ok()?;
            if let Some(tid) = xor {
                let key = xor_key(tid);
                for (x, k) in b.iter_mut().zip(key) {
                    *x ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn xor_key(tid: &TransactionId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(&tid.0);
    key
}

fn text(value: &[u8], max: usize) -> Option<&str> {
    if value.len() > max {
        return None;
    }
    std::str::from_utf8(value).ok()
}

fn decode_error_code(value: &[u8]) -> Option<(u16, &str)> {
    let class = u16::from(*value.get(2)? & 0x07);
    let number = u16::from(*value.get(3)?);
    if !(3..=6).contains(&class) || number > 99 {
        return None;
    }
    let reason = text(value.get(4..)?, MAX_REASON_LEN)?;
    Some((class * 100 + number, reason))
}

impl<'a> RawAttribute<'a> {
    /// Parses the value into a typed [`Attribute`]; `tid` is needed for XOR-encoded IPv6
    /// addresses. Unknown types give [`Attribute::Unknown`].
    ///
    /// Errors: [`DecodeError::BadAttribute`] when a known attribute has the wrong size or
    /// content (e.g. non-UTF-8 USERNAME, unknown address family).
    pub fn parse(&self, tid: &TransactionId) -> Result<Attribute<'a>, DecodeError> {
        let v = self.value;
        let bad = DecodeError::BadAttribute(self.typ);
        let parsed = match self.typ {
            attr::MAPPED_ADDRESS => decode_address(v, None).map(Attribute::MappedAddress),
            attr::XOR_MAPPED_ADDRESS => decode_address(v, Some(tid)).map(Attribute::XorMappedAddress),
            attr::XOR_PEER_ADDRESS => decode_address(v, Some(tid)).map(Attribute::XorPeerAddress),
            attr::XOR_RELAYED_ADDRESS => decode_address(v, Some(tid)).map(Attribute::XorRelayedAddress),
            attr::USERNAME => text(v, MAX_USERNAME_LEN).map(Attribute::Username),
            attr::USERHASH => (v.len() == 32).then_some(Attribute::UserHash(v)),
            attr::MESSAGE_INTEGRITY => (v.len() == MESSAGE_INTEGRITY_LEN).then_some(Attribute::MessageIntegrity(v)),
            attr::MESSAGE_INTEGRITY_SHA256 => ((16..=32).contains(&v.len()) && v.len().is_multiple_of(4))
                .then_some(Attribute::MessageIntegritySha256(v)),
            attr::FINGERPRINT => {
                if v.len() == 4 {
                    be32(v, 0).map(Attribute::Fingerprint)
                } else {
                    None
                }
            }
            attr::ERROR_CODE => decode_error_code(v).map(|(code, reason)| Attribute::ErrorCode { code, reason }),
            attr::REALM => text(v, MAX_TEXT_LEN).map(Attribute::Realm),
            attr::NONCE => text(v, MAX_TEXT_LEN).map(Attribute::Nonce),
            attr::SOFTWARE => text(v, MAX_TEXT_LEN).map(Attribute::Software),
            attr::PASSWORD_ALGORITHMS => Some(Attribute::PasswordAlgorithms(v)),
            attr::PASSWORD_ALGORITHM => {
                let algorithm = be16(v, 0);
                let len = be16(v, 2).map(usize::from);
                match (algorithm, len) {
                    (Some(algorithm), Some(len)) => {
                        v.get(4..4 + len).map(|parameters| Attribute::PasswordAlgorithm { algorithm, parameters })
                    }
                    _ => None,
                }
            }
            attr::UNKNOWN_ATTRIBUTES => v.len().is_multiple_of(2).then_some(Attribute::UnknownAttributes(v)),
            attr::CHANNEL_NUMBER => {
                if v.len() == 4 {
                    be16(v, 0).map(Attribute::ChannelNumber)
                } else {
                    None
                }
            }
            attr::LIFETIME => {
                if v.len() == 4 {
                    be32(v, 0).map(Attribute::Lifetime)
                } else {
                    None
                }
            }
            attr::DATA => Some(Attribute::Data(v)),
            attr::REQUESTED_ADDRESS_FAMILY => {
                if v.len() == 4 {
                    v.first().map(|f| Attribute::RequestedAddressFamily(*f))
                } else {
                    None
                }
            }
            attr::ADDITIONAL_ADDRESS_FAMILY => {
                if v.len() == 4 {
                    v.first().map(|f| Attribute::AdditionalAddressFamily(*f))
                } else {
                    None
                }
            }
            attr::EVEN_PORT => {
                if v.len() == 1 {
                    v.first().map(|b| Attribute::EvenPort(b & 0x80 != 0))
                } else {
                    None
                }
            }
            attr::REQUESTED_TRANSPORT => {
                if v.len() == 4 {
                    v.first().map(|p| Attribute::RequestedTransport(*p))
                } else {
                    None
                }
            }
            attr::DONT_FRAGMENT => v.is_empty().then_some(Attribute::DontFragment),
            attr::RESERVATION_TOKEN => <[u8; 8]>::try_from(v).ok().map(Attribute::ReservationToken),
            attr::ADDRESS_ERROR_CODE => {
                let fam = v.first().copied();
                match (fam, decode_error_code(v)) {
                    (Some(family), Some((code, reason))) => Some(Attribute::AddressErrorCode { family, code, reason }),
                    _ => None,
                }
            }
            attr::ICMP => {
                if v.len() == 8 {
                    match (v.get(2), v.get(3), be32(v, 4)) {
                        (Some(t), Some(c), Some(data)) => Some(Attribute::Icmp { typ: *t, code: *c, data }),
                        _ => None,
                    }
                } else {
                    None
                }
            }
            typ => Some(Attribute::Unknown { typ, value: v }),
        };
        parsed.ok_or(bad)
    }
}

/// A validated STUN message borrowed from a buffer (RFC 8489 §5, §6).
///
/// Construction checks: at least 20 bytes, leading bits 0b00, magic cookie, length field a
/// multiple of 4 and equal to `buf.len() - 20`, every attribute within bounds, nothing after
/// FINGERPRINT. Attribute values are not parsed until asked for.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    raw: &'a [u8],
    class: Class,
    method: Method,
    transaction_id: TransactionId,
    integrity_at: Option<usize>,
    fingerprint_at: Option<usize>,
}

impl<'a> Message<'a> {
    /// Decodes and validates one STUN message occupying all of `buf` (a UDP datagram or a TCP
    /// frame delimited by [`crate::framing::stream_frame_len`]).
    ///
    /// Errors: see [`DecodeError`]. Never panics; cost is linear in `buf.len()` (≤ 65 555 bytes).
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let header = buf.get(..HEADER_LEN).ok_or(DecodeError::Truncated)?;
        if header[0] & 0xC0 != 0 {
            return Err(DecodeError::NotStun);
        }
        if be32(header, 4) != Some(MAGIC_COOKIE) {
            return Err(DecodeError::BadMagicCookie);
        }
        let typ = be16(header, 0).ok_or(DecodeError::Truncated)?;
        let len = usize::from(be16(header, 2).ok_or(DecodeError::Truncated)?);
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(DecodeError::BadLength);
        }
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&header[8..20]);
        let (class, method) = split_message_type(typ);
        let mut msg = Message {
            raw: buf,
            class,
            method,
            transaction_id: TransactionId(tid),
            integrity_at: None,
            fingerprint_at: None,
        };
        let mut iter = RawAttributes { raw: buf, pos: HEADER_LEN };
        loop {
            match iter.next_checked()? {
                None => break,
                Some(a) => {
                    if msg.fingerprint_at.is_some() {
                        return Err(DecodeError::AttributeAfterFingerprint);
                    }
                    match a.typ {
                        attr::MESSAGE_INTEGRITY if msg.integrity_at.is_none() => msg.integrity_at = Some(a.offset),
                        attr::FINGERPRINT => msg.fingerprint_at = Some(a.offset),
                        _ => {}
                    }
                }
            }
        }
        Ok(msg)
    }

    /// Message class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// Message method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Transaction ID.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The whole message bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether the message carries MESSAGE-INTEGRITY.
    pub fn has_message_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Whether the message carries FINGERPRINT (then always as the last attribute).
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint_at.is_some()
    }

    /// All attributes in order, raw. Infallible: bounds were checked by [`Message::decode`].
    pub fn raw_attributes(&self) -> RawAttributes<'a> {
        RawAttributes { raw: self.raw, pos: HEADER_LEN }
    }

    /// All attributes in order, typed; an item is `Err` when a known attribute is malformed.
    pub fn attributes(&self) -> impl Iterator<Item = Result<Attribute<'a>, DecodeError>> + 'a {
        let tid = self.transaction_id;
        self.raw_attributes().map(move |a| a.parse(&tid))
    }

    /// The first attribute of type `typ`, typed. `None` when absent.
    pub fn get(&self, typ: u16) -> Option<Result<Attribute<'a>, DecodeError>> {
        let tid = self.transaction_id;
        self.raw_attributes().find(|a| a.typ == typ).map(|a| a.parse(&tid))
    }

    /// Verifies the first MESSAGE-INTEGRITY with `key` (RFC 8489 §14.5): HMAC-SHA1 over the
    /// message up to the attribute, with the header length field covering up to and including
    /// MESSAGE-INTEGRITY. The comparison is constant-time.
    ///
    /// For long-term credentials the key is [`crate::auth::long_term_key`].
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let at = self.integrity_at.ok_or(IntegrityError::Missing)?;
        let expected = self.raw.get(at + 4..at + 4 + MESSAGE_INTEGRITY_LEN).ok_or(IntegrityError::Missing)?;
        let computed = integrity_over(self.raw, at, key);
        if bool::from(computed.ct_eq(expected)) { Ok(()) } else { Err(IntegrityError::Mismatch) }
    }

    /// Verifies FINGERPRINT (RFC 8489 §14.7): CRC-32 of the message up to the attribute,
    /// XOR 0x5354554e.
    pub fn verify_fingerprint(&self) -> Result<(), IntegrityError> {
        let at = self.fingerprint_at.ok_or(IntegrityError::Missing)?;
        let expected = be32(self.raw, at + 4).ok_or(IntegrityError::Missing)?;
        if fingerprint_over(self.raw, at) == expected { Ok(()) } else { Err(IntegrityError::Mismatch) }
    }
}

/// HMAC-SHA1 over `raw[..at]` with the length field set as if the message ended right after a
/// MESSAGE-INTEGRITY attribute at `at` (RFC 8489 §14.5). Requires `at >= 20`.
fn integrity_over(raw: &[u8], at: usize, key: &[u8]) -> [u8; 20] {
    // `Hmac::new_from_slice` accepts keys of any length for HMAC; the error is unreachable.
    let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(key) else {
        return [0; 20];
    };
    let adjusted = (at - HEADER_LEN + 4 + MESSAGE_INTEGRITY_LEN) as u16;
    mac.update(&raw[..2]);
    mac.update(&adjusted.to_be_bytes());
    mac.update(&raw[4..at]);
    mac.finalize().into_bytes().into()
}

/// CRC-32 ^ 0x5354554e over `raw[..at]` with the length field covering a FINGERPRINT at `at`.
fn fingerprint_over(raw: &[u8], at: usize) -> u32 {
    let adjusted = (at - HEADER_LEN + 8) as u16;
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[..2]);
    h.update(&adjusted.to_be_bytes());
    h.update(&raw[4..at]);
    h.finalize() ^ FINGERPRINT_XOR
}

/// Iterator over the attributes of a [`Message`], yielding [`RawAttribute`]s.
#[derive(Clone, Debug)]
pub struct RawAttributes<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> RawAttributes<'a> {
    fn next_checked(&mut self) -> Result<Option<RawAttribute<'a>>, DecodeError> {
        if self.pos >= self.raw.len() {
            return Ok(None);
        }
        let typ = be16(self.raw, self.pos).ok_or(DecodeError::Truncated)?;
        let len = usize::from(be16(self.raw, self.pos + 2).ok_or(DecodeError::Truncated)?);
        let start = self.pos + 4;
        let value = self.raw.get(start..start + len).ok_or(DecodeError::Truncated)?;
        let padded = (len + 3) & !3;
        if start + padded > self.raw.len() {
            return Err(DecodeError::Truncated);
        }
        let offset = self.pos;
        self.pos = start + padded;
        Ok(Some(RawAttribute { typ, value, offset }))
    }
}

impl<'a> Iterator for RawAttributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // On a message that passed `Message::decode` this never errs; on error stop.
        self.next_checked().ok().flatten()
    }
}

/// Builds a STUN message (RFC 8489 §5): header, attributes with zero padding, then optionally
/// MESSAGE-INTEGRITY and FINGERPRINT, which must be added last and in that order.
///
/// Errors are sticky and reported by [`MessageEncoder::finish`].
#[derive(Debug)]
pub struct MessageEncoder {
    buf: Vec<u8>,
    error: Option<EncodeError>,
}

impl MessageEncoder {
    /// Starts a message of `class` and `method` with transaction ID `tid`.
    pub fn new(class: Class, method: Method, tid: TransactionId) -> Self {
        Self::with_buffer(Vec::with_capacity(128), class, method, tid)
    }

    /// Like [`MessageEncoder::new`] but reuses `buf` (cleared first) to avoid an allocation.
    pub fn with_buffer(mut buf: Vec<u8>, class: Class, method: Method, tid: TransactionId) -> Self {
        buf.clear();
        buf.extend_from_slice(&message_type(class, method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid.0);
        MessageEncoder { buf, error: None }
    }

    fn tid(&self) -> TransactionId {
        let mut t = [0u8; 12];
        t.copy_from_slice(&self.buf[8..20]);
        TransactionId(t)
    }

    fn fail(&mut self, e: EncodeError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn set_len(&mut self) {
        let len = self.buf.len() - HEADER_LEN;
        match u16::try_from(len) {
            Ok(l) => self.buf[2..4].copy_from_slice(&l.to_be_bytes()),
            Err(_) => self.fail(EncodeError::TooLong),
        }
    }

    fn raw(&mut self, typ: u16, parts: &[&[u8]]) -> &mut Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let Ok(len16) = u16::try_from(len) else {
            self.fail(EncodeError::TooLong);
            return self;
        };
        if self.buf.len() - HEADER_LEN + 4 + len > usize::from(u16::MAX) {
            self.fail(EncodeError::TooLong);
            return self;
        }
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&len16.to_be_bytes());
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        let pad = (4 - len % 4) % 4;
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self.set_len();
        self
    }

    fn address(&mut self, typ: u16, addr: SocketAddr, xor: bool) -> &mut Self {
        let tid = self.tid();
        let port = if xor { addr.port() ^ (MAGIC_COOKIE >> 16) as u16 } else { addr.port() };
        match addr.ip() {
            IpAddr::V4(ip) => {
                let mut b = ip.octets();
                if xor {
                    for (x, k) in b.iter_mut().zip(MAGIC_COOKIE.to_be_bytes()) {
                        *x ^= k;
                    }
                }
                self.raw(typ, &[&[0, family::IPV4], &port.to_be_bytes(), &b])
            }
            IpAddr::V6(ip) => {
                let mut b = ip.octets();
                if xor {
                    for (x, k) in b.iter_mut().zip(xor_key(&tid)) {
                        *x ^= k;
                    }
                }
                self.raw(typ, &[&[0, family::IPV6], &port.to_be_bytes(), &b])
            }
        }
    }

    fn error_code_value(&mut self, typ: u16, first: u8, code: u16, reason: &str) -> &mut Self {
        if !(300..=699).contains(&code) || reason.len() > MAX_REASON_LEN {
            self.fail(EncodeError::InvalidAttribute(typ));
            return self;
        }
        let class = (code / 100) as u8;
        let number = (code % 100) as u8;
        self.raw(typ, &[&[first, 0, class, number], reason.as_bytes()])
    }

    fn text(&mut self, typ: u16, s: &str, max: usize) -> &mut Self {
        if s.len() > max {
            self.fail(EncodeError::InvalidAttribute(typ));
            return self;
        }
        self.raw(typ, &[s.as_bytes()])
    }

    /// Appends one attribute. Errors (sticky): [`EncodeError::InvalidAttribute`] for values out
    /// of range, [`EncodeError::TooLong`] when the message would exceed 65 535 bytes of
    /// attributes.
    pub fn attribute(&mut self, attribute: &Attribute<'_>) -> &mut Self {
        match *attribute {
            Attribute::MappedAddress(a) => self.address(attr::MAPPED_ADDRESS, a, false),
            Attribute::XorMappedAddress(a) => self.address(attr::XOR_MAPPED_ADDRESS, a, true),
            Attribute::XorPeerAddress(a) => self.address(attr::XOR_PEER_ADDRESS, a, true),
            Attribute::XorRelayedAddress(a) => self.address(attr::XOR_RELAYED_ADDRESS, a, true),
            Attribute::Username(s) => self.text(attr::USERNAME, s, MAX_USERNAME_LEN),
            Attribute::Realm(s) => self.text(attr::REALM, s, MAX_TEXT_LEN),
            Attribute::Nonce(s) => self.text(attr::NONCE, s, MAX_TEXT_LEN),
            Attribute::Software(s) => self.text(attr::SOFTWARE, s, MAX_TEXT_LEN),
            Attribute::UserHash(v) => {
                if v.len() != 32 {
                    self.fail(EncodeError::InvalidAttribute(attr::USERHASH));
                    return self;
                }
                self.raw(attr::USERHASH, &[v])
            }
            Attribute::MessageIntegrity(v) => {
                if v.len() != MESSAGE_INTEGRITY_LEN {
                    self.fail(EncodeError::InvalidAttribute(attr::MESSAGE_INTEGRITY));
                    return self;
                }
                self.raw(attr::MESSAGE_INTEGRITY, &[v])
            }
            Attribute::MessageIntegritySha256(v) => {
                if !(16..=32).contains(&v.len()) || v.len() % 4 != 0 {
                    self.fail(EncodeError::InvalidAttribute(attr::MESSAGE_INTEGRITY_SHA256));
                    return self;
                }
                self.raw(attr::MESSAGE_INTEGRITY_SHA256, &[v])
            }
            Attribute::Fingerprint(v) => self.raw(attr::FINGERPRINT, &[&v.to_be_bytes()]),
            Attribute::ErrorCode { code, reason } => self.error_code_value(attr::ERROR_CODE, 0, code, reason),
            Attribute::AddressErrorCode { family, code, reason } => {
                self.error_code_value(attr::ADDRESS_ERROR_CODE, family, code, reason)
            }
            Attribute::PasswordAlgorithms(v) => self.raw(attr::PASSWORD_ALGORITHMS, &[v]),
            Attribute::PasswordAlgorithm { algorithm, parameters } => {
                let Ok(plen) = u16::try_from(parameters.len()) else {
                    self.fail(EncodeError::TooLong);
                    return self;
                };
                let pad = (4 - parameters.len() % 4) % 4;
                self.raw(
                    attr::PASSWORD_ALGORITHM,
                    &[&algorithm.to_be_bytes(), &plen.to_be_bytes(), parameters, &[0u8; 3][..pad]],
                )
            }
            Attribute::UnknownAttributes(v) => {
                if v.len() % 2 != 0 {
                    self.fail(EncodeError::InvalidAttribute(attr::UNKNOWN_ATTRIBUTES));
                    return self;
                }
                self.raw(attr::UNKNOWN_ATTRIBUTES, &[v])
            }
            Attribute::ChannelNumber(n) => self.raw(attr::CHANNEL_NUMBER, &[&n.to_be_bytes(), &[0, 0]]),
            Attribute::Lifetime(s) => self.raw(attr::LIFETIME, &[&s.to_be_bytes()]),
            Attribute::Data(d) => self.raw(attr::DATA, &[d]),
            Attribute::RequestedAddressFamily(f) => self.raw(attr::REQUESTED_ADDRESS_FAMILY, &[&[f, 0, 0, 0]]),
            Attribute::AdditionalAddressFamily(f) => self.raw(attr::ADDITIONAL_ADDRESS_FAMILY, &[&[f, 0, 0, 0]]),
            Attribute::EvenPort(r) => self.raw(attr::EVEN_PORT, &[&[if r { 0x80 } else { 0 }]]),
            Attribute::RequestedTransport(p) => self.raw(attr::REQUESTED_TRANSPORT, &[&[p, 0, 0, 0]]),
            Attribute::DontFragment => self.raw(attr::DONT_FRAGMENT, &[]),
            Attribute::ReservationToken(t) => self.raw(attr::RESERVATION_TOKEN, &[&t]),
            Attribute::Icmp { typ, code, data } => self.raw(attr::ICMP, &[&[0, 0, typ, code], &data.to_be_bytes()]),
            Attribute::Unknown { typ, value } => self.raw(typ, &[value]),
        }
    }

    /// Appends UNKNOWN-ATTRIBUTES listing `types` (RFC 8489 §14.13).
    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        let mut value = [0u8; 64];
        let n = types.len().min(value.len() / 2);
        for (i, t) in types.iter().take(n).enumerate() {
            value[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
        }
        self.raw(attr::UNKNOWN_ATTRIBUTES, &[&value[..2 * n]])
    }

    /// Appends MESSAGE-INTEGRITY computed with `key` over everything so far (RFC 8489 §14.5).
    /// Only FINGERPRINT may follow.
    pub fn message_integrity(&mut self, key: &[u8]) -> &mut Self {
        let at = self.buf.len();
        let mac = integrity_over(&self.buf, at, key);
        self.raw(attr::MESSAGE_INTEGRITY, &[&mac])
    }

    /// Appends FINGERPRINT over everything so far (RFC 8489 §14.7). Must be last.
    pub fn fingerprint(&mut self) -> &mut Self {
        let at = self.buf.len();
        let crc = fingerprint_over(&self.buf, at);
        self.raw(attr::FINGERPRINT, &[&crc.to_be_bytes()])
    }

    /// Returns the encoded message, or the first error met while building it.
    pub fn finish(self) -> Result<Vec<u8>, EncodeError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::long_term_key;

    // RFC 5769 §2.1 Sample Request (short-term: password "VOkJxbRl1RmTxUk/WvJxBt").
    const SAMPLE_REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c,
        0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f,
        0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76,
        0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
    ];

    // RFC 5769 §2.2 Sample IPv4 Response.
    const SAMPLE_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91,
        0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7,
        0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    // RFC 5769 §2.3 Sample IPv6 Response.
    const SAMPLE_IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
        0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1,
        0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    // RFC 5769 §2.4 Sample Request with Long-Term Authentication.
    const SAMPLE_LONG_TERM_REQUEST: [u8; 116] = [
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda,
        0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83,
        0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39,
        0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79,
        0x36, 0x34, 0x73, 0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
        0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71,
        0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];

    const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    #[test]
    fn rfc5769_sample_request() {
        let m = Message::decode(&SAMPLE_REQUEST).unwrap();
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.method(), Method::BINDING);
        assert_eq!(m.get(attr::SOFTWARE), Some(Ok(Attribute::Software("STUN test client"))));
        assert_eq!(m.get(attr::USERNAME), Some(Ok(Attribute::Username("evtj:h6vY"))));
        assert_eq!(m.verify_integrity(SHORT_TERM_PASSWORD), Ok(()));
        assert_eq!(m.verify_integrity(b"wrong"), Err(IntegrityError::Mismatch));
        assert_eq!(m.verify_fingerprint(), Ok(()));
        // PRIORITY and ICE-CONTROLLED are not ours: kept raw.
        assert!(m.attributes().all(|a| a.is_ok()));
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let m = Message::decode(&SAMPLE_IPV4_RESPONSE).unwrap();
        assert_eq!(m.class(), Class::SuccessResponse);
        assert_eq!(
            m.get(attr::XOR_MAPPED_ADDRESS),
            Some(Ok(Attribute::XorMappedAddress("192.0.2.1:32853".parse().unwrap())))
        );
        assert_eq!(m.verify_integrity(SHORT_TERM_PASSWORD), Ok(()));
        assert_eq!(m.verify_fingerprint(), Ok(()));
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let m = Message::decode(&SAMPLE_IPV6_RESPONSE).unwrap();
        assert_eq!(
            m.get(attr::XOR_MAPPED_ADDRESS),
            Some(Ok(Attribute::XorMappedAddress("[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap())))
        );
        assert_eq!(m.verify_integrity(SHORT_TERM_PASSWORD), Ok(()));
        assert_eq!(m.verify_fingerprint(), Ok(()));
    }

    #[test]
    fn rfc5769_long_term_request() {
        let m = Message::decode(&SAMPLE_LONG_TERM_REQUEST).unwrap();
        let Some(Ok(Attribute::Username(user))) = m.get(attr::USERNAME) else { panic!() };
        assert_eq!(user, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
        assert_eq!(m.get(attr::NONCE), Some(Ok(Attribute::Nonce("f//499k954d6OL34oL9FSTvy64sA"))));
        assert_eq!(m.get(attr::REALM), Some(Ok(Attribute::Realm("example.org"))));
        // Password after SASLprep is "TheMatrIX" (RFC 5769 §2.4).
        let key = long_term_key(user, "example.org", "TheMatrIX");
        assert_eq!(m.verify_integrity(&key), Ok(()));
        assert_eq!(m.verify_fingerprint(), Err(IntegrityError::Missing));
    }

    #[test]
    fn encoder_reproduces_ipv4_response() {
        // The RFC pads SOFTWARE with 0x20; we pad with zeros, so compare MI/FP by verifying.
        let tid = TransactionId(SAMPLE_IPV4_RESPONSE[8..20].try_into().unwrap());
        let mut e = MessageEncoder::new(Class::SuccessResponse, Method::BINDING, tid);
        e.attribute(&Attribute::Software("test vector"))
            .attribute(&Attribute::XorMappedAddress("192.0.2.1:32853".parse().unwrap()))
            .message_integrity(SHORT_TERM_PASSWORD)
            .fingerprint();
        let out = e.finish().unwrap();
        assert_eq!(out.len(), SAMPLE_IPV4_RESPONSE.len());
        assert_eq!(out[..20], SAMPLE_IPV4_RESPONSE[..20]);
        // XOR-MAPPED-ADDRESS bytes are identical to the vector.
        assert_eq!(out[36..48], SAMPLE_IPV4_RESPONSE[36..48]);
        let m = Message::decode(&out).unwrap();
        assert_eq!(m.verify_integrity(SHORT_TERM_PASSWORD), Ok(()));
        assert_eq!(m.verify_fingerprint(), Ok(()));
    }

    #[test]
    fn message_type_roundtrip() {
        for c in [Class::Request, Class::Indication, Class::SuccessResponse, Class::ErrorResponse] {
            for m in [0u16, 1, 3, 0x7f, 0xfff] {
                assert_eq!(split_message_type(message_type(c, Method(m))), (c, Method(m)));
            }
        }
        assert_eq!(message_type(Class::SuccessResponse, Method::BINDING), 0x0101);
        assert_eq!(message_type(Class::ErrorResponse, Method::ALLOCATE), 0x0113);
        assert_eq!(message_type(Class::Indication, Method::DATA), 0x0017);
        assert_eq!(message_type(Class::Indication, Method::SEND), 0x0016);
    }

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(Message::decode(&[]).unwrap_err(), DecodeError::Truncated);
        let mut b = SAMPLE_REQUEST;
        b[0] |= 0x40;
        assert_eq!(Message::decode(&b).unwrap_err(), DecodeError::NotStun);
        let mut b = SAMPLE_REQUEST;
        b[4] = 0;
        assert_eq!(Message::decode(&b).unwrap_err(), DecodeError::BadMagicCookie);
        assert_eq!(Message::decode(&SAMPLE_REQUEST[..100]).unwrap_err(), DecodeError::BadLength);
        let mut b = SAMPLE_REQUEST;
        b[3] = 0x59;
        assert_eq!(Message::decode(&b).unwrap_err(), DecodeError::BadLength);
        // An attribute length running past the end.
        let mut b = SAMPLE_REQUEST;
        b[23] = 0xF0;
        assert_eq!(Message::decode(&b).unwrap_err(), DecodeError::Truncated);
    }

    #[test]
    fn rejects_attribute_after_fingerprint() {
        let mut e = MessageEncoder::new(Class::Request, Method::BINDING, TransactionId([1; 12]));
        e.fingerprint().attribute(&Attribute::Lifetime(1));
        let out = e.finish().unwrap();
        assert_eq!(Message::decode(&out).unwrap_err(), DecodeError::AttributeAfterFingerprint);
    }

    #[test]
    fn encoder_rejects_bad_values() {
        let mut e = MessageEncoder::new(Class::Request, Method::BINDING, TransactionId([1; 12]));
        e.attribute(&Attribute::ErrorCode { code: 1000, reason: "" });
        assert_eq!(e.finish(), Err(EncodeError::InvalidAttribute(attr::ERROR_CODE)));
        let big = vec![0u8; 70_000];
        let mut e = MessageEncoder::new(Class::Request, Method::BINDING, TransactionId([1; 12]));
        e.attribute(&Attribute::Data(&big));
        assert_eq!(e.finish(), Err(EncodeError::TooLong));
    }
}
