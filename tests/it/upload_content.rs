//! `uploadContent`: the GraphQL multipart request, sent by reqwest and by
//! the stock Python `gql` client; the same state machine, audit events and
//! scan job as the upload URL.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

use crate::support::{TestApp, count_rows, error_code};

const UPLOAD: &str = "mutation($input: UploadContentInput!, $file: Upload!) { uploadContent(input: $input, file: $file) { content { id state length sha256 sha1 name type contentType tags { name value } } } }";
const GET: &str = "query($id: ID!) { content(id: $id) { state sha256 downloadUrl } }";

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// The multipart request of the spec: operations, map, then the file.
fn form(input: Value, data: Vec<u8>) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .text("operations", json!({ "query": UPLOAD, "variables": { "input": input, "file": null } }).to_string())
        .text("map", json!({ "0": ["variables.file"] }).to_string())
        .part(
            "0",
            reqwest::multipart::Part::bytes(data).file_name("fw.bin").mime_str("application/octet-stream").unwrap(),
        )
}

async fn upload(app: &TestApp, token: &str, input: Value, data: Vec<u8>) -> (StatusCode, Value) {
    let response =
        app.client.post(app.url("/graphql")).bearer_auth(token).multipart(form(input, data)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn wait_promoted(app: &TestApp, id: &str) -> Value {
    let op = app.operator("viewer");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let content = op.ok(GET, json!({"id": id})).await["content"].clone();
        if content["state"] == "PROMOTED" {
            return content;
        }
        assert!(std::time::Instant::now() < deadline, "not promoted: {content}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn upload_content_stages_the_file_queues_its_scan_and_audits_both_steps() {
    let app = TestApp::start_unscanned().await;
    let token = app.token_for("alice", &["package_admin"]);
    // Larger than one chunk of the body, so the file really streams.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let input = json!({
        "name": "fw.bin", "type": "firmware", "contentType": "application/octet-stream",
        "length": data.len(), "sha256": sha256(&data), "tags": [{"name": "channel", "value": "beta"}],
    });
    let (status, body) = upload(&app, &token, input, data.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let content = &body["data"]["uploadContent"]["content"];
    assert!(["STAGED", "SCANNING", "CLEAN", "PROMOTED"].contains(&content["state"].as_str().unwrap()), "{content}");
    assert_eq!(content["length"], data.len());
    assert_eq!(content["sha256"], sha256(&data));
    assert_eq!(content["sha1"], hex::encode(sha1::Sha1::digest(&data)), "the SHA-1 hawkBit DDI clients check");
    assert_eq!(content["tags"], json!([{"name": "channel", "value": "beta"}]));
    let id = content["id"].as_str().unwrap();

    let promoted = wait_promoted(&app, id).await;
    let url = promoted["downloadUrl"].as_str().unwrap();
    let downloaded = app.client.get(url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(downloaded.as_ref(), data.as_slice());

    let events = app
        .operator("auditor")
        .ok(
            "query($id: String) { auditEvents(filter: {objectId: $id}) { edges { node { action actor { id } } } } }",
            json!({"id": id}),
        )
        .await;
    let actions: Vec<(String, String)> = events["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["node"]["action"].as_str().unwrap().to_owned(), e["node"]["actor"]["id"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(actions.contains(&("content.create".into(), "alice".into())), "{actions:?}");
    assert!(actions.contains(&("content.upload".into(), "alice".into())), "{actions:?}");
}

#[tokio::test]
async fn a_failed_upload_content_leaves_its_content_deleted_and_no_object() {
    let app = TestApp::start_unscanned().await;
    let token = app.token_for("alice", &["package_admin"]);
    let data = b"not what was declared".to_vec();
    let input = json!({
        "name": "fw.bin", "type": "firmware", "contentType": "x", "length": data.len(), "sha256": "0".repeat(64),
    });
    let (status, body) = upload(&app, &token, input.clone(), data.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["field"], "sha256", "{body}");
    let deleted = app
        .operator("viewer")
        .ok("{ contents(filter: {state: DELETED}) { totalCount } all: contents { totalCount } }", json!({}))
        .await;
    assert_eq!(deleted["contents"]["totalCount"], 1, "{deleted}");
    assert_eq!(deleted["all"]["totalCount"], 0, "nothing uploadable is left: {deleted}");
    let staging = app.dir.path().join("staging");
    let objects = walk(&staging);
    assert!(objects.is_empty(), "no staged object: {objects:?}");

    // A file longer than declared stops the upload as well.
    let short = json!({ "name": "fw.bin", "type": "firmware", "contentType": "x", "length": 3 });
    let (_, body) = upload(&app, &token, short, data).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["field"], "length", "{body}");
}

/// Files under `dir`, but the store's marker.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else if path.file_name().is_some_and(|n| n != ".otadepot-store") {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn upload_content_checks_permission_and_input_before_it_reads_the_file() {
    let app = TestApp::start_unscanned().await;
    let input = json!({ "name": "fw.bin", "type": "firmware", "contentType": "x", "length": 3 });
    let viewer = app.token_for("v", &["viewer"]);
    let (_, body) = upload(&app, &viewer, input.clone(), b"abc".to_vec()).await;
    assert_eq!(error_code(&body), "FORBIDDEN", "{body}");

    let writer = app.token_for("w", &["package_admin"]);
    let bad = json!({ "name": "fw.bin", "type": "no spaces", "contentType": "x", "length": 3 });
    let (_, body) = upload(&app, &writer, bad, b"abc".to_vec()).await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "type", "{body}");
    // A package's manifest is made elsewhere.
    let package = json!({ "name": "p", "type": "manifest", "contentType": "x", "length": 3, "tags": [{"name": "otau_info", "value": "{}"}] });
    let (_, body) = upload(&app, &writer, package, b"abc".to_vec()).await;
    assert_eq!(body["errors"][0]["extensions"]["field"], "tags.name", "{body}");
    assert_eq!(count_rows(app.db(), "content").await, 0, "nothing was created");

    // Without a multipart request there is no file.
    let body = app.with_token(&writer).gql(UPLOAD, json!({ "input": input, "file": "0" })).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["field"], "file", "{body}");
    assert_eq!(count_rows(app.db(), "content").await, 0);
}

/// The stock Python `gql` client (`upload_files=True`): `scripts/test`
/// installs it into a virtualenv and names its python in
/// OTADEPOT_TEST_PYTHON; skipped without it outside CI.
#[tokio::test]
async fn the_python_gql_client_uploads_content() {
    let Ok(python) = std::env::var("OTADEPOT_TEST_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "CI must run this through scripts/test (OTADEPOT_TEST_PYTHON)");
        eprintln!("skipped: no OTADEPOT_TEST_PYTHON (run scripts/test)");
        return;
    };
    let app = TestApp::start_unscanned().await;
    let token = app.token_for("script", &["package_admin"]);
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let file = app.dir.path().join("firmware-1.2.3.bin");
    std::fs::write(&file, &data).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upload_content_gql.py");
    let url = app.url("/graphql");
    // Off the runtime: the server answers the script meanwhile.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).arg(url).arg(token).arg(file).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    let content = &result["uploadContent"]["content"];
    assert_eq!(content["name"], "firmware-1.2.3.bin");
    assert_eq!(content["length"], data.len());
    assert_eq!(content["sha256"], sha256(&data));
    assert_eq!(content["tags"], json!([{"name": "uploaded-by", "value": "gql"}]));

    let promoted = wait_promoted(&app, content["id"].as_str().unwrap()).await;
    let downloaded =
        app.client.get(promoted["downloadUrl"].as_str().unwrap()).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(downloaded.as_ref(), data.as_slice());
}
