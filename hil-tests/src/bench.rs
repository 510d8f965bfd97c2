//! What the benchmark binaries (`src/bin`) share: medians of runs, and the
//! CPU time of a reference pipeline measured by GNU time.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The median of several runs (the upper one of an even count).
pub fn median<T: PartialOrd + Copy>(mut runs: Vec<T>) -> T {
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    runs[runs.len() / 2]
}

/// User + system CPU seconds of the shell pipeline `shell` and its children
/// (GNU time, package `time`), run with `env` added.
pub fn cpu_seconds(shell: &str, env: &[(&str, &Path)]) -> Result<f64> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "CPU %U %S", "bash", "-c", shell])
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .context("run /usr/bin/time (package `time`)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{shell}` failed:\n{stderr}");
    }
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("CPU "))
        .context("no CPU line")?;
    Ok(line[4..]
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0))
        .sum())
}

/// Write `seconds` of `channels`-channel 24-bit 48 kHz pink noise at
/// −20 dBFS (sox; compresses like a real room, not like silence), encoded by
/// `flac -5`, to `file`; its size in bytes.
pub fn noise_flac(file: &Path, seconds: u32, channels: u16) -> Result<u64> {
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sox -n -t raw -e signed -b 24 -r 48000 -c {channels} - synth {seconds} pinknoise vol -20dB \
             | flac -5 -s --force-raw-format --endian=little --sign=signed \
               --channels={channels} --bps=24 --sample-rate=48000 -o '{}' -",
            file.display()
        ))
        .status()
        .context("run sox | flac (packages `sox`, `flac`)")?;
    if !made.success() {
        bail!("making the noise input failed");
    }
    Ok(std::fs::metadata(file)?.len())
}
