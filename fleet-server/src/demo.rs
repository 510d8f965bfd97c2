//! `rakkr-server demo`: the server plus simulated appliances in one process.
//!
//! The appliances are real agents (`rakkr-agent`'s library) with synthetic
//! sources, each with its own MQTT connection to the embedded broker, so the
//! demo exercises the same path as a real fleet. Each records into
//! `{data_dir}/demo-recordings/{node}/`, and the demo starts one job on the
//! first appliance so a recording is running from the start. On a first
//! start it also makes two schedules, so the schedules calendar has
//! something to show.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rakkr_agent::AgentSettings;
use rakkr_agent::run::AgentHandles;
use rakkr_protocol::NodeId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::jobs::{Commands, JobRequest};

/// Names and channel counts of the simulated appliances.
pub const DEMO_NODES: [(&str, u16); 6] = [
    ("studio-a", 2),
    ("concert-hall", 8),
    ("field-unit-3", 4),
    ("chapel", 2),
    ("lecture-b12", 1),
    ("broadcast-1", 6),
];

/// `preferred` if it can be bound now, otherwise a free port on the same address.
pub fn free_or_any(preferred: SocketAddr) -> SocketAddr {
    match TcpListener::bind(preferred) {
        Ok(_) => preferred,
        Err(_) => SocketAddr::new(preferred.ip(), 0),
    }
}

/// Jobs each simulated appliance runs at once.
const DEMO_MAX_JOBS: u16 = 2;

/// The demo's own recording: an hour on the first appliance, in 5-minute files.
pub const DEMO_JOB_SECONDS: u32 = 3600;

/// Start `count` simulated appliances against `server`'s broker, recording
/// under `recordings`. Each is enrolled as a real appliance would be (a token
/// made for it, exchanged for its credential), so the demo runs through the
/// authorizing gate.
pub fn spawn_appliances(
    count: usize,
    server: &crate::RunningServer,
    recordings: &Path,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<JoinSet<()>, crate::identity::IdentityError> {
    let mqtt = (server.mqtt_host.as_str(), server.mqtt_port);
    let mut set = JoinSet::new();
    for i in 0..count {
        let (name, channels) = DEMO_NODES[i % DEMO_NODES.len()];
        let id = if i < DEMO_NODES.len() {
            name.to_owned()
        } else {
            format!("{name}-{}", i / DEMO_NODES.len() + 1)
        };
        let node = NodeId::new(id).expect("demo node names are valid");
        let token = crate::identity::create_token(
            &*server.store,
            Some(node.clone()),
            Duration::from_secs(60),
            None,
            clock.unix_ms(),
        )?;
        let credential =
            server
                .identities
                .enroll(&*server.store, &token.token, &node, clock.unix_ms())?;
        let mut settings = AgentSettings::simulated(node, mqtt.0, mqtt.1, channels);
        settings.mqtt.credentials = Some((settings.node_id.to_string(), credential));
        settings.recordings_dir = Some(recordings.join(settings.node_id.as_str()));
        settings.max_jobs = DEMO_MAX_JOBS;
        let clock = clock.clone();
        let shutdown = shutdown.clone();
        set.spawn(async move {
            let node = settings.node_id.clone();
            if let Err(e) =
                rakkr_agent::run(settings, clock, AgentHandles::default(), shutdown).await
            {
                tracing::error!(node = %node, error = %e, "simulated appliance stopped");
            }
        });
    }
    Ok(set)
}

/// The demo's schedules: (node, name, recurrence, start, end), in Berlin time.
const DEMO_SCHEDULES: [(&str, &str, &str, &str, &str); 2] = [
    (
        "lecture-b12",
        "Lectures",
        r#"{"mode": "weekly", "days": ["monday", "tuesday", "wednesday", "thursday", "friday"]}"#,
        "09:00",
        "10:30",
    ),
    (
        "concert-hall",
        "Evening concert",
        r#"{"mode": "weekly", "days": ["friday", "saturday"]}"#,
        "19:30",
        "22:00",
    ),
];

/// Once their appliances have announced themselves, make the demo's
/// schedules for the first `nodes` simulated appliances, unless the server
/// has schedules already (an earlier demo).
pub async fn make_demo_schedules(
    nodes: usize,
    store: Arc<dyn rakkr_store::Store>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    for _ in 0..150 {
        if shutdown.is_cancelled() {
            return;
        }
        let (store, now) = (store.clone(), clock.unix_ms());
        let made = tokio::task::spawn_blocking(move || {
            if !store.schedules().map(|s| s.is_empty()).unwrap_or(false) {
                return Some(0);
            }
            let simulated = |node: &str| DEMO_NODES.iter().take(nodes).any(|(n, _)| *n == node);
            let wanted: Vec<_> = DEMO_SCHEDULES
                .iter()
                .filter(|(node, ..)| simulated(node))
                .collect();
            let announced = wanted.iter().all(|(node, ..)| {
                NodeId::new(*node)
                    .ok()
                    .and_then(|n| store.node(&n).ok().flatten())
                    .is_some_and(|n| n.details.is_some())
            });
            if !announced {
                return None;
            }
            let mut made = 0;
            for (i, (node, name, recurrence, start, end)) in wanted.into_iter().enumerate() {
                let spec = serde_json::json!({
                    "name": name,
                    "node": node,
                    "job": {"profile": {"codec": "flac", "segment_s": 900}},
                    "timing": {
                        "recurrence": serde_json::from_str::<serde_json::Value>(recurrence).ok()?,
                        "time_zone": "Europe/Berlin",
                        "window": {"start": start, "end": end},
                        "start_early_s": 60,
                        "stop_late_s": 120
                    },
                    "tags": ["demo"]
                });
                let mut spec: rakkr_protocol::schedule::ScheduleSpec =
                    serde_json::from_value(spec).ok()?;
                // The demo's schedules name no policy or profile: any lists will do.
                let policies = crate::policies::WatchdogPolicies::builtin();
                let profiles = crate::policies::RecordingProfiles::builtin();
                if crate::schedules::check_spec(&*store, &policies, &profiles, &mut spec).is_err() {
                    continue;
                }
                let record = rakkr_store::ScheduleRecord {
                    id: rakkr_protocol::ScheduleId::new(now + i as u64),
                    spec,
                    created_ms: now,
                    updated_ms: now,
                    revision: 1,
                };
                if store.create_schedule(record.clone()).is_ok() {
                    crate::audit::record_now(
                        &*store,
                        rakkr_store::AuditEntry {
                            at_ms: now,
                            actor: "demo".into(),
                            action: "create schedule".into(),
                            target: Some(format!("schedule:{}", record.id)),
                            outcome: "allowed".into(),
                            after: serde_json::to_value(&record).ok(),
                            ..Default::default()
                        },
                    );
                    made += 1;
                }
            }
            Some(made)
        })
        .await;
        match made {
            Ok(Some(n)) => {
                if n > 0 {
                    tracing::info!(schedules = n, "demo schedules made");
                }
                return;
            }
            Ok(None) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Once the first appliance has announced itself, start the demo's job on
/// it (unless one is already running there from an earlier demo).
pub async fn start_demo_job(
    store: Arc<dyn rakkr_store::Store>,
    commands: Commands,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let node = NodeId::new(DEMO_NODES[0].0).expect("demo node names are valid");
    for _ in 0..100 {
        if shutdown.is_cancelled() {
            return;
        }
        let (store, commands, node, now) = (
            store.clone(),
            commands.clone(),
            node.clone(),
            clock.unix_ms(),
        );
        let started = tokio::task::spawn_blocking(move || {
            let announced = store
                .node(&node)
                .ok()
                .flatten()
                .is_some_and(|n| n.details.is_some());
            if !announced {
                return None;
            }
            let busy = store
                .jobs(Some(&node), 10)
                .unwrap_or_default()
                .iter()
                .any(|j| j.state.occupies_channels());
            if busy {
                return Some(Ok(None));
            }
            let request: JobRequest = serde_json::from_value(serde_json::json!({
                "node": node,
                "duration_s": DEMO_JOB_SECONDS,
                "profile": {"codec": "flac", "segment_s": 300},
            }))
            .expect("the demo job is valid");
            // The demo's job spells its encoding out: any profile list will do.
            let profiles = crate::policies::RecordingProfiles::builtin();
            Some(crate::jobs::create_job(&*store, &commands, &profiles, request, now).map(Some))
        })
        .await;
        match started {
            Ok(Some(Ok(Some(job)))) => {
                tracing::info!(job = %job.id, node = %job.node, "demo recording started");
                return;
            }
            Ok(Some(Ok(None))) => return,
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "cannot start the demo recording");
                return;
            }
            Ok(None) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
