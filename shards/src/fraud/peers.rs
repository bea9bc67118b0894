//! Peers: a reading far from the robust median of the other devices of its group at the
//! same time.
//!
//! A fabricated series can be plausible on its own (a smooth daily cycle, honest-looking
//! noise); it rarely agrees with the devices next to it. A group is one (scope, name, kind):
//! the devices of one `location`, or more loosely of one `region`, reporting one kind.
//!
//! # Formula
//!
//! ```text
//! z = |v - median(others)| / max(1.4826 · MAD(others), spread_floor(kind))
//! ```
//!
//! over the values of the *other* devices of the group whose time is within `fresh_ms` of
//! the reading's. 1.4826 · MAD is the standard deviation of a normal sample; median and MAD
//! ignore up to half the group being wild, so a few fraudsters cannot drag the reference.
//! The floor ([`PeersConfig::spread_floor`]: the kind's noise floor times
//! `spread_floor_factor`) keeps a group of near-identical honest sensors from firing on a
//! hundredth of a degree. [`Detector::Peers`] fires when `z` is over the limit, with
//! strength [`strength_over`]`(z, limit)`, and only with at least `peers_min` others:
//!
//! ```text
//! limit = max(z_max of the scope, honest_z_max(peers))
//! ```
//!
//! `location_z_max`, or `region_z_max` (looser: a region spans real climate differences);
//! [`honest_z_max`] is the small-group correction: the z an honest reading exceeds once in
//! 10 000 among that many normal peers (41 with 6 peers, 15 with 10, 7.9 with 19, 6 with
//! 30). Without it, 20 honest devices with calibration offsets fire now and then against
//! the default 6, and a group of 5 fires on about 5 % of honest readings.
//!
//! # Cost: a snapshot per group and bucket, O(1) per check
//!
//! Each group keeps its entries (device, time, latest value) sorted by device, with an
//! index from device to entry (open addressing on the id), so a reading finds its entry
//! in O(1); [`PeerTable::check_then_observe`], the engine's call, finds the group and the
//! entry once for the check and the observation. A group also keeps a *snapshot*: its
//! fresh values sorted, taken at the first check whose time is `bucket_ms` or more away
//! from the previous snapshot's (or once a small group gained a device); each entry notes
//! its value in it. The median and MAD of the others (the snapshot without the checking
//! device's own value) take one of three forms, depending only on where that value falls
//! against the two middle values: each form is a median and three distances around it,
//! computed by the first check that needs it (O(n), merging outwards from the median),
//! and then O(1) for every other check of the bucket (the reasoning is at `Memo`; a
//! property test holds the result equal to sorting the others). Taking a snapshot sorts
//! at most `group_devices_max` values, once per group and bucket. A device whose clock
//! sits far from its group's takes a new snapshot on each of its readings (bounded by its
//! own rate, at O(n log n)); so does a group whose devices report further apart than
//! `bucket_ms`, which then reads slowly: the cost per reading is highest where the rate is
//! lowest.
//!
//! So a check sees its peers as they were at the snapshot: values up to
//! `fresh_ms + bucket_ms` from its own time, and values observed after the snapshot only
//! from the next bucket on. Fine for climate series (minutes); documented so nobody is
//! surprised in a test (`bucket_ms = 0` rebuilds at every check: exact, O(n log n)).
//! [`PeerTable::reference`] gives the same reference to another detector.
//!
//! Measured in release (`shards/tests/fraud_cost.rs`, `check_then_observe`, best of seven
//! in CPU time, three runs on this shared 2-core machine, 2026-12-01): a region of 1 000
//! churning over the 256 bound 0.08-0.12 µs per reading (0.20-0.32 with the leave-one-out
//! search of each check, side by side); a group of 20 reporting 3 s apart, a snapshot
//! every second reading, 0.24-0.32 µs, and one of 256, a snapshot every 20 readings,
//! 0.36-0.47 µs: both are the snapshots' cost, as before.
//!
//! # Time
//!
//! Every `time_ms` is one clock chosen by the caller, the same for all devices and
//! shards: "the same time" is within `fresh_ms` of it. Device time is the issue's meaning;
//! receive time would resist a forged device clock (a past day re-sent with its old
//! timestamps finds no fresh peers by device time, so passes here; the timing detector is
//! the one for it).
//!
//! # Across shards
//!
//! Each shard sees its own devices. [`PeerTable::export`] (on a timer, not per reading)
//! lists the entries this shard observed since the previous export; the driver sends that
//! [`Summary`] to every other shard, whose [`PeerTable::merge`] stores them. A summary lost
//! in transit is not resent: each device's next reading replaces it. A remote entry
//! replaces the same shard's earlier entry for the device, or any other origin's entry
//! that is strictly older (a device that moved home shards). [`PeerTable::prune`] on a slow
//! timer drops entries too old for any check near now and groups left empty.
//!
//! # Limits
//!
//! - Bounds: `group_devices_max` entries per group and `groups_max` groups per table (a new
//!   group beyond it is refused, counted). A group larger than the bound keeps a stable
//!   sample, the devices with the smallest ids (hashes): a newcomer above all of them is
//!   not kept (counted), at O(1); a smaller one replaces the largest. A sampled device
//!   that stops reporting leaves its place at the next `prune`. Worst-case memory is about
//!   `groups_max · group_devices_max · 44` bytes (a 32-byte entry, two 4-byte index slots
//!   and a 4-byte snapshot value) plus about 300 bytes per group; in practice two entries
//!   per device of the network (its location and its region).
//! - Missed: a whole group fabricating together (the median moves with them); a fraud
//!   within the honest spread of the group, or within the small-group limit (a location of
//!   5 devices only catches gross lies, 160 spreads out); kinds without a spread floor
//!   (batteries: their charge is the device's own; vendor kinds) are never compared; a
//!   group with fewer than `peers_min` other fresh devices. A local event (a fire next to one sensor) is an
//!   honest outlier that fires: peers are evidence, not proof (weight below 1).
//! - Group keys are a stable 64-bit hash ([`GroupKey::new`]); two groups colliding would
//!   share a median, with probability about `groups² / 2⁶⁵`.
//! - Non-finite values are never stored (the bounds detector fires on them) and never
//!   checked; non-finite remote values are refused and counted.

use super::persistence::noise_floor_default;
use super::{strength_over, Detector, Signal};
use ingestd_codec::envelope::Kind;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Registered kind codes are 1 to 11 (docs/PROTOCOL.md section 6); 0 is none.
const KIND_CODES: usize = 12;

/// 1.4826 · MAD estimates the standard deviation of normal data.
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// The spread floor per unit of the kind's noise floor: honest co-located sensors differ by
/// their calibration (a tenth of a degree, ten ppm of CO₂), well above their resolution.
pub const SPREAD_FLOOR_FACTOR_DEFAULT: f32 = 10.0;

/// The z an honest reading exceeds with probability 1e-4 when compared with `peers`
/// others, all drawn from one normal distribution: the median and MAD of a handful of
/// values are often far off (with 4 or 5 values a near tie in the middle makes the MAD
/// nearly 0), so z has heavy tails in small groups. Measured by simulation (2 million
/// draws per group size, xorshift and Box-Muller): the table up to 30 peers, rounded up;
/// beyond, `3.9 + 60 / peers`, which bounds the measurements from 30 to 40 and tends to
/// the normal 3.9. Under 4 peers no finite limit is meaningful (one value has a MAD of 0;
/// with 2 or 3 the quantile is in the thousands): infinite.
#[must_use]
pub fn honest_z_max(peers: u32) -> f64 {
    const TABLE: [f64; 27] = [
        170.0, 160.0, 41.0, 41.0, 22.0, 22.0, 15.0, 15.0, 12.0, 12.0, 9.9, 9.9, 8.7, 8.7, 7.9, 7.9,
        7.4, 7.4, 7.0, 7.0, 6.6, 6.6, 6.4, 6.3, 6.2, 6.1, 6.0,
    ];
    match peers {
        0..=3 => f64::INFINITY,
        4..=30 => TABLE[peers as usize - 4],
        _ => 3.9 + 60.0 / f64::from(peers),
    }
}

/// Which kind of group: a location (tight) or a region (loose).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The devices sharing a registry `location`.
    Location,
    /// The devices sharing a registry `region`.
    Region,
}

/// One group: a stable hash of (scope, name, kind code), with the scope in bit 0.
///
/// The hash is FNV-1a 64 over the bytes `[scope tag] [name, UTF-8] [kind code, u16
/// little-endian]` (scope tag 1 for a location, 2 for a region), then bit 0 is set to the
/// scope (0 location, 1 region). Stable across processes and versions: keys travel between
/// shards in [`Summary`]s, so changing the hash is a breaking change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupKey(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

impl GroupKey {
    /// The group of `name` (a location or region) for a kind; `None` for an empty name (a
    /// device without a location has no location peers).
    #[must_use]
    pub fn new(scope: Scope, name: &str, kind: Kind) -> Option<GroupKey> {
        if name.is_empty() {
            return None;
        }
        Some(GroupKey::of(GroupKey::base(scope, name)?, scope, kind))
    }

    /// The part of a key that depends on the scope and the name only (`None` for an empty
    /// name), so a device hashes its location once and each reading adds only its kind.
    #[must_use]
    pub fn base(scope: Scope, name: &str) -> Option<u64> {
        if name.is_empty() {
            return None;
        }
        let tag: u8 = match scope {
            Scope::Location => 1,
            Scope::Region => 2,
        };
        Some(fnv1a(fnv1a(FNV_OFFSET, &[tag]), name.as_bytes()))
    }

    /// The key of a kind in a group whose [`GroupKey::base`] is `base`.
    #[must_use]
    pub fn of(base: u64, scope: Scope, kind: Kind) -> GroupKey {
        let hash = fnv1a(base, &kind.code().to_le_bytes());
        let bit = match scope {
            Scope::Location => 0,
            Scope::Region => 1,
        };
        GroupKey((hash & !1) | bit)
    }

    /// The group's scope (bit 0 of the key).
    #[must_use]
    pub fn scope(self) -> Scope {
        if self.0 & 1 == 0 {
            Scope::Location
        } else {
            Scope::Region
        }
    }

    /// The raw 64-bit key.
    #[must_use]
    pub fn raw(self) -> u64 {
        self.0
    }
}

/// Parameters of the peers detector (one table per shard; the floor depends on the kind).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeersConfig {
    /// A group's snapshot is rebuilt when a check's time is this far from the snapshot's
    /// (0: at every check, exact but O(n log n) per check).
    pub bucket_ms: u64,
    /// A peer value counts when its time is within this of the reading's time.
    pub fresh_ms: u64,
    /// Other fresh devices needed before the detector may fire (under 4 nothing fires
    /// anyway: [`honest_z_max`]).
    pub peers_min: u32,
    /// Robust z above which a reading fires against its location.
    pub location_z_max: f32,
    /// Robust z above which a reading fires against its region (looser).
    pub region_z_max: f32,
    /// Entries kept per group; a new device beyond it evicts the oldest entry.
    pub group_devices_max: u32,
    /// Groups kept per table; a new group beyond it is refused.
    pub groups_max: u32,
    /// The spread floor in units of the kind's noise floor.
    pub spread_floor_factor: f32,
}

impl Default for PeersConfig {
    fn default() -> Self {
        PeersConfig {
            bucket_ms: 5_000,
            fresh_ms: 120_000,
            peers_min: 4,
            location_z_max: 6.0,
            region_z_max: 10.0,
            group_devices_max: 256,
            groups_max: 65_536,
            spread_floor_factor: SPREAD_FLOOR_FACTOR_DEFAULT,
        }
    }
}

impl PeersConfig {
    /// The smallest spread z divides by, in the kind's unit; `None` for kinds that are
    /// never compared with peers (batteries: their charge is the device's own; vendor kinds:
    /// no known floor). A non-finite or negative factor falls back to the default.
    #[must_use]
    pub fn spread_floor(&self, kind: Kind) -> Option<f64> {
        let factor = if self.spread_floor_factor.is_finite() && self.spread_floor_factor >= 0.0 {
            self.spread_floor_factor
        } else {
            SPREAD_FLOOR_FACTOR_DEFAULT
        };
        match kind {
            Kind::BatteryPct | Kind::BatteryV | Kind::Other(_) => None,
            _ => Some(f64::from(noise_floor_default(kind)) * f64::from(factor)),
        }
    }

    /// The z limit of a scope (a non-finite or negative limit falls back to the default).
    #[must_use]
    pub fn z_max(&self, scope: Scope) -> f64 {
        let (limit, fallback) = match scope {
            Scope::Location => (self.location_z_max, 6.0),
            Scope::Region => (self.region_z_max, 10.0),
        };
        if limit.is_finite() && limit >= 0.0 {
            f64::from(limit)
        } else {
            fallback
        }
    }
}

/// One device's latest value as a shard saw it: the unit of exchange between shards.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The device id.
    pub device: u64,
    /// The reading's time, in ms (the clock the table is fed with).
    pub time_ms: u64,
    /// The value, in the kind's unit.
    pub value: f32,
}

/// The entries of one group in a [`Summary`], sorted by device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// The group.
    pub key: GroupKey,
    /// The entries observed since the previous export.
    pub entries: Vec<PeerEntry>,
}

/// What one shard observed since its previous export, for the other shards; groups sorted
/// by key, so the same observations give the same summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The exporter's time at export, in ms.
    pub time_ms: u64,
    /// The groups with new entries.
    pub groups: Vec<GroupSummary>,
}

/// What the table saw around a reading, for an operator (`ingestd fraud explain`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerView {
    /// Median of the other devices' fresh values, in the kind's unit.
    pub median: f64,
    /// 1.4826 · MAD of those values (before the floor), in the kind's unit.
    pub spread: f64,
    /// The floor the spread is raised to, in the kind's unit.
    pub spread_floor: f64,
    /// How many other devices contributed.
    pub peers: u32,
}

/// A reading checked against its peers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerScore {
    /// The reference the reading was compared with.
    pub view: PeerView,
    /// `|v - median| / max(spread, spread_floor)`.
    pub z: f64,
    /// The limit z was held to: the scope's, or the small-group correction.
    pub z_limit: f64,
    /// Set when z is over `z_limit`.
    pub signal: Option<Signal>,
}

/// A group's reference for one device, as a check of it sees it (another detector may
/// compare with it too: [`PeerTable::reference`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerReference {
    /// Median of the other devices' fresh values, in the kind's unit.
    pub median: f64,
    /// 1.4826 · MAD of those values raised to the kind's spread floor, in the kind's
    /// unit: what a check divides by.
    pub spread: f64,
    /// How many other devices contributed.
    pub peers: u32,
}

/// Counters of the bounds, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Entries refused because their group would be new and the table is at `groups_max`.
    pub groups_refused: u64,
    /// Entries evicted (or new ones dropped) at `group_devices_max`.
    pub devices_evicted: u64,
    /// Non-finite values not stored (local or remote).
    pub values_refused: u64,
    /// Snapshots built.
    pub snapshots_built: u64,
}

/// Where an entry came from: this shard ([`LOCAL`]) or a remote shard's summary (its
/// index, saturated below [`LOCAL`]: no machine has that many cores). A `u32`, not an
/// enum, so an entry stays 32 bytes.
type Origin = u32;

/// The origin of this shard's own observations.
const LOCAL: Origin = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Entry {
    device: u64,
    time_ms: u64,
    value: f32,
    /// The value the group's current snapshot holds for this device; NaN when it holds
    /// none (the entry was not fresh, or came after). Found with the entry, so a check
    /// that leaves the device out needs no second search.
    snapshot_value: f32,
    origin: Origin,
    /// A local observation not yet in an export.
    unexported: bool,
}

/// A group's fresh values at one time, and what checks computed from them so far.
#[derive(Debug, Default)]
struct Snapshot {
    /// The time the snapshot was taken for; `None` before the first or once invalidated.
    time_ms: Option<u64>,
    /// The group's `joined` count when it was taken.
    joined: u64,
    /// The fresh values, sorted ascending by `total_cmp` (all finite).
    values: Vec<f32>,
    /// Computed at the first check that needs it, then O(1) for the snapshot's life.
    memo: Memo,
}

/// The median and MAD of a snapshot's values without a device's own, in O(1) once the
/// snapshot's few cases are known.
///
/// Leaving out one value `v` of the sorted values `s` (`n` of them): the median of the
/// `n - 1` others sits at indices `a <= b` (equal when `n - 1` is odd) of what remains,
/// whose value `j` is `s[j]` or, once `j` reaches the left-out index, `s[j + 1]`. Leaving
/// out the first copy of `v`, that index is at or before `j` exactly when `v <= s[j]`; so
/// the median is one of three values, chosen by comparing `v` with `s[a]` and `s[b]`. The
/// MAD is a middle order statistic of the distances to that median: the distances of all
/// `n` values to it, `D` ascending, lose the one of `v`, and the `j`-th smallest of what
/// is left is `D[j]` when `|v - median| > D[j]`, else `D[j + 1]` (whichever copy of a tie
/// is removed leaves the same values). So each case keeps its median and three distances
/// (`D[j0..j0 + 3]`, `j0 = a`), found in O(n) by merging outwards from the median; the
/// case of a device outside the snapshot keeps the median and MAD of all `n`. Everything
/// is computed in f64 from the f32 values, as sorting the others would, so the result is
/// exactly that of sorting (a property test holds them equal).
#[derive(Clone, Copy, Debug, Default)]
struct Memo {
    /// Median and MAD of all the values (a device without a value in the snapshot).
    all: Option<(f64, f64)>,
    /// `s[a]` and `s[b]`, which pick a left-out value's case.
    at: Option<[f32; 2]>,
    /// Per case (the left-out value `<= s[a]`, `<= s[b]`, above).
    cases: [Option<LeaveOut>; 3],
}

#[derive(Clone, Copy, Debug, Default)]
struct LeaveOut {
    median: f64,
    distances: [f64; 3],
}

/// (median, MAD, count) of the sorted `values` without `own` (the device's value among
/// them, if any), completing `memo` as needed; `None` when nothing is left.
fn robust_excluding(values: &[f32], memo: &mut Memo, own: Option<f32>) -> Option<(f64, f64, u32)> {
    let n = values.len();
    let get = |i: usize| values.get(i).map_or(f64::NAN, |x| f64::from(*x));
    let middle = |a: usize, b: usize| {
        if a == b {
            get(a)
        } else {
            (get(a) + get(b)) / 2.0
        }
    };
    let Some(v) = own else {
        if n == 0 {
            return None;
        }
        let (median, mad) = *memo.all.get_or_insert_with(|| {
            let (a, b) = middle_indices(n);
            let median = middle(a, b);
            let [da, db] = distances_at(values, median, [a, b]);
            (median, if a == b { da } else { (da + db) / 2.0 })
        });
        return Some((median, mad, u32::try_from(n).unwrap_or(u32::MAX)));
    };
    if n < 2 {
        return None;
    }
    let (a, b) = middle_indices(n - 1);
    // Kept in the memo, so a check reads the values only to compute a case it is first in.
    let at = *memo.at.get_or_insert_with(|| [values[a], values[b]]);
    let case = if v.total_cmp(&at[0]).is_le() {
        0
    } else if v.total_cmp(&at[1]).is_le() {
        1
    } else {
        2
    };
    let LeaveOut { median, distances } = *memo.cases[case].get_or_insert_with(|| {
        let median = match case {
            0 => middle(a + 1, b + 1),
            1 => middle(a, b + 1),
            _ => middle(a, b),
        };
        LeaveOut {
            median,
            distances: distances_at(values, median, [a, a + 1, a + 2]),
        }
    });
    let own_distance = (f64::from(v) - median).abs();
    let kth = |i: usize| {
        if own_distance > distances[i] {
            distances[i]
        } else {
            distances[i + 1]
        }
    };
    let others = n - 1;
    let mad = if others % 2 == 1 {
        kth(0)
    } else {
        (kth(0) + kth(1)) / 2.0
    };
    Some((median, mad, u32::try_from(others).unwrap_or(u32::MAX)))
}

/// The indices of the middle value(s) of `n >= 1` sorted values.
fn middle_indices(n: usize) -> (usize, usize) {
    if n % 2 == 1 {
        (n / 2, n / 2)
    } else {
        (n / 2 - 1, n / 2)
    }
}

/// The distances `|x - median|` of the given ranks (ascending, 0 the smallest) among the
/// sorted values' distances to `median`, in O(largest rank): the run below the median read
/// leftwards and the run at or above it read rightwards are both ascending, so merging
/// them lists the distances in order. A rank beyond the values is NaN.
fn distances_at<const K: usize>(sorted: &[f32], median: f64, ranks: [usize; K]) -> [f64; K] {
    let mut out = [f64::NAN; K];
    // Values below the median: indices [0, below).
    let below = sorted.partition_point(|x| f64::from(*x) < median);
    let (mut left, mut right) = (below, below);
    let mut wanted = 0;
    for rank in 0..sorted.len() {
        if wanted == K {
            break;
        }
        let l = sorted
            .get(left.wrapping_sub(1))
            .map_or(f64::INFINITY, |x| median - f64::from(*x));
        let r = sorted
            .get(right)
            .map_or(f64::INFINITY, |x| f64::from(*x) - median);
        let distance = if l < r {
            left -= 1;
            l
        } else {
            right += 1;
            r
        };
        while wanted < K && ranks[wanted] == rank {
            out[wanted] = distance;
            wanted += 1;
        }
    }
    out
}

#[derive(Debug, Default)]
struct Group {
    /// Sorted by device, at most `group_devices_max`.
    entries: Vec<Entry>,
    /// Where each device's entry is, so a reading finds it in O(1) instead of a binary
    /// search whose every step is a cache miss in a big group: open addressing on the
    /// device id, each slot 0 (empty) or an index into `entries` plus 1, at least twice
    /// as many slots as entries. Rebuilt when entries move (a device joins or leaves: not
    /// per reading in steady state).
    slots: Vec<u32>,
    /// Devices that joined the group so far (new entries), to refresh small snapshots.
    joined: u64,
    /// Listed in [`PeerTable::dirty`].
    dirty: bool,
    snapshot: Snapshot,
}

impl Group {
    /// Makes the snapshot serve a check at `time_ms`, taking a new one if needed (reusing
    /// its vector); whether one was taken.
    #[inline]
    fn refresh(&mut self, config: &PeersConfig, time_ms: u64) -> bool {
        if snapshot_serves(config, &self.snapshot, self.joined, time_ms) {
            return false;
        }
        self.take_snapshot(config, time_ms);
        true
    }

    /// The snapshot of the entries fresh at `time_ms` (once per bucket: kept out of line).
    #[inline(never)]
    fn take_snapshot(&mut self, config: &PeersConfig, time_ms: u64) {
        let snapshot = &mut self.snapshot;
        snapshot.values.clear();
        for entry in &mut self.entries {
            entry.snapshot_value = if is_fresh(config, entry, time_ms) {
                snapshot.values.push(entry.value);
                entry.value
            } else {
                f32::NAN
            };
        }
        snapshot.values.sort_unstable_by(f32::total_cmp);
        snapshot.time_ms = Some(time_ms);
        snapshot.joined = self.joined;
        snapshot.memo = Memo::default();
    }

    /// (median, MAD, peers) for the device of entry `found`, if it has one.
    fn excluding(&mut self, found: Option<usize>) -> Option<(f64, f64, u32)> {
        let own = found.and_then(|i| snapshot_value(&self.entries, i));
        robust_excluding(&self.snapshot.values, &mut self.snapshot.memo, own)
    }

    /// The index of the device's entry.
    fn find(&self, device: u64) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut at = slot_hash(device) & mask;
        // At most half the slots are taken, so an empty one ends the probe; bounded anyway.
        for _ in 0..self.slots.len() {
            let i = (self.slots[at] as usize).checked_sub(1)?;
            if self.entries.get(i).is_some_and(|e| e.device == device) {
                return Some(i);
            }
            at = (at + 1) & mask;
        }
        None
    }

    /// Rebuilds `slots` after entries moved (reusing its allocation when it is big enough).
    fn reindex(&mut self) {
        let len = (2 * self.entries.len()).next_power_of_two().max(8);
        self.slots.clear();
        self.slots.resize(len, 0);
        let mask = len - 1;
        for (i, entry) in self.entries.iter().enumerate() {
            let mut at = slot_hash(entry.device) & mask;
            while self.slots[at] != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = u32::try_from(i + 1).unwrap_or(0);
        }
    }

    /// The snapshot no longer matches the entries (one it holds was removed): the next
    /// check takes a new one.
    fn invalidate(&mut self) {
        self.snapshot.time_ms = None;
    }
}

/// A device's first slot (device ids are hashes already; the multiply spreads ids that
/// are not, such as small test ids, over the high bits taken).
fn slot_hash(device: u64) -> usize {
    (device.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize
}

/// Whether an entry counts for a check at `time_ms`.
fn is_fresh(config: &PeersConfig, entry: &Entry, time_ms: u64) -> bool {
    entry.time_ms.abs_diff(time_ms) <= config.fresh_ms && entry.value.is_finite()
}

/// The configuration's values a check reads, checked once when the table is made.
#[derive(Clone, Copy, Debug)]
struct Limits {
    peers_min: u32,
    /// [`PeersConfig::spread_floor`] by kind code (`None`: never compared).
    floors: [Option<f64>; KIND_CODES],
    /// [`PeersConfig::z_max`] of a location and of a region.
    z_max: [f64; 2],
}

impl Limits {
    fn of(config: &PeersConfig) -> Limits {
        Limits {
            peers_min: config.peers_min,
            floors: std::array::from_fn(|code| {
                let kind = u16::try_from(code).ok().and_then(Kind::from_code)?;
                config.spread_floor(kind)
            }),
            z_max: [config.z_max(Scope::Location), config.z_max(Scope::Region)],
        }
    }

    fn floor(&self, kind: Kind) -> Option<f64> {
        match kind {
            // Vendor kinds are never compared, whatever code they were built with.
            Kind::Other(_) => None,
            _ => *self.floors.get(usize::from(kind.code()))?,
        }
    }
}

/// Keys are already FNV hashes: the map uses them as they are, so its layout (and any
/// iteration) is deterministic. Keys come from the registry and other shards, not from
/// devices, so there is no flooding to defend against.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a(self.0 ^ FNV_OFFSET, bytes);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The peer values one shard knows: its own devices' and the other shards' summaries.
pub struct PeerTable {
    config: PeersConfig,
    limits: Limits,
    groups: HashMap<GroupKey, Group, BuildHasherDefault<KeyHasher>>,
    /// Groups with unexported local entries, each once.
    dirty: Vec<GroupKey>,
    counters: PeerCounters,
}

impl PeerTable {
    /// An empty table.
    #[must_use]
    pub fn new(config: PeersConfig) -> PeerTable {
        PeerTable {
            config,
            limits: Limits::of(&config),
            groups: HashMap::default(),
            dirty: Vec::new(),
            counters: PeerCounters::default(),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PeersConfig {
        &self.config
    }

    /// The bound counters.
    #[must_use]
    pub fn counters(&self) -> PeerCounters {
        self.counters
    }

    /// Groups held.
    #[must_use]
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Entries held in a group (fresh or not).
    #[must_use]
    pub fn group_devices(&self, key: GroupKey) -> usize {
        self.groups.get(&key).map_or(0, |g| g.entries.len())
    }

    /// Records one of this shard's devices' latest value in a group. Non-finite values are
    /// not stored.
    pub fn observe(&mut self, key: GroupKey, device: u64, time_ms: u64, value: f32) {
        self.upsert(key, local_entry(device, time_ms, value));
    }

    /// Checks a reading against the other devices of its group: a [`Detector::Peers`]
    /// signal when it is too far from their median. `None` for a kind without peers, a
    /// non-finite value, an unknown group or fewer than `peers_min` fresh others.
    pub fn check(
        &mut self,
        key: GroupKey,
        device: u64,
        time_ms: u64,
        value: f32,
        kind: Kind,
    ) -> Option<Signal> {
        self.evaluate(key, device, time_ms, value, kind)?.signal
    }

    /// [`PeerTable::evaluate`] then [`PeerTable::observe`] of the same reading, finding the
    /// group and the device's entry once for both: what the engine does per reading (the
    /// score's median is the offset rule's reference).
    pub fn check_then_observe(
        &mut self,
        key: GroupKey,
        device: u64,
        time_ms: u64,
        value: f32,
        kind: Kind,
    ) -> Option<PeerScore> {
        let entry = local_entry(device, time_ms, value);
        let Some(group) = self.groups.get_mut(&key) else {
            // No group: nothing to compare with; the observation may start one.
            self.upsert(key, entry);
            return None;
        };
        let found = group.find(device);
        let signal = match self.limits.floor(kind) {
            Some(floor) if value.is_finite() => {
                if group.refresh(&self.config, time_ms) {
                    self.counters.snapshots_built += 1;
                }
                let robust = group.excluding(found);
                score(&self.limits, key, robust, value, floor)
            }
            _ => None,
        };
        if !value.is_finite() {
            self.counters.values_refused += 1;
            return signal;
        }
        store(
            &self.config,
            &mut self.counters,
            &mut self.dirty,
            key,
            group,
            found,
            entry,
        );
        signal
    }

    /// As [`PeerTable::check`], with the reference and the z (a feature for the model).
    pub fn evaluate(
        &mut self,
        key: GroupKey,
        device: u64,
        time_ms: u64,
        value: f32,
        kind: Kind,
    ) -> Option<PeerScore> {
        let spread_floor = self.limits.floor(kind)?;
        if !value.is_finite() {
            return None;
        }
        let robust = self.excluding(key, device, time_ms)?;
        score(&self.limits, key, Some(robust), value, spread_floor)
    }

    /// The reference a check of `device` at `time_ms` compares with: the group's robust
    /// median and spread (1.4826 · MAD, raised to the kind's floor) over the other devices'
    /// fresh values, and how many they are. `None` for a kind without peers, an unknown
    /// group or no other fresh device; `peers_min` is the caller's to apply (a check fires
    /// only from it). Takes a new snapshot when the group's does not serve `time_ms`, as a
    /// check would, so the two always agree.
    pub fn reference(
        &mut self,
        key: GroupKey,
        device: u64,
        time_ms: u64,
        kind: Kind,
    ) -> Option<PeerReference> {
        let spread_floor = self.limits.floor(kind)?;
        let (median, mad, peers) = self.excluding(key, device, time_ms)?;
        Some(PeerReference {
            median,
            spread: (MAD_TO_SIGMA * mad).max(spread_floor),
            peers,
        })
    }

    /// (median, MAD, peers) of the group's snapshot serving `time_ms` without the device.
    fn excluding(&mut self, key: GroupKey, device: u64, time_ms: u64) -> Option<(f64, f64, u32)> {
        let group = self.groups.get_mut(&key)?;
        if group.refresh(&self.config, time_ms) {
            self.counters.snapshots_built += 1;
        }
        let found = group.find(device);
        group.excluding(found)
    }

    /// What a check of `device` at `time_ms` compares with: the group's snapshot if it
    /// serves that time, otherwise the one a check would take (allocated here: this is for
    /// operators, not the reading path). `None` for a kind without peers, an unknown group
    /// or no other fresh device.
    #[must_use]
    pub fn describe(
        &self,
        key: GroupKey,
        device: u64,
        time_ms: u64,
        kind: Kind,
    ) -> Option<PeerView> {
        let spread_floor = self.limits.floor(kind)?;
        let group = self.groups.get(&key)?;
        let own = group.find(device).and_then(|i| group.entries.get(i));
        let (median, mad, peers) =
            if snapshot_serves(&self.config, &group.snapshot, group.joined, time_ms) {
                let own = own.map(|e| e.snapshot_value).filter(|v| !v.is_nan());
                let mut memo = group.snapshot.memo;
                robust_excluding(&group.snapshot.values, &mut memo, own)?
            } else {
                let mut fresh: Vec<f32> = group
                    .entries
                    .iter()
                    .filter(|e| is_fresh(&self.config, e, time_ms))
                    .map(|e| e.value)
                    .collect();
                fresh.sort_unstable_by(f32::total_cmp);
                let own = own
                    .filter(|e| is_fresh(&self.config, e, time_ms))
                    .map(|e| e.value);
                robust_excluding(&fresh, &mut Memo::default(), own)?
            };
        Some(PeerView {
            median,
            spread: MAD_TO_SIGMA * mad,
            spread_floor,
            peers,
        })
    }

    /// The entries this shard observed since the previous export (each device's latest),
    /// leaving out those already older than `fresh_ms` at `now_time_ms`. Called on a timer;
    /// allocates the summary.
    pub fn export(&mut self, now_time_ms: u64) -> Summary {
        let mut groups = Vec::with_capacity(self.dirty.len());
        let fresh_ms = self.config.fresh_ms;
        for key in self.dirty.drain(..) {
            // A group pruned since it was listed is simply gone.
            let Some(group) = self.groups.get_mut(&key) else {
                continue;
            };
            group.dirty = false;
            let mut entries = Vec::new();
            for entry in &mut group.entries {
                if !entry.unexported {
                    continue;
                }
                entry.unexported = false;
                if entry.time_ms.saturating_add(fresh_ms) >= now_time_ms {
                    entries.push(PeerEntry {
                        device: entry.device,
                        time_ms: entry.time_ms,
                        value: entry.value,
                    });
                }
            }
            if !entries.is_empty() {
                groups.push(GroupSummary { key, entries });
            }
        }
        groups.sort_unstable_by_key(|g| g.key);
        Summary {
            time_ms: now_time_ms,
            groups,
        }
    }

    /// Stores another shard's summary. Each entry replaces the same shard's earlier entry
    /// for the device, or another origin's strictly older one; this shard's own exports
    /// must not be merged back (they would be taken as a remote shard's).
    pub fn merge(&mut self, from_shard: usize, summary: &Summary) {
        let origin = u32::try_from(from_shard).unwrap_or(LOCAL).min(LOCAL - 1);
        for group in &summary.groups {
            for remote in &group.entries {
                self.upsert(
                    group.key,
                    Entry {
                        device: remote.device,
                        time_ms: remote.time_ms,
                        value: remote.value,
                        snapshot_value: f32::NAN,
                        origin,
                        unexported: false,
                    },
                );
            }
        }
    }

    /// Drops entries older than any check near `now_time_ms` could use (by more than
    /// `fresh_ms + bucket_ms`) and groups left empty, so dead groups free their place under
    /// `groups_max`. O(entries): call it on a slow timer (every `fresh_ms` or so).
    pub fn prune(&mut self, now_time_ms: u64) {
        let keep_ms = self.config.fresh_ms.saturating_add(self.config.bucket_ms);
        self.groups.retain(|_, group| {
            let before = group.entries.len();
            group
                .entries
                .retain(|e| e.time_ms.saturating_add(keep_ms) >= now_time_ms);
            if group.entries.len() != before {
                group.invalidate();
                group.reindex();
            }
            !group.entries.is_empty()
        });
    }

    /// Inserts or replaces an entry (a local one lists its group for the next export).
    fn upsert(&mut self, key: GroupKey, entry: Entry) {
        if !entry.value.is_finite() {
            self.counters.values_refused += 1;
            return;
        }
        let devices_max = self.config.group_devices_max as usize;
        let full = self.groups.len() >= self.config.groups_max as usize || devices_max == 0;
        if full && !self.groups.contains_key(&key) {
            self.counters.groups_refused += 1;
            return;
        }
        let group = self.groups.entry(key).or_default();
        let found = group.find(entry.device);
        store(
            &self.config,
            &mut self.counters,
            &mut self.dirty,
            key,
            group,
            found,
            entry,
        );
    }
}

/// One of this shard's own observations.
fn local_entry(device: u64, time_ms: u64, value: f32) -> Entry {
    Entry {
        device,
        time_ms,
        value,
        snapshot_value: f32::NAN,
        origin: LOCAL,
        unexported: true,
    }
}

/// The device's value in its group's snapshot (entry `i`), if it has one.
fn snapshot_value(entries: &[Entry], i: usize) -> Option<f32> {
    entries
        .get(i)
        .map(|e| e.snapshot_value)
        .filter(|v| !v.is_nan())
}

/// A finite entry into its group (`found`: the device's entry, if it has one): replacing
/// the device's entry (keeping its snapshot value) or inserting it under the group bound.
fn store(
    config: &PeersConfig,
    counters: &mut PeerCounters,
    dirty: &mut Vec<GroupKey>,
    key: GroupKey,
    group: &mut Group,
    found: Option<usize>,
    mut entry: Entry,
) {
    let entries = &mut group.entries;
    if let Some(old) = found.and_then(|i| entries.get_mut(i)) {
        let replaces =
            entry.origin == LOCAL || entry.origin == old.origin || entry.time_ms > old.time_ms;
        if !replaces {
            return;
        }
        entry.snapshot_value = old.snapshot_value;
        *old = entry;
    } else {
        let full = entries.len() >= config.group_devices_max as usize;
        if full {
            // A group larger than the bound keeps a stable sample: the devices with the
            // smallest ids (hashes), so a newcomer above all of them is not kept, at O(1),
            // and a smaller one replaces the largest. Each device of a big region then costs
            // a lookup, not a scan for the oldest (which churned on every reading). A
            // sampled device that stops reporting leaves its place at the next `prune`.
            counters.devices_evicted += 1;
            if entries.last().is_none_or(|last| entry.device > last.device) {
                return;
            }
            if entries.pop().is_some_and(|e| !e.snapshot_value.is_nan()) {
                // The snapshot counted it: a check of it would not leave it out.
                group.snapshot.time_ms = None;
            }
        }
        let i = entries.partition_point(|e| e.device < entry.device);
        entries.insert(i, entry);
        group.joined += 1;
        group.reindex();
    }
    if entry.unexported && !group.dirty {
        group.dirty = true;
        dirty.push(key);
    }
}

/// A finite value against the (median, MAD, peers) of the other devices.
fn score(
    limits: &Limits,
    key: GroupKey,
    robust: Option<(f64, f64, u32)>,
    value: f32,
    spread_floor: f64,
) -> Option<PeerScore> {
    let (median, mad, peers) = robust?;
    if peers < limits.peers_min {
        return None;
    }
    let spread = MAD_TO_SIGMA * mad;
    let z = (f64::from(value) - median).abs() / spread.max(spread_floor).max(f64::MIN_POSITIVE);
    let scope = match key.scope() {
        Scope::Location => 0,
        Scope::Region => 1,
    };
    let limit = limits.z_max[scope].max(honest_z_max(peers));
    let signal = (z > limit).then(|| Signal {
        detector: Detector::Peers,
        strength: strength_over(z, limit),
    });
    Some(PeerScore {
        view: PeerView {
            median,
            spread,
            spread_floor,
            peers,
        },
        z,
        z_limit: limit,
        signal,
    })
}

/// Whether the group's snapshot serves a check at `time_ms`: taken, within `bucket_ms`, and
/// not a small snapshot of a group that has gained devices since.
fn snapshot_serves(config: &PeersConfig, snapshot: &Snapshot, joined: u64, time_ms: u64) -> bool {
    let Some(taken_ms) = snapshot.time_ms else {
        return false;
    };
    // Small: fewer values than a check needs (its own value may be one of them).
    let small = snapshot.values.len() <= config.peers_min.max(4) as usize;
    taken_ms.abs_diff(time_ms) < config.bucket_ms && !(small && joined != snapshot.joined)
}

#[cfg(test)]
mod tests;
