//! Upload URLs handed out by `createContent`: multipart POST (the form
//! `ContentUpload` describes) or a raw PUT of the bytes.
//!
//! The signed URL is the authorization; it is checked before a byte of the
//! body is read (for the form, before its first field), and the form's
//! fields other than the file are few and small, so a caller without a
//! valid URL cannot make the server read a body.

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{HttpState, request_id};
use crate::auth::Ctx;
use crate::error::{Error, Result};
use crate::service::content::{self, Content, UPLOAD_FIELD, UploadGrant};

/// Largest non-file field of an upload form.
const MAX_FORM_FIELD: usize = 64 * 1024;
/// Most non-file fields before the file (`inputs` has one).
const MAX_FORM_FIELDS: usize = 16;

/// `?exp=…&sig=…` of an upload URL.
#[derive(Deserialize)]
pub struct Signature {
    pub exp: i64,
    pub sig: String,
}

fn ctx(headers: &HeaderMap) -> Ctx {
    Ctx::new(crate::auth::Actor::System("signed-upload-url".into()), request_id(headers))
}

fn created(content: &Content) -> Response {
    let model = &content.model;
    (
        StatusCode::CREATED,
        Json(json!({
            "id": model.id, "state": content.state.as_str(), "length": model.length,
            "sha256": model.sha256, "md5": model.md5, "sha1": model.sha1,
        })),
    )
        .into_response()
}

pub async fn put(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(signature): Query<Signature>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let grant = UploadGrant::parse(&id, signature.exp, signature.sig)?;
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let content = content::upload(&state.app, &ctx(&headers), &grant, length, stream).await?;
    Ok(created(&content))
}

pub async fn post(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(signature): Query<Signature>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Response> {
    let grant = UploadGrant::parse(&id, signature.exp, signature.sig)?;
    content::check_upload_grant(&state.app, &grant).await?;
    let bad = |e: axum::extract::multipart::MultipartError| {
        Error::invalid("body", format!("not a valid multipart form: {e}"))
    };
    let mut fields = 0;
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == UPLOAD_FIELD {
            let stream = field.map_err(std::io::Error::other);
            let content = content::upload(&state.app, &ctx(&headers), &grant, None, stream).await?;
            return Ok(created(&content));
        }
        // Every other field is one of `inputs`: few, small, and checked when known.
        fields += 1;
        if fields > MAX_FORM_FIELDS {
            return Err(Error::invalid(
                "body",
                format!("at most {MAX_FORM_FIELDS} form fields come before the {UPLOAD_FIELD:?} field"),
            ));
        }
        let mut value = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            value.extend_from_slice(&chunk);
            if value.len() > MAX_FORM_FIELD {
                return Err(Error::invalid(
                    name,
                    format!("form fields other than {UPLOAD_FIELD:?} are at most {MAX_FORM_FIELD} bytes"),
                ));
            }
        }
        if name == "content_id" && value != grant.content_id.to_string().as_bytes() {
            return Err(Error::invalid("content_id", "does not match the upload URL"));
        }
    }
    Err(Error::invalid(UPLOAD_FIELD, format!("the form has no {UPLOAD_FIELD:?} field")))
}
