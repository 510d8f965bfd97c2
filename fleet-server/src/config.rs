//! Server configuration: defaults < TOML file < `RAKKR_SERVER_*` environment <
//! command-line flags. Parsed by `rakkr-config`, validated into [`ServerSettings`].
//!
//! ```toml
//! data_dir = "./rakkr-data"
//!
//! [http]
//! addr = "127.0.0.1:8080"
//! tls_addr = "0.0.0.0:8443"      # the console and API over HTTPS (the server's own CA)
//! anonymous_audit_per_minute = 60  # refusals of anonymous requests audited per address and minute
//!
//! [mqtt]
//! broker = "embedded"          # or "external": use a site's broker (e.g. deploy/mosquitto)
//! max_connections = 10000      # embedded: connections accepted; both: nodes tracked
//! addr = "127.0.0.1:1883"      # embedded: where the broker listens
//! node_auth = "credentials"   # embedded: nodes log in with enrolled credentials through the
//!                              # authorizing gate; "none" only for development
//! readers = [{ name = "grafana", password_sha256 = "…" }]  # embedded: read-only dashboards
//! tls_addr = "0.0.0.0:8883"   # embedded: MQTT over TLS (the gate), certificate from the server's own CA
//! insecure_allow_remote = false  # embedded: required for the plain `addr` beyond loopback
//!
//! [tls]
//! server_names = ["rakkr.example"]   # names (and addresses) appliances use to reach the server
//! host = "broker.example"      # external: the broker
//! port = 1883                  # external
//! username = "rakkr-server"    # external: the server's credentials (both or neither)
//! password = "…"
//!
//! [console]
//! stale_after_ms = 5000          # meter frames older than this are shown as stale
//!
//! [jobs]
//! lease_ms = 30000               # a job's lease lasts this long unless its node renews it
//!
//! [health]
//! node_offline_after_ms = 120000     # a node offline this long raises node_offline
//! telemetry_stale_after_ms = 30000   # an online node without meter frames this long: telemetry_stale
//!
//! [recording]                    # replaces the built-in list (defaults/profiles.toml) whole
//! default_profile = "standard"
//! [recording.profiles.standard]
//! codec = "flac"                 # flac | wav | rf64
//! bits = 24
//! flac_level = 5
//! chunk_s = 3600                 # a new file every hour (absent: one file per take)
//! sample_rate = 48000            # the device must run at this rate (absent: any)
//! channel_mode = "any"           # any | mono | stereo
//! max_length_s = 14400           # longest take started by hand (absent: no limit)
//!
//! [uploads]                      # recordings appliances send (decision 0016)
//! max_file_mb = 65536            # the largest file a take may have (larger: 413)
//! cache_max_mb = 500000         # past this, the oldest files every destination holds are deleted
//!
//! [delivery]                     # upload policies; replaces defaults/delivery.toml whole
//! default = "archive"
//! [delivery.policies.archive]
//! destinations = ["nas", "s3-main"]   # named in the console or /api/v1/destinations
//! retry_budget_h = 72            # failed deliveries are retried this long, then wait for an operator
//! delete_server_copy_after_h = 168  # once every destination holds a file (absent: keep it)
//!
//! [secrets]
//! key_file = "/etc/rakkr/secrets.key"  # seals destination secrets (default {data_dir}/secrets.key)
//!
//! [retention]                    # replaces the built-in list (defaults/retention.toml) whole
//! default = "standard"
//! [retention.policies.standard.appliance]
//! delete_confirmed = true        # delete from the appliance once the server confirmed
//! min_free_mb = 4096             # (also max_age_days, max_mb: see defaults/retention.toml)
//!
//! [watchdog]                     # replaces the built-in list (defaults/watchdog.toml) whole
//! default = "standard"
//! [watchdog.policies.standard]
//! low_signal_dbfs = -50.0
//! grace_s = 120
//! cumulative_s = 300
//! clear_s = 30
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const ENV_PREFIX: &str = "RAKKR_SERVER_";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub jobs: JobsConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub health: HealthConfig,
    /// Named watchdog policies; absent: the built-in list.
    #[serde(default = "crate::policies::WatchdogConfig::builtin")]
    pub watchdog: crate::policies::WatchdogConfig,
    /// Named recording profiles; absent: the built-in list.
    #[serde(default = "crate::policies::RecordingConfig::builtin")]
    pub recording: crate::policies::RecordingConfig,
    #[serde(default)]
    pub uploads: UploadsConfig,
    /// Named retention policies; absent: the built-in list.
    #[serde(default = "crate::policies::RetentionConfig::builtin")]
    pub retention: crate::policies::RetentionConfig,
    /// Named upload policies; absent: the built-in list.
    #[serde(default = "crate::policies::DeliveryConfig::builtin")]
    pub delivery: crate::policies::DeliveryConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
}

/// Where the key that seals destination secrets lives (decision 0017).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Default: `{data_dir}/secrets.key`.
    pub key_file: Option<PathBuf>,
}

/// What appliances may upload (decision 0016).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadsConfig {
    /// The largest file a take may have, in MB (larger: 413).
    #[serde(default = "default_max_file_mb")]
    pub max_file_mb: u64,
    /// Most MB the server's copies may take: past it, the oldest files every
    /// destination holds are deleted first (never others). Absent: no cap.
    #[serde(default)]
    pub cache_max_mb: Option<u64>,
}

fn default_max_file_mb() -> u64 {
    // A 24-hour 8-channel 96 kHz 24-bit WAV is about 60 GB.
    65_536
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            max_file_mb: default_max_file_mb(),
            cache_max_mb: None,
        }
    }
}

/// When the server's own node rules raise their conditions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "default_node_offline_after_ms")]
    pub node_offline_after_ms: u64,
    #[serde(default = "default_telemetry_stale_after_ms")]
    pub telemetry_stale_after_ms: u64,
}

fn default_node_offline_after_ms() -> u64 {
    120_000
}

fn default_telemetry_stale_after_ms() -> u64 {
    30_000
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            node_offline_after_ms: default_node_offline_after_ms(),
            telemetry_stale_after_ms: default_telemetry_stale_after_ms(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Names (DNS or IP) the server certificate is issued for, besides
    /// `localhost` and `127.0.0.1`.
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

fn default_lease_ms() -> u64 {
    30_000
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            lease_ms: default_lease_ms(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./rakkr-data")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_http_addr")]
    pub addr: SocketAddr,
    /// Where the same console and API are served over HTTPS (the server's own CA).
    pub tls_addr: Option<SocketAddr>,
    /// Refusals of anonymous requests recorded in the audit log per client
    /// address and minute; the rest are counted in the next record.
    #[serde(default = "default_anonymous_audit")]
    pub anonymous_audit_per_minute: u32,
}

fn default_anonymous_audit() -> u32 {
    crate::audit::ANONYMOUS_PER_MINUTE
}

fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: default_http_addr(),
            tls_addr: None,
            anonymous_audit_per_minute: default_anonymous_audit(),
        }
    }
}

/// Where the server's MQTT traffic goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerMode {
    /// rumqttd inside the server process.
    #[default]
    Embedded,
    /// A broker the site runs (Debian mosquitto with deploy/mosquitto's ACLs).
    External,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    #[serde(default)]
    pub broker: BrokerMode,
    #[serde(default = "default_mqtt_addr")]
    pub addr: SocketAddr,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How the embedded broker's clients prove who they are.
    #[serde(default)]
    pub node_auth: NodeAuth,
    /// Read-only accounts for dashboards (embedded broker, `node_auth = "credentials"`).
    #[serde(default)]
    pub readers: Vec<ReaderConfig>,
    /// Where the embedded broker's gate takes MQTT over TLS.
    pub tls_addr: Option<SocketAddr>,
    /// The plain-TCP `addr` carries credentials in clear: it listens on
    /// loopback only unless this is set.
    #[serde(default)]
    pub insecure_allow_remote: bool,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// How clients of the embedded broker authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAuth {
    /// Enrolled credentials, checked with every packet by the gate.
    #[default]
    Credentials,
    /// Anyone who reaches the broker speaks for any node: development only.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    pub name: String,
    /// SHA-256 of the password, hex (`printf %s PASSWORD | sha256sum`).
    pub password_sha256: String,
}

fn default_mqtt_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1883))
}

fn default_max_connections() -> usize {
    10_000
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            addr: default_mqtt_addr(),
            max_connections: default_max_connections(),
            insecure_allow_remote: false,
            tls_addr: None,
            node_auth: NodeAuth::default(),
            readers: Vec::new(),
            broker: BrokerMode::Embedded,
            host: None,
            port: None,
            username: None,
            password: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default = "default_stale_after")]
    pub stale_after_ms: u64,
}

fn default_stale_after() -> u64 {
    5000
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            stale_after_ms: default_stale_after(),
        }
    }
}

/// Flags given on the command line; each overrides the config when set.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<SocketAddr>,
    pub mqtt_addr: Option<SocketAddr>,
}

/// The validated broker choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttMode {
    Embedded {
        addr: SocketAddr,
        node_auth: NodeAuth,
        readers: Vec<crate::gate::Reader>,
        /// MQTT over TLS through the gate, with the server's own CA.
        tls_addr: Option<SocketAddr>,
    },
    External {
        host: String,
        port: u16,
        credentials: Option<(String, String)>,
    },
}

/// Validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub data_dir: PathBuf,
    /// Listen address of the console and API.
    pub http_addr: SocketAddr,
    pub mqtt: MqttMode,
    /// Embedded: connections the broker accepts. Both: nodes tracked in memory.
    pub max_connections: usize,
    pub stale_after: Duration,
    /// How long a job lease lasts without renewal.
    pub lease: Duration,
    /// Names the TLS server certificate is issued for.
    pub tls_names: Vec<String>,
    /// HTTPS listen address, if any.
    pub https_addr: Option<SocketAddr>,
    pub anonymous_audit_per_minute: u32,
    /// When the server's node rules raise their conditions.
    pub node_rules: crate::node_watch::NodeRulesPolicy,
    /// The named watchdog policies of the server's sustained rules.
    pub watchdog: crate::policies::WatchdogPolicies,
    /// The named retention policies.
    pub retention: crate::policies::RetentionPolicies,
    /// The named upload policies.
    pub delivery: crate::policies::DeliveryPolicies,
    /// The key that seals destination secrets.
    pub secrets_key_file: PathBuf,
    /// The named recording profiles jobs and schedules choose from.
    pub profiles: crate::policies::RecordingProfiles,
    /// The largest file an appliance may upload, in bytes.
    pub max_upload_bytes: u64,
    /// `[uploads] cache_max_mb` in bytes.
    pub cache_max_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] rakkr_config::ConfigError),
    #[error("config `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ServerConfig {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        Ok(rakkr_config::load(file, ENV_PREFIX, std::env::vars())?)
    }

    pub fn validate(self, flags: &Overrides) -> Result<ServerSettings, ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        let data_dir = flags.data_dir.clone().unwrap_or(self.data_dir);
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let http_addr = flags.http_addr.unwrap_or(self.http.addr);
        let m = &self.mqtt;
        let mqtt = match m.broker {
            BrokerMode::Embedded => {
                if m.host.is_some()
                    || m.port.is_some()
                    || m.username.is_some()
                    || m.password.is_some()
                {
                    return Err(invalid(
                        "mqtt.host",
                        "host, port and credentials are for broker = \"external\"",
                    ));
                }
                let addr = flags.mqtt_addr.unwrap_or(m.addr);
                if http_addr.port() != 0 && http_addr == addr {
                    return Err(invalid("mqtt.addr", "must differ from http.addr"));
                }
                if !addr.ip().is_loopback() && !m.insecure_allow_remote {
                    return Err(invalid(
                        "mqtt.addr",
                        "the plain-TCP listener carries credentials in clear, so it stays on \
                         loopback; use mqtt.tls_addr for appliances, or set \
                         mqtt.insecure_allow_remote = true to accept the risk",
                    ));
                }
                if m.tls_addr.is_some() && m.node_auth == NodeAuth::None {
                    return Err(invalid(
                        "mqtt.tls_addr",
                        "TLS terminates in the gate: it needs node_auth = \"credentials\"",
                    ));
                }
                let mut readers = Vec::new();
                for r in &m.readers {
                    let hex = r.password_sha256.len() == 64
                        && r.password_sha256.bytes().all(|b| b.is_ascii_hexdigit());
                    if r.name.is_empty() || r.name.contains(':') || !hex {
                        return Err(invalid(
                            "mqtt.readers",
                            "each reader needs a name (without ':') and password_sha256 (64 hex digits)",
                        ));
                    }
                    readers.push(crate::gate::Reader {
                        name: r.name.clone(),
                        password_sha256: r.password_sha256.to_ascii_lowercase(),
                    });
                }
                if m.node_auth == NodeAuth::None && !readers.is_empty() {
                    return Err(invalid(
                        "mqtt.readers",
                        "readers are checked by the gate: they need node_auth = \"credentials\"",
                    ));
                }
                MqttMode::Embedded {
                    addr,
                    node_auth: m.node_auth,
                    readers,
                    tls_addr: m.tls_addr,
                }
            }
            BrokerMode::External => {
                if flags.mqtt_addr.is_some() {
                    return Err(invalid(
                        "mqtt.addr",
                        "--mqtt-addr is the embedded broker's; this server uses an external one",
                    ));
                }
                let host = m
                    .host
                    .clone()
                    .filter(|h| !h.trim().is_empty())
                    .ok_or_else(|| {
                        invalid("mqtt.host", "broker = \"external\" needs the broker's host")
                    })?;
                let credentials = match (&m.username, &m.password) {
                    (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                    (None, None) => None,
                    _ => {
                        return Err(invalid(
                            "mqtt.username",
                            "give both username and password, or neither",
                        ));
                    }
                };
                MqttMode::External {
                    host,
                    port: m.port.unwrap_or(1883),
                    credentials,
                }
            }
        };
        if !(1..=100_000).contains(&self.mqtt.max_connections) {
            return Err(invalid("mqtt.max_connections", "must be 1-100000"));
        }
        if !(1000..=600_000).contains(&self.console.stale_after_ms) {
            return Err(invalid("console.stale_after_ms", "must be 1000-600000 ms"));
        }
        // Nodes renew at a third of the lease: a 1 s lease would need 3 renewals
        // a second from every recording node.
        if !(3_000..=3_600_000).contains(&self.jobs.lease_ms) {
            return Err(invalid("jobs.lease_ms", "must be 3000-3600000 ms"));
        }
        if !(1_000..=86_400_000).contains(&self.health.node_offline_after_ms) {
            return Err(invalid(
                "health.node_offline_after_ms",
                "must be 1000-86400000 ms",
            ));
        }
        if !(2_000..=86_400_000).contains(&self.health.telemetry_stale_after_ms) {
            return Err(invalid(
                "health.telemetry_stale_after_ms",
                "must be 2000-86400000 ms",
            ));
        }
        if !(1..=100_000).contains(&self.http.anonymous_audit_per_minute) {
            return Err(invalid(
                "http.anonymous_audit_per_minute",
                "must be 1-100000",
            ));
        }
        if !(1..=16 << 20).contains(&self.uploads.max_file_mb) {
            return Err(invalid("uploads.max_file_mb", "must be 1-16777216 MB"));
        }
        if self
            .uploads
            .cache_max_mb
            .is_some_and(|mb| !(1..=1 << 34).contains(&mb))
        {
            return Err(invalid("uploads.cache_max_mb", "must be 1-17179869184 MB"));
        }
        let watchdog = crate::policies::WatchdogPolicies::from_config(self.watchdog.clone())
            .map_err(|e| invalid("watchdog", &e))?;
        let profiles = crate::policies::RecordingProfiles::from_config(self.recording.clone())
            .map_err(|e| invalid("recording", &e))?;
        let retention = crate::policies::RetentionPolicies::from_config(self.retention.clone())
            .map_err(|e| invalid("retention", &e))?;
        let delivery = crate::policies::DeliveryPolicies::from_config(self.delivery.clone())
            .map_err(|e| invalid("delivery", &e))?;
        Ok(ServerSettings {
            secrets_key_file: self
                .secrets
                .key_file
                .clone()
                .unwrap_or_else(|| data_dir.join("secrets.key")),
            delivery,
            watchdog,
            retention,
            profiles,
            max_upload_bytes: self.uploads.max_file_mb << 20,
            cache_max_bytes: self.uploads.cache_max_mb.map(|mb| mb << 20),
            node_rules: crate::node_watch::NodeRulesPolicy {
                offline_after_ms: self.health.node_offline_after_ms,
                stale_after_ms: self.health.telemetry_stale_after_ms,
            },
            anonymous_audit_per_minute: self.http.anonymous_audit_per_minute,
            https_addr: self.http.tls_addr,
            tls_names: self.tls.server_names.clone(),
            lease: Duration::from_millis(self.jobs.lease_ms),
            data_dir,
            http_addr,
            mqtt,
            max_connections: self.mqtt.max_connections,
            stale_after: Duration::from_millis(self.console.stale_after_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str, flags: &Overrides) -> Result<ServerSettings, ConfigError> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        let c: ServerConfig = rakkr_config::load(Some(f.path()), ENV_PREFIX, Vec::new())?;
        c.validate(flags)
    }

    #[test]
    fn watchdog_policies_default_to_the_builtin_list_and_a_section_replaces_it() {
        let s = settings("", &Overrides::default()).unwrap();
        assert_eq!(s.watchdog, crate::policies::WatchdogPolicies::builtin());
        let s = settings(
            "[watchdog]\ndefault = \"quiet\"\n[watchdog.policies.quiet]\n\
             low_signal_dbfs = -70.0\ngrace_s = 0\ncumulative_s = 60\nclear_s = 10\n",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.watchdog.names().collect::<Vec<_>>(), ["quiet"]);
        let e = settings(
            "[watchdog]\ndefault = \"loud\"\n[watchdog.policies.quiet]\n\
             low_signal_dbfs = -70.0\ngrace_s = 0\ncumulative_s = 60\nclear_s = 10\n",
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("config `watchdog`: the default \"loud\" is not one of them"),
            "{e}"
        );
    }

    #[test]
    fn recording_profiles_default_to_the_builtin_list_and_a_section_replaces_it() {
        let s = settings("", &Overrides::default()).unwrap();
        assert_eq!(s.profiles, crate::policies::RecordingProfiles::builtin());
        let s = settings(
            "[recording]\ndefault_profile = \"mono\"\n[recording.profiles.mono]\nchannel_mode = \"mono\"\n",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.profiles.names().collect::<Vec<_>>(), ["mono"]);
        let e = settings(
            "[recording]\ndefault_profile = \"x\"\n[recording.profiles.x]\nbits = 12\n",
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "config `recording`: recording profile \"x\": 12-bit files are not supported"
            ),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let flags = Overrides {
            data_dir: Some("/flag".into()),
            http_addr: Some("127.0.0.1:9".parse().unwrap()),
            mqtt_addr: None,
        };
        let s = settings(
            "data_dir = \"/file\"\n[mqtt]\naddr = \"127.0.0.1:7\"\n",
            &flags,
        )
        .unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/flag"));
        assert_eq!(s.http_addr.port(), 9);
        assert_eq!(
            s.mqtt,
            MqttMode::Embedded {
                addr: "127.0.0.1:7".parse().unwrap(),
                node_auth: NodeAuth::Credentials,
                readers: Vec::new(),
                tls_addr: None,
            }
        );
    }

    #[test]
    fn a_remote_broker_needs_explicit_consent() {
        let no = Overrides::default();
        let e = settings("[mqtt]\naddr = \"0.0.0.0:1883\"\n", &no)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mqtt.addr") && e.contains("insecure_allow_remote"),
            "{e}"
        );
        let ok = settings(
            "[mqtt]\naddr = \"0.0.0.0:1883\"\ninsecure_allow_remote = true\n",
            &no,
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn an_external_broker_is_named_with_its_credentials() {
        let no = Overrides::default();
        let s = settings(
            "[mqtt]\nbroker = \"external\"\nhost = \"mq.site\"\nusername = \"rakkr-server\"\n\
             password = \"pw\"\n",
            &no,
        )
        .unwrap();
        assert_eq!(
            s.mqtt,
            MqttMode::External {
                host: "mq.site".into(),
                port: 1883,
                credentials: Some(("rakkr-server".into(), "pw".into()))
            }
        );
        for (text, key) in [
            ("[mqtt]\nbroker = \"external\"\n", "mqtt.host"),
            (
                "[mqtt]\nbroker = \"external\"\nhost = \"h\"\nusername = \"u\"\n",
                "mqtt.username",
            ),
            ("[mqtt]\nhost = \"h\"\n", "mqtt.host"),
            ("[mqtt]\nbroker = \"elsewhere\"\n", "broker"),
        ] {
            let e = settings(text, &no).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let flags = Overrides {
            mqtt_addr: Some("127.0.0.1:1".parse().unwrap()),
            ..Overrides::default()
        };
        let e = settings("[mqtt]\nbroker = \"external\"\nhost = \"h\"\n", &flags)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--mqtt-addr"), "{e}");
    }

    #[test]
    fn limits_are_checked() {
        let no = Overrides::default();
        for (text, key) in [
            ("[mqtt]\nmax_connections = 0\n", "mqtt.max_connections"),
            ("[console]\nstale_after_ms = 1\n", "console.stale_after_ms"),
            ("[http]\naddr = \"127.0.0.1:1883\"\n", "mqtt.addr"),
        ] {
            let e = settings(text, &no).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
