//! The envelope every payload travels in, and the one decoder for all of them.
//!
//! Wire format (JSON, UTF-8): the envelope fields and the payload's own fields
//! side by side in one object, so dashboards read `state` or `channels` directly:
//!
//! ```json
//! {"v":1,"msg_id":"0192…","sent_at_ms":1764400000000,"state":"online", …}
//! ```
//!
//! Versioning: `v` changes only for incompatible changes. Within one version,
//! fields may be added; decoders ignore fields they do not know. A message with a
//! different `v` is refused with [`DecodeError::UnsupportedVersion`] before its body
//! is read.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::MessageId;

/// The schema version this build writes and accepts.
pub const SCHEMA_VERSION: u16 = 1;

/// Largest payload accepted on any topic; anything bigger is refused before
/// parsing. A meter frame for [`crate::payload::MAX_CHANNELS`] channels is
/// about 40 KiB when quiet and about 110 KiB with every field at its widest
/// (every flag raised, nine-digit levels): the bound has room for that, and a
/// test keeps it so.
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;

/// A payload type: what it is called in errors, and the checks that serde's
/// structure alone does not express (bounds, finite numbers).
pub trait Payload: Serialize + DeserializeOwned {
    const KIND: &'static str;
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A message: the envelope fields beside the payload's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "{T}Message")]
pub struct Envelope<T> {
    /// Schema version, [`SCHEMA_VERSION`] when written by this build.
    pub v: u16,
    /// Unique per message; receivers de-duplicate on it.
    pub msg_id: MessageId,
    /// When the sender created the message, milliseconds since the Unix epoch (UTC).
    pub sent_at_ms: u64,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{kind} payload is {len} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    TooLarge { kind: &'static str, len: usize },
    #[error("{kind} payload is not valid JSON of the expected shape: {detail}")]
    Malformed { kind: &'static str, detail: String },
    #[error("{kind} payload has no schema version field \"v\"")]
    MissingVersion { kind: &'static str },
    #[error(
        "{kind} payload has schema version {found}; this build speaks version {SCHEMA_VERSION}"
    )]
    UnsupportedVersion { kind: &'static str, found: u64 },
    #[error("{kind} payload is out of bounds: {detail}")]
    Invalid { kind: &'static str, detail: String },
}

impl<T: Payload> Envelope<T> {
    pub fn new(msg_id: MessageId, sent_at_ms: u64, body: T) -> Self {
        Envelope {
            v: SCHEMA_VERSION,
            msg_id,
            sent_at_ms,
            body,
        }
    }

    /// A new envelope for a message created now (`unix_ms`), with a fresh id.
    pub fn stamped(unix_ms: u64, body: T) -> Self {
        Envelope::new(MessageId::new(unix_ms), unix_ms, body)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising these types cannot fail: no maps with non-string keys, no
        // non-finite floats reach here (payload constructors clamp them).
        serde_json::to_vec(self).expect("protocol payloads always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let kind = T::KIND;
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(DecodeError::TooLarge {
                kind,
                len: bytes.len(),
            });
        }
        let malformed = |e: serde_json::Error| DecodeError::Malformed {
            kind,
            detail: e.to_string(),
        };

        // Read the version first, so a newer sender gets "unsupported version"
        // rather than a confusing complaint about some field.
        #[derive(Deserialize)]
        struct VersionProbe {
            v: Option<u64>,
        }
        let probe: VersionProbe = serde_json::from_slice(bytes).map_err(malformed)?;
        match probe.v {
            None => return Err(DecodeError::MissingVersion { kind }),
            Some(v) if v != u64::from(SCHEMA_VERSION) => {
                return Err(DecodeError::UnsupportedVersion { kind, found: v });
            }
            Some(_) => {}
        }
        let envelope: Envelope<T> = serde_json::from_slice(bytes).map_err(malformed)?;
        envelope
            .body
            .validate()
            .map_err(|detail| DecodeError::Invalid { kind, detail })?;
        Ok(envelope)
    }
}
