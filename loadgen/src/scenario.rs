//! Labelled scenario mix: which kind of device behaviour each simulated device plays.
//!
//! `--scenario normal=1.0` is the only label today. Later labels (fraud injection: `spike`,
//! `flatline`, `clone`, ...) are added by a new [`Label`] variant and a generator in
//! [`ScenarioGen`]; the parser, the assignment of devices to labels and the per-label counts
//! in the report already handle any number of labels.

use ingestd_codec::envelope::{Kind, Reading};
use rand::Rng;

/// A scenario label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// A healthy indoor sensor: CO2 random walk in 400..2000 ppm, temperature, humidity.
    Normal,
}

impl Label {
    /// Every label, for `--help` and errors.
    pub const ALL: [Label; 1] = [Label::Normal];

    /// The label's name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Label::Normal => "normal",
        }
    }

    fn parse(name: &str) -> Option<Label> {
        Label::ALL.into_iter().find(|l| l.name() == name)
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
    /// Parses `label=weight[,label=weight...]`.
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

    /// The labels and their weights.
    pub fn entries(&self) -> &[(Label, f64)] {
        &self.entries
    }

    /// The label of device `index` of `count`: devices are split in exact proportion to the
    /// weights, in blocks (device `i` sits at position `(i + 0.5) / count` on the cumulative
    /// weight line), so a run is reproducible and the proportions are as exact as possible.
    pub fn label_for(&self, index: usize, count: usize) -> Label {
        let total: f64 = self.entries.iter().map(|(_, w)| w).sum();
        let pos = (index as f64 + 0.5) / count.max(1) as f64 * total;
        let mut acc = 0.0;
        for (label, weight) in &self.entries {
            acc += weight;
            if pos < acc {
                return *label;
            }
        }
        self.entries.last().map_or(Label::Normal, |(l, _)| *l)
    }
}

/// A per-device generator of readings for one label.
#[derive(Clone, Debug)]
pub enum ScenarioGen {
    Normal(NormalGen),
}

impl ScenarioGen {
    /// A generator for `label`, with its starting state drawn from `rng`.
    pub fn new(label: Label, rng: &mut impl Rng) -> ScenarioGen {
        match label {
            Label::Normal => ScenarioGen::Normal(NormalGen::new(rng)),
        }
    }

    /// The readings of the next message (unsorted is fine; signing sorts them).
    pub fn next(&mut self, rng: &mut impl Rng) -> Vec<Reading> {
        match self {
            ScenarioGen::Normal(g) => g.next(rng).to_vec(),
        }
    }
}

/// A plausible indoor sensor: CO2 random walk clamped to 400..=2000 ppm, temperature
/// 10..=35 °C, relative humidity 10..=90 %. Values are rounded to 0.1 (short JSON).
#[derive(Clone, Debug)]
pub struct NormalGen {
    pub co2_ppm: f32,
    pub temperature_c: f32,
    pub humidity_rh_pct: f32,
}

/// CO2 bounds of the normal generator, ppm.
pub const CO2_RANGE: (f32, f32) = (400.0, 2000.0);
/// Temperature bounds, °C.
pub const TEMPERATURE_RANGE: (f32, f32) = (10.0, 35.0);
/// Humidity bounds, % RH.
pub const HUMIDITY_RANGE: (f32, f32) = (10.0, 90.0);

fn round1(v: f32) -> f32 {
    (v * 10.0).round() / 10.0
}

impl NormalGen {
    pub fn new(rng: &mut impl Rng) -> NormalGen {
        NormalGen {
            co2_ppm: round1(rng.gen_range(420.0..900.0)),
            temperature_c: round1(rng.gen_range(18.0..26.0)),
            humidity_rh_pct: round1(rng.gen_range(30.0..60.0)),
        }
    }

    /// One step of the walk.
    pub fn next(&mut self, rng: &mut impl Rng) -> [Reading; 3] {
        self.co2_ppm =
            round1((self.co2_ppm + rng.gen_range(-15.0..15.0)).clamp(CO2_RANGE.0, CO2_RANGE.1));
        self.temperature_c = round1(
            (self.temperature_c + rng.gen_range(-0.2..0.2))
                .clamp(TEMPERATURE_RANGE.0, TEMPERATURE_RANGE.1),
        );
        self.humidity_rh_pct = round1(
            (self.humidity_rh_pct + rng.gen_range(-0.5..0.5))
                .clamp(HUMIDITY_RANGE.0, HUMIDITY_RANGE.1),
        );
        [
            Reading::new(Kind::Co2Ppm, self.co2_ppm),
            Reading::new(Kind::TemperatureC, self.temperature_c),
            Reading::new(Kind::HumidityRhPct, self.humidity_rh_pct),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parse_mix() {
        assert_eq!(Mix::parse("normal=1.0").unwrap(), Mix::default());
        assert_eq!(Mix::parse("normal").unwrap(), Mix::default());
        assert!(Mix::parse("spike=0.1")
            .unwrap_err()
            .contains("available: normal"));
        assert!(Mix::parse("normal=x").is_err());
        assert!(Mix::parse("normal=0").is_err());
        assert!(Mix::parse("normal=1,normal=2").is_err());
    }

    #[test]
    fn labels_cover_all_devices() {
        let mix = Mix::default();
        assert!((0..100).all(|i| mix.label_for(i, 100) == Label::Normal));
    }

    #[test]
    fn normal_walk_stays_plausible() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut g = NormalGen::new(&mut rng);
        for _ in 0..100_000 {
            let [co2, t, h] = g.next(&mut rng);
            assert!((400.0..=2000.0).contains(&co2.value));
            assert!((10.0..=35.0).contains(&t.value));
            assert!((10.0..=90.0).contains(&h.value));
            assert_eq!(co2.kind, 1);
            assert_eq!(t.kind, 2);
            assert_eq!(h.kind, 3);
        }
    }
}
