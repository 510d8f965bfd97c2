//! The capture thread and the meter thread around the SPSC ring.
//!
//! Capture thread, steady state: `source.read(period)` → push into the ring →
//! update counters. Its buffer is allocated before the loop; it takes no lock,
//! writes no log line and never waits for the consumer. When the ring lacks
//! room for a whole period, the period is dropped and counted in
//! [`CaptureStats::frames_dropped`] (the position and length of such gaps are
//! recorded by the recording pipeline; see the capture-engine issue).
//!
//! Meter thread: pops whatever is in the ring, feeds a [`MeterAccumulator`], and
//! every `meter_interval` of *captured* audio emits a [`MeterFrame`] stamped with
//! the capture time of its last sample (anchor wall time + frames / rate).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rakkr_protocol::payload::MeterFrame;
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::meter::MeterAccumulator;
use crate::source::{CaptureError, CaptureSource, StreamFormat};

/// Counters shared between the capture thread and everyone else.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub frames_captured: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// Device overruns (each one a gap in the audio).
    pub xruns: AtomicU64,
    /// Stream position (frames delivered before it) of the latest overrun.
    pub last_xrun_position: AtomicU64,
    pub meter_frames_dropped: AtomicU64,
    /// Set when the capture thread stopped because the source failed.
    pub failed: AtomicBool,
}

/// Running capture and meter threads. Dropping it does not stop them; call [`stop`](Self::stop).
#[derive(Debug)]
pub struct CapturePipeline {
    stop: Arc<AtomicBool>,
    pub stats: Arc<CaptureStats>,
    pub format: StreamFormat,
    /// Whether the capture thread runs with SCHED_FIFO (see [`crate::rt`]).
    pub sched_fifo: bool,
    capture: JoinHandle<Result<(), CaptureError>>,
    meter: JoinHandle<()>,
}

/// How much audio the ring holds, in periods: enough to ride out a slow
/// consumer for a while without ever making the producer wait.
pub const RING_PERIODS: usize = 64;

impl CapturePipeline {
    pub fn start(
        source: Box<dyn CaptureSource>,
        clock: Arc<dyn Clock>,
        meter_interval: Duration,
        meters_out: mpsc::Sender<MeterFrame>,
        realtime: bool,
    ) -> std::io::Result<Self> {
        let format = source.format();
        let channels = usize::from(format.channels);
        let period_samples = source.period_frames() * channels;
        let (producer, mut consumer) = rtrb::RingBuffer::<i32>::new(period_samples * RING_PERIODS);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CaptureStats::default());

        let (granted_tx, granted_rx) = std::sync::mpsc::sync_channel(1);
        let capture = {
            let mut capture_loop = CaptureLoop::new(source, producer, stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("rakkr-capture".into())
                .spawn(move || {
                    let granted = realtime && crate::rt::promote_current_thread();
                    let _ = granted_tx.send(granted);
                    capture_loop.run()
                })?
        };
        let sched_fifo = granted_rx.recv().unwrap_or(false);

        let meter = {
            let stop = stop.clone();
            let stats = stats.clone();
            let interval_frames =
                (meter_interval.as_millis() as u64 * u64::from(format.sample_rate) / 1000).max(1);
            let window_ms = meter_interval.as_millis() as u32;
            let idle = Duration::from_micros(
                (source_period_us(period_samples / channels.max(1), format.sample_rate) / 2)
                    .max(500),
            );
            std::thread::Builder::new()
                .name("rakkr-meter".into())
                .spawn(move || {
                    let mut acc = MeterAccumulator::new(channels, format.valid_bits);
                    let mut anchor_ms: Option<u64> = None;
                    let mut total_frames: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let available = consumer.slots();
                        if available < channels {
                            std::thread::sleep(idle);
                            continue;
                        }
                        // Never split a frame; never run past the end of the window.
                        let window_left = (interval_frames - acc.frames()) as usize;
                        let take = (available / channels).min(window_left) * channels;
                        let Ok(chunk) = consumer.read_chunk(take) else {
                            continue;
                        };
                        let anchor = *anchor_ms.get_or_insert_with(|| clock.unix_ms());
                        let (a, b) = chunk.as_slices();
                        acc.push_interleaved(a);
                        acc.push_interleaved(b);
                        chunk.commit_all();
                        total_frames += (take / channels) as u64;
                        if acc.frames() >= interval_frames {
                            let frame = MeterFrame {
                                captured_at_ms: anchor
                                    + total_frames * 1000 / u64::from(format.sample_rate),
                                window_ms,
                                sample_rate: format.sample_rate,
                                channels: acc.take(),
                            };
                            if meters_out.try_send(frame).is_err() {
                                stats.meter_frames_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })?
        };

        Ok(CapturePipeline {
            stop,
            stats,
            format,
            sched_fifo,
            capture,
            meter,
        })
    }

    /// Stop both threads and wait for them. Returns the capture thread's error, if it failed.
    pub fn stop(self) -> Result<(), CaptureError> {
        self.stop.store(true, Ordering::Relaxed);
        let result = self
            .capture
            .join()
            .unwrap_or_else(|_| Err(CaptureError::Device("capture thread panicked".into())));
        let _ = self.meter.join();
        result
    }
}

/// The capture thread's work, split so that everything it allocates happens in
/// [`new`](Self::new) and [`run`](Self::run) is the allocation-free steady state.
pub struct CaptureLoop {
    source: Box<dyn CaptureSource>,
    producer: rtrb::Producer<i32>,
    buf: Vec<i32>,
    channels: usize,
    pub stats: Arc<CaptureStats>,
    stop: Arc<AtomicBool>,
}

impl CaptureLoop {
    pub fn new(
        source: Box<dyn CaptureSource>,
        producer: rtrb::Producer<i32>,
        stats: Arc<CaptureStats>,
        stop: Arc<AtomicBool>,
    ) -> CaptureLoop {
        let channels = usize::from(source.format().channels);
        let buf = vec![0i32; source.period_frames() * channels];
        CaptureLoop {
            source,
            producer,
            buf,
            channels,
            stats,
            stop,
        }
    }

    /// Read periods and push them into the ring until `stop` is set or the
    /// source fails. Steady state: one source read, one ring write or one
    /// dropped-period count, a few relaxed atomics. No allocation, lock or log.
    pub fn run(&mut self) -> Result<(), CaptureError> {
        let stats = &*self.stats;
        // Returns by value would drop (free) the loop's buffers on this thread:
        // `&mut self` leaves that to the caller, outside the steady state.
        while !self.stop.load(Ordering::Relaxed) {
            let read = match self.source.read(&mut self.buf) {
                Ok(read) => read,
                Err(e) => {
                    stats.failed.store(true, Ordering::Release);
                    return Err(e);
                }
            };
            if read.xrun_before {
                stats.xruns.fetch_add(1, Ordering::Relaxed);
                stats.last_xrun_position.store(
                    stats.frames_captured.load(Ordering::Relaxed)
                        + stats.frames_dropped.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
            }
            let samples = read.frames * self.channels;
            let counter = match self.producer.write_chunk_uninit(samples) {
                Ok(chunk) => {
                    chunk.fill_from_iter(self.buf[..samples].iter().copied());
                    &stats.frames_captured
                }
                Err(_) => &stats.frames_dropped,
            };
            counter.fetch_add(read.frames as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn source_period_us(period_frames: usize, rate: u32) -> u64 {
    period_frames as u64 * 1_000_000 / u64::from(rate.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::source::{Signal, SyntheticSource};

    struct FixedClock(u64);
    impl Clock for FixedClock {
        fn unix_ms(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn meter_frames_are_stamped_by_capture_position() {
        let source = SyntheticSource::new(
            8000,
            2,
            80,
            Signal::Tone {
                freq_hz: 440.0,
                level_dbfs: -12.0,
            },
            0,
        );
        let (tx, mut rx) = mpsc::channel(16);
        let p = CapturePipeline::start(
            Box::new(source),
            Arc::new(FixedClock(1_000_000)),
            Duration::from_millis(100),
            tx,
            false,
        )
        .unwrap();
        let first = rx.blocking_recv().unwrap();
        let second = rx.blocking_recv().unwrap();
        p.stop().unwrap();
        assert_eq!(first.captured_at_ms, 1_000_100);
        assert_eq!(second.captured_at_ms, 1_000_200);
        assert_eq!(first.window_ms, 100);
        assert_eq!(first.channels.len(), 2);
        for c in &first.channels {
            assert!((c.peak_dbfs - -12.0).abs() < 0.1, "{c:?}");
        }
    }
}
