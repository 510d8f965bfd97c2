//! Shared by the agent's integration tests: ALSA test devices and test signals.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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

/// A JACK server with the dummy backend (2 in, 2 out, 48 kHz, 1024-frame
/// periods): real-time pacing for alsa-lib's jack plugin.
pub struct Jack {
    child: Child,
}

impl Jack {
    pub fn start(name: &str) -> Jack {
        // JACK servers starting at the same moment (parallel test processes)
        // race on JACK's shared registry and one fails: start them one at a time.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("rakkr-jackd-start.lock"))
            .unwrap();
        lock.lock().unwrap();
        let child = Command::new("jackd")
            .args([
                "-n",
                name,
                "--no-realtime",
                "-d",
                "dummy",
                "-r",
                "48000",
                "-p",
                "1024",
                "-C",
                "2",
                "-P",
                "2",
            ])
            .env("JACK_NO_AUDIO_RESERVATION", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start jackd (package jackd2)");
        let up = Command::new("jack_wait")
            .args(["-s", name, "-w", "-t", "10"])
            .output()
            .unwrap();
        assert!(up.status.success(), "jackd did not come up");
        Jack { child }
    }

    /// SIGTERM, so the server removes its sockets and can be started again.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Jack {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let _ = self.child.wait();
        }
    }
}
