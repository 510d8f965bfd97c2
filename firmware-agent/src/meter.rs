//! Per-channel level metering and quality flags over a window of interleaved samples.
//!
//! Samples are `i32` with the valid bits left-justified (S32 layout: a 24-bit
//! sample `x` is stored as `x << 8`). Levels are relative to full scale 2³¹:
//! a full-scale square wave reads 0 dBFS peak and RMS; a full-scale sine reads
//! 0 dBFS peak and −3.01 dBFS RMS (no AES17 +3 dB offset).
//!
//! Per channel and window: peak, RMS, clipped samples (magnitude at the largest
//! value the format's valid bits hold), DC offset (mean / full scale), the
//! longest run of identical samples that are neither zero nor clipped ("stuck"),
//! and the correlation coefficient with the next channel. Flags follow from
//! [`MeterPolicy`]; each pattern raises its own flag and no other:
//! - clipping: any clipped sample;
//! - silence: RMS at or below `silence_dbfs` (digital zero included);
//! - low signal: RMS below `low_signal_dbfs` but above silence;
//! - flatline: a stuck run of at least `flatline_ms`;
//! - correlated: |r| ≥ `correlation` with the next channel, both carrying signal
//!   above the low-signal threshold (a doubled or polarity-swapped feed).

use rakkr_protocol::payload::{ChannelMeter, MeterFlag, MeterFlags, clamp_dbfs};

const FULL_SCALE: f64 = 2_147_483_648.0; // 2^31

/// Thresholds for the quality flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterPolicy {
    pub low_signal_dbfs: f32,
    pub silence_dbfs: f32,
    pub flatline_ms: u32,
    pub correlation: f32,
}

impl Default for MeterPolicy {
    fn default() -> Self {
        MeterPolicy {
            low_signal_dbfs: -60.0,
            silence_dbfs: -90.0,
            flatline_ms: 20,
            correlation: 0.999,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct ChannelState {
    peak: u32,
    sum: f64,
    sum_squares: f64,
    /// Σ x·y with the next channel.
    sum_product_next: f64,
    clipped: u32,
    last: i32,
    run: u32,
    longest_stuck: u32,
}

#[derive(Debug, Clone)]
pub struct MeterAccumulator {
    channels: usize,
    clip_threshold: u32,
    flatline_frames: u32,
    policy: MeterPolicy,
    state: Vec<ChannelState>,
    frames: u64,
}

impl MeterAccumulator {
    /// `valid_bits` is the sample format's resolution (16, 24 or 32).
    pub fn new(channels: usize, valid_bits: u8) -> Self {
        Self::with_policy(channels, valid_bits, 48_000, MeterPolicy::default())
    }

    pub fn with_policy(
        channels: usize,
        valid_bits: u8,
        sample_rate: u32,
        policy: MeterPolicy,
    ) -> Self {
        let bits = u32::from(valid_bits.clamp(8, 32));
        MeterAccumulator {
            channels,
            clip_threshold: (((1u64 << (bits - 1)) - 1) << (32 - bits)) as u32,
            flatline_frames: (u64::from(policy.flatline_ms) * u64::from(sample_rate) / 1000).max(2)
                as u32,
            policy,
            state: vec![ChannelState::default(); channels],
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
    ///
    /// Channels are metered in groups of 8, 4, 2 or 1 with the group's state in
    /// fixed-size local arrays, so the per-sample work stays in registers and
    /// the compiler vectorises it across channels.
    pub fn push_interleaved(&mut self, samples: &[i32]) {
        let channels = self.channels;
        let frames = samples.len() / channels;
        let samples = &samples[..frames * channels];
        let mut first = 0;
        while first < channels {
            first += match channels - first {
                8.. => self.accumulate::<8>(samples, first),
                4.. => self.accumulate::<4>(samples, first),
                2.. => self.accumulate::<2>(samples, first),
                _ => self.accumulate::<1>(samples, first),
            };
        }
        self.frames += frames as u64;
    }

    /// Meter channels `first..first + L` of whole interleaved frames; returns L.
    fn accumulate<const L: usize>(&mut self, samples: &[i32], first: usize) -> usize {
        let channels = self.channels;
        let clip = self.clip_threshold;
        // The last channel of the group pairs with the next group's first.
        let next_exists = first + L < channels;
        let state = &mut self.state[first..first + L];
        let mut peak: [u32; L] = std::array::from_fn(|i| state[i].peak);
        let mut clipped: [u32; L] = std::array::from_fn(|i| state[i].clipped);
        let mut last: [i32; L] = std::array::from_fn(|i| state[i].last);
        let mut run: [u32; L] = std::array::from_fn(|i| state[i].run);
        let mut longest: [u32; L] = std::array::from_fn(|i| state[i].longest_stuck);
        let mut sum = [0f64; L];
        let mut sum_squares = [0f64; L];
        let mut sum_product_next = [0f64; L];
        for frame in samples.chunks_exact(channels) {
            let x: [i32; L] = std::array::from_fn(|i| frame[first + i]);
            let y: [i32; L] = std::array::from_fn(|i| {
                if i + 1 < L || next_exists {
                    frame[first + i + 1]
                } else {
                    0
                }
            });
            for i in 0..L {
                let s = x[i];
                let mag = s.unsigned_abs();
                peak[i] = peak[i].max(mag);
                let is_clipped = mag >= clip;
                clipped[i] = clipped[i].wrapping_add(u32::from(is_clipped));
                let v = f64::from(s);
                sum[i] += v;
                sum_squares[i] += v * v;
                sum_product_next[i] += v * f64::from(y[i]);
                // A run of identical non-zero, unclipped samples: a stuck converter.
                let same = s == last[i] && s != 0 && !is_clipped;
                run[i] = if same { run[i] + 1 } else { 1 };
                longest[i] = longest[i].max(run[i]);
                last[i] = s;
            }
        }
        for (i, st) in state.iter_mut().enumerate() {
            *st = ChannelState {
                peak: peak[i],
                sum: st.sum + sum[i],
                sum_squares: st.sum_squares + sum_squares[i],
                sum_product_next: st.sum_product_next + sum_product_next[i],
                clipped: clipped[i],
                last: last[i],
                run: run[i],
                longest_stuck: longest[i],
            };
        }
        L
    }

    /// Add another accumulator's window (same channel count) to this one, as
    /// if its samples had been pushed here: sums add, peaks and stuck runs take
    /// the larger. A long window built from consecutive short ones is exact.
    pub fn absorb(&mut self, other: &MeterAccumulator) {
        for (mine, theirs) in self.state.iter_mut().zip(&other.state) {
            mine.peak = mine.peak.max(theirs.peak);
            mine.sum += theirs.sum;
            mine.sum_squares += theirs.sum_squares;
            mine.sum_product_next += theirs.sum_product_next;
            mine.clipped = mine.clipped.saturating_add(theirs.clipped);
            mine.longest_stuck = mine.longest_stuck.max(theirs.longest_stuck);
        }
        self.frames += other.frames;
    }

    /// The meters of the window so far, and start a new window. Stuck runs
    /// continue across windows.
    pub fn take(&mut self) -> Vec<ChannelMeter> {
        let n = self.frames.max(1) as f64;
        let p = self.policy;
        let rms: Vec<f32> = self
            .state
            .iter()
            .map(|s| clamp_dbfs(amplitude_dbfs((s.sum_squares / n).sqrt())))
            .collect();
        // Correlation of each channel with the next (Pearson's r).
        let correlation: Vec<Option<f32>> = (0..self.channels)
            .map(|ch| {
                let (x, y) = (&self.state[ch], self.state.get(ch + 1)?);
                let var_x = n * x.sum_squares - x.sum * x.sum;
                let var_y = n * y.sum_squares - y.sum * y.sum;
                (var_x > 0.0 && var_y > 0.0).then(|| {
                    ((n * x.sum_product_next - x.sum * y.sum) / (var_x * var_y).sqrt())
                        .clamp(-1.0, 1.0) as f32
                })
            })
            .collect();
        // Pair (ch, ch + 1) is a doubled or inverted feed.
        let pair_correlated = |ch: usize| {
            correlation[ch].is_some_and(|r| r.abs() >= p.correlation)
                && rms[ch] >= p.low_signal_dbfs
                && rms.get(ch + 1).is_some_and(|l| *l >= p.low_signal_dbfs)
        };
        let out = (0..self.channels)
            .map(|ch| {
                let s = &self.state[ch];
                let mut flags = MeterFlags::default();
                if s.clipped > 0 {
                    flags.insert(MeterFlag::Clipping);
                }
                if rms[ch] <= p.silence_dbfs {
                    flags.insert(MeterFlag::Silence);
                } else if rms[ch] < p.low_signal_dbfs {
                    flags.insert(MeterFlag::LowSignal);
                }
                if s.longest_stuck >= self.flatline_frames {
                    flags.insert(MeterFlag::Flatline);
                }
                if pair_correlated(ch) || ch.checked_sub(1).is_some_and(pair_correlated) {
                    flags.insert(MeterFlag::Correlated);
                }
                ChannelMeter {
                    peak_dbfs: clamp_dbfs(amplitude_dbfs(f64::from(s.peak))),
                    rms_dbfs: rms[ch],
                    clipped: s.clipped,
                    dc_offset: (s.sum / n / FULL_SCALE) as f32,
                    stuck_frames: s.longest_stuck,
                    correlation_next: correlation[ch],
                    flags,
                }
            })
            .collect();
        for s in &mut self.state {
            let (last, run) = (s.last, s.run);
            *s = ChannelState {
                last,
                run,
                ..ChannelState::default()
            };
        }
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

    /// A sine of `gain` × full scale, clipped at the 24-bit maximum.
    fn clipped_sine(gain: f64, freq: f64, rate: f64, frames: usize) -> Vec<i32> {
        let max = f64::from(0x7FFF_FF00_i32);
        (0..frames)
            .map(|i| {
                (gain * max * (std::f64::consts::TAU * freq * i as f64 / rate).sin())
                    .clamp(-max, max) as i32
            })
            .collect()
    }

    fn flags(c: &ChannelMeter) -> Vec<MeterFlag> {
        c.flags.iter().collect()
    }

    #[test]
    fn sine_levels_are_within_a_tenth_of_a_db() {
        for (amplitude_db, freq) in [
            (-6.02, 1000.0),
            (-20.0, 997.0),
            (-0.5, 440.0),
            (-40.0, 60.0),
        ] {
            let mut m = MeterAccumulator::new(1, 32);
            let a = FULL_SCALE * 10f64.powf(amplitude_db / 20.0);
            m.push_interleaved(&sine(a, freq, 48000.0, 48000));
            let [c] = m.take()[..] else { panic!() };
            assert!((f64::from(c.peak_dbfs) - amplitude_db).abs() < 0.1, "{c:?}");
            assert!(
                (f64::from(c.rms_dbfs) - (amplitude_db - 3.0103)).abs() < 0.1,
                "{c:?}"
            );
            assert!(c.flags.is_empty(), "a clean tone raises nothing: {c:?}");
            assert!(c.dc_offset.abs() < 1e-4);
        }
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

    /// Eight channels, each a different pattern; each raises exactly its flag.
    #[test]
    fn each_pattern_raises_its_flag_and_nothing_else() {
        let rate = 48_000.0;
        let n = 48_000;
        let tone = |a: f64, f: f64| sine(FULL_SCALE * a, f, rate, n);
        let patterns: Vec<(Vec<i32>, Vec<MeterFlag>)> = vec![
            (tone(0.3, 1000.0), vec![]),
            // Hard clipping: a sine driven 6 dB past full scale.
            (clipped_sine(2.0, 523.0, rate, n), vec![MeterFlag::Clipping]),
            (vec![0; n], vec![MeterFlag::Silence]),
            (tone(0.0003, 700.0), vec![MeterFlag::LowSignal]),
            // Stuck converter: a constant non-zero value after some signal.
            (
                tone(0.3, 300.0)[..n / 2]
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0x1234_5600, n / 2))
                    .collect(),
                vec![MeterFlag::Flatline],
            ),
            (tone(0.25, 440.0), vec![]),
            // Channels 6 and 7: one feed doubled with its polarity swapped.
            (tone(0.2, 220.0), vec![MeterFlag::Correlated]),
            (
                tone(0.2, 220.0).iter().map(|s| -s).collect(),
                vec![MeterFlag::Correlated],
            ),
        ];
        let mut m = MeterAccumulator::new(patterns.len(), 24);
        let interleaved: Vec<i32> = (0..n)
            .flat_map(|i| patterns.iter().map(move |(p, _)| p[i] & !0xFF))
            .collect();
        m.push_interleaved(&interleaved);
        let meters = m.take();
        for (ch, ((_, expected), c)) in patterns.iter().zip(&meters).enumerate() {
            assert_eq!(&flags(c), expected, "channel {ch}: {c:?}");
        }
        assert!(meters[6].correlation_next.unwrap() < -0.999);
        assert!(meters[4].stuck_frames >= 24_000);
    }
}
