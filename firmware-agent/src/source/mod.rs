//! Capture sources: where audio enters the agent.
//!
//! A source delivers interleaved `i32` samples with the valid bits
//! left-justified (see [`crate::meter`]), one period per [`CaptureSource::read`].
//! `read` blocks until a period is available, at the source's own pace: a
//! hardware device by its clock, the synthetic source by the system clock.

pub mod alsa;
pub mod file;
pub mod format;
pub mod synthetic;

pub use file::FileSource;
pub use format::SampleFormat;
pub use synthetic::{Signal, SyntheticSource};

/// What a source delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFormat {
    pub sample_rate: u32,
    pub channels: u16,
    /// Resolution of the samples (16, 24 or 32), left-justified in the `i32`.
    pub valid_bits: u8,
}

/// One period read from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodRead {
    /// Frames written to the buffer.
    pub frames: usize,
    /// The device overran (or was suspended) before these frames: there is a
    /// gap in the audio just before them.
    pub xrun_before: bool,
    /// With `xrun_before`: the frames the device lost, from its own timestamps
    /// (`None`: the source cannot tell; the capture loop estimates).
    pub lost_frames: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open capture device {device}: {detail}")]
    Open { device: String, detail: String },
    #[error("unsupported capture settings: {0}")]
    Unsupported(String),
    #[error("capture buffer holds {got} samples; a period needs {need}")]
    BufferTooSmall { got: usize, need: usize },
    #[error("capture device failed: {0}")]
    Device(String),
    #[error("a {0} source cannot be reopened")]
    NotReopenable(&'static str),
    /// A finite source (a file) has delivered everything: capture ends cleanly.
    #[error("the source has ended")]
    EndOfStream,
}

/// Periods a second the default period gives: about 12 (85 ms at 48 kHz), as
/// few wake-ups as a recorder needs (arecord's default is 8) while meters at
/// 10 Hz still see about one period per frame.
const DEFAULT_PERIODS_PER_SECOND: u32 = 12;

/// The default device period for `sample_rate`: a power of two near
/// 1/12 s (4,096 frames at 44.1 and 48 kHz, 8,192 at 96 kHz), within the
/// 16–16,384 frames every source accepts. Fewer, larger reads cost less CPU
/// (see docs/benchmarks.md); the rings are sized in time, so memory does not grow.
pub fn default_period_frames(sample_rate: u32) -> u32 {
    (sample_rate / DEFAULT_PERIODS_PER_SECOND)
        .clamp(16, 16_384)
        .next_power_of_two()
        .min(16_384)
}

/// The samples one period of `period_frames` × `channels` needs, or the error
/// a source returns when `buf` cannot hold them.
pub fn period_samples(
    buf: &[i32],
    period_frames: usize,
    channels: u16,
) -> Result<usize, CaptureError> {
    let need = period_frames * usize::from(channels);
    if buf.len() < need {
        return Err(CaptureError::BufferTooSmall {
            got: buf.len(),
            need,
        });
    }
    Ok(need)
}

/// Releases periods at the sample clock's pace, measured by the system clock:
/// frame `n` is released at `start + n / rate`. Deadline based, so the average
/// rate does not drift with scheduling jitter. For sources without a clock of
/// their own (synthetic, file).
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    start: Option<std::time::Instant>,
}

impl Pacer {
    pub fn new(sample_rate: u32) -> Pacer {
        Pacer {
            rate: u64::from(sample_rate.max(1)),
            start: None,
        }
    }

    /// Sleep until the first `frames` frames (counted from the first call) are due.
    pub fn wait_for(&mut self, frames: u64) {
        let start = *self.start.get_or_insert_with(std::time::Instant::now);
        let due = start + std::time::Duration::from_nanos(frames * 1_000_000_000 / self.rate);
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

pub trait CaptureSource: Send + 'static {
    fn format(&self) -> StreamFormat;

    /// Frames in one period; `read` fills `period_frames * channels` samples.
    fn period_frames(&self) -> usize;

    /// Block until the next period is available and write it to `buf`.
    /// Must not allocate.
    fn read(&mut self, buf: &mut [i32]) -> Result<PeriodRead, CaptureError>;

    /// After `read` failed (device unplugged, server gone): try to open the
    /// device again with the same format. Sources that cannot come back return
    /// the error. May allocate: it runs only while the device is lost.
    fn reopen(&mut self) -> Result<(), CaptureError> {
        Err(CaptureError::NotReopenable(self.kind()))
    }

    /// Short name for status and logs, e.g. `synthetic`.
    fn kind(&self) -> &'static str;

    /// When the last `read` woke up because audio was ready (before copying it),
    /// for measuring wake-up-to-push latency. `None` if the source cannot tell.
    fn last_wakeup(&self) -> Option<std::time::Instant> {
        None
    }

    /// When the first frame was captured, as CLOCK_MONOTONIC time, if the
    /// device timestamps it (ALSA's trigger timestamp when the stream started).
    /// Meaningful after the first successful `read`. `None`: the capture loop
    /// estimates from the time the first period arrived.
    fn first_frame_time(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::default_period_frames;

    #[test]
    fn the_default_period_is_about_a_twelfth_of_a_second() {
        for (rate, frames) in [
            (8_000, 1_024),
            (16_000, 2_048),
            (44_100, 4_096),
            (48_000, 4_096),
            (96_000, 8_192),
            (192_000, 16_384),
            (384_000, 16_384),
            (1, 16),
        ] {
            assert_eq!(default_period_frames(rate), frames, "{rate} Hz");
        }
    }
}
