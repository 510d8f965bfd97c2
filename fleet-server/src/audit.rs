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

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rakkr_store::{AUDIT_GENESIS, AuditEntry, Store, verify_audit_chain};
use serde::Deserialize;

use crate::http::{AppState, problem};

/// Most records one API call returns.
pub const MAX_PAGE: usize = 1000;

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
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "'-1");
    }
}
