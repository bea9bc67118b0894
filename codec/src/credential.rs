//! The CONNECT credential: how a device proves, at MQTT CONNECT, that it holds the private
//! key registered for its device id, without the server storing any shared secret.
//!
//! MQTT username = device id; MQTT password = ASCII text
//! `v1.<ts_ms decimal>.<nonce: 32 lowercase hex>.<signature: 128 lowercase hex>`, the
//! signature being ed25519 over
//! `"ingestd/connect/v1\n" || u16 len || device_id || u16 len || client_id || u64 ts_ms || nonce`.
//! Plain ASCII so stock clients can send it (`mosquitto_pub -u ID -P PASSWORD`).
//!
//! Limits of this module: it parses and verifies one password against a key, a client id and
//! a clock value passed in. The server must additionally refuse a (device id, nonce) pair
//! already accepted within the window (a sniffed password replayed); that cache is
//! server-side state, specified in `docs/PROTOCOL.md`, and its reason code is
//! [`CredentialError::Replayed`].

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::envelope::{hex, is_valid_device_id, MAX_DEVICE_ID_LEN};
use crate::mqtt::ReasonCode;

/// Domain-separation prefix of the signed CONNECT message.
pub const CONNECT_PREFIX: &[u8] = b"ingestd/connect/v1\n";
/// Longest MQTT client identifier the server accepts, in UTF-8 bytes, whatever the device
/// id's length (docs/PROTOCOL.md, section 10). Far above the 23 bytes every MQTT server
/// must accept [MQTT-3.1.3-5], and small enough to sign on the stack.
pub const CLIENT_ID_BYTES_MAX: usize = 400;
/// Longest signed CONNECT message: the prefix, a 64-byte device id, a client id of
/// [`CLIENT_ID_BYTES_MAX`], their two length prefixes, the timestamp and the nonce.
const CONNECT_MESSAGE_BYTES_MAX: usize =
    CONNECT_PREFIX.len() + 2 + MAX_DEVICE_ID_LEN + 2 + CLIENT_ID_BYTES_MAX + 8 + 16;
/// Default accepted distance between the credential timestamp and the server clock.
pub const DEFAULT_WINDOW_MS: u64 = 300_000;
/// Longest well-formed password: "v1." + 20 digits + "." + 32 + "." + 128.
pub const MAX_PASSWORD_LEN: usize = 3 + 20 + 1 + 32 + 1 + 128;

/// Why a CONNECT credential was refused. [`CredentialError::reason`] is the stable code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not of the form `v1.<ts>.<nonce>.<sig>` (or over [`MAX_PASSWORD_LEN`] bytes).
    #[error("malformed credential")]
    Malformed,
    /// A version tag other than `v1`.
    #[error("unknown credential version")]
    UnknownVersion,
    /// The username is not a valid device id.
    #[error("username is not a valid device id")]
    BadDeviceId,
    /// The client id is over [`CLIENT_ID_BYTES_MAX`] bytes.
    #[error("client id longer than {CLIENT_ID_BYTES_MAX} bytes")]
    BadClientId,
    /// `ts_ms` is more than the window before `now_ms`.
    #[error("credential expired")]
    Expired,
    /// `ts_ms` is more than the window after `now_ms`.
    #[error("credential timestamp is in the future")]
    NotYetValid,
    /// The signature does not verify (wrong key, device id, client id, time or nonce).
    #[error("credential signature does not verify")]
    BadSignature,
    /// Server-side: this (device id, nonce) was already accepted within the window.
    #[error("credential nonce already used")]
    Replayed,
    /// Server-side: no key registered for the device id.
    #[error("no key registered for the device")]
    UnknownDevice,
}

impl CredentialError {
    /// Stable snake_case reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            CredentialError::Malformed => "malformed",
            CredentialError::UnknownVersion => "unknown_version",
            CredentialError::BadDeviceId => "bad_device_id",
            CredentialError::BadClientId => "bad_client_id",
            CredentialError::Expired => "expired",
            CredentialError::NotYetValid => "not_yet_valid",
            CredentialError::BadSignature => "bad_signature",
            CredentialError::Replayed => "replayed",
            CredentialError::UnknownDevice => "unknown_device",
        }
    }
}

/// The one check of a client identifier's length, for every CONNECT (with a credential,
/// a client certificate, or neither): `Err` carries the CONNACK reason, 0x85 Client
/// Identifier not valid, which is 3.1.1 return code 2 Identifier rejected
/// ([`ReasonCode::to_connect_return_code`]). An empty client id passes: the server
/// assigns one (docs/PROTOCOL.md, section 10).
pub fn check_client_id(client_id: &str) -> Result<(), ReasonCode> {
    if client_id.len() > CLIENT_ID_BYTES_MAX {
        return Err(ReasonCode::ClientIdentifierNotValid);
    }
    Ok(())
}

/// A parsed CONNECT password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credential {
    /// Device clock when the credential was made, ms since the Unix epoch.
    pub ts_ms: u64,
    /// 16 random bytes, unique per credential.
    pub nonce: [u8; 16],
    /// ed25519 signature over the CONNECT message.
    pub signature: [u8; 64],
}

/// Parses canonical decimal: 1..=20 digits, no leading zero unless exactly "0", fits u64.
fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || (text.len() > 1 && text.first() == Some(&b'0')) {
        return None;
    }
    let mut v: u64 = 0;
    for b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

impl Credential {
    /// Parses the password bytes. Only the canonical text is accepted (lowercase hex,
    /// no leading zeros), so one credential has exactly one password.
    pub fn parse(password: &[u8]) -> Result<Credential, CredentialError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(CredentialError::Malformed);
        }
        let mut parts = password.split(|b| *b == b'.');
        let version = parts.next().ok_or(CredentialError::Malformed)?;
        if version != b"v1" {
            // Anything that at least looks like a version tag is reported as such.
            return Err(match version {
                [b'v', rest @ ..] if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) => {
                    CredentialError::UnknownVersion
                }
                _ => CredentialError::Malformed,
            });
        }
        let (ts, nonce, sig) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(ts), Some(nonce), Some(sig), None) => (ts, nonce, sig),
            _ => return Err(CredentialError::Malformed),
        };
        Ok(Credential {
            ts_ms: parse_decimal(ts).ok_or(CredentialError::Malformed)?,
            nonce: hex::decode_array(nonce, false).ok_or(CredentialError::Malformed)?,
            signature: hex::decode_array(sig, false).ok_or(CredentialError::Malformed)?,
        })
    }

    /// Checks the credential for `device_id` (the MQTT username) and `client_id`, against
    /// the device's registered key, at server time `now_ms`: the timestamp must be within
    /// `window_ms` of `now_ms` and the signature must pass `verify_strict`. The nonce-replay
    /// check is the caller's (see the module comment).
    pub fn verify(
        &self,
        device_id: &str,
        client_id: &str,
        key: &VerifyingKey,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<(), CredentialError> {
        if !is_valid_device_id(device_id.as_bytes()) {
            return Err(CredentialError::BadDeviceId);
        }
        if check_client_id(client_id).is_err() {
            return Err(CredentialError::BadClientId);
        }
        if self.ts_ms.abs_diff(now_ms) > window_ms {
            return Err(if self.ts_ms < now_ms {
                CredentialError::Expired
            } else {
                CredentialError::NotYetValid
            });
        }
        let mut msg = [0u8; CONNECT_MESSAGE_BYTES_MAX];
        let len = write_connect_message(device_id, client_id, self.ts_ms, &self.nonce, &mut msg)?;
        let msg = msg.get(..len).ok_or(CredentialError::BadClientId)?;
        key.verify_strict(msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| CredentialError::BadSignature)
    }
}

/// Writes the signed CONNECT message into `buf`, returning its length. A stack buffer of
/// [`CONNECT_MESSAGE_BYTES_MAX`] keeps this allocation-free; the ids were checked against
/// their limits before, so running out of room is a bug reported as `BadClientId`.
fn write_connect_message(
    device_id: &str,
    client_id: &str,
    ts_ms: u64,
    nonce: &[u8; 16],
    buf: &mut [u8],
) -> Result<usize, CredentialError> {
    let id_len = u16::try_from(device_id.len()).map_err(|_| CredentialError::BadDeviceId)?;
    let client_len = u16::try_from(client_id.len()).map_err(|_| CredentialError::BadClientId)?;
    let pieces: [&[u8]; 7] = [
        CONNECT_PREFIX,
        &id_len.to_be_bytes(),
        device_id.as_bytes(),
        &client_len.to_be_bytes(),
        client_id.as_bytes(),
        &ts_ms.to_be_bytes(),
        nonce,
    ];
    let mut at = 0;
    for p in pieces {
        let end = at + p.len();
        buf.get_mut(at..end)
            .ok_or(CredentialError::BadClientId)?
            .copy_from_slice(p);
        at = end;
    }
    Ok(at)
}

/// The signed CONNECT message as a vector (for test vectors and other implementations).
/// Lengths are written as u16: ids over 65535 bytes (impossible in MQTT) would be cut.
pub fn connect_message(device_id: &str, client_id: &str, ts_ms: u64, nonce: &[u8; 16]) -> Vec<u8> {
    let mut v =
        Vec::with_capacity(CONNECT_PREFIX.len() + 4 + device_id.len() + client_id.len() + 24);
    v.extend_from_slice(CONNECT_PREFIX);
    v.extend_from_slice(&(device_id.len() as u16).to_be_bytes());
    v.extend_from_slice(device_id.as_bytes());
    v.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    v.extend_from_slice(client_id.as_bytes());
    v.extend_from_slice(&ts_ms.to_be_bytes());
    v.extend_from_slice(nonce);
    v
}

/// Makes the password a device sends: `v1.<ts_ms>.<nonce hex>.<signature hex>`. The nonce
/// must be fresh random bytes for every CONNECT.
pub fn sign_credential(
    device_id: &str,
    client_id: &str,
    key: &SigningKey,
    ts_ms: u64,
    nonce: [u8; 16],
) -> String {
    let sig = key.sign(&connect_message(device_id, client_id, ts_ms, &nonce));
    format!(
        "v1.{ts_ms}.{}.{}",
        hex::encode(&nonce),
        hex::encode(&sig.to_bytes())
    )
}
