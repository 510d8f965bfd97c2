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
//! Health events go to `nodes/{node}/events` at QoS 1. While disconnected they
//! wait in a bounded in-memory queue ([`EVENT_QUEUE`]; the oldest are dropped
//! and counted beyond it) and are sent in order on reconnection. (They do not
//! yet survive an agent restart: that is the durable outbox's job.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rakkr_mqtt::rumqttc::{LastWill, QoS};
use rakkr_mqtt::{Endpoint, LinkState, SessionEvent};
use rakkr_protocol::Envelope;
use rakkr_protocol::payload::{
    Capabilities, HealthEvent, MeterFrame, NodeStatus, OfflineReason, RealtimeStatus,
};
use rakkr_protocol::topic::{NodeChannel, Topic};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AGENT_VERSION;
use crate::clock::Clock;
use crate::config::AgentSettings;

/// How long an orderly shutdown waits to deliver the final `offline` status.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

/// Health events held while disconnected.
pub const EVENT_QUEUE: usize = 256;

#[derive(Debug, Default)]
pub struct TelemetryStats {
    pub meter_frames_sent: AtomicU64,
    pub meter_frames_dropped: AtomicU64,
    pub bad_messages: AtomicU64,
    pub health_events_sent: AtomicU64,
    pub health_events_dropped: AtomicU64,
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
    pub events: mpsc::Receiver<HealthEvent>,
}

/// Run the link until `shutdown` fires, then announce `offline` and disconnect.
pub async fn run(
    settings: &AgentSettings,
    announce: Announcement,
    clock: Arc<dyn Clock>,
    outgoing: Outgoing,
    state: Arc<LinkState>,
    stats: Arc<TelemetryStats>,
    shutdown: CancellationToken,
) {
    let Outgoing {
        mut meters,
        mut events,
    } = outgoing;
    let node = &settings.node_id;
    let status_topic = Topic::node(node, NodeChannel::Status).to_string();
    let meters_topic = Topic::node(node, NodeChannel::Meters).to_string();
    let events_topic = Topic::node(node, NodeChannel::Events).to_string();
    let endpoint = Endpoint {
        client_id: node.to_string(),
        host: settings.mqtt.host.clone(),
        port: settings.mqtt.port,
        keep_alive: settings.mqtt.keep_alive,
        credentials: settings.mqtt.credentials.clone(),
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
        tokio::spawn(async move {
            let mut pending: std::collections::VecDeque<HealthEvent> =
                std::collections::VecDeque::new();
            let mut retry = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    frame = meters.recv() => {
                        let Some(frame) = frame else { break };
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
                    }
                    event = events.recv() => {
                        let Some(event) = event else { break };
                        if pending.len() == EVENT_QUEUE {
                            pending.pop_front();
                            stats.health_events_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        pending.push_back(event);
                    }
                    _ = retry.tick() => {}
                }
                while state.is_connected() && !pending.is_empty() {
                    let payload = Envelope::stamped(clock.unix_ms(), pending[0].clone()).encode();
                    if client
                        .try_publish(&events_topic, QoS::AtLeastOnce, false, payload)
                        .is_err()
                    {
                        break;
                    }
                    pending.pop_front();
                    stats.health_events_sent.fetch_add(1, Ordering::Relaxed);
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
                }
                SessionEvent::Message(p) => {
                    // No commands are defined for this build; count and ignore.
                    stats.bad_messages.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %p.topic, "ignoring message on unknown command topic");
                }
                SessionEvent::Disconnected { error, retry_in } => {
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
