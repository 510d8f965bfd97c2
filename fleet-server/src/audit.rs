//! The audit log's writers and its API.
//!
//! Recorded (in the store's hash-chained log, [`rakkr_store::AuditRecord`]):
//! every request the access check refuses (anonymous, missing permission,
//! missing or wrong CSRF token, bad API token), every state-changing request
//! it lets through with how it ended (`allowed`, or `failed` when the handler
//! refused it), logins (both outcomes) and the admin socket's commands.
//! Handlers that change something attach an [`AuditChange`] to their
//! response (target, before, after); the access check puts it in the record.
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
use rakkr_store::{
    AUDIT_GENESIS, AuditEntry, AuditPage, AuditRecord, AuditSearch, Store, verify_audit_chain,
};
use serde::Deserialize;

use crate::http::{AppState, problem};

/// Most records one API call returns.
pub const MAX_PAGE: usize = 1000;

/// Anonymous refusals recorded per client address and minute.
pub const ANONYMOUS_PER_MINUTE: u32 = 60;
/// Client addresses the budget tracks at once.
const MAX_ADDRESSES: usize = 10_000;

/// How many anonymous refusals each address may still have recorded.
#[derive(Debug)]
pub struct AnonymousBudget {
    /// Per address: the minute's start, records in it, refusals left out.
    windows: std::sync::Mutex<std::collections::HashMap<String, (u64, u32, u64)>>,
    per_minute: u32,
}

impl Default for AnonymousBudget {
    fn default() -> Self {
        AnonymousBudget::new(ANONYMOUS_PER_MINUTE)
    }
}

impl AnonymousBudget {
    /// Record at most `per_minute` refusals per address and minute.
    pub fn new(per_minute: u32) -> AnonymousBudget {
        AnonymousBudget {
            windows: Default::default(),
            per_minute,
        }
    }

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
        if w.1 < self.per_minute {
            w.1 += 1;
            (true, left_out)
        } else {
            w.2 += 1;
            (false, left_out)
        }
    }
}

/// What a handler changed, attached to its response's extensions for the
/// access check's audit record.
#[derive(Debug, Clone, Default)]
pub struct AuditChange {
    pub target: Option<String>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

impl AuditChange {
    /// Attach this change to `response`.
    pub fn to(self, mut response: Response) -> Response {
        response.extensions_mut().insert(self);
        response
    }
}

/// Append `entry` now (on a blocking thread already).
pub fn record_now(store: &dyn Store, entry: AuditEntry) {
    let action = entry.action.clone();
    if let Err(e) = store.append_audit(entry) {
        tracing::error!(error = %e, %action, "audit record not written");
    }
}

/// Append `entry` off the async threads.
pub async fn record(store: Arc<dyn Store>, entry: AuditEntry) {
    let action = entry.action.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || record_now(&*store, entry)).await {
        tracing::error!(error = %e, %action, "audit task failed");
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    let csv = match wants_csv(q.format.as_deref()) {
        Ok(csv) => csv,
        Err(p) => return p.into_response(),
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
        return (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::HeaderName::from_static("x-audit-chain"), chain),
            ],
            csv_of(&records),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({ "chain": chain, "records": records })).into_response()
}

/// `format=json` (the default) or `format=csv`.
pub(crate) fn wants_csv(format: Option<&str>) -> Result<bool, crate::http::Problem> {
    match format {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(problem(
            StatusCode::BAD_REQUEST,
            format!("unknown format {other:?} (json or csv)"),
        )),
    }
}

/// Records as CSV (RFC 4180, a header line first); before/after as JSON.
pub fn csv_of(records: &[AuditRecord]) -> String {
    let json =
        |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_default();
    csv_table(
        "seq,at_ms,actor,permission,action,target,outcome,reason,before,after,sha256",
        records.iter().map(|r| {
            let e = &r.entry;
            vec![
                r.seq.to_string(),
                e.at_ms.to_string(),
                e.actor.clone(),
                e.permission.clone().unwrap_or_default(),
                e.action.clone(),
                e.target.clone().unwrap_or_default(),
                e.outcome.clone(),
                e.reason.clone().unwrap_or_default(),
                json(&e.before),
                json(&e.after),
                r.sha256.clone(),
            ]
        }),
    )
}

/// A CSV document (RFC 4180): the header line, then a line per row, every
/// field quoted as needed and never read as a spreadsheet formula.
pub fn csv_table(header: &str, rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut out = format!("{header}\r\n");
    for fields in rows {
        out.push_str(
            &fields
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push_str("\r\n");
    }
    out
}

/// The filters of an audit search, as a query string sends them (the
/// console's form and `GET /api/v1/audit/search`). Empty fields are no filter.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actor: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub outcome: String,
    /// Text in the action, target, permission or reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub q: String,
    /// From this time: ms since the epoch, or `YYYY-MM-DDTHH:MM` in UTC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// Up to this time, likewise (a minute includes its last millisecond).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to: String,
    /// Records older than this sequence number (the next page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// `json` (default) or `csv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// Records one console page shows.
pub const PAGE_ROWS: usize = 100;

impl SearchQuery {
    /// The store's search, or what is wrong with the query.
    pub fn search(&self, default_limit: usize) -> Result<AuditSearch, String> {
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let outcome = text(&self.outcome);
        if let Some(o) = &outcome
            && !["allowed", "denied", "failed"].contains(&o.as_str())
        {
            return Err(format!("unknown outcome {o:?} (allowed, denied or failed)"));
        }
        let from_ms = text(&self.from).map(|t| time_ms(&t, false)).transpose()?;
        let to_ms = text(&self.to).map(|t| time_ms(&t, true)).transpose()?;
        Ok(AuditSearch {
            before: self.before,
            actor: text(&self.actor),
            outcome,
            text: text(&self.q),
            from_ms,
            to_ms,
            limit: self.limit.unwrap_or(default_limit).clamp(1, MAX_PAGE),
        })
    }

    /// This query as a query string (for links to other pages of it).
    pub fn to_query(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }
}

/// `ms` since the epoch, or `YYYY-MM-DDTHH:MM[:SS]` in UTC; `end_of` makes a
/// minute (or second) mean its last millisecond.
pub fn time_ms(text: &str, end_of: bool) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || format!("{text:?} is not a time (YYYY-MM-DDTHH:MM in UTC, or ms since 1970)");
    let (date, time) = text.split_once(['T', ' ']).ok_or_else(bad)?;
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.trim_end_matches('Z').split(':').collect();
    let ([y, mo, da], [h, mi, rest @ ..]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    let (y, mo, da, h, mi) = (num(y)?, num(mo)?, num(da)?, num(h)?, num(mi)?);
    let s = match rest {
        [] => None,
        [s] => Some(num(s)?),
        _ => return Err(bad()),
    };
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&da)
        || !(0..24).contains(&h)
        || !(0..60).contains(&mi)
        || s.is_some_and(|s| !(0..60).contains(&s))
    {
        return Err(bad());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s.unwrap_or(0);
    let span = if s.is_some() { 999 } else { 59_999 };
    Ok(secs as u64 * 1000 + if end_of { span } else { 0 })
}

/// `GET /api/v1/audit/search`: records matching [`SearchQuery`], newest
/// first, with where to go on (`next_before`).
pub async fn api_search(
    State(state): State<AppState>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let csv = match wants_csv(q.format.as_deref()) {
        Ok(csv) => csv,
        Err(p) => return p.into_response(),
    };
    let search = match q.search(PAGE_ROWS) {
        Ok(s) => s,
        Err(why) => return problem(StatusCode::BAD_REQUEST, why).into_response(),
    };
    let page = match search_blocking(&state, search).await {
        Ok(p) => p,
        Err(why) => return problem(StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    };
    if csv {
        let mut res = (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            csv_of(&page.records),
        )
            .into_response();
        if let Some(b) = page.next_before {
            res.headers_mut().insert(
                header::HeaderName::from_static("x-next-before"),
                header::HeaderValue::from(b),
            );
        }
        return res;
    }
    axum::Json(serde_json::json!({
        "records": page.records,
        "next_before": page.next_before,
        "scanned": page.scanned,
    }))
    .into_response()
}

pub async fn search_blocking(state: &AppState, search: AuditSearch) -> Result<AuditPage, String> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.search_audit(&search)).await {
        Ok(Ok(page)) => Ok(page),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "audit search failed");
            Err("the store is unavailable".into())
        }
        Err(_) => Err("the search failed".into()),
    }
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
    fn search_times_read_as_utc_minutes_or_milliseconds() {
        assert_eq!(time_ms("1796045837123", false), Ok(1_796_045_837_123));
        assert_eq!(time_ms("2026-11-30T13:37", false), Ok(1_796_045_820_000));
        assert_eq!(time_ms("2026-11-30T13:37", true), Ok(1_796_045_879_999));
        assert_eq!(time_ms("2026-11-30 13:37:17", false), Ok(1_796_045_837_000));
        assert_eq!(time_ms("2000-02-29T00:00", false), Ok(951_782_400_000));
        assert_eq!(time_ms("1970-01-01T00:00", false), Ok(0));
        for bad in [
            "yesterday",
            "2026-13-01T00:00",
            "2026-11-30",
            "2026-11-30T25:00",
            "2026-11-30T10:00:00:00",
        ] {
            assert!(time_ms(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_search_query_is_checked_and_round_trips() {
        let q = SearchQuery {
            actor: " user:olga ".into(),
            outcome: "denied".into(),
            q: "".into(),
            from: "2026-11-30T13:37".into(),
            before: Some(10),
            ..Default::default()
        };
        let s = q.search(100).unwrap();
        assert_eq!(s.actor.as_deref(), Some("user:olga"));
        assert_eq!(
            (s.text, s.from_ms, s.to_ms, s.limit),
            (None, Some(1_796_045_820_000), None, 100)
        );
        let again: SearchQuery = serde_urlencoded::from_str(&q.to_query()).unwrap();
        assert_eq!(again.search(100).unwrap().before, Some(10));
        let bad = SearchQuery {
            outcome: "maybe".into(),
            ..Default::default()
        };
        assert!(bad.search(100).is_err());
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
