//! The delivery runner (decision 0017): copies each file the server holds,
//! verified, to every destination of its recording's upload policy.
//!
//! Invariants:
//! - One delivery per (job, file, destination), queued when the file is
//!   confirmed ([`queue_file`]) and, at start, for every cached file that
//!   lacks one (a crash between the two); queuing again changes nothing.
//! - A delivery is `pending` until the destination holds an object of the
//!   file's size at `{prefix}/{key}` (S3: after the bucket verified the
//!   SHA-256 checksum the put carried; local: written, fsynced, renamed;
//!   SMB: written, flushed, renamed, as [`crate::smb`] says).
//! - A failed attempt is tried again after 30 s, doubling to 1 h (jittered),
//!   until the policy's retry budget from the first failure is spent; then
//!   the delivery is `failed` until an operator retries it.
//! - An S3 copy may have started while the file arrived
//!   ([`crate::early_delivery`]); the runner then only completes it (the
//!   file is verified by then) and checks the size, or, when that copy does
//!   not fit or failed, copies from the cache as below.
//! - The file is read in [`CHUNK_BYTES`] pieces; at most [`AT_ONCE`]
//!   deliveries run together, each with at most two parts in flight, so
//!   memory stays bounded whatever the file's size.
//! - Keys: the recording's folder (its schedule's rendered folder template)
//!   or `{node}/{YYYY-MM-DD}` (UTC day of the take), then the file's name;
//!   relative, without empty, `.` or `..` parts (checked again here).

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, WriteMultipart};
use rakkr_protocol::JobId;
use rakkr_store::{DeliveryRecord, DeliveryState, JobRecord, Store, UploadRecord};
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::policies::DeliveryPolicies;

/// Bytes read and sent at a time (and an S3 multipart upload's part size).
pub const CHUNK_BYTES: usize = 16 << 20;
/// Deliveries attempted together.
pub const AT_ONCE: usize = 2;
/// How often the runner looks for due deliveries when nothing wakes it.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);
const FIRST_RETRY_MS: u64 = 30_000;
const LAST_RETRY_MS: u64 = 3_600_000;

/// `{prefix}/{key}` as an object path, refused when it is not a relative
/// path of proper parts.
pub fn object_path(prefix: &str, key: &str) -> Result<ObjectPath, String> {
    let full = if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}/{key}")
    };
    rakkr_protocol::schedule::check_folder(&full)
        .map_err(|e| format!("the object key {full:?} is refused: {e}"))?;
    ObjectPath::parse(&full).map_err(|e| format!("the object key {full:?} is refused: {e}"))
}

/// Where `name` of `job` goes under a destination.
pub fn object_key(job: &JobRecord, name: &str) -> String {
    let folder = job.folder.clone().unwrap_or_else(|| {
        let ms = job
            .recording
            .as_ref()
            .map_or(job.created_ms, |r| r.start_unix_ms);
        let day = jiff::Timestamp::from_millisecond(ms as i64)
            .map(|t| t.strftime("%Y-%m-%d").to_string())
            .unwrap_or_else(|_| "unknown-day".into());
        format!("{}/{day}", job.node)
    });
    format!("{folder}/{name}")
}

/// The upload policy `job`'s recording names: its schedule's, if any (a
/// name the configuration dropped, or none: the default applies).
pub fn policy_of(store: &dyn Store, job: &JobRecord) -> rakkr_store::Result<Option<String>> {
    let Some(by) = &job.scheduled else {
        return Ok(None);
    };
    Ok(store.schedule(by.schedule)?.and_then(|s| s.spec.delivery))
}

/// The deliveries `upload` (cached) of `job` needs under `policies`, whose
/// policy is the one called `policy` (none: the default).
pub fn deliveries_for(
    policies: &DeliveryPolicies,
    policy: Option<&str>,
    job: &JobRecord,
    upload: &UploadRecord,
    now_ms: u64,
) -> Vec<DeliveryRecord> {
    let (_, policy) = policies.for_name(policy);
    policy
        .destinations
        .iter()
        .map(|destination| DeliveryRecord {
            job: job.id,
            name: upload.name.clone(),
            destination: destination.clone(),
            node: job.node.clone(),
            key: object_key(job, &upload.name),
            bytes: upload.length,
            state: DeliveryState::Pending,
            attempts: 0,
            give_up_ms: None,
            next_attempt_ms: now_ms,
            last_error: String::new(),
            queued_ms: now_ms,
            delivered_ms: None,
        })
        .collect()
}

/// Queue the deliveries of a file just confirmed (on a blocking thread).
/// A failure is logged: the runner's reconciliation at the next start
/// queues what is missing.
pub fn queue_file(
    store: &dyn Store,
    policies: &DeliveryPolicies,
    job: &JobRecord,
    upload: &UploadRecord,
    now_ms: u64,
) {
    let queued = policy_of(store, job).and_then(|policy| {
        let wanted = deliveries_for(policies, policy.as_deref(), job, upload, now_ms);
        if wanted.is_empty() {
            return Ok(0);
        }
        store.queue_deliveries(&wanted)
    });
    if let Err(e) = queued {
        tracing::error!(job = %job.id, file = %upload.name, error = %e, "deliveries not queued; the next start queues them");
    }
}

/// The wait after `attempts` failed attempts, before jitter.
fn retry_after_ms(attempts: u32) -> u64 {
    FIRST_RETRY_MS
        .saturating_mul(1 << attempts.saturating_sub(1).min(20))
        .min(LAST_RETRY_MS)
}

/// What a delivery becomes after an attempt that failed with `why` at
/// `now_ms`, given the policy's budget.
pub fn after_failure(
    d: &DeliveryRecord,
    why: String,
    now_ms: u64,
    budget_ms: u64,
) -> DeliveryRecord {
    let mut next = d.clone();
    next.attempts = d.attempts.saturating_add(1);
    next.last_error = why;
    let give_up = *next
        .give_up_ms
        .get_or_insert(now_ms.saturating_add(budget_ms));
    if now_ms >= give_up {
        next.state = DeliveryState::Failed;
    } else {
        let wait = retry_after_ms(next.attempts);
        // Jitter up to a quarter: destinations that failed together do not
        // get every retry at once.
        let jitter = rand::random::<u64>() % (wait / 4 + 1);
        next.next_attempt_ms = now_ms.saturating_add(wait + jitter).min(give_up);
    }
    next
}

/// Copy `file` (`bytes` long) to `path`: one put when it fits one chunk,
/// else a multipart upload of chunks; then check the size the destination
/// reports.
pub async fn copy_file(
    os: &dyn ObjectStore,
    path: &ObjectPath,
    file: &std::path::Path,
    bytes: u64,
) -> Result<(), String> {
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("the server's copy {}: {e}", file.display()))?;
    let read_err = |e: std::io::Error| format!("reading the server's copy: {e}");
    if bytes <= CHUNK_BYTES as u64 {
        let mut buf = Vec::with_capacity(bytes as usize);
        f.read_to_end(&mut buf).await.map_err(read_err)?;
        os.put(path, buf.into()).await.map_err(|e| e.to_string())?;
    } else {
        let upload = os.put_multipart(path).await.map_err(|e| e.to_string())?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK_BYTES);
        let mut buf = vec![0u8; CHUNK_BYTES];
        let sent: Result<(), String> = async {
            loop {
                let mut filled = 0;
                while filled < buf.len() {
                    let n = f.read(&mut buf[filled..]).await.map_err(read_err)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok(());
                }
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(|e| e.to_string())?;
                writer.write(&buf[..filled]);
            }
        }
        .await;
        match sent {
            Ok(()) => {
                writer.finish().await.map_err(|e| e.to_string())?;
            }
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
    }
    check_size(os, path, bytes).await
}

/// The destination holds `bytes` bytes at `path`, or why not.
pub async fn check_size(os: &dyn ObjectStore, path: &ObjectPath, bytes: u64) -> Result<(), String> {
    let meta = os.head(path).await.map_err(|e| e.to_string())?;
    if meta.size != bytes {
        return Err(format!(
            "the destination holds {} bytes, not {bytes}",
            meta.size
        ));
    }
    Ok(())
}

/// What the runner works with.
#[derive(Clone)]
pub struct DeliveryRunner {
    pub store: Arc<dyn Store>,
    pub policies: Arc<DeliveryPolicies>,
    pub secrets: Arc<crate::secrets::SecretBox>,
    pub uploads: Arc<crate::uploads::Uploads>,
    pub clock: Arc<dyn Clock>,
    /// Notified when deliveries are queued or retried.
    pub wake: Arc<tokio::sync::Notify>,
    /// Notified when a delivery arrived (server retention looks again).
    pub delivered: Arc<tokio::sync::Notify>,
}

impl DeliveryRunner {
    /// One attempt of `d`; its record after it.
    async fn attempt(&self, d: DeliveryRecord) -> DeliveryRecord {
        // Deleted since it was read as due: it goes nowhere.
        let (store, job) = (self.store.clone(), d.job);
        let deleted = tokio::task::spawn_blocking(move || store.job(job)).await;
        if let Ok(Ok(Some(job))) = deleted
            && job.deleted.is_some()
        {
            return DeliveryRecord {
                state: DeliveryState::Cancelled,
                last_error: "its recording was deleted".into(),
                ..d
            };
        }
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || store.destinations()).await;
        let result = match found {
            Ok(Ok(all)) => match all.into_iter().find(|x| x.name == d.destination) {
                None => Err(format!(
                    "no destination {:?} on this server (add it, or change the upload policy)",
                    d.destination
                )),
                Some(dest) => {
                    let file = self.uploads.cached(&d.node, d.job, &d.name);
                    let copied = async {
                        let path =
                            object_path(crate::destinations::key_prefix(&dest.spec), &d.key)?;
                        // Sent while the file arrived: only completing it is left.
                        if let Some(early) = self.uploads.early.claim(d.job, &d.name, &dest, &path)
                        {
                            match early.finish().await {
                                Ok(()) => {
                                    self.uploads
                                        .stats
                                        .early_copies_delivered
                                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    return Ok(());
                                }
                                Err(e) => {
                                    tracing::info!(job = %d.job, file = %d.name, destination = %d.destination, error = %e, "the early copy failed; copying from the server's copy")
                                }
                            }
                        }
                        let opened = crate::destinations::open(&self.secrets, &dest)?;
                        opened.deliver(&path, &file, d.bytes).await
                    };
                    copied.await
                }
            },
            Ok(Err(e)) => Err(format!("store: {e}")),
            Err(e) => Err(e.to_string()),
        };
        let now = self.clock.unix_ms();
        match result {
            Ok(()) => {
                tracing::info!(job = %d.job, file = %d.name, destination = %d.destination, bytes = d.bytes, "delivered");
                DeliveryRecord {
                    state: DeliveryState::Delivered,
                    attempts: d.attempts + 1,
                    delivered_ms: Some(now),
                    last_error: String::new(),
                    ..d
                }
            }
            Err(why) => {
                let budget_ms = u64::from(
                    self.policies
                        .list()
                        .into_iter()
                        .filter(|p| p.value.destinations.contains(&d.destination))
                        .map(|p| p.value.retry_budget_h)
                        .max()
                        .unwrap_or(72),
                ) * 3_600_000;
                let next = after_failure(&d, why, now, budget_ms);
                tracing::warn!(job = %d.job, file = %d.name, destination = %d.destination, attempts = next.attempts, error = %next.last_error, state = next.state.as_str(), "delivery failed");
                next
            }
        }
    }

    /// Queue what a crash between a confirmation and its queuing left out.
    async fn reconcile(&self) {
        let (store, policies, now) = (
            self.store.clone(),
            self.policies.clone(),
            self.clock.unix_ms(),
        );
        let done = tokio::task::spawn_blocking(move || -> rakkr_store::Result<usize> {
            let mut added = 0;
            for upload in store.cached_uploads()? {
                // Deleted by retention once delivered everywhere: nothing to send.
                if upload.removed_ms.is_some() {
                    continue;
                }
                let Some(job) = store.job(upload.job)? else {
                    continue;
                };
                if job.deleted.is_some() {
                    continue;
                }
                let policy = policy_of(&*store, &job)?;
                added += store.queue_deliveries(&deliveries_for(
                    &policies,
                    policy.as_deref(),
                    &job,
                    &upload,
                    now,
                ))?;
            }
            Ok(added)
        })
        .await;
        match done {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(deliveries = n, "queued deliveries a restart found missing")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "delivery reconciliation failed"),
            Err(e) => tracing::error!(error = %e, "delivery reconciliation task failed"),
        }
    }

    /// Run until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        self.reconcile().await;
        loop {
            let (store, now) = (self.store.clone(), self.clock.unix_ms());
            let due = match tokio::task::spawn_blocking(move || store.due_deliveries(now, AT_ONCE))
                .await
            {
                Ok(Ok(due)) => due,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "deliveries not read");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            let busy = !due.is_empty();
            let mut attempts = tokio::task::JoinSet::new();
            for d in due {
                let runner = self.clone();
                attempts.spawn(async move { runner.attempt(d).await });
            }
            let finished = async {
                while let Some(done) = attempts.join_next().await {
                    let Ok(record) = done else { continue };
                    let arrived = record.state == DeliveryState::Delivered;
                    let (store, now) = (self.store.clone(), self.clock.unix_ms());
                    let kept = tokio::task::spawn_blocking(move || {
                        store.put_delivery(&record)?;
                        if let Some(entry) = final_audit(&record, now) {
                            crate::audit::record_now(&*store, entry);
                        }
                        Ok::<_, rakkr_store::StoreError>(())
                    });
                    match kept.await {
                        Ok(Ok(())) if arrived => self.delivered.notify_one(),
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "a delivery's outcome not kept; it will be tried again")
                        }
                        _ => {}
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = finished => {}
            }
            if busy {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }
}

/// The audit record of a delivery that reached its end (arrived, or failed
/// with its budget spent), by `runner:delivery`; none for an attempt that
/// will be tried again.
pub fn final_audit(d: &DeliveryRecord, now_ms: u64) -> Option<rakkr_store::AuditEntry> {
    let (outcome, reason) = match d.state {
        DeliveryState::Delivered => ("allowed", None),
        DeliveryState::Failed => ("failed", Some(d.last_error.clone())),
        // Pending goes on; cancelled was audited as its recording's deletion.
        DeliveryState::Pending | DeliveryState::Cancelled => return None,
    };
    Some(rakkr_store::AuditEntry {
        at_ms: now_ms,
        actor: "runner:delivery".into(),
        action: "deliver recording".into(),
        target: Some(format!("recording:{}/{}", d.job, d.name)),
        outcome: outcome.into(),
        reason,
        after: Some(serde_json::json!({
            "node": d.node.as_str(),
            "destination": d.destination,
            "key": d.key,
            "bytes": d.bytes,
            "attempts": d.attempts,
        })),
        ..Default::default()
    })
}

/// A recording's delivery as a whole (decision 0017).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingDelivery {
    /// Not every file is on the server yet.
    Arriving,
    /// On the server; deliveries under way.
    Delivering,
    /// Every file on the server and at every destination of its policy.
    Uploaded,
    /// A delivery failed (its budget spent): some destination lacks a file.
    Partial,
}

/// The delivery state of a take (`r`, its report) from its files' uploads
/// and deliveries.
pub fn recording_delivery(
    r: &rakkr_protocol::job::RecordingReport,
    uploads: &[UploadRecord],
    deliveries: &[DeliveryRecord],
) -> RecordingDelivery {
    let all_cached = r.file_count as usize == r.files.len()
        && r.files.iter().all(|f| {
            uploads
                .iter()
                .any(|u| u.name == f.name && u.state == rakkr_store::UploadState::Cached)
        });
    if !all_cached {
        RecordingDelivery::Arriving
    } else if deliveries.iter().any(|d| d.state == DeliveryState::Failed) {
        RecordingDelivery::Partial
    } else if deliveries
        .iter()
        .all(|d| d.state == DeliveryState::Delivered)
    {
        RecordingDelivery::Uploaded
    } else {
        RecordingDelivery::Delivering
    }
}

/// `job`'s deliveries, for pages (none when the store cannot say).
pub async fn deliveries_of(store: &Arc<dyn Store>, job: JobId) -> Vec<DeliveryRecord> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.deliveries_of_job(job)).await {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "deliveries of a take not read");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> DeliveryRecord {
        DeliveryRecord {
            job: JobId::new(1_000),
            name: "a.flac".into(),
            destination: "s3".into(),
            node: rakkr_protocol::NodeId::new("n").unwrap(),
            key: "n/2026-11-30/a.flac".into(),
            bytes: 10,
            state: DeliveryState::Pending,
            attempts: 0,
            give_up_ms: None,
            next_attempt_ms: 0,
            last_error: String::new(),
            queued_ms: 0,
            delivered_ms: None,
        }
    }

    #[test]
    fn a_delivery_is_audited_once_at_its_end() {
        assert!(final_audit(&delivery(), 5).is_none(), "not while retried");
        let arrived = DeliveryRecord {
            state: DeliveryState::Delivered,
            attempts: 2,
            ..delivery()
        };
        let entry = final_audit(&arrived, 5).unwrap();
        assert_eq!(
            (entry.actor.as_str(), entry.outcome.as_str(), entry.at_ms),
            ("runner:delivery", "allowed", 5)
        );
        let target = format!("recording:{}/a.flac", arrived.job);
        assert_eq!(entry.target.as_deref(), Some(target.as_str()));
        let after = entry.after.unwrap();
        assert_eq!(
            (&after["destination"], &after["attempts"], &after["key"]),
            (&"s3".into(), &2.into(), &"n/2026-11-30/a.flac".into())
        );
        let spent = DeliveryRecord {
            state: DeliveryState::Failed,
            last_error: "access denied".into(),
            ..delivery()
        };
        let entry = final_audit(&spent, 6).unwrap();
        assert_eq!(
            (entry.outcome.as_str(), entry.reason.as_deref()),
            ("failed", Some("access denied"))
        );
    }

    #[test]
    fn a_recording_is_uploaded_when_every_delivery_is_done_and_partial_when_one_failed() {
        use DeliveryState::{Delivered, Failed, Pending};
        use rakkr_protocol::job::{RecordedFile, RecordingReport};
        use rakkr_store::UploadState::{Cached, Receiving};
        let report = RecordingReport {
            files: vec![RecordedFile {
                name: "a.flac".into(),
                frames: 48_000,
                bytes: 10,
            }],
            file_count: 1,
            frames: 48_000,
            sample_rate: 48_000,
            channels: 2,
            bits: 24,
            start_unix_ms: 0,
            gaps: 0,
            recovered: false,
        };
        let upload = |state| UploadRecord {
            job: JobId::new(1_000),
            name: "a.flac".into(),
            node: rakkr_protocol::NodeId::new("n").unwrap(),
            length: 10,
            offset: 10,
            state,
            sha256: None,
            started_ms: 0,
            updated_ms: 0,
            waveform: None,
            removed_ms: None,
        };
        let state = |u, ds: &[DeliveryState]| {
            let ds: Vec<DeliveryRecord> = ds
                .iter()
                .map(|s| DeliveryRecord {
                    state: *s,
                    ..delivery()
                })
                .collect();
            recording_delivery(&report, &[upload(u)], &ds)
        };
        assert_eq!(state(Receiving, &[]), RecordingDelivery::Arriving);
        assert_eq!(
            state(Cached, &[]),
            RecordingDelivery::Uploaded,
            "no destinations"
        );
        assert_eq!(
            state(Cached, &[Delivered, Pending]),
            RecordingDelivery::Delivering
        );
        assert_eq!(
            state(Cached, &[Delivered, Delivered]),
            RecordingDelivery::Uploaded
        );
        assert_eq!(
            state(Cached, &[Delivered, Failed]),
            RecordingDelivery::Partial
        );
        assert_eq!(
            recording_delivery(&report, &[], &[]),
            RecordingDelivery::Arriving
        );
    }

    #[tokio::test]
    async fn large_files_go_in_parts_and_arrive_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.flac");
        // Two and a half chunks of bytes that differ from part to part.
        let bytes: Vec<u8> = (0..(CHUNK_BYTES * 5 / 2) as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        std::fs::write(&file, &bytes).unwrap();
        let os = object_store::memory::InMemory::new();
        let path = object_path("p", "n/big.flac").unwrap();
        copy_file(&os, &path, &file, bytes.len() as u64)
            .await
            .unwrap();
        let back = os.get(&path).await.unwrap().bytes().await.unwrap();
        assert!(back == bytes, "byte-identical");
        // A size that does not match what the destination holds is an error.
        let e = copy_file(&os, &path, &file, bytes.len() as u64 + 1)
            .await
            .unwrap_err();
        assert!(e.contains("holds"), "{e}");
    }

    #[test]
    fn keys_are_relative_paths_of_proper_parts() {
        assert_eq!(
            object_path("site-1", "n/2026-11-30/a.flac")
                .unwrap()
                .as_ref(),
            "site-1/n/2026-11-30/a.flac"
        );
        assert_eq!(object_path("", "n/a.flac").unwrap().as_ref(), "n/a.flac");
        for bad in [
            "../a.flac",
            "n/../../etc/passwd",
            "/abs/a.flac",
            "n//a.flac",
            "n/./a.flac",
        ] {
            assert!(object_path("", bad).is_err(), "{bad}");
        }
        assert!(object_path("..", "a.flac").is_err());
    }

    #[test]
    fn failures_back_off_within_the_budget_then_fail() {
        let budget = 2 * 3_600_000;
        let first = after_failure(&delivery(), "refused".into(), 1_000, budget);
        assert_eq!((first.attempts, first.state), (1, DeliveryState::Pending));
        assert_eq!(first.give_up_ms, Some(1_000 + budget));
        assert!(
            (31_000..=38_500).contains(&first.next_attempt_ms),
            "{}",
            first.next_attempt_ms
        );
        let second = after_failure(&first, "refused".into(), 40_000, budget);
        assert!(
            (100_000..=115_000).contains(&second.next_attempt_ms),
            "60 s: {}",
            second.next_attempt_ms
        );
        assert_eq!(
            second.give_up_ms, first.give_up_ms,
            "the budget runs from the first failure"
        );
        let mut late = second.clone();
        late.attempts = 30;
        let capped = after_failure(&late, "x".into(), 1_000_000, budget);
        assert!(
            capped.next_attempt_ms <= 1_000 + budget,
            "never past the budget"
        );
        let spent = after_failure(&second, "x".into(), 1_000 + budget, budget);
        assert_eq!(spent.state, DeliveryState::Failed);
        assert_eq!(spent.last_error, "x");
    }
}
