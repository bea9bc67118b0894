//! Arbitrary bytes → `decode`, both protocols, a small and a large size limit, consuming
//! frames back to back. Every decoded packet must re-encode, and the re-encoded frame must
//! decode to the same packet with exactly its own length. Encoding it within a peer's
//! Maximum Packet Size never yields a larger frame, and what it yields decodes.
#![no_main]

use ingestd_codec::mqtt::{decode, encode_within, Decoded, FitError, Packet, Protocol};
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
    for limit in [out.len().saturating_sub(1), 8, 2] {
        let mut fitted = Vec::new();
        match encode_within(packet, protocol, limit, &mut fitted) {
            Ok(_) => {
                assert!(fitted.len() <= limit, "{} bytes over a limit of {limit}", fitted.len());
                assert!(matches!(
                    decode(&fitted, protocol, usize::MAX),
                    Ok(Decoded::Packet { .. })
                ));
            }
            Err(FitError::TooLarge { size_min, max }) => {
                assert!(size_min > max && fitted.is_empty());
            }
            Err(e) => panic!("encode_within failed where encode did not: {e:?}"),
        }
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
