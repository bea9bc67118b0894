//! Command line.

use crate::payload::Format;
use crate::scenario::Mix;
use crate::schedule::Schedule;
use clap::Parser;
use ingestd_codec::mqtt::{Protocol, QoS};
use std::path::PathBuf;

/// Load generator for ingestd (and any MQTT broker with --plain).
///
/// Simulated devices each hold one MQTT connection and publish signed telemetry envelopes
/// (signed before the timed phase, fresh sequence numbers per run) at a scheduled total
/// rate. Publish→ack latency, connect latency, throughput per second, refusals and losses
/// are reported on stderr each second, as JSON (--json) and as an SVG plot (--plot).
///
/// Exit code: 0 when the run completed (even with refusals), 1 on setup errors (bad flags,
/// unreadable devices, no connection at all), 2 with --fail-on-loss when messages were lost.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", version)]
pub struct Args {
    /// Broker address HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub target: String,

    /// Directory with secrets.json from `ingestd devices provision` (not needed with --plain).
    #[arg(long)]
    pub devices_dir: Option<PathBuf>,

    /// Number of simulated devices (one connection each). Default: every device in
    /// secrets.json, or 100 with --plain and no --devices-dir.
    #[arg(long)]
    pub devices: Option<usize>,

    /// Executor threads (one glommio executor each; devices are split round-robin).
    /// Default: the number of cores.
    #[arg(long)]
    pub threads: Option<usize>,

    /// Pin executor i to core i % cores (glommio Placement::Fixed). Default: unbound
    /// (Placement::Unbound), so the OS shares cores with a server on the same machine.
    #[arg(long)]
    pub pin: bool,

    /// Total message rate (messages per second, all devices together); the target rate of a ramp,
    /// the base rate with bursts.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,

    /// Ramp: start at this rate and rise linearly to --rate over --ramp-secs.
    #[arg(long, requires = "ramp_secs")]
    pub ramp_from: Option<f64>,

    /// Ramp duration in seconds.
    #[arg(long, requires = "ramp_from")]
    pub ramp_secs: Option<f64>,

    /// Bursts: every --burst-every seconds, send at this rate for --burst-len seconds.
    #[arg(long, requires_all = ["burst_every", "burst_len"], conflicts_with = "ramp_from")]
    pub burst_rate: Option<f64>,

    /// Burst period in seconds.
    #[arg(long, requires = "burst_rate")]
    pub burst_every: Option<f64>,

    /// Burst length in seconds.
    #[arg(long, requires = "burst_rate")]
    pub burst_len: Option<f64>,

    /// Length of the sending phase in seconds (default 10 unless --messages is given).
    #[arg(long)]
    pub duration: Option<f64>,

    /// Total messages to send (split evenly over the devices); with --duration too, whichever
    /// ends first.
    #[arg(long)]
    pub messages: Option<u64>,

    /// QoS 0, 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,

    /// MQTT protocol version: 3.1.1 or 5.
    #[arg(long, default_value = "5", value_parser = ["3.1.1", "5"])]
    pub mqtt_version: String,

    /// Envelope form: binary or json.
    #[arg(long, default_value = "binary", value_parser = ["binary", "json"])]
    pub format: String,

    /// Payload size in bytes (0: natural size, 3 readings). Envelopes are padded with more
    /// readings (registered, then vendor kinds); binary sizes step by 6 bytes, at most 32
    /// readings.
    #[arg(long, default_value_t = 0)]
    pub payload_size: usize,

    /// Unacknowledged PUBLISHes allowed per connection (pipelining); lowered to the server's
    /// v5 Receive Maximum.
    #[arg(long, default_value_t = 64)]
    pub max_inflight: usize,

    /// New connections per second during the connect phase (0: as fast as possible).
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,

    /// Connect timeout (TCP + TLS + CONNACK), milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,

    /// Spread connections over source addresses 127.0.0.1 .. 127.0.0.N (to exceed one
    /// address's ephemeral port range).
    #[arg(long, default_value_t = 1)]
    pub source_addrs: usize,

    /// Unsigned random payloads of the same size and anonymous CONNECT (client id = device
    /// id): measures any MQTT broker, e.g. Mosquitto.
    #[arg(long)]
    pub plain: bool,

    /// MQTT over TLS.
    #[arg(long)]
    pub tls: bool,

    /// CA certificate (PEM) to verify the server with.
    #[arg(long, requires = "tls")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,

    /// Client private key (PEM) for mutual TLS.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,

    /// TLS server name (default: the host part of --target).
    #[arg(long, requires = "tls")]
    pub server_name: Option<String>,

    /// Scenario mix as label=weight,...; devices are assigned labels in proportion.
    /// Labels available now: normal (CO2 400-2000 ppm random walk, temperature, humidity).
    /// Fraud-injection labels (spike, flatline, clone, ...) do not exist yet.
    #[arg(long, default_value = "normal=1.0")]
    pub scenario: String,

    /// Random seed for readings and payloads (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,

    /// First sequence number of every device (default: unix ms × 1000, never reused).
    #[arg(long)]
    pub seq_base: Option<u64>,

    /// Topic prefix: devices publish to {prefix}/{device_id}/telemetry.
    #[arg(long, default_value = "devices")]
    pub topic_prefix: String,

    /// Keep-alive in seconds sent in CONNECT; PINGREQ is sent when idle for this long.
    #[arg(long, default_value_t = 30)]
    pub keep_alive: u16,

    /// After the sending phase, wait this long (seconds) for outstanding acknowledgements;
    /// what is still unacknowledged then is lost.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,

    /// Idle-connections mode: open the connections, keep them alive with PINGREQ for
    /// --duration seconds, report the connect rate and how many stayed up.
    #[arg(long)]
    pub idle: bool,

    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write an SVG latency-percentile and throughput plot here.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Write every acknowledged message as a line "device_id seq" here.
    #[arg(long)]
    pub acked_out: Option<PathBuf>,

    /// Exit with code 2 when any message was lost.
    #[arg(long)]
    pub fail_on_loss: bool,

    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,
}

impl Args {
    pub fn protocol(&self) -> Protocol {
        if self.mqtt_version == "3.1.1" {
            Protocol::V311
        } else {
            Protocol::V5
        }
    }

    pub fn qos(&self) -> QoS {
        QoS::try_from(self.qos).unwrap_or(QoS::AtLeastOnce)
    }

    pub fn format(&self) -> Format {
        if self.format == "json" {
            Format::Json
        } else {
            Format::Binary
        }
    }

    pub fn mix(&self) -> Result<Mix, String> {
        Mix::parse(&self.scenario)
    }

    /// The rate schedule from the flags.
    pub fn schedule(&self) -> Result<Schedule, String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(format!("--{name} must be a finite number >= 0"))
            }
        };
        let rate = positive("rate", self.rate)?;
        if let (Some(from), Some(secs)) = (self.ramp_from, self.ramp_secs) {
            return Ok(Schedule::Ramp {
                from: positive("ramp-from", from)?,
                to: rate,
                secs: positive("ramp-secs", secs)?,
            });
        }
        if let (Some(peak), Some(every), Some(len)) =
            (self.burst_rate, self.burst_every, self.burst_len)
        {
            let every = positive("burst-every", every)?;
            let len = positive("burst-len", len)?;
            if every <= 0.0 || len > every {
                return Err("--burst-every must be > 0 and >= --burst-len".to_string());
            }
            return Ok(Schedule::Burst {
                base: rate,
                peak: positive("burst-rate", peak)?,
                every,
                len,
            });
        }
        Ok(Schedule::Constant { rate })
    }

    /// Sending-phase length: --duration, or unbounded with --messages, else 10 s.
    pub fn duration_s(&self) -> Option<f64> {
        match (self.duration, self.messages) {
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(10.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_and_schedules() {
        let a = parse(&[]);
        assert_eq!(a.schedule().unwrap(), Schedule::Constant { rate: 1000.0 });
        assert_eq!(a.duration_s(), Some(10.0));
        assert_eq!(a.protocol(), Protocol::V5);
        let a = parse(&["--rate", "500", "--ramp-from", "10", "--ramp-secs", "5"]);
        assert_eq!(
            a.schedule().unwrap(),
            Schedule::Ramp {
                from: 10.0,
                to: 500.0,
                secs: 5.0
            }
        );
        let a = parse(&[
            "--burst-rate",
            "900",
            "--burst-every",
            "10",
            "--burst-len",
            "2",
            "--messages",
            "5",
        ]);
        assert!(matches!(a.schedule().unwrap(), Schedule::Burst { .. }));
        assert_eq!(a.duration_s(), None);
        assert!(Args::try_parse_from(["loadgen", "--qos", "3"]).is_err());
        assert!(Args::try_parse_from(["loadgen", "--mqtt-version", "4"]).is_err());
        assert!(Args::try_parse_from(["loadgen", "--burst-rate", "5"]).is_err());
    }
}
