//! Recordings arriving from appliances (decision 0016): a resumable upload
//! per file of a take, verified before the server confirms it.
//!
//! On disk (`{data_dir}/`):
//!
//! | path | what |
//! |---|---|
//! | `uploads/{job}/{name}` | staging: the bytes received so far; only the first `offset` (in the store's `UploadRecord`) count |
//! | `recordings/{node}/{job}/{name}` | the cache: complete, verified files, moved here from staging |
//!
//! Invariants: a chunk is checked against its `Upload-Checksum` before it is
//! written; it is written at the recorded offset (whatever a crash left
//! beyond is cut off first) and made durable (`fdatasync`) before the store
//! records the new offset, so the offset never names bytes the server might
//! not have. A file is confirmed (`cached`) only after its whole SHA-256,
//! size and type were checked and it was renamed into the cache with its
//! directory synced. The requests of one file are serialized (striped
//! locks), so two retries of the same chunk cannot interleave.
//!
//! Every refusal of a node's request is audited (as the node, with the
//! reason); so is every file confirmed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use rakkr_protocol::upload::{
    CHECKSUM_MISMATCH, CompleteUpload, MAX_CHUNK_BYTES, UPLOAD_CHECKSUM, UPLOAD_LENGTH,
    UPLOAD_OFFSET, UploadConfirmation, check_file_name, parse_checksum,
};
use rakkr_protocol::{JobId, NodeId};
use rakkr_store::{JobRecord, UploadRecord, UploadState};
use sha2::Digest;

use crate::http::{AppState, Problem, problem};
use crate::tls::PeerAddr;

/// Locks striped over files: bounded, and one file's requests never run at once.
const LOCK_STRIPES: usize = 64;

/// What arrived, for `/metrics`.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Bytes of chunks kept (checked and made durable).
    pub bytes_received: AtomicU64,
    /// Files verified and confirmed.
    pub files_confirmed: AtomicU64,
    /// Of those, files whose hash and decode ran while they arrived.
    pub verified_on_arrival: AtomicU64,
    /// S3 copies started while their file arrived, and deliveries they
    /// completed (`early_delivery`).
    pub early_copies_started: AtomicU64,
    pub early_copies_delivered: AtomicU64,
    /// Requests refused (audited ones: not offset conflicts).
    pub refused: AtomicU64,
    /// Bytes the server's copies take (after the last retention pass).
    pub held_bytes: AtomicU64,
    /// Bytes over `cache_max_mb` that only files not delivered everywhere hold.
    pub over_cap_bytes: AtomicU64,
    /// Server copies deleted by retention since start, and their bytes.
    pub removed_files: AtomicU64,
    pub removed_bytes: AtomicU64,
}

/// Where uploads are staged and cached, and what they may be.
pub struct Uploads {
    staging: PathBuf,
    cache: PathBuf,
    max_bytes: u64,
    locks: Vec<tokio::sync::Mutex<()>>,
    pub stats: UploadStats,
    /// FLAC files checked while they arrive.
    pub followers: crate::arrival::Followers,
    /// S3 copies of files that are still arriving.
    pub early: crate::early_delivery::EarlyCopies,
}

impl Uploads {
    pub fn new(data_dir: &Path, max_bytes: u64) -> Uploads {
        Uploads {
            staging: data_dir.join("uploads"),
            cache: data_dir.join("recordings"),
            max_bytes,
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stats: UploadStats::default(),
            followers: crate::arrival::Followers::default(),
            early: crate::early_delivery::EarlyCopies::default(),
        }
    }

    /// The lock every request about this file holds while it runs.
    pub(crate) fn lock(&self, job: JobId, name: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (job, name).hash(&mut h);
        &self.locks[h.finish() as usize % LOCK_STRIPES]
    }

    fn staged(&self, job: JobId, name: &str) -> PathBuf {
        self.staging.join(job.to_string()).join(name)
    }

    /// Delete the server's copies of `node`'s file `name` of `job`: in the
    /// cache and in staging (whichever the record said, a completion may
    /// have moved it since), and their directories once empty. A file
    /// already gone is not an error (a pass after a crash finishes the job).
    pub fn remove_copy(&self, node: &NodeId, job: JobId, name: &str) -> Result<(), String> {
        for path in [self.cached(node, job, name), self.staged(job, name)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot delete {}: {e}", path.display())),
            }
            if let Some(dir) = path.parent() {
                // Empty once the take's last file is gone; not empty is fine.
                let _ = std::fs::remove_dir(dir);
            }
        }
        Ok(())
    }

    /// Whether the server has a copy of the file, in the cache or staging.
    pub fn holds(&self, node: &NodeId, job: JobId, name: &str) -> bool {
        self.cached(node, job, name).exists() || self.staged(job, name).exists()
    }

    /// Jobs with files in staging (arriving, or left by a cut upload).
    pub fn staged_jobs(&self) -> Vec<JobId> {
        std::fs::read_dir(&self.staging)
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Where a confirmed file of `node`'s take of `job` is kept.
    pub fn cached(&self, node: &NodeId, job: JobId, name: &str) -> PathBuf {
        self.cache
            .join(node.as_str())
            .join(job.to_string())
            .join(name)
    }
}

/// A refusal: the problem for the node, and whether it is audited as a
/// refusal (a conflict over offsets is ordinary resuming, not one).
struct Refusal {
    problem: Problem,
    offset: Option<u64>,
    audited: bool,
}

impl Refusal {
    fn new(status: StatusCode, detail: impl Into<String>) -> Refusal {
        Refusal {
            problem: problem(status, detail),
            offset: None,
            audited: true,
        }
    }

    /// 409 with the offset the server holds: resume from there.
    fn resume_at(offset: u64, detail: impl Into<String>) -> Refusal {
        Refusal {
            problem: problem(StatusCode::CONFLICT, detail),
            offset: Some(offset),
            audited: false,
        }
    }

    fn into_response(self) -> Response {
        let mut res = self.problem.into_response();
        if let Some(offset) = self.offset {
            res.headers_mut()
                .insert(UPLOAD_OFFSET, HeaderValue::from(offset));
        }
        res
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "upload: server-side failure");
    Refusal {
        problem: problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server could not keep the upload; try again",
        ),
        offset: None,
        audited: false,
    }
}

/// The node behind the request and the job whose file it names, checked:
/// the node's credential, a file name of that job's take, a job that exists
/// and is the node's.
fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    job: &str,
    name: &str,
) -> Result<(NodeId, JobRecord), (Option<NodeId>, Refusal)> {
    let Some((node, secret)) = crate::http::basic_auth(headers) else {
        return Err((
            None,
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "a node authenticates with HTTP Basic: its node id and credential",
            ),
        ));
    };
    if state.identities.verify(&node, &secret).is_err() {
        return Err((
            None,
            Refusal::new(StatusCode::UNAUTHORIZED, "wrong node id or credential"),
        ));
    }
    let refuse = |r: Refusal| (Some(node.clone()), r);
    let job: JobId = job.parse().map_err(|_| {
        refuse(Refusal::new(
            StatusCode::NOT_FOUND,
            format!("{job:?} is not a job id"),
        ))
    })?;
    check_file_name(job, name)
        .map_err(|e| refuse(Refusal::new(StatusCode::BAD_REQUEST, e.to_string())))?;
    let record = state
        .store
        .job(job)
        .map_err(|e| refuse(internal(e)))?
        .ok_or_else(|| {
            refuse(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("no recording of job {job}"),
            ))
        })?;
    if record.node != node {
        return Err(refuse(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("job {job} is not node {node}'s"),
        )));
    }
    if let Some(d) = &record.deleted {
        return Err(refuse(Refusal::new(
            StatusCode::GONE,
            format!(
                "the recording of job {job} was deleted by {}; its take is not wanted",
                d.by
            ),
        )));
    }
    Ok((node, record))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<u64, Refusal> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("{name} is missing or not a number of bytes"),
            )
        })
}

/// What a request's work gives: the answer, and whether it is audited as
/// an allowed action (a confirmed file is; a chunk is not).
type Answer = Result<(Response, bool), Refusal>;

/// Authorize the request, run `work` (blocking file and store IO) under the
/// file's lock, audit a refusal or a confirmation, answer.
async fn serve(
    state: AppState,
    peer: std::net::SocketAddr,
    headers: HeaderMap,
    (job, name): (String, String),
    action: &'static str,
    work: impl FnOnce(&AppState, &NodeId, &JobRecord, &str) -> Answer + Send + 'static,
) -> Response {
    let target = format!(
        "recording:{}/{}",
        job.chars().take(40).collect::<String>(),
        name.chars().take(120).collect::<String>()
    );
    let uploads = state.uploads.clone();
    let _guard = match job.parse::<JobId>() {
        Ok(id) => Some(uploads.lock(id, &name).lock().await),
        Err(_) => None,
    };
    let worker = state.clone();
    let done = tokio::task::spawn_blocking(move || {
        let (node, record) = authorize(&worker, &headers, &job, &name)?;
        match work(&worker, &node, &record, &name) {
            Ok(answer) => Ok((node, answer)),
            Err(refusal) => Err((Some(node), refusal)),
        }
    })
    .await;
    match done {
        Ok(Ok((node, (response, confirmed)))) => {
            if confirmed {
                crate::http::audit_node_request(
                    &state,
                    peer,
                    Some(&node),
                    action,
                    Some(target),
                    None,
                )
                .await;
            }
            response
        }
        Ok(Err((node, refusal))) => {
            if refusal.audited {
                state.uploads.stats.refused.fetch_add(1, Ordering::Relaxed);
                let why = refusal.problem.detail.clone();
                crate::http::audit_node_request(
                    &state,
                    peer,
                    node.as_ref(),
                    action,
                    Some(target),
                    Some(&why),
                )
                .await;
            }
            refusal.into_response()
        }
        Err(e) => internal(e).into_response(),
    }
}

fn offset_answer(status: StatusCode, record: Option<&UploadRecord>) -> Response {
    let mut res = status.into_response();
    let h = res.headers_mut();
    h.insert(
        UPLOAD_OFFSET,
        HeaderValue::from(record.map_or(0, |r| r.offset)),
    );
    if let Some(r) = record {
        h.insert(UPLOAD_LENGTH, HeaderValue::from(r.length));
    }
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    res
}

/// `HEAD …/files/{name}`: how much of the file the server holds.
pub async fn head_file(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    UrlPath(file): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve(
        state,
        peer,
        headers,
        file,
        "upload status",
        |state, _, job, name| {
            let record = state.store.upload(job.id, name).map_err(internal)?;
            Ok((offset_answer(StatusCode::OK, record.as_ref()), false))
        },
    )
    .await
}

/// How long a chunk's body may move no byte before the server gives it up
/// (a node behind a cut link never closes its connection).
pub const BODY_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// A chunk's body, at most `limit` bytes, given up when no byte arrives for
/// `stall`: too large is 413, broken off 400, stalled 408.
async fn read_chunk(
    body: axum::body::Body,
    limit: usize,
    stall: std::time::Duration,
) -> Result<Bytes, Refusal> {
    use futures_util::StreamExt as _;
    let mut data = body.into_data_stream();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(stall, data.next()).await {
            Err(_) => {
                return Err(Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "no byte of the chunk for {stall:?}; {} bytes of it were dropped",
                        out.len()
                    ),
                ));
            }
            Ok(None) => return Ok(out.into()),
            Ok(Some(Err(e))) => {
                return Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("the chunk's body broke off: {e}"),
                ));
            }
            Ok(Some(Ok(piece))) => {
                if out.len() + piece.len() > limit {
                    return Err(Refusal::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("a chunk is at most {limit} bytes"),
                    ));
                }
                out.extend_from_slice(&piece);
            }
        }
    }
}

/// `PATCH …/files/{name}`: one chunk at the server's offset.
pub async fn patch_file(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    UrlPath(file): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let now = state.clock.unix_ms();
    let checks = headers.clone();
    // Only a node that proves who it is gets its body read (at most one
    // chunk): a stranger cannot make the server buffer anything.
    let known = crate::http::basic_auth(&headers)
        .is_some_and(|(node, secret)| state.identities.verify(&node, &secret).is_ok());
    let body: Result<Bytes, Refusal> = if known {
        read_chunk(body, MAX_CHUNK_BYTES, BODY_STALL).await
    } else {
        Ok(Bytes::new())
    };
    serve(state, peer, headers, file, "upload chunk", move |state, node, job, name| {
        let body = body?;
        let length = header_u64(&checks, UPLOAD_LENGTH)?;
        let offset = header_u64(&checks, UPLOAD_OFFSET)?;
        let uploads = &state.uploads;
        if length > uploads.max_bytes {
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the file has {length} bytes; this server takes files of at most {} bytes",
                    uploads.max_bytes
                ),
            ));
        }
        let Some(sum) = checks
            .get(UPLOAD_CHECKSUM)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_checksum)
        else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("{UPLOAD_CHECKSUM} must be `sha256 <base64>` of the body"),
            ));
        };
        let mut record = match state.store.upload(job.id, name).map_err(internal)? {
            Some(r) => r,
            None => UploadRecord {
                job: job.id,
                name: name.to_owned(),
                node: node.clone(),
                length,
                offset: 0,
                state: UploadState::Receiving,
                sha256: None,
                started_ms: now,
                updated_ms: now,
                waveform: None,
                removed_ms: None,
            },
        };
        if record.state == UploadState::Cached {
            // Sent again after the confirmation was lost: nothing to add.
            return Ok((offset_answer(StatusCode::NO_CONTENT, Some(&record)), false));
        }
        if record.length != length {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                format!(
                    "the upload began with {} bytes, not {length}",
                    record.length
                ),
            ));
        }
        if offset != record.offset {
            return Err(Refusal::resume_at(
                record.offset,
                format!("the server holds {} bytes; send from there", record.offset),
            ));
        }
        if offset + body.len() as u64 > length {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{} bytes at {offset} go beyond the file's {length} bytes",
                    body.len()
                ),
            ));
        }
        if sha2::Sha256::digest(&body).as_slice() != sum {
            return Err(Refusal {
                problem: problem(
                    StatusCode::from_u16(CHECKSUM_MISMATCH).unwrap_or(StatusCode::BAD_REQUEST),
                    "the chunk does not match its checksum; nothing of it was kept: send it again",
                ),
                offset: Some(record.offset),
                audited: true,
            });
        }
        let staged = uploads.staged(job.id, name);
        write_at(&staged, offset, &body).map_err(internal)?;
        record.offset += body.len() as u64;
        record.updated_ms = now;
        state.store.put_upload(&record).map_err(internal)?;
        if name.ends_with(".flac") {
            uploads
                .followers
                .advanced(job.id, name, &staged, record.offset, record.length);
        }
        crate::early_delivery::chunk_arrived(
            state,
            job,
            name,
            &staged,
            record.offset,
            record.length,
        );
        uploads
            .stats
            .bytes_received
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok((offset_answer(StatusCode::NO_CONTENT, Some(&record)), false))
    })
    .await
}

/// Write `bytes` at `offset` of `path` (created with its directory), cutting
/// off whatever lies beyond `offset` first, and make them durable.
fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.set_len(offset)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)?;
    file.sync_data()
}

/// What a complete file turned out to be.
fn kind_of(head: &[u8]) -> Option<&'static str> {
    // FLAC: the marker, then a STREAMINFO block first (type 0).
    if head.len() >= 8 && &head[..4] == b"fLaC" && head[4] & 0x7f == 0 {
        return Some("flac");
    }
    if head.len() >= 12 && matches!(&head[..4], b"RIFF" | b"RF64") && &head[8..12] == b"WAVE" {
        return Some("wav");
    }
    None
}

/// SHA-256 (hex) and the first bytes of the first `length` bytes of `path`.
fn digest_of(path: &Path, length: u64) -> std::io::Result<(String, Vec<u8>)> {
    let mut file = std::fs::File::open(path)?.take(length);
    let mut hasher = sha2::Sha256::new();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if head.len() < 16 {
            head.extend_from_slice(&buf[..n.min(16 - head.len())]);
        }
        hasher.update(&buf[..n]);
    }
    Ok((rakkr_protocol::digest::hex(&hasher.finalize()), head))
}

/// `POST …/files/{name}/complete`: verify the whole file, keep it, confirm.
pub async fn complete_file(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    UrlPath(file): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<CompleteUpload>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let now = state.clock.unix_ms();
    serve(state, peer, headers, file, "upload recording", move |state, node, job, name| {
        let Json(claim) = body.map_err(|e| Refusal::new(e.status(), e.body_text()))?;
        let Some(mut record) = state.store.upload(job.id, name).map_err(internal)? else {
            return Err(Refusal::resume_at(0, "nothing of this file has arrived yet"));
        };
        let confirmation = |r: &UploadRecord| {
            Json(UploadConfirmation {
                job: r.job,
                name: r.name.clone(),
                bytes: r.length,
                sha256: r.sha256.clone().unwrap_or_default(),
            })
            .into_response()
        };
        if record.state == UploadState::Cached {
            // Asked again (the confirmation was lost): the same answer.
            return if record.sha256.as_deref() == Some(claim.sha256.as_str()) {
                Ok((confirmation(&record), false))
            } else {
                Err(Refusal::new(
                    StatusCode::CONFLICT,
                    "the server holds this file with another SHA-256",
                ))
            };
        }
        if record.offset != record.length {
            return Err(Refusal::resume_at(
                record.offset,
                format!(
                    "the server holds {} of {} bytes; send the rest first",
                    record.offset, record.length
                ),
            ));
        }
        let staged = state.uploads.staged(job.id, name);
        let expected_kind = name.rsplit('.').next().unwrap_or_default();
        // The follower's verdict when it read the whole file and found it
        // sound (arrival.rs); any doubt and the file is checked from disk.
        let followers = &state.uploads.followers;
        let followed = followers
            .finish(job.id, name, record.length)
            .and_then(|v| {
                let doubt = if v.bytes != record.length {
                    Some(format!("it read {} of {} bytes", v.bytes, record.length))
                } else if let Err(e) = &v.waveform {
                    Some(e.clone())
                } else if !v.sha256.eq_ignore_ascii_case(claim.sha256.trim()) {
                    Some("another SHA-256 than the node's".to_owned())
                } else {
                    None
                };
                match doubt {
                    None => Some(v),
                    Some(why) => {
                        tracing::info!(job = %job.id, file = name, reason = %why, "the follower's verdict is not taken; checking the file from disk");
                        None
                    }
                }
            });
        let (digest, decoded) = match followed {
            Some(v) => {
                state
                    .uploads
                    .stats
                    .verified_on_arrival
                    .fetch_add(1, Ordering::Relaxed);
                (Ok((v.sha256, v.head)), v.waveform)
            }
            // Hash and decode at once, on two cores: each reads the whole
            // file, and the node waits for both. The decode of a file that
            // turns out to be wrong is wasted, which only a bad upload pays for.
            None => std::thread::scope(|both| {
                let decoding = both.spawn(|| crate::waveform::of_file(&staged, expected_kind));
                let digest = digest_of(&staged, record.length);
                let decoded = decoding
                    .join()
                    .unwrap_or_else(|_| Err("the decoder panicked".to_owned()));
                (digest, decoded)
            }),
        };
        let (sha256, head) = digest.map_err(internal)?;
        let reported = job
            .recording
            .as_ref()
            .and_then(|r| r.files.iter().find(|f| f.name == name))
            .map(|f| f.bytes);
        let wrong = if !sha256.eq_ignore_ascii_case(claim.sha256.trim()) {
            Some(format!(
                "the file the server received has SHA-256 {sha256}, not {}: it was discarded, send it again",
                claim.sha256.trim()
            ))
        } else if kind_of(&head) != Some(expected_kind) {
            Some(format!("the file is not a {expected_kind} file: it was discarded"))
        } else if reported.is_some_and(|bytes| bytes != record.length) {
            Some(format!(
                "the take's report gives {} bytes for this file, the upload {}: it was discarded",
                reported.unwrap_or_default(),
                record.length
            ))
        } else {
            None
        };
        // Only a file that decodes to its end is kept; drawing its preview
        // is that check.
        let waveform = match wrong {
            Some(why) => Err(why),
            None => decoded
                .map_err(|e| format!("the file does not decode ({e}): it was discarded")),
        };
        let waveform = match waveform {
            Ok(w) => w,
            Err(why) => {
                // Start again from nothing: the node still has its copy.
                followers.discard(job.id, name);
                state.uploads.early.discard(job.id, name);
                let _ = std::fs::remove_file(&staged);
                record.offset = 0;
                record.updated_ms = now;
                state.store.put_upload(&record).map_err(internal)?;
                return Err(Refusal {
                    problem: problem(StatusCode::CONFLICT, why),
                    offset: Some(0),
                    audited: true,
                });
            }
        };
        let kept = state.uploads.cached(node, job.id, name);
        move_durably(&staged, &kept).map_err(internal)?;
        state.uploads.early.arrived(job.id, name);
        record.state = UploadState::Cached;
        record.sha256 = Some(sha256);
        record.waveform = Some(waveform);
        record.updated_ms = now;
        // Deliveries first: a recording whose files are all cached and that
        // has no deliveries reads as `uploaded` (server-only), which it
        // must never do, even for a moment, while its copies are still due.
        crate::delivery::queue_file(&*state.store, &state.delivery_policies, job, &record, now);
        state.store.put_upload(&record).map_err(internal)?;
        state
            .uploads
            .stats
            .files_confirmed
            .fetch_add(1, Ordering::Relaxed);
        state.delivery_wake.notify_one();
        tracing::info!(job = %job.id, file = name, bytes = record.length, "recording file received and verified");
        Ok((confirmation(&record), true))
    })
    .await
}

/// Rename `from` to `to` (directories created) and sync both directories,
/// so the move survives a power loss.
fn move_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = to
        .parent()
        .ok_or_else(|| std::io::Error::other("no directory"))?;
    std::fs::create_dir_all(dir)?;
    std::fs::rename(from, to)?;
    std::fs::File::open(dir)?.sync_all()?;
    if let Some(old) = from.parent() {
        std::fs::File::open(old)?.sync_all()?;
        // The staging directory of a job whose files all arrived goes.
        let _ = std::fs::remove_dir(old);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of `pieces`, then (when `stalls`) nothing more, ever.
    fn body_of(pieces: &[&'static [u8]], stalls: bool) -> axum::body::Body {
        let given = futures_util::stream::iter(
            pieces
                .iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        );
        if stalls {
            use futures_util::StreamExt as _;
            axum::body::Body::from_stream(given.chain(futures_util::stream::pending()))
        } else {
            axum::body::Body::from_stream(given)
        }
    }

    #[tokio::test]
    async fn a_chunk_body_is_read_whole_refused_when_too_large_and_given_up_when_stalled() {
        let stall = std::time::Duration::from_millis(50);
        let whole = read_chunk(body_of(&[b"abc", b"def"], false), 6, stall).await;
        assert_eq!(whole.ok().as_deref(), Some(&b"abcdef"[..]));
        let large = read_chunk(body_of(&[b"abc", b"defg"], false), 6, stall)
            .await
            .err()
            .map(|r| r.problem.status);
        assert_eq!(large, Some(StatusCode::PAYLOAD_TOO_LARGE));
        let stalled = read_chunk(body_of(&[b"abc"], true), 6, stall)
            .await
            .err()
            .map(|r| (r.problem.status, r.problem.detail));
        let (status, detail) = stalled.unwrap_or_default();
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(
            detail.contains("50ms") && detail.contains("3 bytes"),
            "{detail}"
        );
    }

    #[test]
    fn files_are_told_apart_by_their_first_bytes() {
        assert_eq!(kind_of(b"fLaC\x00\x00\x00\x22rest"), Some("flac"));
        assert_eq!(
            kind_of(b"fLaC\x80\x00\x00\x22"),
            Some("flac"),
            "last block flag"
        );
        assert_eq!(kind_of(b"fLaC\x04\x00\x00\x22"), None, "STREAMINFO first");
        assert_eq!(kind_of(b"RIFF\x00\x00\x00\x00WAVEfmt "), Some("wav"));
        assert_eq!(kind_of(b"RF64\xff\xff\xff\xffWAVEds64"), Some("wav"));
        assert_eq!(kind_of(b"RIFF\x00\x00\x00\x00AVI "), None);
        assert_eq!(kind_of(b"ID3\x04"), None);
    }

    #[test]
    fn a_chunk_is_written_at_its_offset_and_what_lies_beyond_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.flac");
        write_at(&path, 0, b"hello world").unwrap();
        // A crash left "world" unconfirmed: the next chunk at 6 replaces it.
        write_at(&path, 6, b"there").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello there");
        write_at(&path, 5, b"!").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello!");
        let (hex, head) = digest_of(&path, 5).unwrap();
        assert_eq!(hex, rakkr_protocol::digest::sha256_hex(b"hello"));
        assert_eq!(head, b"hello");
    }
}
