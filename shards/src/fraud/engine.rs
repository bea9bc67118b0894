//! The scoring engine: every detector of a device, one verdict per reading.
//!
//! The core keeps one [`DeviceFraud`] per device on the device's home shard and one
//! [`Scorer`] per shard (the configuration and the state shared by the shard's devices:
//! the peers table and the learned model). [`Scorer::score`] takes one accepted envelope
//! (device time, receive time, sequence, the connection it came on, its readings) and
//! returns a [`Verdict`]; nothing is locked, and in steady state nothing is allocated.
//!
//! # What runs on a reading
//!
//! - Per envelope: cross-channel [`physics`], [`timing`] (device time against receive
//!   time and the device's own pace), [`clone`] (the connection it came on, and its
//!   sequence), the learned [`model`] over the envelope's features.
//! - Per reading of a kind: [`bounds`], [`rate`], [`stats`] (deviation and drift),
//!   [`persistence`], [`smooth`] (too smooth), [`peers`].
//!
//! A device keeps full per-series state for its first [`SERIES_MAX`] kinds; readings of
//! further kinds get the stateless checks only (bounds, physics, peers). The detectors'
//! strengths are folded per detector (the strongest across kinds) and combined with
//! [`super::combine`].
//!
//! # Warm-up
//!
//! For its first `warmup_readings` envelopes a device is learning: every model is fed,
//! but only bounds, physics and peers may fire (they need no history of the device).
//!
//! # Determinism
//!
//! Everything a device's state depends on is in its reading records (device time, receive
//! time, sequence, peer address, connection time, values) or in the dead letters of its
//! refused sequences, so replaying the log through a fresh engine rebuilds it exactly: that
//! is how state survives a crash past the last checkpoint, and what `fraud backtest` does.
//! The learned model is shared by the shard's devices and depends on the order of the
//! shard's log, which a replay keeps. The peers detector reads the live state of the other
//! devices; it never changes a device's state, so a replay without peers still rebuilds
//! every device exactly (only the peers part of a score can differ).

use super::bounds::Bounds;
use super::clone::{CloneConfig, Clones};
use super::model::{HalfSpaceTrees, ModelConfig, FEATURES, FEATURE_MAX};
use super::offset::{OffsetConfig, PeerOffset, ShardScales};
use super::peers::{GroupKey, PeerTable, PeersConfig, Scope};
use super::persistence::{Persistence, PersistenceLimits};
use super::physics::{self, PhysicsLimits};
use super::rate::{Rate, RateLimit};
use super::smooth::{Smooth, SmoothConfig};
use super::stats::{Stats, StatsConfig};
use super::timing::{Timing, TimingConfig};
use super::{combine, Detector, ScoreConfig, Signal, Verdict, DETECTOR_COUNT};
use ingestd_codec::envelope::{Kind, Reading};
use serde::{Deserialize, Serialize};

/// Kinds per device with full per-series state.
pub const SERIES_MAX: usize = 4;

/// The parameters of one kind's detectors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KindConfig {
    /// `None`: no bounds (unregistered kinds; non-finite values still fire).
    pub bounds: Option<Bounds>,
    pub rate: RateLimit,
    pub stats: StatsConfig,
    pub persistence: PersistenceLimits,
    pub smooth: SmoothConfig,
    pub offset: OffsetConfig,
}

impl KindConfig {
    /// The documented defaults of a kind (docs/FRAUD.md).
    #[must_use]
    pub fn default_for(kind: Kind) -> KindConfig {
        KindConfig {
            bounds: Bounds::default_for(kind),
            rate: RateLimit::default_for(kind),
            stats: StatsConfig::default_for(kind),
            persistence: PersistenceLimits::default_for(kind),
            smooth: SmoothConfig::default_for(kind),
            offset: OffsetConfig::with_floor(super::persistence::noise_floor_default(kind)),
        }
    }
}

/// Everything the engine is configured with.
#[derive(Clone, Debug, PartialEq)]
pub struct FraudConfig {
    /// Weights and thresholds of the combined score.
    pub score: ScoreConfig,
    /// Envelopes a new device is learning for (only bounds, physics and peers fire).
    pub warmup_readings: u32,
    /// Per-kind parameters, by kind code 1..=11 (index 0 is for unregistered codes).
    pub kinds: [KindConfig; 12],
    pub physics: PhysicsLimits,
    pub timing: TimingConfig,
    pub clone: CloneConfig,
    pub peers: PeersConfig,
    pub model: ModelConfig,
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            score: ScoreConfig::default(),
            warmup_readings: 30,
            kinds: std::array::from_fn(|code| {
                KindConfig::default_for(Kind::from_code(code as u16).unwrap_or(Kind::Other(0)))
            }),
            physics: PhysicsLimits::default(),
            timing: TimingConfig::default(),
            clone: CloneConfig::default(),
            peers: PeersConfig::default(),
            model: ModelConfig::default(),
        }
    }
}

impl FraudConfig {
    /// The parameters of a kind code.
    #[must_use]
    pub fn kind(&self, code: u16) -> &KindConfig {
        self.kinds.get(usize::from(code)).unwrap_or(&self.kinds[0])
    }
}

/// One kind's series of one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The kind code; 0 for an unused slot.
    pub code: u16,
    rate: Rate,
    stats: Stats,
    persistence: Persistence,
    smooth: Smooth,
    /// The device's offset from its location's median (drift against the neighbours).
    offset: PeerOffset,
}

impl Series {
    /// The series' level and noise (EWMA), and readings learned.
    #[must_use]
    pub fn level_noise_readings(&self, config: &FraudConfig) -> (f64, f64, u32) {
        let (level, noise) = self.stats.level_and_noise(&config.kind(self.code).stats);
        (level, noise, self.stats.readings())
    }
}

/// One device's fraud state: a few hundred bytes, allocated once when the device is first
/// seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceFraud {
    /// Envelopes scored (saturating): the warm-up counter.
    pub readings: u32,
    series: [Series; SERIES_MAX],
    timing: Timing,
    clones: Clones,
    /// The connection of the last envelope: (address hash, connection time).
    connection: Option<(u64, u64)>,
    /// Receive time of the last envelope: the newest copy wins when a device's state comes
    /// from two shards' checkpoints (a changed shard count).
    pub last_received_ms: u64,
    /// Device time of the last envelope, for the pace feature.
    last_device_ms: Option<u64>,
    /// The last verdict, for `fraud explain`.
    pub last: Option<(u64, Verdict)>,
    /// [`GroupKey::base`] of the device's location and region (`None`: no such group).
    #[serde(skip)]
    groups: (Option<u64>, Option<u64>),
}

impl DeviceFraud {
    /// A device never scored, in the given location and region (empty: none).
    #[must_use]
    pub fn new(location: &str, region: &str) -> DeviceFraud {
        let mut device = DeviceFraud::default();
        device.set_groups(location, region);
        device
    }

    /// The registry changed the device's location or region.
    pub fn set_groups(&mut self, location: &str, region: &str) {
        self.groups = (
            GroupKey::base(Scope::Location, location),
            GroupKey::base(Scope::Region, region),
        );
    }

    /// The series with full state, for `fraud explain`.
    pub fn series(&self) -> impl Iterator<Item = &Series> {
        self.series.iter().filter(|s| s.code != 0)
    }

    /// The device clock's offset from receive time (EWMA, ms) and its pace (ms between
    /// readings), once known.
    #[must_use]
    pub fn clock(&self) -> (Option<f64>, Option<f64>) {
        (self.timing.offset_ms(), self.timing.pace_ms())
    }

    /// The device clock's rate error as last fitted by the clock rate rule (a fraction;
    /// negative: the clock runs fast).
    #[must_use]
    pub fn clock_rate(&self) -> f32 {
        self.timing.clock_rate()
    }

    fn series_mut(&mut self, code: u16) -> Option<&mut Series> {
        let slot = self
            .series
            .iter()
            .position(|s| s.code == code)
            .or_else(|| self.series.iter().position(|s| s.code == 0))?;
        let series = &mut self.series[slot];
        series.code = code;
        Some(series)
    }
}

/// One envelope as the engine sees it.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    /// The device's id hash ([`device_hash`]): its identity among its peers.
    pub device: u64,
    pub seq: u64,
    /// Device time and receive time, ms since the Unix epoch.
    pub device_ms: u64,
    pub received_ms: u64,
    /// The connection: a hash of the peer's IP address ([`address_hash`]) and when it
    /// connected.
    pub address: u64,
    pub connected_ms: u64,
    pub readings: &'a [Reading],
}

/// What one detector saw on one reading, for `fraud explain` (allocation is fine there).
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub detector: Detector,
    /// The kind code it concerns (0: the envelope as a whole).
    pub kind: u16,
    pub strength: f32,
}

/// A verdict with the strength of every detector (0: did not fire).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scored {
    pub verdict: Verdict,
    pub strengths: [f32; DETECTOR_COUNT],
}

/// Stable 64-bit FNV-1a, for device and address hashes (the same on every node and run).
#[must_use]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A device id's hash.
#[must_use]
pub fn device_hash(device: &str) -> u64 {
    fnv1a(device.as_bytes())
}

/// The hash of a peer's IP address (the port is left out: a device that reconnects from
/// the same host is in the same place). `peer` is `ip:port` or `[ip6]:port`.
#[must_use]
pub fn address_hash(peer: &str) -> u64 {
    let host = match peer.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => peer,
    };
    fnv1a(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .as_bytes(),
    )
}

/// The per-shard scorer: configuration, the shard's peers table and its learned model.
pub struct Scorer {
    config: FraudConfig,
    peers: PeerTable,
    /// The warm devices' offset scales per kind (the offset rule's prior).
    scales: ShardScales,
    model: HalfSpaceTrees,
    /// The shard's own lag: see [`ShardLag`].
    lag: ShardLag,
    /// Findings of the last score, kept only when asked ([`Scorer::trace`]).
    trace: Option<Vec<Finding>>,
    /// Replaying the log (start-up, backtest of an export): the peers table is neither
    /// read nor fed, since it holds the other devices' live values.
    replaying: bool,
}

impl Scorer {
    #[must_use]
    pub fn new(config: FraudConfig) -> Scorer {
        Scorer {
            peers: PeerTable::new(config.peers),
            model: HalfSpaceTrees::new(&config.model),
            lag: ShardLag::default(),
            scales: ShardScales::default(),
            config,
            trace: None,
            replaying: false,
        }
    }

    #[must_use]
    pub fn config(&self) -> &FraudConfig {
        &self.config
    }

    /// Replay mode: peers are left out (see [`Scorer::replaying`]'s field docs).
    pub fn set_replaying(&mut self, replaying: bool) {
        self.replaying = replaying;
    }

    /// The shard's peers table (the driver exchanges its summaries with other shards).
    pub fn peers(&mut self) -> &mut PeerTable {
        &mut self.peers
    }

    /// The shard's learned model.
    #[must_use]
    pub fn model(&self) -> &HalfSpaceTrees {
        &self.model
    }

    /// The shard's learned model, encoded for the fraud checkpoint.
    #[must_use]
    pub fn encode_model(&self) -> Vec<u8> {
        // Structs of numbers and vectors: serialising them into a Vec cannot fail.
        postcard::to_allocvec(&(&self.model, &self.lag, &self.scales)).unwrap_or_default()
    }

    /// Restores [`Scorer::encode_model`]'s bytes; `false` (and the model unchanged) when
    /// they do not decode or were learned with another model configuration.
    pub fn restore_model(&mut self, bytes: &[u8]) -> bool {
        match postcard::from_bytes::<(HalfSpaceTrees, ShardLag, ShardScales)>(bytes) {
            Ok((model, lag, scales)) if model.matches(&self.config.model) => {
                self.scales = scales;
                self.model = model;
                self.lag = lag;
                true
            }
            _ => false,
        }
    }

    /// From now on, keep every detector's findings per kind ([`Scorer::take_trace`]).
    pub fn trace(&mut self) {
        self.trace = Some(Vec::new());
    }

    /// The findings of the last [`Scorer::score`] (empty unless [`Scorer::trace`] was
    /// called).
    pub fn take_trace(&mut self) -> Vec<Finding> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// A sequence refused by the replay window (its signature verified): evidence for the
    /// clone rule that only a second writer produces. Changes the device's state only.
    pub fn refused(
        &mut self,
        device: &mut DeviceFraud,
        seq: u64,
        address: u64,
        connected_ms: u64,
        received_ms: u64,
    ) {
        let connection = self
            .connection(device, address, connected_ms, received_ms)
            .0;
        // The finding waits for the next accepted reading of the device, which carries it.
        let _ = device
            .clones
            .on_sequence(&self.config.clone, seq, connection, received_ms);
    }

    /// Notes the connection of an envelope; its id and the address rule's finding.
    fn connection(
        &mut self,
        device: &mut DeviceFraud,
        address: u64,
        connected_ms: u64,
        received_ms: u64,
    ) -> (u64, Option<Signal>) {
        let id = fnv1a(&[address.to_le_bytes(), connected_ms.to_le_bytes()].concat_array());
        let mut signal = None;
        if device.connection != Some((address, connected_ms)) {
            device.connection = Some((address, connected_ms));
            signal = device
                .clones
                .on_connect(&self.config.clone, address, received_ms)
                .signal();
        }
        (id, signal)
    }

    /// Scores one accepted envelope of a device and learns from it.
    pub fn score(&mut self, device: &mut DeviceFraud, envelope: &Envelope<'_>) -> Scored {
        let mut strengths = [0.0f32; DETECTOR_COUNT];
        let tracing = self.trace.is_some();
        let mut trace: Vec<Finding> = self.trace.take().unwrap_or_default();
        trace.clear();
        let mut note =
            |signal: Option<Signal>, kind: u16, strengths: &mut [f32; DETECTOR_COUNT]| {
                if let Some(signal) = signal {
                    let slot = &mut strengths[signal.detector.index()];
                    let strength = if signal.strength.is_nan() {
                        1.0
                    } else {
                        signal.strength.clamp(0.0, 1.0)
                    };
                    *slot = slot.max(strength).max(f32::MIN_POSITIVE);
                    if tracing {
                        trace.push(Finding {
                            detector: signal.detector,
                            kind,
                            strength,
                        });
                    }
                }
            };
        let warm = device.readings >= self.config.warmup_readings;
        device.last_received_ms = device.last_received_ms.max(envelope.received_ms);
        device.readings = device.readings.saturating_add(1);

        // The envelope as a whole.
        note(
            physics::check_slice(&self.config.physics, envelope.readings).map(|f| f.signal),
            0,
            &mut strengths,
        );
        let (connection, address_signal) = self.connection(
            device,
            envelope.address,
            envelope.connected_ms,
            envelope.received_ms,
        );
        let clones = device.clones.on_sequence(
            &self.config.clone,
            envelope.seq,
            connection,
            envelope.received_ms,
        );
        if device.readings == 1 {
            self.lag.devices = self.lag.devices.saturating_add(1);
        }
        let (received_ms, rate_received_ms) = self.lag.observe(
            envelope.device_ms,
            envelope.received_ms,
            !device.timing.clock_rate_fires(),
        );
        let timing = device.timing.observe_with(
            &self.config.timing,
            envelope.device_ms,
            received_ms,
            rate_received_ms,
            envelope.seq,
        );
        if warm {
            note(address_signal, 0, &mut strengths);
            note(clones.signal(), 0, &mut strengths);
            note(timing.signal(), 0, &mut strengths);
        }

        // Each reading of its kind.
        let mut features = Features::default();
        let (location, region) = device.groups;
        for reading in envelope.readings {
            let (code, value) = (reading.kind, reading.value);
            let kind = self.config.kind(code);
            let bounds = match &kind.bounds {
                Some(bounds) => bounds.check(value),
                None if !value.is_finite() => Some(Signal {
                    detector: Detector::Bounds,
                    strength: 1.0,
                }),
                None => None,
            };
            note(bounds, code, &mut strengths);
            // The median of the device's location: the reference of the offset rule.
            let mut location_median = None;
            if !self.replaying && value.is_finite() {
                let kind_of = Kind::from_code(code).unwrap_or(Kind::Other(code));
                for (scope, base) in [(Scope::Location, location), (Scope::Region, region)] {
                    let Some(base) = base else {
                        continue;
                    };
                    let key = GroupKey::of(base, scope, kind_of);
                    let found = self.peers.check_then_observe(
                        key,
                        envelope.device,
                        envelope.device_ms,
                        value,
                        kind_of,
                    );
                    if let Some(found) = found {
                        if scope == Scope::Location {
                            location_median = Some(found.view.median as f32);
                        }
                        note(found.signal, code, &mut strengths);
                    }
                }
            }
            let Some(series) = device.series_mut(code) else {
                continue;
            };
            // The noise as learned before this reading: a spike must not widen its own
            // tolerance.
            let (_, noise_before) = series.stats.level_and_noise(&kind.stats);
            let rate =
                series
                    .rate
                    .observe_with_noise(&kind.rate, envelope.device_ms, value, noise_before);
            let stats = series.stats.observe(&kind.stats, value);
            let persistence = series.persistence.observe_with_noise(
                &kind.persistence,
                envelope.device_ms,
                value,
                series.stats.raw_noise(),
            );
            let smooth = series.smooth.observe(&kind.smooth, value);
            let offset = location_median.and_then(|median| {
                let found =
                    series
                        .offset
                        .observe(&kind.offset, value, median, self.scales.scale_min(code));
                if let Some(scale) = series.offset.own_scale(&kind.offset) {
                    self.scales.learn(code, scale);
                }
                found
            });
            features.add(&series.stats, &kind.stats, stats.z, value);
            features.run(series.persistence.run_readings());
            if warm {
                note(rate, code, &mut strengths);
                note(stats.deviation, code, &mut strengths);
                note(stats.drift, code, &mut strengths);
                note(persistence, code, &mut strengths);
                note(smooth, code, &mut strengths);
                note(offset, code, &mut strengths);
            }
        }
        features.timing(
            &device.timing,
            device.last_device_ms,
            envelope.device_ms,
            received_ms,
        );
        device.last_device_ms = Some(envelope.device_ms);
        let model = self.model.check(&features.values());
        if warm {
            note(model, 0, &mut strengths);
        }

        let mut signals = [Signal {
            detector: Detector::Bounds,
            strength: 0.0,
        }; DETECTOR_COUNT];
        let mut count = 0;
        for detector in Detector::ALL {
            let strength = strengths[detector.index()];
            if strength > 0.0 {
                signals[count] = Signal { detector, strength };
                count += 1;
            }
        }
        let verdict = combine(&self.config.score, &signals[..count]);
        device.last = Some((envelope.seq, verdict));
        if tracing {
            self.trace = Some(trace);
        }
        Scored { verdict, strengths }
    }
}

/// The shard's own lag behind its devices: an EWMA over every envelope of the shard of
/// `receive - device time`. When the server falls behind (a burst, a stall), every device's
/// receive time moves at once; a device's clock moves alone. The timing detector sees
/// receive times less the lag's change since it was first learned, so a server backlog is
/// not read as every device's clock jumping. Applied once the shard has seen
/// [`ShardLag::DEVICES_MIN`] devices: with fewer, one device's own clock would move the
/// average it is compared with. The EWMA's weight is the larger of [`ShardLag::ALPHA`] and
/// one over the shard's devices, so it follows a backlog within about one reading of each
/// device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ShardLag {
    /// Devices scored on this shard (saturating).
    devices: u32,
    /// The EWMA, and its first settled value (the reference the change is taken from).
    ewma_ms: Option<f64>,
    reference_ms: Option<f64>,
    envelopes: u32,
    /// Receive time until which the shard counts as behind.
    behind_until_ms: u64,
    /// The shift as it stood at least a second ago, and the shift and receive time of the
    /// latest sample taken (one a second): see [`ShardLag::observe`].
    held: (f64, f64, u64),
}

impl ShardLag {
    const DEVICES_MIN: u32 = 8;
    const ALPHA: f64 = 0.01;
    /// A lasting shift over this means the shard is behind.
    const BEHIND_MS: f64 = 50.0;
    /// ... and counts as behind for this long after (the rate rule's window and more).
    const BEHIND_HOLD_MS: u64 = 30_000;
    /// Envelopes before the EWMA is taken as the reference.
    const SETTLE: u32 = 500;

    /// Feeds one envelope; the receive time the timing rules should see, and the one the
    /// clock rate rule should see. The latter is corrected only by as much of the shift as
    /// has lasted a second (the one of shift now and a second ago closer to 0): after a
    /// stall (every envelope late at once, then none) the average is high for a moment,
    /// and correcting the prompt envelopes just after it by that much would make them
    /// look early, which the rate rule's lower envelope would take for a fast clock.
    ///
    /// A device whose clock is known to be wrong (`learn` false) is corrected but not
    /// learned from: a clock running 10 % fast is seconds off within a minute, and one
    /// such envelope would move the shard's average by a hundredth of that.
    ///
    /// The second receive time is `None` while the shard is behind (a lasting shift over
    /// [`ShardLag::BEHIND_MS`], and for [`ShardLag::BEHIND_HOLD_MS`] after): a backlog of
    /// seconds rises and falls by far more than a clock's 0.2 % over the rate rule's
    /// blocks, whatever the correction, so the rule abstains.
    fn observe(&mut self, device_ms: u64, received_ms: u64, learn: bool) -> (u64, Option<u64>) {
        let sample = received_ms as f64 - device_ms as f64;
        let ewma = match self.ewma_ms {
            Some(previous) if !learn => previous,
            // About one envelope per device in the average: a shard of few devices must
            // follow a backlog within a round of their readings, not a hundred envelopes
            // (minutes), or a growing backlog reads as every clock slowing down.
            Some(previous) => {
                let alpha = Self::ALPHA.max(1.0 / f64::from(self.devices.max(1)));
                previous + alpha * (sample - previous)
            }
            None => sample,
        };
        self.ewma_ms = Some(ewma);
        self.envelopes = self.envelopes.saturating_add(1);
        if self.reference_ms.is_none() && self.envelopes >= Self::SETTLE {
            self.reference_ms = Some(ewma);
        }
        let shift = match self.reference_ms {
            Some(reference) if self.devices >= Self::DEVICES_MIN => (ewma - reference).round(),
            _ => 0.0,
        };
        let shift = if shift.is_finite() { shift } else { 0.0 };
        let (_, latest, at_ms) = self.held;
        if received_ms >= at_ms.saturating_add(1_000) {
            self.held = (latest, shift, received_ms);
        }
        let before = self.held.0;
        let lasting = if shift * before <= 0.0 {
            0.0
        } else if shift.abs() < before.abs() {
            shift
        } else {
            before
        };
        let correct = |shift: f64| {
            (received_ms as i128 - shift as i128).clamp(0, i128::from(u64::MAX)) as u64
        };
        // A lasting lag: the server is behind, and its receive times jitter by the backlog.
        if lasting.abs() > Self::BEHIND_MS {
            self.behind_until_ms = received_ms.saturating_add(Self::BEHIND_HOLD_MS);
        }
        let trusted = received_ms >= self.behind_until_ms;
        (correct(shift), trusted.then(|| correct(lasting)))
    }
}

/// Concatenates two 8-byte arrays without allocating.
trait ConcatArray {
    fn concat_array(&self) -> [u8; 16];
}

impl ConcatArray for [[u8; 8]; 2] {
    fn concat_array(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self[0]);
        out[8..].copy_from_slice(&self[1]);
        out
    }
}

/// The learned model's input: scale-free features of one envelope, each the most extreme
/// over the envelope's kinds.
#[derive(Clone, Copy, Debug, Default)]
struct Features {
    /// Standardised residual against the device's own level.
    z: f32,
    /// Step from the previous value, in noise units.
    step: f32,
    /// The device's noise against the sensor's floor (log2): fabricated series sit low.
    noise_ratio: f32,
    any: bool,
    /// The interval since the device's previous envelope against its own pace (log2).
    pace: f32,
    /// This envelope's clock offset (receive time - device time) against the device's usual
    /// offset, in seconds.
    offset_s: f32,
    /// The longest run inside one noise floor among the envelope's kinds (log2 readings).
    run: f32,
}

impl Features {
    fn add(&mut self, stats: &Stats, config: &StatsConfig, z: f32, value: f32) {
        let (level, noise) = stats.level_and_noise(config);
        let floor = f64::from(config.noise_floor).max(1e-9);
        let z = if z.is_finite() { z } else { 0.0 };
        if !self.any || z.abs() > self.z.abs() {
            self.z = z;
        }
        let step = ((f64::from(value) - level).abs() / noise.max(floor)) as f32;
        self.step = self.step.max(step);
        let ratio = (noise / floor).max(1e-6).log2() as f32;
        self.noise_ratio = if self.any {
            self.noise_ratio.min(ratio)
        } else {
            ratio
        };
        self.any = true;
    }

    fn timing(
        &mut self,
        timing: &Timing,
        last_device_ms: Option<u64>,
        device_ms: u64,
        received_ms: u64,
    ) {
        if let Some(offset) = timing.offset_ms() {
            let sample = received_ms as f64 - device_ms as f64;
            self.offset_s = ((sample - offset) / 1000.0) as f32;
        }
        if let (Some(pace), Some(last)) = (timing.pace_ms(), last_device_ms) {
            let interval = device_ms.saturating_sub(last) as f64;
            self.pace = (interval.max(1.0) / pace.max(1.0)).log2() as f32;
        }
    }

    fn run(&mut self, readings: u32) {
        self.run = self.run.max((readings.max(1) as f32).log2());
    }

    /// Clamped to the model's range, non-finite as 0.
    fn values(&self) -> [f32; FEATURES] {
        [
            self.z,
            self.step,
            self.noise_ratio,
            self.pace,
            self.offset_s,
            self.run,
        ]
        .map(|v| {
            if v.is_finite() {
                v.clamp(-FEATURE_MAX, FEATURE_MAX)
            } else {
                0.0
            }
        })
    }
}

/// Encodes device states for a checkpoint (postcard: compact, versioned by the file that
/// holds it). A device's peer groups are not encoded: they come from the registry.
#[must_use]
pub fn encode_states<'a>(states: impl Iterator<Item = (&'a str, &'a DeviceFraud)>) -> Vec<u8> {
    let states: Vec<(&str, &DeviceFraud)> = states.collect();
    // Plain structs of numbers and strings: serialising them into a Vec cannot fail.
    postcard::to_allocvec(&states).unwrap_or_default()
}

/// Decodes [`encode_states`]; `None` when the bytes are not such an encoding.
#[must_use]
pub fn decode_states(bytes: &[u8]) -> Option<Vec<(String, DeviceFraud)>> {
    postcard::from_bytes(bytes).ok()
}
