//! The checks a reading passes on its home shard before the signature is verified, in
//! order of cost, so that garbage and replays never reach the expensive step:
//!
//! 1. size: the payload is within `envelope_bytes_max` (nothing parsed yet);
//! 2. topic ACL: the topic is the connected device's own uplink topic;
//! 3. envelope decoding (binary or JSON);
//! 4. the envelope's device id is the connected device's;
//! 5. replay window: the sequence number was not accepted before and is not too old;
//! 6. clock skew: the device timestamp is within `clock_skew_ms_max` of the server clock.
//!
//! Then the caller verifies the signature (in batches) and only after that commits the
//! sequence to the replay window (see [`crate::replay`] for why).

use crate::replay::{ReplayError, ReplayWindow};
use ingestd_codec::envelope::{self, Envelope, EnvelopeError};

/// The limits of [`precheck`], from config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub topic_prefix: String,
    pub envelope_bytes_max: usize,
    pub clock_skew_ms_max: u64,
}

/// Why a reading was refused before or at signature verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Published to another device's uplink topic.
    TopicNotAllowed,
    /// The envelope did not decode, named another device, or did not verify.
    Envelope(EnvelopeError),
    /// The sequence number was replayed or is too old.
    Replay(ReplayError),
}

impl Rejection {
    /// The stable dead-letter reason code.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TopicNotAllowed => "topic_not_allowed",
            Rejection::Envelope(error) => error.reason(),
            Rejection::Replay(error) => error.reason(),
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::TopicNotAllowed => write!(f, "topic is not the device's own uplink topic"),
            Rejection::Envelope(error) => error.fmt(f),
            Rejection::Replay(error) => error.fmt(f),
        }
    }
}

/// Is `topic` the uplink topic of `device_id`?
#[must_use]
pub fn topic_allowed(device_id: &str, topic: &str, topic_prefix: &str) -> bool {
    envelope::device_id_from_topic(topic, topic_prefix) == Some(device_id)
}

/// Runs checks 1 to 6 for a PUBLISH from the authenticated `device_id`.
pub fn precheck<'a>(
    device_id: &str,
    topic: &str,
    payload: &'a [u8],
    replay: &ReplayWindow,
    now_ms: u64,
    limits: &Limits,
) -> Result<Envelope<'a>, Rejection> {
    if payload.len() > limits.envelope_bytes_max {
        return Err(Rejection::Envelope(EnvelopeError::Oversize {
            len: payload.len(),
            max: limits.envelope_bytes_max,
        }));
    }
    match envelope::device_id_from_topic(topic, &limits.topic_prefix) {
        None => return Err(Rejection::Envelope(EnvelopeError::BadTopic)),
        Some(owner) if owner != device_id => return Err(Rejection::TopicNotAllowed),
        Some(_) => {}
    }
    let decoded =
        envelope::decode(payload, limits.envelope_bytes_max).map_err(Rejection::Envelope)?;
    decoded
        .check_device(device_id)
        .map_err(Rejection::Envelope)?;
    replay.check(decoded.seq).map_err(Rejection::Replay)?;
    envelope::check_clock_skew(decoded.ts_ms, now_ms, limits.clock_skew_ms_max)
        .map_err(Rejection::Envelope)?;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use ingestd_codec::envelope::{Kind, Reading};

    const NOW_MS: u64 = 1_764_201_600_000;

    fn limits() -> Limits {
        Limits {
            topic_prefix: "devices".to_string(),
            envelope_bytes_max: 1024,
            clock_skew_ms_max: 300_000,
        }
    }

    fn signed(device: &str, seq: u64, ts_ms: u64) -> Vec<u8> {
        let key = SigningKey::from_bytes(&[9; 32]);
        let topic = format!("devices/{device}/telemetry");
        let mut scratch = Vec::new();
        let env = envelope::sign(
            &key,
            &topic,
            device,
            seq,
            ts_ms,
            &[Reading::new(Kind::Co2Ppm, 415.0)],
            &mut scratch,
        )
        .unwrap();
        let mut out = Vec::new();
        env.encode_binary(&mut out);
        out
    }

    #[test]
    fn a_good_reading_passes_every_check() {
        let payload = signed("co2-1", 7, NOW_MS);
        let env = precheck(
            "co2-1",
            "devices/co2-1/telemetry",
            &payload,
            &ReplayWindow::new(),
            NOW_MS,
            &limits(),
        )
        .unwrap();
        assert_eq!(env.seq, 7);
        assert_eq!(env.device_id, "co2-1");
    }

    #[test]
    fn each_check_refuses_with_its_reason() {
        let good = signed("co2-1", 7, NOW_MS);
        let other_device = signed("co2-2", 7, NOW_MS);
        let stale_clock = signed("co2-1", 7, NOW_MS - 300_001);
        let mut replay = ReplayWindow::new();
        replay.commit(7).unwrap();
        let topic = "devices/co2-1/telemetry";
        let fresh = ReplayWindow::new();
        let cases: [(&str, &[u8], &ReplayWindow, &str); 6] = [
            (topic, &[0u8; 2000], &fresh, "oversize"),
            (
                "devices/co2-2/telemetry",
                &good,
                &fresh,
                "topic_not_allowed",
            ),
            ("devices/co2-1/other", &good, &fresh, "bad_topic"),
            (topic, &good[..20], &fresh, "truncated"),
            (topic, &other_device, &fresh, "wrong_device"),
            (topic, &stale_clock, &fresh, "clock_skew"),
        ];
        for (topic, payload, window, reason) in cases {
            let rejection =
                precheck("co2-1", topic, payload, window, NOW_MS, &limits()).unwrap_err();
            assert_eq!(rejection.reason(), reason, "{topic} {rejection}");
        }
        let rejection = precheck("co2-1", topic, &good, &replay, NOW_MS, &limits()).unwrap_err();
        assert_eq!(
            rejection,
            Rejection::Replay(ReplayError::Duplicate { seq: 7 })
        );
    }

    #[test]
    fn cheap_checks_come_first() {
        // An oversize payload on a foreign topic is refused for its size: nothing else was
        // looked at.
        let rejection = precheck(
            "co2-1",
            "devices/co2-2/telemetry",
            &[0u8; 5000],
            &ReplayWindow::new(),
            NOW_MS,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(rejection.reason(), "oversize");
    }
}
