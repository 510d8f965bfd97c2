//! The operator console's pages (server-rendered maud, refreshed with htmx).
//!
//! Every page reads completely without JavaScript; htmx only swaps fragments in
//! place. Fragments are served by the same functions that render them inside
//! full pages, so the two cannot drift apart.
//!
//! Every signed-in page goes through [`console_page`]: the navigation, the
//! account bar, and an `hx-headers` attribute that makes every htmx request
//! from the page carry the session's CSRF token (`X-CSRF-Token`). Plain forms
//! carry it as a hidden `csrf` field ([`csrf_field`]). Controls the signed-in
//! role may not use are not rendered; the server refuses them anyway.

use std::time::Duration;

use maud::{Markup, html};
use rakkr_protocol::payload::BootSlot;
use rakkr_protocol::state::Presence;
use rakkr_web::components::{ago, meter_bars, presence_badge};
use rakkr_web::layout::{Chrome, page_with_head};

use crate::auth::SignedIn;
use crate::fleet::LiveNode;
use rakkr_protocol::access::Permission;

/// The console's header detail: which server this is.
const DETAIL: &str = concat!("rakkr-server ", env!("CARGO_PKG_VERSION"));

/// A signed-in page: navigation, account bar, and the CSRF header for htmx.
pub fn console_page(title: &str, signed_in: &SignedIn, head: Markup, body: Markup) -> Markup {
    let chrome = Chrome {
        area: "Fleet console",
        detail: DETAIL,
    };
    let csrf_header =
        serde_json::json!({ "X-CSRF-Token": signed_in.session.csrf_token }).to_string();
    page_with_head(
        title,
        chrome,
        head,
        html! {
            div.console hx-headers=(csrf_header) {
                nav.sections aria-label="Console sections" {
                    a href="/" { "Fleet" }
                    @if signed_in.may(Permission::RecordingsRead) {
                        a href=(crate::recordings_page::RECORDINGS_PATH) { "Recordings" }
                        a href=(crate::deliveries_page::DELIVERIES_PATH) { "Deliveries" }
                    }
                    @if signed_in.may(Permission::HealthRead) {
                        a href=(crate::health_page::HEALTH_PATH) { "Health" }
                    }
                    @if signed_in.may(Permission::SchedulesRead) {
                        a href=(crate::schedules_page::SCHEDULES_PATH) { "Schedules" }
                    }
                    @if signed_in.may(Permission::AuditRead) {
                        a href=(crate::audit_page::AUDIT_PATH) { "Audit log" }
                    }
                    @if signed_in.may(Permission::NodesManage) {
                        a href=(crate::enrollment_page::ENROLLMENT_PATH) { "Enrollment" }
                    }
                    @if signed_in.may(Permission::SettingsManage) {
                        a href=(crate::destinations::DESTINATIONS_PATH) { "Destinations" }
                    }
                    @if signed_in.may(Permission::UsersManage) {
                        a href=(crate::accounts_page::USERS_PATH) { "Users" }
                        a href=(crate::accounts_page::TOKENS_PATH) { "API tokens" }
                    }
                }
                (crate::login::logout_form(signed_in))
                (body)
            }
        },
    )
}

/// The hidden form field that carries the session's CSRF token.
pub fn csrf_field(signed_in: &SignedIn) -> Markup {
    html! { input type="hidden" name="csrf" value=(signed_in.session.csrf_token); }
}

/// `ms` since the epoch as `2026-11-29 20:41:07 UTC`.
pub fn utc_seconds(ms: u64) -> String {
    let text = rakkr_agent::clock::utc_rfc3339_micros(ms.saturating_mul(1_000_000));
    format!("{} UTC", text[..19].replace('T', " "))
}

/// How often the node list refreshes in the browser.
pub const REFRESH_EVERY: &str = "1s";

pub const NODES_FRAGMENT_PATH: &str = "/console/nodes";

/// Nodes one page of the fleet table shows.
pub const NODES_PER_PAGE: usize = 100;

/// Which nodes the fleet page lists (its query string).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFilter {
    /// `online`, `offline`, `recording`, `alerting` or `updating`; empty: every node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Text in the node id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub q: String,
    /// 0-based page of [`NODES_PER_PAGE`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub page: usize,
}

/// `path`, with `?query` when there is one.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The states the fleet page filters by, in the order it shows them.
pub const NODE_STATES: [&str; 5] = ["online", "offline", "recording", "alerting", "updating"];

impl FleetFilter {
    pub fn query(&self) -> String {
        serde_urlencoded::to_string(self).unwrap_or_default()
    }

    fn with(&self, state: &str) -> FleetFilter {
        FleetFilter {
            state: state.to_owned(),
            q: self.q.clone(),
            page: 0,
        }
    }
}

/// What the fleet page shows: counts over the whole fleet, one page of the
/// nodes that match the filter.
pub struct FleetView<'a> {
    /// The nodes on this page.
    pub shown: Vec<LiveNode>,
    /// Nodes matching the filter, over all pages.
    pub matching: usize,
    pub total: usize,
    /// Per [`NODE_STATES`].
    pub state_counts: [usize; NODE_STATES.len()],
    pub now_ms: u64,
    pub stale_after: Duration,
    pub filter: &'a FleetFilter,
    /// Nodes recording (a job holds their channels).
    pub busy: &'a std::collections::BTreeSet<rakkr_protocol::NodeId>,
}

impl<'a> FleetView<'a> {
    /// One pass over the nodes (in id order, as `visit` hands them over):
    /// count them by state, and copy only the page's nodes.
    pub fn build(
        visit: impl FnOnce(&mut dyn FnMut(&LiveNode)),
        filter: &'a FleetFilter,
        busy: &'a std::collections::BTreeSet<rakkr_protocol::NodeId>,
        now_ms: u64,
        stale_after: Duration,
    ) -> FleetView<'a> {
        let mut view = FleetView {
            shown: Vec::new(),
            matching: 0,
            total: 0,
            state_counts: [0; NODE_STATES.len()],
            now_ms,
            stale_after,
            filter,
            busy,
        };
        let q = filter.q.trim().to_ascii_lowercase();
        let start = filter.page.saturating_mul(NODES_PER_PAGE);
        visit(&mut |node| {
            view.total += 1;
            for (i, state) in NODE_STATES.iter().enumerate() {
                if view.state_of(node, state) {
                    view.state_counts[i] += 1;
                }
            }
            let matches = view.state_of(node, &filter.state)
                && (q.is_empty() || node.record.id.as_str().contains(&q));
            if matches {
                if view.matching >= start && view.shown.len() < NODES_PER_PAGE {
                    view.shown.push(node.clone());
                }
                view.matching += 1;
            }
        });
        view
    }

    fn state_of(&self, node: &LiveNode, state: &str) -> bool {
        match state {
            "online" => node.record.presence == Presence::Online,
            "offline" => node.record.presence == Presence::Offline,
            "recording" => self.busy.contains(&node.record.id),
            "alerting" => node.alerting(self.now_ms, self.stale_after),
            "updating" => node.updating(),
            _ => true,
        }
    }
}

/// The fleet page.
pub fn dashboard(view: &FleetView<'_>, signed_in: &SignedIn) -> Markup {
    let head = html! {
        // Without JavaScript the page still updates, just less smoothly.
        noscript { meta http-equiv="refresh" content="5"; }
    };
    console_page(
        "Fleet",
        signed_in,
        head,
        html! {
            h1 { "Fleet" }
            (nodes_panel(view))
        },
    )
}

/// The summary, filter and node table; also the htmx fragment that
/// replaces itself (with the same filter).
pub fn nodes_panel(view: &FleetView<'_>) -> Markup {
    let f = view.filter;
    let (shown, matching) = (&view.shown, view.matching);
    let pages = matching.div_ceil(NODES_PER_PAGE).max(1);
    let link = |filter: &FleetFilter| with_query("/", &filter.query());
    html! {
        section #nodes hx-get=(with_query(NODES_FRAGMENT_PATH, &f.query())) hx-trigger={ "every " (REFRESH_EVERY) } hx-swap="outerHTML" {
            nav.summary aria-label="Nodes by state" {
                a.count href=(link(&f.with(""))) aria-current=[f.state.is_empty().then_some("true")] {
                    b #count-total { (view.total) } span { "nodes" }
                }
                @for (state, count) in NODE_STATES.iter().zip(view.state_counts) {
                    a.count href=(link(&f.with(state))) aria-current=[(f.state == *state).then_some("true")] {
                        b id={ "count-" (state) } { (count) } span { (state) }
                    }
                }
            }
            form.filter method="get" action="/" role="search" {
                @if !f.state.is_empty() { input type="hidden" name="state" value=(f.state); }
                label { span.sr-only { "Find a node" } input type="search" name="q" value=(f.q) placeholder="Find a node…"; }
                button.secondary type="submit" { "Find" }
            }
            @if view.total == 0 {
                p.empty { "No appliances have connected yet. Start one with "
                    code { "rakkr-agent run --config agent.toml" } "." }
            } @else if shown.is_empty() {
                p.empty { "No node matches." }
            } @else {
                table.nodes {
                    thead { tr { th { "Node" } th { "State" } th { "Agent" } th { "Levels (dBFS)" } th { "Last seen" } } }
                    tbody {
                        @for node in shown { (node_row(view, node)) }
                    }
                }
                @if pages > 1 {
                    nav.pages aria-label="Pages" {
                        @if f.page > 0 {
                            a href=(link(&FleetFilter { page: f.page - 1, ..f.clone() })) { "← Previous" }
                        }
                        span.muted { "Page " (f.page + 1) " of " (pages) " (" (matching) " nodes)" }
                        @if f.page + 1 < pages {
                            a href=(link(&FleetFilter { page: f.page + 1, ..f.clone() })) { "Next →" }
                        }
                    }
                }
            }
        }
    }
}

/// An update step for people: `installing 1.4.0: 42 %`.
pub fn update_step(u: &rakkr_protocol::update::UpdateReport) -> String {
    let mut text = format!("{} {}", u.phase.as_str().replace('_', " "), u.version);
    if u.total_bytes > 0 && u.phase.in_progress() && u.done_bytes < u.total_bytes {
        // Numbers from the node: computed wide, so no value overflows.
        let percent = u128::from(u.done_bytes) * 100 / u128::from(u.total_bytes);
        text.push_str(&format!(": {percent} %"));
    }
    if !u.detail.is_empty() {
        text.push_str(&format!(" ({})", u.detail));
    }
    text
}

fn node_row(view: &FleetView<'_>, node: &LiveNode) -> Markup {
    let (now_ms, stale_after) = (view.now_ms, view.stale_after);
    let r = &node.record;
    let stale = node.meters_stale(now_ms, stale_after);
    html! {
        tr data-node=(r.id) data-presence=(r.presence.as_str()) {
            td { a.node-id href={ "/nodes/" (r.id) } { (r.id) } }
            td {
                (presence_badge(r.presence))
                @if view.busy.contains(&r.id) { " " span.badge.job.running { "recording" } }
                @if node.alerting(now_ms, stale_after) { " " span.badge.alerting { "alerting" } }
                @if let Some(u) = node.update.as_ref().filter(|u| u.phase.in_progress()) {
                    " " span.badge.updating title={ "update to " (u.version) } { "updating" }
                    div.muted { (update_step(u)) }
                }
                div.muted { "since " (ago(now_ms, r.presence_since_ms)) }
            }
            td {
                @match &r.details {
                    Some(d) => {
                        div { (d.agent_version) }
                        div.muted {
                            @match d.slot {
                                BootSlot::None => "no A/B slot",
                                slot => { "slot " (slot.as_str().to_uppercase()) },
                            }
                            " · " (d.capabilities.channels) " ch"
                        }
                    }
                    None => { span.muted { "unknown" } }
                }
            }
            td {
                @match (&node.meters, r.presence) {
                    (Some(m), Presence::Online) => {
                        (meter_bars(&m.frame.channels, stale))
                        @if stale { div.muted { "stale" } }
                    }
                    _ => { span.muted { "no live levels" } }
                }
            }
            td.muted { (ago(now_ms, r.last_seen_ms)) }
        }
    }
}

pub fn not_found(path: &str) -> Markup {
    page_with_head(
        "Not found",
        Chrome {
            area: "Fleet console",
            detail: DETAIL,
        },
        html! {},
        html! {
            h1 { "Not found" }
            p { "Nothing lives at " code { (path) } ". " a href="/" { "Back to the fleet" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rakkr_protocol::NodeId;
    use rakkr_protocol::payload::HealthCondition;
    use rakkr_store::NodeRecord;

    fn fleet(n: usize) -> Vec<LiveNode> {
        (0..n)
            .map(|i| LiveNode {
                record: NodeRecord {
                    id: NodeId::new(format!("node-{i:04}")).unwrap(),
                    presence: if i % 3 == 0 {
                        Presence::Offline
                    } else {
                        Presence::Online
                    },
                    presence_since_ms: 0,
                    first_seen_ms: 0,
                    last_seen_ms: 0,
                    details: None,
                },
                meters: None,
                raised: Vec::new(),
                update: None,
            })
            .collect()
    }

    #[test]
    fn the_fleet_table_filters_by_state_and_text_and_pages() {
        let mut nodes = fleet(250);
        nodes[7].raised.push(HealthCondition::DeviceLost);
        let step = |phase| rakkr_protocol::update::UpdateReport {
            update_id: rakkr_protocol::UpdateId::from_u128(1),
            version: "2.0.0".into(),
            phase,
            done_bytes: 0,
            total_bytes: 0,
            detail: String::new(),
        };
        nodes[20].update = Some(step(rakkr_protocol::update::UpdatePhase::Installing));
        // A finished update is not updating.
        nodes[21].update = Some(step(rakkr_protocol::update::UpdatePhase::Committed));
        let busy = [NodeId::new("node-0010").unwrap()].into_iter().collect();
        let view = |filter: &FleetFilter| -> (Vec<String>, usize) {
            let v = FleetView::build(
                |f| nodes.iter().for_each(f),
                filter,
                &busy,
                0,
                Duration::from_secs(5),
            );
            assert_eq!(v.total, 250);
            assert_eq!(v.state_counts, [166, 84, 1, 1, 1]);
            (
                v.shown.iter().map(|n| n.record.id.to_string()).collect(),
                v.matching,
            )
        };
        let (all, total) = view(&FleetFilter::default());
        assert_eq!((all.len(), total), (NODES_PER_PAGE, 250));
        let (last, _) = view(&FleetFilter {
            page: 2,
            ..Default::default()
        });
        assert_eq!(last.len(), 50);
        assert_eq!(last[0], "node-0200");
        let (offline, total) = view(&FleetFilter {
            state: "offline".into(),
            ..Default::default()
        });
        assert_eq!(total, 84);
        assert!(
            offline
                .iter()
                .all(|n| n.trim_start_matches("node-").parse::<usize>().unwrap() % 3 == 0)
        );
        assert_eq!(
            view(&FleetFilter {
                state: "recording".into(),
                ..Default::default()
            })
            .0,
            ["node-0010"]
        );
        assert_eq!(
            view(&FleetFilter {
                state: "alerting".into(),
                ..Default::default()
            })
            .0,
            ["node-0007"]
        );
        assert_eq!(
            view(&FleetFilter {
                state: "updating".into(),
                ..Default::default()
            })
            .0,
            ["node-0020"]
        );
        assert_eq!(
            view(&FleetFilter {
                q: "NODE-012".into(),
                ..Default::default()
            })
            .1,
            10,
            "case-insensitive"
        );
        let filter = FleetFilter {
            state: "online".into(),
            q: "01".into(),
            page: 1,
        };
        let again: FleetFilter = serde_urlencoded::from_str(&filter.query()).unwrap();
        assert_eq!(again, filter);
    }
}
