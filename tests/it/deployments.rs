//! Deployments, driven by simulated devices over real HTTP: the poll, the
//! status reports, the rollout policy, the modes, cancel, pause, abort.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{DeviceClient, TestApp, error_code};

const APPLY: &str = "mutation($i: ApplyPackageInput!) { applyPackage(input: $i) {
    deployment { id state mode targetCount skippedCount installReleased }
    skipped { endpointId reason } } }";
const DEPLOYMENT: &str = "query($id: ID!) { deployment(id: $id) { state reason currentPhase installReleased
    counts { pending released acknowledged downloading downloaded installing installed failed cancelled skipped } } }";

struct Fleet {
    package: String,
    file: String,
    group: String,
}

async fn app() -> TestApp {
    TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = Duration::from_millis(50);
        c.deployments.reconcile_interval = Duration::from_millis(200);
    })
    .await
}

/// Model X100, a firmware 2.0.0 package for it, `n` devices in a group.
async fn fleet(app: &TestApp, n: usize) -> (Fleet, Vec<DeviceClient<'_>>) {
    let admin = app.operator("admin");
    admin.ok("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({})).await;
    admin.ok("mutation { createDeviceModel(input: {name: \"S200\"}) { deviceModel { id } } }", json!({})).await;
    let (file, package) = app.firmware_package("2.0.0", "fw-2.0.0.bin", b"firmware 2.0.0 image").await;
    let (group, devices) = crate::support::fleet_in_group(app, n, "X100", "fleet").await;
    let sims = DeviceClient::all(app, devices);
    (Fleet { package, file, group }, sims)
}

async fn apply(app: &TestApp, input: Value) -> Value {
    app.operator("deployment_manager").ok(APPLY, json!({"i": input})).await["applyPackage"].clone()
}

async fn deployment(app: &TestApp, id: &Value) -> Value {
    app.operator("viewer").ok(DEPLOYMENT, json!({"id": id})).await["deployment"].clone()
}

/// Wait until the deployment matches `done` (the reconciler runs as a job).
async fn until(app: &TestApp, id: &Value, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = deployment(app, id).await;
        if done(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {d}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn in_flight(d: &Value) -> u64 {
    ["released", "acknowledged", "downloading", "downloaded", "installing"]
        .iter()
        .map(|k| d["counts"][k].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn a_device_polls_downloads_installs_and_the_deployment_completes() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 3).await;
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group, "policy": {"maxInFlight": 5}})).await;
    let id = out["deployment"]["id"].clone();
    assert_eq!(out["deployment"]["state"], "RUNNING");
    assert_eq!(out["deployment"]["targetCount"], 3);

    let sim = &sims[0];
    let (status, etag, body) = sim.poll_with(None, None).await;
    assert_eq!(status, StatusCode::OK);
    let update = &body["update"];
    assert_eq!(update["action"], "DOWNLOAD");
    assert_eq!(body["commands"], json!([]));
    // The signed manifest, its file URL signed for this device.
    let manifest = &update["manifest"];
    assert_eq!(manifest["version"], "2.0.0");
    assert_eq!(manifest["signature"]["alg"], "Ed25519");
    let url = manifest["files"][0]["url"].as_str().unwrap().to_owned();
    assert!(url.contains("device=") && url.contains("sig="), "{url}");
    // The 304 path: nothing changed.
    let (status, _, _) = sim.poll_with(etag.as_deref(), None).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    // The URL works without a credential, with Range; tampering breaks it.
    let response = app.client.get(&url).header("range", "bytes=0-7").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"firmware");
    let other_device = url.replace("device=", "device=0");
    assert_eq!(app.client.get(&other_device).send().await.unwrap().status(), StatusCode::FORBIDDEN);

    sim.report_ok(update, json!({"status": "ACKNOWLEDGED"})).await;
    let progress = sim.report_ok(update, json!({"status": "DOWNLOADING", "progress": 40})).await;
    assert_eq!((progress["state"].as_str(), progress["progress"].as_i64()), (Some("DOWNLOADING"), Some(40)));
    sim.report_ok(update, json!({"status": "DOWNLOADED"})).await;
    assert_eq!(sim.update().await["action"], "INSTALL");
    sim.report_ok(update, json!({"status": "INSTALLING"})).await;
    let done = sim.report_ok(update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    assert_eq!(done["state"], "INSTALLED");
    assert_eq!(sim.poll().await.0, StatusCode::NO_CONTENT, "nothing pending any more");

    // The device's installed versions and history.
    let device = app
        .operator("viewer")
        .ok("{ deviceByEndpointId(endpointId: \"d00\") { installed { component version } installations { component version source packageName deploymentId installedAt } updates { edges { node { state progress } } } } }", json!({}))
        .await["deviceByEndpointId"]
        .clone();
    assert_eq!(device["installed"], json!([{"component": "firmware", "version": "2.0.0"}]));
    assert_eq!(device["installations"][0]["source"], "deployment");
    assert_eq!(device["installations"][0]["deploymentId"], id);
    assert_eq!(device["installations"][0]["packageName"], "fw");
    assert!(device["installations"][0]["installedAt"].is_string());
    assert_eq!(device["updates"]["edges"][0]["node"], json!({"state": "INSTALLED", "progress": 100}));
    // A version the device reports that otadepot did not install.
    let response = app
        .client
        .post(app.url("/device/v1/inventory"))
        .bearer_auth(&sim.secret)
        .json(&json!({"installed": {"firmware": "2.0.1-field-fix"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let history = app
        .operator("viewer")
        .ok(
            "{ deviceByEndpointId(endpointId: \"d00\") { installations { version source packageName deploymentId } } }",
            json!({}),
        )
        .await["deviceByEndpointId"]["installations"]
        .clone();
    assert_eq!(
        history[0],
        json!({"version": "2.0.1-field-fix", "source": "device", "packageName": null, "deploymentId": null}),
        "{history}"
    );
    assert_eq!(history[1]["version"], "2.0.0");

    for sim in &sims[1..] {
        sim.install("2.0.0").await;
    }
    let finished = until(&app, &id, "COMPLETED", |d| d["state"] == "COMPLETED").await;
    assert_eq!(finished["counts"]["installed"], 3);
    let events = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"device_update.installed\"}) { totalCount } }", json!({}))
        .await;
    assert_eq!(events["auditEvents"]["totalCount"], 3);
}

#[tokio::test]
async fn reports_follow_the_state_machine_and_stay_with_their_device() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 2).await;
    apply(&app, json!({"package": fleet.package, "devices": ["d00", "d01"]})).await;
    let update = sims[0].update().await;
    // Out of order, unknown, malformed: refused, and nothing changes.
    for (body, expected) in [
        (json!({"status": "INSTALLED_VERSION", "version": "2.0.0"}), StatusCode::CONFLICT),
        (json!({"status": "INSTALLING"}), StatusCode::CONFLICT),
        (json!({"status": "CANCELLED"}), StatusCode::CONFLICT),
        (json!({"status": "DONE"}), StatusCode::BAD_REQUEST),
        (json!({"status": "DOWNLOADING", "progress": 101}), StatusCode::BAD_REQUEST),
        (json!({"progress": 1}), StatusCode::BAD_REQUEST),
    ] {
        let (status, out) = sims[0].report(&update, body.clone()).await;
        assert_eq!(status, expected, "{body}: {out}");
    }
    let (_, out) = sims[0].report(&update, json!({"status": "INSTALLED_VERSION"})).await;
    assert_eq!(out["error"]["code"], "INVALID_STATE");
    // Another device's update is not there for it.
    assert_eq!(sims[1].report(&update, json!({"status": "ACKNOWLEDGED"})).await.0, StatusCode::NOT_FOUND);
    // A wrong version fails the update, saying why.
    sims[0].report_ok(&update, json!({"status": "DOWNLOADED"})).await;
    let failed = sims[0].report_ok(&update, json!({"status": "INSTALLED_VERSION", "version": "1.9.9"})).await;
    assert_eq!(failed["state"], "FAILED");
    assert!(failed["message"].as_str().unwrap().contains("expected 2.0.0"), "{failed}");
    // FAILED with an error code.
    let other = sims[1].update().await;
    let out = sims[1]
        .report_ok(&other, json!({"status": "FAILED", "errcode": "E_FLASH", "message": "flash write failed"}))
        .await;
    assert_eq!((out["state"].as_str(), out["errcode"].as_str()), (Some("FAILED"), Some("E_FLASH")));
    assert_eq!(sims[1].report(&other, json!({"status": "FAILED"})).await.0, StatusCode::CONFLICT, "final");
    // Operator tokens are no device credentials.
    let response =
        app.client.get(app.url("/device/v1/poll")).bearer_auth(app.token_for("ops", &["admin"])).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn max_in_flight_is_never_exceeded_and_phases_follow_each_other() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 10).await;
    let out = apply(
        &app,
        json!({"package": fleet.package, "group": fleet.group, "policy": {"maxInFlight": 2, "phases": [30, 100]}}),
    )
    .await;
    let id = out["deployment"]["id"].clone();
    let mut installed = 0;
    while installed < 10 {
        let d = deployment(&app, &id).await;
        assert!(in_flight(&d) <= 2, "maxInFlight exceeded: {d}");
        // Phase 1 (30% = 3 devices) must finish before phase 2 starts.
        if installed < 3 {
            let released_ever = 10 - d["counts"]["pending"].as_u64().unwrap();
            assert!(released_ever <= 3, "phase 1 is 3 devices: {d}");
        }
        let mut progressed = false;
        for sim in &sims {
            if let (StatusCode::OK, body) = sim.poll().await {
                let update = &body["update"];
                sim.report_ok(update, json!({"status": "DOWNLOADED"})).await;
                let d = deployment(&app, &id).await;
                assert!(in_flight(&d) <= 2, "maxInFlight exceeded: {d}");
                sim.report_ok(update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
                installed += 1;
                progressed = true;
                break;
            }
        }
        if !progressed {
            // The reconciler releases the next ones (woken by the reports).
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let d = until(&app, &id, "COMPLETED", |d| d["state"] == "COMPLETED").await;
    assert_eq!(d["currentPhase"], 1);
    assert_eq!(d["counts"]["installed"], 10);
}

#[tokio::test]
async fn failures_above_the_threshold_abort_the_rollout() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 6).await;
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group, "policy": {"maxInFlight": 2, "failureThresholdPercent": 40}})).await;
    let id = out["deployment"]["id"].clone();
    let mut released = Vec::new();
    for sim in &sims {
        if let (StatusCode::OK, body) = sim.poll().await {
            released.push((sim, body["update"].clone()));
        }
    }
    assert_eq!(released.len(), 2, "two released at first");
    let (a, a_update) = &released[0];
    a.report_ok(a_update, json!({"status": "DOWNLOADED"})).await;
    a.report_ok(a_update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    let (b, b_update) = &released[1];
    b.report_ok(b_update, json!({"status": "FAILED", "errcode": "E1"})).await;
    // 1 of 2 finished devices failed: 50% > 40%.
    let d = until(&app, &id, "ABORTED", |d| d["state"] == "ABORTED").await;
    assert!(d["reason"].as_str().unwrap().contains("threshold of 40%"), "{d}");
    assert_eq!(d["counts"]["pending"], 0, "{d}");
    assert_eq!((d["counts"]["installed"].as_u64(), d["counts"]["failed"].as_u64()), (Some(1), Some(1)));
    // At most the one device released after the first success is still under way.
    assert!(in_flight(&d) <= 1, "{d}");
    assert_eq!(d["counts"]["cancelled"].as_u64().unwrap() + in_flight(&d), 4, "{d}");
    let mut still = 0;
    for sim in &sims {
        if sim.poll().await.0 == StatusCode::OK {
            still += 1;
        }
    }
    assert_eq!(u64::try_from(still).unwrap(), in_flight(&d), "nothing further is released");
}

#[tokio::test]
async fn pause_resume_and_cancel_during_download() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 3).await;
    let op = app.operator("deployment_manager");
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group, "policy": {"maxInFlight": 1}})).await;
    let id = out["deployment"]["id"].clone();
    let first = sims.iter().find(|_| true).unwrap();
    let update = first.update().await;
    first.report_ok(&update, json!({"status": "DOWNLOADING", "progress": 10})).await;
    let paused = op
        .ok("mutation($id: ID!) { pauseDeployment(input: {id: $id}) { deployment { state } } }", json!({"id": id}))
        .await;
    assert_eq!(paused["pauseDeployment"]["deployment"]["state"], "PAUSED");
    // The device under way goes on; nobody new is released.
    first.report_ok(&update, json!({"status": "DOWNLOADED"})).await;
    first.report_ok(&update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    app.drain_jobs().await;
    let d = deployment(&app, &id).await;
    assert_eq!((d["state"].as_str(), d["counts"]["pending"].as_u64()), (Some("PAUSED"), Some(2)), "{d}");
    assert_eq!(
        op.error_code(
            "mutation($id: ID!) { pauseDeployment(input: {id: $id}) { deployment { state } } }",
            json!({"id": id})
        )
        .await,
        "INVALID_STATE"
    );
    op.ok("mutation($id: ID!) { resumeDeployment(input: {id: $id}) { deployment { state } } }", json!({"id": id}))
        .await;
    let d = until(&app, &id, "a release after resume", |d| in_flight(d) == 1).await;
    assert_eq!(d["state"], "RUNNING");

    // Cancel while the next device downloads: it learns it on its next poll.
    let mut downloading = None;
    for sim in &sims[1..] {
        if let (StatusCode::OK, body) = sim.poll().await {
            sim.report_ok(&body["update"], json!({"status": "DOWNLOADING", "progress": 5})).await;
            downloading = Some((sim, body["update"].clone()));
        }
    }
    let (sim, update) = downloading.expect("one device downloading");
    let cancelled = op
        .ok(
            "mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { state reason } } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(cancelled["cancelDeployment"]["deployment"]["state"], "CANCELLED");
    let told = sim.update().await;
    assert_eq!((told["id"].as_str(), told["action"].as_str()), (update["id"].as_str(), Some("CANCEL")));
    assert_eq!(sim.report(&update, json!({"status": "DOWNLOADED"})).await.0, StatusCode::CONFLICT);
    sim.report_ok(&update, json!({"status": "CANCELLED"})).await;
    assert_eq!(sim.poll().await.0, StatusCode::NO_CONTENT, "the cancel was seen");
    let d = deployment(&app, &id).await;
    assert_eq!((d["counts"]["installed"].as_u64(), d["counts"]["cancelled"].as_u64()), (Some(1), Some(2)), "{d}");
}

#[tokio::test]
async fn incompatible_and_up_to_date_devices_are_skipped_and_listed() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 3).await;
    let admin = app.operator("admin");
    admin.ok("mutation { registerDevice(input: {endpointId: \"s200\", model: \"S200\"}) { secret } }", json!({})).await;
    // d01 already runs 2.0.0.
    let response = app
        .client
        .post(app.url("/device/v1/inventory"))
        .bearer_auth(&sims[1].secret)
        .json(&json!({"installed": {"firmware": "2.0.0"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let out = apply(&app, json!({"package": fleet.package, "devices": ["d00", "d01", "d02", "s200"]})).await;
    assert_eq!(out["deployment"]["targetCount"], 2);
    assert_eq!(out["deployment"]["skippedCount"], 2);
    let mut skipped: Vec<(String, String)> = out["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["endpointId"].as_str().unwrap().to_owned(), s["reason"].as_str().unwrap().to_owned()))
        .collect();
    skipped.sort();
    assert_eq!(skipped, vec![("d01".into(), "already_installed".into()), ("s200".into(), "incompatible_model".into())]);
    let d = deployment(&app, &out["deployment"]["id"]).await;
    assert_eq!(d["counts"]["skipped"], 2);
    assert_eq!(sims[1].poll().await.0, StatusCode::NO_CONTENT);
    // Unknown devices, a deprecated or unknown package: refused.
    let op = app.operator("deployment_manager");
    let body = op.gql(APPLY, json!({"i": {"package": fleet.package, "devices": ["nobody"]}})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    let body = op.gql(APPLY, json!({"i": {"package": fleet.package}})).await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "group", "{body}");
    let body = op
        .gql(APPLY, json!({"i": {"package": fleet.package, "group": fleet.group, "policy": {"phases": [50, 40]}}}))
        .await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "policy.phases[1]", "{body}");
    admin
        .ok(
            "mutation($id: ID!) { deprecatePackage(input: {id: $id}) { package { id } } }",
            json!({"id": fleet.package}),
        )
        .await;
    assert_eq!(
        op.error_code(APPLY, json!({"i": {"package": fleet.package, "group": fleet.group}})).await,
        "INVALID_STATE"
    );
    assert_eq!(
        app.operator("viewer").error_code(APPLY, json!({"i": {"package": fleet.package, "group": fleet.group}})).await,
        "FORBIDDEN"
    );
}

#[tokio::test]
async fn a_package_for_another_model_is_refused_not_applied_to_nobody() {
    let app = app().await;
    let (fleet, _sims) = fleet(&app, 1).await;
    let admin = app.operator("admin");
    admin.ok("mutation { registerDevice(input: {endpointId: \"s200\", model: \"S200\"}) { secret } }", json!({})).await;
    let s200 = admin
        .ok("mutation { createDeviceGroup(input: {name: \"s\", model: \"S200\"}) { deviceGroup { id } } }", json!({}))
        .await["createDeviceGroup"]["deviceGroup"]["id"]
        .clone();
    let before = crate::support::count_rows(app.db(), "deployment").await;
    let op = app.operator("deployment_manager");

    // A group of another model, empty or not.
    for with_member in [false, true] {
        if with_member {
            admin
                .ok(
                    "mutation($g: ID!) { addGroupMembers(input: {group: $g, devices: [\"s200\"]}) { deviceGroup { id } } }",
                    json!({"g": s200}),
                )
                .await;
        }
        let body = op.gql(APPLY, json!({"i": {"package": fleet.package, "group": s200}})).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "group", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("X100") && message.contains("S200"), "names both models: {message}");
    }
    // The same for a group's current package.
    let body = op
        .gql(
            "mutation($g: ID!, $p: ID) { setGroupPackage(input: {group: $g, package: $p}) { deployment { id } } }",
            json!({"g": s200, "p": fleet.package}),
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("S200"), "{body}");
    // A device list of another model only.
    let body = op.gql(APPLY, json!({"i": {"package": fleet.package, "devices": ["s200"]}})).await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "devices", "{body}");
    assert_eq!(crate::support::count_rows(app.db(), "deployment").await, before, "nothing was created");

    // A mixed list goes ahead, and says how many were skipped and why.
    let out = op
        .ok(
            "mutation($i: ApplyPackageInput!) { applyPackage(input: $i) { deployment { targetCount skippedCount }
                skipped { endpointId reason } skippedCounts { reason count } } }",
            json!({"i": {"package": fleet.package, "devices": ["d00", "s200"]}}),
        )
        .await["applyPackage"]
        .clone();
    assert_eq!(out["deployment"]["targetCount"], 1);
    assert_eq!(out["skipped"], json!([{"endpointId": "s200", "reason": "incompatible_model"}]));
    assert_eq!(out["skippedCounts"], json!([{"reason": "incompatible_model", "count": 1}]));
}

#[tokio::test]
async fn download_only_waits_for_release_install() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 2).await;
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group, "mode": "DOWNLOAD_ONLY"})).await;
    let id = out["deployment"]["id"].clone();
    assert_eq!(out["deployment"]["installReleased"], false);
    for sim in &sims {
        let update = sim.update().await;
        sim.report_ok(&update, json!({"status": "DOWNLOADED"})).await;
        assert_eq!(sim.update().await["action"], "DOWNLOAD", "not yet INSTALL");
        let (status, out) = sim.report(&update, json!({"status": "INSTALLING"})).await;
        assert_eq!((status, out["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("INVALID_STATE")));
    }
    app.operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { releaseInstall(input: {id: $id}) { deployment { installReleased } } }",
            json!({"id": id}),
        )
        .await;
    let audit = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"deployment.release_install\"}) { totalCount edges { node { actor { id } } } } }", json!({}))
        .await;
    assert_eq!(audit["auditEvents"]["totalCount"], 1, "audited once, as the operator's: {audit}");
    assert_eq!(audit["auditEvents"]["edges"][0]["node"]["actor"]["id"], "deployment_manager-user");
    for sim in &sims {
        let update = sim.update().await;
        assert_eq!(update["action"], "INSTALL");
        sim.report_ok(&update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    }
    until(&app, &id, "COMPLETED", |d| d["state"] == "COMPLETED").await;
}

#[tokio::test]
async fn coordinated_installs_together_and_a_failure_stops_everyone() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 3).await;
    let out = apply(&app, json!({"package": fleet.package, "devices": ["d00", "d01"], "mode": "COORDINATED"})).await;
    let id = out["deployment"]["id"].clone();
    let first = sims[0].update().await;
    sims[0].report_ok(&first, json!({"status": "DOWNLOADED"})).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sims[0].update().await["action"], "DOWNLOAD", "d01 has not downloaded yet");
    let second = sims[1].update().await;
    sims[1].report_ok(&second, json!({"status": "DOWNLOADED"})).await;
    until(&app, &id, "the install released", |d| d["installReleased"] == true).await;
    for (sim, update) in [(&sims[0], &first), (&sims[1], &second)] {
        assert_eq!(sim.update().await["action"], "INSTALL");
        sim.report_ok(update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    }
    until(&app, &id, "COMPLETED", |d| d["state"] == "COMPLETED").await;

    // A second coordinated deployment where one device fails first.
    let admin = app.operator("admin");
    admin
        .ok("mutation { createSoftwarePackage(input: {name: \"fw\", version: \"2.1.0\", type: \"URL_LIST\", models: [\"X100\"], links: [\"https://e.com/fw\"]}) { package { id } } }", json!({}))
        .await;
    let next = admin.ok("{ packages(filter: {version: \"2.1.0\"}) { edges { node { id } } } }", json!({})).await["packages"]["edges"][0]["node"]["id"].clone();
    let out = apply(&app, json!({"package": next, "devices": ["d00", "d01", "d02"], "mode": "COORDINATED"})).await;
    let id = out["deployment"]["id"].clone();
    let a = sims[0].update().await;
    sims[0].report_ok(&a, json!({"status": "DOWNLOADED"})).await;
    let b = sims[1].update().await;
    sims[1].report_ok(&b, json!({"status": "FAILED", "errcode": "E_DISK"})).await;
    let d = until(&app, &id, "ABORTED", |d| d["state"] == "ABORTED").await;
    assert!(d["reason"].as_str().unwrap().contains("coordinated"), "{d}");
    assert_eq!(sims[0].update().await["action"], "CANCEL", "d00 had downloaded; it installs nothing");
    assert_eq!(sims[0].report(&a, json!({"status": "INSTALLING"})).await.0, StatusCode::CONFLICT);
}

#[tokio::test]
async fn coordinated_with_max_in_flight_downloads_in_waves_and_a_quorum_releases_the_install() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 5).await;
    // Only for COORDINATED, and a share.
    let admin = app.operator("admin");
    for (mode, quorum) in [("STANDARD", 50), ("COORDINATED", 0), ("COORDINATED", 101)] {
        let body = admin
            .gql(
                APPLY,
                json!({"i": {"package": fleet.package, "group": fleet.group, "mode": mode,
                "policy": {"installQuorumPercent": quorum}}}),
            )
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{mode} {quorum}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "policy.installQuorumPercent", "{body}");
    }
    // Two at a time download; downloaded devices wait without holding a
    // place, so the others get their turn; 60 % of 5 = 3 downloaded
    // releases the install.
    let out = apply(
        &app,
        json!({"package": fleet.package, "group": fleet.group, "mode": "COORDINATED",
            "policy": {"maxInFlight": 2, "installQuorumPercent": 60}}),
    )
    .await;
    let id = out["deployment"]["id"].clone();
    let mut downloaded = Vec::new();
    while downloaded.len() < 3 {
        let d = until(&app, &id, "a device released", |d| {
            let c = &d["counts"];
            c["released"].as_u64().unwrap() + c["downloading"].as_u64().unwrap() > 0
        })
        .await;
        let c = &d["counts"];
        assert!(c["released"].as_u64().unwrap() + c["downloading"].as_u64().unwrap() <= 2, "maxInFlight: {d}");
        assert_eq!(d["installReleased"], false, "{d}");
        for (i, sim) in sims.iter().enumerate() {
            if downloaded.iter().any(|(j, _)| *j == i) || downloaded.len() == 3 {
                continue;
            }
            if let (StatusCode::OK, body) = sim.poll().await {
                assert_eq!(body["update"]["action"], "DOWNLOAD");
                sim.report_ok(&body["update"], json!({"status": "DOWNLOADED"})).await;
                downloaded.push((i, body["update"].clone()));
            }
        }
    }
    let d = until(&app, &id, "the install released at the quorum", |d| d["installReleased"] == true).await;
    assert_eq!(d["counts"]["downloaded"], 3, "{d}");
    for (i, update) in &downloaded {
        assert_eq!(sims[*i].update().await["action"], "INSTALL");
        sims[*i].report_ok(update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    }
    // The two late devices download, then install at once.
    for (i, sim) in sims.iter().enumerate() {
        if downloaded.iter().any(|(j, _)| *j == i) {
            continue;
        }
        let update = loop {
            if let (StatusCode::OK, body) = sim.poll().await {
                break body["update"].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        sim.report_ok(&update, json!({"status": "DOWNLOADED"})).await;
        assert_eq!(sim.update().await["action"], "INSTALL", "the install is already released");
        sim.report_ok(&update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    }
    let d = until(&app, &id, "COMPLETED", |d| d["state"] == "COMPLETED").await;
    assert_eq!(d["counts"]["installed"], 5, "{d}");
}

#[tokio::test]
async fn a_long_poll_answers_when_an_update_is_released_and_offline_devices_catch_up() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 2).await;
    let (status, etag, _) = sims[0].poll_with(None, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = sims[0].poll_with(etag.as_deref(), None).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED, "idle, and the device knows it");
    let waiting = sims[0].poll_with(etag.as_deref(), Some(30));
    let released = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        apply(&app, json!({"package": fleet.package, "group": fleet.group})).await
    };
    let started = Instant::now();
    let ((status, _, body), _) = tokio::join!(waiting, released);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["update"]["action"], "DOWNLOAD");
    assert!(started.elapsed() < Duration::from_secs(25), "answered on the release, not at the end of the wait");
    // The other device was offline all along: its update waits for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sims[1].update().await["action"], "DOWNLOAD");
}

#[tokio::test]
async fn a_package_in_use_cannot_be_deleted_and_pending_devices_cannot_poll() {
    let app = app().await;
    let (fleet, _sims) = fleet(&app, 1).await;
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group})).await;
    let delete = "mutation($id: ID!) { deletePackage(input: {id: $id}) { package { id } } }";
    assert_eq!(app.operator("package_admin").error_code(delete, json!({"id": fleet.package})).await, "CONFLICT");
    app.operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { state } } }",
            json!({"id": out["deployment"]["id"]}),
        )
        .await;
    app.operator("package_admin").ok(delete, json!({"id": fleet.package})).await;
    let _ = fleet.file;

    let token = app
        .operator("device_admin")
        .ok("mutation { createEnrollmentToken(input: {name: \"f\"}) { token } }", json!({}))
        .await["createEnrollmentToken"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let enrolled: Value = app
        .client
        .post(app.url("/device/v1/enroll"))
        .bearer_auth(&token)
        .json(&json!({"endpointId": "new", "model": "X100"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pending = DeviceClient::new(&app, "new", enrolled["secret"].as_str().unwrap().to_owned());
    assert_eq!(pending.poll().await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_enos_endpoints_with_the_seeds_bodies() {
    let app = app().await;
    let admin = app.operator("admin");
    admin.ok("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({})).await;
    let image = b"EnOS sub-device firmware v2.0.0.1".to_vec();
    let (_, package) = app.firmware_package("v2.0.0.1", "fw.bin", &image).await;
    let edge = admin
        .ok("mutation { registerDevice(input: {endpointId: \"edge\", model: \"X100\"}) { secret } }", json!({}))
        .await["registerDevice"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    for sub in ["999999", "ZR3c5CfFSO"] {
        admin
            .ok("mutation($e: String!) { registerDevice(input: {endpointId: $e, model: \"X100\", gateway: \"edge\"}) { secret } }", json!({"e": sub}))
            .await;
    }
    let post = |path: &str, body: &str| {
        app.client
            .post(app.url(path))
            .bearer_auth(&edge)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };

    // The seed's request, with nothing to update.
    let response = post(
        "/checkversion",
        r#"{
"assetId":"",
"version":"1.0.0",
"serialNum":"1234-5678-90aa"
}"#,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"assetId": "edge", "version": "1.0.0", "code": 0, "desc": "no update", "signMethod": "", "sign": "", "downloadurl": ""})
    );

    apply(&app, json!({"package": package, "devices": ["999999", "ZR3c5CfFSO"]})).await;
    let answer: Value = post("/checkversion", r#"{"assetId":"999999","version":"1.0.0","serialNum":"1234-5678-90aa"}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let md5 = hex::encode(<md5::Md5 as sha2::Digest>::digest(&image));
    assert_eq!((answer["code"].as_i64(), answer["desc"].as_str()), (Some(1), Some("has update")), "{answer}");
    assert_eq!((answer["version"].as_str(), answer["signMethod"].as_str()), (Some("v2.0.0.1"), Some("MD5")));
    assert_eq!(answer["sign"], md5);
    let url = answer["downloadurl"].as_str().unwrap().to_owned();
    assert!(url.starts_with("/version/"), "{url}");
    let bytes = app.client.get(app.url(&url)).bearer_auth(&edge).header("x-device-id", "999999").send().await.unwrap();
    assert_eq!(bytes.status(), StatusCode::OK);
    assert_eq!(bytes.bytes().await.unwrap().as_ref(), image.as_slice());
    // Not for another device.
    let other = app.client.get(app.url(&url)).bearer_auth(&edge).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);

    let in_progress = post(
        "/updateresult",
        r#"{
"assetId":"999999",
"version":"",
"desc":"updating",
"flag":1,
"process": 60,
"errcode":0
}"#,
    )
    .await
    .unwrap();
    assert_eq!(in_progress.status(), StatusCode::NO_CONTENT);
    let state = |endpoint: &'static str| {
        let app = &app;
        async move {
            app.operator("viewer")
                .ok("query($e: String!) { deviceByEndpointId(endpointId: $e) { installed { version } updates { edges { node { state progress errorCode message } } } } }", json!({"e": endpoint}))
                .await["deviceByEndpointId"]
                .clone()
        }
    };
    assert_eq!(state("999999").await["updates"]["edges"][0]["node"]["state"], "INSTALLING");
    assert_eq!(state("999999").await["updates"]["edges"][0]["node"]["progress"], 60);
    let done = post(
        "/updateresult",
        r#"{
"assetId":"999999",
"version":"v2.0.0.1",
"desc":"update completed",
"flag":2,
"process": 100,
"errcode":0
}"#,
    )
    .await
    .unwrap();
    assert_eq!(done.status(), StatusCode::NO_CONTENT);
    let device = state("999999").await;
    assert_eq!(device["updates"]["edges"][0]["node"]["state"], "INSTALLED");
    assert_eq!(device["installed"], json!([{"version": "v2.0.0.1"}]));

    // The other sub-device: downloaded, then the seed's failure.
    let answer: Value = post("/checkversion", r#"{"assetId":"ZR3c5CfFSO","version":"1.0.0","serialNum":"x"}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["downloadurl"].as_str().unwrap().trim_start_matches("/version/").to_owned();
    let ok = post(
        &format!("/downloadresult/{id}"),
        r#"{
"assetId":"ZR3c5CfFSO",
"code":1,
"message":"download success"
}"#,
    )
    .await
    .unwrap();
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(state("ZR3c5CfFSO").await["updates"]["edges"][0]["node"]["state"], "DOWNLOADED");
    let fail = post(
        &format!("/downloadresult/{id}"),
        r#"{
"assetId":"ZR3c5CfFSO",
"code":0,
"message":"download fail"
}"#,
    )
    .await
    .unwrap();
    assert_eq!(fail.status(), StatusCode::NO_CONTENT);
    let node = state("ZR3c5CfFSO").await["updates"]["edges"][0]["node"].clone();
    assert_eq!((node["state"].as_str(), node["message"].as_str()), (Some("FAILED"), Some("download fail")));

    // Errors in the seed's shape: 999999 has nothing in progress any more.
    let none = post(
        "/updateresult",
        r#"{
"assetId":"999999",
"version":"v1.0.0.3",
"desc":"during upgrade",
"flag":0,
"process":0,
"errcode":0
}"#,
    )
    .await
    .unwrap();
    assert_eq!(none.status(), StatusCode::NOT_FOUND);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["httpstatus"], 404);
    assert!(body["message"].is_string());
    // A device that is not the edge's sub-device.
    admin
        .ok("mutation { registerDevice(input: {endpointId: \"stranger\", model: \"X100\"}) { secret } }", json!({}))
        .await;
    let stranger = post("/checkversion", r#"{"assetId":"stranger","version":"1.0.0","serialNum":""}"#).await.unwrap();
    assert_eq!(stranger.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deployment_progress_is_pushed_live_and_across_servers_on_postgres() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 2).await;
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group, "policy": {"maxInFlight": 5}})).await;
    let id = out["deployment"]["id"].as_str().unwrap().to_owned();
    // On PostgreSQL, watch from a second server process on the same
    // database: the devices talk to the first one.
    let second = match crate::support::backend() {
        crate::support::Backend::Postgres => {
            let mut config = app.server().app.config.clone();
            config.listen = "127.0.0.1:0".parse().unwrap();
            config.jobs.in_process = false;
            Some(otadepot::server::Server::start(config).await.unwrap())
        }
        crate::support::Backend::Sqlite => None,
    };
    let addr = second.as_ref().map_or(app.server().addr, |s| s.addr);
    let token = app.token_for("watcher", &["viewer"]);
    let query = format!(
        "subscription {{ deploymentProgress(id: \"{id}\") {{ deployment {{ state counts {{ released downloading installed }} }} update {{ state progress device {{ endpointId }} }} }} }}"
    );
    let mut socket = crate::audit::subscribe_at(addr, Some(&token), &query).await;
    let first = crate::audit::next_json(&mut socket).await;
    assert_eq!(first["payload"]["data"]["deploymentProgress"]["deployment"]["counts"]["released"], 2, "{first}");

    // The listener on the second server may need a moment: report until a push arrives.
    let update = sims[0].update().await;
    let mut pushed = None;
    for progress in 1..50 {
        sims[0].report_ok(&update, json!({"status": "DOWNLOADING", "progress": progress})).await;
        if let Ok(message) =
            tokio::time::timeout(Duration::from_millis(300), crate::audit::next_json(&mut socket)).await
        {
            pushed = Some(message);
            break;
        }
    }
    let message = pushed.expect("a push for the report");
    let progress = &message["payload"]["data"]["deploymentProgress"];
    assert_eq!(progress["update"]["device"]["endpointId"], sims[0].endpoint_id.as_str(), "{message}");
    assert_eq!(progress["update"]["state"], "DOWNLOADING");
    assert_eq!(progress["deployment"]["counts"]["downloading"], 1);
    // Progress within the step is told to other servers after the commit,
    // in a batch (`WriteTx::notify_soon`): it arrives all the same.
    sims[0].report_ok(&update, json!({"status": "DOWNLOADING", "progress": 77})).await;
    let moved = loop {
        let message = crate::audit::next_json(&mut socket).await;
        if message["payload"]["data"]["deploymentProgress"]["update"]["progress"] == 77 {
            break message;
        }
    };
    assert_eq!(moved["payload"]["data"]["deploymentProgress"]["update"]["state"], "DOWNLOADING", "{moved}");
    // And the next report arrives too, with its progress.
    sims[0].report_ok(&update, json!({"status": "DOWNLOADED"})).await;
    let next = loop {
        let message = crate::audit::next_json(&mut socket).await;
        if message["payload"]["data"]["deploymentProgress"]["update"]["state"] == "DOWNLOADED" {
            break message;
        }
    };
    assert_eq!(next["payload"]["data"]["deploymentProgress"]["update"]["progress"], 100);
    // Both devices finish: the COMPLETED deployment is the last push.
    sims[0].report_ok(&update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    sims[1].install("2.0.0").await;
    let last = loop {
        let message = crate::audit::next_json(&mut socket).await;
        if message["type"] == "complete" {
            break message;
        }
        assert_eq!(message["type"], "next", "{message}");
        if message["payload"]["data"]["deploymentProgress"]["deployment"]["state"] == "COMPLETED" {
            let after = crate::audit::next_json(&mut socket).await;
            assert_eq!(after["type"], "complete", "{after}");
            break after;
        }
    };
    assert_eq!(last["id"], "1");
    if let Some(second) = second {
        second.shutdown();
        second.wait().await.unwrap();
    }
}

#[tokio::test]
async fn devices_joining_a_group_get_its_current_package_without_an_operator() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 1).await;
    let admin = app.operator("admin");
    let set = "mutation($g: ID!, $p: ID) { setGroupPackage(input: {group: $g, package: $p}) { deployment { id state targetCount } } }";
    let out = app.operator("deployment_manager").ok(set, json!({"g": fleet.group, "p": fleet.package})).await;
    let id = out["setGroupPackage"]["deployment"]["id"].clone();
    assert_eq!(out["setGroupPackage"]["deployment"]["targetCount"], 1);
    let group =
        admin.ok("query($id: ID!) { deviceGroup(id: $id) { currentDeploymentId } }", json!({"id": fleet.group})).await;
    assert_eq!(group["deviceGroup"]["currentDeploymentId"], id);
    sims[0].install("2.0.0").await;
    // Done for now, but it stays open for newcomers.
    app.drain_jobs().await;
    assert_eq!(deployment(&app, &id).await["state"], "RUNNING");

    // A device registered and added to the static group gets the update.
    let secret = admin
        .ok("mutation { registerDevice(input: {endpointId: \"late\", model: \"X100\"}) { secret } }", json!({}))
        .await["registerDevice"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    admin
        .ok(
            "mutation($g: ID!) { addGroupMembers(input: {group: $g, devices: [\"late\"]}) { deviceGroup { id } } }",
            json!({"g": fleet.group}),
        )
        .await;
    let late = DeviceClient::new(&app, "late", secret);
    let deadline = Instant::now() + Duration::from_secs(20);
    while late.poll().await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "the newcomer never got the update");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    late.install("2.0.0").await;

    // A dynamic group: a device that starts to match gets it too.
    let dynamic = admin
        .ok("mutation { createDeviceGroup(input: {name: \"eu\", model: \"X100\", kind: DYNAMIC, filter: {attributes: [{key: \"region\", value: \"eu\", source: REPORTED}]}}) { deviceGroup { id } } }", json!({}))
        .await["createDeviceGroup"]["deviceGroup"]["id"]
        .clone();
    admin
        .ok("mutation { createSoftwarePackage(input: {name: \"fw\", version: \"2.2.0\", type: \"URL_LIST\", models: [\"X100\"], links: [\"https://e.com/fw\"]}) { package { id } } }", json!({}))
        .await;
    let next = admin.ok("{ packages(filter: {version: \"2.2.0\"}) { edges { node { id } } } }", json!({})).await["packages"]["edges"][0]["node"]["id"].clone();
    let out = app.operator("deployment_manager").ok(set, json!({"g": dynamic, "p": next})).await;
    assert_eq!(out["setGroupPackage"]["deployment"]["targetCount"], 0, "nobody matches yet");
    assert_eq!(late.poll().await.0, StatusCode::NO_CONTENT);
    let response = app
        .client
        .post(app.url("/device/v1/inventory"))
        .bearer_auth(&late.secret)
        .json(&json!({"attributes": {"region": "eu"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let (StatusCode::OK, body) = late.poll().await {
            assert_eq!(body["update"]["manifest"]["version"], "2.2.0");
            break;
        }
        assert!(Instant::now() < deadline, "the device that started to match never got the update");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Cleared: the group has no current package any more.
    app.operator("deployment_manager").ok(set, json!({"g": dynamic, "p": null})).await;
    let group =
        admin.ok("query($id: ID!) { deviceGroup(id: $id) { currentDeploymentId } }", json!({"id": dynamic})).await;
    assert_eq!(group["deviceGroup"]["currentDeploymentId"], Value::Null);
}

#[tokio::test]
async fn start_at_holds_the_rollout_and_expires_at_stops_new_starts() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 4).await;
    let at = |ms: i64| (chrono::Utc::now() + chrono::TimeDelta::milliseconds(ms)).to_rfc3339();

    let out =
        apply(&app, json!({"package": fleet.package, "devices": ["d00", "d01"], "policy": {"startAt": at(1500)}}))
            .await;
    let scheduled = out["deployment"]["id"].clone();
    assert_eq!(out["deployment"]["state"], "SCHEDULED");
    assert_eq!(sims[0].poll().await.0, StatusCode::NO_CONTENT, "not before startAt");
    until(&app, &scheduled, "RUNNING", |d| d["state"] == "RUNNING").await;
    assert_eq!(sims[0].update().await["action"], "DOWNLOAD");

    let out = apply(
        &app,
        json!({"package": fleet.package, "devices": ["d02", "d03"], "policy": {"maxInFlight": 1, "expiresAt": at(1500)}}),
    )
    .await;
    let expiring = out["deployment"]["id"].clone();
    let (started, waiting) =
        if sims[2].poll().await.0 == StatusCode::OK { (&sims[2], &sims[3]) } else { (&sims[3], &sims[2]) };
    let update = started.update().await;
    started.report_ok(&update, json!({"status": "DOWNLOADING", "progress": 20})).await;
    let d = until(&app, &expiring, "the expiry", |d| d["reason"] == "expired").await;
    assert_eq!(d["counts"]["cancelled"], 1, "the device that never started: {d}");
    assert_eq!(waiting.poll().await.0, StatusCode::NO_CONTENT);
    // The one under way finishes, and the deployment completes.
    started.report_ok(&update, json!({"status": "DOWNLOADED"})).await;
    started.report_ok(&update, json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    let d = until(&app, &expiring, "COMPLETED", |d| d["state"] == "COMPLETED").await;
    assert_eq!(d["counts"]["installed"], 1);
}

#[tokio::test]
async fn the_device_simulator_script_plays_a_rollout_and_a_command_to_the_end() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 3).await;
    let mut csv = String::from("endpoint_id,device_id,secret\n");
    for sim in &sims {
        csv.push_str(&format!("{},-,{}\n", sim.endpoint_id, sim.secret));
    }
    let secrets = app.dir.path().join("secrets.csv");
    std::fs::write(&secrets, csv).unwrap();
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group, "policy": {"maxInFlight": 2}})).await;
    let id = out["deployment"]["id"].clone();
    let batch = app
        .operator("deployment_manager")
        .ok(
            "mutation($g: ID!) { sendCommand(input: {group: $g, name: \"REBOOT\"}) { batchId } }",
            json!({"g": fleet.group}),
        )
        .await["sendCommand"]["batchId"]
        .clone();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/simulate_devices.py");
    let (secrets, base) = (secrets.to_str().unwrap().to_owned(), app.base.clone());
    // Off the runtime: the server answers the script meanwhile.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &secrets, "--base", &base, "--step", "0.02", "--until-idle", "3", "--duration", "60"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("\"installed\": 3"), "{stdout}");
    let d = until(&app, &id, "COMPLETED", |d| d["state"] == "COMPLETED").await;
    assert_eq!(d["counts"]["installed"], 3, "{d}");
    let counts = app
        .operator("viewer")
        .ok("query($id: ID!) { commandBatch(id: $id) { counts { succeeded } } }", json!({"id": batch}))
        .await;
    assert_eq!(counts["commandBatch"]["counts"]["succeeded"], 3, "{stdout}");
}

/// A server for the devices that runs no jobs, and a second one on the same
/// database that runs them (the reconciler) on a pool of its own: the
/// first one's statement counter sees the device calls alone.
async fn devices_apart_from_jobs() -> (TestApp, otadepot::server::Server) {
    let app = TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.in_process = false;
    })
    .await;
    let mut config = app.server().app.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.jobs.in_process = true;
    config.jobs.poll_interval = Duration::from_millis(50);
    config.deployments.reconcile_interval = Duration::from_millis(200);
    let worker = otadepot::server::Server::start(config).await.unwrap();
    (app, worker)
}

#[tokio::test]
async fn a_status_report_costs_a_handful_of_statements() {
    let (app, worker) = devices_apart_from_jobs().await;
    let (fleet, sims) = fleet(&app, 1).await;
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group})).await;
    until(&app, &out["deployment"]["id"], "the release", |d| d["counts"]["released"] == 1).await;
    let update = sims[0].update().await;
    // The poll's batched last-seen write goes by first.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let counter = app.server().app.db_queries.clone();
    let mut costs = Vec::new();
    for (status, body) in [
        ("ACKNOWLEDGED", json!({"status": "ACKNOWLEDGED"})),
        ("DOWNLOADING", json!({"status": "DOWNLOADING", "progress": 10})),
        ("DOWNLOADING", json!({"status": "DOWNLOADING", "progress": 60})),
        ("DOWNLOADED", json!({"status": "DOWNLOADED"})),
        ("INSTALLING", json!({"status": "INSTALLING"})),
        ("INSTALLED_VERSION", json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})),
    ] {
        // Past the batch of deferred progress news of the previous report
        // (one NOTIFY every 100 ms for all of them, not the request's).
        tokio::time::sleep(Duration::from_millis(150)).await;
        let before = counter.get();
        let answer = sims[0].report_ok(&update, body).await;
        costs.push((status, counter.get() - before));
        assert!(answer["state"].is_string(), "{answer}");
    }
    eprintln!("statements per report: {costs:?}");
    // A step is one read (the update with its deployment), one UPDATE …
    // RETURNING and on PostgreSQL one NOTIFY (progress within a step is
    // told to other servers in a batch after the commit); DOWNLOADED also
    // brings the reconciler forward.
    let most = match crate::support::backend() {
        crate::support::Backend::Postgres => 3,
        crate::support::Backend::Sqlite => 2,
    };
    for (i, (status, cost)) in costs.iter().enumerate() {
        let allowed = match (i, *status) {
            // The second DOWNLOADING: progress only, the read and the write.
            (2, _) => 2,
            (_, "DOWNLOADED") => most + 1,
            // Also the installed version, the installation history, the
            // audit event (on PostgreSQL the chain's lock, its head and the
            // event) and the reconciler brought forward.
            (_, "INSTALLED_VERSION") => most + 6,
            _ => most,
        };
        assert!(*cost <= allowed, "{status} cost {cost} statements (at most {allowed}): {costs:?}");
    }
    let walk: u64 = costs.iter().map(|(_, c)| c).sum();
    assert!(walk <= 6 * costs.len() as u64, "the walk cost {walk} statements: {costs:?}");
    worker.shutdown();
    worker.wait().await.unwrap();
}

#[tokio::test]
async fn the_polls_a_release_wakes_share_one_read_of_the_package() {
    // Workers look for jobs once a minute (they are woken for the ones this
    // test enqueues): the server's statement counter sees what it does.
    let app = TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = Duration::from_secs(60);
    })
    .await;
    let admin = app.operator("admin");
    admin.ok("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({})).await;
    let (_, package) = app.firmware_package("2.0.0", "fw-2.0.0.bin", b"firmware 2.0.0 image").await;
    let id: uuid::Uuid = package.parse().unwrap();
    app.drain_jobs().await;
    let server = &app.server().app;
    let counter = server.db_queries.clone();

    // Twenty woken polls ask at once: one read (the package, its models,
    // its file links and their contents) for all of them.
    let before = counter.get();
    let packages = futures::future::join_all((0..20).map(|_| server.device_cache.package(&server.db, id))).await;
    let first_reads = counter.get() - before;
    let packages: Vec<_> = packages.into_iter().map(Result::unwrap).collect();
    assert!(packages.iter().all(|p| std::sync::Arc::ptr_eq(p, &packages[0])), "one shared copy");
    assert_eq!(packages[0].files[0].name, "fw-2.0.0.bin");
    assert!(
        (1..=8).contains(&first_reads),
        "{first_reads} statements for 20 concurrent reads of one package (one read)"
    );
    let before = counter.get();
    server.device_cache.package(&server.db, id).await.unwrap();
    assert_eq!(counter.get() - before, 0, "read again from the cache");

    // A write to the package (its audit event) drops the copy: the next
    // read sees the change.
    admin
        .ok(
            "mutation($id: ID!) { deprecatePackage(input: {id: $id, deprecated: true}) { package { id } } }",
            json!({"id": package}),
        )
        .await;
    let before = counter.get();
    let fresh = server.device_cache.package(&server.db, id).await.unwrap();
    assert_eq!(counter.get() - before, first_reads, "read again after the package changed");
    assert!(fresh.model.deprecated);
}

const ACTION_IDS: &str = "query($id: ID!) { deployment(id: $id) { deviceUpdates(first: 100) { edges { node { id actionId device { endpointId } } } } } }";

async fn action_ids(app: &TestApp, deployment: &Value) -> Vec<(String, i64)> {
    let body = app.operator("viewer").ok(ACTION_IDS, json!({"id": deployment})).await;
    body["deployment"]["deviceUpdates"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["node"]["id"].as_str().unwrap().to_owned(), e["node"]["actionId"].as_i64().unwrap()))
        .collect()
}

#[tokio::test]
async fn every_device_update_gets_its_own_positive_int32_action_id() {
    let app = app().await;
    let (fleet, _sims) = fleet(&app, 4).await;
    // Several deployments, each inserting its updates in one multi-row INSERT.
    let mut all = Vec::new();
    for _ in 0..3 {
        let out = apply(&app, json!({"package": fleet.package, "group": fleet.group})).await;
        let ids = action_ids(&app, &out["deployment"]["id"]).await;
        assert_eq!(ids.len(), 4, "{ids:?}");
        all.extend(ids);
    }
    let numbers: std::collections::BTreeSet<i64> = all.iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers.len(), all.len(), "unique across deployments: {all:?}");
    assert!(numbers.iter().all(|n| (1..=i64::from(i32::MAX)).contains(n)), "{all:?}");

    // A deleted update's number is not given again.
    let highest = *numbers.last().unwrap();
    let highest_id = all.iter().find(|(_, n)| *n == highest).unwrap().0.clone();
    {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        entity::device_update::Entity::delete_many()
            .filter(entity::device_update::Column::Id.eq(highest_id.parse::<uuid::Uuid>().unwrap()))
            .exec(app.db())
            .await
            .unwrap();
    }
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group})).await;
    let next = action_ids(&app, &out["deployment"]["id"]).await;
    assert!(next.iter().all(|(_, n)| *n > highest), "{next:?} after {highest}");
}

#[tokio::test]
async fn the_action_id_migration_numbers_existing_updates_and_goes_down_and_up() {
    use migration::MigratorTrait;
    let app = app().await;
    let (fleet, _sims) = fleet(&app, 3).await;
    let first = apply(&app, json!({"package": fleet.package, "group": fleet.group})).await["deployment"]["id"].clone();
    let second = apply(&app, json!({"package": fleet.package, "group": fleet.group})).await["deployment"]["id"].clone();

    // Back to just before the action ids (and whatever came after them).
    let migrations = migration::Migrator::migrations();
    let at = migrations.iter().position(|m| m.name() == "m20261203_000019_add_device_update_action_id").unwrap();
    migration::Migrator::down(app.db(), Some((migrations.len() - at) as u32)).await.unwrap();
    assert_eq!(crate::support::count_rows(app.db(), "device_update").await, 6, "the updates survive the way down");
    migration::Migrator::up(app.db(), None).await.unwrap();

    // Numbered 1.. in creation order: the first deployment's before the second's.
    let mut numbered = action_ids(&app, &first).await;
    numbered.extend(action_ids(&app, &second).await);
    let mut numbers: Vec<i64> = numbered.iter().map(|(_, n)| *n).collect();
    let first_max = numbers[..3].iter().max().copied().unwrap();
    assert!(numbers[3..].iter().all(|n| *n > first_max), "{numbered:?}");
    numbers.sort_unstable();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6]);
    // New updates go on after them.
    let third = apply(&app, json!({"package": fleet.package, "group": fleet.group})).await["deployment"]["id"].clone();
    let mut next: Vec<i64> = action_ids(&app, &third).await.into_iter().map(|(_, n)| n).collect();
    next.sort_unstable();
    assert_eq!(next, [7, 8, 9]);
}

const ACTION_TYPE: &str = "query($id: ID!) { deployment(id: $id) { mode policy { actionType } } }";

#[tokio::test]
async fn the_action_type_is_forced_unless_soft_is_asked_for_and_is_audited() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 2).await;
    let viewer = app.operator("viewer");

    let forced = apply(&app, json!({"package": fleet.package, "devices": ["d00"]})).await["deployment"]["id"].clone();
    let read = viewer.ok(ACTION_TYPE, json!({"id": forced})).await;
    assert_eq!(read["deployment"]["policy"]["actionType"], "FORCED", "the default: {read}");

    let soft = apply(
        &app,
        json!({"package": fleet.package, "devices": ["d01"], "policy": {"actionType": "SOFT", "maxInFlight": 1}}),
    )
    .await["deployment"]["id"]
        .clone();
    let read = viewer.ok(ACTION_TYPE, json!({"id": soft})).await;
    assert_eq!(read["deployment"]["policy"]["actionType"], "SOFT", "{read}");
    let stored =
        crate::support::query_i64(app.db(), "SELECT COUNT(*) AS n FROM deployment WHERE action_type = 'SOFT'").await;
    assert_eq!(stored, 1, "stored on the deployment row");
    let events = app
        .operator("auditor")
        .ok("query($id: String) { auditEvents(filter: {objectId: $id, action: \"deployment.create\"}) { edges { node { details } } } }", json!({"id": soft}))
        .await;
    assert_eq!(events["auditEvents"]["edges"][0]["node"]["details"]["policy"]["action_type"], "SOFT", "{events}");

    // The device protocol's answer does not change with it.
    let (status, body) = sims[1].poll().await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.to_string().find("SOFT").is_none(), "{body}");

    // A value outside the enum is refused before anything is written.
    let before = crate::support::count_rows(app.db(), "deployment").await;
    let body = app
        .operator("deployment_manager")
        .gql(
            APPLY,
            json!({"i": {"package": fleet.package, "devices": ["d00"], "policy": {"actionType": "TIMEFORCED"}}}),
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(crate::support::count_rows(app.db(), "deployment").await, before);
}

const CANCEL_UPDATE: &str =
    "mutation($id: ID!) { cancelDeviceUpdate(input: {id: $id}) { deviceUpdate { id state message } } }";

#[tokio::test]
async fn one_devices_update_is_cancelled_alone_and_its_device_acknowledges() {
    let app = app().await;
    let (fleet, sims) = fleet(&app, 3).await;
    let out = apply(&app, json!({"package": fleet.package, "group": fleet.group})).await;
    let id = out["deployment"]["id"].clone();
    let updates: Vec<Value> = {
        let mut all = Vec::new();
        for sim in &sims {
            all.push(sim.update().await);
        }
        all
    };
    // d02 is installing: too late to cancel.
    for status in ["DOWNLOADED", "INSTALLING"] {
        sims[2].report_ok(&updates[2], json!({"status": status})).await;
    }
    let manager = app.operator("deployment_manager");
    let body = manager.gql(CANCEL_UPDATE, json!({"id": updates[2]["id"]})).await;
    assert_eq!(error_code(&body), "INVALID_STATE", "{body}");
    // Not everyone may cancel.
    let body = app.operator("viewer").gql(CANCEL_UPDATE, json!({"id": updates[0]["id"]})).await;
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");

    // d00 holds a long poll when its update is cancelled: it wakes with CANCEL.
    let (_, etag, _) = sims[0].poll_with(None, None).await;
    let waiting = sims[0].poll_with(etag.as_deref(), Some(20));
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        manager.ok(CANCEL_UPDATE, json!({"id": updates[0]["id"]})).await
    };
    let started = Instant::now();
    let ((status, _, woke), cancelled) = tokio::join!(waiting, cancel);
    assert!(started.elapsed() < Duration::from_secs(10), "the long poll woke: {:?}", started.elapsed());
    let cancelled = &cancelled["cancelDeviceUpdate"]["deviceUpdate"];
    assert_eq!((&cancelled["state"], &cancelled["message"]), (&json!("CANCELLED"), &json!("cancelled by an operator")));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(woke["update"]["action"], "CANCEL", "{woke}");
    sims[0].report_ok(&updates[0], json!({"status": "CANCELLED"})).await;
    assert_eq!(sims[0].poll().await.0, StatusCode::NO_CONTENT, "acknowledged: nothing left");
    let body = manager.gql(CANCEL_UPDATE, json!({"id": updates[0]["id"]})).await;
    assert_eq!(error_code(&body), "INVALID_STATE", "once: {body}");

    // The others go on; the deployment completes with one cancelled.
    sims[1].install("2.0.0").await;
    sims[2].report_ok(&updates[2], json!({"status": "INSTALLED_VERSION", "version": "2.0.0"})).await;
    let done = until(&app, &id, "completed", |d| d["state"] == "COMPLETED").await;
    assert_eq!((&done["counts"]["installed"], &done["counts"]["cancelled"]), (&json!(2), &json!(1)), "{done}");
    let audit = app
        .operator("auditor")
        .ok(
            "query($id: String) { auditEvents(filter: {objectId: $id, action: \"device_update.cancel\"}) { edges { node { details actor { kind id } } } } }",
            json!({"id": updates[0]["id"]}),
        )
        .await;
    let event = &audit["auditEvents"]["edges"][0]["node"];
    assert_eq!(event["details"]["state_before"], "RELEASED", "{audit}");
    assert_eq!(event["actor"], json!({"kind": "user", "id": "deployment_manager-user"}), "{audit}");
}

#[tokio::test]
async fn a_device_is_told_the_maintenance_window_and_installs_only_inside_it() {
    use crate::ddi::window_from_now;
    let app = app().await;
    let (fleet, sims) = fleet(&app, 2).await;
    // Weekly on every day but with a zone, closed now: the policy reads back as given.
    let window =
        json!({"days": ["SATURDAY", "MONDAY"], "start": "03:15", "durationMinutes": 90, "timezone": "Europe/Berlin"});
    let out =
        apply(&app, json!({"package": fleet.package, "devices": ["d00"], "policy": {"maintenanceWindow": window}}))
            .await;
    let read = app
        .operator("viewer")
        .ok("query($id: ID!) { deployment(id: $id) { policy { maintenanceWindow { days start durationMinutes timezone } } } }", json!({"id": out["deployment"]["id"]}))
        .await;
    assert_eq!(
        read["deployment"]["policy"]["maintenanceWindow"],
        json!({"days": ["MONDAY", "SATURDAY"], "start": "03:15", "durationMinutes": 90, "timezone": "Europe/Berlin"}),
        "{read}"
    );
    let events = app
        .operator("auditor")
        .ok("query($id: String) { auditEvents(filter: {objectId: $id, action: \"deployment.create\"}) { edges { node { details } } } }", json!({"id": out["deployment"]["id"]}))
        .await;
    assert_eq!(
        events["auditEvents"]["edges"][0]["node"]["details"]["policy"]["maintenance_window"]["timezone"],
        "Europe/Berlin"
    );
    app.operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { id } } }",
            json!({"id": out["deployment"]["id"]}),
        )
        .await;
    sims[0].report_ok(&sims[0].update().await, json!({"status": "CANCELLED"})).await;

    // Closed now (it opens in three hours): downloads go on, the install waits.
    let closed = apply(&app, json!({"package": fleet.package, "devices": ["d00"], "policy": {"maintenanceWindow": window_from_now(180, 60)}})).await;
    let (_, etag, body) = sims[0].poll_with(None, None).await;
    let update = body["update"].clone();
    assert_eq!(update["deploymentId"], closed["deployment"]["id"]);
    assert_eq!(update["maintenanceWindow"]["open"], false, "{update}");
    assert!(
        update["maintenanceWindow"]["opensAt"].is_string() && update["maintenanceWindow"].get("closesAt").is_none(),
        "{update}"
    );
    for status in ["ACKNOWLEDGED", "DOWNLOADING", "DOWNLOADED"] {
        sims[0].report_ok(&update, json!({"status": status})).await;
    }
    for status in ["INSTALLING", "INSTALLED_VERSION"] {
        let (code, body) = sims[0].report(&update, json!({"status": status, "version": "2.0.0"})).await;
        assert_eq!(code, StatusCode::CONFLICT, "{status}: {body}");
        assert!(body.to_string().contains("maintenance window"), "{body}");
    }
    assert!(etag.is_some());

    // Open now: told so, with when it closes, and the install goes through.
    let open = apply(&app, json!({"package": fleet.package, "devices": ["d01"], "policy": {"maintenanceWindow": window_from_now(-30, 120)}})).await;
    let update = sims[1].update().await;
    assert_eq!(update["deploymentId"], open["deployment"]["id"]);
    assert_eq!(update["maintenanceWindow"]["open"], true, "{update}");
    assert!(update["maintenanceWindow"]["closesAt"].is_string(), "{update}");
    sims[1].install("2.0.0").await;

    // A bad window is refused before anything is written, naming the field.
    let before = crate::support::count_rows(app.db(), "deployment").await;
    for (window, field) in [
        (json!({"start": "25:00", "durationMinutes": 60}), "policy.maintenanceWindow.start"),
        (json!({"start": "01:00", "durationMinutes": 0}), "policy.maintenanceWindow.durationMinutes"),
        (
            json!({"start": "01:00", "durationMinutes": 60, "timezone": "Moon/Base"}),
            "policy.maintenanceWindow.timezone",
        ),
    ] {
        let body = app
            .operator("deployment_manager")
            .gql(
                APPLY,
                json!({"i": {"package": fleet.package, "devices": ["d01"], "policy": {"maintenanceWindow": window}}}),
            )
            .await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    assert_eq!(crate::support::count_rows(app.db(), "deployment").await, before);
}
