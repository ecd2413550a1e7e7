//! ChannelData parsing (RFC 8656 §12.4) and TCP/TLS stream framing (RFC 8656 §12.5) on
//! arbitrary bytes, with the invariants the driver relies on.
#![no_main]

use duet_relay::channel::{is_channel_data, parse_channel_data, write_channel_data_header};
use duet_relay::framing::stream_frame_len;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((channel, payload)) = parse_channel_data(data) {
        assert!(is_channel_data(data));
        assert!(payload.len() + 4 <= data.len());
        // Writing the same header back reproduces the first four bytes.
        let mut buf = data.to_vec();
        write_channel_data_header(&mut buf, channel, payload.len() as u16);
        assert_eq!(buf[..4], data[..4]);
    }
    match stream_frame_len(data) {
        Ok(None) => assert!(data.len() < 4),
        Ok(Some(n)) => {
            assert!(n >= 4 && data.len() >= 4);
            if data[0] >> 6 == 0b01 {
                assert_eq!(n % 4, 0, "ChannelData frames are padded to 4 on streams");
            } else {
                assert!(n >= 20);
            }
        }
        Err(_) => assert!(data.len() >= 4),
    }
    // A stream of frames: walk it the way the driver does.
    let mut rest = data;
    while let Ok(Some(n)) = stream_frame_len(rest) {
        if n > rest.len() {
            break;
        }
        rest = &rest[n..];
    }
});
