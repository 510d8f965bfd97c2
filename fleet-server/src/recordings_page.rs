//! The recordings library (`/recordings`, `recordings.read`): every take the
//! fleet reported, newest first, filtered by node, state, tag and time, with
//! notes and tags (`recordings.control`). The same in the JSON API
//! (`/api/v1/recordings`).
//!
//! A recording here is a job with a recording report. Its files are on the
//! appliance until they are uploaded (decision 0016); the page shows each
//! file's place (on the appliance, uploading with its progress, on the
//! server with its verified SHA-256) and, for files on the server, a player
//! (`/recordings/{id}/play/{name}`, recordings.playback, byte ranges for
//! seeking) and a download (`/recordings/{id}/files/{name}`,
//! recordings.download, audited). Notes and tags are text: maud escapes them
//! like everything else. A finished recording can be deleted
//! (recordings.delete, a typed confirmation; [`crate::deletion`]): its page
//! then says who deleted it and which copies remain where, and the library
//! lists it only under the state `deleted`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use rakkr_protocol::JobId;
use rakkr_protocol::access::Permission;
use rakkr_protocol::state::JobState;
use rakkr_store::JobRecord;
use rakkr_web::components::{WaveformStretch, waveform_lane};
use serde::Deserialize;

use crate::audit::AuditChange;
use crate::auth::SignedIn;
use crate::console::{console_page, csrf_field, utc_seconds};
use crate::http::{AppState, problem};

pub const RECORDINGS_PATH: &str = "/recordings";
/// Jobs one page of a listing looks through (newest first); where it stopped,
/// the next page goes on (`before`).
pub const LOOK_BACK: usize = 1000;
/// Rows one page shows.
const ROWS: usize = 100;

/// The library's filters (its query string).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordingsQuery {
    /// Only this node's recordings.
    #[serde(default)]
    pub node: String,
    /// `completed`, `failed`, `lost`, `cancelled`; empty: any. Deleted
    /// recordings are listed only with `deleted`.
    #[serde(default)]
    pub state: String,
    /// Only recordings with this tag.
    #[serde(default)]
    pub tag: String,
    /// Started at or after this day (`YYYY-MM-DD`, UTC).
    #[serde(default)]
    pub from: String,
    /// Started on or before this day.
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only jobs older than this one (a recording id): the next page, as the
    /// previous one said (`next_before`).
    #[serde(default)]
    pub before: String,
}

/// One page of the library.
#[derive(Debug)]
pub struct Found {
    /// Matches, newest first.
    pub recordings: Vec<JobRecord>,
    /// Where the next page goes on (`before`), when older jobs are left.
    pub next_before: Option<JobId>,
}

fn day_ms(day: &str, end: bool) -> Result<Option<u64>, String> {
    match day.trim() {
        "" => Ok(None),
        d => crate::audit::time_ms(
            &format!("{d}T{}", if end { "23:59:59" } else { "00:00" }),
            end,
        )
        .map(Some),
    }
}

/// The recordings matching `q`, newest first: a page of at most `limit`,
/// looking through at most [`LOOK_BACK`] jobs.
async fn find(state: &AppState, q: &RecordingsQuery) -> Result<Found, String> {
    let node = match q.node.trim() {
        "" => None,
        n => Some(rakkr_protocol::NodeId::new(n).map_err(|e| format!("node: {e}"))?),
    };
    let (from, to) = (day_ms(&q.from, false)?, day_ms(&q.to, true)?);
    // `deleted` lists the deleted recordings; every other choice hides them.
    let want_deleted = q.state == "deleted";
    let wanted_state = match q.state.as_str() {
        "" | "deleted" => None,
        s => Some(
            JobState::ALL
                .into_iter()
                .find(|j| j.as_str() == s)
                .ok_or_else(|| format!("unknown state {s:?}"))?,
        ),
    };
    let before = match q.before.trim() {
        "" => None,
        b => Some(
            b.parse::<JobId>()
                .map_err(|_| format!("before: {b:?} is not a recording id"))?,
        ),
    };
    let store = state.store.clone();
    let jobs =
        tokio::task::spawn_blocking(move || store.jobs_before(node.as_ref(), before, LOOK_BACK))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    let tag = q.tag.trim();
    let limit = q.limit.unwrap_or(ROWS).clamp(1, LOOK_BACK);
    let matches = |j: &JobRecord| {
        let start = j.recording.as_ref().map_or(0, |r| r.start_unix_ms);
        j.recording.is_some()
            && j.deleted.is_some() == want_deleted
            && wanted_state.is_none_or(|s| j.state == s)
            && (tag.is_empty() || j.tags.iter().any(|t| t == tag))
            && from.is_none_or(|f| start >= f)
            && to.is_none_or(|t| start <= t)
    };
    let (recordings, next_before) = page_of(jobs, |j| j.id, matches, limit, LOOK_BACK);
    Ok(Found {
        recordings,
        next_before,
    })
}

/// The page `items` (newest first, at most `look_back` of them, as read)
/// make: the first `limit` that match, and the key of the item the next page
/// goes on before, when older items may be left (the page filled up before
/// the last item read, or all `look_back` were read).
fn page_of<T, K: Copy>(
    items: Vec<T>,
    key: impl Fn(&T) -> K,
    matches: impl Fn(&T) -> bool,
    limit: usize,
    look_back: usize,
) -> (Vec<T>, Option<K>) {
    let more_left = items.len() >= look_back;
    let last_key = items.last().map(&key);
    let read = items.len();
    let mut page = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        if !matches(&item) {
            continue;
        }
        let k = key(&item);
        page.push(item);
        if page.len() == limit {
            let older = i + 1 < read || more_left;
            return (page, older.then_some(k));
        }
    }
    (page, last_key.filter(|_| more_left))
}

fn duration(job: &JobRecord) -> String {
    let Some(r) = &job.recording else {
        return String::new();
    };
    let secs = r.frames / u64::from(r.sample_rate.max(1));
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn bytes(job: &JobRecord) -> String {
    let total: u64 = job
        .recording
        .as_ref()
        .map_or(0, |r| r.files.iter().map(|f| f.bytes).sum());
    format!("{:.1} MB", total as f64 / 1e6)
}

fn tags(job: &JobRecord) -> Markup {
    html! { @for t in &job.tags { span.tag { (t) } " " } }
}

fn list_page(q: &RecordingsQuery, result: Result<&Found, &String>, signed_in: &SignedIn) -> Markup {
    console_page(
        "Recordings",
        signed_in,
        html! {},
        html! {
            h1 { "Recordings" }
            form.search method="get" action=(RECORDINGS_PATH) role="search" {
                label { "Node" input type="text" name="node" value=(q.node) placeholder="any"; }
                label { "State"
                    select name="state" {
                        @for (value, label) in [("", "any"), ("completed", "completed"), ("failed", "failed"), ("lost", "lost"), ("cancelled", "cancelled"), ("deleted", "deleted")] {
                            option value=(value) selected[q.state == value] { (label) }
                        }
                    }
                }
                label { "Tag" input type="text" name="tag" value=(q.tag); }
                label { "From (UTC)" input type="date" name="from" value=(q.from); }
                label { "To (UTC)" input type="date" name="to" value=(q.to); }
                button type="submit" { "Filter" }
            }
            @match result {
                Err(why) => { p.error role="alert" { (why) } }
                Ok(Found { recordings: found, next_before }) => {
                    @if found.is_empty() {
                        p.muted { "No recordings match." }
                    } @else {
                        table.audit.recordings {
                            thead { tr { th { "Started (UTC)" } th { "Node" } th { "Length" } th { "Format" } th { "Files" } th { "State" } th { "Tags" } th { "Notes" } } }
                            tbody {
                                @for j in found {
                                    @let r = j.recording.as_ref();
                                    tr data-job=(j.id) {
                                        td.nowrap {
                                            a href={ (RECORDINGS_PATH) "/" (j.id) } { (r.map_or(String::new(), |r| utc_seconds(r.start_unix_ms).trim_end_matches(" UTC").to_owned())) }
                                            @if let Some(title) = &j.title { div.title { (title) } }
                                        }
                                        td { a.node-id href={ "/nodes/" (j.node) } { (j.node) } }
                                        td { (duration(j)) }
                                        td.muted { @if let Some(r) = r { (r.channels) " ch · " (r.sample_rate / 1000) " kHz · " (r.bits) "-bit " (j.spec.profile.codec.as_str()) } }
                                        td { @if let Some(r) = r { (r.file_count) " · " (bytes(j)) } }
                                        td { span class={ "badge job " (j.state.as_str()) } { (j.state.as_str()) }
                                             @if j.deleted.is_some() { " " span.badge.job.failed { "deleted" } }
                                             @if r.is_some_and(|r| r.gaps > 0) { div.warn { (r.map_or(0, |r| r.gaps)) " gaps" } } }
                                        td { (tags(j)) }
                                        td.notes { (j.notes.lines().next().unwrap_or("")) }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some(before) = next_before {
                        @let next = RecordingsQuery { before: before.to_string(), ..q.clone() };
                        p.muted { "A page looks through " (LOOK_BACK) " jobs at most." }
                        a.older href={ (RECORDINGS_PATH) "?" (serde_urlencoded::to_string(&next).unwrap_or_default()) } { "Older recordings →" }
                    }
                }
            }
        },
    )
}

/// `GET /recordings`
pub async fn list(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    query: Result<Query<RecordingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|q| q.0).unwrap_or_default();
    let result = find(&state, &q).await;
    let status = if result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, list_page(&q, result.as_ref(), &signed_in)).into_response()
}

/// The take's quality timeline; None before it ran. Store errors are
/// logged and shown as a missing timeline.
async fn quality_of(
    state: &AppState,
    job: &JobRecord,
) -> Result<Option<crate::quality::QualityTimeline>, String> {
    let Some((start, end)) = crate::quality::take_span(job, state.clock.unix_ms()) else {
        return Ok(None);
    };
    let (store, job) = (state.store.clone(), job.clone());
    let read = tokio::task::spawn_blocking(move || {
        let from = start.saturating_sub(crate::quality::LOOKBACK_MS);
        let events =
            store.health_events_between(&job.node, from, end, crate::quality::MAX_EVENTS)?;
        let pruned = store.health_events_pruned_until(&job.node)?;
        Ok::<_, rakkr_store::StoreError>(crate::quality::timeline(
            &job, start, end, &events, pruned,
        ))
    })
    .await;
    match read {
        Ok(Ok(t)) => Ok(Some(t)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "quality timeline: events not read");
            Err(e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Where one file of a take is, for people.
fn file_state(upload: Option<&rakkr_store::UploadRecord>, deleted: bool) -> Markup {
    use rakkr_store::UploadState;
    let digest = |u: &rakkr_store::UploadRecord| {
        html! {
            code.digest title=(u.sha256.as_deref().unwrap_or_default()) {
                (u.sha256.as_deref().unwrap_or_default().get(..16).unwrap_or_default()) "…"
            }
        }
    };
    match upload {
        _ if deleted => html! {
            span.badge.job.failed data-removed="true" { "deleted" }
            @if let Some(u) = upload {
                @if let Some(at) = u.removed_ms { " the server deleted its copy " (utc_seconds(at)) }
                @if u.state == UploadState::Cached { " (SHA-256 " (digest(u)) ")" }
            }
        },
        Some(u) if u.state == UploadState::Cached && u.removed_ms.is_some() => html! {
            span.badge.muted data-removed="true" { "delivered" }
            " every destination holds it; the server deleted its copy "
            (utc_seconds(u.removed_ms.unwrap_or_default()))
            " (SHA-256 " (digest(u)) ")"
        },
        Some(u) if u.state == UploadState::Cached => html! {
            span.badge.ok { "on the server" }
            " verified, SHA-256 " (digest(u))
        },
        Some(u) => html! {
            span.badge.job.running { "uploading" }
            " " (u.offset * 100 / u.length.max(1)) " % (" (u.offset) " of " (u.length) " bytes)"
        },
        None => html! { span.muted { "on the appliance" } },
    }
}

/// The take's waveform, one lane per channel, each file of it drawn over its
/// share of the take once the server holds it (the server draws a file's
/// preview when it verifies it).
fn waveform_panel(
    r: &rakkr_protocol::job::RecordingReport,
    uploads: &[rakkr_store::UploadRecord],
) -> Markup {
    let total: u64 = r.files.iter().map(|f| f.frames).sum();
    let mut start = 0u64;
    // Per file: where it starts, its share, its preview if drawn.
    let mut files = Vec::new();
    for f in &r.files {
        let preview = uploads
            .iter()
            .find(|u| u.name == f.name && u.state == rakkr_store::UploadState::Cached)
            .and_then(|u| u.waveform.as_ref());
        if total > 0 {
            files.push((
                start as f64 / total as f64,
                f.frames as f64 / total as f64,
                preview,
            ));
        }
        start += f.frames;
    }
    let drawn = files.iter().filter(|f| f.2.is_some()).count();
    let channels: Vec<Vec<Vec<(i8, i8)>>> = (0..r.channels)
        .map(|c| {
            files
                .iter()
                .map(|f| {
                    f.2.map(|w| crate::waveform::channel_peaks(w, c))
                        .unwrap_or_default()
                })
                .collect()
        })
        .collect();
    html! {
        section.panel aria-labelledby="waveform-h" {
            h2 #waveform-h { "Waveform" }
            @if drawn == 0 {
                p.muted { "The waveform appears once the server has the take's files." }
            } @else {
                @if drawn < files.len() { p.muted { (drawn) " of " (files.len()) " files are drawn; the rest are still on their way." } }
                div.waveform {
                    @for (c, per_file) in channels.iter().enumerate() {
                        @let stretches: Vec<WaveformStretch<'_>> = files.iter().zip(per_file).map(|(f, peaks)| WaveformStretch { start: f.0, width: f.1, peaks }).collect();
                        span.label aria-hidden="true" { "ch " (c + 1) }
                        (waveform_lane(&format!("Waveform of channel {} of {}", c + 1, r.channels), &stretches))
                    }
                }
                p.muted { "Red marks: the signal reaches full scale (clipping)." }
            }
        }
    }
}

/// Where a file's deliveries stand, one badge per destination.
fn deliveries_markup(deliveries: &[&rakkr_store::DeliveryRecord]) -> Markup {
    use rakkr_store::DeliveryState;
    html! {
        @for d in deliveries {
            " "
            @match d.state {
                DeliveryState::Delivered => span.badge.ok title={ "delivered as " (d.key) } { (d.destination) " ✓" },
                DeliveryState::Pending => span.badge.job.running title=(d.last_error) {
                    (d.destination) @if d.attempts > 0 { " retrying (" (d.attempts) ")" } @else { " pending" }
                },
                DeliveryState::Failed => span.badge.job.failed title=(d.last_error) { (d.destination) " failed" },
                DeliveryState::Cancelled => span.badge.job.cancelled title=(d.last_error) { (d.destination) " cancelled" },
            }
        }
    }
}

/// What a deleted recording's page says first: who deleted it, when, and
/// which copies remain where.
fn deleted_panel(
    job: &JobRecord,
    d: &rakkr_store::JobDeletion,
    deliveries: &[rakkr_store::DeliveryRecord],
) -> Markup {
    let archived: Vec<_> = deliveries
        .iter()
        .filter(|x| x.state == rakkr_store::DeliveryState::Delivered)
        .collect();
    html! {
        section.panel.deleted aria-labelledby="deleted-h" {
            h2 #deleted-h { "Deleted" }
            p {
                "Deleted by " strong { (d.by) } " at " (utc_seconds(d.at_ms))
                @if d.reason.is_empty() { "." } @else { ": " span.notes-text { (d.reason) } }
            }
            ul.deleted-copies {
                li { "The server: its copies are deleted." }
                li data-node-copy=(if d.node_deleted_ms.is_some() { "deleted" } else { "ordered" }) {
                    "The appliance " code { (job.node) } ": "
                    @match d.node_deleted_ms {
                        Some(at) => { "deleted its copy at " (utc_seconds(at)) "." }
                        None => { "ordered to delete its copy; it is told again each time it asks for work until it confirms (it may be offline)." }
                    }
                }
                @if archived.is_empty() {
                    li { "No destination had received a copy; deliveries not yet made are cancelled." }
                } @else {
                    li {
                        "Copies destinations already hold are archives and remain:"
                        ul {
                            @for x in &archived {
                                li data-archive=(x.destination) { (x.destination) ": " code { (x.key) } " (" (x.name) ")" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The form that deletes a finished recording, with its typed confirmation.
fn delete_panel(job: &JobRecord, signed_in: &SignedIn) -> Markup {
    html! {
        section.panel aria-labelledby="delete-h" {
            h2 #delete-h { "Delete this recording" }
            p {
                "Deletes the take from the appliance " code { (job.node) } " and from the server, and cancels deliveries that have not arrived. "
                "Copies destinations already hold stay. This cannot be undone."
            }
            form.delete-recording method="post" action={ (RECORDINGS_PATH) "/" (job.id) "/delete" } {
                (csrf_field(signed_in))
                label { "Reason (kept in the audit log)" input type="text" name="reason" maxlength=(rakkr_store::MAX_DELETION_REASON); }
                label { "Type “" (DELETE_CONFIRMATION) "” to confirm" input type="text" name="confirm" required autocomplete="off" spellcheck="false"; }
                button.danger type="submit" { "Delete recording" }
            }
        }
    }
}

fn detail_page(
    job: &JobRecord,
    uploads: &[rakkr_store::UploadRecord],
    deliveries: &[rakkr_store::DeliveryRecord],
    quality: &Result<Option<crate::quality::QualityTimeline>, String>,
    signed_in: &SignedIn,
    error: Option<&str>,
) -> Markup {
    let r = job.recording.as_ref();
    let upload_of = |name: &str| uploads.iter().find(|u| u.name == name);
    let on_server = |name: &str| {
        upload_of(name)
            .is_some_and(|u| u.state == rakkr_store::UploadState::Cached && u.removed_ms.is_none())
    };
    let verified =
        |name: &str| upload_of(name).is_some_and(|u| u.state == rakkr_store::UploadState::Cached);
    let all_there = r.is_some_and(|r| {
        r.file_count as usize == r.files.len() && r.files.iter().all(|f| verified(&f.name))
    });
    let removed = r.map_or(0, |r| {
        r.files
            .iter()
            .filter(|f| verified(&f.name) && !on_server(&f.name))
            .count()
    });
    let (may_play, may_download) = (
        signed_in.may(Permission::RecordingsPlayback),
        signed_in.may(Permission::RecordingsDownload),
    );
    console_page(
        "Recording",
        signed_in,
        html! {},
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href=(RECORDINGS_PATH) { "Recordings" } " › " span { (job.id) } }
            h1 {
                @if let Some(title) = &job.title { (title) " · " }
                "Recording on " a.node-id href={ "/nodes/" (job.node) } { (job.node) }
            }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if let Some(d) = &job.deleted { (deleted_panel(job, d, deliveries)) }
            section.panel {
                dl.facts {
                    dt { "State" } dd { span class={ "badge job " (job.state.as_str()) } { (job.state.as_str()) } @if !job.detail.is_empty() { " " (job.detail) } }
                    @if let Some(r) = r {
                        dt { "Started" } dd { (utc_seconds(r.start_unix_ms)) }
                        dt { "Length" } dd { (duration(job)) " (" (r.frames) " frames at " (r.sample_rate) " Hz)" }
                        dt { "Format" } dd { (r.channels) @if r.channels == 1 { " channel, " } @else { " channels, " } (r.bits) "-bit " (job.spec.profile.codec.as_str()) }
                        dt { "Gaps" } dd { (r.gaps) @if r.recovered { " · recovered after a crash" } }
                        dt { "Where" } dd {
                            @if job.deleted.is_some() { "deleted" }
                            @else if all_there && removed == 0 { "on the server, every file verified (SHA-256)" }
                            @else if all_there { "every file verified (SHA-256); the server deleted its copy of " (removed) " of " (r.files.len()) " once every destination held them" }
                            @else if uploads.is_empty() { "on the appliance " code { (job.node) } " (playback, download and checksum once it is uploaded)" }
                            @else { "being uploaded from " code { (job.node) } }
                        }
                        @let state = crate::delivery::recording_delivery(r, uploads, deliveries);
                        @if job.deleted.is_none() {
                            dt { "Delivery" } dd.delivery data-delivery=(serde_json::to_value(state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()) {
                                @match state {
                                    crate::delivery::RecordingDelivery::Arriving => "the files are on their way to the server",
                                    crate::delivery::RecordingDelivery::Delivering => "on the server; copies to its destinations under way",
                                    crate::delivery::RecordingDelivery::Uploaded => @if deliveries.is_empty() { "uploaded (the server is its only destination)" } @else { "uploaded: every destination holds every file" },
                                    crate::delivery::RecordingDelivery::Partial => "partial: a destination failed (retry it from the delivery queue)",
                                }
                            }
                        }
                        @if let Some(folder) = &job.folder { dt { "Folder" } dd { code { (folder) } " (where delivery will put it)" } }
                    }
                }
                @if let Some(r) = r {
                    table.jobs.files {
                        thead { tr { th { "File" } th { "Frames" } th { "Bytes" } th { "Where" } th { span.visually-hidden { "Listen or download" } } } }
                        tbody {
                            @for f in &r.files {
                                tr data-file=(f.name) {
                                    td { code { (f.name) } }
                                    td { (f.frames) }
                                    td { (f.bytes) }
                                    td {
                                        (file_state(upload_of(&f.name), job.deleted.is_some()))
                                        (deliveries_markup(&deliveries.iter().filter(|d| d.name == f.name).collect::<Vec<_>>()))
                                    }
                                    td {
                                        @if on_server(&f.name) {
                                            @if may_play {
                                                audio controls preload="none" src={ (RECORDINGS_PATH) "/" (job.id) "/play/" (f.name) } aria-label={ "Play " (f.name) } {}
                                            }
                                            @if may_download {
                                                " " a.download href={ (RECORDINGS_PATH) "/" (job.id) "/files/" (f.name) } download=(f.name) { "Download" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if r.file_count as usize > r.files.len() { p.muted { (r.file_count) " files in all; the first " (r.files.len()) " are listed." } }
                }
            }
            @if let Some(r) = r { (waveform_panel(r, uploads)) }
            section.panel aria-labelledby="quality-h" {
                h2 #quality-h { "Quality" }
                @match quality {
                    Ok(Some(t)) => (crate::quality::timeline_markup(t)),
                    Ok(None) => p.muted { "The timeline appears once the take runs." },
                    Err(e) => p.error { "The health events could not be read: " (e) },
                }
            }
            section.panel aria-labelledby="notes-h" {
                h2 #notes-h { "Notes and tags" }
                @if signed_in.may(Permission::RecordingsControl) {
                    form.notes method="post" action={ (RECORDINGS_PATH) "/" (job.id) "/notes" } {
                        (csrf_field(signed_in))
                        label { "Tags (comma-separated)" input type="text" name="tags" value=(job.tags.join(", ")) maxlength="700"; }
                        label { "Notes" textarea name="notes" rows="4" maxlength=(rakkr_store::MAX_NOTES_BYTES) { (job.notes) } }
                        button type="submit" { "Save" }
                    }
                } @else {
                    p { (tags(job)) }
                    p.notes-text { (job.notes) }
                }
            }
            @if job.deleted.is_none() && !job.state.occupies_channels() && signed_in.may(Permission::RecordingsDelete) {
                (delete_panel(job, signed_in))
            }
        },
    )
}

async fn job_of(state: &AppState, id: &str) -> Result<JobRecord, Response> {
    let not_found = || (StatusCode::NOT_FOUND, "no such recording\n").into_response();
    let id: JobId = id.parse().map_err(|_| not_found())?;
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.job(id)).await {
        Ok(Ok(Some(job))) => Ok(job),
        Ok(Ok(None)) => Err(not_found()),
        _ => Err(StatusCode::SERVICE_UNAVAILABLE.into_response()),
    }
}

/// The byte range a `Range` header asks of a file of `len` bytes: one
/// `bytes=a-b`, `bytes=a-` or `bytes=-n` range (what players send to seek);
/// `Err` when it lies outside the file (416), `Ok(None)` for the whole file.
fn byte_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    // Several ranges: the whole file instead (allowed by RFC 9110).
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (a, b) => {
            let (a, b): (u64, u64) = (a.parse().map_err(|_| ())?, b.parse().map_err(|_| ())?);
            (a, b.min(len.saturating_sub(1)))
        }
    };
    if start > end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Serve a cached file of a take: its media type, ranges for seeking, and
/// `attachment` (download) or `inline` (playback).
async fn serve_file(
    path: std::path::PathBuf,
    name: &str,
    range: Option<String>,
    attachment: bool,
) -> Response {
    use axum::http::header;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return (StatusCode::NOT_FOUND, "the file is not on the server\n").into_response();
    };
    let Ok(len) = file.metadata().await.map(|m| m.len()) else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let media = if name.ends_with(".flac") {
        "audio/flac"
    } else {
        "audio/wav"
    };
    let disposition = format!(
        "{}; filename=\"{name}\"",
        if attachment { "attachment" } else { "inline" }
    );
    let (status, start, end) = match byte_range(range.as_deref(), len) {
        Ok(None) => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b),
        Err(()) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let count = if len == 0 { 0 } else { end - start + 1 };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    let mut res = (
        status,
        [
            (header::CONTENT_TYPE, media.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::ACCEPT_RANGES, "bytes".to_owned()),
            (header::CONTENT_LENGTH, count.to_string()),
        ],
        body,
    )
        .into_response();
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = axum::http::HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
    {
        res.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    res
}

fn range_of(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A file of the take `id` the server holds, verified; or the answer why not.
async fn cached_file(
    state: &AppState,
    id: &str,
    name: &str,
) -> Result<(JobRecord, std::path::PathBuf), Response> {
    let job = job_of(state, id).await?;
    let gone = || {
        (
            StatusCode::NOT_FOUND,
            "the file is not on the server (yet)\n",
        )
            .into_response()
    };
    if rakkr_protocol::upload::check_file_name(job.id, name).is_err() {
        return Err(gone());
    }
    if let Some(d) = &job.deleted {
        return Err((
            StatusCode::GONE,
            format!(
                "the recording was deleted by {} at {}\n",
                d.by,
                utc_seconds(d.at_ms)
            ),
        )
            .into_response());
    }
    let (store, job_id, file) = (state.store.clone(), job.id, name.to_owned());
    let upload = tokio::task::spawn_blocking(move || store.upload(job_id, &file))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    match upload {
        Some(u) if u.state == rakkr_store::UploadState::Cached && u.removed_ms.is_some() => Err((
            StatusCode::GONE,
            "every destination holds this file and the server deleted its copy, as its upload policy says; fetch it from a destination\n",
        )
            .into_response()),
        Some(u) if u.state == rakkr_store::UploadState::Cached => {
            let path = state.uploads.cached(&job.node, job.id, name);
            Ok((job, path))
        }
        _ => Err(gone()),
    }
}

/// `GET /recordings/{id}/files/{name}` and, with an API token,
/// `GET /api/v1/recordings/{id}/files/{name}` (recordings.download): the
/// file, as a download, resumable with byte ranges; audited.
pub async fn download(
    State(state): State<AppState>,
    crate::auth::Actor(actor): crate::auth::Actor,
    Path((id, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    let (job, path) = match cached_file(&state, &id, &name).await {
        Ok(found) => found,
        Err(r) => return r,
    };
    let range = range_of(&headers);
    // One record per download: whatever serves the file from its first byte
    // (no range, `bytes=0-`, a range the server answers whole), not each
    // resumed part.
    let len = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
    if matches!(byte_range(range.as_deref(), len), Ok(None | Some((0, _)))) {
        crate::audit::record(
            state.store.clone(),
            rakkr_store::AuditEntry {
                at_ms: state.clock.unix_ms(),
                actor,
                action: "download recording".into(),
                permission: Some(Permission::RecordingsDownload.as_str().into()),
                target: Some(format!("recording:{}/{name}", job.id)),
                outcome: "allowed".into(),
                ..Default::default()
            },
        )
        .await;
    }
    serve_file(path, &name, range, true).await
}

/// `GET /recordings/{id}/play/{name}` (recordings.playback): the file for
/// the page's player (inline, ranges for seeking).
pub async fn play(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    match cached_file(&state, &id, &name).await {
        Ok((_, path)) => serve_file(path, &name, range_of(&headers), false).await,
        Err(r) => r,
    }
}

/// The uploads of the take's files (none when the store cannot say).
async fn uploads_of(state: &AppState, job: &JobRecord) -> Vec<rakkr_store::UploadRecord> {
    let (store, id) = (state.store.clone(), job.id);
    match tokio::task::spawn_blocking(move || store.uploads_of_job(id)).await {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "uploads of a take not read");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

/// The recording page of `job`, with `error` said at its top.
async fn render_detail(
    state: &AppState,
    job: &JobRecord,
    signed_in: &SignedIn,
    error: Option<&str>,
) -> Markup {
    let quality = quality_of(state, job).await;
    let uploads = uploads_of(state, job).await;
    let deliveries = crate::delivery::deliveries_of(&state.store, job.id).await;
    detail_page(job, &uploads, &deliveries, &quality, signed_in, error)
}

/// `GET /recordings/{id}`
pub async fn detail(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
) -> Response {
    match job_of(&state, &id).await {
        Ok(job) => render_detail(&state, &job, &signed_in, None)
            .await
            .into_response(),
        Err(r) => r,
    }
}

/// `GET /api/v1/recordings/{id}/quality`: the take's quality timeline.
pub async fn api_quality(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match job_of(&state, &id).await {
        Ok(job) => job,
        Err(r) => return r,
    };
    match quality_of(&state, &job).await {
        Ok(Some(t)) => Json(t).into_response(),
        Ok(None) => problem(
            StatusCode::CONFLICT,
            format!("recording {id} has not run yet: no timeline"),
        )
        .into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

/// One file of a take and where it is (`GET /api/v1/recordings/{id}/files`).
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct RecordingFile {
    pub name: String,
    pub frames: u64,
    pub bytes: u64,
    /// The upload's record once the node began sending the file; absent
    /// while the file is only on the appliance.
    pub upload: Option<rakkr_store::UploadRecord>,
    /// Its copies to the destinations of its upload policy.
    pub deliveries: Vec<rakkr_store::DeliveryRecord>,
}

/// `GET /api/v1/recordings/{id}/files`: the take's files and their delivery.
pub async fn api_files(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let job = match job_of(&state, &id).await {
        Ok(job) => job,
        Err(r) => return r,
    };
    let mut uploads = uploads_of(&state, &job).await;
    let deliveries = crate::delivery::deliveries_of(&state.store, job.id).await;
    let files: Vec<RecordingFile> = job
        .recording
        .iter()
        .flat_map(|r| &r.files)
        .map(|f| RecordingFile {
            name: f.name.clone(),
            frames: f.frames,
            bytes: f.bytes,
            upload: uploads
                .iter()
                .position(|u| u.name == f.name)
                .map(|i| uploads.swap_remove(i)),
            deliveries: deliveries
                .iter()
                .filter(|d| d.name == f.name)
                .cloned()
                .collect(),
        })
        .collect();
    Json(files).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotesForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    tags: String,
}

/// Set notes and tags; the change for the audit record.
async fn annotate(
    state: &AppState,
    id: JobId,
    notes: String,
    tags: Vec<String>,
) -> Result<(JobRecord, AuditChange), (StatusCode, String)> {
    let store = state.store.clone();
    let done = tokio::task::spawn_blocking(move || store.annotate_job(id, &notes, &tags)).await;
    let view = |j: &JobRecord| serde_json::json!({ "notes": j.notes, "tags": j.tags });
    match done {
        Ok(Ok((before, after))) => {
            let change = AuditChange {
                target: Some(format!("job:{}", after.id)),
                before: Some(view(&before)),
                after: Some(view(&after)),
            };
            Ok((after, change))
        }
        Ok(Err(rakkr_store::StoreError::NoSuchJob(_))) => {
            Err((StatusCode::NOT_FOUND, format!("no recording {id}")))
        }
        Ok(Err(rakkr_store::StoreError::Refused(why))) => {
            Err((StatusCode::UNPROCESSABLE_ENTITY, why))
        }
        _ => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the store is unavailable".into(),
        )),
    }
}

/// `POST /recordings/{id}/notes` (form), then back to the recording.
pub async fn save_notes(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    Form(form): Form<NotesForm>,
) -> Response {
    let job = match job_of(&state, &id).await {
        Ok(j) => j,
        Err(r) => return r,
    };
    let tags = form.tags.split(',').map(str::to_owned).collect();
    match annotate(&state, job.id, form.notes, tags).await {
        Ok((job, change)) => {
            change.to(Redirect::to(&format!("{RECORDINGS_PATH}/{}", job.id)).into_response())
        }
        Err((status, why)) => (
            status,
            render_detail(&state, &job, &signed_in, Some(&why)).await,
        )
            .into_response(),
    }
}

/// What the console's delete form sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    /// The word `delete`, typed: the explicit confirmation.
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    reason: String,
}

/// The word an operator types to confirm a deletion.
pub const DELETE_CONFIRMATION: &str = "delete";

/// `POST /recordings/{id}/delete` (form, recordings.delete): delete the
/// recording everywhere Rakkr holds it, then back to its page, which says so.
pub async fn delete_form(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Response {
    let job = match job_of(&state, &id).await {
        Ok(j) => j,
        Err(r) => return r,
    };
    if !form
        .confirm
        .trim()
        .eq_ignore_ascii_case(DELETE_CONFIRMATION)
    {
        let why = format!("Type “{DELETE_CONFIRMATION}” to confirm: nothing was deleted.");
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            render_detail(&state, &job, &signed_in, Some(&why)).await,
        )
            .into_response();
    }
    match crate::deletion::delete_recording(&state, job.id, &signed_in.actor(), &form.reason).await
    {
        Ok(deleted) => crate::deletion::audit_change(&deleted).to(Redirect::to(&format!(
            "{RECORDINGS_PATH}/{}",
            job.id
        ))
        .into_response()),
        Err(p) => (
            p.status,
            render_detail(&state, &job, &signed_in, Some(&p.detail)).await,
        )
            .into_response(),
    }
}

/// `POST /api/v1/recordings/{id}/delete` `{"reason"}` (optional body)
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteJson {
    /// Why, for the audit log and the recording page (one line, at most 500 bytes).
    #[serde(default)]
    pub reason: String,
}

/// `POST /api/v1/recordings/{id}/delete`: the job as it is now, `deleted`
/// set; the same answer for a second delete.
pub async fn api_delete(
    State(state): State<AppState>,
    crate::auth::Actor(actor): crate::auth::Actor,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(id) = id.parse::<JobId>() else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a recording id"),
        )
        .into_response();
    };
    let body: DeleteJson = if body.iter().all(u8::is_ascii_whitespace) {
        DeleteJson::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response();
            }
        }
    };
    match crate::deletion::delete_recording(&state, id, &actor, &body.reason).await {
        Ok(deleted) => {
            crate::deletion::audit_change(&deleted).to(Json(deleted.after).into_response())
        }
        Err(p) => p.into_response(),
    }
}

/// `GET /api/v1/recordings`
pub async fn api_list(
    State(state): State<AppState>,
    query: Result<Query<RecordingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    match find(&state, &q).await {
        Ok(found) => {
            let mut res = Json(found.recordings).into_response();
            if let Some(before) = found.next_before {
                res.headers_mut().insert(
                    axum::http::header::HeaderName::from_static("x-next-before"),
                    axum::http::HeaderValue::from_str(&before.to_string())
                        .expect("a job id is a header value"),
                );
            }
            res
        }
        Err(why) => problem(StatusCode::BAD_REQUEST, why).into_response(),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotesJson {
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `POST /api/v1/recordings/{id}/notes` `{"notes", "tags"}`
pub async fn api_notes(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<NotesJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(id) = id.parse::<JobId>() else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("{id:?} is not a recording id"),
        )
        .into_response();
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return problem(e.status(), e.body_text()).into_response(),
    };
    match annotate(&state, id, body.notes, body.tags).await {
        Ok((job, change)) => change.to(Json(job).into_response()),
        Err((status, why)) => problem(status, why).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{byte_range, page_of};

    #[test]
    fn pages_go_on_where_the_last_one_stopped() {
        // Items 100, 99, … newest first; even ones match.
        let read = |from: u32, n: u32| (0..n).map(|i| from - i).collect::<Vec<_>>();
        let even = |i: &u32| i.is_multiple_of(2);
        // Full before the end of what was read: on after the last shown.
        assert_eq!(
            page_of(read(100, 10), |i| *i, even, 3, 10),
            (vec![100, 98, 96], Some(96))
        );
        // All the look-back read without filling the page: on after the last read.
        assert_eq!(
            page_of(read(100, 10), |i| *i, |i| *i > 95, 10, 10),
            (vec![100, 99, 98, 97, 96], Some(91))
        );
        // Fewer read than the look-back: that was everything.
        assert_eq!(
            page_of(read(6, 6), |i| *i, even, 10, 10),
            (vec![6, 4, 2], None)
        );
        // Full with older items read: on after the last shown.
        assert_eq!(
            page_of(read(6, 6), |i| *i, even, 3, 10),
            (vec![6, 4, 2], Some(2))
        );
        // Full on the very last item there was: nothing older.
        assert_eq!(
            page_of(read(6, 5), |i| *i, even, 3, 10),
            (vec![6, 4, 2], None)
        );
        // Full on the last item read, but the look-back ran out: maybe more.
        assert_eq!(
            page_of(read(6, 5), |i| *i, |i| *i > 3, 3, 5),
            (vec![6, 5, 4], Some(4))
        );
        assert_eq!(
            page_of(Vec::<u32>::new(), |i| *i, even, 3, 10),
            (vec![], None)
        );
    }

    #[test]
    fn players_get_the_ranges_they_ask_for() {
        assert_eq!(byte_range(None, 100), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(byte_range(Some("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(byte_range(Some("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(
            byte_range(Some("bytes=50-500"), 100),
            Ok(Some((50, 99))),
            "clipped"
        );
        assert_eq!(
            byte_range(Some("bytes=0-1,5-6"), 100),
            Ok(None),
            "several: all"
        );
        assert_eq!(byte_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=9-3"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=x-"), 100), Err(()));
        assert_eq!(byte_range(Some("bytes=0-"), 0), Err(()));
        assert_eq!(
            byte_range(Some("items=0-1"), 100),
            Ok(None),
            "other units: all"
        );
    }
}
