//! The server's scheduled low-signal rule on real agents, with watchdog
//! policies from the server's configuration: a dead channel in a scheduled
//! take raises `low_signal` for that channel (and no other) once the
//! policy's grace period and cumulative time have passed, and the issue
//! outlives the take; a channel that is quiet only part of the time raises
//! and is resolved by its own recovery within the take. Schedules naming a
//! policy the server does not have are refused. The dead take's quality
//! timeline (API and console page, in a real browser) shows the condition.

use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::browser::{Browser, Look};
use rakkr_hil_tests::*;
use serde_json::{Value, json};

const POLICIES: &str = "[watchdog]\ndefault = \"standard\"\n\
    [watchdog.policies.standard]\nlow_signal_dbfs = -50.0\ngrace_s = 120\ncumulative_s = 300\nclear_s = 30\n\
    [watchdog.policies.strict]\nlow_signal_dbfs = -60.0\ngrace_s = 2\ncumulative_s = 3\nclear_s = 2\n\
    [watchdog.policies.swell]\nlow_signal_dbfs = -20.0\ngrace_s = 0\ncumulative_s = 3\nclear_s = 2\n";

fn schedule(node: &str, policy: &str, length_s: u64) -> Value {
    json!({
        "name": format!("{node} take"),
        "node": node,
        "job": {"channels": "1", "profile": {"codec": "flac"}},
        "timing": {
            "recurrence": {"mode": "daily"},
            "time_zone": "UTC",
            "window": {"start": utc_time_in(2), "end": utc_time_in(2 + length_s)}
        },
        "watchdog": policy
    })
}

fn low_signal_issues(server: &Server, node: &str) -> Vec<Value> {
    server
        .get_json(&format!("/api/v1/health?node={node}&condition=low_signal"))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn scheduled_takes_raise_low_signal_per_policy_and_recovery_resolves_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start_configured(work.path(), &work.path().join("data"), &[], POLICIES)?;

    // The configured list, the default marked.
    let (names, listed) = server.named_list("/api/v1/watchdog-policies")?;
    assert_eq!(
        names,
        [
            ("standard".into(), true),
            ("strict".into(), false),
            ("swell".into(), false)
        ]
    );
    assert_eq!(listed[1]["cumulative_s"], 3);

    let (_dead, _) = job_agent_with_signal(work.path(), &server, "sig-dead", 2, "", "silence")?;
    let (_swell, _) = job_agent_with_signal(work.path(), &server, "sig-swell", 1, "", "demo")?;
    wait_online(&server, "sig-dead")?;
    wait_online(&server, "sig-swell")?;

    // A policy this server does not have is refused with the names it has.
    let (code, refused) = server.post("/api/v1/schedules", &schedule("sig-dead", "nope", 10))?;
    assert_eq!(code, 422, "{refused}");
    let why = refused["detail"].as_str().unwrap();
    assert!(
        why.contains("no watchdog policy \"nope\"") && why.contains("standard, strict, swell"),
        "{why}"
    );

    // The dead input records channel 1 only, for 14 s; the quiet-at-times
    // input (the demo signal swells between about -45 and -9 dBFS RMS, below
    // -20 about 60 % of each 13 s cycle) for 30 s.
    let (code, dead) = server.post("/api/v1/schedules", &schedule("sig-dead", "strict", 14))?;
    assert_eq!(code, 201, "{dead}");
    let (code, swell) = server.post("/api/v1/schedules", &schedule("sig-swell", "swell", 30))?;
    assert_eq!(code, 201, "{swell}");

    let raised = wait_for(
        "low_signal on the dead channel",
        Duration::from_secs(30),
        || low_signal_issues(&server, "sig-dead").into_iter().next(),
    )?;
    let subject = raised["subject"].as_str().unwrap();
    assert!(
        subject.starts_with(&format!("schedule:{}/", dead["id"].as_str().unwrap()))
            && subject.ends_with("/channel:1"),
        "{raised}"
    );
    assert_eq!(raised["severity"], "warning");
    let detail = raised["detail"].as_str().unwrap();
    assert!(
        detail.contains("below -60 dBFS for 3 s in total")
            && detail.contains("policy \"strict\"")
            && detail.contains("\"sig-dead take\""),
        "{detail}"
    );
    // When: no earlier than grace + cumulative after the take started.
    let job = server
        .get_json("/api/v1/jobs?node=sig-dead")?
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["scheduled"]["schedule"] == dead["id"])
        .cloned()
        .expect("the scheduled job");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let opened = raised["opened_ms"].as_u64().expect("opened_ms");
    let ended = wait_job(&server, &job_id, "completed", Duration::from_secs(30))?;
    let started = ended["recording"]["start_unix_ms"]
        .as_u64()
        .expect("the take's start");
    assert!(
        opened >= started + 5_000,
        "raised {} ms after the take started",
        opened as i64 - started as i64
    );

    // The take is over, nothing recovered: the issue is still open, and
    // the channel the take did not record raised nothing.
    std::thread::sleep(Duration::from_secs(3));
    let issues = low_signal_issues(&server, "sig-dead");
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0]["state"], "open");
    assert_eq!(issues[0]["raised"], 1, "raised once, not once a second");

    // The recording's quality timeline shows it from when it was raised to
    // the end of the take, on the recorded channel only.
    let quality = server.get_json(&format!("/api/v1/recordings/{job_id}/quality"))?;
    let lanes = quality["lanes"].as_array().unwrap();
    let low = lanes
        .iter()
        .find(|l| l["condition"] == "low_signal")
        .unwrap_or_else(|| panic!("a low_signal lane: {quality}"));
    assert_eq!(low["subject"], subject, "{quality}");
    let span = &low["spans"][0];
    let length = quality["end_ms"].as_u64().unwrap() - quality["start_ms"].as_u64().unwrap();
    assert!(span["from_ms"].as_u64().unwrap() >= 5_000, "{quality}");
    assert_eq!(span["to_ms"].as_u64().unwrap(), length, "{quality}");
    assert_eq!(span["open_at_end"], true);
    assert!(
        lanes
            .iter()
            .all(|l| !l["subject"].as_str().unwrap().ends_with("channel:2")),
        "channel 2 was not recorded: {quality}"
    );
    // The same on the recording's page, at both widths.
    server.operator("olga", "operator")?;
    for look in [Look::DESKTOP, Look::PHONE_DARK] {
        let browser = Browser::start(work.path(), &server.url(""), look)?;
        browser.log_in("olga", OPERATOR_PASSWORD)?;
        browser.goto(&format!("/recordings/{job_id}"))?;
        browser.wait_css(".quality-track rect.span.warning", Duration::from_secs(10))?;
        let table = browser.text("table.quality")?;
        assert!(
            table.contains("low_signal") && table.contains("(still raised)"),
            "{table}"
        );
        assert!(
            !browser.overflows_horizontally()?,
            "the recording page at {look:?}"
        );
        browser.screenshot(if !look.dark {
            "recording-quality-1280"
        } else {
            "recording-quality-390-dark"
        })?;
    }

    // The swelling input: raised while quiet, resolved when it came back.
    let resolved = wait_for(
        "low_signal raised and resolved on the swelling channel",
        Duration::from_secs(45),
        || {
            low_signal_issues(&server, "sig-swell")
                .into_iter()
                .find(|i| i["state"] == "resolved")
        },
    )?;
    assert!(
        resolved["subject"]
            .as_str()
            .unwrap()
            .ends_with("/channel:1"),
        "{resolved}"
    );
    Ok(())
}
