//! Statistical deviation: a streaming model of one device's series of one kind.
//!
//! - The level and its trend follow Holt's linear method (level weight `level_alpha`,
//!   trend weight `trend_beta`); a reading's residual is its distance from the prediction
//!   `level + trend`, in units of the noise. The trend follows a daily cycle's slope, so an
//!   honest cycle steeper than the noise per reading (a room warming in the morning) is
//!   not read as a drift.
//! - The noise is estimated from successive differences (an EWMA of `(x_t - x_{t-1})² / 2`),
//!   not from the residuals: a slow trend or a daily cycle barely moves the differences,
//!   so the estimate stays the sensor's own jitter and a drift cannot hide by inflating it.
//!   It is floored at the kind's noise floor, so a very quiet sensor cannot make a tiny
//!   honest change look like a huge z-score, and at the RMS of the model's own recent
//!   prediction errors (EWMA of the clipped squared residual), so a series whose level
//!   moves faster than its sensor jitters (weather seen by a quiet sensor) is judged
//!   against how well it can be predicted, not against the jitter alone.
//! - [`Detector::Deviation`] fires on `|z| > deviation_z_max` (a spike, the first readings
//!   of a level shift).
//! - [`Detector::Drift`] is a two-sided CUSUM of the residual z-scores with a slack of
//!   `cusum_slack_z` per reading; it fires when either sum passes `cusum_z_max` and then
//!   starts over. At a drift's onset the prediction lags the new ramp until the trend has
//!   learned it (about `1 / trend_beta` readings), so a drift that starts faster than about
//!   `cusum_slack_z · σ · α` per reading is caught; a slower one, or one that builds up as
//!   gently as a daily cycle, is learned as trend (the peers detector compares the device
//!   with its neighbours, which a drift does not follow).
//! - The model updates with the value clipped to `update_clip_z` noise units from the level
//!   (and the raw successive difference to the same width), so a spike does not drag the level or inflate the
//!   noise; a real level shift is still followed, at `α · update_clip_z · σ` per reading.
//! - The first `warmup_readings` readings only teach the model (averages with weight
//!   `max(α, 1/n)`, so the start is not biased to the first value); nothing fires.
//!
//! Known limit: one series cannot tell a slow drift from weather; that needs the peers.
//! Non-finite values are skipped without touching state.

use super::persistence::noise_floor_default;
use super::{strength_over, Detector, Signal};
use ingestd_codec::envelope::Kind;

/// Parameters of the statistical model of one kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsConfig {
    /// EWMA weight of a new reading in the level, in (0, 1].
    pub level_alpha: f32,
    /// Weight of a new level step in the trend (Holt's beta), in [0, 1]; 0: no trend.
    pub trend_beta: f32,
    /// EWMA weight of a new squared difference in the noise estimate, in (0, 1].
    pub noise_alpha: f32,
    /// Readings that only teach the model before it may fire.
    pub warmup_readings: u32,
    /// A residual beyond this many noise units fires [`Detector::Deviation`].
    pub deviation_z_max: f32,
    /// Updates clip the value to this many noise units from the level.
    pub update_clip_z: f32,
    /// CUSUM slack per reading, in noise units.
    pub cusum_slack_z: f32,
    /// CUSUM threshold, in noise units summed over readings.
    pub cusum_z_max: f32,
    /// The noise estimate never goes below this, in the kind's unit.
    pub noise_floor: f32,
}

impl StatsConfig {
    /// Defaults for a kind (only the noise floor depends on it).
    #[must_use]
    pub fn default_for(kind: Kind) -> StatsConfig {
        StatsConfig {
            level_alpha: 0.1,
            trend_beta: 0.05,
            noise_alpha: 0.02,
            warmup_readings: 30,
            deviation_z_max: 6.0,
            update_clip_z: 3.0,
            cusum_slack_z: 0.5,
            cusum_z_max: 10.0,
            noise_floor: noise_floor_default(kind),
        }
    }
}

/// What the model saw in one reading.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatsOutcome {
    /// The residual in noise units (0 during the first reading or for a skipped value).
    pub z: f32,
    /// Set when [`Detector::Deviation`] fired.
    pub deviation: Option<Signal>,
    /// Set when [`Detector::Drift`] fired.
    pub drift: Option<Signal>,
}

/// The model's state: a few numbers per device and kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Finite readings seen (saturating).
    readings: u32,
    /// Holt level and trend (per reading).
    level: f64,
    #[serde(default)]
    trend: f64,
    /// EWMA of half the squared successive difference: the noise variance.
    noise_var: f64,
    /// The previous value, raw.
    previous: f64,
    /// CUSUM of positive and of negative residuals, in noise units.
    cusum_high: f64,
    cusum_low: f64,
    /// EWMA of the squared (clipped) prediction error: how well the model predicts this
    /// series. A series whose level moves faster than its sensor's jitter (weather on a
    /// quiet sensor) is judged against that, not against the jitter alone.
    #[serde(default)]
    error_var: f64,
}

/// A weight in (0, 1]; anything else (NaN, 0, negative, > 1) is a configuration bug that
/// must not panic on the reading path, so it falls back to 1 (no smoothing).
fn weight(alpha: f32) -> f64 {
    if alpha > 0.0 && alpha <= 1.0 {
        f64::from(alpha)
    } else {
        1.0
    }
}

/// A non-negative finite parameter, or `fallback`.
fn non_negative(x: f32, fallback: f64) -> f64 {
    if x.is_finite() && x >= 0.0 {
        f64::from(x)
    } else {
        fallback
    }
}

impl Stats {
    /// No reading yet.
    #[must_use]
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Readings the model has learned from.
    #[must_use]
    pub fn readings(&self) -> u32 {
        self.readings
    }

    /// The current level and noise standard deviation, in the kind's unit.
    #[must_use]
    pub fn level_and_noise(&self, config: &StatsConfig) -> (f64, f64) {
        (self.level, self.sigma(config))
    }

    /// The noise standard deviation as measured, without the floor (0 before two readings).
    #[must_use]
    pub fn raw_noise(&self) -> f64 {
        self.noise_var.max(0.0).sqrt()
    }

    fn sigma(&self, config: &StatsConfig) -> f64 {
        let floor = non_negative(config.noise_floor, 0.0).max(1e-9);
        self.noise_var.sqrt().max(self.error_var.sqrt()).max(floor)
    }

    /// Feeds one reading (device time does not enter this model).
    pub fn observe(&mut self, config: &StatsConfig, value: f32) -> StatsOutcome {
        if !value.is_finite() {
            return StatsOutcome::default();
        }
        let x = f64::from(value);
        if self.readings == 0 {
            *self = Stats {
                readings: 1,
                level: x,
                previous: x,
                ..Stats::default()
            };
            return StatsOutcome::default();
        }
        let sigma = self.sigma(config);
        let predicted = self.level + self.trend;
        let z = (x - predicted) / sigma;
        let warm = self.readings >= config.warmup_readings;
        let mut outcome = StatsOutcome {
            z: z as f32,
            ..StatsOutcome::default()
        };

        let clip_z = non_negative(config.update_clip_z, 3.0);
        if warm {
            let z_max = non_negative(config.deviation_z_max, 6.0);
            if z.abs() > z_max {
                outcome.deviation = Some(Signal {
                    detector: Detector::Deviation,
                    strength: strength_over(z.abs(), z_max),
                });
            }
            // The sums see the clipped residual too: one spike must not read as a drift.
            let z_clipped = z.clamp(-clip_z, clip_z);
            let slack = non_negative(config.cusum_slack_z, 0.5);
            self.cusum_high = (self.cusum_high + z_clipped - slack).max(0.0);
            self.cusum_low = (self.cusum_low - z_clipped - slack).max(0.0);
            let cusum = self.cusum_high.max(self.cusum_low);
            let cusum_max = non_negative(config.cusum_z_max, 10.0);
            if cusum > cusum_max {
                outcome.drift = Some(Signal {
                    detector: Detector::Drift,
                    strength: strength_over(cusum, cusum_max),
                });
                self.cusum_high = 0.0;
                self.cusum_low = 0.0;
            }
        }

        // Learn, with the value clipped around the level and the difference clipped to the
        // same width, so an outlier moves nothing by more than a normal reading could.
        let band = clip_z * sigma;
        let x_taken = x.clamp(predicted - band, predicted + band);
        // The difference is between raw values (less the trend): clipped values stick to
        // the band's edge during a level shift and would shrink the noise to nothing.
        let difference = (x - self.previous - self.trend).clamp(-band, band);
        self.readings = self.readings.saturating_add(1);
        let n = f64::from(self.readings);
        let level_alpha = weight(config.level_alpha).max(1.0 / n);
        // Differences start with the second reading: n - 1 of them so far.
        let noise_alpha = weight(config.noise_alpha).max(1.0 / (n - 1.0));
        let level = predicted + level_alpha * (x_taken - predicted);
        let beta = f64::from(config.trend_beta).clamp(0.0, 1.0);
        let beta = if beta.is_nan() { 0.0 } else { beta };
        self.trend += beta * (level - self.level - self.trend);
        self.level = level;
        self.noise_var += noise_alpha * (difference * difference / 2.0 - self.noise_var);
        let error = (x - predicted).clamp(-band, band);
        self.error_var += noise_alpha * (error * error - self.error_var);
        self.previous = x;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic standard normal sequence (xorshift64* and Box-Muller), so a test's
    /// series is literal in effect: the same numbers on every run and platform.
    pub(crate) struct Normal(u64);

    impl Normal {
        pub(crate) fn new(seed: u64) -> Normal {
            Normal(seed.max(1))
        }

        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
            (bits as f64 + 0.5) / (1u64 << 53) as f64
        }

        pub(crate) fn next(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    fn config() -> StatsConfig {
        StatsConfig::default_for(Kind::TemperatureC)
    }

    /// Temperature around 21 °C with 0.1 °C of noise.
    fn noisy(normal: &mut Normal) -> f32 {
        (21.0 + 0.1 * normal.next()) as f32
    }

    #[test]
    fn a_clean_noisy_series_never_fires() {
        let config = config();
        for seed in 1..=5 {
            let mut normal = Normal::new(seed);
            let mut stats = Stats::new();
            for i in 0..5_000 {
                let outcome = stats.observe(&config, noisy(&mut normal));
                assert_eq!(
                    outcome.deviation, None,
                    "seed {seed} reading {i}: {outcome:?}"
                );
                assert_eq!(outcome.drift, None, "seed {seed} reading {i}: {outcome:?}");
            }
            let (level, sigma) = stats.level_and_noise(&config);
            assert!((level - 21.0).abs() < 0.05, "{level}");
            assert!((0.08..0.12).contains(&sigma), "{sigma}");
        }
    }

    #[test]
    fn a_spike_fires_deviation_and_does_not_poison_the_model() {
        let config = config();
        let mut normal = Normal::new(7);
        let mut stats = Stats::new();
        for _ in 0..200 {
            stats.observe(&config, noisy(&mut normal));
        }
        // 3 °C in one reading: thirty times the noise.
        let outcome = stats.observe(&config, 24.0);
        assert!(
            matches!(outcome.deviation, Some(s) if s.detector == Detector::Deviation && s.strength == 1.0),
            "{outcome:?}"
        );
        assert_eq!(outcome.drift, None);
        // Back to normal at once: nothing more fires.
        for i in 0..500 {
            let outcome = stats.observe(&config, noisy(&mut normal));
            assert_eq!(
                (outcome.deviation, outcome.drift),
                (None, None),
                "{i}: {outcome:?}"
            );
        }
    }

    #[test]
    fn a_level_shift_fires_deviation_then_is_learned() {
        let config = config();
        let mut normal = Normal::new(11);
        let mut stats = Stats::new();
        for _ in 0..200 {
            stats.observe(&config, noisy(&mut normal));
        }
        let shifted = |normal: &mut Normal| noisy(normal) + 2.0;
        assert!(stats
            .observe(&config, shifted(&mut normal))
            .deviation
            .is_some());
        let mut last_fire = 0;
        for i in 1..2_000 {
            let outcome = stats.observe(&config, shifted(&mut normal));
            if outcome.deviation.is_some() || outcome.drift.is_some() {
                last_fire = i;
            }
        }
        assert!(
            last_fire > 10,
            "the shift was forgotten at once: {last_fire}"
        );
        assert!(last_fire < 500, "the shift was never learned: {last_fire}");
    }

    #[test]
    fn a_slow_drift_fires_cusum_within_30_readings() {
        let config = config();
        let mut normal = Normal::new(13);
        let mut stats = Stats::new();
        for _ in 0..300 {
            stats.observe(&config, noisy(&mut normal));
        }
        // 0.02 °C per reading: a fifth of the noise, invisible point by point.
        let mut fired_at = None;
        for i in 1..=30 {
            let value = noisy(&mut normal) + 0.02 * i as f32;
            let outcome = stats.observe(&config, value);
            assert_eq!(outcome.deviation, None, "{i}: {outcome:?}");
            if outcome.drift.is_some() {
                fired_at = Some(i);
                break;
            }
        }
        assert!(fired_at.is_some(), "drift not caught within 30 readings");
    }

    #[test]
    fn a_downward_drift_fires_cusum_too() {
        let config = config();
        let mut normal = Normal::new(17);
        let mut stats = Stats::new();
        for _ in 0..300 {
            stats.observe(&config, noisy(&mut normal));
        }
        let fired = (1..=30).any(|i| {
            let value = noisy(&mut normal) - 0.02 * i as f32;
            stats.observe(&config, value).drift.is_some()
        });
        assert!(fired, "downward drift not caught within 30 readings");
    }

    #[test]
    fn a_drift_slower_than_the_sensitivity_is_not_claimed() {
        // The documented limit: below about slack * sigma * alpha per reading (0.005 °C
        // here) the trend learns the drift. A test, so that a change of defaults that
        // moves the sensitivity is a visible decision.
        let config = config();
        let mut normal = Normal::new(19);
        let mut stats = Stats::new();
        for i in 0..3_000 {
            let value = noisy(&mut normal) + 0.001 * i as f32;
            let outcome = stats.observe(&config, value);
            assert_eq!((outcome.deviation, outcome.drift), (None, None), "{i}");
        }
    }

    #[test]
    fn nothing_fires_during_warm_up() {
        let config = config();
        let mut stats = Stats::new();
        // Wild values from the start: the model only learns.
        for i in 0..config.warmup_readings {
            let value = if i % 2 == 0 { 10.0 } else { 40.0 };
            let outcome = stats.observe(&config, value);
            assert_eq!((outcome.deviation, outcome.drift), (None, None), "{i}");
        }
        assert_eq!(stats.readings(), config.warmup_readings);
    }

    #[test]
    fn non_finite_values_leave_the_state_alone() {
        let config = config();
        let mut stats = Stats::new();
        for v in [21.0, 21.1, 20.9] {
            stats.observe(&config, v);
        }
        let before = stats;
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(stats.observe(&config, v), StatsOutcome::default());
        }
        assert_eq!(stats, before);
    }
}
