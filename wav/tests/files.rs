//! WAV/RF64 files checked by reference readers: sox and the `flac` tool (which
//! reads WAV and RF64 input), and by our own reader.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use rakkr_wav::*;

fn spec(channels: u16, bits: u8) -> WavSpec {
    WavSpec {
        channels,
        bits_per_sample: bits,
        sample_rate: 48_000,
        software: "rakkr-test".into(),
        tags: vec![
            ("RAKKR_NODE".into(), "studio-a".into()),
            ("RAKKR_CHANNELS".into(), "kick,snare".into()),
        ],
        sync_every_frames: 24_000,
        always_rf64: false,
    }
}

/// Deterministic full-range samples (extremes included).
fn audio(channels: u16, bits: u8, frames: usize, seed: u64) -> Vec<i32> {
    let (min, max) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
    let mut x = seed | 1;
    (0..frames * usize::from(channels))
        .map(|i| match i % 101 {
            0 => min as i32,
            1 => max as i32,
            _ => {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (min + (x % ((max - min + 1) as u64)) as i64) as i32
            }
        })
        .collect()
}

fn write(path: &Path, spec: &WavSpec, samples: &[i32]) -> WavSummary {
    let chunk = 1000 * usize::from(spec.channels);
    write_file(
        path,
        spec,
        |w| {
            for c in samples.chunks(chunk) {
                w.write(c)?;
            }
            Ok(())
        },
        |frames| vec![("RAKKR_FRAMES".into(), frames.to_string())],
    )
    .unwrap()
    .1
}

fn read_ours(path: &Path) -> Vec<i32> {
    let mut r = WavReader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(b) = r.next_block().unwrap() {
        out.extend_from_slice(b);
    }
    out
}

fn raw_to_samples(raw: &[u8], width: usize) -> Vec<i32> {
    raw.chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 4];
            b[4 - width..].copy_from_slice(c);
            i32::from_le_bytes(b) >> (32 - 8 * width)
        })
        .collect()
}

/// sox decodes the file to raw little-endian samples of the same width.
fn read_sox(path: &Path, bits: u8) -> Vec<i32> {
    let out = Command::new("sox")
        .arg(path)
        .args(["-t", "raw", "-e", "signed-integer", "-b", &bits.to_string()])
        .args(["-L", "-"])
        .output()
        .expect("run sox (package sox)");
    assert!(
        out.status.success(),
        "sox: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    raw_to_samples(&out.stdout, usize::from(bits / 8))
}

/// `flac` encodes the WAV/RF64 file (its own parser) and decodes it back.
fn read_flac_tool(path: &Path, dir: &Path, bits: u8) -> Vec<i32> {
    let flac = dir.join("via.flac");
    let _ = std::fs::remove_file(&flac);
    // Our multichannel files declare no speaker layout (channel mask 0), which
    // flac accepts only when told to.
    let enc = Command::new("flac")
        .args(["-s", "-0", "--channel-map=none", "-o"])
        .arg(&flac)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        enc.status.success(),
        "flac refused the file: {}",
        String::from_utf8_lossy(&enc.stderr)
    );
    let dec = Command::new("flac")
        .args(["-d", "-c", "-s", "--force-raw-format", "--endian=little"])
        .arg("--sign=signed")
        .arg(&flac)
        .output()
        .unwrap();
    assert!(dec.status.success());
    raw_to_samples(&dec.stdout, usize::from(bits / 8))
}

#[test]
fn files_read_back_exactly_in_sox_flac_and_our_reader() {
    let dir = tempfile::tempdir().unwrap();
    // 3 ch × 24-bit × an odd number of frames: odd-sized audio, so a pad byte.
    for (channels, bits) in [
        (1u16, 16u8),
        (2, 16),
        (2, 24),
        (3, 24),
        (8, 24),
        (12, 24),
        (2, 32),
    ] {
        let samples = audio(
            channels,
            bits,
            30_011,
            u64::from(channels) * 7 + u64::from(bits),
        );
        let path = dir.path().join(format!("{channels}ch{bits}.wav"));
        let summary = write(&path, &spec(channels, bits), &samples);
        assert_eq!(summary.frames, 30_011);
        let width = usize::from(bits / 8);
        let data = (samples.len() * width) as u64;
        assert_eq!(
            summary.bytes,
            DATA_START + data + data % 2,
            "header area plus audio (plus the RIFF pad byte), nothing else"
        );
        let riff_size = u32::from_le_bytes(std::fs::read(&path).unwrap()[4..8].try_into().unwrap());
        assert_eq!(
            u64::from(riff_size) + 8,
            summary.bytes,
            "RIFF size matches the file"
        );
        assert!(
            read_ours(&path) == samples,
            "{channels} ch {bits} bit: ours"
        );
        assert!(
            read_sox(&path, bits) == samples,
            "{channels} ch {bits} bit: sox"
        );
        // flac 1.4 carries at most 8 channels and reads 16/24/32-bit input.
        if channels <= 8 {
            assert!(
                read_flac_tool(&path, dir.path(), bits) == samples,
                "{channels} ch {bits} bit: flac"
            );
        }
        let r = WavReader::open(&path).unwrap();
        let h = r.header();
        assert_eq!(
            (
                h.format.channels,
                h.format.bits_per_sample,
                h.format.sample_rate
            ),
            (channels, u16::from(bits), 48_000)
        );
        assert!(!h.rf64);
        assert_eq!(h.software.as_deref(), Some("rakkr-test"));
        let tag = |k: &str| {
            h.tags
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(tag("RAKKR_NODE").as_deref(), Some("studio-a"));
        assert_eq!(tag("RAKKR_FRAMES").as_deref(), Some("30011"), "final tags");
        let report = recover(&path).unwrap();
        assert!(report.already_complete, "{report:?}");
    }
}

#[test]
fn an_interrupted_file_is_valid_and_recovers_every_whole_frame() {
    // What SIGKILL leaves: the audio written so far, sizes from the last sync.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.wav");
    let snapshot = dir.path().join("snapshot.wav");
    let samples = audio(4, 24, 96_000, 3);
    let s = WavSpec {
        sync_every_frames: 10_000,
        ..spec(4, 24)
    };
    write_file(
        &path,
        &s,
        |w| {
            for (i, c) in samples.chunks(4 * 960).enumerate() {
                w.write(c)?;
                if i == 70 {
                    std::fs::copy(&path, &snapshot).unwrap();
                }
            }
            Ok(())
        },
        |_| Vec::new(),
    )
    .unwrap();
    let written = 71 * 960;
    // Unrecovered, readers already see everything up to the last sync.
    let before = read_sox(&snapshot, 24);
    assert!(before.len() >= 60_000 * 4 && before[..] == samples[..before.len()]);
    // Recovered: every frame written, and a torn partial frame is cut.
    let mut torn = std::fs::read(&snapshot).unwrap();
    torn.extend_from_slice(&[1, 2, 3, 4, 5]);
    std::fs::write(&snapshot, &torn).unwrap();
    let report = recover(&snapshot).unwrap();
    assert_eq!(
        (report.frames, report.bytes_cut),
        (written, 5),
        "{report:?}"
    );
    let after = read_sox(&snapshot, 24);
    assert!(after[..] == samples[..written as usize * 4]);
    assert!(recover(&snapshot).unwrap().already_complete, "idempotent");
}

#[test]
fn beyond_4_gib_the_header_becomes_rf64_and_readers_follow_it() {
    // A sparse file: a real 4 GiB+ data chunk without writing 4 GiB. The audio
    // is zeros except a known head and tail, which the readers must find.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.wav");
    let head = audio(2, 16, 1000, 9);
    write(&path, &spec(2, 16), &head);
    let frames_total: u64 = (1 << 30) + 12_345; // 4 GiB + 49 KiB at 4 bytes per frame
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let end = DATA_START + frames_total * 4;
    file.set_len(end).unwrap();
    let tail: Vec<u8> = [7i16, -7, 300, -300]
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    file.write_all_at(&tail, end - 8).unwrap();
    drop(file);

    let report = recover(&path).unwrap();
    assert_eq!(report.frames, frames_total);
    let mut head_bytes = [0u8; 64];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut head_bytes, 0)
        .unwrap();
    assert_eq!(&head_bytes[0..4], b"RF64");
    assert_eq!(&head_bytes[12..16], b"ds64");

    let mut r = WavReader::open(&path).unwrap();
    assert!(r.header().rf64);
    assert_eq!(r.header().data_bytes, Some(frames_total * 4));
    let first = r.next_block().unwrap().unwrap().to_vec();
    assert_eq!(first[..2000], head[..]);
}

#[test]
fn rf64_on_request_is_read_by_sox_and_flac() {
    // The RF64 layout itself, checked by reference readers on a small file
    // (sox takes a minute to walk a 4 GiB one).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rf64.wav");
    let samples = audio(6, 24, 20_000, 11);
    let spec = WavSpec {
        always_rf64: true,
        ..spec(6, 24)
    };
    write(&path, &spec, &samples);
    let r = WavReader::open(&path).unwrap();
    assert!(r.header().rf64);
    assert_eq!(r.header().data_bytes, Some(20_000 * 6 * 3));
    assert!(read_ours(&path) == samples);
    assert!(read_sox(&path, 24) == samples, "sox");
    assert!(read_flac_tool(&path, dir.path(), 24) == samples, "flac");
    assert!(recover(&path).unwrap().already_complete, "stays RF64");
}

#[test]
fn bad_specs_and_bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.wav");
    for (s, expect) in [(spec(0, 16), "0 channels"), (spec(2, 20), "20-bit")] {
        let e = write_file(&p, &s, |_| Ok(()), |_| Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{e}");
    }
    write(&p, &spec(1, 16), &[1, 2, 3]);
    let e = write_file(&p, &spec(1, 16), |_| Ok(()), |_| Vec::new()).unwrap_err();
    assert!(e.to_string().contains("exists"), "never overwrite: {e}");

    let junk = dir.path().join("junk.wav");
    std::fs::write(&junk, b"fLaC\0\0\0\0").unwrap();
    assert!(matches!(recover(&junk), Err(WavError::NotWav { .. })));
    let e = WavReader::open(&junk).err().unwrap().to_string();
    assert!(e.contains("RIFF"), "{e}");

    let odd = dir.path().join("odd.wav");
    let e = write_file(&odd, &spec(2, 16), |w| w.write(&[1, 2, 3]), |_| Vec::new());
    assert!(e.unwrap_err().to_string().contains("not whole frames"));
    assert_eq!(
        read_sox(&odd, 16),
        Vec::<i32>::new(),
        "the file is still valid"
    );
}
