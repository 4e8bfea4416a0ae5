//! Resumable uploads with the tus 1.0 protocol: creation, offset, a
//! PATCH cut off and resumed, termination, and the protocol's errors.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::support::TestApp;

const CREATE: &str = "mutation($c: ContentInput) { createContent(content: $c) { id url } }";
const GET: &str = "query($id: ID!) { content(id: $id) { state sha256 sha1 } }";

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 13 % 256) as u8).collect()
}

async fn app() -> TestApp {
    TestApp::start_with(|c| c.jobs.in_process = false).await
}

/// A content and the tus creation URL made from its upload URL.
async fn content(app: &TestApp, length: usize) -> (String, String) {
    let form = app
        .operator("package_admin")
        .ok(CREATE, json!({"c": {"name": "big.bin", "content_type": "x", "type": "firmware", "length": length}}))
        .await["createContent"]
        .clone();
    let url = reqwest::Url::parse(form["url"].as_str().unwrap()).unwrap();
    let id = form["id"].as_str().unwrap().to_owned();
    let creation = app.url(&format!("/uploads/tus/?content_id={id}&{}", url.query().unwrap()));
    (id, creation)
}

async fn create(app: &TestApp, creation: &str, length: usize) -> String {
    let response = app
        .client
        .post(creation)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["tus-resumable"], "1.0.0");
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn offset(app: &TestApp, location: &str) -> u64 {
    let response = app.client.head(location).header("tus-resumable", "1.0.0").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    response.headers()["upload-offset"].to_str().unwrap().parse().unwrap()
}

async fn patch(app: &TestApp, location: &str, offset: u64, data: &[u8]) -> reqwest::Response {
    app.client
        .patch(location)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn options_announce_the_protocol() {
    let app = app().await;
    let response = app.client.request(reqwest::Method::OPTIONS, app.url("/uploads/tus/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["tus-version"], "1.0.0");
    assert_eq!(response.headers()["tus-extension"], "creation,termination");
    assert_eq!(response.headers()["tus-resumable"], "1.0.0");
    assert!(response.headers().contains_key("tus-max-size"));
}

#[tokio::test]
async fn a_cut_off_upload_resumes_and_ends_byte_identical() {
    let app = app().await;
    let data = bytes(300_000);
    let (id, creation) = content(&app, data.len()).await;
    let location = create(&app, &creation, data.len()).await;
    assert_eq!(offset(&app, &location).await, 0);

    let response = patch(&app, &location, 0, &data[..100_000]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["upload-offset"], "100000");

    // The link drops in the middle of the next PATCH.
    let url = reqwest::Url::parse(&location).unwrap();
    let mut stream = tokio::net::TcpStream::connect(app.server().addr).await.unwrap();
    let head = format!(
        "PATCH {}?{} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 100000\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 200000\r\n\r\n",
        url.path(),
        url.query().unwrap()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&data[100_000..140_000]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(stream);

    // The client asks where to go on, and sends the rest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let resume_at = loop {
        let at = offset(&app, &location).await;
        if at > 100_000 || std::time::Instant::now() > deadline {
            break at;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(resume_at, 140_000, "what arrived before the cut is kept");
    let response = patch(&app, &location, resume_at, &data[resume_at as usize..]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["upload-offset"], data.len().to_string());

    let content = app.operator("viewer").ok(GET, json!({"id": id})).await;
    assert_eq!(content["content"]["state"], "STAGED");
    assert_eq!(content["content"]["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(content["content"]["sha1"], hex::encode(sha1::Sha1::digest(&data)), "hashed across both requests");
    let staged = std::fs::read(app.dir.path().join("staging/staging").join(&id)).unwrap();
    assert_eq!(staged, data);
    assert!(
        !app.dir.path().join("staging/tus").join(&id).exists()
            || std::fs::read_dir(app.dir.path().join("staging/tus").join(&id)).unwrap().count() == 0,
        "pieces removed"
    );
}

#[tokio::test]
async fn protocol_errors_are_refused() {
    let app = app().await;
    let data = bytes(1000);
    let (_, creation) = content(&app, data.len()).await;

    let response = app.client.post(&creation).header("upload-length", "1000").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED, "no Tus-Resumable");
    assert_eq!(response.headers()["tus-version"], "1.0.0");
    let response = app
        .client
        .post(&creation)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "999")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "length differs from the content's");
    let tampered = creation.replace("sig=", "sig=x");
    let response = app
        .client
        .post(&tampered)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let location = create(&app, &creation, data.len()).await;
    assert_eq!(patch(&app, &location, 10, &data).await.status(), StatusCode::CONFLICT, "wrong offset");
    let wrong_type = app
        .client
        .patch(&location)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(patch(&app, &location, 0, &bytes(1001)).await.status(), StatusCode::BAD_REQUEST, "too long");
    assert_eq!(offset(&app, &location).await, 0);
    // A second creation while the first is open is refused.
    let again = app
        .client
        .post(&creation)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_STATE");
}

#[tokio::test]
async fn termination_frees_the_content_for_another_upload() {
    let app = app().await;
    let data = bytes(5000);
    let (id, creation) = content(&app, data.len()).await;
    let location = create(&app, &creation, data.len()).await;
    patch(&app, &location, 0, &data[..1000]).await;
    let response = app.client.delete(&location).header("tus-resumable", "1.0.0").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let head = app.client.head(&location).header("tus-resumable", "1.0.0").send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    let content = app.operator("viewer").ok(GET, json!({"id": id})).await;
    assert_eq!(content["content"]["state"], "AWAITING_UPLOAD");

    // Start over, all in one PATCH this time.
    let location = create(&app, &creation, data.len()).await;
    assert_eq!(patch(&app, &location, 0, &data).await.status(), StatusCode::NO_CONTENT);
    let content = app.operator("viewer").ok(GET, json!({"id": id})).await;
    assert_eq!(content["content"]["state"], "STAGED");
}

/// Abandoned uploads are swept every `upload_idle_timeout / 2`.
async fn sweeping_app(idle_ms: u64, tus_expiry_ms: u64) -> TestApp {
    TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = std::time::Duration::from_millis(50);
        c.content.upload_idle_timeout = std::time::Duration::from_millis(idle_ms);
        c.content.tus_upload_expiry = std::time::Duration::from_millis(tus_expiry_ms);
    })
    .await
}

async fn wait_for_state(app: &TestApp, id: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let content = app.operator("package_admin").ok(GET, json!({"id": id})).await["content"].clone();
        if content["state"] == state {
            return content;
        }
        assert!(std::time::Instant::now() < deadline, "never {state}: {content}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_upload_the_server_stopped_halfway_becomes_uploadable_again() {
    let app = sweeping_app(300, 1000).await;
    let form = app
        .operator("package_admin")
        .ok(CREATE, json!({"c": {"name": "fw.bin", "content_type": "x", "type": "firmware", "length": 4}}))
        .await["createContent"]
        .clone();
    let id = form["id"].as_str().unwrap().to_owned();
    // What a crash in the middle of a one-shot upload leaves: UPLOADING,
    // and nobody marking it alive.
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    entity::content::Entity::update_many()
        .col_expr(entity::content::Column::State, sea_orm::sea_query::Expr::value("UPLOADING"))
        .col_expr(
            entity::content::Column::UpdatedAt,
            sea_orm::sea_query::Expr::value(chrono::Utc::now() - chrono::TimeDelta::hours(1)),
        )
        .filter(entity::content::Column::Id.eq(uuid::Uuid::parse_str(&id).unwrap()))
        .exec(app.db())
        .await
        .unwrap();
    wait_for_state(&app, &id, "AWAITING_UPLOAD").await;
    let audit = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"content.upload_abandoned\"}) { edges { node { objectId details actor { kind } } } } }", json!({}))
        .await;
    let event = &audit["auditEvents"]["edges"][0]["node"];
    assert_eq!(event["objectId"], id.as_str());
    assert_eq!(event["details"]["reason"], "one-shot upload stopped");
    assert_eq!(event["actor"]["kind"], "system");
    // And it can be uploaded.
    let response = app.client.put(form["url"].as_str().unwrap()).body(b"fw!!".to_vec()).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "{}", response.text().await.unwrap());
    wait_for_state(&app, &id, "PROMOTED").await;
}

/// A content of `length` bytes and a one-shot PUT of it begun by hand
/// (headers sent, no body yet), to send the body slowly.
async fn raw_put(app: &TestApp, name: &str, length: usize) -> (String, tokio::net::TcpStream) {
    let form = app
        .operator("package_admin")
        .ok(CREATE, json!({"c": {"name": name, "content_type": "x", "type": "firmware", "length": length}}))
        .await["createContent"]
        .clone();
    let url = reqwest::Url::parse(form["url"].as_str().unwrap()).unwrap();
    let mut socket = tokio::net::TcpStream::connect(app.server().addr).await.unwrap();
    let head = format!(
        "PUT {}?{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n",
        url.path(),
        url.query().unwrap(),
        app.server().addr
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    (form["id"].as_str().unwrap().to_owned(), socket)
}

#[tokio::test]
async fn a_slow_upload_in_progress_is_not_taken_for_abandoned() {
    let app = sweeping_app(400, 1000).await;
    // 16 bytes over about 2 s, five times the idle timeout.
    let (id, mut socket) = raw_put(&app, "slow.bin", 16).await;
    for _ in 0..8 {
        socket.write_all(b"ab").await.unwrap();
        socket.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let mut answer = vec![0; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut socket, &mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    wait_for_state(&app, &id, "PROMOTED").await;
    let audit = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"content.upload_abandoned\"}) { totalCount } }", json!({}))
        .await;
    assert_eq!(audit["auditEvents"]["totalCount"], 0);
}

#[tokio::test]
async fn a_resumable_upload_left_alone_expires_and_its_pieces_go() {
    let app = sweeping_app(200, 800).await;
    let data = bytes(1000);
    let (id, creation) = content(&app, data.len()).await;
    let location = create(&app, &creation, data.len()).await;
    assert_eq!(patch(&app, &location, 0, &data[..400]).await.status(), StatusCode::NO_CONTENT);
    let pieces = app.dir.path().join("staging/tus").join(&id);
    assert!(pieces.exists());
    wait_for_state(&app, &id, "AWAITING_UPLOAD").await;
    // The release commits the state, then deletes the pieces: let its run end.
    app.drain_jobs().await;
    assert!(!pieces.exists() || std::fs::read_dir(&pieces).unwrap().next().is_none(), "pieces deleted");
    let response = app.client.head(&location).header("tus-resumable", "1.0.0").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let audit = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"content.upload_abandoned\"}) { edges { node { details } } } }", json!({}))
        .await;
    assert_eq!(audit["auditEvents"]["edges"][0]["node"]["details"]["reason"], "resumable upload expired");
    // A new resumable upload of the same content works.
    let location = create(&app, &creation, data.len()).await;
    assert_eq!(patch(&app, &location, 0, &data).await.status(), StatusCode::NO_CONTENT);
    wait_for_state(&app, &id, "PROMOTED").await;
}

/// A PATCH begun by hand: headers and the first `sent` bytes of a
/// `length`-byte body at offset 0, then nothing (a stalled link).
async fn stalled_patch(app: &TestApp, location: &str, data: &[u8], length: usize) -> tokio::net::TcpStream {
    let url = reqwest::Url::parse(location).unwrap();
    let mut slow = tokio::net::TcpStream::connect(app.server().addr).await.unwrap();
    let head = format!(
        "PATCH {}?{} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: {length}\r\n\r\n",
        url.path(),
        url.query().unwrap(),
        app.server().addr
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(data).await.unwrap();
    slow.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    slow
}

/// The stalled request's answer.
async fn answer_of(mut socket: tokio::net::TcpStream) -> String {
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut socket, &mut answer),
    )
    .await
    .expect("the stalled request ends")
    .unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn a_client_resuming_takes_over_from_its_stalled_patch() {
    let app = app().await;
    let data = bytes(1000);
    let (id, creation) = content(&app, data.len()).await;
    let location = create(&app, &creation, data.len()).await;
    // The link stalls halfway through a PATCH that stays open.
    let slow = stalled_patch(&app, &location, &data[..250], 500).await;
    // The client gives up on it and resumes: its HEAD stops the stalled
    // request, which keeps what arrived (before, this was 409 for as long as
    // the stalled request lived).
    assert_eq!(offset(&app, &location).await, 250);
    let answer = answer_of(slow).await;
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("upload-offset: 250"), "{answer}");
    let response = patch(&app, &location, 250, &data[250..]).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["upload-offset"], "1000");
    let stored = app.operator("package_admin").ok(GET, json!({"id": id})).await["content"].clone();
    assert_eq!(stored["sha256"], hex::encode(Sha256::digest(&data)));

    // A second PATCH straight away (no HEAD) takes over too, and learns
    // the offset it must resume from.
    let (_, creation) = content(&app, data.len()).await;
    let location = create(&app, &creation, data.len()).await;
    let slow = stalled_patch(&app, &location, &data[..100], 500).await;
    let stale = patch(&app, &location, 0, &data).await;
    assert_eq!(stale.status(), StatusCode::CONFLICT, "the stalled request kept 100 bytes");
    assert!(answer_of(slow).await.starts_with("HTTP/1.1 204"));
    assert_eq!(patch(&app, &location, 100, &data[100..]).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_termination_takes_over_from_a_stalled_patch() {
    let app = app().await;
    let data = bytes(1000);
    let (id, creation) = content(&app, data.len()).await;
    let location = create(&app, &creation, data.len()).await;
    let slow = stalled_patch(&app, &location, &data[..250], 500).await;
    let delete = app.client.delete(&location).header("tus-resumable", "1.0.0").send().await.unwrap();
    assert_eq!(delete.status(), StatusCode::NO_CONTENT);
    answer_of(slow).await;
    let stored = app.operator("package_admin").ok(GET, json!({"id": id})).await["content"].clone();
    assert_eq!(stored["state"], "AWAITING_UPLOAD");
    let pieces = app.dir.path().join("staging/tus").join(&id);
    assert!(!pieces.exists() || std::fs::read_dir(&pieces).unwrap().next().is_none(), "pieces deleted");
    // The content takes a new upload.
    let location = create(&app, &creation, data.len()).await;
    assert_eq!(patch(&app, &location, 0, &data).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn an_upload_whose_claim_was_taken_over_stops_and_leaves_the_new_claim_alone() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let app = sweeping_app(400, 1000).await;
    let (id, mut socket) = raw_put(&app, "zombie.bin", 16).await;
    let id = uuid::Uuid::parse_str(&id).unwrap();
    socket.write_all(b"abcd").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Meanwhile the content was given up and claimed by another upload,
    // which marks it as its own (ahead, so the sweep leaves it be here).
    let other_claim = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    entity::content::Entity::update_many()
        .col_expr(entity::content::Column::UpdatedAt, sea_orm::sea_query::Expr::value(other_claim))
        .filter(entity::content::Column::Id.eq(id))
        .exec(app.db())
        .await
        .unwrap();
    for _ in 0..6 {
        if socket.write_all(b"ab").await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    let mut answer = vec![0; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut socket, &mut answer).await.unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 409"), "the old upload stops: {answer}");
    let row = entity::content::Entity::find_by_id(id).one(app.db()).await.unwrap().unwrap();
    assert_eq!(row.state, "UPLOADING", "the new claim is left alone");
    assert!(!app.dir.path().join("staging/staging").join(id.to_string()).exists(), "nothing stored");
}
