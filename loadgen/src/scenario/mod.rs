//! Labelled scenarios: which behaviour each simulated device plays, and its readings.
//!
//! A run assigns every device a [`Label`] from the mix (`--scenario normal=0.9,drift=0.01`
//! or `--fraud-share 0.1`), in exact proportions and scattered over the devices by the seed
//! (a location holds honest and fraudulent devices together, as in the field). A normal
//! device reports its [`climate::Sensor`]; a fraud device does the same until its onset,
//! a message index drawn in `[warmup, warmup + span]`, and departs from it from there
//! ([`fraud::Fraud`]). The ground truth (device, label, onset sequence, parameters) is
//! written with `--truth` and read back by `loadgen fraud-eval`.
//!
//! Everything is a pure function of the seed, the device list (ids, locations, regions)
//! and the message's index and planned device time, so a run is reproducible and a truth
//! file is the same for the same `--seed` and `--seq-base`.

pub mod climate;
pub mod draw;
pub mod fraud;

use climate::{readings, Sensor, Site};
use draw::{hash, hash_str, Draw};
use fraud::Fraud;
use ingestd_codec::envelope::Reading;
use std::collections::HashMap;
use std::io::Write;

/// A scenario label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// An honest outdoor sensor (CO2, temperature, humidity): see [`climate`].
    Normal,
    Spike,
    Drift,
    LevelShift,
    Stuck,
    Smooth,
    NeighbourCopy,
    OutOfBounds,
    RateBurst,
    ClockDrift,
    Clone,
    PastDay,
}

impl Label {
    /// Every label, for `--help`, errors and the evaluator's table order.
    pub const ALL: [Label; 12] = [
        Label::Normal,
        Label::Spike,
        Label::Drift,
        Label::LevelShift,
        Label::Stuck,
        Label::Smooth,
        Label::NeighbourCopy,
        Label::OutOfBounds,
        Label::RateBurst,
        Label::ClockDrift,
        Label::Clone,
        Label::PastDay,
    ];

    /// The name on the command line, in the report and in truth files.
    pub fn name(self) -> &'static str {
        match self {
            Label::Normal => "normal",
            Label::Spike => "spike",
            Label::Drift => "drift",
            Label::LevelShift => "level_shift",
            Label::Stuck => "stuck",
            Label::Smooth => "smooth",
            Label::NeighbourCopy => "neighbour_copy",
            Label::OutOfBounds => "out_of_bounds",
            Label::RateBurst => "rate_burst",
            Label::ClockDrift => "clock_drift",
            Label::Clone => "clone",
            Label::PastDay => "past_day",
        }
    }

    /// The label with a name.
    pub fn parse(name: &str) -> Option<Label> {
        Label::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Whether this is a fraud label (everything but normal).
    pub fn is_fraud(self) -> bool {
        self != Label::Normal
    }
}

/// Weighted labels, e.g. `normal=0.98,spike=0.02`. Weights need not sum to 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    entries: Vec<(Label, f64)>,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            entries: vec![(Label::Normal, 1.0)],
        }
    }
}

impl Mix {
    /// Parses `label=weight[,label=weight...]` (a bare label weighs 1).
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut entries: Vec<(Label, f64)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let label = Label::parse(name.trim()).ok_or_else(|| {
                let known: Vec<_> = Label::ALL.iter().map(|l| l.name()).collect();
                format!(
                    "unknown scenario label {name:?} (available: {})",
                    known.join(", ")
                )
            })?;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("scenario weight {weight:?} is not a number"))?;
            if !weight.is_finite() || weight < 0.0 {
                return Err(format!("scenario weight {weight} must be >= 0"));
            }
            if entries.iter().any(|(l, _)| *l == label) {
                return Err(format!("scenario label {name} given twice"));
            }
            entries.push((label, weight));
        }
        if entries.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err("scenario weights sum to zero".to_string());
        }
        Ok(Mix { entries })
    }

    /// `share` of the devices spread evenly over every fraud label, the rest normal.
    pub fn fraud_share(share: f64) -> Result<Mix, String> {
        if !(0.0..=1.0).contains(&share) {
            return Err(format!("--fraud-share {share} is outside 0..=1"));
        }
        let frauds = Label::ALL.iter().filter(|l| l.is_fraud()).count() as f64;
        let mut entries = vec![(Label::Normal, 1.0 - share)];
        entries.extend(
            Label::ALL
                .iter()
                .filter(|l| l.is_fraud())
                .map(|l| (*l, share / frauds)),
        );
        Ok(Mix { entries })
    }

    /// The labels and their weights.
    pub fn entries(&self) -> &[(Label, f64)] {
        &self.entries
    }

    /// How many of `count` devices each label gets: proportional to the weights, rounded
    /// by largest remainder so the counts sum to `count`.
    pub fn counts(&self, count: usize) -> Vec<(Label, usize)> {
        let total: f64 = self.entries.iter().map(|(_, w)| w).sum();
        let exact: Vec<f64> = self
            .entries
            .iter()
            .map(|(_, w)| w / total * count as f64)
            .collect();
        let mut counts: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
        let mut left = count.saturating_sub(counts.iter().sum());
        let mut order: Vec<usize> = (0..exact.len()).collect();
        // Largest remainder first; ties to the earlier label.
        order.sort_by(|a, b| {
            let ra = exact[*a] - exact[*a].floor();
            let rb = exact[*b] - exact[*b].floor();
            rb.total_cmp(&ra).then(a.cmp(b))
        });
        for i in order {
            if left == 0 {
                break;
            }
            counts[i] += 1;
            left -= 1;
        }
        self.entries
            .iter()
            .zip(counts)
            .map(|((l, _), c)| (*l, c))
            .collect()
    }

    /// The label of each of `count` devices: exact counts, placed by a shuffle seeded by
    /// `seed`, so fraud is scattered over locations rather than filling whole ones.
    pub fn assign(&self, count: usize, seed: u64) -> Vec<Label> {
        let mut labels: Vec<Label> = self
            .counts(count)
            .into_iter()
            .flat_map(|(l, c)| std::iter::repeat_n(l, c))
            .collect();
        let mut d = Draw::new(hash(&[seed, 0x5ca1_ab1e]));
        for i in (1..labels.len()).rev() {
            let j = d.index(i + 1);
            labels.swap(i, j);
        }
        labels
    }
}

/// The run-wide scenario settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioConfig {
    /// Seeds every site, sensor and fraud parameter.
    pub seed: u64,
    /// The simulated day, ms of device time.
    pub day_ms: u64,
    /// Fraud onsets are drawn in `[warmup_readings, warmup_readings + onset_span_readings]`
    /// (message index of the device in this run).
    pub warmup_readings: u64,
    pub onset_span_readings: u64,
}

/// A device as the registry places it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub id: String,
    pub location: String,
    pub region: String,
}

/// Which of a clone's two units sends a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// The registered device (every device's only writer, unless it is a clone).
    Original,
    /// The clone's second unit, from another local address.
    Twin,
}

/// A stretch of consecutive messages `k_start..k_end` sent by one writer over one
/// connection; message `k` carries sequence `seq_start + (k - k_start)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turn {
    pub k_start: u64,
    pub k_end: u64,
    pub writer: Writer,
    pub seq_start: u64,
}

impl Turn {
    /// The sequence number of message `k` of this turn.
    pub fn seq(&self, k: u64) -> u64 {
        self.seq_start.wrapping_add(k.wrapping_sub(self.k_start))
    }
}

/// What one message carries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Emit {
    /// The device time stamped on it.
    pub ts_ms: u64,
    pub readings: [Reading; 3],
}

/// One device's scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceScenario {
    pub id: String,
    pub label: Label,
    /// The onset message index; `None` for a normal device.
    pub onset: Option<u64>,
    pub sensor: Sensor,
    pub fraud: Fraud,
    /// Keys this device's per-message randomness.
    key: u64,
}

impl DeviceScenario {
    /// The honest sensor of `device` (at its registry location and region).
    pub fn sensor_of(config: &ScenarioConfig, device: &DeviceInfo) -> Sensor {
        let site = Site::new(config.seed, &device.location, &device.region, config.day_ms);
        Sensor::new(config.seed, &device.id, site)
    }

    /// The scenario of `device` playing `label`; `neighbour` is another device of its
    /// location (for a neighbour copy).
    pub fn new(
        config: &ScenarioConfig,
        device: &DeviceInfo,
        label: Label,
        neighbour: Option<&DeviceInfo>,
    ) -> DeviceScenario {
        let key = hash(&[config.seed, hash_str(&device.id), 5]);
        let mut d = Draw::new(key);
        let sensor = Self::sensor_of(config, device);
        let twin = Sensor::new(
            config.seed,
            &format!("{}#twin", device.id),
            sensor.site.clone(),
        );
        let neighbour = neighbour.map(|n| (n.id.clone(), Self::sensor_of(config, n)));
        let onset = label.is_fraud().then(|| {
            d.int(
                config.warmup_readings,
                config.warmup_readings + config.onset_span_readings,
            )
        });
        let fraud = fraud::draw(label, &mut d, neighbour, twin);
        DeviceScenario {
            id: device.id.clone(),
            label,
            onset,
            sensor,
            fraud,
            key,
        }
    }

    /// The sequence number the device sends at its onset, given the run's base.
    pub fn onset_seq(&self, seq_base: u64) -> Option<u64> {
        self.onset.map(|k| seq_base.wrapping_add(k))
    }

    /// Who sends which of the first `budget` messages, with which sequence numbers.
    pub fn turns(&self, budget: u64, seq_base: u64) -> Vec<Turn> {
        let (
            Fraud::Clone {
                seq_gap,
                turn_min,
                turn_max,
                ..
            },
            Some(onset),
        ) = (&self.fraud, self.onset)
        else {
            return single_turn(budget, seq_base);
        };
        let onset = onset.min(budget);
        // The original connects first even with an onset at 0 (an empty turn).
        let mut turns = single_turn(onset, seq_base);
        let mut d = Draw::new(hash(&[self.key, 6]));
        // Next sequence number of each unit.
        let mut original = seq_base.wrapping_add(onset);
        let mut twin = original.wrapping_add(*seq_gap);
        let mut k = onset;
        let mut writer = Writer::Twin;
        while k < budget {
            let len = d.int(*turn_min, *turn_max).max(1).min(budget - k);
            let next = match writer {
                Writer::Original => &mut original,
                Writer::Twin => &mut twin,
            };
            turns.push(Turn {
                k_start: k,
                k_end: k + len,
                writer,
                seq_start: *next,
            });
            *next = next.wrapping_add(len);
            k += len;
            writer = match writer {
                Writer::Original => Writer::Twin,
                Writer::Twin => Writer::Original,
            };
        }
        turns
    }

    /// Message `k` sent by `writer`; `ts_of(k)` is the device time message `k` is planned
    /// for (its planned send time).
    pub fn emit(&self, k: u64, writer: Writer, ts_of: &impl Fn(u64) -> u64) -> Emit {
        let t_ms = ts_of(k);
        let onset = match self.onset {
            Some(onset) if k >= onset => onset,
            _ => {
                return Emit {
                    ts_ms: t_ms,
                    readings: readings(self.sensor.values(t_ms)),
                }
            }
        };
        let onset_ms = ts_of(onset);
        let values = match (writer, &self.fraud) {
            (Writer::Twin, Fraud::Clone { twin, .. }) => twin.values(t_ms),
            _ => self
                .fraud
                .values(&self.sensor, self.key, k, onset, t_ms, onset_ms),
        };
        Emit {
            ts_ms: self.fraud.device_time(t_ms, onset_ms),
            readings: readings(values),
        }
    }

    /// The truth file line: `device,scenario,onset_seq,params` (onset empty when normal).
    pub fn truth_line(&self, seq_base: u64) -> String {
        format!(
            "{},{},{},{}",
            self.id,
            self.label.name(),
            self.onset_seq(seq_base)
                .map_or(String::new(), |s| s.to_string()),
            self.fraud.describe()
        )
    }
}

/// One turn of the original writer (empty when `budget` is 0: the device still connects
/// and disconnects).
fn single_turn(budget: u64, seq_base: u64) -> Vec<Turn> {
    vec![Turn {
        k_start: 0,
        k_end: budget,
        writer: Writer::Original,
        seq_start: seq_base,
    }]
}

/// The header of a truth file.
pub const TRUTH_HEADER: &str = "device,scenario,onset_seq,params";

/// Every device's scenario: labels from `mix` (shuffled by the seed), a neighbour for
/// each device from the other devices of its location.
pub fn build(config: &ScenarioConfig, mix: &Mix, devices: &[DeviceInfo]) -> Vec<DeviceScenario> {
    let labels = mix.assign(devices.len(), config.seed);
    let mut by_location: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        by_location
            .entry((&d.region, &d.location))
            .or_default()
            .push(i);
    }
    devices
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (device, label))| {
            let neighbour = if label == Label::NeighbourCopy {
                let mates: Vec<usize> = by_location
                    .get(&(device.region.as_str(), device.location.as_str()))
                    .map(|m| m.iter().copied().filter(|j| *j != i).collect())
                    .unwrap_or_default();
                let mut d = Draw::new(hash(&[config.seed, hash_str(&device.id), 7]));
                mates.get(d.index(mates.len())).map(|j| &devices[*j])
            } else {
                None
            };
            DeviceScenario::new(config, device, label, neighbour)
        })
        .collect()
}

/// Writes the truth file: a header, then one line per device in device order.
pub fn write_truth(
    out: &mut impl Write,
    scenarios: &[DeviceScenario],
    seq_base: u64,
) -> std::io::Result<()> {
    writeln!(out, "{TRUTH_HEADER}")?;
    for s in scenarios {
        writeln!(out, "{}", s.truth_line(seq_base))?;
    }
    Ok(())
}

/// [`write_truth`] into a new file at `path`.
pub fn write_truth_file(
    path: &std::path::Path,
    scenarios: &[DeviceScenario],
    seq_base: u64,
) -> Result<(), String> {
    let written = std::fs::File::create(path).and_then(|f| {
        let mut w = std::io::BufWriter::new(f);
        write_truth(&mut w, scenarios, seq_base)?;
        w.flush()
    });
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Places device `index` when the registry gives no location: `loc-NNNNN` in blocks of
/// `per_location`, `region-NNN` in blocks of `per_region` locations.
pub fn default_place(index: usize, per_location: usize, per_region: usize) -> (String, String) {
    let location = index / per_location.max(1);
    let region = location / per_region.max(1);
    (format!("loc-{location:05}"), format!("region-{region:03}"))
}

#[cfg(test)]
mod tests;
