//! The upload form of `createContent` (multipart POST to the signed URL):
//! the signature is checked before any form field is read, and the fields
//! before the file are few and small.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::json;

use crate::support::TestApp;

const BOUNDARY: &str = "otadepot-form-boundary";

async fn upload_url(app: &TestApp) -> String {
    let form = app
        .operator("package_admin")
        .ok(
            "mutation { createContent(content: {name: \"a\", content_type: \"x\", type: \"firmware\", length: 3}) { url } }",
            json!({}),
        )
        .await;
    form["createContent"]["url"].as_str().unwrap().to_owned()
}

/// Small form fields without end: a first batch, then the body stays open.
fn endless_fields() -> reqwest::Body {
    let head: Vec<u8> = (0..200)
        .flat_map(|i| {
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nvalue\r\n").into_bytes()
        })
        .collect();
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(futures::stream::pending());
    reqwest::Body::wrap_stream(stream)
}

async fn post_open(app: &TestApp, url: &str) -> StatusCode {
    let request = app
        .client
        .post(url)
        .header(CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(endless_fields());
    tokio::time::timeout(Duration::from_secs(20), request.send())
        .await
        .expect("the server answers without reading the rest of the form")
        .expect("an answer")
        .status()
}

#[tokio::test]
async fn a_bad_signature_is_refused_before_any_field_is_read() {
    let app = TestApp::start().await;
    let url = upload_url(&app).await;
    let (base, _) = url.split_once("&sig=").unwrap();
    let forged = format!("{base}&sig={}", "A".repeat(43));
    assert_eq!(post_open(&app, &forged).await, StatusCode::FORBIDDEN);
    let content_id = url.split("/uploads/content/").nth(1).unwrap().split('?').next().unwrap();
    let changed =
        url.replace(&format!("/uploads/content/{content_id}?exp="), &format!("/uploads/content/{content_id}?exp=1"));
    assert_eq!(post_open(&app, &changed).await, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_valid_url_takes_a_few_small_fields_only() {
    let app = TestApp::start().await;
    let url = upload_url(&app).await;
    assert_eq!(post_open(&app, &url).await, StatusCode::BAD_REQUEST);

    // The form as `createContent` describes it still works.
    let form = reqwest::multipart::Form::new()
        .text("content_id", url.split("/uploads/content/").nth(1).unwrap().split('?').next().unwrap().to_owned())
        .part("file", reqwest::multipart::Part::bytes(b"abc".to_vec()).file_name("a.bin"));
    let response = app.client.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
}
