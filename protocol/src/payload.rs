//! Payload bodies, one type per topic kind (see [`crate::topic`]).
//!
//! Levels are in dBFS relative to the full scale of the capture format. Silence
//! has no finite level in decibels; JSON has no infinity, so every level is
//! clamped to [`DBFS_FLOOR`] ("at or below the floor").

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Whether the capture path got the real-time treatment it asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealtimeStatus {
    /// The capture thread runs with `SCHED_FIFO`.
    pub sched_fifo: bool,
    /// The agent's memory is locked into RAM (`mlockall`).
    pub memory_locked: bool,
}

/// Why a node is offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OfflineReason {
    /// Published by the broker as the node's Last Will: the connection dropped.
    ConnectionLost,
    /// Published by the node itself during an orderly shutdown.
    Shutdown,
}

/// Retained on `nodes/{node}/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
        }
        Ok(())
    }
}

/// Retained on `server/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// One channel's levels over a meter window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelMeter {
    /// Highest absolute sample, dBFS, clamped to [`DBFS_FLOOR`]..=[`DBFS_CEILING`].
    pub peak_dbfs: f32,
    /// Root mean square level, dBFS, clamped likewise.
    pub rms_dbfs: f32,
    /// Samples at or beyond full scale in the window.
    pub clipped: u32,
}

/// Published on `nodes/{node}/meters`, QoS 0, once per telemetry interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeterFrame {
    /// Capture time of the window's last sample, ms since the Unix epoch (UTC).
    /// Receivers compare it with their clock to tell stale frames from live ones.
    pub captured_at_ms: u64,
    /// Length of the window the levels cover, in ms.
    pub window_ms: u32,
    pub sample_rate: u32,
    pub channels: Vec<ChannelMeter>,
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
