//! Message framing on TCP/TLS client connections (RFC 8656 §12.5, RFC 8489 §6.2.2): STUN
//! messages and ChannelData are sent back to back; the first two bits tell them apart.

use crate::channel::CHANNEL_DATA_HEADER_LEN;
use crate::stun::HEADER_LEN;

/// The stream carries bytes that are neither STUN nor ChannelData: the driver closes the
/// connection (there is no way to resynchronise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The first two bits are 0b10 or 0b11 (RFC 7983 demultiplexing: not STUN, not ChannelData).
    #[error("stream carries neither STUN nor ChannelData")]
    UnknownFrame,
    /// A STUN header whose length field is not a multiple of 4 (RFC 8489 §5).
    #[error("STUN length not a multiple of 4")]
    BadStunLength,
}

/// Total length in bytes of the first frame at the start of a buffered stream:
/// STUN = 20 + length field; ChannelData = 4 + length field rounded up to a multiple of 4
/// (RFC 8656 §12.5 requires padding over TCP/TLS).
///
/// `Ok(None)` when fewer than 4 bytes are buffered (the length is not known yet); the frame
/// may still be incomplete when `Ok(Some(n))` and `buf.len() < n`. The longest frame is
/// 65 555 bytes (STUN) or 65 540 (ChannelData).
///
/// Errors: [`FramingError`] (the driver closes the connection).
///
/// Note: the API contract sketched `-> Option<usize>` plus "an error variant"; this is that
/// shape as a `Result`.
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    let Some(&[a, _, c, d]) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([c, d]));
    match a >> 6 {
        0b00 => {
            if len % 4 != 0 {
                return Err(FramingError::BadStunLength);
            }
            Ok(Some(HEADER_LEN + len))
        }
        0b01 => Ok(Some(CHANNEL_DATA_HEADER_LEN + ((len + 3) & !3))),
        _ => Err(FramingError::UnknownFrame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(stream_frame_len(&[]), Ok(None));
        assert_eq!(stream_frame_len(&[0, 1, 0]), Ok(None));
        assert_eq!(stream_frame_len(&[0x00, 0x01, 0x00, 0x08]), Ok(Some(28)));
        assert_eq!(stream_frame_len(&[0x40, 0x00, 0x00, 0x05]), Ok(Some(12)));
        assert_eq!(stream_frame_len(&[0x40, 0x00, 0x00, 0x08]), Ok(Some(12)));
        assert_eq!(stream_frame_len(&[0x40, 0x00, 0xFF, 0xFF]), Ok(Some(4 + 65536)));
        assert_eq!(stream_frame_len(&[0x00, 0x01, 0x00, 0x07]), Err(FramingError::BadStunLength));
        assert_eq!(stream_frame_len(&[0xC0, 0x00, 0x00, 0x00]), Err(FramingError::UnknownFrame));
        assert_eq!(stream_frame_len(&[0x80, 0, 0, 0]), Err(FramingError::UnknownFrame));
    }
}
