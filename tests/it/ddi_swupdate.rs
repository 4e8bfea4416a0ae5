//! The real client: Debian's stock `swupdate` (2022.12, suricatta with its
//! hawkBit DDI module), unmodified, updates a device from otadepot. A
//! CMS-signed `.swu` is uploaded through `createContent`, scanned by the
//! real clamd, promoted, packaged and applied; swupdate polls, downloads,
//! installs, reports, and after its "reboot" (a restart) closes the
//! action; otadepot shows INSTALLED, the installation and the audit trail.
//!
//! `tests/fixtures/swupdate/make-swu.sh` builds the `.swu`;
//! `run-suricatta.sh` plays one update with swupdate and says how it went
//! on its last line. Each test has its own work directory, keys and
//! `TMPDIR` (swupdate's sockets live there), so they run in parallel.
//! `scripts/test` installs swupdate and names it in OTADEPOT_TEST_SWUPDATE.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest as _;

use crate::support::TestApp;

/// swupdate from `scripts/test`; None (skipped) outside it, which CI never is.
fn swupdate() -> Option<String> {
    match std::env::var("OTADEPOT_TEST_SWUPDATE") {
        Ok(path) => Some(path),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI must run this through scripts/test (OTADEPOT_TEST_SWUPDATE)")
        }
        Err(_) => {
            eprintln!("skipped: no OTADEPOT_TEST_SWUPDATE (run scripts/test)");
            None
        }
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/swupdate")
}

/// A server that scans with the real clamd and tells DDI devices to poll
/// every second.
async fn app() -> Option<TestApp> {
    app_with(|_| {}).await
}

async fn app_with(tweak: impl FnOnce(&mut otadepot::config::Config)) -> Option<TestApp> {
    crate::scan::clamd()?;
    swupdate()?;
    Some(
        TestApp::start_with(|c| {
            c.jobs.poll_interval = Duration::from_millis(100);
            c.deployments.reconcile_interval = Duration::from_millis(200);
            c.ddi.polling_sleep = Duration::from_secs(1);
            c.ddi.polling_sleep_active = Duration::from_secs(1);
            tweak(c);
        })
        .await,
    )
}

/// A TCP proxy in front of the server that swupdate talks to (the server's
/// `http.public_url` is the proxy, so the links in its answers lead there
/// too): it can slow every answer down, and cut one large answer off
/// after so many bytes, as a flaky link would. It keeps what the client
/// sent, and the status lines the server answered.
struct Proxy {
    listener: Option<tokio::net::TcpListener>,
    url: String,
    link: Arc<Link>,
}

#[derive(Default)]
struct Link {
    /// Sleep this long after each 16 KiB passed on to the client.
    delay_per_chunk: Option<Duration>,
    /// Cut the first answer that grows past this many bytes (0: never).
    cut_at: AtomicUsize,
    /// The most bytes one connection has carried to the client so far.
    largest: AtomicUsize,
    sent: Mutex<Vec<u8>>,
    answered: Mutex<Vec<String>>,
}

impl Proxy {
    async fn bind(delay_per_chunk: Option<Duration>, cut_at: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let link = Link { delay_per_chunk, cut_at: cut_at.into(), ..Link::default() };
        Self { listener: Some(listener), url, link: Arc::new(link) }
    }

    /// Forward to `upstream` from now on.
    fn start(&mut self, upstream: std::net::SocketAddr) {
        let listener = self.listener.take().unwrap();
        let link = self.link.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let link = link.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    pipe(client, server, link).await;
                });
            }
        });
    }

    /// What clients sent, in lower case.
    fn sent(&self) -> String {
        String::from_utf8_lossy(&self.link.sent.lock().unwrap()).to_ascii_lowercase()
    }
}

async fn pipe(client: tokio::net::TcpStream, server: tokio::net::TcpStream, link: Arc<Link>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = {
        let link = link.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                link.sent.lock().unwrap().extend_from_slice(&buf[..n]);
                if server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        while let Ok(n @ 1..) = server_read.read(&mut buf).await {
            if let Some(at) = buf[..n].windows(9).position(|w| w == b"HTTP/1.1 ") {
                let line = String::from_utf8_lossy(&buf[at..n]).lines().next().unwrap_or_default().to_owned();
                link.answered.lock().unwrap().push(line);
            }
            let cut_at = link.cut_at.load(Ordering::Acquire);
            if cut_at > 0
                && total + n > cut_at
                && link.cut_at.compare_exchange(cut_at, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                let _ = client_write.write_all(&buf[..cut_at - total]).await;
                return;
            }
            total += n;
            link.largest.fetch_max(total, Ordering::AcqRel);
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if let Some(delay) = link.delay_per_chunk {
                tokio::time::sleep(delay).await;
            }
        }
    };
    // Either side closing ends the connection (a cut drops both halves).
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// A server behind `proxy` (its links lead through it).
async fn app_behind(proxy: &mut Proxy) -> Option<TestApp> {
    let url = proxy.url.clone();
    let app = app_with(|c| c.http.public_url = url).await?;
    proxy.start(app.server().addr);
    Some(app)
}

/// Build a signed `.swu` installing `payload` at `target` (keys in
/// `dir/keys`), upload it through `createContent`, wait for the scan to
/// promote it, and package it as `app` `version` for model X100: the
/// package id.
async fn package_swu(app: &TestApp, dir: &Path, payload: &[u8], target: &Path, bad_sha256: bool) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let payload_file = dir.join("payload.bin");
    std::fs::write(&payload_file, payload).unwrap();
    let swu = dir.join("update.swu");
    let output = std::process::Command::new(fixtures().join("make-swu.sh"))
        .arg(&swu)
        .arg(&payload_file)
        .arg(target)
        .env("SWU_KEYDIR", dir.join("keys"))
        .env("SWU_BAD_SHA256", if bad_sha256 { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(output.status.success(), "make-swu.sh: {}", String::from_utf8_lossy(&output.stderr));
    let bytes = std::fs::read(&swu).unwrap();

    const CREATE: &str = "mutation($c: ContentInput) { createContent(content: $c) { id url } }";
    let op = app.operator("package_admin");
    let form = op
        .ok(
            CREATE,
            json!({"c": {"name": "update.swu", "content_type": "application/octet-stream", "type": "firmware", "length": bytes.len()}}),
        )
        .await["createContent"]
        .clone();
    let put = app.client.put(form["url"].as_str().unwrap()).body(bytes).send().await.unwrap();
    assert_eq!(put.status(), reqwest::StatusCode::CREATED);
    let id = form["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let content =
            op.ok("query($id: ID!) { content(id: $id) { state scanVerdict } }", json!({"id": id})).await["content"]
                .clone();
        if content["state"] == "PROMOTED" {
            assert_eq!(content["scanVerdict"], "CLEAN", "scanned by clamd: {content}");
            break;
        }
        assert!(Instant::now() < deadline && content["state"] != "QUARANTINED", "not promoted: {content}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    op.ok(
        "mutation($f: ID!) { createSoftwarePackage(input: {name: \"app\", version: \"1.0.0\", type: \"URL_LIST\", models: [\"X100\"], files: [$f]}) { package { id } } }",
        json!({"f": id}),
    )
    .await["createSoftwarePackage"]["package"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Devices `d00`, `d01`… of model X100: (endpoint id, secret).
async fn devices(app: &TestApp, n: usize) -> Vec<(String, String)> {
    app.operator("admin")
        .ok("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({}))
        .await;
    crate::support::fleet_in_group(app, n, "X100", "swupdate").await.1
}

/// Apply `package` to `endpoint`: the deployment id.
async fn apply(app: &TestApp, package: &str, endpoint: &str) -> Value {
    app.operator("deployment_manager")
        .ok(
            "mutation($p: ID!, $d: [ID!]!) { applyPackage(input: {package: $p, devices: $d}) { deployment { id } } }",
            json!({"p": package, "d": [endpoint]}),
        )
        .await["applyPackage"]["deployment"]["id"]
        .clone()
}

/// How `run-suricatta.sh` ended: success, and its last line.
struct Run {
    success: bool,
    last_line: String,
    output: String,
}

/// Play one update with the stock swupdate against the server at `base`
/// as `controller`, with `token` (`TargetToken`, or `GatewayToken` when
/// `gateway`).
async fn run_suricatta(
    base: &str,
    workdir: &Path,
    keys: &Path,
    controller: &str,
    token: &str,
    gateway: bool,
    expect_sha256: Option<&str>,
) -> Run {
    let mut command = std::process::Command::new(fixtures().join("run-suricatta.sh"));
    command
        .arg(base)
        .arg("DEFAULT")
        .arg(controller)
        .arg(token)
        .arg(workdir)
        .arg("90")
        .env("SWU_KEYDIR", keys)
        .env("SWUPDATE", swupdate().unwrap())
        .env("TOKEN_TYPE", if gateway { "gateway" } else { "target" });
    if let Some(sha256) = expect_sha256 {
        command.env("EXPECT_SHA256", sha256);
    }
    // Off the runtime: the server answers swupdate meanwhile.
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let last_line = stdout.lines().last().unwrap_or_default().to_owned();
    let logs = ["phase1.log", "phase2.log"]
        .iter()
        .map(|f| std::fs::read_to_string(workdir.join(f)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n----\n");
    let success = output.status.success();
    let output = format!("{stdout}\n{}\n{logs}", String::from_utf8_lossy(&output.stderr));
    Run { success, last_line, output }
}

const UPDATE: &str = "query($id: ID!) { deployment(id: $id) { state deviceUpdates(first: 5) { edges { node {
    actionId state progress errorCode message } } } } }";

async fn the_update(app: &TestApp, deployment: &Value) -> Value {
    let body = app.operator("viewer").ok(UPDATE, json!({"id": deployment})).await;
    body["deployment"]["deviceUpdates"]["edges"][0]["node"].clone()
}

/// A test's update: a `.swu` of `len` bytes of payload (seeded by `seed`)
/// installing to `target`, scanned, promoted and packaged, `n` devices,
/// and the package applied to device `to`.
struct Scenario {
    dir: PathBuf,
    target: PathBuf,
    payload: Vec<u8>,
    devices: Vec<(String, String)>,
    deployment: Value,
}

impl Scenario {
    /// The payload is never tiny: with a `.swu` of a few KB, swupdate
    /// 2022.12's suricatta may take the install as done before its
    /// installer even started (it then runs the post-update command and
    /// logs a HASH mismatch after).
    async fn new(app: &TestApp, len: u32, seed: u32, n: usize, to: usize, bad_sha256: bool) -> Self {
        assert!(len >= 100_000, "see the doc");
        let dir = app.dir.path().join("sw");
        let payload: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(seed) >> 24) as u8).collect();
        let target = dir.join("installed/app.bin");
        let devices = devices(app, n).await;
        let package = package_swu(app, &dir, &payload, &target, bad_sha256).await;
        let deployment = apply(app, &package, &devices[to].0).await;
        Self { dir, target, payload, devices, deployment }
    }

    fn sha256(&self) -> String {
        hex::encode(sha2::Sha256::digest(&self.payload))
    }

    /// [`run_suricatta`] for device `i` with its own token, against `base`.
    async fn run(&self, base: &str, i: usize, expect: bool) -> Run {
        let (cid, secret) = &self.devices[i];
        let sha256 = self.sha256();
        run_suricatta(
            base,
            &self.dir.join("dev"),
            &self.dir.join("keys"),
            cid,
            secret,
            false,
            expect.then_some(sha256.as_str()),
        )
        .await
    }
}

#[tokio::test]
async fn stock_swupdate_installs_a_scanned_swu_and_otadepot_records_it() {
    let Some(app) = app().await else { return };
    let it = Scenario::new(&app, 300_000, 2_654_435_761, 1, 0, false).await;
    let (cid, deployment) = (&it.devices[0].0, &it.deployment);

    let run = it.run(&app.base, 0, true).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(
        run.last_line,
        format!("swupdate: installed {} sha256={}", it.target.display(), it.sha256()),
        "{}",
        run.output
    );
    assert_eq!(std::fs::read(&it.target).unwrap(), it.payload);

    let update = the_update(&app, deployment).await;
    assert_eq!((&update["state"], &update["progress"]), (&json!("INSTALLED"), &json!(100)), "{update}\n{}", run.output);
    // The deployment completes (the reconciler runs as a job).
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.operator("viewer").ok(UPDATE, json!({"id": deployment})).await["deployment"]["state"] != "COMPLETED" {
        assert!(Instant::now() < deadline, "the deployment did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let device = app
        .operator("viewer")
        .ok(
            "query($e: String!) { deviceByEndpointId(endpointId: $e) { installed { component version } installations { version deploymentId } reportedAttributes { key value } } }",
            json!({"e": cid}),
        )
        .await["deviceByEndpointId"]
        .clone();
    assert_eq!(device["installed"], json!([{"component": "firmware", "version": "1.0.0"}]), "{device}");
    assert_eq!(device["installations"][0]["deploymentId"], *deployment, "{device}");
    assert_eq!(
        device["reportedAttributes"],
        json!([{"key": "swupdate_test", "value": "1"}]),
        "its configData: {device}"
    );
    let audit = app
        .operator("auditor")
        .ok(
            "query($id: String) { auditEvents(filter: {objectId: $id}) { edges { node { action } } } }",
            json!({"id": update_id(&app, deployment).await}),
        )
        .await;
    let actions: Vec<&str> =
        audit["auditEvents"]["edges"].as_array().unwrap().iter().filter_map(|e| e["node"]["action"].as_str()).collect();
    assert!(actions.contains(&"device_update.installed"), "{audit}");
}

async fn update_id(app: &TestApp, deployment: &Value) -> String {
    let body = app
        .operator("viewer")
        .ok(
            "query($id: ID!) { deployment(id: $id) { deviceUpdates(first: 1) { edges { node { id } } } } }",
            json!({"id": deployment}),
        )
        .await;
    body["deployment"]["deviceUpdates"]["edges"][0]["node"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_payload_whose_sha256_does_not_match_fails_with_swupdates_message() {
    let Some(app) = app().await else { return };
    let it = Scenario::new(&app, 400_000, 2_654_435_761, 1, 0, true).await;

    let run = it.run(&app.base, 0, false).await;
    assert!(!run.success, "{}", run.output);
    assert!(run.last_line.starts_with("swupdate: failed install of action"), "{}", run.output);
    let update = the_update(&app, &it.deployment).await;
    assert_eq!(update["state"], "FAILED", "{update}\n{}", run.output);
    // swupdate's own words: the check that failed, and its verdict.
    let message = update["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("HASH mismatch") && message.ends_with("No suitable .swu image found"),
        "{update}\n{}",
        run.output
    );
    assert_eq!(update["errorCode"], Value::Null);
}

#[tokio::test]
async fn a_gateway_updates_its_sub_device_with_a_gateway_token() {
    let Some(app) = app().await else { return };
    let it = Scenario::new(&app, 300_000, 1_597_334_677, 2, 1, false).await;
    let ((gateway, gateway_secret), (sub, _)) = (&it.devices[0], &it.devices[1]);
    let admin = app.operator("admin");
    let sub_id = admin.ok("query($e: String!) { deviceByEndpointId(endpointId: $e) { id } }", json!({"e": sub})).await
        ["deviceByEndpointId"]["id"]
        .clone();
    admin
        .ok(
            "mutation($d: ID!, $g: String) { setDeviceGateway(input: {device: $d, gateway: $g}) { device { gatewayId } } }",
            json!({"d": sub_id, "g": gateway}),
        )
        .await;

    let sha256 = it.sha256();
    let (work, keys) = (it.dir.join("dev"), it.dir.join("keys"));
    let run = run_suricatta(&app.base, &work, &keys, sub, gateway_secret, true, Some(&sha256)).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(the_update(&app, &it.deployment).await["state"], "INSTALLED");
}

#[tokio::test]
async fn a_dropped_download_is_resumed_with_a_range_request() {
    // The first answer past 200 KB (the .swu's download) is cut off there.
    let mut proxy = Proxy::bind(None, 200 * 1024).await;
    let Some(app) = app_behind(&mut proxy).await else { return };
    let it = Scenario::new(&app, 1_000_000, 2_246_822_519, 1, 0, false).await;

    let run = it.run(&proxy.url, 0, true).await;
    assert!(run.success, "{}", run.output);
    assert_eq!(std::fs::read(&it.target).unwrap(), it.payload, "whole after the resume");
    assert_eq!(proxy.link.cut_at.load(Ordering::Acquire), 0, "the download was cut");
    assert!(proxy.sent().contains("\r\nrange: bytes="), "swupdate asked for the rest: {}", run.output);
    let answered = proxy.link.answered.lock().unwrap().clone();
    assert!(answered.iter().any(|l| l.starts_with("HTTP/1.1 206")), "{answered:?}");
    assert_eq!(the_update(&app, &it.deployment).await["state"], "INSTALLED");
}

#[tokio::test]
async fn a_cancel_while_swupdate_downloads_stops_it_and_is_acknowledged() {
    // About 270 KB/s: the 3 MB .swu takes some 10 s to arrive.
    let mut proxy = Proxy::bind(Some(Duration::from_millis(60)), 0).await;
    let Some(app) = app_behind(&mut proxy).await else { return };
    let it = Scenario::new(&app, 3_000_000, 3_266_489_917, 1, 0, false).await;
    let (dir, target, deployment) = (it.dir.clone(), it.target.clone(), it.deployment.clone());
    let (cid, secret) = &it.devices[0];
    let update = update_id(&app, &deployment).await;

    let run = {
        let (url, dir, cid, secret) = (proxy.url.clone(), dir.clone(), cid.clone(), secret.clone());
        tokio::spawn(async move {
            run_suricatta(&url, &dir.join("dev"), &dir.join("keys"), &cid, &secret, false, None).await
        })
    };
    // Once the download is under way (more than 300 KB through), cancel.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.link.largest.load(Ordering::Acquire) < 300 * 1024 {
        assert!(Instant::now() < deadline && !run.is_finished(), "the download never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = app
        .operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { cancelDeviceUpdate(input: {id: $id}) { deviceUpdate { state } } }",
            json!({"id": update}),
        )
        .await;
    assert_eq!(cancelled["cancelDeviceUpdate"]["deviceUpdate"]["state"], "CANCELLED");
    let run = run.await.unwrap();
    assert!(!run.success, "{}", run.output);
    assert!(run.last_line.starts_with("swupdate: failed server cancelled the update"), "{}", run.output);
    assert!(!target.exists(), "nothing installed");
    let action = the_update(&app, &deployment).await["actionId"].clone();
    let acknowledged = crate::support::query_i64(
        app.db(),
        &format!("SELECT COUNT(*) AS n FROM device_update WHERE cancel_acknowledged AND action_id = {action}"),
    )
    .await;
    assert_eq!(acknowledged, 1, "swupdate acknowledged the cancel: {}", run.output);
}
