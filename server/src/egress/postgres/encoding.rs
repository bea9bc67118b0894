//! What a batch writes, as pure functions: a delivery reduced to what the statistics
//! need ([`Item`]), and a run of them, given the shard's cursor, turned into per-device
//! deltas, dead-letter rows and alert rows ([`plan`]).

use crate::egress::sink::Decoded;
use crate::egress::Delivery;
use crate::record::{FraudMeta, ReadingMeta};
use std::collections::BTreeMap;

/// A delivery reduced to what the statistics need, decoded once on arrival.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Item {
    pub(super) offset: u64,
    pub(super) body: ItemBody,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum ItemBody {
    Reading {
        device: String,
        seq: u64,
        received_ms: u64,
        /// Marked quarantined by the fraud scorer.
        quarantined: bool,
        /// Flagged by the fraud scorer: its `alerts` row (boxed: few readings have one).
        alert: Option<Box<AlertRow>>,
    },
    DeadLetter {
        device: String,
        seq: Option<u64>,
        reason: String,
        detail: String,
        received_ms: u64,
    },
    /// Undecodable or opaque: nothing to count, covered by the cursor all the same.
    Other,
}

/// A flagged reading's row in `alerts` (its place in the log, node, shard and offset, is
/// the batch's).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AlertRow {
    pub(super) device: String,
    pub(super) seq: u64,
    pub(super) ts_ms: i64,
    pub(super) received_ms: i64,
    pub(super) score: f32,
    /// The detectors, as a JSON array of strings (any name survives the trip).
    pub(super) detectors_json: String,
    pub(super) quarantined: bool,
    /// Reading name to value, as a JSON object.
    pub(super) readings_json: String,
    pub(super) location: String,
    pub(super) region: String,
    pub(super) project: String,
    /// The reading's log offset.
    pub(super) offset: i64,
}

impl AlertRow {
    fn new(meta: &ReadingMeta, fraud: &FraudMeta, offset: u64) -> Self {
        AlertRow {
            device: meta.device.clone(),
            seq: meta.seq,
            ts_ms: bigint(meta.ts_ms),
            received_ms: bigint(meta.received_ms),
            score: fraud.score,
            // Plain strings and numbers: serialising them cannot fail.
            detectors_json: serde_json::to_string(&fraud.detectors).unwrap_or_default(),
            quarantined: fraud.quarantined,
            readings_json: serde_json::to_string(&meta.readings).unwrap_or_default(),
            location: meta.location.clone(),
            region: meta.region.clone(),
            project: meta.project.clone(),
            offset: bigint(offset),
        }
    }

    /// Approximate bytes of its parameters.
    fn bytes(&self) -> u64 {
        (self.device.len()
            + self.detectors_json.len()
            + self.readings_json.len()
            + self.location.len()
            + self.region.len()
            + self.project.len()) as u64
            + 56
    }
}

impl Item {
    pub(super) fn from_delivery(delivery: &Delivery) -> Self {
        let body = match delivery.decoded() {
            Decoded::Reading(meta) => ItemBody::Reading {
                device: meta.device.clone(),
                seq: meta.seq,
                received_ms: meta.received_ms,
                quarantined: meta.fraud.as_ref().is_some_and(|fraud| fraud.quarantined),
                alert: meta
                    .fraud
                    .as_ref()
                    .filter(|fraud| fraud.flagged)
                    .map(|fraud| Box::new(AlertRow::new(meta, fraud, delivery.offset))),
            },
            Decoded::DeadLetter(meta) => ItemBody::DeadLetter {
                device: meta.device.clone(),
                seq: meta.seq,
                reason: meta.reason.clone(),
                detail: meta.detail.clone(),
                received_ms: meta.received_ms,
            },
            Decoded::Other => ItemBody::Other,
        };
        Item {
            offset: delivery.offset,
            body,
        }
    }
}

/// One device's share of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeviceDelta {
    pub(super) device: String,
    pub(super) readings: i64,
    pub(super) dead_letters: i64,
    /// Readings flagged (an alert each) and quarantined by the fraud scorer.
    pub(super) flagged: i64,
    pub(super) quarantined: i64,
    /// Newest server receive time of any of its records, ms since the epoch.
    pub(super) last_seen_ms: i64,
    /// Sequence of its newest reading by offset (none: no reading in the batch, or a
    /// sequence beyond bigint).
    pub(super) last_seq: Option<i64>,
}

/// A dead letter's row in `dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeadLetterRow {
    pub(super) offset: i64,
    pub(super) device: String,
    pub(super) seq: Option<i64>,
    pub(super) reason: String,
    pub(super) detail: String,
    pub(super) received_ms: i64,
}

/// What applying a batch writes, given the shard's cursor.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Plan {
    /// Per device, sorted by id (concurrent writers then lock rows in one order).
    pub(super) stats: Vec<DeviceDelta>,
    pub(super) dead_letters: Vec<DeadLetterRow>,
    /// Sorted by (device, seq), the key's order, for the same reason.
    pub(super) alerts: Vec<AlertRow>,
    /// Readings and dead letters counted.
    pub(super) applied: u64,
    /// Records below the cursor, skipped as already applied.
    pub(super) skipped: u64,
    /// Approximate bytes of the parameters sent.
    pub(super) bytes: u64,
}

/// Offsets and sequences are stored as bigint; a log offset never comes near its limit.
pub(super) fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What applying `items` (strictly increasing offsets) writes when the shard's cursor is
/// `cursor`: records below it are already applied and skipped. Sequence numbers above
/// bigint (allowed by the protocol, unheard of in practice) are counted but not stored.
pub(super) fn plan(items: &[Item], cursor: u64) -> Plan {
    assert!(
        items.windows(2).all(|w| w[0].offset < w[1].offset),
        "a batch holds strictly increasing offsets"
    );
    let mut devices: BTreeMap<&str, DeviceDelta> = BTreeMap::new();
    let mut out = Plan::default();
    for item in items {
        if item.offset < cursor {
            out.skipped += 1;
            continue;
        }
        let (device, received_ms) = match &item.body {
            ItemBody::Reading {
                device,
                received_ms,
                ..
            }
            | ItemBody::DeadLetter {
                device,
                received_ms,
                ..
            } => (device.as_str(), bigint(*received_ms)),
            ItemBody::Other => continue,
        };
        let delta = devices.entry(device).or_insert_with(|| {
            out.bytes += device.len() as u64 + 40;
            DeviceDelta {
                device: device.to_string(),
                readings: 0,
                dead_letters: 0,
                flagged: 0,
                quarantined: 0,
                last_seen_ms: received_ms,
                last_seq: None,
            }
        });
        delta.last_seen_ms = delta.last_seen_ms.max(received_ms);
        out.applied += 1;
        match &item.body {
            ItemBody::Reading {
                seq,
                quarantined,
                alert,
                ..
            } => {
                delta.readings += 1;
                delta.last_seq = i64::try_from(*seq).ok();
                delta.quarantined += i64::from(*quarantined);
                if let Some(alert) = alert {
                    delta.flagged += 1;
                    out.bytes += alert.bytes();
                    out.alerts.push(AlertRow::clone(alert));
                }
            }
            ItemBody::DeadLetter {
                seq,
                reason,
                detail,
                ..
            } => {
                delta.dead_letters += 1;
                out.bytes += (device.len() + reason.len() + detail.len()) as u64 + 32;
                out.dead_letters.push(DeadLetterRow {
                    offset: bigint(item.offset),
                    device: device.to_string(),
                    seq: seq.and_then(|s| i64::try_from(s).ok()),
                    reason: reason.clone(),
                    detail: detail.clone(),
                    received_ms,
                });
            }
            ItemBody::Other => {}
        }
    }
    out.stats = devices.into_values().collect();
    out.alerts
        .sort_unstable_by(|a, b| (&a.device, a.seq).cmp(&(&b.device, b.seq)));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn reading(offset: u64, device: &str, seq: u64, received_ms: u64) -> Item {
        Item {
            offset,
            body: ItemBody::Reading {
                device: device.to_string(),
                seq,
                received_ms,
                quarantined: false,
                alert: None,
            },
        }
    }

    /// A scored reading as the shard writes it, through the record format.
    fn scored(offset: u64, device: &str, seq: u64, fraud: Option<FraudMeta>) -> Item {
        let meta = ReadingMeta {
            device: device.to_string(),
            seq,
            ts_ms: 1_000 + seq,
            readings: BTreeMap::from([("co2_ppm".to_string(), 415.5)]),
            topic: format!("devices/{device}/telemetry"),
            received_ms: 2_000 + seq,
            node: "node-a".to_string(),
            shard: 0,
            qos: 1,
            region: "eu-west".to_string(),
            project: String::new(),
            location: "site-1".to_string(),
            sensor_type: String::new(),
            peer: String::new(),
            connected_ms: 0,
            fraud,
        };
        let mut payload = Vec::new();
        crate::record::encode(&meta, b"raw", &mut payload);
        Item::from_delivery(&Delivery::new(
            0,
            offset,
            crate::log::RecordKind::Reading,
            payload,
        ))
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
    fn flagged_readings_become_alert_rows_and_verdicts_are_counted() {
        let items = [
            scored(
                0,
                "b",
                9,
                Some(verdict(0.95, &["bounds", "peers"], true, true)),
            ),
            scored(1, "a", 5, Some(verdict(0.1, &[], false, false))),
            scored(2, "a", 6, Some(verdict(0.6, &["rate"], true, false))),
            scored(3, "b", 10, None),
            // Quarantined without an alert (thresholds set so): counted, no row.
            scored(4, "c", 1, Some(verdict(0.4, &["model"], false, true))),
            scored(5, "a", 2, Some(verdict(0.7, &["clone"], true, false))),
        ];
        let plan = plan(&items, 0);
        let keys: Vec<(&str, u64)> = plan
            .alerts
            .iter()
            .map(|a| (a.device.as_str(), a.seq))
            .collect();
        assert_eq!(keys, [("a", 2), ("a", 6), ("b", 9)], "sorted by key");
        let b = &plan.alerts[2];
        assert_eq!(b.offset, 0);
        assert_eq!((b.ts_ms, b.received_ms), (1_009, 2_009));
        assert_eq!(b.score, 0.95);
        assert!(b.quarantined);
        assert_eq!(b.detectors_json, r#"["bounds","peers"]"#);
        assert_eq!(b.readings_json, r#"{"co2_ppm":415.5}"#);
        assert_eq!(
            (b.location.as_str(), b.region.as_str()),
            ("site-1", "eu-west")
        );
        assert!(!plan.alerts[1].quarantined);
        let counts: Vec<(&str, i64, i64, i64)> = plan
            .stats
            .iter()
            .map(|d| (d.device.as_str(), d.readings, d.flagged, d.quarantined))
            .collect();
        assert_eq!(counts, [("a", 3, 2, 0), ("b", 2, 1, 1), ("c", 1, 0, 1)]);
        // Below the cursor: neither counted nor alerted again.
        let replay = super::plan(&items, 3);
        assert_eq!(replay.alerts.len(), 1);
        assert_eq!(replay.alerts[0].seq, 2);
        assert_eq!(replay.stats.iter().map(|d| d.quarantined).sum::<i64>(), 1);
    }

    fn dead_letter(offset: u64, device: &str, seq: Option<u64>, received_ms: u64) -> Item {
        Item {
            offset,
            body: ItemBody::DeadLetter {
                device: device.to_string(),
                seq,
                reason: "bad_signature".to_string(),
                detail: "signature does not verify".to_string(),
                received_ms,
            },
        }
    }

    #[test]
    fn a_batch_aggregates_per_device() {
        let items = [
            reading(10, "b", 7, 1_000),
            reading(11, "a", 3, 1_005),
            dead_letter(12, "b", Some(99), 1_010),
            reading(13, "b", 8, 990),
            Item {
                offset: 14,
                body: ItemBody::Other,
            },
            dead_letter(15, "c", None, 1_020),
        ];
        let plan = plan(&items, 0);
        assert_eq!(plan.applied, 5);
        assert_eq!(plan.skipped, 0);
        let devices: Vec<_> = plan.stats.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(devices, ["a", "b", "c"], "sorted by id");
        let b = &plan.stats[1];
        assert_eq!((b.readings, b.dead_letters), (2, 1));
        // Newest reading by offset, not the largest, and a dead letter's seq is ignored.
        assert_eq!(b.last_seq, Some(8));
        assert_eq!(b.last_seen_ms, 1_010, "newest receive time of any record");
        let c = &plan.stats[2];
        assert_eq!((c.readings, c.dead_letters, c.last_seq), (0, 1, None));
        assert_eq!(plan.dead_letters.len(), 2);
        assert_eq!(plan.dead_letters[0].offset, 12);
        assert_eq!(plan.dead_letters[0].seq, Some(99));
        assert_eq!(plan.dead_letters[1].seq, None);
        assert!(plan.bytes > 0);
    }

    #[test]
    fn records_below_the_cursor_are_skipped() {
        let items: Vec<Item> = (100..110).map(|o| reading(o, "a", o * 2, o)).collect();
        let plan = plan(&items, 105);
        assert_eq!((plan.applied, plan.skipped), (5, 5));
        assert_eq!(plan.stats[0].readings, 5);
        assert_eq!(plan.stats[0].last_seq, Some(218));
        let all_done = super::plan(&items, 110);
        assert_eq!((all_done.applied, all_done.skipped), (0, 10));
        assert!(all_done.stats.is_empty());
        let fresh = super::plan(&items, 0);
        assert_eq!(fresh.applied, 10);
    }

    #[test]
    fn a_sequence_beyond_bigint_is_counted_not_stored() {
        let plan = plan(&[reading(0, "a", u64::MAX, 5)], 0);
        assert_eq!(plan.stats[0].readings, 1);
        assert_eq!(plan.stats[0].last_seq, None);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn a_batch_never_repeats_an_offset() {
        let _ = plan(&[reading(5, "a", 1, 1), reading(5, "a", 1, 1)], 0);
    }
}
