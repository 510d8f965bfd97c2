//! `rakkr-agent record` and `rakkr-agent recover`, run as processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rakkr_agent::source::{Signal, SyntheticSource};

mod common;
#[path = "../../hil-tests/src/small_fs.rs"]
mod small_fs;
use common::{alsa_config, full_range_samples};
use small_fs::SmallFs;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rakkr-agent"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run rakkr-agent")
}

/// Run `cmd` (stderr discarded) and SIGKILL it after `after`.
fn kill_after(cmd: &mut Command, after: Duration) {
    let mut child = cmd.stderr(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(after);
    child.kill().unwrap();
    child.wait().unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn flac_t(path: &Path) -> bool {
    Command::new("flac")
        .args(["-t", "--silent"])
        .arg(path)
        .status()
        .unwrap()
        .success()
}

/// Decode with a reference decoder (`flac -d` for FLAC, sox for WAV): bits
/// per sample and samples.
fn decode(path: &Path) -> (u32, Vec<i32>) {
    if path.extension().is_some_and(|e| e == "wav") {
        let bits = rakkr_wav::WavReader::open(path)
            .unwrap()
            .header()
            .format
            .bits_per_sample;
        let out = Command::new("sox")
            .arg(path)
            .args(["-t", "raw", "-e", "signed-integer", "-L", "-b"])
            .arg(bits.to_string())
            .arg("-")
            .output()
            .unwrap();
        assert!(out.status.success(), "sox: {}", stderr(&out));
        return (
            u32::from(bits),
            le_samples(&out.stdout, usize::from(bits / 8)),
        );
    }
    let (info, _) = rakkr_flac::read_stream_info(path).unwrap();
    let out = Command::new("flac")
        .args(["-d", "-c", "--silent", "--force-raw-format"])
        .args(["--endian=little", "--sign=signed"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "flac -d: {}", stderr(&out));
    let samples = le_samples(&out.stdout, usize::from(info.bits_per_sample / 8));
    (u32::from(info.bits_per_sample), samples)
}

fn le_samples(raw: &[u8], width: usize) -> Vec<i32> {
    raw.chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 4];
            b[4 - width..].copy_from_slice(c);
            i32::from_le_bytes(b) >> (32 - 8 * width)
        })
        .collect()
}

#[test]
fn alsa_captures_become_bit_exact_flac_files() {
    let dir = tempfile::tempdir().unwrap();
    const CH: usize = 4;
    const FRAMES: usize = 48_000; // one second recorded; the file holds more
    // (name, ALSA format, container bytes, significant bits, file bits)
    let cases = [
        ("s16", "S16_LE", 2usize, 16u32, 16u8),
        ("s24_3", "S24_3LE", 3, 24, 24),
        ("s32", "S32_LE", 4, 24, 24),
        ("s32full", "S32_LE", 4, 32, 32),
    ];
    let mut pcms = Vec::new();
    let mut inputs = Vec::new();
    for (name, _, width, bits, _) in cases {
        let values: Vec<i32> =
            full_range_samples(bits, (FRAMES + 8192) * CH, u64::from(bits) + width as u64)
                .into_iter()
                .map(|v| v as i32)
                .collect();
        // S32 from a 24-bit converter: 24 significant bits, left-justified
        // (recorded at 24 bits); and S32 with all 32 bits significant.
        let shift = (width as u32 * 8) - bits;
        let raw: Vec<u8> = values
            .iter()
            .flat_map(|v| ((*v as i64) << shift).to_le_bytes()[..width].to_vec())
            .collect();
        let path = dir.path().join(format!("{name}.raw"));
        std::fs::write(&path, raw).unwrap();
        pcms.push((name, path));
        inputs.push(values);
    }
    let pcm_refs: Vec<(&str, &Path)> = pcms.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let conf = alsa_config(dir.path(), "", &pcm_refs);

    for ((name, format, _, _, file_bits), input) in cases.iter().zip(&inputs) {
        let out = dir.path().join(format!("{name}.flac"));
        let o = run(agent()
            .env("ALSA_CONFIG_PATH", &conf)
            .args([
                "record",
                "--device",
                name,
                "--channels",
                "4",
                "--rate",
                "48000",
                "--format",
                format,
            ])
            .args(["--duration", "1", "--bits", &file_bits.to_string(), "--out"])
            .arg(&out));
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(flac_t(&out), "{name}: flac -t");
        let (bits, decoded) = decode(&out);
        assert_eq!(bits, u32::from(*file_bits));
        assert_eq!(
            decoded.len(),
            FRAMES * CH,
            "{name}: exactly the requested duration"
        );
        assert!(
            decoded[..] == input[..decoded.len()],
            "{name}: decoded audio differs from the device's"
        );
        assert!(!Path::new(&format!("{}.part", out.display())).exists());
    }
}

#[test]
fn bad_devices_formats_and_outputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.flac");
    let conf = alsa_config(dir.path(), "", &[]);
    let base = |device: &str| {
        let mut c = agent();
        c.env("ALSA_CONFIG_PATH", &conf)
            .args(["record", "--device", device, "--duration", "1"]);
        c
    };
    let cases: Vec<(Command, &str)> = vec![
        (
            {
                let mut c = base("no_such_pcm");
                c.arg("--out").arg(&out);
                c
            },
            "no_such_pcm",
        ),
        (
            {
                let mut c = base("null");
                c.args(["--format", "U8", "--out"]).arg(&out);
                c
            },
            "--format \"U8\"",
        ),
        (
            {
                let mut c = base("null");
                c.args(["--channels", "12", "--out"]).arg(&out);
                c
            },
            "at most 8",
        ),
        (
            {
                let mut c = base("null");
                c.args(["--bits", "20", "--out"]).arg(&out);
                c
            },
            "20-bit",
        ),
        (
            {
                let mut c = base("null");
                c.arg("--out").arg(dir.path().join("missing/dir/x.flac"));
                c
            },
            "missing/dir/x.flac",
        ),
    ];
    for (mut cmd, expect) in cases {
        let o = run(&mut cmd);
        assert!(!o.status.success(), "{cmd:?} should fail");
        assert!(
            stderr(&o).contains(expect),
            "{cmd:?}: expected {expect:?} in {}",
            stderr(&o)
        );
    }
    std::fs::write(&out, b"precious").unwrap();
    let o = run(base("null").arg("--out").arg(&out));
    assert!(
        !o.status.success() && stderr(&o).contains("never overwritten"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
}

#[test]
fn kill_9_at_random_moments_loses_at_most_a_second() {
    kill_9_rounds("flac", 20, 0x2545_F491_4F6C_DD1D);
}

#[test]
fn kill_9_during_wav_takes_loses_at_most_a_second() {
    kill_9_rounds("wav", 8, 0x9E37_79B9_7F4A_7C15);
}

fn kill_9_rounds(ext: &str, rounds: usize, seed: u64) {
    const RATE: u64 = 48_000;
    const CH: u16 = 2;
    let dir = tempfile::tempdir().unwrap();
    let reference = SyntheticSource::new(RATE as u32, CH, 1024, Signal::Demo, 1);
    let mut x: u64 = seed;
    let mut ran = Vec::new();
    for round in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let after = Duration::from_millis(300 + x % 2200);
        let out = dir.path().join(format!("take-{round}.{ext}"));
        let started = Instant::now();
        let mut child = agent()
            .args([
                "record",
                "--device",
                "synthetic:demo",
                "--channels",
                "2",
                "--duration",
                "60",
                "--out",
            ])
            .arg(&out)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        child.kill().unwrap(); // SIGKILL
        ran.push(started.elapsed().as_secs_f64());
        child.wait().unwrap();
        assert!(
            !out.exists(),
            "an interrupted take keeps its .part name until recovered"
        );
    }
    let o = run(agent().arg("recover").arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    let listing = String::from_utf8_lossy(&o.stdout);
    assert_eq!(listing.matches("recovered").count(), rounds, "{listing}");

    // Check every recovered take against the deterministic source.
    for (round, after) in ran.into_iter().enumerate() {
        let out = dir.path().join(format!("take-{round}.{ext}"));
        assert!(ext != "flac" || flac_t(&out), "take {round}: flac -t");
        let (_, decoded) = decode(&out);
        let frames = decoded.len() / usize::from(CH);
        for (i, s) in decoded.iter().enumerate() {
            let (n, c) = ((i / usize::from(CH)) as u64, (i % usize::from(CH)) as u16);
            assert_eq!(
                *s,
                reference.sample(c, n) >> 8,
                "take {round}: sample {n} ch {c}"
            );
        }
        // The process ran `after` seconds (start-up included); at most 1 s of it may be lost.
        let kept = frames as f64 / RATE as f64;
        assert!(
            kept >= after - 1.0,
            "take {round}: kept {kept:.3} s of at most {after:.3} s"
        );
    }
    let o = run(agent().arg("recover").arg(dir.path()));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to recover"));
}

#[test]
fn a_full_disk_stops_the_take_with_a_clear_error_and_keeps_the_audio() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_fs) = SmallFs::mount(&mnt, "600k") else {
        panic!("mounting a tmpfs failed: this test needs root, as CI has");
    };
    for ext in ["flac", "wav"] {
        let out = mnt.join(format!("full.{ext}"));
        // Noise barely compresses: 2 ch × 24 bit × 48 kHz ≈ 280 KiB/s fills 600 KiB in ~2 s.
        let o = run(agent()
            .args(["record", "--device", "synthetic:noise", "--channels", "2"])
            .args(["--duration", "30", "--out"])
            .arg(&out));
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(
            err.contains("audio captured so far is kept") && err.contains("No space left"),
            "{ext}: {err}"
        );
        assert!(out.exists(), "the take keeps its final name: {err}");
        assert!(
            ext != "flac" || flac_t(&out),
            "the kept audio is a valid file"
        );
        let (_, decoded) = decode(&out);
        assert!(
            decoded.len() > 48_000,
            "{ext}: about two seconds survive, not nothing"
        );
        // Room for the next format's take.
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn segments_split_a_take_at_exact_samples() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("long.flac");
    let o = run(agent()
        .args([
            "record",
            "--device",
            "synthetic:demo",
            "--channels",
            "2",
            "--duration",
            "2.5",
            "--segment",
            "1",
            "--out",
        ])
        .arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = SyntheticSource::new(48_000, 2, 1024, Signal::Demo, 1);
    let mut next = 0u64;
    for (i, expected_frames) in [(1, 48_000), (2, 48_000), (3, 24_000)] {
        let path = dir.path().join(format!("long.{i:04}.flac"));
        assert!(flac_t(&path), "segment {i}");
        let (info, comments) = rakkr_flac::read_stream_info(&path).unwrap();
        assert_eq!(info.total_samples, expected_frames, "segment {i}");
        assert_eq!(comments.get("RAKKR_SEGMENT"), Some(i.to_string().as_str()));
        assert_eq!(
            comments.get("RAKKR_SEGMENT_START_FRAME"),
            Some(next.to_string().as_str())
        );
        let (_, decoded) = decode(&path);
        for (k, s) in decoded.iter().enumerate() {
            let (n, c) = (next + (k / 2) as u64, (k % 2) as u16);
            assert_eq!(
                *s,
                reference.sample(c, n) >> 8,
                "segment {i}, take sample {n}"
            );
        }
        next += expected_frames;
    }
    assert!(!dir.path().join("long.0004.flac").exists());
    assert!(!out.exists(), "a segmented take has only numbered files");
}

#[test]
fn the_agent_recovers_interrupted_takes_when_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let takes = dir.path().join("recordings");
    std::fs::create_dir(&takes).unwrap();
    // A take cut off by SIGKILL.
    kill_after(
        agent()
            .args([
                "record",
                "--device",
                "synthetic:noise",
                "--channels",
                "2",
                "--duration",
                "30",
                "--out",
            ])
            .arg(takes.join("cut.flac")),
        Duration::from_millis(1500),
    );
    assert!(takes.join("cut.flac.part").exists());

    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"recovering\"\nrecordings_dir = \"{}\"\nrealtime = false\n[mqtt]\nport = 1\n",
            takes.display()
        ),
    )
    .unwrap();
    // No broker on port 1: the agent keeps retrying the link; recovery comes first.
    let mut agent_run = agent()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !takes.join("cut.flac").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the take was not recovered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent_run.kill().unwrap();
    let output = agent_run.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("recovered an interrupted take"));
    assert!(flac_t(&takes.join("cut.flac")));
    assert!(!takes.join("cut.flac.part").exists());
}

/// An ALSA PCM `name` replaying 60,000 frames of `channels` full-range S16
/// samples: the config to use and the samples.
fn s16_device(dir: &Path, name: &str, channels: usize, seed: u64) -> (PathBuf, Vec<i32>) {
    let values: Vec<i32> = full_range_samples(16, 60_000 * channels, seed)
        .into_iter()
        .map(|v| v as i32)
        .collect();
    let raw: Vec<u8> = values
        .iter()
        .flat_map(|v| (*v as i16).to_le_bytes())
        .collect();
    let input = dir.join(format!("{name}.raw"));
    std::fs::write(&input, raw).unwrap();
    (alsa_config(dir, "", &[(name, &input)]), values)
}

#[test]
fn channel_maps_route_and_mix_device_channels() {
    let dir = tempfile::tempdir().unwrap();
    const CH: usize = 10;
    let (conf, values) = s16_device(dir.path(), "ten", CH, 5);
    let record_ten = |map: &str, out: &Path| {
        run(agent()
            .env("ALSA_CONFIG_PATH", &conf)
            .args([
                "record",
                "--device",
                "ten",
                "--channels",
                "10",
                "--format",
                "S16_LE",
                "--bits",
                "16",
            ])
            .args(["--duration", "1", "--map", map, "--out"])
            .arg(out))
    };
    let out = dir.path().join("mapped.flac");
    let o = record_ten("10,3,1+2,5,5", &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(flac_t(&out));
    let (_, decoded) = decode(&out);
    assert_eq!(decoded.len(), 48_000 * 5);
    for (f, got) in decoded.chunks_exact(5).enumerate() {
        let d = &values[f * CH..(f + 1) * CH];
        let mix = i64::from(d[0]) + i64::from(d[1]);
        let mix = ((mix + mix.signum()) / 2) as i32;
        assert_eq!(got, [d[9], d[2], mix, d[4], d[4]], "frame {f}");
    }
    let (_, comments) = rakkr_flac::read_stream_info(&out).unwrap();
    assert_eq!(comments.get("RAKKR_CHANNEL_MAP"), Some("10,3,1+2,5,5"));

    let o = record_ten("11", &dir.path().join("bad.flac"));
    assert!(
        !o.status.success() && stderr(&o).contains("channel 11 does not exist"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn one_capture_feeds_several_takes_on_disjoint_channels() {
    let dir = tempfile::tempdir().unwrap();
    const CH: usize = 6;
    let (conf, values) = s16_device(dir.path(), "six", CH, 9);
    let (a, b, c) = (
        dir.path().join("a.flac"),
        dir.path().join("b.flac"),
        dir.path().join("c.flac"),
    );
    let record = |first: &Path, extra: &[String]| {
        run(agent()
            .env("ALSA_CONFIG_PATH", &conf)
            .args([
                "record",
                "--device",
                "six",
                "--channels",
                "6",
                "--format",
                "S16_LE",
                "--bits",
                "16",
            ])
            .args(["--duration", "1", "--map", "2,1", "--out"])
            .arg(first)
            .args(extra))
    };
    let o = record(
        &a,
        &[
            "--also".into(),
            format!("{}=3", b.display()),
            "--also".into(),
            format!("{}=5,6", c.display()),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for (path, pick) in [(&a, vec![1usize, 0]), (&b, vec![2]), (&c, vec![4, 5])] {
        assert!(flac_t(path));
        let (_, decoded) = decode(path);
        assert_eq!(decoded.len(), 48_000 * pick.len(), "{}", path.display());
        let values = &values;
        let pick = &pick;
        let expected: Vec<i32> = (0..48_000)
            .flat_map(|f| pick.iter().map(move |&ch| values[f * CH + ch]))
            .collect();
        assert!(decoded == expected, "{} differs", path.display());
    }

    let o = record(
        &dir.path().join("e.flac"),
        &[
            "--also".into(),
            format!("{}=2", dir.path().join("d.flac").display()),
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("device channel 2 is in more than one take"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn wide_captures_go_into_one_wav_file_and_flac_says_so() {
    let dir = tempfile::tempdir().unwrap();
    const CH: usize = 12;
    let (conf, input) = s16_device(dir.path(), "wide", CH, 12);
    let record = |out: &Path, extra: &[&str]| {
        run(agent()
            .env("ALSA_CONFIG_PATH", &conf)
            .args(["record", "--device", "wide", "--channels", "12"])
            .args(["--format", "S16_LE", "--duration", "1", "--bits", "16"])
            .args(["--node", "studio-a", "--job", "job-42"])
            .args(extra)
            .arg("--out")
            .arg(out))
    };
    let flac = dir.path().join("wide.flac");
    let o = record(&flac, &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("at most 8") && e.contains("WAV"), "{e}");
    assert!(!flac.exists());

    for (name, codec) in [("wide.wav", None), ("wide-rf64.wav", Some("rf64"))] {
        let out = dir.path().join(name);
        let extra: Vec<&str> = codec.map(|c| vec!["--codec", c]).unwrap_or_default();
        let o = record(&out, &extra);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let reader = rakkr_wav::WavReader::open(&out).unwrap();
        assert_eq!(reader.header().format.channels, CH as u16);
        assert_eq!(reader.header().rf64, codec.is_some(), "{name}");
        let tag = |k: &str| {
            reader
                .header()
                .tags
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(tag("RAKKR_FRAMES").as_deref(), Some("48000"), "{name}");
        assert_eq!(tag("RAKKR_DEVICE").as_deref(), Some("wide"));
        assert_eq!(tag("RAKKR_NODE").as_deref(), Some("studio-a"));
        assert_eq!(tag("RAKKR_JOB").as_deref(), Some("job-42"));
        let utc = tag("RAKKR_START_UTC").unwrap();
        assert!(utc.len() == 27 && utc.ends_with('Z'), "{utc}");
        assert!(matches!(
            tag("RAKKR_START_CLOCK").as_deref(),
            Some("device" | "host")
        ));
        let (bits, decoded) = decode(&out);
        assert_eq!(bits, 16);
        assert_eq!(decoded.len(), 48_000 * CH, "{name}: exactly one second");
        assert!(decoded[..] == input[..decoded.len()], "{name}: bit-exact");
    }
}

#[test]
fn a_file_source_replays_flac_and_wav_through_the_engine_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    const CH: usize = 3;
    const FRAMES: usize = 36_000; // 0.75 s at 48 kHz, replayed in real time
    let input: Vec<i32> = full_range_samples(24, FRAMES * CH, 77)
        .into_iter()
        .map(|v| v as i32)
        .collect();
    let raw = dir.path().join("in.raw");
    let bytes: Vec<u8> = input
        .iter()
        .flat_map(|v| v.to_le_bytes()[..3].to_vec())
        .collect();
    std::fs::write(&raw, bytes).unwrap();
    // The input file is made by the reference encoder.
    let in_flac = dir.path().join("in.flac");
    let made = Command::new("flac")
        .args([
            "-s",
            "--force-raw-format",
            "--endian=little",
            "--sign=signed",
        ])
        .args(["--channels=3", "--bps=24", "--sample-rate=48000", "-o"])
        .arg(&in_flac)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(made.success());

    let out_wav = dir.path().join("replayed.wav");
    let o = run(agent()
        .args(["record", "--device"])
        .arg(format!("file:{}", in_flac.display()))
        .arg("--out")
        .arg(&out_wav));
    assert!(o.status.success(), "{}", stderr(&o));
    let (bits, decoded) = decode(&out_wav);
    assert_eq!(bits, 24);
    assert!(
        decoded == input,
        "FLAC file -> engine -> WAV is bit-exact, whole file"
    );

    // And back: the WAV replayed into FLAC.
    let out_flac = dir.path().join("again.flac");
    let o = run(agent()
        .args(["record", "--device"])
        .arg(format!("file:{}", out_wav.display()))
        .arg("--out")
        .arg(&out_flac));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(flac_t(&out_flac));
    assert!(decode(&out_flac).1 == input, "WAV file -> engine -> FLAC");

    for (device, expect) in [
        (
            format!("file:{}", dir.path().join("missing.flac").display()),
            "No such file",
        ),
        (format!("file:{}", raw.display()), "neither FLAC nor WAV"),
    ] {
        let o = run(agent()
            .args(["record", "--device", &device, "--out"])
            .arg(dir.path().join("x.flac")));
        assert!(!o.status.success());
        assert!(stderr(&o).contains(expect), "{}", stderr(&o));
    }
}

#[test]
fn interrupted_takes_are_recovered_by_content_whatever_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("take.rf64");
    kill_after(
        agent()
            .args(["record", "--device", "synthetic:demo", "--channels", "3"])
            .args(["--duration", "30", "--codec", "rf64", "--out"])
            .arg(&out),
        Duration::from_millis(1500),
    );
    assert!(!out.exists());
    let o = run(agent().arg("recover").arg(dir.path()));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("recovered"));
    let r = rakkr_wav::WavReader::open(&out).unwrap();
    assert!(r.header().rf64);
    assert!(
        r.header().data_bytes.unwrap() > 48_000 * 3 * 3 / 2,
        "at least half a second kept"
    );
}
