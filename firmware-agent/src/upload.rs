//! Sending finished takes to the fleet server (decision 0016).
//!
//! Every file of a finished take is queued in the state database (outbox
//! table `uploads`) in the transaction that keeps the take's final report
//! ([`QueuedFile`]). This task works through the queue, oldest job first:
//! `HEAD` asks the server how much it holds; chunks go from there with their
//! checksum (`PATCH`), and the file's SHA-256 is carried on as they go (the
//! part the server already holds is read again first), kept once whole; once
//! all are there, `POST …/complete` makes the server verify the whole file.
//! Only when its confirmation (same size, same SHA-256) has been recorded
//! is the file deleted (`delete_confirmed`). A failure backs off per file
//! (1 s doubling to 5 min); a refusal (4xx other than a conflict over the
//! offset) is logged and retried after the longest back-off, so a fault on
//! the server's side heals without people and the file is never lost.
//!
//! The task reads files with a bounded buffer (one chunk) on blocking
//! threads; it shares nothing with the capture path.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rakkr_protocol::JobId;
use rakkr_protocol::payload::{HealthChange, HealthCondition};
use rakkr_protocol::upload::{
    CHECKSUM_MISMATCH, CompleteUpload, OFFSET_OCTET_STREAM, UPLOAD_CHECKSUM, UPLOAD_LENGTH,
    UPLOAD_OFFSET, UploadConfirmation, checksum_header, complete_path, file_path,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::UploadSettings;
use crate::outbox::Outbox;

/// The slowest pace at which the server is expected to verify a file.
const VERIFY_BYTES_PER_S: u64 = 20 << 20;
/// What a request body is handed to the connection in.
const BODY_PIECE: usize = 64 << 10;

/// Send `request` (with `body`), giving it up once the connection has taken
/// no byte of the body and no answer has come for `stall`. A cut link (a
/// pulled cable, a dead modem) sends no reset, so without this a request
/// would wait for TCP to give up, which takes many minutes; a slow link
/// still moves bytes, so it is never cut short.
pub async fn send_watched(
    request: reqwest::RequestBuilder,
    body: Option<bytes::Bytes>,
    stall: Duration,
) -> Result<reqwest::Response, String> {
    let start = tokio::time::Instant::now();
    // When the connection last took a piece of the body, in ms after `start`.
    let moved_ms = Arc::new(AtomicU64::new(0));
    let request =
        match body {
            None => request,
            Some(body) => {
                let moved = moved_ms.clone();
                let len = body.len();
                let pieces = (0..len).step_by(BODY_PIECE).map(move |at| {
                    let piece = body.slice(at..(at + BODY_PIECE).min(len));
                    moved.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                    Ok::<_, std::io::Error>(piece)
                });
                request.header(reqwest::header::CONTENT_LENGTH, len).body(
                    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)),
                )
            }
        };
    let send = request.send();
    tokio::pin!(send);
    loop {
        let silent_until = start + Duration::from_millis(moved_ms.load(Ordering::Relaxed)) + stall;
        tokio::select! {
            answer = &mut send => return answer.map_err(|e| e.to_string()),
            _ = tokio::time::sleep_until(silent_until) => {
                let last = start + Duration::from_millis(moved_ms.load(Ordering::Relaxed));
                if last + stall <= tokio::time::Instant::now() {
                    return Err(format!(
                        "no byte moved and no answer for {} s (the link looks cut); resuming on a new connection",
                        stall.as_secs()
                    ));
                }
            }
        }
    }
}

/// A file on the upload queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedFile {
    pub bytes: u64,
    /// SHA-256 of the file (hex), once computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The server confirmed it holds the file, verified.
    #[serde(default)]
    pub confirmed: bool,
    pub queued_ms: u64,
}

/// What the uploader has done, for status and telemetry.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub files_confirmed: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub failures: AtomicU64,
    /// Files on the queue, not yet confirmed.
    pub queued: AtomicU64,
    /// Their size in bytes.
    pub queued_bytes: AtomicU64,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const LAST_BACKOFF: Duration = Duration::from_secs(300);
/// An idle uploader looks at its queue at least this often.
const IDLE_LOOK: Duration = Duration::from_secs(30);

/// Why a file did not get through this time.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    /// The network or the server failed: try again soon.
    #[error("{0}")]
    Retry(String),
    /// The server refused the request: try again much later.
    #[error("refused: {0}")]
    Refused(String),
    /// The file is gone from the appliance.
    #[error("{0}")]
    Missing(String),
    /// The upload window closed between chunks: the file resumes from the
    /// server's offset when the next one opens.
    #[error("the upload window closed")]
    WindowClosed,
    /// The server answered 410: an operator deleted the recording. The file
    /// leaves the queue; the server's order to delete the take removes it.
    #[error("{0}")]
    Deleted(String),
}

fn retry(e: impl std::fmt::Display) -> UploadError {
    UploadError::Retry(e.to_string())
}

/// When failing uploads become a health issue (`upload_failing`): retryable
/// failures once nothing got through for `alert_after` (node-wide, cleared by
/// the next confirmation); a refusal at once, for its file (cleared when that
/// file is confirmed after all).
#[derive(Debug)]
pub struct FailureWatch {
    alert_after_ms: u64,
    /// Since when every attempt failed (None: the last one got through).
    failing_since_ms: Option<u64>,
    raised: bool,
    /// Files the server refused, raised.
    refused: std::collections::BTreeSet<String>,
}

impl FailureWatch {
    pub fn new(alert_after: Duration) -> FailureWatch {
        FailureWatch {
            alert_after_ms: alert_after.as_millis() as u64,
            failing_since_ms: None,
            raised: false,
            refused: Default::default(),
        }
    }

    /// What was open before a restart (subjects of `upload_failing`), so
    /// it can be cleared.
    pub fn assume_raised(&mut self, subject: &str) {
        match subject.strip_prefix("file:") {
            Some(name) => {
                self.refused.insert(name.to_owned());
            }
            None => self.raised = true,
        }
    }

    /// An attempt for `name` failed at `now_ms` (`refused`: the server said no).
    pub fn failed(
        &mut self,
        name: &str,
        refused: bool,
        why: &str,
        now_ms: u64,
    ) -> Option<rakkr_protocol::payload::HealthEvent> {
        if refused {
            return self.refused.insert(name.to_owned()).then(|| {
                failing_event(
                    HealthChange::Raised,
                    format!("file:{name}"),
                    format!("the server refused {name}: {why}; it stays on the appliance"),
                    now_ms,
                )
            });
        }
        let since = *self.failing_since_ms.get_or_insert(now_ms);
        if self.raised || now_ms.saturating_sub(since) < self.alert_after_ms {
            return None;
        }
        self.raised = true;
        Some(failing_event(
            HealthChange::Raised,
            String::new(),
            format!(
                "no upload got through for {} s; last: {why}; takes wait on the appliance",
                now_ms.saturating_sub(since) / 1000
            ),
            now_ms,
        ))
    }

    /// No upload window is open: time without one is not time failing.
    pub fn window_closed(&mut self) {
        self.failing_since_ms = None;
    }

    /// The server deleted `name`'s recording: a refusal raised for it is
    /// cleared (the server reached, the file is not wanted).
    pub fn deleted(
        &mut self,
        name: &str,
        now_ms: u64,
    ) -> Option<rakkr_protocol::payload::HealthEvent> {
        self.refused.remove(name).then(|| {
            failing_event(
                HealthChange::Cleared,
                format!("file:{name}"),
                format!("the recording of {name} was deleted on the server"),
                now_ms,
            )
        })
    }

    /// `name` was confirmed at `now_ms`: what this clears.
    pub fn confirmed(
        &mut self,
        name: &str,
        now_ms: u64,
    ) -> Vec<rakkr_protocol::payload::HealthEvent> {
        self.failing_since_ms = None;
        let mut out = Vec::new();
        if std::mem::take(&mut self.raised) {
            out.push(failing_event(
                HealthChange::Cleared,
                String::new(),
                "uploads get through again".into(),
                now_ms,
            ));
        }
        if self.refused.remove(name) {
            out.push(failing_event(
                HealthChange::Cleared,
                format!("file:{name}"),
                format!("{name} was uploaded and confirmed"),
                now_ms,
            ));
        }
        out
    }
}

fn failing_event(
    change: HealthChange,
    subject: String,
    detail: String,
    at_ms: u64,
) -> rakkr_protocol::payload::HealthEvent {
    rakkr_protocol::payload::HealthEvent {
        condition: rakkr_protocol::payload::HealthCondition::UploadFailing,
        change,
        severity: rakkr_protocol::payload::Severity::Warning,
        at_ms,
        detail,
        subject,
    }
}

/// Where the uploader's health events go.
pub struct EventSink {
    pub ready: Arc<Notify>,
    pub telemetry: Arc<crate::link::TelemetryStats>,
    pub clock: Arc<dyn crate::clock::Clock>,
}

/// Who the node is and how to reach the server.
pub struct Uploader {
    pub settings: UploadSettings,
    pub node: String,
    pub credential: String,
    pub recordings_dir: PathBuf,
    pub outbox: Arc<Outbox>,
    /// Woken when a take's files are queued.
    pub wake: Arc<Notify>,
    pub stats: Arc<UploadStats>,
    /// The retention rules in force (whether a confirmed file goes at once).
    pub retention: tokio::sync::watch::Receiver<crate::retention::RetentionRules>,
    pub events: EventSink,
}

/// One file's back-off: doubling from [`FIRST_BACKOFF`] to [`LAST_BACKOFF`]
/// while attempts fail without moving a byte. An attempt that moved bytes
/// before it failed (a link that keeps dropping but works between drops)
/// starts the doubling over, so a long take on a flaky link is not left
/// waiting minutes between attempts that each get somewhere.
#[derive(Debug)]
struct Backoff {
    until: Instant,
    next: Duration,
}

impl Backoff {
    fn new(now: Instant) -> Backoff {
        Backoff {
            until: now,
            next: FIRST_BACKOFF,
        }
    }

    /// The wait (before jitter) after a failed attempt, which the server
    /// `refused` or not, having `progressed` (moved bytes) or not.
    fn after_failure(&mut self, refused: bool, progressed: bool) -> Duration {
        if refused {
            return LAST_BACKOFF;
        }
        if progressed {
            self.next = FIRST_BACKOFF;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(LAST_BACKOFF);
        wait
    }
}

/// The TLS setup for requests to the fleet server: trusting only the fleet CA in
/// `ca_file` (none: plain HTTP on loopback).
pub(crate) fn server_tls(
    ca_file: Option<&std::path::Path>,
) -> Result<Option<rakkr_mqtt::rustls::ClientConfig>, String> {
    let Some(ca) = ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read the CA {}: {e}", ca.display()))?;
    let tls = rakkr_mqtt::tls_trusting(&pem).map_err(|e| e.to_string())?;
    Ok(Some((*tls).clone()))
}

impl Uploader {
    fn client(&self) -> Result<reqwest::Client, String> {
        // No total timeout: a chunk on a slow link may rightly take minutes.
        // Each request is watched for stalls instead ([`send_watched`]).
        let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        let builder = match server_tls(self.settings.ca_file.as_deref())? {
            Some(tls) => builder.use_preconfigured_tls(tls),
            None => builder,
        };
        builder.build().map_err(|e| e.to_string())
    }

    /// Run until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "uploads are off: no HTTP client");
                return;
            }
        };
        let mut backoff: HashMap<(u128, String), Backoff> = HashMap::new();
        let mut watch = FailureWatch::new(self.settings.alert_after);
        let mut waiting_for_window = false;
        let open = {
            let outbox = self.outbox.clone();
            tokio::task::spawn_blocking(move || outbox.open_conditions()).await
        };
        if let Ok(Ok(open)) = open {
            let name = HealthCondition::UploadFailing.as_str();
            for (key, _) in open {
                match key.split_once('|') {
                    Some((c, subject)) if c == name => watch.assume_raised(subject),
                    None if key == name => watch.assume_raised(""),
                    _ => {}
                }
            }
        }
        loop {
            let queue = self.pending().await;
            self.stats
                .queued
                .store(queue.len() as u64, Ordering::Relaxed);
            self.stats.queued_bytes.store(
                queue.iter().map(|(_, _, f)| f.bytes).sum(),
                Ordering::Relaxed,
            );
            let now_ms = self.events.clock.unix_ms();
            let opens_ms = self.settings.windows.opens_at(now_ms);
            if opens_ms > now_ms {
                if !queue.is_empty() && !waiting_for_window {
                    tracing::info!(
                        windows = %self.settings.windows.describe(),
                        opens_in_s = (opens_ms - now_ms) / 1000,
                        files = queue.len(),
                        "uploads wait for their window"
                    );
                    waiting_for_window = true;
                }
                watch.window_closed();
                // Looked at again at least every IDLE_LOOK (the clock may be
                // set) and when a take is queued (the queue's size is news).
                let wait = Duration::from_millis(opens_ms - now_ms).min(IDLE_LOOK);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            if std::mem::take(&mut waiting_for_window) {
                tracing::info!("the upload window opened");
            }
            let now = Instant::now();
            let due = queue
                .iter()
                .find(|(job, name, _)| {
                    backoff
                        .get(&(*job, name.clone()))
                        .is_none_or(|b| b.until <= now)
                })
                .cloned();
            let Some((job, name, entry)) = due else {
                let wait = backoff
                    .values()
                    .map(|b| b.until.saturating_duration_since(now))
                    .min()
                    .unwrap_or(IDLE_LOOK)
                    .min(IDLE_LOOK);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            };
            let key = (job, name.clone());
            let sent_before = self.stats.bytes_sent.load(Ordering::Relaxed);
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.send(&client, JobId::from_u128(job), &name, entry, &shutdown) => r,
            };
            let now_ms = self.events.clock.unix_ms();
            match result {
                Ok(()) => {
                    backoff.remove(&key);
                    for event in watch.confirmed(&name, now_ms) {
                        self.tell(event).await;
                    }
                }
                Err(UploadError::WindowClosed) => {
                    tracing::info!(file = %name, "the upload window closed; the file resumes when the next one opens");
                }
                Err(UploadError::Deleted(why)) => {
                    tracing::info!(file = %name, %why, "the server deleted this recording: the file leaves the upload queue, and the take is deleted when the server's order arrives");
                    self.set(job, &name, None).await;
                    backoff.remove(&key);
                    if let Some(event) = watch.deleted(&name, now_ms) {
                        self.tell(event).await;
                    }
                }
                Err(UploadError::Missing(why)) => {
                    tracing::error!(file = %name, %why, "a queued take file is gone; taken off the queue");
                    self.set(job, &name, None).await;
                    backoff.remove(&key);
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let refused = matches!(e, UploadError::Refused(_));
                    if let Some(event) = watch.failed(&name, refused, &e.to_string(), now_ms) {
                        self.tell(event).await;
                    }
                    let progressed = self.stats.bytes_sent.load(Ordering::Relaxed) != sent_before;
                    let b = backoff.entry(key).or_insert_with(|| Backoff::new(now));
                    let wait = b.after_failure(refused, progressed);
                    // Jitter: nodes cut off together do not return together.
                    let jitter = Duration::from_millis(
                        u64::from(rand_jitter()) % (wait.as_millis() as u64 / 4 + 1),
                    );
                    b.until = Instant::now() + wait + jitter;
                    tracing::warn!(file = %name, error = %e, retry_in_s = (wait + jitter).as_secs(), "upload failed; will retry");
                }
            }
        }
    }

    async fn tell(&self, event: rakkr_protocol::payload::HealthEvent) {
        tracing::warn!(condition = event.condition.as_str(), subject = %event.subject, detail = %event.detail, change = ?event.change, "uploads");
        crate::run::keep_health_event(
            &self.outbox,
            &self.events.ready,
            &self.events.telemetry,
            self.events.clock.unix_ms(),
            event,
        )
        .await;
    }

    /// The files not confirmed yet, oldest job first.
    async fn pending(&self) -> Vec<(u128, String, QueuedFile)> {
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.uploads()).await {
            Ok(Ok(all)) => all
                .into_iter()
                .filter_map(|(job, name, bytes)| {
                    let entry: QueuedFile = serde_json::from_slice(&bytes).ok()?;
                    (!entry.confirmed).then_some((job, name, entry))
                })
                .collect(),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the upload queue");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    async fn set(&self, job: u128, name: &str, entry: Option<&QueuedFile>) {
        let outbox = self.outbox.clone();
        let name = name.to_owned();
        let bytes = entry.map(|e| serde_json::to_vec(e).expect("queue entries serialise"));
        let kept =
            tokio::task::spawn_blocking(move || outbox.set_upload(job, &name, bytes.as_deref()))
                .await;
        if !matches!(kept, Ok(Ok(()))) {
            tracing::error!("cannot update the upload queue");
        }
    }

    /// Send one file to the end and record the confirmation.
    async fn send(
        &self,
        client: &reqwest::Client,
        job: JobId,
        name: &str,
        mut entry: QueuedFile,
        shutdown: &CancellationToken,
    ) -> Result<(), UploadError> {
        let path = self.recordings_dir.join(name);
        let missing = |e: std::io::Error| UploadError::Missing(format!("{}: {e}", path.display()));
        // The file's SHA-256 is computed as its chunks go out (no pass over
        // the file before the first byte); once known, it is kept.
        if entry.sha256.is_none() {
            let bytes = tokio::fs::metadata(&path).await.map_err(missing)?.len();
            if bytes != entry.bytes {
                entry.bytes = bytes;
                self.set(job.as_u128(), name, Some(&entry)).await;
            }
        }
        let url = format!("{}{}", self.settings.server, file_path(job, name));
        let auth = |r: reqwest::RequestBuilder| r.basic_auth(&self.node, Some(&self.credential));
        let stall = self.settings.stall_timeout;
        let head = send_watched(auth(client.head(&url)), None, stall)
            .await
            .map_err(retry)?;
        let mut offset = match head.status().as_u16() {
            200 => offset_of(&head).ok_or_else(|| retry("no Upload-Offset in the answer"))?,
            s if s >= 500 => return Err(retry(format!("the server answered {s}"))),
            _ => return Err(refused(head).await),
        };
        // SHA-256 of the bytes before `offset`, while the whole is not known.
        let mut running = match entry.sha256 {
            Some(_) => None,
            None => Some(hash_prefix(&path, offset).await.map_err(missing)?),
        };
        let mut mismatches = 0;
        while offset < entry.bytes {
            if shutdown.is_cancelled() {
                return Err(retry("shutting down"));
            }
            if !self.settings.windows.is_open(self.events.clock.unix_ms()) {
                return Err(UploadError::WindowClosed);
            }
            let started = Instant::now();
            let (p, at, len, before) = (
                path.clone(),
                offset,
                self.settings.chunk_bytes,
                running.clone(),
            );
            let (chunk, after) = tokio::task::spawn_blocking(move || {
                let chunk = read_chunk(&p, at, len)?;
                let after = before.map(|mut h| {
                    sha2::Digest::update(&mut h, &chunk);
                    h
                });
                Ok::<_, std::io::Error>((chunk, after))
            })
            .await
            .map_err(retry)?
            .map_err(missing)?;
            if chunk.is_empty() {
                return Err(UploadError::Missing(format!(
                    "{} is shorter than the {} bytes queued",
                    path.display(),
                    entry.bytes
                )));
            }
            let sent = chunk.len() as u64;
            let request = auth(client.patch(&url))
                .header(UPLOAD_OFFSET, offset)
                .header(UPLOAD_LENGTH, entry.bytes)
                .header(UPLOAD_CHECKSUM, checksum_header(&chunk))
                .header(reqwest::header::CONTENT_TYPE, OFFSET_OCTET_STREAM);
            let answer = send_watched(request, Some(chunk.into()), stall)
                .await
                .map_err(retry)?;
            let resume_at = match answer.status().as_u16() {
                204 => {
                    self.stats.bytes_sent.fetch_add(sent, Ordering::Relaxed);
                    offset_of(&answer).unwrap_or(offset + sent)
                }
                409 => match offset_of(&answer) {
                    // Resume where the server stands.
                    Some(held) => held,
                    None => return Err(refused(answer).await),
                },
                CHECKSUM_MISMATCH if mismatches < 3 => {
                    mismatches += 1;
                    offset
                }
                s if s >= 500 || s == CHECKSUM_MISMATCH => {
                    return Err(retry(format!("the server answered {s}")));
                }
                _ => return Err(refused(answer).await),
            };
            if running.is_some() && resume_at != offset {
                running = if resume_at == offset + sent {
                    after
                } else {
                    Some(hash_prefix(&path, resume_at).await.map_err(missing)?)
                };
            }
            offset = resume_at;
            self.pace(sent, started, shutdown).await;
        }
        let sha256 = match running {
            Some(h) => {
                let whole = hex_of(h);
                entry.sha256 = Some(whole.clone());
                self.set(job.as_u128(), name, Some(&entry)).await;
                whole
            }
            None => entry.sha256.clone().unwrap_or_default(),
        };
        // The server reads the whole file before it answers: allow for that
        // at a slow disk's pace on top of the stall limit.
        let verify = stall + Duration::from_secs(entry.bytes / VERIFY_BYTES_PER_S);
        let done = send_watched(
            auth(client.post(format!(
                "{}{}",
                self.settings.server,
                complete_path(job, name)
            )))
            .json(&CompleteUpload {
                sha256: sha256.clone(),
            }),
            None,
            verify,
        )
        .await
        .map_err(retry)?;
        match done.status().as_u16() {
            200 => {}
            // Not all there, or discarded: the next round resumes from its offset.
            409 => return Err(retry(refused(done).await)),
            s if s >= 500 => return Err(retry(format!("the server answered {s}"))),
            _ => return Err(refused(done).await),
        }
        let confirmation: UploadConfirmation = done.json().await.map_err(retry)?;
        if confirmation.bytes != entry.bytes || !confirmation.sha256.eq_ignore_ascii_case(&sha256) {
            return Err(UploadError::Refused(format!(
                "the server confirmed {} bytes with SHA-256 {}, not {} with {sha256}",
                confirmation.bytes, confirmation.sha256, entry.bytes
            )));
        }
        // The confirmation is durable before the file may go.
        entry.confirmed = true;
        self.set(job.as_u128(), name, Some(&entry)).await;
        self.stats.files_confirmed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(job = %job, file = name, bytes = entry.bytes, "take file uploaded and confirmed");
        if self.retention.borrow().delete_confirmed {
            match std::fs::remove_file(&path) {
                // Gone already: retention (which applies the same policy) was first.
                Ok(()) => self.set(job.as_u128(), name, None).await,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.set(job.as_u128(), name, None).await
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot delete the confirmed file")
                }
            }
        }
        Ok(())
    }

    /// Keep to the bandwidth cap: a chunk of `sent` bytes takes at least
    /// `sent / max_bytes_per_s`.
    async fn pace(&self, sent: u64, started: Instant, shutdown: &CancellationToken) {
        let rate = self.settings.max_bytes_per_s;
        if rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        let wait = due.saturating_sub(started.elapsed());
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A small pseudo-random number for jitter (no cryptographic need).
fn rand_jitter() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

fn offset_of(r: &reqwest::Response) -> Option<u64> {
    r.headers().get(UPLOAD_OFFSET)?.to_str().ok()?.parse().ok()
}

/// A refusal with the server's reason (410: the recording was deleted).
async fn refused(r: reqwest::Response) -> UploadError {
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let why = format!(
        "{status}: {}",
        body["detail"].as_str().unwrap_or("no reason given")
    );
    if status == reqwest::StatusCode::GONE {
        UploadError::Deleted(why)
    } else {
        UploadError::Refused(why)
    }
}

/// SHA-256 (hex) and length of the file at `path`.
/// SHA-256 of the first `upto` bytes of `path` (on a blocking thread).
async fn hash_prefix(path: &Path, upto: u64) -> std::io::Result<sha2::Sha256> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let mut file = std::fs::File::open(&path)?.take(upto);
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(hasher);
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A finished SHA-256 as lower-case hex.
fn hex_of(hasher: sha2::Sha256) -> String {
    use sha2::Digest;
    rakkr_protocol::digest::hex(&hasher.finalize())
}

/// Up to `len` bytes of `path` from `offset`.
fn read_chunk(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut chunk = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

/// The queue entry for a finished take's file of `bytes` bytes.
pub fn queued(bytes: u64, now_ms: u64) -> Vec<u8> {
    serde_json::to_vec(&QueuedFile {
        bytes,
        sha256: None,
        confirmed: false,
        queued_ms: now_ms,
    })
    .expect("queue entries serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_uploads_become_an_issue_after_a_while_and_refusals_at_once() {
        let mut w = FailureWatch::new(Duration::from_secs(60));
        assert!(w.failed("a.flac", false, "connection refused", 0).is_none());
        assert!(
            w.failed("b.flac", false, "connection refused", 59_000)
                .is_none()
        );
        let raised = w
            .failed("a.flac", false, "connection refused", 60_000)
            .unwrap();
        assert_eq!(
            (raised.change, raised.subject.as_str()),
            (HealthChange::Raised, "")
        );
        assert!(raised.detail.contains("for 60 s"), "{}", raised.detail);
        assert!(w.failed("a.flac", false, "again", 90_000).is_none(), "once");
        // A refusal is its file's, at once, once.
        let refused = w
            .failed("c.flac", true, "413 Payload Too Large: too big", 91_000)
            .unwrap();
        assert_eq!(refused.subject, "file:c.flac");
        assert!(w.failed("c.flac", true, "again", 92_000).is_none());
        // One gets through: the node-wide issue clears; the refused file's stays.
        let cleared = w.confirmed("a.flac", 100_000);
        assert_eq!(cleared.len(), 1);
        assert_eq!(
            (cleared[0].change, cleared[0].subject.as_str()),
            (HealthChange::Cleared, "")
        );
        // The refused file confirmed after all (the server's limit raised).
        let cleared = w.confirmed("c.flac", 200_000);
        assert_eq!(cleared[0].subject, "file:c.flac");
        // The clock starts again after a success.
        assert!(w.failed("d.flac", false, "x", 200_001).is_none());
        assert!(w.failed("d.flac", false, "x", 259_000).is_none());
        // A restart remembers what was open, so it can clear it.
        let mut again = FailureWatch::new(Duration::from_secs(60));
        again.assume_raised("");
        again.assume_raised("file:e.flac");
        assert_eq!(again.confirmed("e.flac", 1).len(), 2);
    }

    #[test]
    fn time_outside_the_upload_windows_is_not_time_failing() {
        let mut w = FailureWatch::new(Duration::from_secs(60));
        assert!(w.failed("a.flac", false, "connection refused", 0).is_none());
        // The window closes at 30 s and opens again hours later.
        w.window_closed();
        assert!(
            w.failed("a.flac", false, "connection refused", 10_000_000)
                .is_none(),
            "the count starts again in the new window"
        );
        assert!(w.failed("a.flac", false, "again", 10_059_000).is_none());
        assert!(w.failed("a.flac", false, "again", 10_060_000).is_some());
    }

    #[test]
    fn back_off_doubles_while_nothing_moves_and_starts_over_after_progress() {
        let mut b = Backoff::new(Instant::now());
        let waits: Vec<u64> = (0..10)
            .map(|_| b.after_failure(false, false).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        // A refusal waits the longest and does not change the doubling.
        assert_eq!(b.after_failure(true, true), LAST_BACKOFF);
        assert_eq!(b.after_failure(false, false), LAST_BACKOFF);
        // An attempt that moved bytes before the link dropped again.
        assert_eq!(b.after_failure(false, true), FIRST_BACKOFF);
        assert_eq!(b.after_failure(false, false), 2 * FIRST_BACKOFF);
    }

    /// A server that accepts a connection and then neither reads nor answers:
    /// a cut link. The body goes into the connection's buffers at once; the
    /// request is given up `stall` after that, not at the next multiple of
    /// `stall` (which took up to twice as long). Real time: paused time
    /// would move on while the connection is being made.
    #[tokio::test]
    async fn a_silenced_request_is_given_up_a_stall_after_its_last_byte() {
        rakkr_mqtt::install_tls_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await;
            drop(socket);
        });
        let client = reqwest::Client::new();
        let stall = Duration::from_secs(1);
        let start = std::time::Instant::now();
        let body = bytes::Bytes::from(vec![7u8; 256 << 10]);
        let e = send_watched(client.patch(&url), Some(body), stall)
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert!(e.contains("the link looks cut"), "{e}");
        assert!(took >= stall, "not before the stall limit: {took:?}");
        assert!(
            took < stall * 19 / 10,
            "a stall after the last byte, not two: {took:?}"
        );
        held.abort();
    }

    #[test]
    fn files_are_read_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").unwrap();
        assert_eq!(read_chunk(&path, 0, 5).unwrap(), b"hello");
        assert_eq!(read_chunk(&path, 6, 100).unwrap(), b"world");
        assert!(read_chunk(&path, 11, 5).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_file_s_hash_is_its_prefix_hash_carried_on_chunk_by_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").unwrap();
        let whole = rakkr_protocol::digest::sha256_hex(b"hello world");
        assert_eq!(hex_of(hash_prefix(&path, 11).await.unwrap()), whole);
        assert_eq!(hex_of(hash_prefix(&path, 99).await.unwrap()), whole);
        let mut carried = hash_prefix(&path, 6).await.unwrap();
        sha2::Digest::update(&mut carried, read_chunk(&path, 6, 5).unwrap());
        assert_eq!(hex_of(carried), whole);
        assert_eq!(
            hex_of(hash_prefix(&path, 0).await.unwrap()),
            rakkr_protocol::digest::sha256_hex(b"")
        );
    }
}
