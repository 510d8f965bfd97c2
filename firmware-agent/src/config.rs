//! Agent configuration: parsed from TOML + `RAKKR_AGENT_*` environment
//! variables (see `rakkr-config`), then validated into [`AgentSettings`].
//!
//! ```toml
//! node_id = "studio-a"          # required
//! slot = "none"                 # a | b | none (booted root slot)
//! realtime = true               # SCHED_FIFO capture thread and mlockall; runs anyway if denied
//! recordings_dir = "/data/recordings"  # takes; interrupted ones are recovered at start
//! state_dir = "/data/rakkr"     # durable outbox; without it, pending events live in memory only
//! max_jobs = 4                  # recording jobs at once (on disjoint channels); 0: none
//!
//! [mqtt]
//! host = "127.0.0.1"
//! port = 1883                   # 8883 with TLS
//! keep_alive_secs = 5
//! tls = false                   # true: MQTT over TLS, trusting the fleet CA
//! ca_file = "/data/rakkr/ca.pem"  # default with tls: {state_dir}/ca.pem (from `enroll`)
//!
//! [source]                     # either an ALSA device …
//! kind = "alsa"
//! device = "hw:CARD=USB,DEV=0"  # see `rakkr-agent devices`
//! channels = 8
//! sample_rate = 48000
//! format = "S24_3LE"            # S16_LE | S24_3LE | S24_LE | S32_LE | FLOAT_LE
//! period_frames = 4096         # default: a power of two near 1/12 s at the rate
//! periods = 4                   # device buffer, in periods
//!
//! [source]                     # … or a synthetic test signal
//! kind = "synthetic"
//! channels = 2
//! sample_rate = 48000
//! period_frames = 4096
//! signal = "demo"               # demo | tone | noise | silence | clipping | flatline
//! level_dbfs = -12.0            # tone and noise
//! freq_hz = 1000.0              # tone
//!
//! [upload]                     # finished takes go to the fleet server (absent: they stay)
//! server = "https://fleet.example:8443"
//! chunk_mib = 8                 # per request: what a cut costs at most (1-16)
//! max_kbps = 0                  # bandwidth cap for metered links (0: none)
//! stall_timeout_s = 60           # a request moving no byte this long is resumed on a new connection
//! windows = ["22:00-06:00"]     # only at these times of day (absent: any time)
//! time_zone = "Europe/Berlin"   # of the windows (default UTC)
//! delete_confirmed = true       # delete a file once the server confirmed it, verified
//! alert_after_s = 600           # no upload through this long: upload_failing (a refusal: at once)
//! ca_file = "/data/rakkr/ca.pem"  # default with https: {state_dir}/ca.pem (from `enroll`)
//!
//! [retention]                  # uploaded takes kept here (delete_confirmed = false)
//! max_age_days = 30             # go this long after they ended (absent: no limit)
//! max_mb = 100000               # the recordings directory stays under this (absent: no limit)
//! min_free_mb = 4096            # the disk keeps this much free; takes not uploaded never go
//!
//! [update]                   # A/B image updates (absent: this is not an A/B appliance)
//! public_key = "RWQ…"           # the release key's minisign public key line
//! target = "x86_64"             # the appliance type; images for another are refused
//! boot_env = "/boot/grub/grubenv"  # GRUB environment block the boot script reads
//! slot_a = "/dev/disk/by-partlabel/root-a"
//! slot_b = "/dev/disk/by-partlabel/root-b"
//! cmdline = "/proc/cmdline"     # names the booted slot: rakkr.slot=a|b
//! reboot_command = ["systemctl", "reboot"]  # run once an ordered image is staged
//!
//! [meters]
//! local_interval_ms = 100       # the appliance's own display: 10 Hz
//! telemetry_interval_ms = 1000  # MQTT: 1 Hz; a multiple of the local interval
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use rakkr_protocol::NodeId;
use rakkr_protocol::payload::{BootSlot, DBFS_FLOOR, MAX_CHANNELS};
use serde::Deserialize;

use crate::capture::MeterRates;
use crate::source::alsa::AlsaRequest;
use crate::source::{SampleFormat, Signal, default_period_frames};

/// Prefix of environment overrides, e.g. `RAKKR_AGENT_MQTT__PORT=1884`.
pub const ENV_PREFIX: &str = "RAKKR_AGENT_";

pub const SAMPLE_RATES: [u32; 6] = [8000, 16000, 44100, 48000, 96000, 192000];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub node_id: String,
    #[serde(default = "default_slot")]
    pub slot: BootSlot,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub meters: MetersConfig,
    /// Deprecated: `[telemetry] meter_interval_ms` from before `[meters]`;
    /// read as `meters.telemetry_interval_ms` so older configurations still start.
    pub telemetry: Option<LegacyTelemetryConfig>,
    /// Ask for SCHED_FIFO capture and locked memory (see the `rt` module).
    #[serde(default = "default_realtime")]
    pub realtime: bool,
    /// Where takes are written. Interrupted takes found here are recovered at start.
    pub recordings_dir: Option<PathBuf>,
    /// Where the agent keeps state that must survive restarts (the outbox of
    /// messages the server has not acknowledged). `None`: kept in memory.
    pub state_dir: Option<PathBuf>,
    /// Recording jobs the node runs at once. Jobs need `recordings_dir`.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: u16,
    /// How long the watchdog's quality rules wait (`crate::watchdog`) until
    /// the server sends the rules of the node's watchdog policy
    /// (`cmd/watchdog`), which then apply instead.
    #[serde(default)]
    pub watchdog: crate::watchdog::WatchdogRules,
    /// Where finished takes go (decision 0016); absent: they stay here.
    pub upload: Option<UploadConfig>,
    /// When uploaded takes kept here (`delete_confirmed = false`) go.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// A/B image updates (`crate::update`); absent: not an A/B appliance.
    pub update: Option<UpdateConfig>,
}

/// `[update]`: where the slots and the boot environment are, and whose images to trust.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    pub public_key: String,
    pub target: String,
    pub boot_env: PathBuf,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    #[serde(default = "default_cmdline")]
    pub cmdline: PathBuf,
    /// Run after an image ordered by the server is staged.
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
}

fn default_cmdline() -> PathBuf {
    PathBuf::from("/proc/cmdline")
}

fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}

/// Validated `[update]`.
#[derive(Debug, Clone)]
pub struct UpdateSettings {
    pub public_key: rakkr_update::PublicKey,
    pub target: String,
    pub boot_env: PathBuf,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    pub cmdline: PathBuf,
    /// Program and arguments; never empty.
    pub reboot_command: Vec<String>,
}

/// `[retention]`: which uploaded takes the appliance keeps (`crate::retention`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Delete an uploaded take this many days after it ended.
    pub max_age_days: Option<u32>,
    /// Keep the recordings directory under this many MB (uploaded takes go).
    pub max_mb: Option<u64>,
    /// Keep at least this much of the disk free (uploaded takes go).
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
}

fn default_min_free_mb() -> u64 {
    rakkr_protocol::retention::ApplianceRetention::DEFAULT.min_free_mb
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            max_age_days: None,
            max_mb: None,
            min_free_mb: default_min_free_mb(),
        }
    }
}

/// `[upload]`: sending finished takes to the fleet server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// The server's address, `https://host:8443` (or `http://` on a
    /// trusted network).
    pub server: String,
    /// Bytes per request, in MiB (1-16): what a cut costs at most.
    #[serde(default = "default_chunk_mib")]
    pub chunk_mib: u32,
    /// Upload at most this many kbit/s (0: as fast as the link allows).
    #[serde(default)]
    pub max_kbps: u32,
    /// Delete a file once the server confirmed it holds it, verified.
    #[serde(default = "default_true")]
    pub delete_confirmed: bool,
    /// The CA to trust over HTTPS (default: `{state_dir}/ca.pem`, from `enroll`).
    pub ca_file: Option<PathBuf>,
    /// Raise `upload_failing` when no upload got through for this long.
    #[serde(default = "default_alert_after_s")]
    pub alert_after_s: u32,
    /// Times of day uploads may go, `HH:MM-HH:MM` each (none: any time).
    #[serde(default)]
    pub windows: Vec<String>,
    /// The IANA time zone of `windows`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// A request that moves no byte and gets no answer for this long is
    /// given up and resumed on a new connection (a cut link sends no reset).
    #[serde(default = "default_stall_timeout_s")]
    pub stall_timeout_s: u32,
}

fn default_stall_timeout_s() -> u32 {
    60
}

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_alert_after_s() -> u32 {
    600
}

fn default_chunk_mib() -> u32 {
    8
}

fn default_true() -> bool {
    true
}

fn default_max_jobs() -> u16 {
    4
}

fn default_realtime() -> bool {
    true
}

fn default_slot() -> BootSlot {
    BootSlot::None
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    #[serde(default = "default_mqtt_host")]
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT over TLS, trusting the fleet CA in `ca_file`.
    #[serde(default)]
    pub tls: bool,
    /// The CA to trust (default: `{state_dir}/ca.pem`, written by `enroll`).
    pub ca_file: Option<PathBuf>,
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive() -> u16 {
    5
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: default_mqtt_host(),
            port: default_mqtt_port(),
            keep_alive_secs: default_keep_alive(),
            username: None,
            password: None,
            tls: false,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    Synthetic(SyntheticConfig),
    Alsa(AlsaConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlsaConfig {
    /// PCM name, e.g. `hw:CARD=USB,DEV=0` (see `rakkr-agent devices`).
    pub device: String,
    #[serde(default = "default_channels")]
    pub channels: u16,
    #[serde(default = "default_rate")]
    pub sample_rate: u32,
    /// S16_LE, S24_3LE, S24_LE, S32_LE or FLOAT_LE.
    #[serde(default = "default_format")]
    pub format: String,
    /// Frames per period; default [`default_period_frames`] of the rate.
    #[serde(default)]
    pub period_frames: Option<u32>,
    /// Device buffer, in periods.
    #[serde(default = "default_periods")]
    pub periods: u32,
}

fn default_format() -> String {
    "S32_LE".into()
}
fn default_periods() -> u32 {
    4
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig::Synthetic(SyntheticConfig::default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    Demo,
    Tone,
    Noise,
    Silence,
    Clipping,
    Flatline,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    #[serde(default = "default_channels")]
    pub channels: u16,
    #[serde(default = "default_rate")]
    pub sample_rate: u32,
    /// Frames per period; default [`default_period_frames`] of the rate.
    #[serde(default)]
    pub period_frames: Option<u32>,
    #[serde(default = "default_signal")]
    pub signal: SignalKind,
    #[serde(default = "default_level")]
    pub level_dbfs: f64,
    #[serde(default = "default_freq")]
    pub freq_hz: f64,
}

fn default_channels() -> u16 {
    2
}
fn default_rate() -> u32 {
    48000
}
fn default_signal() -> SignalKind {
    SignalKind::Demo
}
fn default_level() -> f64 {
    -12.0
}
fn default_freq() -> f64 {
    1000.0
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            channels: default_channels(),
            sample_rate: default_rate(),
            period_frames: None,
            signal: default_signal(),
            level_dbfs: default_level(),
            freq_hz: default_freq(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyTelemetryConfig {
    pub meter_interval_ms: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetersConfig {
    #[serde(default = "default_local_meter_interval")]
    pub local_interval_ms: u32,
    #[serde(default = "default_telemetry_meter_interval")]
    pub telemetry_interval_ms: u32,
}

fn default_local_meter_interval() -> u32 {
    MeterRates::default().local.as_millis() as u32
}

fn default_telemetry_meter_interval() -> u32 {
    MeterRates::default().telemetry.as_millis() as u32
}

impl Default for MetersConfig {
    fn default() -> Self {
        MetersConfig {
            local_interval_ms: default_local_meter_interval(),
            telemetry_interval_ms: default_telemetry_meter_interval(),
        }
    }
}

/// Validated, typed settings the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_id: NodeId,
    pub slot: BootSlot,
    pub mqtt: MqttSettings,
    pub source: SourceSettings,
    pub meters: MeterRates,
    pub realtime: bool,
    pub recordings_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// Recording jobs at once; 0 without a recordings directory.
    pub max_jobs: u16,
    pub watchdog: crate::watchdog::WatchdogRules,
    pub upload: Option<UploadSettings>,
    pub retention: crate::retention::RetentionRules,
    pub update: Option<UpdateSettings>,
}

/// Validated `[upload]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSettings {
    /// The server's base URL, without a trailing `/`.
    pub server: String,
    pub chunk_bytes: usize,
    /// Bytes per second at most; 0: no cap.
    pub max_bytes_per_s: u64,
    /// With HTTPS: the CA file to trust.
    pub ca_file: Option<PathBuf>,
    /// Failing uploads become a health issue after this long (counted only
    /// while a window is open).
    pub alert_after: Duration,
    /// When uploads may go.
    pub windows: crate::upload_window::UploadWindows,
    /// A request moving no byte and getting no answer this long is given up.
    pub stall_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    pub credentials: Option<(String, String)>,
    /// With TLS: the CA file to trust.
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum SourceSettings {
    Synthetic {
        channels: u16,
        sample_rate: u32,
        period_frames: usize,
        signal: Signal,
    },
    Alsa(AlsaRequest),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] rakkr_config::ConfigError),
    #[error("config `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl AgentConfig {
    /// Read `file` with environment overrides from the process environment.
    pub fn load(file: &Path) -> Result<AgentConfig, ConfigError> {
        Ok(rakkr_config::load(
            Some(file),
            ENV_PREFIX,
            std::env::vars(),
        )?)
    }

    pub fn validate(self) -> Result<AgentSettings, ConfigError> {
        let node_id = NodeId::new(self.node_id).map_err(|e| invalid("node_id", e.to_string()))?;

        let m = self.mqtt;
        if m.host.trim().is_empty() {
            return Err(invalid("mqtt.host", "must not be empty"));
        }
        if m.port == 0 {
            return Err(invalid("mqtt.port", "must be 1-65535"));
        }
        if !(2..=600).contains(&m.keep_alive_secs) {
            return Err(invalid("mqtt.keep_alive_secs", "must be 2-600 seconds"));
        }
        let tls_ca = match (m.tls, m.ca_file, &self.state_dir) {
            (false, None, _) => None,
            (false, Some(_), _) => {
                return Err(invalid("mqtt.ca_file", "is for tls = true"));
            }
            (true, Some(file), _) => Some(file),
            (true, None, Some(dir)) => Some(dir.join(crate::identity::CA_FILE)),
            (true, None, None) => {
                return Err(invalid(
                    "mqtt.ca_file",
                    "tls = true needs the CA to trust: give ca_file, or a state_dir where enroll keeps it",
                ));
            }
        };
        let credentials = match (m.username, m.password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "mqtt.username",
                    "username and password go together",
                ));
            }
        };

        let source = match self.source {
            SourceConfig::Alsa(a) => {
                let period_frames = a
                    .period_frames
                    .unwrap_or_else(|| default_period_frames(a.sample_rate));
                check_stream(a.channels, a.sample_rate, period_frames)?;
                if a.device.trim().is_empty() {
                    return Err(invalid("source.device", "must name a PCM, e.g. hw:1,0"));
                }
                let format = SampleFormat::parse(&a.format).ok_or_else(|| {
                    invalid(
                        "source.format",
                        format!(
                            "{:?} is not one of S16_LE, S24_3LE, S24_LE, S32_LE, FLOAT_LE",
                            a.format
                        ),
                    )
                })?;
                if !(2..=64).contains(&a.periods) {
                    return Err(invalid("source.periods", "must be 2-64"));
                }
                SourceSettings::Alsa(AlsaRequest {
                    device: a.device,
                    channels: a.channels,
                    rate: a.sample_rate,
                    format,
                    period_frames,
                    periods: a.periods,
                })
            }
            SourceConfig::Synthetic(s) => {
                let period_frames = s
                    .period_frames
                    .unwrap_or_else(|| default_period_frames(s.sample_rate));
                check_stream(s.channels, s.sample_rate, period_frames)?;
                let level = s.level_dbfs;
                if !(f64::from(DBFS_FLOOR)..=0.0).contains(&level) {
                    return Err(invalid(
                        "source.level_dbfs",
                        format!("must be {DBFS_FLOOR}..=0 dBFS"),
                    ));
                }
                let nyquist = f64::from(s.sample_rate) / 2.0;
                if !(s.freq_hz > 0.0 && s.freq_hz < nyquist) {
                    return Err(invalid(
                        "source.freq_hz",
                        format!("must be between 0 and {nyquist} Hz (half the sample rate)"),
                    ));
                }
                let signal = match s.signal {
                    SignalKind::Demo => Signal::Demo,
                    SignalKind::Silence => Signal::Silence,
                    SignalKind::Clipping => Signal::Clipping,
                    SignalKind::Flatline => Signal::Flatline,
                    SignalKind::Tone => Signal::Tone {
                        freq_hz: s.freq_hz,
                        level_dbfs: level,
                    },
                    SignalKind::Noise => Signal::Noise { level_dbfs: level },
                };
                SourceSettings::Synthetic {
                    channels: s.channels,
                    sample_rate: s.sample_rate,
                    period_frames: period_frames as usize,
                    signal,
                }
            }
        };

        let (mut local_ms, mut telemetry_ms) = (
            self.meters.local_interval_ms,
            self.meters.telemetry_interval_ms,
        );
        if let Some(legacy) = &self.telemetry {
            if telemetry_ms != default_telemetry_meter_interval() {
                return Err(invalid(
                    "telemetry.meter_interval_ms",
                    "replaced by meters.telemetry_interval_ms; give only that",
                ));
            }
            telemetry_ms = legacy.meter_interval_ms;
            // Keep the local windows a whole fraction of the old interval.
            local_ms = (20..=local_ms)
                .rev()
                .find(|l| telemetry_ms % l == 0)
                .unwrap_or(local_ms);
        }
        let meters = MeterRates {
            local: Duration::from_millis(u64::from(local_ms)),
            telemetry: Duration::from_millis(u64::from(telemetry_ms)),
        };
        meters.check().map_err(|e| {
            invalid(
                "meters.local_interval_ms / meters.telemetry_interval_ms",
                &e,
            )
        })?;

        self.watchdog
            .validate()
            .map_err(|e| invalid("watchdog", e))?;
        if usize::from(self.max_jobs) > rakkr_protocol::job::MAX_NODE_JOBS {
            return Err(invalid(
                "max_jobs",
                format!("must be 0-{}", rakkr_protocol::job::MAX_NODE_JOBS),
            ));
        }
        let delete_confirmed = self.upload.as_ref().is_none_or(|u| u.delete_confirmed);
        let upload = match self.upload {
            None => None,
            Some(u) => {
                let server = u.server.trim().trim_end_matches('/').to_owned();
                let https = server.starts_with("https://");
                if !(https || server.starts_with("http://")) || server.len() < 10 {
                    return Err(invalid(
                        "upload.server",
                        format!("{server:?} is not an http:// or https:// address"),
                    ));
                }
                if !(1..=16).contains(&u.chunk_mib) {
                    return Err(invalid("upload.chunk_mib", "must be 1-16"));
                }
                if self.recordings_dir.is_none() {
                    return Err(invalid(
                        "upload",
                        "uploads send the takes in recordings_dir: set it",
                    ));
                }
                let ca_file = match (https, u.ca_file, &self.state_dir) {
                    (false, None, _) => None,
                    (false, Some(_), _) => {
                        return Err(invalid("upload.ca_file", "is for an https:// server"));
                    }
                    (true, Some(f), _) => Some(f),
                    (true, None, Some(dir)) => Some(dir.join(crate::identity::CA_FILE)),
                    (true, None, None) => {
                        return Err(invalid(
                            "upload.ca_file",
                            "an https:// server needs the CA to trust: give ca_file, or a state_dir where enroll keeps it",
                        ));
                    }
                };
                if !(1..=604_800).contains(&u.alert_after_s) {
                    return Err(invalid("upload.alert_after_s", "must be 1-604800 seconds"));
                }
                if !(1..=3_600).contains(&u.stall_timeout_s) {
                    return Err(invalid("upload.stall_timeout_s", "must be 1-3600 seconds"));
                }
                let windows = crate::upload_window::UploadWindows::parse(&u.windows, &u.time_zone)
                    .map_err(|e| invalid("upload.windows", &e))?;
                Some(UploadSettings {
                    windows,
                    alert_after: Duration::from_secs(u64::from(u.alert_after_s)),
                    server,
                    chunk_bytes: (u.chunk_mib as usize) << 20,
                    max_bytes_per_s: u64::from(u.max_kbps) * 1000 / 8,
                    ca_file,
                    stall_timeout: Duration::from_secs(u64::from(u.stall_timeout_s)),
                })
            }
        };
        let local = rakkr_protocol::retention::ApplianceRetention {
            delete_confirmed,
            max_age_days: self.retention.max_age_days,
            max_mb: self.retention.max_mb,
            min_free_mb: self.retention.min_free_mb,
        };
        local.validate().map_err(|e| invalid("retention", e))?;
        let retention = crate::retention::RetentionRules::of(&local);
        let update = self.update.map(UpdateConfig::validate).transpose()?;
        Ok(AgentSettings {
            update,
            upload,
            retention,
            node_id,
            slot: self.slot,
            mqtt: MqttSettings {
                host: m.host,
                port: m.port,
                keep_alive: Duration::from_secs(u64::from(m.keep_alive_secs)),
                credentials,
                tls_ca,
            },
            source,
            meters,
            realtime: self.realtime,
            max_jobs: if self.recordings_dir.is_some() {
                self.max_jobs
            } else {
                0
            },
            recordings_dir: self.recordings_dir,
            state_dir: self.state_dir,
            watchdog: self.watchdog,
        })
    }
}

impl UpdateConfig {
    fn validate(self) -> Result<UpdateSettings, ConfigError> {
        let public_key = rakkr_update::PublicKey::parse(&self.public_key)
            .map_err(|e| invalid("update.public_key", e.to_string()))?;
        let target = self.target.trim().to_owned();
        if !rakkr_update::is_valid_target(&target) {
            return Err(invalid("update.target", "letters, digits, - and _ (1-32)"));
        }
        if self.slot_a == self.slot_b {
            return Err(invalid("update.slot_b", "must not be slot_a"));
        }
        if self
            .reboot_command
            .first()
            .is_none_or(|p| p.trim().is_empty())
        {
            return Err(invalid("update.reboot_command", "must name a program"));
        }
        Ok(UpdateSettings {
            public_key,
            target,
            boot_env: self.boot_env,
            slot_a: self.slot_a,
            slot_b: self.slot_b,
            cmdline: self.cmdline,
            reboot_command: self.reboot_command,
        })
    }
}

/// Bounds shared by every source kind.
fn check_stream(channels: u16, sample_rate: u32, period_frames: u32) -> Result<(), ConfigError> {
    if channels == 0 || usize::from(channels) > MAX_CHANNELS {
        return Err(invalid(
            "source.channels",
            format!("must be 1-{MAX_CHANNELS}"),
        ));
    }
    if !SAMPLE_RATES.contains(&sample_rate) {
        return Err(invalid(
            "source.sample_rate",
            format!("{sample_rate} Hz is not one of {SAMPLE_RATES:?}"),
        ));
    }
    if !(16..=16384).contains(&period_frames) {
        return Err(invalid("source.period_frames", "must be 16-16384"));
    }
    Ok(())
}

impl AgentSettings {
    /// Use the identity from `rakkr-agent enroll` (in `state_dir`) as the MQTT
    /// credentials, unless the configuration names credentials itself.
    pub fn with_identity(mut self) -> Result<Self, crate::identity::IdentityError> {
        let Some(dir) = &self.state_dir else {
            return Ok(self);
        };
        if self.mqtt.credentials.is_some() {
            return Ok(self);
        }
        if let Some(identity) = crate::identity::load(dir)? {
            if identity.node != self.node_id {
                return Err(crate::identity::IdentityError::Corrupt {
                    path: crate::identity::path(dir),
                    detail: format!(
                        "it is node {}'s, but this configuration is for node {}",
                        identity.node, self.node_id
                    ),
                });
            }
            self.mqtt.credentials = Some((identity.node.to_string(), identity.credential));
        }
        Ok(self)
    }

    /// Settings for a simulated appliance with a demo signal (used by the demo and tests).
    pub fn simulated(node_id: NodeId, mqtt_host: &str, mqtt_port: u16, channels: u16) -> Self {
        AgentSettings {
            node_id,
            slot: BootSlot::None,
            update: None,
            mqtt: MqttSettings {
                host: mqtt_host.to_owned(),
                port: mqtt_port,
                keep_alive: Duration::from_secs(u64::from(default_keep_alive())),
                credentials: None,
                tls_ca: None,
            },
            source: SourceSettings::Synthetic {
                channels,
                sample_rate: default_rate(),
                period_frames: default_period_frames(default_rate()) as usize,
                signal: Signal::Demo,
            },
            meters: MeterRates::default(),
            // Many simulated appliances share one process: no real-time claims.
            realtime: false,
            recordings_dir: None,
            state_dir: None,
            max_jobs: 0,
            watchdog: Default::default(),
            upload: None,
            retention: crate::retention::RetentionRules::of(
                &rakkr_protocol::retention::ApplianceRetention::DEFAULT,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentSettings, ConfigError> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        let c: AgentConfig = rakkr_config::load(Some(f.path()), ENV_PREFIX, Vec::new())?;
        c.validate()
    }

    #[test]
    fn an_update_section_is_checked_before_anything_is_written() {
        let section = |key: &str, target: &str, b: &str| {
            format!(
                "node_id = \"n\"\n[update]\npublic_key = \"{key}\"\ntarget = \"{target}\"\n\
                 boot_env = \"/boot/grub/grubenv\"\nslot_a = \"/dev/a\"\nslot_b = \"{b}\"\n"
            )
        };
        let key = "RWR65r76Y9WgHPHfaA7SfiQXZVyv60hVaUEAJI8+HI/+SOxBnqZed9+W";
        let u = parse(&section(key, "x86_64", "/dev/b"))
            .unwrap()
            .update
            .unwrap();
        assert_eq!(u.public_key.id(), "1CA0D563FABEE67A");
        assert_eq!(u.cmdline, Path::new("/proc/cmdline"));
        assert!(parse("node_id = \"n\"\n").unwrap().update.is_none());
        for (text, key_name) in [
            (section("RWRnot", "x86_64", "/dev/b"), "update.public_key"),
            (section(key, "x86 64", "/dev/b"), "update.target"),
            (section(key, "x86_64", "/dev/a"), "update.slot_b"),
        ] {
            match parse(&text) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, key_name),
                other => panic!("{key_name}: {other:?}"),
            }
        }
        let unknown = section(key, "x86_64", "/dev/b") + "slot_c = \"/dev/c\"\n";
        assert!(parse(&unknown).is_err());
    }

    #[test]
    fn a_minimal_config_gets_defaults() {
        let s = parse("node_id = \"n1\"\n").unwrap();
        assert_eq!(s.node_id.as_str(), "n1");
        assert_eq!(s.mqtt.port, 1883);
        assert_eq!(s.meters, MeterRates::default());
        // The section from before [meters] still works.
        let old = parse("node_id = \"n\"\n[telemetry]\nmeter_interval_ms = 250\n").unwrap();
        assert_eq!(
            old.meters,
            MeterRates {
                local: Duration::from_millis(50),
                telemetry: Duration::from_millis(250)
            }
        );
        let SourceSettings::Synthetic {
            channels, signal, ..
        } = s.source
        else {
            panic!()
        };
        assert_eq!((channels, signal), (2, Signal::Demo));
    }

    #[test]
    fn a_full_config_parses() {
        let s = parse(
            "node_id = \"n1\"\nslot = \"b\"\n[mqtt]\nhost = \"broker\"\nport = 8883\n\
             username = \"u\"\npassword = \"p\"\n[source]\nkind = \"synthetic\"\nchannels = 8\n\
             sample_rate = 96000\nsignal = \"tone\"\nfreq_hz = 440.0\nlevel_dbfs = -6.0\n\
             [meters]\nlocal_interval_ms = 50\ntelemetry_interval_ms = 250\n",
        )
        .unwrap();
        assert_eq!(s.slot, BootSlot::B);
        assert_eq!(s.mqtt.credentials, Some(("u".into(), "p".into())));
        let SourceSettings::Synthetic {
            channels,
            sample_rate,
            signal,
            ..
        } = s.source
        else {
            panic!()
        };
        assert_eq!((channels, sample_rate), (8, 96000));
        assert_eq!(
            signal,
            Signal::Tone {
                freq_hz: 440.0,
                level_dbfs: -6.0
            }
        );
    }

    #[test]
    fn an_alsa_source_parses() {
        let s = parse(
            "node_id = \"n\"\n[source]\nkind = \"alsa\"\ndevice = \"hw:CARD=USB,DEV=0\"\n\
             channels = 8\nsample_rate = 96000\nformat = \"s24_3le\"\n",
        )
        .unwrap();
        let SourceSettings::Alsa(req) = s.source else {
            panic!()
        };
        assert_eq!(req.device, "hw:CARD=USB,DEV=0");
        assert_eq!(
            (req.channels, req.rate, req.format),
            (8, 96000, SampleFormat::S24_3Le)
        );
        assert_eq!(
            (req.period_frames, req.periods),
            (8192, 4),
            "1/12 s at 96 kHz"
        );
    }

    #[test]
    fn problems_are_named() {
        for (text, expect) in [
            ("", "missing field `node_id`"),
            ("node_id = \"N 1\"", "node_id"),
            ("node_id = \"n\"\nbogus = 1", "unknown field `bogus`"),
            (
                "node_id = \"n\"\n[source]\nkind = \"jack\"",
                "unknown variant `jack`",
            ),
            (
                "node_id = \"n\"\n[source]\nkind = \"alsa\"",
                "missing field `device`",
            ),
            (
                "node_id = \"n\"\n[source]\nkind = \"alsa\"\ndevice = \"hw:0\"\nformat = \"U8\"",
                "source.format",
            ),
            (
                "node_id = \"n\"\n[source]\nkind = \"alsa\"\ndevice = \"hw:0\"\nperiods = 1",
                "source.periods",
            ),
            (
                "node_id = \"n\"\n[source]\nkind = \"synthetic\"\nchannels = 0",
                "source.channels",
            ),
            (
                "node_id = \"n\"\n[source]\nkind = \"synthetic\"\nsample_rate = 1",
                "source.sample_rate",
            ),
            (
                "node_id = \"n\"\n[source]\nkind = \"synthetic\"\nchanels = 2",
                "unknown field `chanels`",
            ),
            ("node_id = \"n\"\n[mqtt]\nport = 0", "mqtt.port"),
            ("node_id = \"n\"\n[mqtt]\nusername = \"u\"", "mqtt.username"),
            (
                "node_id = \"n\"\n[meters]\ntelemetry_interval_ms = 5",
                "telemetry meter interval 5 ms",
            ),
            (
                "node_id = \"n\"\n[meters]\nlocal_interval_ms = 300",
                "a multiple of the local 300 ms",
            ),
            (
                "node_id = \"n\"\n[telemetry]\nmeter_interval_ms = 500\n[meters]\ntelemetry_interval_ms = 2000",
                "telemetry.meter_interval_ms",
            ),
            (
                "node_id = \"n\"\nrecordings_dir = \"/tmp\"\n[upload]\nserver = \"http://s:8080\"\nwindows = [\"22-06\"]",
                "upload.windows",
            ),
            (
                "node_id = \"n\"\nrecordings_dir = \"/tmp\"\n[upload]\nserver = \"http://s:8080\"\nwindows = [\"22:00-06:00\"]\ntime_zone = \"Berlin\"",
                "not an IANA time zone",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(expect), "{text:?}: {e}");
        }
    }
}
