//! Too smooth to be real: fabricated series that are plausible point by point.
//!
//! Two independent tests on one device's series of one kind, counted in readings (the
//! detector needs no time):
//! - **Residual noise.** The second difference `x_t - 2 x_{t-1} + x_{t-2}` removes a level
//!   and a trend (a daily cycle barely moves it) and leaves the sensor's jitter, whose
//!   spread is about 2.4 times the noise. More than `quiet_readings_max` readings in a row
//!   with `|second difference| < residual_noise_min` while the values span more than the
//!   noise floor fires: a computed curve, not a measurement. A constant value is left to
//!   the persistence detector (its span stays within the floor). Why 10: jitter at the
//!   floor makes a second difference that small with probability about 0.16 (|N(0, 2.45)|
//!   under 0.5), so 10 in a row about 1e-8 for an honest sensor; the strength reaches an
//!   alert alone (0.84) at about 17 quiet readings. With the defaults (half a floor, 10
//!   readings) jitter of a twentieth of the floor fires within about 15 readings; jitter of
//!   a tenth of the floor fires only sometimes; at the floor, never.
//! - **Trailing digits.** The last digit at the kind's resolution (`round(x / res) mod 10`)
//!   of a measured value whose jitter covers many steps is uniform; a generator that
//!   rounds to a pattern is not. Over a sliding window of `digit_window_readings` the
//!   chi-square against uniform (9 degrees of freedom) above `digit_chi2_max` fires. The
//!   test abstains while the mean step between readings is under `digit_step_min`
//!   resolutions (a slow or quiet series has honestly clustered digits) and while the
//!   window holds only digits 0 and 5 (a device reporting at a coarser resolution).
//!
//! False positives (test `clean_noisy_series_false_positive_rate`): 200 000 readings of
//! daily cycles of six kinds with Gaussian noise at 2 and 5 times the floor, reported at
//! the kind's resolution, fire 0 times (and 0 times over six seeds, 1.2 million
//! readings). The chi-square threshold 50 is a p-value of about 1e-7 per window; at 40
//! (about 1e-5) one seed fired on 12 readings of one excursion. A fire alone scores about
//! 0.6 x 0.5 = 0.3, under the default alert threshold.
//!
//! Known limit: a noiseless curve rounded to the resolution has second differences of one
//! resolution, above `residual_noise_min`, so the residual test misses it; its digits are
//! honest-looking too. The peers detector is the one for such a series.
//!
//! State is fixed-size (a 64-reading window of packed bytes, about 100 bytes in all);
//! non-finite values are skipped without touching it.

use super::persistence::noise_floor_default;
use super::{strength_over, Detector, Signal};
use ingestd_codec::envelope::Kind;

/// Capacity of the trailing-digit window, in readings.
pub const DIGIT_WINDOW_READINGS_MAX: usize = 64;

/// Parameters of the detector for one kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmoothConfig {
    /// A |second difference| below this is quiet, in the kind's unit.
    pub residual_noise_min: f32,
    /// More quiet readings in a row than this fire (the values must span more than
    /// `noise_floor`).
    pub quiet_readings_max: u32,
    /// The sensor's noise floor, in the kind's unit (as in persistence).
    pub noise_floor: f32,
    /// The resolution whose last digit is tested, in the kind's unit; `None` disables the
    /// digit test.
    pub digit_resolution: Option<f32>,
    /// Readings in the digit window, at most [`DIGIT_WINDOW_READINGS_MAX`]; the test runs
    /// once the window is full.
    pub digit_window_readings: u32,
    /// The chi-square (9 degrees of freedom) above which the digits are not uniform.
    pub digit_chi2_max: f32,
    /// The mean step between readings in the window, in resolutions, below which the
    /// digit test abstains.
    pub digit_step_min: f32,
}

/// The resolution a device of the kind typically reports at, for the digit test; `None`
/// where the series moves too little for its last digit to mean anything (batteries).
#[must_use]
pub fn digit_resolution_default(kind: Kind) -> Option<f32> {
    match kind {
        Kind::Co2Ppm | Kind::Pm1Ugm3 | Kind::Pm2_5Ugm3 | Kind::Pm10Ugm3 | Kind::VocIndex => {
            Some(1.0)
        }
        Kind::TemperatureC | Kind::HumidityRhPct | Kind::PressureHpa => Some(0.01),
        Kind::NoiseDba => Some(0.1),
        Kind::BatteryPct | Kind::BatteryV | Kind::Other(_) => None,
    }
}

impl SmoothConfig {
    /// Defaults for a kind.
    #[must_use]
    pub fn default_for(kind: Kind) -> SmoothConfig {
        let noise_floor = noise_floor_default(kind);
        SmoothConfig {
            // Honest jitter at the floor gives second differences of about 2.4 floors.
            residual_noise_min: noise_floor * 0.5,
            quiet_readings_max: 10,
            noise_floor,
            digit_resolution: digit_resolution_default(kind),
            digit_window_readings: 60,
            digit_chi2_max: 50.0,
            digit_step_min: 5.0,
        }
    }
}

// A window slot packs the last digit (low 4 bits) and the step from the previous reading
// in resolutions, saturated at 15 (high 4 bits): the gate only needs to know the mean
// step passes a few resolutions.
const STEP_SATURATED: u8 = 15;
// |x / res| above this has no meaningful last digit in an f32 (and fits an i64).
const QUANTUM_ABS_MAX: f64 = 1e12;

/// The state of one device's series of one kind.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Smooth {
    /// The last two finite values, newest first, and how many there are (0 to 2).
    last: [f32; 2],
    last_len: u8,
    /// Quiet readings in a row, and the span of their values.
    quiet_run: u32,
    quiet_min: f32,
    quiet_max: f32,
    /// The digit window as a ring: packed slots, next write position, fill.
    #[serde(with = "super::byte_array")]
    slots: [u8; DIGIT_WINDOW_READINGS_MAX],
    head: u8,
    len: u8,
    /// Count of each last digit in the window, and the sum of their steps.
    digit_counts: [u8; 10],
    step_sum: u16,
    /// The previous reading's value in resolutions, if it had one.
    prev_quantum: Option<i64>,
}

impl Default for Smooth {
    fn default() -> Self {
        Smooth {
            last: [0.0; 2],
            last_len: 0,
            quiet_run: 0,
            quiet_min: 0.0,
            quiet_max: 0.0,
            slots: [0; DIGIT_WINDOW_READINGS_MAX],
            head: 0,
            len: 0,
            digit_counts: [0; 10],
            step_sum: 0,
            prev_quantum: None,
        }
    }
}

impl Smooth {
    /// No reading yet.
    #[must_use]
    pub fn new() -> Smooth {
        Smooth::default()
    }

    /// Feeds one reading; a [`Detector::TooSmooth`] signal when either test fires, with
    /// the larger strength (0.5 at a test's limit, 1 at twice it).
    pub fn observe(&mut self, config: &SmoothConfig, value: f32) -> Option<Signal> {
        if !value.is_finite() {
            return None;
        }
        let quiet = self.observe_residual(config, value);
        let digits = self.observe_digit(config, value);
        let strength = match (quiet, digits) {
            (None, None) => return None,
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
        };
        Some(Signal {
            detector: Detector::TooSmooth,
            strength,
        })
    }

    fn observe_residual(&mut self, config: &SmoothConfig, value: f32) -> Option<f32> {
        let [x1, x2] = self.last;
        let quiet = self.last_len >= 2 && {
            let second = f64::from(value) - 2.0 * f64::from(x1) + f64::from(x2);
            second.abs() < f64::from(config.residual_noise_min)
        };
        self.last = [value, x1];
        self.last_len = self.last_len.saturating_add(1).min(2);
        if quiet {
            self.quiet_run = self.quiet_run.saturating_add(1);
            self.quiet_min = self.quiet_min.min(value);
            self.quiet_max = self.quiet_max.max(value);
        } else {
            self.quiet_run = 0;
            self.quiet_min = value;
            self.quiet_max = value;
        }
        let span = f64::from(self.quiet_max) - f64::from(self.quiet_min);
        let floor = f64::from(config.noise_floor);
        // A NaN floor compares false: the test stays off rather than firing on everything.
        if self.quiet_run > config.quiet_readings_max && span > floor {
            Some(strength_over(
                f64::from(self.quiet_run),
                f64::from(config.quiet_readings_max),
            ))
        } else {
            None
        }
    }

    fn observe_digit(&mut self, config: &SmoothConfig, value: f32) -> Option<f32> {
        let resolution = config
            .digit_resolution
            .filter(|r| r.is_finite() && *r > 0.0)?;
        let quantum = (f64::from(value) / f64::from(resolution)).round();
        if quantum.is_nan() || quantum.abs() > QUANTUM_ABS_MAX {
            // No last digit to speak of; the window keeps what it has.
            return None;
        }
        let quantum = quantum as i64;
        let digit = quantum.rem_euclid(10) as u8;
        let step = self.prev_quantum.map_or(0, |p| {
            p.abs_diff(quantum).min(u64::from(STEP_SATURATED)) as u8
        });
        self.prev_quantum = Some(quantum);

        let window = (config.digit_window_readings as usize).clamp(10, DIGIT_WINDOW_READINGS_MAX);
        // A window shrunk by a config change drops its oldest slots first.
        while usize::from(self.len) >= window {
            self.evict_oldest();
        }
        self.slots[usize::from(self.head)] = digit | (step << 4);
        self.head = ((usize::from(self.head) + 1) % DIGIT_WINDOW_READINGS_MAX) as u8;
        self.len += 1;
        self.digit_counts[usize::from(digit)] += 1;
        self.step_sum += u16::from(step);

        if usize::from(self.len) < window {
            return None;
        }
        let n = f64::from(self.len);
        // The first slot's step reaches back outside the window; close enough.
        if f64::from(self.step_sum) / n < f64::from(config.digit_step_min) {
            return None;
        }
        let off_grid: u16 = self
            .digit_counts
            .iter()
            .enumerate()
            .filter(|(d, _)| *d != 0 && *d != 5)
            .map(|(_, c)| u16::from(*c))
            .sum();
        if off_grid == 0 {
            return None;
        }
        let expected = n / 10.0;
        let chi2: f64 = self
            .digit_counts
            .iter()
            .map(|c| {
                let d = f64::from(*c) - expected;
                d * d / expected
            })
            .sum();
        let limit = f64::from(config.digit_chi2_max);
        (chi2 > limit).then(|| strength_over(chi2, limit))
    }

    fn evict_oldest(&mut self) {
        let oldest = (usize::from(self.head) + DIGIT_WINDOW_READINGS_MAX - usize::from(self.len))
            % DIGIT_WINDOW_READINGS_MAX;
        let slot = self.slots[oldest];
        let digit = usize::from(slot & 0x0F);
        debug_assert!(self.len > 0 && self.digit_counts[digit] > 0);
        self.digit_counts[digit] = self.digit_counts[digit].saturating_sub(1);
        self.step_sum = self.step_sum.saturating_sub(u16::from(slot >> 4));
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small deterministic generator (xorshift64*), so the tests need no dependency.
    struct Rng(u64);

    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            (bits as f64 + 0.5) / (1u64 << 53) as f64
        }

        /// Standard normal (Box-Muller).
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    /// A daily cycle of the kind (one reading a minute) with Gaussian noise, reported at
    /// the resolution.
    fn honest(rng: &mut Rng, i: usize, base: f64, amplitude: f64, sigma: f64, res: f64) -> f32 {
        let phase = std::f64::consts::TAU * i as f64 / 1440.0;
        let x = base + amplitude * phase.sin() + sigma * rng.normal();
        ((x / res).round() * res) as f32
    }

    #[test]
    fn clean_noisy_series_false_positive_rate() {
        // (kind, base, daily amplitude, noise in floors)
        let cases = [
            (Kind::TemperatureC, 21.0, 3.0, 2.0),
            (Kind::TemperatureC, 21.0, 3.0, 5.0),
            (Kind::HumidityRhPct, 55.0, 15.0, 2.0),
            (Kind::HumidityRhPct, 55.0, 15.0, 5.0),
            (Kind::Co2Ppm, 600.0, 150.0, 5.0),
            (Kind::PressureHpa, 1013.0, 2.0, 2.0),
            (Kind::Pm2_5Ugm3, 30.0, 10.0, 5.0),
            (Kind::NoiseDba, 45.0, 10.0, 5.0),
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut fired = 0usize;
        let mut total = 0usize;
        for (kind, base, amplitude, floors) in cases {
            let config = SmoothConfig::default_for(kind);
            let floor = f64::from(config.noise_floor);
            let res = config.digit_resolution.map_or(floor, f64::from);
            let mut smooth = Smooth::new();
            for i in 0..25_000 {
                let v = honest(&mut rng, i, base, amplitude, floors * floor, res);
                total += 1;
                if smooth.observe(&config, v).is_some() {
                    fired += 1;
                }
            }
        }
        assert_eq!(total, 200_000);
        assert_eq!(fired, 0, "false positives on {total} clean readings");
    }

    #[test]
    fn a_noiseless_sine_fires_within_the_quiet_span() {
        let config = SmoothConfig::default_for(Kind::TemperatureC);
        let mut smooth = Smooth::new();
        let mut first = None;
        for i in 0..200 {
            let phase = std::f64::consts::TAU * i as f64 / 1440.0;
            let v = (21.0 + 3.0 * phase.sin()) as f32;
            if let Some(s) = smooth.observe(&config, v) {
                assert_eq!(s.detector, Detector::TooSmooth);
                first.get_or_insert(i);
            }
        }
        // Quiet from the third reading; the run passes 10 at the 13th (index 12).
        assert_eq!(first, Some(12));
    }

    #[test]
    fn jitter_far_below_the_floor_fires() {
        // A curve with a fig leaf of noise (a twentieth of the 0.01 °C floor), not rounded.
        let config = SmoothConfig::default_for(Kind::TemperatureC);
        let mut rng = Rng(5);
        let mut smooth = Smooth::new();
        let mut first = None;
        for i in 0..200 {
            let v = honest(&mut rng, i, 21.0, 3.0, 0.0005, 1e-6);
            if smooth.observe(&config, v).is_some() {
                first.get_or_insert(i);
            }
        }
        assert!(first.is_some_and(|i| i < 30), "{first:?}");
    }

    #[test]
    fn a_constant_value_is_left_to_persistence() {
        let config = SmoothConfig::default_for(Kind::TemperatureC);
        let mut smooth = Smooth::new();
        for _ in 0..500 {
            assert_eq!(smooth.observe(&config, 21.5), None);
        }
    }

    #[test]
    fn values_rounded_to_a_digit_pattern_fire_within_the_window() {
        // Plausible noisy humidity, but every value ends in 3 or 7 at 0.01 %.
        let config = SmoothConfig::default_for(Kind::HumidityRhPct);
        let mut rng = Rng(7);
        let mut smooth = Smooth::new();
        let mut first = None;
        for i in 0..200 {
            let x = honest(&mut rng, i, 55.0, 15.0, 0.25, 0.1);
            let tail = if i % 2 == 0 { 0.03 } else { 0.07 };
            let v = (f64::from(x) + tail) as f32;
            if smooth.observe(&config, v).is_some() {
                first.get_or_insert(i);
            }
        }
        assert_eq!(first, Some(config.digit_window_readings as usize - 1));
    }

    #[test]
    fn a_coarser_reporting_resolution_abstains() {
        // Temperature reported at 0.1 °C: the last digit at 0.01 is always 0.
        let config = SmoothConfig::default_for(Kind::TemperatureC);
        let mut rng = Rng(11);
        let mut smooth = Smooth::new();
        for i in 0..5_000 {
            let v = honest(&mut rng, i, 21.0, 3.0, 0.3, 0.1);
            assert_eq!(smooth.observe(&config, v), None, "{i}");
        }
    }

    #[test]
    fn a_quiet_slow_series_abstains_from_the_digit_test() {
        // Noise at the floor: digits cluster honestly, the mean step is under 5.
        let config = SmoothConfig {
            quiet_readings_max: u32::MAX,
            ..SmoothConfig::default_for(Kind::PressureHpa)
        };
        let mut rng = Rng(3);
        let mut smooth = Smooth::new();
        for i in 0..5_000 {
            let v = honest(&mut rng, i, 1013.0, 0.0, 0.01, 0.01);
            assert_eq!(smooth.observe(&config, v), None, "{i}");
        }
    }

    #[test]
    fn non_finite_values_leave_the_state_alone() {
        let config = SmoothConfig::default_for(Kind::TemperatureC);
        let mut smooth = Smooth::new();
        smooth.observe(&config, 21.0);
        smooth.observe(&config, 21.3);
        let before = smooth;
        for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(smooth.observe(&config, v), None);
        }
        assert_eq!(smooth, before);
    }

    fn any_value() -> impl Strategy<Value = f32> {
        prop_oneof![
            any::<u32>().prop_map(f32::from_bits),
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(f32::MAX),
            Just(f32::MIN),
            -100.0f32..2000.0,
        ]
    }

    proptest! {
        #[test]
        fn no_input_panics_and_strengths_are_in_the_unit_interval(
            code in 1u16..=20,
            values in proptest::collection::vec(any_value(), 1..300),
            resolution in prop_oneof![any::<u32>().prop_map(f32::from_bits), 0.001f32..10.0],
            window in any::<u32>(),
            noise in any::<u32>().prop_map(f32::from_bits),
        ) {
            let kind = Kind::from_code(code).unwrap_or(Kind::Other(code));
            let odd = SmoothConfig {
                residual_noise_min: noise,
                quiet_readings_max: window % 50,
                noise_floor: noise,
                digit_resolution: Some(resolution),
                digit_window_readings: window,
                digit_chi2_max: noise,
                digit_step_min: noise,
            };
            for config in [SmoothConfig::default_for(kind), odd] {
                let mut smooth = Smooth::new();
                for v in &values {
                    if let Some(s) = smooth.observe(&config, *v) {
                        prop_assert!((0.0..=1.0).contains(&s.strength), "{s:?}");
                        prop_assert_eq!(s.detector, Detector::TooSmooth);
                    }
                }
            }
        }
    }
}
