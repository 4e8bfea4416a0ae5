//! EnOS edge compatibility (the EnOS edge OTA protocol), for
//! constrained devices that speak it: `POST /checkversion`, `GET
//! /version/{id}`, `POST /downloadresult/{id}`, `POST /updateresult`, with
//! the seed's JSON bodies. The device secret authenticates; an `assetId`
//! other than the caller's own endpoint id is a sub-device the caller must
//! be the gateway of (EnOS Edge acts for its sub-devices). Errors use the
//! seed's shape, `{"httpstatus": 404, "message": "…"}`
//! (`Error::into_enos_response`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{HttpState, extract};
use crate::error::{Error, ResourceKind};
use crate::service::device_api::enos;

fn body_object(body: &Bytes) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::invalid("body", "must be a JSON object")),
        Err(e) => Err(Error::invalid("body", format!("not JSON: {e}"))),
    }
}

fn text(body: &Map<String, Value>, field: &str) -> Option<String> {
    match body.get(field) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn number(body: &Map<String, Value>, field: &str) -> Result<i64, Error> {
    match body.get(field) {
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| Error::invalid(field, "an integer")),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| Error::invalid(field, "an integer")),
        _ => Err(Error::invalid(field, "is required (an integer)")),
    }
}

/// `POST /checkversion` `{"assetId", "version", "serialNum"}`.
pub async fn check_version(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let body = body_object(&body)?;
        let asset_id = text(&body, "assetId").unwrap_or_default();
        let ctx = extract::enos_asset(&state, &headers, Some(&asset_id)).await?;
        let reported = text(&body, "version").unwrap_or_default();
        let check = enos::check_version(&state.app, &ctx, &reported).await?;
        let asset_id = check.asset_id;
        Ok::<_, Error>(match check.update {
            None => json!({
                "assetId": asset_id, "version": reported, "code": 0, "desc": "no update",
                "signMethod": "", "sign": "", "downloadurl": "",
            }),
            Some(check) => json!({
                "assetId": asset_id, "version": check.version, "code": 1, "desc": "has update",
                "signMethod": if check.md5.is_empty() { "" } else { "MD5" }, "sign": check.md5,
                "downloadurl": format!("/version/{}", check.update_id),
            }),
        })
    }
    .await;
    match result {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => err.into_enos_response(),
    }
}

/// `GET /version/{id}`: the firmware file (Range works).
pub async fn version(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let ctx = extract::device(&state, &headers).await?;
        let id = id.parse().map_err(|_| Error::not_found(ResourceKind::Update, &id))?;
        let download = crate::service::device_api::update_file(&state.app, &ctx, id).await?;
        let private = axum::http::HeaderValue::from_static("private");
        super::repository::serve(&state, &method, &headers, &download, private).await
    }
    .await;
    result.unwrap_or_else(Error::into_enos_response)
}

/// `POST /downloadresult/{id}` `{"assetId", "code": 0|1, "message"}`: 204.
pub async fn download_result(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let body = body_object(&body)?;
        let ctx = extract::enos_asset(&state, &headers, text(&body, "assetId").as_deref()).await?;
        let id = id.parse().map_err(|_| Error::not_found(ResourceKind::Update, &id))?;
        enos::download_result(&state.app, &ctx, id, number(&body, "code")?, text(&body, "message")).await
    }
    .await;
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => err.into_enos_response(),
    }
}

/// `POST /updateresult` `{"assetId", "version", "desc", "flag", "process",
/// "errcode"}`: 204.
pub async fn update_result(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let body = body_object(&body)?;
        let ctx = extract::enos_asset(&state, &headers, text(&body, "assetId").as_deref()).await?;
        let result = enos::UpdateResult {
            flag: number(&body, "flag")?,
            process: number(&body, "process")?,
            version: text(&body, "version").unwrap_or_default(),
            errcode: text(&body, "errcode"),
            desc: text(&body, "desc"),
        };
        enos::update_result(&state.app, &ctx, result).await
    }
    .await;
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => err.into_enos_response(),
    }
}
