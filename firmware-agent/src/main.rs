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
