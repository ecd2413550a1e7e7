//! STUN codec on arbitrary bytes: `Message::decode`, every attribute parser, MESSAGE-INTEGRITY
//! and FINGERPRINT verification, and re-encoding of whatever parsed (which must decode again).
#![no_main]

use duet_relay::stun::{Attribute, Message, MessageEncoder, attr, unknown_attribute_types};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = unknown_attribute_types(data).count();
    let Ok(msg) = Message::decode(data) else {
        return;
    };
    let _ = msg.verify_integrity(b"fuzz-key");
    let _ = msg.verify_integrity(&[0u8; 16]);
    let _ = msg.verify_fingerprint();
    let _ = (msg.has_message_integrity(), msg.has_fingerprint());
    for typ in [attr::USERNAME, attr::XOR_PEER_ADDRESS, attr::ERROR_CODE, attr::UNKNOWN_ATTRIBUTES, attr::DATA] {
        let _ = msg.get(typ);
    }
    // Re-encode every attribute that parsed; the result must be a decodable message.
    let mut enc = MessageEncoder::new(msg.class(), msg.method(), msg.transaction_id());
    for a in msg.attributes().flatten() {
        match a {
            Attribute::MessageIntegrity(_) | Attribute::MessageIntegritySha256(_) | Attribute::Fingerprint(_) => {}
            Attribute::UnknownAttributes(list) => {
                let types: Vec<u16> = unknown_attribute_types(list).collect();
                enc.unknown_attributes(&types);
            }
            other => {
                enc.attribute(&other);
            }
        }
    }
    enc.message_integrity(b"k").fingerprint();
    if let Ok(bytes) = enc.finish() {
        let again = Message::decode(&bytes).expect("re-encoded message decodes");
        assert_eq!(again.verify_integrity(b"k"), Ok(()));
        assert_eq!(again.verify_fingerprint(), Ok(()));
    }
});
