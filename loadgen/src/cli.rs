//! Command line.

use crate::payload::Format;
use crate::scenario::Mix;
use crate::schedule::Schedule;
use clap::{Parser, Subcommand};
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
#[command(name = "loadgen", version, args_conflicts_with_subcommands = true)]
pub struct Args {
    /// A tool instead of a run: `fraud-eval` (score a run against its truth file),
    /// `fraud-sim` (the same evaluation without a server) or `place` (give a registry's
    /// devices locations and regions).
    #[command(subcommand)]
    pub command: Option<Command>,

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

    /// Scenario mix as label=weight,...; devices get labels in exact proportion, scattered
    /// by the seed. Labels: normal, spike, drift, level_shift, stuck, smooth,
    /// neighbour_copy, out_of_bounds, rate_burst, clock_drift, clone, past_day
    /// (loadgen/README.md describes each and its parameters).
    #[arg(long, default_value = "normal=1.0")]
    pub scenario: String,

    /// Instead of --scenario: this share of the devices (0..=1) spread evenly over every
    /// fraud label, the rest normal.
    #[arg(long, conflicts_with = "scenario")]
    pub fraud_share: Option<f64>,

    /// Length of the simulated day in seconds of device time: every device's daily cycle
    /// repeats this often (device time must stay near real time, so the day is compressed;
    /// 600 s puts a whole day in a 10-minute run). "Per hour" in the scenarios means per
    /// day-s / 24.
    #[arg(long, default_value_t = 600.0)]
    pub day_s: f64,

    /// Fraud onsets are drawn per device in [warmup, warmup + span] messages of the run.
    #[arg(long, default_value_t = 300)]
    pub warmup_readings: u64,

    /// See --warmup-readings.
    #[arg(long, default_value_t = 300)]
    pub onset_span_readings: u64,

    /// Devices the registry gives no location are placed this many to a location
    /// (loc-NNNNN, in secrets.json order); `loadgen place` writes the same into a registry.
    #[arg(long, default_value_t = 10)]
    pub devices_per_location: usize,

    /// ... and this many locations to a region (region-NNN).
    #[arg(long, default_value_t = 10)]
    pub locations_per_region: usize,

    /// Write the ground truth here: CSV `device,scenario,onset_seq,params`, one line per
    /// device (onset empty for normal devices), the same for the same --seed and --seq-base.
    #[arg(long)]
    pub truth: Option<PathBuf>,

    /// Local address the second unit of a `clone` device connects from (the target must
    /// be reachable from it: loopback by default).
    #[arg(long, default_value = "127.0.0.2")]
    pub clone_source_addr: std::net::Ipv4Addr,

    /// Random seed for readings, labels and payloads (default: from the clock).
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
        match self.fraud_share {
            Some(share) => Mix::fraud_share(share),
            None => Mix::parse(&self.scenario),
        }
    }

    /// The simulated day in ms.
    pub fn day_ms(&self) -> Result<u64, String> {
        day_ms(self.day_s)
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

/// `--day-s` in ms.
pub fn day_ms(day_s: f64) -> Result<u64, String> {
    if !day_s.is_finite() || day_s < 1.0 {
        return Err("--day-s must be >= 1".to_string());
    }
    Ok((day_s * 1000.0) as u64)
}

/// The tools.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Score a run: read its truth file and `ingestd log export` output and print, per
    /// scenario, the share of devices detected and the delay, and the false alerts on
    /// normal readings and devices (a Markdown table).
    FraudEval(EvalArgs),
    /// The fraud evaluation of `scripts/fraud-eval` without a server: the same devices,
    /// labels, onsets and messages, scored in process by the server's engine over
    /// simulated receive times, printed as the same report (loadgen/README.md).
    FraudSim(Box<SimArgs>),
    /// Give the devices of DIR/registry.json locations and regions: in file order,
    /// --devices-per-location to a location, --locations-per-region to a region. Other
    /// fields are kept.
    Place {
        /// Directory holding registry.json (from `ingestd devices provision`).
        #[arg(long)]
        devices_dir: PathBuf,
        /// Devices per location (`loc-NNNNN`).
        #[arg(long, default_value_t = 10)]
        devices_per_location: usize,
        /// Locations per region (`region-NNN`).
        #[arg(long, default_value_t = 10)]
        locations_per_region: usize,
    },
}

/// `loadgen fraud-eval` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    /// The truth file written by `loadgen --truth`.
    #[arg(long)]
    pub truth: PathBuf,
    /// `ingestd log export` output (JSON lines); `-` reads standard input.
    #[arg(long)]
    pub export: PathBuf,
    /// A device counts as detected when one of its first WINDOW readings from the onset
    /// (onset included) is flagged.
    #[arg(long, default_value_t = 30)]
    pub window: u64,
    /// Count a reading as flagged when its score is at least this, instead of the server's
    /// `flagged` mark (to try thresholds on one run).
    #[arg(long)]
    pub score_min: Option<f32>,
}

/// `loadgen fraud-sim` flags. The run's flags default to `scripts/fraud-eval`'s.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Total message rate over all devices (messages per second): gives each device's
    /// interval, as in a real run.
    #[arg(long, default_value_t = 16_700.0)]
    pub rate: f64,
    /// Length of the sending phase, seconds of simulated time.
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Number of devices (`dev-000000`.., as `ingestd devices provision` names them).
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// This share of the devices (0..=1) spread evenly over every fraud label.
    #[arg(long, default_value_t = 0.11, conflicts_with = "scenario")]
    pub fraud_share: f64,
    /// Instead of --fraud-share: a scenario mix as label=weight,... (as loadgen's).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Devices per location (`loadgen place`).
    #[arg(long, default_value_t = 10)]
    pub devices_per_location: usize,
    /// Locations per region (`loadgen place`).
    #[arg(long, default_value_t = 10)]
    pub locations_per_region: usize,
    /// Length of the simulated day, seconds of device time.
    #[arg(long, default_value_t = 600.0)]
    pub day_s: f64,
    /// Onsets are drawn in [warmup, warmup + span] messages of each device. Default (as
    /// scripts/fraud-eval): 30 % of the messages per device (rate × duration / devices).
    #[arg(long)]
    pub warmup_readings: Option<u64>,
    /// See --warmup-readings; default 30 % of the messages per device.
    #[arg(long)]
    pub onset_span_readings: Option<u64>,
    /// Detected = flagged among the first WINDOW readings from the onset.
    #[arg(long, default_value_t = 30)]
    pub window: u64,
    /// Count a reading as flagged when its score is at least this, instead of the
    /// engine's alert threshold.
    #[arg(long)]
    pub score_min: Option<f32>,
    /// Seed of the scenarios (labels, sites, sensors, fraud) and of the latency draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Scorers (server shards); each device is scored on its home shard.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// How often the scorers exchange their peers summaries, ms of simulated time (the
    /// server's `fraud.peers_exchange_interval_ms`, default 1000).
    #[arg(long, default_value_t = 1_000)]
    pub peers_exchange_interval_ms: u64,
    /// Base latency from the planned send time to the server's receive time, ms.
    #[arg(long, default_value_t = 2.0)]
    pub latency_ms: f64,
    /// Mean of the exponential jitter added to the base latency, ms.
    #[arg(long, default_value_t = 3.0)]
    pub jitter_ms: f64,
    /// A server stall every this many seconds of simulated time (with --stall-ms).
    #[arg(long, requires = "stall_ms")]
    pub stall_every_s: Option<f64>,
    /// A stall holds every message arriving in its first STALL_MS ms until it ends (a
    /// message is delayed by up to STALL_MS).
    #[arg(long, requires = "stall_every_s")]
    pub stall_ms: Option<f64>,
    /// Wall-clock start of the simulated run, ms since the Unix epoch: the device time
    /// of the first message (a real run starts at its own clock, so its readings differ).
    #[arg(long, default_value_t = 1_764_201_600_000)]
    pub start_ms: u64,
    /// First sequence number of every device (default: --start-ms × 1000, as a real run
    /// started then would use).
    #[arg(long)]
    pub seq_base: Option<u64>,
    /// Change the engine's configuration (default `FraudConfig::default()`, the
    /// server's with `[fraud] enabled = true`): `alert_score_min=0.4`,
    /// `quarantine_score_min=0.95`, `warmup_readings=20`, `weights.NAME=0.3` (a detector's
    /// stable name). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Write the truth file here (as `loadgen --truth`).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Write every flagged reading of a normal device (and of a fraud device before its
    /// onset) here as CSV: device, scenario, seq, received_ms, score, each detector's
    /// strength.
    #[arg(long)]
    pub dump_false: Option<PathBuf>,
    /// Write, for every fraud device not detected within the window, its first 40
    /// readings from the onset here as CSV: score and each detector's strength.
    #[arg(long)]
    pub dump_missed: Option<PathBuf>,
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

    #[test]
    fn scenario_flags_and_tools() {
        let a = parse(&["--fraud-share", "0.11", "--day-s", "60", "--truth", "t.csv"]);
        assert_eq!(a.mix().unwrap(), Mix::fraud_share(0.11).unwrap());
        assert_eq!(a.day_ms().unwrap(), 60_000);
        assert!(a.command.is_none());
        assert!(parse(&["--day-s", "0"]).day_ms().is_err());
        assert!(
            Args::try_parse_from(["loadgen", "--fraud-share", "0.1", "--scenario", "normal"])
                .is_err()
        );
        let a = parse(&["fraud-eval", "--truth", "t.csv", "--export", "-"]);
        match a.command {
            Some(Command::FraudEval(e)) => {
                assert_eq!(e.window, 30);
                assert_eq!(e.export, PathBuf::from("-"));
            }
            other => panic!("{other:?}"),
        }
        // fraud-sim's defaults are scripts/fraud-eval's.
        match parse(&["fraud-sim", "--set", "weights.timing=0.3"]).command {
            Some(Command::FraudSim(s)) => {
                assert_eq!((s.rate, s.duration, s.devices), (16_700.0, 600.0, 10_000));
                assert_eq!(
                    (s.fraud_share, s.day_s, s.window, s.seed),
                    (0.11, 600.0, 30, 1)
                );
                assert_eq!((s.devices_per_location, s.locations_per_region), (10, 10));
                assert_eq!((s.shards, s.warmup_readings), (2, None));
                assert_eq!(s.set, ["weights.timing=0.3"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Args::try_parse_from(["loadgen", "fraud-sim", "--stall-ms", "5"]).is_err());
        let a = parse(&["place", "--devices-dir", "d", "--devices-per-location", "4"]);
        assert!(matches!(
            a.command,
            Some(Command::Place {
                devices_per_location: 4,
                locations_per_region: 10,
                ..
            })
        ));
        assert!(
            Args::try_parse_from(["loadgen", "--rate", "5", "place", "--devices-dir", "d"])
                .is_err()
        );
    }
}
