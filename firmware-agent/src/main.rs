//! `rakkr-agent`: the appliance agent's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rakkr_agent::clock::SystemClock;
use rakkr_agent::run::AgentHandles;
use rakkr_agent::take_file::Codec;
use rakkr_agent::{AGENT_VERSION, AgentConfig};

#[derive(Parser)]
#[command(name = "rakkr-agent", version = AGENT_VERSION, about = "Rakkr appliance agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture, meter and report to the fleet server until stopped (SIGINT/SIGTERM).
    Run {
        /// Agent configuration (TOML). Environment variables RAKKR_AGENT_* override it.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Exchange a single-use enrollment token for this node's identity and
    /// credential, kept in `{state_dir}/identity.json`.
    Enroll {
        #[arg(long, short)]
        config: PathBuf,
        /// The fleet server's HTTP address.
        #[arg(long)]
        server: String,
        /// The token from `rakkr-server enroll-token create`.
        #[arg(long, env = "RAKKR_ENROLL_TOKEN")]
        token: String,
        /// Replace an identity this node already has.
        #[arg(long)]
        force: bool,
    },
    /// Get a new credential from the server (authenticated by the current one).
    RotateCredential {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        server: String,
    },
    /// List ALSA capture devices with their channel counts, rates and formats.
    Devices,
    /// Record one take to a FLAC or WAV/RF64 file with the agent's engine, printing meters.
    Record(Box<RecordArgs>),
    /// Complete interrupted takes (*.part, FLAC or WAV) in a directory.
    Recover {
        /// Directory holding the takes.
        dir: PathBuf,
    },
    /// A/B image updates (the configuration's `[update]`).
    #[command(subcommand)]
    Update(UpdateCommand),
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// Write a signed image into the slot not running, check it, and stage it for one
    /// trial boot. Reboot to try it; the agent commits it once it reaches the fleet.
    Install {
        #[arg(long, short)]
        config: PathBuf,
        /// The root filesystem image.
        image: PathBuf,
        /// Its minisign signature (default: IMAGE.minisig).
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// Print the booted slot and what the boot environment will do next.
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Commit the running trial now (the running agent does this once it reaches the fleet).
    Commit {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct RecordArgs {
    /// ALSA PCM name (see `rakkr-agent devices`), `synthetic[:demo|tone|noise|silence|clipping|flatline]`
    /// for a generated test signal paced in real time, or `file:PATH` to replay a FLAC or
    /// WAV file in real time (its channels and rate are used).
    #[arg(long)]
    device: String,
    #[arg(long, default_value_t = 2)]
    channels: u16,
    #[arg(long, default_value_t = 48_000)]
    rate: u32,
    /// Capture format: S16_LE, S24_3LE, S24_LE, S32_LE or FLOAT_LE.
    #[arg(long, default_value = "S32_LE")]
    format: String,
    /// Seconds to record; without it, until Ctrl-C.
    #[arg(long)]
    duration: Option<f64>,
    /// The file to write (never overwritten): FLAC, or WAV when it ends in .wav.
    #[arg(long)]
    out: PathBuf,
    /// File format for every take: flac, wav (RF64 past 4 GiB) or rf64 (RF64
    /// from the start). Default: from each output's extension.
    #[arg(long)]
    codec: Option<String>,
    /// Split the take into files of this many seconds: OUT's stem + .0001, .0002, …
    #[arg(long)]
    segment: Option<f64>,
    /// Channels into the file, 1-based: `3,4` (pair), `4,3` (swapped), `5,5`
    /// (mono to stereo), `1+2` (mix). Default: all, in order.
    #[arg(long)]
    map: Option<String>,
    /// Another take from the same capture: OUT=MAP (repeatable). Takes use
    /// disjoint device channels.
    #[arg(long)]
    also: Vec<String>,
    /// Bits per sample in the file: 16, 24 or 32.
    #[arg(long, default_value_t = 24)]
    bits: u8,
    /// FLAC compression level, 0-8.
    #[arg(long, default_value_t = 5)]
    compression: u8,
    /// Frames per device period (default: a power of two near 1/12 s at the rate).
    #[arg(long)]
    period: Option<u32>,
    /// Channel names for the file's tags, comma-separated.
    #[arg(long)]
    channel_names: Option<String>,
    /// Node id for the files' tags (RAKKR_NODE).
    #[arg(long)]
    node: Option<String>,
    /// Job id for the files' tags (RAKKR_JOB).
    #[arg(long)]
    job: Option<String>,
}

fn main() -> ExitCode {
    rakkr_service::init_logging("info");
    rakkr_mqtt::install_tls_provider();
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rakkr-agent: error: {}", rakkr_service::describe(&*e));
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Record(args) => record(*args),
        Command::Recover { dir } => {
            let results = rakkr_agent::record::recover_dir(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?;
            let mut failed = 0;
            for r in &results {
                match &r.report {
                    Ok(rep) => println!(
                        "recovered {}: {} samples per channel kept, {} bytes of torn tail cut",
                        r.path.display(),
                        rep.samples,
                        rep.bytes_cut
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("rakkr-agent: cannot recover {}: {e}", r.path.display());
                    }
                }
            }
            if results.is_empty() {
                println!("nothing to recover in {}", dir.display());
            }
            anyhow::ensure!(failed == 0, "{failed} take(s) could not be recovered");
            Ok(())
        }
        Command::Devices => {
            let devices = rakkr_agent::source::alsa::list_capture_devices()
                .context("cannot list capture devices")?;
            print!("{}", format_devices(&devices));
            Ok(())
        }
        Command::Enroll {
            config,
            server,
            token,
            force,
        } => {
            let settings = load_settings(&config)?;
            let state_dir = state_dir_of(&settings)?;
            if !force && rakkr_agent::identity::load(state_dir)?.is_some() {
                anyhow::bail!(
                    "{} exists: this node is enrolled already (use --force to replace it)",
                    rakkr_agent::identity::path(state_dir).display()
                );
            }
            let pin = token.trim().split('.').nth(3);
            let answer = call_server(
                http_client(&server, pin, None)?
                    .post(format!("{}/api/v1/enroll", server.trim_end_matches('/')))
                    .json(&serde_json::json!({"token": token, "node": settings.node_id})),
            )?;
            // A token that pins the fleet CA: trust the CA handed over only if
            // it is that one.
            if let Some(pin) = pin {
                let pem = answer["ca_pem"]
                    .as_str()
                    .context("the token pins a CA, but the server sent none")?;
                let found = rakkr_agent::identity::ca_fingerprint(pem)?;
                anyhow::ensure!(
                    found.eq_ignore_ascii_case(pin),
                    "the server's CA ({found}) is not the one the token names ({pin}): not trusted"
                );
                rakkr_agent::identity::store_ca(state_dir, pem)?;
            }
            save_identity(state_dir, &settings, answer)
        }
        Command::RotateCredential { config, server } => {
            let settings = load_settings(&config)?;
            let state_dir = state_dir_of(&settings)?;
            let current = rakkr_agent::identity::load(state_dir)?
                .context("this node has no identity yet: run `rakkr-agent enroll` first")?;
            let ca = state_dir.join(rakkr_agent::identity::CA_FILE);
            let answer = call_server(
                http_client(&server, None, ca.exists().then_some(ca.as_path()))?
                    .post(format!(
                        "{}/api/v1/node/credential/rotate",
                        server.trim_end_matches('/')
                    ))
                    .basic_auth(current.node.as_str(), Some(&current.credential)),
            )?;
            save_identity(state_dir, &settings, answer)
        }
        Command::Update(command) => update(command),
        Command::Run { config } => {
            let settings = load_settings(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async move {
                let shutdown = rakkr_service::shutdown_on_signal();
                rakkr_agent::run(
                    settings,
                    Arc::new(SystemClock),
                    AgentHandles::default(),
                    shutdown,
                )
                .await
                .context("agent stopped")
            })
        }
    }
}

fn update(command: UpdateCommand) -> anyhow::Result<()> {
    use rakkr_update::InstallProgress;
    let settings_of = |config: &std::path::Path| -> anyhow::Result<_> {
        // No identity needed: an appliance not enrolled yet can still be updated.
        let settings = AgentConfig::load(config)
            .and_then(AgentConfig::validate)
            .with_context(|| format!("bad configuration in {}", config.display()))?;
        settings.update.with_context(|| {
            format!(
                "{} has no [update] section: this is not an A/B appliance",
                config.display()
            )
        })
    };
    match command {
        UpdateCommand::Install {
            config,
            image,
            signature,
        } => {
            let settings = settings_of(&config)?;
            let signature = signature.unwrap_or_else(|| {
                let mut s = image.clone().into_os_string();
                s.push(".minisig");
                PathBuf::from(s)
            });
            let cancel = rakkr_service::stop_flag_on_signal();
            // A line per tenth of each pass.
            let mut shown = ("", u64::MAX);
            let manifest = rakkr_agent::update::install_file(
                &settings,
                &image,
                &signature,
                &cancel,
                &mut |p| {
                    let (what, done, total) = match p {
                        InstallProgress::Writing { written, total } => ("written", written, total),
                        InstallProgress::Checking { read, total } => ("read back", read, total),
                        InstallProgress::Staged => return,
                    };
                    let tenth = done * 10 / total.max(1);
                    if (what, tenth) != shown {
                        shown = (what, tenth);
                        eprintln!("{what}: {done} of {total} bytes");
                    }
                },
            )
            .with_context(|| format!("cannot install {}", image.display()))?;
            let booted = settings.booted_slot()?;
            println!(
                "version {} ({} bytes) is in slot {} and will be tried at the next boot; \
                 slot {booted} stays the fallback",
                manifest.version,
                manifest.size,
                booted.other()
            );
            Ok(())
        }
        UpdateCommand::Status { config } => {
            let settings = settings_of(&config)?;
            let booted = settings.booted_slot()?;
            let line = settings.assess()?;
            println!("booted slot {booted}; {line}");
            Ok(())
        }
        UpdateCommand::Commit { config } => {
            let settings = settings_of(&config)?;
            let slot = rakkr_agent::update::commit_trial(&settings)?;
            println!("committed: slot {slot} boots from now on");
            Ok(())
        }
    }
}

fn load_settings(config: &std::path::Path) -> anyhow::Result<rakkr_agent::AgentSettings> {
    let settings = AgentConfig::load(config)
        .and_then(AgentConfig::validate)
        .with_context(|| format!("bad configuration in {}", config.display()))?;
    settings
        .with_identity()
        .with_context(|| format!("cannot use the identity for {}", config.display()))
}

fn state_dir_of(settings: &rakkr_agent::AgentSettings) -> anyhow::Result<&std::path::Path> {
    settings
        .state_dir
        .as_deref()
        .context("the configuration has no state_dir: the identity is kept there")
}

/// An HTTP client for `server`: over HTTPS it trusts only the fleet CA, the
/// one a token pins (`pin`) or the one kept at enrollment (`ca_file`).
fn http_client(
    server: &str,
    pin: Option<&str>,
    ca_file: Option<&std::path::Path>,
) -> anyhow::Result<reqwest::blocking::Client> {
    if !server.starts_with("https://") {
        return Ok(reqwest::blocking::Client::new());
    }
    let tls = match (pin, ca_file) {
        (Some(pin), _) => rakkr_mqtt::tls_pinned(pin)?,
        (None, Some(ca)) => rakkr_mqtt::tls_trusting(
            &std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?,
        )?,
        (None, None) => anyhow::bail!(
            "{server} is HTTPS: use a token that pins the fleet CA (or enroll first, which keeps the CA)"
        ),
    };
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .context("cannot set up HTTPS")
}

/// Send a request; the JSON answer, or the server's problem detail as the error.
fn call_server(request: reqwest::blocking::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    let response = request.send().context("cannot reach the fleet server")?;
    let status = response.status();
    let value: serde_json::Value = response.json().unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "the server refused ({status}): {}",
            value["detail"].as_str().unwrap_or("no detail")
        );
    }
    Ok(value)
}

fn save_identity(
    state_dir: &std::path::Path,
    settings: &rakkr_agent::AgentSettings,
    answer: serde_json::Value,
) -> anyhow::Result<()> {
    let identity: rakkr_agent::identity::Identity =
        serde_json::from_value(answer).context("unexpected answer from the server")?;
    anyhow::ensure!(
        identity.node == settings.node_id,
        "the server answered for node {}, not {}",
        identity.node,
        settings.node_id
    );
    rakkr_agent::identity::store(state_dir, &identity)?;
    println!(
        "node {} enrolled; identity in {}",
        identity.node,
        rakkr_agent::identity::path(state_dir).display()
    );
    Ok(())
}

fn format_devices(devices: &[rakkr_agent::source::alsa::DeviceInfo]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if devices.is_empty() {
        out.push_str("no capture devices found\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<36} {:>9} {:>15}  {:<34} DESCRIPTION",
        "DEVICE", "CHANNELS", "RATES (Hz)", "FORMATS"
    );
    for d in devices {
        let (channels, rates, formats) = match &d.capabilities {
            Some(c) => (
                format!("{}-{}", c.channels.0, c.channels.1),
                format!("{}-{}", c.rates.0, c.rates.1),
                c.formats
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            None => (
                "-".into(),
                "-".into(),
                "(cannot open: busy or absent)".into(),
            ),
        };
        let _ = writeln!(
            out,
            "{:<36} {channels:>9} {rates:>15}  {formats:<34} {}",
            d.name, d.description
        );
    }
    out
}

fn record(args: RecordArgs) -> anyhow::Result<()> {
    use rakkr_agent::record::{SessionOptions, TakeSpec, record_takes};
    use rakkr_agent::source::alsa::{AlsaRequest, AlsaSource};
    use rakkr_agent::source::{CaptureSource, FileSource, SampleFormat, Signal, SyntheticSource};

    anyhow::ensure!(
        (1..=512).contains(&args.channels),
        "--channels must be 1-512"
    );
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    let period = args
        .period
        .unwrap_or_else(|| rakkr_agent::source::default_period_frames(args.rate));
    anyhow::ensure!((16..=16384).contains(&period), "--period must be 16-16384");
    let segment = match args.segment {
        Some(s) if s.is_finite() && s >= 1.0 => Some(std::time::Duration::from_secs_f64(s)),
        Some(_) => anyhow::bail!("--segment must be at least one second"),
        None => None,
    };
    let duration = match args.duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(std::time::Duration::from_secs_f64(s)),
        Some(_) => anyhow::bail!("--duration must be a positive number of seconds"),
        None => None,
    };
    let source: Box<dyn CaptureSource> = if let Some(file) = args.device.strip_prefix("file:") {
        // Channels, rate and resolution are the file's.
        Box::new(FileSource::open(
            std::path::Path::new(file),
            period as usize,
        )?)
    } else {
        match args.device.strip_prefix("synthetic") {
            Some(kind) => {
                let signal = match kind.trim_start_matches(':') {
                    "" | "demo" => Signal::Demo,
                    "tone" => Signal::Tone {
                        freq_hz: 1000.0,
                        level_dbfs: -12.0,
                    },
                    "noise" => Signal::Noise { level_dbfs: -20.0 },
                    "silence" => Signal::Silence,
                    "clipping" => Signal::Clipping,
                    "flatline" => Signal::Flatline,
                    other => anyhow::bail!(
                        "unknown synthetic signal {other:?}: use demo, tone, noise, silence, clipping or flatline"
                    ),
                };
                Box::new(SyntheticSource::new(
                    args.rate,
                    args.channels,
                    period as usize,
                    signal,
                    1,
                ))
            }
            None => {
                let format = SampleFormat::parse(&args.format).with_context(|| {
                    format!(
                        "--format {:?} is not one of S16_LE, S24_3LE, S24_LE, S32_LE, FLOAT_LE",
                        args.format
                    )
                })?;
                Box::new(AlsaSource::open(&AlsaRequest {
                    device: args.device.clone(),
                    channels: args.channels,
                    rate: args.rate,
                    format,
                    period_frames: period,
                    periods: 4,
                })?)
            }
        }
    };
    // A file source brings its own channel count and rate.
    let device_channels = usize::from(source.format().channels);
    let rate = f64::from(source.format().sample_rate);
    let map = args
        .map
        .as_deref()
        .map(|m| rakkr_agent::channel_map::ChannelMap::parse(m, device_channels))
        .transpose()?;
    let mut tags = vec![("RAKKR_DEVICE".to_owned(), args.device.clone())];
    for (key, value) in [
        ("RAKKR_CHANNELS", &args.channel_names),
        ("RAKKR_NODE", &args.node),
        ("RAKKR_JOB", &args.job),
    ] {
        if let Some(v) = value {
            anyhow::ensure!(
                v.len() <= 256 && !v.contains('\n'),
                "{key}: at most 256 characters on one line"
            );
            tags.push((key.to_owned(), v.clone()));
        }
    }
    let codec_for = |out: &std::path::Path| -> anyhow::Result<Codec> {
        Ok(match args.codec.as_deref() {
            None => Codec::for_path(out, args.compression),
            Some("flac") => Codec::Flac {
                compression_level: args.compression,
            },
            Some("wav") => Codec::Wav { always_rf64: false },
            Some("rf64") => Codec::Wav { always_rf64: true },
            Some(other) => anyhow::bail!("--codec {other:?} is not one of flac, wav, rf64"),
        })
    };
    let spec = TakeSpec {
        out: args.out.clone(),
        bits: args.bits,
        codec: codec_for(&args.out)?,
        duration,
        segment,
        map,
        tags,
        sync_every: std::time::Duration::from_millis(500),
    };
    // More takes from the same capture, each with its own channels.
    let mut specs = vec![spec.clone()];
    for also in &args.also {
        let (out, map) = also
            .split_once('=')
            .with_context(|| format!("--also {also:?}: write OUT=MAP, e.g. room.flac=5,6"))?;
        specs.push(TakeSpec {
            out: PathBuf::from(out),
            codec: codec_for(std::path::Path::new(out))?,
            map: Some(rakkr_agent::channel_map::ChannelMap::parse(
                map,
                device_channels,
            )?),
            ..spec.clone()
        });
    }
    let options = SessionOptions {
        // Printed twice a second.
        meters: rakkr_agent::capture::MeterRates {
            local: std::time::Duration::from_millis(100),
            telemetry: std::time::Duration::from_millis(500),
        },
        realtime: true,
    };
    let stop = rakkr_service::stop_flag_on_signal();
    let mut first_ms: Option<u64> = None;
    let results = record_takes(source, &specs, &options, &SystemClock, &stop, |frame| {
        let start = *first_ms.get_or_insert(
            frame
                .captured_at_ms
                .saturating_sub(u64::from(frame.window_ms)),
        );
        let elapsed = frame.captured_at_ms.saturating_sub(start) as f64 / 1000.0;
        let levels: Vec<String> = frame
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let clip = if c.clipped > 0 { " CLIP" } else { "" };
                format!("{}:{:>6.1}{clip}", i + 1, c.peak_dbfs.max(-99.9))
            })
            .collect();
        eprintln!("rec {elapsed:>7.1} s  peak dBFS  {}", levels.join("  "));
    })?;
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(summary) => {
                for (path, file) in &summary.files {
                    println!(
                        "{}: {:.2} s ({} samples per channel), {} bytes",
                        path.display(),
                        file.frames as f64 / rate,
                        file.frames,
                        file.bytes
                    );
                }
                println!(
                    "take: {:.2} s in {} file(s), {} xruns, {} gaps",
                    summary.frames as f64 / rate,
                    summary.files.len(),
                    summary.xruns,
                    summary.gaps.len()
                );
            }
            Err(e) => failures.push(e),
        }
    }
    if let Some(first) = failures.into_iter().next() {
        return Err(first.into());
    }
    Ok(())
}
