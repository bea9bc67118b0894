//! Byte-by-byte tests of the binary layout and the rejection order, plus the small helpers.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use ingestd_codec::envelope::{
    check_clock_skew, decode, decode_binary, decode_json, device_id_from_topic, sign,
    BatchVerifier, EnvelopeError, Kind, Reading, SigningKey, DEFAULT_MAX_BYTES, MAX_BINARY_LEN,
};

const TOPIC: &str = "devices/co2-0001/telemetry";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn sample() -> Vec<u8> {
    let readings = [
        Reading::new(Kind::TemperatureC, 21.25),
        Reading::new(Kind::Co2Ppm, 415.5),
    ];
    let env = sign(
        &key(),
        TOPIC,
        "co2-0001",
        42,
        1_764_201_600_000,
        &readings,
        &mut Vec::new(),
    )
    .unwrap();
    let mut out = Vec::new();
    env.encode_binary(&mut out);
    out
}

#[test]
fn binary_layout_byte_by_byte() {
    let b = sample();
    #[rustfmt::skip]
    let body: &[u8] = &[
        0x01,                                           // version 1
        0x00,                                           // flags
        0x08,                                           // id_len 8
        b'c', b'o', b'2', b'-', b'0', b'0', b'0', b'1', // device_id "co2-0001"
        0, 0, 0, 0, 0, 0, 0, 42,                        // seq 42
        0x00, 0x00, 0x01, 0x9a, 0xc2, 0x9c, 0x14, 0x00, // ts_ms 1764201600000
        0x02,                                           // count 2
        0x00, 0x01, 0x43, 0xcf, 0xc0, 0x00,             // kind 1 co2_ppm, 415.5f32 (sorted first)
        0x00, 0x02, 0x41, 0xaa, 0x00, 0x00,             // kind 2 temperature_c, 21.25f32
    ];
    assert_eq!(&b[..body.len()], body);
    assert_eq!(
        b.len(),
        body.len() + 64,
        "body then exactly a 64-byte signature"
    );
    let env = decode_binary(&b, DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(env.device_id, "co2-0001");
    assert_eq!((env.seq, env.ts_ms), (42, 1_764_201_600_000));
    assert_eq!(
        env.readings.as_slice(),
        &[
            Reading::new(Kind::Co2Ppm, 415.5),
            Reading::new(Kind::TemperatureC, 21.25)
        ]
    );
    env.verify(TOPIC, &key().verifying_key(), &mut Vec::new())
        .unwrap();
}

#[test]
fn every_proper_prefix_is_truncated_and_any_suffix_is_trailing() {
    let b = sample();
    for n in 0..b.len() {
        assert_eq!(
            decode_binary(&b[..n], DEFAULT_MAX_BYTES),
            Err(EnvelopeError::Truncated),
            "prefix {n}"
        );
    }
    let mut longer = b.clone();
    longer.push(0);
    assert_eq!(
        decode_binary(&longer, DEFAULT_MAX_BYTES),
        Err(EnvelopeError::TrailingBytes)
    );
}

#[test]
fn size_is_checked_before_parsing() {
    let b = sample();
    assert_eq!(decode_binary(&b, b.len()).map(|_| ()), Ok(()));
    assert_eq!(
        decode_binary(&b, b.len() - 1),
        Err(EnvelopeError::Oversize {
            len: b.len(),
            max: b.len() - 1
        })
    );
    // Even garbage gets `oversize`, not a parse error.
    assert_eq!(
        decode(&[0xff; 2000], DEFAULT_MAX_BYTES),
        Err(EnvelopeError::Oversize {
            len: 2000,
            max: 1024
        })
    );
}

#[test]
fn field_defects_in_wire_order() {
    let b = sample();
    let with = |i: usize, v: u8| {
        let mut c = b.clone();
        c[i] = v;
        decode_binary(&c, DEFAULT_MAX_BYTES).map(|_| ())
    };
    assert_eq!(with(0, 2), Err(EnvelopeError::UnknownVersion(2)));
    assert_eq!(with(0, 0), Err(EnvelopeError::UnknownVersion(0)));
    assert_eq!(with(1, 0x80), Err(EnvelopeError::BadFlags(0x80)));
    assert_eq!(with(2, 0), Err(EnvelopeError::BadDeviceId));
    assert_eq!(with(2, 65), Err(EnvelopeError::BadDeviceId));
    assert_eq!(with(3, b'/'), Err(EnvelopeError::BadDeviceId));
    assert_eq!(with(3, b'+'), Err(EnvelopeError::BadDeviceId));
    assert_eq!(with(3, 0xc3), Err(EnvelopeError::BadDeviceId));
    assert_eq!(with(27, 0), Err(EnvelopeError::NoReadings));
    assert_eq!(with(27, 33), Err(EnvelopeError::TooManyReadings));
    assert_eq!(with(29, 0), Err(EnvelopeError::BadKind)); // first kind 0x0000
    assert_eq!(with(29, 3), Err(EnvelopeError::UnsortedReadings)); // kinds 3, 2
    assert_eq!(with(29, 2), Err(EnvelopeError::DuplicateKind(2))); // kinds 2, 2
    let mut nan = b.clone();
    nan[30..34].copy_from_slice(&f32::NAN.to_bits().to_be_bytes());
    assert_eq!(
        decode_binary(&nan, DEFAULT_MAX_BYTES),
        Err(EnvelopeError::NonFiniteValue)
    );
    nan[30..34].copy_from_slice(&f32::INFINITY.to_bits().to_be_bytes());
    assert_eq!(
        decode_binary(&nan, DEFAULT_MAX_BYTES),
        Err(EnvelopeError::NonFiniteValue)
    );
    // Count says 3 but only 2 readings + signature: the signature is read as a reading, and
    // the envelope ends early.
    assert!(with(27, 3).is_err());
}

#[test]
fn largest_binary_envelope_is_340_bytes() {
    let id = "d".repeat(64);
    let readings: Vec<Reading> = (1..=32)
        .map(|k| Reading {
            kind: k,
            value: -1.5,
        })
        .collect();
    let topic = format!("devices/{id}/telemetry");
    let env = sign(
        &key(),
        &topic,
        &id,
        u64::MAX,
        u64::MAX,
        &readings,
        &mut Vec::new(),
    )
    .unwrap();
    let mut b = Vec::new();
    env.encode_binary(&mut b);
    assert_eq!(b.len(), MAX_BINARY_LEN);
    assert_eq!(decode_binary(&b, MAX_BINARY_LEN), Ok(env));
}

#[test]
fn sign_sorts_and_validates() {
    let k = key();
    let s = &mut Vec::new();
    let dup = [
        Reading::new(Kind::Co2Ppm, 1.0),
        Reading::new(Kind::Co2Ppm, 2.0),
    ];
    assert_eq!(
        sign(&k, TOPIC, "co2-0001", 0, 0, &dup, s),
        Err(EnvelopeError::DuplicateKind(1))
    );
    assert_eq!(
        sign(&k, TOPIC, "co2-0001", 0, 0, &[], s),
        Err(EnvelopeError::NoReadings)
    );
    assert_eq!(
        sign(
            &k,
            TOPIC,
            "co2 0001",
            0,
            0,
            &[Reading::new(Kind::Co2Ppm, 1.0)],
            s
        ),
        Err(EnvelopeError::BadDeviceId)
    );
    assert_eq!(
        sign(
            &k,
            TOPIC,
            "co2-0001",
            0,
            0,
            &[Reading {
                kind: 0,
                value: 1.0
            }],
            s
        ),
        Err(EnvelopeError::BadKind)
    );
    assert_eq!(
        sign(
            &k,
            TOPIC,
            "co2-0001",
            0,
            0,
            &[Reading::new(Kind::Co2Ppm, f32::NAN)],
            s
        ),
        Err(EnvelopeError::NonFiniteValue)
    );
    let many: Vec<Reading> = (1..=33)
        .map(|k| Reading {
            kind: k,
            value: 0.0,
        })
        .collect();
    assert_eq!(
        sign(&k, TOPIC, "co2-0001", 0, 0, &many, s),
        Err(EnvelopeError::TooManyReadings)
    );
}

#[test]
fn json_and_binary_share_the_signature() {
    let b = sample();
    let env = decode_binary(&b, DEFAULT_MAX_BYTES).unwrap();
    let mut json = Vec::new();
    env.encode_json(&mut json);
    assert_eq!(
        std::str::from_utf8(&json).unwrap(),
        format!(
            "{{\"v\":1,\"device\":\"co2-0001\",\"seq\":42,\"ts\":1764201600000,\"readings\":{{\"co2_ppm\":415.5,\"temperature_c\":21.25}},\"sig\":\"{}\"}}",
            ingestd_codec::envelope::hex::encode(&env.signature)
        )
    );
    let j = decode(&json, DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(j, env);
    j.verify(TOPIC, &key().verifying_key(), &mut Vec::new())
        .unwrap();
    assert_eq!(
        j.verify(
            "devices/co2-0001/telemetry2",
            &key().verifying_key(),
            &mut Vec::new()
        ),
        Err(EnvelopeError::BadSignature)
    );
}

#[test]
fn json_specific_rejections() {
    let ok = r#"{"v":1,"device":"d","seq":1,"ts":2,"readings":{"co2_ppm":1},"sig":"SIG"}"#
        .replace("SIG", &"ab".repeat(64));
    assert!(decode_json(ok.as_bytes(), 1024).is_ok());
    let bad = |from: &str, to: &str| decode_json(ok.replacen(from, to, 1).as_bytes(), 1024).err();
    assert_eq!(
        bad(r#""v":1"#, r#""v":1.0"#),
        Some(EnvelopeError::BadJson("v must be an integer"))
    );
    assert_eq!(
        bad(r#""v":1"#, r#""v":7"#),
        Some(EnvelopeError::UnknownVersion(7))
    );
    assert_eq!(
        bad(r#""seq":1"#, r#""seq":-1"#).map(|e| e.reason()),
        Some("bad_json")
    );
    assert_eq!(
        bad(r#""seq":1"#, r#""seq":18446744073709551616"#).map(|e| e.reason()),
        Some("bad_json")
    );
    assert_eq!(
        bad(r#""co2_ppm":1"#, r#""co2_ppm":NaN"#).map(|e| e.reason()),
        Some("bad_json")
    );
    assert_eq!(
        bad(r#""co2_ppm":1"#, r#""co2_ppm":null"#).map(|e| e.reason()),
        Some("bad_json")
    );
    assert_eq!(
        bad(r#""co2_ppm":1"#, r#""co2_ppm":-1e39"#),
        Some(EnvelopeError::NonFiniteValue)
    );
    assert_eq!(
        bad(r#""co2_ppm":1"#, r#""kind_032768":1"#),
        Some(EnvelopeError::BadKind)
    );
    assert_eq!(
        bad(r#""co2_ppm":1"#, r#""kind_65536":1"#),
        Some(EnvelopeError::BadKind)
    );
    assert_eq!(
        bad(r#""co2_ppm":1"#, r#""kind_0":1"#),
        Some(EnvelopeError::BadKind)
    );
    assert_eq!(
        bad(r#""co2_ppm":1"#, r#""\u0063o2_ppm":1"#),
        Some(EnvelopeError::BadKind)
    );
    assert_eq!(
        bad(r#""device":"d""#, r#""device":"\u0064""#),
        Some(EnvelopeError::BadDeviceId)
    );
    assert_eq!(
        bad(r#""device":"d""#, r#""device":"""#),
        Some(EnvelopeError::BadDeviceId)
    );
    assert_eq!(
        bad(r#""sig":""#, r#""sig":"g"#),
        Some(EnvelopeError::BadSignatureEncoding)
    );
    assert_eq!(
        bad(r#""sig":""#, r#""sig":1,"x":""#),
        Some(EnvelopeError::BadJson("unknown field"))
    );
    assert_eq!(
        bad("}", "}]"),
        Some(EnvelopeError::BadJson("not a JSON object"))
    );
    assert_eq!(
        decode_json(b"[1]", 1024).map(|_| ()),
        Err(EnvelopeError::BadJson("not a JSON object"))
    );
    let many: Vec<String> = (12..45).map(|k| format!("\"kind_{k}\":1")).collect();
    assert_eq!(
        bad(r#""co2_ppm":1"#, &many.join(",")),
        Some(EnvelopeError::TooManyReadings)
    );
}

#[test]
fn topic_helper() {
    assert_eq!(
        device_id_from_topic("devices/co2-0001/telemetry", "devices"),
        Some("co2-0001")
    );
    assert_eq!(
        device_id_from_topic("site/a/b/x.y_z/telemetry", "site/a/b"),
        Some("x.y_z")
    );
    for t in [
        "devices/co2-0001/status",
        "devices//telemetry",
        "devices/a/b/telemetry",
        "devices/+/telemetry",
        "devices/#/telemetry",
        "devicesX/a/telemetry",
        "other/a/telemetry",
        "devices/a/telemetry/",
        "devices/a",
    ] {
        assert_eq!(device_id_from_topic(t, "devices"), None, "{t}");
    }
}

#[test]
fn clock_skew_rule() {
    assert_eq!(check_clock_skew(1_000_000, 1_300_000, 300_000), Ok(()));
    assert_eq!(check_clock_skew(1_600_000, 1_300_000, 300_000), Ok(()));
    assert_eq!(
        check_clock_skew(999_999, 1_300_000, 300_000),
        Err(EnvelopeError::ClockSkew)
    );
    assert_eq!(
        check_clock_skew(u64::MAX, 0, 300_000),
        Err(EnvelopeError::ClockSkew)
    );
}

#[test]
fn kinds_table() {
    for code in 1..=11u16 {
        let k = Kind::from_code(code).unwrap();
        assert_eq!(k.code(), code);
        assert_eq!(Kind::from_name(k.name().unwrap()), Some(k));
        assert!(Kind::from_name(&format!("kind_{code}")).is_none());
    }
    assert_eq!(Kind::from_code(0), None);
    assert_eq!(Kind::from_name("kind_65535"), Some(Kind::Other(65535)));
    assert_eq!(Kind::from_name("pm2_5_ugm3"), Some(Kind::Pm2_5Ugm3));
    let mut name = Vec::new();
    Kind::Other(0x8001).write_name(&mut name);
    assert_eq!(name, b"kind_32769");
}

#[test]
fn reason_codes_are_unique_and_listed() {
    let mut all = EnvelopeError::ALL_REASONS.to_vec();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), EnvelopeError::ALL_REASONS.len());
    assert!(EnvelopeError::ALL_REASONS.contains(&EnvelopeError::BadJson("x").reason()));
}

#[test]
fn batch_verifier_reuses_and_rejects_weak_keys() {
    let k = key();
    let b = sample();
    let env = decode_binary(&b, DEFAULT_MAX_BYTES).unwrap();
    let mut bv = BatchVerifier::new(2);
    let mut out = Vec::new();
    assert_eq!(bv.push(&k.verifying_key(), TOPIC, &env), Some(0));
    // The identity point (small order) is a weak key: refused without batching.
    let weak = ingestd_codec::envelope::VerifyingKey::from_bytes(&{
        let mut b = [0u8; 32];
        b[0] = 1;
        b
    })
    .unwrap();
    assert_eq!(bv.push(&weak, TOPIC, &env), Some(1));
    assert_eq!(bv.push(&k.verifying_key(), TOPIC, &env), None, "full");
    bv.verify(&mut out);
    assert_eq!(out, vec![Ok(()), Err(EnvelopeError::BadSignature)]);
    assert!(bv.is_empty());
    bv.verify(&mut out);
    assert!(out.is_empty());
}

/// The JSON rules docs/PROTOCOL.md section 4 states beyond the test vectors.
#[test]
fn json_rules_as_documented() {
    let ok = r#"{"v":1,"device":"d","seq":1,"ts":2,"readings":{"co2_ppm":1},"sig":"SIG"}"#
        .replace("SIG", &"ab".repeat(64));
    let verdict = |text: String| {
        decode_json(text.as_bytes(), 1024)
            .map(|_| ())
            .map_err(|e| e.reason())
    };
    // Top-level member names are compared after unescaping ...
    assert_eq!(
        verdict(ok.replacen(r#"{"v":1"#, r#"{"\u0076":1"#, 1)),
        Ok(())
    );
    // ... so an escaped repeat is a repeat.
    assert_eq!(
        verdict(ok.replacen(r#"{"v":1"#, r#"{"v":1,"\u0076":1"#, 1)),
        Err("bad_json")
    );
    // Integers: no sign, not even on zero; no exponent.
    assert_eq!(
        verdict(ok.replacen(r#""seq":1"#, r#""seq":-0"#, 1)),
        Err("bad_json")
    );
    assert_eq!(
        verdict(ok.replacen(r#""v":1"#, r#""v":1e0"#, 1)),
        Err("bad_json")
    );
    // A syntax error anywhere wins over an earlier defect (here an unknown version).
    let broken = ok.replacen(r#""v":1"#, r#""v":2"#, 1).replacen('}', "", 1);
    assert_eq!(verdict(broken), Err("bad_json"));
    // In readings the first failing member decides, and within one member the kind name
    // is checked before the value.
    assert_eq!(
        verdict(ok.replacen(r#""co2_ppm":1"#, r#""co2_ppb":"x","co2_ppm":1e39"#, 1)),
        Err("bad_kind")
    );
    assert_eq!(
        verdict(ok.replacen(r#""co2_ppm":1"#, r#""co2_ppm":1e39,"co2_ppb":1"#, 1)),
        Err("non_finite_value")
    );
    // A byte-order mark sends the payload to the JSON decoder, which refuses it.
    let marked = [b"\xEF\xBB\xBF".as_slice(), ok.as_bytes()].concat();
    assert_eq!(
        decode(&marked, 1024).map(|_| ()).map_err(|e| e.reason()),
        Err("bad_json")
    );
}
