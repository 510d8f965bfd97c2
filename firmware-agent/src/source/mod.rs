//! Capture sources: where audio enters the agent.
//!
//! A source delivers interleaved `i32` samples with the valid bits
//! left-justified (see [`crate::meter`]), one period per [`CaptureSource::read`].
//! `read` blocks until a period is available, at the source's own pace: a
//! hardware device by its clock, the synthetic source by the system clock.

pub mod synthetic;

pub use synthetic::{Signal, SyntheticSource};

/// What a source delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFormat {
    pub sample_rate: u32,
    pub channels: u16,
    /// Resolution of the samples (16, 24 or 32), left-justified in the `i32`.
    pub valid_bits: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture buffer holds {got} samples; a period needs {need}")]
    BufferTooSmall { got: usize, need: usize },
    #[error("capture device failed: {0}")]
    Device(String),
}

pub trait CaptureSource: Send + 'static {
    fn format(&self) -> StreamFormat;

    /// Frames in one period; `read` fills `period_frames * channels` samples.
    fn period_frames(&self) -> usize;

    /// Block until the next period is available and write it to `buf`.
    /// Returns the number of frames written. Must not allocate.
    fn read(&mut self, buf: &mut [i32]) -> Result<usize, CaptureError>;

    /// Short name for status and logs, e.g. `synthetic`.
    fn kind(&self) -> &'static str;
}
