//! The embedded backend on redb.
//!
//! On-disk format (one redb file, `rakkr.redb` in the data directory):
//!
//! | table       | key                     | value                                  |
//! |-------------|-------------------------|----------------------------------------|
//! | `meta`      | `&str`                  | `u64`: `schema_version`, `lease_seq`   |
//! | `nodes`     | node id `&str`          | JSON [`NodeRecord`]                    |
//! | `jobs`      | job id `u128` (UUIDv7)  | JSON [`JobRecord`]                     |
//! | `job_queue` | `(node id, job id)`     | `()`: queued jobs per node, oldest first |
//! | `active_jobs` | `(node id, job id)`   | `()`: jobs holding their channels      |
//! | `leases`    | `(expires ms, job id)`  | `()`: jobs with a running lease, by expiry |
//! | `node_jobs` | `(node id, job id)`     | `()`: every job of a node              |
//! | `enroll_tokens` | token id `&str`     | JSON [`EnrollTokenRecord`] (secret: SHA-256 only) |
//! | `node_credentials` | node id `&str`   | JSON [`NodeCredentialRecord`] (secrets: SHA-256 only) |
//! | `health_events` | `(node id, message id)` | `HealthEventRecord` (JSON); a message id is stored once per node |
//! | `uploads` | `(job id, file name)` | `UploadRecord` (JSON): a take's file on its way from its node (decision 0016) |
//! | `destinations` | name | JSON [`DestinationRecord`]: a storage destination, its secret sealed by the server (decision 0017) |
//! | `deliveries` | `(job id, file name, destination)` | JSON [`DeliveryRecord`]: a file on its way to a destination |
//! | `deliveries_due` | `(next attempt ms, job id, file name, destination)` | `()`: exactly the `pending` deliveries |
//! | `health_events_pruned` | node id | ms since the epoch: events created up to then may have been pruned (the newest pruned event's id time) |
//! | `users`     | login name `&str`       | JSON [`UserRecord`] (password: argon2id PHC string only) |
//! | `sessions`  | SHA-256 of the session id `&str` | JSON [`SessionRecord`]        |
//! | `api_tokens` | token id `&str`        | JSON [`ApiTokenRecord`] (secret: SHA-256 only) |
//! | `audit`     | sequence `u64` (1, 2, …) | JSON [`AuditRecord`], hash-chained; never updated or deleted |
//! | `audit_by_actor` | `(actor, sequence)` | `()`: every record of an actor (built on open when missing) |
//! | `audit_by_outcome` | `(outcome, sequence)` | `()`: every record with an outcome (built on open when missing) |
//! | `audit_text` | block `u64` | the searchable text of 64 records, packed for scanning (see [`crate::audit_text`]; built on open when missing) |
//! | `schedules` | schedule id `u128` (UUIDv7) | JSON [`ScheduleRecord`]                |
//! | `occurrences` | `(schedule id, occurrence key)` | JSON [`OccurrenceRecord`]: the jobs an occurrence started, its deferral |
//! | `deferred_occurrences` | `(window end ms, schedule id, key)` | `()`: occurrences waiting to start, by when they are missed |
//! | `health_issues` | issue id `u64` (1, 2, …) | JSON [`HealthIssue`]: a condition of a subject on a node over its life |
//! | `issue_keys` | `(node, condition, subject)` | issue id `u64`: the latest issue of that key |
//! | `issues_by_node`, `issues_by_state` | `(node or state, issue id)` | `()` |
//! | `node_watchdog_policies`, `node_retention_policies` | node id | the name of the watchdog or retention policy operators chose for the node (absent: the default) |
//! | `deletion_orders` | `(node id, job id)` | ms the recording was deleted: its node has not reported its copy gone yet (decision 0020) |
//!
//! Invariants, kept by [`JobTables::put`], the only writer of job records: a
//! job is in `job_queue` exactly while its state is `queued`; in `active_jobs`
//! exactly while [`JobState::occupies_channels`]; in `leases` (under its
//! current expiry) exactly while it is `leased`, `running` or `stop_requested`.
//!
//! Schema history: 2 added job specs, leases and the job indexes; version 1
//! had no way to create jobs, so its (empty) job tables are dropped. `users`,
//! `sessions`, `api_tokens` and `audit` came later without a bump: new tables,
//! created empty when missing, as did `schedules`, `occurrences` and
//! `deferred_occurrences`. `meta.schedules_generation` counts schedule changes.
//! Commits are durable (`Durability::Immediate`: fsync before `commit` returns).

use std::path::Path;

use rakkr_protocol::NodeId;
use rakkr_protocol::state::{HealthState, JobState, Lifecycle, Presence, transition};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use rakkr_protocol::MessageId;
use rakkr_protocol::ScheduleId;
use rakkr_protocol::access::Role;
use rakkr_protocol::job::{AutonomousStart, JobUpdate};
use rakkr_protocol::payload::{
    HealthChange, HealthCondition, HealthEvent, MAX_DETAIL_TEXT, Severity,
};
use rakkr_protocol::schedule::{CivilDate, Occurrence, ScheduleSpec, occurrence_job_id};

use crate::audit_text::{self, BlockFinder};
use crate::{
    AUDIT_GENESIS, ApiTokenRecord, AuditEntry, AuditPage, AuditProbe, AuditRecord, AuditSearch,
    Deferral, Deleted, DeliveryRecord, DeliveryState, DestinationRecord, EnrollTokenRecord,
    HealthEventRecord, HealthIssue, IssueAction, IssueQuery, JobDeletion, JobGauges, JobId,
    JobRecord, Lease, MAX_APPLIED_UPDATES, MAX_AUDIT_SCAN, MAX_DELETION_REASON,
    MAX_HEALTH_EVENTS_PER_NODE, MAX_ISSUES_PER_NODE, MAX_OCCURRENCE_JOBS, MAX_SCHEDULES,
    MAX_USER_NAME, NewJob, NodeCredentialRecord, NodePolicyKind, NodeRecord, NodeStatusUpdate,
    OccurrenceJob, OccurrenceRecord, OccurrenceStart, REOPEN_WITHIN_MS, RestartPolicy, Result,
    ScheduleRecord, ScheduledBy, SessionRecord, Store, StoreError, UpdateOutcome, UploadRecord,
    UserChange, UserRecord, audit_hash, check_annotation, valid_user_name,
};

/// Version of the layout above. Bumped only with a migration.
pub const SCHEMA_VERSION: u64 = 2;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
const JOB_QUEUE: TableDefinition<(&str, u128), ()> = TableDefinition::new("job_queue");
const ACTIVE_JOBS: TableDefinition<(&str, u128), ()> = TableDefinition::new("active_jobs");
const LEASES: TableDefinition<(u64, u128), ()> = TableDefinition::new("leases");
const NODE_JOBS: TableDefinition<(&str, u128), ()> = TableDefinition::new("node_jobs");
const ENROLL_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("enroll_tokens");
const NODE_CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("node_credentials");
/// Operator accounts by login name (JSON [`UserRecord`]).
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Console sessions by the SHA-256 of their id (JSON [`SessionRecord`]).
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// API tokens by their public id (JSON [`ApiTokenRecord`]).
const API_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_tokens");
/// The audit log by sequence number (JSON [`AuditRecord`]); append-only.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// (actor, sequence) → (): the audit log by actor.
const AUDIT_BY_ACTOR: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_actor");
/// (outcome, sequence) → (): the audit log by outcome.
const AUDIT_BY_OUTCOME: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_outcome");
/// Block → the searchable text of its 64 records ([`crate::audit_text`]).
const AUDIT_TEXT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_text");
/// (node, message id as u128) → HealthEventRecord (JSON).
const HEALTH_EVENTS: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("health_events");
const UPLOADS: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("uploads");
/// Storage destinations by name (JSON [`DestinationRecord`], secret sealed).
const DESTINATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("destinations");
/// Deliveries by (job, file, destination) (JSON [`DeliveryRecord`]).
const DELIVERIES: TableDefinition<(u128, &str, &str), &[u8]> = TableDefinition::new("deliveries");
/// Pending deliveries by (next attempt, job, file, destination).
const DELIVERIES_DUE: TableDefinition<(u64, u128, &str, &str), ()> =
    TableDefinition::new("deliveries_due");
const HEALTH_EVENTS_PRUNED: TableDefinition<&str, u64> =
    TableDefinition::new("health_events_pruned");
const SCHEDULES: TableDefinition<u128, &[u8]> = TableDefinition::new("schedules");
const HEALTH_ISSUES: TableDefinition<u64, &[u8]> = TableDefinition::new("health_issues");
const NODE_WATCHDOG_POLICIES: TableDefinition<&str, &str> =
    TableDefinition::new("node_watchdog_policies");
const NODE_RETENTION_POLICIES: TableDefinition<&str, &str> =
    TableDefinition::new("node_retention_policies");

/// Where the nodes' choices of a kind of policy are kept.
fn node_policy_table(kind: NodePolicyKind) -> TableDefinition<'static, &'static str, &'static str> {
    match kind {
        NodePolicyKind::Watchdog => NODE_WATCHDOG_POLICIES,
        NodePolicyKind::Retention => NODE_RETENTION_POLICIES,
    }
}
/// node id → its A/B update order (JSON), until the node reports it final.
const UPDATE_ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("update_orders");
const DELETION_ORDERS: TableDefinition<(&str, u128), u64> = TableDefinition::new("deletion_orders");
const ISSUE_KEYS: TableDefinition<(&str, &str, &str), u64> = TableDefinition::new("issue_keys");
const ISSUES_BY_NODE: TableDefinition<(&str, u64), ()> = TableDefinition::new("issues_by_node");
const ISSUES_BY_STATE: TableDefinition<(&str, u64), ()> = TableDefinition::new("issues_by_state");
const OCCURRENCES: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("occurrences");
const DEFERRED_OCCURRENCES: TableDefinition<(u64, u128, &str), ()> =
    TableDefinition::new("deferred_occurrences");

#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

/// Insert an account whose name must be new and valid.
fn insert_new_user(tx: &redb::WriteTransaction, user: &UserRecord) -> Result<()> {
    if !valid_user_name(&user.name) {
        return Err(StoreError::Refused(format!(
            "{:?} is not a valid user name (1-{MAX_USER_NAME} of a-z 0-9 . _ -, starting with a letter or digit)",
            user.name
        )));
    }
    let mut users = tx.open_table(USERS).map_err(backend)?;
    if users.get(user.name.as_str()).map_err(backend)?.is_some() {
        return Err(StoreError::Refused(format!("user {} exists", user.name)));
    }
    users
        .insert(user.name.as_str(), encode(user).as_slice())
        .map_err(backend)?;
    Ok(())
}

/// The sequence numbers two descending index iterators have in common,
/// descending (a merge join on keys alone).
struct Intersect<A: Iterator<Item = Result<u64>>, B: Iterator<Item = Result<u64>>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
}

impl<A: Iterator<Item = Result<u64>>, B: Iterator<Item = Result<u64>>> Iterator
    for Intersect<A, B>
{
    type Item = Result<u64>;

    fn next(&mut self) -> Option<Result<u64>> {
        loop {
            let a = match self.a.peek()? {
                Ok(v) => *v,
                Err(_) => return self.a.next(),
            };
            let b = match self.b.peek()? {
                Ok(v) => *v,
                Err(_) => return self.b.next(),
            };
            match a.cmp(&b) {
                std::cmp::Ordering::Equal => {
                    self.b.next();
                    return self.a.next();
                }
                // Descending: drop the larger, it cannot be in the other.
                std::cmp::Ordering::Greater => {
                    self.a.next();
                }
                std::cmp::Ordering::Less => {
                    self.b.next();
                }
            }
        }
    }
}

/// Append one audit record inside `tx`: chained to the last one, indexed by actor.
fn append_audit_in(tx: &redb::WriteTransaction, entry: AuditEntry) -> Result<AuditRecord> {
    let entry = entry.bounded();
    let mut audit = tx.open_table(AUDIT).map_err(backend)?;
    let last: Option<AuditRecord> = audit
        .last()
        .map_err(backend)?
        .map(|(_, v)| decode("audit record", v.value()))
        .transpose()?;
    let (seq, prev) = match last {
        Some(r) => (r.seq + 1, r.sha256),
        None => (1, AUDIT_GENESIS.to_owned()),
    };
    let sha256 = audit_hash(seq, &prev, &entry);
    let record = AuditRecord {
        seq,
        entry,
        prev_sha256: prev,
        sha256,
    };
    audit
        .insert(seq, encode(&record).as_slice())
        .map_err(backend)?;
    tx.open_table(AUDIT_BY_ACTOR)
        .map_err(backend)?
        .insert((record.entry.actor.as_str(), seq), ())
        .map_err(backend)?;
    tx.open_table(AUDIT_BY_OUTCOME)
        .map_err(backend)?
        .insert((record.entry.outcome.as_str(), seq), ())
        .map_err(backend)?;
    let mut text = tx.open_table(AUDIT_TEXT).map_err(backend)?;
    let (block_no, _) = audit_text::block_of(seq);
    let mut block = text
        .get(block_no)
        .map_err(backend)?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    audit_text::push_record(&mut block, &record.entry);
    text.insert(block_no, block.as_slice()).map_err(backend)?;
    Ok(record)
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records always serialise")
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

impl RedbStore {
    /// Open or create the database file at `path`.
    pub fn open(path: &Path) -> Result<RedbStore> {
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(format!(
                "{} is already open in another process",
                path.display()
            )),
            e => StoreError::Backend(format!("cannot open {}: {e}", path.display())),
        })?;
        let store = RedbStore { db };
        store.init()?;
        Ok(store)
    }

    fn init(&self) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut meta = tx.open_table(META).map_err(backend)?;
            let found = meta
                .get("schema_version")
                .map_err(backend)?
                .map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(backend)?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::NewerSchema {
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(1) => {
                    tx.delete_table(JOBS).map_err(backend)?;
                    tx.delete_table(JOB_QUEUE).map_err(backend)?;
                    meta.insert("schema_version", SCHEMA_VERSION)
                        .map_err(backend)?;
                }
                Some(_) => {}
            }
            tx.open_table(NODES).map_err(backend)?;
            tx.open_table(JOBS).map_err(backend)?;
            tx.open_table(JOB_QUEUE).map_err(backend)?;
            tx.open_table(ACTIVE_JOBS).map_err(backend)?;
            tx.open_table(LEASES).map_err(backend)?;
            tx.open_table(NODE_JOBS).map_err(backend)?;
            tx.open_table(HEALTH_EVENTS).map_err(backend)?;
            tx.open_table(HEALTH_EVENTS_PRUNED).map_err(backend)?;
            tx.open_table(UPLOADS).map_err(backend)?;
            tx.open_table(DESTINATIONS).map_err(backend)?;
            tx.open_table(DELIVERIES).map_err(backend)?;
            tx.open_table(DELIVERIES_DUE).map_err(backend)?;
            tx.open_table(SCHEDULES).map_err(backend)?;
            tx.open_table(HEALTH_ISSUES).map_err(backend)?;
            for kind in NodePolicyKind::ALL {
                tx.open_table(node_policy_table(kind)).map_err(backend)?;
            }
            tx.open_table(ISSUE_KEYS).map_err(backend)?;
            tx.open_table(UPDATE_ORDERS).map_err(backend)?;
            tx.open_table(DELETION_ORDERS).map_err(backend)?;
            tx.open_table(ISSUES_BY_NODE).map_err(backend)?;
            tx.open_table(ISSUES_BY_STATE).map_err(backend)?;
            tx.open_table(OCCURRENCES).map_err(backend)?;
            tx.open_table(DEFERRED_OCCURRENCES).map_err(backend)?;
            tx.open_table(ENROLL_TOKENS).map_err(backend)?;
            tx.open_table(NODE_CREDENTIALS).map_err(backend)?;
            tx.open_table(USERS).map_err(backend)?;
            tx.open_table(SESSIONS).map_err(backend)?;
            tx.open_table(API_TOKENS).map_err(backend)?;
            let audit = tx.open_table(AUDIT).map_err(backend)?;
            let mut by_actor = tx.open_table(AUDIT_BY_ACTOR).map_err(backend)?;
            let mut by_outcome = tx.open_table(AUDIT_BY_OUTCOME).map_err(backend)?;
            let mut text = tx.open_table(AUDIT_TEXT).map_err(backend)?;
            // Logs from before an index: build it once.
            let build_actor = by_actor.is_empty().map_err(backend)?;
            let build_outcome = by_outcome.is_empty().map_err(backend)?;
            let build_text = text.is_empty().map_err(backend)?;
            if (build_actor || build_outcome || build_text) && !audit.is_empty().map_err(backend)? {
                // The text block being built, and its number.
                let mut block: (u64, Vec<u8>) = (0, Vec::new());
                for entry in audit.iter().map_err(backend)? {
                    let (seq, v) = entry.map_err(backend)?;
                    let record: AuditRecord = decode("audit record", v.value())?;
                    let (e, seq) = (&record.entry, seq.value());
                    if build_actor {
                        by_actor
                            .insert((e.actor.as_str(), seq), ())
                            .map_err(backend)?;
                    }
                    if build_outcome {
                        by_outcome
                            .insert((e.outcome.as_str(), seq), ())
                            .map_err(backend)?;
                    }
                    if build_text {
                        let (block_no, _) = audit_text::block_of(seq);
                        if block_no != block.0 && !block.1.is_empty() {
                            text.insert(block.0, block.1.as_slice()).map_err(backend)?;
                            block.1.clear();
                        }
                        block.0 = block_no;
                        audit_text::push_record(&mut block.1, e);
                    }
                }
                if build_text && !block.1.is_empty() {
                    text.insert(block.0, block.1.as_slice()).map_err(backend)?;
                }
            }
        }
        tx.commit().map_err(backend)
    }
}

impl RedbStore {
    /// Change a node credential in one transaction (only an active one
    /// unless `revoked_too`).
    fn change_credential(
        &self,
        node: &NodeId,
        revoked_too: bool,
        change: impl FnOnce(&mut NodeCredentialRecord),
    ) -> Result<NodeCredentialRecord> {
        let tx = self.db.begin_write().map_err(backend)?;
        let credential = {
            let mut credentials = tx.open_table(NODE_CREDENTIALS).map_err(backend)?;
            let mut c: NodeCredentialRecord =
                match credentials.get(node.as_str()).map_err(backend)? {
                    Some(v) => decode("node credential", v.value())?,
                    None => {
                        return Err(StoreError::Refused(format!(
                            "node {node} has no credential"
                        )));
                    }
                };
            if !c.is_active() && !revoked_too {
                return Err(StoreError::Refused(format!(
                    "node {node}'s credential is revoked"
                )));
            }
            change(&mut c);
            credentials
                .insert(node.as_str(), encode(&c).as_slice())
                .map_err(backend)?;
            c
        };
        tx.commit().map_err(backend)?;
        Ok(credential)
    }
}

impl Store for RedbStore {
    fn record_node_statuses(&self, updates: &[NodeStatusUpdate]) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut nodes = tx.open_table(NODES).map_err(backend)?;
            for u in updates {
                let existing = match nodes.get(u.node.as_str()).map_err(backend)? {
                    Some(v) => Some(decode::<NodeRecord>("node", v.value())?),
                    None => None,
                };
                let record = match existing {
                    None => NodeRecord {
                        id: u.node.clone(),
                        presence: u.presence,
                        details: u.details.clone(),
                        first_seen_ms: u.received_ms,
                        presence_since_ms: u.received_ms,
                        last_seen_ms: u.received_ms,
                    },
                    Some(mut r) => {
                        if r.presence != u.presence {
                            r.presence_since_ms = u.received_ms;
                        }
                        r.presence = u.presence;
                        if u.presence == Presence::Online && u.details.is_some() {
                            r.details = u.details.clone();
                        }
                        r.last_seen_ms = r.last_seen_ms.max(u.received_ms);
                        r
                    }
                };
                nodes
                    .insert(u.node.as_str(), encode(&record).as_slice())
                    .map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)
    }

    fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let nodes = tx.open_table(NODES).map_err(backend)?;
        match nodes.get(id.as_str()).map_err(backend)? {
            Some(v) => Ok(Some(decode("node", v.value())?)),
            None => Ok(None),
        }
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let nodes = tx.open_table(NODES).map_err(backend)?;
        let mut out = Vec::new();
        for entry in nodes.iter().map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("node", v.value())?);
        }
        Ok(out)
    }

    fn node_policies(
        &self,
        kind: NodePolicyKind,
    ) -> Result<std::collections::BTreeMap<NodeId, String>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(node_policy_table(kind)).map_err(backend)?;
        let mut out = std::collections::BTreeMap::new();
        for entry in table.iter().map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let node = NodeId::new(k.value())
                .map_err(|e| StoreError::Corrupt(format!("node {} policy: {e}", kind.as_str())))?;
            out.insert(node, v.value().to_owned());
        }
        Ok(out)
    }

    fn set_node_policy(
        &self,
        kind: NodePolicyKind,
        node: &NodeId,
        policy: Option<&str>,
    ) -> Result<Option<String>> {
        let tx = self.db.begin_write().map_err(backend)?;
        let before = {
            let mut table = tx.open_table(node_policy_table(kind)).map_err(backend)?;
            let before = match policy {
                Some(name) => table.insert(node.as_str(), name).map_err(backend)?,
                None => table.remove(node.as_str()).map_err(backend)?,
            };
            before.map(|v| v.value().to_owned())
        };
        tx.commit().map_err(backend)?;
        Ok(before)
    }

    fn update_orders(&self) -> Result<Vec<(NodeId, rakkr_protocol::update::UpdateOrder)>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(UPDATE_ORDERS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let node = NodeId::new(k.value())
                .map_err(|e| StoreError::Corrupt(format!("update order: {e}")))?;
            let order = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(format!("update order of {node}: {e}")))?;
            out.push((node, order));
        }
        Ok(out)
    }

    fn set_update_order(
        &self,
        node: &NodeId,
        order: Option<&rakkr_protocol::update::UpdateOrder>,
    ) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut table = tx.open_table(UPDATE_ORDERS).map_err(backend)?;
            match order {
                Some(order) => {
                    let bytes = serde_json::to_vec(order)
                        .map_err(|e| StoreError::Corrupt(format!("update order: {e}")))?;
                    table
                        .insert(node.as_str(), bytes.as_slice())
                        .map_err(backend)?;
                }
                None => {
                    table.remove(node.as_str()).map_err(backend)?;
                }
            }
        }
        tx.commit().map_err(backend)?;
        Ok(())
    }

    fn enqueue_job(&self, new: NewJob, now_ms: u64) -> Result<JobRecord> {
        let job = new_job_record(JobId::new(now_ms), new, now_ms)?;
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut tables = JobTables::open(&tx)?;
            tables.queue_new(&job)?;
        }
        tx.commit().map_err(backend)?;
        Ok(job)
    }

    fn claim_jobs(
        &self,
        node: &NodeId,
        free_slots: u16,
        held: &[JobId],
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Vec<JobRecord>> {
        if free_slots == 0 {
            return Ok(Vec::new());
        }
        // One write transaction: redb admits one writer at a time, so no two
        // claims can see the same queue head.
        let tx = self.db.begin_write().map_err(backend)?;
        let mut out = Vec::new();
        let mut changed = false;
        {
            let mut tables = JobTables::open(&tx)?;
            for id in JobTables::ids_of(&tables.active, node)? {
                let job = tables.get_existing(id)?;
                if job.state == JobState::Leased && !held.contains(&job.id) {
                    out.push(job);
                }
            }
            out.truncate(usize::from(free_slots));
            let queued = JobTables::ids_of(&tables.queue, node)?;
            let mut missed = Vec::new();
            for id in queued {
                if out.len() >= usize::from(free_slots) {
                    break;
                }
                let old = tables.get_existing(id)?;
                let mut job = old.clone();
                if old.not_after_ms.is_some_and(|t| now_ms >= t) {
                    job.state = transition(job.state, JobState::Cancelled)?;
                    job.updated_ms = now_ms;
                    job.detail = "its schedule's window ended before the node took it".into();
                    tables.put(Some(&old), &job)?;
                    missed.push(job);
                    changed = true;
                    continue;
                }
                job.state = transition(job.state, JobState::Leased)?;
                job.updated_ms = now_ms;
                job.lease = Some(Lease {
                    id: next_lease_id(&tx)?,
                    expires_ms: now_ms.saturating_add(lease_ms),
                });
                tables.put(Some(&old), &job)?;
                out.push(job);
                changed = true;
            }
            drop(tables);
            let events = window_passed_events(&tx, &missed, now_ms)?;
            insert_health_events(&tx, &events)?;
        }
        // An idle node's claim changes nothing: no commit, no fsync.
        if changed {
            tx.commit().map_err(backend)?;
        } else {
            tx.abort().map_err(backend)?;
        }
        Ok(out)
    }

    fn renew_lease(
        &self,
        node: &NodeId,
        id: JobId,
        lease_id: u64,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<JobRecord> {
        let tx = self.db.begin_write().map_err(backend)?;
        let job = {
            let mut tables = JobTables::open(&tx)?;
            let old = leased_job(&tables, node, id, lease_id)?;
            let mut job = old.clone();
            if job.state == JobState::Lost {
                job.state = transition(job.state, JobState::Running)?;
                job.updated_ms = now_ms;
                insert_health_events(&tx, &[job_lost_event(&job, HealthChange::Cleared, now_ms)])?;
            } else if !matches!(
                job.state,
                JobState::Leased | JobState::Running | JobState::StopRequested
            ) {
                return Err(StoreError::StaleLease {
                    job: id,
                    presented: lease_id,
                    current: format!("none: the job is {}", job.state.as_str()),
                });
            }
            job.lease = Some(Lease {
                id: lease_id,
                expires_ms: now_ms.saturating_add(lease_ms),
            });
            tables.put(Some(&old), &job)?;
            job
        };
        tx.commit().map_err(backend)?;
        Ok(job)
    }

    fn apply_job_update(
        &self,
        node: &NodeId,
        msg_id: MessageId,
        update: &JobUpdate,
        now_ms: u64,
    ) -> Result<UpdateOutcome> {
        let tx = self.db.begin_write().map_err(backend)?;
        let outcome = {
            let mut tables = JobTables::open(&tx)?;
            let old = leased_job(&tables, node, update.job_id, update.lease_id)?;
            if old.applied.contains(&msg_id) {
                return Ok(UpdateOutcome::Duplicate(old));
            }
            let mut job = old.clone();
            // A `running` that arrives after a stop request changes nothing.
            let late_running =
                update.state == JobState::Running && job.state == JobState::StopRequested;
            if !late_running {
                job.state = transition(job.state, update.state)?;
                job.updated_ms = now_ms;
            }
            take_report(&mut job, update);
            mark_applied(&mut job, msg_id);
            if old.state == JobState::Lost {
                insert_health_events(&tx, &[job_lost_event(&job, HealthChange::Cleared, now_ms)])?;
            }
            tables.put(Some(&old), &job)?;
            UpdateOutcome::Applied(job)
        };
        tx.commit().map_err(backend)?;
        Ok(outcome)
    }

    fn adopt_job(
        &self,
        node: &NodeId,
        msg_id: MessageId,
        update: &JobUpdate,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<UpdateOutcome> {
        let Some(started) = update.autonomous.as_deref() else {
            return Err(StoreError::Refused(
                "not an autonomous update (it names no occurrence)".into(),
            ));
        };
        // A node starts calendar occurrences only: named by a local date or always-on.
        if started.occurrence != rakkr_protocol::schedule::ALWAYS_ON_KEY
            && started
                .occurrence
                .parse::<rakkr_protocol::schedule::CivilDate>()
                .is_err()
        {
            return Err(StoreError::Refused(format!(
                "{:?} is not an occurrence a node may start",
                started.occurrence
            )));
        }
        if update.lease_id != 0 {
            return Err(StoreError::Refused(
                "an autonomous update has lease id 0".into(),
            ));
        }
        let tx = self.db.begin_write().map_err(backend)?;
        let outcome = {
            let mut tables = JobTables::open(&tx)?;
            let old = tables.get(update.job_id.as_u128())?;
            let mut job = match &old {
                Some(job) if &job.node != node => {
                    return Err(StoreError::WrongNode {
                        job: job.id,
                        owner: job.node.clone(),
                        node: node.clone(),
                    });
                }
                Some(job) if job.applied.contains(&msg_id) => {
                    return Ok(UpdateOutcome::Duplicate(job.clone()));
                }
                Some(job) => job.clone(),
                None => {
                    let channels = {
                        let nodes = tx.open_table(NODES).map_err(backend)?;
                        match nodes.get(node.as_str()).map_err(backend)? {
                            Some(v) => decode::<NodeRecord>("node", v.value())?
                                .details
                                .map_or(0, |d| usize::from(d.capabilities.channels)),
                            None => 0,
                        }
                    };
                    let mut sources: Vec<u16> = started
                        .spec
                        .channel_map(channels)
                        .map(|m| m.sources().map(|c| c as u16).collect())
                        .unwrap_or_default();
                    sources.sort_unstable();
                    sources.dedup();
                    let created = update
                        .recording
                        .as_ref()
                        .map_or(update.at_ms, |r| r.start_unix_ms);
                    // Named by the schedule's templates, as the server would have.
                    let (title, folder) = {
                        let schedules = tx.open_table(SCHEDULES).map_err(backend)?;
                        match schedules.get(started.schedule.as_u128()).map_err(backend)? {
                            Some(v) => decode::<ScheduleRecord>("schedule", v.value())?
                                .spec
                                .recording_names(&started.occurrence, created),
                            None => (None, None),
                        }
                    };
                    let new = NewJob {
                        node: node.clone(),
                        spec: started.spec.clone(),
                        sources,
                        scheduled: Some(ScheduledBy {
                            schedule: started.schedule,
                            occurrence: started.occurrence.clone(),
                        }),
                        tags: started.tags.clone(),
                        title,
                        folder,
                        not_after_ms: None,
                    };
                    let mut job = new_job_record(update.job_id, new, created)?;
                    job.detail = format!(
                        "started by the node on its own at {} ms: the server was unreachable",
                        update.at_ms
                    );
                    job
                }
            };
            let before = old.as_ref().map(|j| j.state);
            if update.state == JobState::Running {
                // Running already (taken over before, or this message is
                // older than what the store knows): nothing changes.
                if matches!(
                    job.state,
                    JobState::Queued | JobState::Leased | JobState::Lost
                ) {
                    let lease_id = match (job.state, job.lease) {
                        (JobState::Leased, Some(l)) => l.id,
                        _ => next_lease_id(&tx)?,
                    };
                    if job.state == JobState::Queued {
                        job.state = transition(job.state, JobState::Leased)?;
                    }
                    job.state = transition(job.state, JobState::Running)?;
                    job.lease = Some(Lease {
                        id: lease_id,
                        expires_ms: now_ms + lease_ms,
                    });
                    job.updated_ms = now_ms;
                }
            } else if !job.state.is_terminal() {
                if job.state == JobState::Queued {
                    job.state = transition(job.state, JobState::Leased)?;
                }
                job.state = transition(job.state, update.state)?;
                job.updated_ms = now_ms;
                take_report(&mut job, update);
            }
            mark_applied(&mut job, msg_id);
            if before == Some(JobState::Lost) {
                insert_health_events(&tx, &[job_lost_event(&job, HealthChange::Cleared, now_ms)])?;
            }
            tables.put(old.as_ref(), &job)?;
            drop(tables);
            if old.is_none() {
                join_occurrence(&tx, &job, started, now_ms)?;
            }
            UpdateOutcome::Applied(job)
        };
        tx.commit().map_err(backend)?;
        Ok(outcome)
    }

    fn request_stop(&self, id: JobId, cancel: bool, now_ms: u64) -> Result<JobRecord> {
        let tx = self.db.begin_write().map_err(backend)?;
        let job = {
            let mut tables = JobTables::open(&tx)?;
            let old = tables.get(id.as_u128())?.ok_or(StoreError::NoSuchJob(id))?;
            let mut job = old.clone();
            job.state = match job.state {
                // Nothing recorded yet: nothing to keep.
                JobState::Queued => transition(job.state, JobState::Cancelled)?,
                // Asked again: a stop may become a cancel, never the reverse.
                JobState::StopRequested => JobState::StopRequested,
                s => transition(s, JobState::StopRequested)?,
            };
            job.cancel_requested |= cancel;
            job.updated_ms = now_ms;
            tables.put(Some(&old), &job)?;
            job
        };
        tx.commit().map_err(backend)?;
        Ok(job)
    }

    fn annotate_job(
        &self,
        id: JobId,
        notes: &str,
        tags: &[String],
    ) -> Result<(JobRecord, JobRecord)> {
        let (notes, tags) = check_annotation(notes, tags).map_err(StoreError::Refused)?;
        let tx = self.db.begin_write().map_err(backend)?;
        let (old, job) = {
            let mut tables = JobTables::open(&tx)?;
            let old = tables.get(id.as_u128())?.ok_or(StoreError::NoSuchJob(id))?;
            let job = JobRecord {
                notes,
                tags,
                ..old.clone()
            };
            tables.put(Some(&old), &job)?;
            (old, job)
        };
        tx.commit().map_err(backend)?;
        Ok((old, job))
    }

    fn expire_leases(&self, now_ms: u64) -> Result<Vec<JobRecord>> {
        let tx = self.db.begin_write().map_err(backend)?;
        let mut lost = Vec::new();
        {
            let mut tables = JobTables::open(&tx)?;
            let expired = tables.leases_before(now_ms)?;
            for id in expired {
                let old = tables.get_existing(id)?;
                let mut job = old.clone();
                job.state = transition(job.state, JobState::Lost)?;
                job.updated_ms = now_ms;
                tables.put(Some(&old), &job)?;
                lost.push(job);
            }
            let events: Vec<_> = lost
                .iter()
                .map(|j| job_lost_event(j, HealthChange::Raised, now_ms))
                .collect();
            insert_health_events(&tx, &events)?;
        }
        if lost.is_empty() {
            tx.abort().map_err(backend)?;
        } else {
            tx.commit().map_err(backend)?;
        }
        Ok(lost)
    }

    fn extend_leases_after_downtime(&self, now_ms: u64, lease_ms: u64) -> Result<usize> {
        let until = now_ms.saturating_add(lease_ms);
        let tx = self.db.begin_write().map_err(backend)?;
        let mut extended = 0;
        {
            let mut tables = JobTables::open(&tx)?;
            let short = tables.leases_before(until)?;
            for id in short {
                let old = tables.get_existing(id)?;
                let mut job = old.clone();
                if let Some(lease) = job.lease.as_mut() {
                    lease.expires_ms = until;
                }
                tables.put(Some(&old), &job)?;
                extended += 1;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(extended)
    }

    fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let jobs = tx.open_table(JOBS).map_err(backend)?;
        match jobs.get(id.as_u128()).map_err(backend)? {
            Some(v) => Ok(Some(decode("job", v.value())?)),
            None => Ok(None),
        }
    }

    fn jobs_before(
        &self,
        node: Option<&NodeId>,
        before: Option<JobId>,
        limit: usize,
    ) -> Result<Vec<JobRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let jobs = tx.open_table(JOBS).map_err(backend)?;
        let below = before.map_or(u128::MAX, |b| b.as_u128());
        let mut out = Vec::new();
        match node {
            None => {
                for entry in jobs.range(..below).map_err(backend)?.rev().take(limit) {
                    let (_, v) = entry.map_err(backend)?;
                    out.push(decode("job", v.value())?);
                }
            }
            Some(node) => {
                let index = tx.open_table(NODE_JOBS).map_err(backend)?;
                let range = (node.as_str(), 0u128)..(node.as_str(), below);
                for entry in index.range(range).map_err(backend)?.rev().take(limit) {
                    let (k, _) = entry.map_err(backend)?;
                    if let Some(v) = jobs.get(k.value().1).map_err(backend)? {
                        out.push(decode("job", v.value())?);
                    }
                }
            }
        }
        Ok(out)
    }

    fn create_enroll_token(&self, token: EnrollTokenRecord) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut tokens = tx.open_table(ENROLL_TOKENS).map_err(backend)?;
            if tokens.get(token.id.as_str()).map_err(backend)?.is_some() {
                return Err(StoreError::Refused(format!("token id {} exists", token.id)));
            }
            tokens
                .insert(token.id.as_str(), encode(&token).as_slice())
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn enroll_tokens(&self, now_ms: u64) -> Result<Vec<EnrollTokenRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let tokens = tx.open_table(ENROLL_TOKENS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in tokens.iter().map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            let t: EnrollTokenRecord = decode("enrollment token", v.value())?;
            if t.used.is_none() && t.expires_ms > now_ms {
                out.push(t);
            }
        }
        out.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
        Ok(out)
    }

    fn enroll_node(
        &self,
        token_id: &str,
        secret_sha256: &str,
        node: &NodeId,
        credential_sha256: &str,
        now_ms: u64,
    ) -> Result<NodeCredentialRecord> {
        let refused = |why: &str| Err(StoreError::Refused(why.to_owned()));
        let tx = self.db.begin_write().map_err(backend)?;
        let credential = {
            let mut tokens = tx.open_table(ENROLL_TOKENS).map_err(backend)?;
            let token: Option<EnrollTokenRecord> = match tokens.get(token_id).map_err(backend)? {
                Some(v) => Some(decode("enrollment token", v.value())?),
                None => None,
            };
            // Unknown and wrong secret read the same: no oracle for guessing ids.
            let Some(mut token) = token.filter(|t| {
                rakkr_protocol::digest::constant_time_eq(&t.secret_sha256, secret_sha256)
            }) else {
                return refused("unknown enrollment token");
            };
            if let Some((_, by)) = &token.used {
                return Err(StoreError::Refused(format!(
                    "enrollment token {token_id} was already used (by node {by}); create a new one"
                )));
            }
            if token.expires_ms <= now_ms {
                return Err(StoreError::Refused(format!(
                    "enrollment token {token_id} has expired; create a new one"
                )));
            }
            if token.node.as_ref().is_some_and(|n| n != node) {
                return Err(StoreError::Refused(format!(
                    "enrollment token {token_id} is for node {}, not {node}",
                    token.node.as_ref().map(|n| n.as_str()).unwrap_or_default()
                )));
            }
            let mut credentials = tx.open_table(NODE_CREDENTIALS).map_err(backend)?;
            let existing: Option<NodeCredentialRecord> =
                match credentials.get(node.as_str()).map_err(backend)? {
                    Some(v) => Some(decode("node credential", v.value())?),
                    None => None,
                };
            if existing.as_ref().is_some_and(|c| c.is_active()) && token.node.is_none() {
                return Err(StoreError::Refused(format!(
                    "node {node} is enrolled already; revoke its credential or create a token for it \
                     (enroll-token create --node {node}) to enroll it again"
                )));
            }
            token.used = Some((now_ms, node.clone()));
            tokens
                .insert(token_id, encode(&token).as_slice())
                .map_err(backend)?;
            let credential = NodeCredentialRecord {
                node: node.clone(),
                secret_sha256: credential_sha256.to_owned(),
                next_sha256: None,
                generation: existing.map_or(0, |c| c.generation + 1),
                created_ms: now_ms,
                revoked_ms: None,
            };
            credentials
                .insert(node.as_str(), encode(&credential).as_slice())
                .map_err(backend)?;
            credential
        };
        tx.commit().map_err(backend)?;
        Ok(credential)
    }

    fn node_credentials(&self) -> Result<Vec<NodeCredentialRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let credentials = tx.open_table(NODE_CREDENTIALS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in credentials.iter().map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("node credential", v.value())?);
        }
        Ok(out)
    }

    fn set_next_node_credential(
        &self,
        node: &NodeId,
        next_sha256: &str,
        _now_ms: u64,
    ) -> Result<NodeCredentialRecord> {
        self.change_credential(node, false, |c| {
            c.next_sha256 = Some(next_sha256.to_owned());
        })
    }

    fn promote_node_credential(&self, node: &NodeId, _now_ms: u64) -> Result<NodeCredentialRecord> {
        self.change_credential(node, false, |c| {
            if let Some(next) = c.next_sha256.take() {
                c.secret_sha256 = next;
                c.generation += 1;
            }
        })
    }

    fn revoke_node_credential(&self, node: &NodeId, now_ms: u64) -> Result<NodeCredentialRecord> {
        self.change_credential(node, true, |c| {
            c.revoked_ms.get_or_insert(now_ms);
            c.next_sha256 = None;
        })
    }

    fn create_user(&self, user: UserRecord) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        insert_new_user(&tx, &user)?;
        tx.commit().map_err(backend)
    }

    fn create_first_user(&self, user: UserRecord) -> Result<bool> {
        let tx = self.db.begin_write().map_err(backend)?;
        let empty = tx
            .open_table(USERS)
            .map_err(backend)?
            .is_empty()
            .map_err(backend)?;
        if !empty {
            return Ok(false);
        }
        insert_new_user(&tx, &user)?;
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let users = tx.open_table(USERS).map_err(backend)?;
        users
            .get(name)
            .map_err(backend)?
            .map(|v| decode("user", v.value()))
            .transpose()
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let users = tx.open_table(USERS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in users.iter().map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("user", v.value())?);
        }
        Ok(out)
    }

    fn change_user(&self, name: &str, change: UserChange, now_ms: u64) -> Result<UserRecord> {
        let tx = self.db.begin_write().map_err(backend)?;
        let user = {
            let mut users = tx.open_table(USERS).map_err(backend)?;
            let mut user: UserRecord = match users.get(name).map_err(backend)? {
                Some(v) => decode("user", v.value())?,
                None => return Err(StoreError::Refused(format!("no user {name:?}"))),
            };
            let was_active_owner = user.role == Role::Owner && !user.disabled;
            match change {
                UserChange::Password { phc, must_change } => {
                    user.password_phc = phc;
                    user.must_change_password = must_change;
                    user.password_changed_ms = now_ms;
                    user.sessions_valid_after_ms = now_ms;
                }
                UserChange::Disabled(disabled) => {
                    user.disabled = disabled;
                    if disabled {
                        user.sessions_valid_after_ms = now_ms;
                    }
                }
                UserChange::Role(role) => user.role = role,
                // Sessions started in this very millisecond end too.
                UserChange::EndSessions => user.sessions_valid_after_ms = now_ms + 1,
            }
            let still_active_owner = user.role == Role::Owner && !user.disabled;
            if was_active_owner && !still_active_owner {
                let mut others = 0;
                for entry in users.iter().map_err(backend)? {
                    let (k, v) = entry.map_err(backend)?;
                    if k.value() == name {
                        continue;
                    }
                    let other: UserRecord = decode("user", v.value())?;
                    if other.role == Role::Owner && !other.disabled {
                        others += 1;
                    }
                }
                if others == 0 {
                    return Err(StoreError::Refused(format!(
                        "{name} is the last enabled owner; make another user owner first"
                    )));
                }
            }
            users
                .insert(name, encode(&user).as_slice())
                .map_err(backend)?;
            user
        };
        tx.commit().map_err(backend)?;
        Ok(user)
    }

    fn create_session(&self, session: SessionRecord, max_per_user: usize) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(backend)?;
            let mut mine: Vec<(u64, String)> = Vec::new();
            for entry in sessions.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let other: SessionRecord = decode("session", v.value())?;
                if other.user == session.user {
                    mine.push((other.created_ms, k.value().to_owned()));
                }
            }
            mine.sort();
            let excess = (mine.len() + 1).saturating_sub(max_per_user.max(1));
            for (_, key) in mine.into_iter().take(excess) {
                sessions.remove(key.as_str()).map_err(backend)?;
            }
            sessions
                .insert(session.id_sha256.as_str(), encode(&session).as_slice())
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn session(&self, id_sha256: &str) -> Result<Option<SessionRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let sessions = tx.open_table(SESSIONS).map_err(backend)?;
        sessions
            .get(id_sha256)
            .map_err(backend)?
            .map(|v| decode("session", v.value()))
            .transpose()
    }

    fn touch_session(&self, id_sha256: &str, now_ms: u64) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(backend)?;
            let found: Option<SessionRecord> = sessions
                .get(id_sha256)
                .map_err(backend)?
                .map(|v| decode("session", v.value()))
                .transpose()?;
            if let Some(mut session) = found {
                session.last_seen_ms = session.last_seen_ms.max(now_ms);
                sessions
                    .insert(id_sha256, encode(&session).as_slice())
                    .map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)
    }

    fn delete_session(&self, id_sha256: &str) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        tx.open_table(SESSIONS)
            .map_err(backend)?
            .remove(id_sha256)
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn prune_sessions(&self, idle_before_ms: u64, created_before_ms: u64) -> Result<usize> {
        let tx = self.db.begin_write().map_err(backend)?;
        let pruned = {
            let mut sessions = tx.open_table(SESSIONS).map_err(backend)?;
            sessions
                .extract_if(|_, v| {
                    serde_json::from_slice::<SessionRecord>(v).map_or(true, |s| {
                        s.last_seen_ms < idle_before_ms || s.created_ms < created_before_ms
                    })
                })
                .map_err(backend)?
                .count()
        };
        tx.commit().map_err(backend)?;
        Ok(pruned)
    }

    fn create_api_token(&self, token: ApiTokenRecord) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut tokens = tx.open_table(API_TOKENS).map_err(backend)?;
            if tokens.get(token.id.as_str()).map_err(backend)?.is_some() {
                return Err(StoreError::Refused(format!(
                    "API token id {} exists",
                    token.id
                )));
            }
            tokens
                .insert(token.id.as_str(), encode(&token).as_slice())
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn api_token(&self, id: &str) -> Result<Option<ApiTokenRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let tokens = tx.open_table(API_TOKENS).map_err(backend)?;
        tokens
            .get(id)
            .map_err(backend)?
            .map(|v| decode("API token", v.value()))
            .transpose()
    }

    fn api_tokens(&self) -> Result<Vec<ApiTokenRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let tokens = tx.open_table(API_TOKENS).map_err(backend)?;
        let mut out: Vec<ApiTokenRecord> = Vec::new();
        for entry in tokens.iter().map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("API token", v.value())?);
        }
        out.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
        Ok(out)
    }

    fn revoke_api_token(&self, id: &str, now_ms: u64) -> Result<ApiTokenRecord> {
        let tx = self.db.begin_write().map_err(backend)?;
        let token = {
            let mut tokens = tx.open_table(API_TOKENS).map_err(backend)?;
            let mut token: ApiTokenRecord = match tokens.get(id).map_err(backend)? {
                Some(v) => decode("API token", v.value())?,
                None => return Err(StoreError::Refused(format!("no API token {id:?}"))),
            };
            token.revoked_ms.get_or_insert(now_ms);
            tokens
                .insert(id, encode(&token).as_slice())
                .map_err(backend)?;
            token
        };
        tx.commit().map_err(backend)?;
        Ok(token)
    }

    fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let tx = self.db.begin_write().map_err(backend)?;
        let record = append_audit_in(&tx, entry)?;
        tx.commit().map_err(backend)?;
        Ok(record)
    }

    fn append_audit_many(&self, entries: Vec<AuditEntry>) -> Result<u64> {
        let tx = self.db.begin_write().map_err(backend)?;
        let mut last = 0;
        for entry in entries {
            last = append_audit_in(&tx, entry)?.seq;
        }
        tx.commit().map_err(backend)?;
        Ok(last)
    }

    fn audit_records(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let audit = tx.open_table(AUDIT).map_err(backend)?;
        let mut out = Vec::new();
        for entry in audit
            .range(after.saturating_add(1)..)
            .map_err(backend)?
            .take(limit)
        {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("audit record", v.value())?);
        }
        Ok(out)
    }

    fn busy_nodes(&self) -> Result<std::collections::BTreeSet<NodeId>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let active = tx.open_table(ACTIVE_JOBS).map_err(backend)?;
        let mut out = std::collections::BTreeSet::new();
        for entry in active.iter().map_err(backend)? {
            let (k, _) = entry.map_err(backend)?;
            if let Ok(node) = NodeId::new(k.value().0) {
                out.insert(node);
            }
        }
        Ok(out)
    }

    fn active_jobs(&self) -> Result<Vec<JobRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let active = tx.open_table(ACTIVE_JOBS).map_err(backend)?;
        let jobs = tx.open_table(JOBS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in active.iter().map_err(backend)? {
            let (k, _) = entry.map_err(backend)?;
            if let Some(v) = jobs.get(k.value().1).map_err(backend)? {
                out.push(decode::<JobRecord>("job", v.value())?);
            }
        }
        Ok(out)
    }

    fn job_gauges(&self) -> Result<JobGauges> {
        let tx = self.db.begin_read().map_err(backend)?;
        let queued = tx
            .open_table(JOB_QUEUE)
            .map_err(backend)?
            .len()
            .map_err(backend)?;
        let mut gauges = JobGauges {
            queued,
            ..JobGauges::default()
        };
        // Jobs under a lease, by their state: as many as run at once, not
        // every job there ever was.
        let jobs = tx.open_table(JOBS).map_err(backend)?;
        for entry in tx
            .open_table(LEASES)
            .map_err(backend)?
            .iter()
            .map_err(backend)?
        {
            let (k, _) = entry.map_err(backend)?;
            let Some(v) = jobs.get(k.value().1).map_err(backend)? else {
                continue;
            };
            let job: JobRecord = decode("job", v.value())?;
            match job.state {
                JobState::Leased => gauges.leased += 1,
                JobState::Running => gauges.running += 1,
                JobState::StopRequested => gauges.stop_requested += 1,
                _ => {}
            }
        }
        Ok(gauges)
    }

    fn search_audit(&self, search: &AuditSearch) -> Result<AuditPage> {
        let tx = self.db.begin_read().map_err(backend)?;
        let audit = tx.open_table(AUDIT).map_err(backend)?;
        let get = |seq: u64| -> Result<Option<AuditRecord>> {
            audit
                .get(seq)
                .map_err(backend)?
                .map(|v| decode("audit record", v.value()))
                .transpose()
        };
        // The first sequence number whose record's time fails `keep`, by
        // bisection (times grow with seq; records are appended as they happen).
        let last = audit.last().map_err(backend)?.map_or(0, |(k, _)| k.value());
        let bisect = |keep: &dyn Fn(u64) -> bool| -> Result<u64> {
            let (mut lo, mut hi) = (1u64, last + 1);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match get(mid)? {
                    Some(r) if keep(r.entry.at_ms) => lo = mid + 1,
                    _ => hi = mid,
                }
            }
            Ok(lo)
        };
        // Newest first, from `begin` (inclusive) to `end` (exclusive).
        let mut end = search.before.unwrap_or(u64::MAX);
        if let Some(to_ms) = search.to_ms {
            end = end.min(bisect(&|at| at <= to_ms)?);
        }
        let begin = match search.from_ms {
            Some(from_ms) => bisect(&|at| at < from_ms)?,
            None => 0,
        };
        if begin >= end {
            return Ok(AuditPage {
                records: Vec::new(),
                next_before: None,
                scanned: 0,
            });
        }
        // Descending sequence numbers from one index (`key`'s entries below `end`).
        type Index = TableDefinition<'static, (&'static str, u64), ()>;
        let from_index =
            |table: Index, key: &str| -> Result<Box<dyn Iterator<Item = Result<u64>> + '_>> {
                let index = tx.open_table(table).map_err(backend)?;
                let range = index.range((key, begin)..(key, end)).map_err(backend)?;
                Ok(Box::new(
                    range
                        .rev()
                        .map(|e| e.map(|(k, _)| k.value().1).map_err(backend)),
                ))
            };
        // Text is stored verbatim in the record's JSON unless it has a quote,
        // a backslash or a control character: a record whose bytes lack the
        // text cannot match, and is skipped without decoding.
        let verbatim = search
            .text
            .as_deref()
            .filter(|t| !t.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20))
            .map(|t| crate::types::CaselessFinder::new(t.as_bytes()));
        let mut page = AuditPage {
            records: Vec::new(),
            next_before: None,
            scanned: 0,
        };
        // Look at one record (`None`: known not to match); false once the
        // page is full or its bound reached.
        let mut consider = |seq: u64, raw: Option<&[u8]>| -> Result<bool> {
            if page.records.len() >= search.limit || page.scanned >= MAX_AUDIT_SCAN {
                page.next_before = Some(seq + 1);
                return Ok(false);
            }
            page.scanned += 1;
            let Some(raw) = raw else {
                return Ok(true);
            };
            if verbatim.as_ref().is_some_and(|finder| !finder.is_in(raw)) {
                return Ok(true);
            }
            // Filter on the few fields a search needs; decode matches only.
            let probe: AuditProbe<'_> = serde_json::from_slice(raw)
                .map_err(|e| StoreError::Corrupt(format!("audit record {seq}: {e}")))?;
            if search.matches_probe(&probe) {
                page.records.push(decode("audit record", raw)?);
            }
            Ok(true)
        };
        // The indexes the search allows: actor and outcome together are
        // intersected on their keys, so only records matching both are read.
        // Without either, the log itself is read newest first.
        let seqs: Box<dyn Iterator<Item = Result<u64>>> = match (&search.actor, &search.outcome) {
            (Some(actor), Some(outcome)) => Box::new(Intersect {
                a: from_index(AUDIT_BY_ACTOR, actor)?.peekable(),
                b: from_index(AUDIT_BY_OUTCOME, outcome)?.peekable(),
            }),
            (Some(actor), None) => from_index(AUDIT_BY_ACTOR, actor)?,
            (None, Some(outcome)) => from_index(AUDIT_BY_OUTCOME, outcome)?,
            (None, None) => {
                // Text alone: the packed text blocks say which records to read.
                if let Some(finder) = search.text.as_deref().and_then(BlockFinder::new) {
                    let text = tx.open_table(AUDIT_TEXT).map_err(backend)?;
                    let (first, past) = (begin.max(1), end.min(last.saturating_add(1)));
                    let mut seq = past;
                    while seq > first {
                        let (block_no, _) = audit_text::block_of(seq - 1);
                        let block_first = block_no * audit_text::BLOCK_RECORDS + 1;
                        let records = (last - block_first + 1).min(audit_text::BLOCK_RECORDS);
                        let candidates = match text.get(block_no).map_err(backend)? {
                            Some(block) => finder.candidates(block.value(), records as u32),
                            None => u64::MAX,
                        };
                        while seq > first.max(block_first) {
                            seq -= 1;
                            let bit = 1u64 << (seq - block_first);
                            let raw = match candidates & bit {
                                0 => None,
                                _ => audit.get(seq).map_err(backend)?,
                            };
                            if !consider(seq, raw.as_ref().map(|v| v.value()))? {
                                return Ok(page);
                            }
                        }
                    }
                    return Ok(page);
                }
                for entry in audit.range(begin..end).map_err(backend)?.rev() {
                    let (k, v) = entry.map_err(backend)?;
                    if !consider(k.value(), Some(v.value()))? {
                        break;
                    }
                }
                return Ok(page);
            }
        };
        for seq in seqs {
            let seq = seq?;
            let Some(bytes) = audit.get(seq).map_err(backend)? else {
                continue;
            };
            if !consider(seq, Some(bytes.value()))? {
                break;
            }
        }
        Ok(page)
    }

    fn create_schedule(&self, schedule: ScheduleRecord) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut table = tx.open_table(SCHEDULES).map_err(backend)?;
            if table.len().map_err(backend)? as usize >= MAX_SCHEDULES {
                return Err(StoreError::Refused(format!(
                    "this server keeps at most {MAX_SCHEDULES} schedules"
                )));
            }
            let id = schedule.id.as_u128();
            if table.get(id).map_err(backend)?.is_some() {
                return Err(StoreError::Refused(format!(
                    "schedule {} exists",
                    schedule.id
                )));
            }
            table
                .insert(id, encode(&schedule).as_slice())
                .map_err(backend)?;
            bump_schedules_generation(&tx)?;
        }
        tx.commit().map_err(backend)
    }

    fn update_schedule(
        &self,
        id: ScheduleId,
        spec: ScheduleSpec,
        now_ms: u64,
    ) -> Result<(ScheduleRecord, ScheduleRecord)> {
        let tx = self.db.begin_write().map_err(backend)?;
        let pair = {
            let mut table = tx.open_table(SCHEDULES).map_err(backend)?;
            let before: ScheduleRecord = match table.get(id.as_u128()).map_err(backend)? {
                Some(v) => decode("schedule", v.value())?,
                None => return Err(StoreError::NoSuchSchedule(id)),
            };
            let after = ScheduleRecord {
                spec,
                updated_ms: now_ms,
                revision: before.revision + 1,
                ..before.clone()
            };
            table
                .insert(id.as_u128(), encode(&after).as_slice())
                .map_err(backend)?;
            bump_schedules_generation(&tx)?;
            (before, after)
        };
        tx.commit().map_err(backend)?;
        Ok(pair)
    }

    fn delete_schedule(&self, id: ScheduleId, now_ms: u64) -> Result<ScheduleRecord> {
        let tx = self.db.begin_write().map_err(backend)?;
        let before = {
            let mut table = tx.open_table(SCHEDULES).map_err(backend)?;
            let before: ScheduleRecord = match table.remove(id.as_u128()).map_err(backend)? {
                Some(v) => decode("schedule", v.value())?,
                None => return Err(StoreError::NoSuchSchedule(id)),
            };
            let mut occurrences = tx.open_table(OCCURRENCES).map_err(backend)?;
            let mut deferred = tx.open_table(DEFERRED_OCCURRENCES).map_err(backend)?;
            let mut cleared = Vec::new();
            for record in occurrences_of(&occurrences, id, usize::MAX)? {
                if let Some(d) = &record.deferred {
                    deferred
                        .remove((
                            record.occurrence.end_ms,
                            id.as_u128(),
                            record.occurrence.key.as_str(),
                        ))
                        .map_err(backend)?;
                    cleared.push(deferral_event(
                        &before,
                        &record.occurrence,
                        HealthCondition::ScheduleDeferred,
                        HealthChange::Cleared,
                        format!(
                            "the schedule was deleted; it waited since {} ms: {}",
                            d.since_ms, d.reason
                        ),
                        now_ms,
                    ));
                }
                occurrences
                    .remove((id.as_u128(), record.occurrence.key.as_str()))
                    .map_err(backend)?;
            }
            insert_health_events(&tx, &cleared)?;
            bump_schedules_generation(&tx)?;
            before
        };
        tx.commit().map_err(backend)?;
        Ok(before)
    }

    fn schedule(&self, id: ScheduleId) -> Result<Option<ScheduleRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(SCHEDULES).map_err(backend)?;
        match table.get(id.as_u128()).map_err(backend)? {
            Some(v) => Ok(Some(decode("schedule", v.value())?)),
            None => Ok(None),
        }
    }

    fn schedules(&self) -> Result<Vec<ScheduleRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(SCHEDULES).map_err(backend)?;
        table
            .iter()
            .map_err(backend)?
            .map(|entry| {
                let (_, v) = entry.map_err(backend)?;
                decode("schedule", v.value())
            })
            .collect()
    }

    fn schedules_generation(&self) -> Result<u64> {
        let tx = self.db.begin_read().map_err(backend)?;
        let meta = tx.open_table(META).map_err(backend)?;
        Ok(meta
            .get("schedules_generation")
            .map_err(backend)?
            .map_or(0, |v| v.value()))
    }

    fn occurrence_records(&self, id: ScheduleId, limit: usize) -> Result<Vec<OccurrenceRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(OCCURRENCES).map_err(backend)?;
        occurrences_of(&table, id, limit)
    }

    fn start_occurrence(
        &self,
        id: ScheduleId,
        revision: u64,
        occurrence: &Occurrence,
        job: OccurrenceJob,
        restart: RestartPolicy,
        now_ms: u64,
    ) -> Result<OccurrenceStart> {
        let tx = self.db.begin_write().map_err(backend)?;
        let outcome = {
            let schedules = tx.open_table(SCHEDULES).map_err(backend)?;
            let schedule: ScheduleRecord = match schedules.get(id.as_u128()).map_err(backend)? {
                Some(v) => decode("schedule", v.value())?,
                None => return Ok(OccurrenceStart::Stale),
            };
            if schedule.revision != revision || !schedule.spec.enabled {
                return Ok(OccurrenceStart::Stale);
            }
            let mut occurrences = tx.open_table(OCCURRENCES).map_err(backend)?;
            let key = (id.as_u128(), occurrence.key.as_str());
            let mut record: OccurrenceRecord = match occurrences.get(key).map_err(backend)? {
                Some(v) => decode("occurrence", v.value())?,
                None => OccurrenceRecord {
                    schedule: id,
                    occurrence: occurrence.clone(),
                    jobs: Vec::new(),
                    deferred: None,
                },
            };
            let mut tables = JobTables::open(&tx)?;
            if let Some(last) = record.jobs.last() {
                let last = tables.get_existing(last.as_u128())?;
                let may_restart = restart.restart_at(&last).is_some_and(|at| now_ms >= at)
                    && now_ms < record.occurrence.end_ms
                    && record.jobs.len() < MAX_OCCURRENCE_JOBS;
                if !may_restart {
                    return Ok(OccurrenceStart::Handled(Some(last.id)));
                }
            }
            let queued = match job {
                OccurrenceJob::Blocked(reason) => Err(reason),
                OccurrenceJob::Ready(new) => {
                    // Each job of an occurrence has its own id, which a node
                    // that starts (or restarts) it by itself uses too.
                    let job_id = occurrence_job_id(
                        id,
                        schedule.created_ms,
                        &record.occurrence,
                        record.jobs.len(),
                    );
                    if let Some(existing) = tables.get(job_id.as_u128())? {
                        // Its node reported it before the occurrence had a record.
                        record.jobs.push(existing.id);
                        drop(tables);
                        occurrences
                            .insert(key, encode(&record).as_slice())
                            .map_err(backend)?;
                        drop(occurrences);
                        drop(schedules);
                        tx.commit().map_err(backend)?;
                        return Ok(OccurrenceStart::Handled(Some(existing.id)));
                    }
                    let job = new_job_record(job_id, *new, now_ms)?;
                    match tables.queue_new(&job) {
                        Ok(()) => Ok(job),
                        Err(StoreError::Refused(reason)) => Err(reason),
                        Err(e) => return Err(e),
                    }
                }
            };
            let mut deferred = tx.open_table(DEFERRED_OCCURRENCES).map_err(backend)?;
            let deferred_key = (
                record.occurrence.end_ms,
                id.as_u128(),
                occurrence.key.as_str(),
            );
            let outcome = match (queued, record.deferred.clone()) {
                // Deferred before and still blocked: nothing new to keep.
                (Err(_), Some(d)) => return Ok(OccurrenceStart::Deferred(d)),
                (Err(reason), None) => {
                    let deferral = Deferral {
                        since_ms: now_ms,
                        reason,
                    };
                    let event = deferral_event(
                        &schedule,
                        &record.occurrence,
                        HealthCondition::ScheduleDeferred,
                        HealthChange::Raised,
                        format!("waiting to start: {}", deferral.reason),
                        now_ms,
                    );
                    insert_health_events(&tx, &[event])?;
                    deferred.insert(deferred_key, ()).map_err(backend)?;
                    record.deferred = Some(deferral.clone());
                    OccurrenceStart::Deferred(deferral)
                }
                (Ok(job), _) => {
                    if let Some(d) = record.deferred.take() {
                        deferred.remove(deferred_key).map_err(backend)?;
                        let event = deferral_event(
                            &schedule,
                            &record.occurrence,
                            HealthCondition::ScheduleDeferred,
                            HealthChange::Cleared,
                            format!(
                                "started as job {} after waiting {} s",
                                job.id,
                                now_ms.saturating_sub(d.since_ms) / 1000
                            ),
                            now_ms,
                        );
                        insert_health_events(&tx, &[event])?;
                    }
                    record.jobs.push(job.id);
                    OccurrenceStart::Started(Box::new(job))
                }
            };
            occurrences
                .insert(key, encode(&record).as_slice())
                .map_err(backend)?;
            outcome
        };
        tx.commit().map_err(backend)?;
        Ok(outcome)
    }

    fn expire_deferrals(&self, now_ms: u64) -> Result<Vec<OccurrenceRecord>> {
        {
            // Most calls find nothing: look before taking the writer.
            let tx = self.db.begin_read().map_err(backend)?;
            let deferred = tx.open_table(DEFERRED_OCCURRENCES).map_err(backend)?;
            if deferred
                .range((0u64, 0u128, "")..(now_ms, 0u128, ""))
                .map_err(backend)?
                .next()
                .is_none()
            {
                return Ok(Vec::new());
            }
        }
        let tx = self.db.begin_write().map_err(backend)?;
        let missed = {
            let mut deferred = tx.open_table(DEFERRED_OCCURRENCES).map_err(backend)?;
            let mut occurrences = tx.open_table(OCCURRENCES).map_err(backend)?;
            let schedules = tx.open_table(SCHEDULES).map_err(backend)?;
            let due: Vec<(u64, u128, String)> = deferred
                .range((0u64, 0u128, "")..(now_ms, 0u128, ""))
                .map_err(backend)?
                .map(|entry| {
                    entry.map(|(k, _)| {
                        let (end, id, key) = k.value();
                        (end, id, key.to_owned())
                    })
                })
                .collect::<std::result::Result<_, _>>()
                .map_err(backend)?;
            let mut missed = Vec::new();
            let mut events = Vec::new();
            for (end, id, key) in due {
                deferred.remove((end, id, key.as_str())).map_err(backend)?;
                let Some(mut record) = occurrences
                    .get((id, key.as_str()))
                    .map_err(backend)?
                    .map(|v| decode::<OccurrenceRecord>("occurrence", v.value()))
                    .transpose()?
                else {
                    continue;
                };
                let Some(d) = record.deferred.take() else {
                    continue;
                };
                if let Some(v) = schedules.get(id).map_err(backend)? {
                    let schedule: ScheduleRecord = decode("schedule", v.value())?;
                    let o = &record.occurrence;
                    let why = format!(
                        "its window closed; it waited since {} ms: {}",
                        d.since_ms, d.reason
                    );
                    let mut cleared = deferral_event(
                        &schedule,
                        o,
                        HealthCondition::ScheduleDeferred,
                        HealthChange::Cleared,
                        why.clone(),
                        now_ms,
                    );
                    let mut raised = deferral_event(
                        &schedule,
                        o,
                        HealthCondition::ScheduleMissed,
                        HealthChange::Raised,
                        format!("not recorded: {why}"),
                        now_ms,
                    );
                    // Ids of one millisecond order at random; events are
                    // listed by id, and the clearing comes first.
                    if cleared.msg_id > raised.msg_id {
                        std::mem::swap(&mut cleared.msg_id, &mut raised.msg_id);
                    }
                    events.extend([cleared, raised]);
                }
                occurrences
                    .insert((id, key.as_str()), encode(&record).as_slice())
                    .map_err(backend)?;
                missed.push(record);
            }
            insert_health_events(&tx, &events)?;
            missed
        };
        tx.commit().map_err(backend)?;
        Ok(missed)
    }

    fn health_issues(&self, query: &IssueQuery) -> Result<Vec<HealthIssue>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let issues = tx.open_table(HEALTH_ISSUES).map_err(backend)?;
        let get = |id: u64| -> Result<Option<HealthIssue>> {
            match issues.get(id).map_err(backend)? {
                Some(v) => Ok(Some(decode("health issue", v.value())?)),
                None => Ok(None),
            }
        };
        let wanted = |i: &HealthIssue| {
            query.node.as_ref().is_none_or(|n| &i.node == n)
                && query.state.is_none_or(|s| i.state == s)
                && query.condition.is_none_or(|c| i.condition == c)
        };
        let limit = query.limit.max(1);
        let mut out = Vec::new();
        // The narrowest index first; every candidate is checked against all filters.
        let ids: Box<dyn Iterator<Item = Result<u64>>> = if let Some(node) = &query.node {
            let t = tx.open_table(ISSUES_BY_NODE).map_err(backend)?;
            let ids: Vec<u64> = t
                .range((node.as_str(), 0u64)..=(node.as_str(), u64::MAX))
                .map_err(backend)?
                .rev()
                .map(|e| e.map(|(k, _)| k.value().1))
                .collect::<std::result::Result<_, _>>()
                .map_err(backend)?;
            Box::new(ids.into_iter().map(Ok))
        } else if let Some(state) = query.state {
            let t = tx.open_table(ISSUES_BY_STATE).map_err(backend)?;
            let ids: Vec<u64> = t
                .range((state.as_str(), 0u64)..=(state.as_str(), u64::MAX))
                .map_err(backend)?
                .rev()
                .map(|e| e.map(|(k, _)| k.value().1))
                .collect::<std::result::Result<_, _>>()
                .map_err(backend)?;
            Box::new(ids.into_iter().map(Ok))
        } else {
            let ids: Vec<u64> = issues
                .iter()
                .map_err(backend)?
                .rev()
                .take(MAX_AUDIT_SCAN)
                .map(|e| e.map(|(k, _)| k.value()))
                .collect::<std::result::Result<_, _>>()
                .map_err(backend)?;
            Box::new(ids.into_iter().map(Ok))
        };
        for id in ids {
            if out.len() >= limit {
                break;
            }
            if let Some(issue) = get(id?)?.filter(|i| wanted(i)) {
                out.push(issue);
            }
        }
        Ok(out)
    }

    fn change_health_issues(
        &self,
        ids: &[u64],
        action: IssueAction,
        actor: &str,
        now_ms: u64,
    ) -> Result<Vec<(HealthIssue, HealthIssue)>> {
        let tx = self.db.begin_write().map_err(backend)?;
        let changed = {
            let mut tables = IssueTables::open(&tx)?;
            let mut changed = Vec::new();
            for &id in ids {
                let old = tables
                    .get(id)?
                    .ok_or_else(|| StoreError::Refused(format!("no health issue {id}")))?;
                let state = transition(old.state, action.target()).map_err(|_| {
                    StoreError::Refused(format!(
                        "issue {id} is {}; it cannot be {}",
                        old.state.as_str(),
                        action.target().as_str()
                    ))
                })?;
                let issue = HealthIssue {
                    state,
                    changed_ms: now_ms,
                    by: Some(actor.to_owned()),
                    opened_ms: if action == IssueAction::Reopen {
                        now_ms
                    } else {
                        old.opened_ms
                    },
                    ..old.clone()
                };
                tables.put(Some(&old), &issue)?;
                changed.push((old, issue));
            }
            changed
        };
        tx.commit().map_err(backend)?;
        Ok(changed)
    }

    fn record_health_events(&self, events: &[HealthEventRecord]) -> Result<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        let tx = self.db.begin_write().map_err(backend)?;
        let new = insert_health_events(&tx, events)?;
        tx.commit().map_err(backend)?;
        Ok(new)
    }

    fn health_events(&self, node: &NodeId, limit: usize) -> Result<Vec<HealthEventRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(HEALTH_EVENTS).map_err(backend)?;
        let range = (node.as_str(), 0u128)..=(node.as_str(), u128::MAX);
        let mut out = Vec::new();
        for entry in table.range(range).map_err(backend)?.rev().take(limit) {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("health event", v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    fn upload(&self, job: JobId, name: &str) -> Result<Option<UploadRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(UPLOADS).map_err(backend)?;
        table
            .get((job.as_u128(), name))
            .map_err(backend)?
            .map(|v| decode("upload", v.value()))
            .transpose()
    }

    fn put_upload(&self, record: &UploadRecord) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut table = tx.open_table(UPLOADS).map_err(backend)?;
            table
                .insert(
                    (record.job.as_u128(), record.name.as_str()),
                    encode(record).as_slice(),
                )
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn uploads_of_job(&self, job: JobId) -> Result<Vec<UploadRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(UPLOADS).map_err(backend)?;
        let id = job.as_u128();
        let mut out = Vec::new();
        for entry in table
            .range((id, "")..(id.saturating_add(1), ""))
            .map_err(backend)?
        {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("upload", v.value())?);
        }
        Ok(out)
    }

    fn cached_uploads(&self) -> Result<Vec<UploadRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(UPLOADS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            let record: UploadRecord = decode("upload", v.value())?;
            if record.state == crate::UploadState::Cached {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn destinations(&self) -> Result<Vec<DestinationRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(DESTINATIONS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("destination", v.value())?);
        }
        Ok(out)
    }

    fn put_destination(&self, record: &DestinationRecord) -> Result<Option<DestinationRecord>> {
        let tx = self.db.begin_write().map_err(backend)?;
        let before = {
            let mut table = tx.open_table(DESTINATIONS).map_err(backend)?;
            let before = table
                .insert(record.name.as_str(), encode(record).as_slice())
                .map_err(backend)?;
            before
                .map(|v| decode("destination", v.value()))
                .transpose()?
        };
        tx.commit().map_err(backend)?;
        Ok(before)
    }

    fn delete_destination(&self, name: &str) -> Result<Option<DestinationRecord>> {
        let tx = self.db.begin_write().map_err(backend)?;
        let before = {
            let mut table = tx.open_table(DESTINATIONS).map_err(backend)?;
            let before = table.remove(name).map_err(backend)?;
            before
                .map(|v| decode("destination", v.value()))
                .transpose()?
        };
        tx.commit().map_err(backend)?;
        Ok(before)
    }

    fn queue_deliveries(&self, records: &[DeliveryRecord]) -> Result<usize> {
        let tx = self.db.begin_write().map_err(backend)?;
        let mut added = 0;
        {
            let mut table = tx.open_table(DELIVERIES).map_err(backend)?;
            let mut due = tx.open_table(DELIVERIES_DUE).map_err(backend)?;
            let jobs = tx.open_table(JOBS).map_err(backend)?;
            for r in records {
                let key = (r.job.as_u128(), r.name.as_str(), r.destination.as_str());
                if table.get(key).map_err(backend)?.is_some() {
                    continue;
                }
                // A deleted recording goes nowhere (a file confirmed while
                // its recording was being deleted).
                if let Some(job) = jobs.get(key.0).map_err(backend)? {
                    let job: JobRecord = decode("job", job.value())?;
                    if job.deleted.is_some() {
                        continue;
                    }
                }
                table.insert(key, encode(r).as_slice()).map_err(backend)?;
                if r.state == DeliveryState::Pending {
                    due.insert((r.next_attempt_ms, key.0, key.1, key.2), ())
                        .map_err(backend)?;
                }
                added += 1;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(added)
    }

    fn put_delivery(&self, record: &DeliveryRecord) -> Result<()> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut table = tx.open_table(DELIVERIES).map_err(backend)?;
            let mut due = tx.open_table(DELIVERIES_DUE).map_err(backend)?;
            let key = (
                record.job.as_u128(),
                record.name.as_str(),
                record.destination.as_str(),
            );
            // The index follows the record: out under the old attempt time,
            // in under the new one while pending.
            if let Some(old) = table.get(key).map_err(backend)? {
                let old: DeliveryRecord = decode("delivery", old.value())?;
                if old.state == DeliveryState::Cancelled && record.state != DeliveryState::Delivered
                {
                    return Ok(());
                }
                if old.state == DeliveryState::Pending {
                    due.remove((old.next_attempt_ms, key.0, key.1, key.2))
                        .map_err(backend)?;
                }
            }
            table
                .insert(key, encode(record).as_slice())
                .map_err(backend)?;
            if record.state == DeliveryState::Pending {
                due.insert((record.next_attempt_ms, key.0, key.1, key.2), ())
                    .map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)
    }

    fn due_deliveries(&self, now_ms: u64, limit: usize) -> Result<Vec<DeliveryRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let due = tx.open_table(DELIVERIES_DUE).map_err(backend)?;
        let table = tx.open_table(DELIVERIES).map_err(backend)?;
        let mut out = Vec::new();
        for entry in due
            .range((0, 0, "", "")..=(now_ms, u128::MAX, "\u{10ffff}", "\u{10ffff}"))
            .map_err(backend)?
            .take(limit)
        {
            let (k, _) = entry.map_err(backend)?;
            let (_, job, name, destination) = k.value();
            if let Some(v) = table.get((job, name, destination)).map_err(backend)? {
                out.push(decode("delivery", v.value())?);
            }
        }
        Ok(out)
    }

    fn deliveries_of_job(&self, job: JobId) -> Result<Vec<DeliveryRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(DELIVERIES).map_err(backend)?;
        let id = job.as_u128();
        let mut out = Vec::new();
        for entry in table
            .range((id, "", "")..(id.saturating_add(1), "", ""))
            .map_err(backend)?
        {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("delivery", v.value())?);
        }
        Ok(out)
    }

    fn deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(DELIVERIES).map_err(backend)?;
        let mut out = Vec::new();
        // Job ids are UUIDv7: the newest jobs come last.
        for entry in table.iter().map_err(backend)?.rev() {
            if out.len() == limit {
                break;
            }
            let (_, v) = entry.map_err(backend)?;
            let record: DeliveryRecord = decode("delivery", v.value())?;
            if state.is_none_or(|s| s == record.state) {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn delete_job(&self, id: JobId, by: &str, reason: &str, now_ms: u64) -> Result<Deleted> {
        let reason = reason.trim();
        // One line of plain text: no control characters, line or paragraph
        // separators, or direction overrides that would disguise it.
        let hidden = |c: char| {
            c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        };
        if reason.len() > MAX_DELETION_REASON || reason.chars().any(hidden) {
            return Err(StoreError::Refused(format!(
                "the reason is at most {MAX_DELETION_REASON} bytes of text on one line"
            )));
        }
        let tx = self.db.begin_write().map_err(backend)?;
        let done = {
            let mut tables = JobTables::open(&tx)?;
            let old = tables.get(id.as_u128())?.ok_or(StoreError::NoSuchJob(id))?;
            if old.deleted.is_some() {
                return Ok(Deleted {
                    before: old.clone(),
                    after: old,
                    cancelled_deliveries: 0,
                    already: true,
                });
            }
            if old.state.occupies_channels() {
                return Err(StoreError::Refused(format!(
                    "job {id} is {}: stop or cancel it before deleting its recording",
                    old.state.as_str()
                )));
            }
            let job = JobRecord {
                deleted: Some(JobDeletion {
                    at_ms: now_ms,
                    by: by.to_owned(),
                    reason: reason.to_owned(),
                    node_deleted_ms: None,
                }),
                ..old.clone()
            };
            tables.put(Some(&old), &job)?;
            let mut deliveries = tx.open_table(DELIVERIES).map_err(backend)?;
            let mut due = tx.open_table(DELIVERIES_DUE).map_err(backend)?;
            let key = id.as_u128();
            let mut open = Vec::new();
            for entry in deliveries
                .range((key, "", "")..(key.saturating_add(1), "", ""))
                .map_err(backend)?
            {
                let (_, v) = entry.map_err(backend)?;
                let d: DeliveryRecord = decode("delivery", v.value())?;
                if matches!(d.state, DeliveryState::Pending | DeliveryState::Failed) {
                    open.push(d);
                }
            }
            for d in &open {
                let k = (key, d.name.as_str(), d.destination.as_str());
                if d.state == DeliveryState::Pending {
                    due.remove((d.next_attempt_ms, k.0, k.1, k.2))
                        .map_err(backend)?;
                }
                let cancelled = DeliveryRecord {
                    state: DeliveryState::Cancelled,
                    last_error: "its recording was deleted".into(),
                    ..d.clone()
                };
                deliveries
                    .insert(k, encode(&cancelled).as_slice())
                    .map_err(backend)?;
            }
            tx.open_table(DELETION_ORDERS)
                .map_err(backend)?
                .insert((job.node.as_str(), key), now_ms)
                .map_err(backend)?;
            Deleted {
                before: old,
                after: job,
                cancelled_deliveries: open.len(),
                already: false,
            }
        };
        tx.commit().map_err(backend)?;
        Ok(done)
    }

    fn deletion_orders(
        &self,
        node: Option<&NodeId>,
        limit: usize,
    ) -> Result<Vec<(NodeId, JobId, u64)>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let orders = tx.open_table(DELETION_ORDERS).map_err(backend)?;
        let range = match node {
            Some(n) => orders.range((n.as_str(), 0)..=(n.as_str(), u128::MAX)),
            None => orders.range::<(&str, u128)>(..),
        }
        .map_err(backend)?;
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(backend)?;
            let (node, job) = k.value();
            let node = NodeId::new(node).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((node, JobId::from_u128(job), v.value()));
        }
        Ok(out)
    }

    fn complete_deletion_order(&self, node: &NodeId, id: JobId, now_ms: u64) -> Result<bool> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut orders = tx.open_table(DELETION_ORDERS).map_err(backend)?;
            if orders
                .remove((node.as_str(), id.as_u128()))
                .map_err(backend)?
                .is_none()
            {
                return Ok(false);
            }
            let mut tables = JobTables::open(&tx)?;
            if let Some(old) = tables.get(id.as_u128())? {
                let mut job = old.clone();
                if let Some(d) = job.deleted.as_mut() {
                    d.node_deleted_ms = Some(now_ms);
                }
                tables.put(Some(&old), &job)?;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn health_events_pruned_until(&self, node: &NodeId) -> Result<Option<u64>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let pruned = tx.open_table(HEALTH_EVENTS_PRUNED).map_err(backend)?;
        Ok(pruned
            .get(node.as_str())
            .map_err(backend)?
            .map(|v| v.value()))
    }

    fn health_events_between(
        &self,
        node: &NodeId,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<HealthEventRecord>> {
        // A UUIDv7's top 48 bits are its creation time in milliseconds.
        let bound = |ms: u64| u128::from(ms.min((1 << 48) - 1)) << 80;
        let low = bound(from_ms);
        let high = bound(to_ms.saturating_add(1)).saturating_sub(1);
        if low > high {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(HEALTH_EVENTS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table
            .range((node.as_str(), low)..=(node.as_str(), high))
            .map_err(backend)?
            .take(limit)
        {
            let (_, v) = entry.map_err(backend)?;
            out.push(decode("health event", v.value())?);
        }
        Ok(out)
    }
}

/// The job tables of one write transaction. [`JobTables::put`] is the only
/// place a job record is written, so the indexes cannot drift from it.
struct JobTables<'txn> {
    jobs: redb::Table<'txn, u128, &'static [u8]>,
    queue: redb::Table<'txn, (&'static str, u128), ()>,
    active: redb::Table<'txn, (&'static str, u128), ()>,
    leases: redb::Table<'txn, (u64, u128), ()>,
    node_jobs: redb::Table<'txn, (&'static str, u128), ()>,
}

fn leased(job: &JobRecord) -> Option<u64> {
    matches!(
        job.state,
        JobState::Leased | JobState::Running | JobState::StopRequested
    )
    .then(|| job.lease.map(|l| l.expires_ms))
    .flatten()
}

/// Keep what an update reports: its detail and its recording, if it has them.
fn take_report(job: &mut JobRecord, update: &JobUpdate) {
    if !update.detail.is_empty() {
        job.detail = update.detail.clone();
    }
    if update.recording.is_some() {
        job.recording = update.recording.clone();
    }
}

/// Note that message `msg_id` was applied (the newest [`MAX_APPLIED_UPDATES`]).
fn mark_applied(job: &mut JobRecord, msg_id: MessageId) {
    job.applied.push(msg_id);
    if job.applied.len() > MAX_APPLIED_UPDATES {
        job.applied.remove(0);
    }
}

/// The record of a job about to be queued.
fn new_job_record(id: JobId, new: NewJob, now_ms: u64) -> Result<JobRecord> {
    let tags = rakkr_protocol::schedule::normalise_tags(&new.tags).map_err(StoreError::Refused)?;
    Ok(JobRecord {
        id,
        node: new.node,
        spec: new.spec,
        sources: new.sources,
        state: JobState::Queued,
        created_ms: now_ms,
        updated_ms: now_ms,
        lease: None,
        cancel_requested: false,
        detail: String::new(),
        recording: None,
        applied: Vec::new(),
        notes: String::new(),
        tags,
        scheduled: new.scheduled,
        title: new.title,
        folder: new.folder,
        not_after_ms: new.not_after_ms,
        deleted: None,
    })
}

impl<'txn> JobTables<'txn> {
    /// Queue a new job, refused when it would share a device channel with a
    /// job of its node and device that holds its channels.
    fn queue_new(&mut self, job: &JobRecord) -> Result<()> {
        if self.get(job.id.as_u128())?.is_some() {
            return Err(StoreError::Refused(format!("job {} exists", job.id)));
        }
        for id in JobTables::ids_of(&self.active, &job.node)? {
            let other = self.get_existing(id)?;
            if other.spec.device != job.spec.device {
                continue;
            }
            let shared: Vec<String> = job
                .sources
                .iter()
                .filter(|c| other.sources.contains(c))
                .map(|c| (c + 1).to_string())
                .collect();
            if !shared.is_empty() {
                return Err(StoreError::Refused(format!(
                    "device channel{} {} of {} on node {} {} already taken by job {} ({})",
                    if shared.len() == 1 { "" } else { "s" },
                    shared.join(", "),
                    job.spec.device,
                    job.node,
                    if shared.len() == 1 { "is" } else { "are" },
                    other.id,
                    other.state.as_str()
                )));
            }
        }
        self.put(None, job)
    }

    fn open(tx: &'txn redb::WriteTransaction) -> Result<Self> {
        Ok(JobTables {
            jobs: tx.open_table(JOBS).map_err(backend)?,
            queue: tx.open_table(JOB_QUEUE).map_err(backend)?,
            active: tx.open_table(ACTIVE_JOBS).map_err(backend)?,
            leases: tx.open_table(LEASES).map_err(backend)?,
            node_jobs: tx.open_table(NODE_JOBS).map_err(backend)?,
        })
    }

    fn get(&self, id: u128) -> Result<Option<JobRecord>> {
        match self.jobs.get(id).map_err(backend)? {
            Some(v) => Ok(Some(decode("job", v.value())?)),
            None => Ok(None),
        }
    }

    fn get_existing(&self, id: u128) -> Result<JobRecord> {
        self.get(id)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "job {} is indexed but has no record",
                uuid::Uuid::from_u128(id)
            ))
        })
    }

    /// Write `new` (which replaces `old`) and move it between the indexes.
    fn put(&mut self, old: Option<&JobRecord>, new: &JobRecord) -> Result<()> {
        let id = new.id.as_u128();
        let node = new.node.as_str();
        self.jobs
            .insert(id, encode(new).as_slice())
            .map_err(backend)?;
        if old.is_none() {
            self.node_jobs.insert((node, id), ()).map_err(backend)?;
        }
        let was = |f: fn(JobState) -> bool| old.is_some_and(|o| f(o.state));
        let queued = |s: JobState| s == JobState::Queued;
        match (was(queued), queued(new.state)) {
            (false, true) => drop(self.queue.insert((node, id), ()).map_err(backend)?),
            (true, false) => drop(self.queue.remove((node, id)).map_err(backend)?),
            _ => {}
        }
        match (
            was(JobState::occupies_channels),
            new.state.occupies_channels(),
        ) {
            (false, true) => drop(self.active.insert((node, id), ()).map_err(backend)?),
            (true, false) => drop(self.active.remove((node, id)).map_err(backend)?),
            _ => {}
        }
        let (before, after) = (old.and_then(leased), leased(new));
        if before != after {
            if let Some(e) = before {
                self.leases.remove((e, id)).map_err(backend)?;
            }
            if let Some(e) = after {
                self.leases.insert((e, id), ()).map_err(backend)?;
            }
        }
        Ok(())
    }

    /// Jobs whose lease expires before `ms`, soonest first.
    fn leases_before(&self, ms: u64) -> Result<Vec<u128>> {
        self.leases
            .range((0u64, 0u128)..(ms, 0u128))
            .map_err(backend)?
            .map(|entry| entry.map(|(k, _)| k.value().1))
            .collect::<std::result::Result<_, _>>()
            .map_err(backend)
    }

    /// Ids in a `(node, job)` index for one node, oldest first.
    fn ids_of(
        table: &redb::Table<'txn, (&'static str, u128), ()>,
        node: &NodeId,
    ) -> Result<Vec<u128>> {
        table
            .range((node.as_str(), 0u128)..=(node.as_str(), u128::MAX))
            .map_err(backend)?
            .map(|entry| entry.map(|(k, _)| k.value().1))
            .collect::<std::result::Result<_, _>>()
            .map_err(backend)
    }
}

/// The issue tables, open in one write transaction.
struct IssueTables<'txn> {
    issues: redb::Table<'txn, u64, &'static [u8]>,
    keys: redb::Table<'txn, (&'static str, &'static str, &'static str), u64>,
    by_node: redb::Table<'txn, (&'static str, u64), ()>,
    by_state: redb::Table<'txn, (&'static str, u64), ()>,
}

impl<'txn> IssueTables<'txn> {
    fn open(tx: &'txn redb::WriteTransaction) -> Result<Self> {
        Ok(IssueTables {
            issues: tx.open_table(HEALTH_ISSUES).map_err(backend)?,
            keys: tx.open_table(ISSUE_KEYS).map_err(backend)?,
            by_node: tx.open_table(ISSUES_BY_NODE).map_err(backend)?,
            by_state: tx.open_table(ISSUES_BY_STATE).map_err(backend)?,
        })
    }

    fn get(&self, id: u64) -> Result<Option<HealthIssue>> {
        match self.issues.get(id).map_err(backend)? {
            Some(v) => Ok(Some(decode("health issue", v.value())?)),
            None => Ok(None),
        }
    }

    /// Write `new` (replacing `old`) and keep the indexes in step.
    fn put(&mut self, old: Option<&HealthIssue>, new: &HealthIssue) -> Result<()> {
        self.issues
            .insert(new.id, encode(new).as_slice())
            .map_err(backend)?;
        if let Some(o) = old.filter(|o| o.state != new.state) {
            self.by_state
                .remove((o.state.as_str(), o.id))
                .map_err(backend)?;
        }
        if old.is_none_or(|o| o.state != new.state) {
            self.by_state
                .insert((new.state.as_str(), new.id), ())
                .map_err(backend)?;
        }
        if old.is_none() {
            self.by_node
                .insert((new.node.as_str(), new.id), ())
                .map_err(backend)?;
            self.keys
                .insert(
                    (
                        new.node.as_str(),
                        new.condition.as_str(),
                        new.subject.as_str(),
                    ),
                    new.id,
                )
                .map_err(backend)?;
        }
        Ok(())
    }

    /// Forget the oldest resolved issues of `node` beyond [`MAX_ISSUES_PER_NODE`].
    fn prune(&mut self, node: &NodeId) -> Result<()> {
        let range = (node.as_str(), 0u64)..=(node.as_str(), u64::MAX);
        let count = self.by_node.range(range.clone()).map_err(backend)?.count();
        if count <= MAX_ISSUES_PER_NODE {
            return Ok(());
        }
        let ids: Vec<u64> = self
            .by_node
            .range(range)
            .map_err(backend)?
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<std::result::Result<_, _>>()
            .map_err(backend)?;
        let mut excess = count - MAX_ISSUES_PER_NODE;
        for id in ids {
            if excess == 0 {
                break;
            }
            let Some(issue) = self.get(id)? else { continue };
            if issue.state != HealthState::Resolved {
                continue;
            }
            self.issues.remove(id).map_err(backend)?;
            self.by_node
                .remove((issue.node.as_str(), id))
                .map_err(backend)?;
            self.by_state
                .remove((issue.state.as_str(), id))
                .map_err(backend)?;
            let key = (
                issue.node.as_str(),
                issue.condition.as_str(),
                issue.subject.as_str(),
            );
            if self.keys.get(key).map_err(backend)?.map(|v| v.value()) == Some(id) {
                self.keys.remove(key).map_err(backend)?;
            }
            excess -= 1;
        }
        Ok(())
    }
}

/// Apply a newly stored health event to its issue: raised opens one (or
/// updates the open one, or reopens one resolved within
/// [`REOPEN_WITHIN_MS`]); cleared resolves it by recovery.
fn apply_to_issue(tx: &redb::WriteTransaction, e: &HealthEventRecord) -> Result<()> {
    let mut tables = IssueTables::open(tx)?;
    let ev = &e.event;
    let latest = tables
        .keys
        .get((e.node.as_str(), ev.condition.as_str(), ev.subject.as_str()))
        .map_err(backend)?
        .map(|v| v.value());
    let latest = match latest {
        Some(id) => tables.get(id)?,
        None => None,
    };
    match (ev.change, latest) {
        (HealthChange::Raised, Some(old))
            if old.state != HealthState::Resolved
                || ev.at_ms.saturating_sub(old.changed_ms) <= REOPEN_WITHIN_MS =>
        {
            let mut issue = old.clone();
            if issue.state == HealthState::Resolved {
                issue.state = transition(issue.state, HealthState::Open)?;
                issue.opened_ms = ev.at_ms;
                issue.changed_ms = ev.at_ms;
                issue.by = None;
            }
            issue.raised = issue.raised.saturating_add(1);
            issue.severity = issue.severity.max(ev.severity);
            issue.last_event_ms = ev.at_ms;
            issue.detail = ev.detail.clone();
            tables.put(Some(&old), &issue)
        }
        (HealthChange::Raised, _) => {
            let id = next_seq(tx, "issue_seq")?;
            let issue = HealthIssue {
                id,
                node: e.node.clone(),
                condition: ev.condition,
                subject: ev.subject.clone(),
                severity: ev.severity,
                state: HealthState::Open,
                opened_ms: ev.at_ms,
                changed_ms: ev.at_ms,
                last_event_ms: ev.at_ms,
                detail: ev.detail.clone(),
                raised: 1,
                by: None,
            };
            tables.put(None, &issue)?;
            tables.prune(&e.node)
        }
        (HealthChange::Cleared, Some(old)) if old.state != HealthState::Resolved => {
            let mut issue = old.clone();
            issue.state = transition(issue.state, HealthState::Resolved)?;
            issue.changed_ms = ev.at_ms;
            issue.last_event_ms = ev.at_ms;
            issue.detail = ev.detail.clone();
            issue.by = Some("recovery".into());
            tables.put(Some(&old), &issue)
        }
        // Cleared with nothing open: nothing to resolve.
        (HealthChange::Cleared, _) => Ok(()),
    }
}

/// The next number of a sequence kept in `meta`.
fn next_seq(tx: &redb::WriteTransaction, name: &str) -> Result<u64> {
    let mut meta = tx.open_table(META).map_err(backend)?;
    let id = meta.get(name).map_err(backend)?.map_or(0, |v| v.value()) + 1;
    meta.insert(name, id).map_err(backend)?;
    Ok(id)
}

/// Insert health events not stored yet and keep each node's newest
/// [`MAX_HEALTH_EVENTS_PER_NODE`]. Returns how many were new.
fn insert_health_events(
    tx: &redb::WriteTransaction,
    events: &[HealthEventRecord],
) -> Result<usize> {
    let mut table = tx.open_table(HEALTH_EVENTS).map_err(backend)?;
    let mut new = 0;
    let mut touched: Vec<&NodeId> = Vec::new();
    for e in events {
        let key = (e.node.as_str(), e.msg_id.as_uuid().as_u128());
        if table.get(key).map_err(backend)?.is_none() {
            table.insert(key, encode(e).as_slice()).map_err(backend)?;
            apply_to_issue(tx, e)?;
            new += 1;
            if !touched.contains(&&e.node) {
                touched.push(&e.node);
            }
        }
    }
    for node in touched {
        let range = (node.as_str(), 0u128)..=(node.as_str(), u128::MAX);
        let count = table.range(range.clone()).map_err(backend)?.count();
        if count > MAX_HEALTH_EVENTS_PER_NODE {
            let oldest: Vec<u128> = table
                .range(range)
                .map_err(backend)?
                .take(count - MAX_HEALTH_EVENTS_PER_NODE)
                .map(|entry| entry.map(|(k, _)| k.value().1))
                .collect::<std::result::Result<_, _>>()
                .map_err(backend)?;
            for id in &oldest {
                table.remove((node.as_str(), *id)).map_err(backend)?;
            }
            // Oldest first: the last one is the newest pruned.
            if let Some(newest) = oldest.last() {
                let mut pruned = tx.open_table(HEALTH_EVENTS_PRUNED).map_err(backend)?;
                pruned
                    .insert(node.as_str(), (newest >> 80) as u64)
                    .map_err(backend)?;
            }
        }
    }
    Ok(new)
}

/// Join a job a node started by itself to its schedule's occurrence record
/// (made if the store has none; a deferral ends). Nothing when the schedule
/// is gone.
fn join_occurrence(
    tx: &redb::WriteTransaction,
    job: &JobRecord,
    started: &AutonomousStart,
    now_ms: u64,
) -> Result<()> {
    let schedules = tx.open_table(SCHEDULES).map_err(backend)?;
    let Some(schedule) = schedules
        .get(started.schedule.as_u128())
        .map_err(backend)?
        .map(|v| decode::<ScheduleRecord>("schedule", v.value()))
        .transpose()?
    else {
        return Ok(());
    };
    let mut occurrences = tx.open_table(OCCURRENCES).map_err(backend)?;
    let key = (started.schedule.as_u128(), started.occurrence.as_str());
    let mut record = match occurrences.get(key).map_err(backend)? {
        Some(v) => decode::<OccurrenceRecord>("occurrence", v.value())?,
        None => {
            let planned = schedule
                .spec
                .timing
                .calendar()
                .ok()
                .zip(started.occurrence.parse::<CivilDate>().ok())
                .and_then(|(c, d)| c.occurrence_on(d.as_jiff()));
            let start = job
                .recording
                .as_ref()
                .map_or(job.created_ms, |r| r.start_unix_ms);
            OccurrenceRecord {
                schedule: schedule.id,
                occurrence: planned.unwrap_or(Occurrence {
                    key: started.occurrence.clone(),
                    window_start_ms: start,
                    window_end_ms: u64::MAX,
                    start_ms: start,
                    end_ms: u64::MAX,
                    exception: None,
                }),
                jobs: Vec::new(),
                deferred: None,
            }
        }
    };
    if record.jobs.contains(&job.id) || record.jobs.len() >= MAX_OCCURRENCE_JOBS {
        return Ok(());
    }
    record.jobs.push(job.id);
    if let Some(d) = record.deferred.take() {
        let mut deferred = tx.open_table(DEFERRED_OCCURRENCES).map_err(backend)?;
        deferred
            .remove((
                record.occurrence.end_ms,
                schedule.id.as_u128(),
                started.occurrence.as_str(),
            ))
            .map_err(backend)?;
        let event = deferral_event(
            &schedule,
            &record.occurrence,
            HealthCondition::ScheduleDeferred,
            HealthChange::Cleared,
            format!(
                "the node started it by itself as job {} (it waited since {} ms)",
                job.id, d.since_ms
            ),
            now_ms,
        );
        insert_health_events(tx, &[event])?;
    }
    occurrences
        .insert(key, encode(&record).as_slice())
        .map_err(backend)?;
    Ok(())
}

/// `schedule_missed` for scheduled jobs cancelled because their window
/// passed while they waited for their node.
fn window_passed_events(
    tx: &redb::WriteTransaction,
    jobs: &[JobRecord],
    now_ms: u64,
) -> Result<Vec<HealthEventRecord>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let schedules = tx.open_table(SCHEDULES).map_err(backend)?;
    let occurrences = tx.open_table(OCCURRENCES).map_err(backend)?;
    let mut events = Vec::new();
    for job in jobs {
        let Some(by) = &job.scheduled else { continue };
        let Some(schedule) = schedules
            .get(by.schedule.as_u128())
            .map_err(backend)?
            .map(|v| decode::<ScheduleRecord>("schedule", v.value()))
            .transpose()?
        else {
            continue;
        };
        let occurrence = occurrences
            .get((by.schedule.as_u128(), by.occurrence.as_str()))
            .map_err(backend)?
            .map(|v| decode::<OccurrenceRecord>("occurrence", v.value()))
            .transpose()?
            .map(|r| r.occurrence)
            .unwrap_or(Occurrence {
                key: by.occurrence.clone(),
                window_start_ms: job.created_ms,
                window_end_ms: job.not_after_ms.unwrap_or(now_ms),
                start_ms: job.created_ms,
                end_ms: job.not_after_ms.unwrap_or(now_ms),
                exception: None,
            });
        events.push(deferral_event(
            &schedule,
            &occurrence,
            HealthCondition::ScheduleMissed,
            HealthChange::Raised,
            format!(
                "not recorded: job {} waited for the node, which was away until its window ended",
                job.id
            ),
            now_ms,
        ));
    }
    Ok(events)
}

/// Tell schedule runners to reload.
fn bump_schedules_generation(tx: &redb::WriteTransaction) -> Result<()> {
    next_seq(tx, "schedules_generation").map(drop)
}

/// A schedule's occurrence records, newest key first.
fn occurrences_of(
    table: &impl ReadableTable<(u128, &'static str), &'static [u8]>,
    id: ScheduleId,
    limit: usize,
) -> Result<Vec<OccurrenceRecord>> {
    let id = id.as_u128();
    table
        .range((id, "")..(id + 1, ""))
        .map_err(backend)?
        .rev()
        .take(limit)
        .map(|entry| {
            let (_, v) = entry.map_err(backend)?;
            decode("occurrence", v.value())
        })
        .collect()
}

/// The server's own event about a schedule's occurrence, on its node.
fn deferral_event(
    schedule: &ScheduleRecord,
    occurrence: &Occurrence,
    condition: HealthCondition,
    change: HealthChange,
    what: String,
    now_ms: u64,
) -> HealthEventRecord {
    let mut detail = format!(
        "schedule {:?} ({}), occurrence {}: {what}",
        schedule.spec.name, schedule.id, occurrence.key
    );
    if detail.len() > MAX_DETAIL_TEXT {
        let mut end = MAX_DETAIL_TEXT;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    HealthEventRecord {
        node: schedule.spec.node.clone(),
        msg_id: MessageId::new(now_ms),
        event: HealthEvent {
            condition,
            change,
            severity: match condition {
                HealthCondition::ScheduleMissed => Severity::Critical,
                _ => Severity::Warning,
            },
            at_ms: now_ms,
            detail,
            subject: format!("schedule:{}/{}", schedule.id, occurrence.key),
        },
        received_ms: now_ms,
    }
}

/// The server's own `job_lost` event for `job`, raised or cleared at `now_ms`.
fn job_lost_event(job: &JobRecord, change: HealthChange, now_ms: u64) -> HealthEventRecord {
    let detail = match change {
        HealthChange::Raised => format!(
            "job {} ({}) lost: its lease {} expired without word from the node",
            job.id,
            job.spec
                .duration_s
                .map_or("open-ended".into(), |d| format!("{d} s")),
            job.lease.map_or(0, |l| l.id)
        ),
        HealthChange::Cleared => format!(
            "job {} is back: the node {} under lease {}",
            job.id,
            match job.state {
                JobState::Running => "renewed its lease",
                _ => "returned the take",
            },
            job.lease.map_or(0, |l| l.id)
        ),
    };
    HealthEventRecord {
        node: job.node.clone(),
        msg_id: MessageId::new(now_ms),
        event: HealthEvent {
            condition: HealthCondition::JobLost,
            change,
            severity: Severity::Warning,
            at_ms: now_ms,
            detail,
            subject: format!("job:{}", job.id),
        },
        received_ms: now_ms,
    }
}

/// The job `id` for `node` under `lease_id`, or why not.
fn leased_job(tables: &JobTables, node: &NodeId, id: JobId, lease_id: u64) -> Result<JobRecord> {
    let job = tables.get(id.as_u128())?.ok_or(StoreError::NoSuchJob(id))?;
    if &job.node != node {
        return Err(StoreError::WrongNode {
            job: id,
            owner: job.node,
            node: node.clone(),
        });
    }
    if job.lease.map(|l| l.id) != Some(lease_id) {
        return Err(StoreError::StaleLease {
            job: id,
            presented: lease_id,
            current: job.lease.map_or("none".into(), |l| l.id.to_string()),
        });
    }
    Ok(job)
}

/// The next lease id (fencing token).
fn next_lease_id(tx: &redb::WriteTransaction) -> Result<u64> {
    next_seq(tx, "lease_seq")
}
