//! `rakkr-server`: the fleet server's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rakkr_server::RunningServer;
use rakkr_server::clock::SystemClock;
use rakkr_server::config::{Overrides, ServerConfig};
use rakkr_server::demo;

#[derive(Parser)]
#[command(name = "rakkr-server", version, about = "Rakkr fleet server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fleet server: embedded MQTT broker, store and web console.
    Serve(ServeArgs),
    /// Run the server with simulated appliances and print the console URL.
    Demo {
        #[command(flatten)]
        serve: ServeArgs,
        /// How many simulated appliances to start.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
        nodes: u16,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (TOML). RAKKR_SERVER_* environment variables override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory [default: ./rakkr-data; demo: ./rakkr-demo-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Embedded MQTT broker listen address [default: 127.0.0.1:1883].
    #[arg(long)]
    mqtt_addr: Option<SocketAddr>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            http_addr: self.http_addr,
            mqtt_addr: self.mqtt_addr,
        }
    }
}

fn main() -> ExitCode {
    rakkr_service::init_logging("info,rumqttd=warn");
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rakkr-server: error: {}", rakkr_service::describe(&*e));
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (args, demo_nodes) = match &cli.command {
        Command::Serve(args) => (args, None),
        Command::Demo { serve, nodes } => (serve, Some(usize::from(*nodes))),
    };
    let config = ServerConfig::load(args.config.as_deref()).context("bad configuration")?;
    let mut overrides = args.overrides();
    if demo_nodes.is_some() {
        // The demo must start on any machine: keep the user's data apart, and
        // move off default ports that something else already holds.
        overrides
            .data_dir
            .get_or_insert_with(|| PathBuf::from("./rakkr-demo-data"));
        if overrides.http_addr.is_none() && args.config.is_none() {
            overrides.http_addr = Some(demo::free_or_any(config.http.addr));
        }
        if overrides.mqtt_addr.is_none() && args.config.is_none() {
            overrides.mqtt_addr = Some(demo::free_or_any(config.mqtt.addr));
        }
    }
    let settings = config.validate(&overrides).context("bad configuration")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = rakkr_service::shutdown_on_signal();
        let clock = Arc::new(SystemClock);
        let server = RunningServer::start(settings, clock.clone(), shutdown.clone())
            .await
            .context("cannot start the server")?;
        let url = format!("http://{}/", server.http_addr);
        let mut appliances = None;
        match demo_nodes {
            Some(n) => {
                appliances = Some(demo::spawn_appliances(
                    n,
                    (&server.mqtt_host, server.mqtt_port),
                    clock,
                    shutdown.clone(),
                ));
                println!("Rakkr demo: fleet server with {n} simulated appliances.");
                println!("  Console:  {url}");
                println!(
                    "  MQTT:     mqtt://{host}:{port}  (try: mosquitto_sub -h {host} -p {port} -t 'rakkr/v1/#' -v)",
                    host = server.mqtt_host,
                    port = server.mqtt_port,
                );
                println!("Press Ctrl-C to stop.");
            }
            None => println!(
                "Rakkr fleet server: console {url}, MQTT {}:{}",
                server.mqtt_host, server.mqtt_port
            ),
        }
        if let Some(mut set) = appliances {
            while set.join_next().await.is_some() {}
        }
        server.wait().await;
        Ok(())
    })
}
