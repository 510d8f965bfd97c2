//! Accounts and API tokens in the console (`/users`, `/api-tokens`) and the
//! JSON API (`/api/v1/users`, `/api/v1/api-tokens`). Both need
//! `users.manage` (owners only).
//!
//! Every operation goes through [`crate::admin::execute`], the same code as
//! `rakkr-server user …` and `api-token …` on the admin socket, and is
//! described for the audit log by [`crate::admin::describe`]. One-time
//! passwords and new tokens are shown once, in the answer to the request
//! that made them (`Cache-Control: no-store`), and never stored in clear.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use rakkr_protocol::access::Role;
use serde::Deserialize;

use crate::admin::{AccountView, AdminRequest, AdminResponse, TokenView, describe, execute};
use crate::audit::AuditChange;
use crate::auth::SignedIn;
use crate::console::{console_page, csrf_field, utc_seconds};
use crate::http::{AppState, Problem, problem};

pub const USERS_PATH: &str = "/users";
pub const TOKENS_PATH: &str = "/api-tokens";

/// Carry out one request on a blocking thread (password hashing is slow by
/// design): the answer and its description for the audit record.
pub async fn perform(state: &AppState, request: AdminRequest) -> (AdminResponse, AuditChange) {
    let store = state.store.clone();
    let now = state.clock.unix_ms();
    tokio::task::spawn_blocking(move || {
        let response = execute(&*store, request.clone(), now);
        let change = describe(&request, &response).1;
        (response, change)
    })
    .await
    .unwrap_or_else(|e| {
        let response = AdminResponse {
            error: Some(e.to_string()),
            ..Default::default()
        };
        (response, AuditChange::default())
    })
}

fn list(state: &AppState, request: AdminRequest) -> impl Future<Output = AdminResponse> + use<> {
    let (store, now) = (state.store.clone(), state.clock.unix_ms());
    async move {
        tokio::task::spawn_blocking(move || execute(&*store, request, now))
            .await
            .unwrap_or_default()
    }
}

// ---- Console ----

/// What a page shows once: a notice, and a secret to hand over.
#[derive(Default)]
struct Shown {
    notice: Option<String>,
    error: Option<String>,
    /// (what it is, the secret)
    secret: Option<(String, String)>,
}

fn role_select(name: &str, selected: Option<&str>) -> Markup {
    html! {
        select name=(name) {
            @for role in Role::ALL {
                option value=(role.as_str()) selected[selected == Some(role.as_str())] { (role.as_str()) }
            }
        }
    }
}

fn shown_panel(shown: &Shown) -> Markup {
    html! {
        @if let Some(e) = &shown.error { p.error role="alert" { (e) } }
        @if let Some(n) = &shown.notice { p.notice role="status" { (n) } }
        @if let Some((what, secret)) = &shown.secret {
            div.secret role="status" {
                p { (what) " — shown only now; copy it before leaving this page:" }
                code #secret { (secret) }
            }
        }
    }
}

fn users_page(
    accounts: &[AccountView],
    signed_in: &SignedIn,
    shown: &Shown,
    now_ms: u64,
) -> Markup {
    console_page(
        "Users",
        signed_in,
        html! {},
        html! {
            h1 { "Users" }
            (shown_panel(shown))
            section.panel aria-labelledby="add-h" {
                h2 #add-h { "Add a user" }
                form.start method="post" action=(USERS_PATH) {
                    (csrf_field(signed_in))
                    label { "Name" input type="text" name="name" required maxlength="64" pattern="[a-z0-9._-]+" autocomplete="off"; }
                    label { "Role" (role_select("role", Some("viewer"))) }
                    button type="submit" { "Add user" }
                }
                p.muted { "The new user gets a one-time password, shown here once, and must choose their own at the first login." }
            }
            section.panel aria-labelledby="users-h" {
                h2 #users-h { "Accounts" }
                table.jobs {
                    thead { tr { th { "Name" } th { "Role" } th { "State" } th { "Password set" } th { span.sr-only { "Actions" } } } }
                    tbody {
                        @for a in accounts {
                            tr data-user=(a.name) {
                                td { code { (a.name) } @if a.name == signed_in.user.name { " " span.muted { "(you)" } } }
                                td {
                                    form.inline method="post" action={ (USERS_PATH) "/" (a.name) } {
                                        (csrf_field(signed_in))
                                        input type="hidden" name="change" value="role";
                                        label.sr-only for={ "role-" (a.name) } { "Role of " (a.name) }
                                        select #{ "role-" (a.name) } name="role" {
                                            @for role in Role::ALL {
                                                option value=(role.as_str()) selected[a.role == role.as_str()] { (role.as_str()) }
                                            }
                                        }
                                        " "
                                        button.secondary type="submit" { "Set role" }
                                    }
                                }
                                td {
                                    @if a.disabled { span.badge.offline { "disabled" } }
                                    @else if a.must_change_password { span.badge.job.queued { "one-time password" } }
                                    @else { span.badge.online { "active" } }
                                }
                                td.muted { span title=(utc_seconds(a.password_changed_ms)) { (rakkr_web::components::ago(now_ms, a.password_changed_ms)) } }
                                td.actions {
                                    (change_button(signed_in, &a.name, "reset", "Reset password"))
                                    (change_button(signed_in, &a.name, "end-sessions", "End sessions"))
                                    @if a.disabled {
                                        (change_button(signed_in, &a.name, "enable", "Enable"))
                                    } @else {
                                        (change_button(signed_in, &a.name, "disable", "Disable"))
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

fn change_button(signed_in: &SignedIn, name: &str, change: &str, label: &str) -> Markup {
    html! {
        form.inline method="post" action={ (USERS_PATH) "/" (name) } {
            (csrf_field(signed_in))
            input type="hidden" name="change" value=(change);
            button.secondary type="submit" data-change=(change) { (label) }
        }
    }
}

/// A listing's answer; a failed one becomes the page's error (never an
/// empty list shown as if there were nothing).
async fn listed(state: &AppState, request: AdminRequest, shown: &mut Shown) -> AdminResponse {
    let answer = list(state, request).await;
    if !answer.ok && shown.error.is_none() {
        let why = answer.error.clone();
        shown.error = Some(why.unwrap_or_else(|| "the list could not be read".into()));
    }
    answer
}

async fn render_users(
    state: &AppState,
    signed_in: &SignedIn,
    mut shown: Shown,
    status: StatusCode,
) -> Response {
    let accounts = listed(state, AdminRequest::UserList, &mut shown)
        .await
        .accounts
        .unwrap_or_default();
    (
        status,
        users_page(&accounts, signed_in, &shown, state.clock.unix_ms()),
    )
        .into_response()
}

/// `GET /users`
pub async fn users(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
) -> Response {
    render_users(&state, &signed_in, Shown::default(), StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    name: String,
    role: String,
}

/// The two pages of this module.
#[derive(Clone, Copy)]
enum Page {
    Users,
    Tokens,
}

async fn render(
    state: &AppState,
    signed_in: &SignedIn,
    page: Page,
    shown: Shown,
    status: StatusCode,
) -> Response {
    match page {
        Page::Users => render_users(state, signed_in, shown, status).await,
        Page::Tokens => render_tokens(state, signed_in, shown, status).await,
    }
}

/// Carry out a form's request and render its page with what it did; the
/// audit change rides along for the access check's record.
async fn after(
    state: &AppState,
    signed_in: &SignedIn,
    page: Page,
    request: AdminRequest,
    done: impl FnOnce(&AdminResponse) -> Shown,
) -> Response {
    let (response, change) = perform(state, request).await;
    let (shown, status) = if response.ok {
        (done(&response), StatusCode::OK)
    } else {
        let error = response.error.clone();
        (
            Shown {
                error,
                ..Shown::default()
            },
            StatusCode::UNPROCESSABLE_ENTITY,
        )
    };
    change.to(render(state, signed_in, page, shown, status).await)
}

/// `POST /users`: add an account; its one-time password is shown once.
pub async fn add(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Form(form): Form<AddForm>,
) -> Response {
    let name = form.name.trim().to_owned();
    let request = AdminRequest::UserAdd {
        name: name.clone(),
        role: form.role,
    };
    after(&state, &signed_in, Page::Users, request, |r| Shown {
        notice: Some(format!("Added {name}.")),
        secret: r
            .password
            .clone()
            .map(|p| (format!("One-time password for {name}"), p)),
        ..Shown::default()
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    /// `role`, `reset`, `disable`, `enable` or `end-sessions`.
    change: String,
    #[serde(default)]
    role: Option<String>,
}

/// `POST /users/{name}`: change role, reset the password, disable or enable.
pub async fn change(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(name): Path<String>,
    Form(form): Form<ChangeForm>,
) -> Response {
    let request = match (form.change.as_str(), form.role) {
        ("role", Some(role)) => AdminRequest::UserRole {
            name: name.clone(),
            role,
        },
        ("reset", _) => AdminRequest::UserResetPassword { name: name.clone() },
        ("disable", _) => AdminRequest::UserDisable { name: name.clone() },
        ("enable", _) => AdminRequest::UserEnable { name: name.clone() },
        ("end-sessions", _) => AdminRequest::UserEndSessions { name: name.clone() },
        (other, _) => {
            let shown = Shown {
                error: Some(format!("unknown change {other:?}")),
                ..Shown::default()
            };
            return render_users(&state, &signed_in, shown, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    };
    after(&state, &signed_in, Page::Users, request, |r| Shown {
        notice: Some(format!("Changed {name}.")),
        secret: r
            .password
            .clone()
            .map(|p| (format!("New one-time password for {name}"), p)),
        ..Shown::default()
    })
    .await
}

fn tokens_page(tokens: &[TokenView], signed_in: &SignedIn, shown: &Shown, now_ms: u64) -> Markup {
    console_page(
        "API tokens",
        signed_in,
        html! {},
        html! {
            h1 { "API tokens" }
            (shown_panel(shown))
            section.panel aria-labelledby="new-token-h" {
                h2 #new-token-h { "Create a token" }
                form.start method="post" action=(TOKENS_PATH) {
                    (csrf_field(signed_in))
                    label { "Name" input type="text" name="name" required maxlength="64" placeholder="e.g. prometheus"; }
                    label { "Role" (role_select("role", Some("viewer"))) }
                    label { "Lifetime (days)" input type="number" name="ttl_days" min="1" max=(crate::api_tokens::MAX_TTL_DAYS) placeholder="until revoked"; }
                    button type="submit" { "Create token" }
                }
                p.muted { "Automation sends it as " code { "Authorization: Bearer …" } " to /api/v1 and /metrics." }
            }
            section.panel aria-labelledby="tokens-h" {
                h2 #tokens-h { "Tokens" }
                table.jobs {
                    thead { tr { th { "Id" } th { "Name" } th { "Role" } th { "Created" } th { "State" } th { span.sr-only { "Actions" } } } }
                    tbody {
                        @for t in tokens {
                            @let live = t.revoked_ms.is_none() && t.expires_ms.is_none_or(|e| now_ms < e);
                            tr data-token=(t.id) {
                                td { code { (t.id) } }
                                td { (t.name) }
                                td { (t.role) }
                                td.muted { (utc_seconds(t.created_ms)) }
                                td {
                                    @if let Some(r) = t.revoked_ms { span.badge.offline title=(utc_seconds(r)) { "revoked" } }
                                    @else if !live { span.badge.offline { "expired" } }
                                    @else if let Some(e) = t.expires_ms { span.badge.online { "until " (utc_seconds(e)) } }
                                    @else { span.badge.online { "active" } }
                                }
                                td.actions {
                                    @if live {
                                        form.inline method="post" action={ (TOKENS_PATH) "/" (t.id) "/revoke" } {
                                            (csrf_field(signed_in))
                                            button.secondary type="submit" { "Revoke" }
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

async fn render_tokens(
    state: &AppState,
    signed_in: &SignedIn,
    mut shown: Shown,
    status: StatusCode,
) -> Response {
    let tokens = listed(state, AdminRequest::TokenList, &mut shown)
        .await
        .tokens
        .unwrap_or_default();
    (
        status,
        tokens_page(&tokens, signed_in, &shown, state.clock.unix_ms()),
    )
        .into_response()
}

/// `GET /api-tokens`
pub async fn tokens(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
) -> Response {
    render_tokens(&state, &signed_in, Shown::default(), StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    name: String,
    role: String,
    #[serde(default)]
    ttl_days: String,
}

/// `POST /api-tokens`: create a token, shown once.
pub async fn create_token(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Form(form): Form<TokenForm>,
) -> Response {
    let ttl_days = match form.ttl_days.trim() {
        "" => None,
        t => match t.parse::<u64>() {
            Ok(d) => Some(d),
            Err(_) => {
                let shown = Shown {
                    error: Some(format!("lifetime {t:?} is not a number of days")),
                    ..Shown::default()
                };
                return render_tokens(&state, &signed_in, shown, StatusCode::UNPROCESSABLE_ENTITY)
                    .await;
            }
        },
    };
    let name = form.name.trim().to_owned();
    let request = AdminRequest::TokenCreate {
        name: name.clone(),
        role: form.role,
        ttl_days,
    };
    after(&state, &signed_in, Page::Tokens, request, |r| Shown {
        secret: r.token.clone().map(|t| (format!("API token {name:?}"), t)),
        ..Shown::default()
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfOnly {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
}

/// `POST /api-tokens/{id}/revoke`
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    Form(_): Form<CsrfOnly>,
) -> Response {
    let request = AdminRequest::TokenRevoke { id: id.clone() };
    after(&state, &signed_in, Page::Tokens, request, |_| Shown {
        notice: Some(format!("Revoked token {id}.")),
        ..Shown::default()
    })
    .await
}

// ---- JSON API ----

fn refused(response: &AdminResponse) -> Problem {
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        response.error.clone().unwrap_or_else(|| "refused".into()),
    )
}

/// Carry out an API request: 2xx with the answer, or problem+json.
async fn api_answer(state: &AppState, request: AdminRequest, created: bool) -> Response {
    let (response, change) = perform(state, request).await;
    let res = if response.ok {
        let code = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (code, Json(&response)).into_response()
    } else {
        refused(&response).into_response()
    };
    change.to(res)
}

fn list_failed(r: &AdminResponse) -> Response {
    let why = r
        .error
        .clone()
        .unwrap_or_else(|| "the list could not be read".into());
    problem(StatusCode::SERVICE_UNAVAILABLE, why).into_response()
}

/// `GET /api/v1/users`
pub async fn api_users(State(state): State<AppState>) -> Response {
    let r = list(&state, AdminRequest::UserList).await;
    match r.accounts {
        Some(accounts) if r.ok => Json(accounts).into_response(),
        _ => list_failed(&r),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    role: String,
}

/// `POST /api/v1/users` `{"name", "role"}` → 201 `{account, password}` (shown once)
pub async fn api_add_user(
    State(state): State<AppState>,
    body: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(u)) => {
            api_answer(
                &state,
                AdminRequest::UserAdd {
                    name: u.name,
                    role: u.role,
                },
                true,
            )
            .await
        }
        Err(e) => problem(e.status(), e.body_text()).into_response(),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChangeJson {
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    reset_password: bool,
    /// `true`: end every session of the account.
    #[serde(default)]
    end_sessions: bool,
}

/// `POST /api/v1/users/{name}` with exactly one of `{"role"}`,
/// `{"disabled": bool}`, `{"reset_password": true}`, `{"end_sessions": true}`.
pub async fn api_change_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<UserChangeJson>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let change = match body {
        Ok(Json(c)) => c,
        Err(e) => return problem(e.status(), e.body_text()).into_response(),
    };
    let request = match (
        change.role,
        change.disabled,
        change.reset_password,
        change.end_sessions,
    ) {
        (Some(role), None, false, false) => AdminRequest::UserRole { name, role },
        (None, Some(true), false, false) => AdminRequest::UserDisable { name },
        (None, Some(false), false, false) => AdminRequest::UserEnable { name },
        (None, None, true, false) => AdminRequest::UserResetPassword { name },
        (None, None, false, true) => AdminRequest::UserEndSessions { name },
        _ => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "send exactly one of role, disabled, reset_password or end_sessions",
            )
            .into_response();
        }
    };
    api_answer(&state, request, false).await
}

/// `GET /api/v1/api-tokens` (never a secret)
pub async fn api_tokens(State(state): State<AppState>) -> Response {
    let r = list(&state, AdminRequest::TokenList).await;
    match r.tokens {
        Some(tokens) if r.ok => Json(tokens).into_response(),
        _ => list_failed(&r),
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    role: String,
    #[serde(default)]
    ttl_days: Option<u64>,
}

/// `POST /api/v1/api-tokens` `{"name", "role", "ttl_days"?}` → 201 `{token, tokens}` (the token shown once)
pub async fn api_create_token(
    State(state): State<AppState>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(t)) => {
            let request = AdminRequest::TokenCreate {
                name: t.name,
                role: t.role,
                ttl_days: t.ttl_days,
            };
            api_answer(&state, request, true).await
        }
        Err(e) => problem(e.status(), e.body_text()).into_response(),
    }
}

/// `POST /api/v1/api-tokens/{id}/revoke`
pub async fn api_revoke_token(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    api_answer(&state, AdminRequest::TokenRevoke { id }, false).await
}
