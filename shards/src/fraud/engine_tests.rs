//! Tests of the engine: every detector of a device together, warm-up, clones through
//! connections, and the checkpoint of device state.

use super::engine::{
    address_hash, decode_states, device_hash, encode_states, DeviceFraud, Envelope, FraudConfig,
    Scorer,
};
use super::{Detector, Verdict};
use ingestd_codec::envelope::{Kind, Reading};

const T0_MS: u64 = 1_764_000_000_000;
const DAY_MS: f64 = 86_400_000.0;

/// A deterministic uniform in [-1, 1) (xorshift64).
fn jitter(state: &mut u64) -> f32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    ((*state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
}

/// An honest indoor station: CO2, temperature and humidity with a daily cycle, noise at
/// the sensors' floors and their resolutions.
fn honest(i: u64, t_ms: u64, state: &mut u64) -> [Reading; 3] {
    let phase = (t_ms as f64 / DAY_MS * std::f64::consts::TAU).sin() as f32;
    let co2 = (430.0 + 60.0 * phase + 6.0 * jitter(state)).round();
    let temperature = ((19.0 + 2.5 * phase + 0.08 * jitter(state)) * 100.0).round() / 100.0;
    let humidity = ((52.0 - 6.0 * phase + 0.6 * jitter(state)) * 10.0).round() / 10.0;
    let _ = i;
    [
        Reading {
            kind: Kind::Co2Ppm.code(),
            value: co2,
        },
        Reading {
            kind: Kind::TemperatureC.code(),
            value: temperature,
        },
        Reading {
            kind: Kind::HumidityRhPct.code(),
            value: humidity,
        },
    ]
}

fn envelope(seq: u64, t_ms: u64, readings: &[Reading]) -> Envelope<'_> {
    Envelope {
        device: device_hash("station-1"),
        seq,
        device_ms: t_ms,
        received_ms: t_ms + 120,
        address: address_hash("10.0.0.7:50000"),
        connected_ms: T0_MS - 1_000,
        readings,
    }
}

#[test]
fn an_honest_station_over_three_days_raises_nothing() {
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut device = DeviceFraud::new("", "");
    let mut state = 7;
    let mut highest = 0.0f32;
    for i in 0..(3 * 24 * 60u64) {
        let t_ms = T0_MS + i * 60_000;
        let readings = honest(i, t_ms, &mut state);
        let scored = scorer.score(&mut device, &envelope(i + 1, t_ms, &readings));
        highest = highest.max(scored.verdict.score);
        assert!(
            !scored.verdict.is_flagged(&scorer.config().score),
            "reading {i}: {readings:?} -> {scored:?}"
        );
    }
    assert!(highest < 0.5, "{highest}");
}

#[test]
fn warm_up_keeps_history_detectors_quiet_but_not_bounds() {
    let config = FraudConfig {
        warmup_readings: 20,
        ..FraudConfig::default()
    };
    let mut scorer = Scorer::new(config);
    let mut device = DeviceFraud::new("", "");
    let mut state = 3;
    for i in 0..10u64 {
        let t_ms = T0_MS + i * 60_000;
        let mut readings = honest(i, t_ms, &mut state);
        if i == 8 {
            // A jump that deviation and rate would flag once warm.
            readings[0].value = 1_900.0;
        }
        let scored = scorer.score(&mut device, &envelope(i + 1, t_ms, &readings));
        assert!(scored.verdict.fired.is_empty(), "{i}: {scored:?}");
    }
    // Out of physics fires from the first reading of a device.
    let mut fresh = DeviceFraud::new("", "");
    let readings = [Reading {
        kind: Kind::HumidityRhPct.code(),
        value: 140.0,
    }];
    let scored = scorer.score(&mut fresh, &envelope(1, T0_MS, &readings));
    assert!(
        scored.verdict.fired.contains(Detector::Bounds),
        "{scored:?}"
    );
    assert!(scored.verdict.is_quarantined(&scorer.config().score));
}

#[test]
fn a_level_shift_after_warm_up_is_flagged() {
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut device = DeviceFraud::new("", "");
    let mut state = 11;
    let mut flagged_at = None;
    for i in 0..400u64 {
        let t_ms = T0_MS + i * 60_000;
        let mut readings = honest(i, t_ms, &mut state);
        if i >= 300 {
            readings[1].value += 4.0;
        }
        let scored = scorer.score(&mut device, &envelope(i + 1, t_ms, &readings));
        if scored.verdict.is_flagged(&scorer.config().score) {
            assert!(i >= 300, "false alert at {i}: {scored:?}");
            flagged_at.get_or_insert(i);
        }
    }
    assert_eq!(flagged_at, Some(300));
}

#[test]
fn one_identity_from_two_places_in_alternation_is_a_clone() {
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut device = DeviceFraud::new("", "");
    let mut state = 5;
    let places = ["10.0.0.7:50000", "192.168.9.1:40000"];
    let mut fired = false;
    for i in 0..200u64 {
        let t_ms = T0_MS + i * 60_000;
        let readings = honest(i, t_ms, &mut state);
        let mut env = envelope(i + 1, t_ms, &readings);
        if i >= 100 {
            // Each reading from the other place, on a new connection.
            env.address = address_hash(places[(i % 2) as usize]);
            env.connected_ms = t_ms - 10;
        }
        let scored = scorer.score(&mut device, &env);
        if scored.verdict.fired.contains(Detector::Clone) {
            assert!(i >= 100, "{i}");
            fired = true;
        }
    }
    assert!(fired);
}

#[test]
fn address_hash_ignores_the_port_only() {
    assert_eq!(address_hash("10.0.0.7:1"), address_hash("10.0.0.7:2"));
    assert_eq!(address_hash("[::1]:1"), address_hash("[::1]:9"));
    assert_ne!(address_hash("10.0.0.7:1"), address_hash("10.0.0.8:1"));
    assert_eq!(address_hash("10.0.0.7"), address_hash("10.0.0.7:1883"));
}

/// Scores `n` readings from `from` on, returning the verdicts.
fn run(
    scorer: &mut Scorer,
    device: &mut DeviceFraud,
    from: u64,
    n: u64,
    state: &mut u64,
) -> Vec<Verdict> {
    (from..from + n)
        .map(|i| {
            let t_ms = T0_MS + i * 60_000;
            let mut readings = honest(i, t_ms, state);
            if i % 97 == 0 {
                readings[0].value += 300.0;
            }
            scorer
                .score(device, &envelope(i + 1, t_ms, &readings))
                .verdict
        })
        .collect()
}

#[test]
fn a_checkpointed_device_scores_exactly_as_one_that_never_stopped() {
    let mut state = 19;
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut device = DeviceFraud::new("lab", "eu");
    run(&mut scorer, &mut device, 0, 500, &mut state);
    let model = scorer.encode_model();
    assert!(!model.is_empty());
    let bytes = encode_states([("station-1", &device)].into_iter());
    let mut restored = decode_states(&bytes).expect("decodes");
    assert_eq!(restored.len(), 1);
    let (id, mut restored_device) = restored.pop().expect("one");
    assert_eq!(id, "station-1");
    restored_device.set_groups("lab", "eu");
    assert_eq!(restored_device, device);
    let mut restored_scorer = Scorer::new(FraudConfig::default());
    assert!(restored_scorer.restore_model(&model));
    assert!(!restored_scorer.restore_model(&model[..model.len() / 2]));

    let mut state_b = state;
    let unbroken = run(&mut scorer, &mut device, 500, 500, &mut state);
    let after = run(
        &mut restored_scorer,
        &mut restored_device,
        500,
        500,
        &mut state_b,
    );
    assert_eq!(unbroken, after);
    assert!(unbroken.iter().any(|v| !v.fired.is_empty()));
    assert!(decode_states(&bytes[..bytes.len() / 2]).is_none());
}

#[test]
fn refused_sequences_from_a_second_writer_are_clone_evidence() {
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut device = DeviceFraud::new("", "");
    let mut state = 23;
    let mut fired = false;
    for i in 0..300u64 {
        let t_ms = T0_MS + i * 60_000;
        let readings = honest(i, t_ms, &mut state);
        if i >= 100 {
            // A second writer far behind on its own connection: the window refuses it.
            scorer.refused(
                &mut device,
                i - 60,
                address_hash("172.16.0.2:1"),
                T0_MS + 99 * 60_000,
                t_ms + 5,
            );
        }
        let scored = scorer.score(&mut device, &envelope(i + 1, t_ms, &readings));
        fired |= scored.verdict.fired.contains(Detector::Clone);
    }
    assert!(fired);
}

#[test]
fn a_server_backlog_is_not_every_device_s_clock_jumping() {
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut devices: Vec<DeviceFraud> = (0..20).map(|_| DeviceFraud::new("", "")).collect();
    let mut state = 31;
    let mut timing_fired = 0;
    for i in 0..600u64 {
        for (d, device) in devices.iter_mut().enumerate() {
            let t_ms = T0_MS + i * 60_000 + d as u64 * 100;
            // From reading 400 to 420 the server falls 90 s behind every device: a backlog.
            let lag_ms = 150 + i.clamp(400, 420).saturating_sub(400) * 4_500;
            let readings = honest(i, t_ms, &mut state);
            let mut env = envelope(i + 1, t_ms, &readings);
            env.device = d as u64;
            env.received_ms = t_ms + lag_ms;
            let scored = scorer.score(device, &env);
            timing_fired += usize::from(scored.verdict.fired.contains(Detector::Timing));
        }
    }
    // Without the shard's lag every device would fire once (its offset moved 90 s).
    assert_eq!(timing_fired, 0);
    // One device's own clock jumping still fires.
    let d = 3;
    let t_ms = T0_MS + 600 * 60_000;
    let readings = honest(600, t_ms, &mut state);
    let mut env = envelope(601, t_ms - 300_000, &readings);
    env.device = d as u64;
    env.received_ms = t_ms + 90_000;
    let scored = scorer.score(&mut devices[d], &env);
    assert!(
        scored.verdict.fired.contains(Detector::Timing),
        "{scored:?}"
    );
}

#[test]
fn a_device_drifting_away_from_its_location_fires_drift_and_its_neighbours_do_not() {
    // Ten stations of one location sharing the weather, each with its own calibration
    // offset; from reading 400, station 0's temperature drifts by 0.004 °C a reading (a
    // ramp the Holt trend would learn as weather).
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut devices: Vec<DeviceFraud> = (0..10)
        .map(|_| DeviceFraud::new("roof-north", "city"))
        .collect();
    let mut state = 41;
    let mut fired_at = None;
    for i in 0..700u64 {
        for (d, device) in devices.iter_mut().enumerate() {
            let t_ms = T0_MS + i * 60_000 + d as u64 * 500;
            let mut readings = honest(i, t_ms, &mut state);
            readings[1].value += d as f32 * 0.1;
            if d == 0 && i >= 400 {
                readings[1].value += 0.004 * (i - 400) as f32;
            }
            let mut env = envelope(i + 1, t_ms, &readings);
            env.device = device_hash(&format!("roof-{d}"));
            let scored = scorer.score(device, &env);
            if scored.verdict.fired.contains(Detector::Drift) {
                assert_eq!(d, 0, "honest station {d} fired drift at reading {i}");
                fired_at.get_or_insert(i);
            }
        }
    }
    let fired_at = fired_at.expect("the drift never fired");
    assert!((400..=520).contains(&fired_at), "{fired_at}");
}

#[test]
fn short_server_stalls_do_not_read_as_fast_clocks() {
    // 400 devices reading every 600 ms into one shard; every 5 s the server stalls for
    // 150 ms and receives what arrived meanwhile at once. The shard's lag average jumps
    // for a moment after each stall: the clock rate rule must not take the prompt
    // envelopes just after it for early ones.
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut devices: Vec<DeviceFraud> = (0..400).map(|_| DeviceFraud::new("", "")).collect();
    let mut state = 57;
    let mut fired = 0;
    for i in 0..300u64 {
        for (d, device) in devices.iter_mut().enumerate() {
            let t_ms = T0_MS + i * 600 + d as u64 * 600 / 400;
            let since = (t_ms - T0_MS) % 5_000;
            let received_ms = if since < 150 {
                t_ms - since + 150
            } else {
                t_ms + 3
            };
            let readings = honest(i, t_ms, &mut state);
            let mut env = envelope(i + 1, t_ms, &readings);
            env.device = d as u64;
            env.received_ms = received_ms;
            let scored = scorer.score(device, &env);
            fired += usize::from(scored.verdict.fired.contains(Detector::Timing));
        }
    }
    assert_eq!(fired, 0);
}
