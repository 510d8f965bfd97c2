//! Recording one take: capture → meter → FLAC, crash-safe.
//!
//! Files: the take is written to `{out}.part` and renamed to `{out}` when it is
//! finished, so a name without `.part` is always a complete file. After a crash
//! the `.part` file is made complete by [`recover_dir`] (also run by
//! `rakkr-agent recover DIR`). An existing `{out}` is never overwritten.
//!
//! Tags written into every file (Vorbis comments): `RAKKR_NODE`, `RAKKR_JOB`
//! (when given), `RAKKR_CHANNELS` (names), `RAKKR_START_UNIX_MS` (wall time of the
//! first sample), `RAKKR_SAMPLE_RATE`, and at the end `RAKKR_FRAMES`,
//! `RAKKR_XRUNS` and `RAKKR_GAPS` (`position+frames` pairs in samples per channel,
//! `?` for an unknown length).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rakkr_flac::{FileSummary, FlacError, StreamSpec, VorbisComments, encode_file};
use rakkr_protocol::payload::MeterFrame;

use crate::AGENT_VERSION;
use crate::capture::{Capture, Gap, GapKind, Metering};
use crate::channel_map::ChannelMap;
use crate::clock::Clock;
use crate::source::{CaptureError, CaptureSource};

/// Gap events kept per take; more are counted, not listed.
/// Bounded so the final tags always fit the file's 16 KiB of padding.
pub const MAX_GAPS_LISTED: usize = 500;

/// Suffix of a take being written.
pub const PART_SUFFIX: &str = ".part";

#[derive(Debug, Clone)]
pub struct TakeSpec {
    pub out: PathBuf,
    /// Bits per sample in the file: 16 or 24.
    pub bits: u8,
    pub compression_level: u8,
    /// `None`: until stopped.
    pub duration: Option<Duration>,
    /// Split the take into files of this length (`None`: one file). Files are
    /// named `{stem}.0001.{ext}`, …; no sample is lost or repeated between them.
    pub segment: Option<Duration>,
    /// Which device channels go into the file (`None`: all, in order).
    pub map: Option<ChannelMap>,
    /// Extra tags (node, job, channel names).
    pub tags: Vec<(String, String)>,
    /// How often written audio is made durable.
    pub sync_every: Duration,
    pub meter_interval: Duration,
    pub realtime: bool,
}

#[derive(Debug, Clone)]
pub struct TakeSummary {
    /// The take's files, in order (one unless segmented).
    pub files: Vec<(PathBuf, FileSummary)>,
    /// Samples per channel in all files.
    pub frames: u64,
    /// Gaps, positioned in the whole take.
    pub gaps: Vec<Gap>,
    pub xruns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0} already exists; a recording is never overwritten")]
    Exists(PathBuf),
    #[error(
        "{channels} channels: one FLAC file carries at most 8; choose up to 8 with a channel map"
    )]
    TooManyChannels { channels: u16 },
    #[error("{0}-bit files are not supported; use 16 or 24")]
    Bits(u8),
    #[error("{0}")]
    Map(String),
    #[error("cannot start capture: {0}")]
    Spawn(std::io::Error),
    #[error("capture failed after {frames} frames ({path} keeps them): {source}")]
    Capture {
        path: PathBuf,
        frames: u64,
        source: CaptureError,
    },
    #[error("writing {path} failed (the audio captured so far is kept): {source}")]
    Write { path: PathBuf, source: FlacError },
}

pub fn part_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(PART_SUFFIX);
    PathBuf::from(p)
}

/// Record from `source` into `spec.out` until the duration is reached or `stop`
/// is set. `on_meter` sees every meter frame as it is produced.
pub fn record_take(
    source: Box<dyn CaptureSource>,
    spec: &TakeSpec,
    clock: &dyn Clock,
    stop: &AtomicBool,
    mut on_meter: impl FnMut(&MeterFrame),
) -> Result<TakeSummary, RecordError> {
    let format = source.format();
    let map = match &spec.map {
        Some(m) if m.inputs() != usize::from(format.channels) => {
            return Err(RecordError::Map(format!(
                "the map {m} is for {} device channels; the device delivers {}",
                m.inputs(),
                format.channels
            )));
        }
        Some(m) => m.clone(),
        None => ChannelMap::identity(usize::from(format.channels)),
    };
    let identity = spec.map.is_none();
    let file_channels = map.outputs();
    if file_channels > 8 {
        return Err(RecordError::TooManyChannels {
            channels: file_channels as u16,
        });
    }
    if !matches!(spec.bits, 16 | 24) {
        return Err(RecordError::Bits(spec.bits));
    }
    let rate = u64::from(format.sample_rate);
    let limit = spec.duration.map(|d| d.as_millis() as u64 * rate / 1000);
    let segment_frames = spec
        .segment
        .map(|d| (d.as_millis() as u64 * rate / 1000).max(1));
    let first = file_path(&spec.out, segment_frames.map(|_| 1));
    if first.exists() {
        return Err(RecordError::Exists(first));
    }

    let mut comments = VorbisComments {
        vendor: format!("rakkr-agent {AGENT_VERSION}"),
        tags: spec.tags.clone(),
    };
    comments
        .tags
        .push(("RAKKR_SAMPLE_RATE".into(), format.sample_rate.to_string()));
    if !identity {
        comments
            .tags
            .push(("RAKKR_CHANNEL_MAP".into(), map.to_string()));
    }
    let flac_spec = StreamSpec {
        channels: file_channels as u8,
        bits_per_sample: spec.bits,
        sample_rate: format.sample_rate,
        compression_level: spec.compression_level,
        comments,
        sync_every_frames: (spec.sync_every.as_millis() as u64 * rate / 1000).max(1),
    };

    let start_ms = clock.unix_ms();
    let (capture, mut reader) =
        Capture::start(source, spec.realtime).map_err(RecordError::Spawn)?;
    let mut metering = Metering::new(format, spec.meter_interval);
    let shift = 32 - u32::from(spec.bits);
    // Gaps with take-wide positions. Shared by the body (which adds) and the
    // final tags (which read, later).
    let gaps: RefCell<Vec<Gap>> = RefCell::new(Vec::new());
    let gaps_unlisted = Cell::new(0u64);
    let mut converted: Vec<i32> =
        Vec::with_capacity(capture.period_frames * usize::from(format.channels) * 64);
    let mut files = Vec::new();
    let mut take_frames = 0u64;

    // One file per segment; segments split the stream at exact sample positions.
    let outcome = loop {
        let index = segment_frames.map(|_| files.len() as u32 + 1);
        let path = file_path(&spec.out, index);
        if path.exists() {
            break Err(RecordError::Exists(path));
        }
        let part = part_path(&path);
        let segment_start = take_frames;
        let segment_limit = match (limit, segment_frames) {
            (Some(l), Some(s)) => Some((l - take_frames).min(s)),
            (Some(l), None) => Some(l - take_frames),
            (None, s) => s,
        };
        let mut this_spec = flac_spec.clone();
        if let Some(i) = index {
            this_spec
                .comments
                .tags
                .push(("RAKKR_SEGMENT".into(), i.to_string()));
            this_spec.comments.tags.push((
                "RAKKR_SEGMENT_START_FRAME".into(),
                segment_start.to_string(),
            ));
        }
        let written = encode_file(
            &part,
            &this_spec,
            |enc| {
                loop {
                    let done = enc.frames();
                    if stop.load(Ordering::Relaxed)
                        || segment_limit.is_some_and(|l| done >= l)
                        || capture.failed()
                    {
                        return Ok(());
                    }
                    let max = segment_limit.map_or(usize::MAX, |l| (l - done) as usize);
                    let mut result = Ok(());
                    let n = reader.read(max, |samples| {
                        if result.is_err() {
                            return;
                        }
                        metering.push(samples, clock, |f| on_meter(&f));
                        if identity {
                            converted.clear();
                            converted.extend(samples.iter().map(|s| s >> shift));
                        } else {
                            map.apply(samples, shift, &mut converted);
                        }
                        result = enc.write(&converted);
                    });
                    result?;
                    reader.take_gaps(|g| {
                        let mut unlisted = gaps_unlisted.get();
                        add_gap(&mut gaps.borrow_mut(), &mut unlisted, g);
                        gaps_unlisted.set(unlisted);
                    });
                    if n == 0 {
                        reader.idle();
                    }
                }
            },
            |frames| {
                let xruns = capture.stats.xruns.load(Ordering::Relaxed);
                // This file's gaps, positioned within the file.
                let end = segment_start + frames;
                let here: Vec<Gap> = gaps
                    .borrow()
                    .iter()
                    .filter(|g| g.position >= segment_start && (g.position < end || frames == 0))
                    .map(|g| Gap {
                        position: g.position - segment_start,
                        ..*g
                    })
                    .collect();
                vec![
                    ("RAKKR_START_UNIX_MS".into(), start_ms.to_string()),
                    ("RAKKR_FRAMES".into(), frames.to_string()),
                    ("RAKKR_XRUNS".into(), xruns.to_string()),
                    ("RAKKR_GAPS".into(), format_gaps(&here, gaps_unlisted.get())),
                ]
            },
        );
        // Whatever happened, the part file is a complete FLAC file now: publish it.
        let published = publish(&part, &path);
        match written.and_then(|((), file)| published.map(|()| file)) {
            Ok(file) => {
                take_frames += file.frames;
                files.push((path, file));
            }
            Err(source) => break Err(RecordError::Write { path, source }),
        }
        let done = stop.load(Ordering::Relaxed)
            || capture.failed()
            || limit.is_some_and(|l| take_frames >= l)
            || segment_frames.is_none();
        if done {
            break Ok(());
        }
    };
    let xruns = capture.stats.xruns.load(Ordering::Relaxed);
    let captured = capture.stop();
    outcome?;
    if let Err(source) = captured {
        return Err(RecordError::Capture {
            path: spec.out.clone(),
            frames: take_frames,
            source,
        });
    }
    Ok(TakeSummary {
        files,
        frames: take_frames,
        gaps: gaps.into_inner(),
        xruns,
    })
}

/// The file for segment `index` of a take named `out` (`None`: unsegmented):
/// `concert.flac` → `concert.0001.flac`, `concert.0002.flac`, …
pub fn file_path(out: &Path, index: Option<u32>) -> PathBuf {
    match index {
        None => out.to_owned(),
        Some(i) => {
            let stem = out.file_stem().unwrap_or_default().to_string_lossy();
            let ext = out
                .extension()
                .map_or("flac".into(), |e| e.to_string_lossy());
            out.with_file_name(format!("{stem}.{i:04}.{ext}"))
        }
    }
}

/// Add `g` to the take's gap list: consecutive dropped periods are one hole;
/// past [`MAX_GAPS_LISTED`] gaps are only counted.
pub fn add_gap(gaps: &mut Vec<Gap>, unlisted: &mut u64, g: Gap) {
    if let Some(last) = gaps.last_mut()
        && g.kind == GapKind::Overflow
        && last.kind == g.kind
        && last.position == g.position
    {
        last.frames += g.frames;
    } else if gaps.len() < MAX_GAPS_LISTED {
        gaps.push(g);
    } else {
        *unlisted += 1;
    }
}

/// `position+frames,…` (frames `?` when unknown, `~N` when estimated from the
/// time a device was gone), then `+N more` if cut.
pub fn format_gaps(gaps: &[Gap], unlisted: u64) -> String {
    let mut s: Vec<String> = gaps
        .iter()
        .map(|g| match (g.kind, g.frames) {
            (GapKind::Xrun, 0) => format!("{}+?", g.position),
            (GapKind::DeviceLost, n) => format!("{}+~{n}", g.position),
            (_, n) => format!("{}+{n}", g.position),
        })
        .collect();
    if unlisted > 0 {
        s.push(format!("+{unlisted} more"));
    }
    s.join(",")
}

fn publish(part: &Path, out: &Path) -> Result<(), FlacError> {
    if out.exists() {
        return Err(FlacError::Io {
            path: out.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "appeared while recording; the take stays in the .part file",
            ),
        });
    }
    std::fs::rename(part, out).map_err(|e| FlacError::Io {
        path: part.display().to_string(),
        source: e,
    })?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FlacError::Io {
            path: dir.display().to_string(),
            source: e,
        })
}

/// One recovered take.
#[derive(Debug)]
pub struct Recovered {
    pub path: PathBuf,
    pub report: Result<rakkr_flac::RecoveryReport, FlacError>,
}

/// Complete every interrupted take (`*.flac.part`) in `dir` and give it its final
/// name. A take whose final name is taken keeps its `.part` name.
pub fn recover_dir(dir: &Path) -> std::io::Result<Vec<Recovered>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_string_lossy()
                .ends_with(&format!(".flac{PART_SUFFIX}"))
        })
        .collect();
    entries.sort();
    for part in entries {
        let final_path = PathBuf::from(
            part.to_string_lossy()
                .trim_end_matches(PART_SUFFIX)
                .to_owned(),
        );
        let report =
            rakkr_flac::recover(&part).and_then(|r| publish(&part, &final_path).map(|()| r));
        let path = if report.is_ok() { final_path } else { part };
        out.push(Recovered { path, report });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(position: u64, frames: u64, kind: GapKind) -> Gap {
        Gap {
            position,
            frames,
            kind,
        }
    }

    #[test]
    fn consecutive_drops_merge_and_the_list_is_bounded() {
        let (mut gaps, mut unlisted) = (Vec::new(), 0);
        for g in [
            gap(100, 64, GapKind::Overflow),
            gap(100, 64, GapKind::Overflow),
            gap(100, 0, GapKind::Xrun),
            gap(500, 64, GapKind::Overflow),
            gap(900, 4800, GapKind::DeviceLost),
        ] {
            add_gap(&mut gaps, &mut unlisted, g);
        }
        assert_eq!(
            format_gaps(&gaps, unlisted),
            "100+128,100+?,500+64,900+~4800"
        );
        for i in 0..MAX_GAPS_LISTED as u64 {
            add_gap(&mut gaps, &mut unlisted, gap(1000 + i, 0, GapKind::Xrun));
        }
        assert_eq!(gaps.len(), MAX_GAPS_LISTED);
        assert_eq!(unlisted, 4);
        assert!(format_gaps(&gaps, unlisted).ends_with(",+4 more"));
    }
}
