//! Rate of change: |Δ value| / Δ device time against a per-kind maximum.
//!
//! Air does not warm by 10 °C in a second; a jump that fast is a tampered sensor, a swapped
//! device or a fabricated number. The step is first reduced by the kind's noise floor, so
//! two readings a few ms apart that differ by sensor jitter do not make an enormous rate.
//! Device time that stands still or goes backwards gives no rate (the timing detector
//! judges the clock); the reading still becomes the reference for the next one.

use super::persistence::noise_floor_default;
use super::{strength_over, Detector, Signal};
use ingestd_codec::envelope::Kind;

/// The rate limit of one kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Highest honest rate, in the kind's unit per second; `None` disables the detector.
    pub rate_per_s_max: Option<f32>,
    /// A step up to this is never counted (sensor jitter), in the kind's unit.
    pub step_tolerance: f32,
    /// Nor a step up to this many of the device's own noise (standard deviations): the
    /// difference of two honest readings exceeds 6 sigma about once in 10^5 (1.4 sigma of
    /// difference noise per reading noise).
    pub noise_sigmas: f32,
}

impl RateLimit {
    /// Defaults per kind. Generous: a breath on a CO2 sensor, a smoke plume on a PM
    /// sensor or a door opening next to a thermometer must not fire.
    #[must_use]
    pub fn default_for(kind: Kind) -> RateLimit {
        let rate_per_s_max = match kind {
            Kind::Co2Ppm => Some(200.0),
            Kind::TemperatureC => Some(1.0),
            Kind::HumidityRhPct => Some(2.0),
            Kind::Pm1Ugm3 | Kind::Pm2_5Ugm3 | Kind::Pm10Ugm3 => Some(100.0),
            Kind::BatteryPct => Some(0.5),
            // A load switching on drops a cell's voltage by a few hundred mV at once.
            Kind::BatteryV => Some(1.0),
            // About 4 m of altitude per second: a lift, not weather.
            Kind::PressureHpa => Some(0.5),
            Kind::VocIndex => Some(50.0),
            // Sound changes instantly; no honest limit.
            Kind::NoiseDba | Kind::Other(_) => None,
        };
        RateLimit {
            rate_per_s_max,
            step_tolerance: noise_floor_default(kind),
            noise_sigmas: 6.0,
        }
    }
}

/// The previous reading of one device's series of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    /// Device time and value of the previous finite reading, if any.
    previous: Option<(u64, f32)>,
}

impl Rate {
    /// No reading yet.
    #[must_use]
    pub fn new() -> Rate {
        Rate::default()
    }

    /// Feeds one reading; a signal when the rate from the previous one exceeds the limit.
    /// The strength is 0.5 at the limit and 1 at twice the limit.
    pub fn observe(&mut self, limit: &RateLimit, time_ms: u64, value: f32) -> Option<Signal> {
        self.observe_with_noise(limit, time_ms, value, 0.0)
    }

    /// [`Rate::observe`] knowing the device's own noise (standard deviation in the kind's
    /// unit): the step is reduced by `noise_sigmas` of it as well, so a device that
    /// publishes many times a second does not turn its jitter over a few ms into a rate.
    pub fn observe_with_noise(
        &mut self,
        limit: &RateLimit,
        time_ms: u64,
        value: f32,
        device_noise: f64,
    ) -> Option<Signal> {
        if !value.is_finite() {
            return None;
        }
        let previous = self.previous.replace((time_ms, value));
        let (previous_ms, previous_value) = previous?;
        let rate_per_s_max = f64::from(limit.rate_per_s_max?);
        if time_ms <= previous_ms {
            return None;
        }
        let elapsed_s = (time_ms - previous_ms) as f64 / 1000.0;
        let floor = if limit.step_tolerance.is_finite() {
            f64::from(limit.step_tolerance).max(0.0)
        } else {
            0.0
        };
        let sigmas = if limit.noise_sigmas.is_finite() {
            f64::from(limit.noise_sigmas).max(0.0)
        } else {
            0.0
        };
        let noise = if device_noise.is_finite() {
            device_noise.max(0.0)
        } else {
            0.0
        };
        let tolerance = floor.max(sigmas * noise);
        let step = ((f64::from(value) - f64::from(previous_value)).abs() - tolerance).max(0.0);
        let rate_per_s = step / elapsed_s;
        if rate_per_s > rate_per_s_max {
            Some(Signal {
                detector: Detector::Rate,
                strength: strength_over(rate_per_s, rate_per_s_max),
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0_MS: u64 = 1_764_000_000_000;

    #[test]
    fn ordinary_changes_pass() {
        let limit = RateLimit::default_for(Kind::TemperatureC);
        let mut r = Rate::new();
        let series = [20.0, 20.1, 20.05, 20.4, 21.0, 21.2, 20.9, 20.95];
        for (i, v) in series.into_iter().enumerate() {
            assert_eq!(r.observe(&limit, T0_MS + i as u64 * 60_000, v), None, "{i}");
        }
    }

    #[test]
    fn a_jump_faster_than_the_rate_fires() {
        let limit = RateLimit::default_for(Kind::TemperatureC);
        let mut r = Rate::new();
        assert_eq!(r.observe(&limit, T0_MS, 20.0), None);
        // 15 °C in 10 s: 1.5 °C/s against 1 °C/s.
        let signal = r.observe(&limit, T0_MS + 10_000, 35.0);
        assert!(
            matches!(signal, Some(s) if s.detector == Detector::Rate),
            "{signal:?}"
        );
        // The same step over ten minutes is slow enough.
        let mut r = Rate::new();
        r.observe(&limit, T0_MS, 20.0);
        assert_eq!(r.observe(&limit, T0_MS + 600_000, 35.0), None);
    }

    #[test]
    fn jitter_a_few_ms_apart_is_not_a_rate() {
        let limit = RateLimit::default_for(Kind::PressureHpa);
        let mut r = Rate::new();
        r.observe(&limit, T0_MS, 1013.25);
        assert_eq!(r.observe(&limit, T0_MS + 1, 1013.255), None);
    }

    #[test]
    fn strength_grows_with_the_rate() {
        let limit = RateLimit::default_for(Kind::TemperatureC);
        let strength = |step: f32| {
            let mut r = Rate::new();
            r.observe(&limit, T0_MS, 20.0);
            r.observe(&limit, T0_MS + 1000, 20.0 + step)
                .map_or(0.0, |s| s.strength)
        };
        assert!(strength(1.5) > 0.5);
        assert!(strength(1.9) > strength(1.5));
        assert_eq!(strength(10.0), 1.0);
    }

    #[test]
    fn time_standing_still_or_going_back_gives_no_rate() {
        let limit = RateLimit::default_for(Kind::TemperatureC);
        let mut r = Rate::new();
        r.observe(&limit, T0_MS, 20.0);
        assert_eq!(r.observe(&limit, T0_MS, 40.0), None);
        assert_eq!(r.observe(&limit, T0_MS - 5000, 60.0), None);
        // The latest reading is the reference: 60.0 at T0 - 5 s.
        assert!(r.observe(&limit, T0_MS - 4000, 20.0).is_some());
    }

    #[test]
    fn kinds_without_a_limit_never_fire() {
        let limit = RateLimit::default_for(Kind::NoiseDba);
        let mut r = Rate::new();
        r.observe(&limit, T0_MS, 30.0);
        assert_eq!(r.observe(&limit, T0_MS + 1, 130.0), None);
    }

    #[test]
    fn jitter_over_a_few_ms_is_not_a_rate_for_a_noisy_device() {
        let limit = RateLimit::default_for(Kind::TemperatureC);
        let mut r = Rate::new();
        // 0.05 °C of noise, a reading every 60 ms: steps of 0.15 °C are 2.5 °C/s raw.
        let series = [20.0, 20.15, 20.0, 20.12, 19.98, 20.1];
        for (i, v) in series.into_iter().enumerate() {
            assert_eq!(
                r.observe_with_noise(&limit, T0_MS + i as u64 * 60, v, 0.05),
                None,
                "{i}"
            );
        }
        // Far beyond its noise: fires all the same.
        assert!(r
            .observe_with_noise(&limit, T0_MS + 6 * 60, 21.5, 0.05)
            .is_some());
        // The plain rule (noise unknown) fires on the jitter.
        let mut plain = Rate::new();
        let fired = series
            .into_iter()
            .enumerate()
            .filter(|(i, v)| plain.observe(&limit, T0_MS + *i as u64 * 60, *v).is_some())
            .count();
        assert!(fired > 0);
    }
}
