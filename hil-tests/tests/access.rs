//! Access control, walked over the server's whole route table
//! (`rakkr_server::http::route_access`): every route that needs a signed-in
//! operator refuses an anonymous request and a role without its permission,
//! and every state-changing one refuses a request without the session's CSRF
//! token. Also the login itself: wrong passwords, lockout, the forced
//! password change, logout.

use std::time::Duration;

use anyhow::Result;
use axum::http::Method;
use rakkr_hil_tests::*;
use rakkr_protocol::access::Role;
use rakkr_server::login::Access;

/// A concrete path for a route pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn request(
    op: &mut Operator,
    method: &Method,
    path: &str,
    csrf: Option<&str>,
) -> Result<(u16, String, String)> {
    let (code, headers, body) = if *method == Method::GET {
        op.get(path)?
    } else {
        let fields: Vec<(&str, &str)> = csrf.map(|c| vec![("csrf", c)]).unwrap_or_default();
        op.post_form(path, &fields)?
    };
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((code, location, body))
}

#[test]
fn every_guarded_route_refuses_anonymous_unpermitted_and_forged_requests() -> Result<()> {
    let work = tempfile::tempdir()?;
    // Every anonymous refusal of the walk is checked in the audit log: more
    // than the default budget of 60 per address and minute records one by one.
    let server = Server::start_with_env(
        work.path(),
        &work.path().join("data"),
        &[("RAKKR_SERVER_HTTP__ANONYMOUS_AUDIT_PER_MINUTE", "10000")],
    )?;
    // One signed-in session per role.
    let mut sessions: Vec<(Role, Operator)> = Vec::new();
    for &role in Role::ALL {
        let name = format!("walk-{}", role.as_str());
        sessions.push((role, server.operator(&name, role.as_str())?));
    }
    // One API token per role.
    let data = server.data_dir.to_string_lossy().into_owned();
    let mut tokens: Vec<(Role, String)> = Vec::new();
    for &role in Role::ALL {
        let (ok, out, err) = cli(
            "rakkr-server",
            &[
                "api-token",
                "create",
                "--name",
                "walk",
                "--role",
                role.as_str(),
                "--data-dir",
                &data,
            ],
        )?;
        assert!(ok, "{err}");
        let token = out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap();
        tokens.push((role, token.to_owned()));
    }
    let client = http_client()?;
    let with_token = |method: &Method, path: &str, token: &str| -> Result<(u16, String)> {
        let url = server.url(path);
        let request = if *method == Method::GET {
            client.get(url)
        } else {
            client.post(url).json(&serde_json::json!({}))
        };
        let response = request.bearer_auth(token).send()?;
        let code = response.status().as_u16();
        Ok((code, response.text()?))
    };
    let mut anonymous = Operator::anonymous(&server);
    let mut guarded = 0;
    for (pattern, method, access) in rakkr_server::http::route_access() {
        let path = concrete(pattern);
        let needs = match access {
            Access::SignedIn => None,
            Access::Operator(p) => Some(p),
            Access::Public | Access::Appliance => continue,
        };
        guarded += 1;
        // Anonymous: sent to the login page (or 401 for the API).
        let (code, location, _) = request(&mut anonymous, &method, &path, None)?;
        let api = path.starts_with("/api/") || path == "/metrics";
        if api {
            assert_eq!(code, 401, "{method} {path}");
            // API tokens: a forged one is refused, a role without the
            // permission is forbidden, one with it gets through.
            let (code, _) = with_token(&method, &path, "rkt1.0123456789abcdef.forged")?;
            assert_eq!(code, 401, "{method} {path} with a forged token");
            for (role, token) in &tokens {
                let (code, body) = with_token(&method, &path, token)?;
                match needs {
                    Some(p) if !role.allows(p) => {
                        assert_eq!(code, 403, "{method} {path} with a {role} token: {body}")
                    }
                    // Through to the handler, which may still refuse the
                    // dummy request on its own grounds.
                    _ => assert!(
                        code != 401 && !(code == 403 && body.contains("does not allow")),
                        "{method} {path} with a {role} token: {code} {body}"
                    ),
                }
            }
        } else {
            assert_eq!(code, 303, "{method} {path} anonymous");
            assert!(
                location.starts_with("/login"),
                "{method} {path} → {location}"
            );
        }
        for (role, op) in &mut sessions {
            let allowed = needs.is_none_or(|p| role.allows(p));
            if !allowed {
                let csrf = op.csrf.clone();
                let (code, _, body) = request(op, &method, &path, Some(&csrf))?;
                assert_eq!(code, 403, "{method} {path} as {role}: {body}");
                assert!(body.contains("does not allow"), "{body}");
            } else if method != Method::GET {
                // Allowed, but without the session's CSRF token: refused.
                let (code, _, body) = request(op, &method, &path, None)?;
                assert_eq!(code, 403, "{method} {path} as {role} without CSRF");
                assert!(body.contains("CSRF"), "{body}");
                let (code, _, _) = request(op, &method, &path, Some("forged"))?;
                assert_eq!(code, 403, "{method} {path} as {role} with a forged token");
            }
        }
    }
    assert!(guarded >= 5, "the walk found {guarded} guarded routes");

    // Every refusal above is in the audit log, whose chain holds.
    let owner = &tokens.iter().find(|(r, _)| *r == Role::Owner).unwrap().1;
    let mut records: Vec<serde_json::Value> = Vec::new();
    loop {
        let after = records.last().map_or(0, |r| r["seq"].as_u64().unwrap());
        let (code, body) = with_token(
            &Method::GET,
            &format!("/api/v1/audit?after={after}&limit=1000"),
            owner,
        )?;
        assert_eq!(code, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(page["chain"], "ok", "{body}");
        let page = page["records"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        records.extend(page);
    }
    for (pattern, method, access) in rakkr_server::http::route_access() {
        if matches!(access, Access::Public | Access::Appliance) {
            continue;
        }
        let action = format!("{method} {pattern}");
        let denied = |actor: &str| {
            records.iter().any(|r| {
                r["action"] == action.as_str()
                    && r["outcome"] == "denied"
                    && r["actor"].as_str().unwrap_or("").starts_with(actor)
            })
        };
        assert!(
            denied("anonymous@"),
            "no audit record of the anonymous {action}"
        );
        if let Access::Operator(p) = access
            && Role::ALL.iter().any(|r| !r.allows(p))
        {
            assert!(
                denied("user:walk-"),
                "no audit record of a session refused {action}"
            );
        }
    }
    assert!(
        records
            .iter()
            .any(|r| r["action"] == "login" && r["outcome"] == "allowed"),
        "logins are audited"
    );
    let csv = client
        .get(server.url("/api/v1/audit?format=csv&limit=5"))
        .bearer_auth(owner)
        .send()?;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(csv.headers()["x-audit-chain"], "ok");
    assert!(csv.text()?.starts_with(
        "seq,at_ms,actor,permission,action,target,outcome,reason,before,after,sha256\r\n"
    ));
    Ok(())
}

#[test]
fn logins_are_limited_forced_to_a_new_password_and_end_at_logout() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let mut op = server.operator("ann", "operator")?;
    let (code, _, page) = op.get("/")?;
    assert_eq!(code, 200);
    assert!(page.contains("ann (operator)"), "{page}");

    // The old one-time password no longer works; the chosen one does.
    let (code, _) = Operator::login(&server, "ann", "not it")?;
    assert_eq!(code, 401);
    let (code, mut again) = Operator::login(&server, "ann", OPERATOR_PASSWORD)?;
    assert_eq!(code, 303);
    assert_eq!(again.get("/")?.0, 200);

    // Logout ends that session only for this browser.
    let csrf = op.csrf.clone();
    let (code, _, _) = op.post_form("/logout", &[("csrf", &csrf)])?;
    assert_eq!(code, 303);
    assert_eq!(op.get("/")?.0, 303, "logged out");
    assert_eq!(again.get("/")?.0, 200, "the other session lives on");

    // Five failures in a row lock the account, even for the right password.
    for _ in 0..5 {
        assert_eq!(Operator::login(&server, "ann", "guess")?.0, 401);
    }
    let (code, _) = Operator::login(&server, "ann", OPERATOR_PASSWORD)?;
    assert_eq!(code, 429);

    // A disabled account's sessions end at once.
    let data = server.data_dir.to_string_lossy().into_owned();
    let (ok, _, err) = cli(
        "rakkr-server",
        &["user", "disable", "ann", "--data-dir", &data],
    )?;
    assert!(ok, "{err}");
    assert_eq!(again.get("/")?.0, 303);

    // A fresh account must choose a password before anything else.
    let (ok, out, _) = cli(
        "rakkr-server",
        &["user", "add", "bo", "--role", "viewer", "--data-dir", &data],
    )?;
    assert!(ok);
    let otp = out
        .lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .unwrap();
    let (code, mut bo) = Operator::login(&server, "bo", otp)?;
    assert_eq!(code, 303);
    let (code, headers, _) = bo.get("/")?;
    assert_eq!(code, 303);
    assert_eq!(headers["location"], "/account/password");
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}
