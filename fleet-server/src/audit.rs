//! The audit log's writers and its API.
//!
//! Recorded (in the store's hash-chained log, [`rakkr_store::AuditRecord`]):
//! every request the access check refuses (anonymous, missing permission,
//! missing or wrong CSRF token, bad API token), every state-changing request
//! it lets through with how it ended (`allowed`, or `failed` when the handler
//! refused it), logins (both outcomes) and the admin socket's commands.
//! Not yet: node and background-runner actions, before/after values.
//!
//! A failure to write the audit record is logged as an error; the request's
//! own outcome is not changed by it.
//!
//! Bound: refusals of anonymous requests are recorded at most
//! [`ANONYMOUS_PER_MINUTE`] per client address and minute; the rest are
//! counted, and the first record of the address's next minute says how many
//! were left out. A scanner cannot grow the log faster than that per address.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rakkr_store::{AUDIT_GENESIS, AuditEntry, Store, verify_audit_chain};
use serde::Deserialize;

use crate::http::{AppState, problem};

/// Most records one API call returns.
pub const MAX_PAGE: usize = 1000;

/// Anonymous refusals recorded per client address and minute.
pub const ANONYMOUS_PER_MINUTE: u32 = 60;
/// Client addresses the budget tracks at once.
const MAX_ADDRESSES: usize = 10_000;

/// How many anonymous refusals each address may still have recorded.
#[derive(Debug, Default)]
pub struct AnonymousBudget {
    /// Per address: the minute's start, records in it, refusals left out.
    windows: std::sync::Mutex<std::collections::HashMap<String, (u64, u32, u64)>>,
}

impl AnonymousBudget {
    /// Whether to record a refusal from `address` at `now_ms`, and how many
    /// were left out in the address's previous minute (to say so).
    pub fn admit(&self, address: &str, now_ms: u64) -> (bool, u64) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= MAX_ADDRESSES && !windows.contains_key(address) {
            windows.retain(|_, (start, _, skipped)| {
                now_ms.saturating_sub(*start) < 60_000 || *skipped > 0
            });
            if windows.len() >= MAX_ADDRESSES {
                return (false, 0);
            }
        }
        let w = windows.entry(address.to_owned()).or_insert((now_ms, 0, 0));
        let mut left_out = 0;
        if now_ms.saturating_sub(w.0) >= 60_000 {
            left_out = w.2;
            *w = (now_ms, 0, 0);
        }
        if w.1 < ANONYMOUS_PER_MINUTE {
            w.1 += 1;
            (true, left_out)
        } else {
            w.2 += 1;
            (false, left_out)
        }
    }
}

/// Append `entry` off the async threads.
pub async fn record(store: Arc<dyn Store>, entry: AuditEntry) {
    let action = entry.action.clone();
    match tokio::task::spawn_blocking(move || store.append_audit(entry)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, %action, "audit record not written"),
        Err(e) => tracing::error!(error = %e, %action, "audit task failed"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// `GET /api/v1/audit?after=SEQ&limit=N&format=json|csv`: records after
/// `after`, oldest first, with the chain checked from the record before them.
pub async fn api_audit(State(state): State<AppState>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("unknown format {other:?} (json or csv)"),
            )
            .into_response();
        }
    };
    let store = state.store.clone();
    let after = q.after;
    let read = tokio::task::spawn_blocking(move || {
        let prev = match after {
            0 => Some(AUDIT_GENESIS.to_owned()),
            n => store
                .audit_records(n - 1, 1)?
                .first()
                .map(|r| r.sha256.clone()),
        };
        Ok::<_, rakkr_store::StoreError>((prev, store.audit_records(after, limit)?))
    })
    .await;
    let (prev, records) = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let chain = match prev {
        None => "unknown (no record before this page)".to_owned(),
        Some(prev) => match verify_audit_chain(&prev, &records) {
            Ok(()) => "ok".to_owned(),
            Err(seq) => format!("broken at record {seq}"),
        },
    };
    if csv {
        let mut out =
            String::from("seq,at_ms,actor,permission,action,target,outcome,reason,sha256\r\n");
        for r in &records {
            let e = &r.entry;
            let fields = [
                r.seq.to_string(),
                e.at_ms.to_string(),
                e.actor.clone(),
                e.permission.clone().unwrap_or_default(),
                e.action.clone(),
                e.target.clone().unwrap_or_default(),
                e.outcome.clone(),
                e.reason.clone().unwrap_or_default(),
                r.sha256.clone(),
            ];
            out.push_str(
                &fields
                    .iter()
                    .map(|f| csv_field(f))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push_str("\r\n");
        }
        return (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::HeaderName::from_static("x-audit-chain"), chain),
            ],
            out,
        )
            .into_response();
    }
    axum::Json(serde_json::json!({ "chain": chain, "records": records })).into_response()
}

/// One CSV field (RFC 4180), and never a spreadsheet formula.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_refusals_are_bounded_per_address_and_minute() {
        let budget = AnonymousBudget::default();
        let admitted = (0..100)
            .filter(|i| budget.admit("10.0.0.1", 1_000 + i).0)
            .count();
        assert_eq!(admitted, ANONYMOUS_PER_MINUTE as usize);
        assert!(
            budget.admit("10.0.0.2", 1_100).0,
            "another address has its own budget"
        );
        // The next minute: recorded again, and told how many were left out.
        assert_eq!(budget.admit("10.0.0.1", 61_000), (true, 40));
        assert_eq!(budget.admit("10.0.0.1", 61_001), (true, 0));
    }

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "'-1");
    }
}
