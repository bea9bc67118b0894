//! CONNECT credential: parsing, canonical text, window edges, binding to device and client.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use ingestd_codec::credential::{
    check_client_id, sign_credential, Credential, CredentialError, CLIENT_ID_BYTES_MAX,
    MAX_PASSWORD_LEN,
};
use ingestd_codec::envelope::SigningKey;
use ingestd_codec::mqtt::{ConnectReturnCode, ReasonCode};

const TS: u64 = 1_764_201_600_000;

fn pw() -> (SigningKey, String) {
    let k = SigningKey::from_bytes(&[1; 32]);
    let p = sign_credential("co2-0001", "cid", &k, TS, [0xab; 16]);
    (k, p)
}

#[test]
fn format_and_length() {
    let (_, p) = pw();
    assert!(p.starts_with(&format!("v1.{TS}.{}.", "ab".repeat(16))));
    assert_eq!(p.len(), 3 + 13 + 1 + 32 + 1 + 128);
    let max = sign_credential(
        "d",
        "c",
        &SigningKey::from_bytes(&[1; 32]),
        u64::MAX,
        [0; 16],
    );
    assert_eq!(max.len(), MAX_PASSWORD_LEN);
    assert!(Credential::parse(max.as_bytes()).is_ok());
}

#[test]
fn window_edges_and_binding() {
    let (k, p) = pw();
    let vk = k.verifying_key();
    let c = Credential::parse(p.as_bytes()).unwrap();
    assert_eq!(c.verify("co2-0001", "cid", &vk, TS, 300_000), Ok(()));
    assert_eq!(
        c.verify("co2-0001", "cid", &vk, TS + 300_000, 300_000),
        Ok(())
    );
    assert_eq!(
        c.verify("co2-0001", "cid", &vk, TS - 300_000, 300_000),
        Ok(())
    );
    assert_eq!(
        c.verify("co2-0001", "cid", &vk, TS + 300_001, 300_000),
        Err(CredentialError::Expired)
    );
    assert_eq!(
        c.verify("co2-0001", "cid", &vk, TS - 300_001, 300_000),
        Err(CredentialError::NotYetValid)
    );
    assert_eq!(
        c.verify("co2-0002", "cid", &vk, TS, 300_000),
        Err(CredentialError::BadSignature)
    );
    assert_eq!(
        c.verify("co2-0001", "cid2", &vk, TS, 300_000),
        Err(CredentialError::BadSignature)
    );
    assert_eq!(
        c.verify("co2/0001", "cid", &vk, TS, 300_000),
        Err(CredentialError::BadDeviceId)
    );
    let other = SigningKey::from_bytes(&[2; 32]).verifying_key();
    assert_eq!(
        c.verify("co2-0001", "cid", &other, TS, 300_000),
        Err(CredentialError::BadSignature)
    );
    let long_client = "c".repeat(1000);
    assert_eq!(
        c.verify("co2-0001", &long_client, &vk, TS, 300_000),
        Err(CredentialError::BadClientId)
    );
}

#[test]
fn only_canonical_text_parses() {
    let (_, p) = pw();
    let bad = [
        String::new(),
        "v1".to_owned(),
        "v1...".to_owned(),
        p.replacen("v1.", "v1.0", 1),
        p.replacen("v1.", "V1.", 1),
        p.replacen("ab", "AB", 1),
        format!("{p}."),
        format!("{p}0"),
        format!(" {p}"),
        p[..p.len() - 1].to_owned(),
        p.replacen(&TS.to_string(), "18446744073709551616", 1),
        p.replacen(&TS.to_string(), "-1", 1),
        p.replacen(&TS.to_string(), "+1", 1),
    ];
    for b in &bad {
        assert_eq!(
            Credential::parse(b.as_bytes()),
            Err(CredentialError::Malformed),
            "{b:?}"
        );
    }
    assert_eq!(
        Credential::parse(p.replacen("v1.", "v2.", 1).as_bytes()),
        Err(CredentialError::UnknownVersion)
    );
    assert_eq!(
        Credential::parse(&[0xff; 300]),
        Err(CredentialError::Malformed)
    );
    assert!(Credential::parse(
        p.replacen(&TS.to_string(), "18446744073709551615", 1)
            .as_bytes()
    )
    .is_ok());
}

/// One limit, 400 UTF-8 bytes, whatever the device id's length: before, the limit was what
/// was left of a 512-byte buffer after the device id (464 bytes for a 1-byte id).
#[test]
fn client_id_limit_is_400_bytes_for_every_device_id() {
    assert_eq!(CLIENT_ID_BYTES_MAX, 400);
    let key = SigningKey::from_bytes(&[1; 32]);
    let vk = key.verifying_key();
    let two_byte_chars = "\u{e9}".repeat(200); // 400 bytes, 200 characters
    for device in ["d", &"d".repeat(64)] {
        for (client_id, accepted) in [
            ("c".repeat(400), true),
            (two_byte_chars.clone(), true),
            ("c".repeat(401), false),
            (format!("{two_byte_chars}c"), false),
        ] {
            let password = sign_credential(device, &client_id, &key, TS, [7; 16]);
            let verdict = Credential::parse(password.as_bytes())
                .unwrap()
                .verify(device, &client_id, &vk, TS, 300_000);
            let check = check_client_id(&client_id);
            let what = format!(
                "device id of {} bytes, client id of {} bytes",
                device.len(),
                client_id.len()
            );
            if accepted {
                assert_eq!(verdict, Ok(()), "{what}");
                assert_eq!(check, Ok(()), "{what}");
            } else {
                assert_eq!(verdict, Err(CredentialError::BadClientId), "{what}");
                assert_eq!(check, Err(ReasonCode::ClientIdentifierNotValid), "{what}");
                assert_eq!(
                    ReasonCode::ClientIdentifierNotValid.to_connect_return_code(),
                    Some(ConnectReturnCode::IdentifierRejected)
                );
                assert_eq!(u8::from(ReasonCode::ClientIdentifierNotValid), 0x85);
            }
        }
    }
    // An empty client id passes the length check: the server assigns the device id.
    assert_eq!(check_client_id(""), Ok(()));
}
