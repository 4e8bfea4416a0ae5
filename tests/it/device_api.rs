//! One transaction per device call: an EnOS call that moves an update
//! several steps (or records a version and acknowledges) commits all of
//! them or none. The failure is injected at the database, by a trigger the
//! test creates on the table of a later step, so the server runs exactly
//! the code it runs in production.

use std::time::Duration;

use reqwest::StatusCode;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, backend, query_i64};

/// Make every `event` (INSERT, UPDATE) on `table` whose new row matches
/// `when` (SQL over `NEW`) fail with an error, until [`drop_failure`].
async fn inject_failure(app: &TestApp, name: &str, event: &str, table: &str, when: &str) {
    let db = app.db();
    match backend() {
        Backend::Sqlite => {
            db.execute_unprepared(&format!(
                "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW WHEN {when} \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
            ))
            .await
            .unwrap();
        }
        Backend::Postgres => {
            db.execute_unprepared(&format!(
                "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
            ))
            .await
            .unwrap();
            db.execute_unprepared(&format!(
                "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {name}()"
            ))
            .await
            .unwrap();
        }
    }
}

async fn drop_failure(app: &TestApp, name: &str, table: &str) {
    let db = app.db();
    match backend() {
        Backend::Sqlite => db.execute_unprepared(&format!("DROP TRIGGER {name}")).await.unwrap(),
        Backend::Postgres => {
            db.execute_unprepared(&format!("DROP TRIGGER {name} ON {table}")).await.unwrap();
            db.execute_unprepared(&format!("DROP FUNCTION {name}()")).await.unwrap()
        }
    };
}

/// Device `enos-1` (model X100) with a released update to firmware
/// v2.0.0.1: the app and the device's secret.
async fn released_update() -> (TestApp, String) {
    let app = TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = Duration::from_millis(50);
        c.deployments.reconcile_interval = Duration::from_millis(200);
    })
    .await;
    let admin = app.operator("admin");
    admin.ok("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({})).await;
    let (_, package) = app.firmware_package("v2.0.0.1", "fw.bin", b"EnOS firmware v2.0.0.1").await;
    let secret = admin
        .ok("mutation { registerDevice(input: {endpointId: \"enos-1\", model: \"X100\"}) { secret } }", json!({}))
        .await["registerDevice"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    app.operator("deployment_manager")
        .ok(
            "mutation($i: ApplyPackageInput!) { applyPackage(input: $i) { deployment { id } } }",
            json!({"i": {"package": package, "devices": ["enos-1"]}}),
        )
        .await;
    assert_eq!(update_state(&app).await, "RELEASED");
    (app, secret)
}

async fn post(app: &TestApp, secret: &str, path: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url(path)).bearer_auth(secret).json(&body).send().await.unwrap()
}

async fn update_state(app: &TestApp) -> String {
    let d = app
        .operator("viewer")
        .ok("{ deviceByEndpointId(endpointId: \"enos-1\") { updates { edges { node { state } } } } }", json!({}))
        .await;
    d["deviceByEndpointId"]["updates"]["edges"][0]["node"]["state"].as_str().unwrap().to_owned()
}

/// Audit events that a device call writes.
async fn device_events(app: &TestApp) -> i64 {
    query_i64(
        app.db(),
        "SELECT COUNT(*) AS n FROM audit_event WHERE action IN \
         ('device.inventory', 'device_update.installed', 'device_update.failed')",
    )
    .await
}

#[tokio::test]
async fn an_enos_update_result_commits_all_its_steps_or_none() {
    let (app, secret) = released_update().await;
    let check = post(&app, &secret, "/checkversion", json!({"assetId": "", "version": ""})).await;
    assert_eq!(check.status(), StatusCode::OK);
    assert_eq!(update_state(&app).await, "ACKNOWLEDGED");
    let events = device_events(&app).await;

    // flag 2, process 100 from ACKNOWLEDGED: DOWNLOADED, INSTALLING, then
    // INSTALLED, whose installation row the trigger refuses.
    inject_failure(&app, "fail_installation", "INSERT", "installation", "1 = 1").await;
    let done = json!({"assetId": "", "version": "v2.0.0.1", "desc": "update completed", "flag": 2, "process": 100, "errcode": 0});
    let failed = post(&app, &secret, "/updateresult", done.clone()).await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body["httpstatus"], 500, "{body}");
    // Nothing of the call is left: not the first steps, not the outcome.
    assert_eq!(update_state(&app).await, "ACKNOWLEDGED");
    assert_eq!(query_i64(app.db(), "SELECT COUNT(*) AS n FROM device_update WHERE progress <> 0").await, 0);
    assert_eq!(query_i64(app.db(), "SELECT COUNT(*) AS n FROM installation").await, 0);
    assert_eq!(query_i64(app.db(), "SELECT COUNT(*) AS n FROM device_installed").await, 0);
    assert_eq!(device_events(&app).await, events);

    // Without the fault the same call goes through.
    drop_failure(&app, "fail_installation", "installation").await;
    assert_eq!(post(&app, &secret, "/updateresult", done).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(update_state(&app).await, "INSTALLED");
    assert_eq!(query_i64(app.db(), "SELECT COUNT(*) AS n FROM installation").await, 1);
    assert_eq!(device_events(&app).await, events + 1);
    app.stop().await;
}

#[tokio::test]
async fn an_enos_check_version_records_the_version_and_acknowledges_together_or_not_at_all() {
    let (app, secret) = released_update().await;
    let events = device_events(&app).await;
    // The version is recorded first (device_installed, installation, an
    // audit event); the acknowledgement after it fails.
    inject_failure(&app, "fail_acknowledge", "UPDATE", "device_update", "NEW.state = 'ACKNOWLEDGED'").await;
    let check = json!({"assetId": "", "version": "1.5.0", "serialNum": "x"});
    let failed = post(&app, &secret, "/checkversion", check.clone()).await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(update_state(&app).await, "RELEASED");
    assert_eq!(query_i64(app.db(), "SELECT COUNT(*) AS n FROM device_installed").await, 0);
    assert_eq!(query_i64(app.db(), "SELECT COUNT(*) AS n FROM installation").await, 0);
    assert_eq!(device_events(&app).await, events);

    drop_failure(&app, "fail_acknowledge", "device_update").await;
    let answer: Value = post(&app, &secret, "/checkversion", check).await.json().await.unwrap();
    assert_eq!((answer["code"].as_i64(), answer["version"].as_str()), (Some(1), Some("v2.0.0.1")), "{answer}");
    assert_eq!(update_state(&app).await, "ACKNOWLEDGED");
    assert_eq!(
        query_i64(
            app.db(),
            "SELECT COUNT(*) AS n FROM device_installed WHERE component = 'firmware' AND version = '1.5.0'"
        )
        .await,
        1
    );
    assert_eq!(device_events(&app).await, events + 1);
    app.stop().await;
}

/// `POST` a raw body; the status and the body's exact text.
async fn post_raw(app: &TestApp, secret: &str, path: &str, body: &str) -> (StatusCode, String) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// The answers' exact bytes, key order included (the adapters write wire
/// structs; a device parser may depend on more than the JSON's meaning):
/// a `/device/v1` poll with an update and a command, `/checkversion` with
/// and without an update, the device view, a status report's and a command
/// result's answers, and the field each bad body is refused on.
#[tokio::test]
async fn device_answers_keep_their_exact_bytes() {
    let (app, secret) = released_update().await;
    let admin = app.operator("admin");
    let batch = admin
        .ok(
            "mutation { sendCommand(input: {devices: [\"enos-1\"], name: \"REBOOT\", args: {delay: 5}}) { batchId } }",
            json!({}),
        )
        .await;
    assert!(batch["sendCommand"]["batchId"].is_string(), "{batch}");

    let response = app.client.get(app.url("/device/v1/poll")).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let poll: Value = serde_json::from_str(&text).unwrap();
    let (update, command) = (&poll["update"], &poll["commands"][0]);
    assert_eq!(
        text,
        format!(
            r#"{{"commands":[{{"args":{{"delay":5}},"expiresAt":"{}","id":"{}","name":"REBOOT"}}],"update":{{"action":"DOWNLOAD","deploymentId":"{}","id":"{}","manifest":{},"state":"RELEASED"}}}}"#,
            command["expiresAt"].as_str().unwrap(),
            command["id"].as_str().unwrap(),
            update["deploymentId"].as_str().unwrap(),
            update["id"].as_str().unwrap(),
            serde_json::to_string(&update["manifest"]).unwrap(),
        )
    );
    let manifest = &update["manifest"];
    assert!(manifest["signature"]["value"].is_string() && manifest["files"][0]["sha256"].is_string(), "{manifest}");

    let md5 = hex::encode(<md5::Md5 as sha2::Digest>::digest(b"EnOS firmware v2.0.0.1"));
    let (status, text) = post_raw(&app, &secret, "/checkversion", r#"{"assetId":"","version":"1.0.0"}"#).await;
    assert_eq!(status, StatusCode::OK);
    let update_id = update["id"].as_str().unwrap();
    assert_eq!(
        text,
        format!(
            r#"{{"assetId":"enos-1","code":1,"desc":"has update","downloadurl":"/version/{update_id}","sign":"{md5}","signMethod":"MD5","version":"v2.0.0.1"}}"#
        )
    );
    let other = admin
        .ok("mutation { registerDevice(input: {endpointId: \"enos-2\", model: \"X100\"}) { secret } }", json!({}))
        .await["registerDevice"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, text) = post_raw(&app, &other, "/checkversion", r#"{"assetId":"enos-2","version":1.5}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        text,
        r#"{"assetId":"enos-2","code":0,"desc":"no update","downloadurl":"","sign":"","signMethod":"","version":"1.5"}"#
    );

    let path = format!("/device/v1/updates/{update_id}/status");
    let (status, text) = post_raw(&app, &secret, &path, r#"{"status":"DOWNLOADING","progress":40}"#).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let deployment = update["deploymentId"].as_str().unwrap();
    assert_eq!(
        text,
        format!(
            r#"{{"deploymentId":"{deployment}","errcode":null,"id":"{update_id}","message":null,"progress":40,"state":"DOWNLOADING"}}"#
        )
    );
    let command_id = command["id"].as_str().unwrap();
    let (status, text) =
        post_raw(&app, &secret, &format!("/device/v1/commands/{command_id}"), r#"{"status":"ACKNOWLEDGED"}"#).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, format!(r#"{{"id":"{command_id}","message":null,"name":"REBOOT","state":"ACKNOWLEDGED"}}"#));
    let (status, text) = post_raw(
        &app,
        &secret,
        &format!("/device/v1/commands/{command_id}"),
        r#"{"status":"SUCCEEDED","result":{"up":true},"message":"rebooted"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, format!(r#"{{"id":"{command_id}","message":"rebooted","name":"REBOOT","state":"SUCCEEDED"}}"#));

    // Its first call made it ACTIVE, written by the seen flush in the
    // background (`devices.seen_flush_interval`): wait for it, so the
    // bytes below do not depend on how fast the calls above went.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while admin.ok("{ deviceByEndpointId(endpointId: \"enos-1\") { status } }", json!({})).await["deviceByEndpointId"]["status"]
        != "ACTIVE"
    {
        assert!(std::time::Instant::now() < deadline, "the device was never made ACTIVE");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, text) = post_raw(
        &app,
        &secret,
        "/device/v1/inventory",
        r#"{"installed":{"firmware":"1.5.0","agent":4},"attributes":{"region":"eu","beta":true,"gone":null}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let view: Value = serde_json::from_str(&text).unwrap();
    let device_id = view["id"].as_str().unwrap();
    let expected = format!(
        r#"{{"attributes":{{"beta":"true","region":"eu"}},"endpointId":"enos-1","id":"{device_id}","installed":{{"agent":"4","firmware":"1.5.0"}},"model":"X100","operatorAttributes":{{}},"status":"ACTIVE"}}"#
    );
    assert_eq!(text, expected);
    let me = app.client.get(app.url("/device/v1/device")).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(me.text().await.unwrap(), expected);

    // Bad bodies: BAD_USER_INPUT on the field at fault, with its reason.
    for (path, body, field, message) in [
        ("/device/v1/inventory", "[1]", "body", "must be a JSON object {\"installed\", \"attributes\"}"),
        (
            "/device/v1/inventory",
            r#"{"installed":{},"colour":"red"}"#,
            "colour",
            "unknown field (installed, attributes)",
        ),
        ("/device/v1/inventory", r#"{"installed":[]}"#, "installed", "must be an object of name to value"),
        ("/device/v1/inventory", r#"{"attributes":{"a":[1]}}"#, "attributes", "a: a string, number, boolean or null"),
        (path.as_str(), r#"{"progress":40}"#, "status", "is required"),
        (path.as_str(), r#"{"status":["DOWNLOADING"]}"#, "status", "must be a string"),
        (path.as_str(), r#"{"status":"DOWNLOADING","progress":"40"}"#, "progress", "an integer from 0 to 100"),
        (path.as_str(), r#"{"status":"DOWNLOADING","progress":4.5}"#, "progress", "an integer"),
        (path.as_str(), r#"{"status":"INSTALLED_VERSION","version":{}}"#, "version", "must be a string"),
        (path.as_str(), r#"{"status":"FAILED","errcode":true}"#, "errcode", "must be a string"),
        (path.as_str(), r#"{"status":"FAILED","message":[]}"#, "message", "must be a string"),
        (
            &format!("/device/v1/commands/{command_id}"),
            r#"{"status":"FAILED","why":1}"#,
            "why",
            "unknown field (status, result, message)",
        ),
        (&format!("/device/v1/commands/{command_id}"), r#"{"result":1}"#, "status", "is required"),
    ] {
        let (status, text) = post_raw(&app, &secret, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (error["error"]["field"].as_str(), error["error"]["message"].as_str()),
            (Some(field), Some(format!("{field}: {message}").as_str())),
            "{path} {body}: {text}"
        );
    }
    let (status, text) = post_raw(&app, &secret, "/device/v1/inventory", "{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains(r#""field":"body""#) && text.contains("not JSON: "), "{text}");
    for (path, body, field, message) in [
        ("/updateresult", r#"{"assetId":"","version":"","flag":"x","process":0}"#, "flag", "an integer"),
        ("/updateresult", r#"{"assetId":"","version":"","flag":1.5,"process":0}"#, "flag", "an integer"),
        ("/updateresult", r#"{"assetId":"","version":"","flag":1}"#, "process", "is required (an integer)"),
        (&format!("/downloadresult/{update_id}"), r#"{"assetId":"","code":null}"#, "code", "is required (an integer)"),
        ("/checkversion", "[]", "body", "must be a JSON object"),
    ] {
        let (status, text) = post_raw(&app, &secret, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["httpstatus"], 400, "{text}");
        assert_eq!(error["message"], format!("{field}: {message}"), "{path} {body}: {text}");
    }
    app.stop().await;
}
