//! ALSA capture.
//!
//! Opening negotiates access (interleaved read), sample format, channels, rate,
//! period and buffer size, and reports what the device granted
//! ([`Granted`]). Rate, format and channel count must be granted exactly — a
//! recorder that silently records something other than what was asked for has
//! lost the take; period and buffer sizes are negotiated to the nearest value.
//!
//! Reading: one `snd_pcm_readi` per period into a byte buffer allocated at open,
//! converted in place into the caller's `i32` buffer (see [`super::format`]). An
//! overrun (`-EPIPE`) is counted, the stream is re-prepared, and the next period
//! is returned flagged `xrun_before` so the pipeline records a gap at that
//! position. A suspended stream (`-ESTRPIPE`) is recovered the same way.
//! Anything else (device gone, I/O error) is returned as an error.
//!
//! Timestamps: the stream is asked for CLOCK_MONOTONIC status timestamps. The
//! trigger timestamp of the first start is the capture time of frame 0
//! ([`CaptureSource::first_frame_time`]). At an overrun the status gives the
//! time the stream stopped and the frames captured but never read (discarded
//! by the re-prepare); at the restart, the new trigger timestamp. The gap is
//! `unread + (restart − stop) × rate` frames, from the device's own clock
//! rather than from when our thread happened to run. Plugins that do not
//! move the trigger timestamp at an overrun (alsa-lib's ioplug, e.g. JACK)
//! leave the length to the capture loop's estimate.

use alsa::device_name::HintIter;
use alsa::pcm::{Access, Format, HwParams, PCM, TstampType};
use alsa::{Direction, ValueOr};

use super::format::SampleFormat;
use super::{CaptureError, CaptureSource, PeriodRead, StreamFormat};

const EPIPE: i32 = 32;
const ESTRPIPE: i32 = 86;
const EINTR: i32 = 4;
const EAGAIN: i32 = 11;

/// What to ask the device for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlsaRequest {
    /// PCM name, e.g. `hw:1,0`, `plughw:CARD=USB,DEV=0`, `default`.
    pub device: String,
    pub channels: u16,
    pub rate: u32,
    pub format: SampleFormat,
    pub period_frames: u32,
    /// Buffer size in periods.
    pub periods: u32,
}

/// What the device granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub channels: u16,
    pub rate: u32,
    pub format: SampleFormat,
    pub period_frames: usize,
    pub buffer_frames: usize,
}

pub struct AlsaSource {
    /// `None` only between closing a lost device and opening it again.
    pcm: Option<PCM>,
    /// How long a read may wait before the device counts as lost.
    stall_limit_ms: u32,
    /// When the last wait for audio returned.
    woke: Option<std::time::Instant>,
    request: AlsaRequest,
    device: String,
    granted: Granted,
    bytes: Vec<u8>,
    xruns: u64,
    /// Trigger timestamp of the first start: frame 0's capture time.
    first_frame: Option<std::time::Duration>,
    /// Trigger timestamp of the current run's start.
    run_started: Option<std::time::Duration>,
    /// At an overrun: when the stream stopped and the frames it discarded.
    overrun: Option<(std::time::Duration, u64)>,
}

/// Frames an overrun cost: those captured but never read (the re-prepare
/// discards them) plus those the device would have captured while stopped.
fn overrun_loss(
    unread: u64,
    stopped: std::time::Duration,
    restarted: std::time::Duration,
    rate: u32,
) -> u64 {
    let stopped_for = restarted.saturating_sub(stopped).as_nanos();
    unread + (stopped_for * u128::from(rate) / 1_000_000_000) as u64
}

fn timespec_duration(t: libc::timespec) -> Option<std::time::Duration> {
    let (secs, nanos) = (
        u64::try_from(t.tv_sec).ok()?,
        u32::try_from(t.tv_nsec).ok()?,
    );
    (secs > 0 || nanos > 0).then(|| std::time::Duration::new(secs, nanos))
}

impl std::fmt::Debug for AlsaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlsaSource")
            .field("device", &self.device)
            .field("granted", &self.granted)
            .field("xruns", &self.xruns)
            .finish()
    }
}

fn alsa_format(f: SampleFormat) -> Format {
    match f {
        SampleFormat::S16Le => Format::S16LE,
        SampleFormat::S24_3Le => Format::S243LE,
        SampleFormat::S24Le => Format::S24LE,
        SampleFormat::S32Le => Format::S32LE,
        SampleFormat::FloatLe => Format::FloatLE,
    }
}

fn device_error(device: &str, what: &str, e: alsa::Error) -> CaptureError {
    CaptureError::Device(format!("{device}: {what}: {e}"))
}

impl AlsaSource {
    pub fn open(req: &AlsaRequest) -> Result<AlsaSource, CaptureError> {
        let dev = req.device.as_str();
        let pcm = PCM::new(dev, Direction::Capture, false).map_err(|e| CaptureError::Open {
            device: dev.to_owned(),
            detail: e.to_string(),
        })?;
        {
            let hw =
                HwParams::any(&pcm).map_err(|e| device_error(dev, "no hardware parameters", e))?;
            hw.set_access(Access::RWInterleaved)
                .map_err(|e| device_error(dev, "interleaved access refused", e))?;
            if hw.set_format(alsa_format(req.format)).is_err() {
                let offered: Vec<&str> = SampleFormat::ALL
                    .into_iter()
                    .filter(|f| hw.test_format(alsa_format(*f)).is_ok())
                    .map(SampleFormat::name)
                    .collect();
                return Err(CaptureError::Unsupported(format!(
                    "{dev} does not capture {}; it offers {}",
                    req.format,
                    if offered.is_empty() {
                        "none of S16_LE, S24_3LE, S24_LE, S32_LE, FLOAT_LE".to_owned()
                    } else {
                        offered.join(", ")
                    }
                )));
            }
            if hw.set_channels(u32::from(req.channels)).is_err() {
                let (min, max) = (
                    hw.get_channels_min().unwrap_or(0),
                    hw.get_channels_max().unwrap_or(0),
                );
                return Err(CaptureError::Unsupported(format!(
                    "{dev} cannot capture {} channels; it offers {min} to {max}",
                    req.channels
                )));
            }
            if hw.set_rate(req.rate, ValueOr::Nearest).is_err() {
                let (min, max) = (
                    hw.get_rate_min().unwrap_or(0),
                    hw.get_rate_max().unwrap_or(0),
                );
                return Err(CaptureError::Unsupported(format!(
                    "{dev} cannot capture at {} Hz; it offers {min} to {max} Hz",
                    req.rate
                )));
            }
            hw.set_period_size_near(i64::from(req.period_frames), ValueOr::Nearest)
                .map_err(|e| device_error(dev, "period size refused", e))?;
            hw.set_buffer_size_near(i64::from(req.period_frames) * i64::from(req.periods.max(2)))
                .map_err(|e| device_error(dev, "buffer size refused", e))?;
            pcm.hw_params(&hw)
                .map_err(|e| device_error(dev, "hardware parameters refused", e))?;
        }
        let granted = {
            let hw = pcm
                .hw_params_current()
                .map_err(|e| device_error(dev, "cannot read granted parameters", e))?;
            let get = |r: alsa::Result<u32>| {
                r.map_err(|e| device_error(dev, "cannot read granted parameters", e))
            };
            let channels = get(hw.get_channels())?;
            let rate = get(hw.get_rate())?;
            let period = hw
                .get_period_size()
                .map_err(|e| device_error(dev, "period size", e))?;
            let buffer = hw
                .get_buffer_size()
                .map_err(|e| device_error(dev, "buffer size", e))?;
            Granted {
                channels: channels as u16,
                rate,
                format: req.format,
                period_frames: period.max(1) as usize,
                buffer_frames: buffer.max(1) as usize,
            }
        };
        if granted.channels != req.channels || granted.rate != req.rate {
            return Err(CaptureError::Unsupported(format!(
                "{dev} granted {} channels at {} Hz instead of {} at {} Hz",
                granted.channels, granted.rate, req.channels, req.rate
            )));
        }
        // Monotonic status timestamps, where the device offers them (best effort:
        // without them, gap lengths and the start time are estimated).
        if let Ok(sw) = pcm.sw_params_current() {
            let _ = sw
                .set_tstamp_mode(true)
                .and_then(|()| sw.set_tstamp_type(TstampType::Monotonic))
                .and_then(|()| pcm.sw_params(&sw));
        }
        pcm.prepare()
            .map_err(|e| device_error(dev, "cannot prepare", e))?;
        let bytes = vec![
            0u8;
            granted.period_frames
                * usize::from(granted.channels)
                * granted.format.bytes_per_sample()
        ];
        // Ten periods, and at least a second: far beyond any healthy delay.
        let stall_limit_ms = (granted.period_frames as u64 * 10_000
            / u64::from(granted.rate.max(1)))
        .max(1000) as u32;
        Ok(AlsaSource {
            pcm: Some(pcm),
            stall_limit_ms,
            woke: None,
            request: req.clone(),
            device: dev.to_owned(),
            granted,
            bytes,
            xruns: 0,
            first_frame: None,
            run_started: None,
            overrun: None,
        })
    }

    pub fn granted(&self) -> Granted {
        self.granted
    }

    pub fn xruns(&self) -> u64 {
        self.xruns
    }
}

impl CaptureSource for AlsaSource {
    fn format(&self) -> StreamFormat {
        StreamFormat {
            sample_rate: self.granted.rate,
            channels: self.granted.channels,
            valid_bits: self.granted.format.valid_bits(),
        }
    }

    fn period_frames(&self) -> usize {
        self.granted.period_frames
    }

    fn kind(&self) -> &'static str {
        "alsa"
    }

    fn last_wakeup(&self) -> Option<std::time::Instant> {
        self.woke
    }

    fn first_frame_time(&self) -> Option<std::time::Duration> {
        self.first_frame
    }

    fn reopen(&mut self) -> Result<(), CaptureError> {
        // Close the lost device first: some (JACK clients) cannot reconnect
        // while the dead connection is still open.
        self.pcm = None;
        self.overrun = None;
        self.run_started = None;
        let fresh = AlsaSource::open(&self.request)?;
        if fresh.granted.format != self.granted.format
            || fresh.granted.period_frames > self.granted.period_frames
        {
            return Err(CaptureError::Unsupported(format!(
                "{} came back with {:?} instead of {:?}",
                self.device, fresh.granted, self.granted
            )));
        }
        self.pcm = fresh.pcm;
        Ok(())
    }

    fn read(&mut self, buf: &mut [i32]) -> Result<PeriodRead, CaptureError> {
        let channels = usize::from(self.granted.channels);
        super::period_samples(buf, self.granted.period_frames, self.granted.channels)?;
        let Some(pcm) = self.pcm.as_ref() else {
            return Err(CaptureError::Device(format!("{} is closed", self.device)));
        };
        let mut xrun_before = false;
        let mut lost_frames = None;
        loop {
            // A capture stream that is prepared (just opened, or just recovered
            // from an overrun) delivers nothing until started.
            if pcm.state() == alsa::pcm::State::Prepared {
                pcm.start()
                    .map_err(|e| device_error(&self.device, "cannot start", e))?;
                // A status read fills a stack buffer: no allocation.
                let started = pcm
                    .status()
                    .ok()
                    .and_then(|st| timespec_duration(st.get_trigger_htstamp()));
                if let (Some((stopped, unread)), Some(restarted)) = (self.overrun.take(), started) {
                    // Several overruns before one successful read add up.
                    let loss = overrun_loss(unread, stopped, restarted, self.granted.rate);
                    lost_frames = Some(lost_frames.unwrap_or(0) + loss);
                }
                self.first_frame = self.first_frame.or(started);
                self.run_started = started;
            }
            // Wait with a deadline: some devices (a JACK server that died, a USB
            // interface mid-unplug) never wake a blocked read again.
            match pcm.wait(Some(self.stall_limit_ms)) {
                Ok(true) => self.woke = Some(std::time::Instant::now()),
                Ok(false) => {
                    return Err(CaptureError::Device(format!(
                        "{}: no audio for {} ms",
                        self.device, self.stall_limit_ms
                    )));
                }
                Err(e) if matches!(e.errno(), EPIPE | ESTRPIPE) => {}
                Err(e) if matches!(e.errno(), EINTR | EAGAIN) => continue,
                Err(e) => return Err(device_error(&self.device, "wait failed", e)),
            }
            match pcm.io_bytes().readi(&mut self.bytes) {
                Ok(frames) => {
                    let samples = frames * channels;
                    let width = self.granted.format.bytes_per_sample();
                    self.granted
                        .format
                        .decode(&self.bytes[..samples * width], &mut buf[..samples]);
                    return Ok(PeriodRead {
                        frames,
                        xrun_before,
                        lost_frames: lost_frames.filter(|_| xrun_before),
                    });
                }
                Err(e) => match e.errno() {
                    EPIPE | ESTRPIPE => {
                        self.xruns += 1;
                        xrun_before = true;
                        // The stream stopped at the status's trigger time — if the
                        // device moved it past the run's start (see module docs).
                        self.overrun = pcm.status().ok().and_then(|st| {
                            let stopped = timespec_duration(st.get_trigger_htstamp())?;
                            let unread = u64::try_from(st.get_avail()).ok()?;
                            (Some(stopped) > self.run_started).then_some((stopped, unread))
                        });
                        pcm.recover(e.errno(), true).map_err(|e| {
                            device_error(&self.device, "cannot recover from overrun", e)
                        })?;
                    }
                    EINTR | EAGAIN => {}
                    _ => return Err(device_error(&self.device, "read failed", e)),
                },
            }
        }
    }
}

/// A capture device as `rakkr-agent devices` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub description: String,
    /// `None` when the device could not be opened to probe it (busy, absent).
    pub capabilities: Option<DeviceCapabilities>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCapabilities {
    pub channels: (u32, u32),
    pub rates: (u32, u32),
    pub formats: Vec<SampleFormat>,
}

/// Probe one PCM for what it can capture. Opens it non-blocking and closes it.
pub fn probe(device: &str) -> Result<DeviceCapabilities, CaptureError> {
    let pcm = PCM::new(device, Direction::Capture, true).map_err(|e| CaptureError::Open {
        device: device.to_owned(),
        detail: e.to_string(),
    })?;
    let hw = HwParams::any(&pcm).map_err(|e| device_error(device, "no hardware parameters", e))?;
    Ok(DeviceCapabilities {
        channels: (
            hw.get_channels_min().unwrap_or(0),
            hw.get_channels_max().unwrap_or(0),
        ),
        rates: (
            hw.get_rate_min().unwrap_or(0),
            hw.get_rate_max().unwrap_or(0),
        ),
        formats: SampleFormat::ALL
            .into_iter()
            .filter(|f| hw.test_format(alsa_format(*f)).is_ok())
            .collect(),
    })
}

/// Every PCM that alsa-lib's configuration names for capture (name and
/// description), without opening any.
pub fn capture_device_names() -> Result<Vec<(String, String)>, CaptureError> {
    let hints = HintIter::new_str(None, "pcm")
        .map_err(|e| CaptureError::Device(format!("cannot list devices: {e}")))?;
    Ok(hints
        .filter(|hint| hint.direction != Some(Direction::Playback))
        .filter_map(|hint| {
            let description = hint.desc.unwrap_or_default().replace('\n', " — ");
            Some((hint.name?, description))
        })
        .collect())
}

/// Every PCM that alsa-lib's configuration names for capture, probed.
pub fn list_capture_devices() -> Result<Vec<DeviceInfo>, CaptureError> {
    Ok(capture_device_names()?
        .into_iter()
        .map(|(name, description)| DeviceInfo {
            capabilities: probe(&name).ok(),
            name,
            description,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_overrun_costs_the_unread_buffer_plus_the_time_stopped() {
        let at = |ms| Duration::from_millis(ms);
        // 4096 frames discarded, stopped for 250 ms at 48 kHz: 12,000 more.
        assert_eq!(overrun_loss(4096, at(1000), at(1250), 48_000), 16_096);
        // Restarted in the same instant (or a clock that did not move): the buffer only.
        assert_eq!(overrun_loss(4096, at(1000), at(1000), 96_000), 4096);
        assert_eq!(overrun_loss(0, at(1000), at(900), 48_000), 0);
    }

    #[test]
    fn zero_timestamps_mean_none() {
        let ts = |s, ns| libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        };
        assert_eq!(timespec_duration(ts(0, 0)), None);
        assert_eq!(timespec_duration(ts(12, 5)), Some(Duration::new(12, 5)));
    }
}
