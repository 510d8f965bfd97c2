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
            Access::Appliance => {
                // Appliances authenticate in the handler: nothing without a
                // node's credential (or, to enroll, a valid enrollment token),
                // and never with an operator's token.
                let owner = &tokens.iter().find(|(r, _)| *r == Role::Owner).unwrap().1;
                let url = server.url(&path);
                let attempts = [
                    ("no credential", client.request(method.clone(), &url)),
                    (
                        "a forged node credential",
                        client
                            .request(method.clone(), &url)
                            .basic_auth("node-x", Some("forged")),
                    ),
                    (
                        "an owner's API token",
                        client.request(method.clone(), &url).bearer_auth(owner),
                    ),
                ];
                for (what, attempt) in attempts {
                    let response = attempt.json(&serde_json::json!({})).send()?;
                    let code = response.status().as_u16();
                    let body = response.text()?;
                    let expected: &[u16] = if pattern == "/api/v1/enroll" {
                        &[400, 401, 403, 422]
                    } else {
                        &[401]
                    };
                    assert!(
                        expected.contains(&code),
                        "{method} {path} with {what}: {code} {body}"
                    );
                }
                guarded += 1;
                continue;
            }
            Access::Public => continue,
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

    // Over plain HTTP the cookie is HttpOnly and SameSite=Strict, not Secure
    // (a browser would drop it); every login gets a new session id, whatever
    // cookie the browser came with (no session fixation).
    let raw_login = |cookie: Option<&str>| -> Result<String> {
        let mut request = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?
            .post(server.url("/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string([
                ("name", "ann"),
                ("password", OPERATOR_PASSWORD),
            ])?);
        if let Some(c) = cookie {
            request = request.header("cookie", c);
        }
        let response = request.send()?;
        assert_eq!(response.status().as_u16(), 303);
        Ok(response.headers()["set-cookie"].to_str()?.to_owned())
    };
    let first = raw_login(None)?;
    for attribute in ["; HttpOnly", "; SameSite=Strict", "; Path=/"] {
        assert!(first.contains(attribute), "{attribute} missing: {first}");
    }
    assert!(!first.contains("Secure"), "{first}");
    let presented = first.split(';').next().unwrap_or_default().to_owned();
    let second = raw_login(Some(&presented))?;
    assert_ne!(
        second.split(';').next(),
        Some(presented.as_str()),
        "a login always starts a new session"
    );

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

#[test]
fn logging_out_everywhere_ends_every_session_of_the_account() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let mut laptop = server.operator("ann", "operator")?;
    let sign_in = || -> Result<Operator> {
        let (code, mut op) = Operator::login(&server, "ann", OPERATOR_PASSWORD)?;
        assert_eq!(code, 303);
        assert_eq!(op.get("/")?.0, 200);
        Ok(op)
    };
    let mut phone = sign_in()?;
    let mut kiosk = sign_in()?;

    // From her own account page, for all her browsers at once.
    let (code, _, page) = laptop.get("/account/password")?;
    assert_eq!(code, 200);
    assert!(page.contains("Log out everywhere"), "{page}");
    let (code, _, _) = laptop.post_form("/logout/everywhere", &[("csrf", "forged")])?;
    assert_eq!(code, 403, "a forged request is refused");
    assert_eq!(phone.get("/")?.0, 200, "and ends nothing");
    let csrf = laptop.csrf.clone();
    let (code, headers, _) = laptop.post_form("/logout/everywhere", &[("csrf", &csrf)])?;
    assert_eq!((code, &headers["location"]), (303, &"/login".parse()?));
    assert!(
        headers["set-cookie"].to_str()?.contains("Max-Age=0"),
        "this browser's cookie is cleared"
    );
    for op in [&mut laptop, &mut phone, &mut kiosk] {
        assert_eq!(op.get("/")?.0, 303, "every session ended");
    }
    let audit = server.get_json("/api/v1/audit/search?actor=user:ann&q=everywhere")?;
    let record = &audit["records"][0];
    assert_eq!(record["action"], "POST /logout/everywhere", "{audit}");
    assert_eq!(
        (&record["outcome"], &record["target"]),
        (&"allowed".into(), &"user:ann".into())
    );

    // The account itself is untouched: she signs in again.
    let mut phone = sign_in()?;
    let mut laptop = sign_in()?;

    // An owner ends them for her: from the users page, the CLI and the API.
    let mut admin = server.operator("root", "owner")?;
    let (_, _, users) = admin.get("/users")?;
    assert!(users.contains(r#"data-change="end-sessions""#), "{users}");
    let csrf = admin.csrf.clone();
    let (code, _, _) =
        admin.post_form("/users/ann", &[("csrf", &csrf), ("change", "end-sessions")])?;
    assert_eq!(code, 200);
    assert_eq!(phone.get("/")?.0, 303);
    assert_eq!(laptop.get("/")?.0, 303);
    assert_eq!(admin.get("/")?.0, 200, "the owner's own session lives on");

    let mut phone = sign_in()?;
    let data = server.data_dir.to_string_lossy().into_owned();
    let (ok, out, err) = cli(
        "rakkr-server",
        &["user", "end-sessions", "ann", "--data-dir", &data],
    )?;
    assert!(
        ok && out.contains("ann: role operator, enabled"),
        "{out}{err}"
    );
    assert_eq!(phone.get("/")?.0, 303);

    let mut phone = sign_in()?;
    let (ok, out, err) = cli(
        "rakkr-server",
        &[
            "api-token",
            "create",
            "--name",
            "accounts",
            "--role",
            "owner",
            "--data-dir",
            &data,
        ],
    )?;
    assert!(ok, "{err}");
    let owner_token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_default()
        .to_owned();
    let change_ann = |body: serde_json::Value| -> Result<(u16, String)> {
        let response = http_client()?
            .post(server.url("/api/v1/users/ann"))
            .bearer_auth(&owner_token)
            .json(&body)
            .send()?;
        Ok((response.status().as_u16(), response.text()?))
    };
    let (code, body) = change_ann(serde_json::json!({ "end_sessions": true }))?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(phone.get("/")?.0, 303);
    let (code, body) = change_ann(serde_json::json!({ "end_sessions": true, "disabled": true }))?;
    assert_eq!(code, 422, "one change at a time: {body}");
    // Each of the three is audited with the account as its target.
    let audit = server.get_json("/api/v1/audit/search?q=user:ann&limit=50")?;
    let actions: Vec<&str> = audit["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["target"] == "user:ann" && r["outcome"] == "allowed")
        .filter_map(|r| r["action"].as_str())
        .collect();
    for action in [
        "POST /logout/everywhere",
        "POST /users/{name}",
        "user end-sessions",
        "POST /api/v1/users/{name}",
    ] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    Ok(())
}

#[test]
fn every_api_error_is_problem_json() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let client = http_client()?;
    let token = |r: reqwest::blocking::RequestBuilder| r.bearer_auth(&server.api_token);
    let mut admin = server.operator("ada", "admin")?;
    let cookie = admin.cookie().unwrap_or_default().to_owned();
    let requests: Vec<(&str, reqwest::blocking::RequestBuilder, u16)> = vec![
        (
            "an unknown API route",
            token(client.get(server.url("/api/v1/no-such-thing"))),
            404,
        ),
        (
            "a query that does not parse",
            token(client.get(server.url("/api/v1/audit?limit=many"))),
            400,
        ),
        (
            "a node this server does not know",
            token(client.get(server.url("/api/v1/nodes/no-such-node"))),
            404,
        ),
        (
            "a node id that cannot be one",
            token(client.get(server.url("/api/v1/nodes/Not%20A%20Node/events"))),
            404,
        ),
        (
            "a method the route does not have",
            token(client.delete(server.url("/api/v1/nodes"))),
            405,
        ),
        (
            "a body that is not JSON",
            token(
                client
                    .post(server.url("/api/v1/jobs"))
                    .header("content-type", "application/json")
                    .body("{"),
            ),
            400,
        ),
        (
            "no credential",
            client.get(server.url("/api/v1/nodes")),
            401,
        ),
        (
            "a session without the CSRF token",
            client
                .post(server.url("/api/v1/jobs"))
                .header("cookie", &cookie)
                .json(&serde_json::json!({ "node": "n1" })),
            403,
        ),
    ];
    for (what, request, status) in requests {
        let response = request.send()?;
        let (code, headers) = (response.status().as_u16(), response.headers().clone());
        let body: serde_json::Value = response.json().unwrap_or_default();
        assert_eq!(code, status, "{what}: {body}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{what}: {body}"
        );
        assert_eq!(body["status"], status, "{what}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {body}"
        );
        if what.contains("CSRF") {
            assert!(
                body["detail"].as_str().is_some_and(|d| d.contains("CSRF")),
                "refused for the token, not the role: {body}"
            );
        }
    }
    // The console's own pages keep their HTML errors.
    let (code, headers, _) = admin.get("/no-such-page")?;
    assert_eq!(code, 404);
    assert!(headers["content-type"].to_str()?.starts_with("text/html"));
    Ok(())
}

/// Enrolls `node` and announces `status` for it over MQTT with its own
/// credential, as its agent would; waits until the server has it.
fn announce(
    server: &Server,
    node: &str,
    status: rakkr_protocol::payload::NodeStatus,
) -> Result<()> {
    let credential = server.credential_for(node)?;
    let mut opts = rumqttc::MqttOptions::new(node, "127.0.0.1", server.mqtt_port);
    opts.set_credentials(node, credential);
    let (client, mut connection) = rumqttc::Client::new(opts, 16);
    std::thread::spawn(move || for _ in connection.iter() {});
    client.publish(
        format!("{}/nodes/{node}/status", rakkr_protocol::topic::ROOT),
        rumqttc::QoS::AtLeastOnce,
        true,
        rakkr_protocol::Envelope::stamped(1, status).encode(),
    )?;
    wait_for("the node online", Duration::from_secs(20), || {
        (server.presence(node).as_deref() == Some("online")).then_some(())
    })?;
    Ok(())
}

#[test]
fn what_a_node_reports_about_itself_renders_as_text() -> Result<()> {
    use rakkr_protocol::payload::{BootSlot, Capabilities, NodeStatus};
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    // A node with a real credential (a compromised appliance, or a bug)
    // announces markup where its version and capabilities go.
    let node = "xss-1";
    let version = "<script>window.pwned=1</script>";
    let source = "<img src=x onerror=alert(1)>";
    let status = NodeStatus::Online {
        agent_version: version.into(),
        slot: BootSlot::A,
        capabilities: Capabilities {
            sources: vec![source.into()],
            codecs: vec!["fl\"ac' onmouseover='x".into()],
            ..synthetic_capabilities()
        },
        realtime: Default::default(),
    };
    announce(&server, node, status)?;
    let mut viewer = server.operator("vic", "viewer")?;
    for path in [format!("/nodes/{node}"), "/".to_owned()] {
        let (code, _, page) = viewer.get(&path)?;
        assert_eq!(code, 200, "{path}");
        assert!(!page.contains("<script>window.pwned"), "{path}: {page}");
        assert!(!page.contains("<img src=x"), "{path}: {page}");
    }
    let (_, _, page) = viewer.get(&format!("/nodes/{node}"))?;
    assert!(
        page.contains("&lt;script&gt;window.pwned=1&lt;/script&gt;")
            && page.contains("&lt;img src=x onerror=alert(1)&gt;")
            && page.contains("<dd>fl&quot;ac' onmouseover='x</dd>"),
        "shown, as text: {page}"
    );
    // The API hands the text back as it came.
    let nodes = server.nodes()?;
    let listed = nodes.iter().find(|n| n["id"] == node).expect("listed");
    assert_eq!(listed["details"]["agent_version"], version, "{listed}");
    let one = server.get_json(&format!("/api/v1/nodes/{node}"))?;
    assert_eq!(&one, listed, "one node is as in the list");
    Ok(())
}

/// Connects to the server's MQTT gate as `user`, does `then` once the
/// connection is up, and reads on until the gate closes it (or 10 s pass).
/// Whether the gate let it connect.
fn mqtt_session(
    server: &Server,
    user: &str,
    password: &str,
    then: impl FnOnce(&rumqttc::Client) -> Result<()>,
) -> Result<bool> {
    let mut opts = rumqttc::MqttOptions::new(user, "127.0.0.1", server.mqtt_port);
    opts.set_credentials(user, password);
    let (client, mut connection) = rumqttc::Client::new(opts, 16);
    let mut then = Some(then);
    let mut connected = false;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < until {
        match connection.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) => {
                connected = true;
                if let Some(then) = then.take() {
                    then(&client)?;
                }
            }
            Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
            Ok(Err(_)) | Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(connected)
}

#[test]
fn the_mqtt_gate_s_refusals_are_audited() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let credential = server.credential_for("mq-1")?;
    let ns = rakkr_protocol::topic::ROOT;

    assert!(!mqtt_session(
        &server,
        "mq-1",
        "not the credential",
        |_| Ok(())
    )?);
    let connected = mqtt_session(&server, "mq-1", &credential, |c| {
        let topic = format!("{ns}/nodes/mq-2/status");
        c.publish(topic, rumqttc::QoS::AtLeastOnce, false, b"{}".to_vec())?;
        Ok(())
    })?;
    assert!(connected, "its own credential lets it in");
    mqtt_session(&server, "mq-1", &credential, |c| {
        c.subscribe(format!("{ns}/nodes/mq-2/cmd/#"), rumqttc::QoS::AtLeastOnce)?;
        Ok(())
    })?;

    let refused = |actor: &str, action: &str| -> Result<Vec<serde_json::Value>> {
        let audit = server.get_json(&format!(
            "/api/v1/audit/search?actor={actor}&outcome=denied&q={}",
            action.replace(' ', "%20")
        ))?;
        Ok(audit["records"].as_array().cloned().unwrap_or_default())
    };
    let login = wait_for("the refused login audited", Duration::from_secs(10), || {
        refused("anonymous@127.0.0.1", "mqtt connect")
            .ok()
            .filter(|r| !r.is_empty())
    })?;
    assert!(
        login[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{login:?}"
    );
    assert_eq!(login[0]["target"], "node:mq-1", "the node it claimed to be");
    for action in ["mqtt publish", "mqtt subscribe"] {
        let records = wait_for(action, Duration::from_secs(10), || {
            refused("node:mq-1@127.0.0.1", action)
                .ok()
                .filter(|r| !r.is_empty())
        })?;
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0]["target"], "node:mq-1");
        assert!(
            records[0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("mq-2")),
            "{records:?}"
        );
    }
    assert!(server.metric("rakkr_gate_refused_publishes_total")? >= 1);
    Ok(())
}

#[test]
fn many_failed_logins_from_one_address_lock_the_address() -> Result<()> {
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    let mut zed = server.operator("zed", "viewer")?;
    // Four tries for each of five names: no account reaches its own limit,
    // but the address reaches its twenty.
    for i in 0..rakkr_server::auth::ADDRESS_FREE_FAILURES {
        let name = format!("guess-{}", i % 5);
        assert_eq!(Operator::login(&server, &name, "wrong")?.0, 401, "try {i}");
    }
    let (code, _) = Operator::login(&server, "zed", OPERATOR_PASSWORD)?;
    assert_eq!(
        code, 429,
        "the address is locked, even for a right password"
    );
    assert_eq!(zed.get("/")?.0, 200, "sessions already open go on");
    let audit = server.get_json("/api/v1/audit/search?q=login&outcome=denied&limit=50")?;
    let denied = audit["records"].as_array().map_or(0, Vec::len);
    assert!(
        denied > rakkr_server::auth::ADDRESS_FREE_FAILURES as usize,
        "every refused login audited: {denied}"
    );
    Ok(())
}

/// The route `path` (no query) is an instance of, for `method`.
fn route_of(method: &Method, path: &str) -> Option<(&'static str, Access)> {
    let segments: Vec<&str> = path.split('/').collect();
    rakkr_server::http::route_access()
        .into_iter()
        .filter(|(_, m, _)| m == method)
        .find(|(pattern, _, _)| {
            let parts: Vec<&str> = pattern.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| p.starts_with('{') || p == s)
        })
        .map(|(pattern, _, access)| (pattern, access))
}

/// The value of `attr` in a tag's text (what follows its name up to `>`).
fn attribute(head: &str, attr: &str) -> Option<String> {
    let at = head.find(&format!(" {attr}=\""))?;
    let value = head[at + attr.len() + 3..].split('"').next()?;
    Some(value.replace("&amp;", "&"))
}

/// The forms (method, action) and links (GET, href) on `page`.
fn targets(page: &str) -> Vec<(Method, String)> {
    let heads = |tag: &str| -> Vec<String> {
        page.split(tag)
            .skip(1)
            .filter_map(|part| part.split('>').next().map(|head| format!(" {head}")))
            .collect()
    };
    let forms = heads("<form ").into_iter().filter_map(|head| {
        let method = match attribute(&head, "method").as_deref() {
            Some("post") => Method::POST,
            _ => Method::GET,
        };
        Some((method, attribute(&head, "action")?))
    });
    let links = heads("<a ")
        .into_iter()
        .filter_map(|head| Some((Method::GET, attribute(&head, "href")?)));
    forms.chain(links).collect()
}

#[test]
fn no_page_offers_a_role_a_control_or_link_it_may_not_use() -> Result<()> {
    use rakkr_protocol::payload::{BootSlot, NodeStatus};
    let work = tempfile::tempdir()?;
    let server = Server::start(work.path(), &work.path().join("data"))?;
    announce(
        &server,
        "walk-1",
        NodeStatus::Online {
            agent_version: "0.1.0".into(),
            slot: BootSlot::A,
            capabilities: synthetic_capabilities(),
            realtime: Default::default(),
        },
    )?;
    // Every console page without a parameter, and the node's page.
    let pages: Vec<String> = rakkr_server::http::route_access()
        .into_iter()
        .filter(|(p, m, a)| {
            *m == Method::GET
                && !matches!(a, Access::Public | Access::Appliance)
                && !p.starts_with("/api/")
                && !p.starts_with("/console/")
                && *p != "/metrics"
                && !p.contains('{')
        })
        .map(|(p, _, _)| p.to_owned())
        .chain(["/nodes/walk-1".to_owned()])
        .collect();
    assert!(pages.len() >= 10, "{pages:?}");
    let mut checked = 0;
    for &role in Role::ALL {
        let mut op = server.operator(&format!("walk-{}", role.as_str()), role.as_str())?;
        for page in &pages {
            let (_, access) = route_of(&Method::GET, page).expect("a route");
            if let Access::Operator(p) = access
                && !role.allows(p)
            {
                continue;
            }
            let (code, _, html) = op.get(page)?;
            assert_eq!(code, 200, "{page} as {role}");
            for (method, target) in targets(&html) {
                let path = target.split(['?', '#']).next().unwrap_or_default();
                if !path.starts_with('/') {
                    continue;
                }
                let Some((pattern, access)) = route_of(&method, path) else {
                    panic!("{page} as {role}: {method} {path} is no route");
                };
                checked += 1;
                if let Access::Operator(p) = access {
                    assert!(
                        role.allows(p),
                        "{page} offers a {role} {method} {pattern}, which needs {p}"
                    );
                }
            }
        }
    }
    assert!(checked > 100, "{checked} controls and links checked");
    Ok(())
}

#[test]
fn sessions_end_after_an_idle_hour_and_after_twelve_hours_in_use() -> Result<()> {
    let work = tempfile::tempdir()?;
    // The server's wall clock is read from a file the test moves forward.
    let offset = work.path().join("faketime-offset");
    std::fs::write(&offset, "+0\n")?;
    let lib = libfaketime()?;
    let server = Server::start_with_env(
        work.path(),
        &work.path().join("data"),
        &[
            ("LD_PRELOAD", lib.to_str().unwrap_or_default()),
            (
                "FAKETIME_TIMESTAMP_FILE",
                offset.to_str().unwrap_or_default(),
            ),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )?;
    let set_clock = |minutes: u64| std::fs::write(&offset, format!("+{minutes}m\n"));

    // Idle: 59 minutes is fine, 61 more minutes is not.
    let mut ann = server.operator("ann", "operator")?;
    set_clock(59)?;
    assert_eq!(ann.get("/")?.0, 200, "59 minutes idle");
    set_clock(59 + 61)?;
    let (code, headers, _) = ann.get("/")?;
    assert_eq!(code, 303, "61 minutes idle");
    assert!(headers["location"].to_str()?.starts_with("/login"));

    // In use: a request every 50 minutes keeps it for twelve hours, no more.
    let start = 59 + 61;
    let (code, mut ann) = Operator::login(&server, "ann", OPERATOR_PASSWORD)?;
    assert_eq!(code, 303);
    let mut minutes = 0;
    while minutes + 50 < 12 * 60 {
        minutes += 50;
        set_clock(start + minutes)?;
        assert_eq!(ann.get("/")?.0, 200, "{minutes} minutes in, in use");
    }
    set_clock(start + 12 * 60 + 1)?;
    assert_eq!(ann.get("/")?.0, 303, "past twelve hours, however busy");
    // An orderly stop lets libfaketime remove its shared-memory segments.
    server.stop(false)?;
    Ok(())
}
