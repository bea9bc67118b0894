//! Fraud scoring (issue 12): the pure building blocks.
//!
//! A signature proves who sent a reading, not that it is true. Each detector here looks at
//! one device's series of one kind and says whether it fired and how strongly (a strength
//! in [0, 1]); [`combine`] folds those into one [`Verdict`]. Everything is pure: device time
//! is an argument in ms, nothing reads a clock, and per-device state is a few fixed-size
//! structs, so scoring a reading allocates nothing.
//!
//! Limits of this first step: only the per-series detectors exist ([`bounds`], [`rate`],
//! [`stats`], [`persistence`]); nothing is wired into the core yet. A non-finite value is
//! physically impossible, so [`bounds`] fires on it; the stateful detectors skip it
//! without touching their state, so one bad value cannot poison a model.
//!
//! # Score formula
//!
//! ```text
//! score = 1 - prod over fired detectors i of (1 - w_i * s_i)
//! ```
//!
//! with `w_i` the detector's weight and `s_i` its strength, both clamped to [0, 1]. It is a
//! "noisy OR": independent pieces of evidence add up, no single weak detector reaches 1,
//! any detector with weight 1 and full strength does, the score is always in [0, 1] and it
//! never decreases when one detector's strength or weight grows.

use ingestd_codec::envelope::Kind;

pub mod bounds;
pub mod clone;
pub mod engine;
pub mod model;
pub mod offset;
pub mod peers;
pub mod persistence;
pub mod physics;
pub mod rate;
pub mod smooth;
pub mod stats;
pub mod timing;

/// A detector's name. The snake_case names are stable: they travel with records to the
/// sinks and name metrics, so renaming one is a breaking change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Detector {
    /// A value outside the physical range of its kind (or not a number at all).
    Bounds,
    /// A value changing faster than its kind can per second of device time.
    Rate,
    /// A residual far from the device's own recent mean: a spike or a level shift.
    Deviation,
    /// A two-sided CUSUM of the residuals over its threshold: a slow drift.
    Drift,
    /// A value stuck (within the kind's noise floor) for longer than a span.
    Persistence,
    /// A series too smooth to be measured: no residual noise, or non-uniform last digits.
    TooSmooth,
    /// Readings of one envelope that cannot happen together (cross-channel physics).
    Physics,
    /// The device clock jumping or drifting from receive time, a burst far faster than the
    /// device's own interval, or device time going backwards while the sequence grows.
    Timing,
    /// One identity connecting from two places in alternation, or sequences from two writers.
    Clone,
    /// A value far from the robust median of the other devices of its location (or, more
    /// loosely, its region) for the same kind at the same time.
    Peers,
    /// The learned streaming model (half-space trees over per-device windowed features)
    /// finds the reading's features rare against what the shard has seen.
    Model,
}

/// How many detectors exist; the size of [`Fired`] and [`ScoreConfig::weights`].
pub const DETECTOR_COUNT: usize = 11;

impl Detector {
    /// Every detector, in index order.
    pub const ALL: [Detector; DETECTOR_COUNT] = [
        Detector::Bounds,
        Detector::Rate,
        Detector::Deviation,
        Detector::Drift,
        Detector::Persistence,
        Detector::TooSmooth,
        Detector::Physics,
        Detector::Timing,
        Detector::Clone,
        Detector::Peers,
        Detector::Model,
    ];

    /// The stable snake_case name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Detector::Bounds => "bounds",
            Detector::Rate => "rate",
            Detector::Deviation => "deviation",
            Detector::Drift => "drift",
            Detector::Persistence => "persistence",
            Detector::TooSmooth => "too_smooth",
            Detector::Physics => "physics",
            Detector::Timing => "timing",
            Detector::Clone => "clone",
            Detector::Peers => "peers",
            Detector::Model => "model",
        }
    }

    /// The detector with a stable name, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Position in [`Detector::ALL`], in the bitset and in the weights.
    #[must_use]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The set of detectors that fired on one reading, as a bitset (no allocation).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Fired(u16);

impl Fired {
    /// No detector.
    #[must_use]
    pub fn empty() -> Fired {
        Fired(0)
    }

    /// Adds a detector.
    pub fn insert(&mut self, detector: Detector) {
        self.0 |= 1 << detector.index();
    }

    /// Whether a detector is in the set.
    #[must_use]
    pub fn contains(self, detector: Detector) -> bool {
        self.0 & (1 << detector.index()) != 0
    }

    /// Whether no detector fired.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The detectors in the set, in index order.
    pub fn iter(self) -> impl Iterator<Item = Detector> {
        Detector::ALL.into_iter().filter(move |d| self.contains(*d))
    }

    /// The raw bits (bit i is `Detector::ALL[i]`), for compact records.
    #[must_use]
    pub fn bits(self) -> u16 {
        self.0
    }
}

/// One detector's finding on one reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Signal {
    /// Which detector fired.
    pub detector: Detector,
    /// How strongly, in [0, 1] (clamped by [`combine`]; NaN counts as 1 since it fired).
    pub strength: f32,
}

/// Weights and thresholds of the combined score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreConfig {
    /// Weight of each detector, by [`Detector::index`], in [0, 1].
    pub weights: [f32; DETECTOR_COUNT],
    /// A score at or above this raises an alert.
    pub alert_score_min: f32,
    /// A score at or above this marks the reading quarantined (still stored and
    /// delivered; the oracle leaves it out).
    pub quarantine_score_min: f32,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        let mut weights = [0.0; DETECTOR_COUNT];
        // A value outside physics is never honest: full weight.
        weights[Detector::Bounds.index()] = 1.0;
        weights[Detector::Rate.index()] = 0.8;
        weights[Detector::Deviation.index()] = 0.6;
        weights[Detector::Drift.index()] = 0.6;
        weights[Detector::Persistence.index()] = 0.7;
        weights[Detector::TooSmooth.index()] = 0.6;
        weights[Detector::Physics.index()] = 0.9;
        // Full weight: a clock measurably running fast or slow, or going back while the
        // sequence grows, makes every timestamp wrong. The rules an honest device can trip
        // (a clock reset, a backlog, a reconfigured interval) report half strength
        // (`timing.rs`), so alone they alert only at twice their limits.
        weights[Detector::Timing.index()] = 1.0;
        weights[Detector::Clone.index()] = 0.8;
        // Peers can be wrong together (a local event), one device can honestly sit somewhere
        // its peers do not, and peer values are a little older than the reading: evidence
        // that needs another detector or twice its limit to raise an alert.
        weights[Detector::Peers.index()] = 0.5;
        // A learned model's rarity is a hint: alone it flags, it never quarantines.
        weights[Detector::Model.index()] = 0.5;
        ScoreConfig {
            weights,
            alert_score_min: 0.5,
            quarantine_score_min: 0.9,
        }
    }
}

/// The score of one reading and the detectors that fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// The combined score, in [0, 1].
    pub score: f32,
    /// The detectors that fired (a detector with weight 0 still appears here).
    pub fired: Fired,
}

impl Verdict {
    /// Whether the score calls for an alert.
    #[must_use]
    pub fn is_flagged(&self, config: &ScoreConfig) -> bool {
        self.score >= config.alert_score_min
    }

    /// Whether the reading is to be marked quarantined.
    #[must_use]
    pub fn is_quarantined(&self, config: &ScoreConfig) -> bool {
        self.score >= config.quarantine_score_min
    }
}

/// Clamps to [0, 1]; NaN becomes `nan_as`.
fn unit_interval(x: f32, nan_as: f32) -> f32 {
    if x.is_nan() {
        nan_as
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// The combined score of the signals (module docs give the formula). A detector listed
/// twice counts twice, which callers avoid.
#[must_use]
pub fn combine(config: &ScoreConfig, signals: &[Signal]) -> Verdict {
    let mut fired = Fired::empty();
    let mut clean = 1.0f32;
    for signal in signals {
        fired.insert(signal.detector);
        let weight = unit_interval(config.weights[signal.detector.index()], 0.0);
        let strength = unit_interval(signal.strength, 1.0);
        clean *= 1.0 - weight * strength;
    }
    Verdict {
        score: unit_interval(1.0 - clean, 1.0),
        fired,
    }
}

/// Strength of a measure over its limit: 0.5 at the limit, 1 at twice the limit or more.
/// One shape for every detector, so strengths compare across detectors.
pub(crate) fn strength_over(measure: f64, limit: f64) -> f32 {
    if limit.is_nan() || limit <= 0.0 || measure.is_nan() {
        return 1.0;
    }
    (measure / (2.0 * limit)).clamp(0.0, 1.0) as f32
}

/// The registered kinds in code order (docs/PROTOCOL.md section 6), for tables of
/// per-kind defaults.
pub const REGISTERED_KINDS: [Kind; 11] = [
    Kind::Co2Ppm,
    Kind::TemperatureC,
    Kind::HumidityRhPct,
    Kind::Pm1Ugm3,
    Kind::Pm2_5Ugm3,
    Kind::Pm10Ugm3,
    Kind::BatteryPct,
    Kind::BatteryV,
    Kind::PressureHpa,
    Kind::VocIndex,
    Kind::NoiseDba,
];

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod tests;

/// Serde for byte arrays longer than serde's built-in 32 (state checkpoints).
pub(crate) mod byte_array {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(deserializer)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("byte array of the wrong length"))
    }
}
