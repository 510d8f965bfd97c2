//! Installing images signed by the `minisign` CLI into slot files, with the boot
//! environment in a GRUB environment block that `grub-editenv` reads and writes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use rakkr_update::{
    BootAssessment, BootEnv, BootEnvStore, CHUNK, GrubEnvFile, ImageManifest, ImageSignature,
    InstallProgress, InstallRequest, PublicKey, Slot, SlotDevice, SlotMedium, UpdateError, install,
};

const SLOT_BYTES: u64 = 8 << 20;
/// More than three chunks, and not a multiple of one.
const IMAGE_BYTES: usize = 3 * CHUNK + 12_345;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .expect("run (xtask installs minisign and grub-common)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A minisign key pair made by the CLI (`-W`: no password, for the test only).
struct Signer {
    dir: PathBuf,
    name: &'static str,
}

impl Signer {
    fn new(dir: &Path, name: &'static str) -> Self {
        run(Command::new("minisign")
            .args(["-G", "-W", "-f"])
            .arg("-p")
            .arg(dir.join(format!("{name}.pub")))
            .arg("-s")
            .arg(dir.join(format!("{name}.key"))));
        Signer {
            dir: dir.to_owned(),
            name,
        }
    }

    fn public_key(&self) -> PublicKey {
        PublicKey::parse(
            &std::fs::read_to_string(self.dir.join(format!("{}.pub", self.name))).unwrap(),
        )
        .unwrap()
    }

    /// Signs `image` with `comment` as the trusted comment; returns the signature text.
    fn sign(&self, image: &Path, comment: &str) -> String {
        let sig = image.with_extension("minisig");
        run(Command::new("minisign")
            .arg("-S")
            .arg("-s")
            .arg(self.dir.join(format!("{}.key", self.name)))
            .arg("-m")
            .arg(image)
            .arg("-x")
            .arg(&sig)
            .args(["-t", comment]));
        std::fs::read_to_string(sig).unwrap()
    }
}

struct Appliance {
    dir: tempfile::TempDir,
    signer: Signer,
    key: PublicKey,
    env: GrubEnvFile,
    slot_a: SlotDevice,
    slot_b: SlotDevice,
    cancel: AtomicBool,
}

impl Appliance {
    /// Two slot files of [`SLOT_BYTES`] (A holds a "running system" pattern, B zeros) and
    /// a boot environment made by `grub-editenv` that boots A.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::new(dir.path(), "release");
        let key = signer.public_key();
        let slot = |slot, name: &str, fill: u8| {
            let path = dir.path().join(name);
            std::fs::write(&path, vec![fill; SLOT_BYTES as usize]).unwrap();
            SlotDevice { slot, path }
        };
        let env_path = dir.path().join("grubenv");
        run(Command::new("grub-editenv").arg(&env_path).arg("create"));
        run(Command::new("grub-editenv").arg(&env_path).args([
            "set",
            "rakkr_default=a",
            "saved_entry=rakkr",
        ]));
        Appliance {
            slot_a: slot(Slot::A, "root-a", 0xA5),
            slot_b: slot(Slot::B, "root-b", 0),
            env: GrubEnvFile::new(env_path),
            signer,
            key,
            cancel: AtomicBool::new(false),
            dir,
        }
    }

    /// A pseudo-random image of `len` bytes and its CLI signature for `target`.
    fn image(&self, len: usize, target: &str) -> (Vec<u8>, ImageSignature) {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ len as u64;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let path = self.dir.path().join("image.img");
        std::fs::write(&path, &bytes).unwrap();
        let manifest = ImageManifest {
            version: "1.4.0".into(),
            target: target.into(),
            size: len as u64,
        };
        let sig = self.signer.sign(&path, &manifest.trusted_comment());
        (bytes, ImageSignature::parse(&sig).unwrap())
    }

    fn request<'a>(
        &'a self,
        sig: &'a ImageSignature,
        device: &'a SlotDevice,
    ) -> InstallRequest<'a> {
        InstallRequest {
            key: &self.key,
            signature: sig,
            target: "x86_64",
            booted: Slot::A,
            device,
            boot_env: &self.env,
            cancel: &self.cancel,
        }
    }

    fn install(
        &self,
        request: &InstallRequest<'_>,
        image: &[u8],
    ) -> (Result<ImageManifest, UpdateError>, Vec<InstallProgress>) {
        let mut seen = Vec::new();
        let mut medium = request.device.open().unwrap();
        let result = install(request, &mut &image[..], &mut medium, &mut |p| seen.push(p));
        (result, seen)
    }

    fn grub_list(&self) -> String {
        run(Command::new("grub-editenv")
            .arg(self.env.path())
            .arg("list"))
    }

    fn slot_bytes(&self, slot: &SlotDevice) -> Vec<u8> {
        std::fs::read(&slot.path).unwrap()
    }

    /// Neither slot nor the boot environment changed.
    fn assert_untouched(&self, env_before: &str) {
        assert_eq!(self.grub_list(), env_before);
        assert!(self.slot_bytes(&self.slot_a).iter().all(|&b| b == 0xA5));
        assert_eq!(self.slot_bytes(&self.slot_a).len() as u64, SLOT_BYTES);
    }
}

#[test]
fn an_image_signed_by_the_cli_is_written_checked_and_staged_for_grub() {
    let app = Appliance::new();
    let (image, sig) = app.image(IMAGE_BYTES, "x86_64");
    let (result, progress) = app.install(&app.request(&sig, &app.slot_b), &image);
    let manifest = result.unwrap();
    assert_eq!(manifest.version, "1.4.0");

    let slot_b = app.slot_bytes(&app.slot_b);
    assert_eq!(slot_b.len() as u64, SLOT_BYTES, "the slot is never resized");
    assert_eq!(&slot_b[..IMAGE_BYTES], &image[..]);
    assert!(slot_b[IMAGE_BYTES..].iter().all(|&b| b == 0));
    assert!(app.slot_bytes(&app.slot_a).iter().all(|&b| b == 0xA5));

    // Progress: every chunk written, every chunk read back, then staged.
    let total = IMAGE_BYTES as u64;
    let chunks = IMAGE_BYTES.div_ceil(CHUNK);
    assert_eq!(progress.len(), 2 * chunks + 1);
    assert_eq!(
        progress[chunks - 1],
        InstallProgress::Writing {
            written: total,
            total
        }
    );
    assert_eq!(
        progress[2 * chunks - 1],
        InstallProgress::Checking { read: total, total }
    );
    assert_eq!(progress.last(), Some(&InstallProgress::Staged));

    // GRUB's own tool reads the new environment, other variables kept.
    let listed = app.grub_list();
    for line in [
        "rakkr_default=a",
        "rakkr_trial=b",
        "rakkr_tries=1",
        "saved_entry=rakkr",
    ] {
        assert!(listed.lines().any(|l| l == line), "{line} in {listed}");
    }
    assert_eq!(std::fs::metadata(app.env.path()).unwrap().len(), 1024);
    let env = app.env.load().unwrap();
    assert_eq!(
        env.assess(Slot::A),
        BootAssessment::Staged { next: Slot::B }
    );

    // The boot script boots the trial and clears the flag with save_env…
    run(Command::new("grub-editenv")
        .arg(app.env.path())
        .args(["set", "rakkr_tries=0"]));
    let env = app.env.load().unwrap();
    assert_eq!(env.assess(Slot::B), BootAssessment::Trial(Slot::B));
    // …and a trial that does not come up falls back to A.
    assert_eq!(
        env.assess(Slot::A),
        BootAssessment::RolledBack {
            failed: Slot::B,
            running: Slot::A
        }
    );
    // The healthy trial commits itself.
    app.env.store(&env.committed(Slot::B)).unwrap();
    let listed = app.grub_list();
    assert!(listed.lines().any(|l| l == "rakkr_default=b"), "{listed}");
    assert!(listed.lines().any(|l| l == "rakkr_trial="), "{listed}");
    assert!(listed.lines().any(|l| l == "saved_entry=rakkr"), "{listed}");
}

#[test]
fn a_bad_image_or_signature_leaves_slots_and_boot_environment_alone() {
    let app = Appliance::new();
    let (image, sig) = app.image(IMAGE_BYTES, "x86_64");
    let before = app.grub_list();

    // Signed by another key.
    let other = Signer::new(app.dir.path(), "other");
    let path = app.dir.path().join("image.img");
    let foreign =
        ImageSignature::parse(&other.sign(&path, &sig.manifest().trusted_comment())).unwrap();
    let (result, _) = app.install(&app.request(&foreign, &app.slot_b), &image);
    let err = result.unwrap_err();
    assert!(matches!(err, UpdateError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains(app.key.id()), "{err}");
    assert!(
        app.slot_bytes(&app.slot_b).iter().all(|&b| b == 0),
        "nothing written"
    );

    // For another appliance type.
    let (arm_image, arm_sig) = app.image(1000, "aarch64");
    let (result, _) = app.install(&app.request(&arm_sig, &app.slot_b), &arm_image);
    assert!(matches!(result, Err(UpdateError::WrongTarget { .. })));

    // Into the running slot.
    let (result, _) = app.install(&app.request(&sig, &app.slot_a), &image);
    assert!(matches!(result, Err(UpdateError::BootedSlot(Slot::A))));

    // Too large for the slot.
    let (big, big_sig) = app.image(SLOT_BYTES as usize + 1, "x86_64");
    let (result, _) = app.install(&app.request(&big_sig, &app.slot_b), &big);
    let err = result.unwrap_err();
    assert!(matches!(err, UpdateError::TooLarge { .. }), "{err}");

    // One byte changed in transit: written, found bad at the end, never staged.
    let mut damaged = image.clone();
    damaged[IMAGE_BYTES / 2] ^= 0x10;
    let (result, progress) = app.install(&app.request(&sig, &app.slot_b), &damaged);
    assert!(matches!(result, Err(UpdateError::BadImage(_))));
    assert!(!progress.contains(&InstallProgress::Staged));

    // A stream that ends early, and one that goes on.
    let (result, _) = app.install(&app.request(&sig, &app.slot_b), &image[..IMAGE_BYTES - 1]);
    let err = result.unwrap_err();
    assert!(
        matches!(err, UpdateError::Truncated { got, .. } if got == IMAGE_BYTES as u64 - 1),
        "{err}"
    );
    let mut longer = image.clone();
    longer.push(0);
    let (result, _) = app.install(&app.request(&sig, &app.slot_b), &longer);
    assert!(matches!(result, Err(UpdateError::Overlong { .. })));

    // Cancelled by a shutdown.
    app.cancel.store(true, Ordering::Relaxed);
    let (result, _) = app.install(&app.request(&sig, &app.slot_b), &image);
    assert!(matches!(result, Err(UpdateError::Cancelled)));

    app.assert_untouched(&before);
}

#[test]
fn a_new_install_first_unstages_the_slot_it_overwrites() {
    let app = Appliance::new();
    let (image, sig) = app.image(IMAGE_BYTES, "x86_64");
    app.install(&app.request(&sig, &app.slot_b), &image)
        .0
        .unwrap();
    assert_eq!(
        app.env.load().unwrap().assess(Slot::A),
        BootAssessment::Staged { next: Slot::B }
    );
    // A second install into B fails half way: B is no longer staged, so a reboot
    // now boots A, not a half-written B.
    let mut damaged = image.clone();
    damaged[10] ^= 1;
    let (result, _) = app.install(&app.request(&sig, &app.slot_b), &damaged);
    assert!(matches!(result, Err(UpdateError::BadImage(_))));
    let env = app.env.load().unwrap();
    assert_eq!(env.assess(Slot::A), BootAssessment::Committed(Slot::A));
    assert_eq!((env.default, env.trial), (Slot::A, None));
    assert!(app.grub_list().lines().any(|l| l == "saved_entry=rakkr"));
}

#[test]
fn a_running_trial_must_commit_before_its_fallback_is_overwritten() {
    let app = Appliance::new();
    let (image, sig) = app.image(1000, "x86_64");
    // Running B on trial; A is the fallback.
    run(Command::new("grub-editenv").arg(app.env.path()).args([
        "set",
        "rakkr_trial=b",
        "rakkr_tries=0",
    ]));
    let request = InstallRequest {
        booted: Slot::B,
        ..app.request(&sig, &app.slot_a)
    };
    let (result, _) = app.install(&request, &image);
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::FallbackSlot {
                slot: Slot::A,
                running: Slot::B
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("rakkr-agent update commit"),
        "{err}"
    );
    assert!(app.slot_bytes(&app.slot_a).iter().all(|&b| b == 0xA5));
}

/// A medium that loses a bit of what was written: the read-back must catch it.
struct ForgetfulMedium {
    inner: std::fs::File,
    flip_at: u64,
    writing: bool,
}

impl Read for ForgetfulMedium {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let at = self.inner.stream_position()?;
        let n = self.inner.read(buf)?;
        if !self.writing && (at..at + n as u64).contains(&self.flip_at) {
            buf[(self.flip_at - at) as usize] ^= 0x80;
        }
        Ok(n)
    }
}

impl Write for ForgetfulMedium {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Seek for ForgetfulMedium {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl SlotMedium for ForgetfulMedium {
    fn sync(&mut self) -> std::io::Result<()> {
        self.writing = false;
        self.inner.sync_all()
    }
    fn drop_cache(&mut self, len: u64) {
        self.inner.drop_cache(len);
    }
}

#[test]
fn a_slot_that_does_not_read_back_as_written_is_not_staged() {
    let app = Appliance::new();
    let (image, sig) = app.image(IMAGE_BYTES, "x86_64");
    let before = app.grub_list();
    let mut medium = ForgetfulMedium {
        inner: app.slot_b.open().unwrap(),
        flip_at: 2 * CHUNK as u64 + 7,
        writing: true,
    };
    let request = app.request(&sig, &app.slot_b);
    let err = install(&request, &mut &image[..], &mut medium, &mut |_| {}).unwrap_err();
    assert!(matches!(err, UpdateError::ReadBack(Slot::B)), "{err}");
    assert_eq!(app.grub_list(), before);
}

/// A boot environment that cannot be written (a read-only or failing boot partition).
struct ReadOnlyEnv(GrubEnvFile);

impl BootEnvStore for ReadOnlyEnv {
    fn load(&self) -> Result<BootEnv, UpdateError> {
        self.0.load()
    }
    fn store(&self, _: &BootEnv) -> Result<(), UpdateError> {
        Err(UpdateError::BootEnv {
            path: self.0.path().to_owned(),
            reason: "read-only file system".into(),
        })
    }
}

#[test]
fn a_boot_environment_that_cannot_be_written_fails_the_install() {
    let app = Appliance::new();
    let (image, sig) = app.image(1000, "x86_64");
    let before = app.grub_list();
    let env = ReadOnlyEnv(app.env.clone());
    let request = InstallRequest {
        boot_env: &env,
        ..app.request(&sig, &app.slot_b)
    };
    let (result, progress) = app.install(&request, &image);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("read-only file system"), "{err}");
    assert!(!progress.contains(&InstallProgress::Staged));
    assert_eq!(app.grub_list(), before);
}

#[test]
fn a_slot_another_install_holds_is_busy() {
    let app = Appliance::new();
    let held = app.slot_b.open().unwrap();
    let err = app.slot_b.open().unwrap_err();
    assert!(
        matches!(err, UpdateError::Busy { slot: Slot::B, .. }),
        "{err}"
    );
    drop(held);
    assert!(app.slot_b.open().is_ok());
}
