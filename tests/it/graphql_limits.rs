//! Limits of `/graphql` that hold before anything runs: the caller is
//! known before the body is read, multipart parts are bounded and never
//! buffered past their limit, one file per request, batches bounded in
//! length and sharing one complexity budget.
//!
//! Bodies that "never end" are streams that send a first piece and then
//! stay open: the server must answer while the body is still open, which
//! proves it did not wait to read (let alone buffer) the rest.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::support::{TestApp, count_rows, error_code};

const BOUNDARY: &str = "otadepot-test-boundary";

/// A body that sends `head` and then stays open for good.
fn endless(head: Vec<u8>) -> reqwest::Body {
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(futures::stream::pending());
    reqwest::Body::wrap_stream(stream)
}

/// The start of a multipart part named `name`.
fn part_head(name: &str) -> String {
    format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
}

/// POST `body` as multipart and wait for the answer (the server must give
/// it while the body is still open: a server reading on would never answer).
async fn post_open(app: &TestApp, token: Option<&str>, body: reqwest::Body) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(app.url("/graphql"))
        .header(CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(Duration::from_secs(20), request.send())
        .await
        .expect("the server answers without waiting for the rest of the body")
        .expect("an answer");
    let status = response.status();
    (status, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn anonymous_and_bad_token_multipart_requests_are_401_before_the_body_is_read() {
    let app = TestApp::start().await;
    let head = format!("{}{{\"query\": \"{{ me {{ subject }} }}\"", part_head("operations")).into_bytes();
    let (status, body) = post_open(&app, None, endless(head.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "UNAUTHENTICATED");

    let (status, body) = post_open(&app, Some("not.a.jwt"), endless(head)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
}

#[tokio::test]
async fn oversized_operations_and_map_parts_are_413_before_they_end() {
    let app = TestApp::start_with(|c| c.http.max_body_bytes = 4096).await;
    let token = app.token_for("alice", &["package_admin"]);

    let mut head = part_head("operations").into_bytes();
    head.extend(std::iter::repeat_n(b' ', 64 * 1024));
    let (status, body) = post_open(&app, Some(&token), endless(head)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(error_code(&body), "PAYLOAD_TOO_LARGE");

    let mut head =
        format!("{}{{\"query\": \"{{ me {{ subject }} }}\"}}\r\n{}", part_head("operations"), part_head("map"))
            .into_bytes();
    head.extend(std::iter::repeat_n(b' ', 64 * 1024));
    let (status, body) = post_open(&app, Some(&token), endless(head)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    // Bytes that never become a part (a preamble without a boundary) are
    // bounded as well: twice the part limit and a little.
    let head = vec![b'x'; 3 * 1024 * 1024];
    let (status, body) = post_open(&app, Some(&token), endless(head)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

const UPLOAD: &str = "mutation($input: UploadContentInput!, $file: Upload!) { uploadContent(input: $input, file: $file) { content { id state } } }";

fn upload_operations(length: usize) -> String {
    json!({
        "query": UPLOAD,
        "variables": { "input": { "name": "a.bin", "type": "firmware", "contentType": "application/octet-stream", "length": length }, "file": null }
    })
    .to_string()
}

#[tokio::test]
async fn a_multipart_request_carries_one_file() {
    let app = TestApp::start_unscanned().await;
    let token = app.token_for("alice", &["package_admin"]);
    let form = reqwest::multipart::Form::new()
        .text("operations", upload_operations(3))
        .text("map", json!({ "0": ["variables.file"], "1": ["variables.other"] }).to_string())
        .part("0", reqwest::multipart::Part::bytes(b"abc".to_vec()).file_name("a.bin"))
        .part("1", reqwest::multipart::Part::bytes(b"def".to_vec()).file_name("b.bin"));
    let response = app.client.post(app.url("/graphql")).bearer_auth(&token).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("one file"), "{body}");
    assert_eq!(count_rows(app.db(), "content").await, 0, "nothing ran");

    // One path per file, and the part after the map must be that file.
    for (map, file_part) in
        [(json!({ "0": ["variables.file", "variables.file"] }), "0"), (json!({ "0": ["variables.file"] }), "9")]
    {
        let form = reqwest::multipart::Form::new()
            .text("operations", upload_operations(3))
            .text("map", map.to_string())
            .part(file_part, reqwest::multipart::Part::bytes(b"abc".to_vec()).file_name("a.bin"));
        let response = app.client.post(app.url("/graphql")).bearer_auth(&token).multipart(form).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{map}");
    }
    assert_eq!(count_rows(app.db(), "content").await, 0, "nothing ran");

    // Operations and map come first, in that order.
    let form = reqwest::multipart::Form::new()
        .text("map", json!({ "0": ["variables.file"] }).to_string())
        .text("operations", upload_operations(3));
    let response = app.client.post(app.url("/graphql")).bearer_auth(&token).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_multipart_body_beyond_the_upload_limit_is_413_at_once() {
    let app = TestApp::start_with(|c| {
        c.http.max_upload_bytes = 1024;
        c.http.max_body_bytes = 4096;
    })
    .await;
    let token = app.token_for("alice", &["package_admin"]);
    // Content-Length says it all (more than the largest upload plus its
    // parts): refused before a byte of the body is read.
    let head = format!("{}{}", part_head("operations"), upload_operations(1024)).into_bytes();
    let request = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .header(CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
        .header(reqwest::header::CONTENT_LENGTH, 8 * 1024 * 1024)
        .body(endless(head));
    let response = tokio::time::timeout(Duration::from_secs(20), request.send())
        .await
        .expect("the server answers without reading the body")
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "PAYLOAD_TOO_LARGE");
    assert_eq!(count_rows(app.db(), "content").await, 0);
}

const CREATE_ROLE: &str =
    "mutation($n: String!) { createRole(input: {name: $n, permissions: [AUDIT_READ]}) { role { name } } }";

async fn post_batch(app: &TestApp, batch: &Value) -> (StatusCode, Value) {
    let token = app.token_for("root", &["admin"]);
    let response = app.client.post(app.url("/graphql")).bearer_auth(&token).json(batch).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn custom_roles(app: &TestApp) -> usize {
    let roles = app.operator("admin").ok("{ roles { name } }", json!({})).await;
    roles["roles"].as_array().unwrap().iter().filter(|r| r["name"].as_str().unwrap().starts_with("batch-")).count()
}

#[tokio::test]
async fn a_batch_longer_than_max_batch_is_400_and_nothing_runs() {
    let app = TestApp::start().await;
    let batch = |n: usize| {
        Value::Array(
            (0..n).map(|i| json!({ "query": CREATE_ROLE, "variables": { "n": format!("batch-{i}") } })).collect(),
        )
    };
    let (status, body) = post_batch(&app, &batch(11)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("at most 10"), "{body}");
    assert_eq!(custom_roles(&app).await, 0, "no operation of the batch ran");

    let (status, body) = post_batch(&app, &batch(5000)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(custom_roles(&app).await, 0);

    // Up to the limit, a batch runs.
    let (status, body) = post_batch(&app, &batch(10)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 10);
    assert_eq!(custom_roles(&app).await, 10);
}

#[tokio::test]
async fn the_operations_of_a_batch_share_one_complexity_budget() {
    let app = TestApp::start_with(|c| c.graphql.max_complexity = 25).await;
    // 12 aliases of `me { subject }`: complexity 24, within the budget alone.
    let heavy = format!("{{ {} }}", (0..12).map(|i| format!("m{i}: me {{ subject }}")).collect::<Vec<_>>().join(" "));
    let create = json!({ "query": CREATE_ROLE, "variables": { "n": "batch-a" } });
    let (status, body) = post_batch(&app, &json!([{ "query": heavy }])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body[0].get("errors").is_none(), "alone it is within the limit: {body}");

    // Together with a mutation they are over it: refused before the mutation runs.
    let (status, body) = post_batch(&app, &json!([create, { "query": heavy }])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("complex"), "{body}");
    assert_eq!(custom_roles(&app).await, 0, "the mutation did not run");

    // Each alone runs.
    let (status, body) = post_batch(&app, &json!([create, { "query": "{ me { subject } }" }])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(custom_roles(&app).await, 1);
}
