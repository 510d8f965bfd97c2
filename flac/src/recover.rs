//! Recovering interrupted files, and reading our metadata back.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use md5::{Digest, Md5};

use crate::FlacError;
use crate::format::{
    BLOCK_HEADER, STREAMINFO_LEN, StreamInfo, TYPE_STREAMINFO, TYPE_VORBIS_COMMENT, VorbisComments,
    crc16_update, parse_frame_header,
};
use crate::libflac::FlacReader;

/// What [`recover`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// FLAC frames whose CRC verified and were kept.
    pub frames_kept: u64,
    /// Samples per channel in the recovered file.
    pub samples: u64,
    /// Bytes of torn or corrupt tail removed.
    pub bytes_cut: u64,
    /// STREAMINFO already had the right length and MD5 and nothing was cut.
    pub already_complete: bool,
}

/// The file's metadata: STREAMINFO, our comments, and where the audio starts.
struct Header {
    info: StreamInfo,
    comments: VorbisComments,
    audio_start: u64,
}

fn not_flac(path: &Path, detail: impl Into<String>) -> FlacError {
    FlacError::NotFlac {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

fn read_header(file: &File, path: &Path) -> Result<Header, FlacError> {
    let len = file.metadata().map_err(|e| FlacError::io(path, e))?.len();
    let read = |buf: &mut [u8], at: u64| -> Result<(), FlacError> {
        if at + buf.len() as u64 > len {
            return Err(not_flac(path, "the header is incomplete"));
        }
        file.read_exact_at(buf, at)
            .map_err(|e| FlacError::io(path, e))
    };
    let mut magic = [0u8; 4];
    read(&mut magic, 0)?;
    if &magic != b"fLaC" {
        return Err(not_flac(path, "no fLaC signature"));
    }
    let mut pos = 4u64;
    let mut info = None;
    let mut comments = VorbisComments::default();
    loop {
        let mut h = [0u8; BLOCK_HEADER];
        read(&mut h, pos)?;
        let block_len = (u64::from(h[1]) << 16) | (u64::from(h[2]) << 8) | u64::from(h[3]);
        let kind = h[0] & 0x7F;
        if kind == TYPE_STREAMINFO && block_len == STREAMINFO_LEN as u64 {
            let mut p = [0u8; STREAMINFO_LEN];
            read(&mut p, pos + BLOCK_HEADER as u64)?;
            info = Some(StreamInfo::parse(&p));
        } else if kind == TYPE_VORBIS_COMMENT && block_len <= 1 << 20 {
            let mut p = vec![0u8; block_len as usize];
            read(&mut p, pos + BLOCK_HEADER as u64)?;
            comments =
                parse_comments(&p).ok_or_else(|| not_flac(path, "malformed VORBIS_COMMENT"))?;
        }
        pos += BLOCK_HEADER as u64 + block_len;
        if h[0] & 0x80 != 0 {
            break;
        }
    }
    if pos > len {
        return Err(not_flac(path, "the header is incomplete"));
    }
    let info = info.ok_or_else(|| not_flac(path, "no STREAMINFO"))?;
    Ok(Header {
        info,
        comments,
        audio_start: pos,
    })
}

fn parse_comments(p: &[u8]) -> Option<VorbisComments> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn string(&mut self) -> Option<String> {
            let n = self.u32()? as usize;
            String::from_utf8(self.take(n)?.to_vec()).ok()
        }
    }
    let mut c = Cursor(p);
    let vendor = c.string()?;
    let count = c.u32()?;
    let mut tags = Vec::new();
    for _ in 0..count.min(10_000) {
        let entry = c.string()?;
        let (k, v) = entry.split_once('=')?;
        tags.push((k.to_owned(), v.to_owned()));
    }
    Some(VorbisComments { vendor, tags })
}

/// Byte offset of the first audio frame (the length of the header).
pub fn audio_offset(path: &Path) -> Result<u64, FlacError> {
    let file = File::open(path).map_err(|e| FlacError::io(path, e))?;
    Ok(read_header(&file, path)?.audio_start)
}

/// STREAMINFO and the Vorbis comments of a FLAC file.
pub fn read_stream_info(path: &Path) -> Result<(StreamInfo, VorbisComments), FlacError> {
    let file = File::open(path).map_err(|e| FlacError::io(path, e))?;
    let h = read_header(&file, path)?;
    Ok((h.info, h.comments))
}

/// Find where the last intact frame ends. Frames are found by walking from one
/// valid frame header to the next: a boundary is accepted only where the frame
/// before it has a zero CRC-16 and a valid header (CRC-8, the expected frame
/// number) follows. Streams the file in windows; memory stays bounded.
fn last_intact_end(
    file: &File,
    path: &Path,
    audio_start: u64,
    len: u64,
) -> Result<(u64, u64), FlacError> {
    const WINDOW: usize = 256 * 1024;
    const LOOKAHEAD: usize = 16;
    let mut buf = vec![0u8; WINDOW + LOOKAHEAD];
    let mut base = audio_start;
    let fill = |base: u64, buf: &mut Vec<u8>| -> Result<usize, FlacError> {
        let n = ((len - base) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], base)
            .map_err(|e| FlacError::io(path, e))?;
        Ok(n)
    };
    let mut filled = fill(base, &mut buf)?;

    let Some(first) = parse_frame_header(&buf[..filled]) else {
        return Ok((audio_start, 0));
    };
    let step = |h: &crate::format::FrameHeader| {
        if h.variable_block_size {
            u64::from(h.block_size)
        } else {
            1
        }
    };
    let mut expected = first.number + step(&first);
    let mut frame_start = audio_start;
    let mut min_next = audio_start + first.len as u64 + 2;
    let mut crc: u16 = 0;
    let mut kept = 0u64;
    let mut good_end = audio_start;
    let mut at = audio_start;
    while at < len {
        if at >= base + WINDOW as u64 && base + (filled as u64) < len {
            base = at;
            filled = fill(base, &mut buf)?;
        }
        let i = (at - base) as usize;
        let boundary = (at >= min_next && buf[i] == 0xFF && crc == 0)
            .then(|| parse_frame_header(&buf[i..filled]))
            .flatten()
            .filter(|h| h.number == expected);
        if let Some(h) = boundary {
            kept += 1;
            good_end = at;
            frame_start = at;
            expected = h.number + step(&h);
            min_next = at + h.len as u64 + 2;
        }
        crc = crc16_update(crc, buf[i]);
        at += 1;
    }
    if crc == 0 && frame_start < len && at >= min_next {
        kept += 1;
        good_end = len;
    }
    Ok((good_end, kept))
}

/// Make an interrupted (or any) FLAC file complete: keep every intact frame,
/// cut the torn tail, and write the true length and MD5 into STREAMINFO.
/// Idempotent; a complete file is left as it is.
pub fn recover(path: &Path) -> Result<RecoveryReport, FlacError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| FlacError::io(path, e))?;
    let header = read_header(&file, path)?;
    let len = file.metadata().map_err(|e| FlacError::io(path, e))?.len();
    let (good_end, frames_kept) = last_intact_end(&file, path, header.audio_start, len)?;
    let bytes_cut = len - good_end;
    if bytes_cut > 0 {
        file.set_len(good_end).map_err(|e| FlacError::io(path, e))?;
        file.sync_all().map_err(|e| FlacError::io(path, e))?;
    }

    // Decode what is left: its sample count and MD5 go into STREAMINFO.
    let mut reader = FlacReader::open(path)?;
    let width = usize::from(header.info.bits_per_sample).div_ceil(8);
    let mut md5 = Md5::new();
    let mut samples = 0u64;
    let mut bytes = Vec::new();
    while let Some(block) = reader.next_block()? {
        bytes.clear();
        bytes.extend(block.iter().flat_map(|s| {
            let le = s.to_le_bytes();
            le.into_iter().take(width)
        }));
        md5.update(&bytes);
        samples += (block.len() / usize::from(header.info.channels)) as u64;
    }
    drop(reader);
    let md5: [u8; 16] = md5.finalize().into();
    let already_complete =
        bytes_cut == 0 && header.info.total_samples == samples && header.info.md5 == md5;
    if !already_complete {
        let mut info = [0u8; STREAMINFO_LEN];
        file.read_exact_at(&mut info, 8)
            .map_err(|e| FlacError::io(path, e))?;
        StreamInfo::patch(&mut info, samples, md5);
        file.write_all_at(&info, 8)
            .map_err(|e| FlacError::io(path, e))?;
        file.sync_all().map_err(|e| FlacError::io(path, e))?;
    }
    Ok(RecoveryReport {
        frames_kept,
        samples,
        bytes_cut,
        already_complete,
    })
}
