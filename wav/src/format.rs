//! Pure WAV/RF64 layout: the header we write, and parsing any WAV/RF64 header.

/// Where the audio starts in files we write: the header area is fixed, so
/// tags can be rewritten at the end without moving audio. 64 KiB: room for the
/// final tags of the widest take (a 1024-channel map is ~5 KB, a full gap
/// list ~10 KB).
pub const DATA_START: u64 = 64 * 1024;
/// Offset of the chunk after "RIFF"/"RF64" size "WAVE": JUNK, or ds64 once
/// the file outgrows RIFF's 32-bit sizes.
pub const DS64_OFFSET: u64 = 12;
/// ds64 payload: RIFF size, data size, sample count (u64 each), table length (u32).
pub const DS64_LEN: usize = 28;
/// Offset of the data chunk's size field in files we write.
pub const DATA_SIZE_OFFSET: u64 = DATA_START - 4;
/// A 32-bit size field of this value defers to ds64 (RF64).
pub const RF64_SIZE: u32 = 0xFFFF_FFFF;

const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;
/// KSDATAFORMAT_SUBTYPE_PCM.
const SUBTYPE_PCM: [u8; 16] = [
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

/// Integer PCM as a WAV file states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavFormat {
    pub channels: u16,
    pub sample_rate: u32,
    /// The sample container: 16, 24 or 32 bits. (Files we write use every bit
    /// of it; a WAVE_FORMAT_EXTENSIBLE file from elsewhere may declare fewer
    /// valid bits, left-justified in the container: read as stored.)
    pub bits_per_sample: u16,
}

impl WavFormat {
    pub fn bytes_per_sample(&self) -> usize {
        usize::from(self.bits_per_sample).div_ceil(8)
    }

    pub fn block_align(&self) -> usize {
        self.bytes_per_sample() * usize::from(self.channels)
    }

    /// Speaker positions: centre for mono, left/right for stereo; none (0)
    /// for more channels, which are a recorder's direct inputs, not a layout.
    pub fn channel_mask(&self) -> u32 {
        match self.channels {
            1 => 0x4,
            2 => 0x3,
            _ => 0,
        }
    }

    /// The `fmt ` chunk payload: plain PCM for mono/stereo 16-bit, otherwise
    /// WAVE_FORMAT_EXTENSIBLE (required above 2 channels or 16 bits).
    pub fn fmt_payload(&self) -> Vec<u8> {
        let extensible = self.channels > 2 || self.bits_per_sample > 16;
        let block_align = self.block_align() as u16;
        let mut p = Vec::with_capacity(40);
        let tag = if extensible {
            WAVE_FORMAT_EXTENSIBLE
        } else {
            WAVE_FORMAT_PCM
        };
        p.extend_from_slice(&tag.to_le_bytes());
        p.extend_from_slice(&self.channels.to_le_bytes());
        p.extend_from_slice(&self.sample_rate.to_le_bytes());
        p.extend_from_slice(&(self.sample_rate * u32::from(block_align)).to_le_bytes());
        p.extend_from_slice(&block_align.to_le_bytes());
        p.extend_from_slice(&(self.bytes_per_sample() as u16 * 8).to_le_bytes());
        if extensible {
            p.extend_from_slice(&22u16.to_le_bytes());
            p.extend_from_slice(&self.bits_per_sample.to_le_bytes());
            p.extend_from_slice(&self.channel_mask().to_le_bytes());
            p.extend_from_slice(&SUBTYPE_PCM);
        }
        p
    }
}

fn chunk(id: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(8 + payload.len() + 1);
    c.extend_from_slice(id);
    c.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    c.extend_from_slice(payload);
    if payload.len() % 2 == 1 {
        c.push(0); // chunks are word-aligned
    }
    c
}

/// Our tags as a LIST/INFO chunk: ISFT (the writing software) and ICMT
/// (every tag as a `KEY=VALUE` line), which common tools show as the comment.
pub fn info_list(software: &str, tags: &[(String, String)]) -> Vec<u8> {
    let text = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    };
    let comment: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut payload = b"INFO".to_vec();
    payload.extend(chunk(b"ISFT", &text(software)));
    payload.extend(chunk(b"ICMT", &text(&comment.join("\n"))));
    chunk(b"LIST", &payload)
}

/// The metadata region between `fmt ` and `data`: the LIST chunk, then a JUNK
/// chunk filling the rest. `None` if the tags do not fit.
pub fn metadata_region(region_len: usize, list: &[u8]) -> Option<Vec<u8>> {
    let junk = region_len.checked_sub(list.len() + 8)?;
    let mut out = list.to_vec();
    out.extend_from_slice(b"JUNK");
    out.extend_from_slice(&(junk as u32).to_le_bytes());
    out.resize(region_len, 0);
    Some(out)
}

/// The whole header of a file we write, with no audio yet.
/// `None` if the tags do not fit in the header area.
pub fn header(format: &WavFormat, list: &[u8], rf64: bool) -> Option<Vec<u8>> {
    let mut h = Vec::with_capacity(DATA_START as usize);
    h.extend_from_slice(b"RIFF\0\0\0\0WAVE");
    h.extend(chunk(b"JUNK", &[0u8; DS64_LEN]));
    h.extend(chunk(b"fmt ", &format.fmt_payload()));
    let region = (DATA_START as usize - 8).checked_sub(h.len())?;
    h.extend(metadata_region(region, list)?);
    h.extend_from_slice(b"data\0\0\0\0");
    debug_assert_eq!(h.len() as u64, DATA_START);
    patch_sizes(&mut h, 0, 0, rf64);
    Some(h)
}

/// The size fields of our header for `data_bytes` of audio (`frames` per
/// channel): RIFF while every size fits in 32 bits (unless `rf64` asks for
/// RF64 regardless), RF64 with a ds64 chunk beyond. `h` holds at least the
/// first [`DATA_START`] bytes.
pub fn patch_sizes(h: &mut [u8], data_bytes: u64, frames: u64, rf64: bool) {
    let riff_size = DATA_START - 8 + data_bytes + data_bytes % 2;
    let id = DS64_OFFSET as usize;
    let payload = id + 8;
    if !rf64 && riff_size <= u64::from(u32::MAX - 1) {
        h[0..4].copy_from_slice(b"RIFF");
        h[4..8].copy_from_slice(&(riff_size as u32).to_le_bytes());
        h[id..id + 4].copy_from_slice(b"JUNK");
        h[payload..payload + DS64_LEN].fill(0);
        h[DATA_SIZE_OFFSET as usize..DATA_START as usize]
            .copy_from_slice(&(data_bytes as u32).to_le_bytes());
    } else {
        h[0..4].copy_from_slice(b"RF64");
        h[4..8].copy_from_slice(&RF64_SIZE.to_le_bytes());
        h[id..id + 4].copy_from_slice(b"ds64");
        h[payload..payload + 8].copy_from_slice(&riff_size.to_le_bytes());
        h[payload + 8..payload + 16].copy_from_slice(&data_bytes.to_le_bytes());
        h[payload + 16..payload + 24].copy_from_slice(&frames.to_le_bytes());
        h[payload + 24..payload + 28].copy_from_slice(&0u32.to_le_bytes());
        h[DATA_SIZE_OFFSET as usize..DATA_START as usize].copy_from_slice(&RF64_SIZE.to_le_bytes());
    }
}

/// Bytes at the start of our header that hold sizes (RIFF/RF64 size, ds64).
pub const SIZES_LEN: usize = DS64_OFFSET as usize + 8 + DS64_LEN;

/// What a WAV/RF64 header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHeader {
    pub format: WavFormat,
    pub rf64: bool,
    /// Offset of the first audio byte.
    pub data_start: u64,
    /// The data size the header states (`None`: unknown, e.g. a placeholder).
    pub data_bytes: Option<u64>,
    pub software: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// Parse a header from the first bytes of a file (at least up to the data
/// chunk's header). Errors say what is wrong.
pub fn parse_header(b: &[u8]) -> Result<ParsedHeader, String> {
    let u16_at = |i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
    };
    let u64_at = |i: usize| {
        b.get(i..i + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    };
    let rf64 = match b.get(0..4) {
        Some(b"RIFF") => false,
        Some(b"RF64") => true,
        _ => return Err("no RIFF or RF64 signature".into()),
    };
    if b.get(8..12) != Some(b"WAVE") {
        return Err("not a WAVE file".into());
    }
    let mut pos = 12usize;
    let (mut format, mut ds64_data, mut software, mut tags) = (None, None, None, Vec::new());
    loop {
        let id = b.get(pos..pos + 4).ok_or("the header is incomplete")?;
        let len = u32_at(pos + 4).ok_or("the header is incomplete")? as usize;
        let body = pos + 8;
        match id {
            b"ds64" => ds64_data = u64_at(body + 8),
            b"fmt " => {
                let tag = u16_at(body).ok_or("the header is incomplete")?;
                let sub_pcm = b.get(body + 24..body + 40) == Some(&SUBTYPE_PCM[..]);
                if tag != WAVE_FORMAT_PCM && !(tag == WAVE_FORMAT_EXTENSIBLE && sub_pcm) {
                    return Err(format!("format tag {tag:#06x} is not integer PCM"));
                }
                format = Some(WavFormat {
                    channels: u16_at(body + 2).ok_or("the header is incomplete")?,
                    sample_rate: u32_at(body + 4).ok_or("the header is incomplete")?,
                    bits_per_sample: u16_at(body + 14).ok_or("the header is incomplete")?,
                });
            }
            b"LIST" if b.get(body..body + 4) == Some(b"INFO") => {
                let end = (body + len).min(b.len());
                let mut at = body + 4;
                while at + 8 <= end {
                    let sub = &b[at..at + 4];
                    let n = u32_at(at + 4).unwrap_or(0) as usize;
                    let text = b.get(at + 8..(at + 8 + n).min(end)).unwrap_or(&[]);
                    let text = String::from_utf8_lossy(text)
                        .trim_end_matches('\0')
                        .to_owned();
                    match sub {
                        b"ISFT" => software = Some(text),
                        b"ICMT" => {
                            tags = text
                                .lines()
                                .filter_map(|l| l.split_once('='))
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .collect();
                        }
                        _ => {}
                    }
                    at += 8 + n + n % 2;
                }
            }
            b"data" => {
                let format = format.ok_or("no fmt chunk before the data")?;
                // 8-bit WAV is unsigned; we read signed 16/24/32-bit containers.
                if format.channels == 0 || !matches!(format.bits_per_sample, 16 | 24 | 32) {
                    return Err(format!(
                        "{} channels of {}-bit samples: only signed 16, 24 and 32-bit PCM",
                        format.channels, format.bits_per_sample
                    ));
                }
                let data_bytes = match (rf64, len as u32) {
                    // ds64 says 0 until the first sync: unknown, like RIFF's 0.
                    (true, RF64_SIZE) => ds64_data.filter(|n| *n > 0),
                    (_, 0) | (false, RF64_SIZE) => None,
                    (_, n) => Some(u64::from(n)),
                };
                return Ok(ParsedHeader {
                    format,
                    rf64,
                    data_start: body as u64,
                    data_bytes,
                    software,
                    tags,
                });
            }
            _ => {}
        }
        pos = body + len + len % 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Vec<(String, String)> {
        vec![
            ("RAKKR_NODE".into(), "studio-a".into()),
            ("RAKKR_CHANNELS".into(), "kick,snare".into()),
        ]
    }

    #[test]
    fn our_header_parses_back_in_both_layouts() {
        let f = WavFormat {
            channels: 12,
            sample_rate: 96_000,
            bits_per_sample: 24,
        };
        let list = info_list("rakkr-test", &tags());
        let mut h = header(&f, &list, false).unwrap();
        assert_eq!(h.len() as u64, DATA_START);
        let p = parse_header(&h).unwrap();
        assert_eq!(p.format, f);
        assert_eq!(
            (p.rf64, p.data_start, p.data_bytes),
            (false, DATA_START, None)
        );
        assert_eq!(p.tags, tags());
        assert_eq!(p.software.as_deref(), Some("rakkr-test"));

        patch_sizes(&mut h, 36_000, 1000, false);
        assert_eq!(parse_header(&h).unwrap().data_bytes, Some(36_000));
        assert_eq!(&h[4..8], &((DATA_START - 8 + 36_000) as u32).to_le_bytes());

        let big = 5u64 << 30;
        patch_sizes(&mut h, big, big / 36, false);
        let p = parse_header(&h).unwrap();
        assert_eq!((p.rf64, p.data_bytes), (true, Some(big)));
        assert_eq!(&h[12..16], b"ds64");
        // RF64 on request, at any size.
        patch_sizes(&mut h, 100, 1, true);
        let p = parse_header(&h).unwrap();
        assert_eq!((p.rf64, p.data_bytes), (true, Some(100)));
        // Back below 4 GiB: plain RIFF again.
        patch_sizes(&mut h, 100, 1, false);
        let p = parse_header(&h).unwrap();
        assert_eq!((p.rf64, p.data_bytes), (false, Some(100)));
        assert_eq!(&h[12..16], b"JUNK");
    }

    #[test]
    fn stereo_16_bit_uses_plain_pcm_and_wider_formats_extensible() {
        let fmt = |channels, bits| {
            WavFormat {
                channels,
                sample_rate: 48_000,
                bits_per_sample: bits,
            }
            .fmt_payload()
        };
        assert_eq!(fmt(2, 16).len(), 16);
        assert_eq!(&fmt(2, 16)[..2], &1u16.to_le_bytes());
        assert_eq!(fmt(2, 24).len(), 40);
        assert_eq!(fmt(3, 16).len(), 40);
        assert_eq!(&fmt(8, 24)[..2], &0xFFFEu16.to_le_bytes());
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(parse_header(b"fLaC").unwrap_err().contains("RIFF"));
        assert!(
            parse_header(b"RIFF\0\0\0\0AVI ")
                .unwrap_err()
                .contains("WAVE")
        );
        assert!(
            parse_header(b"RIFF\0\0\0\0WAVEfmt ")
                .unwrap_err()
                .contains("incomplete")
        );
        let too_many_tags: Vec<(String, String)> = (0..5000)
            .map(|i| (format!("K{i}"), "v".repeat(10)))
            .collect();
        let f = WavFormat {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 16,
        };
        assert!(header(&f, &info_list("x", &too_many_tags), false).is_none());
    }
}
