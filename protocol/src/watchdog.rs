//! The appliance's watchdog rules: how long each of its quality rules waits
//! before raising its condition. The server keeps them in its named
//! watchdog policies and sends each node the rules of its policy, retained
//! on `nodes/{node}/cmd/watchdog` ([`NodeWatchdog`]); a node the server never
//! reached uses the rules in its own configuration.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long each of the appliance's rules waits, in seconds of the meter
/// frames' own time. Every field has a default, so a partial table is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogRules {
    /// A channel flagged silent this long raises `silence`.
    pub silence_s: u32,
    /// A channel flagged low this long raises `low_signal`.
    pub low_signal_s: u32,
    /// A channel flagged flatline (stuck samples) this long raises `flatline`.
    pub flatline_s: u32,
    /// Windows with clipped samples adding up to this long raise `clipping`…
    pub clipping_s: u32,
    /// …unless this long passes between two of them.
    pub clipping_forget_s: u32,
    /// Two neighbouring channels with the same (or inverted) signal this long
    /// raise `correlation`.
    pub correlation_s: u32,
    /// Overruns within a minute that raise `xruns`.
    pub xruns: u32,
    /// A raised channel condition clears after this long without it (and
    /// `xruns` after a minute without overruns).
    pub clear_s: u32,
    /// Free space on the recordings' disk below this many MB raises
    /// `disk_pressure`; above it by a fifth again clears it.
    pub disk_min_free_mb: u64,
}

impl Default for WatchdogRules {
    fn default() -> Self {
        WatchdogRules::DEFAULT
    }
}

impl WatchdogRules {
    /// What a rule not given waits.
    pub const DEFAULT: WatchdogRules = WatchdogRules {
        silence_s: 10,
        low_signal_s: 60,
        flatline_s: 2,
        clipping_s: 3,
        clipping_forget_s: 10,
        correlation_s: 10,
        xruns: 3,
        clear_s: 5,
        disk_min_free_mb: 2048,
    };

    pub fn validate(&self) -> Result<(), String> {
        let day = 86_400;
        for (name, v) in [
            ("silence_s", self.silence_s),
            ("low_signal_s", self.low_signal_s),
            ("flatline_s", self.flatline_s),
            ("clipping_s", self.clipping_s),
            ("clipping_forget_s", self.clipping_forget_s),
            ("correlation_s", self.correlation_s),
            ("clear_s", self.clear_s),
        ] {
            if v == 0 || v > day {
                return Err(format!("watchdog.{name} is {v}; use 1 to {day} seconds"));
            }
        }
        if self.xruns == 0 {
            return Err("watchdog.xruns is 0; use 1 or more".into());
        }
        if self.disk_min_free_mb == 0 {
            return Err("watchdog.disk_min_free_mb is 0; use 1 or more".into());
        }
        Ok(())
    }
}

/// Retained on `nodes/{node}/cmd/watchdog`: the rules of the node's
/// watchdog policy, sent again whenever the policy or the node's choice of
/// it changes.
pub type NodeWatchdog = crate::policy::NodePolicy<WatchdogRules>;

impl crate::policy::PolicyRules for WatchdogRules {
    const KIND: &'static str = "node watchdog";
    fn validate(&self) -> Result<(), String> {
        WatchdogRules::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_tables_take_defaults_and_bad_values_are_named() {
        let r: WatchdogRules = serde_json::from_str(r#"{"silence_s": 3}"#).unwrap();
        assert_eq!(
            r,
            WatchdogRules {
                silence_s: 3,
                ..WatchdogRules::default()
            }
        );
        let bad = WatchdogRules {
            flatline_s: 0,
            ..WatchdogRules::default()
        };
        assert_eq!(
            bad.validate().unwrap_err(),
            "watchdog.flatline_s is 0; use 1 to 86400 seconds"
        );
        assert!(serde_json::from_str::<WatchdogRules>(r#"{"silent_s": 3}"#).is_err());
    }
}
