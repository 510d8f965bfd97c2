//! Schedules end to end through the JSON API: a schedule made over HTTP
//! starts its recording on a real agent at its window and stops at its end;
//! bad schedules are refused with the reason; skip-next, run-now, edits and
//! deletion work and are audited.

use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;
use serde_json::{Value, json};

fn schedule(node: &str, start: &str, end: &str) -> Value {
    json!({
        "name": "Soundcheck",
        "node": node,
        "job": {"channels": "1,2", "profile": {"codec": "flac"}},
        "timing": {
            "recurrence": {"mode": "daily"},
            "time_zone": "UTC",
            "window": {"start": start, "end": end}
        },
        "tags": ["soundcheck"],
        "name_template": "{schedule} {date} {time}",
        "folder_template": "{node}/{year}/{schedule}"
    })
}

#[test]
fn a_schedule_made_over_the_api_records_its_window_on_the_appliance() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let (_agent, recordings) = job_agent(work.path(), &server, "sched-a", 2, "")?;
    wait_online(&server, "sched-a")?;

    // A window that opens in 4 s and lasts 4 s.
    let (start, end) = (utc_time_in(4), utc_time_in(8));
    let (code, created) = server.post("/api/v1/schedules", &schedule("sched-a", &start, &end))?;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["revision"], 1);
    assert!(created["next"]["key"].is_string(), "{created}");

    let job = wait_for("the scheduled job", Duration::from_secs(20), || {
        let jobs = server.get_json("/api/v1/jobs?node=sched-a").ok()?;
        jobs.as_array()?
            .iter()
            .find(|j| j["scheduled"]["schedule"] == id.as_str())
            .cloned()
    })?;
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["tags"], json!(["soundcheck"]));
    let title = job["title"].as_str().unwrap_or_default();
    assert!(
        title.starts_with("Soundcheck 20") && title.len() == "Soundcheck 2026-11-30 0600".len(),
        "{title:?}"
    );
    assert_eq!(
        job["folder"]
            .as_str()
            .unwrap_or_default()
            .split('/')
            .count(),
        3,
        "{job}"
    );
    let done = wait_job(&server, &job_id, "completed", Duration::from_secs(30))?;
    let frames = done["recording"]["frames"].as_u64().unwrap();
    // Four seconds at 48 kHz, give or take the second the runner ticks in.
    assert!(
        (3 * 48_000..=5 * 48_000).contains(&frames),
        "{frames} frames: {done}"
    );
    flac_test(&recordings.join(format!("{job_id}.flac")))?;

    // The detail lists upcoming occurrences and this one's job.
    let detail = server.get_json(&format!("/api/v1/schedules/{id}"))?;
    assert_eq!(detail["history"][0]["jobs"], json!([job_id]), "{detail}");
    assert!(
        !detail["upcoming"].as_array().unwrap().is_empty(),
        "{detail}"
    );
    // Still exactly one job for the occurrence after the window.
    std::thread::sleep(Duration::from_secs(2));
    let jobs = server.get_json("/api/v1/jobs?node=sched-a")?;
    let scheduled = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["scheduled"]["schedule"] == id.as_str())
        .count();
    assert_eq!(scheduled, 1);

    // Skip-next adds tomorrow's date; run-now records now for the window's length.
    let (code, skipped) = server.post(&format!("/api/v1/schedules/{id}/skip-next"), &json!({}))?;
    assert_eq!(code, 200, "{skipped}");
    assert_eq!(skipped["revision"], 2);
    assert_eq!(
        skipped["spec"]["timing"]["skip"].as_array().unwrap().len(),
        1
    );
    assert_ne!(skipped["next"]["key"], skipped["spec"]["timing"]["skip"][0]);
    let (code, run) = server.post(&format!("/api/v1/schedules/{id}/run-now"), &json!({}))?;
    assert_eq!(code, 201, "{run}");
    assert_eq!(run["spec"]["duration_s"], 4);
    wait_job(
        &server,
        run["id"].as_str().unwrap(),
        "completed",
        Duration::from_secs(30),
    )?;

    // Disable by replacing the spec; run-now is refused then.
    let mut disabled = schedule("sched-a", &start, &end);
    disabled["enabled"] = json!(false);
    let (code, body) = server.post(&format!("/api/v1/schedules/{id}"), &disabled)?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["next"], Value::Null);
    let (code, body) = server.post(&format!("/api/v1/schedules/{id}/run-now"), &json!({}))?;
    assert_eq!(code, 409, "{body}");

    // Every change is audited with what it changed.
    let audit = server.get_json("/api/v1/audit/search?q=schedule&limit=50")?;
    let records = audit["records"].as_array().unwrap();
    let target = format!("schedule:{id}");
    let changes: Vec<&Value> = records
        .iter()
        .filter(|r| r["target"] == target.as_str())
        .collect();
    assert!(changes.len() >= 3, "{audit}");
    assert!(
        changes
            .iter()
            .any(|r| r["before"].is_null() && r["after"]["spec"]["name"] == "Soundcheck"),
        "creation with its after: {audit}"
    );
    assert!(
        records.iter().any(|r| r["actor"] == "runner:schedule"),
        "the runner's job: {audit}"
    );

    let (code, gone) = server.post(&format!("/api/v1/schedules/{id}/delete"), &json!({}))?;
    assert_eq!(code, 200, "{gone}");
    let (code, _) = server.get_api(&format!("/api/v1/schedules/{id}"))?;
    assert_eq!(code, 404);
    Ok(())
}

#[test]
fn bad_schedules_are_refused_with_the_reason() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let (_agent, _) = job_agent(work.path(), &server, "sched-b", 2, "")?;
    wait_online(&server, "sched-b")?;
    let good = schedule("sched-b", "10:00", "11:00");
    let with = |path: &[&str], value: Value| {
        let mut v = good.clone();
        let mut at = &mut v;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = value;
        v
    };
    for (body, code, reason) in [
        (
            with(&["timing", "time_zone"], json!("Mars/Olympus")),
            422,
            "unknown time zone",
        ),
        (
            with(&["timing", "window", "start"], json!("25:00")),
            422,
            "not a time of day",
        ),
        (
            with(
                &["timing", "recurrence"],
                json!({"mode": "weekly", "days": []}),
            ),
            422,
            "at least one day",
        ),
        (
            with(&["timing", "start_erly_s"], json!(60)),
            422,
            "unknown field",
        ),
        (with(&["job", "channels"], json!("7")), 422, "channel"),
        (with(&["job", "duration_s"], json!(60)), 422, "duration_s"),
        (with(&["node"], json!("nobody")), 422, "not known"),
        (with(&["name"], json!("")), 422, "name"),
        (
            with(&["folder_template"], json!("{node}/../{date}")),
            422,
            "folder_template: a folder has no empty, '.' or '..' parts",
        ),
        (
            with(&["name_template"], json!("{when}")),
            422,
            "name_template: {when} is not a placeholder",
        ),
    ] {
        let (got, problem) = server.post("/api/v1/schedules", &body)?;
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert_eq!(got, code, "{body}: {problem}");
        assert!(detail.contains(reason), "{reason}: {detail}");
    }
    assert!(
        server
            .get_json("/api/v1/schedules")?
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (code, _) = server.get_api("/api/v1/schedules/not-an-id")?;
    assert_eq!(code, 404);
    Ok(())
}

/// The recordings in `dir` (finished takes, not `.part` files).
fn takes_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut takes: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "flac"))
                .collect()
        })
        .unwrap_or_default();
    takes.sort();
    takes
}

/// The jobs the server has for schedule `id`.
fn jobs_of(server: &Server, node: &str, id: &str) -> Result<Vec<Value>> {
    let jobs = server.get_json(&format!("/api/v1/jobs?node={node}"))?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["scheduled"]["schedule"] == id)
        .cloned()
        .collect())
}

/// A server and an agent that has received a schedule whose window opens
/// `opens_in_s` from now and lasts `lasts_s`; the schedule's id.
fn scheduled_agent(
    work: &std::path::Path,
    node: &str,
    opens_in_s: u64,
    lasts_s: u64,
) -> Result<(Server, Agent, std::path::PathBuf, String)> {
    let server = Server::start(work, &work.join("data"))?;
    let (agent, recordings) = job_agent(work, &server, node, 2, "")?;
    wait_online(&server, node)?;
    let (start, end) = (utc_time_in(opens_in_s), utc_time_in(opens_in_s + lasts_s));
    let (code, created) = server.post("/api/v1/schedules", &schedule(node, &start, &end))?;
    anyhow::ensure!(code == 201, "schedule not created ({code}): {created}");
    agent
        .proc
        .wait_log("schedules received", Duration::from_secs(10))?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    Ok((server, agent, recordings, id))
}

#[test]
fn with_the_server_down_the_appliance_records_on_time_and_is_reconciled_once() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (server, agent, recordings, id) = scheduled_agent(work.path(), "sched-off", 6, 5)?;
    // The server (and its embedded broker) goes away before the window opens.
    let stopped = server.stop(false)?;
    let take = wait_for("the appliance's own take", Duration::from_secs(30), || {
        let takes = takes_in(&recordings);
        (takes.len() == 1).then(|| takes[0].clone())
    })?;
    flac_test(&take)?;
    assert!(
        agent
            .proc
            .stderr_text()
            .contains("recording the scheduled occurrence on our own"),
        "{}",
        agent.proc.stderr_text()
    );

    // Back: the appliance reports the take; one job, completed, with it.
    let server = stopped.start(work.path())?;
    let job = wait_for("the reconciled job", Duration::from_secs(30), || {
        let jobs = jobs_of(&server, "sched-off", &id).ok()?;
        (jobs.len() == 1 && jobs[0]["state"] == "completed").then(|| jobs[0].clone())
    })?;
    let frames = job["recording"]["frames"].as_u64().unwrap_or_default();
    assert!(
        (4 * 48_000..=6 * 48_000).contains(&frames),
        "about five seconds: {job}"
    );
    assert_eq!(
        job["recording"]["files"][0]["name"],
        take.file_name().unwrap().to_string_lossy().as_ref()
    );
    assert_eq!(job["tags"], json!(["soundcheck"]));
    // Named by the schedule's templates although the server was away.
    assert!(
        job["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("Soundcheck 20")),
        "{job}"
    );
    assert!(
        job["folder"]
            .as_str()
            .is_some_and(|f| f.starts_with("sched-off/20") && f.ends_with("/Soundcheck")),
        "{job}"
    );
    // And it stays one: the runner finds the occurrence recorded.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(jobs_of(&server, "sched-off", &id)?.len(), 1);
    assert_eq!(takes_in(&recordings).len(), 1);
    let detail = server.get_json(&format!("/api/v1/schedules/{id}"))?;
    assert_eq!(detail["history"][0]["jobs"], json!([job["id"]]), "{detail}");
    Ok(())
}

#[test]
fn a_server_back_mid_window_takes_over_the_appliance_s_take() -> Result<()> {
    let work = tempfile::tempdir()?;
    // A window long enough for the agent's reconnect: the broker was away
    // for the first seconds of the window, so its backoff (0.5 s doubling,
    // full jitter) may wait up to 16 s once the server is back. With 14 s
    // the take could end before the node reconnected, and the job went
    // straight to `completed` (a flaky failure under load).
    let (server, agent, recordings, id) = scheduled_agent(work.path(), "sched-mid", 6, 30)?;
    let stopped = server.stop(false)?;
    agent.proc.wait_log(
        "recording the scheduled occurrence on our own",
        Duration::from_secs(20),
    )?;
    // Back while the take runs: the same job, running under a lease.
    let server = stopped.start(work.path())?;
    let running = wait_for(
        "the job running under a lease",
        Duration::from_secs(20),
        || {
            let jobs = jobs_of(&server, "sched-mid", &id).ok()?;
            (jobs.len() == 1 && jobs[0]["state"] == "running").then(|| jobs[0].clone())
        },
    )
    .map_err(|e| {
        // What the next failure needs to be understood: the jobs, and when
        // the node connected again.
        anyhow::anyhow!(
            "{e}\njobs: {:?}\nagent log:\n{}",
            jobs_of(&server, "sched-mid", &id),
            agent.proc.stderr_text()
        )
    })?;
    assert!(
        running["lease"]["id"].as_u64().unwrap_or(0) > 0,
        "{running}"
    );
    assert!(
        agent
            .proc
            .wait_log("took over the server's lease", Duration::from_secs(20))
            .is_ok()
    );
    let done = wait_job(
        &server,
        running["id"].as_str().unwrap(),
        "completed",
        Duration::from_secs(45),
    )?;
    // One uninterrupted take over the whole window.
    let frames = done["recording"]["frames"].as_u64().unwrap_or_default();
    assert!(
        (29 * 48_000..=31 * 48_000).contains(&frames),
        "about thirty seconds: {done}"
    );
    let takes = takes_in(&recordings);
    assert_eq!(takes.len(), 1, "{takes:?}");
    flac_test(&takes[0])?;
    assert_eq!(jobs_of(&server, "sched-mid", &id)?.len(), 1);
    Ok(())
}

/// Wait for the two jobs of an occurrence whose take a crash cut, both
/// completed: the cut one (`recovered`) and the one that recorded the rest of
/// the window. Checks that together they cover the window but for the
/// restart and that the schedule's history lists both, in order.
fn wait_cut_and_rest(
    server: &Server,
    node: &str,
    id: &str,
    window_s: u64,
) -> Result<(Value, Value)> {
    let jobs = wait_for("the cut take and the rest", Duration::from_secs(40), || {
        let jobs = jobs_of(server, node, id).ok()?;
        (jobs.len() == 2 && jobs.iter().all(|j| j["state"] == "completed")).then_some(jobs)
    })?;
    let cut = jobs
        .iter()
        .find(|j| j["recording"]["recovered"] == true)
        .ok_or_else(|| anyhow::anyhow!("no recovered take: {jobs:?}"))?;
    let rest = jobs
        .iter()
        .find(|j| j["recording"]["recovered"] == false)
        .ok_or_else(|| anyhow::anyhow!("no take after the crash: {jobs:?}"))?;
    let frames = |j: &Value| j["recording"]["frames"].as_u64().unwrap_or_default();
    let start = |j: &Value| j["recording"]["start_unix_ms"].as_u64().unwrap_or_default();
    let cut_end_ms = start(cut) + frames(cut) * 1000 / 48_000;
    assert!(
        frames(cut) >= 2 * 48_000,
        "the cut take kept its audio: {cut}"
    );
    let restart_ms = start(rest).saturating_sub(cut_end_ms);
    assert!(
        restart_ms < 8_000,
        "the rest of the window is recorded soon after the crash ({restart_ms} ms): {cut} {rest}"
    );
    let total_s = (frames(cut) + frames(rest)) / 48_000;
    assert!(
        total_s + 9 >= window_s,
        "the takes cover the window but for the restart ({total_s} of {window_s} s)"
    );
    let detail = server.get_json(&format!("/api/v1/schedules/{id}"))?;
    assert_eq!(
        detail["history"][0]["jobs"],
        json!([cut["id"], rest["id"]]),
        "{detail}"
    );
    Ok((cut.clone(), rest.clone()))
}

#[test]
fn an_appliance_that_crashes_mid_window_records_the_rest_of_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (server, agent, recordings, id) = scheduled_agent(work.path(), "sched-crash", 4, 16)?;
    wait_for("the scheduled take", Duration::from_secs(20), || {
        let jobs = jobs_of(&server, "sched-crash", &id).ok()?;
        (jobs.len() == 1 && jobs[0]["state"] == "running").then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(4));
    let _agent = agent.crash_and_restart(work.path())?;
    // The cut take comes back recovered; the server restarts the occurrence.
    let (_, rest) = wait_cut_and_rest(&server, "sched-crash", &id, 16)?;
    assert!(
        rest["lease"]["id"].as_u64().unwrap_or(0) > 0,
        "offered by the server: {rest}"
    );
    let takes = takes_in(&recordings);
    assert_eq!(takes.len(), 2, "{takes:?}");
    for take in &takes {
        flac_test(take)?;
    }
    Ok(())
}

#[test]
fn an_appliance_that_crashes_while_the_server_is_down_records_the_rest_of_the_window() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let (server, agent, recordings, id) = scheduled_agent(work.path(), "sched-offcrash", 6, 16)?;
    let stopped = server.stop(false)?;
    agent.proc.wait_log(
        "recording the scheduled occurrence on our own",
        Duration::from_secs(20),
    )?;
    std::thread::sleep(Duration::from_secs(4));
    let agent = agent.crash_and_restart(work.path())?;
    agent.proc.wait_log(
        "recording the scheduled occurrence on our own",
        Duration::from_secs(20),
    )?;
    // Both takes finished on the appliance before the server is back (a
    // take being written is a `.part` file).
    let takes = wait_for("two takes", Duration::from_secs(30), || {
        let takes = takes_in(&recordings);
        (takes.len() == 2).then_some(takes)
    })?;
    for take in &takes {
        flac_test(take)?;
    }
    let server = stopped.start(work.path())?;
    wait_cut_and_rest(&server, "sched-offcrash", &id, 16)?;
    // And they stay two: the runner finds the occurrence recorded.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(jobs_of(&server, "sched-offcrash", &id)?.len(), 2);
    assert_eq!(takes_in(&recordings).len(), 2);
    Ok(())
}

/// The node's health issues of `condition` in `state`, through the API.
fn issues(server: &Server, node: &str, condition: &str, state: &str) -> Result<Vec<Value>> {
    let list = server.get_json(&format!(
        "/api/v1/health?node={node}&condition={condition}&state={state}"
    ))?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

#[test]
fn a_deferred_occurrence_is_an_issue_people_acknowledge_and_recovery_resolves() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let (_agent, _) = job_agent(work.path(), &server, "sched-busy", 2, "")?;
    wait_online(&server, "sched-busy")?;
    // A take by hand holds both channels; the schedule wants channel 1 from now.
    let (code, by_hand) = server.post("/api/v1/jobs", &json!({"node": "sched-busy"}))?;
    assert_eq!(code, 201, "{by_hand}");
    let by_hand = by_hand["id"].as_str().unwrap().to_owned();
    wait_job(&server, &by_hand, "running", Duration::from_secs(20))?;
    let mut busy = schedule("sched-busy", &utc_time_in(1), &utc_time_in(120));
    busy["job"]["channels"] = json!("1");
    let (code, created) = server.post("/api/v1/schedules", &busy)?;
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();

    let issue = wait_for("the deferral issue", Duration::from_secs(20), || {
        let open = issues(&server, "sched-busy", "schedule_deferred", "open").ok()?;
        (open.len() == 1).then(|| open[0].clone())
    })?;
    assert!(
        issue["subject"]
            .as_str()
            .unwrap()
            .starts_with(&format!("schedule:{id}/")),
        "{issue}"
    );
    assert!(
        issue["detail"].as_str().unwrap().contains(&by_hand),
        "{issue}"
    );
    let issue_id = issue["id"].as_u64().unwrap().to_string();

    // An operator sees it on the health page and acknowledges it there.
    let mut op = server.operator("nightshift", "operator")?;
    let (code, _, page) = op.get("/health?state=active")?;
    assert_eq!(code, 200);
    assert!(
        page.contains(&format!("data-issue=\"{issue_id}\"")),
        "{page}"
    );
    let csrf = op.csrf.clone();
    let (code, headers, body) = op.post_form(
        "/health",
        &[
            ("csrf", &csrf),
            ("back", "/health?state=active"),
            ("ids", &issue_id),
            ("action", "acknowledge"),
        ],
    )?;
    assert_eq!(code, 303, "{body}");
    assert_eq!(headers["location"], "/health?state=active");
    let acked = issues(&server, "sched-busy", "schedule_deferred", "acknowledged")?;
    assert_eq!(acked.len(), 1);
    assert_eq!(acked[0]["by"], "user:nightshift");
    // Acknowledging it again is refused and changes nothing.
    let (code, problem) = server.post(
        "/api/v1/health/actions",
        &json!({"ids": [issue["id"]], "action": "acknowledge"}),
    )?;
    assert_eq!(code, 409, "{problem}");

    // The channels come free: the occurrence starts and recovery resolves the issue.
    let (code, _) = server.post(&format!("/api/v1/jobs/{by_hand}/stop"), &json!({}))?;
    assert_eq!(code, 200);
    let resolved = wait_for("the issue resolved", Duration::from_secs(30), || {
        let done = issues(&server, "sched-busy", "schedule_deferred", "resolved").ok()?;
        (done.len() == 1).then(|| done[0].clone())
    })?;
    assert_eq!(resolved["by"], "recovery");
    assert_eq!(jobs_of(&server, "sched-busy", &id)?.len(), 1);

    // CSV export, and the acknowledgement in the audit log with before and after.
    let (code, csv) = server.get_api("/api/v1/health?node=sched-busy&format=csv")?;
    assert_eq!(code, 200);
    assert!(csv.starts_with("id,node,condition,subject,"), "{csv}");
    assert!(
        csv.contains(&format!("\r\n{issue_id},sched-busy,schedule_deferred,")),
        "{csv}"
    );
    let audit = server.get_json(&format!("/api/v1/audit/search?q=health:{issue_id}"))?;
    let record = &audit["records"][0];
    assert_eq!(record["actor"], "user:nightshift");
    assert_eq!(record["before"][0]["state"], "open");
    assert_eq!(record["after"][0]["state"], "acknowledged");
    Ok(())
}
