//! The local administration socket: account and API-token commands from the
//! machine the server runs on, before anyone can log in (`rakkr-server user …`,
//! `rakkr-server api-token …`).
//!
//! `{data_dir}/admin.sock` is a Unix stream socket, mode 0600, answered only
//! for a peer whose uid (`SO_PEERCRED`) is the data directory's owner or
//! root: whoever may read the data directory (and so the store) may manage
//! accounts, nobody else. No network listener offers these commands.
//!
//! Wire format: one request per connection, one JSON object on one line of at
//! most [`MAX_REQUEST_BYTES`], within [`REQUEST_WAIT`]; one JSON line back,
//! `{"ok":true,…}` or `{"ok":false,"error":"…"}`.

use crate::audit::AuditChange;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rakkr_store::{Store, UserChange};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::accounts;
use crate::clock::Clock;

pub const SOCKET_NAME: &str = "admin.sock";
pub const MAX_REQUEST_BYTES: usize = 4096;
pub const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// Largest answer the command line reads (a list of some 30,000 accounts).
pub const MAX_ANSWER_BYTES: u64 = 8 * 1024 * 1024;

/// What the socket can be asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    UserAdd {
        name: String,
        role: String,
    },
    UserList,
    UserResetPassword {
        name: String,
    },
    UserDisable {
        name: String,
    },
    UserEnable {
        name: String,
    },
    /// End every session of the account ("log out everywhere").
    UserEndSessions {
        name: String,
    },
    UserRole {
        name: String,
        role: String,
    },
    TokenCreate {
        name: String,
        role: String,
        #[serde(default)]
        ttl_days: Option<u64>,
    },
    TokenList,
    TokenRevoke {
        id: String,
    },
}

/// An API token as the socket shows it (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

impl From<&rakkr_store::ApiTokenRecord> for TokenView {
    fn from(t: &rakkr_store::ApiTokenRecord) -> Self {
        TokenView {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role.as_str().to_owned(),
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            revoked_ms: t.revoked_ms,
        }
    }
}

/// An account as the socket shows it (never its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccountView {
    pub name: String,
    pub role: String,
    pub disabled: bool,
    pub must_change_password: bool,
    pub created_ms: u64,
    pub password_changed_ms: u64,
}

impl From<&rakkr_store::UserRecord> for AccountView {
    fn from(u: &rakkr_store::UserRecord) -> Self {
        AccountView {
            name: u.name.clone(),
            role: u.role.as_str().to_owned(),
            disabled: u.disabled,
            must_change_password: u.must_change_password,
            created_ms: u.created_ms,
            password_changed_ms: u.password_changed_ms,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A one-time password to hand over (add, reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<AccountView>>,
    /// A new API token, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<TokenView>>,
    /// The account before a change, for the audit record (not sent).
    #[serde(skip)]
    pub account_before: Option<AccountView>,
}

impl AdminResponse {
    fn refused(error: impl Into<String>) -> AdminResponse {
        AdminResponse {
            error: Some(error.into()),
            ..AdminResponse::default()
        }
    }

    fn ok() -> AdminResponse {
        AdminResponse {
            ok: true,
            ..AdminResponse::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot open the admin socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the server's admin socket {path}: {source} (is rakkr-server running on this data directory, as this user?)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket: {0}")]
    Exchange(String),
}

/// Bind `{data_dir}/admin.sock` (replacing a stale one: the data directory's
/// lock says no other server owns it) and make it owner-only.
pub fn bind(data_dir: &Path) -> Result<UnixListener, AdminError> {
    let path = data_dir.join(SOCKET_NAME);
    let fail = |source| AdminError::Bind {
        path: path.clone(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let listener = UnixListener::bind(&path).map_err(fail)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}

/// Answer requests until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    data_dir: PathBuf,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let owner = std::fs::metadata(&data_dir).map(|m| m.uid()).ok();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let peer = stream.peer_cred().ok().map(|c| c.uid());
        if peer.is_none() || !(peer == Some(0) || peer == owner) {
            tracing::warn!(
                ?peer,
                ?owner,
                "admin socket: refused a peer that does not own the data directory"
            );
            continue;
        }
        let (store, clock) = (store.clone(), clock.clone());
        let actor = format!("local-admin:uid={}", peer.unwrap_or_default());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, store, clock, actor).await {
                tracing::info!(error = %e, "admin socket request failed");
            }
        });
    }
    let _ = std::fs::remove_file(data_dir.join(SOCKET_NAME));
}

async fn answer(
    stream: UnixStream,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    actor: String,
) -> Result<(), String> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let read = reader.read_line(&mut line);
    let response = match tokio::time::timeout(REQUEST_WAIT, read).await {
        Err(_) => AdminResponse::refused(format!("no request within {REQUEST_WAIT:?}")),
        Ok(Err(e)) => AdminResponse::refused(format!("unreadable request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => {
            AdminResponse::refused(format!("request over {MAX_REQUEST_BYTES} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(line.trim_end()) {
            Err(e) => AdminResponse::refused(format!("bad request: {e}")),
            Ok(request) => {
                let now = clock.unix_ms();
                tokio::task::spawn_blocking(move || {
                    let response = execute(&*store, request.clone(), now);
                    audit_command(&*store, &actor, &request, &response, now);
                    response
                })
                .await
                .unwrap_or_else(|e| AdminResponse::refused(format!("request failed: {e}")))
            }
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(|e| e.to_string())?;
    out.push(b'\n');
    tokio::time::timeout(REQUEST_WAIT, write.write_all(&out))
        .await
        .map_err(|_| "the client did not read the answer".to_owned())?
        .map_err(|e| e.to_string())
}

/// Carry out one request (on a blocking thread: hashing is slow by design).
pub fn execute(store: &dyn Store, request: AdminRequest, now_ms: u64) -> AdminResponse {
    let result = (|| -> Result<AdminResponse, accounts::AccountError> {
        Ok(match request {
            AdminRequest::UserAdd { name, role } => {
                let role = accounts::parse_role(&role)?;
                let password = accounts::add_user(store, &name, role, now_ms)?;
                tracing::info!(user = %name, %role, "account added (admin socket)");
                AdminResponse {
                    password: Some(password),
                    account: store.user(&name)?.as_ref().map(AccountView::from),
                    ..AdminResponse::ok()
                }
            }
            AdminRequest::UserList => AdminResponse {
                accounts: Some(store.users()?.iter().map(AccountView::from).collect()),
                ..AdminResponse::ok()
            },
            AdminRequest::UserResetPassword { name } => {
                let password = accounts::reset_password(store, &name, now_ms)?;
                tracing::info!(user = %name, "password reset (admin socket)");
                AdminResponse {
                    password: Some(password),
                    account: store.user(&name)?.as_ref().map(AccountView::from),
                    ..AdminResponse::ok()
                }
            }
            AdminRequest::UserDisable { name } => {
                change(store, &name, UserChange::Disabled(true), now_ms)?
            }
            AdminRequest::UserEnable { name } => {
                change(store, &name, UserChange::Disabled(false), now_ms)?
            }
            AdminRequest::UserEndSessions { name } => {
                change(store, &name, UserChange::EndSessions, now_ms)?
            }
            AdminRequest::UserRole { name, role } => {
                let role = accounts::parse_role(&role)?;
                change(store, &name, UserChange::Role(role), now_ms)?
            }
            AdminRequest::TokenCreate {
                name,
                role,
                ttl_days,
            } => {
                let role = accounts::parse_role(&role)?;
                let (token, record) =
                    crate::api_tokens::create(store, &name, role, ttl_days, now_ms)?;
                tracing::info!(token = %record.id, name = %record.name, %role, "API token created (admin socket)");
                AdminResponse {
                    token: Some(token),
                    tokens: Some(vec![TokenView::from(&record)]),
                    ..AdminResponse::ok()
                }
            }
            AdminRequest::TokenList => AdminResponse {
                tokens: Some(store.api_tokens()?.iter().map(TokenView::from).collect()),
                ..AdminResponse::ok()
            },
            AdminRequest::TokenRevoke { id } => {
                let record = store.revoke_api_token(&id, now_ms)?;
                tracing::info!(token = %record.id, name = %record.name, "API token revoked (admin socket)");
                AdminResponse {
                    tokens: Some(vec![TokenView::from(&record)]),
                    ..AdminResponse::ok()
                }
            }
        })
    })();
    result.unwrap_or_else(|e| AdminResponse::refused(e.to_string()))
}

/// What an account or token request did, for the audit log: the action's
/// name and the change (target, before, after; never a password or token).
/// The admin socket and the console's account pages describe requests alike.
pub fn describe(request: &AdminRequest, response: &AdminResponse) -> (String, AuditChange) {
    let (action, target) = match request {
        AdminRequest::UserAdd { name, role } => (
            format!("user add (role {role})"),
            Some(format!("user:{name}")),
        ),
        AdminRequest::UserList => ("user list".to_owned(), None),
        AdminRequest::UserResetPassword { name } => (
            "user reset-password".to_owned(),
            Some(format!("user:{name}")),
        ),
        AdminRequest::UserDisable { name } => {
            ("user disable".to_owned(), Some(format!("user:{name}")))
        }
        AdminRequest::UserEnable { name } => {
            ("user enable".to_owned(), Some(format!("user:{name}")))
        }
        AdminRequest::UserEndSessions { name } => {
            ("user end-sessions".to_owned(), Some(format!("user:{name}")))
        }
        AdminRequest::UserRole { name, role } => {
            (format!("user role {role}"), Some(format!("user:{name}")))
        }
        AdminRequest::TokenCreate { name, role, .. } => (
            format!("api-token create (role {role}, name {name:?})"),
            response
                .tokens
                .as_ref()
                .and_then(|t| t.first())
                .map(|t| format!("token:{}", t.id)),
        ),
        AdminRequest::TokenList => ("api-token list".to_owned(), None),
        AdminRequest::TokenRevoke { id } => {
            ("api-token revoke".to_owned(), Some(format!("token:{id}")))
        }
    };
    let lists = matches!(request, AdminRequest::UserList | AdminRequest::TokenList);
    let change = AuditChange {
        target,
        before: json(response.account_before.as_ref()),
        // Changes, not lists (which return accounts and tokens too).
        after: if lists {
            None
        } else {
            json(response.account.as_ref())
                .or_else(|| json(response.tokens.as_ref().and_then(|t| t.first())))
        },
    };
    (action, change)
}

fn json<T: Serialize>(value: Option<&T>) -> Option<serde_json::Value> {
    value.and_then(|v| serde_json::to_value(v).ok())
}

/// Record an admin-socket command in the audit log.
fn audit_command(
    store: &dyn Store,
    actor: &str,
    request: &AdminRequest,
    response: &AdminResponse,
    now_ms: u64,
) {
    let (action, change) = describe(request, response);
    let entry = rakkr_store::AuditEntry {
        at_ms: now_ms,
        actor: actor.to_owned(),
        permission: None,
        action,
        target: change.target,
        outcome: if response.ok { "allowed" } else { "failed" }.to_owned(),
        reason: response.error.clone(),
        before: change.before,
        after: change.after,
    };
    crate::audit::record_now(store, entry);
}

fn change(
    store: &dyn Store,
    name: &str,
    change: UserChange,
    now_ms: u64,
) -> Result<AdminResponse, accounts::AccountError> {
    let what = match &change {
        UserChange::Password { .. } => "password set".to_owned(),
        UserChange::Disabled(true) => "disabled".to_owned(),
        UserChange::Disabled(false) => "enabled".to_owned(),
        UserChange::Role(role) => format!("role {role}"),
        UserChange::EndSessions => "sessions ended".to_owned(),
    };
    let before = store.user(name)?.map(|u| AccountView::from(&u));
    let account = store.change_user(name, change, now_ms)?;
    tracing::info!(user = %name, change = %what, "account changed (admin socket)");
    Ok(AdminResponse {
        account: Some(AccountView::from(&account)),
        account_before: before,
        ..AdminResponse::ok()
    })
}

/// Send one request to the server owning `data_dir` (the command line's side).
pub fn request(data_dir: &Path, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    use std::io::{BufRead, Read, Write};
    let path = data_dir.join(SOCKET_NAME);
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| AdminError::Connect {
            path: path.clone(),
            source,
        })?;
    let exchange = |e: std::io::Error| AdminError::Exchange(e.to_string());
    // Hashing a password takes a moment; a stuck server should not hang the CLI.
    stream
        .set_read_timeout(Some(REQUEST_WAIT * 6))
        .map_err(exchange)?;
    let mut line = serde_json::to_vec(request).map_err(|e| AdminError::Exchange(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(exchange)?;
    let mut answer = String::new();
    std::io::BufReader::new(stream.take(MAX_ANSWER_BYTES))
        .read_line(&mut answer)
        .map_err(exchange)?;
    serde_json::from_str(answer.trim_end())
        .map_err(|e| AdminError::Exchange(format!("unreadable answer {answer:?}: {e}")))
}
