//! Binary envelope decoder: never panics; anything that decodes re-encodes to the same bytes
//! (the binary form is canonical) and decodes again to the same envelope.
#![no_main]
use ingestd_codec::envelope::{decode_binary, DEFAULT_MAX_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = decode_binary(data, DEFAULT_MAX_BYTES) {
        let mut out = Vec::new();
        env.encode_binary(&mut out);
        assert_eq!(out.as_slice(), data, "binary form is not canonical");
        assert_eq!(decode_binary(&out, DEFAULT_MAX_BYTES), Ok(env));
        let mut json = Vec::new();
        env.encode_json(&mut json);
        let again = ingestd_codec::envelope::decode_json(&json, usize::MAX);
        assert_eq!(
            again,
            Ok(env),
            "JSON form of a binary envelope does not round-trip"
        );
    }
});
