//! Benchmark: a recording file's way appliance → server → S3 over loopback,
//! against a plain `curl` PUT of the same file to the same S3 server, in the
//! same run; and the server's CPU per GB stored.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! RAKKR_BIN_DIR=target/release target/release/delivery-throughput [SECONDS] [RUNS]
//! ```
//!
//! The file is SECONDS of 2-channel 24-bit 48 kHz pink noise (sox) encoded by
//! `flac -5`. The appliance side is the agent's own uploader
//! (`rakkr_agent::upload::Uploader`, in this process, 8 MiB chunks, the
//! file's SHA-256 carried on chunk by chunk), talking HTTP to a release `rakkr-server` whose upload
//! policy sends every file to an S3 destination served by s3s-fs (which
//! checks SigV4 and stores to a directory). The server hashes and decodes
//! the file while it arrives and sends its S3 parts meanwhile; the benchmark
//! prints how many runs took those paths. Measured: from queuing the file
//! to the server's confirmation (appliance → server), and on to the S3
//! delivery (→ S3). The reference is `curl -X PUT --data-binary @file
//! --aws-sigv4` to the same s3s-fs, timed alone, and with the payload's
//! SHA-256 that SigV4 signs (curl 7.88 does not compute it for a PUT; s3s
//! requires it) computed first by `sha256sum` (coreutils, no SHA
//! extensions) and by `openssl dgst -sha256`. CPU is each process's user +
//! system time over the run (`/proc/PID/stat`): the server's, the
//! appliance side's (this process) and s3s-fs's, per GB of file.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rakkr_hil_tests::bench::median;
use rakkr_hil_tests::{S3Server, Server, job_agent, wait_for, wait_job, wait_online};
use serde_json::json;

/// User + system CPU seconds of process `pid` (`self`: this one) so far.
fn process_cpu_seconds(pid: impl std::fmt::Display) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Each run's figures, for the medians.
#[derive(Default)]
struct Measured {
    to_server: Vec<f64>,
    to_s3: Vec<f64>,
    curl: Vec<f64>,
    coreutils: Vec<f64>,
    openssl: Vec<f64>,
    /// Server, appliance side, s3s-fs.
    cpu: [Vec<f64>; 3],
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: u32 = args.first().map_or(Ok(600), |s| s.parse())?;
    let runs: usize = args.get(1).map_or(Ok(3), |s| s.parse())?;
    let work = tempfile::tempdir()?;
    let file = work.path().join("take.flac");
    let bytes = rakkr_hil_tests::bench::noise_flac(&file, seconds, 2)?;
    let gb = bytes as f64 / 1e9;
    println!("file: {seconds} s of 2 ch 24-bit noise, {bytes} B of FLAC");

    let s3 = S3Server::start(work.path(), &["takes"])?;
    let server = Server::start_configured(
        work.path(),
        &work.path().join("data"),
        &[],
        "[delivery]\ndefault = \"s3\"\n[delivery.policies.s3]\ndestinations = [\"s3\"]\n",
    )?;
    let (code, made) = server.post(
        "/api/v1/destinations",
        &json!({"name": "s3", "kind": "s3", "endpoint": s3.endpoint(), "region": "us-east-1",
                "bucket": "takes", "prefix": "bench", "access_key_id": s3.access_key,
                "allow_http": true, "secret": s3.secret_key}),
    )?;
    if code != 200 {
        bail!("destination not made: {made}");
    }
    // A job of the node's to upload under: one short take by a real agent
    // (which does not upload); the benchmark's file goes as its segment.
    let node = "bench-1";
    let (agent, _) = job_agent(work.path(), &server, node, 2, "")?;
    wait_online(&server, node)?;
    let (code, job) = server.post(
        "/api/v1/jobs",
        &json!({"node": node, "channels": "1,2", "duration_s": 1}),
    )?;
    if code != 201 {
        bail!("job not made: {job}");
    }
    let job_id = job["id"].as_str().unwrap_or_default().to_owned();
    wait_job(&server, &job_id, "completed", Duration::from_secs(30))?;
    drop(agent);
    let credential = server.credential_for(node)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let job: rakkr_protocol::JobId = job_id.parse()?;

    let mut m = Measured::default();
    for run in 1..=runs {
        // A fresh segment name each run: the server treats it as a new file.
        let name = format!("{job}.{run:04}.flac");
        let dir = work.path().join(format!("recordings-{run}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::hard_link(&file, dir.join(&name))
            .or_else(|_| std::fs::copy(&file, dir.join(&name)).map(|_| ()))?;
        let outbox = Arc::new(rakkr_agent::outbox::Outbox::in_memory(64 << 20)?);
        let clock: Arc<dyn rakkr_agent::clock::Clock> = Arc::new(rakkr_agent::clock::SystemClock);
        outbox.set_upload(
            job.as_u128(),
            &name,
            Some(&rakkr_agent::upload::queued(bytes, clock.unix_ms())),
        )?;
        let (_tx, retention) =
            tokio::sync::watch::channel(rakkr_agent::retention::RetentionRules::of(
                &rakkr_protocol::retention::ApplianceRetention {
                    delete_confirmed: false,
                    ..rakkr_protocol::retention::ApplianceRetention::DEFAULT
                },
            ));
        let uploader = rakkr_agent::upload::Uploader {
            settings: rakkr_agent::config::UploadSettings {
                server: server.url("").trim_end_matches('/').to_owned(),
                chunk_bytes: 8 << 20,
                max_bytes_per_s: 0,
                ca_file: None,
                alert_after: Duration::from_secs(600),
                windows: rakkr_agent::upload_window::UploadWindows::always(),
                stall_timeout: Duration::from_secs(60),
            },
            node: node.to_owned(),
            credential: credential.clone(),
            recordings_dir: dir.clone(),
            outbox: outbox.clone(),
            wake: Arc::new(tokio::sync::Notify::new()),
            stats: Arc::default(),
            retention,
            events: rakkr_agent::upload::EventSink {
                ready: Arc::new(tokio::sync::Notify::new()),
                telemetry: Arc::default(),
                clock,
            },
        };
        let cpu_before = [
            process_cpu_seconds(server.proc.pid())?,
            process_cpu_seconds("self")?,
            process_cpu_seconds(s3.proc.pid())?,
        ];
        let stop = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        let task = runtime.spawn(uploader.run(stop.clone()));
        let confirmed = wait_for(
            "the server's confirmation",
            Duration::from_secs(600),
            || {
                let all = outbox.uploads().ok()?;
                let (_, _, entry) = all.into_iter().find(|(_, n, _)| n == &name)?;
                let entry: serde_json::Value = serde_json::from_slice(&entry).ok()?;
                (entry["confirmed"] == true).then(|| started.elapsed())
            },
        )?;
        stop.cancel();
        let _ = runtime.block_on(task);
        let delivered = wait_for("the S3 delivery", Duration::from_secs(600), || {
            let all = server.get_json("/api/v1/deliveries?state=delivered").ok()?;
            all.as_array()?
                .iter()
                .any(|d| d["name"] == name.as_str())
                .then(|| started.elapsed())
        })?;
        let cpu = [
            process_cpu_seconds(server.proc.pid())? - cpu_before[0],
            process_cpu_seconds("self")? - cpu_before[1],
            process_cpu_seconds(s3.proc.pid())? - cpu_before[2],
        ];
        // The reference: the payload's SHA-256 (two tools), then curl's PUT
        // of the same file to the same S3 server, timed apart.
        let hashed = |tool: &[&str]| -> Result<(String, f64)> {
            let began = Instant::now();
            let out = Command::new(tool[0]).args(&tool[1..]).arg(&file).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            // `HASH  file` (sha256sum) or `SHA2-256(file)= HASH` (openssl).
            let hash = text
                .split_whitespace()
                .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
                .unwrap_or_default()
                .to_owned();
            Ok((hash, began.elapsed().as_secs_f64()))
        };
        let (hash, coreutils) = hashed(&["sha256sum"])?;
        let (same, openssl) = hashed(&["openssl", "dgst", "-sha256"])?;
        if hash.is_empty() || hash != same {
            bail!("sha256sum and openssl disagree: {hash} {same}");
        }
        let key = format!("reference/{run}.flac");
        let began = Instant::now();
        let put = Command::new("curl")
            .args(["-sS", "-f", "-o", "/dev/null", "-X", "PUT", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .args(["-H", "Content-Type: application/octet-stream", "-H"])
            .arg(format!("x-amz-content-sha256: {hash}"))
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{}:{}", s3.access_key, s3.secret_key))
            .arg(format!("{}/takes/{key}", s3.endpoint()))
            .status()
            .context("run curl")?;
        let curl = began.elapsed().as_secs_f64();
        if !put.success() {
            bail!("curl's PUT failed");
        }
        if std::fs::metadata(s3.root.join("takes").join(&key))?.len() != bytes {
            bail!("curl's object has another size");
        }
        println!(
            "run {run}: appliance → server {:.2} s, → S3 {:.2} s in all; curl PUT {curl:.2} s \
             (sha256sum {coreutils:.2} s, openssl {openssl:.2} s before it); \
             CPU: server {:.2} s, appliance {:.2} s, s3s-fs {:.2} s",
            confirmed.as_secs_f64(),
            delivered.as_secs_f64(),
            cpu[0],
            cpu[1],
            cpu[2],
        );
        m.to_server.push(confirmed.as_secs_f64());
        m.to_s3.push(delivered.as_secs_f64());
        m.curl.push(curl);
        m.coreutils.push(coreutils + curl);
        m.openssl.push(openssl + curl);
        for (all, one) in m.cpu.iter_mut().zip(cpu) {
            all.push(one);
        }
    }
    // The server's follower must have verified each file while it arrived;
    // a run that fell back to checking after the last chunk measures that.
    println!(
        "files verified while arriving: {} of {runs}; S3 deliveries completed from a copy begun while arriving: {} of {runs}",
        server.metric("rakkr_upload_files_verified_on_arrival_total")?,
        server.metric("rakkr_delivery_early_copies_delivered_total")?
    );
    let to_s3 = median(m.to_s3);
    let mb_s = |s: f64| bytes as f64 / 1e6 / s;
    let [server_cpu, appliance_cpu, s3_cpu] = m.cpu.map(median);
    let to_server = median(m.to_server);
    let (curl, coreutils, openssl) = (median(m.curl), median(m.coreutils), median(m.openssl));
    println!(
        "median: appliance → server {to_server:.2} s ({:.0} MB/s), appliance → server → S3 {to_s3:.2} s ({:.0} MB/s); \
         curl PUT alone {curl:.2} s ({:.0} MB/s), with openssl's hash {openssl:.2} s, with sha256sum's {coreutils:.2} s; \
         ratio (throughput, end to end / reference): {:.2} of curl alone, {:.2} of openssl + curl, {:.2} of sha256sum + curl; \
         CPU per GB stored: server {:.2} s, appliance {:.2} s, s3s-fs {:.2} s",
        mb_s(to_server),
        mb_s(to_s3),
        mb_s(curl),
        curl / to_s3,
        openssl / to_s3,
        coreutils / to_s3,
        server_cpu / gb,
        appliance_cpu / gb,
        s3_cpu / gb,
    );
    Ok(())
}
