//! Recording jobs on the node: claim work, record it from the running
//! capture, renew the lease, obey stop and cancel, report the take.
//!
//! Protocol (see `rakkr_protocol::job`): the runner sends `claim` when it has
//! a free slot and the link comes up, when the server sends `wake`, after a
//! job ends, and every [`CLAIM_EVERY`] otherwise. Each `offer` starts a take
//! named after the job (`{recordings_dir}/{job id}.flac`, or
//! `{job id}.0001.flac`, … when segmented). Heartbeats go every third of the
//! lease, measured on the monotonic clock, so a wall-clock jump on the node
//! changes nothing. A node that cannot reach the server keeps recording: the
//! lease is the server's business; the take is finished and reported when it
//! ends, whenever the server hears of it.
//!
//! Durability: state changes and their reports go through the [`Outbox`] in
//! one transaction (`running` with the held job, the final update with its
//! release), so after a crash or power loss the node knows which jobs it
//! held. On the next start their `.part` files have been recovered
//! (`run::recover_recordings`) and each is reported `completed` with
//! `recovered: true`; the server attaches it even if it had marked the job
//! lost. On an orderly shutdown running takes are finalized and reported.
//!
//! Schedules (decision 0014): the node keeps the schedules the server sends
//! (retained `cmd/schedules`, kept in the outbox database). While the server
//! is unreachable (no broker connection, or its status is offline) it starts
//! each due occurrence itself, once, under the occurrence's own job id
//! ([`occurrence_job_id`]) and lease id 0, and reports it with what the server
//! needs to reconcile it (`autonomous`). When an offer for that job arrives
//! (the server made its own job for the occurrence, or reconciled the
//! node's) the node takes over the offered lease and the take goes on
//! uninterrupted. Jobs it started are remembered (`Outbox::mark_started`),
//! so an occurrence is never recorded twice by the node. A take a crash or
//! power loss cut (`Outbox::mark_interrupted`) is the one exception: the
//! window goes on under the occurrence's next job id, the one the server
//! would give its restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rakkr_mqtt::LinkState;
use rakkr_protocol::job::{
    AutonomousStart, CodecName, DEFAULT_DEVICE, JobCommand, JobReport, JobSpec, JobUpdate,
    MAX_REPORTED_FILES, RecordedFile, RecordingReport,
};
use rakkr_protocol::schedule::{
    Calendar, MAX_OCCURRENCE_JOBS, NodeSchedule, NodeSchedules, Occurrence, occurrence_job_id,
};
use rakkr_protocol::state::JobState;
use rakkr_protocol::{Envelope, JobId, NodeId};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::capture::CapturePipeline;
use crate::clock::Clock;
use crate::outbox::Outbox;
use crate::record::{RecordError, RunningTake, TakeSpec, TakeSummary};
use crate::take_file::Codec;

/// An idle node with free slots asks for work at least this often.
pub const CLAIM_EVERY: Duration = Duration::from_secs(30);

/// Claims are at least this far apart (work waiting, a wake, a job ended
/// and an offer arriving all ask for one).
const MIN_CLAIM_GAP: Duration = Duration::from_secs(1);

/// How often the runner looks at its takes and its timers.
const TICK: Duration = Duration::from_millis(200);

/// Written audio is made durable this often (the crash-loss bound).
const SYNC_EVERY: Duration = Duration::from_millis(500);

/// While the server is unreachable, due occurrences are looked for this often.
const AUTONOMY_EVERY: Duration = Duration::from_secs(1);

/// An occurrence the node could not start by itself is tried again after this.
const AUTONOMY_RETRY: Duration = Duration::from_secs(10);

/// What the node keeps about a job it holds, across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldJob {
    pub job_id: JobId,
    pub lease_id: u64,
    /// The take's file name as asked for (segments add `.0001`, …).
    pub out: PathBuf,
    pub sample_rate: u32,
    pub channels: u16,
    pub bits: u8,
    pub started_ms: u64,
    /// The take ended and its final report waits for acknowledgement.
    #[serde(default)]
    pub finished: bool,
    /// The node started it by itself (lease id 0 until it takes one over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autonomous: Option<AutonomousStart>,
}

/// What the runner needs from the rest of the agent.
pub struct JobContext {
    pub node: NodeId,
    pub device_name: String,
    pub recordings_dir: PathBuf,
    pub max_jobs: u16,
    pub pipeline: Arc<CapturePipeline>,
    pub outbox: Arc<Outbox>,
    pub outbox_ready: Arc<Notify>,
    pub link: Arc<LinkState>,
    pub clock: Arc<dyn Clock>,
    /// Counts job updates the outbox could not keep.
    pub telemetry: Arc<crate::link::TelemetryStats>,
    /// The server's status says it is online (see `link::Outgoing`).
    pub server_online: Arc<std::sync::atomic::AtomicBool>,
    /// The watchdog rules of running takes that bring their own
    /// (`JobSpec::watchdog`), for the watchdog.
    pub take_rules: Arc<watch::Sender<crate::watchdog::TakeRules>>,
    /// Queue finished takes' files for upload, and wake the uploader
    /// (`None`: uploads are off).
    pub uploads: Option<Arc<Notify>>,
}

struct Running {
    held: HeldJob,
    take: RunningTake,
    /// Device channels the take reads.
    sources: Vec<usize>,
    lease: Duration,
    last_beat: Instant,
    /// `Some(cancel)` once a stop was asked for.
    stop: Option<bool>,
    /// Why the lease was taken away, if it was.
    revoked: Option<String>,
}

/// Run jobs until `shutdown`; then finalize running takes and report them.
pub async fn run(
    ctx: JobContext,
    mut commands: mpsc::Receiver<JobCommand>,
    reports: mpsc::Sender<JobReport>,
    mut schedules: watch::Receiver<Option<NodeSchedules>>,
    shutdown: CancellationToken,
) {
    report_interrupted(&ctx).await;
    let mut calendars = kept_schedules(&ctx).await;
    let mut schedules_open = true;
    let mut autonomy = Autonomy::default();
    let mut running: HashMap<JobId, Running> = HashMap::new();
    // Takes ordered deleted while they still recorded.
    let mut held_back: std::collections::HashSet<JobId> = Default::default();
    let mut wants_claim = true;
    let mut last_claim: Option<Instant> = None;
    let mut connection = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    JobCommand::Offer { job_id, lease_id, lease_ms, spec } => {
                        // Offered again (its running or final report has not
                        // arrived yet): it runs, or ran, once. A job the node
                        // started by itself takes the offered lease over.
                        if let Some(r) = running.get_mut(&job_id) {
                            if r.held.lease_id == 0 {
                                take_over(&ctx, r, lease_id, lease_ms).await;
                            }
                        } else if !held_ids(&ctx).await.contains(&job_id)
                            && !was_started(&ctx, job_id).await
                        {
                            offer(&ctx, &mut running, job_id, lease_id, lease_ms, spec).await;
                        }
                        // More may be waiting.
                        wants_claim = true;
                    }
                    JobCommand::Lease { job_id, lease_id, lease_ms } => {
                        if let Some(r) = running.get_mut(&job_id).filter(|r| r.held.lease_id == lease_id) {
                            r.lease = Duration::from_millis(u64::from(lease_ms));
                        }
                    }
                    JobCommand::Stop { job_id, lease_id, cancel } => {
                        if let Some(r) = running.get_mut(&job_id).filter(|r| r.held.lease_id == lease_id) {
                            tracing::info!(job = %job_id, cancel, "stop requested");
                            r.stop = Some(r.stop.unwrap_or(false) | cancel);
                            r.take.stop();
                        }
                    }
                    JobCommand::Revoked { job_id, lease_id, reason } => {
                        if let Some(r) = running.get_mut(&job_id).filter(|r| r.held.lease_id == lease_id) {
                            tracing::warn!(job = %job_id, %reason, "lease revoked; ending the take");
                            r.revoked = Some(reason);
                            r.take.stop();
                        }
                    }
                    JobCommand::Wake => wants_claim = true,
                    JobCommand::Delete { job_id } => {
                        if running.contains_key(&job_id) {
                            // The order comes again with the answers to
                            // claims and heartbeats; the take is deleted
                            // once it ended. Said once, not every time.
                            if held_back.insert(job_id) {
                                tracing::warn!(job = %job_id, "the server ordered a take deleted that still records; it is deleted when the order comes again after the take ends");
                            }
                        } else {
                            held_back.remove(&job_id);
                            delete_take(&ctx, job_id).await;
                        }
                    }
                }
            }
            changed = schedules.changed(), if schedules_open => {
                if changed.is_err() {
                    schedules_open = false;
                    continue;
                }
                let received = schedules.borrow_and_update().clone();
                if let Some(list) = received {
                    keep_schedules(&ctx, &list).await;
                    calendars = compile(list);
                }
            }
            _ = tick.tick() => {}
        }

        // Finished takes: report them, and look for more work.
        let done: Vec<JobId> = running
            .iter()
            .filter(|(_, r)| r.take.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(r) = running.remove(&id) {
                finish(&ctx, r, None).await;
                wants_claim = true;
            }
        }

        // A connection the runner has not seen yet (however briefly the
        // link was down): claims and heartbeats sent on the old one may be lost.
        let connected = ctx.link.is_connected();
        let epoch = ctx.link.connects.load(std::sync::atomic::Ordering::Acquire);
        if connected && epoch != connection {
            connection = epoch;
            wants_claim = true;
            // Renew at once: the server may have been away for most of a lease.
            for r in running.values_mut() {
                r.last_beat = Instant::now() - r.lease;
            }
        }
        let reachable = connected && ctx.server_online.load(std::sync::atomic::Ordering::Acquire);
        if !reachable && autonomy.last.is_none_or(|t| t.elapsed() >= AUTONOMY_EVERY) {
            autonomy.last = Some(Instant::now());
            start_due_occurrences(&ctx, &mut running, &calendars, &mut autonomy).await;
        }
        if !connected {
            continue;
        }
        for (id, r) in running.iter_mut() {
            // A job started by the node alone has no lease to renew yet.
            if r.held.lease_id != 0 && r.revoked.is_none() && r.last_beat.elapsed() >= r.lease / 3 {
                let beat = JobReport::Heartbeat {
                    job_id: *id,
                    lease_id: r.held.lease_id,
                };
                if reports.try_send(beat).is_ok() {
                    r.last_beat = Instant::now();
                }
            }
        }
        let free = ctx.max_jobs.saturating_sub(running.len() as u16);
        let wait = if wants_claim {
            MIN_CLAIM_GAP
        } else {
            CLAIM_EVERY
        };
        if free > 0 && last_claim.is_none_or(|t| t.elapsed() >= wait) {
            let mut held = held_ids(&ctx).await;
            held.extend(
                running
                    .keys()
                    .filter(|id| !held.contains(id))
                    .copied()
                    .collect::<Vec<_>>(),
            );
            held.truncate(rakkr_protocol::job::MAX_HELD_JOBS);
            let claim = JobReport::Claim {
                free_slots: free,
                held,
            };
            if reports.try_send(claim).is_ok() {
                wants_claim = false;
                last_claim = Some(Instant::now());
            }
        }
    }

    // Orderly shutdown: every take is finalized with what was captured.
    for r in running.values() {
        r.take.stop();
    }
    for (_, r) in running.drain() {
        finish(&ctx, r, Some("ended early: the agent was shut down")).await;
    }
}

/// Delete every file of `job_id`'s take as the server ordered (decision
/// 0020), then, in one outbox transaction, take them off the upload queue and
/// report the take `deleted`. The files go first: after a crash between the
/// two the report is not sent, the server's order comes again, and the take
/// (its files already gone) is reported then.
async fn delete_take(ctx: &JobContext, job_id: JobId) {
    let dir = ctx.recordings_dir.clone();
    let removed = tokio::task::spawn_blocking(move || remove_take_files(&dir, job_id)).await;
    let files = match removed {
        Ok(Ok(files)) => files,
        Ok(Err(e)) => {
            tracing::error!(job = %job_id, error = %e, "the take the server ordered deleted could not be deleted; it is tried again when the order comes again");
            return;
        }
        Err(_) => return,
    };
    let envelope = Envelope::stamped(ctx.clock.unix_ms(), JobReport::Deleted { job_id });
    let payload = envelope.encode();
    let outbox = ctx.outbox.clone();
    let kept = tokio::task::spawn_blocking(move || {
        outbox.forget_take(job_id.as_u128(), envelope.msg_id, &payload)
    })
    .await;
    match kept {
        Ok(Ok(())) => {
            tracing::info!(job = %job_id, files = ?files, "deleted the take as the server ordered");
            ctx.outbox_ready.notify_one();
        }
        Ok(Err(e)) => {
            ctx.telemetry
                .job_updates_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(job = %job_id, error = %e, "the take's files are deleted but the report could not be kept; the server's order comes again");
        }
        Err(_) => {}
    }
}

/// Delete every file of `job_id`'s take in `dir` (`{job id}.…`: the take,
/// its segments, a `.part` being written or recovered) and make the
/// deletions durable; the names deleted. Files already gone are not an error.
fn remove_take_files(dir: &Path, job_id: JobId) -> std::io::Result<Vec<String>> {
    let prefix = format!("{job_id}.");
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed.push(name),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !removed.is_empty() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    removed.sort();
    Ok(removed)
}

/// Start the offered job, or report why not.
async fn offer(
    ctx: &JobContext,
    running: &mut HashMap<JobId, Running>,
    job_id: JobId,
    lease_id: u64,
    lease_ms: u32,
    spec: JobSpec,
) {
    let lease = Duration::from_millis(u64::from(lease_ms));
    if let Err(reason) = begin(ctx, running, job_id, lease_id, lease, spec, None).await {
        tracing::warn!(job = %job_id, %reason, "job refused");
        let update = update(
            job_id,
            lease_id,
            JobState::Failed,
            ctx.clock.unix_ms(),
            bounded(reason),
            None,
        );
        keep(ctx, None, false, update).await;
    }
}

/// Start a take for `job_id` (under `lease_id`, or 0 for one the node starts
/// by itself), hold it and report it running; or say why it cannot run.
async fn begin(
    ctx: &JobContext,
    running: &mut HashMap<JobId, Running>,
    job_id: JobId,
    lease_id: u64,
    lease: Duration,
    spec: JobSpec,
    autonomous: Option<AutonomousStart>,
) -> Result<(), String> {
    let now = ctx.clock.unix_ms();
    let format = ctx.pipeline.format;
    let (take_spec, sources) = prepare(ctx, running, job_id, &spec)?;
    let take = ctx
        .pipeline
        .start_take(&take_spec)
        .map_err(|e| e.to_string())?;
    let held = HeldJob {
        job_id,
        lease_id,
        out: take_spec.out.clone(),
        sample_rate: format.sample_rate,
        channels: take_spec
            .map
            .as_ref()
            .map_or(format.channels, |m| m.outputs() as u16),
        bits: take_spec.bits,
        started_ms: now,
        finished: false,
        autonomous,
    };
    tracing::info!(job = %job_id, lease = lease_id, file = %held.out.display(), "job started");
    let update = update(
        job_id,
        lease_id,
        JobState::Running,
        now,
        String::new(),
        None,
    );
    keep(ctx, Some(&held), false, update).await;
    let outbox = ctx.outbox.clone();
    let id = job_id.as_u128();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || outbox.mark_started(id, now)).await {
        tracing::error!(job = %job_id, error = %e, "cannot remember the job as started");
    }
    if let Some(rules) = spec.watchdog {
        ctx.take_rules.send_modify(|takes| {
            takes.insert(job_id, (sources.clone(), rules));
        });
    }
    running.insert(
        job_id,
        Running {
            held,
            take,
            sources,
            lease,
            last_beat: Instant::now(),
            stop: None,
            revoked: None,
        },
    );
    Ok(())
}

/// A job the node started by itself was offered under `lease_id`: the take
/// goes on under that lease.
async fn take_over(ctx: &JobContext, r: &mut Running, lease_id: u64, lease_ms: u32) {
    r.held.lease_id = lease_id;
    r.lease = Duration::from_millis(u64::from(lease_ms));
    // Renew at once: the lease was granted a moment ago, on the server's clock.
    r.last_beat = Instant::now() - r.lease;
    tracing::info!(job = %r.held.job_id, lease = lease_id, "took over the server's lease");
    let record = serde_json::to_vec(&r.held).expect("held jobs serialise");
    let outbox = ctx.outbox.clone();
    let id = r.held.job_id.as_u128();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || outbox.update_held(id, &record)).await {
        tracing::error!(job = %r.held.job_id, error = %e, "cannot keep the lease taken over");
    }
}

/// Whether the node started `job` before (it may have let go of it since).
async fn was_started(ctx: &JobContext, job: JobId) -> bool {
    let outbox = ctx.outbox.clone();
    matches!(
        tokio::task::spawn_blocking(move || outbox.was_started(job.as_u128())).await,
        Ok(Ok(true))
    )
}

/// The node's schedules with their calendars; ones this build cannot read
/// are left out (and said so).
fn compile(list: NodeSchedules) -> Vec<(NodeSchedule, Calendar)> {
    list.schedules
        .into_iter()
        .filter_map(|s| match s.spec.timing.calendar() {
            Ok(c) => Some((s, c)),
            Err(e) => {
                tracing::error!(schedule = %s.id, error = %e, "schedule not usable here");
                None
            }
        })
        .collect()
}

/// The schedules kept from the last time the server sent them.
async fn kept_schedules(ctx: &JobContext) -> Vec<(NodeSchedule, Calendar)> {
    let outbox = ctx.outbox.clone();
    match tokio::task::spawn_blocking(move || outbox.kept(crate::outbox::Kept::Schedules)).await {
        Ok(Ok(Some(json))) => match serde_json::from_slice::<NodeSchedules>(&json) {
            Ok(list) => compile(list),
            Err(e) => {
                tracing::error!(error = %e, "kept schedules unreadable; waiting for the server's");
                Vec::new()
            }
        },
        Ok(Ok(None)) => Vec::new(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the kept schedules");
            Vec::new()
        }
        Err(_) => Vec::new(),
    }
}

async fn keep_schedules(ctx: &JobContext, list: &NodeSchedules) {
    let json = serde_json::to_vec(list).expect("schedules serialise");
    let outbox = ctx.outbox.clone();
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || outbox.keep(crate::outbox::Kept::Schedules, &json))
            .await
    {
        tracing::error!(error = %e, "cannot keep the schedules; a restart without the server forgets them");
    }
}

/// What the node remembers between looks for due occurrences.
#[derive(Default)]
struct Autonomy {
    last: Option<Instant>,
    /// Occurrences it could not start, and when it tried.
    tried: HashMap<JobId, Instant>,
}

/// Start, under their own job ids, the due occurrences the node has not
/// started yet (the server is unreachable).
async fn start_due_occurrences(
    ctx: &JobContext,
    running: &mut HashMap<JobId, Running>,
    calendars: &[(NodeSchedule, Calendar)],
    autonomy: &mut Autonomy,
) {
    let now = ctx.clock.unix_ms();
    autonomy.tried.retain(|_, at| at.elapsed() < AUTONOMY_RETRY);
    for (schedule, calendar) in calendars {
        if !schedule.spec.enabled {
            continue;
        }
        let Some(occurrence) = calendar.due_at(now) else {
            continue;
        };
        if !occurrence.worth_starting(now) {
            continue;
        }
        let Some(job_id) = next_occurrence_job(ctx, running, schedule, &occurrence).await else {
            continue;
        };
        if autonomy.tried.contains_key(&job_id) {
            continue;
        }
        let spec = JobSpec {
            duration_s: occurrence.take_length_s(now),
            ..schedule.spec.job.clone()
        };
        let started = AutonomousStart {
            schedule: schedule.id,
            revision: schedule.revision,
            occurrence: occurrence.key.clone(),
            spec: spec.clone(),
            tags: schedule.spec.tags.clone(),
        };
        // No lease yet: heartbeats wait until the node takes one over.
        let lease = Duration::from_secs(30);
        match begin(ctx, running, job_id, 0, lease, spec, Some(started)).await {
            Ok(()) => tracing::warn!(
                job = %job_id,
                schedule = %schedule.id,
                occurrence = %occurrence.key,
                "the server is unreachable: recording the scheduled occurrence on our own"
            ),
            Err(reason) => {
                tracing::warn!(job = %job_id, %reason, "cannot start the scheduled occurrence on our own");
                autonomy.tried.insert(job_id, Instant::now());
            }
        }
    }
}

/// The job to start for a due `occurrence`, if it needs one: its first job
/// if the node never started it, the next one if every job the node started
/// for it had its take cut by a crash or power loss (the window goes on);
/// `None` while one runs or once one ended otherwise.
async fn next_occurrence_job(
    ctx: &JobContext,
    running: &HashMap<JobId, Running>,
    schedule: &NodeSchedule,
    occurrence: &Occurrence,
) -> Option<JobId> {
    let held = held_jobs(ctx).await;
    for n in 0..MAX_OCCURRENCE_JOBS {
        let id = occurrence_job_id(schedule.id, schedule.created_ms, occurrence, n);
        if running.contains_key(&id) || held.get(&id).is_some_and(|finished| !finished) {
            return None;
        }
        if !was_started(ctx, id).await {
            return Some(id);
        }
        let outbox = ctx.outbox.clone();
        let cut = tokio::task::spawn_blocking(move || outbox.was_interrupted(id.as_u128())).await;
        if !matches!(cut, Ok(Ok(true))) {
            return None;
        }
    }
    None
}

/// The take a job asks for, and the device channels it reads; or why it
/// cannot run here.
fn prepare(
    ctx: &JobContext,
    running: &HashMap<JobId, Running>,
    job_id: JobId,
    spec: &JobSpec,
) -> Result<(TakeSpec, Vec<usize>), String> {
    spec.validate()?;
    if running.len() >= usize::from(ctx.max_jobs) {
        return Err(format!(
            "the node runs {} jobs already, its most",
            running.len()
        ));
    }
    if spec.device != DEFAULT_DEVICE && spec.device != ctx.device_name {
        return Err(format!(
            "no capture device {:?} on this node; it records from {:?}",
            spec.device, ctx.device_name
        ));
    }
    let device_channels = usize::from(ctx.pipeline.format.channels);
    let map = spec
        .channel_map(device_channels)
        .map_err(|e| e.to_string())?;
    let sources: Vec<usize> = map.sources().collect();
    for (other, r) in running {
        if let Some(c) = sources.iter().find(|c| r.sources.contains(c)) {
            return Err(format!(
                "device channel {} is already recording for job {other}",
                c + 1
            ));
        }
    }
    let codec = match spec.profile.codec {
        CodecName::Flac => Codec::Flac {
            compression_level: spec.profile.flac_level,
        },
        CodecName::Wav => Codec::Wav { always_rf64: false },
        CodecName::Rf64 => Codec::Wav { always_rf64: true },
    };
    let out = ctx
        .recordings_dir
        .join(format!("{job_id}.{}", spec.profile.codec.extension()));
    let take = TakeSpec {
        out,
        bits: spec.profile.bits,
        codec,
        duration: spec.duration_s.map(|s| Duration::from_secs(u64::from(s))),
        segment: spec
            .profile
            .segment_s
            .map(|s| Duration::from_secs(u64::from(s))),
        map: spec.channels.is_some().then_some(map),
        tags: vec![
            ("RAKKR_NODE".into(), ctx.node.to_string()),
            ("RAKKR_JOB".into(), job_id.to_string()),
        ],
        sync_every: SYNC_EVERY,
    };
    Ok((take, sources))
}

/// Report a take that ended (reached its length, was stopped, failed, or the
/// agent is shutting down) and let go of its job.
async fn finish(ctx: &JobContext, r: Running, note: Option<&str>) {
    let Running {
        held,
        take,
        stop,
        revoked,
        ..
    } = r;
    ctx.take_rules
        .send_if_modified(|takes| takes.remove(&held.job_id).is_some());
    let result = tokio::task::spawn_blocking(move || take.join())
        .await
        .unwrap_or_else(|_| {
            Err(RecordError::Spawn(std::io::Error::other(
                "take task failed",
            )))
        });
    let now = ctx.clock.unix_ms();
    let (state, mut detail, recording) = match result {
        Ok(summary) => {
            let report = report_of(&held, &summary);
            let state = if stop == Some(true) {
                JobState::Cancelled
            } else {
                JobState::Completed
            };
            (state, String::new(), Some(report))
        }
        Err(e) => {
            let event = crate::watchdog::take_failed(held.job_id, now, &e.to_string());
            crate::run::keep_health_event(
                &ctx.outbox,
                &ctx.outbox_ready,
                &ctx.telemetry,
                now,
                event,
            )
            .await;
            // The files keep what was captured; say what exists.
            let report = files_of(&held).ok().filter(|(files, _)| !files.is_empty());
            let recording = report.map(|(files, frames)| recording(&held, files, frames, false));
            (JobState::Failed, e.to_string(), recording)
        }
    };
    for extra in [
        note.map(str::to_owned),
        revoked.map(|r| format!("lease revoked: {r}")),
    ]
    .into_iter()
    .flatten()
    {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&extra);
    }
    tracing::info!(job = %held.job_id, state = state.as_str(), %detail, "job ended");
    release(ctx, &held, state, now, detail, recording).await;
}

/// Report a held job's final state and let go of it (one transaction).
async fn release(
    ctx: &JobContext,
    held: &HeldJob,
    state: JobState,
    now_ms: u64,
    detail: String,
    recording: Option<RecordingReport>,
) {
    let update = update(
        held.job_id,
        held.lease_id,
        state,
        now_ms,
        bounded(detail),
        recording,
    );
    keep(ctx, Some(held), true, update).await;
}

/// Report the jobs a crash interrupted: their takes were recovered at start.
async fn report_interrupted(ctx: &JobContext) {
    let outbox = ctx.outbox.clone();
    let held = match tokio::task::spawn_blocking(move || outbox.held_jobs()).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the jobs held before this start");
            return;
        }
        Err(_) => return,
    };
    for (_, bytes) in held {
        let held = match serde_json::from_slice::<HeldJob>(&bytes) {
            Ok(h) if h.finished => continue,
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "unreadable held job; left as it is");
                continue;
            }
        };
        let now = ctx.clock.unix_ms();
        let (state, detail, recording) = match files_of(&held) {
            Ok((files, frames)) if !files.is_empty() => (
                JobState::Completed,
                "the agent stopped during the take (crash or power loss); \
                 recovered up to the last durable write"
                    .to_owned(),
                Some(recording(&held, files, frames, true)),
            ),
            Ok(_) => (
                JobState::Failed,
                "the agent stopped during the take and no audio reached the disk".to_owned(),
                None,
            ),
            Err(e) => (
                JobState::Failed,
                format!("the agent stopped during the take; its files cannot be read: {e}"),
                None,
            ),
        };
        tracing::warn!(job = %held.job_id, state = state.as_str(), "reporting a take interrupted before this start");
        // A scheduled occurrence goes on under its next job (see
        // `next_occurrence_job`) if the server is still unreachable.
        let outbox = ctx.outbox.clone();
        let id = held.job_id.as_u128();
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || outbox.mark_interrupted(id, now)).await
        {
            tracing::error!(job = %held.job_id, error = %e, "cannot remember the take as cut");
        }
        release(ctx, &held, state, now, detail, recording).await;
    }
}

fn update(
    job_id: JobId,
    lease_id: u64,
    state: JobState,
    at_ms: u64,
    detail: String,
    recording: Option<RecordingReport>,
) -> JobUpdate {
    JobUpdate {
        job_id,
        lease_id,
        state,
        at_ms,
        detail,
        recording,
        autonomous: None,
    }
}

/// Put an update in the outbox: with `held`, hold the job (`finished`: as
/// finished, let go once the report is acknowledged) in the same transaction.
async fn keep(ctx: &JobContext, held: Option<&HeldJob>, finished: bool, mut update: JobUpdate) {
    // A job the node started by itself and still has no lease for: its
    // updates say what the server needs to reconcile it.
    if let Some(h) = held.filter(|h| h.lease_id == 0) {
        update.autonomous = h.autonomous.clone().map(Box::new);
    }
    let job = update.job_id.as_u128();
    let envelope = Envelope::stamped(ctx.clock.unix_ms(), JobReport::Update(update));
    let payload = envelope.encode();
    let record = held.map(|h| {
        let h = HeldJob {
            finished,
            ..h.clone()
        };
        serde_json::to_vec(&h).expect("held jobs serialise")
    });
    let outbox = ctx.outbox.clone();
    // A finished take's files go on the upload queue with its final report.
    let upload = held.filter(|_| finished && ctx.uploads.is_some()).cloned();
    let now = ctx.clock.unix_ms();
    let kept = tokio::task::spawn_blocking(move || match (record, finished) {
        (Some(record), false) => outbox.hold_job(job, &record, envelope.msg_id, &payload),
        (Some(record), true) => {
            let files = upload
                .map(|h| match files_of(&h) {
                    Ok((files, _)) => files
                        .into_iter()
                        .map(|f| (f.name, crate::upload::queued(f.bytes, now)))
                        .collect(),
                    Err(e) => {
                        tracing::error!(job = %h.job_id, error = %e, "cannot list the take's files: not queued for upload");
                        Vec::new()
                    }
                })
                .unwrap_or_default();
            outbox.finish_job(job, &record, envelope.msg_id, &payload, &files)
        }
        (None, _) => outbox.push(
            rakkr_protocol::topic::NodeChannel::Jobs,
            envelope.msg_id,
            &payload,
        ),
    })
    .await;
    match kept {
        Ok(Ok(())) => {
            ctx.outbox_ready.notify_one();
            if let Some(wake) = ctx.uploads.as_ref().filter(|_| finished) {
                wake.notify_one();
            }
        }
        Ok(Err(e)) => {
            ctx.telemetry
                .job_updates_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error = %e, "job update not kept");
        }
        Err(e) => tracing::error!(error = %e, "outbox task failed"),
    }
}

/// Jobs held in the outbox: running, or finished and not yet acknowledged.
async fn held_ids(ctx: &JobContext) -> Vec<JobId> {
    held_jobs(ctx).await.into_keys().collect()
}

/// Jobs held in the outbox, and whether each has finished (its final report
/// waits for acknowledgement).
async fn held_jobs(ctx: &JobContext) -> HashMap<JobId, bool> {
    let outbox = ctx.outbox.clone();
    match tokio::task::spawn_blocking(move || outbox.held_jobs()).await {
        Ok(Ok(held)) => held
            .into_iter()
            .map(|(id, bytes)| {
                let finished = serde_json::from_slice::<HeldJob>(&bytes).is_ok_and(|h| h.finished);
                (JobId::from_u128(id), finished)
            })
            .collect(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read held jobs");
            HashMap::new()
        }
        Err(_) => HashMap::new(),
    }
}

fn report_of(held: &HeldJob, summary: &TakeSummary) -> RecordingReport {
    let files = summary
        .files
        .iter()
        .map(|(path, info)| RecordedFile {
            name: file_name(path),
            frames: info.frames,
            bytes: info.bytes,
        })
        .collect();
    let mut r = recording(held, files, summary.frames, false);
    r.gaps = summary.gaps.len() as u32;
    r
}

fn recording(
    held: &HeldJob,
    mut files: Vec<RecordedFile>,
    frames: u64,
    recovered: bool,
) -> RecordingReport {
    let file_count = files.len() as u32;
    files.truncate(MAX_REPORTED_FILES);
    RecordingReport {
        files,
        file_count,
        frames,
        sample_rate: held.sample_rate,
        channels: held.channels,
        bits: held.bits,
        start_unix_ms: held.started_ms,
        gaps: 0,
        recovered,
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The finished files of a held job's take (its name, or its numbered
/// segments), in order, with the frames in them.
fn files_of(held: &HeldJob) -> std::io::Result<(Vec<RecordedFile>, u64)> {
    let dir = held.out.parent().unwrap_or(Path::new("."));
    let stem = held
        .out
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let ext = held
        .out
        .extension()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let whole = file_name(&held.out);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = file_name(p);
            name == whole
                || name
                    .strip_prefix(&format!("{stem}."))
                    .and_then(|rest| rest.strip_suffix(&format!(".{ext}")))
                    .is_some_and(|n| n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    paths.sort();
    let mut files = Vec::new();
    let mut total = 0;
    for path in paths {
        // On a finished file recovery changes nothing and reads its length.
        let frames = crate::take_file::recover(&path)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .samples;
        let bytes = std::fs::metadata(&path)?.len();
        total += frames;
        files.push(RecordedFile {
            name: file_name(&path),
            frames,
            bytes,
        });
    }
    Ok((files, total))
}

fn bounded(detail: String) -> String {
    crate::run::bounded_detail(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Signal, SyntheticSource};
    use rakkr_protocol::MessageId;
    use rakkr_protocol::watchdog::WatchdogRules;
    use std::sync::atomic::Ordering;

    fn context(outbox_limit: u64, dir: &Path) -> JobContext {
        let source = SyntheticSource::new(8000, 2, 80, Signal::Silence, 0);
        let pipeline = CapturePipeline::for_test(Box::new(source));
        JobContext {
            node: NodeId::new("n").unwrap(),
            device_name: "synthetic".into(),
            recordings_dir: dir.to_owned(),
            max_jobs: 2,
            pipeline: Arc::new(pipeline),
            outbox: Arc::new(Outbox::in_memory(outbox_limit).unwrap()),
            outbox_ready: Arc::default(),
            link: Arc::default(),
            clock: Arc::new(crate::clock::SystemClock),
            telemetry: Arc::default(),
            server_online: Arc::default(),
            take_rules: Arc::new(watch::channel(Default::default()).0),
            uploads: None,
        }
    }

    #[tokio::test]
    async fn job_updates_the_outbox_cannot_keep_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(64, dir.path());
        let update = update(JobId::new(1), 1, JobState::Failed, 1, "x".repeat(200), None);
        keep(&ctx, None, false, update).await;
        assert_eq!(ctx.telemetry.job_updates_dropped.load(Ordering::Relaxed), 1);
        assert!(ctx.outbox.is_empty().unwrap());
    }

    #[tokio::test]
    async fn offers_the_node_cannot_run_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(1 << 20, dir.path());
        let mut running = HashMap::new();
        let spec = |channels: &str, device: &str| -> JobSpec {
            serde_json::from_value(serde_json::json!({"channels": channels, "device": device}))
                .unwrap()
        };
        for (spec, why) in [
            (spec("3", "default"), "does not exist"),
            (spec("1", "hw:9"), "no capture device"),
        ] {
            let r = prepare(&ctx, &running, JobId::new(2), &spec).unwrap_err();
            assert!(r.contains(why), "{r}");
        }
        // A running take holds its channels.
        let job = JobId::new(3);
        offer(&ctx, &mut running, job, 7, 30_000, spec("1,2", "default")).await;
        assert!(running.contains_key(&job));
        let busy = prepare(&ctx, &running, JobId::new(4), &spec("2", "default")).unwrap_err();
        assert!(busy.contains("already recording"), "{busy}");
        // Refusals and starts are reported through the outbox.
        let pending = ctx.outbox.pending(10).unwrap();
        assert_eq!(pending.len(), 1, "the running report");
        for r in running.values() {
            r.take.stop();
        }
    }

    /// The order to delete a take: its files and queue entries go, other
    /// takes stay, and the report waits in the outbox. A crash after the
    /// files went and before the report was kept (the first step alone)
    /// is finished when the order comes again.
    #[tokio::test]
    async fn a_take_ordered_deleted_goes_with_its_queue_entries_and_is_reported_once_done() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(1 << 20, dir.path());
        let (gone, kept) = (JobId::new(10), JobId::new(11));
        let names = [
            format!("{gone}.flac"),
            format!("{gone}.0001.flac"),
            format!("{gone}.0002.flac.part"),
        ];
        for name in &names {
            std::fs::write(dir.path().join(name), b"audio").unwrap();
            ctx.outbox
                .set_upload(gone.as_u128(), name, Some(b"{}"))
                .unwrap();
        }
        let other = format!("{kept}.flac");
        std::fs::write(dir.path().join(&other), b"audio").unwrap();
        ctx.outbox
            .set_upload(kept.as_u128(), &other, Some(b"{}"))
            .unwrap();

        // The crash: the files went, nothing else did.
        let mut removed = remove_take_files(dir.path(), gone).unwrap();
        removed.sort();
        let mut want = names.to_vec();
        want.sort();
        assert_eq!(removed, want);
        assert!(ctx.outbox.is_empty().unwrap(), "no report yet");
        assert_eq!(ctx.outbox.uploads().unwrap().len(), 4);

        // The order again: nothing left to delete, and the take is reported.
        delete_take(&ctx, gone).await;
        let queue: Vec<_> = ctx
            .outbox
            .uploads()
            .unwrap()
            .into_iter()
            .map(|(job, name, _)| (job, name))
            .collect();
        assert_eq!(
            queue,
            [(kept.as_u128(), other.clone())],
            "the other take stays queued"
        );
        assert!(dir.path().join(&other).exists(), "the other take stays");
        let pending = ctx.outbox.pending(10).unwrap();
        assert_eq!(pending.len(), 1);
        let report = Envelope::<JobReport>::decode(&pending[0].payload).unwrap();
        assert_eq!(report.body, JobReport::Deleted { job_id: gone });
        // A third time (the report crossed the order): reported again, harmless.
        delete_take(&ctx, gone).await;
        assert_eq!(ctx.outbox.pending(10).unwrap().len(), 2);
    }

    /// A schedule for channel 2 whose daily window (UTC) opened a second
    /// before `now` and lasts ten minutes more.
    fn due_schedule(now: u64) -> (NodeSchedule, Vec<(NodeSchedule, Calendar)>) {
        // A daily window around now, in UTC.
        let hms = |ms: u64| {
            let s = ms / 1000 % 86_400;
            format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
        };
        let schedule: NodeSchedule = serde_json::from_value(serde_json::json!({
            "id": rakkr_protocol::ScheduleId::new(now - 60_000),
            "revision": 3,
            "created_ms": now - 60_000,
            "spec": {
                "name": "Offline check",
                "node": "n",
                "job": {"channels": "2"},
                "timing": {
                    "recurrence": {"mode": "daily"},
                    "time_zone": "UTC",
                    "window": {"start": hms(now - 1_000), "end": hms(now + 600_000)}
                },
                "tags": ["offline"]
            }
        }))
        .unwrap();
        let calendars = compile(NodeSchedules {
            schedules: vec![schedule.clone()],
        });
        assert_eq!(calendars.len(), 1);
        (schedule, calendars)
    }

    #[tokio::test]
    async fn a_due_occurrence_is_started_once_by_the_node_and_handed_a_lease_later() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(1 << 20, dir.path());
        let now = ctx.clock.unix_ms();
        let (schedule, calendars) = due_schedule(now);
        let mut running = HashMap::new();
        let mut autonomy = Autonomy::default();
        start_due_occurrences(&ctx, &mut running, &calendars, &mut autonomy).await;
        let occurrence = calendars[0].1.due_at(now).unwrap();
        let job = occurrence_job_id(schedule.id, schedule.created_ms, &occurrence, 0);
        assert_eq!(running.keys().copied().collect::<Vec<_>>(), [job]);
        let r = &running[&job];
        assert_eq!(r.held.lease_id, 0);
        assert!(r.sources == [1], "channel 2 only");
        // Its running report names the occurrence, with lease 0.
        let pending = ctx.outbox.pending(10).unwrap();
        assert_eq!(pending.len(), 1);
        let env = Envelope::<JobReport>::decode(&pending[0].payload).unwrap();
        let JobReport::Update(u) = env.body else {
            panic!()
        };
        assert_eq!((u.job_id, u.lease_id, u.state), (job, 0, JobState::Running));
        let a = u.autonomous.unwrap();
        assert_eq!((a.schedule, a.revision), (schedule.id, 3));
        assert_eq!(a.occurrence, occurrence.key);
        assert_eq!(a.tags, ["offline"]);
        let length = a.spec.duration_s.unwrap();
        assert!(
            (599..=601).contains(&length),
            "to the window's end: {length}"
        );

        // Looking again starts nothing more, also after the take is let go.
        start_due_occurrences(&ctx, &mut running, &calendars, &mut autonomy).await;
        assert_eq!(running.len(), 1);
        assert!(was_started(&ctx, job).await);
        // The server's offer hands the take a lease; heartbeats go under it.
        let r = running.get_mut(&job).unwrap();
        take_over(&ctx, r, 42, 30_000).await;
        assert_eq!(r.held.lease_id, 42);
        let kept: Vec<HeldJob> = ctx
            .outbox
            .held_jobs()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect();
        assert_eq!(kept[0].lease_id, 42, "kept across restarts");
        for r in running.values() {
            r.take.stop();
        }
        let mut gone = HashMap::new();
        std::mem::swap(&mut gone, &mut running);
        for (_, r) in gone {
            finish(&ctx, r, None).await;
        }
        let ids: Vec<MessageId> = ctx
            .outbox
            .pending(10)
            .unwrap()
            .iter()
            .map(|e| e.msg_id)
            .collect();
        ctx.outbox.acknowledge(&ids).unwrap();
        assert!(ctx.outbox.held_jobs().unwrap().is_empty());
        start_due_occurrences(&ctx, &mut running, &calendars, &mut Autonomy::default()).await;
        assert!(running.is_empty(), "never twice");
    }

    #[tokio::test]
    async fn a_take_cut_by_a_crash_goes_on_under_the_occurrence_s_next_job() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(1 << 20, dir.path());
        let now = ctx.clock.unix_ms();
        let (schedule, calendars) = due_schedule(now);
        let occurrence = calendars[0].1.due_at(now).unwrap();
        let job = |n| occurrence_job_id(schedule.id, schedule.created_ms, &occurrence, n);
        let mut running = HashMap::new();
        start_due_occurrences(&ctx, &mut running, &calendars, &mut Autonomy::default()).await;
        assert_eq!(running.keys().copied().collect::<Vec<_>>(), [job(0)]);
        // The agent dies: the take is never finished, its job stays held.
        for (_, r) in running.drain() {
            r.take.stop();
        }
        // The next start reports it and remembers it as cut ...
        report_interrupted(&ctx).await;
        assert!(ctx.outbox.was_interrupted(job(0).as_u128()).unwrap());
        // ... and the window goes on under the next job, once.
        start_due_occurrences(&ctx, &mut running, &calendars, &mut Autonomy::default()).await;
        assert_eq!(running.keys().copied().collect::<Vec<_>>(), [job(1)]);
        let pending = ctx.outbox.pending(10).unwrap();
        let env = Envelope::<JobReport>::decode(&pending.last().unwrap().payload).unwrap();
        let JobReport::Update(u) = env.body else {
            panic!()
        };
        assert_eq!((u.job_id, u.state), (job(1), JobState::Running));
        assert_eq!(u.autonomous.unwrap().occurrence, occurrence.key);
        start_due_occurrences(&ctx, &mut running, &calendars, &mut Autonomy::default()).await;
        assert_eq!(running.len(), 1, "one take at a time");
        // A take that ends as planned ends the occurrence for the node.
        for (_, r) in running.drain() {
            r.take.stop();
            finish(&ctx, r, None).await;
        }
        start_due_occurrences(&ctx, &mut running, &calendars, &mut Autonomy::default()).await;
        assert!(running.is_empty(), "not restarted after a take that ended");
    }

    #[tokio::test]
    async fn a_take_s_own_watchdog_rules_hold_while_it_records() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(1 << 20, dir.path());
        let mut running = HashMap::new();
        let rules = WatchdogRules {
            silence_s: 3,
            ..WatchdogRules::DEFAULT
        };
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "channels": "2", "watchdog": {"silence_s": 3}
        }))
        .unwrap();
        let plain: JobSpec = serde_json::from_value(serde_json::json!({"channels": "1"})).unwrap();
        let (job, other) = (JobId::new(5), JobId::new(6));
        offer(&ctx, &mut running, job, 7, 30_000, spec).await;
        offer(&ctx, &mut running, other, 8, 30_000, plain).await;
        assert_eq!(
            *ctx.take_rules.borrow(),
            crate::watchdog::TakeRules::from([(job, (vec![1], rules))]),
            "the take's channel with its rules; the plain take keeps the node's"
        );
        for (_, r) in running.drain() {
            r.take.stop();
            finish(&ctx, r, None).await;
        }
        assert!(ctx.take_rules.borrow().is_empty(), "gone with the take");
    }
}
