//! Enrollment tokens in the console (`/enrollment`, `nodes.manage`): the
//! unused ones, and a form that creates one (shown once, with the command
//! that uses it on the appliance). The node page's credential revocation
//! is here too: both are about which appliances may connect.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use rakkr_protocol::NodeId;
use serde::Deserialize;

use crate::audit::AuditChange;
use crate::auth::SignedIn;
use crate::console::{console_page, csrf_field, utc_seconds};
use crate::http::AppState;

pub const ENROLLMENT_PATH: &str = "/enrollment";

/// A token just made, to show once.
struct Made {
    token: String,
    node: Option<NodeId>,
}

fn page(
    tokens: &[rakkr_store::EnrollTokenRecord],
    signed_in: &SignedIn,
    made: Option<&Made>,
    error: Option<&str>,
) -> Markup {
    console_page(
        "Enrollment",
        signed_in,
        html! {},
        html! {
            h1 { "Enrollment" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            @if let Some(m) = made {
                div.secret role="status" {
                    p { "Enrollment token — shown only now. On the appliance"
                        @if let Some(n) = &m.node { " (node id " code { (n) } " in its configuration)" } ":" }
                    code #secret { "rakkr-agent enroll --config /etc/rakkr/agent.toml --server https://THIS-SERVER --token " (m.token) }
                }
            }
            section.panel aria-labelledby="new-h" {
                h2 #new-h { "Create an enrollment token" }
                form.start method="post" action=(ENROLLMENT_PATH) {
                    (csrf_field(signed_in))
                    label { "For node" input type="text" name="node" maxlength="64" placeholder="any (the node names itself)"; }
                    label { "Valid for (hours)" input type="number" name="ttl_h" min="1" max="168" value="1"; }
                    button type="submit" { "Create token" }
                }
                p.muted { "A token enrolls one appliance once; it gets its own credential in exchange." }
            }
            section.panel aria-labelledby="open-h" {
                h2 #open-h { "Unused tokens" }
                @if tokens.is_empty() {
                    p.muted { "None." }
                } @else {
                    table.jobs {
                        thead { tr { th { "Id" } th { "For node" } th { "Created" } th { "Expires" } } }
                        tbody {
                            @for t in tokens {
                                tr {
                                    td { code { (t.id) } }
                                    td { @match &t.node { Some(n) => { code { (n) } }, None => { span.muted { "any" } } } }
                                    td.muted { (utc_seconds(t.created_ms)) }
                                    td { (utc_seconds(t.expires_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

async fn render(
    state: &AppState,
    signed_in: &SignedIn,
    made: Option<&Made>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let (store, now) = (state.store.clone(), state.clock.unix_ms());
    let read = tokio::task::spawn_blocking(move || store.enroll_tokens(now)).await;
    let (tokens, read_error) = match read {
        Ok(Ok(tokens)) => (tokens, None),
        Ok(Err(e)) => (
            Vec::new(),
            Some(format!("the store could not be read: {e}")),
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let error = error.or(read_error.as_deref());
    (status, page(&tokens, signed_in, made, error)).into_response()
}

/// `GET /enrollment`
pub async fn show(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
) -> Response {
    render(&state, &signed_in, None, None, StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    #[serde(default)]
    node: String,
    ttl_h: u64,
}

/// `POST /enrollment`: create a token, shown once.
pub async fn create(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Form(form): Form<CreateForm>,
) -> Response {
    let node = match form.node.trim() {
        "" => None,
        n => match NodeId::new(n) {
            Ok(n) => Some(n),
            Err(e) => {
                let why = format!("node id: {e}");
                return render(
                    &state,
                    &signed_in,
                    None,
                    Some(&why),
                    StatusCode::UNPROCESSABLE_ENTITY,
                )
                .await;
            }
        },
    };
    let ttl = Duration::from_secs(form.ttl_h.saturating_mul(3600));
    let (store, now) = (state.store.clone(), state.clock.unix_ms());
    let ca = state.ca.as_ref().map(|c| c.sha256.clone());
    let for_node = node.clone();
    let created = tokio::task::spawn_blocking(move || {
        crate::identity::create_token(&*store, for_node, ttl, ca.as_deref(), now)
    })
    .await;
    match created {
        Ok(Ok(t)) => {
            let change = t.audit_change();
            let made = Made {
                token: t.token,
                node,
            };
            change.to(render(&state, &signed_in, Some(&made), None, StatusCode::OK).await)
        }
        Ok(Err(e)) => {
            let why = e.to_string();
            render(
                &state,
                &signed_in,
                None,
                Some(&why),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
}

/// `POST /nodes/{id}/revoke`: revoke the node's credential (it is
/// disconnected and must enroll again), then back to its page.
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(_): Form<RevokeForm>,
) -> Response {
    let Ok(node) = NodeId::new(id) else {
        return (StatusCode::NOT_FOUND, "no such node\n").into_response();
    };
    let (store, ids, now) = (
        state.store.clone(),
        state.identities.clone(),
        state.clock.unix_ms(),
    );
    let target = node.clone();
    match tokio::task::spawn_blocking(move || ids.revoke(&*store, &target, now)).await {
        Ok(Ok(record)) => {
            tracing::warn!(node = %node, "node credential revoked from the console; node disconnected");
            let change = AuditChange {
                target: Some(format!("node:{node}")),
                before: None,
                after: Some(
                    serde_json::json!({ "generation": record.generation, "revoked_ms": record.revoked_ms }),
                ),
            };
            change.to(Redirect::to(&format!("/nodes/{node}")).into_response())
        }
        Ok(Err(e)) => (StatusCode::CONFLICT, format!("not revoked: {e}\n")).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
