//! Real ALSA capture, bit-exact: alsa-lib's `file` plugin replays a raw file as a
//! capture device, and what `AlsaSource` delivers must equal the file's samples.
//!
//! One test function for all formats: alsa-lib reads its configuration once per
//! process, from `ALSA_CONFIG_PATH`, which must be set before the first PCM opens.
#![allow(unsafe_code)] // std::env::set_var, before any other thread exists

use std::path::Path;

use rakkr_agent::source::alsa::{AlsaRequest, AlsaSource, probe};
use rakkr_agent::source::{CaptureError, CaptureSource, SampleFormat};

mod common;
use common::{alsa_config, full_range_samples};

const CHANNELS: u16 = 8;
const RATE: u32 = 48_000;
const PERIOD: u32 = 1024;
const PERIODS_READ: usize = 40;
const FILE_FRAMES: usize = (PERIODS_READ + 8) * PERIOD as usize;

fn raw_bytes(format: SampleFormat, samples: &[i64]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|&s| match format {
            SampleFormat::S16Le => (s as i16).to_le_bytes().to_vec(),
            SampleFormat::S24_3Le => (s as i32).to_le_bytes()[..3].to_vec(),
            SampleFormat::S32Le => (s as i32).to_le_bytes().to_vec(),
            _ => unreachable!(),
        })
        .collect()
}

fn write_config(dir: &Path, formats: &[SampleFormat]) -> String {
    // A device that only captures integer samples (the linear plugin has no float path).
    let integer_only =
        "pcm.integer_only {\n type linear\n slave { pcm \"null\" format S16_LE }\n}\n";
    let files: Vec<(String, std::path::PathBuf)> = formats
        .iter()
        .map(|f| {
            (
                format!("replay_{}", f.name()),
                dir.join(format!("in_{}.raw", f.name())),
            )
        })
        .collect();
    let pcms: Vec<(&str, &Path)> = files
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    alsa_config(dir, integer_only, &pcms).display().to_string()
}

#[test]
fn file_plugin_capture_is_bit_exact_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let formats = [
        SampleFormat::S16Le,
        SampleFormat::S24_3Le,
        SampleFormat::S32Le,
    ];
    let top = write_config(dir.path(), &formats);
    // SAFETY: the first statement that touches the environment in this process;
    // no other thread runs yet, and alsa-lib reads the variable on first use.
    unsafe { std::env::set_var("ALSA_CONFIG_PATH", top) };

    for format in formats {
        let bits = u32::from(format.valid_bits());
        let samples = full_range_samples(
            bits,
            FILE_FRAMES * usize::from(CHANNELS),
            0x9E37_79B9_7F4A_7C15,
        );
        std::fs::write(
            dir.path().join(format!("in_{}.raw", format.name())),
            raw_bytes(format, &samples),
        )
        .unwrap();

        let request = AlsaRequest {
            device: format!("replay_{}", format.name()),
            channels: CHANNELS,
            rate: RATE,
            format,
            period_frames: PERIOD,
            periods: 4,
        };
        let mut source = AlsaSource::open(&request).unwrap_or_else(|e| panic!("{format}: {e}"));
        let granted = source.granted();
        assert_eq!(
            (granted.channels, granted.rate, granted.format),
            (CHANNELS, RATE, format)
        );
        assert_eq!(source.format().valid_bits, format.valid_bits());

        let mut buf = vec![0i32; source.period_frames() * usize::from(CHANNELS)];
        let mut captured: Vec<i64> = Vec::new();
        while captured.len() < PERIODS_READ * PERIOD as usize * usize::from(CHANNELS) {
            let read = source.read(&mut buf).unwrap();
            assert!(!read.xrun_before, "{format}: no overruns without pacing");
            captured.extend(
                buf[..read.frames * usize::from(CHANNELS)]
                    .iter()
                    .map(|&s| i64::from(s >> (32 - bits))),
            );
        }
        assert_eq!(source.xruns(), 0);
        let n = captured.len();
        assert!(
            captured == samples[..n],
            "{format}: captured samples differ from the file"
        );
    }

    // The device exists but cannot do what is asked: clear, specific errors.
    let base = AlsaRequest {
        device: "replay_S16_LE".into(),
        channels: CHANNELS,
        rate: RATE,
        format: SampleFormat::S16Le,
        period_frames: PERIOD,
        periods: 4,
    };
    let e = AlsaSource::open(&AlsaRequest {
        device: "no_such_pcm".into(),
        ..base.clone()
    })
    .unwrap_err();
    assert!(
        matches!(e, CaptureError::Open { .. }) && e.to_string().contains("no_such_pcm"),
        "{e}"
    );
    let e = AlsaSource::open(&AlsaRequest {
        device: "integer_only".into(),
        format: SampleFormat::FloatLe,
        ..base.clone()
    })
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CaptureError::Unsupported(_)), "{msg}");
    assert!(
        msg.contains("does not capture FLOAT_LE") && msg.contains("S16_LE, S24_3LE"),
        "{msg}"
    );
    let caps = probe("null").unwrap();
    assert!(caps.formats.contains(&SampleFormat::S24_3Le));
    assert!(probe("no_such_pcm").is_err());
}
