//! The device API under `/device/v1` (DESIGN.md §6), authenticated by the
//! device's own secret as `Authorization: Bearer <secret>`. Operator tokens
//! are refused here, as device secrets are on operator endpoints.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use super::{HttpState, extract, request_id};
use crate::error::{Error, ResourceKind, Result};
use crate::service::device::{Device, Inventory};
use crate::service::device_api::{self, CommandStatus, ReportStatus, StatusReport, UpdateOffer};

/// The body as a JSON object; `shape` names its fields for the error.
fn json_object(body: &Bytes, shape: &str) -> Result<Map<String, Value>> {
    let body: Value = serde_json::from_slice(body).map_err(|e| Error::invalid("body", format!("not JSON: {e}")))?;
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(Error::invalid("body", format!("must be a JSON object {shape}"))),
    }
}

/// An optional text field (a number is taken as its text).
fn text(body: &Map<String, Value>, field: &str) -> Result<Option<String>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Error::invalid(field, "must be a string")),
    }
}

/// What the device API shows a device of itself: `attributes` are the ones
/// it reported (what its inventory posts), `operatorAttributes` the ones
/// operators set, which it cannot change.
fn view(device: &Device) -> Value {
    json!({
        "id": device.row.id,
        "endpointId": device.row.endpoint_id,
        "model": device.model.name,
        "status": device.status.as_str(),
        "installed": device.installed.iter().map(|(c, i)| (c.clone(), Value::String(i.version.clone()))).collect::<Map<_, _>>(),
        "attributes": device.reported_attributes,
        "operatorAttributes": device.attributes,
    })
}

/// `GET /device/v1/device`: who the credential belongs to.
pub async fn me(State(state): State<HttpState>, headers: HeaderMap) -> Result<Json<Value>> {
    let ctx = extract::device(&state, &headers).await?;
    let device = device_api::device(&state.app, &ctx).await?;
    Ok(Json(view(&device)))
}

/// A JSON object of name → string, number, boolean or null (null removes).
fn entries(body: &Map<String, Value>, field: &str) -> Result<Vec<(String, Option<String>)>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => return Err(Error::invalid(field, format!("{name}: a string, number, boolean or null"))),
                };
                Ok((name.clone(), value))
            })
            .collect(),
        Some(_) => Err(Error::invalid(field, "must be an object of name to value")),
    }
}

/// `POST /device/v1/enroll` with `Authorization: Bearer <enrollment token>`
/// and `{"endpointId", "serial", "model", "attributes": {…}}`: the device
/// registers itself, PENDING until an operator approves it; 201 with its
/// secret, this once.
pub async fn enroll(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let token = extract::enrollment_token(&headers)?;
    let body = json_object(&body, "{\"endpointId\", \"serial\", \"model\", \"attributes\"}")?;
    let text = |field: &str| text(&body, field);
    let input = crate::service::device::NewDevice {
        endpoint_id: text("endpointId")?.ok_or_else(|| Error::invalid("endpointId", "is required"))?,
        serial: text("serial")?,
        model: text("model")?.unwrap_or_default(),
        // The service keeps these as reported attributes.
        attributes: entries(&body, "attributes")?.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect(),
        reported_attributes: Vec::new(),
        gateway: None,
    };
    let registered = crate::service::enrollment::enroll(&state.app, token, input, request_id(&headers)).await?;
    let mut view = view(&registered.device);
    view["secret"] = Value::String(registered.secret);
    Ok((StatusCode::CREATED, Json(view)))
}

/// `POST /device/v1/inventory` `{"installed": {"firmware": "1.2.0", "agent":
/// "0.4"}, "attributes": {"region": "eu"}}`: what the device runs and is.
pub async fn inventory(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>> {
    let ctx = extract::device(&state, &headers).await?;
    let body = json_object(&body, "{\"installed\", \"attributes\"}")?;
    if let Some(unknown) = body.keys().find(|k| !matches!(k.as_str(), "installed" | "attributes")) {
        return Err(Error::invalid(unknown.as_str(), "unknown field (installed, attributes)"));
    }
    let report = Inventory { installed: entries(&body, "installed")?, attributes: entries(&body, "attributes")? };
    let device = device_api::inventory(&state.app, &ctx, report).await?;
    Ok(Json(view(&device)))
}

#[derive(serde::Deserialize)]
pub struct PollQuery {
    /// Long poll: wait up to this many seconds (at most
    /// `deployments.max_poll_wait`) for something to happen.
    wait: Option<u64>,
}

/// `GET /device/v1/poll[?wait=N]`: 200 with the pending update, 204 when
/// nothing is pending, 304 when `If-None-Match` names what is current.
pub async fn poll(
    State(state): State<HttpState>,
    axum::extract::Query(query): axum::extract::Query<PollQuery>,
    headers: HeaderMap,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    let ctx = extract::device(&state, &headers).await?;
    let if_none_match = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::trim);
    let wait = query.wait.map(std::time::Duration::from_secs);
    let answer = device_api::poll_wait(&state.app, &ctx, if_none_match, wait).await?;
    let etag = [
        (
            header::ETAG,
            if answer.etag == device_api::IDLE_ETAG {
                HeaderValue::from_static(device_api::IDLE_ETAG)
            } else {
                HeaderValue::from_str(&answer.etag).map_err(|e| Error::internal(anyhow::anyhow!("ETag: {e}")))?
            },
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    Ok(if answer.has_news() {
        let commands: Vec<Value> = answer
            .commands
            .iter()
            .map(|c| json!({ "id": c.id, "name": c.name, "args": c.args, "expiresAt": c.expires_at }))
            .collect();
        (etag, Json(json!({ "update": answer.update.as_ref().map(update_view), "commands": commands }))).into_response()
    } else if answer.not_modified(if_none_match) {
        (StatusCode::NOT_MODIFIED, etag, axum::Extension(super::Routine)).into_response()
    } else {
        (StatusCode::NO_CONTENT, etag, axum::Extension(super::Routine)).into_response()
    })
}

/// An update offer as `/device/v1/poll` shows it.
fn update_view(offer: &UpdateOffer) -> Value {
    json!({
        "id": offer.id,
        "deploymentId": offer.deployment_id,
        "action": offer.action.as_str(),
        "state": offer.state.as_str(),
        "manifest": offer.manifest,
    })
}

/// `POST /device/v1/updates/{id}/status` `{"status": "DOWNLOADING",
/// "progress": 40}`; `INSTALLED_VERSION` carries `version`, `FAILED`
/// `errcode` and `message`.
pub async fn update_status(
    State(state): State<HttpState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>> {
    let ctx = extract::device(&state, &headers).await?;
    let id = id.parse().map_err(|_| Error::not_found(ResourceKind::Update, &id))?;
    let body = json_object(&body, "{\"status\", \"progress\", \"version\", \"errcode\", \"message\"}")?;
    let progress = match body.get("progress") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(|| Error::invalid("progress", "an integer"))?,
        ),
        Some(_) => return Err(Error::invalid("progress", "an integer from 0 to 100")),
    };
    let status = text(&body, "status")?.ok_or_else(|| Error::invalid("status", "is required"))?;
    let report = StatusReport {
        status: ReportStatus::parse(&status)?,
        progress,
        version: text(&body, "version")?,
        errcode: text(&body, "errcode")?,
        message: text(&body, "message")?,
    };
    let update = device_api::report(&state.app, &ctx, id, report).await?;
    Ok(Json(json!({
        "id": update.id, "deploymentId": update.deployment_id, "state": update.state, "progress": update.progress,
        "errcode": update.error_code, "message": update.message,
    })))
}

/// `POST /device/v1/commands/{id}` `{"status": "ACKNOWLEDGED" | "SUCCEEDED" |
/// "FAILED", "result": <JSON>, "message": "..."}`: how a command went.
pub async fn command_status(
    State(state): State<HttpState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>> {
    let ctx = extract::device(&state, &headers).await?;
    let id = id.parse().map_err(|_| Error::not_found(ResourceKind::Command, &id))?;
    let mut body = json_object(&body, "{\"status\", \"result\", \"message\"}")?;
    if let Some(unknown) = body.keys().find(|k| !matches!(k.as_str(), "status" | "result" | "message")) {
        return Err(Error::invalid(unknown.as_str(), "unknown field (status, result, message)"));
    }
    let status = text(&body, "status")?.ok_or_else(|| Error::invalid("status", "is required"))?;
    let status = CommandStatus::parse(&status)?;
    let message = text(&body, "message")?;
    let command = device_api::command_result(&state.app, &ctx, id, status, body.remove("result"), message).await?;
    Ok(Json(json!({
        "id": command.id, "name": command.name, "state": command.state, "message": command.message,
    })))
}
