//! Health issues for people: the console page (`/health`, `health.read`)
//! with filters, bulk acknowledge / suppress / resolve / reopen
//! (`health.acknowledge`) and CSV export; the same in the JSON API
//! (`/api/v1/health`, `/api/v1/health/actions`). Every change is audited with
//! each issue before and after.
//!
//! Issues are kept by the store from health events ([`rakkr_store::HealthIssue`]):
//! one per condition and subject of a node, resolved by recovery.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Redirect, Response};
use maud::{Markup, html};
use rakkr_protocol::NodeId;
use rakkr_protocol::access::Permission;
use rakkr_protocol::payload::HealthCondition;
use rakkr_protocol::state::HealthState;
use rakkr_store::{HealthIssue, IssueAction, IssueQuery};
use serde::Deserialize;

use crate::audit::{AuditChange, csv_table, wants_csv};
use crate::auth::SignedIn;
use crate::console::{console_page, csrf_field, utc_seconds};
use crate::http::{AppState, Problem, blocking, problem, store_problem};

pub const HEALTH_PATH: &str = "/health";

/// Most issues one answer lists.
pub const MAX_LISTED: usize = 1000;

/// Most issues one action changes.
pub const MAX_ACTION_IDS: usize = 500;

/// The filters, as a query string sends them; empty fields are no filter.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {
    #[serde(default)]
    pub node: String,
    /// `open`, `acknowledged`, `suppressed`, `resolved`, or `active` (any but resolved).
    #[serde(default)]
    pub state: String,
    /// A condition's name, e.g. `device_lost`.
    #[serde(default)]
    pub condition: String,
    #[serde(default)]
    pub limit: Option<usize>,
    /// `json` (default) or `csv` (the API only).
    #[serde(default)]
    pub format: Option<String>,
}

const CONDITIONS: [HealthCondition; HealthCondition::ALL.len()] = HealthCondition::ALL;

impl HealthQuery {
    /// The store's query, the "active" filter apart; or what is wrong.
    fn parse(&self) -> Result<(IssueQuery, bool), String> {
        let node = match self.node.trim() {
            "" => None,
            n => Some(NodeId::new(n).map_err(|e| format!("node: {e}"))?),
        };
        let (state, active) = match self.state.trim() {
            "" => (None, false),
            "active" => (None, true),
            s => (
                Some(
                    HealthState::ALL
                        .into_iter()
                        .find(|h| h.as_str() == s)
                        .ok_or_else(|| format!("unknown state {s:?}"))?,
                ),
                false,
            ),
        };
        let condition = match self.condition.trim() {
            "" => None,
            c => Some(
                CONDITIONS
                    .into_iter()
                    .find(|k| k.as_str() == c)
                    .ok_or_else(|| format!("unknown condition {c:?}"))?,
            ),
        };
        let limit = self.limit.unwrap_or(100).clamp(1, MAX_LISTED);
        Ok((
            IssueQuery {
                node,
                state,
                condition,
                // Resolved ones are filtered out below, so look further.
                limit: if active { MAX_LISTED } else { limit },
            },
            active,
        ))
    }
}

async fn find(state: &AppState, q: &HealthQuery) -> Result<Vec<HealthIssue>, Problem> {
    let (query, active) = q.parse().map_err(|e| problem(StatusCode::BAD_REQUEST, e))?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LISTED);
    let store = state.store.clone();
    let mut issues = blocking(move || store.health_issues(&query).map_err(store_problem)).await?;
    if active {
        issues.retain(|i| i.state != HealthState::Resolved);
        issues.truncate(limit);
    }
    Ok(issues)
}

fn csv_of(issues: &[HealthIssue]) -> String {
    csv_table(
        "id,node,condition,subject,severity,state,opened_ms,changed_ms,last_event_ms,raised,by,detail",
        issues.iter().map(|i| {
            vec![
                i.id.to_string(),
                i.node.to_string(),
                i.condition.as_str().to_owned(),
                i.subject.clone(),
                i.severity.as_str().to_owned(),
                i.state.as_str().to_owned(),
                i.opened_ms.to_string(),
                i.changed_ms.to_string(),
                i.last_event_ms.to_string(),
                i.raised.to_string(),
                i.by.clone().unwrap_or_default(),
                i.detail.clone(),
            ]
        }),
    )
}

/// `GET /api/v1/health`
pub async fn api_list(
    State(state): State<AppState>,
    query: Result<Query<HealthQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let q = query
        .map_err(|e| problem(StatusCode::BAD_REQUEST, e.body_text()))?
        .0;
    let csv = wants_csv(q.format.as_deref())?;
    let issues = find(&state, &q).await?;
    if csv {
        return Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            csv_of(&issues),
        )
            .into_response());
    }
    Ok(Json(issues).into_response())
}

/// An action on health issues.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Issue ids, at most 500.
    pub ids: Vec<u64>,
    pub action: IssueAction,
}

/// Apply `action` to `ids` as `actor`; the issues after, and the change
/// for the audit record.
async fn act(
    state: &AppState,
    actor: String,
    ids: Vec<u64>,
    action: IssueAction,
) -> Result<(Vec<HealthIssue>, AuditChange), Problem> {
    if ids.is_empty() || ids.len() > MAX_ACTION_IDS {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("choose 1 to {MAX_ACTION_IDS} issues"),
        ));
    }
    let (store, now) = (state.store.clone(), state.clock.unix_ms());
    let target = format!(
        "health:{}",
        ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    );
    let changed = blocking(move || {
        store
            .change_health_issues(&ids, action, &actor, now)
            .map_err(|e| match e {
                rakkr_store::StoreError::Refused(why) => problem(StatusCode::CONFLICT, why),
                e => store_problem(e),
            })
    })
    .await?;
    let view = |i: &HealthIssue| serde_json::json!({ "id": i.id, "state": i.state, "by": i.by });
    let change = AuditChange {
        target: Some(target),
        before: Some(changed.iter().map(|(b, _)| view(b)).collect()),
        after: Some(changed.iter().map(|(_, a)| view(a)).collect()),
    };
    Ok((changed.into_iter().map(|(_, a)| a).collect(), change))
}

/// `POST /api/v1/health/actions` `{"ids": [..], "action": "acknowledge"}`
pub async fn api_action(
    State(state): State<AppState>,
    crate::auth::Actor(actor): crate::auth::Actor,
    body: Result<Json<ActionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body.map_err(|e| problem(e.status(), e.body_text()))?;
    let (after, change) = act(&state, actor, request.ids, request.action).await?;
    Ok(change.to(Json(after).into_response()))
}

fn link(q: &HealthQuery, format: Option<&str>) -> String {
    let mut q = q.clone();
    q.format = format.map(str::to_owned);
    let query = serde_urlencoded::to_string(&q).unwrap_or_default();
    match format {
        Some(_) => format!("/api/v1/health?{query}"),
        None => format!("{HEALTH_PATH}?{query}"),
    }
}

fn page(
    q: &HealthQuery,
    found: Result<&[HealthIssue], &str>,
    notice: Option<&str>,
    signed_in: &SignedIn,
) -> Markup {
    let may_act = signed_in.may(Permission::HealthAcknowledge);
    console_page(
        "Health",
        signed_in,
        html! {},
        html! {
            h1 { "Health" }
            form.search method="get" action=(HEALTH_PATH) role="search" {
                label { "Node" input type="text" name="node" value=(q.node) placeholder="any"; }
                label { "State"
                    select name="state" {
                        @for (v, l) in [("", "any"), ("active", "not resolved"), ("open", "open"), ("acknowledged", "acknowledged"), ("suppressed", "suppressed"), ("resolved", "resolved")] {
                            option value=(v) selected[q.state == v] { (l) }
                        }
                    }
                }
                label { "Condition"
                    select name="condition" {
                        option value="" selected[q.condition.is_empty()] { "any" }
                        @for c in CONDITIONS { option value=(c.as_str()) selected[q.condition == c.as_str()] { (c.as_str()) } }
                    }
                }
                button type="submit" { "Filter" }
                @if signed_in.may(Permission::HealthRead) { a.export href=(link(q, Some("csv"))) { "CSV" } }
            }
            @if let Some(n) = notice { p.error role="alert" { (n) } }
            @match found {
                Err(why) => { p.error role="alert" { (why) } }
                Ok([]) => { p.muted { "No health issues match." } }
                Ok(issues) => {
                    form method="post" action=(HEALTH_PATH) {
                        (csrf_field(signed_in))
                        input type="hidden" name="back" value=(link(q, None));
                        @if may_act {
                            div.actions {
                                @for (a, label) in [("acknowledge", "Acknowledge"), ("suppress", "Suppress"), ("resolve", "Resolve"), ("reopen", "Reopen")] {
                                    button type="submit" name="action" value=(a) { (label) }
                                }
                            }
                        }
                        table.audit.issues {
                            thead { tr {
                                @if may_act { th { span.visually-hidden { "Select" } } }
                                th { "Opened (UTC)" } th { "Node" } th { "Condition" } th { "Severity" } th { "State" } th { "Raised" } th { "Last evidence" }
                            } }
                            tbody {
                                @for i in issues {
                                    tr data-issue=(i.id) class=(i.state.as_str()) {
                                        @if may_act { td { input type="checkbox" name="ids" value=(i.id) aria-label={ "issue " (i.id) }; } }
                                        td.nowrap { (utc_seconds(i.opened_ms).trim_end_matches(" UTC")) }
                                        td { a.node-id href={ "/nodes/" (i.node) } { (i.node) } }
                                        td { (i.condition.as_str()) @if !i.subject.is_empty() { div.muted { (i.subject) } } }
                                        td { span class={ "badge severity " (i.severity.as_str()) } { (i.severity.as_str()) } }
                                        td { span class={ "badge issue " (i.state.as_str()) } { (i.state.as_str()) } @if let Some(by) = &i.by { div.muted { (by) } } }
                                        td { (i.raised) }
                                        td.notes { (i.detail) div.muted { (utc_seconds(i.last_event_ms)) } }
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

/// `GET /health`
pub async fn list(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    query: Result<Query<HealthQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|q| q.0).unwrap_or_default();
    match find(&state, &q).await {
        Ok(issues) => page(&q, Ok(&issues), None, &signed_in).into_response(),
        Err(p) => (p.status, page(&q, Err(&p.detail), None, &signed_in)).into_response(),
    }
}

/// The page's bulk form: the chosen issues (repeated `ids` fields, which a
/// plain form sends) and the button pressed.
fn parse_action_form(body: &str) -> Result<(Vec<u64>, IssueAction, String), String> {
    let mut ids = Vec::new();
    let (mut action, mut back) = (None, String::from(HEALTH_PATH));
    let fields: Vec<(String, String)> =
        serde_urlencoded::from_str(body).map_err(|e| format!("the form: {e}"))?;
    for (k, v) in fields {
        match k.as_str() {
            "ids" => ids.push(v.parse().map_err(|_| format!("{v:?} is not an issue id"))?),
            "action" => {
                action = Some(
                    serde_json::from_value::<IssueAction>(serde_json::Value::String(v))
                        .map_err(|_| "unknown action".to_owned())?,
                )
            }
            // Only back to this page, never elsewhere.
            "back" if v.starts_with("/health?") || v == HEALTH_PATH => back = v,
            _ => {}
        }
    }
    let action = action.ok_or("no action chosen")?;
    if ids.is_empty() {
        return Err("choose at least one issue".into());
    }
    Ok((ids, action, back))
}

/// `POST /health` (the page's form): act, then back to the same filters.
pub async fn bulk(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    body: String,
) -> Response {
    let refused = |why: &str, status: StatusCode| {
        (
            status,
            page(&HealthQuery::default(), Ok(&[]), Some(why), &signed_in),
        )
            .into_response()
    };
    let (ids, action, back) = match parse_action_form(&body) {
        Ok(parsed) => parsed,
        Err(why) => return refused(&why, StatusCode::UNPROCESSABLE_ENTITY),
    };
    match act(&state, signed_in.actor(), ids, action).await {
        Ok((_, change)) => change.to(Redirect::to(&back).into_response()),
        Err(p) => refused(&p.detail, p.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bulk_form_reads_repeated_ids_and_stays_on_this_page() {
        let (ids, action, back) = parse_action_form(
            "csrf=x&back=%2Fhealth%3Fstate%3Dactive&ids=3&ids=7&action=acknowledge",
        )
        .unwrap();
        assert_eq!((ids, action), (vec![3, 7], IssueAction::Acknowledge));
        assert_eq!(back, "/health?state=active");
        let (_, _, back) =
            parse_action_form("back=https%3A%2F%2Fevil.example&ids=1&action=resolve").unwrap();
        assert_eq!(back, HEALTH_PATH, "never elsewhere");
        assert!(parse_action_form("ids=1").is_err());
        assert!(parse_action_form("action=resolve").is_err());
        assert!(parse_action_form("ids=x&action=resolve").is_err());
    }

    #[test]
    fn queries_say_what_is_wrong() {
        let q = |state: &str, condition: &str| HealthQuery {
            state: state.into(),
            condition: condition.into(),
            ..Default::default()
        };
        assert!(q("active", "job_lost").parse().unwrap().1);
        assert!(q("bogus", "").parse().unwrap_err().contains("bogus"));
        assert!(q("", "bogus").parse().unwrap_err().contains("bogus"));
    }
}
