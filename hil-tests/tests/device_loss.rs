//! A capture device that disappears and returns: the agent keeps running, and
//! dashboards see a `device_lost` health event raised and then cleared.

use std::ffi::OsStr;
use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;

/// A JACK-backed ALSA capture device `jackcap` (2 channels), and agent
/// configurations that record from it.
struct JackDevice {
    name: String,
    asound: std::path::PathBuf,
}

impl JackDevice {
    fn new(work: &std::path::Path, tag: &str) -> Result<JackDevice> {
        let asound = work.join("asound.conf");
        let pcm = JackServer::capture_pcm(2);
        std::fs::write(&asound, format!("</usr/share/alsa/alsa.conf>\n{pcm}"))?;
        Ok(JackDevice {
            name: format!("rakkr-hil-{tag}-{}", std::process::id()),
            asound,
        })
    }

    /// (Re)start the JACK server behind the device; dropping it removes the device.
    fn plug_in(&self) -> Result<JackServer> {
        JackServer::start(&self.name, 1024, 2)
    }

    fn env(&self) -> [(&'static str, &OsStr); 3] {
        [
            ("ALSA_CONFIG_PATH", self.asound.as_os_str()),
            ("JACK_DEFAULT_SERVER", OsStr::new(&self.name)),
            ("JACK_NO_AUDIO_RESERVATION", OsStr::new("1")),
        ]
    }

    /// A configuration for agent `node` recording from the device; `extra`
    /// is added at the top level.
    fn agent_config(
        &self,
        work: &std::path::Path,
        node: &str,
        mqtt_port: u16,
        extra: &str,
    ) -> Result<std::path::PathBuf> {
        let config = work.join(format!("{node}.toml"));
        std::fs::write(
            &config,
            format!(
                "node_id = \"{node}\"\nrealtime = false\n{extra}\n\
                 [mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\n\
                 [source]\nkind = \"alsa\"\ndevice = \"jackcap\"\nchannels = 2\n\
                 sample_rate = 48000\nformat = \"FLOAT_LE\"\nperiod_frames = 1024\nperiods = 4\n"
            ),
        )?;
        Ok(config)
    }
}

#[test]
fn a_lost_device_raises_a_health_event_and_its_return_clears_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let device = JackDevice::new(work.path(), "loss")?;
    let jack = device.plug_in()?;
    let config = device.agent_config(work.path(), "hil-loss", server.mqtt_port, "")?;
    let events = "rakkr/v1/nodes/hil-loss/events";
    let mut watch = MqttWatch::of(&server, events)?;
    let env = device.env();
    let mut agent = Agent::start_for(work.path(), &server, "hil-loss", &config, &env)?;
    wait_for(
        "live meters from the JACK device",
        Duration::from_secs(20),
        || {
            let nodes = server.nodes().ok()?;
            let n = nodes.into_iter().find(|n| n["id"] == "hil-loss")?;
            (n["meters"]["stale"] == false).then_some(())
        },
    )?;
    // The node announces the device it captures from (a plugin alsa-lib's
    // hints do not list) for the console's inventory.
    let node = server.get_json("/api/v1/nodes/hil-loss")?;
    let devices = &node["details"]["capabilities"]["devices"];
    assert_eq!(devices[0]["name"], "jackcap", "{node}");
    assert_eq!(devices[0]["in_use"], true, "{node}");

    drop(jack); // the device is gone
    let raised = watch.wait_json(events, Duration::from_secs(20), |v| {
        v["condition"] == "device_lost" && v["change"] == "raised"
    })?;
    assert_eq!(raised["severity"], "critical");
    assert!(raised["detail"].as_str().unwrap().contains("jackcap"));
    assert!(agent.proc.try_exit().is_none(), "the agent keeps running");

    let _jack = device.plug_in()?; // and back
    let cleared = watch.wait_json(events, Duration::from_secs(30), |v| {
        v["condition"] == "device_lost" && v["change"] == "cleared"
    })?;
    assert!(
        cleared["detail"]
            .as_str()
            .unwrap()
            .contains("is back after")
    );
    assert!(cleared["at_ms"].as_u64() > raised["at_ms"].as_u64());
    wait_for("meters again", Duration::from_secs(20), || {
        let nodes = server.nodes().ok()?;
        let n = nodes.into_iter().find(|n| n["id"] == "hil-loss")?;
        (n["meters"]["stale"] == false).then_some(())
    })?;
    assert!(agent.proc.try_exit().is_none());

    // The server stored both, once each.
    let stored = wait_for("stored health events", Duration::from_secs(10), || {
        let (code, body) = server.get_api("/api/v1/nodes/hil-loss/events").ok()?;
        let events: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
        (code == 200 && events.len() >= 2).then_some(events)
    })?;
    let changes: Vec<&str> = stored
        .iter()
        .map(|e| e["event"]["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["raised", "cleared"], "{stored:?}");
    assert_eq!(stored[0]["msg_id"], raised["msg_id"]);
    Ok(())
}

#[test]
fn health_events_outlive_a_server_outage_and_an_agent_crash() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let mut server = Server::start(work.path(), &data)?;
    let device = JackDevice::new(work.path(), "outbox")?;
    let jack = device.plug_in()?;
    let state = format!("state_dir = \"{}\"", work.path().join("state").display());
    let write_config = |port| device.agent_config(work.path(), "hil-outbox", port, &state);
    let config = write_config(server.mqtt_port)?;
    let env = device.env();
    let mut agent = Agent::start_for(work.path(), &server, "hil-outbox", &config, &env)?;
    wait_for("node online", Duration::from_secs(20), || {
        (server.presence("hil-outbox")? == "online").then_some(())
    })?;

    // The server goes away; meanwhile the device is lost and comes back.
    server.proc.signal("TERM")?;
    server.proc.wait_exit(Duration::from_secs(15))?;
    drop(jack);
    agent
        .proc
        .wait_log("capture device lost", Duration::from_secs(20))?;
    let _jack = device.plug_in()?;
    agent
        .proc
        .wait_log("capture device back", Duration::from_secs(30))?;
    // Both events exist only in the agent's outbox now; the agent crashes.
    agent.proc.signal("KILL")?;
    agent.proc.wait_exit(Duration::from_secs(10))?;

    // Server back (same data), agent back: the events arrive, stored once each.
    let server = Server::start(work.path(), &data)?;
    let config = write_config(server.mqtt_port)?;
    let _agent = Agent::start_for(work.path(), &server, "hil-outbox", &config, &env)?;
    let events_url = "/api/v1/nodes/hil-outbox/events";
    let stored = wait_for(
        "events delivered from the outbox",
        Duration::from_secs(30),
        || {
            let (code, body) = server.get_api(events_url).ok()?;
            let events: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
            (code == 200 && events.len() >= 2).then_some(events)
        },
    )?;
    let changes: Vec<&str> = stored
        .iter()
        .map(|e| e["event"]["change"].as_str().unwrap())
        .collect();
    assert_eq!(
        changes,
        ["raised", "cleared"],
        "in order, once each: {stored:?}"
    );
    // The agent may send a message more than once (a resend before the
    // acknowledgement arrives); it is still stored once.
    std::thread::sleep(Duration::from_secs(2));
    let (_, body) = server.get_api(events_url)?;
    let again: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    assert_eq!(again.len(), 2, "{again:?}");
    Ok(())
}

#[test]
fn a_loss_open_when_the_agent_restarts_is_cleared_after_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let device = JackDevice::new(work.path(), "reopen")?;
    let jack = device.plug_in()?;
    let state = format!("state_dir = \"{}\"", work.path().join("state").display());
    let config = device.agent_config(work.path(), "hil-reopen", server.mqtt_port, &state)?;
    let mut agent = Agent::start_for(work.path(), &server, "hil-reopen", &config, &device.env())?;
    let events_url = "/api/v1/nodes/hil-reopen/events";
    let stored = |n: usize| {
        wait_for("stored events", Duration::from_secs(30), || {
            let (code, body) = server.get_api(events_url).ok()?;
            let events: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
            (code == 200 && events.len() >= n).then_some(events)
        })
    };
    wait_for("node online", Duration::from_secs(20), || {
        (server.presence("hil-reopen")? == "online").then_some(())
    })?;
    drop(jack);
    stored(1)?;
    // The agent dies while the device is gone; both come back.
    agent.proc.signal("KILL")?;
    agent.proc.wait_exit(Duration::from_secs(10))?;
    let _jack = device.plug_in()?;
    let _agent = Agent::start_for(work.path(), &server, "hil-reopen", &config, &device.env())?;
    let events = stored(2)?;
    let changes: Vec<&str> = events
        .iter()
        .map(|e| e["event"]["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["raised", "cleared"], "{events:?}");
    Ok(())
}
