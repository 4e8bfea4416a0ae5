//! The GraphQL WebSocket session: a token that expires closes it (4403),
//! every `subscribe` runs with the permissions of its moment, the
//! subscriptions of one connection are capped, and so is a message's size.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::audit::next_json;
use crate::support::TestApp;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const WATCH: &str = "subscription($id: ID!) { contentUpdated(id: $id) { id state } }";

/// A graphql-transport-ws connection, initialized with `token`.
async fn connect(app: &TestApp, token: &str) -> Socket {
    let mut request = format!("ws://{}/graphql/ws", app.server().addr).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
    let init = json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}});
    socket.send(Message::text(init.to_string())).await.unwrap();
    assert_eq!(next_json(&mut socket).await["type"], "connection_ack");
    socket
}

async fn subscribe(socket: &mut Socket, id: &str, query: &str, variables: Value) {
    let message = json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": variables}});
    socket.send(Message::text(message.to_string())).await.unwrap();
}

/// The close frame that ends the socket (within 20 s).
async fn close_frame(socket: &mut Socket) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next()).await.expect("the socket is closed");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a close frame"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => panic!("socket error before the close frame: {err}"),
        }
    }
}

/// A content to watch: its id.
async fn a_content(app: &TestApp) -> String {
    app.operator("admin")
        .ok(
            "mutation { createContent(content: {name: \"a\", content_type: \"x\", type: \"firmware\", length: 1}) { id } }",
            json!({}),
        )
        .await["createContent"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_socket_closes_with_4403_when_the_token_expires() {
    let app = TestApp::start().await;
    let id = a_content(&app).await;
    let token = app.server().app.jwt.issue("brief", &["viewer".to_owned()], Duration::from_secs(2)).unwrap();
    let mut socket = connect(&app, &token).await;
    subscribe(&mut socket, "1", WATCH, json!({"id": id})).await;
    assert_eq!(next_json(&mut socket).await["payload"]["data"]["contentUpdated"]["id"], id.as_str());
    let (code, reason) = close_frame(&mut socket).await;
    assert_eq!(code, 4403, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn every_subscribe_resolves_the_permissions_again() {
    let app = TestApp::start().await;
    let id = a_content(&app).await;
    let admin = app.operator("admin");
    admin
        .ok(
            "mutation { createRole(input: {name: \"watcher\", permissions: [CONTENT_READ]}) { role { name } } }",
            json!({}),
        )
        .await;
    let mut socket = connect(&app, &app.token_for("w", &["watcher"])).await;
    subscribe(&mut socket, "1", WATCH, json!({"id": id})).await;
    let first = next_json(&mut socket).await;
    assert_eq!(first["payload"]["data"]["contentUpdated"]["id"], id.as_str(), "{first}");

    // The role loses CONTENT_READ: the next subscription on the same socket is refused.
    admin
        .ok(
            "mutation { updateRole(input: {name: \"watcher\", permissions: [AUDIT_READ]}) { role { name } } }",
            json!({}),
        )
        .await;
    subscribe(&mut socket, "2", WATCH, json!({"id": id})).await;
    let second = next_json(&mut socket).await;
    assert_eq!(second["id"], "2", "{second}");
    assert_eq!(second["payload"]["errors"][0]["extensions"]["code"], "FORBIDDEN", "{second}");
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped() {
    let app = TestApp::start_with(|c| c.graphql.max_subscriptions_per_connection = 2).await;
    let id = a_content(&app).await;
    let mut socket = connect(&app, &app.token_for("v", &["viewer"])).await;
    for sub in ["1", "2"] {
        subscribe(&mut socket, sub, WATCH, json!({"id": id})).await;
        let message = next_json(&mut socket).await;
        assert_eq!((message["type"].as_str(), message["id"].as_str()), (Some("next"), Some(sub)), "{message}");
    }
    subscribe(&mut socket, "3", WATCH, json!({"id": id})).await;
    let refused = next_json(&mut socket).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "3");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "BAD_USER_INPUT", "{refused}");

    // Completing one makes room for another.
    socket.send(Message::text(json!({"id": "1", "type": "complete"}).to_string())).await.unwrap();
    subscribe(&mut socket, "4", WATCH, json!({"id": id})).await;
    let message = loop {
        let message = next_json(&mut socket).await;
        if message["id"] == "4" {
            break message;
        }
    };
    assert_eq!(message["type"], "next", "{message}");

    // An id that is still live closes the socket, as the protocol says.
    subscribe(&mut socket, "2", WATCH, json!({"id": id})).await;
    assert_eq!(close_frame(&mut socket).await.0, 4409);
}

#[tokio::test]
async fn a_message_over_64_kib_closes_the_socket_with_1009() {
    let app = TestApp::start().await;
    let id = a_content(&app).await;
    let mut socket = connect(&app, &app.token_for("v", &["viewer"])).await;
    let padded = format!("{WATCH} #{}", "x".repeat(70 * 1024));
    subscribe(&mut socket, "1", &padded, json!({"id": id})).await;
    let (code, reason) = close_frame(&mut socket).await;
    assert_eq!(code, 1009, "{reason}");

    // Far over it, the WebSocket layer stops reading the message at once.
    let mut socket = connect(&app, &app.token_for("v", &["viewer"])).await;
    let padded = format!("{WATCH} #{}", "x".repeat(1024 * 1024));
    subscribe(&mut socket, "1", &padded, json!({"id": id})).await;
    assert_eq!(close_frame(&mut socket).await.0, 1009);

    // Just under the limit is fine.
    let mut socket = connect(&app, &app.token_for("v", &["viewer"])).await;
    let padded = format!("{WATCH} #{}", "x".repeat(60 * 1024));
    subscribe(&mut socket, "1", &padded, json!({"id": id})).await;
    assert_eq!(next_json(&mut socket).await["type"], "next");
}
