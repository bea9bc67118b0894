use super::*;
use proptest::prelude::*;

const T0_MS: u64 = 1_764_000_000_000;
const MINUTE_MS: u64 = 60_000;
const KIND: Kind = Kind::TemperatureC;

/// A deterministic standard normal sequence (xorshift64* and Box-Muller).
struct Normal(u64);

impl Normal {
    fn new(seed: u64) -> Normal {
        Normal(seed.max(1))
    }

    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (bits as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn location(name: &str) -> GroupKey {
    GroupKey::new(Scope::Location, name, KIND).unwrap()
}

fn region(name: &str) -> GroupKey {
    GroupKey::new(Scope::Region, name, KIND).unwrap()
}

/// Observes then checks one reading, as the engine would.
fn read(table: &mut PeerTable, key: GroupKey, device: u64, t: u64, v: f32) -> Option<Signal> {
    table.observe(key, device, t, v);
    table.check(key, device, t, v, KIND)
}

/// A location of honest devices: a shared daily cycle, a fixed offset per device and
/// noise per reading.
struct Honest {
    offsets: Vec<f64>,
    noise: f64,
    normal: Normal,
}

impl Honest {
    fn new(devices: usize, offset_sd: f64, noise: f64, seed: u64) -> Honest {
        let mut normal = Normal::new(seed);
        let offsets = (0..devices).map(|_| offset_sd * normal.next()).collect();
        Honest {
            offsets,
            noise,
            normal,
        }
    }

    fn value(&mut self, device: usize, t: u64) -> f32 {
        let day = (t - T0_MS) as f64 / 86_400_000.0;
        let truth = 15.0 + 5.0 * (2.0 * std::f64::consts::PI * day).sin();
        (truth + self.offsets[device] + self.noise * self.normal.next()) as f32
    }
}

/// Device `d` of a round reports at a few seconds past the minute, in device order.
fn time(round: u64, device: usize) -> u64 {
    T0_MS + round * MINUTE_MS + device as u64 * 1_000
}

#[test]
fn an_honest_group_stays_quiet() {
    // Offsets wider than the floor, and offsets far below it (the floor at work).
    for (offset_sd, noise, seed) in [(0.3, 0.1, 1), (0.5, 0.05, 2), (0.01, 0.02, 3)] {
        let mut table = PeerTable::new(PeersConfig::default());
        let key = location("lab");
        let mut honest = Honest::new(20, offset_sd, noise, seed);
        let mut compared = 0;
        let mut z_max_seen = 0.0f64;
        for round in 0..400 {
            for d in 0..20 {
                let t = time(round, d);
                let v = honest.value(d, t);
                table.observe(key, d as u64, t, v);
                if let Some(score) = table.evaluate(key, d as u64, t, v, KIND) {
                    compared += 1;
                    z_max_seen = z_max_seen.max(score.z);
                    assert_eq!(
                        score.signal, None,
                        "sd {offset_sd} round {round} device {d}: {score:?}"
                    );
                }
            }
        }
        // 8 000 readings, nearly all compared (the first few of the first round lack peers).
        assert!(compared > 7_900, "{compared}");
        assert!(
            z_max_seen > 0.5,
            "nothing was really compared: {z_max_seen}"
        );
    }
}

#[test]
fn a_level_shift_of_a_few_spreads_fires() {
    let mut table = PeerTable::new(PeersConfig::default());
    let key = location("lab");
    // Spread about 0.32 °C, limit 7.9 with 19 peers: a shift of 4 °C is about 12 spreads.
    let mut honest = Honest::new(20, 0.3, 0.1, 5);
    let mut fired = Vec::new();
    for round in 0..200 {
        for d in 0..20 {
            let t = time(round, d);
            let mut v = honest.value(d, t);
            if d == 7 && round >= 100 {
                v += 4.0;
            }
            if let Some(signal) = read(&mut table, key, d as u64, t, v) {
                assert_eq!(signal.detector, Detector::Peers);
                assert!((0.5..=1.0).contains(&signal.strength), "{signal:?}");
                fired.push((round, d));
            }
        }
    }
    // From the first reading of the shift on, every reading of device 7 and nothing else.
    let expected: Vec<_> = (100..200).map(|r| (r, 7)).collect();
    assert_eq!(fired, expected);
}

#[test]
fn fewer_than_peers_min_others_never_fire() {
    let mut table = PeerTable::new(PeersConfig::default());
    let key = location("lab");
    // Three honest devices and one wild: three others is one short of peers_min.
    for round in 0..50 {
        for d in 0..3 {
            table.observe(key, d, time(round, d as usize), 20.0 + 0.01 * d as f32);
        }
        assert_eq!(read(&mut table, key, 9, time(round, 9), 80.0), None);
    }
    // A fourth honest device joins: the wild one now fires (the small snapshot refreshes
    // at once, without waiting for the bucket). Four peers are held to a limit of 170
    // floors (0.1 °C here): 60 °C out.
    let t = time(50, 3);
    table.observe(key, 3, t, 20.02);
    let score = table.evaluate(key, 9, t + 1, 80.0, KIND).unwrap();
    assert_eq!((score.view.peers, score.z_limit), (4, 170.0));
    assert!(score.signal.is_some(), "{score:?}");
}

#[test]
fn a_device_is_never_its_own_peer() {
    let mut table = PeerTable::new(PeersConfig::default());
    let key = location("lab");
    for (d, v) in [(1, 20.0), (2, 21.0), (3, 22.0), (4, 23.0)] {
        table.observe(key, d, T0_MS, v);
    }
    table.observe(key, 9, T0_MS, 100.0);
    // With itself the median would be 22; without, 21.5.
    let view = table.describe(key, 9, T0_MS, KIND).unwrap();
    assert_eq!(view.median, 21.5);
    assert_eq!(view.peers, 4);
    // Its value coming back from another shard (a move between shards) is still its own.
    let mut other = PeerTable::new(PeersConfig::default());
    other.observe(key, 9, T0_MS, 100.0);
    other.observe(key, 1, T0_MS, 20.0);
    let mut table = PeerTable::new(PeersConfig::default());
    table.merge(1, &other.export(T0_MS));
    for (d, v) in [(2, 21.0), (3, 22.0), (4, 23.0)] {
        table.observe(key, d, T0_MS, v);
    }
    let view = table.describe(key, 9, T0_MS, KIND).unwrap();
    assert_eq!((view.median, view.peers), (21.5, 4));
    // Three others and itself are not four peers.
    let mut table = PeerTable::new(PeersConfig::default());
    for (d, v) in [(1, 20.0), (2, 20.1), (3, 20.2), (9, 35.0)] {
        table.observe(key, d, T0_MS, v);
    }
    assert_eq!(table.check(key, 9, T0_MS, 35.0, KIND), None);
    assert_eq!(
        table.describe(key, 9, T0_MS, KIND).map(|v| v.peers),
        Some(3)
    );
}

#[test]
fn remote_summaries_count_and_a_newer_one_replaces_the_older() {
    let key = location("lab");
    // Shard 1 sees four honest devices; shard 0 only the suspect.
    let mut remote = PeerTable::new(PeersConfig::default());
    for d in 1..=4 {
        remote.observe(key, d, T0_MS, 20.0 + 0.25 * d as f32);
    }
    let mut table = PeerTable::new(PeersConfig::default());
    assert_eq!(read(&mut table, key, 9, T0_MS, 30.0), None);
    table.merge(1, &remote.export(T0_MS));
    assert!(read(&mut table, key, 9, T0_MS + 1, 200.0).is_some());
    // Two minutes later (a new snapshot) the remote devices read 30 too: the suspect is
    // now in line.
    let t = T0_MS + 2 * MINUTE_MS;
    for d in 1..=4 {
        remote.observe(key, d, t, 30.0 + 0.25 * d as f32);
    }
    let newer = remote.export(t);
    assert_eq!(newer.groups[0].entries.len(), 4);
    table.merge(1, &newer);
    assert_eq!(read(&mut table, key, 9, t, 30.0), None);
    let view = table.describe(key, 9, t, KIND).unwrap();
    assert_eq!((view.median, view.peers), (30.625, 4));
    // The same shard's entry always replaces its previous one (even with an earlier
    // time: the shard saw it last); another shard's older entry does not.
    let mut back = Summary::default();
    back.groups.push(GroupSummary {
        key,
        entries: vec![PeerEntry {
            device: 1,
            time_ms: t - 1,
            value: 40.0,
        }],
    });
    table.merge(2, &back);
    table.merge(1, &back);
    let t2 = t + MINUTE_MS;
    let view = table.describe(key, 9, t2, KIND).unwrap();
    assert_eq!(view.median, 30.875, "{view:?}");
}

#[test]
fn a_local_value_is_not_replaced_by_an_older_remote_one() {
    let key = location("lab");
    let mut table = PeerTable::new(PeersConfig::default());
    table.observe(key, 1, T0_MS + 10, 20.0);
    let mut stale = Summary::default();
    stale.groups.push(GroupSummary {
        key,
        entries: vec![PeerEntry {
            device: 1,
            time_ms: T0_MS,
            value: 99.0,
        }],
    });
    table.merge(3, &stale);
    let view = table.describe(key, 2, T0_MS, KIND).unwrap();
    assert_eq!(view.median, 20.0);
    // Not exported as if it were this shard's observation, either.
    let summary = table.export(T0_MS);
    assert_eq!(summary.groups[0].entries[0].value, 20.0);
}

#[test]
fn export_lists_each_local_observation_once_and_no_remote_one() {
    let key = location("lab");
    let other = location("roof");
    let mut table = PeerTable::new(PeersConfig::default());
    table.observe(other, 5, T0_MS, 1.0);
    table.observe(key, 2, T0_MS, 2.0);
    table.observe(key, 1, T0_MS, 3.0);
    table.observe(key, 1, T0_MS + 5, 4.0);
    let mut remote = Summary::default();
    remote.groups.push(GroupSummary {
        key,
        entries: vec![PeerEntry {
            device: 7,
            time_ms: T0_MS,
            value: 9.0,
        }],
    });
    table.merge(1, &remote);
    let summary = table.export(T0_MS + 10);
    let mut expected = vec![
        GroupSummary {
            key,
            entries: vec![
                PeerEntry {
                    device: 1,
                    time_ms: T0_MS + 5,
                    value: 4.0,
                },
                PeerEntry {
                    device: 2,
                    time_ms: T0_MS,
                    value: 2.0,
                },
            ],
        },
        GroupSummary {
            key: other,
            entries: vec![PeerEntry {
                device: 5,
                time_ms: T0_MS,
                value: 1.0,
            }],
        },
    ];
    expected.sort_by_key(|g| g.key);
    assert_eq!(summary.groups, expected);
    assert_eq!(summary.time_ms, T0_MS + 10);
    // Nothing new: an empty summary.
    assert!(table.export(T0_MS + 20).groups.is_empty());
    // Entries already stale at export are left out.
    table.observe(key, 3, T0_MS, 5.0);
    assert!(table.export(T0_MS + 200_000).groups.is_empty());
}

#[test]
fn summaries_cross_threads_and_round_trip_through_json() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Summary>();
    send_sync::<std::sync::Arc<Summary>>();
    let mut table = PeerTable::new(PeersConfig::default());
    table.observe(location("lab"), 1, T0_MS, 21.25);
    table.observe(region("north"), 1, T0_MS, 21.25);
    let summary = table.export(T0_MS);
    let json = serde_json::to_string(&summary).unwrap();
    let back: Summary = serde_json::from_str(&json).unwrap();
    assert_eq!(back, summary);
    assert_eq!(back.groups.len(), 2);
}

#[test]
fn stale_values_are_ignored() {
    // Exact checks (a snapshot per check), so freshness is judged at each reading's time.
    let config = PeersConfig {
        bucket_ms: 0,
        ..PeersConfig::default()
    };
    let key = location("lab");
    let mut table = PeerTable::new(config);
    for d in 1..=4 {
        table.observe(key, d, T0_MS, 20.0);
    }
    // Exactly fresh_ms later the peers still count; one ms more and they do not.
    let at_edge = T0_MS + config.fresh_ms;
    assert!(table.check(key, 9, at_edge, 80.0, KIND).is_some());
    assert_eq!(table.check(key, 9, at_edge + 1, 80.0, KIND), None);
    // Two fresh and two stale: too few.
    table.observe(key, 1, at_edge + 1, 20.0);
    table.observe(key, 2, at_edge + 1, 20.0);
    let later = at_edge + 1;
    assert_eq!(
        table.describe(key, 9, later, KIND).map(|v| v.peers),
        Some(2)
    );
    assert_eq!(table.check(key, 9, later, 80.0, KIND), None);
}

#[test]
fn a_snapshot_serves_its_bucket_then_is_rebuilt() {
    let config = PeersConfig::default();
    let key = location("lab");
    let mut table = PeerTable::new(config);
    for d in 1..=5 {
        table.observe(key, d, T0_MS, 20.0);
    }
    assert!(table.check(key, 9, T0_MS, 80.0, KIND).is_some());
    assert_eq!(table.counters().snapshots_built, 1);
    // The group moves to 80 within the bucket: the snapshot still says 20.
    for d in 1..=5 {
        table.observe(key, d, T0_MS + 1_000, 80.0);
    }
    assert!(table.check(key, 9, T0_MS + 2_000, 80.0, KIND).is_some());
    assert_eq!(table.counters().snapshots_built, 1);
    // A bucket later it is rebuilt with the new values.
    assert_eq!(
        table.check(key, 9, T0_MS + config.bucket_ms, 80.0, KIND),
        None
    );
    assert_eq!(table.counters().snapshots_built, 2);
}

#[test]
fn the_bounds_hold_and_are_counted() {
    let config = PeersConfig {
        group_devices_max: 8,
        groups_max: 3,
        ..PeersConfig::default()
    };
    let mut table = PeerTable::new(config);
    let key = location("lab");
    for d in 0..20u64 {
        table.observe(key, d, T0_MS + d, 20.0);
    }
    assert_eq!(table.group_devices(key), 8);
    assert_eq!(table.counters().devices_evicted, 12);
    // A stable sample: the eight smallest device ids are kept.
    let kept: Vec<u64> = table.groups[&key]
        .entries
        .iter()
        .map(|e| e.device)
        .collect();
    assert_eq!(kept, (0..8).collect::<Vec<_>>());
    // A device above all those kept is not swapped in.
    let mut old = Summary::default();
    old.groups.push(GroupSummary {
        key,
        entries: vec![PeerEntry {
            device: 100,
            time_ms: T0_MS,
            value: 20.0,
        }],
    });
    table.merge(1, &old);
    assert_eq!(table.group_devices(key), 8);
    assert!(!table.groups[&key].entries.iter().any(|e| e.device == 100));
    assert_eq!(table.counters().devices_evicted, 13);
    // Smaller ids arriving take the largest ones' places, one by one.
    let mut down = PeerTable::new(config);
    for d in (0..20u64).rev() {
        down.observe(key, d, T0_MS, 20.0);
    }
    let kept: Vec<u64> = down.groups[&key].entries.iter().map(|e| e.device).collect();
    assert_eq!(kept, (0..8).collect::<Vec<_>>());
    assert_eq!(down.counters().devices_evicted, 12);
    // Groups beyond the bound are refused, locally and from summaries.
    for name in ["a", "b", "c", "d"] {
        table.observe(location(name), 1, T0_MS, 20.0);
    }
    table.merge(1, &{
        let mut s = Summary::default();
        s.groups.push(GroupSummary {
            key: location("e"),
            entries: vec![PeerEntry {
                device: 1,
                time_ms: T0_MS,
                value: 1.0,
            }],
        });
        s
    });
    assert_eq!(table.groups(), 3);
    assert_eq!(table.counters().groups_refused, 3);
    // Pruning frees the places of dead groups.
    let later = T0_MS + config.fresh_ms + config.bucket_ms + 100;
    table.observe(location("a"), 1, later, 20.0);
    table.prune(later);
    assert_eq!(table.groups(), 1);
    table.observe(location("d"), 1, later, 20.0);
    assert_eq!(table.groups(), 2);
}

#[test]
fn a_region_uses_the_looser_limit() {
    let config = PeersConfig::default();
    let mut table = PeerTable::new(config);
    let (loc, reg) = (location("lab"), region("north"));
    let mut normal = Normal::new(9);
    // Forty peers: the small-group correction (5.4) is under both limits.
    for d in 1..=40u64 {
        let v = (20.0 + 0.5 * normal.next()) as f32;
        table.observe(loc, d, T0_MS, v);
        table.observe(reg, d, T0_MS, v);
    }
    let view = table.describe(loc, 99, T0_MS, KIND).unwrap();
    let spread = view.spread.max(view.spread_floor);
    // Eight spreads out: over the location's 6, under the region's 10.
    let v = (view.median + 8.0 * spread) as f32;
    let at_location = table.evaluate(loc, 99, T0_MS, v, KIND).unwrap();
    let at_region = table.evaluate(reg, 99, T0_MS, v, KIND).unwrap();
    assert!((at_location.z - 8.0).abs() < 1e-3, "{at_location:?}");
    assert!(at_location.signal.is_some());
    assert!((at_region.z - 8.0).abs() < 1e-3, "{at_region:?}");
    assert_eq!(at_region.signal, None);
    // Thirteen spreads: both, the region less strongly.
    let v = (view.median + 13.0 * spread) as f32;
    let loc_strength = table.check(loc, 99, T0_MS, v, KIND).unwrap().strength;
    let reg_strength = table.check(reg, 99, T0_MS, v, KIND).unwrap().strength;
    assert_eq!(loc_strength, 1.0);
    assert!((reg_strength - 0.65).abs() < 1e-3, "{reg_strength}");
}

#[test]
fn non_finite_values_do_not_poison_the_median() {
    let mut table = PeerTable::new(PeersConfig::default());
    let key = location("lab");
    for (d, v) in [
        (1, 20.0),
        (2, 20.5),
        (3, 21.0),
        (4, f32::NAN),
        (5, f32::INFINITY),
    ] {
        table.observe(key, d, T0_MS, v);
    }
    let mut remote = Summary::default();
    remote.groups.push(GroupSummary {
        key,
        entries: vec![
            PeerEntry {
                device: 6,
                time_ms: T0_MS,
                value: f32::NEG_INFINITY,
            },
            PeerEntry {
                device: 7,
                time_ms: T0_MS,
                value: 21.5,
            },
        ],
    });
    table.merge(1, &remote);
    assert_eq!(table.counters().values_refused, 3);
    let view = table.describe(key, 9, T0_MS, KIND).unwrap();
    assert_eq!((view.median, view.peers), (20.75, 4));
    assert!(view.spread.is_finite());
    assert_eq!(table.check(key, 9, T0_MS, f32::NAN, KIND), None);
    assert_eq!(table.check(key, 9, T0_MS, f32::INFINITY, KIND), None);
}

#[test]
fn batteries_and_vendor_kinds_are_not_compared() {
    let config = PeersConfig::default();
    assert_eq!(config.spread_floor(Kind::BatteryPct), None);
    assert_eq!(config.spread_floor(Kind::BatteryV), None);
    assert_eq!(config.spread_floor(Kind::Other(0x8001)), None);
    assert_eq!(config.spread_floor(Kind::Co2Ppm), Some(10.0));
    let key = GroupKey::new(Scope::Location, "lab", Kind::BatteryPct).unwrap();
    let mut table = PeerTable::new(config);
    for d in 1..=5 {
        table.observe(key, d, T0_MS, 100.0);
    }
    assert_eq!(table.check(key, 9, T0_MS, 5.0, Kind::BatteryPct), None);
}

#[test]
fn small_groups_are_held_to_the_honest_quantile() {
    assert_eq!(honest_z_max(3), f64::INFINITY);
    assert_eq!(honest_z_max(4), 170.0);
    assert_eq!(honest_z_max(19), 7.9);
    assert_eq!(honest_z_max(30), 6.0);
    assert!((honest_z_max(60) - 4.9).abs() < 1e-12);
    // Never rising with more peers.
    for n in 4..500 {
        assert!(honest_z_max(n + 1) <= honest_z_max(n), "{n}");
    }
    // In use: 19 peers, a reading 7 spreads out is within what honest groups show.
    let mut table = PeerTable::new(PeersConfig::default());
    let key = location("lab");
    let mut normal = Normal::new(21);
    for d in 1..=19u64 {
        table.observe(key, d, T0_MS, (20.0 + 0.5 * normal.next()) as f32);
    }
    let view = table.describe(key, 99, T0_MS, KIND).unwrap();
    let v = (view.median + 7.0 * view.spread.max(view.spread_floor)) as f32;
    let score = table.evaluate(key, 99, T0_MS, v, KIND).unwrap();
    assert_eq!(score.z_limit, 7.9);
    assert_eq!(score.signal, None, "{score:?}");
}

#[test]
fn group_keys_are_stable_and_carry_their_scope() {
    // Pinned: the hash crosses shards and versions.
    assert_eq!(location("lab").raw(), 0xc7d1_e118_6287_e1a8);
    assert_eq!(region("lab").raw(), 0x912e_f7bd_5488_cec7);
    assert_eq!(location("lab").scope(), Scope::Location);
    assert_eq!(region("lab").scope(), Scope::Region);
    assert_eq!(GroupKey::new(Scope::Location, "", KIND), None);
    assert_ne!(
        GroupKey::new(Scope::Location, "lab", Kind::Co2Ppm),
        Some(location("lab"))
    );
    assert_ne!(location("lab"), location("lab2"));
}

#[test]
fn the_reference_is_what_a_check_compares_with() {
    let mut table = PeerTable::new(PeersConfig::default());
    let key = location("lab");
    let mut normal = Normal::new(4);
    for d in 1..=9u64 {
        table.observe(key, d, T0_MS, (20.0 + 0.5 * normal.next()) as f32);
    }
    for device in [3, 99] {
        let reference = table.reference(key, device, T0_MS, KIND).unwrap();
        let score = table.evaluate(key, device, T0_MS, 25.0, KIND).unwrap();
        assert_eq!(reference.median, score.view.median);
        assert_eq!(
            reference.spread,
            score.view.spread.max(score.view.spread_floor)
        );
        assert_eq!(reference.peers, score.view.peers);
        assert_eq!(
            score.z,
            (25.0 - reference.median).abs() / reference.spread,
            "{score:?}"
        );
    }
    // Device 3 is left out, an outsider is not.
    assert_eq!(table.reference(key, 3, T0_MS, KIND).unwrap().peers, 8);
    assert_eq!(table.reference(key, 99, T0_MS, KIND).unwrap().peers, 9);
    // Near-identical values: the spread is the kind's floor.
    let tight = location("tight");
    for d in 1..=5u64 {
        table.observe(tight, d, T0_MS, 20.0);
    }
    let floor = table.config().spread_floor(KIND).unwrap();
    let reference = table.reference(tight, 99, T0_MS, KIND).unwrap();
    assert_eq!((reference.median, reference.spread), (20.0, floor));
    // No reference for kinds never compared, unknown groups, or a group of one.
    assert_eq!(table.reference(key, 3, T0_MS, Kind::BatteryPct), None);
    assert_eq!(table.reference(location("none"), 3, T0_MS, KIND), None);
    let alone = location("alone");
    table.observe(alone, 1, T0_MS, 20.0);
    assert_eq!(table.reference(alone, 1, T0_MS, KIND), None);
    assert_eq!(
        table.reference(alone, 2, T0_MS, KIND).map(|r| r.peers),
        Some(1)
    );
}

#[test]
fn a_device_evicted_after_the_snapshot_is_still_not_its_own_peer() {
    let config = PeersConfig {
        group_devices_max: 6,
        ..PeersConfig::default()
    };
    let mut table = PeerTable::new(config);
    let key = location("lab");
    for d in 1..=5u64 {
        table.observe(key, d, T0_MS, 20.0 + 0.1 * d as f32);
    }
    table.observe(key, 9, T0_MS, 80.0);
    // The snapshot holds device 9's 80.
    assert_eq!(table.reference(key, 9, T0_MS, KIND).unwrap().peers, 5);
    // A smaller id takes the largest's place within the bucket.
    table.observe(key, 0, T0_MS, 20.0);
    assert_eq!(table.group_devices(key), 6);
    let reference = table.reference(key, 9, T0_MS + 1, KIND).unwrap();
    assert_eq!((reference.median, reference.peers), (20.25, 6));
    assert!(table.check(key, 9, T0_MS + 1, 80.0, KIND).is_some());
    // Pruning a device the snapshot holds does the same.
    let later = T0_MS + 60_000;
    for d in 1..=5u64 {
        table.observe(key, d, later, 20.0 + 0.1 * d as f32);
    }
    table.observe(key, 0, later - 10_000, 50.0);
    let t = later + config.fresh_ms - 20_000;
    assert_eq!(table.reference(key, 7, t, KIND).unwrap().peers, 6);
    // Device 0 is now too old for any check near this time; the others are not.
    table.prune(later - 10_000 + config.fresh_ms + config.bucket_ms + 1);
    assert_eq!(table.group_devices(key), 5);
    assert_eq!(table.reference(key, 7, t, KIND).unwrap().peers, 5);
}

/// Median and MAD by sorting, the obvious way.
fn brute_force(values: &[f32]) -> Option<(f64, f64)> {
    fn median(sorted: &[f64]) -> f64 {
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        }
    }
    if values.is_empty() {
        return None;
    }
    let mut x: Vec<f64> = values.iter().map(|v| f64::from(*v)).collect();
    x.sort_by(f64::total_cmp);
    let m = median(&x);
    let mut d: Vec<f64> = x.iter().map(|v| (v - m).abs()).collect();
    d.sort_by(f64::total_cmp);
    Some((m, median(&d)))
}

proptest! {
    #[test]
    fn leave_one_out_median_and_mad_match_sorting(
        mut values in proptest::collection::vec(
            prop_oneof![-1e6f32..1e6, (-5i8..5).prop_map(f32::from)],
            0..60,
        ),
        order in any::<u64>(),
    ) {
        values.sort_by(f32::total_cmp);
        // One memo for every device of the snapshot, as checks share it, asked in a
        // scrambled order, then a device outside the snapshot.
        let mut memo = Memo::default();
        let n = values.len();
        let mut skips: Vec<Option<usize>> = (0..n).map(Some).collect();
        skips.rotate_left((order as usize) % n.max(1));
        if order & 1 == 1 {
            skips.reverse();
        }
        skips.push(None);
        for skip in skips {
            let mut rest = values.clone();
            let own = skip.map(|s| rest.remove(s));
            let fast = robust_excluding(&values, &mut memo, own);
            let slow = brute_force(&rest);
            match (fast, slow) {
                (Some((m, mad, count)), Some((m2, mad2))) => {
                    // Exactly what sorting the others gives, not merely close.
                    prop_assert_eq!(m, m2, "{:?} without {:?}", values, skip);
                    prop_assert_eq!(mad, mad2, "{:?} without {:?}", values, skip);
                    prop_assert_eq!(count as usize, rest.len());
                }
                (a, b) => prop_assert!(a.is_none() && b.is_none(), "{:?} {:?}", a, b),
            }
        }
    }

    #[test]
    fn check_then_observe_is_check_then_observe(
        ops in proptest::collection::vec(
            (0u8..5, 0u8..4, 0u64..12, 0u64..400_000, prop_oneof![
                15.0f32..25.0,
                (-3i8..3).prop_map(|v| 20.0 + f32::from(v) / 10.0),
                Just(f32::NAN),
                Just(80.0f32),
            ]),
            1..300,
        ),
        devices_max in 1u32..8,
        bucket_ms in prop_oneof![Just(0u64), 1u64..100_000],
    ) {
        let config = PeersConfig {
            group_devices_max: devices_max,
            bucket_ms,
            peers_min: 2,
            ..PeersConfig::default()
        };
        let (mut apart, mut together) = (PeerTable::new(config), PeerTable::new(config));
        let mut remote = PeerTable::new(config);
        let keys = [location("a"), location("b"), region("a"), region("b")];
        let mut t = T0_MS;
        for (op, group, device, dt, value) in ops {
            let key = keys[usize::from(group)];
            t += dt / 100;
            match op {
                0 | 1 => {
                    let a = apart.evaluate(key, device, t, value, KIND);
                    if value.is_finite() {
                        apart.observe(key, device, t, value);
                    } else {
                        apart.counters.values_refused += 1;
                    }
                    let b = together.check_then_observe(key, device, t, value, KIND);
                    prop_assert_eq!(a, b);
                }
                2 => remote.observe(key, device, t - dt.min(t - T0_MS), value),
                3 => {
                    let summary = remote.export(t);
                    apart.merge(1, &summary);
                    together.merge(1, &summary);
                }
                _ => {
                    apart.prune(t);
                    together.prune(t);
                }
            }
            prop_assert_eq!(apart.counters(), together.counters());
            for key in keys {
                let at = t + dt % 7;
                prop_assert_eq!(
                    apart.describe(key, device, at, KIND),
                    together.describe(key, device, at, KIND)
                );
                let reference = together.reference(key, device, at, KIND);
                prop_assert_eq!(reference, apart.reference(key, device, at, KIND));
                if bucket_ms == 0 {
                    // A snapshot per check: the reference is that of sorting the other
                    // devices' fresh values.
                    let others: Vec<f32> = together
                        .groups
                        .get(&key)
                        .map(|g| {
                            g.entries
                                .iter()
                                .filter(|e| e.device != device && is_fresh(&config, e, at))
                                .map(|e| e.value)
                                .collect()
                        })
                        .unwrap_or_default();
                    let floor = config.spread_floor(KIND).unwrap();
                    let slow = brute_force(&others).map(|(median, mad)| PeerReference {
                        median,
                        spread: (MAD_TO_SIGMA * mad).max(floor),
                        peers: others.len() as u32,
                    });
                    prop_assert_eq!(reference, slow);
                }
            }
        }
        prop_assert_eq!(apart.export(t), together.export(t));
    }

    #[test]
    fn a_group_keeps_the_smallest_ids_and_finds_every_one(
        ops in proptest::collection::vec((0u8..8, 0u64..48, 0u64..100_000), 1..400),
        devices_max in 1u32..12,
    ) {
        // The sample a bounded group must hold, the plain way: device -> time.
        let config = PeersConfig {
            group_devices_max: devices_max,
            ..PeersConfig::default()
        };
        let keep_ms = config.fresh_ms + config.bucket_ms;
        let mut table = PeerTable::new(config);
        let key = location("lab");
        let mut model = std::collections::BTreeMap::<u64, u64>::new();
        let mut t = T0_MS;
        for (op, device, dt) in ops {
            t += dt;
            // Ids far apart and close together, so probes collide and wrap.
            let device = if device % 2 == 0 { device } else { device << 58 };
            if op == 0 {
                table.prune(t);
                model.retain(|_, time| *time + keep_ms >= t);
            } else {
                let time = t - dt.min(t - T0_MS) / 2;
                table.observe(key, device, time, 20.0);
                if let Some(held) = model.get_mut(&device) {
                    *held = time;
                } else if model.len() < devices_max as usize {
                    model.insert(device, time);
                } else if let Some((&largest, _)) = model.last_key_value() {
                    if device < largest {
                        model.remove(&largest);
                        model.insert(device, time);
                    }
                }
            }
            let Some(group) = table.groups.get(&key) else {
                prop_assert!(model.is_empty());
                continue;
            };
            // Sorted by device, as the bound and the exports rely on.
            let held: Vec<(u64, u64)> = group.entries.iter().map(|e| (e.device, e.time_ms)).collect();
            let expected: Vec<(u64, u64)> = model.iter().map(|(d, t)| (*d, *t)).collect();
            prop_assert_eq!(&held, &expected);
            for (i, (device, _)) in expected.iter().enumerate() {
                prop_assert_eq!(group.find(*device), Some(i));
            }
            prop_assert_eq!(group.find(u64::MAX - 1), None);
        }
    }

    #[test]
    fn no_input_panics_and_strengths_are_in_the_unit_interval(
        ops in proptest::collection::vec(
            (0u8..6, 0u8..4, 0u64..12, 0u64..400_000, prop_oneof![
                -50.0f32..50.0,
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(f32::MAX),
                Just(-f32::MAX),
            ]),
            1..400,
        ),
        devices_max in 0u32..6,
        groups_max in 0u32..3,
        peers_min in 0u32..4,
        bucket_ms in 0u64..100_000,
    ) {
        let config = PeersConfig {
            group_devices_max: devices_max,
            groups_max,
            peers_min,
            bucket_ms,
            ..PeersConfig::default()
        };
        let mut tables = [PeerTable::new(config), PeerTable::new(config)];
        let keys = [location("a"), location("b"), region("a"), region("b")];
        for (op, group, device, dt, value) in ops {
            let key = keys[usize::from(group)];
            let t = T0_MS + dt;
            let table = &mut tables[(device % 2) as usize];
            match op {
                0 | 1 => table.observe(key, device, t, value),
                2 => {
                    if let Some(score) = table.evaluate(key, device, t, value, KIND) {
                        prop_assert!(score.z >= 0.0 && !score.z.is_nan(), "{:?}", score);
                        if let Some(s) = score.signal {
                            prop_assert_eq!(s.detector, Detector::Peers);
                            prop_assert!((0.0..=1.0).contains(&s.strength), "{:?}", s);
                        }
                    }
                    let _ = table.describe(key, device, t, KIND);
                }
                3 => {
                    let summary = tables[0].export(t);
                    tables[1].merge(0, &summary);
                }
                4 => {
                    let summary = tables[1].export(t);
                    tables[0].merge(1, &summary);
                }
                _ => table.prune(t),
            }
            for table in &tables {
                prop_assert!(table.groups() <= groups_max as usize);
                for key in keys {
                    prop_assert!(table.group_devices(key) <= devices_max as usize);
                }
            }
        }
    }
}
