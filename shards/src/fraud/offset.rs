//! Drift against the neighbours: a device's own offset from its location's median.
//!
//! One series cannot tell a slow drift from weather, and a Holt model learns a steady ramp
//! as trend ([`super::stats`]). The devices of a location see the same weather, so the
//! difference `d = value - median(location)` of an honest device is its calibration offset
//! plus its micro-climate and noise: a constant with a small wander. A drifting sensor's
//! `d` walks away from its own usual value, however slowly, while the peers detector (which
//! judges `d` against the whole group's spread, calibration offsets included) sees nothing
//! until the drift passes every neighbour.
//!
//! # Formula
//!
//! ```text
//! e = d - offset                      offset: the device's learned usual d (slow EWMA)
//! z = |e| / max(scale, 2 · noise floor)      scale: RMS of e (EWMA of e²)
//! ```
//!
//! [`Detector::Drift`] fires when `z > z_max` for `run_readings` readings in a row (one
//! wild reading is the deviation detector's), with strength [`strength_over`]`(z, z_max)`.
//! The offset learns `e` clipped to `z_max` scales; the scale learns `e²` clipped to 2.5 scales, at about a thousandth per reading, so a drift
//! widens it by well under 1 % per reading, slower than it grows. A device honestly moved
//! or recalibrated fires until its offset has learned the new place (at `z_max` scales
//! times `offset_alpha` per reading: a step of 8 scales in about 1,000 readings) – an operator sees that in the alerts.
//!
//! The first `warmup_readings` values of `d` only teach (running means): a device needs
//! neighbours before the test means anything, so the warm-up counts readings *with* a
//! median, not the device's readings.
//!
//! The scale is at least the shard's median scale for the kind ([`ShardScales`]): a
//! warm-up sees only a few turns of a device's wander and can learn a scale several times
//! too small, which would then fire on the wander's next excursion.
//!
//! Known limits: the median is the peers table's snapshot (up to `bucket_ms` old), so a
//! fast daily cycle widens the scale a little; a location whose devices drift together
//! moves its median with them; a drift slower than the device's own micro-climate wander
//! takes as long as it needs to leave it (it is caught eventually: the wander is bounded,
//! a drift is not). Non-finite inputs are skipped without touching state.

use super::{strength_over, Detector, Signal};

/// `e²` updates the scale clipped to this many scales.
const SCALE_CLIP_Z: f64 = 2.5;

/// Parameters of the detector for one kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OffsetConfig {
    /// Readings with a median that only teach before the test may fire.
    pub warmup_readings: u32,
    /// EWMA weight of a new `d` in the device's usual offset, in (0, 1].
    pub offset_alpha: f32,
    /// EWMA weight of a new `e²` in the scale, in (0, 1].
    pub scale_alpha: f32,
    /// `|e|` beyond this many scales fires, after `run_readings` in a row.
    pub z_max: f32,
    pub run_readings: u32,
    /// The kind's noise floor: the scale is at least twice it.
    pub noise_floor: f32,
}

impl OffsetConfig {
    /// Defaults for a kind with this noise floor.
    #[must_use]
    pub fn with_floor(noise_floor: f32) -> OffsetConfig {
        OffsetConfig {
            warmup_readings: 300,
            // A time constant of about 500 readings: the calibration offset, not the weather.
            offset_alpha: 1.0 / 512.0,
            // About 1,000 readings, clipped: the scale must cover the device's micro-climate
            // wander (slower than its noise) and must not learn a drift as wander.
            scale_alpha: 1.0 / 1024.0,
            z_max: 4.0,
            run_readings: 3,
            noise_floor,
        }
    }
}

/// The state of one device's series of one kind: 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerOffset {
    /// Readings with a median seen (saturating).
    readings: u32,
    offset: f32,
    /// EWMA of e².
    square: f32,
    /// Readings in a row over `z_max`.
    run: u32,
}

impl PeerOffset {
    fn scale(&self, config: &OffsetConfig) -> f32 {
        self.square.max(0.0).sqrt().max(2.0 * config.noise_floor)
    }

    /// The device's own scale once warm (what [`ShardScales`] learns from).
    #[must_use]
    pub fn own_scale(&self, config: &OffsetConfig) -> Option<f32> {
        (self.readings > config.warmup_readings).then(|| self.scale(config))
    }

    /// Feeds one value and the median of its location's other devices at its time;
    /// `scale_min` is the least scale the test uses ([`ShardScales::scale_min`]).
    pub fn observe(
        &mut self,
        config: &OffsetConfig,
        value: f32,
        median: f32,
        scale_min: f32,
    ) -> Option<Signal> {
        let d = f64::from(value) - f64::from(median);
        if !d.is_finite() {
            return None;
        }
        self.readings = self.readings.saturating_add(1);
        let offset = f64::from(self.offset);
        if self.readings <= config.warmup_readings {
            // Running means: the start is not biased to the first value.
            let w = 1.0 / f64::from(self.readings);
            let offset = offset + w * (d - offset);
            let e = d - offset;
            self.offset = offset as f32;
            self.square = (f64::from(self.square) + w * (e * e - f64::from(self.square))) as f32;
            return None;
        }
        let e = d - offset;
        let own = f64::from(self.scale(config));
        let scale = if scale_min.is_finite() {
            own.max(f64::from(scale_min))
        } else {
            own
        };
        let z = e.abs() / scale;
        let z_max = f64::from(config.z_max);
        let over = z > z_max;
        self.run = if over { self.run.saturating_add(1) } else { 0 };
        let firing = self.run >= config.run_readings.max(1);
        // Clipped updates: a drift moves the offset by at most `z_max` scales times its
        // weight per reading, and widens the scale by well under 1 % a reading, both
        // slower than a drift grows.
        let a = f64::from(config.offset_alpha).clamp(0.0, 1.0);
        let clip = z_max * scale;
        self.offset = (offset + a * e.clamp(-clip, clip)) as f32;
        let b = f64::from(config.scale_alpha).clamp(0.0, 1.0);
        let square = (e * e).min((SCALE_CLIP_Z * own).powi(2));
        self.square = (f64::from(self.square) + b * (square - f64::from(self.square))) as f32;
        firing.then(|| Signal {
            detector: Detector::Drift,
            strength: strength_over(z, f64::from(config.z_max)),
        })
    }
}

/// What the shard's devices teach each other: per kind, the median of the warm devices'
/// own scales (tracked by multiplicative sign steps, so a few drifting devices do not move
/// it). A warm-up of a few hundred readings sees only a few turns of a device's
/// micro-climate wander and can learn a scale several times too small; the test then uses
/// at least [`SCALE_PRIOR`] of the shard's median for the kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardScales {
    /// By kind code (0 for codes past the table).
    median: [f32; 12],
}

/// The share of the shard's median scale a device's test uses at least.
pub const SCALE_PRIOR: f32 = 1.0;
/// The multiplicative step of the median's tracking.
const MEDIAN_STEP: f32 = 0.005;

impl ShardScales {
    fn slot(code: u16) -> usize {
        let slot = usize::from(code);
        if slot < 12 {
            slot
        } else {
            0
        }
    }

    /// The least scale for a kind (0 until learned).
    #[must_use]
    pub fn scale_min(&self, code: u16) -> f32 {
        SCALE_PRIOR * self.median[Self::slot(code)]
    }

    /// A warm device's own scale for a kind.
    pub fn learn(&mut self, code: u16, scale: f32) {
        if !(scale.is_finite() && scale > 0.0) {
            return;
        }
        let m = &mut self.median[Self::slot(code)];
        *m = if *m <= 0.0 {
            scale
        } else if scale > *m {
            *m * (1.0 + MEDIAN_STEP)
        } else {
            *m * (1.0 - MEDIAN_STEP)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic normal-ish draw (sum of 4 uniforms, unit variance).
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn gauss(&mut self) -> f64 {
            ((0..4).map(|_| self.uniform()).sum::<f64>() - 2.0) * 3.0f64.sqrt()
        }
    }

    /// A device `calibration` away from its neighbours, with a smooth wander of `wander`
    /// (a sine of period `period` readings) and noise `noise`, plus `drift` per reading
    /// from reading `onset`. The readings after the onset at which it first fired.
    fn run(drift: f64, onset: usize, wander: f64, period: f64, seed: u64) -> Option<usize> {
        let config = OffsetConfig::with_floor(1.0);
        let mut rng = Rng(seed);
        let mut offset = PeerOffset::default();
        for i in 0..onset + 400 {
            let weather = 450.0 + 30.0 * (i as f64 / 300.0).sin();
            let median = weather + 0.8 * rng.gauss();
            let own = weather
                + 7.5
                + wander * (i as f64 * std::f64::consts::TAU / period + seed as f64).sin()
                + 1.2 * rng.gauss()
                + if i >= onset {
                    drift * (i - onset) as f64
                } else {
                    0.0
                };
            if offset
                .observe(&config, own.round() as f32, median as f32, 0.0)
                .is_some()
            {
                assert!(
                    i >= onset,
                    "seed {seed}: fired at {i} before the onset {onset}"
                );
                return Some(i - onset);
            }
        }
        None
    }

    #[test]
    fn an_honest_device_with_a_wander_of_its_own_does_not_fire() {
        for seed in 0..40 {
            assert_eq!(run(0.0, 2_000, 3.0, 80.0, seed), None, "seed {seed}");
        }
    }

    #[test]
    fn a_drift_away_from_the_neighbours_fires() {
        for seed in 0..20 {
            // 0.5 ppm a reading: 15 ppm after 30 readings, against a wander of 3.
            let after = run(0.5, 1_000, 3.0, 80.0, seed);
            assert!(after.is_some_and(|n| n <= 40), "seed {seed}: {after:?}");
            // Downwards, and a slow one eventually.
            assert!(run(-0.5, 1_000, 3.0, 80.0, seed).is_some(), "seed {seed}");
            assert!(
                run(0.1, 1_000, 3.0, 80.0, seed).is_some_and(|n| n <= 200),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn the_shard_scale_is_the_median_of_the_devices_and_ignores_a_few_wild_ones() {
        let mut scales = ShardScales::default();
        let mut rng = Rng(3);
        for i in 0..20_000 {
            // Honest scales around 3 (2 to 4); every tenth device's scale is 100.
            let scale = if i % 10 == 0 {
                100.0
            } else {
                3.0 + 2.0 * (rng.uniform() - 0.5)
            };
            scales.learn(1, scale as f32);
            scales.learn(1, f32::NAN);
        }
        let median = scales.scale_min(1) / SCALE_PRIOR;
        assert!((2.9..3.5).contains(&median), "{median}");
        assert_eq!(scales.scale_min(2), 0.0);
        // A code past the table shares slot 0, never panics.
        scales.learn(9_999, 1.0);
        assert!(scales.scale_min(9_999) > 0.0);
    }

    #[test]
    fn non_finite_inputs_change_nothing() {
        let config = OffsetConfig::with_floor(1.0);
        let mut offset = PeerOffset::default();
        for i in 0..400 {
            let _ = offset.observe(&config, 400.0 + (i % 3) as f32, 395.0, 0.0);
        }
        let before = offset;
        assert_eq!(offset.observe(&config, f32::NAN, 395.0, 0.0), None);
        assert_eq!(offset.observe(&config, 400.0, f32::INFINITY, 0.0), None);
        assert_eq!(offset, before);
        assert!(offset.own_scale(&config).is_some());
    }
}
