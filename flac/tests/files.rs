//! FLAC files checked by the reference tools (`flac -t`, `flac -d`), by claxon (an
//! independent decoder, 16/24-bit) and by our own libFLAC reader.

use std::path::Path;
use std::process::Command;

use rakkr_flac::*;

fn spec(channels: u8, bits: u8) -> StreamSpec {
    StreamSpec {
        channels,
        bits_per_sample: bits,
        sample_rate: 48_000,
        compression_level: 5,
        comments: VorbisComments {
            vendor: "rakkr-test".into(),
            tags: vec![
                ("RAKKR_NODE".into(), "studio-a".into()),
                ("RAKKR_CHANNELS".into(), "kick,snare".into()),
            ],
        },
        sync_every_frames: 24_000,
    }
}

/// Deterministic audio: a tone plus noise, full range used, per channel.
fn audio(channels: u8, bits: u8, frames: usize, seed: u64) -> Vec<i32> {
    let max = (1i64 << (bits - 1)) - 1;
    let mut x = seed | 1;
    (0..frames * usize::from(channels))
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = (i / usize::from(channels)) as f64 / 48_000.0;
            let tone = (t * 440.0 * std::f64::consts::TAU).sin() * 0.5;
            let noise = ((x % 2001) as f64 - 1000.0) / 1000.0 * 0.1;
            let v = ((tone + noise) * max as f64) as i64;
            let v = match i {
                _ if i % 9973 == 0 => max,
                _ if i % 9967 == 0 => -max - 1,
                _ => v.clamp(-max - 1, max),
            };
            v as i32
        })
        .collect()
}

fn flac_test(path: &Path) -> (bool, String) {
    let out = Command::new("flac")
        .args(["-t", "--silent"])
        .arg(path)
        .output()
        .expect("run flac");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn decode_claxon(path: &Path) -> Vec<i32> {
    let mut r = claxon::FlacReader::open(path).unwrap();
    r.samples().map(Result::unwrap).collect()
}

fn decode_ours(path: &Path) -> Vec<i32> {
    let mut r = FlacReader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(block) = r.next_block().unwrap() {
        out.extend_from_slice(block);
    }
    out
}

/// Hands out a file's bytes a few at a time (as a growing upload does),
/// then fails instead of ending when `fail_at` is reached.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    fail_at: Option<usize>,
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.fail_at.is_some_and(|f| self.at >= f) {
            return Err(std::io::Error::other("the link broke"));
        }
        let end = self.bytes.len().min(self.fail_at.unwrap_or(usize::MAX));
        // Uneven pieces, never more than 1,021 bytes.
        let n = buf.len().min(end - self.at).min(1 + self.at % 1_021);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn decode_streamed(path: &Path, fail_at: Option<usize>) -> Result<Vec<i32>, FlacError> {
    let source = Trickle {
        bytes: std::fs::read(path).unwrap(),
        at: 0,
        fail_at,
    };
    let mut r = FlacReader::from_read("trickle", source)?;
    let mut out = Vec::new();
    while let Some(block) = r.next_block()? {
        out.extend_from_slice(block);
    }
    Ok(out)
}

fn decode_reference(path: &Path, bits: u8) -> Vec<i32> {
    let out = Command::new("flac")
        .args([
            "-d",
            "-c",
            "--silent",
            "--force-raw-format",
            "--endian=little",
            "--sign=signed",
        ])
        .arg(path)
        .output()
        .expect("run flac -d");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let width = usize::from(bits / 8);
    out.stdout
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 4];
            b[4 - width..].copy_from_slice(c);
            i32::from_le_bytes(b) >> (32 - 8 * width)
        })
        .collect()
}

fn write(path: &Path, spec: &StreamSpec, samples: &[i32], chunk_frames: usize) -> FileSummary {
    let chunk = chunk_frames * usize::from(spec.channels);
    let ((), summary) = encode_file(
        path,
        spec,
        |enc| {
            for c in samples.chunks(chunk) {
                enc.write(c)?;
            }
            Ok(())
        },
        |frames| vec![("RAKKR_FRAMES".into(), frames.to_string())],
    )
    .unwrap();
    summary
}

#[test]
fn files_pass_flac_t_and_decode_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for (channels, bits) in [
        (1u8, 16u8),
        (2, 16),
        (2, 24),
        (8, 24),
        (5, 16),
        (2, 32),
        (8, 32),
    ] {
        let samples = audio(
            channels,
            bits,
            100_003,
            u64::from(channels) * 31 + u64::from(bits),
        );
        let path = dir.path().join(format!("{channels}ch{bits}.flac"));
        let spec = spec(channels, bits);
        let summary = write(&path, &spec, &samples, 1000);
        assert_eq!(summary.frames, 100_003);

        let (ok, err) = flac_test(&path);
        assert!(ok, "{channels} ch {bits} bit: flac -t failed: {err}");
        // claxon 0.4 stops at 24 bits.
        assert!(
            bits > 24 || decode_claxon(&path) == samples,
            "{channels} ch {bits} bit: claxon differs"
        );
        assert!(
            decode_ours(&path) == samples,
            "{channels} ch {bits} bit: FlacReader differs"
        );
        assert!(
            decode_streamed(&path, None).unwrap() == samples,
            "{channels} ch {bits} bit: FlacReader::from_read differs"
        );
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        for fail_at in [10, len / 2] {
            let broken = decode_streamed(&path, Some(fail_at))
                .err()
                .map(|e| e.to_string());
            assert!(
                broken
                    .as_deref()
                    .is_some_and(|e| e.contains("the link broke")),
                "{channels} ch {bits} bit, source failing at {fail_at}: {broken:?}"
            );
        }
        assert!(
            decode_reference(&path, bits) == samples,
            "{channels} ch {bits} bit: flac -d differs"
        );

        let (info, comments) = read_stream_info(&path).unwrap();
        assert_eq!(
            (info.channels, info.bits_per_sample, info.sample_rate),
            (channels, bits, 48_000)
        );
        assert_eq!(info.total_samples, 100_003);
        assert_eq!(info.md5, summary.md5);
        assert_eq!(comments.get("RAKKR_NODE"), Some("studio-a"));
        assert_eq!(
            comments.get("RAKKR_FRAMES"),
            Some("100003"),
            "final tags are written"
        );
        // PCM-sized input compresses; never larger than the raw samples.
        assert!(summary.bytes < (samples.len() * usize::from(bits / 8)) as u64 + 20_000);

        let report = recover(&path).unwrap();
        assert!(report.already_complete, "{report:?}");
        assert_eq!(report.samples, 100_003);
    }
}

#[test]
fn truncated_files_are_recovered_to_their_intact_frames() {
    for bits in [24u8, 32] {
        truncated_files_recover(bits);
    }
}

fn truncated_files_recover(bits: u8) {
    let dir = tempfile::tempdir().unwrap();
    let channels = 2u8;
    let samples = audio(channels, bits, 240_000, 7);
    let whole = dir.path().join("whole.flac");
    write(&whole, &spec(channels, bits), &samples, 4800);
    let bytes = std::fs::read(&whole).unwrap();
    let audio_start = audio_offset(&whole).unwrap() as usize;
    let mut x: u64 = 12345 + u64::from(bits);
    for round in 0..15 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let cut = audio_start + (x >> 33) as usize % (bytes.len() - audio_start);
        let path = dir.path().join(format!("cut{round}.flac"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let report = recover(&path).unwrap();
        let (ok, err) = flac_test(&path);
        assert!(ok, "cut at {cut}: flac -t failed after recovery: {err}");
        let decoded = decode_reference(&path, bits);
        assert!(decoded == decode_ours(&path));
        let n = decoded.len();
        assert_eq!(n as u64, report.samples * u64::from(channels));
        assert!(
            decoded[..] == samples[..n],
            "cut at {cut}: recovered audio differs"
        );
        // Lost at most the torn frame (libFLAC's block: 4096 samples at level 5).
        let kept_fraction = cut as f64 / bytes.len() as f64;
        let expected_min = (kept_fraction * 240_000.0) as u64;
        assert!(
            report.samples + 4096 + 4096 >= expected_min,
            "cut at {cut}: kept {report:?}"
        );
        assert!(
            recover(&path).unwrap().already_complete,
            "recovery is idempotent"
        );
    }
}

#[test]
fn a_file_copied_mid_recording_recovers_all_but_the_last_block() {
    // What SIGKILL leaves: everything written so far is in the file, nothing is finished.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.flac");
    let snapshot = dir.path().join("snapshot.flac");
    let samples = audio(8, 24, 96_000, 3);
    let s = spec(8, 24);
    encode_file(
        &path,
        &s,
        |enc| {
            for (i, c) in samples.chunks(8 * 960).enumerate() {
                enc.write(c)?;
                if i == 70 {
                    std::fs::copy(&path, &snapshot).unwrap();
                }
            }
            Ok(())
        },
        |_| Vec::new(),
    )
    .unwrap();
    let report = recover(&snapshot).unwrap();
    assert!(flac_test(&snapshot).0);
    let written = 71 * 960;
    assert!(
        report.samples <= written && report.samples + 4096 >= written,
        "{report:?}"
    );
    let decoded = decode_claxon(&snapshot);
    assert!(decoded[..] == samples[..decoded.len()]);
}

#[test]
fn a_corrupt_frame_cuts_the_file_there_and_keeps_what_precedes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.flac");
    let samples = audio(2, 16, 48_000, 5);
    write(&path, &spec(2, 16), &samples, 4800);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let report = recover(&path).unwrap();
    assert!(
        report.bytes_cut > 0 && report.samples > 20_000 && report.samples < 48_000,
        "{report:?}"
    );
    assert!(flac_test(&path).0);
}

#[test]
fn bad_specs_and_bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.flac");
    for (s, expect) in [
        (spec(9, 16), "9 channels"),
        (spec(2, 8), "8-bit"),
        (spec(2, 20), "20-bit"),
    ] {
        let e = encode_file(&p, &s, |_| Ok(()), |_| Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "{e}");
    }
    write(&p, &spec(1, 16), &[1, 2, 3], 10);
    let e = encode_file(&p, &spec(1, 16), |_| Ok(()), |_| Vec::new()).unwrap_err();
    assert!(
        e.to_string().contains("exists"),
        "never overwrite a recording: {e}"
    );

    let junk = dir.path().join("junk.flac");
    std::fs::write(&junk, b"RIFF....WAVE").unwrap();
    assert!(matches!(recover(&junk), Err(FlacError::NotFlac { .. })));
    std::fs::write(&junk, b"fLaC\x00\x00").unwrap();
    assert!(matches!(recover(&junk), Err(FlacError::NotFlac { .. })));
    // Cut inside the header: there is no audio to keep, and it says so.
    let whole = std::fs::read(&p).unwrap();
    std::fs::write(&junk, &whole[..100]).unwrap();
    let e = recover(&junk).unwrap_err().to_string();
    assert!(e.contains("header is incomplete"), "{e}");
    let odd = dir.path().join("odd.flac");
    let e = encode_file(
        &odd,
        &spec(2, 16),
        |enc| enc.write(&[1, 2, 3]),
        |_| Vec::new(),
    );
    assert!(e.unwrap_err().to_string().contains("not whole frames"));
    assert!(flac_test(&odd).0, "the file is still finished");
}

/// A `Read` that claims more bytes than it was given.
struct Boastful;

impl std::io::Read for Boastful {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(buf.len() + 1)
    }
}

#[test]
fn a_source_claiming_more_than_its_buffer_is_refused() {
    let refused = FlacReader::from_read("boastful", Boastful)
        .err()
        .map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("claimed")),
        "{refused:?}"
    );
}
