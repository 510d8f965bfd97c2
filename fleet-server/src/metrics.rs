//! `GET /metrics`: the server's counters in the Prometheus text format
//! (version 0.0.4). Counters only grow from the server's start; gauges are
//! read when scraped.
//!
//! Per node (online nodes with a fresh telemetry frame only): meter levels
//! per channel, and the node's own counters (xruns, dropped frames, device
//! returns, outbox bytes), which restart from zero with its agent.
//! Per route: HTTP requests by status class and a latency histogram; per
//! job report kind: the job desk's latency histogram. Label sets are bounded
//! by the route table, the report kinds and the fleet's node limit.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::fleet::LiveFleet;
use crate::gate::GateStats;
use crate::ingest::IngestStats;
use crate::jobs::JobStats;

/// Everything `/metrics` reports.
pub struct Sources<'a> {
    pub fleet: &'a LiveFleet,
    pub ingest: &'a IngestStats,
    pub jobs: &'a JobStats,
    pub schedules: &'a crate::schedules::ScheduleStats,
    pub gate: &'a GateStats,
    pub http: &'a HttpStats,
    /// Jobs waiting and jobs under a lease, from the store.
    pub job_gauges: Option<rakkr_store::JobGauges>,
    pub now_ms: u64,
    pub stale_after: Duration,
    pub live_streams: usize,
    pub uploads: &'a crate::uploads::UploadStats,
}

/// Upper bounds of the latency histograms' buckets, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds (seconds) for work done in memory, per message: 10 µs to 100 ms.
pub const FINE_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1,
];

/// A latency histogram with fixed bounds, [`BUCKETS`] unless made
/// [`Histogram::fine`] (cumulative when rendered).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64; BUCKETS.len()],
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: &BUCKETS,
            counts: Default::default(),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// One with [`FINE_BUCKETS`].
    pub fn fine() -> Histogram {
        Histogram {
            bounds: &FINE_BUCKETS,
            ..Histogram::default()
        }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, le) in self
            .bounds
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".to_owned()])
            .enumerate()
        {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// HTTP requests per (route, method): by status class, and their latency.
#[derive(Debug, Default)]
pub struct HttpStats {
    routes: Mutex<BTreeMap<(String, String), RouteStats>>,
}

#[derive(Debug, Default)]
struct RouteStats {
    /// 1xx … 5xx
    by_class: [u64; 5],
    latency: Histogram,
}

impl HttpStats {
    /// Count one request to `route` (the route table's pattern, or
    /// `unmatched`: the label set stays bounded).
    pub fn observe(&self, route: &str, method: &str, status: u16, took: Duration) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let stats = routes
            .entry((route.to_owned(), method.to_owned()))
            .or_default();
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        stats.by_class[class] += 1;
        stats.latency.observe(took);
    }

    fn render(&self, out: &mut String) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP rakkr_http_requests_total HTTP requests answered, by route, method and status class.\n# TYPE rakkr_http_requests_total counter"
        );
        for ((route, method), s) in routes.iter() {
            for (i, n) in s.by_class.iter().enumerate().filter(|(_, n)| **n > 0) {
                let _ = writeln!(
                    out,
                    "rakkr_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP rakkr_http_request_duration_seconds Time to answer (to the response head), by route.\n# TYPE rakkr_http_request_duration_seconds histogram"
        );
        for ((route, method), s) in routes.iter() {
            s.latency.render(
                out,
                "rakkr_http_request_duration_seconds",
                &format!("route=\"{route}\",method=\"{method}\""),
            );
        }
    }
}

/// A label value as the text format needs it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A series: name, help, and how to read its value from `T`.
type Series<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// Every node's presence; meter levels and node counters of online nodes
/// with fresh frames.
fn node_series(out: &mut String, s: &Sources<'_>) {
    let all = s.fleet.snapshot();
    gauge_header(
        out,
        "rakkr_node_online",
        "1 while the node is connected, 0 while it is offline.",
        "gauge",
    );
    for n in &all {
        let online = u8::from(n.record.presence == rakkr_protocol::state::Presence::Online);
        let _ = writeln!(
            out,
            "rakkr_node_online{{node=\"{}\"}} {online}",
            label(n.record.id.as_str())
        );
    }
    let nodes: Vec<_> = all
        .into_iter()
        .filter(|n| !n.meters_stale(s.now_ms, s.stale_after))
        .collect();
    let levels: [Series<rakkr_protocol::payload::ChannelMeter, f32>; 2] = [
        (
            "rakkr_meter_peak_dbfs",
            "Peak level of the last telemetry window (−200: silence).",
            |c| c.peak_dbfs,
        ),
        (
            "rakkr_meter_rms_dbfs",
            "RMS level of the last telemetry window (−200: silence).",
            |c| c.rms_dbfs,
        ),
    ];
    for (name, help, value) in levels {
        gauge_header(out, name, help, "gauge");
        for n in &nodes {
            let Some(m) = &n.meters else { continue };
            for (i, c) in m.frame.channels.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{}\",channel=\"{}\"}} {}",
                    label(n.record.id.as_str()),
                    i + 1,
                    value(c)
                );
            }
        }
    }
    gauge_header(
        out,
        "rakkr_meter_clipped_samples",
        "Samples at full scale in the last telemetry window.",
        "gauge",
    );
    for n in &nodes {
        let Some(m) = &n.meters else { continue };
        for (i, c) in m.frame.channels.iter().enumerate() {
            let _ = writeln!(
                out,
                "rakkr_meter_clipped_samples{{node=\"{}\",channel=\"{}\"}} {}",
                label(n.record.id.as_str()),
                i + 1,
                c.clipped
            );
        }
    }
    let counters: [Series<rakkr_protocol::payload::NodeCounters, u64>; 6] = [
        (
            "rakkr_node_xruns_total",
            "Capture overruns on the node since its agent started (each a gap).",
            |c| c.xruns,
        ),
        (
            "rakkr_node_frames_dropped_total",
            "Frames the node lost between capture and processing.",
            |c| c.frames_dropped,
        ),
        (
            "rakkr_node_device_returns_total",
            "Times the node's capture device was lost and came back.",
            |c| c.device_returns,
        ),
        (
            "rakkr_node_outbox_bytes",
            "Bytes in the node's outbox waiting for the server's acknowledgement.",
            |c| c.outbox_bytes,
        ),
        (
            "rakkr_node_upload_queue_files",
            "Recording files on the node waiting for the server's confirmation.",
            |c| c.upload_files,
        ),
        (
            "rakkr_node_upload_queue_bytes",
            "Bytes of the recording files on the node waiting for the server's confirmation.",
            |c| c.upload_bytes,
        ),
    ];
    for (name, help, value) in counters {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        gauge_header(out, name, help, kind);
        for n in &nodes {
            let Some(c) = n.meters.as_ref().and_then(|m| m.frame.counters) else {
                continue;
            };
            let _ = writeln!(
                out,
                "{name}{{node=\"{}\"}} {}",
                label(n.record.id.as_str()),
                value(&c)
            );
        }
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
}

pub fn render(s: &Sources<'_>) -> String {
    let mut out = String::with_capacity(4096);
    node_series(&mut out, s);
    s.http.render(&mut out);
    if let Some(g) = s.job_gauges {
        gauge_header(
            &mut out,
            "rakkr_jobs",
            "Jobs in each state that is not final: waiting for their node, claimed, recording, told to stop.",
            "gauge",
        );
        for (state, n) in [
            ("queued", g.queued),
            ("leased", g.leased),
            ("running", g.running),
            ("stop_requested", g.stop_requested),
        ] {
            let _ = writeln!(out, "rakkr_jobs{{state=\"{state}\"}} {n}");
        }
    }
    gauge_header(
        &mut out,
        "rakkr_live_meter_streams",
        "Live-meter streams open (node pages being watched).",
        "gauge",
    );
    let _ = writeln!(out, "rakkr_live_meter_streams {}", s.live_streams);
    gauge_header(
        &mut out,
        "rakkr_schedule_occurrences_deferred",
        "Scheduled occurrences due but waiting to start (channels busy, node unable).",
        "gauge",
    );
    let _ = writeln!(
        out,
        "rakkr_schedule_occurrences_deferred {}",
        s.schedules.deferred.load(Ordering::Relaxed)
    );
    for (name, help, v) in [
        (
            "rakkr_server_copies_bytes",
            "Bytes the server's copies of recordings take (after the last retention pass).",
            &s.uploads.held_bytes,
        ),
        (
            "rakkr_server_copies_over_cap_bytes",
            "Bytes over [uploads] cache_max_mb held by files not yet delivered everywhere (never deleted).",
            &s.uploads.over_cap_bytes,
        ),
    ] {
        gauge_header(&mut out, name, help, "gauge");
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
    gauge_header(
        &mut out,
        "rakkr_job_desk_seconds",
        "Time the job desk took per node report, by kind.",
        "histogram",
    );
    for (kind, h) in s.jobs.desk_latency() {
        h.render(
            &mut out,
            "rakkr_job_desk_seconds",
            &format!("report=\"{kind}\""),
        );
    }
    gauge_header(
        &mut out,
        "rakkr_mqtt_message_seconds",
        "Time the server's link took to decode and apply one node message, by channel.",
        "histogram",
    );
    for (channel, h) in s.ingest.message_latency() {
        h.render(
            &mut out,
            "rakkr_mqtt_message_seconds",
            &format!("channel=\"{channel}\""),
        );
    }
    gauge_header(
        &mut out,
        "rakkr_health_events_persist_seconds",
        "Time from taking a batch of health events to their being stored and acknowledged to their nodes.",
        "histogram",
    );
    s.ingest
        .events_persist_latency
        .render(&mut out, "rakkr_health_events_persist_seconds", "");
    gauge_header(
        &mut out,
        "rakkr_health_events_by_condition_total",
        "Health events received, by condition and change.",
        "counter",
    );
    for ((condition, change), n) in s.ingest.health_by_condition() {
        let _ = writeln!(
            out,
            "rakkr_health_events_by_condition_total{{condition=\"{condition}\",change=\"{change}\"}} {n}"
        );
    }
    let counts = s.fleet.counts();
    let _ = writeln!(
        out,
        "# HELP rakkr_nodes Nodes the server knows, by presence.\n# TYPE rakkr_nodes gauge"
    );
    let _ = writeln!(out, "rakkr_nodes{{presence=\"online\"}} {}", counts.online);
    let _ = writeln!(
        out,
        "rakkr_nodes{{presence=\"offline\"}} {}",
        counts.offline
    );
    let _ = writeln!(
        out,
        "# HELP rakkr_nodes_updating Nodes whose latest A/B update step is not final.\n\
         # TYPE rakkr_nodes_updating gauge\nrakkr_nodes_updating {}",
        counts.updating
    );
    let i = s.ingest;
    for (name, help, v) in [
        (
            "rakkr_mqtt_statuses_total",
            "Node status messages applied.",
            &i.statuses,
        ),
        (
            "rakkr_mqtt_meter_frames_total",
            "Meter frames applied.",
            &i.meter_frames,
        ),
        (
            "rakkr_mqtt_live_meter_frames_total",
            "Live meter frames handed to someone watching a node page.",
            &i.live_frames,
        ),
        (
            "rakkr_mqtt_health_events_total",
            "Health events queued for storing.",
            &i.health_events,
        ),
        (
            "rakkr_mqtt_health_events_deferred_total",
            "Health events left unacknowledged (queue full).",
            &i.health_events_deferred,
        ),
        (
            "rakkr_mqtt_job_reports_total",
            "Job reports queued for the job desk.",
            &i.job_reports,
        ),
        (
            "rakkr_mqtt_job_reports_deferred_total",
            "Job reports dropped (desk queue full).",
            &i.job_reports_deferred,
        ),
        (
            "rakkr_mqtt_bad_topics_total",
            "Messages on topics outside the tree.",
            &i.bad_topics,
        ),
        (
            "rakkr_mqtt_bad_payloads_total",
            "Messages that did not decode.",
            &i.bad_payloads,
        ),
        (
            "rakkr_mqtt_refused_total",
            "Messages refused by the live fleet (limits, unknown node).",
            &i.refused,
        ),
        (
            "rakkr_store_errors_total",
            "Failed store transactions of the ingest path.",
            &i.store_errors,
        ),
    ] {
        counter(&mut out, name, help, v);
    }
    let j = s.jobs;
    for (name, help, v) in [
        ("rakkr_job_claims_total", "Claims from nodes.", &j.claims),
        (
            "rakkr_job_offers_total",
            "Jobs offered to nodes.",
            &j.offers,
        ),
        (
            "rakkr_job_heartbeats_total",
            "Lease renewals asked for.",
            &j.heartbeats,
        ),
        (
            "rakkr_job_updates_total",
            "Job updates from nodes.",
            &j.updates,
        ),
        (
            "rakkr_job_duplicates_total",
            "Job updates delivered again and applied once.",
            &j.duplicates,
        ),
        (
            "rakkr_job_refused_total",
            "Job reports refused (stale lease, wrong node, illegal transition).",
            &j.refused,
        ),
        (
            "rakkr_jobs_lost_total",
            "Jobs whose lease expired.",
            &j.lost,
        ),
        (
            "rakkr_takes_deleted_on_nodes_total",
            "Takes of deleted recordings that nodes reported deleted as ordered.",
            &j.takes_deleted,
        ),
        (
            "rakkr_job_dropped_total",
            "Job reports or commands dropped (queue full).",
            &j.dropped,
        ),
        (
            "rakkr_job_store_errors_total",
            "Failed store transactions of the job desk.",
            &j.store_errors,
        ),
        (
            "rakkr_schedule_occurrences_started_total",
            "Jobs the schedule runner started for due occurrences.",
            &s.schedules.started,
        ),
        (
            "rakkr_schedule_occurrences_missed_total",
            "Scheduled occurrences whose window closed before they could start.",
            &s.schedules.missed,
        ),
        (
            "rakkr_schedule_store_errors_total",
            "Failed ticks of the schedule runner (store errors).",
            &s.schedules.store_errors,
        ),
        (
            "rakkr_upload_bytes_received_total",
            "Bytes of recording uploads received, checked and made durable.",
            &s.uploads.bytes_received,
        ),
        (
            "rakkr_upload_files_confirmed_total",
            "Recording files received whole, verified and confirmed to their node.",
            &s.uploads.files_confirmed,
        ),
        (
            "rakkr_upload_files_verified_on_arrival_total",
            "Confirmed files whose hash and decode ran while they arrived (not after).",
            &s.uploads.verified_on_arrival,
        ),
        (
            "rakkr_delivery_early_copies_started_total",
            "S3 copies started while their file still arrived.",
            &s.uploads.early_copies_started,
        ),
        (
            "rakkr_delivery_early_copies_delivered_total",
            "Deliveries completed by a copy that started while the file arrived.",
            &s.uploads.early_copies_delivered,
        ),
        (
            "rakkr_upload_refused_total",
            "Upload requests refused (bad name, another node's job, too large, checksum).",
            &s.uploads.refused,
        ),
        (
            "rakkr_server_copies_removed_total",
            "Server copies of recordings deleted by retention (every destination held them).",
            &s.uploads.removed_files,
        ),
        (
            "rakkr_server_copies_removed_bytes_total",
            "Bytes of server copies deleted by retention.",
            &s.uploads.removed_bytes,
        ),
    ] {
        counter(&mut out, name, help, v);
    }
    let g = s.gate;
    for (name, help, v) in [
        (
            "rakkr_gate_connections_total",
            "Connections accepted by the MQTT gate.",
            &g.connections,
        ),
        (
            "rakkr_gate_refused_logins_total",
            "Logins refused (credential, client id, Last Will).",
            &g.refused_logins,
        ),
        (
            "rakkr_gate_refused_publishes_total",
            "Connections closed for a PUBLISH outside the client's rights.",
            &g.refused_publishes,
        ),
        (
            "rakkr_gate_refused_subscribes_total",
            "Connections closed for a SUBSCRIBE outside the client's rights.",
            &g.refused_subscribes,
        ),
        (
            "rakkr_gate_protocol_errors_total",
            "Connections closed for silence, bad or oversized packets.",
            &g.protocol_errors,
        ),
        (
            "rakkr_gate_ended_total",
            "Connections ended by a newer one of the same node or a revocation.",
            &g.ended,
        ),
    ] {
        counter(&mut out, name, help, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rakkr_protocol::NodeId;
    use rakkr_protocol::payload::{
        BootSlot, Capabilities, ChannelMeter, MeterFrame, NodeCounters, NodeStatus,
    };

    fn sources_with_a_node() -> (LiveFleet, IngestStats, JobStats, GateStats, HttpStats) {
        let (fleet, _) = LiveFleet::from_records(vec![], 10, 0);
        let node = NodeId::new("stage-left").unwrap();
        let online = NodeStatus::Online {
            agent_version: "1".into(),
            slot: BootSlot::None,
            capabilities: Capabilities {
                sources: vec![],
                channels: 2,
                sample_rates: vec![],
                codecs: vec![],
                max_jobs: 0,
                devices: Vec::new(),
            },
            realtime: Default::default(),
        };
        fleet.apply_status(&node, &online, 1_000).unwrap();
        let channel = |peak, rms| ChannelMeter {
            peak_dbfs: peak,
            rms_dbfs: rms,
            clipped: 3,
            ..Default::default()
        };
        let frame = MeterFrame {
            captured_at_ms: 1_000,
            window_ms: 1000,
            sample_rate: 48_000,
            channels: vec![channel(-6.0, -12.5), channel(-200.0, -200.0)],
            counters: Some(NodeCounters {
                xruns: 4,
                frames_dropped: 0,
                device_returns: 1,
                outbox_bytes: 2048,
                upload_files: 3,
                upload_bytes: 123_456,
            }),
        };
        fleet.apply_meters(&node, frame, 1_000).unwrap();
        let ingest = IngestStats::default();
        ingest.meter_frames.store(42, Ordering::Relaxed);
        ingest.observe_message(
            rakkr_protocol::topic::NodeChannel::Meters,
            Duration::from_micros(30),
        );
        let http = HttpStats::default();
        http.observe("/api/v1/jobs", "POST", 201, Duration::from_millis(3));
        http.observe("/api/v1/jobs", "POST", 409, Duration::from_millis(700));
        (
            fleet,
            ingest,
            JobStats::default(),
            GateStats::default(),
            http,
        )
    }

    /// The exposition of [`sources_with_a_node`] at `now_ms`.
    fn exposition(
        now_ms: u64,
        job_gauges: Option<rakkr_store::JobGauges>,
        live_streams: usize,
    ) -> String {
        let (fleet, ingest, jobs, gate, http) = sources_with_a_node();
        let schedules = crate::schedules::ScheduleStats::default();
        schedules.missed.store(1, Ordering::Relaxed);
        render(&Sources {
            fleet: &fleet,
            ingest: &ingest,
            jobs: &jobs,
            schedules: &schedules,
            gate: &gate,
            http: &http,
            job_gauges,
            now_ms,
            stale_after: Duration::from_secs(5),
            live_streams,
            uploads: &Default::default(),
        })
    }

    #[test]
    fn the_exposition_parses_and_carries_levels_counters_and_latencies() {
        let text = exposition(
            1_500,
            Some(rakkr_store::JobGauges {
                queued: 2,
                leased: 5,
                running: 3,
                stop_requested: 1,
            }),
            1,
        );
        // A Prometheus text-format parser reads every line.
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
            let sample = scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
                })
                .unwrap_or_else(|| panic!("no {name} {labels:?}"));
            match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            }
        };
        assert_eq!(value("rakkr_mqtt_meter_frames_total", &[]), 42.0);
        assert_eq!(value("rakkr_nodes", &[("presence", "online")]), 1.0);
        assert_eq!(value("rakkr_nodes_updating", &[]), 0.0);
        assert_eq!(value("rakkr_node_online", &[("node", "stage-left")]), 1.0);
        assert_eq!(
            value(
                "rakkr_meter_peak_dbfs",
                &[("node", "stage-left"), ("channel", "1")]
            ),
            -6.0
        );
        assert_eq!(
            value(
                "rakkr_meter_rms_dbfs",
                &[("node", "stage-left"), ("channel", "2")]
            ),
            -200.0
        );
        assert_eq!(
            value("rakkr_meter_clipped_samples", &[("channel", "1")]),
            3.0
        );
        assert_eq!(
            value("rakkr_node_xruns_total", &[("node", "stage-left")]),
            4.0
        );
        assert_eq!(
            value("rakkr_node_outbox_bytes", &[("node", "stage-left")]),
            2048.0
        );
        assert_eq!(
            value("rakkr_node_upload_queue_files", &[("node", "stage-left")]),
            3.0
        );
        assert_eq!(
            value("rakkr_node_upload_queue_bytes", &[("node", "stage-left")]),
            123_456.0
        );
        assert_eq!(value("rakkr_jobs", &[("state", "leased")]), 5.0);
        assert_eq!(value("rakkr_jobs", &[("state", "running")]), 3.0);
        assert_eq!(value("rakkr_jobs", &[("state", "stop_requested")]), 1.0);
        assert_eq!(value("rakkr_live_meter_streams", &[]), 1.0);
        assert_eq!(
            value(
                "rakkr_http_requests_total",
                &[("route", "/api/v1/jobs"), ("status", "4xx")]
            ),
            1.0
        );
        let latency = scrape
            .samples
            .iter()
            .find(|s| s.metric == "rakkr_http_request_duration_seconds")
            .expect("the latency histogram");
        match &latency.value {
            prometheus_parse::Value::Histogram(buckets) => {
                let at = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
                assert_eq!(at(0.005), 1.0, "3 ms is under 5 ms");
                assert_eq!(at(0.5), 1.0);
                assert_eq!(at(1.0), 2.0, "700 ms is under 1 s");
            }
            other => panic!("not a histogram: {other:?}"),
        }
        // Messages are timed in microseconds, per channel.
        let meters = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "rakkr_mqtt_message_seconds"
                    && s.labels.get("channel") == Some("meters")
            })
            .expect("the meters' latency");
        match &meters.value {
            prometheus_parse::Value::Histogram(buckets) => {
                let at = |le: f64| buckets.iter().find(|b| b.less_than == le).unwrap().count;
                assert_eq!((at(0.000_025), at(0.000_05)), (0.0, 1.0), "30 µs");
            }
            other => panic!("not a histogram: {other:?}"),
        }
        assert!(text.contains("rakkr_mqtt_message_seconds_count{channel=\"status\"} 0\n"));
        assert!(text.contains("rakkr_health_events_persist_seconds_count 0\n"));
        // Every sample has HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                })
                .unwrap_or(name);
            assert!(text.contains(&format!("# HELP {family} ")), "{line}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }

    #[test]
    fn stale_nodes_export_no_levels() {
        let text = exposition(60_000, None, 0);
        assert!(!text.contains("rakkr_meter_peak_dbfs{"), "{text}");
        assert!(!text.contains("rakkr_node_xruns_total{"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// Metric names (`rakkr_…`) in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("rakkr_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            out.push(name);
        }
        out
    }

    #[test]
    fn alerts_and_dashboard_use_exported_metrics() {
        let text = exposition(1_500, Some(rakkr_store::JobGauges::default()), 0);
        let exported: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let known = |name: &str| {
            exported.contains(name)
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s).is_some_and(|f| exported.contains(f)))
        };
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability");
        let rules = std::fs::read_to_string(format!("{dir}/prometheus-alerts.yml")).unwrap();
        let exprs: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .collect();
        assert!(exprs.len() >= 10, "{} rules", exprs.len());
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{dir}/grafana-dashboard.json")).unwrap(),
        )
        .expect("the dashboard is JSON");
        let mut panel_exprs = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                panel_exprs.push(target["expr"].as_str().unwrap().to_owned());
            }
        }
        panel_exprs.push(
            dashboard["templating"]["list"][0]["query"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        let mut checked = 0;
        for expr in exprs
            .iter()
            .copied()
            .chain(panel_exprs.iter().map(String::as_str))
        {
            for name in metric_names(expr) {
                assert!(
                    known(&name),
                    "{name} (in `{expr}`) is not exported by /metrics"
                );
                checked += 1;
            }
        }
        assert!(checked > 30, "{checked}");
    }
}
