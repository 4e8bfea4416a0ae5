//! The hawkBit DDI device API at the JSON level, with the bodies stock
//! clients (SWUpdate 2022.12, rauc-hawkbit-updater) really send: the base
//! poll and its links, deploymentBase, feedback onto the update states,
//! cancel, configData, installedBase, artifact downloads, and the auth.
//! `ddi_swupdate.rs` runs the real swupdate against the same routes.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha1::Digest as _;

use crate::support::TestApp;

const APPLY: &str = "mutation($i: ApplyPackageInput!) { applyPackage(input: $i) { deployment { id } } }";
const UPDATE: &str = "query($id: ID!) { deployment(id: $id) { deviceUpdates(first: 10) { edges { node {
    id actionId state progress errorCode message device { endpointId } } } } } }";
const IMAGE: &[u8] = b"an update image for the DDI tests, long enough to ask for a range of it";

pub async fn app() -> TestApp {
    TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = Duration::from_millis(50);
        c.deployments.reconcile_interval = Duration::from_millis(200);
        c.ddi.polling_sleep = Duration::from_secs(3723);
        c.ddi.polling_sleep_active = Duration::from_secs(2);
    })
    .await
}

/// A DDI client of one controller, with a raw `Authorization` value.
pub struct Ddi<'a> {
    pub app: &'a TestApp,
    pub cid: String,
    pub auth: Option<String>,
}

impl<'a> Ddi<'a> {
    pub fn target(app: &'a TestApp, cid: &str, secret: &str) -> Self {
        Self { app, cid: cid.to_owned(), auth: Some(format!("TargetToken {secret}")) }
    }

    pub fn url(&self, tail: &str) -> String {
        self.app.url(&format!("/DEFAULT/controller/v1/{}{tail}", self.cid))
    }

    async fn send(&self, method: Method, url: &str, body: Option<&[u8]>) -> reqwest::Response {
        let mut request = self.app.client.request(method, url).header("Accept", "application/json");
        if let Some(auth) = &self.auth {
            request = request.header("Authorization", auth);
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.to_vec());
        }
        request.send().await.unwrap()
    }

    pub async fn get(&self, url: &str) -> (StatusCode, Value) {
        let response = self.send(Method::GET, url, None).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn base(&self) -> Value {
        let (status, body) = self.get(&self.url("")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// POST a feedback body (bytes as given) to `deploymentBase/{id}/feedback`.
    pub async fn feedback(&self, action: i64, body: &[u8]) -> (StatusCode, String) {
        let url = self.url(&format!("/deploymentBase/{action}/feedback"));
        let response = self.send(Method::POST, &url, Some(body)).await;
        (response.status(), response.text().await.unwrap())
    }

    pub async fn put_config(&self, body: &Value) -> (StatusCode, String) {
        let response = self.send(Method::PUT, &self.url("/configData"), Some(body.to_string().as_bytes())).await;
        (response.status(), response.text().await.unwrap())
    }
}

/// swupdate's feedback, as it writes it.
fn swupdate_feedback(action: i64, execution: &str, finished: &str, cnt: i64, of: i64, detail: &str) -> Vec<u8> {
    format!(
        "{{\"id\": {action}, \"time\": \"20261122T121440\", \"status\": {{\"result\": {{\"progress\": {{\"cnt\": {cnt}, \"of\": {of}}}, \"finished\": \"{finished}\"}}, \"execution\": \"{execution}\", \"details\": [\"{detail}\"]}}}}"
    )
    .into_bytes()
}

/// Model X100, package fw 2.0.0 (component firmware) of one file
/// `update.swu`, devices `d00`, `d01` in a group: (package, devices).
pub async fn setup(app: &TestApp, n: usize) -> (String, Vec<(String, String)>) {
    let admin = app.operator("admin");
    admin.ok("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({})).await;
    let (_, package) = app.firmware_package("2.0.0", "update.swu", IMAGE).await;
    let (_, devices) = crate::support::fleet_in_group(app, n, "X100", "ddi").await;
    (package, devices)
}

async fn apply(app: &TestApp, input: Value) -> Value {
    app.operator("deployment_manager").ok(APPLY, json!({"i": input})).await["applyPackage"]["deployment"]["id"].clone()
}

/// The deployment's update of `endpoint`.
async fn update_of(app: &TestApp, deployment: &Value, endpoint: &str) -> Value {
    let body = app.operator("viewer").ok(UPDATE, json!({"id": deployment})).await;
    body["deployment"]["deviceUpdates"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .find(|n| n["device"]["endpointId"] == endpoint)
        .unwrap_or_else(|| panic!("no update of {endpoint}: {body}"))
}

fn href(link: &Value) -> &str {
    link["href"].as_str().unwrap_or_else(|| panic!("no href: {link}"))
}

#[tokio::test]
async fn a_ddi_device_polls_downloads_reports_as_swupdate_does_and_ends_installed() {
    let app = app().await;
    let (package, devices) = setup(&app, 1).await;
    let (cid, secret) = &devices[0];
    let ddi = Ddi::target(&app, cid, secret);

    // Nothing to do: the long sleep as HH:MM:SS, and a request for attributes.
    let base = ddi.base().await;
    assert_eq!(base["config"]["polling"]["sleep"], "01:02:03", "{base}");
    assert!(base["_links"].get("deploymentBase").is_none(), "{base}");
    assert_eq!(href(&base["_links"]["configData"]), ddi.url("/configData"));

    let deployment = apply(&app, json!({"package": package, "devices": [cid]})).await;
    let action = update_of(&app, &deployment, cid).await["actionId"].as_i64().unwrap();
    let base = ddi.base().await;
    assert_eq!(base["config"]["polling"]["sleep"], "00:00:02", "active: {base}");
    let link = href(&base["_links"]["deploymentBase"]).to_owned();
    let prefix = ddi.url(&format!("/deploymentBase/{action}?c="));
    assert!(link.starts_with(&prefix), "absolute, with ?c=: {link}");
    assert!(link[prefix.len()..].parse::<i32>().is_ok(), "{link}");
    assert!(base["_links"].get("cancelAction").is_none());

    // The deployment: the id as a string, forced, one chunk, the hashes.
    let (status, body) = ddi.get(&link).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], json!(action.to_string()), "{body}");
    assert_eq!(body["deployment"]["update"], "forced");
    assert_eq!(body["deployment"]["download"], "forced");
    let chunk = &body["deployment"]["chunks"][0];
    assert_eq!(
        (&chunk["part"], &chunk["version"], &chunk["name"]),
        (&json!("firmware"), &json!("2.0.0"), &json!("fw"))
    );
    let artifact = &chunk["artifacts"][0];
    assert_eq!(artifact["filename"], "update.swu");
    assert_eq!(artifact["size"], IMAGE.len());
    assert_eq!(artifact["hashes"]["sha1"], hex::encode(sha1::Sha1::digest(IMAGE)));
    assert_eq!(artifact["hashes"]["md5"], hex::encode(md5::Md5::digest(IMAGE)));
    assert_eq!(artifact["hashes"]["sha256"], hex::encode(sha2::Sha256::digest(IMAGE)));
    for name in ["download", "download-http", "md5sum", "md5sum-http"] {
        assert!(href(&artifact["_links"][name]).starts_with(&app.base), "{name}: {artifact}");
    }
    assert_eq!(update_of(&app, &deployment, cid).await["state"], "ACKNOWLEDGED", "the first look acknowledges");

    // The artifact: HEAD, a resumed GET (206), the .MD5SUM file; with
    // the token and with the signed link alone.
    let download = href(&artifact["_links"]["download"]).to_owned();
    let head = ddi.send(Method::HEAD, &download, None).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], IMAGE.len().to_string().as_str());
    let resumed = app.client.get(&download).header("Range", "bytes=10-").send().await.unwrap();
    assert_eq!(resumed.status(), StatusCode::PARTIAL_CONTENT, "signed, no token");
    assert_eq!(&resumed.bytes().await.unwrap()[..], &IMAGE[10..]);
    let unsigned = download.split('?').next().unwrap().to_owned();
    let whole = ddi.send(Method::GET, &unsigned, None).await;
    assert_eq!(whole.status(), StatusCode::OK, "token, no signature");
    assert_eq!(&whole.bytes().await.unwrap()[..], IMAGE);
    let anonymous = app.client.get(&unsigned).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // A link that no longer verifies: refused alone, served with the token beside it.
    let stale = format!("{unsigned}?{}", download.split_once('?').unwrap().1.replace("sig=", "sig=A"));
    assert_eq!(app.client.get(&stale).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    let with_token = ddi.send(Method::GET, &stale, None).await;
    assert_eq!(with_token.status(), StatusCode::OK, "the token beside a stale link");
    assert_eq!(&with_token.bytes().await.unwrap()[..], IMAGE);
    let md5sum = app.client.get(href(&artifact["_links"]["md5sum"])).send().await.unwrap();
    assert_eq!(md5sum.status(), StatusCode::OK);
    assert_eq!(md5sum.text().await.unwrap(), format!("{}  update.swu\n", hex::encode(md5::Md5::digest(IMAGE))));

    // swupdate's feedback, verbatim: progress by chunks, a log dump
    // whose cnt passes of, raw control characters, no `downloaded`.
    let (status, text) = ddi
        .feedback(action, &swupdate_feedback(action, "proceeding", "none", 0, 1, "Installing Update Chunk Artifacts."))
        .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, ""), "200 with no body");
    assert_eq!(update_of(&app, &deployment, cid).await["state"], "DOWNLOADING");
    let raw = swupdate_feedback(action, "proceeding", "none", 1, 0, "line one\nline\ttwo\r");
    assert!(raw.contains(&b'\n'), "a raw control character inside a string");
    assert_eq!(ddi.feedback(action, &raw).await.0, StatusCode::OK);
    for detail in ["Installed Chunk.", "All Chunks Installed."] {
        assert_eq!(
            ddi.feedback(action, &swupdate_feedback(action, "proceeding", "none", 1, 1, detail)).await.0,
            StatusCode::OK
        );
    }
    let update = update_of(&app, &deployment, cid).await;
    assert_eq!((&update["state"], &update["progress"]), (&json!("INSTALLING"), &json!(100)), "all chunks: {update}");
    // Still offered until `closed` (swupdate reports success after its restart).
    let base = ddi.base().await;
    assert!(href(&base["_links"]["deploymentBase"]).contains(&format!("/deploymentBase/{action}?c=")), "{base}");

    // An error logged on the way that the install got past is not kept.
    let logged = swupdate_feedback(action, "proceeding", "none", 1, 1, "ERROR : a retry went through");
    assert_eq!(ddi.feedback(action, &logged).await.0, StatusCode::OK);
    assert_eq!(update_of(&app, &deployment, cid).await["message"], "ERROR : a retry went through");
    let closed = format!(
        "{{\"id\": \"{action}\", \"time\": \"20261122T121443\", \"status\": {{\"result\": {{\"progress\": {{\"cnt\": 0, \"of\": 0}}, \"finished\": \"success\"}}, \"execution\": \"closed\", \"details\": [\"Update Installed.\"]}}}}"
    );
    assert_eq!(ddi.feedback(action, closed.as_bytes()).await.0, StatusCode::OK);
    let installed = update_of(&app, &deployment, cid).await;
    assert_eq!(
        (&installed["state"], &installed["message"]),
        (&json!("INSTALLED"), &Value::Null),
        "the skipped steps filled in: {installed}"
    );
    // A repeat changes nothing and is still a success.
    assert_eq!(ddi.feedback(action, closed.as_bytes()).await.0, StatusCode::OK);
    let failure_after = swupdate_feedback(action, "closed", "failure", 0, 0, "Update Failed.");
    let (status, text) = ddi.feedback(action, &failure_after).await;
    assert_eq!(status, StatusCode::CONFLICT, "a failure after the success contradicts it: {text}");

    // What operators see: the installed version, its history, the audit event.
    let viewer = app.operator("viewer");
    let device = viewer
        .ok(
            "query($e: String!) { deviceByEndpointId(endpointId: $e) { installed { component version } installations { version deploymentId } } }",
            json!({"e": cid}),
        )
        .await["deviceByEndpointId"]
        .clone();
    assert_eq!(device["installed"], json!([{"component": "firmware", "version": "2.0.0"}]), "{device}");
    assert_eq!(device["installations"][0]["deploymentId"], deployment, "{device}");
    let audited = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"device_update.installed\"}) { totalCount } }", json!({}))
        .await;
    assert_eq!(audited["auditEvents"]["totalCount"], 1, "{audited}");

    // Afterwards: no action, the installed one named, its description.
    let base = ddi.base().await;
    assert!(base["_links"].get("deploymentBase").is_none(), "{base}");
    assert_eq!(base["config"]["polling"]["sleep"], "01:02:03");
    let installed = href(&base["_links"]["installedBase"]).to_owned();
    assert_eq!(installed, ddi.url(&format!("/installedBase/{action}")));
    let (status, body) = ddi.get(&installed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], json!(action.to_string()));
    assert_eq!(body["deployment"]["chunks"][0]["version"], "2.0.0");
    // Its files are not offered any more.
    assert_eq!(ddi.get(&link).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.client.get(&download).send().await.unwrap().status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn only_the_devices_own_token_or_its_gateways_is_taken() {
    let app = app().await;
    let (_, devices) = setup(&app, 3).await;
    let [(d0, s0), (d1, s1), (d2, _)] = [devices[0].clone(), devices[1].clone(), devices[2].clone()];
    // d00 is the gateway of d01 (not of d02).
    let admin = app.operator("admin");
    let d1_id = admin.ok("query($e: String!) { deviceByEndpointId(endpointId: $e) { id } }", json!({"e": d1})).await
        ["deviceByEndpointId"]["id"]
        .clone();
    admin
        .ok(
            "mutation($d: ID!, $g: String) { setDeviceGateway(input: {device: $d, gateway: $g}) { device { gatewayId } } }",
            json!({"d": d1_id, "g": d0}),
        )
        .await;
    let with = |cid: &str, auth: Option<String>| Ddi { app: &app, cid: cid.to_owned(), auth };
    for (cid, auth, want) in [
        (&d0, Some(format!("TargetToken {s0}")), StatusCode::OK),
        (&d0, None, StatusCode::UNAUTHORIZED),
        (&d0, Some(format!("Bearer {s0}")), StatusCode::UNAUTHORIZED),
        (&d0, Some(format!("targettoken {s0}")), StatusCode::UNAUTHORIZED),
        (&d0, Some(format!("TargetToken {s0}x")), StatusCode::UNAUTHORIZED),
        (&d0, Some(format!("TargetToken {s1}")), StatusCode::UNAUTHORIZED),
        (&d1, Some(format!("TargetToken {s0}")), StatusCode::UNAUTHORIZED),
        (&d1, Some(format!("GatewayToken {s0}")), StatusCode::OK),
        (&d0, Some(format!("GatewayToken {s0}")), StatusCode::OK),
        (&d2, Some(format!("GatewayToken {s0}")), StatusCode::UNAUTHORIZED),
        (&d0, Some(format!("GatewayToken {s1}")), StatusCode::UNAUTHORIZED),
        (&d0, Some(format!("TargetToken {}", app.token_for("x", &["admin"]))), StatusCode::UNAUTHORIZED),
    ] {
        let (status, body) = with(cid, auth.clone()).get(&with(cid, None).url("")).await;
        assert_eq!(status, want, "{cid} with {auth:?}: {body}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(body["error"]["code"], "UNAUTHENTICATED", "{body}");
        }
    }
    // The tenant is the configured one, in any case; others are 404.
    let ddi = Ddi::target(&app, &d0, &s0);
    assert_eq!(ddi.get(&app.url(&format!("/default/controller/v1/{d0}"))).await.0, StatusCode::OK);
    let (status, body) = ddi.get(&app.url(&format!("/OTHER/controller/v1/{d0}"))).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::NOT_FOUND, &json!("NOT_FOUND")), "{body}");
}

#[tokio::test]
async fn config_data_becomes_reported_attributes_and_the_link_goes() {
    let app = app().await;
    let (_, devices) = setup(&app, 1).await;
    let (cid, secret) = &devices[0];
    let ddi = Ddi::target(&app, cid, secret);
    assert!(ddi.base().await["_links"].get("configData").is_some());

    // swupdate's body: an empty id, a status, no mode.
    let body = json!({"id": "", "time": "20261122T121321", "status": {"result": {"finished": "success"}, "execution": "closed", "details": [""]}, "data": {"swprobe": "yes", "hwRevision": "1.0"}});
    assert_eq!(ddi.put_config(&body).await, (StatusCode::OK, String::new()));
    let attributes = || async {
        let body = app
            .operator("viewer")
            .ok(
                "query($e: String!) { deviceByEndpointId(endpointId: $e) { reportedAttributes { key value } } }",
                json!({"e": cid}),
            )
            .await;
        body["deviceByEndpointId"]["reportedAttributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}={}", a["key"].as_str().unwrap(), a["value"].as_str().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(attributes().await, ["hwRevision=1.0", "swprobe=yes"]);
    let base = ddi.base().await;
    assert!(base.get("_links").is_none_or(|l| l.get("configData").is_none()), "asked no more: {base}");

    assert_eq!(ddi.put_config(&json!({"mode": "merge", "data": {"region": "eu", "slots": 2}})).await.0, StatusCode::OK);
    assert_eq!(attributes().await, ["hwRevision=1.0", "region=eu", "slots=2", "swprobe=yes"]);
    assert_eq!(ddi.put_config(&json!({"mode": "remove", "data": {"slots": ""}})).await.0, StatusCode::OK);
    assert_eq!(attributes().await, ["hwRevision=1.0", "region=eu", "swprobe=yes"]);
    assert_eq!(ddi.put_config(&json!({"mode": "replace", "data": {"region": "us"}})).await.0, StatusCode::OK);
    assert_eq!(attributes().await, ["region=us"]);
    // Keys hawkBit takes and otadepot's rule does not are kept, not refused
    // (a stock client refused here would re-send configData forever).
    let odd = json!({"data": {"serial number": "SN\u{7}-1", "region": "us"}});
    assert_eq!(ddi.put_config(&odd).await, (StatusCode::OK, String::new()));
    assert_eq!(attributes().await, ["region=us", "serial_number=SN-1"]);
    assert_eq!(ddi.put_config(&json!({"mode": "replace", "data": {"region": "us"}})).await.0, StatusCode::OK);

    for (body, field) in [
        (json!({"mode": "upsert", "data": {"a": "b"}}), "mode"),
        (json!({"mode": "merge"}), "data"),
        (json!({"data": {"a": {"nested": true}}}), "data"),
    ] {
        let (status, text) = ddi.put_config(&body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(field), "{text}");
    }
    assert_eq!(attributes().await, ["region=us"], "nothing written by a refused body");
}

#[tokio::test]
async fn a_failure_keeps_the_clients_message_and_a_rejection_fails_the_update() {
    let app = app().await;
    let (package, devices) = setup(&app, 3).await;
    let deployment = apply(&app, json!({"package": package, "devices": ["d00", "d01", "d02"]})).await;
    let (a, b) = (update_of(&app, &deployment, "d00").await, update_of(&app, &deployment, "d01").await);

    // swupdate's failure: the reason pasted with a raw newline at its end.
    let ddi = Ddi::target(&app, &devices[0].0, &devices[0].1);
    let action = a["actionId"].as_i64().unwrap();
    let body = swupdate_feedback(action, "closed", "failure", 0, 1, "Checksum does not match: payload.bin\n");
    assert_eq!(ddi.feedback(action, &body).await.0, StatusCode::OK);
    let failed = update_of(&app, &deployment, "d00").await;
    assert_eq!(failed["state"], "FAILED", "{failed}");
    assert_eq!(failed["message"], "Checksum does not match: payload.bin", "{failed}");

    // The reason swupdate logs in a progress message, then its verdict.
    let (d2, _) = &devices[2];
    let ddi = Ddi::target(&app, d2, &devices[2].1);
    let c = update_of(&app, &deployment, d2).await["actionId"].as_i64().unwrap();
    let log = format!(
        "{{\"id\": {c}, \"status\": {{\"execution\": \"proceeding\", \"result\": {{\"finished\": \"none\", \"progress\": {{\"cnt\": 1, \"of\": 0}}}}, \"details\": [\"ERROR : Cannot read stored update state.\", \"ERROR : HASH mismatch : aa <--> bb\", \"ERROR : HASH mismatch : aa <--> bb\"]}}}}"
    )
    .into_bytes();
    assert_eq!(ddi.feedback(c, &log).await.0, StatusCode::OK);
    let running = update_of(&app, &deployment, d2).await;
    assert_eq!(
        (&running["state"], &running["message"]),
        (&json!("DOWNLOADING"), &json!("ERROR : HASH mismatch : aa <--> bb"))
    );
    let verdict = swupdate_feedback(c, "closed", "failure", 0, 1, "No suitable .swu image found");
    assert_eq!(ddi.feedback(c, &verdict).await.0, StatusCode::OK);
    let failed = update_of(&app, &deployment, d2).await;
    assert_eq!(failed["message"], "ERROR : HASH mismatch : aa <--> bb; No suitable .swu image found", "{failed}");

    let ddi = Ddi::target(&app, &devices[1].0, &devices[1].1);
    let action = b["actionId"].as_i64().unwrap();
    let body = json!({"id": action, "status": {"execution": "rejected", "result": {"finished": "none"}, "details": ["battery low"]}});
    assert_eq!(ddi.feedback(action, body.to_string().as_bytes()).await.0, StatusCode::OK);
    let rejected = update_of(&app, &deployment, "d01").await;
    assert_eq!((&rejected["state"], &rejected["errorCode"]), (&json!("FAILED"), &json!("rejected")), "{rejected}");
    assert_eq!(rejected["message"], "the device rejected the update: battery low");

    // Bad bodies are refused, naming the field; another device's action is not found.
    for (body, field) in [
        (b"not json".to_vec(), "body"),
        (br#"{"id": 1}"#.to_vec(), "status"),
        (br#"{"status": {"execution": "exploded"}}"#.to_vec(), "status.execution"),
        (br#"{"status": {"execution": "closed", "result": {"finished": "maybe"}}}"#.to_vec(), "status.result.finished"),
    ] {
        let (status, text) = ddi.feedback(action, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(field), "{field}: {text}");
    }
    let other = a["actionId"].as_i64().unwrap();
    let (status, _) = ddi.feedback(other, &swupdate_feedback(other, "closed", "success", 0, 0, "x")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(update_of(&app, &deployment, "d00").await["state"], "FAILED", "untouched");
}

#[tokio::test]
async fn a_cancel_shows_cancel_action_until_the_device_acknowledges_it() {
    let app = app().await;
    let (package, devices) = setup(&app, 2).await;
    let deployment = apply(&app, json!({"package": package, "devices": ["d00", "d01"]})).await;
    let ddis: Vec<Ddi<'_>> = devices.iter().map(|(c, s)| Ddi::target(&app, c, s)).collect();
    for ddi in &ddis {
        let link = href(&ddi.base().await["_links"]["deploymentBase"]).to_owned();
        assert_eq!(ddi.get(&link).await.0, StatusCode::OK);
    }
    app.operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { state } } }",
            json!({"id": deployment}),
        )
        .await;

    for (i, ddi) in ddis.iter().enumerate() {
        let action = update_of(&app, &deployment, &ddi.cid).await["actionId"].as_i64().unwrap();
        let base = ddi.base().await;
        assert!(base["_links"].get("deploymentBase").is_none(), "{base}");
        let link = href(&base["_links"]["cancelAction"]).to_owned();
        assert_eq!(link, ddi.url(&format!("/cancelAction/{action}")), "absolute, no query");
        let (status, body) = ddi.get(&link).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"id": action.to_string(), "cancelAction": {"stopId": action.to_string()}}));

        let url = format!("{link}/feedback");
        let body = if i == 0 {
            // swupdate's acknowledgement.
            format!(
                "{{\"id\": {action}, \"time\": \"20261122T121500\", \"status\": {{\"result\": {{\"finished\": \"success\"}}, \"execution\": \"closed\", \"details\": [\"cancellation acknowledged.\"]}}}}"
            )
        } else {
            json!({"id": action, "status": {"execution": "rejected", "result": {"finished": "none"}, "details": ["installing already"]}}).to_string()
        };
        let response = ddi.send(Method::POST, &url, Some(body.as_bytes())).await;
        assert_eq!(response.status(), StatusCode::OK);
        let base = ddi.base().await;
        assert!(
            base["_links"].get("cancelAction").is_none() && base["_links"].get("deploymentBase").is_none(),
            "{base}"
        );
        assert_eq!(ddi.get(&link).await.0, StatusCode::NOT_FOUND, "answered");
    }
    // One device's update cancelled alone (cancelDeviceUpdate): the same cancelAction.
    let again = apply(&app, json!({"package": package, "devices": ["d00"]})).await;
    let ddi = &ddis[0];
    let link = href(&ddi.base().await["_links"]["deploymentBase"]).to_owned();
    assert_eq!(ddi.get(&link).await.0, StatusCode::OK);
    let update = update_of(&app, &again, "d00").await;
    app.operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { cancelDeviceUpdate(input: {id: $id}) { deviceUpdate { state } } }",
            json!({"id": update["id"]}),
        )
        .await;
    let base = ddi.base().await;
    assert_eq!(
        href(&base["_links"]["cancelAction"]),
        ddi.url(&format!("/cancelAction/{}", update["actionId"])),
        "{base}"
    );

    let refused = update_of(&app, &deployment, "d01").await;
    assert_eq!(refused["message"], "the device refused the cancel: installing already", "{refused}");
    let audited = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"device_update.cancel_refused\"}) { totalCount } }", json!({}))
        .await;
    assert_eq!(audited["auditEvents"]["totalCount"], 1, "{audited}");
}

#[tokio::test]
async fn download_only_shows_no_deployment_until_the_install_is_released_and_soft_is_attempt() {
    let app = app().await;
    let (package, devices) = setup(&app, 2).await;
    let held = apply(&app, json!({"package": package, "devices": ["d00"], "mode": "DOWNLOAD_ONLY"})).await;
    let ddi = Ddi::target(&app, &devices[0].0, &devices[0].1);
    let base = ddi.base().await;
    assert!(base["_links"].get("deploymentBase").is_none(), "withheld: {base}");
    assert_eq!(base["config"]["polling"]["sleep"], "00:00:02", "but polled often: {base}");
    let action = update_of(&app, &held, "d00").await["actionId"].as_i64().unwrap();
    assert_eq!(ddi.get(&ddi.url(&format!("/deploymentBase/{action}"))).await.0, StatusCode::NOT_FOUND);
    app.operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { releaseInstall(input: {id: $id}) { deployment { installReleased } } }",
            json!({"id": held}),
        )
        .await;
    let link = href(&ddi.base().await["_links"]["deploymentBase"]).to_owned();
    assert_eq!(ddi.get(&link).await.1["deployment"]["update"], "forced");

    let soft = apply(&app, json!({"package": package, "devices": ["d01"], "policy": {"actionType": "SOFT"}})).await;
    let ddi = Ddi::target(&app, &devices[1].0, &devices[1].1);
    let link = href(&ddi.base().await["_links"]["deploymentBase"]).to_owned();
    let (_, body) = ddi.get(&link).await;
    assert_eq!(
        (&body["deployment"]["update"], &body["deployment"]["download"]),
        (&json!("attempt"), &json!("attempt"))
    );
    assert!(!update_of(&app, &soft, "d01").await["actionId"].is_null());
}

/// A daily window starting `from_now` minutes from now (negative: it
/// started that long ago), `minutes` long, in UTC.
pub fn window_from_now(from_now: i64, minutes: i64) -> Value {
    let start = chrono::Utc::now() + chrono::TimeDelta::minutes(from_now);
    json!({"start": start.format("%H:%M").to_string(), "durationMinutes": minutes, "timezone": "UTC"})
}

#[tokio::test]
async fn outside_its_maintenance_window_a_deployment_is_withheld_from_ddi_devices() {
    let app = app().await;
    let (package, devices) = setup(&app, 2).await;
    // Closed: it opens in three hours.
    let closed = apply(
        &app,
        json!({"package": package, "devices": ["d00"], "policy": {"maintenanceWindow": window_from_now(180, 60)}}),
    )
    .await;
    let ddi = Ddi::target(&app, &devices[0].0, &devices[0].1);
    let base = ddi.base().await;
    assert!(base["_links"].get("deploymentBase").is_none(), "withheld: {base}");
    assert_eq!(base["config"]["polling"]["sleep"], "00:00:02", "polled often meanwhile");
    let action = update_of(&app, &closed, "d00").await["actionId"].as_i64().unwrap();
    let (status, body) = ddi.get(&ddi.url(&format!("/deploymentBase/{action}"))).await;
    assert_eq!(status, StatusCode::OK, "asked for directly, it says so: {body}");
    assert_eq!(body["deployment"]["maintenanceWindow"], "unavailable", "{body}");
    let state = app
        .operator("viewer")
        .ok(
            "query($id: ID!) { deployment(id: $id) { maintenanceWindowState { open opensAt closesAt } } }",
            json!({"id": closed}),
        )
        .await["deployment"]["maintenanceWindowState"]
        .clone();
    assert_eq!((&state["open"], &state["closesAt"]), (&json!(false), &Value::Null), "{state}");
    assert!(state["opensAt"].is_string(), "{state}");

    // Open: it started half an hour ago.
    let open = apply(
        &app,
        json!({"package": package, "devices": ["d01"], "policy": {"maintenanceWindow": window_from_now(-30, 120)}}),
    )
    .await;
    let ddi = Ddi::target(&app, &devices[1].0, &devices[1].1);
    let link = href(&ddi.base().await["_links"]["deploymentBase"]).to_owned();
    let (_, body) = ddi.get(&link).await;
    assert_eq!(body["deployment"]["maintenanceWindow"], "available", "{body}");

    // The window closes (as stored): a device that only acknowledged is
    // held again, one that has started keeps its link to finish and close.
    let closed_window = serde_json::to_string(
        &json!({"days": [], "start": window_from_now(180, 60)["start"], "duration_minutes": 60, "timezone": "UTC"}),
    )
    .unwrap();
    {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
        entity::deployment::Entity::update_many()
            .col_expr(entity::deployment::Column::MaintenanceWindow, Expr::value(closed_window))
            .filter(entity::deployment::Column::Id.eq(open.as_str().unwrap().parse::<uuid::Uuid>().unwrap()))
            .exec(app.db())
            .await
            .unwrap();
    }
    assert_eq!(update_of(&app, &open, "d01").await["state"], "ACKNOWLEDGED");
    assert!(ddi.base().await["_links"].get("deploymentBase").is_none(), "not started: held");
    let action = update_of(&app, &open, "d01").await["actionId"].as_i64().unwrap();
    let started = swupdate_feedback(action, "proceeding", "none", 0, 1, "Installing Update Chunk Artifacts.");
    assert_eq!(ddi.feedback(action, &started).await.0, StatusCode::OK);
    assert!(ddi.base().await["_links"].get("deploymentBase").is_some(), "started: it keeps its link");
}

#[tokio::test]
async fn an_update_not_released_yet_is_no_action_of_the_device() {
    let app = app().await;
    let (package, devices) = setup(&app, 2).await;
    let deployment =
        apply(&app, json!({"package": package, "devices": ["d00", "d01"], "policy": {"maxInFlight": 1}})).await;
    let updates = [update_of(&app, &deployment, "d00").await, update_of(&app, &deployment, "d01").await];
    let pending = updates.iter().find(|u| u["state"] == "PENDING").unwrap_or_else(|| panic!("{updates:?}"));
    let owner = &devices[usize::from(pending["device"]["endpointId"] == "d01")];
    let ddi = Ddi::target(&app, &owner.0, &owner.1);
    let action = pending["actionId"].as_i64().unwrap();
    assert!(ddi.base().await["_links"].get("deploymentBase").is_none());
    assert_eq!(ddi.get(&ddi.url(&format!("/deploymentBase/{action}"))).await.0, StatusCode::NOT_FOUND);
    let failure = swupdate_feedback(action, "closed", "failure", 0, 0, "nope");
    assert_eq!(ddi.feedback(action, &failure).await.0, StatusCode::NOT_FOUND, "no failing what was never offered");
    assert_eq!(update_of(&app, &deployment, &owner.0).await["state"], "PENDING");
}

#[tokio::test]
async fn a_device_that_declares_download_only_downloads_a_held_install_and_installs_once_released() {
    let app = app().await;
    let (package, devices) = setup(&app, 2).await;
    let held = apply(&app, json!({"package": package, "devices": ["d00", "d01"], "mode": "DOWNLOAD_ONLY"})).await;
    let able = Ddi::target(&app, &devices[0].0, &devices[0].1);
    let stock = Ddi::target(&app, &devices[1].0, &devices[1].1);
    assert_eq!(able.put_config(&json!({"data": {"download_only": "true"}})).await.0, StatusCode::OK);
    assert_eq!(stock.put_config(&json!({"data": {"hwRevision": "1"}})).await.0, StatusCode::OK);

    // Only the device that declared it sees the held install, as `skip`.
    assert!(stock.base().await["_links"].get("deploymentBase").is_none());
    let link = href(&able.base().await["_links"]["deploymentBase"]).to_owned();
    let (_, body) = able.get(&link).await;
    assert_eq!((&body["deployment"]["download"], &body["deployment"]["update"]), (&json!("forced"), &json!("skip")));
    let action = body["id"].as_str().unwrap().parse::<i64>().unwrap();
    let downloaded =
        json!({"id": action, "status": {"execution": "downloaded", "result": {"finished": "none"}, "details": []}});
    assert_eq!(able.feedback(action, downloaded.to_string().as_bytes()).await.0, StatusCode::OK);
    assert_eq!(update_of(&app, &held, "d00").await["state"], "DOWNLOADED");
    assert!(able.base().await["_links"].get("deploymentBase").is_none(), "nothing to do until the release");

    app.operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { releaseInstall(input: {id: $id}) { deployment { installReleased } } }",
            json!({"id": held}),
        )
        .await;
    // Its `closed` of the `skip` it was offered, arriving after the
    // release: it downloaded, it did not install.
    let skipped = swupdate_feedback(action, "closed", "success", 0, 0, "Skipped Update.");
    assert_eq!(able.feedback(action, &skipped).await.0, StatusCode::OK);
    assert_eq!(update_of(&app, &held, "d00").await["state"], "DOWNLOADED", "a skip closed is no install");
    let link = href(&able.base().await["_links"]["deploymentBase"]).to_owned();
    let (_, body) = able.get(&link).await;
    assert_eq!(body["deployment"]["update"], "forced", "{body}");
    let closed = swupdate_feedback(action, "closed", "success", 0, 0, "Update Installed.");
    assert_eq!(able.feedback(action, &closed).await.0, StatusCode::OK);
    assert_eq!(update_of(&app, &held, "d00").await["state"], "INSTALLED");
    // The stock device gets it now, forced.
    let link = href(&stock.base().await["_links"]["deploymentBase"]).to_owned();
    assert_eq!(stock.get(&link).await.1["deployment"]["update"], "forced");
}
