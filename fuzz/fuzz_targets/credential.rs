//! CONNECT credential parser: never panics; anything that parses re-encodes to the same text
//! (the password is canonical) and verification of it never panics.
#![no_main]
use ingestd_codec::credential::Credential;
use ingestd_codec::envelope::hex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Credential::parse(data) {
        let text = format!(
            "v1.{}.{}.{}",
            c.ts_ms,
            hex::encode(&c.nonce),
            hex::encode(&c.signature)
        );
        assert_eq!(text.as_bytes(), data, "password text is not canonical");
        let key = ingestd_codec::envelope::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let _ = c.verify("dev-1", "client", &key, c.ts_ms, 300_000);
    }
});
