//! Recording jobs end to end: a job started on the server (command line or
//! JSON API) is recorded once on the right appliance, stopped or cancelled on
//! request, refused when its channels are taken, and survives the agent
//! being killed mid-take (lost, then recovered and attached).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use rakkr_hil_tests::*;
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(20);

/// A server whose leases last 3 s, so losing one takes seconds, not half a minute.
fn short_lease_server(work: &Path) -> Result<Server> {
    Server::start_with_env(
        work,
        &work.join("data"),
        &[("RAKKR_SERVER_JOBS__LEASE_MS", "3000")],
    )
}

/// Create a job through the API and wait until its node runs it; its id.
fn start_running(server: &Server, request: Value) -> Result<String> {
    let (code, job) = server.post("/api/v1/jobs", &request)?;
    if code != 201 {
        bail!("job not created ({code}): {job}");
    }
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    wait_job(server, &id, "running", Duration::from_secs(20))?;
    Ok(id)
}

/// Run `rakkr-server job …` against `server`; its parsed output.
fn job_cli(server: &Server, args: &[&str]) -> Result<Value> {
    let out = Command::new(bin("rakkr-server"))
        .arg("job")
        .args(args)
        .arg("--server")
        .arg(server.url(""))
        .env("RAKKR_TOKEN", &server.api_token)
        .output()?;
    if !out.status.success() {
        bail!(
            "rakkr-server job {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Whether the node's stored health events include `condition` `change`.
fn has_event(server: &Server, node: &str, condition: &str, change: &str) -> Result<bool> {
    let events = server.get_json(&format!("/api/v1/nodes/{node}/events"))?;
    Ok(events
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["event"]["condition"] == condition && e["event"]["change"] == change))
}

#[test]
fn a_job_started_from_the_command_line_is_recorded_once() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let (_agent, recordings) = job_agent(work.path(), &server, "rec-a", 4, "")?;
    wait_online(&server, "rec-a")?;

    let job = job_cli(
        &server,
        &[
            "start",
            "--node",
            "rec-a",
            "--duration",
            "2",
            "--channels",
            "1,2",
        ],
    )?;
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["state"], "queued");
    let done = wait_job(&server, &id, "completed", Duration::from_secs(30))?;
    let rec = &done["recording"];
    assert_eq!(rec["frames"], 96_000, "exactly two seconds: {done}");
    assert_eq!(
        (rec["channels"].as_u64(), rec["file_count"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(rec["recovered"], false);
    let file = recordings.join(format!("{id}.flac"));
    assert_eq!(rec["files"][0]["name"], format!("{id}.flac"));
    assert_eq!(rec["files"][0]["bytes"], std::fs::metadata(&file)?.len());
    flac_test(&file)?;

    // An open-ended job on channels 3+4, and one that would share channel 4: refused.
    let open = job_cli(
        &server,
        &[
            "start",
            "--node",
            "rec-a",
            "--channels",
            "3,4",
            "--codec",
            "wav",
            "--bits",
            "16",
        ],
    )?;
    let open_id = open["id"].as_str().unwrap().to_owned();
    wait_job(&server, &open_id, "running", Duration::from_secs(20))?;
    let (code, problem) = server.post(
        "/api/v1/jobs",
        &json!({"node": "rec-a", "channels": "4", "duration_s": 5}),
    )?;
    assert_eq!(code, 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("channel 4") && detail.contains(&open_id),
        "{detail}"
    );
    // A node without a recordings directory takes no jobs: refused, not queued forever.
    let _listener = Agent::start(work.path(), &server, "rec-none", 2)?;
    wait_online(&server, "rec-none")?;
    // Bad requests say what is wrong.
    for (body, expect) in [
        (json!({"node": "rec-none", "duration_s": 5}), 422),
        (json!({"node": "rec-a", "channels": "9"}), 422),
        (json!({"node": "nobody", "duration_s": 5}), 404),
        (
            json!({"node": "rec-a", "profile": {"codec": "flac", "bits": 20}}),
            422,
        ),
        (json!({"node": "rec-a", "bogus": 1}), 422),
    ] {
        let (code, p) = server.post("/api/v1/jobs", &body)?;
        assert_eq!(code, expect, "{body} → {p}");
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
    }

    // Stop: the take is finalized and kept.
    std::thread::sleep(Duration::from_secs(1));
    let stopping = job_cli(&server, &["stop", &open_id])?;
    assert!(
        matches!(stopping["state"].as_str(), Some("stop_requested")),
        "{stopping}"
    );
    let stopped = wait_job(&server, &open_id, "completed", Duration::from_secs(20))?;
    let frames = stopped["recording"]["frames"].as_u64().unwrap();
    assert!(
        frames >= 48_000,
        "at least the second before the stop: {stopped}"
    );
    let wav = recordings.join(format!("{open_id}.wav"));
    let soxi = Command::new("soxi").arg("-s").arg(&wav).output()?;
    assert_eq!(
        String::from_utf8_lossy(&soxi.stdout).trim(),
        frames.to_string()
    );

    // Cancel a running job: cancelled, the file still kept on the node.
    let c = job_cli(&server, &["start", "--node", "rec-a", "--channels", "3"])?;
    let c_id = c["id"].as_str().unwrap().to_owned();
    wait_job(&server, &c_id, "running", Duration::from_secs(20))?;
    job_cli(&server, &["stop", &c_id, "--cancel"])?;
    let cancelled = wait_job(&server, &c_id, "cancelled", Duration::from_secs(20))?;
    assert!(
        recordings.join(format!("{c_id}.flac")).exists(),
        "{cancelled}"
    );

    // Every job ran once: one file each, nothing else in the directory.
    let mut names: Vec<String> = std::fs::read_dir(&recordings)?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expect = vec![
        format!("{id}.flac"),
        format!("{open_id}.wav"),
        format!("{c_id}.flac"),
    ];
    expect.sort();
    assert_eq!(names, expect);
    let listed = job_cli(&server, &["list", "--node", "rec-a"])?;
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    Ok(())
}

#[test]
fn a_killed_agent_loses_its_lease_and_its_recovered_take_is_attached() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = short_lease_server(work.path())?;
    let (mut agent, recordings) = job_agent(work.path(), &server, "rec-k", 2, "")?;
    wait_online(&server, "rec-k")?;
    let id = start_running(&server, json!({"node": "rec-k", "duration_s": 60}))?;
    std::thread::sleep(Duration::from_secs(3));
    agent.proc.signal("KILL")?;
    agent.proc.wait_exit(Duration::from_secs(5))?;
    assert!(recordings.join(format!("{id}.flac.part")).exists());

    let lost = wait_job(&server, &id, "lost", Duration::from_secs(15))?;
    assert!(lost["recording"].is_null());
    assert!(has_event(&server, "rec-k", "job_lost", "raised")?);

    // Restarted: the take is recovered and reported; the server attaches it.
    let (_agent, _) = job_agent(work.path(), &server, "rec-k", 2, "")?;
    let back = wait_job(&server, &id, "completed", Duration::from_secs(30))?;
    let rec = &back["recording"];
    assert_eq!(rec["recovered"], true, "{back}");
    let frames = rec["frames"].as_u64().unwrap();
    assert!(
        frames >= 2 * 48_000,
        "at least two of the three seconds: {back}"
    );
    let file = recordings.join(format!("{id}.flac"));
    flac_test(&file)?;
    assert!(has_event(&server, "rec-k", "job_lost", "cleared")?);
    Ok(())
}

#[test]
fn two_hundred_jobs_over_twenty_agents_run_once_each_through_a_server_restart() -> Result<()> {
    const AGENTS: usize = 20;
    const JOBS_PER_AGENT: usize = 10;
    let work = tempfile::tempdir()?;
    let mut server = Server::start_with_env(
        work.path(),
        &work.path().join("data"),
        &[("RAKKR_SERVER_JOBS__LEASE_MS", "6000")],
    )?;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let node = format!("many-{i:02}");
        // Ten channels at 8 kHz: one mono job per channel, cheap to run 20 times over.
        let recordings = work.path().join(format!("{node}-recordings"));
        let config = work.path().join(format!("{node}.toml"));
        std::fs::write(
            &config,
            format!(
                "node_id = \"{node}\"\nrealtime = false\nmax_jobs = 4\nrecordings_dir = \"{}\"\nstate_dir = \"{}\"\n\
                 [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
                 [source]\nkind = \"synthetic\"\nchannels = 10\nsample_rate = 8000\nperiod_frames = 256\nsignal = \"demo\"\n",
                recordings.display(),
                work.path().join(format!("{node}-state")).display(),
                server.mqtt_port,
            ),
        )?;
        agents.push((
            Agent::start_for(work.path(), &server, &node, &config, &[])?,
            node,
            recordings,
        ));
    }
    for (_, node, _) in &agents {
        wait_online(&server, node)?;
    }
    let mut ids = Vec::new();
    for (_, node, _) in &agents {
        for ch in 1..=JOBS_PER_AGENT {
            let (code, job) = server.post(
                "/api/v1/jobs",
                &json!({"node": node, "channels": ch.to_string(), "duration_s": 1,
                        "profile": {"codec": "wav", "bits": 16}}),
            )?;
            assert_eq!(code, 201, "{job}");
            ids.push((node.clone(), job["id"].as_str().unwrap().to_owned()));
        }
    }

    // Restart the server (and its broker) while jobs run.
    let done = |server: &Server| -> usize {
        server
            .get_json("/api/v1/jobs?limit=1000")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .map_or(0, |jobs| {
                jobs.iter().filter(|j| j["state"] == "completed").count()
            })
    };
    wait_for("some jobs done", Duration::from_secs(60), || {
        (done(&server) >= 40).then_some(())
    })?;
    server = server.restart(work.path(), false)?;
    wait_for("all jobs done", Duration::from_secs(120), || {
        (done(&server) == AGENTS * JOBS_PER_AGENT).then_some(())
    })
    .map_err(|e| {
        let jobs = server
            .get_json("/api/v1/jobs?limit=1000")
            .unwrap_or_default();
        let open: Vec<_> = jobs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| j["state"] != "completed")
            .map(|j| {
                let id = j["id"].as_str().unwrap_or_default();
                let log: Vec<String> = agents
                    .iter()
                    .flat_map(|(a, _, _)| {
                        a.proc
                            .stderr_text()
                            .lines()
                            .map(str::to_owned)
                            .collect::<Vec<_>>()
                    })
                    .chain(
                        std::fs::read_to_string(work.path().join("server.before-restart.stderr"))
                            .unwrap_or_default()
                            .lines()
                            .map(str::to_owned),
                    )
                    .chain(server.proc.stderr_text().lines().map(str::to_owned))
                    .filter(|l| l.contains(id))
                    .collect();
                format!(
                    "{} {} {} {}\n{}",
                    j["node"],
                    id,
                    j["state"],
                    j["detail"],
                    log.join("\n")
                )
            })
            .collect();
        anyhow::anyhow!("{e}; not completed: {open:?}")
    })?;

    // Each job recorded exactly once, on its own node, one second long.
    for (node, id) in &ids {
        let job = server.get_json(&format!("/api/v1/jobs/{id}"))?;
        assert_eq!(job["node"], *node);
        assert_eq!(job["recording"]["frames"], 8000, "{job}");
        assert_eq!(job["recording"]["file_count"], 1);
    }
    for (_, node, recordings) in &agents {
        let names: Vec<String> = std::fs::read_dir(recordings)?
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), JOBS_PER_AGENT, "{node}: {names:?}");
        for (_, id) in ids.iter().filter(|(n, _)| n == node) {
            assert!(names.contains(&format!("{id}.wav")), "{node} lacks {id}");
        }
        // The restart cost no lease: nothing was lost.
        assert!(!has_event(&server, node, "job_lost", "raised")?, "{node}");
    }
    Ok(())
}

#[test]
fn a_network_cut_longer_than_the_lease_loses_no_audio() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut broker = Mosquitto::start(
        work.path(),
        &[(SERVER_USER, SERVER_PASSWORD), ("rec-cut", "node-pw")],
    )?;
    let server = Server::start_with_broker(
        work.path(),
        &work.path().join("data"),
        &broker,
        "[jobs]\nlease_ms = 3000\n",
    )?;
    let (_agent, recordings) = job_agent(
        work.path(),
        &server,
        "rec-cut",
        2,
        "username = \"rec-cut\"\npassword = \"node-pw\"",
    )?;
    wait_online(&server, "rec-cut")?;
    let id = start_running(&server, json!({"node": "rec-cut", "duration_s": 15}))?;

    // Cut: nobody reaches the broker for longer than the lease.
    broker.stop()?;
    wait_job(&server, &id, "lost", Duration::from_secs(15))?;
    assert!(has_event(&server, "rec-cut", "job_lost", "raised")?);
    broker.start_again()?;

    // The node kept recording: the job runs again, then completes whole.
    let done = wait_job(&server, &id, "completed", Duration::from_secs(40))?;
    assert_eq!(done["recording"]["frames"], 15 * 48_000, "{done}");
    assert_eq!(done["recording"]["recovered"], false);
    assert!(has_event(&server, "rec-cut", "job_lost", "cleared")?);
    flac_test(&recordings.join(format!("{id}.flac")))?;
    Ok(())
}

/// libfaketime from Debian's `faketime` package.
#[test]
fn a_wall_clock_jump_on_the_node_does_not_cost_the_lease() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = short_lease_server(work.path())?;
    // The agent's wall clock is read from a file we change under it; its
    // monotonic clock is left alone, as an NTP step or a bad RTC leaves it.
    let offset = work.path().join("faketime-offset");
    std::fs::write(&offset, "+0\n")?;
    let recordings = work.path().join("rec-clock-recordings");
    let config = work.path().join("rec-clock.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"rec-clock\"\nrealtime = false\nrecordings_dir = \"{}\"\nstate_dir = \"{}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
             [source]\nkind = \"synthetic\"\nchannels = 2\nsample_rate = 48000\nsignal = \"demo\"\n",
            recordings.display(),
            work.path().join("rec-clock-state").display(),
            server.mqtt_port,
        ),
    )?;
    let lib = libfaketime()?;
    let env = [
        ("LD_PRELOAD", lib.as_os_str()),
        ("FAKETIME_TIMESTAMP_FILE", offset.as_os_str()),
        ("FAKETIME_NO_CACHE", std::ffi::OsStr::new("1")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", std::ffi::OsStr::new("1")),
    ];
    let mut agent = Agent::start_for(work.path(), &server, "rec-clock", &config, &env)?;
    wait_online(&server, "rec-clock")?;
    let id = start_running(&server, json!({"node": "rec-clock", "duration_s": 10}))?;

    // Two days ahead, then an hour behind where it started.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&offset, "+2d\n")?;
    // The jump is real: the node's meter frames are stamped two days ahead.
    let real_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    wait_for(
        "meter stamps from the jumped clock",
        Duration::from_secs(10),
        || {
            let nodes = server.nodes().ok()?;
            let n = nodes.into_iter().find(|n| n["id"] == "rec-clock")?;
            (n["meters"]["captured_at_ms"].as_u64()? > real_now() + 86_400_000).then_some(())
        },
    )?;
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(&offset, "-1h\n")?;
    let done = wait_job(&server, &id, "completed", Duration::from_secs(30))?;
    assert_eq!(done["recording"]["frames"], 10 * 48_000, "{done}");
    assert!(
        !has_event(&server, "rec-clock", "job_lost", "raised")?,
        "heartbeats kept the lease through both jumps"
    );
    flac_test(&recordings.join(format!("{id}.flac")))?;
    // An orderly stop lets libfaketime remove its shared-memory segments
    // (a killed process would leave them in /dev/shm).
    agent.proc.signal("TERM")?;
    agent.proc.wait_exit(Duration::from_secs(20))?;
    Ok(())
}

#[test]
fn the_demo_runs_a_recording_on_its_first_appliance() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (http, mqtt) = (free_port(), free_port());
    let data = work.path().join("demo-data");
    let mut cmd = Command::new(bin("rakkr-server"));
    cmd.args(["demo", "--nodes", "3", "--data-dir"])
        .arg(&data)
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{http}"))
        .arg("--mqtt-addr")
        .arg(format!("127.0.0.1:{mqtt}"));
    let mut demo = Proc::spawn("demo", cmd, work.path())?;
    let url = format!("http://127.0.0.1:{http}/api/v1/jobs");
    // The demo prints an API token for its command-line hint.
    let token = wait_for("the demo's API token", Duration::from_secs(30), || {
        let out = demo.stdout_text();
        let at = out.find("RAKKR_TOKEN=")? + "RAKKR_TOKEN=".len();
        Some(out[at..].split_whitespace().next()?.to_owned())
    })?;
    let client = http_client()?;
    let job = wait_for(
        "the demo's recording running",
        Duration::from_secs(30),
        || {
            let response = client.get(&url).bearer_auth(&token).send().ok()?;
            let body = response.text().ok()?;
            let jobs: Vec<Value> = serde_json::from_str(&body).ok()?;
            jobs.into_iter()
                .find(|j| j["node"] == "studio-a" && j["state"] == "running")
        },
    )?;
    let id = job["id"].as_str().unwrap();
    let part = data.join(format!("demo-recordings/studio-a/{id}.0001.flac.part"));
    wait_for("its first file growing", Duration::from_secs(10), || {
        (std::fs::metadata(&part).ok()?.len() > 100_000).then_some(())
    })?;
    let stdout = demo.stdout_text();
    assert!(stdout.contains("studio-a records for an hour"));
    // Its calendar has the concert hall's schedule (lectures are on a fourth appliance).
    let schedules = wait_for("the demo's schedules", Duration::from_secs(30), || {
        let url = format!("http://127.0.0.1:{http}/api/v1/schedules");
        let body = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .ok()?
            .text()
            .ok()?;
        let list: Vec<Value> = serde_json::from_str(&body).ok()?;
        (!list.is_empty()).then_some(list)
    })?;
    assert_eq!(schedules.len(), 1, "{schedules:?}");
    assert_eq!(schedules[0]["spec"]["node"], "concert-hall");
    assert!(
        schedules[0]["next"]["start_ms"].as_u64().is_some(),
        "{schedules:?}"
    );
    // The printed dashboard command works: its reader account sees the fleet.
    let line = stdout
        .lines()
        .find(|l| l.contains("mosquitto_sub"))
        .expect("a dashboard hint");
    let word_after = |flag: &str| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == flag)?;
        words.next().map(str::to_owned)
    };
    let (user, password, client) = (
        word_after("-u").unwrap(),
        word_after("-P").unwrap(),
        word_after("-i").unwrap(),
    );
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt.to_string(),
            "-u",
            &user,
            "-P",
            &password,
        ])
        .args([
            "-i",
            &client,
            "-t",
            "rakkr/v1/nodes/+/status",
            "-C",
            "3",
            "-W",
            "10",
        ])
        .output()?;
    let statuses = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{statuses} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(statuses.contains("\"state\":\"online\""), "{statuses}");
    demo.signal("TERM")?;
    assert!(demo.wait_exit(Duration::from_secs(20))?.success());
    // Shut down in order: the take was finalized, not left as a `.part`.
    assert!(!part.exists());
    flac_test(&data.join(format!("demo-recordings/studio-a/{id}.0001.flac")))?;
    Ok(())
}

/// Bad input on every topic, both ways: malformed, wrong-shape, wrong-version
/// and oversized payloads sent to the node's command topics and, as if from
/// the node, to the server's. Each side refuses and counts them, neither
/// crashes, and the node records the next job. (The embedded broker with
/// `node_auth = "none"`, so a test client may publish anywhere; through the
/// gate only the server can reach a node's commands.)
#[test]
fn bad_payloads_on_every_topic_are_refused_and_counted_and_the_node_records_on() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mqtt_port = free_port();
    let server_config = work.path().join("server.toml");
    std::fs::write(
        &server_config,
        format!("[mqtt]\naddr = \"127.0.0.1:{mqtt_port}\"\nnode_auth = \"none\"\n"),
    )?;
    let server = Server::start_with_config(
        work.path(),
        &work.path().join("data"),
        &server_config,
        mqtt_port,
    )?;
    let (mut agent, recordings) = job_agent(work.path(), &server, "bad-1", 2, "")?;
    wait_online(&server, "bad-1")?;

    let mut opts = rumqttc::MqttOptions::new("forger", "127.0.0.1", mqtt_port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = rumqttc::Client::new(opts, 64);
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut acked = 0;
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    acked += 1;
                    let _ = done_tx.send(acked);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let publish = |topic: &str, payload: Vec<u8>| -> Result<()> {
        let topic = format!("rakkr/v1/nodes/bad-1/{topic}");
        client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)?;
        Ok(())
    };
    let valid = rakkr_protocol::Envelope::stamped(1, rakkr_protocol::job::JobCommand::Wake);
    let wrong_version = String::from_utf8(valid.encode())?.replace("\"v\":1", "\"v\":99");
    assert!(wrong_version.contains("\"v\":99"));
    let to_node: Vec<(&str, Vec<u8>)> = vec![
        ("cmd/jobs", b"not json".to_vec()),
        ("cmd/jobs", br#"{"v":1}"#.to_vec()),
        ("cmd/jobs", wrong_version.clone().into_bytes()),
        ("cmd/jobs", Vec::new()),
        ("cmd/ack", b"\xff\xfe garbage".to_vec()),
        ("cmd/ack", wrong_version.clone().into_bytes()),
    ];
    let to_server: Vec<(&str, Vec<u8>)> = vec![
        ("status", b"not json".to_vec()),
        ("meters", br#"{"v":1,"channels":"x"}"#.to_vec()),
        ("events", wrong_version.clone().into_bytes()),
        ("jobs", Vec::new()),
    ];
    let bad_payloads_before = server.metric("rakkr_mqtt_bad_payloads_total")?;
    let sent = to_node.len() + to_server.len();
    for (topic, payload) in to_node.iter().chain(&to_server) {
        publish(topic, payload.clone())?;
    }
    // A command topic this build does not know: the node does not subscribe
    // to it, so it never arrives (and is not counted).
    publish("cmd/reboot", b"{}".to_vec())?;
    wait_for("the broker took every bad message", SOON, || {
        done.try_iter().last().filter(|&n| n > sent).map(|_| ())
    })?;
    // Oversized: the broker refuses it (its bound is the protocol's) and drops
    // the sender; nothing reaches the node or the server.
    publish("cmd/jobs", vec![b'x'; rakkr_mqtt::MAX_PACKET_BYTES + 1])?;
    wait_for("server counts the bad node payloads", SOON, || {
        let now = server.metric("rakkr_mqtt_bad_payloads_total").ok()?;
        (now >= bad_payloads_before + to_server.len() as u64).then_some(now)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.metric("rakkr_mqtt_bad_payloads_total")?,
        bad_payloads_before + to_server.len() as u64
    );
    assert!(agent.proc.try_exit().is_none(), "the agent survived");
    assert_eq!(server.presence("bad-1").as_deref(), Some("online"));

    // The node still records.
    let (code, job) = server.post("/api/v1/jobs", &json!({"node": "bad-1", "duration_s": 1}))?;
    assert_eq!(code, 201, "{job}");
    wait_job(&server, job["id"].as_str().unwrap(), "completed", SOON)?;
    assert!(std::fs::read_dir(&recordings)?.count() > 0);

    // Its totals at exit show each refused command counted once.
    agent.proc.signal("TERM")?;
    assert!(agent.proc.wait_exit(SOON)?.success());
    let log = agent.proc.stderr_text();
    let totals = log
        .lines()
        .find(|l| l.contains("link totals"))
        .ok_or_else(|| anyhow::anyhow!("no link totals in the agent's log:\n{log}"))?;
    assert!(
        totals.contains(&format!("bad_messages={}", to_node.len())),
        "{totals}"
    );
    Ok(())
}
