//! HTTP: the console, its static assets, the JSON API and health probes.
//!
//! Every route is declared once, with who may use it, in [`route_table`]
//! (the router is built from it; `hil-tests/tests/access.rs` walks it):
//!
//! | route              | access | what                                       |
//! |--------------------|--------|--------------------------------------------|
//! | `GET /`            | nodes.read | fleet dashboard (HTML)                 |
//! | `GET /console/nodes` | nodes.read | the dashboard's node panel, for htmx refreshes |
//! | `GET /nodes/{id}`  | nodes.read | a node's page: inventory, live levels, recordings, health |
//! | `GET /nodes/{id}/live` | nodes.read | the node's live meters (server-sent events, about 5 Hz) |
//! | `GET /nodes/{id}/jobs` | jobs.read | the node page's recordings panel, for htmx refreshes |
//! | `POST /nodes/{id}/jobs` | jobs.manage | start a recording (form), then back to the node page |
//! | `POST /jobs/{id}/stop` | jobs.manage | stop or (`cancel=1`) cancel a recording (form) |
//! | `GET, POST /login` | public | the login form; sets the session cookie    |
//! | `POST /logout`     | signed in | ends the session                        |
//! | `POST /logout/everywhere` | signed in | ends every session of the account |
//! | `GET, POST /account/password` | signed in | choose a new password (forced after a one-time one) |
//! | `GET /static/…`    | public | embedded assets under content-hashed names, immutable |
//! | `GET /api/v1/openapi.json` | nodes.read | this API's OpenAPI 3.1 document |
//! | `GET /api/v1/nodes`| nodes.read | node list (JSON)                            |
//! | `GET /api/v1/nodes/{id}` | nodes.read | one node (JSON)                      |
//! | `GET /api/v1/nodes/{id}/events` | health.read | the node's last 100 health events (JSON), oldest first |
//! | `POST /api/v1/jobs` | jobs.manage | start a recording: `{"node", "device"?, "channels"?, "profile"?, "duration_s"?}` → 201 and the job |
//! | `GET /api/v1/jobs` | jobs.read | the newest jobs (`?node=ID&limit=N`, at most 1000) |
//! | `GET /api/v1/jobs/{id}` | jobs.read | one job                                |
//! | `POST /api/v1/jobs/{id}/stop` | jobs.manage | stop (the take is kept) or, with `{"cancel": true}`, cancel |
//! | `POST /api/v1/enroll-tokens` | nodes.manage | create a single-use enrollment token `{"node"?, "ttl_s"?}` (shown once) |
//! | `GET /api/v1/enroll-tokens` | nodes.manage | unused, unexpired tokens (no secrets) |
//! | `POST /api/v1/enroll` | appliance | an appliance exchanges `{"token", "node"}` for its credential (shown once) |
//! | `POST /api/v1/nodes/{id}/credential/revoke` | nodes.manage | revoke a node's credential and disconnect it |
//! | `POST /api/v1/node/credential/rotate` | appliance | a node (HTTP Basic: node id and credential) gets a new credential |
//! | `HEAD, PATCH /api/v1/node/recordings/{job}/files/{name}` | appliance | resumable upload of a take's file: the offset held; a chunk at it (decision 0016, [`crate::uploads`]) |
//! | `POST /api/v1/node/recordings/{job}/files/{name}/complete` | appliance | verify the whole file, keep it, confirm |
//! | `GET /api/v1/audit` | audit.read | the audit log (`?after=SEQ&limit=N&format=json\|csv`), its hash chain checked |
//! | `GET /api/v1/audit/search` | audit.read | search (`?actor&outcome&q&from&to&before&limit&format=json\|csv`), newest first, with `next_before` |
//! | `GET /audit`       | audit.read | the audit log page: the same search, CSV export |
//! | `GET /recordings`, `GET /recordings/{id}` | recordings.read | the recordings library (filters: node, state, tag, days) and one recording |
//! | `POST /recordings/{id}/notes` | recordings.control | notes and tags (form) |
//! | `POST /recordings/{id}/delete`, `POST /api/v1/recordings/{id}/delete` | recordings.delete | delete a finished recording everywhere Rakkr holds it but archive destinations (form with a typed confirmation; JSON `{"reason"}`; decision 0020, [`crate::deletion`]) |
//! | `GET /recordings/{id}/play/{name}` | recordings.playback | a file on the server, inline for the page's player (byte ranges) |
//! | `GET /recordings/{id}/files/{name}` | recordings.download | a file on the server, as a download (byte ranges; audited) |
//! | `GET /api/v1/recordings/{id}/quality` | recordings.read | the take's quality timeline: the health conditions that held while it recorded, as spans from its start |
//! | `GET /api/v1/recordings/{id}/files` | recordings.read | where each of the take's files is (on the appliance, arriving, on the server verified) and its waveform preview |
//! | `GET /api/v1/recordings/{id}/files/{name}` | recordings.download | the same download for automation (API token) |
//! | `GET /api/v1/recordings`, `POST /api/v1/recordings/{id}/notes` | recordings.read / recordings.control | the same as JSON |
//! | `GET /enrollment`, `POST /enrollment` | nodes.manage | enrollment tokens: unused ones, create (shown once) |
//! | `POST /nodes/{id}/revoke` | nodes.manage | revoke a node's credential (form), then back to its page |
//! | `GET /users`, `POST /users`, `POST /users/{name}` | users.manage | accounts: list, add (one-time password shown once), role, reset, disable, enable |
//! | `GET /api-tokens`, `POST /api-tokens`, `POST /api-tokens/{id}/revoke` | users.manage | API tokens: list, create (shown once), revoke |
//! | `GET, POST /api/v1/users`, `POST /api/v1/users/{name}` | users.manage | the same as JSON (`{"role"}`, `{"disabled"}` or `{"reset_password": true}`) |
//! | `GET, POST /api/v1/api-tokens`, `POST /api/v1/api-tokens/{id}/revoke` | users.manage | the same as JSON |
//! | `GET /health`, `POST /health` | health.read / health.acknowledge | health issues (filters: node, state, condition; CSV), bulk acknowledge / suppress / resolve / reopen (form) |
//! | `GET /api/v1/health`, `POST /api/v1/health/actions` | health.read / health.acknowledge | the same as JSON (`?format=csv`); `{"ids": [..], "action"}` |
//! | `GET /schedules`, `GET /schedules/{id}` | schedules.read | schedules with a week or month calendar (`?view&from&tz`); one schedule: upcoming, past occurrences |
//! | `GET /schedules/new`, `POST /schedules`, `POST /schedules/{id}` | schedules.manage | the editor: new, create, replace (forms) |
//! | `POST /schedules/{id}/skip-next`, `…/delete`; `…/run-now` | schedules.manage; jobs.manage | the schedule page's buttons (forms) |
//! | `GET, POST /api/v1/schedules` | schedules.read / schedules.manage | schedules with their next occurrence; create one (`ScheduleSpec`) |
//! | `GET, POST /api/v1/schedules/{id}` | schedules.read / schedules.manage | one schedule with its upcoming occurrences (14 days) and history; replace it |
//! | `POST /api/v1/schedules/{id}/delete`, `…/skip-next` | schedules.manage | delete it; skip its next occurrence |
//! | `POST /api/v1/schedules/{id}/run-now` | jobs.manage | record it now, for its window's length → 201 and the job |
//! | `GET, POST /api/v1/nodes/{id}/watchdog` | nodes.read / nodes.manage | the node's watchdog policy (chosen, in effect, the rules it is sent); choose one (`{"policy": "lecture"}`, null: the default) |
//! | `POST /nodes/{id}/watchdog` | nodes.manage | the same from the node page (form) |
//! | `GET, POST /api/v1/nodes/{id}/retention`, `POST /nodes/{id}/retention` | nodes.read / nodes.manage | the same for the node's retention policy (which uploaded takes it deletes) |
//! | `GET /api/v1/watchdog-policies` | schedules.read | the named watchdog policies a schedule may choose, the default marked |
//! | `GET, POST /destinations`, `POST /destinations/{name}/test`, `…/delete` | settings.manage | the same in the console (the secret a password field, never filled in) |
//! | `GET, POST /api/v1/destinations` | settings.manage | storage destinations (secrets never shown: `secret_set`); make or replace one (a secret left out stays) |
//! | `POST /api/v1/destinations/{name}/delete`, `…/test` | settings.manage | delete one no upload policy uses; write, read back and delete a probe object |
//! | `GET /deliveries`, `POST /deliveries/retry` | recordings.read / recordings.control | the delivery queue in the console, with a retry per delivery |
//! | `GET /api/v1/deliveries` | recordings.read | the delivery queue, newest jobs first (`state`, `destination`, `limit`) |
//! | `POST /api/v1/deliveries/retry` | recordings.control | try a delivery again now, with a fresh retry budget |
//! | `GET /api/v1/retention-policies` | nodes.read | the named retention policies a node may be given, the default marked |
//! | `GET /api/v1/profiles` | nodes.read | the named recording profiles jobs and schedules may choose, the default marked |
//! | `GET /metrics`     | metrics.read | counters in the Prometheus text format       |
//! | `GET /healthz`     | public | liveness: the process serves HTTP          |
//! | `GET /readyz`      | public | readiness: store readable and broker link connected |
//!
//! Operator routes take the session cookie ([`crate::auth`]; state-changing
//! ones also its CSRF token) or, under `/api/` and `/metrics`, an API token
//! (`Authorization: Bearer rkt1.…`, [`crate::api_tokens`]) whose role has the
//! permission.
//!
//! Every response carries the security headers in [`security_headers`].
//! API errors are `application/problem+json` (RFC 9457). State-changing API
//! routes accept only `application/json` bodies, which a cross-site form
//! cannot send without a CORS preflight this server never grants.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::Method;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{MethodRouter, get, post};
use rakkr_mqtt::LinkState;
use rakkr_protocol::access::Permission;
use rakkr_protocol::payload::{ChannelMeter, MeterFrame};
use rakkr_protocol::state::Presence;
use rakkr_store::{NodeDetails, Store};
use serde::Serialize;

use crate::clock::Clock;
use crate::console::{self, FleetView, NODES_FRAGMENT_PATH};
use crate::fleet::LiveFleet;
use crate::login::{self, Access, LOGIN_PATH, LOGOUT_PATH, PASSWORD_PATH};
use crate::node_page::{RetentionChoice, WatchdogChoice};
use crate::tls::PeerAddr;
use crate::{accounts_page, enrollment_page, node_page};

#[derive(Clone)]
pub struct AppState {
    pub fleet: Arc<LiveFleet>,
    pub store: Arc<dyn Store>,
    pub link: Arc<LinkState>,
    pub clock: Arc<dyn Clock>,
    pub stale_after: Duration,
    pub commands: crate::jobs::Commands,
    pub identities: Arc<crate::identity::Identities>,
    pub ingest: Arc<crate::ingest::IngestStats>,
    pub jobs: Arc<crate::jobs::JobStats>,
    pub schedules: Arc<crate::schedules::ScheduleStats>,
    pub gate: Arc<crate::gate::GateStats>,
    /// The fleet CA, when MQTT over TLS is on: pinned in tokens, handed to
    /// enrolling appliances.
    pub ca: Option<Arc<CaInfo>>,
    pub logins: Arc<crate::auth::LoginLimiter>,
    /// Bounds how many anonymous refusals reach the audit log.
    pub audit_budget: Arc<crate::audit::AnonymousBudget>,
    /// Session cookies carry `Secure` (the server serves HTTPS).
    pub secure_cookies: bool,
    pub live_streams: Arc<crate::node_page::LiveStreams>,
    pub http_stats: Arc<crate::metrics::HttpStats>,
    /// The named watchdog policies schedules choose from.
    pub watchdog_policies: Arc<crate::policies::WatchdogPolicies>,
    /// The named retention policies nodes choose from.
    pub retention_policies: Arc<crate::policies::RetentionPolicies>,
    /// Seals and opens destination secrets.
    pub secrets: Arc<crate::secrets::SecretBox>,
    /// The named upload policies.
    pub delivery_policies: Arc<crate::policies::DeliveryPolicies>,
    /// Wakes the delivery runner (a file confirmed, a delivery retried).
    pub delivery_wake: Arc<tokio::sync::Notify>,
    /// The named recording profiles jobs and schedules choose from.
    pub profiles: Arc<crate::policies::RecordingProfiles>,
    /// Recordings arriving from appliances.
    pub uploads: Arc<crate::uploads::Uploads>,
    /// A/B images and their signatures (`crate::updates`).
    pub images_dir: std::path::PathBuf,
    /// Wakes the update order sync (an order was stored).
    pub update_sync: Arc<tokio::sync::Notify>,
}

#[derive(Debug)]
pub struct CaInfo {
    pub pem: String,
    pub sha256: String,
}

/// Every route: its path, method and who may use it ([`Access`]). The router
/// is built from this table and nothing else, so no route exists without a
/// declared access rule; `hil-tests/tests/access.rs` walks it.
pub fn route_table() -> Vec<(&'static str, Method, Access, MethodRouter<AppState>)> {
    use Access::*;
    use Permission::*;
    vec![
        ("/", Method::GET, Operator(NodesRead), get(dashboard)),
        (
            NODES_FRAGMENT_PATH,
            Method::GET,
            Operator(NodesRead),
            get(nodes_fragment),
        ),
        (
            "/nodes/{id}",
            Method::GET,
            Operator(NodesRead),
            get(node_page::page),
        ),
        (
            "/nodes/{id}/live",
            Method::GET,
            Operator(NodesRead),
            get(node_page::live_stream),
        ),
        (
            "/nodes/{id}/jobs",
            Method::GET,
            Operator(JobsRead),
            get(node_page::jobs_fragment),
        ),
        (
            "/nodes/{id}/jobs",
            Method::POST,
            Operator(JobsManage),
            post(node_page::start),
        ),
        (
            "/jobs/{id}/stop",
            Method::POST,
            Operator(JobsManage),
            post(node_page::stop),
        ),
        (LOGIN_PATH, Method::GET, Public, get(login::login_form)),
        (LOGIN_PATH, Method::POST, Public, post(login::login_submit)),
        (LOGOUT_PATH, Method::POST, SignedIn, post(login::logout)),
        (
            login::LOGOUT_EVERYWHERE_PATH,
            Method::POST,
            SignedIn,
            post(login::logout_everywhere),
        ),
        (
            PASSWORD_PATH,
            Method::GET,
            SignedIn,
            get(login::password_form),
        ),
        (
            PASSWORD_PATH,
            Method::POST,
            SignedIn,
            post(login::password_submit),
        ),
        ("/static/{file}", Method::GET, Public, get(static_asset)),
        (
            crate::openapi::OPENAPI_PATH,
            Method::GET,
            Operator(NodesRead),
            get(crate::openapi::serve),
        ),
        (
            "/api/v1/nodes",
            Method::GET,
            Operator(NodesRead),
            get(api_nodes),
        ),
        (
            "/api/v1/nodes/{id}",
            Method::GET,
            Operator(NodesRead),
            get(api_node),
        ),
        (
            "/api/v1/nodes/{id}/events",
            Method::GET,
            Operator(HealthRead),
            get(api_node_events),
        ),
        (
            "/api/v1/nodes/{id}/watchdog",
            Method::GET,
            Operator(NodesRead),
            get(crate::node_page::api_policy::<WatchdogChoice>),
        ),
        (
            "/api/v1/nodes/{id}/watchdog",
            Method::POST,
            Operator(NodesManage),
            post(crate::node_page::api_choose_policy::<WatchdogChoice>),
        ),
        (
            "/nodes/{id}/watchdog",
            Method::POST,
            Operator(NodesManage),
            post(crate::node_page::choose_policy_form::<WatchdogChoice>),
        ),
        (
            "/api/v1/nodes/{id}/retention",
            Method::GET,
            Operator(NodesRead),
            get(crate::node_page::api_policy::<RetentionChoice>),
        ),
        (
            "/api/v1/nodes/{id}/retention",
            Method::POST,
            Operator(NodesManage),
            post(crate::node_page::api_choose_policy::<RetentionChoice>),
        ),
        (
            "/nodes/{id}/retention",
            Method::POST,
            Operator(NodesManage),
            post(crate::node_page::choose_policy_form::<RetentionChoice>),
        ),
        (
            "/api/v1/jobs",
            Method::GET,
            Operator(JobsRead),
            get(api_jobs),
        ),
        (
            "/api/v1/jobs",
            Method::POST,
            Operator(JobsManage),
            post(api_create_job),
        ),
        (
            "/api/v1/jobs/{id}",
            Method::GET,
            Operator(JobsRead),
            get(api_job),
        ),
        (
            "/api/v1/jobs/{id}/stop",
            Method::POST,
            Operator(JobsManage),
            post(api_stop_job),
        ),
        (
            "/api/v1/enroll-tokens",
            Method::GET,
            Operator(NodesManage),
            get(api_enroll_tokens),
        ),
        (
            "/api/v1/enroll-tokens",
            Method::POST,
            Operator(NodesManage),
            post(api_create_enroll_token),
        ),
        ("/api/v1/enroll", Method::POST, Appliance, post(api_enroll)),
        (
            "/api/v1/nodes/{id}/credential/revoke",
            Method::POST,
            Operator(NodesManage),
            post(api_revoke_credential),
        ),
        (
            "/api/v1/nodes/{id}/update",
            Method::POST,
            Operator(UpdatesManage),
            post(crate::updates::api_order_update),
        ),
        (
            "/nodes/{id}/update",
            Method::POST,
            Operator(UpdatesManage),
            post(crate::node_page::order_update_form),
        ),
        (
            "/api/v1/node/images/{image}",
            Method::GET,
            Appliance,
            get(crate::updates::node_image),
        ),
        (
            "/api/v1/node/credential/rotate",
            Method::POST,
            Appliance,
            post(api_rotate_credential),
        ),
        (
            "/api/v1/node/recordings/{job}/files/{name}",
            Method::HEAD,
            Appliance,
            axum::routing::head(crate::uploads::head_file),
        ),
        (
            "/api/v1/node/recordings/{job}/files/{name}",
            Method::PATCH,
            Appliance,
            // The handler reads the body itself, bounded, once the node is known.
            axum::routing::patch(crate::uploads::patch_file),
        ),
        (
            "/api/v1/node/recordings/{job}/files/{name}/complete",
            Method::POST,
            Appliance,
            post(crate::uploads::complete_file),
        ),
        (
            "/recordings/{id}/play/{name}",
            Method::GET,
            Operator(RecordingsPlayback),
            get(crate::recordings_page::play),
        ),
        (
            "/recordings/{id}/files/{name}",
            Method::GET,
            Operator(RecordingsDownload),
            get(crate::recordings_page::download),
        ),
        (
            "/api/v1/audit",
            Method::GET,
            Operator(AuditRead),
            get(crate::audit::api_audit),
        ),
        (
            "/api/v1/audit/search",
            Method::GET,
            Operator(AuditRead),
            get(crate::audit::api_search),
        ),
        (
            crate::audit_page::AUDIT_PATH,
            Method::GET,
            Operator(AuditRead),
            get(crate::audit_page::page),
        ),
        (
            crate::recordings_page::RECORDINGS_PATH,
            Method::GET,
            Operator(RecordingsRead),
            get(crate::recordings_page::list),
        ),
        (
            "/recordings/{id}",
            Method::GET,
            Operator(RecordingsRead),
            get(crate::recordings_page::detail),
        ),
        (
            "/recordings/{id}/notes",
            Method::POST,
            Operator(RecordingsControl),
            post(crate::recordings_page::save_notes),
        ),
        (
            "/recordings/{id}/delete",
            Method::POST,
            Operator(RecordingsDelete),
            post(crate::recordings_page::delete_form),
        ),
        (
            "/api/v1/recordings",
            Method::GET,
            Operator(RecordingsRead),
            get(crate::recordings_page::api_list),
        ),
        (
            "/api/v1/recordings/{id}/quality",
            Method::GET,
            Operator(RecordingsRead),
            get(crate::recordings_page::api_quality),
        ),
        (
            "/api/v1/recordings/{id}/files",
            Method::GET,
            Operator(RecordingsRead),
            get(crate::recordings_page::api_files),
        ),
        (
            "/api/v1/recordings/{id}/files/{name}",
            Method::GET,
            Operator(RecordingsDownload),
            get(crate::recordings_page::download),
        ),
        (
            "/api/v1/recordings/{id}/notes",
            Method::POST,
            Operator(RecordingsControl),
            post(crate::recordings_page::api_notes),
        ),
        (
            "/api/v1/recordings/{id}/delete",
            Method::POST,
            Operator(RecordingsDelete),
            post(crate::recordings_page::api_delete),
        ),
        (
            enrollment_page::ENROLLMENT_PATH,
            Method::GET,
            Operator(NodesManage),
            get(enrollment_page::show),
        ),
        (
            enrollment_page::ENROLLMENT_PATH,
            Method::POST,
            Operator(NodesManage),
            post(enrollment_page::create),
        ),
        (
            "/nodes/{id}/revoke",
            Method::POST,
            Operator(NodesManage),
            post(enrollment_page::revoke),
        ),
        (
            accounts_page::USERS_PATH,
            Method::GET,
            Operator(UsersManage),
            get(accounts_page::users),
        ),
        (
            accounts_page::USERS_PATH,
            Method::POST,
            Operator(UsersManage),
            post(accounts_page::add),
        ),
        (
            "/users/{name}",
            Method::POST,
            Operator(UsersManage),
            post(accounts_page::change),
        ),
        (
            accounts_page::TOKENS_PATH,
            Method::GET,
            Operator(UsersManage),
            get(accounts_page::tokens),
        ),
        (
            accounts_page::TOKENS_PATH,
            Method::POST,
            Operator(UsersManage),
            post(accounts_page::create_token),
        ),
        (
            "/api-tokens/{id}/revoke",
            Method::POST,
            Operator(UsersManage),
            post(accounts_page::revoke_token),
        ),
        (
            "/api/v1/users",
            Method::GET,
            Operator(UsersManage),
            get(accounts_page::api_users),
        ),
        (
            "/api/v1/users",
            Method::POST,
            Operator(UsersManage),
            post(accounts_page::api_add_user),
        ),
        (
            "/api/v1/users/{name}",
            Method::POST,
            Operator(UsersManage),
            post(accounts_page::api_change_user),
        ),
        (
            "/api/v1/api-tokens",
            Method::GET,
            Operator(UsersManage),
            get(accounts_page::api_tokens),
        ),
        (
            "/api/v1/api-tokens",
            Method::POST,
            Operator(UsersManage),
            post(accounts_page::api_create_token),
        ),
        (
            "/api/v1/api-tokens/{id}/revoke",
            Method::POST,
            Operator(UsersManage),
            post(accounts_page::api_revoke_token),
        ),
        (
            crate::health_page::HEALTH_PATH,
            Method::GET,
            Operator(HealthRead),
            get(crate::health_page::list),
        ),
        (
            crate::health_page::HEALTH_PATH,
            Method::POST,
            Operator(HealthAcknowledge),
            post(crate::health_page::bulk),
        ),
        (
            "/api/v1/health",
            Method::GET,
            Operator(HealthRead),
            get(crate::health_page::api_list),
        ),
        (
            "/api/v1/health/actions",
            Method::POST,
            Operator(HealthAcknowledge),
            post(crate::health_page::api_action),
        ),
        (
            crate::schedules_page::SCHEDULES_PATH,
            Method::GET,
            Operator(SchedulesRead),
            get(crate::schedules_page::list),
        ),
        (
            crate::schedules_page::SCHEDULES_PATH,
            Method::POST,
            Operator(SchedulesManage),
            post(crate::schedules_page::create),
        ),
        (
            crate::schedules_page::NEW_SCHEDULE_PATH,
            Method::GET,
            Operator(SchedulesManage),
            get(crate::schedules_page::new),
        ),
        (
            "/schedules/{id}",
            Method::GET,
            Operator(SchedulesRead),
            get(crate::schedules_page::detail),
        ),
        (
            "/schedules/{id}",
            Method::POST,
            Operator(SchedulesManage),
            post(crate::schedules_page::update),
        ),
        (
            "/schedules/{id}/skip-next",
            Method::POST,
            Operator(SchedulesManage),
            post(crate::schedules_page::skip_next),
        ),
        (
            "/schedules/{id}/delete",
            Method::POST,
            Operator(SchedulesManage),
            post(crate::schedules_page::delete),
        ),
        (
            "/schedules/{id}/run-now",
            Method::POST,
            Operator(JobsManage),
            post(crate::schedules_page::run_now),
        ),
        (
            "/api/v1/schedules",
            Method::GET,
            Operator(SchedulesRead),
            get(crate::schedules::api_list),
        ),
        (
            "/api/v1/profiles",
            Method::GET,
            Operator(NodesRead),
            get(crate::policies::api_profiles),
        ),
        (
            "/api/v1/watchdog-policies",
            Method::GET,
            Operator(SchedulesRead),
            get(crate::policies::api_list),
        ),
        (
            crate::destinations::DESTINATIONS_PATH,
            Method::GET,
            Operator(SettingsManage),
            get(crate::destinations::page),
        ),
        (
            crate::destinations::DESTINATIONS_PATH,
            Method::POST,
            Operator(SettingsManage),
            post(crate::destinations::save_form),
        ),
        (
            "/destinations/{name}/test",
            Method::POST,
            Operator(SettingsManage),
            post(crate::destinations::test_form),
        ),
        (
            "/destinations/{name}/delete",
            Method::POST,
            Operator(SettingsManage),
            post(crate::destinations::delete_form),
        ),
        (
            "/api/v1/destinations",
            Method::GET,
            Operator(SettingsManage),
            get(crate::destinations::api_list),
        ),
        (
            "/api/v1/destinations",
            Method::POST,
            Operator(SettingsManage),
            post(crate::destinations::api_put),
        ),
        (
            "/api/v1/destinations/{name}/delete",
            Method::POST,
            Operator(SettingsManage),
            post(crate::destinations::api_delete),
        ),
        (
            "/api/v1/destinations/{name}/test",
            Method::POST,
            Operator(SettingsManage),
            post(crate::destinations::api_test),
        ),
        (
            crate::deliveries_page::DELIVERIES_PATH,
            Method::GET,
            Operator(RecordingsRead),
            get(crate::deliveries_page::page),
        ),
        (
            "/deliveries/retry",
            Method::POST,
            Operator(RecordingsControl),
            post(crate::deliveries_page::retry_form),
        ),
        (
            "/api/v1/deliveries",
            Method::GET,
            Operator(RecordingsRead),
            get(crate::deliveries_page::api_list),
        ),
        (
            "/api/v1/deliveries/retry",
            Method::POST,
            Operator(RecordingsControl),
            post(crate::deliveries_page::api_retry),
        ),
        (
            "/api/v1/retention-policies",
            Method::GET,
            Operator(NodesRead),
            get(crate::policies::api_retention_list),
        ),
        (
            "/api/v1/schedules",
            Method::POST,
            Operator(SchedulesManage),
            post(crate::schedules::api_create),
        ),
        (
            "/api/v1/schedules/{id}",
            Method::GET,
            Operator(SchedulesRead),
            get(crate::schedules::api_get),
        ),
        (
            "/api/v1/schedules/{id}",
            Method::POST,
            Operator(SchedulesManage),
            post(crate::schedules::api_update),
        ),
        (
            "/api/v1/schedules/{id}/delete",
            Method::POST,
            Operator(SchedulesManage),
            post(crate::schedules::api_delete),
        ),
        (
            "/api/v1/schedules/{id}/skip-next",
            Method::POST,
            Operator(SchedulesManage),
            post(crate::schedules::api_skip_next),
        ),
        (
            "/api/v1/schedules/{id}/run-now",
            Method::POST,
            Operator(JobsManage),
            post(crate::schedules::api_run_now),
        ),
        ("/metrics", Method::GET, Operator(MetricsRead), get(metrics)),
        ("/healthz", Method::GET, Public, get(|| async { "ok\n" })),
        ("/readyz", Method::GET, Public, get(readyz)),
    ]
}

/// The table without its handlers: what the access walk needs.
pub fn route_access() -> Vec<(&'static str, Method, Access)> {
    route_table()
        .into_iter()
        .map(|(path, method, access, _)| (path, method, access))
        .collect()
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (path, _, access, handler) in route_table() {
        let check = middleware::from_fn_with_state((state.clone(), access), login::enforce);
        router = router.route(path, handler.route_layer(check));
    }
    let stats = state.http_stats.clone();
    router
        .fallback(not_found)
        .layer(middleware::from_fn(api_problems))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(move |req, next| {
            count_request(stats.clone(), req, next)
        }))
        .with_state(state)
}

/// Count every request by its route pattern (not its path: the label set
/// stays bounded) and time it to the response head.
async fn count_request(
    stats: Arc<crate::metrics::HttpStats>,
    req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let res = next.run(req).await;
    stats.observe(&route, &method, res.status().as_u16(), started.elapsed());
    res
}

/// Largest plain-text error body [`api_problems`] carries over as the detail.
const MAX_PLAIN_ERROR: usize = 4096;

/// Every error under `/api/` is `application/problem+json` (RFC 9457),
/// whoever answered it: a handler, an extractor's rejection, the access check,
/// the method check or the fallback. Other headers (`Retry-After`,
/// `WWW-Authenticate`) are kept.
async fn api_problems(req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let res = next.run(req).await;
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !(status.is_client_error() || status.is_server_error())
        || content_type.starts_with("application/problem+json")
    {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR).await.ok();
    let mut answer = as_problem(status, &content_type, text.as_deref()).into_response();
    // The original's challenges replace the problem's own; repeated headers stay repeated.
    if parts.headers.contains_key(header::WWW_AUTHENTICATE) {
        answer.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

/// The problem an error answer becomes: its plain text (or none) as the
/// detail; an HTML page or an unreadable body says only the status.
fn as_problem(status: StatusCode, content_type: &str, body: Option<&[u8]>) -> Problem {
    let plain = content_type.is_empty() || content_type.starts_with("text/plain");
    let detail = body
        .filter(|_| plain)
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map_or_else(
            || status.canonical_reason().unwrap_or("error").to_owned(),
            str::to_owned,
        );
    problem(status, detail)
}

/// The Content-Security-Policy of every response: our own scripts and styles
/// only, no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it browsers send `Origin: null` with a
    // same-origin form POST, and the login's origin check must see ours.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn view<R>(
    state: &AppState,
    filter: &console::FleetFilter,
    render: impl FnOnce(&FleetView<'_>) -> R,
) -> R {
    let store = state.store.clone();
    // Without it the page still shows the fleet; only "recording" is unknown.
    let busy = match tokio::task::spawn_blocking(move || store.busy_nodes()).await {
        Ok(Ok(busy)) => busy,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "fleet page: nodes recording unknown (store read failed)");
            Default::default()
        }
        Err(_) => Default::default(),
    };
    let view = FleetView::build(
        |f| state.fleet.visit(f),
        filter,
        &busy,
        state.clock.unix_ms(),
        state.stale_after,
    );
    render(&view)
}

type FleetQuery =
    Result<axum::extract::Query<console::FleetFilter>, axum::extract::rejection::QueryRejection>;

async fn dashboard(
    State(state): State<AppState>,
    axum::Extension(signed_in): axum::Extension<crate::auth::SignedIn>,
    query: FleetQuery,
) -> maud::Markup {
    let filter = query.map(|q| q.0).unwrap_or_default();
    view(&state, &filter, |v| console::dashboard(v, &signed_in)).await
}

async fn nodes_fragment(State(state): State<AppState>, query: FleetQuery) -> maud::Markup {
    let filter = query.map(|q| q.0).unwrap_or_default();
    view(&state, &filter, console::nodes_panel).await
}

async fn static_asset(uri: Uri) -> Response {
    match rakkr_web::assets::lookup(uri.path()) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (
                    header::CACHE_CONTROL,
                    rakkr_web::assets::IMMUTABLE_CACHE_CONTROL,
                ),
            ],
            asset.bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

async fn not_found(uri: Uri) -> Response {
    (StatusCode::NOT_FOUND, console::not_found(uri.path())).into_response()
}

/// One node in `GET /api/v1/nodes`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct NodeJson {
    pub id: String,
    pub presence: Presence,
    pub presence_since_ms: u64,
    pub last_seen_ms: u64,
    pub details: Option<NodeDetails>,
    pub meters: Option<MetersJson>,
    /// The node's latest A/B update step since this server started; a phase that is not
    /// final (`committed`, `failed`, `rolled_back`) means the node is updating.
    pub update: Option<rakkr_protocol::update::UpdateReport>,
}

#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct MetersJson {
    pub captured_at_ms: u64,
    pub received_ms: u64,
    pub stale: bool,
    pub channels: Vec<ChannelMeter>,
}

impl NodeJson {
    fn of(n: crate::fleet::LiveNode, now_ms: u64, stale_after: Duration) -> NodeJson {
        let stale = n.meters_stale(now_ms, stale_after);
        NodeJson {
            update: n.update,
            meters: n.meters.map(|m| {
                let MeterFrame {
                    captured_at_ms,
                    channels,
                    ..
                } = m.frame;
                MetersJson {
                    captured_at_ms,
                    received_ms: m.received_ms,
                    stale,
                    channels,
                }
            }),
            id: n.record.id.to_string(),
            presence: n.record.presence,
            presence_since_ms: n.record.presence_since_ms,
            last_seen_ms: n.record.last_seen_ms,
            details: n.record.details,
        }
    }
}

async fn api_nodes(State(state): State<AppState>) -> Json<Vec<NodeJson>> {
    let now = state.clock.unix_ms();
    let nodes = state
        .fleet
        .snapshot()
        .into_iter()
        .map(|n| NodeJson::of(n, now, state.stale_after))
        .collect();
    Json(nodes)
}

/// `GET /api/v1/nodes/{id}`: one node, as in the list.
async fn api_node(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let node = rakkr_protocol::NodeId::new(id)
        .ok()
        .and_then(|id| state.fleet.node(&id));
    match node {
        Some(n) => Json(NodeJson::of(n, state.clock.unix_ms(), state.stale_after)).into_response(),
        None => problem(StatusCode::NOT_FOUND, "no such node").into_response(),
    }
}

/// Health events shown per node by the API.
const EVENTS_LISTED: usize = 100;

async fn api_node_events(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(node) = rakkr_protocol::NodeId::new(id) else {
        return problem(StatusCode::NOT_FOUND, "no such node").into_response();
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.health_events(&node, EVENTS_LISTED)).await {
        Ok(Ok(events)) => Json(events).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read health events");
            problem(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable").into_response()
        }
        Err(_) => problem(StatusCode::INTERNAL_SERVER_ERROR, "the read failed").into_response(),
    }
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct Readiness {
    ready: bool,
    store: String,
    mqtt: &'static str,
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let store_status =
        match tokio::task::spawn_blocking(move || store.nodes().map(|n| n.len())).await {
            Ok(Ok(_)) => "ok".to_owned(),
            Ok(Err(e)) => format!("error: {e}"),
            Err(e) => format!("error: {e}"),
        };
    let mqtt = if state.link.is_connected() {
        "connected"
    } else {
        "disconnected"
    };
    let ready = store_status == "ok" && state.link.is_connected();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            ready,
            store: store_status,
            mqtt,
        }),
    )
        .into_response()
}

/// An API error, sent as `application/problem+json`.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
}

pub fn problem(status: StatusCode, detail: impl Into<String>) -> Problem {
    Problem {
        status,
        detail: detail.into(),
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // How to authenticate: an API token (RFC 6750).
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// Run a store call off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(problem(StatusCode::INTERNAL_SERVER_ERROR, "task failed")))
}

pub(crate) fn store_problem(e: rakkr_store::StoreError) -> Problem {
    use rakkr_store::StoreError;
    match e {
        StoreError::NoSuchJob(id) => problem(StatusCode::NOT_FOUND, format!("no job {id}")),
        StoreError::NoSuchSchedule(id) => {
            problem(StatusCode::NOT_FOUND, format!("no schedule {id}"))
        }
        StoreError::Transition(t) => problem(StatusCode::CONFLICT, t.to_string()),
        StoreError::Refused(r) => problem(StatusCode::CONFLICT, r),
        e => {
            tracing::error!(error = %e, "store error");
            problem(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    }
}

/// The API's answer to a job that cannot be created.
pub(crate) fn job_problem(e: crate::jobs::JobRequestError) -> Problem {
    use crate::jobs::JobRequestError;
    match e {
        JobRequestError::Invalid(m) => problem(StatusCode::UNPROCESSABLE_ENTITY, m),
        e @ JobRequestError::UnknownNode(_) => problem(StatusCode::NOT_FOUND, e.to_string()),
        JobRequestError::Conflict(m) => problem(StatusCode::CONFLICT, m),
        JobRequestError::Store(e) => store_problem(e),
    }
}

fn job_id(text: &str) -> Result<rakkr_protocol::JobId, Problem> {
    text.parse()
        .map_err(|_| problem(StatusCode::NOT_FOUND, format!("{text:?} is not a job id")))
}

async fn api_create_job(
    State(state): State<AppState>,
    body: Result<Json<crate::jobs::JobRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body.map_err(|e| problem(e.status(), e.body_text()))?;
    let now = state.clock.unix_ms();
    let (store, commands) = (state.store.clone(), state.commands.clone());
    let profiles = state.profiles.clone();
    let job = blocking(move || {
        crate::jobs::create_job(&*store, &commands, &profiles, request, now).map_err(job_problem)
    })
    .await?;
    tracing::info!(job = %job.id, node = %job.node, "job created");
    let change = crate::jobs::audit_change(None, &job);
    Ok(change.to((StatusCode::CREATED, Json(job)).into_response()))
}

/// Most jobs one listing returns.
const MAX_JOBS_LISTED: usize = 1000;

#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobsQuery {
    node: Option<String>,
    limit: Option<usize>,
}

async fn api_jobs(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let q = query
        .map_err(|e| problem(StatusCode::BAD_REQUEST, e.body_text()))?
        .0;
    let node = q
        .node
        .map(rakkr_protocol::NodeId::new)
        .transpose()
        .map_err(|e| problem(StatusCode::BAD_REQUEST, e.to_string()))?;
    let limit = q.limit.unwrap_or(100).min(MAX_JOBS_LISTED);
    let store = state.store.clone();
    let jobs = blocking(move || store.jobs(node.as_ref(), limit).map_err(store_problem)).await?;
    Ok(Json(jobs).into_response())
}

async fn api_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = job_id(&id)?;
    let store = state.store.clone();
    match blocking(move || store.job(id).map_err(store_problem)).await? {
        Some(job) => Ok(Json(job).into_response()),
        None => Err(problem(StatusCode::NOT_FOUND, format!("no job {id}"))),
    }
}

#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StopRequest {
    #[serde(default)]
    cancel: bool,
}

async fn api_stop_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<StopRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let id = job_id(&id)?;
    let Json(request) = body.map_err(|e| problem(e.status(), e.body_text()))?;
    let now = state.clock.unix_ms();
    let (store, commands) = (state.store.clone(), state.commands.clone());
    let (job, change) = blocking(move || {
        crate::jobs::stop_job(&*store, &commands, id, request.cancel, now).map_err(store_problem)
    })
    .await?;
    Ok(change.to(Json(job).into_response()))
}

fn identity_problem(e: crate::identity::IdentityError) -> Problem {
    use crate::identity::IdentityError;
    match e {
        IdentityError::MalformedToken | IdentityError::BadTtl => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        IdentityError::Refused(why) => problem(StatusCode::FORBIDDEN, why),
        IdentityError::Store(e) => store_problem(e),
    }
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    node: Option<rakkr_protocol::NodeId>,
    /// Lifetime in seconds (default one hour).
    ttl_s: Option<u64>,
}

async fn api_create_enroll_token(
    State(state): State<AppState>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body.map_err(|e| problem(e.status(), e.body_text()))?;
    let ttl = Duration::from_secs(request.ttl_s.unwrap_or(3600));
    let (store, now) = (state.store.clone(), state.clock.unix_ms());
    let ca = state.ca.as_ref().map(|c| c.sha256.clone());
    let token = blocking(move || {
        crate::identity::create_token(&*store, request.node, ttl, ca.as_deref(), now)
            .map_err(identity_problem)
    })
    .await?;
    tracing::info!(token = %token.id, node = ?token.node, "enrollment token created");
    let change = token.audit_change();
    Ok(change.to((StatusCode::CREATED, Json(token)).into_response()))
}

/// A token as listed: never its secret.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct TokenJson {
    id: String,
    node: Option<rakkr_protocol::NodeId>,
    created_ms: u64,
    expires_ms: u64,
}

async fn api_enroll_tokens(State(state): State<AppState>) -> Result<Response, Problem> {
    let (store, now) = (state.store.clone(), state.clock.unix_ms());
    let tokens = blocking(move || store.enroll_tokens(now).map_err(store_problem)).await?;
    let listed: Vec<TokenJson> = tokens
        .into_iter()
        .map(|t| TokenJson {
            id: t.id,
            node: t.node,
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
        })
        .collect();
    Ok(Json(listed).into_response())
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrollRequest {
    token: String,
    node: rakkr_protocol::NodeId,
}

#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct EnrolledJson {
    node: rakkr_protocol::NodeId,
    /// The node's MQTT password (its user name and client id are the node id). Shown once.
    credential: String,
    /// The fleet CA (PEM) to trust for MQTT over TLS; its SHA-256 is in the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_pem: Option<String>,
}

/// Audit what an appliance did on its own routes (enrollment, rotation).
async fn audit_appliance(
    state: &AppState,
    peer: std::net::SocketAddr,
    node: &rakkr_protocol::NodeId,
    action: &str,
    refused: Option<&str>,
) {
    audit_node_request(state, peer, Some(node), action, None, refused).await;
}

/// Audit a request on an appliance route: as the node (`None`: one that did
/// not authenticate), on `target` (default: the node). Refusals are bounded
/// per client address like anonymous ones.
pub(crate) async fn audit_node_request(
    state: &AppState,
    peer: std::net::SocketAddr,
    node: Option<&rakkr_protocol::NodeId>,
    action: &str,
    target: Option<String>,
    refused: Option<&str>,
) {
    let now = state.clock.unix_ms();
    let mut reason = refused.map(str::to_owned);
    if let Some(why) = &reason {
        let (admit, left_out) = state.audit_budget.admit(&peer.ip().to_string(), now);
        if !admit {
            return;
        }
        if left_out > 0 {
            reason = Some(format!(
                "{why} ({left_out} more refusals from this address were not recorded one by one)"
            ));
        }
    }
    let entry = rakkr_store::AuditEntry {
        at_ms: now,
        actor: match node {
            Some(node) => format!("node:{node}@{}", peer.ip()),
            None => format!("anonymous@{}", peer.ip()),
        },
        action: action.to_owned(),
        target: target.or_else(|| node.map(|n| format!("node:{n}"))),
        outcome: if refused.is_some() {
            "denied"
        } else {
            "allowed"
        }
        .to_owned(),
        reason,
        ..Default::default()
    };
    crate::audit::record(state.store.clone(), entry).await;
}

async fn api_enroll(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    body: Result<Json<EnrollRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(request) = body.map_err(|e| problem(e.status(), e.body_text()))?;
    if crate::gate::RESERVED_CLIENT_IDS.contains(&request.node.as_str()) {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{} is reserved; choose another node id", request.node),
        ));
    }
    let (store, ids, now) = (
        state.store.clone(),
        state.identities.clone(),
        state.clock.unix_ms(),
    );
    let node = request.node.clone();
    let enrolled = blocking(move || {
        ids.enroll(&*store, &request.token, &request.node, now)
            .map_err(identity_problem)
    })
    .await;
    let refused = enrolled.as_ref().err().map(|p| p.detail.as_str());
    audit_appliance(&state, peer, &node, "enroll", refused).await;
    let credential = enrolled
        .inspect_err(|p| tracing::warn!(node = %node, why = %p.detail, "enrollment refused"))?;
    tracing::info!(node = %node, "node enrolled");
    let ca_pem = state.ca.as_ref().map(|c| c.pem.clone());
    Ok((
        StatusCode::CREATED,
        Json(EnrolledJson {
            node,
            credential,
            ca_pem,
        }),
    )
        .into_response())
}

/// A credential as the API shows it: never a hash.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct CredentialJson {
    node: rakkr_protocol::NodeId,
    generation: u32,
    created_ms: u64,
    revoked_ms: Option<u64>,
}

async fn api_revoke_credential(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let node = rakkr_protocol::NodeId::new(id)
        .map_err(|e| problem(StatusCode::NOT_FOUND, e.to_string()))?;
    let (store, ids, now) = (
        state.store.clone(),
        state.identities.clone(),
        state.clock.unix_ms(),
    );
    let record =
        blocking(move || ids.revoke(&*store, &node, now).map_err(identity_problem)).await?;
    tracing::warn!(node = %record.node, "node credential revoked; node disconnected");
    let view = CredentialJson {
        node: record.node,
        generation: record.generation,
        created_ms: record.created_ms,
        revoked_ms: record.revoked_ms,
    };
    let change = crate::audit::AuditChange {
        target: Some(format!("node:{}", view.node)),
        before: None,
        after: serde_json::to_value(&view).ok(),
    };
    Ok(change.to(Json(view).into_response()))
}

/// `Authorization: Basic base64(node:credential)`.
pub(crate) fn basic_auth(
    headers: &axum::http::HeaderMap,
) -> Option<(rakkr_protocol::NodeId, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((rakkr_protocol::NodeId::new(user).ok()?, password.to_owned()))
}

async fn api_rotate_credential(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Response, Problem> {
    let Some((node, current)) = basic_auth(&headers) else {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "a node authenticates with HTTP Basic: its node id and credential",
        ));
    };
    let (store, ids, now) = (
        state.store.clone(),
        state.identities.clone(),
        state.clock.unix_ms(),
    );
    let name = node.clone();
    let rotated = blocking(move || {
        ids.rotate(&*store, &node, &current, now)
            .map_err(|e| match e {
                crate::identity::IdentityError::Refused(_) => {
                    problem(StatusCode::UNAUTHORIZED, "wrong node id or credential")
                }
                e => identity_problem(e),
            })
    })
    .await;
    let refused = rotated.as_ref().err().map(|p| p.detail.as_str());
    audit_appliance(&state, peer, &name, "credential rotate", refused).await;
    let credential = rotated?;
    tracing::info!(node = %name, "node credential rotated (the old one works until the new one is used)");
    Ok(Json(EnrolledJson {
        node: name,
        credential,
        ca_pem: state.ca.as_ref().map(|c| c.pem.clone()),
    })
    .into_response())
}

async fn metrics(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let job_gauges = tokio::task::spawn_blocking(move || store.job_gauges())
        .await
        .ok()
        .and_then(Result::ok);
    let text = crate::metrics::render(&crate::metrics::Sources {
        fleet: &state.fleet,
        ingest: &state.ingest,
        jobs: &state.jobs,
        schedules: &state.schedules,
        gate: &state.gate,
        http: &state.http_stats,
        job_gauges,
        now_ms: state.clock.unix_ms(),
        stale_after: state.stale_after,
        live_streams: state.live_streams.open(),
        uploads: &state.uploads.stats,
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_error_becomes_a_problem_with_its_plain_text_as_detail() {
        let p = as_problem(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            Some(b"Failed to deserialize query string: limit: invalid digit\n"),
        );
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            p.detail,
            "Failed to deserialize query string: limit: invalid digit"
        );
        let html = as_problem(
            StatusCode::NOT_FOUND,
            "text/html; charset=utf-8",
            Some(b"<!DOCTYPE html><p>Not here</p>"),
        );
        assert_eq!(html.detail, "Not Found", "a page is not a detail");
        let empty = as_problem(StatusCode::METHOD_NOT_ALLOWED, "", Some(b""));
        assert_eq!(empty.detail, "Method Not Allowed");
        let unreadable = as_problem(StatusCode::FORBIDDEN, "text/plain", None);
        assert_eq!(unreadable.detail, "Forbidden");
        let not_text = as_problem(StatusCode::FORBIDDEN, "text/plain", Some(&[0xff, 0xfe]));
        assert_eq!(not_text.detail, "Forbidden");
    }
}
