//! Retention policies as far as an appliance is concerned: which of its
//! uploaded takes it deletes, and when. The server keeps named policies
//! (`fleet-server/defaults/retention.toml`), and each node is sent the rules
//! of the one chosen for it on `nodes/{node}/cmd/retention` (retained).
//!
//! Invariant, whatever the rules: an appliance deletes only files the server
//! confirmed it holds, verified (decision 0016).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The appliance's rules of a retention policy. Absent fields take the
/// values of [`ApplianceRetention::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceRetention {
    /// Delete a file as soon as the server confirmed it.
    pub delete_confirmed: bool,
    /// Kept files go this many days after their take ended (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
    /// Kept files go, oldest first, while the recordings directory holds
    /// more than this many MiB (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_mb: Option<u64>,
    /// Kept files go, oldest first, while the disk has less free than this
    /// many MiB: recording never stops for want of space while uploaded takes
    /// could make room.
    pub min_free_mb: u64,
}

impl Default for ApplianceRetention {
    fn default() -> Self {
        ApplianceRetention::DEFAULT
    }
}

impl ApplianceRetention {
    pub const DEFAULT: ApplianceRetention = ApplianceRetention {
        delete_confirmed: true,
        max_age_days: None,
        max_mb: None,
        min_free_mb: 4096,
    };

    /// Values within bounds; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .max_age_days
            .is_some_and(|d| !(1..=36_500).contains(&d))
        {
            return Err("max_age_days must be 1 to 36500 (leave it out for no limit)".into());
        }
        if self.max_mb.is_some_and(|m| !(1..=1 << 30).contains(&m)) {
            return Err("max_mb must be 1 to 1073741824 (leave it out for no limit)".into());
        }
        if self.min_free_mb > 1 << 30 {
            return Err("min_free_mb must be at most 1073741824".into());
        }
        Ok(())
    }
}

/// Retained on `nodes/{node}/cmd/retention`: the rules of the node's
/// retention policy, sent again whenever the policy or the node's choice of
/// it changes.
pub type NodeRetention = crate::policy::NodePolicy<ApplianceRetention>;

impl crate::policy::PolicyRules for ApplianceRetention {
    const KIND: &'static str = "node retention";
    fn validate(&self) -> Result<(), String> {
        ApplianceRetention::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_tables_take_defaults_and_bad_values_are_named() {
        let r: ApplianceRetention = serde_json::from_str(r#"{"max_age_days": 30}"#).unwrap();
        assert_eq!(
            r,
            ApplianceRetention {
                max_age_days: Some(30),
                ..ApplianceRetention::DEFAULT
            }
        );
        assert!(r.validate().is_ok());
        let zero = ApplianceRetention {
            max_age_days: Some(0),
            ..ApplianceRetention::DEFAULT
        };
        assert!(zero.validate().unwrap_err().contains("max_age_days"));
        let none = ApplianceRetention {
            max_mb: Some(0),
            ..ApplianceRetention::DEFAULT
        };
        assert!(none.validate().unwrap_err().contains("max_mb"));
        assert!(serde_json::from_str::<ApplianceRetention>(r#"{"max_gb": 1}"#).is_err());
    }
}
