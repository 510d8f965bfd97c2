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
    /// Start, stop and list recording jobs on a running server (over its JSON API).
    #[command(subcommand)]
    Job(JobCommand),
    /// Create and list single-use enrollment tokens for appliances.
    #[command(subcommand, name = "enroll-token")]
    EnrollToken(TokenCommand),
    /// Manage a node's credential.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage operator accounts, through the running server's local admin
    /// socket (`{data_dir}/admin.sock`; only its owner or root may use it).
    User(UserArgs),
    /// Manage API tokens (bearer credentials for automation), through the
    /// running server's local admin socket.
    #[command(name = "api-token")]
    ApiToken(TokenArgs),
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
struct ApiArgs {
    /// The server's HTTP address.
    #[arg(
        long,
        env = "RAKKR_SERVER_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// An API token (`rakkr-server api-token create`) whose role allows the command.
    #[arg(long, env = "RAKKR_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ApiArgs {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let request = reqwest::blocking::Client::new().request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn get(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    fn post(&self, path: &str) -> reqwest::blocking::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }
}

#[derive(Subcommand)]
enum JobCommand {
    /// Start a recording on a node.
    Start {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        node: String,
        /// Length in seconds [default: until stopped].
        #[arg(long)]
        duration: Option<u32>,
        /// Channel map, e.g. `1,2` or `3` or `1+2` [default: every channel].
        #[arg(long)]
        channels: Option<String>,
        /// Capture device on the node.
        #[arg(long, default_value = "default")]
        device: String,
        /// A recording profile's name (see `GET /api/v1/profiles`) [default:
        /// the server's default profile, unless --codec, --bits or --segment spell one out].
        #[arg(long, conflicts_with_all = ["codec", "bits", "segment"])]
        profile: Option<String>,
        #[arg(long, value_parser = ["flac", "wav", "rf64"])]
        codec: Option<String>,
        #[arg(long, value_parser = clap::value_parser!(u8).range(16..=32))]
        bits: Option<u8>,
        /// Split into files of this many seconds.
        #[arg(long)]
        segment: Option<u32>,
    },
    /// Stop a recording (the take is kept), or cancel it.
    Stop {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        #[arg(long)]
        cancel: bool,
    },
    /// Show one job.
    Show {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// List the newest jobs.
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; it is printed once. Give it to `rakkr-agent enroll`.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this node may enroll with it (required to enroll an enrolled node again).
        #[arg(long)]
        node: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Tokens not used and not expired (without their secrets).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args)]
struct UserArgs {
    /// The server's configuration file, to find its data directory.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The server's data directory [default: from the configuration, ./rakkr-data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Args)]
struct TokenArgs {
    /// The server's configuration file, to find its data directory.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The server's data directory [default: from the configuration, ./rakkr-data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: ApiTokenCommand,
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Create a token acting with one role; it is printed once.
    Create {
        /// What it is for, e.g. "prometheus".
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        /// Lifetime in days [default: until revoked].
        #[arg(long)]
        ttl_days: Option<u64>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by its id: refused from now on.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add an account; its one-time password is printed once (changed at first login).
    Add {
        name: String,
        /// owner, admin, operator, technician, viewer or auditor.
        #[arg(long)]
        role: String,
    },
    /// List accounts.
    List,
    /// Give an account a new one-time password; its sessions end.
    ResetPassword { name: String },
    /// Disable an account; its sessions end.
    Disable { name: String },
    /// Enable a disabled account.
    Enable { name: String },
    /// End every session of an account, in every browser ("log out everywhere").
    EndSessions { name: String },
    /// Change an account's role.
    Role { name: String, role: String },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Revoke the node's credential: it is disconnected and refused from now on.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        node: String,
    },
}

/// Send a request to the JSON API and print the answer; API errors become
/// the error's detail.
fn call_api(request: reqwest::blocking::RequestBuilder) -> anyhow::Result<()> {
    let response = request.send().context("cannot reach the server")?;
    let status = response.status();
    let text = response.text().context("cannot read the server's answer")?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let detail = value["detail"].as_str().unwrap_or(text.trim());
        anyhow::bail!("{status}: {detail}");
    }
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn token_command(command: &TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { api, node, ttl } => call_api(
            api.post("/api/v1/enroll-tokens")
                .json(&serde_json::json!({ "node": node, "ttl_s": ttl })),
        ),
        TokenCommand::List { api } => call_api(api.get("/api/v1/enroll-tokens")),
    }
}

fn node_command(command: &NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Revoke { api, node } => {
            let node = rakkr_protocol::NodeId::new(node.as_str()).context("bad node id")?;
            call_api(api.post(&format!("/api/v1/nodes/{node}/credential/revoke")))
        }
    }
}

fn job_command(command: &JobCommand) -> anyhow::Result<()> {
    match command {
        JobCommand::Start {
            api,
            node,
            duration,
            channels,
            device,
            profile,
            codec,
            bits,
            segment,
        } => {
            let mut body = serde_json::json!({
                "node": node,
                "device": device,
                "channels": channels,
                "duration_s": duration,
            });
            if let Some(name) = profile {
                body["profile"] = serde_json::json!(name);
            } else if codec.is_some() || bits.is_some() || segment.is_some() {
                body["profile"] = serde_json::json!({
                    "codec": codec.as_deref().unwrap_or("flac"),
                    "bits": bits.unwrap_or(24),
                    "segment_s": segment,
                });
            }
            call_api(api.post("/api/v1/jobs").json(&body))
        }
        JobCommand::Stop { api, id, cancel } => call_api(
            api.post(&format!("/api/v1/jobs/{id}/stop"))
                .json(&serde_json::json!({ "cancel": cancel })),
        ),
        JobCommand::Show { api, id } => call_api(api.get(&format!("/api/v1/jobs/{id}"))),
        JobCommand::List { api, node, limit } => {
            // Node ids need no escaping: they are [a-z0-9_-] only.
            let node = node
                .as_deref()
                .map(rakkr_protocol::NodeId::new)
                .transpose()
                .context("bad --node")?
                .map_or(String::new(), |n| format!("&node={n}"));
            call_api(api.get(&format!("/api/v1/jobs?limit={limit}{node}")))
        }
    }
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

/// The data directory a running server uses, from its config file and flags.
fn server_data_dir(
    config: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    let config = ServerConfig::load(config).context("bad configuration")?;
    let overrides = Overrides {
        data_dir,
        ..Overrides::default()
    };
    Ok(config
        .validate(&overrides)
        .context("bad configuration")?
        .data_dir)
}

fn api_token_command(args: &TokenArgs) -> anyhow::Result<()> {
    use rakkr_server::admin::{self, AdminRequest};
    let data_dir = server_data_dir(args.config.as_deref(), args.data_dir.clone())?;
    let request = match &args.command {
        ApiTokenCommand::Create {
            name,
            role,
            ttl_days,
        } => AdminRequest::TokenCreate {
            name: name.clone(),
            role: role.clone(),
            ttl_days: *ttl_days,
        },
        ApiTokenCommand::List => AdminRequest::TokenList,
        ApiTokenCommand::Revoke { id } => AdminRequest::TokenRevoke { id: id.clone() },
    };
    let response = admin::request(&data_dir, &request)?;
    if !response.ok {
        anyhow::bail!("{}", response.error.unwrap_or_else(|| "refused".into()));
    }
    if let Some(tokens) = &response.tokens {
        println!("{:<17} {:<20} {:<11} state", "id", "name", "role");
        for t in tokens {
            let state = match (t.revoked_ms, t.expires_ms) {
                (Some(_), _) => "revoked".to_owned(),
                (None, Some(e)) => format!(
                    "expires {}",
                    rakkr_agent::clock::utc_rfc3339_micros(e.saturating_mul(1_000_000))
                ),
                (None, None) => "valid until revoked".to_owned(),
            };
            println!("{:<17} {:<20} {:<11} {state}", t.id, t.name, t.role);
        }
    }
    if let Some(token) = &response.token {
        println!("token: {token}");
        println!("(shown once; send it as `Authorization: Bearer …`)");
    }
    Ok(())
}

fn user_command(args: &UserArgs) -> anyhow::Result<()> {
    use rakkr_server::admin::{self, AdminRequest};
    let data_dir = server_data_dir(args.config.as_deref(), args.data_dir.clone())?;
    let request = match &args.command {
        UserCommand::Add { name, role } => AdminRequest::UserAdd {
            name: name.clone(),
            role: role.clone(),
        },
        UserCommand::List => AdminRequest::UserList,
        UserCommand::ResetPassword { name } => {
            AdminRequest::UserResetPassword { name: name.clone() }
        }
        UserCommand::Disable { name } => AdminRequest::UserDisable { name: name.clone() },
        UserCommand::Enable { name } => AdminRequest::UserEnable { name: name.clone() },
        UserCommand::EndSessions { name } => AdminRequest::UserEndSessions { name: name.clone() },
        UserCommand::Role { name, role } => AdminRequest::UserRole {
            name: name.clone(),
            role: role.clone(),
        },
    };
    let response = admin::request(&data_dir, &request)?;
    if !response.ok {
        anyhow::bail!("{}", response.error.unwrap_or_else(|| "refused".into()));
    }
    if let Some(accounts) = &response.accounts {
        println!("{:<24} {:<11} {:<9} password", "name", "role", "state");
        for a in accounts {
            let state = if a.disabled { "disabled" } else { "enabled" };
            let password = if a.must_change_password {
                "one-time (must change)"
            } else {
                "set by user"
            };
            println!("{:<24} {:<11} {:<9} {password}", a.name, a.role, state);
        }
    }
    if let Some(account) = &response.account {
        let state = if account.disabled {
            "disabled"
        } else {
            "enabled"
        };
        println!("{}: role {}, {state}", account.name, account.role);
    }
    if let Some(password) = &response.password {
        println!("one-time password: {password}");
        println!("(shown once; it must be changed at the first login)");
    }
    Ok(())
}

/// Hand the first owner's one-time password to whoever started the server:
/// on a terminal, printed; otherwise (a service, whose stdout goes to the
/// journal) written to an owner-only file in the data directory, which the log
/// names.
fn announce_first_owner(data_dir: &std::path::Path, password: &str) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let owner = rakkr_server::accounts::FIRST_OWNER;
    let recover = format!("Lost it? `rakkr-server user reset-password {owner}` on this machine.");
    if std::io::stdout().is_terminal() {
        println!(
            "First start: created the account \"{owner}\" with the one-time password\n\n    {password}\n\n\
             Log in with it and choose a new one. ({recover})"
        );
        return Ok(());
    }
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(rakkr_server::accounts::FIRST_OWNER_PASSWORD_FILE);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{password}").with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all()?;
    tracing::warn!(
        file = %path.display(),
        "first start: created the account \"{owner}\"; its one-time password is in this file (owner-only). \
         Log in, choose a new password, delete the file. {recover}"
    );
    Ok(())
}

/// The reader account the demo adds for dashboards (a new password each run).
const DEMO_READER: &str = "demo-dashboard";

fn main() -> ExitCode {
    rakkr_service::init_logging("info,rumqttd=warn");
    rakkr_mqtt::install_tls_provider();
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
        Command::Job(command) => return job_command(command),
        Command::EnrollToken(command) => return token_command(command),
        Command::Node(command) => return node_command(command),
        Command::User(args) => return user_command(args),
        Command::ApiToken(args) => return api_token_command(args),
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
    let mut settings = config.validate(&overrides).context("bad configuration")?;
    // The demo's dashboards need a reader account at the gate: a fresh one per run.
    let demo_reader = match (&mut settings.mqtt, demo_nodes) {
        (rakkr_server::config::MqttMode::Embedded { readers, .. }, Some(_)) => {
            let password = rakkr_server::accounts::one_time_password();
            readers.push(rakkr_server::gate::Reader {
                name: DEMO_READER.into(),
                password_sha256: rakkr_mqtt::sha256_hex(password.as_bytes()),
            });
            Some(password)
        }
        _ => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = rakkr_service::shutdown_on_signal();
        let clock = Arc::new(SystemClock);
        let clock_for_token = clock.clone();
        let server = RunningServer::start(settings, clock.clone(), shutdown.clone())
            .await
            .context("cannot start the server")?;
        let url = format!("http://{}/", server.http_addr);
        if let Some(password) = &server.first_owner_password {
            announce_first_owner(&server.data_dir, password)?;
        }
        let mut appliances = None;
        match demo_nodes {
            Some(n) => {
                let recordings = server.data_dir.join("demo-recordings");
                appliances = Some(
                    demo::spawn_appliances(
                        n,
                        &server,
                        &recordings,
                        clock.clone(),
                        shutdown.clone(),
                    )
                    .context("cannot enroll the simulated appliances")?,
                );
                tokio::spawn(demo::make_demo_schedules(
                    n,
                    server.store.clone(),
                    clock.clone(),
                    shutdown.clone(),
                ));
                tokio::spawn(demo::start_demo_job(
                    server.store.clone(),
                    server.commands.clone(),
                    clock,
                    shutdown.clone(),
                ));
                println!("Rakkr demo: fleet server with {n} simulated appliances.");
                println!("  Console:  {url}");
                match &demo_reader {
                    Some(password) => println!(
                        "  MQTT:     mqtt://{host}:{port}  (try: mosquitto_sub -h {host} -p {port} -u {DEMO_READER} -P {password} -i {DEMO_READER}:sub -t 'rakkr/v1/#' -v)",
                        host = server.mqtt_host,
                        port = server.mqtt_port,
                    ),
                    None => println!("  MQTT:     mqtt://{}:{}", server.mqtt_host, server.mqtt_port),
                }
                if server.first_owner_password.is_none() {
                    println!(
                        "  Login:    owner (its password was shown at the first demo start; lost it? \
                         rakkr-server user reset-password owner --data-dir {})",
                        server.data_dir.display()
                    );
                }
                // An API token for trying the command line (a day, a new one per run).
                let store = server.store.clone();
                let now = rakkr_server::clock::Clock::unix_ms(&*clock_for_token);
                let (token, _) = tokio::task::spawn_blocking(move || {
                    rakkr_server::api_tokens::create(
                        &*store,
                        "demo",
                        rakkr_protocol::access::Role::Admin,
                        Some(1),
                        now,
                    )
                })
                .await
                .context("cannot create the demo's API token")?
                .context("cannot create the demo's API token")?;
                println!(
                    "  Jobs:     {} records for an hour into {}; try: RAKKR_TOKEN={token} rakkr-server job list --server {url}",
                    demo::DEMO_NODES[0].0,
                    recordings.display()
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
