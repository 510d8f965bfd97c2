//! Storage destinations (decision 0017): named places recordings are copied
//! to once the server holds them, managed at run time with `settings.manage`.
//!
//! A destination is opened as an [`Opened`], which delivers a file and runs
//! the probe whatever its kind (the delivery runner does not know kinds):
//! `local` as `object_store`'s `LocalFileSystem` under its directory, `s3`
//! through `object_store::aws` with path-style requests and a SHA-256
//! checksum on every put, which the bucket verifies, and `smb` through
//! [`crate::smb`] (decision 0018). Its secret (S3's secret access key, SMB's
//! password) is kept sealed ([`crate::secrets`]) and never shown: views say
//! whether one is set, and saving without one keeps the one there.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _};
use rakkr_store::{DestinationRecord, DestinationSpec};
use serde::{Deserialize, Serialize};

use crate::audit::AuditChange;
use crate::auth::SignedIn;
use crate::console::{console_page, csrf_field};
use crate::http::{AppState, Problem, blocking, problem, store_problem};

/// Most destinations a server keeps.
pub const MAX_DESTINATIONS: usize = 64;

/// What the associated data of a destination's sealed secret is.
fn secret_context(name: &str, spec: &DestinationSpec) -> String {
    format!("destination:{}:{name}", spec.kind())
}

/// `secret` sealed for the destination `name` of `spec`'s kind.
pub fn seal_secret(
    secrets: &crate::secrets::SecretBox,
    name: &str,
    spec: &DestinationSpec,
    secret: &str,
) -> Result<String, crate::secrets::SecretError> {
    secrets.seal(secret, &secret_context(name, spec))
}

/// A destination as the API and console show it: everything but the secret.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct DestinationView {
    pub name: String,
    #[serde(flatten)]
    pub spec: DestinationSpec,
    /// A secret is set (it is never shown).
    pub secret_set: bool,
    /// The upload policies that send to it.
    pub used_by: Vec<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl DestinationView {
    fn of(state: &AppState, r: &DestinationRecord) -> DestinationView {
        DestinationView {
            name: r.name.clone(),
            spec: r.spec.clone(),
            secret_set: r.sealed_secret.is_some(),
            used_by: state.delivery_policies.using(&r.name),
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
        }
    }
}

/// What `POST /api/v1/destinations` takes: a destination and, for a kind
/// that needs one, its secret (absent: the one already set stays).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct DestinationInput {
    pub name: String,
    #[serde(flatten)]
    pub spec: DestinationSpec,
    /// S3: the secret access key; SMB: the account's password. Write-only.
    #[serde(default)]
    pub secret: Option<String>,
}

/// Check what a destination says; the error names the field.
pub fn check_spec(name: &str, spec: &DestinationSpec) -> Result<(), String> {
    rakkr_protocol::schedule::check_policy_name(name).map_err(|e| format!("name: {e}"))?;
    match spec {
        DestinationSpec::Local { path } => {
            if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err("path: an absolute directory without '..'".into());
            }
        }
        DestinationSpec::S3 {
            endpoint,
            region,
            bucket,
            prefix,
            access_key_id,
            allow_http,
        } => {
            if let Some(e) = endpoint {
                let http = e.starts_with("http://");
                if !(http || e.starts_with("https://")) || e.len() > 512 {
                    return Err("endpoint: an http:// or https:// address".into());
                }
                if http && !allow_http {
                    return Err(
                        "endpoint: http:// sends the data in clear; set allow_http to mean it"
                            .into(),
                    );
                }
            }
            if region.trim().is_empty() || region.len() > 64 {
                return Err("region: 1 to 64 characters".into());
            }
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !bucket_ok {
                return Err("bucket: 3 to 63 lowercase letters, digits, '-' or '.'".into());
            }
            if !prefix.is_empty() {
                rakkr_protocol::schedule::check_folder(prefix)
                    .map_err(|e| format!("prefix: {e}"))?;
            }
            if access_key_id.trim().is_empty() || access_key_id.len() > 256 {
                return Err("access_key_id: 1 to 256 characters".into());
            }
        }
        DestinationSpec::Smb {
            server,
            share,
            prefix,
            user,
            domain,
            require_encryption: _,
        } => {
            let server_ok = !server.is_empty()
                && server.len() <= 255
                && !server
                    .chars()
                    .any(|c| c.is_whitespace() || "/\\@".contains(c));
            if !server_ok {
                return Err("server: a host name or address, with :port if not 445".into());
            }
            // What Windows and Samba refuse in a share name.
            let share_ok = !share.trim().is_empty()
                && share.len() <= 80
                && !share
                    .chars()
                    .any(|c| c.is_control() || "\\/:*?\"<>|[]+=;,".contains(c));
            if !share_ok {
                return Err(
                    "share: 1 to 80 characters, without \\ / : * ? \" < > | [ ] + = ; ,".into(),
                );
            }
            if !prefix.is_empty() {
                rakkr_protocol::schedule::check_folder(prefix)
                    .map_err(|e| format!("prefix: {e}"))?;
            }
            if user.trim().is_empty() || user.len() > 256 {
                return Err("user: 1 to 256 characters".into());
            }
            if domain.len() > 256 {
                return Err("domain: at most 256 characters".into());
            }
        }
    }
    Ok(())
}

/// `record`'s secret, unsealed; `what` names it in the error when none is set.
fn unseal(
    secrets: &crate::secrets::SecretBox,
    record: &DestinationRecord,
    what: &str,
) -> Result<String, String> {
    let sealed = record
        .sealed_secret
        .as_deref()
        .ok_or_else(|| format!("no {what} is set"))?;
    secrets
        .open(sealed, &secret_context(&record.name, &record.spec))
        .map_err(|e| e.to_string())
}

/// A destination ready to take files.
pub enum Opened {
    /// A local directory or an S3 bucket.
    Objects(Arc<dyn ObjectStore>),
    /// An SMB share, connected per delivery.
    Smb(crate::smb::SmbTarget),
}

impl Opened {
    /// Deliver `file` (`bytes` long) to `path`, checked as the runner's
    /// invariants say: whole and of the right size at the destination.
    pub async fn deliver(
        &self,
        path: &ObjectPath,
        file: &std::path::Path,
        bytes: u64,
    ) -> Result<(), String> {
        match self {
            Opened::Objects(os) => crate::delivery::copy_file(&**os, path, file, bytes).await,
            Opened::Smb(target) => {
                let mut share = target.connect().await?;
                let delivered = share.put_file(path.as_ref(), file, bytes).await;
                share.close().await;
                delivered
            }
        }
    }

    /// Write `body` to `path`, read it back and delete it.
    async fn probe(&self, path: &ObjectPath, body: bytes::Bytes) -> Result<(), String> {
        let back = match self {
            Opened::Objects(os) => {
                os.put(path, body.clone().into())
                    .await
                    .map_err(|e| e.to_string())?;
                let back = os
                    .get(path)
                    .await
                    .map_err(|e| e.to_string())?
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())?;
                os.delete(path).await.map_err(|e| e.to_string())?;
                back.to_vec()
            }
            Opened::Smb(target) => {
                let mut share = target.connect().await?;
                let probed = async {
                    share.write(path.as_ref(), &body).await?;
                    let back = share.read(path.as_ref()).await?;
                    share.delete(path.as_ref()).await?;
                    Ok::<_, String>(back)
                }
                .await;
                share.close().await;
                probed?
            }
        };
        if back != body {
            return Err("the probe read back differs from what was written".to_owned());
        }
        Ok(())
    }
}

/// Open `record` (its secret unsealed with `secrets`).
pub fn open(
    secrets: &crate::secrets::SecretBox,
    record: &DestinationRecord,
) -> Result<Opened, String> {
    match &record.spec {
        DestinationSpec::Local { path } => {
            std::fs::create_dir_all(path).map_err(|e| format!("cannot make {path}: {e}"))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(path)
                .map_err(|e| e.to_string())?
                .with_fsync(true);
            Ok(Opened::Objects(Arc::new(fs)))
        }
        DestinationSpec::S3 {
            endpoint,
            region,
            bucket,
            prefix: _,
            access_key_id,
            allow_http,
        } => {
            let secret = unseal(secrets, record, "secret access key")?;
            let mut builder = object_store::aws::AmazonS3Builder::new()
                .with_region(region)
                .with_bucket_name(bucket)
                .with_access_key_id(access_key_id)
                .with_secret_access_key(secret)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(*allow_http)
                .with_checksum_algorithm(object_store::aws::Checksum::SHA256);
            if let Some(e) = endpoint {
                builder = builder.with_endpoint(e);
            }
            Ok(Opened::Objects(Arc::new(
                builder.build().map_err(|e| e.to_string())?,
            )))
        }
        DestinationSpec::Smb {
            server,
            share,
            prefix: _,
            user,
            domain,
            require_encryption,
        } => Ok(Opened::Smb(crate::smb::SmbTarget {
            server: server.clone(),
            share: share.clone(),
            user: user.clone(),
            domain: domain.clone(),
            password: unseal(secrets, record, "password")?,
            require_encryption: *require_encryption,
        })),
    }
}

/// The key prefix a destination puts objects under (S3's and SMB's `prefix`).
pub fn key_prefix(spec: &DestinationSpec) -> &str {
    match spec {
        DestinationSpec::Local { .. } => "",
        DestinationSpec::S3 { prefix, .. } | DestinationSpec::Smb { prefix, .. } => prefix,
    }
}

/// `GET /api/v1/destinations`
pub async fn api_list(State(state): State<AppState>) -> Result<Response, Problem> {
    let store = state.store.clone();
    let all = blocking(move || store.destinations().map_err(store_problem)).await?;
    let views: Vec<DestinationView> = all.iter().map(|r| DestinationView::of(&state, r)).collect();
    Ok(Json(views).into_response())
}

fn audit_view(v: &DestinationView) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Make or replace a destination; its view and the change to audit (with
/// before and after, never the secret).
async fn save(
    state: &AppState,
    input: DestinationInput,
) -> Result<(DestinationView, AuditChange), Problem> {
    check_spec(&input.name, &input.spec)
        .map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let secrets = state.secrets.clone();
    let now = state.clock.unix_ms();
    let store = state.store.clone();
    let (before, after) = blocking(move || {
        let all = store.destinations().map_err(store_problem)?;
        let before = all.iter().find(|d| d.name == input.name).cloned();
        if before.is_none() && all.len() >= MAX_DESTINATIONS {
            return Err(problem(
                StatusCode::CONFLICT,
                format!("a server keeps at most {MAX_DESTINATIONS} destinations"),
            ));
        }
        let sealed_secret = match (input.secret.filter(|s| !s.is_empty()), &before) {
            (Some(secret), _) => Some(
                seal_secret(&secrets, &input.name, &input.spec, &secret)
                    .map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?,
            ),
            // Kept only while it stays bound to the same kind and name.
            (None, Some(b)) if b.spec.kind() == input.spec.kind() => b.sealed_secret.clone(),
            (None, _) => None,
        };
        if matches!(input.spec, DestinationSpec::S3 { .. }) && sealed_secret.is_none() {
            return Err(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "secret: an S3 destination needs its secret access key",
            ));
        }
        let record = DestinationRecord {
            name: input.name,
            spec: input.spec,
            sealed_secret,
            created_ms: before.as_ref().map_or(now, |b| b.created_ms),
            updated_ms: now,
        };
        store.put_destination(&record).map_err(store_problem)?;
        Ok((before, record))
    })
    .await?;
    let after = DestinationView::of(state, &after);
    let change = AuditChange {
        target: Some(format!("destination:{}", after.name)),
        before: before.map(|b| audit_view(&DestinationView::of(state, &b))),
        after: Some(audit_view(&after)),
    };
    Ok((after, change))
}

/// `POST /api/v1/destinations`: make or replace a destination.
pub async fn api_put(
    State(state): State<AppState>,
    body: Result<Json<DestinationInput>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(input) = body.map_err(|e| problem(e.status(), e.body_text()))?;
    let (view, change) = save(&state, input).await?;
    Ok(change.to(Json(view).into_response()))
}

/// Delete a destination (refused while an upload policy sends to it).
async fn delete(state: &AppState, name: &str) -> Result<AuditChange, Problem> {
    let used_by = state.delivery_policies.using(name);
    if !used_by.is_empty() {
        return Err(problem(
            StatusCode::CONFLICT,
            format!(
                "destination {name:?} is used by the upload policies {}: change the configuration first",
                used_by.join(", ")
            ),
        ));
    }
    let store = state.store.clone();
    let target = name.to_owned();
    let before = blocking(move || store.delete_destination(&target).map_err(store_problem)).await?;
    let Some(before) = before else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            format!("no destination {name:?}"),
        ));
    };
    Ok(AuditChange {
        target: Some(format!("destination:{name}")),
        before: Some(audit_view(&DestinationView::of(state, &before))),
        after: None,
    })
}

/// `POST /api/v1/destinations/{name}/delete`
pub async fn api_delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let change = delete(&state, &name).await?;
    Ok(change.to(StatusCode::NO_CONTENT.into_response()))
}

/// What a destination test found.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct DestinationTest {
    pub ok: bool,
    /// What failed, as the destination said it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Write, read back and delete a small probe object (`.rakkr-probe-{ms}`
/// under its prefix) at the destination `name`.
async fn test(state: &AppState, name: &str) -> Result<DestinationTest, Problem> {
    let store = state.store.clone();
    let target = name.to_owned();
    let record = blocking(move || {
        store
            .destinations()
            .map_err(store_problem)
            .map(|all| all.into_iter().find(|d| d.name == target))
    })
    .await?
    .ok_or_else(|| problem(StatusCode::NOT_FOUND, format!("no destination {name:?}")))?;
    let probe = async {
        let key = crate::delivery::object_path(
            key_prefix(&record.spec),
            &format!(".rakkr-probe-{}", state.clock.unix_ms()),
        )?;
        let body = bytes::Bytes::from_static(b"rakkr destination probe\n");
        open(&state.secrets, &record)?.probe(&key, body).await
    };
    let result = tokio::time::timeout(Duration::from_secs(30), probe)
        .await
        .unwrap_or_else(|_| Err("no answer within 30 s".into()));
    Ok(DestinationTest {
        ok: result.is_ok(),
        error: result.err(),
    })
}

/// `POST /api/v1/destinations/{name}/test`
pub async fn api_test(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    Ok(Json(test(&state, &name).await?).into_response())
}

/// The console's destinations page.
pub const DESTINATIONS_PATH: &str = "/destinations";

/// What the page shows besides the list: a test's outcome, an error.
enum Notice<'a> {
    Tested(&'a str, &'a DestinationTest),
    Error(&'a str),
}

fn where_of(spec: &DestinationSpec) -> String {
    match spec {
        DestinationSpec::Local { path } => path.clone(),
        DestinationSpec::S3 {
            endpoint,
            bucket,
            prefix,
            ..
        } => format!(
            "{} · s3://{bucket}/{prefix}",
            endpoint.as_deref().unwrap_or("AWS")
        ),
        DestinationSpec::Smb {
            server,
            share,
            prefix,
            user,
            require_encryption,
            ..
        } => format!(
            "smb://{user}@{server}/{share}/{prefix}{}",
            if *require_encryption {
                " · encrypted"
            } else {
                ""
            }
        ),
    }
}

fn destinations_page(
    views: &[DestinationView],
    notice: Option<Notice<'_>>,
    signed_in: &SignedIn,
) -> Markup {
    html! {
        (console_page("Destinations", signed_in, html! {}, html! {
            h1 { "Destinations" }
            p.muted { "Where the server copies recordings once it holds them, as the upload policies of the configuration say. Secrets are sealed and never shown." }
            @match notice {
                Some(Notice::Error(e)) => p.error role="alert" { (e) },
                Some(Notice::Tested(name, t)) => {
                    @if t.ok { p.ok role="status" { "Destination " (name) " works: a probe was written, read back and deleted." } }
                    @else { p.error role="alert" { "Destination " (name) " failed its test: " (t.error.as_deref().unwrap_or_default()) } }
                },
                None => {},
            }
            @if views.is_empty() {
                p.muted { "No destinations yet: the server's own recordings directory is the only copy." }
            } @else {
                table.audit.destinations {
                    thead { tr { th { "Name" } th { "Kind" } th { "Where" } th { "Secret" } th { "Upload policies" } th { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for v in views {
                            tr data-destination=(v.name) {
                                td { strong { (v.name) } }
                                td { (v.spec.kind()) }
                                td { code { (where_of(&v.spec)) } }
                                td { @if v.secret_set { "set" } @else { span.muted { "none" } } }
                                td { @if v.used_by.is_empty() { span.muted { "none" } } @else { (v.used_by.join(", ")) } }
                                td.nowrap {
                                    form.inline method="post" action={ (DESTINATIONS_PATH) "/" (v.name) "/test" } {
                                        (csrf_field(signed_in))
                                        button.secondary type="submit" { "Test" }
                                    }
                                    @if v.used_by.is_empty() {
                                        " "
                                        form.inline method="post" action={ (DESTINATIONS_PATH) "/" (v.name) "/delete" } {
                                            (csrf_field(signed_in))
                                            button.secondary type="submit" { "Delete" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section.panel aria-labelledby="dest-h" {
                h2 #dest-h { "Add or change a destination" }
                form.editor.destination method="post" action=(DESTINATIONS_PATH) autocomplete="off" {
                    (csrf_field(signed_in))
                    fieldset {
                        legend { "Destination" }
                        label { "Name" input type="text" name="name" required maxlength="64" pattern="[a-z0-9_-]+"; }
                        label { "Kind"
                            select name="kind" { option value="local" { "local directory" } option value="s3" { "S3 bucket" } option value="smb" { "SMB share" } }
                        }
                        label { "Folder prefix (S3, SMB)" input type="text" name="prefix" placeholder="site-1"; }
                        label { "Secret access key (S3) or password (SMB)" input type="password" name="secret" autocomplete="new-password" placeholder="leave empty to keep the one set"; }
                    }
                    fieldset {
                        legend { "Local directory" }
                        label { "Directory" input type="text" name="path" placeholder="/srv/nas/rakkr"; }
                    }
                    fieldset {
                        legend { "S3 bucket" }
                        label { "Endpoint" input type="text" name="endpoint" placeholder="https://s3.example:9000 (empty: AWS)"; }
                        label { "Region" input type="text" name="region" placeholder="us-east-1"; }
                        label { "Bucket" input type="text" name="bucket"; }
                        label { "Access key id" input type="text" name="access_key_id"; }
                        label.check { input type="checkbox" name="allow_http" value="on"; " Allow http:// (trusted networks only)" }
                    }
                    fieldset {
                        legend { "SMB share" }
                        label { "Server" input type="text" name="server" placeholder="nas.local or nas.local:445"; }
                        label { "Share" input type="text" name="share" placeholder="recordings"; }
                        label { "User" input type="text" name="user"; }
                        label { "Domain" input type="text" name="domain" placeholder="empty: the server's own accounts"; }
                        label.check { input type="checkbox" name="require_encryption" value="on"; " Require encryption (SMB 3)" }
                    }
                    button type="submit" { "Save destination" }
                }
            }
        }))
    }
}

async fn list_views(state: &AppState) -> Result<Vec<DestinationView>, Problem> {
    let store = state.store.clone();
    let all = blocking(move || store.destinations().map_err(store_problem)).await?;
    Ok(all.iter().map(|r| DestinationView::of(state, r)).collect())
}

async fn render(
    state: &AppState,
    signed_in: &SignedIn,
    status: StatusCode,
    notice: Option<Notice<'_>>,
) -> Response {
    match list_views(state).await {
        Ok(views) => (status, destinations_page(&views, notice, signed_in)).into_response(),
        Err(p) => p.into_response(),
    }
}

/// `GET /destinations`
pub async fn page(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
) -> Response {
    render(&state, &signed_in, StatusCode::OK, None).await
}

/// The destination form as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    name: String,
    kind: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    bucket: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    access_key_id: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    allow_http: Option<String>,
    #[serde(default)]
    server: String,
    #[serde(default)]
    share: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    require_encryption: Option<String>,
}

impl DestinationForm {
    fn input(self) -> Result<DestinationInput, String> {
        let spec = match self.kind.as_str() {
            "local" => DestinationSpec::Local {
                path: self.path.trim().to_owned(),
            },
            "s3" => DestinationSpec::S3 {
                endpoint: Some(self.endpoint.trim().to_owned()).filter(|e| !e.is_empty()),
                region: self.region.trim().to_owned(),
                bucket: self.bucket.trim().to_owned(),
                prefix: self.prefix.trim().trim_matches('/').to_owned(),
                access_key_id: self.access_key_id.trim().to_owned(),
                allow_http: self.allow_http.is_some(),
            },
            "smb" => DestinationSpec::Smb {
                server: self.server.trim().to_owned(),
                share: self.share.trim().to_owned(),
                prefix: self.prefix.trim().trim_matches('/').to_owned(),
                user: self.user.trim().to_owned(),
                domain: self.domain.trim().to_owned(),
                require_encryption: self.require_encryption.is_some(),
            },
            other => return Err(format!("kind {other:?}: local, s3 or smb")),
        };
        Ok(DestinationInput {
            name: self.name.trim().to_owned(),
            spec,
            secret: Some(self.secret).filter(|s| !s.is_empty()),
        })
    }
}

/// `POST /destinations` (form)
pub async fn save_form(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Form(form): Form<DestinationForm>,
) -> Response {
    let saved = match form.input() {
        Ok(input) => save(&state, input).await,
        Err(e) => Err(problem(StatusCode::UNPROCESSABLE_ENTITY, e)),
    };
    match saved {
        Ok((_, change)) => change.to(Redirect::to(DESTINATIONS_PATH).into_response()),
        Err(p) => render(&state, &signed_in, p.status, Some(Notice::Error(&p.detail))).await,
    }
}

/// The CSRF-only form of the row buttons.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
}

/// `POST /destinations/{name}/test` (form)
pub async fn test_form(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(name): Path<String>,
    Form(_): Form<RowForm>,
) -> Response {
    match test(&state, &name).await {
        Ok(t) => {
            render(
                &state,
                &signed_in,
                StatusCode::OK,
                Some(Notice::Tested(&name, &t)),
            )
            .await
        }
        Err(p) => render(&state, &signed_in, p.status, Some(Notice::Error(&p.detail))).await,
    }
}

/// `POST /destinations/{name}/delete` (form)
pub async fn delete_form(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(name): Path<String>,
    Form(_): Form<RowForm>,
) -> Response {
    match delete(&state, &name).await {
        Ok(change) => change.to(Redirect::to(DESTINATIONS_PATH).into_response()),
        Err(p) => render(&state, &signed_in, p.status, Some(Notice::Error(&p.detail))).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: &str, allow_http: bool, bucket: &str, prefix: &str) -> DestinationSpec {
        DestinationSpec::S3 {
            endpoint: Some(endpoint.into()),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
            access_key_id: "AKIA".into(),
            allow_http,
        }
    }

    fn smb(server: &str, share: &str, prefix: &str, user: &str) -> DestinationSpec {
        DestinationSpec::Smb {
            server: server.into(),
            share: share.into(),
            prefix: prefix.into(),
            user: user.into(),
            domain: String::new(),
            require_encryption: false,
        }
    }

    #[test]
    fn destinations_are_checked_field_by_field() {
        assert!(check_spec("office", &smb("nas.local:1445", "takes", "site-1", "rakkr")).is_ok());
        assert!(
            check_spec(
                "nas",
                &DestinationSpec::Local {
                    path: "/srv/nas".into()
                }
            )
            .is_ok()
        );
        assert!(
            check_spec(
                "s3",
                &s3("https://s3.example", false, "takes", "rakkr/site-1")
            )
            .is_ok()
        );
        for (name, spec, field) in [
            (
                "Bad Name",
                DestinationSpec::Local { path: "/x".into() },
                "name",
            ),
            (
                "nas",
                DestinationSpec::Local {
                    path: "relative".into(),
                },
                "path",
            ),
            (
                "nas",
                DestinationSpec::Local {
                    path: "/srv/../etc".into(),
                },
                "path",
            ),
            (
                "s3",
                s3("http://127.0.0.1:9000", false, "takes", ""),
                "allow_http",
            ),
            ("s3", s3("ftp://x", true, "takes", ""), "endpoint"),
            ("s3", s3("https://x", false, "Takes", ""), "bucket"),
            ("s3", s3("https://x", false, "takes", "../up"), "prefix"),
            ("s3", s3("https://x", false, "takes", "/abs"), "prefix"),
            ("smb", smb("", "takes", "", "rakkr"), "server"),
            ("smb", smb("user@nas", "takes", "", "rakkr"), "server"),
            ("smb", smb("nas", "", "", "rakkr"), "share"),
            ("smb", smb("nas", "a/b", "", "rakkr"), "share"),
            ("smb", smb("nas", "takes", "x/../y", "rakkr"), "prefix"),
            ("smb", smb("nas", "takes", "", " "), "user"),
        ] {
            let e = check_spec(name, &spec).unwrap_err();
            assert!(e.contains(field), "{spec:?}: {e}");
        }
    }
}
