//! tus 1.0 resumable uploads (core, creation, termination) under
//! `/uploads/tus/`. A client creates the upload at
//! `/uploads/tus/?content_id=<id>&exp=…&sig=…` (the `exp` and `sig` of the
//! content's upload URL) and gets the resource's URL in `Location`.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;

use super::uploads::Signature;
use super::{HttpState, request_id};
use crate::auth::{Actor, Ctx};
use crate::error::{Error, Result};
use crate::service::content::UploadGrant;
use crate::service::tus;

pub const VERSION: &str = "1.0.0";

#[derive(Deserialize)]
pub struct CreateQuery {
    content_id: String,
    exp: i64,
    sig: String,
}

/// Every tus answer says which protocol version it speaks.
pub async fn tus_resumable(mut response: Response) -> Response {
    response.headers_mut().insert("tus-resumable", HeaderValue::from_static(VERSION));
    response
}

/// 412 unless the client speaks tus 1.0.0.
fn check_version(headers: &HeaderMap) -> Option<Response> {
    if headers.get("tus-resumable").and_then(|v| v.to_str().ok()) == Some(VERSION) {
        return None;
    }
    Some((StatusCode::PRECONDITION_FAILED, [("tus-version", VERSION)]).into_response())
}

fn number(headers: &HeaderMap, name: &str) -> Result<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::invalid(name, "a non-negative integer header is required"))
}

pub async fn options(State(state): State<HttpState>) -> Response {
    let max = state.app.config.http.max_upload_bytes.to_string();
    (
        StatusCode::NO_CONTENT,
        [
            ("tus-version", VERSION.to_owned()),
            ("tus-extension", "creation,termination".to_owned()),
            ("tus-max-size", max),
        ],
    )
        .into_response()
}

pub async fn create(
    State(state): State<HttpState>,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    if let Some(refused) = check_version(&headers) {
        return Ok(refused);
    }
    if headers.contains_key("upload-defer-length") {
        return Err(Error::invalid("Upload-Defer-Length", "not supported: the length is known from createContent"));
    }
    let length = number(&headers, "upload-length")?;
    let grant = UploadGrant::parse(&query.content_id, query.exp, query.sig.clone())?;
    let upload = tus::create(&state.app, &grant, length).await?;
    let location =
        format!("{}/uploads/tus/{}?exp={}&sig={}", state.app.public_url(), upload.content_id, query.exp, query.sig);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

pub async fn head(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(signature): Query<Signature>,
    headers: HeaderMap,
) -> Result<Response> {
    if let Some(refused) = check_version(&headers) {
        return Ok(refused);
    }
    let upload = tus::offset(&state.app, &UploadGrant::parse(&id, signature.exp, signature.sig)?).await?;
    Ok((
        StatusCode::OK,
        [
            ("upload-offset", upload.offset.to_string()),
            ("upload-length", upload.length.to_string()),
            ("cache-control", "no-store".to_owned()),
        ],
    )
        .into_response())
}

pub async fn patch(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(signature): Query<Signature>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    if let Some(refused) = check_version(&headers) {
        return Ok(refused);
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if content_type != "application/offset+octet-stream" {
        let err = Error::invalid("Content-Type", "PATCH takes application/offset+octet-stream");
        return Ok((StatusCode::UNSUPPORTED_MEDIA_TYPE, err).into_response());
    }
    let offset = number(&headers, "upload-offset")?;
    let ctx = Ctx::new(Actor::System("signed-upload-url".into()), request_id(&headers));
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let upload =
        tus::append(&state.app, &ctx, &UploadGrant::parse(&id, signature.exp, signature.sig)?, offset, stream).await?;
    Ok((StatusCode::NO_CONTENT, [("upload-offset", upload.offset.to_string())]).into_response())
}

pub async fn delete(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(signature): Query<Signature>,
    headers: HeaderMap,
) -> Result<Response> {
    if let Some(refused) = check_version(&headers) {
        return Ok(refused);
    }
    tus::terminate(&state.app, &UploadGrant::parse(&id, signature.exp, signature.sig)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
