//! Waveform previews of received recordings.
//!
//! When a file's upload completes, the server decodes it once (libFLAC for
//! FLAC, our WAV/RF64 reader for WAV) and keeps, for each column of the
//! preview and each channel, the lowest and highest sample ([`Waveform`] in
//! the store). Decoding is also the deepest check the server makes before it
//! confirms: a file with a frame that fails its CRC is refused, and the node
//! keeps its copy and sends it again.
//!
//! Columns: the file's length is not trusted up front (a header may not say),
//! so [`PeakColumns`] summarizes a fixed number of frames per column and,
//! when it holds `2 × MIN_COLUMNS` full columns, merges them pairwise and
//! doubles the frames per column. A preview therefore has between
//! [`MIN_COLUMNS`] and `2 × MIN_COLUMNS` columns (fewer only when the file
//! has fewer frames), in one streaming pass with bounded memory.

use std::path::Path;

use base64::Engine as _;
use rakkr_store::Waveform;

/// A preview has at least this many columns when the file has as many frames.
pub const MIN_COLUMNS: usize = 512;

/// Streaming min/max per column and channel of right-justified samples.
#[derive(Debug)]
pub struct PeakColumns {
    channels: usize,
    bits: u8,
    frames_per_column: u64,
    /// `(min, max)` per column, channel by channel within a column.
    peaks: Vec<(i32, i32)>,
    /// Frames in the last column.
    in_last: u64,
    frames: u64,
}

impl PeakColumns {
    /// `bits`: the samples' valid bits (they lie in −2^(bits−1)…2^(bits−1)−1).
    pub fn new(channels: u16, bits: u8) -> PeakColumns {
        PeakColumns {
            channels: usize::from(channels.max(1)),
            bits: bits.clamp(1, 32),
            frames_per_column: 1,
            peaks: Vec::with_capacity(2 * MIN_COLUMNS * usize::from(channels.max(1))),
            in_last: 0,
            frames: 0,
        }
    }

    /// Add interleaved frames (a trailing partial frame is ignored).
    pub fn push(&mut self, interleaved: &[i32]) {
        let ch = self.channels;
        for frame in interleaved.chunks_exact(ch) {
            if self.peaks.is_empty() || self.in_last == self.frames_per_column {
                if self.peaks.len() == 2 * MIN_COLUMNS * ch {
                    self.halve();
                }
                self.peaks
                    .extend(std::iter::repeat_n((i32::MAX, i32::MIN), ch));
                self.in_last = 0;
            }
            let last = self.peaks.len() - ch;
            for (peak, &s) in self.peaks[last..].iter_mut().zip(frame) {
                peak.0 = peak.0.min(s);
                peak.1 = peak.1.max(s);
            }
            self.in_last += 1;
            self.frames += 1;
        }
    }

    /// Merge neighbouring (full) columns: half as many, twice as long.
    fn halve(&mut self) {
        let ch = self.channels;
        let columns = self.peaks.len() / ch;
        for c in 0..columns / 2 {
            for k in 0..ch {
                let (a, b) = (self.peaks[2 * c * ch + k], self.peaks[(2 * c + 1) * ch + k]);
                self.peaks[c * ch + k] = (a.0.min(b.0), a.1.max(b.1));
            }
        }
        self.peaks.truncate(columns / 2 * ch);
        self.frames_per_column *= 2;
    }

    pub fn finish(self, sample_rate: u32) -> Waveform {
        let full_scale = 1i64 << (self.bits - 1);
        // Round outward: the drawn band covers every sample, and any signal
        // at all shows.
        let low = |v: i32| (i64::from(v) * 127).div_euclid(full_scale).clamp(-127, 127) as i8;
        let high = |v: i32| (-(-i64::from(v) * 127).div_euclid(full_scale)).clamp(-127, 127) as i8;
        let bytes: Vec<u8> = self
            .peaks
            .iter()
            .flat_map(|&(min, max)| [low(min) as u8, high(max) as u8])
            .collect();
        Waveform {
            channels: self.channels as u16,
            sample_rate,
            frames: self.frames,
            frames_per_column: self.frames_per_column,
            peaks: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// The preview's `(min, max)` pairs of one channel, column by column; empty
/// for a channel the preview does not have or a damaged record.
pub fn channel_peaks(waveform: &Waveform, channel: u16) -> Vec<(i8, i8)> {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&waveform.peaks) else {
        return Vec::new();
    };
    let ch = usize::from(waveform.channels.max(1));
    let c = usize::from(channel);
    if c >= ch {
        return Vec::new();
    }
    bytes
        .chunks_exact(2 * ch)
        .map(|column| (column[2 * c] as i8, column[2 * c + 1] as i8))
        .collect()
}

/// Decode `path` (`kind` is `flac` or `wav`) and draw its preview. The error
/// says why the file does not decode.
pub fn of_file(path: &Path, kind: &str) -> Result<Waveform, String> {
    match kind {
        "flac" => of_flac(rakkr_flac::FlacReader::open(path)),
        "wav" => {
            let mut reader = rakkr_wav::WavReader::open(path).map_err(|e| e.to_string())?;
            let format = reader.header().format;
            let bits = u8::try_from(format.bits_per_sample).unwrap_or(32);
            let mut peaks = PeakColumns::new(format.channels, bits);
            while let Some(block) = reader.next_block().map_err(|e| e.to_string())? {
                peaks.push(block);
            }
            Ok(peaks.finish(format.sample_rate))
        }
        other => Err(format!("no decoder for `{other}` files")),
    }
}

/// Decode the FLAC stream `opened` to its end and draw its preview.
pub fn of_flac(
    opened: Result<rakkr_flac::FlacReader, rakkr_flac::FlacError>,
) -> Result<Waveform, String> {
    let mut reader = opened.map_err(|e| e.to_string())?;
    let format = reader.format();
    let mut peaks = PeakColumns::new(u16::from(format.channels), format.bits_per_sample);
    while let Some(block) = reader.next_block().map_err(|e| e.to_string())? {
        peaks.push(block);
    }
    if format.total_samples != 0 && format.total_samples != peaks.frames {
        return Err(format!(
            "its header gives {} frames, its audio has {}",
            format.total_samples, peaks.frames
        ));
    }
    Ok(peaks.finish(format.sample_rate))
}

/// `seconds` of a 2-channel 16-bit 48 kHz tone written to `path` as FLAC
/// (for tests); its interleaved samples.
#[cfg(test)]
pub(crate) fn tone_flac(path: &Path, seconds: u32) -> Vec<i32> {
    let frames: Vec<i32> = (0..seconds * 48_000)
        .flat_map(|i| {
            let s = ((f64::from(i) / 48.0).sin() * 20_000.0) as i32;
            [s, -s / 2]
        })
        .collect();
    let spec = rakkr_flac::StreamSpec {
        channels: 2,
        bits_per_sample: 16,
        sample_rate: 48_000,
        compression_level: 5,
        comments: Default::default(),
        sync_every_frames: 1 << 20,
    };
    rakkr_flac::encode_file(path, &spec, |e| e.write(&frames), |_| Vec::new()).unwrap();
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview(channels: u16, bits: u8, frames: &[Vec<i32>]) -> Waveform {
        let mut p = PeakColumns::new(channels, bits);
        for f in frames {
            p.push(f);
        }
        p.finish(48_000)
    }

    #[test]
    fn a_short_file_has_a_column_per_frame_rounded_outward() {
        let w = preview(2, 16, &[vec![32_767, -32_768, 1, 0, -1, 16_384]]);
        assert_eq!((w.frames, w.frames_per_column), (3, 1));
        assert_eq!(channel_peaks(&w, 0), [(126, 127), (0, 1), (-1, 0)]);
        assert_eq!(channel_peaks(&w, 1), [(-127, -127), (0, 0), (63, 64)]);
        assert!(channel_peaks(&w, 2).is_empty());
    }

    #[test]
    fn columns_stay_between_the_minimum_and_twice_it_whatever_the_length() {
        for frames in [
            MIN_COLUMNS,
            2 * MIN_COLUMNS,
            2 * MIN_COLUMNS + 1,
            100_003,
            1 << 20,
        ] {
            let mut p = PeakColumns::new(1, 24);
            // Pushed in uneven blocks, as decoders hand them out.
            let ramp: Vec<i32> = (0..frames as i32).collect();
            for block in ramp.chunks(4_608) {
                p.push(block);
            }
            let w = p.finish(48_000);
            let columns = channel_peaks(&w, 0).len();
            assert!(
                (MIN_COLUMNS..=2 * MIN_COLUMNS).contains(&columns),
                "{frames} frames: {columns} columns"
            );
            assert_eq!(w.frames, frames as u64);
            assert_eq!(
                (frames as u64).div_ceil(w.frames_per_column),
                columns as u64,
                "every frame is in a column"
            );
        }
    }

    #[test]
    fn merging_keeps_every_extreme() {
        // One spike per channel somewhere in a long file survives the merges.
        let frames = 300_000usize;
        let mut interleaved = vec![0i32; frames * 2];
        interleaved[2 * 123_457] = 8_388_607; // channel 0, 24-bit full scale
        interleaved[2 * 250_001 + 1] = -8_388_608; // channel 1
        let w = preview(2, 24, &[interleaved]);
        let left = channel_peaks(&w, 0);
        let right = channel_peaks(&w, 1);
        let spike = |peaks: &[(i8, i8)]| {
            peaks
                .iter()
                .enumerate()
                .filter(|(_, p)| **p != (0, 0))
                .map(|(i, p)| (i as u64, *p))
                .collect::<Vec<_>>()
        };
        assert_eq!(spike(&left), [(123_457 / w.frames_per_column, (0, 127))]);
        assert_eq!(spike(&right), [(250_001 / w.frames_per_column, (-127, 0))]);
    }

    #[test]
    fn an_empty_file_has_an_empty_preview() {
        let w = preview(2, 16, &[]);
        assert_eq!(w.frames, 0);
        assert!(channel_peaks(&w, 0).is_empty());
    }

    #[test]
    fn flac_and_wav_files_decode_and_a_damaged_frame_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let flac = dir.path().join("t.flac");
        let frames = tone_flac(&flac, 1);
        let w = of_file(&flac, "flac").unwrap();
        assert_eq!((w.channels, w.frames, w.sample_rate), (2, 48_000, 48_000));
        let left = channel_peaks(&w, 0);
        assert!(left.iter().all(|&(lo, hi)| lo >= -78 && hi <= 78));
        // 20000 of 32768 is 77.5 of 127.
        assert!(left.iter().any(|&(_, hi)| hi == 78) && left.iter().any(|&(lo, _)| lo == -78));
        let right = channel_peaks(&w, 1);
        assert!(right.iter().all(|&(lo, hi)| lo >= -39 && hi <= 39));

        let mut bytes = std::fs::read(&flac).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        let damaged = dir.path().join("d.flac");
        std::fs::write(&damaged, bytes).unwrap();
        assert!(
            of_file(&damaged, "flac").is_err(),
            "a CRC failure is refused"
        );

        let wav = dir.path().join("t.wav");
        let spec = rakkr_wav::WavSpec {
            channels: 2,
            bits_per_sample: 16,
            sample_rate: 48_000,
            software: "test".into(),
            tags: Vec::new(),
            sync_every_frames: 1 << 20,
            always_rf64: false,
        };
        rakkr_wav::write_file(&wav, &spec, |w| w.write(&frames), |_| Vec::new()).unwrap();
        assert_eq!(
            of_file(&wav, "wav").unwrap(),
            w,
            "the same audio, the same preview"
        );
    }
}
