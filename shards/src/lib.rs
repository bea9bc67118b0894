//! ingestd's per-core state machines and policies.
//!
//! Everything here is pure: no I/O, and time is always an argument, so every rule runs
//! deterministically in a test with a fake clock. The server crate owns the executors,
//! sockets and files and calls into this crate from each shard.
//!
//! - [`core::Core`]: every rule of a shard as one state machine (events in, actions out):
//!   CONNECT, the QoS flows, the checks, acknowledgements held until durable, the records.
//! - [`home_shard`]: the one function that decides which core owns a device.
//! - [`replay::ReplayWindow`]: the per-device sliding window that refuses a sequence number
//!   already seen or too old.
//! - [`validate`]: the cheap checks of a reading, in order of cost; [`session`]: a device's
//!   QoS 2 state; [`policy`]: the commit policy, the authentication throttle, credential
//!   nonces.
//! - [`fraud`]: the per-device, per-kind detectors of the fraud score and their
//!   combination (not wired into the core yet).
//!
//! `tests/purity.rs` keeps this crate free of runtimes, sockets, files and clocks, and
//! `tests/sim.rs` runs the core under a seeded simulation (docs/ARCHITECTURE.md).

#![forbid(unsafe_code)]

pub mod core;
pub mod fraud;
pub mod policy;
pub mod replay;
pub mod session;
pub mod validate;

/// The shard that owns `device_id` among `shards` shards.
///
/// Every piece of per-device state (session, replay window, fraud features) lives on this
/// shard only, so the mapping must be stable: the same id gives the same shard on every
/// node, every run and every platform. FNV-1a 64 is fixed by its definition (unlike
/// `std`'s `DefaultHasher`, which may change between Rust releases), cheap for the short
/// ids devices use, and spreads them evenly enough for a modulo.
///
/// `shards` must be at least 1; it is validated once at start-up, so zero here is a bug.
#[must_use]
pub fn home_shard(device_id: &str, shards: usize) -> usize {
    assert!(shards > 0, "home_shard: shard count must be positive");
    let hash = fnv1a_64(device_id.as_bytes());
    // usize is at most 64 bits on supported targets, so this fits before the modulo.
    (hash % shards as u64) as usize
}

/// FNV-1a, 64-bit variant (offset basis and prime from the FNV specification).
#[must_use]
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn home_shard_is_pinned() {
        // Pinned so that a change of hash (which would move every device to another core
        // and strand its on-disk state) cannot happen unnoticed.
        assert_eq!(home_shard("co2-0001", 1), 0);
        let pinned: Vec<usize> = (0..8)
            .map(|i| home_shard(&format!("co2-{i:04}"), 4))
            .collect();
        assert_eq!(pinned, [2, 1, 0, 3, 2, 1, 0, 3]);
    }

    #[test]
    fn home_shard_spreads_devices_evenly() {
        let shards = 4;
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            counts[home_shard(&format!("device-{i}"), shards)] += 1;
        }
        for count in counts {
            assert!(
                (9_000..=11_000).contains(&count),
                "uneven spread: {counts:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn home_shard_is_in_range_and_stable(id in "[A-Za-z0-9._-]{1,64}", shards in 1usize..256) {
            let shard = home_shard(&id, shards);
            prop_assert!(shard < shards);
            prop_assert_eq!(shard, home_shard(&id, shards));
        }
    }
}
