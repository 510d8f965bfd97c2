//! HTTP: the console, its static assets, the JSON API and health probes.
//!
//! | route              | what                                                  |
//! |--------------------|-------------------------------------------------------|
//! | `GET /`            | fleet dashboard (HTML)                                |
//! | `GET /console/nodes` | the dashboard's node panel, for htmx refreshes      |
//! | `GET /static/…`    | embedded assets under content-hashed names, immutable |
//! | `GET /api/v1/nodes`| node list (JSON)                                      |
//! | `GET /api/v1/nodes/{id}/events` | the node's last 100 health events (JSON), oldest first |
//! | `GET /healthz`     | liveness: the process serves HTTP                     |
//! | `GET /readyz`      | readiness: store readable and broker link connected   |
//!
//! Every response carries the security headers in [`security_headers`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use rakkr_mqtt::LinkState;
use rakkr_protocol::payload::{ChannelMeter, MeterFrame};
use rakkr_protocol::state::Presence;
use rakkr_store::{NodeDetails, Store};
use serde::Serialize;

use crate::clock::Clock;
use crate::console::{self, FleetView, NODES_FRAGMENT_PATH};
use crate::fleet::LiveFleet;

#[derive(Clone)]
pub struct AppState {
    pub fleet: Arc<LiveFleet>,
    pub store: Arc<dyn Store>,
    pub link: Arc<LinkState>,
    pub clock: Arc<dyn Clock>,
    pub stale_after: Duration,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route(NODES_FRAGMENT_PATH, get(nodes_fragment))
        .route("/static/{file}", get(static_asset))
        .route("/api/v1/nodes", get(api_nodes))
        .route("/api/v1/nodes/{id}/events", get(api_node_events))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// The Content-Security-Policy of every response: our own scripts and styles
/// only, no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

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
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

fn view<R>(state: &AppState, render: impl FnOnce(&FleetView<'_>) -> R) -> R {
    let nodes = state.fleet.snapshot();
    let view = FleetView {
        nodes: &nodes,
        counts: state.fleet.counts(),
        now_ms: state.clock.unix_ms(),
        stale_after: state.stale_after,
    };
    render(&view)
}

async fn dashboard(State(state): State<AppState>) -> maud::Markup {
    view(&state, console::dashboard)
}

async fn nodes_fragment(State(state): State<AppState>) -> maud::Markup {
    view(&state, console::nodes_panel)
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
#[derive(Debug, Serialize)]
pub struct NodeJson {
    pub id: String,
    pub presence: Presence,
    pub presence_since_ms: u64,
    pub last_seen_ms: u64,
    pub details: Option<NodeDetails>,
    pub meters: Option<MetersJson>,
}

#[derive(Debug, Serialize)]
pub struct MetersJson {
    pub captured_at_ms: u64,
    pub received_ms: u64,
    pub stale: bool,
    pub channels: Vec<ChannelMeter>,
}

async fn api_nodes(State(state): State<AppState>) -> Json<Vec<NodeJson>> {
    let now = state.clock.unix_ms();
    let nodes = state
        .fleet
        .snapshot()
        .into_iter()
        .map(|n| {
            let stale = n.meters_stale(now, state.stale_after);
            NodeJson {
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
        })
        .collect();
    Json(nodes)
}

/// Health events shown per node by the API.
const EVENTS_LISTED: usize = 100;

async fn api_node_events(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(node) = rakkr_protocol::NodeId::new(id) else {
        return (StatusCode::NOT_FOUND, "no such node\n").into_response();
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.health_events(&node, EVENTS_LISTED)).await {
        Ok(Ok(events)) => Json(events).into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read health events");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(Serialize)]
struct Readiness {
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
