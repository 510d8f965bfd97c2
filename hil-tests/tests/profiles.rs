//! Recording profiles from the server's configuration, end to end on a real
//! agent: a job naming a profile records what the profile says (16-bit mono
//! in 3 s files, checked in the FLAC files themselves); a selection or a
//! device that does not fit is refused with the reason; a schedule naming a
//! profile records with it and follows it when the configuration changes
//! across a restart, audited.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use rakkr_hil_tests::*;
use serde_json::{Value, json};

const PROFILES: &str = "[recording]\ndefault_profile = \"standard\"\n\
    [recording.profiles.standard]\ncodec = \"flac\"\nbits = 24\n\
    [recording.profiles.talk]\ncodec = \"flac\"\nbits = 16\nchannel_mode = \"mono\"\nchunk_s = 3\nmax_length_s = 60\n\
    [recording.profiles.hi-rate]\nsample_rate = 96000\n";

fn refused(server: &Server, body: Value) -> Result<String> {
    let (code, answer) = server.post("/api/v1/jobs", &body)?;
    assert_eq!(code, 422, "{body} → {answer}");
    Ok(answer["detail"].as_str().unwrap_or_default().to_owned())
}

fn metaflac(args: &[&str], file: &std::path::Path) -> Result<String> {
    let out = Command::new("metaflac").args(args).arg(file).output()?;
    anyhow::ensure!(
        out.status.success(),
        "metaflac failed on {}",
        file.display()
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[test]
fn jobs_and_schedules_record_with_their_named_profiles() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start_configured(work.path(), &data, &[], PROFILES)?;
    let (names, _) = server.named_list("/api/v1/profiles")?;
    assert_eq!(
        names,
        [
            ("hi-rate".into(), false),
            ("standard".into(), true),
            ("talk".into(), false)
        ]
    );

    let (_agent, recordings) = job_agent(work.path(), &server, "prof-a", 2, "")?;
    wait_online(&server, "prof-a")?;

    // What does not fit is refused, with the reason.
    let why = refused(&server, json!({"node": "prof-a", "profile": "talk"}))?;
    assert_eq!(
        why,
        "profile \"talk\" does not fit: the profile records mono (1 channel); the selection gives 2"
    );
    let why = refused(&server, json!({"node": "prof-a", "profile": "hi-rate"}))?;
    assert_eq!(
        why,
        "profile \"hi-rate\" does not fit: the profile needs the device at 96000 Hz; it runs at 48000 Hz"
    );
    let why = refused(&server, json!({"node": "prof-a", "profile": "nope"}))?;
    assert!(
        why.starts_with("no recording profile \"nope\"; this server has hi-rate, standard, talk"),
        "{why}"
    );
    let why = refused(
        &server,
        json!({"node": "prof-a", "profile": "talk", "channels": "1+2", "duration_s": 61}),
    )?;
    assert_eq!(why, "61 s is longer than profile \"talk\" allows (60 s)");

    // A mix of both inputs, recorded as the profile says.
    let (code, job) = server.post(
        "/api/v1/jobs",
        &json!({"node": "prof-a", "profile": "talk", "channels": "1+2", "duration_s": 5}),
    )?;
    assert_eq!(code, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait_job(&server, &id, "completed", Duration::from_secs(30))?;
    let report = &done["recording"];
    assert_eq!(
        (report["bits"].as_u64(), report["channels"].as_u64()),
        (Some(16), Some(1)),
        "{done}"
    );
    assert_eq!(report["file_count"], 2, "5 s in 3 s files: {done}");
    for file in report["files"].as_array().unwrap() {
        let path = recordings.join(file["name"].as_str().unwrap());
        flac_test(&path)?;
        assert_eq!(metaflac(&["--show-bps"], &path)?, "16");
        assert_eq!(metaflac(&["--show-channels"], &path)?, "1");
    }

    // A schedule naming the profile records with it.
    let (code, created) = server.post(
        "/api/v1/schedules",
        &json!({
            "name": "Talks",
            "node": "prof-a",
            "profile": "talk",
            "job": {"channels": "2"},
            "timing": {
                "recurrence": {"mode": "daily"},
                "time_zone": "UTC",
                "window": {"start": "03:00", "end": "04:00"}
            }
        }),
    )?;
    assert_eq!(code, 201, "{created}");
    let sid = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["spec"]["job"]["profile"]["bits"], 16, "{created}");
    assert_eq!(
        created["spec"]["job"]["profile"]["segment_s"], 3,
        "{created}"
    );

    // The profile changes in the configuration; after the restart the
    // schedule records with the new one, and the change is audited.
    let config = work.path().join("server-readers.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, text.replace("bits = 16", "bits = 24"))?;
    let server = server.restart(work.path(), false)?;
    let detail = server.get_json(&format!("/api/v1/schedules/{sid}"))?;
    let schedule = &detail["schedule"];
    assert_eq!(schedule["spec"]["job"]["profile"]["bits"], 24, "{detail}");
    assert_eq!(schedule["revision"], 2, "{detail}");
    let audit = server.get_json("/api/v1/audit/search?actor=runner:policies&limit=10")?;
    let records = audit["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{audit}");
    assert_eq!(records[0]["target"], format!("schedule:{sid}"));
    assert_eq!(records[0]["before"]["spec"]["job"]["profile"]["bits"], 16);
    Ok(())
}
