//! Server retention: when the server deletes its own copy of a file
//! (`{data_dir}/recordings/{node}/{job}/{name}`), decided by [`plan`] and done by
//! [`ServerRetention`]; `/metrics` shows what it holds and deleted.
//!
//! Invariants:
//! - Only a file every destination of its recording's upload policy holds
//!   (each delivery `delivered`) is ever deleted. A policy without
//!   destinations makes the server's copy the only one: never deleted.
//! - A file goes when its policy's `delete_server_copy_after_h` has passed
//!   since its last delivery arrived, or, oldest confirmed first, while the
//!   copies take more than `[uploads] cache_max_mb`. When only undelivered
//!   files are left over the cap, nothing more goes and the excess is
//!   reported (metrics, a warning), never fixed by losing a take.
//! - The file is deleted first, then its upload record says `removed_ms`
//!   (a crash between the two is finished by the next pass: a file already
//!   gone counts as deleted). Every deletion is audited as
//!   `runner:retention`, with its reason, bytes, checksum and destinations.
//! - Each pass first deletes what a deleted recording still has on the
//!   server (its deletion was cut short by a crash; decision 0020).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rakkr_protocol::{JobId, NodeId};
use rakkr_store::{AuditEntry, DeliveryState, Store, UploadRecord};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::policies::DeliveryPolicies;

/// How often a pass runs when no delivery wakes it.
pub const LOOK_EVERY: Duration = Duration::from_secs(300);
/// The least time between passes: a pass reads every file the server holds,
/// and a busy queue delivers many files a minute.
pub const MIN_GAP: Duration = Duration::from_secs(10);
const HOUR_MS: u64 = 3_600_000;

/// A file the server holds, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFile {
    pub job: JobId,
    pub name: String,
    pub node: NodeId,
    pub bytes: u64,
    /// When the server confirmed it (the cap deletes the oldest first).
    pub cached_ms: u64,
    /// When the last of its deliveries arrived, if every destination of its
    /// policy holds it; else `None`.
    pub delivered_ms: Option<u64>,
    /// Its policy's `delete_server_copy_after_h`.
    pub delete_after_h: Option<u32>,
}

/// Why a file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its policy's time after delivery has passed.
    Delivered { after_h: u32 },
    /// The copies take more than the cap.
    OverCap { cap_bytes: u64 },
}

/// What one pass does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indexes into the files, with the reason.
    pub remove: Vec<(usize, Why)>,
    /// Bytes the copies take after the removals.
    pub held_bytes: u64,
    /// Bytes still over the cap after the removals (only undelivered files
    /// are left to delete).
    pub over_cap_bytes: u64,
}

/// Which of `files` go at `now_ms` with the cap `cap_bytes`.
pub fn plan(files: &[HeldFile], now_ms: u64, cap_bytes: Option<u64>) -> Plan {
    let mut remove = Vec::new();
    let mut gone = vec![false; files.len()];
    for (i, f) in files.iter().enumerate() {
        if let (Some(at), Some(after_h)) = (f.delivered_ms, f.delete_after_h)
            && now_ms >= at.saturating_add(u64::from(after_h) * HOUR_MS)
        {
            remove.push((i, Why::Delivered { after_h }));
            gone[i] = true;
        }
    }
    let mut held: u64 = files
        .iter()
        .zip(&gone)
        .filter(|(_, g)| !**g)
        .map(|(f, _)| f.bytes)
        .sum();
    if let Some(cap) = cap_bytes
        && held > cap
    {
        let mut oldest: Vec<usize> = (0..files.len())
            .filter(|&i| !gone[i] && files[i].delivered_ms.is_some())
            .collect();
        oldest.sort_by(|&a, &b| {
            let (a, b) = (&files[a], &files[b]);
            (a.cached_ms, a.job, &a.name).cmp(&(b.cached_ms, b.job, &b.name))
        });
        for i in oldest {
            if held <= cap {
                break;
            }
            remove.push((i, Why::OverCap { cap_bytes: cap }));
            held -= files[i].bytes;
        }
    }
    Plan {
        remove,
        held_bytes: held,
        over_cap_bytes: cap_bytes.map_or(0, |cap| held.saturating_sub(cap)),
    }
}

/// What the runner works with.
#[derive(Clone)]
pub struct ServerRetention {
    pub store: Arc<dyn Store>,
    pub policies: Arc<DeliveryPolicies>,
    pub uploads: Arc<crate::uploads::Uploads>,
    pub clock: Arc<dyn Clock>,
    pub cap_bytes: Option<u64>,
    /// Notified when a delivery arrives (a file may be done).
    pub wake: Arc<tokio::sync::Notify>,
}

/// The files the server holds, with what retention needs of their records.
fn held_files(
    store: &dyn Store,
    policies: &DeliveryPolicies,
) -> rakkr_store::Result<Vec<(HeldFile, UploadRecord, Vec<String>)>> {
    let mut out = Vec::new();
    let mut jobs: std::collections::BTreeMap<JobId, _> = Default::default();
    for upload in store.cached_uploads()? {
        if upload.removed_ms.is_some() {
            continue;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = jobs.entry(upload.job) {
            let found = match store.job(upload.job)? {
                Some(job) => {
                    let policy = crate::delivery::policy_of(store, &job)?;
                    let (_, policy) = policies.for_name(policy.as_deref());
                    Some((policy.clone(), store.deliveries_of_job(upload.job)?))
                }
                None => None,
            };
            slot.insert(found);
        }
        let (delivered_ms, delete_after_h, destinations) = match &jobs[&upload.job] {
            Some((policy, deliveries)) => {
                let arrived: Option<Vec<u64>> = policy
                    .destinations
                    .iter()
                    .map(|d| {
                        deliveries
                            .iter()
                            .find(|x| {
                                x.name == upload.name
                                    && &x.destination == d
                                    && x.state == DeliveryState::Delivered
                            })
                            .and_then(|x| x.delivered_ms)
                    })
                    .collect();
                let delivered = arrived
                    .filter(|a| !a.is_empty())
                    .and_then(|a| a.into_iter().max());
                (
                    delivered,
                    policy.delete_server_copy_after_h,
                    policy.destinations.clone(),
                )
            }
            None => (None, None, Vec::new()),
        };
        out.push((
            HeldFile {
                job: upload.job,
                name: upload.name.clone(),
                node: upload.node.clone(),
                bytes: upload.length,
                cached_ms: upload.updated_ms,
                delivered_ms,
                delete_after_h,
            },
            upload,
            destinations,
        ));
    }
    Ok(out)
}

impl ServerRetention {
    /// Delete one file and keep that it is gone; the audit record's reason.
    fn remove(
        &self,
        mut upload: UploadRecord,
        destinations: &[String],
        why: Why,
        now_ms: u64,
    ) -> Result<String, String> {
        self.uploads
            .remove_copy(&upload.node, upload.job, &upload.name)?;
        upload.removed_ms = Some(now_ms);
        self.store
            .put_upload(&upload)
            .map_err(|e| format!("deleted, not recorded (the next pass will): {e}"))?;
        let held_at = destinations.join(", ");
        Ok(match why {
            Why::Delivered { after_h } => format!(
                "every destination holds it ({held_at}); its upload policy deletes the server's copy {after_h} h after delivery"
            ),
            Why::OverCap { cap_bytes } => format!(
                "the server's copies took more than cache_max_mb ({} MB); oldest delivered first, every destination holds it ({held_at})",
                cap_bytes >> 20
            ),
        })
    }

    /// Delete what deleted recordings still have on the server, in the
    /// cache or in staging (a crash cut their deletion short;
    /// [`crate::deletion`]).
    fn finish_deletions(&self, now_ms: u64) -> rakkr_store::Result<()> {
        let mut jobs: std::collections::BTreeSet<JobId> = self
            .store
            .cached_uploads()?
            .into_iter()
            .filter(|u| u.removed_ms.is_none())
            .map(|u| u.job)
            .collect();
        jobs.extend(self.uploads.staged_jobs());
        for id in jobs {
            let Some(job) = self.store.job(id)?.filter(|j| j.deleted.is_some()) else {
                continue;
            };
            for upload in self.store.uploads_of_job(id)? {
                match crate::deletion::remove_copy(
                    &*self.store,
                    &self.uploads,
                    &job,
                    &upload.name,
                    "runner:retention",
                    now_ms,
                ) {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!(job = %id, file = %upload.name, "a deleted recording's server copy deleted")
                    }
                    Err(e) => {
                        tracing::error!(job = %id, file = %upload.name, error = %e, "a deleted recording's server copy not deleted")
                    }
                }
            }
        }
        Ok(())
    }

    /// One pass (on a blocking thread).
    pub fn pass(&self) {
        let now = self.clock.unix_ms();
        if let Err(e) = self.finish_deletions(now) {
            tracing::error!(error = %e, "server retention: deleted recordings not looked at");
        }
        let files = match held_files(&*self.store, &self.policies) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(error = %e, "server retention: the server's files not read");
                return;
            }
        };
        let held: Vec<HeldFile> = files.iter().map(|(f, _, _)| f.clone()).collect();
        let plan = plan(&held, now, self.cap_bytes);
        let mut held_bytes = plan.held_bytes;
        for &(i, why) in &plan.remove {
            let (file, upload, destinations) = &files[i];
            let done = self.remove(upload.clone(), destinations, why, now);
            let (outcome, reason) = match done {
                Ok(reason) => {
                    tracing::info!(job = %file.job, file = %file.name, bytes = file.bytes, reason = %reason, "server copy deleted");
                    self.uploads
                        .stats
                        .removed_files
                        .fetch_add(1, Ordering::Relaxed);
                    self.uploads
                        .stats
                        .removed_bytes
                        .fetch_add(file.bytes, Ordering::Relaxed);
                    ("allowed", reason)
                }
                Err(e) => {
                    tracing::error!(job = %file.job, file = %file.name, error = %e, "server copy not deleted");
                    held_bytes += file.bytes;
                    ("failed", e)
                }
            };
            crate::audit::record_now(
                &*self.store,
                AuditEntry {
                    at_ms: now,
                    actor: "runner:retention".into(),
                    action: "delete server copy".into(),
                    target: Some(format!("recording:{}/{}", file.job, file.name)),
                    outcome: outcome.into(),
                    reason: Some(reason),
                    before: Some(serde_json::json!({
                        "node": file.node.as_str(),
                        "bytes": file.bytes,
                        "sha256": upload.sha256,
                        "destinations": destinations,
                    })),
                    ..Default::default()
                },
            );
        }
        self.uploads
            .stats
            .held_bytes
            .store(held_bytes, Ordering::Relaxed);
        self.uploads
            .stats
            .over_cap_bytes
            .store(plan.over_cap_bytes, Ordering::Relaxed);
        if plan.over_cap_bytes > 0 {
            tracing::warn!(
                over_bytes = plan.over_cap_bytes,
                "the server's copies exceed cache_max_mb and the rest are not delivered everywhere yet; nothing undelivered is deleted"
            );
        }
    }

    /// Run a pass now, when a delivery arrives (at most one per
    /// [`MIN_GAP`]), and every [`LOOK_EVERY`], until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let this = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || this.pass()).await {
                tracing::error!(error = %e, "server retention pass failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(MIN_GAP) => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u64, bytes: u64, delivered_ms: Option<u64>, after_h: Option<u32>) -> HeldFile {
        HeldFile {
            job: JobId::new(n),
            name: format!("{n}.flac"),
            node: NodeId::new("n1").unwrap(),
            bytes,
            cached_ms: n * 1000,
            delivered_ms,
            delete_after_h: after_h,
        }
    }

    #[test]
    fn a_delivered_file_goes_once_its_policy_s_time_after_delivery_has_passed() {
        let files = [
            file(1, 10, Some(0), Some(0)),
            file(2, 10, Some(0), Some(2)),
            file(3, 10, Some(0), None),
            file(4, 10, None, Some(0)),
        ];
        let at_once = plan(&files, 1, None);
        assert_eq!(at_once.remove, [(0, Why::Delivered { after_h: 0 })]);
        assert_eq!(at_once.held_bytes, 30);
        let later = plan(&files, 2 * HOUR_MS, None);
        assert_eq!(
            later.remove,
            [
                (0, Why::Delivered { after_h: 0 }),
                (1, Why::Delivered { after_h: 2 })
            ]
        );
    }

    #[test]
    fn over_the_cap_the_oldest_delivered_go_first_and_undelivered_never() {
        let cap = Some(25);
        // Oldest first: 1 (undelivered), 2, 3, 4 (delivered), 5 (undelivered).
        let files = [
            file(3, 10, Some(5), None),
            file(1, 10, None, None),
            file(2, 10, Some(5), None),
            file(4, 10, Some(5), None),
            file(5, 10, None, None),
        ];
        let p = plan(&files, 10, cap);
        let over = Why::OverCap { cap_bytes: 25 };
        assert_eq!(p.remove, [(2, over), (0, over), (3, over)]);
        assert_eq!((p.held_bytes, p.over_cap_bytes), (20, 0));
        // Only undelivered ones left over the cap: they stay, the excess is said.
        let p = plan(&files[1..2], 10, Some(5));
        assert_eq!(p.remove, []);
        assert_eq!((p.held_bytes, p.over_cap_bytes), (10, 5));
        // Under the cap nothing goes.
        assert_eq!(plan(&files, 10, Some(50)).remove, []);
    }

    /// A clock the test moves.
    struct ManualClock(std::sync::atomic::AtomicU64);

    impl Clock for ManualClock {
        fn unix_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A runner over a real store and data directory under `dir`, whose
    /// default upload policy is `policy` (TOML), with a copy of `bytes`
    /// bytes of one job's file held and, when `delivered_ms`, delivered to
    /// every destination then.
    fn held_copy(
        dir: &std::path::Path,
        policy: &str,
        cap_bytes: Option<u64>,
        delivered_ms: Option<u64>,
    ) -> (ServerRetention, std::path::PathBuf, Arc<ManualClock>) {
        let store: Arc<dyn Store> =
            Arc::new(rakkr_store::RedbStore::open(&dir.join("s.redb")).unwrap());
        let config: crate::policies::DeliveryConfig =
            toml::from_str(&format!("default = \"p\"\n[policies.p]\n{policy}\n")).unwrap();
        let policies = Arc::new(DeliveryPolicies::from_config(config).unwrap());
        let node = NodeId::new("n1").unwrap();
        let job = store
            .enqueue_job(
                rakkr_store::NewJob::unscheduled(
                    node.clone(),
                    serde_json::from_str("{}").unwrap(),
                    vec![0, 1],
                ),
                1_000,
            )
            .unwrap();
        let name = format!("{}.flac", job.id);
        let uploads = Arc::new(crate::uploads::Uploads::new(dir, 1 << 40));
        let path = uploads.cached(&node, job.id, &name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![7u8; 1_000]).unwrap();
        let upload = UploadRecord {
            job: job.id,
            name: name.clone(),
            node: node.clone(),
            length: 1_000,
            offset: 1_000,
            state: rakkr_store::UploadState::Cached,
            sha256: Some("00".repeat(32)),
            started_ms: 1_000,
            updated_ms: 2_000,
            waveform: None,
            removed_ms: None,
        };
        store.put_upload(&upload).unwrap();
        let mut deliveries = crate::delivery::deliveries_for(&policies, None, &job, &upload, 2_000);
        store.queue_deliveries(&deliveries).unwrap();
        if let Some(at) = delivered_ms {
            for d in &mut deliveries {
                d.state = DeliveryState::Delivered;
                d.delivered_ms = Some(at);
                store.put_delivery(d).unwrap();
            }
        }
        let clock = Arc::new(ManualClock(std::sync::atomic::AtomicU64::new(3_000)));
        let runner = ServerRetention {
            store,
            policies,
            uploads,
            clock: clock.clone(),
            cap_bytes,
            wake: Arc::default(),
        };
        (runner, path, clock)
    }

    /// A deletion a crash cut short (the job marked deleted, nothing else
    /// done) is finished by the next pass: a file whose record still said
    /// `receiving` though a completion had moved it into the cache, and a
    /// part still arriving in staging. Each is audited once.
    #[test]
    fn a_pass_finishes_a_deletion_a_crash_cut_short_in_the_cache_and_in_staging() {
        use rakkr_protocol::job::JobUpdate;
        use rakkr_protocol::state::JobState;
        let dir = tempfile::tempdir().unwrap();
        let (runner, cached, _clock) = held_copy(dir.path(), "destinations = []", None, None);
        let store = runner.store.clone();
        let node = NodeId::new("n1").unwrap();
        let job = store
            .claim_jobs(&node, 1, &[], 1_500, 60_000)
            .unwrap()
            .remove(0);
        let failed = JobUpdate {
            job_id: job.id,
            lease_id: job.lease.unwrap().id,
            state: JobState::Failed,
            at_ms: 1_600,
            detail: String::new(),
            recording: None,
            autonomous: None,
        };
        store
            .apply_job_update(&node, rakkr_protocol::MessageId::new(9), &failed, 1_600)
            .unwrap();
        let mut first = store.uploads_of_job(job.id).unwrap().remove(0);
        first.state = rakkr_store::UploadState::Receiving;
        store.put_upload(&first).unwrap();
        let part = format!("{}.0001.flac", job.id);
        let staged = dir
            .path()
            .join("uploads")
            .join(job.id.to_string())
            .join(&part);
        std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
        std::fs::write(&staged, b"half a file").unwrap();
        store
            .put_upload(&UploadRecord {
                name: part,
                state: rakkr_store::UploadState::Receiving,
                offset: 11,
                sha256: None,
                ..first.clone()
            })
            .unwrap();
        store.delete_job(job.id, "user:olga", "", 2_500).unwrap();

        runner.pass();
        assert!(!cached.exists(), "the copy in the cache is deleted");
        assert!(!staged.exists(), "the part in staging is deleted");
        assert!(
            store
                .uploads_of_job(job.id)
                .unwrap()
                .iter()
                .all(|u| u.removed_ms.is_some())
        );
        let audited = |store: &Arc<dyn Store>| {
            store
                .audit_records(0, 100)
                .unwrap()
                .into_iter()
                .filter(|r| r.entry.action == "delete server copy")
                .map(|r| (r.entry.actor, r.entry.outcome))
                .collect::<Vec<_>>()
        };
        let once = vec![("runner:retention".to_owned(), "allowed".to_owned()); 2];
        assert_eq!(audited(&store), once);
        runner.pass();
        assert_eq!(
            audited(&store),
            once,
            "nothing more to do, nothing more said"
        );
    }

    fn removed(runner: &ServerRetention) -> Vec<Option<u64>> {
        let all = runner.store.cached_uploads().unwrap();
        all.iter().map(|u| u.removed_ms).collect()
    }

    #[test]
    fn a_pass_deletes_a_delivered_copy_only_once_the_policy_s_hours_have_passed() {
        let dir = tempfile::tempdir().unwrap();
        let (runner, path, clock) = held_copy(
            dir.path(),
            "destinations = [\"nas\"]\ndelete_server_copy_after_h = 2",
            None,
            Some(10_000),
        );
        // Just short of two hours after the delivery: kept.
        clock.0.store(10_000 + 2 * HOUR_MS - 1, Ordering::SeqCst);
        runner.pass();
        assert!(path.exists());
        assert_eq!(removed(&runner), [None]);
        // Two hours after it: deleted, recorded, audited with the reason.
        clock.0.store(10_000 + 2 * HOUR_MS, Ordering::SeqCst);
        runner.pass();
        assert!(!path.exists());
        assert_eq!(removed(&runner), [Some(10_000 + 2 * HOUR_MS)]);
        let audit = runner.store.audit_records(0, 10).unwrap();
        let record = &audit
            .iter()
            .find(|r| r.entry.actor == "runner:retention")
            .unwrap()
            .entry;
        assert_eq!(record.action, "delete server copy");
        assert!(
            record
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("2 h after delivery") && r.contains("nas")),
            "{:?}",
            record.reason
        );
        assert_eq!(runner.uploads.stats.removed_files.load(Ordering::SeqCst), 1);
        // A pass later changes nothing.
        runner.pass();
        assert_eq!(runner.uploads.stats.removed_files.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_copy_whose_policy_has_no_destinations_is_never_deleted_even_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (runner, path, clock) = held_copy(dir.path(), "destinations = []", Some(10), None);
        clock.0.store(10 * 8_760 * HOUR_MS, Ordering::SeqCst);
        runner.pass();
        assert!(path.exists(), "the server's copy is the only one");
        assert_eq!(removed(&runner), [None]);
        assert_eq!(
            runner.uploads.stats.over_cap_bytes.load(Ordering::SeqCst),
            1_000 - 10
        );
    }

    #[test]
    fn a_file_its_policy_deletes_counts_before_the_cap_is_applied() {
        let files = [file(1, 10, Some(0), Some(0)), file(2, 10, Some(0), None)];
        let p = plan(&files, 1, Some(10));
        assert_eq!(p.remove, [(0, Why::Delivered { after_h: 0 })]);
        assert_eq!(p.held_bytes, 10);
    }
}
