//! Downloads that credentials or signed URLs open: what caches may keep
//! them, and how long a device's manifest URL lives (it dies with the
//! device, its credential and its update, and is renewed before it expires).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{DeviceClient, TestApp};

async fn app_with_ttl(ttl: Duration) -> TestApp {
    TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = Duration::from_millis(50);
        c.deployments.reconcile_interval = Duration::from_millis(200);
        c.devices.download_url_ttl = ttl;
    })
    .await
}

struct Rollout {
    deployment: String,
    file: String,
    /// (endpoint id, secret) of each device.
    devices: Vec<(String, String)>,
}

/// A firmware package for model X100 applied to `n` devices d00, d01, …
async fn rollout(app: &TestApp, n: usize) -> Rollout {
    let admin = app.operator("admin");
    admin.ok("mutation { createDeviceModel(input: {name: \"X100\"}) { deviceModel { id } } }", json!({})).await;
    let (file, package) = app.firmware_package("2.0.0", "fw-2.0.0.bin", b"firmware 2.0.0 image").await;
    let (group, devices) = crate::support::fleet_in_group(app, n, "X100", "fleet").await;
    let out = app
        .operator("deployment_manager")
        .ok(
            "mutation($i: ApplyPackageInput!) { applyPackage(input: $i) { deployment { id } } }",
            json!({"i": {"package": package, "group": group}}),
        )
        .await;
    Rollout { deployment: out["applyPackage"]["deployment"]["id"].as_str().unwrap().to_owned(), file, devices }
}

async fn poll(
    app: &TestApp,
    secret: &str,
    if_none_match: Option<&str>,
    wait: Option<u64>,
) -> (StatusCode, Option<String>, Value) {
    DeviceClient::new(app, "", secret).poll_with(if_none_match, wait).await
}

/// The update and its first file URL, polling until the device has one.
async fn update_and_url(app: &TestApp, secret: &str) -> (Value, String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, etag, body) = poll(app, secret, None, None).await;
        if status == StatusCode::OK && !body["update"].is_null() {
            let url = body["update"]["manifest"]["files"][0]["url"].as_str().unwrap().to_owned();
            return (body["update"].clone(), url, etag.unwrap());
        }
        assert!(Instant::now() < deadline, "no update released: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn query_param(url: &str, name: &str) -> String {
    let url = url::Url::parse(url).unwrap();
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap_or_else(|| panic!("{name} in {url}"))
}

fn max_age(response: &reqwest::Response) -> i64 {
    let value = response.headers()["cache-control"].to_str().unwrap().to_owned();
    value.strip_prefix("private, max-age=").unwrap_or_else(|| panic!("cache-control {value:?}")).parse().unwrap()
}

async fn report(app: &TestApp, secret: &str, update: &Value, status: &str, extra: Value) -> StatusCode {
    let mut body = json!({"status": status});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    DeviceClient::new(app, "", secret).report(update, body).await.0
}

#[tokio::test]
async fn no_download_answer_is_cacheable_by_a_shared_cache() {
    let app = app_with_ttl(Duration::from_secs(3600)).await;
    let r = rollout(&app, 1).await;
    let (_, secret) = &r.devices[0];

    // An operator's token: private.
    let bare = app.url(&format!("/repo/{}/fw.bin", r.file));
    let viewer = app.token_for("v", &["viewer"]);
    let response = app.client.get(&bare).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "private");
    // A device's own credential: private, on the 200 and on the 304.
    let response = app.client.get(&bare).bearer_auth(secret).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "private");
    let etag = response.headers()["etag"].clone();
    let response = app.client.get(&bare).bearer_auth(secret).header("if-none-match", etag).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(response.headers()["cache-control"], "private");

    // An operator's signed URL: private, for no longer than the URL lives.
    let signed = app
        .operator("viewer")
        .ok("query($id: ID!) { content(id: $id) { downloadUrl(ttlSeconds: 600) } }", json!({"id": r.file}))
        .await["content"]["downloadUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app.client.get(&signed).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let age = max_age(&response);
    let left = query_param(&signed, "exp").parse::<i64>().unwrap() - chrono::Utc::now().timestamp();
    assert!(age <= left && age >= 590, "max-age {age}, the URL has {left} s left");
    let by_hash = app
        .operator("viewer")
        .ok("query($id: ID!) { content(id: $id) { sha256 } }", json!({"id": r.file}))
        .await["content"]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let response =
        app.client.get(app.url(&format!("/repo/sha256/{by_hash}"))).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(response.headers()["cache-control"], "private");

    // A device's manifest URL: private, for no longer than the URL lives.
    let (_, url, _) = update_and_url(&app, secret).await;
    let response = app.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let age = max_age(&response);
    let left = query_param(&url, "exp").parse::<i64>().unwrap() - chrono::Utc::now().timestamp();
    assert!(age <= left && age > 1800, "max-age {age}, the URL has {left} s left (ttl 3600 s)");
}

#[tokio::test]
async fn a_manifest_url_lives_a_day_by_default_not_as_long_as_the_deployment() {
    let app = TestApp::start_unscanned().await;
    assert_eq!(app.server().app.config.devices.download_url_ttl, Duration::from_secs(24 * 3600));
    let r = rollout(&app, 1).await;
    let (_, url, _) = update_and_url(&app, &r.devices[0].1).await;
    let left = query_param(&url, "exp").parse::<i64>().unwrap() - chrono::Utc::now().timestamp();
    assert!(left > 12 * 3600 && left <= 24 * 3600, "{left} s");
}

#[tokio::test]
async fn a_decommissioned_device_s_url_is_refused() {
    let app = app_with_ttl(Duration::from_secs(3600)).await;
    let r = rollout(&app, 1).await;
    let (_, secret) = &r.devices[0];
    let (_, url, _) = update_and_url(&app, secret).await;
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), StatusCode::OK);
    let me: Value =
        app.client.get(app.url("/device/v1/device")).bearer_auth(secret).send().await.unwrap().json().await.unwrap();
    app.operator("device_admin")
        .ok(
            "mutation($id: ID!) { decommissionDevice(input: {id: $id}) { device { status } } }",
            json!({"id": me["id"]}),
        )
        .await;
    let response = app.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.client.head(&url).send().await.unwrap().status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_rotated_credential_refuses_the_old_url_and_the_next_poll_brings_a_new_one() {
    let app = app_with_ttl(Duration::from_secs(3600)).await;
    let r = rollout(&app, 1).await;
    let (_, secret) = &r.devices[0];
    let (_, url, etag) = update_and_url(&app, secret).await;
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), StatusCode::OK);
    let me: Value =
        app.client.get(app.url("/device/v1/device")).bearer_auth(secret).send().await.unwrap().json().await.unwrap();
    let rotated = app
        .operator("device_admin")
        .ok("mutation($id: ID!) { rotateDeviceCredential(input: {id: $id}) { secret } }", json!({"id": me["id"]}))
        .await["rotateDeviceCredential"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), StatusCode::FORBIDDEN, "the old URL");
    // With the new secret and the old ETag, the device is not told 304.
    let (status, new_etag, body) = poll(&app, &rotated, Some(&etag), None).await;
    assert_eq!(status, StatusCode::OK, "the URLs it holds are dead: not a 304");
    assert_ne!(new_etag.as_deref(), Some(etag.as_str()));
    let fresh = body["update"]["manifest"]["files"][0]["url"].as_str().unwrap();
    assert_ne!(fresh, url);
    assert_eq!(app.client.get(fresh).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn urls_of_a_cancelled_or_installed_update_are_refused() {
    let app = app_with_ttl(Duration::from_secs(3600)).await;
    let r = rollout(&app, 2).await;
    let (_, first) = &r.devices[0];
    let (_, second) = &r.devices[1];
    let (update, url, _) = update_and_url(&app, first).await;
    let range = |url: &str| app.client.get(url).header("range", "bytes=0-7").send();
    assert_eq!(range(&url).await.unwrap().status(), StatusCode::PARTIAL_CONTENT);
    // Downloading and installing keep the URL; INSTALLED ends it.
    for status in ["ACKNOWLEDGED", "DOWNLOADING", "DOWNLOADED"] {
        assert_eq!(report(&app, first, &update, status, json!({})).await, StatusCode::OK);
    }
    assert_eq!(range(&url).await.unwrap().status(), StatusCode::PARTIAL_CONTENT);
    for (status, extra) in [("INSTALLING", json!({})), ("INSTALLED_VERSION", json!({"version": "2.0.0"}))] {
        assert_eq!(report(&app, first, &update, status, extra).await, StatusCode::OK);
    }
    assert_eq!(range(&url).await.unwrap().status(), StatusCode::FORBIDDEN, "INSTALLED");

    let (_, url, _) = update_and_url(&app, second).await;
    assert_eq!(range(&url).await.unwrap().status(), StatusCode::PARTIAL_CONTENT);
    app.operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { state } } }",
            json!({"id": r.deployment}),
        )
        .await;
    assert_eq!(range(&url).await.unwrap().status(), StatusCode::FORBIDDEN, "CANCELLED");
    // The file itself is still there for whoever may read it.
    let viewer = app.token_for("v", &["viewer"]);
    let bare = app.url(&format!("/repo/{}/fw.bin", r.file));
    assert_eq!(app.client.get(&bare).bearer_auth(&viewer).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_url_is_renewed_at_half_life_through_304s_and_long_polls() {
    // Windows of 2 s: a URL lives 2 to 4 s, and is renewed every 2 s.
    let app = app_with_ttl(Duration::from_secs(4)).await;
    let r = rollout(&app, 1).await;
    let (_, secret) = &r.devices[0];
    let (_, url, etag) = update_and_url(&app, secret).await;
    let exp: i64 = query_param(&url, "exp").parse().unwrap();
    let left = exp - chrono::Utc::now().timestamp();
    assert!((1..=4).contains(&left), "{left} s left of a 4 s URL");

    // Within a window, the same URL (304); past half its life, a new one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (renewed_etag, renewed) = loop {
        let (status, new_etag, body) = poll(&app, secret, Some(&etag), None).await;
        match status {
            StatusCode::NOT_MODIFIED => {
                assert_eq!(new_etag.as_deref(), Some(etag.as_str()));
                assert!(chrono::Utc::now().timestamp() < exp, "a 304 for a URL past its expiry");
            }
            StatusCode::OK => {
                break (new_etag.unwrap(), body["update"]["manifest"]["files"][0]["url"].as_str().unwrap().to_owned());
            }
            other => panic!("poll answered {other}"),
        }
        assert!(Instant::now() < deadline, "the URL was never renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(renewed_etag, etag);
    let new_exp: i64 = query_param(&renewed, "exp").parse().unwrap();
    assert_eq!(new_exp, exp + 2, "the next window's URL");
    assert!(new_exp - chrono::Utc::now().timestamp() >= 2, "renewed with more than half its life left");
    let response = app.client.get(&renewed).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(max_age(&response) <= 4);

    // A long poll on the current ETag answers with the renewed URL at the
    // renewal, not at the end of its wait.
    let started = Instant::now();
    let (status, third_etag, body) = poll(&app, secret, Some(&renewed_etag), Some(20)).await;
    assert_eq!(status, StatusCode::OK, "the long poll ended without the renewed URL");
    assert!(started.elapsed() < Duration::from_secs(15), "it waited out its whole wait");
    assert_ne!(third_etag.as_deref(), Some(renewed_etag.as_str()));
    let third: i64 =
        query_param(body["update"]["manifest"]["files"][0]["url"].as_str().unwrap(), "exp").parse().unwrap();
    assert_eq!(third, new_exp + 2);
}

#[tokio::test]
async fn the_download_check_reads_no_database_once_warm() {
    // No periodic job runs meanwhile: workers poll once a minute (they are
    // woken for the jobs this test enqueues).
    let app = TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = Duration::from_secs(60);
    })
    .await;
    let r = rollout(&app, 1).await;
    let (_, url, _) = update_and_url(&app, &r.devices[0].1).await;
    let signed =
        app.operator("viewer").ok("query($id: ID!) { content(id: $id) { downloadUrl } }", json!({"id": r.file})).await
            ["content"]["downloadUrl"]
            .as_str()
            .unwrap()
            .to_owned();
    // Let the batched last-seen write of the poll go by, then warm up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), StatusCode::OK);
    let counter = app.server().app.db_queries.clone();
    let cost = |before: u64| counter.get() - before;
    let before = counter.get();
    for _ in 0..5 {
        assert_eq!(app.client.get(&signed).send().await.unwrap().status(), StatusCode::OK);
    }
    let operator_url = cost(before);
    let before = counter.get();
    for _ in 0..5 {
        assert_eq!(app.client.get(&url).send().await.unwrap().status(), StatusCode::OK);
    }
    let device_url = cost(before);
    assert_eq!(
        device_url, operator_url,
        "statements for 5 downloads: device URL {device_url}, operator URL {operator_url}"
    );
}

#[tokio::test]
async fn another_replica_refuses_the_url_as_soon_as_the_change_reaches_it() {
    let app = app_with_ttl(Duration::from_secs(3600)).await;
    let r = rollout(&app, 3).await;
    // On PostgreSQL, downloads go to a second server on the same database,
    // whose caches only the events of the first one (LISTEN/NOTIFY) can
    // keep right; on SQLite (one process) to the same server.
    let second = match crate::support::backend() {
        crate::support::Backend::Postgres => {
            let mut config = app.server().app.config.clone();
            config.listen = "127.0.0.1:0".parse().unwrap();
            config.jobs.in_process = false;
            Some(otadepot::server::Server::start(config).await.unwrap())
        }
        crate::support::Backend::Sqlite => None,
    };
    let there = format!("http://{}", second.as_ref().map_or(app.server().addr, |s| s.addr));
    let mut urls = Vec::new();
    for (_, secret) in &r.devices {
        let (update, url, _) = update_and_url(&app, secret).await;
        let url = url.replace(&app.base, &there);
        // Warm the other server's caches.
        assert_eq!(app.client.get(&url).send().await.unwrap().status(), StatusCode::OK);
        urls.push((update, url));
    }
    let refused_soon = |url: String| {
        let client = app.client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let status = client.get(&url).send().await.unwrap().status();
                if status == StatusCode::FORBIDDEN {
                    return;
                }
                assert_eq!(status, StatusCode::OK);
                assert!(Instant::now() < deadline, "{url} still served");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // A rotated credential (d00).
    let me: Value = app
        .client
        .get(app.url("/device/v1/device"))
        .bearer_auth(&r.devices[0].1)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.operator("device_admin")
        .ok("mutation($id: ID!) { rotateDeviceCredential(input: {id: $id}) { secret } }", json!({"id": me["id"]}))
        .await;
    refused_soon(urls[0].1.clone()).await;
    // An update that failed (d01's report, to the first server).
    let status = report(&app, &r.devices[1].1, &urls[1].0, "FAILED", json!({"errcode": "e"})).await;
    assert_eq!(status, StatusCode::OK);
    refused_soon(urls[1].1.clone()).await;
    // A cancelled deployment (d02).
    app.operator("deployment_manager")
        .ok(
            "mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { state } } }",
            json!({"id": r.deployment}),
        )
        .await;
    refused_soon(urls[2].1.clone()).await;
    if let Some(second) = second {
        second.shutdown();
        second.wait().await.unwrap();
    }
}
