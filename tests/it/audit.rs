//! The audit trail: listing, filtering, paging, the hash chain under
//! concurrent writers, tamper detection, and the live subscription.

use futures::{SinkExt, StreamExt};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::TestApp;

const CREATE: &str =
    "mutation($name: String!) { createRole(input: {name: $name, permissions: [AUDIT_READ]}) { role { name } } }";
const VERIFY: &str = "{ verifyAuditChain { ok checked firstBroken { seq id reason } } }";

#[tokio::test]
async fn events_page_newest_first_with_filters() {
    let app = TestApp::start().await;
    let admin = app.operator("admin");
    for i in 0..7 {
        admin.ok(CREATE, json!({"name": format!("role-{i}")})).await;
    }
    app.with_token(&app.token_for("bob", &["admin"]))
        .ok("mutation { deleteRole(input: {name: \"role-3\"}) { role { name } } }", json!({}))
        .await;
    let auditor = app.operator("auditor");
    let page = "query($after: String, $filter: AuditEventFilter) { auditEvents(first: 3, after: $after, filter: $filter) { totalCount pageInfo { hasNextPage endCursor } edges { cursor node { seq action objectId } } } }";

    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let data = auditor.ok(page, json!({"after": after})).await;
        let conn = &data["auditEvents"];
        assert_eq!(conn["totalCount"], 8);
        seen.extend(conn["edges"].as_array().unwrap().iter().map(|e| e["node"]["seq"].as_i64().unwrap()));
        if conn["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = conn["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(seen, [8, 7, 6, 5, 4, 3, 2, 1]);

    let data = auditor.ok(page, json!({"filter": {"actor": "bob"}})).await;
    assert_eq!(data["auditEvents"]["totalCount"], 1);
    assert_eq!(data["auditEvents"]["edges"][0]["node"]["action"], "role.delete");
    let data = auditor.ok(page, json!({"filter": {"action": "role.*"}})).await;
    assert_eq!(data["auditEvents"]["totalCount"], 8);
    let data = auditor.ok(page, json!({"filter": {"action": "role.create", "objectId": "role-5"}})).await;
    assert_eq!(data["auditEvents"]["totalCount"], 1);
    let data =
        auditor.ok(page, json!({"filter": {"from": "2000-01-01T00:00:00Z", "to": "2001-01-01T00:00:00Z"}})).await;
    assert_eq!(data["auditEvents"]["totalCount"], 0);

    let bad = auditor.gql(page, json!({"after": "bm90LWEtY3Vyc29y"})).await;
    assert_eq!(crate::support::error_code(&bad), "BAD_USER_INPUT");
    let bad = auditor.gql("{ auditEvents(first: 0) { totalCount } }", json!({})).await;
    assert_eq!(crate::support::error_code(&bad), "BAD_USER_INPUT");
}

#[tokio::test]
async fn the_chain_stays_valid_under_concurrent_mutations() {
    let app = TestApp::start().await;
    let admin = app.operator("admin");
    let writers = (0..24).map(|i| {
        let admin = &admin;
        async move { admin.gql(CREATE, json!({"name": format!("c-{i}")})).await }
    });
    let results = futures::future::join_all(writers).await;
    for body in &results {
        assert!(body.get("errors").is_none(), "{body}");
    }
    let data = app.operator("auditor").ok(VERIFY, json!({})).await;
    assert_eq!(data["verifyAuditChain"], json!({"ok": true, "checked": 24, "firstBroken": null}));
}

#[tokio::test]
async fn verify_names_the_first_tampered_event() {
    let app = TestApp::start().await;
    let admin = app.operator("admin");
    for i in 0..5 {
        admin.ok(CREATE, json!({"name": format!("t-{i}")})).await;
    }
    let auditor = app.operator("auditor");
    assert_eq!(auditor.ok(VERIFY, json!({})).await["verifyAuditChain"]["ok"], true);

    // Someone with database access rewrites history.
    app.db().execute_unprepared("UPDATE audit_event SET actor_id = 'someone-else' WHERE seq = 3").await.unwrap();
    let data = auditor.ok(VERIFY, json!({})).await;
    assert_eq!(data["verifyAuditChain"]["ok"], false);
    assert_eq!(data["verifyAuditChain"]["checked"], 2);
    assert_eq!(data["verifyAuditChain"]["firstBroken"]["seq"], 3);
    assert!(data["verifyAuditChain"]["firstBroken"]["reason"].as_str().unwrap().contains("hash"));

    // Deleting a row is caught as well, at the gap.
    app.db().execute_unprepared("UPDATE audit_event SET actor_id = 'admin-user' WHERE seq = 3").await.unwrap();
    assert_eq!(auditor.ok(VERIFY, json!({})).await["verifyAuditChain"]["ok"], true);
    app.db().execute_unprepared("DELETE FROM audit_event WHERE seq = 4").await.unwrap();
    let data = auditor.ok(VERIFY, json!({})).await;
    assert_eq!(data["verifyAuditChain"]["firstBroken"]["seq"], 5);
    assert!(data["verifyAuditChain"]["firstBroken"]["reason"].as_str().unwrap().contains("gap"));
}

/// graphql-transport-ws, as the npm `graphql-ws` client speaks it.
async fn subscribe(
    app: &TestApp,
    token: Option<&str>,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    subscribe_at(app.server().addr, token, query).await
}

/// [`subscribe`] on the server at `addr`.
pub async fn subscribe_at(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://{addr}/graphql/ws").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
    let payload = token.map_or(json!({}), |t| json!({"Authorization": format!("Bearer {t}")}));
    socket.send(Message::text(json!({"type": "connection_init", "payload": payload}).to_string())).await.unwrap();
    let ack = next_json(&mut socket).await;
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    socket
        .send(Message::text(json!({"id": "1", "type": "subscribe", "payload": {"query": query}}).to_string()))
        .await
        .unwrap();
    socket
}

pub async fn next_json<S>(socket: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("socket open")
            .expect("no socket error");
        match message {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "ping" || value["type"] == "pong" {
                    continue;
                }
                return value;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

pub async fn subscription_error_code(app: &TestApp, token: Option<&str>, query: &str) -> String {
    let mut socket = subscribe(app, token, query).await;
    let message = next_json(&mut socket).await;
    // A resolver error arrives as the one `next` of the operation.
    assert_eq!(message["type"], "next", "{message}");
    assert!(message["payload"]["data"].is_null(), "{message}");
    let code = message["payload"]["errors"][0]["extensions"]["code"].as_str().unwrap_or_default().to_owned();
    assert_eq!(next_json(&mut socket).await["type"], "complete");
    code
}

#[tokio::test]
async fn audit_events_arrive_live_over_the_websocket() {
    let app = TestApp::start().await;
    let token = app.token_for("watcher", &["auditor"]);
    let mut socket = subscribe(
        &app,
        Some(&token),
        "subscription { auditEventAdded(filter: {action: \"role.create\"}) { seq action objectId actor { id } } }",
    )
    .await;
    let admin = app.operator("admin");
    // The subscription is live once a warm-up event comes through.
    let mut live = false;
    for i in 0..50 {
        admin.ok(CREATE, json!({"name": format!("warmup-{i}")})).await;
        if tokio::time::timeout(std::time::Duration::from_millis(200), next_json(&mut socket)).await.is_ok() {
            live = true;
            break;
        }
    }
    assert!(live, "subscription never delivered");
    admin.ok(CREATE, json!({"name": "live-1"})).await;
    admin.ok("mutation { deleteRole(input: {name: \"live-1\"}) { role { name } } }", json!({})).await;
    admin.ok(CREATE, json!({"name": "live-2"})).await;

    for expected in ["live-1", "live-2"] {
        let message = loop {
            let message = next_json(&mut socket).await;
            let object = message["payload"]["data"]["auditEventAdded"]["objectId"].as_str().unwrap_or_default();
            if !object.starts_with("warmup-") {
                break message;
            }
        };
        assert_eq!(message["type"], "next", "{message}");
        assert_eq!(message["payload"]["data"]["auditEventAdded"]["objectId"], expected, "filtered to role.create");
        assert_eq!(message["payload"]["data"]["auditEventAdded"]["actor"]["id"], "admin-user");
    }

    assert_eq!(
        subscription_error_code(&app, None, "subscription { auditEventAdded { seq } }").await,
        "UNAUTHENTICATED"
    );
    let viewer = app.token_for("v", &["viewer"]);
    assert_eq!(
        subscription_error_code(&app, Some(&viewer), "subscription { auditEventAdded { seq } }").await,
        "FORBIDDEN"
    );
}

#[tokio::test]
async fn a_bad_token_in_connection_init_closes_the_websocket() {
    let app = TestApp::start().await;
    let mut request = format!("ws://{}/graphql/ws", app.server().addr).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(Message::text(
            json!({"type": "connection_init", "payload": {"Authorization": "Bearer not.a.jwt"}}).to_string(),
        ))
        .await
        .unwrap();
    let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await.expect("answered");
    match message {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert!(frame.reason.contains("invalid token"), "{}", frame.reason);
            assert_eq!(u16::from(frame.code), 4403, "graphql-transport-ws: Forbidden");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}
