//! The watchdog on a real agent: a dead (silent) input becomes one health
//! issue per channel on the server within the policy's time, and when the
//! appliance comes back with signal (restarted, as after a repair) the
//! issues are resolved by recovery. Policies chosen per node, disk pressure
//! on the real disk, and a disk that fills during a take (a tiny tmpfs): the
//! take fails as an `encoder_failure` and keeps what it wrote.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;
use serde_json::{Value, json};

/// The server's watchdog policies: the default waits 3 s for silence, as the
/// agents' own configuration below does not (60 s): the server's rules win.
const POLICIES: &str = "[watchdog]\ndefault = \"standard\"\n\
    [watchdog.policies.standard]\nlow_signal_dbfs = -50.0\ngrace_s = 120\ncumulative_s = 300\nclear_s = 30\n\
    [watchdog.policies.standard.appliance]\nsilence_s = 3\nclear_s = 2\n\
    [watchdog.policies.patient]\nlow_signal_dbfs = -50.0\ngrace_s = 120\ncumulative_s = 300\nclear_s = 30\n\
    [watchdog.policies.patient.appliance]\nsilence_s = 600\n";

fn agent_with(work: &Path, server: &Server, node: &str, signal: &str) -> Result<Agent> {
    let config = work.join(format!("{node}-{signal}.toml"));
    std::fs::write(
        &config,
        format!(
            "node_id = \"{node}\"\nrealtime = false\nstate_dir = \"{}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
             [source]\nkind = \"synthetic\"\nchannels = 2\nsample_rate = 48000\nsignal = \"{signal}\"\n\
             [watchdog]\nsilence_s = 60\n",
            work.join(format!("{node}-state")).display(),
            server.mqtt_port,
        ),
    )?;
    Agent::start_for(work, server, node, &config, &[])
}

fn silence_issues(server: &Server, node: &str) -> Result<Vec<Value>> {
    let list = server.get_json(&format!("/api/v1/health?node={node}&condition=silence"))?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

#[test]
fn a_dead_input_is_an_issue_per_channel_until_the_signal_returns() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start_configured(work.path(), &work.path().join("data"), &[], POLICIES)?;
    let mut dead = agent_with(work.path(), &server, "wd-1", "silence")?;
    let open = wait_for(
        "silence issues on both channels",
        Duration::from_secs(30),
        || {
            let issues = silence_issues(&server, "wd-1").ok()?;
            (issues.len() == 2 && issues.iter().all(|i| i["state"] == "open")).then_some(issues)
        },
    )?;
    let mut subjects: Vec<&str> = open
        .iter()
        .map(|i| i["subject"].as_str().unwrap())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["channel:1", "channel:2"]);
    assert_eq!(open[0]["severity"], "critical");
    assert!(
        open[0]["detail"].as_str().unwrap().contains("for 3 s"),
        "{open:?}"
    );
    // Raised once each, not once a second.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        silence_issues(&server, "wd-1")?
            .iter()
            .all(|i| i["raised"] == 1)
    );
    // The node's page lists them for whoever looks after it.
    let mut op = server.operator("tech", "technician")?;
    let (code, _, page) = op.get("/nodes/wd-1")?;
    assert_eq!(code, 200);
    let issues = &page[page.find("Health issues").expect("an issues panel")..];
    assert!(
        issues.contains("silence") && issues.contains("channel:1") && issues.contains("channel:2"),
        "{issues}"
    );

    // Repaired: the same appliance restarts with signal; what it raised
    // before the restart is cleared once the signal has been good for clear_s.
    dead.proc.signal("TERM")?;
    dead.proc.wait_exit(Duration::from_secs(20))?;
    let _alive = agent_with(work.path(), &server, "wd-1", "demo")?;
    let resolved = wait_for("the issues resolved", Duration::from_secs(30), || {
        let issues = silence_issues(&server, "wd-1").ok()?;
        issues
            .iter()
            .all(|i| i["state"] == "resolved" && i["by"] == "recovery")
            .then_some(issues)
    })?;
    assert_eq!(resolved.len(), 2);
    Ok(())
}

#[test]
fn a_node_waits_as_its_chosen_policy_says_and_keeps_it_without_the_server() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start_configured(work.path(), &work.path().join("data"), &[], POLICIES)?;
    let agent = agent_with(work.path(), &server, "wd-3", "silence")?;
    wait_for("wd-3 online", Duration::from_secs(20), || {
        (server.presence("wd-3").as_deref() == Some("online")).then_some(())
    })?;
    let view = server.get_json("/api/v1/nodes/wd-3/watchdog")?;
    assert_eq!(view["chosen"], Value::Null, "{view}");
    assert_eq!(view["policy"], "standard");
    assert_eq!(view["rules"]["silence_s"], 3);

    // Patient: silence only after ten minutes.
    let (code, chosen) =
        server.post("/api/v1/nodes/wd-3/watchdog", &json!({"policy": "patient"}))?;
    assert_eq!(code, 200, "{chosen}");
    assert_eq!(chosen["chosen"], "patient");
    assert_eq!(chosen["rules"]["silence_s"], 600);
    agent.proc.wait_log_line(
        &["rules from the server", "watchdog", "policy=patient"],
        Duration::from_secs(20),
    )?;
    // Restarted while the server is away, the agent keeps the patient rules.
    let stopped = server.stop(false)?;
    agent.proc.signal("TERM")?;
    let mut agent = agent;
    agent.proc.wait_exit(Duration::from_secs(20))?;
    let server = stopped.start(work.path())?;
    let again = agent_with(work.path(), &server, "wd-3", "silence")?;
    wait_for("the kept rules", Duration::from_secs(20), || {
        let log = again.proc.stderr_text();
        (log.contains("as kept") && log.contains("policy=patient")).then_some(())
    })?;

    // Bad choices change nothing and say why.
    let (code, refused) = server.post("/api/v1/nodes/wd-3/watchdog", &json!({"policy": "nope"}))?;
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("no watchdog policy \"nope\"")
    );
    let (code, _) = server.post("/api/v1/nodes/nobody/watchdog", &json!({"policy": null}))?;
    assert_eq!(code, 404);
    assert_eq!(
        server.get_json("/api/v1/nodes/wd-3/watchdog")?["chosen"],
        "patient"
    );
    // The choice is audited with before and after.
    let audit = server.get_json("/api/v1/audit/search?q=node:wd-3&limit=10")?;
    let record = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["after"]["watchdog_policy"] == "patient")
        .cloned()
        .unwrap_or_else(|| panic!("an audit record of the choice: {audit}"));
    assert_eq!(record["before"]["watchdog_policy"], Value::Null);
    Ok(())
}

#[test]
fn disk_pressure_follows_the_chosen_policy_on_the_real_disk() -> Result<()> {
    // The recordings' disk is whatever this machine has: a policy that asks
    // for more free space than any disk has raises disk_pressure, one that
    // asks for 1 MB clears it.
    const DISK: &str = "[watchdog]\ndefault = \"modest\"\n\
        [watchdog.policies.modest]\nlow_signal_dbfs = -50.0\ngrace_s = 120\ncumulative_s = 300\nclear_s = 30\n\
        [watchdog.policies.modest.appliance]\ndisk_min_free_mb = 1\n\
        [watchdog.policies.hungry]\nlow_signal_dbfs = -50.0\ngrace_s = 120\ncumulative_s = 300\nclear_s = 30\n\
        [watchdog.policies.hungry.appliance]\ndisk_min_free_mb = 100000000\n";
    let work = tempfile::tempdir()?;
    let server = Server::start_configured(work.path(), &work.path().join("data"), &[], DISK)?;
    let (_agent, _recordings) = job_agent(work.path(), &server, "wd-disk", 2, "")?;
    wait_online(&server, "wd-disk")?;
    let (code, _) = server.post(
        "/api/v1/nodes/wd-disk/watchdog",
        &json!({"policy": "hungry"}),
    )?;
    assert_eq!(code, 200);
    let raised = wait_issue(&server, "wd-disk", "disk_pressure", "open")?;
    assert_eq!(raised["severity"], "critical");
    assert!(
        raised["detail"]
            .as_str()
            .unwrap()
            .contains("the limit is 100000000 MB"),
        "{raised}"
    );
    let (code, _) = server.post("/api/v1/nodes/wd-disk/watchdog", &json!({"policy": null}))?;
    assert_eq!(code, 200);
    let cleared = wait_issue(&server, "wd-disk", "disk_pressure", "resolved")?;
    assert_eq!(cleared["by"], "recovery");
    Ok(())
}

fn issues_of(server: &Server, node: &str, condition: &str) -> Result<Vec<Value>> {
    let list = server.get_json(&format!("/api/v1/health?node={node}&condition={condition}"))?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

/// Wait until the node's only issue of `condition` is in `state`.
fn wait_issue(server: &Server, node: &str, condition: &str, state: &str) -> Result<Value> {
    wait_for(
        &format!("{condition} {state}"),
        Duration::from_secs(30),
        || {
            let issues = issues_of(server, node, condition).ok()?;
            (issues.len() == 1 && issues[0]["state"] == state).then(|| issues[0].clone())
        },
    )
}

#[test]
fn a_hung_agent_and_a_node_gone_for_long_are_issues_until_they_are_back() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start_with_env(
        work.path(),
        &work.path().join("data"),
        &[
            ("RAKKR_SERVER_HEALTH__NODE_OFFLINE_AFTER_MS", "2000"),
            ("RAKKR_SERVER_HEALTH__TELEMETRY_STALE_AFTER_MS", "3000"),
        ],
    )?;
    let agent = agent_with(work.path(), &server, "wd-2", "demo")?;
    wait_for("wd-2 online", Duration::from_secs(20), || {
        (server.presence("wd-2").as_deref() == Some("online")).then_some(())
    })?;

    // Hung (stopped, its connection still open): its telemetry goes stale.
    agent.proc.signal("STOP")?;
    let stale = wait_issue(&server, "wd-2", "telemetry_stale", "open")?;
    assert!(
        stale["detail"].as_str().unwrap().contains("may be hung"),
        "{stale}"
    );
    agent.proc.signal("CONT")?;
    let back = wait_issue(&server, "wd-2", "telemetry_stale", "resolved")?;
    assert_eq!(back["by"], "recovery");

    // Gone (killed: the broker announces it offline) for longer than allowed.
    agent.proc.signal("KILL")?;
    let gone = wait_issue(&server, "wd-2", "node_offline", "open")?;
    assert_eq!(gone["severity"], "critical");
    let _again = agent_with(work.path(), &server, "wd-2", "demo")?;
    let back = wait_issue(&server, "wd-2", "node_offline", "resolved")?;
    assert_eq!(back["by"], "recovery");
    Ok(())
}

#[test]
fn a_full_disk_fails_the_take_as_an_encoder_failure_and_keeps_its_audio() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    // The appliance's recordings disk holds about five seconds of noise
    // (2 ch × 24 bit × 48 kHz barely compresses: ~280 KiB/s).
    let recordings = work.path().join("wd-full-recordings");
    std::fs::create_dir(&recordings)?;
    let Some(_disk) = small_fs::SmallFs::mount(&recordings, "1500k") else {
        anyhow::bail!("mounting a tmpfs failed: this test needs root, as CI has");
    };
    let (_agent, _) = job_agent_with_signal(work.path(), &server, "wd-full", 2, "", "noise")?;
    wait_online(&server, "wd-full")?;
    let (code, job) = server.post(
        "/api/v1/jobs",
        &json!({"node": "wd-full", "channels": "1,2", "duration_s": 60}),
    )?;
    assert_eq!(code, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let failed = wait_job(&server, &id, "failed", Duration::from_secs(40))?;
    assert!(
        failed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("No space left")),
        "the reason: {failed}"
    );
    let issue = wait_issue(&server, "wd-full", "encoder_failure", "open")?;
    assert_eq!(issue["severity"], "critical");
    assert_eq!(issue["subject"], format!("job:{id}"));
    assert!(
        issue["detail"]
            .as_str()
            .is_some_and(|d| d.contains("its files keep what was written")),
        "{issue}"
    );
    // What was captured before the disk filled is a valid file, reported.
    let file = &failed["recording"]["files"][0];
    let path = recordings.join(file["name"].as_str().unwrap_or_default());
    flac_test(&path)?;
    assert!(
        file["frames"].as_u64().unwrap_or_default() >= 2 * 48_000,
        "seconds of audio kept: {failed}"
    );
    assert_eq!(file["bytes"], std::fs::metadata(&path)?.len());
    Ok(())
}

#[test]
fn a_scheduled_take_watches_its_channels_by_its_schedule_s_policy() -> Result<()> {
    // The node's policy waits ten minutes for silence; the schedule's, 3 s.
    const TWO: &str = "[watchdog]\ndefault = \"patient\"\n\
        [watchdog.policies.patient]\nlow_signal_dbfs = -50.0\ngrace_s = 120\ncumulative_s = 300\nclear_s = 30\n\
        [watchdog.policies.patient.appliance]\nsilence_s = 600\n\
        [watchdog.policies.quick]\nlow_signal_dbfs = -50.0\ngrace_s = 120\ncumulative_s = 300\nclear_s = 30\n\
        [watchdog.policies.quick.appliance]\nsilence_s = 3\n";
    let work = tempfile::tempdir()?;
    let server = Server::start_configured(work.path(), &work.path().join("data"), &[], TWO)?;
    let (_agent, _) = job_agent_with_signal(work.path(), &server, "wd-take", 2, "", "silence")?;
    wait_online(&server, "wd-take")?;
    let (code, created) = server.post(
        "/api/v1/schedules",
        &json!({
            "name": "Lecture",
            "node": "wd-take",
            "job": {"channels": "2"},
            "timing": {
                "recurrence": {"mode": "daily"},
                "time_zone": "UTC",
                "window": {"start": utc_time_in(2), "end": utc_time_in(40)}
            },
            "watchdog": "quick"
        }),
    )?;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        created["spec"]["job"]["watchdog"]["silence_s"], 3,
        "{created}"
    );
    let issue = wait_for(
        "silence on the take's channel",
        Duration::from_secs(30),
        || {
            let issues = silence_issues(&server, "wd-take").ok()?;
            issues.into_iter().find(|i| i["subject"] == "channel:2")
        },
    )?;
    assert!(
        issue["detail"]
            .as_str()
            .is_some_and(|d| d.contains("for 3 s")),
        "by the schedule's policy: {issue}"
    );
    // The channel the take does not record waits as the node's policy says.
    std::thread::sleep(Duration::from_secs(3));
    let issues = silence_issues(&server, "wd-take")?;
    assert_eq!(issues.len(), 1, "{issues:?}");
    Ok(())
}
