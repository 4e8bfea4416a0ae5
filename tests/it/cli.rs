//! The `otadepot` binary: help, schema, bad config, migrate, token issue,
//! and graceful shutdown on SIGTERM.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{JWT_SECRET, binary, fresh_database_url};

/// The binary with an isolated config: its own data dir and database.
async fn otadepot(dir: &std::path::Path) -> Command {
    let mut command = Command::new(binary());
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OTADEPOT_DATA_DIR", dir)
        .env("OTADEPOT_DATABASE__URL", fresh_database_url(dir).await)
        .env("OTADEPOT_AUTH__JWT_SECRET", JWT_SECRET);
    command
}

#[tokio::test]
async fn help_is_there_for_every_command() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["schema", "--help"],
        &["token", "issue", "--help"],
        &["packages", "reindex", "--help"],
        &["devices", "import", "--help"],
        &["audit", "export", "--help"],
        &["audit", "verify", "--help"],
        &["scanner", "check", "--help"],
    ] {
        let output = Command::new(binary()).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage"), "{args:?}");
    }
}

#[tokio::test]
async fn schema_prints_the_committed_sdl() {
    let output = Command::new(binary()).arg("schema").output().unwrap();
    assert!(output.status.success());
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), committed);
}

#[tokio::test]
async fn bad_config_exits_non_zero_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // (environment, config file, the key the error must name)
    type Case = (Vec<(&'static str, &'static str)>, Option<&'static str>, &'static str);
    let cases: Vec<Case> = vec![
        (vec![("OTADEPOT_LISTEN", "not-an-address")], None, "listen"),
        (vec![("OTADEPOT_DATABASE__URL", "mysql://x")], None, "database.url"),
        (vec![("OTADEPOT_SCANNER__CLAMD", "ftp://x")], None, "scanner.clamd"),
        (vec![("OTADEPOT_HTTP__SHUTDOWN_GRACE", "soon")], None, "shutdown_grace"),
        (vec![], Some("lisen = \"127.0.0.1:1\"\n"), "lisen"),
        (vec![], Some("[database]\nmax_connections = \"many\"\n"), "max_connections"),
        (vec![], Some("[auth]\njwt_secret = \"short\"\n"), "jwt_secret"),
        (vec![], Some("[http]\ncors_allowed_origins = [\"https://a.example/path\"]\n"), "cors_allowed_origins"),
        (vec![], Some("this is not toml"), "TOML"),
    ];
    for (env, file, key) in cases {
        let mut command = Command::new(binary());
        command.current_dir(dir.path()).env_clear().arg("serve");
        for (k, v) in &env {
            command.env(k, v);
        }
        if let Some(contents) = file {
            let path = dir.path().join("bad.toml");
            std::fs::write(&path, contents).unwrap();
            command.arg("--config").arg(&path);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} {file:?} should fail");
        assert!(
            stderr.to_lowercase().contains(&key.to_lowercase()),
            "{env:?} {file:?}: stderr does not name {key}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let missing = Command::new(binary()).args(["serve", "--config", "/nonexistent/otadepot.toml"]).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}

#[tokio::test]
async fn migrate_up_down_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let run = |args: &[&str]| {
        let output = Command::new(binary())
            .current_dir(dir.path())
            .env("OTADEPOT_DATA_DIR", dir.path())
            .env("OTADEPOT_DATABASE__URL", &url)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    run(&["migrate", "up"]);
    let status = run(&["migrate", "status"]);
    assert!(status.lines().count() >= 3, "{status}");
    assert!(status.lines().all(|l| l.starts_with("applied")), "{status}");
    run(&["migrate", "down", "--steps", "1"]);
    let status = run(&["migrate", "status"]);
    assert!(status.lines().last().unwrap().starts_with("pending"), "{status}");
    run(&["migrate"]);
    let status = run(&["migrate", "status"]);
    assert!(status.lines().all(|l| l.starts_with("applied")), "{status}");
}

#[tokio::test]
async fn token_issue_mints_a_working_token_and_refuses_unknown_roles() {
    let dir = tempfile::tempdir().unwrap();
    let output = otadepot(dir.path())
        .await
        .args(["token", "issue", "--subject", "ops@example.com", "--role", "admin", "--ttl", "2h"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["otadepot"]);
    let data = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "ops@example.com");
    assert_eq!(data.claims["roles"], json!(["admin"]));
    let lifetime = data.claims["exp"].as_i64().unwrap() - data.claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 7200);

    let output =
        otadepot(dir.path()).await.args(["token", "issue", "--subject", "x", "--role", "superuser"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown role(s): superuser"));
    let output = otadepot(dir.path()).await.args(["token", "issue", "--subject", "x"]).output().unwrap();
    assert!(!output.status.success(), "a role is required");
}

/// Start `otadepot serve` on a free port and wait until it answers.
async fn spawn_server(dir: &std::path::Path, extra: &[(&str, &str)]) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = otadepot(dir).await;
    command
        .env("OTADEPOT_LISTEN", format!("127.0.0.1:{port}"))
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        command.env(k, v);
    }
    let child = command.spawn().unwrap();
    let base = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&base).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, base)
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_server(dir.path(), &[("OTADEPOT_LOG_FORMAT", "json")]).await;

    // A request whose body is still arriving when SIGTERM comes.
    let body = json!({ "query": "{ __typename }" }).to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nx-request-id: in-flight-1\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body.as_bytes()[..5]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&body.as_bytes()[5..]).unwrap();
    let mut response = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "in-flight request completed: {response}");
    assert!(response.contains("\"__typename\":\"Query\""), "{response}");

    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    // JSON logs, with the request id on the request's lines.
    let lines: Vec<Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "JSON log lines: {logs}");
    assert!(
        lines.iter().any(|l| l["span"]["request_id"] == "in-flight-1"),
        "request id in the request's log lines: {logs}"
    );
    assert!(!logs.contains(JWT_SECRET), "no secret in the logs");
}

#[tokio::test]
async fn serve_says_at_start_that_clamd_has_test_signatures_only() {
    let Some(socket) = crate::scan::clamd() else { return };
    let clamd_log = std::env::var("OTADEPOT_TEST_CLAMD_LOG").expect("scripts/test sets OTADEPOT_TEST_CLAMD_LOG");
    let dir = tempfile::tempdir().unwrap();
    let clamd = format!("unix:{socket}");
    let (mut child, _) = spawn_server(
        dir.path(),
        &[
            ("OTADEPOT_LOG_FORMAT", "json"),
            ("OTADEPOT_SCANNER__CLAMD", &clamd),
            ("OTADEPOT_SCANNER__CLAMD_LOG", &clamd_log),
        ],
    )
    .await;
    // Read the log as it comes, up to clamd's line.
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut logged = Vec::new();
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = seen.recv_timeout(left) else { panic!("no clamd line at start: {logged:#?}") };
        let Ok(value) = serde_json::from_str::<Value>(&line) else { continue };
        if value["clamd"] == clamd.as_str() {
            break value;
        }
        logged.push(value);
    };
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["warning"], "test_signatures_only", "{line}");
    assert_eq!(line["signatures"], 3, "what tests/fixtures/clamav holds: {line}");
    assert!(line["version"].as_str().unwrap().starts_with("ClamAV 1."), "{line}");
    assert!(line["message"].as_str().unwrap().contains("REAL MALWARE WILL NOT BE DETECTED"), "{line}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
}

/// Text logs without colour codes.
fn plain(logs: &str) -> String {
    let mut out = String::with_capacity(logs.len());
    let mut chars = logs.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn request_lines_stand_alone_and_idle_polls_log_at_debug() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_server(
        dir.path(),
        &[
            ("NO_COLOR", "1"),
            ("OTADEPOT_SCANNER__MODE", "disabled"),
            ("OTADEPOT_JOBS__POLL_INTERVAL", "50ms"),
            ("OTADEPOT_DEPLOYMENTS__RECONCILE_INTERVAL", "100ms"),
        ],
    )
    .await;
    let mut auth = otadepot::config::Config::default().auth;
    auth.jwt_secret = otadepot::config::Secret::new(JWT_SECRET);
    let token = otadepot::auth::jwt::JwtAuth::from_config(&auth, dir.path())
        .unwrap()
        .issue("logs", &["admin".to_owned()], Duration::from_secs(600))
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let gql = |query: &'static str, variables: Value| {
        let request = client
            .post(format!("{base}/graphql"))
            .bearer_auth(&token)
            .json(&json!({"query": query, "variables": variables}));
        async move {
            let body: Value = request.send().await.unwrap().json().await.unwrap();
            assert!(body.get("errors").is_none(), "{body}");
            body["data"].clone()
        }
    };
    gql("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({})).await;
    let secret = gql("mutation { registerDevice(input: {endpointId: \"d1\", model: \"X100\"}) { secret } }", json!({}))
        .await["registerDevice"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let form = gql(
        "mutation { createContent(content: {name: \"fw\", content_type: \"x\", type: \"firmware\", length: 2}) { id url } }",
        json!({}),
    )
    .await["createContent"]
    .clone();
    client.put(form["url"].as_str().unwrap()).body("fw").send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gql("query($id: ID!) { content(id: $id) { state } }", json!({"id": form["id"]})).await["content"]["state"]
        != "PROMOTED"
    {
        assert!(Instant::now() < deadline, "not promoted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let package = gql(
        "mutation($f: ID!) { createSoftwarePackage(input: {name: \"fw\", version: \"2.0.0\", type: \"URL_LIST\", models: [\"X100\"], files: [$f]}) { package { id } } }",
        json!({"f": form["id"]}),
    )
    .await["createSoftwarePackage"]["package"]["id"]
    .clone();
    // Polls and reports while the reconciler's jobs run.
    gql(
        "mutation($p: ID!) { applyPackage(input: {package: $p, devices: [\"d1\"]}) { deployment { id } } }",
        json!({"p": package}),
    )
    .await;
    let poll = |etag: Option<String>| {
        let mut request = client.get(format!("{base}/device/v1/poll")).bearer_auth(&secret);
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    let mut update = Value::Null;
    let mut etag = None;
    for _ in 0..200 {
        let response = poll(None).await.unwrap();
        etag = response.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
        if response.status() == 200 {
            update = response.json::<Value>().await.unwrap()["update"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = update["id"].as_str().expect("an update").to_owned();
    for status in ["ACKNOWLEDGED", "DOWNLOADING", "DOWNLOADED", "INSTALLING"] {
        let report = client
            .post(format!("{base}/device/v1/updates/{id}/status"))
            .bearer_auth(&secret)
            .json(&json!({"status": status}))
            .send();
        let (report, unchanged) = tokio::join!(report, poll(etag.clone()));
        assert_eq!(report.unwrap().status(), 200);
        unchanged.unwrap();
        for _ in 0..5 {
            let response = poll(None).await.unwrap();
            let fresh = response.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(poll(fresh.clone()).await.unwrap().status(), 304);
            etag = fresh;
        }
    }
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("http_requests_total") && l.contains("status=\"304\"")),
        "idle polls are counted: {metrics}"
    );

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let mut logs = String::new();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    let logs = plain(&logs);
    let requests: Vec<&str> = logs.lines().filter(|l| l.contains("request{")).collect();
    assert!(requests.iter().any(|l| l.contains("status=200")), "requests are logged: {logs}");
    let nested: Vec<&&str> = requests.iter().filter(|l| l.contains("job{")).collect();
    assert!(nested.is_empty(), "request lines inside a job's span: {nested:#?}");
    let idle: Vec<&&str> = requests.iter().filter(|l| l.contains("status=304") || l.contains("status=204")).collect();
    assert!(idle.is_empty(), "idle polls logged at INFO: {idle:#?}");
}

#[tokio::test]
async fn devices_import_registers_a_fleet_from_csv_and_writes_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    let run = |args: &[&str]| {
        Command::new(binary())
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("OTADEPOT_DATA_DIR", dir.path())
            .env("OTADEPOT_DATABASE__URL", &url)
            .env("OTADEPOT_AUTH__JWT_SECRET", JWT_SECRET)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["migrate", "up"]).status.success());
    let db = sea_orm::Database::connect(&url).await.unwrap();
    let now = chrono::Utc::now();
    sea_orm::ActiveModelTrait::insert(
        entity::device_model::ActiveModel {
            id: sea_orm::Set(uuid::Uuid::now_v7()),
            name: sea_orm::Set("X100".into()),
            manufacturer: sea_orm::Set(None),
            description: sea_orm::Set(None),
            created_by: sea_orm::Set("test".into()),
            created_at: sea_orm::Set(now),
            updated_at: sea_orm::Set(now),
        },
        &db,
    )
    .await
    .unwrap();

    let mut csv = String::from("endpoint_id,model,serial,gateway,attr.region\n");
    csv.push_str("gw-0000,X100,SN-0,,eu\n");
    for i in 1..1000 {
        csv.push_str(&format!(
            "dev-{i:04},X100,SN-{i},{},{}\n",
            if i % 10 == 0 { "gw-0000" } else { "" },
            if i % 2 == 0 { "eu" } else { "us" }
        ));
    }
    std::fs::write(dir.path().join("fleet.csv"), csv).unwrap();
    let output = run(&["devices", "import", "fleet.csv", "--secrets-out", "secrets.csv", "--batch", "300"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("imported 1000 device(s)"));
    let secrets = std::fs::read_to_string(dir.path().join("secrets.csv")).unwrap();
    assert_eq!(secrets.lines().count(), 1001);
    assert!(secrets.lines().nth(1).unwrap().starts_with("gw-0000,"));
    assert!(secrets.lines().skip(1).all(|l| l.split(',').nth(2).is_some_and(|s| s.starts_with("otd_"))));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.path().join("secrets.csv")).unwrap().permissions().mode() & 0o777, 0o600);
    let count = |sql: &str| {
        let db = &db;
        let sql = sql.to_owned();
        async move { crate::support::query_i64(db, &sql).await }
    };
    assert_eq!(count("SELECT COUNT(*) AS n FROM device").await, 1000);
    assert_eq!(count("SELECT COUNT(*) AS n FROM device WHERE gateway_id IS NOT NULL").await, 99);
    assert_eq!(count("SELECT COUNT(*) AS n FROM device_attribute WHERE key = 'region' AND value = 'eu'").await, 500);

    // A bad file: every bad line named, nothing of its batch written.
    std::fs::write(
        dir.path().join("bad.csv"),
        "endpoint_id,model\nnew-1,X100\nnew-2,X100\nnew-3,X100\ndev-0001,X100\nnew-5,X100\nnew-6,NOPE\n",
    )
    .unwrap();
    let output = run(&["devices", "import", "bad.csv", "--secrets-out", "bad-secrets.csv"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 5 (dev-0001)") && stderr.contains("line 7 (new-6)"), "{stderr}");
    assert_eq!(count("SELECT COUNT(*) AS n FROM device").await, 1000);
    // The secrets file is never overwritten.
    let output = run(&["devices", "import", "fleet.csv", "--secrets-out", "secrets.csv"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("must not exist"));
}

#[tokio::test]
async fn audit_export_streams_a_time_range_and_verify_catches_tampering_and_cut_off_rows() {
    let app = crate::support::TestApp::start().await;
    let admin = app.operator("admin");
    for name in ["A1", "A2", "A3"] {
        admin
            .ok(
                "mutation($n: String!) { createDeviceModel(input: {name: $n}) { deviceModel { id } } }",
                json!({"n": name}),
            )
            .await;
    }
    let middle = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for name in ["B1", "B2"] {
        admin
            .ok(
                "mutation($n: String!) { createDeviceModel(input: {name: $n}) { deviceModel { id } } }",
                json!({"n": name}),
            )
            .await;
    }
    let url = app.server().app.config.database.url.expose().to_owned();
    let dir = app.dir.path().to_path_buf();
    let run = |args: &[&str]| {
        Command::new(binary())
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("OTADEPOT_DATA_DIR", &dir)
            .env("OTADEPOT_DATABASE__URL", &url)
            .env("OTADEPOT_AUTH__JWT_SECRET", JWT_SECRET)
            .args(args)
            .output()
            .unwrap()
    };

    // JSON lines, everything, oldest first.
    let output = run(&["audit", "export"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["action"], "device_model.create");
    assert_eq!(lines[4]["details"]["name"], "B2");
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    // CSV, from the middle on.
    let from = middle.to_rfc3339();
    let output = run(&["audit", "export", "--from", &from, "--format", "csv"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>()[..3], ["seq", "id", "at"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(&rows[0][0], "4");
    assert!(rows[1][8].contains("\"B2\""), "details as JSON: {text}");
    // --to is exclusive; an empty range prints the header only.
    let output = run(&["audit", "export", "--to", &from, "--format", "csv"]);
    assert_eq!(String::from_utf8(output.stdout).unwrap().lines().count(), 4, "header and 3 rows");
    assert!(!run(&["audit", "export", "--from", "2026-13-01"]).status.success());

    // verify: OK with the head to anchor later checks.
    let output = run(&["audit", "verify"]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("OK: 5 event(s)"), "{stdout}");
    let anchor = stdout.trim().rsplit("head ").next().unwrap().to_owned();
    assert!(anchor.starts_with("5:"), "{stdout}");
    assert!(run(&["audit", "verify", "--anchor", &anchor]).status.success());
    // A malformed anchor (the README's shortened example, say) is a usage
    // error naming the form, never a verdict on the trail.
    for bad in ["1234:5f0c…", "5", "x:ab", &format!("0:{}", anchor.split_once(':').unwrap().1)] {
        let output = run(&["audit", "verify", "--anchor", bad]);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("SEQ:HASH") && !stderr.contains("BROKEN"), "{bad}: {stderr}");
    }

    // A tampered row is named.
    let db = app.db();
    sea_orm::ConnectionTrait::execute_unprepared(db, "UPDATE audit_event SET actor_id = 'mallory' WHERE seq = 2")
        .await
        .unwrap();
    let output = run(&["audit", "verify"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("BROKEN at seq 2") && stderr.contains("content does not match"), "{stderr}");
    sea_orm::ConnectionTrait::execute_unprepared(db, "UPDATE audit_event SET actor_id = 'admin-user' WHERE seq = 2")
        .await
        .unwrap();
    assert!(run(&["audit", "verify"]).status.success(), "restored");
    // The newest rows cut off: the chain alone still holds; the anchor does not.
    sea_orm::ConnectionTrait::execute_unprepared(db, "DELETE FROM audit_event WHERE seq >= 4").await.unwrap();
    assert!(run(&["audit", "verify"]).status.success());
    let output = run(&["audit", "verify", "--anchor", &anchor]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("cut off"), "{stderr}");
}
