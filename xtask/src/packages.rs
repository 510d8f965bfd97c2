//! System packages the build and the tests need, installed when missing.
//!
//! Debian 12 / Ubuntu 24.04 package names. Each capability adds what it needs
//! here, in the group where it is needed, so the README's two commands keep
//! working on a fresh machine.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Needed to build the workspace (C toolchain for the linker and -sys crates).
pub const BUILD: &[&str] = &[
    "gcc",
    "libc6-dev",
    "pkg-config",
    // ALSA capture (alsa-sys).
    "libasound2-dev",
    // Bundled libFLAC 1.5 is built with CMake (libflac-sys).
    "cmake",
];

/// Needed by the test suite in addition to [`BUILD`].
pub const TEST: &[&str] = &[
    // `kill` for the scenario tests' signals.
    "procps",
    // The reference `flac` tool checks our files (`flac -t`, `flac -d`).
    "flac",
    // sox reads our WAV/RF64 files as a second reference.
    "sox",
    // The shipped external-broker configuration is tested against mosquitto;
    // dashboards' commands (mosquitto_sub) are run as printed.
    "mosquitto",
    "mosquitto-clients",
    // Real-time pacing, overruns and device loss: JACK's dummy backend behind
    // alsa-lib's jack plugin.
    "jackd2",
    "libasound2-plugins",
    // Wall-clock jumps under a running agent (libfaketime, monotonic clock untouched).
    "faketime",
    // The console's browser tests: headless Chromium through chromedriver.
    "chromium",
    "chromium-driver",
    // SMB delivery destinations are tested against a real Samba server.
    "samba",
    "smbclient",
    // Update images are signed with the minisign CLI in the tests, and the boot
    // environment we write is read back with grub-editenv (and the other way round).
    "minisign",
    "grub-common",
    // The server's real /metrics is read by the Prometheus project's own
    // Python client parser.
    "python3-prometheus-client",
    // The console over HTTPS is checked with curl as the client.
    "curl",
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Install every package in `wanted` that is not installed yet.
pub fn ensure(wanted: &[&str]) -> Result<()> {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "xtask: not a Debian-based system; make sure these are installed: {}",
            wanted.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing missing system packages: {}",
        missing.join(" ")
    );
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| -> Result<()> {
        let mut full: Vec<&str> = sudo.to_vec();
        full.push("apt-get");
        full.extend_from_slice(args);
        let status = Command::new(full[0])
            .args(&full[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("cannot run {}", full.join(" ")))?;
        if !status.success() {
            bail!("`{}` failed ({status})", full.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(&missing);
    apt(&install)
}
