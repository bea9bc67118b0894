//! Physical bounds per reading kind (docs/PROTOCOL.md section 6 lists the kinds and units).
//!
//! A value outside its kind's range cannot be a true measurement of air, whatever the
//! device: the detector is stateless and applies from a device's first reading, warm-up
//! or not. The defaults are wide on purpose (records and sensor ranges plus a margin), so
//! an honest device never trips them; the statistical detectors catch the subtle cases.
//! Kinds without a registered name have no bounds, except that a non-finite value is out
//! of bounds for every kind.

use super::{strength_over, Detector, Signal};
use ingestd_codec::envelope::Kind;

/// The inclusive range of a kind, in the kind's unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// Lowest possible value.
    pub value_min: f32,
    /// Highest possible value.
    pub value_max: f32,
}

impl Bounds {
    /// The default range of a registered kind; `None` for unregistered codes.
    #[must_use]
    pub fn default_for(kind: Kind) -> Option<Bounds> {
        let (value_min, value_max) = match kind {
            // Open air has not been below ~280 ppm for centuries; NDIR sensors top out at
            // 10 000 to 40 000 ppm.
            Kind::Co2Ppm => (250.0, 40_000.0),
            // Air records: -89.2 °C (Vostok), 56.7 °C (Death Valley); a housing in the sun
            // reads a few degrees above the air.
            Kind::TemperatureC => (-90.0, 70.0),
            Kind::HumidityRhPct | Kind::BatteryPct => (0.0, 100.0),
            // Optical PM sensors saturate near 1 000 µg/m³; dust storms go beyond it.
            Kind::Pm1Ugm3 | Kind::Pm2_5Ugm3 | Kind::Pm10Ugm3 => (0.0, 2_000.0),
            // From a single Li-ion cell to a 24 V lead-acid pack on charge.
            Kind::BatteryV => (0.0, 30.0),
            // Station pressure: above 8 000 m altitude is ~350 hPa; the sea-level record
            // is 1 084.8 hPa and the Dead Sea shore sits a little higher.
            Kind::PressureHpa => (300.0, 1_100.0),
            // Sensirion's VOC index scale.
            Kind::VocIndex => (1.0, 500.0),
            // Microphone-based sensors: 0 to the threshold of pain and beyond.
            Kind::NoiseDba => (0.0, 140.0),
            Kind::Other(_) => return None,
        };
        Some(Bounds {
            value_min,
            value_max,
        })
    }

    /// The detector: `None` inside the range, a signal outside it. The strength is 0.5 at
    /// the edge and grows to 1 at one range width beyond it; a non-finite value is 1.
    #[must_use]
    pub fn check(&self, value: f32) -> Option<Signal> {
        if !value.is_finite() {
            return Some(Signal {
                detector: Detector::Bounds,
                strength: 1.0,
            });
        }
        let (min, max, v) = (
            f64::from(self.value_min),
            f64::from(self.value_max),
            f64::from(value),
        );
        let excess = if v < min {
            min - v
        } else if v > max {
            v - max
        } else {
            return None;
        };
        let width = (max - min).max(f64::MIN_POSITIVE);
        Some(Signal {
            detector: Detector::Bounds,
            // 0.5 + excess/(2 width): the shared shape with the limit at "width".
            strength: (0.5 + strength_over(excess, width)).min(1.0),
        })
    }
}

/// Bounds check for any kind: registered kinds use their defaults, others only refuse
/// non-finite values.
#[must_use]
pub fn check_default(kind: Kind, value: f32) -> Option<Signal> {
    match Bounds::default_for(kind) {
        Some(bounds) => bounds.check(value),
        None if !value.is_finite() => Some(Signal {
            detector: Detector::Bounds,
            strength: 1.0,
        }),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fraud::REGISTERED_KINDS;

    #[test]
    fn every_registered_kind_has_sane_bounds() {
        for kind in REGISTERED_KINDS {
            let b = Bounds::default_for(kind);
            assert!(b.is_some(), "{kind:?} has no bounds");
            if let Some(b) = b {
                assert!(b.value_min < b.value_max, "{kind:?}: {b:?}");
            }
        }
        assert_eq!(Bounds::default_for(Kind::Other(0x8001)), None);
    }

    #[test]
    fn ordinary_values_pass() {
        for (kind, value) in [
            (Kind::Co2Ppm, 421.0),
            (Kind::TemperatureC, -12.5),
            (Kind::HumidityRhPct, 100.0),
            (Kind::Pm2_5Ugm3, 0.0),
            (Kind::BatteryV, 3.7),
            (Kind::PressureHpa, 1013.25),
            (Kind::PressureHpa, 650.0),
            (Kind::NoiseDba, 55.0),
        ] {
            assert_eq!(check_default(kind, value), None, "{kind:?} {value}");
        }
    }

    #[test]
    fn out_of_bounds_values_fire() {
        for (kind, value) in [
            (Kind::HumidityRhPct, 101.0),
            (Kind::HumidityRhPct, -0.5),
            (Kind::Co2Ppm, 100.0),
            (Kind::TemperatureC, 80.0),
            (Kind::PressureHpa, 1200.0),
            (Kind::BatteryPct, 140.0),
        ] {
            let signal = check_default(kind, value);
            assert!(
                matches!(signal, Some(s) if s.detector == Detector::Bounds && s.strength >= 0.5),
                "{kind:?} {value}: {signal:?}"
            );
        }
    }

    #[test]
    fn strength_grows_with_the_excess() {
        let b = Bounds {
            value_min: 0.0,
            value_max: 100.0,
        };
        let s = |v: f32| b.check(v).map_or(0.0, |s| s.strength);
        assert!(s(100.5) >= 0.5);
        assert!(s(150.0) > s(100.5));
        assert_eq!(s(1000.0), 1.0);
    }

    #[test]
    fn non_finite_values_fire_for_every_kind() {
        for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let signal = check_default(Kind::Other(0x9000), value);
            assert_eq!(signal.map(|s| s.strength), Some(1.0));
            assert!(check_default(Kind::TemperatureC, value).is_some());
        }
    }
}
