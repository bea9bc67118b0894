//! Property tests: round trips of both forms, binary/JSON signature equivalence, no panics on
//! arbitrary input, batch verification agreeing with single verification.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use ingestd_codec::credential::{sign_credential, Credential};
use ingestd_codec::envelope::{
    decode, decode_binary, decode_json, sign, BatchVerifier, Envelope, EnvelopeError, Reading,
    SigningKey,
};
use proptest::prelude::*;

fn device_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<u32>()
        .prop_map(f32::from_bits)
        .prop_filter("finite", |v| v.is_finite())
}

fn readings() -> impl Strategy<Value = Vec<Reading>> {
    proptest::collection::btree_map(1u16..=u16::MAX, finite_f32(), 1..=32).prop_map(|m| {
        m.into_iter()
            .map(|(kind, value)| Reading { kind, value })
            .collect()
    })
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn binary_and_json_round_trip_and_share_signature(
        id in device_id(), seq in any::<u64>(), ts in any::<u64>(), rs in readings(), seed in any::<u8>()
    ) {
        let k = key(seed);
        let topic = format!("devices/{id}/telemetry");
        let env = sign(&k, &topic, &id, seq, ts, &rs, &mut Vec::new()).unwrap();
        let mut bin = Vec::new();
        env.encode_binary(&mut bin);
        prop_assert!(bin.len() <= ingestd_codec::envelope::MAX_BINARY_LEN);
        let from_bin = decode_binary(&bin, usize::MAX).unwrap();
        prop_assert_eq!(from_bin, env);
        let mut json = Vec::new();
        env.encode_json(&mut json);
        let from_json = decode_json(&json, usize::MAX).unwrap();
        prop_assert_eq!(from_json, env);
        prop_assert_eq!(decode(&json, usize::MAX).unwrap(), env);
        let vk = k.verifying_key();
        let mut scratch = Vec::new();
        prop_assert_eq!(from_bin.verify(&topic, &vk, &mut scratch), Ok(()));
        prop_assert_eq!(from_json.verify(&topic, &vk, &mut scratch), Ok(()));
        // Same canonical body from both forms.
        let (mut b1, mut b2) = (Vec::new(), Vec::new());
        from_bin.write_canonical_body(&mut b1);
        from_json.write_canonical_body(&mut b2);
        prop_assert_eq!(b1, b2);
    }

    #[test]
    fn json_value_text_parses_directly_to_f32(v in finite_f32()) {
        // Shortest text, fixed-point text and 9-significant-digit text all give the same bits.
        for text in [format!("{v:?}"), format!("{v}"), format!("{v:.8e}")] {
            let json = format!(r#"{{"v":1,"device":"d","seq":0,"ts":0,"readings":{{"co2_ppm":{text}}},"sig":"{}"}}"#, "0".repeat(128));
            let env = decode_json(json.as_bytes(), usize::MAX).unwrap();
            prop_assert_eq!(env.readings.as_slice()[0].value.to_bits(), v.to_bits(), "{}", text);
        }
    }

    #[test]
    fn tampering_breaks_the_signature(rs in readings(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let k = key(9);
        let topic = "devices/dev/telemetry";
        let env = sign(&k, topic, "dev", 1, 2, &rs, &mut Vec::new()).unwrap();
        let mut bin = Vec::new();
        env.encode_binary(&mut bin);
        let i = flip.index(bin.len());
        bin[i] ^= 1 << bit;
        // Either it no longer decodes, or it decodes and no longer verifies.
        if let Ok(e) = decode_binary(&bin, usize::MAX) {
            prop_assert_eq!(e.verify(topic, &k.verifying_key(), &mut Vec::new()), Err(EnvelopeError::BadSignature));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_binary(&data, 1024);
        let _ = decode_json(&data, 1024);
        let _ = decode(&data, 1024);
        if let Ok(c) = Credential::parse(&data) {
            let _ = c.verify("d", "c", &key(1).verifying_key(), 0, 0);
        }
    }

    #[test]
    fn arbitrary_json_ish_text_never_panics(s in r#"[{}\[\]":,0-9a-z_ .eE+\-\\]{0,200}"#) {
        let _ = decode_json(s.as_bytes(), 1024);
        let _ = decode(s.as_bytes(), 1024);
    }

    #[test]
    fn mutated_valid_json_never_panics(rs in readings(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let env = sign(&key(3), "devices/d/telemetry", "d", 5, 6, &rs, &mut Vec::new()).unwrap();
        let mut json = Vec::new();
        env.encode_json(&mut json);
        let i = cut.index(json.len());
        let mut m = json.clone();
        m[i] = byte;
        let _ = decode_json(&m, usize::MAX);
        let _ = decode_json(&json[..i], usize::MAX);
    }

}

proptest! {
    // Each case signs and verifies up to 11 envelopes three ways; debug-build ed25519 is slow.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn batch_agrees_with_single(items in proptest::collection::vec((any::<u8>(), 0u8..4, readings()), 1..12)) {
        // Mode 0: honest. 1: signature bit flipped. 2: signed by another key. 3: other topic.
        let mut bufs: Vec<(SigningKey, String, Vec<u8>)> = Vec::new();
        for (i, (seed, mode, rs)) in items.iter().enumerate() {
            let id = format!("dev-{i}");
            let topic = format!("devices/{id}/telemetry");
            let signer = if *mode == 2 { key(seed.wrapping_add(1)) } else { key(*seed) };
            let sign_topic = if *mode == 3 { format!("staging/{id}/telemetry") } else { topic.clone() };
            let mut env = sign(&signer, &sign_topic, &id, i as u64, 0, rs, &mut Vec::new()).unwrap();
            if *mode == 1 { env.signature[5] ^= 0x10; }
            let mut bin = Vec::new();
            env.encode_binary(&mut bin);
            bufs.push((key(*seed), topic, bin));
        }
        let envs: Vec<Envelope<'_>> = bufs.iter().map(|(_, _, b)| decode_binary(b, usize::MAX).unwrap()).collect();
        let mut bv = BatchVerifier::new(items.len());
        for ((k, topic, _), env) in bufs.iter().zip(&envs) {
            bv.push(&k.verifying_key(), topic, env).unwrap();
        }
        let mut out = Vec::new();
        bv.verify(&mut out);
        let single: Vec<_> = bufs.iter().zip(&envs).map(|((k, t, _), e)| e.verify(t, &k.verifying_key(), &mut Vec::new())).collect();
        prop_assert_eq!(&out, &single);
        for ((_, mode, _), r) in items.iter().zip(&out) {
            prop_assert_eq!(r.is_ok(), *mode == 0);
        }
    }

    #[test]
    fn credential_round_trip(id in device_id(), client in "[ -~]{0,64}", ts in any::<u64>(), nonce in any::<[u8; 16]>(), seed in any::<u8>(), skew in 0u64..600_000) {
        let k = key(seed);
        let pw = sign_credential(&id, &client, &k, ts, nonce);
        let c = Credential::parse(pw.as_bytes()).unwrap();
        prop_assert_eq!((c.ts_ms, c.nonce), (ts, nonce));
        let now = ts.saturating_add(skew);
        let r = c.verify(&id, &client, &k.verifying_key(), now, 300_000);
        if now - ts <= 300_000 { prop_assert_eq!(r, Ok(())); } else { prop_assert!(r.is_err()); }
        let other = format!("{client}x");
        prop_assert!(c.verify(&id, &other, &k.verifying_key(), ts, 300_000).is_err());
    }
}
