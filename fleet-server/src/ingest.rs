//! The server's MQTT link: reads node presence and telemetry, keeps the live
//! fleet current and the store durable.
//!
//! Message path: event loop → decode (bounded, typed errors, counted) → live
//! fleet (in memory, immediately) → pending status map → persist task (batched
//! store transactions). The pending map keeps only the latest status per node
//! (status is last-writer-wins), so a burst such as a whole fleet reconnecting
//! costs one transaction per batch, not one fsync per node, and its size is
//! bounded by the number of tracked nodes.
//!
//! Health events (QoS 1) go to a bounded queue and are stored in batches; only
//! after the store committed them does the server publish an [`Ack`] to each
//! sender (`nodes/{node}/cmd/ack`), so a node forgets an event only once it is
//! durable here. A redelivered event is stored once (the store keys events by
//! node and message id) and acknowledged again. When the queue is full, events
//! are dropped unacknowledged — the node sends them again later. An event this
//! server cannot read (malformed, or a condition from a newer agent) but whose
//! `msg_id` it can is counted, logged and acknowledged without being stored:
//! left unacknowledged it would be resent forever and hold up the node's outbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rakkr_mqtt::rumqttc::{LastWill, QoS};
use rakkr_mqtt::{Endpoint, LinkState, SessionEvent};
use rakkr_protocol::job::{JobCommand, JobReport};
use rakkr_protocol::payload::{
    Ack, HealthEvent, MAX_ACK_IDS, MeterFrame, NodeStatus, ServerStatus,
};
use rakkr_protocol::topic::{Command, NodeChannel, Topic};
use rakkr_protocol::{Envelope, NodeId};
use rakkr_store::{HealthEventRecord, NodeStatusUpdate, Store};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::fleet::LiveFleet;
use crate::jobs;

/// MQTT client id of the server's own link.
pub const SERVER_CLIENT_ID: &str = "rakkr-server";

/// Counters of what the link received and refused.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub statuses: AtomicU64,
    pub meter_frames: AtomicU64,
    /// Live meter frames handed to someone watching.
    pub live_frames: AtomicU64,
    pub bad_topics: AtomicU64,
    pub bad_payloads: AtomicU64,
    pub refused: AtomicU64,
    pub store_errors: AtomicU64,
    pub health_events: AtomicU64,
    /// Health events dropped unacknowledged because the queue was full.
    pub health_events_deferred: AtomicU64,
    pub job_reports: AtomicU64,
    /// Job reports dropped because the desk's queue was full.
    pub job_reports_deferred: AtomicU64,
    /// Health events by (condition, change); bounded by the protocol's conditions.
    health_by_condition: Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
    /// Time to decode and apply one node message, per channel (in the order
    /// of [`NodeChannel::ALL`]).
    message_latency: MessageLatency,
    /// Time from taking a batch of health events to their being stored and
    /// acknowledged.
    pub events_persist_latency: crate::metrics::Histogram,
}

#[derive(Debug)]
struct MessageLatency([crate::metrics::Histogram; NodeChannel::ALL.len()]);

impl Default for MessageLatency {
    fn default() -> Self {
        MessageLatency(std::array::from_fn(|_| crate::metrics::Histogram::fine()))
    }
}

impl IngestStats {
    /// The message latencies, by channel name.
    pub fn message_latency(
        &self,
    ) -> impl Iterator<Item = (&'static str, &crate::metrics::Histogram)> {
        NodeChannel::ALL
            .iter()
            .map(|c| c.as_str())
            .zip(self.message_latency.0.iter())
    }

    pub(crate) fn observe_message(&self, channel: NodeChannel, took: Duration) {
        if let Some(i) = NodeChannel::ALL.iter().position(|c| *c == channel) {
            self.message_latency.0[i].observe(took);
        }
    }

    fn count_health(&self, event: &HealthEvent) {
        let change = match event.change {
            rakkr_protocol::payload::HealthChange::Raised => "raised",
            rakkr_protocol::payload::HealthChange::Cleared => "cleared",
        };
        let mut map = self
            .health_by_condition
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *map.entry((event.condition.as_str(), change)).or_default() += 1;
    }

    /// Health events received so far, by (condition, change).
    pub fn health_by_condition(&self) -> Vec<((&'static str, &'static str), u64)> {
        let map = self
            .health_by_condition
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// Health events waiting to be stored. Bounded: beyond [`Self::LIMIT`] an
/// event is not queued and not acknowledged (its node resends it).
#[derive(Debug, Default)]
pub struct PendingEvents {
    queue: Mutex<Vec<HealthEventRecord>>,
    /// Unreadable messages to acknowledge without storing.
    refused: Mutex<Vec<(NodeId, rakkr_protocol::MessageId)>>,
    notify: Notify,
}

impl PendingEvents {
    pub const LIMIT: usize = 10_000;

    /// Queue an event; `false` if the queue is full.
    pub fn push(&self, event: HealthEventRecord) -> bool {
        let mut q = self.queue.lock().expect("pending events lock poisoned");
        if q.len() >= Self::LIMIT {
            return false;
        }
        q.push(event);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Acknowledge a message that cannot be stored; `false` if too many wait.
    pub fn refuse(&self, node: NodeId, msg_id: rakkr_protocol::MessageId) -> bool {
        let mut r = self.refused.lock().expect("pending events lock poisoned");
        if r.len() >= Self::LIMIT {
            return false;
        }
        r.push((node, msg_id));
        drop(r);
        self.notify.notify_one();
        true
    }

    fn take(&self) -> Vec<HealthEventRecord> {
        std::mem::take(&mut *self.queue.lock().expect("pending events lock poisoned"))
    }

    fn take_refused(&self) -> Vec<(NodeId, rakkr_protocol::MessageId)> {
        std::mem::take(&mut *self.refused.lock().expect("pending events lock poisoned"))
    }

    fn restore(&self, mut batch: Vec<HealthEventRecord>) {
        let mut q = self.queue.lock().expect("pending events lock poisoned");
        batch.append(&mut q);
        *q = batch;
    }
}

/// Publish what a node keeps (its schedules, its policies' rules) as the
/// retained message of its `command` topic.
async fn publish_retained<T: rakkr_protocol::envelope::Payload>(
    client: &rakkr_mqtt::rumqttc::AsyncClient,
    clock: &dyn Clock,
    node: &NodeId,
    command: Command,
    body: T,
) {
    let topic = Topic::command(node, command).to_string();
    let payload = Envelope::stamped(clock.unix_ms(), body).encode();
    if let Err(e) = client.publish(topic, QoS::AtLeastOnce, true, payload).await {
        tracing::warn!(node = %node, error = %e, kind = T::KIND, "cannot publish to the node");
    }
}

/// Publish acknowledgements, one message per node (in chunks of [`MAX_ACK_IDS`]).
/// One that cannot be queued now (disconnected) is not retried: the node sends
/// again and is acknowledged then.
fn send_acks(
    client: &rakkr_mqtt::rumqttc::AsyncClient,
    clock: &dyn Clock,
    ids: Vec<(NodeId, rakkr_protocol::MessageId)>,
) {
    let mut by_node: HashMap<NodeId, Vec<rakkr_protocol::MessageId>> = HashMap::new();
    for (node, id) in ids {
        by_node.entry(node).or_default().push(id);
    }
    for (node, ids) in by_node {
        let topic = Topic::command(&node, Command::Ack).to_string();
        for chunk in ids.chunks(MAX_ACK_IDS) {
            let ack = Ack {
                msg_ids: chunk.to_vec(),
            };
            let payload = Envelope::stamped(clock.unix_ms(), ack).encode();
            let _ = client.try_publish(&topic, QoS::AtLeastOnce, false, payload);
        }
    }
}

/// Store queued health events, then acknowledge them to their nodes, until
/// shutdown. On a store error the batch stays queued and is retried.
pub async fn persist_events(
    pending: Arc<PendingEvents>,
    store: Arc<dyn Store>,
    client: rakkr_mqtt::rumqttc::AsyncClient,
    clock: Arc<dyn Clock>,
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = pending.notify.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        let refused = pending.take_refused();
        if !refused.is_empty() {
            send_acks(&client, &*clock, refused);
        }
        let batch = pending.take();
        if batch.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let stored = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                let r = store.record_health_events(&batch);
                (batch, r)
            })
            .await
        };
        match stored {
            Ok((batch, Ok(_new))) => {
                send_acks(
                    &client,
                    &*clock,
                    batch.into_iter().map(|e| (e.node, e.msg_id)).collect(),
                );
                stats.events_persist_latency.observe(started.elapsed());
            }
            Ok((batch, Err(e))) => {
                stats.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, events = batch.len(), "cannot save health events; retrying");
                pending.restore(batch);
                tokio::time::sleep(Duration::from_secs(1)).await;
                pending.notify.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "health event persistence task failed"),
        }
    }
}

/// Latest unsaved status per node.
#[derive(Debug, Default)]
pub struct PendingStatuses {
    map: Mutex<HashMap<NodeId, NodeStatusUpdate>>,
    notify: Notify,
}

impl PendingStatuses {
    pub fn push(&self, update: NodeStatusUpdate) {
        self.map
            .lock()
            .expect("pending lock poisoned")
            .insert(update.node.clone(), update);
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<NodeStatusUpdate> {
        let map = std::mem::take(&mut *self.map.lock().expect("pending lock poisoned"));
        map.into_values().collect()
    }

    /// Put back a batch that failed to save, unless newer statuses arrived meanwhile.
    fn restore(&self, batch: Vec<NodeStatusUpdate>) {
        let mut map = self.map.lock().expect("pending lock poisoned");
        for u in batch {
            map.entry(u.node.clone()).or_insert(u);
        }
    }
}

/// Save pending statuses until shutdown; then save what is left.
pub async fn persist(
    pending: Arc<PendingStatuses>,
    store: Arc<dyn Store>,
    stats: Arc<IngestStats>,
    shutdown: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            _ = pending.notify.notified() => false,
            _ = shutdown.cancelled() => true,
        };
        let batch = pending.take();
        if !batch.is_empty() {
            let store = store.clone();
            let result = tokio::task::spawn_blocking(move || {
                let r = store.record_node_statuses(&batch);
                (batch, r)
            })
            .await;
            match result {
                Ok((_, Ok(()))) => {}
                Ok((batch, Err(e))) => {
                    stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, nodes = batch.len(), "cannot save node statuses; retrying");
                    pending.restore(batch);
                    if !stopping {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        pending.notify.notify_one();
                    }
                }
                Err(e) => tracing::error!(error = %e, "status persistence task failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

/// The broker the server's link connects to.
#[derive(Debug, Clone)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    /// User name and password (an external broker); `None` for the embedded one.
    pub credentials: Option<(String, String)>,
}

/// Run the server's MQTT link until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    broker: Broker,
    sinks: Sinks,
    outbound: mpsc::Receiver<jobs::Outbound>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    state: Arc<LinkState>,
    shutdown: CancellationToken,
) {
    let (events, stats) = (sinks.events.clone(), sinks.stats.clone());
    let endpoint = Endpoint {
        client_id: SERVER_CLIENT_ID.into(),
        host: broker.host,
        port: broker.port,
        keep_alive: Duration::from_secs(10),
        credentials: broker.credentials,
        tls: None,
    };
    let status_topic = Topic::ServerStatus.to_string();
    let server_status = {
        let clock = clock.clone();
        move |body: ServerStatus| Envelope::stamped(clock.unix_ms(), body).encode()
    };
    let will = {
        let server_status = server_status.clone();
        let topic = status_topic.clone();
        move || {
            LastWill::new(
                &topic,
                server_status(ServerStatus::Offline),
                QoS::AtLeastOnce,
                true,
            )
        }
    };
    let (client, eventloop) = rakkr_mqtt::connect(&endpoint, Some(&will));
    let event_persister = tokio::spawn(persist_events(
        events.clone(),
        store,
        client.clone(),
        clock.clone(),
        stats.clone(),
        shutdown.clone(),
    ));

    let publisher = tokio::spawn(publish_outbound(
        outbound,
        client.clone(),
        clock.clone(),
        shutdown.clone(),
    ));

    let eventloop = rakkr_mqtt::drive(
        eventloop,
        state.clone(),
        Some(&will),
        |event| match event {
            SessionEvent::Connected => {
                tracing::info!("connected to broker; subscribing to node topics");
                let online = ServerStatus::Online {
                    server_version: env!("CARGO_PKG_VERSION").into(),
                };
                let requests = [
                    client.try_publish(&status_topic, QoS::AtLeastOnce, true, server_status(online)),
                    client.try_subscribe(NodeChannel::Status.filter_all_nodes(), QoS::AtLeastOnce),
                    client.try_subscribe(NodeChannel::Meters.filter_all_nodes(), QoS::AtMostOnce),
                    client.try_subscribe(NodeChannel::Live.filter_all_nodes(), QoS::AtMostOnce),
                    client.try_subscribe(NodeChannel::Events.filter_all_nodes(), QoS::AtLeastOnce),
                    client.try_subscribe(NodeChannel::Jobs.filter_all_nodes(), QoS::AtLeastOnce),
                    client.try_subscribe(NodeChannel::Update.filter_all_nodes(), QoS::AtLeastOnce),
                ];
                for r in requests {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "cannot queue subscription");
                    }
                }
            }
            SessionEvent::Message(p) => handle_message(&p.topic, &p.payload, &sinks, clock.unix_ms()),
            SessionEvent::Disconnected { error, retry_in } => {
                tracing::warn!(%error, retry_in_ms = retry_in.as_millis() as u64, "broker connection lost");
            }
        },
        shutdown.clone(),
    )
    .await;
    let _ = client.try_publish(
        &status_topic,
        QoS::AtLeastOnce,
        true,
        server_status(ServerStatus::Offline),
    );
    rakkr_mqtt::finish(&client, eventloop, &state, Duration::from_secs(2)).await;
    let _ = event_persister.await;
    let _ = publisher.await;
}

/// Publish job commands and acknowledgements (QoS 1) until shutdown.
/// Acknowledgements for one node that are ready together go in one message.
async fn publish_outbound(
    mut outbound: mpsc::Receiver<jobs::Outbound>,
    client: rakkr_mqtt::rumqttc::AsyncClient,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            n = outbound.recv_many(&mut batch, MAX_ACK_IDS) => if n == 0 { return },
            _ = shutdown.cancelled() => return,
        }
        let mut acks = Vec::new();
        for out in batch.drain(..) {
            match out {
                jobs::Outbound::Ack(node, id) => acks.push((node, id)),
                jobs::Outbound::Live(node, request) => {
                    let topic = Topic::command(&node, Command::Live).to_string();
                    let payload = Envelope::stamped(clock.unix_ms(), request).encode();
                    if let Err(e) = client.publish(topic, QoS::AtMostOnce, false, payload).await {
                        tracing::warn!(node = %node, error = %e, "cannot publish live meter request");
                    }
                }
                jobs::Outbound::Schedules(node, schedules) => {
                    publish_retained(&client, &*clock, &node, Command::Schedules, schedules).await;
                }
                jobs::Outbound::Watchdog(node, rules) => {
                    publish_retained(&client, &*clock, &node, Command::Watchdog, rules).await;
                }
                jobs::Outbound::Retention(node, rules) => {
                    publish_retained(&client, &*clock, &node, Command::Retention, rules).await;
                }
                jobs::Outbound::Update(node, order) => {
                    publish_retained(&client, &*clock, &node, Command::Update, order).await;
                }
                jobs::Outbound::ClearUpdate(node) => {
                    // An empty retained message removes the retained order.
                    let topic = Topic::command(&node, Command::Update).to_string();
                    if let Err(e) = client
                        .publish(topic, QoS::AtLeastOnce, true, Vec::new())
                        .await
                    {
                        tracing::warn!(node = %node, error = %e, "cannot clear the update order");
                    }
                }
                jobs::Outbound::Command(node, command) => {
                    let topic = Topic::command(&node, Command::Jobs).to_string();
                    let payload =
                        Envelope::<JobCommand>::stamped(clock.unix_ms(), command).encode();
                    if let Err(e) = client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                    {
                        tracing::warn!(node = %node, error = %e, "cannot publish job command");
                    }
                }
            }
        }
        send_acks(&client, &*clock, acks);
    }
}

/// Where decoded messages go.
pub struct Sinks {
    pub fleet: Arc<LiveFleet>,
    pub pending: Arc<PendingStatuses>,
    pub events: Arc<PendingEvents>,
    /// Job reports, for the job desk ([`crate::jobs`]).
    pub jobs: mpsc::Sender<jobs::Inbound>,
    /// Acknowledgements of unreadable job updates.
    pub commands: jobs::Commands,
    pub stats: Arc<IngestStats>,
}

/// Decode and apply one incoming message, timed per channel. Never panics;
/// every refusal is counted.
pub fn handle_message(topic: &str, payload: &[u8], sinks: &Sinks, now_ms: u64) {
    let started = std::time::Instant::now();
    if let Some(channel) = apply_message(topic, payload, sinks, now_ms) {
        sinks.stats.observe_message(channel, started.elapsed());
    }
}

/// [`handle_message`]'s work: the node channel the message came on, if any.
fn apply_message(topic: &str, payload: &[u8], sinks: &Sinks, now_ms: u64) -> Option<NodeChannel> {
    let Sinks {
        fleet,
        pending,
        events,
        stats,
        ..
    } = sinks;
    let (node, channel) = match Topic::parse(topic) {
        Ok(Topic::Node { node, channel }) => (node, channel),
        Ok(_) | Err(_) => {
            stats.bad_topics.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(topic, "ignoring message on unexpected topic");
            return None;
        }
    };
    match channel {
        NodeChannel::Status => {
            // An empty retained message clears the retained status; nothing to apply.
            if payload.is_empty() {
                return None;
            }
            match Envelope::<NodeStatus>::decode(payload) {
                Ok(env) => match fleet.apply_status(&node, &env.body, now_ms) {
                    Ok(update) => {
                        stats.statuses.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(node = %node, presence = update.presence.as_str(), "node presence");
                        pending.push(update);
                    }
                    Err(e) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(node = %node, error = %e, "status refused");
                    }
                },
                Err(e) => {
                    stats.bad_payloads.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %node, error = %e, "bad status payload");
                }
            }
        }
        NodeChannel::Meters => match Envelope::<MeterFrame>::decode(payload) {
            Ok(env) => {
                if fleet.apply_meters(&node, env.body, now_ms).is_ok() {
                    stats.meter_frames.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                stats.bad_payloads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %node, error = %e, "bad meter payload");
            }
        },
        NodeChannel::Update => {
            // An empty retained message clears the retained report; nothing to apply.
            if payload.is_empty() {
                return None;
            }
            match Envelope::<rakkr_protocol::update::UpdateReport>::decode(payload) {
                Ok(env) => {
                    let report = env.body;
                    tracing::info!(node = %node, update = %report.update_id, version = %report.version, phase = report.phase.as_str(), detail = %report.detail, "update step");
                    if !fleet.apply_update(&node, report) {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    stats.bad_payloads.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %node, error = %e, "bad update report");
                }
            }
        }
        NodeChannel::Live => match Envelope::<MeterFrame>::decode(payload) {
            Ok(env) => {
                if fleet.publish_live(&node, env.body) {
                    stats.live_frames.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                stats.bad_payloads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %node, error = %e, "bad live meter payload");
            }
        },
        NodeChannel::Events => match Envelope::<HealthEvent>::decode(payload) {
            Ok(env) => {
                tracing::info!(node = %node, condition = ?env.body.condition, change = ?env.body.change, detail = %env.body.detail, "health event");
                stats.count_health(&env.body);
                fleet.apply_health(&node, &env.body);
                let queued = events.push(HealthEventRecord {
                    node,
                    msg_id: env.msg_id,
                    event: env.body,
                    received_ms: now_ms,
                });
                let counter = if queued {
                    &stats.health_events
                } else {
                    &stats.health_events_deferred
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.bad_payloads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %node, error = %e, "unreadable health event; acknowledged, not stored");
                if let Some(id) = readable_msg_id(payload) {
                    events.refuse(node, id);
                }
            }
        },
        NodeChannel::Jobs => match Envelope::<JobReport>::decode(payload) {
            Ok(env) => {
                stats.job_reports.fetch_add(1, Ordering::Relaxed);
                let inbound = jobs::Inbound {
                    node,
                    msg_id: env.msg_id,
                    report: env.body,
                };
                // Full: dropped unacknowledged; the node repeats it.
                if sinks.jobs.try_send(inbound).is_err() {
                    stats.job_reports_deferred.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                stats.bad_payloads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(node = %node, error = %e, "unreadable job report; acknowledged, not applied");
                if let Some(id) = readable_msg_id(payload) {
                    sinks.commands.send(jobs::Outbound::Ack(node, id));
                }
            }
        },
    }
    Some(channel)
}

/// The `msg_id` of a payload that may not decode as a whole.
fn readable_msg_id(payload: &[u8]) -> Option<rakkr_protocol::MessageId> {
    if payload.len() > rakkr_protocol::MAX_PAYLOAD_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    serde_json::from_value(value.get("msg_id")?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rakkr_protocol::payload::{BootSlot, Capabilities};

    fn online_bytes() -> Vec<u8> {
        Envelope::stamped(
            1,
            NodeStatus::Online {
                agent_version: "9".into(),
                slot: BootSlot::B,
                capabilities: Capabilities {
                    sources: vec![],
                    channels: 2,
                    sample_rates: vec![],
                    codecs: vec![],
                    max_jobs: 0,
                    devices: Vec::new(),
                },
                realtime: Default::default(),
            },
        )
        .encode()
    }

    #[test]
    fn every_kind_of_bad_message_is_counted_not_applied() {
        let (fleet, _) = LiveFleet::from_records(vec![], 10, 0);
        let (jobs_tx, mut jobs_rx) = mpsc::channel(4);
        let (commands, mut outbound) = jobs::Commands::new(Arc::default());
        let sinks = Sinks {
            fleet: Arc::new(fleet),
            pending: Arc::default(),
            events: Arc::default(),
            jobs: jobs_tx,
            commands,
            stats: Arc::default(),
        };
        let (fleet, pending, events, stats) =
            (&sinks.fleet, &sinks.pending, &sinks.events, &sinks.stats);
        let h = |topic: &str, payload: &[u8]| handle_message(topic, payload, &sinks, 5);

        h("rakkr/v1/nodes/a/status", b"{\"v\":1");
        h("rakkr/v1/nodes/a/status", b"{\"v\":2,\"msg_id\":\"x\"}");
        h(
            "rakkr/v1/nodes/a/meters",
            &vec![b'x'; rakkr_protocol::MAX_PAYLOAD_BYTES + 1],
        );
        h("rakkr/v1/nodes/NOT OK/status", &online_bytes());
        h("elsewhere/topic", &online_bytes());
        assert_eq!(stats.bad_payloads.load(Ordering::Relaxed), 3);
        assert_eq!(stats.bad_topics.load(Ordering::Relaxed), 2);
        assert_eq!(fleet.counts().total, 0);

        h("rakkr/v1/nodes/a/status", &online_bytes());
        assert_eq!(fleet.counts().online, 1);
        assert_eq!(pending.take().len(), 1);

        // A health event from a newer agent (unknown condition) is refused but
        // acknowledged, so it does not wait in the node's outbox forever.
        let newer = br#"{"v":1,"msg_id":"019acb2e-0000-7000-8000-000000000001","sent_at_ms":1,
            "condition":"tape_jam","change":"raised","severity":"warning","at_ms":1,"detail":"x"}"#;
        h("rakkr/v1/nodes/a/events", newer);
        assert!(events.take().is_empty());
        assert_eq!(events.take_refused().len(), 1);
        h("rakkr/v1/nodes/a/events", b"not json at all");
        assert!(
            events.take_refused().is_empty(),
            "no id, nothing to acknowledge"
        );

        // Job reports: a good claim reaches the desk; a bad update with a
        // readable id is acknowledged so the node's outbox moves on; wrong
        // version, oversized, garbage: counted, nothing applied.
        let bad_before = stats.bad_payloads.load(Ordering::Relaxed);
        let claim = Envelope::stamped(
            1,
            JobReport::Claim {
                free_slots: 1,
                held: vec![],
            },
        );
        h("rakkr/v1/nodes/a/jobs", &claim.encode());
        let got = jobs_rx.try_recv().unwrap();
        assert_eq!((got.node.as_str(), got.msg_id), ("a", claim.msg_id));
        let bad_update = br#"{"v":1,"msg_id":"019acb2e-0000-7000-8000-000000000002","sent_at_ms":1,
            "type":"update","job_id":"019acb2e-0000-7000-8000-000000000003","lease_id":1,"state":"lost","at_ms":1}"#;
        h("rakkr/v1/nodes/a/jobs", bad_update);
        assert!(matches!(outbound.try_recv(), Ok(jobs::Outbound::Ack(n, _)) if n.as_str() == "a"));
        h(
            "rakkr/v1/nodes/a/jobs",
            br#"{"v":9,"msg_id":"019acb2e-0000-7000-8000-000000000004","type":"claim"}"#,
        );
        h(
            "rakkr/v1/nodes/a/jobs",
            &vec![b' '; rakkr_protocol::MAX_PAYLOAD_BYTES + 1],
        );
        h("rakkr/v1/nodes/a/jobs", b"\xff\xfe");
        assert!(jobs_rx.try_recv().is_err(), "nothing bad reached the desk");
        assert_eq!(stats.bad_payloads.load(Ordering::Relaxed), bad_before + 4);
        // A full desk queue defers reports (the node repeats them).
        for _ in 0..5 {
            h("rakkr/v1/nodes/a/jobs", &claim.encode());
        }
        assert_eq!(stats.job_reports_deferred.load(Ordering::Relaxed), 1);
    }
}
