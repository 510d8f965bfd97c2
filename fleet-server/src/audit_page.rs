//! The console's audit log page: search by actor, outcome, text and time,
//! newest first, one page of [`PAGE_ROWS`] at a time, with a CSV export of
//! the same search. Reads work without JavaScript (a GET form).

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use rakkr_store::{AuditPage, AuditRecord, MAX_AUDIT_SCAN};

use crate::audit::{PAGE_ROWS, SearchQuery, search_blocking};
use crate::auth::SignedIn;
use crate::console::{console_page, utc_seconds};
use crate::http::AppState;

pub const AUDIT_PATH: &str = "/audit";

/// `GET /audit?…`
pub async fn page(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (q, problem) = match query {
        Ok(Query(q)) => (q, None),
        Err(e) => (SearchQuery::default(), Some(e.body_text())),
    };
    let result = match (&problem, q.search(PAGE_ROWS)) {
        (Some(p), _) => Err(p.clone()),
        (None, Err(why)) => Err(why),
        (None, Ok(search)) => search_blocking(&state, search).await,
    };
    let status = if result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (status, audit_page(&q, result.as_ref(), &signed_in)).into_response()
}

fn audit_page(
    q: &SearchQuery,
    result: Result<&AuditPage, &String>,
    signed_in: &SignedIn,
) -> Markup {
    let export = SearchQuery {
        before: None,
        limit: Some(crate::audit::MAX_PAGE),
        format: Some("csv".into()),
        ..q.clone()
    };
    console_page(
        "Audit log",
        signed_in,
        html! {},
        html! {
            h1 { "Audit log" }
            form.search method="get" action=(AUDIT_PATH) role="search" {
                label { "Actor" input type="text" name="actor" value=(q.actor) placeholder="user:olga, token:…, node:…"; }
                label { "Outcome"
                    select name="outcome" {
                        @for (value, label) in [("", "any"), ("allowed", "allowed"), ("denied", "denied"), ("failed", "failed")] {
                            option value=(value) selected[q.outcome == value] { (label) }
                        }
                    }
                }
                label { "Text" input type="text" name="q" value=(q.q) placeholder="action, target, reason"; }
                label { "From (UTC)" input type="datetime-local" name="from" value=(q.from); }
                label { "To (UTC)" input type="datetime-local" name="to" value=(q.to); }
                button type="submit" { "Search" }
                a.export href={ "/api/v1/audit/search?" (export.to_query()) } download="audit.csv" { "Export CSV" }
            }
            @match result {
                Err(why) => { p.error role="alert" { (why) } }
                Ok(page) => { (results(q, page)) }
            }
        },
    )
}

fn results(q: &SearchQuery, page: &AuditPage) -> Markup {
    html! {
        @if page.records.is_empty() {
            p.muted { "No records match." }
        } @else {
            table.audit {
                thead { tr { th { "#" } th { "When (UTC)" } th { "Actor" } th { "Action" } th { "Target" } th { "Outcome" } th { "Reason / change" } } }
                tbody { @for r in &page.records { (row(r)) } }
            }
        }
        p.muted {
            (page.records.len()) " shown; " (page.scanned) " records examined"
            @if page.scanned >= MAX_AUDIT_SCAN { " (the most one page examines)" }
            "."
        }
        @if let Some(before) = page.next_before {
            @let next = SearchQuery { before: Some(before), ..q.clone() };
            a.older href={ (AUDIT_PATH) "?" (next.to_query()) } { "Older records →" }
        }
    }
}

fn row(r: &AuditRecord) -> Markup {
    let e = &r.entry;
    html! {
        tr data-seq=(r.seq) data-outcome=(e.outcome) {
            td { (r.seq) }
            td.nowrap { (utc_seconds(e.at_ms).trim_end_matches(" UTC")) }
            td { code { (e.actor) } }
            td { (e.action) @if let Some(p) = &e.permission { div.muted { "needs " (p) } } }
            td { @if let Some(t) = &e.target { code { (t) } } }
            td { span class={ "badge outcome " (e.outcome) } { (e.outcome) } }
            td {
                @if let Some(reason) = &e.reason { div { (reason) } }
                @if e.before.is_some() || e.after.is_some() {
                    details {
                        summary { "change" }
                        dl.change {
                            dt { "before" } dd { code { (json(&e.before)) } }
                            dt { "after" } dd { code { (json(&e.after)) } }
                        }
                    }
                }
            }
        }
    }
}

fn json(v: &Option<serde_json::Value>) -> String {
    v.as_ref().map_or_else(|| "—".to_owned(), |v| v.to_string())
}
