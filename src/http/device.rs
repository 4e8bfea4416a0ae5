//! The device API under `/device/v1` (DESIGN.md §6), authenticated by the
//! device's own secret as `Authorization: Bearer <secret>`. Operator tokens
//! are refused here, as device secrets are on operator endpoints.
//!
//! A thin adapter: a request body is a `Deserialize` struct, each handler
//! makes one `service::device_api` call, and each answer is a `Serialize`
//! struct. Rule: an answer's fields are declared in alphabetical order,
//! the order devices have always been sent them in (`serde_json` without
//! `preserve_order` writes `json!` objects sorted);
//! `tests/it/device_api.rs` pins the bytes.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, Error as _, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{HttpState, extract, request_id};
use crate::error::{Error, ResourceKind, Result};
use crate::service::device::{Device, Inventory, NewDevice};
use crate::service::device_api::{self, CommandOffer, CommandStatus, ReportStatus, StatusReport, UpdateOffer};

// ---------------------------------------------------------------------------
// Reading bodies.

/// The body as `T`. Not JSON, or not an object, is BAD_USER_INPUT on
/// `body` (`shape` names the fields); a field of the wrong kind is
/// BAD_USER_INPUT on that field.
fn parse<T: DeserializeOwned>(body: &Bytes, shape: &str) -> Result<T> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Error::invalid("body", format!("not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::invalid("body", format!("must be a JSON object {shape}")));
    }
    // From a `Value`, serde_json's messages carry no position: the message
    // is the helper's own ("must be a string").
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().iter().next().map_or_else(|| "body".to_owned(), ToString::to_string);
        Error::invalid(field, e.into_inner().to_string())
    })
}

/// BAD_USER_INPUT on the first of `rest` (fields the body may not have).
fn no_unknown(rest: &BTreeMap<String, IgnoredAny>, known: &str) -> Result<()> {
    match rest.keys().next() {
        Some(unknown) => Err(Error::invalid(unknown.as_str(), format!("unknown field ({known})"))),
        None => Ok(()),
    }
}

/// An optional text field (a number is taken as its text).
fn text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(D::Error::custom("must be a string")),
    }
}

/// A JSON object of name → string, number, boolean or null (null removes).
fn entries<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<(String, Option<String>)>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::Null => None,
                    Value::String(s) => Some(s),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => return Err(D::Error::custom(format!("{name}: a string, number, boolean or null"))),
                };
                Ok((name, value))
            })
            .collect(),
        Some(_) => Err(D::Error::custom("must be an object of name to value")),
    }
}

/// An optional percentage.
fn progress<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<i32>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(Value::Number(n)) => {
            n.as_i64().and_then(|n| i32::try_from(n).ok()).map(Some).ok_or_else(|| D::Error::custom("an integer"))
        }
        Some(_) => Err(D::Error::custom("an integer from 0 to 100")),
    }
}

/// Any JSON value, `null` included, when the field is there at all.
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------
// The device.

/// What the device API shows a device of itself.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceView<'a> {
    /// The ones it reported (what its inventory posts).
    attributes: &'a BTreeMap<String, String>,
    endpoint_id: &'a str,
    id: Uuid,
    /// Component → version.
    installed: BTreeMap<&'a str, &'a str>,
    model: &'a str,
    /// The ones operators set, which it cannot change.
    operator_attributes: &'a BTreeMap<String, String>,
    /// In the answer to its enrollment only, that once.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
    status: &'static str,
}

impl<'a> DeviceView<'a> {
    fn new(device: &'a Device) -> Self {
        Self {
            attributes: &device.reported_attributes,
            endpoint_id: &device.row.endpoint_id,
            id: device.row.id,
            installed: device.installed.iter().map(|(c, i)| (c.as_str(), i.version.as_str())).collect(),
            model: &device.model.name,
            operator_attributes: &device.attributes,
            secret: None,
            status: device.status.as_str(),
        }
    }
}

/// `GET /device/v1/device`: who the credential belongs to.
pub async fn me(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response> {
    let ctx = extract::device(&state, &headers).await?;
    let device = device_api::device(&state.app, &ctx).await?;
    Ok(Json(DeviceView::new(&device)).into_response())
}

/// The body of `/device/v1/enroll`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnrollRequest {
    #[serde(default, deserialize_with = "text")]
    endpoint_id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    serial: Option<String>,
    #[serde(default, deserialize_with = "text")]
    model: Option<String>,
    #[serde(default, deserialize_with = "entries")]
    attributes: Vec<(String, Option<String>)>,
}

/// `POST /device/v1/enroll` with `Authorization: Bearer <enrollment token>`
/// and `{"endpointId", "serial", "model", "attributes": {…}}`: the device
/// registers itself, PENDING until an operator approves it; 201 with its
/// secret, this once.
pub async fn enroll(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let token = extract::enrollment_token(&headers)?;
    let body: EnrollRequest = parse(&body, "{\"endpointId\", \"serial\", \"model\", \"attributes\"}")?;
    let input = NewDevice {
        endpoint_id: body.endpoint_id.ok_or_else(|| Error::invalid("endpointId", "is required"))?,
        serial: body.serial,
        model: body.model.unwrap_or_default(),
        // The service keeps these as reported attributes.
        attributes: body.attributes.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect(),
        reported_attributes: Vec::new(),
        gateway: None,
    };
    let registered = device_api::enroll(&state.app, token, input, request_id(&headers)).await?;
    let view = DeviceView { secret: Some(&registered.secret), ..DeviceView::new(&registered.device) };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// The body of `/device/v1/inventory`.
#[derive(Deserialize)]
struct InventoryRequest {
    #[serde(default, deserialize_with = "entries")]
    installed: Vec<(String, Option<String>)>,
    #[serde(default, deserialize_with = "entries")]
    attributes: Vec<(String, Option<String>)>,
    #[serde(flatten)]
    rest: BTreeMap<String, IgnoredAny>,
}

/// `POST /device/v1/inventory` `{"installed": {"firmware": "1.2.0", "agent":
/// "0.4"}, "attributes": {"region": "eu"}}`: what the device runs and is.
pub async fn inventory(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let ctx = extract::device(&state, &headers).await?;
    let body: InventoryRequest = parse(&body, "{\"installed\", \"attributes\"}")?;
    no_unknown(&body.rest, "installed, attributes")?;
    let report = Inventory { installed: body.installed, attributes: body.attributes };
    let device = device_api::inventory(&state.app, &ctx, report).await?;
    Ok(Json(DeviceView::new(&device)).into_response())
}

// ---------------------------------------------------------------------------
// The poll.

#[derive(Deserialize)]
pub struct PollQuery {
    /// Long poll: wait up to this many seconds (at most
    /// `deployments.max_poll_wait`) for something to happen.
    wait: Option<u64>,
}

/// A 200 answer of `/device/v1/poll`.
#[derive(Serialize)]
struct PollAnswer<'a> {
    commands: Vec<CommandView<'a>>,
    update: Option<UpdateView<'a>>,
}

/// A command as `/device/v1/poll` shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CommandView<'a> {
    args: &'a Value,
    expires_at: DateTime<Utc>,
    id: Uuid,
    name: &'a str,
}

impl<'a> From<&'a CommandOffer> for CommandView<'a> {
    fn from(c: &'a CommandOffer) -> Self {
        Self { args: &c.args, expires_at: c.expires_at, id: c.id, name: &c.name }
    }
}

/// An update offer as `/device/v1/poll` shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateView<'a> {
    action: &'static str,
    deployment_id: Uuid,
    id: Uuid,
    /// Only when the deployment has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    maintenance_window: Option<WindowView>,
    manifest: &'a Value,
    state: &'static str,
}

/// A maintenance window as the poll tells it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WindowView {
    /// While open.
    #[serde(skip_serializing_if = "Option::is_none")]
    closes_at: Option<DateTime<Utc>>,
    open: bool,
    /// While closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    opens_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a UpdateOffer> for UpdateView<'a> {
    fn from(o: &'a UpdateOffer) -> Self {
        Self {
            action: o.action.as_str(),
            deployment_id: o.deployment_id,
            id: o.id,
            maintenance_window: o.maintenance_window.map(|w| WindowView {
                closes_at: w.closes_at,
                open: w.open,
                opens_at: w.opens_at,
            }),
            manifest: &o.manifest,
            state: o.state.as_str(),
        }
    }
}

/// `GET /device/v1/poll[?wait=N]`: 200 with the pending update, 204 when
/// nothing is pending, 304 when `If-None-Match` names what is current.
pub async fn poll(
    State(state): State<HttpState>,
    Query(query): Query<PollQuery>,
    headers: HeaderMap,
) -> Result<Response> {
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
        let body = PollAnswer {
            commands: answer.commands.iter().map(CommandView::from).collect(),
            update: answer.update.as_ref().map(UpdateView::from),
        };
        (etag, Json(body)).into_response()
    } else if answer.not_modified(if_none_match) {
        (StatusCode::NOT_MODIFIED, etag, axum::Extension(super::Routine)).into_response()
    } else {
        (StatusCode::NO_CONTENT, etag, axum::Extension(super::Routine)).into_response()
    })
}

// ---------------------------------------------------------------------------
// Reports.

/// The body of `/device/v1/updates/{id}/status`.
#[derive(Deserialize)]
struct StatusRequest {
    #[serde(default, deserialize_with = "text")]
    status: Option<String>,
    #[serde(default, deserialize_with = "progress")]
    progress: Option<i32>,
    #[serde(default, deserialize_with = "text")]
    version: Option<String>,
    #[serde(default, deserialize_with = "text")]
    errcode: Option<String>,
    #[serde(default, deserialize_with = "text")]
    message: Option<String>,
}

/// The update after a status report.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateAnswer<'a> {
    deployment_id: Uuid,
    errcode: Option<&'a str>,
    id: Uuid,
    message: Option<&'a str>,
    progress: i32,
    state: &'a str,
}

/// `POST /device/v1/updates/{id}/status` `{"status": "DOWNLOADING",
/// "progress": 40}`; `INSTALLED_VERSION` carries `version`, `FAILED`
/// `errcode` and `message`.
pub async fn update_status(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let ctx = extract::device(&state, &headers).await?;
    let id = id.parse().map_err(|_| Error::not_found(ResourceKind::Update, &id))?;
    let body: StatusRequest = parse(&body, "{\"status\", \"progress\", \"version\", \"errcode\", \"message\"}")?;
    let status = body.status.ok_or_else(|| Error::invalid("status", "is required"))?;
    let report = StatusReport {
        progress: body.progress,
        version: body.version,
        errcode: body.errcode,
        message: body.message,
        ..StatusReport::new(ReportStatus::parse(&status)?)
    };
    let update = device_api::report(&state.app, &ctx, id, report).await?;
    Ok(Json(UpdateAnswer {
        deployment_id: update.deployment_id,
        errcode: update.error_code.as_deref(),
        id: update.id,
        message: update.message.as_deref(),
        progress: update.progress,
        state: &update.state,
    })
    .into_response())
}

/// The body of `/device/v1/commands/{id}`.
#[derive(Deserialize)]
struct CommandRequest {
    #[serde(default, deserialize_with = "text")]
    status: Option<String>,
    /// Kept as sent, `null` included.
    #[serde(default, deserialize_with = "present")]
    result: Option<Value>,
    #[serde(default, deserialize_with = "text")]
    message: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, IgnoredAny>,
}

/// The command after its result.
#[derive(Serialize)]
struct CommandAnswer<'a> {
    id: Uuid,
    message: Option<&'a str>,
    name: &'a str,
    state: &'a str,
}

/// `POST /device/v1/commands/{id}` `{"status": "ACKNOWLEDGED" | "SUCCEEDED" |
/// "FAILED", "result": <JSON>, "message": "..."}`: how a command went.
pub async fn command_status(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let ctx = extract::device(&state, &headers).await?;
    let id = id.parse().map_err(|_| Error::not_found(ResourceKind::Command, &id))?;
    let body: CommandRequest = parse(&body, "{\"status\", \"result\", \"message\"}")?;
    no_unknown(&body.rest, "status, result, message")?;
    let status = body.status.ok_or_else(|| Error::invalid("status", "is required"))?;
    let status = CommandStatus::parse(&status)?;
    let command = device_api::command_result(&state.app, &ctx, id, status, body.result, body.message).await?;
    Ok(Json(CommandAnswer {
        id: command.id,
        message: command.message.as_deref(),
        name: &command.name,
        state: &command.state,
    })
    .into_response())
}
