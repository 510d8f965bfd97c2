//! Benchmark: resident memory of an idle fleet server with N appliances connected,
//! beside Debian's mosquitto serving the same appliances.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! RAKKR_BIN_DIR=target/release target/release/server-footprint [NODES] [RUNS] [SETTLE_SECS]
//! ```
//!
//! Each run starts a fresh server (or mosquitto) and NODES real `rakkr-agent`
//! processes (synthetic 2-channel source, 1 Hz meters), waits until every node is
//! connected, lets the system settle, then reads VmRSS and VmHWM of the broker
//! process from /proc. Prints per-run values and the medians.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use rakkr_hil_tests::*;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
}

fn settle_and_sample(pid: u32, settle: Duration) -> Result<Sample> {
    std::thread::sleep(settle);
    Ok(Sample {
        rss_kib: proc_status_kib(pid, "VmRSS:")?,
        hwm_kib: proc_status_kib(pid, "VmHWM:")?,
    })
}

/// Start `nodes` agents on `port`; with `server`, each with its enrolled credential.
fn start_agents(
    work: &std::path::Path,
    server: Option<&Server>,
    port: u16,
    nodes: usize,
) -> Result<Vec<Agent>> {
    (0..nodes)
        .map(|i| {
            let config = work.join(format!("n{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "node_id = \"bench-{i}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
                     [source]\nkind = \"synthetic\"\nchannels = 2\n"
                ),
            )?;
            let node = format!("bench-{i}");
            match server {
                Some(server) => Agent::start_for(work, server, &node, &config, &[]),
                None => Agent::start_with_config(work, &node, &config),
            }
        })
        .collect()
}

fn rakkr_run(nodes: usize, settle: Duration) -> Result<Sample> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let _agents = start_agents(work.path(), Some(&server), server.mqtt_port, nodes)?;
    wait_for("all nodes online", Duration::from_secs(60), || {
        let online = server
            .nodes()
            .ok()?
            .iter()
            .filter(|n| n["presence"] == "online")
            .count();
        (online == nodes).then_some(())
    })?;
    settle_and_sample(server.proc.pid(), settle)
}

fn mosquitto_run(nodes: usize, settle: Duration) -> Result<Sample> {
    let work = tempfile::tempdir()?;
    let port = free_port();
    let conf = work.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )?;
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(&conf);
    let broker = Proc::spawn("mosquitto", cmd, work.path())?;
    wait_for("mosquitto listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })?;
    let mut watch = MqttWatch::start(port, "rakkr/v1/nodes/+/status")?;
    let _agents = start_agents(work.path(), None, port, nodes)?;
    for i in 0..nodes {
        watch.wait_json(
            &format!("rakkr/v1/nodes/bench-{i}/status"),
            Duration::from_secs(60),
            |v| v["state"] == "online",
        )?;
    }
    settle_and_sample(broker.pid(), settle)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes: usize = args.first().map_or(Ok(3), |s| s.parse())?;
    let runs: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let settle = Duration::from_secs(args.get(2).map_or(Ok(20), |s| s.parse())?);
    if runs == 0 {
        bail!("runs must be at least 1");
    }
    println!(
        "nodes={nodes} runs={runs} settle={settle:?} bin_dir={}",
        bin_dir().display()
    );
    let have_mosquitto = Command::new("mosquitto").arg("-h").output().is_ok();
    let (mut rakkr, mut mosq) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        rakkr.push(report_run(run, "rakkr-server", rakkr_run(nodes, settle)?));
        if have_mosquitto {
            mosq.push(report_run(run, "mosquitto", mosquitto_run(nodes, settle)?));
        }
    }
    let rakkr_rss = report_median("rakkr-server", &rakkr);
    if have_mosquitto {
        let mosq_rss = report_median("mosquitto", &mosq);
        println!(
            "rakkr-server / mosquitto RSS ratio: {:.2}",
            rakkr_rss as f64 / mosq_rss as f64
        );
    }
    Ok(())
}

fn report_run(run: usize, name: &str, s: Sample) -> Sample {
    println!(
        "run {run}: {name:<13} RSS {:>7} KiB  peak {:>7} KiB",
        s.rss_kib, s.hwm_kib
    );
    s
}

/// Print and return the median RSS (KiB).
fn report_median(name: &str, samples: &[Sample]) -> u64 {
    let rss = median(samples.iter().map(|s| s.rss_kib).collect());
    let hwm = median(samples.iter().map(|s| s.hwm_kib).collect());
    println!(
        "median: {name:<13} RSS {rss} KiB ({:.1} MiB), peak {hwm} KiB",
        rss as f64 / 1024.0
    );
    rss
}
