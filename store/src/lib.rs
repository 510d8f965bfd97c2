//! The fleet server's durable state, behind one trait.
//!
//! [`Store`] is written so that more than one backend can implement it: redb
//! ([`RedbStore`], embedded, the default) now and PostgreSQL when a site outgrows
//! one machine. The rules every backend keeps:
//!
//! - **Each method is one transaction.** It either happens completely or not at
//!   all; no caller ever sees a half-applied change. Multi-step domain operations
//!   are methods here, not sequences of calls in the server.
//! - **Claims are atomic.** [`Store::claim_jobs`] moves queued jobs to
//!   `leased`, each with a lease id that no other claim ever receives, also
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

mod audit_text;
mod redb_store;
mod types;

pub use redb_store::RedbStore;
pub use types::*;

use rakkr_protocol::job::JobUpdate;
use rakkr_protocol::schedule::{Occurrence, ScheduleSpec};
use rakkr_protocol::state::TransitionError;
use rakkr_protocol::{MessageId, NodeId, ScheduleId};

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
    #[error("no such schedule: {0}")]
    NoSuchSchedule(ScheduleId),
    #[error("job {job} belongs to node {owner}, not {node}")]
    WrongNode {
        job: JobId,
        owner: NodeId,
        node: NodeId,
    },
    #[error("lease {presented} is not the current lease of job {job} ({current})")]
    StaleLease {
        job: JobId,
        presented: u64,
        /// The job's lease id, or "none".
        current: String,
    },
    #[error("{0}")]
    Refused(String),
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

    /// The policy of `kind` operators chose for each node that has one.
    fn node_policies(
        &self,
        kind: NodePolicyKind,
    ) -> Result<std::collections::BTreeMap<NodeId, String>>;

    /// Choose `node`'s policy of `kind` by name (None: the default again);
    /// returns the choice before.
    fn set_node_policy(
        &self,
        kind: NodePolicyKind,
        node: &NodeId,
        policy: Option<&str>,
    ) -> Result<Option<String>>;

    /// Every node's A/B update order not yet finished (decision 0019), in node order.
    fn update_orders(&self) -> Result<Vec<(NodeId, rakkr_protocol::update::UpdateOrder)>>;

    /// Keep `order` as `node`'s update order, replacing any other (None: forget it).
    fn set_update_order(
        &self,
        node: &NodeId,
        order: Option<&rakkr_protocol::update::UpdateOrder>,
    ) -> Result<()>;

    /// Queue a new job. Refused ([`StoreError::Refused`]) when it would share
    /// a device channel with a job of the same node and device that holds
    /// its channels ([`JobState::occupies_channels`](rakkr_protocol::state::JobState::occupies_channels)).
    fn enqueue_job(&self, job: NewJob, now_ms: u64) -> Result<JobRecord>;

    /// A node asks for up to `free_slots` jobs. First, jobs already leased to
    /// it but missing from `held` (their offer was lost) come back with their
    /// lease; then the node's oldest queued jobs are leased until
    /// `now_ms + lease_ms`.
    fn claim_jobs(
        &self,
        node: &NodeId,
        free_slots: u16,
        held: &[JobId],
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Vec<JobRecord>>;

    /// Extend the current lease of a job the node runs. A lost job whose node
    /// renews its lease runs again (and its `job_lost` event is cleared).
    fn renew_lease(
        &self,
        node: &NodeId,
        job: JobId,
        lease_id: u64,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<JobRecord>;

    /// Apply a node's update (message `msg_id`) under its lease. A message
    /// applied before is a [`UpdateOutcome::Duplicate`]. A final update of a
    /// lost job is accepted: the returned take is attached, never thrown away.
    fn apply_job_update(
        &self,
        node: &NodeId,
        msg_id: MessageId,
        update: &JobUpdate,
        now_ms: u64,
    ) -> Result<UpdateOutcome>;

    /// Apply an update of a job its node started on its own (`lease_id` 0,
    /// `update.autonomous` set: a scheduled occurrence it recorded while the
    /// server was unreachable; decision 0014), in one transaction:
    /// - a job the store does not know is created, in the reported state
    ///   (`running` under a new lease of `lease_ms`, or final with its
    ///   recording), and joined to its occurrence (ending its deferral);
    /// - the store's own job for the occurrence (the same id) is taken over:
    ///   `running` under its lease (a new one if it had none), or final;
    /// - a `running` for a job already running changes nothing; a final
    ///   report applies unless the job has ended (audio is never dropped).
    ///
    /// The node takes the job's lease when the outcome's job runs under one.
    fn adopt_job(
        &self,
        node: &NodeId,
        msg_id: MessageId,
        update: &JobUpdate,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<UpdateOutcome>;

    /// Ask for a job to stop (the take is kept) or, with `cancel`, to end as
    /// cancelled. A queued job is cancelled at once.
    fn request_stop(&self, job: JobId, cancel: bool, now_ms: u64) -> Result<JobRecord>;

    /// Set a job's notes and tags ([`check_annotation`]); the job before and after.
    fn annotate_job(
        &self,
        job: JobId,
        notes: &str,
        tags: &[String],
    ) -> Result<(JobRecord, JobRecord)>;

    /// Mark every job whose lease expired before `now_ms` lost, and store a
    /// `job_lost` health event for each, in one transaction.
    fn expire_leases(&self, now_ms: u64) -> Result<Vec<JobRecord>>;

    /// Give every running lease at least `lease_ms` from `now_ms`: called when
    /// the server starts, since nodes could not renew while it was down.
    /// Returns how many leases were extended.
    fn extend_leases_after_downtime(&self, now_ms: u64, lease_ms: u64) -> Result<usize>;

    fn job(&self, id: JobId) -> Result<Option<JobRecord>>;

    /// The newest jobs, of one node or of all, at most `limit`, newest first.
    fn jobs(&self, node: Option<&NodeId>, limit: usize) -> Result<Vec<JobRecord>> {
        self.jobs_before(node, None, limit)
    }

    /// As [`Store::jobs`], but only jobs older than `before` (ids are
    /// UUIDv7: their order is their creation's): the next page of a listing.
    fn jobs_before(
        &self,
        node: Option<&NodeId>,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>>;

    /// Nodes with a job holding their channels (queued, leased, running, stopping).
    fn busy_nodes(&self) -> Result<std::collections::BTreeSet<NodeId>>;

    /// Every job holding its channels (queued, leased, running, stopping),
    /// from the index: however old the job and however many came after it.
    fn active_jobs(&self) -> Result<Vec<JobRecord>>;

    /// How many jobs wait for their node and how many are under a lease,
    /// from the indexes (cheap enough for every metrics scrape).
    fn job_gauges(&self) -> Result<JobGauges>;

    /// Keep a new enrollment token.
    fn create_enroll_token(&self, token: EnrollTokenRecord) -> Result<()>;

    /// Tokens not used and not expired at `now_ms`, newest first.
    fn enroll_tokens(&self, now_ms: u64) -> Result<Vec<EnrollTokenRecord>>;

    /// Use token `token_id` (whose secret hashes to `secret_sha256`) to give
    /// `node` the credential hashing to `credential_sha256`, in one
    /// transaction. Refused ([`StoreError::Refused`], saying why) when the
    /// token is unknown, wrong, expired or used, bound to another node, or
    /// when the node holds an active credential and the token was not made
    /// for that node (re-enrolling a node is an explicit operator decision).
    fn enroll_node(
        &self,
        token_id: &str,
        secret_sha256: &str,
        node: &NodeId,
        credential_sha256: &str,
        now_ms: u64,
    ) -> Result<NodeCredentialRecord>;

    /// Every node credential (the gate keeps them in memory).
    fn node_credentials(&self) -> Result<Vec<NodeCredentialRecord>>;

    /// Give a node's active credential a next secret: the current one keeps
    /// working until the node connects with the next ([`Store::promote_node_credential`]).
    fn set_next_node_credential(
        &self,
        node: &NodeId,
        next_sha256: &str,
        now_ms: u64,
    ) -> Result<NodeCredentialRecord>;

    /// The node used its next secret: it becomes the only one.
    fn promote_node_credential(&self, node: &NodeId, now_ms: u64) -> Result<NodeCredentialRecord>;

    /// Revoke a node's credential: it is refused from now on.
    fn revoke_node_credential(&self, node: &NodeId, now_ms: u64) -> Result<NodeCredentialRecord>;

    /// Create an operator account; refused when the name is taken or invalid.
    fn create_user(&self, user: UserRecord) -> Result<()>;

    /// Create `user` only if there is no account at all (first start): `false`
    /// when there already is one. Two servers starting at once cannot both
    /// create a first owner.
    fn create_first_user(&self, user: UserRecord) -> Result<bool>;

    fn user(&self, name: &str) -> Result<Option<UserRecord>>;

    /// Every account, ordered by name.
    fn users(&self) -> Result<Vec<UserRecord>>;

    /// Change an account; refused for an unknown name, and when the change
    /// would leave no enabled owner.
    fn change_user(&self, name: &str, change: UserChange, now_ms: u64) -> Result<UserRecord>;

    /// Keep a new session; a user's oldest sessions beyond `max_per_user` go.
    fn create_session(&self, session: SessionRecord, max_per_user: usize) -> Result<()>;

    fn session(&self, id_sha256: &str) -> Result<Option<SessionRecord>>;

    /// Note that the session was used at `now_ms`.
    fn touch_session(&self, id_sha256: &str, now_ms: u64) -> Result<()>;

    fn delete_session(&self, id_sha256: &str) -> Result<()>;

    /// Delete sessions last seen before `idle_before_ms` or created before
    /// `created_before_ms`; returns how many went.
    fn prune_sessions(&self, idle_before_ms: u64, created_before_ms: u64) -> Result<usize>;

    /// Keep a new API token; refused when its id exists.
    fn create_api_token(&self, token: ApiTokenRecord) -> Result<()>;

    fn api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>>;

    /// Every API token, revoked and expired ones too, newest first.
    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>>;

    /// Revoke a token (refused for an unknown id); revoking twice keeps the first time.
    fn revoke_api_token(&self, id: &str, now_ms: u64) -> Result<ApiTokenRecord>;

    /// Append to the audit log, chaining the record to the last one, in one
    /// transaction.
    fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord>;

    /// Append several entries in order, chained, in one transaction (an
    /// import, or a burst); returns the last record's sequence number.
    fn append_audit_many(&self, entries: Vec<AuditEntry>) -> Result<u64>;

    /// Audit records with `seq > after`, oldest first, at most `limit`.
    fn audit_records(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>>;

    /// Search the audit log, newest first, examining at most
    /// [`MAX_AUDIT_SCAN`] records (see [`AuditPage::next_before`]). Times are
    /// taken as non-decreasing with `seq` (records are appended as they
    /// happen): a search by time stops at the first record older than `from_ms`.
    fn search_audit(&self, search: &AuditSearch) -> Result<AuditPage>;

    /// Keep a new schedule; refused beyond [`MAX_SCHEDULES`].
    fn create_schedule(&self, schedule: ScheduleRecord) -> Result<()>;

    /// Replace a schedule's spec (its revision goes up by one); the record
    /// before and after. Jobs it already started keep running.
    fn update_schedule(
        &self,
        id: ScheduleId,
        spec: ScheduleSpec,
        now_ms: u64,
    ) -> Result<(ScheduleRecord, ScheduleRecord)>;

    /// Delete a schedule and what it kept about its occurrences (an open
    /// deferral is cleared); its jobs keep naming it.
    fn delete_schedule(&self, id: ScheduleId, now_ms: u64) -> Result<ScheduleRecord>;

    fn schedule(&self, id: ScheduleId) -> Result<Option<ScheduleRecord>>;

    /// Every schedule, oldest first.
    fn schedules(&self) -> Result<Vec<ScheduleRecord>>;

    /// A number that changes whenever any schedule does: a runner reloads
    /// schedules only when it moved.
    fn schedules_generation(&self) -> Result<u64>;

    /// What became of a schedule's occurrences, newest key first, at most `limit`.
    fn occurrence_records(&self, id: ScheduleId, limit: usize) -> Result<Vec<OccurrenceRecord>>;

    /// Start `occurrence` of schedule `id` (as of `revision`) in one
    /// transaction, so that an occurrence gets exactly one job however often
    /// and from however many runners this is called:
    /// - the schedule changed, was disabled or deleted: [`OccurrenceStart::Stale`];
    /// - the occurrence has a job that holds its channels or is lost, or one
    ///   that ended and `restart` does not allow another: `Handled`;
    /// - `job` is blocked, or shares channels with a job holding them: the
    ///   occurrence is `Deferred`; the first time, a `schedule_deferred`
    ///   health event is raised with it;
    /// - otherwise the job is queued (a deferral ends, its event is cleared).
    fn start_occurrence(
        &self,
        id: ScheduleId,
        revision: u64,
        occurrence: &Occurrence,
        job: OccurrenceJob,
        restart: RestartPolicy,
        now_ms: u64,
    ) -> Result<OccurrenceStart>;

    /// End the deferral of occurrences whose window closed before `now_ms`
    /// without a start: their `schedule_deferred` event is cleared and a
    /// `schedule_missed` event raised. Returns them.
    fn expire_deferrals(&self, now_ms: u64) -> Result<Vec<OccurrenceRecord>>;

    /// Store health events; one already stored (same node and message id) is
    /// left as it is. A node keeps at most [`MAX_HEALTH_EVENTS_PER_NODE`]: the
    /// oldest go first. Returns how many were new.
    fn record_health_events(&self, events: &[HealthEventRecord]) -> Result<usize>;

    /// Health issues matching `query`, newest first, at most `query.limit`.
    /// (Issues are kept from the health events stored: see [`HealthIssue`].)
    fn health_issues(&self, query: &IssueQuery) -> Result<Vec<HealthIssue>>;

    /// Apply `action` to every issue in `ids` as `actor`, in one transaction:
    /// all of them or, when one is unknown or cannot take the action (say,
    /// acknowledging a resolved one), none, refused saying which. Returns
    /// each issue before and after.
    fn change_health_issues(
        &self,
        ids: &[u64],
        action: IssueAction,
        actor: &str,
        now_ms: u64,
    ) -> Result<Vec<(HealthIssue, HealthIssue)>>;

    /// The node's most recent health events, at most `limit`, oldest first
    /// (message ids are UUIDv7: they order by the time the node created them).
    fn health_events(&self, node: &NodeId, limit: usize) -> Result<Vec<HealthEventRecord>>;

    /// Until when (ms, by message id time) the node's health events may be
    /// incomplete because the oldest beyond [`MAX_HEALTH_EVENTS_PER_NODE`]
    /// were pruned; `None` if none ever were.
    fn health_events_pruned_until(&self, node: &NodeId) -> Result<Option<u64>>;

    /// The node's health events created from `from_ms` to `to_ms` (by their
    /// message ids' time), oldest first, at most `limit` (the oldest kept).
    fn health_events_between(
        &self,
        node: &NodeId,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<HealthEventRecord>>;

    /// The upload of one file of `job`'s take, if it began.
    fn upload(&self, job: JobId, name: &str) -> Result<Option<UploadRecord>>;

    /// Keep an upload's record as it is now (the server serializes the
    /// requests of one file, so last writer wins).
    fn put_upload(&self, record: &UploadRecord) -> Result<()>;

    /// Every upload of `job`'s files, by name.
    fn uploads_of_job(&self, job: JobId) -> Result<Vec<UploadRecord>>;

    /// Every upload the server holds, verified (`cached`), by job and name.
    fn cached_uploads(&self) -> Result<Vec<UploadRecord>>;

    /// Every storage destination, by name.
    fn destinations(&self) -> Result<Vec<DestinationRecord>>;

    /// Keep a destination as it is now; returns it as it was.
    fn put_destination(&self, record: &DestinationRecord) -> Result<Option<DestinationRecord>>;

    /// Forget a destination; returns it as it was.
    fn delete_destination(&self, name: &str) -> Result<Option<DestinationRecord>>;

    /// Queue deliveries that are not queued yet (one per job, file and
    /// destination; one already there is left as it is; none for a deleted
    /// recording). Returns how many were added.
    fn queue_deliveries(&self, records: &[DeliveryRecord]) -> Result<usize>;

    /// Keep a delivery as it is now (the runner's outcome, an operator's retry).
    /// A `cancelled` delivery stays cancelled unless the new record says it
    /// arrived (an attempt under way when its recording was deleted).
    fn put_delivery(&self, record: &DeliveryRecord) -> Result<()>;

    /// Pending deliveries whose next attempt is due at `now_ms`, soonest
    /// first, at most `limit`.
    fn due_deliveries(&self, now_ms: u64, limit: usize) -> Result<Vec<DeliveryRecord>>;

    /// Every delivery of `job`'s files.
    fn deliveries_of_job(&self, job: JobId) -> Result<Vec<DeliveryRecord>>;

    /// Deliveries newest job first (in one `state`, or any), at most `limit`.
    fn deliveries(&self, state: Option<DeliveryState>, limit: usize)
    -> Result<Vec<DeliveryRecord>>;

    /// Delete a recording (decision 0020), in one transaction: mark the job
    /// `deleted` by `by` (an actor as the audit log names it), cancel its
    /// deliveries that have not arrived, and keep an order for its node to
    /// delete its copy. Only a job in a final state can be deleted
    /// ([`StoreError::Refused`] otherwise). Deleting a deleted job changes
    /// nothing (`already`).
    fn delete_job(&self, job: JobId, by: &str, reason: &str, now_ms: u64) -> Result<Deleted>;

    /// Orders to delete a take that nodes have not reported done, for one
    /// node or all, oldest job first, at most `limit`: `(node, job, ordered ms)`.
    fn deletion_orders(
        &self,
        node: Option<&NodeId>,
        limit: usize,
    ) -> Result<Vec<(NodeId, JobId, u64)>>;

    /// `node` reports its copy of `job`'s take deleted: its order is done and
    /// the job says when. `false` (and nothing changed) when no such order
    /// was open (a repeated report, another node's job).
    fn complete_deletion_order(&self, node: &NodeId, job: JobId, now_ms: u64) -> Result<bool>;
}
