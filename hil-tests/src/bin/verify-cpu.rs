//! Benchmark: the server's CPU to verify a received file by decoding it to its
//! end and drawing its waveform preview (`rakkr_server::waveform::of_file`),
//! against the reference `flac -t` (decode, MD5 check) of the same file in the
//! same run.
//!
//! ```sh
//! cargo build --release -p rakkr-hil-tests --bin verify-cpu
//! target/release/verify-cpu [SECONDS] [RUNS] [CHANNELS]
//! ```
//!
//! The input is SECONDS of 24-bit, 48 kHz audio made by sox (pink noise at
//! −20 dBFS: compresses like a real room), encoded by `flac -5`. Our figure is
//! the thread's CPU time (`/proc/thread-self/schedstat`), the
//! reference's that of its process (GNU time). Prints per-run figures,
//! medians, CPU-seconds per GB of FLAC and the ratio rakkr / reference.

use anyhow::{Context, Result};
use rakkr_hil_tests::bench::{cpu_seconds, median};

/// CPU time of the calling thread (the kernel's schedstat, nanoseconds).
fn thread_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = stat
        .split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()?;
    Ok(ns as f64 / 1e9)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u32 = args.first().map_or(Ok(600), |s| s.parse())?;
    let runs: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let channels: u16 = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("input.flac");
    let bytes = rakkr_hil_tests::bench::noise_flac(&file, seconds, channels)?;
    let gb = bytes as f64 / 1e9;
    println!("input: {seconds} s × {channels} ch, 24-bit 48 kHz, {bytes} B of FLAC");
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let before = thread_cpu_seconds()?;
        let preview = rakkr_server::waveform::of_file(&file, "flac").map_err(anyhow::Error::msg)?;
        let cpu = thread_cpu_seconds()? - before;
        assert_eq!(preview.frames, u64::from(seconds) * 48_000);
        let theirs = cpu_seconds(&format!("flac -t -s '{}'", file.display()), &[])?;
        println!("run {run}: rakkr {cpu:.3} CPU-s, flac -t {theirs:.3} CPU-s");
        ours.push(cpu);
        reference.push(theirs);
    }
    let (ours, reference) = (median(ours), median(reference));
    println!(
        "median: rakkr {ours:.3} CPU-s ({:.2} CPU-s per GB), flac -t {reference:.3} CPU-s ({:.2} CPU-s per GB); ratio {:.2}",
        ours / gb,
        reference / gb,
        ours / reference
    );
    Ok(())
}
