//! Capture sample formats and their conversion to the pipeline's sample type.
//!
//! The pipeline carries `i32` samples with the valid bits left-justified (the S32
//! layout). Conversions are exact for every integer format: a captured S16, S24
//! or S32 sample can be recovered bit for bit from its `i32` (shift right by
//! `32 − valid_bits`). FLOAT_LE is scaled by 2³¹ and saturated at full scale.

use std::fmt;

use dasp::Sample;
use dasp::sample::types::I24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleFormat {
    /// 16-bit signed, little-endian, 2 bytes.
    S16Le,
    /// 24-bit signed, little-endian, packed in 3 bytes.
    S24_3Le,
    /// 24-bit signed, little-endian, in the low 3 bytes of 4.
    S24Le,
    /// 32-bit signed, little-endian.
    S32Le,
    /// 32-bit IEEE float, little-endian, full scale ±1.0.
    FloatLe,
}

impl SampleFormat {
    pub const ALL: [SampleFormat; 5] = [
        SampleFormat::S16Le,
        SampleFormat::S24_3Le,
        SampleFormat::S24Le,
        SampleFormat::S32Le,
        SampleFormat::FloatLe,
    ];

    /// The ALSA name, as `arecord -f` and configuration files write it.
    pub fn name(self) -> &'static str {
        match self {
            SampleFormat::S16Le => "S16_LE",
            SampleFormat::S24_3Le => "S24_3LE",
            SampleFormat::S24Le => "S24_LE",
            SampleFormat::S32Le => "S32_LE",
            SampleFormat::FloatLe => "FLOAT_LE",
        }
    }

    pub fn parse(name: &str) -> Option<SampleFormat> {
        SampleFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            SampleFormat::S16Le => 2,
            SampleFormat::S24_3Le => 3,
            SampleFormat::S24Le | SampleFormat::S32Le | SampleFormat::FloatLe => 4,
        }
    }

    /// Resolution of the converted samples.
    pub fn valid_bits(self) -> u8 {
        match self {
            SampleFormat::S16Le => 16,
            SampleFormat::S24_3Le | SampleFormat::S24Le => 24,
            SampleFormat::S32Le | SampleFormat::FloatLe => 32,
        }
    }

    /// Convert raw little-endian samples into left-justified `i32`s.
    /// Converts `min(bytes.len() / bytes_per_sample, out.len())` samples and
    /// returns that count. Never allocates.
    pub fn decode(self, bytes: &[u8], out: &mut [i32]) -> usize {
        let width = self.bytes_per_sample();
        let n = (bytes.len() / width).min(out.len());
        let samples = bytes[..n * width].chunks_exact(width);
        for (raw, slot) in samples.zip(out.iter_mut()) {
            // dasp's conversions: integers are shifted to the top of the i32
            // (exact); floats scale by 2^31, saturate at full scale, NaN → 0.
            *slot = match self {
                SampleFormat::S16Le => i16::from_le_bytes([raw[0], raw[1]]).to_sample::<i32>(),
                // S24_LE's top byte is padding (sign or garbage): only the low
                // three bytes are the sample, as in S24_3LE.
                SampleFormat::S24_3Le | SampleFormat::S24Le => {
                    I24::new_unchecked(i32::from_le_bytes([0, raw[0], raw[1], raw[2]]) >> 8)
                        .to_sample::<i32>()
                }
                SampleFormat::S32Le => i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
                SampleFormat::FloatLe => {
                    f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]).to_sample::<i32>()
                }
            };
        }
        n
    }
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in SampleFormat::ALL {
            assert_eq!(SampleFormat::parse(f.name()), Some(f));
        }
        assert_eq!(SampleFormat::parse("s24_3le"), Some(SampleFormat::S24_3Le));
        assert_eq!(SampleFormat::parse("U8"), None);
    }

    #[test]
    fn integer_formats_convert_exactly() {
        let mut out = [0i32; 3];
        let s16: Vec<u8> = [i16::MIN, -1, i16::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        SampleFormat::S16Le.decode(&s16, &mut out);
        assert_eq!(out.map(|v| v >> 16), [-32768, -1, 32767]);
        assert_eq!(out[2] & 0xFFFF, 0);

        let s24: Vec<i32> = vec![-8_388_608, -1, 8_388_607];
        let packed: Vec<u8> = s24
            .iter()
            .flat_map(|v| v.to_le_bytes()[..3].to_vec())
            .collect();
        assert_eq!(SampleFormat::S24_3Le.decode(&packed, &mut out), 3);
        assert_eq!(out.map(|v| v >> 8).to_vec(), s24);

        // S24_LE: garbage in the padding byte must not leak into the sample.
        let padded: Vec<u8> = s24
            .iter()
            .flat_map(|v| {
                let mut b = v.to_le_bytes();
                b[3] = 0x5A;
                b
            })
            .collect();
        SampleFormat::S24Le.decode(&padded, &mut out);
        assert_eq!(out.map(|v| v >> 8).to_vec(), s24);

        let s32: Vec<u8> = [i32::MIN, 1, i32::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        SampleFormat::S32Le.decode(&s32, &mut out);
        assert_eq!(out, [i32::MIN, 1, i32::MAX]);
    }

    #[test]
    fn float_scales_and_saturates() {
        let mut out = [0i32; 5];
        let f: Vec<u8> = [0.5f32, -1.0, 1.0, 2.0, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        SampleFormat::FloatLe.decode(&f, &mut out);
        assert_eq!(out, [1 << 30, i32::MIN, i32::MAX, i32::MAX, 0]);
    }

    #[test]
    fn short_inputs_convert_whole_samples_only() {
        let mut out = [7i32; 4];
        assert_eq!(SampleFormat::S24_3Le.decode(&[1, 2, 3, 4, 5], &mut out), 1);
        assert_eq!(out[1], 7);
    }
}
