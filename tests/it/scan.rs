//! Scanning with the real clamd (tests/fixtures/clamav signatures) and
//! promotion into the content-addressed repository.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::TestApp;

const CREATE: &str = "mutation($c: ContentInput) { createContent(content: $c) { id url } }";
const GET: &str = "query($id: ID!) { content(id: $id) { state scanVerdict scanSignature scanError sha256 } }";

/// The clamd socket `scripts/test` started; `None` (test skipped) when run
/// outside it, which CI never does.
pub(crate) fn clamd() -> Option<String> {
    match std::env::var("OTADEPOT_TEST_CLAMD_SOCKET") {
        Ok(socket) => Some(socket),
        Err(_) if std::env::var("CI").is_ok() => panic!("CI runs without clamd: use scripts/test"),
        Err(_) => {
            eprintln!("skipped: no OTADEPOT_TEST_CLAMD_SOCKET (run scripts/test)");
            None
        }
    }
}

/// Built at run time so that this source file itself is not flagged.
pub(crate) fn eicar() -> Vec<u8> {
    [r"X5O!P%@AP[4\PZX54(P^)7CC)7}$", "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"].concat().into_bytes()
}

pub(crate) async fn fast_app(tweak: impl FnOnce(&mut otadepot::config::Config)) -> TestApp {
    TestApp::start_with(|c| {
        c.jobs.poll_interval = Duration::from_millis(100);
        tweak(c);
    })
    .await
}

/// Create, upload, and wait until the content settles; returns (id, content).
pub(crate) async fn upload(app: &TestApp, data: &[u8]) -> (String, Value) {
    upload_until(app, data, &["PROMOTED", "QUARANTINED", "SCAN_FAILED"]).await
}

/// Like [`upload`], waiting for one of `settled`.
async fn upload_until(app: &TestApp, data: &[u8], settled: &[&str]) -> (String, Value) {
    let op = app.operator("package_admin");
    let form = op
        .ok(CREATE, json!({"c": {"name": "f.bin", "content_type": "application/octet-stream", "type": "firmware", "length": data.len()}}))
        .await["createContent"]
        .clone();
    let response = app.client.put(form["url"].as_str().unwrap()).body(data.to_vec()).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let id = form["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let content = app.operator("viewer").ok(GET, json!({"id": id})).await["content"].clone();
        if settled.contains(&content["state"].as_str().unwrap()) {
            return (id, content);
        }
        assert!(Instant::now() < deadline, "content stuck in {}", content["state"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn repository_file(app: &TestApp, sha256: &str) -> std::path::PathBuf {
    app.dir.path().join("repository/sha256").join(&sha256[..2]).join(sha256)
}

fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn a_clean_file_is_promoted_into_the_repository() {
    let Some(socket) = clamd() else { return };
    let app = fast_app(|c| c.scanner.clamd = format!("unix:{socket}")).await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let (id, content) = upload(&app, &data).await;
    assert_eq!(content["state"], "PROMOTED", "{content}");
    assert_eq!(content["scanVerdict"], "CLEAN");
    let sha = hex::encode(Sha256::digest(&data));
    assert_eq!(content["sha256"], sha);
    assert_eq!(std::fs::read(repository_file(&app, &sha)).unwrap(), data);
    assert_eq!(files_under(&app.dir.path().join("staging/staging")), 0, "staged copy removed");

    let events = app
        .operator("auditor")
        .ok("query($id: String) { auditEvents(filter: {objectId: $id}) { edges { node { action actor { kind id } } } } }", json!({"id": id}))
        .await;
    let actions: Vec<&str> = events["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["content.promote", "content.scan", "content.upload", "content.create"]);

    // The same bytes again share the repository object.
    let (_, again) = upload(&app, &data).await;
    assert_eq!(again["state"], "PROMOTED");
    assert_eq!(files_under(&app.dir.path().join("repository/sha256").join(&sha[..2])), 1);
}

#[tokio::test]
async fn eicar_and_our_own_signature_are_quarantined() {
    let Some(socket) = clamd() else { return };
    let app = fast_app(|c| c.scanner.clamd = format!("unix:{socket}")).await;
    let marker = [b"header ".as_slice(), b"OTADEPOT-TEST-MALWARE-MARKER-7f3a9c", b" trailer"].concat();
    for (data, signature) in [(eicar(), "Otadepot.Test.EICAR-1"), (marker, "Otadepot.Test.Marker-1")] {
        let (id, content) = upload(&app, &data).await;
        assert_eq!(content["state"], "QUARANTINED", "{content}");
        assert_eq!(content["scanVerdict"], "INFECTED");
        assert!(content["scanSignature"].as_str().unwrap().starts_with(signature), "{content}");
        assert!(app.dir.path().join("staging/quarantine").join(&id).exists(), "kept in quarantine");
        assert!(!app.dir.path().join("staging/staging").join(&id).exists());
        assert!(!repository_file(&app, &hex::encode(Sha256::digest(&data))).exists(), "never in the repository");
    }
}

#[tokio::test]
async fn an_unreachable_clamd_ends_in_scan_failed_never_clean() {
    if clamd().is_none() {
        return;
    }
    let app = fast_app(|c| {
        c.scanner.clamd = "tcp://127.0.0.1:1".into();
        c.scanner.max_attempts = 1;
    })
    .await;
    let data = b"harmless bytes".to_vec();
    let (_, content) = upload(&app, &data).await;
    assert_eq!(content["state"], "SCAN_FAILED", "{content}");
    assert_eq!(content["scanVerdict"], "ERROR");
    assert!(content["scanError"].as_str().unwrap().contains("unreachable"), "{content}");
    assert!(!repository_file(&app, &hex::encode(Sha256::digest(&data))).exists());
}

#[tokio::test]
async fn a_disabled_scanner_is_recorded_as_skipped() {
    let app = fast_app(|c| c.scanner.mode = otadepot::config::ScannerMode::Disabled).await;
    let (_, content) = upload(&app, b"unscanned").await;
    assert_eq!(content["state"], "PROMOTED");
    assert_eq!(content["scanVerdict"], "SKIPPED");
}

/// A clamd of this test's own, to stop and start at will.
pub(crate) struct PrivateClamd {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateClamd {
    async fn start() -> Self {
        Self::start_with("").await
    }

    /// With extra clamd.conf lines (and `AlertExceedsMax yes`).
    pub(crate) async fn start_with(extra: &str) -> Self {
        Self::start_configured(true, extra).await
    }

    /// With `AlertExceedsMax` as given and extra clamd.conf lines.
    pub(crate) async fn start_configured(alert_exceeds_max: bool, extra: &str) -> Self {
        let alert = if alert_exceeds_max { "yes" } else { "no" };
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {}\nDatabaseDirectory {}/tests/fixtures/clamav\nTemporaryDirectory {}\nForeground yes\nAlertExceedsMax {alert}\nLogFile {}\n{extra}",
                dir.path().join("clamd.sock").display(),
                env!("CARGO_MANIFEST_DIR"),
                dir.path().display(),
                dir.path().join("clamd.log").display(),
            ),
        )
        .unwrap();
        let mut clamd = Self { dir, child: None };
        clamd.restart().await;
        clamd
    }

    pub(crate) fn socket(&self) -> String {
        self.dir.path().join("clamd.sock").display().to_string()
    }

    async fn restart(&mut self) {
        let child = std::process::Command::new("clamd")
            .arg("-c")
            .arg(self.dir.path().join("clamd.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("clamd is installed");
        self.child = Some(child);
        let client = otadepot::scan::Clamd::new(
            otadepot::config::ClamdAddress::Unix(self.socket().into()),
            Duration::from_secs(5),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.version(Duration::from_secs(1)).await.is_err() {
            assert!(Instant::now() < deadline, "private clamd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

impl Drop for PrivateClamd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn clamd_down_gives_scan_failed_and_a_rescan_after_restart_promotes() {
    if clamd().is_none() {
        return;
    }
    let mut private = PrivateClamd::start().await;
    let socket = private.socket();
    let app = fast_app(|c| {
        c.scanner.clamd = format!("unix:{socket}");
        c.scanner.max_attempts = 1;
    })
    .await;
    private.stop();
    let data = b"firmware that deserves a real scan".to_vec();
    let (id, content) = upload(&app, &data).await;
    assert_eq!(content["state"], "SCAN_FAILED", "{content}");

    private.restart().await;
    let op = app.operator("package_admin");
    let rescanned =
        op.ok("mutation($id: ID!) { rescanContent(input: {id: $id}) { content { state } } }", json!({"id": id})).await;
    assert_eq!(rescanned["rescanContent"]["content"]["state"], "SCANNING");
    let again =
        op.gql("mutation($id: ID!) { rescanContent(input: {id: $id}) { content { state } } }", json!({"id": id})).await;
    assert_eq!(crate::support::error_code(&again), "INVALID_STATE", "one rescan at a time");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let content = app.operator("viewer").ok(GET, json!({"id": id})).await["content"].clone();
        if content["state"] == "PROMOTED" {
            assert_eq!(content["scanVerdict"], "CLEAN");
            break;
        }
        assert!(Instant::now() < deadline, "not promoted after rescan: {content}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read(repository_file(&app, &hex::encode(Sha256::digest(&data)))).unwrap(), data);
}

async fn content_of(app: &TestApp, id: &str) -> Value {
    app.operator("viewer").ok(GET, json!({"id": id})).await["content"].clone()
}

#[tokio::test]
async fn clamd_killed_mid_scan_is_retried_with_a_full_scan_never_clean_meanwhile() {
    if clamd().is_none() {
        return;
    }
    let mut private = PrivateClamd::start_with("StreamMaxLength 200M\nMaxFileSize 200M\nMaxScanSize 200M\n").await;
    let socket = private.socket();
    let app = fast_app(|c| {
        c.scanner.clamd = format!("unix:{socket}");
        c.scanner.max_attempts = 3;
        c.http.max_upload_bytes = 200 * 1024 * 1024;
    })
    .await;
    // Big enough that its scan takes a while.
    let data: Vec<u8> = (0..64u32 * 1024 * 1024).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    // Kill clamd as soon as the scan runs.
    let (id, _) = upload_until(&app, &data, &["SCANNING"]).await;
    private.stop();
    // With clamd dead, the content stays SCANNING (retrying), never CLEAN.
    for _ in 0..10 {
        let content = content_of(&app, &id).await;
        assert_eq!(content["state"], "SCANNING", "{content}");
        assert_eq!(content["scanVerdict"], Value::Null);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        crate::support::query_i64(
            app.db(),
            "SELECT CAST(MAX(attempts) AS BIGINT) AS n FROM job WHERE kind = 'content.scan'"
        )
        .await
            >= 1,
        "the broken attempt is counted"
    );
    let sha = hex::encode(Sha256::digest(&data));
    assert!(!repository_file(&app, &sha).exists());

    // Back up: the retry scans everything again and promotes.
    private.restart().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let content = content_of(&app, &id).await;
        if content["state"] == "PROMOTED" {
            assert_eq!(content["scanVerdict"], "CLEAN");
            break;
        }
        assert!(matches!(content["state"].as_str(), Some("SCANNING" | "CLEAN")), "{content}");
        assert!(Instant::now() < deadline, "not promoted after clamd came back: {content}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(std::fs::read(repository_file(&app, &sha)).unwrap(), data);
}

#[tokio::test]
async fn manual_promotion_waits_for_promote_content() {
    let app = fast_app(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.content.promotion = otadepot::config::Promotion::Manual;
    })
    .await;
    let (id, content) = upload_until(&app, b"needs a human", &["CLEAN", "PROMOTED"]).await;
    assert_eq!(content["state"], "CLEAN");
    app.drain_jobs().await;
    let still = app.operator("viewer").ok(GET, json!({"id": id})).await;
    assert_eq!(still["content"]["state"], "CLEAN", "no automatic promotion");

    const PROMOTE: &str = "mutation($id: ID!) { promoteContent(input: {id: $id}) { content { state } } }";
    let denied = app.operator("device_admin").gql(PROMOTE, json!({"id": id})).await;
    assert_eq!(crate::support::error_code(&denied), "FORBIDDEN");
    app.operator("package_admin").ok(PROMOTE, json!({"id": id})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.operator("viewer").ok(GET, json!({"id": id})).await["content"]["state"] != "PROMOTED" {
        assert!(Instant::now() < deadline, "not promoted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let twice = app.operator("package_admin").gql(PROMOTE, json!({"id": id})).await;
    assert_eq!(crate::support::error_code(&twice), "INVALID_STATE");
}

#[tokio::test]
async fn content_updated_pushes_each_state_change() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let app = fast_app(|c| c.scanner.mode = otadepot::config::ScannerMode::Disabled).await;
    let data = b"watch me".to_vec();
    let form = app
        .operator("package_admin")
        .ok(CREATE, json!({"c": {"name": "w", "content_type": "x", "type": "firmware", "length": data.len()}}))
        .await["createContent"]
        .clone();
    let mut request = format!("ws://{}/graphql/ws", app.server().addr).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let token = app.token_for("watcher", &["viewer"]);
    socket
        .send(Message::text(
            json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(crate::audit::next_json(&mut socket).await["type"], "connection_ack");
    let query = format!("subscription {{ contentUpdated(id: \"{}\") {{ state }} }}", form["id"].as_str().unwrap());
    socket
        .send(Message::text(json!({"id": "1", "type": "subscribe", "payload": {"query": query}}).to_string()))
        .await
        .unwrap();
    let first = crate::audit::next_json(&mut socket).await;
    assert_eq!(first["payload"]["data"]["contentUpdated"]["state"], "AWAITING_UPLOAD", "{first}");

    app.client.put(form["url"].as_str().unwrap()).body(data).send().await.unwrap();
    let mut states = Vec::new();
    while states.last().map(String::as_str) != Some("PROMOTED") {
        let message = crate::audit::next_json(&mut socket).await;
        states.push(message["payload"]["data"]["contentUpdated"]["state"].as_str().unwrap().to_owned());
    }
    // Each push reads the content as it is then, so fast steps may merge.
    assert!(states.len() >= 2, "{states:?}");
    let order = ["UPLOADING", "STAGED", "SCANNING", "CLEAN", "PROMOTED"];
    let positions: Vec<usize> = states.iter().map(|s| order.iter().position(|o| o == s).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] <= w[1]), "in order: {states:?}");
}

#[tokio::test]
async fn an_object_over_clamds_stream_limit_is_scan_failed_never_clean() {
    if clamd().is_none() {
        return;
    }
    let private = PrivateClamd::start_with("StreamMaxLength 1M\n").await;
    let socket = private.socket();
    let app = fast_app(|c| c.scanner.clamd = format!("unix:{socket}")).await;
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (_, content) = upload(&app, &data).await;
    assert_eq!(content["state"], "SCAN_FAILED", "{content}");
    let reason = content["scanError"].as_str().unwrap();
    assert!(reason.contains("StreamMaxLength") || reason.contains("limit"), "{reason}");
    assert!(!repository_file(&app, &hex::encode(Sha256::digest(&data))).exists());
}

/// Crashes and store failures around promotion: every rerun of the job
/// repairs, and nothing reaches PROMOTED unless its bytes are the ones
/// that were scanned.
mod faults {
    use super::*;
    use sea_orm::ConnectionTrait;

    const PROMOTE: &str = "mutation($id: ID!) { promoteContent(input: {id: $id}) { content { state } } }";

    async fn clean_waiting(app: &TestApp, data: &[u8]) -> String {
        let (id, content) = upload_until(app, data, &["CLEAN"]).await;
        assert_eq!(content["state"], "CLEAN");
        id
    }

    async fn manual_app() -> TestApp {
        fast_app(|c| {
            c.scanner.mode = otadepot::config::ScannerMode::Disabled;
            c.content.promotion = otadepot::config::Promotion::Manual;
        })
        .await
    }

    async fn state_of(app: &TestApp, id: &str) -> String {
        app.operator("viewer").ok(GET, json!({"id": id})).await["content"]["state"].as_str().unwrap().to_owned()
    }

    async fn wait_for(app: &TestApp, id: &str, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while state_of(app, id).await != state {
            assert!(Instant::now() < deadline, "never reached {state}");
            // Failed attempts back off; make retries due at once.
            app.db().execute_unprepared("UPDATE job SET run_at = created_at WHERE state = 'queued'").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn a_crash_after_the_copy_is_repaired_without_copying_again() {
        let app = manual_app().await;
        let data = b"copied before the crash".to_vec();
        let id = clean_waiting(&app, &data).await;
        // The copy landed, then the process died before committing PROMOTED.
        let sha = hex::encode(Sha256::digest(&data));
        let target = repository_file(&app, &sha);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, &data).unwrap();

        app.operator("package_admin").ok(PROMOTE, json!({"id": id})).await;
        wait_for(&app, &id, "PROMOTED").await;
        // The staged copy goes right after PROMOTED is committed.
        let staged = app.dir.path().join("staging/staging").join(&id);
        let deadline = Instant::now() + Duration::from_secs(10);
        while staged.exists() {
            assert!(Instant::now() < deadline, "staged copy cleaned up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let events = app
            .operator("auditor")
            .ok("{ auditEvents(filter: {action: \"content.promote\"}) { edges { node { details } } } }", json!({}))
            .await;
        assert_eq!(events["auditEvents"]["edges"][0]["node"]["details"]["deduplicated"], true);
    }

    #[tokio::test]
    async fn a_crash_after_the_commit_leaves_a_staged_copy_that_the_rerun_removes() {
        let app = fast_app(|c| c.scanner.mode = otadepot::config::ScannerMode::Disabled).await;
        let data = b"promoted, then the process died".to_vec();
        let (id, content) = upload(&app, &data).await;
        assert_eq!(content["state"], "PROMOTED");
        // The staged object survived the crash, and the job will run again.
        let staged = app.dir.path().join("staging/staging").join(&id);
        std::fs::write(&staged, &data).unwrap();
        otadepot::jobs::enqueue(app.db(), "content.scan", json!({"content_id": id})).await.unwrap();
        app.server().app.wake_workers();
        let deadline = Instant::now() + Duration::from_secs(20);
        while staged.exists() {
            assert!(Instant::now() < deadline, "leftover staged object not removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(state_of(&app, &id).await, "PROMOTED");
    }

    #[tokio::test]
    async fn a_failing_repository_store_keeps_the_content_clean_until_it_recovers() {
        let app = manual_app().await;
        let data = b"the repository is down".to_vec();
        let id = clean_waiting(&app, &data).await;
        let sha = hex::encode(Sha256::digest(&data));
        // The prefix directory of this object is a file: the copy fails.
        let blocker = app.dir.path().join("repository/sha256").join(&sha[..2]);
        std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
        std::fs::write(&blocker, b"in the way").unwrap();

        app.operator("package_admin").ok(PROMOTE, json!({"id": id})).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let failed = "SELECT COUNT(*) AS n FROM job WHERE kind = 'content.scan' AND last_error IS NOT NULL";
        while crate::support::query_i64(app.db(), failed).await == 0 {
            assert!(Instant::now() < deadline, "the promotion attempt never failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(state_of(&app, &id).await, "CLEAN", "no PROMOTED without the object in place");

        std::fs::remove_file(&blocker).unwrap();
        wait_for(&app, &id, "PROMOTED").await;
        assert_eq!(std::fs::read(repository_file(&app, &sha)).unwrap(), data);
    }

    #[tokio::test]
    async fn bytes_changed_after_the_scan_are_never_promoted() {
        let app = manual_app().await;
        let data = b"scanned bytes".to_vec();
        let id = clean_waiting(&app, &data).await;
        // Someone swaps the staged object after the verdict.
        std::fs::write(app.dir.path().join("staging/staging").join(&id), b"SWAPPED bytes").unwrap();
        app.operator("package_admin").ok(PROMOTE, json!({"id": id})).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(state_of(&app, &id).await, "CLEAN");
        assert!(!repository_file(&app, &hex::encode(Sha256::digest(b"SWAPPED bytes"))).exists());
        assert!(!repository_file(&app, &hex::encode(Sha256::digest(&data))).exists());
    }
}
