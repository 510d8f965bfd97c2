//! Recording schedules on the server: the runner that starts due
//! occurrences, run-now and skip-next, and the JSON API.
//!
//! The runner ticks every [`SCHEDULE_INTERVAL`]. For every enabled schedule
//! it asks the schedule's calendar ([`rakkr_protocol::schedule`]) which
//! occurrence is due now and, unless it already knows that occurrence has a
//! job holding its channels, asks the store to start it
//! ([`Store::start_occurrence`]: one transaction, so an occurrence gets
//! exactly one job however many ticks, restarts or server replicas ask).
//!
//! - A job runs to its occurrence's end: its duration is the time left,
//!   rounded up to whole seconds. An occurrence the server reaches late (it
//!   was down at the start) records what is left of its window; one with less
//!   than [`rakkr_protocol::schedule::MIN_REMAINING_MS`] left is not started.
//! - A job that failed is replaced after [`RESTART_AFTER`] while the window
//!   lasts; one whose take was cut by a crash or power loss (completed,
//!   `recovered`) at once; an always-on schedule's job after any end (to
//!   stop recording, disable the schedule).
//! - An occurrence that cannot start (its channels are busy, the node cannot
//!   take the job) is deferred and retried every tick; the store raises a
//!   `schedule_deferred` health event once, and `schedule_missed` if the
//!   window closes first.
//! - Editing, disabling or deleting a schedule never stops a take it started:
//!   audio is stopped by people (Stop on the node page or the API).
//! - Every job the runner creates is in the audit log as `runner:schedule`;
//!   every change to a schedule as its author's.
//!
//! Nodes keep their schedules ([`run_sync`] keeps the retained
//! `nodes/{node}/cmd/schedules` current) and start due occurrences by
//! themselves while the server is unreachable. Each job of an occurrence
//! (its first, and each restart) has an id both sides compute alike
//! ([`rakkr_protocol::schedule::occurrence_job_id`]), so the job the runner
//! makes and the one the node started are the same job; the desk reconciles the node's reports
//! ([`Store::adopt_job`]). Decision 0014 has the whole design.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rakkr_protocol::job::JobSpec;
use rakkr_protocol::schedule::{Calendar, Occurrence, Recurrence, ScheduleSpec};
use rakkr_protocol::schedule::{MAX_NODE_SCHEDULES, NodeSchedule, NodeSchedules};
use rakkr_protocol::state::{JobState, Lifecycle};
use rakkr_protocol::{NodeId, ScheduleId};
use rakkr_store::{
    AuditEntry, JobId, JobRecord, OccurrenceJob, OccurrenceRecord, OccurrenceStart, RestartPolicy,
    ScheduleRecord, ScheduledBy, Store, StoreError,
};
use tokio_util::sync::CancellationToken;

use crate::audit::AuditChange;
use crate::clock::Clock;
use crate::http::{AppState, Problem, blocking, job_problem, problem, store_problem};
use crate::jobs::NamedProfileRef;
use crate::jobs::{Commands, JobRequestError, Outbound};
use crate::policies::{RecordingProfiles, WatchdogPolicies};

/// How often the runner looks for due occurrences.
pub const SCHEDULE_INTERVAL: Duration = Duration::from_secs(1);

/// How long after a failed job its occurrence starts again.
pub const RESTART_AFTER: Duration = Duration::from_secs(10);

/// How far ahead the API lists upcoming occurrences.
pub const UPCOMING_DAYS: u64 = 14;

/// Most upcoming occurrences and past occurrence records one answer lists.
pub const MAX_LISTED_OCCURRENCES: usize = 60;

const DAY_MS: u64 = 86_400_000;

#[derive(Debug, Default)]
pub struct ScheduleStats {
    pub started: AtomicU64,
    /// Occurrences due but deferred at the last tick (a gauge).
    pub deferred: AtomicU64,
    pub missed: AtomicU64,
    pub store_errors: AtomicU64,
}

/// What the runner knows about a due occurrence, so that it does not ask the
/// store every tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Its job holds its channels (or is lost, and may come back).
    Running(JobId),
    /// It ended and will not start again.
    Done,
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct Tick {
    pub started: Vec<JobRecord>,
    pub deferred: usize,
    pub missed: Vec<OccurrenceRecord>,
}

/// The schedule runner's state between ticks. The store holds the truth;
/// this only saves work.
#[derive(Default)]
pub struct ScheduleRunner {
    generation: Option<u64>,
    schedules: Vec<(ScheduleRecord, Calendar)>,
    known: HashMap<(ScheduleId, String), Known>,
    /// Whose constraints a schedule naming a profile must meet when each
    /// occurrence starts (none: not checked).
    profiles: Option<Arc<RecordingProfiles>>,
}

fn restart_policy(spec: &ScheduleSpec) -> RestartPolicy {
    RestartPolicy {
        after_failure_ms: RESTART_AFTER.as_millis() as u64,
        after_any_end: matches!(spec.timing.recurrence, Recurrence::AlwaysOn),
    }
}

impl ScheduleRunner {
    /// A runner that checks occurrences against their named profiles.
    pub fn with_profiles(profiles: Arc<RecordingProfiles>) -> ScheduleRunner {
        ScheduleRunner {
            profiles: Some(profiles),
            ..ScheduleRunner::default()
        }
    }

    /// Start what is due at `now_ms`. Runs on a blocking thread.
    pub fn tick(&mut self, store: &dyn Store, now_ms: u64) -> Result<Tick, StoreError> {
        let generation = store.schedules_generation()?;
        if self.generation != Some(generation) {
            self.schedules = store
                .schedules()?
                .into_iter()
                .filter_map(|r| match r.spec.timing.calendar() {
                    Ok(c) => Some((r, c)),
                    Err(e) => {
                        // Checked when stored; only a newer server's rule gets here.
                        tracing::error!(schedule = %r.id, error = %e, "schedule not usable");
                        None
                    }
                })
                .collect();
            self.generation = Some(generation);
        }
        let mut tick = Tick::default();
        let mut known = HashMap::new();
        for (record, calendar) in &self.schedules {
            if !record.spec.enabled {
                continue;
            }
            let Some(o) = calendar.due_at(now_ms) else {
                continue;
            };
            let key = (record.id, o.key.clone());
            match self.known.get(&key) {
                Some(Known::Done) => {
                    known.insert(key, Known::Done);
                    continue;
                }
                Some(Known::Running(id)) => {
                    let state = store.job(*id)?.map(|j| j.state);
                    if state.is_some_and(|s| s.occupies_channels() || s == JobState::Lost) {
                        known.insert(key, Known::Running(*id));
                        continue;
                    }
                }
                None => {}
            }
            if !o.worth_starting(now_ms) {
                continue;
            }
            let restart = restart_policy(&record.spec);
            let profiles = self.profiles.as_deref();
            match start_occurrence(store, profiles, record, &o, restart, now_ms)? {
                OccurrenceStart::Started(job) => {
                    crate::audit::record_now(
                        store,
                        AuditEntry {
                            at_ms: now_ms,
                            actor: "runner:schedule".into(),
                            action: "start scheduled recording".into(),
                            target: Some(format!("job:{}", job.id)),
                            outcome: "allowed".into(),
                            reason: Some(format!(
                                "schedule {:?} ({}), occurrence {}",
                                record.spec.name, record.id, o.key
                            )),
                            after: Some(crate::jobs::audit_view(&job)),
                            ..Default::default()
                        },
                    );
                    known.insert(key, Known::Running(job.id));
                    tick.started.push(*job);
                }
                OccurrenceStart::Handled(Some(id)) => match store.job(id)? {
                    None => {
                        known.insert(key, Known::Done);
                    }
                    // Running, or ended for good.
                    Some(job) if restart.restart_at(&job).is_none() => {
                        let state = if job.state.is_terminal() {
                            Known::Done
                        } else {
                            Known::Running(id)
                        };
                        known.insert(key, state);
                    }
                    // Failed or cut: left to the store's back-off, asked again.
                    Some(_) => {}
                },
                OccurrenceStart::Handled(None) => {}
                OccurrenceStart::Deferred(_) => tick.deferred += 1,
                // Changed under us: reload on the next tick.
                OccurrenceStart::Stale => self.generation = None,
            }
        }
        self.known = known;
        tick.missed = store.expire_deferrals(now_ms)?;
        Ok(tick)
    }
}

/// The job that records `occurrence` of `schedule` from `now_ms` to its
/// end, or why the node cannot take it (also: the node no longer fits the
/// schedule's named profile, e.g. its device runs at another rate now).
fn scheduled_job(
    store: &dyn Store,
    profiles: Option<&RecordingProfiles>,
    schedule: &ScheduleRecord,
    occurrence: &Occurrence,
    now_ms: u64,
) -> Result<OccurrenceJob, StoreError> {
    let named = match (profiles, &schedule.spec.profile) {
        (Some(profiles), Some(name)) => profiles.get(name).map(|p| NamedProfileRef {
            name: name.clone(),
            profile: p.clone(),
        }),
        _ => None,
    };
    let duration_s = occurrence.take_length_s(now_ms);
    let spec = JobSpec {
        duration_s,
        ..schedule.spec.job.clone()
    };
    Ok(
        match crate::jobs::plan_job(store, schedule.spec.node.clone(), spec, named.as_ref()) {
            Ok(mut new) => {
                new.scheduled = Some(ScheduledBy {
                    schedule: schedule.id,
                    occurrence: occurrence.key.clone(),
                });
                new.tags = schedule.spec.tags.clone();
                (new.title, new.folder) = schedule.spec.recording_names(&occurrence.key, now_ms);
                new.not_after_ms = (occurrence.end_ms != u64::MAX).then_some(occurrence.end_ms);
                OccurrenceJob::Ready(Box::new(new))
            }
            Err(JobRequestError::Store(e)) => return Err(e),
            Err(e) => OccurrenceJob::Blocked(e.to_string()),
        },
    )
}

/// Start `occurrence` of `schedule` at `now_ms`, recording until its end.
fn start_occurrence(
    store: &dyn Store,
    profiles: Option<&RecordingProfiles>,
    schedule: &ScheduleRecord,
    occurrence: &Occurrence,
    restart: RestartPolicy,
    now_ms: u64,
) -> Result<OccurrenceStart, StoreError> {
    let job = scheduled_job(store, profiles, schedule, occurrence, now_ms)?;
    store.start_occurrence(
        schedule.id,
        schedule.revision,
        occurrence,
        job,
        restart,
        now_ms,
    )
}

/// The runner's loop: a tick every [`SCHEDULE_INTERVAL`] until shutdown;
/// nodes with new jobs are woken.
pub async fn run(
    store: Arc<dyn Store>,
    profiles: Arc<RecordingProfiles>,
    commands: Commands,
    clock: Arc<dyn Clock>,
    stats: Arc<ScheduleStats>,
    shutdown: CancellationToken,
) {
    let mut ticks = crate::clock::Ticks::every(SCHEDULE_INTERVAL, shutdown.clone());
    let runner = Arc::new(std::sync::Mutex::new(ScheduleRunner::with_profiles(
        profiles,
    )));
    loop {
        if !ticks.next().await {
            return;
        }
        let (store, runner) = (store.clone(), runner.clone());
        let now = clock.unix_ms();
        let done = tokio::task::spawn_blocking(move || {
            let mut runner = runner.lock().unwrap_or_else(|p| p.into_inner());
            runner.tick(&*store, now)
        })
        .await;
        match done {
            Ok(Ok(tick)) => {
                for job in &tick.started {
                    tracing::info!(node = %job.node, job = %job.id, "scheduled recording queued");
                    commands.wake(&job.node);
                }
                for m in &tick.missed {
                    tracing::warn!(schedule = %m.schedule, occurrence = %m.occurrence.key, "scheduled occurrence missed");
                }
                stats
                    .started
                    .fetch_add(tick.started.len() as u64, Ordering::Relaxed);
                stats
                    .deferred
                    .store(tick.deferred as u64, Ordering::Relaxed);
                stats
                    .missed
                    .fetch_add(tick.missed.len() as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                stats.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "schedule runner: store error");
            }
            Err(e) => tracing::error!(error = %e, "schedule runner task failed"),
        }
    }
}

/// Every schedule of `node`, as the node keeps them, oldest first.
pub fn node_schedules(all: &[ScheduleRecord], node: &NodeId) -> NodeSchedules {
    NodeSchedules {
        schedules: all
            .iter()
            .filter(|r| &r.spec.node == node)
            .map(|r| NodeSchedule {
                id: r.id,
                revision: r.revision,
                created_ms: r.created_ms,
                // What only the server uses stays with it: appliances of an
                // older build refuse fields they do not know, and a node
                // records with `job`, which already has the profile's encoding.
                spec: ScheduleSpec {
                    profile: None,
                    watchdog: None,
                    delivery: None,
                    name_template: None,
                    folder_template: None,
                    ..r.spec.clone()
                },
            })
            .collect(),
    }
}

/// Keep every node's retained `cmd/schedules` equal to its schedules: sent
/// for every known node when the server starts (a schedule deleted while it
/// was down must not live on in a broker or on an appliance), then for each
/// node whose schedules changed. A message the command queue could not take
/// is sent again on the next pass.
pub async fn run_sync(store: Arc<dyn Store>, commands: Commands, shutdown: CancellationToken) {
    let mut ticks = crate::clock::Ticks::every(SCHEDULE_INTERVAL, shutdown.clone());
    let mut sent: HashMap<NodeId, NodeSchedules> = HashMap::new();
    let mut synced: Option<u64> = None;
    let mut first = true;
    loop {
        if !ticks.next().await {
            return;
        }
        let store = store.clone();
        let read = tokio::task::spawn_blocking(move || {
            let generation = store.schedules_generation()?;
            if synced == Some(generation) {
                return Ok(None);
            }
            let nodes = if first { store.nodes()? } else { Vec::new() };
            Ok::<_, StoreError>(Some((generation, store.schedules()?, nodes)))
        })
        .await;
        let (generation, all, known) = match read {
            Ok(Ok(Some(read))) => read,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "schedule sync: store error");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "schedule sync task failed");
                continue;
            }
        };
        let mut nodes: std::collections::BTreeSet<NodeId> =
            all.iter().map(|r| r.spec.node.clone()).collect();
        nodes.extend(known.into_iter().map(|n| n.id));
        nodes.extend(sent.keys().cloned());
        let mut complete = true;
        for node in nodes {
            let list = node_schedules(&all, &node);
            if !first && sent.get(&node) == Some(&list) {
                continue;
            }
            if commands.try_send(Outbound::Schedules(node.clone(), list.clone())) {
                sent.insert(node, list);
            } else {
                complete = false;
            }
        }
        if complete {
            synced = Some(generation);
            first = false;
        }
    }
}

/// Refuse a schedule that would give its node more than it can keep: more
/// than [`MAX_NODE_SCHEDULES`], or a list over the payload bound.
fn check_node_room(store: &dyn Store, id: ScheduleId, spec: &ScheduleSpec) -> Result<(), Problem> {
    let mut all = store.schedules().map_err(store_problem)?;
    all.retain(|r| r.id != id);
    all.push(ScheduleRecord {
        id,
        spec: spec.clone(),
        created_ms: 0,
        updated_ms: 0,
        revision: 0,
    });
    let list = node_schedules(&all, &spec.node);
    if list.schedules.len() > MAX_NODE_SCHEDULES {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "node {} has {MAX_NODE_SCHEDULES} schedules, the most one node keeps",
                spec.node
            ),
        ));
    }
    let bytes = rakkr_protocol::Envelope::stamped(0, list).encode().len();
    if bytes > rakkr_protocol::MAX_PAYLOAD_BYTES {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "node {}'s schedules would take {bytes} bytes, over the {} a message carries; \
                 shorten skip lists or merge schedules",
                spec.node,
                rakkr_protocol::MAX_PAYLOAD_BYTES
            ),
        ));
    }
    Ok(())
}

/// Start a recording of `schedule` now, outside its calendar: for the
/// window's length (and the late buffer), or until stopped when it has no
/// window. Like any job started by hand, it is refused when its channels are
/// busy (not deferred) and never restarted; it names the schedule and the
/// occurrence `run-{now_ms}`.
pub fn run_now(
    store: &dyn Store,
    commands: &Commands,
    profiles: Option<&RecordingProfiles>,
    schedule: &ScheduleRecord,
    now_ms: u64,
) -> Result<JobRecord, JobRequestError> {
    if !schedule.spec.enabled {
        return Err(JobRequestError::Conflict(
            "the schedule is disabled; enable it to run it".into(),
        ));
    }
    if matches!(schedule.spec.timing.recurrence, Recurrence::AlwaysOn) {
        return Err(JobRequestError::Conflict(
            "an always-on schedule records all the time; there is nothing to run now".into(),
        ));
    }
    let end_ms = match &schedule.spec.timing.window {
        Some(w) => now_ms + (w.nominal_s() as u64 + schedule.spec.timing.stop_late_s as u64) * 1000,
        None => u64::MAX,
    };
    let run = Occurrence {
        key: format!("run-{now_ms}"),
        window_start_ms: now_ms,
        window_end_ms: end_ms,
        start_ms: now_ms,
        end_ms,
        exception: None,
    };
    let new = match scheduled_job(store, profiles, schedule, &run, now_ms)
        .map_err(JobRequestError::Store)?
    {
        OccurrenceJob::Ready(new) => *new,
        OccurrenceJob::Blocked(why) => return Err(JobRequestError::Invalid(why)),
    };
    let job = store.enqueue_job(new, now_ms).map_err(|e| match e {
        StoreError::Refused(reason) => JobRequestError::Conflict(reason),
        e => JobRequestError::Store(e),
    })?;
    commands.wake(&job.node);
    Ok(job)
}

/// `spec` with its next occurrence (after `now_ms`) added to the skip list,
/// and skips more than two days past dropped; `None` if nothing is coming.
pub fn skip_next(spec: &ScheduleSpec, now_ms: u64) -> Result<Option<ScheduleSpec>, String> {
    let calendar = spec.timing.calendar()?;
    let Some(next) = calendar.next_after(now_ms) else {
        return Ok(None);
    };
    let date = next
        .key
        .parse()
        .map_err(|e| format!("occurrence {}: {e}", next.key))?;
    let two_days_ago = calendar.local_date(now_ms.saturating_sub(2 * DAY_MS));
    let mut out = spec.clone();
    out.timing.skip.retain(|d| d.as_jiff() >= two_days_ago);
    out.timing.skip.push(date);
    out.timing.skip.sort();
    out.timing.skip.dedup();
    Ok(Some(out))
}

// ---- JSON API ----

/// A schedule with its next occurrence.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ScheduleView {
    #[serde(flatten)]
    pub schedule: ScheduleRecord,
    /// The next occurrence to record (exceptions honoured), if any within 400 days.
    pub next: Option<Occurrence>,
}

/// One schedule: its upcoming occurrences and what became of past ones.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ScheduleDetail {
    pub schedule: ScheduleRecord,
    /// Occurrences recording in the next 14 days, skipped ones marked.
    pub upcoming: Vec<Occurrence>,
    /// Occurrences that were due: their jobs and deferrals, newest first.
    pub history: Vec<OccurrenceRecord>,
}

/// Upcoming occurrences of a schedule from `now_ms`.
pub fn upcoming(calendar: &Calendar, now_ms: u64) -> Vec<Occurrence> {
    calendar.occurrences(
        now_ms,
        now_ms + UPCOMING_DAYS * DAY_MS,
        MAX_LISTED_OCCURRENCES,
    )
}

pub fn view(record: ScheduleRecord, now_ms: u64) -> ScheduleView {
    let next = record
        .spec
        .timing
        .calendar()
        .ok()
        .filter(|_| record.spec.enabled)
        .and_then(|c| c.next_after(now_ms));
    ScheduleView {
        schedule: record,
        next,
    }
}

pub fn schedule_id(text: &str) -> Result<ScheduleId, Problem> {
    text.parse().map_err(|_| {
        problem(
            StatusCode::NOT_FOUND,
            format!("{text:?} is not a schedule id"),
        )
    })
}

/// Bring every schedule that names a recording profile or a watchdog
/// policy to that profile's encoding and that policy's appliance rules as
/// configured now (run at start: both change with the configuration). Each
/// changed schedule gets a new revision, which the sync sends to its node,
/// and an audit record as `runner:policies`. A schedule naming a profile or
/// policy this server no longer has keeps what it had (logged). Returns how
/// many changed.
pub fn follow_policies(
    store: &dyn Store,
    profiles: &RecordingProfiles,
    policies: &WatchdogPolicies,
    now_ms: u64,
) -> Result<usize, StoreError> {
    let mut changed = 0;
    for record in store.schedules()? {
        let mut spec = record.spec.clone();
        let mut why = Vec::new();
        if let Some(name) = record.spec.profile.as_deref() {
            match profiles.get(name) {
                Some(profile) if spec.job.profile != profile.recording() => {
                    spec.job.profile = profile.recording();
                    why.push(format!("recording profile {name:?}"));
                }
                Some(_) => {}
                None => {
                    tracing::warn!(schedule = %record.id, profile = name, "the schedule's recording profile is not configured; it keeps recording as before")
                }
            }
        }
        if let Some(name) = record.spec.watchdog.as_deref() {
            match policies.get(name) {
                Some(policy) if spec.job.watchdog != Some(policy.appliance) => {
                    spec.job.watchdog = Some(policy.appliance);
                    why.push(format!("watchdog policy {name:?}"));
                }
                Some(_) => {}
                None => {
                    tracing::warn!(schedule = %record.id, policy = name, "the schedule's watchdog policy is not configured; its takes keep the rules they had")
                }
            }
        }
        if why.is_empty() {
            continue;
        }
        let (before, after) = store.update_schedule(record.id, spec, now_ms)?;
        let change = audit_change(record.id, Some(&before), Some(&after));
        let reason = format!("{} changed in the configuration", why.join(" and "));
        crate::audit::record_now(
            store,
            AuditEntry {
                at_ms: now_ms,
                actor: "runner:policies".into(),
                action: "follow configured policies".into(),
                target: change.target,
                outcome: "allowed".into(),
                reason: Some(reason.clone()),
                before: change.before,
                after: change.after,
                ..Default::default()
            },
        );
        tracing::info!(schedule = %record.id, %reason, "schedule follows its changed profile or policy");
        changed += 1;
    }
    Ok(changed)
}

fn audit_change(
    id: ScheduleId,
    before: Option<&ScheduleRecord>,
    after: Option<&ScheduleRecord>,
) -> AuditChange {
    let json = |r: &ScheduleRecord| serde_json::to_value(r).unwrap_or_default();
    AuditChange {
        target: Some(format!("schedule:{id}")),
        before: before.map(json),
        after: after.map(json),
    }
}

/// A schedule's upload policy must be one the server has, unless it keeps
/// one the configuration has since dropped (its recordings then get the
/// default).
fn check_delivery(
    policies: &crate::policies::DeliveryPolicies,
    spec: &ScheduleSpec,
    before: Option<&ScheduleSpec>,
) -> Result<(), Problem> {
    if before.is_some_and(|b| b.delivery == spec.delivery) {
        return Ok(());
    }
    policies
        .check_known(spec.delivery.as_deref())
        .map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, format!("delivery: {e}")))
}

/// Check a schedule as given, and against what its node announced.
pub fn check_spec(
    store: &dyn Store,
    policies: &WatchdogPolicies,
    profiles: &RecordingProfiles,
    spec: &mut ScheduleSpec,
) -> Result<(), Problem> {
    check_spec_replacing(store, policies, profiles, spec, None)
}

/// [`check_spec`] for a schedule that replaces `before`: a policy or
/// profile name it keeps unchanged may be one the configuration no longer
/// has, so a schedule can still be edited (say, disabled) without choosing
/// another first. The policy then falls back to the default and the
/// schedule keeps the encoding it has.
pub fn check_spec_replacing(
    store: &dyn Store,
    policies: &WatchdogPolicies,
    profiles: &RecordingProfiles,
    spec: &mut ScheduleSpec,
    before: Option<&ScheduleSpec>,
) -> Result<(), Problem> {
    let invalid = |e| problem(StatusCode::UNPROCESSABLE_ENTITY, e);
    spec.check().map_err(invalid)?;
    let kept = |name: &Option<String>, old: fn(&ScheduleSpec) -> &Option<String>| {
        name.is_some() && before.is_some_and(|b| old(b) == name)
    };
    let kept_watchdog = kept(&spec.watchdog, |b| &b.watchdog);
    // The appliance's rules for the schedule's takes come from its policy
    // (none named: the node's own); a kept policy the configuration dropped
    // keeps the rules the schedule had.
    match spec.watchdog.as_deref().map(|n| (n, policies.get(n))) {
        Some((_, Some(policy))) => spec.job.watchdog = Some(policy.appliance),
        Some((_, None)) if kept_watchdog => {
            spec.job.watchdog = before.and_then(|b| b.job.watchdog);
        }
        Some((name, None)) => {
            policies.check_known(Some(name)).map_err(invalid)?;
        }
        None => spec.job.watchdog = None,
    }
    let kept_profile = kept(&spec.profile, |b| &b.profile)
        && spec
            .profile
            .as_deref()
            .is_some_and(|n| profiles.get(n).is_none());
    let named = match &spec.profile {
        Some(_) if kept_profile => None,
        Some(name) => {
            let (name, profile) = profiles.require(name).map_err(invalid)?;
            spec.job.profile = profile.recording();
            Some(NamedProfileRef {
                name: name.to_owned(),
                profile: profile.clone(),
            })
        }
        None => None,
    };
    let probe = JobSpec {
        duration_s: Some(1),
        ..spec.job.clone()
    };
    match crate::jobs::plan_job(store, spec.node.clone(), probe, named.as_ref()) {
        Ok(_) => Ok(()),
        Err(JobRequestError::Store(e)) => Err(store_problem(e)),
        Err(e) => Err(problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
    }
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(b: JsonBody<T>) -> Result<T, Problem> {
    b.map(|Json(v)| v)
        .map_err(|e| problem(e.status(), e.body_text()))
}

pub async fn api_list(State(state): State<AppState>) -> Result<Response, Problem> {
    let (store, now) = (state.store.clone(), state.clock.unix_ms());
    let records = blocking(move || store.schedules().map_err(store_problem)).await?;
    let views: Vec<ScheduleView> = records.into_iter().map(|r| view(r, now)).collect();
    Ok(Json(views).into_response())
}

/// What the console and the API do to schedules, each on a blocking thread,
/// with the change for the audit record.
pub mod ops {
    use super::*;

    fn existing(store: &dyn Store, id: ScheduleId) -> Result<ScheduleRecord, Problem> {
        store
            .schedule(id)
            .map_err(store_problem)?
            .ok_or_else(|| problem(StatusCode::NOT_FOUND, format!("no schedule {id}")))
    }

    pub async fn detail(state: &AppState, id: ScheduleId) -> Result<ScheduleDetail, Problem> {
        let (store, now) = (state.store.clone(), state.clock.unix_ms());
        blocking(move || {
            let schedule = existing(&*store, id)?;
            let history = store
                .occurrence_records(id, MAX_LISTED_OCCURRENCES)
                .map_err(store_problem)?;
            let upcoming = schedule
                .spec
                .timing
                .calendar()
                .map(|c| upcoming(&c, now))
                .unwrap_or_default();
            Ok(ScheduleDetail {
                schedule,
                upcoming,
                history,
            })
        })
        .await
    }

    pub async fn create(
        state: &AppState,
        mut spec: ScheduleSpec,
    ) -> Result<(ScheduleRecord, AuditChange), Problem> {
        let (store, now) = (state.store.clone(), state.clock.unix_ms());
        let (policies, profiles) = (state.watchdog_policies.clone(), state.profiles.clone());
        let delivery = state.delivery_policies.clone();
        let record = blocking(move || {
            check_spec(&*store, &policies, &profiles, &mut spec)?;
            check_delivery(&delivery, &spec, None)?;
            let id = ScheduleId::new(now);
            check_node_room(&*store, id, &spec)?;
            let record = ScheduleRecord {
                id,
                spec,
                created_ms: now,
                updated_ms: now,
                revision: 1,
            };
            store
                .create_schedule(record.clone())
                .map_err(store_problem)?;
            Ok(record)
        })
        .await?;
        let change = audit_change(record.id, None, Some(&record));
        Ok((record, change))
    }

    pub async fn replace(
        state: &AppState,
        id: ScheduleId,
        mut spec: ScheduleSpec,
    ) -> Result<(ScheduleRecord, AuditChange), Problem> {
        let (store, now) = (state.store.clone(), state.clock.unix_ms());
        let (policies, profiles) = (state.watchdog_policies.clone(), state.profiles.clone());
        let delivery = state.delivery_policies.clone();
        let (before, after) = blocking(move || {
            let old = existing(&*store, id)?;
            check_spec_replacing(&*store, &policies, &profiles, &mut spec, Some(&old.spec))?;
            check_delivery(&delivery, &spec, Some(&old.spec))?;
            check_node_room(&*store, id, &spec)?;
            store.update_schedule(id, spec, now).map_err(store_problem)
        })
        .await?;
        let change = audit_change(id, Some(&before), Some(&after));
        Ok((after, change))
    }

    pub async fn delete(
        state: &AppState,
        id: ScheduleId,
    ) -> Result<(ScheduleRecord, AuditChange), Problem> {
        let (store, now) = (state.store.clone(), state.clock.unix_ms());
        let before =
            blocking(move || store.delete_schedule(id, now).map_err(store_problem)).await?;
        let change = audit_change(id, Some(&before), None);
        Ok((before, change))
    }

    pub async fn skip_next(
        state: &AppState,
        id: ScheduleId,
    ) -> Result<(ScheduleRecord, AuditChange), Problem> {
        let (store, now) = (state.store.clone(), state.clock.unix_ms());
        let (before, after) = blocking(move || {
            let current = existing(&*store, id)?;
            let spec = super::skip_next(&current.spec, now)
                .map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, e))?
                .ok_or_else(|| {
                    problem(
                        StatusCode::CONFLICT,
                        "the schedule has no coming occurrence to skip",
                    )
                })?;
            store.update_schedule(id, spec, now).map_err(store_problem)
        })
        .await?;
        let change = audit_change(id, Some(&before), Some(&after));
        Ok((after, change))
    }

    pub async fn run_now(
        state: &AppState,
        id: ScheduleId,
    ) -> Result<(JobRecord, AuditChange), Problem> {
        let (store, commands, now) = (
            state.store.clone(),
            state.commands.clone(),
            state.clock.unix_ms(),
        );
        let profiles = state.profiles.clone();
        let job = blocking(move || {
            let schedule = existing(&*store, id)?;
            super::run_now(&*store, &commands, Some(&profiles), &schedule, now).map_err(job_problem)
        })
        .await?;
        let change = crate::jobs::audit_change(None, &job);
        Ok((job, change))
    }
}

pub async fn api_get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let detail = ops::detail(&state, schedule_id(&id)?).await?;
    Ok(Json(detail).into_response())
}

pub async fn api_create(
    State(state): State<AppState>,
    spec: JsonBody<ScheduleSpec>,
) -> Result<Response, Problem> {
    let (record, change) = ops::create(&state, body(spec)?).await?;
    let now = state.clock.unix_ms();
    Ok(change.to((StatusCode::CREATED, Json(view(record, now))).into_response()))
}

pub async fn api_update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    spec: JsonBody<ScheduleSpec>,
) -> Result<Response, Problem> {
    let id = schedule_id(&id)?;
    let (after, change) = ops::replace(&state, id, body(spec)?).await?;
    Ok(change.to(Json(view(after, state.clock.unix_ms())).into_response()))
}

pub async fn api_delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (before, change) = ops::delete(&state, schedule_id(&id)?).await?;
    Ok(change.to(Json(before).into_response()))
}

pub async fn api_skip_next(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (after, change) = ops::skip_next(&state, schedule_id(&id)?).await?;
    Ok(change.to(Json(view(after, state.clock.unix_ms())).into_response()))
}

pub async fn api_run_now(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (job, change) = ops::run_now(&state, schedule_id(&id)?).await?;
    Ok(change.to((StatusCode::CREATED, Json(job)).into_response()))
}

#[cfg(test)]
mod tests {
    //! The runner against a real store with a controlled clock: ticks are
    //! called with chosen times, the store is reopened to stand for a server
    //! restart, and the node's side of a job is played through the store.

    use super::*;
    use rakkr_protocol::NodeId;
    use rakkr_protocol::job::JobUpdate;
    use rakkr_protocol::payload::{
        BootSlot, Capabilities, HealthChange, HealthCondition, RealtimeStatus,
    };
    use rakkr_protocol::schedule::{Timing, Window};
    use rakkr_protocol::state::Presence;
    use rakkr_protocol::watchdog::WatchdogRules;
    use rakkr_store::{NewJob, NodeDetails, NodeStatusUpdate, RedbStore};

    fn ms(s: &str) -> u64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64
    }

    fn announce(store: &dyn Store, node: &str) {
        store
            .record_node_statuses(&[NodeStatusUpdate {
                node: NodeId::new(node).unwrap(),
                presence: Presence::Online,
                details: Some(NodeDetails {
                    agent_version: "test".into(),
                    slot: BootSlot::None,
                    capabilities: Capabilities {
                        sources: vec!["alsa".into()],
                        channels: 2,
                        sample_rates: vec![48_000],
                        codecs: vec!["flac".into(), "wav".into()],
                        max_jobs: 4,
                        devices: Vec::new(),
                    },
                    realtime: RealtimeStatus::default(),
                }),
                received_ms: 1,
            }])
            .unwrap();
    }

    fn schedule(
        store: &dyn Store,
        node: &str,
        zone: &str,
        start: &str,
        end: &str,
    ) -> ScheduleRecord {
        let mut spec = ScheduleSpec {
            name: format!("{node} daily"),
            enabled: true,
            node: NodeId::new(node).unwrap(),
            job: serde_json::from_value(serde_json::json!({"channels": "1"})).unwrap(),
            timing: Timing {
                recurrence: Recurrence::Daily,
                time_zone: zone.into(),
                window: Some(Window {
                    start: start.parse().unwrap(),
                    end: end.parse().unwrap(),
                }),
                start_early_s: 0,
                stop_late_s: 0,
                skip: vec![],
                pauses: vec![],
            },
            tags: vec!["daily".into()],
            profile: None,
            watchdog: None,
            delivery: None,
            name_template: None,
            folder_template: None,
        };
        check_spec(
            store,
            &WatchdogPolicies::builtin(),
            &RecordingProfiles::builtin(),
            &mut spec,
        )
        .unwrap();
        let record = ScheduleRecord {
            id: ScheduleId::new(1_000),
            spec,
            created_ms: 1_000,
            updated_ms: 1_000,
            revision: 1,
        };
        store.create_schedule(record.clone()).unwrap();
        record
    }

    fn open(dir: &tempfile::TempDir) -> RedbStore {
        RedbStore::open(&dir.path().join("rakkr.redb")).unwrap()
    }

    fn profiles(toml_text: &str) -> RecordingProfiles {
        RecordingProfiles::from_config(toml::from_str(toml_text).unwrap()).unwrap()
    }

    fn policies(toml_text: &str) -> WatchdogPolicies {
        WatchdogPolicies::from_config(toml::from_str(toml_text).unwrap()).unwrap()
    }

    #[test]
    fn a_schedule_s_takes_carry_its_policy_s_appliance_rules_and_follow_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        announce(&store, "n1");
        let policy = |silence_s: u32| {
            policies(&format!(
                "default = \"quiet\"\n[policies.quiet]\nlow_signal_dbfs = -50.0\ngrace_s = 60\n\
                 cumulative_s = 60\nclear_s = 10\n[policies.quiet.appliance]\nsilence_s = {silence_s}\n"
            ))
        };
        let (first, profiles) = (policy(4), RecordingProfiles::builtin());
        let record = schedule(&store, "n1", "UTC", "06:00", "07:00");
        assert_eq!(
            record.spec.job.watchdog, None,
            "no policy named: the node's"
        );
        let (id, mut spec) = (record.id, record.spec);
        spec.watchdog = Some("quiet".into());
        // Rules given by hand are not the schedule's to choose: the policy's win.
        spec.job.watchdog = Some(WatchdogRules::DEFAULT);
        check_spec(&store, &first, &profiles, &mut spec).unwrap();
        assert_eq!(spec.job.watchdog.map(|r| r.silence_s), Some(4));
        store.update_schedule(id, spec.clone(), 2_000).unwrap();
        // The node keeps them with the schedule, for takes it starts alone.
        let kept = node_schedules(&store.schedules().unwrap(), &NodeId::new("n1").unwrap());
        assert_eq!(kept.schedules[0].spec.watchdog, None, "the name stays here");
        assert_eq!(
            kept.schedules[0].spec.job.watchdog.map(|r| r.silence_s),
            Some(4)
        );
        // The policy changes in the configuration: the schedule follows, once.
        assert_eq!(
            follow_policies(&store, &profiles, &first, 3_000).unwrap(),
            0
        );
        assert_eq!(
            follow_policies(&store, &profiles, &policy(9), 4_000).unwrap(),
            1
        );
        let now = store.schedule(id).unwrap().unwrap();
        assert_eq!(now.spec.job.watchdog.map(|r| r.silence_s), Some(9));
        // Dropping the policy name drops the rules.
        let mut plain = now.spec.clone();
        plain.watchdog = None;
        check_spec(&store, &policy(9), &profiles, &mut plain).unwrap();
        assert_eq!(plain.job.watchdog, None);
    }

    #[test]
    fn a_schedule_records_with_its_named_profile_and_follows_it_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        announce(&store, "n1");
        let first = profiles(
            "default_profile = \"talk\"\n[profiles.talk]\nbits = 16\nchannel_mode = \"mono\"\n",
        );
        let record = schedule(&store, "n1", "UTC", "06:00", "07:00");
        let (id, mut spec) = (record.id, record.spec);
        spec.profile = Some("talk".into());
        check_spec(&store, &WatchdogPolicies::builtin(), &first, &mut spec).unwrap();
        assert_eq!(spec.job.profile.bits, 16, "filled from the profile");
        store.update_schedule(id, spec.clone(), 2_000).unwrap();

        // Mono profile, stereo selection: refused with the reason.
        let mut stereo = spec.clone();
        stereo.job.channels = Some("1,2".into());
        let e = check_spec(&store, &WatchdogPolicies::builtin(), &first, &mut stereo).unwrap_err();
        assert!(
            e.detail
                .contains("profile \"talk\" does not fit: the profile records mono"),
            "{e:?}"
        );
        // A profile the server does not have.
        let mut unknown = spec.clone();
        unknown.profile = Some("loud".into());
        let e = check_spec(&store, &WatchdogPolicies::builtin(), &first, &mut unknown).unwrap_err();
        assert!(e.detail.contains("no recording profile \"loud\""), "{e:?}");

        // Unchanged profiles change nothing.
        assert_eq!(
            follow_policies(&store, &first, &WatchdogPolicies::builtin(), 3_000).unwrap(),
            0
        );
        // The configuration now says 24-bit WAV: the schedule follows, once.
        let second = profiles(
            "default_profile = \"talk\"\n[profiles.talk]\ncodec = \"wav\"\nbits = 24\nchannel_mode = \"mono\"\n",
        );
        assert_eq!(
            follow_policies(&store, &second, &WatchdogPolicies::builtin(), 4_000).unwrap(),
            1
        );
        assert_eq!(
            follow_policies(&store, &second, &WatchdogPolicies::builtin(), 5_000).unwrap(),
            0
        );
        let now = store.schedule(id).unwrap().unwrap();
        assert_eq!(
            now.spec.job.profile.codec,
            rakkr_protocol::job::CodecName::Wav
        );
        assert_eq!(now.spec.job.profile.bits, 24);
        assert_eq!(now.revision, 3);
        let audit = store.audit_records(0, 100).unwrap();
        let followed: Vec<_> = audit
            .iter()
            .filter(|r| r.entry.actor == "runner:policies")
            .collect();
        assert_eq!(followed.len(), 1);
        assert_eq!(
            followed[0].entry.target.as_deref(),
            Some("schedule:".to_owned() + &id.to_string()).as_deref()
        );
        // A profile dropped from the configuration: the schedule keeps what it had.
        let third = profiles("default_profile = \"other\"\n[profiles.other]\n");
        assert_eq!(
            follow_policies(&store, &third, &WatchdogPolicies::builtin(), 6_000).unwrap(),
            0
        );
        assert_eq!(store.schedule(id).unwrap().unwrap().revision, 3);
        // …and can still be edited (disabled here) while it names the old
        // profile; choosing another missing one is refused.
        let before = store.schedule(id).unwrap().unwrap().spec;
        let mut disabled = before.clone();
        disabled.enabled = false;
        check_spec_replacing(
            &store,
            &WatchdogPolicies::builtin(),
            &third,
            &mut disabled,
            Some(&before),
        )
        .unwrap();
        assert_eq!(
            disabled.job.profile.codec,
            rakkr_protocol::job::CodecName::Wav
        );
        let mut other = before.clone();
        other.profile = Some("gone-too".into());
        assert!(
            check_spec_replacing(
                &store,
                &WatchdogPolicies::builtin(),
                &third,
                &mut other,
                Some(&before)
            )
            .is_err()
        );
    }

    /// The node takes the job and records it to the end.
    fn node_completes(store: &dyn Store, job: &JobRecord, now_ms: u64) {
        // It claimed the job when it was queued, and records it until `now_ms`.
        let leased = store
            .claim_jobs(&job.node, 4, &[], job.created_ms, 60_000)
            .unwrap();
        let lease_id = leased
            .iter()
            .find(|j| j.id == job.id)
            .unwrap()
            .lease
            .unwrap()
            .id;
        for (i, state) in [JobState::Running, JobState::Completed]
            .into_iter()
            .enumerate()
        {
            let update = JobUpdate {
                job_id: job.id,
                lease_id,
                state,
                at_ms: now_ms,
                detail: String::new(),
                recording: None,
                autonomous: None,
            };
            let msg = rakkr_protocol::MessageId::new(now_ms + i as u64);
            store
                .apply_job_update(&job.node, msg, &update, now_ms)
                .unwrap();
        }
    }

    fn scheduled_jobs(store: &dyn Store, node: &str) -> Vec<JobRecord> {
        let mut jobs = store.jobs(Some(&NodeId::new(node).unwrap()), 1000).unwrap();
        jobs.retain(|j| j.scheduled.is_some());
        jobs.reverse();
        jobs
    }

    #[test]
    fn an_occurrence_that_no_longer_fits_its_profile_waits_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        announce(&store, "studio");
        let s = schedule(&store, "studio", "UTC", "10:00", "11:00");
        // Saved when the device ran at 96 kHz; it runs at 48 kHz now.
        let mut spec = s.spec.clone();
        spec.profile = Some("hi".into());
        store.update_schedule(s.id, spec, 2_000).unwrap();
        let hi = profiles("default_profile = \"hi\"\n[profiles.hi]\nsample_rate = 96000\n");
        let mut runner = ScheduleRunner::with_profiles(Arc::new(hi));
        let tick = runner.tick(&store, ms("2026-11-29T10:00:00Z")).unwrap();
        assert!(tick.started.is_empty());
        assert_eq!(tick.deferred, 1);
        let issues = store
            .health_issues(&rakkr_store::IssueQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert!(
            issues
                .iter()
                .any(|i| i.condition == HealthCondition::ScheduleDeferred
                    && i.detail.contains("needs the device at 96000 Hz")),
            "{issues:?}"
        );
        // Without profiles to check (or with a fitting one) it records.
        let mut plain = ScheduleRunner::default();
        assert_eq!(
            plain
                .tick(&store, ms("2026-11-29T10:00:05Z"))
                .unwrap()
                .started
                .len(),
            1
        );
    }

    #[test]
    fn each_occurrence_gets_one_job_across_ticks_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        announce(&store, "studio");
        let s = schedule(&store, "studio", "UTC", "10:00", "11:00");
        let mut runner = ScheduleRunner::default();
        assert!(
            runner
                .tick(&store, ms("2026-11-29T09:59:59Z"))
                .unwrap()
                .started
                .is_empty()
        );
        let tick = runner.tick(&store, ms("2026-11-29T10:00:00Z")).unwrap();
        assert_eq!(tick.started.len(), 1);
        let job = &tick.started[0];
        assert_eq!(job.spec.duration_s, Some(3600));
        assert_eq!(job.tags, ["daily"]);
        assert_eq!(
            job.scheduled,
            Some(ScheduledBy {
                schedule: s.id,
                occurrence: "2026-11-29".into()
            })
        );
        for t in [
            "2026-11-29T10:00:01Z",
            "2026-11-29T10:00:02Z",
            "2026-11-29T10:30:00Z",
        ] {
            assert!(
                runner.tick(&store, ms(t)).unwrap().started.is_empty(),
                "{t}"
            );
        }
        // The server restarts: a new runner over the reopened store.
        drop(store);
        let store = open(&dir);
        let mut runner = ScheduleRunner::default();
        assert!(
            runner
                .tick(&store, ms("2026-11-29T10:30:01Z"))
                .unwrap()
                .started
                .is_empty()
        );
        node_completes(&store, job, ms("2026-11-29T11:00:00Z"));
        assert!(
            runner
                .tick(&store, ms("2026-11-29T11:00:01Z"))
                .unwrap()
                .started
                .is_empty()
        );

        // Down over the next start: the occurrence records what is left.
        drop(store);
        let store = open(&dir);
        let mut runner = ScheduleRunner::default();
        let tick = runner.tick(&store, ms("2026-11-30T10:20:00Z")).unwrap();
        assert_eq!(tick.started.len(), 1);
        assert_eq!(tick.started[0].spec.duration_s, Some(2400));
        assert_eq!(scheduled_jobs(&store, "studio").len(), 2);
        // Less than MIN_REMAINING_MS left: not started at all.
        node_completes(&store, &tick.started[0], ms("2026-11-30T11:00:00Z"));
        let mut late = ScheduleRunner::default();
        assert!(
            late.tick(&store, ms("2026-12-01T10:59:59Z"))
                .unwrap()
                .started
                .is_empty()
        );
        // Every job the runner made is audited.
        let audit = store.audit_records(0, 100).unwrap();
        assert_eq!(
            audit
                .iter()
                .filter(|r| r.entry.actor == "runner:schedule")
                .count(),
            2
        );
    }

    #[test]
    fn a_daily_schedule_walks_through_both_berlin_clock_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        announce(&store, "berlin");
        // 02:30–03:30 local: on the March change it exists only from 03:00.
        schedule(&store, "berlin", "Europe/Berlin", "02:30", "03:30");
        let mut runner = ScheduleRunner::default();
        let mut t = ms("2026-03-27T00:00:00Z");
        let mut started = Vec::new();
        // Three days around each change, a tick every 30 s.
        for end in [ms("2026-03-31T00:00:00Z"), ms("2026-10-27T00:00:00Z")] {
            if t < ms("2026-10-23T00:00:00Z") && end > ms("2026-04-01T00:00:00Z") {
                t = ms("2026-10-23T00:00:00Z");
            }
            while t < end {
                for job in runner.tick(&store, t).unwrap().started {
                    node_completes(&store, &job, t + job.spec.duration_s.unwrap() as u64 * 1000);
                    started.push((
                        job.scheduled.unwrap().occurrence,
                        job.created_ms,
                        job.spec.duration_s,
                    ));
                }
                t += 30_000;
            }
        }
        let expect = |key: &str, at: &str, s: u32| (key.to_string(), ms(at), Some(s));
        assert_eq!(
            started,
            [
                expect("2026-03-27", "2026-03-27T01:30:00Z", 3600),
                expect("2026-03-28", "2026-03-28T01:30:00Z", 3600),
                expect("2026-03-29", "2026-03-29T01:00:00Z", 1800),
                expect("2026-03-30", "2026-03-30T00:30:00Z", 3600),
                expect("2026-10-23", "2026-10-23T00:30:00Z", 3600),
                expect("2026-10-24", "2026-10-24T00:30:00Z", 3600),
                expect("2026-10-25", "2026-10-25T00:30:00Z", 7200),
                expect("2026-10-26", "2026-10-26T01:30:00Z", 3600),
            ]
        );
    }

    #[test]
    fn a_busy_occurrence_waits_raises_an_event_and_starts_when_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        announce(&store, "busy");
        schedule(&store, "busy", "UTC", "10:00", "11:00");
        let node = NodeId::new("busy").unwrap();
        let by_hand = store
            .enqueue_job(
                NewJob::unscheduled(
                    node.clone(),
                    serde_json::from_str("{}").unwrap(),
                    vec![0, 1],
                ),
                ms("2026-11-29T09:00:00Z"),
            )
            .unwrap();
        let mut runner = ScheduleRunner::default();
        for t in ["2026-11-29T10:00:00Z", "2026-11-29T10:00:01Z"] {
            let tick = runner.tick(&store, ms(t)).unwrap();
            assert!(tick.started.is_empty());
            assert_eq!(tick.deferred, 1);
        }
        let events = |store: &dyn Store| {
            store
                .health_events(&node, 10)
                .unwrap()
                .into_iter()
                .map(|e| (e.event.condition, e.event.change))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            events(&store),
            [(HealthCondition::ScheduleDeferred, HealthChange::Raised)]
        );
        node_completes(&store, &by_hand, ms("2026-11-29T10:05:00Z"));
        let tick = runner.tick(&store, ms("2026-11-29T10:05:01Z")).unwrap();
        assert_eq!(tick.started.len(), 1);
        assert_eq!(tick.started[0].spec.duration_s, Some(3299));
        assert_eq!(
            events(&store).last(),
            Some(&(HealthCondition::ScheduleDeferred, HealthChange::Cleared))
        );

        // The next day the channels stay busy all through the window: missed.
        node_completes(&store, &tick.started[0], ms("2026-11-29T11:00:00Z"));
        let blocker = store
            .enqueue_job(
                NewJob::unscheduled(node.clone(), serde_json::from_str("{}").unwrap(), vec![0]),
                ms("2026-11-30T09:00:00Z"),
            )
            .unwrap();
        let mut missed = Vec::new();
        let mut t = ms("2026-11-30T09:59:00Z");
        while t < ms("2026-11-30T11:02:00Z") {
            missed.extend(runner.tick(&store, t).unwrap().missed);
            t += 20_000;
        }
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].occurrence.key, "2026-11-30");
        assert_eq!(
            events(&store).last(),
            Some(&(HealthCondition::ScheduleMissed, HealthChange::Raised))
        );
        drop(blocker);
    }

    #[test]
    fn skip_next_and_run_now() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        announce(&store, "skip");
        let s = schedule(&store, "skip", "UTC", "10:00", "11:00");
        let now = ms("2026-11-29T12:00:00Z");
        let spec = skip_next(&s.spec, now).unwrap().unwrap();
        assert_eq!(spec.timing.skip, ["2026-11-30".parse().unwrap()]);
        let (_, s) = store.update_schedule(s.id, spec, now).unwrap();
        let mut runner = ScheduleRunner::default();
        assert!(
            runner
                .tick(&store, ms("2026-11-30T10:00:00Z"))
                .unwrap()
                .started
                .is_empty()
        );
        assert_eq!(
            runner
                .tick(&store, ms("2026-12-01T10:00:00Z"))
                .unwrap()
                .started
                .len(),
            1
        );
        // Skipping again drops dates long past and adds the next one.
        let again = skip_next(&s.spec, ms("2026-12-05T12:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(again.timing.skip, ["2026-12-06".parse().unwrap()]);

        // Run-now: the window's length, refused while the channel is busy.
        let (commands, _rx) = Commands::new(Default::default());
        let busy = run_now(&store, &commands, None, &s, ms("2026-12-01T10:30:00Z")).unwrap_err();
        assert!(matches!(busy, JobRequestError::Conflict(_)), "{busy:?}");
        let job = run_now(&store, &commands, None, &s, ms("2026-12-01T12:00:00Z"));
        // The scheduled job of 1 December still holds channel 1 (no node took it).
        assert!(job.is_err());
        let first = scheduled_jobs(&store, "skip").remove(0);
        node_completes(&store, &first, ms("2026-12-01T11:00:00Z"));
        let job = run_now(&store, &commands, None, &s, ms("2026-12-01T12:00:00Z")).unwrap();
        assert_eq!(job.spec.duration_s, Some(3600));
        assert_eq!(
            job.scheduled.unwrap().occurrence,
            format!("run-{}", ms("2026-12-01T12:00:00Z"))
        );
        let mut disabled = s.clone();
        disabled.spec.enabled = false;
        assert!(
            run_now(
                &store,
                &commands,
                None,
                &disabled,
                ms("2026-12-01T13:00:00Z")
            )
            .is_err()
        );
    }
}
