//! Runs every case of docs/test-vectors.json through the Rust code, and checks the file is
//! exactly what the generator produces now (so code, file and spec cannot drift apart).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashMap;

use ed25519_dalek::{SigningKey, VerifyingKey};
use ingestd_codec::credential::{connect_message, Credential, CredentialError};
use ingestd_codec::envelope::{
    self, decode, decode_binary, decode_json, device_id_from_topic, hex, Envelope, EnvelopeError,
};
use serde_json::Value;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/test-vectors.json");

fn load() -> Value {
    let text = std::fs::read_to_string(PATH).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

fn keys(file: &Value) -> HashMap<String, VerifyingKey> {
    let mut m = HashMap::new();
    for k in file["keys"].as_array().unwrap() {
        let seed: [u8; 32] = hex::decode_vec(s(k, "seed")).unwrap().try_into().unwrap();
        let public = SigningKey::from_bytes(&seed).verifying_key();
        assert_eq!(
            hex::encode(public.as_bytes()),
            s(k, "public_key"),
            "seed and public key disagree"
        );
        m.insert(s(k, "device_id").to_owned(), public);
    }
    m
}

/// The server pipeline for one PUBLISH: size, topic, decode, device match, key, signature.
fn check_envelope<'p>(
    payload: &'p [u8],
    topic: &str,
    prefix: &str,
    max: usize,
    keys: &HashMap<String, VerifyingKey>,
) -> Result<Envelope<'p>, EnvelopeError> {
    if payload.len() > max {
        return Err(EnvelopeError::Oversize {
            len: payload.len(),
            max,
        });
    }
    let topic_dev = device_id_from_topic(topic, prefix).ok_or(EnvelopeError::BadTopic)?;
    let env = decode(payload, max)?;
    env.check_device(topic_dev)?;
    let key = keys.get(topic_dev).ok_or(EnvelopeError::UnknownDevice)?;
    env.verify(topic, key, &mut Vec::new())?;
    Ok(env)
}

#[test]
fn file_matches_generator() {
    let on_disk = std::fs::read_to_string(PATH).unwrap();
    assert!(
        on_disk == envelope::test_vectors::generate(),
        "docs/test-vectors.json is stale: run `cargo run -p ingestd-codec --example gen_test_vectors > docs/test-vectors.json`"
    );
}

#[test]
fn every_case_gets_its_verdict() {
    let file = load();
    let keys = keys(&file);
    let prefix = s(&file, "topic_prefix");
    let max = file["limits"]["max_bytes"].as_u64().unwrap() as usize;
    let mut counted = HashMap::<&str, usize>::new();
    for case in file["cases"].as_array().unwrap() {
        let name = s(case, "name");
        let form = s(case, "form");
        let expected = s(case, "expected");
        *counted.entry(form).or_default() += 1;
        match form {
            "binary" | "json" => {
                let payload = if form == "binary" {
                    hex::decode_vec(s(case, "payload")).unwrap()
                } else {
                    s(case, "payload").as_bytes().to_vec()
                };
                let topic = s(case, "topic");
                let verdict = check_envelope(&payload, topic, prefix, max, &keys);
                let got = match &verdict {
                    Ok(_) => "valid",
                    Err(e) => e.reason(),
                };
                assert_eq!(got, expected, "case {name}: {verdict:?}");
                // The form-specific decoder agrees with the auto-detecting one.
                let direct = if form == "binary" {
                    decode_binary(&payload, max)
                } else {
                    decode_json(&payload, max)
                };
                if let Ok(env) = verdict {
                    assert_eq!(direct, Ok(env), "case {name}");
                    check_valid(case, &env, topic, max);
                }
            }
            "credential" => {
                let user = s(case, "username");
                let client = s(case, "client_id");
                let now = case["now_ms"].as_u64().unwrap();
                let window = case["window_ms"].as_u64().unwrap();
                let verdict = Credential::parse(s(case, "password").as_bytes()).and_then(|c| {
                    let key = keys.get(user).ok_or(CredentialError::UnknownDevice)?;
                    c.verify(user, client, key, now, window).map(|()| c)
                });
                let got = match &verdict {
                    Ok(_) => "valid",
                    Err(e) => e.reason(),
                };
                assert_eq!(got, expected, "case {name}: {verdict:?}");
                if let (Ok(c), Some(m)) = (verdict, case["signed_message"].as_str()) {
                    assert_eq!(
                        hex::encode(&connect_message(user, client, c.ts_ms, &c.nonce)),
                        m,
                        "case {name}"
                    );
                }
            }
            other => panic!("case {name}: unknown form {other}"),
        }
    }
    assert!(
        counted["binary"] >= 20 && counted["json"] >= 15 && counted["credential"] >= 8,
        "{counted:?}"
    );
}

fn check_valid(case: &Value, env: &Envelope<'_>, topic: &str, max: usize) {
    let name = s(case, "name");
    let d = &case["decoded"];
    assert_eq!(env.device_id, s(d, "device"), "{name}");
    assert_eq!(env.seq, d["seq"].as_u64().unwrap(), "{name}");
    assert_eq!(env.ts_ms, d["ts"].as_u64().unwrap(), "{name}");
    assert_eq!(hex::encode(&env.signature), s(d, "sig"), "{name}");
    let want = d["readings"].as_array().unwrap();
    assert_eq!(env.readings.len(), want.len(), "{name}");
    for (r, w) in env.readings.as_slice().iter().zip(want) {
        assert_eq!(u64::from(r.kind), w["kind"].as_u64().unwrap(), "{name}");
        assert_eq!(format!("{:08x}", r.value.to_bits()), s(w, "bits"), "{name}");
        let mut kn = Vec::new();
        envelope::Kind::from_code(r.kind)
            .unwrap()
            .write_name(&mut kn);
        assert_eq!(String::from_utf8(kn).unwrap(), s(w, "name"), "{name}");
    }
    let mut body = Vec::new();
    env.write_canonical_body(&mut body);
    assert_eq!(hex::encode(&body), s(case, "canonical_body"), "{name}");
    let mut msg = Vec::new();
    env.write_signed_message(topic, &mut msg).unwrap();
    assert_eq!(hex::encode(&msg), s(case, "signed_message"), "{name}");
    // Both encodings of the decoded envelope decode back to it.
    let mut bin = Vec::new();
    env.encode_binary(&mut bin);
    assert_eq!(decode_binary(&bin, max).as_ref(), Ok(env), "{name}");
    let mut json = Vec::new();
    env.encode_json(&mut json);
    assert_eq!(
        decode_json(&json, max).as_ref(),
        Ok(env),
        "{name}: {}",
        String::from_utf8_lossy(&json)
    );
    if s(case, "form") == "binary" {
        assert_eq!(hex::encode(&bin), s(case, "payload"), "{name}");
    }
}
