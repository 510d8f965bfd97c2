//! TLS with the server's own CA: an appliance enrolls over HTTPS with a token
//! that pins the CA (a server with another CA is refused during the
//! handshake, before the token is spent), keeps the CA, connects over MQTT
//! over TLS, rotates its credential over HTTPS and uploads its takes over
//! HTTPS; a dashboard (mosquitto_sub) reads through TLS too; plain MQTT on
//! the TLS port gets nowhere.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;

const SOON: Duration = Duration::from_secs(20);

#[test]
fn appliances_and_dashboards_use_mqtt_and_https_with_the_pinned_fleet_ca() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (tls_port, https_port) = (free_port(), free_port());
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let https_addr = format!("127.0.0.1:{https_port}");
    let server = Server::start_with_env(
        work.path(),
        &work.path().join("data"),
        &[
            ("RAKKR_SERVER_MQTT__TLS_ADDR", tls_addr.as_str()),
            ("RAKKR_SERVER_HTTP__TLS_ADDR", https_addr.as_str()),
        ],
    )?;
    let https = format!("https://127.0.0.1:{https_port}");
    let token = |extra: &[&str]| -> Result<String> {
        let mut args = vec!["enroll-token", "create"];
        args.extend_from_slice(extra);
        let (_, out, _) = server.api_cli(&args)?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["token"].as_str().unwrap_or_default().to_owned())
    };
    let state = work.path().join("tls-node-state");
    let recordings = work.path().join("tls-node-recordings");
    let config = work.path().join("tls-node.toml");
    // Its takes go to the server over HTTPS too, trusting the CA `enroll` keeps.
    std::fs::write(
        &config,
        format!(
            "node_id = \"tls-node\"\nrealtime = false\nstate_dir = \"{}\"\nrecordings_dir = \"{}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {tls_port}\ntls = true\n\
             [source]\nkind = \"synthetic\"\nchannels = 2\n\
             [upload]\nserver = \"{https}\"\n",
            state.display(),
            recordings.display(),
        ),
    )?;
    let agent = |args: &[&str]| {
        Command::new(bin("rakkr-agent"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .args(["--server", &https])
            .output()
    };
    let enroll = |token: &str| agent(&["enroll", "--token", token]);

    // A token whose CA pin is not the server's: the HTTPS handshake fails, so
    // the token is not even spent, and no identity is kept.
    let good = token(&["--node", "tls-node"])?;
    assert_eq!(
        good.split('.').count(),
        4,
        "tokens pin the CA when TLS is on: {good}"
    );
    let pin = good.rsplit('.').next().unwrap();
    let flipped = if pin.ends_with('0') { "1" } else { "0" };
    let tampered = format!("{}{flipped}", &good[..good.len() - 1]);
    let out = enroll(&tampered)?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not the one the enrollment token names"),
        "{err}"
    );
    assert!(!state.join("identity.json").exists());

    // The real token was not spent by that attempt.
    let out = enroll(&good)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = state.join("ca.pem");
    assert!(std::fs::read_to_string(&ca)?.contains("BEGIN CERTIFICATE"));

    // Over HTTPS with the kept CA: a new credential.
    let out = agent(&["rotate-credential"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let agent = Agent::start_with_config(work.path(), "tls-node", &config)?;
    wait_for("online over TLS", SOON, || {
        (server.presence("tls-node")? == "online").then_some(())
    })?;

    // A take reaches the server over HTTPS, verified, and leaves the appliance.
    let (code, job) = server.post(
        "/api/v1/jobs",
        &serde_json::json!({"node": "tls-node", "channels": "1,2", "duration_s": 2}),
    )?;
    assert_eq!(code, 201, "{job}");
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    let name = format!("{id}.flac");
    let kept = work
        .path()
        .join("data/recordings/tls-node")
        .join(&id)
        .join(&name);
    wait_for("the take on the server over HTTPS", SOON * 2, || {
        (kept.exists() && !recordings.join(&name).exists()).then_some(())
    })?;
    flac_test(&kept)?;
    agent
        .proc
        .wait_log("take file uploaded and confirmed", SOON)?;

    // A dashboard reads through TLS with the same CA (mosquitto's client).
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &tls_port.to_string()])
        .arg("--cafile")
        .arg(&ca)
        .args([
            "-u",
            READER,
            "-P",
            READER_PASSWORD,
            "-i",
            &format!("{READER}:tls"),
        ])
        .args([
            "-t",
            "rakkr/v1/nodes/tls-node/status",
            "-C",
            "1",
            "-W",
            "10",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&sub.stdout);
    assert!(
        text.contains("\"state\":\"online\""),
        "{text}{}",
        String::from_utf8_lossy(&sub.stderr)
    );

    // The console over HTTPS (curl, trusting the same CA): the session cookie
    // is Secure, HttpOnly and SameSite=Strict, and the security headers are there.
    let data = server.data_dir.to_string_lossy().into_owned();
    let (ok, out, err) = cli(
        "rakkr-server",
        &[
            "user",
            "add",
            "tina",
            "--role",
            "viewer",
            "--data-dir",
            &data,
        ],
    )?;
    assert!(ok, "{err}");
    let otp = out
        .lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .unwrap_or_default();
    let login = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&ca)
        .args(["--data-urlencode", "name=tina", "--data-urlencode"])
        .arg(format!("password={otp}"))
        .arg(format!("{https}/login"))
        .output()?;
    let head = String::from_utf8_lossy(&login.stdout).to_lowercase();
    assert!(
        head.starts_with("http/1.1 303"),
        "{head}{}",
        String::from_utf8_lossy(&login.stderr)
    );
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie: rakkr_session="))
        .unwrap_or_else(|| panic!("no session cookie: {head}"));
    for attribute in ["; httponly", "; samesite=strict", "; secure", "; path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    for header in [
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "frame-ancestors 'none'",
    ] {
        assert!(head.contains(header), "{header} missing: {head}");
    }

    // Without the CA, or in plain MQTT, the TLS port gives nothing.
    let no_ca = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &tls_port.to_string()])
        .args([
            "-u",
            READER,
            "-P",
            READER_PASSWORD,
            "-i",
            &format!("{READER}:plain"),
        ])
        .args(["-t", "rakkr/v1/#", "-C", "1", "-W", "3"])
        .output()?;
    assert!(
        !no_ca.status.success(),
        "plain MQTT on the TLS port must fail"
    );
    Ok(())
}
