//! `loadgen fraud-sim`: the fraud evaluation of `scripts/fraud-eval` without a server.
//!
//! Everything a real run sends is a pure function of its flags (the scenario module), so
//! this replays it in process: the same device ids (`dev-000000`..), places (`loadgen
//! place`), labels, onsets, sequences, device times and readings, and the same
//! connections (a clone's two units from 127.0.0.1 and 127.0.0.2 taking turns, each turn
//! a new connection). Each envelope gets a receive time (its planned send time plus a
//! latency model, below) and goes, in global receive-time order, to its home shard's
//! [`Scorer`] (the server's engine, [`FraudConfig::default`]) the way the core does it:
//! the replay window first (a refused sequence feeds [`Scorer::refused`] and is a dead
//! letter), then the clock-skew check, then [`Scorer::score`]. The shards' peers tables
//! are pruned and exchange their summaries every `--peers-exchange-interval-ms` of
//! simulated time, as `server/src/serve/peers.rs` does. The verdicts feed
//! [`Evaluator`], the accumulation behind `loadgen fraud-eval`, so the report is the same.
//!
//! Latency: receive time = planned send time + `--latency-ms` + an exponential jitter of
//! mean `--jitter-ms` (hashed from the seed, device and message: deterministic), at least
//! the device's previous receive time (one connection is in order). With `--stall-every-s
//! S --stall-ms M`, every S seconds the server stalls for M ms: what arrives during the
//! stall is received when it ends.
//!
//! Not modelled (docs in loadgen/README.md): the server falling behind (a backlog that
//! grows, PUBACK latency, connections that time out), loadgen's own send lag, peer
//! summaries dropped on a full ring, and the per-shard interleaving of a real server
//! beyond receive-time order. Messages are generated lazily, one pending per device in a
//! heap, so memory does not grow with the run's length.

use crate::cli::{self, SimArgs};
use crate::devices;
use crate::eval::{Evaluator, Phase, Summary, TruthRow};
use crate::scenario::draw::{hash, unit};
use crate::scenario::{self, DeviceScenario, Label, Mix, ScenarioConfig, Turn, Writer};
use crate::schedule::{self, Schedule};
use ingestd_codec::envelope::check_clock_skew;
use ingestd_shards::fraud::engine::{
    address_hash, device_hash, DeviceFraud, Envelope, FraudConfig, Scorer,
};
use ingestd_shards::fraud::peers::Summary as PeersSummary;
use ingestd_shards::fraud::{Detector, DETECTOR_COUNT};
use ingestd_shards::replay::ReplayWindow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::io::Write;

/// The server's default `validation.clock_skew_ms_max`: a device time further than this
/// from the receive time is refused before scoring.
pub const CLOCK_SKEW_MS_MAX: u64 = 300_000;

/// Readings from the onset written per undetected device with `--dump-missed`.
pub const MISSED_READINGS_MAX: usize = 40;

/// Where a real run's connections come from: loadgen on loopback, a clone's second unit
/// from `--clone-source-addr`'s default (the port is not part of the address hash).
const ORIGINAL_PEER: &str = "127.0.0.1:0";
const TWIN_PEER: &str = "127.0.0.2:0";

/// Counts of what the simulation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Envelopes sent (every message of every device).
    pub envelopes: u64,
    /// Scored readings.
    pub scored: u64,
    /// Refused by the replay window (a clone's duplicate or old sequences).
    pub refused: u64,
    /// Refused for a device time too far from the receive time.
    pub skewed: u64,
    /// Non-empty peers summaries delivered from one shard to another.
    pub summaries: u64,
    /// Devices homed on each shard.
    pub shard_devices: Vec<u64>,
}

/// The result of a simulation.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub summary: Summary,
    pub stats: SimStats,
}

/// The validated settings of a run.
struct Plan {
    schedule: Schedule,
    devices: usize,
    total_messages: u64,
    start_ms: u64,
    exchange_us: u64,
    latency: Latency,
}

/// Receive times: see the module docs.
struct Latency {
    base_us: f64,
    jitter_us: f64,
    /// (period, length) of the stalls, µs.
    stall_us: Option<(u64, u64)>,
    start_us: u64,
    key: u64,
}

impl Latency {
    /// When message `k` of device `device`, sent at `sent_us`, is received.
    fn receive_us(&self, device: u64, k: u64, sent_us: u64) -> u64 {
        // 1 - unit is in (0, 1]: the logarithm is finite.
        let jitter = -(1.0 - unit(hash(&[self.key, device, k]))).ln() * self.jitter_us;
        let at = sent_us + (self.base_us + jitter).round() as u64;
        match self.stall_us {
            Some((every, len)) => {
                let since = at.saturating_sub(self.start_us);
                let stall = since / every * every;
                if stall > 0 && since - stall < len {
                    self.start_us + stall + len
                } else {
                    at
                }
            }
            None => at,
        }
    }
}

/// One simulated device.
struct SimDevice {
    scenario: DeviceScenario,
    turns: Vec<Turn>,
    /// The current turn and the next message index.
    turn: usize,
    k: u64,
    budget: u64,
    /// Device time the onset message was planned for (what the scenario anchors on).
    onset_ts_ms: u64,
    /// The next message's planned device time.
    next_ts_ms: u64,
    last_receive_us: u64,
    /// When the current turn's connection was made.
    connected_ms: u64,
    shard: usize,
    hash: u64,
    replay: ReplayWindow,
    fraud: DeviceFraud,
    /// With `--dump-missed`: the first readings from the onset (seq, score, strengths).
    missed: Vec<(u64, f32, [f32; DETECTOR_COUNT])>,
}

impl SimDevice {
    /// Skips finished turns (a clone with an onset at 0 starts with an empty one); the
    /// next turn is a new connection, made right after the previous one's last message.
    fn settle(&mut self, received_ms: u64) {
        while self.turns.get(self.turn).is_some_and(|t| self.k >= t.k_end) {
            self.turn += 1;
            self.connected_ms = received_ms + 1;
            if let Some(next) = self.turns.get(self.turn) {
                self.k = next.k_start;
            }
        }
    }

    fn pending(&self) -> bool {
        self.turn < self.turns.len() && self.k < self.budget
    }
}

/// The engine's configuration: the default with `--set` applied.
pub fn fraud_config(settings: &[String]) -> Result<FraudConfig, String> {
    let mut config = FraudConfig::default();
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("--set {setting}: expected KEY=VALUE"))?;
        let (key, value) = (key.trim(), value.trim());
        let number = || {
            value
                .parse::<f32>()
                .ok()
                .filter(|v| (0.0..=1.0).contains(v))
                .ok_or_else(|| format!("--set {setting}: {value} is not a number in 0..=1"))
        };
        match key {
            "alert_score_min" => config.score.alert_score_min = number()?,
            "quarantine_score_min" => config.score.quarantine_score_min = number()?,
            "warmup_readings" => {
                config.warmup_readings = value
                    .parse()
                    .map_err(|_| format!("--set {setting}: {value} is not a count"))?;
            }
            _ => {
                let detector = key
                    .strip_prefix("weights.")
                    .and_then(Detector::from_name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
                        format!(
                            "--set {setting}: unknown key (alert_score_min, quarantine_score_min, warmup_readings, weights.{{{}}})",
                            names.join(",")
                        )
                    })?;
                config.score.weights[detector.index()] = number()?;
            }
        }
    }
    Ok(config)
}

fn positive(name: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("--{name} must be a number > 0"))
    }
}

fn non_negative(name: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("--{name} must be a number >= 0"))
    }
}

/// Messages per device, as scripts/fraud-eval computes them for the default onsets.
fn per_device(args: &SimArgs) -> u64 {
    (args.rate * args.duration / args.devices.max(1) as f64) as u64
}

/// The onset range: the flags, or 30 % / 30 % of the messages per device.
fn onsets(args: &SimArgs) -> (u64, u64) {
    let default = per_device(args) * 3 / 10;
    (
        args.warmup_readings.unwrap_or(default),
        args.onset_span_readings.unwrap_or(default),
    )
}

/// Runs the simulation. `false_out` gets the `--dump-false` CSV, `missed_out` the
/// `--dump-missed` one.
pub fn simulate(
    args: &SimArgs,
    mut false_out: Option<&mut dyn Write>,
    missed_out: Option<&mut dyn Write>,
) -> Result<Outcome, String> {
    let rate = positive("rate", args.rate)?;
    let duration = positive("duration", args.duration)?;
    if args.devices == 0 || args.shards == 0 || args.peers_exchange_interval_ms == 0 {
        return Err("--devices, --shards and --peers-exchange-interval-ms must be >= 1".into());
    }
    let stall_us = match (args.stall_every_s, args.stall_ms) {
        (Some(every), Some(len)) => {
            let every = (positive("stall-every-s", every)? * 1e6) as u64;
            let len = (non_negative("stall-ms", len)? * 1e3) as u64;
            Some((every.max(1), len))
        }
        _ => None,
    };
    let schedule = Schedule::Constant { rate };
    let seq_base = args
        .seq_base
        .unwrap_or_else(|| args.start_ms.saturating_mul(1000));
    let plan = Plan {
        total_messages: schedule.due(duration),
        schedule,
        devices: args.devices,
        start_ms: args.start_ms,
        exchange_us: args.peers_exchange_interval_ms * 1000,
        latency: Latency {
            base_us: non_negative("latency-ms", args.latency_ms)? * 1e3,
            jitter_us: non_negative("jitter-ms", args.jitter_ms)? * 1e3,
            stall_us,
            start_us: args.start_ms * 1000,
            key: hash(&[args.seed, 0x01a7_e0c7]),
        },
    };
    let mix = match &args.scenario {
        Some(text) => Mix::parse(text)?,
        None => Mix::fraud_share(args.fraud_share)?,
    };
    if args.devices_per_location == 0 || args.locations_per_region == 0 {
        return Err("--devices-per-location and --locations-per-region must be >= 1".into());
    }
    let (warmup_readings, onset_span_readings) = onsets(args);
    let config = ScenarioConfig {
        seed: args.seed,
        day_ms: cli::day_ms(args.day_s)?,
        warmup_readings,
        onset_span_readings,
    };
    let ids = devices::anonymous(args.devices);
    let infos = devices::infos(
        ids.iter().map(|d| d.id.as_str()),
        None,
        args.devices_per_location,
        args.locations_per_region,
    );
    let scenarios = scenario::build(&config, &mix, &infos);
    if let Some(path) = &args.truth {
        scenario::write_truth_file(path, &scenarios, seq_base)?;
    }
    let truth: Vec<TruthRow> = scenarios
        .iter()
        .map(|s| TruthRow {
            device: s.id.clone(),
            scenario: s.label.name().to_string(),
            onset_seq: s.onset_seq(seq_base),
        })
        .collect();
    let mut evaluator = Evaluator::new(&truth, args.window, args.score_min);
    let mut stats = SimStats {
        shard_devices: vec![0; args.shards],
        ..SimStats::default()
    };
    let d = plan.devices as u64;
    let mut devices: Vec<SimDevice> = scenarios
        .into_iter()
        .zip(&infos)
        .enumerate()
        .map(|(i, (scenario, info))| {
            let i = i as u64;
            let budget = schedule::share(plan.total_messages, i, d);
            let turns = scenario.turns(budget, seq_base);
            let shard = ingestd_shards::home_shard(&info.id, args.shards);
            stats.shard_devices[shard] += 1;
            let onset_ts_ms = scenario
                .onset
                .map_or(0, |k| plan.start_ms + plan.schedule.planned_ms(k, i, d));
            let mut device = SimDevice {
                hash: device_hash(&info.id),
                scenario,
                turns,
                turn: 0,
                k: 0,
                budget,
                onset_ts_ms,
                next_ts_ms: 0,
                last_receive_us: 0,
                // Every device connects before the timed phase starts.
                connected_ms: plan.start_ms.saturating_sub(1),
                shard,
                replay: ReplayWindow::new(),
                fraud: DeviceFraud::new(&info.location, &info.region),
                missed: Vec::new(),
            };
            device.settle(plan.start_ms.saturating_sub(1));
            device
        })
        .collect();
    let fraud = fraud_config(&args.set)?;
    let alert_config = fraud.score;
    let mut scorers: Vec<Scorer> = (0..args.shards)
        .map(|_| Scorer::new(fraud.clone()))
        .collect();
    let (original_address, twin_address) = (address_hash(ORIGINAL_PEER), address_hash(TWIN_PEER));
    // One pending message per device, by (receive time, device index).
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::with_capacity(devices.len());
    for (i, device) in devices.iter_mut().enumerate() {
        if let Some(at) = plan_next(&plan, i as u64, device) {
            heap.push(Reverse((at, i as u32)));
        }
    }
    if let Some(out) = false_out.as_mut() {
        write_header(*out, "device,scenario,seq,received_ms,score")?;
    }
    let keep_missed = missed_out.is_some();
    let mut next_exchange_us = plan.latency.start_us + plan.exchange_us;
    let mut summaries: Vec<PeersSummary> = Vec::with_capacity(args.shards);
    while let Some(Reverse((received_us, index))) = heap.pop() {
        while received_us >= next_exchange_us {
            stats.summaries += exchange(&mut scorers, &mut summaries, next_exchange_us / 1000);
            next_exchange_us += plan.exchange_us;
        }
        let i = index as usize;
        let device = &mut devices[i];
        let turn = device.turns[device.turn];
        let k = device.k;
        let seq = turn.seq(k);
        let received_ms = received_us / 1000;
        let (ts_k, onset_ts_ms, onset) =
            (device.next_ts_ms, device.onset_ts_ms, device.scenario.onset);
        let emit = device.scenario.emit(k, turn.writer, &|j| {
            if j == k {
                ts_k
            } else if Some(j) == onset {
                onset_ts_ms
            } else {
                plan.start_ms + plan.schedule.planned_ms(j, i as u64, d)
            }
        });
        let address = match turn.writer {
            Writer::Original => original_address,
            Writer::Twin => twin_address,
        };
        stats.envelopes += 1;
        let scorer = &mut scorers[device.shard];
        // The core's order: the replay window, then the clock, then scoring.
        if device.replay.check(seq).is_err() {
            stats.refused += 1;
            evaluator.dead_letter(i);
            scorer.refused(
                &mut device.fraud,
                seq,
                address,
                device.connected_ms,
                received_ms,
            );
        } else if check_clock_skew(emit.ts_ms, received_ms, CLOCK_SKEW_MS_MAX).is_err() {
            stats.skewed += 1;
            evaluator.dead_letter(i);
        } else {
            let committed = device.replay.commit(seq);
            assert!(
                committed.is_ok(),
                "sequence {seq} passed check, then not commit"
            );
            let scored = scorer.score(
                &mut device.fraud,
                &Envelope {
                    device: device.hash,
                    seq,
                    device_ms: emit.ts_ms,
                    received_ms,
                    address,
                    connected_ms: device.connected_ms,
                    readings: &emit.readings,
                },
            );
            stats.scored += 1;
            let verdict = scored.verdict;
            let (phase, flagged) = evaluator.reading(
                i,
                seq,
                Some((verdict.score, verdict.is_flagged(&alert_config))),
                verdict.fired.iter().map(Detector::name),
            );
            match phase {
                Phase::Normal if flagged => {
                    if let Some(out) = false_out.as_mut() {
                        let head = format!(
                            "{},{},{seq},{received_ms},{:.4}",
                            device.scenario.id,
                            device.scenario.label.name(),
                            verdict.score
                        );
                        write_row(*out, &head, &scored.strengths)?;
                    }
                }
                Phase::AfterOnset(n) if keep_missed && (n as usize) < MISSED_READINGS_MAX => {
                    device.missed.push((seq, verdict.score, scored.strengths));
                }
                _ => {}
            }
        }
        device.last_receive_us = received_us;
        device.k += 1;
        device.settle(received_ms);
        if let Some(at) = plan_next(&plan, i as u64, device) {
            heap.push(Reverse((at, index)));
        }
    }
    if let Some(out) = missed_out {
        write_header(out, "device,scenario,from_onset,seq,score,flagged")?;
        let alert = args.score_min.unwrap_or(alert_config.alert_score_min);
        for (i, device) in devices.iter().enumerate() {
            if device.scenario.label == Label::Normal || evaluator.detected(i) {
                continue;
            }
            for (n, (seq, score, strengths)) in device.missed.iter().enumerate() {
                let head = format!(
                    "{},{},{n},{seq},{score:.4},{}",
                    device.scenario.id,
                    device.scenario.label.name(),
                    u8::from(*score >= alert)
                );
                write_row(out, &head, strengths)?;
            }
        }
    }
    Ok(Outcome {
        summary: evaluator.finish(),
        stats,
    })
}

/// Plans the device's next message: its device time, and its receive time (returned).
fn plan_next(plan: &Plan, i: u64, device: &mut SimDevice) -> Option<u64> {
    if !device.pending() {
        return None;
    }
    let d = plan.devices as u64;
    let secs = plan.schedule.planned_s(device.k, i, d).unwrap_or(0.0);
    device.next_ts_ms = plan.start_ms + schedule::whole_ms(secs);
    let sent_us = plan.latency.start_us + (secs * 1e6) as u64;
    let at = plan
        .latency
        .receive_us(i, device.k, sent_us)
        .max(device.last_receive_us);
    Some(at)
}

/// Every shard prunes its peers table and exports what it observed; every other shard
/// merges it (the server merges on its next 2 ms tick: the same instant here). Returns
/// the summaries delivered.
fn exchange(scorers: &mut [Scorer], summaries: &mut Vec<PeersSummary>, now_ms: u64) -> u64 {
    summaries.clear();
    for scorer in scorers.iter_mut() {
        let table = scorer.peers();
        table.prune(now_ms);
        summaries.push(table.export(now_ms));
    }
    let mut delivered = 0;
    for (from, summary) in summaries.iter().enumerate() {
        if summary.groups.is_empty() {
            continue;
        }
        for (to, scorer) in scorers.iter_mut().enumerate() {
            if to != from {
                scorer.peers().merge(from, summary);
                delivered += 1;
            }
        }
    }
    delivered
}

fn write_header(out: &mut dyn Write, head: &str) -> Result<(), String> {
    let names: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
    writeln!(out, "{head},{}", names.join(",")).map_err(|e| format!("writing a dump: {e}"))
}

fn write_row(
    out: &mut dyn Write,
    head: &str,
    strengths: &[f32; DETECTOR_COUNT],
) -> Result<(), String> {
    let mut line = String::with_capacity(head.len() + 8 * DETECTOR_COUNT);
    line.push_str(head);
    for s in strengths {
        if *s == 0.0 {
            line.push_str(",0");
        } else {
            let _ = write!(line, ",{s:.3}");
        }
    }
    writeln!(out, "{line}").map_err(|e| format!("writing a dump: {e}"))
}

/// The report: what was simulated, then the evaluation's Markdown (as `fraud-eval`).
pub fn report(args: &SimArgs, outcome: &Outcome) -> String {
    let (warmup, span) = onsets(args);
    let s = &outcome.stats;
    let stall = match (args.stall_every_s, args.stall_ms) {
        (Some(every), Some(len)) => format!(", a {len} ms stall every {every} s"),
        _ => String::new(),
    };
    let mix = match &args.scenario {
        Some(text) => format!("--scenario {text}"),
        None => format!("--fraud-share {}", args.fraud_share),
    };
    let settings = if args.set.is_empty() {
        "the default configuration".to_string()
    } else {
        format!("--set {}", args.set.join(" --set "))
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Fraud simulation (loadgen fraud-sim, no server): {} scorers (devices per shard: {}) with {settings}, receive time = planned send time + {} ms + exponential jitter of mean {} ms{stall}; peers summaries every {} ms.\n",
        args.shards,
        s.shard_devices
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("/"),
        args.latency_ms,
        args.jitter_ms,
        args.peers_exchange_interval_ms,
    );
    let _ = writeln!(
        out,
        "    loadgen fraud-sim --rate {} --duration {} --devices {} {mix} --devices-per-location {} --locations-per-region {} --day-s {} --window {} --seed {}\n",
        args.rate,
        args.duration,
        args.devices,
        args.devices_per_location,
        args.locations_per_region,
        args.day_s,
        args.window,
        args.seed,
    );
    let _ = writeln!(
        out,
        "{} devices ({} per location, {} locations per region), day {} s, onsets in [{warmup}, {}] messages. Simulated: {} envelopes, {} scored, {} refused by the replay window, {} refused for clock skew; {} peers summaries delivered.\n",
        args.devices,
        args.devices_per_location,
        args.locations_per_region,
        args.day_s,
        warmup + span,
        s.envelopes,
        s.scored,
        s.refused,
        s.skewed,
        s.summaries,
    );
    out.push_str(&outcome.summary.markdown());
    out
}

/// `loadgen fraud-sim`: simulates, writes the dumps, returns the report.
pub fn run(args: &SimArgs) -> Result<String, String> {
    let open = |path: &std::path::Path| {
        std::fs::File::create(path)
            .map(|f| std::io::BufWriter::with_capacity(1 << 16, f))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let mut false_file = args.dump_false.as_deref().map(open).transpose()?;
    let mut missed_file = args.dump_missed.as_deref().map(open).transpose()?;
    let outcome = simulate(
        args,
        false_file.as_mut().map(|f| f as &mut dyn Write),
        missed_file.as_mut().map(|f| f as &mut dyn Write),
    )?;
    for file in [false_file.as_mut(), missed_file.as_mut()]
        .into_iter()
        .flatten()
    {
        file.flush().map_err(|e| format!("writing a dump: {e}"))?;
    }
    Ok(report(args, &outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(stall_us: Option<(u64, u64)>) -> Latency {
        Latency {
            base_us: 2_000.0,
            jitter_us: 3_000.0,
            stall_us,
            start_us: 1_000_000_000,
            key: 7,
        }
    }

    #[test]
    fn settings_reach_the_engine() {
        let set = |s: &[&str]| fraud_config(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let config = set(&[
            "alert_score_min=0.4",
            "weights.timing = 0.25",
            "warmup_readings=7",
        ])
        .expect("valid settings");
        assert_eq!(config.score.alert_score_min, 0.4);
        assert_eq!(config.score.weights[Detector::Timing.index()], 0.25);
        assert_eq!(config.warmup_readings, 7);
        assert_eq!(set(&[]).expect("no settings"), FraudConfig::default());
        for bad in [
            "alert_score_min",
            "weights.nope=0.1",
            "weights.rate=2",
            "warmup_readings=-1",
        ] {
            assert!(set(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn jitter_is_exponential_above_the_base() {
        let l = latency(None);
        let n = 20_000u64;
        let delays: Vec<u64> = (0..n)
            .map(|k| l.receive_us(3, k, l.start_us + k * 1_000) - (l.start_us + k * 1_000))
            .collect();
        assert!(delays.iter().all(|d| *d >= 2_000));
        let mean = delays.iter().sum::<u64>() as f64 / n as f64;
        assert!((mean - 5_000.0).abs() < 150.0, "{mean}");
        // The median of an exponential is ln 2 × its mean.
        let mut sorted = delays.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2] as f64 - 2_000.0;
        assert!((median - 3_000.0 * 2f64.ln()).abs() < 150.0, "{median}");
        assert_eq!(
            delays[5],
            l.receive_us(3, 5, l.start_us + 5_000) - (l.start_us + 5_000)
        );
    }

    /// A stall every 10 s for 500 ms: what arrives inside it is received at its end, in
    /// order; what arrives outside it (and before the first) is not held.
    #[test]
    fn stalls_hold_arrivals_until_they_end() {
        let free = latency(None);
        let stalled = latency(Some((10_000_000, 500_000)));
        let start = stalled.start_us;
        for (sent_s, held) in [(5.0, false), (10.1, true), (20.3, true), (20.6, false)] {
            let sent = start + (sent_s * 1e6) as u64;
            let at = stalled.receive_us(1, 9, sent);
            let arrival = free.receive_us(1, 9, sent);
            if held {
                let stall_end = start + (sent_s as u64 / 10 * 10) * 1_000_000 + 500_000;
                assert_eq!(at, stall_end, "sent at {sent_s} s");
                assert!(at > arrival);
            } else {
                assert_eq!(at, arrival, "sent at {sent_s} s");
            }
        }
    }
}
