//! The embedded MQTT broker (rumqttd), and how its gaps are handled.
//!
//! rumqttd runs on its own OS threads. Its `start()` blocks forever, has no
//! shutdown and cannot report the port it bound, so:
//! - the listen address is checked by binding it ourselves first, which turns
//!   "address in use" into a clear startup error instead of a log line from a
//!   thread that quietly ended;
//! - readiness is established by a real MQTT handshake (CONNECT → CONNACK →
//!   DISCONNECT), so "ready" means the broker speaks MQTT, not just that a
//!   socket accepts;
//! - at shutdown the process simply exits; clients see the TCP connection close
//!   (nodes' Last Wills are not published, which is right: the server that would
//!   read them is going away too).
//!
//! Memory: rumqttd keeps a commit log per subscription filter, `max_segment_size`
//! × `max_segment_count` bytes at most, plus up to `max_outgoing_packet_count`
//! packets queued per connection. Its sample configuration (100 MiB × 10) lets
//! one busy filter hold 1 GiB. The bounds below hold a filter to 4 MiB; see
//! docs/decisions/0004-embedded-broker.md for the measured footprint.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Bytes per commit-log segment of one subscription filter.
pub const SEGMENT_BYTES: usize = 1024 * 1024;
/// Segments kept in memory per filter.
pub const SEGMENT_COUNT: usize = 4;
/// Packets queued towards one slow connection before it is treated as stuck.
pub const OUTGOING_PACKETS_PER_CONNECTION: u64 = 64;
/// In-flight QoS 1/2 messages per connection.
pub const INFLIGHT_PER_CONNECTION: usize = 64;
/// Broker connections beyond the node limit: the server's own link and the
/// readiness probe.
pub const RESERVED_CONNECTIONS: usize = 2;

/// A client that opens TCP but sends no CONNECT within this time is dropped.
pub const CONNECT_TIMEOUT_MS: u16 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen for MQTT on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
    #[error("the embedded broker did not accept connections on {addr} within {waited:?}")]
    NotReady { addr: SocketAddr, waited: Duration },
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    /// Where it listens (the server's own link; nodes too with `node_auth = "none"`).
    pub addr: SocketAddr,
    /// Hands the gate's authenticated connections to the broker without a
    /// socket in between (one file descriptor per node instead of three).
    pub in_process: rumqttd::InProcessV4,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Per-connection settings, for the listener and for in-process connections alike.
pub fn connection_settings() -> ConnectionSettings {
    ConnectionSettings {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        max_payload_size: rakkr_mqtt::MAX_PACKET_BYTES,
        max_inflight_count: INFLIGHT_PER_CONNECTION,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    }
}

pub fn config(addr: SocketAddr, max_connections: usize) -> Config {
    let server = ServerSettings {
        name: "rakkr-v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: connection_settings(),
    };
    Config {
        id: 0,
        router: RouterConfig {
            // The server's own link (and a readiness probe) count as
            // connections too: `max_connections` means nodes.
            max_connections: max_connections + RESERVED_CONNECTIONS,
            max_outgoing_packet_count: OUTGOING_PACKETS_PER_CONNECTION,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENT_COUNT,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Default::default()
    }
}

impl EmbeddedBroker {
    /// Start the broker on `addr` (port 0 picks a free port) and wait until it accepts.
    pub fn start(addr: SocketAddr, max_connections: usize) -> Result<EmbeddedBroker, BrokerError> {
        // rumqttd cannot report its port or a bind failure: bind first ourselves.
        let probe = TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
        let addr = probe
            .local_addr()
            .map_err(|source| BrokerError::Bind { addr, source })?;
        drop(probe);

        let mut broker = Broker::new(config(addr, max_connections));
        let in_process = broker
            .in_process_v4(connection_settings())
            .map_err(|e| BrokerError::Thread(std::io::Error::other(e.to_string())))?;
        let thread = std::thread::Builder::new()
            .name("rakkr-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;

        let waited = Duration::from_secs(5);
        let deadline = Instant::now() + waited;
        loop {
            if mqtt_handshake(addr).is_ok() {
                return Ok(EmbeddedBroker { addr, in_process });
            }
            if thread.is_finished() || Instant::now() >= deadline {
                return Err(BrokerError::NotReady { addr, waited });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Connect to `addr` as a throw-away MQTT 3.1.1 client, expect an accepting
/// CONNACK, and disconnect cleanly.
pub fn mqtt_handshake(addr: SocketAddr) -> std::io::Result<()> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let client_id = format!("rakkr-probe-{}", std::process::id());
    let mut variable = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b0000_0010, 0, 5];
    variable.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    variable.extend_from_slice(client_id.as_bytes());
    let mut connect = vec![0x10, variable.len() as u8];
    connect.extend_from_slice(&variable);
    stream.write_all(&connect)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    // CONNACK, remaining length 2, no session present, return code 0 (accepted).
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(std::io::Error::other(format!(
            "unexpected CONNACK {connack:02x?}"
        )));
    }
    stream.write_all(&[0xE0, 0x00])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_free_port_speaks_mqtt_and_refuses_a_taken_one() {
        let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        assert_ne!(broker.addr.port(), 0);
        mqtt_handshake(broker.addr).expect("a second handshake works too");
        let e = EmbeddedBroker::start(broker.addr, 16).unwrap_err();
        assert!(matches!(e, BrokerError::Bind { .. }), "{e}");
        assert!(e.to_string().contains(&broker.addr.to_string()));
    }

    /// Open a raw MQTT connection as `client_id` with a Last Will `will` on
    /// topic `will/t`, and wait for its CONNACK.
    fn raw_client_with_will(addr: SocketAddr, client_id: &str, will: &str) -> TcpStream {
        use rakkr_mqtt::rumqttc::mqttbytes::QoS;
        use rakkr_mqtt::rumqttc::mqttbytes::v4::{Connect, LastWill, Packet};
        let mut connect = Connect::new(client_id);
        connect.keep_alive = 30;
        connect.last_will = Some(LastWill::new(
            "will/t",
            will.as_bytes().to_vec(),
            QoS::AtLeastOnce,
            false,
        ));
        let mut buf = bytes::BytesMut::new();
        Packet::Connect(connect).write(&mut buf, 1 << 16).unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(&buf).unwrap();
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
        stream
    }

    /// A client that reconnects while its old connection is still open (a
    /// node after a network blip) must not get its *new* will published when
    /// the old connection goes, and must still have it for a later crash.
    #[test]
    fn a_reconnect_does_not_fire_or_consume_the_new_connections_will() {
        use rakkr_mqtt::rumqttc::{Client, Event, MqttOptions, Packet, QoS};
        let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let (tx, wills) = std::sync::mpsc::channel();
        let mut opts = MqttOptions::new("watcher", "127.0.0.1", broker.addr.port());
        opts.set_keep_alive(Duration::from_secs(5));
        let (watcher, mut connection) = Client::new(opts, 16);
        watcher.subscribe("will/t", QoS::AtLeastOnce).unwrap();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(String::new());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        assert_eq!(
            wills.recv_timeout(Duration::from_secs(5)).unwrap(),
            "",
            "subscribed"
        );

        let first = raw_client_with_will(broker.addr, "node-x", "first gone");
        let second = raw_client_with_will(broker.addr, "node-x", "second gone");
        drop(first);
        // The taken-over connection's own will may go out (MQTT 3.1.1: the
        // server closed it); the new connection's must not.
        let early: Vec<String> =
            std::iter::from_fn(|| wills.recv_timeout(Duration::from_millis(1500)).ok()).collect();
        assert!(
            early.iter().all(|w| w == "first gone"),
            "while node-x is connected: {early:?}"
        );
        // The second connection now dies without DISCONNECT: its will goes out.
        second.shutdown(std::net::Shutdown::Both).unwrap();
        drop(second);
        assert_eq!(
            wills.recv_timeout(Duration::from_secs(5)).unwrap(),
            "second gone"
        );
    }

    #[test]
    fn a_port_that_is_not_mqtt_fails_the_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        assert!(mqtt_handshake(addr).is_err());
    }
}
