//! `rakkr-agent`: the appliance agent's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rakkr_agent::clock::SystemClock;
use rakkr_agent::run::AgentHandles;
use rakkr_agent::{AGENT_VERSION, AgentConfig};
use tokio_util::sync::CancellationToken;

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
    init_logging();
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
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
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

async fn cancel_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAKKR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
