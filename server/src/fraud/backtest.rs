//! The live scoring engine over history: `ingestd fraud backtest` and `ingestd fraud explain`.
//!
//! Both run the same [`Scorer`] the shards run, fed exactly what the shard core feeds it
//! (`shards/src/core/publish.rs`), so thresholds tuned on a backtest hold live. The output
//! depends on nothing but the input and the configuration: no clock, no randomness, no
//! hash-map order, scores printed with a fixed number of digits. Same input, same bytes.
//!
//! # Inputs (detected from the first non-blank line)
//!
//! - **`ingestd log export` lines** (JSON objects): every reading record is replayed as
//!   live: device time, receive time, sequence, the connection (`peer`, `connected_ms`) and
//!   the readings come from the record's metadata; dead letters of sequences refused as
//!   `replayed` or `stale_sequence` are fed to [`Scorer::refused`] as the core does. File
//!   order is replay order, with one scorer per `shard` value (the shard's learned model
//!   depends on the order of the shard's log) and one state per device id. Credentials,
//!   opaque payloads and other dead letters are read and skipped. One output row per
//!   reading record.
//! - **CSV** with a header naming at least `timestamp` and `value` (case-insensitive, any
//!   order), optionally `device` (default `device`) and `kind` (a name from
//!   docs/PROTOCOL.md section 6, default the caller's); other columns are ignored. A
//!   timestamp is ms since the Unix epoch (digits only) or RFC 3339
//!   (`2024-05-01T12:00:00.250Z`, fractions past the ms truncated). Consecutive rows of
//!   one device with the same timestamp are one envelope, as a device sends its kinds
//!   together; the envelope's sequence number counts that device's envelopes from 1, and
//!   receive time is the timestamp. Every row gets its envelope's verdict.
//!
//! # Output
//!
//! CSV, header [`OUTPUT_HEADER`], one row per input row (per reading record of an
//! export): device id, sequence, timestamp (the device time, ms), score (`{:.6}`),
//! `true`/`false` for flagged and quarantined, the detectors that fired joined by `|` in
//! detector order. A line that does not parse stops the run with an error naming it
//! ([`BacktestError::Line`]); nothing is scored past it.
//!
//! # Limits
//!
//! The peers detector compares a device with the live values of the other devices, which
//! a replay does not rebuild: its part of a score may differ from the live one. A replay
//! starts from a fresh engine, so it reproduces live scores only from the start of the
//! log (or of the history the input holds).

use crate::log::{LogReader, RecordKind};
use crate::record::{self, DeadLetterMeta, FraudMeta, ReadingMeta};
use ingestd_codec::envelope::{hex, is_valid_device_id, Kind, Reading, Readings, MAX_READINGS};
use ingestd_shards::fraud::engine::{
    address_hash, device_hash, DeviceFraud, Envelope, Finding, FraudConfig, Scored, Scorer,
};
use ingestd_shards::fraud::{Detector, Verdict};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// The header of the backtest output.
pub const OUTPUT_HEADER: &str = "device,seq,timestamp,score,flagged,quarantined,detectors";

/// Distinct `shard` values a log export may name: each gets a scorer of its own, so a
/// corrupt value must not make the replay build millions.
pub const SHARDS_MAX: usize = 4096;

/// Bytes one input line may have (a log export line holds a record in hex: twice the
/// largest PUBLISH plus its metadata).
pub const LINE_BYTES_MAX: usize = 8 << 20;

/// Why a backtest or an explanation stopped.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// A line of the input that cannot be scored (1-based line number).
    #[error("line {line}: {message}")]
    Line { line: u64, message: String },
    #[error("the input is empty: expected a CSV header with `timestamp` and `value` columns, or the JSON lines of `ingestd log export`")]
    Empty,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Reading the durable log (`fraud explain`).
    #[error("{0}")]
    Log(String),
    /// `fraud explain`: the device or the reading is not in the log.
    #[error("{0}")]
    NotFound(String),
}

fn line_error(line: u64, message: impl Into<String>) -> BacktestError {
    BacktestError::Line {
        line,
        message: message.into(),
    }
}

/// The input format, detected from the content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Csv,
    LogExport,
}

impl Format {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "CSV",
            Format::LogExport => "log export",
        }
    }
}

/// What a backtest did, for the operator's summary line (never part of the output file).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub format: Format,
    /// Output rows written.
    pub rows: u64,
    /// Rows whose score reached the alert and the quarantine thresholds.
    pub flagged: u64,
    pub quarantined: u64,
    /// Log export only: reading records that carry the verdict scored live, how many of
    /// them the replay reproduced exactly, and where the first difference is.
    pub recorded: u64,
    pub reproduced: u64,
    pub first_difference: Option<String>,
}

/// Options of a backtest.
#[derive(Clone, Copy, Debug)]
pub struct BacktestOptions {
    /// The kind of CSV rows without a `kind` column (or with an empty cell).
    pub default_kind: Kind,
}

impl Default for BacktestOptions {
    fn default() -> Self {
        BacktestOptions {
            default_kind: Kind::Co2Ppm,
        }
    }
}

/// Scores `input` and writes one CSV row per reading to `out`.
pub fn backtest(
    config: &FraudConfig,
    options: BacktestOptions,
    input: impl BufRead,
    out: impl Write,
) -> Result<Summary, BacktestError> {
    let mut lines = Lines::new(input);
    let Some((line_no, first)) = lines.next_nonblank()? else {
        return Err(BacktestError::Empty);
    };
    let mut out = Output::new(out, config)?;
    if first.starts_with('{') {
        out.summary.format = Format::LogExport;
        let mut replay = Replay::new(config.clone());
        let mut line = Some((line_no, first));
        while let Some((line_no, text)) = line {
            let record = ExportLine::parse(&text).map_err(|m| line_error(line_no, m))?;
            let replayed = replay
                .record(record.shard, record.kind, &record.payload)
                .map_err(|m| line_error(line_no, m))?;
            if let Replayed::Reading(reading) = replayed {
                out.compare(&reading, record.offset);
                out.row(
                    &reading.meta.device,
                    reading.meta.seq,
                    reading.meta.ts_ms,
                    reading.scored.verdict,
                )?;
            }
            line = lines.next_nonblank()?;
        }
    } else {
        out.summary.format = Format::Csv;
        let mut csv = CsvBacktest::new(config.clone(), options, &first, line_no)?;
        while let Some((line_no, text)) = lines.next_nonblank()? {
            csv.row(&text, line_no, &mut out)?;
        }
        csv.flush(&mut out)?;
    }
    out.finish()
}

/// Physical lines of the input, numbered from 1, without their line ending; a UTF-8
/// byte-order mark in front of the first is dropped.
struct Lines<R> {
    input: R,
    line_no: u64,
    buffer: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    fn new(input: R) -> Lines<R> {
        Lines {
            input,
            line_no: 0,
            buffer: Vec::new(),
        }
    }

    /// The next line that is not blank.
    fn next_nonblank(&mut self) -> Result<Option<(u64, String)>, BacktestError> {
        loop {
            self.buffer.clear();
            let read = <&mut R as std::io::Read>::take(&mut self.input, LINE_BYTES_MAX as u64 + 1)
                .read_until(b'\n', &mut self.buffer)?;
            if read == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            if self.buffer.len() > LINE_BYTES_MAX {
                return Err(line_error(
                    self.line_no,
                    format!("longer than {LINE_BYTES_MAX} bytes"),
                ));
            }
            let mut bytes = self.buffer.as_slice();
            if self.line_no == 1 {
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            let text = std::str::from_utf8(bytes)
                .map_err(|e| line_error(self.line_no, format!("not UTF-8 text: {e}")))?;
            let text = text.trim();
            if !text.is_empty() {
                return Ok(Some((self.line_no, text.to_string())));
            }
        }
    }
}

/// The output CSV and the running summary.
struct Output<'c, W: Write> {
    out: std::io::BufWriter<W>,
    config: &'c FraudConfig,
    summary: Summary,
    line: String,
}

impl<'c, W: Write> Output<'c, W> {
    fn new(out: W, config: &'c FraudConfig) -> Result<Self, BacktestError> {
        let mut out = std::io::BufWriter::new(out);
        writeln!(out, "{OUTPUT_HEADER}")?;
        Ok(Output {
            out,
            config,
            summary: Summary::default(),
            line: String::new(),
        })
    }

    fn row(
        &mut self,
        device: &str,
        seq: u64,
        timestamp_ms: u64,
        verdict: Verdict,
    ) -> Result<(), BacktestError> {
        let flagged = verdict.is_flagged(&self.config.score);
        let quarantined = verdict.is_quarantined(&self.config.score);
        self.summary.rows += 1;
        self.summary.flagged += u64::from(flagged);
        self.summary.quarantined += u64::from(quarantined);
        self.line.clear();
        // Writing into a String cannot fail.
        let _ = write!(
            self.line,
            "{device},{seq},{timestamp_ms},{:.6},{flagged},{quarantined},",
            verdict.score
        );
        for (i, detector) in verdict.fired.iter().enumerate() {
            if i > 0 {
                self.line.push('|');
            }
            self.line.push_str(detector.name());
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())?;
        Ok(())
    }

    /// Counts whether a reading's recorded verdict is the replayed one.
    fn compare(&mut self, reading: &ReplayedReading, offset: u64) {
        let Some(recorded) = &reading.meta.fraud else {
            return;
        };
        self.summary.recorded += 1;
        let replayed = fraud_meta(reading.scored.verdict, self.config);
        if *recorded == replayed {
            self.summary.reproduced += 1;
        } else if self.summary.first_difference.is_none() {
            self.summary.first_difference = Some(format!(
                "shard {} offset {offset} (device {} seq {}): recorded {}, replayed {}",
                reading.shard,
                reading.meta.device,
                reading.meta.seq,
                describe(recorded),
                describe(&replayed)
            ));
        }
    }

    fn finish(mut self) -> Result<Summary, BacktestError> {
        self.out.flush()?;
        Ok(self.summary)
    }
}

/// The verdict as the core records it.
#[must_use]
pub fn fraud_meta(verdict: Verdict, config: &FraudConfig) -> FraudMeta {
    FraudMeta {
        score: verdict.score,
        detectors: verdict.fired.iter().map(|d| d.name().to_string()).collect(),
        flagged: verdict.is_flagged(&config.score),
        quarantined: verdict.is_quarantined(&config.score),
    }
}

/// `0.812345 [deviation|drift] flagged` and the like.
fn describe(meta: &FraudMeta) -> String {
    let mut text = format!("{:.6} [{}]", meta.score, meta.detectors.join("|"));
    if meta.flagged {
        text.push_str(" flagged");
    }
    if meta.quarantined {
        text.push_str(" quarantined");
    }
    text
}

// ---------------------------------------------------------------------------------------
// The log replay, shared by backtest (export files) and explain (the data directory).

/// The shard engine replayed over log records: one scorer per shard, one state per device.
pub struct Replay {
    config: FraudConfig,
    scorers: BTreeMap<usize, Scorer>,
    devices: HashMap<String, DeviceFraud>,
    /// Keep every detector's findings ([`Scorer::trace`]).
    trace: bool,
}

/// What one replayed record was.
pub enum Replayed {
    /// A reading, scored.
    Reading(Box<ReplayedReading>),
    /// A dead letter of a refused sequence, fed to the clone evidence.
    Refused,
    /// Anything the live engine does not see (credentials, opaque payloads, other dead
    /// letters).
    Skipped,
}

/// A reading record and its replayed verdict.
pub struct ReplayedReading {
    pub shard: usize,
    pub meta: ReadingMeta,
    /// The envelope's readings, by kind code.
    pub readings: Readings,
    pub scored: Scored,
    /// Every detector's finding (empty unless the replay traces).
    pub findings: Vec<Finding>,
}

impl Replay {
    #[must_use]
    pub fn new(config: FraudConfig) -> Replay {
        Replay {
            config,
            scorers: BTreeMap::new(),
            devices: HashMap::new(),
            trace: false,
        }
    }

    /// Keep every detector's findings of every reading (for `fraud explain`).
    #[must_use]
    pub fn traced(mut self) -> Replay {
        self.trace = true;
        self
    }

    #[must_use]
    pub fn config(&self) -> &FraudConfig {
        &self.config
    }

    /// A device's state as the records so far left it.
    #[must_use]
    pub fn device(&self, id: &str) -> Option<&DeviceFraud> {
        self.devices.get(id)
    }

    /// The scorer of a shard and the state of a device (created at first sight, as the
    /// core does; the peer groups come with each reading).
    fn scorer_and_device(
        &mut self,
        shard: usize,
        device: &str,
    ) -> Result<(&mut Scorer, &mut DeviceFraud), String> {
        if !self.scorers.contains_key(&shard) && self.scorers.len() >= SHARDS_MAX {
            return Err(format!(
                "shard {shard}: more than {SHARDS_MAX} distinct shards in one replay"
            ));
        }
        let (config, trace) = (&self.config, self.trace);
        let scorer = self.scorers.entry(shard).or_insert_with(|| {
            let mut scorer = Scorer::new(config.clone());
            if trace {
                scorer.trace();
            }
            scorer
        });
        let state = self
            .devices
            .entry(device.to_string())
            .or_insert_with(|| DeviceFraud::new("", ""));
        Ok((scorer, state))
    }

    /// Replays one record of shard `shard`'s log, as the shard core saw it.
    pub fn record(
        &mut self,
        shard: usize,
        kind: RecordKind,
        payload: &[u8],
    ) -> Result<Replayed, String> {
        if kind == RecordKind::Credential {
            return Ok(Replayed::Skipped);
        }
        let (json, _raw) = record::split(payload)
            .ok_or("the record payload is not a version-1 record (version, length, metadata)")?;
        match kind {
            RecordKind::Reading => {
                let value: serde_json::Value = serde_json::from_slice(json)
                    .map_err(|e| format!("reading metadata is not JSON: {e}"))?;
                if value.get("opaque").and_then(serde_json::Value::as_bool) == Some(true) {
                    // Stored undecoded (benchmarks only): never scored live.
                    return Ok(Replayed::Skipped);
                }
                let meta: ReadingMeta =
                    serde_json::from_value(value).map_err(|e| format!("reading metadata: {e}"))?;
                self.reading(shard, meta).map(Replayed::Reading)
            }
            RecordKind::DeadLetter => {
                let meta: DeadLetterMeta = serde_json::from_slice(json)
                    .map_err(|e| format!("dead letter metadata: {e}"))?;
                // Only these reasons reach `Scorer::refused` live (`core::publish`).
                let (Some(seq), "replayed" | "stale_sequence") = (meta.seq, meta.reason.as_str())
                else {
                    return Ok(Replayed::Skipped);
                };
                let (scorer, state) = self.scorer_and_device(shard, &meta.device)?;
                scorer.refused(
                    state,
                    seq,
                    address_hash(&meta.peer),
                    meta.connected_ms,
                    meta.received_ms,
                );
                Ok(Replayed::Refused)
            }
            RecordKind::Credential => Ok(Replayed::Skipped),
        }
    }

    fn reading(&mut self, shard: usize, meta: ReadingMeta) -> Result<Box<ReplayedReading>, String> {
        let readings = readings_of(&meta)?;
        let (scorer, state) = self.scorer_and_device(shard, &meta.device)?;
        // The registry's location and region at the time, as the record carries them.
        state.set_groups(&meta.location, &meta.region);
        let envelope = Envelope {
            device: device_hash(&meta.device),
            seq: meta.seq,
            device_ms: meta.ts_ms,
            received_ms: meta.received_ms,
            address: address_hash(&meta.peer),
            connected_ms: meta.connected_ms,
            readings: readings.as_slice(),
        };
        let scored = scorer.score(state, &envelope);
        let findings = scorer.take_trace();
        Ok(Box::new(ReplayedReading {
            shard,
            meta,
            readings,
            scored,
            findings,
        }))
    }
}

/// A record's readings in the envelope's order (kind codes ascending, as every decoded
/// envelope has them).
fn readings_of(meta: &ReadingMeta) -> Result<Readings, String> {
    let mut readings = Vec::with_capacity(meta.readings.len());
    for (name, value) in &meta.readings {
        let kind = Kind::from_name(name).ok_or_else(|| {
            format!("unknown reading kind {name:?} (docs/PROTOCOL.md section 6 lists them)")
        })?;
        readings.push(Reading::new(kind, *value));
    }
    Readings::from_unsorted(&readings).map_err(|e| format!("readings: {e}"))
}

/// One line of `ingestd log export`.
struct ExportLine {
    shard: usize,
    offset: u64,
    kind: RecordKind,
    payload: Vec<u8>,
}

impl ExportLine {
    fn parse(text: &str) -> Result<ExportLine, String> {
        #[derive(serde::Deserialize)]
        struct Raw {
            shard: usize,
            #[serde(default)]
            offset: u64,
            kind: String,
            payload_hex: Option<String>,
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| {
            format!("not a line of `ingestd log export` (shard, offset, kind, payload_hex): {e}")
        })?;
        let kind = match raw.kind.as_str() {
            "reading" => RecordKind::Reading,
            "dead_letter" => RecordKind::DeadLetter,
            "credential" => RecordKind::Credential,
            other => return Err(format!("unknown record kind {other:?}")),
        };
        let hex_text = raw.payload_hex.ok_or(
            "no payload_hex: `ingestd log tail` prints summaries; use `ingestd log export`",
        )?;
        let payload = hex::decode_vec(&hex_text).ok_or("payload_hex is not hex")?;
        Ok(ExportLine {
            shard: raw.shard,
            offset: raw.offset,
            kind,
            payload,
        })
    }
}

// ---------------------------------------------------------------------------------------
// CSV input.

/// Where the columns are.
struct Columns {
    timestamp: usize,
    value: usize,
    device: Option<usize>,
    kind: Option<usize>,
    /// Cells a row must have.
    needed: usize,
}

impl Columns {
    fn parse(header: &str, line: u64) -> Result<Columns, BacktestError> {
        let names: Vec<String> = split_csv(header)
            .map_err(|m| line_error(line, m))?
            .into_iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        let find = |name: &str| -> Result<Option<usize>, BacktestError> {
            let mut found = names.iter().enumerate().filter(|(_, n)| *n == name);
            let first = found.next().map(|(i, _)| i);
            if found.next().is_some() {
                return Err(line_error(line, format!("the header names `{name}` twice")));
            }
            Ok(first)
        };
        let required = |name: &str| -> Result<usize, BacktestError> {
            find(name)?.ok_or_else(|| {
                line_error(
                    line,
                    format!(
                        "the CSV header has no `{name}` column (it needs `timestamp` and `value`, optionally `device` and `kind`; found: {})",
                        names.join(",")
                    ),
                )
            })
        };
        let (timestamp, value) = (required("timestamp")?, required("value")?);
        let (device, kind) = (find("device")?, find("kind")?);
        let needed = [Some(timestamp), Some(value), device, kind]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
            + 1;
        Ok(Columns {
            timestamp,
            value,
            device,
            kind,
            needed,
        })
    }
}

/// Readings of one device at one timestamp: one envelope.
struct Group {
    device: String,
    timestamp_ms: u64,
    readings: Readings,
}

/// A device of a CSV backtest.
struct CsvDevice {
    state: DeviceFraud,
    /// Envelopes so far: the sequence of the next is this plus one.
    envelopes: u64,
}

struct CsvBacktest {
    columns: Columns,
    default_kind: Kind,
    scorer: Scorer,
    devices: HashMap<String, CsvDevice>,
    pending: Option<Group>,
}

impl CsvBacktest {
    fn new(
        config: FraudConfig,
        options: BacktestOptions,
        header: &str,
        line: u64,
    ) -> Result<CsvBacktest, BacktestError> {
        Ok(CsvBacktest {
            columns: Columns::parse(header, line)?,
            default_kind: options.default_kind,
            scorer: Scorer::new(config),
            devices: HashMap::new(),
            pending: None,
        })
    }

    fn row<W: Write>(
        &mut self,
        text: &str,
        line: u64,
        out: &mut Output<'_, W>,
    ) -> Result<(), BacktestError> {
        let cells = split_csv(text).map_err(|m| line_error(line, m))?;
        if cells.len() < self.columns.needed {
            return Err(line_error(
                line,
                format!(
                    "{} cell(s), the header asks for at least {}",
                    cells.len(),
                    self.columns.needed
                ),
            ));
        }
        let cell = |index: usize| cells[index].as_str();
        let timestamp_ms = parse_timestamp_ms(cell(self.columns.timestamp)).map_err(|m| {
            line_error(
                line,
                format!("timestamp {:?}: {m}", cell(self.columns.timestamp)),
            )
        })?;
        let value_text = cell(self.columns.value);
        let value: f32 = value_text
            .parse()
            .ok()
            .filter(|v: &f32| v.is_finite())
            .ok_or_else(|| {
                line_error(line, format!("value {value_text:?} is not a finite number"))
            })?;
        let device = match self.columns.device.map(cell) {
            None | Some("") => "device",
            Some(id) if is_valid_device_id(id.as_bytes()) => id,
            Some(id) => {
                return Err(line_error(
                    line,
                    format!("device {id:?} is not a device id (1..=64 of A-Z a-z 0-9 . _ -)"),
                ))
            }
        };
        let kind = match self.columns.kind.map(cell) {
            None | Some("") => self.default_kind,
            Some(name) => Kind::from_name(name).ok_or_else(|| {
                line_error(
                    line,
                    format!(
                        "unknown kind {name:?} (docs/PROTOCOL.md section 6: {}, or kind_<code>)",
                        ingestd_codec::envelope::KINDS
                            .iter()
                            .map(|(_, n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?,
        };
        let reading = Reading::new(kind, value);
        let same = self
            .pending
            .as_ref()
            .is_some_and(|g| g.device == device && g.timestamp_ms == timestamp_ms);
        if !same {
            self.flush(out)?;
        }
        let group = self.pending.get_or_insert_with(|| Group {
            device: device.to_string(),
            timestamp_ms,
            readings: Readings::new(),
        });
        if group
            .readings
            .as_slice()
            .iter()
            .any(|r| r.kind == kind.code())
        {
            return Err(line_error(
                line,
                format!(
                    "a second {} reading of device {device} at timestamp {timestamp_ms}",
                    kind_name(kind.code())
                ),
            ));
        }
        if group.readings.len() >= MAX_READINGS {
            return Err(line_error(
                line,
                format!("more than {MAX_READINGS} readings of device {device} at timestamp {timestamp_ms}"),
            ));
        }
        group
            .readings
            .insert_sorted(reading)
            .map_err(|e| line_error(line, e.to_string()))?;
        Ok(())
    }

    /// Scores the pending envelope and writes a row per reading of it, in input order.
    fn flush<W: Write>(&mut self, out: &mut Output<'_, W>) -> Result<(), BacktestError> {
        let Some(group) = self.pending.take() else {
            return Ok(());
        };
        let device = self
            .devices
            .entry(group.device.clone())
            .or_insert_with(|| CsvDevice {
                state: DeviceFraud::new("", ""),
                envelopes: 0,
            });
        device.envelopes += 1;
        // No connection: a CSV says nothing about where readings came from.
        let envelope = Envelope {
            device: device_hash(&group.device),
            seq: device.envelopes,
            device_ms: group.timestamp_ms,
            received_ms: group.timestamp_ms,
            address: 0,
            connected_ms: 0,
            readings: group.readings.as_slice(),
        };
        let verdict = self.scorer.score(&mut device.state, &envelope).verdict;
        for _ in group.readings.as_slice() {
            out.row(&group.device, envelope.seq, group.timestamp_ms, verdict)?;
        }
        Ok(())
    }
}

/// The cells of one CSV line (RFC 4180 quoting within the line; cells trimmed).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.trim().is_empty() && !was_quoted => {
                cell.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                cells.push(std::mem::take(&mut cell).trim().to_string());
                was_quoted = false;
            }
            (false, c) => cell.push(c),
        }
    }
    if quoted {
        return Err("a quoted cell is not closed".to_string());
    }
    cells.push(cell.trim().to_string());
    Ok(cells)
}

/// A timestamp as ms since the Unix epoch: digits are ms, anything else RFC 3339.
fn parse_timestamp_ms(text: &str) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| "too large for ms since the epoch".to_string());
    }
    parse_rfc3339_ms(text).ok_or_else(|| {
        "neither ms since the Unix epoch nor RFC 3339 (2024-05-01T12:00:00Z) at or after 1970"
            .to_string()
    })
}

/// RFC 3339 (`YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, `T` or a space) to ms since the Unix
/// epoch; fractions past the ms are truncated. `None` before 1970 or when malformed.
fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        for _ in (at - start)..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let (h, m) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let days_max = *month_days.get(usize::try_from(month).ok()?.checked_sub(1)?)?;
    // Second 60 is a leap second: it counts as the first ms of the next minute.
    if !(1..=days_max).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    u64::try_from(seconds.checked_mul(1000)? + millis).ok()
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

// ---------------------------------------------------------------------------------------
// `fraud explain`.

/// The shards whose logs exist under `data_dir`, ascending.
pub fn shards_in(data_dir: &Path) -> Result<Vec<usize>, BacktestError> {
    let root = data_dir.join("log");
    let entries = std::fs::read_dir(&root)
        .map_err(|e| BacktestError::Log(format!("{}: {e}", root.display())))?;
    let mut shards = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(|n| n.strip_prefix("shard-")) {
            if let Ok(n) = n.parse() {
                shards.push(n);
            }
        }
    }
    shards.sort_unstable();
    Ok(shards)
}

/// One line on what a detector means, for operators.
#[must_use]
pub fn detector_meaning(detector: Detector) -> &'static str {
    match detector {
        Detector::Bounds => "the value is outside the physical range of its kind",
        Detector::Rate => "the value changed faster per second of device time than its kind can",
        Detector::Deviation => {
            "the value is far from the device's own recent level, in noise units: a spike or a level shift"
        }
        Detector::Drift => {
            "the running sum of residuals (CUSUM) crossed its limit: a slow drift from the device's level"
        }
        Detector::Persistence => {
            "the value has stayed within the sensor's noise floor for longer than the allowed span: stuck"
        }
        Detector::TooSmooth => {
            "the series is smoother than the sensor can measure: residual noise below its floor, or uneven last digits"
        }
        Detector::Physics => {
            "readings of one envelope that cannot happen together (humidity outside 0-100 %, battery volts against percent, ...)"
        }
        Detector::Timing => {
            "the device clock jumped or drifted from receive time, it published far faster than its own pace, or device time went backwards while the sequence grew"
        }
        Detector::Clone => {
            "one identity connected from two places in alternation, or sequences only two writers produce"
        }
        Detector::Peers => {
            "the value is far from the robust median of the other devices of its location or region (depends on their live values: a replay can differ here)"
        }
        Detector::Model => {
            "the learned streaming model finds the envelope's features rare against what the shard has seen"
        }
    }
}

/// A kind code's name (`envelope` for 0: a finding about the envelope as a whole).
fn kind_name(code: u16) -> String {
    match Kind::from_code(code) {
        None => "envelope".to_string(),
        Some(kind) => kind
            .name()
            .map_or_else(|| format!("kind_{code}"), str::to_string),
    }
}

/// Replays the durable log under `data_dir` (every shard, each in offset order) through a
/// fresh engine and explains device `device`: its current state, and the reading `seq`
/// (default: its last) with every detector's finding. Returns the text to print.
pub fn explain(
    config: &FraudConfig,
    data_dir: &Path,
    device: &str,
    seq: Option<u64>,
) -> Result<String, BacktestError> {
    let mut replay = Replay::new(config.clone()).traced();
    let mut chosen: Option<(u64, Box<ReplayedReading>)> = None;
    let mut seen = 0u64;
    let mut seq_range: Option<(u64, u64)> = None;
    let shards = shards_in(data_dir)?;
    for &shard in &shards {
        let dir: PathBuf = crate::log::shard_dir(data_dir, shard);
        let reader = LogReader::open(&dir, 0).map_err(|e| BacktestError::Log(e.to_string()))?;
        for entry in reader {
            let entry = entry.map_err(|e| BacktestError::Log(e.to_string()))?;
            let replayed = replay
                .record(shard, entry.kind, &entry.payload)
                .map_err(|m| {
                    BacktestError::Log(format!(
                        "{}: record at offset {}: {m}",
                        dir.display(),
                        entry.offset
                    ))
                })?;
            let Replayed::Reading(reading) = replayed else {
                continue;
            };
            if reading.meta.device != device {
                continue;
            }
            seen += 1;
            let s = reading.meta.seq;
            seq_range = Some(seq_range.map_or((s, s), |(lo, hi)| (lo.min(s), hi.max(s))));
            if seq.is_none_or(|wanted| wanted == s) {
                chosen = Some((entry.offset, reading));
            }
        }
    }
    let Some(state) = replay.device(device) else {
        return Err(BacktestError::NotFound(format!(
            "device {device} has no readings in the log under {} (shards {:?})",
            data_dir.display(),
            shards
        )));
    };
    let Some((offset, reading)) = chosen else {
        let span =
            seq_range.map_or_else(|| "none".to_string(), |(lo, hi)| format!("seq {lo}..={hi}"));
        return Err(BacktestError::NotFound(format!(
            "device {device} has no reading with seq {} in the log ({seen} reading(s): {span})",
            seq.unwrap_or_default()
        )));
    };
    Ok(render(config, device, state, offset, &reading))
}

fn render(
    config: &FraudConfig,
    device: &str,
    state: &DeviceFraud,
    offset: u64,
    reading: &ReplayedReading,
) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let mut line = |s: String| {
        text.push_str(&s);
        text.push('\n');
    };
    let warm = state.readings >= config.warmup_readings;
    line(format!(
        "device {device}: {} reading(s) scored, {} (warm-up {} readings)",
        state.readings,
        if warm {
            "warm: every detector applies"
        } else {
            "learning: only bounds, physics and peers fire"
        },
        config.warmup_readings
    ));
    let (offset_ms, pace_ms) = state.clock();
    line(format!(
        "  clock: offset {} (receive time - device time, smoothed), pace {} between readings, rate {:+.3} % (positive: the clock runs fast; fires beyond ±{:.3} %)",
        offset_ms.map_or_else(|| "not known yet".to_string(), |v| format!("{v:.1} ms")),
        pace_ms.map_or_else(|| "not known yet".to_string(), |v| format!("{v:.1} ms")),
        -100.0 * state.clock_rate(),
        100.0 * config.timing.clock_rate_max
    ));
    let mut series = state.series().peekable();
    if series.peek().is_none() {
        line("  series: none yet".to_string());
    }
    for s in series {
        let (level, noise, learned) = s.level_noise_readings(config);
        line(format!(
            "  series {:<16} level {level:.4}  noise {noise:.4}  readings learned {learned}",
            kind_name(s.code)
        ));
    }
    let meta = &reading.meta;
    line(String::new());
    let values: Vec<String> = reading
        .readings
        .as_slice()
        .iter()
        .map(|r| format!("{}={}", kind_name(r.kind), r.value))
        .collect();
    line(format!(
        "reading seq {} (shard {}, log offset {offset}): device time {} ms, received {} ms, from {}",
        meta.seq,
        reading.shard,
        meta.ts_ms,
        meta.received_ms,
        if meta.peer.is_empty() {
            "an unknown peer"
        } else {
            &meta.peer
        }
    ));
    line(format!("  readings: {}", values.join(" ")));
    let replayed = fraud_meta(reading.scored.verdict, config);
    line(format!(
        "  replayed: score {:.6}, flagged {}, quarantined {} (alert at {}, quarantine at {})",
        replayed.score,
        yes_no(replayed.flagged),
        yes_no(replayed.quarantined),
        config.score.alert_score_min,
        config.score.quarantine_score_min
    ));
    if reading.findings.is_empty() {
        line("  no detector fired".to_string());
    }
    for finding in &reading.findings {
        line(format!(
            "  {:<12} {:<16} strength {:.6}  weight {:.2}: {}",
            finding.detector.name(),
            kind_name(finding.kind),
            finding.strength,
            config.score.weights[finding.detector.index()],
            detector_meaning(finding.detector)
        ));
    }
    match &meta.fraud {
        None => line("  recorded: no verdict in the log (scoring was off)".to_string()),
        Some(recorded) if *recorded == replayed => line(format!(
            "  recorded: {}: equal to the replay",
            describe(recorded)
        )),
        Some(recorded) => {
            let peers = recorded
                .detectors
                .iter()
                .any(|d| d == Detector::Peers.name());
            line(format!(
                "  recorded: {}: differs from the replay{}",
                describe(recorded),
                if peers {
                    " (peers fired live: it depends on the other devices' live values)"
                } else {
                    " (other thresholds or weights, or a log that no longer starts at the device's first reading)"
                }
            ));
        }
    }
    text
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(input: &str) -> Result<(String, Summary), BacktestError> {
        let mut out = Vec::new();
        let summary = backtest(
            &FraudConfig::default(),
            BacktestOptions::default(),
            input.as_bytes(),
            &mut out,
        )?;
        Ok((String::from_utf8(out).unwrap(), summary))
    }

    #[test]
    fn rfc3339_timestamps_are_ms_since_the_epoch() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00.250Z"),
            Some(1_714_564_800_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01 14:00:00.2509+02:00"),
            Some(1_714_564_800_250)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T00:00:00-00:30"),
            Some(1_709_166_600_000)
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01",
            "",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
        assert_eq!(parse_timestamp_ms("1714564800250"), Ok(1_714_564_800_250));
        assert!(parse_timestamp_ms("-5").is_err());
    }

    #[test]
    fn csv_cells_honour_quotes() {
        assert_eq!(
            split_csv(r#" a ,"b,c", "d""e" ,"#).unwrap(),
            ["a", "b,c", "d\"e", ""]
        );
        assert!(split_csv(r#"a,"b"#).is_err());
    }

    #[test]
    fn a_device_with_two_kinds_at_one_time_is_one_envelope() {
        let (out, summary) = run("kind,timestamp,value,device\n\
             co2_ppm,1000,420,a\n\
             temperature_c,1000,21.5,a\n\
             co2_ppm,1000,430,b\n\
             co2_ppm,61000,421,a\n")
        .unwrap();
        let rows: Vec<&str> = out.lines().collect();
        assert_eq!(rows[0], OUTPUT_HEADER);
        let keys: Vec<String> = rows[1..]
            .iter()
            .map(|r| r.split(',').take(3).collect::<Vec<_>>().join(","))
            .collect();
        assert_eq!(keys, ["a,1,1000", "a,1,1000", "b,1,1000", "a,2,61000"]);
        assert_eq!(summary.rows, 4);
        assert_eq!(summary.format, Format::Csv);
    }

    #[test]
    fn bad_rows_name_their_line() {
        for (input, line, words) in [
            (
                "timestamp,value\n1000,1\n\n2000,x\n",
                4,
                "\"x\" is not a finite number",
            ),
            ("timestamp,value\n1000,inf\n", 2, "finite"),
            ("timestamp,value\nyesterday,1\n", 2, "RFC 3339"),
            (
                "timestamp,value,kind\n1000,1,co3\n",
                2,
                "unknown kind \"co3\"",
            ),
            ("timestamp,value,device\n1000,1,a b\n", 2, "not a device id"),
            ("timestamp,value\n1000\n", 2, "1 cell(s)"),
            (
                "timestamp,value\n1000,1\n1000,2\n",
                3,
                "a second co2_ppm reading",
            ),
            ("time,value\n1000,1\n", 1, "no `timestamp` column"),
            ("{\"shard\":0}\n", 1, "not a line of `ingestd log export`"),
            (
                "{\"shard\":0,\"offset\":0,\"kind\":\"reading\",\"bytes\":5}\n",
                1,
                "use `ingestd log export`",
            ),
        ] {
            match run(input) {
                Err(BacktestError::Line { line: at, message }) => {
                    assert_eq!(at, line, "{input:?}: {message}");
                    assert!(message.contains(words), "{input:?}: {message}");
                }
                other => panic!("{input:?}: {:?}", other.map(|(o, _)| o)),
            }
        }
        assert!(matches!(run("\n \n"), Err(BacktestError::Empty)));
    }

    #[test]
    fn every_detector_has_a_meaning() {
        for detector in Detector::ALL {
            assert!(detector_meaning(detector).len() > 20, "{detector:?}");
        }
    }
}
