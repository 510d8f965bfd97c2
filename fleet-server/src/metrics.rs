//! `GET /metrics`: the server's counters in the Prometheus text format
//! (version 0.0.4). Counters only grow from the server's start; gauges are
//! read when scraped. (The console issue adds meter levels, HTTP and job-state
//! metrics beside these.)

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fleet::LiveFleet;
use crate::gate::GateStats;
use crate::ingest::IngestStats;
use crate::jobs::JobStats;

/// Everything `/metrics` reports.
pub struct Sources<'a> {
    pub fleet: &'a LiveFleet,
    pub ingest: &'a IngestStats,
    pub jobs: &'a JobStats,
    pub gate: &'a GateStats,
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
}

pub fn render(s: &Sources<'_>) -> String {
    let mut out = String::with_capacity(4096);
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
            "rakkr_job_dropped_total",
            "Job reports or commands dropped (queue full).",
            &j.dropped,
        ),
        (
            "rakkr_job_store_errors_total",
            "Failed store transactions of the job desk.",
            &j.store_errors,
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

    #[test]
    fn every_sample_has_help_and_type_and_a_value() {
        let (fleet, _) = LiveFleet::from_records(vec![], 10, 0);
        let ingest = IngestStats::default();
        ingest.meter_frames.store(42, Ordering::Relaxed);
        let text = render(&Sources {
            fleet: &fleet,
            ingest: &ingest,
            jobs: &JobStats::default(),
            gate: &GateStats::default(),
        });
        assert!(text.contains("rakkr_mqtt_meter_frames_total 42\n"));
        assert!(text.contains("rakkr_nodes{presence=\"online\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            let metric = name.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {metric} ")), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
