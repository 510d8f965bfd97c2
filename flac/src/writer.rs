//! Writing a FLAC file: libFLAC (see `libflac.rs`), with our header and
//! durability around it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::FlacError;
use crate::format::{
    BLOCK_HEADER, STREAMINFO_LEN, StreamInfo, TYPE_PADDING, TYPE_STREAMINFO, TYPE_VORBIS_COMMENT,
    VorbisComments, block_header,
};
use crate::libflac::{EncoderSettings, RawEncoder};

/// Bytes of PADDING after VORBIS_COMMENT: room for tags added at the end
/// (gap lists, final duration) without moving the audio.
pub const PADDING_BYTES: usize = 16 * 1024;

/// What to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// 1 to 8 (the FLAC format's limit).
    pub channels: u8,
    /// 16, 24 or 32. (32-bit streams are outside FLAC's streamable subset;
    /// libFLAC ≥ 1.4 and `flac` ≥ 1.4 read them.)
    pub bits_per_sample: u8,
    pub sample_rate: u32,
    /// libFLAC compression level, 0 (fastest) to 8 (smallest).
    pub compression_level: u8,
    pub comments: VorbisComments,
    /// `fdatasync` after at least this many frames (samples per channel).
    pub sync_every_frames: u64,
}

impl StreamSpec {
    fn check(&self) -> Result<(), FlacError> {
        let bad = |m: String| Err(FlacError::Unsupported(m));
        if !(1..=8).contains(&self.channels) {
            return bad(format!(
                "{} channels; a FLAC stream carries 1 to 8",
                self.channels
            ));
        }
        if !matches!(self.bits_per_sample, 16 | 24 | 32) {
            return bad(format!(
                "{}-bit samples; use 16, 24 or 32",
                self.bits_per_sample
            ));
        }
        if !(1..=655_350).contains(&self.sample_rate) {
            return bad(format!("sample rate {} Hz", self.sample_rate));
        }
        if self.compression_level > 8 {
            return bad(format!(
                "compression level {}; use 0 to 8",
                self.compression_level
            ));
        }
        Ok(())
    }
}

/// The result of a finished file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// Samples per channel.
    pub frames: u64,
    pub md5: [u8; 16],
    pub bytes: u64,
}

/// Where libFLAC's output goes: the header is collected, rewritten with our
/// metadata blocks and written at once; frames pass straight to the file.
struct Sink<'f> {
    file: &'f File,
    /// The last write error: libFLAC only learns "the client failed", so the
    /// cause (e.g. "No space left on device") is kept here for the caller.
    error: Option<std::io::Error>,
    header: Option<Vec<u8>>,
    comments: Vec<u8>,
    /// File offset of our VORBIS_COMMENT block header, once written.
    comment_offset: Option<u64>,
    written: u64,
}

impl Sink<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut f = self.file;
        if let Err(e) = f.write_all(bytes) {
            self.error = Some(std::io::Error::new(e.kind(), e.to_string()));
            return Err(e);
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// If `buf` holds a complete libFLAC header, return its length.
    fn header_len(buf: &[u8]) -> Option<usize> {
        if buf.len() < 4 {
            return None;
        }
        let mut pos = 4;
        loop {
            let h = buf.get(pos..pos + BLOCK_HEADER)?;
            let len = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
            pos += BLOCK_HEADER + len;
            if buf.len() < pos {
                return None;
            }
            if h[0] & 0x80 != 0 {
                return Some(pos);
            }
        }
    }

    fn flush_header(&mut self, libflac_header: &[u8]) -> std::io::Result<()> {
        // libFLAC's header: "fLaC", STREAMINFO first, then its own blocks (a
        // VORBIS_COMMENT with its vendor string). Keep STREAMINFO, replace the rest.
        if libflac_header.get(..4) != Some(b"fLaC") || libflac_header[4] & 0x7F != TYPE_STREAMINFO {
            return Err(std::io::Error::other("libFLAC wrote an unexpected header"));
        }
        let mut out =
            Vec::with_capacity(8 + STREAMINFO_LEN + self.comments.len() + PADDING_BYTES + 8);
        out.extend_from_slice(b"fLaC");
        out.extend_from_slice(&block_header(false, TYPE_STREAMINFO, STREAMINFO_LEN));
        out.extend_from_slice(&libflac_header[8..8 + STREAMINFO_LEN]);
        self.comment_offset = Some(out.len() as u64);
        out.extend_from_slice(&block_header(
            false,
            TYPE_VORBIS_COMMENT,
            self.comments.len(),
        ));
        out.extend_from_slice(&self.comments);
        out.extend_from_slice(&block_header(true, TYPE_PADDING, PADDING_BYTES));
        out.resize(out.len() + PADDING_BYTES, 0);
        self.put(&out)
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.header.as_mut() {
            None => self.put(bytes)?,
            Some(header) => {
                header.extend_from_slice(bytes);
                if let Some(len) = Self::header_len(header) {
                    let collected = self.header.take().unwrap_or_default();
                    self.flush_header(&collected[..len])?;
                    self.put(&collected[len..])?;
                }
            }
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An open encoding, handed to the body of [`encode_file`].
pub struct Encoding<'e> {
    encoder: RawEncoder<Sink<'e>>,
    file: &'e File,
    path: &'e Path,
    spec: &'e StreamSpec,
    frames: u64,
    since_sync: u64,
}

impl Encoding<'_> {
    /// Encode interleaved samples, right-justified (a 24-bit sample is in
    /// −2²³..2²³). A trailing partial frame is an error.
    pub fn write(&mut self, interleaved: &[i32]) -> Result<(), FlacError> {
        let channels = usize::from(self.spec.channels);
        if !interleaved.len().is_multiple_of(channels) {
            return Err(FlacError::Encoder(format!(
                "{} samples are not whole frames of {channels} channels",
                interleaved.len()
            )));
        }
        let frames = (interleaved.len() / channels) as u64;
        // libFLAC takes at most u32::MAX frames per call.
        for chunk in interleaved.chunks(channels * (u32::MAX as usize / channels)) {
            let n = (chunk.len() / channels) as u32;
            if !self.encoder.process_interleaved(chunk, n) {
                return Err(self.failure());
            }
        }
        self.frames += frames;
        self.since_sync += frames;
        if self.since_sync >= self.spec.sync_every_frames {
            self.sync()?;
        }
        Ok(())
    }

    /// Make everything written so far durable.
    pub fn sync(&mut self) -> Result<(), FlacError> {
        self.since_sync = 0;
        self.file
            .sync_data()
            .map_err(|e| FlacError::io(self.path, e))
    }

    /// Frames (samples per channel) accepted so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Why the encoder stopped: the write error behind it if there was one.
    fn failure(&mut self) -> FlacError {
        match &self.encoder.output().error {
            Some(e) => FlacError::io(self.path, std::io::Error::new(e.kind(), e.to_string())),
            None => FlacError::Encoder(self.encoder.state()),
        }
    }
}

/// Create `path` (it must not exist), encode what `body` writes, finish the file
/// (STREAMINFO length and MD5, final tags) and make it durable.
///
/// `final_tags` gets the frames written and returns tags to add at the end
/// (e.g. the gap list); they replace the opening comments if they fit in the
/// padding. If `body` or the encoder fails, the file is still finished with what
/// was encoded, and the error is returned.
pub fn encode_file<T>(
    path: &Path,
    spec: &StreamSpec,
    body: impl FnOnce(&mut Encoding<'_>) -> Result<T, FlacError>,
    final_tags: impl FnOnce(u64) -> Vec<(String, String)>,
) -> Result<(T, FileSummary), FlacError> {
    spec.check()?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| FlacError::io(path, e))?;
    let sink = Sink {
        file: &file,
        error: None,
        header: Some(Vec::new()),
        comments: spec.comments.to_block_payload(),
        comment_offset: None,
        written: 0,
    };
    let settings = EncoderSettings {
        channels: u32::from(spec.channels),
        bits_per_sample: u32::from(spec.bits_per_sample),
        sample_rate: spec.sample_rate,
        compression_level: u32::from(spec.compression_level),
    };
    let mut encoder = RawEncoder::new(&settings, sink)?;
    if let Err(reason) = encoder.init() {
        return Err(match encoder.output().error.take() {
            Some(e) => FlacError::io(path, e),
            None => FlacError::Encoder(format!("cannot start the encoder: {reason}")),
        });
    }
    // The header is on disk now: make it and the directory entry durable.
    file.sync_all().map_err(|e| FlacError::io(path, e))?;
    sync_dir(path)?;
    let mut encoding = Encoding {
        encoder,
        file: &file,
        path,
        spec,
        frames: 0,
        since_sync: 0,
    };
    let result = body(&mut encoding);
    let finished = encoding.encoder.finish();
    let finish_error = finished.is_none().then(|| encoding.failure());
    let Encoding {
        mut encoder,
        frames,
        ..
    } = encoding;
    let write_failed = encoder.output().error.is_some();
    let (comment_offset, written) = (encoder.output().comment_offset, encoder.output().written);
    drop(encoder);
    let finished = match (finished, finish_error) {
        (Some(f), None) if !write_failed && f.total_samples == frames => f,
        (_, error) => {
            // A failed write (e.g. disk full) may have left a torn frame: cut it,
            // and finish the file with what reached the disk intact.
            crate::recover(path)?;
            return Err(match (result, error) {
                (Err(e), _) | (Ok(_), Some(e)) => e,
                (Ok(_), None) => FlacError::Encoder(format!(
                    "libFLAC counted a different number of samples than were given ({frames})"
                )),
            });
        }
    };

    // Patch STREAMINFO with the true length and libFLAC's MD5.
    let mut info = [0u8; STREAMINFO_LEN];
    file.read_exact_at(&mut info, 8)
        .map_err(|e| FlacError::io(path, e))?;
    StreamInfo::patch(&mut info, frames, finished.md5);
    file.write_all_at(&info, 8)
        .map_err(|e| FlacError::io(path, e))?;

    // Final tags, in place of the opening ones, if they fit.
    if let Some(offset) = comment_offset {
        let mut comments = spec.comments.clone();
        comments.tags.extend(final_tags(frames));
        rewrite_comments(
            &file,
            offset,
            spec.comments.to_block_payload().len(),
            &comments,
        )
        .map_err(|e| FlacError::io(path, e))?;
    }
    file.sync_all().map_err(|e| FlacError::io(path, e))?;
    let summary = FileSummary {
        frames,
        md5: finished.md5,
        bytes: written,
    };
    // The body's own error comes after the file is safe.
    result.map(|value| (value, summary))
}

/// Replace the VORBIS_COMMENT block at `offset` (payload `old_len` bytes, then
/// PADDING_BYTES of padding) with `comments`, keeping the total size. Leaves the
/// file untouched when the new comments do not fit.
fn rewrite_comments(
    file: &File,
    offset: u64,
    old_len: usize,
    comments: &VorbisComments,
) -> std::io::Result<bool> {
    let region = BLOCK_HEADER + old_len + BLOCK_HEADER + PADDING_BYTES;
    let payload = comments.to_block_payload();
    let Some(padding) = region.checked_sub(BLOCK_HEADER + payload.len() + BLOCK_HEADER) else {
        return Ok(false);
    };
    let mut out = Vec::with_capacity(region);
    out.extend_from_slice(&block_header(false, TYPE_VORBIS_COMMENT, payload.len()));
    out.extend_from_slice(&payload);
    out.extend_from_slice(&block_header(true, TYPE_PADDING, padding));
    out.resize(region, 0);
    file.write_all_at(&out, offset)?;
    Ok(true)
}

/// fsync the directory holding `path`, so its entry survives power loss.
pub(crate) fn sync_dir(path: &Path) -> Result<(), FlacError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FlacError::io(dir, e))
}
