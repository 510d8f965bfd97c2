//! Per-channel level metering over a window of interleaved samples.
//!
//! Samples are `i32` with the valid bits left-justified (S32 layout: a 24-bit
//! sample `x` is stored as `x << 8`). Levels are relative to full scale 2³¹:
//! a full-scale square wave reads 0 dBFS peak and RMS; a full-scale sine reads
//! 0 dBFS peak and −3.01 dBFS RMS (no AES17 +3 dB offset).
//!
//! A sample counts as clipped when its magnitude reaches the largest value the
//! format's valid bits can hold.

use rakkr_protocol::payload::{ChannelMeter, clamp_dbfs};

const FULL_SCALE: f64 = 2_147_483_648.0; // 2^31

#[derive(Debug, Clone)]
pub struct MeterAccumulator {
    channels: usize,
    clip_threshold: i64,
    peak: Vec<i64>,
    sum_squares: Vec<f64>,
    clipped: Vec<u32>,
    frames: u64,
}

impl MeterAccumulator {
    /// `valid_bits` is the sample format's resolution (16, 24 or 32).
    pub fn new(channels: usize, valid_bits: u8) -> Self {
        let bits = u32::from(valid_bits.clamp(8, 32));
        let clip_threshold = ((1i64 << (bits - 1)) - 1) << (32 - bits);
        MeterAccumulator {
            channels,
            clip_threshold,
            peak: vec![0; channels],
            sum_squares: vec![0.0; channels],
            clipped: vec![0; channels],
            frames: 0,
        }
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Frames accumulated since the last [`take`](Self::take).
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Add interleaved samples. A trailing partial frame is ignored.
    pub fn push_interleaved(&mut self, samples: &[i32]) {
        for frame in samples.chunks_exact(self.channels) {
            for (ch, &s) in frame.iter().enumerate() {
                let mag = i64::from(s).abs();
                if mag > self.peak[ch] {
                    self.peak[ch] = mag;
                }
                if mag >= self.clip_threshold {
                    self.clipped[ch] = self.clipped[ch].saturating_add(1);
                }
                let x = f64::from(s);
                self.sum_squares[ch] += x * x;
            }
            self.frames += 1;
        }
    }

    /// The levels of the window so far, and start a new window.
    pub fn take(&mut self) -> Vec<ChannelMeter> {
        let n = self.frames.max(1) as f64;
        let out = (0..self.channels)
            .map(|ch| ChannelMeter {
                peak_dbfs: clamp_dbfs(amplitude_dbfs(self.peak[ch] as f64)),
                rms_dbfs: clamp_dbfs(amplitude_dbfs((self.sum_squares[ch] / n).sqrt())),
                clipped: self.clipped[ch],
            })
            .collect();
        self.peak.iter_mut().for_each(|p| *p = 0);
        self.sum_squares.iter_mut().for_each(|s| *s = 0.0);
        self.clipped.iter_mut().for_each(|c| *c = 0);
        self.frames = 0;
        out
    }
}

fn amplitude_dbfs(amplitude: f64) -> f32 {
    (20.0 * (amplitude / FULL_SCALE).log10()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rakkr_protocol::payload::DBFS_FLOOR;

    fn sine(amplitude: f64, freq: f64, rate: f64, frames: usize) -> Vec<i32> {
        (0..frames)
            .map(|n| {
                (amplitude * (2.0 * std::f64::consts::PI * freq * n as f64 / rate).sin()) as i32
            })
            .collect()
    }

    #[test]
    fn sine_levels_are_within_a_tenth_of_a_db() {
        // −6.02 dBFS sine: peak −6.02, RMS −9.03.
        let mut m = MeterAccumulator::new(1, 32);
        m.push_interleaved(&sine(FULL_SCALE / 2.0, 1000.0, 48000.0, 48000));
        let [c] = m.take()[..] else { panic!() };
        assert!((c.peak_dbfs - -6.02).abs() < 0.1, "{c:?}");
        assert!((c.rms_dbfs - -9.03).abs() < 0.1, "{c:?}");
        assert_eq!(c.clipped, 0);
    }

    #[test]
    fn silence_reads_the_floor_and_channels_stay_apart() {
        let mut m = MeterAccumulator::new(2, 24);
        let full = 0x7FFF_FF00_i32;
        m.push_interleaved(&[0, full, 0, -full, 0, 1 << 8]);
        let c = m.take();
        assert_eq!(c[0].peak_dbfs, DBFS_FLOOR);
        assert_eq!(c[0].rms_dbfs, DBFS_FLOOR);
        assert!(c[1].peak_dbfs > -0.001);
        assert_eq!(c[1].clipped, 2, "24-bit full scale counts as clipped");
        assert_eq!(m.frames(), 0, "take starts a new window");
        assert_eq!(m.take()[1].peak_dbfs, DBFS_FLOOR);
    }

    #[test]
    fn sixteen_bit_full_scale_clips() {
        let mut m = MeterAccumulator::new(1, 16);
        m.push_interleaved(&[0x7FFF_0000, 0x7FFE_0000, i32::MIN]);
        assert_eq!(m.take()[0].clipped, 2);
    }
}
