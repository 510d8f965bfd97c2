//! A/B image updates for Rakkr appliances.
//!
//! An appliance has two root-filesystem slots, A and B, and boots one of them read-only.
//! An update writes a new image into the slot it is *not* running from, checks it, and asks
//! the bootloader to try that slot once. The new system commits itself only after it came
//! up healthy; if it does not (a kernel panic, a hang the watchdog resets, an agent that
//! never commits), the next boot falls back to the slot that worked.
//!
//! # Invariants
//! - The booted slot is never written. [`install`] refuses a target equal to the booted
//!   slot, so a failed or interrupted install leaves a bootable system.
//! - The slot the boot environment falls back to is never written either: while a trial
//!   runs uncommitted, that is the slot it came from.
//! - A slot is marked for a trial only after every byte written to it has been read back
//!   from the device and the image's minisign signature verified over those bytes. Before
//!   the first byte is written, a trial still pointing at the slot is cleared: a power
//!   cut mid-install boots the running slot, never a half-written one.
//! - One install at a time per slot: the slot is locked (`flock`) for the whole install,
//!   and a block device is opened exclusively (`O_EXCL`), which Linux refuses for a
//!   mounted one, so a configuration that names the running root fails before writing.
//! - The signature covers the trusted comment, which carries the image's version, target
//!   and size ([`ImageManifest`]): nothing about the image is believed before the
//!   signature is checked, and the size only bounds how much is read.
//! - The boot environment is replaced whole and atomically (temporary file, fsync,
//!   rename, fsync of the directory): the bootloader sees the old or the new one.
//!
//! # On-disk formats
//! - **Image**: the raw bytes of one root filesystem (squashfs or ext4), written from
//!   offset 0 of the slot; the rest of the slot is left as it was.
//! - **Signature**: a minisign signature file (`IMAGE.minisig`), prehashed (the minisign
//!   CLI's default since 0.8), made with
//!   `minisign -S -s KEY -m IMAGE -t "rakkr-image version=V target=T size=N"`.
//! - **Boot environment**: a GRUB environment block (`grubenv`, 1024 bytes, the format
//!   `grub-editenv` writes and GRUB's `load_env`/`save_env` read) with three variables:
//!   `rakkr_default` (`a` or `b`: the committed slot), `rakkr_trial` (empty, or the slot
//!   to try) and `rakkr_tries` (`1`: the trial has not been booted yet; `0`: it has).
//!   Other variables in the block are kept. The boot script that reads them is in
//!   `docs/operations.md` ("Image updates").

mod boot;
mod image;
mod install;

pub use boot::{
    BootAssessment, BootEnv, BootEnvStore, GrubEnvFile, Slot, booted_slot_from_cmdline,
};
pub use image::{ImageManifest, ImageSignature, MAX_SIGNATURE_BYTES, PublicKey, is_valid_target};
pub use install::{CHUNK, InstallProgress, InstallRequest, SlotDevice, SlotMedium, install};

use std::path::{Path, PathBuf};

/// Reads a text file of at most `max` bytes (a signature, the kernel command line, a
/// report): a larger file is refused after `max + 1` bytes instead of read whole.
pub fn read_text_bounded(path: &Path, max: usize) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_string(&mut text)?;
    if text.len() > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(text)
}

/// Why an update could not be installed or the boot environment not be read or written.
/// Whatever the error, the booted slot is as it was and the boot environment does not
/// point at a slot that was written.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("public key: {0}")]
    PublicKey(String),
    #[error("image signature: {0}")]
    Signature(String),
    #[error("image signature's trusted comment: {0}")]
    Manifest(String),
    #[error("the image was signed by key {found}, not by this appliance's key {trusted}")]
    WrongKey { trusted: String, found: String },
    #[error("the image is for target {image}; this appliance is {appliance}")]
    WrongTarget { image: String, appliance: String },
    #[error("the image ({size} bytes) does not fit slot {slot} ({capacity} bytes)")]
    TooLarge {
        slot: Slot,
        size: u64,
        capacity: u64,
    },
    #[error("slot {0} is the one running: an update goes to the other slot")]
    BootedSlot(Slot),
    #[error(
        "slot {slot} is the one the boot environment falls back to while slot {running} runs \
         uncommitted: commit the running slot (`rakkr-agent update commit`) or reboot first"
    )]
    FallbackSlot { slot: Slot, running: Slot },
    #[error("slot {slot} ({path}) is busy: another install holds it, or it is mounted")]
    Busy { slot: Slot, path: PathBuf },
    #[error("the image ended after {got} of {expected} bytes")]
    Truncated { expected: u64, got: u64 },
    #[error("the image has more than the {expected} bytes its signature names")]
    Overlong { expected: u64 },
    #[error("the image does not match its signature ({0}); slot left unbootable")]
    BadImage(String),
    #[error(
        "slot {0} does not read back as the image that was written to it; slot left unbootable"
    )]
    ReadBack(Slot),
    #[error("install cancelled; slot left unbootable")]
    Cancelled,
    #[error("boot environment {path}: {reason}")]
    BootEnv { path: PathBuf, reason: String },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl UpdateError {
    fn io(context: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        UpdateError::Io {
            context,
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_text_file_over_its_bound_is_refused_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sig");
        std::fs::write(&path, "x".repeat(10)).unwrap();
        assert_eq!(super::read_text_bounded(&path, 10).unwrap().len(), 10);
        let over = super::read_text_bounded(&path, 9).unwrap_err();
        assert!(over.to_string().contains("larger than 9 bytes"), "{over}");
        let missing = super::read_text_bounded(&dir.path().join("none"), 9).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
