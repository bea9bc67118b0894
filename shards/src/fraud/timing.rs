//! Timing: one device's clock against the receive time, and against itself.
//!
//! Four rules, all reported as [`Detector::Timing`] (the outcome says which):
//! - **Clock rate.** A device clock that runs fast or slow moves the offset
//!   `receive_ms - device_ms` along a straight line; latency only ever adds to the offset,
//!   so its *lower envelope* (the smallest offset of each block of `rate_block_readings`
//!   readings) is what the device clock alone decides. Over the last [`RATE_BLOCKS`] block
//!   minima the robust (Theil-Sen) slope, in ms of offset per ms of receive time, is the
//!   clock's rate error. It fires when the rate is over `clock_rate_max` (0.2 %, 7 s an
//!   hour: twenty times a cheap crystal's 100 ppm) and the line explains the envelope: the
//!   offset it moved over the blocks' span is at least `clock_rate_shift_ms_min` and
//!   `clock_rate_noise_factor` times the scatter of the minima around the line (1.4826 ·
//!   MAD of the residuals), in [`RATE_AGREEING`] fits in a row of one sign within a factor
//!   of two of each other (a backlog's rise and fall draws short lines that the next fits
//!   contradict). A step (an NTP correction, a reconnection after buffering) is no line:
//!   its residuals are a quarter of the step, so it does not fire here (the clock shift
//!   rule judges it). While the shard is behind (its lag has lasted over 50 ms, and for
//!   30 s after) the rule abstains. Full strength: a clock that is measurably wrong makes every
//!   timestamp it sends wrong.
//! - **Clock shift.** The offset `receive_ms - device_ms` is smoothed by an EWMA (network
//!   latency jitters it). A steady offset is fine, devices have skewed clocks; the
//!   smoothed offset moving by more than `offset_shift_ms_max` from where it stood at the
//!   start of the current span of `offset_span_ms` (receive time) fires, then the new
//!   offset becomes the reference. So a jump fires once, and a drift faster than about
//!   `offset_shift_ms_max / offset_span_ms` fires once per span. Half strength: a server
//!   backlog or a buffered reconnection moves the offset too, so alone it alerts only at
//!   twice its limit and more.
//! - **Burst.** An EWMA of the interval between readings by device time is the device's
//!   own pace; `burst_readings` readings in a row each closer than
//!   `burst_interval_fraction_max` of that pace fire (and keep firing while the burst lasts).
//!   The pace keeps learning, so a device whose interval was really reconfigured fires for a
//!   few readings only. Half strength, as a reconfigured device does this honestly.
//! - **Backwards.** Device time going back by more than `backwards_tolerance_ms` while the
//!   sequence number grows: one clock cannot do that, a replay with fresh sequences can.
//!
//! Known limits: one reading delivered later than about `offset_shift_ms_max /
//! offset_alpha` (5 min by default) fires, and fires again when the next one is on time; a device that buffers readings while offline and sends them late shows an
//! offset jump on reconnection (the burst rule is by device time, so the backlog itself is
//! not a burst). Times are any u64: arithmetic is in i128/f64, nothing overflows.

use super::{strength_over, Detector, Signal};

/// Block minima the clock rate rule fits its line through.
pub const RATE_BLOCKS: usize = 8;

/// Parameters of the timing rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimingConfig {
    /// EWMA weight of a new offset sample, in (0, 1].
    pub offset_alpha: f32,
    /// The smoothed offset moving by more than this within one span fires.
    pub offset_shift_ms_max: u64,
    /// The span (receive time) over which the offset may move by at most the above.
    pub offset_span_ms: u64,
    /// EWMA weight of a new interval in the device's pace, in (0, 1].
    pub interval_alpha: f32,
    /// Intervals that only teach the pace before the burst rule may fire.
    pub warmup_intervals: u32,
    /// Readings in a row below the fraction of the pace that make a burst.
    pub burst_readings: u32,
    /// An interval below this fraction of the pace counts towards a burst.
    pub burst_interval_fraction_max: f32,
    /// Device time may step back by up to this (clock sync) while the sequence grows.
    pub backwards_tolerance_ms: u64,
    /// Readings per block of the clock rate rule (the block's smallest offset is its point).
    pub rate_block_readings: u32,
    /// A clock running faster or slower than this fraction fires (0.002: 0.2 %).
    pub clock_rate_max: f32,
    /// The line must move the offset by at least this over its blocks.
    pub clock_rate_shift_ms_min: u64,
    /// ... and by at least this many times the scatter of the block minima around it.
    pub clock_rate_noise_factor: f32,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            offset_alpha: 0.2,
            // Latency and NTP slews stay well under a minute per hour.
            offset_shift_ms_max: 60_000,
            offset_span_ms: 3_600_000,
            interval_alpha: 0.05,
            warmup_intervals: 10,
            burst_readings: 5,
            burst_interval_fraction_max: 0.2,
            backwards_tolerance_ms: 2_000,
            rate_block_readings: 3,
            clock_rate_max: 0.002,
            clock_rate_shift_ms_min: 20,
            clock_rate_noise_factor: 6.0,
        }
    }
}

/// What the timing rules saw in one reading; [`TimingOutcome::signal`] folds it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimingOutcome {
    /// The device clock runs measurably fast or slow.
    pub clock_rate: Option<Signal>,
    /// The clock offset jumped or drifted.
    pub clock_shift: Option<Signal>,
    /// A burst far faster than the device's pace.
    pub burst: Option<Signal>,
    /// Device time went backwards while the sequence grew.
    pub backwards: Option<Signal>,
}

impl TimingOutcome {
    /// The strongest of the rules that fired, as the one [`Detector::Timing`] signal.
    #[must_use]
    pub fn signal(&self) -> Option<Signal> {
        [
            self.clock_rate,
            self.clock_shift,
            self.burst,
            self.backwards,
        ]
        .into_iter()
        .flatten()
        .reduce(|a, b| if b.strength > a.strength { b } else { a })
    }
}

/// Timing state of one device: a few numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Timing {
    /// Smoothed `receive_ms - device_ms`, once a reading was seen.
    offset_ms: Option<f64>,
    /// The smoothed offset and receive time at the start of the current span.
    reference: (f64, u64),
    /// Device time and sequence of the reading with the highest sequence so far.
    last: Option<(u64, u64)>,
    /// Smoothed interval between readings by device time, once one was seen.
    pace_ms: Option<f64>,
    /// Intervals learnt so far (saturating).
    intervals: u32,
    /// Readings in a row faster than the burst fraction.
    burst_run: u32,
    /// The clock rate rule's state.
    rate: ClockRate,
}

/// The clock rate rule's state: block minima of the offset and the last verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct ClockRate {
    /// Completed blocks, oldest first once full: (smallest offset, its receive time).
    blocks: [(f64, u64); RATE_BLOCKS],
    filled: u8,
    /// The block being filled: readings so far and its smallest offset.
    current: (u32, f64, u64),
    /// The strength of the last fit (0: did not fire); reported on every reading until
    /// the next block completes.
    strength: f32,
    /// The fitted rate, for `fraud explain`.
    rate: f32,
    /// The slopes of the fits before the last one that passed the line's tests (0: none).
    passed: [f32; RATE_AGREEING - 1],
}

/// Fits in a row that must pass, with one sign and within a factor of two of each other: a
/// clock keeps its rate, while a backlog's rise and fall (a stall, then the burst after it)
/// draws short lines of any slope that the next fits contradict.
const RATE_AGREEING: usize = 3;

impl ClockRate {
    fn clear(&mut self) {
        *self = ClockRate::default();
    }

    /// Feeds one offset; the signal while the last fit fires.
    fn observe(
        &mut self,
        config: &TimingConfig,
        offset_ms: f64,
        receive_ms: u64,
    ) -> Option<Signal> {
        let (count, min, at) = self.current;
        self.current = if count == 0 || offset_ms < min {
            (count + 1, offset_ms, receive_ms)
        } else {
            (count + 1, min, at)
        };
        if self.current.0 >= config.rate_block_readings.max(1) {
            let point = (self.current.1, self.current.2);
            self.current = (0, 0.0, 0);
            let filled = usize::from(self.filled);
            if filled < RATE_BLOCKS {
                self.blocks[filled] = point;
                self.filled += 1;
            } else {
                self.blocks.copy_within(1.., 0);
                self.blocks[RATE_BLOCKS - 1] = point;
            }
            self.fit(config);
        }
        (self.strength > 0.0).then_some(Signal {
            detector: Detector::Timing,
            strength: self.strength,
        })
    }

    /// The Theil-Sen line through the block minima, and whether it fires.
    fn fit(&mut self, config: &TimingConfig) -> Option<()> {
        self.strength = 0.0;
        let n = usize::from(self.filled);
        // Fewer points leave a step and a line too alike.
        if n < RATE_BLOCKS / 2 + 1 {
            return None;
        }
        let points = &self.blocks[..n];
        let t0 = points[0].1;
        let x = |p: &(f64, u64)| p.1.wrapping_sub(t0) as i64 as f64;
        let mut slopes = [0.0f64; RATE_BLOCKS * (RATE_BLOCKS - 1) / 2];
        let mut k = 0;
        for i in 0..n {
            for j in i + 1..n {
                let dx = x(&points[j]) - x(&points[i]);
                if dx > 0.0 {
                    slopes[k] = (points[j].0 - points[i].0) / dx;
                    k += 1;
                }
            }
        }
        let slope = median(&mut slopes[..k])?;
        let mut residuals = [0.0f64; RATE_BLOCKS];
        for (r, p) in residuals.iter_mut().zip(points) {
            *r = p.0 - slope * x(p);
        }
        let intercept = median(&mut residuals[..n])?;
        for r in &mut residuals[..n] {
            *r = (*r - intercept).abs();
        }
        let mad = median(&mut residuals[..n])?;
        let span_ms = x(&points[n - 1]) - x(&points[0]);
        let moved_ms = slope.abs() * span_ms;
        let limit = f64::from(config.clock_rate_max);
        let noise = f64::from(config.clock_rate_noise_factor) * 1.4826 * mad;
        self.rate = slope as f32;
        let passes = slope.is_finite()
            && slope.abs() > limit
            && moved_ms >= config.clock_rate_shift_ms_min as f64
            && moved_ms >= noise;
        if !passes {
            self.passed = [0.0; RATE_AGREEING - 1];
            return Some(());
        }
        let slope32 = slope as f32;
        let agree = self.passed.iter().all(|&p| {
            p != 0.0 && p.signum() == slope32.signum() && {
                let (lo, hi) = if p.abs() < slope32.abs() {
                    (p.abs(), slope32.abs())
                } else {
                    (slope32.abs(), p.abs())
                };
                hi <= 2.0 * lo
            }
        });
        self.passed.copy_within(1.., 0);
        self.passed[RATE_AGREEING - 2] = slope32;
        if agree {
            self.strength = strength_over(slope.abs(), limit);
        }
        Some(())
    }
}

/// The median of a few values (sorted in place); `None` when empty or not a number.
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn signal(measure: f64, limit: f64) -> Option<Signal> {
    Some(Signal {
        detector: Detector::Timing,
        strength: strength_over(measure, limit),
    })
}

/// Half strength: evidence that alone alerts only at twice its limit.
fn half(signal: Option<Signal>) -> Option<Signal> {
    signal.map(|s| Signal {
        strength: s.strength * 0.5,
        ..s
    })
}

fn alpha(a: f32) -> f64 {
    if a.is_finite() {
        f64::from(a).clamp(f64::MIN_POSITIVE, 1.0)
    } else {
        1.0
    }
}

impl Timing {
    /// No reading yet.
    #[must_use]
    pub fn new() -> Timing {
        Timing::default()
    }

    /// The smoothed clock offset `receive - device` in ms, for `fraud explain`.
    #[must_use]
    pub fn offset_ms(&self) -> Option<f64> {
        self.offset_ms
    }

    /// The clock's rate error as last fitted (ms of offset per ms; negative: the device
    /// clock runs fast), for `fraud explain`.
    #[must_use]
    pub fn clock_rate(&self) -> f32 {
        self.rate.rate
    }

    /// Whether the clock rate rule currently fires on this device (its clock is known to
    /// be wrong: the shard's lag is not learned from it).
    #[must_use]
    pub fn clock_rate_fires(&self) -> bool {
        self.rate.strength > 0.0
    }

    /// The device's learnt interval between readings in ms, for `fraud explain`.
    #[must_use]
    pub fn pace_ms(&self) -> Option<f64> {
        self.pace_ms
    }

    /// Feeds one accepted reading: its device time, the time it was received and its
    /// sequence number.
    pub fn observe(
        &mut self,
        config: &TimingConfig,
        device_ms: u64,
        receive_ms: u64,
        seq: u64,
    ) -> TimingOutcome {
        self.observe_with(config, device_ms, receive_ms, Some(receive_ms), seq)
    }

    /// As [`Timing::observe`], with the clock rate rule fed `rate_receive_ms` (the receive
    /// time corrected for the shard's lag only where that lag lasted: see the engine's
    /// `ShardLag`); `None` while the shard is behind, when receive times say nothing about
    /// a clock at 0.2 %: the rule then abstains and starts its blocks over.
    pub fn observe_with(
        &mut self,
        config: &TimingConfig,
        device_ms: u64,
        receive_ms: u64,
        rate_receive_ms: Option<u64>,
        seq: u64,
    ) -> TimingOutcome {
        let mut outcome = TimingOutcome::default();
        match rate_receive_ms {
            Some(rate_receive_ms) => {
                let offset = (i128::from(rate_receive_ms) - i128::from(device_ms)) as f64;
                outcome.clock_rate = self.rate.observe(config, offset, rate_receive_ms);
            }
            // The receive clock cannot be trusted at this precision now: start over later.
            None => self.rate.clear(),
        }
        self.observe_offset(config, device_ms, receive_ms, &mut outcome);
        let Some((last_ms, last_seq)) = self.last else {
            self.last = Some((device_ms, seq));
            return outcome;
        };
        if seq <= last_seq {
            // An older sequence (reordered delivery) says nothing about pace or direction.
            return outcome;
        }
        self.last = Some((device_ms, seq));
        if device_ms < last_ms {
            self.burst_run = 0;
            let back_ms = last_ms - device_ms;
            if back_ms > config.backwards_tolerance_ms {
                outcome.backwards = signal(back_ms as f64, config.backwards_tolerance_ms as f64);
            }
            return outcome;
        }
        self.observe_interval(config, (device_ms - last_ms) as f64, &mut outcome);
        outcome
    }

    fn observe_offset(
        &mut self,
        config: &TimingConfig,
        device_ms: u64,
        receive_ms: u64,
        outcome: &mut TimingOutcome,
    ) {
        let sample = (i128::from(receive_ms) - i128::from(device_ms)) as f64;
        let Some(previous) = self.offset_ms else {
            self.offset_ms = Some(sample);
            self.reference = (sample, receive_ms);
            return;
        };
        let a = alpha(config.offset_alpha);
        let offset = previous + a * (sample - previous);
        self.offset_ms = Some(offset);
        let (reference, since_ms) = self.reference;
        let moved_ms = (offset - reference).abs();
        let limit_ms = config.offset_shift_ms_max as f64;
        if moved_ms > limit_ms {
            outcome.clock_shift = half(signal(moved_ms, limit_ms));
            // A new level: the rate rule starts over rather than fit a line through a step.
            self.rate.clear();
            // The sample is the new level: a jump fires once, not while the EWMA catches up.
            self.offset_ms = Some(sample);
            self.reference = (sample, receive_ms);
        } else if receive_ms.abs_diff(since_ms) >= config.offset_span_ms {
            self.reference = (offset, receive_ms);
        }
    }

    fn observe_interval(
        &mut self,
        config: &TimingConfig,
        interval_ms: f64,
        out: &mut TimingOutcome,
    ) {
        let Some(pace) = self.pace_ms else {
            self.pace_ms = Some(interval_ms);
            self.intervals = 1;
            return;
        };
        let fraction = f64::from(config.burst_interval_fraction_max);
        let learnt = self.intervals >= config.warmup_intervals;
        if learnt && pace > 0.0 && interval_ms < fraction * pace {
            self.burst_run = self.burst_run.saturating_add(1);
            if self.burst_run >= config.burst_readings {
                // How many times faster than the pace, against 1 / fraction.
                let speedup = pace / interval_ms.max(1.0);
                out.burst = half(signal(speedup, 1.0 / fraction));
            }
        } else {
            self.burst_run = 0;
        }
        // Learn from the first intervals at weight 1/n so the start is not biased.
        self.intervals = self.intervals.saturating_add(1);
        let a = alpha(config.interval_alpha).max(1.0 / f64::from(self.intervals));
        self.pace_ms = Some(pace + a * (interval_ms - pace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0_MS: u64 = 1_764_000_000_000;
    const MINUTE_MS: u64 = 60_000;

    /// Network latency between 50 and 2000 ms, deterministic.
    fn latency_ms(i: u64) -> u64 {
        50 + (i.wrapping_mul(2_654_435_761) >> 7) % 1_950
    }

    fn feed(
        t: &mut Timing,
        c: &TimingConfig,
        device: u64,
        receive: u64,
        seq: u64,
    ) -> TimingOutcome {
        t.observe(c, device, receive, seq)
    }

    #[test]
    fn steady_skew_and_jitter_pass() {
        let c = TimingConfig::default();
        for skew_ms in [-3_600_000i64, -5_000, 0, 90_000, 86_400_000] {
            let mut t = Timing::new();
            for i in 0..2_000u64 {
                // Ordinary interval jitter of a few seconds.
                let device = T0_MS + i * MINUTE_MS + latency_ms(i * 7) * 2;
                let receive = (device as i64 + skew_ms) as u64 + latency_ms(i);
                let o = feed(&mut t, &c, device, receive, i);
                assert_eq!(o.signal(), None, "skew {skew_ms} reading {i}: {o:?}");
            }
        }
    }

    #[test]
    fn a_clock_jump_fires_once() {
        let c = TimingConfig::default();
        let mut t = Timing::new();
        let mut fired = 0;
        for i in 0..200u64 {
            let receive = T0_MS + i * MINUTE_MS + latency_ms(i);
            // From reading 100 the device clock is ten minutes behind.
            let device = T0_MS + i * MINUTE_MS - if i >= 100 { 10 * MINUTE_MS } else { 0 };
            let o = feed(&mut t, &c, device, receive, i);
            if let Some(s) = o.clock_shift {
                assert!(i >= 100, "{i}");
                // Half strength: alone it alerts at twice its limit.
                assert!(s.strength >= 0.25);
                fired += 1;
            }
        }
        assert_eq!(fired, 1);
    }

    #[test]
    fn a_steady_drift_fires_and_a_slow_one_does_not() {
        let c = TimingConfig::default();
        // 5 s per minute of drift: 300 s per hour against 60 s.
        let run = |drift_ms_per_reading: u64| {
            let mut t = Timing::new();
            let mut fired = 0;
            for i in 0..600u64 {
                let receive = T0_MS + i * MINUTE_MS + latency_ms(i);
                let device = T0_MS + i * (MINUTE_MS + drift_ms_per_reading);
                fired += usize::from(feed(&mut t, &c, device, receive, i).clock_shift.is_some());
            }
            fired
        };
        assert!(run(5_000) >= 5, "{}", run(5_000));
        // 20 ppm, a cheap crystal: 72 ms per hour.
        assert_eq!(run(1), 0);
    }

    #[test]
    fn a_burst_far_faster_than_the_pace_fires() {
        let c = TimingConfig::default();
        let mut t = Timing::new();
        let mut device = T0_MS;
        for i in 0..50u64 {
            device += MINUTE_MS + latency_ms(i);
            assert_eq!(feed(&mut t, &c, device, device + 100, i).signal(), None);
        }
        let mut fired = Vec::new();
        for i in 50..60u64 {
            device += 1_000;
            fired.push(feed(&mut t, &c, device, device + 100, i).burst.is_some());
        }
        // The first four make the run, from the fifth on it fires.
        assert_eq!(&fired[..4], &[false; 4]);
        assert!(fired[4..].iter().all(|f| *f), "{fired:?}");
    }

    #[test]
    fn a_few_quick_readings_do_not_make_a_burst() {
        let c = TimingConfig::default();
        let mut t = Timing::new();
        let mut device = T0_MS;
        for i in 0..300u64 {
            // Every 20th reading is followed by three quick ones (a button press, a retry).
            device += if i % 20 < 3 { 500 } else { MINUTE_MS };
            assert_eq!(
                feed(&mut t, &c, device, device + 100, i).signal(),
                None,
                "{i}"
            );
        }
    }

    #[test]
    fn time_going_back_while_the_sequence_grows_fires() {
        let c = TimingConfig::default();
        let mut t = Timing::new();
        for i in 0..20u64 {
            let device = T0_MS + i * MINUTE_MS;
            assert_eq!(feed(&mut t, &c, device, device, i).signal(), None);
        }
        // A past day re-sent with fresh sequence numbers.
        let replay = T0_MS - 86_400_000;
        let o = feed(&mut t, &c, replay, T0_MS + 20 * MINUTE_MS, 20);
        assert!(o.backwards.is_some_and(|s| s.strength == 1.0), "{o:?}");
    }

    #[test]
    fn a_small_clock_step_back_or_a_reordered_sequence_passes() {
        let c = TimingConfig::default();
        let mut t = Timing::new();
        let mut out = vec![
            feed(&mut t, &c, T0_MS, T0_MS, 10),
            feed(&mut t, &c, T0_MS + MINUTE_MS, T0_MS + MINUTE_MS, 12),
        ];
        // Sequence 11 arrives late with its older device time.
        out.push(feed(&mut t, &c, T0_MS + 30_000, T0_MS + MINUTE_MS, 11));
        // An NTP sync steps the clock back one second.
        out.push(feed(
            &mut t,
            &c,
            T0_MS + MINUTE_MS - 1_000,
            T0_MS + MINUTE_MS + 10,
            13,
        ));
        assert!(out.iter().all(|o| o.signal().is_none()), "{out:?}");
    }

    /// Readings 600 ms apart received after 2 ms plus a jitter of up to 30 ms, with every
    /// 5 s a stall of 150 ms (a server falling behind); from reading `onset` the device
    /// clock runs `ratio` fast (device time = t + ratio (t - onset)). The first reading at
    /// which the clock rate rule fired, counted from the onset.
    fn rate_fired_after(ratio: f64, onset: u64, step_ms: i64) -> Option<u64> {
        let c = TimingConfig::default();
        let mut t = Timing::new();
        for i in 0..onset + 200 {
            let true_ms = T0_MS + i * 600;
            let jitter = (i.wrapping_mul(2_654_435_761) >> 9) % 30;
            let stall = if true_ms % 5_000 < 600 { 150 } else { 0 };
            let receive = true_ms + 2 + jitter + stall;
            let skew = if i >= onset {
                ratio * (i - onset) as f64 * 600.0
            } else {
                0.0
            } + if i >= onset { step_ms as f64 } else { 0.0 };
            let device = (true_ms as f64 + skew) as u64;
            if t.observe(&c, device, receive, i).clock_rate.is_some() {
                assert!(i >= onset, "fired at {i}, before the onset {onset}");
                return Some(i - onset);
            }
        }
        None
    }

    #[test]
    fn a_clock_running_fast_or_slow_fires_within_thirty_readings() {
        // Three fits in a row must agree (6 readings more than one fit); at 0.5 % the line
        // needs a few blocks more to stand out of this jitter and these stalls.
        for (ratio, within) in [
            (0.005, 40),
            (-0.005, 40),
            (0.02, 30),
            (-0.02, 30),
            (0.1, 30),
            (-0.1, 30),
        ] {
            let after = rate_fired_after(ratio, 300, 0);
            assert!(
                after.is_some_and(|n| n <= within),
                "ratio {ratio}: {after:?}"
            );
        }
    }

    #[test]
    fn a_server_stalling_for_seconds_does_not_fire_the_rate_rule() {
        // Every 10 s the server stops reading for 5 s and then takes what waited at once:
        // offsets climb and fall in sawtooth lines steeper than any clock.
        let c = TimingConfig::default();
        let mut t = Timing::new();
        for i in 0..2_000u64 {
            let true_ms = T0_MS + i * 600;
            let since = (true_ms - T0_MS) % 10_000;
            let receive = if since < 5_000 {
                true_ms - since + 5_000
            } else {
                true_ms + 3
            };
            let o = t.observe(&c, true_ms, receive, i);
            assert_eq!(o.clock_rate, None, "{i}: rate {}", t.clock_rate());
        }
    }

    #[test]
    fn a_clock_in_the_crystal_range_or_a_step_does_not_fire_the_rate_rule() {
        // 100 ppm, a cheap crystal.
        assert_eq!(rate_fired_after(0.0001, 300, 0), None);
        assert_eq!(rate_fired_after(-0.0001, 300, 0), None);
        // An NTP step of 5 s either way, under the clock shift rule's limit.
        assert_eq!(rate_fired_after(0.0, 300, 5_000), None);
        assert_eq!(rate_fired_after(0.0, 300, -5_000), None);
        // No fraud at all, stalls included.
        assert_eq!(rate_fired_after(0.0, 300, 0), None);
    }

    #[test]
    fn a_clock_rate_under_heavy_latency_jitter_does_not_fire() {
        // A cellular link: latency 50-2,000 ms, one reading a minute, a 20 ppm clock.
        let c = TimingConfig::default();
        let mut t = Timing::new();
        for i in 0..3_000u64 {
            let true_ms = T0_MS + i * MINUTE_MS;
            let device = true_ms + i * MINUTE_MS / 50_000;
            let o = t.observe(&c, device, true_ms + latency_ms(i), i);
            assert_eq!(o.clock_rate, None, "{i}: rate {}", t.clock_rate());
        }
    }

    fn any_time_ms() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            T0_MS - 1_000_000..T0_MS + 1_000_000,
            any::<u64>(),
        ]
    }

    proptest! {
        #[test]
        fn no_input_panics_and_strengths_are_in_the_unit_interval(
            readings in proptest::collection::vec((any_time_ms(), any_time_ms(), any::<u64>()), 1..200),
            shift in any::<u64>(),
            tolerance in any::<u64>(),
            fraction in any::<f32>(),
            alpha in any::<f32>(),
        ) {
            let configs = [
                TimingConfig::default(),
                TimingConfig {
                    offset_alpha: alpha,
                    offset_shift_ms_max: shift,
                    offset_span_ms: shift,
                    interval_alpha: alpha,
                    warmup_intervals: 0,
                    burst_readings: 0,
                    burst_interval_fraction_max: fraction,
                    backwards_tolerance_ms: tolerance,
                    rate_block_readings: shift as u32,
                    clock_rate_max: fraction,
                    clock_rate_shift_ms_min: tolerance,
                    clock_rate_noise_factor: alpha,
                },
            ];
            for c in configs {
                let mut t = Timing::new();
                for (device, receive, seq) in &readings {
                    let o = t.observe(&c, *device, *receive, *seq);
                    for s in [o.clock_shift, o.burst, o.backwards, o.signal()].into_iter().flatten() {
                        prop_assert_eq!(s.detector, Detector::Timing);
                        prop_assert!((0.0..=1.0).contains(&s.strength), "{:?}", s);
                    }
                }
            }
        }
    }
}
