//! Recording one take: capture → meter → FLAC or WAV/RF64, crash-safe.
//!
//! Files: the take is written to `{out}.part` and renamed to `{out}` when it is
//! finished, so a name without `.part` is always a complete file. After a crash
//! the `.part` file is made complete by [`recover_dir`] (also run by
//! `rakkr-agent recover DIR`). An existing `{out}` is never overwritten.
//!
//! Tags written into every file (FLAC: Vorbis comments; WAV: LIST/INFO ICMT
//! lines): `RAKKR_NODE`, `RAKKR_JOB`
//! (when given), `RAKKR_CHANNELS` (names), `RAKKR_SAMPLE_RATE`, and at the end
//! `RAKKR_START_UNIX_MS` / `RAKKR_START_UTC` (capture time of the take's first
//! sample, µs; `RAKKR_START_CLOCK` says `device` when it is the device's own
//! timestamp of frame 0, `host` when estimated from the first period's arrival),
//! `RAKKR_FRAMES`,
//! `RAKKR_XRUNS` and `RAKKR_GAPS` (`position+frames` pairs in samples per channel,
//! `?` for an unknown length).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rakkr_protocol::payload::MeterFrame;

use crate::AGENT_VERSION;
use crate::capture::{Capture, Gap, GapKind, MeterRates, Metering};
use crate::channel_map::ChannelMap;
use crate::clock::Clock;
use crate::source::{CaptureError, CaptureSource};
use crate::take_file::{AudioOut, Codec, FileBody, FileError, FileInfo, FileSpec, Recovery};

/// Gap events kept per take; more are counted, not listed.
/// Bounded so the final tags always fit (FLAC: 16 KiB of padding; WAV: a 64 KiB header).
pub const MAX_GAPS_LISTED: usize = 500;

/// Suffix of a take being written.
pub const PART_SUFFIX: &str = ".part";

#[derive(Debug, Clone)]
pub struct TakeSpec {
    pub out: PathBuf,
    /// Bits per sample in the file: 16, 24 or 32.
    pub bits: u8,
    pub codec: Codec,
    /// `None`: until stopped.
    pub duration: Option<Duration>,
    /// Split the take into files of this length (`None`: one file). Files are
    /// named `{stem}.0001.{ext}`, …; no sample is lost or repeated between them.
    pub segment: Option<Duration>,
    /// Which device channels go into the file (`None`: all, in order).
    pub map: Option<ChannelMap>,
    /// Extra tags (node, job, channel names).
    pub tags: Vec<(String, String)>,
    /// How often written audio is made durable.
    pub sync_every: Duration,
}

#[derive(Debug, Clone)]
pub struct TakeSummary {
    /// The take's files, in order (one unless segmented).
    pub files: Vec<(PathBuf, FileInfo)>,
    /// Samples per channel in all files.
    pub frames: u64,
    /// Gaps, positioned in the whole take.
    pub gaps: Vec<Gap>,
    pub xruns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0} already exists; a recording is never overwritten")]
    Exists(PathBuf),
    #[error(
        "{channels} channels: one {codec} file carries at most {max}; choose fewer with a channel map{hint}"
    )]
    TooManyChannels {
        channels: usize,
        codec: &'static str,
        max: usize,
        hint: &'static str,
    },
    #[error("{0}-bit files are not supported; use 16, 24 or 32")]
    Bits(u8),
    #[error("{0}")]
    Map(String),
    #[error("cannot start capture: {0}")]
    Spawn(std::io::Error),
    #[error("capture failed after {frames} frames ({path} keeps them): {source}")]
    Capture {
        path: PathBuf,
        frames: u64,
        source: CaptureError,
    },
    #[error("writing {path} failed (the audio captured so far is kept): {source}")]
    Write { path: PathBuf, source: FileError },
}

pub fn part_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(PART_SUFFIX);
    PathBuf::from(p)
}

/// Options of a capture session shared by its takes.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Meter windows; the callback of [`record_takes`] gets the telemetry ones.
    pub meters: MeterRates,
    pub realtime: bool,
}

/// Record one take (see [`record_takes`]).
pub fn record_take(
    source: Box<dyn CaptureSource>,
    spec: &TakeSpec,
    options: &SessionOptions,
    clock: &dyn Clock,
    stop: &AtomicBool,
    on_meter: impl FnMut(&MeterFrame),
) -> Result<TakeSummary, RecordError> {
    let mut results = record_takes(
        source,
        std::slice::from_ref(spec),
        options,
        clock,
        stop,
        on_meter,
    )?;
    results.pop().expect("one take in, one result out")
}

/// Samples of one take, converted and mapped, from the capture worker to the
/// take's encoder thread.
pub(crate) struct TakeFeed {
    samples: rtrb::Producer<i32>,
    gaps: rtrb::Producer<Gap>,
    map: ChannelMap,
    identity: bool,
    shift: u32,
    /// Frames pushed to the take so far.
    position: u64,
    /// Frames of the device stream this take dropped (its ring was full).
    dropped: u64,
    limit: Option<u64>,
    /// Set by the take's encoder thread when it stops (finished or failed).
    ended: Arc<AtomicBool>,
    /// Set from outside to end this take early (what was captured is kept).
    stop: Arc<AtomicBool>,
    /// Set by the worker when it pushes nothing more to this take.
    finished: Arc<AtomicBool>,
    /// Device stream position of the take's first frame.
    origin: u64,
    /// Stream time of the take's first frame (frames since capture start,
    /// gaps included), for its start-time tags; set when the worker attaches it.
    start_frame: Arc<std::sync::atomic::AtomicU64>,
}

impl TakeFeed {
    /// The take needs nothing more: its writer stopped, it was asked to stop,
    /// or the device stream reached its length (frames it had to drop count too).
    pub(crate) fn done(&self) -> bool {
        self.ended.load(Ordering::Acquire)
            || self.stop.load(Ordering::Relaxed)
            || self
                .limit
                .is_some_and(|l| self.position + self.dropped >= l)
    }

    /// Push device frames (left-justified) into the take, up to its limit,
    /// mapped and shifted straight into the take's ring (no intermediate copy).
    pub(crate) fn push(&mut self, samples: &[i32], device_channels: usize) {
        let mut frames = samples.len() / device_channels;
        if let Some(l) = self.limit {
            frames = frames.min(l.saturating_sub(self.position + self.dropped) as usize);
        }
        if frames == 0 {
            return;
        }
        let samples = &samples[..frames * device_channels];
        let shift = self.shift;
        match self.samples.write_chunk_uninit(frames * self.map.outputs()) {
            Ok(chunk) => {
                if self.identity {
                    chunk.fill_from_iter(samples.iter().map(|s| s >> shift));
                } else {
                    chunk.fill_from_iter(self.map.map_frames(samples, shift));
                }
                self.position += frames as u64;
            }
            Err(_) => {
                let gap = Gap {
                    position: self.position,
                    frames: frames as u64,
                    kind: GapKind::Overflow,
                };
                let _ = self.gaps.push(gap);
                self.dropped += frames as u64;
            }
        }
    }

    /// Forward a device gap, positioned in this take's stream.
    pub(crate) fn device_gap(&mut self, g: Gap) {
        if self.done() || g.position < self.origin {
            return;
        }
        let _ = self.gaps.push(Gap {
            position: (g.position - self.origin).saturating_sub(self.dropped),
            ..g
        });
    }

    /// The worker takes this feed on at device stream position `position`,
    /// `stream_frame` frames of stream time after capture started.
    pub(crate) fn attach(&mut self, position: u64, stream_frame: u64) {
        self.origin = position;
        self.start_frame.store(stream_frame, Ordering::Release);
    }

    /// The worker lets go: the encoder drains what it has and finishes.
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }
}

/// A take being recorded from a running capture (see
/// [`crate::capture::CapturePipeline::start_take`]).
#[derive(Debug)]
pub struct RunningTake {
    stop: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<TakeSummary, RecordError>>,
}

impl RunningTake {
    /// End the take early; what was captured is written and kept.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The take's files are finished (it reached its length, was stopped, or failed).
    pub fn is_finished(&self) -> bool {
        self.ended.load(Ordering::Acquire) && self.thread.is_finished()
    }

    /// Wait for the take's files to be finished.
    pub fn join(self) -> Result<TakeSummary, RecordError> {
        self.thread.join().unwrap_or_else(|_| {
            Err(RecordError::Spawn(std::io::Error::other(
                "take thread panicked",
            )))
        })
    }
}

/// Periods an encoder thread lets gather before it wakes: fewer wake-ups, and
/// libFLAC encodes whole blocks; small against the take ring (`ring_frames`)
/// and against the ≤ 1 s a crash may lose.
const TAKE_BATCH_PERIODS: usize = 2;

/// The encoder thread's end of a [`TakeFeed`].
struct TakeInput {
    samples: rtrb::Consumer<i32>,
    gaps: rtrb::Consumer<Gap>,
    channels: usize,
    /// Set when the worker will push nothing more.
    finished: Arc<AtomicBool>,
    /// Samples worth waking for, and the wait when fewer are ready.
    batch: usize,
    idle: Duration,
}

/// Record one capture into several takes at once: the device is captured once,
/// metered once, and each take gets its channels (its [`ChannelMap`]) in its own
/// encoder thread, so a slow disk for one take never stalls capture or the
/// others. Takes must use disjoint device channels. Each take ends at its
/// duration; all end when `stop` is set (after writing what was captured).
///
/// Returns one result per take, in order; the outer error is for problems that
/// stop every take (bad request, capture could not start).
pub fn record_takes(
    source: Box<dyn CaptureSource>,
    specs: &[TakeSpec],
    options: &SessionOptions,
    clock: &dyn Clock,
    stop: &AtomicBool,
    mut on_meter: impl FnMut(&MeterFrame),
) -> Result<Vec<Result<TakeSummary, RecordError>>, RecordError> {
    let format = source.format();
    let device_channels = usize::from(format.channels);
    let mut maps = Vec::new();
    let mut used = vec![false; device_channels];
    for spec in specs {
        let map = check_take(spec, device_channels)?;
        if specs.len() > 1 {
            for c in map.sources() {
                if std::mem::replace(&mut used[c], true) {
                    return Err(RecordError::Map(format!(
                        "device channel {} is in more than one take; takes sharing a device use disjoint channels",
                        c + 1
                    )));
                }
            }
        }
        maps.push(map);
    }

    let start_ms = clock.unix_ms();
    let (capture, mut reader) =
        Capture::start(source, options.realtime).map_err(RecordError::Spawn)?;
    let mut feeds = Vec::new();
    let mut threads = Vec::new();
    for (spec, map) in specs.iter().zip(maps) {
        let (mut feed, thread) = spawn_take(
            spec,
            map,
            format,
            capture.period_frames,
            capture.stats.clone(),
            start_ms,
        )?;
        feed.attach(0, 0);
        feeds.push(feed);
        threads.push(thread);
    }

    // The capture worker: meter once, fan out to every take.
    let mut metering = Metering::new(format, options.meters, Some(capture.stats.clone()));
    loop {
        let source_done = capture.failed() || (capture.ended() && reader.is_empty());
        if stop.load(Ordering::Relaxed) || source_done || feeds.iter().all(TakeFeed::done) {
            break;
        }
        reader.take_gaps(|g| {
            metering.skip(g.frames);
            feeds.iter_mut().for_each(|f| f.device_gap(g));
        });
        reader.read(usize::MAX, |samples| {
            metering.push(samples, clock, |_| {}, |f| on_meter(&f));
            for feed in feeds.iter_mut().filter(|f| !f.done()) {
                feed.push(samples, device_channels);
            }
        });
        reader.pace();
    }
    feeds.iter().for_each(TakeFeed::finish);
    let captured = capture.stop();
    let mut results: Vec<Result<TakeSummary, RecordError>> = threads
        .into_iter()
        .map(|t| {
            t.join().unwrap_or_else(|_| {
                Err(RecordError::Spawn(std::io::Error::other(
                    "take thread panicked",
                )))
            })
        })
        .collect();
    if let Err(source) = captured {
        let source_text = source.to_string();
        for r in &mut results {
            if let Ok(summary) = r {
                let path = summary
                    .files
                    .first()
                    .map(|(p, _)| p.clone())
                    .unwrap_or_default();
                *r = Err(RecordError::Capture {
                    path,
                    frames: summary.frames,
                    source: CaptureError::Device(source_text.clone()),
                });
            }
        }
    }
    Ok(results)
}

/// Check a take against a device with `device_channels` channels; returns its map.
pub(crate) fn check_take(
    spec: &TakeSpec,
    device_channels: usize,
) -> Result<ChannelMap, RecordError> {
    let map = match &spec.map {
        Some(m) if m.inputs() != device_channels => {
            return Err(RecordError::Map(format!(
                "the map {m} is for {} device channels; the device delivers {device_channels}",
                m.inputs(),
            )));
        }
        Some(m) => m.clone(),
        None => ChannelMap::identity(device_channels),
    };
    if map.outputs() > spec.codec.max_channels() {
        return Err(RecordError::TooManyChannels {
            channels: map.outputs(),
            codec: spec.codec.name(),
            max: spec.codec.max_channels(),
            hint: match spec.codec {
                Codec::Flac { .. } => ", split into several takes, or record WAV/RF64",
                Codec::Wav { .. } => "",
            },
        });
    }
    if !matches!(spec.bits, 16 | 24 | 32) {
        return Err(RecordError::Bits(spec.bits));
    }
    let first = file_path(&spec.out, spec.segment.map(|_| 1));
    // A `.part` file is a take being written (or one to recover): taken too.
    for taken in [part_path(&first), first] {
        if taken.exists() {
            return Err(RecordError::Exists(taken));
        }
    }
    Ok(map)
}

type TakeThread = std::thread::JoinHandle<Result<TakeSummary, RecordError>>;

/// Start a take's encoder thread. Returns the feed the capture worker fills
/// (after [`TakeFeed::attach`]) and the thread, which ends when the take
/// reaches its length, its writer fails, or the feed is finished and drained.
pub(crate) fn spawn_take(
    spec: &TakeSpec,
    map: ChannelMap,
    format: crate::source::StreamFormat,
    period_frames: usize,
    stats: Arc<crate::capture::CaptureStats>,
    start_ms: u64,
) -> Result<(TakeFeed, TakeThread), RecordError> {
    let rate = u64::from(format.sample_rate);
    let ring_frames = crate::capture::ring_frames(period_frames);
    let channels = map.outputs();
    let (samples_tx, samples_rx) = rtrb::RingBuffer::new(ring_frames * channels);
    let (gaps_tx, gaps_rx) = rtrb::RingBuffer::new(crate::capture::GAP_RING);
    let limit = spec.duration.map(|d| d.as_millis() as u64 * rate / 1000);
    let ended = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let start_frame = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feed = TakeFeed {
        ended: ended.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        finished: finished.clone(),
        origin: 0,
        start_frame: start_frame.clone(),
        samples: samples_tx,
        gaps: gaps_tx,
        identity: spec.map.is_none(),
        map: map.clone(),
        shift: 32 - u32::from(spec.bits),
        position: 0,
        dropped: 0,
        limit,
    };
    let input = TakeInput {
        samples: samples_rx,
        gaps: gaps_rx,
        channels,
        finished,
        batch: TAKE_BATCH_PERIODS * period_frames * channels,
        idle: Duration::from_micros(
            (TAKE_BATCH_PERIODS as u64 * period_frames as u64 * 1_000_000 / rate.max(1)).max(500),
        ),
    };
    let spec = spec.clone();
    let (sample_rate, map_text) = (
        format.sample_rate,
        (!map_is_identity(&spec)).then(|| map.to_string()),
    );
    let thread = std::thread::Builder::new()
        .name("rakkr-take".into())
        .spawn(move || {
            let result = write_take(
                input,
                &spec,
                TakeClock {
                    sample_rate,
                    start_ms,
                    start_frame,
                },
                channels,
                map_text,
                limit,
                &stats,
            );
            ended.store(true, Ordering::Release);
            result
        })
        .map_err(RecordError::Spawn)?;
    Ok((feed, thread))
}

impl RunningTake {
    pub(crate) fn new(feed: &TakeFeed, thread: TakeThread) -> RunningTake {
        RunningTake {
            stop: feed.stop.clone(),
            ended: feed.ended.clone(),
            thread,
        }
    }
}

/// Where a take's start time comes from: the capture's start, plus the
/// stream time of the take's first frame.
struct TakeClock {
    sample_rate: u32,
    /// The session's start on the host clock: the fallback if the capture
    /// thread never stamped frame 0.
    start_ms: u64,
    start_frame: Arc<std::sync::atomic::AtomicU64>,
}

fn map_is_identity(spec: &TakeSpec) -> bool {
    spec.map.is_none()
}

impl TakeInput {
    /// The worker has finished and everything it pushed was taken.
    fn drained(&self) -> bool {
        self.finished.load(Ordering::Acquire) && self.samples.slots() == 0
    }
}

/// Fills one file (segment) of a take from the take's ring, up to `limit`
/// frames, collecting gap events as they arrive.
struct SegmentFeed<'a> {
    input: &'a mut TakeInput,
    limit: Option<u64>,
    gaps: &'a RefCell<Vec<Gap>>,
    gaps_unlisted: &'a Cell<u64>,
}

impl FileBody for SegmentFeed<'_> {
    fn fill<O: AudioOut>(&mut self, out: &mut O) -> Result<(), O::Error> {
        let input = &mut *self.input;
        loop {
            let done = out.frames();
            if self.limit.is_some_and(|l| done >= l) || input.drained() {
                return Ok(());
            }
            let max = self.limit.map_or(usize::MAX, |l| (l - done) as usize);
            let frames = (input.samples.slots() / input.channels).min(max);
            if frames > 0
                && let Ok(chunk) = input.samples.read_chunk(frames * input.channels)
            {
                let (a, b) = chunk.as_slices();
                out.write(a)?;
                out.write(b)?;
                chunk.commit_all();
            }
            while let Ok(g) = input.gaps.pop() {
                let mut unlisted = self.gaps_unlisted.get();
                add_gap(&mut self.gaps.borrow_mut(), &mut unlisted, g);
                self.gaps_unlisted.set(unlisted);
            }
            if input.samples.slots() < input.batch {
                std::thread::sleep(input.idle);
            }
        }
    }
}

/// The encoder thread of one take: files (segments) from its input until the
/// take's limit, or until the worker has finished and the input is drained.
#[allow(clippy::too_many_arguments)]
fn write_take(
    mut input: TakeInput,
    spec: &TakeSpec,
    clock: TakeClock,
    channels: usize,
    map_text: Option<String>,
    limit: Option<u64>,
    stats: &crate::capture::CaptureStats,
) -> Result<TakeSummary, RecordError> {
    let sample_rate = clock.sample_rate;
    let rate = u64::from(sample_rate);
    let segment_frames = spec
        .segment
        .map(|d| (d.as_millis() as u64 * rate / 1000).max(1));
    let mut tags = spec.tags.clone();
    tags.push(("RAKKR_SAMPLE_RATE".into(), sample_rate.to_string()));
    if let Some(m) = map_text {
        tags.push(("RAKKR_CHANNEL_MAP".into(), m));
    }
    let file_spec = FileSpec {
        channels,
        bits_per_sample: spec.bits,
        sample_rate,
        vendor: format!("rakkr-agent {AGENT_VERSION}"),
        tags,
        sync_every_frames: (spec.sync_every.as_millis() as u64 * rate / 1000).max(1),
    };
    // Gaps with take-wide positions. Shared by the feed (which adds) and the
    // final tags (which read, later).
    let gaps: RefCell<Vec<Gap>> = RefCell::new(Vec::new());
    let gaps_unlisted = Cell::new(0u64);
    let mut files = Vec::new();
    let mut take_frames = 0u64;

    // One file per segment; segments split the stream at exact sample positions.
    loop {
        let index = segment_frames.map(|_| files.len() as u32 + 1);
        let path = file_path(&spec.out, index);
        if path.exists() {
            return Err(RecordError::Exists(path));
        }
        let part = part_path(&path);
        let segment_start = take_frames;
        let segment_limit = match (limit, segment_frames) {
            (Some(l), Some(s)) => Some((l - take_frames).min(s)),
            (Some(l), None) => Some(l - take_frames),
            (None, s) => s,
        };
        let mut this_spec = file_spec.clone();
        if let Some(i) = index {
            this_spec.tags.push(("RAKKR_SEGMENT".into(), i.to_string()));
            this_spec.tags.push((
                "RAKKR_SEGMENT_START_FRAME".into(),
                segment_start.to_string(),
            ));
        }
        let mut feed = SegmentFeed {
            input: &mut input,
            limit: segment_limit,
            gaps: &gaps,
            gaps_unlisted: &gaps_unlisted,
        };
        let written =
            crate::take_file::write_file(spec.codec, &part, &this_spec, &mut feed, |frames| {
                let xruns = stats.xruns.load(Ordering::Relaxed);
                // This file's gaps, positioned within the file.
                let end = segment_start + frames;
                let here: Vec<Gap> = gaps
                    .borrow()
                    .iter()
                    .filter(|g| g.position >= segment_start && (g.position < end || frames == 0))
                    .map(|g| Gap {
                        position: g.position - segment_start,
                        ..*g
                    })
                    .collect();
                // The capture thread stamped frame 0 long before any file ends;
                // the session's start is the fallback if it never delivered.
                let session_ns = match stats.start_unix_ns.load(Ordering::Acquire) {
                    0 => clock.start_ms * 1_000_000,
                    ns => ns,
                };
                let offset = clock.start_frame.load(Ordering::Acquire);
                let start_ns = session_ns
                    + (u128::from(offset) * 1_000_000_000 / u128::from(rate.max(1))) as u64;
                let start_clock = if stats.start_from_device.load(Ordering::Acquire) {
                    "device"
                } else {
                    "host"
                };
                vec![
                    (
                        "RAKKR_START_UNIX_MS".into(),
                        (start_ns / 1_000_000).to_string(),
                    ),
                    (
                        "RAKKR_START_UTC".into(),
                        crate::clock::utc_rfc3339_micros(start_ns),
                    ),
                    ("RAKKR_START_CLOCK".into(), start_clock.into()),
                    ("RAKKR_FRAMES".into(), frames.to_string()),
                    ("RAKKR_XRUNS".into(), xruns.to_string()),
                    ("RAKKR_GAPS".into(), format_gaps(&here, gaps_unlisted.get())),
                ]
            });
        // Whatever happened, the part file is a complete file now: publish it.
        let published = publish(&part, &path);
        match written.and_then(|file| published.map(|()| file)) {
            Ok(file) => {
                take_frames += file.frames;
                files.push((path, file));
            }
            Err(source) => return Err(RecordError::Write { path, source }),
        }
        if limit.is_some_and(|l| take_frames >= l) || segment_frames.is_none() || input.drained() {
            break;
        }
    }
    Ok(TakeSummary {
        files,
        frames: take_frames,
        gaps: gaps.into_inner(),
        xruns: stats.xruns.load(Ordering::Relaxed),
    })
}

/// The file for segment `index` of a take named `out` (`None`: unsegmented):
/// `concert.flac` → `concert.0001.flac`, `concert.0002.flac`, …
pub fn file_path(out: &Path, index: Option<u32>) -> PathBuf {
    match index {
        None => out.to_owned(),
        Some(i) => {
            let stem = out.file_stem().unwrap_or_default().to_string_lossy();
            let ext = out
                .extension()
                .map_or("flac".into(), |e| e.to_string_lossy());
            out.with_file_name(format!("{stem}.{i:04}.{ext}"))
        }
    }
}

/// Add `g` to the take's gap list: consecutive dropped periods are one hole;
/// past [`MAX_GAPS_LISTED`] gaps are only counted.
pub fn add_gap(gaps: &mut Vec<Gap>, unlisted: &mut u64, g: Gap) {
    if let Some(last) = gaps.last_mut()
        && g.kind == GapKind::Overflow
        && last.kind == g.kind
        && last.position == g.position
    {
        last.frames += g.frames;
    } else if gaps.len() < MAX_GAPS_LISTED {
        gaps.push(g);
    } else {
        *unlisted += 1;
    }
}

/// `position+frames,…` (frames `?` when unknown, `~N` when estimated from the
/// time a device was gone), then `+N more` if cut.
pub fn format_gaps(gaps: &[Gap], unlisted: u64) -> String {
    let mut s: Vec<String> = gaps
        .iter()
        .map(|g| match (g.kind, g.frames) {
            (GapKind::Xrun, 0) => format!("{}+?", g.position),
            (GapKind::Xrun | GapKind::DeviceLost, n) => format!("{}+~{n}", g.position),
            (_, n) => format!("{}+{n}", g.position),
        })
        .collect();
    if unlisted > 0 {
        s.push(format!("+{unlisted} more"));
    }
    s.join(",")
}

fn publish(part: &Path, out: &Path) -> Result<(), FileError> {
    if out.exists() {
        return Err(FileError::Io {
            path: out.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "appeared while recording; the take stays in the .part file",
            ),
        });
    }
    std::fs::rename(part, out).map_err(|e| FileError::Io {
        path: part.to_owned(),
        source: e,
    })?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FileError::Io {
            path: dir.to_owned(),
            source: e,
        })
}

/// One recovered take.
#[derive(Debug)]
pub struct Recovered {
    pub path: PathBuf,
    pub report: Result<Recovery, FileError>,
}

/// Complete every interrupted take (`*.part`, FLAC or WAV) in `dir` and give it its final
/// name. A take whose final name is taken keeps its `.part` name.
pub fn recover_dir(dir: &Path) -> std::io::Result<Vec<Recovered>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        // Any extension: the codec is recognised from the content.
        .filter(|p| p.to_string_lossy().ends_with(PART_SUFFIX) && p.is_file())
        .collect();
    entries.sort();
    for part in entries {
        let final_path = PathBuf::from(
            part.to_string_lossy()
                .trim_end_matches(PART_SUFFIX)
                .to_owned(),
        );
        let report =
            crate::take_file::recover(&part).and_then(|r| publish(&part, &final_path).map(|()| r));
        let path = if report.is_ok() { final_path } else { part };
        out.push(Recovered { path, report });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(position: u64, frames: u64, kind: GapKind) -> Gap {
        Gap {
            position,
            frames,
            kind,
        }
    }

    #[test]
    fn consecutive_drops_merge_and_the_list_is_bounded() {
        let (mut gaps, mut unlisted) = (Vec::new(), 0);
        for g in [
            gap(100, 64, GapKind::Overflow),
            gap(100, 64, GapKind::Overflow),
            gap(100, 0, GapKind::Xrun),
            gap(500, 64, GapKind::Overflow),
            gap(900, 4800, GapKind::DeviceLost),
        ] {
            add_gap(&mut gaps, &mut unlisted, g);
        }
        assert_eq!(
            format_gaps(&gaps, unlisted),
            "100+128,100+?,500+64,900+~4800"
        );
        for i in 0..MAX_GAPS_LISTED as u64 {
            add_gap(&mut gaps, &mut unlisted, gap(1000 + i, 0, GapKind::Xrun));
        }
        assert_eq!(gaps.len(), MAX_GAPS_LISTED);
        assert_eq!(unlisted, 4);
        assert!(format_gaps(&gaps, unlisted).ends_with(",+4 more"));
    }
}
