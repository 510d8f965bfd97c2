//! Login, logout and password change: the pages and their handlers, and the
//! per-route access check every route passes ([`enforce`]).

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use rakkr_protocol::access::Permission;
use rakkr_web::layout::{Chrome, page};
use serde::Deserialize;

use crate::auth::{self, LoginError, SignedIn};
use crate::http::AppState;
use crate::tls::PeerAddr;

pub const LOGIN_PATH: &str = "/login";
pub const LOGOUT_PATH: &str = "/logout";
/// Ends every session of the signed-in account, in every browser.
pub const LOGOUT_EVERYWHERE_PATH: &str = "/logout/everywhere";
pub const PASSWORD_PATH: &str = "/account/password";

/// Largest form body accepted by the access check (it reads the CSRF field).
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// Who may use a route. Every route declares one (the route table in
/// [`crate::http`]); there is no default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the login page, probes, static assets.
    Public,
    /// Appliances, which authenticate in the handler (enrollment token, node
    /// credential).
    Appliance,
    /// Any signed-in operator (logout, own password).
    SignedIn,
    /// A signed-in operator whose role has this permission.
    Operator(Permission),
}

/// Where a bearer token (`Authorization: Bearer rkt1.…`) is accepted instead
/// of a session: the JSON API and `/metrics`, never the console's pages.
fn takes_bearer_tokens(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

fn problem(status: StatusCode, detail: &str) -> Response {
    crate::http::problem(status, detail).into_response()
}

fn chrome() -> Chrome<'static> {
    Chrome {
        area: "Fleet console",
        detail: concat!("rakkr-server ", env!("CARGO_PKG_VERSION")),
    }
}

/// A relative path to return to after login; anything else becomes `/`.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && n.len() < 512 =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn login_page(next: &str, error: Option<&str>) -> Markup {
    page(
        "Log in",
        chrome(),
        html! {
            div.narrow {
                h1 { "Log in" }
                @if let Some(error) = error {
                    p.error role="alert" { (error) }
                }
                form method="post" action=(LOGIN_PATH) {
                    input type="hidden" name="next" value=(next);
                    label { "Name" input type="text" name="name" autocomplete="username" required autofocus; }
                    label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn login_form(Query(q): Query<NextQuery>) -> Markup {
    login_page(&safe_next(q.next.as_deref()), None)
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    name: String,
    password: String,
    next: Option<String>,
}

pub async fn login_submit(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site login refused\n").into_response();
    }
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            login_page("/", Some("Fill in name and password.")),
        )
            .into_response();
    };
    let next = safe_next(form.next.as_deref());
    if form.name.len() > rakkr_store::MAX_USER_NAME
        || form.password.len() > crate::accounts::MAX_PASSWORD_BYTES
    {
        return (
            StatusCode::UNAUTHORIZED,
            login_page(&next, Some("Wrong name or password.")),
        )
            .into_response();
    }
    let now = state.clock.unix_ms();
    let (store, limiter) = (state.store.clone(), state.logins.clone());
    let address = peer.ip().to_string();
    let name = form.name.clone();
    let attempt = tokio::task::spawn_blocking(move || {
        auth::login(&*store, &limiter, &form.name, &form.password, &address, now)
    })
    .await;
    let (actor, outcome, reason) = match &attempt {
        Ok(Ok(_)) => (format!("user:{name}"), "allowed", None),
        Ok(Err(e)) => (
            format!("anonymous@{}", peer.ip()),
            "denied",
            Some(e.to_string()),
        ),
        Err(e) => (
            format!("anonymous@{}", peer.ip()),
            "failed",
            Some(e.to_string()),
        ),
    };
    crate::audit::record(
        state.store.clone(),
        rakkr_store::AuditEntry {
            at_ms: now,
            actor,
            permission: None,
            action: "login".into(),
            target: Some(format!("user:{name}")),
            outcome: outcome.into(),
            reason,
            ..Default::default()
        },
    )
    .await;
    match attempt {
        Ok(Ok((id, signed_in))) => {
            tracing::info!(user = %signed_in.user.name, %peer, "login");
            let to = if signed_in.user.must_change_password {
                PASSWORD_PATH.to_owned()
            } else {
                next
            };
            with_cookie(
                Redirect::to(&to).into_response(),
                &auth::set_cookie(&id, state.secure_cookies),
            )
        }
        Ok(Err(LoginError::Wrong)) => {
            tracing::info!(%peer, "login refused");
            (
                StatusCode::UNAUTHORIZED,
                login_page(&next, Some("Wrong name or password.")),
            )
                .into_response()
        }
        Ok(Err(e @ LoginError::Locked { retry_after })) => {
            let mut res = (
                StatusCode::TOO_MANY_REQUESTS,
                login_page(&next, Some(&e.to_string())),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            res
        }
        Ok(Err(LoginError::Store(e))) => server_error(&e.to_string()),
        Err(e) => server_error(&e.to_string()),
    }
}

fn server_error(detail: &str) -> Response {
    tracing::error!(%detail, "login failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server could not complete the login\n",
    )
        .into_response()
}

fn with_cookie(mut res: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// A browser's form post comes from our own pages: `Origin`, when sent, must
/// name this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| !host.is_empty() && authority == host)
}

pub async fn logout(State(state): State<AppState>, request: Request) -> Response {
    if let Some(signed_in) = request.extensions().get::<SignedIn>().cloned() {
        let store = state.store.clone();
        let key = signed_in.session.id_sha256.clone();
        let _ = tokio::task::spawn_blocking(move || store.delete_session(&key)).await;
        tracing::info!(user = %signed_in.user.name, "logout");
    }
    with_cookie(
        Redirect::to(LOGIN_PATH).into_response(),
        &auth::clear_cookie(state.secure_cookies),
    )
}

/// `POST /logout/everywhere`: end every session of the signed-in account
/// (a browser left signed in elsewhere, a lost laptop), this one included.
pub async fn logout_everywhere(State(state): State<AppState>, request: Request) -> Response {
    let Some(signed_in) = request.extensions().get::<SignedIn>().cloned() else {
        return Redirect::to(LOGIN_PATH).into_response();
    };
    let request = crate::admin::AdminRequest::UserEndSessions {
        name: signed_in.user.name.clone(),
    };
    let (response, change) = crate::accounts_page::perform(&state, request).await;
    if !response.ok {
        let why = response.error.unwrap_or_default();
        tracing::error!(user = %signed_in.user.name, %why, "could not end the sessions");
        return server_error("the sessions could not be ended; try again");
    }
    change.to(with_cookie(
        Redirect::to(LOGIN_PATH).into_response(),
        &auth::clear_cookie(state.secure_cookies),
    ))
}

fn password_page(signed_in: &SignedIn, error: Option<&str>) -> Markup {
    page(
        "Change password",
        chrome(),
        html! {
            div.narrow {
                h1 { "Change password" }
                @if signed_in.user.must_change_password {
                    p { "Your password was set by someone else. Choose your own to continue." }
                }
                @if let Some(error) = error {
                    p.error role="alert" { (error) }
                }
                form method="post" action=(PASSWORD_PATH) {
                    (crate::console::csrf_field(signed_in))
                    label { "Current password" input type="password" name="current" autocomplete="current-password" required; }
                    label { "New password (at least " (crate::accounts::MIN_PASSWORD_CHARS) " characters)"
                        input type="password" name="new" autocomplete="new-password" required minlength=(crate::accounts::MIN_PASSWORD_CHARS); }
                    label { "New password again" input type="password" name="repeated" autocomplete="new-password" required; }
                    button type="submit" { "Change password" }
                }
                // An account that must choose a password may do nothing else yet
                // (and choosing one ends its other sessions anyway).
                @if !signed_in.user.must_change_password {
                    h2 { "Sessions" }
                    form method="post" action=(LOGOUT_EVERYWHERE_PATH) {
                        (crate::console::csrf_field(signed_in))
                        p.muted { "Ends every session of your account, in every browser, this one included. Changing your password does this too." }
                        button.secondary type="submit" { "Log out everywhere" }
                    }
                }
                (logout_form(signed_in))
            }
        },
    )
}

/// The logout button (a POST with the session's CSRF token).
pub fn logout_form(signed_in: &SignedIn) -> Markup {
    html! {
        form.logout method="post" action=(LOGOUT_PATH) {
            (crate::console::csrf_field(signed_in))
            span { (signed_in.user.name) " (" (signed_in.user.role) ")" }
            " "
            a href=(PASSWORD_PATH) { "Change password" }
            " "
            button type="submit" { "Log out" }
        }
    }
}

pub async fn password_form(request: Request) -> Response {
    match request.extensions().get::<SignedIn>() {
        Some(s) => password_page(s, None).into_response(),
        None => Redirect::to(LOGIN_PATH).into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    current: String,
    new: String,
    repeated: String,
}

pub async fn password_submit(State(state): State<AppState>, request: Request) -> Response {
    let Some(signed_in) = request.extensions().get::<SignedIn>().cloned() else {
        return Redirect::to(LOGIN_PATH).into_response();
    };
    let body = match axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "form too large\n").into_response(),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<PasswordForm>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            password_page(&signed_in, Some("Fill in every field.")),
        )
            .into_response();
    };
    let now = state.clock.unix_ms();
    let store = state.store.clone();
    let who = signed_in.clone();
    let changed = tokio::task::spawn_blocking(move || {
        auth::change_password(&*store, &who, &form.current, &form.new, &form.repeated, now)
    })
    .await;
    match changed {
        Ok(Ok((id, now_signed_in))) => {
            tracing::info!(user = %now_signed_in.user.name, "password changed; other sessions ended");
            with_cookie(
                Redirect::to("/").into_response(),
                &auth::set_cookie(&id, state.secure_cookies),
            )
        }
        Ok(Err(
            e @ (auth::PasswordChangeError::Store(_) | auth::PasswordChangeError::Account(_)),
        )) => server_error(&e.to_string()),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            password_page(&signed_in, Some(&e.to_string())),
        )
            .into_response(),
        Err(e) => server_error(&e.to_string()),
    }
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The access check in front of every route (see [`Access`]). For signed-in
/// routes it finds the session, sends a must-change-password account to
/// [`PASSWORD_PATH`], checks the permission and, on state-changing requests,
/// the CSRF token; the handler finds [`SignedIn`] in the request's extensions.
pub async fn enforce(
    State((state, access)): State<(AppState, Access)>,
    request: Request,
    next: Next,
) -> Response {
    let permission = match access {
        Access::Public | Access::Appliance => return next.run(request).await,
        Access::SignedIn => None,
        Access::Operator(p) => Some(p),
    };
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |m| m.as_str().to_owned(),
        );
    let path = request.uri().path().to_owned();
    let peer = request
        .extensions()
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0.ip().to_string())
        .unwrap_or_default();
    let entry = |actor: String, outcome: &str, reason: Option<String>| rakkr_store::AuditEntry {
        at_ms: state.clock.unix_ms(),
        actor,
        permission: permission.map(|p| p.as_str().to_owned()),
        action: format!("{method} {route}"),
        target: (path != route).then(|| path.clone()),
        outcome: outcome.to_owned(),
        reason,
        ..Default::default()
    };
    match decide(&state, permission, request, &peer).await {
        Err(Refusal {
            response,
            actor,
            outcome,
            mut reason,
        }) => {
            if actor.starts_with("anonymous@") {
                let (admit, left_out) = state.audit_budget.admit(&peer, state.clock.unix_ms());
                if !admit {
                    return response;
                }
                if left_out > 0 {
                    reason = format!(
                        "{reason} ({left_out} more refusals from this address in the minute before were not recorded one by one)"
                    );
                }
            }
            crate::audit::record(state.store.clone(), entry(actor, outcome, Some(reason))).await;
            response
        }
        Ok((request, actor)) => {
            let response = next.run(request).await;
            if is_state_changing(&method) {
                let status = response.status();
                let (outcome, reason) = if status.is_client_error() || status.is_server_error() {
                    ("failed", Some(format!("answered {status}")))
                } else {
                    ("allowed", None)
                };
                let mut entry = entry(actor, outcome, reason);
                // What the handler says it changed.
                if let Some(change) = response.extensions().get::<crate::audit::AuditChange>() {
                    if change.target.is_some() {
                        entry.target.clone_from(&change.target);
                    }
                    entry.before.clone_from(&change.before);
                    entry.after.clone_from(&change.after);
                }
                crate::audit::record(state.store.clone(), entry).await;
            }
            response
        }
    }
}

/// A request the access check stopped: what to answer and what to audit.
struct Refusal {
    response: Response,
    actor: String,
    /// `denied` by access control, or `failed` (the check itself could not run).
    outcome: &'static str,
    reason: String,
}

fn refused(response: Response, actor: &str, reason: impl Into<String>) -> Refusal {
    Refusal {
        response,
        actor: actor.to_owned(),
        outcome: "denied",
        reason: reason.into(),
    }
}

fn check_failed(actor: &str, detail: &str) -> Refusal {
    Refusal {
        response: server_error(detail),
        actor: actor.to_owned(),
        outcome: "failed",
        reason: detail.to_owned(),
    }
}

/// Who is asking and whether they may: the request to pass on (with
/// [`SignedIn`] or the API token in its extensions) and the actor's name.
async fn decide(
    state: &AppState,
    permission: Option<Permission>,
    request: Request,
    peer: &str,
) -> Result<(Request, String), Refusal> {
    let anonymous = format!("anonymous@{peer}");
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    if let (Some(presented), Some(p)) = (bearer, permission)
        && takes_bearer_tokens(request.uri().path())
    {
        let (store, now) = (state.store.clone(), state.clock.unix_ms());
        let token = tokio::task::spawn_blocking(move || {
            crate::api_tokens::verify(&*store, &presented, now)
        })
        .await;
        let token = match token {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(check_failed(&anonymous, &e.to_string())),
            Err(e) => return Err(check_failed(&anonymous, &e.to_string())),
        };
        let Some(token) = token else {
            let why = "unknown, revoked or expired API token";
            return Err(refused(
                problem(StatusCode::UNAUTHORIZED, why),
                &anonymous,
                why,
            ));
        };
        let actor = auth::Actor::of_token(&token);
        if !token.role.allows(p) {
            tracing::info!(token = %token.id, permission = %p, path = %request.uri().path(), "refused: no permission");
            let why = format!("this token's role ({}) does not allow {p}", token.role);
            return Err(refused(problem(StatusCode::FORBIDDEN, &why), &actor, why));
        }
        let mut request = request;
        request.extensions_mut().insert(token);
        return Ok((request, actor));
    }
    let htmx = request.headers().contains_key("hx-request");
    let api = takes_bearer_tokens(request.uri().path());
    let cookie = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(auth::session_cookie)
        .map(str::to_owned);
    let now = state.clock.unix_ms();
    let signed_in = match cookie {
        None => None,
        Some(id) => {
            let store = state.store.clone();
            match tokio::task::spawn_blocking(move || auth::current(&*store, &id, now)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(check_failed(&anonymous, &e.to_string())),
                Err(e) => return Err(check_failed(&anonymous, &e.to_string())),
            }
        }
    };
    let Some(signed_in) = signed_in else {
        let why = "not signed in";
        if api {
            let response = problem(
                StatusCode::UNAUTHORIZED,
                "send an API token (Authorization: Bearer …) or log in",
            );
            return Err(refused(response, &anonymous, why));
        }
        if htmx {
            let mut res = (StatusCode::UNAUTHORIZED, "log in first\n").into_response();
            res.headers_mut()
                .insert("hx-redirect", HeaderValue::from_static(LOGIN_PATH));
            return Err(refused(res, &anonymous, why));
        }
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let to = format!("{LOGIN_PATH}?next={}", urlencode(path));
        return Err(refused(Redirect::to(&to).into_response(), &anonymous, why));
    };
    let actor = signed_in.actor();
    let path = request.uri().path().to_owned();
    if signed_in.user.must_change_password && path != PASSWORD_PATH && path != LOGOUT_PATH {
        let response = Redirect::to(PASSWORD_PATH).into_response();
        return Err(refused(
            response,
            &actor,
            "must change the one-time password first",
        ));
    }
    if let Some(p) = permission
        && !signed_in.may(p)
    {
        tracing::info!(user = %signed_in.user.name, permission = %p, %path, "refused: no permission");
        let detail = format!("your role ({}) does not allow {p}", signed_in.user.role);
        let response = if api {
            problem(StatusCode::FORBIDDEN, &detail)
        } else {
            (StatusCode::FORBIDDEN, format!("{detail}\n")).into_response()
        };
        return Err(refused(response, &actor, detail));
    }
    let mut request = request;
    if is_state_changing(request.method()) {
        let header_token = request
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let token = match header_token {
            Some(t) => Some(t),
            None => {
                // A form: read the body (bounded) for its `csrf` field and
                // hand the same bytes on to the handler.
                let (parts, body) = request.into_parts();
                let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
                    Ok(b) => b,
                    Err(_) => {
                        let response =
                            (StatusCode::PAYLOAD_TOO_LARGE, "form too large\n").into_response();
                        return Err(refused(response, &actor, "form too large"));
                    }
                };
                let token = form_field(&bytes, "csrf");
                request = Request::from_parts(parts, axum::body::Body::from(bytes));
                token
            }
        };
        if !signed_in.csrf_ok(token.as_deref()) {
            tracing::info!(user = %signed_in.user.name, %path, "refused: missing or wrong CSRF token");
            let response = (
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token; reload the page\n",
            )
                .into_response();
            return Err(refused(response, &actor, "missing or wrong CSRF token"));
        }
    }
    request.extensions_mut().insert(signed_in);
    Ok((request, actor))
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/console/nodes?x=1")), "/console/nodes?x=1");
        for evil in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_next(Some(evil)), "/", "{evil}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn origins_must_name_this_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("fleet:8080"));
        assert!(same_origin(&h), "no Origin: not a browser cross-site post");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://fleet:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
