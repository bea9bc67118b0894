//! Cross-channel physics: readings of one envelope that cannot all be true together.
//!
//! Each reading may be plausible on its own (the bounds detector judges that); these rules
//! look at pairs measured at the same instant by one device:
//! - relative humidity outside 0-100 % (supersaturated air condenses at once);
//! - PM1 <= PM2.5 <= PM10: each is the mass of particles below a size, so a smaller cut
//!   cannot weigh more than a larger one (a slack covers the sensors' own rounding);
//! - battery percent against battery voltage: full with a voltage below a floor, or empty
//!   with a voltage above a ceiling. Chemistry differs by fleet (bounds allow up to a 24 V
//!   pack), so the defaults are conservative: a full battery below 3.0 V (below a single
//!   Li-ion cell or two fresh AA cells) fires; the empty rule is off until a fleet sets it.
//!
//! Stateless, so nothing to warm up; non-finite values are skipped (bounds fires on them).
//! The strength is 0.5 just past the slack and 1 at one `margin` beyond it.

use super::{Detector, Signal};
use ingestd_codec::envelope::{Kind, Readings};

/// Limits of the physics rules, in the kinds' units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhysicsLimits {
    /// Humidity may exceed 0-100 % by this much (sensor tolerance) before firing.
    pub humidity_slack_pct: f32,
    /// A smaller PM cut may exceed a larger one by this absolute amount.
    pub pm_order_slack_ugm3: f32,
    /// ... plus this share of the larger cut's value (their errors scale with the level).
    pub pm_order_slack_ratio: f32,
    /// A battery at or above this percent counts as full.
    pub battery_full_pct_min: f32,
    /// A full battery below this voltage fires; `None` disables the rule.
    pub battery_full_v_min: Option<f32>,
    /// A battery at or below this percent counts as empty.
    pub battery_empty_pct_max: f32,
    /// An empty battery above this voltage fires; `None` disables the rule.
    pub battery_empty_v_max: Option<f32>,
}

impl Default for PhysicsLimits {
    fn default() -> Self {
        PhysicsLimits {
            humidity_slack_pct: 0.0,
            pm_order_slack_ugm3: 1.0,
            pm_order_slack_ratio: 0.05,
            battery_full_pct_min: 99.5,
            battery_full_v_min: Some(3.0),
            battery_empty_pct_max: 0.5,
            battery_empty_v_max: None,
        }
    }
}

/// Which rule a violation broke, for explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhysicsRule {
    /// Relative humidity below 0 % or above 100 %.
    HumidityRange,
    /// PM1 above PM2.5, PM1 above PM10 or PM2.5 above PM10.
    PmOrder,
    /// A full battery at a voltage below the floor.
    BatteryFullLowVoltage,
    /// An empty battery at a voltage above the ceiling.
    BatteryEmptyHighVoltage,
}

/// The strongest violation of one envelope.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhysicsFinding {
    /// The rule with the strongest violation (the first one on a tie).
    pub rule: PhysicsRule,
    /// The [`Detector::Physics`] signal.
    pub signal: Signal,
}

// The distance past the slack at which the strength reaches 1, per rule, in the kinds'
// units: a clear violation, not a rounding artefact.
const HUMIDITY_MARGIN_PCT: f64 = 5.0;
const PM_MARGIN_UGM3: f64 = 10.0;
const BATTERY_MARGIN_V: f64 = 0.5;

/// 0.5 just past the limit, 1 at one margin beyond it; `None` when not past it.
fn strength_past(excess: f64, margin: f64) -> Option<f32> {
    if excess.is_nan() || excess <= 0.0 {
        return None;
    }
    Some((0.5 + 0.5 * (excess / margin)).clamp(0.5, 1.0) as f32)
}

/// A finite limit, or the fallback for a misconfigured one.
fn finite_or(x: f32, fallback: f32) -> f64 {
    f64::from(if x.is_finite() { x } else { fallback })
}

/// The first finite value of a kind in the readings.
fn value_of(readings: &[(Kind, f32)], kind: Kind) -> Option<f64> {
    readings
        .iter()
        .find(|(k, v)| k.code() == kind.code() && v.is_finite())
        .map(|(_, v)| f64::from(*v))
}

/// Checks one envelope's readings; the strongest violation, if any.
#[must_use]
pub fn check(limits: &PhysicsLimits, readings: &[(Kind, f32)]) -> Option<PhysicsFinding> {
    let mut best: Option<PhysicsFinding> = None;
    let mut consider = |rule: PhysicsRule, strength: Option<f32>| {
        if let Some(strength) = strength {
            if best.is_none_or(|b| strength > b.signal.strength) {
                best = Some(PhysicsFinding {
                    rule,
                    signal: Signal {
                        detector: Detector::Physics,
                        strength,
                    },
                });
            }
        }
    };

    if let Some(rh) = value_of(readings, Kind::HumidityRhPct) {
        let slack = finite_or(limits.humidity_slack_pct, 0.0).max(0.0);
        let excess = (rh - 100.0 - slack).max(-rh - slack);
        consider(
            PhysicsRule::HumidityRange,
            strength_past(excess, HUMIDITY_MARGIN_PCT),
        );
    }

    let pm = [Kind::Pm1Ugm3, Kind::Pm2_5Ugm3, Kind::Pm10Ugm3].map(|k| value_of(readings, k));
    let slack_abs = finite_or(limits.pm_order_slack_ugm3, 0.0).max(0.0);
    let slack_ratio = finite_or(limits.pm_order_slack_ratio, 0.0).max(0.0);
    for (small, large) in [(0, 1), (0, 2), (1, 2)] {
        if let (Some(small), Some(large)) = (pm[small], pm[large]) {
            let excess = small - large - slack_abs - slack_ratio * large.abs();
            consider(PhysicsRule::PmOrder, strength_past(excess, PM_MARGIN_UGM3));
        }
    }

    if let (Some(pct), Some(volts)) = (
        value_of(readings, Kind::BatteryPct),
        value_of(readings, Kind::BatteryV),
    ) {
        if let Some(v_min) = limits.battery_full_v_min.filter(|v| v.is_finite()) {
            if pct >= finite_or(limits.battery_full_pct_min, 100.0) {
                consider(
                    PhysicsRule::BatteryFullLowVoltage,
                    strength_past(f64::from(v_min) - volts, BATTERY_MARGIN_V),
                );
            }
        }
        if let Some(v_max) = limits.battery_empty_v_max.filter(|v| v.is_finite()) {
            if pct <= finite_or(limits.battery_empty_pct_max, 0.0) {
                consider(
                    PhysicsRule::BatteryEmptyHighVoltage,
                    strength_past(volts - f64::from(v_max), BATTERY_MARGIN_V),
                );
            }
        }
    }
    best
}

/// [`check`] on a decoded envelope's readings (unknown codes take part as `Other` kinds
/// and match no rule). Copies at most `MAX_READINGS` pairs to the stack.
#[must_use]
pub fn check_readings(limits: &PhysicsLimits, readings: &Readings) -> Option<PhysicsFinding> {
    check_slice(limits, readings.as_slice())
}

/// [`check_readings`] on a slice of readings.
#[must_use]
pub fn check_slice(
    limits: &PhysicsLimits,
    readings: &[ingestd_codec::envelope::Reading],
) -> Option<PhysicsFinding> {
    let mut pairs = [(Kind::Other(0), 0.0f32); ingestd_codec::envelope::MAX_READINGS];
    let mut len = 0;
    for (slot, r) in pairs.iter_mut().zip(readings) {
        if let Some(kind) = Kind::from_code(r.kind) {
            *slot = (kind, r.value);
            len += 1;
        }
    }
    check(limits, &pairs[..len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingestd_codec::envelope::Reading;
    use proptest::prelude::*;

    fn rule(readings: &[(Kind, f32)]) -> Option<PhysicsRule> {
        check(&PhysicsLimits::default(), readings).map(|f| f.rule)
    }

    /// A realistic envelope of a full sensor: nothing fires.
    const REALISTIC: [(Kind, f32); 9] = [
        (Kind::Co2Ppm, 612.0),
        (Kind::TemperatureC, 21.4),
        (Kind::HumidityRhPct, 48.2),
        (Kind::Pm1Ugm3, 6.0),
        (Kind::Pm2_5Ugm3, 9.0),
        (Kind::Pm10Ugm3, 14.0),
        (Kind::BatteryPct, 100.0),
        (Kind::BatteryV, 4.15),
        (Kind::PressureHpa, 1013.2),
    ];

    #[test]
    fn a_realistic_envelope_never_fires() {
        assert_eq!(rule(&REALISTIC), None);
        // Edge cases that do happen: saturated and bone-dry air, equal PM cuts (all
        // particles fine), an empty battery at a low voltage.
        assert_eq!(rule(&[(Kind::HumidityRhPct, 100.0)]), None);
        assert_eq!(rule(&[(Kind::HumidityRhPct, 0.0)]), None);
        assert_eq!(
            rule(&[(Kind::Pm2_5Ugm3, 35.0), (Kind::Pm10Ugm3, 35.0)]),
            None
        );
        // Within the sensors' rounding slack.
        assert_eq!(rule(&[(Kind::Pm1Ugm3, 3.0), (Kind::Pm2_5Ugm3, 2.5)]), None);
        assert_eq!(
            rule(&[(Kind::BatteryPct, 0.0), (Kind::BatteryV, 3.1)]),
            None
        );
        assert_eq!(
            rule(&[(Kind::BatteryPct, 99.0), (Kind::BatteryV, 2.0)]),
            None
        );
    }

    #[test]
    fn humidity_outside_its_range_fires() {
        assert_eq!(
            rule(&[(Kind::HumidityRhPct, 100.5)]),
            Some(PhysicsRule::HumidityRange)
        );
        assert_eq!(
            rule(&[(Kind::HumidityRhPct, -0.1)]),
            Some(PhysicsRule::HumidityRange)
        );
        let found = check(
            &PhysicsLimits::default(),
            &[(Kind::HumidityRhPct, 100.0 + HUMIDITY_MARGIN_PCT as f32)],
        );
        assert_eq!(found.map(|f| f.signal.strength), Some(1.0));
        // A configured slack absorbs small overshoots.
        let limits = PhysicsLimits {
            humidity_slack_pct: 1.0,
            ..PhysicsLimits::default()
        };
        assert_eq!(check(&limits, &[(Kind::HumidityRhPct, 100.5)]), None);
    }

    #[test]
    fn a_smaller_pm_cut_above_a_larger_one_fires() {
        for (small, large) in [
            (Kind::Pm1Ugm3, Kind::Pm2_5Ugm3),
            (Kind::Pm1Ugm3, Kind::Pm10Ugm3),
            (Kind::Pm2_5Ugm3, Kind::Pm10Ugm3),
        ] {
            assert_eq!(
                rule(&[(small, 40.0), (large, 20.0)]),
                Some(PhysicsRule::PmOrder),
                "{small:?} {large:?}"
            );
        }
        // One cut alone says nothing.
        assert_eq!(rule(&[(Kind::Pm2_5Ugm3, 400.0)]), None);
    }

    #[test]
    fn battery_percent_against_voltage_fires() {
        assert_eq!(
            rule(&[(Kind::BatteryPct, 100.0), (Kind::BatteryV, 2.6)]),
            Some(PhysicsRule::BatteryFullLowVoltage)
        );
        // The empty rule is off by default and fires once a fleet sets its ceiling.
        let empty_high = [(Kind::BatteryPct, 0.0), (Kind::BatteryV, 4.1)];
        assert_eq!(rule(&empty_high), None);
        let limits = PhysicsLimits {
            battery_empty_v_max: Some(3.9),
            ..PhysicsLimits::default()
        };
        assert_eq!(
            check(&limits, &empty_high).map(|f| f.rule),
            Some(PhysicsRule::BatteryEmptyHighVoltage)
        );
        // Only percent, or only voltage: nothing to compare.
        assert_eq!(rule(&[(Kind::BatteryPct, 100.0)]), None);
        assert_eq!(rule(&[(Kind::BatteryV, 1.0)]), None);
    }

    #[test]
    fn the_strongest_violation_wins() {
        let found = check(
            &PhysicsLimits::default(),
            &[
                (Kind::HumidityRhPct, 100.5),
                (Kind::Pm2_5Ugm3, 100.0),
                (Kind::Pm10Ugm3, 20.0),
            ],
        );
        assert_eq!(found.map(|f| f.rule), Some(PhysicsRule::PmOrder));
        assert_eq!(found.map(|f| f.signal.detector), Some(Detector::Physics));
    }

    #[test]
    fn decoded_readings_are_checked_the_same_way() -> Result<(), String> {
        let mut readings = Readings::new();
        for (kind, value) in [(Kind::HumidityRhPct, 120.0), (Kind::Other(0x8001), 5.0)] {
            readings
                .insert_sorted(Reading::new(kind, value))
                .map_err(|e| format!("{e:?}"))?;
        }
        assert_eq!(
            check_readings(&PhysicsLimits::default(), &readings).map(|f| f.rule),
            Some(PhysicsRule::HumidityRange)
        );
        Ok(())
    }

    fn any_kind() -> impl Strategy<Value = Kind> {
        prop_oneof![1u16..=11, 12u16..=u16::MAX]
            .prop_map(|code| Kind::from_code(code).unwrap_or(Kind::Other(code)))
    }

    fn any_value() -> impl Strategy<Value = f32> {
        prop_oneof![
            any::<u32>().prop_map(f32::from_bits),
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            -10.0f32..200.0,
        ]
    }

    fn any_limit() -> impl Strategy<Value = f32> {
        prop_oneof![any::<u32>().prop_map(f32::from_bits), 0.0f32..10.0]
    }

    proptest! {
        #[test]
        fn no_input_panics_and_strengths_are_in_the_unit_interval(
            readings in proptest::collection::vec((any_kind(), any_value()), 0..16),
            slack in any_limit(),
            ratio in any_limit(),
            v_min in any_limit(),
            v_max in any_limit(),
            pct in any_limit(),
        ) {
            let limits = PhysicsLimits {
                humidity_slack_pct: slack,
                pm_order_slack_ugm3: slack,
                pm_order_slack_ratio: ratio,
                battery_full_pct_min: pct,
                battery_full_v_min: Some(v_min),
                battery_empty_pct_max: pct,
                battery_empty_v_max: Some(v_max),
            };
            for limits in [limits, PhysicsLimits::default()] {
                if let Some(found) = check(&limits, &readings) {
                    prop_assert!((0.0..=1.0).contains(&found.signal.strength), "{found:?}");
                    prop_assert_eq!(found.signal.detector, Detector::Physics);
                }
            }
        }
    }
}
