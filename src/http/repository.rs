//! Repository downloads: `GET`/`HEAD /repo/<content-id>/<name>` and
//! `/repo/sha256/<sha256>`, streamed from the repository store, with
//! single Range requests, ETag / If-None-Match / If-Range, and digests.
//!
//! Only PROMOTED content is served (404 otherwise).
//!
//! Rule: no answer is ever cacheable by a shared cache (a proxy or CDN in
//! front of otadepot would hand it to anyone). An answer to a credential
//! (device secret, operator token) is `Cache-Control: private`; an answer
//! to a signed URL is `private, max-age=<the URL's remaining life>`, so
//! not even the client's own cache keeps it past the URL's expiry.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use object_store::{GetOptions, GetRange};
use serde::Deserialize;

use super::{HttpState, request_id};
use crate::auth::{Actor, Ctx};
use crate::error::{Error, ResourceKind, Result};
use crate::service::content::{self, Download, DownloadAccess};

#[derive(Deserialize)]
pub struct Signature {
    exp: Option<i64>,
    sig: Option<String>,
    /// The device a manifest's URL was signed for.
    device: Option<String>,
    /// The device's update the URL was signed for.
    update: Option<String>,
}

impl Signature {
    /// The signed URL's access, if it carries a signature.
    pub(super) fn into_signed(self) -> Option<DownloadAccess> {
        match (self.exp, self.sig) {
            (Some(exp), Some(sig)) => {
                Some(DownloadAccess::Signed { exp, sig, device: self.device, update: self.update })
            }
            _ => None,
        }
    }
}

/// A signed URL if it carries one, else the operator's token.
async fn access(state: &HttpState, headers: &HeaderMap, signature: Signature) -> Result<DownloadAccess> {
    if let Some(signed) = signature.into_signed() {
        return Ok(signed);
    }
    let token = super::extract::bearer(headers)
        .ok_or_else(|| Error::Unauthenticated("a signed URL or a bearer token is required".into()))?;
    if crate::service::device::is_device_secret(token) {
        return Ok(DownloadAccess::Caller(super::extract::device(state, headers).await?));
    }
    let user = crate::service::role::authenticate_operator(&state.app, token).await?;
    Ok(DownloadAccess::Caller(Ctx::new(Actor::User(user), request_id(headers))))
}

/// What an answer to `access` may be cached as (see the module doc).
pub(super) fn cache_control(access: &DownloadAccess) -> Result<HeaderValue> {
    match access {
        DownloadAccess::Caller(_) => Ok(HeaderValue::from_static("private")),
        DownloadAccess::Signed { exp, .. } => {
            let remaining = (*exp - chrono::Utc::now().timestamp()).max(0);
            header_value(&format!("private, max-age={remaining}"))
        }
    }
}

pub async fn by_id(
    State(state): State<HttpState>,
    Path((id, _name)): Path<(String, String)>,
    Query(signature): Query<Signature>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response> {
    let access = access(&state, &headers, signature).await?;
    let id = id.parse().map_err(|_| Error::not_found(ResourceKind::Content, &id))?;
    let download = content::open_download(&state.app, &access, id).await?;
    serve(&state, &method, &headers, &download, cache_control(&access)?).await
}

pub async fn by_hash(
    State(state): State<HttpState>,
    Path(sha256): Path<String>,
    Query(signature): Query<Signature>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response> {
    let access = access(&state, &headers, signature).await?;
    let download = content::open_download_by_hash(&state.app, &access, &sha256).await?;
    serve(&state, &method, &headers, &download, cache_control(&access)?).await
}

pub(super) async fn serve(
    state: &HttpState,
    method: &Method,
    headers: &HeaderMap,
    download: &Download,
    cache_control: HeaderValue,
) -> Result<Response> {
    let etag = format!("\"{}\"", download.sha256);
    let digest = hex::decode(&download.sha256).map_err(Error::internal)?;
    let mut common = HeaderMap::new();
    common.insert(header::ETAG, header_value(&etag)?);
    common.insert(header::CACHE_CONTROL, cache_control);
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    common.insert(
        "repr-digest",
        header_value(&format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(digest)))?,
    );

    if let Some(value) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
        && value.split(',').map(str::trim).any(|tag| tag == etag || tag == "*" || tag == format!("W/{etag}"))
    {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }

    // A Range counts only when If-Range (if any) names this very object.
    let if_range_ok =
        headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|value| value.trim() == etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if if_range_ok => match http_range_header::parse_range_header(value) {
            Ok(parsed) => match parsed.validate(download.length) {
                Ok(ranges) if ranges.len() == 1 => Some(ranges[0].clone()),
                // Several ranges: answer with the whole object (allowed).
                Ok(_) => None,
                Err(_) => {
                    common.insert(header::CONTENT_RANGE, header_value(&format!("bytes */{}", download.length))?);
                    return Ok((StatusCode::RANGE_NOT_SATISFIABLE, common).into_response());
                }
            },
            // A Range we cannot parse is ignored, as RFC 9110 allows.
            Err(_) => None,
        },
        _ => None,
    };

    let (status, get_range, length) = match &range {
        Some(r) => {
            common.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {}-{}/{}", r.start(), r.end(), download.length))?,
            );
            (StatusCode::PARTIAL_CONTENT, Some(GetRange::Bounded(*r.start()..r.end() + 1)), r.end() - r.start() + 1)
        }
        None => (StatusCode::OK, None, download.length),
    };
    common.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if *method == Method::HEAD {
        return Ok((status, common).into_response());
    }
    let body = if length == 0 {
        Body::empty()
    } else {
        let object = state
            .app
            .stores
            .repository
            .get_opts(&download.key, GetOptions { range: get_range, ..GetOptions::default() })
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    Error::internal(anyhow::anyhow!("promoted object {} is missing from the repository", download.key))
                }
                other => Error::Unavailable(format!("repository store: {other}")),
            })?;
        Body::from_stream(crate::storage::object_stream(object, crate::storage::DOWNLOAD_CHUNK))
    };
    Ok((status, common, body).into_response())
}

fn header_value(value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(Error::internal)
}
