//! The signed telemetry envelope: the payload of every uplink PUBLISH.
//!
//! A device signs one *canonical body* (device id, sequence number, timestamp, readings)
//! together with the MQTT topic it publishes to, and sends it either as the compact binary
//! form (body || 64-byte ed25519 signature) or as a JSON object carrying the same fields and
//! the same signature. The full specification is `docs/PROTOCOL.md`.
//!
//! Job and limits of this module: decode and validate both forms, re-encode them, build the
//! signed message, and verify signatures (singly, or in batches). It does no I/O, never reads
//! the clock, and does not keep per-device state: the sequence-number replay window, the
//! clock-skew check against "now" and the key registry belong to the server, which uses the
//! reason codes defined here ([`EnvelopeError::reason`]) for its dead letters.
//!
//! Decoding allocates nothing: an [`Envelope`] borrows the device id from the payload and keeps
//! up to [`MAX_READINGS`] readings inline. Verification writes the signed message into a
//! caller-provided scratch buffer that is reused between messages.

mod batch;
mod binary;
pub mod hex;
mod json;
mod kind;
#[doc(hidden)]
pub mod test_vectors;

pub use batch::BatchVerifier;
pub use binary::decode_binary;
pub use json::decode_json;
pub use kind::{Kind, KINDS, VENDOR_KIND_START};

use ed25519_dalek::{Signature, Signer};
/// Re-exported so users (loadgen, fuzz targets) need no direct ed25519-dalek dependency.
pub use ed25519_dalek::{SigningKey, VerifyingKey};

/// The only body version this code understands.
pub const VERSION: u8 = 1;
/// Domain-separation prefix of the signed message, so an envelope signature can never be
/// confused with a CONNECT credential signature (or anything else signed by the same key).
pub const SIGNED_MESSAGE_PREFIX: &[u8] = b"ingestd/envelope/v1\n";
/// Default maximum payload size for either form.
pub const DEFAULT_MAX_BYTES: usize = 1024;
/// Longest possible binary envelope: 3 + 64 + 8 + 8 + 1 + 32 × 6 + 64.
pub const MAX_BINARY_LEN: usize = 340;
/// Longest device id.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Most readings in one envelope.
pub const MAX_READINGS: usize = 32;
/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Default topic prefix: uplink topic is `{prefix}/{device_id}/telemetry`.
pub const DEFAULT_TOPIC_PREFIX: &str = "devices";
/// Default allowed difference between a device timestamp and the server clock.
pub const DEFAULT_CLOCK_SKEW_MS: u64 = 300_000;

/// Why an envelope was rejected. [`EnvelopeError::reason`] is the stable dead-letter code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The payload is larger than the configured maximum (checked before parsing).
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    Oversize { len: usize, max: usize },
    /// The payload ended before the structure it announced.
    #[error("payload truncated")]
    Truncated,
    /// Bytes follow the signature of a binary envelope.
    #[error("bytes after the signature")]
    TrailingBytes,
    /// A body version other than 1.
    #[error("unknown envelope version {0}")]
    UnknownVersion(u64),
    /// Reserved flags byte is not zero.
    #[error("reserved flags byte is {0:#04x}, must be 0")]
    BadFlags(u8),
    /// Device id empty, longer than 64 bytes, or with a byte outside `[A-Za-z0-9._-]`.
    #[error("device id is empty, too long or has a character outside [A-Za-z0-9._-]")]
    BadDeviceId,
    /// Zero readings.
    #[error("envelope has no readings")]
    NoReadings,
    /// More than 32 readings.
    #[error("more than 32 readings")]
    TooManyReadings,
    /// Reading kinds are not in strictly ascending order (binary form).
    #[error("readings are not sorted by kind")]
    UnsortedReadings,
    /// The same kind appears twice.
    #[error("reading kind {0} appears twice")]
    DuplicateKind(u16),
    /// Kind code 0, or a JSON key that is not a kind name.
    #[error("invalid reading kind")]
    BadKind,
    /// A value is NaN or infinite, or (JSON) outside the binary32 range.
    #[error("reading value is not a finite binary32")]
    NonFiniteValue,
    /// The JSON form is not valid JSON or does not have the required shape.
    #[error("malformed JSON envelope: {0}")]
    BadJson(&'static str),
    /// The JSON `sig` is not 128 hex digits.
    #[error("signature is not 128 hex digits")]
    BadSignatureEncoding,
    /// The topic is not `{prefix}/{device_id}/telemetry` (or is over 65535 bytes).
    #[error("topic is not {{prefix}}/{{device_id}}/telemetry")]
    BadTopic,
    /// The payload's device id is not the topic's device id.
    #[error("payload device id differs from the topic's device id")]
    WrongDevice,
    /// The signature does not verify (RFC 8032, strict).
    #[error("signature does not verify")]
    BadSignature,
    /// Server-side: no key registered for the device.
    #[error("no key registered for the device")]
    UnknownDevice,
    /// Server-side: sequence number already seen or older than the replay window.
    #[error("sequence number replayed or too old")]
    Replayed,
    /// Server-side: device timestamp too far from the server clock.
    #[error("device timestamp too far from the server clock")]
    ClockSkew,
}

impl EnvelopeError {
    /// Stable snake_case reason code, used as the dead-letter reason. Never change one.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::Oversize { .. } => "oversize",
            EnvelopeError::Truncated => "truncated",
            EnvelopeError::TrailingBytes => "trailing_bytes",
            EnvelopeError::UnknownVersion(_) => "unknown_version",
            EnvelopeError::BadFlags(_) => "bad_flags",
            EnvelopeError::BadDeviceId => "bad_device_id",
            EnvelopeError::NoReadings => "no_readings",
            EnvelopeError::TooManyReadings => "too_many_readings",
            EnvelopeError::UnsortedReadings => "unsorted_readings",
            EnvelopeError::DuplicateKind(_) => "duplicate_kind",
            EnvelopeError::BadKind => "bad_kind",
            EnvelopeError::NonFiniteValue => "non_finite_value",
            EnvelopeError::BadJson(_) => "bad_json",
            EnvelopeError::BadSignatureEncoding => "bad_signature_encoding",
            EnvelopeError::BadTopic => "bad_topic",
            EnvelopeError::WrongDevice => "wrong_device",
            EnvelopeError::BadSignature => "bad_signature",
            EnvelopeError::UnknownDevice => "unknown_device",
            EnvelopeError::Replayed => "replayed",
            EnvelopeError::ClockSkew => "clock_skew",
        }
    }

    /// Every reason code, for documentation and metrics registration.
    pub const ALL_REASONS: [&'static str; 20] = [
        "oversize",
        "truncated",
        "trailing_bytes",
        "unknown_version",
        "bad_flags",
        "bad_device_id",
        "no_readings",
        "too_many_readings",
        "unsorted_readings",
        "duplicate_kind",
        "bad_kind",
        "non_finite_value",
        "bad_json",
        "bad_signature_encoding",
        "bad_topic",
        "wrong_device",
        "bad_signature",
        "unknown_device",
        "replayed",
        "clock_skew",
    ];
}

/// One reading. `kind` is the wire code (use [`Kind::from_code`] for the named kind); it is
/// kept as the raw code so every value of this type is canonical.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// Kind code, non-zero.
    pub kind: u16,
    /// The value; finite.
    pub value: f32,
}

impl Reading {
    /// A reading of a given kind.
    pub fn new(kind: Kind, value: f32) -> Reading {
        Reading {
            kind: kind.code(),
            value,
        }
    }
}

/// Readings compare by the exact bits of the value: the signature covers the bits, so
/// `0.0` and `-0.0` are different readings.
impl PartialEq for Reading {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.value.to_bits() == other.value.to_bits()
    }
}
impl Eq for Reading {}

const EMPTY_READING: Reading = Reading {
    kind: 0,
    value: 0.0,
};

/// Up to [`MAX_READINGS`] readings kept inline (no heap), sorted by kind when produced by a
/// decoder or [`Readings::insert_sorted`].
#[derive(Clone, Copy)]
pub struct Readings {
    len: u8,
    items: [Reading; MAX_READINGS],
}

impl Default for Readings {
    fn default() -> Self {
        Readings {
            len: 0,
            items: [EMPTY_READING; MAX_READINGS],
        }
    }
}

impl Readings {
    /// No readings.
    pub fn new() -> Readings {
        Readings::default()
    }

    /// The readings as a slice.
    pub fn as_slice(&self) -> &[Reading] {
        self.items.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Number of readings.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends without any ordering check (decoders check order themselves).
    pub fn push(&mut self, r: Reading) -> Result<(), EnvelopeError> {
        let slot = self
            .items
            .get_mut(usize::from(self.len))
            .ok_or(EnvelopeError::TooManyReadings)?;
        *slot = r;
        self.len += 1;
        Ok(())
    }

    /// Inserts keeping kinds strictly ascending; a kind already present is an error.
    pub fn insert_sorted(&mut self, r: Reading) -> Result<(), EnvelopeError> {
        let pos = match self.as_slice().binary_search_by_key(&r.kind, |x| x.kind) {
            Ok(_) => return Err(EnvelopeError::DuplicateKind(r.kind)),
            Err(pos) => pos,
        };
        self.push(r)?;
        let len = usize::from(self.len);
        if let Some(tail) = self.items.get_mut(pos..len) {
            tail.rotate_right(1);
        }
        Ok(())
    }

    /// Builds sorted readings from any order; duplicates and more than 32 are errors.
    pub fn from_unsorted(readings: &[Reading]) -> Result<Readings, EnvelopeError> {
        let mut out = Readings::new();
        for r in readings {
            out.insert_sorted(*r)?;
        }
        Ok(out)
    }

    /// Checks the body rules: 1..=32 readings, kinds non-zero and strictly ascending, values
    /// finite.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.is_empty() {
            return Err(EnvelopeError::NoReadings);
        }
        let mut prev: Option<u16> = None;
        for r in self.as_slice() {
            check_reading(prev, r)?;
            prev = Some(r.kind);
        }
        Ok(())
    }
}

/// The per-reading rules shared by the binary decoder and [`Readings::validate`].
pub(crate) fn check_reading(prev: Option<u16>, r: &Reading) -> Result<(), EnvelopeError> {
    if r.kind == 0 {
        return Err(EnvelopeError::BadKind);
    }
    if let Some(p) = prev {
        if r.kind == p {
            return Err(EnvelopeError::DuplicateKind(r.kind));
        }
        if r.kind < p {
            return Err(EnvelopeError::UnsortedReadings);
        }
    }
    if !r.value.is_finite() {
        return Err(EnvelopeError::NonFiniteValue);
    }
    Ok(())
}

impl PartialEq for Readings {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl Eq for Readings {}

impl std::fmt::Debug for Readings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// A decoded (or freshly signed) envelope. The device id borrows from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Body version; always [`VERSION`] after a successful decode.
    pub version: u8,
    /// Device id, 1..=64 bytes of `[A-Za-z0-9._-]`.
    pub device_id: &'a str,
    /// Device sequence number.
    pub seq: u64,
    /// Device timestamp, ms since the Unix epoch (UTC).
    pub ts_ms: u64,
    /// Readings, kinds strictly ascending.
    pub readings: Readings,
    /// ed25519 signature over the signed message.
    pub signature: [u8; SIGNATURE_LEN],
}

/// True when `id` is a valid device id: 1..=64 bytes, each in `[A-Za-z0-9._-]`.
pub fn is_valid_device_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The device id of an uplink topic `{prefix}/{device_id}/telemetry`, or `None` if the topic
/// has another shape or the id is not a valid device id (so `+`, `#` and `/` never pass).
pub fn device_id_from_topic<'a>(topic: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let id = rest.strip_suffix("/telemetry")?;
    is_valid_device_id(id.as_bytes()).then_some(id)
}

/// The uplink topic for a device: `{prefix}/{device_id}/telemetry`.
pub fn telemetry_topic(prefix: &str, device_id: &str) -> String {
    format!("{prefix}/{device_id}/telemetry")
}

/// The clock-skew rule: `ts_ms` must be within `skew_ms` of `now_ms` (either direction).
/// `now_ms` is the caller's clock; this never reads one.
pub fn check_clock_skew(ts_ms: u64, now_ms: u64, skew_ms: u64) -> Result<(), EnvelopeError> {
    if ts_ms.abs_diff(now_ms) <= skew_ms {
        Ok(())
    } else {
        Err(EnvelopeError::ClockSkew)
    }
}

/// Appends the signed message for a topic and an already-encoded canonical body:
/// `"ingestd/envelope/v1\n" || u16 topic_len || topic || body`.
pub fn write_signed_message_for_body(
    topic: &str,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    write_signed_message_head(topic, out)?;
    out.extend_from_slice(body);
    Ok(())
}

/// Appends what precedes the body in the signed message: prefix, u16 topic length, topic.
fn write_signed_message_head(topic: &str, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    let topic_len = u16::try_from(topic.len()).map_err(|_| EnvelopeError::BadTopic)?;
    out.extend_from_slice(SIGNED_MESSAGE_PREFIX);
    out.extend_from_slice(&topic_len.to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    Ok(())
}

impl<'a> Envelope<'a> {
    /// Checks every body rule (what the decoders check), for envelopes built by hand.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.version != VERSION {
            return Err(EnvelopeError::UnknownVersion(u64::from(self.version)));
        }
        if !is_valid_device_id(self.device_id.as_bytes()) {
            return Err(EnvelopeError::BadDeviceId);
        }
        self.readings.validate()
    }

    /// Appends the canonical body. The envelope must be valid ([`Envelope::validate`]);
    /// decoders and [`sign`] only produce valid ones.
    pub fn write_canonical_body(&self, out: &mut Vec<u8>) {
        out.push(self.version);
        out.push(0); // flags: reserved
                     // A valid id is at most 64 bytes; saturating keeps an invalid one from wrapping.
        out.push(u8::try_from(self.device_id.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.device_id.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ts_ms.to_be_bytes());
        out.push(self.readings.len); // at most 32 by construction
        for r in self.readings.as_slice() {
            out.extend_from_slice(&r.kind.to_be_bytes());
            out.extend_from_slice(&r.value.to_bits().to_be_bytes());
        }
    }

    /// Appends the signed message: prefix || u16 topic length || topic || canonical body.
    /// Fails only for a topic longer than 65535 bytes (impossible in MQTT).
    pub fn write_signed_message(
        &self,
        topic: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        write_signed_message_head(topic, out)?;
        self.write_canonical_body(out);
        Ok(())
    }

    /// `WrongDevice` unless the payload's device id equals the topic's device id
    /// (from [`device_id_from_topic`]). The server calls this before any signature work.
    pub fn check_device(&self, topic_device_id: &str) -> Result<(), EnvelopeError> {
        if self.device_id == topic_device_id {
            Ok(())
        } else {
            Err(EnvelopeError::WrongDevice)
        }
    }

    /// Verifies the signature for the topic the envelope was published to, with RFC 8032
    /// `verify_strict` (rejects non-canonical encodings and small-order points). `scratch`
    /// is cleared and reused for the signed message.
    pub fn verify(
        &self,
        topic: &str,
        key: &VerifyingKey,
        scratch: &mut Vec<u8>,
    ) -> Result<(), EnvelopeError> {
        scratch.clear();
        self.write_signed_message(topic, scratch)?;
        let sig = Signature::from_bytes(&self.signature);
        key.verify_strict(scratch, &sig)
            .map_err(|_| EnvelopeError::BadSignature)
    }

    /// Appends the binary form: canonical body || signature.
    pub fn encode_binary(&self, out: &mut Vec<u8>) {
        self.write_canonical_body(out);
        out.extend_from_slice(&self.signature);
    }

    /// Appends the JSON form (fixed key order, shortest round-trip value text, lowercase
    /// hex signature). The envelope must be valid.
    pub fn encode_json(&self, out: &mut Vec<u8>) {
        json::encode_json(self, out);
    }
}

/// Builds and signs an envelope. Readings may be given in any order (they are sorted);
/// duplicates, zero or more than 32 readings, kind 0, non-finite values, a bad device id or
/// a topic over 65535 bytes are errors. `scratch` holds the signed message.
pub fn sign<'a>(
    key: &SigningKey,
    topic: &str,
    device_id: &'a str,
    seq: u64,
    ts_ms: u64,
    readings: &[Reading],
    scratch: &mut Vec<u8>,
) -> Result<Envelope<'a>, EnvelopeError> {
    let mut env = Envelope {
        version: VERSION,
        device_id,
        seq,
        ts_ms,
        readings: Readings::from_unsorted(readings)?,
        signature: [0; SIGNATURE_LEN],
    };
    env.validate()?;
    scratch.clear();
    env.write_signed_message(topic, scratch)?;
    env.signature = key.sign(scratch).to_bytes();
    Ok(env)
}

/// The UTF-8 byte-order mark, which RFC 8259 §8.1 forbids in front of a JSON text.
const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

/// Decodes either form: JSON if the first non-whitespace byte is `{`, binary otherwise.
/// (Binary versions 9, 10, 13, 32 and 123 are therefore never to be allocated.) A payload
/// that starts with a byte-order mark is a JSON text someone's editor or library marked:
/// the JSON decoder refuses it as `bad_json`, which says more than the binary decoder's
/// `unknown_version` (239); so binary version 239 is never to be allocated either.
pub fn decode(payload: &[u8], max_bytes: usize) -> Result<Envelope<'_>, EnvelopeError> {
    let first = payload
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'{') || payload.starts_with(BYTE_ORDER_MARK) {
        decode_json(payload, max_bytes)
    } else {
        decode_binary(payload, max_bytes)
    }
}
