//! One GraphQL WebSocket connection (graphql-transport-ws, and the legacy
//! graphql-ws): async-graphql speaks the protocol; this module stands
//! between it and the socket and keeps the session honest.
//!
//! - The token is verified at `connection_init` and again at every
//!   `subscribe`, which also resolves its roles again: each subscription
//!   runs with a [`Ctx`] of its own, made when it starts, so a permission
//!   taken from a role meanwhile is gone for the next subscription.
//! - When the token expires the socket is closed with 4403 (Forbidden).
//! - At most `graphql.max_subscriptions_per_connection` subscriptions are
//!   live at once; one more gets an `error` for its id. A `subscribe` with
//!   the id of a live one closes the socket with 4409, as the protocol says.
//! - A message over [`MAX_MESSAGE_BYTES`] closes the socket with 1009.
//!   Every close the server starts waits (briefly) for the client's answer,
//!   so the close frame is read before the connection goes.
//!
//! Rule: a `subscribe` reaches async-graphql only with the `Ctx` resolved
//! for it here; the connection's own `Ctx` is only a fallback.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{ClientMessage, WebSocketProtocols};
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::app::App;
use crate::auth::{Actor, Ctx};
use crate::error::Error;
use crate::graphql::ApiSchema;

/// Largest message a client may send (a subscription's query and variables).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// What the WebSocket layer itself reads at most of one message or frame:
/// above [`MAX_MESSAGE_BYTES`], so that a message just over the limit is
/// read whole and refused with a clean close.
pub const TRANSPORT_MAX_BYTES: usize = 2 * MAX_MESSAGE_BYTES;

/// graphql-transport-ws: Forbidden (a refused or expired token).
const CLOSE_FORBIDDEN: u16 = 4403;
/// graphql-transport-ws: Subscriber for the id already exists.
const CLOSE_DUPLICATE_ID: u16 = 4409;
/// RFC 6455: Message Too Big.
const CLOSE_TOO_BIG: u16 = 1009;

#[derive(Default)]
struct Session {
    initialized: bool,
    token: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    /// The token of `connection_init` was refused.
    refused: bool,
    /// Ids of the subscriptions running.
    live: HashSet<String>,
}

/// What the input side asks the output side to send.
enum Control {
    Text(String),
    Close(u16, String),
}

struct Shared {
    app: App,
    protocol: WebSocketProtocols,
    request_id: Option<String>,
    session: Mutex<Session>,
    control: mpsc::UnboundedSender<Control>,
    too_big: AtomicBool,
}

impl Shared {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, control: Control) {
        // The receiver lives as long as the connection's loop.
        let _ = self.control.send(control);
    }

    /// An `error` for one operation, in the connection's protocol.
    fn operation_error(&self, id: &str, err: &Error) {
        let error = json!({ "message": err.to_string(), "extensions": { "code": err.code() } });
        let payload = match self.protocol {
            WebSocketProtocols::GraphQLWS => json!([error]),
            WebSocketProtocols::SubscriptionsTransportWS => error,
        };
        self.send(Control::Text(json!({ "type": "error", "id": id, "payload": payload }).to_string()));
    }

    /// A client message on its way to async-graphql: `subscribe` gets its
    /// own `Ctx` (or is refused); None drops the message.
    async fn admit(self: Arc<Self>, bytes: bytes::Bytes) -> Option<serde_json::Result<ClientMessage>> {
        let message = match ClientMessage::from_bytes(&bytes) {
            Ok(message) => message,
            // async-graphql closes the socket with 1002.
            Err(err) => return Some(Err(err)),
        };
        match message {
            ClientMessage::Start { id, mut payload } => {
                let token = {
                    let session = self.session();
                    if !session.initialized {
                        // async-graphql closes: the handshake is not complete.
                        return Some(Ok(ClientMessage::Start { id, payload }));
                    }
                    if session.live.contains(&id) {
                        drop(session);
                        self.send(Control::Close(CLOSE_DUPLICATE_ID, format!("Subscriber for {id} already exists")));
                        return None;
                    }
                    let max = self.app.config.graphql.max_subscriptions_per_connection;
                    if session.live.len() >= max {
                        drop(session);
                        let err = Error::invalid(
                            "subscribe",
                            format!("at most {max} subscriptions run at once on one connection; complete one first"),
                        );
                        self.operation_error(&id, &err);
                        return None;
                    }
                    session.token.clone()
                };
                let actor = match token {
                    None => Actor::Anonymous,
                    Some(token) => match crate::service::role::authenticate_operator(&self.app, &token).await {
                        Ok(user) => Actor::User(user),
                        Err(err @ Error::Unauthenticated(_)) => {
                            self.send(Control::Close(CLOSE_FORBIDDEN, err.to_string()));
                            return None;
                        }
                        Err(err) => {
                            self.operation_error(&id, &err);
                            return None;
                        }
                    },
                };
                payload.data.insert(Ctx::new(actor, self.request_id.clone()));
                self.session().live.insert(id.clone());
                Some(Ok(ClientMessage::Start { id, payload }))
            }
            ClientMessage::Stop { id } => {
                self.session().live.remove(&id);
                Some(Ok(ClientMessage::Stop { id }))
            }
            other => Some(Ok(other)),
        }
    }

    /// `connection_init`: verify the token, note it and its expiry.
    async fn init(self: Arc<Self>, token: Option<String>) -> async_graphql::Result<Data> {
        let actor = match token {
            None => Actor::Anonymous,
            Some(token) => match crate::service::role::authenticate_operator_until(&self.app, &token).await {
                Ok((user, expires_at)) => {
                    let mut session = self.session();
                    session.token = Some(token);
                    session.expires_at = Some(expires_at);
                    Actor::User(user)
                }
                Err(err) => {
                    self.session().refused = true;
                    return Err(err.into_graphql());
                }
            },
        };
        self.session().initialized = true;
        let mut data = Data::default();
        data.insert(Ctx::new(actor, self.request_id.clone()));
        Ok(data)
    }
}

/// Run one upgraded connection until either side ends it.
pub async fn serve(
    socket: WebSocket,
    schema: ApiSchema,
    app: App,
    protocol: WebSocketProtocols,
    header_token: Option<String>,
    request_id: Option<String>,
) {
    let (control, mut controls) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        app,
        protocol,
        request_id,
        session: Mutex::new(Session::default()),
        control,
        too_big: AtomicBool::new(false),
    });
    let (mut sink, stream) = socket.split();
    let input = {
        let shared = shared.clone();
        stream
            .take_while({
                let shared = shared.clone();
                move |message| {
                    if let Err(err) = message
                        && let Some(tungstenite::Error::Capacity(_)) =
                            std::error::Error::source(err).and_then(|e| e.downcast_ref::<tungstenite::Error>())
                    {
                        shared.too_big.store(true, Ordering::Release);
                    }
                    futures::future::ready(message.is_ok())
                }
            })
            .filter_map({
                let shared = shared.clone();
                move |message| {
                    futures::future::ready(match message {
                        Ok(message @ (WsMessage::Text(_) | WsMessage::Binary(_))) => {
                            let data = message.into_data();
                            if data.len() > MAX_MESSAGE_BYTES {
                                let reason = format!("a message is at most {MAX_MESSAGE_BYTES} bytes");
                                shared.send(Control::Close(CLOSE_TOO_BIG, reason));
                                None
                            } else {
                                Some(data)
                            }
                        }
                        _ => None,
                    })
                }
            })
            .then(move |bytes| shared.clone().admit(bytes))
            .filter_map(futures::future::ready)
    };
    let init_shared = shared.clone();
    let mut output = async_graphql::http::WebSocket::from_message_stream(schema, input, protocol)
        .on_connection_init(move |payload| async move {
            let token = token_from_init(&payload).or(header_token);
            init_shared.init(token).await
        })
        .keepalive_timeout(Duration::from_secs(60))
        .boxed();

    // Why the server ends the connection, if it does.
    let mut ending: Option<(u16, String)> = None;
    loop {
        let expires_at = shared.session().expires_at;
        let expiry = async move {
            match expires_at {
                Some(at) => tokio::time::sleep((at - Utc::now()).to_std().unwrap_or_default()).await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            message = output.next() => match message {
                Some(async_graphql::http::WsMessage::Text(text)) => {
                    if let Some(id) = completed(&text) {
                        shared.session().live.remove(&id);
                    }
                    WsMessage::Text(text.into())
                }
                Some(async_graphql::http::WsMessage::Close(code, reason)) => {
                    // A refused connection_init closes with 4403; async-graphql says 1002.
                    let code = if shared.session().refused { CLOSE_FORBIDDEN } else { code };
                    ending = Some((code, reason));
                    break;
                }
                None => {
                    if shared.too_big.load(Ordering::Acquire) {
                        ending = Some((CLOSE_TOO_BIG, format!("a message is at most {MAX_MESSAGE_BYTES} bytes")));
                    }
                    break;
                }
            },
            Some(control) = controls.recv() => match control {
                Control::Text(text) => WsMessage::Text(text.into()),
                Control::Close(code, reason) => {
                    ending = Some((code, reason));
                    break;
                }
            },
            () = expiry => {
                ending = Some((CLOSE_FORBIDDEN, "the token expired".into()));
                break;
            }
        };
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let Some((code, reason)) = ending else { return };
    // (tungstenite reports a sent close as "connection closed" once written.)
    let _ = sink.send(WsMessage::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    // Let the client read the close frame and answer it before the socket
    // goes: read on (discarding) until it closes, for a little while. Had
    // the read side failed (a message over the transport's limit), unread
    // bytes would make closing the socket a reset, which can overtake the
    // close frame; the pause lets the frame arrive first.
    let drain = async {
        while output.next().await.is_some() {}
        if code == CLOSE_TOO_BIG {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// The id of a `complete` that async-graphql sends (serde writes the tag first).
fn completed(text: &str) -> Option<String> {
    if !text.starts_with(r#"{"type":"complete""#) {
        return None;
    }
    let value: Value = serde_json::from_str(text).ok()?;
    value.get("id").and_then(Value::as_str).map(str::to_owned)
}

/// `{"Authorization": "Bearer x"}` (any case of either), `{"authorization": "x"}` or `{"token": "x"}`.
fn token_from_init(payload: &Value) -> Option<String> {
    let object = payload.as_object()?;
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| v.as_str())
        .map(|v| crate::http::extract::bearer_value(v).unwrap_or(v.trim()).to_owned())
        .or_else(|| object.get("token").and_then(Value::as_str).map(str::to_owned))
}
