//! Harness for scenario tests against running Rakkr processes.
//!
//! Scenarios start the real binaries (`rakkr-server`, `rakkr-agent`) as child
//! processes on free loopback ports, in a private temporary directory, and
//! observe them only from outside: HTTP, MQTT, exit codes and output. The same
//! scenarios will run against a virtual appliance (qemu) once the image exists.
//!
//! Binaries are looked up in `$RAKKR_BIN_DIR`, else next to the test executable's
//! target directory; build them first with `cargo build --workspace --bins`
//! (the test command in the README does).
//!
//! Every child is killed when its handle drops, so a failing test leaves no
//! process behind.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod bench;
pub mod browser;
pub mod small_fs;

/// Where the project's binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RAKKR_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found; run `cargo build --workspace --bins` first (or set RAKKR_BIN_DIR)",
        path.display()
    );
    path
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
/// A port nothing listens on now, never one this process handed out before:
/// the kernel may give the same free port to two binds in a row, and a
/// server started with one port for HTTP and the same again for MQTT fails.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// `HH:MM:SS` in UTC, `ahead_s` seconds from now: a schedule window's edge.
pub fn utc_time_in(ahead_s: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = (now + ahead_s) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Poll `check` every 50 ms until it returns `Some`, or fail after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process whose output goes to files, killed on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .env("RAKKR_LOG", "info");
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{sig} {} failed", self.pid());
        }
        Ok(())
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let name = self.name.clone();
        wait_for(&format!("{name} to exit"), limit, || {
            self.child.try_wait().ok().flatten()
        })
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait until the process has logged `text` (on stderr), at most `limit`.
    pub fn wait_log(&self, text: &str, limit: Duration) -> Result<()> {
        wait_for(&format!("{} to log {text:?}", self.name), limit, || {
            self.stderr_text().contains(text).then_some(())
        })
    }

    /// Wait until one line of stderr contains every one of `fragments`.
    pub fn wait_log_line(&self, fragments: &[&str], limit: Duration) -> Result<()> {
        wait_for(
            &format!("{} to log a line with {fragments:?}", self.name),
            limit,
            || {
                self.stderr_text()
                    .lines()
                    .any(|l| fragments.iter().all(|f| l.contains(f)))
                    .then_some(())
            },
        )
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The read-only MQTT account every harness server with the embedded broker has.
pub const READER: &str = "hil-reader";
pub const READER_PASSWORD: &str = "hil-reader-password";

/// The fleet server's user on a test mosquitto (see [`Mosquitto::start`]).
pub const SERVER_USER: &str = "rakkr-server";
pub const SERVER_PASSWORD: &str = "server-pw";

/// A fleet server process on free ports.
pub struct Server {
    pub proc: Proc,
    pub http_port: u16,
    pub mqtt_port: u16,
    pub data_dir: PathBuf,
    /// Arguments after the common ones, and environment, to start it again.
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    /// Credentials of nodes enrolled on this server (kept across restarts).
    credentials: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// An API token with the admin role, for the JSON API and `/metrics`.
    pub api_token: String,
}

impl Server {
    /// A server with its embedded broker on a free port.
    pub fn start(work: &Path, data_dir: &Path) -> Result<Server> {
        Server::start_with_env(work, data_dir, &[])
    }

    /// A server with its embedded broker and extra environment (e.g.
    /// `RAKKR_SERVER_JOBS__LEASE_MS`).
    pub fn start_with_env(work: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Result<Server> {
        Server::start_configured(work, data_dir, env, "")
    }

    /// A server with its embedded broker, extra environment and `extra`
    /// configuration (TOML sections other than `[mqtt]`).
    pub fn start_configured(
        work: &Path,
        data_dir: &Path,
        env: &[(&str, &str)],
        extra: &str,
    ) -> Result<Server> {
        let mqtt_port = free_port();
        // A reader account for MqttWatch (readers live in the config file).
        let config = work.join("server-readers.toml");
        let hash = rakkr_mqtt::sha256_hex(READER_PASSWORD.as_bytes());
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nreaders = [{{ name = \"{READER}\", password_sha256 = \"{hash}\" }}]\n{extra}"
            ),
        )?;
        let args = vec![
            "--mqtt-addr".into(),
            format!("127.0.0.1:{mqtt_port}").into(),
            "--config".into(),
            config.into_os_string(),
        ];
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server::spawn(work, data_dir, free_port(), mqtt_port, args, env)
    }

    /// A server with the configuration file `config` (e.g. an external broker
    /// listening on `mqtt_port`).
    pub fn start_with_config(
        work: &Path,
        data_dir: &Path,
        config: &Path,
        mqtt_port: u16,
    ) -> Result<Server> {
        let args = vec!["--config".into(), config.as_os_str().to_owned()];
        Server::spawn(work, data_dir, free_port(), mqtt_port, args, Vec::new())
    }

    /// A server using `broker` (mosquitto with the shipped ACLs) as the
    /// user [`SERVER_USER`]; `extra` is more configuration (TOML).
    pub fn start_with_broker(
        work: &Path,
        data_dir: &Path,
        broker: &Mosquitto,
        extra: &str,
    ) -> Result<Server> {
        let config = work.join("server.toml");
        std::fs::write(
            &config,
            format!(
                "[mqtt]\nbroker = \"external\"\nhost = \"127.0.0.1\"\nport = {}\n\
                 username = \"{SERVER_USER}\"\npassword = \"{SERVER_PASSWORD}\"\n{extra}",
                broker.port
            ),
        )?;
        Server::start_with_config(work, data_dir, &config, broker.port)
    }

    /// Stop the server (`SIGTERM`, or `SIGKILL` when `kill`) and start it again
    /// on the same ports and data directory.
    pub fn restart(self, work: &Path, kill: bool) -> Result<Server> {
        self.stop(kill)?.start(work)
    }

    /// Stop the server (`SIGTERM`, or `SIGKILL` when `kill`), keeping what it
    /// takes to start it again.
    pub fn stop(self, kill: bool) -> Result<StoppedServer> {
        let Server {
            mut proc,
            http_port,
            mqtt_port,
            data_dir,
            args,
            env,
            credentials,
            api_token,
        } = self;
        proc.signal(if kill { "KILL" } else { "TERM" })?;
        proc.wait_exit(Duration::from_secs(20))?;
        // Keep this run's log beside the next one's.
        let _ = std::fs::copy(
            &proc.stderr,
            proc.stderr.with_extension("before-restart.stderr"),
        );
        Ok(StoppedServer {
            http_port,
            mqtt_port,
            data_dir,
            args,
            env,
            credentials,
            api_token,
        })
    }

    /// The credential of `node` on this server: enrolled the first time (a
    /// token made for the node, exchanged through the API), as an appliance would.
    pub fn credential_for(&self, node: &str) -> Result<String> {
        if let Some(c) = self.credentials.lock().unwrap().get(node) {
            return Ok(c.clone());
        }
        let (code, token) =
            self.post("/api/v1/enroll-tokens", &serde_json::json!({"node": node}))?;
        if code != 201 {
            bail!("cannot create an enrollment token for {node} ({code}): {token}");
        }
        let (code, enrolled) = self.post(
            "/api/v1/enroll",
            &serde_json::json!({"token": token["token"], "node": node}),
        )?;
        let Some(credential) = enrolled["credential"].as_str() else {
            bail!("cannot enroll {node} ({code}): {enrolled}");
        };
        self.credentials
            .lock()
            .unwrap()
            .insert(node.to_owned(), credential.to_owned());
        Ok(credential.to_owned())
    }

    /// Environment that gives agent `node` its credential on this server.
    pub fn agent_env(&self, node: &str) -> Result<Vec<(String, String)>> {
        Ok(vec![
            ("RAKKR_AGENT_MQTT__USERNAME".into(), node.to_owned()),
            (
                "RAKKR_AGENT_MQTT__PASSWORD".into(),
                self.credential_for(node)?,
            ),
        ])
    }

    fn spawn(
        work: &Path,
        data_dir: &Path,
        http_port: u16,
        mqtt_port: u16,
        args: Vec<std::ffi::OsString>,
        env: Vec<(String, String)>,
    ) -> Result<Server> {
        let mut cmd = Command::new(bin("rakkr-server"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let mut proc = Proc::spawn("server", cmd, work)?;
        let url = format!("http://127.0.0.1:{http_port}/readyz");
        let ready = wait_for("server readiness", Duration::from_secs(20), || {
            if proc.try_exit().is_some() {
                return Some(false);
            }
            http_get(&url)
                .ok()
                .filter(|(code, _)| *code == 200)
                .map(|_| true)
        })?;
        if !ready {
            bail!("server exited during start:\n{}", proc.stderr_text());
        }
        let api_token = Server::create_api_token(data_dir)?;
        Ok(Server {
            proc,
            http_port,
            mqtt_port,
            data_dir: data_dir.to_owned(),
            args,
            env,
            credentials: Default::default(),
            api_token,
        })
    }

    /// An admin API token on the server owning `data_dir`.
    fn create_api_token(data_dir: &Path) -> Result<String> {
        let data = data_dir.to_string_lossy().into_owned();
        let (ok, out, err) = cli(
            "rakkr-server",
            &[
                "api-token",
                "create",
                "--name",
                "hil",
                "--role",
                "admin",
                "--data-dir",
                &data,
            ],
        )?;
        let token = out.lines().find_map(|l| l.strip_prefix("token: "));
        match (ok, token) {
            (true, Some(t)) => Ok(t.to_owned()),
            _ => bail!("cannot create an API token: {err}{out}"),
        }
    }

    /// A counter or gauge from the server's `/metrics` (a series without labels).
    pub fn metric(&self, name: &str) -> Result<u64> {
        let (_, text) = self.get_api("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{name} not in /metrics"))
    }

    /// `GET` from the JSON API (or `/metrics`) with the harness's token.
    pub fn get_api(&self, path: &str) -> Result<(u16, String)> {
        let response = http_client()?
            .get(self.url(path))
            .bearer_auth(&self.api_token)
            .send()?;
        let code = response.status().as_u16();
        Ok((code, response.text()?))
    }

    /// Run `rakkr-server ARGS… --server URL` with the harness's API token.
    pub fn api_cli(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(bin("rakkr-server"))
            .args(args)
            .arg("--server")
            .arg(self.url(""))
            .env("RAKKR_TOKEN", &self.api_token)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `POST` JSON to the API: status code and parsed body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<(u16, serde_json::Value)> {
        let response = http_client()?
            .post(self.url(path))
            .bearer_auth(&self.api_token)
            .json(body)
            .send()?;
        let code = response.status().as_u16();
        Ok((code, response.json().unwrap_or(serde_json::Value::Null)))
    }

    /// `GET` from the API, parsed.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let (code, body) = self.get_api(path)?;
        if code != 200 {
            bail!("{path} answered {code}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// A configured named list (`/api/v1/profiles`, `/api/v1/watchdog-policies`)
    /// as (name, is the default) pairs, and the list itself.
    pub fn named_list(&self, path: &str) -> Result<(Vec<(String, bool)>, serde_json::Value)> {
        let listed = self.get_json(path)?;
        let names = listed
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("{path} is not a list: {listed}"))?
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_owned(),
                    p["default"] == true,
                )
            })
            .collect();
        Ok((names, listed))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// `GET /api/v1/nodes`, parsed.
    pub fn nodes(&self) -> Result<Vec<serde_json::Value>> {
        let (code, body) = self.get_api("/api/v1/nodes")?;
        if code != 200 {
            bail!("/api/v1/nodes answered {code}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The presence of `node` as the API reports it, if the node is known.
    pub fn presence(&self, node: &str) -> Option<String> {
        self.nodes()
            .ok()?
            .into_iter()
            .find(|n| n["id"] == node)
            .map(|n| n["presence"].as_str().unwrap_or("").to_owned())
    }
}

/// A server that was stopped: [`StoppedServer::start`] starts it again on the
/// same ports and data directory.
pub struct StoppedServer {
    http_port: u16,
    mqtt_port: u16,
    data_dir: PathBuf,
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    credentials: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    api_token: String,
}

impl StoppedServer {
    pub fn start(self, work: &Path) -> Result<Server> {
        let mut server = Server::spawn(
            work,
            &self.data_dir,
            self.http_port,
            self.mqtt_port,
            self.args,
            self.env,
        )?;
        server.credentials = self.credentials;
        server.api_token = self.api_token;
        Ok(server)
    }
}

/// An agent process (a synthetic source unless configured otherwise).
pub struct Agent {
    pub proc: Proc,
    pub node_id: String,
    pub config: PathBuf,
    /// The extra environment it was started with (its credential).
    env: Vec<(String, std::ffi::OsString)>,
}

impl Agent {
    /// Write a config for `node_id` pointing at `server`'s broker and start the
    /// agent with its enrolled credential.
    pub fn start(work: &Path, server: &Server, node_id: &str, channels: u16) -> Result<Agent> {
        let config = work.join(format!("{node_id}.toml"));
        std::fs::write(
            &config,
            format!(
                "node_id = \"{node_id}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
                 [source]\nkind = \"synthetic\"\nchannels = {channels}\nsignal = \"demo\"\n\
                 [meters]\nlocal_interval_ms = 50\ntelemetry_interval_ms = 250\n",
                server.mqtt_port
            ),
        )?;
        Agent::start_for(work, server, node_id, &config, &[])
    }

    /// Start an agent of `server` with `config`, its enrolled credential and
    /// extra environment (e.g. `ALSA_CONFIG_PATH` for test devices).
    pub fn start_for(
        work: &Path,
        server: &Server,
        node_id: &str,
        config: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Agent> {
        let credentials = server.agent_env(node_id)?;
        let mut all: Vec<(&str, &std::ffi::OsStr)> = credentials
            .iter()
            .map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v.as_str())))
            .collect();
        all.extend_from_slice(env);
        Agent::start_with_env(work, node_id, config, &all)
    }

    /// Start with `config` alone (it names the broker and any credentials).
    pub fn start_with_config(work: &Path, node_id: &str, config: &Path) -> Result<Agent> {
        Agent::start_with_env(work, node_id, config, &[])
    }

    /// Start with extra environment.
    pub fn start_with_env(
        work: &Path,
        node_id: &str,
        config: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Agent> {
        let env: Vec<(String, std::ffi::OsString)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Agent::spawn(work, &format!("agent-{node_id}"), node_id, config, env)
    }

    fn spawn(
        work: &Path,
        name: &str,
        node_id: &str,
        config: &Path,
        env: Vec<(String, std::ffi::OsString)>,
    ) -> Result<Agent> {
        let mut cmd = Command::new(bin("rakkr-agent"));
        cmd.arg("run").arg("--config").arg(config);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        Ok(Agent {
            proc: Proc::spawn(name, cmd, work)?,
            node_id: node_id.to_owned(),
            config: config.to_owned(),
            env,
        })
    }

    /// Kill the agent with SIGKILL (as a crash or power loss would) and start
    /// it again as it was started; the new process logs to `{name}+.stderr`.
    pub fn crash_and_restart(mut self, work: &Path) -> Result<Agent> {
        self.kill()?;
        self.start_again(work)
    }

    /// Kill the agent with SIGKILL: a crash, a power cut, a node gone offline.
    pub fn kill(&mut self) -> Result<()> {
        self.proc.signal("KILL")?;
        self.proc.wait_exit(Duration::from_secs(10))?;
        Ok(())
    }

    /// Start a killed agent again as it was started; the new process logs
    /// to `{name}+.stderr`.
    pub fn start_again(mut self, work: &Path) -> Result<Agent> {
        let name = format!("{}+", self.proc.name);
        let env = std::mem::take(&mut self.env);
        Agent::spawn(work, &name, &self.node_id, &self.config, env)
    }
}

/// A signed-in console session of an operator account (cookies and the CSRF
/// token handled by hand, redirects not followed).
pub struct Operator {
    pub name: String,
    base: String,
    cookie: Option<String>,
    /// The session's CSRF token, as the last page showed it.
    pub csrf: String,
}

/// The `csrf` hidden field's value in a page.
pub fn csrf_in(html: &str) -> Option<String> {
    let at = html.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    Some(html[at..].split('"').next()?.to_owned())
}

impl Operator {
    /// The session cookie (`name=value`), once logged in.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// A browser without a session.
    pub fn anonymous(server: &Server) -> Operator {
        Operator {
            name: String::new(),
            base: server.url(""),
            cookie: None,
            csrf: String::new(),
        }
    }

    /// Log in to `server` (no session yet if the login is refused).
    pub fn login(server: &Server, name: &str, password: &str) -> Result<(u16, Operator)> {
        let mut op = Operator {
            name: name.to_owned(),
            ..Operator::anonymous(server)
        };
        let (code, _, _) = op.post_form("/login", &[("name", name), ("password", password)])?;
        Ok((code, op))
    }

    fn client() -> Result<reqwest::blocking::Client> {
        Ok(reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()?)
    }

    fn remember(&mut self, headers: &reqwest::header::HeaderMap) {
        for v in headers.get_all(reqwest::header::SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            if let Some(pair) = v.split(';').next() {
                self.cookie = pair
                    .split_once('=')
                    .filter(|(_, v)| !v.is_empty())
                    .map(|_| pair.to_owned());
            }
        }
    }

    /// `GET path` with the session: status, headers, body.
    pub fn get(&mut self, path: &str) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        let request = Operator::client()?.get(format!("{}{path}", self.base));
        self.send(request)
    }

    /// `POST path` as a form with the session.
    pub fn post_form(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        let request = Operator::client()?
            .post(format!("{}{path}", self.base))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(serde_urlencoded::to_string(fields)?);
        self.send(request)
    }

    /// Send with the session cookie; keep a new cookie and the page's CSRF token.
    fn send(
        &mut self,
        mut request: reqwest::blocking::RequestBuilder,
    ) -> Result<(u16, reqwest::header::HeaderMap, String)> {
        if let Some(c) = &self.cookie {
            request = request.header(reqwest::header::COOKIE, c);
        }
        let response = request.send()?;
        let (code, headers) = (response.status().as_u16(), response.headers().clone());
        let body = response.text()?;
        self.remember(&headers);
        if let Some(csrf) = csrf_in(&body) {
            self.csrf = csrf;
        }
        Ok((code, headers, body))
    }
}

/// The password the harness gives the accounts it makes.
pub const OPERATOR_PASSWORD: &str = "a password of one's own";

impl Server {
    /// A new account `name` with `role`, signed in to the console with a
    /// password of its own (the one-time password changed, as a person would).
    pub fn operator(&self, name: &str, role: &str) -> Result<Operator> {
        let data = self.data_dir.to_string_lossy().into_owned();
        let (ok, out, err) = cli(
            "rakkr-server",
            &["user", "add", name, "--role", role, "--data-dir", &data],
        )?;
        if !ok {
            bail!("cannot add {name}: {err}");
        }
        let Some(otp) = out
            .lines()
            .find_map(|l| l.strip_prefix("one-time password: "))
        else {
            bail!("no one-time password for {name}: {out}");
        };
        let (code, mut op) = Operator::login(self, name, otp)?;
        if code != 303 {
            bail!("login of {name} answered {code}");
        }
        op.get("/account/password")?;
        let csrf = op.csrf.clone();
        let (code, _, body) = op.post_form(
            "/account/password",
            &[
                ("csrf", &csrf),
                ("current", otp),
                ("new", OPERATOR_PASSWORD),
                ("repeated", OPERATOR_PASSWORD),
            ],
        )?;
        if code != 303 {
            bail!("password change of {name} answered {code}: {body}");
        }
        op.get("/")?;
        Ok(op)
    }
}

/// A `kB` field of `/proc/{pid}/status` (e.g. `VmRSS:`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Run one of our binaries to completion: success, stdout, stderr.
pub fn cli(bin_name: &str, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(bin(bin_name)).args(args).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Blocking HTTP GET: status code and body text.
pub fn http_get(url: &str) -> Result<(u16, String)> {
    let (code, _, body) = http_get_full(url)?;
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

/// Blocking HTTP GET: status code, headers and body bytes.
/// A blocking HTTP client (after making ring the TLS provider, which the
/// workspace's reqwest needs: it is built without one of its own).
pub fn http_client() -> Result<reqwest::blocking::Client> {
    rakkr_mqtt::install_tls_provider();
    Ok(reqwest::blocking::Client::builder().build()?)
}

pub fn http_get_full(url: &str) -> Result<(u16, reqwest::header::HeaderMap, Vec<u8>)> {
    rakkr_mqtt::install_tls_provider();
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let res = client.get(url).send()?;
    let code = res.status().as_u16();
    let headers = res.headers().clone();
    Ok((code, headers, res.bytes()?.to_vec()))
}

/// A passive MQTT observer: collects every message on `filter` in the background.
pub struct MqttWatch {
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    client: rumqttc::Client,
    seen: Vec<(String, Vec<u8>)>,
}

impl MqttWatch {
    /// An anonymous watcher (brokers that allow it: plain mosquitto).
    pub fn start(port: u16, filter: &str) -> Result<MqttWatch> {
        MqttWatch::start_as(port, filter, None)
    }

    /// A watcher of `server`'s broker, logged in as the harness's reader.
    pub fn of(server: &Server, filter: &str) -> Result<MqttWatch> {
        MqttWatch::start_as(server.mqtt_port, filter, Some((READER, READER_PASSWORD)))
    }

    fn start_as(port: u16, filter: &str, login: Option<(&str, &str)>) -> Result<MqttWatch> {
        let id = match login {
            // Readers' client ids are `{name}:…` (see the gate).
            Some((user, _)) => format!("{user}:watch-{}", free_port()),
            None => format!("hil-watch-{}", free_port()),
        };
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = rumqttc::Client::new(opts, 64);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce)?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Ok(MqttWatch {
            rx,
            client,
            seen: Vec::new(),
        })
    }

    /// Wait for a message on `topic` whose JSON payload satisfies `pred`.
    pub fn wait_json(
        &mut self,
        topic: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            while let Ok(m) = self.rx.try_recv() {
                self.seen.push(m);
            }
            if let Some(v) = self
                .seen
                .iter()
                .filter(|(t, _)| t == topic)
                .find_map(|(_, p)| {
                    serde_json::from_slice::<serde_json::Value>(p)
                        .ok()
                        .filter(|v| pred(v))
                })
            {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("no matching message on {topic} within {limit:?}");
            }
            if let Ok(m) = self
                .rx
                .recv_timeout((deadline - now).min(Duration::from_millis(100)))
            {
                self.seen.push(m);
            }
        }
    }

    /// Forget what was seen so far.
    pub fn clear(&mut self) {
        while self.rx.try_recv().is_ok() {}
        self.seen.clear();
    }
}

impl Drop for MqttWatch {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// A JACK server with the dummy backend, for real-time-paced ALSA capture
/// through alsa-lib's jack plugin. Stopped with SIGTERM on drop (SIGKILL would
/// leave its socket behind and a server of the same name could not start again).
pub struct JackServer {
    pub name: String,
    child: std::process::Child,
}

impl JackServer {
    /// Start `jackd -d dummy` at 48 kHz with `period` frames and `capture` ports,
    /// and wait until it accepts clients.
    pub fn start(name: &str, period: u32, capture: u16) -> Result<JackServer> {
        // JACK servers starting at the same moment (parallel test processes)
        // race on JACK's shared registry and one fails: start them one at a time
        // (the lock is released when this returns).
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("rakkr-jackd-start.lock"))?;
        lock.lock()?;
        let child = Command::new("jackd")
            .args([
                "-n",
                name,
                "--no-realtime",
                "-d",
                "dummy",
                "-r",
                "48000",
                "-p",
                &period.to_string(),
            ])
            .args(["-C", &capture.to_string(), "-P", "2"])
            .env("JACK_NO_AUDIO_RESERVATION", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start jackd (package jackd2)")?;
        let server = JackServer {
            name: name.to_owned(),
            child,
        };
        let up = Command::new("jack_wait")
            .args(["-s", name, "-w", "-t", "10"])
            .output()?;
        if !up.status.success() {
            bail!("jackd {name} did not start");
        }
        Ok(server)
    }

    /// alsa-lib configuration lines for `pcm.jackcap`, `channels` capture ports.
    pub fn capture_pcm(channels: u16) -> String {
        let ports: String = (0..channels)
            .map(|c| format!("{c} system:capture_{} ", c + 1))
            .collect();
        format!("pcm.jackcap {{ type jack capture_ports {{ {ports}}} }}\n")
    }
}

impl Drop for JackServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// s3s-fs, an S3 server over a directory that checks SigV4 signatures (so
/// wrong credentials fail), on a free loopback port; killed on drop.
/// `xtask test` installs it (`cargo install s3s-fs@0.14.1`).
pub struct S3Server {
    pub proc: Proc,
    pub port: u16,
    /// Where the buckets are: `{root}/{bucket}/{key}`.
    pub root: PathBuf,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Server {
    pub fn start(dir: &Path, buckets: &[&str]) -> Result<S3Server> {
        let root = dir.join("s3");
        for b in buckets {
            std::fs::create_dir_all(root.join(b))?;
        }
        let port = free_port();
        let (access_key, secret_key) = (
            "rakkr-test-key".to_owned(),
            "rakkr-test-secret-0123456789".to_owned(),
        );
        let program = std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".cargo/bin/s3s-fs"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| "s3s-fs".into());
        let mut cmd = Command::new(program);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(&root);
        let proc = Proc::spawn("s3s-fs", cmd, dir)
            .context("start s3s-fs (`cargo xtask test` installs it)")?;
        wait_for("s3s-fs listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        Ok(S3Server {
            proc,
            port,
            root,
            access_key,
            secret_key,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A TCP relay on a free loopback port to `127.0.0.1:{target}` that a test
/// cuts like a pulled cable: while cut, nothing passes either way and
/// nothing is closed (a cut link sends no reset, so each side only sees
/// silence); once restored, connections that lived through the cut are
/// closed (their peers gave up on them meanwhile) and the others pass.
pub struct CutProxy {
    pub port: u16,
    state: std::sync::Arc<CutState>,
}

#[derive(Default)]
struct CutState {
    cut: std::sync::atomic::AtomicBool,
    /// Cut as soon as the client next sends a byte.
    armed: std::sync::atomic::AtomicBool,
    /// Bumped by each cut: a connection older than the last cut is dead.
    epoch: std::sync::atomic::AtomicU64,
    stop: std::sync::atomic::AtomicBool,
    /// Cuts so far, and connections closed after one.
    cuts: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
}

impl CutState {
    fn cut_now(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.epoch.fetch_add(1, SeqCst);
        self.cuts.fetch_add(1, SeqCst);
        self.cut.store(true, SeqCst);
    }
}

impl CutProxy {
    pub fn start(target: u16) -> Result<CutProxy> {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let state = std::sync::Arc::new(CutState::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            while !shared.stop.load(SeqCst) {
                let Ok((near, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = near.set_nonblocking(false);
                let Ok(far) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let born = shared.epoch.load(SeqCst);
                for (from, to, upstream) in [(&near, &far, true), (&far, &near, false)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let shared = shared.clone();
                    std::thread::spawn(move || CutProxy::pump(from, to, upstream, born, &shared));
                }
            }
        });
        Ok(CutProxy { port, state })
    }

    /// Copy `from` to `to` while the link is up and this connection has not
    /// lived through a cut. `upstream`: from the client to the server.
    fn pump(
        mut from: std::net::TcpStream,
        mut to: std::net::TcpStream,
        upstream: bool,
        born: u64,
        state: &CutState,
    ) {
        use std::io::{Read as _, Write as _};
        use std::sync::atomic::Ordering::SeqCst;
        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = vec![0u8; 64 << 10];
        let close = |from: &std::net::TcpStream, to: &std::net::TcpStream| {
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
        };
        loop {
            if state.stop.load(SeqCst) {
                return close(&from, &to);
            }
            if state.cut.load(SeqCst) {
                // Silence: hold everything, close nothing.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            if state.epoch.load(SeqCst) != born {
                state.dropped.fetch_add(1, SeqCst);
                return close(&from, &to);
            }
            match from.read(&mut buf) {
                Ok(0) => return close(&from, &to),
                Ok(n) => {
                    if upstream && state.armed.swap(false, SeqCst) {
                        state.cut_now();
                    }
                    while state.cut.load(SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if state.epoch.load(SeqCst) != born || to.write_all(&buf[..n]).is_err() {
                        return close(&from, &to);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return close(&from, &to),
            }
        }
    }

    /// Pull the cable as the client next sends anything, so the cut
    /// silences a request in flight; [`CutProxy::cuts`] says when it did.
    pub fn cut_at_next_request(&self) {
        self.state
            .armed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Plug it back in (and disarm a cut not made yet).
    pub fn restore(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.state.armed.store(false, SeqCst);
        self.state.cut.store(false, SeqCst);
    }

    /// Cuts made so far.
    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections closed because they lived through a cut.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.restore();
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Debian's Samba (`smbd` in the foreground, its own process group, every
/// state directory under `{dir}/samba`) on a free loopback port, with one
/// account (this Unix user, [`SambaServer::PASSWORD`]) and the given shares
/// (name, encryption required) over `{dir}/samba/{share}`. Killed, with the
/// per-connection processes it forked, on drop. The recipe is in
/// ../shared/TESTING.md; `xtask test` installs the package.
pub struct SambaServer {
    child: Option<Child>,
    pub port: u16,
    pub user: String,
    conf: PathBuf,
    dir: PathBuf,
    /// Where the shares are: `{root}/{share}/{path}`.
    pub root: PathBuf,
}

impl SambaServer {
    pub const PASSWORD: &str = "samba-test-pw-7";

    pub fn start(dir: &Path, shares: &[(&str, bool)]) -> Result<SambaServer> {
        let root = dir.join("samba");
        let state = root.join(".state");
        std::fs::create_dir_all(state.join("ncalrpc"))?;
        let user = String::from_utf8(Command::new("id").arg("-un").output()?.stdout)?
            .trim()
            .to_owned();
        let port = free_port();
        let st = state.display();
        let mut conf = format!(
            "[global]\n  interfaces = 127.0.0.1\n  bind interfaces only = yes\n  smb ports = {port}\n  \
             disable netbios = yes\n  server role = standalone server\n  map to guest = never\n  \
             passdb backend = tdbsam:{st}/passdb.tdb\n  private dir = {st}\n  lock directory = {st}\n  \
             state directory = {st}\n  cache directory = {st}\n  pid directory = {st}\n  \
             ncalrpc dir = {st}/ncalrpc\n  log file = {st}/log.%m\n  log level = 1\n  \
             load printers = no\n  printing = bsd\n  printcap name = /dev/null\n  disable spoolss = yes\n"
        );
        for (share, encrypt) in shares {
            let path = root.join(share);
            std::fs::create_dir_all(&path)?;
            conf.push_str(&format!(
                "[{share}]\n  path = {}\n  read only = no\n  smb encrypt = {}\n",
                path.display(),
                if *encrypt { "required" } else { "off" }
            ));
        }
        let conf_path = root.join(".state/smb.conf");
        std::fs::write(&conf_path, conf)?;
        let mut add = Command::new("smbpasswd")
            .arg("-c")
            .arg(&conf_path)
            .args(["-s", "-a", &user])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("run smbpasswd (package samba)")?;
        {
            use std::io::Write as _;
            let mut stdin = add.stdin.take().context("smbpasswd stdin")?;
            writeln!(stdin, "{}\n{}", Self::PASSWORD, Self::PASSWORD)?;
        }
        if !add.wait()?.success() {
            bail!("smbpasswd -a {user} failed");
        }
        let mut server = SambaServer {
            child: None,
            port,
            user,
            conf: conf_path,
            dir: dir.to_owned(),
            root,
        };
        server.run()?;
        Ok(server)
    }

    /// Start smbd (again, after [`SambaServer::kill`]) and wait until it listens.
    pub fn run(&mut self) -> Result<()> {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new("smbd");
        cmd.args(["--foreground", "--no-process-group", "--debug-stdout", "-s"])
            .arg(&self.conf)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(
                File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("smbd.log"))?,
            )
            .stderr(
                File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("smbd.log"))?,
            );
        self.child = Some(cmd.spawn().context("start smbd (package samba)")?);
        let port = self.port;
        wait_for("smbd listening", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        Ok(())
    }

    /// SIGKILL smbd and every connection process it forked.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }

    /// `host:port` for a destination's `server`.
    pub fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for SambaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Debian mosquitto with the shipped configuration (deploy/mosquitto: ACLs,
/// no anonymous clients), on a free loopback port, with `users` (name,
/// password) in its password file. Killed on drop.
pub struct Mosquitto {
    child: std::process::Child,
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path, users: &[(&str, &str)]) -> Result<Mosquitto> {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto");
        let passwd = dir.join("rakkr.passwd");
        for (i, (user, password)) in users.iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd
                .arg("-b")
                .arg(&passwd)
                .args([user, password])
                .status()
                .context("run mosquitto_passwd (package mosquitto)")?;
            if !ok.success() {
                bail!("mosquitto_passwd failed");
            }
        }
        let acl = dir.join("rakkr.acl");
        std::fs::copy(shipped.join("rakkr.acl"), &acl)?;
        let port = free_port();
        let conf = std::fs::read_to_string(shipped.join("rakkr.conf"))?
            .replace("listener 1883", &format!("listener {port} 127.0.0.1"))
            .replace("/etc/mosquitto/rakkr.passwd", &passwd.display().to_string())
            .replace("/etc/mosquitto/rakkr.acl", &acl.display().to_string());
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Mosquitto::spawn(&conf_path, port)?;
        Ok(Mosquitto {
            child,
            port,
            conf: conf_path,
        })
    }

    fn spawn(conf: &Path, port: u16) -> Result<std::process::Child> {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start mosquitto (package mosquitto)")?;
        wait_for("mosquitto listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })?;
        Ok(child)
    }

    /// Kill the broker: every client loses its connection, as in a network cut.
    pub fn stop(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Start the broker again on the same port (after [`Mosquitto::stop`]).
    pub fn start_again(&mut self) -> Result<()> {
        self.child = Mosquitto::spawn(&self.conf, self.port)?;
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent with a synthetic source, a recordings directory and a durable
/// state directory; `mqtt_extra` goes into its `[mqtt]` section.
pub fn job_agent(
    work: &Path,
    server: &Server,
    node: &str,
    channels: u16,
    mqtt_extra: &str,
) -> Result<(Agent, PathBuf)> {
    job_agent_with_signal(work, server, node, channels, mqtt_extra, "demo")
}

/// [`job_agent`] with another synthetic `signal` (`silence`, `tone`, …).
pub fn job_agent_with_signal(
    work: &Path,
    server: &Server,
    node: &str,
    channels: u16,
    mqtt_extra: &str,
    signal: &str,
) -> Result<(Agent, PathBuf)> {
    job_agent_with_tables(work, server, node, channels, mqtt_extra, signal, "")
}

/// [`job_agent_with_signal`] with more of the configuration: `tables`
/// (e.g. `[upload]` with its keys) goes at its end.
pub fn job_agent_with_tables(
    work: &Path,
    server: &Server,
    node: &str,
    channels: u16,
    mqtt_extra: &str,
    signal: &str,
    tables: &str,
) -> Result<(Agent, PathBuf)> {
    let mqtt_port = server.mqtt_port;
    let recordings = work.join(format!("{node}-recordings"));
    let config = work.join(format!("{node}.toml"));
    std::fs::write(
        &config,
        format!(
            "node_id = \"{node}\"\nrealtime = false\nrecordings_dir = \"{}\"\nstate_dir = \"{}\"\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\n{mqtt_extra}\n\
             [source]\nkind = \"synthetic\"\nchannels = {channels}\nsample_rate = 48000\nsignal = \"{signal}\"\n\
             {tables}\n",
            recordings.display(),
            work.join(format!("{node}-state")).display(),
        ),
    )?;
    let agent = if mqtt_extra.is_empty() {
        Agent::start_for(work, server, node, &config, &[])?
    } else {
        Agent::start_with_config(work, node, &config)?
    };
    Ok((agent, recordings))
}

/// A [`job_agent_with_tables`] of 2 channels that uploads its takes to
/// `server` (`upload`: more `[upload]` keys), online.
pub fn uploading_agent(
    work: &Path,
    server: &Server,
    node: &str,
    signal: &str,
    upload: &str,
) -> Result<(Agent, PathBuf)> {
    let tables = format!("[upload]\nserver = \"{}\"\n{upload}", server.url(""));
    let agent = job_agent_with_tables(work, server, node, 2, "", signal, &tables)?;
    wait_online(server, node)?;
    Ok(agent)
}

/// Start a take of `seconds` on `node` (channels 1 and 2) and wait for it to
/// complete; its id.
pub fn take(server: &Server, node: &str, seconds: u32) -> Result<String> {
    let (code, job) = server.post(
        "/api/v1/jobs",
        &serde_json::json!({"node": node, "channels": "1,2", "duration_s": seconds}),
    )?;
    anyhow::ensure!(code == 201, "job not created ({code}): {job}");
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    wait_job(
        server,
        &id,
        "completed",
        Duration::from_secs(30 + u64::from(seconds)),
    )?;
    Ok(id)
}

/// What a simulated two-channel 48 kHz FLAC appliance announces (one job
/// at a time, no capture devices listed); tests change what they need.
pub fn synthetic_capabilities() -> rakkr_protocol::payload::Capabilities {
    rakkr_protocol::payload::Capabilities {
        sources: vec!["synthetic".into()],
        channels: 2,
        sample_rates: vec![48_000],
        codecs: vec!["flac".into()],
        max_jobs: 1,
        devices: Vec::new(),
    }
}

pub fn wait_online(server: &Server, node: &str) -> Result<()> {
    wait_for(&format!("{node} online"), Duration::from_secs(20), || {
        (server.presence(node).as_deref() == Some("online")).then_some(())
    })
}

/// Wait until the job is in `state`; returns the job.
pub fn wait_job(
    server: &Server,
    id: &str,
    state: &str,
    limit: Duration,
) -> Result<serde_json::Value> {
    let mut last = serde_json::Value::Null;
    let found = wait_for(&format!("job {id} {state}"), limit, || {
        last = server.get_json(&format!("/api/v1/jobs/{id}")).ok()?;
        (last["state"] == state).then(|| last.clone())
    });
    found.map_err(|e| anyhow::anyhow!("{e}; last seen: {last}"))
}

/// `flac -t` (the reference decoder's test) passes on `path`.
pub fn flac_test(path: &Path) -> Result<()> {
    let out = Command::new("flac")
        .arg("-t")
        .arg("-s")
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "flac -t {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Reads a Prometheus text exposition with the Prometheus project's Python
/// client parser (Debian's `python3-prometheus-client`, run by Debian's
/// python3): an error for any line it cannot read, and every sample line must
/// come out as a sample. The number of samples.
pub fn parse_prometheus_text(text: &str) -> Result<usize> {
    const SCRIPT: &str = r##"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
samples = sum(len(f.samples) for f in text_string_to_metric_families(text))
lines = sum(1 for l in text.splitlines() if l.strip() and not l.startswith("#"))
if samples != lines:
    sys.exit(f"{lines} sample lines, {samples} samples read")
print(samples)
"##;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3 (Debian package python3-prometheus-client)")?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("python3's stdin")?;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the Prometheus parser refused the exposition: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Debian's libfaketime (package `faketime`), to give a process a wall clock
/// tests move (`FAKETIME_TIMESTAMP_FILE`), its monotonic clock left alone.
pub fn libfaketime() -> Result<PathBuf> {
    let found = std::fs::read_dir("/usr/lib")?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.ok_or_else(|| anyhow::anyhow!("libfaketime not found (package faketime)"))
}
