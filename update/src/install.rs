//! Installing an image into the inactive slot.
//!
//! The image is streamed straight into the slot (no copy on `/data`, which may be nearly
//! full of recordings) while it is hashed for its signature; the slot is then synced, its
//! cached pages dropped, and read back from the device and verified a second time before
//! the boot environment is told to try it. Memory: one buffer of [`CHUNK`] bytes.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{BootEnvStore, ImageManifest, ImageSignature, PublicKey, Slot, UpdateError};

/// Bytes read, hashed and written at a time.
pub const CHUNK: usize = 1 << 20;

/// A slot's partition (a block device) or, on a development machine, a file of fixed
/// size standing in for one. Neither is ever truncated or grown.
#[derive(Clone, Debug)]
pub struct SlotDevice {
    pub slot: Slot,
    pub path: PathBuf,
}

impl SlotDevice {
    /// Opens the slot for [`install`]: read and write, never created or truncated. A
    /// block device is opened exclusively (Linux refuses `O_EXCL` on a mounted one), and
    /// the file is locked for as long as it is open, so two installs never write one slot.
    pub fn open(&self) -> Result<File, UpdateError> {
        use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
        let busy = || UpdateError::Busy {
            slot: self.slot,
            path: self.path.clone(),
        };
        let block = std::fs::metadata(&self.path)
            .map(|m| m.file_type().is_block_device())
            .map_err(|e| UpdateError::io("open slot", &self.path, e))?;
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if block {
            options.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
        }
        let file = options.open(&self.path).map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                busy()
            } else {
                UpdateError::io("open slot", &self.path, e)
            }
        })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| busy())?;
        Ok(file)
    }
}

/// What a slot is written through: the IO edge, so tests can inject a medium that does
/// not keep what it is given.
pub trait SlotMedium: Read + Write + Seek {
    /// Makes every written byte durable.
    fn sync(&mut self) -> std::io::Result<()>;
    /// Forgets cached copies of the first `len` bytes so the next read comes from the
    /// medium itself. Advisory.
    fn drop_cache(&mut self, len: u64);
}

impl SlotMedium for File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_all()
    }

    /// The pages are clean after [`SlotMedium::sync`]; a page the kernel keeps anyway is
    /// read back from memory, which checks no less than without the call.
    fn drop_cache(&mut self, len: u64) {
        let _ = rustix::fs::fadvise(
            &*self,
            0,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }
}

/// Everything [`install`] needs besides the image bytes.
pub struct InstallRequest<'a> {
    /// The key this appliance trusts for images.
    pub key: &'a PublicKey,
    pub signature: &'a ImageSignature,
    /// This appliance's target name; the image's must be the same.
    pub target: &'a str,
    /// The slot the running system booted from: never written.
    pub booted: Slot,
    /// The slot to write: the other one.
    pub device: &'a SlotDevice,
    pub boot_env: &'a dyn BootEnvStore,
    /// Set to stop between chunks (service shutdown); the slot is left unbootable.
    pub cancel: &'a AtomicBool,
}

/// How far an install is, for status reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallProgress {
    /// Image bytes received, hashed and written to the slot.
    Writing { written: u64, total: u64 },
    /// Slot bytes read back from the device and hashed again.
    Checking { read: u64, total: u64 },
    /// The slot is verified and will be tried at the next boot.
    Staged,
}

/// Writes `image` into the inactive slot, verifies it twice against its signature (as
/// received, and as read back from the device) and stages it for one trial boot.
/// Returns the (now authenticated) manifest. On any error the slot is not bootable and
/// the boot environment does not point at it.
pub fn install(
    request: &InstallRequest<'_>,
    image: &mut dyn Read,
    device: &mut dyn SlotMedium,
    progress: &mut dyn FnMut(InstallProgress),
) -> Result<ImageManifest, UpdateError> {
    let manifest = request.signature.manifest();
    let slot = request.device.slot;
    if manifest.target != request.target {
        return Err(UpdateError::WrongTarget {
            image: manifest.target.clone(),
            appliance: request.target.to_owned(),
        });
    }
    if slot == request.booted {
        return Err(UpdateError::BootedSlot(slot));
    }
    // Checks the key before a byte is written.
    let mut verifier = request.signature.verifier(request.key)?;
    let env = request.boot_env.load()?;
    if env.default == slot {
        // Running an uncommitted trial: the slot to write is the fallback.
        return Err(UpdateError::FallbackSlot {
            slot,
            running: request.booted,
        });
    }
    if env.trial == Some(slot) {
        // Never leave the bootloader pointed at a slot being overwritten.
        request.boot_env.store(&env.without_trial())?;
    }

    let path = &request.device.path;
    let io = |context, e| UpdateError::io(context, path, e);
    let capacity = device
        .seek(SeekFrom::End(0))
        .map_err(|e| io("measure slot", e))?;
    if manifest.size > capacity {
        return Err(UpdateError::TooLarge {
            slot,
            size: manifest.size,
            capacity,
        });
    }
    device
        .seek(SeekFrom::Start(0))
        .map_err(|e| io("seek slot", e))?;

    let total = manifest.size;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    while written < total {
        if request.cancel.load(Ordering::Relaxed) {
            return Err(UpdateError::Cancelled);
        }
        let want = usize::try_from(total - written).map_or(CHUNK, |left| left.min(CHUNK));
        let n = read_some(image, &mut buf[..want]).map_err(|e| io("read image for", e))?;
        if n == 0 {
            return Err(UpdateError::Truncated {
                expected: total,
                got: written,
            });
        }
        verifier.update(&buf[..n]);
        device
            .write_all(&buf[..n])
            .map_err(|e| io("write slot", e))?;
        written += n as u64;
        progress(InstallProgress::Writing { written, total });
    }
    if read_some(image, &mut buf[..1]).map_err(|e| io("read image for", e))? != 0 {
        return Err(UpdateError::Overlong { expected: total });
    }
    verifier
        .finalize()
        .map_err(|e| UpdateError::BadImage(e.to_string()))?;
    device.sync().map_err(|e| io("fsync slot", e))?;
    device.drop_cache(total);

    read_back(request, device, &mut buf, progress)?;
    // Stage on the environment as it is now, not as it was minutes ago.
    let env = request.boot_env.load()?;
    if env.default == slot {
        return Err(UpdateError::FallbackSlot {
            slot,
            running: request.booted,
        });
    }
    request.boot_env.store(&env.staged(slot))?;
    progress(InstallProgress::Staged);
    Ok(manifest.clone())
}

/// Reads the slot's first `size` bytes from the device and checks them against the
/// signature again: a write the medium did not keep must not be booted.
fn read_back(
    request: &InstallRequest<'_>,
    device: &mut dyn SlotMedium,
    buf: &mut [u8],
    progress: &mut dyn FnMut(InstallProgress),
) -> Result<(), UpdateError> {
    let path = &request.device.path;
    let io = |context, e| UpdateError::io(context, path, e);
    let total = request.signature.manifest().size;
    let mut verifier = request.signature.verifier(request.key)?;
    device
        .seek(SeekFrom::Start(0))
        .map_err(|e| io("seek slot", e))?;
    let mut read = 0u64;
    while read < total {
        if request.cancel.load(Ordering::Relaxed) {
            return Err(UpdateError::Cancelled);
        }
        let want = usize::try_from(total - read).map_or(buf.len(), |left| left.min(buf.len()));
        let n = read_some(device, &mut buf[..want]).map_err(|e| io("read back slot", e))?;
        if n == 0 {
            return Err(UpdateError::ReadBack(request.device.slot));
        }
        verifier.update(&buf[..n]);
        read += n as u64;
        progress(InstallProgress::Checking { read, total });
    }
    verifier
        .finalize()
        .map_err(|_| UpdateError::ReadBack(request.device.slot))
}

/// One `read`, retried on EINTR.
fn read_some(from: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match from.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
