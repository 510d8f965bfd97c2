//! The agent's fleet link: presence and telemetry over MQTT.
//!
//! Presence protocol on `rakkr/v1/nodes/{node}/status` (retained, QoS 1):
//! - Last Will, set for every connection attempt: `offline`, reason `connection_lost`.
//!   The broker publishes it when the connection dies without a DISCONNECT
//!   (crash, SIGKILL, power or network loss).
//! - On every CONNACK: `online` with version, boot slot and capabilities. The
//!   embedded broker keeps no retained messages across restarts, so this is
//!   republished on each (re)connect rather than once.
//! - On orderly shutdown: `offline`, reason `shutdown`, then DISCONNECT.
//!
//! Meter frames go to `nodes/{node}/meters` at QoS 0 and only while connected:
//! a frame that cannot be sent now is dropped and counted, never queued to
//! arrive late.
//!
//! Live meter frames go to `nodes/{node}/live` at QoS 0 while a request
//! from `cmd/live` holds (someone watches the node's page): the local meter
//! frames merged into windows of at least [`LIVE_WINDOW_MS`], so no peak
//! between two live frames goes unseen. The telemetry frames go on as before.
//!
//! Health events (`nodes/{node}/events`) and job updates (`nodes/{node}/jobs`)
//! go at QoS 1 from the durable [`Outbox`]: sent in order while connected, sent again if no acknowledgement
//! arrives within [`RESEND_AFTER`] or after a reconnection, and removed only
//! when the server acknowledges them on `nodes/{node}/cmd/ack` (after storing
//! them). They survive broker and server restarts, network loss, and agent
//! restarts when the agent has a `state_dir`.
//!
//! Job claims and heartbeats go to `nodes/{node}/jobs` at QoS 1 but not
//! through the outbox: they are only worth sending now (the job runner repeats
//! them); job commands from `nodes/{node}/cmd/jobs` go to the job runner.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rakkr_mqtt::rumqttc::{LastWill, QoS};
use rakkr_mqtt::{Endpoint, LinkState, SessionEvent};
use rakkr_protocol::Envelope;
use rakkr_protocol::job::{JobCommand, JobReport};
use rakkr_protocol::payload::{
    Ack, Capabilities, LiveRequest, MeterFrame, NodeStatus, OfflineReason, RealtimeStatus,
    ServerStatus,
};
use rakkr_protocol::schedule::NodeSchedules;
use rakkr_protocol::topic::{Command, NodeChannel, Topic};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AGENT_VERSION;
use crate::clock::Clock;
use crate::config::AgentSettings;
use crate::outbox::Outbox;

/// How long an orderly shutdown waits to deliver the final `offline` status.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

/// An outbox message not acknowledged this long after it was sent is sent again.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);

/// Shortest window of one live meter frame: about five frames a second.
pub const LIVE_WINDOW_MS: u32 = 200;

/// Outbox messages in flight (sent, not yet acknowledged) at once.
const IN_FLIGHT: usize = 64;

#[derive(Debug, Default)]
pub struct TelemetryStats {
    pub meter_frames_sent: AtomicU64,
    pub meter_frames_dropped: AtomicU64,
    /// Live meter frames published (see [`LIVE_WINDOW_MS`]).
    pub live_frames_sent: AtomicU64,
    /// Messages from the server refused: undecodable, wrong version, on an
    /// unknown command topic, or a packet over the size bound (which also
    /// ends the connection; the link reconnects).
    pub bad_messages: AtomicU64,
    /// Outbox messages published (resends included).
    pub outbox_sent: AtomicU64,
    /// Health events the outbox could not keep (full or failing storage).
    pub health_events_dropped: AtomicU64,
    /// Job updates the outbox could not keep (full or failing storage).
    pub job_updates_dropped: AtomicU64,
    pub acknowledged: AtomicU64,
}

impl TelemetryStats {
    /// Log every counter once (at exit), so a technician or a test reading the
    /// journal sees what the link sent, dropped and refused.
    pub fn log_totals(&self) {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            meter_frames_sent = n(&self.meter_frames_sent),
            meter_frames_dropped = n(&self.meter_frames_dropped),
            live_frames_sent = n(&self.live_frames_sent),
            bad_messages = n(&self.bad_messages),
            outbox_sent = n(&self.outbox_sent),
            acknowledged = n(&self.acknowledged),
            health_events_dropped = n(&self.health_events_dropped),
            job_updates_dropped = n(&self.job_updates_dropped),
            "link totals"
        );
    }
}

/// What the node announces about itself in its `online` status.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub capabilities: Capabilities,
    pub realtime: RealtimeStatus,
}

/// What the node publishes besides its status.
#[derive(Debug)]
pub struct Outgoing {
    /// Telemetry meter frames.
    pub meters: mpsc::Receiver<MeterFrame>,
    /// Local meter frames (the short windows), for live meters.
    pub local_meters: tokio::sync::watch::Receiver<Option<MeterFrame>>,
    /// Messages the server must receive; `outbox_ready` is notified when one is added.
    pub outbox: Arc<Outbox>,
    pub outbox_ready: Arc<tokio::sync::Notify>,
    /// Job claims and heartbeats, sent only while connected.
    pub job_reports: mpsc::Receiver<JobReport>,
    /// Where job commands from the server go.
    pub job_commands: mpsc::Sender<JobCommand>,
    /// The node's schedules, as the server last sent them (retained).
    pub schedules: tokio::sync::watch::Sender<Option<NodeSchedules>>,
    /// The rules of the node's watchdog policy, as the server last sent them (retained).
    pub watchdog: tokio::sync::watch::Sender<Option<rakkr_protocol::watchdog::NodeWatchdog>>,
    /// The rules of the node's retention policy, as the server last sent them (retained).
    pub retention: tokio::sync::watch::Sender<Option<rakkr_protocol::retention::NodeRetention>>,
    /// The server's retained status says it is online.
    pub server_online: Arc<std::sync::atomic::AtomicBool>,
    /// The uploader's queue, reported with each telemetry frame.
    pub uploads: Arc<crate::upload::UploadStats>,
    /// The A/B update the server last ordered (retained `cmd/update`).
    pub update_orders: tokio::sync::watch::Sender<Option<rakkr_protocol::update::UpdateOrder>>,
    /// The node's latest update step, published retained on `update` (again on every
    /// new connection).
    pub update_reports: tokio::sync::watch::Receiver<Option<rakkr_protocol::update::UpdateReport>>,
}

/// Pass a policy's rules the server sent on to whoever follows them.
/// Decoding validates them; a bad message is counted and changes nothing.
fn hand_over<T: rakkr_protocol::envelope::Payload>(
    payload: &[u8],
    to: &tokio::sync::watch::Sender<Option<T>>,
    stats: &TelemetryStats,
) {
    match Envelope::<T>::decode(payload) {
        Ok(env) => {
            to.send_replace(Some(env.body));
        }
        Err(e) => {
            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, kind = T::KIND, "bad rules from the server");
        }
    }
}

/// The TLS configuration for the settings' broker, if they ask for TLS:
/// trusting only the CA file they name.
pub fn tls_config(
    settings: &AgentSettings,
) -> Result<Option<Arc<rakkr_mqtt::rustls::ClientConfig>>, String> {
    let Some(path) = &settings.mqtt.tls_ca else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rakkr_mqtt::tls_trusting(&pem)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Run the link until `shutdown` fires, then announce `offline` and disconnect.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    settings: &AgentSettings,
    tls: Option<Arc<rakkr_mqtt::rustls::ClientConfig>>,
    announce: Announcement,
    clock: Arc<dyn Clock>,
    outgoing: Outgoing,
    state: Arc<LinkState>,
    stats: Arc<TelemetryStats>,
    shutdown: CancellationToken,
) {
    let Outgoing {
        mut meters,
        mut local_meters,
        outbox,
        outbox_ready,
        mut job_reports,
        job_commands,
        schedules,
        watchdog,
        retention,
        server_online,
        uploads,
        update_orders,
        mut update_reports,
    } = outgoing;
    let (acks_tx, mut acks) = mpsc::channel::<Ack>(64);
    let (live_tx, mut live_requests) = mpsc::channel::<LiveRequest>(4);
    let node = &settings.node_id;
    let status_topic = Topic::node(node, NodeChannel::Status).to_string();
    let meters_topic = Topic::node(node, NodeChannel::Meters).to_string();
    let ack_topic = Topic::command(node, Command::Ack).to_string();
    let jobs_topic = Topic::node(node, NodeChannel::Jobs).to_string();
    let job_commands_topic = Topic::command(node, Command::Jobs).to_string();
    let live_requests_topic = Topic::command(node, Command::Live).to_string();
    let schedules_topic = Topic::command(node, Command::Schedules).to_string();
    let watchdog_topic = Topic::command(node, Command::Watchdog).to_string();
    let retention_topic = Topic::command(node, Command::Retention).to_string();
    let update_orders_topic = Topic::command(node, Command::Update).to_string();
    let update_topic = Topic::node(node, NodeChannel::Update).to_string();
    let server_status_topic = Topic::ServerStatus.to_string();
    let live_topic = Topic::node(node, NodeChannel::Live).to_string();
    let endpoint = Endpoint {
        client_id: node.to_string(),
        host: settings.mqtt.host.clone(),
        port: settings.mqtt.port,
        keep_alive: settings.mqtt.keep_alive,
        credentials: settings.mqtt.credentials.clone(),
        tls,
    };

    let envelope = {
        let clock = clock.clone();
        move |body: NodeStatus| Envelope::stamped(clock.unix_ms(), body).encode()
    };
    let will = {
        let envelope = envelope.clone();
        let topic = status_topic.clone();
        move || {
            LastWill::new(
                &topic,
                envelope(NodeStatus::Offline {
                    reason: OfflineReason::ConnectionLost,
                }),
                QoS::AtLeastOnce,
                true,
            )
        }
    };
    let online = NodeStatus::Online {
        agent_version: AGENT_VERSION.to_owned(),
        slot: settings.slot,
        capabilities: announce.capabilities,
        realtime: announce.realtime,
    };

    let (client, eventloop) = rakkr_mqtt::connect(&endpoint, Some(&will));

    // Meter frames: forwarded only while connected. Health events: in order,
    // held while disconnected.
    let publisher = {
        let client = client.clone();
        let state = state.clone();
        let stats = stats.clone();
        let clock = clock.clone();
        let shutdown = shutdown.clone();
        let node_id = node.clone();
        tokio::spawn(async move {
            // Outbox messages sent on this connection and not yet acknowledged.
            let mut in_flight: std::collections::HashMap<
                rakkr_protocol::MessageId,
                std::time::Instant,
            > = std::collections::HashMap::new();
            let mut retry = tokio::time::interval(Duration::from_millis(500));
            let mut connection = 0u64;
            let mut no_job_runner = false;
            // Live meters: until when they were asked for, and the local
            // frames gathered since the last live frame.
            let mut live_until: Option<tokio::time::Instant> = None;
            let mut live_frame: Option<MeterFrame> = None;
            let publish_update = |report: Option<rakkr_protocol::update::UpdateReport>| {
                if let Some(report) = report {
                    let payload = Envelope::stamped(clock.unix_ms(), report).encode();
                    if let Err(e) =
                        client.try_publish(&update_topic, QoS::AtLeastOnce, true, payload)
                    {
                        tracing::warn!(error = %e, "could not queue an update report");
                    }
                }
            };
            let mut update_reports_open = true;
            loop {
                let live = live_until.is_some_and(|until| until > tokio::time::Instant::now());
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    request = live_requests.recv() => {
                        let Some(request) = request else { break };
                        if !live {
                            // Start from the next local frame, not a stale one.
                            local_meters.mark_unchanged();
                            live_frame = None;
                        }
                        live_until = Some(
                            tokio::time::Instant::now()
                                + Duration::from_millis(u64::from(request.for_ms)),
                        );
                        continue;
                    }
                    changed = local_meters.changed(), if live => {
                        if changed.is_err() {
                            live_until = None;
                            continue;
                        }
                        let Some(frame) = local_meters.borrow_and_update().clone() else { continue };
                        let merged = match &mut live_frame {
                            Some(gathered) => {
                                gathered.merge(&frame);
                                gathered
                            }
                            None => live_frame.insert(frame),
                        };
                        if merged.window_ms >= LIVE_WINDOW_MS {
                            let frame = live_frame.take().expect("just gathered");
                            if state.is_connected() {
                                let payload = Envelope::stamped(clock.unix_ms(), frame).encode();
                                if client
                                    .try_publish(&live_topic, QoS::AtMostOnce, false, payload)
                                    .is_ok()
                                {
                                    stats.live_frames_sent.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        continue;
                    }
                    frame = meters.recv() => {
                        let Some(mut frame) = frame else { break };
                        if let Some(counters) = &mut frame.counters {
                            counters.outbox_bytes = outbox.pending_bytes();
                            counters.upload_files = uploads.queued.load(Ordering::Relaxed);
                            counters.upload_bytes = uploads.queued_bytes.load(Ordering::Relaxed);
                        }
                        let sent = state.is_connected() && {
                            let payload = Envelope::stamped(clock.unix_ms(), frame).encode();
                            client
                                .try_publish(&meters_topic, QoS::AtMostOnce, false, payload)
                                .is_ok()
                        };
                        let counter = if sent {
                            &stats.meter_frames_sent
                        } else {
                            &stats.meter_frames_dropped
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    report = job_reports.recv(), if !no_job_runner => {
                        // An agent without a job runner (no recordings directory).
                        let Some(report) = report else {
                            no_job_runner = true;
                            continue;
                        };
                        if state.is_connected() {
                            let payload = Envelope::stamped(clock.unix_ms(), report).encode();
                            let _ = client.try_publish(&jobs_topic, QoS::AtLeastOnce, false, payload);
                        }
                        continue;
                    }
                    changed = update_reports.changed(), if update_reports_open => {
                        if changed.is_err() {
                            update_reports_open = false;
                        } else if state.is_connected() {
                            publish_update(update_reports.borrow_and_update().clone());
                        }
                        continue;
                    }
                    ack = acks.recv() => {
                        let Some(ack) = ack else { break };
                        for id in &ack.msg_ids {
                            in_flight.remove(id);
                        }
                        let outbox = outbox.clone();
                        if let Ok(Ok(n)) =
                            tokio::task::spawn_blocking(move || outbox.acknowledge(&ack.msg_ids)).await
                        {
                            stats.acknowledged.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    _ = outbox_ready.notified() => {}
                    _ = retry.tick() => {}
                }
                // A new connection starts over: whatever was in flight on
                // the old one may be lost, so all of it goes again, in order.
                let epoch = state.connects.load(Ordering::Acquire);
                if epoch != connection {
                    connection = epoch;
                    in_flight.clear();
                    // Retained state the broker may not hold (a restarted embedded broker).
                    if state.is_connected() {
                        publish_update(update_reports.borrow().clone());
                    }
                }
                if !state.is_connected() {
                    continue;
                }
                let waiting = {
                    let outbox = outbox.clone();
                    tokio::task::spawn_blocking(move || outbox.pending(IN_FLIGHT)).await
                };
                let Ok(Ok(waiting)) = waiting else { continue };
                for entry in waiting {
                    let due = in_flight
                        .get(&entry.msg_id)
                        .is_none_or(|sent| sent.elapsed() >= RESEND_AFTER);
                    if !due {
                        continue;
                    }
                    let topic = Topic::node(&node_id, entry.channel).to_string();
                    if client
                        .try_publish(&topic, QoS::AtLeastOnce, false, entry.payload)
                        .is_err()
                    {
                        break;
                    }
                    in_flight.insert(entry.msg_id, std::time::Instant::now());
                    stats.outbox_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let eventloop = {
        let client = client.clone();
        let status_topic = status_topic.clone();
        let envelope = envelope.clone();
        rakkr_mqtt::drive(
            eventloop,
            state.clone(),
            Some(&will),
            |event| match event {
                SessionEvent::Connected => {
                    tracing::info!(broker = %format!("{}:{}", endpoint.host, endpoint.port), "connected; announcing online");
                    if let Err(e) = client.try_publish(
                        &status_topic,
                        QoS::AtLeastOnce,
                        true,
                        envelope(online.clone()),
                    ) {
                        tracing::warn!(error = %e, "could not queue online status");
                    }
                    for topic in [
                        &ack_topic,
                        &job_commands_topic,
                        &live_requests_topic,
                        &schedules_topic,
                        &watchdog_topic,
                        &retention_topic,
                        &update_orders_topic,
                        &server_status_topic,
                    ] {
                        if let Err(e) = client.try_subscribe(topic, QoS::AtLeastOnce) {
                            tracing::warn!(error = %e, %topic, "could not subscribe");
                        }
                    }
                }
                SessionEvent::Message(p) if p.topic == ack_topic => {
                    match Envelope::<Ack>::decode(&p.payload) {
                        Ok(env) => {
                            let _ = acks_tx.try_send(env.body);
                        }
                        Err(e) => {
                            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "bad acknowledgement");
                        }
                    }
                }
                SessionEvent::Message(p) if p.topic == job_commands_topic => {
                    match Envelope::<JobCommand>::decode(&p.payload) {
                        Ok(env) => {
                            if job_commands.try_send(env.body).is_err() {
                                tracing::warn!("job runner busy; command dropped (the server repeats what matters)");
                            }
                        }
                        Err(e) => {
                            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "bad job command");
                        }
                    }
                }
                SessionEvent::Message(p) if p.topic == live_requests_topic => {
                    match Envelope::<LiveRequest>::decode(&p.payload) {
                        Ok(env) => {
                            // Requests repeat while someone watches; one lost to a full queue is harmless.
                            let _ = live_tx.try_send(env.body);
                        }
                        Err(e) => {
                            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "bad live meter request");
                        }
                    }
                }
                SessionEvent::Message(p) if p.topic == schedules_topic => {
                    match Envelope::<NodeSchedules>::decode(&p.payload) {
                        Ok(env) if env.body.schedules.iter().all(|s| &s.spec.node == node) => {
                            tracing::info!(schedules = env.body.schedules.len(), "schedules received");
                            schedules.send_replace(Some(env.body));
                        }
                        Ok(_) => {
                            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("schedules for another node refused");
                        }
                        Err(e) => {
                            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "bad schedules");
                        }
                    }
                }
                SessionEvent::Message(p) if p.topic == watchdog_topic => {
                    hand_over(&p.payload, &watchdog, &stats);
                }
                SessionEvent::Message(p) if p.topic == retention_topic => {
                    hand_over(&p.payload, &retention, &stats);
                }
                SessionEvent::Message(p) if p.topic == update_orders_topic => {
                    // An empty retained message withdraws the order: nothing to do.
                    if !p.payload.is_empty() {
                        hand_over(&p.payload, &update_orders, &stats);
                    }
                }
                SessionEvent::Message(p) if p.topic == server_status_topic => {
                    match Envelope::<ServerStatus>::decode(&p.payload) {
                        Ok(env) => {
                            let online = matches!(env.body, ServerStatus::Online { .. });
                            server_online.store(online, Ordering::Release);
                        }
                        Err(e) => {
                            stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "bad server status");
                        }
                    }
                }
                SessionEvent::Message(p) => {
                    // No other commands are defined for this build; count and ignore.
                    stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %p.topic, "ignoring message on unknown command topic");
                }
                SessionEvent::Disconnected { error, retry_in } => {
                    if rakkr_mqtt::is_refused_packet(error) {
                        stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "broker connection lost");
                }
            },
            shutdown.clone(),
        )
        .await
    };

    let _ = publisher.await;
    if state.is_connected() {
        let _ = client.try_publish(
            &status_topic,
            QoS::AtLeastOnce,
            true,
            envelope(NodeStatus::Offline {
                reason: OfflineReason::Shutdown,
            }),
        );
    }
    rakkr_mqtt::finish(&client, eventloop, &state, FINISH_TIMEOUT).await;
}
