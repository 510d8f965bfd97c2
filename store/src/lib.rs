//! The fleet server's durable state, behind one trait.
//!
//! [`Store`] is written so that more than one backend can implement it: redb
//! ([`RedbStore`], embedded, the default) now and PostgreSQL when a site outgrows
//! one machine. The rules every backend keeps:
//!
//! - **Each method is one transaction.** It either happens completely or not at
//!   all; no caller ever sees a half-applied change. Multi-step domain operations
//!   are methods here, not sequences of calls in the server.
//! - **Claims are atomic.** [`Store::claim_next_job`] moves exactly one queued job
//!   to `leased` and hands out a lease id that no other claim ever receives, also
//!   when many callers race (redb: its single writer serializes write
//!   transactions; PostgreSQL: `SELECT … FOR UPDATE SKIP LOCKED` in one statement).
//! - **Lease ids are fencing tokens**: strictly increasing across the whole store,
//!   so a stale holder can always be told from the current one.
//! - **State changes follow [`rakkr_protocol::state`]**; an illegal transition is
//!   a [`StoreError::Transition`], never a silent overwrite.
//! - **Time is an argument.** Backends never read a clock; callers pass `now_ms`.
//!
//! Methods are synchronous. The async server calls them on a blocking thread
//! pool; a PostgreSQL backend would use a synchronous client with a pool.

mod redb_store;
mod types;

pub use redb_store::RedbStore;
pub use types::*;

use rakkr_protocol::NodeId;
use rakkr_protocol::state::TransitionError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store backend error: {0}")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the store was written by a newer version (schema {found}, this build reads {supported})"
    )]
    NewerSchema { found: u64, supported: u64 },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("no such job: {0}")]
    NoSuchJob(JobId),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Health events kept per node (a bound, so a chattering node cannot fill the disk).
pub const MAX_HEALTH_EVENTS_PER_NODE: usize = 10_000;

pub trait Store: Send + Sync + 'static {
    /// Record the latest presence and details of a batch of nodes (last writer
    /// wins per node, in slice order). Creates nodes seen for the first time.
    fn record_node_statuses(&self, updates: &[NodeStatusUpdate]) -> Result<()>;

    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>>;

    /// All nodes, ordered by id.
    fn nodes(&self) -> Result<Vec<NodeRecord>>;

    /// Queue a new job for `spec.node`.
    fn enqueue_job(&self, spec: JobSpec, now_ms: u64) -> Result<JobRecord>;

    /// Lease the oldest queued job for `node`, if any, until `now_ms + lease_ms`.
    fn claim_next_job(
        &self,
        node: &NodeId,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Option<JobRecord>>;

    fn job(&self, id: JobId) -> Result<Option<JobRecord>>;

    /// Store health events; one already stored (same node and message id) is
    /// left as it is. A node keeps at most [`MAX_HEALTH_EVENTS_PER_NODE`]: the
    /// oldest go first. Returns how many were new.
    fn record_health_events(&self, events: &[HealthEventRecord]) -> Result<usize>;

    /// The node's most recent health events, at most `limit`, oldest first
    /// (message ids are UUIDv7: they order by the time the node created them).
    fn health_events(&self, node: &NodeId, limit: usize) -> Result<Vec<HealthEventRecord>>;
}
