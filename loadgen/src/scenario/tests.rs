use super::climate::{readings, NOISE_FLOOR, RESOLUTION, SCALE};
use super::*;

const T0: u64 = 1_764_201_600_000;
/// One message every 600 ms of device time (10 000 devices at 16 700 msg/s).
const INTERVAL_MS: u64 = 600;

fn ts_of(k: u64) -> u64 {
    T0 + k * INTERVAL_MS
}

fn config() -> ScenarioConfig {
    ScenarioConfig {
        seed: 42,
        day_ms: 600_000,
        warmup_readings: 100,
        onset_span_readings: 50,
    }
}

fn devices(n: usize) -> Vec<DeviceInfo> {
    (0..n)
        .map(|i| {
            let (location, region) = default_place(i, 10, 10);
            DeviceInfo {
                id: format!("dev-{i:06}"),
                location,
                region,
            }
        })
        .collect()
}

fn values(e: &Emit) -> [f64; 3] {
    [
        f64::from(e.readings[0].value),
        f64::from(e.readings[1].value),
        f64::from(e.readings[2].value),
    ]
}

/// The scenario of device 3 playing `label` (device 4 is its neighbour).
fn scenario(label: Label) -> DeviceScenario {
    let devs = devices(10);
    DeviceScenario::new(&config(), &devs[3], label, Some(&devs[4]))
}

#[test]
fn parse_mix() {
    assert_eq!(Mix::parse("normal=1.0").unwrap(), Mix::default());
    assert_eq!(Mix::parse("normal").unwrap(), Mix::default());
    let mix = Mix::parse("normal=0.9, drift=0.05,past_day=0.05").unwrap();
    assert_eq!(mix.entries().len(), 3);
    assert!(Mix::parse("flatline=0.1")
        .unwrap_err()
        .contains("available: normal, spike"));
    assert!(Mix::parse("normal=x").is_err());
    assert!(Mix::parse("normal=0").is_err());
    assert!(Mix::parse("normal=1,normal=2").is_err());
    for label in Label::ALL {
        assert_eq!(Label::parse(label.name()), Some(label));
    }
}

#[test]
fn fraud_share_spreads_evenly_with_exact_counts() {
    let mix = Mix::fraud_share(0.11).unwrap();
    let counts = mix.counts(1000);
    assert_eq!(counts.iter().map(|(_, c)| c).sum::<usize>(), 1000);
    assert_eq!(counts[0], (Label::Normal, 890));
    for (label, count) in &counts[1..] {
        assert!(label.is_fraud());
        assert_eq!(*count, 10, "{label:?}");
    }
    assert!(Mix::fraud_share(1.5).is_err());
    // 7 devices: the remainders go to the largest fractions, the sum stays exact.
    let counts = Mix::parse("normal=1,spike=1,drift=1").unwrap().counts(7);
    assert_eq!(counts.iter().map(|(_, c)| c).sum::<usize>(), 7);
}

#[test]
fn assignment_is_seeded_and_scattered() {
    let mix = Mix::fraud_share(0.1).unwrap();
    let a = mix.assign(1000, 1);
    assert_eq!(a, mix.assign(1000, 1));
    assert_ne!(a, mix.assign(1000, 2));
    let frauds = a.iter().filter(|l| l.is_fraud()).count();
    assert_eq!(frauds, 100);
    // Scattered: no location of ten is all fraud, and most locations hold some.
    let per_location: Vec<usize> = a
        .chunks(10)
        .map(|c| c.iter().filter(|l| l.is_fraud()).count())
        .collect();
    assert!(per_location.iter().all(|n| *n < 10));
    assert!(per_location.iter().filter(|n| **n > 0).count() > 40);
}

#[test]
fn series_are_deterministic() {
    let mix = Mix::fraud_share(0.5).unwrap();
    let devs = devices(60);
    let a = build(&config(), &mix, &devs);
    let b = build(&config(), &mix, &devs);
    assert_eq!(a, b);
    for (x, y) in a.iter().zip(&b) {
        let turns = x.turns(400, 1000);
        assert_eq!(turns, y.turns(400, 1000));
        for turn in &turns {
            for k in turn.k_start..turn.k_end {
                assert_eq!(
                    x.emit(k, turn.writer, &ts_of),
                    y.emit(k, turn.writer, &ts_of)
                );
            }
        }
    }
    let other = build(
        &ScenarioConfig {
            seed: 43,
            ..config()
        },
        &mix,
        &devs,
    );
    assert_ne!(
        a[0].emit(0, Writer::Original, &ts_of),
        other[0].emit(0, Writer::Original, &ts_of)
    );
}

/// Every label: identical to the honest series before the onset, different from it within
/// a few readings from the onset, and (checked per label) different in the intended way.
#[test]
fn each_label_departs_only_from_its_onset() {
    let normal = scenario(Label::Normal);
    assert_eq!(normal.onset, None);
    for label in Label::ALL.into_iter().filter(|l| l.is_fraud()) {
        let s = scenario(label);
        let onset = s.onset.unwrap();
        let cfg = config();
        assert!(
            (cfg.warmup_readings..=cfg.warmup_readings + cfg.onset_span_readings).contains(&onset),
            "{label:?}: onset {onset}"
        );
        let budget = onset + 300;
        let turns = s.turns(budget, 5000);
        let writer_of = |k: u64| {
            turns
                .iter()
                .find(|t| (t.k_start..t.k_end).contains(&k))
                .unwrap()
                .writer
        };
        for k in 0..onset {
            assert_eq!(writer_of(k), Writer::Original);
            assert_eq!(
                s.emit(k, Writer::Original, &ts_of),
                normal.emit(k, Writer::Original, &ts_of),
                "{label:?} departs at {k} before its onset {onset}"
            );
        }
        let first_departure = (onset..budget)
            .find(|k| {
                s.emit(*k, writer_of(*k), &ts_of) != normal.emit(*k, Writer::Original, &ts_of)
            })
            .unwrap_or(u64::MAX);
        // A drift of a fraction of the resolution per reading shows after a few readings.
        assert!(
            first_departure <= onset + 10,
            "{label:?}: first departure at {first_departure}, onset {onset}"
        );
    }
}

fn kind_of(fraud: &Fraud) -> usize {
    match fraud {
        Fraud::Spike { kind, .. }
        | Fraud::Drift { kind, .. }
        | Fraud::LevelShift { kind, .. }
        | Fraud::OutOfBounds { kind, .. }
        | Fraud::RateBurst { kind, .. } => *kind,
        other => panic!("no single kind in {other:?}"),
    }
}

#[test]
fn spike_is_large_and_isolated() {
    let s = scenario(Label::Spike);
    let normal = scenario(Label::Normal);
    let onset = s.onset.unwrap();
    let kind = kind_of(&s.fraud);
    let diff = |k: u64| {
        values(&s.emit(k, Writer::Original, &ts_of))[kind]
            - values(&normal.emit(k, Writer::Original, &ts_of))[kind]
    };
    assert!(diff(onset).abs() >= 2.9 * SCALE[kind], "{}", diff(onset));
    let spikes = (onset..onset + 2000).filter(|k| diff(*k) != 0.0).count();
    // chance in [0.01, 0.05]: occasional.
    assert!((10..=150).contains(&spikes), "{spikes}");
}

#[test]
fn drift_grows_with_time() {
    let s = scenario(Label::Drift);
    let normal = scenario(Label::Normal);
    let onset = s.onset.unwrap();
    let (kind, per_hour) = match s.fraud {
        Fraud::Drift { kind, per_hour } => (kind, per_hour),
        _ => unreachable!(),
    };
    let hour_ms = config().day_ms as f64 / 24.0;
    for later in [100u64, 500, 1000] {
        let k = onset + later;
        let d = values(&s.emit(k, Writer::Original, &ts_of))[kind]
            - values(&normal.emit(k, Writer::Original, &ts_of))[kind];
        let expected = per_hour * (later * INTERVAL_MS) as f64 / hour_ms;
        assert!(
            (d - expected).abs() <= RESOLUTION[kind] * 1.01 + 1e-4,
            "{d} vs {expected}"
        );
    }
}

#[test]
fn level_shift_steps_and_stays() {
    let s = scenario(Label::LevelShift);
    let normal = scenario(Label::Normal);
    let onset = s.onset.unwrap();
    let (kind, step) = match s.fraud {
        Fraud::LevelShift { kind, step } => (kind, step),
        _ => unreachable!(),
    };
    assert!(step.abs() >= SCALE[kind]);
    for k in onset..onset + 500 {
        let d = values(&s.emit(k, Writer::Original, &ts_of))[kind]
            - values(&normal.emit(k, Writer::Original, &ts_of))[kind];
        assert!((d - step).abs() <= RESOLUTION[kind] + 1e-3, "{d} vs {step}");
    }
}

#[test]
fn stuck_freezes_its_kinds() {
    let s = scenario(Label::Stuck);
    let onset = s.onset.unwrap();
    let Fraud::Stuck { kinds } = s.fraud else {
        unreachable!()
    };
    let at_onset = s.emit(onset, Writer::Original, &ts_of);
    for k in onset..onset + 300 {
        let e = s.emit(k, Writer::Original, &ts_of);
        for (kind, stuck) in kinds.iter().enumerate() {
            if *stuck {
                assert_eq!(e.readings[kind], at_onset.readings[kind]);
            }
        }
    }
}

/// Fabricated: no noise, so second differences stay at the rounding, far below the
/// honest noise.
#[test]
fn smooth_has_no_noise() {
    let s = scenario(Label::Smooth);
    let normal = scenario(Label::Normal);
    let onset = s.onset.unwrap();
    for (kind, floor) in NOISE_FLOOR.iter().enumerate() {
        let rms = |sc: &DeviceScenario| {
            let xs: Vec<f64> = (onset..onset + 400)
                .map(|k| values(&sc.emit(k, Writer::Original, &ts_of))[kind])
                .collect();
            let d2: Vec<f64> = xs.windows(3).map(|w| w[2] - 2.0 * w[1] + w[0]).collect();
            (d2.iter().map(|x| x * x).sum::<f64>() / d2.len() as f64).sqrt()
        };
        let fabricated = rms(&s);
        let honest = rms(&normal);
        assert!(
            fabricated < 0.6 * honest,
            "kind {kind}: {fabricated} vs {honest}"
        );
        assert!(honest >= 2.0 * floor, "kind {kind}: {honest}");
    }
}

#[test]
fn neighbour_copy_follows_the_neighbour() {
    let s = scenario(Label::NeighbourCopy);
    let onset = s.onset.unwrap();
    let Fraud::NeighbourCopy {
        neighbour,
        neighbour_id,
        offset,
    } = &s.fraud
    else {
        unreachable!()
    };
    assert_eq!(neighbour_id, "dev-000004");
    let devs = devices(10);
    assert_eq!(**neighbour, DeviceScenario::sensor_of(&config(), &devs[4]));
    for k in onset..onset + 200 {
        let v = values(&s.emit(k, Writer::Original, &ts_of));
        let n = neighbour.values(ts_of(k));
        for kind in 0..3 {
            assert!(
                (v[kind] - n[kind] - offset[kind]).abs() <= RESOLUTION[kind] + 1e-3,
                "kind {kind}"
            );
        }
    }
}

#[test]
fn out_of_bounds_reads_fault_values() {
    let s = scenario(Label::OutOfBounds);
    let onset = s.onset.unwrap();
    let Fraud::OutOfBounds { kind, value, .. } = s.fraud else {
        unreachable!()
    };
    let bounds = [(250.0, 40_000.0), (-90.0, 70.0), (0.0, 100.0)];
    assert!(value < bounds[kind].0 || value > bounds[kind].1, "{value}");
    let at_onset = values(&s.emit(onset, Writer::Original, &ts_of))[kind];
    assert!((at_onset - value).abs() < 1e-3);
}

#[test]
fn rate_burst_jumps_at_the_onset_and_recurs() {
    let s = scenario(Label::RateBurst);
    let normal = scenario(Label::Normal);
    let onset = s.onset.unwrap();
    let Fraud::RateBurst {
        kind,
        burst_readings,
        period_readings,
    } = s.fraud
    else {
        unreachable!()
    };
    let diff = |k: u64| {
        values(&s.emit(k, Writer::Original, &ts_of))[kind]
            - values(&normal.emit(k, Writer::Original, &ts_of))[kind]
    };
    for k in onset..onset + burst_readings {
        assert!(diff(k).abs() >= 1.9 * SCALE[kind], "{k}: {}", diff(k));
    }
    assert_eq!(diff(onset + burst_readings), 0.0);
    assert!(diff(onset + period_readings).abs() > 0.0);
}

#[test]
fn clock_drift_moves_the_timestamp_only() {
    let s = scenario(Label::ClockDrift);
    let normal = scenario(Label::Normal);
    let onset = s.onset.unwrap();
    let Fraud::ClockDrift { ratio } = s.fraud else {
        unreachable!()
    };
    assert!((0.005..0.1).contains(&ratio.abs()));
    for k in [onset + 10, onset + 1000] {
        let e = s.emit(k, Writer::Original, &ts_of);
        let n = normal.emit(k, Writer::Original, &ts_of);
        assert_eq!(e.readings, n.readings);
        let shift = e.ts_ms as f64 - ts_of(k) as f64;
        let expected = ratio * (ts_of(k) - ts_of(onset)) as f64;
        assert!((shift - expected).abs() <= 1.0, "{shift} vs {expected}");
    }
}

#[test]
fn clone_alternates_two_units_with_their_own_counters() {
    let s = scenario(Label::Clone);
    let onset = s.onset.unwrap();
    let Fraud::Clone { seq_gap, .. } = s.fraud else {
        unreachable!()
    };
    let budget = onset + 500;
    let turns = s.turns(budget, 5000);
    assert_eq!(turns[0].k_start, 0);
    assert_eq!(turns[0].k_end, onset);
    assert_eq!(turns[0].seq(0), 5000);
    assert_eq!(turns[1].writer, Writer::Twin);
    assert_eq!(turns[1].seq(onset), 5000 + onset + seq_gap);
    assert_eq!(turns.last().unwrap().k_end, budget);
    let mut next = [5000 + onset, 5000 + onset + seq_gap];
    for pair in turns.windows(2) {
        assert_eq!(pair[0].k_end, pair[1].k_start);
        assert_ne!(pair[0].writer, pair[1].writer);
    }
    for t in &turns[1..] {
        assert!((1..=30).contains(&(t.k_end - t.k_start)));
        let slot = &mut next[usize::from(t.writer == Writer::Twin)];
        assert_eq!(t.seq_start, *slot, "each unit continues its own counter");
        *slot += t.k_end - t.k_start;
    }
    // The twin is another sensor at the same site: close, not equal.
    let a = values(&s.emit(onset, Writer::Original, &ts_of));
    let b = values(&s.emit(onset, Writer::Twin, &ts_of));
    assert_ne!(a, b);
    assert!((a[1] - b[1]).abs() < 3.0);
    // A normal device has one turn.
    let normal = scenario(Label::Normal).turns(10, 7);
    assert_eq!(
        normal,
        vec![Turn {
            k_start: 0,
            k_end: 10,
            writer: Writer::Original,
            seq_start: 7
        }]
    );
    assert_eq!(scenario(Label::Normal).turns(0, 7).len(), 1);
    assert_eq!(scenario(Label::Normal).turns(0, 7)[0].k_end, 0);
}

#[test]
fn past_day_resends_yesterday() {
    let s = scenario(Label::PastDay);
    let onset = s.onset.unwrap();
    let day = config().day_ms;
    for k in onset..onset + 100 {
        let e = s.emit(k, Writer::Original, &ts_of);
        assert_eq!(e.ts_ms, ts_of(k));
        assert_eq!(e.readings, readings(s.sensor.values(ts_of(k) - day)));
    }
}

#[test]
fn truth_file_format() {
    let mix = Mix::parse("normal=2,drift=1,clone=1").unwrap();
    let devs = devices(8);
    let scenarios = build(&config(), &mix, &devs);
    let mut out = Vec::new();
    write_truth(&mut out, &scenarios, 1_000_000).unwrap();
    let text = String::from_utf8(out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("device,scenario,onset_seq,params"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 8);
    for (row, s) in rows.iter().zip(&scenarios) {
        assert_eq!(row.len(), 4, "{row:?}");
        assert_eq!(row[0], s.id);
        assert_eq!(row[1], s.label.name());
        match s.label {
            Label::Normal => assert_eq!(row[2], ""),
            _ => {
                let seq: u64 = row[2].parse().unwrap();
                assert_eq!(seq, 1_000_000 + s.onset.unwrap());
            }
        }
    }
    assert_eq!(rows.iter().filter(|r| r[1] == "normal").count(), 4);
    assert!(rows
        .iter()
        .any(|r| r[1] == "drift" && r[3].starts_with("kind=")));
    // The same seed and base give the same file.
    let mut again = Vec::new();
    write_truth(&mut again, &build(&config(), &mix, &devs), 1_000_000).unwrap();
    assert_eq!(String::from_utf8(again).unwrap(), text);
}

#[test]
fn neighbours_come_from_the_same_location() {
    let mix = Mix::parse("neighbour_copy=1").unwrap();
    let devs = devices(30);
    for s in build(&config(), &mix, &devs) {
        let Fraud::NeighbourCopy { neighbour_id, .. } = &s.fraud else {
            unreachable!()
        };
        let me: usize = s.id[4..].parse().unwrap();
        let them: usize = neighbour_id[4..].parse().unwrap();
        assert_ne!(me, them);
        assert_eq!(me / 10, them / 10);
    }
}
