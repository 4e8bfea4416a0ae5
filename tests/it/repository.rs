//! Repository downloads: streamed bytes, Range, ETag, digests, access.

use base64::Engine;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::TestApp;

const CREATE: &str = "mutation($c: ContentInput) { createContent(content: $c) { id url } }";
const GET: &str = "query($id: ID!, $ttl: Int) { content(id: $id) { state downloadUrl(ttlSeconds: $ttl) } }";

async fn app() -> TestApp {
    TestApp::start_unscanned().await
}

async fn promoted(app: &TestApp, data: &[u8]) -> (String, Value) {
    app.promoted("fw v1.bin", data).await
}

fn data() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect()
}

#[tokio::test]
async fn a_signed_url_downloads_the_bytes_with_their_digests() {
    let app = app().await;
    let data = data();
    let (_, content) = promoted(&app, &data).await;
    let url = content["downloadUrl"].as_str().unwrap();
    assert!(url.contains("/fw%20v1.bin?"), "{url}");
    let response = app.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sha = Sha256::digest(&data);
    let headers = response.headers().clone();
    assert_eq!(headers[ETAG], format!("\"{}\"", hex::encode(sha)));
    // Never for a shared cache, and no longer than the URL lives (an hour).
    let max_age: i64 =
        headers["cache-control"].to_str().unwrap().strip_prefix("private, max-age=").unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&max_age), "{:?}", headers["cache-control"]);
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers[CONTENT_LENGTH], data.len().to_string());
    assert_eq!(headers["repr-digest"], format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(sha)));
    assert_eq!(response.bytes().await.unwrap().as_ref(), data.as_slice());

    let head = app.client.head(url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()[CONTENT_LENGTH], data.len().to_string());
    assert!(head.bytes().await.unwrap().is_empty());

    let cached = app.client.get(url).header("if-none-match", headers[ETAG].clone()).send().await.unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn ranges_first_middle_last_suffix_open_and_unsatisfiable() {
    let app = app().await;
    let data = data();
    let (_, content) = promoted(&app, &data).await;
    let url = content["downloadUrl"].as_str().unwrap();
    let n = data.len();
    for (range, start, end) in [
        ("bytes=0-9", 0, 9),
        ("bytes=1000-1999", 1000, 1999),
        (&format!("bytes={}-{}", n - 1, n - 1) as &str, n - 1, n - 1),
        ("bytes=-10", n - 10, n - 1),
        ("bytes=99000-", 99_000, n - 1),
        ("bytes=99990-200000", 99_990, n - 1),
    ] {
        let response = app.client.get(url).header("range", range).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(response.headers()[CONTENT_RANGE], format!("bytes {start}-{end}/{n}"), "{range}");
        assert_eq!(response.headers()[CONTENT_LENGTH], (end - start + 1).to_string());
        assert_eq!(response.bytes().await.unwrap().as_ref(), &data[start..=end], "{range}");
    }
    let response = app.client.get(url).header("range", "bytes=200000-").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(response.headers()[CONTENT_RANGE], format!("bytes */{n}"));

    // If-Range: the range holds only for this very object.
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&data)));
    let same = app.client.get(url).header("range", "bytes=0-9").header("if-range", &etag).send().await.unwrap();
    assert_eq!(same.status(), StatusCode::PARTIAL_CONTENT);
    let other = app.client.get(url).header("range", "bytes=0-9").header("if-range", "\"other\"").send().await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(other.bytes().await.unwrap().len(), n);
    // Unparseable or multiple ranges: the whole object.
    for range in ["bytes=a-b", "bytes=0-1,5-6"] {
        let response = app.client.get(url).header("range", range).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{range}");
    }
}

#[tokio::test]
async fn access_needs_a_valid_signature_or_content_read() {
    let app = app().await;
    let data = data();
    let (id, content) = promoted(&app, &data).await;
    let url = content["downloadUrl"].as_str().unwrap();
    let sha = hex::encode(Sha256::digest(&data));
    let bare = app.url(&format!("/repo/{id}/fw.bin"));

    assert_eq!(app.client.get(&bare).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let viewer = app.token_for("v", &["viewer"]);
    let response = app.client.get(&bare).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len(), data.len());
    let by_hash = app.client.get(app.url(&format!("/repo/sha256/{sha}"))).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(by_hash.status(), StatusCode::OK);
    assert_eq!(by_hash.bytes().await.unwrap().as_ref(), data.as_slice());

    app.operator("admin")
        .ok(
            "mutation { createRole(input: {name: \"no-content\", permissions: [AUDIT_READ]}) { role { name } } }",
            json!({}),
        )
        .await;
    let lacking = app.token_for("x", &["no-content"]);
    assert_eq!(app.client.get(&bare).bearer_auth(&lacking).send().await.unwrap().status(), StatusCode::FORBIDDEN);

    for tampered in [
        url.replace("sig=", "sig=x"),
        url.replace("exp=", "exp=1"),
        url.replace(&id, &uuid::Uuid::now_v7().to_string()),
    ] {
        assert_eq!(app.client.get(&tampered).send().await.unwrap().status(), StatusCode::FORBIDDEN, "{tampered}");
    }
    let body = app.operator("viewer").gql(GET, json!({"id": id, "ttl": 5})).await;
    assert_eq!(crate::support::error_code(&body), "BAD_USER_INPUT");

    // Content that is not promoted is not there, whoever asks.
    let form = app
        .operator("package_admin")
        .ok(CREATE, json!({"c": {"name": "pending", "content_type": "x", "type": "firmware", "length": 5}}))
        .await["createContent"]
        .clone();
    let pending = form["id"].as_str().unwrap();
    let content = app.operator("viewer").ok(GET, json!({"id": pending})).await["content"].clone();
    assert!(content["downloadUrl"].is_null());
    let response = app.client.get(app.url(&format!("/repo/{pending}/x"))).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let unknown =
        app.client.get(app.url(&format!("/repo/sha256/{}", "0".repeat(64)))).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}
