//! Tests of the combination, and of all detectors together on arbitrary input.

use super::bounds::check_default;
use super::persistence::{Persistence, PersistenceLimits};
use super::rate::{Rate, RateLimit};
use super::stats::{Stats, StatsConfig};
use super::*;
use proptest::prelude::*;

fn signal(detector: Detector, strength: f32) -> Signal {
    Signal { detector, strength }
}

#[test]
fn detector_names_are_stable_and_round_trip() {
    let names: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(
        names,
        [
            "bounds",
            "rate",
            "deviation",
            "drift",
            "persistence",
            "too_smooth",
            "physics",
            "timing",
            "clone",
            "peers",
            "model"
        ]
    );
    for (i, detector) in Detector::ALL.into_iter().enumerate() {
        assert_eq!(detector.index(), i);
        assert_eq!(Detector::from_name(detector.name()), Some(detector));
    }
    assert_eq!(Detector::from_name("Bounds"), None);
}

#[test]
fn fired_is_a_set() {
    let mut fired = Fired::empty();
    assert!(fired.is_empty());
    fired.insert(Detector::Drift);
    fired.insert(Detector::Bounds);
    fired.insert(Detector::Drift);
    assert!(fired.contains(Detector::Drift) && !fired.contains(Detector::Rate));
    assert_eq!(
        fired.iter().collect::<Vec<_>>(),
        [Detector::Bounds, Detector::Drift]
    );
    assert_eq!(fired.bits(), 0b1001);
}

#[test]
fn no_signal_scores_zero() {
    let verdict = combine(&ScoreConfig::default(), &[]);
    assert_eq!(verdict, Verdict::default());
    assert!(!verdict.is_flagged(&ScoreConfig::default()));
}

#[test]
fn the_score_follows_the_documented_formula() {
    let config = ScoreConfig::default();
    let verdict = combine(
        &config,
        &[
            signal(Detector::Rate, 0.5),
            signal(Detector::Persistence, 1.0),
        ],
    );
    // 1 - (1 - 0.8 * 0.5) (1 - 0.7 * 1.0) = 1 - 0.6 * 0.3 = 0.82
    assert!((verdict.score - 0.82).abs() < 1e-6, "{verdict:?}");
    assert!(verdict.fired.contains(Detector::Rate));
    assert!(verdict.fired.contains(Detector::Persistence));
    assert!(verdict.is_flagged(&config) && !verdict.is_quarantined(&config));
    // A value outside physics is quarantined on its own.
    let verdict = combine(&config, &[signal(Detector::Bounds, 1.0)]);
    assert_eq!(verdict.score, 1.0);
    assert!(verdict.is_quarantined(&config));
}

#[test]
fn the_score_is_in_the_unit_interval_and_monotone_in_each_detector() {
    let config = ScoreConfig::default();
    let steps = [0.0f32, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0];
    // Every detector fires in each case; raising one strength never lowers the score.
    for raised in Detector::ALL {
        for base in steps {
            let mut previous = -1.0f32;
            for strength in steps {
                let signals: Vec<Signal> = Detector::ALL
                    .into_iter()
                    .map(|d| signal(d, if d == raised { strength } else { base }))
                    .collect();
                let score = combine(&config, &signals).score;
                assert!((0.0..=1.0).contains(&score), "{score}");
                assert!(
                    score >= previous,
                    "{raised:?} base {base}: {score} < {previous}"
                );
                previous = score;
            }
        }
    }
    // Adding a detector that fires never lowers the score either.
    let one = combine(&config, &[signal(Detector::Drift, 0.6)]).score;
    let two = combine(
        &config,
        &[signal(Detector::Drift, 0.6), signal(Detector::Rate, 0.1)],
    )
    .score;
    assert!(two >= one);
}

#[test]
fn out_of_range_weights_and_strengths_are_clamped() {
    let config = ScoreConfig {
        weights: [
            2.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            0.5,
            0.5,
            0.5,
            0.5,
            0.5,
            0.5,
            0.5,
        ],
        ..ScoreConfig::default()
    };
    let signals = [
        signal(Detector::Bounds, 7.0),
        signal(Detector::Rate, -3.0),
        signal(Detector::Deviation, f32::NAN),
        signal(Detector::Drift, f32::NEG_INFINITY),
        signal(Detector::Persistence, f32::NAN),
        signal(Detector::TooSmooth, 2.0),
        signal(Detector::Physics, 0.5),
        signal(Detector::Timing, 0.5),
        signal(Detector::Clone, 0.5),
        signal(Detector::Peers, 0.5),
        signal(Detector::Model, 0.5),
    ];
    let verdict = combine(&config, &signals);
    assert_eq!(verdict.score, 1.0);
    assert_eq!(verdict.fired.iter().count(), DETECTOR_COUNT);
}

/// Every detector of one kind's series, as the core will hold them per device.
struct Series {
    kind: Kind,
    rate_limit: RateLimit,
    rate: Rate,
    stats_config: StatsConfig,
    stats: Stats,
    persistence_limits: PersistenceLimits,
    persistence: Persistence,
}

impl Series {
    fn new(kind: Kind) -> Series {
        Series {
            kind,
            rate_limit: RateLimit::default_for(kind),
            rate: Rate::new(),
            stats_config: StatsConfig::default_for(kind),
            stats: Stats::new(),
            persistence_limits: PersistenceLimits::default_for(kind),
            persistence: Persistence::new(),
        }
    }

    /// Scores one reading; the signals go in a fixed array (no allocation).
    fn score(
        &mut self,
        config: &ScoreConfig,
        time_ms: u64,
        value: f32,
    ) -> (Verdict, [Option<Signal>; 5]) {
        let outcome = self.stats.observe(&self.stats_config, value);
        let found = [
            check_default(self.kind, value),
            self.rate.observe(&self.rate_limit, time_ms, value),
            outcome.deviation,
            outcome.drift,
            self.persistence
                .observe(&self.persistence_limits, time_ms, value),
        ];
        let mut signals = [signal(Detector::Bounds, 0.0); 5];
        let mut count = 0;
        for s in found.into_iter().flatten() {
            signals[count] = s;
            count += 1;
        }
        (combine(config, &signals[..count]), found)
    }
}

/// A deterministic uniform in [-1, 1) (xorshift64), for the realistic series below.
fn jitter(state: &mut u64) -> f32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    ((*state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

#[test]
fn realistic_clean_series_of_every_kind_score_zero() {
    // (kind, level, noise amplitude) with readings each minute for two days: honest
    // sensors at their usual noise, every detector together.
    let cases = [
        (Kind::Co2Ppm, 420.0, 8.0),
        (Kind::TemperatureC, 18.0, 0.1),
        (Kind::HumidityRhPct, 55.0, 0.8),
        (Kind::Pm1Ugm3, 6.0, 1.5),
        (Kind::Pm2_5Ugm3, 9.0, 2.0),
        (Kind::Pm10Ugm3, 15.0, 3.0),
        (Kind::BatteryV, 3.9, 0.01),
        (Kind::PressureHpa, 1012.0, 0.1),
        (Kind::VocIndex, 100.0, 5.0),
        (Kind::NoiseDba, 45.0, 4.0),
    ];
    let config = ScoreConfig::default();
    for (seed, (kind, level, noise)) in cases.into_iter().enumerate() {
        let mut state = 0x9e37_79b9_7f4a_7c15 ^ seed as u64;
        let mut series = Series::new(kind);
        for i in 0..(2 * 24 * 60u64) {
            let value = level + noise * jitter(&mut state);
            let (verdict, _) = series.score(&config, 1_764_000_000_000 + i * 60_000, value);
            assert_eq!(verdict, Verdict::default(), "{kind:?} reading {i}: {value}");
        }
    }
}

#[test]
fn each_fault_raises_the_combined_score() {
    let config = ScoreConfig::default();
    let t0_ms = 1_764_000_000_000u64;
    let warm = |series: &mut Series, state: &mut u64| {
        for i in 0..200u64 {
            series.score(&config, t0_ms + i * 60_000, 18.0 + 0.1 * jitter(state));
        }
    };
    let mut state = 1;
    // Out of bounds and far too fast: bounds, rate and deviation at once.
    let mut series = Series::new(Kind::TemperatureC);
    warm(&mut series, &mut state);
    let (verdict, _) = series.score(&config, t0_ms + 200 * 60_000, 95.0);
    assert!(verdict.is_quarantined(&config), "{verdict:?}");
    for detector in [Detector::Bounds, Detector::Rate, Detector::Deviation] {
        assert!(verdict.fired.contains(detector), "{verdict:?}");
    }
    // A plausible spike: deviation only, flagged.
    let mut series = Series::new(Kind::TemperatureC);
    warm(&mut series, &mut state);
    let (verdict, _) = series.score(&config, t0_ms + 200 * 60_000, 21.0);
    assert_eq!(
        verdict.fired.iter().collect::<Vec<_>>(),
        [Detector::Deviation]
    );
    assert!(verdict.is_flagged(&config), "{verdict:?}");
}

fn any_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<u32>().prop_map(f32::from_bits),
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::MAX),
        Just(f32::MIN),
        Just(f32::MIN_POSITIVE),
        -100.0f32..2000.0,
    ]
}

fn any_time_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        1_764_000_000_000u64..1_764_000_600_000,
    ]
}

proptest! {
    #[test]
    fn no_input_panics_and_every_score_is_in_the_unit_interval(
        code in prop_oneof![1u16..=11, any::<u16>().prop_map(|c| c.max(1))],
        readings in proptest::collection::vec((any_time_ms(), any_value()), 1..200),
    ) {
        let config = ScoreConfig::default();
        let Some(kind) = Kind::from_code(code) else {
            return Err(TestCaseError::fail("code 0 was generated"));
        };
        let mut series = Series::new(kind);
        for (time_ms, value) in readings {
            let (verdict, found) = series.score(&config, time_ms, value);
            prop_assert!((0.0..=1.0).contains(&verdict.score), "{verdict:?}");
            for s in found.into_iter().flatten() {
                prop_assert!((0.0..=1.0).contains(&s.strength), "{s:?}");
                prop_assert!(verdict.fired.contains(s.detector));
            }
            if !value.is_finite() {
                prop_assert!(verdict.fired.contains(Detector::Bounds));
            }
        }
    }
}

#[test]
fn per_series_state_and_verdicts_are_plain_copy_values() {
    // `Copy` types cannot own heap memory: scoring a reading allocates nothing, and the
    // state of a device can be checkpointed by copying bytes. A counting allocator test
    // belongs with the core once this is wired in (this crate forbids the unsafe code a
    // global allocator needs).
    fn copy<T: Copy>() {}
    copy::<Stats>();
    copy::<Rate>();
    copy::<Persistence>();
    copy::<Verdict>();
    copy::<Signal>();
    assert!(std::mem::size_of::<Stats>() <= 64);
}
