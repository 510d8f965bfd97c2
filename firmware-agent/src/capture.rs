//! The capture thread, the SPSC rings it fills, and the worker-side readers.
//!
//! ```text
//! source ─▶ CaptureLoop (thread "rakkr-capture") ─▶ audio ring (i32, interleaved)
//!                                               └─▶ gap ring (Gap events)
//!                          worker: StreamReader ─▶ Metering, recorders, …
//! ```
//!
//! Capture thread, steady state: `source.read(period)` → push into the audio
//! ring → update counters. Its buffers are allocated before the loop; it takes
//! no lock, writes no log line and never waits for the consumer. When the ring
//! lacks room for a whole period, the period is dropped and counted. Every
//! discontinuity becomes a [`Gap`] event on a second ring, positioned in frames
//! of the *delivered* stream, so the worker knows exactly which sample a gap
//! precedes.
//!
//! Metering ([`Metering`]) emits a [`MeterFrame`] for every `interval` of
//! captured audio, stamped with the capture time of its last sample (anchor wall
//! time + frames ÷ rate).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rakkr_protocol::payload::{MeterFrame, NodeCounters};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::meter::{MeterAccumulator, MeterPolicy};
use crate::source::{CaptureError, CaptureSource, StreamFormat};

/// How much audio a ring holds, in frames: enough to ride out a slow consumer
/// for a while (1.4 s at 48 kHz, 0.7 s at 96 kHz) without ever making the
/// producer wait. Sized in frames, not periods, so a larger period (fewer
/// wake-ups, less CPU) does not multiply the memory of every ring.
pub const RING_FRAMES: usize = 65_536;

/// The fewest periods a ring holds, whatever the period.
pub const RING_MIN_PERIODS: usize = 8;

/// Frames in a ring for `period_frames`: [`RING_FRAMES`], or
/// [`RING_MIN_PERIODS`] periods when those are more, always whole periods.
pub fn ring_frames(period_frames: usize) -> usize {
    let period = period_frames.max(1);
    RING_FRAMES.max(RING_MIN_PERIODS * period).div_ceil(period) * period
}

/// Gap events the ring holds; beyond that they are counted as lost.
pub const GAP_RING: usize = 1024;

/// Counters shared between the capture thread and everyone else.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub frames_captured: AtomicU64,
    pub frames_dropped: AtomicU64,
    /// Device overruns (each one a gap in the audio).
    pub xruns: AtomicU64,
    /// Gap events that did not fit in the gap ring.
    pub gaps_unrecorded: AtomicU64,
    /// From the capture thread waking for a period to the period being in the
    /// ring (sources that report their wake-up only).
    pub push_latency: LatencyHistogram,
    pub meter_frames_dropped: AtomicU64,
    /// Set while the device is lost and being reopened.
    pub device_lost: AtomicBool,
    /// Times the device was lost and came back.
    pub device_returns: AtomicU64,
    /// Set when the capture thread stopped because the source failed.
    pub failed: AtomicBool,
    /// Set when a finite source (a file) delivered everything; all of it is in
    /// the ring by then.
    pub ended: AtomicBool,
    /// Capture time of the first frame, nanoseconds since the Unix epoch (UTC);
    /// 0 until the first period arrives.
    pub start_unix_ns: AtomicU64,
    /// Whether `start_unix_ns` comes from the device's timestamp of frame 0
    /// (otherwise: the arrival of the first period minus its duration).
    pub start_from_device: AtomicBool,
}

/// A lock-free latency histogram: bucket `i` counts latencies in
/// [2^i, 2^(i+1)) microseconds (bucket 0 also holds anything under 1 µs).
/// Recording is two relaxed atomic operations; safe on the capture thread.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; 32],
    max_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn record(&self, latency: Duration) {
        let ns = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        let us = (ns / 1000).max(1);
        let bucket = (63 - us.leading_zeros() as usize).min(31);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound of the bucket holding the `q` quantile (0..=1).
    pub fn quantile_upper_bound(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let target = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target {
                return Duration::from_micros(2u64 << i);
            }
        }
        self.max()
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }
}

/// First delay before reopening a lost device; doubles up to [`REOPEN_MAX`].
pub const REOPEN_FIRST: Duration = Duration::from_millis(100);
pub const REOPEN_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    /// The device overran: audio was lost before it reached us; `frames`
    /// estimates it from the time the device went unread.
    Xrun,
    /// The device overran; `frames` is measured by the device's own
    /// timestamps (frames discarded + time stopped × rate).
    XrunTimed,
    /// The device was lost and came back; `frames` estimates the time it was gone.
    DeviceLost,
    /// The ring was full: we dropped a period the device gave us.
    Overflow,
}

/// A discontinuity in the delivered stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Frames delivered to the ring before the gap.
    pub position: u64,
    /// Frames missing: exact for overflows, measured for timed overruns,
    /// estimated from the time the device went unread for other overruns and
    /// device losses (0: unknown).
    pub frames: u64,
    pub kind: GapKind,
}

/// The capture thread's work, split so that everything it allocates happens in
/// [`new`](Self::new) and [`run`](Self::run) is the allocation-free steady state.
pub struct CaptureLoop {
    source: Box<dyn CaptureSource>,
    producer: rtrb::Producer<i32>,
    gaps: rtrb::Producer<Gap>,
    buf: Vec<i32>,
    channels: usize,
    delivered: u64,
    rate: u64,
    period_frames: u64,
    /// When the last period arrived: the start of a device loss.
    last_read: std::time::Instant,
    start_stamped: bool,
    pub stats: Arc<CaptureStats>,
    stop: Arc<AtomicBool>,
}

impl CaptureLoop {
    pub fn new(
        source: Box<dyn CaptureSource>,
        producer: rtrb::Producer<i32>,
        gaps: rtrb::Producer<Gap>,
        stats: Arc<CaptureStats>,
        stop: Arc<AtomicBool>,
    ) -> CaptureLoop {
        let channels = usize::from(source.format().channels);
        let buf = vec![0i32; source.period_frames() * channels];
        let rate = u64::from(source.format().sample_rate);
        let period_frames = source.period_frames() as u64;
        CaptureLoop {
            source,
            producer,
            gaps,
            buf,
            channels,
            delivered: 0,
            rate,
            period_frames,
            last_read: std::time::Instant::now(),
            start_stamped: false,
            stats,
            stop,
        }
    }

    fn gap(&mut self, frames: u64, kind: GapKind) {
        let gap = Gap {
            position: self.delivered,
            frames,
            kind,
        };
        if self.gaps.push(gap).is_err() {
            self.stats.gaps_unrecorded.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Read periods and push them into the ring until `stop` is set or the
    /// source fails. Steady state: one source read, one ring write or one
    /// dropped-period count, a few relaxed atomics. No allocation, lock or log.
    ///
    /// Takes `&mut self`: returning by value would free the loop's buffers on
    /// this thread; the caller drops it outside the steady state.
    pub fn run(&mut self) -> Result<(), CaptureError> {
        while !self.stop.load(Ordering::Relaxed) {
            let read = match self.source.read(&mut self.buf) {
                Ok(read) => read,
                Err(CaptureError::EndOfStream) => {
                    self.stats.ended.store(true, Ordering::Release);
                    return Ok(());
                }
                Err(e) => match self.wait_for_device(e) {
                    Ok(true) => continue,
                    Ok(false) => return Ok(()),
                    Err(e) => {
                        self.stats.failed.store(true, Ordering::Release);
                        return Err(e);
                    }
                },
            };
            if !self.start_stamped {
                self.stamp_start(read.frames);
            }
            if read.xrun_before {
                self.stats.xruns.fetch_add(1, Ordering::Relaxed);
                match read.lost_frames {
                    Some(lost) => self.gap(lost, GapKind::XrunTimed),
                    None => {
                        // The device kept running while we did not read: what it
                        // captured beyond one period since the last read is gone.
                        let stalled = self.last_read.elapsed().as_micros() as u64;
                        let missing =
                            (stalled * self.rate / 1_000_000).saturating_sub(self.period_frames);
                        self.gap(missing, GapKind::Xrun);
                    }
                }
            }
            let samples = read.frames * self.channels;
            let frames = read.frames as u64;
            let pushed = match self.producer.write_chunk_uninit(samples) {
                Ok(chunk) => {
                    chunk.fill_from_iter(self.buf[..samples].iter().copied());
                    self.delivered += frames;
                    self.stats
                        .frames_captured
                        .fetch_add(frames, Ordering::Relaxed);
                    true
                }
                Err(_) => {
                    self.gap(frames, GapKind::Overflow);
                    self.stats
                        .frames_dropped
                        .fetch_add(frames, Ordering::Relaxed);
                    false
                }
            };
            // One clock read per period (vDSO: no syscall, no allocation) serves
            // both the push latency and the start of any later device loss.
            let now = std::time::Instant::now();
            if pushed && let Some(woke) = self.source.last_wakeup() {
                self.stats.push_latency.record(now.duration_since(woke));
            }
            self.last_read = now;
        }
        Ok(())
    }
}

impl CaptureLoop {
    /// Record when frame 0 was captured (once, at the first period): from the
    /// device's timestamp when it has one, else from this period's arrival.
    /// Two vDSO clock reads; no allocation.
    fn stamp_start(&mut self, frames: usize) {
        self.start_stamped = true;
        let now_mono = crate::rt::monotonic_now();
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // A device timestamp older than a minute is not this stream's start.
        let device_age = self
            .source
            .first_frame_time()
            .and_then(|t| now_mono.checked_sub(t))
            .filter(|age| *age < Duration::from_secs(60));
        let age = device_age.unwrap_or(Duration::from_nanos(
            frames as u64 * 1_000_000_000 / self.rate.max(1),
        ));
        let start = now_unix.saturating_sub(age).as_nanos() as u64;
        self.stats.start_unix_ns.store(start, Ordering::Release);
        self.stats
            .start_from_device
            .store(device_age.is_some(), Ordering::Release);
    }

    /// The device failed: reopen it with backoff until it returns (`Ok(true)`),
    /// stop is requested (`Ok(false)`), or the source cannot be reopened at all
    /// (the first attempt's error). The time it was gone becomes a gap, so the
    /// recording continues as one take with the hole marked.
    fn wait_for_device(&mut self, error: CaptureError) -> Result<bool, CaptureError> {
        // Audio stopped arriving after the last good read, which may be well
        // before the error (a stalled device is declared lost after a timeout).
        let lost_at = self.last_read;
        self.stats.device_lost.store(true, Ordering::Release);
        let mut delay = REOPEN_FIRST;
        let mut first_attempt = true;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            match self.source.reopen() {
                Ok(()) => break,
                Err(CaptureError::NotReopenable(_)) => return Err(error),
                Err(_) if first_attempt && !error_is_recoverable(&error) => return Err(error),
                Err(_) => {}
            }
            first_attempt = false;
            std::thread::sleep(delay);
            delay = (delay * 2).min(REOPEN_MAX);
        }
        let rate = u64::from(self.source.format().sample_rate);
        let missing = lost_at.elapsed().as_millis() as u64 * rate / 1000;
        self.gap(missing, GapKind::DeviceLost);
        self.stats.device_lost.store(false, Ordering::Release);
        self.stats.device_returns.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// Device errors are worth waiting out; a buffer or configuration error is not.
fn error_is_recoverable(error: &CaptureError) -> bool {
    matches!(error, CaptureError::Device(_) | CaptureError::Open { .. })
}

/// A running capture thread. Dropping it does not stop it; call [`stop`](Self::stop).
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    pub stats: Arc<CaptureStats>,
    pub format: StreamFormat,
    pub period_frames: usize,
    /// Whether the capture thread runs with SCHED_FIFO (see [`crate::rt`]).
    pub sched_fifo: bool,
    thread: JoinHandle<Result<(), CaptureError>>,
}

impl Capture {
    /// Start the capture thread; the worker side reads through the returned [`StreamReader`].
    pub fn start(
        source: Box<dyn CaptureSource>,
        realtime: bool,
    ) -> std::io::Result<(Capture, StreamReader)> {
        let format = source.format();
        let channels = usize::from(format.channels);
        let period_frames = source.period_frames();
        let (producer, samples) =
            rtrb::RingBuffer::<i32>::new(ring_frames(period_frames) * channels);
        let (gap_producer, gaps) = rtrb::RingBuffer::<Gap>::new(GAP_RING);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CaptureStats::default());
        let (granted_tx, granted_rx) = std::sync::mpsc::sync_channel(1);
        let mut capture_loop =
            CaptureLoop::new(source, producer, gap_producer, stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("rakkr-capture".into())
            .spawn(move || {
                let granted = realtime && crate::rt::promote_current_thread();
                let _ = granted_tx.send(granted);
                capture_loop.run()
            })?;
        let sched_fifo = granted_rx.recv().unwrap_or(false);
        let reader = StreamReader {
            samples,
            gaps,
            channels,
            position: 0,
            period_samples: period_frames * channels,
            idle: Duration::from_micros(
                (period_frames as u64 * 1_000_000 / u64::from(format.sample_rate.max(1))).max(500),
            ),
        };
        Ok((
            Capture {
                stop,
                stats,
                format,
                period_frames,
                sched_fifo,
                thread,
            },
            reader,
        ))
    }

    /// A flag that stops the capture thread when set.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn failed(&self) -> bool {
        self.stats.failed.load(Ordering::Acquire)
    }

    /// The source delivered everything it had (see [`CaptureStats::ended`]).
    pub fn ended(&self) -> bool {
        self.stats.ended.load(Ordering::Acquire)
    }

    /// Stop the thread and wait for it. Returns the source's error, if it failed.
    pub fn stop(self) -> Result<(), CaptureError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(CaptureError::Device("capture thread panicked".into())))
    }
}

/// The worker's end of the rings: whole frames, in order, with gap events.
pub struct StreamReader {
    samples: rtrb::Consumer<i32>,
    gaps: rtrb::Consumer<Gap>,
    channels: usize,
    position: u64,
    /// One period of samples, and how long it lasts.
    period_samples: usize,
    idle: Duration,
}

impl StreamReader {
    /// Nothing is waiting in the ring.
    pub fn is_empty(&self) -> bool {
        self.samples.slots() == 0
    }

    /// Frames read so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Hand up to `max_frames` available frames to `f` (in one or two slices,
    /// as the ring wraps), then release them. Returns the frames consumed.
    pub fn read(&mut self, max_frames: usize, mut f: impl FnMut(&[i32])) -> usize {
        let frames = (self.samples.slots() / self.channels).min(max_frames);
        if frames == 0 {
            return 0;
        }
        let Ok(chunk) = self.samples.read_chunk(frames * self.channels) else {
            return 0;
        };
        let (a, b) = chunk.as_slices();
        // A frame never straddles the two slices: both lengths are whole frames
        // because every write was.
        if !a.is_empty() {
            f(a);
        }
        if !b.is_empty() {
            f(b);
        }
        chunk.commit_all();
        self.position += frames as u64;
        frames
    }

    /// Gap events recorded so far (positions may lie ahead of [`position`](Self::position)).
    pub fn take_gaps(&mut self, mut f: impl FnMut(Gap)) {
        while let Ok(gap) = self.gaps.pop() {
            f(gap);
        }
    }

    /// Wait for the next period, unless a whole period is already waiting: in
    /// steady state the consumer wakes once per period (the capture thread may
    /// not wake it: that would be a syscall on the real-time side).
    pub fn pace(&self) {
        if self.samples.slots() < self.period_samples {
            std::thread::sleep(self.idle);
        }
    }
}

/// How far meter stamps (stream start + frames / rate) may drift from the host
/// clock before they are re-anchored to it.
pub const MAX_METER_SKEW_MS: u64 = 2000;

/// How often meter frames are made: short local windows (the appliance's own
/// display) and long telemetry windows (MQTT), each long window exactly a whole
/// number of short ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterRates {
    pub local: Duration,
    pub telemetry: Duration,
}

impl Default for MeterRates {
    /// 10 Hz local, 1 Hz telemetry.
    fn default() -> Self {
        MeterRates {
            local: Duration::from_millis(100),
            telemetry: Duration::from_secs(1),
        }
    }
}

impl MeterRates {
    /// Local 20 ms to 1 s; telemetry 100 ms to 60 s and a multiple of local.
    pub fn check(&self) -> Result<(), String> {
        let (l, t) = (self.local.as_millis(), self.telemetry.as_millis());
        if !(20..=1000).contains(&l) {
            return Err(format!("local meter interval {l} ms: use 20-1000 ms"));
        }
        if !(100..=60_000).contains(&t) || t % l != 0 {
            return Err(format!(
                "telemetry meter interval {t} ms: use 100-60000 ms, a multiple of the local {l} ms"
            ));
        }
        Ok(())
    }
}

/// Meter frames from the stream: one per local window and one per telemetry
/// window of captured audio. Telemetry windows are built from the local ones'
/// sums (exact, no second pass over the samples). Every frame is stamped with
/// the capture time of its last sample: the stream's start (the capture
/// thread's timestamp of frame 0) plus frames / rate.
#[derive(Debug)]
pub struct Metering {
    local: MeterAccumulator,
    telemetry: MeterAccumulator,
    local_frames: u64,
    telemetry_frames: u64,
    rates: MeterRates,
    sample_rate: u32,
    stats: Option<Arc<CaptureStats>>,
    anchor_ms: Option<u64>,
    frames: u64,
}

impl Metering {
    /// `stats` of the capture being metered give the stream's start time;
    /// without them (or before the capture thread stamped it) the clock at the
    /// first push anchors the stream.
    pub fn new(
        format: StreamFormat,
        rates: MeterRates,
        stats: Option<Arc<CaptureStats>>,
    ) -> Metering {
        let acc = || {
            MeterAccumulator::with_policy(
                usize::from(format.channels),
                format.valid_bits,
                format.sample_rate,
                MeterPolicy::default(),
            )
        };
        let frames_in =
            |d: Duration| (d.as_millis() as u64 * u64::from(format.sample_rate) / 1000).max(1);
        let local_frames = frames_in(rates.local);
        Metering {
            local: acc(),
            telemetry: acc(),
            local_frames,
            telemetry_frames: (frames_in(rates.telemetry) / local_frames).max(1) * local_frames,
            rates,
            sample_rate: format.sample_rate,
            stats,
            anchor_ms: None,
            frames: 0,
        }
    }

    /// Frames the stream lost (a gap): they take time, so later frames are
    /// stamped that much later; they are not metered.
    pub fn skip(&mut self, frames: u64) {
        self.frames += frames;
    }

    /// Meter `samples` (whole frames): `local` gets each completed local
    /// frame, `telemetry` each completed telemetry frame.
    pub fn push(
        &mut self,
        samples: &[i32],
        clock: &dyn Clock,
        mut local: impl FnMut(MeterFrame),
        mut telemetry: impl FnMut(MeterFrame),
    ) {
        let stats = self.stats.as_deref();
        let mut anchor = *self.anchor_ms.get_or_insert_with(|| {
            match stats.map_or(0, |s| s.start_unix_ns.load(Ordering::Acquire)) {
                0 => clock.unix_ms(),
                ns => ns / 1_000_000,
            }
        });
        let channels = self.local.channels();
        let mut rest = samples;
        while !rest.is_empty() {
            let room = (self.local_frames - self.local.frames()) as usize * channels;
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.local.push_interleaved(now);
            self.frames += (now.len() / channels) as u64;
            rest = later;
            if self.local.frames() < self.local_frames {
                continue;
            }
            let captured_at_ms = anchor + self.frames * 1000 / u64::from(self.sample_rate);
            self.telemetry.absorb(&self.local);
            local(MeterFrame {
                captured_at_ms,
                window_ms: self.rates.local.as_millis() as u32,
                sample_rate: self.sample_rate,
                channels: self.local.take(),
                counters: None,
            });
            if self.telemetry.frames() >= self.telemetry_frames {
                // The device's clock drifts against the host's (50 ppm is 4 s a
                // day): once the stamps are off by more than MAX_METER_SKEW_MS,
                // follow the host clock again, or receivers see live frames as stale.
                let now = clock.unix_ms();
                let captured_at_ms = if now.abs_diff(captured_at_ms) > MAX_METER_SKEW_MS {
                    anchor = now.saturating_sub(self.frames * 1000 / u64::from(self.sample_rate));
                    self.anchor_ms = Some(anchor);
                    now
                } else {
                    captured_at_ms
                };
                telemetry(MeterFrame {
                    captured_at_ms,
                    window_ms: self.rates.telemetry.as_millis() as u32,
                    sample_rate: self.sample_rate,
                    channels: self.telemetry.take(),
                    // The outbox's share is filled in by the link.
                    counters: stats.map(|s| NodeCounters {
                        xruns: s.xruns.load(Ordering::Relaxed),
                        frames_dropped: s.frames_dropped.load(Ordering::Relaxed),
                        device_returns: s.device_returns.load(Ordering::Relaxed),
                        outbox_bytes: 0,
                        upload_files: 0,
                        upload_bytes: 0,
                    }),
                });
            }
        }
    }
}

/// Takes waiting for the worker to pick them up.
const NEW_TAKES: usize = 8;

/// Capture plus a worker thread that meters every period and feeds the takes
/// being recorded: what a node runs all the time. Takes start and stop while
/// capture goes on ([`CapturePipeline::start_take`]); the device is captured
/// once and split.
#[derive(Debug)]
pub struct CapturePipeline {
    capture: Capture,
    meter: JoinHandle<()>,
    stop_meter: Arc<AtomicBool>,
    new_takes: std::sync::mpsc::SyncSender<crate::record::TakeFeed>,
    start_ms: u64,
    pub stats: Arc<CaptureStats>,
    pub format: StreamFormat,
    /// Whether the capture thread runs with SCHED_FIFO (see [`crate::rt`]).
    pub sched_fifo: bool,
}

impl CapturePipeline {
    /// A pipeline on `source` for tests: default meter rates, telemetry frames
    /// discarded, no real-time requests.
    #[cfg(test)]
    pub(crate) fn for_test(source: Box<dyn CaptureSource>) -> CapturePipeline {
        let (tx, _rx) = mpsc::channel(16);
        CapturePipeline::start(
            source,
            Arc::new(crate::clock::SystemClock),
            MeterRates::default(),
            tx,
            Arc::new(tokio::sync::watch::Sender::new(None)),
            false,
        )
        .expect("a test pipeline starts")
    }

    /// Telemetry frames go to `meters_out` (dropped and counted when it is
    /// full: a late meter frame is worthless); the latest local frame is
    /// always in `local_meters`.
    pub fn start(
        source: Box<dyn CaptureSource>,
        clock: Arc<dyn Clock>,
        rates: MeterRates,
        meters_out: mpsc::Sender<MeterFrame>,
        local_meters: Arc<tokio::sync::watch::Sender<Option<MeterFrame>>>,
        realtime: bool,
    ) -> std::io::Result<Self> {
        let start_ms = clock.unix_ms();
        let (capture, mut reader) = Capture::start(source, realtime)?;
        let stop_meter = Arc::new(AtomicBool::new(false));
        let mut metering = Metering::new(capture.format, rates, Some(capture.stats.clone()));
        let stats = capture.stats.clone();
        let channels = usize::from(capture.format.channels);
        let (new_takes, takes_in) =
            std::sync::mpsc::sync_channel::<crate::record::TakeFeed>(NEW_TAKES);
        let meter = {
            let stop = stop_meter.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("rakkr-meter".into())
                .spawn(move || {
                    let mut takes: Vec<crate::record::TakeFeed> = Vec::new();
                    // Frames of device time lost in gaps, for stream time.
                    let mut gap_frames = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        while let Ok(mut take) = takes_in.try_recv() {
                            take.attach(reader.position(), reader.position() + gap_frames);
                            takes.push(take);
                        }
                        reader.take_gaps(|gap| {
                            metering.skip(gap.frames);
                            gap_frames += gap.frames;
                            takes.iter_mut().for_each(|t| t.device_gap(gap));
                        });
                        reader.read(usize::MAX, |samples| {
                            metering.push(
                                samples,
                                &*clock,
                                |frame| {
                                    local_meters.send_replace(Some(frame));
                                },
                                |frame| {
                                    if meters_out.try_send(frame).is_err() {
                                        stats.meter_frames_dropped.fetch_add(1, Ordering::Relaxed);
                                    }
                                },
                            );
                            for take in takes.iter_mut().filter(|t| !t.done()) {
                                take.push(samples, channels);
                            }
                        });
                        takes.retain(|t| {
                            let done = t.done();
                            if done {
                                t.finish();
                            }
                            !done
                        });
                        reader.pace();
                    }
                    takes.iter().for_each(crate::record::TakeFeed::finish);
                })?
        };
        Ok(CapturePipeline {
            format: capture.format,
            sched_fifo: capture.sched_fifo,
            stats,
            start_ms,
            new_takes,
            capture,
            meter,
            stop_meter,
        })
    }

    /// Start recording a take from the running capture, from the next period on.
    /// Takes sharing the device must use disjoint channels (the caller keeps
    /// track: it knows which takes are running).
    pub fn start_take(
        &self,
        spec: &crate::record::TakeSpec,
    ) -> Result<crate::record::RunningTake, crate::record::RecordError> {
        use crate::record::{RecordError, RunningTake, check_take, spawn_take};
        let map = check_take(spec, usize::from(self.format.channels))?;
        let (feed, thread) = spawn_take(
            spec,
            map,
            self.format,
            self.capture.period_frames,
            self.stats.clone(),
            self.start_ms,
        )?;
        let take = RunningTake::new(&feed, thread);
        if let Err(e) = self.new_takes.try_send(feed) {
            // The encoder thread ends at once: its feed is finished and empty.
            let feed = match e {
                std::sync::mpsc::TrySendError::Full(f)
                | std::sync::mpsc::TrySendError::Disconnected(f) => f,
            };
            feed.finish();
            let _ = take.join();
            return Err(RecordError::Spawn(std::io::Error::other(
                "the capture worker is not taking new takes (stopped or busy)",
            )));
        }
        Ok(take)
    }

    /// Stop both threads and wait for them; running takes are finished with
    /// what was captured. Returns the capture thread's error, if it failed.
    pub fn stop(self) -> Result<(), CaptureError> {
        let result = self.capture.stop();
        self.stop_meter.store(true, Ordering::Relaxed);
        let _ = self.meter.join();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{CaptureSource, Signal, SyntheticSource};

    struct FixedClock(u64);
    impl Clock for FixedClock {
        fn unix_ms(&self) -> u64 {
            self.0
        }
    }

    /// A −12 dBFS 440 Hz tone at 8 kHz, in 10 ms periods.
    fn tone_8k(channels: u16) -> SyntheticSource {
        SyntheticSource::new(
            8000,
            channels,
            80,
            Signal::Tone {
                freq_hz: 440.0,
                level_dbfs: -12.0,
            },
            0,
        )
    }

    #[test]
    fn takes_start_and_stop_while_capture_runs() {
        use crate::record::TakeSpec;
        use crate::take_file::Codec;
        let dir = tempfile::tempdir().unwrap();
        let p = CapturePipeline::for_test(Box::new(tone_8k(4)));
        std::thread::sleep(Duration::from_millis(300));
        let spec = |name: &str, map: &str, duration| TakeSpec {
            out: dir.path().join(name),
            bits: 16,
            codec: Codec::Wav { always_rf64: false },
            duration,
            segment: None,
            map: Some(crate::channel_map::ChannelMap::parse(map, 4).unwrap()),
            tags: vec![],
            sync_every: Duration::from_millis(200),
        };
        let short = p
            .start_take(&spec("short.wav", "1,2", Some(Duration::from_millis(500))))
            .unwrap();
        let open = p.start_take(&spec("open.wav", "3", None)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            p.start_take(&spec("short.wav", "4", None)).is_err(),
            "an existing file is never overwritten"
        );
        let short = short.join().unwrap();
        assert_eq!(short.frames, 4000, "exactly its length, from mid-stream");
        assert!(!open.is_finished());
        open.stop();
        let open = open.join().unwrap();
        assert!(open.frames >= 4000, "{}", open.frames);
        let session_ms = p.stats.start_unix_ns.load(Ordering::Acquire) / 1_000_000;
        p.stop().unwrap();

        let reader = rakkr_wav::WavReader::open(&dir.path().join("short.wav")).unwrap();
        let start: u64 = reader
            .header()
            .tags
            .iter()
            .find(|(k, _)| k == "RAKKR_START_UNIX_MS")
            .expect("a start tag")
            .1
            .parse()
            .unwrap();
        assert!(
            start >= session_ms + 250 && start < session_ms + 2_000,
            "a take started 300 ms into capture starts then: {start} vs {session_ms}"
        );
    }

    #[test]
    fn meter_frames_are_stamped_by_capture_position() {
        let source = tone_8k(2);
        let (tx, mut rx) = mpsc::channel(16);
        let local_tx = Arc::new(tokio::sync::watch::Sender::new(None));
        let local_rx = local_tx.subscribe();
        let rates = MeterRates {
            local: Duration::from_millis(100),
            telemetry: Duration::from_millis(200),
        };
        let p = CapturePipeline::start(
            Box::new(source),
            Arc::new(crate::clock::SystemClock),
            rates,
            tx,
            local_tx,
            false,
        )
        .unwrap();
        let first = rx.blocking_recv().unwrap();
        let second = rx.blocking_recv().unwrap();
        let local = local_rx.borrow().clone().expect("a local frame");
        let start_ms = p.stats.start_unix_ns.load(Ordering::Acquire) / 1_000_000;
        p.stop().unwrap();
        // Stamped from the capture thread's start time.
        assert!(start_ms > 1_000_000);
        assert_eq!(first.captured_at_ms, start_ms + 200);
        assert_eq!(second.captured_at_ms, start_ms + 400);
        assert_eq!(first.window_ms, 200);
        assert_eq!(local.window_ms, 100);
        assert!(local.captured_at_ms >= first.captured_at_ms);
        assert_eq!(first.channels.len(), 2);
        for c in &first.channels {
            assert!((c.peak_dbfs - -12.0).abs() < 0.1, "{c:?}");
        }
    }

    #[test]
    fn latency_histogram_quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile_upper_bound(0.99), Duration::ZERO);
        for _ in 0..98 {
            h.record(Duration::from_micros(3)); // bucket 1: [2, 4) µs
        }
        h.record(Duration::from_micros(100)); // bucket 6: [64, 128) µs
        h.record(Duration::from_millis(5));
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_upper_bound(0.5), Duration::from_micros(4));
        assert_eq!(h.quantile_upper_bound(0.99), Duration::from_micros(128));
        assert_eq!(h.max(), Duration::from_millis(5));
    }

    #[test]
    fn metering_splits_chunks_at_window_boundaries() {
        let format = StreamFormat {
            sample_rate: 1000,
            channels: 1,
            valid_bits: 24,
        };
        let rates = MeterRates {
            local: Duration::from_millis(100),
            telemetry: Duration::from_millis(300),
        };
        let mut m = Metering::new(format, rates, None);
        let (mut local, mut telemetry) = (Vec::new(), Vec::new());
        m.push(
            &vec![1 << 20; 250],
            &FixedClock(0),
            |f| local.push(f),
            |f| telemetry.push(f),
        );
        assert_eq!(
            local.iter().map(|f| f.captured_at_ms).collect::<Vec<_>>(),
            [100, 200]
        );
        assert!(telemetry.is_empty());
        m.push(
            &[0; 50],
            &FixedClock(0),
            |f| local.push(f),
            |f| telemetry.push(f),
        );
        assert_eq!(local.len(), 3);
        assert_eq!(local[2].captured_at_ms, 300);
        assert_eq!(telemetry.len(), 1);
        assert_eq!(
            (telemetry[0].captured_at_ms, telemetry[0].window_ms),
            (300, 300)
        );
        // A 2 s gap: later frames are stamped 2 s later, not as if it had not happened.
        m.skip(2000);
        m.push(&[0; 100], &FixedClock(0), |f| local.push(f), |_| {});
        assert_eq!(local[3].captured_at_ms, 2400);
    }

    #[test]
    fn meter_stamps_follow_the_host_clock_when_the_device_drifts() {
        /// A clock the test sets.
        struct SetClock(AtomicU64);
        impl Clock for SetClock {
            fn unix_ms(&self) -> u64 {
                self.0.load(Ordering::Relaxed)
            }
        }
        let format = StreamFormat {
            sample_rate: 1000,
            channels: 1,
            valid_bits: 24,
        };
        let mut m = Metering::new(format, MeterRates::default(), None);
        let clock = SetClock(AtomicU64::new(50_000));
        let mut frames = Vec::new();
        // The first second: stamps follow the stream (anchored at the clock's 50 s).
        m.push(&[0; 1000], &clock, |_| {}, |f| frames.push(f));
        assert_eq!(frames[0].captured_at_ms, 51_000);
        // The device ran slow: a second of audio took 1.5 s of host time. Within
        // the tolerance, stamps stay on the stream's count.
        clock.0.store(52_500, Ordering::Relaxed);
        m.push(&[0; 1000], &clock, |_| {}, |f| frames.push(f));
        assert_eq!(frames[1].captured_at_ms, 52_000);
        // Beyond it, they follow the host clock again, and stay with it.
        clock.0.store(57_000, Ordering::Relaxed);
        m.push(&[0; 1000], &clock, |_| {}, |f| frames.push(f));
        assert_eq!(frames[2].captured_at_ms, 57_000);
        m.push(&[0; 1000], &clock, |_| {}, |f| frames.push(f));
        assert_eq!(frames[3].captured_at_ms, 58_000);
    }

    #[test]
    fn telemetry_windows_are_exactly_the_merge_of_local_ones() {
        // A signal that changes every local window: levels, clips, a stuck run.
        let format = StreamFormat {
            sample_rate: 48_000,
            channels: 2,
            valid_bits: 24,
        };
        let mut m = Metering::new(format, MeterRates::default(), None);
        let mut samples = Vec::new();
        for window in 0..10i64 {
            for i in 0..4800i64 {
                let level = (window + 1) * 100_000 * ((i % 7) - 3);
                let left = if window == 4 && i < 10 {
                    i32::MAX
                } else {
                    (level << 8) as i32
                };
                let right = if window == 7 {
                    5 << 8
                } else {
                    (-level << 8) as i32
                };
                samples.extend([left, right]);
            }
        }
        let (mut local, mut telemetry) = (Vec::new(), Vec::new());
        m.push(
            &samples,
            &FixedClock(0),
            |f| local.push(f),
            |f| telemetry.push(f),
        );
        assert_eq!((local.len(), telemetry.len()), (10, 1));
        // The same samples through one accumulator: the reference.
        let mut whole = MeterAccumulator::with_policy(2, 24, 48_000, MeterPolicy::default());
        whole.push_interleaved(&samples);
        let expected = whole.take();
        let got = &telemetry[0].channels;
        for (g, e) in got.iter().zip(&expected) {
            assert!((g.peak_dbfs - e.peak_dbfs).abs() < 1e-4, "{g:?} {e:?}");
            assert!((g.rms_dbfs - e.rms_dbfs).abs() < 1e-4, "{g:?} {e:?}");
            assert_eq!(
                (g.clipped, g.stuck_frames, g.flags),
                (e.clipped, e.stuck_frames, e.flags)
            );
            assert!((g.dc_offset - e.dc_offset).abs() < 1e-6);
            match (g.correlation_next, e.correlation_next) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-5),
                (a, b) => assert_eq!(a, b),
            }
        }
        assert_eq!(got[0].clipped, 10);
        assert_eq!(got[1].stuck_frames, 4800);
        assert_eq!(telemetry[0].captured_at_ms, local[9].captured_at_ms);
    }

    /// A source whose device vanishes at read `fail_at` and comes back on the
    /// third reopen attempt.
    struct Vanishing {
        inner: SyntheticSource,
        reads: usize,
        fail_at: usize,
        gone: bool,
        reopen_attempts: usize,
    }

    impl CaptureSource for Vanishing {
        fn format(&self) -> StreamFormat {
            self.inner.format()
        }
        fn period_frames(&self) -> usize {
            self.inner.period_frames()
        }
        fn kind(&self) -> &'static str {
            "vanishing"
        }
        fn read(&mut self, buf: &mut [i32]) -> Result<crate::source::PeriodRead, CaptureError> {
            self.reads += 1;
            if self.reads == self.fail_at {
                self.gone = true;
            }
            if self.gone {
                return Err(CaptureError::Device("No such device".into()));
            }
            self.inner.read(buf)
        }
        fn reopen(&mut self) -> Result<(), CaptureError> {
            self.reopen_attempts += 1;
            if self.reopen_attempts < 3 {
                return Err(CaptureError::Open {
                    device: "vanishing".into(),
                    detail: "No such device".into(),
                });
            }
            self.gone = false;
            Ok(())
        }
    }

    #[test]
    fn a_lost_device_is_waited_for_and_the_gap_recorded() {
        let source = Vanishing {
            inner: SyntheticSource::new(48_000, 2, 64, Signal::Noise { level_dbfs: -20.0 }, 3)
                .unpaced(),
            reads: 0,
            fail_at: 51,
            gone: false,
            reopen_attempts: 0,
        };
        let (capture, mut reader) = Capture::start(Box::new(source), false).unwrap();
        let mut frames = 0;
        let mut gaps = Vec::new();
        while frames < 64 * 200 {
            frames += reader.read(usize::MAX, |_| {});
            reader.take_gaps(|g| gaps.push(g));
        }
        assert_eq!(capture.stats.device_returns.load(Ordering::Relaxed), 1);
        assert!(!capture.failed());
        capture.stop().unwrap();
        // The source is unpaced, so a slow test reader may also see overflows.
        let lost: Vec<Gap> = gaps
            .into_iter()
            .filter(|g| g.kind == GapKind::DeviceLost)
            .collect();
        assert_eq!(lost.len(), 1, "{lost:?}");
        let g = lost[0];
        assert_eq!((g.kind, g.position), (GapKind::DeviceLost, 50 * 64));
        // Two failed reopens wait 100 + 200 ms: the gap covers at least that.
        assert!(g.frames >= 48_000 * 3 / 10, "{g:?}");
    }

    #[test]
    fn a_source_that_cannot_come_back_ends_capture_with_its_error() {
        struct Broken;
        impl CaptureSource for Broken {
            fn format(&self) -> StreamFormat {
                StreamFormat {
                    sample_rate: 48_000,
                    channels: 1,
                    valid_bits: 16,
                }
            }
            fn period_frames(&self) -> usize {
                16
            }
            fn kind(&self) -> &'static str {
                "broken"
            }
            fn read(&mut self, _: &mut [i32]) -> Result<crate::source::PeriodRead, CaptureError> {
                Err(CaptureError::Device("unplugged".into()))
            }
        }
        let (capture, _reader) = Capture::start(Box::new(Broken), false).unwrap();
        while !capture.failed() {
            std::thread::yield_now();
        }
        assert!(
            capture
                .stop()
                .unwrap_err()
                .to_string()
                .contains("unplugged")
        );
    }

    #[test]
    fn rings_hold_whole_periods_and_a_fixed_time() {
        assert_eq!(ring_frames(1024), 65_536);
        assert_eq!(ring_frames(4096), 65_536);
        assert_eq!(ring_frames(1000), 66_000);
        assert_eq!(ring_frames(16_384), 8 * 16_384);
        assert_eq!(ring_frames(0), 65_536);
    }

    #[test]
    fn a_full_ring_records_overflow_gaps_at_their_position() {
        let source = SyntheticSource::new(48_000, 2, 64, Signal::Silence, 0).unpaced();
        let (capture, mut reader) = Capture::start(Box::new(source), false).unwrap();
        // Nobody reads: the ring fills after ring_frames(64) frames, then every period is a gap.
        while capture.stats.frames_dropped.load(Ordering::Relaxed) < 64 * 10 {
            std::thread::yield_now();
        }
        capture.stop().unwrap();
        let mut gaps = Vec::new();
        reader.take_gaps(|g| gaps.push(g));
        assert!(gaps.len() >= 10);
        let full = ring_frames(64) as u64;
        assert!(
            gaps.iter()
                .all(|g| g.kind == GapKind::Overflow && g.position == full && g.frames == 64)
        );
    }
}
