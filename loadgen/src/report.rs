//! The run report: JSON for machines, a summary for the terminal, an SVG for people.

use crate::stats::{latency_ms, percentile_curve, LatencyMs, Second, Stats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Report schema version (bump on incompatible changes).
pub const SCHEMA_VERSION: u32 = 1;

/// The JSON report. Top-level `sent`, `acked`, `refused`, `lost`, `throughput_msgs_per_s`
/// and `latency_ms.{p50,p90,p99,p999,max}` are the stable fields scripts read.
#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub tool: &'static str,
    pub mode: &'static str,
    pub target: String,
    pub config: RunConfig,
    /// PUBLISH packets written to the socket.
    pub sent: u64,
    /// Positively acknowledged (PUBACK / PUBREC with reason < 0x80; 3.1.1 acks always count).
    pub acked: u64,
    /// Acknowledged with a v5 reason code >= 0x80.
    pub refused: u64,
    /// Sent with QoS > 0 and neither acknowledged nor refused by the end of the drain.
    pub lost: u64,
    /// Offered by the schedule but never sent (connection down, duration over).
    pub unsent: u64,
    /// Seconds from the start of the timed phase to the last acknowledgement (last send
    /// for QoS 0).
    pub elapsed_s: f64,
    /// acked / elapsed_s (sent / elapsed_s for QoS 0).
    pub throughput_msgs_per_s: f64,
    /// What the schedule offered per second on average over the sending phase.
    pub offered_msgs_per_s: f64,
    /// publish → acknowledgement (QoS 1: PUBACK, QoS 2: PUBREC); empty for QoS 0.
    pub latency_ms: LatencyMs,
    pub connect: ConnectReport,
    pub mean_payload_bytes: f64,
    pub errors: BTreeMap<String, u64>,
    /// v5 reason codes of refusals, as "0x97".
    pub refused_reasons: BTreeMap<String, u64>,
    pub scenarios: BTreeMap<String, ScenarioReport>,
    /// One entry per second of the timed phase.
    pub timeline: Vec<TimelineEntry>,
}

/// Echo of the settings that shape the numbers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunConfig {
    pub devices: usize,
    pub threads: usize,
    pub placement: String,
    pub schedule: String,
    pub duration_s: Option<f64>,
    pub messages: Option<u64>,
    pub qos: u8,
    pub mqtt_version: String,
    pub format: String,
    pub plain: bool,
    pub tls: bool,
    pub max_inflight: usize,
    pub payload_size: usize,
    pub source_addrs: usize,
    pub connect_rate: f64,
    pub seq_base: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnectReport {
    pub attempted: u64,
    pub connected: u64,
    pub failed: u64,
    /// Connections per second over the connect phase.
    pub rate_per_s: f64,
    /// Idle mode: connections still answering PINGREQ at the end.
    pub stayed_up: Option<u64>,
    pub latency_ms: LatencyMs,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioReport {
    pub devices: u64,
    pub sent: u64,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct TimelineEntry {
    pub t: u64,
    pub sent: u64,
    pub acked: u64,
    pub refused: u64,
}

impl Report {
    /// Builds the report from merged stats.
    pub fn build(
        mode: &'static str,
        target: String,
        config: RunConfig,
        stats: &Stats,
        offered_msgs_per_s: f64,
    ) -> Report {
        let elapsed_s = stats.last_event_s;
        let done = if config.qos == 0 {
            stats.sent
        } else {
            stats.acked
        };
        let throughput = if elapsed_s > 0.0 {
            done as f64 / elapsed_s
        } else {
            0.0
        };
        let mut scenarios = BTreeMap::new();
        for (label, devices) in &stats.scenario_devices {
            scenarios.insert(
                label.clone(),
                ScenarioReport {
                    devices: *devices,
                    sent: stats.scenario_sent.get(label).copied().unwrap_or(0),
                },
            );
        }
        let timeline = stats
            .timeline
            .iter()
            .enumerate()
            .map(|(t, s): (usize, &Second)| TimelineEntry {
                t: t as u64,
                sent: s.sent,
                acked: s.acked,
                refused: s.refused,
            })
            .collect();
        Report {
            schema: SCHEMA_VERSION,
            tool: "loadgen",
            mode,
            target,
            sent: stats.sent,
            acked: stats.acked,
            refused: stats.refused,
            lost: stats.lost,
            unsent: stats.unsent,
            elapsed_s,
            throughput_msgs_per_s: throughput,
            offered_msgs_per_s,
            latency_ms: latency_ms(&stats.latency),
            connect: ConnectReport {
                attempted: stats.connect_attempts,
                connected: stats.connected,
                failed: stats.connect_attempts - stats.connected.min(stats.connect_attempts),
                rate_per_s: if stats.connect_span_s > 0.0 {
                    stats.connected as f64 / stats.connect_span_s
                } else {
                    0.0
                },
                stayed_up: (mode == "idle").then_some(stats.stayed_up),
                latency_ms: latency_ms(&stats.connect_latency),
            },
            mean_payload_bytes: if stats.payload_count > 0 {
                stats.payload_bytes as f64 / stats.payload_count as f64
            } else {
                0.0
            },
            errors: stats.errors.clone(),
            refused_reasons: stats.refused_reasons.clone(),
            scenarios,
            timeline,
            config,
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human summary printed at the end.
    pub fn summary(&self) -> String {
        let l = &self.latency_ms;
        let c = &self.connect;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "loadgen {} → {}: {} devices, {} threads, QoS {}, MQTT {}, {}{}",
            self.mode,
            self.target,
            self.config.devices,
            self.config.threads,
            self.config.qos,
            self.config.mqtt_version,
            if self.config.plain {
                "plain"
            } else {
                &self.config.format
            },
            if self.config.tls { ", TLS" } else { "" }
        );
        let _ = writeln!(
            s,
            "  connect: {}/{} ok, {:.0}/s, latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms{}",
            c.connected,
            c.attempted,
            c.rate_per_s,
            c.latency_ms.p50,
            c.latency_ms.p99,
            c.latency_ms.max,
            c.stayed_up
                .map_or(String::new(), |u| format!(", stayed up {u}"))
        );
        if self.mode == "publish" {
            let _ = writeln!(
                s,
                "  sent {} acked {} refused {} lost {} unsent {} in {:.2} s: {:.0} msg/s (offered {:.0}/s)",
                self.sent,
                self.acked,
                self.refused,
                self.lost,
                self.unsent,
                self.elapsed_s,
                self.throughput_msgs_per_s,
                self.offered_msgs_per_s
            );
            let _ = writeln!(
                s,
                "  publish→ack latency ms: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} (n={})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "  errors: {:?}", self.errors);
        }
        if !self.refused_reasons.is_empty() {
            let _ = writeln!(s, "  refused reasons: {:?}", self.refused_reasons);
        }
        s
    }
}

/// A hand-written SVG: publish→ack latency by percentile (log "nines" axis), and the
/// acknowledged throughput per second below it.
pub fn svg_plot(report: &Report, stats: &Stats) -> String {
    let curve = percentile_curve(&stats.latency);
    let (w, h) = (800.0f64, 620.0f64);
    let (left, right) = (70.0f64, 20.0f64);
    let (top1, h1) = (40.0f64, 300.0f64);
    let (top2, h2) = (420.0f64, 150.0f64);
    let pw = w - left - right;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let l = &report.latency_ms;
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="20" font-size="14">{} — {} msg/s acked, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms</text>"#,
        xml(&report.target),
        report.throughput_msgs_per_s.round(),
        l.p50,
        l.p99,
        l.p999,
        l.max
    );
    // Percentile plot: x = log10(1 / (1 - p)), 0 (p=0) .. 6 (p=99.9999 %).
    let max_ms = curve.iter().map(|p| p.1).fold(0.0f64, f64::max).max(0.001);
    let nines = |pct: f64| -> f64 {
        let tail = (1.0 - pct / 100.0).max(1e-6);
        (-tail.log10()).clamp(0.0, 6.0)
    };
    let x1 = |pct: f64| left + nines(pct) / 6.0 * pw;
    let y1 = |ms: f64| top1 + h1 - ms / max_ms * h1;
    axes(&mut s, left, top1, pw, h1);
    for (label, pct) in [
        ("0%", 0.0),
        ("90%", 90.0),
        ("99%", 99.0),
        ("99.9%", 99.9),
        ("99.99%", 99.99),
        ("99.999%", 99.999),
        ("99.9999%", 99.9999),
    ] {
        let x = x1(pct);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            top1 + h1,
            top1 + h1 + 15.0
        );
    }
    for i in 0..=4 {
        let ms = max_ms * f64::from(i) / 4.0;
        let y = y1(ms);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{ms:.2}</text>"#,
            left - 5.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="15" y="{:.1}" transform="rotate(-90 15 {:.1})" text-anchor="middle">latency (ms)</text>"#,
        top1 + h1 / 2.0,
        top1 + h1 / 2.0
    );
    let points: Vec<String> = curve
        .iter()
        .map(|(p, ms)| format!("{:.1},{:.1}", x1(*p), y1(*ms)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        points.join(" ")
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        left + pw / 2.0,
        top1 + h1 + 32.0
    );
    // Throughput per second.
    let tl = &report.timeline;
    let max_rate = tl
        .iter()
        .map(|e| e.acked.max(e.sent))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = tl.len().max(1) as f64;
    let x2 = |t: f64| left + t / n * pw;
    let y2 = |v: f64| top2 + h2 - v / max_rate * h2;
    axes(&mut s, left, top2, pw, h2);
    for (series, color) in [("sent", "#aaa"), ("acked", "#2ca02c")] {
        let pts: Vec<String> = tl
            .iter()
            .map(|e| {
                let v = if series == "sent" { e.sent } else { e.acked };
                format!("{:.1},{:.1}", x2(e.t as f64 + 0.5), y2(v as f64))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{:.1}">msg/s per second of the run (grey: sent, green: acked); peak {max_rate:.0}</text>"#,
        top2 - 8.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s), 0 .. {}</text>"#,
        left + pw / 2.0,
        top2 + h2 + 18.0,
        tl.len()
    );
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, left: f64, top: f64, width: f64, height: f64) {
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="black"/>"#
    );
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Event;

    fn sample() -> (Report, Stats) {
        let mut stats = Stats {
            sent: 10,
            acked: 9,
            refused: 1,
            last_event_s: 2.0,
            connect_attempts: 2,
            connected: 2,
            connect_span_s: 0.5,
            ..Stats::default()
        };
        for i in 1..=9 {
            stats.record_latency_us(i * 1000);
        }
        stats.at(0.1, Event::Sent, 10);
        stats.at(1.2, Event::Acked, 9);
        stats.scenario_devices.insert("normal".into(), 2);
        stats.scenario_sent.insert("normal".into(), 10);
        let config = RunConfig {
            qos: 1,
            ..RunConfig::default()
        };
        let report = Report::build("publish", "127.0.0.1:1883".into(), config, &stats, 5.0);
        (report, stats)
    }

    #[test]
    fn json_report_shape() {
        let (report, _) = sample();
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        for key in ["sent", "acked", "refused", "lost", "throughput_msgs_per_s"] {
            assert!(v[key].is_number(), "{key} missing");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][key].is_number(), "latency_ms.{key} missing");
        }
        assert_eq!(v["sent"], 10);
        assert_eq!(v["acked"], 9);
        assert_eq!(v["throughput_msgs_per_s"], 4.5);
        let max = v["latency_ms"]["max"].as_f64().unwrap();
        assert!((max - 9.0).abs() < 0.01, "{max}");
        assert_eq!(v["connect"]["rate_per_s"], 4.0);
        assert_eq!(v["connect"]["stayed_up"], serde_json::Value::Null);
        assert_eq!(v["timeline"].as_array().unwrap().len(), 2);
        assert_eq!(v["timeline"][1]["acked"], 9);
        assert_eq!(v["scenarios"]["normal"]["sent"], 10);
        assert!(v["errors"].is_object());
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let (report, stats) = sample();
        let svg = svg_plot(&report, &stats);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("99.9%"));
        assert!(!svg.contains("NaN"));
    }
}
