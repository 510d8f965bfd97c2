//! Recording jobs on the wire: what a job asks for, and the messages that
//! lease, run and finish it.
//!
//! ```text
//! node → server  nodes/{node}/jobs      JobReport  (claim | heartbeat | update | deleted)
//! server → node  nodes/{node}/cmd/jobs  JobCommand (offer | lease | stop | revoked | wake | delete)
//! ```
//!
//! The exchange:
//! 1. An idle node sends `claim` with its free slots and the jobs it holds.
//!    The server leases queued jobs for that node atomically and answers with
//!    one `offer` per job; a job leased to the node but missing from `held`
//!    (its offer was lost) is offered again with the same lease. A `wake`
//!    tells an idle node that work is waiting, so it claims at once.
//! 2. The node starts the take and reports `update{state: running}`, then
//!    sends `heartbeat`s; each is answered with `lease` (extended) or
//!    `revoked` (the lease is no longer current: stop, keep the audio).
//! 3. `stop` asks the node to finalize the take (kept, `completed`), or with
//!    `cancel` to end it as `cancelled` (the file is still kept on the node:
//!    a command never destroys audio).
//! 4. The final `update` (`completed`, `failed` or `cancelled`) carries a
//!    [`RecordingReport`]. Updates go through the node's durable outbox and
//!    are acknowledged on `cmd/ack`; the server applies each message id once.
//!
//! 5. `delete` (decision 0020) orders the node to delete a take an operator
//!    deleted: every file of it and its place on the upload queue. The node
//!    answers `deleted` through its outbox once the files are gone (also when
//!    they already were: the order is idempotent); until then the server
//!    sends the order again with its answer to each claim. A node refuses
//!    nothing but a take it still records, which it deletes when the order
//!    comes again after the take ended.
//!
//! Every command and update names the lease id (fencing token) it is about; a
//! message with a lease that is not the job's current one is refused.
//! Lease lengths travel as durations, never as wall-clock deadlines, so a node
//! whose clock jumps still renews in time (it measures with a monotonic clock).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::channel_map::{ChannelMap, MapError};
use crate::envelope::Payload;
use crate::ids::JobId;
use crate::payload::{MAX_DETAIL_TEXT, MAX_SHORT_TEXT};
use crate::state::JobState;

/// Longest take a job may ask for: 31 days. Longer recordings are open-ended.
pub const MAX_DURATION_S: u32 = 31 * 24 * 3600;

/// Most jobs one node runs at once.
pub const MAX_NODE_JOBS: usize = 64;

/// Most jobs a node reports holding in one claim: the ones it runs and the
/// ones whose final report the server has not acknowledged yet.
pub const MAX_HELD_JOBS: usize = 256;

/// Most files listed in one recording report (`file_count` has them all).
pub const MAX_REPORTED_FILES: usize = 256;

/// The device a job records from when it names none: the node's configured device.
pub const DEFAULT_DEVICE: &str = "default";

/// Codecs a job can record to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CodecName {
    Flac,
    Wav,
    /// WAV that switches to RF64 from the first byte (for takes that will pass 4 GiB).
    Rf64,
}

impl CodecName {
    pub fn as_str(self) -> &'static str {
        match self {
            CodecName::Flac => "flac",
            CodecName::Wav => "wav",
            CodecName::Rf64 => "rf64",
        }
    }

    /// The file extension of takes in this codec.
    pub fn extension(self) -> &'static str {
        match self {
            CodecName::Flac => "flac",
            CodecName::Wav | CodecName::Rf64 => "wav",
        }
    }
}

fn default_bits() -> u8 {
    24
}

fn default_flac_level() -> u8 {
    5
}

/// How a take is encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordingProfile {
    pub codec: CodecName,
    /// Bits per sample in the file: 16, 24 or 32.
    #[serde(default = "default_bits")]
    pub bits: u8,
    /// FLAC compression level, 0–8 (ignored for WAV).
    #[serde(default = "default_flac_level")]
    pub flac_level: u8,
    /// Split the take into files of this many seconds (absent: one file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_s: Option<u32>,
}

impl Default for RecordingProfile {
    fn default() -> Self {
        RecordingProfile {
            codec: CodecName::Flac,
            bits: default_bits(),
            flac_level: default_flac_level(),
            segment_s: None,
        }
    }
}

/// What a job records. The node is the job's, not the spec's: a spec travels
/// only to the node that runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobSpec {
    /// Capture device on the node; [`DEFAULT_DEVICE`] is its configured one.
    #[serde(default = "default_device")]
    pub device: String,
    /// Channel map in the text form of [`crate::channel_map`] (`3,4`, `1+2`, …);
    /// absent: every device channel in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<String>,
    #[serde(default)]
    pub profile: RecordingProfile,
    /// Length of the take in seconds; absent: until stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u32>,
    /// The appliance's watchdog rules for this take's channels while it
    /// records (its schedule's watchdog policy); absent: the node's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<crate::watchdog::WatchdogRules>,
}

fn default_device() -> String {
    DEFAULT_DEVICE.into()
}

impl JobSpec {
    /// Checks that need no knowledge of the node.
    pub fn validate(&self) -> Result<(), String> {
        check_short("device", &self.device)?;
        if self.device.is_empty() {
            return Err("device is empty".into());
        }
        if let Some(c) = &self.channels {
            check_short("channels", c)?;
        }
        if !matches!(self.profile.bits, 16 | 24 | 32) {
            return Err(format!(
                "{}-bit files are not supported; use 16, 24 or 32",
                self.profile.bits
            ));
        }
        if self.profile.flac_level > 8 {
            return Err(format!(
                "FLAC level {} does not exist; use 0 to 8",
                self.profile.flac_level
            ));
        }
        if self.profile.segment_s == Some(0) {
            return Err("segment length must be at least one second".into());
        }
        if let Some(rules) = &self.watchdog {
            rules.validate()?;
        }
        match self.duration_s {
            Some(0) => Err("duration must be at least one second".into()),
            Some(d) if d > MAX_DURATION_S => Err(format!(
                "duration {d} s is longer than {MAX_DURATION_S} s; make the job open-ended instead"
            )),
            _ => Ok(()),
        }
    }

    /// The channel map for a device with `device_channels` channels.
    pub fn channel_map(&self, device_channels: usize) -> Result<ChannelMap, MapError> {
        match &self.channels {
            None => Ok(ChannelMap::identity(device_channels)),
            Some(text) => ChannelMap::parse(text, device_channels),
        }
    }
}

/// One file of a finished take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordedFile {
    /// File name on the node (no directory part).
    pub name: String,
    /// Samples per channel.
    pub frames: u64,
    pub bytes: u64,
}

/// What a job recorded, sent with its final update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordingReport {
    /// The first [`MAX_REPORTED_FILES`] files, in order.
    pub files: Vec<RecordedFile>,
    /// How many files the take has.
    pub file_count: u32,
    /// Samples per channel in all files.
    pub frames: u64,
    pub sample_rate: u32,
    pub channels: u16,
    pub bits: u8,
    /// Capture time of the first sample, ms since the Unix epoch (UTC).
    pub start_unix_ms: u64,
    /// Gaps (overruns, device loss) inside the take.
    pub gaps: u32,
    /// True when the take was cut by a crash or power loss and recovered on
    /// the node's next start: it ends at the last durable write.
    #[serde(default)]
    pub recovered: bool,
}

/// An update to a job's state, from the node that holds its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JobUpdate {
    pub job_id: JobId,
    pub lease_id: u64,
    /// `running`, `completed`, `failed` or `cancelled`.
    pub state: JobState,
    /// When the change happened on the node, ms since the Unix epoch (UTC).
    pub at_ms: u64,
    /// For people: why it failed, what was recovered.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingReport>,
    /// Set on the updates of a job the node started by itself (lease id 0):
    /// what the server needs to reconcile it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autonomous: Option<Box<AutonomousStart>>,
}

/// A scheduled occurrence a node started on its own while the server was
/// unreachable. Its job id is [`JobId::for_occurrence`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AutonomousStart {
    pub schedule: crate::ScheduleId,
    /// The schedule's revision the node went by.
    pub revision: u64,
    /// The occurrence's key.
    pub occurrence: String,
    pub spec: JobSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Published by a node on `nodes/{node}/jobs`, QoS 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobReport {
    /// Ask for work.
    Claim {
        /// How many more jobs the node can run now.
        free_slots: u16,
        /// Jobs the node runs, and finished ones whose final report is not
        /// acknowledged yet: not offered again.
        held: Vec<JobId>,
    },
    /// The node still runs the job: renew its lease.
    Heartbeat { job_id: JobId, lease_id: u64 },
    /// A state change (sent through the node's durable outbox).
    Update(JobUpdate),
    /// The take of `job_id` is deleted from the node as ordered (`delete`),
    /// files and upload queue (sent through the node's durable outbox).
    Deleted { job_id: JobId },
}

impl JobReport {
    /// States a node may report.
    pub const REPORTABLE: [JobState; 4] = [
        JobState::Running,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];
}

impl Payload for JobReport {
    const KIND: &'static str = "job report";
    fn validate(&self) -> Result<(), String> {
        match self {
            JobReport::Claim { held, .. } if held.len() > MAX_HELD_JOBS => Err(format!(
                "{} held jobs; the limit is {MAX_HELD_JOBS}",
                held.len()
            )),
            JobReport::Claim { .. } | JobReport::Heartbeat { .. } | JobReport::Deleted { .. } => {
                Ok(())
            }
            JobReport::Update(u) => {
                if !JobReport::REPORTABLE.contains(&u.state) {
                    return Err(format!("a node cannot report the state {:?}", u.state));
                }
                check_detail(&u.detail)?;
                if let Some(a) = &u.autonomous {
                    if u.lease_id != 0 {
                        return Err("an autonomous update has lease id 0".into());
                    }
                    check_short("occurrence", &a.occurrence)?;
                    a.spec.validate()?;
                    crate::schedule::normalise_tags(&a.tags)?;
                }
                if let Some(r) = &u.recording {
                    if r.files.len() > MAX_REPORTED_FILES {
                        return Err(format!(
                            "{} files listed; the limit is {MAX_REPORTED_FILES}",
                            r.files.len()
                        ));
                    }
                    for f in &r.files {
                        check_short("file name", &f.name)?;
                        let plain = !f.name.is_empty()
                            && f.name != ".."
                            && !f.name.contains(['/', '\\', '"'])
                            && !f.name.chars().any(char::is_control);
                        if !plain {
                            return Err(format!("{:?} is not a plain file name", f.name));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Published by the server on `nodes/{node}/cmd/jobs`, QoS 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobCommand {
    /// Run this job under this lease.
    Offer {
        job_id: JobId,
        lease_id: u64,
        /// The lease lasts this long from receipt unless renewed.
        lease_ms: u32,
        spec: JobSpec,
    },
    /// The lease was renewed for `lease_ms` from now.
    Lease {
        job_id: JobId,
        lease_id: u64,
        lease_ms: u32,
    },
    /// Finalize the take and keep it; `cancel` ends the job as cancelled.
    Stop {
        job_id: JobId,
        lease_id: u64,
        #[serde(default)]
        cancel: bool,
    },
    /// This lease is no longer the job's: stop the take (keep the file) and
    /// send nothing more under it.
    Revoked {
        job_id: JobId,
        lease_id: u64,
        reason: String,
    },
    /// Work is waiting: claim now.
    Wake,
    /// An operator deleted this job's recording: delete every file of its
    /// take and drop them from the upload queue, then report `deleted`.
    Delete { job_id: JobId },
}

impl Payload for JobCommand {
    const KIND: &'static str = "job command";
    fn validate(&self) -> Result<(), String> {
        match self {
            JobCommand::Offer { spec, .. } => spec.validate(),
            JobCommand::Revoked { reason, .. } => check_detail(reason),
            _ => Ok(()),
        }
    }
}

fn check_short(field: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_SHORT_TEXT {
        return Err(format!(
            "{field} is {} bytes; the limit is {MAX_SHORT_TEXT}",
            s.len()
        ));
    }
    Ok(())
}

fn check_detail(s: &str) -> Result<(), String> {
    if s.len() > MAX_DETAIL_TEXT {
        return Err(format!(
            "detail is {} bytes; the limit is {MAX_DETAIL_TEXT}",
            s.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    fn spec() -> JobSpec {
        JobSpec {
            device: DEFAULT_DEVICE.into(),
            channels: Some("3,4".into()),
            profile: RecordingProfile::default(),
            duration_s: Some(60),
            watchdog: None,
        }
    }

    #[test]
    fn reports_and_commands_round_trip_with_a_type_tag() {
        let id = JobId::new(1_000);
        let offer = Envelope::stamped(
            5,
            JobCommand::Offer {
                job_id: id,
                lease_id: 7,
                lease_ms: 30_000,
                spec: spec(),
            },
        );
        let bytes = offer.encode();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(r#""type":"offer""#), "{text}");
        assert_eq!(Envelope::<JobCommand>::decode(&bytes).unwrap(), offer);

        let update = Envelope::stamped(
            6,
            JobReport::Update(JobUpdate {
                job_id: id,
                lease_id: 7,
                state: JobState::Completed,
                at_ms: 6,
                detail: String::new(),
                recording: None,
                autonomous: None,
            }),
        );
        let bytes = update.encode();
        assert!(
            std::str::from_utf8(&bytes)
                .unwrap()
                .contains(r#""type":"update""#)
        );
        assert_eq!(Envelope::<JobReport>::decode(&bytes).unwrap(), update);

        // The order to delete a take and the node's answer name only the job.
        let order = Envelope::stamped(7, JobCommand::Delete { job_id: id });
        let bytes = order.encode();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(r#""type":"delete""#), "{text}");
        assert_eq!(Envelope::<JobCommand>::decode(&bytes).unwrap(), order);
        let done = Envelope::stamped(8, JobReport::Deleted { job_id: id });
        let bytes = done.encode();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(r#""type":"deleted""#), "{text}");
        assert_eq!(Envelope::<JobReport>::decode(&bytes).unwrap(), done);
    }

    #[test]
    fn a_minimal_spec_gets_the_documented_defaults() {
        let s: JobSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(s.device, "default");
        assert_eq!(s.profile.codec, CodecName::Flac);
        assert_eq!((s.profile.bits, s.profile.flac_level), (24, 5));
        assert_eq!(s.duration_s, None);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let mut s = spec();
        s.profile.bits = 20;
        assert!(s.validate().unwrap_err().contains("20-bit"));
        let mut s = spec();
        s.duration_s = Some(0);
        assert!(s.validate().unwrap_err().contains("at least one second"));
        let mut s = spec();
        s.profile.flac_level = 9;
        assert!(s.validate().unwrap_err().contains("0 to 8"));
        let mut s = spec();
        s.device = "x".repeat(MAX_SHORT_TEXT + 1);
        assert!(s.validate().is_err());
        assert!(
            spec().channel_map(2).is_err(),
            "channels 3,4 on a stereo device"
        );
        assert_eq!(
            spec().channel_map(8).unwrap().sources().collect::<Vec<_>>(),
            [2, 3]
        );
    }

    #[test]
    fn nodes_cannot_report_server_side_states_or_unsafe_names() {
        let update = |state, name: &str| {
            JobReport::Update(JobUpdate {
                job_id: JobId::new(1),
                lease_id: 1,
                state,
                at_ms: 1,
                detail: String::new(),
                recording: Some(RecordingReport {
                    files: vec![RecordedFile {
                        name: name.into(),
                        frames: 1,
                        bytes: 1,
                    }],
                    file_count: 1,
                    frames: 1,
                    sample_rate: 48_000,
                    channels: 2,
                    bits: 24,
                    start_unix_ms: 1,
                    gaps: 0,
                    recovered: false,
                }),
                autonomous: None,
            })
        };
        assert!(update(JobState::Completed, "take.flac").validate().is_ok());
        assert!(update(JobState::Lost, "take.flac").validate().is_err());
        assert!(update(JobState::Queued, "take.flac").validate().is_err());
        for bad in ["../x.flac", "a/b.flac", "", ".."] {
            assert!(
                update(JobState::Completed, bad).validate().is_err(),
                "{bad}"
            );
        }
        let claim = JobReport::Claim {
            free_slots: 1,
            held: vec![JobId::new(1); MAX_HELD_JOBS + 1],
        };
        assert!(claim.validate().is_err());
    }
}
