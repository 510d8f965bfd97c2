//! A tiny tmpfs to fill up: disk-full tests with a real file system. Needs
//! root (CI runs as root). Also compiled into `rakkr-agent`'s own tests
//! (`#[path]`), so it depends on std alone.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a directory; unmounted on drop (drop it after every
/// process writing there has ended, or the unmount fails as busy).
pub struct SmallFs(PathBuf);

impl SmallFs {
    /// Mount a tmpfs of `size` (`mount`'s syntax: `600k`, `2m`) on `dir`,
    /// which must exist; `None` if mounting is not allowed here.
    pub fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| SmallFs(dir.to_owned()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
