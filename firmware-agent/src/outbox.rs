//! The durable outbox: messages the server must receive (health events, job
//! updates) wait here until the server acknowledges them. It also keeps the
//! recording jobs the node holds, so that a job's state and the message that
//! reports it change in one transaction.
//!
//! Invariants:
//! - A message is removed only by an acknowledgement naming its id; until then
//!   it survives agent restarts and power loss (every change is a redb commit,
//!   fsynced before it returns).
//! - Messages are handed out in the order they were added.
//! - The outbox is bounded by bytes; a message that does not fit is refused
//!   (and counted by the caller), never made room for by dropping older ones.
//!   Meter frames never come here: they are worthless late.
//!
//! On-disk format (`{state_dir}/outbox.redb`):
//!
//! | table        | key                    | value                                      |
//! |--------------|------------------------|--------------------------------------------|
//! | `messages`   | sequence `u64`         | (channel `&str`, message id `u128`, payload `&[u8]`) |
//! | `by_id`      | message id `u128`      | sequence `u64`                             |
//!
//! | `open`       | condition name `&str`  | since, ms since the epoch `u64`            |
//! | `jobs`       | job id `u128`          | the held job (JSON, see `crate::jobs::HeldJob`) |
//! | `job_finals` | message id `u128`      | job id `u128`: the job's final report      |
//! | `started`    | job id `u128`          | when the node started it, ms `u64` (the newest [`MAX_STARTED`]) |
//! | `uploads`    | (job id `u128`, file name) | a take's file on its way to the server (JSON, see `crate::upload::QueuedFile`) |
//! | `interrupted`| job id `u128`          | when the node found its take cut by a crash or power loss, ms `u64` (the newest [`MAX_STARTED`]) |
//! | `schedules`  | [`Kept`] key           | retained commands as last received: `"node"` the node's schedules (JSON `NodeSchedules`), `"watchdog"` its watchdog rules (JSON `NodeWatchdog`) |
//!
//! A job is held from its start until the server has acknowledged its final
//! report: so a claim can name it, and an offer of it (sent again before the
//! report arrived) is recognised and ignored, also across restarts.
//! `started` remembers jobs after they are let go, so a scheduled occurrence
//! the node recorded is never started by it again, and `interrupted` those
//! whose take a crash cut, so the node restarts the occurrence (under its
//! next job id) while the server is unreachable; `schedules` lets a node
//! that restarts while the server is unreachable still record on time.
//!
//! Payloads are complete envelopes, encoded when the message was created, so a
//! resend carries the same `msg_id` and the server de-duplicates it. `open`
//! remembers health conditions raised and not yet cleared, so an agent that
//! restarts meanwhile can still clear them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rakkr_protocol::MessageId;
use rakkr_protocol::topic::NodeChannel;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const MESSAGES: TableDefinition<u64, (&str, u128, &[u8])> = TableDefinition::new("messages");
const BY_ID: TableDefinition<u128, u64> = TableDefinition::new("by_id");
const OPEN: TableDefinition<&str, u64> = TableDefinition::new("open");
const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
const JOB_FINALS: TableDefinition<u128, u128> = TableDefinition::new("job_finals");
const STARTED: TableDefinition<u128, u64> = TableDefinition::new("started");
const INTERRUPTED: TableDefinition<u128, u64> = TableDefinition::new("interrupted");
const UPLOADS: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("uploads");
const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");

/// Retained commands the node keeps across restarts (in the `schedules` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// `cmd/schedules` (key `"node"`, as before there was more than one).
    Schedules,
    /// `cmd/watchdog`.
    Watchdog,
    /// `cmd/retention`.
    Retention,
}

impl Kept {
    fn key(self) -> &'static str {
        match self {
            Kept::Schedules => "node",
            Kept::Watchdog => "watchdog",
            Kept::Retention => "retention",
        }
    }
}

/// Jobs remembered as started: months of a busy schedule.
pub const MAX_STARTED: u64 = 4096;

/// Default bound: far more health events than a node raises in weeks offline.
pub const DEFAULT_LIMIT_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {detail}")]
    Storage { path: String, detail: String },
    #[error("the outbox is full ({limit} bytes); message not kept")]
    Full { limit: u64 },
}

/// One waiting message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub channel: NodeChannel,
    pub msg_id: MessageId,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub struct Outbox {
    db: Database,
    name: String,
    limit_bytes: u64,
    bytes: AtomicU64,
}

impl Outbox {
    /// Open (or create) the outbox file at `path`.
    pub fn open(path: &Path, limit_bytes: u64) -> Result<Outbox, OutboxError> {
        let name = path.display().to_string();
        let db = Database::create(path).map_err(|e| OutboxError::Storage {
            path: name.clone(),
            detail: e.to_string(),
        })?;
        Outbox::init(db, name, limit_bytes)
    }

    /// An outbox in memory, for agents without a state directory (simulated
    /// appliances): same behaviour, but nothing survives the process.
    pub fn in_memory(limit_bytes: u64) -> Result<Outbox, OutboxError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| OutboxError::Storage {
                path: "(memory)".into(),
                detail: e.to_string(),
            })?;
        Outbox::init(db, "(memory)".into(), limit_bytes)
    }

    fn init(db: Database, name: String, limit_bytes: u64) -> Result<Outbox, OutboxError> {
        let outbox = Outbox {
            db,
            name,
            limit_bytes,
            bytes: AtomicU64::new(0),
        };
        let tx = outbox.db.begin_write().map_err(|e| outbox.fail(e))?;
        tx.open_table(MESSAGES).map_err(|e| outbox.fail(e))?;
        tx.open_table(BY_ID).map_err(|e| outbox.fail(e))?;
        tx.open_table(OPEN).map_err(|e| outbox.fail(e))?;
        tx.open_table(JOBS).map_err(|e| outbox.fail(e))?;
        tx.open_table(JOB_FINALS).map_err(|e| outbox.fail(e))?;
        tx.open_table(STARTED).map_err(|e| outbox.fail(e))?;
        tx.open_table(INTERRUPTED).map_err(|e| outbox.fail(e))?;
        tx.open_table(UPLOADS).map_err(|e| outbox.fail(e))?;
        tx.open_table(SCHEDULES).map_err(|e| outbox.fail(e))?;
        tx.commit().map_err(|e| outbox.fail(e))?;
        let bytes = outbox
            .pending(usize::MAX)?
            .iter()
            .map(|e| e.payload.len() as u64)
            .sum();
        outbox.bytes.store(bytes, Ordering::Relaxed);
        Ok(outbox)
    }

    fn fail(&self, e: impl std::fmt::Display) -> OutboxError {
        OutboxError::Storage {
            path: self.name.clone(),
            detail: e.to_string(),
        }
    }

    /// Keep a message until it is acknowledged. Durable when this returns.
    pub fn push(
        &self,
        channel: NodeChannel,
        msg_id: MessageId,
        payload: &[u8],
    ) -> Result<(), OutboxError> {
        self.write_with(channel, msg_id, payload, |_| Ok(()))
    }

    /// Hold a job (`record`: its state, kept across restarts) and keep the
    /// message that reports it, in one transaction.
    pub fn hold_job(
        &self,
        job: u128,
        record: &[u8],
        msg_id: MessageId,
        payload: &[u8],
    ) -> Result<(), OutboxError> {
        self.write_with(NodeChannel::Jobs, msg_id, payload, |tx| {
            let mut jobs = tx.open_table(JOBS).map_err(|e| self.fail(e))?;
            jobs.insert(job, record).map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    /// Keep a job's final report (`record`: the job as finished) and queue
    /// its files for upload (`uploads`: name and queue entry), in one
    /// transaction; the job is let go when the report is acknowledged.
    pub fn finish_job(
        &self,
        job: u128,
        record: &[u8],
        msg_id: MessageId,
        payload: &[u8],
        uploads: &[(String, Vec<u8>)],
    ) -> Result<(), OutboxError> {
        self.write_with(NodeChannel::Jobs, msg_id, payload, |tx| {
            let mut queue = tx.open_table(UPLOADS).map_err(|e| self.fail(e))?;
            for (name, entry) in uploads {
                queue
                    .insert((job, name.as_str()), entry.as_slice())
                    .map_err(|e| self.fail(e))?;
            }
            let mut jobs = tx.open_table(JOBS).map_err(|e| self.fail(e))?;
            jobs.insert(job, record).map_err(|e| self.fail(e))?;
            let mut finals = tx.open_table(JOB_FINALS).map_err(|e| self.fail(e))?;
            finals
                .insert(msg_id.as_uuid().as_u128(), job)
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    /// Take every file of `job`'s take off the upload queue and keep the
    /// message that reports the take deleted, in one transaction.
    pub fn forget_take(
        &self,
        job: u128,
        msg_id: MessageId,
        payload: &[u8],
    ) -> Result<(), OutboxError> {
        self.write_with(NodeChannel::Jobs, msg_id, payload, |tx| {
            let mut queue = tx.open_table(UPLOADS).map_err(|e| self.fail(e))?;
            queue
                .retain_in((job, "")..(job.saturating_add(1), ""), |_, _| false)
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    /// Replace a held job's record (it took over a lease), no message.
    pub fn update_held(&self, job: u128, record: &[u8]) -> Result<(), OutboxError> {
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut jobs = tx.open_table(JOBS).map_err(|e| self.fail(e))?;
            jobs.insert(job, record).map_err(|e| self.fail(e))?;
        }
        tx.commit().map_err(|e| self.fail(e))
    }

    /// Remember that the node started `job` at `at_ms`; the oldest of more
    /// than [`MAX_STARTED`] are forgotten.
    pub fn mark_started(&self, job: u128, at_ms: u64) -> Result<(), OutboxError> {
        self.remember(STARTED, job, at_ms)
    }

    /// Whether the node started `job` (and has not forgotten it since).
    pub fn was_started(&self, job: u128) -> Result<bool, OutboxError> {
        self.remembers(STARTED, job)
    }

    /// Remember that a crash or power loss cut `job`'s take (found at
    /// `at_ms`, when the node started again); bounded as `started` is.
    pub fn mark_interrupted(&self, job: u128, at_ms: u64) -> Result<(), OutboxError> {
        self.remember(INTERRUPTED, job, at_ms)
    }

    /// Whether a crash or power loss cut `job`'s take.
    pub fn was_interrupted(&self, job: u128) -> Result<bool, OutboxError> {
        self.remembers(INTERRUPTED, job)
    }

    /// Insert `job → at_ms` into a table of remembered jobs, forgetting the
    /// oldest beyond [`MAX_STARTED`].
    fn remember(
        &self,
        table: TableDefinition<u128, u64>,
        job: u128,
        at_ms: u64,
    ) -> Result<(), OutboxError> {
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut jobs = tx.open_table(table).map_err(|e| self.fail(e))?;
            jobs.insert(job, at_ms).map_err(|e| self.fail(e))?;
            if jobs.len().map_err(|e| self.fail(e))? > MAX_STARTED {
                let mut oldest: Option<(u128, u64)> = None;
                for entry in jobs.iter().map_err(|e| self.fail(e))? {
                    let (k, v) = entry.map_err(|e| self.fail(e))?;
                    if oldest.is_none_or(|(_, t)| v.value() < t) {
                        oldest = Some((k.value(), v.value()));
                    }
                }
                if let Some((k, _)) = oldest {
                    jobs.remove(k).map_err(|e| self.fail(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.fail(e))
    }

    fn remembers(&self, table: TableDefinition<u128, u64>, job: u128) -> Result<bool, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let jobs = tx.open_table(table).map_err(|e| self.fail(e))?;
        Ok(jobs.get(job).map_err(|e| self.fail(e))?.is_some())
    }

    /// The upload queue, oldest job first: (job, file name, entry).
    pub fn uploads(&self) -> Result<Vec<(u128, String, Vec<u8>)>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let queue = tx.open_table(UPLOADS).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for entry in queue.iter().map_err(|e| self.fail(e))? {
            let (k, v) = entry.map_err(|e| self.fail(e))?;
            let (job, name) = k.value();
            out.push((job, name.to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Replace a queued file's entry (`None`: take it off the queue).
    pub fn set_upload(
        &self,
        job: u128,
        name: &str,
        entry: Option<&[u8]>,
    ) -> Result<(), OutboxError> {
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut queue = tx.open_table(UPLOADS).map_err(|e| self.fail(e))?;
            match entry {
                Some(e) => queue.insert((job, name), e).map(|_| ()),
                None => queue.remove((job, name)).map(|_| ()),
            }
            .map_err(|e| self.fail(e))?;
        }
        tx.commit().map_err(|e| self.fail(e))
    }

    /// Keep a retained command as received.
    pub fn keep(&self, what: Kept, json: &[u8]) -> Result<(), OutboxError> {
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut kept = tx.open_table(SCHEDULES).map_err(|e| self.fail(e))?;
            kept.insert(what.key(), json).map_err(|e| self.fail(e))?;
        }
        tx.commit().map_err(|e| self.fail(e))
    }

    /// A retained command as last kept.
    pub fn kept(&self, what: Kept) -> Result<Option<Vec<u8>>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let kept = tx.open_table(SCHEDULES).map_err(|e| self.fail(e))?;
        Ok(kept
            .get(what.key())
            .map_err(|e| self.fail(e))?
            .map(|v| v.value().to_vec()))
    }

    /// The jobs held: running, or finished with the report not acknowledged.
    pub fn held_jobs(&self) -> Result<Vec<(u128, Vec<u8>)>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let jobs = tx.open_table(JOBS).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for entry in jobs.iter().map_err(|e| self.fail(e))? {
            let (k, v) = entry.map_err(|e| self.fail(e))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Append a message and make `also`'s change in the same transaction.
    fn write_with(
        &self,
        channel: NodeChannel,
        msg_id: MessageId,
        payload: &[u8],
        also: impl FnOnce(&redb::WriteTransaction) -> Result<(), OutboxError>,
    ) -> Result<(), OutboxError> {
        let size = payload.len() as u64;
        if self.bytes.load(Ordering::Relaxed) + size > self.limit_bytes {
            return Err(OutboxError::Full {
                limit: self.limit_bytes,
            });
        }
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        let mut added = 0;
        {
            let mut messages = tx.open_table(MESSAGES).map_err(|e| self.fail(e))?;
            let mut by_id = tx.open_table(BY_ID).map_err(|e| self.fail(e))?;
            let id = msg_id.as_uuid().as_u128();
            if by_id.get(id).map_err(|e| self.fail(e))?.is_none() {
                let seq = match messages.last().map_err(|e| self.fail(e))? {
                    Some((k, _)) => k.value() + 1,
                    None => 0,
                };
                messages
                    .insert(seq, (channel.as_str(), id, payload))
                    .map_err(|e| self.fail(e))?;
                by_id.insert(id, seq).map_err(|e| self.fail(e))?;
                added = size;
            }
        }
        also(&tx)?;
        tx.commit().map_err(|e| self.fail(e))?;
        self.bytes.fetch_add(added, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes of payload waiting for acknowledgement.
    pub fn pending_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Up to `max` waiting messages, oldest first.
    pub fn pending(&self, max: usize) -> Result<Vec<OutboxEntry>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let messages = tx.open_table(MESSAGES).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for entry in messages.iter().map_err(|e| self.fail(e))?.take(max) {
            let (_, v) = entry.map_err(|e| self.fail(e))?;
            let (channel, id, payload) = v.value();
            let channel = NodeChannel::ALL
                .into_iter()
                .find(|c| c.as_str() == channel)
                .ok_or_else(|| self.fail(format!("unknown channel {channel:?}")))?;
            out.push(OutboxEntry {
                channel,
                msg_id: MessageId::from_uuid(uuid::Uuid::from_u128(id)),
                payload: payload.to_vec(),
            });
        }
        Ok(out)
    }

    /// Forget the acknowledged messages; ids not (or no longer) here are
    /// ignored. Returns how many were removed.
    pub fn acknowledge(&self, ids: &[MessageId]) -> Result<usize, OutboxError> {
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        let (mut removed, mut freed) = (0, 0u64);
        {
            let mut messages = tx.open_table(MESSAGES).map_err(|e| self.fail(e))?;
            let mut by_id = tx.open_table(BY_ID).map_err(|e| self.fail(e))?;
            for id in ids {
                let Some(seq) = by_id
                    .remove(id.as_uuid().as_u128())
                    .map_err(|e| self.fail(e))?
                    .map(|s| s.value())
                else {
                    continue;
                };
                if let Some(v) = messages.remove(seq).map_err(|e| self.fail(e))? {
                    freed += v.value().2.len() as u64;
                    removed += 1;
                }
                let mut finals = tx.open_table(JOB_FINALS).map_err(|e| self.fail(e))?;
                if let Some(job) = finals
                    .remove(id.as_uuid().as_u128())
                    .map_err(|e| self.fail(e))?
                    .map(|j| j.value())
                {
                    let mut jobs = tx.open_table(JOBS).map_err(|e| self.fail(e))?;
                    jobs.remove(job).map_err(|e| self.fail(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.fail(e))?;
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        Ok(removed)
    }

    /// Remember that `condition` is open since `since_ms` (`None`: it is closed).
    pub fn set_open(&self, condition: &str, since_ms: Option<u64>) -> Result<(), OutboxError> {
        let tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        {
            let mut open = tx.open_table(OPEN).map_err(|e| self.fail(e))?;
            match since_ms {
                Some(ms) => open.insert(condition, ms).map(drop),
                None => open.remove(condition).map(drop),
            }
            .map_err(|e| self.fail(e))?;
        }
        tx.commit().map_err(|e| self.fail(e))
    }

    /// Since when `condition` has been open, if it is.
    pub fn open_since(&self, condition: &str) -> Result<Option<u64>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let open = tx.open_table(OPEN).map_err(|e| self.fail(e))?;
        Ok(open
            .get(condition)
            .map_err(|e| self.fail(e))?
            .map(|v| v.value()))
    }

    /// Every open condition and since when.
    pub fn open_conditions(&self) -> Result<Vec<(String, u64)>, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let open = tx.open_table(OPEN).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for entry in open.iter().map_err(|e| self.fail(e))? {
            let (k, v) = entry.map_err(|e| self.fail(e))?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    /// Messages waiting.
    pub fn len(&self) -> Result<u64, OutboxError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let messages = tx.open_table(MESSAGES).map_err(|e| self.fail(e))?;
        messages.len().map_err(|e| self.fail(e))
    }

    pub fn is_empty(&self) -> Result<bool, OutboxError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_reopening_in_order_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        let ids: Vec<MessageId> = (1..=3).map(|i| MessageId::new(1000 * i)).collect();
        {
            let o = Outbox::open(&path, 1 << 20).unwrap();
            for (i, id) in ids.iter().enumerate() {
                o.push(NodeChannel::Events, *id, format!("m{i}").as_bytes())
                    .unwrap();
            }
            // Pushing the same message again keeps one copy.
            o.push(NodeChannel::Events, ids[0], b"m0").unwrap();
            assert_eq!(o.len().unwrap(), 3);
        }
        let o = Outbox::open(&path, 1 << 20).unwrap();
        let pending = o.pending(10).unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|e| e.payload.clone())
                .collect::<Vec<_>>(),
            [b"m0".to_vec(), b"m1".to_vec(), b"m2".to_vec()]
        );
        assert_eq!(pending[1].msg_id, ids[1]);
        assert_eq!(pending[1].channel, NodeChannel::Events);
        // Out-of-order and unknown acknowledgements.
        let stranger = MessageId::new(5);
        assert_eq!(o.acknowledge(&[ids[1], stranger]).unwrap(), 1);
        assert_eq!(o.acknowledge(&[ids[1]]).unwrap(), 0);
        let left: Vec<MessageId> = o.pending(10).unwrap().iter().map(|e| e.msg_id).collect();
        assert_eq!(left, [ids[0], ids[2]]);
        // New messages go after the old ones.
        o.push(NodeChannel::Events, MessageId::new(9000), b"m3")
            .unwrap();
        assert_eq!(o.pending(10).unwrap().last().unwrap().payload, b"m3");
        assert_eq!(o.pending(1).unwrap().len(), 1);
    }

    #[test]
    fn started_and_cut_jobs_are_remembered_across_reopening_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        {
            let o = Outbox::open(&path, 1 << 20).unwrap();
            o.mark_started(7, 100).unwrap();
            o.mark_interrupted(7, 200).unwrap();
            o.mark_started(8, 300).unwrap();
        }
        let o = Outbox::open(&path, 1 << 20).unwrap();
        assert!(o.was_started(7).unwrap() && o.was_started(8).unwrap());
        assert!(o.was_interrupted(7).unwrap());
        assert!(!o.was_interrupted(8).unwrap(), "started is not cut");
        // The bound, in memory: thousands of durable commits take long.
        let o = Outbox::in_memory(1 << 20).unwrap();
        o.mark_started(7, 100).unwrap();
        o.mark_interrupted(7, 200).unwrap();
        for job in 0..MAX_STARTED as u128 {
            o.mark_interrupted(1000 + job, 1000 + job as u64).unwrap();
        }
        assert!(!o.was_interrupted(7).unwrap(), "the oldest is forgotten");
        assert!(o.was_interrupted(1000).unwrap());
        assert!(o.was_started(7).unwrap(), "each table has its own bound");
    }

    #[test]
    fn a_job_is_held_until_its_final_report_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        let (running, done) = (MessageId::new(1), MessageId::new(2));
        {
            let o = Outbox::open(&path, 1 << 20).unwrap();
            o.hold_job(7, b"started", running, b"running").unwrap();
            assert_eq!(o.held_jobs().unwrap(), [(7, b"started".to_vec())]);
            let files = [("7.flac".to_owned(), b"queued".to_vec())];
            o.finish_job(7, b"finished", done, b"completed", &files)
                .unwrap();
            // Acknowledging the `running` report does not let go of the job.
            o.acknowledge(&[running]).unwrap();
            assert_eq!(o.held_jobs().unwrap(), [(7, b"finished".to_vec())]);
        }
        // Across a restart, until the final report is acknowledged; its
        // files were queued with the report.
        let o = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!(o.held_jobs().unwrap().len(), 1);
        assert_eq!(
            o.uploads().unwrap(),
            [(7, "7.flac".to_owned(), b"queued".to_vec())]
        );
        o.set_upload(7, "7.flac", Some(b"sent")).unwrap();
        assert_eq!(o.uploads().unwrap()[0].2, b"sent");
        o.set_upload(7, "7.flac", None).unwrap();
        assert!(o.uploads().unwrap().is_empty());
        assert_eq!(o.pending(10).unwrap()[0].channel, NodeChannel::Jobs);
        o.acknowledge(&[done]).unwrap();
        assert!(o.held_jobs().unwrap().is_empty());
        assert!(o.is_empty().unwrap());
    }

    #[test]
    fn open_conditions_survive_reopening_until_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.redb");
        {
            let o = Outbox::open(&path, 1 << 20).unwrap();
            assert_eq!(o.open_since("device_lost").unwrap(), None);
            o.set_open("device_lost", Some(1234)).unwrap();
        }
        let o = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!(o.open_since("device_lost").unwrap(), Some(1234));
        o.set_open("device_lost", None).unwrap();
        assert_eq!(o.open_since("device_lost").unwrap(), None);
    }

    #[test]
    fn a_full_outbox_refuses_new_messages_and_keeps_the_old() {
        let o = Outbox::in_memory(10).unwrap();
        let first = MessageId::new(1);
        o.push(NodeChannel::Events, first, b"123456").unwrap();
        let e = o
            .push(NodeChannel::Events, MessageId::new(2), b"123456")
            .unwrap_err();
        assert!(matches!(e, OutboxError::Full { limit: 10 }), "{e}");
        assert_eq!(o.len().unwrap(), 1);
        // Acknowledging frees the room.
        o.acknowledge(&[first]).unwrap();
        assert!(o.is_empty().unwrap());
        o.push(NodeChannel::Events, MessageId::new(3), b"123456")
            .unwrap();
    }
}
