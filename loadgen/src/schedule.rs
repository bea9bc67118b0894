//! Offered load over time: how many messages are due by time `t` since the start of the
//! timed phase, for a constant rate, a linear ramp, or periodic bursts.
//!
//! The schedule is global (all connections together); connection `i` of `d` sends the
//! messages whose global index `g` has `g % d == i`, so the connections interleave evenly
//! and their sum is exactly the global schedule.

/// A rate schedule. Rates are in messages per second for all connections together.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `rate` messages per second from start to end.
    Constant { rate: f64 },
    /// Linear from `from` to `to` over `secs` seconds, then `to`.
    Ramp { from: f64, to: f64, secs: f64 },
    /// Every `every` seconds, `len` seconds at `peak`, then `base` for the rest of the period.
    Burst {
        base: f64,
        peak: f64,
        every: f64,
        len: f64,
    },
}

impl Schedule {
    /// The instantaneous rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        match *self {
            Schedule::Constant { rate } => rate,
            Schedule::Ramp { from, to, secs } => {
                if t >= secs || secs <= 0.0 {
                    to
                } else {
                    from + (to - from) * t / secs
                }
            }
            Schedule::Burst {
                base,
                peak,
                every,
                len,
            } => {
                let r = t - (t / every).floor() * every;
                if r < len {
                    peak
                } else {
                    base
                }
            }
        }
    }

    /// The (real-valued) number of messages offered in `[0, t]`: the integral of the rate.
    pub fn cumulative(&self, t: f64) -> f64 {
        let t = t.max(0.0);
        match *self {
            Schedule::Constant { rate } => rate * t,
            Schedule::Ramp { from, to, secs } => {
                if secs <= 0.0 {
                    to * t
                } else if t <= secs {
                    from * t + (to - from) * t * t / (2.0 * secs)
                } else {
                    from * secs + (to - from) * secs / 2.0 + to * (t - secs)
                }
            }
            Schedule::Burst {
                base,
                peak,
                every,
                len,
            } => {
                let periods = (t / every).floor();
                let per_period = peak * len + base * (every - len);
                let r = t - periods * every;
                periods * per_period + r.min(len) * peak + (r - len).max(0.0) * base
            }
        }
    }

    /// Whole messages due by `t` seconds (all connections together).
    pub fn due(&self, t: f64) -> u64 {
        // The epsilon keeps exact products (rate 1000 × 0.001 s) from flooring to n − 1.
        let c = self.cumulative(t) + 1e-6;
        if c <= 0.0 {
            0
        } else {
            c.floor() as u64
        }
    }

    /// The earliest time (seconds) at which `n` messages are due; `None` if never (rate 0).
    pub fn time_of(&self, n: u64) -> Option<f64> {
        if n == 0 {
            return Some(0.0);
        }
        let mut hi = 1.0f64;
        while self.due(hi) < n {
            hi *= 2.0;
            if hi > 1e9 {
                return None;
            }
        }
        let mut lo = 0.0f64;
        // 60 halvings of at most 1e9 s: below a nanosecond.
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if self.due(mid) >= n {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    }

    /// When message `k` of connection `i` of `d` is planned, in seconds after the start of
    /// the timed phase (`None`: never, at rate 0).
    pub fn planned_s(&self, k: u64, i: u64, d: u64) -> Option<f64> {
        self.time_of(global_index(k, i, d) + 1)
    }

    /// [`Schedule::planned_s`] in whole ms (0 when never): the offset of the message's
    /// device time from the run's time base.
    pub fn planned_ms(&self, k: u64, i: u64, d: u64) -> u64 {
        self.planned_s(k, i, d).map_or(0, whole_ms)
    }
}

/// Seconds of the schedule in whole ms, as device times are stamped.
pub fn whole_ms(secs: f64) -> u64 {
    (secs * 1000.0) as u64
}

/// How many of the first `total` global messages belong to connection `i` of `d`
/// (those with index `g % d == i`).
pub fn share(total: u64, i: u64, d: u64) -> u64 {
    if d == 0 || total <= i {
        0
    } else {
        (total - i - 1) / d + 1
    }
}

/// The global index of the `k`-th message (0-based) of connection `i` of `d`.
pub fn global_index(k: u64, i: u64, d: u64) -> u64 {
    k * d + i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_due() {
        let s = Schedule::Constant { rate: 1000.0 };
        assert_eq!(s.due(0.0), 0);
        assert_eq!(s.due(0.001), 1);
        assert_eq!(s.due(1.0), 1000);
        assert_eq!(s.due(2.5), 2500);
        assert_eq!(s.due(-1.0), 0);
        let t = s.time_of(1500).unwrap();
        assert!((t - 1.5).abs() < 1e-6, "{t}");
        assert_eq!(s.due(t), 1500);
        assert_eq!(Schedule::Constant { rate: 0.0 }.time_of(1), None);
    }

    #[test]
    fn ramp_due() {
        // 0 → 100 msg/s over 10 s: 500 messages in the ramp, then 100 per second.
        let s = Schedule::Ramp {
            from: 0.0,
            to: 100.0,
            secs: 10.0,
        };
        assert_eq!(s.due(10.0), 500);
        assert_eq!(s.due(5.0), 125);
        assert_eq!(s.due(12.0), 700);
        assert!((s.rate_at(5.0) - 50.0).abs() < 1e-9);
        assert!((s.rate_at(11.0) - 100.0).abs() < 1e-9);
        let t = s.time_of(125).unwrap();
        assert!((t - 5.0).abs() < 1e-6, "{t}");
    }

    #[test]
    fn burst_due() {
        // Every 10 s: 1 s at 1000/s, 9 s at 100/s → 1900 per period.
        let s = Schedule::Burst {
            base: 100.0,
            peak: 1000.0,
            every: 10.0,
            len: 1.0,
        };
        assert_eq!(s.due(0.5), 500);
        assert_eq!(s.due(1.0), 1000);
        assert_eq!(s.due(2.0), 1100);
        assert_eq!(s.due(10.0), 1900);
        assert_eq!(s.due(10.5), 2400);
        assert_eq!(s.rate_at(10.2), 1000.0);
        assert_eq!(s.rate_at(13.0), 100.0);
    }

    #[test]
    fn due_is_monotone() {
        let schedules = [
            Schedule::Constant { rate: 333.3 },
            Schedule::Ramp {
                from: 10.0,
                to: 5000.0,
                secs: 3.0,
            },
            Schedule::Burst {
                base: 0.0,
                peak: 777.0,
                every: 2.0,
                len: 0.3,
            },
        ];
        for s in schedules {
            let mut prev = 0;
            for step in 0..10_000 {
                let d = s.due(f64::from(step) * 0.001);
                assert!(d >= prev);
                prev = d;
            }
        }
    }

    #[test]
    fn shares_sum_to_total() {
        for d in 1..12u64 {
            for total in 0..100u64 {
                let sum: u64 = (0..d).map(|i| share(total, i, d)).sum();
                assert_eq!(sum, total, "d={d} total={total}");
            }
        }
        assert_eq!(share(10, 3, 4), 2); // 3, 7
        assert_eq!(global_index(2, 3, 4), 11);
    }
}
