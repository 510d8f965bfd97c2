//! The capture thread's steady state never allocates.
//!
//! A global allocator counts every allocation made on a thread that has marked
//! itself "real-time". The real capture loop ([`CaptureLoop::run`]) then runs
//! for thousands of periods — reading a real ALSA PCM (alsa-lib's `file`
//! plugin) and, separately, the synthetic source — with the ring drained by an
//! ordinary thread, and also with the ring left full so every period takes the
//! overflow path. Any allocation on the capture thread fails the test.
//!
//! Limits: this sees allocations through Rust's global allocator, not `malloc`
//! calls inside alsa-lib's C code.
#![allow(unsafe_code)] // a GlobalAlloc impl, and set_var before threads exist

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rakkr_agent::capture::{CaptureLoop, CaptureStats, Gap};
use rakkr_agent::source::alsa::{AlsaRequest, AlsaSource};
use rakkr_agent::source::{CaptureSource, SampleFormat, Signal, SyntheticSource};

mod common;
use common::alsa_config;

thread_local! {
    /// Set by a thread while it runs code that must not allocate.
    static REALTIME: Cell<bool> = const { Cell::new(false) };
    /// Allocator calls this thread made while `REALTIME` was set.
    static RT_ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Tripwire;

fn note() {
    if REALTIME.try_with(Cell::get).unwrap_or(false) {
        let _ = RT_ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

/// Run `f` on this thread with the tripwire armed; return what it allocated.
fn armed<T>(f: impl FnOnce() -> T) -> (usize, T) {
    RT_ALLOCATIONS.with(|n| n.set(0));
    REALTIME.with(|r| r.set(true));
    let out = f();
    REALTIME.with(|r| r.set(false));
    (RT_ALLOCATIONS.with(Cell::get), out)
}

// SAFETY: every call forwards unchanged to the system allocator; the extra work
// is const-initialised thread-local access, which does not allocate.
unsafe impl GlobalAlloc for Tripwire {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tripwire = Tripwire;

const PERIOD: u32 = 64;
const CHANNELS: u16 = 8;
const PERIODS: u64 = 5_000;

/// Run the real capture loop on its own thread until `PERIODS` periods went
/// through (captured or dropped); return the allocations it made and its stats.
fn run_loop(source: Box<dyn CaptureSource>, drain: bool) -> (usize, Arc<CaptureStats>) {
    let period_samples = source.period_frames() * usize::from(source.format().channels);
    let (producer, mut consumer) = rtrb::RingBuffer::<i32>::new(period_samples * 16);
    let (gap_producer, _gaps) = rtrb::RingBuffer::<Gap>::new(8);
    let stats = Arc::new(CaptureStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let target = PERIODS * u64::from(PERIOD);
    let capture = {
        let stats = stats.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut capture_loop = CaptureLoop::new(source, producer, gap_producer, stats, stop);
            let (allocations, result) = armed(|| capture_loop.run());
            result.expect("capture loop failed");
            allocations
        })
    };
    loop {
        if drain {
            let n = consumer.slots();
            if let Ok(chunk) = consumer.read_chunk(n) {
                chunk.commit_all();
            }
        }
        let done = stats.frames_captured.load(Ordering::Relaxed)
            + stats.frames_dropped.load(Ordering::Relaxed);
        if done >= target {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::Relaxed);
    (capture.join().unwrap(), stats)
}

#[test]
fn the_capture_loop_does_not_allocate() {
    // ALSA: a file-plugin PCM long enough for every period of both runs.
    let dir = tempfile::tempdir().unwrap();
    let frames = (2 * PERIODS as usize + 100) * PERIOD as usize;
    std::fs::write(
        dir.path().join("in.raw"),
        vec![0x11u8; frames * usize::from(CHANNELS) * 4],
    )
    .unwrap();
    let conf = alsa_config(dir.path(), "", &[("replay", &dir.path().join("in.raw"))]);
    // SAFETY: no other thread exists yet in this test process.
    unsafe { std::env::set_var("ALSA_CONFIG_PATH", conf) };
    let alsa = || {
        Box::new(
            AlsaSource::open(&AlsaRequest {
                device: "replay".into(),
                channels: CHANNELS,
                rate: 48_000,
                format: SampleFormat::S32Le,
                period_frames: PERIOD,
                periods: 4,
            })
            .unwrap(),
        )
    };

    let (allocations, stats) = run_loop(alsa(), true);
    assert_eq!(
        allocations, 0,
        "the capture thread allocated while reading ALSA"
    );
    assert!(stats.frames_captured.load(Ordering::Relaxed) > 0);

    let (allocations, stats) = run_loop(alsa(), false);
    assert_eq!(
        allocations, 0,
        "the capture thread allocated on the overflow path"
    );
    assert!(
        stats.frames_dropped.load(Ordering::Relaxed) > 0,
        "the full ring dropped periods"
    );

    let synthetic = SyntheticSource::new(
        48_000,
        CHANNELS,
        PERIOD as usize,
        Signal::Noise { level_dbfs: -6.0 },
        1,
    )
    .unpaced();
    let (allocations, _) = run_loop(Box::new(synthetic), true);
    assert_eq!(
        allocations, 0,
        "the capture thread allocated with the synthetic source"
    );
}

#[test]
fn the_tripwire_sees_allocations() {
    let (allocations, v) = armed(|| std::hint::black_box(vec![1u64, 2, 3]));
    drop(v);
    assert_eq!(allocations, 1);
}
