//! Records kept in the store. Serialized as JSON inside the backend, so fields
//! can be added (with `#[serde(default)]`) without a migration.

use std::fmt;

use rakkr_protocol::payload::{BootSlot, Capabilities, HealthEvent, RealtimeStatus};
use rakkr_protocol::state::{JobState, Presence};
use rakkr_protocol::{MessageId, NodeId};
use serde::{Deserialize, Serialize};

/// A node as the server last knew it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub presence: Presence,
    /// From the last `online` status; kept while offline.
    pub details: Option<NodeDetails>,
    pub first_seen_ms: u64,
    /// When presence last changed.
    pub presence_since_ms: u64,
    /// When the server last heard anything from the node.
    pub last_seen_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDetails {
    pub agent_version: String,
    pub slot: BootSlot,
    pub capabilities: Capabilities,
    #[serde(default)]
    pub realtime: RealtimeStatus,
}

/// One status message to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatusUpdate {
    pub node: NodeId,
    pub presence: Presence,
    /// `Some` for `online` statuses.
    pub details: Option<NodeDetails>,
    pub received_ms: u64,
}

/// Job ids are UUIDv7, so they sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    pub fn new(now_ms: u64) -> JobId {
        JobId(rakkr_protocol::ids::uuid_v7(now_ms))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What to record. Grows with the recording-job issue (device, channel map, profile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub node: NodeId,
    /// `None`: open-ended, until stopped.
    pub duration_s: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Fencing token: unique and increasing across the store.
    pub id: u64,
    pub expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    pub created_ms: u64,
    pub lease: Option<Lease>,
}

/// A health event as a node sent it. Identified by the node and the message's
/// id, so a message delivered twice is stored once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthEventRecord {
    pub node: NodeId,
    pub msg_id: MessageId,
    pub event: HealthEvent,
    pub received_ms: u64,
}
