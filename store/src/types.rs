//! Records kept in the store. Serialized as JSON inside the backend, so fields
//! can be added (with `#[serde(default)]`) without a migration.

use rakkr_protocol::access::Role;
use rakkr_protocol::job::{JobSpec, RecordingReport};
use rakkr_protocol::payload::{BootSlot, Capabilities, HealthEvent, RealtimeStatus};
use rakkr_protocol::schedule::{Occurrence, ScheduleSpec};
use rakkr_protocol::state::{JobState, Presence};
use rakkr_protocol::{MessageId, NodeId, ScheduleId};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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

pub use rakkr_protocol::JobId;

/// A job to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    pub node: NodeId,
    pub spec: JobSpec,
    /// Device channels (0-based) the job reads, from its channel map: two
    /// jobs on one node and device may not share any while both hold them.
    pub sources: Vec<u16>,
    /// The schedule occurrence the job records, if a schedule made it.
    pub scheduled: Option<ScheduledBy>,
    /// Put on the recording (a schedule's tags).
    pub tags: Vec<String>,
    /// The recording's title and delivery folder (a schedule's templates).
    pub title: Option<String>,
    pub folder: Option<String>,
    /// A job still queued at this time is cancelled, not offered: its
    /// schedule's window has passed (a node that was away must not record
    /// at another time).
    pub not_after_ms: Option<u64>,
}

impl NewJob {
    /// A job nobody scheduled and nobody tagged yet.
    pub fn unscheduled(node: NodeId, spec: JobSpec, sources: Vec<u16>) -> NewJob {
        NewJob {
            node,
            spec,
            sources,
            scheduled: None,
            tags: Vec::new(),
            title: None,
            folder: None,
            not_after_ms: None,
        }
    }
}

/// Which schedule occurrence a job records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScheduledBy {
    pub schedule: ScheduleId,
    /// The occurrence's key ([`Occurrence::key`]).
    pub occurrence: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Lease {
    /// Fencing token: unique and increasing across the store.
    pub id: u64,
    pub expires_ms: u64,
}

/// Message ids of updates applied to one job, kept to refuse redeliveries.
/// A job has a handful of updates; the bound only guards the record's size.
pub const MAX_APPLIED_UPDATES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobRecord {
    pub id: JobId,
    pub node: NodeId,
    pub spec: JobSpec,
    #[serde(default)]
    pub sources: Vec<u16>,
    pub state: JobState,
    pub created_ms: u64,
    /// When the state last changed.
    #[serde(default)]
    pub updated_ms: u64,
    /// The current (or, once the job ended, the last) lease.
    pub lease: Option<Lease>,
    /// A stop was requested as a cancellation.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Why it failed, what was recovered, why it was lost.
    #[serde(default)]
    pub detail: String,
    /// What the node recorded (from its final update).
    #[serde(default)]
    pub recording: Option<RecordingReport>,
    /// Node updates applied, newest last (see [`MAX_APPLIED_UPDATES`]).
    #[serde(default)]
    pub applied: Vec<MessageId>,
    /// Operators' notes on the recording ([`check_annotation`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
    /// Operators' tags on the recording, sorted, each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The schedule occurrence this job records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<ScheduledBy>,
    /// What the recording is called (its schedule's name template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Where it goes when delivered, relative to the destination (its
    /// schedule's folder template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    /// Still queued at this time: cancelled instead of offered ([`NewJob::not_after_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<u64>,
    /// An operator deleted the recording (decision 0020). The record stays,
    /// for history and the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<JobDeletion>,
}

/// Who deleted a recording, when and why, and when its node said its copy
/// was gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobDeletion {
    pub at_ms: u64,
    /// The actor, as the audit log names it (`user:olga`, `token:…`).
    pub by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When the node reported its files gone; until then it has an order
    /// ([`crate::Store::deletion_orders`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_deleted_ms: Option<u64>,
}

/// Longest reason given for deleting a recording, in bytes.
pub const MAX_DELETION_REASON: usize = 500;

/// What deleting a recording did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub before: JobRecord,
    pub after: JobRecord,
    /// Deliveries cancelled (pending or failed ones; delivered copies stay).
    pub cancelled_deliveries: usize,
    /// The recording was deleted already: nothing changed.
    pub already: bool,
}

/// Longest notes on a recording, in bytes.
pub const MAX_NOTES_BYTES: usize = 4000;
pub use rakkr_protocol::schedule::{MAX_TAG_BYTES, MAX_TAGS};

/// Check and normalise notes and tags: notes without control characters
/// (line breaks allowed), tags trimmed, non-empty, sorted and unique.
pub fn check_annotation(
    notes: &str,
    tags: &[String],
) -> std::result::Result<(String, Vec<String>), String> {
    if notes.len() > MAX_NOTES_BYTES {
        return Err(format!(
            "notes are {} bytes; the limit is {MAX_NOTES_BYTES}",
            notes.len()
        ));
    }
    if notes
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err("notes contain control characters".into());
    }
    let clean = rakkr_protocol::schedule::normalise_tags(tags)?;
    Ok((notes.replace("\r\n", "\n"), clean))
}

/// What applying a node's job update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The update changed the job (or was accepted without a state change).
    Applied(JobRecord),
    /// This message was applied before; nothing changed.
    Duplicate(JobRecord),
}

impl UpdateOutcome {
    pub fn job(&self) -> &JobRecord {
        match self {
            UpdateOutcome::Applied(j) | UpdateOutcome::Duplicate(j) => j,
        }
    }
}

/// Most schedules a store keeps.
pub const MAX_SCHEDULES: usize = 10_000;

pub use rakkr_protocol::schedule::MAX_OCCURRENCE_JOBS;

/// A recording schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScheduleRecord {
    pub id: ScheduleId,
    pub spec: ScheduleSpec,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// 1 when created, one more with every change: a runner holding an older
    /// revision is refused ([`OccurrenceStart::Stale`]).
    pub revision: u64,
}

/// What became of one occurrence of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OccurrenceRecord {
    pub schedule: ScheduleId,
    /// The occurrence as it was planned when first due.
    pub occurrence: Occurrence,
    /// Jobs started for it, oldest first (a restart after a failure adds
    /// one), at most [`MAX_OCCURRENCE_JOBS`].
    pub jobs: Vec<JobId>,
    /// Since when it waits to start, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Deferral>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deferral {
    pub since_ms: u64,
    pub reason: String,
}

/// The job an occurrence would start, or why it cannot start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OccurrenceJob {
    Ready(Box<NewJob>),
    /// The node cannot take it now (for people: why).
    Blocked(String),
}

/// How an occurrence may start again after its job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Start again after a failed job, this long after it failed, while the
    /// occurrence's window lasts.
    pub after_failure_ms: u64,
    /// Also after a job that completed or was cancelled (always-on schedules:
    /// to stop recording, disable the schedule).
    pub after_any_end: bool,
}

impl RestartPolicy {
    /// When an occurrence whose newest job is `last` may start another
    /// (ms since the epoch), or `None`: it has its job, running or done for
    /// good. A take cut by a crash or power loss (completed, `recovered`)
    /// goes on at once under a new job; a failed one after the back-off.
    pub fn restart_at(&self, last: &JobRecord) -> Option<u64> {
        let backoff = last.updated_ms.saturating_add(self.after_failure_ms);
        match last.state {
            JobState::Completed if last.recording.as_ref().is_some_and(|r| r.recovered) => {
                Some(last.updated_ms)
            }
            JobState::Failed => Some(backoff),
            JobState::Completed | JobState::Cancelled => self.after_any_end.then_some(backoff),
            _ => None,
        }
    }
}

/// What [`Store::start_occurrence`](crate::Store::start_occurrence) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OccurrenceStart {
    /// A job was queued for the occurrence.
    Started(Box<JobRecord>),
    /// The occurrence has its job (or had it, and it ended for good): nothing
    /// to do. The newest job, if any.
    Handled(Option<JobId>),
    /// It cannot start now; it was recorded as deferred and a
    /// `schedule_deferred` health event raised the first time.
    Deferred(Deferral),
    /// The schedule changed, was disabled or deleted since the caller read it.
    Stale,
}

/// Most health issues kept per node; beyond, the oldest resolved ones go.
pub const MAX_ISSUES_PER_NODE: usize = 1_000;

/// A condition raised again within this long of its issue being resolved
/// reopens that issue instead of opening a new one (a flapping condition is
/// one issue, not a hundred).
pub const REOPEN_WITHIN_MS: u64 = 15 * 60 * 1000;

/// One condition of one subject on one node, over its life: opened when
/// first raised, at most one not resolved per (node, condition, subject),
/// resolved by recovery (its clearing event) or by people, reopened when
/// raised again soon after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HealthIssue {
    /// 1, 2, … in the order issues were opened.
    pub id: u64,
    pub node: NodeId,
    pub condition: rakkr_protocol::payload::HealthCondition,
    /// What on the node it is about (see `HealthEvent::subject`); empty: the node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// The highest severity it was raised with.
    pub severity: rakkr_protocol::payload::Severity,
    pub state: rakkr_protocol::state::HealthState,
    /// When it was opened (or reopened).
    pub opened_ms: u64,
    /// When its state last changed.
    pub changed_ms: u64,
    /// When the last event about it happened.
    pub last_event_ms: u64,
    /// The evidence of the last event.
    pub detail: String,
    /// Times it was raised.
    pub raised: u32,
    /// Who made the last state change: an actor (`user:olga`) or `recovery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// What people do to health issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IssueAction {
    /// Seen, being handled.
    Acknowledge,
    /// Known and accepted: no longer alerting until it recovers.
    Suppress,
    Resolve,
    Reopen,
}

impl IssueAction {
    pub fn target(self) -> rakkr_protocol::state::HealthState {
        use rakkr_protocol::state::HealthState;
        match self {
            IssueAction::Acknowledge => HealthState::Acknowledged,
            IssueAction::Suppress => HealthState::Suppressed,
            IssueAction::Resolve => HealthState::Resolved,
            IssueAction::Reopen => HealthState::Open,
        }
    }
}

/// Which health issues to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueQuery {
    pub node: Option<NodeId>,
    pub state: Option<rakkr_protocol::state::HealthState>,
    pub condition: Option<rakkr_protocol::payload::HealthCondition>,
    pub limit: usize,
}

/// A health event as a node sent it. Identified by the node and the message's
/// id, so a message delivered twice is stored once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HealthEventRecord {
    pub node: NodeId,
    pub msg_id: MessageId,
    pub event: HealthEvent,
    pub received_ms: u64,
}

/// A single-use bootstrap token for enrolling one appliance. Only a hash of
/// its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenRecord {
    /// Public part of the token: names it in lists and logs.
    pub id: String,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
    /// The node it may enroll; `None`: the node names itself.
    pub node: Option<NodeId>,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// When, and as which node, it was used.
    pub used: Option<(u64, NodeId)>,
}

/// A node's MQTT/API credential. Only hashes are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCredentialRecord {
    pub node: NodeId,
    /// SHA-256 of the current secret, hex.
    pub secret_sha256: String,
    /// A rotated secret the node has been given but not used yet: both work
    /// until the node connects with the new one.
    pub next_sha256: Option<String>,
    /// Rotations so far.
    pub generation: u32,
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
}

impl NodeCredentialRecord {
    pub fn is_active(&self) -> bool {
        self.revoked_ms.is_none()
    }
}

/// An operator account. Only an argon2id hash of the password is kept (and
/// `Debug` leaves even that out, so no log line carries it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name, unique ([`valid_user_name`]).
    pub name: String,
    pub role: Role,
    /// The password's argon2id hash as a PHC string (`$argon2id$v=19$…`).
    pub password_phc: String,
    /// The password was set by someone else (first start, `user add`, a
    /// reset): it must be changed at the next login.
    pub must_change_password: bool,
    pub disabled: bool,
    pub created_ms: u64,
    pub password_changed_ms: u64,
    /// Sessions started before this are void: set on a password change, a
    /// reset, when the account is disabled, and past now by "log out
    /// everywhere" ([`UserChange::EndSessions`]).
    pub sessions_valid_after_ms: u64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("must_change_password", &self.must_change_password)
            .field("disabled", &self.disabled)
            .field("created_ms", &self.created_ms)
            .field("password_changed_ms", &self.password_changed_ms)
            .field("sessions_valid_after_ms", &self.sessions_valid_after_ms)
            .finish_non_exhaustive()
    }
}

/// Longest login name.
pub const MAX_USER_NAME: usize = 64;

/// Login names: 1–64 of `a-z 0-9 . _ -`, starting with a letter or digit.
/// Lower case only, so two accounts cannot differ by case alone.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// A change to an existing account, applied in one transaction. (`Debug`
/// leaves a password hash out.)
#[derive(Clone, PartialEq, Eq)]
pub enum UserChange {
    /// A new password hash; `must_change` for one set by someone else. Ends
    /// the account's sessions.
    Password {
        phc: String,
        must_change: bool,
    },
    /// Disable (ending its sessions) or enable the account.
    Disabled(bool),
    Role(Role),
    /// End every session of the account started up to now, in any browser
    /// ("log out everywhere"); the account stays as it is.
    EndSessions,
}

/// A console login. The session id itself is only in the browser's cookie;
/// the store keys the session by its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// SHA-256 of the session id, hex.
    pub id_sha256: String,
    pub user: String,
    pub created_ms: u64,
    /// Updated at most about once a minute (a write per request would cost
    /// an fsync each).
    pub last_seen_ms: u64,
    /// The synchronizer token every state-changing request of this session
    /// must carry.
    pub csrf_token: String,
}

impl std::fmt::Debug for UserChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserChange::Password { must_change, .. } => f
                .debug_struct("Password")
                .field("must_change", must_change)
                .finish_non_exhaustive(),
            UserChange::Disabled(d) => f.debug_tuple("Disabled").field(d).finish(),
            UserChange::Role(r) => f.debug_tuple("Role").field(r).finish(),
            UserChange::EndSessions => f.write_str("EndSessions"),
        }
    }
}

/// A bearer token for automation (the JSON API, `/metrics`), acting with one
/// role. Only the SHA-256 of its secret is kept; the token is shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    /// Public part: names the token in lists, logs and audit records.
    pub id: String,
    /// SHA-256 of the secret part, hex.
    pub secret_sha256: String,
    /// What it is for, e.g. "prometheus" or "ci".
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

impl ApiTokenRecord {
    pub fn is_valid(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }
}

/// What happened, for the audit log (the store adds sequence, time and hashes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// Who: `user:NAME`, `token:ID`, `local-admin:uid=N`, `anonymous@ADDR`.
    pub actor: String,
    /// The permission the action needed, if any.
    pub permission: Option<String>,
    /// What was asked, e.g. `POST /api/v1/jobs` or `user add`.
    pub action: String,
    /// What it was done to (a job, node, account), when known.
    pub target: Option<String>,
    /// `allowed` (done), `denied` (refused by access control) or `failed`
    /// (allowed, but refused or failed in the doing).
    pub outcome: String,
    pub reason: Option<String>,
    /// The changed thing as it was, for changes (absent in older records:
    /// absent fields are not hashed, so their chain still verifies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    /// The changed thing as it became.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
}

/// Most bytes an audit record keeps of its actor, permission, action, target,
/// outcome or reason: what a client sends (a path, a topic, a user name) ends
/// up there, and the log is forever.
pub const MAX_AUDIT_FIELD: usize = 512;

impl AuditEntry {
    /// This entry with every text field cut to [`MAX_AUDIT_FIELD`] bytes (at
    /// a character boundary, marked with `…`); the store keeps only these.
    pub fn bounded(mut self) -> AuditEntry {
        fn cut(text: &mut String) {
            if text.len() <= MAX_AUDIT_FIELD {
                return;
            }
            let mut end = MAX_AUDIT_FIELD - '…'.len_utf8();
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        for field in [&mut self.actor, &mut self.action, &mut self.outcome] {
            cut(field);
        }
        for field in [&mut self.permission, &mut self.target, &mut self.reason]
            .into_iter()
            .flatten()
        {
            cut(field);
        }
        self
    }
}

/// Jobs in each state that is not final, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobGauges {
    /// Waiting for their node to claim them.
    pub queued: u64,
    /// Claimed by their node, not recording yet.
    pub leased: u64,
    pub running: u64,
    /// Told to stop, not finished yet.
    pub stop_requested: u64,
}

/// What to look for in the audit log: every given filter must match.
/// Results come newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSearch {
    /// Only records with `seq < before` (paging further back); `None`: from the newest.
    pub before: Option<u64>,
    /// Exactly this actor (`user:olga`, `token:…`, `node:…`, `runner:…`).
    pub actor: Option<String>,
    /// Exactly this outcome (`allowed`, `denied`, `failed`).
    pub outcome: Option<String>,
    /// Case-insensitive text in the action, target, permission or reason.
    pub text: Option<String>,
    /// At or after this time (ms since the epoch).
    pub from_ms: Option<u64>,
    /// At or before this time.
    pub to_ms: Option<u64>,
    pub limit: usize,
}

/// Most records one search examines; it says where it stopped so the next
/// page goes on from there. Bounds the time one search can take.
pub const MAX_AUDIT_SCAN: usize = 20_000;

/// One page of an audit search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    /// Matches, newest first.
    pub records: Vec<AuditRecord>,
    /// Where to go on (`before` of the next page); `None`: the search reached
    /// the oldest record it could match.
    pub next_before: Option<u64>,
    /// Records examined.
    pub scanned: usize,
}

impl AuditSearch {
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let e = &r.entry;
        self.matches_probe(&AuditProbe {
            at_ms: e.at_ms,
            actor: e.actor.as_str().into(),
            outcome: e.outcome.as_str().into(),
            action: e.action.as_str().into(),
            target: e.target.as_deref().map(Into::into),
            permission: e.permission.as_deref().map(Into::into),
            reason: e.reason.as_deref().map(Into::into),
        })
    }

    /// Whether a record, read only as far as the filters need, matches.
    /// Text matches ignore ASCII case.
    pub fn matches_probe(&self, p: &AuditProbe<'_>) -> bool {
        let text_ok = self.text.as_deref().is_none_or(|needle| {
            [
                Some(&p.action),
                p.target.as_ref(),
                p.permission.as_ref(),
                p.reason.as_ref(),
            ]
            .into_iter()
            .flatten()
            .any(|field| contains_ignoring_ascii_case(field.as_bytes(), needle.as_bytes()))
        });
        self.actor.as_deref().is_none_or(|a| p.actor == a)
            && self.outcome.as_deref().is_none_or(|o| p.outcome == o)
            && self.from_ms.is_none_or(|t| p.at_ms >= t)
            && self.to_ms.is_none_or(|t| p.at_ms <= t)
            && text_ok
    }
}

/// Finds one text in many byte strings, ignoring ASCII case. It jumps (memchr,
/// both cases) between occurrences of the needle's rarest byte, by a frequency
/// ranking of text and JSON, and compares the whole needle only there. The audit
/// search runs this over every record it examines: anchoring on the needle's
/// first byte instead cost several times more, since common letters recur every
/// few bytes of a JSON record.
#[derive(Debug, Clone)]
pub struct CaselessFinder {
    needle: Vec<u8>,
    /// Index in the needle of the byte searched for.
    anchor: usize,
}

/// How common a byte is in audit records (higher: more common).
fn byte_rank(b: u8) -> u8 {
    const LETTERS: &[u8] = b"etaoinsrhldcumfpgwybvkxjqz";
    match b.to_ascii_lowercase() {
        l @ b'a'..=b'z' => {
            let at = LETTERS
                .iter()
                .position(|&x| x == l)
                .unwrap_or(LETTERS.len());
            250 - (at as u8) * 9
        }
        b'"' | b':' | b',' | b'_' | b'-' | b'.' | b'/' | b' ' | b'{' | b'}' => 255,
        b'0'..=b'9' => 240,
        _ => 10,
    }
}

impl CaselessFinder {
    pub fn new(needle: &[u8]) -> Self {
        let anchor = (0..needle.len())
            .min_by_key(|&i| byte_rank(needle[i]))
            .unwrap_or(0);
        CaselessFinder {
            needle: needle.to_ascii_lowercase(),
            anchor,
        }
    }

    /// Whether the needle occurs in `haystack`, ignoring ASCII case.
    pub fn is_in(&self, haystack: &[u8]) -> bool {
        let n = self.needle.len();
        if n == 0 {
            return true;
        }
        let Some(last_start) = haystack.len().checked_sub(n) else {
            return false;
        };
        let byte = self.needle[self.anchor];
        // Anchor bytes of every possible start: a hit at `i` is a start at `i`.
        memchr::memchr2_iter(
            byte.to_ascii_lowercase(),
            byte.to_ascii_uppercase(),
            &haystack[self.anchor..=last_start + self.anchor],
        )
        .any(|start| haystack[start..start + n].eq_ignore_ascii_case(&self.needle))
    }
}

/// Whether `needle` occurs in `haystack`, ignoring ASCII case. Jumps from
/// one occurrence of the needle's first byte (either case) to the next: the
/// audit search runs this over every record it examines.
pub fn contains_ignoring_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let Some(last_start) = haystack.len().checked_sub(needle.len()) else {
        return false;
    };
    memchr::memchr2_iter(
        first.to_ascii_lowercase(),
        first.to_ascii_uppercase(),
        &haystack[..=last_start],
    )
    .any(|at| haystack[at + 1..at + needle.len()].eq_ignore_ascii_case(rest))
}

/// The fields of a stored audit record a search filters on, borrowed from
/// its JSON where they need no unescaping (a search reads many records and
/// keeps few).
#[derive(Debug, Deserialize)]
pub struct AuditProbe<'a> {
    pub at_ms: u64,
    #[serde(borrow)]
    pub actor: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub outcome: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub action: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub target: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    pub permission: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reason: Option<std::borrow::Cow<'a, str>>,
}

/// One record of the append-only audit log. Each record's `sha256` covers its
/// content and the previous record's hash, so editing or removing a record
/// breaks the chain from there on ([`verify_audit_chain`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditRecord {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// The previous record's `sha256` (64 zeros before the first).
    pub prev_sha256: String,
    pub sha256: String,
}

/// The hash a record must carry: SHA-256 (hex) of its sequence number, the
/// previous hash and the entry's canonical JSON.
pub fn audit_hash(seq: u64, prev_sha256: &str, entry: &AuditEntry) -> String {
    let json = serde_json::to_string(entry).expect("audit entries serialise");
    rakkr_protocol::digest::sha256_hex(format!("{seq}\n{prev_sha256}\n{json}").as_bytes())
}

/// The hash before the first record.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Check that `records` (consecutive, oldest first, starting after a record
/// whose hash is `prev`) form an unbroken chain; the first bad sequence number.
pub fn verify_audit_chain(prev: &str, records: &[AuditRecord]) -> Result<(), u64> {
    let mut prev = prev.to_owned();
    let first = records.first().map_or(1, |r| r.seq);
    for (expected_seq, r) in (first..).zip(records) {
        if r.seq != expected_seq
            || r.prev_sha256 != prev
            || r.sha256 != audit_hash(r.seq, &prev, &r.entry)
        {
            return Err(r.seq);
        }
        prev = r.sha256.clone();
    }
    Ok(())
}

/// Where a file of a take stands on its way from its node to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Chunks arrive; `offset` bytes are held durably in the staging file.
    Receiving,
    /// Complete, verified (size, type, SHA-256) and in the server's cache;
    /// the node was told so.
    Cached,
}

/// Where a storage destination writes (decision 0017). Secrets are not here:
/// [`DestinationRecord::sealed_secret`] holds the one a kind needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DestinationSpec {
    /// A directory on the server (a local disk or a mounted share).
    Local {
        /// Absolute path of the directory objects go under.
        path: String,
    },
    /// An S3-compatible bucket; the secret is the secret access key.
    S3 {
        /// `https://host:port` of an S3-compatible service; absent: AWS.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        region: String,
        bucket: String,
        /// Objects go under this key prefix (`a/b`; empty: the bucket's root).
        #[serde(default)]
        prefix: String,
        access_key_id: String,
        /// Allow `http://` endpoints (a trusted network only).
        #[serde(default)]
        allow_http: bool,
    },
    /// A share on an SMB 2/3 server, spoken to directly (no OS mount);
    /// the secret is the account's password (decision 0018).
    Smb {
        /// `host` or `host:port` (port 445 when absent).
        server: String,
        share: String,
        /// Files go under this folder of the share (`a/b`; empty: its root).
        #[serde(default)]
        prefix: String,
        user: String,
        /// The account's NTLM domain (empty: the server's own accounts).
        #[serde(default)]
        domain: String,
        /// Refuse to deliver unless the server encrypts the session (SMB 3).
        #[serde(default)]
        require_encryption: bool,
    },
}

impl DestinationSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            DestinationSpec::Local { .. } => "local",
            DestinationSpec::S3 { .. } => "s3",
            DestinationSpec::Smb { .. } => "smb",
        }
    }
}

/// A named storage destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DestinationRecord {
    /// `[a-z0-9_-]{1,64}`, as policy names.
    pub name: String,
    pub spec: DestinationSpec,
    /// The kind's secret, sealed by the server (never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub sealed_secret: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// Where one delivery of a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// The destination holds the file.
    Delivered,
    /// Its retry budget is spent; waits for an operator's retry.
    Failed,
    /// Its recording was deleted before it arrived; it never goes again (an
    /// attempt under way when it was cancelled may still say `delivered`).
    Cancelled,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Cancelled => "cancelled",
        }
    }
}

/// One file of a take on its way to one destination (decision 0017).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeliveryRecord {
    pub job: JobId,
    /// The file's name (as its upload's).
    pub name: String,
    pub destination: String,
    pub node: NodeId,
    /// The object's key under the destination (its prefix not included).
    pub key: String,
    pub bytes: u64,
    pub state: DeliveryState,
    pub attempts: u32,
    /// No attempt after this (the upload policy's budget from the first).
    pub give_up_ms: Option<u64>,
    pub next_attempt_ms: u64,
    /// Why the last attempt failed (empty: it did not).
    #[serde(default)]
    pub last_error: String,
    pub queued_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<u64>,
}

/// The kinds of policy operators choose per node (the server's named lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodePolicyKind {
    Watchdog,
    Retention,
}

impl NodePolicyKind {
    pub const ALL: [NodePolicyKind; 2] = [NodePolicyKind::Watchdog, NodePolicyKind::Retention];

    pub fn as_str(self) -> &'static str {
        match self {
            NodePolicyKind::Watchdog => "watchdog",
            NodePolicyKind::Retention => "retention",
        }
    }
}

/// One file of a take being uploaded, or uploaded (decision 0016).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UploadRecord {
    pub job: JobId,
    /// A name `rakkr_protocol::upload::check_file_name` accepts for `job`.
    pub name: String,
    pub node: NodeId,
    /// The file's size, fixed by its first chunk.
    pub length: u64,
    /// Bytes held durably (the staging file may have more after a crash;
    /// they are cut off before the next chunk is written).
    pub offset: u64,
    pub state: UploadState,
    /// SHA-256 of the verified file (lower-case hex), once cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub started_ms: u64,
    pub updated_ms: u64,
    /// The preview the server drew when it verified the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waveform: Option<Waveform>,
    /// When the server deleted its copy, every destination holding the file
    /// (its retention said so); the record, checksum and preview stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_ms: Option<u64>,
}

/// A file's waveform preview: per column, per channel, the lowest and
/// highest sample, scaled to −127…127 of full scale. About a thousand
/// columns whatever the length, so a preview stays a few kilobytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Waveform {
    pub channels: u16,
    pub sample_rate: u32,
    /// Frames in the file.
    pub frames: u64,
    /// Frames summarized by one column (the last may have fewer).
    pub frames_per_column: u64,
    /// Standard base64 of `i8` pairs (min, max): column by column, within a
    /// column channel by channel.
    pub peaks: String,
}

#[cfg(test)]
mod tests {
    use super::contains_ignoring_ascii_case as has;
    use proptest::strategy::Just;

    #[test]
    fn the_finder_agrees_with_the_plain_search() {
        let cases: [(&[u8], &[u8]); 8] = [
            (b"POST /api/v1/Jobs", b"jobs"),
            (b"jobs", b"JOBS"),
            (b"anything", b""),
            (b"job", b"jobs"),
            (b"", b"a"),
            (b"aab", b"ab"),
            (b"x-1", b"-1"),
            ("été".as_bytes(), "ÉTÉ".as_bytes()),
        ];
        for (haystack, needle) in cases {
            let finder = super::CaselessFinder::new(needle);
            assert_eq!(
                finder.is_in(haystack),
                has(haystack, needle),
                "{haystack:?} {needle:?}"
            );
            // The buffer is reused: a second, shorter haystack is not polluted by the first.
            assert!(!finder.is_in(b"") || needle.is_empty());
        }
    }

    proptest::proptest! {
        #[test]
        fn the_finder_finds_what_a_plain_scan_finds(
            haystack in proptest::collection::vec(proptest::prop_oneof![Just(b'a'), Just(b'B'), Just(b'x'), Just(b'-'), Just(b'"'), proptest::num::u8::ANY], 0..64),
            needle in proptest::collection::vec(proptest::prop_oneof![Just(b'A'), Just(b'b'), Just(b'X'), Just(b'-'), proptest::num::u8::ANY], 0..6),
        ) {
            let plain = needle.is_empty()
                || haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(&needle));
            proptest::prop_assert_eq!(super::CaselessFinder::new(&needle).is_in(&haystack), plain);
        }
    }

    #[test]
    fn text_is_found_ignoring_ascii_case() {
        assert!(has(b"POST /api/v1/Jobs", b"jobs"));
        assert!(has(b"jobs", b"JOBS"));
        assert!(has(b"anything", b""));
        assert!(!has(b"job", b"jobs"));
        assert!(!has(b"", b"a"));
        assert!(has(b"aab", b"ab"), "a false start before the match");
        assert!(has(b"x-1", b"-1"), "a first byte without case");
        assert!(
            !has("été".as_bytes(), "ÉTÉ".as_bytes()),
            "non-ASCII is compared exactly"
        );
    }
}
