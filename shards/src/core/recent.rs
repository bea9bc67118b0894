//! The last readings a device had accepted, as (sequence, payload hash), so that a QoS 1/2
//! redelivery (DUP) of an accepted sequence can be told from a different message under the
//! same sequence (a forged or altered one). A redelivery that matches is acknowledged with
//! nothing stored; anything else is still acknowledged (the device must move on) but
//! recorded as a dead letter `redelivery_mismatch`.
//!
//! Limits: [`RECENT_READINGS_MAX`] entries per device (16 × 16 bytes), in memory only: after
//! a restart, or once 16 later readings were accepted, a redelivery cannot be compared
//! and is recorded too. The hash is 64 bits of SipHash with fixed keys: finding another
//! payload with the same hash takes about 2^64 tries.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hasher};

/// Readings remembered per device.
pub const RECENT_READINGS_MAX: usize = 16;

/// How a DUP redelivery compares with the reading stored under its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// The same payload: the stored reading.
    Same,
    /// Another payload under the sequence of a stored reading.
    Differs,
    /// The sequence is not among the last readings (older, or accepted before a restart).
    Unknown,
}

impl Redelivery {
    /// The dead letter's detail when it is not the stored reading.
    #[must_use]
    pub fn detail(self, seq: u64) -> Option<String> {
        match self {
            Redelivery::Same => None,
            Redelivery::Differs => Some(format!(
                "DUP redelivery of sequence {seq} differs from the stored reading"
            )),
            Redelivery::Unknown => Some(format!(
                "DUP redelivery of sequence {seq} is too old to compare with the stored reading"
            )),
        }
    }
}

/// A device's last accepted readings, oldest first.
#[derive(Debug, Clone, Default)]
pub struct RecentReadings {
    ring: VecDeque<(u64, u64)>,
}

impl RecentReadings {
    /// A reading with `seq` and `payload` was accepted.
    pub fn push(&mut self, seq: u64, payload: &[u8]) {
        if self.ring.len() == RECENT_READINGS_MAX {
            self.ring.pop_front();
        }
        self.ring.push_back((seq, payload_hash(payload)));
    }

    /// Compares a redelivery with the reading stored under `seq`.
    #[must_use]
    pub fn compare(&self, seq: u64, payload: &[u8]) -> Redelivery {
        match self.ring.iter().rev().find(|(s, _)| *s == seq) {
            Some((_, hash)) if *hash == payload_hash(payload) => Redelivery::Same,
            Some(_) => Redelivery::Differs,
            None => Redelivery::Unknown,
        }
    }
}

fn payload_hash(payload: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(payload);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_differs_and_forgotten() {
        let mut recent = RecentReadings::default();
        recent.push(1, b"one");
        assert_eq!(recent.compare(1, b"one"), Redelivery::Same);
        assert_eq!(recent.compare(1, b"onf"), Redelivery::Differs);
        assert_eq!(recent.compare(2, b"one"), Redelivery::Unknown);
        for seq in 2..=u64::try_from(RECENT_READINGS_MAX).unwrap_or(16) {
            recent.push(seq, b"x");
        }
        assert_eq!(recent.compare(1, b"one"), Redelivery::Same);
        recent.push(100, b"x");
        assert_eq!(recent.compare(1, b"one"), Redelivery::Unknown);
        assert_eq!(recent.compare(100, b"x"), Redelivery::Same);
    }
}
