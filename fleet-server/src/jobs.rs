//! Recording jobs on the server: creating them, the desk that answers nodes
//! (claims, heartbeats, updates), and the lease-expiry runner.
//!
//! Message path: the MQTT link decodes `nodes/{node}/jobs` reports into a
//! bounded queue ([`JOB_QUEUE`]); one desk task applies them to the store in
//! arrival order (so a node's `running` is applied before its `completed`)
//! and answers through the bounded command queue ([`COMMAND_QUEUE`]) that the
//! link publishes from. A full queue drops the message and counts it: claims
//! and heartbeats are repeated by the node, updates are resent from its
//! outbox until acknowledged.
//!
//! Answers:
//! - claim → one `offer` per job leased (or leased before and not held),
//!   and a `delete` per take the node was ordered to delete and has not
//!   reported deleted yet (decision 0020: so an order reaches a node that
//!   was offline, or lost it, whenever it next asks for work; heartbeats
//!   are answered with them too, for a node whose every slot records);
//! - deleted → the node's order is done; `ack` (also for one it had not);
//! - heartbeat → `lease` (renewed), or `stop` again while a stop is pending
//!   (so a lost stop command is repeated), or `revoked` for a lease that is
//!   not the job's current one;
//! - update → `ack` once stored, also for a duplicate and for an update that
//!   is refused (stale lease, another node's job): left unacknowledged it
//!   would wait in the node's outbox forever; a stale lease also gets
//!   `revoked`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rakkr_protocol::job::{JobCommand, JobReport, JobSpec, RecordingProfile};
use rakkr_protocol::state::JobState;
use rakkr_protocol::{MessageId, NodeId};
use rakkr_store::{AuditEntry, JobId, JobRecord, NewJob, Store, StoreError, UpdateOutcome};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::policies::{Profile, RecordingProfiles};

/// Node job reports waiting for the desk.
pub const JOB_QUEUE: usize = 10_000;

/// Commands and acknowledgements waiting to be published.
pub const COMMAND_QUEUE: usize = 10_000;

/// Orders to delete a take sent with the answer to one claim (more wait
/// for the next claim).
pub const DELETES_PER_CLAIM: usize = 64;

/// How often the lease-expiry runner looks for expired leases.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct JobStats {
    pub claims: AtomicU64,
    pub offers: AtomicU64,
    pub heartbeats: AtomicU64,
    pub updates: AtomicU64,
    pub duplicates: AtomicU64,
    /// Updates and heartbeats refused (stale lease, another node's job, an
    /// illegal transition).
    pub refused: AtomicU64,
    pub lost: AtomicU64,
    /// Reports or commands dropped because a queue was full.
    pub dropped: AtomicU64,
    pub store_errors: AtomicU64,
    claim_latency: crate::metrics::Histogram,
    heartbeat_latency: crate::metrics::Histogram,
    update_latency: crate::metrics::Histogram,
    deleted_latency: crate::metrics::Histogram,
    /// Nodes' reports that a take they were ordered to delete is gone.
    pub takes_deleted: AtomicU64,
}

impl JobStats {
    /// The desk's latency per report kind.
    pub fn desk_latency(&self) -> [(&'static str, &crate::metrics::Histogram); 4] {
        [
            ("claim", &self.claim_latency),
            ("heartbeat", &self.heartbeat_latency),
            ("update", &self.update_latency),
            ("deleted", &self.deleted_latency),
        ]
    }

    /// The index of `report`'s kind in [`Self::desk_latency`].
    fn kind(report: &JobReport) -> usize {
        match report {
            JobReport::Claim { .. } => 0,
            JobReport::Heartbeat { .. } => 1,
            JobReport::Update(_) => 2,
            JobReport::Deleted { .. } => 3,
        }
    }
}

/// A job report from a node.
#[derive(Debug)]
pub struct Inbound {
    pub node: NodeId,
    pub msg_id: MessageId,
    pub report: JobReport,
}

/// Something for the link to publish to a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Command(NodeId, JobCommand),
    /// Acknowledge a message the node sent (it may forget it).
    Ack(NodeId, MessageId),
    /// Ask the node for live meters (someone watches it).
    Live(NodeId, rakkr_protocol::payload::LiveRequest),
    /// The node's schedules (retained).
    Schedules(NodeId, rakkr_protocol::schedule::NodeSchedules),
    /// The rules of the node's watchdog policy (retained).
    Watchdog(NodeId, rakkr_protocol::watchdog::NodeWatchdog),
    /// The rules of the node's retention policy (retained).
    Retention(NodeId, rakkr_protocol::retention::NodeRetention),
    /// An A/B image update to install (retained).
    Update(NodeId, rakkr_protocol::update::UpdateOrder),
    /// The node finished its update: its retained order is cleared.
    ClearUpdate(NodeId),
}

/// The sending side of the command queue, shared by the desk and the API.
#[derive(Debug, Clone)]
pub struct Commands {
    tx: mpsc::Sender<Outbound>,
    stats: Arc<JobStats>,
}

impl Commands {
    pub fn new(stats: Arc<JobStats>) -> (Commands, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        (Commands { tx, stats }, rx)
    }

    pub fn send(&self, out: Outbound) {
        self.try_send(out);
    }

    /// Queue `out`; `false` (and counted) when the queue is full.
    pub fn try_send(&self, out: Outbound) -> bool {
        let sent = self.tx.try_send(out).is_ok();
        if !sent {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    fn command(&self, node: &NodeId, command: JobCommand) {
        self.send(Outbound::Command(node.clone(), command));
    }

    /// Tell an idle node that work waits for it.
    pub fn wake(&self, node: &NodeId) {
        self.command(node, JobCommand::Wake);
    }
}

/// What the audit log keeps of a job: enough to tell what was started or stopped.
pub fn audit_view(job: &JobRecord) -> serde_json::Value {
    serde_json::json!({
        "id": job.id.to_string(),
        "node": job.node.as_str(),
        "state": job.state.as_str(),
        "spec": job.spec,
    })
}

/// A job created (`before` none) or changed, for the audit record.
pub fn audit_change(before: Option<&JobRecord>, after: &JobRecord) -> crate::audit::AuditChange {
    crate::audit::AuditChange {
        target: Some(format!("job:{}", after.id)),
        before: before.map(audit_view),
        after: Some(audit_view(after)),
    }
}

/// A request to record, from the API, the console or the command line.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub node: NodeId,
    /// Capture device on the node; `default` is its configured one.
    #[serde(default = "default_device")]
    pub device: String,
    /// Channel map (`3,4`, `1+2`, …); absent: every device channel in order.
    #[serde(default)]
    pub channels: Option<String>,
    /// A recording profile's name (`GET /api/v1/profiles`), or the encoding
    /// itself (`{"codec": "wav", "bits": 24}`); absent: the server's default profile.
    #[serde(default)]
    pub profile: Option<ProfileChoice>,
    /// Length of the take in seconds; absent: until stopped (or the
    /// profile's `max_length_s`).
    #[serde(default)]
    pub duration_s: Option<u32>,
}

fn default_device() -> String {
    rakkr_protocol::job::DEFAULT_DEVICE.into()
}

/// A named profile or the encoding spelled out.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ProfileChoice {
    Named(String),
    Custom(RecordingProfile),
}

impl<'de> Deserialize<'de> for ProfileChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // By hand, so a bad object says what is wrong with it rather than
        // "did not match any variant".
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(name) => Ok(ProfileChoice::Named(name)),
            object @ serde_json::Value::Object(_) => serde_json::from_value(object)
                .map(ProfileChoice::Custom)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom(
                "profile is a profile's name or an object with codec, bits, flac_level and segment_s",
            )),
        }
    }
}

impl JobRequest {
    /// The job's spec, with the profile it names (the default when it names
    /// none; none for an encoding spelled out), whose constraints
    /// [`plan_job`] checks. A take without a duration gets the profile's
    /// longest; a longer one is refused.
    pub fn resolve(
        self,
        profiles: &RecordingProfiles,
    ) -> Result<(NodeId, JobSpec, Option<NamedProfileRef>), JobRequestError> {
        let named = match self.profile {
            Some(ProfileChoice::Custom(profile)) => Err(profile),
            Some(ProfileChoice::Named(name)) => {
                Ok(profiles.require(&name).map_err(JobRequestError::Invalid)?)
            }
            None => Ok(profiles.for_name(None)),
        };
        let mut duration_s = self.duration_s;
        let (profile, named) = match named {
            Err(custom) => (custom, None),
            Ok((name, profile)) => {
                if let Some(max) = profile.max_length_s {
                    match duration_s {
                        None => duration_s = Some(max),
                        Some(d) if d > max => {
                            return Err(JobRequestError::Invalid(format!(
                                "{d} s is longer than profile {name:?} allows ({max} s)"
                            )));
                        }
                        Some(_) => {}
                    }
                }
                (
                    profile.recording(),
                    Some(NamedProfileRef {
                        name: name.to_owned(),
                        profile: profile.clone(),
                    }),
                )
            }
        };
        let spec = JobSpec {
            device: self.device,
            channels: self.channels,
            profile,
            duration_s,
            // Manual takes watch as their node's policy says.
            watchdog: None,
        };
        Ok((self.node, spec, named))
    }
}

/// A profile from the server's list, with its name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedProfileRef {
    pub name: String,
    pub profile: Profile,
}

#[derive(Debug, thiserror::Error)]
pub enum JobRequestError {
    #[error("{0}")]
    Invalid(String),
    #[error("node {0} is not known to this server (it has never connected)")]
    UnknownNode(NodeId),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
}

/// Check a request against what the node announced and queue it; the node
/// is woken to claim it.
pub fn create_job(
    store: &dyn Store,
    commands: &Commands,
    profiles: &RecordingProfiles,
    request: JobRequest,
    now_ms: u64,
) -> Result<JobRecord, JobRequestError> {
    let (node, spec, profile) = request.resolve(profiles)?;
    let new = plan_job(store, node, spec, profile.as_ref())?;
    let node = new.node.clone();
    let job = store.enqueue_job(new, now_ms).map_err(|e| match e {
        StoreError::Refused(reason) => JobRequestError::Conflict(reason),
        e => JobRequestError::Store(e),
    })?;
    commands.wake(&node);
    Ok(job)
}

/// Check a job against what its node announced (device channels, codecs,
/// whether it takes jobs at all) and against its named profile's
/// constraints: the job to queue, with the device channels it reads.
pub fn plan_job(
    store: &dyn Store,
    node: NodeId,
    spec: JobSpec,
    profile: Option<&NamedProfileRef>,
) -> Result<NewJob, JobRequestError> {
    spec.validate().map_err(JobRequestError::Invalid)?;
    let record = store
        .node(&node)
        .map_err(JobRequestError::Store)?
        .ok_or_else(|| JobRequestError::UnknownNode(node.clone()))?;
    let capabilities = record.details.map(|d| d.capabilities).ok_or_else(|| {
        JobRequestError::Invalid(format!(
            "node {node} has not announced its capture device yet"
        ))
    })?;
    if capabilities.max_jobs == 0 {
        return Err(JobRequestError::Invalid(format!(
            "node {node} takes no recording jobs (it has no recordings directory, or max_jobs = 0)"
        )));
    }
    let device_channels = usize::from(capabilities.channels);
    let map = spec
        .channel_map(device_channels)
        .map_err(|e| JobRequestError::Invalid(e.to_string()))?;
    let codec = spec.profile.codec;
    if !capabilities.codecs.is_empty() && !capabilities.codecs.iter().any(|c| c == codec.as_str()) {
        return Err(JobRequestError::Invalid(format!(
            "node {node} cannot record {}; it offers {}",
            codec.as_str(),
            capabilities.codecs.join(", ")
        )));
    }
    if codec == rakkr_protocol::job::CodecName::Flac && map.outputs() > 8 {
        return Err(JobRequestError::Invalid(format!(
            "{} channels: a FLAC file carries at most 8; choose fewer or record WAV/RF64",
            map.outputs()
        )));
    }
    if let Some(named) = profile {
        named
            .profile
            .fits(map.outputs(), &capabilities.sample_rates)
            .map_err(|e| {
                JobRequestError::Invalid(format!("profile {:?} does not fit: {e}", named.name))
            })?;
    }
    let mut sources: Vec<u16> = map.sources().map(|c| c as u16).collect();
    sources.sort_unstable();
    sources.dedup();
    Ok(NewJob::unscheduled(node, spec, sources))
}

/// Ask a job to stop (or be cancelled) and tell its node. Returns the job
/// and what changed, for the audit record.
pub fn stop_job(
    store: &dyn Store,
    commands: &Commands,
    id: JobId,
    cancel: bool,
    now_ms: u64,
) -> Result<(JobRecord, crate::audit::AuditChange), StoreError> {
    let before = store.job(id)?;
    let job = store.request_stop(id, cancel, now_ms)?;
    let change = audit_change(before.as_ref(), &job);
    if let (JobState::StopRequested, Some(lease)) = (job.state, job.lease) {
        commands.command(
            &job.node,
            JobCommand::Stop {
                job_id: job.id,
                lease_id: lease.id,
                cancel: job.cancel_requested,
            },
        );
    }
    Ok((job, change))
}

/// The lease length as it travels (a `u32` of milliseconds).
fn lease_ms(lease: Duration) -> u32 {
    u32::try_from(lease.as_millis()).unwrap_or(u32::MAX)
}

/// The offer of `job` under its lease, if it has one.
fn offer(node: &NodeId, job: &JobRecord, lease: Duration, stats: &JobStats) -> Option<Outbound> {
    let l = job.lease?;
    stats.offers.fetch_add(1, Ordering::Relaxed);
    tracing::info!(node = %node, job = %job.id, lease = l.id, "job offered");
    Some(Outbound::Command(
        node.clone(),
        JobCommand::Offer {
            job_id: job.id,
            lease_id: l.id,
            lease_ms: lease_ms(lease),
            spec: job.spec.clone(),
        },
    ))
}

/// The command that keeps a running job going: a stop while one is pending,
/// else the renewed lease.
fn keep_going(job: &JobRecord, lease: Duration) -> Option<JobCommand> {
    let lease_id = job.lease?.id;
    Some(if job.state == JobState::StopRequested {
        JobCommand::Stop {
            job_id: job.id,
            lease_id,
            cancel: job.cancel_requested,
        }
    } else {
        JobCommand::Lease {
            job_id: job.id,
            lease_id,
            lease_ms: lease_ms(lease),
        }
    })
}

/// Apply one report; returns what to publish. Runs on a blocking thread.
fn handle(
    store: &dyn Store,
    msg: Inbound,
    now_ms: u64,
    lease: Duration,
    stats: &JobStats,
) -> Vec<Outbound> {
    let Inbound {
        node,
        msg_id,
        report,
    } = msg;
    let lease_len = lease.as_millis() as u64;
    let mut out = Vec::new();
    let refused = |e: &StoreError| {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node = %node, error = %e, "job report refused");
    };
    // Job updates change recordings: each applied or refused one is audited.
    let audit_update =
        |job_id: JobId, outcome: &str, reason: Option<String>, after: Option<&JobRecord>| {
            crate::audit::record_now(
                store,
                AuditEntry {
                    at_ms: now_ms,
                    actor: format!("node:{node}"),
                    action: "job update".into(),
                    target: Some(format!("job:{job_id}")),
                    outcome: outcome.into(),
                    reason,
                    after: after.map(audit_view),
                    ..Default::default()
                },
            )
        };
    match report {
        JobReport::Claim { free_slots, held } => {
            stats.claims.fetch_add(1, Ordering::Relaxed);
            match store.claim_jobs(&node, free_slots, &held, now_ms, lease_len) {
                Ok(jobs) => {
                    for job in &jobs {
                        out.extend(offer(&node, job, lease, stats));
                    }
                }
                Err(e) => store_error(stats, &e),
            }
            out.extend(open_deletions(store, &node, stats));
        }
        JobReport::Deleted { job_id } => {
            match store.complete_deletion_order(&node, job_id, now_ms) {
                Ok(done) => {
                    if done {
                        stats.takes_deleted.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(node = %node, job = %job_id, "the node deleted its copy of a deleted recording");
                        crate::audit::record_now(
                            store,
                            AuditEntry {
                                at_ms: now_ms,
                                actor: format!("node:{node}"),
                                action: "delete take on node".into(),
                                target: Some(format!("job:{job_id}")),
                                outcome: "allowed".into(),
                                reason: Some("ordered by the recording's deletion".into()),
                                ..Default::default()
                            },
                        );
                    }
                    out.push(Outbound::Ack(node.clone(), msg_id));
                }
                // Not acknowledged: the node sends it again.
                Err(e) => store_error(stats, &e),
            }
        }
        JobReport::Heartbeat { job_id, lease_id } => {
            stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            match store.renew_lease(&node, job_id, lease_id, now_ms, lease_len) {
                Ok(job) => {
                    out.extend(keep_going(&job, lease).map(|c| Outbound::Command(node.clone(), c)));
                    // A node whose every slot records never claims: its
                    // orders go with the answers to its heartbeats.
                    out.extend(open_deletions(store, &node, stats));
                }
                Err(
                    e @ (StoreError::StaleLease { .. }
                    | StoreError::NoSuchJob(_)
                    | StoreError::WrongNode { .. }),
                ) => {
                    refused(&e);
                    out.push(Outbound::Command(
                        node.clone(),
                        JobCommand::Revoked {
                            job_id,
                            lease_id,
                            reason: e.to_string(),
                        },
                    ));
                }
                Err(e) => store_error(stats, &e),
            }
        }
        JobReport::Update(update) => {
            stats.updates.fetch_add(1, Ordering::Relaxed);
            // A job the node started by itself (a scheduled occurrence while
            // the server was away): reconciled, then run under a lease.
            let autonomous = update.autonomous.is_some() && update.lease_id == 0;
            let applied = if autonomous {
                store.adopt_job(&node, msg_id, &update, now_ms, lease_len)
            } else {
                store.apply_job_update(&node, msg_id, &update, now_ms)
            };
            match applied {
                Ok(outcome) => {
                    if matches!(outcome, UpdateOutcome::Duplicate(_)) {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    let job = outcome.job();
                    tracing::info!(node = %node, job = %job.id, state = job.state.as_str(), "job update");
                    if !matches!(outcome, UpdateOutcome::Duplicate(_)) {
                        let reported = format!("reported {}", update.state.as_str());
                        audit_update(job.id, "allowed", Some(reported), Some(job));
                    }
                    out.push(Outbound::Ack(node.clone(), msg_id));
                    // The node takes over the lease of the job it runs.
                    if autonomous && job.state == JobState::Running {
                        out.extend(offer(&node, job, lease, stats));
                    }
                    // A stop requested before the node reported running.
                    if update.state == JobState::Running && job.state == JobState::StopRequested {
                        out.extend(
                            keep_going(job, lease).map(|c| Outbound::Command(node.clone(), c)),
                        );
                    }
                }
                Err(e @ StoreError::StaleLease { .. }) => {
                    refused(&e);
                    audit_update(update.job_id, "denied", Some(e.to_string()), None);
                    out.push(Outbound::Ack(node.clone(), msg_id));
                    out.push(Outbound::Command(
                        node.clone(),
                        JobCommand::Revoked {
                            job_id: update.job_id,
                            lease_id: update.lease_id,
                            reason: e.to_string(),
                        },
                    ));
                }
                Err(
                    e @ (StoreError::NoSuchJob(_)
                    | StoreError::WrongNode { .. }
                    | StoreError::Transition(_)),
                ) => {
                    refused(&e);
                    audit_update(update.job_id, "denied", Some(e.to_string()), None);
                    out.push(Outbound::Ack(node.clone(), msg_id));
                }
                // Not acknowledged: the node sends it again.
                Err(e) => store_error(stats, &e),
            }
        }
    }
    out
}

/// The orders to delete a take `node` has not reported done (at most
/// [`DELETES_PER_CLAIM`]).
fn open_deletions(store: &dyn Store, node: &NodeId, stats: &JobStats) -> Vec<Outbound> {
    match store.deletion_orders(Some(node), DELETES_PER_CLAIM) {
        Ok(orders) => orders
            .into_iter()
            .map(|(node, job_id, _)| Outbound::Command(node, JobCommand::Delete { job_id }))
            .collect(),
        Err(e) => {
            store_error(stats, &e);
            Vec::new()
        }
    }
}

fn store_error(stats: &JobStats, e: &StoreError) {
    stats.store_errors.fetch_add(1, Ordering::Relaxed);
    tracing::error!(error = %e, "job store operation failed");
}

/// The desk: apply node reports in arrival order until shutdown.
pub async fn run_desk(
    mut inbox: mpsc::Receiver<Inbound>,
    store: Arc<dyn Store>,
    commands: Commands,
    clock: Arc<dyn Clock>,
    lease: Duration,
    stats: Arc<JobStats>,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            m = inbox.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.cancelled() => return,
        };
        let (store, stats2) = (store.clone(), stats.clone());
        let now = clock.unix_ms();
        let handled = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let kind = JobStats::kind(&msg.report);
            let out = handle(&*store, msg, now, lease, &stats2);
            stats2.desk_latency()[kind].1.observe(started.elapsed());
            out
        });
        match handled.await {
            Ok(out) => out.into_iter().for_each(|o| commands.send(o)),
            Err(e) => tracing::error!(error = %e, "job desk task failed"),
        }
    }
}

/// Mark jobs whose lease expired lost, every [`EXPIRY_INTERVAL`], until shutdown.
pub async fn run_lease_expiry(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    stats: Arc<JobStats>,
    shutdown: CancellationToken,
) {
    let mut ticks = crate::clock::Ticks::every(EXPIRY_INTERVAL, shutdown.clone());
    loop {
        if !ticks.next().await {
            return;
        }
        let store = store.clone();
        let now = clock.unix_ms();
        let expired = tokio::task::spawn_blocking(move || {
            let lost = store.expire_leases(now)?;
            for job in &lost {
                crate::audit::record_now(
                    &*store,
                    AuditEntry {
                        at_ms: now,
                        actor: "runner:lease-expiry".into(),
                        action: "job lost".into(),
                        target: Some(format!("job:{}", job.id)),
                        outcome: "allowed".into(),
                        reason: Some(format!("no word from node {} within its lease", job.node)),
                        after: Some(audit_view(job)),
                        ..Default::default()
                    },
                );
            }
            Ok::<_, StoreError>(lost)
        });
        match expired.await {
            Ok(Ok(lost)) => {
                for job in &lost {
                    tracing::warn!(node = %job.node, job = %job.id, "job lost: its lease expired");
                }
                stats.lost.fetch_add(lost.len() as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => store_error(&stats, &e),
            Err(e) => tracing::error!(error = %e, "lease expiry task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An order to delete a take goes with the answer to every claim and
    /// heartbeat of its node (a node whose every slot records never claims)
    /// until the node reports the take deleted; that report is acknowledged.
    #[test]
    fn deletion_orders_ride_on_claims_and_heartbeats_until_the_node_reports() {
        use rakkr_protocol::job::JobUpdate;
        let dir = tempfile::tempdir().unwrap();
        let store = rakkr_store::RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let stats = JobStats::default();
        let node = NodeId::new("busy").unwrap();
        let lease = Duration::from_secs(30);
        let spec: JobSpec = serde_json::from_str("{}").unwrap();
        let report = |report| Inbound {
            node: node.clone(),
            msg_id: MessageId::new(1),
            report,
        };
        let run = |job: &JobRecord, state| {
            let update = JobUpdate {
                job_id: job.id,
                lease_id: job.lease.unwrap().id,
                state,
                at_ms: 0,
                detail: String::new(),
                recording: None,
                autonomous: None,
            };
            handle(&store, report(JobReport::Update(update)), 20, lease, &stats)
        };
        let new = || NewJob::unscheduled(node.clone(), spec.clone(), vec![0]);
        store.enqueue_job(new(), 1).unwrap();
        let done = store
            .claim_jobs(&node, 1, &[], 2, 30_000)
            .unwrap()
            .remove(0);
        run(&done, JobState::Completed);
        store.enqueue_job(new(), 3).unwrap();
        let busy = store
            .claim_jobs(&node, 1, &[], 4, 30_000)
            .unwrap()
            .remove(0);
        run(&busy, JobState::Running);
        store.delete_job(done.id, "user:olga", "", 5).unwrap();

        let order = Outbound::Command(node.clone(), JobCommand::Delete { job_id: done.id });
        let beat = JobReport::Heartbeat {
            job_id: busy.id,
            lease_id: busy.lease.unwrap().id,
        };
        let answer = handle(&store, report(beat.clone()), 6, lease, &stats);
        assert!(answer.contains(&order), "{answer:?}");
        let claim = JobReport::Claim {
            free_slots: 1,
            held: vec![busy.id],
        };
        let answer = handle(&store, report(claim.clone()), 7, lease, &stats);
        assert!(answer.contains(&order), "{answer:?}");

        let deleted = report(JobReport::Deleted { job_id: done.id });
        let msg_id = deleted.msg_id;
        let answer = handle(&store, deleted, 8, lease, &stats);
        assert_eq!(answer, [Outbound::Ack(node.clone(), msg_id)]);
        assert_eq!(stats.takes_deleted.load(Ordering::Relaxed), 1);
        let job = store.job(done.id).unwrap().unwrap();
        assert_eq!(job.deleted.and_then(|d| d.node_deleted_ms), Some(8));
        for again in [beat, claim] {
            let answer = handle(&store, report(again), 9, lease, &stats);
            assert!(!answer.contains(&order), "done: {answer:?}");
        }
        // Reported again (the report crossed a resent order): acknowledged.
        let twice = report(JobReport::Deleted { job_id: done.id });
        let msg_id = twice.msg_id;
        assert_eq!(
            handle(&store, twice, 10, lease, &stats),
            [Outbound::Ack(node.clone(), msg_id)]
        );
        assert_eq!(stats.takes_deleted.load(Ordering::Relaxed), 1);
    }

    fn request(json: serde_json::Value) -> Result<JobRequest, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_request_names_a_profile_spells_one_out_or_gets_the_default() {
        let profiles = RecordingProfiles::builtin();
        let resolve = |json| request(json).unwrap().resolve(&profiles);

        let (_, spec, named) = resolve(serde_json::json!({"node": "n1"})).unwrap();
        assert_eq!(named.unwrap().name, "standard");
        assert_eq!(spec.profile, RecordingProfile::default());
        assert_eq!(spec.duration_s, None);

        let (_, spec, named) =
            resolve(serde_json::json!({"node": "n1", "profile": "speech", "channels": "1+2"}))
                .unwrap();
        assert_eq!(named.unwrap().name, "speech");
        assert_eq!(
            (spec.profile.bits, spec.profile.segment_s),
            (16, Some(3600))
        );
        assert_eq!(
            spec.duration_s,
            Some(14_400),
            "open-ended: the profile's longest"
        );
        assert_eq!(spec.channels.as_deref(), Some("1+2"));

        let e =
            resolve(serde_json::json!({"node": "n1", "profile": "speech", "duration_s": 20_000}))
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            "20000 s is longer than profile \"speech\" allows (14400 s)"
        );

        let (_, spec, named) =
            resolve(serde_json::json!({"node": "n1", "profile": {"codec": "wav", "bits": 16}}))
                .unwrap();
        assert!(named.is_none(), "spelled out: no constraints");
        assert_eq!(spec.profile.codec, rakkr_protocol::job::CodecName::Wav);

        let e = resolve(serde_json::json!({"node": "n1", "profile": "loud"})).unwrap_err();
        assert!(
            e.to_string().starts_with("no recording profile \"loud\""),
            "{e}"
        );
    }

    #[test]
    fn bad_profile_values_say_what_is_wrong() {
        let e = request(serde_json::json!({"node": "n1", "profile": 5})).unwrap_err();
        assert!(
            e.contains("profile is a profile's name or an object"),
            "{e}"
        );
        let e =
            request(serde_json::json!({"node": "n1", "profile": {"codec": "mp3"}})).unwrap_err();
        assert!(e.contains("unknown variant `mp3`"), "{e}");
        let e = request(serde_json::json!({"node": "n1", "codec": "flac"})).unwrap_err();
        assert!(e.contains("unknown field `codec`"), "{e}");
    }
}
