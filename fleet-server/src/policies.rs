//! Named lists from the server's configuration, each with a default:
//!
//! - **Watchdog policies**: the thresholds and durations of the server's
//!   sustained rules ([`crate::signal_watch`]). A schedule names its policy
//!   (`ScheduleSpec::watchdog`) or gets the default; one removed from the
//!   configuration later falls back to the default (the schedule page says so).
//! - **Recording profiles**: how takes are encoded (codec, bits, FLAC level,
//!   file length) and what a recording must be (device sample rate, mono or
//!   stereo, longest take started by hand). A job or schedule names its profile
//!   or gets the default; [`resolve_profile`] turns the name into the job's
//!   `RecordingProfile` and the constraints `jobs::plan_job` checks.
//!
//! - **Retention policies**: which uploaded takes an appliance deletes, and
//!   when. A node's policy is the one operators chose for it, else the
//!   default; its appliance rules are sent to it (`cmd/retention`).
//!
//! Built-in lists are configuration, not code: `defaults/watchdog.toml`,
//! `defaults/profiles.toml` and `defaults/retention.toml`, parsed the same way
//! as the `[watchdog]`, `[recording]` and `[retention]` sections of the
//! server's configuration, each of which replaces its list whole. A name the server does not know is refused when
//! whatever names it is saved.

use std::collections::BTreeMap;

use rakkr_protocol::job::{CodecName, JobSpec, RecordingProfile};
use rakkr_protocol::payload::DBFS_FLOOR;
use rakkr_protocol::retention::{ApplianceRetention, NodeRetention};
use rakkr_protocol::schedule::check_policy_name;
use rakkr_protocol::watchdog::{NodeWatchdog, WatchdogRules};
use serde::{Deserialize, Serialize};

/// The built-in policies (the text of `defaults/watchdog.toml`).
pub const BUILTIN_WATCHDOG: &str = include_str!("../defaults/watchdog.toml");

/// The built-in recording profiles (the text of `defaults/profiles.toml`).
pub const BUILTIN_PROFILES: &str = include_str!("../defaults/profiles.toml");

/// The section `key` of a built-in list's file (`defaults/*.toml`, compiled
/// in; a unit test parses each).
fn builtin_section<T: serde::de::DeserializeOwned>(text: &str, key: &str) -> T {
    let mut file: toml::Table = toml::from_str(text).expect("a built-in list parses");
    assert_eq!(file.len(), 1, "a built-in list's file has one section");
    file.remove(key)
        .expect("a built-in list's file has its section")
        .try_into()
        .expect("a built-in list's section parses")
}

/// Most policies in one list.
pub const MAX_POLICIES: usize = 64;

/// The `[watchdog]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// The policy of a schedule that names none.
    pub default: String,
    pub policies: BTreeMap<String, WatchdogPolicy>,
}

impl WatchdogConfig {
    /// The built-in list.
    pub fn builtin() -> WatchdogConfig {
        builtin_section(BUILTIN_WATCHDOG, "watchdog")
    }
}

/// One policy: how long the appliance's rules wait, and when the scheduled
/// low-signal rule raises and resolves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchdogPolicy {
    /// The appliance's own rules, sent to each node whose policy this is
    /// (`nodes/{node}/cmd/watchdog`); absent fields take their defaults.
    #[serde(default)]
    pub appliance: WatchdogRules,
    /// A channel whose RMS over a telemetry frame is below this (dBFS)
    /// counts as low.
    pub low_signal_dbfs: f32,
    /// Seconds after a scheduled take starts in which its signal does not
    /// count (people arrive, sound checks end).
    pub grace_s: u32,
    /// Seconds of low signal in total, within one take after the grace
    /// period, that raise `low_signal` for the channel.
    pub cumulative_s: u32,
    /// Seconds above the threshold without a break that resolve it.
    pub clear_s: u32,
}

impl WatchdogPolicy {
    fn check(&self) -> Result<(), String> {
        if !(DBFS_FLOOR..=0.0).contains(&self.low_signal_dbfs) {
            return Err(format!(
                "low_signal_dbfs must be {DBFS_FLOOR} to 0, not {}",
                self.low_signal_dbfs
            ));
        }
        if self.grace_s > 86_400 {
            return Err("grace_s must be at most 86400 (a day)".into());
        }
        if !(1..=86_400).contains(&self.cumulative_s) {
            return Err("cumulative_s must be 1 to 86400".into());
        }
        if !(1..=3_600).contains(&self.clear_s) {
            return Err("clear_s must be 1 to 3600".into());
        }
        self.appliance
            .validate()
            .map_err(|e| format!("appliance: {e}"))
    }
}

/// A value in a named list: how it is checked and called in messages.
pub trait Named: Clone + std::fmt::Debug + PartialEq {
    /// What one is called, for messages: "watchdog policy", "recording profile".
    const KIND: &'static str;
    fn check(&self) -> Result<(), String>;
}

impl Named for WatchdogPolicy {
    const KIND: &'static str = "watchdog policy";
    fn check(&self) -> Result<(), String> {
        WatchdogPolicy::check(self)
    }
}

/// An entry with its name, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct NamedEntry<T> {
    pub name: String,
    /// The default (what names none gets).
    pub default: bool,
    #[serde(flatten)]
    pub value: T,
}

/// A validated named list with its default.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedList<T> {
    default: String,
    by_name: BTreeMap<String, T>,
}

impl<T: Named> NamedList<T> {
    /// Check every name and value; the default must be in the list.
    pub fn new(default: String, by_name: BTreeMap<String, T>) -> Result<NamedList<T>, String> {
        let kind = T::KIND;
        if by_name.is_empty() || by_name.len() > MAX_POLICIES {
            return Err(format!("give 1 to {MAX_POLICIES} of them"));
        }
        for (name, value) in &by_name {
            check_policy_name(name)?;
            value.check().map_err(|e| format!("{kind} {name:?}: {e}"))?;
        }
        if !by_name.contains_key(&default) {
            return Err(format!(
                "the default {default:?} is not one of them ({})",
                by_name
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(NamedList { default, by_name })
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.by_name.get(name)
    }

    /// What naming `name` gets: that entry, or the default when it names
    /// none or one that no longer exists; with the name used.
    pub fn for_name(&self, name: Option<&str>) -> (&str, &T) {
        match name.and_then(|n| self.by_name.get_key_value(n)) {
            Some((n, v)) => (n, v),
            None => (&self.default, &self.by_name[&self.default]),
        }
    }

    /// The entry called `name`, or what this server has instead.
    pub fn require(&self, name: &str) -> Result<(&str, &T), String> {
        self.by_name
            .get_key_value(name)
            .map(|(n, v)| (n.as_str(), v))
            .ok_or_else(|| {
                format!(
                    "no {} {name:?}; this server has {}",
                    T::KIND,
                    self.names().collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// Refuse a name the server does not know (when something naming one is saved).
    pub fn check_known(&self, name: Option<&str>) -> Result<(), String> {
        match name {
            Some(n) => self.require(n).map(|_| ()),
            None => Ok(()),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Every entry, by name.
    pub fn list(&self) -> Vec<NamedEntry<T>> {
        self.by_name
            .iter()
            .map(|(name, value)| NamedEntry {
                name: name.clone(),
                default: *name == self.default,
                value: value.clone(),
            })
            .collect()
    }
}

/// The watchdog policies.
pub type WatchdogPolicies = NamedList<WatchdogPolicy>;
/// A watchdog policy with its name, as the API lists it.
pub type NamedWatchdogPolicy = NamedEntry<WatchdogPolicy>;

impl WatchdogPolicies {
    pub fn from_config(config: WatchdogConfig) -> Result<WatchdogPolicies, String> {
        NamedList::new(config.default, config.policies)
    }

    pub fn builtin() -> WatchdogPolicies {
        WatchdogPolicies::from_config(WatchdogConfig::builtin())
            .expect("the built-in policies are valid (a unit test checks them)")
    }

    /// The policy a schedule naming `name` gets.
    pub fn for_schedule(&self, name: Option<&str>) -> (&str, &WatchdogPolicy) {
        self.for_name(name)
    }

    /// What a node whose chosen policy is `name` (none: the default) is sent.
    pub fn for_node(&self, name: Option<&str>) -> NodeWatchdog {
        let (policy, p) = self.for_name(name);
        NodeWatchdog {
            policy: policy.to_owned(),
            rules: p.appliance,
        }
    }
}

/// The built-in retention policies (the text of `defaults/retention.toml`).
pub const BUILTIN_RETENTION: &str = include_str!("../defaults/retention.toml");

/// The `[retention]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// The policy of a node that names none.
    pub default: String,
    pub policies: BTreeMap<String, RetentionPolicy>,
}

impl RetentionConfig {
    /// The built-in list.
    pub fn builtin() -> RetentionConfig {
        builtin_section(BUILTIN_RETENTION, "retention")
    }
}

/// One retention policy: which uploaded takes an appliance deletes, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Sent to each node whose policy this is (`nodes/{node}/cmd/retention`);
    /// absent fields take their defaults.
    #[serde(default)]
    pub appliance: ApplianceRetention,
}

impl Named for RetentionPolicy {
    const KIND: &'static str = "retention policy";
    fn check(&self) -> Result<(), String> {
        self.appliance
            .validate()
            .map_err(|e| format!("appliance: {e}"))
    }
}

/// The retention policies.
pub type RetentionPolicies = NamedList<RetentionPolicy>;
/// A retention policy with its name, as the API lists it.
pub type NamedRetentionPolicy = NamedEntry<RetentionPolicy>;

impl RetentionPolicies {
    pub fn from_config(config: RetentionConfig) -> Result<RetentionPolicies, String> {
        NamedList::new(config.default, config.policies)
    }

    pub fn builtin() -> RetentionPolicies {
        RetentionPolicies::from_config(RetentionConfig::builtin())
            .expect("the built-in retention policies are valid (a unit test checks them)")
    }
}

/// The built-in upload policies (the text of `defaults/delivery.toml`).
pub const BUILTIN_DELIVERY: &str = include_str!("../defaults/delivery.toml");

/// Most destinations one upload policy sends to.
pub const MAX_POLICY_DESTINATIONS: usize = 16;

/// The `[delivery]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// The policy of a recording that names none.
    pub default: String,
    pub policies: BTreeMap<String, DeliveryPolicy>,
}

impl DeliveryConfig {
    /// The built-in list.
    pub fn builtin() -> DeliveryConfig {
        builtin_section(BUILTIN_DELIVERY, "delivery")
    }
}

fn retry_budget_72() -> u32 {
    72
}

/// One upload policy: which destinations each file of a recording goes to,
/// and how long failed deliveries are tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryPolicy {
    /// Destinations by name (`/api/v1/destinations`); none: the server's
    /// recordings directory is the only copy.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// Hours from a delivery's first failed attempt until it is given up
    /// (`failed`, retried by an operator).
    #[serde(default = "retry_budget_72")]
    pub retry_budget_h: u32,
    /// Hours after every destination holds a file until the server deletes
    /// its own copy (0: at once). Absent: the server keeps it, until
    /// `[uploads] cache_max_mb` needs the room. Needs destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_server_copy_after_h: Option<u32>,
}

impl Named for DeliveryPolicy {
    const KIND: &'static str = "upload policy";
    fn check(&self) -> Result<(), String> {
        if self.destinations.len() > MAX_POLICY_DESTINATIONS {
            return Err(format!("at most {MAX_POLICY_DESTINATIONS} destinations"));
        }
        for (i, d) in self.destinations.iter().enumerate() {
            check_policy_name(d).map_err(|e| format!("destination {d:?}: {e}"))?;
            if self.destinations[..i].contains(d) {
                return Err(format!("destination {d:?} is listed twice"));
            }
        }
        if !(1..=8_760).contains(&self.retry_budget_h) {
            return Err("retry_budget_h must be 1 to 8760 (a year)".into());
        }
        if let Some(h) = self.delete_server_copy_after_h {
            if self.destinations.is_empty() {
                return Err("delete_server_copy_after_h needs destinations: without them the server's copy is the only one".into());
            }
            if h > 87_600 {
                return Err("delete_server_copy_after_h must be 0 to 87600 (ten years)".into());
            }
        }
        Ok(())
    }
}

/// The upload policies.
pub type DeliveryPolicies = NamedList<DeliveryPolicy>;

impl DeliveryPolicies {
    pub fn from_config(config: DeliveryConfig) -> Result<DeliveryPolicies, String> {
        NamedList::new(config.default, config.policies)
    }

    pub fn builtin() -> DeliveryPolicies {
        DeliveryPolicies::from_config(DeliveryConfig::builtin())
            .expect("the built-in upload policies are valid (a unit test checks them)")
    }

    /// The policies that send to `destination`.
    pub fn using(&self, destination: &str) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|p| p.value.destinations.iter().any(|d| d == destination))
            .map(|p| p.name)
            .collect()
    }
}

/// A policy list whose entries are sent to the nodes that chose them.
pub trait NodePolicies {
    /// The retained message a node is sent.
    type Message: Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static;
    /// What a node whose chosen policy is `name` (none: the default) is sent.
    fn for_node(&self, name: Option<&str>) -> Self::Message;
}

impl NodePolicies for WatchdogPolicies {
    type Message = NodeWatchdog;
    fn for_node(&self, name: Option<&str>) -> NodeWatchdog {
        WatchdogPolicies::for_node(self, name)
    }
}

impl NodePolicies for RetentionPolicies {
    type Message = NodeRetention;
    fn for_node(&self, name: Option<&str>) -> NodeRetention {
        let (policy, p) = self.for_name(name);
        NodeRetention {
            policy: policy.to_owned(),
            rules: p.appliance,
        }
    }
}

/// The `[recording]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// The profile of a job or schedule that names none.
    pub default_profile: String,
    pub profiles: BTreeMap<String, Profile>,
}

impl RecordingConfig {
    /// The built-in list.
    pub fn builtin() -> RecordingConfig {
        builtin_section(BUILTIN_PROFILES, "recording")
    }
}

/// What a recording's channels must be.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ChannelMode {
    /// Whatever the channel selection gives.
    #[default]
    Any,
    /// One channel (a single input, or a mix such as `1+2`).
    Mono,
    /// Two channels.
    Stereo,
}

impl ChannelMode {
    fn outputs(self) -> Option<usize> {
        match self {
            ChannelMode::Any => None,
            ChannelMode::Mono => Some(1),
            ChannelMode::Stereo => Some(2),
        }
    }
}

fn flac() -> CodecName {
    CodecName::Flac
}
fn bits_24() -> u8 {
    24
}
fn level_5() -> u8 {
    5
}

/// One recording profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default = "flac")]
    pub codec: CodecName,
    /// Bits per sample in the file: 16, 24 or 32.
    #[serde(default = "bits_24")]
    pub bits: u8,
    /// FLAC compression level, 0–8 (ignored for WAV).
    #[serde(default = "level_5")]
    pub flac_level: u8,
    /// A new file every this many seconds (absent: one file per take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_s: Option<u32>,
    /// The node's capture device must run at this rate, in Hz (absent: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u32>,
    #[serde(default)]
    pub channel_mode: ChannelMode,
    /// Longest take a job started by hand may be; one without a duration
    /// stops there (absent: no limit; schedules' windows set their length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length_s: Option<u32>,
}

impl Profile {
    /// What the agent records with.
    pub fn recording(&self) -> RecordingProfile {
        RecordingProfile {
            codec: self.codec,
            bits: self.bits,
            flac_level: self.flac_level,
            segment_s: self.chunk_s,
        }
    }

    /// Whether a take of `outputs` channels from a device offering
    /// `device_rates` fits; the reason when not.
    pub fn fits(&self, outputs: usize, device_rates: &[u32]) -> Result<(), String> {
        if let Some(want) = self.channel_mode.outputs()
            && outputs != want
        {
            return Err(format!(
                "the profile records {} ({want} channel{}); the selection gives {outputs}",
                serde_json::to_value(self.channel_mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                if want == 1 { "" } else { "s" }
            ));
        }
        if let Some(rate) = self.sample_rate
            && !device_rates.contains(&rate)
        {
            return Err(format!(
                "the profile needs the device at {rate} Hz; it runs at {}",
                if device_rates.is_empty() {
                    "a rate the node has not announced".to_owned()
                } else {
                    device_rates
                        .iter()
                        .map(|r| format!("{r} Hz"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        Ok(())
    }
}

impl Named for Profile {
    const KIND: &'static str = "recording profile";
    fn check(&self) -> Result<(), String> {
        let probe = JobSpec {
            device: rakkr_protocol::job::DEFAULT_DEVICE.into(),
            channels: None,
            profile: self.recording(),
            duration_s: self.max_length_s,
            watchdog: None,
        };
        probe.validate()?;
        if let Some(rate) = self.sample_rate
            && !(8_000..=768_000).contains(&rate)
        {
            return Err(format!("sample_rate {rate} Hz is not 8000 to 768000"));
        }
        Ok(())
    }
}

/// A profile in a few words, for people: "FLAC 24-bit, level 5, mono, hourly files".
pub fn describe_profile(p: &Profile) -> String {
    let mut words = vec![match p.codec {
        CodecName::Flac => format!("FLAC {}-bit, level {}", p.bits, p.flac_level),
        CodecName::Wav => format!("WAV {}-bit", p.bits),
        CodecName::Rf64 => format!("RF64 {}-bit", p.bits),
    }];
    match p.channel_mode {
        ChannelMode::Any => {}
        ChannelMode::Mono => words.push("mono".into()),
        ChannelMode::Stereo => words.push("stereo".into()),
    }
    if let Some(rate) = p.sample_rate {
        words.push(format!("{} kHz", f64::from(rate) / 1000.0));
    }
    if let Some(c) = p.chunk_s {
        words.push(match c {
            3600 => "hourly files".to_owned(),
            c if c % 60 == 0 => format!("files of {} min", c / 60),
            c => format!("files of {c} s"),
        });
    }
    if let Some(m) = p.max_length_s {
        words.push(if m % 3600 == 0 {
            format!("at most {} h", m / 3600)
        } else {
            format!("at most {m} s")
        });
    }
    words.join(", ")
}

/// The recording profiles.
pub type RecordingProfiles = NamedList<Profile>;
/// A recording profile with its name, as the API lists it.
pub type NamedProfile = NamedEntry<Profile>;

impl RecordingProfiles {
    pub fn from_config(config: RecordingConfig) -> Result<RecordingProfiles, String> {
        NamedList::new(config.default_profile, config.profiles)
    }

    pub fn builtin() -> RecordingProfiles {
        RecordingProfiles::from_config(RecordingConfig::builtin())
            .expect("the built-in profiles are valid (a unit test checks them)")
    }
}

/// `GET /api/v1/profiles`
pub async fn api_profiles(
    axum::extract::State(state): axum::extract::State<crate::http::AppState>,
) -> axum::Json<Vec<NamedProfile>> {
    axum::Json(state.profiles.list())
}

/// `GET /api/v1/watchdog-policies`
pub async fn api_list(
    axum::extract::State(state): axum::extract::State<crate::http::AppState>,
) -> axum::Json<Vec<NamedWatchdogPolicy>> {
    axum::Json(state.watchdog_policies.list())
}

/// `GET /api/v1/retention-policies`
pub async fn api_retention_list(
    axum::extract::State(state): axum::extract::State<crate::http::AppState>,
) -> axum::Json<Vec<NamedRetentionPolicy>> {
    axum::Json(state.retention_policies.list())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WatchdogPolicies, String> {
        let config: WatchdogConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        WatchdogPolicies::from_config(config)
    }

    #[test]
    fn the_builtin_list_is_valid_and_has_its_default() {
        let p = WatchdogPolicies::builtin();
        assert_eq!(p.default_name(), "standard");
        assert_eq!(p.names().collect::<Vec<_>>(), ["lecture", "standard"]);
        let (name, standard) = p.for_schedule(None);
        assert_eq!(name, "standard");
        assert_eq!(standard.cumulative_s, 300);
        assert_eq!(standard.appliance, WatchdogRules::default());
        let lecture = p.for_node(Some("lecture"));
        assert_eq!(lecture.policy, "lecture");
        assert_eq!(
            lecture.rules.low_signal_s, 180,
            "pauses are normal in a lecture"
        );
        assert_eq!(p.for_node(None).policy, "standard");
        assert_eq!(p.for_schedule(Some("lecture")).0, "lecture");
        assert_eq!(p.for_schedule(Some("gone")).0, "standard");
        assert!(p.check_known(Some("lecture")).is_ok());
        assert!(p.check_known(None).is_ok());
        let e = p.check_known(Some("gone")).unwrap_err();
        assert!(e.contains("lecture, standard"), "{e}");
        let listed = p.list();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().any(|l| l.name == "standard" && l.default));
    }

    #[test]
    fn upload_policies_name_destinations_once_and_bound_their_budget() {
        let builtin = DeliveryPolicies::builtin();
        assert_eq!(builtin.default_name(), "server-only");
        assert!(builtin.for_name(None).1.destinations.is_empty());
        let parse = |text: &str| {
            #[derive(Deserialize)]
            struct File {
                delivery: DeliveryConfig,
            }
            let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
            DeliveryPolicies::from_config(file.delivery)
        };
        let p = parse(
            "[delivery]\ndefault = \"archive\"\n[delivery.policies.archive]\n\
             destinations = [\"nas\", \"s3\"]\n[delivery.policies.local]\ndestinations = [\"nas\"]\n",
        )
        .unwrap();
        assert_eq!(p.for_name(None).1.retry_budget_h, 72);
        assert_eq!(p.using("nas"), ["archive", "local"]);
        assert_eq!(p.using("s3"), ["archive"]);
        for (text, why) in [
            ("destinations = [\"a\", \"a\"]", "listed twice"),
            ("destinations = [\"../x\"]", "destination \"../x\""),
            ("retry_budget_h = 0", "retry_budget_h"),
        ] {
            let e = parse(&format!(
                "[delivery]\ndefault = \"p\"\n[delivery.policies.p]\n{text}\n"
            ))
            .unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn the_builtin_retention_policies_are_valid_and_each_node_gets_one() {
        let p = RetentionPolicies::builtin();
        assert_eq!(p.default_name(), "standard");
        assert_eq!(
            p.names().collect::<Vec<_>>(),
            ["keep-30-days", "keep-while-room", "standard"]
        );
        let standard = p.for_node(None);
        assert_eq!(standard.policy, "standard");
        assert!(standard.rules.delete_confirmed);
        let month = p.for_node(Some("keep-30-days"));
        assert_eq!(
            (month.rules.delete_confirmed, month.rules.max_age_days),
            (false, Some(30))
        );
        // A name the list no longer has: the default.
        assert_eq!(p.for_node(Some("gone")).policy, "standard");
        // Bad values are refused with the policy's name.
        let mut bad = RetentionConfig::builtin();
        bad.policies.get_mut("standard").unwrap().appliance.max_mb = Some(0);
        let e = RetentionPolicies::from_config(bad).unwrap_err();
        assert!(
            e.contains("retention policy \"standard\": appliance: max_mb"),
            "{e}"
        );
    }

    #[test]
    fn the_builtin_profiles_are_valid_and_say_what_they_record() {
        let p = RecordingProfiles::builtin();
        assert_eq!(p.default_name(), "standard");
        assert_eq!(
            p.names().collect::<Vec<_>>(),
            ["long-form", "speech", "standard", "wav"]
        );
        let (_, standard) = p.for_name(None);
        assert_eq!(standard.recording(), RecordingProfile::default());
        let speech = p.get("speech").unwrap();
        assert_eq!(
            describe_profile(speech),
            "FLAC 16-bit, level 8, mono, hourly files, at most 4 h"
        );
        assert_eq!(speech.recording().bits, 16);
        assert_eq!(speech.recording().segment_s, Some(3600));
        assert!(speech.fits(1, &[48_000]).is_ok());
        let e = speech.fits(2, &[48_000]).unwrap_err();
        assert_eq!(
            e,
            "the profile records mono (1 channel); the selection gives 2"
        );
        let e = p.require("loud").unwrap_err();
        assert_eq!(
            e,
            "no recording profile \"loud\"; this server has long-form, speech, standard, wav"
        );
    }

    #[test]
    fn profiles_check_rates_and_values() {
        let profile = |text: &str| -> Result<RecordingProfiles, String> {
            let config: RecordingConfig =
                toml::from_str(&format!("default_profile = \"p\"\n[profiles.p]\n{text}"))
                    .map_err(|e| e.to_string())?;
            RecordingProfiles::from_config(config)
        };
        let p = profile("sample_rate = 96000\nchannel_mode = \"stereo\"\n").unwrap();
        let p = p.get("p").unwrap();
        assert!(p.fits(2, &[96_000]).is_ok());
        assert_eq!(
            p.fits(2, &[48_000]).unwrap_err(),
            "the profile needs the device at 96000 Hz; it runs at 48000 Hz"
        );
        assert!(
            p.fits(1, &[96_000])
                .unwrap_err()
                .contains("stereo (2 channels)")
        );
        for (text, expect) in [
            ("bits = 20\n", "20-bit files are not supported"),
            ("flac_level = 9\n", "FLAC level 9 does not exist"),
            (
                "chunk_s = 0\n",
                "segment length must be at least one second",
            ),
            ("max_length_s = 0\n", "duration must be at least one second"),
            (
                "sample_rate = 100\n",
                "sample_rate 100 Hz is not 8000 to 768000",
            ),
            ("codec = \"mp3\"\n", "unknown variant `mp3`"),
            ("channel_mode = \"quad\"\n", "unknown variant `quad`"),
            ("length = 3\n", "unknown field `length`"),
        ] {
            let e = profile(text).unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
        }
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        let ok = "low_signal_dbfs = -50.0\ngrace_s = 0\ncumulative_s = 10\nclear_s = 5\n";
        assert!(parse(&format!("default = \"a\"\n[policies.a]\n{ok}")).is_ok());
        for (text, expect) in [
            (
                format!("default = \"b\"\n[policies.a]\n{ok}"),
                "the default \"b\" is not one of them (a)",
            ),
            (
                format!("default = \"A\"\n[policies.A]\n{ok}"),
                "not a policy name",
            ),
            ("default = \"a\"\npolicies = {}\n".to_owned(), "give 1 to 64"),
            (
                "default = \"a\"\n[policies.a]\nlow_signal_dbfs = 3.0\ngrace_s = 0\ncumulative_s = 10\nclear_s = 5\n"
                    .to_owned(),
                "watchdog policy \"a\": low_signal_dbfs must be",
            ),
            (
                "default = \"a\"\n[policies.a]\nlow_signal_dbfs = -50.0\ngrace_s = 0\ncumulative_s = 0\nclear_s = 5\n"
                    .to_owned(),
                "cumulative_s must be 1 to 86400",
            ),
            (
                format!("default = \"a\"\n[policies.a]\n{ok}threshold = 1\n"),
                "unknown field `threshold`",
            ),
            (
                format!("default = \"a\"\n[policies.a]\n{ok}[policies.a.appliance]\nsilence_s = 0\n"),
                "watchdog policy \"a\": appliance: watchdog.silence_s is 0",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
        }
    }
}
