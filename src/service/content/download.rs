//! Repository downloads: who may download a content, the signed download
//! URLs, and what a download stream needs (key, length, digests).

use chrono::Utc;
use entity::content;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use super::{Content, ContentState};
use crate::app::App;
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::catalog;

pub(super) const DOWNLOAD_PURPOSE: &str = "content-download";
pub(super) const DOWNLOAD_BY_HASH_PURPOSE: &str = "content-download-sha256";
/// Bounds of `downloadUrl(ttlSeconds)`.
pub const DOWNLOAD_TTL_SECONDS: std::ops::RangeInclusive<i64> = 60..=7 * 24 * 3600;

/// Who asks for repository bytes.
#[derive(Clone, Debug)]
pub enum DownloadAccess {
    /// An operator (needs CONTENT_READ) or a device (the files of packages
    /// for its model; with deployments, of its own updates).
    Caller(Ctx),
    /// A signed, expiring URL; `device` and `update` when it was signed
    /// for one device's update (the file URLs in its manifest).
    Signed { exp: i64, sig: String, device: Option<String>, update: Option<String> },
}

/// A promoted object, ready to stream from the repository store.
#[derive(Clone, Debug)]
pub struct Download {
    pub key: object_store::path::Path,
    pub length: u64,
    pub sha256: String,
    pub md5: Option<String>,
}

/// By content id: PROMOTED content only (anything else is NOT_FOUND, for
/// every caller).
pub async fn open_download(app: &App, access: &DownloadAccess, id: Uuid) -> Result<Download> {
    let device_model = match access {
        DownloadAccess::Caller(ctx) => authorize_download(ctx)?,
        DownloadAccess::Signed { exp, sig, device: None, .. } => {
            app.signer.verify(DOWNLOAD_PURPOSE, &[&id.to_string()], *exp, sig)?;
            None
        }
        DownloadAccess::Signed { exp, sig, device: Some(device), update } => {
            crate::service::device_download::check(app, id, device, update.as_deref(), *exp, sig).await?;
            None
        }
    };
    let model = content::Entity::find_by_id(id)
        .filter(content::Column::State.eq(ContentState::Promoted.as_str()))
        .one(&app.db)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Content, id.to_string()))?;
    if let Some(device_model) = device_model
        && !catalog::files_for_model(&app.db, device_model, &[model.id]).await?
    {
        return Err(Error::not_found(ResourceKind::Content, id.to_string()));
    }
    download_of(&model)
}

/// A file of a device's own update (the EnOS `/version/{id}` route: the
/// update was checked to be the device's).
pub(crate) async fn open_download_for_update(app: &App, access: &DownloadAccess, id: Uuid) -> Result<Download> {
    let DownloadAccess::Caller(ctx) = access else {
        return Err(Error::BadSignature("does not verify"));
    };
    ctx.require_device()?;
    let model = content::Entity::find_by_id(id)
        .filter(content::Column::State.eq(ContentState::Promoted.as_str()))
        .one(&app.db)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Content, id.to_string()))?;
    download_of(&model)
}

/// By SHA-256: the object any PROMOTED content with these bytes shares.
pub async fn open_download_by_hash(app: &App, access: &DownloadAccess, sha256: &str) -> Result<Download> {
    let sha256 = sha256.to_ascii_lowercase();
    let device_model = match access {
        DownloadAccess::Caller(ctx) => authorize_download(ctx)?,
        DownloadAccess::Signed { exp, sig, device: None, .. } => {
            app.signer.verify(DOWNLOAD_BY_HASH_PURPOSE, &[&sha256], *exp, sig)?;
            None
        }
        DownloadAccess::Signed { device: Some(_), .. } => return Err(Error::BadSignature("does not verify")),
    };
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::not_found(ResourceKind::Object, sha256));
    }
    let same = content::Entity::find()
        .filter(content::Column::Sha256.eq(sha256.as_str()))
        .filter(content::Column::State.eq(ContentState::Promoted.as_str()))
        .all(&app.db)
        .await?;
    let Some(model) = same.first() else { return Err(Error::not_found(ResourceKind::Object, sha256)) };
    if let Some(device_model) = device_model
        && !catalog::files_for_model(&app.db, device_model, &same.iter().map(|c| c.id).collect::<Vec<_>>()).await?
    {
        return Err(Error::not_found(ResourceKind::Object, sha256));
    }
    download_of(model)
}

/// An operator needs CONTENT_READ; a device may download the files of the
/// packages for its model (`Some(model)`: checked once the content is known).
pub(super) fn authorize_download(ctx: &Ctx) -> Result<Option<Uuid>> {
    if let crate::auth::Actor::Device(_) = &ctx.actor {
        return Ok(Some(ctx.require_device()?.model_id));
    }
    ctx.require(Permission::ContentRead)?;
    Ok(None)
}

pub(super) fn download_of(model: &content::Model) -> Result<Download> {
    // A package's manifest holder is PROMOTED without any bytes.
    let sha256 = model.sha256.clone().ok_or_else(|| Error::not_found(ResourceKind::Content, model.id.to_string()))?;
    Ok(Download {
        key: crate::storage::repository_key(&sha256),
        length: u64::try_from(model.length).unwrap_or_default(),
        sha256,
        md5: model.md5.clone(),
    })
}

/// A signed, expiring download URL for a promoted content (None otherwise).
pub fn download_url(app: &App, ctx: &Ctx, content: &Content, ttl_seconds: i64) -> Result<Option<String>> {
    ctx.require(Permission::ContentRead)?;
    if !DOWNLOAD_TTL_SECONDS.contains(&ttl_seconds) {
        return Err(Error::invalid(
            "ttlSeconds",
            format!("between {} and {}", DOWNLOAD_TTL_SECONDS.start(), DOWNLOAD_TTL_SECONDS.end()),
        ));
    }
    if content.state != ContentState::Promoted || content.model.sha256.is_none() {
        return Ok(None);
    }
    let id = content.model.id.to_string();
    let exp = Utc::now() + chrono::TimeDelta::seconds(ttl_seconds);
    let sig = app.signer.sign(DOWNLOAD_PURPOSE, &[&id], exp);
    // The name is cosmetic in the path (the id decides), percent-encoded.
    let name =
        url::form_urlencoded::byte_serialize(content.model.name.as_bytes()).collect::<String>().replace('+', "%20");
    Ok(Some(format!("{}/repo/{id}/{name}?exp={}&sig={sig}", app.public_url(), exp.timestamp())))
}
