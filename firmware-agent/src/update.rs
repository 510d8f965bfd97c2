//! A/B image updates on the appliance: the `rakkr-update` core bound to the agent's
//! `[update]` settings (slot devices, the GRUB environment block, the release key).
//!
//! The booted slot is the one the boot script named on the kernel command line
//! (`rakkr.slot=a|b`), never a configuration value: a configuration that disagreed with
//! the bootloader would aim an install at the running system. After an update, the new
//! system runs on trial until [`commit_trial`]; the daemon commits once it has reached
//! the fleet's broker (`crate::run`), so an image that cannot reach the fleet rolls back
//! at the next reboot.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use rakkr_update::{
    BootAssessment, BootEnvStore, GrubEnvFile, ImageManifest, ImageSignature, InstallProgress,
    InstallRequest, MAX_SIGNATURE_BYTES, Slot, SlotDevice, UpdateError,
};

use crate::config::UpdateSettings;

/// Why an update command could not do its work. Nothing was changed unless it says so.
#[derive(Debug, thiserror::Error)]
pub enum UpdateFailure {
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} names no booted slot (rakkr.slot=a or b): this system was not started by the A/B boot script"
    )]
    NoBootedSlot(PathBuf),
    #[error("nothing to commit: {0:?}")]
    NotOnTrial(BootAssessment),
    #[error("cannot fetch the image: {0}")]
    Download(String),
}

impl UpdateSettings {
    /// The boot environment block.
    pub fn boot_env(&self) -> GrubEnvFile {
        GrubEnvFile::new(&self.boot_env)
    }

    /// Where `slot` is written.
    pub fn device(&self, slot: Slot) -> SlotDevice {
        let path = match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        };
        SlotDevice {
            slot,
            path: path.clone(),
        }
    }

    /// The slot the running system booted from, from the kernel command line.
    pub fn booted_slot(&self) -> Result<Slot, UpdateFailure> {
        let cmdline = read(&self.cmdline, 64 * 1024)?;
        rakkr_update::booted_slot_from_cmdline(&cmdline)
            .ok_or_else(|| UpdateFailure::NoBootedSlot(self.cmdline.clone()))
    }

    /// What the last boot was: committed, staged, on trial or rolled back.
    pub fn assess(&self) -> Result<BootAssessment, UpdateFailure> {
        let booted = self.booted_slot()?;
        Ok(self.boot_env().load()?.assess(booted))
    }
}

/// Installs the image at `image` (signature at `signature`) into the slot not running
/// and stages it for one trial boot.
pub fn install_file(
    settings: &UpdateSettings,
    image: &Path,
    signature: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(InstallProgress),
) -> Result<ImageManifest, UpdateFailure> {
    let signature = ImageSignature::parse(&read(signature, MAX_SIGNATURE_BYTES)?)?;
    let mut source = std::fs::File::open(image).map_err(|source| UpdateFailure::Read {
        path: image.to_owned(),
        source,
    })?;
    install_into_other_slot(settings, &signature, &mut source, cancel, progress)
}

/// Streams `source` into the slot not running, checks it against `signature` and stages
/// it (`rakkr_update::install`).
fn install_into_other_slot(
    settings: &UpdateSettings,
    signature: &ImageSignature,
    source: &mut dyn std::io::Read,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(InstallProgress),
) -> Result<ImageManifest, UpdateFailure> {
    let booted = settings.booted_slot()?;
    let device = settings.device(booted.other());
    let boot_env = settings.boot_env();
    let mut medium = device.open()?;
    let request = InstallRequest {
        key: &settings.public_key,
        signature,
        target: &settings.target,
        booted,
        device: &device,
        boot_env: &boot_env,
        cancel,
    };
    Ok(rakkr_update::install(
        &request,
        source,
        &mut medium,
        progress,
    )?)
}

/// Makes the running trial the committed slot. Errors when not on trial.
pub fn commit_trial(settings: &UpdateSettings) -> Result<Slot, UpdateFailure> {
    let booted = settings.booted_slot()?;
    let store = settings.boot_env();
    let env = store.load()?;
    match env.assess(booted) {
        BootAssessment::Trial(slot) => {
            store.store(&env.committed(slot))?;
            Ok(slot)
        }
        other => Err(UpdateFailure::NotOnTrial(other)),
    }
}

/// At start: forgets a trial that rolled back (so the next install may use its slot and
/// the report is made once), and says what the last boot was.
pub fn settle_after_boot(settings: &UpdateSettings) -> Result<BootAssessment, UpdateFailure> {
    let booted = settings.booted_slot()?;
    let store = settings.boot_env();
    let env = store.load()?;
    let assessment = env.assess(booted);
    if let BootAssessment::RolledBack { .. } = assessment {
        store.store(&env.without_trial())?;
    }
    Ok(assessment)
}

/// Reads a small text file, refusing one larger than `max` bytes.
fn read(path: &Path, max: usize) -> Result<String, UpdateFailure> {
    use std::io::Read as _;
    let failure = |source| UpdateFailure::Read {
        path: path.to_owned(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(failure)?
        .take(max as u64 + 1)
        .read_to_string(&mut text)
        .map_err(failure)?;
    if text.len() > max {
        return Err(failure(std::io::Error::other(format!(
            "larger than {max} bytes"
        ))));
    }
    Ok(text)
}

/// The image of `order` from the fleet server at `base` (`/api/v1/node/images/{image}`,
/// HTTP Basic with the node's credential, trusting only `ca`), streamed into the slot not
/// running and staged, as [`install_file`] does with a local file.
pub fn install_from_server(
    settings: &UpdateSettings,
    order: &rakkr_protocol::update::UpdateOrder,
    base: &str,
    ca: Option<&Path>,
    (node, credential): (&str, &str),
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(InstallProgress),
) -> Result<ImageManifest, UpdateFailure> {
    let signature = ImageSignature::parse(&order.signature)?;
    let download = |e: &dyn std::fmt::Display| UpdateFailure::Download(e.to_string());
    // A whole-request limit, so a download that stalls ends: a minute plus the image at
    // 100 kB/s (about 3 hours per GB) covers slow links.
    let limit = std::time::Duration::from_secs(60 + order.size / 100_000);
    let mut builder = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(limit);
    if let Some(tls) = crate::upload::server_tls(ca).map_err(|e| download(&e))? {
        builder = builder.use_preconfigured_tls(tls);
    }
    let client = builder.build().map_err(|e| download(&e))?;
    let url = format!("{base}/api/v1/node/images/{}", order.image);
    let mut response = client
        .get(&url)
        .basic_auth(node, Some(credential))
        .send()
        .map_err(|e| download(&e))?;
    if !response.status().is_success() {
        let status = response.status();
        let body: String = response
            .text()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        return Err(UpdateFailure::Download(format!("{url}: {status} {body}")));
    }
    install_into_other_slot(settings, &signature, &mut response, cancel, progress)
}

/// Where the node's latest update step is kept across reboots.
pub const REPORT_FILE: &str = "update.json";

/// The update step kept in `state_dir`, if any (a damaged file reads as none).
pub fn load_report(state_dir: &Path) -> Option<rakkr_protocol::update::UpdateReport> {
    let text = read(&state_dir.join(REPORT_FILE), 16 * 1024).ok()?;
    serde_json::from_str(&text).ok()
}

/// Keeps `report` in `state_dir`, replacing the file atomically.
pub fn save_report(
    state_dir: &Path,
    report: &rakkr_protocol::update::UpdateReport,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = state_dir.join(REPORT_FILE);
    let tmp = state_dir.join(format!("{REPORT_FILE}.new"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(report).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()
}
