//! The fleet server and an appliance through a site's broker: Debian mosquitto
//! with the shipped ACLs, every client authenticated.

use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;

const SOON: Duration = Duration::from_secs(20);

#[test]
fn server_and_agent_work_through_mosquitto_with_the_shipped_acls() -> Result<()> {
    let work = tempfile::tempdir()?;
    let broker = Mosquitto::start(
        work.path(),
        &[(SERVER_USER, SERVER_PASSWORD), ("hil-ext", "node-pw")],
    )?;
    let server = Server::start_with_broker(work.path(), &work.path().join("data"), &broker, "")?;

    let agent_config = work.path().join("hil-ext.toml");
    std::fs::write(
        &agent_config,
        format!(
            "node_id = \"hil-ext\"\nrealtime = false\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
             username = \"hil-ext\"\npassword = \"node-pw\"\n\
             [source]\nkind = \"synthetic\"\nchannels = 3\n",
            broker.port
        ),
    )?;
    let mut agent = Agent::start_with_config(work.path(), "hil-ext", &agent_config)?;
    wait_for("node online through mosquitto", SOON, || {
        (server.presence("hil-ext")? == "online").then_some(())
    })?;
    wait_for("live meters through mosquitto", SOON, || {
        let nodes = server.nodes().ok()?;
        let n = nodes.into_iter().find(|n| n["id"] == "hil-ext")?;
        (n["meters"]["channels"].as_array()?.len() == 3 && n["meters"]["stale"] == false)
            .then_some(())
    })?;

    // The node's Last Will is its own status topic: the ACLs let mosquitto publish it.
    agent.proc.signal("KILL")?;
    agent.proc.wait_exit(SOON)?;
    wait_for("offline by Last Will", SOON, || {
        (server.presence("hil-ext")? == "offline").then_some(())
    })?;

    // A node with a wrong password never gets in.
    let bad_config = work.path().join("bad.toml");
    std::fs::write(
        &bad_config,
        std::fs::read_to_string(&agent_config)?.replace("node-pw", "guess"),
    )?;
    let _bad = Agent::start_with_config(work.path(), "hil-ext", &bad_config)?;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server.presence("hil-ext").as_deref(), Some("offline"));
    Ok(())
}
