//! Remote commands, driven by simulated devices over real HTTP: delivery
//! with the poll, acknowledgements and results, batch counts, expiry,
//! cancel, and the `commandUpdated` subscription.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{DeviceClient, TestApp, error_code};

const SEND: &str = "mutation($i: SendCommandInput!) { sendCommand(input: $i) {
    batchId batch { total counts { queued } } commands { totalCount edges { node { id state deviceId } } } } }";
const BATCH: &str = "query($id: ID!) { commandBatch(id: $id) { name total
    counts { queued delivered acknowledged succeeded failed expired cancelled } } }";
const COMMAND: &str = "query($id: ID!) { command(id: $id) { id name args state result message deliveredAt finishedAt
    device { endpointId } } }";

async fn app() -> TestApp {
    TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = Duration::from_millis(50);
        c.commands.expire_interval = Duration::from_millis(200);
        c.commands.custom_names = vec!["FACTORY_RESET".into()];
        c.commands.max_args_bytes = 256;
    })
    .await
}

/// `n` devices of model X100 (d00, d01, ...) and a group "fleet" of them.
async fn fleet(app: &TestApp, n: usize) -> (String, Vec<DeviceClient<'_>>) {
    let admin = app.operator("admin");
    admin.ok("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({})).await;
    let (group, devices) = crate::support::fleet_in_group(app, n, "X100", "fleet").await;
    (group, DeviceClient::all(app, devices))
}

async fn send(app: &TestApp, input: Value) -> Value {
    app.operator("deployment_manager").ok(SEND, json!({"i": input})).await["sendCommand"].clone()
}

async fn command(app: &TestApp, id: &str) -> Value {
    app.operator("viewer").ok(COMMAND, json!({"id": id})).await["command"].clone()
}

async fn batch(app: &TestApp, id: &Value) -> Value {
    app.operator("viewer").ok(BATCH, json!({"id": id})).await["commandBatch"].clone()
}

#[tokio::test]
async fn reboot_reaches_one_device_and_its_result_comes_back() {
    let app = app().await;
    let (_, devices) = fleet(&app, 2).await;
    let d = &devices[0];
    let out = send(&app, json!({"devices": ["d00"], "name": "REBOOT", "args": {"delaySeconds": 5}})).await;
    assert_eq!(out["batch"]["total"], 1);
    assert_eq!(out["batch"]["counts"]["queued"], 1);
    let id = out["commands"]["edges"][0]["node"]["id"].as_str().unwrap().to_owned();
    assert_eq!(command(&app, &id).await["state"], "QUEUED");

    // The poll hands it out and marks it DELIVERED.
    let (status, etag, body) = d.poll_with(None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["update"], Value::Null);
    let commands = body["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 1, "{body}");
    assert_eq!(commands[0]["id"], id.as_str());
    assert_eq!(commands[0]["name"], "REBOOT");
    assert_eq!(commands[0]["args"], json!({"delaySeconds": 5}));
    assert!(commands[0]["expiresAt"].is_string());
    let c = command(&app, &id).await;
    assert_eq!(c["state"], "DELIVERED");
    assert!(c["deliveredAt"].is_string());
    // Unacknowledged, it stays in the answer; the ETag says nothing changed.
    let (status, _, _) = d.poll_with(etag.as_deref(), None).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(d.commands().await.len(), 1, "delivered again until acknowledged");
    // The other device has nothing.
    assert_eq!(devices[1].poll_with(None, None).await.0, StatusCode::NO_CONTENT);

    // The outcome comes after the acknowledgement.
    let (status, out) = d.command_result(&id, json!({"status": "SUCCEEDED"})).await;
    assert_eq!((status, out["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("INVALID_STATE")), "{out}");
    assert_eq!(d.command_ok(&id, json!({"status": "ACKNOWLEDGED"})).await["state"], "ACKNOWLEDGED");
    assert_eq!(
        d.command_ok(&id, json!({"status": "ACKNOWLEDGED"})).await["state"],
        "ACKNOWLEDGED",
        "a retry changes nothing"
    );
    assert!(d.commands().await.is_empty(), "acknowledged: no longer handed out");
    let out = d.command_ok(&id, json!({"status": "SUCCEEDED", "result": {"uptime": 3}, "message": "rebooted"})).await;
    assert_eq!(out["state"], "SUCCEEDED");
    let c = command(&app, &id).await;
    assert_eq!(c["state"], "SUCCEEDED");
    assert_eq!(c["result"], json!({"uptime": 3}));
    assert_eq!(c["message"], "rebooted");
    assert_eq!(c["device"]["endpointId"], "d00");
    assert!(c["finishedAt"].is_string());
    // Final: a second result is refused.
    let (status, out) = d.command_result(&id, json!({"status": "FAILED"})).await;
    assert_eq!((status, out["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("INVALID_STATE")), "{out}");

    // The device's history, and the audit trail filtered by device.
    let viewer = app.operator("admin");
    let device_id =
        viewer.ok("{ deviceByEndpointId(endpointId: \"d00\") { id } }", json!({})).await["deviceByEndpointId"]["id"]
            .clone();
    let listed = viewer
        .ok(
            "query($id: ID!) { device(id: $id) { commands { totalCount edges { node { name state } } } } }",
            json!({"id": device_id}),
        )
        .await;
    assert_eq!(listed["device"]["commands"]["totalCount"], 1);
    let audit = app
        .operator("auditor")
        .ok(
            "query($d: ID!) { auditEvents(filter: {device: $d}) { edges { node { action objectId } } } }",
            json!({"d": device_id}),
        )
        .await;
    let actions: Vec<&str> = audit["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"command.succeeded"), "{actions:?}");
    let other = viewer.ok("{ deviceByEndpointId(endpointId: \"d01\") { id } }", json!({})).await["deviceByEndpointId"]
        ["id"]
        .clone();
    let audit = app
        .operator("auditor")
        .ok("query($d: ID!) { auditEvents(filter: {device: $d}) { edges { node { action } } } }", json!({"d": other}))
        .await;
    assert!(!audit.to_string().contains("command.succeeded"), "another device's events: {audit}");
    let sent = app
        .operator("auditor")
        .ok(
            "{ auditEvents(filter: {action: \"command.send\"}) { edges { node { details actor { id } } } } }",
            json!({}),
        )
        .await;
    let event = &sent["auditEvents"]["edges"][0]["node"];
    assert_eq!(event["details"]["name"], "REBOOT");
    assert_eq!(event["details"]["devices"], 1);
    assert_eq!(event["actor"]["id"], "deployment_manager-user");
}

#[tokio::test]
async fn a_group_batch_counts_mixed_results_and_the_subscription_follows_it() {
    let app = app().await;
    let (group, devices) = fleet(&app, 4).await;
    let out = send(&app, json!({"group": group, "name": "RESTART_AGENT"})).await;
    let batch_id = out["batchId"].clone();
    assert_eq!(out["batch"]["total"], 4);
    assert_eq!(out["commands"]["totalCount"], 4);

    let token = app.token_for("watcher", &["viewer"]);
    let query = format!(
        "subscription {{ commandUpdated(batch: \"{}\") {{ batch {{ counts {{ queued delivered acknowledged succeeded failed }} }} command {{ state device {{ endpointId }} }} }} }}",
        batch_id.as_str().unwrap()
    );
    let mut socket = crate::audit::subscribe_at(app.server().addr, Some(&token), &query).await;
    let first = crate::audit::next_json(&mut socket).await;
    assert_eq!(first["payload"]["data"]["commandUpdated"]["batch"]["counts"]["queued"], 4, "{first}");

    // d00 succeeds, d01 fails, d02 acknowledges only, d03 is offline.
    for (device, outcome) in devices.iter().zip(["SUCCEEDED", "FAILED", "ACKNOWLEDGED"]) {
        let commands = device.commands().await;
        assert_eq!(commands.len(), 1);
        let id = commands[0]["id"].as_str().unwrap();
        assert_eq!(commands[0]["name"], "RESTART_AGENT");
        device.command_ok(id, json!({"status": "ACKNOWLEDGED"})).await;
        if outcome != "ACKNOWLEDGED" {
            device
                .command_ok(id, json!({"status": outcome, "message": format!("{outcome} on {}", device.endpoint_id)}))
                .await;
        }
    }
    let b = batch(&app, &batch_id).await;
    assert_eq!(b["name"], "RESTART_AGENT");
    assert_eq!(
        b["counts"],
        json!({"queued": 1, "delivered": 0, "acknowledged": 1, "succeeded": 1, "failed": 1, "expired": 0, "cancelled": 0})
    );
    let failed = app
        .operator("viewer")
        .ok(
            "query($b: ID!) { commands(filter: {batch: $b, state: FAILED}) { totalCount edges { node { message device { endpointId } } } } }",
            json!({"b": batch_id}),
        )
        .await;
    assert_eq!(failed["commands"]["totalCount"], 1);
    assert_eq!(failed["commands"]["edges"][0]["node"]["device"]["endpointId"], "d01");
    let by_device = app
        .operator("viewer")
        .ok(
            "{ commands(filter: {device: \"d03\", name: \"RESTART_AGENT\"}) { totalCount edges { node { state } } } }",
            json!({}),
        )
        .await;
    assert_eq!(by_device["commands"]["edges"][0]["node"]["state"], "QUEUED");
    // By device id as well; a device that does not exist has no commands.
    let d03 = app.operator("viewer").ok("{ deviceByEndpointId(endpointId: \"d03\") { id } }", json!({})).await
        ["deviceByEndpointId"]["id"]
        .clone();
    for (device, total) in [(d03, 1), (json!("nobody"), 0)] {
        let out = app
            .operator("viewer")
            .ok("query($d: ID!) { commands(filter: {device: $d}) { totalCount } }", json!({"d": device}))
            .await;
        assert_eq!(out["commands"]["totalCount"], total, "{device}");
    }

    // The subscription saw every step; its last push has the final counts.
    let mut last = Value::Null;
    let mut seen_failed = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let message = crate::audit::next_json(&mut socket).await;
        let update = message["payload"]["data"]["commandUpdated"].clone();
        if update["command"]["state"] == "FAILED" {
            assert_eq!(update["command"]["device"]["endpointId"], "d01");
            seen_failed = true;
        }
        last = update["batch"]["counts"].clone();
        // A push of the batch alone can bring the final counts before the
        // push that names the failed command: wait for both.
        if seen_failed && last["succeeded"] == 1 && last["failed"] == 1 && last["acknowledged"] == 1 {
            break;
        }
    }
    assert!(seen_failed, "a push named the failed command");
    assert_eq!(last["queued"], 1, "{last}");
}

#[tokio::test]
async fn overdue_commands_expire_and_are_never_handed_out() {
    let app = app().await;
    let (_, devices) = fleet(&app, 2).await;
    let out = send(&app, json!({"devices": ["d00", "d01"], "name": "REBOOT", "expiresInSeconds": 1})).await;
    let batch_id = out["batchId"].clone();
    // d00 takes it in time; d01 never comes.
    let commands = devices[0].commands().await;
    let id = commands[0]["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let b = batch(&app, &batch_id).await;
        if b["counts"]["expired"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not expired: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(command(&app, &id).await["state"], "EXPIRED");
    assert_eq!(devices[1].poll_with(None, None).await.0, StatusCode::NO_CONTENT, "an expired command is not delivered");
    let (status, out) = devices[0].command_result(&id, json!({"status": "SUCCEEDED"})).await;
    assert_eq!((status, out["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("INVALID_STATE")), "{out}");
    let audit = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"command_batch.expire\"}) { totalCount edges { node { objectId actor { kind } } } } }", json!({}))
        .await;
    assert!(audit["auditEvents"]["totalCount"].as_u64().unwrap() >= 1, "{audit}");
    assert_eq!(audit["auditEvents"]["edges"][0]["node"]["objectId"], batch_id);
}

#[tokio::test]
async fn cancel_before_and_after_delivery() {
    let app = app().await;
    let (group, devices) = fleet(&app, 3).await;
    let manager = app.operator("deployment_manager");
    let cancel = "mutation($id: ID!) { cancelCommand(input: {id: $id}) { command { state } } }";

    // Before delivery: the device never sees it.
    let out = send(&app, json!({"devices": ["d00"], "name": "REBOOT"})).await;
    let id = out["commands"]["edges"][0]["node"]["id"].clone();
    assert_eq!(manager.ok(cancel, json!({"id": id})).await["cancelCommand"]["command"]["state"], "CANCELLED");
    assert_eq!(devices[0].poll_with(None, None).await.0, StatusCode::NO_CONTENT);

    // After delivery: it leaves the poll, and the device's result is refused.
    let out = send(&app, json!({"devices": ["d00"], "name": "FACTORY_RESET", "args": {"keepNetwork": true}})).await;
    let id = out["commands"]["edges"][0]["node"]["id"].as_str().unwrap().to_owned();
    let (status, etag, _) = devices[0].poll_with(None, None).await;
    assert_eq!(status, StatusCode::OK);
    devices[0].command_ok(&id, json!({"status": "ACKNOWLEDGED"})).await;
    assert_eq!(manager.ok(cancel, json!({"id": id})).await["cancelCommand"]["command"]["state"], "CANCELLED");
    let (status, out) = devices[0].command_result(&id, json!({"status": "SUCCEEDED"})).await;
    assert_eq!((status, out["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("INVALID_STATE")), "{out}");
    assert_eq!(devices[0].poll_with(etag.as_deref(), None).await.0, StatusCode::NO_CONTENT);
    // Cancelling a finished command is an INVALID_STATE.
    assert_eq!(manager.error_code(cancel, json!({"id": id})).await, "INVALID_STATE");

    // A whole batch: the finished command stays as it was.
    let out = send(&app, json!({"group": group, "name": "REBOOT"})).await;
    let batch_id = out["batchId"].clone();
    let commands = devices[1].commands().await;
    let first = commands[0]["id"].as_str().unwrap();
    devices[1].command_ok(first, json!({"status": "ACKNOWLEDGED"})).await;
    devices[1].command_ok(first, json!({"status": "SUCCEEDED"})).await;
    let out = manager
        .ok(
            "mutation($id: ID!) { cancelCommandBatch(input: {id: $id}) { batch { counts { succeeded cancelled } } } }",
            json!({"id": batch_id}),
        )
        .await;
    assert_eq!(out["cancelCommandBatch"]["batch"]["counts"], json!({"succeeded": 1, "cancelled": 2}));
    for device in &devices {
        assert!(device.commands().await.is_empty(), "{}", device.endpoint_id);
    }
    // Every command finished: a subscription gets the counts, then completes.
    let token = app.token_for("watcher", &["viewer"]);
    let query = format!(
        "subscription {{ commandUpdated(batch: \"{}\") {{ batch {{ counts {{ cancelled }} }} }} }}",
        batch_id.as_str().unwrap()
    );
    let mut socket = crate::audit::subscribe_at(app.server().addr, Some(&token), &query).await;
    let first = crate::audit::next_json(&mut socket).await;
    assert_eq!(first["payload"]["data"]["commandUpdated"]["batch"]["counts"]["cancelled"], 2, "{first}");
    assert_eq!(crate::audit::next_json(&mut socket).await["type"], "complete");
    let audit = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"command*\"}) { edges { node { action } } } }", json!({}))
        .await;
    let actions: Vec<&str> = audit["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.iter().filter(|a| **a == "command.cancel").count(), 2, "{actions:?}");
    assert!(actions.contains(&"command_batch.cancel"), "{actions:?}");
}

#[tokio::test]
async fn devices_see_only_their_own_commands_and_bad_input_is_refused() {
    let app = app().await;
    let (_, devices) = fleet(&app, 2).await;
    let out = send(&app, json!({"devices": ["d00"], "name": "REBOOT"})).await;
    let id = out["commands"]["edges"][0]["node"]["id"].as_str().unwrap().to_owned();
    // Another device's command is not found, whatever it posts.
    let (status, out) = devices[1].command_result(&id, json!({"status": "SUCCEEDED"})).await;
    assert_eq!((status, out["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")), "{out}");
    assert_eq!(command(&app, &id).await["state"], "QUEUED", "unchanged");
    let (status, _) = devices[1].command_result("not-an-id", json!({"status": "SUCCEEDED"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An unknown status or field, a result too large.
    for (body, field) in [
        (json!({"status": "DONE"}), "status"),
        (json!({"status": "SUCCEEDED", "extra": 1}), "extra"),
        (json!({"status": "SUCCEEDED", "result": {"blob": "x".repeat(300)}}), "result"),
    ] {
        let (status, out) = devices[0].command_result(&id, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
        assert_eq!(out["error"]["field"], field, "{out}");
    }
    // Without a device credential.
    let response = app
        .client
        .post(app.url(&format!("/device/v1/commands/{id}")))
        .json(&json!({"status": "SUCCEEDED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let manager = app.operator("deployment_manager");
    for (input, field) in [
        (json!({"devices": ["d00"], "name": "SELF_DESTRUCT"}), "name"),
        (json!({"devices": ["d00"], "name": "reboot"}), "name"),
        (json!({"devices": ["d00"], "name": "REBOOT", "args": {"blob": "x".repeat(300)}}), "args"),
        (json!({"devices": ["d00"], "name": "REBOOT", "expiresInSeconds": 0}), "expiresInSeconds"),
        (json!({"devices": ["nobody"], "name": "REBOOT"}), "devices"),
        (json!({"name": "REBOOT"}), "group"),
    ] {
        let body = manager.gql(SEND, json!({"i": input})).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{input}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{input}: {body}");
    }
    // Nothing half-written: still the one command.
    let all = app.operator("viewer").ok("{ commands { totalCount } }", json!({})).await;
    assert_eq!(all["commands"]["totalCount"], 1);
    // A viewer reads but cannot send.
    let body = app.operator("viewer").gql(SEND, json!({"i": {"devices": ["d00"], "name": "REBOOT"}})).await;
    assert_eq!(error_code(&body), "FORBIDDEN");
}

#[tokio::test]
async fn a_long_poll_answers_when_a_command_is_sent() {
    let app = app().await;
    let (_, devices) = fleet(&app, 1).await;
    let (status, etag, _) = devices[0].poll_with(None, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let waiting = devices[0].poll_with(etag.as_deref(), Some(30));
    let sent = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(&app, json!({"devices": ["d00"], "name": "REBOOT"})).await
    };
    let started = Instant::now();
    let ((status, _, body), _) = tokio::join!(waiting, sent);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["commands"][0]["name"], "REBOOT");
    assert!(started.elapsed() < Duration::from_secs(25), "answered on the send, not at the end of the wait");
}

#[tokio::test]
async fn a_page_of_commands_reads_their_devices_at_once() {
    // No job workers: nothing else queries the database meanwhile.
    let app = TestApp::start_with(|c| c.jobs.in_process = false).await;
    let (group, _) = fleet(&app, 4).await;
    let batch_id = send(&app, json!({"group": group, "name": "REBOOT"})).await["batchId"].clone();
    let counter = app.server().app.db_queries.clone();
    let page = "query($b: ID!, $n: Int) { commands(filter: {batch: $b}, first: $n) { edges { node { device { endpointId model { name } } } } } }";
    let mut costs = Vec::new();
    for n in [1, 4] {
        let before = counter.get();
        let out = app.operator("viewer").ok(page, json!({"b": batch_id, "n": n})).await;
        assert_eq!(out["commands"]["edges"].as_array().unwrap().len(), n);
        costs.push(counter.get() - before);
    }
    assert_eq!(costs[0], costs[1], "queries for 1 and for 4 commands: {costs:?}");
}
