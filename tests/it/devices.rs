//! Devices: registration (one and in bulk), the device secret, inventory,
//! last seen, decommissioning, filters; groups static and dynamic.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, count_rows, error_code};

const REGISTER: &str = "mutation($i: RegisterDeviceInput!) { registerDevice(input: $i) {
    secret device { id endpointId serial status model { name } attributes { key value } lastSeenAt } } }";
const REGISTER_MANY: &str = "mutation($d: [RegisterDeviceInput!]!) { registerDevices(input: {devices: $d}) {
    count devices { secret device { id endpointId } } } }";
const DEVICE: &str = "query($id: ID!) { device(id: $id) { endpointId status lastSeenAt
    installed { component version } attributes { key value } reportedAttributes { key value } } }";
const COUNT: &str = "query($f: DeviceFilter) { devices(filter: $f) { totalCount } }";

async fn model(app: &TestApp, name: &str) -> String {
    app.operator("device_admin")
        .ok("mutation($n: String!) { createDeviceModel(input: {name: $n}) { deviceModel { id } } }", json!({"n": name}))
        .await["createDeviceModel"]["deviceModel"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn register(app: &TestApp, input: Value) -> (String, String) {
    let out = app.operator("device_admin").ok(REGISTER, json!({"i": input})).await["registerDevice"].clone();
    (out["device"]["id"].as_str().unwrap().to_owned(), out["secret"].as_str().unwrap().to_owned())
}

async fn device_get(app: &TestApp, secret: &str, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).bearer_auth(secret).send().await.unwrap()
}

async fn inventory(app: &TestApp, secret: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url("/device/v1/inventory")).bearer_auth(secret).json(&body).send().await.unwrap()
}

async fn count(app: &TestApp, filter: Value) -> i64 {
    app.operator("viewer").ok(COUNT, json!({"f": filter})).await["devices"]["totalCount"].as_i64().unwrap()
}

#[tokio::test]
async fn a_registered_device_authenticates_with_its_secret_only() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    let out = app
        .operator("device_admin")
        .ok(REGISTER, json!({"i": {"endpointId": "a0001", "serial": "SN-1", "model": "X100", "attributes": [{"key": "region", "value": "eu"}]}}))
        .await["registerDevice"]
        .clone();
    let secret = out["secret"].as_str().unwrap().to_owned();
    let id = out["device"]["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("otd_"));
    assert_eq!(out["device"]["status"], "REGISTERED");
    assert_eq!(out["device"]["model"]["name"], "X100");
    assert_eq!(out["device"]["attributes"], json!([{"key": "region", "value": "eu"}]));
    // Only a hash is stored.
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()));
    let by = |value: &str| format!("SELECT COUNT(*) AS n FROM device WHERE credential_hash = '{value}'");
    assert_eq!(crate::support::query_i64(app.db(), &by(&hash)).await, 1);
    assert_eq!(crate::support::query_i64(app.db(), &by(&secret)).await, 0);

    let response = device_get(&app, &secret, "/device/v1/device").await;
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["endpointId"], "a0001");
    let device = seen(&app, &id, |d| d["status"] == "ACTIVE").await;
    assert!(device["lastSeenAt"].is_string(), "first contact");

    // A wrong secret, a made-up one, an operator token, nothing: 401.
    let mut wrong = secret.clone();
    wrong.pop();
    wrong.push(if secret.ends_with('A') { 'B' } else { 'A' });
    let operator = app.token_for("ops", &["admin"]);
    for token in [wrong.as_str(), "otd_nonsense", &operator] {
        assert_eq!(device_get(&app, token, "/device/v1/device").await.status(), StatusCode::UNAUTHORIZED, "{token}");
    }
    assert_eq!(app.client.get(app.url("/device/v1/device")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // A device secret is no operator token.
    let body = app.with_token(&secret).gql("{ devices { totalCount } }", json!({})).await;
    assert_eq!(error_code(&body), "UNAUTHENTICATED", "{body}");

    // Rotation: the old secret stops working at once.
    let rotated = app
        .operator("device_admin")
        .ok("mutation($id: ID!) { rotateDeviceCredential(input: {id: $id}) { secret } }", json!({"id": id}))
        .await["rotateDeviceCredential"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(device_get(&app, &secret, "/device/v1/device").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(device_get(&app, &rotated, "/device/v1/device").await.status(), StatusCode::OK);

    // Decommissioned: 401 for good.
    app.operator("device_admin")
        .ok("mutation($id: ID!) { decommissionDevice(input: {id: $id}) { device { status } } }", json!({"id": id}))
        .await;
    assert_eq!(device_get(&app, &rotated, "/device/v1/device").await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn registration_refuses_duplicates_unknown_models_and_bad_input() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    register(&app, json!({"endpointId": "a0001", "model": "X100"})).await;
    let op = app.operator("device_admin");
    assert_eq!(op.error_code(REGISTER, json!({"i": {"endpointId": "a0001", "model": "X100"}})).await, "CONFLICT");
    let body = op.gql(REGISTER, json!({"i": {"endpointId": "a0002", "model": "NO-SUCH"}})).await;
    assert_eq!(
        (error_code(&body), body["errors"][0]["extensions"]["field"].clone()),
        ("BAD_USER_INPUT".into(), json!("model"))
    );
    for (input, field) in [
        (json!({"endpointId": "has space", "model": "X100"}), "endpointId"),
        (json!({"endpointId": "", "model": "X100"}), "endpointId"),
        (
            json!({"endpointId": "a3", "model": "X100", "attributes": [{"key": "bad key", "value": "v"}]}),
            "attributes.key",
        ),
        (json!({"endpointId": "a4", "model": "X100", "gateway": "nope"}), "gateway"),
    ] {
        let body = op.gql(REGISTER, json!({"i": input})).await;
        assert_eq!(error_code(&body), "BAD_USER_INPUT", "{input}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }
    assert_eq!(count_rows(app.db(), "device").await, 1);
    assert_eq!(
        app.operator("package_admin").error_code(REGISTER, json!({"i": {"endpointId": "a9", "model": "X100"}})).await,
        "FORBIDDEN"
    );
}

#[tokio::test]
async fn a_bulk_registration_is_all_or_nothing_and_names_every_bad_row() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    register(&app, json!({"endpointId": "taken", "model": "X100"})).await;
    let mut rows: Vec<Value> =
        (0..2000).map(|i| json!({"endpointId": format!("dev-{i:05}"), "model": "X100"})).collect();
    rows[7] = json!({"endpointId": "taken", "model": "X100"});
    rows[42] = json!({"endpointId": "dev-00001", "model": "X100"});
    rows[99] = json!({"endpointId": "dev-x", "model": "NOPE"});
    let body = app.operator("device_admin").gql(REGISTER_MANY, json!({"d": rows})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    let bad: Vec<(u64, String)> = body["errors"][0]["extensions"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["row"].as_u64().unwrap(), r["field"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(bad, vec![(7, "endpointId".into()), (42, "endpointId".into()), (99, "model".into())]);
    assert_eq!(count_rows(app.db(), "device").await, 1, "nothing written");

    rows[7] = json!({"endpointId": "gw-1", "model": "X100"});
    rows[42] = json!({"endpointId": "dev-sub", "model": "X100", "gateway": "gw-1", "attributes": [{"key": "site", "value": "A"}]});
    rows[99] = json!({"endpointId": "dev-x", "model": "X100"});
    let out = app.operator("device_admin").ok(REGISTER_MANY, json!({"d": rows})).await["registerDevices"].clone();
    assert_eq!(out["count"], 2000);
    let secrets: std::collections::BTreeSet<&str> =
        out["devices"].as_array().unwrap().iter().map(|d| d["secret"].as_str().unwrap()).collect();
    assert_eq!(secrets.len(), 2000, "a secret each");
    assert_eq!(count_rows(app.db(), "device").await, 2001);
    let sub = app
        .operator("viewer")
        .ok("{ deviceByEndpointId(endpointId: \"dev-sub\") { gatewayId attributes { key value } } }", json!({}))
        .await;
    assert_eq!(sub["deviceByEndpointId"]["gatewayId"], out["devices"][7]["device"]["id"]);
    // One audit event for the batch, naming the devices.
    let events = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"device.register_batch\"}) { edges { node { details } } } }", json!({}))
        .await;
    assert_eq!(events["auditEvents"]["edges"][0]["node"]["details"]["count"], 2000);
    // Over the limit.
    let too_many: Vec<Value> = (0..10_001).map(|i| json!({"endpointId": format!("m{i}"), "model": "X100"})).collect();
    let body = app.operator("device_admin").gql(REGISTER_MANY, json!({"d": too_many})).await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "devices", "{}", body["errors"][0]);
}

#[tokio::test]
async fn inventory_updates_versions_and_attributes_and_filters_find_them() {
    let app = TestApp::start().await;
    let x100 = model(&app, "X100").await;
    model(&app, "S200").await;
    let (id, secret) = register(&app, json!({"endpointId": "a1", "model": "X100"})).await;
    let (_, secret2) = register(&app, json!({"endpointId": "a2", "serial": "SN-B", "model": "X100"})).await;
    register(&app, json!({"endpointId": "s1", "model": "S200"})).await;

    let response = inventory(
        &app,
        &secret,
        json!({"installed": {"firmware": "1.2.0", "agent": "0.4"}, "attributes": {"region": "eu-west", "ram": 512}}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!(me["installed"], json!({"agent": "0.4", "firmware": "1.2.0"}));
    assert_eq!(me["attributes"], json!({"ram": "512", "region": "eu-west"}));
    inventory(&app, &secret2, json!({"installed": {"firmware": "1.1.0"}, "attributes": {"region": "us"}})).await;
    // null removes; what is not named stays.
    inventory(&app, &secret, json!({"installed": {"agent": null}})).await;
    let device = app.operator("viewer").ok(DEVICE, json!({"id": id})).await["device"].clone();
    assert_eq!(device["installed"], json!([{"component": "firmware", "version": "1.2.0"}]));
    assert_eq!(device["reportedAttributes"].as_array().unwrap().len(), 2);
    assert_eq!(device["attributes"], json!([]), "a device reports no operator attributes");

    // Bad reports are refused and change nothing.
    for body in [
        json!({"installed": {"bad name": "1"}}),
        json!({"installed": {"firmware": ""}}),
        json!({"installed": {"a": "1", "b": "1", "c": "1", "d": "1", "e": "1", "f": "1", "g": "1", "h": "1", "i": "1"}}),
        json!({"attributes": {"x": {"nested": true}}}),
        json!({"surprise": 1}),
        json!([1, 2]),
    ] {
        assert_eq!(inventory(&app, &secret, body.clone()).await.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let after = app.operator("viewer").ok(DEVICE, json!({"id": id})).await["device"].clone();
    assert_eq!(
        (&after["installed"], &after["reportedAttributes"]),
        (&device["installed"], &device["reportedAttributes"])
    );

    assert_eq!(count(&app, json!({"model": x100})).await, 2);
    let reported = |mut filter: Value| {
        filter["source"] = json!("REPORTED");
        json!({ "attribute": filter })
    };
    assert_eq!(count(&app, reported(json!({"key": "region", "value": "eu-west"}))).await, 1);
    assert_eq!(count(&app, reported(json!({"key": "region", "op": "PREFIX", "value": "eu"}))).await, 1);
    assert_eq!(count(&app, reported(json!({"key": "region", "op": "IN", "values": ["eu-west", "us"]}))).await, 2);
    assert_eq!(count(&app, reported(json!({"key": "ram", "op": "EXISTS"}))).await, 1);
    assert_eq!(count(&app, json!({"attribute": {"key": "ram", "op": "EXISTS"}})).await, 0, "operator attributes");
    assert_eq!(count(&app, json!({"installedVersion": {"component": "firmware", "version": "1.1.0"}})).await, 1);
    assert_eq!(
        count(&app, json!({"installedVersion": {"component": "firmware", "op": "PREFIX", "version": "1."}})).await,
        2
    );
    assert_eq!(count(&app, json!({"search": "sn-b"})).await, 1, "serial, any case");
    assert_eq!(count(&app, json!({"search": "%"})).await, 0, "LIKE characters are literal");
    // Last seen and ACTIVE are written in batches (every 50 ms in tests).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count(&app, json!({"lastSeenAfter": "2000-01-01T00:00:00Z"})).await < 2 {
        assert!(std::time::Instant::now() < deadline, "last seen never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&app, json!({"status": "ACTIVE"})).await, 2);
    assert_eq!(count(&app, json!({"status": "REGISTERED"})).await, 1);
    assert_eq!(count(&app, json!({"lastSeenBefore": "2000-01-01T00:00:00Z"})).await, 0);
}

#[tokio::test]
async fn last_seen_is_written_at_most_once_a_minute() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    let (id, secret) = register(&app, json!({"endpointId": "a1", "model": "X100"})).await;
    device_get(&app, &secret, "/device/v1/device").await;
    // Written in the next batch (every 50 ms in tests, 10 s by default).
    let first = seen(&app, &id, |d| d["lastSeenAt"].is_string()).await["lastSeenAt"].clone();
    for _ in 0..5 {
        assert_eq!(device_get(&app, &secret, "/device/v1/device").await.status(), StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    let after = app.operator("viewer").ok(DEVICE, json!({"id": id})).await["device"]["lastSeenAt"].clone();
    assert_eq!(first, after, "requests within a minute do not write");

    // Once it is older than a minute, the next request writes it.
    sea_orm::ConnectionTrait::execute_unprepared(
        app.db(),
        &format!("UPDATE device SET last_seen_at = '2020-01-01 00:00:00+00:00' WHERE id = '{id}'"),
    )
    .await
    .unwrap();
    // This process caches the device row; tell it the row changed.
    app.server().app.publish(otadepot::app::Event::DeviceChanged(id.parse().unwrap()));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    device_get(&app, &secret, "/device/v1/device").await;
    let later = seen(&app, &id, |d| d["lastSeenAt"].as_str().is_some_and(|s| s > "2021")).await;
    assert!(later["lastSeenAt"].as_str().unwrap() > "2021", "{later}");
}

/// The device once `done` holds (last seen is written in batches).
async fn seen(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let device = app.operator("viewer").ok(DEVICE, json!({"id": id})).await["device"].clone();
        if done(&device) {
            return device;
        }
        assert!(std::time::Instant::now() < deadline, "{device}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const CREATE_GROUP: &str = "mutation($i: CreateDeviceGroupInput!) { createDeviceGroup(input: $i) {
    deviceGroup { id name kind model { name } deviceCount filter { attributes { key op value } } } } }";
const GROUP: &str = "query($id: ID!) { deviceGroup(id: $id) { deviceCount devices(first: 100) { totalCount edges { node { endpointId } } } } }";
const ADD: &str = "mutation($g: ID!, $d: [ID!]!) { addGroupMembers(input: {group: $g, devices: $d}) { deviceGroup { deviceCount } } }";
const REMOVE: &str = "mutation($g: ID!, $d: [ID!]!) { removeGroupMembers(input: {group: $g, devices: $d}) { deviceGroup { deviceCount } } }";

#[tokio::test]
async fn static_and_dynamic_groups_hold_devices_of_their_model() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    model(&app, "S200").await;
    let mut secrets = Vec::new();
    for i in 0..5 {
        let (_, secret) = register(&app, json!({"endpointId": format!("x{i}"), "model": "X100"})).await;
        secrets.push(secret);
    }
    register(&app, json!({"endpointId": "s0", "model": "S200"})).await;
    let group =
        |name: &str, kind: &str, filter: Value| json!({"name": name, "model": "X100", "kind": kind, "filter": filter});

    // Static: listed members of the group's model only.
    let st = app.operator("device_admin").ok(CREATE_GROUP, json!({"i": group("pilot", "STATIC", Value::Null)})).await
        ["createDeviceGroup"]["deviceGroup"]
        .clone();
    assert_eq!(st["deviceCount"], 0);
    let op = app.operator("device_admin");
    assert_eq!(
        op.ok(ADD, json!({"g": st["id"], "d": ["x0", "x1", "x2"]})).await["addGroupMembers"]["deviceGroup"]["deviceCount"],
        3
    );
    assert_eq!(
        op.ok(ADD, json!({"g": st["id"], "d": ["x1"]})).await["addGroupMembers"]["deviceGroup"]["deviceCount"],
        3,
        "idempotent"
    );
    let body = op.gql(ADD, json!({"g": st["id"], "d": ["x3", "s0"]})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("s0"), "names the device: {body}");
    assert_eq!(
        app.operator("viewer").ok(GROUP, json!({"id": st["id"]})).await["deviceGroup"]["deviceCount"],
        3,
        "all or nothing"
    );
    assert_eq!(op.error_code(ADD, json!({"g": st["id"], "d": ["nobody"]})).await, "BAD_USER_INPUT");
    assert_eq!(
        op.ok(REMOVE, json!({"g": st["id"], "d": ["x0"]})).await["removeGroupMembers"]["deviceGroup"]["deviceCount"],
        2
    );
    assert_eq!(count(&app, json!({"group": st["id"]})).await, 2);

    // Dynamic: whatever matches now.
    let dy = app
        .operator("device_admin")
        .ok(CREATE_GROUP, json!({"i": group("eu fleet", "DYNAMIC", json!({"attributes": [{"key": "region", "op": "PREFIX", "value": "eu", "source": "REPORTED"}]}))}))
        .await["createDeviceGroup"]["deviceGroup"]
        .clone();
    assert_eq!(dy["deviceCount"], 0);
    assert_eq!(dy["filter"]["attributes"], json!([{"key": "region", "op": "PREFIX", "value": "eu"}]));
    for secret in &secrets[..3] {
        inventory(&app, secret, json!({"attributes": {"region": "eu-central"}})).await;
    }
    let read = app.operator("viewer").ok(GROUP, json!({"id": dy["id"]})).await["deviceGroup"].clone();
    assert_eq!(read["deviceCount"], 3);
    assert_eq!(read["devices"]["totalCount"], 3);
    // A device moving away leaves it.
    inventory(&app, &secrets[0], json!({"attributes": {"region": "us"}})).await;
    assert_eq!(app.operator("viewer").ok(GROUP, json!({"id": dy["id"]})).await["deviceGroup"]["deviceCount"], 2);
    // A dynamic group has no listed members; a static one no filter.
    assert_eq!(op.error_code(ADD, json!({"g": dy["id"], "d": ["x4"]})).await, "INVALID_STATE");
    let body = op.gql(CREATE_GROUP, json!({"i": group("bad", "STATIC", json!({"attributes": []}))})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert_eq!(op.error_code(CREATE_GROUP, json!({"i": group("pilot", "STATIC", Value::Null)})).await, "CONFLICT");
    let body = op.gql(CREATE_GROUP, json!({"i": {"name": "n", "model": "NOPE"}})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");

    // Decommissioned devices leave every group; the model stays in use.
    let x1 = app.operator("viewer").ok("{ deviceByEndpointId(endpointId: \"x1\") { id } }", json!({})).await["deviceByEndpointId"]["id"].clone();
    op.ok("mutation($id: ID!) { decommissionDevice(input: {id: $id}) { device { status } } }", json!({"id": x1})).await;
    assert_eq!(app.operator("viewer").ok(GROUP, json!({"id": dy["id"]})).await["deviceGroup"]["deviceCount"], 1);
    assert_eq!(app.operator("viewer").ok(GROUP, json!({"id": st["id"]})).await["deviceGroup"]["deviceCount"], 1);
    let x100 = app.operator("viewer").ok("{ deviceModels { edges { node { id name } } } }", json!({})).await;
    let x100 = x100["deviceModels"]["edges"].as_array().unwrap().iter().find(|e| e["node"]["name"] == "X100").unwrap()
        ["node"]["id"]
        .clone();
    assert_eq!(
        op.error_code(
            "mutation($id: ID!) { deleteDeviceModel(input: {id: $id}) { deviceModel { id } } }",
            json!({"id": x100})
        )
        .await,
        "CONFLICT"
    );
    // Groups need GROUP_WRITE.
    assert_eq!(
        app.operator("viewer").error_code(CREATE_GROUP, json!({"i": group("v", "STATIC", Value::Null)})).await,
        "FORBIDDEN"
    );
    app.operator("device_admin")
        .ok(
            "mutation($id: ID!) { deleteDeviceGroup(input: {id: $id}) { deviceGroup { name } } }",
            json!({"id": st["id"]}),
        )
        .await;
    assert_eq!(count_rows(app.db(), "device_group_member").await, 0);
}

#[tokio::test]
async fn a_device_downloads_only_files_of_packages_for_its_model() {
    let app = TestApp::start_unscanned().await;
    model(&app, "X100").await;
    model(&app, "S200").await;
    let (file, _) = app.promoted("fw.bin", b"x100 firmware").await;
    let (other, _) = app.promoted("other.bin", b"not in a package").await;
    app.operator("package_admin")
        .ok(
            "mutation($f: ID!) { createSoftwarePackage(input: {name: \"fw\", version: \"1.0.0\", type: \"URL_LIST\", models: [\"X100\"], files: [$f]}) { package { id } } }",
            json!({"f": file}),
        )
        .await;
    let (_, x) = register(&app, json!({"endpointId": "x1", "model": "X100"})).await;
    let (_, s) = register(&app, json!({"endpointId": "s1", "model": "S200"})).await;
    register(&app, json!({"endpointId": "s2", "model": "S200", "gateway": "x1"})).await;
    register(&app, json!({"endpointId": "x2", "model": "X100", "gateway": "s1"})).await;
    let get = |secret: String, id: String| {
        let app = &app;
        async move { device_get(app, &secret, &format!("/repo/{id}/f.bin")).await }
    };
    let ok = get(x.clone(), file.clone()).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.bytes().await.unwrap().as_ref(), b"x100 firmware");
    assert_eq!(get(s.clone(), file.clone()).await.status(), StatusCode::NOT_FOUND, "another model's device");
    assert_eq!(get(x.clone(), other).await.status(), StatusCode::NOT_FOUND, "not a package file");
    // A gateway downloads for its sub-device, by the sub-device's rights.
    let via = |gateway: &str, device: &str| {
        app.client
            .get(app.url(&format!("/repo/{file}/f.bin")))
            .bearer_auth(gateway)
            .header("x-device-id", device)
            .send()
    };
    assert_eq!(via(&s, "x2").await.unwrap().status(), StatusCode::OK, "an S200 gateway fetches for its X100");
    assert_eq!(via(&x, "s2").await.unwrap().status(), StatusCode::NOT_FOUND, "its S200 sub-device may not");
    assert_eq!(via(&x, "x2").await.unwrap().status(), StatusCode::NOT_FOUND, "not its sub-device");
}

#[tokio::test]
async fn a_page_of_devices_costs_the_same_queries_for_10_or_100_devices() {
    // No background workers: only the requests below touch the database.
    let app = TestApp::start_with(|c| c.jobs.in_process = false).await;
    model(&app, "X100").await;
    let rows: Vec<Value> = (0..150)
        .map(|i| {
            json!({"endpointId": format!("d{i:03}"), "model": "X100",
                   "attributes": [{"key": "region", "value": if i % 2 == 0 { "eu" } else { "us" }}, {"key": "rack", "value": format!("r{i}")}]})
        })
        .collect();
    let out = app.operator("device_admin").ok(REGISTER_MANY, json!({"d": rows})).await["registerDevices"].clone();
    for d in out["devices"].as_array().unwrap().iter().take(120) {
        inventory(&app, d["secret"].as_str().unwrap(), json!({"installed": {"firmware": "1.0.0", "agent": "2.0"}}))
            .await;
    }
    let ids: Vec<Value> = out["devices"].as_array().unwrap().iter().map(|d| d["device"]["id"].clone()).collect();
    let op = app.operator("device_admin");
    let st = op.ok(CREATE_GROUP, json!({"i": {"name": "all", "model": "X100"}})).await["createDeviceGroup"]["deviceGroup"]["id"].clone();
    op.ok(ADD, json!({"g": st, "d": ids})).await;
    let dy = op
        .ok(
            CREATE_GROUP,
            json!({"i": {"name": "eu", "model": "X100", "kind": "DYNAMIC",
            "filter": {"attributes": [{"key": "region", "value": "eu"}]}}}),
        )
        .await["createDeviceGroup"]["deviceGroup"]["id"]
        .clone();

    // Let the batch of "last seen" writes for the reports above go by.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = "query($f: DeviceFilter, $n: Int) { devices(filter: $f, first: $n) { totalCount edges { node {
        endpointId status model { name } attributes { key value } installed { component version } } } } }";
    let counter = app.server().app.db_queries.clone();
    let viewer = app.operator("viewer");
    let queries = |query: &'static str, variables: Value| {
        let (counter, viewer) = (counter.clone(), &viewer);
        async move {
            let before = counter.get();
            let data = viewer.ok(query, variables).await;
            (counter.get() - before, data)
        }
    };
    for filter in [
        Value::Null,
        json!({"model": "X100"}),
        json!({"attribute": {"key": "region", "value": "eu"}}),
        json!({"installedVersion": {"component": "firmware", "op": "PREFIX", "version": "1."}}),
        json!({"group": st}),
        json!({"group": dy}),
        json!({"search": "d1"}),
    ] {
        let filter =
            if filter.get("model").is_some() { json!({"model": model_id(&app, "X100").await}) } else { filter };
        let (small, page) = queries(list, json!({"f": filter, "n": 10})).await;
        assert_eq!(page["devices"]["edges"].as_array().unwrap().len(), 10, "{filter}");
        let (large, page) = queries(list, json!({"f": filter, "n": 100})).await;
        assert!(page["devices"]["edges"].as_array().unwrap().len() >= 50, "{filter}");
        assert_eq!(small, large, "{filter}: 10 devices took {small} queries, 100 took {large}");
        // The rows, then models, both attribute sets and installed versions,
        // plus the count and a group's lookup.
        assert!(large <= 9, "{filter}: {large} queries for a page");
    }
    let group = "query($id: ID!, $n: Int) { deviceGroup(id: $id) { deviceCount devices(first: $n) { edges { node {
        endpointId attributes { key } installed { version } model { name } } } } } }";
    let (small, _) = queries(group, json!({"id": st, "n": 10})).await;
    let (large, _) = queries(group, json!({"id": st, "n": 100})).await;
    assert_eq!(small, large);
}

async fn model_id(app: &TestApp, name: &str) -> Value {
    let models = app.operator("viewer").ok("{ deviceModels { edges { node { id name } } } }", json!({})).await;
    models["deviceModels"]["edges"].as_array().unwrap().iter().find(|e| e["node"]["name"] == name).unwrap()["node"]["id"]
        .clone()
}

async fn enroll(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url("/device/v1/enroll")).bearer_auth(token).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn devices_enroll_with_a_token_and_wait_for_approval() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    model(&app, "S200").await;
    let op = app.operator("device_admin");
    let created = op
        .ok("mutation { createEnrollmentToken(input: {name: \"factory\", model: \"X100\", expiresInSeconds: 3600}) { token enrollmentToken { id model { name } expiresAt } } }", json!({}))
        .await["createEnrollmentToken"]
        .clone();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ote_"));
    assert_eq!(created["enrollmentToken"]["model"]["name"], "X100");

    let response =
        enroll(&app, &token, json!({"endpointId": "f1", "serial": "SN-F1", "attributes": {"batch": "7"}})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let f1: Value = response.json().await.unwrap();
    assert_eq!((f1["status"].as_str(), f1["model"].as_str()), (Some("PENDING"), Some("X100")));
    let secret = f1["secret"].as_str().unwrap().to_owned();
    // Pending: it may ask who it is, nothing else.
    let me: Value = device_get(&app, &secret, "/device/v1/device").await.json().await.unwrap();
    assert_eq!(me["status"], "PENDING");
    assert_eq!(
        inventory(&app, &secret, json!({"installed": {"firmware": "1.0"}})).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(count(&app, json!({"status": "PENDING"})).await, 1);

    // The token's rules.
    assert_eq!(
        enroll(&app, &token, json!({"endpointId": "f9", "model": "S200"})).await.status(),
        StatusCode::BAD_REQUEST
    );
    // A taken endpoint id: an answer like any other (tests/it/device_limits.rs).
    assert_eq!(enroll(&app, &token, json!({"endpointId": "f1"})).await.status(), StatusCode::CREATED);
    let operator = app.token_for("ops", &["admin"]);
    for bad in [format!("{}x", &token[..token.len() - 1]), "ote_nonsense".into(), operator, secret.clone()] {
        assert_eq!(enroll(&app, &bad, json!({"endpointId": "f8"})).await.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }

    // Approved: a device like any other.
    let approved =
        op.ok("mutation { approveDevices(input: {devices: [\"f1\"]}) { devices { status } } }", json!({})).await;
    assert_eq!(approved["approveDevices"]["devices"][0]["status"], "REGISTERED");
    assert_eq!(inventory(&app, &secret, json!({"installed": {"firmware": "1.0"}})).await.status(), StatusCode::OK);
    assert_eq!(
        op.error_code("mutation { approveDevices(input: {devices: [\"f1\"]}) { devices { status } } }", json!({}))
            .await,
        "INVALID_STATE"
    );

    // Rejected: its credential never works.
    let f2: Value = enroll(&app, &token, json!({"endpointId": "f2"})).await.json().await.unwrap();
    op.ok("mutation { rejectDevices(input: {devices: [\"f2\"]}) { devices { status } } }", json!({})).await;
    assert_eq!(
        device_get(&app, f2["secret"].as_str().unwrap(), "/device/v1/device").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Revoked: no more enrollments.
    op.ok(
        "mutation($id: ID!) { revokeEnrollmentToken(input: {id: $id}) { enrollmentToken { revokedAt } } }",
        json!({"id": created["enrollmentToken"]["id"]}),
    )
    .await;
    assert_eq!(enroll(&app, &token, json!({"endpointId": "f3"})).await.status(), StatusCode::UNAUTHORIZED);
    let events = app
        .operator("auditor")
        .ok(
            "{ auditEvents(filter: {action: \"device.enroll\"}) { totalCount edges { node { actor { kind id } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(events["auditEvents"]["totalCount"], 2);
    assert_eq!(
        events["auditEvents"]["edges"][0]["node"]["actor"],
        json!({"kind": "system", "id": "enrollment:factory"})
    );
}

#[tokio::test]
async fn a_gateway_acts_for_its_sub_devices_and_no_other() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    let (_, gw) = register(&app, json!({"endpointId": "gw", "model": "X100"})).await;
    let (_, sub) = register(&app, json!({"endpointId": "sub", "model": "X100", "gateway": "gw"})).await;
    let (other_id, _) = register(&app, json!({"endpointId": "other", "model": "X100"})).await;
    let as_gateway = |secret: &str, device: &str, path: &str| {
        app.client.get(app.url(path)).bearer_auth(secret).header("x-device-id", device).send()
    };

    let me: Value = as_gateway(&gw, "sub", "/device/v1/device").await.unwrap().json().await.unwrap();
    assert_eq!(me["endpointId"], "sub");
    let response = app
        .client
        .post(app.url("/device/v1/inventory"))
        .bearer_auth(&gw)
        .header("x-device-id", "sub")
        .json(&json!({"installed": {"firmware": "3.1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(count(&app, json!({"installedVersion": {"component": "firmware", "version": "3.1"}})).await, 1);

    for (secret, device) in [(&gw, "other"), (&gw, "nobody"), (&sub, "gw")] {
        assert_eq!(
            as_gateway(secret, device, "/device/v1/device").await.unwrap().status(),
            StatusCode::NOT_FOUND,
            "{device}"
        );
    }
    let op = app.operator("device_admin");
    let set =
        "mutation($d: ID!, $g: String) { setDeviceGateway(input: {device: $d, gateway: $g}) { device { gatewayId } } }";
    op.ok(set, json!({"d": other_id, "g": "gw"})).await;
    assert_eq!(as_gateway(&gw, "other", "/device/v1/device").await.unwrap().status(), StatusCode::OK);
    op.ok(set, json!({"d": other_id, "g": null})).await;
    assert_eq!(as_gateway(&gw, "other", "/device/v1/device").await.unwrap().status(), StatusCode::NOT_FOUND);
    let gw_id = app.operator("viewer").ok("{ deviceByEndpointId(endpointId: \"gw\") { id } }", json!({})).await["deviceByEndpointId"]["id"].clone();
    assert_eq!(op.error_code(set, json!({"d": gw_id, "g": "gw"})).await, "BAD_USER_INPUT");
    assert_eq!(op.error_code(set, json!({"d": gw_id, "g": "sub"})).await, "BAD_USER_INPUT", "no cycles");
}

/// A device whose row another transaction held while the background flush
/// activated devices (PostgreSQL skips locked rows there, so the flush never
/// waits for a row while it holds the audit chain) is handed back and
/// activated at the next flush, not a minute later at its next call.
#[tokio::test]
async fn a_device_whose_row_was_held_during_activation_becomes_active_at_the_next_flush() {
    use sea_orm::ConnectionTrait;
    if crate::support::backend() != crate::support::Backend::Postgres {
        return; // SQLite serializes writers: nothing is skipped there.
    }
    let app = TestApp::start().await;
    model(&app, "X100").await;
    let (id, secret) = register(&app, json!({"endpointId": "held", "model": "X100"})).await;

    // Hold the audit chain, so the flush writes last seen and then waits.
    let chain = otadepot::db::begin_write(app.db()).await.unwrap();
    otadepot::service::audit::serialize_writes(&chain).await.unwrap();
    assert_eq!(device_get(&app, &secret, "/device/v1/device").await.status(), StatusCode::OK);
    let device = seen(&app, &id, |d| d["lastSeenAt"].is_string()).await;
    assert_eq!(device["status"], "REGISTERED", "{device}");

    // Hold the device's row, then let the flush have the chain: it skips
    // the row.
    let row = otadepot::db::begin_write(app.db()).await.unwrap();
    row.execute_unprepared(&format!("SELECT id FROM device WHERE id = '{id}' FOR UPDATE")).await.unwrap();
    chain.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let device = app.operator("viewer").ok(DEVICE, json!({"id": id})).await["device"].clone();
    assert_eq!(device["status"], "REGISTERED", "the flush skipped the held row: {device}");
    row.commit().await.unwrap();

    // No further call of the device: the next flushes activate it.
    let device = seen(&app, &id, |d| d["status"] == "ACTIVE").await;
    assert_eq!(device["status"], "ACTIVE");
    app.stop().await;
}
