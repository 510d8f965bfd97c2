//! A/B image updates on a real agent: an image signed by the `minisign` CLI is installed
//! with `rakkr-agent update install` into slot files, the boot is played as the GRUB
//! script does it (`grub-editenv` on the same block, `rakkr.slot=` on a command-line
//! file), and the running agent commits a healthy trial once it reaches the fleet, or
//! reports a trial that rolled back as a health issue on the server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rakkr_hil_tests::*;

const SLOT_BYTES: usize = 8 << 20;

struct Appliance {
    work: PathBuf,
    config: PathBuf,
    grubenv: PathBuf,
    cmdline: PathBuf,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

impl Appliance {
    fn new(work: &Path, server: &Server, node: &str) -> Result<Appliance> {
        run(Command::new("minisign")
            .args(["-G", "-W", "-f", "-p"])
            .arg(work.join("release.pub"))
            .arg("-s")
            .arg(work.join("release.key")))?;
        let public_key = std::fs::read_to_string(work.join("release.pub"))?;
        let key_line = public_key.lines().nth(1).context("key line")?;
        std::fs::write(work.join("root-a"), vec![0xA5u8; SLOT_BYTES])?;
        std::fs::write(work.join("root-b"), vec![0u8; SLOT_BYTES])?;
        let grubenv = work.join("grubenv");
        run(Command::new("grub-editenv").arg(&grubenv).arg("create"))?;
        run(Command::new("grub-editenv")
            .arg(&grubenv)
            .arg("set")
            .arg("rakkr_default=a"))?;
        let cmdline = work.join("cmdline");
        let config = work.join(format!("{node}.toml"));
        std::fs::write(
            &config,
            format!(
                "node_id = \"{node}\"\nrealtime = false\nstate_dir = \"{}\"\n\
                 [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
                 [source]\nkind = \"synthetic\"\nchannels = 2\nsignal = \"demo\"\n\
                 [update]\npublic_key = \"{key_line}\"\ntarget = \"x86_64\"\n\
                 boot_env = \"{}\"\nslot_a = \"{}\"\nslot_b = \"{}\"\ncmdline = \"{}\"\n",
                work.join("state").display(),
                server.mqtt_port,
                grubenv.display(),
                work.join("root-a").display(),
                work.join("root-b").display(),
                cmdline.display(),
            ),
        )?;
        let appliance = Appliance {
            work: work.to_owned(),
            config,
            grubenv,
            cmdline,
        };
        appliance.boot("a")?;
        Ok(appliance)
    }

    /// Makes a `len`-byte image of `version` and signs it with the CLI.
    fn image(&self, version: &str, len: usize) -> Result<PathBuf> {
        let path = self.work.join(format!("rootfs-{version}.img"));
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4099) as u8).collect();
        std::fs::write(&path, bytes)?;
        run(Command::new("minisign")
            .arg("-S")
            .arg("-s")
            .arg(self.work.join("release.key"))
            .arg("-m")
            .arg(&path)
            .arg("-t")
            .arg(format!(
                "rakkr-image version={version} target=x86_64 size={len}"
            )))?;
        Ok(path)
    }

    fn update(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let config = self.config.to_str().context("path")?;
        let mut all = vec!["update", args[0], "--config", config];
        all.extend_from_slice(&args[1..]);
        cli("rakkr-agent", &all)
    }

    /// The system comes up from `slot`, as the boot script tells the kernel.
    fn boot(&self, slot: &str) -> Result<()> {
        Ok(std::fs::write(
            &self.cmdline,
            format!("BOOT_IMAGE=/vmlinuz root=PARTLABEL=root-{slot} rakkr.slot={slot} ro\n"),
        )?)
    }

    /// The boot script's `save_env` as it boots a pending trial.
    fn bootloader_takes_trial(&self) -> Result<()> {
        run(Command::new("grub-editenv")
            .arg(&self.grubenv)
            .args(["set", "rakkr_tries=0"]))?;
        Ok(())
    }

    fn env(&self) -> Result<String> {
        run(Command::new("grub-editenv").arg(&self.grubenv).arg("list"))
    }

    fn env_has(&self, line: &str) -> bool {
        self.env().is_ok_and(|e| e.lines().any(|l| l == line))
    }
}

#[test]
fn a_signed_image_is_tried_committed_once_the_fleet_is_reached_and_a_failed_trial_is_reported()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let server = Server::start(work, &work.join("data"))?;
    let node = "upd-1";
    let appliance = Appliance::new(work, &server, node)?;

    // A damaged image is refused with a clear message and changes nothing.
    let image = appliance.image("1.4.0", 2_500_000)?;
    let good = std::fs::read(&image)?;
    let mut bad = good.clone();
    bad[1_000_000] ^= 4;
    std::fs::write(&image, &bad)?;
    let env_before = appliance.env()?;
    let (ok, _, err) = appliance.update(&["install", image.to_str().unwrap()])?;
    assert!(!ok);
    assert!(err.contains("does not match its signature"), "{err}");
    assert_eq!(appliance.env()?, env_before);

    // The intact image goes to slot B and is staged for one try.
    std::fs::write(&image, &good)?;
    let (ok, out, err) = appliance.update(&["install", image.to_str().unwrap()])?;
    assert!(ok, "{err}");
    assert!(
        out.contains("version 1.4.0") && out.contains("slot b"),
        "{out}"
    );
    assert_eq!(
        &std::fs::read(work.join("root-b"))?[..good.len()],
        &good[..]
    );
    assert!(appliance.env_has("rakkr_trial=b") && appliance.env_has("rakkr_tries=1"));
    let (_, status, _) = appliance.update(&["status"])?;
    assert!(status.contains("booted slot a; staged: slot b"), "{status}");

    // Reboot into the trial: the agent commits it once it has reached the broker.
    appliance.bootloader_takes_trial()?;
    appliance.boot("b")?;
    let agent = Agent::start_for(work, &server, node, &appliance.config, &[])?;
    wait_for("the trial committed", Duration::from_secs(30), || {
        (appliance.env_has("rakkr_default=b") && appliance.env_has("rakkr_trial=")).then_some(())
    })?;
    agent
        .proc
        .wait_log("update committed", Duration::from_secs(5))?;
    let slot = wait_for("slot b reported", Duration::from_secs(15), || {
        let nodes = server.nodes().ok()?;
        let n = nodes.into_iter().find(|n| n["id"] == node)?;
        (n["details"]["slot"] == "b").then_some(())
    });
    slot?;
    drop(agent);

    // The next image goes to slot A; its trial does not come up, and the bootloader
    // goes back to B. The agent on B reports it once, and forgets the trial.
    let next = appliance.image("1.5.0", 1_000_000)?;
    let (ok, out, err) = appliance.update(&["install", next.to_str().unwrap()])?;
    assert!(ok, "{err}");
    assert!(out.contains("slot a"), "{out}");
    appliance.bootloader_takes_trial()?;
    appliance.boot("b")?;
    let agent = Agent::start_for(work, &server, node, &appliance.config, &[])?;
    let issue = wait_for("update_rolled_back issue", Duration::from_secs(30), || {
        let list = server
            .get_json(&format!(
                "/api/v1/health?node={node}&condition=update_rolled_back"
            ))
            .ok()?;
        list.as_array()?.first().cloned()
    })?;
    assert_eq!(issue["subject"], "slot:a", "{issue}");
    assert_eq!(issue["state"], "open", "{issue}");
    assert!(appliance.env_has("rakkr_trial=") && appliance.env_has("rakkr_default=b"));
    let (_, status, _) = appliance.update(&["status"])?;
    assert!(
        status.contains("booted slot b; committed: slot b"),
        "{status}"
    );
    drop(agent);
    Ok(())
}
