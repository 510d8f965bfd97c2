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
use crate::fleet::{FleetCounts, LiveNode};
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
                    @if signed_in.may(Permission::AuditRead) {
                        a href=(crate::audit_page::AUDIT_PATH) { "Audit log" }
                    }
                    @if signed_in.may(Permission::NodesManage) {
                        a href=(crate::enrollment_page::ENROLLMENT_PATH) { "Enrollment" }
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

pub struct FleetView<'a> {
    pub nodes: &'a [LiveNode],
    pub counts: FleetCounts,
    pub now_ms: u64,
    pub stale_after: Duration,
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

/// The summary and node table; also the htmx fragment that replaces itself.
pub fn nodes_panel(view: &FleetView<'_>) -> Markup {
    html! {
        section #nodes hx-get=(NODES_FRAGMENT_PATH) hx-trigger={ "every " (REFRESH_EVERY) } hx-swap="outerHTML" {
            div.summary {
                div.count { b #count-total { (view.counts.total) } span { "nodes" } }
                div.count { b #count-online { (view.counts.online) } span { "online" } }
                div.count { b #count-offline { (view.counts.offline) } span { "offline" } }
            }
            @if view.nodes.is_empty() {
                p.empty { "No appliances have connected yet. Start one with "
                    code { "rakkr-agent run --config agent.toml" } "." }
            } @else {
                table.nodes {
                    thead { tr { th { "Node" } th { "State" } th { "Agent" } th { "Levels (dBFS)" } th { "Last seen" } } }
                    tbody {
                        @for node in view.nodes { (node_row(node, view.now_ms, view.stale_after)) }
                    }
                }
            }
        }
    }
}

fn node_row(node: &LiveNode, now_ms: u64, stale_after: Duration) -> Markup {
    let r = &node.record;
    let stale = node.meters_stale(now_ms, stale_after);
    html! {
        tr data-node=(r.id) data-presence=(r.presence.as_str()) {
            td { a.node-id href={ "/nodes/" (r.id) } { (r.id) } }
            td {
                (presence_badge(r.presence))
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
