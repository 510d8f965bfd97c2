//! A deterministic test-signal source, paced in real time.
//!
//! Sample `n` of channel `c` is a pure function of `(signal, seed, c, n)`, so two
//! runs with the same settings produce the same audio; only the pacing depends
//! on the system clock (see [`Pacer`]).

use std::f64::consts::TAU;

use super::{CaptureError, CaptureSource, Pacer, PeriodRead, StreamFormat};

/// Valid bits of synthetic samples: the 24-bit resolution of typical converters.
pub const SYNTHETIC_VALID_BITS: u8 = 24;

const FULL_SCALE_24: f64 = 8_388_607.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// The same sine on every channel.
    Tone { freq_hz: f64, level_dbfs: f64 },
    /// White noise, uniform, independent per channel.
    Noise { level_dbfs: f64 },
    /// Digital silence.
    Silence,
    /// A 1 kHz sine driven 6 dB past full scale and hard-clipped.
    Clipping,
    /// A constant non-zero value: a stuck converter.
    Flatline,
    /// Each channel a different tone whose level swells slowly between −42 and
    /// −6 dBFS, different per `seed`: lively meters for demonstrations.
    Demo,
}

#[derive(Debug)]
pub struct SyntheticSource {
    format: StreamFormat,
    signal: Signal,
    seed: u64,
    period_frames: usize,
    position: u64,
    /// `None`: unpaced.
    pacer: Option<Pacer>,
}

impl SyntheticSource {
    pub fn new(
        sample_rate: u32,
        channels: u16,
        period_frames: usize,
        signal: Signal,
        seed: u64,
    ) -> Self {
        SyntheticSource {
            format: StreamFormat {
                sample_rate,
                channels,
                valid_bits: SYNTHETIC_VALID_BITS,
            },
            signal,
            seed,
            period_frames,
            position: 0,
            pacer: Some(Pacer::new(sample_rate)),
        }
    }

    /// Deliver periods as fast as they are read (for tests and benchmarks).
    pub fn unpaced(mut self) -> Self {
        self.pacer = None;
        self
    }

    /// The value of sample `n` on channel `ch` as a 24-bit integer.
    pub fn sample(&self, ch: u16, n: u64) -> i32 {
        let rate = f64::from(self.format.sample_rate);
        let t = n as f64 / rate;
        let value = match self.signal {
            Signal::Silence => 0.0,
            Signal::Clipping => (2.0 * (TAU * 1000.0 * t).sin()).clamp(-1.0, 1.0),
            Signal::Flatline => 0.25,
            Signal::Tone {
                freq_hz,
                level_dbfs,
            } => db_to_gain(level_dbfs) * (TAU * freq_hz * t).sin(),
            Signal::Noise { level_dbfs } => {
                let r = splitmix64(self.seed ^ (u64::from(ch) << 48) ^ n);
                let uniform = (r >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
                db_to_gain(level_dbfs) * (2.0 * uniform - 1.0)
            }
            Signal::Demo => {
                let c = f64::from(ch);
                let phase = (self.seed % 997) as f64 / 997.0;
                let swell_hz = 0.07 + 0.023 * c + 0.01 * phase;
                let swell = 0.5 + 0.5 * (TAU * (swell_hz * t + phase + 0.19 * c)).sin();
                let level_dbfs = -42.0 + 36.0 * swell;
                let freq = 110.0 * (c + 1.0) * (1.0 + 0.05 * phase);
                db_to_gain(level_dbfs) * (TAU * freq * t).sin()
            }
        };
        ((value * FULL_SCALE_24).round() as i32) << 8
    }
}

fn db_to_gain(db: f64) -> f64 {
    10f64.powf(db / 20.0)
}

/// A well-mixed 64-bit hash (SplitMix64 finaliser): deterministic noise without state.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl CaptureSource for SyntheticSource {
    fn format(&self) -> StreamFormat {
        self.format
    }

    fn period_frames(&self) -> usize {
        self.period_frames
    }

    fn kind(&self) -> &'static str {
        "synthetic"
    }

    fn read(&mut self, buf: &mut [i32]) -> Result<PeriodRead, CaptureError> {
        let channels = usize::from(self.format.channels);
        let need = super::period_samples(buf, self.period_frames, self.format.channels)?;
        if let Some(pacer) = self.pacer.as_mut() {
            pacer.wait_for(self.position + self.period_frames as u64);
        }
        for (i, frame) in buf[..need].chunks_exact_mut(channels).enumerate() {
            let n = self.position + i as u64;
            for (ch, slot) in frame.iter_mut().enumerate() {
                *slot = self.sample(ch as u16, n);
            }
        }
        self.position += self.period_frames as u64;
        Ok(PeriodRead {
            frames: self.period_frames,
            xrun_before: false,
            lost_frames: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn output_is_deterministic_and_seed_dependent() {
        let read = |seed| {
            let mut s = SyntheticSource::new(48000, 2, 64, Signal::Demo, seed).unpaced();
            let mut buf = vec![0; 128];
            s.read(&mut buf).unwrap();
            s.read(&mut buf).unwrap();
            buf
        };
        assert_eq!(read(1), read(1));
        assert_ne!(read(1), read(2));
    }

    #[test]
    fn tone_has_the_requested_level() {
        let s = SyntheticSource::new(
            48000,
            1,
            64,
            Signal::Tone {
                freq_hz: 1000.0,
                level_dbfs: -6.0,
            },
            0,
        );
        let peak = (0..48).map(|n| s.sample(0, n).abs()).max().unwrap();
        let dbfs = 20.0 * (f64::from(peak) / 2_147_483_648.0).log10();
        assert!((dbfs - -6.0).abs() < 0.05, "{dbfs}");
    }

    #[test]
    fn noise_stays_within_its_level_and_silence_is_zero() {
        let s = SyntheticSource::new(48000, 2, 64, Signal::Noise { level_dbfs: -20.0 }, 9);
        let limit = (0.1 * FULL_SCALE_24) as i32 + 1;
        assert!((0..10_000).all(|n| (s.sample(1, n) >> 8).abs() <= limit));
        let s = SyntheticSource::new(48000, 2, 64, Signal::Silence, 9);
        assert!((0..1000).all(|n| s.sample(0, n) == 0));
    }

    #[test]
    fn clipping_and_flatline_patterns_raise_their_flags() {
        use crate::meter::MeterAccumulator;
        use rakkr_protocol::payload::MeterFlag;
        for (signal, flag) in [
            (Signal::Clipping, MeterFlag::Clipping),
            (Signal::Flatline, MeterFlag::Flatline),
        ] {
            let s = SyntheticSource::new(48000, 1, 64, signal, 0);
            let samples: Vec<i32> = (0..48_000).map(|n| s.sample(0, n)).collect();
            let mut m = MeterAccumulator::new(1, SYNTHETIC_VALID_BITS);
            m.push_interleaved(&samples);
            let flags: Vec<MeterFlag> = m.take()[0].flags.iter().collect();
            assert_eq!(flags, [flag], "{signal:?}");
        }
    }

    #[test]
    fn a_short_buffer_is_an_error() {
        let mut s = SyntheticSource::new(48000, 2, 64, Signal::Silence, 0).unpaced();
        let mut buf = vec![0; 127];
        assert!(matches!(
            s.read(&mut buf),
            Err(CaptureError::BufferTooSmall { need: 128, .. })
        ));
    }

    #[test]
    fn pacing_follows_the_sample_clock() {
        let mut s = SyntheticSource::new(48000, 1, 480, Signal::Silence, 0);
        let mut buf = vec![0; 480];
        let t0 = Instant::now();
        for _ in 0..10 {
            s.read(&mut buf).unwrap();
        }
        // 10 periods of 10 ms: never released early.
        assert!(t0.elapsed() >= Duration::from_millis(100));
    }
}
