//! The delivery queue as operators see it (decision 0017): every file's
//! delivery to every destination, filterable by state, and a retry for
//! deliveries that failed (or are waiting) — `GET /api/v1/deliveries`,
//! `POST /api/v1/deliveries/retry`, and the console's `/deliveries`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use rakkr_protocol::JobId;
use rakkr_store::{DeliveryRecord, DeliveryState};
use serde::Deserialize;

use crate::audit::AuditChange;
use crate::http::{AppState, Problem, blocking, problem, store_problem};

/// Most deliveries one answer lists.
pub const MAX_LISTED: usize = 1000;

/// What `GET /api/v1/deliveries` takes.
#[derive(Debug, Default, Deserialize)]
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
