//! Shared by the agent's integration tests: ALSA test devices and test signals.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};

/// Write an alsa-lib configuration (to point `ALSA_CONFIG_PATH` at) that
/// includes the system one, `extra` verbatim, and one capture PCM per
/// `(name, raw file)`: alsa-lib's `file` plugin replaying the file, bit-exactly,
/// as fast as it is read.
pub fn alsa_config(dir: &Path, extra: &str, pcms: &[(&str, &Path)]) -> PathBuf {
    let mut conf = String::from("</usr/share/alsa/alsa.conf>\n");
    conf += extra;
    for (name, file) in pcms {
        conf += &format!(
            "pcm.{name} {{\n type file\n slave.pcm \"null\"\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n}}\n",
            file.display()
        );
    }
    let path = dir.join("asound-test.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// Deterministic samples spanning the whole range of `bits` (extremes, zero and
/// −1 included), as right-justified values.
pub fn full_range_samples(bits: u32, count: usize, seed: u64) -> Vec<i64> {
    let (min, max) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
    let mut x = seed | 1;
    (0..count)
        .map(|i| match i % 97 {
            0 => min,
            1 => max,
            2 => 0,
            3 => -1,
            _ => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                min + (x % ((max - min + 1) as u64)) as i64
            }
        })
        .collect()
}
