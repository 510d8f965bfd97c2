//! Wiring: source → capture pipeline → fleet link, until shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rakkr_mqtt::LinkState;
use rakkr_protocol::payload::{
    Capabilities, HealthChange, HealthCondition, HealthEvent, MAX_DETAIL_TEXT, MeterFrame,
    RealtimeStatus, Severity,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::capture::CapturePipeline;
use crate::clock::Clock;
use crate::config::{AgentSettings, SourceSettings};
use crate::link::{self, TelemetryStats};
use crate::outbox::{DEFAULT_LIMIT_BYTES, Kept, Outbox};
use crate::source::alsa::AlsaSource;
use crate::source::{CaptureError, CaptureSource, SyntheticSource};
use crate::watchdog::WatchdogRules;
use rakkr_protocol::Envelope;
use rakkr_protocol::topic::NodeChannel;
use rakkr_protocol::watchdog::NodeWatchdog;

/// Meter frames waiting for the link. Small: stale frames are worthless.
pub const METER_QUEUE: usize = 4;

/// Job commands (and job claims/heartbeats) waiting between link and job runner.
pub const JOB_COMMAND_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot start capture threads: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("capture stopped: {0}")]
    Capture(#[from] CaptureError),
    #[error("recordings directory {path}: {error}")]
    Recordings {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("state {path}: {detail}")]
    State {
        path: std::path::PathBuf,
        detail: String,
    },
}

/// Handles for observing a running agent.
#[derive(Debug, Clone)]
pub struct AgentHandles {
    pub link: Arc<LinkState>,
    pub telemetry: Arc<TelemetryStats>,
    /// The latest local meter frame (10 Hz by default), for the appliance's
    /// own display: `local_meters.subscribe()`.
    pub local_meters: Arc<tokio::sync::watch::Sender<Option<MeterFrame>>>,
    /// What the uploader has done.
    pub uploads: Arc<crate::upload::UploadStats>,
}

impl Default for AgentHandles {
    fn default() -> Self {
        AgentHandles {
            link: Arc::default(),
            telemetry: Arc::default(),
            local_meters: Arc::new(tokio::sync::watch::Sender::new(None)),
            uploads: Arc::default(),
        }
    }
}

/// Run the agent until `shutdown` fires (or capture fails).
pub async fn run(
    mut settings: AgentSettings,
    clock: Arc<dyn Clock>,
    handles: AgentHandles,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    if let Some(update) = &settings.update {
        // On an A/B appliance the bootloader, not the configuration, says which slot runs.
        match update.booted_slot() {
            Ok(slot) => settings.slot = slot.into(),
            Err(e) => {
                tracing::error!(error = %e, "cannot tell the booted slot; A/B updates will fail")
            }
        }
    }
    if let Some(dir) = &settings.recordings_dir {
        recover_recordings(dir)?;
    }
    // A TLS setup that cannot work is a start-up error, not a link that never connects.
    let tls = crate::link::tls_config(&settings).map_err(|detail| AgentError::State {
        path: settings.mqtt.tls_ca.clone().unwrap_or_default(),
        detail,
    })?;
    let (source, mut capabilities) = build_source(&settings)?;
    capabilities.max_jobs = settings.max_jobs;
    if settings.max_jobs > 0 {
        capabilities.codecs = ["flac", "wav", "rf64"].map(String::from).to_vec();
    }
    let (meters_tx, meters_rx) = mpsc::channel(METER_QUEUE);
    let outbox = Arc::new(open_outbox(&settings)?);
    let outbox_ready = Arc::new(tokio::sync::Notify::new());
    // The watchdog's rules: the server's for this node (kept across
    // restarts), else the configuration's.
    let (node_watchdog_tx, node_watchdog_rx) = tokio::sync::watch::channel(None);
    let rules = follow_server_rules(
        Kept::Watchdog,
        settings.watchdog,
        |w: &NodeWatchdog| (w.policy.as_str(), w.rules),
        outbox.clone(),
        node_watchdog_rx,
        shutdown.clone(),
    )
    .await;
    // Which uploaded takes go: the server's retention policy for this node,
    // else the configuration's.
    let (node_retention_tx, node_retention_rx) = tokio::sync::watch::channel(None);
    let retention = follow_server_rules(
        Kept::Retention,
        settings.retention,
        |r: &rakkr_protocol::retention::NodeRetention| {
            (
                r.policy.as_str(),
                crate::retention::RetentionRules::of(&r.rules),
            )
        },
        outbox.clone(),
        node_retention_rx,
        shutdown.clone(),
    )
    .await;
    if let Some(dir) = settings.recordings_dir.clone() {
        tokio::spawn(watch_disk(
            dir,
            rules.clone(),
            outbox.clone(),
            outbox_ready.clone(),
            handles.telemetry.clone(),
            clock.clone(),
            shutdown.clone(),
        ));
    }
    let (link_meters_tx, link_meters_rx) = mpsc::channel(METER_QUEUE);
    // Takes that bring their own watchdog rules (their schedule's policy):
    // kept by the job runner, followed by the watchdog.
    let (take_rules_tx, take_rules_rx) =
        tokio::sync::watch::channel(crate::watchdog::TakeRules::new());
    tokio::spawn(watch_quality(
        meters_rx,
        link_meters_tx,
        QualityRules {
            node: rules,
            takes: take_rules_rx,
        },
        outbox.clone(),
        outbox_ready.clone(),
        handles.telemetry.clone(),
        clock.clone(),
    ));
    let device = source_name(&settings);
    let memory_locked = settings.realtime
        && match crate::rt::lock_memory() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "memory locking denied; running without it");
                false
            }
        };
    let pipeline = CapturePipeline::start(
        source,
        clock.clone(),
        settings.meters,
        meters_tx,
        handles.local_meters.clone(),
        settings.realtime,
    )?;
    let realtime = RealtimeStatus {
        sched_fifo: pipeline.sched_fifo,
        memory_locked,
    };
    if settings.realtime && !realtime.sched_fifo {
        tracing::warn!("SCHED_FIFO denied for the capture thread; running with normal scheduling");
    }
    let (update_orders_tx, update_orders_rx) = tokio::sync::watch::channel(None);
    let (update_reports_tx, update_reports_rx) = tokio::sync::watch::channel(None);
    // Started once capture runs: a trial commits only after it captured and reached
    // the broker.
    if let Some(update) = settings.update.clone() {
        let follower = UpdateFollower {
            update,
            state_dir: settings.state_dir.clone(),
            server: settings
                .upload
                .as_ref()
                .map(|u| (u.server.clone(), u.ca_file.clone())),
            credentials: settings.mqtt.credentials.clone(),
            link: handles.link.clone(),
            reports: update_reports_tx,
            outbox: outbox.clone(),
            ready: outbox_ready.clone(),
            telemetry: handles.telemetry.clone(),
            clock: clock.clone(),
        };
        tokio::spawn(follow_updates(follower, update_orders_rx, shutdown.clone()));
    }
    let stats = pipeline.stats.clone();
    let pipeline = Arc::new(pipeline);
    tracing::info!(
        node = %settings.node_id,
        channels = pipeline.format.channels,
        rate = pipeline.format.sample_rate,
        "capture started"
    );

    // Stop the link when asked to, or when capture dies: an agent that cannot
    // capture must not look healthy. Its supervisor restarts it.
    let stop_link = shutdown.child_token();
    let watch = {
        let stop_link = stop_link.clone();
        let stats = stats.clone();
        let clock = clock.clone();
        let (outbox, outbox_ready) = (outbox.clone(), outbox_ready.clone());
        let telemetry = handles.telemetry.clone();
        tokio::spawn(async move {
            // Lost before a restart and not cleared: cleared now if the device works.
            let mut lost_since: Option<u64> = outbox.open_since(DEVICE_LOST).ok().flatten();
            let mut seen_returns = 0;
            while !stop_link.is_cancelled() {
                if stats.failed.load(Ordering::Acquire) {
                    stop_link.cancel();
                    break;
                }
                let lost = stats.device_lost.load(Ordering::Acquire);
                let returns = stats.device_returns.load(Ordering::Acquire);
                // A loss shorter than one poll is only seen by its return: it is
                // raised and cleared at once, not missed.
                let unseen = returns > seen_returns && lost_since.is_none() && !lost;
                seen_returns = returns;
                let states: &[bool] = if unseen { &[true, false] } else { &[lost] };
                for &state in states {
                    let now = clock.unix_ms();
                    let Some(event) = device_health(&device, state, &mut lost_since, now) else {
                        continue;
                    };
                    match event.change {
                        HealthChange::Raised => {
                            tracing::warn!(detail = %event.detail, "capture device lost")
                        }
                        HealthChange::Cleared => {
                            tracing::info!(detail = %event.detail, "capture device back")
                        }
                    }
                    keep_health_event(&outbox, &outbox_ready, &telemetry, now, event).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let (job_commands_tx, job_commands) = mpsc::channel(JOB_COMMAND_QUEUE);
    let (schedules_tx, schedules_rx) = tokio::sync::watch::channel(None);
    let server_online = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (job_reports_tx, job_reports) = mpsc::channel(JOB_COMMAND_QUEUE);
    let telemetry = handles.telemetry.clone();
    // Finished takes to the server (decision 0016), when configured.
    let uploads_wake = start_uploads(
        &settings,
        retention,
        &outbox,
        &outbox_ready,
        &handles,
        &clock,
        &shutdown,
    );
    let job_runner = settings.recordings_dir.clone().map(|recordings_dir| {
        tokio::spawn(crate::jobs::run(
            crate::jobs::JobContext {
                node: settings.node_id.clone(),
                device_name: source_name(&settings),
                recordings_dir,
                max_jobs: settings.max_jobs,
                pipeline: pipeline.clone(),
                outbox: outbox.clone(),
                outbox_ready: outbox_ready.clone(),
                link: handles.link.clone(),
                clock: clock.clone(),
                telemetry: handles.telemetry.clone(),
                server_online: server_online.clone(),
                take_rules: Arc::new(take_rules_tx),
                uploads: uploads_wake,
            },
            job_commands,
            job_reports_tx,
            schedules_rx,
            stop_link.clone(),
        ))
    });

    link::run(
        &settings,
        tls,
        link::Announcement {
            capabilities,
            realtime,
        },
        clock,
        link::Outgoing {
            meters: link_meters_rx,
            local_meters: handles.local_meters.subscribe(),
            outbox,
            outbox_ready,
            job_reports,
            job_commands: job_commands_tx,
            schedules: schedules_tx,
            watchdog: node_watchdog_tx,
            retention: node_retention_tx,
            server_online,
            uploads: handles.uploads.clone(),
            update_orders: update_orders_tx,
            update_reports: update_reports_rx,
        },
        handles.link,
        handles.telemetry,
        stop_link.clone(),
    )
    .await;
    stop_link.cancel();
    telemetry.log_totals();
    let _ = watch.await;
    if let Some(runner) = job_runner {
        let _ = runner.await;
    }
    let Ok(pipeline) = Arc::try_unwrap(pipeline) else {
        return Err(AgentError::Capture(CaptureError::Device(
            "capture pipeline still in use at shutdown".into(),
        )));
    };
    tokio::task::spawn_blocking(move || pipeline.stop())
        .await
        .unwrap_or_else(|_| Err(CaptureError::Device("capture shutdown panicked".into())))?;
    Ok(())
}

/// The key of the device-lost condition among the outbox's open conditions.
const DEVICE_LOST: &str = HealthCondition::DeviceLost.as_str();

/// How the outbox's open conditions name a condition of a subject.
fn open_key(condition: HealthCondition, subject: &str) -> String {
    if subject.is_empty() {
        condition.as_str().to_owned()
    } else {
        format!("{}|{subject}", condition.as_str())
    }
}

/// A policy's rules as they change: the ones the server last sent for this
/// node (kept in the outbox as `kind`, so a restart without the server keeps
/// them), else `configured`. Each message the link hands over is kept, then
/// applied. `rules_of` gives a message's policy name and rules.
async fn follow_server_rules<T, R>(
    kind: Kept,
    configured: R,
    rules_of: fn(&T) -> (&str, R),
    outbox: Arc<Outbox>,
    mut from_server: tokio::sync::watch::Receiver<Option<T>>,
    shutdown: CancellationToken,
) -> tokio::sync::watch::Receiver<R>
where
    T: rakkr_protocol::envelope::Payload + Clone + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let kept = {
        let outbox = outbox.clone();
        tokio::task::spawn_blocking(move || outbox.kept(kind)).await
    };
    let start = match kept {
        Ok(Ok(Some(json))) => match serde_json::from_slice::<T>(&json) {
            Ok(message) if message.validate().is_ok() => {
                let (policy, rules) = rules_of(&message);
                tracing::info!(
                    kind = T::KIND,
                    policy = %policy,
                    "rules of the server's policy, as kept"
                );
                rules
            }
            _ => configured,
        },
        _ => configured,
    };
    let (tx, rx) = tokio::sync::watch::channel(start);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = from_server.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
            let Some(message) = from_server.borrow_and_update().clone() else {
                continue;
            };
            let (policy, rules) = rules_of(&message);
            tracing::info!(kind = T::KIND, policy = %policy, ?rules, "rules from the server");
            let json = serde_json::to_vec(&message).unwrap_or_default();
            let outbox = outbox.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || outbox.keep(kind, &json)).await
            {
                tracing::warn!(kind = T::KIND, error = %e, "rules not kept; they apply until a restart");
            }
            tx.send_replace(rules);
        }
    });
    rx
}

/// How often the recordings' disk is looked at.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(10);

/// Raise `disk_pressure` when the recordings' disk runs low, and clear it
/// when there is room again.
async fn watch_disk(
    dir: std::path::PathBuf,
    mut rules: tokio::sync::watch::Receiver<WatchdogRules>,
    outbox: Arc<Outbox>,
    ready: Arc<tokio::sync::Notify>,
    telemetry: Arc<TelemetryStats>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut rule = crate::watchdog::DiskRule::new(&rules.borrow_and_update());
    let key = HealthCondition::DiskPressure.as_str();
    let open = {
        let outbox = outbox.clone();
        tokio::task::spawn_blocking(move || outbox.open_since(key)).await
    };
    if let Ok(Ok(Some(_))) = open {
        rule.assume_raised();
    }
    let mut every = tokio::time::interval(DISK_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let space = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || crate::watchdog::disk_space(&dir)).await
        };
        let (free, total) = match space {
            Ok(Ok(space)) => space,
            Ok(Err(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the recordings' disk space");
                continue;
            }
            Err(_) => continue,
        };
        if rules.has_changed().unwrap_or(false) {
            rule.set_rules(&rules.borrow_and_update());
        }
        let now = clock.unix_ms();
        if let Some(event) = rule.observe(free, total, now) {
            tracing::warn!(detail = %event.detail, change = ?event.change, "disk pressure");
            keep_health_event(&outbox, &ready, &telemetry, now, event).await;
        }
    }
}

/// Start the uploader and the retention of uploaded takes if `[upload]` is
/// configured; what wakes the uploader.
fn start_uploads(
    settings: &AgentSettings,
    retention: tokio::sync::watch::Receiver<crate::retention::RetentionRules>,
    outbox: &Arc<Outbox>,
    outbox_ready: &Arc<tokio::sync::Notify>,
    handles: &AgentHandles,
    clock: &Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> Option<Arc<tokio::sync::Notify>> {
    let upload = settings.upload.clone()?;
    let recordings_dir = settings.recordings_dir.clone()?;
    let Some((node, credential)) = settings.mqtt.credentials.clone() else {
        tracing::error!(
            "uploads need the node's credential: run `rakkr-agent enroll`; takes stay here"
        );
        return None;
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    tracing::info!(server = %upload.server, "finished takes go to the server");
    let uploader = crate::upload::Uploader {
        settings: upload,
        node,
        credential,
        recordings_dir,
        outbox: outbox.clone(),
        wake: wake.clone(),
        stats: handles.uploads.clone(),
        retention: retention.clone(),
        events: crate::upload::EventSink {
            ready: outbox_ready.clone(),
            telemetry: handles.telemetry.clone(),
            clock: clock.clone(),
        },
    };
    tokio::spawn(uploader.run(shutdown.clone()));
    tokio::spawn(crate::retention::run(
        retention,
        settings.recordings_dir.clone()?,
        outbox.clone(),
        clock.clone(),
        shutdown.clone(),
    ));
    Some(wake)
}

/// The watchdog's rules as they change: the node's, and those of the takes
/// that bring their own.
struct QualityRules {
    node: tokio::sync::watch::Receiver<WatchdogRules>,
    takes: tokio::sync::watch::Receiver<crate::watchdog::TakeRules>,
}

/// Watch the telemetry frames on their way to the link: the watchdog's
/// events go to the outbox; the frames go on. Conditions the watchdog raised
/// before a restart are cleared once gone.
async fn watch_quality(
    mut frames: mpsc::Receiver<MeterFrame>,
    to_link: mpsc::Sender<MeterFrame>,
    mut rules: QualityRules,
    outbox: Arc<Outbox>,
    ready: Arc<tokio::sync::Notify>,
    telemetry: Arc<TelemetryStats>,
    clock: Arc<dyn Clock>,
) {
    let mut dog = crate::watchdog::Watchdog::new(*rules.node.borrow_and_update());
    let kept = {
        let outbox = outbox.clone();
        tokio::task::spawn_blocking(move || outbox.open_conditions()).await
    };
    if let Ok(Ok(open)) = kept {
        for (key, _) in open {
            let (name, subject) = key.split_once('|').unwrap_or((key.as_str(), ""));
            let condition = HealthCondition::ALL
                .into_iter()
                .find(|c| c.as_str() == name);
            if let Some(c) = condition.filter(|c| *c != HealthCondition::DeviceLost) {
                dog.assume_raised(c, subject);
            }
        }
    }
    while let Some(frame) = frames.recv().await {
        if rules.node.has_changed().unwrap_or(false) {
            dog.set_rules(*rules.node.borrow_and_update());
        }
        if rules.takes.has_changed().unwrap_or(false) {
            dog.set_take_rules(&rules.takes.borrow_and_update());
        }
        for event in dog.observe(&frame) {
            match event.change {
                HealthChange::Raised => {
                    tracing::warn!(condition = event.condition.as_str(), subject = %event.subject, detail = %event.detail, "watchdog")
                }
                HealthChange::Cleared => {
                    tracing::info!(condition = event.condition.as_str(), subject = %event.subject, detail = %event.detail, "watchdog")
                }
            }
            keep_health_event(&outbox, &ready, &telemetry, clock.unix_ms(), event).await;
        }
        // The link drops frames while disconnected; so do we when it lags.
        let _ = to_link.try_send(frame);
    }
}

/// Put a health event in the outbox and wake the link. Encoded once: a resend
/// carries the same message id, so the server stores it once.
pub(crate) async fn keep_health_event(
    outbox: &Arc<Outbox>,
    ready: &tokio::sync::Notify,
    telemetry: &TelemetryStats,
    now_ms: u64,
    event: HealthEvent,
) {
    // Remember the condition as open (or closed) first: a restart in between
    // then clears it rather than leaving it open for good.
    let open = (event.change == HealthChange::Raised).then_some(event.at_ms);
    let key = open_key(event.condition, &event.subject);
    let envelope = Envelope::stamped(now_ms, event);
    let payload = envelope.encode();
    let outbox = outbox.clone();
    let kept = tokio::task::spawn_blocking(move || {
        outbox.set_open(&key, open)?;
        outbox.push(NodeChannel::Events, envelope.msg_id, &payload)
    })
    .await;
    match kept {
        Ok(Ok(())) => ready.notify_one(),
        Ok(Err(e)) => {
            telemetry
                .health_events_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "health event not kept");
        }
        Err(e) => tracing::error!(error = %e, "outbox task failed"),
    }
}

/// The outbox in the state directory (created if missing), or in memory.
fn open_outbox(settings: &AgentSettings) -> Result<Outbox, AgentError> {
    let fail = |path: std::path::PathBuf, detail: String| AgentError::State { path, detail };
    match &settings.state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| fail(dir.clone(), e.to_string()))?;
            let path = dir.join("outbox.redb");
            Outbox::open(&path, DEFAULT_LIMIT_BYTES).map_err(|e| fail(path, e.to_string()))
        }
        None => Outbox::in_memory(DEFAULT_LIMIT_BYTES)
            .map_err(|e| fail("(memory)".into(), e.to_string())),
    }
}

/// `detail` cut to the protocol's bound (at a character boundary): a message
/// the server refused would wait in the outbox forever.
pub(crate) fn bounded_detail(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL_TEXT {
        let mut end = MAX_DETAIL_TEXT - '…'.len_utf8();
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

/// What the A/B update follower works with (`crate::update`).
struct UpdateFollower {
    update: crate::config::UpdateSettings,
    state_dir: Option<std::path::PathBuf>,
    /// The fleet server's base URL and the CA to trust, from `[upload]`.
    server: Option<(String, Option<std::path::PathBuf>)>,
    credentials: Option<(String, String)>,
    link: Arc<LinkState>,
    reports: tokio::sync::watch::Sender<Option<rakkr_protocol::update::UpdateReport>>,
    outbox: Arc<Outbox>,
    ready: Arc<tokio::sync::Notify>,
    telemetry: Arc<TelemetryStats>,
    clock: Arc<dyn Clock>,
}

impl UpdateFollower {
    /// Publishes `report` as the node's latest update step and keeps it for after a reboot.
    async fn report(&self, report: rakkr_protocol::update::UpdateReport) {
        if let Some(dir) = self.state_dir.clone() {
            let kept = report.clone();
            let saved =
                tokio::task::spawn_blocking(move || crate::update::save_report(&dir, &kept)).await;
            if !matches!(saved, Ok(Ok(()))) {
                tracing::warn!("cannot keep the update step in the state directory");
            }
        }
        self.reports.send_replace(Some(report));
    }

    /// The step kept before the last restart, with a new phase and detail.
    fn next_step(
        &self,
        kept: &Option<rakkr_protocol::update::UpdateReport>,
        phase: rakkr_protocol::update::UpdatePhase,
        detail: String,
    ) -> Option<rakkr_protocol::update::UpdateReport> {
        kept.clone().map(|r| rakkr_protocol::update::UpdateReport {
            phase,
            done_bytes: 0,
            total_bytes: 0,
            detail,
            ..r
        })
    }
}

/// A/B updates (`crate::update`). At start: a trial that rolled back is reported (a
/// health event, and the order's step); a running trial is committed once this agent has
/// captured and reached the fleet's broker, so an image that cannot do both goes back at
/// the next reboot. Then: each new order from the server is installed and rebooted into.
async fn follow_updates(
    follower: UpdateFollower,
    mut orders: tokio::sync::watch::Receiver<Option<rakkr_protocol::update::UpdateOrder>>,
    shutdown: CancellationToken,
) {
    use rakkr_protocol::update::UpdatePhase;
    use rakkr_update::BootAssessment;
    let kept = follower
        .state_dir
        .as_deref()
        .and_then(crate::update::load_report);
    if let Some(report) = kept.clone() {
        follower.reports.send_replace(Some(report));
    }
    let settled = {
        let update = follower.update.clone();
        tokio::task::spawn_blocking(move || crate::update::settle_after_boot(&update)).await
    };
    match settled {
        Ok(Ok(BootAssessment::RolledBack { failed, running })) => {
            let now = follower.clock.unix_ms();
            let detail = format!(
                "the image tried in slot {failed} did not come up healthy; the bootloader went \
                 back to slot {running}, which runs now"
            );
            tracing::error!(%detail, "update rolled back");
            if let Some(step) = follower.next_step(&kept, UpdatePhase::RolledBack, detail.clone()) {
                follower.report(step).await;
            }
            let event = HealthEvent {
                condition: HealthCondition::UpdateRolledBack,
                change: HealthChange::Raised,
                severity: Severity::Warning,
                at_ms: now,
                detail,
                subject: format!("slot:{failed}"),
            };
            keep_health_event(
                &follower.outbox,
                &follower.ready,
                &follower.telemetry,
                now,
                event,
            )
            .await;
        }
        Ok(Ok(BootAssessment::Trial(slot))) => {
            tracing::info!(%slot, "running a new image on trial; committing once the broker is reached");
            if let Some(step) = follower.next_step(&kept, UpdatePhase::Trial, String::new()) {
                follower.report(step).await;
            }
            // Connection is a flag on the link; a poll at 2 Hz costs nothing.
            while !follower.link.is_connected() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            let update = follower.update.clone();
            let committed =
                tokio::task::spawn_blocking(move || crate::update::commit_trial(&update)).await;
            let committed = committed
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            match committed {
                Ok(slot) => {
                    tracing::info!(%slot, "update committed: this slot boots from now on");
                    if let Some(step) =
                        follower.next_step(&kept, UpdatePhase::Committed, String::new())
                    {
                        follower.report(step).await;
                    }
                }
                Err(why) => {
                    tracing::error!(error = %why, "cannot commit the running trial");
                    let detail = format!(
                        "running the new image but cannot commit it ({why}); the next reboot goes back"
                    );
                    if let Some(step) = follower.next_step(&kept, UpdatePhase::Failed, detail) {
                        follower.report(step).await;
                    }
                }
            }
        }
        Ok(Ok(state)) => {
            tracing::info!(%state, "A/B boot state");
            // A step kept from before the restart that is not final, on a system that
            // is not on trial: what became of it.
            let reconciled = match (kept.as_ref().map(|r| r.phase), state) {
                (
                    Some(UpdatePhase::Installing | UpdatePhase::Checking),
                    BootAssessment::Committed(_),
                ) => Some((
                    UpdatePhase::Failed,
                    "the agent stopped during the install; nothing was staged: order it again",
                )),
                (
                    Some(UpdatePhase::Installing | UpdatePhase::Checking | UpdatePhase::Rebooting),
                    BootAssessment::Staged { .. },
                ) => {
                    // Staged, but the reboot never came: a failed step changes nothing
                    // that boots.
                    let update = follower.update.clone();
                    let unstaged =
                        tokio::task::spawn_blocking(move || crate::update::unstage(&update)).await;
                    Some(if matches!(unstaged, Ok(Ok(()))) {
                        (
                            UpdatePhase::Failed,
                            "the agent restarted before rebooting into the image; it was unstaged: order it again",
                        )
                    } else {
                        (
                            UpdatePhase::Rebooting,
                            "the agent restarted before rebooting; the image is tried at the next reboot",
                        )
                    })
                }
                (Some(UpdatePhase::Rebooting), BootAssessment::Committed(_)) => Some((
                    UpdatePhase::Failed,
                    "the node restarted without trying the new image",
                )),
                // Committed before the restart, its report not kept (or by hand).
                (Some(UpdatePhase::Trial), BootAssessment::Committed(_)) => {
                    Some((UpdatePhase::Committed, ""))
                }
                _ => None,
            };
            if let Some((phase, detail)) = reconciled
                && let Some(step) = follower.next_step(&kept, phase, detail.to_owned())
            {
                follower.report(step).await;
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "cannot read the A/B boot state"),
        Err(e) => tracing::error!(error = %e, "boot state task failed"),
    }
    let mut acted_on = kept.map(|r| r.update_id);
    loop {
        tokio::select! {
            changed = orders.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        let Some(order) = orders.borrow_and_update().clone() else {
            continue;
        };
        if acted_on == Some(order.update_id) {
            continue;
        }
        acted_on = Some(order.update_id);
        if install_ordered(&follower, order, &shutdown).await {
            // The system is going down into the new image; no other order now.
            return;
        }
    }
}

/// Installs one ordered image, reporting each step, and reboots into it; whether the
/// reboot was started (then no further order is taken).
async fn install_ordered(
    follower: &UpdateFollower,
    order: rakkr_protocol::update::UpdateOrder,
    shutdown: &CancellationToken,
) -> bool {
    use rakkr_protocol::update::{UpdatePhase, UpdateReport};
    use rakkr_update::InstallProgress;
    let step = |phase, done_bytes, total_bytes, detail: String| UpdateReport {
        update_id: order.update_id,
        version: order.version.clone(),
        phase,
        done_bytes,
        total_bytes,
        detail: detail
            .chars()
            .take(rakkr_protocol::update::MAX_UPDATE_DETAIL)
            .collect(),
    };
    tracing::info!(update = %order.update_id, version = %order.version, image = %order.image, "installing an ordered update");
    let (Some((base, ca)), Some((node, credential)), Some(_)) = (
        follower.server.clone(),
        follower.credentials.clone(),
        follower.state_dir.as_ref(),
    ) else {
        let why =
            "an ordered update needs [upload] (the server), the node's credential and a state_dir";
        tracing::error!(why, "update refused");
        follower
            .report(step(UpdatePhase::Failed, 0, 0, why.into()))
            .await;
        return false;
    };
    follower
        .report(step(UpdatePhase::Installing, 0, order.size, String::new()))
        .await;
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = {
        let (cancel, shutdown) = (cancel.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            cancel.store(true, Ordering::Relaxed);
        })
    };
    let url = format!("{base}/api/v1/node/images/{}", order.image);
    let download =
        crate::update::fetch_image(url, ca.as_deref(), (node, credential), shutdown.clone());
    let installed = {
        let (update, order, reports) = (
            follower.update.clone(),
            order.clone(),
            follower.reports.clone(),
        );
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            let mut download = download?;
            // A report per whole percent of each pass: enough to watch, few messages.
            let mut shown = (UpdatePhase::Installing, 0u64);
            crate::update::install_ordered_image(
                &update,
                &order,
                &mut download,
                &cancel,
                &mut |p| {
                    let (phase, done, total) = match p {
                        InstallProgress::Writing { written, total } => {
                            (UpdatePhase::Installing, written, total)
                        }
                        InstallProgress::Checking { read, total } => {
                            (UpdatePhase::Checking, read, total)
                        }
                        InstallProgress::Staged => return,
                    };
                    let percent = done * 100 / total.max(1);
                    if (phase, percent) != shown {
                        shown = (phase, percent);
                        reports.send_replace(Some(UpdateReport {
                            update_id: order.update_id,
                            version: order.version.clone(),
                            phase,
                            done_bytes: done,
                            total_bytes: total,
                            detail: String::new(),
                        }));
                    }
                },
            )
        })
        .await
    };
    stop.abort();
    let manifest = match installed {
        Ok(Ok(manifest)) => manifest,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "update failed");
            follower
                .report(step(UpdatePhase::Failed, 0, 0, e.to_string()))
                .await;
            return false;
        }
        Err(e) => {
            follower
                .report(step(UpdatePhase::Failed, 0, 0, e.to_string()))
                .await;
            return false;
        }
    };
    tracing::warn!(version = %manifest.version, "update staged; rebooting into it");
    follower
        .report(step(UpdatePhase::Rebooting, 0, 0, String::new()))
        .await;
    // Let the report reach the broker before the system goes down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let command = follower.update.reboot_command.clone();
    let rebooted = {
        let command = command.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(&command[0])
                .args(&command[1..])
                .status()
        })
        .await
    };
    match rebooted {
        Ok(Ok(status)) if status.success() => true,
        other => {
            // A failed step must change nothing that boots: the image is unstaged.
            let update = follower.update.clone();
            let unstaged =
                tokio::task::spawn_blocking(move || crate::update::unstage(&update)).await;
            let outcome = match other {
                Ok(Ok(status)) => status.to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            let why = match unstaged {
                Ok(Ok(())) => format!(
                    "the reboot command {command:?} failed ({outcome}); the image was unstaged: order it again"
                ),
                _ => format!(
                    "the reboot command {command:?} failed ({outcome}) and the image could not be unstaged: it is tried at the next reboot"
                ),
            };
            tracing::error!(%why, "reboot failed");
            follower.report(step(UpdatePhase::Failed, 0, 0, why)).await;
            false
        }
    }
}

/// The capture device's name for people.
fn source_name(settings: &AgentSettings) -> String {
    match &settings.source {
        SourceSettings::Alsa(request) => request.device.clone(),
        SourceSettings::Synthetic { .. } => "synthetic".into(),
    }
}

/// A device-lost health event when the device's state changes: raised when
/// it goes, cleared (with how long it was gone) when it is back.
fn device_health(
    device: &str,
    lost: bool,
    lost_since: &mut Option<u64>,
    now_ms: u64,
) -> Option<HealthEvent> {
    let (change, severity, detail) = match (lost, *lost_since) {
        (true, None) => {
            *lost_since = Some(now_ms);
            (
                HealthChange::Raised,
                Severity::Critical,
                format!(
                    "capture device {device} stopped delivering audio; reopening it with backoff, \
                     open takes continue and record the time it is gone as a gap"
                ),
            )
        }
        (false, Some(since)) => {
            *lost_since = None;
            (
                HealthChange::Cleared,
                Severity::Info,
                format!(
                    "capture device {device} is back after {:.1} s",
                    now_ms.saturating_sub(since) as f64 / 1000.0
                ),
            )
        }
        _ => return None,
    };
    Some(HealthEvent {
        condition: HealthCondition::DeviceLost,
        change,
        severity,
        at_ms: now_ms,
        detail: bounded_detail(detail),
        subject: String::new(),
    })
}

/// Finish every take a crash or power loss interrupted, before anything else runs.
fn recover_recordings(dir: &std::path::Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(dir).map_err(|e| AgentError::Recordings {
        path: dir.to_owned(),
        error: e,
    })?;
    let results = crate::record::recover_dir(dir).map_err(|e| AgentError::Recordings {
        path: dir.to_owned(),
        error: e,
    })?;
    for r in results {
        match r.report {
            Ok(report) => tracing::warn!(
                file = %r.path.display(),
                samples = report.samples,
                bytes_cut = report.bytes_cut,
                "recovered an interrupted take"
            ),
            Err(e) => {
                tracing::error!(file = %r.path.display(), error = %e, "cannot recover an interrupted take; left as it is")
            }
        }
    }
    Ok(())
}

/// Open the configured source; its capabilities are what it actually delivers.
pub fn build_source(
    settings: &AgentSettings,
) -> Result<(Box<dyn CaptureSource>, Capabilities), CaptureError> {
    let capabilities = |kind: &str, channels: u16, rate: u32| Capabilities {
        sources: vec![kind.to_owned()],
        channels,
        sample_rates: vec![rate],
        codecs: Vec::new(),
        max_jobs: 0,
        devices: Vec::new(),
    };
    Ok(match &settings.source {
        SourceSettings::Alsa(req) => {
            let source = AlsaSource::open(req)?;
            let g = source.granted();
            tracing::info!(
                device = %req.device,
                channels = g.channels,
                rate = g.rate,
                format = %g.format,
                period_frames = g.period_frames,
                buffer_frames = g.buffer_frames,
                "capture device opened"
            );
            let present = crate::source::alsa::capture_device_names().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the other capture devices could not be listed");
                Vec::new()
            });
            let caps = Capabilities {
                devices: announced_devices(&source_name(settings), present),
                ..capabilities(source.kind(), g.channels, g.rate)
            };
            (Box::new(source) as Box<dyn CaptureSource>, caps)
        }
        SourceSettings::Synthetic {
            channels,
            sample_rate,
            period_frames,
            signal,
        } => {
            let seed = fnv1a(settings.node_id.as_str().as_bytes());
            let source =
                SyntheticSource::new(*sample_rate, *channels, *period_frames, *signal, seed);
            let caps = Capabilities {
                devices: announced_devices(
                    &source_name(settings),
                    vec![("synthetic".into(), "a generated test signal".into())],
                ),
                ..capabilities(source.kind(), *channels, *sample_rate)
            };
            (Box::new(source), caps)
        }
    })
}

/// The devices a node announces: the one it captures from first (whether or
/// not the audio system lists it: a plugin name need not be), then the others
/// it lists, each once, within the protocol's bounds (descriptions cut at a
/// character boundary).
pub fn announced_devices(
    in_use: &str,
    present: Vec<(String, String)>,
) -> Vec<rakkr_protocol::payload::CaptureDevice> {
    use rakkr_protocol::payload::{CaptureDevice, MAX_LIST_ITEMS, MAX_SHORT_TEXT};
    let cut = |text: &str| -> String {
        let mut end = text.len().min(MAX_SHORT_TEXT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    };
    let description_of_in_use = present
        .iter()
        .find(|(name, _)| name == in_use)
        .map(|(_, d)| cut(d))
        .unwrap_or_default();
    // A name too long to announce whole is not announced as in use: a cut
    // name would be offered to jobs and refused by them (`default` still works).
    let mut devices: Vec<CaptureDevice> = (in_use.len() <= MAX_SHORT_TEXT)
        .then(|| CaptureDevice {
            name: in_use.to_owned(),
            description: description_of_in_use,
            in_use: true,
        })
        .into_iter()
        .collect();
    for (name, description) in present {
        if devices.len() >= MAX_LIST_ITEMS {
            break;
        }
        if name.len() > MAX_SHORT_TEXT || devices.iter().any(|d| d.name == name) {
            continue;
        }
        devices.push(CaptureDevice {
            name,
            description: cut(&description),
            in_use: false,
        });
    }
    devices
}

/// FNV-1a: a stable per-node seed, so each simulated node sounds different.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_in_use_is_announced_first_and_others_once_within_bounds() {
        let present = vec![
            ("default".to_owned(), "Default ALSA Output".to_owned()),
            (
                "hw:CARD=USB,DEV=0".to_owned(),
                "USB Audio — 8 in".to_owned(),
            ),
            ("default".to_owned(), "listed twice".to_owned()),
            ("x".repeat(200), "a name too long to announce".to_owned()),
        ];
        let devices = announced_devices("hw:CARD=USB,DEV=0", present);
        let names: Vec<(&str, bool)> = devices
            .iter()
            .map(|d| (d.name.as_str(), d.in_use))
            .collect();
        assert_eq!(names, [("hw:CARD=USB,DEV=0", true), ("default", false)]);
        assert_eq!(devices[0].description, "USB Audio — 8 in");
        // A plugin the audio system does not list is still the one in use.
        let devices = announced_devices("rakkr_test_pcm", Vec::new());
        assert_eq!(devices.len(), 1);
        assert!(devices[0].in_use && devices[0].description.is_empty());
        // One too long to announce whole is not offered as the one in use.
        let long = "p".repeat(200);
        let devices = announced_devices(&long, vec![("default".into(), String::new())]);
        assert_eq!(devices.len(), 1);
        assert!(!devices[0].in_use);
        // Descriptions are cut at a character boundary; the list is bounded.
        let many: Vec<(String, String)> = (0..100)
            .map(|i| (format!("hw:{i}"), "é".repeat(100)))
            .collect();
        let devices = announced_devices("hw:0", many);
        assert_eq!(devices.len(), rakkr_protocol::payload::MAX_LIST_ITEMS);
        assert!(
            devices
                .iter()
                .all(|d| d.description.len() <= 128 && d.description.chars().all(|c| c == 'é'))
        );
    }

    #[test]
    fn device_loss_raises_once_and_clears_once_with_its_duration() {
        let mut since = None;
        assert_eq!(device_health("hw:1", false, &mut since, 1_000), None);
        let raised = device_health("hw:1", true, &mut since, 2_000).unwrap();
        assert_eq!(
            (raised.change, raised.severity, raised.at_ms),
            (HealthChange::Raised, Severity::Critical, 2_000)
        );
        assert!(raised.detail.contains("hw:1"));
        assert_eq!(
            device_health("hw:1", true, &mut since, 2_200),
            None,
            "no repeats"
        );
        let cleared = device_health("hw:1", false, &mut since, 6_500).unwrap();
        assert_eq!(cleared.change, HealthChange::Cleared);
        assert!(cleared.detail.contains("4.5 s"), "{}", cleared.detail);
        assert_eq!(device_health("hw:1", false, &mut since, 7_000), None);
    }

    #[test]
    fn a_long_device_name_still_makes_a_valid_event() {
        let mut since = None;
        let name = "é".repeat(400);
        let e = device_health(&name, true, &mut since, 1).unwrap();
        assert!(e.detail.len() <= MAX_DETAIL_TEXT && e.detail.ends_with('…'));
        let bytes = rakkr_protocol::Envelope::stamped(1, e).encode();
        assert!(rakkr_protocol::Envelope::<HealthEvent>::decode(&bytes).is_ok());
    }
}
