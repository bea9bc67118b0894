//! The PUBLISH/PUBACK hot path allocates nothing: decoding a PUBLISH (3.1.1, and v5 with
//! properties but no User Property) and writing a PUBACK into a buffer with capacity.
//!
//! Counts allocations with a global allocator that delegates to `System`; the count is kept
//! per thread so the test harness's own threads do not disturb it.
#![allow(unsafe_code)] // a GlobalAlloc impl is unsafe by definition; it only delegates

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ingestd_codec::mqtt::{decode, encode_puback, Decoded, Packet, Protocol};

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
fn publish_and_puback_do_not_allocate() {
    let v311 = [
        0x32, // PUBLISH QoS 1
        0x0B, // remaining length 11
        0x00, 0x03, b'a', b'/', b'b', // topic "a/b"
        0x00, 0x01, // packet id 1
        b'd', b'a', b't', b'a', // payload
    ];
    let v5 = [
        0x32, // PUBLISH QoS 1
        0x14, // remaining length 20
        0x00, 0x03, b'a', b'/', b'b', // topic "a/b"
        0x00, 0x01, // packet id 1
        0x08, // property length 8
        0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry 60
        0x23, 0x00, 0x01, // topic alias 1
        b'd', b'a', b't', b'a', // payload
    ];
    let mut out = Vec::with_capacity(64);
    let n = allocations(|| {
        for (frame, protocol) in [(&v311[..], Protocol::V311), (&v5[..], Protocol::V5)] {
            let Ok(Decoded::Packet {
                packet: Packet::Publish(p),
                len,
            }) = decode(frame, protocol, 1024)
            else {
                panic!("not a PUBLISH");
            };
            assert_eq!((len, p.payload), (frame.len(), &b"data"[..]));
            encode_puback(p.pkid, protocol, &mut out).ok();
        }
    });
    assert_eq!(n, 0, "hot path allocated {n} times");
    assert_eq!(out, [0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00, 0x01]);
}
