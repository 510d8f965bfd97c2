//! S3 deliveries that start while a file still arrives (decision 0017).
//!
//! Without this, a file's way to a bucket is three steps one after the
//! other: the node sends it, the server verifies it, the delivery runner
//! copies it. Here, when the first chunk of an upload larger than one part
//! ([`CHUNK_BYTES`]) arrives and the recording's upload policy names S3
//! destinations, an early copy per such destination opens a multipart
//! upload and sends each part as soon as the server holds it durably. The
//! parts travel while the rest of the file arrives and is verified.
//!
//! Invariants:
//! - An early copy never completes its upload on its own. Only the delivery
//!   runner completes it, and the runner sees a delivery only once the file
//!   is verified and confirmed; then the size at the destination is checked
//!   as for any delivery. So a bucket never shows a file the server did not
//!   verify.
//! - Parts are read from the staged file below its durable offset: the
//!   bytes the verification reads. An upload that is discarded (a wrong
//!   digest, a file that does not decode) aborts its early copies.
//! - The runner takes an early copy only for the destination as it was when
//!   the copy began (same settings and secret) and the same object path.
//!   Anything else (a changed destination, a failed part, no new byte for
//!   [`IDLE`], no confirmation within [`CONFIRM_WAIT`], a server restart)
//!   ends the copy and the runner copies from the cache as it always did; a
//!   copy that ended is not started again for that file in this process. An
//!   ended copy aborts its multipart upload, and so does every copy the
//!   server still holds when it stops ([`EarlyCopies::close`]); a crash, or
//!   a stop while the runner completes one, can leave one behind (a bucket's lifecycle rule for incomplete multipart
//!   uploads removes those; docs/operations.md).
//! - Bounded: at most [`MAX_EARLY`] copies at once, each with at most two
//!   parts in flight.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt as _};
use rakkr_protocol::JobId;
use rakkr_store::{DestinationRecord, DestinationSpec, JobRecord};
use tokio::sync::{oneshot, watch};

use crate::delivery::CHUNK_BYTES;
use crate::http::AppState;

/// Early copies at once.
pub const MAX_EARLY: usize = 4;
/// Arriving files remembered (each looked up once per process).
const MAX_FILES: usize = 4_096;
/// How long a copy waits for the next part's bytes before it ends.
pub const IDLE: Duration = Duration::from_secs(300);
/// How long a copy that sent every part waits for the runner.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(1_800);

/// How much of an upload the server holds durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrived {
    UpTo(u64),
    Discarded,
}

/// A copy under way: what it was started for, and how to finish it.
struct Copy {
    destination: DestinationRecord,
    path: ObjectPath,
    go: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

type FileKey = (JobId, String);

/// The early copies of the files arriving now.
#[derive(Default)]
pub struct EarlyCopies {
    /// Files with early copies, and how much of each the server holds.
    arriving: Mutex<HashMap<FileKey, watch::Sender<Arrived>>>,
    /// Copies by file and destination, until the runner takes them.
    copies: Mutex<HashMap<(FileKey, String), Copy>>,
    /// The server is stopping: no copy starts.
    closed: std::sync::atomic::AtomicBool,
}

impl EarlyCopies {
    fn arriving(&self) -> std::sync::MutexGuard<'_, HashMap<FileKey, watch::Sender<Arrived>>> {
        self.arriving.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn copies(&self) -> std::sync::MutexGuard<'_, HashMap<(FileKey, String), Copy>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upload is discarded: its copies abort.
    pub fn discard(&self, job: JobId, name: &str) {
        let key = (job, name.to_owned());
        if let Some(tx) = self.arriving().remove(&key) {
            tx.send_replace(Arrived::Discarded);
        }
        // Dropping a copy's `go` ends its wait; its task aborts the upload.
        self.copies().retain(|(file, _), _| file != &key);
    }

    /// The upload is complete: nothing more arrives (its copies hold every
    /// byte's progress already).
    pub fn arrived(&self, job: JobId, name: &str) {
        self.arriving().remove(&(job, name.to_owned()));
        // Copies that ended unclaimed (failed) free their place.
        self.copies().retain(|_, c| !c.task.is_finished());
    }

    /// The server stops: every copy aborts its multipart upload (waiting at
    /// most `within` for them), so a clean stop leaves nothing behind.
    pub async fn close(&self, within: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        for (_, tx) in self.arriving().drain() {
            tx.send_replace(Arrived::Discarded);
        }
        let copies: Vec<Copy> = self.copies().drain().map(|(_, c)| c).collect();
        let aborting = copies.into_iter().map(|c| {
            drop(c.go);
            c.task
        });
        let all = futures_util::future::join_all(aborting);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!(
                "early S3 copies still aborting at shutdown; the bucket's lifecycle rule removes what they leave"
            );
        }
    }

    /// The runner's delivery of `name` of `job` to `destination` (as it is
    /// now) at `path`: the early copy for exactly that, to finish, if any.
    pub fn claim(
        &self,
        job: JobId,
        name: &str,
        destination: &DestinationRecord,
        path: &ObjectPath,
    ) -> Option<Claimed> {
        let copy = self
            .copies()
            .remove(&((job, name.to_owned()), destination.name.clone()))?;
        let same = copy.destination.spec == destination.spec
            && copy.destination.sealed_secret == destination.sealed_secret
            && &copy.path == path;
        same.then_some(Claimed { copy })
    }
}

/// An early copy the runner took.
pub struct Claimed {
    copy: Copy,
}

impl Claimed {
    /// Complete the upload (the file is verified) and check it.
    pub async fn finish(self) -> Result<(), String> {
        let Copy { go, task, .. } = self.copy;
        let _ = go.send(());
        task.await
            .map_err(|e| format!("the early copy's task failed: {e}"))?
    }
}

/// After a chunk of `job`'s `name` (`length` bytes, staged at `staged`) is
/// durable up to `durable`: tell its copies, or, at the first chunk this
/// server sees, start a copy to each S3 destination of the recording's
/// policy. Runs on a blocking thread inside the runtime.
pub fn chunk_arrived(
    state: &AppState,
    job: &JobRecord,
    name: &str,
    staged: &Path,
    durable: u64,
    length: u64,
) {
    let early = &state.uploads.early;
    let key = (job.id, name.to_owned());
    {
        let mut arriving = early.arriving();
        if let Some(tx) = arriving.get(&key) {
            // Seen before in this process: its copies (if any) read on. Copies
            // that ended are not started again; the runner copies the file
            // from the cache once it is verified.
            tx.send_replace(Arrived::UpTo(durable));
            return;
        }
        if arriving.len() >= MAX_FILES {
            arriving.retain(|_, tx| tx.receiver_count() > 0);
        }
        if arriving.len() >= MAX_FILES || early.closed.load(Ordering::SeqCst) {
            return;
        }
    }
    let (tx, _) = watch::channel(Arrived::UpTo(durable));
    if length <= CHUNK_BYTES as u64 {
        return;
    }
    let mut started = 0;
    for (destination, path) in s3_destinations(state, job, name) {
        let mut copies = early.copies();
        copies.retain(|_, c| !c.task.is_finished());
        if copies.len() >= MAX_EARLY {
            break;
        }
        let Ok(file) = std::fs::File::open(staged) else {
            break;
        };
        let os = match crate::destinations::open(&state.secrets, &destination) {
            Ok(crate::destinations::Opened::Objects(os)) => os,
            Ok(crate::destinations::Opened::Smb(_)) => continue,
            Err(e) => {
                tracing::warn!(destination = %destination.name, error = %e, "no early copy: the destination does not open");
                continue;
            }
        };
        let (go, went) = oneshot::channel();
        let task = tokio::spawn(copy_while_arriving(
            os,
            path.clone(),
            file,
            length,
            tx.subscribe(),
            went,
        ));
        started += 1;
        copies.insert(
            (key.clone(), destination.name.clone()),
            Copy {
                destination,
                path,
                go,
                task,
            },
        );
    }
    state
        .uploads
        .stats
        .early_copies_started
        .fetch_add(started, Ordering::Relaxed);
    early.arriving().insert(key, tx);
}

/// The S3 destinations `name` of `job` goes to, with its object path there.
fn s3_destinations(
    state: &AppState,
    job: &JobRecord,
    name: &str,
) -> Vec<(DestinationRecord, ObjectPath)> {
    let Ok(policy) = crate::delivery::policy_of(&*state.store, job) else {
        return Vec::new();
    };
    let (_, policy) = state.delivery_policies.for_name(policy.as_deref());
    if policy.destinations.is_empty() {
        return Vec::new();
    }
    let Ok(all) = state.store.destinations() else {
        return Vec::new();
    };
    let key = crate::delivery::object_key(job, name);
    all.into_iter()
        .filter(|d| policy.destinations.contains(&d.name))
        .filter(|d| matches!(d.spec, DestinationSpec::S3 { .. }))
        .filter_map(|d| {
            let path = crate::delivery::object_path(crate::destinations::key_prefix(&d.spec), &key)
                .ok()?;
            Some((d, path))
        })
        .collect()
}

/// Send `file` (`length` bytes) to `path` part by part as `arrived` says
/// its bytes are durable; complete when `go` comes, abort otherwise.
async fn copy_while_arriving(
    os: Arc<dyn ObjectStore>,
    path: ObjectPath,
    file: std::fs::File,
    length: u64,
    arrived: watch::Receiver<Arrived>,
    go: oneshot::Receiver<()>,
) -> Result<(), String> {
    let copied = async {
        let mut upload = os.put_multipart(&path).await.map_err(|e| e.to_string())?;
        let sent = match send_parts(&mut *upload, file, length, arrived, go).await {
            Ok(()) => upload
                .complete()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            if let Err(abort) = upload.abort().await {
                tracing::warn!(path = %path, error = %abort, "an early copy's multipart upload not aborted; the bucket's lifecycle rule removes it");
            }
            return Err(e);
        }
        Ok(())
    };
    if let Err(e) = copied.await {
        tracing::info!(path = %path, error = %e, "early copy ended; the delivery copies from the server's copy");
        return Err(e);
    }
    crate::delivery::check_size(&*os, &path, length).await
}

/// Parts being sent, oldest first; those left when it is dropped (a failure)
/// are cancelled.
#[derive(Default)]
struct InFlight(std::collections::VecDeque<tokio::task::JoinHandle<object_store::Result<()>>>);

impl InFlight {
    /// Wait for the oldest part to arrive.
    async fn oldest(&mut self) -> Result<(), String> {
        match self.0.pop_front() {
            Some(part) => part
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for part in &self.0 {
            part.abort();
        }
    }
}

async fn send_parts(
    upload: &mut dyn MultipartUpload,
    file: std::fs::File,
    length: u64,
    mut arrived: watch::Receiver<Arrived>,
    go: oneshot::Receiver<()>,
) -> Result<(), String> {
    let file = Arc::new(file);
    // Parts go on tasks of their own, so they travel while this waits for
    // the next part's bytes (a part's future does nothing until polled).
    let mut in_flight = InFlight::default();
    let mut sent = 0u64;
    while sent < length {
        let end = (sent + CHUNK_BYTES as u64).min(length);
        let held = tokio::time::timeout(
            IDLE,
            arrived.wait_for(|a| match *a {
                Arrived::UpTo(d) => d >= end,
                Arrived::Discarded => true,
            }),
        )
        .await
        .map(|waited| waited.map(|a| *a));
        // The sender goes at a completion (every byte held) or a discard.
        let now = *arrived.borrow();
        match held {
            Err(_) => return Err(format!("no new byte for {IDLE:?}")),
            Ok(Ok(Arrived::Discarded)) => return Err("the upload was discarded".into()),
            Ok(Ok(_)) => {}
            Ok(Err(_)) if now == Arrived::UpTo(length) => {}
            Ok(Err(_)) => return Err("the upload ended before this part arrived".into()),
        }
        let reading = file.clone();
        let part = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt as _;
            let mut buf = vec![0u8; (end - sent) as usize];
            reading.read_exact_at(&mut buf, sent).map(|()| buf)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the staged file: {e}"))?;
        if in_flight.0.len() >= 2 {
            in_flight.oldest().await?;
        }
        in_flight
            .0
            .push_back(tokio::spawn(upload.put_part(part.into())));
        sent = end;
    }
    while !in_flight.0.is_empty() {
        in_flight.oldest().await?;
    }
    match tokio::time::timeout(CONFIRM_WAIT, go).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("the upload was discarded".into()),
        Err(_) => Err(format!("no confirmation within {CONFIRM_WAIT:?}")),
    }
}
