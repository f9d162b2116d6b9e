//! Helpers shared by the fuzz targets of `fuzz_targets/`: a cursor that reads operations off the
//! fuzzer's bytes, a virtual clock, and a counting allocator to bound memory.
//!
//! The targets decode their input with [`Cursor`] instead of `#[derive(Arbitrary)]` operation
//! enums on purpose: the byte layout stays simple enough to write seeds by hand (see
//! `fuzz/make-seeds.py`), and a seed such as "a WebSocket upgrade, then masked frames" stays
//! readable in a hex dump. `arbitrary` is used where a value has no natural wire form (the frame
//! header of the round-trip check).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Reads little pieces off the front of the fuzzer's input; past the end every read is empty/zero.
#[derive(Debug)]
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte, if any.
    pub fn next_byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    /// The next byte, 0 past the end.
    pub fn u8(&mut self) -> u8 {
        self.next_byte().unwrap_or(0)
    }

    /// The next two bytes as a little-endian `u16`, 0 past the end.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` next bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// The one clock reading of the process: targets advance virtual time from it; the core never
/// reads a clock itself.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Whether `FEDBROKER_FUZZ_TRACE` is set: targets then print what the core wrote, to check by
/// eye what a seed or a reproducer does (`cargo fuzz run TARGET FILE` with the variable set).
pub fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FEDBROKER_FUZZ_TRACE").is_some())
}

/// A small deterministic generator for split points, seeded from the fuzzer's bytes.
#[derive(Debug, Clone)]
pub struct XorShift(u32);

impl XorShift {
    /// A generator from a seed (any value; 0 is remapped).
    pub fn new(seed: u32) -> Self {
        XorShift(seed | 1)
    }

    /// The next value.
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// The system allocator, counting live bytes so that targets can assert memory stays bounded.
#[derive(Debug)]
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Bytes allocated through [`CountingAlloc`] and not yet freed.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

// SAFETY: every method forwards to `System` with the same arguments; the counter is bookkeeping.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}
