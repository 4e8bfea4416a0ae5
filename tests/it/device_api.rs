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
