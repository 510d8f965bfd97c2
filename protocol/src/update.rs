//! A/B image updates over MQTT (decision 0019).
//!
//! The server asks a node to install an image with an [`UpdateOrder`], retained on
//! `nodes/{node}/cmd/update`: a node that was offline finds it when it connects. The node
//! downloads the image from the server over HTTPS, installs it into its inactive slot and
//! reboots; it reports each step as an [`UpdateReport`], retained on
//! `nodes/{node}/update`, so the latest state survives the node's reboot.
//!
//! Invariants: one order per node at a time (a new order replaces the old one); a node
//! acts on an order once (it keeps the id of the latest order it acted on, with that
//! order's latest step), and never on an order whose image is not signed by its release
//! key or whose version and size are not the ones the signature names.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::Payload;
use crate::ids::UpdateId;

/// Longest image file name.
pub const MAX_IMAGE_NAME: usize = 128;
/// Longest signature text (a minisign signature file is four short lines).
pub const MAX_SIGNATURE_TEXT: usize = 4096;
/// Longest version string.
pub const MAX_VERSION: usize = 64;
/// Longest detail text in a report.
pub const MAX_UPDATE_DETAIL: usize = 512;

/// Whether `name` is a safe image file name: letters, digits, `.`, `-`, `_`, not starting
/// with `.`; it is a path segment on the server and in a URL.
pub fn is_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IMAGE_NAME
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Retained on `nodes/{node}/cmd/update`: install this image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateOrder {
    /// Names this update in the node's reports.
    pub update_id: UpdateId,
    /// The image's file name on the server: the node fetches
    /// `/api/v1/node/images/{image}` with its credential.
    pub image: String,
    /// The version the image's signed manifest names (for people; the node believes the
    /// signature only).
    pub version: String,
    /// The image's size in bytes.
    pub size: u64,
    /// The image's minisign signature file, whole.
    pub signature: String,
}

impl Payload for UpdateOrder {
    const KIND: &'static str = "update order";
    fn validate(&self) -> Result<(), String> {
        if !is_image_name(&self.image) {
            return Err(format!("image {:?} is not a safe file name", self.image));
        }
        if self.version.is_empty() || self.version.len() > MAX_VERSION {
            return Err(format!("version must be 1-{MAX_VERSION} bytes"));
        }
        if self.signature.len() > MAX_SIGNATURE_TEXT {
            return Err(format!("signature is over {MAX_SIGNATURE_TEXT} bytes"));
        }
        if self.size == 0 {
            return Err("size must not be 0".into());
        }
        Ok(())
    }
}

/// Where an update stands on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    /// Fetching the image and writing it into the inactive slot.
    Installing,
    /// Reading the slot back and checking the signature again.
    Checking,
    /// Installed and checked; the node is about to reboot into it.
    Rebooting,
    /// Running the new image, not yet committed.
    Trial,
    /// The new image runs and boots from now on. Final.
    Committed,
    /// The install failed (`detail` says why); the node runs what it ran. Final.
    Failed,
    /// The new image did not come up healthy; the node went back to the old slot. Final.
    RolledBack,
}

impl UpdatePhase {
    /// The name on the wire and in the console.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdatePhase::Installing => "installing",
            UpdatePhase::Checking => "checking",
            UpdatePhase::Rebooting => "rebooting",
            UpdatePhase::Trial => "trial",
            UpdatePhase::Committed => "committed",
            UpdatePhase::Failed => "failed",
            UpdatePhase::RolledBack => "rolled_back",
        }
    }

    /// Whether the node is still updating (the console's `updating` state).
    pub fn in_progress(self) -> bool {
        !matches!(
            self,
            UpdatePhase::Committed | UpdatePhase::Failed | UpdatePhase::RolledBack
        )
    }
}

/// Retained on `nodes/{node}/update`: the node's latest update step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateReport {
    pub update_id: UpdateId,
    /// The version being installed (from the order; authenticated once installed).
    pub version: String,
    pub phase: UpdatePhase,
    /// Bytes of the image done in this phase (installing, checking).
    #[serde(default)]
    pub done_bytes: u64,
    #[serde(default)]
    pub total_bytes: u64,
    /// For people: why it failed or rolled back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Payload for UpdateReport {
    const KIND: &'static str = "update report";
    fn validate(&self) -> Result<(), String> {
        if self.version.len() > MAX_VERSION {
            return Err(format!("version is over {MAX_VERSION} bytes"));
        }
        if self.detail.len() > MAX_UPDATE_DETAIL {
            return Err(format!("detail is over {MAX_UPDATE_DETAIL} bytes"));
        }
        if self.done_bytes > self.total_bytes {
            return Err("done_bytes exceeds total_bytes".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_safe_path_segments() {
        for ok in ["rootfs-1.4.0.img", "a", "x86_64_2026.squashfs"] {
            assert!(is_image_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "../etc",
            "a/b",
            "a b",
            "ä.img",
            &"x".repeat(129),
        ] {
            assert!(!is_image_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_final_phases_end_updating() {
        let final_phases = [
            UpdatePhase::Committed,
            UpdatePhase::Failed,
            UpdatePhase::RolledBack,
        ];
        for phase in [
            UpdatePhase::Installing,
            UpdatePhase::Checking,
            UpdatePhase::Rebooting,
            UpdatePhase::Trial,
        ] {
            assert!(phase.in_progress(), "{phase:?}");
        }
        for phase in final_phases {
            assert!(!phase.in_progress(), "{phase:?}");
        }
        let report = UpdateReport {
            update_id: UpdateId::from_u128(1),
            version: "1".into(),
            phase: UpdatePhase::Installing,
            done_bytes: 2,
            total_bytes: 1,
            detail: String::new(),
        };
        assert!(report.validate().is_err());
    }
}
