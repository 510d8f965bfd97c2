//! Benchmark: capture-thread wake-up to ring-push latency.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/capture-latency [SECONDS] [RUNS] [CHANNELS] [PERIOD]
//! ```
//!
//! A JACK dummy backend (48 kHz, PERIOD frames) paces alsa-lib's jack plugin; the
//! agent's real capture thread (`Capture`, SCHED_FIFO when granted) reads CHANNELS
//! channels of S32_LE from it while an ordinary thread drains the ring. For every
//! period the thread measures the time from waking (its `snd_pcm_wait` returning)
//! to the period being in the ring: read, conversion and push. Reports the count,
//! p50 / p99 (as the upper bound of a power-of-two histogram bucket) and the
//! maximum per run, and the medians.

use std::time::{Duration, Instant};

use anyhow::Result;
use rakkr_agent::capture::Capture;
use rakkr_agent::source::SampleFormat;
use rakkr_agent::source::alsa::{AlsaRequest, AlsaSource};
use rakkr_hil_tests::JackServer;
use rakkr_hil_tests::bench::median;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u64 = args.first().map_or(Ok(20), |s| s.parse())?;
    let runs: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let channels: u16 = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let period: u32 = args.get(3).map_or(Ok(256), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let server = format!("rakkr-latency-{}", std::process::id());
    let conf = dir.path().join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "</usr/share/alsa/alsa.conf>\n{}pcm.bench {{ type plug slave.pcm \"jackcap\" }}\n",
            JackServer::capture_pcm(channels)
        ),
    )?;
    let jack = JackServer::start(&server, period, channels)?;
    // SAFETY: single-threaded so far; alsa-lib and libjack read these on first use.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("ALSA_CONFIG_PATH", &conf);
        std::env::set_var("JACK_DEFAULT_SERVER", &server);
    }
    println!("{channels} ch, S32_LE, 48 kHz, {period}-frame periods, {seconds} s per run");
    let (mut p50s, mut p99s, mut maxes) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let source = AlsaSource::open(&AlsaRequest {
            device: "bench".into(),
            channels,
            rate: 48_000,
            format: SampleFormat::S32Le,
            period_frames: period,
            periods: 4,
        })?;
        let (capture, mut reader) = Capture::start(Box::new(source), true)?;
        let end = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < end {
            reader.read(usize::MAX, |_| {});
            reader.pace();
            reader.take_gaps(|_| {});
        }
        let h = &capture.stats.push_latency;
        let (count, p50, p99, max) = (
            h.count(),
            h.quantile_upper_bound(0.5),
            h.quantile_upper_bound(0.99),
            h.max(),
        );
        let xruns = capture
            .stats
            .xruns
            .load(std::sync::atomic::Ordering::Relaxed);
        let fifo = capture.sched_fifo;
        capture.stop()?;
        println!(
            "run {run}: {count} periods, p50 <= {p50:?}, p99 <= {p99:?}, max {max:?}, xruns {xruns}, SCHED_FIFO {fifo}"
        );
        p50s.push(p50);
        p99s.push(p99);
        maxes.push(max);
    }
    drop(jack);
    println!(
        "median: p50 <= {:?}, p99 <= {:?}, max {:?}",
        median(p50s),
        median(p99s),
        median(maxes)
    );
    Ok(())
}
