//! The shipped Debian mosquitto configuration (deploy/mosquitto) keeps nodes
//! in their own subtree: a node cannot publish as another node, read another
//! node's commands, or take over another node's session; dashboards only read;
//! unknown users and wrong passwords are refused. Real mosquitto, free port.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rakkr_hil_tests::Mosquitto;
use rumqttc::{Client, ConnectReturnCode, Event, MqttOptions, Packet, QoS};

const QUIET: Duration = Duration::from_millis(1500);

/// A connected client: its handle and what it receives.
struct Peer {
    client: Client,
    received: mpsc::Receiver<(String, Vec<u8>)>,
}

/// Connect as `user` with `client_id`; `Err` carries the broker's refusal.
fn connect(port: u16, user: &str, password: &str, client_id: &str) -> Result<Peer> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_credentials(user, password);
    opts.set_keep_alive(Duration::from_secs(5));
    // Leave the packet bound to the broker under test.
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(opts, 64);
    let (tx, received) = mpsc::channel();
    let (connack_tx, connack) = mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let _ = connack_tx.send(Ok(ack.code));
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = connack_tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    match connack.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(ConnectReturnCode::Success)) => Ok(Peer { client, received }),
        Ok(Ok(code)) => bail!("refused: {code:?}"),
        Ok(Err(e)) => bail!("refused: {e}"),
        Err(_) => bail!("no answer from the broker"),
    }
}

impl Peer {
    fn subscribe(&self, filter: &str) -> Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce)?;
        // Let the SUBACK arrive before anything is published.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    fn publish(&self, topic: &str, payload: &str) -> Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes())?;
        Ok(())
    }

    /// Everything received until `marker` arrives (or the time runs out).
    fn until(&self, marker: &str) -> Vec<(String, String)> {
        let deadline = Instant::now() + QUIET * 3;
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok((topic, payload)) = self.received.recv_timeout(left) else {
                break;
            };
            let payload = String::from_utf8_lossy(&payload).into_owned();
            let done = payload == marker;
            got.push((topic, payload));
            if done {
                break;
            }
        }
        got
    }
}

#[test]
fn the_shipped_acls_keep_every_node_in_its_own_subtree() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(
        dir.path(),
        &[
            ("rakkr-server", "server-secret"),
            ("dashboard", "dash-secret"),
            ("node-a", "a-secret"),
            ("node-b", "b-secret"),
        ],
    )?;
    let port = broker.port;
    let server = connect(port, "rakkr-server", "server-secret", "rakkr-server")?;
    server.subscribe("rakkr/v1/#")?;
    let a = connect(port, "node-a", "a-secret", "node-a")?;
    let b = connect(port, "node-b", "b-secret", "node-b")?;
    b.subscribe("rakkr/v1/nodes/node-b/cmd/#")?;

    // A node publishes under its own subtree only. Each check ends with a marker
    // on an allowed topic: once it arrives, the forged message had its chance.
    a.publish("rakkr/v1/nodes/node-b/status", "forged status")?;
    a.publish("rakkr/v1/nodes/node-b/events", "forged event")?;
    a.publish("rakkr/v1/server/status", "forged server")?;
    a.publish("rakkr/v1/nodes/node-b/cmd/ack", "forged ack")?;
    a.publish("rakkr/v1/nodes/node-a/status", "a-marker")?;
    let seen = server.until("a-marker");
    assert_eq!(
        seen,
        [(
            "rakkr/v1/nodes/node-a/status".to_owned(),
            "a-marker".to_owned()
        )],
        "only node-a's own message reaches the server"
    );

    // A node cannot read another node's commands.
    a.subscribe("rakkr/v1/nodes/node-b/cmd/#")?;
    a.subscribe("rakkr/v1/nodes/node-a/cmd/#")?;
    server.publish("rakkr/v1/nodes/node-b/cmd/ack", "for b")?;
    server.publish("rakkr/v1/nodes/node-a/cmd/ack", "for a")?;
    assert_eq!(
        a.until("for a"),
        [(
            "rakkr/v1/nodes/node-a/cmd/ack".to_owned(),
            "for a".to_owned()
        )]
    );
    assert_eq!(b.until("for b").last().unwrap().1, "for b");

    // node-a's credential with node-b's client id does not take over node-b:
    // the broker uses the user name as client id. (It takes over node-a's own
    // session instead, as a reconnecting node does: `a` is gone from here on.)
    let impostor = connect(port, "node-a", "a-secret", "node-b")?;
    impostor.publish("rakkr/v1/nodes/node-b/status", "impostor")?;
    impostor.publish("rakkr/v1/nodes/node-a/status", "impostor-marker")?;
    // (The server also sees its own commands from above: it subscribes to everything.)
    let seen = server.until("impostor-marker");
    assert!(seen.iter().all(|(_, p)| p != "impostor"), "{seen:?}");
    assert_eq!(
        seen.last().unwrap().0,
        "rakkr/v1/nodes/node-a/status",
        "the impostor publishes as node-a"
    );
    server.publish("rakkr/v1/nodes/node-b/cmd/ack", "b still here")?;
    assert_eq!(
        b.until("b still here").last().unwrap().1,
        "b still here",
        "node-b's session was not taken over"
    );

    // Dashboards read everything and write nothing.
    let dashboard = connect(port, "dashboard", "dash-secret", "grafana")?;
    dashboard.subscribe("rakkr/v1/#")?;
    dashboard.publish("rakkr/v1/nodes/node-b/cmd/ack", "dashboard write")?;
    b.publish("rakkr/v1/nodes/node-b/meters", "b-meters")?;
    assert_eq!(
        dashboard.until("b-meters").last().unwrap().1,
        "b-meters",
        "dashboards read telemetry"
    );
    server.publish("rakkr/v1/nodes/node-b/cmd/ack", "b-marker")?;
    let seen = b.until("b-marker");
    assert_eq!(
        seen.len(),
        1,
        "the dashboard's write never arrived: {seen:?}"
    );

    // Wrong passwords, unknown users and anonymous clients are refused.
    assert!(connect(port, "node-a", "wrong", "node-a").is_err());
    assert!(connect(port, "node-z", "z-secret", "node-z").is_err());
    let mut anonymous = MqttOptions::new("anon", "127.0.0.1", port);
    anonymous.set_keep_alive(Duration::from_secs(5));
    let (_c, mut conn) = Client::new(anonymous, 8);
    let refused = conn.iter().find_map(|e| match e {
        Ok(Event::Incoming(Packet::ConnAck(ack))) => Some(ack.code != ConnectReturnCode::Success),
        Err(_) => Some(true),
        _ => None,
    });
    assert_eq!(refused, Some(true), "anonymous clients are refused");
    Ok(())
}

/// The shipped packet bound is the protocol's: the largest payload the
/// protocol allows passes mosquitto, anything over the bound ends the sender's
/// connection and reaches no one.
#[test]
fn the_shipped_packet_bound_is_the_protocols() -> Result<()> {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/mosquitto/rakkr.conf"
    ))?;
    let bound: usize = shipped
        .lines()
        .find_map(|l| l.strip_prefix("max_packet_size "))
        .ok_or_else(|| anyhow::anyhow!("no max_packet_size in the shipped configuration"))?
        .trim()
        .parse()?;
    assert_eq!(bound, rakkr_mqtt::MAX_PACKET_BYTES);

    let dir = tempfile::tempdir()?;
    let broker = Mosquitto::start(
        dir.path(),
        &[("rakkr-server", "server-secret"), ("node-a", "a-secret")],
    )?;
    let server = connect(broker.port, "rakkr-server", "server-secret", "rakkr-server")?;
    server.subscribe("rakkr/v1/#")?;
    let a = connect(broker.port, "node-a", "a-secret", "node-a")?;
    let largest = "x".repeat(rakkr_protocol::MAX_PAYLOAD_BYTES);
    a.publish("rakkr/v1/nodes/node-a/events", &largest)?;
    let seen = server.until(&largest);
    assert_eq!(seen.last().map(|(_, p)| p.len()), Some(largest.len()));

    let over = "y".repeat(rakkr_mqtt::MAX_PACKET_BYTES);
    a.publish("rakkr/v1/nodes/node-a/events", &over)?;
    std::thread::sleep(QUIET);
    // node-a's connection is gone; a fresh one sends the marker.
    let a_again = connect(broker.port, "node-a", "a-secret", "node-a")?;
    a_again.publish("rakkr/v1/nodes/node-a/events", "after")?;
    let seen = server.until("after");
    assert!(
        seen.iter()
            .all(|(_, p)| p.len() < rakkr_mqtt::MAX_PACKET_BYTES),
        "the oversized message was delivered"
    );
    assert_eq!(seen.last().map(|(_, p)| p.as_str()), Some("after"));
    Ok(())
}
