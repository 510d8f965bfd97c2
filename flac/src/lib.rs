//! Crash-safe FLAC recording files.
//!
//! Encoding and decoding are libFLAC (1.5, bundled and statically linked through
//! libflac-sys; all FFI lives in `libflac.rs`; see
//! docs/decisions/0008-flac-through-libflac-sys.md). Around it this crate owns the file:
//!
//! ## On-disk format
//! A standard FLAC stream, readable by any decoder:
//!
//! ```text
//! "fLaC"
//! STREAMINFO        34 bytes (from libFLAC; total samples and libFLAC's MD5 patched at the end)
//! VORBIS_COMMENT    our tags (node, job, channel names, start time, gaps, …)
//! PADDING           room to rewrite VORBIS_COMMENT at the end without moving audio
//! frames…           from libFLAC
//! ```
//!
//! ## Crash safety
//! - The header is written in one write and made durable (file and directory
//!   fsync) before any audio, so a file either exists with a complete header or
//!   has no audio to lose.
//! - Frames reach the file as libFLAC produces them (no user-space buffer beyond
//!   libFLAC's one block), so SIGKILL loses at most the block being encoded.
//!   `fdatasync` runs every [`StreamSpec::sync_every_frames`] (default 0.5 s of
//!   audio), bounding what power loss can take.
//! - While recording, STREAMINFO says "length unknown, MD5 unknown" (zeros), which
//!   the format allows. [`recover`] turns any interrupted file into a complete one:
//!   it keeps every frame whose CRC-16 verifies, truncates the torn tail, and
//!   writes the true sample count and MD5 of what survived.
//!
//! Invariant: a file written by [`encode_file`] and finished normally, or passed
//! through [`recover`], passes `flac -t` and decodes to exactly the samples given.

mod format;
mod libflac;
mod recover;
mod writer;

pub use format::{StreamInfo, VorbisComments};
pub use libflac::{FlacReader, StreamFormat};
pub use recover::{RecoveryReport, audio_offset, read_stream_info, recover};
pub use writer::{Encoding, FileSummary, StreamSpec, encode_file};

#[derive(Debug, thiserror::Error)]
pub enum FlacError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("unsupported stream: {0}")]
    Unsupported(String),
    #[error("FLAC encoder failed: {0}")]
    Encoder(String),
    #[error("{path} is not a FLAC file: {detail}")]
    NotFlac { path: String, detail: String },
    #[error("{path}: cannot decode the recovered audio: {detail}")]
    Decode { path: String, detail: String },
}

impl FlacError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> FlacError {
        FlacError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
