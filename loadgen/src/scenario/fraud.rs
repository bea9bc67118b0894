//! Labelled fraud: how a device departs from its honest series from its onset on.
//!
//! Each label's parameters are drawn per device from ranges chosen for what a faulty or
//! fraudulent device plausibly does, not from any detector's threshold (the detectors are
//! judged on series and parameters that are not in this repository). Magnitudes are in
//! units of [`SCALE`] (20 ppm, 1 °C, 4 % RH: a typical natural variation) or of [`LEVEL`]
//! (450 ppm, 20 °C, 60 % RH); "per hour" is per simulated hour (`day_ms / 24`). The
//! ranges are listed in `loadgen/README.md`; change them there and here together.
//!
//! Every departure is a pure function of (device, message index, device time), like the
//! honest series, and leaves every message before the onset untouched.

use super::climate::{quantise, Sensor, CO2, HUMIDITY, KINDS, LEVEL, SCALE, TEMPERATURE};
use super::draw::{hash, smooth_noise, unit, Draw};

/// Fault values of broken sensors, all outside the physical bounds of their kind: CO2 0
/// and 0xFFFF (a failed NDIR read), 130 °C and 118.99 % (an SHT-type sensor returning
/// 0xFFFF), 85 °C (a DS18B20's power-on value, above air records), -273.15 °C, negative
/// humidity from a raw underflow.
pub const FAULT_VALUES: [&[f64]; 3] = [&[0.0, 65_535.0], &[130.0, 85.0, -273.15], &[118.99, -6.0]];

/// The departure of one device and its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Fraud {
    /// Honest throughout.
    Normal,
    /// Isolated one-reading spikes on one kind: the first at the onset, then each reading
    /// with probability `chance`; each spike `SCALE × U[3, 15]` (CO2 up, others either way).
    Spike { kind: usize, chance: f64 },
    /// One kind drifts linearly from the onset by `per_hour` (`±LEVEL × U[1 %, 5 %]` per
    /// simulated hour).
    Drift { kind: usize, per_hour: f64 },
    /// One kind steps by `step` (`±SCALE × U[1, 5]`) at the onset and stays there.
    LevelShift { kind: usize, step: f64 },
    /// The kinds in `kinds` freeze at their onset value (all three with probability 1/2,
    /// else one).
    Stuck { kinds: [bool; 3] },
    /// A fabricated series from the onset: the site's daily cycle with its amplitude scaled
    /// by `amplitude` (U[0.7, 1.3] per kind) plus a smooth wander of its own (`SCALE / 2`,
    /// knots two simulated hours apart), anchored at the onset reading, rounded to the
    /// resolution, no sensor noise.
    Smooth {
        amplitude: [f64; 3],
        wander_key: u64,
    },
    /// Every kind copies a neighbour's reading (same location, same device time) plus an
    /// offset per kind (`±SCALE × U[0.25, 2]`).
    NeighbourCopy {
        neighbour: Box<Sensor>,
        neighbour_id: String,
        offset: [f64; 3],
    },
    /// One kind reads a fault value (one of [`FAULT_VALUES`], fixed per device): at the
    /// onset, then each reading with probability `chance` (U[0.1, 1]).
    OutOfBounds {
        kind: usize,
        chance: f64,
        value: f64,
    },
    /// Bursts of `burst_readings` (3..=10) readings on one kind, each reading jumping by
    /// `±SCALE × U[2, 6]`, the first at the onset, then every `period_readings`
    /// (50..=200) readings.
    RateBurst {
        kind: usize,
        burst_readings: u64,
        period_readings: u64,
    },
    /// The device clock runs fast or slow by `ratio` (`±` log-uniform 0.5 % to 10 %) from
    /// the onset: device time = t + ratio × (t - onset time). Readings stay honest (the
    /// air does not care about the clock).
    ClockDrift { ratio: f64 },
    /// A second unit with the same identity (its own sensor at the same site) connects from
    /// another local address from the onset; the two take turns of `turn_min..=turn_max`
    /// readings (3..=30), the twin first, each with its own sequence counter: the
    /// original's continues, the twin's starts `seq_gap` (0..=1000) above the original's
    /// at the onset.
    Clone {
        twin: Box<Sensor>,
        seq_gap: u64,
        turn_min: u64,
        turn_max: u64,
    },
    /// Re-sends its own readings of one simulated day earlier (same phase of the daily
    /// cycle, yesterday's weather and noise) with fresh sequence numbers and current
    /// timestamps.
    PastDay,
}

fn kind_name(kind: usize) -> &'static str {
    KINDS[kind].name().unwrap_or("?")
}

impl Fraud {
    /// The parameters as `key=value;...`, for the truth file.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Fraud::Normal | Fraud::PastDay => String::new(),
            Fraud::Spike { kind, chance } => {
                format!("kind={};chance={chance:.3}", kind_name(*kind))
            }
            Fraud::Drift { kind, per_hour } => {
                format!("kind={};per_hour={per_hour:.4}", kind_name(*kind))
            }
            Fraud::LevelShift { kind, step } => {
                format!("kind={};step={step:.3}", kind_name(*kind))
            }
            Fraud::Stuck { kinds } => {
                let names: Vec<&str> = (0..3).filter(|k| kinds[*k]).map(kind_name).collect();
                format!("kinds={}", names.join("+"))
            }
            Fraud::Smooth { amplitude, .. } => format!(
                "amplitude={:.2}+{:.2}+{:.2}",
                amplitude[0], amplitude[1], amplitude[2]
            ),
            Fraud::NeighbourCopy {
                neighbour_id,
                offset,
                ..
            } => format!(
                "neighbour={neighbour_id};offset={:.2}+{:.3}+{:.2}",
                offset[0], offset[1], offset[2]
            ),
            Fraud::OutOfBounds {
                kind,
                chance,
                value,
            } => format!("kind={};chance={chance:.2};value={value}", kind_name(*kind)),
            Fraud::RateBurst {
                kind,
                burst_readings,
                period_readings,
            } => format!(
                "kind={};burst_readings={burst_readings};period_readings={period_readings}",
                kind_name(*kind)
            ),
            Fraud::ClockDrift { ratio } => format!("ratio={ratio:.4}"),
            Fraud::Clone {
                seq_gap,
                turn_min,
                turn_max,
                ..
            } => format!("seq_gap={seq_gap};turn_readings={turn_min}..={turn_max}"),
        }
    }

    /// The readings of message `k` (device time `t_ms`; the onset message `onset` was due
    /// at `onset_ms`) for a device whose honest sensor is `sensor`, at or after the onset.
    /// `key` keys the per-message randomness (spike times, jumps).
    #[must_use]
    pub fn values(
        &self,
        sensor: &Sensor,
        key: u64,
        k: u64,
        onset: u64,
        t_ms: u64,
        onset_ms: u64,
    ) -> [f64; 3] {
        let mut v = sensor.values(t_ms);
        let since = k.saturating_sub(onset);
        let chance = |what: u64| unit(hash(&[key, what, k]));
        match self {
            Fraud::Normal | Fraud::ClockDrift { .. } | Fraud::Clone { .. } => {}
            Fraud::Spike { kind, chance: p } => {
                if since == 0 || chance(1) < *p {
                    let size = SCALE[*kind] * (3.0 + 12.0 * chance(2));
                    let up = *kind == CO2 || chance(3) < 0.5;
                    v[*kind] = quantise(*kind, v[*kind] + if up { size } else { -size });
                }
            }
            Fraud::Drift { kind, per_hour } => {
                let hours = t_ms.saturating_sub(onset_ms) as f64 / hour_ms(sensor);
                v[*kind] = quantise(*kind, v[*kind] + per_hour * hours);
            }
            Fraud::LevelShift { kind, step } => {
                v[*kind] = quantise(*kind, v[*kind] + step);
            }
            Fraud::Stuck { kinds } => {
                for kind in 0..3 {
                    if kinds[kind] {
                        v[kind] = sensor.value(kind, onset_ms);
                    }
                }
            }
            Fraud::Smooth {
                amplitude,
                wander_key,
            } => {
                let wander_knot_ms = sensor.site.day_ms() / 12;
                let fabricated = |kind: usize, t: u64| {
                    sensor.site.cycle(kind, t, amplitude[kind])
                        + 0.5
                            * SCALE[kind]
                            * smooth_noise(hash(&[*wander_key, kind as u64]), t, wander_knot_ms)
                };
                for (kind, value) in v.iter_mut().enumerate() {
                    let anchor = sensor.value(kind, onset_ms);
                    *value = quantise(
                        kind,
                        anchor + fabricated(kind, t_ms) - fabricated(kind, onset_ms),
                    );
                }
            }
            Fraud::NeighbourCopy {
                neighbour, offset, ..
            } => {
                for (kind, value) in v.iter_mut().enumerate() {
                    *value = quantise(kind, neighbour.value(kind, t_ms) + offset[kind]);
                }
            }
            Fraud::OutOfBounds {
                kind,
                chance: p,
                value,
            } => {
                if since == 0 || chance(4) < *p {
                    v[*kind] = *value;
                }
            }
            Fraud::RateBurst {
                kind,
                burst_readings,
                period_readings,
            } => {
                if since % (*period_readings).max(1) < *burst_readings {
                    let size = SCALE[*kind] * (2.0 + 4.0 * chance(5));
                    let up = chance(6) < 0.5;
                    v[*kind] = quantise(*kind, v[*kind] + if up { size } else { -size });
                }
            }
            Fraud::PastDay => {
                v = sensor.values(t_ms.saturating_sub(sensor.site.day_ms()));
            }
        }
        v
    }

    /// The device time stamped on a message planned for `t_ms`, at or after the onset.
    #[must_use]
    pub fn device_time(&self, t_ms: u64, onset_ms: u64) -> u64 {
        match self {
            Fraud::ClockDrift { ratio } => {
                let since = t_ms.saturating_sub(onset_ms) as f64;
                (t_ms as f64 + ratio * since).round().max(0.0) as u64
            }
            _ => t_ms,
        }
    }
}

fn hour_ms(sensor: &Sensor) -> f64 {
    sensor.site.day_ms() as f64 / 24.0
}

/// Draws the parameters of `label`'s departure. `neighbour` is another device of the same
/// location (id and sensor), for a copy; `twin` the second unit of a clone.
#[must_use]
pub fn draw(
    label: super::Label,
    d: &mut Draw,
    neighbour: Option<(String, Sensor)>,
    twin: Sensor,
) -> Fraud {
    use super::Label;
    let kind = d.index(3);
    let sign = d.sign();
    match label {
        Label::Normal => Fraud::Normal,
        Label::Spike => Fraud::Spike {
            kind,
            chance: d.uniform(0.01, 0.05),
        },
        Label::Drift => Fraud::Drift {
            kind,
            per_hour: sign * LEVEL[kind] * d.uniform(0.01, 0.05),
        },
        Label::LevelShift => Fraud::LevelShift {
            kind,
            step: sign * SCALE[kind] * d.uniform(1.0, 5.0),
        },
        Label::Stuck => {
            let mut kinds = [false; 3];
            if d.uniform(0.0, 1.0) < 0.5 {
                kinds = [true; 3];
            } else {
                kinds[kind] = true;
            }
            Fraud::Stuck { kinds }
        }
        Label::Smooth => Fraud::Smooth {
            amplitude: [
                d.uniform(0.7, 1.3),
                d.uniform(0.7, 1.3),
                d.uniform(0.7, 1.3),
            ],
            wander_key: d.next_u64(),
        },
        Label::NeighbourCopy => {
            let (neighbour_id, neighbour) = neighbour.unwrap_or_else(|| {
                // A location of one device: copy a unit of the same site that is not
                // registered (the peers still see the site's other devices if any).
                ("(unregistered)".to_string(), twin.clone())
            });
            let offset = [
                d.sign() * SCALE[CO2] * d.uniform(0.25, 2.0),
                d.sign() * SCALE[TEMPERATURE] * d.uniform(0.25, 2.0),
                d.sign() * SCALE[HUMIDITY] * d.uniform(0.25, 2.0),
            ];
            Fraud::NeighbourCopy {
                neighbour: Box::new(neighbour),
                neighbour_id,
                offset,
            }
        }
        Label::OutOfBounds => {
            let values = FAULT_VALUES[kind];
            Fraud::OutOfBounds {
                kind,
                chance: d.uniform(0.1, 1.0),
                value: values[d.index(values.len())],
            }
        }
        Label::RateBurst => Fraud::RateBurst {
            kind,
            burst_readings: d.int(3, 10),
            period_readings: d.int(50, 200),
        },
        Label::ClockDrift => Fraud::ClockDrift {
            ratio: sign * d.log_uniform(0.005, 0.1),
        },
        Label::Clone => Fraud::Clone {
            twin: Box::new(twin),
            seq_gap: d.int(0, 1000),
            turn_min: 3,
            turn_max: 30,
        },
        Label::PastDay => Fraud::PastDay,
    }
}
