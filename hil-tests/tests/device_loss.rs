//! A capture device that disappears and returns: the agent keeps running, and
//! dashboards see a `device_lost` health event raised and then cleared.

use std::ffi::OsStr;
use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;

#[test]
fn a_lost_device_raises_a_health_event_and_its_return_clears_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let jack_name = format!("rakkr-hil-loss-{}", std::process::id());
    let jack = JackServer::start(&jack_name, 1024, 2)?;
    let asound = work.path().join("asound.conf");
    std::fs::write(
        &asound,
        format!(
            "</usr/share/alsa/alsa.conf>\n{}",
            JackServer::capture_pcm(2)
        ),
    )?;
    let config = work.path().join("loss.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"hil-loss\"\nrealtime = false\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
             [source]\nkind = \"alsa\"\ndevice = \"jackcap\"\nchannels = 2\nsample_rate = 48000\n\
             format = \"FLOAT_LE\"\nperiod_frames = 1024\nperiods = 4\n",
            server.mqtt_port
        ),
    )?;
    let events = "rakkr/v1/nodes/hil-loss/events";
    let mut watch = MqttWatch::start(server.mqtt_port, events)?;
    let env = [
        ("ALSA_CONFIG_PATH", asound.as_os_str()),
        ("JACK_DEFAULT_SERVER", OsStr::new(&jack_name)),
        ("JACK_NO_AUDIO_RESERVATION", OsStr::new("1")),
    ];
    let mut agent = Agent::start_with_env(work.path(), "hil-loss", &config, &env)?;
    wait_for(
        "live meters from the JACK device",
        Duration::from_secs(20),
        || {
            let nodes = server.nodes().ok()?;
            let n = nodes.into_iter().find(|n| n["id"] == "hil-loss")?;
            (n["meters"]["stale"] == false).then_some(())
        },
    )?;

    drop(jack); // the device is gone
    let raised = watch.wait_json(events, Duration::from_secs(20), |v| {
        v["condition"] == "device_lost" && v["change"] == "raised"
    })?;
    assert_eq!(raised["severity"], "critical");
    assert!(raised["detail"].as_str().unwrap().contains("jackcap"));
    assert!(agent.proc.try_exit().is_none(), "the agent keeps running");

    let _jack = JackServer::start(&jack_name, 1024, 2)?; // and back
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
        let (code, body) = http_get(&server.url("/api/v1/nodes/hil-loss/events")).ok()?;
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
