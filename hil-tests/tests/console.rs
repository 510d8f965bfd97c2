//! The operator console in a real browser (headless Chromium through
//! chromedriver): log in, watch live meters, start and stop a recording (by
//! mouse, and by keyboard alone); notes and tags with markup stay text; a
//! viewer sees no controls and a forged request is refused and audited; a
//! request without its CSRF token is refused; an owner manages users, API
//! tokens and enrollment. Screenshots of the pages, at
//! desktop width in light and at phone width in dark, are kept in
//! `target/<profile>/console-screenshots/`.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::browser::{Browser, ENTER, Look};
use rakkr_hil_tests::*;
use serde_json::{Value, json};

const SOON: Duration = Duration::from_secs(20);
const NODE: &str = "stage-left";

/// An appliance with a synthetic "demo" signal (levels that move) that can record.
fn recording_agent(work: &Path, server: &Server) -> Result<Agent> {
    let config = work.join(format!("{NODE}.toml"));
    std::fs::write(
        &config,
        format!(
            "node_id = \"{NODE}\"\nrealtime = false\nrecordings_dir = \"{}\"\nstate_dir = \"{}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
             [source]\nkind = \"synthetic\"\nchannels = 4\nsample_rate = 48000\nsignal = \"demo\"\n",
            work.join("recordings").display(),
            work.join("agent-state").display(),
            server.mqtt_port,
        ),
    )?;
    Agent::start_for(work, server, NODE, &config, &[])
}

fn log_in(browser: &Browser, name: &str) -> Result<()> {
    browser.log_in(name, OPERATOR_PASSWORD)
}

/// `fetch` a form POST from inside the page (the session's cookie goes
/// along, as it would for any script on the page); the status.
fn post_from_page(browser: &Browser, path: &str, body: &str) -> Result<u64> {
    let status = browser.js_async(
        "const done = arguments[arguments.length - 1];
         fetch(arguments[0], { method: 'POST', redirect: 'manual',
             headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: arguments[1] })
           .then(r => done(r.status), e => done(String(e)));",
        vec![json!(path), json!(body)],
    )?;
    status
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("fetch failed: {status}"))
}

fn audit(server: &Server) -> Result<Vec<Value>> {
    let page = server.get_json("/api/v1/audit?limit=1000")?;
    assert_eq!(page["chain"], "ok");
    Ok(page["records"].as_array().cloned().unwrap_or_default())
}

#[test]
fn an_operator_records_from_the_browser_and_a_viewer_cannot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let server = Server::start(work, &work.join("data"))?;
    let _agent = recording_agent(work, &server)?;
    wait_for("node online", SOON, || {
        (server.presence(NODE).as_deref() == Some("online")).then_some(())
    })?;
    let olga = server.operator("olga", "operator")?;
    server.operator("vic", "viewer")?;

    let browser = Browser::start(work, &server.url(""), Look::DESKTOP)?;
    log_in(&browser, "olga")?;
    browser.wait_css(&format!("tr[data-node={NODE}] .meters"), SOON)?;
    browser.screenshot("fleet-1280-light")?;

    // The node page: its levels go live and keep changing.
    browser.click(&format!("a[href='/nodes/{NODE}']"))?;
    browser.wait_css("#live-meters[data-live=on] .meter", SOON)?;
    let first = browser.inner_html("#live-meters")?;
    wait_for("a live meter change", SOON, || {
        let now = browser.inner_html("#live-meters").ok()?;
        (now != first && now.contains("class=\"meter\"")).then_some(())
    })?;
    assert_eq!(
        browser.text("#live-state")?,
        "Live: about five updates a second."
    );
    // What the page says is so: the stream behind it sends about five frames a
    // second (a wide band; the machine is shared).
    {
        use std::io::Read as _;
        let mut stream = reqwest::blocking::Client::builder()
            .build()?
            .get(server.url(&format!("/nodes/{NODE}/live")))
            .header("cookie", olga.cookie().unwrap_or_default())
            .send()?;
        assert_eq!(stream.headers()["content-type"], "text/event-stream");
        let (mut seen, mut buf) = (String::new(), [0u8; 4096]);
        let started = std::time::Instant::now();
        // The first frame, then four seconds of them.
        while !seen.contains("event: meters") {
            let n = stream.read(&mut buf)?;
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let (before, from) = (
            seen.matches("event: meters").count(),
            std::time::Instant::now(),
        );
        while from.elapsed() < Duration::from_secs(4) && started.elapsed() < SOON {
            let n = stream.read(&mut buf)?;
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let rate =
            (seen.matches("event: meters").count() - before) as f64 / from.elapsed().as_secs_f64();
        assert!((2.5..=8.0).contains(&rate), "{rate:.1} frames a second");
    }
    assert!(!browser.overflows_horizontally()?);
    assert!(
        browser
            .text("ul.devices li[data-in-use=true]")?
            .contains("synthetic"),
        "the inventory names the device the node captures from"
    );
    assert_eq!(
        browser.js(
            "return document.querySelector('form.start input[name=device]').value;",
            vec![]
        )?,
        json!("synthetic"),
        "and a new recording uses it"
    );
    browser.screenshot("node-1280-light")?;

    // Start a recording until stopped, see it run, stop it.
    browser.fill("input[name=channels]", "1,2")?;
    browser.click("#start-recording")?;
    browser.wait_css("#jobs tr[data-state=running] button.stop", SOON)?;
    browser.screenshot("node-recording-1280-light")?;
    let job = running_job(&browser)?;
    std::thread::sleep(Duration::from_secs(1));
    browser.click("#jobs tr[data-state=running] button.stop")?;
    browser.wait_css(
        &format!("#jobs tr[data-job='{job}'][data-state=completed]"),
        SOON,
    )?;
    let record = server.get_json(&format!("/api/v1/jobs/{job}"))?;
    assert_eq!(record["state"], "completed", "{record}");
    assert_eq!(record["recording"]["channels"], 2, "{record}");
    assert!(
        record["recording"]["frames"].as_u64().unwrap_or(0) >= 48_000,
        "at least a second was recorded: {record}"
    );
    assert!(browser.text("#jobs")?.contains("2 ch"));

    // By keyboard alone: Tab to the start button, Enter; Tab to Stop, Enter.
    browser.goto(&format!("/nodes/{NODE}"))?;
    browser.wait_css("#start-recording", SOON)?;
    browser.tab_to("#start-recording", 60)?;
    browser.press(ENTER)?;
    browser.wait_css("#jobs tr[data-state=running] button.stop", SOON)?;
    browser.tab_to("#jobs tr[data-state=running] button.stop", 80)?;
    // The jobs table refreshes every 2 s; the focus stays on Stop.
    std::thread::sleep(Duration::from_millis(2500));
    let kept = browser.js(
        "return document.activeElement.matches('#jobs tr[data-state=running] button.stop');",
        vec![],
    )?;
    assert_eq!(
        kept,
        serde_json::Value::Bool(true),
        "focus lost by a refresh"
    );
    browser.press(ENTER)?;
    wait_for("the keyboard's take to finish", SOON, || {
        let running = browser
            .exists("#jobs tr[data-state=running], #jobs tr[data-state=stop_requested]")
            .ok()?;
        (!running).then_some(())
    })?;

    // Cancel: the take stops and the job says cancelled, not completed.
    browser.click("#start-recording")?;
    browser.wait_css("#jobs tr[data-state=running] button.cancel", SOON)?;
    let cancelled = running_job(&browser)?;
    browser.click("#jobs tr[data-state=running] button.cancel")?;
    browser.wait_css(
        &format!("#jobs tr[data-job='{cancelled}'][data-state=cancelled]"),
        SOON,
    )?;
    let record = server.get_json(&format!("/api/v1/jobs/{cancelled}"))?;
    assert_eq!(
        (&record["state"], &record["cancel_requested"]),
        (&json!("cancelled"), &json!(true)),
        "{record}"
    );

    // The take is in the library; markup in its tags and notes stays text.
    browser.click("a[href='/recordings']")?;
    browser.wait_css(&format!("tr[data-job='{job}']"), SOON)?;
    browser.click(&format!("tr[data-job='{job}'] td a"))?;
    browser.wait_css("form.notes", SOON)?;
    let evil_tag = "<img src=x onerror=window.pwned=1>";
    let evil_notes = "Mic 3 hums <script>window.pwned=2</script>";
    browser.fill("form.notes input[name=tags]", &format!("choir, {evil_tag}"))?;
    browser.fill("form.notes textarea[name=notes]", evil_notes)?;
    browser.click("form.notes button[type=submit]")?;
    browser.wait_css("form.notes", SOON)?;
    assert_eq!(
        browser.js(
            "return document.querySelector('textarea[name=notes]').value;",
            vec![]
        )?,
        json!(evil_notes)
    );
    browser.goto("/recordings?tag=choir")?;
    browser.wait_css(&format!("tr[data-job='{job}']"), SOON)?;
    let row = browser.text(&format!("tr[data-job='{job}']"))?;
    assert!(row.contains(evil_tag) && row.contains(evil_notes), "{row}");
    assert!(
        !browser.exists("tr img, tr script")?,
        "no markup from tags or notes"
    );
    assert_eq!(
        browser.js("return typeof window.pwned;", vec![])?,
        json!("undefined")
    );
    browser.screenshot("recordings-1280-light")?;
    let annotated = server.get_json(&format!("/api/v1/jobs/{job}"))?;
    assert_eq!(annotated["tags"], json!([evil_tag, "choir"]));

    // The same session without its CSRF token: refused, nothing started.
    let jobs_before = server.get_json(&format!("/api/v1/jobs?node={NODE}"))?;
    let status = post_from_page(
        &browser,
        &format!("/nodes/{NODE}/jobs"),
        "device=default&channels=&profile=standard&duration_s=",
    )?;
    assert_eq!(status, 403, "a POST without the CSRF token");
    assert_eq!(
        server.get_json(&format!("/api/v1/jobs?node={NODE}"))?,
        jobs_before
    );
    browser.click("form.logout button")?;
    browser.wait_css("input[name=password]", SOON)?;

    // A viewer: the page shows no controls, and a forged start is refused
    // (with the viewer's own valid CSRF token) and audited.
    log_in(&browser, "vic")?;
    browser.goto(&format!("/nodes/{NODE}"))?;
    browser.wait_css("#live-meters[data-live=on] .meter", SOON)?;
    assert!(!browser.exists("#start-recording")?);
    assert!(!browser.exists("form.start")?);
    assert!(!browser.exists("button.stop, button.cancel")?);
    assert!(browser.exists(&format!("#jobs tr[data-job='{job}']"))?);
    browser.goto(&format!("/recordings/{job}"))?;
    browser.wait_css("#notes-h", SOON)?;
    assert!(!browser.exists("form.notes")?, "a viewer cannot edit notes");
    assert!(browser.text(".notes-text")?.contains("<script>"));
    browser.goto(&format!("/nodes/{NODE}"))?;
    browser.wait_css("#live-meters", SOON)?;
    let csrf = browser
        .js(
            "return document.querySelector('input[name=csrf]').value;",
            vec![],
        )?
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!csrf.is_empty());
    let status = post_from_page(
        &browser,
        &format!("/nodes/{NODE}/jobs"),
        &format!("csrf={csrf}&device=default&channels=&profile=standard&duration_s="),
    )?;
    assert_eq!(status, 403, "a viewer's forged start");
    assert_eq!(
        server.get_json(&format!("/api/v1/jobs?node={NODE}"))?,
        jobs_before
    );
    let records = audit(&server)?;
    let refused = |actor: &str, reason: &str| {
        records.iter().any(|r| {
            r["actor"] == actor
                && r["action"] == "POST /nodes/{id}/jobs"
                && r["outcome"] == "denied"
                && r["reason"].as_str().unwrap_or("").contains(reason)
        })
    };
    assert!(refused("user:vic", "does not allow jobs.manage"));
    assert!(refused("user:olga", "CSRF"));
    assert!(records.iter().any(|r| r["actor"] == "user:olga"
        && r["action"] == "POST /jobs/{id}/stop"
        && r["outcome"] == "allowed"));
    browser.screenshot("node-viewer-1280-light")?;
    assert!(
        !browser.exists("a[href='/audit']")?,
        "a viewer has no audit log link"
    );
    browser.click("form.logout button")?;
    browser.wait_css("input[name=password]", SOON)?;

    // An auditor finds the forged start, and sees what the stop changed.
    server.operator("aud", "auditor")?;
    log_in(&browser, "aud")?;
    browser.click("a[href='/audit']")?;
    browser.wait_css("form.search", SOON)?;
    browser.fill("input[name=actor]", "user:vic")?;
    browser.js(
        "document.querySelector('select[name=outcome]').value = 'denied';",
        vec![],
    )?;
    browser.click("form.search button[type=submit]")?;
    browser.wait_css("table.audit tr[data-outcome=denied]", SOON)?;
    let rows = browser.text("table.audit tbody")?;
    assert!(rows.contains("POST /nodes/{id}/jobs"), "{rows}");
    assert!(rows.contains("does not allow jobs.manage"), "{rows}");
    assert!(!rows.contains("user:olga"), "{rows}");
    browser.screenshot("audit-1280-light")?;
    browser.goto("/audit?q=POST%20%2Fjobs")?;
    browser.wait_css("table.audit details", SOON)?;
    let change = browser.js(
        "const d = document.querySelector('table.audit tr[data-outcome=allowed] details');
         d.open = true; return d.textContent;",
        vec![],
    )?;
    let change = change.as_str().unwrap_or_default();
    assert!(
        change.contains("\"state\":\"running\"") && change.contains("\"state\":\"stop_requested\""),
        "the stop's before and after: {change}"
    );
    // Markup typed into a search comes back as text, never as markup.
    let evil = "\"><script>window.pwned=1</script><b>";
    browser.fill("input[name=q]", evil)?;
    browser.click("form.search button[type=submit]")?;
    browser.wait_css("p.muted", SOON)?;
    assert_eq!(
        browser.js(
            "return document.querySelector('input[name=q]').value;",
            vec![]
        )?,
        json!(evil)
    );
    assert_eq!(
        browser.js("return typeof window.pwned;", vec![])?,
        json!("undefined")
    );
    drop(browser);

    // What the session did shows in /metrics, with the node's levels and counters.
    let (code, metrics) = server.get_api("/metrics")?;
    assert_eq!(code, 200);
    let samples = parse_prometheus_text(&metrics)?;
    assert!(samples > 100, "{samples} samples");
    for expected in [
        format!("rakkr_meter_peak_dbfs{{node=\"{NODE}\",channel=\"4\"}} "),
        format!("rakkr_node_xruns_total{{node=\"{NODE}\"}} 0\n"),
        format!("rakkr_node_outbox_bytes{{node=\"{NODE}\"}} "),
        // Three starts (mouse, keyboard, the cancelled one) redirected back to the node page.
        "rakkr_http_requests_total{route=\"/nodes/{id}/jobs\",method=\"POST\",status=\"3xx\"} 3\n"
            .to_owned(),
        "rakkr_http_requests_total{route=\"/nodes/{id}/jobs\",method=\"POST\",status=\"4xx\"} 2\n"
            .to_owned(),
        "rakkr_job_desk_seconds_count{report=\"update\"} ".to_owned(),
        "rakkr_mqtt_live_meter_frames_total ".to_owned(),
        "rakkr_mqtt_message_seconds_bucket{channel=\"meters\",le=\"0.1\"} ".to_owned(),
        "rakkr_health_events_persist_seconds_count ".to_owned(),
    ] {
        assert!(metrics.contains(&expected), "no {expected:?} in /metrics");
    }

    // A phone in the dark: nothing wider than the screen.
    let phone = Browser::start(work, &server.url(""), Look::PHONE_DARK)?;
    log_in(&phone, "olga")?;
    let dark = phone.js(
        "return window.matchMedia('(prefers-color-scheme: dark)').matches;",
        vec![],
    )?;
    assert_eq!(dark, json!(true), "the dark look is in effect");
    assert!(!phone.overflows_horizontally()?, "the fleet page at 390 px");
    phone.screenshot("fleet-390-dark")?;
    phone.goto(&format!("/nodes/{NODE}"))?;
    phone.wait_css("#live-meters[data-live=on] .meter", SOON)?;
    assert!(!phone.overflows_horizontally()?, "the node page at 390 px");
    phone.screenshot("node-390-dark")?;
    drop(phone);

    // The desktop in the dark.
    let dark = Browser::start(work, &server.url(""), Look::DESKTOP_DARK)?;
    log_in(&dark, "olga")?;
    dark.screenshot("fleet-1280-dark")?;
    dark.goto(&format!("/nodes/{NODE}"))?;
    dark.wait_css("#live-meters[data-live=on] .meter", SOON)?;
    assert!(!dark.overflows_horizontally()?);
    dark.screenshot("node-1280-dark")?;
    Ok(())
}

/// The id of the job running in the node page's recordings panel.
fn running_job(browser: &Browser) -> Result<String> {
    let id = browser.js(
        "return document.querySelector('#jobs tr[data-state=running]').dataset.job;",
        vec![],
    )?;
    Ok(id.as_str().unwrap_or_default().to_owned())
}

/// The text of the shown-once secret on the page.
fn shown_secret(browser: &Browser) -> Result<String> {
    browser.wait_css("#secret", SOON)?;
    browser.text("#secret")
}

#[test]
fn an_owner_manages_users_tokens_and_enrollment_in_the_browser() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let server = Server::start(work, &work.join("data"))?;
    server.operator("own", "owner")?;
    let browser = Browser::start(work, &server.url(""), Look::DESKTOP)?;
    log_in(&browser, "own")?;

    // Add a user: the one-time password is shown once.
    browser.click("a[href='/users']")?;
    browser.fill("form.start input[name=name]", "newbie")?;
    browser.js(
        "document.querySelector('form.start select[name=role]').value = 'operator';",
        vec![],
    )?;
    browser.click("form.start button[type=submit]")?;
    let otp = shown_secret(&browser)?;
    assert_eq!(otp.replace('-', "").len(), 20, "{otp}");
    assert!(browser.exists("tr[data-user=newbie]")?);
    browser.screenshot("users-1280-light")?;
    browser.goto("/users")?;
    assert!(!browser.exists("#secret")?, "shown once only");

    // Change the role, then disable and enable: each audited with before and after.
    browser.js(
        "document.querySelector('#role-newbie').value = 'viewer';",
        vec![],
    )?;
    browser.click("tr[data-user=newbie] form.inline button.secondary")?;
    browser.wait_css("p.notice", SOON)?;
    browser.click("tr[data-user=newbie] button[data-change=disable]")?;
    browser.wait_css("tr[data-user=newbie] button[data-change=enable]", SOON)?;
    browser.click("tr[data-user=newbie] button[data-change=enable]")?;
    browser.wait_css("tr[data-user=newbie] button[data-change=disable]", SOON)?;
    let records = audit(&server)?;
    let role_change = records
        .iter()
        .find(|r| r["action"] == "POST /users/{name}" && r["after"]["role"] == "viewer")
        .expect("the role change is audited");
    assert_eq!(role_change["actor"], "user:own");
    assert_eq!(role_change["before"]["role"], "operator");
    assert_eq!(role_change["target"], "user:newbie");

    // An API token: shown once, works, then revoked from the page.
    browser.click("a[href='/api-tokens']")?;
    browser.fill("form.start input[name=name]", "prometheus")?;
    browser.click("form.start button[type=submit]")?;
    let token = shown_secret(&browser)?;
    assert!(token.starts_with("rkt1."), "{token}");
    browser.screenshot("api-tokens-1280-light")?;
    let metrics = |token: &str| -> Result<u16> {
        Ok(http_client()?
            .get(server.url("/metrics"))
            .bearer_auth(token)
            .send()?
            .status()
            .as_u16())
    };
    assert_eq!(metrics(&token)?, 200, "a viewer token reads /metrics");
    let id = token.split('.').nth(1).unwrap_or_default().to_owned();
    browser.click(&format!("tr[data-token='{id}'] button"))?;
    browser.wait_css("p.notice", SOON)?;
    assert_eq!(metrics(&token)?, 401, "revoked");

    // An enrollment token for one node: shown once, and it enrolls that node.
    browser.click("a[href='/enrollment']")?;
    browser.fill("form.start input[name=node]", "stage-right")?;
    browser.click("form.start button[type=submit]")?;
    let command = shown_secret(&browser)?;
    let enroll_token = command
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned();
    browser.screenshot("enrollment-1280-light")?;
    let enrolled = http_client()?
        .post(server.url("/api/v1/enroll"))
        .json(&json!({ "token": enroll_token, "node": "stage-right" }))
        .send()?;
    assert_eq!(enrolled.status().as_u16(), 201);
    drop(browser);

    // The new user's first login asks for a password of their own.
    let phone = Browser::start(work, &server.url(""), Look::PHONE_DARK)?;
    phone.goto("/login")?;
    phone.fill("input[name=name]", "newbie")?;
    phone.fill("input[name=password]", &otp)?;
    phone.click("form button[type=submit]")?;
    phone.wait_css("input[name=repeated]", SOON)?;
    phone.fill("input[name=current]", &otp)?;
    phone.fill("input[name=new]", OPERATOR_PASSWORD)?;
    phone.fill("input[name=repeated]", OPERATOR_PASSWORD)?;
    phone.click("form:not(.logout) button[type=submit]")?;
    phone.wait_css("#nodes", SOON)?;
    assert!(
        !phone.exists("a[href='/users']")?,
        "a viewer has no Users link"
    );
    phone.click("form.logout button")?;
    phone.wait_css("input[name=password]", SOON)?;
    log_in(&phone, "own")?;
    phone.goto("/users")?;
    assert!(!phone.overflows_horizontally()?, "the users page at 390 px");
    phone.screenshot("users-390-dark")?;
    // The owner's other pages fit a phone too.
    for (path, shot) in [
        ("/api-tokens", "api-tokens-390-dark"),
        ("/enrollment", "enrollment-390-dark"),
        ("/audit", "audit-390-dark"),
        ("/recordings", "recordings-390-dark"),
        ("/deliveries", "deliveries-390-dark"),
        ("/account/password", "account-390-dark"),
    ] {
        phone.goto(path)?;
        phone.wait_css("main h1", SOON)?;
        assert!(!phone.overflows_horizontally()?, "{path} at 390 px");
        phone.screenshot(shot)?;
    }
    Ok(())
}

#[test]
fn an_operator_schedules_a_recording_in_the_browser() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let server = Server::start(work, &work.join("data"))?;
    let _agent = recording_agent(work, &server)?;
    wait_for("the node online", SOON, || {
        (server.presence(NODE).as_deref() == Some("online")).then_some(())
    })?;
    server.operator("sched", "operator")?;
    let browser = Browser::start(work, &server.url(""), Look::DESKTOP)?;
    log_in(&browser, "sched")?;

    // From the navigation to the editor; a mistake is shown, nothing is lost.
    browser.click("nav.sections a[href='/schedules']")?;
    browser.click("a[href='/schedules/new']")?;
    browser.fill("input[name=name]", "Morning <b>show</b>")?;
    browser.fill("input[name=node]", NODE)?;
    // Channels 3 and 4: when the test runs inside the window (Mon, Wed, Fri
    // 06:00–09:30 Berlin) the schedule records, and channel 1 must stay free
    // for the take by hand below.
    browser.fill("input[name=channels]", "3,4")?;
    browser.fill("input[name=tags]", "morning, radio")?;
    browser.js(
        "document.querySelector('select[name=mode]').value = 'weekly';
         for (const d of ['monday', 'wednesday', 'friday'])
             document.querySelector(`input[name=${d}]`).checked = true;
         document.querySelector('input[name=start]').value = '06:00';
         document.querySelector('input[name=end]').value = '09:30';",
        vec![],
    )?;
    browser.fill("input[name=time_zone]", "Europe/Brlin")?;
    browser.click("form.editor button[type=submit]")?;
    browser.wait_css("p.error", SOON)?;
    let error = browser.text("p.error")?;
    assert!(error.contains("unknown time zone"), "{error}");
    assert_eq!(
        browser.js(
            "return document.querySelector('input[name=name]').value;",
            vec![]
        )?,
        json!("Morning <b>show</b>"),
        "the form keeps what was typed"
    );
    browser.js(
        "document.querySelector('input[name=time_zone]').value = 'Europe/Berlin';",
        vec![],
    )?;
    browser.click("form.editor button[type=submit]")?;
    wait_for("the schedule's page", SOON, || {
        let path = browser.path().ok()?;
        (path.starts_with("/schedules/") && path != "/schedules/new").then_some(())
    })?;
    assert_eq!(
        browser.text("h1")?,
        "Morning <b>show</b>",
        "markup stays text"
    );
    let upcoming = browser.text("#upcoming-h + table")?;
    assert!(upcoming.contains("06:00–09:30"), "{upcoming}");
    browser.screenshot("schedule-1280-light")?;

    // Skip the next one: it is marked skipped.
    browser.click("form[action$='/skip-next'] button")?;
    browser.wait_css("tr.excepted", SOON)?;

    // The list and the week calendar show it on Mondays, Wednesdays and Fridays.
    browser.goto("/schedules?view=week&from=2026-12-07&tz=Europe/Berlin")?;
    let row = browser.text("table.schedules tbody tr")?;
    assert!(
        row.contains("Weekly on Mon, Wed, Fri, 06:00–09:30 Europe/Berlin"),
        "{row}"
    );
    let entries = browser.js(
        "return [...document.querySelectorAll('.calendar .day')].map(d => d.querySelectorAll('a.occ').length);",
        vec![],
    )?;
    assert_eq!(entries, json!([1, 0, 1, 0, 1, 0, 0]));
    browser.screenshot("schedules-week-1280-light")?;
    browser.goto("/schedules?view=month&from=2026-12-07&tz=Europe/Berlin")?;
    browser.screenshot("schedules-month-1280-light")?;
    assert!(!browser.overflows_horizontally()?);

    // At phone width in dark, still readable and without sideways scrolling.
    let phone = Browser::start(work, &server.url(""), Look::PHONE_DARK)?;
    log_in(&phone, "sched")?;
    phone.goto("/schedules?view=week&from=2026-12-07&tz=Europe/Berlin")?;
    assert!(!phone.overflows_horizontally()?);
    phone.screenshot("schedules-week-390-dark")?;

    // A take by hand on channel 1 makes a schedule due now wait: a health
    // issue, acknowledged from the Health page with a checkbox and a button.
    let (code, by_hand) = server.post("/api/v1/jobs", &json!({"node": NODE, "channels": "1"}))?;
    assert_eq!(code, 201, "{by_hand}");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let hms = |s: u64| format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60);
    let (code, busy) = server.post(
        "/api/v1/schedules",
        &json!({
            "name": "Busy now", "node": NODE, "job": {"channels": "1"},
            "timing": {"recurrence": {"mode": "daily"}, "time_zone": "UTC",
                       "window": {"start": hms(now_s + 1), "end": hms(now_s + 600)}}
        }),
    )?;
    assert_eq!(code, 201, "{busy}");
    browser.goto("/health?state=active")?;
    wait_for("the deferral on the Health page", SOON, || {
        browser.goto("/health?state=active").ok()?;
        browser
            .exists("tr.open input[name=ids]")
            .ok()?
            .then_some(())
    })?;
    assert!(browser.text("table.issues")?.contains("schedule_deferred"));
    assert!(!browser.overflows_horizontally()?);
    browser.screenshot("health-1280-light")?;
    browser.click("tr.open input[name=ids]")?;
    browser.click("button[name=action][value=acknowledge]")?;
    browser.wait_css("tr.acknowledged", SOON)?;
    assert_eq!(browser.path()?, "/health");
    browser.screenshot("health-acknowledged-1280-light")?;
    phone.goto("/health")?;
    assert!(!phone.overflows_horizontally()?);
    phone.screenshot("health-390-dark")?;

    // Every change is in the audit log under the operator's name.
    let records = audit(&server)?;
    let changes: Vec<&Value> = records
        .iter()
        .filter(|r| r["actor"] == "user:sched" && r["permission"] == "schedules.manage")
        .collect();
    assert!(
        changes
            .iter()
            .any(|r| r["outcome"] == "allowed" && r["before"].is_null()),
        "creation: {changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|r| r["outcome"] == "allowed" && r["after"]["spec"]["timing"]["skip"].is_array()),
        "skip-next: {changes:?}"
    );
    Ok(())
}
