//! ChannelData messages (RFC 8656 §12.4): a 4-byte header (channel number, length) before the
//! application data, used instead of Send/Data indications once a channel is bound.

/// A TURN channel number, valid in 0x4000..=0x7FFF.
///
/// RFC 8656 §12 narrowed the range to 0x4000..=0x4FFF, but RFC 5766 §11 clients (coturn's own `turnutils_uclient`,
/// older browsers) pick numbers up to 0x7FFF, and coturn accepts them (`STUN_VALID_CHANNEL`). Every number in the
/// wider range still starts with the bits 0b01, so demultiplexing from STUN (0b00) and DTLS/RTP is unaffected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// Smallest valid channel number (RFC 8656 §12).
    pub const MIN: u16 = 0x4000;
    /// Largest accepted channel number (RFC 5766 §11; RFC 8656 §12 reserves 0x5000..=0x7FFF but older clients
    /// use it).
    pub const MAX: u16 = 0x7FFF;

    /// `Some` when `n` is in 0x4000..=0x7FFF.
    pub const fn new(n: u16) -> Option<Self> {
        if n >= Self::MIN && n <= Self::MAX { Some(ChannelNumber(n)) } else { None }
    }

    /// The number as on the wire.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl std::fmt::Display for ChannelNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// Length of the ChannelData header in bytes (RFC 8656 §12.4).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// Why bytes are not a valid ChannelData message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelDataError {
    /// Fewer than 4 bytes, or fewer than 4 + length bytes.
    #[error("truncated ChannelData")]
    Truncated,
    /// The channel number is outside 0x4000..=0x7FFF.
    #[error("invalid channel number {0:#06x}")]
    InvalidChannel(u16),
}

/// Whether the first byte marks a ChannelData message (first two bits 0b01, RFC 8656 §12.4,
/// RFC 7983 §7).
pub fn is_channel_data(buf: &[u8]) -> bool {
    matches!(buf.first(), Some(b) if b & 0xC0 == 0x40)
}

/// Parses a ChannelData message: the channel and the application data (exactly `length`
/// bytes; trailing padding, optional over UDP and required over TCP (RFC 8656 §12.5), is
/// ignored).
///
/// Errors: [`ChannelDataError`]. Never panics, never allocates.
pub fn parse_channel_data(buf: &[u8]) -> Result<(ChannelNumber, &[u8]), ChannelDataError> {
    let [a, b, c, d] = *buf.first_chunk::<4>().ok_or(ChannelDataError::Truncated)?;
    let raw = u16::from_be_bytes([a, b]);
    let channel = ChannelNumber::new(raw).ok_or(ChannelDataError::InvalidChannel(raw))?;
    let len = usize::from(u16::from_be_bytes([c, d]));
    let data = buf.get(CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len).ok_or(ChannelDataError::Truncated)?;
    Ok((channel, data))
}

/// Writes the 4-byte ChannelData header (channel number, `payload_len`) into `buf[..4]` in
/// place, so the driver can receive a peer datagram at `buf[4..]` and send `buf[..4 + len]`
/// without copying (RFC 8656 §12.4). Over TCP/TLS the driver also pads to a multiple of 4
/// (RFC 8656 §12.5).
///
/// `buf` must be at least 4 bytes long; a shorter buffer is left unchanged (never panics).
pub fn write_channel_data_header(buf: &mut [u8], channel: ChannelNumber, payload_len: u16) {
    if let Some(h) = buf.first_chunk_mut::<4>() {
        let [a, b] = channel.get().to_be_bytes();
        let [c, d] = payload_len.to_be_bytes();
        *h = [a, b, c, d];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_number_range() {
        assert_eq!(ChannelNumber::new(0x3FFF), None);
        assert_eq!(ChannelNumber::new(0x4000).map(ChannelNumber::get), Some(0x4000));
        assert_eq!(ChannelNumber::new(0x4FFF).map(ChannelNumber::get), Some(0x4FFF));
        assert_eq!(ChannelNumber::new(0x5000).map(ChannelNumber::get), Some(0x5000));
        assert_eq!(ChannelNumber::new(0x7FFF).map(ChannelNumber::get), Some(0x7FFF));
        assert_eq!(ChannelNumber::new(0x8000), None);
    }

    #[test]
    fn header_roundtrip_in_place() {
        let mut buf = [0u8; 4 + 5 + 3];
        buf[4..9].copy_from_slice(b"hello");
        let ch = ChannelNumber::new(0x4001).unwrap();
        write_channel_data_header(&mut buf, ch, 5);
        assert_eq!(&buf[..4], &[0x40, 0x01, 0x00, 0x05]);
        assert!(is_channel_data(&buf));
        assert_eq!(parse_channel_data(&buf), Ok((ch, &b"hello"[..])));
        assert_eq!(parse_channel_data(&buf[..8]), Err(ChannelDataError::Truncated));
        let mut short = [0u8; 3];
        write_channel_data_header(&mut short, ch, 5);
        assert_eq!(short, [0; 3]);
    }

    #[test]
    fn rejects_reserved_channels() {
        assert_eq!(parse_channel_data(&[0x80, 0x00, 0, 0]), Err(ChannelDataError::InvalidChannel(0x8000)));
    }
}
