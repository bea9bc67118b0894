//! Arbitrary bytes → `decode`, both protocols, a small and a large size limit, consuming
//! frames back to back. Every decoded packet must re-encode, and the re-encoded frame must
//! decode to the same packet with exactly its own length.
#![no_main]

use ingestd_codec::mqtt::{decode, Decoded, Packet, Protocol};
use libfuzzer_sys::fuzz_target;

fn roundtrip(packet: &Packet<'_>, protocol: Protocol) {
    let mut out = Vec::new();
    if let Err(e) = packet.encode(protocol, &mut out) {
        panic!("decoded packet does not re-encode: {e:?}\n{packet:?}");
    }
    match decode(&out, protocol, usize::MAX) {
        Ok(Decoded::Packet { packet: again, len }) => {
            assert_eq!(len, out.len(), "re-encoded frame not consumed exactly");
            assert_eq!(&again, packet, "re-encoded frame decodes differently");
        }
        other => panic!("re-encoded frame does not decode: {other:?}\n{packet:?}\n{out:02x?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V311, Protocol::V5] {
        for max in [64usize, 1 << 20] {
            let mut buf = data;
            while let Ok(Decoded::Packet { packet, len }) = decode(buf, protocol, max) {
                assert!(len > 0 && len <= buf.len() && len <= max);
                roundtrip(&packet, protocol);
                buf = buf.get(len..).unwrap_or_default();
            }
        }
    }
});
