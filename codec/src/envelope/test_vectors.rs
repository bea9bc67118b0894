//! Generator of `docs/test-vectors.json` (hidden from docs; used by
//! `examples/gen_test_vectors.rs` and `tests/vectors.rs`, which checks the committed file is
//! exactly what this produces).
//!
//! Expected verdicts and decoded fields are written out by hand here from the inputs, not by
//! running the decoder, so the vectors test the code rather than echo it. Everything is
//! deterministic: keys come from fixed seeds (`[i; 32]`), timestamps and nonces are constants.

use ed25519_dalek::{Signer, SigningKey};
use serde::Serialize;

use super::{
    hex, write_signed_message_for_body, Kind, DEFAULT_MAX_BYTES, DEFAULT_TOPIC_PREFIX,
    MAX_BINARY_LEN,
};
use crate::credential::{connect_message, sign_credential, DEFAULT_WINDOW_MS};

/// Devices in the vectors: (device id, seed byte).
pub const DEVICES: [(&str, u8); 4] = [
    ("co2-0001", 1),
    ("co2-0002", 2),
    ("th-0003", 3),
    (
        "max-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.end",
        4,
    ),
];
/// Base timestamp used throughout: 2025-11-27T00:00:00Z.
pub const TS: u64 = 1_764_201_600_000;

#[derive(Serialize)]
struct File {
    description: &'static str,
    topic_prefix: &'static str,
    limits: Limits,
    keys: Vec<Key>,
    cases: Vec<Case>,
}

#[derive(Serialize)]
struct Limits {
    max_bytes: usize,
    max_binary_len: usize,
    credential_window_ms: u64,
}

#[derive(Serialize)]
struct Key {
    device_id: &'static str,
    seed: String,
    public_key: String,
}

/// One test case. Envelope cases set `topic` and `payload`; credential cases set the
/// `username`..`window_ms` fields.
#[derive(Serialize, Default)]
struct Case {
    name: String,
    form: &'static str,
    note: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    now_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    window_ms: Option<u64>,
    expected: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    decoded: Option<Decoded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    canonical_body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signed_message: Option<String>,
}

#[derive(Serialize)]
struct Decoded {
    device: String,
    seq: u64,
    ts: u64,
    readings: Vec<DecodedReading>,
    sig: String,
}

#[derive(Serialize)]
struct DecodedReading {
    kind: u16,
    name: String,
    /// IEEE 754 binary32 bits, big-endian hex: the exact value.
    bits: String,
    /// The same value as shortest round-trip decimal text, for reading.
    value: String,
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn topic(device: &str) -> String {
    format!("{DEFAULT_TOPIC_PREFIX}/{device}/telemetry")
}

/// Raw body writer with no validation, so invalid bodies can be produced on purpose.
/// `readings` are (kind, f32 bits); the count byte is `readings.len()`.
fn raw_body(
    version: u8,
    flags: u8,
    id: &[u8],
    seq: u64,
    ts: u64,
    readings: &[(u16, u32)],
) -> Vec<u8> {
    let mut b = vec![version, flags, id.len() as u8];
    b.extend_from_slice(id);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&ts.to_be_bytes());
    b.push(readings.len() as u8);
    for (k, bits) in readings {
        b.extend_from_slice(&k.to_be_bytes());
        b.extend_from_slice(&bits.to_be_bytes());
    }
    b
}

fn signed_message(topic: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    // Topics here are short; the only failure is a topic over 65535 bytes.
    let _ = write_signed_message_for_body(topic, body, &mut m);
    m
}

fn sign_body(k: &SigningKey, topic: &str, body: &[u8]) -> [u8; 64] {
    k.sign(&signed_message(topic, body)).to_bytes()
}

fn kind_name(code: u16) -> String {
    let mut v = Vec::new();
    match Kind::from_code(code) {
        Some(k) => k.write_name(&mut v),
        None => v.extend_from_slice(b"kind_0"),
    }
    String::from_utf8_lossy(&v).into_owned()
}

fn decoded(device: &str, seq: u64, ts: u64, readings: &[(u16, u32)], sig: &[u8; 64]) -> Decoded {
    let mut sorted = readings.to_vec();
    sorted.sort_by_key(|r| r.0);
    Decoded {
        device: device.to_owned(),
        seq,
        ts,
        readings: sorted
            .iter()
            .map(|(k, bits)| DecodedReading {
                kind: *k,
                name: kind_name(*k),
                bits: format!("{bits:08x}"),
                value: format!("{:?}", f32::from_bits(*bits)),
            })
            .collect(),
        sig: hex::encode(sig),
    }
}

fn json_text(device: &str, seq: u64, ts: u64, readings: &[(&str, &str)], sig: &str) -> String {
    let r: Vec<String> = readings
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{\"v\":1,\"device\":\"{device}\",\"seq\":{seq},\"ts\":{ts},\"readings\":{{{}}},\"sig\":\"{sig}\"}}", r.join(","))
}

fn bits(v: f32) -> u32 {
    v.to_bits()
}

/// Produces the full vectors file text (pretty JSON, trailing newline).
pub fn generate() -> String {
    let keys: Vec<Key> = DEVICES
        .iter()
        .map(|(id, seed)| Key {
            device_id: id,
            seed: hex::encode(&[*seed; 32]),
            public_key: hex::encode(key(*seed).verifying_key().as_bytes()),
        })
        .collect();
    let mut cases = Vec::new();

    let dev = "co2-0001";
    let k1 = key(1);
    let t1 = topic(dev);
    let seq = 42;
    let base: Vec<(u16, u32)> = vec![(1, bits(415.5)), (2, bits(21.25)), (3, bits(48.5))];
    let body = raw_body(1, 0, dev.as_bytes(), seq, TS, &base);
    let sig = sign_body(&k1, &t1, &body);
    let bin = [body.as_slice(), &sig].concat();

    let valid = |name: &str,
                 form: &'static str,
                 note: &'static str,
                 topic: &str,
                 payload: String,
                 dev: &str,
                 seq: u64,
                 ts: u64,
                 readings: &[(u16, u32)],
                 body: &[u8],
                 sig: &[u8; 64]| Case {
        name: name.to_owned(),
        form,
        note,
        topic: Some(topic.to_owned()),
        payload: Some(payload),
        expected: "valid".to_owned(),
        decoded: Some(decoded(dev, seq, ts, readings, sig)),
        canonical_body: Some(hex::encode(body)),
        signed_message: Some(hex::encode(&signed_message(topic, body))),
        ..Case::default()
    };
    let invalid = |name: &str,
                   form: &'static str,
                   note: &'static str,
                   topic: &str,
                   payload: String,
                   expected: &str| Case {
        name: name.to_owned(),
        form,
        note,
        topic: Some(topic.to_owned()),
        payload: Some(payload),
        expected: expected.to_owned(),
        ..Case::default()
    };

    cases.push(valid(
        "binary_valid",
        "binary",
        "three readings, co2-0001 key",
        &t1,
        hex::encode(&bin),
        dev,
        seq,
        TS,
        &base,
        &body,
        &sig,
    ));
    let sig_hex = hex::encode(&sig);
    let json = json_text(
        dev,
        seq,
        TS,
        &[
            ("co2_ppm", "415.5"),
            ("temperature_c", "21.25"),
            ("humidity_rh_pct", "48.5"),
        ],
        &sig_hex,
    );
    cases.push(valid(
        "json_valid",
        "json",
        "same readings and the same signature as binary_valid",
        &t1,
        json,
        dev,
        seq,
        TS,
        &base,
        &body,
        &sig,
    ));
    let json = format!(
        "  {{ \"sig\" : \"{}\",\n  \"readings\": {{\"humidity_rh_pct\": 48.50, \"co2_ppm\": 4155e-1, \"temperature_c\": 21.25}},\n  \"ts\": {TS}, \"seq\": {seq}, \"device\": \"{dev}\", \"v\": 1 }}\n",
        sig_hex.to_uppercase()
    );
    cases.push(valid(
        "json_valid_reordered",
        "json",
        "field and reading order, whitespace, number spelling and hex case do not matter",
        &t1,
        json,
        dev,
        seq,
        TS,
        &base,
        &body,
        &sig,
    ));

    // Vendor-private and reserved-future kinds are carried through.
    let vend: Vec<(u16, u32)> = vec![(1, bits(800.0)), (12, bits(-3.5)), (0x8001, bits(0.125))];
    let vbody = raw_body(1, 0, dev.as_bytes(), 43, TS + 60_000, &vend);
    let vsig = sign_body(&k1, &t1, &vbody);
    cases.push(valid(
        "binary_valid_vendor_kind",
        "binary",
        "kind 12 (reserved, unknown to this server) and 0x8001 (vendor-private)",
        &t1,
        hex::encode(&[vbody.as_slice(), &vsig].concat()),
        dev,
        43,
        TS + 60_000,
        &vend,
        &vbody,
        &vsig,
    ));
    let json = json_text(
        dev,
        43,
        TS + 60_000,
        &[
            ("co2_ppm", "800.0"),
            ("kind_12", "-3.5"),
            ("kind_32769", "0.125"),
        ],
        &hex::encode(&vsig),
    );
    cases.push(valid(
        "json_valid_vendor_kind",
        "json",
        "unnamed kinds are written kind_<decimal code>",
        &t1,
        json,
        dev,
        43,
        TS + 60_000,
        &vend,
        &vbody,
        &vsig,
    ));

    // Decimal text exactly between two f32s plus a hair: parsed via f64 it ties to even
    // (0x3f800000); parsed directly to binary32, as required, it rounds up (0x3f800001).
    let round: Vec<(u16, u32)> = vec![(2, 0x3f80_0001)];
    let rbody = raw_body(1, 0, dev.as_bytes(), 44, TS, &round);
    let rsig = sign_body(&k1, &t1, &rbody);
    let json = json_text(
        dev,
        44,
        TS,
        &[("temperature_c", "1.000000059604644775390626")],
        &hex::encode(&rsig),
    );
    cases.push(valid(
        "json_valid_direct_binary32_rounding",
        "json",
        "value must be parsed straight to binary32, not via binary64",
        &t1,
        json,
        dev,
        44,
        TS,
        &round,
        &rbody,
        &rsig,
    ));

    // Largest envelope: 64-byte id, 32 readings = 340 bytes.
    let long_id = DEVICES[3].0;
    let tl = topic(long_id);
    let many: Vec<(u16, u32)> = (1..=32u16).map(|k| (k, bits(f32::from(k) * 1.5))).collect();
    let mbody = raw_body(1, 0, long_id.as_bytes(), u64::MAX, 0, &many);
    let msig = sign_body(&key(4), &tl, &mbody);
    cases.push(valid(
        "binary_valid_max_size",
        "binary",
        "64-byte device id, 32 readings, seq 2^64-1, ts 0: the largest binary envelope, 340 bytes",
        &tl,
        hex::encode(&[mbody.as_slice(), &msig].concat()),
        long_id,
        u64::MAX,
        0,
        &many,
        &mbody,
        &msig,
    ));

    let mut flipped = bin.clone();
    if let Some(b) = flipped.last_mut() {
        *b ^= 0x01;
    }
    cases.push(invalid(
        "binary_bad_signature_bit_flip",
        "binary",
        "lowest bit of the last signature byte flipped",
        &t1,
        hex::encode(&flipped),
        "bad_signature",
    ));
    let mut flipped = bin.clone();
    if let Some(b) = flipped.get_mut(body.len() - 1) {
        *b ^= 0x01;
    }
    cases.push(invalid(
        "binary_value_tampered",
        "binary",
        "one bit of the last reading value flipped; still decodes",
        &t1,
        hex::encode(&flipped),
        "bad_signature",
    ));
    let other = sign_body(&key(2), &t1, &body);
    cases.push(invalid(
        "binary_signed_by_other_device_key",
        "binary",
        "body of co2-0001 signed with the key of co2-0002",
        &t1,
        hex::encode(&[body.as_slice(), &other].concat()),
        "bad_signature",
    ));
    let dev2 = "co2-0002";
    let body2 = raw_body(1, 0, dev2.as_bytes(), seq, TS, &base);
    let sig2 = sign_body(&key(2), &t1, &body2);
    cases.push(invalid(
        "binary_wrong_device",
        "binary",
        "co2-0002 payload, correctly signed by co2-0002, published on co2-0001's topic",
        &t1,
        hex::encode(&[body2.as_slice(), &sig2].concat()),
        "wrong_device",
    ));
    let staging = sign_body(&k1, "staging/co2-0001/telemetry", &body);
    cases.push(invalid(
        "binary_topic_changed",
        "binary",
        "signed for topic staging/co2-0001/telemetry, replayed on devices/co2-0001/telemetry",
        &t1,
        hex::encode(&[body.as_slice(), &staging].concat()),
        "bad_signature",
    ));
    cases.push(invalid(
        "binary_bad_topic",
        "binary",
        "valid payload on a topic that is not {prefix}/{device}/telemetry",
        "devices/co2-0001/status",
        hex::encode(&bin),
        "bad_topic",
    ));
    cases.push(invalid(
        "binary_truncated",
        "binary",
        "last signature byte missing",
        &t1,
        hex::encode(bin.get(..bin.len() - 1).unwrap_or(&[])),
        "truncated",
    ));
    cases.push(invalid(
        "binary_truncated_in_body",
        "binary",
        "cut inside the seq field",
        &t1,
        hex::encode(bin.get(..15).unwrap_or(&[])),
        "truncated",
    ));
    cases.push(invalid(
        "binary_empty",
        "binary",
        "empty payload",
        &t1,
        String::new(),
        "truncated",
    ));
    cases.push(invalid(
        "binary_trailing_bytes",
        "binary",
        "one zero byte after the signature",
        &t1,
        hex::encode(&[bin.as_slice(), &[0]].concat()),
        "trailing_bytes",
    ));
    let mut big = bin.clone();
    big.resize(DEFAULT_MAX_BYTES + 1, 0);
    cases.push(invalid(
        "binary_oversize",
        "binary",
        "1025 bytes: rejected on size before parsing",
        &t1,
        hex::encode(&big),
        "oversize",
    ));

    let resigned = |b: Vec<u8>| -> String {
        let s = sign_body(&k1, &t1, &b);
        hex::encode(&[b.as_slice(), &s].concat())
    };
    cases.push(invalid(
        "binary_unknown_version",
        "binary",
        "version byte 2",
        &t1,
        resigned(raw_body(2, 0, dev.as_bytes(), seq, TS, &base)),
        "unknown_version",
    ));
    cases.push(invalid(
        "binary_bad_flags",
        "binary",
        "flags byte 0x01",
        &t1,
        resigned(raw_body(1, 1, dev.as_bytes(), seq, TS, &base)),
        "bad_flags",
    ));
    cases.push(invalid(
        "binary_unsorted_readings",
        "binary",
        "kinds 2 then 1 (signed as sent)",
        &t1,
        resigned(raw_body(
            1,
            0,
            dev.as_bytes(),
            seq,
            TS,
            &[(2, bits(21.25)), (1, bits(415.5))],
        )),
        "unsorted_readings",
    ));
    cases.push(invalid(
        "binary_duplicate_kind",
        "binary",
        "kind 1 twice",
        &t1,
        resigned(raw_body(
            1,
            0,
            dev.as_bytes(),
            seq,
            TS,
            &[(1, bits(415.5)), (1, bits(415.5))],
        )),
        "duplicate_kind",
    ));
    cases.push(invalid(
        "binary_zero_readings",
        "binary",
        "count 0",
        &t1,
        resigned(raw_body(1, 0, dev.as_bytes(), seq, TS, &[])),
        "no_readings",
    ));
    let too_many: Vec<(u16, u32)> = (1..=33u16).map(|k| (k, bits(1.0))).collect();
    cases.push(invalid(
        "binary_too_many_readings",
        "binary",
        "count 33",
        &t1,
        resigned(raw_body(1, 0, dev.as_bytes(), seq, TS, &too_many)),
        "too_many_readings",
    ));
    cases.push(invalid(
        "binary_kind_zero",
        "binary",
        "kind code 0",
        &t1,
        resigned(raw_body(1, 0, dev.as_bytes(), seq, TS, &[(0, bits(1.0))])),
        "bad_kind",
    ));
    cases.push(invalid(
        "binary_nan_value",
        "binary",
        "value bits 7fc00000 (quiet NaN)",
        &t1,
        resigned(raw_body(1, 0, dev.as_bytes(), seq, TS, &[(1, 0x7fc0_0000)])),
        "non_finite_value",
    ));
    cases.push(invalid(
        "binary_infinite_value",
        "binary",
        "value bits ff800000 (-inf)",
        &t1,
        resigned(raw_body(1, 0, dev.as_bytes(), seq, TS, &[(1, 0xff80_0000)])),
        "non_finite_value",
    ));
    cases.push(invalid(
        "binary_bad_device_id_chars",
        "binary",
        "device id 'co2 0001' (space)",
        &t1,
        resigned(raw_body(1, 0, b"co2 0001", seq, TS, &base)),
        "bad_device_id",
    ));
    cases.push(invalid(
        "binary_device_id_too_long",
        "binary",
        "id_len 65",
        &t1,
        resigned(raw_body(1, 0, "a".repeat(65).as_bytes(), seq, TS, &base)),
        "bad_device_id",
    ));

    let j = |readings: &[(&str, &str)]| json_text(dev, seq, TS, readings, &sig_hex);
    let good = [
        ("co2_ppm", "415.5"),
        ("temperature_c", "21.25"),
        ("humidity_rh_pct", "48.5"),
    ];
    let base_json = j(&good);
    cases.push(invalid(
        "json_unknown_field",
        "json",
        "extra top-level field",
        &t1,
        base_json.replacen("{\"v\":1,", "{\"v\":1,\"extra\":true,", 1),
        "bad_json",
    ));
    cases.push(invalid(
        "json_duplicate_field",
        "json",
        "seq twice",
        &t1,
        base_json.replacen("\"seq\":42,", "\"seq\":42,\"seq\":43,", 1),
        "bad_json",
    ));
    cases.push(invalid(
        "json_missing_field",
        "json",
        "no ts",
        &t1,
        base_json.replacen(&format!("\"ts\":{TS},"), "", 1),
        "bad_json",
    ));
    cases.push(invalid(
        "json_syntax_error",
        "json",
        "truncated JSON text",
        &t1,
        base_json.get(..40).unwrap_or("").to_owned(),
        "bad_json",
    ));
    cases.push(invalid(
        "json_unknown_version",
        "json",
        "v 2",
        &t1,
        base_json.replacen("{\"v\":1,", "{\"v\":2,", 1),
        "unknown_version",
    ));
    cases.push(invalid(
        "json_duplicate_reading_key",
        "json",
        "co2_ppm twice",
        &t1,
        j(&[
            ("co2_ppm", "415.5"),
            ("co2_ppm", "415.5"),
            ("temperature_c", "21.25"),
        ]),
        "duplicate_kind",
    ));
    cases.push(invalid(
        "json_unknown_kind_name",
        "json",
        "kind name not in the table",
        &t1,
        j(&[("co2_ppb", "415.5")]),
        "bad_kind",
    ));
    cases.push(invalid(
        "json_registered_kind_by_number",
        "json",
        "kind_1 must be spelled co2_ppm",
        &t1,
        j(&[("kind_1", "415.5")]),
        "bad_kind",
    ));
    cases.push(invalid(
        "json_value_out_of_range",
        "json",
        "1e39 overflows binary32",
        &t1,
        j(&[("co2_ppm", "1e39")]),
        "non_finite_value",
    ));
    cases.push(invalid(
        "json_value_not_number",
        "json",
        "value is a string",
        &t1,
        j(&[("co2_ppm", "\"415.5\"")]),
        "bad_json",
    ));
    cases.push(invalid(
        "json_no_readings",
        "json",
        "empty readings object",
        &t1,
        j(&[]),
        "no_readings",
    ));
    cases.push(invalid(
        "json_bad_device_id",
        "json",
        "device id with '/'",
        &t1,
        base_json.replacen("co2-0001", "co2/0001", 1),
        "bad_device_id",
    ));
    cases.push(invalid(
        "json_bad_signature_encoding",
        "json",
        "sig has 127 hex digits",
        &t1,
        base_json.replacen(&sig_hex, sig_hex.get(1..).unwrap_or(""), 1),
        "bad_signature_encoding",
    ));
    cases.push(invalid(
        "json_value_changed",
        "json",
        "415.5 sent as 415.6: signature no longer matches",
        &t1,
        j(&[
            ("co2_ppm", "415.6"),
            ("temperature_c", "21.25"),
            ("humidity_rh_pct", "48.5"),
        ]),
        "bad_signature",
    ));
    cases.push(invalid(
        "json_wrong_device",
        "json",
        "co2-0001 payload on th-0003's topic",
        &t1.replace("co2-0001", "th-0003"),
        base_json.clone(),
        "wrong_device",
    ));
    cases.push(invalid(
        "json_version_not_integer",
        "json",
        "v written 1.0: an integer member takes no fraction or exponent",
        &t1,
        base_json.replacen("{\"v\":1,", "{\"v\":1.0,", 1),
        "bad_json",
    ));
    cases.push(invalid(
        "json_byte_order_mark",
        "json",
        "valid JSON behind a UTF-8 byte-order mark (RFC 8259 forbids it)",
        &t1,
        format!("\u{feff}{base_json}"),
        "bad_json",
    ));
    let mut padded = base_json.clone();
    padded.push_str(&" ".repeat(DEFAULT_MAX_BYTES + 1 - base_json.len()));
    cases.push(invalid(
        "json_oversize",
        "json",
        "valid JSON padded with spaces to 1025 bytes",
        &t1,
        padded,
        "oversize",
    ));

    // CONNECT credentials.
    let client = "co2-0001-session";
    let nonce: [u8; 16] = core::array::from_fn(|i| i as u8 * 17);
    let pw = sign_credential(dev, client, &k1, TS, nonce);
    let cred = |name: &str,
                note: &'static str,
                username: &str,
                client_id: &str,
                password: String,
                now_ms: u64,
                expected: &str| Case {
        name: name.to_owned(),
        form: "credential",
        note,
        username: Some(username.to_owned()),
        client_id: Some(client_id.to_owned()),
        password: Some(password),
        now_ms: Some(now_ms),
        window_ms: Some(DEFAULT_WINDOW_MS),
        expected: expected.to_owned(),
        ..Case::default()
    };
    let mut c = cred(
        "credential_valid",
        "now is 12.5 s after the credential timestamp",
        dev,
        client,
        pw.clone(),
        TS + 12_500,
        "valid",
    );
    c.signed_message = Some(hex::encode(&connect_message(dev, client, TS, &nonce)));
    cases.push(c);
    cases.push(cred(
        "credential_valid_window_edge",
        "exactly 300 s old: still valid",
        dev,
        client,
        pw.clone(),
        TS + DEFAULT_WINDOW_MS,
        "valid",
    ));
    cases.push(cred(
        "credential_expired",
        "300.001 s old",
        dev,
        client,
        pw.clone(),
        TS + DEFAULT_WINDOW_MS + 1,
        "expired",
    ));
    cases.push(cred(
        "credential_from_future",
        "timestamp 300.001 s ahead of the server clock",
        dev,
        client,
        pw.clone(),
        TS - DEFAULT_WINDOW_MS - 1,
        "not_yet_valid",
    ));
    let mut bad = pw.clone().into_bytes();
    if let Some(b) = bad.last_mut() {
        *b = if *b == b'0' { b'1' } else { b'0' };
    }
    cases.push(cred(
        "credential_bad_signature",
        "last signature hex digit changed",
        dev,
        client,
        String::from_utf8_lossy(&bad).into_owned(),
        TS,
        "bad_signature",
    ));
    cases.push(cred(
        "credential_wrong_client_id",
        "signed for another client id",
        dev,
        "other-client",
        pw.clone(),
        TS,
        "bad_signature",
    ));
    cases.push(cred(
        "credential_other_device",
        "co2-0001's password presented as username co2-0002",
        dev2,
        client,
        pw.clone(),
        TS,
        "bad_signature",
    ));
    cases.push(cred(
        "credential_malformed",
        "missing the signature part",
        dev,
        client,
        format!("v1.{TS}.{}", hex::encode(&nonce)),
        TS,
        "malformed",
    ));
    cases.push(cred(
        "credential_uppercase_hex",
        "hex must be lowercase",
        dev,
        client,
        pw.to_uppercase().replacen("V1", "v1", 1),
        TS,
        "malformed",
    ));
    cases.push(cred(
        "credential_leading_zero_ts",
        "timestamp with a leading zero",
        dev,
        client,
        pw.replacen("v1.", "v1.0", 1),
        TS,
        "malformed",
    ));
    cases.push(cred(
        "credential_unknown_version",
        "version tag v2",
        dev,
        client,
        pw.replacen("v1.", "v2.", 1),
        TS,
        "unknown_version",
    ));

    let file = File {
        description: "ingestd envelope and CONNECT credential test vectors; see docs/PROTOCOL.md section 'Test vectors'. Generated by `cargo run -p ingestd-codec --example gen_test_vectors`.",
        topic_prefix: DEFAULT_TOPIC_PREFIX,
        limits: Limits { max_bytes: DEFAULT_MAX_BYTES, max_binary_len: MAX_BINARY_LEN, credential_window_ms: DEFAULT_WINDOW_MS },
        keys,
        cases,
    };
    let mut s = serde_json::to_string_pretty(&file).unwrap_or_default();
    s.push('\n');
    s
}
