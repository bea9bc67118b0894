//! Clones: one identity used by two writers.
//!
//! Both rules report [`Detector::Clone`] (the outcome says which):
//! - **Alternating addresses.** The last [`ADDRESS_HISTORY`] connections of a device are
//!   kept as (peer address hash, receive time). A connection from an address that differs
//!   from the previous one but was already used within `address_span_ms` is a *return*;
//!   more than `address_returns_max` returns within the span fire. Two clones kicking each
//!   other off (MQTT session takeover) return on every connection; a device that moves once
//!   (a new DHCP lease, a new access point) or wanders A, B, C, D never returns.
//! - **Two sequence streams.** Accepted sequences are followed as up to two *streams*: a
//!   sequence within `seq_gap_max` of the current stream's head continues it; one near the
//!   other stream's head is a *switch*; one far from both starts a new stream in place of
//!   the other (a device reset renumbering once is a move, not a switch). More than
//!   `seq_switches_max` switches within `seq_span_ms` fire.
//! - **Out-of-order from another connection.** A sequence at or below (within
//!   `seq_gap_max` of) the highest one seen, on a connection other than the one that
//!   delivered that highest, is what two writers sharing one counter produce. It counts
//!   once per change of connection, so a reconnection redelivering its unacknowledged
//!   readings is one event and two live writers taking turns are one event per turn; more
//!   than `out_of_order_max` within `seq_span_ms` fire. Known limit: a device reconnecting
//!   (and redelivering) more than that often per span fires too.
//!
//! Feed [`Clones::on_sequence`] every sequence whose signature verified, accepted *or*
//! refused by the replay window: once the second writer's counter is far ahead, the
//! window refuses the first writer's sequences as too old, and those refusals are the
//! evidence of the second stream.
//!
//! Event counts are kept as the receive times of the last [`EVENT_HISTORY`] events, so the
//! `*_max` counts are capped at `EVENT_HISTORY - 1`. Addresses and connections are opaque
//! u64 (a hash of the peer address, a connection id): no std::net, nothing allocated.

use super::{strength_over, Detector, Signal};

/// Connections remembered per device.
pub const ADDRESS_HISTORY: usize = 8;
/// Events (returns, switches, out-of-order arrivals) remembered per rule.
pub const EVENT_HISTORY: usize = 16;

/// Parameters of the clone rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CloneConfig {
    /// Returns to an earlier address allowed within the span.
    pub address_returns_max: u32,
    /// The span of the address rule, in receive time.
    pub address_span_ms: u64,
    /// Sequences this close to a stream's head continue it.
    pub seq_gap_max: u64,
    /// Switches between two sequence streams allowed within the span.
    pub seq_switches_max: u32,
    /// Out-of-order arrivals from another connection allowed within the span.
    pub out_of_order_max: u32,
    /// The span of the sequence rules, in receive time.
    pub seq_span_ms: u64,
}

impl Default for CloneConfig {
    fn default() -> Self {
        CloneConfig {
            // A device on flaky Wi-Fi with mobile fallback may flip back once or twice.
            address_returns_max: 3,
            address_span_ms: 3_600_000,
            seq_gap_max: 10_000,
            seq_switches_max: 3,
            out_of_order_max: 8,
            seq_span_ms: 3_600_000,
        }
    }
}

/// What the clone rules saw in one event; [`CloneOutcome::signal`] folds it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CloneOutcome {
    /// The device keeps returning to earlier addresses.
    pub alternating_addresses: Option<Signal>,
    /// Sequences switch between two far-apart streams.
    pub two_streams: Option<Signal>,
    /// Out-of-order sequences arrive from another connection.
    pub out_of_order: Option<Signal>,
}

impl CloneOutcome {
    /// The strongest of the rules that fired, as the one [`Detector::Clone`] signal.
    #[must_use]
    pub fn signal(&self) -> Option<Signal> {
        [
            self.alternating_addresses,
            self.two_streams,
            self.out_of_order,
        ]
        .into_iter()
        .flatten()
        .reduce(|a, b| if b.strength > a.strength { b } else { a })
    }
}

/// Receive times of the last few events of one kind, oldest overwritten.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Events {
    times_ms: [u64; EVENT_HISTORY],
    len: u8,
    next: u8,
}

impl Events {
    /// Records one event and returns how many are within the span of it.
    fn record(&mut self, now_ms: u64, span_ms: u64) -> u32 {
        self.times_ms[usize::from(self.next)] = now_ms;
        self.next = (self.next + 1) % EVENT_HISTORY as u8;
        self.len = (self.len + 1).min(EVENT_HISTORY as u8);
        self.times_ms[..usize::from(self.len)]
            .iter()
            .filter(|t| t.abs_diff(now_ms) <= span_ms)
            .count() as u32
    }
}

fn over(count: u32, max: u32) -> Option<Signal> {
    let max = max.min(EVENT_HISTORY as u32 - 1);
    (count > max).then(|| Signal {
        detector: Detector::Clone,
        strength: strength_over(f64::from(count), f64::from(max)),
    })
}

/// Clone state of one device: fixed-size arrays, no allocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Clones {
    /// (address hash, receive time) of the last connections, oldest first.
    addresses: [(u64, u64); ADDRESS_HISTORY],
    addresses_len: u8,
    returns: Events,
    /// Heads of the two sequence streams and which one is current.
    heads: [Option<u64>; 2],
    current: u8,
    switches: Events,
    /// The highest accepted sequence and the connection that delivered it.
    highest: Option<(u64, u64)>,
    /// The connection of the previous sequence.
    last_connection: Option<u64>,
    out_of_order: Events,
}

impl Clones {
    /// Nothing seen yet.
    #[must_use]
    pub fn new() -> Clones {
        Clones::default()
    }

    /// Feeds one connection of the device, from a peer address hash, at a receive time.
    pub fn on_connect(
        &mut self,
        config: &CloneConfig,
        address: u64,
        receive_ms: u64,
    ) -> CloneOutcome {
        let len = usize::from(self.addresses_len);
        let seen = &self.addresses[..len];
        let previous = seen.last().map(|(a, _)| *a);
        let is_return = previous.is_some_and(|p| p != address)
            && seen
                .iter()
                .any(|(a, t)| *a == address && t.abs_diff(receive_ms) <= config.address_span_ms);
        if len == ADDRESS_HISTORY {
            self.addresses.copy_within(1.., 0);
            self.addresses[ADDRESS_HISTORY - 1] = (address, receive_ms);
        } else {
            self.addresses[len] = (address, receive_ms);
            self.addresses_len += 1;
        }
        let mut outcome = CloneOutcome::default();
        if is_return {
            let count = self.returns.record(receive_ms, config.address_span_ms);
            outcome.alternating_addresses = over(count, config.address_returns_max);
        }
        outcome
    }

    /// Feeds one signed reading's sequence (accepted or refused by the replay window), the
    /// connection it came on, at a receive time.
    pub fn on_sequence(
        &mut self,
        config: &CloneConfig,
        seq: u64,
        connection: u64,
        receive_ms: u64,
    ) -> CloneOutcome {
        let mut outcome = CloneOutcome::default();
        match self.highest {
            Some((highest, by)) if seq <= highest => {
                // Far below is a renumbering (the stream rule's business), not a reorder.
                let switched = self.last_connection != Some(connection);
                if by != connection && switched && highest - seq <= config.seq_gap_max {
                    let count = self.out_of_order.record(receive_ms, config.seq_span_ms);
                    outcome.out_of_order = over(count, config.out_of_order_max);
                }
            }
            _ => self.highest = Some((seq, connection)),
        }
        self.last_connection = Some(connection);
        let current = usize::from(self.current & 1);
        let other = 1 - current;
        let near = |head: Option<u64>| head.is_some_and(|h| h.abs_diff(seq) <= config.seq_gap_max);
        if self.heads[current].is_none() || near(self.heads[current]) {
            self.heads[current] = Some(self.heads[current].map_or(seq, |h| h.max(seq)));
        } else if near(self.heads[other]) {
            self.heads[other] = self.heads[other].map(|h| h.max(seq));
            self.current = other as u8;
            let count = self.switches.record(receive_ms, config.seq_span_ms);
            outcome.two_streams = over(count, config.seq_switches_max);
        } else {
            // Far from both: a renumbering, the new stream replaces the older one.
            self.heads[other] = Some(seq);
            self.current = other as u8;
            self.highest = Some((seq, connection));
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0_MS: u64 = 1_764_000_000_000;
    const MINUTE_MS: u64 = 60_000;
    const HOME: u64 = 0x1111;
    const AWAY: u64 = 0x2222;

    #[test]
    fn alternating_addresses_fire() {
        let c = CloneConfig::default();
        let mut k = Clones::new();
        let mut fired_at = None;
        for i in 0..10u64 {
            let address = if i % 2 == 0 { HOME } else { AWAY };
            let o = k.on_connect(&c, address, T0_MS + i * MINUTE_MS);
            if o.alternating_addresses.is_some() && fired_at.is_none() {
                fired_at = Some(i);
            }
        }
        // Returns at 2, 3, 4, 5: the fourth is over three.
        assert_eq!(fired_at, Some(5));
    }

    #[test]
    fn moving_once_reconnecting_or_wandering_passes() {
        let c = CloneConfig::default();
        let mut k = Clones::new();
        let mut out = Vec::new();
        // Reconnects from home, a new lease, reconnects from there.
        for i in 0..20u64 {
            let address = if i < 10 { HOME } else { AWAY };
            out.push(k.on_connect(&c, address, T0_MS + i * MINUTE_MS));
        }
        // Roaming across access points, never back.
        for i in 0..20u64 {
            out.push(k.on_connect(&c, 0x9000 + i, T0_MS + (20 + i) * MINUTE_MS));
        }
        assert!(out.iter().all(|o| o.signal().is_none()), "{out:?}");
    }

    #[test]
    fn returns_spread_over_days_pass() {
        let c = CloneConfig::default();
        let mut k = Clones::new();
        for i in 0..20u64 {
            let address = if i % 2 == 0 { HOME } else { AWAY };
            let o = k.on_connect(&c, address, T0_MS + i * 6 * 3_600_000);
            assert_eq!(o.signal(), None, "{i}");
        }
    }

    #[test]
    fn two_interleaved_sequence_streams_fire() {
        let c = CloneConfig::default();
        let mut k = Clones::new();
        let mut fired = 0;
        for i in 0..20u64 {
            // One writer counts from 1000, the other from 5 000 000, taking turns.
            let (seq, conn) = if i % 2 == 0 {
                (1_000 + i, 1)
            } else {
                (5_000_000 + i, 2)
            };
            fired += usize::from(
                k.on_sequence(&c, seq, conn, T0_MS + i * MINUTE_MS)
                    .two_streams
                    .is_some(),
            );
        }
        assert!(fired >= 10, "{fired}");
    }

    #[test]
    fn a_renumbering_and_ordinary_reordering_pass() {
        let c = CloneConfig::default();
        let mut k = Clones::new();
        let mut out = Vec::new();
        let mut t = T0_MS;
        for seq in 1_000_000..1_000_100u64 {
            t += MINUTE_MS;
            out.push(k.on_sequence(&c, seq, 1, t));
        }
        // QoS 1 retransmission on the same connection: out of order, same writer.
        out.push(k.on_sequence(&c, 1_000_050, 1, t));
        // The device resets and counts from zero on a new connection.
        for seq in 0..100u64 {
            t += MINUTE_MS;
            out.push(k.on_sequence(&c, seq, 2, t));
        }
        // A reconnection resends three unacknowledged readings.
        let base = 100;
        for seq in base..base + 10 {
            t += MINUTE_MS;
            out.push(k.on_sequence(&c, seq, 3, t));
        }
        for seq in [base + 7, base + 8, base + 9] {
            out.push(k.on_sequence(&c, seq, 4, t));
        }
        assert!(out.iter().all(|o| o.signal().is_none()), "{out:?}");
    }

    #[test]
    fn out_of_order_arrivals_from_another_connection_fire() {
        let c = CloneConfig::default();
        let mut k = Clones::new();
        let mut fired = false;
        for i in 0..40u64 {
            // Two writers sharing one counter, one always a step behind.
            let t = T0_MS + i * MINUTE_MS;
            assert_eq!(k.on_sequence(&c, 100 + 2 * i, 1, t).signal(), None);
            fired |= k
                .on_sequence(&c, 99 + 2 * i, 2, t + 1)
                .out_of_order
                .is_some();
        }
        assert!(fired);
    }

    #[test]
    fn two_writers_behind_the_replay_window_fire_and_one_does_not() {
        use crate::replay::ReplayWindow;
        let c = CloneConfig::default();
        let run = |seqs: &[(u64, u64)]| {
            let mut window = ReplayWindow::new();
            let mut k = Clones::new();
            let mut fired = 0;
            for (i, (seq, conn)) in seqs.iter().enumerate() {
                // Refused or not, a signed sequence is evidence.
                let _ = window.commit(*seq);
                let o = k.on_sequence(&c, *seq, *conn, T0_MS + i as u64 * MINUTE_MS);
                fired += usize::from(o.signal().is_some());
            }
            fired
        };
        let two: Vec<(u64, u64)> = (0..20u64)
            .map(|i| {
                if i % 2 == 0 {
                    (1_000 + i, 1)
                } else {
                    (5_000_000 + i, 2)
                }
            })
            .collect();
        assert!(run(&two) >= 10);
        // One writer whose connection drops every ten readings and redelivers the last two.
        let mut one = Vec::new();
        for i in 0..100u64 {
            one.push((1_000 + i, i / 10));
            if i % 10 == 9 {
                one.extend([(999 + i, i / 10 + 1), (1_000 + i, i / 10 + 1)]);
            }
        }
        assert_eq!(run(&one), 0);
    }

    proptest! {
        #[test]
        fn no_input_panics_and_strengths_are_in_the_unit_interval(
            events in proptest::collection::vec((any::<bool>(), any::<u64>(), 0u64..4, any::<u64>()), 1..300),
            max in any::<u32>(),
            span in any::<u64>(),
            gap in any::<u64>(),
        ) {
            let configs = [
                CloneConfig::default(),
                CloneConfig {
                    address_returns_max: max,
                    address_span_ms: span,
                    seq_gap_max: gap,
                    seq_switches_max: 0,
                    out_of_order_max: max,
                    seq_span_ms: span,
                },
            ];
            for c in configs {
                let mut k = Clones::new();
                for (connect, value, conn, time) in &events {
                    let o = if *connect {
                        k.on_connect(&c, *conn, *time)
                    } else {
                        k.on_sequence(&c, *value, *conn, *time)
                    };
                    for s in [o.alternating_addresses, o.two_streams, o.out_of_order, o.signal()].into_iter().flatten() {
                        prop_assert_eq!(s.detector, Detector::Clone);
                        prop_assert!((0.0..=1.0).contains(&s.strength), "{:?}", s);
                    }
                }
            }
        }
    }
}
