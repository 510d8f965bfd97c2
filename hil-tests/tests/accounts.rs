//! Operator accounts from the machine the server runs on: the first start
//! creates an owner with a one-time password, handed over once (printed on a
//! terminal; here, as under a service manager, in an owner-only file);
//! `rakkr-server user …` manages accounts through the server's local admin
//! socket.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{Result, bail};
use rakkr_hil_tests::*;

const SOON: Duration = Duration::from_secs(20);

/// `rakkr-server user ARGS… --data-dir DATA`.
fn user(data: &std::path::Path, args: &[&str]) -> Result<(bool, String, String)> {
    let mut all = vec!["user"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data-dir", data.to_str().unwrap()]);
    cli("rakkr-server", &all)
}

#[test]
fn the_first_start_creates_an_owner_once_and_the_cli_manages_accounts() -> Result<()> {
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let server = Server::start(work.path(), &data)?;
    // Not on a terminal (a service): the password goes to an owner-only file,
    // which the log names; it is never in the log itself.
    let file = data.join("initial-owner-password");
    let owner_password = wait_for("the owner's one-time password file", SOON, || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|p| p.ends_with('\n'))
    })?
    .trim()
    .to_owned();
    assert_eq!(owner_password.len(), 23, "{owner_password:?}");
    assert_eq!(
        std::fs::metadata(&file)?.permissions().mode() & 0o777,
        0o600
    );
    // The file is written before the line that points to it is logged.
    server.proc.wait_log("initial-owner-password", SOON)?;
    let log = server.proc.stderr_text();
    assert!(
        !log.contains(&owner_password),
        "the password is not in the log"
    );
    assert!(!server.proc.stdout_text().contains(&owner_password));
    assert_eq!(
        std::fs::metadata(data.join("rakkr.redb"))?
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "the store is owner-only"
    );

    let socket = data.join("admin.sock");
    assert_eq!(
        std::fs::metadata(&socket)?.permissions().mode() & 0o777,
        0o600
    );

    let (ok, out, err) = user(&data, &["list"])?;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("owner") && l.contains(" owner ") && l.contains("one-time")),
        "{out}"
    );

    let (ok, out, err) = user(&data, &["add", "bob", "--role", "viewer"])?;
    assert!(ok, "{err}");
    assert!(out.contains("bob: role viewer, enabled"), "{out}");
    let bob_password = out
        .lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .expect("bob's password");
    assert_ne!(bob_password, owner_password);

    // Refusals are clear and change nothing.
    let (ok, _, err) = user(&data, &["add", "bob", "--role", "admin"])?;
    assert!(!ok && err.contains("user bob exists"), "{err}");
    let (ok, _, err) = user(&data, &["add", "carol", "--role", "superuser"])?;
    assert!(
        !ok && err.contains("unknown role \"superuser\"") && err.contains("auditor"),
        "{err}"
    );
    let (ok, _, err) = user(&data, &["add", "Bad Name", "--role", "viewer"])?;
    assert!(!ok && err.contains("not a valid user name"), "{err}");
    let (ok, _, err) = user(&data, &["disable", "owner"])?;
    assert!(!ok && err.contains("last enabled owner"), "{err}");
    let (ok, _, err) = user(&data, &["disable", "nobody"])?;
    assert!(!ok && err.contains("no user \"nobody\""), "{err}");

    let (ok, out, _) = user(&data, &["role", "bob", "admin"])?;
    assert!(ok && out.contains("bob: role admin, enabled"), "{out}");
    let (ok, out, _) = user(&data, &["reset-password", "bob"])?;
    let reset = out
        .lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .unwrap_or_default();
    assert!(ok && !reset.is_empty() && reset != bob_password, "{out}");
    let (ok, out, _) = user(&data, &["disable", "bob"])?;
    assert!(ok && out.contains("bob: role admin, disabled"), "{out}");

    // API tokens: shown once, listed without secrets, revocable.
    let token = |args: &[&str]| {
        let mut all = vec!["api-token"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data-dir", data.to_str().unwrap()]);
        cli("rakkr-server", &all)
    };
    let (ok, out, err) = token(&["create", "--name", "prometheus", "--role", "viewer"])?;
    assert!(ok, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("the token, once")
        .to_owned();
    assert!(secret.starts_with("rkt1."), "{secret}");
    let id = secret.split('.').nth(1).unwrap().to_owned();
    let (ok, out, _) = token(&["list"])?;
    assert!(
        ok && out.contains(&id)
            && out.contains("prometheus")
            && out.contains("valid until revoked"),
        "{out}"
    );
    assert!(
        !out.contains(secret.rsplit('.').next().unwrap()),
        "no secret in the list"
    );
    let (ok, _, err) = token(&["create", "--name", "x", "--role", "root"])?;
    assert!(!ok && err.contains("unknown role"), "{err}");
    let (ok, out, _) = token(&["revoke", &id])?;
    assert!(ok && out.contains("revoked"), "{out}");
    let (ok, _, err) = token(&["revoke", "0000000000000000"])?;
    assert!(!ok && err.contains("no API token"), "{err}");

    // A restart keeps the accounts and creates no second owner.
    std::fs::remove_file(&file)?;
    let mut server = server.restart(work.path(), false)?;
    std::thread::sleep(Duration::from_millis(300));
    assert!(!file.exists(), "no second owner, no second password");
    assert!(
        server
            .proc
            .stderr_text()
            .contains("still has its one-time password"),
        "a hint while the owner has not chosen a password"
    );
    let (ok, out, err) = user(&data, &["list"])?;
    assert!(ok, "{err}");
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["bob", "owner"], "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("bob") && l.contains("disabled")),
        "{out}"
    );

    // Without a server the command says what is wrong.
    server.proc.signal("TERM")?;
    server.proc.wait_exit(SOON)?;
    let (ok, _, err) = user(&data, &["list"])?;
    if ok || !err.contains("cannot reach the server's admin socket") {
        bail!("expected a clear refusal without a server, got: {err}");
    }
    Ok(())
}
