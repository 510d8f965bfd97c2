//! Benchmark: console pages of a large fleet under load.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! RAKKR_BIN_DIR=target/release target/release/console-load [NODES] [AUDIT_RECORDS] [RUNS] [SECONDS]
//! ```
//!
//! Builds a data directory with NODES nodes (announced, with details) and
//! AUDIT_RECORDS audit records (50 actors, 6 % denied, one a second), starts
//! `rakkr-server` on it, signs in an owner, and loads each page with `wrk`
//! (2 threads, 8 connections, the session cookie) for SECONDS, RUNS times.
//! Prints wrk's p50/p99 per run and the medians. Pages:
//! - the fleet dashboard (first page of 100 of NODES),
//! - a node page, of a node with a history: 500 finished takes and 10,000
//!   health events (the most a node keeps), raised and cleared in turn on
//!   eight channels, so it has open and resolved health issues,
//! - the audit log filtered by actor and outcome (the actor index),
//! - the audit log filtered by outcome only (a scan, newest first),
//! - the audit log searched for text that matches nothing (the worst case:
//!   one page examines its bound of 20,000 records).
//!
//! Needs `wrk` (Debian package `wrk`).

use std::process::Command;

use anyhow::{Context, Result, bail};
use rakkr_hil_tests::bench::median;
use rakkr_hil_tests::*;
use rakkr_protocol::NodeId;
use rakkr_protocol::payload::{BootSlot, Capabilities};
use rakkr_protocol::state::Presence;
use rakkr_store::{AuditEntry, NodeDetails, NodeStatusUpdate, RedbStore, Store};

fn populate(data: &std::path::Path, nodes: usize, records: u64) -> Result<()> {
    std::fs::create_dir_all(data)?;
    let store = RedbStore::open(&data.join("rakkr.redb"))?;
    let details = NodeDetails {
        agent_version: "0.1.0".into(),
        slot: BootSlot::A,
        capabilities: Capabilities {
            sources: vec!["alsa".into()],
            channels: 8,
            max_jobs: 2,
            ..rakkr_hil_tests::synthetic_capabilities()
        },
        realtime: Default::default(),
    };
    let updates: Vec<NodeStatusUpdate> = (0..nodes)
        .map(|i| NodeStatusUpdate {
            node: NodeId::new(format!("node-{i:05}")).expect("valid"),
            presence: Presence::Online,
            details: Some(details.clone()),
            received_ms: 1_790_000_000_000,
        })
        .collect();
    for chunk in updates.chunks(1000) {
        store.record_node_statuses(chunk)?;
    }
    history(
        &store,
        &NodeId::new(format!("node-{:05}", nodes * 42 / 100))?,
        500,
        10_000,
    )?;
    let start_ms = 1_790_000_000_000u64;
    let entry = |i: u64| {
        let denied = i.is_multiple_of(17);
        AuditEntry {
            at_ms: start_ms + i * 1000,
            actor: format!("user:op-{:02}", i % 50),
            permission: Some("jobs.manage".into()),
            action: "POST /api/v1/jobs/{id}/stop".into(),
            target: Some(format!("/api/v1/jobs/0192e4a0-{i:012}/stop")),
            outcome: if denied { "denied" } else { "allowed" }.into(),
            reason: denied.then(|| "your role (viewer) does not allow jobs.manage".into()),
            before: None,
            after: (!denied).then(|| serde_json::json!({ "state": "stop_requested" })),
        }
    };
    let mut next = 1;
    while next <= records {
        let end = (next + 50_000).min(records + 1);
        store.append_audit_many((next..end).map(entry).collect())?;
        next = end;
    }
    Ok(())
}

/// A node's past: `takes` finished recordings (30 s, 2 channels, a minute
/// apart) and `events` health events, raised and cleared in turn.
fn history(store: &RedbStore, node: &NodeId, takes: u64, events: u64) -> Result<()> {
    use rakkr_protocol::MessageId;
    use rakkr_protocol::job::{JobSpec, JobUpdate, RecordedFile, RecordingReport};
    use rakkr_protocol::payload::{HealthChange, HealthCondition, HealthEvent, Severity};
    use rakkr_protocol::state::JobState;
    let start_ms = 1_790_000_000_000u64;
    for i in 0..takes {
        let at = start_ms + i * 60_000;
        let spec = JobSpec {
            duration_s: Some(30),
            ..serde_json::from_str("{}")?
        };
        store.enqueue_job(
            rakkr_store::NewJob::unscheduled(node.clone(), spec, vec![0, 1]),
            at,
        )?;
        let job = store
            .claim_jobs(node, 1, &[], at, 60_000)?
            .pop()
            .context("the queued take")?;
        let update = |state, recording| JobUpdate {
            job_id: job.id,
            lease_id: job.lease.map_or(0, |l| l.id),
            state,
            at_ms: at,
            detail: String::new(),
            recording,
            autonomous: None,
        };
        store.apply_job_update(
            node,
            MessageId::new(at),
            &update(JobState::Running, None),
            at,
        )?;
        let report = RecordingReport {
            files: vec![RecordedFile {
                name: format!("{}.flac", job.id),
                frames: 30 * 48_000,
                bytes: 4_000_000,
            }],
            file_count: 1,
            frames: 30 * 48_000,
            sample_rate: 48_000,
            channels: 2,
            bits: 24,
            start_unix_ms: at,
            gaps: 0,
            recovered: false,
        };
        store.apply_job_update(
            node,
            MessageId::new(at + 30_000),
            &update(JobState::Completed, Some(report)),
            at + 30_000,
        )?;
    }
    let conditions = [
        HealthCondition::Silence,
        HealthCondition::Clipping,
        HealthCondition::LowSignal,
        HealthCondition::Flatline,
    ];
    let records: Vec<rakkr_store::HealthEventRecord> = (0..events)
        .map(|i| {
            let at_ms = start_ms + i * 5_000;
            // Pairs on one subject: raised, then cleared; the last pairs stay open.
            let change = if i % 2 == 0 || i + 8 >= events {
                HealthChange::Raised
            } else {
                HealthChange::Cleared
            };
            rakkr_store::HealthEventRecord {
                node: node.clone(),
                msg_id: MessageId::new(at_ms),
                event: HealthEvent {
                    condition: conditions[(i / 2 % 4) as usize],
                    change,
                    severity: match change {
                        HealthChange::Raised => Severity::Warning,
                        HealthChange::Cleared => Severity::Info,
                    },
                    at_ms,
                    detail: format!("channel {} for a while", i / 8 % 8 + 1),
                    subject: format!("ch{}", i / 8 % 8 + 1),
                },
                received_ms: at_ms,
            }
        })
        .collect();
    for chunk in records.chunks(1000) {
        store.record_health_events(chunk)?;
    }
    Ok(())
}

/// wrk's p50 and p99 in ms, and requests per second.
fn wrk(url: &str, cookie: &str, seconds: u64) -> Result<(f64, f64, f64)> {
    let out = Command::new("wrk")
        .args(["-t2", "-c8", &format!("-d{seconds}s"), "--latency", "-H"])
        .arg(format!("Cookie: {cookie}"))
        .arg(url)
        .output()
        .context("wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.contains("Non-2xx") {
        bail!("{url} answered errors under load:\n{text}");
    }
    let ms = |label: &str| -> Result<f64> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .with_context(|| format!("no {label} in wrk's output:\n{text}"))?;
        let value = line.split_whitespace().nth(1).unwrap_or_default();
        let (number, unit) = value.split_at(
            value
                .find(|c: char| c.is_alphabetic())
                .unwrap_or(value.len()),
        );
        let n: f64 = number.parse()?;
        Ok(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            other => bail!("unit {other:?}"),
        })
    };
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    Ok((ms("50%")?, ms("99%")?, rps))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (nodes, records, runs, seconds) =
        (arg(0, 10_000), arg(1, 1_000_000), arg(2, 3), arg(3, 15));
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let data = work.join("data");
    let started = std::time::Instant::now();
    populate(&data, nodes as usize, records)?;
    println!(
        "populated {nodes} nodes and {records} audit records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let server = Server::start(work, &data)?;
    let owner = server.operator("bench", "owner")?;
    let cookie = owner.cookie().context("no session")?.to_owned();
    let pages = [
        ("dashboard", "/".to_owned()),
        ("node page", format!("/nodes/node-{:05}", nodes * 42 / 100)),
        (
            "audit: actor + outcome",
            "/audit?actor=user%3Aop-07&outcome=denied".to_owned(),
        ),
        ("audit: outcome", "/audit?outcome=denied".to_owned()),
        ("audit: text, no match", "/audit?q=no-such-text".to_owned()),
    ];
    for (name, path) in &pages {
        let res = http_client()?
            .get(server.url(path))
            .header("Cookie", &cookie)
            .send()?;
        let (code, body) = (res.status().as_u16(), res.text()?);
        if code != 200 {
            bail!("{name}: {path} answered {code}");
        }
        println!("{name}: {path} ({} KiB)", body.len() / 1024);
    }
    println!("page                      run   p50 ms   p99 ms    req/s");
    for (name, path) in &pages {
        let (mut p50s, mut p99s, mut rpss) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=runs {
            let (p50, p99, rps) = wrk(&server.url(path), &cookie, seconds)?;
            println!("{name:<25} {run:>3} {p50:>8.2} {p99:>8.2} {rps:>8.0}");
            p50s.push(p50);
            p99s.push(p99);
            rpss.push(rps);
        }
        println!(
            "{name:<25} med {:>8.2} {:>8.2} {:>8.0}",
            median(p50s),
            median(p99s),
            median(rpss)
        );
    }
    let rss = proc_status_kib(server.proc.pid(), "VmRSS:")?;
    println!("server VmRSS at the end: {} MiB", rss / 1024);
    Ok(())
}
