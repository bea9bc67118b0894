//! The peers table and the learned model allocate nothing per reading in steady state:
//! observe, check, check_then_observe and reference (snapshot rebuilds included), the
//! model's check and score (window swaps included).
//!
//! Counts allocations with a global allocator that delegates to `System`; the count is kept
//! per thread so the test harness's own threads do not disturb it.
#![allow(unsafe_code)] // a GlobalAlloc impl is unsafe by definition; it only delegates

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ingestd_codec::envelope::Kind;
use ingestd_shards::fraud::model::{HalfSpaceTrees, ModelConfig, FEATURES};
use ingestd_shards::fraud::peers::{GroupKey, PeerTable, PeersConfig, Scope};

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

#[test]
fn the_counter_counts() {
    assert_eq!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))), 1);
}

#[test]
fn peers_observe_and_check_do_not_allocate_in_steady_state() {
    let kind = Kind::TemperatureC;
    let keys = [
        GroupKey::new(Scope::Location, "lab", kind),
        GroupKey::new(Scope::Region, "north", kind),
    ];
    let mut table = PeerTable::new(PeersConfig::default());
    let mut t = 1_764_000_000_000u64;
    let round = |table: &mut PeerTable, t: &mut u64| {
        for device in 0..30u64 {
            *t += 2_000;
            let v = 20.0 + (device % 7) as f32 * 0.1;
            for key in keys.into_iter().flatten() {
                table.observe(key, device, *t, v);
                let _ = table.check(key, device, *t, v, kind);
                // The engine's one call, and the reference another detector reads.
                let _ = table.check_then_observe(key, device, *t + 1, v, kind);
                let _ = table.reference(key, device, *t + 1, kind);
            }
        }
    };
    // Warm-up: the groups and their vectors reach their size.
    for _ in 0..3 {
        round(&mut table, &mut t);
    }
    let before = table.counters().snapshots_built;
    let n = allocations(|| {
        for _ in 0..20 {
            round(&mut table, &mut t);
        }
    });
    assert_eq!(n, 0);
    assert!(
        table.counters().snapshots_built > before + 10,
        "no snapshot was rebuilt"
    );
}

#[test]
fn the_model_does_not_allocate_per_reading() {
    let config = ModelConfig::default();
    let mut model = HalfSpaceTrees::new(&config);
    let mut x = 0.1f32;
    let n = allocations(|| {
        for i in 0..(5 * config.window) {
            x = (x * 3.7 + 0.3) % 2.0;
            let p: [f32; FEATURES] = std::array::from_fn(|j| x - 1.0 + j as f32 * 0.01);
            let _ = model.score(&p);
            let _ = model.check(&p);
            if i % 100 == 0 {
                let _ = model.check(&[f32::NAN; FEATURES]);
            }
        }
    });
    assert_eq!(n, 0);
    assert!(model.windows() >= 5);
}
