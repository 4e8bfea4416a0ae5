//! The device API under `/device/v1` (DESIGN.md §6), authenticated by the
//! device's own secret as `Authorization: Bearer <secret>`. Operator tokens
//! are refused here, as device secrets are on operator endpoints.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value, json};

use super::{HttpState, request_id};
use crate::auth::Ctx;
use crate::error::{Error, Result};
use crate::service::device::{self, Device, Inventory};

/// Header with which a gateway names the sub-device it acts for.
pub const ACT_FOR: &str = "x-device-id";

/// The calling device, from its bearer secret; a gateway acting for a
/// sub-device names it in `X-Device-Id`.
pub async fn device_ctx(state: &HttpState, headers: &HeaderMap) -> Result<Ctx> {
    let ctx = own_ctx(state, headers).await?;
    match headers.get(ACT_FOR) {
        None => Ok(ctx),
        Some(value) => {
            let endpoint_id = value.to_str().map_err(|_| Error::invalid(ACT_FOR, "not text"))?;
            device::act_for(&state.app, &ctx, endpoint_id.trim()).await
        }
    }
}

async fn own_ctx(state: &HttpState, headers: &HeaderMap) -> Result<Ctx> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| Error::Unauthenticated("a device credential is required".into()))?;
    if !device::is_device_secret(token) {
        return Err(Error::Unauthenticated("a device credential is required (not an operator token)".into()));
    }
    device::authenticate(&state.app, token, request_id(headers)).await
}

/// What the device API shows a device of itself.
fn view(device: &Device) -> Value {
    json!({
        "id": device.row.id,
        "endpointId": device.row.endpoint_id,
        "model": device.model.name,
        "status": device.status.as_str(),
        "installed": device.installed.iter().map(|(c, i)| (c.clone(), Value::String(i.version.clone()))).collect::<Map<_, _>>(),
        "attributes": device.attributes,
    })
}

/// `GET /device/v1/device`: who the credential belongs to.
pub async fn me(State(state): State<HttpState>, headers: HeaderMap) -> Result<Json<Value>> {
    let ctx = device_ctx(&state, &headers).await?;
    let device = device::me(&state.app, &ctx).await?;
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
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| crate::service::enrollment::is_enrollment_token(t))
        .ok_or_else(|| Error::Unauthenticated("an enrollment token is required".into()))?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| Error::invalid("body", format!("not JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(Error::invalid(
            "body",
            "must be a JSON object {\"endpointId\", \"serial\", \"model\", \"attributes\"}",
        ));
    };
    let text = |field: &str| -> Result<Option<String>> {
        match body.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Error::invalid(field, "must be a string")),
        }
    };
    let input = device::NewDevice {
        endpoint_id: text("endpointId")?.ok_or_else(|| Error::invalid("endpointId", "is required"))?,
        serial: text("serial")?,
        model: text("model")?.unwrap_or_default(),
        attributes: entries(&body, "attributes")?.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect(),
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
    let ctx = device_ctx(&state, &headers).await?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| Error::invalid("body", format!("not JSON: {e}")))?;
    let Value::Object(body) = body else {
        return Err(Error::invalid("body", "must be a JSON object {\"installed\", \"attributes\"}"));
    };
    if let Some(unknown) = body.keys().find(|k| !matches!(k.as_str(), "installed" | "attributes")) {
        return Err(Error::invalid(unknown.as_str(), "unknown field (installed, attributes)"));
    }
    let report = Inventory { installed: entries(&body, "installed")?, attributes: entries(&body, "attributes")? };
    let device = device::report_inventory(&state.app, &ctx, report).await?;
    Ok(Json(view(&device)))
}
