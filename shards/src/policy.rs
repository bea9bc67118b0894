//! Small per-shard policies, pure so that each rule is tested with a fake clock.
//!
//! - [`CommitPolicy`]: when a group commit of the durable log is due.
//! - [`AuthThrottle`]: slowing down addresses that keep failing to authenticate.
//! - [`CredentialNonces`]: refusing a CONNECT credential replayed inside its freshness
//!   window.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;

/// Group commit: commit when enough bytes wait, or when the oldest has waited long enough.
///
/// Bounded batch and bounded delay together cap both the syscall rate under load and the
/// acknowledgement latency when idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPolicy {
    pub batch_bytes_max: usize,
    pub interval_us: u64,
}

/// What the committer should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitDecision {
    /// Nothing is pending: sleep until woken by an append.
    Idle,
    /// Commit now.
    Now,
    /// Wait this long, then ask again.
    Wait { us: u64 },
}

impl CommitPolicy {
    /// `oldest_pending_us` is when the oldest uncommitted record was appended.
    #[must_use]
    pub fn decide(
        &self,
        pending_bytes: usize,
        oldest_pending_us: Option<u64>,
        now_us: u64,
    ) -> CommitDecision {
        let Some(oldest) = oldest_pending_us else {
            return CommitDecision::Idle;
        };
        if pending_bytes >= self.batch_bytes_max {
            return CommitDecision::Now;
        }
        let waited = now_us.saturating_sub(oldest);
        if waited >= self.interval_us {
            CommitDecision::Now
        } else {
            CommitDecision::Wait {
                us: self.interval_us - waited,
            }
        }
    }
}

/// Repeated authentication failures from one address are answered ever more slowly:
/// after `free_failures`, each refusal waits `delay_ms` doubling per further failure up
/// to `delay_ms_max`. A success clears the address. The table is bounded; when full, the
/// oldest entries are forgotten (an attacker cycling addresses gains nothing from that
/// they would not gain from fresh addresses anyway).
#[derive(Debug)]
pub struct AuthThrottle {
    free_failures: u32,
    delay_ms: u64,
    delay_ms_max: u64,
    /// Entries idle this long are forgotten.
    forget_after_ms: u64,
    entries_max: usize,
    failures: HashMap<IpAddr, (u32, u64)>,
    order: VecDeque<IpAddr>,
}

impl AuthThrottle {
    #[must_use]
    pub fn new(free_failures: u32, delay_ms: u64, delay_ms_max: u64, entries_max: usize) -> Self {
        assert!(entries_max > 0);
        Self {
            free_failures,
            delay_ms,
            delay_ms_max,
            forget_after_ms: 10 * 60 * 1000,
            entries_max,
            failures: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// How long to hold a refusal to `addr` that just failed at `now_ms`.
    pub fn failed(&mut self, addr: IpAddr, now_ms: u64) -> u64 {
        let forget_after_ms = self.forget_after_ms;
        let entry = self.failures.entry(addr).or_insert_with(|| (0, now_ms));
        if now_ms.saturating_sub(entry.1) > forget_after_ms {
            *entry = (0, now_ms);
        }
        if entry.0 == 0 {
            self.order.push_back(addr);
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now_ms;
        let count = entry.0;
        while self.failures.len() > self.entries_max {
            match self.order.pop_front() {
                Some(old) => {
                    self.failures.remove(&old);
                }
                None => break,
            }
        }
        if count <= self.free_failures {
            return 0;
        }
        let doublings = (count - self.free_failures - 1).min(32);
        self.delay_ms
            .saturating_mul(1u64 << doublings)
            .min(self.delay_ms_max)
    }

    /// A success from `addr` clears its record.
    pub fn succeeded(&mut self, addr: IpAddr) {
        if self.failures.remove(&addr).is_some() {
            self.order.retain(|a| *a != addr);
        }
    }

    #[must_use]
    pub fn tracked(&self) -> usize {
        self.failures.len()
    }
}

/// The nonces of the CONNECT credentials a shard accepted, remembered until each
/// credential's timestamp leaves the freshness window.
///
/// A credential is valid for `window_ms` either side of its timestamp; over a plain
/// connection it could be sniffed and replayed within that time. Remembering every accepted
/// (device, nonce) pair until then closes that, with no limit per device: a device may
/// reconnect as often as it likes. Memory is bounded per shard by `entries_max`. When that
/// many credentials are inside the window, the one with the oldest timestamp is forgotten and
/// its timestamp becomes a floor: credentials dated at or below it are refused, so the
/// forgotten one can never be used again. The floor is the timestamp of an accepted
/// credential, so a fresh credential (dated now, newer than anything forgotten) is never
/// refused by it; the floor only matters under more than `entries_max` CONNECTs within one
/// window.
#[derive(Debug, Clone)]
pub struct CredentialNonces {
    entries_max: usize,
    /// (device, nonce) -> the credential's timestamp.
    seen: HashMap<(String, [u8; 16]), u64>,
    /// The same pairs by timestamp, oldest first: expiry and eviction take from the front.
    by_ts: BTreeSet<(u64, String, [u8; 16])>,
    /// Credentials dated at or below this are refused (an evicted nonce lay there).
    floor_ts_ms: Option<u64>,
}

/// Why a credential's nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    /// This device's nonce was accepted within the window.
    Replayed,
    /// Dated at or below the floor left by evicting a nonce under memory pressure.
    BelowFloor { floor_ts_ms: u64 },
}

impl NonceError {
    /// Stable name for logs and refusal counters.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            NonceError::Replayed => "replayed_credential",
            NonceError::BelowFloor { .. } => "credential_below_floor",
        }
    }
}

impl CredentialNonces {
    #[must_use]
    pub fn new(entries_max: usize) -> Self {
        assert!(entries_max > 0, "CredentialNonces needs room for one nonce");
        Self {
            entries_max,
            seen: HashMap::new(),
            by_ts: BTreeSet::new(),
            floor_ts_ms: None,
        }
    }

    /// Records `device`'s `nonce` if it was not accepted within the window. `ts_ms` is the
    /// credential's own timestamp, already checked to be within `window_ms` of `now_ms`.
    pub fn accept(
        &mut self,
        device: &str,
        nonce: [u8; 16],
        ts_ms: u64,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<(), NonceError> {
        self.expire(now_ms, window_ms);
        if let Some(floor_ts_ms) = self.floor_ts_ms {
            if ts_ms <= floor_ts_ms {
                return Err(NonceError::BelowFloor { floor_ts_ms });
            }
        }
        let key = (device.to_string(), nonce);
        if self.seen.contains_key(&key) {
            return Err(NonceError::Replayed);
        }
        while self.seen.len() >= self.entries_max {
            let Some((ts, device, nonce)) = self.by_ts.pop_first() else {
                break;
            };
            self.seen.remove(&(device, nonce));
            self.floor_ts_ms = Some(self.floor_ts_ms.map_or(ts, |floor| floor.max(ts)));
        }
        self.by_ts.insert((ts_ms, key.0.clone(), nonce));
        self.seen.insert(key, ts_ms);
        Ok(())
    }

    /// Forgets nonces whose credentials have expired: the timestamp check refuses them.
    pub fn expire(&mut self, now_ms: u64, window_ms: u64) {
        while let Some((ts, _, _)) = self.by_ts.first() {
            if now_ms.saturating_sub(*ts) <= window_ms {
                break;
            }
            if let Some((_, device, nonce)) = self.by_ts.pop_first() {
                self.seen.remove(&(device, nonce));
            }
        }
        if self
            .floor_ts_ms
            .is_some_and(|floor| now_ms.saturating_sub(floor) > window_ms)
        {
            // Everything at or below the floor has expired anyway.
            self.floor_ts_ms = None;
        }
    }

    /// Nonces remembered now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Every remembered (device, nonce, timestamp), oldest first: what a checkpoint keeps.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8; 16], u64)> {
        self.by_ts
            .iter()
            .map(|(ts, device, nonce)| (device.as_str(), nonce, *ts))
    }

    /// The floor, if an eviction raised one that has not expired.
    #[must_use]
    pub fn floor_ts_ms(&self) -> Option<u64> {
        self.floor_ts_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_policy_bounds_batch_and_delay() {
        let policy = CommitPolicy {
            batch_bytes_max: 1000,
            interval_us: 2000,
        };
        assert_eq!(policy.decide(0, None, 5), CommitDecision::Idle);
        assert_eq!(policy.decide(1000, Some(100), 100), CommitDecision::Now);
        assert_eq!(
            policy.decide(10, Some(100), 600),
            CommitDecision::Wait { us: 1500 }
        );
        assert_eq!(policy.decide(10, Some(100), 2100), CommitDecision::Now);
        // A clock that went backwards must not stall commits forever.
        assert_eq!(
            policy.decide(10, Some(5000), 100),
            CommitDecision::Wait { us: 2000 }
        );
    }

    #[test]
    fn throttle_doubles_after_free_failures_and_resets_on_success() {
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        let mut throttle = AuthThrottle::new(2, 100, 1000, 1024);
        assert_eq!(throttle.failed(addr, 0), 0);
        assert_eq!(throttle.failed(addr, 1), 0);
        assert_eq!(throttle.failed(addr, 2), 100);
        assert_eq!(throttle.failed(addr, 3), 200);
        assert_eq!(throttle.failed(addr, 4), 400);
        assert_eq!(throttle.failed(addr, 5), 800);
        assert_eq!(throttle.failed(addr, 6), 1000);
        assert_eq!(throttle.failed(addr, 7), 1000);
        // Another address is unaffected.
        assert_eq!(throttle.failed("10.0.0.2".parse().unwrap(), 8), 0);
        throttle.succeeded(addr);
        assert_eq!(throttle.failed(addr, 9), 0);
    }

    #[test]
    fn throttle_forgets_idle_addresses_and_stays_bounded() {
        let mut throttle = AuthThrottle::new(0, 100, 1000, 3);
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(throttle.failed(addr, 0), 100);
        // Ten minutes later it starts over.
        assert_eq!(throttle.failed(addr, 11 * 60 * 1000), 100);
        for i in 0..10u8 {
            throttle.failed(IpAddr::from([10, 1, 0, i]), 0);
        }
        assert!(throttle.tracked() <= 3);
    }

    #[test]
    fn nonce_reuse_within_window_is_refused() {
        let mut cache = CredentialNonces::new(1024);
        cache.accept("a", [1; 16], 1000, 1000, 300).unwrap();
        assert_eq!(
            cache.accept("a", [1; 16], 1000, 1100, 300),
            Err(NonceError::Replayed)
        );
        // Another device's equal nonce is its own.
        cache.accept("b", [1; 16], 1000, 1100, 300).unwrap();
        cache.accept("a", [2; 16], 1100, 1100, 300).unwrap();
        // After the window the old nonce is forgotten (its credential has expired anyway).
        cache.accept("a", [1; 16], 1400, 1400, 300).unwrap();
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_device_reconnecting_often_is_never_locked_out() {
        // The defect: a per-device cap of 16 refused the 17th fresh credential.
        let mut cache = CredentialNonces::new(1 << 16);
        for i in 0..1000u64 {
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&i.to_le_bytes());
            let now = 1_000_000 + i * 100;
            assert_eq!(cache.accept("a", nonce, now, now, 300_000), Ok(()), "{i}");
        }
    }

    #[test]
    fn a_full_cache_evicts_the_oldest_and_refuses_below_it_but_never_a_fresh_one() {
        let mut cache = CredentialNonces::new(3);
        for (i, ts) in [100u64, 110, 120].into_iter().enumerate() {
            cache.accept("a", [i as u8; 16], ts, 130, 300).unwrap();
        }
        // Full: the oldest (ts 100) is forgotten and becomes the floor.
        cache.accept("a", [9; 16], 130, 130, 300).unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.floor_ts_ms(), Some(100));
        // The forgotten nonce cannot come back: its timestamp is at the floor.
        assert_eq!(
            cache.accept("a", [0; 16], 100, 140, 300),
            Err(NonceError::BelowFloor { floor_ts_ms: 100 })
        );
        // A fresh credential always passes.
        cache.accept("b", [7; 16], 140, 140, 300).unwrap();
        // Once the floor has left the window, it is gone.
        assert_eq!(cache.floor_ts_ms(), Some(110));
        cache.expire(415, 300);
        assert_eq!(cache.floor_ts_ms(), None);
        let entries: Vec<_> = cache.entries().map(|(_, _, ts)| ts).collect();
        assert_eq!(entries, [120, 130, 140]);
    }
}
