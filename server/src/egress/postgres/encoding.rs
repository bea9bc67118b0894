//! What a batch writes, as pure functions: a delivery reduced to what the statistics
//! need ([`Item`]), and a run of them, given the shard's cursor, turned into per-device
//! deltas and dead-letter rows ([`plan`]).

use crate::egress::sink::Decoded;
use crate::egress::Delivery;
use std::collections::BTreeMap;

/// A delivery reduced to what the statistics need, decoded once on arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Item {
    pub(super) offset: u64,
    pub(super) body: ItemBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ItemBody {
    Reading {
        device: String,
        seq: u64,
        received_ms: u64,
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

impl Item {
    pub(super) fn from_delivery(delivery: &Delivery) -> Self {
        let body = match delivery.decoded() {
            Decoded::Reading(meta) => ItemBody::Reading {
                device: meta.device.clone(),
                seq: meta.seq,
                received_ms: meta.received_ms,
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Per device, sorted by id (concurrent writers then lock rows in one order).
    pub(super) stats: Vec<DeviceDelta>,
    pub(super) dead_letters: Vec<DeadLetterRow>,
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
                last_seen_ms: received_ms,
                last_seq: None,
            }
        });
        delta.last_seen_ms = delta.last_seen_ms.max(received_ms);
        out.applied += 1;
        match &item.body {
            ItemBody::Reading { seq, .. } => {
                delta.readings += 1;
                delta.last_seq = i64::try_from(*seq).ok();
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
            },
        }
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
