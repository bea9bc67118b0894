//! Acknowledgements held until what they promise is true: a QoS 1/2 PUBACK or PUBREC
//! leaves only once the log is durable up to the record it covers (and, with
//! `kafka.ack_after_kafka`, once Kafka confirmed it too, unless Kafka counts as
//! unreachable: then the durable log alone, until Kafka has caught up again).
//!
//! The queue is in arrival order and `needed_end` never decreases along it, so releasing
//! is popping from the front.

use super::{ConnId, Core, DeviceIdx, Metrics};
use ingestd_codec::mqtt::{self, Protocol, QoS, ReasonCode};
use std::collections::VecDeque;

/// An acknowledgement held until the log is durable up to `needed_end`.
#[derive(Debug, Clone, Copy)]
pub struct PendingAck {
    pub needed_end: u64,
    pub received_us: u64,
    pub conn: ConnId,
    pub device: DeviceIdx,
    pub qos: QoS,
    pub pkid: u16,
    pub reason: ReasonCode,
}

/// Acknowledgements in arrival order.
#[derive(Debug, Default)]
pub struct AckQueue {
    queue: VecDeque<PendingAck>,
}

impl AckQueue {
    pub fn push(&mut self, ack: PendingAck) {
        debug_assert!(self
            .queue
            .back()
            .is_none_or(|last| last.needed_end <= ack.needed_end));
        self.queue.push_back(ack);
    }

    /// The next acknowledgement `limit` makes safe.
    pub fn pop_ready(&mut self, limit: u64) -> Option<PendingAck> {
        if self.queue.front()?.needed_end <= limit {
            self.queue.pop_front()
        } else {
            None
        }
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Entries of Kafka's lag kept at most; past it the newest entry is extended (its time
/// kept), which only overstates the lag.
const GATE_COMMITS_MAX: usize = 4096;

/// Whether acknowledgements wait for Kafka, with hysteresis: Kafka counts as unreachable
/// once the oldest commit it has not confirmed is older than `unreachable_after_us`, and
/// as back once that lag is under a quarter of it.
#[derive(Debug)]
pub struct KafkaGate {
    enabled: bool,
    unreachable_after_us: u64,
    bypass: bool,
    confirmed: u64,
    /// (durable end, when) of recent commits Kafka has not fully confirmed.
    commits: VecDeque<(u64, u64)>,
}

impl KafkaGate {
    #[must_use]
    pub fn new(enabled: bool, unreachable_after_us: u64) -> Self {
        Self {
            enabled,
            unreachable_after_us,
            bypass: false,
            confirmed: 0,
            commits: VecDeque::new(),
        }
    }

    /// A commit made the log durable up to `end` at `now_us`.
    pub fn committed(&mut self, end: u64, now_us: u64) {
        if !self.enabled {
            return;
        }
        if self.commits.len() >= GATE_COMMITS_MAX {
            if let Some(last) = self.commits.back_mut() {
                last.0 = end;
            }
        } else {
            self.commits.push_back((end, now_us));
        }
    }

    /// Kafka confirmed up to `end`; returns the new bypass state and the lag when it
    /// changed.
    pub fn confirmed(&mut self, end: u64, now_us: u64) -> Option<(bool, u64)> {
        if !self.enabled {
            return None;
        }
        self.confirmed = end;
        while self.commits.front().is_some_and(|(e, _)| *e <= end) {
            self.commits.pop_front();
        }
        let lag_us = self
            .commits
            .front()
            .map_or(0, |(_, at)| now_us.saturating_sub(*at));
        if self.bypass {
            if lag_us < self.unreachable_after_us / 4 {
                self.bypass = false;
                return Some((false, lag_us));
            }
        } else if lag_us > self.unreachable_after_us {
            self.bypass = true;
            return Some((true, lag_us));
        }
        None
    }

    /// The log offset acknowledgements may be released up to.
    #[must_use]
    pub fn limit(&self, durable_end: u64) -> u64 {
        if self.enabled && !self.bypass {
            durable_end.min(self.confirmed)
        } else {
            durable_end
        }
    }

    #[must_use]
    pub fn bypassed(&self) -> bool {
        self.bypass
    }
}

impl<M: Metrics> Core<M> {
    pub(super) fn on_sink_confirmed(&mut self, end: u64) {
        if let Some((bypass, lag_us)) = self.gate.confirmed(end, self.now.mono_us) {
            self.actions.push_back(super::Action::KafkaGate {
                bypass,
                lag_ms: lag_us / 1000,
            });
        }
        self.release_acks();
    }

    /// Sends every acknowledgement the durable end (and Kafka) made safe, in order.
    pub(super) fn release_acks(&mut self) {
        // `mutation-ack-early` is a deliberate defect for the simulation (shards/tests/sim.rs)
        // to prove it notices: acknowledge as soon as the record is appended. Never on in
        // production.
        let limit = if cfg!(feature = "mutation-ack-early") {
            self.next_offset
        } else {
            self.gate.limit(self.durable_end)
        };
        let now_us = self.now.mono_us;
        while let Some(ack) = self.acks.pop_ready(limit) {
            if ack.qos == QoS::ExactlyOnce {
                let device = &mut self.devices[ack.device.0 as usize];
                if ack.reason == ReasonCode::Success {
                    device.session.qos2_durable(ack.pkid);
                } else {
                    // A v5 PUBREC with an error code ends the exchange: no PUBREL follows.
                    device.session.qos2_forget(ack.pkid);
                }
            }
            if let Some(state) = self.conns.get_mut(&ack.conn) {
                state.inflight = state.inflight.saturating_sub(1);
            }
            let packet = mqtt::Ack {
                pkid: ack.pkid,
                reason: ack.reason,
                properties: mqtt::Properties::default(),
            };
            self.send(
                ack.conn,
                &match ack.qos {
                    QoS::ExactlyOnce => mqtt::Packet::PubRec(packet),
                    _ => mqtt::Packet::PubAck(packet),
                },
            );
            self.resume(ack.conn);
            self.metrics
                .ack_latency_us(now_us.saturating_sub(ack.received_us));
        }
    }

    /// Queues the acknowledgement of a processed message. 3.1.1 acknowledgements carry no
    /// reason: a refused message is acknowledged positively once its dead letter is
    /// durable [MQTT-3.3.5-2].
    pub(super) fn queue_ack(&mut self, mut ack: PendingAck, protocol: Protocol) {
        if ack.qos == QoS::AtMostOnce {
            return;
        }
        if protocol == Protocol::V311 {
            ack.reason = ReasonCode::Success;
        }
        self.acks.push(ack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_bypasses_after_unreachable_and_regates_after_catching_up() {
        let mut gate = KafkaGate::new(true, 1_000_000);
        gate.committed(10, 0);
        assert_eq!(gate.confirmed(0, 500_000), None);
        assert_eq!(gate.limit(10), 0);
        // Lag over the threshold: the log alone decides.
        assert_eq!(gate.confirmed(0, 1_000_001), Some((true, 1_000_001)));
        assert_eq!(gate.limit(10), 10);
        // Still lagging behind a newer commit: stays bypassed.
        gate.committed(20, 1_100_000);
        assert_eq!(gate.confirmed(10, 1_400_000), None);
        assert!(gate.bypassed());
        // Caught up: gated again.
        assert_eq!(gate.confirmed(20, 1_600_000), Some((false, 0)));
        assert!(!gate.bypassed());
        gate.committed(30, 1_700_000);
        assert_eq!(gate.limit(30), 20);
    }

    #[test]
    fn disabled_gate_is_the_durable_end() {
        let mut gate = KafkaGate::new(false, 1);
        gate.committed(5, 0);
        assert_eq!(gate.confirmed(0, 1_000_000), None);
        assert_eq!(gate.limit(5), 5);
    }
}
