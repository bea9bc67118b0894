//! A reading as InfluxDB line protocol: one point per value, measurement = the reading's
//! name, tags `device`, `project`, `region`, `sensor_type`, fields `value` and `seq`, time
//! = the device's timestamp with the sequence number in the sub-millisecond digits.
//!
//! A scored reading's points also carry its fraud verdict (docs/DELIVERY.md): the float
//! field `fraud_score`, the string field `fraud_detectors` (the detectors that fired,
//! comma-separated, when any did) and the boolean field `quarantined` (only when true, so
//! `WHERE quarantined = true` finds them and clean points cost nothing more). The verdict
//! is one per record, so its fields are written once and copied onto the record's other
//! lines.

use crate::record::{FraudMeta, ReadingMeta};
use influxdb_line_protocol::LineProtocolBuilder;
use std::ops::Range;

/// Why a record cannot be written as line protocol at all; it is refused without sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrepresentable {
    #[error("{what} {value:?} contains a line break, which line protocol cannot carry")]
    LineBreak { what: &'static str, value: String },
    #[error("measurement {0:?} starts with '#', which line protocol reads as a comment")]
    Comment(String),
    #[error("timestamp {ts_ms} ms is beyond the nanosecond range of InfluxDB")]
    Timestamp { ts_ms: u64 },
    #[error("seq {0} does not fit InfluxDB's signed 64-bit integer field")]
    Seq(u64),
}

/// A point's time: the device's timestamp in ns, with the sequence number in the
/// sub-millisecond digits (module docs say why). `None` past InfluxDB's range (year 2262).
#[must_use]
pub fn point_time_ns(ts_ms: u64, seq: u64) -> Option<i64> {
    // seq % 1_000_000 < 1_000_000: the cast is lossless.
    i64::try_from(ts_ms)
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add((seq % 1_000_000) as i64)
}

/// Appends one line per reading of `meta` to `out` and returns how many. On an error
/// nothing is appended.
///
/// The fields are `value` and `seq`, then, for a scored reading, `fraud_score`,
/// `fraud_detectors` (when any fired) and `quarantined` (when true).
pub fn push_lines(meta: &ReadingMeta, out: &mut Vec<u8>) -> Result<usize, Unrepresentable> {
    let time_ns = point_time_ns(meta.ts_ms, meta.seq)
        .ok_or(Unrepresentable::Timestamp { ts_ms: meta.ts_ms })?;
    let seq = i64::try_from(meta.seq).map_err(|_| Unrepresentable::Seq(meta.seq))?;
    // Sorted by key: InfluxDB sorts a point's tags, and sorted input spares it the work.
    let tags = [
        ("device", meta.device.as_str()),
        ("project", meta.project.as_str()),
        ("region", meta.region.as_str()),
        ("sensor_type", meta.sensor_type.as_str()),
    ];
    // Checked before anything is written, so a refused record leaves no half line behind.
    // The builder escapes commas, spaces, `=` and backslashes, but no line protocol escape
    // exists for a line break, and a leading `#` would silently turn a line into a comment.
    for (what, value) in tags {
        check_line_break(what, value)?;
    }
    for name in meta.readings.keys() {
        check_line_break("measurement", name)?;
        if name.starts_with('#') {
            return Err(Unrepresentable::Comment(name.clone()));
        }
    }
    if let Some(fraud) = &meta.fraud {
        for detector in &fraud.detectors {
            check_line_break("detector", detector)?;
        }
    }
    let plain = tags.iter().all(|(_, value)| !needs_escape(value));
    let mut numbers = itoa::Buffer::new();
    // Where the first line's fraud fields are in `out`: the other lines copy them.
    let mut fraud_fields: Option<Range<usize>> = None;
    for (name, &value) in &meta.readings {
        if plain && !needs_escape(name) {
            // Nothing to escape: the series key is the strings as they are, exactly what
            // the builder below would write, without its formatting machinery (which
            // cost more than everything else the sink does per record).
            out.extend_from_slice(name.as_bytes());
            for (key, value) in tags {
                if !value.is_empty() {
                    out.push(b',');
                    out.extend_from_slice(key.as_bytes());
                    out.push(b'=');
                    out.extend_from_slice(value.as_bytes());
                }
            }
        } else {
            // The line protocol crate escapes the measurement and the tags; the builder
            // leaves them in `out` when it is dropped before the fields.
            let mut line = LineProtocolBuilder::new_with(&mut *out).measurement(name);
            for (key, value) in tags {
                if !value.is_empty() {
                    line = line.tag(key, value);
                }
            }
        }
        // The fields and the timestamp are numbers: nothing in them needs escaping.
        out.extend_from_slice(b" value=");
        write_f32(out, value);
        out.extend_from_slice(b",seq=");
        out.extend_from_slice(numbers.format(seq).as_bytes());
        out.push(b'i');
        if let Some(fraud) = &meta.fraud {
            match &fraud_fields {
                Some(range) => out.extend_from_within(range.clone()),
                None => {
                    let start = out.len();
                    push_fraud_fields(fraud, out);
                    fraud_fields = Some(start..out.len());
                }
            }
        }
        out.push(b' ');
        out.extend_from_slice(numbers.format(time_ns).as_bytes());
        out.push(b'\n');
    }
    Ok(meta.readings.len())
}

/// The verdict's fields, each with its leading comma: `fraud_score` (left out if it is not
/// a finite number, which line protocol cannot carry; the engine never makes one),
/// `fraud_detectors` when any fired, `quarantined` when true.
fn push_fraud_fields(fraud: &FraudMeta, out: &mut Vec<u8>) {
    if fraud.score.is_finite() {
        out.extend_from_slice(b",fraud_score=");
        write_f32(out, fraud.score);
    }
    if !fraud.detectors.is_empty() {
        out.extend_from_slice(b",fraud_detectors=\"");
        for (i, detector) in fraud.detectors.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // A string field escapes `"` and `\` only (the detectors' own names never
            // have either, but the record came from disk).
            for &b in detector.as_bytes() {
                if b == b'"' || b == b'\\' {
                    out.push(b'\\');
                }
                out.push(b);
            }
        }
        out.push(b'"');
    }
    if fraud.quarantined {
        out.extend_from_slice(b",quarantined=true");
    }
}

/// Whether a measurement, tag key or tag value may need a backslash in line protocol. An
/// `=` in a measurement (which line protocol leaves as it is) also takes the builder path;
/// that is only slower, never different.
fn needs_escape(value: &str) -> bool {
    value
        .bytes()
        .any(|b| matches!(b, b' ' | b',' | b'=' | b'\\'))
}

/// An `f32` with its shortest round-trip digits (`21.7`, not the f64 widening's
/// `21.700000762939453`). Digits without a suffix are a float in line protocol.
fn write_f32(out: &mut Vec<u8>, value: f32) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
}

fn check_line_break(what: &'static str, value: &str) -> Result<(), Unrepresentable> {
    if value.contains(['\n', '\r']) {
        return Err(Unrepresentable::LineBreak {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::egress::Delivery;
    use crate::log::RecordKind;
    use crate::record::{self, DeadLetterMeta};
    use std::collections::BTreeMap;

    pub(crate) fn meta(
        device: &str,
        seq: u64,
        ts_ms: u64,
        readings: &[(&str, f32)],
    ) -> ReadingMeta {
        ReadingMeta {
            device: device.to_string(),
            seq,
            ts_ms,
            readings: readings
                .iter()
                .map(|(name, value)| ((*name).to_string(), *value))
                .collect::<BTreeMap<_, _>>(),
            topic: format!("devices/{device}/telemetry"),
            received_ms: ts_ms.saturating_add(3),
            node: "node-a".to_string(),
            shard: 0,
            qos: 1,
            region: "eu-west".to_string(),
            project: "forest-7".to_string(),
            location: "51.5,-0.1".to_string(),
            sensor_type: "ndir".to_string(),
            peer: String::new(),
            connected_ms: 0,
            fraud: None,
        }
    }

    /// An `f32` through the builder, the way the sink wrote it before its fast path.
    struct Float32(f32);

    impl influxdb_line_protocol::builder::FieldValue for Float32 {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)
        }
    }

    /// The lines of `meta` built entirely with the line protocol crate's builder.
    fn reference_lines(meta: &ReadingMeta) -> Vec<u8> {
        let mut out = Vec::new();
        let seq = i64::try_from(meta.seq).unwrap();
        let time_ns = point_time_ns(meta.ts_ms, meta.seq).unwrap();
        let tags = [
            ("device", meta.device.as_str()),
            ("project", meta.project.as_str()),
            ("region", meta.region.as_str()),
            ("sensor_type", meta.sensor_type.as_str()),
        ];
        for (name, &value) in &meta.readings {
            let mut line = LineProtocolBuilder::new_with(&mut out).measurement(name);
            for (key, value) in tags {
                if !value.is_empty() {
                    line = line.tag(key, value);
                }
            }
            let mut line = line.field("value", Float32(value)).field("seq", seq);
            if let Some(fraud) = &meta.fraud {
                if fraud.score.is_finite() {
                    line = line.field("fraud_score", Float32(fraud.score));
                }
                if !fraud.detectors.is_empty() {
                    line = line.field("fraud_detectors", fraud.detectors.join(",").as_str());
                }
                if fraud.quarantined {
                    line = line.field("quarantined", true);
                }
            }
            line.timestamp(time_ns).close_line();
        }
        out
    }

    /// Mostly plain names (the fast path), some with characters line protocol escapes.
    fn name(max: usize) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy as _;
        proptest::prop_oneof![
            3 => proptest::string::string_regex(&format!("[a-z0-9_.-]{{1,{max}}}")).unwrap(),
            1 => proptest::string::string_regex(&format!("[a-z ,=\\\\é]{{1,{max}}}")).unwrap(),
        ]
        .boxed()
    }

    /// Mostly detector-like names, some with what a string field escapes.
    fn detector_name() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy as _;
        proptest::prop_oneof![
            3 => proptest::string::string_regex("[a-z_]{1,12}").unwrap(),
            1 => proptest::string::string_regex("[a-z \"\\\\,=]{1,8}").unwrap(),
        ]
        .boxed()
    }

    proptest::proptest! {
        /// The fast path writes byte for byte what the crate's builder writes, for any
        /// names, tag values (escapes included) and numbers.
        #[test]
        fn lines_equal_the_builders(
            device in name(12),
            region in proptest::option::of(name(8)),
            project in proptest::option::of(name(8)),
            sensor in proptest::option::of(name(6)),
            names in proptest::collection::btree_map(name(10), proptest::num::f32::NORMAL | proptest::num::f32::ZERO | proptest::num::f32::SUBNORMAL, 1..4),
            seq in 0u64..i64::MAX as u64,
            ts_ms in 0u64..9_000_000_000_000,
            fraud in proptest::option::of((
                0.0f32..=1.0,
                proptest::collection::vec(detector_name(), 0..4),
                proptest::bool::ANY,
                proptest::bool::ANY,
            )),
        ) {
            let mut m = meta(&device, seq, ts_ms, &[]);
            m.region = region.unwrap_or_default();
            m.project = project.unwrap_or_default();
            m.sensor_type = sensor.unwrap_or_default();
            m.readings = names;
            m.fraud = fraud.map(|(score, detectors, flagged, quarantined)| FraudMeta {
                score,
                detectors,
                flagged,
                quarantined,
            });
            let mut ours = Vec::new();
            push_lines(&m, &mut ours).unwrap();
            proptest::prop_assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(reference_lines(&m)).unwrap()
            );
        }
    }

    pub(crate) fn lines(meta: &ReadingMeta) -> String {
        let mut out = Vec::new();
        push_lines(meta, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    pub(crate) fn reading(shard: usize, offset: u64, meta: &ReadingMeta) -> Delivery {
        let mut payload = Vec::new();
        record::encode(meta, b"raw", &mut payload);
        Delivery::new(shard, offset, RecordKind::Reading, payload)
    }

    pub(crate) fn dead_letter(shard: usize, offset: u64) -> Delivery {
        let meta = DeadLetterMeta {
            reason: "bad_signature".into(),
            detail: "no".into(),
            device: "d".into(),
            topic: "t".into(),
            received_ms: 1,
            node: "n".into(),
            shard,
            qos: 1,
            peer: "p".into(),
            seq: None,
            connected_ms: 0,
        };
        let mut payload = Vec::new();
        record::encode(&meta, b"raw", &mut payload);
        Delivery::new(shard, offset, RecordKind::DeadLetter, payload)
    }

    #[test]
    fn one_line_per_reading_with_its_name_as_measurement() {
        let m = meta(
            "co2-1",
            42,
            1_700_000_000_123,
            &[("temperature_c", 21.7), ("co2_ppm", 415.0)],
        );
        assert_eq!(
            lines(&m),
            "co2_ppm,device=co2-1,project=forest-7,region=eu-west,sensor_type=ndir \
             value=415,seq=42i 1700000000123000042\n\
             temperature_c,device=co2-1,project=forest-7,region=eu-west,sensor_type=ndir \
             value=21.7,seq=42i 1700000000123000042\n"
        );
    }

    fn verdict(score: f32, detectors: &[&str], flagged: bool, quarantined: bool) -> FraudMeta {
        FraudMeta {
            score,
            detectors: detectors.iter().map(|d| (*d).to_string()).collect(),
            flagged,
            quarantined,
        }
    }

    #[test]
    fn every_point_of_a_scored_reading_carries_the_verdict() {
        let mut m = meta(
            "co2-1",
            42,
            1_700_000_000_123,
            &[("temperature_c", 21.7), ("co2_ppm", 415.0)],
        );
        m.fraud = Some(verdict(0.93, &["bounds", "peers"], true, true));
        assert_eq!(
            lines(&m),
            "co2_ppm,device=co2-1,project=forest-7,region=eu-west,sensor_type=ndir \
             value=415,seq=42i,fraud_score=0.93,fraud_detectors=\"bounds,peers\",quarantined=true \
             1700000000123000042\n\
             temperature_c,device=co2-1,project=forest-7,region=eu-west,sensor_type=ndir \
             value=21.7,seq=42i,fraud_score=0.93,fraud_detectors=\"bounds,peers\",quarantined=true \
             1700000000123000042\n"
        );
        // Flagged, not quarantined: no `quarantined` field at all.
        m.fraud = Some(verdict(0.5, &["rate"], true, false));
        let text = lines(&m);
        assert!(
            text.contains("seq=42i,fraud_score=0.5,fraud_detectors=\"rate\" 1700"),
            "{text}"
        );
        assert!(!text.contains("quarantined"), "{text}");
        // Scored clean: the score alone.
        m.fraud = Some(verdict(0.0, &[], false, false));
        let text = lines(&m);
        assert_eq!(text.matches(",fraud_score=0 ").count(), 2, "{text}");
        assert!(!text.contains("fraud_detectors"), "{text}");
        // Not scored (scoring off, or a record older than scoring): as before.
        m.fraud = None;
        assert!(!lines(&m).contains("fraud"));
    }

    #[test]
    fn the_verdict_parses_back_with_its_types() {
        let mut m = meta("d", 3, 99, &[("co2_ppm", 1.0), ("rh_pct", 2.0)]);
        m.fraud = Some(verdict(0.25, &["odd \"one\"", r"back\slash"], false, true));
        let text = lines(&m);
        let parsed: Vec<_> = influxdb_line_protocol::parse_lines(&text)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), 2);
        for line in &parsed {
            let field = |key: &str| {
                line.field_set
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("{key} in {text}"))
            };
            let influxdb_line_protocol::FieldValue::F64(score) = field("fraud_score") else {
                panic!("fraud_score is not a float: {text}")
            };
            assert_eq!(score as f32, 0.25);
            assert_eq!(
                field("quarantined"),
                influxdb_line_protocol::FieldValue::Boolean(true)
            );
            let influxdb_line_protocol::FieldValue::String(detectors) = field("fraud_detectors")
            else {
                panic!("fraud_detectors is not a string: {text}")
            };
            assert_eq!(detectors.to_string(), r#"odd "one",back\slash"#);
        }
    }

    #[test]
    fn a_detector_with_a_line_break_writes_nothing() {
        let mut out = b"kept\n".to_vec();
        let mut m = meta("d", 1, 1, &[("co2_ppm", 1.0)]);
        m.fraud = Some(verdict(0.9, &["a\nb"], true, true));
        assert!(matches!(
            push_lines(&m, &mut out),
            Err(Unrepresentable::LineBreak {
                what: "detector",
                ..
            })
        ));
        assert_eq!(out, b"kept\n");
    }

    #[test]
    fn tag_values_and_measurements_are_escaped() {
        let mut m = meta("dev 1", 1, 5, &[("odd name,x", -0.5)]);
        m.region = "north, east=1".to_string();
        m.project = r"back\slash".to_string();
        assert_eq!(
            lines(&m),
            "odd\\ name\\,x,device=dev\\ 1,project=back\\\\slash,region=north\\,\\ east\\=1,\
             sensor_type=ndir value=-0.5,seq=1i 5000001\n"
        );
    }

    #[test]
    fn empty_tags_are_left_out() {
        let mut m = meta("d", 7, 1, &[("co2_ppm", 1.25)]);
        m.region.clear();
        m.project.clear();
        m.sensor_type.clear();
        assert_eq!(lines(&m), "co2_ppm,device=d value=1.25,seq=7i 1000007\n");
    }

    #[test]
    fn the_timestamp_carries_the_sequence_below_the_millisecond() {
        assert_eq!(
            point_time_ns(1_700_000_000_000, 0),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            point_time_ns(1_700_000_000_000, 999_999),
            Some(1_700_000_000_000_999_999)
        );
        // Only the sub-millisecond digits: seq 1_000_007 lands where seq 7 would.
        assert_eq!(point_time_ns(10, 1_000_007), Some(10_000_007));
        // Two readings in one millisecond stay apart.
        assert_ne!(point_time_ns(10, 8), point_time_ns(10, 9));
        assert_eq!(point_time_ns(i64::MAX as u64 / 1_000_000 + 1, 0), None);
        assert_eq!(point_time_ns(u64::MAX, 0), None);
    }

    #[test]
    fn unrepresentable_records_write_nothing() {
        let mut out = b"kept\n".to_vec();
        let mut m = meta("d", 1, 1, &[("co2_ppm", 1.0)]);
        m.region = "a\nb value=1 1".to_string();
        assert!(matches!(
            push_lines(&m, &mut out),
            Err(Unrepresentable::LineBreak { what: "region", .. })
        ));
        let m = meta("d", 1, 1, &[("#co2", 1.0)]);
        assert_eq!(
            push_lines(&m, &mut out),
            Err(Unrepresentable::Comment("#co2".to_string()))
        );
        let m = meta("d", u64::MAX, 1, &[("co2", 1.0)]);
        assert_eq!(
            push_lines(&m, &mut out),
            Err(Unrepresentable::Seq(u64::MAX))
        );
        let m = meta("d", 1, u64::MAX, &[("co2", 1.0)]);
        assert!(matches!(
            push_lines(&m, &mut out),
            Err(Unrepresentable::Timestamp { .. })
        ));
        assert_eq!(out, b"kept\n");
    }

    #[test]
    fn lines_parse_back_with_the_same_values() {
        let mut m = meta("dev=1", 3, 99, &[("a b", 1e-7), ("c", -3.4e38)]);
        m.region = "x, y=z".to_string();
        let text = lines(&m);
        let parsed: Vec<_> = influxdb_line_protocol::parse_lines(&text)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].series.measurement.to_string(), "a b");
        let tags = parsed[0].series.tag_set.as_ref().unwrap();
        let region = tags.iter().find(|(k, _)| *k == "region").unwrap();
        assert_eq!(region.1.to_string(), "x, y=z");
        let device = tags.iter().find(|(k, _)| *k == "device").unwrap();
        assert_eq!(device.1.to_string(), "dev=1");
        for line in &parsed {
            let value = &line
                .field_set
                .iter()
                .find(|(k, _)| *k == "value")
                .unwrap()
                .1;
            let influxdb_line_protocol::FieldValue::F64(v) = value else {
                panic!("value is not a float: {value:?}")
            };
            assert!(*v as f32 == 1e-7 || *v as f32 == -3.4e38, "{v}");
            assert_eq!(line.timestamp, Some(99_000_003));
        }
    }
}
