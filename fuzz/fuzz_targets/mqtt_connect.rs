//! CONNECT-focused: the fuzz input becomes the body of a CONNECT after a valid fixed
//! header, protocol name "MQTT" and a level of 4 or 5 (chosen by the first input byte), so
//! the fuzzer spends its time on flags, properties, will, user name and password rules
//! rather than on finding the header. A decoded CONNECT must re-encode and decode equal.
#![no_main]

use ingestd_codec::mqtt::{decode, Decoded, Packet, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let level = if selector & 1 == 0 { 4 } else { 5 };
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level];
    body.extend_from_slice(rest);
    let mut frame = vec![0x10];
    // Remaining length as a variable byte integer.
    let mut n = body.len();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        frame.push(byte);
        if n == 0 {
            break;
        }
    }
    frame.extend_from_slice(&body);
    // Connection protocol is irrelevant for CONNECT; vary it anyway.
    let protocol = if selector & 2 == 0 {
        Protocol::V311
    } else {
        Protocol::V5
    };
    if let Ok(Decoded::Packet { packet, len }) = decode(&frame, protocol, 1 << 20) {
        assert_eq!(len, frame.len());
        let Packet::Connect(connect) = &packet else {
            panic!("not a CONNECT: {packet:?}");
        };
        assert_eq!(connect.protocol.level(), level);
        let mut out = Vec::new();
        if let Err(e) = packet.encode(protocol, &mut out) {
            panic!("decoded CONNECT does not re-encode: {e:?}\n{packet:?}");
        }
        match decode(&out, protocol, usize::MAX) {
            Ok(Decoded::Packet { packet: again, len }) => {
                assert_eq!(len, out.len());
                assert_eq!(again, packet);
            }
            other => panic!("re-encoded CONNECT does not decode: {other:?}"),
        }
    }
});
