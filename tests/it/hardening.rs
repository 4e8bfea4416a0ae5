//! Smaller hardening rules: the length of `auth.url_secret`, redaction of
//! secret-looking keys in the audit trail, and what `/readyz` tells whom.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, binary};

#[tokio::test]
async fn a_url_secret_under_32_bytes_is_refused_at_start_and_the_generated_one_is_long_enough() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(binary())
        .current_dir(dir.path())
        .env_clear()
        .env("OTADEPOT_DATA_DIR", dir.path())
        .env("OTADEPOT_AUTH__URL_SECRET", "0123456789abcdef0123456789abcde")
        .arg("serve")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a 31-byte url_secret must not start: {stderr}");
    assert!(stderr.contains("auth.url_secret") && stderr.contains("32"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // 32 bytes are enough; and with none configured, the generated one is longer.
    let app = TestApp::start_with(|c| c.auth.url_secret = otadepot::config::Secret::new("x".repeat(32))).await;
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    let generated = TestApp::start().await;
    let secret = std::fs::read_to_string(generated.dir.path().join("url-secret")).unwrap();
    assert!(secret.trim().len() >= 32, "generated url secret of {} bytes", secret.trim().len());
}

#[tokio::test]
async fn command_args_that_look_like_secrets_are_redacted_in_the_audit_trail() {
    let app = TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = Duration::from_millis(50);
        c.commands.custom_names = vec!["SET_WIFI".into()];
    })
    .await;
    let admin = app.operator("admin");
    admin.ok("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({})).await;
    let (_, devices) = crate::support::fleet_in_group(&app, 1, "X100", "fleet").await;
    let args = json!({
        "ssid": "plant-7",
        "wifi_psk": "hunter2",
        "apiKey": "k-123",
        "passphrase": "open sesame",
        "Pass": "p",
        "sessionToken": "t-1",
        "credentials": {"user": "u"},
        "retries": 3,
    });
    let sent = app
        .operator("deployment_manager")
        .ok(
            "mutation($i: SendCommandInput!) { sendCommand(input: $i) { batchId } }",
            json!({"i": {"devices": ["d00"], "name": "SET_WIFI", "args": args}}),
        )
        .await;
    let batch = sent["sendCommand"]["batchId"].as_str().unwrap().to_owned();
    let events = app
        .operator("auditor")
        .ok(
            "query($id: String) { auditEvents(filter: {action: \"command.send\", objectId: $id}) { edges { node { details } } } }",
            json!({"id": batch}),
        )
        .await;
    let details = &events["auditEvents"]["edges"][0]["node"]["details"];
    assert_eq!(
        details["args"],
        json!({
            "ssid": "plant-7",
            "wifi_psk": "[redacted]",
            "apiKey": "[redacted]",
            "passphrase": "[redacted]",
            "Pass": "[redacted]",
            "sessionToken": "[redacted]",
            "credentials": "[redacted]",
            "retries": 3,
        }),
        "{details}"
    );
    assert!(!details.to_string().contains("hunter2"), "{details}");
    // Only the trail is redacted: the device gets what it was sent.
    let poll = app.client.get(app.url("/device/v1/poll")).bearer_auth(&devices[0].1).send().await.unwrap();
    let body: Value = poll.json().await.unwrap();
    assert_eq!(body["commands"][0]["args"]["wifi_psk"], "hunter2", "{body}");
}

#[tokio::test]
async fn readyz_tells_a_bare_probe_its_status_alone_and_an_operator_everything() {
    let app = TestApp::start_with(|c| c.scanner.clamd = "tcp://127.0.0.1:1".into()).await;
    let bare = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::OK);
    let body: Value = bare.json().await.unwrap();
    assert_eq!(body, json!({"status": "degraded"}), "no versions, latencies or errors for a bare probe");

    let wrong = app.client.get(app.url("/readyz")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(!wrong.text().await.unwrap().contains("clamd"));

    // Any valid operator token, whatever its roles.
    let token = app.token_for("probe-admin", &["no-such-role"]);
    let detailed = app.client.get(app.url("/readyz")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(detailed.status(), StatusCode::OK);
    let body: Value = detailed.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["database"]["ok"], true, "{body}");
    assert!(body["checks"]["clamd"]["error"].as_str().unwrap().contains("clamd"), "{body}");
}
