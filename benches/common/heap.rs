//! A counting allocator for the benchmarks that measure memory: it wraps
//! the system allocator, counting the bytes in use and their peak, in the
//! benchmark's own process (which hosts the control plane and the app).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The system allocator, counting bytes in use and their peak.
pub struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// Runs `pass`: its seconds and the heap it grew by at its peak (MiB).
pub async fn measured<T>(pass: impl AsyncFnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64, f64)> {
    let before = IN_USE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t0 = Instant::now();
    let out = pass().await?;
    let secs = t0.elapsed().as_secs_f64();
    let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before) as f64 / (1024.0 * 1024.0);
    Ok((out, secs, grew))
}

/// Bytes in use now.
pub fn in_use() -> usize {
    IN_USE.load(Ordering::Relaxed)
}
