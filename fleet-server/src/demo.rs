//! `rakkr-server demo`: the server plus simulated appliances in one process.
//!
//! The appliances are real agents (`rakkr-agent`'s library) with synthetic
//! sources, each with its own MQTT connection to the embedded broker, so the
//! demo exercises the same path as a real fleet.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use rakkr_agent::AgentSettings;
use rakkr_agent::run::AgentHandles;
use rakkr_protocol::NodeId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

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

/// Start `count` simulated appliances against the broker at `mqtt` (host, port).
pub fn spawn_appliances(
    count: usize,
    mqtt: (&str, u16),
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for i in 0..count {
        let (name, channels) = DEMO_NODES[i % DEMO_NODES.len()];
        let id = if i < DEMO_NODES.len() {
            name.to_owned()
        } else {
            format!("{name}-{}", i / DEMO_NODES.len() + 1)
        };
        let node = NodeId::new(id).expect("demo node names are valid");
        let settings = AgentSettings::simulated(node, mqtt.0, mqtt.1, channels);
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
    set
}
