//! `/graphql` and `/graphql/ws`, following the GraphQL-over-HTTP spec
//! (graphql.github.io/graphql-over-http) where async-graphql-axum does not:
//!
//! - the reply is `application/json` unless the client accepts
//!   `application/graphql-response+json`; with the latter, a request error
//!   (parse, validation, variables) is a 400 without a `data` key;
//! - a POST must be JSON or multipart (415 otherwise), so a browser form
//!   cannot run a mutation; a mutation over GET is a 405 with `Allow: POST`;
//! - bodies are size-limited (413); a batch holds at most
//!   `graphql.max_batch` operations, whose complexities share one budget,
//!   both checked before any operation runs (400).
//!
//! Operators authenticate with `Authorization: Bearer <jwt>`, checked
//! before the body is read; a multipart request (an upload, see
//! `multipart`) needs a token. Over the WebSocket the token comes in the
//! `connection_init` payload (or the upgrade request); see `ws`.

mod multipart;
mod ws;

use async_graphql::http::WebSocketProtocols;
use async_graphql::parser::types::OperationType;
use async_graphql::{BatchRequest, BatchResponse};
use axum::body::Body;
use axum::extract::{RawQuery, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use super::{HttpState, request_id};
use crate::auth::Actor;
use crate::error::Error;

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// Which media type the client gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    Json,
    GraphqlResponseJson,
}

impl Reply {
    fn negotiate(headers: &HeaderMap) -> Self {
        let accepts =
            headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
                |item| {
                    let mut parts = item.split(';').map(str::trim);
                    let media = parts.next().unwrap_or_default();
                    let refused = parts.any(|p| p.replace(' ', "") == "q=0");
                    media.eq_ignore_ascii_case(GRAPHQL_RESPONSE_JSON) && !refused
                },
            );
        if accepts { Reply::GraphqlResponseJson } else { Reply::Json }
    }

    fn content_type(self) -> &'static str {
        match self {
            Reply::Json => "application/json; charset=utf-8",
            Reply::GraphqlResponseJson => "application/graphql-response+json; charset=utf-8",
        }
    }

    fn respond(self, status: StatusCode, body: &Value) -> Response {
        (status, [(header::CONTENT_TYPE, self.content_type())], body.to_string()).into_response()
    }

    /// A request that never reached execution (bad body, bad token...).
    fn request_error(self, status: StatusCode, err: &Error) -> Response {
        let body = json!({ "errors": [{ "message": err.to_string(), "extensions": { "code": err.code() } }] });
        let mut response = self.respond(status, &body);
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub async fn post(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let reply = Reply::negotiate(&headers);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let config = &state.app.config.http;

    // Who calls is known before a byte of the body is read.
    let ctx = match super::extract::operator(&state.app, &headers).await {
        Ok(ctx) => ctx,
        Err(err) => return reply.request_error(err.status(), &err),
    };

    let batch = match essence.as_str() {
        "application/json" | "application/graphql+json" => {
            let limit = config.max_body_bytes;
            let too_large = || Error::PayloadTooLarge { limit: limit as u64 };
            if content_length(&headers).is_some_and(|n| n > limit as u64) {
                return reply.request_error(StatusCode::PAYLOAD_TOO_LARGE, &too_large());
            }
            let bytes = match axum::body::to_bytes(body, limit).await {
                Ok(bytes) => bytes,
                Err(_) => return reply.request_error(StatusCode::PAYLOAD_TOO_LARGE, &too_large()),
            };
            match serde_json::from_slice::<BatchRequest>(&bytes) {
                Ok(batch) => batch,
                Err(err) => {
                    let err = Error::invalid("body", format!("not a GraphQL request in JSON: {err}"));
                    return reply.request_error(StatusCode::BAD_REQUEST, &err);
                }
            }
        }
        "multipart/form-data" => {
            // Multipart is for uploads, and uploads need a token: an
            // anonymous caller never gets the server to read a multipart body.
            if matches!(ctx.actor, Actor::Anonymous) {
                let err = Error::Unauthenticated("a multipart request is an upload: it needs an operator token".into());
                return reply.request_error(StatusCode::UNAUTHORIZED, &err);
            }
            match multipart::receive(config, &content_type, &headers, body).await {
                Ok(batch) => batch,
                Err(err) => return reply.request_error(err.status(), &err),
            }
        }
        _ => {
            let err = Error::invalid("content-type", "POST /graphql takes application/json or multipart/form-data");
            return reply.request_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &err);
        }
    };

    if let BatchRequest::Batch(requests) = &batch {
        let graphql = &state.app.config.graphql;
        if requests.len() > graphql.max_batch {
            let err = Error::invalid(
                "body",
                format!("a batch holds at most {} operations; this one has {}", graphql.max_batch, requests.len()),
            );
            return reply.request_error(StatusCode::BAD_REQUEST, &err);
        }
        if requests.len() > 1 {
            let complexity = crate::graphql::limits::batch_complexity(&state.schema, requests).await;
            if complexity > graphql.max_complexity {
                let err = Error::invalid(
                    "body",
                    format!(
                        "the batch's operations are {complexity} complex together; the limit is {}",
                        graphql.max_complexity
                    ),
                );
                return reply.request_error(StatusCode::BAD_REQUEST, &err);
            }
        }
    }
    let response = state.schema.execute_batch(batch.data(ctx)).await;
    shape(reply, response)
}

pub async fn get(State(state): State<HttpState>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let reply = Reply::negotiate(&headers);
    let query = query.unwrap_or_default();
    let wants_html = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/html"));
    if wants_html && !query.split('&').any(|kv| kv.starts_with("query=")) {
        if !state.app.config.graphql.graphiql {
            return StatusCode::NOT_FOUND.into_response();
        }
        return Html(super::graphiql::page()).into_response();
    }
    let request = match async_graphql::http::parse_query_string(&query) {
        Ok(request) if !request.query.is_empty() => request,
        Ok(_) => {
            let err = Error::invalid("query", "a GraphQL GET needs a `query` parameter");
            return reply.request_error(StatusCode::BAD_REQUEST, &err);
        }
        Err(err) => {
            let err = Error::invalid("query", format!("not a GraphQL request: {err}"));
            return reply.request_error(StatusCode::BAD_REQUEST, &err);
        }
    };
    if is_mutation(&request) {
        let err = Error::invalid("query", "mutations must be sent with POST");
        let mut response = reply.request_error(StatusCode::METHOD_NOT_ALLOWED, &err);
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let ctx = match super::extract::operator(&state.app, &headers).await {
        Ok(ctx) => ctx,
        Err(err) => return reply.request_error(err.status(), &err),
    };
    let response = state.schema.execute(request.data(ctx)).await;
    shape(reply, BatchResponse::Single(response))
}

/// Whether the operation a GET would run is a mutation. A document that
/// does not parse is left to execution, which reports the parse error.
fn is_mutation(request: &async_graphql::Request) -> bool {
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
        return false;
    };
    document
        .operations
        .iter()
        .filter(|(name, _)| match &request.operation_name {
            Some(wanted) => name.is_some_and(|n| n.as_str() == wanted),
            None => true,
        })
        .any(|(_, op)| op.node.ty == OperationType::Mutation)
}

/// Serialize a response per the spec: errors without a code get
/// BAD_USER_INPUT (they come from the GraphQL layer itself: parse,
/// validation, limits, argument coercion); a request error carries no
/// `data` and, with graphql-response+json, is a 400.
fn shape(reply: Reply, response: BatchResponse) -> Response {
    match response {
        BatchResponse::Single(response) => {
            let (body, request_error) = shape_one(&response);
            let status = if request_error && reply == Reply::GraphqlResponseJson {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            reply.respond(status, &body)
        }
        BatchResponse::Batch(responses) => {
            let items = responses.iter().map(|r| shape_one(r).0).collect();
            reply.respond(StatusCode::OK, &Value::Array(items))
        }
    }
}

/// The JSON of one response, and whether it is a request error (no
/// execution happened: no data, and no error has a path).
fn shape_one(response: &async_graphql::Response) -> (Value, bool) {
    let request_error = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    let mut body = serde_json::to_value(response).unwrap_or_else(|_| json!({}));
    normalize(&mut body, request_error);
    (body, request_error)
}

fn normalize(body: &mut Value, request_error: bool) {
    if request_error && let Some(map) = body.as_object_mut() {
        map.remove("data");
    }
    if let Some(errors) = body.get_mut("errors").and_then(Value::as_array_mut) {
        for error in errors {
            // Say where subscriptions do work.
            if let Some(message) = error.get_mut("message")
                && message.as_str() == Some("Subscriptions are not supported on this transport.")
            {
                *message = Value::String(
                    "subscriptions are not served over HTTP; use the WebSocket at /graphql/ws (graphql-transport-ws)"
                        .into(),
                );
            }
            let extensions = error.as_object_mut().map(|e| e.entry("extensions").or_insert_with(|| json!({})));
            if let Some(Value::Object(ext)) = extensions {
                ext.entry("code").or_insert_with(|| "BAD_USER_INPUT".into());
            }
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// GraphQL over WebSocket (graphql-transport-ws, and the legacy graphql-ws);
/// the session rules are in `ws`.
pub async fn ws(State(state): State<HttpState>, headers: HeaderMap, upgrade: WebSocketUpgrade) -> Response {
    let Some(protocol) = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| list.split(',').find_map(|p| p.trim().parse::<WebSocketProtocols>().ok()))
    else {
        return (StatusCode::BAD_REQUEST, "Sec-WebSocket-Protocol: graphql-transport-ws (or graphql-ws)")
            .into_response();
    };
    let header_token = super::extract::bearer(&headers).map(str::to_owned);
    let request_id = request_id(&headers);
    let (schema, app) = (state.schema.clone(), state.app.clone());
    upgrade
        .max_message_size(ws::TRANSPORT_MAX_BYTES)
        .max_frame_size(ws::TRANSPORT_MAX_BYTES)
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| ws::serve(socket, schema, app, protocol, header_token, request_id))
}
