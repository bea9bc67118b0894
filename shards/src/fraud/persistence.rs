//! Persistence: a value stuck, or varying less than its kind's noise floor, for longer than
//! a span of device time.
//!
//! A real sensor jitters by at least its noise floor; a frozen one, or a device replaying
//! one number, does not. The state is the current run: when it started, how many readings
//! and the band (min, max) they span. A reading that would widen the band beyond the floor
//! starts a new run. Device time going backwards also starts a new run (the span cannot be
//! measured across it; the timing detector judges the clock). Battery kinds never fire by
//! default: a full battery on charge legitimately reads 100 % for days.

use super::{strength_over, Detector, Signal};
use ingestd_codec::envelope::Kind;

/// Persistence limits for one kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PersistenceLimits {
    /// A band narrower than or equal to this counts as stuck, in the kind's unit.
    pub noise_floor: f32,
    /// The run must last longer than this to fire; `None` disables the detector.
    pub stuck_span_ms_max: Option<u64>,
    /// Fewer readings than this in the run never fire (two readings an hour apart are
    /// no evidence).
    pub stuck_readings_min: u32,
    /// The run fires after this many readings, whatever its span, when the device's own
    /// noise is at least `noisy_floor_ratio_min` floors: readings that honestly scatter
    /// over several floors do not fall inside one floor this many times in a row (for
    /// independent readings the chance is below `(1 / ratio)^(readings - 1)`). 0: off.
    pub stuck_readings_max: u32,
    pub noisy_floor_ratio_min: f32,
    /// The same value, bit for bit, this many times in a row fires when the device's own
    /// noise is at least one floor (an honest reading repeats its predecessor's rounded
    /// value with a chance of about 0.4 then, so 16 in a row is about 1e-6). 0: off.
    pub repeats_max: u32,
}

/// The smallest variation an honest sensor of the kind shows between readings, in the
/// kind's unit (roughly its resolution); shared with the rate detector as its tolerance.
#[must_use]
pub fn noise_floor_default(kind: Kind) -> f32 {
    match kind {
        Kind::Co2Ppm => 1.0,
        Kind::TemperatureC => 0.01,
        Kind::HumidityRhPct => 0.05,
        Kind::Pm1Ugm3 | Kind::Pm2_5Ugm3 | Kind::Pm10Ugm3 => 0.5,
        Kind::BatteryPct => 1.0,
        Kind::BatteryV => 0.005,
        Kind::PressureHpa => 0.01,
        Kind::VocIndex | Kind::NoiseDba => 1.0,
        Kind::Other(_) => 0.0,
    }
}

const HOUR_MS: u64 = 3_600_000;

impl PersistenceLimits {
    /// Defaults per kind.
    #[must_use]
    pub fn default_for(kind: Kind) -> PersistenceLimits {
        let stuck_span_ms_max = match kind {
            Kind::BatteryPct | Kind::BatteryV | Kind::Other(_) => None,
            // Clean air reads 0 µg/m³ on a low-cost sensor for hours; indoor VOC and quiet
            // nights sit still too.
            Kind::Pm1Ugm3 | Kind::Pm2_5Ugm3 | Kind::Pm10Ugm3 | Kind::VocIndex => Some(24 * HOUR_MS),
            Kind::NoiseDba => Some(12 * HOUR_MS),
            _ => Some(6 * HOUR_MS),
        };
        PersistenceLimits {
            noise_floor: noise_floor_default(kind),
            stuck_span_ms_max,
            stuck_readings_min: 5,
            stuck_readings_max: 16,
            noisy_floor_ratio_min: 1.5,
            repeats_max: 16,
        }
    }
}

/// The current run of one device's series of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Persistence {
    /// Device time of the run's first reading.
    run_start_ms: u64,
    /// Device time of the latest reading, to notice time going backwards.
    last_ms: u64,
    /// Lowest and highest value of the run.
    band_min: f32,
    band_max: f32,
    /// Readings in the run; 0 before the first reading.
    run_readings: u32,
    /// Readings in a row with exactly the same value (bit for bit), and that value.
    #[serde(default)]
    repeats: u32,
    #[serde(default)]
    repeated: f32,
    /// The device's noise when the run and the repeats began: a frozen value makes the
    /// noise estimate decay, and the run is judged by the noise the device had before.
    #[serde(default)]
    run_noise: f32,
    #[serde(default)]
    repeat_noise: f32,
}

impl Persistence {
    /// No reading yet.
    #[must_use]
    pub fn new() -> Persistence {
        Persistence::default()
    }

    /// Readings in the current run (0 before the first reading).
    #[must_use]
    pub fn run_readings(&self) -> u32 {
        self.run_readings
    }

    /// Feeds one reading; a signal when the run has lasted longer than the span. The
    /// strength is 0.5 at the span and 1 at twice the span.
    pub fn observe(
        &mut self,
        limits: &PersistenceLimits,
        time_ms: u64,
        value: f32,
    ) -> Option<Signal> {
        self.observe_with_noise(limits, time_ms, value, 0.0)
    }

    /// [`Persistence::observe`] knowing the device's own noise (standard deviation, in the
    /// kind's unit, as the statistical model learned it): a device that scattered over
    /// several floors and suddenly stays inside one for `stuck_readings_max` readings
    /// fires without waiting for the span (strength 0.5 there, 1 at twice as many).
    pub fn observe_with_noise(
        &mut self,
        limits: &PersistenceLimits,
        time_ms: u64,
        value: f32,
        device_noise: f64,
    ) -> Option<Signal> {
        if !value.is_finite() {
            return None;
        }
        let floor = if limits.noise_floor.is_finite() {
            limits.noise_floor.max(0.0)
        } else {
            0.0
        };
        let band_min = self.band_min.min(value);
        let band_max = self.band_max.max(value);
        let continues = self.run_readings > 0
            && time_ms >= self.last_ms
            && f64::from(band_max) - f64::from(band_min) <= f64::from(floor);
        if continues {
            self.band_min = band_min;
            self.band_max = band_max;
            self.run_readings = self.run_readings.saturating_add(1);
        } else {
            self.run_start_ms = time_ms;
            self.band_min = value;
            self.band_max = value;
            self.run_readings = 1;
            self.run_noise = device_noise as f32;
        }
        self.last_ms = time_ms;
        if self.repeats > 0 && value.to_bits() == self.repeated.to_bits() {
            self.repeats = self.repeats.saturating_add(1);
        } else {
            self.repeats = 1;
            self.repeated = value;
            self.repeat_noise = device_noise as f32;
        }
        let span_ms_max = limits.stuck_span_ms_max?;
        if limits.repeats_max > 0
            && self.repeats >= limits.repeats_max
            && f64::from(floor) > 0.0
            && f64::from(self.repeat_noise) >= f64::from(floor)
        {
            return Some(Signal {
                detector: Detector::Persistence,
                strength: strength_over(f64::from(self.repeats), f64::from(limits.repeats_max)),
            });
        }
        let noisy = f64::from(floor) > 0.0
            && f64::from(self.run_noise)
                >= f64::from(limits.noisy_floor_ratio_min) * f64::from(floor);
        if noisy && limits.stuck_readings_max > 0 && self.run_readings >= limits.stuck_readings_max
        {
            return Some(Signal {
                detector: Detector::Persistence,
                strength: strength_over(
                    f64::from(self.run_readings),
                    f64::from(limits.stuck_readings_max),
                ),
            });
        }
        let run_ms = time_ms.saturating_sub(self.run_start_ms);
        if run_ms > span_ms_max && self.run_readings >= limits.stuck_readings_min {
            Some(Signal {
                detector: Detector::Persistence,
                strength: strength_over(run_ms as f64, span_ms_max as f64),
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: u64 = 60_000;
    const T0_MS: u64 = 1_764_000_000_000;

    fn limits() -> PersistenceLimits {
        PersistenceLimits::default_for(Kind::TemperatureC)
    }

    #[test]
    fn stuck_value_fires_after_the_span_and_not_before() {
        let limits = limits();
        let span_ms = limits.stuck_span_ms_max.unwrap_or(0);
        assert_eq!(span_ms, 6 * HOUR_MS);
        let mut p = Persistence::new();
        let mut first_fire_ms = None;
        for i in 0..(7 * 60) {
            let t = T0_MS + i * MINUTE_MS;
            // Varies, but by less than the 0.01 °C floor.
            let v = if i % 2 == 0 { 21.500 } else { 21.505 };
            if p.observe(&limits, t, v).is_some() && first_fire_ms.is_none() {
                first_fire_ms = Some(t - T0_MS);
            }
        }
        // Readings each minute: the first one strictly past six hours is at 6 h 1 min.
        assert_eq!(first_fire_ms, Some(span_ms + MINUTE_MS));
    }

    #[test]
    fn noisy_series_never_fires() {
        let limits = limits();
        let mut p = Persistence::new();
        let noise = [0.0, 0.03, -0.02, 0.05, -0.04, 0.01, -0.03, 0.02];
        for i in 0..(48 * 60) {
            let v = 21.5 + noise[i % noise.len()];
            assert_eq!(
                p.observe(&limits, T0_MS + i as u64 * MINUTE_MS, v),
                None,
                "{i}"
            );
        }
    }

    #[test]
    fn a_move_beyond_the_floor_restarts_the_run() {
        let limits = limits();
        let mut p = Persistence::new();
        for i in 0..(5 * 60) {
            assert_eq!(p.observe(&limits, T0_MS + i * MINUTE_MS, 21.5), None);
        }
        // A real change, then stuck again: the clock starts over.
        for i in (5 * 60)..(10 * 60) {
            assert_eq!(p.observe(&limits, T0_MS + i * MINUTE_MS, 22.0), None, "{i}");
        }
    }

    #[test]
    fn time_going_backwards_restarts_the_run() {
        let limits = limits();
        let mut p = Persistence::new();
        for i in 0..(5 * 60) {
            p.observe(&limits, T0_MS + i * MINUTE_MS, 21.5);
        }
        assert_eq!(p.observe(&limits, T0_MS, 21.5), None);
        assert_eq!(p.observe(&limits, T0_MS + 2 * HOUR_MS, 21.5), None);
    }

    #[test]
    fn few_readings_over_a_long_gap_do_not_fire() {
        let limits = limits();
        let mut p = Persistence::new();
        for i in 0..4 {
            assert_eq!(p.observe(&limits, T0_MS + i * 4 * HOUR_MS, 21.5), None);
        }
    }

    #[test]
    fn battery_kinds_never_fire() {
        let limits = PersistenceLimits::default_for(Kind::BatteryPct);
        let mut p = Persistence::new();
        for i in 0..(72 * 60) {
            assert_eq!(p.observe(&limits, T0_MS + i * MINUTE_MS, 100.0), None);
        }
    }

    #[test]
    fn a_noisy_device_that_freezes_fires_after_stuck_readings_max() {
        let limits = limits();
        let floor = f64::from(limits.noise_floor);
        let mut p = Persistence::new();
        // Scattering over several floors: no run lasts.
        for i in 0..100u64 {
            let value = 20.0 + 0.05 * ((i * 7) % 5) as f32;
            assert_eq!(
                p.observe_with_noise(&limits, T0_MS + i * MINUTE_MS, value, 5.0 * floor),
                None
            );
        }
        // Frozen: fires at the 15th reading of the run, long before the 6 h span.
        let fired: Vec<u64> = (100..130u64)
            .filter(|i| {
                p.observe_with_noise(&limits, T0_MS + i * MINUTE_MS, 21.0, 5.0 * floor)
                    .is_some()
            })
            .collect();
        assert_eq!(fired.first(), Some(&115));
        // A device whose own noise is below the floor is judged by the span only.
        let mut quiet = Persistence::new();
        for i in 0..60u64 {
            assert_eq!(
                quiet.observe_with_noise(&limits, T0_MS + i * MINUTE_MS, 21.0, 0.5 * floor),
                None
            );
        }
    }

    #[test]
    fn the_same_value_sixteen_times_from_a_device_with_noise_fires() {
        let limits = limits();
        let floor = f64::from(limits.noise_floor);
        let mut p = Persistence::new();
        for i in 0..50u64 {
            let value = 20.0 + 0.01 * ((i * 7) % 5) as f32;
            assert_eq!(
                p.observe_with_noise(&limits, T0_MS + i * MINUTE_MS, value, 1.2 * floor),
                None
            );
        }
        let fired: Vec<u64> = (50..80u64)
            .filter(|i| {
                p.observe_with_noise(&limits, T0_MS + i * MINUTE_MS, 20.02, 1.2 * floor)
                    .is_some()
            })
            .collect();
        assert_eq!(fired.first(), Some(&65));
        // A device whose values honestly repeat (its noise below the floor): span only.
        let mut coarse = Persistence::new();
        for i in 0..60u64 {
            assert_eq!(
                coarse.observe_with_noise(&limits, T0_MS + i * MINUTE_MS, 20.0, 0.2 * floor),
                None
            );
        }
    }
}
