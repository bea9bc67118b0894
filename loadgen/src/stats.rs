//! Measurements kept by each executor thread and merged at the end, plus the shared atomic
//! counters behind the live progress line.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Histograms record microseconds from 1 µs to 10 minutes with 3 significant digits.
pub const HIST_MAX_US: u64 = 600_000_000;

/// A fresh latency histogram (µs).
pub fn histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; `expect` would need an allow.
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
    })
}

/// One second of the timed phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
}

/// Which counter of a [`Second`] to bump.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    Sent,
    Acked,
    Refused,
}

/// Everything one thread measured.
#[derive(Debug)]
pub struct Stats {
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
    pub lost: u64,
    /// Messages the schedule offered that were never sent (connection down, window full at
    /// the end of the run, or the duration ended first).
    pub unsent: u64,
    /// publish → acknowledgement, µs (PUBACK for QoS 1, PUBREC for QoS 2).
    pub latency: Histogram<u64>,
    /// TCP connect start → CONNACK, µs.
    pub connect_latency: Histogram<u64>,
    pub connect_attempts: u64,
    pub connected: u64,
    /// Idle mode: connections still up (PINGRESP seen in the last keep-alive) at the end.
    pub stayed_up: u64,
    pub errors: BTreeMap<String, u64>,
    pub refused_reasons: BTreeMap<String, u64>,
    pub timeline: Vec<Second>,
    /// Per-scenario-label messages sent.
    pub scenario_sent: BTreeMap<String, u64>,
    pub scenario_devices: BTreeMap<String, u64>,
    /// (device index, seq) of every acknowledged message, when kept.
    pub acked_list: Vec<(u32, u64)>,
    pub payload_bytes: u64,
    pub payload_count: u64,
    /// Seconds from the start of the timed phase to the last acknowledgement (or send, QoS 0).
    pub last_event_s: f64,
    /// When the first connect started / the last CONNACK arrived, seconds since process-wide
    /// connect start.
    pub connect_span_s: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sent: 0,
            acked: 0,
            refused: 0,
            lost: 0,
            unsent: 0,
            latency: histogram(),
            connect_latency: histogram(),
            connect_attempts: 0,
            connected: 0,
            stayed_up: 0,
            errors: BTreeMap::new(),
            refused_reasons: BTreeMap::new(),
            timeline: Vec::new(),
            scenario_sent: BTreeMap::new(),
            scenario_devices: BTreeMap::new(),
            acked_list: Vec::new(),
            payload_bytes: 0,
            payload_count: 0,
            last_event_s: 0.0,
            connect_span_s: 0.0,
        }
    }
}

impl Stats {
    /// Counts an error of a kind.
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    /// Bumps the timeline at `t` seconds.
    pub fn at(&mut self, t: f64, event: Event, n: u64) {
        let sec = if t <= 0.0 { 0 } else { t as usize };
        if self.timeline.len() <= sec {
            self.timeline.resize(sec + 1, Second::default());
        }
        if let Some(s) = self.timeline.get_mut(sec) {
            match event {
                Event::Sent => s.sent += n,
                Event::Acked => s.acked += n,
                Event::Refused => s.refused += n,
            }
        }
    }

    /// Records a latency in µs.
    pub fn record_latency_us(&mut self, us: u64) {
        self.latency.saturating_record(us.clamp(1, HIST_MAX_US));
    }

    /// Records a connect latency in µs.
    pub fn record_connect_us(&mut self, us: u64) {
        self.connect_latency
            .saturating_record(us.clamp(1, HIST_MAX_US));
    }

    /// Adds another thread's measurements.
    pub fn merge(&mut self, other: Stats) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.refused += other.refused;
        self.lost += other.lost;
        self.unsent += other.unsent;
        // Same bounds on both sides: addition cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.connect_latency.add(&other.connect_latency);
        self.connect_attempts += other.connect_attempts;
        self.connected += other.connected;
        self.stayed_up += other.stayed_up;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in other.refused_reasons {
            *self.refused_reasons.entry(k).or_default() += v;
        }
        for (k, v) in other.scenario_sent {
            *self.scenario_sent.entry(k).or_default() += v;
        }
        for (k, v) in other.scenario_devices {
            *self.scenario_devices.entry(k).or_default() += v;
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline
                .resize(other.timeline.len(), Second::default());
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            mine.sent += theirs.sent;
            mine.acked += theirs.acked;
            mine.refused += theirs.refused;
        }
        self.acked_list.extend(other.acked_list);
        self.payload_bytes += other.payload_bytes;
        self.payload_count += other.payload_count;
        self.last_event_s = self.last_event_s.max(other.last_event_s);
        self.connect_span_s = self.connect_span_s.max(other.connect_span_s);
    }
}

/// Percentiles in milliseconds, as in the JSON report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Summarises a µs histogram in ms (all zero when empty).
pub fn latency_ms(h: &Histogram<u64>) -> LatencyMs {
    if h.is_empty() {
        return LatencyMs::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    LatencyMs {
        count: h.len(),
        mean: h.mean() / 1000.0,
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// (percentile, ms) points for the percentile plot: 0..99.9999 on a log(1/(1-p)) axis.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut p = 0.0f64;
    // Steps get finer towards the tail: 10 points per decade of 1/(1-p).
    while p < 0.999_999 {
        out.push((p * 100.0, h.value_at_quantile(p) as f64 / 1000.0));
        let tail = 1.0 - p;
        p = 1.0 - tail / 10f64.powf(0.1);
    }
    out.push((100.0, h.max() as f64 / 1000.0));
    out
}

/// Counters shared with the progress printer.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub refused: AtomicU64,
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    pub closed: AtomicU64,
    pub errors: AtomicU64,
}

impl Progress {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut s = Stats::default();
        // 1..=1000 ms, once each.
        for ms in 1..=1000u64 {
            s.record_latency_us(ms * 1000);
        }
        let l = latency_ms(&s.latency);
        assert_eq!(l.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 0.001;
        assert!(close(l.p50, 500.0), "{l:?}");
        assert!(close(l.p90, 900.0), "{l:?}");
        assert!(close(l.p99, 990.0), "{l:?}");
        assert!(close(l.p999, 999.0), "{l:?}");
        assert!(close(l.max, 1000.0), "{l:?}");
        assert!(close(l.mean, 500.5), "{l:?}");
        assert_eq!(latency_ms(&histogram()), LatencyMs::default());
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.sent = 3;
        a.record_latency_us(1000);
        a.at(0.5, Event::Sent, 3);
        a.error("x");
        b.sent = 4;
        b.acked = 4;
        b.record_latency_us(3000);
        b.at(2.1, Event::Acked, 4);
        b.error("x");
        b.error("y");
        b.acked_list.push((1, 7));
        a.merge(b);
        assert_eq!(a.sent, 7);
        assert_eq!(a.acked, 4);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.timeline.len(), 3);
        assert_eq!(a.timeline[0].sent, 3);
        assert_eq!(a.timeline[2].acked, 4);
        assert_eq!(a.errors["x"], 2);
        assert_eq!(a.errors["y"], 1);
        assert_eq!(a.acked_list, vec![(1, 7)]);
    }

    #[test]
    fn curve_is_monotone() {
        let mut h = histogram();
        for v in 1..10_000u64 {
            h.saturating_record(v);
        }
        let c = percentile_curve(&h);
        assert!(c.len() > 50);
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(c.last().unwrap().0, 100.0);
    }
}
