//! Boot slots and the boot environment that chooses between them.
//!
//! The pure part is [`BootEnv`] (what the bootloader will do next) and
//! [`BootEnv::assess`] (what happened at the last boot); [`BootEnvStore`] is the IO edge,
//! implemented for a GRUB environment block by [`GrubEnvFile`].

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rakkr_protocol::payload::BootSlot;

use crate::UpdateError;

/// One of the appliance's two root-filesystem slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(text: &str) -> Option<Slot> {
        match text {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Slot> for BootSlot {
    fn from(slot: Slot) -> BootSlot {
        match slot {
            Slot::A => BootSlot::A,
            Slot::B => BootSlot::B,
        }
    }
}

/// The slot the running system booted from, as the boot script passes it on the kernel
/// command line (`rakkr.slot=a`). `None` on a machine not booted that way.
pub fn booted_slot_from_cmdline(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_ascii_whitespace()
        .find_map(|word| word.strip_prefix("rakkr.slot="))
        .and_then(Slot::parse)
}

/// The boot environment's say on the next boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEnv {
    /// The committed slot: booted whenever no trial is due.
    pub default: Slot,
    /// A slot to try, once.
    pub trial: Option<Slot>,
    /// Whether the trial is still to be booted (the boot script clears it as it boots
    /// the trial, so a trial that does not come up is not booted again).
    pub trial_pending: bool,
    /// Other variables of the environment block, kept byte for byte (raw `key=value`).
    others: Vec<Vec<u8>>,
}

/// What the last boot was, read from the boot environment and the booted slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootAssessment {
    /// No update in flight: running the committed slot.
    Committed(Slot),
    /// An installed image waits for a reboot to be tried.
    Staged { next: Slot },
    /// Running the trial of a new image: commit it once the system is healthy.
    Trial(Slot),
    /// The trial of `failed` did not come up and the bootloader fell back to `running`.
    RolledBack { failed: Slot, running: Slot },
}

impl std::fmt::Display for BootAssessment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootAssessment::Committed(slot) => write!(f, "committed: slot {slot}"),
            BootAssessment::Staged { next } => {
                write!(f, "staged: slot {next} is tried at the next boot")
            }
            BootAssessment::Trial(slot) => write!(
                f,
                "trial: slot {slot} runs uncommitted; a reboot before the commit goes back"
            ),
            BootAssessment::RolledBack { failed, running } => write!(
                f,
                "rolled back: the trial of slot {failed} failed; running slot {running}"
            ),
        }
    }
}

impl BootEnv {
    /// A fresh environment that boots `default`.
    pub fn new(default: Slot) -> Self {
        BootEnv {
            default,
            trial: None,
            trial_pending: false,
            others: Vec::new(),
        }
    }

    /// Reads the state of the last boot, given the slot the system came up from.
    pub fn assess(&self, booted: Slot) -> BootAssessment {
        match self.trial {
            None => BootAssessment::Committed(booted),
            // A bootloader that could not save its environment boots the trial with the
            // flag still set: it is running, so it is a trial all the same.
            Some(trial) if trial == booted => BootAssessment::Trial(trial),
            Some(trial) if self.trial_pending => BootAssessment::Staged { next: trial },
            Some(failed) => BootAssessment::RolledBack {
                failed,
                running: booted,
            },
        }
    }

    /// The environment that tries `slot` at the next boot, once.
    pub fn staged(&self, slot: Slot) -> Self {
        BootEnv {
            trial: Some(slot),
            trial_pending: true,
            ..self.clone()
        }
    }

    /// The environment that boots `slot` from now on.
    pub fn committed(&self, slot: Slot) -> Self {
        BootEnv {
            default: slot,
            trial: None,
            trial_pending: false,
            ..self.clone()
        }
    }

    /// The environment with a failed or unwanted trial forgotten.
    pub fn without_trial(&self) -> Self {
        self.committed(self.default)
    }

    /// The environment after the trial was booted: not booted again, whatever happens.
    pub fn trial_booted(&self) -> Self {
        BootEnv {
            trial_pending: false,
            ..self.clone()
        }
    }
}

/// Where the boot environment lives: the IO edge, so tests can inject failures.
pub trait BootEnvStore {
    fn load(&self) -> Result<BootEnv, UpdateError>;
    /// Replaces the environment atomically: a crash leaves the old or the new one.
    fn store(&self, env: &BootEnv) -> Result<(), UpdateError>;
}

const GRUB_HEADER: &str = "# GRUB Environment Block\n";
const GRUB_WARNING: &str = "# WARNING: Do not edit this file by tools other than grub-editenv!!!\n";
/// The size `grub-editenv create` gives a block; GRUB's `save_env` rewrites it in place,
/// so the size never changes.
const GRUB_BLOCK: usize = 1024;
const KEY_DEFAULT: &str = "rakkr_default";
const KEY_TRIAL: &str = "rakkr_trial";
const KEY_TRIES: &str = "rakkr_tries";

/// A GRUB environment block file (`/boot/grub/grubenv` on the appliance's boot partition).
#[derive(Clone, Debug)]
pub struct GrubEnvFile {
    path: PathBuf,
}

impl GrubEnvFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        GrubEnvFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn invalid(&self, reason: impl Into<String>) -> UpdateError {
        UpdateError::BootEnv {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Parses a block: the header line, then `key=value` lines; lines starting with `#`
    /// (the warning, the padding) are not variables. A backslash escapes the next byte,
    /// newlines included, as GRUB writes them.
    fn parse(&self, block: &[u8]) -> Result<BootEnv, UpdateError> {
        let body = block
            .strip_prefix(GRUB_HEADER.as_bytes())
            .ok_or_else(|| self.invalid("not a GRUB environment block (bad header)"))?;
        let (mut default, mut trial, mut tries, mut others) = (None, None, None, Vec::new());
        for raw in grub_lines(body) {
            if raw.is_empty() || raw.starts_with(b"#") {
                continue;
            }
            let line = String::from_utf8_lossy(&raw);
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| self.invalid(format!("line {line:?} is not key=value")))?;
            let slot_value = |v: &str| {
                Slot::parse(v).ok_or_else(|| self.invalid(format!("{key}={v:?} is not a or b")))
            };
            match key {
                KEY_DEFAULT => default = Some(slot_value(value)?),
                KEY_TRIAL if value.is_empty() => trial = None,
                KEY_TRIAL => trial = Some(slot_value(value)?),
                KEY_TRIES => tries = Some(value.to_owned()),
                _ => others.push(raw),
            }
        }
        let default = default.ok_or_else(|| self.invalid(format!("no {KEY_DEFAULT}")))?;
        let trial_pending = match (trial, tries.as_deref()) {
            (None, _) => false,
            (Some(_), Some("1")) => true,
            (Some(_), Some("0")) => false,
            (Some(_), None) => {
                return Err(self.invalid(format!("{KEY_TRIAL} is set but {KEY_TRIES} is missing")));
            }
            (Some(_), Some(other)) => {
                return Err(self.invalid(format!("{KEY_TRIES}={other:?} is not 0 or 1")));
            }
        };
        Ok(BootEnv {
            default,
            trial,
            trial_pending,
            others,
        })
    }

    fn render(&self, env: &BootEnv, size: usize) -> Result<Vec<u8>, UpdateError> {
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(GRUB_HEADER.as_bytes());
        out.extend_from_slice(GRUB_WARNING.as_bytes());
        for line in &env.others {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        let trial = env.trial.map_or("", Slot::as_str);
        let tries = if env.trial_pending { "1" } else { "0" };
        out.extend_from_slice(
            format!(
                "{KEY_DEFAULT}={}\n{KEY_TRIAL}={trial}\n{KEY_TRIES}={tries}\n",
                env.default
            )
            .as_bytes(),
        );
        if out.len() > size {
            return Err(self.invalid(format!(
                "{} bytes of variables do not fit the {size}-byte block",
                out.len()
            )));
        }
        out.resize(size, b'#');
        Ok(out)
    }

    /// Writes a new block booting `default` (first installation of an image).
    pub fn create(&self, default: Slot) -> Result<(), UpdateError> {
        self.replace(&self.render(&BootEnv::new(default), GRUB_BLOCK)?)
    }

    fn replace(&self, block: &[u8]) -> Result<(), UpdateError> {
        let io = |context, e| UpdateError::io(context, &self.path, e);
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .ok_or_else(|| self.invalid("no file name"))?;
        let mut tmp_name = name.to_owned();
        tmp_name.push(".new");
        let tmp = dir.join(tmp_name);
        let mut file = File::create(&tmp).map_err(|e| io("create", e))?;
        file.write_all(block).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("fsync", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io("rename onto", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync the directory of", e))
    }
}

impl BootEnvStore for GrubEnvFile {
    fn load(&self) -> Result<BootEnv, UpdateError> {
        let block =
            std::fs::read(&self.path).map_err(|e| UpdateError::io("read", &self.path, e))?;
        self.parse(&block)
    }

    fn store(&self, env: &BootEnv) -> Result<(), UpdateError> {
        // Keep the block's size: GRUB's save_env writes into it in place.
        let size = std::fs::metadata(&self.path)
            .map(|m| usize::try_from(m.len()).unwrap_or(GRUB_BLOCK))
            .unwrap_or(GRUB_BLOCK)
            .max(GRUB_BLOCK);
        self.replace(&self.render(env, size)?)
    }
}

/// Splits a block body into lines, a backslash escaping the byte after it (newline
/// included). Lines are returned raw (escapes kept), so other tools' variables are
/// written back byte for byte.
fn grub_lines(body: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'\n' => {
                lines.push(body[start..i].to_vec());
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < body.len() {
        lines.push(body[start..body.len().min(i)].to_vec());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assessment_follows_the_boot_script() {
        let env = BootEnv::new(Slot::A);
        assert_eq!(env.assess(Slot::A), BootAssessment::Committed(Slot::A));
        let staged = env.staged(Slot::B);
        assert_eq!(
            staged.assess(Slot::A),
            BootAssessment::Staged { next: Slot::B }
        );
        // The boot script clears the flag as it boots the trial.
        let booted_trial = BootEnv {
            trial_pending: false,
            ..staged.clone()
        };
        assert_eq!(booted_trial.assess(Slot::B), BootAssessment::Trial(Slot::B));
        // Came back on A: the trial did not make it.
        assert_eq!(
            booted_trial.assess(Slot::A),
            BootAssessment::RolledBack {
                failed: Slot::B,
                running: Slot::A
            }
        );
        // A bootloader that could not save its environment still booted the trial.
        assert_eq!(staged.assess(Slot::B), BootAssessment::Trial(Slot::B));
        let committed = booted_trial.committed(Slot::B);
        assert_eq!(
            committed.assess(Slot::B),
            BootAssessment::Committed(Slot::B)
        );
        assert_eq!(committed.default, Slot::B);
        assert_eq!(booted_trial.without_trial(), BootEnv::new(Slot::A));
    }

    #[test]
    fn the_cmdline_names_the_booted_slot() {
        let line = "BOOT_IMAGE=/vmlinuz root=PARTLABEL=root-b rakkr.slot=b ro quiet";
        assert_eq!(booted_slot_from_cmdline(line), Some(Slot::B));
        assert_eq!(booted_slot_from_cmdline("root=/dev/sda1 ro"), None);
        assert_eq!(booted_slot_from_cmdline("rakkr.slot=c"), None);
    }

    #[test]
    fn a_block_round_trips_and_keeps_other_variables() {
        let dir = tempfile::tempdir().unwrap();
        let file = GrubEnvFile::new(dir.path().join("grubenv"));
        file.create(Slot::A).unwrap();
        assert_eq!(std::fs::metadata(file.path()).unwrap().len(), 1024);
        assert_eq!(file.load().unwrap(), BootEnv::new(Slot::A));
        let mut block = std::fs::read(file.path()).unwrap();
        let at = GRUB_HEADER.len() + GRUB_WARNING.len();
        // Another tool's variable: an escaped newline and bytes that are not UTF-8.
        let extra = b"saved_entry=rakkr\\\nx\xff\n";
        block.splice(at..at, extra.iter().copied());
        block.truncate(1024);
        std::fs::write(file.path(), &block).unwrap();
        let env = file.load().unwrap().staged(Slot::B);
        file.store(&env).unwrap();
        let back = std::fs::read(file.path()).unwrap();
        assert_eq!(back.len(), 1024);
        assert!(back.windows(extra.len()).any(|w| w == extra));
        assert_eq!(file.load().unwrap(), env);
    }

    #[test]
    fn a_damaged_block_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let file = GrubEnvFile::new(dir.path().join("grubenv"));
        for (block, why) in [
            ("garbage", "header"),
            (
                "# GRUB Environment Block\nrakkr_trial=\n",
                "no rakkr_default",
            ),
            ("# GRUB Environment Block\nrakkr_default=c\n", "not a or b"),
            (
                "# GRUB Environment Block\nrakkr_default=a\nrakkr_trial=b\nrakkr_tries=7\n",
                "not 0 or 1",
            ),
            (
                "# GRUB Environment Block\nrakkr_default=a\nnoequals\n",
                "key=value",
            ),
        ] {
            std::fs::write(file.path(), block).unwrap();
            let err = file.load().unwrap_err().to_string();
            assert!(err.contains(why), "{block:?}: {err}");
        }
    }
}
