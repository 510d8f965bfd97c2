//! Pure FLAC format pieces: checksums, metadata blocks, frame headers.

/// Size of a metadata block header: last-flag and type (1 byte), length (3 bytes).
pub const BLOCK_HEADER: usize = 4;
/// STREAMINFO's payload length.
pub const STREAMINFO_LEN: usize = 34;
pub const TYPE_STREAMINFO: u8 = 0;
pub const TYPE_PADDING: u8 = 1;
pub const TYPE_VORBIS_COMMENT: u8 = 4;

/// CRC-8 of frame headers (polynomial 0x07, init 0).
pub fn crc8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |mut crc, &b| {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// Table for CRC-16 of frames (polynomial 0x8005, init 0, no reflection).
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Feed one byte into a running frame CRC-16. Over a whole frame including its
/// stored CRC, the result is 0.
#[inline]
pub fn crc16_update(crc: u16, byte: u8) -> u16 {
    (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ byte)]
}

pub fn block_header(last: bool, kind: u8, len: usize) -> [u8; 4] {
    let len = len as u32;
    [
        (u8::from(last) << 7) | kind,
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
    ]
}

/// Tags in a VORBIS_COMMENT block. Keys are upper-case ASCII by convention.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VorbisComments {
    pub vendor: String,
    pub tags: Vec<(String, String)>,
}

impl VorbisComments {
    /// The block payload (little-endian lengths, as Vorbis defines them).
    pub fn to_block_payload(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |s: &[u8]| {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s);
        };
        put(self.vendor.as_bytes());
        let count = (self.tags.len() as u32).to_le_bytes();
        let mut entries = Vec::new();
        for (k, v) in &self.tags {
            let entry = format!("{k}={v}");
            entries.extend_from_slice(&(entry.len() as u32).to_le_bytes());
            entries.extend_from_slice(entry.as_bytes());
        }
        out.extend_from_slice(&count);
        out.extend_from_slice(&entries);
        out
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// The fields of STREAMINFO that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    pub min_block: u16,
    pub max_block: u16,
    pub sample_rate: u32,
    pub channels: u8,
    pub bits_per_sample: u8,
    /// 0 means unknown.
    pub total_samples: u64,
    /// All zeros means unknown.
    pub md5: [u8; 16],
}

impl StreamInfo {
    pub fn parse(p: &[u8; STREAMINFO_LEN]) -> StreamInfo {
        let packed = u64::from_be_bytes([p[10], p[11], p[12], p[13], p[14], p[15], p[16], p[17]]);
        let mut md5 = [0u8; 16];
        md5.copy_from_slice(&p[18..34]);
        StreamInfo {
            min_block: u16::from_be_bytes([p[0], p[1]]),
            max_block: u16::from_be_bytes([p[2], p[3]]),
            sample_rate: (packed >> 44) as u32,
            channels: ((packed >> 41) & 0x7) as u8 + 1,
            bits_per_sample: ((packed >> 36) & 0x1F) as u8 + 1,
            total_samples: packed & 0xF_FFFF_FFFF,
            md5,
        }
    }

    /// Write `total_samples` and `md5` into a STREAMINFO payload.
    pub fn patch(p: &mut [u8; STREAMINFO_LEN], total_samples: u64, md5: [u8; 16]) {
        let mut packed =
            u64::from_be_bytes([p[10], p[11], p[12], p[13], p[14], p[15], p[16], p[17]]);
        packed = (packed & !0xF_FFFF_FFFF) | (total_samples & 0xF_FFFF_FFFF);
        p[10..18].copy_from_slice(&packed.to_be_bytes());
        p[18..34].copy_from_slice(&md5);
    }
}

/// A parsed frame header (enough to walk a stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Header length in bytes, CRC-8 included.
    pub len: usize,
    pub block_size: u32,
    /// Frame number (fixed block size) or first sample number (variable).
    pub number: u64,
    pub variable_block_size: bool,
}

/// Parse a frame header at the start of `b`, checking its CRC-8 and reserved
/// values. `None` when `b` does not start with a valid frame header.
pub fn parse_frame_header(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < 6 || b[0] != 0xFF || (b[1] & 0xFE) != 0xF8 {
        return None;
    }
    let variable_block_size = b[1] & 1 == 1;
    let bs_code = b[2] >> 4;
    let sr_code = b[2] & 0xF;
    let ch_code = b[3] >> 4;
    let ss_code = (b[3] >> 1) & 0x7;
    if bs_code == 0 || sr_code == 0xF || ch_code > 10 || ss_code == 3 || b[3] & 1 != 0 {
        return None;
    }
    // UTF-8-style coded number: n leading ones give n bytes (n = 0: one byte).
    let first = b[4];
    let lead = first.leading_ones();
    let (extra, mask) = match lead {
        0 => (0usize, 0x7Fu8),
        2..=7 => (lead as usize - 1, 0x7Fu8 >> lead),
        _ => return None,
    };
    let mut pos = 5;
    if b.len() < pos + extra + 1 {
        return None;
    }
    let mut number = u64::from(first & mask);
    for i in 0..extra {
        let c = b[pos + i];
        if c & 0xC0 != 0x80 {
            return None;
        }
        number = (number << 6) | u64::from(c & 0x3F);
    }
    pos += extra;
    let block_size = match bs_code {
        1 => 192,
        2..=5 => 576 << (bs_code - 2),
        6 => {
            pos += 1;
            u32::from(*b.get(pos - 1)?) + 1
        }
        7 => {
            pos += 2;
            u32::from(u16::from_be_bytes([*b.get(pos - 2)?, *b.get(pos - 1)?])) + 1
        }
        _ => 256 << (bs_code - 8),
    };
    pos += match sr_code {
        12 => 1,
        13 | 14 => 2,
        _ => 0,
    };
    let crc = *b.get(pos)?;
    if crc8(&b[..pos]) != crc {
        return None;
    }
    Some(FrameHeader {
        len: pos + 1,
        block_size,
        number,
        variable_block_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crcs_match_known_values() {
        // CRC-8/SMBUS ("123456789") = 0xF4; CRC-16/UMTS (BUYPASS) = 0xFEE8.
        assert_eq!(crc8(b"123456789"), 0xF4);
        let crc = b"123456789".iter().fold(0u16, |c, &b| crc16_update(c, b));
        assert_eq!(crc, 0xFEE8);
        let with_crc = [b"123456789".as_slice(), &crc.to_be_bytes()].concat();
        assert_eq!(with_crc.iter().fold(0u16, |c, &b| crc16_update(c, b)), 0);
    }

    #[test]
    fn streaminfo_patch_round_trips() {
        let mut p = [0u8; STREAMINFO_LEN];
        // 48000 Hz, 8 channels, 24 bits: rate<<44 | (ch-1)<<41 | (bps-1)<<36
        let packed: u64 = (48000u64 << 44) | (7 << 41) | (23 << 36);
        p[10..18].copy_from_slice(&packed.to_be_bytes());
        StreamInfo::patch(&mut p, 0xA_BCDE_F012, [7; 16]);
        let si = StreamInfo::parse(&p);
        assert_eq!(
            (si.sample_rate, si.channels, si.bits_per_sample),
            (48000, 8, 24)
        );
        assert_eq!(si.total_samples, 0xA_BCDE_F012);
        assert_eq!(si.md5, [7; 16]);
    }

    #[test]
    fn frame_headers_parse_and_refuse_garbage() {
        // Fixed block size 4096 (code 12), 48 kHz (code 10), stereo (1), 16-bit (4), frame 5.
        let mut h = vec![0xFF, 0xF8, 0xCA, 0x18, 0x05];
        h.push(crc8(&h));
        let fh = parse_frame_header(&h).unwrap();
        assert_eq!(
            (fh.len, fh.block_size, fh.number, fh.variable_block_size),
            (6, 4096, 5, false)
        );
        let mut bad = h.clone();
        bad[5] ^= 1;
        assert_eq!(parse_frame_header(&bad), None);
        assert_eq!(parse_frame_header(&[0xFF, 0xF8]), None);
        assert_eq!(parse_frame_header(&[0u8; 16]), None);
    }

    #[test]
    fn multi_byte_frame_numbers_decode() {
        // Frame 1000 = 0b1111101000: two bytes 110_01111 10_101000.
        let mut h = vec![0xFF, 0xF8, 0xCA, 0x18, 0xCF, 0xA8];
        h.push(crc8(&h));
        assert_eq!(parse_frame_header(&h).unwrap().number, 1000);
    }

    #[test]
    fn vorbis_comment_layout() {
        let vc = VorbisComments {
            vendor: "v".into(),
            tags: vec![("A".into(), "b".into())],
        };
        assert_eq!(
            vc.to_block_payload(),
            [1, 0, 0, 0, b'v', 1, 0, 0, 0, 3, 0, 0, 0, b'A', b'=', b'b']
        );
        assert_eq!(vc.get("a"), Some("b"));
    }
}
