//! Walking-skeleton scenarios: real server and agent processes on loopback.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;
use sha2::{Digest, Sha256};

const SOON: Duration = Duration::from_secs(15);

fn status_topic(node: &str) -> String {
    format!("rakkr/v1/nodes/{node}/status")
}

#[test]
fn a_node_comes_online_goes_offline_when_killed_and_returns() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let mut watch = MqttWatch::of(&server, "rakkr/v1/nodes/+/status")?;

    let mut agent = Agent::start(work.path(), &server, "hil-kill", 4)?;
    wait_for("node online", SOON, || {
        (server.presence("hil-kill")? == "online").then_some(())
    })?;
    let nodes = server.nodes()?;
    let node = nodes.iter().find(|n| n["id"] == "hil-kill").unwrap();
    assert_eq!(node["details"]["capabilities"]["channels"], 4);
    wait_for("live meters", SOON, || {
        let nodes = server.nodes().ok()?;
        let n = nodes.into_iter().find(|n| n["id"] == "hil-kill")?;
        (n["meters"]["channels"].as_array()?.len() == 4 && n["meters"]["stale"] == false)
            .then_some(())
    })?;

    agent.proc.signal("KILL")?;
    agent.proc.wait_exit(SOON)?;
    let will = watch.wait_json(&status_topic("hil-kill"), SOON, |v| v["state"] == "offline")?;
    assert_eq!(
        will["reason"], "connection_lost",
        "the Last Will announced the crash"
    );
    assert_eq!(will["v"], 1);
    wait_for("node offline", SOON, || {
        (server.presence("hil-kill")? == "offline").then_some(())
    })?;

    watch.clear();
    let _agent = Agent::start_for(work.path(), &server, "hil-kill", &agent.config, &[])?;
    watch.wait_json(&status_topic("hil-kill"), SOON, |v| v["state"] == "online")?;
    wait_for("node back online", SOON, || {
        (server.presence("hil-kill")? == "online").then_some(())
    })?;
    Ok(())
}

#[test]
fn orderly_shutdowns_announce_themselves_and_exit_cleanly() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut server = Server::start(work.path(), &work.path().join("data"))?;
    let mut watch = MqttWatch::of(&server, "rakkr/v1/#")?;
    let mut agent = Agent::start(work.path(), &server, "hil-term", 2)?;
    wait_for("node online", SOON, || {
        (server.presence("hil-term")? == "online").then_some(())
    })?;

    agent.proc.signal("TERM")?;
    let status = agent.proc.wait_exit(SOON)?;
    assert!(
        status.success(),
        "agent exit: {status}\n{}",
        agent.proc.stderr_text()
    );
    let last = watch.wait_json(&status_topic("hil-term"), SOON, |v| v["state"] == "offline")?;
    assert_eq!(last["reason"], "shutdown");
    wait_for("node offline", SOON, || {
        (server.presence("hil-term")? == "offline").then_some(())
    })?;

    server.proc.signal("INT")?;
    let status = server.proc.wait_exit(SOON)?;
    assert!(
        status.success(),
        "server exit: {status}\n{}",
        server.proc.stderr_text()
    );
    watch.wait_json("rakkr/v1/server/status", SOON, |v| v["state"] == "offline")?;
    Ok(())
}

#[test]
fn nodes_reconnect_by_themselves_after_a_server_restart() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    let mqtt_port = server.mqtt_port;
    let _agent = Agent::start(work.path(), &server, "hil-restart", 2)?;
    wait_for("node online", SOON, || {
        (server.presence("hil-restart")? == "online").then_some(())
    })?;
    let http_port = server.http_port;
    let token = server.api_token.clone(); // kept in the store across the restart
    drop(server); // SIGKILL: the broker and its sessions vanish

    // Same ports, same data directory: the node is remembered, shown offline
    // until it reconnects, then online again without anyone touching it.
    let mut cmd = Command::new(bin("rakkr-server"));
    cmd.args(["serve", "--data-dir"]).arg(&data);
    cmd.arg("--http-addr").arg(format!("127.0.0.1:{http_port}"));
    cmd.arg("--mqtt-addr").arg(format!("127.0.0.1:{mqtt_port}"));
    let _proc = Proc::spawn("server-2", cmd, work.path())?;
    let url = format!("http://127.0.0.1:{http_port}/api/v1/nodes");
    let client = http_client()?;
    let back = wait_for("node online after restart", Duration::from_secs(45), || {
        let response = client.get(&url).bearer_auth(&token).send().ok()?;
        let body = response.text().ok()?;
        let nodes: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
        nodes
            .into_iter()
            .find(|n| n["id"] == "hil-restart" && n["presence"] == "online")
    })?;
    assert_eq!(back["details"]["capabilities"]["channels"], 2);
    Ok(())
}

#[test]
fn the_console_lists_nodes_and_serves_pinned_assets() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let _a = Agent::start(work.path(), &server, "hil-console-a", 2)?;
    let _b = Agent::start(work.path(), &server, "hil-console-b", 8)?;
    wait_for("both online", SOON, || {
        (server.presence("hil-console-a")? == "online"
            && server.presence("hil-console-b")? == "online")
            .then_some(())
    })?;
    // The console needs a login; a viewer may read it.
    let (code, headers, _) = Operator::anonymous(&server).get("/")?;
    assert_eq!(code, 303);
    assert_eq!(headers["location"], "/login?next=%2F");
    let mut viewer = server.operator("hil-viewer", "viewer")?;
    wait_for("meters on the page", SOON, || {
        let (_, _, html) = viewer.get("/").ok()?;
        (html.matches("class=\"meter\"").count() == 10).then_some(())
    })?;

    let (code, headers, html) = viewer.get("/")?;
    assert_eq!(code, 200);
    assert!(
        headers["content-security-policy"]
            .to_str()?
            .contains("script-src 'self'")
    );
    assert!(
        html.contains(r#"data-node="hil-console-a" data-presence="online""#),
        "{html}"
    );
    assert!(html.contains(r#"data-node="hil-console-b" data-presence="online""#));
    assert!(html.contains(r#"<b id="count-online">2</b>"#));
    assert!(
        html.contains(r#"hx-get="/console/nodes""#),
        "the panel refreshes itself"
    );

    // The htmx the page references is the pinned build, cached forever.
    let htmx_url = &rakkr_web::assets::HTMX.url;
    assert!(html.contains(&format!(r#"<script src="{htmx_url}" defer>"#)));
    let (code, headers, js) = http_get_full(&server.url(htmx_url))?;
    assert_eq!(code, 200);
    assert_eq!(hex(&Sha256::digest(&js)), rakkr_web::assets::HTMX_SHA256);
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert!(
        headers["content-type"]
            .to_str()?
            .starts_with("text/javascript")
    );
    let css_url = &rakkr_web::assets::STYLESHEET.url;
    assert!(html.contains(css_url.as_str()));
    assert_eq!(http_get(&server.url(css_url))?.0, 200);
    assert_eq!(
        http_get(&server.url("/static/htmx.min.js"))?.0,
        404,
        "no unhashed names"
    );

    // The fragment is the same panel, without the page around it.
    let (code, _, fragment) = viewer.get("/console/nodes")?;
    assert_eq!(code, 200);
    assert!(fragment.starts_with(r#"<section id="nodes""#), "{fragment}");
    assert!(fragment.contains("hil-console-b"));

    assert_eq!(http_get(&server.url("/healthz"))?, (200, "ok\n".to_owned()));
    let (code, ready) = http_get(&server.url("/readyz"))?;
    assert_eq!(code, 200);
    let ready: serde_json::Value = serde_json::from_str(&ready)?;
    assert_eq!(ready["store"], "ok");
    assert_eq!(ready["mqtt"], "connected");

    let (code, page) = http_get(&server.url("/no/such/page"))?;
    assert_eq!(code, 404);
    assert!(page.contains("/no/such/page"));
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Run a binary to completion with `args`; return its exit success and stderr.
fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(bin(name))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_server_configuration_fails_with_a_message_naming_the_problem() -> Result<()> {
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let unknown = write(
        "unknown.toml",
        "[http]\naddr = \"127.0.0.1:0\"\nbogus = 1\n",
    );
    let bad_addr = write("badaddr.toml", "[http]\naddr = \"not-an-address\"\n");
    let not_toml = write("broken.toml", "[http\n");
    let file = write("a-file", "");
    let under_file = format!("{file}/data");

    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: Vec<(Vec<&str>, Env, &str)> = vec![
        (
            vec!["serve", "--config", &unknown, "--data-dir", data],
            vec![],
            "unknown field `bogus`",
        ),
        (
            vec!["serve", "--config", &bad_addr, "--data-dir", data],
            vec![],
            "`http.addr`",
        ),
        (
            vec!["serve", "--config", &not_toml],
            vec![],
            "not valid TOML",
        ),
        (
            vec!["serve", "--config", "/nonexistent/rakkr.toml"],
            vec![],
            "/nonexistent/rakkr.toml",
        ),
        (
            vec!["serve", "--http-addr", "nowhere"],
            vec![],
            "--http-addr",
        ),
        (
            vec!["serve", "--data-dir", data],
            vec![("RAKKR_SERVER_HTTP__PORT", "1")],
            "RAKKR_SERVER_HTTP__PORT",
        ),
        (
            vec!["serve", "--data-dir", data],
            vec![("RAKKR_SERVER_MQTT__ADDR", "x:y")],
            "mqtt.addr",
        ),
        (
            vec![
                "serve",
                "--data-dir",
                &under_file,
                "--http-addr",
                "127.0.0.1:0",
                "--mqtt-addr",
                "127.0.0.1:0",
            ],
            vec![],
            "cannot create data directory",
        ),
    ];
    for (args, env, expect) in cases {
        let (ok, stderr) = run("rakkr-server", &args, &env);
        assert!(!ok, "{args:?} should fail");
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in:\n{stderr}"
        );
    }
    Ok(())
}

#[test]
fn a_second_server_on_the_same_data_dir_or_port_is_refused() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    let free = format!("127.0.0.1:{}", free_port());
    let free2 = format!("127.0.0.1:{}", free_port());

    let (ok, stderr) = run(
        "rakkr-server",
        &[
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--http-addr",
            &free,
            "--mqtt-addr",
            &free2,
        ],
        &[],
    );
    assert!(!ok);
    let pid = server.proc.pid().to_string();
    assert!(
        stderr.contains("in use by another rakkr-server") && stderr.contains(&pid),
        "{stderr}"
    );

    let other = work.path().join("other");
    let busy = format!("127.0.0.1:{}", server.mqtt_port);
    let (ok, stderr) = run(
        "rakkr-server",
        &[
            "serve",
            "--data-dir",
            other.to_str().unwrap(),
            "--http-addr",
            &free,
            "--mqtt-addr",
            &busy,
        ],
        &[],
    );
    assert!(!ok);
    assert!(
        stderr.contains("cannot listen for MQTT") && stderr.contains(&busy),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn bad_agent_configuration_fails_with_a_message_naming_the_problem() -> Result<()> {
    let work = tempfile::tempdir()?;
    let write = |name: &str, text: &str| {
        let p = work.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let cases = [
        (
            write("a.toml", "node_id = \"ok\"\nbogus = true\n"),
            "unknown field `bogus`",
        ),
        (write("b.toml", "node_id = \"Not/OK\"\n"), "node_id"),
        (
            write(
                "c.toml",
                "node_id = \"ok\"\n[source]\nkind = \"synthetic\"\nchannels = 0\n",
            ),
            "source.channels",
        ),
        (
            write("d.toml", "[mqtt]\nport = 1\n"),
            "missing field `node_id`",
        ),
        (
            "/nonexistent/agent.toml".to_owned(),
            "/nonexistent/agent.toml",
        ),
    ];
    for (path, expect) in cases {
        let (ok, stderr) = run("rakkr-agent", &["run", "--config", &path], &[]);
        assert!(!ok, "{path} should fail");
        assert!(
            stderr.contains(expect),
            "{path}: expected {expect:?} in:\n{stderr}"
        );
    }
    Ok(())
}
