//! The delivery queue as operators see it (decision 0017): every file's
//! delivery to every destination, filterable by state, and a retry for
//! deliveries that failed (or are waiting) — `GET /api/v1/deliveries`,
//! `POST /api/v1/deliveries/retry`, and the console's `/deliveries`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use rakkr_protocol::JobId;
use rakkr_protocol::access::Permission;
use rakkr_store::{DeliveryRecord, DeliveryState};
use serde::Deserialize;

use crate::audit::AuditChange;
use crate::auth::SignedIn;
use crate::console::{console_page, csrf_field, utc_seconds};
use crate::http::{AppState, Problem, blocking, problem, store_problem};

/// The console's delivery queue.
pub const DELIVERIES_PATH: &str = "/deliveries";

/// Deliveries the console page lists at most.
const PAGE_LISTED: usize = 200;

/// Most deliveries one answer lists.
pub const MAX_LISTED: usize = 1000;

/// What `GET /api/v1/deliveries` (and the console's page) takes.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// `pending`, `delivered` or `failed` (absent: all).
    #[serde(default)]
    pub state: Option<String>,
    /// Only this destination's.
    #[serde(default)]
    pub destination: Option<String>,
    /// At most this many (default and limit 1000), newest jobs first.
    #[serde(default)]
    pub limit: Option<usize>,
}

fn state_of(text: &str) -> Result<DeliveryState, Problem> {
    [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Cancelled,
    ]
    .into_iter()
    .find(|s| s.as_str() == text)
    .ok_or_else(|| {
        problem(
            StatusCode::BAD_REQUEST,
            format!("state {text:?}: pending, delivered or failed"),
        )
    })
}

/// The deliveries `q` asks for.
pub async fn find(state: &AppState, q: &DeliveriesQuery) -> Result<Vec<DeliveryRecord>, Problem> {
    let wanted = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(state_of)
        .transpose()?;
    let limit = q.limit.unwrap_or(MAX_LISTED).clamp(1, MAX_LISTED);
    let destination = q.destination.clone().filter(|d| !d.is_empty());
    let store = state.store.clone();
    blocking(move || {
        // Filtering by destination reads further, within a bound.
        let read = if destination.is_some() {
            MAX_LISTED * 10
        } else {
            limit
        };
        let mut all = store.deliveries(wanted, read).map_err(store_problem)?;
        if let Some(d) = &destination {
            all.retain(|r| &r.destination == d);
        }
        all.truncate(limit);
        Ok(all)
    })
    .await
}

/// `GET /api/v1/deliveries`
pub async fn api_list(
    State(state): State<AppState>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Response, Problem> {
    Ok(Json(find(&state, &q).await?).into_response())
}

/// What `POST /api/v1/deliveries/retry` takes: one delivery.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryDelivery {
    pub job: JobId,
    /// The file's name.
    pub name: String,
    pub destination: String,
}

/// Try a delivery again now, with a fresh retry budget (audited).
pub async fn retry(
    state: &AppState,
    r: RetryDelivery,
) -> Result<(DeliveryRecord, AuditChange), Problem> {
    let store = state.store.clone();
    let now = state.clock.unix_ms();
    let (before, after) = blocking(move || {
        let found = store
            .deliveries_of_job(r.job)
            .map_err(store_problem)?
            .into_iter()
            .find(|d| d.name == r.name && d.destination == r.destination)
            .ok_or_else(|| {
                problem(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no delivery of {} of job {} to {:?}",
                        r.name, r.job, r.destination
                    ),
                )
            })?;
        if found.state == DeliveryState::Delivered {
            return Err(problem(
                StatusCode::CONFLICT,
                "it was delivered: nothing to retry",
            ));
        }
        if found.state == DeliveryState::Cancelled {
            return Err(problem(
                StatusCode::GONE,
                "its recording was deleted: nothing to deliver",
            ));
        }
        let again = DeliveryRecord {
            state: DeliveryState::Pending,
            next_attempt_ms: now,
            give_up_ms: None,
            ..found.clone()
        };
        store.put_delivery(&again).map_err(store_problem)?;
        Ok((found, again))
    })
    .await?;
    state.delivery_wake.notify_one();
    let change = AuditChange {
        target: Some(format!(
            "delivery:{}/{}/{}",
            after.job, after.name, after.destination
        )),
        before: Some(
            serde_json::json!({ "state": before.state, "attempts": before.attempts, "last_error": before.last_error }),
        ),
        after: Some(serde_json::json!({ "state": after.state })),
    };
    Ok((after, change))
}

/// `POST /api/v1/deliveries/retry`
pub async fn api_retry(
    State(state): State<AppState>,
    body: Result<Json<RetryDelivery>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(body) = body.map_err(|e| problem(e.status(), e.body_text()))?;
    let (after, change) = retry(&state, body).await?;
    Ok(change.to(Json(after).into_response()))
}

/// An id-like text shortened for a table cell (the whole in its title).
fn short(text: &str) -> String {
    match text.char_indices().nth(13) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn queue_page(
    q: &DeliveriesQuery,
    result: Result<&Vec<DeliveryRecord>, &Problem>,
    signed_in: &SignedIn,
    now_ms: u64,
) -> Markup {
    let state = q.state.clone().unwrap_or_default();
    let may_retry = signed_in.may(Permission::RecordingsControl);
    console_page(
        "Deliveries",
        signed_in,
        html! {},
        html! {
            h1 { "Deliveries" }
            p.muted { "Each file the server holds, on its way to each destination of its upload policy. Newest recordings first." }
            form.search method="get" action=(DELIVERIES_PATH) role="search" {
                label { "State"
                    select name="state" {
                        @for (value, label) in [("", "any"), ("pending", "pending"), ("failed", "failed"), ("delivered", "delivered")] {
                            option value=(value) selected[state == value] { (label) }
                        }
                    }
                }
                label { "Destination" input type="text" name="destination" value=(q.destination.clone().unwrap_or_default()) placeholder="any"; }
                button type="submit" { "Filter" }
            }
            @match result {
                Err(p) => { p.error role="alert" { (p.detail) } }
                Ok(found) if found.is_empty() => { p.muted { "No deliveries match." } }
                Ok(found) => {
                    table.audit.deliveries {
                        thead { tr { th { "Recording" } th { "File" } th { "Destination" } th { "State" } th { "Attempts" } th { "Why it failed, or when" } th { span.visually-hidden { "Retry" } } } }
                        tbody {
                            @for d in found {
                                tr data-delivery=(d.state.as_str()) data-destination=(d.destination) {
                                    td.nowrap { a href={ (crate::recordings_page::RECORDINGS_PATH) "/" (d.job) } title=(d.job) { code { (short(&d.job.to_string())) } } div.muted { (d.node) } }
                                    td.nowrap { code title=(d.key) { (short(&d.name)) } }
                                    td { (d.destination) }
                                    td { span class={ "badge delivery " (d.state.as_str()) } { (d.state.as_str()) } }
                                    td { (d.attempts) }
                                    td.notes {
                                        @match d.state {
                                            DeliveryState::Delivered => { "delivered " (d.delivered_ms.map(utc_seconds).unwrap_or_default()) }
                                            DeliveryState::Pending if d.attempts == 0 => { "queued" }
                                            DeliveryState::Pending => {
                                                (d.last_error)
                                                div.muted { "next attempt in " (d.next_attempt_ms.saturating_sub(now_ms) / 1000) " s" }
                                            }
                                            DeliveryState::Failed => { (d.last_error) div.muted { "gave up: retry it once the cause is fixed" } }
                                            DeliveryState::Cancelled => { (d.last_error) }
                                        }
                                    }
                                    td {
                                        @if may_retry && matches!(d.state, DeliveryState::Pending | DeliveryState::Failed) {
                                            form method="post" action={ (DELIVERIES_PATH) "/retry" } {
                                                (csrf_field(signed_in))
                                                input type="hidden" name="job" value=(d.job);
                                                input type="hidden" name="name" value=(d.name);
                                                input type="hidden" name="destination" value=(d.destination);
                                                button.secondary type="submit" { "Retry now" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `GET /deliveries`
pub async fn page(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut q = query.map(|q| q.0).unwrap_or_default();
    q.limit = Some(q.limit.unwrap_or(PAGE_LISTED).min(PAGE_LISTED));
    let result = find(&state, &q).await;
    let status = if result.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let now = state.clock.unix_ms();
    (status, queue_page(&q, result.as_ref(), &signed_in, now)).into_response()
}

/// The retry form as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    job: JobId,
    name: String,
    destination: String,
}

/// `POST /deliveries/retry` (form), then back to the queue.
pub async fn retry_form(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Form(form): Form<RetryForm>,
) -> Response {
    let r = RetryDelivery {
        job: form.job,
        name: form.name,
        destination: form.destination,
    };
    match retry(&state, r).await {
        Ok((_, change)) => change.to(Redirect::to(DELIVERIES_PATH).into_response()),
        Err(p) => {
            let q = DeliveriesQuery::default();
            let found = find(&state, &q).await;
            let now = state.clock.unix_ms();
            let page = queue_page(&q, found.as_ref(), &signed_in, now);
            (p.status, html! { (page) }).into_response()
        }
    }
}
