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
                "node_id = \"{node}\"\nrealtime = false\nstate_dir = \"{}\"\nrecordings_dir = \"{}\"\n\
                 [mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\
                 [source]\nkind = \"synthetic\"\nchannels = 2\nsignal = \"demo\"\n\
                 [upload]\nserver = \"{}\"\n\
                 [update]\npublic_key = \"{key_line}\"\ntarget = \"x86_64\"\n\
                 boot_env = \"{}\"\nslot_a = \"{}\"\nslot_b = \"{}\"\ncmdline = \"{}\"\n\
                 reboot_command = [\"sh\", \"-c\", \"echo reboot >> {}\"]\n",
                work.join("state").display(),
                work.join("recordings").display(),
                server.mqtt_port,
                server.url("").trim_end_matches('/'),
                grubenv.display(),
                work.join("root-a").display(),
                work.join("root-b").display(),
                cmdline.display(),
                work.join("reboots").display(),
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

    /// [`Appliance::image`], put in the server's images directory the way the release
    /// process does: the image and its signature; the image's path and that directory.
    fn release(&self, version: &str, len: usize, data: &Path) -> Result<(PathBuf, PathBuf)> {
        let image = self.image(version, len)?;
        let images = data.join("images");
        std::fs::create_dir_all(&images)?;
        for name in [
            format!("rootfs-{version}.img"),
            format!("rootfs-{version}.img.minisig"),
        ] {
            std::fs::copy(image.with_file_name(&name), images.join(&name))?;
        }
        Ok((image, images))
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

    /// Changes the agent's configuration text (for the next start).
    fn reconfigure(&self, from: &str, to: &str) -> Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        assert!(text.contains(from), "{from} not in {text}");
        Ok(std::fs::write(&self.config, text.replace(from, to))?)
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

/// The node's latest update step, as the API reports it.
fn update_of(server: &Server, node: &str) -> Option<serde_json::Value> {
    let nodes = server.nodes().ok()?;
    let n = nodes.into_iter().find(|n| n["id"] == node)?;
    (!n["update"].is_null()).then(|| n["update"].clone())
}

#[test]
fn the_server_orders_an_update_and_the_console_shows_the_node_updating_until_it_commits()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let data = work.join("data");
    let server = Server::start(work, &data)?;
    let node = "upd-2";
    let appliance = Appliance::new(work, &server, node)?;
    let mut viewer = server.operator("vera", "viewer")?;
    let mut owner = server.operator("olga", "owner")?;
    let agent = Agent::start_for(work, &server, node, &appliance.config, &[])?;
    wait_for("node online", Duration::from_secs(20), || {
        (server.presence(node).as_deref() == Some("online")).then_some(())
    })?;

    // The release process puts the image and its signature in the images directory.
    let (image, images) = appliance.release("2.0.0", 3_000_000, &data)?;

    // Orders that cannot be carried out are refused before anything is sent.
    let order = |image: &str| {
        server.post(
            &format!("/api/v1/nodes/{node}/update"),
            &serde_json::json!({ "image": image }),
        )
    };
    assert_eq!(order("../rakkr.redb")?.0, 422);
    assert_eq!(order("rootfs-9.img")?.0, 404);
    assert_eq!(order_as(&server, &viewer, node, "rootfs-2.0.0.img")?, 403);

    // An image changed on the server after signing: the node fetches it, finds it does
    // not match, reports the failure and stages nothing.
    let mut tampered = std::fs::read(&image)?;
    tampered[2_000_000] ^= 1;
    std::fs::write(images.join("rootfs-2.0.0-x.img"), &tampered)?;
    std::fs::copy(
        image.with_file_name("rootfs-2.0.0.img.minisig"),
        images.join("rootfs-2.0.0-x.img.minisig"),
    )?;
    let env_before = appliance.env()?;
    let (code, answer) = order("rootfs-2.0.0-x.img")?;
    assert_eq!(code, 202, "{answer}");
    let failed = wait_for("the failure reported", Duration::from_secs(60), || {
        update_of(&server, node).filter(|u| u["phase"] == "failed")
    })?;
    assert!(
        failed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("does not match its signature")),
        "{failed}"
    );
    assert_eq!(appliance.env()?, env_before);
    assert!(!work.join("reboots").exists());

    // A viewer is not offered the update form (and the API refused it above).
    let (_, _, page) = viewer.get(&format!("/nodes/{node}"))?;
    assert!(!page.contains("order-update"), "{page}");

    // The owner orders the intact image from the node page; the node installs it,
    // reports each step, and reboots into it. Meanwhile the console shows it updating.
    let browser = rakkr_hil_tests::browser::Browser::start(
        work,
        &server.url(""),
        rakkr_hil_tests::browser::Look::DESKTOP,
    )?;
    browser.log_in("olga", OPERATOR_PASSWORD)?;
    browser.goto(&format!("/nodes/{node}"))?;
    browser.wait_css("#order-update", Duration::from_secs(10))?;
    let offered = browser.inner_html("select[name=image]")?;
    assert!(
        offered.contains("rootfs-2.0.0.img") && offered.contains("rootfs-2.0.0-x.img"),
        "{offered}"
    );
    browser.js(
        "document.querySelector('select[name=image]').value = arguments[0];
         document.querySelector('#update-h').scrollIntoView();",
        vec![serde_json::json!("rootfs-2.0.0.img")],
    )?;
    browser.screenshot("node-update-form-1280-light")?;
    browser.click("#order-update")?;
    wait_for("the reboot", Duration::from_secs(60), || {
        std::fs::read_to_string(work.join("reboots"))
            .ok()
            .filter(|t| t.contains("reboot"))
    })?;
    let step = wait_for("rebooting reported", Duration::from_secs(10), || {
        update_of(&server, node).filter(|u| u["phase"] == "rebooting")
    })?;
    assert_eq!(step["version"], "2.0.0");
    assert_ne!(step["update_id"], answer["update_id"], "a new order");
    assert!(appliance.env_has("rakkr_trial=b") && appliance.env_has("rakkr_tries=1"));
    let good = std::fs::read(&image)?;
    assert_eq!(
        &std::fs::read(work.join("root-b"))?[..good.len()],
        &good[..]
    );

    let (status, _, page) = owner.get("/?state=updating")?;
    assert_eq!(status, 200);
    assert!(page.contains(&format!("data-node=\"{node}\"")), "{page}");
    assert!(page.contains(r#"<b id="count-updating">1</b>"#), "{page}");
    assert!(page.contains("rebooting 2.0.0"), "{page}");
    browser.goto("/?state=updating")?;
    browser.wait_css(
        &format!("tr[data-node={node}] .badge.updating"),
        Duration::from_secs(10),
    )?;
    assert!(!browser.overflows_horizontally()?);
    browser.screenshot("fleet-updating-1280-light")?;
    browser.goto(&format!("/nodes/{node}"))?;
    browser.wait_css("#update-step", Duration::from_secs(10))?;
    browser.screenshot("node-updating-1280-light")?;
    drop(browser);

    // The reboot: the bootloader takes the trial, the new system's agent commits it.
    drop(agent);
    appliance.bootloader_takes_trial()?;
    appliance.boot("b")?;
    let agent = Agent::start_for(work, &server, node, &appliance.config, &[])?;
    wait_for("committed reported", Duration::from_secs(30), || {
        update_of(&server, node).filter(|u| u["phase"] == "committed")
    })?;
    assert!(appliance.env_has("rakkr_default=b"));
    let (_, _, page) = owner.get("/?state=updating")?;
    assert!(page.contains(r#"<b id="count-updating">0</b>"#), "{page}");
    let (_, _, page) = owner.get(&format!("/nodes/{node}"))?;
    assert!(
        page.contains(r#"<dd id="update-step">committed 2.0.0</dd>"#),
        "{page}"
    );
    // The same order, still retained, is not carried out twice.
    agent
        .proc
        .wait_log("update committed", Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        std::fs::read_to_string(work.join("reboots"))?
            .lines()
            .count(),
        1
    );

    // The audit log has the order, by whom, and the node's download.
    let audit = server.get_json("/api/v1/audit")?;
    let records = audit["records"].as_array().cloned().unwrap_or_default();
    assert!(
        records.iter().any(
            |r| r["action"].as_str().is_some_and(|a| a.contains("/update"))
                && r["outcome"] == "allowed"
        ),
        "{audit}"
    );
    assert!(
        records.iter().any(|r| r["action"] == "image download"
            && r["actor"].as_str().is_some_and(|a| a.contains(node))),
        "{audit}"
    );
    drop(agent);
    Ok(())
}

/// `POST /nodes/{node}/update` as a console user (a session, no API token): the status.
fn order_as(server: &Server, user: &Operator, node: &str, image: &str) -> Result<u16> {
    let response = http_client()?
        .post(server.url(&format!("/api/v1/nodes/{node}/update")))
        .header("cookie", user.cookie().unwrap_or_default())
        .header("x-csrf-token", &user.csrf)
        .json(&serde_json::json!({ "image": image }))
        .send()?;
    Ok(response.status().as_u16())
}

#[test]
fn an_image_that_cannot_be_fetched_or_rebooted_into_is_reported_failed_and_nothing_boots_it()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let data = work.join("data");
    let server = Server::start(work, &data)?;
    let node = "upd-3";
    let appliance = Appliance::new(work, &server, node)?;
    appliance.release("3.0.0", 1_500_000, &data)?;
    let order = || {
        server.post(
            &format!("/api/v1/nodes/{node}/update"),
            &serde_json::json!({ "image": "rootfs-3.0.0.img" }),
        )
    };
    let env_before = appliance.env()?;

    // The node's idea of the server is wrong: the download fails, with the reason.
    let right = server.url("").trim_end_matches('/').to_owned();
    let port = free_port();
    appliance.reconfigure(&right, &format!("http://127.0.0.1:{port}"))?;
    let agent = Agent::start_for(work, &server, node, &appliance.config, &[])?;
    wait_for("node online", Duration::from_secs(20), || {
        (server.presence(node).as_deref() == Some("online")).then_some(())
    })?;
    let (code, first) = order()?;
    assert_eq!(code, 202, "{first}");
    let failed = wait_for("download failure", Duration::from_secs(30), || {
        update_of(&server, node).filter(|u| u["phase"] == "failed")
    })?;
    assert!(
        failed["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("127.0.0.1:{port}"))),
        "{failed}"
    );
    assert_eq!(appliance.env()?, env_before);
    drop(agent);

    // Now the download works but the reboot command fails: the image is unstaged.
    appliance.reconfigure(&format!("http://127.0.0.1:{port}"), &right)?;
    appliance.reconfigure(
        "[\"sh\", \"-c\", \"echo reboot",
        "[\"sh\", \"-c\", \"exit 3; echo reboot",
    )?;
    let agent = Agent::start_for(work, &server, node, &appliance.config, &[])?;
    // The old order, still retained, is not tried again after the restart…
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        update_of(&server, node).map(|u| u["update_id"].clone()),
        Some(first["update_id"].clone())
    );
    // …a new one is.
    let (code, second) = order()?;
    assert_eq!(code, 202, "{second}");
    let failed = wait_for("reboot failure", Duration::from_secs(60), || {
        update_of(&server, node)
            .filter(|u| u["phase"] == "failed" && u["update_id"] == second["update_id"])
    })?;
    let detail = failed["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("reboot command") && detail.contains("unstaged"),
        "{failed}"
    );
    assert!(appliance.env_has("rakkr_trial=") && appliance.env_has("rakkr_default=a"));
    let (_, status, _) = appliance.update(&["status"])?;
    assert!(
        status.contains("booted slot a; committed: slot a"),
        "{status}"
    );
    drop(agent);
    Ok(())
}

#[test]
fn an_order_for_an_offline_node_survives_a_server_restart_and_is_cleared_once_final() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let data = work.join("data");
    let server = Server::start(work, &data)?;
    let node = "upd-4";
    let appliance = Appliance::new(work, &server, node)?;
    // The node has been seen once, then goes away.
    let agent = Agent::start_for(work, &server, node, &appliance.config, &[])?;
    wait_for("node online", Duration::from_secs(20), || {
        (server.presence(node).as_deref() == Some("online")).then_some(())
    })?;
    drop(agent);
    appliance.release("4.0.0", 1_200_000, &data)?;
    let (code, answer) = server.post(
        &format!("/api/v1/nodes/{node}/update"),
        &serde_json::json!({ "image": "rootfs-4.0.0.img" }),
    )?;
    assert_eq!(code, 202, "{answer}");

    // The server restarts (its embedded broker forgets retained messages); the order
    // is kept in the store and reaches the node when it connects.
    let server = server.restart(work, false)?;
    let topic = format!("rakkr/v1/nodes/{node}/cmd/update");
    let retained =
        MqttWatch::of(&server, &topic)?.wait_json(&topic, Duration::from_secs(15), |_| true)?;
    assert_eq!(retained["update_id"], answer["update_id"], "{retained}");
    let agent = Agent::start_for(work, &server, node, &appliance.config, &[])?;
    wait_for("the reboot", Duration::from_secs(60), || {
        std::fs::read_to_string(work.join("reboots"))
            .ok()
            .filter(|t| t.contains("reboot"))
    })?;
    drop(agent);
    appliance.bootloader_takes_trial()?;
    appliance.boot("b")?;
    let agent = Agent::start_for(work, &server, node, &appliance.config, &[])?;
    let done = wait_for("committed", Duration::from_secs(30), || {
        update_of(&server, node).filter(|u| u["phase"] == "committed")
    })?;
    assert_eq!(done["update_id"], answer["update_id"]);

    // Final: the order is forgotten and its retained message cleared, so a node whose
    // state directory is wiped never sees it again.
    wait_for(
        "the retained order cleared",
        Duration::from_secs(15),
        || {
            let mut watch = MqttWatch::of(&server, &topic).ok()?;
            watch
                .wait_json(&topic, Duration::from_secs(2), |_| true)
                .is_err()
                .then_some(())
        },
    )?;
    drop(agent);
    Ok(())
}
