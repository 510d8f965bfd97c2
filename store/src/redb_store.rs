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
//! | `health_events` | `(node id, message id)` | `HealthEventRecord` (JSON); a message id is stored once per node |
//!
//! Invariant: a job is in `job_queue` exactly while its state is `queued`.
//! Commits are durable (`Durability::Immediate`: fsync before `commit` returns).

use std::path::Path;

use rakkr_protocol::NodeId;
use rakkr_protocol::state::{JobState, Presence, transition};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    HealthEventRecord, JobId, JobRecord, JobSpec, Lease, MAX_HEALTH_EVENTS_PER_NODE, NodeRecord,
    NodeStatusUpdate, Result, Store, StoreError,
};

/// Version of the layout above. Bumped only with a migration.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
const JOB_QUEUE: TableDefinition<(&str, u128), ()> = TableDefinition::new("job_queue");
/// (node, message id as u128) → HealthEventRecord (JSON).
const HEALTH_EVENTS: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("health_events");

#[derive(Debug)]
pub struct RedbStore {
    db: Database,
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
                Some(_) => {}
            }
            tx.open_table(NODES).map_err(backend)?;
            tx.open_table(JOBS).map_err(backend)?;
            tx.open_table(JOB_QUEUE).map_err(backend)?;
            tx.open_table(HEALTH_EVENTS).map_err(backend)?;
        }
        tx.commit().map_err(backend)
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

    fn enqueue_job(&self, spec: JobSpec, now_ms: u64) -> Result<JobRecord> {
        let job = JobRecord {
            id: JobId::new(now_ms),
            spec,
            state: JobState::Queued,
            created_ms: now_ms,
            lease: None,
        };
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut jobs = tx.open_table(JOBS).map_err(backend)?;
            jobs.insert(job.id.0.as_u128(), encode(&job).as_slice())
                .map_err(backend)?;
            let mut queue = tx.open_table(JOB_QUEUE).map_err(backend)?;
            queue
                .insert((job.spec.node.as_str(), job.id.0.as_u128()), ())
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(job)
    }

    fn claim_next_job(
        &self,
        node: &NodeId,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Option<JobRecord>> {
        // One write transaction: redb admits one writer at a time, so no two
        // claims can see the same queue head.
        let tx = self.db.begin_write().map_err(backend)?;
        let claimed = {
            let mut queue = tx.open_table(JOB_QUEUE).map_err(backend)?;
            let head = queue
                .range((node.as_str(), 0u128)..=(node.as_str(), u128::MAX))
                .map_err(backend)?
                .next()
                .transpose()
                .map_err(backend)?
                .map(|(k, _)| k.value().1);
            match head {
                None => None,
                Some(job_key) => {
                    queue.remove((node.as_str(), job_key)).map_err(backend)?;
                    let mut meta = tx.open_table(META).map_err(backend)?;
                    let lease_id = meta
                        .get("lease_seq")
                        .map_err(backend)?
                        .map_or(0, |v| v.value())
                        + 1;
                    meta.insert("lease_seq", lease_id).map_err(backend)?;
                    let mut jobs = tx.open_table(JOBS).map_err(backend)?;
                    let mut job: JobRecord = match jobs.get(job_key).map_err(backend)? {
                        Some(v) => decode("job", v.value())?,
                        None => {
                            return Err(StoreError::Corrupt(format!(
                                "queued job {} has no record",
                                uuid::Uuid::from_u128(job_key)
                            )));
                        }
                    };
                    job.state = transition(job.state, JobState::Leased)?;
                    job.lease = Some(Lease {
                        id: lease_id,
                        expires_ms: now_ms.saturating_add(lease_ms),
                    });
                    jobs.insert(job_key, encode(&job).as_slice())
                        .map_err(backend)?;
                    Some(job)
                }
            }
        };
        if claimed.is_some() {
            tx.commit().map_err(backend)?;
        } else {
            tx.abort().map_err(backend)?;
        }
        Ok(claimed)
    }

    fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let jobs = tx.open_table(JOBS).map_err(backend)?;
        match jobs.get(id.0.as_u128()).map_err(backend)? {
            Some(v) => Ok(Some(decode("job", v.value())?)),
            None => Ok(None),
        }
    }

    fn record_health_events(&self, events: &[HealthEventRecord]) -> Result<usize> {
        if events.is_empty() {
            return Ok(0);
        }
        let tx = self.db.begin_write().map_err(backend)?;
        let mut new = 0;
        {
            let mut table = tx.open_table(HEALTH_EVENTS).map_err(backend)?;
            let mut touched: Vec<&NodeId> = Vec::new();
            for e in events {
                let key = (e.node.as_str(), e.msg_id.as_uuid().as_u128());
                if table.get(key).map_err(backend)?.is_none() {
                    table.insert(key, encode(e).as_slice()).map_err(backend)?;
                    new += 1;
                    if !touched.contains(&&e.node) {
                        touched.push(&e.node);
                    }
                }
            }
            // Keep each node's newest MAX_HEALTH_EVENTS_PER_NODE.
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
                    for id in oldest {
                        table.remove((node.as_str(), id)).map_err(backend)?;
                    }
                }
            }
        }
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
}
