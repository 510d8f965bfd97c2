//! The JSON API's OpenAPI 3.1 document, served at `/api/v1/openapi.json`.
//!
//! Built from the route table ([`crate::http::route_access`]): every route
//! under `/api/`, the probes and `/metrics` gets its operation from
//! [`operation`]; its permission, path parameters and security come from the
//! table itself, and its schemas from the types the handlers (de)serialise
//! (schemars, JSON Schema 2020-12). A route without a description fails the
//! test that walks the table (`every_api_route_is_in_the_openapi_document`).

use axum::http::Method;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::login::Access;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// One operation as written here; the rest comes from the route table.
struct Operation {
    summary: &'static str,
    /// The JSON request body's schema.
    body: Option<Value>,
    /// The success status, and its JSON schema (or a media type and a description).
    ok: (u16, Answer),
    /// Query parameters: (name, schema type, description).
    query: &'static [(&'static str, &'static str, &'static str)],
}

enum Answer {
    Json(Value),
    Media(&'static str, &'static str),
    /// No body; what the headers say.
    Headers(&'static str),
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    g.subschema_for::<T>().to_value()
}

fn list<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    json!({ "type": "array", "items": schema::<T>(g) })
}

/// Whether a route belongs in the document.
pub fn documented(path: &str) -> bool {
    path.starts_with("/api/") || matches!(path, "/metrics" | "/healthz" | "/readyz")
}

/// The description of one route, `None` if it has none (a test fails then).
fn operation(method: &Method, path: &str, g: &mut SchemaGenerator) -> Option<Operation> {
    use crate::admin::{AccountView, AdminResponse, TokenView};
    use crate::http::{
        CredentialJson, EnrollRequest, EnrolledJson, NodeJson, Readiness, StopRequest, TokenJson,
        TokenRequest,
    };
    use Answer::*;
    let op = |summary, body, ok, query| {
        Some(Operation {
            summary,
            body,
            ok,
            query,
        })
    };
    const JOBS_QUERY: &[(&str, &str, &str)] = &[
        ("node", "string", "only this node's jobs"),
        (
            "limit",
            "integer",
            "at most this many (default 100, at most 1000)",
        ),
    ];
    const AUDIT_QUERY: &[(&str, &str, &str)] = &[
        (
            "after",
            "integer",
            "records after this sequence number (default 0)",
        ),
        (
            "limit",
            "integer",
            "at most this many (default 100, at most 1000)",
        ),
        ("format", "string", "`json` (default) or `csv`"),
    ];
    const RECORDINGS_QUERY: &[(&str, &str, &str)] = &[
        ("node", "string", "only this node's recordings"),
        (
            "state",
            "string",
            "`completed`, `failed`, `lost` or `cancelled`",
        ),
        ("tag", "string", "only recordings with this tag"),
        (
            "from",
            "string",
            "started on or after this day (`YYYY-MM-DD`, UTC)",
        ),
        ("to", "string", "started on or before this day"),
        ("limit", "integer", "at most this many (default 100)"),
        (
            "before",
            "string",
            "only jobs older than this recording id: the next page, from the `X-Next-Before` header of the previous one (a page looks through 1000 jobs at most)",
        ),
    ];
    const HEALTH_QUERY: &[(&str, &str, &str)] = &[
        ("node", "string", "only this node's issues"),
        (
            "state",
            "string",
            "`open`, `acknowledged`, `suppressed`, `resolved`, or `active` (not resolved)",
        ),
        ("condition", "string", "a condition, e.g. `device_lost`"),
        (
            "limit",
            "integer",
            "at most this many (default 100, at most 1000)",
        ),
        ("format", "string", "`json` (default) or `csv`"),
    ];
    const SEARCH_QUERY: &[(&str, &str, &str)] = &[
        ("actor", "string", "exactly this actor, e.g. `user:olga`"),
        ("outcome", "string", "`allowed`, `denied` or `failed`"),
        (
            "q",
            "string",
            "text in the action, target, permission or reason",
        ),
        (
            "from",
            "string",
            "from this time: `YYYY-MM-DDTHH:MM` UTC or ms since 1970",
        ),
        ("to", "string", "up to this time (its whole last minute)"),
        (
            "before",
            "integer",
            "records older than this sequence number (`next_before`)",
        ),
        (
            "limit",
            "integer",
            "at most this many (default 100, at most 1000)",
        ),
        ("format", "string", "`json` (default) or `csv`"),
    ];
    match (method.as_str(), path) {
        ("GET", OPENAPI_PATH) => op(
            "This document",
            None,
            (200, Json(json!({"type": "object"}))),
            &[],
        ),
        ("GET", "/api/v1/nodes") => op(
            "Every node: presence, details, latest meter frame",
            None,
            (200, Json(list::<NodeJson>(g))),
            &[],
        ),
        ("GET", "/api/v1/nodes/{id}") => op(
            "One node, as in the list (404 for a node this server does not know)",
            None,
            (200, Json(schema::<NodeJson>(g))),
            &[],
        ),
        ("GET", "/api/v1/nodes/{id}/watchdog") => op(
            "The node's watchdog policy: the one chosen (none: the default), the one in effect and the appliance rules it is sent",
            None,
            (200, Json(schema::<crate::node_page::NodeWatchdogView>(g))),
            &[],
        ),
        ("POST", "/api/v1/nodes/{id}/watchdog") => op(
            "Choose the node's watchdog policy (null: the server's default); the node gets its rules within 2 s",
            Some(schema::<crate::node_page::ChoosePolicy>(g)),
            (200, Json(schema::<crate::node_page::NodeWatchdogView>(g))),
            &[],
        ),
        ("GET", "/api/v1/nodes/{id}/retention") => op(
            "The node's retention policy: the one chosen (none: the default), the one in effect and the appliance rules it is sent",
            None,
            (200, Json(schema::<crate::node_page::NodeRetentionView>(g))),
            &[],
        ),
        ("POST", "/api/v1/nodes/{id}/retention") => op(
            "Choose the node's retention policy (null: the server's default); the node gets its rules within 2 s",
            Some(schema::<crate::node_page::ChoosePolicy>(g)),
            (200, Json(schema::<crate::node_page::NodeRetentionView>(g))),
            &[],
        ),
        ("POST", "/api/v1/nodes/{id}/update") => op(
            "Order the node to install an A/B image from the server's images directory (its `.minisig` beside it); the node reports its steps on `nodes/{node}/update` (decision 0019)",
            Some(schema::<crate::updates::OrderUpdate>(g)),
            (202, Json(schema::<crate::updates::OrderedUpdate>(g))),
            &[],
        ),
        ("GET", "/api/v1/node/images/{image}") => op(
            "A node fetches an A/B image (HTTP Basic: its node id and credential)",
            None,
            (200, Answer::Media("application/octet-stream", "the image")),
            &[],
        ),
        ("GET", "/api/v1/nodes/{id}/events") => op(
            "The node's last 100 health events, oldest first",
            None,
            (200, Json(list::<rakkr_store::HealthEventRecord>(g))),
            &[],
        ),
        ("POST", "/api/v1/jobs") => op(
            "Start a recording",
            Some(schema::<crate::jobs::JobRequest>(g)),
            (201, Json(schema::<rakkr_store::JobRecord>(g))),
            &[],
        ),
        ("GET", "/api/v1/jobs") => op(
            "The newest jobs",
            None,
            (200, Json(list::<rakkr_store::JobRecord>(g))),
            JOBS_QUERY,
        ),
        ("GET", "/api/v1/jobs/{id}") => op(
            "One job",
            None,
            (200, Json(schema::<rakkr_store::JobRecord>(g))),
            &[],
        ),
        ("POST", "/api/v1/jobs/{id}/stop") => op(
            "Stop a job (the take is kept) or, with `cancel`, cancel it",
            Some(schema::<StopRequest>(g)),
            (200, Json(schema::<rakkr_store::JobRecord>(g))),
            &[],
        ),
        ("GET", "/api/v1/enroll-tokens") => op(
            "Unused, unexpired enrollment tokens (no secrets)",
            None,
            (200, Json(list::<TokenJson>(g))),
            &[],
        ),
        ("POST", "/api/v1/enroll-tokens") => op(
            "Create a single-use enrollment token (its secret shown once)",
            Some(schema::<TokenRequest>(g)),
            (201, Json(schema::<crate::identity::NewToken>(g))),
            &[],
        ),
        ("POST", "/api/v1/enroll") => op(
            "An appliance exchanges an enrollment token for its credential (shown once)",
            Some(schema::<EnrollRequest>(g)),
            (201, Json(schema::<EnrolledJson>(g))),
            &[],
        ),
        ("POST", "/api/v1/nodes/{id}/credential/revoke") => op(
            "Revoke a node's credential and disconnect it",
            None,
            (200, Json(schema::<CredentialJson>(g))),
            &[],
        ),
        ("POST", "/api/v1/node/credential/rotate") => op(
            "A node (HTTP Basic: node id and credential) gets a new credential",
            None,
            (200, Json(schema::<EnrolledJson>(g))),
            &[],
        ),
        ("HEAD", "/api/v1/node/recordings/{job}/files/{name}") => op(
            "A node asks how much of a take's file the server holds (HTTP Basic; decision 0016)",
            None,
            (
                200,
                Headers("`Upload-Offset`: bytes held durably; `Upload-Length` once known"),
            ),
            &[],
        ),
        ("PATCH", "/api/v1/node/recordings/{job}/files/{name}") => op(
            "A node sends a chunk at `Upload-Offset` with `Upload-Length` and `Upload-Checksum: sha256 <base64>` (409: resume from the `Upload-Offset` answered; 460: checksum mismatch; 413: too large)",
            None,
            (204, Headers("`Upload-Offset`: the new offset")),
            &[],
        ),
        ("POST", "/api/v1/node/recordings/{job}/files/{name}/complete") => op(
            "A node completes a file: the server checks its SHA-256, size and type, keeps it and confirms (409: discarded, send it again)",
            Some(schema::<rakkr_protocol::upload::CompleteUpload>(g)),
            (
                200,
                Json(schema::<rakkr_protocol::upload::UploadConfirmation>(g)),
            ),
            &[],
        ),
        ("GET", "/api/v1/audit") => op(
            "The audit log, oldest first, its hash chain checked (`chain`; CSV: header `X-Audit-Chain`)",
            None,
            (
                200,
                Json(json!({
                    "type": "object",
                    "properties": { "chain": { "type": "string" }, "records": list::<rakkr_store::AuditRecord>(g) },
                    "required": ["chain", "records"],
                })),
            ),
            AUDIT_QUERY,
        ),
        ("GET", "/api/v1/audit/search") => op(
            "Search the audit log, newest first (CSV: header `X-Next-Before`)",
            None,
            (
                200,
                Json(json!({
                    "type": "object",
                    "properties": {
                        "records": list::<rakkr_store::AuditRecord>(g),
                        "next_before": { "type": ["integer", "null"], "description": "`before` of the next page; null: no more" },
                        "scanned": { "type": "integer", "description": "records examined (at most 20,000 per page)" },
                    },
                    "required": ["records", "next_before", "scanned"],
                })),
            ),
            SEARCH_QUERY,
        ),
        ("GET", "/api/v1/recordings") => op(
            "Recordings (jobs with a recording report), newest first; a page looks through 1000 jobs at most and, when older ones are left, says where the next goes on in `X-Next-Before`",
            None,
            (200, Json(list::<rakkr_store::JobRecord>(g))),
            RECORDINGS_QUERY,
        ),
        ("GET", "/api/v1/recordings/{id}/quality") => op(
            "A take's quality timeline: the health conditions that held while it recorded (409 before it ran)",
            None,
            (200, Json(schema::<crate::quality::QualityTimeline>(g))),
            &[],
        ),
        ("GET", "/api/v1/recordings/{id}/files") => op(
            "Where each file of a take is, with its verified SHA-256 and waveform preview once on the server",
            None,
            (200, Json(list::<crate::recordings_page::RecordingFile>(g))),
            &[],
        ),
        ("GET", "/api/v1/recordings/{id}/files/{name}") => op(
            "Download one file of a take the server holds (`audio/flac` or `audio/wav`; `Range` for a part, answered 206). Audited once per whole download; 410 once the server deleted its copy",
            None,
            (200, Answer::Media("audio/flac", "the file")),
            &[],
        ),
        ("POST", "/api/v1/recordings/{id}/notes") => op(
            "Set a recording's notes and tags",
            Some(schema::<crate::recordings_page::NotesJson>(g)),
            (200, Json(schema::<rakkr_store::JobRecord>(g))),
            &[],
        ),
        ("POST", "/api/v1/recordings/{id}/delete") => op(
            "Delete a finished recording everywhere Rakkr holds it: the server's copies at once, the appliance's when it next asks for work, deliveries not yet made cancelled; copies destinations already hold stay (archives). The body (`reason`) may be empty. Answers the job with `deleted` set, the same for a second delete; 409 while the job runs",
            Some(schema::<crate::recordings_page::DeleteJson>(g)),
            (200, Json(schema::<rakkr_store::JobRecord>(g))),
            &[],
        ),
        ("GET", "/api/v1/users") => op(
            "Every account (never a password hash)",
            None,
            (200, Json(list::<AccountView>(g))),
            &[],
        ),
        ("POST", "/api/v1/users") => op(
            "Add an account; its one-time password is in the answer, once",
            Some(schema::<crate::accounts_page::NewUser>(g)),
            (201, Json(schema::<AdminResponse>(g))),
            &[],
        ),
        ("POST", "/api/v1/users/{name}") => op(
            "Change an account: exactly one of `role`, `disabled`, `reset_password`, `end_sessions`",
            Some(schema::<crate::accounts_page::UserChangeJson>(g)),
            (200, Json(schema::<AdminResponse>(g))),
            &[],
        ),
        ("GET", "/api/v1/api-tokens") => op(
            "Every API token (never a secret)",
            None,
            (200, Json(list::<TokenView>(g))),
            &[],
        ),
        ("POST", "/api/v1/api-tokens") => op(
            "Create an API token; it is in the answer, once",
            Some(schema::<crate::accounts_page::NewToken>(g)),
            (201, Json(schema::<AdminResponse>(g))),
            &[],
        ),
        ("POST", "/api/v1/api-tokens/{id}/revoke") => op(
            "Revoke an API token",
            None,
            (200, Json(schema::<AdminResponse>(g))),
            &[],
        ),
        ("GET", "/api/v1/health") => op(
            "Health issues, newest first (one per condition and subject of a node)",
            None,
            (200, Json(list::<rakkr_store::HealthIssue>(g))),
            HEALTH_QUERY,
        ),
        ("POST", "/api/v1/health/actions") => op(
            "Acknowledge, suppress, resolve or reopen health issues (all or none)",
            Some(schema::<crate::health_page::ActionRequest>(g)),
            (200, Json(list::<rakkr_store::HealthIssue>(g))),
            &[],
        ),
        ("GET", "/api/v1/profiles") => op(
            "The named recording profiles jobs and schedules choose from (configuration; the default marked)",
            None,
            (200, Json(list::<crate::policies::NamedProfile>(g))),
            &[],
        ),
        ("GET", "/api/v1/destinations") => op(
            "Storage destinations (their secrets are never shown: `secret_set` says whether one is set)",
            None,
            (200, Json(list::<crate::destinations::DestinationView>(g))),
            &[],
        ),
        ("POST", "/api/v1/destinations") => op(
            "Make or replace a destination; a secret left out keeps the one set",
            Some(schema::<crate::destinations::DestinationInput>(g)),
            (200, Json(schema::<crate::destinations::DestinationView>(g))),
            &[],
        ),
        ("POST", "/api/v1/destinations/{name}/delete") => op(
            "Delete a destination no upload policy sends to (409 while one does)",
            None,
            (204, Headers("none")),
            &[],
        ),
        ("POST", "/api/v1/destinations/{name}/test") => op(
            "Write, read back and delete a probe object; whether it worked and, if not, why",
            None,
            (200, Json(schema::<crate::destinations::DestinationTest>(g))),
            &[],
        ),
        ("GET", "/api/v1/deliveries") => op(
            "The delivery queue: each file's delivery to each destination, newest jobs first",
            None,
            (200, Json(list::<rakkr_store::DeliveryRecord>(g))),
            &[
                ("state", "string", "`pending`, `delivered` or `failed`"),
                ("destination", "string", "only this destination's"),
                (
                    "limit",
                    "integer",
                    "at most this many (1 to 1000, default 1000)",
                ),
            ],
        ),
        ("POST", "/api/v1/deliveries/retry") => op(
            "Try a delivery again now, with a fresh retry budget",
            Some(schema::<crate::deliveries_page::RetryDelivery>(g)),
            (200, Json(schema::<rakkr_store::DeliveryRecord>(g))),
            &[],
        ),
        ("GET", "/api/v1/retention-policies") => op(
            "The named retention policies nodes are given (configuration; the default marked)",
            None,
            (200, Json(list::<crate::policies::NamedRetentionPolicy>(g))),
            &[],
        ),
        ("GET", "/api/v1/watchdog-policies") => op(
            "The named watchdog policies schedules choose from (configuration; the default marked)",
            None,
            (200, Json(list::<crate::policies::NamedWatchdogPolicy>(g))),
            &[],
        ),
        ("GET", "/api/v1/schedules") => op(
            "Every schedule with its next occurrence",
            None,
            (200, Json(list::<crate::schedules::ScheduleView>(g))),
            &[],
        ),
        ("POST", "/api/v1/schedules") => op(
            "Create a schedule (checked against its node's device and codecs)",
            Some(schema::<rakkr_protocol::schedule::ScheduleSpec>(g)),
            (201, Json(schema::<crate::schedules::ScheduleView>(g))),
            &[],
        ),
        ("GET", "/api/v1/schedules/{id}") => op(
            "One schedule, its occurrences in the next 14 days and what became of past ones",
            None,
            (200, Json(schema::<crate::schedules::ScheduleDetail>(g))),
            &[],
        ),
        ("POST", "/api/v1/schedules/{id}") => op(
            "Replace a schedule (takes it already started keep running)",
            Some(schema::<rakkr_protocol::schedule::ScheduleSpec>(g)),
            (200, Json(schema::<crate::schedules::ScheduleView>(g))),
            &[],
        ),
        ("POST", "/api/v1/schedules/{id}/delete") => op(
            "Delete a schedule (takes it started keep running)",
            None,
            (200, Json(schema::<rakkr_store::ScheduleRecord>(g))),
            &[],
        ),
        ("POST", "/api/v1/schedules/{id}/skip-next") => op(
            "Skip the schedule's next occurrence (adds its date to the skip list)",
            None,
            (200, Json(schema::<crate::schedules::ScheduleView>(g))),
            &[],
        ),
        ("POST", "/api/v1/schedules/{id}/run-now") => op(
            "Record the schedule now, for its window's length (until stopped without one)",
            None,
            (201, Json(schema::<rakkr_store::JobRecord>(g))),
            &[],
        ),
        ("GET", "/metrics") => op(
            "Counters and gauges",
            None,
            (
                200,
                Media("text/plain; version=0.0.4", "the Prometheus text format"),
            ),
            &[],
        ),
        ("GET", "/healthz") => op(
            "Liveness: the process serves HTTP",
            None,
            (200, Media("text/plain", "`ok`")),
            &[],
        ),
        ("GET", "/readyz") => op(
            "Readiness: store readable and broker link connected (503 otherwise)",
            None,
            (200, Json(schema::<Readiness>(g))),
            &[],
        ),
        _ => None,
    }
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } },
    })
}

/// The whole document. Routes without a description are left out (and
/// make the test fail).
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas/".into();
    let mut g = settings.into_generator();
    let mut paths = Map::new();
    for (path, method, access) in crate::http::route_access() {
        if !documented(path) {
            continue;
        }
        let Some(op) = operation(&method, path, &mut g) else {
            continue;
        };
        let mut parameters: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        parameters.extend(op.query.iter().map(|(name, ty, description)| {
            json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": ty } })
        }));
        let (status, answer) = op.ok;
        let ok = match answer {
            Answer::Json(schema) => json!({
                "description": "done",
                "content": { "application/json": { "schema": schema } },
            }),
            Answer::Media(media, description) => json!({
                "description": description,
                "content": { media: { "schema": { "type": "string" } } },
            }),
            Answer::Headers(description) => json!({ "description": description }),
        };
        let mut responses = Map::new();
        responses.insert(status.to_string(), ok);
        let (security, permission) = match access {
            Access::Public => (json!([]), None),
            Access::Appliance => (json!([]), None),
            Access::SignedIn => (json!([{ "bearer": [] }, { "session": [] }]), None),
            Access::Operator(p) => (json!([{ "bearer": [] }, { "session": [] }]), Some(p)),
        };
        if permission.is_some() {
            responses.insert(
                "401".into(),
                problem_response("no valid API token or session"),
            );
            responses.insert(
                "403".into(),
                problem_response(
                    "the role lacks the permission (or a session's CSRF token is missing)",
                ),
            );
        }
        if op.body.is_some() || path.contains('{') || !op.query.is_empty() {
            responses.insert(
                "4XX".into(),
                problem_response("refused: bad input, unknown item, conflict"),
            );
        }
        let mut operation = json!({
            "operationId": format!("{} {}", method, path),
            "summary": op.summary,
            "parameters": parameters,
            "responses": responses,
            "security": security,
        });
        if let Some(p) = permission {
            operation["description"] = json!(format!("Needs the permission `{p}`."));
            operation["x-permission"] = json!(p.as_str());
        }
        if let Some(body) = op.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": body } },
            });
        }
        let entry = paths.entry(path.to_owned()).or_insert_with(|| json!({}));
        entry[method.as_str().to_lowercase()] = operation;
    }
    let mut schemas: Map<String, Value> = g.take_definitions(true).into_iter().collect();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details",
            "properties": {
                "type": { "type": "string" },
                "title": { "type": "string" },
                "status": { "type": "integer" },
                "detail": { "type": "string" },
            },
            "required": ["type", "title", "status", "detail"],
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Rakkr fleet server API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Everything the console does, for automation. Errors are application/problem+json. \
                            State-changing requests take JSON bodies; with a session cookie they also need the \
                            session's CSRF token in `X-CSRF-Token`.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "an API token, `rkt1.{id}.{secret}`" },
                "session": { "type": "apiKey", "in": "cookie", "name": crate::auth::COOKIE },
            },
        },
    })
}

/// `GET /api/v1/openapi.json`
pub async fn serve() -> axum::Json<Value> {
    axum::Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_route_is_in_the_openapi_document() {
        let doc = document();
        let mut documented_ops = 0;
        for (path, method, _) in crate::http::route_access() {
            if !documented(path) {
                continue;
            }
            let op = &doc["paths"][path][method.as_str().to_lowercase()];
            assert!(
                op.is_object(),
                "{method} {path} is not in the OpenAPI document: describe it in openapi::operation"
            );
            documented_ops += 1;
        }
        // And nothing in the document that the server does not route.
        let routes: Vec<(String, String)> = crate::http::route_access()
            .into_iter()
            .map(|(p, m, _)| (p.to_owned(), m.as_str().to_lowercase()))
            .collect();
        let mut in_doc = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                assert!(
                    routes.contains(&(path.clone(), method.clone())),
                    "{method} {path} is documented but not routed"
                );
                in_doc += 1;
            }
        }
        assert_eq!(in_doc, documented_ops);
        assert!(documented_ops >= 20, "{documented_ops}");
    }

    #[test]
    fn the_document_is_valid_openapi_3_1_and_every_ref_resolves() {
        let doc = document();
        let text = serde_json::to_string(&doc).unwrap();
        let spec = oas3::from_json(&text).expect("parses as OpenAPI 3.1");
        assert_eq!(spec.openapi, "3.1.0");
        // Every $ref points at a schema the document has.
        fn refs(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r.clone());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} does not resolve"
            );
        }
        // The permission of every guarded operation is stated.
        for (path, method, access) in crate::http::route_access() {
            if let (true, Access::Operator(p)) = (documented(path), access) {
                assert_eq!(
                    doc["paths"][path][method.as_str().to_lowercase()]["x-permission"],
                    p.as_str()
                );
            }
        }
    }
}
