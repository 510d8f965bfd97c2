//! Benchmark: CPU time to capture, meter and FLAC-encode (level 5) one input,
//! against the reference pipeline `arecord | flac -5` reading the same ALSA PCM
//! in the same run.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! RAKKR_BIN_DIR=target/release target/release/capture-cpu [SECONDS] [RUNS] [CHANNELS] [PERIOD]
//! ```
//!
//! PERIOD is the agent's ALSA period in frames (its own default, 4,096 at
//! 48 kHz, when not given); `arecord` keeps its own defaults.
//!
//! The input is SECONDS of 24-bit audio made by sox (pink noise at −20 dBFS plus a
//! tone per channel: compresses like a real room, not like silence), replayed by
//! alsa-lib's `file` plugin paced in real time by a JACK dummy backend — the way
//! a sound card delivers audio — so both pipelines see identical samples at the
//! same pace. (Unpaced, our capture thread would read as fast as the file allows
//! and drop what the encoder cannot take, by design: it never blocks. `arecord`
//! would instead be held back by its pipe. Neither would be a recorder.)
//! CPU is user + system time of the whole pipeline (GNU time); jackd's own CPU is
//! not counted for either. Prints per-run figures, medians, CPU-seconds per
//! channel-hour and the ratio rakkr / reference.

use std::process::Command;

use anyhow::{Context, Result, bail};
use rakkr_hil_tests::bench::{cpu_seconds, median};
use rakkr_hil_tests::{JackServer, bin};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u32 = args.first().map_or(Ok(60), |s| s.parse())?;
    let runs: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let channels: u32 = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let period: Option<u32> = args.get(3).map(|s| s.parse()).transpose()?;
    let period_arg = period.map_or(String::new(), |p| format!(" --period {p}"));
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("in.raw");
    let status = Command::new("sox")
        .args([
            "-n",
            "-r",
            "48000",
            "-c",
            &channels.to_string(),
            "-b",
            "24",
            "-e",
            "signed-integer",
            "-t",
            "raw",
        ])
        .arg(&input)
        .args([
            "synth",
            &(seconds + 5).to_string(),
            "pinknoise",
            "sine",
            "440",
            "vol",
            "0.1",
        ])
        .status()
        .context("run sox")?;
    if !status.success() {
        bail!("sox failed");
    }
    let conf = dir.path().join("asound.conf");
    std::fs::write(
        &conf,
        format!(
            "</usr/share/alsa/alsa.conf>\n{}\
             pcm.jackcap_plug {{ type plug slave.pcm \"jackcap\" }}\n\
             pcm.bench {{\n type file\n slave.pcm \"jackcap_plug\"\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n}}\n",
            JackServer::capture_pcm(channels as u16),
            input.display()
        ),
    )?;
    let server = format!("rakkr-bench-{}", std::process::id());
    let jack = JackServer::start(&server, 1024, channels as u16)?;
    let server_env = std::path::PathBuf::from(&server);
    let env = [
        ("ALSA_CONFIG_PATH", conf.as_path()),
        ("JACK_DEFAULT_SERVER", server_env.as_path()),
    ];
    let agent = bin("rakkr-agent");
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    println!(
        "input: {seconds} s, {channels} ch, 48 kHz, 24-bit (S24_3LE); runs: {runs}; agent period {}",
        period.map_or("default".to_owned(), |p| format!("{p} frames"))
    );
    for run in 1..=runs {
        let a = dir.path().join(format!("rakkr-{run}.flac"));
        let r = dir.path().join(format!("ref-{run}.flac"));
        let ours_cpu = cpu_seconds(
            &format!(
                "{} record --device bench --channels {channels} --rate 48000 --format S24_3LE --duration {seconds} --bits 24 --compression 5{period_arg} --out {} 2>/dev/null",
                agent.display(),
                a.display()
            ),
            &env,
        )?;
        let ref_cpu = cpu_seconds(
            &format!(
                "arecord -q -D bench -f S24_3LE -c {channels} -r 48000 -d {seconds} -t raw | \
                 flac -5 -s --force-raw-format --endian=little --sign=signed --channels={channels} --bps=24 \
                 --sample-rate=48000 -o {} -",
                r.display()
            ),
            &env,
        )?;
        let (sa, sr) = (std::fs::metadata(&a)?.len(), std::fs::metadata(&r)?.len());
        println!(
            "run {run}: rakkr {ours_cpu:.3} CPU-s ({sa} bytes)   arecord|flac -5 {ref_cpu:.3} CPU-s ({sr} bytes)"
        );
        ours.push(ours_cpu);
        reference.push(ref_cpu);
    }
    drop(jack);
    let (o, r) = (median(ours), median(reference));
    let per_channel_hour = |cpu: f64| cpu / f64::from(channels) / (f64::from(seconds) / 3600.0);
    println!(
        "median: rakkr {o:.3} CPU-s = {:.2} CPU-s per channel-hour; reference {r:.3} CPU-s = {:.2} CPU-s per channel-hour; ratio {:.2}",
        per_channel_hour(o),
        per_channel_hour(r),
        o / r
    );
    Ok(())
}
