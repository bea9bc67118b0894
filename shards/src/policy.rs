//! Small per-shard policies, pure so that each rule is tested with a fake clock.
//!
//! - [`CommitPolicy`]: when a group commit of the durable log is due.
//! - [`AuthThrottle`]: slowing down addresses that keep failing to authenticate.
//! - [`NonceCache`]: refusing a CONNECT credential replayed inside its freshness window.

use std::collections::{HashMap, VecDeque};
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

/// The nonces of recently accepted CONNECT credentials of one device.
///
/// A credential is valid for its freshness window; over a plain connection it could be
/// sniffed and replayed within that window. Remembering the nonces accepted in the window
/// closes that. Bounded: a device that reconnects more than `NONCES_MAX` times within
/// one window is refused until older nonces age out.
#[derive(Debug, Clone, Default)]
pub struct NonceCache {
    /// (nonce, credential timestamp), oldest first.
    seen: VecDeque<([u8; 16], u64)>,
}

/// Most credentials remembered per device.
pub const NONCES_MAX: usize = 16;

/// Why a credential's nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceError {
    Replayed,
    TooManyReconnects,
}

impl NonceCache {
    /// Records `nonce` if it was not used within the window. `ts_ms` is the credential's
    /// own timestamp, already checked to be within `window_ms` of `now_ms`.
    pub fn accept(
        &mut self,
        nonce: [u8; 16],
        ts_ms: u64,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<(), NonceError> {
        // A credential older than the window is refused by its timestamp anyway, so its
        // nonce need not be remembered.
        self.seen
            .retain(|(_, ts)| now_ms.saturating_sub(*ts) <= window_ms);
        if self.seen.iter().any(|(n, _)| *n == nonce) {
            return Err(NonceError::Replayed);
        }
        if self.seen.len() >= NONCES_MAX {
            return Err(NonceError::TooManyReconnects);
        }
        self.seen.push_back((nonce, ts_ms));
        Ok(())
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
        let mut cache = NonceCache::default();
        cache.accept([1; 16], 1000, 1000, 300).unwrap();
        assert_eq!(
            cache.accept([1; 16], 1000, 1100, 300),
            Err(NonceError::Replayed)
        );
        cache.accept([2; 16], 1100, 1100, 300).unwrap();
        // After the window the old nonce is forgotten (its credential has expired anyway).
        cache.accept([1; 16], 1400, 1400, 300).unwrap();
    }

    #[test]
    fn nonce_cache_is_bounded() {
        let mut cache = NonceCache::default();
        for i in 0..NONCES_MAX as u8 {
            cache.accept([i; 16], 0, 0, 300).unwrap();
        }
        assert_eq!(
            cache.accept([200; 16], 0, 0, 300),
            Err(NonceError::TooManyReconnects)
        );
    }
}
