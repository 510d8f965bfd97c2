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
    #[error("nothing to commit: {0}")]
    NotOnTrial(BootAssessment),
    #[error("cannot fetch the image: {0}")]
    Download(String),
    #[error(
        "the order says version {ordered} of {ordered_size} bytes, the image's signature \
         says {signed} of {signed_size}: refused"
    )]
    OrderMismatch {
        ordered: String,
        ordered_size: u64,
        signed: String,
        signed_size: u64,
    },
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

/// At start: says what the last boot was, and tidies the boot environment for it. A
/// trial that rolled back is forgotten (so the next install may use its slot, and the
/// report is made once); a trial booted while the bootloader could not clear its flag
/// gets the flag cleared now, so a hang does not boot it again and again. A failure to
/// write the environment is logged, not returned: what happened is still reported.
pub fn settle_after_boot(settings: &UpdateSettings) -> Result<BootAssessment, UpdateFailure> {
    let booted = settings.booted_slot()?;
    let store = settings.boot_env();
    let env = store.load()?;
    let assessment = env.assess(booted);
    let tidied = match assessment {
        BootAssessment::RolledBack { .. } => Some(env.without_trial()),
        BootAssessment::Trial(_) if env.trial_pending => Some(env.trial_booted()),
        _ => None,
    };
    if let Some(tidied) = tidied
        && let Err(e) = store.store(&tidied)
    {
        tracing::error!(error = %e, %assessment, "cannot write the boot environment");
    }
    Ok(assessment)
}

/// Forgets a staged trial (after the reboot into it could not be started).
pub fn unstage(settings: &UpdateSettings) -> Result<(), UpdateFailure> {
    let store = settings.boot_env();
    let env = store.load()?;
    if env.trial_pending {
        store.store(&env.without_trial())?;
    }
    Ok(())
}

/// Reads a small text file, refusing one larger than `max` bytes.
fn read(path: &Path, max: usize) -> Result<String, UpdateFailure> {
    let failure = |source| UpdateFailure::Read {
        path: path.to_owned(),
        source,
    };
    rakkr_update::read_text_bounded(path, max).map_err(failure)
}

/// Installs the image of `order`, read from `image` (the server's download), into the
/// slot not running and stages it. The order must name the version and size the
/// image's signature names: reports then carry a version the signature vouches for.
pub fn install_ordered_image(
    settings: &UpdateSettings,
    order: &rakkr_protocol::update::UpdateOrder,
    image: &mut dyn std::io::Read,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(InstallProgress),
) -> Result<ImageManifest, UpdateFailure> {
    let signature = ImageSignature::parse(&order.signature)?;
    let signed = signature.manifest();
    if signed.version != order.version || signed.size != order.size {
        return Err(UpdateFailure::OrderMismatch {
            ordered: order.version.clone(),
            ordered_size: order.size,
            signed: signed.version.clone(),
            signed_size: signed.size,
        });
    }
    install_into_other_slot(settings, &signature, image, cancel, progress)
}

/// How long an image download may move no byte before it is given up.
pub const DOWNLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Chunks of a download on their way to the installer's thread.
const DOWNLOAD_QUEUE: usize = 8;

/// The installer's end of a download: a blocking [`std::io::Read`] over the chunks an
/// async task fetches ([`fetch_image`]). An error from the fetch is a read error; the
/// fetch ending is the end of the image.
#[derive(Debug)]
pub struct DownloadReader {
    chunks: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, String>>,
    current: bytes::Bytes,
}

impl std::io::Read for DownloadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(why)) => return Err(std::io::Error::other(why)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Starts fetching `url` (HTTP Basic with the node's credential, trusting only `ca`);
/// the installer reads it through the returned reader. A download that moves no byte
/// for [`DOWNLOAD_STALL`], fails, or is cancelled by `shutdown` ends in a read error.
pub fn fetch_image(
    url: String,
    ca: Option<&Path>,
    (node, credential): (String, String),
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<DownloadReader, UpdateFailure> {
    let download = |e: &dyn std::fmt::Display| UpdateFailure::Download(e.to_string());
    let mut builder =
        reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
    if let Some(tls) = crate::upload::server_tls(ca).map_err(|e| download(&e))? {
        builder = builder.use_preconfigured_tls(tls);
    }
    let client = builder.build().map_err(|e| download(&e))?;
    let (tx, rx) = tokio::sync::mpsc::channel(DOWNLOAD_QUEUE);
    tokio::spawn(async move {
        let fetched = async {
            let mut response = tokio::time::timeout(
                DOWNLOAD_STALL,
                client.get(&url).basic_auth(&node, Some(&credential)).send(),
            )
            .await
            .map_err(|_| format!("{url}: no answer in {DOWNLOAD_STALL:?}"))?
            .map_err(|e| format!("{url}: {e}"))?;
            if !response.status().is_success() {
                let status = response.status();
                // A few hundred bytes of the answer say why; no more is read.
                let mut why = String::new();
                if let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout(DOWNLOAD_STALL, response.chunk()).await
                {
                    why = String::from_utf8_lossy(&chunk[..chunk.len().min(300)]).into_owned();
                }
                return Err(format!("{url}: {status} {why}"));
            }
            loop {
                match tokio::time::timeout(DOWNLOAD_STALL, response.chunk()).await {
                    Err(_) => return Err(format!("{url}: no byte for {DOWNLOAD_STALL:?}")),
                    Ok(Err(e)) => return Err(format!("{url}: {e}")),
                    Ok(Ok(None)) => return Ok(()),
                    Ok(Ok(Some(chunk))) => {
                        if tx.send(Ok(chunk)).await.is_err() {
                            // The installer stopped reading (it failed or finished).
                            return Ok(());
                        }
                    }
                }
            }
        };
        let outcome = tokio::select! {
            outcome = fetched => outcome,
            _ = shutdown.cancelled() => Err("the agent is stopping".to_owned()),
        };
        if let Err(why) = outcome {
            let _ = tx.send(Err(why)).await;
        }
    });
    Ok(DownloadReader {
        chunks: rx,
        current: bytes::Bytes::new(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use rakkr_update::BootEnv;

    fn settings(dir: &Path, booted: &str) -> UpdateSettings {
        std::fs::write(dir.join("cmdline"), format!("ro rakkr.slot={booted}\n")).unwrap();
        UpdateSettings {
            public_key: rakkr_update::PublicKey::parse(
                "RWR65r76Y9WgHPHfaA7SfiQXZVyv60hVaUEAJI8+HI/+SOxBnqZed9+W",
            )
            .unwrap(),
            target: "x86_64".into(),
            boot_env: dir.join("grubenv"),
            slot_a: dir.join("root-a"),
            slot_b: dir.join("root-b"),
            cmdline: dir.join("cmdline"),
            reboot_command: vec!["true".into()],
        }
    }

    #[test]
    fn a_trial_booted_with_its_flag_still_set_is_not_booted_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), "b");
        let env = s.boot_env();
        env.create(Slot::A).unwrap();
        // The bootloader booted B but could not clear the flag.
        env.store(&BootEnv::new(Slot::A).staged(Slot::B)).unwrap();
        assert_eq!(
            settle_after_boot(&s).unwrap(),
            BootAssessment::Trial(Slot::B)
        );
        let after = env.load().unwrap();
        assert_eq!((after.trial, after.trial_pending), (Some(Slot::B), false));
        // A reboot now, before the commit, goes back to A.
        assert_eq!(
            after.assess(Slot::A),
            BootAssessment::RolledBack {
                failed: Slot::B,
                running: Slot::A
            }
        );
    }

    #[test]
    fn an_order_must_name_what_the_signature_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), "a");
        let signature = "untrusted comment: signature from minisign secret key\n\
            RUTwtBMSZ5L69spvl3ceqfbiWNiKUgfV5Xci8QoFmRNTk5ovaypFenzl+U0y7GDdYHr2uIio3a4pIBOmntnxT04CdevZVKc97AI=\n\
            trusted comment: rakkr-image version=1.4.0 target=x86_64 size=10\n\
            p30WVoWDSbFdgfJ0CIA+GfMb1ZlTus+yQ1oIEmuCX/jFPLGbZ1D7SfMCNxNmd5uehSB65tAwwoqG/r4JH58vCw==\n";
        let order = rakkr_protocol::update::UpdateOrder {
            update_id: rakkr_protocol::UpdateId::from_u128(1),
            image: "rootfs.img".into(),
            version: "9.9.9".into(),
            size: 10,
            signature: signature.into(),
        };
        let err = install_ordered_image(
            &s,
            &order,
            &mut &b"0123456789"[..],
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, UpdateFailure::OrderMismatch { .. }), "{err}");
    }
}
