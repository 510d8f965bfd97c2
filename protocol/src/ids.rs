//! Identifiers that appear in topics and payloads.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest node id accepted. Node ids are topic levels and database keys, so they
/// are kept short and bounded.
pub const MAX_NODE_ID_LEN: usize = 64;

/// A node (appliance) identifier.
///
/// Invariant: 1 to [`MAX_NODE_ID_LEN`] bytes of ASCII lower-case letters, digits,
/// `-` and `_`, starting with a letter or digit. This keeps it safe as an MQTT topic
/// level (no `/`, `+`, `#`), as a file name and as a URL path segment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("node id is empty")]
    Empty,
    #[error("node id is {len} bytes long; the limit is {MAX_NODE_ID_LEN}")]
    TooLong { len: usize },
    #[error(
        "node id {id:?} has the character {ch:?} at position {pos}; \
         use lower-case letters, digits, '-' and '_', starting with a letter or digit"
    )]
    BadCharacter { id: String, ch: char, pos: usize },
}

impl NodeId {
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(IdError::TooLong { len: id.len() });
        }
        for (pos, ch) in id.chars().enumerate() {
            let allowed = ch.is_ascii_lowercase()
                || ch.is_ascii_digit()
                || (pos > 0 && (ch == '-' || ch == '_'));
            if !allowed {
                return Err(IdError::BadCharacter {
                    id: id.chars().take(MAX_NODE_ID_LEN).collect(),
                    ch,
                    pos,
                });
            }
        }
        Ok(NodeId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeId::new(s).map_err(serde::de::Error::custom)
    }
}

/// A UUIDv7 for something created at `unix_ms`: time-ordered, random below the
/// millisecond (from the operating system's generator).
pub fn uuid_v7(unix_ms: u64) -> uuid::Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        unix_ms / 1000,
        ((unix_ms % 1000) * 1_000_000) as u32,
    );
    uuid::Uuid::new_v7(ts)
}

/// A unique message id. Receivers de-duplicate on it.
///
/// Ids are UUIDv7: time-ordered, so they also sort roughly by creation time,
/// which keeps database indexes on them append-mostly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(uuid::Uuid);

impl schemars::JsonSchema for NodeId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NodeId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A node id: lower-case letters, digits, `-` and `_`, starting with a letter or digit.",
            "pattern": "^[a-z0-9][a-z0-9_-]*$",
            "minLength": 1,
            "maxLength": MAX_NODE_ID_LEN,
        })
    }
}

impl schemars::JsonSchema for MessageId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MessageId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "UUIDv7, unique per message; receivers de-duplicate on it.",
            "type": "string",
            "format": "uuid"
        })
    }
}

impl MessageId {
    /// A fresh id for a message created at `unix_ms` (milliseconds since the Unix epoch).
    /// The random part comes from the operating system's generator.
    pub fn new(unix_ms: u64) -> Self {
        MessageId(uuid_v7(unix_ms))
    }

    pub fn from_uuid(id: uuid::Uuid) -> Self {
        MessageId(id)
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An id that is a UUIDv7, so ids of one kind sort by creation time.
macro_rules! uuid_v7_id {
    ($(#[$doc:meta])* $name:ident, $schema_description:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A fresh id for something created at `unix_ms`.
            pub fn new(unix_ms: u64) -> Self {
                $name(uuid_v7(unix_ms))
            }

            pub fn from_u128(v: u128) -> Self {
                $name(uuid::Uuid::from_u128(v))
            }

            pub fn as_u128(&self) -> u128 {
                self.0.as_u128()
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "description": $schema_description,
                    "type": "string",
                    "format": "uuid"
                })
            }
        }
    };
}

uuid_v7_id!(
    /// An A/B image update's id.
    UpdateId,
    "An A/B image update's id (UUIDv7)."
);

uuid_v7_id!(
    /// A recording job's id.
    JobId,
    "A recording job's id (UUIDv7)."
);

impl JobId {
    /// The id of the first job of a schedule's occurrence, the same wherever
    /// it is computed: the server and a node that starts the occurrence on
    /// its own name the job alike. A UUIDv7 whose time is `at_ms` (when the
    /// occurrence starts) and whose other bits come from SHA-256 of the
    /// schedule id and the occurrence key.
    pub fn for_occurrence(schedule: ScheduleId, key: &str, at_ms: u64) -> JobId {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(b"rakkr occurrence job\0")
            .chain_update(schedule.as_u128().to_be_bytes())
            .chain_update(key.as_bytes())
            .finalize();
        let mut bits = [0u8; 10];
        bits.copy_from_slice(&digest[..10]);
        JobId(uuid::Builder::from_unix_timestamp_millis(at_ms, &bits).into_uuid())
    }
}

uuid_v7_id!(
    /// A recording schedule's id.
    ScheduleId,
    "A recording schedule's id (UUIDv7)."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_accept_the_documented_alphabet() {
        for ok in [
            "a",
            "node-1",
            "studio_b",
            "0abc",
            &"x".repeat(MAX_NODE_ID_LEN),
        ] {
            assert_eq!(NodeId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn node_ids_refuse_topic_and_path_characters() {
        assert_eq!(NodeId::new(""), Err(IdError::Empty));
        assert!(matches!(
            NodeId::new("x".repeat(65)),
            Err(IdError::TooLong { len: 65 })
        ));
        for bad in [
            "a/b", "a+", "#", "Node", "-lead", "_lead", "a b", "a.b", "é",
        ] {
            assert!(
                matches!(NodeId::new(bad), Err(IdError::BadCharacter { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn node_id_deserialization_validates() {
        assert!(serde_json::from_str::<NodeId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<NodeId>("\"a/b\"").is_err());
    }

    #[test]
    fn message_ids_are_unique_and_time_ordered() {
        let a = MessageId::new(1_000);
        let b = MessageId::new(1_000);
        let c = MessageId::new(2_000);
        assert_ne!(a, b);
        assert!(a < c && b < c);
    }
}
