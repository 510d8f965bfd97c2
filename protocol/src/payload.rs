//! Payload bodies, one type per topic kind (see [`crate::topic`]).
//!
//! Levels are in dBFS relative to the full scale of the capture format. Silence
//! has no finite level in decibels; JSON has no infinity, so every level is
//! clamped to [`DBFS_FLOOR`] ("at or below the floor").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::Payload;

/// The lowest level reported, in dBFS. Below 32-bit integer resolution (−192.7 dBFS
/// for one LSB), so it means "digital silence".
pub const DBFS_FLOOR: f32 = -200.0;

/// Highest level accepted in a meter frame. Float sources can exceed full scale.
pub const DBFS_CEILING: f32 = 60.0;

/// Most channels one node reports in one meter frame.
pub const MAX_CHANNELS: usize = 512;

/// Bound on list fields in capability announcements.
pub const MAX_LIST_ITEMS: usize = 64;

/// Bound on short free-text fields (versions, names).
pub const MAX_SHORT_TEXT: usize = 128;

/// Clamp a level in dBFS into the range that goes on the wire.
pub fn clamp_dbfs(level: f32) -> f32 {
    if level.is_nan() {
        DBFS_FLOOR
    } else {
        level.clamp(DBFS_FLOOR, DBFS_CEILING)
    }
}

/// Which A/B root slot the appliance booted from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BootSlot {
    A,
    B,
    /// Not an A/B image (development machine, simulated appliance).
    None,
}

impl BootSlot {
    pub fn as_str(self) -> &'static str {
        match self {
            BootSlot::A => "a",
            BootSlot::B => "b",
            BootSlot::None => "none",
        }
    }
}

/// What a node can do, announced with its online status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Capabilities {
    /// Capture sources this build supports, e.g. `synthetic`, `alsa`.
    pub sources: Vec<String>,
    /// Channels the node's capture device delivers.
    pub channels: u16,
    /// Sample rates the node's capture device offers, in Hz.
    pub sample_rates: Vec<u32>,
    /// Codecs the node can record to, e.g. `flac`, `wav`.
    pub codecs: Vec<String>,
    /// How many recording jobs the node runs at once.
    pub max_jobs: u16,
    /// The capture devices the node's audio system names: the one it
    /// captures from (`in_use`; jobs record from it) and the others present.
    /// Absent from older agents.
    #[serde(default)]
    pub devices: Vec<CaptureDevice>,
}

/// A capture device on a node (an ALSA PCM name, or `synthetic`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CaptureDevice {
    /// What the node's configuration calls it, e.g. `hw:CARD=USB,DEV=0`.
    pub name: String,
    /// What the audio system says it is (at most 128 bytes).
    #[serde(default)]
    pub description: String,
    /// The node captures from this one.
    #[serde(default)]
    pub in_use: bool,
}

/// Whether the capture path got the real-time treatment it asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RealtimeStatus {
    /// The capture thread runs with `SCHED_FIFO`.
    pub sched_fifo: bool,
    /// The agent's memory is locked into RAM (`mlockall`).
    pub memory_locked: bool,
}

/// Why a node is offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OfflineReason {
    /// Published by the broker as the node's Last Will: the connection dropped.
    ConnectionLost,
    /// Published by the node itself during an orderly shutdown.
    Shutdown,
}

/// Retained on `nodes/{node}/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeStatus {
    Online {
        agent_version: String,
        slot: BootSlot,
        capabilities: Capabilities,
        /// Absent from older agents: read as "not granted".
        #[serde(default)]
        realtime: RealtimeStatus,
    },
    Offline {
        reason: OfflineReason,
    },
}

impl Payload for NodeStatus {
    const KIND: &'static str = "node status";
    fn validate(&self) -> Result<(), String> {
        if let NodeStatus::Online {
            agent_version,
            capabilities,
            ..
        } = self
        {
            check_text("agent_version", agent_version)?;
            check_list("capabilities.sources", &capabilities.sources)?;
            check_list("capabilities.sample_rates", &capabilities.sample_rates)?;
            check_list("capabilities.codecs", &capabilities.codecs)?;
            for s in capabilities.sources.iter().chain(&capabilities.codecs) {
                check_text("capability name", s)?;
            }
            check_list("capabilities.devices", &capabilities.devices)?;
            for d in &capabilities.devices {
                check_text("device name", &d.name)?;
                check_text("device description", &d.description)?;
            }
        }
        Ok(())
    }
}

/// Retained on `server/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ServerStatus {
    Online { server_version: String },
    Offline,
}

impl Payload for ServerStatus {
    const KIND: &'static str = "server status";
    fn validate(&self) -> Result<(), String> {
        match self {
            ServerStatus::Online { server_version } => check_text("server_version", server_version),
            ServerStatus::Offline => Ok(()),
        }
    }
}

/// A quality problem seen on a channel during a meter window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeterFlag {
    /// Samples reached full scale.
    Clipping,
    /// RMS below the low-signal threshold (but not silent).
    LowSignal,
    /// RMS below the silence threshold, or digital zero.
    Silence,
    /// A run of identical non-zero, non-clipped samples: a stuck converter or cable.
    Flatline,
    /// Nearly identical (or inverted) to the next channel: a doubled or
    /// polarity-swapped feed.
    Correlated,
}

impl MeterFlag {
    pub const ALL: [MeterFlag; 5] = [
        MeterFlag::Clipping,
        MeterFlag::LowSignal,
        MeterFlag::Silence,
        MeterFlag::Flatline,
        MeterFlag::Correlated,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`MeterFlag`]s; on the wire, a JSON list of names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MeterFlags(u8);

impl MeterFlags {
    pub fn insert(&mut self, flag: MeterFlag) {
        self.0 |= flag.bit();
    }
    pub fn contains(self, flag: MeterFlag) -> bool {
        self.0 & flag.bit() != 0
    }
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = MeterFlag> {
        MeterFlag::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }
}

impl FromIterator<MeterFlag> for MeterFlags {
    fn from_iter<I: IntoIterator<Item = MeterFlag>>(iter: I) -> Self {
        let mut f = MeterFlags::default();
        for flag in iter {
            f.insert(flag);
        }
        f
    }
}

impl JsonSchema for MeterFlags {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MeterFlags".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Quality flags raised in the window, as a list of names. Receivers ignore names they do not know.",
            "type": "array",
            "items": generator.subschema_for::<MeterFlag>(),
            "uniqueItems": true,
            "maxItems": 16
        })
    }
}

impl Serialize for MeterFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for MeterFlags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Unknown flag names from newer agents are ignored, not errors.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Known(MeterFlag),
            Other(serde::de::IgnoredAny),
        }
        let items: Vec<Item> = Vec::deserialize(d)?;
        if items.len() > 16 {
            return Err(serde::de::Error::custom("more than 16 meter flags"));
        }
        Ok(items
            .into_iter()
            .filter_map(|i| match i {
                Item::Known(f) => Some(f),
                Item::Other(_) => None,
            })
            .collect())
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_f32(v: &f32) -> bool {
    *v == 0.0
}

/// One channel's levels over a meter window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChannelMeter {
    /// Highest absolute sample, dBFS, clamped to [`DBFS_FLOOR`]..=[`DBFS_CEILING`].
    pub peak_dbfs: f32,
    /// Root mean square level, dBFS, clamped likewise.
    pub rms_dbfs: f32,
    /// Samples at or beyond full scale in the window.
    pub clipped: u32,
    /// Mean sample value as a fraction of full scale (−1..1).
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub dc_offset: f32,
    /// Longest run of identical non-zero, non-clipped samples, in frames.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub stuck_frames: u32,
    /// Correlation coefficient with the next channel (−1..1), if there is one
    /// and both carry signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_next: Option<f32>,
    #[serde(default, skip_serializing_if = "MeterFlags::is_empty")]
    pub flags: MeterFlags,
}

/// Published on `nodes/{node}/meters`, QoS 0, once per telemetry interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MeterFrame {
    /// Capture time of the window's last sample, ms since the Unix epoch (UTC).
    /// Receivers compare it with their clock to tell stale frames from live ones.
    pub captured_at_ms: u64,
    /// Length of the window the levels cover, in ms.
    pub window_ms: u32,
    pub sample_rate: u32,
    pub channels: Vec<ChannelMeter>,
    /// The node's counters, on telemetry frames (not on live ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<NodeCounters>,
}

/// What a node counted since its agent started (they restart from zero with
/// it, like Prometheus counters), sent with its telemetry frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeCounters {
    /// Device overruns: each one a gap in the audio.
    pub xruns: u64,
    /// Frames lost between capture and processing (ring overflow).
    pub frames_dropped: u64,
    /// Times the capture device was lost and came back.
    pub device_returns: u64,
    /// Bytes waiting in the durable outbox for the server's acknowledgement.
    pub outbox_bytes: u64,
    /// Recording files waiting for the server's confirmation (a gauge).
    #[serde(default)]
    pub upload_files: u64,
    /// Their size in bytes (a gauge).
    #[serde(default)]
    pub upload_bytes: u64,
}

impl Payload for MeterFrame {
    const KIND: &'static str = "meter frame";
    fn validate(&self) -> Result<(), String> {
        if self.channels.len() > MAX_CHANNELS {
            return Err(format!(
                "{} channels; the limit is {MAX_CHANNELS}",
                self.channels.len()
            ));
        }
        for (i, c) in self.channels.iter().enumerate() {
            let unit = |v: f32| (-1.0..=1.0).contains(&v);
            if !unit(c.dc_offset) || !c.correlation_next.is_none_or(unit) {
                return Err(format!(
                    "channel {i} dc_offset or correlation_next is outside -1..=1"
                ));
            }
            for (name, v) in [("peak_dbfs", c.peak_dbfs), ("rms_dbfs", c.rms_dbfs)] {
                if !(DBFS_FLOOR..=DBFS_CEILING).contains(&v) {
                    return Err(format!(
                        "channel {i} {name} is {v}; expected {DBFS_FLOOR}..={DBFS_CEILING}"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl MeterFrame {
    /// Fold the next frame (`later`, the window right after this one) into
    /// this one, so one frame covers both windows: peaks are the larger,
    /// RMS the power mean weighted by window length, clip counts add up,
    /// flags join; the correlation is the later window's. Frames with a
    /// different channel count do not merge: `later` replaces this one.
    pub fn merge(&mut self, later: &MeterFrame) {
        if later.channels.len() != self.channels.len() {
            *self = later.clone();
            return;
        }
        let (wa, wb) = (self.window_ms as f64, later.window_ms as f64);
        let total = (wa + wb).max(1.0);
        for (a, b) in self.channels.iter_mut().zip(&later.channels) {
            let power = |dbfs: f32| {
                if dbfs <= DBFS_FLOOR {
                    0.0
                } else {
                    10f64.powf(dbfs as f64 / 10.0)
                }
            };
            let mean_power = (power(a.rms_dbfs) * wa + power(b.rms_dbfs) * wb) / total;
            a.rms_dbfs = if mean_power > 0.0 {
                clamp_dbfs((10.0 * mean_power.log10()) as f32)
            } else {
                DBFS_FLOOR
            };
            a.peak_dbfs = a.peak_dbfs.max(b.peak_dbfs);
            a.clipped = a.clipped.saturating_add(b.clipped);
            a.dc_offset = ((a.dc_offset as f64 * wa + b.dc_offset as f64 * wb) / total) as f32;
            a.stuck_frames = a.stuck_frames.max(b.stuck_frames);
            a.correlation_next = b.correlation_next;
            a.flags = a.flags.iter().chain(b.flags.iter()).collect();
        }
        self.captured_at_ms = later.captured_at_ms;
        self.window_ms = self.window_ms.saturating_add(later.window_ms);
    }
}

/// Longest live-meter period one request asks for.
pub const MAX_LIVE_MS: u32 = 60_000;

/// Published by the server on `nodes/{node}/cmd/live`, QoS 0: publish live
/// meter frames on `nodes/{node}/live` for `for_ms` from receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LiveRequest {
    pub for_ms: u32,
}

impl Payload for LiveRequest {
    const KIND: &'static str = "live meter request";
    fn validate(&self) -> Result<(), String> {
        if self.for_ms == 0 || self.for_ms > MAX_LIVE_MS {
            return Err(format!(
                "for_ms is {}; expected 1..={MAX_LIVE_MS}",
                self.for_ms
            ));
        }
        Ok(())
    }
}

/// Bound on a health event's free-text detail.
pub const MAX_DETAIL_TEXT: usize = 512;

/// What a health event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthCondition {
    /// The capture device stopped delivering audio (unplugged, its server
    /// gone, a stalled driver). The take stays open; the agent reopens it
    /// with backoff and records the time it was gone as a gap.
    DeviceLost,
    /// Raised by the server: a job's lease expired before the node finished
    /// it (node down, partitioned or stuck). Cleared when the node returns
    /// the take.
    JobLost,
    /// Raised by the server: a scheduled occurrence is due but cannot start
    /// (its channels are held by another job, or the node cannot take it);
    /// it is retried until its window ends. Cleared when it starts or its
    /// window has passed.
    ScheduleDeferred,
    /// Raised by the server: a scheduled occurrence's window closed while it
    /// was deferred, so it was not recorded. Not cleared by itself.
    ScheduleMissed,
    /// A channel's level stayed below the low-signal threshold (subject
    /// `channel:N`): a fader down, a mic unplugged, a wrong input.
    LowSignal,
    /// A channel carried digital silence or next to nothing (subject
    /// `channel:N`): a dead input.
    Silence,
    /// A channel kept reaching full scale (subject `channel:N`).
    Clipping,
    /// A channel's samples stuck at one value (subject `channel:N`): a stuck
    /// converter or a broken cable.
    Flatline,
    /// Two neighbouring channels carried the same (or the inverted) signal
    /// (subject `channels:N+M`): a doubled feed or swapped polarity.
    Correlation,
    /// The capture kept overrunning: audio was lost. (A capture that
    /// delivers nothing at all is `device_lost`.)
    Xruns,
    /// The recordings' disk is nearly full: new takes may fail.
    DiskPressure,
    /// A take failed while recording (encoder or file error; subject
    /// `job:…`). Not cleared by itself: the take needs a look.
    EncoderFailure,
    /// Raised by the server: the node has been offline (its connection
    /// lost, or shut down) for longer than the server's `health.node_offline_after_ms`.
    NodeOffline,
    /// Raised by the server: the node is online but its telemetry stopped
    /// (no meter frame for `health.telemetry_stale_after_ms`): a hung agent.
    TelemetryStale,
    /// Finished takes do not reach the server. Subject empty: every upload
    /// has failed for the node's `upload.alert_after_s` (the server
    /// unreachable or failing), cleared by the next one that gets through;
    /// subject `file:{name}`: the server refused that file (it needs people),
    /// cleared when it is confirmed after all.
    UploadFailing,
    /// A new image was tried and did not come up healthy (it did not boot, or
    /// its agent never reached the fleet before the next reboot): the
    /// bootloader went back to the previous slot (subject `slot:a|b`, the one
    /// that failed). Not cleared by itself: the image needs a look.
    UpdateRolledBack,
}

impl HealthCondition {
    pub const ALL: [HealthCondition; 16] = [
        HealthCondition::DeviceLost,
        HealthCondition::JobLost,
        HealthCondition::ScheduleDeferred,
        HealthCondition::ScheduleMissed,
        HealthCondition::LowSignal,
        HealthCondition::Silence,
        HealthCondition::Clipping,
        HealthCondition::Flatline,
        HealthCondition::Correlation,
        HealthCondition::Xruns,
        HealthCondition::DiskPressure,
        HealthCondition::EncoderFailure,
        HealthCondition::NodeOffline,
        HealthCondition::TelemetryStale,
        HealthCondition::UploadFailing,
        HealthCondition::UpdateRolledBack,
    ];
}

impl HealthCondition {
    /// The name on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthCondition::DeviceLost => "device_lost",
            HealthCondition::JobLost => "job_lost",
            HealthCondition::ScheduleDeferred => "schedule_deferred",
            HealthCondition::ScheduleMissed => "schedule_missed",
            HealthCondition::LowSignal => "low_signal",
            HealthCondition::Silence => "silence",
            HealthCondition::Clipping => "clipping",
            HealthCondition::Flatline => "flatline",
            HealthCondition::Correlation => "correlation",
            HealthCondition::Xruns => "xruns",
            HealthCondition::DiskPressure => "disk_pressure",
            HealthCondition::EncoderFailure => "encoder_failure",
            HealthCondition::NodeOffline => "node_offline",
            HealthCondition::TelemetryStale => "telemetry_stale",
            HealthCondition::UploadFailing => "upload_failing",
            HealthCondition::UpdateRolledBack => "update_rolled_back",
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    /// The name used on the wire and in the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Whether a condition began or ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthChange {
    Raised,
    Cleared,
}

/// Published on `nodes/{node}/events`, QoS 1, not retained: a condition the
/// node detected began or ended. The server opens, de-duplicates and resolves
/// health events from these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthEvent {
    pub condition: HealthCondition,
    pub change: HealthChange,
    pub severity: Severity,
    /// When the condition began or ended, ms since the Unix epoch (UTC).
    pub at_ms: u64,
    /// For people: what happened, with the evidence.
    pub detail: String,
    /// What on the node it is about: `channel:3`, `device:hw:1`, `job:…`,
    /// `schedule:…/2026-11-29`; empty: the node as a whole. One condition of
    /// one subject is one health issue on the server.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
}

impl Payload for HealthEvent {
    const KIND: &'static str = "health event";
    fn validate(&self) -> Result<(), String> {
        check_text("subject", &self.subject)?;
        if self.detail.len() > MAX_DETAIL_TEXT {
            return Err(format!(
                "detail is {} bytes; the limit is {MAX_DETAIL_TEXT}",
                self.detail.len()
            ));
        }
        Ok(())
    }
}

/// Most message ids in one acknowledgement.
pub const MAX_ACK_IDS: usize = 256;

/// Published by the server on `nodes/{node}/cmd/ack`, QoS 1: these messages
/// from the node are durably stored, so the node may forget them. Sent again
/// for a duplicate, so a node whose first acknowledgement was lost still
/// learns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Ack {
    pub msg_ids: Vec<crate::MessageId>,
}

impl Payload for Ack {
    const KIND: &'static str = "acknowledgement";
    fn validate(&self) -> Result<(), String> {
        if self.msg_ids.len() > MAX_ACK_IDS {
            return Err(format!(
                "{} message ids; the limit is {MAX_ACK_IDS}",
                self.msg_ids.len()
            ));
        }
        Ok(())
    }
}

fn check_text(field: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_SHORT_TEXT {
        return Err(format!(
            "{field} is {} bytes; the limit is {MAX_SHORT_TEXT}",
            s.len()
        ));
    }
    Ok(())
}

fn check_list<T>(field: &str, items: &[T]) -> Result<(), String> {
    if items.len() > MAX_LIST_ITEMS {
        return Err(format!(
            "{field} has {} items; the limit is {MAX_LIST_ITEMS}",
            items.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_agent_s_status_has_no_devices_and_devices_are_bounded() {
        let older = r#"{"state":"online","agent_version":"0.1.0","slot":"a",
            "capabilities":{"sources":["alsa"],"channels":2,"sample_rates":[48000],
            "codecs":["flac"],"max_jobs":1}}"#;
        let status: NodeStatus = serde_json::from_str(older).unwrap();
        let NodeStatus::Online { capabilities, .. } = &status else {
            panic!("{status:?}")
        };
        assert!(capabilities.devices.is_empty());
        assert_eq!(status.validate(), Ok(()));
        let with = |devices: Vec<CaptureDevice>| {
            let mut s = status.clone();
            if let NodeStatus::Online { capabilities, .. } = &mut s {
                capabilities.devices = devices;
            }
            s.validate()
        };
        let device = |name: &str, description: &str| CaptureDevice {
            name: name.into(),
            description: description.into(),
            in_use: false,
        };
        assert_eq!(with(vec![device("hw:0", "USB")]), Ok(()));
        assert!(with(vec![device(&"x".repeat(MAX_SHORT_TEXT + 1), "")]).is_err());
        assert!(with(vec![device("hw:0", &"x".repeat(MAX_SHORT_TEXT + 1))]).is_err());
        assert!(with(vec![device("hw:0", ""); MAX_LIST_ITEMS + 1]).is_err());
    }

    fn frame(at: u64, window_ms: u32, peak: f32, rms: f32, clipped: u32) -> MeterFrame {
        MeterFrame {
            captured_at_ms: at,
            window_ms,
            sample_rate: 48_000,
            channels: vec![ChannelMeter {
                peak_dbfs: peak,
                rms_dbfs: rms,
                clipped,
                ..Default::default()
            }],
            counters: None,
        }
    }

    #[test]
    fn merged_frames_cover_both_windows() {
        let mut a = frame(1_000, 100, -12.0, -20.0, 0);
        a.channels[0].flags.insert(MeterFlag::LowSignal);
        let mut b = frame(1_100, 100, -3.0, -20.0, 4);
        b.channels[0].flags.insert(MeterFlag::Clipping);
        b.channels[0].correlation_next = Some(0.5);
        a.merge(&b);
        let ch = a.channels[0];
        assert_eq!((a.captured_at_ms, a.window_ms), (1_100, 200));
        assert_eq!(ch.peak_dbfs, -3.0, "the larger peak");
        assert!(
            (ch.rms_dbfs + 20.0).abs() < 1e-4,
            "equal powers: {}",
            ch.rms_dbfs
        );
        assert_eq!(ch.clipped, 4);
        assert_eq!(ch.correlation_next, Some(0.5));
        assert!(ch.flags.contains(MeterFlag::LowSignal) && ch.flags.contains(MeterFlag::Clipping));
        a.validate().unwrap();

        // A silent window halves the power: −3.01 dB, whatever the order.
        let mut loud = frame(0, 100, -6.0, -10.0, 0);
        loud.merge(&frame(100, 100, DBFS_FLOOR, DBFS_FLOOR, 0));
        assert!((loud.channels[0].rms_dbfs + 13.0103).abs() < 1e-3);
        let mut silent = frame(0, 100, DBFS_FLOOR, DBFS_FLOOR, 0);
        silent.merge(&silent.clone());
        assert_eq!(silent.channels[0].rms_dbfs, DBFS_FLOOR);
        // Weighted by window: 300 ms at −10 and 100 ms of silence is −11.25 dB.
        let mut long = frame(0, 300, -6.0, -10.0, 0);
        long.merge(&frame(300, 100, DBFS_FLOOR, DBFS_FLOOR, 0));
        assert!((long.channels[0].rms_dbfs + 11.249).abs() < 1e-3);
    }

    #[test]
    fn a_frame_with_other_channels_replaces_instead_of_merging() {
        let mut a = frame(0, 100, -1.0, -2.0, 0);
        let mut b = frame(100, 100, -5.0, -6.0, 0);
        b.channels.push(ChannelMeter::default());
        a.merge(&b);
        assert_eq!(a, b);
    }

    #[test]
    fn live_requests_are_bounded() {
        assert!(LiveRequest { for_ms: 30_000 }.validate().is_ok());
        assert!(LiveRequest { for_ms: 0 }.validate().is_err());
        assert!(
            LiveRequest {
                for_ms: MAX_LIVE_MS + 1
            }
            .validate()
            .is_err()
        );
    }
}
