//! Deleting a recording (decision 0020): from everywhere Rakkr manages it,
//! `recordings.delete`, in the console (`POST /recordings/{id}/delete`, with
//! an explicit confirmation) and the API (`POST /api/v1/recordings/{id}/delete`).
//!
//! The steps, in order:
//! 1. The store marks the job `deleted` (who, when, why), cancels its
//!    deliveries that have not arrived and keeps an order for its node, in one
//!    transaction ([`rakkr_store::Store::delete_job`]). Only a job in a final
//!    state; a second delete changes nothing. From here on the node's uploads
//!    of the take are refused with 410 ([`crate::uploads`]).
//! 2. The server's copies go: each file of the take in the cache or in
//!    staging, under the file's upload lock (so a chunk in flight finishes
//!    first and the next one is refused), file first, then its upload record
//!    says `removed_ms`; each is audited as `delete server copy`. A crash
//!    between 1 and 2 is finished by server retention's next pass
//!    ([`remove_copy`] serves both).
//! 3. The node is sent `delete` on `cmd/jobs` now, and again with the answer
//!    to each of its claims until it reports the take `deleted` (the desk,
//!    [`crate::jobs`]): a node offline for days gets it when it comes back.
//!
//! Copies a destination already holds are archives and stay: the recording
//! page lists them with their keys and says so.

use axum::http::StatusCode;
use rakkr_protocol::JobId;
use rakkr_protocol::job::JobCommand;
use rakkr_store::{AuditEntry, Deleted, JobRecord, Store, StoreError, UploadRecord};

use crate::http::{AppState, Problem, problem};
use crate::uploads::Uploads;

/// Delete the server's copies of one file of a deleted recording (cached,
/// staged, or both: the record is read again here, so a completion that
/// moved the file meanwhile is seen), then record `removed_ms` (and drop the
/// waveform preview: it is drawn from the audio) and audit it as `actor`.
/// `Ok(false)`: nothing was there and the record says so already.
pub fn remove_copy(
    store: &dyn Store,
    uploads: &Uploads,
    deleted: &JobRecord,
    name: &str,
    actor: &str,
    now_ms: u64,
) -> Result<bool, String> {
    let (node, job, why) = (&deleted.node, deleted.id, why_removed(deleted));
    let record = store
        .upload(job, name)
        .map_err(|e| format!("the upload record not read: {e}"))?;
    let on_disk = uploads.holds(node, job, name);
    if !on_disk && record.as_ref().is_none_or(|r| r.removed_ms.is_some()) {
        return Ok(false);
    }
    let removed = uploads
        .remove_copy(node, job, name)
        .and_then(|()| match &record {
            Some(r) if r.removed_ms.is_none() || r.waveform.is_some() => store
                .put_upload(&UploadRecord {
                    removed_ms: Some(r.removed_ms.unwrap_or(now_ms)),
                    waveform: None,
                    ..r.clone()
                })
                .map_err(|e| format!("deleted, not recorded: {e}")),
            _ => Ok(()),
        });
    let (outcome, reason) = match &removed {
        Ok(()) => ("allowed", why),
        Err(e) => ("failed", e.clone()),
    };
    crate::audit::record_now(
        store,
        AuditEntry {
            at_ms: now_ms,
            actor: actor.to_owned(),
            action: "delete server copy".into(),
            target: Some(format!("recording:{job}/{name}")),
            outcome: outcome.into(),
            reason: Some(reason),
            before: Some(serde_json::json!({
                "node": node.as_str(),
                "bytes": record.as_ref().map(|r| r.length),
                "sha256": record.as_ref().and_then(|r| r.sha256.clone()),
                "state": record.as_ref().map(|r| r.state),
            })),
            ..Default::default()
        },
    );
    removed.map(|()| true)
}

/// Why a deleted recording's copies go, for their audit records.
pub fn why_removed(job: &JobRecord) -> String {
    match &job.deleted {
        Some(d) => format!("its recording was deleted by {}", d.by),
        None => "its recording was deleted".into(),
    }
}

fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::NoSuchJob(id) => problem(StatusCode::NOT_FOUND, format!("no recording {id}")),
        StoreError::Refused(why) if why.contains("stop or cancel") => {
            problem(StatusCode::CONFLICT, why)
        }
        StoreError::Refused(why) => problem(StatusCode::UNPROCESSABLE_ENTITY, why),
        e => {
            tracing::error!(error = %e, "deleting a recording: store failure");
            problem(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
        }
    }
}

/// Delete recording `id` as `actor` (steps 1 to 3 above). The outcome says
/// whether it was deleted before; the copies that could not be deleted now
/// are logged, audited as failed and left to server retention.
pub async fn delete_recording(
    state: &AppState,
    id: JobId,
    actor: &str,
    reason: &str,
) -> Result<Deleted, Problem> {
    let (store, by, why, now) = (
        state.store.clone(),
        actor.to_owned(),
        reason.to_owned(),
        state.clock.unix_ms(),
    );
    let deleted = tokio::task::spawn_blocking(move || store.delete_job(id, &by, &why, now))
        .await
        .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(store_problem)?;
    if deleted.already {
        return Ok(deleted);
    }
    let job = deleted.after.clone();
    tracing::info!(job = %job.id, node = %job.node, by = actor, cancelled_deliveries = deleted.cancelled_deliveries, "recording deleted");
    // On a task of its own: a client that goes away does not cut it short.
    let (state, actor) = (state.clone(), actor.to_owned());
    let copies = tokio::spawn(async move {
        remove_server_copies(&state, &job, &actor).await;
        state.commands.send(crate::jobs::Outbound::Command(
            job.node.clone(),
            JobCommand::Delete { job_id: job.id },
        ));
    });
    if let Err(e) = copies.await {
        tracing::error!(job = %id, error = %e, "deleting a recording's server copies failed; server retention tries again");
    }
    Ok(deleted)
}

/// Step 2: every file of `job`'s take the server may hold (its upload
/// records and its report's file names), each under its upload lock.
async fn remove_server_copies(state: &AppState, job: &JobRecord, actor: &str) {
    let (store, id) = (state.store.clone(), job.id);
    let mut names: std::collections::BTreeSet<String> =
        tokio::task::spawn_blocking(move || store.uploads_of_job(id))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
            .into_iter()
            .map(|u| u.name)
            .collect();
    names.extend(
        job.recording
            .iter()
            .flat_map(|r| r.files.iter().map(|f| f.name.clone())),
    );
    for name in names {
        // A request in flight finishes first; the next one finds the job deleted.
        let _held = state.uploads.lock(id, &name).lock().await;
        // What followed the file as it arrived stops: its hash and decode,
        // and any S3 copy started early (its multipart upload aborts).
        state.uploads.followers.discard(id, &name);
        state.uploads.early.discard(id, &name);
        let (store, files, job, actor) = (
            state.store.clone(),
            state.uploads.clone(),
            job.clone(),
            actor.to_owned(),
        );
        let now = state.clock.unix_ms();
        let done = tokio::task::spawn_blocking(move || {
            remove_copy(&*store, &files, &job, &name, &actor, now)
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::error!(job = %id, error = %e, "a deleted recording's server copy not deleted; server retention tries again");
        }
    }
}

/// What the audit record keeps of a deletion.
pub fn audit_change(deleted: &Deleted) -> crate::audit::AuditChange {
    let view = |j: &JobRecord| {
        let mut v = crate::jobs::audit_view(j);
        v["title"] = serde_json::json!(j.title);
        v["files"] = serde_json::json!(
            j.recording.as_ref().map(|r| r
                .files
                .iter()
                .map(|f| f.name.clone())
                .collect::<Vec<_>>())
        );
        v["deleted"] = serde_json::json!(j.deleted);
        v
    };
    crate::audit::AuditChange {
        target: Some(format!("job:{}", deleted.after.id)),
        before: Some(view(&deleted.before)),
        after: Some(view(&deleted.after)),
    }
}
