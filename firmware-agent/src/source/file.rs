//! A file as a capture source: a FLAC or WAV/RF64 recording replayed through
//! the whole engine, paced in real time like a device (or as fast as read).
//! For tests and hardware-in-the-loop runs with known audio.
//!
//! The file is decoded when opened (bounded by [`MAX_FILE_SAMPLES`]), so
//! `read` only copies from memory: no allocation, no file IO on the capture
//! thread. At the end of the file `read` reports [`CaptureError::EndOfStream`]
//! and capture ends cleanly; the last period may be short.

use std::path::Path;

use super::{CaptureError, CaptureSource, Pacer, PeriodRead, StreamFormat};

/// The longest file a file source takes: 256 Mi samples (1 GiB in memory;
/// e.g. 46 minutes of 2 ch at 48 kHz).
pub const MAX_FILE_SAMPLES: usize = 256 << 20;

#[derive(Debug)]
pub struct FileSource {
    /// Left-justified, interleaved.
    samples: Vec<i32>,
    format: StreamFormat,
    period_frames: usize,
    /// Frames delivered.
    position: usize,
    pacer: Option<Pacer>,
}

impl FileSource {
    /// Decode `path` (FLAC or WAV/RF64, told apart by content).
    pub fn open(path: &Path, period_frames: usize) -> Result<FileSource, CaptureError> {
        let fail = |detail: String| CaptureError::Open {
            device: format!("file:{}", path.display()),
            detail,
        };
        let mut magic = [0u8; 4];
        std::io::Read::read_exact(
            &mut std::fs::File::open(path).map_err(|e| fail(e.to_string()))?,
            &mut magic,
        )
        .map_err(|e| fail(format!("cannot read the signature: {e}")))?;
        let mut samples = Vec::new();
        let mut take = |block: &[i32]| {
            if samples.len() + block.len() > MAX_FILE_SAMPLES {
                return Err(fail(format!(
                    "longer than a file source takes ({MAX_FILE_SAMPLES} samples)"
                )));
            }
            samples.extend_from_slice(block);
            Ok(())
        };
        let (channels, rate, bits) = match &magic {
            b"fLaC" => {
                let mut r = rakkr_flac::FlacReader::open(path).map_err(|e| fail(e.to_string()))?;
                let f = r.format();
                while let Some(block) = r.next_block().map_err(|e| fail(e.to_string()))? {
                    take(block)?;
                }
                (u16::from(f.channels), f.sample_rate, f.bits_per_sample)
            }
            b"RIFF" | b"RF64" => {
                let mut r = rakkr_wav::WavReader::open(path).map_err(|e| fail(e.to_string()))?;
                let f = r.header().format;
                while let Some(block) = r.next_block().map_err(|e| fail(e.to_string()))? {
                    take(block)?;
                }
                (f.channels, f.sample_rate, f.bits_per_sample as u8)
            }
            _ => return Err(fail("neither FLAC nor WAV".into())),
        };
        let shift = 32 - u32::from(bits);
        for s in &mut samples {
            *s <<= shift;
        }
        Ok(FileSource {
            samples,
            format: StreamFormat {
                sample_rate: rate,
                channels,
                valid_bits: bits,
            },
            period_frames: period_frames.max(1),
            position: 0,
            pacer: Some(Pacer::new(rate)),
        })
    }

    /// Deliver periods as fast as they are read.
    pub fn unpaced(mut self) -> Self {
        self.pacer = None;
        self
    }

    /// Frames in the file.
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.format.channels).max(1)
    }
}

impl CaptureSource for FileSource {
    fn format(&self) -> StreamFormat {
        self.format
    }

    fn period_frames(&self) -> usize {
        self.period_frames
    }

    fn kind(&self) -> &'static str {
        "file"
    }

    fn read(&mut self, buf: &mut [i32]) -> Result<PeriodRead, CaptureError> {
        let channels = usize::from(self.format.channels);
        super::period_samples(buf, self.period_frames, self.format.channels)?;
        let frames = self.period_frames.min(self.frames() - self.position);
        if frames == 0 {
            return Err(CaptureError::EndOfStream);
        }
        if let Some(pacer) = self.pacer.as_mut() {
            pacer.wait_for((self.position + frames) as u64);
        }
        let from = self.position * channels;
        buf[..frames * channels].copy_from_slice(&self.samples[from..from + frames * channels]);
        self.position += frames;
        Ok(PeriodRead {
            frames,
            xrun_before: false,
            lost_frames: None,
        })
    }
}
