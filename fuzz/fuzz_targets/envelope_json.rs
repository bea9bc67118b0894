//! JSON envelope decoder: never panics; anything that decodes re-encodes, decodes again to
//! the same envelope, and has the same canonical body as its binary form.
#![no_main]
use ingestd_codec::envelope::{decode, decode_binary, decode_json, DEFAULT_MAX_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = decode_json(data, DEFAULT_MAX_BYTES);
    // The auto-detecting decoder must give the same answer for JSON-looking input.
    if data.iter().find(|b| !b" \t\r\n".contains(b)) == Some(&b'{') {
        assert_eq!(decode(data, DEFAULT_MAX_BYTES), first);
    }
    if let Ok(env) = first {
        let mut json = Vec::new();
        env.encode_json(&mut json);
        assert_eq!(
            decode_json(&json, usize::MAX),
            Ok(env),
            "JSON re-encoding does not round-trip"
        );
        let mut bin = Vec::new();
        env.encode_binary(&mut bin);
        assert_eq!(
            decode_binary(&bin, DEFAULT_MAX_BYTES),
            Ok(env),
            "binary form does not round-trip"
        );
    }
});
