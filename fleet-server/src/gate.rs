//! The authorizing MQTT gate in front of the embedded broker.
//!
//! rumqttd authenticates only at connect and has no per-topic rules, so the
//! broker itself listens only on an internal loopback port (for the server's
//! own link) and clients reach it only through this gate (decision 0011):
//!
//! 0. On the TLS listener, the TLS handshake must complete within the same
//!    wait as CONNECT (a slow handshake cannot hold a connection open).
//! 1. The first packet must be a CONNECT, within [`CONNECT_WAIT`] and at most
//!    [`MAX_PACKET_BYTES`]. A node authenticates with its node id as client id
//!    *and* user name and its credential as password ([`crate::identity`]); a
//!    dashboard with a reader account and a client id `{user}:{anything}` (a
//!    node id never has a ':', so a reader can never take a node's session),
//!    with read access to the tree only. Anything else gets a
//!    refusing CONNACK and the connection is closed.
//! 2. A node's Last Will must be one of its own topics.
//! 3. Every later client packet is parsed and bounded: PUBLISH only to the
//!    node's own topics, SUBSCRIBE only to its own commands (readers: the
//!    tree, no PUBLISH at all), no second CONNECT. A violation closes the
//!    connection (MQTT 3.1.1 has no per-message refusal for PUBLISH) and is
//!    counted and logged. Refused logins, Last Wills, publishes and
//!    subscriptions are also audited (`mqtt connect`, `mqtt publish`,
//!    `mqtt subscribe`, outcome `denied`), bounded per client address like
//!    the HTTP side's anonymous refusals (with a budget of their own).
//! 4. Frames pass to the broker unchanged; the broker's packets pass back
//!    unchanged (it sends only what the client was allowed to subscribe to).
//!    The hand-over is in-process ([`rumqttd::InProcessV4`], a patch of the
//!    vendored broker), through a bounded in-memory pipe of
//!    [`PIPE_BYTES`] each way: a node costs the server one file descriptor,
//!    its own socket, not three (gate socket + loopback pair), which is what
//!    lets 10,000 nodes fit under a 20,000-descriptor limit.
//! 5. One live connection per node: a new one ends the old one; revoking a
//!    credential ends the node's connection at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rakkr_mqtt::rumqttc::mqttbytes::{self, v4::Packet};
use rakkr_protocol::NodeId;
use rakkr_protocol::topic::{node_may_publish, node_may_subscribe, reader_may_subscribe};
use rakkr_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::identity::{Identities, Verified, constant_time_eq, sha256_hex};

/// A client must send CONNECT this soon after opening the connection.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// Largest packet accepted from a client (the protocol's payload bound plus headers).
pub const MAX_PACKET_BYTES: usize = rakkr_mqtt::MAX_PACKET_BYTES;

/// Bytes buffered each way between the gate and the broker for one client;
/// a full pipe holds the writer back (no unbounded queue in between).
pub const PIPE_BYTES: usize = 16 * 1024;

/// How long open connections keep passing traffic after shutdown begins.
pub const SHUTDOWN_LINGER: Duration = Duration::from_millis(500);

/// Client ids no one may take through the gate: the server's own link.
pub const RESERVED_CLIENT_IDS: [&str; 1] = [crate::ingest::SERVER_CLIENT_ID];

#[derive(Debug, Default)]
pub struct GateStats {
    pub connections: AtomicU64,
    pub refused_logins: AtomicU64,
    pub refused_publishes: AtomicU64,
    pub refused_subscribes: AtomicU64,
    /// Connections closed for a protocol violation, an oversized packet or silence.
    pub protocol_errors: AtomicU64,
    /// Connections ended because the node connected again or was revoked.
    pub ended: AtomicU64,
}

/// A read-only account for dashboards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    pub name: String,
    pub password_sha256: String,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Principal {
    Node(NodeId),
    Reader(String),
}

pub struct Gate {
    /// The embedded broker, which serves the connections the gate admits.
    pub upstream: rumqttd::InProcessV4,
    /// How long a client has to send CONNECT ([`CONNECT_WAIT`] in service).
    pub connect_wait: Duration,
    pub identities: Arc<Identities>,
    pub readers: Vec<Reader>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<GateStats>,
    /// Bounds the refusals audited per client address (the gate's own; HTTP has another).
    pub audit_budget: Arc<crate::audit::AnonymousBudget>,
}

/// Why the gate closed a connection.
#[derive(Debug)]
enum Closed {
    /// The access rules refused it: audited. `who` is the principal, once
    /// the CONNECT proved one.
    Refused {
        who: Option<Principal>,
        /// The node a refused login claimed to be, for the audit's target.
        claimed: Option<NodeId>,
        action: &'static str,
        why: String,
    },
    /// Anything else (a protocol error, silence, the broker): logged only.
    Other(String),
}

impl Closed {
    fn refused(who: Option<&Principal>, action: &'static str, why: String) -> Closed {
        Closed::Refused {
            who: who.cloned(),
            claimed: None,
            action,
            why,
        }
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Refused { why, .. } | Closed::Other(why) => f.write_str(why),
        }
    }
}

/// Audits a refusal of the client at `peer`, within the address's budget.
async fn audit_refusal(
    gate: &Gate,
    peer: std::net::IpAddr,
    who: Option<Principal>,
    claimed: Option<NodeId>,
    action: &str,
    why: String,
) {
    let now = gate.clock.unix_ms();
    let (admit, left_out) = gate.audit_budget.admit(&peer.to_string(), now);
    if !admit {
        return;
    }
    let reason = match left_out {
        0 => why,
        n => format!("{why} ({n} more refusals from this address were not recorded one by one)"),
    };
    let actor = match &who {
        Some(Principal::Node(node)) => format!("node:{node}@{peer}"),
        Some(Principal::Reader(name)) => format!("reader:{name}@{peer}"),
        None => format!("anonymous@{peer}"),
    };
    crate::audit::record(
        gate.store.clone(),
        rakkr_store::AuditEntry {
            at_ms: now,
            actor,
            action: action.to_owned(),
            target: match (&who, &claimed) {
                (Some(Principal::Node(node)), _) | (None, Some(node)) => {
                    Some(format!("node:{node}"))
                }
                _ => None,
            },
            outcome: "denied".into(),
            reason: Some(reason),
            ..Default::default()
        },
    )
    .await;
}

/// CONNACK return codes (MQTT 3.1.1).
const BAD_USER_NAME_OR_PASSWORD: u8 = 4;
const NOT_AUTHORIZED: u8 = 5;
const IDENTIFIER_REJECTED: u8 = 2;

/// Serve clients on `listener` until `shutdown`; with `tls`, each connection
/// first completes a TLS handshake, within the CONNECT wait.
pub async fn run(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "gate accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => {
                // Open connections keep passing traffic for a moment, so the
                // server's retained `offline` (published as its link closes)
                // still reaches subscribers before the process ends.
                tokio::time::sleep(SHUTDOWN_LINGER).await;
                return;
            }
        };
        let gate = gate.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            gate.stats.connections.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let served = match tls {
                None => serve(stream, &gate).await,
                Some(acceptor) => {
                    match tokio::time::timeout(gate.connect_wait, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve(stream, &gate).await,
                        Ok(Err(e)) => {
                            gate.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                            Err(Closed::Other(format!("TLS handshake failed: {e}")))
                        }
                        Err(_) => {
                            gate.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                            Err(Closed::Other(format!(
                                "no TLS handshake within {:?}",
                                gate.connect_wait
                            )))
                        }
                    }
                }
            };
            match served {
                Ok(()) => {}
                Err(Closed::Other(why)) => {
                    tracing::info!(%peer, %why, "MQTT connection closed by the gate")
                }
                Err(Closed::Refused {
                    who,
                    claimed,
                    action,
                    why,
                }) => {
                    tracing::info!(%peer, %why, "MQTT connection refused by the gate");
                    audit_refusal(&gate, peer.ip(), who, claimed, action, why).await;
                }
            }
        });
    }
}

/// Read one whole packet: the parsed packet and its exact bytes.
async fn read_packet(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
) -> Result<Option<(Packet, Bytes)>, String> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET_BYTES) {
            Ok(header) => {
                let frame = buf.split_to(header.frame_length()).freeze();
                let packet = Packet::read(&mut BytesMut::from(&frame[..]), MAX_PACKET_BYTES)
                    .map_err(|e| format!("malformed packet: {e:?}"))?;
                return Ok(Some((packet, frame)));
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("bad packet: {e:?}")),
        }
        buf.reserve(4096);
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
    }
}

async fn refuse_login(
    client: &mut (impl AsyncWriteExt + Unpin),
    code: u8,
    why: String,
    stats: &GateStats,
) -> String {
    stats.refused_logins.fetch_add(1, Ordering::Relaxed);
    let _ = client.write_all(&[0x20, 0x02, 0x00, code]).await;
    let _ = client.shutdown().await;
    why
}

/// Who the CONNECT says it is, if its credentials prove it.
fn authenticate(
    gate: &Gate,
    connect: &mqttbytes::v4::Connect,
) -> Result<(Principal, Option<Verified>), (u8, String)> {
    let Some(login) = &connect.login else {
        return Err((NOT_AUTHORIZED, "no user name and password".into()));
    };
    // Readers' client ids are `{name}:…`; a node id never has a ':'.
    if let Some((prefix, _)) = connect.client_id.split_once(':') {
        let reader = gate.readers.iter().find(|r| r.name == login.username);
        return match reader {
            Some(r) if prefix != r.name => Err((
                IDENTIFIER_REJECTED,
                format!("reader {} must use a client id {}:…", r.name, r.name),
            )),
            Some(r) if constant_time_eq(&sha256_hex(&login.password), &r.password_sha256) => {
                Ok((Principal::Reader(r.name.clone()), None))
            }
            _ => Err((
                BAD_USER_NAME_OR_PASSWORD,
                format!(
                    "unknown reader or wrong password ({:?})",
                    login.username.chars().take(64).collect::<String>()
                ),
            )),
        };
    }
    let node = NodeId::new(login.username.as_str())
        .map_err(|e| (BAD_USER_NAME_OR_PASSWORD, format!("unknown user: {e}")))?;
    if connect.client_id != login.username {
        return Err((
            IDENTIFIER_REJECTED,
            format!(
                "client id {:?} is not the node's id {node}",
                connect.client_id.chars().take(80).collect::<String>()
            ),
        ));
    }
    if RESERVED_CLIENT_IDS.contains(&node.as_str()) {
        return Err((IDENTIFIER_REJECTED, format!("{node} is reserved")));
    }
    let verified = gate
        .identities
        .verify(&node, &login.password)
        .map_err(|why| (BAD_USER_NAME_OR_PASSWORD, why))?;
    Ok((Principal::Node(node), Some(verified)))
}

/// Whether the principal may send this packet on; `Err` says why not.
fn allowed(principal: &Principal, packet: &Packet, stats: &GateStats) -> Result<(), String> {
    match (principal, packet) {
        (_, Packet::Connect(_)) => {
            stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            Err("a second CONNECT".into())
        }
        (Principal::Node(node), Packet::Publish(p)) if !node_may_publish(node, &p.topic) => {
            stats.refused_publishes.fetch_add(1, Ordering::Relaxed);
            Err(format!("node {node} may not publish to {:?}", p.topic))
        }
        (Principal::Reader(name), Packet::Publish(p)) => {
            stats.refused_publishes.fetch_add(1, Ordering::Relaxed);
            Err(format!("reader {name} may not publish (to {:?})", p.topic))
        }
        (principal, Packet::Subscribe(s)) => {
            for f in &s.filters {
                let ok = match principal {
                    Principal::Node(node) => node_may_subscribe(node, &f.path),
                    Principal::Reader(_) => reader_may_subscribe(&f.path),
                };
                if !ok {
                    stats.refused_subscribes.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("{principal:?} may not subscribe to {:?}", f.path));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Serve one client. At shutdown the gate only stops accepting: open
/// connections pass traffic until the process ends, like the broker behind
/// them, so clients still get the server's final `offline` status.
async fn serve<S>(mut client: S, gate: &Gate) -> Result<(), Closed>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let first = tokio::time::timeout(gate.connect_wait, read_packet(&mut client, &mut buf)).await;
    let (connect, frame) = match first {
        Ok(Ok(Some((Packet::Connect(c), frame)))) => (c, frame),
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(_))) => {
            gate.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Closed::Other("the first packet is not CONNECT".into()));
        }
        Ok(Err(e)) => {
            gate.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Closed::Other(e));
        }
        Err(_) => {
            gate.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            return Err(Closed::Other(format!(
                "no CONNECT within {:?}",
                gate.connect_wait
            )));
        }
    };
    let (principal, verified) = match authenticate(gate, &connect) {
        Ok(p) => p,
        Err((code, why)) => {
            let why = refuse_login(&mut client, code, why, &gate.stats).await;
            // A node's login names the node (its user name and client id).
            let claimed = connect
                .login
                .as_ref()
                .filter(|_| !connect.client_id.contains(':'))
                .and_then(|l| NodeId::new(l.username.as_str()).ok());
            return Err(Closed::Refused {
                who: None,
                claimed,
                action: "mqtt connect",
                why,
            });
        }
    };
    if let (Principal::Node(node), Some(will)) = (&principal, &connect.last_will)
        && !node_may_publish(node, &will.topic)
    {
        let why = format!("node {node}'s Last Will goes to {:?}", will.topic);
        let why = refuse_login(&mut client, NOT_AUTHORIZED, why, &gate.stats).await;
        return Err(Closed::refused(Some(&principal), "mqtt connect", why));
    }
    if let (Principal::Reader(name), Some(_)) = (&principal, &connect.last_will) {
        let why = format!("reader {name} may not set a Last Will");
        let why = refuse_login(&mut client, NOT_AUTHORIZED, why, &gate.stats).await;
        return Err(Closed::refused(Some(&principal), "mqtt connect", why));
    }
    let (mut upstream, broker_end) = tokio::io::duplex(PIPE_BYTES);
    let broker = gate.upstream.clone();
    tokio::spawn(async move { broker.serve(broker_end).await });
    upstream
        .write_all(&frame)
        .await
        .map_err(|e| Closed::Other(format!("broker: {e}")))?;

    let (connection, ended) = match &principal {
        Principal::Node(node) => {
            if verified == Some(Verified::Next) {
                let (ids, store, node, now) = (
                    gate.identities.clone(),
                    gate.store.clone(),
                    node.clone(),
                    gate.clock.unix_ms(),
                );
                let promoted =
                    tokio::task::spawn_blocking(move || ids.promote(&*store, &node, now)).await;
                if let Ok(Err(e)) = promoted {
                    tracing::error!(error = %e, "cannot make a rotated credential current");
                }
            }
            let (n, token) = gate.identities.connected(node);
            (Some((node.clone(), n)), token)
        }
        Principal::Reader(_) => (None, CancellationToken::new()),
    };

    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut broker_rx, mut broker_tx) = tokio::io::split(upstream);
    let downstream = tokio::io::copy(&mut broker_rx, &mut client_tx);
    let upstream = async {
        loop {
            let Some((packet, frame)) = read_packet(&mut client_rx, &mut buf)
                .await
                .map_err(Closed::Other)?
            else {
                return Ok::<(), Closed>(());
            };
            allowed(&principal, &packet, &gate.stats).map_err(|why| {
                let action = match packet {
                    Packet::Publish(_) => "mqtt publish",
                    Packet::Subscribe(_) => "mqtt subscribe",
                    _ => return Closed::Other(why),
                };
                Closed::refused(Some(&principal), action, why)
            })?;
            broker_tx
                .write_all(&frame)
                .await
                .map_err(|e| Closed::Other(format!("broker: {e}")))?;
        }
    };
    let result = tokio::select! {
        r = upstream => r,
        _ = downstream => Ok(()),
        _ = ended.cancelled() => {
            gate.stats.ended.fetch_add(1, Ordering::Relaxed);
            Err(Closed::Other(format!("{principal:?}: connected again elsewhere, or its credential was revoked")))
        }
    };
    if let Some((node, n)) = connection {
        gate.identities.disconnected(&node, n);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rakkr_mqtt::rumqttc::mqttbytes::QoS;
    use rakkr_mqtt::rumqttc::mqttbytes::v4::{Connect, Login, Publish, Subscribe};
    use tokio::net::TcpStream;

    fn gate_with(ids: Identities) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        let store = rakkr_store::RedbStore::open(&dir.path().join("s.redb")).unwrap();
        std::mem::forget(dir);
        Gate {
            upstream: crate::broker::EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), 16)
                .unwrap()
                .in_process,
            connect_wait: CONNECT_WAIT,
            identities: Arc::new(ids),
            readers: vec![Reader {
                name: "grafana".into(),
                password_sha256: sha256_hex("dash"),
            }],
            store: Arc::new(store),
            clock: Arc::new(crate::clock::SystemClock),
            stats: Arc::default(),
            audit_budget: Arc::default(),
        }
    }

    fn connect(client_id: &str, user: &str, password: &str) -> Connect {
        let mut c = Connect::new(client_id);
        c.login = Some(Login::new(user, password));
        c
    }

    #[test]
    fn logins_bind_the_client_id_to_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let store = rakkr_store::RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let ids = Identities::default();
        let t =
            crate::identity::create_token(&store, None, Duration::from_secs(60), None, 0).unwrap();
        let a = NodeId::new("node-a").unwrap();
        let secret = ids.enroll(&store, &t.token, &a, 1).unwrap();
        let gate = gate_with(ids);
        let code = |c: &Connect| {
            authenticate(&gate, c)
                .map(|(p, _)| p)
                .map_err(|(code, _)| code)
        };
        assert_eq!(
            code(&connect("node-a", "node-a", &secret)),
            Ok(Principal::Node(a.clone()))
        );
        assert_eq!(
            code(&connect("node-b", "node-a", &secret)),
            Err(IDENTIFIER_REJECTED),
            "forged client id"
        );
        assert_eq!(
            code(&connect("node-b", "node-b", &secret)),
            Err(BAD_USER_NAME_OR_PASSWORD)
        );
        assert_eq!(
            code(&connect("node-a", "node-a", "guess")),
            Err(BAD_USER_NAME_OR_PASSWORD)
        );
        assert_eq!(
            code(&Connect::new("node-a")),
            Err(NOT_AUTHORIZED),
            "no credentials"
        );
        assert_eq!(
            code(&connect("rakkr-server", "rakkr-server", "x")),
            Err(IDENTIFIER_REJECTED)
        );
        assert_eq!(
            code(&connect("grafana:1", "grafana", "dash")),
            Ok(Principal::Reader("grafana".into()))
        );
        assert_eq!(
            code(&connect("node-a", "grafana", "dash")),
            Err(IDENTIFIER_REJECTED),
            "a reader cannot take a node's id"
        );
        assert_eq!(
            code(&connect("other:1", "grafana", "dash")),
            Err(IDENTIFIER_REJECTED)
        );
        assert_eq!(
            code(&connect("grafana:1", "grafana", "nope")),
            Err(BAD_USER_NAME_OR_PASSWORD)
        );
    }

    #[test]
    fn packets_outside_the_principals_rights_are_refused() {
        let stats = GateStats::default();
        let a = Principal::Node(NodeId::new("node-a").unwrap());
        let reader = Principal::Reader("grafana".into());
        let publish = |t: &str| Packet::Publish(Publish::new(t, QoS::AtLeastOnce, "x"));
        let subscribe = |f: &str| Packet::Subscribe(Subscribe::new(f, QoS::AtLeastOnce));
        assert!(allowed(&a, &publish("rakkr/v1/nodes/node-a/events"), &stats).is_ok());
        assert!(allowed(&a, &publish("rakkr/v1/nodes/node-b/events"), &stats).is_err());
        assert!(allowed(&a, &publish("rakkr/v1/nodes/node-b/cmd/jobs"), &stats).is_err());
        assert!(allowed(&a, &subscribe("rakkr/v1/nodes/node-a/cmd/#"), &stats).is_ok());
        assert!(allowed(&a, &subscribe("rakkr/v1/nodes/node-b/cmd/#"), &stats).is_err());
        assert!(allowed(&a, &subscribe("#"), &stats).is_err());
        assert!(allowed(&reader, &subscribe("rakkr/v1/#"), &stats).is_ok());
        assert!(allowed(&reader, &publish("rakkr/v1/nodes/node-a/events"), &stats).is_err());
        assert!(allowed(&a, &Packet::Connect(Connect::new("node-a")), &stats).is_err());
        assert!(allowed(&a, &Packet::PingReq, &stats).is_ok());
        assert_eq!(stats.refused_publishes.load(Ordering::Relaxed), 3);
        assert_eq!(stats.refused_subscribes.load(Ordering::Relaxed), 2);
    }

    /// Read until the peer closes (or `limit` passes): what arrived, and whether it closed.
    async fn drain(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (got, false),
            }
        }
    }

    #[tokio::test]
    async fn silent_slow_and_oversized_clients_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let store = rakkr_store::RedbStore::open(&dir.path().join("s.redb")).unwrap();
        let ids = Identities::default();
        let t =
            crate::identity::create_token(&store, None, Duration::from_secs(60), None, 0).unwrap();
        let node = NodeId::new("node-a").unwrap();
        let secret = ids.enroll(&store, &t.token, &node, 1).unwrap();
        let mut gate = gate_with(ids);
        gate.connect_wait = Duration::from_millis(300);
        let stats = gate.stats.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(run(listener, None, Arc::new(gate), shutdown.clone()));

        // Silent: closed after the wait, nothing forwarded.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let (got, closed) = drain(&mut silent, Duration::from_secs(3)).await;
        assert!(closed && got.is_empty());
        // A first packet that is not CONNECT.
        let mut ping = TcpStream::connect(addr).await.unwrap();
        ping.write_all(&[0xC0, 0x00]).await.unwrap();
        assert!(drain(&mut ping, Duration::from_secs(3)).await.1);
        // A CONNECT announcing a body over the bound.
        let mut huge = TcpStream::connect(addr).await.unwrap();
        huge.write_all(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F])
            .await
            .unwrap();
        assert!(drain(&mut huge, Duration::from_secs(3)).await.1);
        assert_eq!(stats.protocol_errors.load(Ordering::Relaxed), 3);

        // An enrolled node gets the broker's CONNACK through the gate; then an
        // oversized PUBLISH ends its connection.
        let mut buf = BytesMut::new();
        Packet::Connect(connect("node-a", "node-a", &secret))
            .write(&mut buf, MAX_PACKET_BYTES)
            .unwrap();
        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(&buf).await.unwrap();
        let mut connack = [0u8; 4];
        ok.read_exact(&mut connack).await.unwrap();
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
        let big = Publish::new(
            "rakkr/v1/nodes/node-a/events",
            QoS::AtMostOnce,
            vec![b'x'; MAX_PACKET_BYTES + 1],
        );
        let mut buf = BytesMut::new();
        Packet::Publish(big).write(&mut buf, usize::MAX).unwrap();
        let _ = ok.write_all(&buf).await;
        assert!(drain(&mut ok, Duration::from_secs(3)).await.1);
        assert_eq!(
            stats.protocol_errors.load(Ordering::Relaxed),
            3,
            "oversize is a read error, not counted twice"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_tls_handshake_that_does_not_come_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let tls = crate::tls::ServerTls::load_or_create(dir.path(), &[]).unwrap();
        let mut gate = gate_with(Identities::default());
        gate.connect_wait = Duration::from_millis(300);
        let stats = gate.stats.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        tokio::spawn(run(
            listener,
            Some(acceptor),
            Arc::new(gate),
            shutdown.clone(),
        ));
        // Silent after TCP: closed at the wait.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(drain(&mut silent, Duration::from_secs(3)).await.1);
        // Plain MQTT where TLS is expected: the handshake fails.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        let mut buf = BytesMut::new();
        Packet::Connect(connect("node-a", "node-a", "x"))
            .write(&mut buf, MAX_PACKET_BYTES)
            .unwrap();
        plain.write_all(&buf).await.unwrap();
        assert!(drain(&mut plain, Duration::from_secs(3)).await.1);
        assert_eq!(stats.protocol_errors.load(Ordering::Relaxed), 2);
        shutdown.cancel();
    }
}
