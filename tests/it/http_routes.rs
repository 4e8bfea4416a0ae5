//! Every HTTP route against an explicit table of the credential it needs
//! (the GraphQL fields have theirs in `authz_coverage.rs`), and a bounded
//! fuzz run over all of them.
//!
//! The table is checked against the routes the source declares (every
//! `.route("…")` under `src/http/`): a route without a row fails the test,
//! as does a row for a route that no longer exists. Each row is tried with
//! no credential, with a wrong one, and with another device's, and must be
//! refused with the status its row names; the authorized call must then
//! succeed, so a refusal means something.
//!
//! When you add a route: add its row, with a request that succeeds for the
//! right caller.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::TestApp;

/// The credential a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    /// Anyone (health, keys, static assets).
    Public,
    /// An operator's bearer token.
    Operator,
    /// The device's own secret (or its gateway's).
    Device,
    /// An enrollment token.
    EnrollmentToken,
    /// The signed URL `createContent` handed out.
    SignedUpload,
    /// A signed download URL, or a device's or operator's bearer.
    SignedOrBearer,
    /// hawkBit DDI: `TargetToken <the controller's secret>`.
    DdiToken,
}

/// What a probe sends as its credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cred {
    /// The right one: the call must succeed.
    Right,
    None,
    /// A credential of the right shape that is not valid.
    Wrong,
    /// Another device's (for operator routes: a device secret).
    OtherDevice,
}

struct Row {
    method: Method,
    /// As the router declares it.
    pattern: &'static str,
    needs: Needs,
    /// Status with no credential, with a wrong one, with another device's.
    refused: [u16; 3],
}

fn row(method: Method, pattern: &'static str, needs: Needs, refused: [u16; 3]) -> Row {
    Row { method, pattern, needs, refused }
}

fn table() -> Vec<Row> {
    use Needs::*;
    let get = || Method::GET;
    let post = || Method::POST;
    vec![
        row(get(), "/healthz", Public, [0; 3]),
        row(get(), "/readyz", Public, [0; 3]),
        row(get(), "/metrics", Public, [0; 3]),
        row(get(), "/.well-known/otadepot/keys", Public, [0; 3]),
        row(get(), "/graphiql/4.1.2/{file}", Public, [0; 3]),
        // GraphQL: an anonymous caller reaches only public fields (`me` is
        // UNAUTHENTICATED in the body); a bad token is refused outright.
        row(post(), "/graphql", Operator, [200, 401, 401]),
        row(get(), "/graphql", Operator, [200, 401, 401]),
        row(get(), "/graphql/ws", Operator, [0; 3]),
        // Uploads: the URL's signature is the credential; without one the
        // query does not parse.
        row(Method::PUT, "/uploads/content/{id}", SignedUpload, [400, 403, 403]),
        row(post(), "/uploads/tus/", SignedUpload, [400, 403, 403]),
        row(Method::HEAD, "/uploads/tus/{id}", SignedUpload, [400, 403, 403]),
        // Repository: a wrong signature is FORBIDDEN; another device asking
        // for a file of a package it may not have is NOT_FOUND.
        row(get(), "/repo/{id}/{name}", SignedOrBearer, [401, 403, 404]),
        row(get(), "/repo/sha256/{sha256}", SignedOrBearer, [401, 403, 404]),
        // The device API: another device's secret never reaches this
        // device's objects (NOT_FOUND, as for an object that does not exist).
        row(get(), "/device/v1/device", Device, [401, 401, 404]),
        row(post(), "/device/v1/inventory", Device, [401, 401, 404]),
        row(get(), "/device/v1/poll", Device, [401, 401, 404]),
        row(post(), "/device/v1/updates/{id}/status", Device, [401, 401, 404]),
        row(post(), "/device/v1/commands/{id}", Device, [401, 401, 404]),
        row(post(), "/device/v1/enroll", EnrollmentToken, [401, 401, 401]),
        // EnOS edge: the same, with the seed's error shape.
        row(post(), "/checkversion", Device, [401, 401, 404]),
        row(get(), "/version/{id}", Device, [401, 401, 404]),
        row(post(), "/downloadresult/{id}", Device, [401, 401, 404]),
        row(post(), "/updateresult", Device, [401, 401, 404]),
        // hawkBit DDI: every refusal is 401, another device's token too.
        row(get(), "/{tenant}/controller/v1/{cid}", DdiToken, [401, 401, 401]),
        row(get(), "/{tenant}/controller/v1/{cid}/deploymentBase/{action}", DdiToken, [401, 401, 401]),
        row(post(), "/{tenant}/controller/v1/{cid}/deploymentBase/{action}/feedback", DdiToken, [401, 401, 401]),
        row(get(), "/{tenant}/controller/v1/{cid}/cancelAction/{action}", DdiToken, [401, 401, 401]),
        row(post(), "/{tenant}/controller/v1/{cid}/cancelAction/{action}/feedback", DdiToken, [401, 401, 401]),
        row(Method::PUT, "/{tenant}/controller/v1/{cid}/configData", DdiToken, [401, 401, 401]),
        row(get(), "/{tenant}/controller/v1/{cid}/installedBase/{action}", DdiToken, [401, 401, 401]),
        row(
            get(),
            "/{tenant}/controller/v1/{cid}/softwaremodules/{module}/artifacts/{filename}",
            DdiToken,
            [401, 401, 401],
        ),
    ]
}

/// Every path `src/http/` declares with `.route("…")`.
fn declared_routes() -> BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for piece in source.split(".route(").skip(1) {
            if let Some(quoted) = piece.trim_start().strip_prefix('"') {
                routes.insert(quoted.split('"').next().unwrap().to_owned());
            }
        }
    }
    routes
}

/// What the probes need: two devices of different models, an update and a
/// command for the first, an upload URL, a promoted file for the first
/// device's model, an enrollment token.
struct World {
    admin: String,
    /// The device the objects belong to.
    device: String,
    /// A device of another model, not the first one's gateway.
    other: String,
    update_id: String,
    command_id: String,
    content_id: String,
    sha256: String,
    download_url: String,
    upload_id: String,
    upload_query: String,
    /// A second content, for the tus rows.
    tus_id: String,
    tus_query: String,
    enrollment: String,
    /// The package of the first device's update (its DDI software module).
    package_id: String,
    /// The DDI action id of the first device's update.
    action_id: i64,
    /// A third device (`route-c`) that installed one update over DDI and
    /// holds the cancel of a second: its secret, the installed action, the
    /// cancelled one.
    ddi_secret: String,
    installed_action: i64,
    cancelled_action: i64,
}

async fn world(app: &TestApp) -> World {
    let admin = app.operator("admin");
    for model in ["X100", "Y200"] {
        admin
            .ok(
                "mutation($n: String!) { createDeviceModel(input: {name: $n}) { deviceModel { id } } }",
                json!({"n": model}),
            )
            .await;
    }
    let (content_id, content) = app.promoted("fw.bin", b"firmware for the route table").await;
    let sha256 = admin.ok("query($id: ID!) { content(id: $id) { sha256 } }", json!({"id": content_id})).await["content"]
        ["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let package = admin
        .ok(
            "mutation($f: ID!) { createSoftwarePackage(input: {name: \"fw\", version: \"2.0.0\", type: \"URL_LIST\", models: [\"X100\"], files: [$f]}) { package { id } } }",
            json!({"f": content_id}),
        )
        .await["createSoftwarePackage"]["package"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let register = |endpoint: &'static str, model: &'static str| {
        let admin = app.operator("admin");
        async move {
            admin
                .ok(
                    "mutation($e: String!, $m: ID!) { registerDevice(input: {endpointId: $e, model: $m}) { secret } }",
                    json!({"e": endpoint, "m": model}),
                )
                .await["registerDevice"]["secret"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let device = register("route-a", "X100").await;
    let other = register("route-b", "Y200").await;
    admin
        .ok(
            "mutation($p: ID!) { applyPackage(input: {package: $p, devices: [\"route-a\"]}) { deployment { id } } }",
            json!({"p": package}),
        )
        .await;
    let update_id = wait_for_update(app, &device).await;
    let action_id = admin
        .ok("query($e: String!) { deviceByEndpointId(endpointId: $e) { updates(first: 1) { edges { node { actionId } } } } }", json!({"e": "route-a"}))
        .await["deviceByEndpointId"]["updates"]["edges"][0]["node"]["actionId"]
        .as_i64()
        .unwrap();
    let (ddi_secret, installed_action, cancelled_action) = ddi_world(app, &content_id, &package).await;
    let command_id = admin
        .ok("mutation { sendCommand(input: {devices: [\"route-a\"], name: \"REBOOT\"}) { commands { edges { node { id } } } } }", json!({}))
        .await["sendCommand"]["commands"]["edges"][0]["node"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let upload_form = || async {
        let form = app
            .operator("admin")
            .ok(
                "mutation { createContent(content: {name: \"up.bin\", content_type: \"x\", type: \"firmware\", length: 4}) { id url } }",
                json!({}),
            )
            .await["createContent"]
            .clone();
        let query = form["url"].as_str().unwrap().split_once('?').unwrap().1.to_owned();
        (form["id"].as_str().unwrap().to_owned(), query)
    };
    let (upload_id, upload_query) = upload_form().await;
    let (tus_id, tus_query) = upload_form().await;
    let enrollment = admin
        .ok("mutation { createEnrollmentToken(input: {name: \"routes\", model: \"X100\"}) { token } }", json!({}))
        .await["createEnrollmentToken"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    World {
        admin: app.token_for("route-admin", &["admin"]),
        device,
        other,
        update_id,
        command_id,
        content_id,
        sha256,
        download_url: content["downloadUrl"].as_str().unwrap().to_owned(),
        upload_id,
        upload_query,
        tus_id,
        tus_query,
        enrollment,
        package_id: package,
        action_id,
        ddi_secret,
        installed_action,
        cancelled_action,
    }
}

/// `route-c`: package `package` installed over DDI, then a second package
/// (2.0.1, same file) released and cancelled: (secret, installed action,
/// cancelled action).
async fn ddi_world(app: &TestApp, content_id: &str, package: &str) -> (String, i64, i64) {
    let admin = app.operator("admin");
    let secret = admin
        .ok("mutation { registerDevice(input: {endpointId: \"route-c\", model: \"X100\"}) { secret } }", json!({}))
        .await["registerDevice"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = app.url("/DEFAULT/controller/v1/route-c");
    let auth = format!("TargetToken {secret}");
    // The action a base poll links to (`deploymentBase` or `cancelAction`).
    let linked = |kind: &'static str| {
        let (base, auth) = (base.clone(), auth.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let body: Value =
                    app.client.get(&base).header("authorization", &auth).send().await.unwrap().json().await.unwrap();
                if let Some(href) = body["_links"][kind]["href"].as_str() {
                    let tail = href.split(&format!("/{kind}/")).nth(1).unwrap();
                    return tail.split('?').next().unwrap().parse::<i64>().unwrap();
                }
                assert!(Instant::now() < deadline, "no {kind} link: {body}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let apply = |package: String| {
        let admin = app.operator("admin");
        async move {
            admin
                .ok(
                    "mutation($p: ID!) { applyPackage(input: {package: $p, devices: [\"route-c\"]}) { deployment { id } } }",
                    json!({"p": package}),
                )
                .await["applyPackage"]["deployment"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    apply(package.to_owned()).await;
    let installed = linked("deploymentBase").await;
    let closed =
        json!({"id": installed, "status": {"execution": "closed", "result": {"finished": "success"}, "details": []}});
    let response = app
        .client
        .post(format!("{base}/deploymentBase/{installed}/feedback"))
        .header("authorization", &auth)
        .json(&closed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let second = admin
        .ok(
            "mutation($f: ID!) { createSoftwarePackage(input: {name: \"fw\", version: \"2.0.1\", type: \"URL_LIST\", models: [\"X100\"], files: [$f]}) { package { id } } }",
            json!({"f": content_id}),
        )
        .await["createSoftwarePackage"]["package"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deployment = apply(second).await;
    linked("deploymentBase").await;
    admin
        .ok(
            "mutation($id: ID!) { cancelDeployment(input: {id: $id}) { deployment { id } } }",
            json!({"id": deployment}),
        )
        .await;
    let cancelled = linked("cancelAction").await;
    (secret, installed, cancelled)
}

async fn wait_for_update(app: &TestApp, secret: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = app.client.get(app.url("/device/v1/poll")).bearer_auth(secret).send().await.unwrap();
        if response.status() == StatusCode::OK {
            let body: Value = response.json().await.unwrap();
            if let Some(id) = body["update"]["id"].as_str() {
                return id.to_owned();
            }
        }
        assert!(Instant::now() < deadline, "the update was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A device secret of the right shape that names no device.
const BOGUS_DEVICE_SECRET: &str =
    "otd_00000000000070008000000000000000_bm90LWEtcmVhbC1zZWNyZXQtbm90LWEtcmVhbC1zZWNyZXQ";

/// The request of one row with one credential.
fn probe(app: &TestApp, w: &World, row: &Row, cred: Cred) -> reqwest::RequestBuilder {
    probe_as(app, w, row, cred, "Bearer")
}

/// `probe`, with a bearer credential sent as `<scheme> <token>`.
fn probe_as(app: &TestApp, w: &World, row: &Row, cred: Cred, scheme: &str) -> reqwest::RequestBuilder {
    let path = match row.pattern {
        "/graphiql/4.1.2/{file}" => "/graphiql/4.1.2/graphiql.min.js".to_owned(),
        "/uploads/content/{id}" | "/uploads/tus/{id}" => {
            let (id, query) =
                if row.pattern.contains("tus") { (&w.tus_id, &w.tus_query) } else { (&w.upload_id, &w.upload_query) };
            let base = row.pattern.replace("{id}", id);
            match cred {
                Cred::None => base,
                Cred::Right => format!("{base}?{query}"),
                Cred::Wrong | Cred::OtherDevice => format!("{base}?{}", tamper(query)),
            }
        }
        "/uploads/tus/" => match cred {
            Cred::None => format!("/uploads/tus/?content_id={}", w.tus_id),
            Cred::Right => format!("/uploads/tus/?content_id={}&{}", w.tus_id, w.tus_query),
            Cred::Wrong | Cred::OtherDevice => {
                format!("/uploads/tus/?content_id={}&{}", w.tus_id, tamper(&w.tus_query))
            }
        },
        "/repo/{id}/{name}" => {
            let base = format!("/repo/{}/fw.bin", w.content_id);
            match cred {
                Cred::Right => w.download_url.split_once("/repo/").map(|(_, p)| format!("/repo/{p}")).unwrap(),
                Cred::Wrong => format!("{base}?{}", tamper(w.download_url.split_once('?').unwrap().1)),
                Cred::None | Cred::OtherDevice => base,
            }
        }
        "/repo/sha256/{sha256}" => {
            let base = format!("/repo/sha256/{}", w.sha256);
            match cred {
                Cred::Wrong => format!("{base}?exp=4102444800&sig=AAAA"),
                _ => base,
            }
        }
        pattern if pattern.starts_with("/{tenant}/") => {
            // The cancel and the installed update are route-c's.
            let (cid, action) = if pattern.contains("cancelAction") {
                ("route-c", w.cancelled_action)
            } else if pattern.contains("installedBase") {
                ("route-c", w.installed_action)
            } else {
                ("route-a", w.action_id)
            };
            pattern
                .replace("{tenant}", "DEFAULT")
                .replace("{cid}", cid)
                .replace("{action}", &action.to_string())
                .replace("{module}", &w.package_id)
                .replace("{filename}", "fw.bin")
        }
        pattern => pattern.replace("{id}", if pattern.contains("commands") { &w.command_id } else { &w.update_id }),
    };
    let mut request = app.client.request(row.method.clone(), app.url(&path));
    // The credential, by kind.
    let bearer = match (row.needs, cred) {
        (_, Cred::None) => None,
        (Needs::Operator, Cred::Right) => Some(w.admin.clone()),
        (Needs::Operator, Cred::Wrong) => Some("not-a-jwt".to_owned()),
        (Needs::Operator, Cred::OtherDevice) => Some(w.other.clone()),
        (Needs::Device, Cred::Right) => Some(w.device.clone()),
        (Needs::Device, Cred::Wrong) => Some(BOGUS_DEVICE_SECRET.to_owned()),
        (Needs::Device, Cred::OtherDevice) => Some(w.other.clone()),
        (Needs::EnrollmentToken, Cred::Right) => Some(w.enrollment.clone()),
        (Needs::EnrollmentToken, Cred::Wrong) => Some("ote_00000000000070008000000000000000_bm9wZQ".to_owned()),
        (Needs::EnrollmentToken, Cred::OtherDevice) => Some(w.other.clone()),
        (Needs::SignedOrBearer, Cred::OtherDevice) => Some(w.other.clone()),
        (Needs::SignedOrBearer, Cred::Right) if row.pattern.contains("sha256") => Some(w.device.clone()),
        (Needs::DdiToken, Cred::Right) if path.contains("/route-c/") => Some(w.ddi_secret.clone()),
        (Needs::DdiToken, Cred::Right) => Some(w.device.clone()),
        (Needs::DdiToken, Cred::Wrong) => Some(BOGUS_DEVICE_SECRET.to_owned()),
        (Needs::DdiToken, Cred::OtherDevice) => Some(w.other.clone()),
        _ => None,
    };
    let scheme = if row.needs == Needs::DdiToken && scheme == "Bearer" { "TargetToken" } else { scheme };
    if let Some(token) = bearer {
        request = request.header("authorization", format!("{scheme} {token}"));
    }
    // Device routes without an object of their own: another device acts
    // for this one, which it is not the gateway of.
    if row.needs == Needs::Device && cred == Cred::OtherDevice && !row.pattern.contains("{id}") {
        request = request.header("x-device-id", "route-a");
    }
    match (row.pattern, row.method.as_str()) {
        ("/graphql", "POST") => request.json(&json!({"query": "{ me { subject } }"})),
        ("/graphql", "GET") => request.query(&[("query", "{ me { subject } }")]),
        ("/uploads/content/{id}", _) => request.body("data"),
        ("/uploads/tus/", _) | ("/uploads/tus/{id}", _) => {
            request.header("tus-resumable", "1.0.0").header("upload-length", "4")
        }
        ("/device/v1/inventory", _) => request.json(&json!({"installed": {"firmware": "1.0.0"}})),
        ("/device/v1/updates/{id}/status", _) => request.json(&json!({"status": "ACKNOWLEDGED"})),
        ("/device/v1/commands/{id}", _) => request.json(&json!({"status": "ACKNOWLEDGED"})),
        ("/device/v1/enroll", _) => request.json(&json!({"endpointId": "route-enrolled", "model": "X100"})),
        ("/checkversion", _) => request.json(&json!({"assetId": "route-a", "version": "1.0.0"})),
        ("/downloadresult/{id}", _) => request.json(&json!({"assetId": "route-a", "code": 1})),
        ("/updateresult", _) => request.json(&json!({
            "assetId": "route-a", "version": "2.0.0", "flag": 1, "process": 10, "errcode": "0", "desc": "x"
        })),
        (pattern, "POST") if pattern.ends_with("/feedback") => request.json(&json!({
            "id": 1, "status": {"execution": "proceeding", "result": {"finished": "none", "progress": {"cnt": 1, "of": 2}}}
        })),
        (pattern, "PUT") if pattern.ends_with("/configData") => request.json(&json!({"data": {"hwRevision": "1.0"}})),
        _ => request,
    }
}

/// The same query with a signature that no longer matches.
fn tamper(query: &str) -> String {
    query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some(("sig", sig)) => {
                let mut sig = sig.to_owned();
                let last = if sig.ends_with('A') { 'B' } else { 'A' };
                sig.pop();
                sig.push(last);
                format!("sig={sig}")
            }
            _ => kv.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[tokio::test]
async fn every_route_requires_its_credential() {
    let app = TestApp::start_unscanned().await;
    let rows = table();

    let in_table: BTreeSet<String> = rows.iter().map(|r| r.pattern.to_owned()).collect();
    let declared = declared_routes();
    let missing: Vec<_> = declared.difference(&in_table).collect();
    assert!(missing.is_empty(), "routes without a row in the credential table: {missing:?}");
    let stale: Vec<_> = in_table.difference(&declared).collect();
    assert!(stale.is_empty(), "rows for routes that no longer exist: {stale:?}");

    let w = world(&app).await;
    for row in &rows {
        let label = format!("{} {}", row.method, row.pattern);
        if row.pattern == "/graphql/ws" {
            websocket_requires_a_valid_token(&app, &w).await;
            continue;
        }
        if row.needs != Needs::Public {
            for (cred, expected) in [Cred::None, Cred::Wrong, Cred::OtherDevice].into_iter().zip(row.refused) {
                let response = probe(&app, &w, row, cred).send().await.unwrap();
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                assert_eq!(status, expected, "{label} with {cred:?}: {body}");
                if status == 200 {
                    // GraphQL answers an anonymous `me` in the body.
                    let body: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{label}: {body}");
                }
            }
        }
        let response = probe(&app, &w, row, Cred::Right).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{label} with the right credential: {status} {body}");
        if row.pattern == "/graphql" {
            assert!(!body.contains("errors"), "{label}: {body}");
        }
    }
}

/// Whether a row's right credential is a bearer header (not a signed URL).
fn takes_a_bearer(row: &Row) -> bool {
    match row.needs {
        Needs::Operator => row.pattern != "/graphql/ws",
        Needs::Device | Needs::EnrollmentToken => true,
        Needs::SignedOrBearer => row.pattern.contains("sha256"),
        Needs::Public | Needs::SignedUpload | Needs::DdiToken => false,
    }
}

/// RFC 9110: the auth scheme is case-insensitive. Every route that takes a
/// bearer takes `bearer` and `BEARER`; any other scheme, or a scheme
/// without a token, is the route's 401 (EnOS routes in their own shape).
#[tokio::test]
async fn every_bearer_route_takes_the_scheme_in_any_case() {
    let app = TestApp::start_unscanned().await;
    let w = world(&app).await;
    let rows: Vec<Row> = table().into_iter().filter(takes_a_bearer).collect();
    assert!(rows.len() >= 10, "the table lost its bearer routes");
    for row in &rows {
        let label = format!("{} {}", row.method, row.pattern);
        for junk in ["Basic", "Token", "Bearer:", "Bearerx"] {
            let response = probe_as(&app, &w, row, Cred::Right, junk).send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, 401, "{label} with scheme {junk:?}: {body}");
            if row.pattern.starts_with("/checkversion")
                || row.pattern.starts_with("/version/")
                || row.pattern.starts_with("/downloadresult/")
                || row.pattern.starts_with("/updateresult")
            {
                let body: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["httpstatus"], 401, "{label}: {body}");
            }
        }
        let response = probe(&app, &w, row, Cred::None).header("authorization", "Bearer").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{label} with a scheme and no token");
        // Lower case, and upper case for the routes that change nothing
        // (enrolling twice is a different answer by design).
        let schemes: &[&str] = if row.method == Method::GET { &["bearer", "BEARER"] } else { &["bearer"] };
        for scheme in schemes {
            let response = probe_as(&app, &w, row, Cred::Right, scheme).send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert!(status.is_success(), "{label} with scheme {scheme:?}: {status} {body}");
            if row.pattern == "/graphql" {
                let body: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["data"]["me"]["subject"], "route-admin", "{label}: {body}");
            }
        }
    }

    // `/readyz` verifies an operator token it is given, in any case of the
    // scheme, and refuses another scheme.
    let readyz = |value: String| app.client.get(app.url("/readyz")).header("authorization", value).send();
    assert_eq!(readyz(format!("bearer {}", w.admin)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(readyz("bearer not-a-jwt".into()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(readyz(format!("Basic {}", w.admin)).await.unwrap().status(), StatusCode::UNAUTHORIZED);

    // `/graphql/ws`: the `connection_init` payload's `Authorization` too.
    assert_eq!(connection_refused_with(&app, &format!("bearer {}", w.admin)).await, None);
    assert_eq!(connection_refused_with(&app, &format!("BEARER {}", w.admin)).await, None);
    assert_eq!(connection_refused_with(&app, "bearer not-a-jwt").await, Some(4403));
}

/// `/graphql/ws`: the token goes in `connection_init`.
async fn websocket_requires_a_valid_token(app: &TestApp, w: &World) {
    use crate::audit::subscription_error_code;
    let operation = "subscription { auditEventAdded { seq } }";
    assert_eq!(subscription_error_code(app, None, operation).await, "UNAUTHENTICATED");
    let viewer = app.token_for("ws-viewer", &["viewer"]);
    assert_eq!(subscription_error_code(app, Some(&viewer), operation).await, "FORBIDDEN");
    for bad in ["not-a-jwt", w.other.as_str()] {
        let closed = connection_refused(app, bad).await;
        assert_eq!(closed, Some(4403), "connection_init with {bad:?}");
    }
}

/// The close code the server answers a `connection_init` carrying `token`
/// with (None: it did not close).
async fn connection_refused(app: &TestApp, token: &str) -> Option<u16> {
    connection_refused_with(app, &format!("Bearer {token}")).await
}

/// `connection_refused` with `authorization` as the payload's whole
/// `Authorization` value.
async fn connection_refused_with(app: &TestApp, authorization: &str) -> Option<u16> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/graphql/ws", app.server().addr).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let init = json!({"type": "connection_init", "payload": {"Authorization": authorization}});
    socket.send(Message::text(init.to_string())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("answered") {
        Some(Ok(Message::Close(Some(frame)))) => Some(u16::from(frame.code)),
        _ => None,
    }
}

/// Random and malformed requests against every route: never a 5xx, and
/// the server still answers afterwards. Fixed seed, bounded count.
#[tokio::test]
async fn a_bounded_fuzz_run_gets_no_server_error() {
    // Long polls (random `wait`s) end within a second.
    let app = TestApp::start_with(|c| {
        c.scanner.mode = otadepot::config::ScannerMode::Disabled;
        c.jobs.poll_interval = Duration::from_millis(100);
        c.deployments.max_poll_wait = Duration::from_secs(1);
    })
    .await;
    let w = world(&app).await;
    let rows = table();
    let mut rng = StdRng::seed_from_u64(0x07ad_e907);
    let started = Instant::now();
    let mut requests = Vec::new();
    const COUNT: usize = 3000;
    for _ in 0..COUNT {
        requests.push(random_request(&mut rng, &app, &w, &rows));
    }
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let results = futures::future::join_all(requests.chunks(COUNT / 8).map(|chunk| {
        let chunk: Vec<_> = chunk.iter().map(|(label, r)| (label.clone(), r.try_clone().unwrap())).collect();
        async move {
            let mut out = Vec::new();
            for (label, request) in chunk {
                let result = tokio::time::timeout(Duration::from_secs(20), request.send()).await;
                out.push((label, result));
            }
            out
        }
    }))
    .await;
    for (label, result) in results.into_iter().flatten() {
        match result {
            Err(_) => failures.push(format!("{label}: no answer within 20 s")),
            Ok(Err(err)) if err.is_connect() => failures.push(format!("{label}: connection refused: {err}")),
            // The server may close a request it refuses mid-body.
            Ok(Err(_)) => *statuses.entry(0).or_default() += 1,
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                *statuses.entry(status).or_default() += 1;
                // /readyz answers 503 when a dependency is down: its contract.
                if status >= 500 && !label.contains("/readyz") {
                    let body = response.text().await.unwrap_or_default();
                    failures.push(format!("{label}: {status} {body}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {COUNT} requests failed:\n{}", failures.len(), failures.join("\n"));
    // The run exercised more than one kind of answer.
    assert!(statuses.len() >= 5, "{statuses:?}");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // And the server still does real work.
    let me = app.with_token(&w.admin).ok("{ me { subject } }", json!({})).await;
    assert_eq!(me["me"]["subject"], "route-admin");
    eprintln!("fuzz: {COUNT} requests in {:?}: {statuses:?}", started.elapsed());
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "BREW"];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn random_text(rng: &mut StdRng, max: usize) -> String {
    const CHARS: &[u8] = b"abcXYZ019-_=,;: \t/\\%\"'{}[]<>&?#*.\x7f";
    let len = rng.random_range(0..=max);
    (0..len).map(|_| *pick(rng, CHARS) as char).collect()
}

fn random_request(rng: &mut StdRng, app: &TestApp, w: &World, rows: &[Row]) -> (String, reqwest::RequestBuilder) {
    let row = pick(rng, rows);
    let mut path = row
        .pattern
        .replace("{file}", pick::<&str>(rng, &["graphiql.min.js", "nope.js", "..%2f..%2fetc%2fpasswd", "%00"]))
        .replace(
            "{id}",
            &pick(
                rng,
                &[
                    w.update_id.clone(),
                    w.command_id.clone(),
                    w.content_id.clone(),
                    w.upload_id.clone(),
                    "00000000-0000-7000-8000-000000000000".to_owned(),
                    "not-a-uuid".to_owned(),
                    "%ff%fe".to_owned(),
                    "9".repeat(300),
                ],
            )
            .clone(),
        )
        .replace("{name}", pick::<&str>(rng, &["fw.bin", "x", "%2e%2e"]))
        .replace("{sha256}", pick::<&str>(rng, &[w.sha256.as_str(), "00", "zz", &"a".repeat(64)]))
        .replace("{tenant}", pick::<&str>(rng, &["DEFAULT", "default", "other", "%00"]))
        .replace("{cid}", pick::<&str>(rng, &["route-a", "route-b", "route-c", "%2e%2e", &"c".repeat(300)]))
        .replace(
            "{action}",
            pick::<String>(
                rng,
                &[
                    w.action_id.to_string(),
                    w.cancelled_action.to_string(),
                    w.installed_action.to_string(),
                    "0".into(),
                    "-1".into(),
                    "2147483648".into(),
                    "x".into(),
                ],
            ),
        )
        .replace(
            "{module}",
            pick::<&str>(rng, &[w.package_id.as_str(), "not-a-uuid", "00000000-0000-7000-8000-000000000000"]),
        )
        .replace("{filename}", pick::<&str>(rng, &["fw.bin", "fw.bin.MD5SUM", ".MD5SUM", "%2e%2e"]));
    match rng.random_range(0..6) {
        0 => path.push_str(&format!("?{}", w.upload_query)),
        1 => path.push_str(&format!("?{}", w.download_url.split_once('?').map(|(_, q)| q).unwrap_or_default())),
        2 => path.push_str(&format!("?wait={}&exp=-1&sig=%%&content_id={}", rng.random::<u32>(), random_text(rng, 8))),
        3 => path.push_str(&format!("?query={}", random_text(rng, 40))),
        _ => {}
    }
    let method = if rng.random_bool(0.7) {
        row.method.clone()
    } else {
        Method::from_bytes(pick(rng, METHODS).as_bytes()).unwrap()
    };
    let label = format!("{method} {path}");
    let mut request = app.client.request(method, app.url(&path));
    // Credentials: none, garbage, or a real one of any kind.
    let bearer = match rng.random_range(0..7) {
        0 => Some(w.admin.clone()),
        1 => Some(w.device.clone()),
        2 => Some(w.other.clone()),
        3 => Some(w.enrollment.clone()),
        4 => Some(format!("otd_{}", random_text(rng, 60))),
        5 => Some(random_text(rng, 30)),
        _ => None,
    };
    let scheme = pick::<&str>(rng, &["Bearer", "Bearer", "TargetToken", "GatewayToken"]);
    if let Some(token) = bearer
        && let Ok(value) = reqwest::header::HeaderValue::from_str(&format!("{scheme} {token}"))
    {
        request = request.header("authorization", value);
    }
    let headers: &[(&str, Vec<String>)] = &[
        (
            "range",
            vec![
                "bytes=0-3".into(),
                "bytes=-1".into(),
                "bytes=5-2".into(),
                "bytes=0-0,2-3,1-1".into(),
                "bytes=99999999999999999999-".into(),
                "bytes=".into(),
                "lines=1-2".into(),
                "bytes=-0".into(),
            ],
        ),
        ("upload-offset", vec!["0".into(), "-1".into(), "4".into(), "18446744073709551616".into(), "x".into()]),
        ("upload-length", vec!["0".into(), "4".into(), "-4".into(), "99999999999999999999".into()]),
        ("tus-resumable", vec!["1.0.0".into(), "0.2".into()]),
        ("x-device-id", vec!["route-a".into(), "route-b".into(), "".into(), "\u{7f}".into(), "x".repeat(500)]),
        (
            "content-type",
            vec![
                "application/json".into(),
                "multipart/form-data; boundary=X".into(),
                "multipart/form-data".into(),
                "application/offset+octet-stream".into(),
                "text/plain".into(),
                "application/json; charset=utf-16".into(),
            ],
        ),
        ("if-none-match", vec!["\"idle\"".into(), "*".into(), "W/\"x\"".into()]),
        ("if-range", vec!["\"x\"".into(), "Wed, 21 Oct 2015 07:28:00 GMT".into()]),
        ("accept", vec!["application/graphql-response+json".into(), "text/html".into(), "*/*;q=0".into()]),
        ("sec-websocket-protocol", vec!["graphql-transport-ws".into(), "nope".into()]),
    ];
    for (name, values) in headers {
        if rng.random_bool(0.3) {
            let value = if rng.random_bool(0.8) { pick(rng, values).clone() } else { random_text(rng, 20) };
            if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
                request = request.header(*name, value);
            }
        }
    }
    let body: Vec<u8> = match rng.random_range(0..9) {
        0 => Vec::new(),
        1 => (0..rng.random_range(1..2048)).map(|_| rng.random()).collect(),
        2 => br#"{"query": "{ me { subject } }"}"#.to_vec(),
        3 => format!("[{}]", vec![r#"{"query":"{ me { subject } }"}"#; rng.random_range(1..30)].join(",")).into_bytes(),
        4 => br#"{"status": "INSTALLED_VERSION", "version": 7, "progress": 1e400}"#.to_vec(),
        5 => br#"{"assetId": ["x"], "flag": "x", "process": -5, "installed": {"a": {"b": 1}}, "attributes": 5}"#
            .to_vec(),
        6 if rng.random_bool(0.5) => {
            br#"{"id": "x", "status": {"execution": "closed", "result": {"finished": "success", "progress": {"cnt": 1e400, "of": -1}}, "details": [1, "a
"]}, "data": {"a": [1]}, "mode": 5}"#.to_vec()
        }
        6 => b"--X\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{\"query\":\"mutation{x}\"}\r\n--X\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n{\"0\":[\"variables.file\"]}\r\n--X\r\nContent-Disposition: form-data; name=\"0\"; filename=\"a\"\r\n\r\nabc\r\n--X--\r\n".to_vec(),
        7 => b"--X\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nunterminated".to_vec(),
        _ => {
            let json = r#"{"query":"mutation($i: ApplyPackageInput!) { applyPackage(input: $i) { deployment { id } } }","variables":{"i":{"package":"x","devices":[]}}}"#;
            let cut = rng.random_range(0..json.len());
            json.as_bytes()[..cut].to_vec()
        }
    };
    (label, request.body(body))
}
