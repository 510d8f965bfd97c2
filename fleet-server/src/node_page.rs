//! The console's node page: inventory, live meters, recordings (start, stop,
//! cancel) and health events of one appliance.
//!
//! Live meters: the page's `#live-meters` element names its stream in
//! `data-live-src`; `rakkr.js` opens it with `EventSource` and swaps in each
//! `meters` event (server-rendered, escaped markup, the same bars as the
//! fleet table). Without JavaScript the page shows the last telemetry frame.
//!
//! The stream ([`live_stream`]) asks the node for live frames
//! (`cmd/live`, [`LIVE_REQUEST`]) when it opens and again every
//! [`LIVE_RENEW`] while it stays open; the node stops on its own once the
//! requests stop. At most [`MAX_LIVE_STREAMS`] streams are open at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use rakkr_protocol::access::Permission;
use rakkr_protocol::payload::{BootSlot, LiveRequest};
use rakkr_protocol::state::{JobState, Presence};
use rakkr_protocol::{JobId, NodeId};
use rakkr_store::{HealthEventRecord, JobRecord, NodePolicyKind};
use rakkr_web::components::{ago, meter_bars, presence_badge};
use serde::Deserialize;

use crate::audit::AuditChange;
use crate::auth::SignedIn;
use crate::console::{console_page, csrf_field, utc_seconds};
use crate::fleet::LiveNode;
use crate::http::{AppState, Problem, blocking, problem, store_problem};
use crate::jobs::{JobRequest, JobRequestError, Outbound};
use crate::policies::NodePolicies;
use axum::Json;

/// How long one stream lasts. The browser's `EventSource` then reconnects
/// by itself, through the access check again: a session that ended (logout,
/// expiry, a disabled account) loses its live levels within this time.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(300);
/// How long one live request asks the node to publish.
pub const LIVE_REQUEST: Duration = Duration::from_secs(30);
/// How often an open stream repeats its request (well inside [`LIVE_REQUEST`]).
pub const LIVE_RENEW: Duration = Duration::from_secs(10);
/// Most live-meter streams open at once, over all browsers.
pub const MAX_LIVE_STREAMS: usize = 256;
/// Jobs listed on a node page.
const JOBS_SHOWN: usize = 20;
/// Health events listed on a node page.
const EVENTS_SHOWN: usize = 20;
/// How often the jobs panel refreshes in the browser.
const JOBS_REFRESH: &str = "every 2s";

/// Open live-meter streams (see [`MAX_LIVE_STREAMS`]).
#[derive(Debug, Default)]
pub struct LiveStreams {
    open: AtomicUsize,
}

struct StreamSlot(Arc<LiveStreams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LiveStreams {
    fn admit(self: &Arc<Self>) -> Option<StreamSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_LIVE_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.clone()))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

pub fn live_src(node: &NodeId) -> String {
    format!("/nodes/{node}/live")
}

fn jobs_src(node: &NodeId) -> String {
    format!("/nodes/{node}/jobs")
}

/// What a node page shows besides the live node.
pub struct NodePageData {
    pub jobs: Vec<JobRecord>,
    /// The uploads of the listed jobs' files, by job.
    pub uploads: std::collections::HashMap<JobId, Vec<rakkr_store::UploadRecord>>,
    pub events: Option<Vec<HealthEventRecord>>,
    /// The node's health issues not resolved (with health.read).
    pub issues: Option<Vec<rakkr_store::HealthIssue>>,
    /// Why jobs or events could not be read (the page says so rather than
    /// showing an empty list).
    pub store_error: Option<String>,
    /// The recording profiles the start form offers.
    pub profiles: Vec<crate::policies::NamedProfile>,
    /// The node's watchdog and retention policies, and the names of the
    /// ones to choose from.
    pub watchdog: Option<NodeWatchdogView>,
    pub watchdog_policies: Vec<String>,
    pub retention: Option<NodeRetentionView>,
    pub retention_policies: Vec<String>,
    /// Images the update form offers (with updates.manage, for an A/B node).
    pub images: Vec<String>,
}

/// A kind of policy operators choose per node, with its list on the server.
pub trait ChosenPerNode: Send + Sync + 'static {
    const KIND: NodePolicyKind;
    /// For people: "watchdog policy".
    const LABEL: &'static str;
    type Entry: crate::policies::Named;
    fn list(state: &AppState) -> &crate::policies::NamedList<Self::Entry>;
}

/// Watchdog policies (the appliance's quality rules).
pub struct WatchdogChoice;
/// Retention policies (which uploaded takes the appliance deletes).
pub struct RetentionChoice;

impl ChosenPerNode for WatchdogChoice {
    const KIND: NodePolicyKind = NodePolicyKind::Watchdog;
    const LABEL: &'static str = "watchdog policy";
    type Entry = crate::policies::WatchdogPolicy;
    fn list(state: &AppState) -> &crate::policies::WatchdogPolicies {
        &state.watchdog_policies
    }
}

impl ChosenPerNode for RetentionChoice {
    const KIND: NodePolicyKind = NodePolicyKind::Retention;
    const LABEL: &'static str = "retention policy";
    type Entry = crate::policies::RetentionPolicy;
    fn list(state: &AppState) -> &crate::policies::RetentionPolicies {
        &state.retention_policies
    }
}

/// What a node is sent for its policy of kind `C`.
type Sent<C> = <crate::policies::NamedList<<C as ChosenPerNode>::Entry> as NodePolicies>::Message;

/// A node's policy of one kind: what operators chose (none: the default)
/// and what the node is sent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct NodePolicyView<M> {
    pub node: NodeId,
    /// The policy operators chose for the node; absent: the server's default.
    pub chosen: Option<String>,
    /// The policy in effect and its appliance rules (what the node is sent).
    #[serde(flatten)]
    pub effective: M,
}

/// A node's watchdog policy.
pub type NodeWatchdogView = NodePolicyView<rakkr_protocol::watchdog::NodeWatchdog>;
/// A node's retention policy.
pub type NodeRetentionView = NodePolicyView<rakkr_protocol::retention::NodeRetention>;

fn view_of<C: ChosenPerNode>(
    state: &AppState,
    node: &NodeId,
    chosen: Option<String>,
) -> NodePolicyView<Sent<C>>
where
    crate::policies::NamedList<C::Entry>: NodePolicies,
{
    NodePolicyView {
        node: node.clone(),
        effective: C::list(state).for_node(chosen.as_deref()),
        chosen,
    }
}

/// A node's policy of kind `C` as chosen now.
async fn policy_view<C: ChosenPerNode>(
    state: &AppState,
    node: &NodeId,
) -> Result<NodePolicyView<Sent<C>>, Problem>
where
    crate::policies::NamedList<C::Entry>: NodePolicies,
{
    let store = state.store.clone();
    let target = node.clone();
    let chosen = blocking(move || {
        store
            .node_policies(C::KIND)
            .map(|mut all| all.remove(&target))
            .map_err(store_problem)
    })
    .await?;
    Ok(view_of::<C>(state, node, chosen))
}

/// Choose `node`'s policy of kind `C` (None: the default again); the node
/// is sent its rules within [`crate::policy_sync::SYNC_EVERY`].
async fn choose_policy<C: ChosenPerNode>(
    state: &AppState,
    node: &NodeId,
    policy: Option<String>,
) -> Result<(NodePolicyView<Sent<C>>, AuditChange), Problem>
where
    crate::policies::NamedList<C::Entry>: NodePolicies,
{
    let policy = policy.filter(|p| !p.trim().is_empty());
    C::list(state)
        .check_known(policy.as_deref())
        .map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let (store, target, chosen) = (state.store.clone(), node.clone(), policy.clone());
    let before = blocking(move || {
        if store.node(&target).map_err(store_problem)?.is_none() {
            return Err(problem(
                StatusCode::NOT_FOUND,
                format!("node {target} is not known to this server"),
            ));
        }
        store
            .set_node_policy(C::KIND, &target, chosen.as_deref())
            .map_err(store_problem)
    })
    .await?;
    let view = view_of::<C>(state, node, policy);
    let key = format!("{}_policy", C::KIND.as_str());
    let change = AuditChange {
        target: Some(format!("node:{node}")),
        before: Some(serde_json::json!({ key.clone(): before })),
        after: Some(serde_json::json!({ key: view.chosen })),
    };
    Ok((view, change))
}

/// `GET /api/v1/nodes/{id}/watchdog` and `…/retention`
pub async fn api_policy<C: ChosenPerNode>(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem>
where
    crate::policies::NamedList<C::Entry>: NodePolicies,
    Sent<C>: serde::Serialize,
{
    let node = NodeId::new(id).map_err(|e| problem(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(Json(policy_view::<C>(&state, &node).await?).into_response())
}

/// What `POST /api/v1/nodes/{id}/watchdog` (or `…/retention`) takes.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChoosePolicy {
    /// A policy's name; null: the server's default.
    pub policy: Option<String>,
}

/// `POST /api/v1/nodes/{id}/watchdog` (or `…/retention`) `{"policy": "lecture" | null}`
pub async fn api_choose_policy<C: ChosenPerNode>(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ChoosePolicy>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem>
where
    crate::policies::NamedList<C::Entry>: NodePolicies,
    Sent<C>: serde::Serialize,
{
    let node = NodeId::new(id).map_err(|e| problem(StatusCode::NOT_FOUND, e.to_string()))?;
    let Json(body) = body.map_err(|e| problem(e.status(), e.body_text()))?;
    let (view, change) = choose_policy::<C>(&state, &node, body.policy).await?;
    Ok(change.to(Json(view).into_response()))
}

/// The update form as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    image: String,
}

/// `POST /nodes/{id}/update` (a form), then back to the node page.
pub async fn order_update_form(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    Form(form): Form<UpdateForm>,
) -> Response {
    let Ok(node) = NodeId::new(id) else {
        return no_such_node();
    };
    let Some(live) = state.fleet.node(&node) else {
        return no_such_node();
    };
    match crate::updates::order_update(&state, &node, form.image).await {
        Ok((_, change)) => change.to(Redirect::to(&format!("/nodes/{node}")).into_response()),
        Err(p) => render_page(&state, &live, &signed_in, p.status, Some(&p.detail)).await,
    }
}

/// A policy form as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    #[serde(default)]
    policy: String,
}

/// `POST /nodes/{id}/watchdog` (or `…/retention`, a form), then back to the node page.
pub async fn choose_policy_form<C: ChosenPerNode>(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    Form(form): Form<PolicyForm>,
) -> Response
where
    crate::policies::NamedList<C::Entry>: NodePolicies,
{
    let Ok(node) = NodeId::new(id) else {
        return no_such_node();
    };
    let Some(live) = state.fleet.node(&node) else {
        return no_such_node();
    };
    match choose_policy::<C>(&state, &node, Some(form.policy)).await {
        Ok((_, change)) => change.to(Redirect::to(&format!("/nodes/{node}")).into_response()),
        Err(p) => render_page(&state, &live, &signed_in, p.status, Some(&p.detail)).await,
    }
}

/// A node's policy of one kind, said in a sentence, and the form to choose
/// another: `kind` names it in URLs and ids, `label` for people, `rules`
/// says what its appliance rules do.
fn policy_panel(
    node: &NodeId,
    (kind, label): (NodePolicyKind, &str),
    (chosen, effective, rules): (Option<&str>, &str, Markup),
    names: &[String],
    signed_in: &SignedIn,
) -> Markup {
    html! {
        p {
            "Policy " strong { (effective) }
            @if chosen.is_none() { " (the server's default)" }
            @if chosen.is_some_and(|c| c != effective) {
                " (its chosen policy " (chosen.unwrap_or_default()) " is not on this server)"
            }
            ": " (rules)
        }
        @if signed_in.may(Permission::NodesManage) {
            form.start method="post" action={ "/nodes/" (node) "/" (kind.as_str()) } {
                (csrf_field(signed_in))
                label { (label)
                    select name="policy" {
                        option value="" selected[chosen.is_none()] { "The default" }
                        @for name in names {
                            option value=(name) selected[chosen == Some(name.as_str())] { (name) }
                        }
                    }
                }
                button.secondary type="submit" id={ "choose-" (kind.as_str()) } { "Use this policy" }
            }
        }
    }
}

fn watchdog_panel(
    node: &NodeId,
    view: &NodeWatchdogView,
    names: &[String],
    signed_in: &SignedIn,
) -> Markup {
    let r = &view.effective.rules;
    let rules = html! {
        "silence after " (r.silence_s) " s, low signal after " (r.low_signal_s) " s, flatline after "
        (r.flatline_s) " s, clipping after " (r.clipping_s) " s, correlation after " (r.correlation_s)
        " s, " (r.xruns) " overruns a minute, disk below " (r.disk_min_free_mb) " MB."
    };
    policy_panel(
        node,
        (NodePolicyKind::Watchdog, "Watchdog policy"),
        (view.chosen.as_deref(), &view.effective.policy, rules),
        names,
        signed_in,
    )
}

fn retention_panel(
    node: &NodeId,
    view: &NodeRetentionView,
    names: &[String],
    signed_in: &SignedIn,
) -> Markup {
    let r = &view.effective.rules;
    let rules = html! {
        @if r.delete_confirmed {
            "each file is deleted from the appliance once the server confirmed it"
        } @else {
            "uploaded files stay on the appliance"
            @if let Some(days) = r.max_age_days { " for " (days) " days" }
            @if let Some(mb) = r.max_mb { ", at most " (mb) " MB of them" }
        }
        "; uploaded files make room when the disk has less than " (r.min_free_mb) " MB free. Files not yet uploaded are never deleted."
    };
    policy_panel(
        node,
        (NodePolicyKind::Retention, "Retention policy"),
        (view.chosen.as_deref(), &view.effective.policy, rules),
        names,
        signed_in,
    )
}

/// The whole node page; `notice` is an error from a form just sent.
pub fn node_page(
    node: &LiveNode,
    data: &NodePageData,
    signed_in: &SignedIn,
    now_ms: u64,
    stale_after: Duration,
    notice: Option<&str>,
) -> Markup {
    let r = &node.record;
    let stale = node.meters_stale(now_ms, stale_after);
    console_page(
        r.id.as_str(),
        signed_in,
        html! {},
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href="/" { "Fleet" } " › " span { (r.id) } }
            h1 { span.node-id { (r.id) } " " (presence_badge(r.presence)) }
            @if let Some(notice) = notice { p.error role="alert" { (notice) } }
            @if let Some(e) = &data.store_error {
                p.error role="alert" { "The store could not be read (" (e) "): recordings and health events below may be missing." }
            }
            div.node-grid {
                section.panel aria-labelledby="inventory-h" {
                    h2 #inventory-h { "Inventory" }
                    (inventory(node, now_ms))
                }
                section.panel aria-labelledby="live-h" {
                    h2 #live-h { "Live levels" }
                    div #live-meters data-live-src=(live_src(&r.id)) aria-live="off" {
                        @match (&node.meters, r.presence) {
                            (Some(m), Presence::Online) => { (meter_bars(&m.frame.channels, stale)) }
                            _ => { p.muted { "No levels: the node is offline or not capturing." } }
                        }
                    }
                    p.muted #live-state { "Levels from the last telemetry frame; live updates need JavaScript." }
                }
            }
            @if signed_in.may(Permission::JobsManage) {
                section.panel aria-labelledby="start-h" {
                    h2 #start-h { "Start a recording" }
                    (start_form(node, &data.profiles, signed_in))
                }
            }
            section.panel aria-labelledby="jobs-h" {
                h2 #jobs-h { "Recordings" }
                (jobs_panel(&r.id, data, signed_in, now_ms))
            }
            @if let Some(view) = &data.watchdog {
                section.panel aria-labelledby="watchdog-h" {
                    h2 #watchdog-h { "Watchdog" }
                    (watchdog_panel(&r.id, view, &data.watchdog_policies, signed_in))
                }
            }
            @if let Some(view) = &data.retention {
                section.panel aria-labelledby="retention-h" {
                    h2 #retention-h { "Retention" }
                    (retention_panel(&r.id, view, &data.retention_policies, signed_in))
                }
            }
            @if signed_in.may(Permission::UpdatesManage) && r.details.as_ref().is_some_and(|d| d.slot != BootSlot::None) {
                section.panel aria-labelledby="update-h" {
                    h2 #update-h { "Image update" }
                    @if data.images.is_empty() {
                        p.muted { "No signed images on the server: put an image and its .minisig in the server's images directory." }
                    } @else {
                        form.start method="post" action={ "/nodes/" (r.id) "/update" } {
                            (csrf_field(signed_in))
                            label { "Image"
                                select name="image" {
                                    @for name in &data.images { option value=(name) { (name) } }
                                }
                            }
                            button.secondary type="submit" #order-update { "Install and reboot" }
                        }
                        p.muted { "The node writes the image to its other slot, checks its signature, reboots into it once and keeps it only if it comes back and reaches the server." }
                    }
                }
            }
            @if signed_in.may(Permission::NodesManage) {
                section.panel aria-labelledby="credential-h" {
                    h2 #credential-h { "Credential" }
                    form.inline method="post" action={ "/nodes/" (r.id) "/revoke" } {
                        (csrf_field(signed_in))
                        button.secondary.danger type="submit" #revoke-credential { "Revoke credential" }
                    }
                    span.muted { " Disconnects the node at once; it must enroll again with a new token." }
                }
            }
            @if let Some(issues) = &data.issues {
                section.panel aria-labelledby="issues-h" {
                    h2 #issues-h { "Health issues" }
                    @if issues.is_empty() {
                        p.muted { "None open." }
                    } @else {
                        ul.issues {
                            @for i in issues {
                                li {
                                    span class={ "badge issue " (i.state.as_str()) } { (i.state.as_str()) } " "
                                    strong { (i.condition.as_str()) }
                                    @if !i.subject.is_empty() { " " span.muted { (i.subject) } }
                                    " — " (i.detail)
                                }
                            }
                        }
                    }
                    p { a href={ (crate::health_page::HEALTH_PATH) "?node=" (node.record.id) "&state=active" } { "All of this node's issues" } }
                }
            }
            @if let Some(events) = &data.events {
                section.panel aria-labelledby="events-h" {
                    h2 #events-h { "Health events" }
                    (events_table(events, now_ms))
                }
            }
        },
    )
}

fn inventory(node: &LiveNode, now_ms: u64) -> Markup {
    let r = &node.record;
    html! {
        dl.facts {
            dt { "State" } dd { (r.presence.as_str()) " since " (utc_seconds(r.presence_since_ms)) }
            dt { "Last seen" } dd { (ago(now_ms, r.last_seen_ms)) }
            @match &r.details {
                Some(d) => {
                    dt { "Agent" } dd { (d.agent_version) }
                    dt { "Boot slot" } dd { @match d.slot { BootSlot::None => "no A/B slot", slot => { (slot.as_str().to_uppercase()) } } }
                    @if let Some(u) = &node.update {
                        dt { "Update" } dd #update-step { (crate::console::update_step(u)) }
                    }
                    dt { "Devices" } dd {
                        @if d.capabilities.devices.is_empty() { span.muted { "not announced (an older agent)" } }
                        ul.devices {
                            @for dev in &d.capabilities.devices {
                                li data-in-use=(dev.in_use) {
                                    code { (dev.name) }
                                    @if dev.in_use { " " span.badge.online { "capturing" } }
                                    @if !dev.description.is_empty() { " " span.muted { (dev.description) } }
                                }
                            }
                        }
                    }
                    dt { "Channels" } dd { (d.capabilities.channels) }
                    dt { "Sample rates" } dd { (join(d.capabilities.sample_rates.iter().map(|r| format!("{r} Hz")))) }
                    dt { "Sources" } dd { (join(d.capabilities.sources.iter())) }
                    dt { "Codecs" } dd { (join(d.capabilities.codecs.iter())) }
                    dt { "Recordings at once" } dd { (d.capabilities.max_jobs) }
                    dt { "Real-time" } dd {
                        (if d.realtime.sched_fifo { "SCHED_FIFO" } else { "normal scheduling" })
                        ", " (if d.realtime.memory_locked { "memory locked" } else { "memory not locked" })
                    }
                }
                None => { dt { "Agent" } dd.muted { "not yet announced" } }
            }
        }
    }
}

fn join(items: impl Iterator<Item = impl std::fmt::Display>) -> String {
    let text: Vec<String> = items.map(|i| i.to_string()).collect();
    if text.is_empty() {
        "none".into()
    } else {
        text.join(", ")
    }
}

fn start_form(
    node: &LiveNode,
    profiles: &[crate::policies::NamedProfile],
    signed_in: &SignedIn,
) -> Markup {
    let r = &node.record;
    let codecs: Vec<String> = r
        .details
        .as_ref()
        .map(|d| d.capabilities.codecs.clone())
        .unwrap_or_default();
    let can_record = r.presence == Presence::Online && !codecs.is_empty();
    // Jobs record from the device the node captures from (`default` names it).
    let in_use = r.details.as_ref().and_then(|d| {
        d.capabilities
            .devices
            .iter()
            .find(|dev| dev.in_use)
            .map(|dev| dev.name.clone())
    });
    html! {
        form.start method="post" action=(jobs_src(&r.id)) {
            (csrf_field(signed_in))
            label { "Device"
                input type="text" name="device" value=(in_use.as_deref().unwrap_or("default")) required maxlength="128";
            }
            label { "Channels" input type="text" name="channels" placeholder="all, or e.g. 1,2 or 3+4" maxlength="128"; }
            label { "Profile"
                select name="profile" {
                    @for p in profiles {
                        option value=(p.name) selected[p.default] { (p.name) " — " (crate::policies::describe_profile(&p.value)) }
                    }
                }
            }
            label { "Duration (s)" input type="number" name="duration_s" min="1" placeholder="until stopped"; }
            button type="submit" #start-recording disabled[!can_record] { "Start recording" }
            @if !can_record { span.muted { "The node must be online and able to record." } }
        }
    }
}

/// The jobs table; also the htmx fragment that replaces itself.
pub fn jobs_panel(node: &NodeId, data: &NodePageData, signed_in: &SignedIn, now_ms: u64) -> Markup {
    let jobs = &data.jobs;
    let manage = signed_in.may(Permission::JobsManage);
    html! {
        div #jobs hx-get=(jobs_src(node)) hx-trigger=(JOBS_REFRESH) hx-swap="outerHTML" {
            @if jobs.is_empty() {
                p.muted { "No recordings yet." }
            } @else {
                table.jobs {
                    thead { tr { th { "Job" } th { "State" } th { "Started" } th { "Take" } @if manage { th { span.sr-only { "Actions" } } } } }
                    tbody {
                        @for job in jobs {
                            tr data-job=(job.id) data-state=(job.state.as_str()) {
                                td { code { (short_id(&job.id)) } div.muted { (job.spec.profile.codec.as_str()) " " (job.spec.profile.bits) "-bit" } }
                                td { span class={ "badge job " (job.state.as_str()) } { (job.state.as_str().replace('_', " ")) }
                                     @if job.deleted.is_some() { " " span.badge.job.failed { "deleted" } }
                                     @if !job.detail.is_empty() { div.muted { (job.detail) } } }
                                td { span title=(utc_seconds(job.created_ms)) { (ago(now_ms, job.created_ms)) } }
                                td { (take_summary(job)) (delivery(job, data.uploads.get(&job.id))) }
                                @if manage {
                                    td.actions {
                                        @if matches!(job.state, JobState::Queued | JobState::Leased | JobState::Running) {
                                            (stop_button(signed_in, &job.id, false))
                                            (stop_button(signed_in, &job.id, true))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn short_id(id: &JobId) -> String {
    id.to_string()
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

fn take_summary(job: &JobRecord) -> Markup {
    match &job.recording {
        Some(rec) => {
            let secs = rec.frames as f64 / f64::from(rec.sample_rate.max(1));
            let bytes: u64 = rec.files.iter().map(|f| f.bytes).sum();
            html! {
                (format!("{secs:.1} s")) " · " (rec.channels) " ch · " (rec.file_count) " file" @if rec.file_count != 1 { "s" }
                " · " (format!("{:.1} MB", bytes as f64 / 1e6))
                @if rec.gaps > 0 { " · " span.warn { (rec.gaps) " gaps" } }
                @if rec.recovered { " · " span.warn { "recovered after a crash" } }
                @if let Some(first) = rec.files.first() { div.muted { (first.name) } }
            }
        }
        None => match job.spec.duration_s {
            Some(d) => html! { span.muted { (d) " s planned" } },
            None => html! { span.muted { "until stopped" } },
        },
    }
}

/// Stop or Cancel for a job. The buttons have ids so that htmx gives the
/// focus back after the jobs table refreshes: a keyboard user on Stop stays
/// on Stop.
/// Where a finished take's files are: on the server, uploading (with the
/// share of its bytes that arrived), or still only on the appliance.
fn delivery(job: &JobRecord, uploads: Option<&Vec<rakkr_store::UploadRecord>>) -> Markup {
    let Some(r) = job.recording.as_ref() else {
        return html! {};
    };
    if job.deleted.is_some() {
        return html! { div.delivery data-delivery="deleted" { span.muted { "deleted" } } };
    }
    let uploads = uploads.map(Vec::as_slice).unwrap_or_default();
    let cached = uploads
        .iter()
        .filter(|u| u.state == rakkr_store::UploadState::Cached)
        .count();
    let (held, total): (u64, u64) = uploads
        .iter()
        .fold((0, 0), |(h, t), u| (h + u.offset, t + u.length));
    html! {
        div.delivery data-delivery=(if cached as u32 >= r.file_count { "server" } else if uploads.is_empty() { "appliance" } else { "uploading" }) {
            @if cached as u32 >= r.file_count {
                span.badge.ok { "on the server" }
            } @else if uploads.is_empty() {
                span.muted { "on the appliance" }
            } @else {
                progress max=(total.max(1)) value=(held) aria-label="Upload" {}
                " uploading " (held * 100 / total.max(1)) " % · " (cached) " of " (r.file_count) " files"
            }
        }
    }
}

fn stop_button(signed_in: &SignedIn, job: &JobId, cancel: bool) -> Markup {
    html! {
        form.inline method="post" action={ "/jobs/" (job) "/stop" } {
            (csrf_field(signed_in))
            @if cancel {
                input type="hidden" name="cancel" value="1";
                button.secondary.cancel #{ "cancel-" (job) } type="submit" title="Stop and mark the job cancelled" { "Cancel" }
            } @else {
                button.stop #{ "stop-" (job) } type="submit" title="Stop and keep the take" { "Stop" }
            }
        }
    }
}

fn events_table(events: &[HealthEventRecord], now_ms: u64) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted { "No health events." }
        } @else {
            table.events {
                thead { tr { th { "When" } th { "Condition" } th { "Change" } th { "Detail" } } }
                tbody {
                    @for e in events.iter().rev() {
                        tr {
                            td { span title=(utc_seconds(e.event.at_ms)) { (ago(now_ms, e.event.at_ms)) } }
                            td { (format!("{:?}", e.event.condition)) }
                            td { (format!("{:?}", e.event.change)) }
                            td { (e.event.detail) }
                        }
                    }
                }
            }
        }
    }
}

fn no_such_node() -> Response {
    (StatusCode::NOT_FOUND, "no such node\n").into_response()
}

async fn page_data(state: &AppState, node: &NodeId, signed_in: &SignedIn) -> NodePageData {
    let mut data = page_records(state, node, signed_in).await;
    data.watchdog = policy_view::<WatchdogChoice>(state, node).await.ok();
    data.watchdog_policies = state.watchdog_policies.names().map(String::from).collect();
    data.retention = policy_view::<RetentionChoice>(state, node).await.ok();
    data.retention_policies = state.retention_policies.names().map(String::from).collect();
    if signed_in.may(Permission::UpdatesManage) {
        let dir = state.images_dir.clone();
        data.images = tokio::task::spawn_blocking(move || crate::updates::list_images(&dir))
            .await
            .unwrap_or_default();
    }
    data
}

async fn page_records(state: &AppState, node: &NodeId, signed_in: &SignedIn) -> NodePageData {
    let store = state.store.clone();
    let profiles = state.profiles.list();
    let (node, health) = (node.clone(), signed_in.may(Permission::HealthRead));
    tokio::task::spawn_blocking(move || {
        let mut store_error = None;
        let mut note = |e: rakkr_store::StoreError| {
            tracing::error!(error = %e, "node page: store read failed");
            store_error = Some(e.to_string());
        };
        let jobs = store.jobs(Some(&node), JOBS_SHOWN).unwrap_or_else(|e| {
            note(e);
            Vec::new()
        });
        let mut uploads = std::collections::HashMap::new();
        for job in jobs.iter().filter(|j| j.recording.is_some()) {
            match store.uploads_of_job(job.id) {
                Ok(list) if !list.is_empty() => {
                    uploads.insert(job.id, list);
                }
                Ok(_) => {}
                Err(e) => note(e),
            }
        }
        let events = health.then(|| {
            store
                .health_events(&node, EVENTS_SHOWN)
                .unwrap_or_else(|e| {
                    note(e);
                    Vec::new()
                })
        });
        let issues = health.then(|| {
            let query = rakkr_store::IssueQuery {
                node: Some(node.clone()),
                limit: rakkr_store::MAX_ISSUES_PER_NODE,
                ..Default::default()
            };
            let mut open = store.health_issues(&query).unwrap_or_else(|e| {
                note(e);
                Vec::new()
            });
            open.retain(|i| i.state != rakkr_protocol::state::HealthState::Resolved);
            open.truncate(EVENTS_SHOWN);
            open
        });
        NodePageData {
            jobs,
            uploads,
            events,
            issues,
            store_error,
            profiles,
            watchdog: None,
            watchdog_policies: Vec::new(),
            retention: None,
            retention_policies: Vec::new(),
            images: Vec::new(),
        }
    })
    .await
    .unwrap_or_else(|e| NodePageData {
        jobs: Vec::new(),
        uploads: Default::default(),
        events: None,
        issues: None,
        store_error: Some(e.to_string()),
        profiles: state.profiles.list(),
        watchdog: None,
        watchdog_policies: Vec::new(),
        retention: None,
        retention_policies: Vec::new(),
        images: Vec::new(),
    })
}

async fn render_page(
    state: &AppState,
    node: &LiveNode,
    signed_in: &SignedIn,
    status: StatusCode,
    notice: Option<&str>,
) -> Response {
    let data = page_data(state, &node.record.id, signed_in).await;
    let page = node_page(
        node,
        &data,
        signed_in,
        state.clock.unix_ms(),
        state.stale_after,
        notice,
    );
    (status, page).into_response()
}

/// `GET /nodes/{id}`
pub async fn page(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
) -> Response {
    let Ok(node) = NodeId::new(id) else {
        return no_such_node();
    };
    match state.fleet.node(&node) {
        Some(live) => render_page(&state, &live, &signed_in, StatusCode::OK, None).await,
        None => (
            StatusCode::NOT_FOUND,
            crate::console::not_found(&format!("/nodes/{node}")),
        )
            .into_response(),
    }
}

/// `GET /nodes/{id}/jobs`: the jobs panel (htmx refresh).
pub async fn jobs_fragment(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
) -> Response {
    let Ok(node) = NodeId::new(id) else {
        return no_such_node();
    };
    let data = page_data(&state, &node, &signed_in).await;
    if data.store_error.is_some() {
        // htmx keeps the panel it has rather than swapping in an empty one.
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    jobs_panel(&node, &data, &signed_in, state.clock.unix_ms()).into_response()
}

/// The start form as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    device: String,
    #[serde(default)]
    channels: String,
    /// A recording profile's name.
    profile: String,
    #[serde(default)]
    duration_s: String,
}

impl StartForm {
    fn request(&self, node: NodeId) -> Result<JobRequest, String> {
        let duration_s = match self.duration_s.trim() {
            "" => None,
            text => Some(text.parse::<u32>().ok().filter(|d| *d > 0).ok_or_else(|| {
                format!("duration {text:?} is not a whole number of seconds above 0")
            })?),
        };
        let channels = Some(self.channels.trim().to_owned()).filter(|c| !c.is_empty());
        Ok(JobRequest {
            node,
            device: self.device.trim().to_owned(),
            channels,
            profile: Some(crate::jobs::ProfileChoice::Named(
                self.profile.trim().to_owned(),
            )),
            duration_s,
        })
    }
}

/// `POST /nodes/{id}/jobs`: start a recording, then back to the node page.
pub async fn start(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    form: Result<Form<StartForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(node) = NodeId::new(id) else {
        return no_such_node();
    };
    let Some(live) = state.fleet.node(&node) else {
        return no_such_node();
    };
    let request = match form {
        Ok(Form(form)) => form.request(node.clone()),
        Err(e) => Err(e.body_text()),
    };
    let request = match request {
        Ok(s) => s,
        Err(why) => {
            return render_page(
                &state,
                &live,
                &signed_in,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(&why),
            )
            .await;
        }
    };
    let (store, commands, now) = (
        state.store.clone(),
        state.commands.clone(),
        state.clock.unix_ms(),
    );
    let profiles = state.profiles.clone();
    let created = tokio::task::spawn_blocking(move || {
        crate::jobs::create_job(&*store, &commands, &profiles, request, now)
    })
    .await;
    let (status, why) = match created {
        Ok(Ok(job)) => {
            tracing::info!(job = %job.id, node = %job.node, user = %signed_in.user.name, "job created from the console");
            let change = crate::jobs::audit_change(None, &job);
            return change.to(Redirect::to(&format!("/nodes/{node}")).into_response());
        }
        Ok(Err(JobRequestError::Invalid(m))) => (StatusCode::UNPROCESSABLE_ENTITY, m),
        Ok(Err(JobRequestError::Conflict(m))) => (StatusCode::CONFLICT, m),
        Ok(Err(e @ JobRequestError::UnknownNode(_))) => (StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(JobRequestError::Store(e))) => {
            tracing::error!(error = %e, "store error");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable; try again".to_owned(),
            )
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_owned(),
        ),
    };
    render_page(
        &state,
        &live,
        &signed_in,
        status,
        Some(&format!("Not started: {why}")),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
    #[serde(default)]
    cancel: Option<String>,
}

/// `POST /jobs/{id}/stop`: stop (or cancel) a job, then back to its node.
pub async fn stop(
    State(state): State<AppState>,
    Path(id): Path<String>,
    form: Result<Form<StopForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(id) = id.parse::<JobId>() else {
        return (StatusCode::NOT_FOUND, "no such job\n").into_response();
    };
    let cancel = match form {
        Ok(Form(f)) => f.cancel.is_some(),
        Err(e) => return (StatusCode::UNPROCESSABLE_ENTITY, e.body_text()).into_response(),
    };
    let (store, commands, now) = (
        state.store.clone(),
        state.commands.clone(),
        state.clock.unix_ms(),
    );
    let stopped = tokio::task::spawn_blocking(move || {
        crate::jobs::stop_job(&*store, &commands, id, cancel, now)
    })
    .await;
    match stopped {
        Ok(Ok((job, change))) => {
            change.to(Redirect::to(&format!("/nodes/{}", job.node)).into_response())
        }
        Ok(Err(rakkr_store::StoreError::NoSuchJob(_))) => {
            (StatusCode::NOT_FOUND, "no such job\n").into_response()
        }
        Ok(Err(e)) => (StatusCode::CONFLICT, format!("not stopped: {e}\n")).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `GET /nodes/{id}/live`: live meters as server-sent events (`meters`,
/// each the rendered bars).
pub async fn live_stream(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(node) = NodeId::new(id) else {
        return no_such_node();
    };
    if state.fleet.node(&node).is_none() {
        return no_such_node();
    }
    let Some(slot) = state.live_streams.admit() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live-meter streams open; try again later\n",
        )
            .into_response();
    };
    let watch = state.fleet.watch_live(&node);
    let commands = state.commands.clone();
    let request = LiveRequest {
        for_ms: LIVE_REQUEST.as_millis() as u32,
    };
    let mut renew = tokio::time::interval(LIVE_RENEW);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ends = tokio::time::Instant::now() + STREAM_LIFETIME;
    let stream = futures_util::stream::unfold(
        (watch, renew, slot, commands, node),
        move |(mut watch, mut renew, slot, commands, node)| {
            let request = request.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(ends) => return None,
                        _ = renew.tick() => commands.send(Outbound::Live(node.clone(), request.clone())),
                        changed = watch.frames.changed() => {
                            changed.ok()?;
                            let frame = watch.frames.borrow_and_update().clone();
                            let Some(frame) = frame else { continue };
                            let bars = meter_bars(&frame.channels, false).into_string();
                            let event = Event::default().event("meters").data(bars);
                            return Some((Ok::<_, Infallible>(event), (watch, renew, slot, commands, node)));
                        }
                    }
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
