//! The contract between Rakkr appliances and the fleet server.
//!
//! This crate is the single source of truth for:
//! - the MQTT topic tree under `rakkr/v1/` ([`topic`]): every topic string in the
//!   project is built and parsed here, nowhere else;
//! - the JSON payloads on those topics ([`payload`]), each wrapped in an
//!   [`Envelope`](envelope::Envelope) that carries a schema version and a unique
//!   message id;
//! - the lifecycle states of nodes, jobs, recordings and health events and the
//!   transitions allowed between them ([`state`]);
//! - recording jobs: what a job asks for and the messages that lease, run and
//!   finish it ([`job`]), with the channel-map text form ([`channel_map`]);
//! - recording delivery: the URL and file names of a take's upload, and its
//!   headers and bodies ([`upload`]);
//! - permission and role names ([`access`]).
//!
//! Invariants: the crate is pure (no IO, no async runtime, no clock reads: callers
//! pass timestamps and ids in); decoding never panics on any input and every
//! failure is a typed error.

pub mod access;
pub mod asyncapi;
pub mod backoff;
pub mod channel_map;
pub mod digest;
pub mod envelope;
pub mod ids;
pub mod job;
pub mod payload;
pub mod policy;
pub mod retention;
pub mod schedule;
pub mod state;
pub mod topic;
pub mod update;
pub mod upload;
pub mod watchdog;

pub use envelope::{DecodeError, Envelope, MAX_PAYLOAD_BYTES, SCHEMA_VERSION};
pub use ids::{IdError, JobId, MessageId, NodeId, ScheduleId, UpdateId};
pub use topic::{Topic, TopicError};
