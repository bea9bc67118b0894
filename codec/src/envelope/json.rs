//! JSON form: `{"v":1,"device":..,"seq":..,"ts":..,"readings":{name: value, ..},"sig":"<hex>"}`.
//!
//! The verifier rebuilds the canonical binary body from these fields, so the JSON form is
//! signed exactly like the binary one. Two details keep that exact:
//! - each value is parsed as binary32 straight from its decimal text (`str::parse::<f32>` on
//!   the raw JSON number), never through f64, because decimal → f64 → f32 can round twice and
//!   land on a neighbouring f32, which would break the signature;
//! - there is one spelling per kind (see [`Kind::from_name`]) and duplicates are rejected, so
//!   a JSON object maps to exactly one body.
//!
//! Decoding borrows from the payload and does not allocate, except when a string contains a
//! JSON escape; device ids and kind names never need one, so escaped ones are rejected.

use std::borrow::Cow;
use std::io::Write;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::hex;
use super::kind::write_decimal;
use super::{
    is_valid_device_id, Envelope, EnvelopeError, Kind, Reading, Readings, MAX_READINGS,
    SIGNATURE_LEN, VERSION,
};

/// A JSON string, borrowed when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level object, each field kept as raw JSON text until the version is known.
#[derive(Default)]
struct Top<'a> {
    v: Option<&'a RawValue>,
    device: Option<&'a RawValue>,
    seq: Option<&'a RawValue>,
    ts: Option<&'a RawValue>,
    readings: Option<&'a RawValue>,
    sig: Option<&'a RawValue>,
    unknown: bool,
    duplicate: bool,
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an envelope object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
                let mut t = Top::default();
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    let slot = match key.0.as_ref() {
                        "v" => &mut t.v,
                        "device" => &mut t.device,
                        "seq" => &mut t.seq,
                        "ts" => &mut t.ts,
                        "readings" => &mut t.readings,
                        "sig" => &mut t.sig,
                        _ => {
                            t.unknown = true;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        t.duplicate = true;
                    }
                    *slot = Some(value);
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

/// The readings object, checked as it is read. Semantic errors are returned as the inner
/// `Err` (after draining the map) so they are not flattened into `bad_json`.
struct ReadingsMap(Result<Readings, EnvelopeError>);

impl<'de> Deserialize<'de> for ReadingsMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReadingsMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a readings object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReadingsMap, A::Error> {
                let mut out = Readings::new();
                let mut err = None;
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    if err.is_none() {
                        if let Err(e) =
                            add_reading(&mut out, &key.0, value, matches!(key.0, Cow::Owned(_)))
                        {
                            err = Some(e);
                        }
                    }
                }
                Ok(ReadingsMap(match err {
                    Some(e) => Err(e),
                    None if out.is_empty() => Err(EnvelopeError::NoReadings),
                    None => Ok(out),
                }))
            }
        }
        d.deserialize_map(V)
    }
}

fn add_reading(
    out: &mut Readings,
    name: &str,
    value: &RawValue,
    escaped: bool,
) -> Result<(), EnvelopeError> {
    if out.len() >= MAX_READINGS {
        return Err(EnvelopeError::TooManyReadings);
    }
    let kind = if escaped { None } else { Kind::from_name(name) }.ok_or(EnvelopeError::BadKind)?;
    let text = value.get();
    // A JSON number starts with '-' or a digit; anything else (string, bool, null, object)
    // is the wrong type.
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(EnvelopeError::BadJson("reading value must be a number"));
    }
    // Directly to binary32: see the module comment. Out-of-range text parses to ±inf.
    let v: f32 = text
        .parse()
        .map_err(|_| EnvelopeError::BadJson("reading value must be a number"))?;
    if !v.is_finite() {
        return Err(EnvelopeError::NonFiniteValue);
    }
    out.insert_sorted(Reading {
        kind: kind.code(),
        value: v,
    })
}

fn parse_u64(raw: &RawValue, what: &'static str) -> Result<u64, EnvelopeError> {
    serde_json::from_str::<u64>(raw.get()).map_err(|_| EnvelopeError::BadJson(what))
}

/// Decodes a JSON envelope. Checks, in order: size; JSON syntax and a top-level object;
/// duplicate top-level field; `v` present, an integer, equal to 1 (else `unknown_version`);
/// unknown field; missing field; `device`; `seq`; `ts`; `readings`; `sig`.
pub fn decode_json(payload: &[u8], max_bytes: usize) -> Result<Envelope<'_>, EnvelopeError> {
    if payload.len() > max_bytes {
        return Err(EnvelopeError::Oversize {
            len: payload.len(),
            max: max_bytes,
        });
    }
    let top: Top<'_> =
        serde_json::from_slice(payload).map_err(|_| EnvelopeError::BadJson("not a JSON object"))?;
    if top.duplicate {
        return Err(EnvelopeError::BadJson("duplicate field"));
    }
    let v = parse_u64(
        top.v.ok_or(EnvelopeError::BadJson("missing field v"))?,
        "v must be an integer",
    )?;
    if v != u64::from(VERSION) {
        return Err(EnvelopeError::UnknownVersion(v));
    }
    if top.unknown {
        return Err(EnvelopeError::BadJson("unknown field"));
    }
    let missing = EnvelopeError::BadJson("missing field");
    let (device, seq, ts, readings, sig) =
        match (top.device, top.seq, top.ts, top.readings, top.sig) {
            (Some(d), Some(s), Some(t), Some(r), Some(g)) => (d, s, t, r, g),
            _ => return Err(missing),
        };

    let device = serde_json::from_str::<Str<'_>>(device.get())
        .map_err(|_| EnvelopeError::BadJson("device must be a string"))?;
    let device_id = match device.0 {
        Cow::Borrowed(s) if is_valid_device_id(s.as_bytes()) => s,
        _ => return Err(EnvelopeError::BadDeviceId),
    };
    let seq = parse_u64(seq, "seq must be an integer 0..=2^64-1")?;
    let ts_ms = parse_u64(ts, "ts must be an integer 0..=2^64-1")?;
    let readings = serde_json::from_str::<ReadingsMap>(readings.get())
        .map_err(|_| EnvelopeError::BadJson("readings must be an object"))?
        .0?;
    let sig = serde_json::from_str::<Str<'_>>(sig.get())
        .map_err(|_| EnvelopeError::BadSignatureEncoding)?;
    let signature: [u8; SIGNATURE_LEN] = match sig.0 {
        Cow::Borrowed(s) => {
            hex::decode_array(s.as_bytes(), true).ok_or(EnvelopeError::BadSignatureEncoding)?
        }
        Cow::Owned(_) => return Err(EnvelopeError::BadSignatureEncoding),
    };
    Ok(Envelope {
        version: VERSION,
        device_id,
        seq,
        ts_ms,
        readings,
        signature,
    })
}

/// Writes the JSON form (see [`Envelope::encode_json`]).
pub(super) fn encode_json(env: &Envelope<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"v\":");
    write_decimal(u64::from(env.version), out);
    out.extend_from_slice(b",\"device\":\"");
    out.extend_from_slice(env.device_id.as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    write_decimal(env.seq, out);
    out.extend_from_slice(b",\"ts\":");
    write_decimal(env.ts_ms, out);
    out.extend_from_slice(b",\"readings\":{");
    for (i, r) in env.readings.as_slice().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        match Kind::from_code(r.kind) {
            Some(k) => k.write_name(out),
            None => out.extend_from_slice(b"kind_0"),
        }
        out.extend_from_slice(b"\":");
        // `{:?}` is the shortest text that parses back to the same f32, and is valid JSON
        // for finite values ("415.5", "-0.0", "1e-7", "3.4028235e38").
        let _ = write!(out, "{:?}", r.value);
    }
    out.extend_from_slice(b"},\"sig\":\"");
    hex::encode_into(&env.signature, out);
    out.extend_from_slice(b"\"}");
}
