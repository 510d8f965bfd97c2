//! Recording delivery (decision 0016) against a real server and real
//! agents: a node's take arrives in chunks, resumes after the server
//! restarts, and is confirmed only byte-identical; bad requests are refused
//! with the reason, audited, and lose nothing; an appliance uploads its takes
//! itself, through cuts of either side at random moments, and deletes its
//! copy only once the server confirmed it.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;
use rakkr_protocol::upload::{
    UPLOAD_CHECKSUM, UPLOAD_LENGTH, UPLOAD_OFFSET, checksum_header, complete_path, file_path,
};
use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

/// A node's HTTP requests to `server`, as `node` with its credential.
struct NodeClient {
    http: Client,
    base: String,
    node: String,
    credential: String,
}

impl NodeClient {
    fn new(server: &Server, node: &str) -> Result<NodeClient> {
        Ok(NodeClient {
            http: Client::builder().timeout(Duration::from_secs(20)).build()?,
            base: server.url(""),
            node: node.to_owned(),
            credential: server.credential_for(node)?,
        })
    }

    fn head(&self, path: &str) -> Result<Response> {
        Ok(self
            .http
            .head(format!("{}{path}", self.base))
            .basic_auth(&self.node, Some(&self.credential))
            .send()?)
    }

    /// A chunk at `offset` of a file of `length` bytes, with its checksum
    /// (of `checksum_of`, normally the chunk itself).
    fn patch(
        &self,
        path: &str,
        offset: u64,
        length: u64,
        chunk: &[u8],
        checksum_of: &[u8],
    ) -> Result<Response> {
        Ok(self
            .http
            .patch(format!("{}{path}", self.base))
            .basic_auth(&self.node, Some(&self.credential))
            .header(UPLOAD_OFFSET, offset)
            .header(UPLOAD_LENGTH, length)
            .header(UPLOAD_CHECKSUM, checksum_header(checksum_of))
            .header("content-type", "application/offset+octet-stream")
            .body(chunk.to_vec())
            .send()?)
    }

    fn complete(&self, path: &str, sha256: &str) -> Result<Response> {
        Ok(self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(&self.node, Some(&self.credential))
            .json(&json!({ "sha256": sha256 }))
            .send()?)
    }
}

fn offset_of(r: &Response) -> Option<u64> {
    r.headers().get(UPLOAD_OFFSET)?.to_str().ok()?.parse().ok()
}

/// A finished take of `node` (2 s, 2 channels) on a real agent: its job id
/// and its file.
fn recorded_take(server: &Server, work: &Path, node: &str) -> Result<(String, std::path::PathBuf)> {
    let (_agent, recordings) = job_agent(work, server, node, 2, "")?;
    wait_online(server, node)?;
    let (code, job) = server.post(
        "/api/v1/jobs",
        &json!({"node": node, "channels": "1,2", "duration_s": 2}),
    )?;
    anyhow::ensure!(code == 201, "job not created ({code}): {job}");
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    wait_job(server, &id, "completed", Duration::from_secs(30))?;
    let file = recordings.join(format!("{id}.flac"));
    flac_test(&file)?;
    Ok((id, file))
}

fn sha256_hex(bytes: &[u8]) -> String {
    rakkr_protocol::digest::sha256_hex(bytes)
}

fn audit_denials(server: &Server, node: &str) -> Result<Vec<Value>> {
    let found = server.get_json(&format!(
        "/api/v1/audit/search?outcome=denied&q=recording:&limit=100&actor=node:{node}@127.0.0.1"
    ))?;
    Ok(found["records"].as_array().cloned().unwrap_or_default())
}

#[test]
fn a_take_s_file_arrives_in_chunks_resumes_after_a_restart_and_is_confirmed_identical() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    let (job, file) = recorded_take(&server, work.path(), "up-a")?;
    let bytes = std::fs::read(&file)?;
    let name = format!("{job}.flac");
    let (path, done) = (
        file_path(job.parse()?, &name),
        complete_path(job.parse()?, &name),
    );
    let node = NodeClient::new(&server, "up-a")?;
    let length = bytes.len() as u64;
    let third = bytes.len() / 3;

    let head = node.head(&path)?;
    assert_eq!((head.status().as_u16(), offset_of(&head)), (200, Some(0)));
    let r = node.patch(&path, 0, length, &bytes[..third], &bytes[..third])?;
    assert_eq!(r.status().as_u16(), 204, "{:?}", r.text());
    // Not complete yet: the server says where it stands.
    let early = node.complete(&done, &sha256_hex(&bytes))?;
    assert_eq!(
        (early.status().as_u16(), offset_of(&early)),
        (409, Some(third as u64))
    );

    // The server restarts: the offset held survives it.
    let server = server.restart(work.path(), true)?;
    let head = node.head(&path)?;
    assert_eq!(offset_of(&head), Some(third as u64));
    // A chunk sent again at an old offset: 409 with the offset to resume from.
    let stale = node.patch(&path, 0, length, &bytes[..third], &bytes[..third])?;
    assert_eq!(
        (stale.status().as_u16(), offset_of(&stale)),
        (409, Some(third as u64))
    );
    // A corrupted chunk (its checksum is of other bytes): refused, nothing kept.
    let mut garbled = bytes[third..2 * third].to_vec();
    garbled[10] ^= 0xff;
    let bad = node.patch(
        &path,
        third as u64,
        length,
        &garbled,
        &bytes[third..2 * third],
    )?;
    assert_eq!(bad.status().as_u16(), 460);
    assert_eq!(offset_of(&node.head(&path)?), Some(third as u64));
    // The rest, then completion.
    let r = node.patch(
        &path,
        third as u64,
        length,
        &bytes[third..],
        &bytes[third..],
    )?;
    assert_eq!((r.status().as_u16(), offset_of(&r)), (204, Some(length)));
    let confirmed = node.complete(&done, &sha256_hex(&bytes))?;
    assert_eq!(confirmed.status().as_u16(), 200);
    let confirmation: Value = confirmed.json()?;
    assert_eq!(confirmation["sha256"], sha256_hex(&bytes));
    assert_eq!(confirmation["bytes"], length);
    // Byte-identical in the server's cache, and a valid FLAC file.
    let kept = data.join("recordings/up-a").join(&job).join(&name);
    assert_eq!(std::fs::read(&kept)?, bytes);
    flac_test(&kept)?;
    // Asked again (the confirmation was lost): the same answer.
    let again = node.complete(&done, &sha256_hex(&bytes))?;
    assert_eq!(again.json::<Value>()?, confirmation);
    // The confirmation is in the audit log, as the node.
    let audit = server.get_json(&format!(
        "/api/v1/audit/search?outcome=allowed&actor=node:up-a@127.0.0.1&q=recording:{job}"
    ))?;
    assert_eq!(audit["records"][0]["action"], "upload recording", "{audit}");
    // Counted for dashboards.
    assert_eq!(server.metric("rakkr_upload_files_confirmed_total")?, 1);
    // Checked while it arrived: the restarted server's follower read the
    // first third back from disk, then followed the rest.
    assert_eq!(
        server.metric("rakkr_upload_files_verified_on_arrival_total")?,
        1
    );
    assert!(server.metric("rakkr_upload_refused_total")? >= 1);
    assert!(server.metric("rakkr_upload_bytes_received_total")? >= length - third as u64);
    // The corrupted chunk's refusal too.
    let denied = audit_denials(&server, "up-a")?;
    assert!(
        denied
            .iter()
            .any(|r| r["reason"].as_str().is_some_and(|w| w.contains("checksum"))),
        "{denied:?}"
    );
    Ok(())
}

#[test]
fn bad_uploads_are_refused_with_the_reason_and_audited() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start_with_env(
        work.path(),
        &data,
        &[("RAKKR_SERVER_UPLOADS__MAX_FILE_MB", "1")],
    )?;
    let (job, file) = recorded_take(&server, work.path(), "up-b")?;
    let bytes = std::fs::read(&file)?;
    let id: rakkr_protocol::JobId = job.parse()?;
    let name = format!("{job}.flac");
    let path = file_path(id, &name);
    let node = NodeClient::new(&server, "up-b")?;
    let other = NodeClient::new(&server, "up-c")?;
    let length = bytes.len() as u64;
    let chunk = &bytes[..1000];

    // Another node's recording: 403.
    let r = other.patch(&path, 0, length, chunk, chunk)?;
    assert_eq!(r.status().as_u16(), 403, "{:?}", r.text());
    // A wrong credential: 401.
    let stranger = NodeClient {
        credential: "not-it".into(),
        ..NodeClient::new(&server, "up-b")?
    };
    assert_eq!(
        stranger
            .patch(&path, 0, length, chunk, chunk)?
            .status()
            .as_u16(),
        401
    );
    // Names that are not a file of the take, traversal among them: 400.
    for bad in [
        format!("{job}.flac.part"),
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
        format!("..%2F{job}.flac"),
        format!("{job}.0001.mp3"),
    ] {
        let r = node.patch(
            &format!("/api/v1/node/recordings/{job}/files/{bad}"),
            0,
            length,
            chunk,
            chunk,
        )?;
        assert!(
            matches!(r.status().as_u16(), 400 | 404),
            "{bad}: {}",
            r.status()
        );
    }
    // A job the server does not know: 404.
    let unknown = rakkr_protocol::JobId::new(1_000);
    let r = node.patch(
        &file_path(unknown, &format!("{unknown}.flac")),
        0,
        length,
        chunk,
        chunk,
    )?;
    assert_eq!(r.status().as_u16(), 404);
    // Larger than the server takes (1 MB here): 413.
    let r = node.patch(&path, 0, 2 << 20, chunk, chunk)?;
    assert_eq!(r.status().as_u16(), 413, "{:?}", r.text());
    // A chunk larger than any the server reads: 413 as well.
    let huge = vec![0u8; rakkr_protocol::upload::MAX_CHUNK_BYTES + 1];
    let r = node.patch(&path, 0, length, &huge, &huge)?;
    assert_eq!(r.status().as_u16(), 413);
    assert!(r.text()?.contains("a chunk is at most"));
    // A whole file whose digest is not the one claimed: discarded, 409, from 0 again.
    let r = node.patch(&path, 0, length, &bytes, &bytes)?;
    assert_eq!(r.status().as_u16(), 204);
    let wrong = node.complete(&complete_path(id, &name), &sha256_hex(b"other"))?;
    assert_eq!((wrong.status().as_u16(), offset_of(&wrong)), (409, Some(0)));
    assert_eq!(offset_of(&node.head(&path)?), Some(0));
    assert!(!data.join("recordings/up-b").join(&job).join(&name).exists());
    // Nothing of it reached the cache, and the node's copy is untouched.
    assert_eq!(std::fs::read(&file)?, bytes);
    // A file that arrives as sent but does not decode (a frame damaged before
    // it was hashed): refused too, nothing kept.
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    let r = node.patch(&path, 0, length, &damaged, &damaged)?;
    assert_eq!(r.status().as_u16(), 204);
    let r = node.complete(&complete_path(id, &name), &sha256_hex(&damaged))?;
    assert_eq!(offset_of(&r), Some(0));
    assert_eq!(r.status().as_u16(), 409);
    assert!(r.text()?.contains("does not decode"));
    assert!(!data.join("recordings/up-b").join(&job).join(&name).exists());
    // The follower's verdict on either file was not taken on trust.
    assert_eq!(
        server.metric("rakkr_upload_files_verified_on_arrival_total")?,
        0
    );

    // Each refusal is in the audit log with its reason.
    let denied = audit_denials(&server, "up-b")?;
    let reasons: Vec<&str> = denied.iter().filter_map(|r| r["reason"].as_str()).collect();
    for why in [
        "is not a file of job",
        "no recording of job",
        "at most 1048576 bytes",
        "SHA-256",
        "does not decode",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(why)),
            "{why}: {reasons:?}"
        );
    }
    let by_other = audit_denials(&server, "up-c")?;
    assert!(
        by_other.iter().any(|r| r["reason"]
            .as_str()
            .is_some_and(|w| w.contains("is not node up-c's"))),
        "the other node's attempt is audited: {by_other:?}"
    );
    Ok(())
}

/// An agent of `server` recording `signal` whose takes go to the server
/// (`upload`: the rest of its `[upload]` table); its recordings directory.
#[test]
fn an_appliance_uploads_its_take_and_deletes_it_only_once_confirmed() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    let (agent, recordings) = uploading_agent(work.path(), &server, "up-d", "demo", "")?;
    let job = take(&server, "up-d", 3)?;
    let name = format!("{job}.flac");
    let kept = data.join("recordings/up-d").join(&job).join(&name);
    wait_for("the take on the server", Duration::from_secs(30), || {
        (kept.exists() && !recordings.join(&name).exists()).then_some(())
    })?;
    flac_test(&kept)?;
    agent
        .proc
        .wait_log("take file uploaded and confirmed", Duration::from_secs(5))?;
    // The node page says where the take is.
    let mut olga = server.operator("olga", "operator")?;
    let (_, _, panel) = olga.get("/nodes/up-d/jobs")?;
    assert!(panel.contains("data-delivery=\"server\""), "{panel}");
    let (info, comments) = rakkr_flac::read_stream_info(&kept)?;
    assert_eq!(info.total_samples, 3 * 48_000, "the whole take");
    assert_eq!(comments.get("RAKKR_JOB"), Some(job.as_str()));
    Ok(())
}

#[test]
fn a_take_waits_for_the_upload_window_and_goes_when_it_opens() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    // A window from the next whole minute (UTC) at least 12 s away: time
    // for the take to finish before it opens.
    let unix_s = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    };
    let now = unix_s();
    let mut opens = (now / 60 + 1) * 60;
    if opens - now < 12 {
        opens += 60;
    }
    let hm = |t: u64| format!("{:02}:{:02}", (t / 3600) % 24, (t / 60) % 60);
    let upload = format!(
        "windows = [\"{}-{}\"]\ntime_zone = \"UTC\"\nalert_after_s = 1\n",
        hm(opens),
        hm(opens + 600)
    );
    let (agent, recordings) = uploading_agent(work.path(), &server, "up-w", "demo", &upload)?;
    let job = take(&server, "up-w", 2)?;
    let name = format!("{job}.flac");
    let kept = data.join("recordings/up-w").join(&job).join(&name);
    agent
        .proc
        .wait_log("uploads wait for their window", Duration::from_secs(10))?;
    assert!(
        unix_s() < opens,
        "the test's timing: the take ended before the window"
    );
    assert!(recordings.join(&name).exists() && !kept.exists());
    wait_for(
        "the take on the server",
        Duration::from_secs(opens.saturating_sub(unix_s()) + 30),
        || kept.exists().then_some(()),
    )?;
    assert!(unix_s() >= opens, "not before the window opened");
    agent
        .proc
        .wait_log("the upload window opened", Duration::from_secs(1))?;
    flac_test(&kept)?;
    // Waiting for a window is not failing.
    let issues = server.get_json("/api/v1/health?node=up-w&condition=upload_failing")?;
    assert_eq!(issues, json!([]), "{issues}");
    Ok(())
}

#[test]
fn a_node_keeps_or_deletes_uploaded_takes_as_its_chosen_retention_policy_says() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    // The built-in policies keep 4 GiB free, more than a test machine's
    // disk may have: the same policies, keeping 1 MiB free.
    let policies = "[retention]\ndefault = \"standard\"\n\
        [retention.policies.standard.appliance]\ndelete_confirmed = true\nmin_free_mb = 1\n\
        [retention.policies.keep-30-days.appliance]\ndelete_confirmed = false\n\
        max_age_days = 30\nmin_free_mb = 1\n";
    let server = Server::start_configured(work.path(), &data, &[], policies)?;
    let (agent, recordings) = uploading_agent(work.path(), &server, "up-r", "demo", "")?;
    let view = server.get_json("/api/v1/nodes/up-r/retention")?;
    assert_eq!(view["chosen"], Value::Null, "{view}");
    assert_eq!(view["policy"], "standard");
    assert_eq!(view["rules"]["delete_confirmed"], true);
    let listed = server.get_json("/api/v1/retention-policies")?;
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|p| p["name"] == "keep-30-days")),
        "{listed}"
    );

    // Kept for a month: the appliance keeps its copy after the upload.
    let (code, chosen) = server.post(
        "/api/v1/nodes/up-r/retention",
        &json!({"policy": "keep-30-days"}),
    )?;
    assert_eq!(code, 200, "{chosen}");
    assert_eq!(chosen["rules"]["max_age_days"], 30);
    let on_policy = |policy: &str| {
        agent.proc.wait_log_line(
            &[
                "rules from the server",
                "retention",
                &format!("policy={policy}"),
            ],
            Duration::from_secs(20),
        )
    };
    on_policy("keep-30-days")?;
    let job = take(&server, "up-r", 2)?;
    let name = format!("{job}.flac");
    let kept = data.join("recordings/up-r").join(&job).join(&name);
    wait_for("the take on the server", Duration::from_secs(30), || {
        kept.exists().then_some(())
    })?;
    agent
        .proc
        .wait_log("take file uploaded and confirmed", Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        recordings.join(&name).exists(),
        "kept on the appliance under keep-30-days: {}",
        agent.proc.stderr_text()
    );

    // Back to the default (delete once confirmed): the kept copy goes too.
    let (code, _) = server.post("/api/v1/nodes/up-r/retention", &json!({"policy": null}))?;
    assert_eq!(code, 200);
    on_policy("standard")?;
    wait_for("the kept copy deleted", Duration::from_secs(20), || {
        (!recordings.join(&name).exists()).then_some(())
    })?;
    assert!(agent.proc.stderr_text().contains("delete_confirmed"));
    assert!(kept.exists(), "the server's copy stays");

    // Bad choices change nothing and say why; the choice is audited.
    let (code, refused) =
        server.post("/api/v1/nodes/up-r/retention", &json!({"policy": "nope"}))?;
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no retention policy \"nope\""))
    );
    let audit = server.get_json("/api/v1/audit/search?q=node:up-r&limit=10")?;
    assert!(
        audit["records"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["after"]["retention_policy"] == "keep-30-days"
                && r["before"]["retention_policy"].is_null())),
        "{audit}"
    );
    // The node page shows the policy and, to an operator who may, the form.
    let mut olga = server.operator("olga", "admin")?;
    let (_, _, page) = olga.get("/nodes/up-r")?;
    assert!(page.contains("id=\"retention-h\""), "{page}");
    assert!(page.contains("action=\"/nodes/up-r/retention\""), "{page}");
    Ok(())
}

#[test]
fn uploads_cut_again_and_again_on_either_side_arrive_identical() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let first = Server::start(work.path(), &data)?;
    // Noise barely compresses: 12 s × 2 ch × 24 bit ≈ 3.4 MB, sent in 1 MiB
    // chunks at 2 Mbit/s: about fourteen seconds without cuts.
    let (mut agent, recordings) = uploading_agent(
        work.path(),
        &first,
        "up-e",
        "noise",
        "chunk_mib = 1\nmax_kbps = 2000",
    )?;
    let job = take(&first, "up-e", 12)?;
    let running = first;
    let name = format!("{job}.flac");
    let on_node = recordings.join(&name);
    let source = std::fs::read(&on_node)?;
    let kept = data.join("recordings/up-e").join(&job).join(&name);
    // The node page shows the upload's progress.
    let mut olga = running.operator("olga", "operator")?;
    wait_for("the upload's progress", Duration::from_secs(10), || {
        let (_, _, panel) = olga.get("/nodes/up-e/jobs").ok()?;
        (panel.contains("data-delivery=\"uploading\"") && panel.contains("<progress")).then_some(())
    })?;
    let mut server = Some(running);
    // Cut at random moments, the server (SIGKILL, down 2 s) and the
    // appliance (SIGKILL, started again) in turn.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    eprintln!("cut times from seed {seed}");
    let mut next = u64::from(seed);
    let mut cuts = 0;
    for round in 0..6 {
        next = next
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(800 + (next >> 33) % 1_700));
        if kept.exists() {
            break;
        }
        assert!(
            on_node.exists(),
            "the appliance's copy stays until confirmed"
        );
        if round % 2 == 0 {
            let stopped = server.take().map(|s| s.stop(true)).transpose()?;
            std::thread::sleep(Duration::from_secs(2));
            server = stopped.map(|s| s.start(work.path())).transpose()?;
        } else {
            agent = agent.crash_and_restart(work.path())?;
        }
        cuts += 1;
    }
    assert!(cuts >= 3, "the upload outlived only {cuts} cuts");
    wait_for("the take on the server", Duration::from_secs(120), || {
        (kept.exists() && !on_node.exists()).then_some(())
    })?;
    assert_eq!(std::fs::read(&kept)?, source, "byte-identical");
    flac_test(&kept)?;
    drop(agent);
    drop(server);
    Ok(())
}

#[test]
fn uploads_through_a_link_cut_again_and_again_arrive_identical() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    // The appliance reaches the server's HTTP through a link the test cuts;
    // its MQTT link stays up. A request that moves nothing for 2 s is given
    // up, so each cut (longer than that) ends the connection it silenced.
    let link = CutProxy::start(server.http_port)?;
    let tables = format!(
        "[upload]\nserver = \"{}\"\nchunk_mib = 1\nmax_kbps = 2000\nstall_timeout_s = 2\n",
        link.url()
    );
    let (agent, recordings) =
        job_agent_with_tables(work.path(), &server, "up-cut", 2, "", "noise", &tables)?;
    wait_online(&server, "up-cut")?;
    let job = take(&server, "up-cut", 12)?;
    let name = format!("{job}.flac");
    let on_node = recordings.join(&name);
    let source = std::fs::read(&on_node)?;
    let kept = data.join("recordings/up-cut").join(&job).join(&name);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    eprintln!("cut times from seed {seed}");
    let mut next = u64::from(seed);
    let mut random = |below: u64| {
        next = next
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (next >> 33) % below
    };
    // Each cut silences a request in flight (the first bytes of whichever
    // request comes next), so the appliance must notice the silence itself.
    let mut cuts = 0;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500 + random(2_000)));
        let made = link.cuts();
        link.cut_at_next_request();
        let landed = wait_for("a request to cut", Duration::from_secs(60), || {
            (link.cuts() > made || kept.exists()).then_some(link.cuts() > made)
        })?;
        if !landed {
            link.restore();
            break;
        }
        std::thread::sleep(Duration::from_millis(3_000 + random(2_000)));
        assert!(
            on_node.exists(),
            "the appliance's copy stays until confirmed"
        );
        link.restore();
        cuts += 1;
    }
    assert!(cuts >= 3, "the upload outlived only {cuts} cuts");
    wait_for("the take on the server", Duration::from_secs(120), || {
        (kept.exists() && !on_node.exists()).then_some(())
    })?;
    assert_eq!(std::fs::read(&kept)?, source, "byte-identical");
    flac_test(&kept)?;
    // The appliance saw the silence and moved on; nothing waited for TCP.
    let log = std::fs::read_to_string(&agent.proc.stderr)?;
    assert!(log.contains("the link looks cut"), "{log}");
    assert!(
        link.dropped() > 0,
        "connections silenced by a cut were ended"
    );
    Ok(())
}

#[test]
fn an_operator_plays_and_downloads_an_uploaded_take_and_a_viewer_only_plays() -> Result<()> {
    use rakkr_hil_tests::browser::{Browser, Look};
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    let (_agent, _) = uploading_agent(work.path(), &server, "up-f", "demo", "")?;
    let job = take(&server, "up-f", 3)?;
    let name = format!("{job}.flac");
    let kept = data.join("recordings/up-f").join(&job).join(&name);
    // The file lands in the cache a moment before its record says `cached`.
    let files = wait_for(
        "the take cached on the server",
        Duration::from_secs(30),
        || {
            let files = server
                .get_json(&format!("/api/v1/recordings/{job}/files"))
                .ok()?;
            (kept.exists() && files[0]["upload"]["state"] == "cached").then_some(files)
        },
    )?;
    let digest = sha256_hex(&std::fs::read(&kept)?);
    // The API says the same as the page will: where the file is, its digest
    // and its preview.
    assert_eq!(files[0]["name"], json!(name), "{files}");
    assert_eq!(files[0]["upload"]["sha256"], json!(digest), "{files}");
    let preview = &files[0]["upload"]["waveform"];
    assert_eq!(
        (preview["channels"].as_u64(), preview["frames"].as_u64()),
        (Some(2), Some(144_000)),
        "{files}"
    );
    server.operator("olga", "operator")?;
    let mut vic = server.operator("vic", "viewer")?;

    let browser = Browser::start(work.path(), &server.url(""), Look::DESKTOP)?;
    browser.log_in("olga", OPERATOR_PASSWORD)?;
    browser.goto(&format!("/recordings/{job}"))?;
    browser.wait_css("table.files .badge.ok", Duration::from_secs(10))?;
    assert!(browser.text("table.files")?.contains("verified, SHA-256"));
    // The player decodes the FLAC file and plays it (after a click: the
    // browser lets a page play sound only once the user interacted with it).
    browser.click("table.files audio")?;
    let played = browser.js_async(
        "const done = arguments[arguments.length - 1];
         const a = document.querySelector('table.files audio');
         a.muted = true;
         a.play().then(() => setTimeout(() => done([a.currentTime, a.duration]), 1500))
                 .catch(e => done('error: ' + e));",
        vec![],
    )?;
    let (at, length) = (played[0].as_f64(), played[1].as_f64());
    assert!(at.is_some_and(|t| t > 0.5), "it plays: {played}");
    assert!(
        length.is_some_and(|d| (d - 3.0).abs() < 0.05),
        "three seconds: {played}"
    );
    // Seeking asks for a byte range; the answer is the file's bytes.
    let ranged = browser.js_async(
        "const done = arguments[arguments.length - 1];
         fetch(document.querySelector('table.files audio').src, { headers: { Range: 'bytes=4-7' } })
           .then(r => r.arrayBuffer().then(b => done([r.status, Array.from(new Uint8Array(b))])))
           .catch(e => done('error: ' + e));",
        vec![],
    )?;
    let bytes = std::fs::read(&kept)?;
    assert_eq!(ranged, json!([206, bytes[4..8]]));
    // The server drew the take's waveform when it verified the file: a lane
    // per channel, with the band of the signal in it.
    let lanes = browser.js(
        "return Array.from(document.querySelectorAll('.waveform svg.lane'))
           .map(l => [l.getAttribute('aria-label'), l.querySelector('path.band')?.getAttribute('d').length ?? 0]);",
        vec![],
    )?;
    let lanes = lanes.as_array().cloned().unwrap_or_default();
    assert_eq!(lanes.len(), 2, "two channels: {lanes:?}");
    for (i, lane) in lanes.iter().enumerate() {
        assert_eq!(
            lane[0],
            json!(format!("Waveform of channel {} of 2", i + 1))
        );
        assert!(lane[1].as_u64().is_some_and(|n| n > 1000), "drawn: {lane}");
    }
    browser.screenshot("recording-uploaded-1280-light")?;
    // The download is the file the server verified.
    let downloaded = browser.js_async(
        "const done = arguments[arguments.length - 1];
         fetch(document.querySelector('a.download').href)
           .then(r => r.arrayBuffer())
           .then(b => crypto.subtle.digest('SHA-256', b))
           .then(d => done(Array.from(new Uint8Array(d)).map(x => x.toString(16).padStart(2, '0')).join('')))
           .catch(e => done('error: ' + e));",
        vec![],
    )?;
    assert_eq!(downloaded, json!(digest));
    let audit = server.get_json("/api/v1/audit/search?actor=user:olga&q=download%20recording")?;
    assert_eq!(
        audit["records"][0]["target"],
        format!("recording:{job}/{name}"),
        "{audit}"
    );

    // Automation downloads the same file with an API token, whole or by range.
    let api_url = server.url(&format!("/api/v1/recordings/{job}/files/{name}"));
    let whole = http_client()?
        .get(&api_url)
        .bearer_auth(&server.api_token)
        .send()?;
    assert_eq!(whole.status().as_u16(), 200);
    assert_eq!(whole.headers()["content-type"], "audio/flac");
    let bytes = whole.bytes()?;
    assert_eq!(rakkr_protocol::digest::sha256_hex(&bytes), digest);
    let part = http_client()?
        .get(&api_url)
        .bearer_auth(&server.api_token)
        .header("range", "bytes=4-")
        .send()?;
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.bytes()?, bytes.slice(4..));
    let missing = http_client()?
        .get(server.url(&format!("/api/v1/recordings/{job}/files/{job}.9999.flac")))
        .bearer_auth(&server.api_token)
        .send()?;
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    assert!(missing.status().is_client_error());
    let token_downloads = || -> Result<usize> {
        let audit = server.get_json("/api/v1/audit/search?q=download%20recording&limit=20")?;
        Ok(audit["records"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["actor"].as_str().is_some_and(|a| a.starts_with("token:"))
                    && r["target"] == format!("recording:{job}/{name}").as_str()
            })
            .count())
    };
    assert_eq!(
        token_downloads()?,
        1,
        "the whole file once; the resumed part not"
    );
    // A range from the first byte is a whole download, and audited as one.
    let from_start = http_client()?
        .get(&api_url)
        .bearer_auth(&server.api_token)
        .header("range", "bytes=0-")
        .send()?;
    assert_eq!(from_start.status().as_u16(), 206);
    assert_eq!(from_start.bytes()?, bytes);
    assert_eq!(token_downloads()?, 2);

    // A viewer may listen but not download: no link, and a request is refused.
    let (code, _, page) = vic.get(&format!("/recordings/{job}"))?;
    assert_eq!(code, 200);
    assert!(
        page.contains("<audio") && !page.contains("class=\"download\""),
        "{page}"
    );
    let (code, _, _) = vic.get(&format!("/recordings/{job}/files/{name}"))?;
    assert_eq!(code, 403);
    Ok(())
}

#[test]
fn a_full_appliance_disk_deletes_the_oldest_uploaded_takes_first_and_never_others() -> Result<()> {
    let work = tempfile::tempdir()?;
    // The server takes files up to 1 MB: a 5 s take of noise (≈1.4 MB) is
    // refused, so it is never uploaded.
    // The node's retention policy keeps uploaded takes until the disk
    // needs the room (the appliance's own configuration says the same, for
    // before it hears from the server).
    let server = Server::start_configured(
        work.path(),
        &work.path().join("data"),
        &[("RAKKR_SERVER_UPLOADS__MAX_FILE_MB", "1")],
        "[retention]\ndefault = \"keep\"\n[retention.policies.keep.appliance]\n\
         delete_confirmed = false\nmin_free_mb = 2\n",
    )?;
    let recordings = work.path().join("up-g-recordings");
    std::fs::create_dir(&recordings)?;
    let Some(_disk) = rakkr_hil_tests::small_fs::SmallFs::mount(&recordings, "6m") else {
        anyhow::bail!("mounting a tmpfs failed: this test needs root, as CI has");
    };
    let tables = format!(
        "[upload]\nserver = \"{}\"\ndelete_confirmed = false\n[retention]\nmin_free_mb = 2\n",
        server.url("")
    );
    let (agent, _) = job_agent_with_tables(work.path(), &server, "up-g", 2, "", "noise", &tables)?;
    wait_online(&server, "up-g")?;
    agent.proc.wait_log_line(
        &["rules from the server", "retention", "policy=keep"],
        Duration::from_secs(10),
    )?;
    let confirmed = |n: usize| {
        wait_for("uploads confirmed", Duration::from_secs(30), || {
            (agent
                .proc
                .stderr_text()
                .matches("take file uploaded and confirmed")
                .count()
                >= n)
                .then_some(())
        })
    };
    // Two takes of 2 s (≈0.56 MB each) are uploaded and kept; one of 5 s is not.
    let a = take(&server, "up-g", 2)?;
    confirmed(1)?;
    let b = take(&server, "up-g", 2)?;
    confirmed(2)?;
    let c = take(&server, "up-g", 5)?;
    agent
        .proc
        .wait_log("refused: 413", Duration::from_secs(20))?;
    // The refusal is a health issue of that file on the server, at once.
    let issue = wait_for("upload_failing", Duration::from_secs(20), || {
        let list = server
            .get_json("/api/v1/health?node=up-g&condition=upload_failing")
            .ok()?;
        list.as_array()?.first().cloned()
    })?;
    assert_eq!(issue["subject"], format!("file:{c}.flac"), "{issue}");
    assert_eq!(issue["state"], "open");
    assert!(
        issue["detail"].as_str().is_some_and(|d| d.contains("413")),
        "{issue}"
    );
    // The node's telemetry reports the file waiting: one, of its size.
    let waiting = std::fs::metadata(recordings.join(format!("{c}.flac")))?.len();
    wait_for("the queue in telemetry", Duration::from_secs(10), || {
        let files = server
            .metric("rakkr_node_upload_queue_files{node=\"up-g\"}")
            .ok()?;
        let bytes = server
            .metric("rakkr_node_upload_queue_bytes{node=\"up-g\"}")
            .ok()?;
        (files == 1 && bytes == waiting).then_some(())
    })?;
    // A 10 s take (≈2.8 MB) would leave less than 2 MB free: the uploaded
    // takes make room, oldest first; the take records to its end.
    let d = take(&server, "up-g", 10)?;
    let file = |job: &str| recordings.join(format!("{job}.flac"));
    wait_for("room made", Duration::from_secs(20), || {
        (!file(&a).exists() && !file(&b).exists()).then_some(())
    })?;
    assert!(file(&c).exists(), "a take not uploaded is never deleted");
    assert!(file(&d).exists());
    flac_test(&file(&d))?;
    let log = agent.proc.stderr_text();
    let deleted = |job: &str| {
        log.lines()
            .position(|l| l.contains("deleted an uploaded take file") && l.contains(job))
    };
    assert!(
        deleted(&a) < deleted(&b) && deleted(&a).is_some(),
        "the oldest first: {log}"
    );
    assert!(
        log.contains("rule=\"min_free_mb\"") || log.contains("rule=min_free_mb"),
        "{log}"
    );
    drop(agent);
    Ok(())
}

/// A server with its data under `{work}/data` and `config` as its configuration.
fn configured_server(work: &Path, config: &str) -> Result<Server> {
    Server::start_configured(work, &work.join("data"), &[], config)
}

/// Make the local destination `name` (the directory `{work}/{name}`); that directory.
fn add_local_destination(server: &Server, work: &Path, name: &str) -> Result<std::path::PathBuf> {
    let dir = work.join(name);
    let (code, made) = server.post(
        "/api/v1/destinations",
        &json!({"name": name, "kind": "local", "path": dir.display().to_string()}),
    )?;
    anyhow::ensure!(code == 200, "destination {name} not made ({code}): {made}");
    Ok(dir)
}

/// Ask for `job`'s file `name` to go to `destination` again now.
fn retry_delivery(
    server: &Server,
    job: &str,
    name: &str,
    destination: &str,
) -> Result<(u16, Value)> {
    server.post(
        "/api/v1/deliveries/retry",
        &json!({"job": job, "name": name, "destination": destination}),
    )
}

/// A server whose default upload policy sends every file to a local
/// directory (`nas`) and an S3 bucket (`s3`, s3s-fs checking signatures).
fn delivering_server(work: &Path) -> Result<(Server, S3Server)> {
    let s3 = S3Server::start(work, &["takes"])?;
    let server = Server::start_configured(
        work,
        &work.join("data"),
        &[],
        "[delivery]\ndefault = \"archive\"\n[delivery.policies.archive]\n\
         destinations = [\"nas\", \"s3\"]\nretry_budget_h = 1\n",
    )?;
    Ok((server, s3))
}

fn s3_destination(s3: &S3Server, secret: Option<&str>) -> Value {
    let mut d = json!({
        "name": "s3", "kind": "s3", "endpoint": s3.endpoint(), "region": "us-east-1",
        "bucket": "takes", "prefix": "site-1", "access_key_id": s3.access_key,
        "allow_http": true,
    });
    if let Some(secret) = secret {
        d["secret"] = json!(secret);
    }
    d
}

/// Make the destinations `nas` (a directory under `work`) and `s3` with
/// `secret` (the right one or not).
fn add_destinations(server: &Server, s3: &S3Server, work: &Path, secret: &str) -> Result<()> {
    let nas = work.join("nas").display().to_string();
    for d in [
        json!({"name": "nas", "kind": "local", "path": nas}),
        s3_destination(s3, Some(secret)),
    ] {
        let (code, made) = server.post("/api/v1/destinations", &d)?;
        anyhow::ensure!(code == 200, "destination not made ({code}): {made}");
    }
    Ok(())
}

/// Wait until `job`'s delivery to `destination` has failed at least once; it.
fn delivery_failing(server: &Server, job: &str, destination: &str) -> Result<Value> {
    wait_for(
        &format!("the delivery to {destination} failing"),
        Duration::from_secs(30),
        || {
            let all = server
                .get_json(&format!("/api/v1/deliveries?destination={destination}"))
                .ok()?;
            let d = all.as_array()?.iter().find(|d| d["job"] == job)?.clone();
            (d["attempts"].as_u64() >= Some(1)).then_some(d)
        },
    )
}

/// Wait until every delivery of `job` is in `state`; them.
fn deliveries_in(server: &Server, job: &str, state: &str, count: usize) -> Result<Vec<Value>> {
    wait_for(
        &format!("{count} deliveries {state}"),
        Duration::from_secs(30),
        || {
            let all = server.get_json("/api/v1/deliveries").ok()?;
            let mine: Vec<Value> = all
                .as_array()?
                .iter()
                .filter(|d| d["job"] == job)
                .cloned()
                .collect();
            (mine.len() == count && mine.iter().all(|d| d["state"] == state)).then_some(mine)
        },
    )
}

#[test]
fn a_take_is_delivered_to_every_destination_byte_identical_and_secrets_stay_sealed() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (server, s3) = delivering_server(work.path())?;
    let nas = add_local_destination(&server, work.path(), "nas")?;
    let (code, made) = server.post(
        "/api/v1/destinations",
        &s3_destination(&s3, Some(&s3.secret_key)),
    )?;
    assert_eq!(code, 200, "{made}");
    // The secret is write-only: never in an answer, not in the store's file.
    let listed = server.get_json("/api/v1/destinations")?;
    let text = listed.to_string();
    assert!(
        !text.contains(&s3.secret_key) && !text.contains("sealed"),
        "{text}"
    );
    assert_eq!(listed[1]["name"], "s3");
    assert_eq!(listed[1]["secret_set"], true);
    assert_eq!(listed[1]["used_by"], json!(["archive"]));
    let store_bytes = std::fs::read(work.path().join("data/rakkr.redb"))?;
    assert!(
        !store_bytes
            .windows(s3.secret_key.len())
            .any(|w| w == s3.secret_key.as_bytes()),
        "the secret is not in the store in clear"
    );
    let (code, probe) = server.post("/api/v1/destinations/s3/test", &json!({}))?;
    assert_eq!((code, &probe["ok"]), (200, &json!(true)), "{probe}");
    // A destination an upload policy sends to cannot go.
    let (code, refused) = server.post("/api/v1/destinations/s3/delete", &json!({}))?;
    assert_eq!(code, 409, "{refused}");
    // Saved again without a secret: the one set stays.
    let (code, _) = server.post("/api/v1/destinations", &s3_destination(&s3, None))?;
    assert_eq!(code, 200);

    let (_agent, _) = uploading_agent(work.path(), &server, "dl-a", "demo", "")?;
    let job = take(&server, "dl-a", 3)?;
    let name = format!("{job}.flac");
    let delivered = deliveries_in(&server, &job, "delivered", 2)?;
    let cached = std::fs::read(
        work.path()
            .join("data/recordings/dl-a")
            .join(&job)
            .join(&name),
    )?;
    let key = delivered[0]["key"].as_str().unwrap_or_default().to_owned();
    assert!(key.starts_with("dl-a/") && key.ends_with(&name), "{key}");
    assert_eq!(std::fs::read(nas.join(&key))?, cached, "the local copy");
    assert_eq!(
        std::fs::read(s3.root.join("takes/site-1").join(&key))?,
        cached,
        "the S3 object"
    );
    // The recording says so.
    let files = server.get_json(&format!("/api/v1/recordings/{job}/files"))?;
    assert_eq!(
        files[0]["deliveries"].as_array().map(Vec::len),
        Some(2),
        "{files}"
    );
    let mut olga = server.operator("olga", "admin")?;
    let (_, _, page) = olga.get(&format!("/recordings/{job}"))?;
    assert!(page.contains("data-delivery=\"uploaded\""), "{page}");
    // Each change to a destination is audited, without its secret.
    let audit = server.get_json("/api/v1/audit/search?q=destination:s3&limit=20")?;
    let text = audit.to_string();
    assert!(
        text.contains("\"secret_set\":true") && !text.contains(&s3.secret_key),
        "{text}"
    );
    Ok(())
}

#[test]
fn wrong_s3_credentials_fail_with_the_reason_and_a_retry_delivers_once_fixed() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (server, s3) = delivering_server(work.path())?;
    add_destinations(&server, &s3, work.path(), "not-the-secret")?;
    let (_, probe) = server.post("/api/v1/destinations/s3/test", &json!({}))?;
    assert_eq!(probe["ok"], false, "{probe}");
    let why = probe["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        why.contains("403") || why.contains("Signature") || why.contains("Access"),
        "a clear error: {why}"
    );

    let (_agent, _) = uploading_agent(work.path(), &server, "dl-b", "demo", "")?;
    let job = take(&server, "dl-b", 2)?;
    // The local copy arrives; the S3 one fails, says why, and waits to retry.
    let failing = delivery_failing(&server, &job, "s3")?;
    assert_eq!(failing["state"], "pending", "{failing}");
    let why = failing["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("403") || why.contains("Signature") || why.contains("Access"),
        "{failing}"
    );
    // Fixed, then retried by an operator: delivered, byte-identical.
    let (code, _) = server.post(
        "/api/v1/destinations",
        &s3_destination(&s3, Some(&s3.secret_key)),
    )?;
    assert_eq!(code, 200);
    let (code, retried) = retry_delivery(&server, &job, &format!("{job}.flac"), "s3")?;
    assert_eq!(code, 200, "{retried}");
    let delivered = deliveries_in(&server, &job, "delivered", 2)?;
    let key = delivered[0]["key"].as_str().unwrap_or_default().to_owned();
    let cached = std::fs::read(
        work.path()
            .join("data/recordings/dl-b")
            .join(&job)
            .join(format!("{job}.flac")),
    )?;
    assert_eq!(
        std::fs::read(s3.root.join("takes/site-1").join(&key))?,
        cached
    );
    // A retry of a delivered one is refused; the retry was audited.
    let (code, _) = retry_delivery(&server, &job, &format!("{job}.flac"), "s3")?;
    assert_eq!(code, 409);
    let audit = server.get_json(&format!("/api/v1/audit/search?q=delivery:{job}&limit=5"))?;
    assert!(
        audit["records"].as_array().is_some_and(|r| !r.is_empty()),
        "{audit}"
    );
    // The runner's copies are audited once each, when they arrived: not the
    // attempts that failed on the way.
    let copies = server.get_json(&format!(
        "/api/v1/audit/search?actor=runner:delivery&q=recording:{job}&limit=20"
    ))?;
    let mut destinations: Vec<&str> = copies["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["outcome"] == "allowed" && r["action"] == "deliver recording")
        .filter_map(|r| r["after"]["destination"].as_str())
        .collect();
    destinations.sort_unstable();
    assert_eq!(destinations.len(), 2, "{copies}");
    assert!(destinations.contains(&"s3"), "{copies}");
    Ok(())
}

#[test]
fn a_file_larger_than_a_part_reaches_s3_in_parts_byte_identical() -> Result<()> {
    use rakkr_server::{delivery, destinations, secrets::SecretBox};
    use rakkr_store::{DestinationRecord, DestinationSpec};
    let work = tempfile::tempdir()?;
    let s3 = S3Server::start(work.path(), &["takes"])?;
    let secrets = SecretBox::open_or_create(&work.path().join("secrets.key"))?;
    let spec = DestinationSpec::S3 {
        endpoint: Some(s3.endpoint()),
        region: "us-east-1".into(),
        bucket: "takes".into(),
        prefix: "site-1".into(),
        access_key_id: s3.access_key.clone(),
        allow_http: true,
    };
    let record = DestinationRecord {
        name: "s3".into(),
        sealed_secret: Some(destinations::seal_secret(
            &secrets,
            "s3",
            &spec,
            &s3.secret_key,
        )?),
        spec,
        created_ms: 0,
        updated_ms: 0,
    };
    // Two and a half parts of bytes that differ from part to part.
    let bytes: Vec<u8> = (0..(delivery::CHUNK_BYTES * 5 / 2) as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    let file = work.path().join("big.flac");
    std::fs::write(&file, &bytes)?;
    let opened = destinations::open(&secrets, &record).map_err(anyhow::Error::msg)?;
    let path =
        delivery::object_path("site-1", "n/2026-11-30/big.flac").map_err(anyhow::Error::msg)?;
    tokio::runtime::Runtime::new()?
        .block_on(opened.deliver(&path, &file, bytes.len() as u64))
        .map_err(anyhow::Error::msg)?;
    let stored = std::fs::read(s3.root.join("takes/site-1/n/2026-11-30/big.flac"))?;
    assert!(stored == bytes, "the object is byte-identical");
    Ok(())
}

/// The SMB destination `name` on `samba`'s share `share` with `password`.
fn smb_destination(
    samba: &SambaServer,
    name: &str,
    share: &str,
    password: &str,
    require_encryption: bool,
) -> Value {
    json!({
        "name": name, "kind": "smb", "server": samba.server(), "share": share,
        "prefix": "site-1/takes", "user": samba.user, "secret": password,
        "require_encryption": require_encryption,
    })
}

/// Files under `dir` whose names end with `suffix`, searched through.
fn files_ending(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_take_is_delivered_to_an_smb_share_byte_identical_and_the_password_stays_sealed() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let samba = SambaServer::start(work.path(), &[("takes", false)])?;
    let server = configured_server(
        work.path(),
        "[delivery]\ndefault = \"office\"\n[delivery.policies.office]\n\
         destinations = [\"office\"]\nretry_budget_h = 1\n",
    )?;
    let (code, made) = server.post(
        "/api/v1/destinations",
        &smb_destination(&samba, "office", "takes", SambaServer::PASSWORD, false),
    )?;
    assert_eq!(code, 200, "{made}");
    let (code, probe) = server.post("/api/v1/destinations/office/test", &json!({}))?;
    assert_eq!((code, &probe["ok"]), (200, &json!(true)), "{probe}");
    let listed = server.get_json("/api/v1/destinations")?;
    assert_eq!(listed[0]["kind"], "smb", "{listed}");
    assert_eq!(listed[0]["secret_set"], true, "{listed}");
    assert!(
        !listed.to_string().contains(SambaServer::PASSWORD),
        "{listed}"
    );

    let (_agent, _) = uploading_agent(work.path(), &server, "smb-a", "demo", "")?;
    let job = take(&server, "smb-a", 3)?;
    let name = format!("{job}.flac");
    let delivered = deliveries_in(&server, &job, "delivered", 1)?;
    let key = delivered[0]["key"].as_str().unwrap_or_default().to_owned();
    let cached = std::fs::read(
        work.path()
            .join("data/recordings/smb-a")
            .join(&job)
            .join(&name),
    )?;
    let share = samba.root.join("takes");
    assert_eq!(
        std::fs::read(share.join("site-1/takes").join(&key))?,
        cached,
        "the file on the share"
    );
    assert_eq!(
        files_ending(&share, ""),
        [share.join("site-1/takes").join(&key)],
        "only the take is on the share: no probe, nothing unfinished"
    );
    let audit = server.get_json("/api/v1/audit/search?q=destination:office&limit=20")?;
    let text = audit.to_string();
    assert!(
        text.contains("\"secret_set\":true") && !text.contains(SambaServer::PASSWORD),
        "{text}"
    );
    Ok(())
}

#[test]
fn smb_destinations_that_cannot_work_say_why() -> Result<()> {
    let work = tempfile::tempdir()?;
    let samba = SambaServer::start(work.path(), &[("takes", false), ("sealed", true)])?;
    let server = configured_server(work.path(), "")?;
    let mut nowhere = smb_destination(&samba, "nowhere", "takes", "x", false);
    nowhere["server"] = json!(format!("127.0.0.1:{}", free_port()));
    for (destination, says) in [
        (
            smb_destination(&samba, "wrong-pw", "takes", "not-the-password", false),
            "signing in",
        ),
        (
            smb_destination(&samba, "no-share", "missing", SambaServer::PASSWORD, false),
            "cannot connect the share",
        ),
        (
            smb_destination(&samba, "clear", "takes", SambaServer::PASSWORD, true),
            "does not encrypt",
        ),
        (nowhere, "cannot reach"),
    ] {
        let name = destination["name"].as_str().unwrap_or_default().to_owned();
        let (code, made) = server.post("/api/v1/destinations", &destination)?;
        assert_eq!(code, 200, "{made}");
        let (_, probe) = server.post(&format!("/api/v1/destinations/{name}/test"), &json!({}))?;
        assert_eq!(probe["ok"], false, "{name}: {probe}");
        let why = probe["error"].as_str().unwrap_or_default();
        assert!(why.contains(says), "{name}: {why}");
        assert!(!why.contains(SambaServer::PASSWORD), "{why}");
    }
    // Nothing was written by any of them.
    assert!(files_ending(&samba.root.join("takes"), "").is_empty());
    // A share that encrypts satisfies a destination that requires it.
    let (code, _) = server.post(
        "/api/v1/destinations",
        &smb_destination(&samba, "sealed", "sealed", SambaServer::PASSWORD, true),
    )?;
    assert_eq!(code, 200);
    let (_, probe) = server.post("/api/v1/destinations/sealed/test", &json!({}))?;
    assert_eq!(probe["ok"], true, "{probe}");
    // Bad fields are refused with the field named.
    let mut bad = smb_destination(&samba, "bad", "a/b", "pw", false);
    let (code, refused) = server.post("/api/v1/destinations", &bad)?;
    assert_eq!(code, 422, "{refused}");
    assert!(refused.to_string().contains("share"), "{refused}");
    bad["share"] = json!("takes");
    bad["prefix"] = json!("../up");
    let (code, refused) = server.post("/api/v1/destinations", &bad)?;
    assert_eq!(code, 422, "{refused}");
    assert!(refused.to_string().contains("prefix"), "{refused}");
    Ok(())
}

#[test]
fn an_smb_delivery_cut_by_a_killed_server_leaves_no_final_file_and_arrives_whole_after()
-> Result<()> {
    use rakkr_server::{delivery, destinations, secrets::SecretBox};
    use rakkr_store::{DestinationRecord, DestinationSpec};
    let work = tempfile::tempdir()?;
    let mut samba = SambaServer::start(work.path(), &[("takes", false)])?;
    let secrets = SecretBox::open_or_create(&work.path().join("secrets.key"))?;
    let spec = DestinationSpec::Smb {
        server: samba.server(),
        share: "takes".into(),
        prefix: "site-1".into(),
        user: samba.user.clone(),
        domain: String::new(),
        require_encryption: false,
    };
    let record = DestinationRecord {
        name: "office".into(),
        sealed_secret: Some(destinations::seal_secret(
            &secrets,
            "office",
            &spec,
            SambaServer::PASSWORD,
        )?),
        spec,
        created_ms: 0,
        updated_ms: 0,
    };
    // Six parts' worth, so the cut lands well inside the file.
    let bytes: Vec<u8> = (0..(delivery::CHUNK_BYTES * 6) as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let file = work.path().join("big.flac");
    std::fs::write(&file, &bytes)?;
    let path =
        delivery::object_path("site-1", "n/2026-11-30/big.flac").map_err(anyhow::Error::msg)?;
    let on_share = samba.root.join("takes/site-1/n/2026-11-30/big.flac");
    let partial = samba
        .root
        .join("takes/site-1/n/2026-11-30/big.flac.rakkr-partial");
    let len = bytes.len() as u64;
    let runtime = tokio::runtime::Runtime::new()?;
    let opened =
        std::sync::Arc::new(destinations::open(&secrets, &record).map_err(anyhow::Error::msg)?);
    let first = {
        let (opened, path, file) = (opened.clone(), path.clone(), file.clone());
        runtime.spawn(async move { opened.deliver(&path, &file, len).await })
    };
    // Kill smbd once part of the file is on the share, not all of it.
    let seen = wait_for(
        "part of the file on the share",
        Duration::from_secs(30),
        || {
            let len = std::fs::metadata(&partial).ok()?.len();
            (len >= 2 * delivery::CHUNK_BYTES as u64).then_some(len)
        },
    )?;
    samba.kill();
    assert!(seen < len, "cut mid-file at {seen}");
    let cut = runtime.block_on(first)?;
    assert!(cut.is_err(), "a cut delivery fails: {cut:?}");
    assert!(!on_share.exists(), "no final file from a cut delivery");
    // The server comes back; the retry writes the whole file again.
    samba.run()?;
    runtime
        .block_on(opened.deliver(&path, &file, len))
        .map_err(anyhow::Error::msg)?;
    assert!(
        std::fs::read(&on_share)? == bytes,
        "the file on the share is byte-identical"
    );
    assert!(!partial.exists(), "the partial file became the final one");
    Ok(())
}

#[test]
fn operators_see_the_delivery_queue_filter_it_and_retry_from_the_console() -> Result<()> {
    use rakkr_hil_tests::browser::{Browser, Look};
    let work = tempfile::tempdir()?;
    let (server, s3) = delivering_server(work.path())?;
    add_destinations(&server, &s3, work.path(), "wrong")?;
    let (_agent, _) = uploading_agent(work.path(), &server, "dl-c", "demo", "")?;
    let job = take(&server, "dl-c", 2)?;
    delivery_failing(&server, &job, "s3")?;
    server.operator("olga", "operator")?;
    let browser = Browser::start(work.path(), &server.url(""), Look::DESKTOP)?;
    browser.log_in("olga", OPERATOR_PASSWORD)?;
    browser.goto("/deliveries?state=pending")?;
    browser.wait_css("tr[data-destination=\"s3\"]", Duration::from_secs(10))?;
    let table = browser.text("table.deliveries")?;
    assert!(
        table.contains(&job) && !table.contains("nas"),
        "filtered to what waits: {table}"
    );
    assert!(
        table.contains("403") || table.contains("Signature"),
        "{table}"
    );
    browser.screenshot("deliveries-1280-light")?;
    // Fixed, then retried from the page: delivered.
    let (code, _) = server.post(
        "/api/v1/destinations",
        &s3_destination(&s3, Some(&s3.secret_key)),
    )?;
    assert_eq!(code, 200);
    browser.click("tr[data-destination=\"s3\"] button")?;
    deliveries_in(&server, &job, "delivered", 2)?;
    browser.goto("/deliveries?destination=s3")?;
    browser.wait_css("tr[data-delivery=\"delivered\"]", Duration::from_secs(10))?;
    // A viewer sees the queue but no retry button.
    let mut vic = server.operator("vic", "viewer")?;
    let (code, _, page) = vic.get("/deliveries")?;
    assert_eq!(code, 200);
    assert!(
        page.contains("data-delivery=") && !page.contains("Retry now"),
        "{page}"
    );
    Ok(())
}

#[test]
fn a_schedule_s_upload_policy_sends_its_recordings_and_takes_by_hand_follow_the_default()
-> Result<()> {
    let work = tempfile::tempdir()?;
    let server = configured_server(
        work.path(),
        "[delivery]\ndefault = \"server-only\"\n[delivery.policies.server-only]\n\
         [delivery.policies.archive]\ndestinations = [\"nas\"]\n",
    )?;
    let nas = add_local_destination(&server, work.path(), "nas")?;
    let (_agent, _) = uploading_agent(work.path(), &server, "dl-d", "demo", "")?;
    // A window hours away: only run-now records it.
    let schedule = |delivery: &str| {
        json!({
            "name": "Lecture", "node": "dl-d",
            "job": {"channels": "1,2", "profile": {"codec": "flac"}},
            "timing": {"recurrence": {"mode": "daily"}, "time_zone": "UTC",
                       "window": {"start": utc_time_in(6 * 3600), "end": utc_time_in(6 * 3600 + 3)}},
            "folder_template": "{node}/{year}/lectures",
            "delivery": delivery,
        })
    };
    let (code, refused) = server.post("/api/v1/schedules", &schedule("nope"))?;
    assert_eq!(code, 422, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("delivery")),
        "{refused}"
    );
    let (code, created) = server.post("/api/v1/schedules", &schedule("archive"))?;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["delivery"], "archive");
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let (code, run) = server.post(&format!("/api/v1/schedules/{id}/run-now"), &json!({}))?;
    assert_eq!(code, 201, "{run}");
    let scheduled = run["id"].as_str().unwrap_or_default().to_owned();
    wait_job(&server, &scheduled, "completed", Duration::from_secs(30))?;
    let delivered = deliveries_in(&server, &scheduled, "delivered", 1)?;
    let key = delivered[0]["key"].as_str().unwrap_or_default().to_owned();
    assert!(
        key.starts_with("dl-d/") && key.contains("/lectures/"),
        "the schedule's folder: {key}"
    );
    assert!(nas.join(&key).exists());
    // A take by hand follows the default: the server only.
    let by_hand = take(&server, "dl-d", 2)?;
    let kept = work
        .path()
        .join("data/recordings/dl-d")
        .join(&by_hand)
        .join(format!("{by_hand}.flac"));
    wait_for("the take on the server", Duration::from_secs(30), || {
        kept.exists().then_some(())
    })?;
    let files = server.get_json(&format!("/api/v1/recordings/{by_hand}/files"))?;
    assert_eq!(files[0]["deliveries"], json!([]), "{files}");
    Ok(())
}

#[test]
fn an_admin_manages_destinations_in_the_console_and_the_secret_is_never_shown() -> Result<()> {
    use rakkr_hil_tests::browser::{Browser, Look};
    let work = tempfile::tempdir()?;
    let (server, s3) = delivering_server(work.path())?;
    server.operator("ada", "admin")?;
    let browser = Browser::start(work.path(), &server.url(""), Look::DESKTOP)?;
    browser.log_in("ada", OPERATOR_PASSWORD)?;
    browser.goto("/destinations")?;
    browser.wait_css("form.destination", Duration::from_secs(10))?;
    let fill = |field: &str, value: &str| {
        browser.fill(&format!("form.destination [name=\"{field}\"]"), value)
    };
    fill("name", "s3")?;
    browser.js(
        "document.querySelector('form.destination [name=kind]').value = 's3';
         document.querySelector('form.destination [name=allow_http]').checked = true;",
        vec![],
    )?;
    fill("endpoint", &s3.endpoint())?;
    fill("region", "us-east-1")?;
    fill("bucket", "takes")?;
    fill("access_key_id", &s3.access_key)?;
    fill("secret", &s3.secret_key)?;
    browser.click("form.destination button[type=submit]")?;
    browser.wait_css("tr[data-destination=\"s3\"]", Duration::from_secs(10))?;
    let row = browser.text("tr[data-destination=\"s3\"]")?;
    assert!(row.contains("set") && row.contains("archive"), "{row}");
    let page = browser.inner_html("body")?;
    assert!(!page.contains(&s3.secret_key), "the secret is never shown");
    // An SMB share, encryption required (saved; not reachable, not tested).
    fill("name", "office")?;
    browser.js(
        "document.querySelector('form.destination [name=kind]').value = 'smb';
         document.querySelector('form.destination [name=allow_http]').checked = false;
         document.querySelector('form.destination [name=require_encryption]').checked = true;",
        vec![],
    )?;
    for (field, value) in [
        ("endpoint", ""),
        ("region", ""),
        ("bucket", ""),
        ("access_key_id", ""),
        ("server", "nas.local:1445"),
        ("share", "recordings"),
        ("prefix", "site-1"),
        ("user", "rakkr"),
        ("secret", "smb-password-9"),
    ] {
        fill(field, value)?;
    }
    browser.click("form.destination button[type=submit]")?;
    browser.wait_css("tr[data-destination=\"office\"]", Duration::from_secs(10))?;
    let row = browser.text("tr[data-destination=\"office\"]")?;
    assert!(
        row.contains("smb://rakkr@nas.local:1445/recordings/site-1")
            && row.contains("encrypted")
            && row.contains("set"),
        "{row}"
    );
    assert!(!browser.inner_html("body")?.contains("smb-password-9"));
    browser.click("tr[data-destination=\"s3\"] form[action$=\"/test\"] button")?;
    browser.wait_css("p.ok", Duration::from_secs(20))?;
    browser.screenshot("destinations-1280-light")?;
    // Used by a policy: no delete button, and a forged delete is refused.
    assert!(
        !browser
            .inner_html("body")?
            .contains("/destinations/s3/delete")
    );
    // An operator may not see or change destinations.
    let mut olga = server.operator("olga", "operator")?;
    let (code, _, _) = olga.get("/destinations")?;
    assert_eq!(code, 403);
    let view = server.get_json("/api/v1/destinations")?;
    assert_eq!(view[0]["secret_set"], true, "{view}");
    Ok(())
}

/// The server's record of `job`'s file `name` (`GET /api/v1/recordings/{id}/files`).
fn file_record(server: &Server, job: &str, name: &str) -> Result<Value> {
    let files = server.get_json(&format!("/api/v1/recordings/{job}/files"))?;
    files
        .as_array()
        .and_then(|all| all.iter().find(|f| f["name"] == name))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no file {name} in {files}"))
}

/// The audit records of the server deleting its copy of `job`'s files.
fn copy_deletions(server: &Server, job: &str) -> Result<Vec<Value>> {
    let audit = server.get_json(&format!(
        "/api/v1/audit/search?actor=runner:retention&q={job}&limit=20"
    ))?;
    Ok(audit["records"].as_array().cloned().unwrap_or_default())
}

/// Waits until retention has deleted `job`'s copy at `cached` all the way:
/// the file gone and, its last step, the deletion audited. The deletions.
fn wait_copy_deleted(server: &Server, job: &str, cached: &Path) -> Result<Vec<Value>> {
    wait_for(
        "the server's copy deleted and audited",
        Duration::from_secs(30),
        || {
            let deletions = copy_deletions(server, job).ok()?;
            (!cached.exists() && !deletions.is_empty()).then_some(deletions)
        },
    )
}

#[test]
fn the_server_deletes_its_copy_only_once_every_destination_holds_it_and_audits_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    // `later` is not a destination yet: its deliveries fail until it is made.
    let server = configured_server(
        work.path(),
        "[delivery]\ndefault = \"archive\"\n[delivery.policies.archive]\n\
         destinations = [\"nas\", \"later\"]\nretry_budget_h = 1\ndelete_server_copy_after_h = 0\n",
    )?;
    let nas = add_local_destination(&server, work.path(), "nas")?;
    let (_agent, _) = uploading_agent(work.path(), &server, "sr-a", "demo", "")?;
    let job = take(&server, "sr-a", 2)?;
    let name = format!("{job}.flac");
    let cached = work
        .path()
        .join("data/recordings/sr-a")
        .join(&job)
        .join(&name);
    // One destination holds it, the other failed: the server keeps its copy.
    delivery_failing(&server, &job, "later")?;
    wait_for("the copy to nas", Duration::from_secs(30), || {
        let all = server.get_json("/api/v1/deliveries?destination=nas").ok()?;
        all.as_array()?
            .iter()
            .any(|d| d["job"] == job && d["state"] == "delivered")
            .then_some(())
    })?;
    let before = std::fs::read(&cached)?;
    let kept = file_record(&server, &job, &name)?;
    assert!(
        kept["upload"]["state"] == "cached" && kept["upload"]["removed_ms"].is_null(),
        "not delivered everywhere: kept {kept}"
    );
    assert!(copy_deletions(&server, &job)?.is_empty());

    // The second destination made and the delivery retried: both hold it,
    // and the policy deletes the server's copy at once.
    let later = add_local_destination(&server, work.path(), "later")?;
    let (code, retried) = retry_delivery(&server, &job, &name, "later")?;
    assert_eq!(code, 200, "{retried}");
    let delivered = deliveries_in(&server, &job, "delivered", 2)?;
    let key = delivered[0]["key"].as_str().unwrap_or_default().to_owned();
    let deletions = wait_copy_deleted(&server, &job, &cached)?;
    for dir in [&nas, &later] {
        assert_eq!(std::fs::read(dir.join(&key))?, before, "{}", dir.display());
    }
    let record = wait_for("the deletion recorded", Duration::from_secs(10), || {
        let r = file_record(&server, &job, &name).ok()?;
        r["upload"]["removed_ms"].is_u64().then_some(r)
    })?;
    assert_eq!(record["upload"]["state"], "cached", "{record}");
    assert_eq!(deletions.len(), 1, "{deletions:?}");
    let reason = deletions[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("nas, later") && reason.contains("0 h after delivery"),
        "{reason}"
    );
    assert_eq!(deletions[0]["outcome"], "allowed");
    // The take stays uploaded; its file can no longer be fetched from the server.
    let mut olga = server.operator("olga", "admin")?;
    let (_, _, page) = olga.get(&format!("/recordings/{job}"))?;
    assert!(
        page.contains("data-delivery=\"uploaded\"") && page.contains("data-removed=\"true\""),
        "{page}"
    );
    let (code, _, said) = olga.get(&format!("/recordings/{job}/files/{name}"))?;
    assert_eq!(code, 410, "{said}");
    {
        use rakkr_hil_tests::browser::{Browser, Look};
        let browser = Browser::start(work.path(), &server.url(""), Look::DESKTOP)?;
        browser.log_in("olga", OPERATOR_PASSWORD)?;
        browser.goto(&format!("/recordings/{job}"))?;
        browser.wait_css("[data-removed]", Duration::from_secs(10))?;
        browser.screenshot("recording-server-copy-deleted-1280-light")?;
    }
    // A restart neither queues deliveries for it nor deletes anything again.
    let server = server.restart(work.path(), false)?;
    wait_for("the server back", Duration::from_secs(20), || {
        server.get_json("/api/v1/deliveries").ok()
    })?;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(copy_deletions(&server, &job)?.len(), 1);
    assert_eq!(deliveries_in(&server, &job, "delivered", 2)?.len(), 2);
    Ok(())
}

#[test]
fn past_its_cap_the_server_deletes_its_oldest_delivered_copies_and_never_undelivered_ones()
-> Result<()> {
    let work = tempfile::tempdir()?;
    // Takes by hand go to `nas` and `later` (missing at first); a cap of
    // 1 MB, which one take of noise passes.
    let server = configured_server(
        work.path(),
        "[uploads]\ncache_max_mb = 1\n[delivery]\ndefault = \"archive\"\n\
         [delivery.policies.archive]\ndestinations = [\"nas\", \"later\"]\nretry_budget_h = 1\n",
    )?;
    add_local_destination(&server, work.path(), "nas")?;
    let (_agent, _) = uploading_agent(work.path(), &server, "sr-b", "noise", "")?;
    let first = take(&server, "sr-b", 4)?;
    let second = take(&server, "sr-b", 4)?;
    let cached = |job: &str| {
        work.path()
            .join("data/recordings/sr-b")
            .join(job)
            .join(format!("{job}.flac"))
    };
    wait_for("both takes on the server", Duration::from_secs(60), || {
        (cached(&first).exists() && cached(&second).exists()).then_some(())
    })?;
    let bytes =
        std::fs::metadata(cached(&first))?.len() + std::fs::metadata(cached(&second))?.len();
    assert!(
        bytes > 2 << 20,
        "two takes pass the cap twice over: {bytes}"
    );
    // Over the cap, but neither take is at every destination: both stay, and
    // the metrics say by how much the cap is passed.
    let over = wait_for("the excess reported", Duration::from_secs(30), || {
        let v = server.metric("rakkr_server_copies_over_cap_bytes").ok()?;
        (v + (1 << 20) == bytes).then_some(v)
    })?;
    assert!(over > 1 << 20, "{over} of {bytes}");
    assert!(cached(&first).exists() && cached(&second).exists());

    // Once `later` exists and both are retried, the oldest goes first; then
    // the second, since one take alone passes the cap.
    add_local_destination(&server, work.path(), "later")?;
    let (code, retried) = retry_delivery(&server, &first, &format!("{first}.flac"), "later")?;
    assert_eq!(code, 200, "{retried}");
    deliveries_in(&server, &first, "delivered", 2)?;
    let deletions = wait_copy_deleted(&server, &first, &cached(&first))?;
    assert!(cached(&second).exists(), "not everywhere yet: kept");
    let reason = deletions[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("cache_max_mb (1 MB)"), "{reason}");
    let (code, _) = retry_delivery(&server, &second, &format!("{second}.flac"), "later")?;
    assert_eq!(code, 200);
    deliveries_in(&server, &second, "delivered", 2)?;
    // Counted before it is audited.
    wait_copy_deleted(&server, &second, &cached(&second))?;
    assert_eq!(server.metric("rakkr_server_copies_removed_total")?, 2);
    assert_eq!(server.metric("rakkr_server_copies_over_cap_bytes")?, 0);
    Ok(())
}

/// The parts of open multipart uploads, which s3s-fs keeps in its root.
fn upload_parts(s3: &S3Server) -> Vec<std::path::PathBuf> {
    files_ending(&s3.root, "")
        .into_iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".upload_id-"))
        })
        .collect()
}

/// A server whose default policy sends every file to S3 (s3s-fs), a job of
/// `node`'s, and a FLAC file of 170 s of noise: more than one 16 MiB part.
fn large_take_for_s3(work: &Path, node: &str) -> Result<(Server, S3Server, String, Vec<u8>)> {
    let s3 = S3Server::start(work, &["takes"])?;
    let server = configured_server(
        work,
        "[delivery]\ndefault = \"s3\"\n[delivery.policies.s3]\ndestinations = [\"s3\"]\n",
    )?;
    let (code, made) = server.post(
        "/api/v1/destinations",
        &s3_destination(&s3, Some(&s3.secret_key)),
    )?;
    anyhow::ensure!(code == 200, "destination not made ({code}): {made}");
    let (job, _) = recorded_take(&server, work, node)?;
    let source = work.join("noise.flac");
    rakkr_hil_tests::bench::noise_flac(&source, 170, 2)?;
    let bytes = std::fs::read(&source)?;
    anyhow::ensure!(bytes.len() > 16 << 20, "only {} bytes", bytes.len());
    Ok((server, s3, job, bytes))
}

/// Complete the upload of `bytes` as `name` (the job's is in the name),
/// then wait until it is delivered; its delivery.
fn confirmed_and_delivered(
    node: &NodeClient,
    server: &Server,
    name: &str,
    bytes: &[u8],
) -> Result<Value> {
    let job = name.split('.').next().unwrap_or_default().parse()?;
    let confirmed = node.complete(&complete_path(job, name), &sha256_hex(bytes))?;
    anyhow::ensure!(
        confirmed.status().as_u16() == 200,
        "not confirmed: {:?}",
        confirmed.text()
    );
    wait_for("the S3 delivery", Duration::from_secs(30), || {
        let all = server.get_json("/api/v1/deliveries?state=delivered").ok()?;
        all.as_array()?.iter().find(|d| d["name"] == name).cloned()
    })
}

/// Send `bytes` as `name` of `job` in 8 MiB chunks, each taken; then the
/// server has started `early` S3 copies in all.
fn send_in_chunks(
    node: &NodeClient,
    server: &Server,
    job: &str,
    name: &str,
    bytes: &[u8],
    early: u64,
) -> Result<()> {
    let path = file_path(job.parse()?, name);
    for (i, chunk) in bytes.chunks(8 << 20).enumerate() {
        let offset = (i * (8 << 20)) as u64;
        let r = node.patch(&path, offset, bytes.len() as u64, chunk, chunk)?;
        anyhow::ensure!(
            r.status().as_u16() == 204,
            "chunk at {offset}: {:?}",
            r.text()
        );
    }
    let started = server.metric("rakkr_delivery_early_copies_started_total")?;
    anyhow::ensure!(started == early, "{started} early copies, not {early}");
    Ok(())
}

#[test]
fn a_large_take_goes_to_s3_while_it_arrives_and_a_discarded_one_leaves_nothing() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (server, s3, job, bytes) = large_take_for_s3(work.path(), "early-a")?;
    let node = NodeClient::new(&server, "early-a")?;
    let name = format!("{job}.0002.flac");
    let done = complete_path(job.parse()?, &name);

    // All of it arrives, but its digest is not the one claimed: the copy
    // that went to S3 meanwhile is aborted, and the bucket shows nothing.
    send_in_chunks(&node, &server, &job, &name, &bytes, 1)?;
    let parts = || upload_parts(&s3);
    wait_for(
        "both parts in S3 before the completion",
        Duration::from_secs(20),
        || (parts().len() == 2).then_some(()),
    )?;
    let wrong = node.complete(&done, &sha256_hex(b"other"))?;
    assert_eq!(wrong.status().as_u16(), 409);
    let bucket = s3.root.join("takes");
    wait_for(
        "the aborted upload's parts gone",
        Duration::from_secs(20),
        || parts().is_empty().then_some(()),
    )?;
    assert!(
        files_ending(&bucket, ".flac").is_empty(),
        "{:?}",
        files_ending(&bucket, ".flac")
    );

    // Sent again: its parts travel while it arrives; the runner completes
    // the upload after the server verified the file.
    send_in_chunks(&node, &server, &job, &name, &bytes, 2)?;
    let delivered = confirmed_and_delivered(&node, &server, &name, &bytes)?;
    assert_eq!(
        server.metric("rakkr_delivery_early_copies_delivered_total")?,
        1
    );
    let key = delivered["key"].as_str().unwrap_or_default();
    let object = bucket.join("site-1").join(key);
    assert_eq!(
        std::fs::read(&object)?,
        bytes,
        "byte-identical in the bucket"
    );
    flac_test(&object)?;
    // Nothing else there: the aborted upload left no object or part.
    assert_eq!(files_ending(&bucket, ".flac"), [object]);
    assert!(parts().is_empty(), "{:?}", parts());
    Ok(())
}

#[test]
fn an_early_copy_aborts_when_the_server_stops_restarts_with_it_and_gives_way_when_it_no_longer_fits()
-> Result<()> {
    let work = tempfile::tempdir()?;
    let (server, s3, job, bytes) = large_take_for_s3(work.path(), "early-b")?;
    let node = NodeClient::new(&server, "early-b")?;
    let name = format!("{job}.0002.flac");
    let id = job.parse()?;
    let path = file_path(id, &name);
    let length = bytes.len() as u64;
    let chunk = 8 << 20;

    // Two chunks: the first part goes to S3. Then the server stops; its
    // copy aborts, and the part is gone from the bucket's server.
    for at in [0, chunk] {
        let piece = &bytes[at..at + chunk];
        let r = node.patch(&path, at as u64, length, piece, piece)?;
        assert_eq!(r.status().as_u16(), 204);
    }
    assert_eq!(
        server.metric("rakkr_delivery_early_copies_started_total")?,
        1
    );
    wait_for("the first part in S3", Duration::from_secs(20), || {
        (upload_parts(&s3).len() == 1).then_some(())
    })?;
    let server = server.restart(work.path(), false)?;
    assert!(upload_parts(&s3).is_empty(), "{:?}", upload_parts(&s3));
    // The restarted server starts a copy at the next chunk, from the
    // file's first byte.
    let r = node.patch(
        &path,
        2 * chunk as u64,
        length,
        &bytes[2 * chunk..],
        &bytes[2 * chunk..],
    )?;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        server.metric("rakkr_delivery_early_copies_started_total")?,
        1
    );
    // The destination changes before the file is confirmed: the copy that
    // went to the old prefix gives way, and the runner copies the file to
    // the new one from the server's copy.
    let mut moved = s3_destination(&s3, None);
    moved["prefix"] = json!("site-2");
    let (code, made) = server.post("/api/v1/destinations", &moved)?;
    assert_eq!(code, 200, "{made}");
    let delivered = confirmed_and_delivered(&node, &server, &name, &bytes)?;
    assert_eq!(
        server.metric("rakkr_delivery_early_copies_delivered_total")?,
        0
    );
    let key = delivered["key"].as_str().unwrap_or_default();
    let bucket = s3.root.join("takes");
    assert_eq!(std::fs::read(bucket.join("site-2").join(key))?, bytes);
    wait_for(
        "the dropped copy's parts gone",
        Duration::from_secs(20),
        || upload_parts(&s3).is_empty().then_some(()),
    )?;
    assert!(
        !bucket.join("site-1").join(key).exists(),
        "nothing completed under the old prefix"
    );
    Ok(())
}
