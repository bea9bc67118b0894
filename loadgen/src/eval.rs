//! `loadgen fraud-eval`: scores a run's fraud verdicts against its ground truth.
//!
//! Inputs:
//! - the truth file of `loadgen --truth`: CSV with a header naming at least `device`,
//!   `scenario` and `onset_seq` (an empty onset for a normal device); other columns are
//!   ignored;
//! - `ingestd log export` output: JSON lines `{"shard","offset","kind","payload_hex"}`.
//!   A `reading` record's payload is `u8 version, u32 LE meta_len, meta JSON, raw`; only the
//!   meta is decoded: `device`, `seq` and the optional `fraud: {score, detectors, flagged}`.
//!   `dead_letter` records are counted per device (a clone's refused sequences land there).
//!
//! Per device, readings are taken in the order of the export, which for one device is the
//! order of its home shard's log, i.e. arrival order (a device keeps its shard during a
//! run). A reading is at or after the onset when its sequence is `>= onset_seq`: every
//! scenario numbers its messages from one base, and a clone's second counter starts above
//! the onset too. The delay of a device is the index of its first flagged reading among
//! those (0: the onset reading itself); it is detected when the delay is below `window`.
//! A fraud device's readings before its onset count as normal readings.
//!
//! The accumulation is [`Evaluator`], fed one reading at a time: here from the export,
//! and by `loadgen fraud-sim` (`sim.rs`) straight from the engine, so both print the same
//! report by the same definitions.

use crate::cli::EvalArgs;
use crate::scenario::Label;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;

/// One truth row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruthRow {
    pub device: String,
    pub scenario: String,
    pub onset_seq: Option<u64>,
}

/// Parses a truth file.
pub fn parse_truth(text: &str) -> Result<Vec<TruthRow>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("the truth file is empty")?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("the truth file's header has no {name:?} column: {header}"))
    };
    let (device, scenario, onset) = (column("device")?, column("scenario")?, column("onset_seq")?);
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let field = |i: usize| {
            fields
                .get(i)
                .copied()
                .ok_or_else(|| format!("truth line {}: too few fields: {line}", n + 1))
        };
        let onset_text = field(onset)?;
        let onset_seq = if onset_text.is_empty() {
            None
        } else {
            Some(onset_text.parse().map_err(|_| {
                format!(
                    "truth line {}: onset_seq {onset_text:?} is not a number",
                    n + 1
                )
            })?)
        };
        let row = TruthRow {
            device: field(device)?.to_string(),
            scenario: field(scenario)?.to_string(),
            onset_seq,
        };
        if row.scenario != Label::Normal.name() && row.onset_seq.is_none() {
            return Err(format!(
                "truth line {}: scenario {} has no onset_seq",
                n + 1,
                row.scenario
            ));
        }
        if !seen.insert(row.device.clone()) {
            return Err(format!(
                "truth line {}: device {} listed twice",
                n + 1,
                row.device
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

#[derive(Deserialize)]
struct ExportLine {
    kind: String,
    payload_hex: String,
}

#[derive(Deserialize)]
struct ReadingMeta {
    device: String,
    seq: u64,
    #[serde(default)]
    fraud: Option<FraudMeta>,
}

#[derive(Deserialize)]
struct FraudMeta {
    score: f32,
    #[serde(default)]
    detectors: Vec<String>,
    #[serde(default)]
    flagged: bool,
}

#[derive(Deserialize)]
struct DeadLetterMeta {
    device: String,
}

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks_exact(2)
        .map(|p| Some(hex_nibble(p[0])? << 4 | hex_nibble(p[1])?))
        .collect()
}

/// The metadata JSON of a record payload given in hex, decoding only what is needed.
fn record_meta(payload_hex: &str) -> Result<Vec<u8>, String> {
    let head = unhex(
        payload_hex
            .as_bytes()
            .get(..10)
            .ok_or("record shorter than its header")?,
    )
    .ok_or("payload_hex is not hex")?;
    if head[0] != 1 {
        return Err(format!("record version {} (this reads 1)", head[0]));
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let meta = payload_hex
        .as_bytes()
        .get(10..10 + 2 * len)
        .ok_or("record shorter than its meta_len")?;
    unhex(meta).ok_or_else(|| "payload_hex is not hex".to_string())
}

/// What is known of one device.
#[derive(Default)]
struct DeviceTally {
    /// Index into the scenario list.
    scenario: usize,
    onset_seq: Option<u64>,
    /// Readings before the onset (all of a normal device's) and how many were flagged.
    normal_readings: u64,
    normal_flagged: u64,
    /// Readings at or after the onset.
    after_readings: u64,
    /// Index of the first flagged one among them, and its detectors.
    first_flag: Option<u64>,
    first_detectors: Vec<String>,
    dead_letters: u64,
}

/// The evaluation of one run.
#[derive(Debug, PartialEq)]
pub struct Summary {
    pub window: u64,
    pub rows: Vec<ScenarioRow>,
    /// Readings of normal devices, and flagged.
    pub normal_device_readings: u64,
    pub normal_device_flagged: u64,
    /// Readings of fraud devices before their onset, and flagged.
    pub before_onset_readings: u64,
    pub before_onset_flagged: u64,
    /// Normal devices with a reading, and those ever flagged.
    pub normal_devices: u64,
    pub normal_devices_flagged: u64,
    /// Detectors on flagged normal readings (fraud devices before their onset included).
    pub false_detectors: BTreeMap<String, u64>,
    /// Readings carrying a fraud verdict, of all readings of known devices.
    pub scored_readings: u64,
    pub readings: u64,
    /// Readings of devices the truth file does not list.
    pub unknown_readings: u64,
}

/// One fraud scenario's result.
#[derive(Debug, PartialEq)]
pub struct ScenarioRow {
    pub scenario: String,
    /// Devices with the label in the truth file.
    pub devices: u64,
    /// Devices with at least one reading at or after their onset.
    pub reached: u64,
    /// Reached devices flagged within the window, and at any time after the onset.
    pub detected: u64,
    pub ever: u64,
    /// Delay percentiles over the reached devices (`None`: not flagged by then).
    pub delay_p50: Option<u64>,
    pub delay_p90: Option<u64>,
    /// Detectors of each device's first flagged reading after the onset.
    pub first_detectors: BTreeMap<String, u64>,
    pub dead_letters: u64,
}

/// The nearest-rank percentile of delays where `None` (never) sorts last.
fn percentile(sorted: &[Option<u64>], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Where a reading stands against its device's onset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A normal device's reading, or a fraud device's before its onset.
    Normal,
    /// The `n`-th reading (0-based) of a fraud device at or after its onset.
    AfterOnset(u64),
}

/// The accumulation behind [`Summary`], fed one reading at a time in each device's
/// arrival order: by [`evaluate`] from a log export, and by `loadgen fraud-sim` from the
/// engine directly, so both print the same report by the same definitions.
pub struct Evaluator {
    window: u64,
    score_min: Option<f32>,
    /// Scenario names in table order.
    names: Vec<String>,
    /// Device id to its index in `tallies` (the truth file's order).
    index: HashMap<String, usize>,
    tallies: Vec<DeviceTally>,
    false_detectors: BTreeMap<String, u64>,
    scored_readings: u64,
    readings: u64,
    unknown_readings: u64,
}

impl Evaluator {
    /// An evaluator of the devices of `truth`. A reading is flagged when the server (or
    /// the engine) flagged it, or with `score_min` when its score reaches that.
    pub fn new(truth: &[TruthRow], window: u64, score_min: Option<f32>) -> Evaluator {
        // Table order: the labels' order, then unknown names alphabetically.
        let mut names: Vec<String> = truth.iter().map(|r| r.scenario.clone()).collect();
        names.sort_by_key(|n| {
            (
                Label::parse(n).map_or(usize::MAX, |l| l as usize),
                n.clone(),
            )
        });
        names.dedup();
        let scenario: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let tallies = truth
            .iter()
            .map(|r| DeviceTally {
                scenario: scenario[r.scenario.as_str()],
                onset_seq: r.onset_seq,
                ..DeviceTally::default()
            })
            .collect();
        let index = truth
            .iter()
            .enumerate()
            .map(|(i, r)| (r.device.clone(), i))
            .collect();
        Evaluator {
            window,
            score_min,
            names,
            index,
            tallies,
            false_detectors: BTreeMap::new(),
            scored_readings: 0,
            readings: 0,
            unknown_readings: 0,
        }
    }

    /// The index of a device of the truth file (its row).
    pub fn device(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// A reading of a device the truth file does not list.
    pub fn unknown_reading(&mut self) {
        self.unknown_readings += 1;
    }

    /// A reading of device `device` (an index from [`Evaluator::device`]) with sequence
    /// `seq`: its verdict `(score, flagged)` if it was scored, and the detectors that fired
    /// (only walked when it counts as flagged). Returns where it stands and whether it
    /// counts as flagged.
    pub fn reading<'d>(
        &mut self,
        device: usize,
        seq: u64,
        verdict: Option<(f32, bool)>,
        detectors: impl IntoIterator<Item = &'d str>,
    ) -> (Phase, bool) {
        let Some(tally) = self.tallies.get_mut(device) else {
            self.unknown_readings += 1;
            return (Phase::Normal, false);
        };
        self.readings += 1;
        let flagged = match verdict {
            None => false,
            Some((score, flagged)) => {
                self.scored_readings += 1;
                self.score_min.map_or(flagged, |min| score >= min)
            }
        };
        match tally.onset_seq {
            Some(onset) if seq >= onset => {
                let n = tally.after_readings;
                if flagged && tally.first_flag.is_none() {
                    tally.first_flag = Some(n);
                    tally.first_detectors = detectors.into_iter().map(str::to_string).collect();
                }
                tally.after_readings += 1;
                (Phase::AfterOnset(n), flagged)
            }
            _ => {
                tally.normal_readings += 1;
                if flagged {
                    tally.normal_flagged += 1;
                    for d in detectors {
                        match self.false_detectors.get_mut(d) {
                            Some(count) => *count += 1,
                            None => {
                                self.false_detectors.insert(d.to_string(), 1);
                            }
                        }
                    }
                }
                (Phase::Normal, flagged)
            }
        }
    }

    /// A dead letter of device `device` (an index from [`Evaluator::device`]).
    pub fn dead_letter(&mut self, device: usize) {
        if let Some(tally) = self.tallies.get_mut(device) {
            tally.dead_letters += 1;
        }
    }

    /// Whether device `device` counts as detected: flagged within the window from its
    /// onset (false for a normal device).
    pub fn detected(&self, device: usize) -> bool {
        self.tallies
            .get(device)
            .and_then(|t| t.first_flag)
            .is_some_and(|delay| delay < self.window)
    }

    /// The evaluation of everything fed.
    pub fn finish(self) -> Summary {
        let window = self.window;
        let mut summary = Summary {
            window,
            rows: Vec::new(),
            normal_device_readings: 0,
            normal_device_flagged: 0,
            before_onset_readings: 0,
            before_onset_flagged: 0,
            normal_devices: 0,
            normal_devices_flagged: 0,
            false_detectors: self.false_detectors,
            scored_readings: self.scored_readings,
            readings: self.readings,
            unknown_readings: self.unknown_readings,
        };
        let mut delays: Vec<Vec<Option<u64>>> = vec![Vec::new(); self.names.len()];
        let mut rows: Vec<ScenarioRow> = self
            .names
            .iter()
            .map(|name| ScenarioRow {
                scenario: name.clone(),
                devices: 0,
                reached: 0,
                detected: 0,
                ever: 0,
                delay_p50: None,
                delay_p90: None,
                first_detectors: BTreeMap::new(),
                dead_letters: 0,
            })
            .collect();
        for tally in &self.tallies {
            let row = &mut rows[tally.scenario];
            row.devices += 1;
            row.dead_letters += tally.dead_letters;
            if tally.onset_seq.is_none() {
                summary.normal_device_readings += tally.normal_readings;
                summary.normal_device_flagged += tally.normal_flagged;
                if tally.normal_readings > 0 {
                    summary.normal_devices += 1;
                    if tally.normal_flagged > 0 {
                        summary.normal_devices_flagged += 1;
                    }
                }
                continue;
            }
            summary.before_onset_readings += tally.normal_readings;
            summary.before_onset_flagged += tally.normal_flagged;
            if tally.after_readings == 0 {
                continue;
            }
            row.reached += 1;
            delays[tally.scenario].push(tally.first_flag);
            if let Some(delay) = tally.first_flag {
                row.ever += 1;
                if delay < window {
                    row.detected += 1;
                }
                for d in &tally.first_detectors {
                    *row.first_detectors.entry(d.clone()).or_default() += 1;
                }
            }
        }
        for (row, mut d) in rows.iter_mut().zip(delays) {
            // None (never flagged) sorts after every delay.
            d.sort_by_key(|x| x.unwrap_or(u64::MAX));
            row.delay_p50 = percentile(&d, 0.5);
            row.delay_p90 = percentile(&d, 0.9);
        }
        rows.retain(|r| r.scenario != Label::Normal.name());
        summary.rows = rows;
        summary
    }
}

/// Evaluates an export against a truth file. A reading is flagged when the server flagged
/// it, or with `score_min` when its score reaches that.
pub fn evaluate(
    truth: &[TruthRow],
    export: impl BufRead,
    window: u64,
    score_min: Option<f32>,
) -> Result<Summary, String> {
    let mut evaluator = Evaluator::new(truth, window, score_min);
    for (n, line) in export.lines().enumerate() {
        let line = line.map_err(|e| format!("reading the export: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: String| format!("export line {}: {e}", n + 1);
        let entry: ExportLine = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        match entry.kind.as_str() {
            "reading" => {
                let meta = record_meta(&entry.payload_hex).map_err(at)?;
                let meta: ReadingMeta =
                    serde_json::from_slice(&meta).map_err(|e| at(e.to_string()))?;
                let Some(device) = evaluator.device(&meta.device) else {
                    evaluator.unknown_reading();
                    continue;
                };
                let (verdict, detectors) = match &meta.fraud {
                    None => (None, &[][..]),
                    Some(f) => (Some((f.score, f.flagged)), f.detectors.as_slice()),
                };
                evaluator.reading(
                    device,
                    meta.seq,
                    verdict,
                    detectors.iter().map(String::as_str),
                );
            }
            "dead_letter" => {
                let meta = record_meta(&entry.payload_hex).map_err(at)?;
                let meta: DeadLetterMeta =
                    serde_json::from_slice(&meta).map_err(|e| at(e.to_string()))?;
                if let Some(device) = evaluator.device(&meta.device) {
                    evaluator.dead_letter(device);
                }
            }
            _ => {}
        }
    }
    Ok(evaluator.finish())
}

fn share(part: u64, whole: u64, digits: usize) -> String {
    if whole == 0 {
        "–".to_string()
    } else {
        format!("{:.digits$} %", 100.0 * part as f64 / whole as f64)
    }
}

fn top(counts: &BTreeMap<String, u64>, n: usize) -> String {
    let mut v: Vec<(&String, &u64)> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let text: Vec<String> = v
        .into_iter()
        .take(n)
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    if text.is_empty() {
        "–".to_string()
    } else {
        text.join(", ")
    }
}

impl Summary {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let w = self.window;
        let _ = writeln!(
            out,
            "Fraud scenarios: detected = a flagged reading among the first {w} from the onset; delay = readings from the onset to the first flagged one (percentiles over the devices that reached their onset, never flagged = ∞).\n"
        );
        let _ = writeln!(
            out,
            "| scenario | devices | reached onset | detected ≤ {w} | ever flagged | delay p50 | delay p90 | first detectors | dead letters |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|---:|");
        let delay = |d: Option<u64>, reached: u64| match (d, reached) {
            (_, 0) => "–".to_string(),
            (Some(d), _) => d.to_string(),
            (None, _) => "∞".to_string(),
        };
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.devices,
                r.reached,
                share(r.detected, r.reached, 1),
                share(r.ever, r.reached, 1),
                delay(r.delay_p50, r.reached),
                delay(r.delay_p90, r.reached),
                top(&r.first_detectors, 3),
                r.dead_letters,
            );
        }
        let _ = writeln!(out, "\nFalse alerts on normal readings:\n");
        let _ = writeln!(out, "| readings of | readings | flagged | share |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        let rows = [
            (
                "normal devices",
                self.normal_device_readings,
                self.normal_device_flagged,
            ),
            (
                "fraud devices before their onset",
                self.before_onset_readings,
                self.before_onset_flagged,
            ),
            (
                "all normal readings",
                self.normal_device_readings + self.before_onset_readings,
                self.normal_device_flagged + self.before_onset_flagged,
            ),
        ];
        for (what, readings, flagged) in rows {
            let _ = writeln!(
                out,
                "| {what} | {readings} | {flagged} | {} |",
                share(flagged, readings, 3)
            );
        }
        let _ = writeln!(
            out,
            "\nNormal devices ever flagged: {} of {} ({}). Detectors on flagged normal readings: {}.",
            self.normal_devices_flagged,
            self.normal_devices,
            share(self.normal_devices_flagged, self.normal_devices, 2),
            top(&self.false_detectors, 5),
        );
        let _ = writeln!(
            out,
            "Readings with a fraud verdict: {} of {}.",
            self.scored_readings, self.readings
        );
        if self.scored_readings == 0 && self.readings > 0 {
            let _ = writeln!(
                out,
                "No reading carries a fraud verdict: scoring is off (or not wired), so nothing is detected."
            );
        }
        if self.unknown_readings > 0 {
            let _ = writeln!(
                out,
                "{} readings of devices not in the truth file were ignored.",
                self.unknown_readings
            );
        }
        out
    }
}

/// `loadgen fraud-eval`: reads the files and returns the Markdown report.
pub fn run(args: &EvalArgs) -> Result<String, String> {
    let text = std::fs::read_to_string(&args.truth)
        .map_err(|e| format!("cannot read {}: {e}", args.truth.display()))?;
    let truth = parse_truth(&text)?;
    let summary = if args.export.as_os_str() == "-" {
        evaluate(&truth, std::io::stdin().lock(), args.window, args.score_min)?
    } else {
        let file = std::fs::File::open(&args.export)
            .map_err(|e| format!("cannot read {}: {e}", args.export.display()))?;
        evaluate(
            &truth,
            std::io::BufReader::with_capacity(1 << 20, file),
            args.window,
            args.score_min,
        )?
    };
    Ok(summary.markdown())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One export line for a reading, built as `ingestd log export` writes it.
    fn reading(device: &str, seq: u64, fraud: Option<(f32, &[&str], bool)>) -> String {
        let mut meta = serde_json::json!({
            "device": device, "seq": seq, "ts_ms": 1, "readings": {"co2_ppm": 420.0},
            "topic": format!("devices/{device}/telemetry"), "received_ms": 2, "node": "n",
            "shard": 0, "qos": 1,
        });
        if let Some((score, detectors, flagged)) = fraud {
            meta["fraud"] = serde_json::json!({
                "score": score, "detectors": detectors, "flagged": flagged,
            });
        }
        record("reading", &meta)
    }

    fn dead_letter(device: &str, seq: u64) -> String {
        let meta = serde_json::json!({
            "reason": "replayed", "detail": "d", "device": device, "topic": "t",
            "received_ms": 2, "node": "n", "shard": 0, "qos": 1, "peer": "p", "seq": seq,
        });
        record("dead_letter", &meta)
    }

    fn record(kind: &str, meta: &serde_json::Value) -> String {
        let json = serde_json::to_vec(meta).unwrap();
        let mut payload = vec![1u8];
        payload.extend_from_slice(&(json.len() as u32).to_le_bytes());
        payload.extend_from_slice(&json);
        payload.extend_from_slice(b"\x01raw envelope");
        let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({"shard": 0, "offset": 0, "kind": kind, "payload_hex": hex}).to_string()
    }

    const TRUTH: &str = "device,scenario,onset_seq,params\n\
        n1,normal,,\n\
        n2,normal,,\n\
        d1,drift,100,kind=co2_ppm\n\
        d2,drift,200,\n\
        d3,drift,300,\n\
        s1,spike,50,\n";

    fn flag() -> Option<(f32, &'static [&'static str], bool)> {
        Some((0.9, &["drift"], true))
    }

    fn quiet() -> Option<(f32, &'static [&'static str], bool)> {
        Some((0.1, &[], false))
    }

    #[test]
    fn parses_truth() {
        let rows = parse_truth(TRUTH).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(
            rows[2],
            TruthRow {
                device: "d1".into(),
                scenario: "drift".into(),
                onset_seq: Some(100)
            }
        );
        assert_eq!(rows[0].onset_seq, None);
        // Columns found by name; extra columns ignored.
        let rows = parse_truth("scenario,x,device,onset_seq\nspike,?,a,7\n").unwrap();
        assert_eq!(rows[0].device, "a");
        assert_eq!(rows[0].onset_seq, Some(7));
        assert!(parse_truth("").is_err());
        assert!(parse_truth("device,scenario\n").is_err());
        assert!(parse_truth("device,scenario,onset_seq\na,drift,\n").is_err());
        assert!(parse_truth("device,scenario,onset_seq\na,drift,x\n").is_err());
        assert!(parse_truth("device,scenario,onset_seq\na,normal,\na,normal,\n").is_err());
    }

    #[test]
    fn counts_detection_delay_and_false_alerts() {
        let mut lines = Vec::new();
        // n1: 10 readings, one flagged. n2: 10 quiet readings.
        for seq in 0..10 {
            lines.push(reading("n1", seq, if seq == 4 { flag() } else { quiet() }));
            lines.push(reading("n2", seq, quiet()));
        }
        // d1: 5 readings before the onset (one flagged), flagged at the 3rd after it.
        for seq in 95..140 {
            let f = if seq == 96 || seq == 102 {
                flag()
            } else {
                quiet()
            };
            lines.push(reading("d1", seq, f));
        }
        // d2: flagged only 40 readings after its onset: outside the window of 30.
        for seq in 200..260 {
            lines.push(reading(
                "d2",
                seq,
                if seq == 240 { flag() } else { quiet() },
            ));
        }
        // d3: never reaches its onset. s1: flagged at its onset, with two detectors.
        for seq in 0..10 {
            lines.push(reading("d3", seq, quiet()));
        }
        lines.push(reading(
            "s1",
            50,
            Some((0.95, &["bounds", "deviation"], true)),
        ));
        lines.push(dead_letter("s1", 49));
        lines.push(reading("stranger", 1, flag()));
        let export = lines.join("\n");
        let truth = parse_truth(TRUTH).unwrap();
        let s = evaluate(&truth, export.as_bytes(), 30, None).unwrap();
        assert_eq!(s.rows.len(), 2);
        let drift = &s.rows[1];
        assert_eq!(s.rows[0].scenario, "spike", "labels keep their order");
        assert_eq!(drift.scenario, "drift");
        assert_eq!(drift.devices, 3);
        assert_eq!(drift.reached, 2);
        assert_eq!(drift.detected, 1);
        assert_eq!(drift.ever, 2);
        assert_eq!(drift.delay_p50, Some(2));
        assert_eq!(drift.delay_p90, Some(40));
        assert_eq!(drift.first_detectors["drift"], 2);
        let spike = &s.rows[0];
        assert_eq!((spike.reached, spike.detected), (1, 1));
        assert_eq!(spike.delay_p50, Some(0));
        assert_eq!(spike.first_detectors["bounds"], 1);
        assert_eq!(spike.dead_letters, 1);
        assert_eq!(s.normal_device_readings, 20);
        assert_eq!(s.normal_device_flagged, 1);
        // d1's 5 and d3's 10 readings before their onsets; d1's one flag.
        assert_eq!(s.before_onset_readings, 15);
        assert_eq!(s.before_onset_flagged, 1);
        assert_eq!((s.normal_devices, s.normal_devices_flagged), (2, 1));
        assert_eq!(s.false_detectors["drift"], 2);
        assert_eq!(s.unknown_readings, 1);
        assert_eq!(s.readings, s.scored_readings);
        let md = s.markdown();
        assert!(
            md.contains("| drift | 3 | 2 | 50.0 % | 100.0 % | 2 | 40 | drift 2 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| all normal readings | 35 | 2 | 5.714 % |"),
            "{md}"
        );
        assert!(
            md.contains("Normal devices ever flagged: 1 of 2 (50.00 %)"),
            "{md}"
        );
    }

    #[test]
    fn undetected_devices_make_infinite_percentiles() {
        let truth = parse_truth("device,scenario,onset_seq\na,stuck,10\nb,stuck,10\n").unwrap();
        let lines: Vec<String> = (0..40)
            .flat_map(|seq| {
                [
                    reading("a", seq, if seq == 12 { flag() } else { quiet() }),
                    reading("b", seq, quiet()),
                ]
            })
            .collect();
        let s = evaluate(&truth, lines.join("\n").as_bytes(), 30, None).unwrap();
        let row = &s.rows[0];
        assert_eq!((row.reached, row.detected, row.ever), (2, 1, 1));
        assert_eq!(row.delay_p50, Some(2));
        assert_eq!(row.delay_p90, None);
        assert!(s
            .markdown()
            .contains("| stuck | 2 | 2 | 50.0 % | 50.0 % | 2 | ∞ |"));
    }

    /// With no verdicts at all (scoring off), everything is undetected and said so.
    #[test]
    fn unscored_export_detects_nothing() {
        let truth = parse_truth(TRUTH).unwrap();
        let lines: Vec<String> = (0..300)
            .flat_map(|seq| [reading("n1", seq, None), reading("d1", seq, None)])
            .collect();
        let s = evaluate(&truth, lines.join("\n").as_bytes(), 30, None).unwrap();
        assert_eq!(s.scored_readings, 0);
        assert_eq!(s.rows[1].detected, 0);
        assert_eq!(s.rows[1].reached, 1);
        assert!(s.markdown().contains("No reading carries a fraud verdict"));
    }

    #[test]
    fn score_threshold_replaces_the_flag() {
        let truth = parse_truth("device,scenario,onset_seq\na,drift,0\n").unwrap();
        let lines = [
            reading("a", 0, Some((0.3, &["drift"], false))),
            reading("a", 1, Some((0.6, &["drift"], false))),
        ]
        .join("\n");
        let flagged = |min| evaluate(&truth, lines.as_bytes(), 30, min).unwrap().rows[0].delay_p50;
        assert_eq!(flagged(None), None);
        assert_eq!(flagged(Some(0.5)), Some(1));
        assert_eq!(flagged(Some(0.2)), Some(0));
    }

    #[test]
    fn refuses_garbage() {
        let truth = parse_truth(TRUTH).unwrap();
        assert!(evaluate(&truth, "not json".as_bytes(), 30, None).is_err());
        let bad = r#"{"shard":0,"offset":0,"kind":"reading","payload_hex":"02000000"}"#;
        assert!(evaluate(&truth, bad.as_bytes(), 30, None).is_err());
        let short = r#"{"shard":0,"offset":0,"kind":"reading","payload_hex":"01ff00000000"}"#;
        assert!(evaluate(&truth, short.as_bytes(), 30, None).is_err());
        // Credentials and other kinds are skipped.
        let other = r#"{"shard":0,"offset":0,"kind":"credential","payload_hex":"zz"}"#;
        assert!(evaluate(&truth, other.as_bytes(), 30, None).is_ok());
    }
}
