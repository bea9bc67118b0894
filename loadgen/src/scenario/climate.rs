//! The honest sensor: a reading as a pure function of (device, kind, device time).
//!
//! ```text
//! value = site level + daily cycle + weather + micro-climate + calibration offset + noise
//! ```
//! quantised to the sensor's resolution (humidity clamped to 0..=100 %, as sensors do).
//! - **Site** (a registry `location`, inside a `region`): a level and a daily amplitude per
//!   kind, and the phase of local solar time. Devices of one location share them.
//! - **Daily cycle**: a cosine over `day_ms` of device time (temperature peaks mid-afternoon,
//!   humidity is its mirror, CO2 peaks before dawn when the boundary layer is shallow).
//!   The day is compressed (`--day-s`, default 600 s) because device time must stay near
//!   real time; every rate below "per hour" means per simulated hour, `day_ms / 24`.
//! - **Weather**: smooth noise shared by a region (knots one day apart) plus smooth noise
//!   shared by a location (knots four hours apart): devices of a location move together.
//! - **Micro-climate**: a small smooth wander of the device's own (sun, a wall, a vent),
//!   so neighbours are close but not identical.
//! - **Calibration offset**: constant per device and kind.
//! - **Noise**: normal, with a spread of the kind's noise floor times a per-device factor in
//!   [1, 1.5], hashed from (device, kind, time) so a reading is reproducible.
//!
//! Only the three kinds loadgen sends are modelled. The noise floors and resolutions mirror
//! `shards/src/fraud/persistence.rs::noise_floor_default` and
//! `shards/src/fraud/smooth.rs::digit_resolution_default` (loadgen does not depend on the
//! shards crate): a real sensor reports at its resolution and jitters at its floor.

use super::draw::{gauss, hash, hash_str, smooth_noise, Draw};
use ingestd_codec::envelope::{Kind, Reading};

/// The kinds a scenario device sends, in the order of every per-kind array here.
pub const KINDS: [Kind; 3] = [Kind::Co2Ppm, Kind::TemperatureC, Kind::HumidityRhPct];

/// Index of CO2 in [`KINDS`].
pub const CO2: usize = 0;
/// Index of temperature in [`KINDS`].
pub const TEMPERATURE: usize = 1;
/// Index of humidity in [`KINDS`].
pub const HUMIDITY: usize = 2;

/// The sensor's noise floor per kind (ppm, °C, % RH), as the fraud detectors assume it.
pub const NOISE_FLOOR: [f64; 3] = [1.0, 0.01, 0.05];
/// The resolution a device reports at, per kind.
pub const RESOLUTION: [f64; 3] = [1.0, 0.01, 0.01];
/// A typical natural variation per kind (ppm, °C, % RH): the unit in which fraud
/// magnitudes are drawn (`scenario/fraud.rs`).
pub const SCALE: [f64; 3] = [20.0, 1.0, 4.0];
/// A typical level per kind, for drifts given in percent of it.
pub const LEVEL: [f64; 3] = [450.0, 20.0, 60.0];

/// Spread of the regional and local weather per kind.
const WEATHER_SIGMA: [f64; 3] = [15.0, 2.0, 6.0];
/// Spread of a device's micro-climate per kind.
const MICRO_SIGMA: [f64; 3] = [3.0, 0.2, 0.8];
/// Spread of the calibration offsets per kind.
const OFFSET_SIGMA: [f64; 3] = [8.0, 0.2, 1.5];
/// Daily peak (fraction of the day, local solar time) per kind; humidity is the mirror of
/// temperature.
const PEAK_PHASE: [f64; 3] = [0.21, 0.625, 0.625];

/// The rounded value a device reports for kind index `kind`.
#[must_use]
pub fn quantise(kind: usize, value: f64) -> f64 {
    let res = RESOLUTION[kind];
    let q = (value / res).round() * res;
    if kind == HUMIDITY {
        q.clamp(0.0, 100.0)
    } else {
        q
    }
}

/// The readings of one message from three values.
#[must_use]
pub fn readings(values: [f64; 3]) -> [Reading; 3] {
    [
        Reading::new(KINDS[CO2], values[CO2] as f32),
        Reading::new(KINDS[TEMPERATURE], values[TEMPERATURE] as f32),
        Reading::new(KINDS[HUMIDITY], values[HUMIDITY] as f32),
    ]
}

/// One location's climate.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    /// Hash of the region name: its weather.
    region_key: u64,
    /// Hash of the location name (within the seed): its weather.
    location_key: u64,
    /// Local solar time offset, ms.
    phase_ms: u64,
    /// Mean level per kind.
    level: [f64; 3],
    /// Daily amplitude per kind.
    amplitude: [f64; 3],
    /// Length of a simulated day, ms of device time.
    day_ms: u64,
}

impl Site {
    /// The site of `location` in `region`, for a run seeded by `seed`.
    #[must_use]
    pub fn new(seed: u64, location: &str, region: &str, day_ms: u64) -> Site {
        let day_ms = day_ms.max(1);
        let region_key = hash(&[seed, hash_str(region), 1]);
        let location_key = hash(&[seed, hash_str(region), hash_str(location), 2]);
        let mut r = Draw::new(region_key);
        let region_temp = r.uniform(5.0, 25.0);
        let region_rh = r.uniform(50.0, 68.0);
        let region_phase = r.uniform(0.0, 1.0);
        let mut l = Draw::new(location_key);
        let phase = (region_phase + l.uniform(-0.02, 0.02)).rem_euclid(1.0);
        Site {
            region_key,
            location_key,
            phase_ms: (phase * day_ms as f64) as u64,
            level: [
                // Background CO2 plus local sources (traffic, vegetation, buildings).
                420.0 + l.uniform(0.0, 80.0),
                region_temp + l.uniform(-2.0, 2.0),
                region_rh + l.uniform(-5.0, 5.0),
            ],
            amplitude: [
                l.uniform(10.0, 40.0),
                l.uniform(2.0, 6.0),
                l.uniform(5.0, 12.0),
            ],
            day_ms,
        }
    }

    /// The simulated day length, ms.
    #[must_use]
    pub fn day_ms(&self) -> u64 {
        self.day_ms
    }

    /// Level + daily cycle of kind index `kind` at device time `t_ms` (no weather).
    #[must_use]
    pub fn cycle(&self, kind: usize, t_ms: u64, amplitude_factor: f64) -> f64 {
        let phase = (t_ms.wrapping_add(self.phase_ms) % self.day_ms) as f64 / self.day_ms as f64;
        let wave = (std::f64::consts::TAU * (phase - PEAK_PHASE[kind])).cos();
        let sign = if kind == HUMIDITY { -1.0 } else { 1.0 };
        self.level[kind] + sign * amplitude_factor * self.amplitude[kind] * wave
    }

    /// Regional and local weather of kind index `kind` at `t_ms`.
    #[must_use]
    pub fn weather(&self, kind: usize, t_ms: u64) -> f64 {
        let k = kind as u64;
        let regional = smooth_noise(hash(&[self.region_key, k]), t_ms, self.day_ms);
        let local = smooth_noise(hash(&[self.location_key, k]), t_ms, self.day_ms / 6);
        WEATHER_SIGMA[kind] * (0.8 * regional + 0.6 * local)
    }
}

/// One physical sensor at a site.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensor {
    pub site: Site,
    /// Hash of the device id (within the seed): its noise and micro-climate.
    key: u64,
    /// Calibration offset per kind.
    offset: [f64; 3],
    /// Noise spread as a multiple of the floor.
    noise_factor: f64,
}

impl Sensor {
    /// The sensor named `unit` (a device id, or a device id with a suffix for a second
    /// unit) at `site`.
    #[must_use]
    pub fn new(seed: u64, unit: &str, site: Site) -> Sensor {
        let key = hash(&[seed, hash_str(unit), 3]);
        let mut d = Draw::new(key);
        let offset = [
            (d.gauss() * OFFSET_SIGMA[0]).clamp(-25.0, 25.0),
            (d.gauss() * OFFSET_SIGMA[1]).clamp(-0.6, 0.6),
            (d.gauss() * OFFSET_SIGMA[2]).clamp(-4.5, 4.5),
        ];
        Sensor {
            site,
            key,
            offset,
            noise_factor: d.uniform(1.0, 1.5),
        }
    }

    /// The noise spread of kind index `kind`, in the kind's unit.
    #[must_use]
    pub fn noise_sigma(&self, kind: usize) -> f64 {
        NOISE_FLOOR[kind] * self.noise_factor
    }

    /// The air at the sensor (no noise, not quantised).
    #[must_use]
    pub fn truth(&self, kind: usize, t_ms: u64) -> f64 {
        let micro = MICRO_SIGMA[kind]
            * smooth_noise(
                hash(&[self.key, kind as u64, 4]),
                t_ms,
                self.site.day_ms / 12,
            );
        self.site.cycle(kind, t_ms, 1.0) + self.site.weather(kind, t_ms) + micro
    }

    /// What the sensor reports for kind index `kind` at device time `t_ms`.
    #[must_use]
    pub fn value(&self, kind: usize, t_ms: u64) -> f64 {
        let noise = gauss(hash(&[self.key, kind as u64, t_ms])) * self.noise_sigma(kind);
        quantise(kind, self.truth(kind, t_ms) + self.offset[kind] + noise)
    }

    /// All three kinds at `t_ms`.
    #[must_use]
    pub fn values(&self, t_ms: u64) -> [f64; 3] {
        [
            self.value(CO2, t_ms),
            self.value(TEMPERATURE, t_ms),
            self.value(HUMIDITY, t_ms),
        ]
    }

    /// The calibration offset of kind index `kind`.
    #[must_use]
    pub fn offset(&self, kind: usize) -> f64 {
        self.offset[kind]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 600_000;
    const T0: u64 = 1_764_201_600_000;

    fn sensor(seed: u64, id: &str, location: &str) -> Sensor {
        Sensor::new(seed, id, Site::new(seed, location, "region-000", DAY_MS))
    }

    #[test]
    fn values_are_pure_functions() {
        let a = sensor(1, "dev-000001", "loc-00000");
        let b = sensor(1, "dev-000001", "loc-00000");
        for t in (T0..T0 + 100_000).step_by(997) {
            assert_eq!(a.values(t), b.values(t));
        }
        let other_seed = sensor(2, "dev-000001", "loc-00000");
        assert_ne!(a.values(T0), other_seed.values(T0));
    }

    /// Inside the physical bounds of the detectors (with a wide margin) over many devices,
    /// sites and two simulated days.
    #[test]
    fn normal_values_stay_plausible() {
        for d in 0..200u64 {
            let s = sensor(9, &format!("dev-{d:06}"), &format!("loc-{:05}", d / 10));
            for t in (T0..T0 + 2 * DAY_MS).step_by(3_001) {
                let [co2, temp, rh] = s.values(t);
                assert!((280.0..=800.0).contains(&co2), "co2 {co2}");
                assert!((-20.0..=50.0).contains(&temp), "temperature {temp}");
                assert!((0.0..=100.0).contains(&rh), "humidity {rh}");
            }
        }
    }

    /// The spread of second differences of readings 1 s apart is sqrt(6) × the noise (the
    /// cycle and weather barely move in a second): the noise sits at 1 to 1.5 floors, plus
    /// the rounding.
    #[test]
    fn noise_sits_at_the_floor() {
        for d in 0..20u64 {
            let s = sensor(3, &format!("dev-{d:06}"), "loc-00001");
            for kind in 0..3 {
                let xs: Vec<f64> = (0..3000u64).map(|i| s.value(kind, T0 + i * 1000)).collect();
                let d2: Vec<f64> = xs.windows(3).map(|w| w[2] - 2.0 * w[1] + w[0]).collect();
                let var = d2.iter().map(|x| x * x).sum::<f64>() / d2.len() as f64;
                let sigma = (var / 6.0).sqrt();
                let floor = NOISE_FLOOR[kind];
                assert!(
                    sigma >= 0.9 * floor && sigma <= 1.8 * floor,
                    "kind {kind}: noise {sigma} for a floor of {floor}"
                );
                // Reported at the resolution.
                for x in &xs {
                    let q = x / RESOLUTION[kind];
                    assert!((q - q.round()).abs() < 1e-6, "{x}");
                }
            }
        }
    }

    /// Devices of one location move together: their hourly means correlate far more than
    /// those of devices at another location in another region.
    #[test]
    fn devices_of_a_location_are_correlated() {
        let hour = DAY_MS / 24;
        let series = |s: &Sensor| -> Vec<f64> {
            (0..96u64)
                .map(|h| {
                    (0..10u64)
                        .map(|i| s.value(TEMPERATURE, T0 + h * hour + i * 1000))
                        .sum::<f64>()
                        / 10.0
                })
                .collect()
        };
        let corr = |a: &[f64], b: &[f64]| {
            let ma = a.iter().sum::<f64>() / a.len() as f64;
            let mb = b.iter().sum::<f64>() / b.len() as f64;
            let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
            let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
            let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
            cov / (va * vb).sqrt()
        };
        let a = series(&sensor(4, "dev-000000", "loc-00000"));
        let b = series(&sensor(4, "dev-000001", "loc-00000"));
        let far = Sensor::new(
            4,
            "dev-000900",
            Site::new(4, "loc-00090", "region-009", DAY_MS),
        );
        let c = series(&far);
        let near = corr(&a, &b);
        assert!(near > 0.95, "same location: {near}");
        assert!(corr(&a, &c) < near, "{} vs {near}", corr(&a, &c));
    }
}
