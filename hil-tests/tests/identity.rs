//! Enrollment and per-node identity through the embedded broker's gate:
//! tokens are single-use and expire, a node's credential binds its client id
//! and topics, a revoked node is cut off, a rotated credential takes over.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use rakkr_hil_tests::*;
use rumqttc::{Client, ConnectReturnCode, Event, MqttOptions, Packet, QoS};

const SOON: Duration = Duration::from_secs(20);

fn new_token(server: &Server, extra: &[&str]) -> Result<String> {
    let mut args = vec!["enroll-token", "create"];
    args.extend_from_slice(extra);
    let (ok, out, err) = server.api_cli(&args)?;
    if !ok {
        bail!("enroll-token create failed: {err}");
    }
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["token"].as_str().unwrap_or_default().to_owned())
}

/// A config for `node` with a state directory and no credentials in it.
fn node_config(work: &Path, server: &Server, node: &str) -> Result<std::path::PathBuf> {
    let config = work.join(format!("{node}.toml"));
    std::fs::write(
        &config,
        format!(
            "node_id = \"{node}\"\nrealtime = false\nstate_dir = \"{}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[source]\nkind = \"synthetic\"\nchannels = 2\n",
            work.join(format!("{node}-state")).display(),
            server.mqtt_port
        ),
    )?;
    Ok(config)
}

fn enroll(server: &Server, config: &Path, token: &str) -> Result<(bool, String)> {
    let url = server.url("");
    let (ok, out, err) = cli(
        "rakkr-agent",
        &[
            "enroll",
            "--config",
            config.to_str().unwrap(),
            "--server",
            &url,
            "--token",
            token,
        ],
    )?;
    Ok((ok, format!("{out}{err}")))
}

/// Connect as `client_id`/`user`/`password`; the CONNACK's code, or `None`
/// if the connection closed without one.
fn connack(port: u16, client_id: &str, user: &str, password: &str) -> Option<ConnectReturnCode> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_credentials(user, password);
    let (_client, mut connection) = Client::new(opts, 8);
    for event in connection.iter().take(3) {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => return Some(ack.code),
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Some(code),
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn enrollment_tokens_are_single_use_and_expire() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let config = node_config(work.path(), &server, "enr-1")?;

    let (ok, text) = enroll(&server, &config, "rkr1.0123456789abcdef.not-the-secret")?;
    assert!(!ok && text.contains("unknown enrollment token"), "{text}");
    let (ok, text) = enroll(&server, &config, "garbage")?;
    assert!(!ok && text.contains("not an enrollment token"), "{text}");

    let token = new_token(&server, &[])?;
    let (ok, text) = enroll(&server, &config, &token)?;
    assert!(ok, "{text}");
    let identity = work.path().join("enr-1-state/identity.json");
    assert!(identity.exists());
    // The node runs on the identity alone (no credentials in its config).
    let _agent = Agent::start_with_config(work.path(), "enr-1", &config)?;
    wait_for("enrolled node online", SOON, || {
        (server.presence("enr-1")? == "online").then_some(())
    })?;

    // Used: refused, for this node or another.
    let other = node_config(work.path(), &server, "enr-2")?;
    let (ok, text) = enroll(&server, &other, &token)?;
    assert!(!ok && text.contains("already used"), "{text}");
    // Expired: refused.
    let short = new_token(&server, &["--ttl", "1"])?;
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, text) = enroll(&server, &other, &short)?;
    assert!(!ok && text.contains("expired"), "{text}");
    // Bound to another node: refused.
    let bound = new_token(&server, &["--node", "enr-3"])?;
    let (ok, text) = enroll(&server, &other, &bound)?;
    assert!(!ok && text.contains("is for node enr-3"), "{text}");
    // An enrolled node is not enrolled again by an unbound token.
    let fresh = new_token(&server, &[])?;
    let (ok, text) = enroll(&server, &config, &format!("{fresh} "))?;
    assert!(!ok && text.contains("enrolled already"), "{text}");
    let forced = Command::new(bin("rakkr-agent"))
        .args(["enroll", "--force", "--config"])
        .arg(&config)
        .args(["--server", &server.url(""), "--token", &fresh])
        .output()?;
    assert!(
        !forced.status.success(),
        "an enrolled node needs a token made for it"
    );
    Ok(())
}

#[test]
fn a_node_cannot_speak_for_another_and_a_revoked_node_is_cut_off() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let a = server.credential_for("node-a")?;
    let b = server.credential_for("node-b")?;
    let port = server.mqtt_port;

    // Forged identities never get a session.
    assert_eq!(
        connack(port, "node-a", "node-a", &a),
        Some(ConnectReturnCode::Success)
    );
    assert_eq!(
        connack(port, "node-b", "node-a", &a),
        Some(ConnectReturnCode::BadClientId),
        "A's credential with B's client id"
    );
    assert_eq!(
        connack(port, "node-b", "node-b", &a),
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        connack(port, "node-a", "node-a", "guess"),
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    assert_eq!(
        connack(port, "rakkr-server", "rakkr-server", "x"),
        Some(ConnectReturnCode::BadClientId)
    );

    // B runs as a real agent; A connects legitimately and misbehaves.
    let mut watch = MqttWatch::of(&server, "rakkr/v1/nodes/node-b/#")?;
    let config_b = work.path().join("node-b.toml");
    std::fs::write(
        &config_b,
        format!(
            "node_id = \"node-b\"\nrealtime = false\nrecordings_dir = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
             [source]\nkind = \"synthetic\"\nchannels = 2\n",
            work.path().join("b-rec").display()
        ),
    )?;
    let _agent_b = Agent::start_for(work.path(), &server, "node-b", &config_b, &[])?;
    wait_for("B online", SOON, || {
        (server.presence("node-b")? == "online").then_some(())
    })?;
    watch.clear();

    let mut opts = MqttOptions::new("node-a", "127.0.0.1", port);
    opts.set_credentials("node-a", &a);
    let (client, mut connection) = Client::new(opts, 16);
    client.subscribe("rakkr/v1/nodes/node-b/cmd/#", QoS::AtLeastOnce)?;
    client.publish(
        "rakkr/v1/nodes/node-b/status",
        QoS::AtLeastOnce,
        true,
        br#"{"v":1,"msg_id":"019acb2e-0000-7000-8000-000000000009","sent_at_ms":1,"state":"offline","reason":"shutdown"}"#.to_vec(),
    )?;
    // A job for B: its offer must reach B only.
    let (code, job) = server.post(
        "/api/v1/jobs",
        &serde_json::json!({"node": "node-b", "duration_s": 1}),
    )?;
    assert_eq!(code, 201, "{job}");
    let mut a_got = Vec::new();
    let mut disconnected = false;
    for event in connection.iter().take(20) {
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => a_got.push(p.topic.clone()),
            Ok(_) => {}
            Err(_) => {
                disconnected = true;
                break;
            }
        }
    }
    assert!(disconnected, "the gate closes A's connection");
    assert!(a_got.is_empty(), "A received B's traffic: {a_got:?}");
    let id = job["id"].as_str().unwrap();
    wait_for("B records its job", SOON, || {
        let j = server.get_json(&format!("/api/v1/jobs/{id}")).ok()?;
        (j["state"] == "completed").then_some(())
    })?;
    assert_eq!(
        server.presence("node-b").as_deref(),
        Some("online"),
        "A's forged status never landed"
    );
    assert!(
        watch
            .wait_json(
                "rakkr/v1/nodes/node-b/status",
                Duration::from_secs(1),
                |v| v["reason"] == "shutdown"
            )
            .is_err(),
        "nobody saw A's forged message"
    );

    // Revoked: B is disconnected at once and cannot come back.
    let (ok, _, err) = server.api_cli(&["node", "revoke", "node-b"])?;
    assert!(ok, "{err}");
    wait_for("B offline after revocation", SOON, || {
        (server.presence("node-b")? == "offline").then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        server.presence("node-b").as_deref(),
        Some("offline"),
        "B reconnected after revocation"
    );
    assert_eq!(
        connack(port, "node-b", "node-b", &b),
        Some(ConnectReturnCode::BadUserNamePassword)
    );
    Ok(())
}

#[test]
fn a_rotated_credential_takes_over_when_first_used() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let config = node_config(work.path(), &server, "rot-1")?;
    let token = new_token(&server, &[])?;
    assert!(enroll(&server, &config, &token)?.0);
    let identity = |_: ()| -> Result<String> {
        let text = std::fs::read_to_string(work.path().join("rot-1-state/identity.json"))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        Ok(v["credential"].as_str().unwrap_or_default().to_owned())
    };
    let old = identity(())?;
    let (ok, out, err) = cli(
        "rakkr-agent",
        &[
            "rotate-credential",
            "--config",
            config.to_str().unwrap(),
            "--server",
            &server.url(""),
        ],
    )?;
    assert!(ok, "{out}{err}");
    let new = identity(())?;
    assert_ne!(old, new);
    let port = server.mqtt_port;
    // Both work until the new one is used; then only the new one.
    assert_eq!(
        connack(port, "rot-1", "rot-1", &old),
        Some(ConnectReturnCode::Success)
    );
    let _agent = Agent::start_with_config(work.path(), "rot-1", &config)?;
    wait_for("online with the new credential", SOON, || {
        (server.presence("rot-1")? == "online").then_some(())
    })?;
    assert_eq!(
        connack(port, "rot-1-x", "rot-1", &old),
        Some(ConnectReturnCode::BadClientId)
    );
    wait_for("the old credential refused", SOON, || {
        (connack(port, "rot-1", "rot-1", &old) == Some(ConnectReturnCode::BadUserNamePassword))
            .then_some(())
    })?;
    Ok(())
}

/// The gate hands admitted connections to the broker in-process: a node
/// costs the server its own socket and nothing more (through a loopback
/// socket pair it cost three, which capped a 20,000-descriptor server at
/// about 6,500 nodes), and the descriptors are returned when nodes leave.
#[test]
fn a_node_behind_the_gate_costs_the_server_one_file_descriptor() -> Result<()> {
    const NODES: usize = 40;
    let work = tempfile::tempdir()?;
    // Room for exactly these nodes: a broker session left behind by a node
    // that went would keep the second round below out.
    let server = Server::start_with_env(
        work.path(),
        &work.path().join("data"),
        &[("RAKKR_SERVER_MQTT__MAX_CONNECTIONS", &NODES.to_string())],
    )?;
    let names: Vec<String> = (0..NODES).map(|i| format!("fd-{i:02}")).collect();
    let credentials = names
        .iter()
        .map(|n| server.credential_for(n))
        .collect::<Result<Vec<_>>>()?;
    // HTTP connections from the enrollments close first.
    std::thread::sleep(Duration::from_millis(500));
    let before = open_fds(server.proc.pid())?;

    for round in 1..=2 {
        let mut clients = Vec::new();
        let (acked, subacks) = std::sync::mpsc::channel();
        for (name, credential) in names.iter().zip(&credentials) {
            let mut opts = MqttOptions::new(name, "127.0.0.1", server.mqtt_port);
            opts.set_credentials(name, credential);
            let (client, mut connection) = Client::new(opts, 8);
            client.subscribe(format!("rakkr/v1/nodes/{name}/cmd/#"), QoS::AtLeastOnce)?;
            let acked = acked.clone();
            let events = std::thread::spawn(move || {
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = acked.send(());
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            clients.push((client, events));
        }
        for i in 0..NODES {
            subacks
                .recv_timeout(SOON)
                .map_err(|_| anyhow::anyhow!("round {round}: only {i} of {NODES} nodes got in"))?;
        }
        let connected = open_fds(server.proc.pid())?;
        assert!(
            (NODES..NODES + 3).contains(&(connected - before)),
            "round {round}: {NODES} nodes took {} descriptors ({before} → {connected})",
            connected - before
        );

        for (client, events) in clients {
            client.disconnect()?;
            events.join().unwrap();
        }
        let left = wait_for("descriptors returned", SOON, || {
            let now = open_fds(server.proc.pid()).ok()?;
            (now <= before).then_some(now)
        })?;
        assert!(
            left <= before,
            "round {round}: {left} open after all nodes left ({before} before)"
        );
    }
    Ok(())
}
