//! The appliance's retention: which takes' files may go, and when.
//!
//! Only files the server confirmed it holds, verified (the upload queue's
//! `confirmed` entries, kept because `delete_confirmed` is off), are ever
//! deleted here; a file not yet uploaded is never touched, whatever the
//! disk. Rules, in this order, oldest confirmed file first:
//!
//! - `delete_confirmed`: every confirmed file goes (the uploader deletes a
//!   file when it is confirmed; this catches files kept under a policy that
//!   has since changed);
//! - `max_age_days`: a file confirmed this long ago goes;
//! - `max_mb`: while the recordings directory holds more, the oldest goes;
//! - `min_free_mb`: while the disk has less free space, the oldest goes —
//!   so recording never stops for want of space while uploaded takes could
//!   make room (the watchdog's `disk_pressure` warns before that, and for
//!   takes that cannot be deleted).
//!
//! The runner looks every [`RETENTION_EVERY`]; each deletion is logged with
//! the rule that made it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use crate::upload::QueuedFile;

/// How often the rules are applied.
pub const RETENTION_EVERY: Duration = Duration::from_secs(5);

/// The rules in force: the server's for this node (its retention policy,
/// `cmd/retention`), else `[retention]` and `[upload] delete_confirmed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionRules {
    /// A confirmed file goes at once.
    pub delete_confirmed: bool,
    pub max_age_ms: Option<u64>,
    pub max_bytes: Option<u64>,
    pub min_free_bytes: u64,
}

impl RetentionRules {
    /// The rules of a policy (validated by whoever made it).
    pub fn of(policy: &rakkr_protocol::retention::ApplianceRetention) -> RetentionRules {
        RetentionRules {
            delete_confirmed: policy.delete_confirmed,
            max_age_ms: policy.max_age_days.map(|d| u64::from(d) * 86_400_000),
            max_bytes: policy.max_mb.map(|m| m << 20),
            min_free_bytes: policy.min_free_mb << 20,
        }
    }
}

/// A confirmed file that may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletable {
    pub job: u128,
    pub name: String,
    pub bytes: u64,
    /// When it was queued (its take ended), ms since the epoch.
    pub since_ms: u64,
}

/// Which rule deletes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The policy deletes every confirmed file (it changed to say so after
    /// the file was confirmed and kept).
    Confirmed,
    Age,
    Size,
    FreeSpace,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Confirmed => "delete_confirmed",
            Reason::Age => "max_age_days",
            Reason::Size => "max_mb",
            Reason::FreeSpace => "min_free_mb",
        }
    }
}

/// The files to delete (indexes into `files`) and why, oldest first, given
/// how many bytes the recordings use and how many are free now.
pub fn choose(
    rules: &RetentionRules,
    files: &[Deletable],
    now_ms: u64,
    used_bytes: u64,
    free_bytes: u64,
) -> Vec<(usize, Reason)> {
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| (files[i].since_ms, files[i].job, files[i].name.clone()));
    let (mut used, mut free) = (used_bytes, free_bytes);
    let mut out = Vec::new();
    for i in order {
        let f = &files[i];
        let reason = if rules.delete_confirmed {
            Reason::Confirmed
        } else if rules
            .max_age_ms
            .is_some_and(|age| now_ms.saturating_sub(f.since_ms) >= age)
        {
            Reason::Age
        } else if rules.max_bytes.is_some_and(|max| used > max) {
            Reason::Size
        } else if free < rules.min_free_bytes {
            Reason::FreeSpace
        } else {
            // Oldest first: a younger file is kept for the same reasons.
            break;
        };
        used = used.saturating_sub(f.bytes);
        free = free.saturating_add(f.bytes);
        out.push((i, reason));
    }
    out
}

/// Apply the rules in force every [`RETENTION_EVERY`] until `shutdown`.
pub async fn run(
    rules: tokio::sync::watch::Receiver<RetentionRules>,
    dir: PathBuf,
    outbox: Arc<Outbox>,
    clock: Arc<dyn crate::clock::Clock>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(RETENTION_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let rules = *rules.borrow();
        let (outbox, dir, now) = (outbox.clone(), dir.clone(), clock.unix_ms());
        let done = tokio::task::spawn_blocking(move || apply(&rules, &dir, &outbox, now)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "retention could not look at the recordings");
        }
    }
}

fn apply(
    rules: &RetentionRules,
    dir: &std::path::Path,
    outbox: &Outbox,
    now_ms: u64,
) -> Result<(), String> {
    let files: Vec<Deletable> = outbox
        .uploads()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|(job, name, entry)| {
            let entry: QueuedFile = serde_json::from_slice(&entry).ok()?;
            entry.confirmed.then_some(Deletable {
                job,
                name,
                bytes: entry.bytes,
                since_ms: entry.queued_ms,
            })
        })
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    let used = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    let (free, _) = crate::watchdog::disk_space(dir).map_err(|e| e.to_string())?;
    for (i, reason) in choose(rules, &files, now_ms, used, free) {
        let f = &files[i];
        let path = dir.join(&f.name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "retention cannot delete the file");
                continue;
            }
        }
        outbox
            .set_upload(f.job, &f.name, None)
            .map_err(|e| e.to_string())?;
        tracing::info!(file = %f.name, bytes = f.bytes, rule = reason.as_str(), "deleted an uploaded take file (the server holds it, verified)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(job: u128, since_ms: u64, bytes: u64) -> Deletable {
        Deletable {
            job,
            name: format!("{job}.flac"),
            bytes,
            since_ms,
        }
    }

    #[test]
    fn the_oldest_uploaded_files_go_first_and_only_as_far_as_the_rules_ask() {
        let files = [file(3, 300, 10), file(1, 100, 10), file(2, 200, 10)];
        let rules = RetentionRules {
            delete_confirmed: false,
            max_age_ms: None,
            max_bytes: None,
            min_free_bytes: 25,
        };
        // 10 free, 25 wanted: the two oldest go.
        assert_eq!(
            choose(&rules, &files, 1_000, 30, 10),
            [(1, Reason::FreeSpace), (2, Reason::FreeSpace)]
        );
        // Enough free: none.
        assert!(choose(&rules, &files, 1_000, 30, 25).is_empty());
        // Age first, then size.
        let rules = RetentionRules {
            delete_confirmed: false,
            max_age_ms: Some(850),
            max_bytes: Some(15),
            min_free_bytes: 0,
        };
        assert_eq!(
            choose(&rules, &files, 1_000, 30, 1_000),
            [(1, Reason::Age), (2, Reason::Size)]
        );
        // Nothing to delete when nothing is uploaded.
        assert!(choose(&rules, &[], 1_000, 1_000, 0).is_empty());
        // A policy that deletes confirmed files: every one goes, oldest first.
        let rules = RetentionRules {
            delete_confirmed: true,
            max_age_ms: None,
            max_bytes: None,
            min_free_bytes: 0,
        };
        assert_eq!(
            choose(&rules, &files, 1_000, 30, 1_000),
            [
                (1, Reason::Confirmed),
                (2, Reason::Confirmed),
                (0, Reason::Confirmed)
            ]
        );
    }
}
