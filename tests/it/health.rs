//! `/healthz`, `/readyz` and `/metrics`.

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, backend};

#[tokio::test]
async fn healthz_answers() {
    let app = TestApp::start().await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_reports_database_stores_and_clamd() {
    let app = TestApp::start().await;
    let token = app.token_for("ops", &["viewer"]);
    let response = app.client.get(app.url("/readyz")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let checks = &body["checks"];
    assert_eq!(checks["database"]["ok"], true, "{body}");
    assert_eq!(checks["staging"]["ok"], true, "{body}");
    assert_eq!(checks["repository"]["ok"], true, "{body}");
    if std::env::var("OTADEPOT_TEST_CLAMD_SOCKET").is_ok() {
        assert_eq!(checks["clamd"]["ok"], true, "{body}");
        assert!(checks["clamd"]["version"].as_str().unwrap().starts_with("ClamAV"), "{body}");
        assert_eq!(body["status"], "ready");
    } else {
        assert_eq!(checks["clamd"]["ok"], false);
        assert_eq!(body["status"], "degraded");
    }
}

/// The signatures in tests/fixtures/clamav (one per non-empty line), which
/// is all that the suite's clamd loads.
fn fixture_signatures() -> u64 {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clamav");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndb" || ext == "hsb"))
        .map(|path| std::fs::read_to_string(path).unwrap().lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .sum()
}

#[tokio::test]
async fn readyz_tells_an_operator_that_clamd_has_test_signatures_only_and_a_bare_probe_nothing() {
    if crate::scan::clamd().is_none() {
        return;
    }
    let app = TestApp::start().await;
    let bare = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::OK);
    assert_eq!(bare.json::<Value>().await.unwrap(), json!({"status": "ready"}), "the status alone");

    let token = app.token_for("ops", &["viewer"]);
    let body: Value =
        app.client.get(app.url("/readyz")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let clamd = &body["checks"]["clamd"];
    assert_eq!(clamd["ok"], true, "{body}");
    // The suite's clamd loads tests/fixtures/clamav only: no official database.
    assert_eq!(clamd["test_signatures_only"], true, "{body}");
    assert_eq!(clamd["database_version"], Value::Null, "{body}");
    assert_eq!(clamd["signatures"], fixture_signatures(), "{body}");
    assert!(clamd["engine"].as_str().unwrap().starts_with("ClamAV 1."), "{body}");
    assert!(clamd["warning"].as_str().unwrap().starts_with("test_signatures_only: "), "{body}");
    assert!(clamd["warning"].as_str().unwrap().contains("real malware will not be detected"), "{body}");
    assert_eq!(body["status"], "ready", "a warning, not an outage: {body}");

    // Without clamd's log the count is unknown, and says why.
    let app = TestApp::start_with(|c| c.scanner.clamd_log = None).await;
    let body: Value =
        app.client.get(app.url("/readyz")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let clamd = &body["checks"]["clamd"];
    assert_eq!(clamd["signatures"], Value::Null, "{body}");
    assert!(clamd["signatures_error"].as_str().unwrap().contains("scanner.clamd_log is not set"), "{body}");
    assert_eq!(clamd["test_signatures_only"], true, "{body}");
}

#[tokio::test]
async fn readyz_reports_clamd_down_and_a_broken_store_without_failing() {
    let app = TestApp::start_with(|c| c.scanner.clamd = "tcp://127.0.0.1:1".into()).await;
    std::fs::remove_dir_all(app.dir.path().join("repository")).unwrap();
    std::fs::write(app.dir.path().join("repository"), b"not a folder").unwrap();
    let token = app.token_for("ops", &["viewer"]);
    let response = app.client.get(app.url("/readyz")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "only the database makes it 503");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["clamd"]["ok"], false);
    assert!(body["checks"]["clamd"]["error"].as_str().unwrap().contains("clamd"));
    assert_eq!(body["checks"]["repository"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["staging"]["ok"], true);
}

#[tokio::test]
async fn readyz_is_503_when_the_database_is_unreachable() {
    let app = TestApp::start().await;
    let token = app.token_for("ops", &["viewer"]);
    match backend() {
        Backend::Postgres => {
            // Drop the test's database from under the running server.
            let url = app.server().app.config.database.url.expose().to_owned();
            let name = url.rsplit('/').next().unwrap().to_owned();
            let admin = Database::connect(std::env::var("OTADEPOT_TEST_DATABASE_URL").unwrap()).await.unwrap();
            admin.execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)")).await.unwrap();
        }
        Backend::Sqlite => {
            // Close the pool: every later acquire fails as an outage would.
            app.db().clone().close().await.unwrap();
        }
    }
    let bare = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bare.json::<Value>().await.unwrap(), json!({"status": "unavailable"}));
    // An operator still gets the details (the token is checked without the database).
    let response = app.client.get(app.url("/readyz")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["database"]["ok"], false, "{body}");
    // And GraphQL says UNAVAILABLE rather than leaking internals.
    let body = app.operator("auditor").gql("{ auditEvents { totalCount } }", json!({})).await;
    let code = crate::support::error_code(&body);
    assert!(code == "UNAVAILABLE" || code == "INTERNAL", "{body}");
    assert!(!body.to_string().contains("sqlx"), "no internals: {body}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = TestApp::start().await;
    app.client.get(app.url("/healthz")).send().await.unwrap();
    app.anonymous().gql("{ me { subject } }", json!({})).await;
    app.client.get(app.url("/nowhere")).send().await.unwrap();
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for needle in [
        "http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}",
        "http_requests_total{route=\"/graphql\",method=\"POST\",status=\"200\"}",
        "status=\"404\"",
        "http_request_duration_seconds_bucket{route=\"/graphql\"",
        "db_pool_connections",
        "jobs{state=\"queued\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}
