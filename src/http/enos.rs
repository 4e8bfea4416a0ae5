//! EnOS edge compatibility (the EnOS edge OTA protocol), for
//! constrained devices that speak it: `POST /checkversion`, `GET
//! /version/{id}`, `POST /downloadresult/{id}`, `POST /updateresult`, with
//! the seed's JSON bodies. The device secret authenticates; an `assetId`
//! other than the caller's own endpoint id is a sub-device the caller must
//! be the gateway of (EnOS Edge acts for its sub-devices). Errors use the
//! seed's shape, `{"httpstatus": 404, "message": "…"}`
//! (`Error::into_enos_response`).
//!
//! A thin adapter, like `device.rs`: `Deserialize` bodies, one
//! `service::device_api` call, a `Serialize` answer whose fields are in
//! alphabetical order (the order the seed's answers have always had).
//! Parsing is lenient, as EnOS devices are: a number may come as a string,
//! a text as a number, and reading a body never fails once it is a JSON
//! object; a field that is wrong is refused after the caller is known.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{HttpState, extract};
use crate::error::{Error, ResourceKind};
use crate::service::device_api::{self, enos};

/// The body as `T` (never refused once it is a JSON object).
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    match serde_json::from_slice(body) {
        Ok(value @ Value::Object(_)) => {
            serde_json::from_value(value).map_err(|e| Error::invalid("body", e.to_string()))
        }
        Ok(_) => Err(Error::invalid("body", "must be a JSON object")),
        Err(e) => Err(Error::invalid("body", format!("not JSON: {e}"))),
    }
}

/// A text: a string, or a number as its text; anything else counts as absent.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// An integer field: a number, or a string holding one.
#[derive(Clone, Copy, Debug, Default)]
enum Int {
    /// Absent, null, or neither a number nor a string.
    #[default]
    Missing,
    Given(i64),
    /// A fraction, or a string that is no integer.
    Invalid,
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Number(n) => n.as_i64().map_or(Self::Invalid, Self::Given),
            Value::String(s) => s.trim().parse().map_or(Self::Invalid, Self::Given),
            _ => Self::Missing,
        })
    }
}

impl Int {
    /// The value, or BAD_USER_INPUT on `field`.
    fn get(self, field: &str) -> Result<i64, Error> {
        match self {
            Self::Given(n) => Ok(n),
            Self::Invalid => Err(Error::invalid(field, "an integer")),
            Self::Missing => Err(Error::invalid(field, "is required (an integer)")),
        }
    }
}

/// The body of `/checkversion` (its `serialNum` is not used).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CheckVersionRequest {
    #[serde(default, deserialize_with = "text")]
    asset_id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    version: Option<String>,
}

/// The answer of `/checkversion`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckVersionAnswer<'a> {
    asset_id: &'a str,
    /// 1 with an update, 0 without.
    code: u8,
    desc: &'static str,
    downloadurl: String,
    sign: &'a str,
    sign_method: &'static str,
    version: &'a str,
}

/// `POST /checkversion` `{"assetId", "version", "serialNum"}`.
pub async fn check_version(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let body: CheckVersionRequest = parse(&body)?;
        let asset_id = body.asset_id.unwrap_or_default();
        let ctx = extract::enos_asset(&state, &headers, Some(&asset_id)).await?;
        let reported = body.version.unwrap_or_default();
        let check = enos::check_version(&state.app, &ctx, &reported).await?;
        let asset_id = check.asset_id.as_str();
        let answer = match &check.update {
            None => CheckVersionAnswer {
                asset_id,
                code: 0,
                desc: "no update",
                downloadurl: String::new(),
                sign: "",
                sign_method: "",
                version: &reported,
            },
            Some(update) => CheckVersionAnswer {
                asset_id,
                code: 1,
                desc: "has update",
                downloadurl: format!("/version/{}", update.update_id),
                sign: &update.md5,
                sign_method: if update.md5.is_empty() { "" } else { "MD5" },
                version: &update.version,
            },
        };
        Ok::<_, Error>(Json(answer).into_response())
    }
    .await;
    result.unwrap_or_else(Error::into_enos_response)
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
        let download = device_api::update_file(&state.app, &ctx, id).await?;
        let private = axum::http::HeaderValue::from_static("private");
        super::repository::serve(&state, &method, &headers, &download, private).await
    }
    .await;
    result.unwrap_or_else(Error::into_enos_response)
}

/// The body of `/downloadresult/{id}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DownloadResultRequest {
    #[serde(default, deserialize_with = "text")]
    asset_id: Option<String>,
    /// 1 downloaded; anything else failed.
    #[serde(default)]
    code: Int,
    #[serde(default, deserialize_with = "text")]
    message: Option<String>,
}

/// `POST /downloadresult/{id}` `{"assetId", "code": 0|1, "message"}`: 204.
pub async fn download_result(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let body: DownloadResultRequest = parse(&body)?;
        let ctx = extract::enos_asset(&state, &headers, body.asset_id.as_deref()).await?;
        let id = id.parse().map_err(|_| Error::not_found(ResourceKind::Update, &id))?;
        enos::download_result(&state.app, &ctx, id, body.code.get("code")?, body.message).await
    }
    .await;
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => err.into_enos_response(),
    }
}

/// The body of `/updateresult`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateResultRequest {
    #[serde(default, deserialize_with = "text")]
    asset_id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    version: Option<String>,
    #[serde(default, deserialize_with = "text")]
    desc: Option<String>,
    #[serde(default)]
    flag: Int,
    #[serde(default)]
    process: Int,
    #[serde(default, deserialize_with = "text")]
    errcode: Option<String>,
}

/// `POST /updateresult` `{"assetId", "version", "desc", "flag", "process",
/// "errcode"}`: 204.
pub async fn update_result(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let result = async {
        let body: UpdateResultRequest = parse(&body)?;
        let ctx = extract::enos_asset(&state, &headers, body.asset_id.as_deref()).await?;
        let result = enos::UpdateResult {
            flag: body.flag.get("flag")?,
            process: body.process.get("process")?,
            version: body.version.unwrap_or_default(),
            errcode: body.errcode,
            desc: body.desc,
        };
        enos::update_result(&state.app, &ctx, result).await
    }
    .await;
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => err.into_enos_response(),
    }
}
