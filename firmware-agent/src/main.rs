//! `rakkr-agent`: the appliance agent's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rakkr_agent::clock::SystemClock;
use rakkr_agent::run::AgentHandles;
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
    /// List ALSA capture devices with their channel counts, rates and formats.
    Devices,
}

fn main() -> ExitCode {
    rakkr_service::init_logging("info");
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rakkr-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Devices => {
            let devices = rakkr_agent::source::alsa::list_capture_devices()
                .context("cannot list capture devices")?;
            print!("{}", format_devices(&devices));
            Ok(())
        }
        Command::Run { config } => {
            let settings = AgentConfig::load(&config)
                .and_then(AgentConfig::validate)
                .with_context(|| format!("bad configuration in {}", config.display()))?;
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
