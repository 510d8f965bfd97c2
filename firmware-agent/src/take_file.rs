//! The file formats a take is written in — FLAC (rakkr-flac) or WAV/RF64
//! (rakkr-wav) — behind one small interface, so the recording loop is written
//! once. Both are crash-safe in the same way: header durable before audio,
//! periodic `fdatasync`, `.part` files recovered after a crash.

use std::path::{Path, PathBuf};

use rakkr_flac::{FlacError, StreamSpec, VorbisComments};
use rakkr_wav::{WavError, WavSpec};

/// A take's file format (part of a recording profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// FLAC at a libFLAC compression level (0–8); at most 8 channels per file.
    Flac { compression_level: u8 },
    /// Uncompressed WAV, RF64 past 4 GiB (or from the start if asked); any
    /// channel count up to [`MAX_WAV_CHANNELS`].
    Wav { always_rf64: bool },
}

/// The widest WAV take we write (the format allows 65535).
pub const MAX_WAV_CHANNELS: usize = 1024;

impl Codec {
    pub fn max_channels(self) -> usize {
        match self {
            Codec::Flac { .. } => 8,
            Codec::Wav { .. } => MAX_WAV_CHANNELS,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Flac { .. } => "FLAC",
            Codec::Wav { .. } => "WAV",
        }
    }

    /// The codec a file name asks for: `.wav` is WAV, anything else FLAC.
    pub fn for_path(path: &Path, compression_level: u8) -> Codec {
        let wav = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
        if wav {
            Codec::Wav { always_rf64: false }
        } else {
            Codec::Flac { compression_level }
        }
    }
}

/// Either crate's error, with the cause kept.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Flac(#[from] FlacError),
    #[error(transparent)]
    Wav(#[from] WavError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A finished file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Samples per channel.
    pub frames: u64,
    pub bytes: u64,
    /// The audio's MD5 as FLAC's STREAMINFO holds it (WAV has none).
    pub md5: Option<[u8; 16]>,
}

/// What the recording loop writes into: an open file of either format.
pub trait AudioOut {
    type Error;
    /// Interleaved, right-justified samples, whole frames.
    fn write(&mut self, interleaved: &[i32]) -> Result<(), Self::Error>;
    /// Frames written so far.
    fn frames(&self) -> u64;
}

impl AudioOut for rakkr_flac::Encoding<'_> {
    type Error = FlacError;
    fn write(&mut self, interleaved: &[i32]) -> Result<(), FlacError> {
        rakkr_flac::Encoding::write(self, interleaved)
    }
    fn frames(&self) -> u64 {
        rakkr_flac::Encoding::frames(self)
    }
}

impl AudioOut for rakkr_wav::WavWriting<'_> {
    type Error = WavError;
    fn write(&mut self, interleaved: &[i32]) -> Result<(), WavError> {
        rakkr_wav::WavWriting::write(self, interleaved)
    }
    fn frames(&self) -> u64 {
        rakkr_wav::WavWriting::frames(self)
    }
}

/// Everything about a file except its codec.
#[derive(Debug, Clone)]
pub struct FileSpec {
    pub channels: usize,
    pub bits_per_sample: u8,
    pub sample_rate: u32,
    /// The writing software.
    pub vendor: String,
    pub tags: Vec<(String, String)>,
    pub sync_every_frames: u64,
}

/// Something that fills a file: called with the open file of whichever codec.
pub trait FileBody {
    fn fill<O: AudioOut>(&mut self, out: &mut O) -> Result<(), O::Error>;
}

/// Create `path` (it must not exist) in `codec`, let `body` fill it, finish it
/// with `final_tags` (given the frames written). On failure the file is still
/// finished with what reached the disk.
pub fn write_file(
    codec: Codec,
    path: &Path,
    spec: &FileSpec,
    body: &mut impl FileBody,
    final_tags: impl FnOnce(u64) -> Vec<(String, String)>,
) -> Result<FileInfo, FileError> {
    match codec {
        Codec::Flac { compression_level } => {
            let flac = StreamSpec {
                channels: spec.channels as u8,
                bits_per_sample: spec.bits_per_sample,
                sample_rate: spec.sample_rate,
                compression_level,
                comments: VorbisComments {
                    vendor: spec.vendor.clone(),
                    tags: spec.tags.clone(),
                },
                sync_every_frames: spec.sync_every_frames,
            };
            let ((), s) = rakkr_flac::encode_file(path, &flac, |enc| body.fill(enc), final_tags)?;
            Ok(FileInfo {
                frames: s.frames,
                bytes: s.bytes,
                md5: Some(s.md5),
            })
        }
        Codec::Wav { always_rf64 } => {
            let wav = WavSpec {
                channels: spec.channels as u16,
                bits_per_sample: spec.bits_per_sample,
                sample_rate: spec.sample_rate,
                software: spec.vendor.clone(),
                tags: spec.tags.clone(),
                sync_every_frames: spec.sync_every_frames,
                always_rf64,
            };
            let ((), s) = rakkr_wav::write_file(path, &wav, |w| body.fill(w), final_tags)?;
            Ok(FileInfo {
                frames: s.frames,
                bytes: s.bytes,
                md5: None,
            })
        }
    }
}

/// What recovering one interrupted file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Samples per channel kept.
    pub samples: u64,
    /// Bytes of torn tail cut.
    pub bytes_cut: u64,
    pub already_complete: bool,
}

/// Recover an interrupted file of either codec, told apart by its content
/// (the name's extension need not match the codec: `--codec` can differ).
pub fn recover(path: &Path) -> Result<Recovery, FileError> {
    let io = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
        .map_err(io)?;
    let is_wav = read == 4 && (&magic == b"RIFF" || &magic == b"RF64");
    if is_wav {
        let r = rakkr_wav::recover(path)?;
        Ok(Recovery {
            samples: r.frames,
            bytes_cut: r.bytes_cut,
            already_complete: r.already_complete,
        })
    } else {
        let r = rakkr_flac::recover(path)?;
        Ok(Recovery {
            samples: r.samples,
            bytes_cut: r.bytes_cut,
            already_complete: r.already_complete,
        })
    }
}
