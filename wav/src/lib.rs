//! Crash-safe WAV and RF64 recording files (integer PCM, 16/24/32-bit, any
//! channel count up to 65535 — WAV is the profile for captures wider than
//! FLAC's 8 channels).
//!
//! ## On-disk format
//! ```text
//! 0      "RIFF" size "WAVE"       ("RF64" 0xFFFFFFFF "WAVE" beyond 4 GiB)
//! 12     JUNK, 28 bytes           (becomes ds64: 64-bit RIFF size, data size, frames)
//! 48     fmt                      PCM (≤ 2 ch, 16-bit) or WAVE_FORMAT_EXTENSIBLE
//! …      LIST/INFO                ISFT = software, ICMT = our tags as KEY=VALUE lines
//! …      JUNK                     room to rewrite LIST at the end without moving audio
//! 65528  "data" size
//! 65536  audio, little-endian, interleaved
//! ```
//! The RIFF → RF64 switch follows EBU Tech 3306: a file that stays below 4 GiB
//! is a plain WAV any tool reads; a larger one is RF64 (sox, ffmpeg, flac,
//! DAWs read it). [`WavSpec::always_rf64`] writes RF64 from the start.
//!
//! ## Crash safety
//! - The header (with data size 0) is written and made durable (file and
//!   directory fsync) before any audio.
//! - Audio goes to the file with each write (no user-space buffer), so SIGKILL
//!   loses nothing that was handed to [`WavWriting::write`].
//! - Every [`WavSpec::sync_every_frames`] the header's sizes are updated to the
//!   audio written so far, then `fdatasync`: after power loss the file is a
//!   valid WAV of at least everything up to the last sync, even unrecovered.
//! - [`recover`] makes any interrupted file complete: it keeps every whole
//!   frame on disk, cuts a torn partial frame, and writes the true sizes.
//!
//! Invariant: a file written by [`write_file`] and finished normally, or passed
//! through [`recover`], is a valid WAV/RF64 whose data chunk holds exactly the
//! samples given (or, after a crash, every whole frame that reached the disk).

mod format;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use format::{DATA_SIZE_OFFSET, SIZES_LEN, header, info_list, metadata_region, patch_sizes};
pub use format::{DATA_START, ParsedHeader, WavFormat, parse_header};

#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("unsupported stream: {0}")]
    Unsupported(String),
    #[error("{path} is not a WAV file we can read: {detail}")]
    NotWav { path: String, detail: String },
    #[error("{0}")]
    Input(String),
}

impl WavError {
    fn io(path: &Path, source: std::io::Error) -> WavError {
        WavError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What to write.
#[derive(Debug, Clone, PartialEq)]
pub struct WavSpec {
    pub channels: u16,
    /// 16, 24 or 32.
    pub bits_per_sample: u8,
    pub sample_rate: u32,
    /// Shown as ISFT (the writing software).
    pub software: String,
    pub tags: Vec<(String, String)>,
    /// Update the header's sizes and `fdatasync` after at least this many frames.
    pub sync_every_frames: u64,
    /// Write RF64 from the start instead of switching at 4 GiB (for archives
    /// that want one layout for every file).
    pub always_rf64: bool,
}

impl WavSpec {
    fn format(&self) -> Result<WavFormat, WavError> {
        let bad = |m: String| Err(WavError::Unsupported(m));
        if self.channels == 0 {
            return bad("0 channels".into());
        }
        if !matches!(self.bits_per_sample, 16 | 24 | 32) {
            return bad(format!(
                "{}-bit samples; use 16, 24 or 32",
                self.bits_per_sample
            ));
        }
        if self.sample_rate == 0 {
            return bad("sample rate 0 Hz".into());
        }
        Ok(WavFormat {
            channels: self.channels,
            sample_rate: self.sample_rate,
            bits_per_sample: u16::from(self.bits_per_sample),
        })
    }
}

/// A finished file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavSummary {
    /// Samples per channel.
    pub frames: u64,
    /// Bytes of the whole file.
    pub bytes: u64,
}

/// An open file, handed to the body of [`write_file`].
pub struct WavWriting<'w> {
    file: &'w File,
    path: &'w Path,
    format: WavFormat,
    sync_every_frames: u64,
    always_rf64: bool,
    /// The first [`DATA_START`] bytes, for size updates.
    header: Vec<u8>,
    bytes: Vec<u8>,
    frames: u64,
    since_sync: u64,
}

impl WavWriting<'_> {
    /// Write interleaved samples, right-justified (a 24-bit sample is in
    /// −2²³..2²³). A trailing partial frame is an error.
    pub fn write(&mut self, interleaved: &[i32]) -> Result<(), WavError> {
        let channels = usize::from(self.format.channels);
        if !interleaved.len().is_multiple_of(channels) {
            return Err(WavError::Input(format!(
                "{} samples are not whole frames of {channels} channels",
                interleaved.len()
            )));
        }
        let width = self.format.bytes_per_sample();
        self.bytes.clear();
        self.bytes.reserve(interleaved.len() * width);
        for s in interleaved {
            self.bytes.extend_from_slice(&s.to_le_bytes()[..width]);
        }
        let mut f = self.file;
        f.write_all(&self.bytes)
            .map_err(|e| WavError::io(self.path, e))?;
        let frames = (interleaved.len() / channels) as u64;
        self.frames += frames;
        self.since_sync += frames;
        if self.since_sync >= self.sync_every_frames {
            self.sync()?;
        }
        Ok(())
    }

    /// Record the sizes of everything written so far in the header, and make
    /// it all durable.
    pub fn sync(&mut self) -> Result<(), WavError> {
        self.since_sync = 0;
        self.write_sizes()?;
        self.file
            .sync_data()
            .map_err(|e| WavError::io(self.path, e))
    }

    /// Frames (samples per channel) written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    fn write_sizes(&mut self) -> Result<(), WavError> {
        let data_bytes = self.frames * self.format.block_align() as u64;
        patch_sizes(&mut self.header, data_bytes, self.frames, self.always_rf64);
        // Only the size fields change: the RIFF/ds64 sizes and the data size.
        let p = self.path;
        self.file
            .write_all_at(&self.header[..SIZES_LEN], 0)
            .and_then(|()| {
                self.file.write_all_at(
                    &self.header[DATA_SIZE_OFFSET as usize..DATA_START as usize],
                    DATA_SIZE_OFFSET,
                )
            })
            .map_err(|e| WavError::io(p, e))
    }
}

/// Create `path` (it must not exist), write what `body` writes, finish the file
/// (sizes, final tags) and make it durable.
///
/// `final_tags` gets the frames written and returns tags to add at the end
/// (e.g. the gap list); they replace the opening tags if they fit in the
/// header area. If `body` fails, the file is still finished with what reached
/// the disk, and the error is returned.
pub fn write_file<T>(
    path: &Path,
    spec: &WavSpec,
    body: impl FnOnce(&mut WavWriting<'_>) -> Result<T, WavError>,
    final_tags: impl FnOnce(u64) -> Vec<(String, String)>,
) -> Result<(T, WavSummary), WavError> {
    let format = spec.format()?;
    let list = info_list(&spec.software, &spec.tags);
    let header = header(&format, &list, spec.always_rf64).ok_or_else(|| {
        WavError::Unsupported(format!(
            "{} bytes of tags do not fit in the {DATA_START}-byte header",
            list.len()
        ))
    })?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| WavError::io(path, e))?;
    let written = (&file).write_all(&header).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(WavError::io(path, e));
    }
    sync_dir(path)?;
    let mut writing = WavWriting {
        file: &file,
        path,
        format,
        sync_every_frames: spec.sync_every_frames.max(1),
        always_rf64: spec.always_rf64,
        header,
        bytes: Vec::new(),
        frames: 0,
        since_sync: 0,
    };
    let value = match body(&mut writing) {
        Ok(value) => value,
        Err(e) => {
            // A failed write (e.g. disk full) may have left a partial frame:
            // finish the file with what reached the disk, then report.
            recover(path)?;
            return Err(e);
        }
    };
    writing.write_sizes()?;
    let frames = writing.frames;
    // RIFF chunks are word-aligned: odd-sized audio gets a pad byte, which the
    // RIFF size already counts.
    let data_bytes = frames * format.block_align() as u64;
    if data_bytes % 2 == 1 {
        (&file).write_all(&[0]).map_err(|e| WavError::io(path, e))?;
    }
    let mut tags = spec.tags.clone();
    tags.extend(final_tags(frames));
    let final_list = info_list(&spec.software, &tags);
    let region_start = (SIZES_LEN + 8 + format.fmt_payload().len()) as u64;
    let region_len = (DATA_START - 8 - region_start) as usize;
    if let Some(region) = metadata_region(region_len, &final_list) {
        file.write_all_at(&region, region_start)
            .map_err(|e| WavError::io(path, e))?;
    }
    file.sync_all().map_err(|e| WavError::io(path, e))?;
    let bytes = file.metadata().map_err(|e| WavError::io(path, e))?.len();
    Ok((value, WavSummary { frames, bytes }))
}

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavRecovery {
    /// Samples per channel in the recovered file.
    pub frames: u64,
    /// Bytes of a torn partial frame removed.
    pub bytes_cut: u64,
    /// The header already stated the right sizes and nothing was cut.
    pub already_complete: bool,
}

fn read_parsed(file: &File, path: &Path) -> Result<(ParsedHeader, u64), WavError> {
    let len = file.metadata().map_err(|e| WavError::io(path, e))?.len();
    let mut head = vec![0u8; len.min(1 << 20) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| WavError::io(path, e))?;
    let parsed = parse_header(&head).map_err(|detail| WavError::NotWav {
        path: path.display().to_string(),
        detail,
    })?;
    Ok((parsed, len))
}

/// Make an interrupted (or any) file we wrote complete: keep every whole frame
/// on disk, cut a torn partial frame, write the true sizes. Idempotent.
pub fn recover(path: &Path) -> Result<WavRecovery, WavError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| WavError::io(path, e))?;
    let (parsed, len) = read_parsed(&file, path)?;
    if parsed.data_start != DATA_START {
        return Err(WavError::NotWav {
            path: path.display().to_string(),
            detail: "not written by rakkr (unexpected data offset)".into(),
        });
    }
    let align = parsed.format.block_align() as u64;
    let on_disk = len.saturating_sub(DATA_START);
    let frames = on_disk / align;
    let data_bytes = frames * align;
    // After odd-sized audio comes the RIFF pad byte; anything else is torn.
    let pad = data_bytes % 2;
    let tail = on_disk - data_bytes;
    let bytes_cut = tail.saturating_sub(pad);
    let already_complete = tail == pad && parsed.data_bytes == Some(data_bytes);
    if !already_complete {
        if tail != pad {
            // Cuts a torn frame, or adds the missing pad byte (as zero).
            file.set_len(DATA_START + data_bytes + pad)
                .map_err(|e| WavError::io(path, e))?;
        }
        let mut head = vec![0u8; DATA_START as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| WavError::io(path, e))?;
        // A file that is RF64 stays RF64 (it may have been asked for).
        patch_sizes(&mut head, data_bytes, frames, parsed.rf64);
        file.write_all_at(&head[..SIZES_LEN], 0)
            .and_then(|()| file.write_all_at(&head[DATA_SIZE_OFFSET as usize..], DATA_SIZE_OFFSET))
            .and_then(|()| file.sync_all())
            .map_err(|e| WavError::io(path, e))?;
    }
    Ok(WavRecovery {
        frames,
        bytes_cut,
        already_complete,
    })
}

/// Reads a WAV/RF64 file block by block, as right-justified `i32`s. A file
/// whose header size is unknown or larger than the file is read to its last
/// whole frame.
pub struct WavReader {
    file: File,
    parsed: ParsedHeader,
    position: u64,
    end: u64,
    bytes: Vec<u8>,
    block: Vec<i32>,
    path: String,
}

impl WavReader {
    pub fn open(path: &Path) -> Result<WavReader, WavError> {
        let file = File::open(path).map_err(|e| WavError::io(path, e))?;
        let (parsed, len) = read_parsed(&file, path)?;
        let on_disk = len.saturating_sub(parsed.data_start);
        let data = parsed.data_bytes.map_or(on_disk, |d| d.min(on_disk));
        let align = parsed.format.block_align() as u64;
        Ok(WavReader {
            position: parsed.data_start,
            end: parsed.data_start + data / align * align,
            file,
            parsed,
            bytes: Vec::new(),
            block: Vec::new(),
            path: path.display().to_string(),
        })
    }

    pub fn header(&self) -> &ParsedHeader {
        &self.parsed
    }

    /// The next block (up to 4096 frames) of interleaved samples, or `None` at
    /// the end of the data.
    pub fn next_block(&mut self) -> Result<Option<&[i32]>, WavError> {
        let align = self.parsed.format.block_align() as u64;
        let n = (self.end - self.position).min(4096 * align) as usize;
        if n == 0 {
            return Ok(None);
        }
        self.bytes.resize(n, 0);
        self.file
            .read_exact_at(&mut self.bytes, self.position)
            .map_err(|e| WavError::Io {
                path: self.path.clone(),
                source: e,
            })?;
        self.position += n as u64;
        let width = self.parsed.format.bytes_per_sample();
        let shift = 32 - 8 * width as u32;
        self.block.clear();
        self.block.extend(self.bytes.chunks_exact(width).map(|c| {
            let mut b = [0u8; 4];
            b[4 - width..].copy_from_slice(c);
            i32::from_le_bytes(b) >> shift
        }));
        Ok(Some(&self.block))
    }
}

/// fsync the directory holding `path`, so its entry survives power loss.
fn sync_dir(path: &Path) -> Result<(), WavError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WavError::io(dir, e))
}
