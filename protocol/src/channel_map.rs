//! Channel maps: which device channels go into a recording, in what order, mixed how.
//!
//! Text form (channel numbers are 1-based, as printed on interfaces):
//!
//! | map        | meaning                                        |
//! |------------|------------------------------------------------|
//! | `3,4`      | a stereo pair from device channels 3 and 4     |
//! | `4,3`      | the same pair, swapped                         |
//! | `5`        | mono from channel 5                            |
//! | `5,5`      | mono to stereo (channel 5 on both sides)       |
//! | `1+2`      | mono mix of channels 1 and 2                   |
//! | `1+2,3+4`  | two mixes                                      |
//!
//! Invariant: a routed channel is copied bit for bit. A mix of k channels is
//! their sum divided by k (rounded to nearest), so it can never clip.

use std::fmt;

/// Most output channels a map produces.
pub const MAX_OUTPUTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    Copy(usize),
    Mix(Vec<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelMap {
    inputs: usize,
    outputs: Vec<Output>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("channel map {map:?}: {problem}")]
    Invalid { map: String, problem: String },
}

impl ChannelMap {
    /// Every input channel, in order.
    pub fn identity(inputs: usize) -> ChannelMap {
        ChannelMap {
            inputs,
            outputs: (0..inputs).map(Output::Copy).collect(),
        }
    }

    /// Parse `text` for a device with `inputs` channels.
    pub fn parse(text: &str, inputs: usize) -> Result<ChannelMap, MapError> {
        let invalid = |problem: String| MapError::Invalid {
            map: text.to_owned(),
            problem,
        };
        let mut outputs = Vec::new();
        for part in text.split(',') {
            let mut sources = Vec::new();
            for number in part.split('+') {
                let n: usize = number
                    .trim()
                    .parse()
                    .map_err(|_| invalid(format!("{:?} is not a channel number", number.trim())))?;
                if n == 0 || n > inputs {
                    return Err(invalid(format!(
                        "channel {n} does not exist; the device has 1 to {inputs}"
                    )));
                }
                sources.push(n - 1);
            }
            outputs.push(match sources.as_slice() {
                [one] => Output::Copy(*one),
                _ => Output::Mix(sources),
            });
        }
        if outputs.len() > MAX_OUTPUTS {
            return Err(invalid(format!(
                "{} outputs; at most {MAX_OUTPUTS}",
                outputs.len()
            )));
        }
        Ok(ChannelMap { inputs, outputs })
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs.len()
    }

    /// Device channels this map reads (for checking that recordings sharing a
    /// device use disjoint channels).
    pub fn sources(&self) -> impl Iterator<Item = usize> + '_ {
        self.outputs.iter().flat_map(|o| match o {
            Output::Copy(c) => std::slice::from_ref(c).iter().copied(),
            Output::Mix(cs) => cs.iter().copied(),
        })
    }

    /// The output samples for interleaved input frames, shifting every input
    /// sample right by `shift` bits first (left-justified capture samples to
    /// the file's resolution), so mixes round at the file's resolution.
    /// A trailing partial frame is ignored. Does not allocate.
    pub fn map_frames<'a>(
        &'a self,
        input: &'a [i32],
        shift: u32,
    ) -> impl Iterator<Item = i32> + 'a {
        // A map of no inputs (a device that reports none) maps nothing.
        input
            .chunks_exact(self.inputs.max(1))
            .flat_map(move |frame| {
                self.outputs.iter().map(move |o| match o {
                    Output::Copy(c) => frame[*c] >> shift,
                    Output::Mix(cs) => {
                        let sum: i64 = cs.iter().map(|&c| i64::from(frame[c] >> shift)).sum();
                        let k = cs.len() as i64;
                        // Round half away from zero.
                        ((sum + sum.signum() * (k / 2)) / k) as i32
                    }
                })
            })
    }
}

impl fmt::Display for ChannelMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .outputs
            .iter()
            .map(|o| match o {
                Output::Copy(c) => (c + 1).to_string(),
                Output::Mix(cs) => cs
                    .iter()
                    .map(|c| (c + 1).to_string())
                    .collect::<Vec<_>>()
                    .join("+"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str, inputs: usize, frames: &[i32]) -> Vec<i32> {
        let m = ChannelMap::parse(text, inputs).unwrap();
        let mut out = Vec::new();
        out.extend(m.map_frames(frames, 0));
        out
    }

    #[test]
    fn routes_copy_exactly() {
        let frames = [10, 20, 30, 40, -1, -2, -3, i32::MIN];
        assert_eq!(map("3,4", 4, &frames), [30, 40, -3, i32::MIN]);
        assert_eq!(map("4,3", 4, &frames), [40, 30, i32::MIN, -3]);
        assert_eq!(map("2", 4, &frames), [20, -2]);
        assert_eq!(map("1,1", 4, &frames), [10, 10, -1, -1]);
        assert_eq!(ChannelMap::identity(4).to_string(), "1,2,3,4");
    }

    #[test]
    fn mixes_average_and_cannot_clip() {
        assert_eq!(
            map(
                "1+2",
                2,
                &[i32::MAX, i32::MAX, i32::MIN, i32::MIN, 3, 4, -3, -4]
            ),
            [i32::MAX, i32::MIN, 4, -4]
        );
        assert_eq!(map("1+2+3,4", 4, &[3, 3, 3, 7]), [3, 7]);
        assert_eq!(ChannelMap::parse("1+2,3", 3).unwrap().to_string(), "1+2,3");
    }

    #[test]
    fn bad_maps_say_what_is_wrong() {
        for (text, expect) in [
            ("0", "does not exist"),
            ("5", "1 to 4"),
            ("1,x", "\"x\""),
            ("", "\"\""),
            ("1,,2", "\"\""),
        ] {
            let e = ChannelMap::parse(text, 4).unwrap_err().to_string();
            assert!(e.contains(expect), "{text}: {e}");
        }
    }

    #[test]
    fn shifting_comes_before_mixing() {
        let m = ChannelMap::parse("1+2", 2).unwrap();
        let mut out = Vec::new();
        out.extend(m.map_frames(&[3 << 16, 4 << 16], 16));
        assert_eq!(out, [4], "(3 + 4) / 2 rounds to 4 at 16-bit resolution");
    }

    #[test]
    fn sources_lists_every_channel_read() {
        let m = ChannelMap::parse("1+2,4", 4).unwrap();
        assert_eq!(m.sources().collect::<Vec<_>>(), [0, 1, 3]);
    }
}
