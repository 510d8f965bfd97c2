//! Real overruns at real-time pace: alsa-lib's `file` plugin replays a known
//! signal through a JACK dummy backend (paced by JACK's clock), and the capture
//! thread is stalled for 400 ms at chosen periods. Each stall is a real `-EPIPE`
//! overrun that `AlsaSource` recovers from; the pipeline must count it, record a
//! gap at the right stream position, and keep capturing.
//!
//! (With the file plugin, frames after an overrun arrive delayed, not skipped, so
//! the delivered audio still equals the file: positions and counters are what a
//! gap test can check.)
#![allow(unsafe_code)] // set_var before any thread exists

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rakkr_agent::capture::{Capture, Gap, GapKind};
use rakkr_agent::source::alsa::{AlsaRequest, AlsaSource};
use rakkr_agent::source::{CaptureError, CaptureSource, PeriodRead, SampleFormat, StreamFormat};

mod common;
use common::{Jack, alsa_config, full_range_samples};

const CHANNELS: u16 = 2;
const PERIOD: u32 = 1024;
const STALL_AT: [usize; 2] = [40, 90];
const PERIODS: usize = 140;

/// Delegates to a real source, sleeping before the reads listed in `stall_at`.
struct Stalling {
    inner: AlsaSource,
    reads: usize,
}

impl CaptureSource for Stalling {
    fn format(&self) -> StreamFormat {
        self.inner.format()
    }
    fn period_frames(&self) -> usize {
        self.inner.period_frames()
    }
    fn kind(&self) -> &'static str {
        "stalling-alsa"
    }
    fn read(&mut self, buf: &mut [i32]) -> Result<PeriodRead, CaptureError> {
        if STALL_AT.contains(&self.reads) {
            std::thread::sleep(Duration::from_millis(400));
        }
        self.reads += 1;
        self.inner.read(buf)
    }
    fn first_frame_time(&self) -> Option<Duration> {
        self.inner.first_frame_time()
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn stalls_become_counted_overruns_recorded_as_gaps_and_capture_continues() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("rakkr-test-{}", std::process::id());
    let frames = (PERIODS + 200) * PERIOD as usize;
    let signal = full_range_samples(16, frames * usize::from(CHANNELS), 77);
    let raw: Vec<u8> = signal
        .iter()
        .flat_map(|s| (*s as i16).to_le_bytes())
        .collect();
    let input = dir.path().join("in.raw");
    std::fs::write(&input, raw).unwrap();
    let jack_pcms = format!(
        "pcm.jackcap {{\n type jack\n capture_ports {{ 0 system:capture_1 1 system:capture_2 }}\n}}\n\
         pcm.jackcap_plug {{ type plug slave.pcm \"jackcap\" }}\n\
         pcm.replay_rt {{\n type file\n slave.pcm \"jackcap_plug\"\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n}}\n",
        input.display()
    );
    let conf = alsa_config(dir.path(), &jack_pcms, &[]);
    // SAFETY: no other thread exists yet in this test process.
    unsafe {
        std::env::set_var("ALSA_CONFIG_PATH", &conf);
        std::env::set_var("JACK_DEFAULT_SERVER", &server);
        std::env::set_var("JACK_NO_AUDIO_RESERVATION", "1");
    }
    let _jack = Jack::start(&server);

    let request = AlsaRequest {
        device: "replay_rt".into(),
        channels: CHANNELS,
        rate: 48_000,
        format: SampleFormat::S16Le,
        period_frames: PERIOD,
        periods: 4,
    };
    let source = AlsaSource::open(&request).expect("open the JACK-paced PCM");
    let period = source.period_frames();
    let before_start = unix_ns();
    let (capture, mut reader) = Capture::start(
        Box::new(Stalling {
            inner: source,
            reads: 0,
        }),
        false,
    )
    .unwrap();

    let mut delivered: Vec<i32> = Vec::new();
    let mut gaps: Vec<Gap> = Vec::new();
    let started = Instant::now();
    let mut first_arrival = None;
    while delivered.len() < PERIODS * period * usize::from(CHANNELS) {
        if first_arrival.is_none() && !delivered.is_empty() {
            first_arrival = Some(unix_ns());
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "capture stalled for good"
        );
        reader.read(usize::MAX, |s| delivered.extend(s.iter().map(|v| v >> 16)));
        reader.pace();
        reader.take_gaps(|g| gaps.push(g));
    }
    let elapsed = started.elapsed();
    // Frame 0's capture time is the device's own timestamp of the stream start:
    // after we asked for the stream, before its first period reached us.
    let start = capture.stats.start_unix_ns.load(Ordering::Acquire);
    assert!(capture.stats.start_from_device.load(Ordering::Acquire));
    assert!(
        (before_start..=first_arrival.unwrap()).contains(&start),
        "start {start} outside {before_start}..{first_arrival:?}"
    );
    let xruns = capture
        .stats
        .xruns
        .load(std::sync::atomic::Ordering::Relaxed);
    capture.stop().unwrap();
    reader.take_gaps(|g| gaps.push(g));

    // Paced: 140 periods of 1024 at 48 kHz take about 3 s, plus the stalls.
    assert!(
        elapsed > Duration::from_millis(2500),
        "not paced: {elapsed:?}"
    );
    assert_eq!(xruns as usize, STALL_AT.len(), "one overrun per stall");
    let xrun_gaps: Vec<&Gap> = gaps
        .iter()
        .filter(|g| matches!(g.kind, GapKind::Xrun | GapKind::XrunTimed))
        .collect();
    assert_eq!(xrun_gaps.len(), STALL_AT.len(), "{gaps:?}");
    for (gap, stall) in xrun_gaps.iter().zip(STALL_AT) {
        // The gap lies before the first period read after the stall.
        assert_eq!(gap.position, (stall * period) as u64, "{gaps:?}");
        // Its length is estimated from the 400 ms the device went unread.
        // (This plugin delays rather than drops, so the content check below
        // still holds; with hardware those frames are gone.)
        assert!(
            (14_400..=28_800).contains(&gap.frames),
            "{gap:?}: 0.3 to 0.6 s expected"
        );
    }
    // Capture went on after each overrun, in order.
    let n = delivered.len();
    assert!(
        delivered
            .iter()
            .zip(&signal[..n])
            .all(|(a, b)| i64::from(*a) == *b),
        "audio out of order"
    );

    // A device with a fixed channel count (two JACK ports, float samples): asking
    // for more channels is a clear error that says what the device has.
    let e = AlsaSource::open(&AlsaRequest {
        device: "jackcap".into(),
        channels: 4,
        format: SampleFormat::FloatLe,
        ..request
    })
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CaptureError::Unsupported(_)), "{msg}");
    assert!(
        msg.contains("cannot capture 4 channels") && msg.contains("2 to 2"),
        "{msg}"
    );
}
