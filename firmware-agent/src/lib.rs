//! The Rakkr appliance agent.
//!
//! Data flow inside one agent:
//!
//! ```text
//!  CaptureSource ──(capture thread: read period, push)──▶ rtrb SPSC ring
//!                                                            │
//!                      meter thread: pop, meter, every interval
//!                                                            ▼
//!                         bounded channel of MeterFrame ──▶ fleet link (MQTT)
//!                      and for each take: map, push ──▶ rtrb ring ──▶ encoder thread ──▶ file
//! ```
//!
//! Takes start and stop while capture runs: recording jobs from the server
//! ([`jobs`]) each become a take on the running capture.
//!
//! Invariants:
//! - the capture thread never blocks on anything but the source itself: a full
//!   ring drops the period and counts it (see [`capture`]);
//! - telemetry is lossy by design (meter frames may be dropped when the link is
//!   down or slow); it never slows capture;
//! - the node is `online` on the broker exactly while its MQTT session lives: a
//!   retained status on connect, a retained Last Will for crashes, and an
//!   explicit retained `offline` on orderly shutdown (see [`link`]).

pub mod capture;
pub use rakkr_protocol::channel_map;
pub mod clock;
pub mod config;
pub mod identity;
pub mod jobs;
pub mod link;
pub mod meter;
pub mod outbox;
pub mod record;
pub mod retention;
pub mod rt;
pub mod run;
pub mod source;
pub mod take_file;
pub mod update;
pub mod upload;
pub mod upload_window;
pub mod watchdog;

pub use config::{AgentConfig, AgentSettings};
pub use run::{AgentError, run};

/// Version reported in the node's online status.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
