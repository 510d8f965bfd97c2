//! A capture device that disappears and returns mid-take: the JACK server behind
//! alsa-lib's jack plugin is stopped for 1.5 s and started again. The take must
//! stay one file, with the hole recorded as a gap of about the right length at
//! about the right position, and exactly the requested duration of audio.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{Jack, alsa_config};

fn tag(path: &Path, name: &str) -> String {
    let out = Command::new("metaflac")
        .arg(format!("--show-tag={name}"))
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches(&format!("{name}="))
        .to_owned()
}

#[test]
fn a_device_that_vanishes_and_returns_leaves_one_take_with_the_gap_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!("rakkr-loss-{}", std::process::id());
    let input = dir.path().join("in.raw");
    std::fs::write(&input, vec![0x21u8; 48_000 * 2 * 2 * 30]).unwrap();
    let conf = alsa_config(
        dir.path(),
        &format!(
            "pcm.jackcap {{\n type jack\n capture_ports {{ 0 system:capture_1 1 system:capture_2 }}\n}}\n\
             pcm.jackcap_plug {{ type plug slave.pcm \"jackcap\" }}\n\
             pcm.replay_rt {{\n type file\n slave.pcm \"jackcap_plug\"\n file \"/dev/null\"\n infile \"{}\"\n format \"raw\"\n}}\n",
            input.display()
        ),
        &[],
    );
    let jack = Jack::start(&server);
    let out = dir.path().join("take.flac");
    let recorder = Command::new(env!("CARGO_BIN_EXE_rakkr-agent"))
        .env("ALSA_CONFIG_PATH", &conf)
        .env("JACK_DEFAULT_SERVER", &server)
        .args([
            "record",
            "--device",
            "replay_rt",
            "--channels",
            "2",
            "--format",
            "S16_LE",
            "--bits",
            "16",
        ])
        .args(["--duration", "6", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    jack.stop();
    std::thread::sleep(Duration::from_millis(1500));
    let _jack = Jack::start(&server);
    let result = recorder.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");

    assert!(
        Command::new("flac")
            .args(["-t", "--silent"])
            .arg(&out)
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(
        tag(&out, "RAKKR_FRAMES"),
        "288000",
        "exactly the requested six seconds of audio"
    );
    let gaps = tag(&out, "RAKKR_GAPS");
    let (position, length) = gaps
        .split_once("+~")
        .unwrap_or_else(|| panic!("one estimated gap, got {gaps:?}"));
    let (position, length): (u64, u64) = (position.parse().unwrap(), length.parse().unwrap());
    // Stopped 2 s after the recorder was started (its start-up and the JACK
    // connection take part of that), gone for 1.5 s plus reconnect backoff.
    assert!(
        (12_000..=2 * 48_000 + 24_000).contains(&position),
        "gap at {position}"
    );
    assert!(
        (60_000..=5 * 48_000).contains(&length),
        "gap of {length} frames"
    );
}
