//! Scoring a reading allocates nothing in steady state: every detector's state is fixed
//! size, the device's state is allocated once, and the shard's tables reuse their space.
//!
//! Counts allocations with a global allocator that delegates to `System`; the count is kept
//! per thread so the test harness's own threads do not disturb it.
#![allow(unsafe_code)] // a GlobalAlloc impl is unsafe by definition; it only delegates

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ingestd_codec::envelope::{Kind, Reading};
use ingestd_shards::fraud::engine::{
    address_hash, device_hash, DeviceFraud, Envelope, FraudConfig, Scorer,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<F: FnOnce()>(f: F) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

const T0_MS: u64 = 1_764_000_000_000;

/// Eight devices of one location (peers see each other) publishing CO2, temperature and
/// humidity each minute, with a spike now and then so detectors fire too.
fn readings(device: u64, i: u64) -> [Reading; 3] {
    let wobble = ((i * 7 + device * 13) % 11) as f32 - 5.0;
    let spike = if i % 50 == 0 { 400.0 } else { 0.0 };
    [
        Reading {
            kind: Kind::Co2Ppm.code(),
            value: 420.0 + device as f32 + wobble + spike,
        },
        Reading {
            kind: Kind::TemperatureC.code(),
            value: 20.0 + wobble * 0.01,
        },
        Reading {
            kind: Kind::HumidityRhPct.code(),
            value: 50.0 + wobble * 0.1,
        },
    ]
}

#[test]
fn scoring_allocates_nothing_in_steady_state() {
    let mut scorer = Scorer::new(FraudConfig::default());
    let mut devices: Vec<DeviceFraud> = (0..8).map(|_| DeviceFraud::new("lab-1", "eu")).collect();
    let ids: Vec<u64> = (0..8).map(|d| device_hash(&format!("dev-{d}"))).collect();
    let address = address_hash("10.0.0.1:4000");
    let score_round = |scorer: &mut Scorer, devices: &mut [DeviceFraud], i: u64| {
        for (d, device) in devices.iter_mut().enumerate() {
            let values = readings(d as u64, i);
            let envelope = Envelope {
                device: ids[d],
                seq: i + 1,
                device_ms: T0_MS + i * 60_000,
                received_ms: T0_MS + i * 60_000 + 150,
                address,
                connected_ms: T0_MS,
                readings: &values,
            };
            std::hint::black_box(scorer.score(device, &envelope));
        }
    };
    // Warm up: device states, the peers table and the model reach their working size.
    for i in 0..2_000 {
        score_round(&mut scorer, &mut devices, i);
    }
    let mut fired = 0;
    let count = allocations(|| {
        for i in 2_000..4_000 {
            score_round(&mut scorer, &mut devices, i);
        }
    });
    for (d, device) in devices.iter_mut().enumerate() {
        let values = readings(d as u64, 4_000);
        let envelope = Envelope {
            device: ids[d],
            seq: 4_001,
            device_ms: T0_MS + 4_000 * 60_000,
            received_ms: T0_MS + 4_000 * 60_000 + 150,
            address,
            connected_ms: T0_MS,
            readings: &values,
        };
        fired += usize::from(!scorer.score(device, &envelope).verdict.fired.is_empty());
    }
    assert_eq!(count, 0, "allocations while scoring 16,000 readings");
    assert!(
        fired > 0,
        "the spikes fire: the path that fires was measured too"
    );
}
