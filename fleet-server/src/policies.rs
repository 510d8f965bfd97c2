//! Named watchdog policies: the thresholds and durations of the server's
//! sustained rules ([`crate::signal_watch`]), one list with a default.
//!
//! The built-in list is configuration, not code: `defaults/watchdog.toml`,
//! parsed the same way as a `[watchdog]` section of the server's
//! configuration, which replaces it whole. A schedule names its policy
//! (`ScheduleSpec::watchdog`) or gets the default; a name the server does not
//! know is refused when the schedule is saved. A schedule whose policy was
//! removed from the configuration later falls back to the default, and the
//! rule says so in its events.

use std::collections::BTreeMap;

use rakkr_protocol::payload::DBFS_FLOOR;
use rakkr_protocol::schedule::check_policy_name;
use serde::{Deserialize, Serialize};

/// The built-in policies (the text of `defaults/watchdog.toml`).
pub const BUILTIN_WATCHDOG: &str = include_str!("../defaults/watchdog.toml");

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
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            watchdog: WatchdogConfig,
        }
        toml::from_str::<File>(BUILTIN_WATCHDOG)
            .expect("defaults/watchdog.toml parses (a unit test checks it)")
            .watchdog
    }
}

/// One policy: when the scheduled low-signal rule raises and resolves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchdogPolicy {
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
        Ok(())
    }
}

/// A policy with its name, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct NamedWatchdogPolicy {
    pub name: String,
    /// The default policy (schedules without one use it).
    pub default: bool,
    #[serde(flatten)]
    pub policy: WatchdogPolicy,
}

/// The validated list.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogPolicies {
    default: String,
    by_name: BTreeMap<String, WatchdogPolicy>,
}

impl WatchdogPolicies {
    /// Check every name and value; the default must be in the list.
    pub fn from_config(config: WatchdogConfig) -> Result<WatchdogPolicies, String> {
        if config.policies.is_empty() || config.policies.len() > MAX_POLICIES {
            return Err(format!("give 1 to {MAX_POLICIES} policies"));
        }
        for (name, policy) in &config.policies {
            check_policy_name(name)?;
            policy
                .check()
                .map_err(|e| format!("policy {name:?}: {e}"))?;
        }
        if !config.policies.contains_key(&config.default) {
            return Err(format!(
                "the default {:?} is not one of the policies ({})",
                config.default,
                config
                    .policies
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(WatchdogPolicies {
            default: config.default,
            by_name: config.policies,
        })
    }

    pub fn builtin() -> WatchdogPolicies {
        WatchdogPolicies::from_config(WatchdogConfig::builtin())
            .expect("the built-in policies are valid (a unit test checks them)")
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// The policy called `name`.
    pub fn get(&self, name: &str) -> Option<&WatchdogPolicy> {
        self.by_name.get(name)
    }

    /// The policy a schedule naming `name` gets: that one, or the default
    /// when it names none or one that no longer exists; with the name used.
    pub fn for_schedule(&self, name: Option<&str>) -> (&str, &WatchdogPolicy) {
        match name.and_then(|n| self.by_name.get_key_value(n)) {
            Some((n, p)) => (n, p),
            None => (&self.default, &self.by_name[&self.default]),
        }
    }

    /// Refuse a name the server does not know (when a schedule is saved).
    pub fn check_known(&self, name: Option<&str>) -> Result<(), String> {
        match name {
            Some(n) if !self.by_name.contains_key(n) => Err(format!(
                "no watchdog policy {n:?}; this server has {}",
                self.names().collect::<Vec<_>>().join(", ")
            )),
            _ => Ok(()),
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Every policy, by name.
    pub fn list(&self) -> Vec<NamedWatchdogPolicy> {
        self.by_name
            .iter()
            .map(|(name, policy)| NamedWatchdogPolicy {
                name: name.clone(),
                default: *name == self.default,
                policy: *policy,
            })
            .collect()
    }
}

/// `GET /api/v1/watchdog-policies`
pub async fn api_list(
    axum::extract::State(state): axum::extract::State<crate::http::AppState>,
) -> axum::Json<Vec<NamedWatchdogPolicy>> {
    axum::Json(state.watchdog_policies.list())
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
    fn bad_lists_are_refused_with_the_reason() {
        let ok = "low_signal_dbfs = -50.0\ngrace_s = 0\ncumulative_s = 10\nclear_s = 5\n";
        assert!(parse(&format!("default = \"a\"\n[policies.a]\n{ok}")).is_ok());
        for (text, expect) in [
            (
                format!("default = \"b\"\n[policies.a]\n{ok}"),
                "the default \"b\" is not one of the policies (a)",
            ),
            (
                format!("default = \"A\"\n[policies.A]\n{ok}"),
                "not a policy name",
            ),
            ("default = \"a\"\npolicies = {}\n".to_owned(), "give 1 to 64"),
            (
                "default = \"a\"\n[policies.a]\nlow_signal_dbfs = 3.0\ngrace_s = 0\ncumulative_s = 10\nclear_s = 5\n"
                    .to_owned(),
                "policy \"a\": low_signal_dbfs must be",
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
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
        }
    }
}
