//! `cargo xtask`: the project's set-up, demo and test entry points.
//!
//! ```text
//! cargo xtask demo [ARGS…]      install what is missing, run `rakkr-server demo ARGS…`
//! cargo xtask test              install what is missing, then fmt, clippy, build, all tests
//! cargo xtask setup             only install missing system packages
//! cargo xtask update-htmx VER   re-vendor htmx from the npm package htmx.org@VER
//! ```
//!
//! System packages are installed with apt-get (as root, or through sudo) only
//! when missing; the lists are in [`packages`].

mod packages;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("demo") => {
            packages::ensure(packages::BUILD)?;
            let mut cmd = cargo();
            cmd.args(["run", "--package", "rakkr-server", "--", "demo"])
                .args(&args[1..]);
            run(&mut cmd)
        }
        Some("test") => test(),
        Some("setup") => packages::ensure(&[packages::BUILD, packages::TEST].concat()),
        Some("asyncapi") => {
            let path = root.join("docs/mqtt.md");
            let text = std::fs::read_to_string(&path)?;
            let updated =
                rakkr_protocol::asyncapi::render_into(&text).map_err(anyhow::Error::msg)?;
            std::fs::write(&path, updated)?;
            println!("wrote the AsyncAPI document into {}", path.display());
            Ok(())
        }
        Some("update-htmx") => match args.get(1) {
            Some(version) => update_htmx(&root, version),
            None => bail!("usage: cargo xtask update-htmx VERSION (e.g. 2.0.11)"),
        },
        _ => {
            eprintln!(
                "usage: cargo xtask <demo [ARGS…] | test | setup | asyncapi | update-htmx VERSION>\n\
                 \n  demo          run the fleet server with simulated appliances\
                 \n  test          the whole test suite, with formatting and lint checks\
                 \n  setup         install missing system packages\
                 \n  asyncapi      regenerate the AsyncAPI document in docs/mqtt.md\
                 \n  update-htmx   re-vendor htmx from npm"
            );
            bail!("no command given");
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn has_command(name: &str, arg: &str) -> bool {
    Command::new(name)
        .arg(arg)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The S3 server the delivery tests write to: s3s-fs checks SigV4
/// signatures, so wrong credentials fail as they would against a bucket.
/// Installed once into cargo's bin directory (newer versions need a newer
/// Rust than ours).
fn ensure_s3s_fs() -> Result<()> {
    let installed = std::env::var_os("HOME")
        .map(|h| std::path::Path::new(&h).join(".cargo/bin/s3s-fs"))
        .is_some_and(|p| p.exists());
    if installed || has_command("s3s-fs", "--help") {
        return Ok(());
    }
    run(cargo().args([
        "install",
        "s3s-fs@0.14.1",
        "--features",
        "binary",
        "--locked",
    ]))
}

fn test() -> Result<()> {
    packages::ensure(&[packages::BUILD, packages::TEST].concat())?;
    ensure_s3s_fs()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Scenario tests start the real binaries.
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    let workspace = if has_command("cargo-nextest", "--version")
        || has_command(&cargo_subcommand("nextest"), "--version")
    {
        run(cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"]))
    } else {
        eprintln!("xtask: cargo-nextest not found; using cargo test");
        run(cargo().args(["test", "--workspace", "--no-fail-fast"]))
    };
    // The vendored broker is outside the workspace (its dev-dependencies
    // cannot be tested from here); its own tests cover our patches to it.
    let vendored = run(cargo().args([
        "test",
        "--manifest-path",
        "vendor/rumqttd/Cargo.toml",
        "--locked",
        "--lib",
        "--target-dir",
        "target",
    ]));
    workspace.and(vendored)
}

fn cargo_subcommand(name: &str) -> String {
    format!("cargo-{name}")
}

/// Fetch `htmx.org@version` with npm, check it, and rewrite the pin file.
fn update_htmx(root: &Path, version: &str) -> Result<()> {
    use base64::Engine;
    use sha2::{Digest, Sha256, Sha512};

    if !version.starts_with("2.0.") {
        bail!("the console is written for htmx 2.0.x; {version} is another line");
    }
    let vendor = root.join("web-templates/assets/vendor");
    let tmp = std::env::temp_dir().join(format!("rakkr-htmx-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let out = Command::new("npm")
        .args(["pack", "--json", &format!("htmx.org@{version}")])
        .current_dir(&tmp)
        .output()
        .context("cannot run npm (install Node.js and npm)")?;
    if !out.status.success() {
        bail!("npm pack failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("npm pack --json output")?;
    let filename = info[0]["filename"]
        .as_str()
        .context("npm pack: no filename")?;
    let integrity = info[0]["integrity"]
        .as_str()
        .context("npm pack: no integrity")?
        .to_owned();
    let tarball = std::fs::read(tmp.join(filename))?;
    let computed = format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&tarball))
    );
    if computed != integrity {
        bail!("tarball integrity {computed} does not match npm's {integrity}");
    }
    run(Command::new("tar")
        .arg("xzf")
        .arg(tmp.join(filename))
        .current_dir(&tmp))?;
    let js = std::fs::read(tmp.join("package/dist/htmx.min.js"))
        .context("package has no dist/htmx.min.js")?;
    let sha256: String = Sha256::digest(&js)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    for entry in std::fs::read_dir(&vendor)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("htmx-") && name.ends_with(".min.js") {
            std::fs::remove_file(&path)?;
        }
    }
    let file = format!("htmx-{version}.min.js");
    std::fs::write(vendor.join(&file), &js)?;
    std::fs::copy(tmp.join("package/LICENSE"), vendor.join("htmx.LICENSE"))?;
    std::fs::write(
        vendor.join("htmx.toml"),
        format!(
            "# Pinned htmx build, embedded into the console and the appliance status page.\n\
             # Update with `cargo xtask update-htmx VERSION`, which takes dist/htmx.min.js from\n\
             # the npm package, checks the npm integrity value and rewrites this file.\n\
             # rakkr-web's build reads this file; its tests fail if the embedded file does\n\
             # not hash to `sha256`.\n\
             package = \"htmx.org\"\n\
             version = \"{version}\"\n\
             file = \"{file}\"\n\
             sha256 = \"{sha256}\"\n\
             npm_integrity = \"{integrity}\"\n\
             license = \"0BSD (htmx.LICENSE)\"\n"
        ),
    )?;
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("xtask: htmx {version} vendored, sha256 {sha256}");
    Ok(())
}
