//! GraphQL over HTTP: media types, methods, status codes, limits.

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use serde_json::{Value, json};

use crate::support::{TestApp, error_code};

const GQL_RESPONSE: &str = "application/graphql-response+json";

#[tokio::test]
async fn replies_application_json_unless_graphql_response_json_is_accepted() {
    let app = TestApp::start().await;
    let token = app.token_for("alice", &["viewer"]);
    let post = |accept: Option<&'static str>| {
        let mut request =
            app.client.post(app.url("/graphql")).bearer_auth(&token).json(&json!({ "query": "{ me { subject } }" }));
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        request.send()
    };
    let plain = post(None).await.expect("post");
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(plain.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));

    let spec = post(Some("application/graphql-response+json, application/json;q=0.9")).await.expect("post");
    assert_eq!(spec.status(), StatusCode::OK);
    assert!(spec.headers()[CONTENT_TYPE].to_str().unwrap().starts_with(GQL_RESPONSE));
    let body: Value = spec.json().await.unwrap();
    assert_eq!(body["data"]["me"]["subject"], "alice");
}

#[tokio::test]
async fn request_errors_are_400_without_data_for_graphql_response_json() {
    let app = TestApp::start().await;
    for query in ["{ me { subject ", "{ noSuchField }", "query($n: Int!) { auditEvents(first: $n) { totalCount } }"] {
        let response = app
            .client
            .post(app.url("/graphql"))
            .header(ACCEPT, GQL_RESPONSE)
            .json(&json!({ "query": query }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body.get("data").is_none(), "no data key: {body}");
        assert_eq!(error_code(&body), "BAD_USER_INPUT");

        // The legacy media type keeps 200, still without data.
        let response = app.client.post(app.url("/graphql")).json(&json!({ "query": query })).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert!(body.get("data").is_none(), "no data key: {body}");
    }
}

#[tokio::test]
async fn execution_errors_keep_data_and_status_200() {
    let app = TestApp::start().await;
    let response = app
        .client
        .post(app.url("/graphql"))
        .header(ACCEPT, GQL_RESPONSE)
        .json(&json!({ "query": "{ me { subject } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("data").is_some());
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
}

#[tokio::test]
async fn post_must_be_json_or_multipart() {
    let app = TestApp::start().await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/xml"] {
        let response = app
            .client
            .post(app.url("/graphql"))
            .header(CONTENT_TYPE, content_type)
            .body(r#"{"query":"mutation { deleteRole(input: {name: \"x\"}) { role { name } } }"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "BAD_USER_INPUT");
    }
    let none = app.client.post(app.url("/graphql")).body("{}").send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::start().await;
    for body in ["{not json", "[]x", "42", r#"{"query": 5}"#] {
        let response = app
            .client
            .post(app.url("/graphql"))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(error_code(&json), "BAD_USER_INPUT");
    }
}

#[tokio::test]
async fn oversized_body_is_413() {
    let app = TestApp::start_with(|c| c.http.max_body_bytes = 4096).await;
    let big = "x".repeat(10_000);
    let response = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({ "query": format!("{{ me {{ subject }} }} # {big}") }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn get_runs_queries_but_not_mutations() {
    let app = TestApp::start().await;
    let token = app.token_for("alice", &["viewer"]);
    let response = app
        .client
        .get(app.url("/graphql"))
        .bearer_auth(&token)
        .query(&[("query", "{ me { subject } }")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["me"]["subject"], "alice");

    let admin = app.token_for("root", &["admin"]);
    let mutation = r#"mutation { createRole(input: {name: "via-get", permissions: [AUDIT_READ]}) { role { name } } }"#;
    let response =
        app.client.get(app.url("/graphql")).bearer_auth(&admin).query(&[("query", mutation)]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[ALLOW], "POST");

    // Also when the mutation is picked by operationName from several operations.
    let doc = "query Q { me { subject } } mutation M { deleteRole(input: {name: \"viewer\"}) { role { name } } }";
    let response = app
        .client
        .get(app.url("/graphql"))
        .bearer_auth(&admin)
        .query(&[("query", doc), ("operationName", "M")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let roles = app.operator("admin").ok("{ roles { name } }", json!({})).await;
    assert!(!roles["roles"].as_array().unwrap().iter().any(|r| r["name"] == "via-get"));

    let put = app.client.put(app.url("/graphql")).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn browser_get_serves_graphiql() {
    let app = TestApp::start().await;
    let response =
        app.client.get(app.url("/graphql")).header(ACCEPT, "text/html,application/xhtml+xml").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let html = response.text().await.unwrap();
    assert!(html.contains("graphiql"), "GraphiQL page");
    assert!(html.contains("/graphql/ws"));
    // Everything it loads comes from the server itself (no internet needed).
    let sources: Vec<&str> =
        html.split('"').filter(|s| s.ends_with(".js") || s.ends_with(".css") || s.starts_with("http")).collect();
    assert_eq!(sources.len(), 4, "{sources:?}");
    for source in sources {
        assert!(source.starts_with("/graphiql/"), "{source} is not served here");
        let asset = app.client.get(app.url(source)).send().await.unwrap();
        assert_eq!(asset.status(), StatusCode::OK, "{source}");
        let kind = asset.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        assert!(kind.starts_with(if source.ends_with(".js") { "application/javascript" } else { "text/css" }));
        assert!(asset.bytes().await.unwrap().len() > 10_000, "{source}");
    }
    let missing = app.client.get(app.url("/graphiql/4.1.2/nothing.js")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn batched_requests_run_each_operation() {
    let app = TestApp::start().await;
    let token = app.token_for("alice", &["auditor"]);
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .json(&json!([
            { "query": "query A { me { subject } }", "operationName": "A" },
            { "query": "query B($n: Int) { auditEvents(first: $n) { totalCount } }", "variables": { "n": 5 } }
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body[0]["data"]["me"]["subject"], "alice");
    assert_eq!(body[1]["data"]["auditEvents"]["totalCount"], 0);
}

#[tokio::test]
async fn depth_and_complexity_are_limited() {
    let app = TestApp::start_with(|c| {
        c.graphql.max_depth = 4;
        c.graphql.max_complexity = 50;
    })
    .await;
    let op = app.operator("auditor");
    let deep = "{ auditEvents(first: 1) { edges { node { actor { kind } } } } }";
    let body = op.gql(deep, json!({})).await;
    assert_eq!(error_code(&body), "BAD_USER_INPUT");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("deep"), "{body}");

    let complex = "{ auditEvents(first: 100) { edges { node { id seq hash } } } }";
    let body = op.gql(complex, json!({})).await;
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("complex"), "{body}");
}

#[tokio::test]
async fn introspection_can_be_switched_off() {
    let query = "{ __schema { queryType { name } } }";
    let on = TestApp::start().await;
    let data = on.anonymous().ok(query, json!({})).await;
    assert_eq!(data["__schema"]["queryType"]["name"], "Query");

    let off = TestApp::start_with(|c| c.graphql.introspection = false).await;
    let body = off.anonymous().gql(query, json!({})).await;
    assert!(body["data"]["__schema"].is_null(), "{body}");
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = TestApp::start().await;
    let response = app.client.get(app.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");

    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");

    // A forged log line is not accepted as an id.
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "x\" level=error msg=\"forged")
        .send()
        .await
        .unwrap();
    assert_ne!(response.headers()["x-request-id"], "x\" level=error msg=\"forged");

    // And the id lands in the audit event of a mutation.
    let admin = app.token_for("root", &["admin"]);
    app.client
        .post(app.url("/graphql"))
        .bearer_auth(&admin)
        .header("x-request-id", "req-for-audit-1")
        .json(&json!({ "query": r#"mutation { createRole(input: {name: "ops", permissions: [AUDIT_READ]}) { role { name } } }"# }))
        .send()
        .await
        .unwrap();
    let data = app
        .operator("auditor")
        .ok("{ auditEvents(filter: {action: \"role.create\"}) { edges { node { requestId } } } }", json!({}))
        .await;
    assert_eq!(data["auditEvents"]["edges"][0]["node"]["requestId"], "req-for-audit-1");
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app = TestApp::start_with(|c| c.http.cors_allowed_origins = vec!["https://admin.example.com".into()]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let allowed = preflight("https://admin.example.com").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://admin.example.com");
    let allow_headers = allowed.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allow_headers.contains("authorization"));

    let denied = preflight("https://evil.example.com").await.unwrap();
    assert!(denied.headers().get("access-control-allow-origin").is_none());
    // The UI's other browser calls have CORS; the device API has none.
    for (path, cors) in [("/repo/sha256/00", true), ("/.well-known/otadepot/keys", true), ("/device/v1/poll", false)] {
        let response = app
            .client
            .request(reqwest::Method::OPTIONS, app.url(path))
            .header("origin", "https://admin.example.com")
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers().get("access-control-allow-origin").is_some(), cors, "{path}");
    }

    let default = TestApp::start().await;
    let response = default
        .client
        .request(reqwest::Method::OPTIONS, default.url("/graphql"))
        .header("origin", "https://admin.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none(), "no origins by default");
}

#[tokio::test]
async fn multipart_requests_run_and_oversized_files_are_413() {
    let app = TestApp::start_with(|c| {
        c.http.max_upload_bytes = 1024;
        c.http.max_body_bytes = 4096;
    })
    .await;
    let token = app.token_for("alice", &["viewer"]);
    let form = |file: Vec<u8>| {
        reqwest::multipart::Form::new()
            .text("operations", json!({ "query": "{ me { subject } }", "variables": { "f": null } }).to_string())
            .text("map", json!({ "0": ["variables.f"] }).to_string())
            .part("0", reqwest::multipart::Part::bytes(file).file_name("a.bin"))
    };
    let response =
        app.client.post(app.url("/graphql")).bearer_auth(&token).multipart(form(vec![1; 100])).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["me"]["subject"], "alice", "{body}");

    // A file the operation does not use is never read; a body longer than
    // the largest upload and its parts is refused before it is.
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .multipart(form(vec![1; 2 * 1024 * 1024]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn a_subscription_over_http_says_where_subscriptions_are() {
    let app = TestApp::start().await;
    let body = app.operator("auditor").gql("subscription { auditEventAdded { seq } }", json!({})).await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("/graphql/ws"), "{body}");
    assert_eq!(crate::support::error_code(&body), "BAD_USER_INPUT");
}
