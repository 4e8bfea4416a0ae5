//! What a device may not do (issue 11, items 8 to 11): act as a gateway
//! more than one level deep, enroll past a token's quota or rate, learn
//! whether an endpoint id exists, write an operator attribute, or flood
//! the server with writes.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, count_rows, error_code, query_i64};

const REGISTER: &str = "mutation($i: RegisterDeviceInput!) { registerDevice(input: $i) { secret device { id } } }";
const REGISTER_MANY: &str = "mutation($d: [RegisterDeviceInput!]!) { registerDevices(input: {devices: $d}) { count } }";
const SET_GATEWAY: &str =
    "mutation($d: ID!, $g: String) { setDeviceGateway(input: {device: $d, gateway: $g}) { device { gatewayId } } }";

async fn model(app: &TestApp, name: &str) {
    app.operator("device_admin")
        .ok("mutation($n: String!) { createDeviceModel(input: {name: $n}) { deviceModel { id } } }", json!({"n": name}))
        .await;
}

/// (device id, secret)
async fn register(app: &TestApp, input: Value) -> (String, String) {
    let out = app.operator("device_admin").ok(REGISTER, json!({"i": input})).await["registerDevice"].clone();
    (out["device"]["id"].as_str().unwrap().to_owned(), out["secret"].as_str().unwrap().to_owned())
}

fn post(app: &TestApp, secret: &str, path: &str, body: Value) -> reqwest::RequestBuilder {
    app.client.post(app.url(path)).bearer_auth(secret).json(&body)
}

#[tokio::test]
async fn a_gateway_acts_for_its_own_sub_devices_only_one_level_deep() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    let (g_id, g) = register(&app, json!({"endpointId": "G", "model": "X100"})).await;
    let (_, s) = register(&app, json!({"endpointId": "S", "model": "X100", "gateway": "G"})).await;
    register(&app, json!({"endpointId": "T", "model": "X100"})).await;
    // A chain as the database may hold it from before the rule (the API
    // refuses to make one, below): S is the gateway of T.
    sea_orm::ConnectionTrait::execute_unprepared(
        app.db(),
        "UPDATE device SET gateway_id = (SELECT id FROM device WHERE endpoint_id = 'S') WHERE endpoint_id = 'T'",
    )
    .await
    .unwrap();

    // G, acting as S, names T as the EnOS asset: refused like any device
    // that is not G's own sub-device, on every EnOS route that takes one.
    let via_s = |path: &str, body: Value| post(&app, &g, path, body).header("x-device-id", "S").send();
    for (path, body) in [
        ("/checkversion", json!({"assetId": "T", "version": "1.0.0"})),
        ("/updateresult", json!({"assetId": "T", "version": "1.0.0", "flag": 1, "process": 10})),
        ("/downloadresult/0193a0a0-0000-7000-8000-000000000000", json!({"assetId": "T", "code": 1})),
    ] {
        let response = via_s(path, body).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["httpstatus"], 404, "{error}");
    }
    let installed = "SELECT COUNT(*) AS n FROM device_installed";
    assert_eq!(query_i64(app.db(), installed).await, 0, "T's version was not recorded");
    // Each one level is fine: G for S, S for its own T.
    let answer: Value =
        via_s("/checkversion", json!({"assetId": "S", "version": ""})).await.unwrap().json().await.unwrap();
    assert_eq!(answer["assetId"], "S", "{answer}");
    let answer: Value = post(&app, &s, "/checkversion", json!({"assetId": "T", "version": ""}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["assetId"], "T", "{answer}");
    // X-Device-Id and downloads: T is not G's.
    let get =
        |path: &str, device: &str| app.client.get(app.url(path)).bearer_auth(&g).header("x-device-id", device).send();
    assert_eq!(get("/device/v1/device", "T").await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(get("/device/v1/device", "S").await.unwrap().status(), StatusCode::OK);
    assert_eq!(get("/repo/sha256/00", "T").await.unwrap().status(), StatusCode::NOT_FOUND);

    // The API makes no chain and no cycle, of any length.
    let op = app.operator("device_admin");
    let (u_id, _) = register(&app, json!({"endpointId": "U", "model": "X100"})).await;
    let refused = |body: &Value| {
        assert_eq!(error_code(body), "BAD_USER_INPUT", "{body}");
        assert_eq!(body["errors"][0]["extensions"]["field"], "gateway", "{body}");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("one level"), "{body}");
    };
    // U under S, which has a gateway itself.
    refused(&op.gql(SET_GATEWAY, json!({"d": u_id, "g": "S"})).await);
    // G, a gateway, under U.
    refused(&op.gql(SET_GATEWAY, json!({"d": g_id, "g": "U"})).await);
    // G under its own sub-device S (a cycle).
    let body = op.gql(SET_GATEWAY, json!({"d": g_id, "g": "S"})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    // Registration: under a sub-device, or under a row of the batch that has a gateway.
    refused(&op.gql(REGISTER, json!({"i": {"endpointId": "V", "model": "X100", "gateway": "S"}})).await);
    let body = op
        .gql(
            REGISTER_MANY,
            json!({"d": [
                {"endpointId": "N1", "model": "X100", "gateway": "G"},
                {"endpointId": "N2", "model": "X100", "gateway": "N1"},
            ]}),
        )
        .await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT", "{body}");
    let rows = body["errors"][0]["extensions"]["rows"].as_array().unwrap();
    assert_eq!((rows.len(), &rows[0]["row"], &rows[0]["field"]), (1, &json!(1), &json!("gateway")), "{body}");
    assert_eq!(count_rows(app.db(), "device").await, 4, "nothing registered");
    let gateways = "SELECT COUNT(*) AS n FROM device WHERE gateway_id IS NOT NULL";
    assert_eq!(query_i64(app.db(), gateways).await, 2, "S and T only");
    // What one level allows still works: U under G.
    op.ok(SET_GATEWAY, json!({"d": u_id, "g": "G"})).await;
    assert_eq!(get("/device/v1/device", "U").await.unwrap().status(), StatusCode::OK);
}

const CREATE_TOKEN: &str = "mutation($i: CreateEnrollmentTokenInput!) { createEnrollmentToken(input: $i) {
    token enrollmentToken { id maxDevices enrolledCount } } }";

async fn token(app: &TestApp, input: Value) -> (String, String) {
    let out = app.operator("device_admin").ok(CREATE_TOKEN, json!({"i": input})).await["createEnrollmentToken"].clone();
    (out["enrollmentToken"]["id"].as_str().unwrap().to_owned(), out["token"].as_str().unwrap().to_owned())
}

async fn enroll(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    post(app, token, "/device/v1/enroll", body).send().await.unwrap()
}

#[tokio::test]
async fn an_enrollment_token_enrolls_at_most_max_devices_even_concurrently() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    let (id, two) = token(&app, json!({"name": "line 1", "model": "X100", "maxDevices": 2})).await;
    let op = app.operator("device_admin");
    assert_eq!(op.error_code(CREATE_TOKEN, json!({"i": {"name": "bad", "maxDevices": 0}})).await, "BAD_USER_INPUT");
    for e in ["e1", "e2"] {
        assert_eq!(enroll(&app, &two, json!({"endpointId": e})).await.status(), StatusCode::CREATED);
    }
    let response = enroll(&app, &two, json!({"endpointId": "e3"})).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_STATE", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("maxDevices (2)"), "{body}");
    let listed = app
        .operator("viewer")
        .ok("{ enrollmentTokens { edges { node { id maxDevices enrolledCount } } } }", json!({}))
        .await;
    assert_eq!(listed["enrollmentTokens"]["edges"][0]["node"], json!({"id": id, "maxDevices": 2, "enrolledCount": 2}));

    // Ten at once against a quota of three: three get in.
    let (_, three) = token(&app, json!({"name": "line 2", "maxDevices": 3})).await;
    let attempts = (0..10).map(|i| {
        let app = &app;
        let three = three.clone();
        async move { enroll(app, &three, json!({"endpointId": format!("c{i}"), "model": "X100"})).await.status() }
    });
    let statuses = futures::future::join_all(attempts).await;
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    assert_eq!(created, 3, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT), "{statuses:?}");
    assert_eq!(count_rows(app.db(), "device").await, 5);
}

#[tokio::test]
async fn enrollment_does_not_tell_whether_an_endpoint_id_exists() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    let (taken_id, taken_secret) = register(
        &app,
        json!({"endpointId": "taken", "model": "X100", "attributes": [{"key": "ring", "value": "stable"}]}),
    )
    .await;
    let (_, token) = token(&app, json!({"name": "factory"})).await;
    let body = |endpoint: &str| json!({"endpointId": endpoint, "model": "X100", "serial": "SN", "attributes": {"ring": "beta"}});

    let fresh = enroll(&app, &token, body("fresh")).await;
    let again = enroll(&app, &token, body("taken")).await;
    assert_eq!((fresh.status(), again.status()), (StatusCode::CREATED, StatusCode::CREATED));
    let (fresh, again): (Value, Value) = (fresh.json().await.unwrap(), again.json().await.unwrap());
    let shape = |v: &Value| -> Vec<(String, String)> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if k == "endpointId" { "id".into() } else { v.to_string().chars().next().unwrap().to_string() },
                )
            })
            .collect()
    };
    assert_eq!(shape(&fresh), shape(&again), "{fresh} / {again}");
    for key in ["status", "model", "attributes", "operatorAttributes", "installed"] {
        assert_eq!(fresh[key], again[key], "{key}");
    }
    assert_ne!(again["id"], json!(taken_id), "never the existing device's id");
    assert!(again["secret"].as_str().unwrap().starts_with("otd_"));

    // The existing device is untouched and its credential still works; the
    // answer's secret opens nothing.
    let me = |secret: &str| app.client.get(app.url("/device/v1/device")).bearer_auth(secret).send();
    assert_eq!(me(again["secret"].as_str().unwrap()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(me(fresh["secret"].as_str().unwrap()).await.unwrap().status(), StatusCode::OK);
    let existing: Value = me(&taken_secret).await.unwrap().json().await.unwrap();
    assert_eq!(existing["id"], json!(taken_id));
    assert_ne!(existing["status"], "PENDING");
    assert_eq!((&existing["operatorAttributes"], &existing["attributes"]), (&json!({"ring": "stable"}), &json!({})));
    assert_eq!(count_rows(app.db(), "device").await, 2);
    // Operators see the attempt.
    let events = app
        .operator("auditor")
        .ok(
            "{ auditEvents(filter: {action: \"device.enroll_duplicate\"}) { totalCount edges { node { objectId } } } }",
            json!({}),
        )
        .await;
    assert_eq!(events["auditEvents"]["totalCount"], 1);
    assert_eq!(events["auditEvents"]["edges"][0]["node"]["objectId"], json!(taken_id));
    // A bad input is the same 400 either way.
    for endpoint in ["taken", "fresh-2"] {
        let response = enroll(&app, &token, json!({"endpointId": endpoint, "model": "NOPE"})).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{endpoint}");
    }
}

#[tokio::test]
async fn enrollments_per_token_are_rate_limited() {
    let app = TestApp::start_with(|c| c.devices.max_enrollments_per_minute = 2).await;
    model(&app, "X100").await;
    let (_, busy) = token(&app, json!({"name": "busy", "model": "X100"})).await;
    let (_, other) = token(&app, json!({"name": "other", "model": "X100"})).await;
    for e in ["r1", "r2"] {
        assert_eq!(enroll(&app, &busy, json!({"endpointId": e})).await.status(), StatusCode::CREATED);
    }
    let response = enroll(&app, &busy, json!({"endpointId": "r3"})).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TOO_MANY_REQUESTS", "{body}");
    assert_eq!(enroll(&app, &other, json!({"endpointId": "r4"})).await.status(), StatusCode::CREATED, "per token");
    assert_eq!(count_rows(app.db(), "device").await, 3);
}

const COUNT: &str = "query($id: ID!) { deviceGroup(id: $id) { deviceCount } }";
const GROUP: &str = "mutation($n: String!, $f: DeviceGroupFilterInput) {
    createDeviceGroup(input: {name: $n, model: \"X100\", kind: DYNAMIC, filter: $f}) { deviceGroup { id filter { attributes { key source } } } } }";

#[tokio::test]
async fn a_device_cannot_move_itself_into_a_group_on_operator_attributes() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    let (id, secret) = register(
        &app,
        json!({"endpointId": "d1", "model": "X100", "attributes": [{"key": "ring", "value": "stable"}]}),
    )
    .await;
    let op = app.operator("device_admin");
    let beta = |source: Option<&str>| {
        let mut condition = json!({"key": "ring", "value": "beta"});
        if let Some(source) = source {
            condition["source"] = json!(source);
        }
        json!({"attributes": [condition]})
    };
    let operator_beta =
        op.ok(GROUP, json!({"n": "beta", "f": beta(None)})).await["createDeviceGroup"]["deviceGroup"].clone();
    let reported_beta = op.ok(GROUP, json!({"n": "says beta", "f": beta(Some("REPORTED"))})).await["createDeviceGroup"]
        ["deviceGroup"]
        .clone();
    assert_eq!(operator_beta["filter"]["attributes"], json!([{"key": "ring", "source": "OPERATOR"}]));
    assert_eq!(reported_beta["filter"]["attributes"], json!([{"key": "ring", "source": "REPORTED"}]));

    // The attack.
    let response =
        post(&app, &secret, "/device/v1/inventory", json!({"attributes": {"ring": "beta"}})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let me: Value = response.json().await.unwrap();
    assert_eq!((&me["attributes"], &me["operatorAttributes"]), (&json!({"ring": "beta"}), &json!({"ring": "stable"})));
    let viewer = app.operator("viewer");
    let members = |group: &Value| {
        let (viewer, id) = (&viewer, group["id"].clone());
        async move { viewer.ok(COUNT, json!({"id": id})).await["deviceGroup"]["deviceCount"].clone() }
    };
    assert_eq!(members(&operator_beta).await, 0, "the operator's ring is still stable");
    assert_eq!(members(&reported_beta).await, 1, "a group that reads reported attributes sees it");
    let device = viewer
        .ok(
            "query($id: ID!) { device(id: $id) { attributes { key value } reportedAttributes { key value } } }",
            json!({"id": id}),
        )
        .await["device"]
        .clone();
    assert_eq!(device["attributes"], json!([{"key": "ring", "value": "stable"}]));
    assert_eq!(device["reportedAttributes"], json!([{"key": "ring", "value": "beta"}]));
    let count = |filter: Value| {
        let viewer = &viewer;
        async move {
            viewer.ok("query($f: DeviceFilter) { devices(filter: $f) { totalCount } }", json!({"f": filter})).await["devices"]
                ["totalCount"]
                .clone()
        }
    };
    assert_eq!(count(json!({"attribute": {"key": "ring", "value": "beta"}})).await, 0);
    assert_eq!(count(json!({"attribute": {"key": "ring", "value": "beta", "source": "REPORTED"}})).await, 1);
    // Removing a reported attribute leaves the operator's.
    post(&app, &secret, "/device/v1/inventory", json!({"attributes": {"ring": null}})).send().await.unwrap();
    assert_eq!(count(json!({"attribute": {"key": "ring", "value": "stable"}})).await, 1);
    assert_eq!(members(&reported_beta).await, 0);

    // What an enrolling device says of itself is reported too.
    let (_, token) = token(&app, json!({"name": "factory", "model": "X100"})).await;
    enroll(&app, &token, json!({"endpointId": "e1", "attributes": {"ring": "beta"}})).await;
    op.ok("mutation { approveDevices(input: {devices: [\"e1\"]}) { devices { status } } }", json!({})).await;
    assert_eq!(members(&operator_beta).await, 0);
    assert_eq!(members(&reported_beta).await, 1);
}

#[tokio::test]
async fn device_writes_over_the_limit_answer_429_with_retry_after_and_spare_other_devices() {
    let app = TestApp::start_with(|c| c.devices.max_writes_per_minute = 3).await;
    model(&app, "X100").await;
    let (_, flood) = register(&app, json!({"endpointId": "flood", "model": "X100"})).await;
    let (_, calm) = register(&app, json!({"endpointId": "calm", "model": "X100"})).await;
    let inventory =
        |secret: &str, n: usize| post(&app, secret, "/device/v1/inventory", json!({"attributes": {"n": n}})).send();
    for n in 0..3 {
        assert_eq!(inventory(&flood, n).await.unwrap().status(), StatusCode::OK, "write {n}");
    }
    let response = inventory(&flood, 3).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "one write every 20 s: {retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "TOO_MANY_REQUESTS", "{body}");
    // Every kind of write counts: status reports, command results, EnOS.
    let unknown = "0193a0a0-0000-7000-8000-000000000000";
    for (path, body) in [
        (format!("/device/v1/updates/{unknown}/status"), json!({"status": "DOWNLOADING"})),
        (format!("/device/v1/commands/{unknown}"), json!({"status": "ACKNOWLEDGED"})),
    ] {
        let response = post(&app, &flood, &path, body).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
    }
    let response =
        post(&app, &flood, "/updateresult", json!({"assetId": "", "flag": 1, "process": 10})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["httpstatus"], 429, "the EnOS shape: {body}");
    // The refused write changed nothing.
    let n = "SELECT COUNT(*) AS n FROM device_reported_attribute WHERE key = 'n' AND value = '2'";
    assert_eq!(query_i64(app.db(), n).await, 1);
    // Reads go on, and other devices are not affected.
    let poll = |secret: &str| app.client.get(app.url("/device/v1/poll")).bearer_auth(secret).send();
    assert_eq!(poll(&flood).await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(inventory(&calm, 0).await.unwrap().status(), StatusCode::OK);
    assert_eq!(poll(&calm).await.unwrap().status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn an_inventory_that_changes_nothing_writes_and_audits_nothing() {
    let app = TestApp::start().await;
    model(&app, "X100").await;
    let (_, secret) = register(&app, json!({"endpointId": "d1", "model": "X100"})).await;
    let report = json!({"installed": {"firmware": "1.0.0"}, "attributes": {"region": "eu"}});
    assert_eq!(
        post(&app, &secret, "/device/v1/inventory", report.clone()).send().await.unwrap().status(),
        StatusCode::OK
    );
    let inventories = "SELECT COUNT(*) AS n FROM audit_event WHERE action = 'device.inventory'";
    assert_eq!(query_i64(app.db(), inventories).await, 1);
    for _ in 0..5 {
        assert_eq!(
            post(&app, &secret, "/device/v1/inventory", report.clone()).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(query_i64(app.db(), inventories).await, 1, "no audit event for an unchanged report");
}
