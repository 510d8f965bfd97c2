//! Deleting a recording (decision 0020) against a real server and real
//! agents: the take goes from the appliance and the server, its deliveries
//! not yet made are cancelled and archive copies stay and are listed; a node
//! offline through a server restart deletes its copy when it comes back; a
//! delete in the middle of an upload stops it; a job lost while its node was
//! down is deleted with the take the node recovers; a second delete changes
//! nothing; a running job and roles without `recordings.delete` are refused.

use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;
use serde_json::{Value, json};

/// Audit records about `needle` by `actor`, newest first.
fn audit(server: &Server, actor: &str, needle: &str) -> Result<Vec<Value>> {
    let found = server.get_json(&format!(
        "/api/v1/audit/search?actor={actor}&q={needle}&limit=50"
    ))?;
    Ok(found["records"].as_array().cloned().unwrap_or_default())
}

/// Wait until `job`'s node reported its copy deleted; the job.
fn wait_node_deleted(server: &Server, job: &str, limit: Duration) -> Result<Value> {
    wait_for("the node to report the take deleted", limit, || {
        let j = server.get_json(&format!("/api/v1/jobs/{job}")).ok()?;
        j["deleted"]["node_deleted_ms"].is_u64().then_some(j)
    })
}

fn listed(server: &Server, query: &str) -> Result<Vec<String>> {
    let list = server.get_json(&format!("/api/v1/recordings?{query}"))?;
    Ok(list
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn a_deleted_recording_goes_from_the_appliance_and_the_server_and_is_audited() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    // The appliance keeps its copy after upload, as many sites want.
    let server = Server::start_configured(
        work.path(),
        &data,
        &[],
        "[retention]\ndefault = \"keep\"\n[retention.policies.keep.appliance]\n\
         delete_confirmed = false\nmin_free_mb = 1\n",
    )?;
    let (agent, recordings) = uploading_agent(work.path(), &server, "del-a", "demo", "")?;
    agent.proc.wait_log_line(
        &["rules from the server", "retention", "policy=keep"],
        Duration::from_secs(20),
    )?;
    let job = take(&server, "del-a", 2)?;
    let name = format!("{job}.flac");
    let (on_node, cached) = (
        recordings.join(&name),
        data.join("recordings/del-a").join(&job).join(&name),
    );
    wait_for("the take on the server", Duration::from_secs(30), || {
        let files = server
            .get_json(&format!("/api/v1/recordings/{job}/files"))
            .ok()?;
        (cached.exists() && files[0]["upload"]["state"] == "cached").then_some(())
    })?;
    assert!(on_node.exists());

    // A job that still records is refused: stop or cancel it first.
    let (code, running) = server.post(
        "/api/v1/jobs",
        &json!({"node": "del-a", "channels": "1", "duration_s": 60}),
    )?;
    assert_eq!(code, 201, "{running}");
    let running = running["id"].as_str().unwrap_or_default().to_owned();
    wait_job(&server, &running, "running", Duration::from_secs(20))?;
    let (code, refused) =
        server.post(&format!("/api/v1/recordings/{running}/delete"), &json!({}))?;
    assert_eq!(code, 409, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains("stop or cancel")),
        "{refused}"
    );
    let (code, _) = server.post(
        &format!("/api/v1/jobs/{running}/stop"),
        &json!({"cancel": true}),
    )?;
    assert_eq!(code, 200);
    wait_job(&server, &running, "cancelled", Duration::from_secs(20))?;

    let (code, deleted) = server.post(
        &format!("/api/v1/recordings/{job}/delete"),
        &json!({"reason": "a sound check, not the concert"}),
    )?;
    assert_eq!(code, 200, "{deleted}");
    assert_eq!(
        deleted["deleted"]["reason"], "a sound check, not the concert",
        "{deleted}"
    );
    assert_eq!(deleted["state"], "completed", "its history stays");
    // The server's copy is gone when the answer comes.
    assert!(!cached.exists(), "the server's copy is deleted at once");
    let files = server.get_json(&format!("/api/v1/recordings/{job}/files"))?;
    assert!(files[0]["upload"]["removed_ms"].is_u64(), "{files}");
    let (code, _) = server.get_api(&format!("/api/v1/recordings/{job}/files/{name}"))?;
    assert_eq!(code, 410, "a download says it was deleted");
    // The appliance deletes its copy and says so.
    let after = wait_node_deleted(&server, &job, Duration::from_secs(30))?;
    assert!(!on_node.exists(), "the appliance's copy is deleted");
    agent.proc.wait_log(
        "deleted the take as the server ordered",
        Duration::from_secs(5),
    )?;
    assert_eq!(server.metric("rakkr_takes_deleted_on_nodes_total")?, 1);

    // The library hides it unless asked for deleted recordings.
    assert!(!listed(&server, "node=del-a")?.contains(&job));
    assert_eq!(
        listed(&server, "node=del-a&state=deleted")?,
        std::slice::from_ref(&job)
    );

    // Audited: the request with the job before and after, the server's copy
    // (with its checksum), and the node's deletion.
    let request = audit(&server, "", &format!("job:{job}"))?;
    let request = request
        .iter()
        .find(|r| r["action"] == "POST /api/v1/recordings/{id}/delete")
        .cloned()
        .unwrap_or_default();
    assert_eq!(request["outcome"], "allowed", "{request}");
    assert_eq!(request["permission"], "recordings.delete", "{request}");
    assert!(request["before"]["deleted"].is_null(), "{request}");
    assert_eq!(
        request["after"]["deleted"]["reason"], "a sound check, not the concert",
        "{request}"
    );
    assert_eq!(request["after"]["files"], json!([name]), "{request}");
    let copy = audit(&server, "", "delete server copy")?;
    let copy: Vec<_> = copy
        .iter()
        .filter(|r| r["target"] == format!("recording:{job}/{name}"))
        .collect();
    assert_eq!(copy.len(), 1, "{copy:?}");
    assert_eq!(copy[0]["outcome"], "allowed");
    assert_eq!(copy[0]["before"]["sha256"].as_str().map(str::len), Some(64));
    let on_node_audit = audit(&server, "node:del-a", "delete take on node")?;
    assert_eq!(on_node_audit.len(), 1, "{on_node_audit:?}");

    // A second delete answers the same and changes nothing.
    let (code, again) = server.post(&format!("/api/v1/recordings/{job}/delete"), &json!({}))?;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again, after);
    assert_eq!(audit(&server, "", "delete server copy")?.len(), copy.len());
    assert_eq!(server.metric("rakkr_takes_deleted_on_nodes_total")?, 1);
    // Bad input is refused with the reason and deletes nothing.
    let other = take(&server, "del-a", 1)?;
    let (code, bad) = server.post(
        &format!("/api/v1/recordings/{other}/delete"),
        &json!({"reason": "x".repeat(501)}),
    )?;
    assert_eq!(code, 422, "{bad}");
    let (code, bad) = server.post(
        &format!("/api/v1/recordings/{other}/delete"),
        &json!({"why": "typo"}),
    )?;
    assert_eq!(code, 422, "{bad}");
    assert!(
        server.get_json(&format!("/api/v1/jobs/{other}"))?["deleted"].is_null(),
        "nothing was deleted"
    );
    Ok(())
}

#[test]
fn a_node_offline_through_a_server_restart_deletes_the_take_when_it_comes_back() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    // No uploads: the take is only on the appliance.
    let (mut agent, recordings) = job_agent(work.path(), &server, "del-b", 2, "")?;
    wait_online(&server, "del-b")?;
    let job = take(&server, "del-b", 2)?;
    let on_node = recordings.join(format!("{job}.flac"));
    assert!(on_node.exists());
    agent.kill()?;
    wait_for("del-b offline", Duration::from_secs(20), || {
        (server.presence("del-b").as_deref() == Some("offline")).then_some(())
    })?;

    let (code, deleted) = server.post(&format!("/api/v1/recordings/{job}/delete"), &json!({}))?;
    assert_eq!(code, 200, "{deleted}");
    assert!(deleted["deleted"]["node_deleted_ms"].is_null());
    // The order outlives a server restart, and the take the node's absence.
    let server = server.restart(work.path(), false)?;
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        on_node.exists(),
        "nothing reached the node while it was away"
    );
    let page = server.get_json(&format!("/api/v1/jobs/{job}"))?;
    assert!(page["deleted"]["node_deleted_ms"].is_null(), "{page}");

    let agent = agent.start_again(work.path())?;
    wait_node_deleted(&server, &job, Duration::from_secs(40))?;
    assert!(!on_node.exists(), "deleted once the node came back");
    // Another take on the node is untouched.
    let kept = take(&server, "del-b", 1)?;
    assert!(recordings.join(format!("{kept}.flac")).exists());
    drop(agent);
    Ok(())
}

#[test]
fn a_delete_during_an_upload_stops_it_and_the_appliance_lets_the_file_go() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    // Noise does not compress: about 3.5 MB at 50 kB/s is over a minute.
    let (agent, recordings) = uploading_agent(
        work.path(),
        &server,
        "del-c",
        "noise",
        "chunk_mib = 1\nmax_kbps = 400\n",
    )?;
    let job = take(&server, "del-c", 12)?;
    let name = format!("{job}.flac");
    let staged = data.join("uploads").join(&job).join(&name);
    wait_for("the upload under way", Duration::from_secs(30), || {
        let files = server
            .get_json(&format!("/api/v1/recordings/{job}/files"))
            .ok()?;
        (files[0]["upload"]["state"] == "receiving"
            && files[0]["upload"]["offset"].as_u64() > Some(0))
        .then_some(())
    })?;
    assert!(staged.exists());

    let (code, deleted) = server.post(&format!("/api/v1/recordings/{job}/delete"), &json!({}))?;
    assert_eq!(code, 200, "{deleted}");
    assert!(!staged.exists(), "the part received is deleted");
    wait_node_deleted(&server, &job, Duration::from_secs(40))?;
    assert!(!recordings.join(&name).exists());
    // The upload never completes, and nothing is left to send.
    std::thread::sleep(Duration::from_secs(3));
    let files = server.get_json(&format!("/api/v1/recordings/{job}/files"))?;
    assert_eq!(files[0]["upload"]["state"], "receiving", "{files}");
    assert!(files[0]["upload"]["removed_ms"].is_u64(), "{files}");
    assert!(!data.join("recordings/del-c").join(&job).exists());
    let log = agent.proc.stderr_text();
    assert!(
        !log.contains("upload_failing"),
        "a deletion is not a failure: {log}"
    );
    Ok(())
}

#[test]
fn a_delete_after_delivery_lists_the_archive_copies_and_cancels_the_rest() -> Result<()> {
    let work = tempfile::tempdir()?;
    // `later` is not a destination: its delivery keeps failing and retrying.
    let server = Server::start_configured(
        work.path(),
        &work.path().join("data"),
        &[],
        "[delivery]\ndefault = \"archive\"\n[delivery.policies.archive]\n\
         destinations = [\"nas\", \"later\"]\nretry_budget_h = 1\n",
    )?;
    let nas = work.path().join("nas");
    let (code, made) = server.post(
        "/api/v1/destinations",
        &json!({"name": "nas", "kind": "local", "path": nas.display().to_string()}),
    )?;
    assert_eq!(code, 200, "{made}");
    let (_agent, _) = uploading_agent(work.path(), &server, "del-d", "demo", "")?;
    let job = take(&server, "del-d", 2)?;
    let delivered = wait_for("the copy at nas", Duration::from_secs(40), || {
        let all = server.get_json("/api/v1/deliveries").ok()?;
        let mine: Vec<Value> = all
            .as_array()?
            .iter()
            .filter(|d| d["job"] == job.as_str())
            .cloned()
            .collect();
        let nas = mine.iter().find(|d| d["destination"] == "nas")?;
        let later = mine.iter().find(|d| d["destination"] == "later")?;
        (nas["state"] == "delivered" && later["attempts"].as_u64() >= Some(1)).then(|| nas.clone())
    })?;
    let archived = nas.join(delivered["key"].as_str().unwrap_or_default());
    assert!(archived.exists(), "{}", archived.display());

    let mut admin = server.operator("ada", "admin")?;
    let (code, _, page) = admin.get(&format!("/recordings/{job}"))?;
    assert_eq!(code, 200);
    assert!(
        page.contains("Delete this recording"),
        "an admin is offered it"
    );
    // Without the typed confirmation nothing is deleted.
    let csrf = admin.csrf.clone();
    let (code, _, page) = admin.post_form(
        &format!("/recordings/{job}/delete"),
        &[("csrf", &csrf), ("confirm", "yes"), ("reason", "")],
    )?;
    assert_eq!(code, 422);
    assert!(page.contains("to confirm: nothing was deleted"), "{page}");
    assert!(server.get_json(&format!("/api/v1/jobs/{job}"))?["deleted"].is_null());
    // In a browser, by keyboard: the reason, the typed word, Enter.
    {
        use rakkr_hil_tests::browser::{Browser, ENTER, Look};
        let browser = Browser::start(work.path(), &server.url(""), Look::DESKTOP)?;
        browser.log_in("ada", OPERATOR_PASSWORD)?;
        browser.goto(&format!("/recordings/{job}"))?;
        browser.wait_css("form.delete-recording", Duration::from_secs(10))?;
        browser.screenshot("recording-delete-form-1280-light")?;
        browser.fill(
            "form.delete-recording input[name=reason]",
            "recorded by mistake",
        )?;
        browser.fill("form.delete-recording input[name=confirm]", "Delete")?;
        browser.press(ENTER)?;
        browser.wait_css(".panel.deleted", Duration::from_secs(10))?;
        assert_eq!(browser.path()?, format!("/recordings/{job}"));
        browser.screenshot("recording-deleted-1280-light")?;
        let phone = Browser::start(work.path(), &server.url(""), Look::PHONE_DARK)?;
        phone.log_in("ada", OPERATOR_PASSWORD)?;
        phone.goto(&format!("/recordings/{job}"))?;
        phone.wait_css(".panel.deleted", Duration::from_secs(10))?;
        assert!(!phone.overflows_horizontally()?, "the page fits a phone");
        phone.screenshot("recording-deleted-390-dark")?;
    }
    // The archive copy stays and the page says where; the rest is cancelled.
    assert!(archived.exists(), "destinations are archives");
    let all = server.get_json("/api/v1/deliveries?state=cancelled")?;
    let cancelled: Vec<&Value> = all
        .as_array()
        .map(|a| a.iter().filter(|d| d["job"] == job.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(cancelled.len(), 1, "{all}");
    assert_eq!(cancelled[0]["destination"], "later");
    std::thread::sleep(Duration::from_secs(2));
    let later = server.get_json("/api/v1/deliveries?destination=later")?;
    assert!(
        later
            .as_array()
            .is_some_and(|a| a.iter().all(|d| d["state"] == "cancelled")),
        "a cancelled delivery is not tried again: {later}"
    );
    wait_node_deleted(&server, &job, Duration::from_secs(30))?;
    let (code, _, page) = admin.get(&format!("/recordings/{job}"))?;
    assert_eq!(code, 200);
    for said in [
        "Deleted by",
        "user:ada",
        "recorded by mistake",
        "deleted its copy at",
        "archives and remain",
        delivered["key"].as_str().unwrap_or("?"),
    ] {
        assert!(page.contains(said), "the page says {said:?}: {page}");
    }
    assert!(!page.contains("Delete this recording"), "not offered twice");
    Ok(())
}

#[test]
fn only_roles_with_recordings_delete_are_offered_the_form_and_a_forged_request_is_refused()
-> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let (_agent, recordings) = job_agent(work.path(), &server, "del-e", 2, "")?;
    wait_online(&server, "del-e")?;
    let job = take(&server, "del-e", 1)?;
    for role in ["operator", "viewer", "technician"] {
        let mut op = server.operator(&format!("{role}-1"), role)?;
        let (code, _, page) = op.get(&format!("/recordings/{job}"))?;
        assert_eq!(code, 200);
        assert!(
            !page.contains("Delete this recording"),
            "{role} sees no form"
        );
        let csrf = op.csrf.clone();
        let (code, _, _) = op.post_form(
            &format!("/recordings/{job}/delete"),
            &[("csrf", &csrf), ("confirm", "delete"), ("reason", "")],
        )?;
        assert_eq!(code, 403, "{role} is refused");
        let denied = audit(&server, &format!("user:{role}-1"), "delete")?;
        assert!(
            denied
                .iter()
                .any(|r| r["outcome"] == "denied" && r["permission"] == "recordings.delete"),
            "{role}'s attempt is audited: {denied:?}"
        );
    }
    // An owner's form without its CSRF token is refused too.
    let mut owner = server.operator("olive", "owner")?;
    let (code, _, _) = owner.post_form(
        &format!("/recordings/{job}/delete"),
        &[("confirm", "delete"), ("reason", "")],
    )?;
    assert_eq!(code, 403);
    let forged = audit(&server, "user:olive", "delete")?;
    assert!(
        forged.iter().any(|r| r["outcome"] == "denied"
            && r["action"] == "POST /recordings/{id}/delete"
            && r["reason"].as_str().is_some_and(|w| w.contains("CSRF"))),
        "the forged request is audited: {forged:?}"
    );
    assert!(server.get_json(&format!("/api/v1/jobs/{job}"))?["deleted"].is_null());
    assert!(recordings.join(format!("{job}.flac")).exists());
    Ok(())
}

/// A job lost while its node was down (killed mid-take) can be deleted; the
/// node recovers the take when it comes back and reports it, the server
/// keeps the recording deleted and takes none of it, and the node deletes
/// the recovered take as ordered.
#[test]
fn a_lost_job_deleted_while_its_node_was_down_goes_when_the_node_recovers_its_take() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start_with_env(
        work.path(),
        &data,
        &[("RAKKR_SERVER_JOBS__LEASE_MS", "3000")],
    )?;
    let (mut agent, recordings) = uploading_agent(work.path(), &server, "del-f", "demo", "")?;
    let (code, job) = server.post(
        "/api/v1/jobs",
        &json!({"node": "del-f", "channels": "1,2", "duration_s": 60}),
    )?;
    assert_eq!(code, 201, "{job}");
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    wait_job(&server, &id, "running", Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_secs(2));
    agent.kill()?;
    let part = recordings.join(format!("{id}.flac.part"));
    assert!(part.exists());
    wait_job(&server, &id, "lost", Duration::from_secs(15))?;
    let (code, deleted) = server.post(&format!("/api/v1/recordings/{id}/delete"), &json!({}))?;
    assert_eq!(code, 200, "{deleted}");

    let _agent = agent.start_again(work.path())?;
    let job = wait_node_deleted(&server, &id, Duration::from_secs(40))?;
    for left in [part, recordings.join(format!("{id}.flac"))] {
        assert!(!left.exists(), "{} is deleted", left.display());
    }
    // The recovered report is attached; the recording stays deleted.
    let job = wait_for("the recovered report", Duration::from_secs(20), || {
        let j = server.get_json(&format!("/api/v1/jobs/{id}")).ok()?;
        (j["state"] == "completed").then_some(j)
    })
    .map_err(|e| anyhow::anyhow!("{e}; last: {job}"))?;
    assert_eq!(job["recording"]["recovered"], true, "{job}");
    assert!(job["deleted"]["node_deleted_ms"].is_u64(), "{job}");
    assert!(!data.join("recordings/del-f").join(&id).exists());
    assert!(!data.join("uploads").join(&id).exists());
    Ok(())
}
