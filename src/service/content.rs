//! Content: objects uploaded into the staging store, scanned, and promoted
//! into the repository that devices download from.
//!
//! Rule: the state machine below is the only way a content changes state
//! (`transition`), and nothing reaches PROMOTED without a CLEAN verdict.
//! The content name is metadata only: object keys come from `storage`.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use entity::{content, content_tag};
use futures::{Stream, StreamExt};
use md5::Md5;
use object_store::{ObjectStoreExt, WriteMultipart};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, Result};
use crate::service::pagination::{Page, PageRequest, cursor};
use crate::service::{WriteTx, package};

/// Job kind that scans a staged content.
pub const SCAN_JOB: &str = "content.scan";

pub(super) const UPLOAD_PURPOSE: &str = "content-upload";
const MAX_TAGS: usize = 200;
const MAX_TAG_VALUE: usize = 64 * 1024;
/// Bytes buffered per multipart part on their way to the store.
const PART_SIZE: usize = 8 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContentState {
    AwaitingUpload,
    Uploading,
    Staged,
    Scanning,
    Clean,
    Promoted,
    Quarantined,
    ScanFailed,
    Deleted,
}

impl ContentState {
    pub const ALL: [ContentState; 9] = [
        Self::AwaitingUpload,
        Self::Uploading,
        Self::Staged,
        Self::Scanning,
        Self::Clean,
        Self::Promoted,
        Self::Quarantined,
        Self::ScanFailed,
        Self::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingUpload => "AWAITING_UPLOAD",
            Self::Uploading => "UPLOADING",
            Self::Staged => "STAGED",
            Self::Scanning => "SCANNING",
            Self::Clean => "CLEAN",
            Self::Promoted => "PROMOTED",
            Self::Quarantined => "QUARANTINED",
            Self::ScanFailed => "SCAN_FAILED",
            Self::Deleted => "DELETED",
        }
    }

    pub fn parse(value: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown content state {value:?} in the database")))
    }

    /// DESIGN.md §4, plus UPLOADING → AWAITING_UPLOAD when an upload is
    /// refused or breaks off (the content can then be uploaded again).
    pub fn can_become(self, to: ContentState) -> bool {
        use ContentState::*;
        matches!(
            (self, to),
            (AwaitingUpload, Uploading)
                | (Uploading, Staged | AwaitingUpload)
                | (Staged, Scanning)
                | (Scanning, Clean | Quarantined | ScanFailed)
                | (ScanFailed, Scanning)
                | (Clean, Promoted)
        ) || (to == Deleted && !matches!(self, Promoted | Deleted))
    }
}

impl fmt::Display for ContentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A content with its tags.
#[derive(Clone, Debug)]
pub struct Content {
    pub model: content::Model,
    pub state: ContentState,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct NewContent {
    pub name: String,
    pub content_type: String,
    pub kind: String,
    pub length: i64,
    pub tags: Vec<(String, String)>,
    pub product_id: Option<String>,
    pub sha256: Option<String>,
}

/// Where and how to send the bytes (ExoSense's `ContentUpload`).
#[derive(Clone, Debug)]
pub struct UploadForm {
    pub id: Uuid,
    pub url: String,
    pub inputs: serde_json::Value,
    pub method: &'static str,
    pub field: &'static str,
    pub enctype: &'static str,
    pub expires_at: DateTime<Utc>,
}

/// The multipart field that carries the file.
pub const UPLOAD_FIELD: &str = "file";

/// Create a content awaiting its bytes. With an `otau_info` tag (the
/// ExoSense way to create a software package) it also creates the package,
/// in the same transaction, and needs PACKAGE_WRITE too; a holder of length
/// 0 is PROMOTED at once, a longer one awaits its upload like any content.
pub async fn create(app: &App, ctx: &Ctx, input: NewContent) -> Result<(Content, UploadForm)> {
    ctx.require(Permission::ContentWrite)?;
    let mut input = validate(app, input)?;
    let is_package = input.tags.iter().any(|(name, _)| name == package::OTAU_INFO_TAG);
    if is_package {
        ctx.require(Permission::PackageWrite)?;
    } else if let Some((name, _)) = input.tags.iter().find(|(name, _)| package::RESERVED_TAGS.contains(&name.as_str()))
    {
        return Err(Error::invalid(
            "tags.name",
            format!("{name:?} belongs to a package's otau_info; give otau_info too"),
        ));
    }
    let (_, created_by) = ctx.actor.audit_identity();
    let now = Utc::now();
    let id = Uuid::now_v7();
    let state = if is_package && input.length == 0 { ContentState::Promoted } else { ContentState::AwaitingUpload };

    let mut tx = WriteTx::begin(app).await?;
    if is_package {
        package::bind_exosense_files(tx.conn(), input.product_id.as_deref(), &mut input.tags).await?;
    }
    let model = insert_row(&mut tx, id, &input, state, created_by, now).await?;
    tx.audit(
        ctx,
        "content.create",
        "content",
        &id.to_string(),
        json!({
            "name": input.name, "type": input.kind, "length": input.length,
            "product_id": input.product_id, "tags": input.tags.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        }),
    )
    .await?;
    let tags: BTreeMap<String, String> = input.tags.into_iter().collect();
    if is_package {
        package::index(&mut tx, ctx, &model, &tags).await?;
    }
    tx.commit().await?;

    let form = upload_form(app, &model);
    Ok((Content { state, tags, model }, form))
}

/// Insert the empty, PROMOTED content whose tags hold a package's manifest
/// (`createSoftwarePackage`); the caller indexes the package.
pub(crate) async fn insert_manifest_holder(
    tx: &mut WriteTx,
    ctx: &Ctx,
    name: &str,
    tags: &[(String, String)],
) -> Result<content::Model> {
    let (_, created_by) = ctx.actor.audit_identity();
    let id = Uuid::now_v7();
    let input = NewContent {
        name: name.to_owned(),
        content_type: "application/json".to_owned(),
        kind: "manifest".to_owned(),
        length: 0,
        tags: tags.to_vec(),
        product_id: None,
        sha256: None,
    };
    let model = insert_row(tx, id, &input, ContentState::Promoted, created_by, Utc::now()).await?;
    tx.audit(
        ctx,
        "content.create",
        "content",
        &id.to_string(),
        json!({ "name": name, "type": "manifest", "length": 0, "tags": tags.iter().map(|(n, _)| n).collect::<Vec<_>>() }),
    )
    .await?;
    Ok(model)
}

/// Insert a content row and its tags.
async fn insert_row(
    tx: &mut WriteTx,
    id: Uuid,
    input: &NewContent,
    state: ContentState,
    created_by: String,
    now: DateTime<Utc>,
) -> Result<content::Model> {
    let model = content::ActiveModel {
        id: Set(id),
        name: Set(input.name.clone()),
        content_type: Set(input.content_type.clone()),
        kind: Set(input.kind.clone()),
        length: Set(input.length),
        declared_sha256: Set(input.sha256.clone()),
        sha256: Set(None),
        md5: Set(None),
        product_id: Set(input.product_id.clone()),
        state: Set(state.as_str().to_owned()),
        staging_key: Set(None),
        repository_key: Set(None),
        scan_verdict: Set(None),
        scan_signature: Set(None),
        scan_error: Set(None),
        scanned_at: Set(None),
        created_by: Set(created_by),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(tx.conn())
    .await?;
    if !input.tags.is_empty() {
        content_tag::Entity::insert_many(input.tags.iter().map(|(name, value)| content_tag::ActiveModel {
            content_id: Set(id),
            name: Set(name.clone()),
            value: Set(value.clone()),
        }))
        .exec(tx.conn())
        .await?;
    }
    Ok(model)
}

fn upload_form(app: &App, model: &content::Model) -> UploadForm {
    let expires_at = Utc::now() + chrono::TimeDelta::from_std(app.config.http.upload_url_ttl).unwrap_or_default();
    let sig = app.signer.sign(UPLOAD_PURPOSE, &[&model.id.to_string(), &model.length.to_string()], expires_at);
    UploadForm {
        id: model.id,
        url: format!("{}/uploads/content/{}?exp={}&sig={sig}", app.public_url(), model.id, expires_at.timestamp()),
        inputs: json!({ "content_id": model.id.to_string() }),
        method: "POST",
        field: UPLOAD_FIELD,
        enctype: "multipart/form-data",
        expires_at,
    }
}

fn validate(app: &App, mut input: NewContent) -> Result<NewContent> {
    input.name = input.name.trim().to_owned();
    if input.name.is_empty() || input.name.chars().count() > 255 || input.name.chars().any(char::is_control) {
        return Err(Error::invalid("name", "1 to 255 characters, no control characters"));
    }
    if input.content_type.trim().is_empty() || input.content_type.len() > 127 {
        return Err(Error::invalid("content_type", "1 to 127 characters"));
    }
    let kind_ok = !input.kind.is_empty()
        && input.kind.len() <= 64
        && input.kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !kind_ok {
        return Err(Error::invalid("type", "1 to 64 characters: letters, digits, '_' or '-'"));
    }
    if input.length < 0 {
        return Err(Error::invalid("length", "must not be negative"));
    }
    let max = app.config.http.max_upload_bytes;
    if u64::try_from(input.length).unwrap_or(u64::MAX) > max {
        return Err(Error::PayloadTooLarge { limit: max });
    }
    if let Some(sha) = &mut input.sha256 {
        *sha = sha.trim().to_ascii_lowercase();
        if sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid("sha256", "64 hexadecimal characters"));
        }
    }
    if let Some(product) = &input.product_id
        && (product.is_empty() || product.len() > 255)
    {
        return Err(Error::invalid("product_id", "1 to 255 characters"));
    }
    input.tags = validate_tags(input.tags)?;
    Ok(input)
}

fn validate_tags(tags: Vec<(String, String)>) -> Result<Vec<(String, String)>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid("tags", format!("at most {MAX_TAGS} tags")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, value) in &tags {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::invalid("tags.name", "1 to 255 characters"));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::invalid("tags.name", format!("{name:?} appears twice")));
        }
        if value.len() > MAX_TAG_VALUE {
            return Err(Error::invalid("tags.value", format!("{name:?}: at most {MAX_TAG_VALUE} bytes")));
        }
    }
    Ok(tags)
}

/// What the uploader proved it may do: the signed URL's parameters.
#[derive(Clone, Debug)]
pub struct UploadGrant {
    pub content_id: Uuid,
    pub exp: i64,
    pub sig: String,
}

impl UploadGrant {
    /// From the URL's path id and query; an id that is no UUID is NOT_FOUND.
    pub fn parse(id: &str, exp: i64, sig: String) -> Result<Self> {
        let content_id = id.parse::<Uuid>().map_err(|_| Error::not_found("content", id))?;
        Ok(Self { content_id, exp, sig })
    }
}

/// Check an upload URL's signature without reading anything else: the
/// upload form's route calls this before it reads a single form field, so
/// a caller without a valid URL cannot make the server read its body.
/// ([`upload`] checks it again: it is that function's authorization.)
pub async fn check_upload_grant(app: &App, grant: &UploadGrant) -> Result<()> {
    let current = find(&app.db, grant.content_id).await?;
    verify_grant(app, &current, grant)
}

fn verify_grant(app: &App, current: &content::Model, grant: &UploadGrant) -> Result<()> {
    // The signature is bound to the id and the declared length.
    app.signer.verify(UPLOAD_PURPOSE, &[&current.id.to_string(), &current.length.to_string()], grant.exp, &grant.sig)
}

/// Receive the bytes of a content through its signed upload URL: stream
/// them into the staging store while hashing, check length and SHA-256,
/// then mark the content STAGED and queue its scan, in one transaction.
///
/// On any refusal or failure no staged object remains and the content is
/// back in AWAITING_UPLOAD, so it can be uploaded again.
pub async fn upload<S>(
    app: &App,
    ctx: &Ctx,
    grant: &UploadGrant,
    declared_length: Option<u64>,
    body: S,
) -> Result<Content>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    let current = find(&app.db, grant.content_id).await?;
    // The signature is this endpoint's authorization.
    verify_grant(app, &current, grant)?;
    receive_upload(app, ctx, current, declared_length, body).await
}

/// `uploadContent`: create a content and receive its bytes in one call (the
/// GraphQL multipart request). The same checks as `createContent` (and
/// CONTENT_WRITE), then the same upload path as the signed upload URL:
/// AWAITING_UPLOAD → UPLOADING → STAGED with its audit events and scan job.
///
/// `body` is None when the request carried no file (a JSON request): that
/// is refused once the caller and the input are known to be good. A
/// package's `otau_info` is refused here: packages are made with
/// `createSoftwarePackage` or `createContent`. When the upload fails, the
/// content this call created is DELETED (audited), so a failed call leaves
/// nothing uploadable behind; a call cut off by its client leaves it
/// AWAITING_UPLOAD, like a broken upload through the URL.
pub async fn create_with_upload<S>(app: &App, ctx: &Ctx, input: NewContent, body: Option<S>) -> Result<Content>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    ctx.require(Permission::ContentWrite)?;
    let input = validate(app, input)?;
    if input.tags.iter().any(|(name, _)| name == package::OTAU_INFO_TAG) {
        return Err(Error::invalid(
            "tags.name",
            format!("{:?}: packages are made with createSoftwarePackage or createContent", package::OTAU_INFO_TAG),
        ));
    }
    let Some(body) = body else {
        return Err(Error::invalid("file", "send the file in a GraphQL multipart request (the `Upload` of the map)"));
    };
    let (created, _) = create(app, ctx, input).await?;
    let id = created.model.id;
    match receive_upload(app, ctx, created.model, None, body).await {
        Ok(content) => Ok(content),
        Err(err) => {
            discard_failed_upload(app, ctx, id, &err).await;
            Err(err)
        }
    }
}

/// The content `create_with_upload` made, once its upload failed: DELETED.
async fn discard_failed_upload(app: &App, ctx: &Ctx, id: Uuid, cause: &Error) {
    let result = async {
        let mut tx = WriteTx::begin(app).await?;
        transition(&mut tx, id, ContentState::AwaitingUpload, ContentState::Deleted).await?;
        tx.audit(
            ctx,
            "content.delete",
            "content",
            &id.to_string(),
            json!({ "state_before": ContentState::AwaitingUpload.as_str(), "reason": format!("the upload failed: {cause}") }),
        )
        .await?;
        tx.commit().await
    }
    .await;
    if let Err(err) = result {
        tracing::error!(content = %id, error = %err, "could not delete the content of a failed uploadContent");
    }
}

/// Claim `current` (AWAITING_UPLOAD → UPLOADING), stream `body` into
/// staging and mark it STAGED, or put it back to AWAITING_UPLOAD.
async fn receive_upload<S>(
    app: &App,
    ctx: &Ctx,
    current: content::Model,
    declared_length: Option<u64>,
    body: S,
) -> Result<Content>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    let expected = u64::try_from(current.length).unwrap_or_default();
    if let Some(declared) = declared_length
        && declared != expected
    {
        return Err(Error::invalid(
            "length",
            format!("the request carries {declared} bytes; the content is {expected}"),
        ));
    }

    // Claim the upload (AWAITING_UPLOAD → UPLOADING): a second concurrent
    // upload of the same content gets INVALID_STATE.
    {
        let mut tx = WriteTx::begin(app).await?;
        transition(&mut tx, current.id, ContentState::AwaitingUpload, ContentState::Uploading).await?;
        tx.commit().await?;
    }
    // The claim as stored: its `updated_at` is this upload's mark (see `receive`).
    let current = find(&app.db, current.id).await?;

    // If this future is dropped halfway (the client went away and the
    // server cancelled the request), the guard still releases the upload.
    let mark = std::sync::Arc::new(std::sync::Mutex::new(current.updated_at));
    let mut guard = UploadGuard { app: app.clone(), id: current.id, mark: mark.clone(), armed: true };
    let result = match receive(app, &current, body, &mark).await {
        Ok(digests) => match finish_upload(app, ctx, &current, &digests).await {
            Ok(content) => Ok(content),
            Err(err) => {
                let _ = app.stores.staging.delete(&crate::storage::staging_key(current.id)).await;
                release_upload(app, current.id, Some(digests.mark)).await;
                Err(err)
            }
        },
        Err(err) => {
            release_upload(app, current.id, Some(read_mark(&mark))).await;
            Err(err)
        }
    };
    guard.armed = false;
    result
}

fn read_mark(mark: &std::sync::Mutex<DateTime<Utc>>) -> DateTime<Utc> {
    *mark.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct UploadGuard {
    app: App,
    id: Uuid,
    mark: std::sync::Arc<std::sync::Mutex<DateTime<Utc>>>,
    armed: bool,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if self.armed {
            let (app, id, mark) = (self.app.clone(), self.id, read_mark(&self.mark));
            tokio::spawn(async move { release_upload(&app, id, Some(mark)).await });
        }
    }
}

pub(super) struct Digests {
    sha256: String,
    md5: String,
    /// The content's `updated_at` as this upload last set it.
    mark: DateTime<Utc>,
}

/// Stream the body into `staging/<id>`; aborts the multipart write (so no
/// object appears) on any mismatch or error. `current` is the UPLOADING
/// row as this upload claimed it: its `updated_at` is the upload's mark,
/// moved on as bytes arrive. If the mark was moved by anyone else (the
/// sweep gave the upload up, and another upload claimed the content), this
/// upload stops and stores nothing.
pub(super) async fn receive<S>(
    app: &App,
    current: &content::Model,
    body: S,
    mark: &std::sync::Mutex<DateTime<Utc>>,
) -> Result<Digests>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    let expected = u64::try_from(current.length).unwrap_or_default();
    let key = crate::storage::staging_key(current.id);
    let upload = app.stores.staging.put_multipart(&key).await.map_err(store_error)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut sha = Sha256::new();
    let mut md5 = Md5::new();
    let mut received: u64 = 0;
    let mut body = std::pin::pin!(body);
    // Mark the upload alive now and then, so the sweep for abandoned
    // uploads (`release_abandoned_uploads`) leaves a long one alone.
    let beat_every = app.config.content.upload_idle_timeout / 4;
    let mut last_beat = std::time::Instant::now();
    // Move the mark on, or learn that the claim was lost.
    let beat = || async {
        let previous = read_mark(mark);
        let next = Utc::now().trunc_subsecs(6);
        let kept = content::Entity::update_many()
            .col_expr(content::Column::UpdatedAt, Expr::value(next))
            .filter(content::Column::Id.eq(current.id))
            .filter(content::Column::State.eq(ContentState::Uploading.as_str()))
            .filter(content::Column::UpdatedAt.eq(previous))
            .exec(&app.db)
            .await?;
        if kept.rows_affected != 1 {
            return Err(Error::InvalidState(format!(
                "the upload of content {} was given up (no bytes for too long); upload it again",
                current.id
            )));
        }
        *mark.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    };
    let outcome: Result<()> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::invalid("body", format!("upload broke off: {e}")))?;
            if last_beat.elapsed() >= beat_every {
                last_beat = std::time::Instant::now();
                beat().await?;
            }
            received += chunk.len() as u64;
            if received > expected {
                return Err(Error::invalid("length", format!("more than the declared {expected} bytes")));
            }
            sha.update(&chunk);
            md5.update(&chunk);
            writer.wait_for_capacity(2).await.map_err(store_error)?;
            writer.write(&chunk);
        }
        if received != expected {
            return Err(Error::invalid("length", format!("received {received} bytes; the content is {expected}")));
        }
        Ok(())
    }
    .await;
    let sha256 = hex::encode(sha.finalize());
    let outcome = outcome.and_then(|()| match &current.declared_sha256 {
        Some(declared) if *declared != sha256 => {
            Err(Error::invalid("sha256", format!("the bytes hash to {sha256}, not the declared {declared}")))
        }
        _ => Ok(()),
    });
    // Last, still ours? (Then the object written is this upload's.)
    let outcome = match outcome {
        Ok(()) => beat().await,
        err => err,
    };
    if let Err(err) = outcome {
        let _ = writer.abort().await;
        return Err(err);
    }
    writer.finish().await.map_err(store_error)?;
    Ok(Digests { sha256, md5: hex::encode(md5.finalize()), mark: read_mark(mark) })
}

pub(super) async fn finish_upload(
    app: &App,
    ctx: &Ctx,
    current: &content::Model,
    digests: &Digests,
) -> Result<Content> {
    let mut tx = WriteTx::begin(app).await?;
    // Still this upload's claim (its mark), not a later one's.
    let staged = content::Entity::update_many()
        .col_expr(content::Column::State, Expr::value(ContentState::Staged.as_str()))
        .col_expr(content::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(content::Column::Id.eq(current.id))
        .filter(content::Column::State.eq(ContentState::Uploading.as_str()))
        .filter(content::Column::UpdatedAt.eq(digests.mark))
        .exec(tx.conn())
        .await?;
    if staged.rows_affected != 1 {
        return Err(Error::InvalidState(format!(
            "the upload of content {} was given up or replaced meanwhile; upload it again",
            current.id
        )));
    }
    tx.notify(Event::ContentChanged(current.id));
    content::Entity::update_many()
        .col_expr(content::Column::Sha256, Expr::value(digests.sha256.clone()))
        .col_expr(content::Column::Md5, Expr::value(digests.md5.clone()))
        .col_expr(content::Column::StagingKey, Expr::value(crate::storage::staging_key(current.id).to_string()))
        .filter(content::Column::Id.eq(current.id))
        .exec(tx.conn())
        .await?;
    let attempts = app.config.scanner.max_attempts;
    crate::jobs::enqueue_at(tx.conn(), SCAN_JOB, json!({ "content_id": current.id }), Utc::now(), attempts).await?;
    tx.audit(
        ctx,
        "content.upload",
        "content",
        &current.id.to_string(),
        json!({ "length": current.length, "sha256": digests.sha256, "md5": digests.md5, "created_by": current.created_by }),
    )
    .await?;
    tx.commit().await?;
    app.wake_workers();
    get_unchecked(&app.db, current.id).await
}

/// Job kind of the sweep for abandoned uploads.
pub const RELEASE_ABANDONED_JOB: &str = "content.release_abandoned_uploads";

/// Make uploadable again what an upload left UPLOADING and nobody is
/// finishing: a one-shot upload idle for `content.upload_idle_timeout`
/// (uploads in progress mark themselves alive, so this is one whose server
/// stopped halfway), or a resumable one with no PATCH for
/// `content.tus_upload_expiry` (its pieces are deleted). Audited as
/// `content.upload_abandoned`; returns how many.
pub async fn release_abandoned_uploads(app: &App) -> Result<u64> {
    let config = &app.config.content;
    let idle = chrono::TimeDelta::from_std(config.upload_idle_timeout).unwrap_or(chrono::TimeDelta::minutes(10));
    let expiry = chrono::TimeDelta::from_std(config.tus_upload_expiry).unwrap_or(chrono::TimeDelta::days(1));
    let now = Utc::now();
    let candidates = content::Entity::find()
        .filter(content::Column::State.eq(ContentState::Uploading.as_str()))
        .filter(content::Column::UpdatedAt.lt(now - idle))
        .order_by_asc(content::Column::UpdatedAt)
        .limit(1000)
        .all(&app.db)
        .await?;
    let system = Ctx::system("upload-sweep");
    let mut released = 0;
    for candidate in candidates {
        if crate::service::tus::is_busy(app, candidate.id) {
            continue;
        }
        let tus = crate::service::tus::last_activity(app, candidate.id).await?;
        let reason = match tus {
            Some(last) if now - last.max(candidate.updated_at) < expiry => continue,
            Some(_) => "resumable upload expired",
            None => "one-shot upload stopped",
        };
        let mut tx = WriteTx::begin(app).await?;
        // Conditional on the row as read: an upload that moved on meanwhile is left alone.
        let moved = content::Entity::update_many()
            .col_expr(content::Column::State, Expr::value(ContentState::AwaitingUpload.as_str()))
            .col_expr(content::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(content::Column::Id.eq(candidate.id))
            .filter(content::Column::State.eq(ContentState::Uploading.as_str()))
            .filter(content::Column::UpdatedAt.eq(candidate.updated_at))
            .exec(tx.conn())
            .await?;
        if moved.rows_affected != 1 {
            continue;
        }
        tx.audit(
            &system,
            "content.upload_abandoned",
            "content",
            &candidate.id.to_string(),
            json!({ "reason": reason, "idle_since": candidate.updated_at }),
        )
        .await?;
        tx.notify(Event::ContentChanged(candidate.id));
        tx.commit().await?;
        if tus.is_some() {
            crate::service::tus::discard(app, candidate.id).await;
        }
        let _ = app.stores.staging.delete(&crate::storage::staging_key(candidate.id)).await;
        released += 1;
    }
    Ok(released)
}

/// The durable sweep: release abandoned uploads, then run again.
pub struct ReleaseAbandonedJob;

#[async_trait::async_trait]
impl crate::jobs::Handler for ReleaseAbandonedJob {
    fn kind(&self) -> &'static str {
        RELEASE_ABANDONED_JOB
    }

    async fn run(&self, app: &App, _job: &entity::job::Model) -> anyhow::Result<()> {
        let released = release_abandoned_uploads(app).await?;
        if released > 0 {
            tracing::warn!(released, "released abandoned uploads");
        }
        let every = chrono::TimeDelta::from_std(app.config.content.upload_idle_timeout / 2)
            .unwrap_or(chrono::TimeDelta::minutes(5));
        crate::jobs::ensure_queued(&app.db, RELEASE_ABANDONED_JOB, Utc::now() + every).await
    }
}

/// UPLOADING → AWAITING_UPLOAD after a refused or broken upload; with
/// `mark`, only while the claim is still that upload's (a later upload's
/// claim is left alone).
pub(super) async fn release_upload(app: &App, id: Uuid, mark: Option<DateTime<Utc>>) {
    let result = async {
        let mut tx = WriteTx::begin(app).await?;
        match mark {
            None => transition(&mut tx, id, ContentState::Uploading, ContentState::AwaitingUpload).await?,
            Some(mark) => {
                let released = content::Entity::update_many()
                    .col_expr(content::Column::State, Expr::value(ContentState::AwaitingUpload.as_str()))
                    .col_expr(content::Column::UpdatedAt, Expr::value(Utc::now()))
                    .filter(content::Column::Id.eq(id))
                    .filter(content::Column::State.eq(ContentState::Uploading.as_str()))
                    .filter(content::Column::UpdatedAt.eq(mark))
                    .exec(tx.conn())
                    .await?;
                if released.rows_affected != 1 {
                    return Ok(());
                }
                tx.notify(Event::ContentChanged(id));
            }
        }
        tx.commit().await
    }
    .await;
    if let Err(err) = result {
        tracing::error!(content = %id, error = %err, "could not release a failed upload");
    }
}

/// Move a content from `from` to `to`, or INVALID_STATE. The update is
/// conditional on the state still being `from`, so of two racing writers
/// only one succeeds.
pub async fn transition(tx: &mut WriteTx, id: Uuid, from: ContentState, to: ContentState) -> Result<()> {
    let conn = tx.conn();
    if !from.can_become(to) {
        return Err(Error::InvalidState(format!("content {id}: {from} cannot become {to}")));
    }
    let result = content::Entity::update_many()
        .col_expr(content::Column::State, Expr::value(to.as_str()))
        .col_expr(content::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(content::Column::Id.eq(id))
        .filter(content::Column::State.eq(from.as_str()))
        .exec(conn)
        .await?;
    if result.rows_affected != 1 {
        let actual = find(conn, id).await?.state;
        return Err(Error::InvalidState(format!("content {id} is {actual}; it cannot become {to}")));
    }
    tx.notify(Event::ContentChanged(id));
    Ok(())
}

pub(super) async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<content::Model> {
    content::Entity::find_by_id(id).one(conn).await?.ok_or_else(|| Error::not_found("content", id.to_string()))
}

async fn get_unchecked(conn: &impl ConnectionTrait, id: Uuid) -> Result<Content> {
    let model = find(conn, id).await?;
    let mut with_tags = attach_tags(conn, vec![model]).await?;
    Ok(with_tags.remove(0))
}

/// Load the tags of many contents in one query.
async fn attach_tags(conn: &impl ConnectionTrait, models: Vec<content::Model>) -> Result<Vec<Content>> {
    let ids: Vec<Uuid> = models.iter().map(|m| m.id).collect();
    let mut tags: BTreeMap<Uuid, BTreeMap<String, String>> = BTreeMap::new();
    if !ids.is_empty() {
        for tag in content_tag::Entity::find().filter(content_tag::Column::ContentId.is_in(ids)).all(conn).await? {
            tags.entry(tag.content_id).or_default().insert(tag.name, tag.value);
        }
    }
    models
        .into_iter()
        .map(|model| {
            Ok(Content {
                state: ContentState::parse(&model.state)?,
                tags: tags.remove(&model.id).unwrap_or_default(),
                model,
            })
        })
        .collect()
}

pub async fn get(app: &App, ctx: &Ctx, id: Uuid) -> Result<Content> {
    ctx.require(Permission::ContentRead)?;
    get_unchecked(&app.db, id).await
}

#[derive(Clone, Debug, Default)]
pub struct ContentFilter {
    pub state: Option<ContentState>,
    pub kind: Option<String>,
    pub product_id: Option<String>,
    pub tag: Option<(String, Option<String>)>,
}

const CURSOR_KIND: &str = "content";

/// Newest first. Deleted contents only when asked for by state.
pub async fn list(
    app: &App,
    ctx: &Ctx,
    filter: &ContentFilter,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<Content>> {
    ctx.require(Permission::ContentRead)?;
    let page = PageRequest::parse_uuid(CURSOR_KIND, first, after)?;
    let mut condition = Condition::all();
    condition = match filter.state {
        Some(state) => condition.add(content::Column::State.eq(state.as_str())),
        None => condition.add(content::Column::State.ne(ContentState::Deleted.as_str())),
    };
    if let Some(kind) = &filter.kind {
        condition = condition.add(content::Column::Kind.eq(kind.as_str()));
    }
    if let Some(product) = &filter.product_id {
        condition = condition.add(content::Column::ProductId.eq(product.as_str()));
    }
    if let Some((name, value)) = &filter.tag {
        let mut tag_query = content_tag::Entity::find()
            .select_only()
            .column(content_tag::Column::ContentId)
            .filter(content_tag::Column::Name.eq(name.as_str()));
        if let Some(value) = value {
            tag_query = tag_query.filter(content_tag::Column::Value.eq(value.as_str()));
        }
        condition = condition.add(content::Column::Id.in_subquery(sea_orm::QueryTrait::into_query(tag_query)));
    }
    let query = content::Entity::find().filter(condition);
    let (rows, has_next_page, total_count) =
        crate::service::pagination::newest_first(&app.db, query, content::Column::Id, &page).await?;
    let items = attach_tags(&app.db, rows).await?;
    Ok(Page {
        items: items.into_iter().map(|c| (cursor(CURSOR_KIND, c.model.id), c)).collect(),
        has_next_page,
        total_count,
    })
}

fn store_error(err: object_store::Error) -> Error {
    Error::Unavailable(format!("the staging store failed: {err}"))
}

#[cfg(test)]
mod tests {
    use super::ContentState::*;

    #[test]
    fn only_a_clean_verdict_leads_to_promoted() {
        for from in super::ContentState::ALL {
            assert_eq!(from.can_become(Promoted), from == Clean, "{from}");
        }
    }

    #[test]
    fn promoted_and_deleted_are_final_for_deletion() {
        assert!(!Promoted.can_become(Deleted));
        assert!(!Deleted.can_become(Deleted));
        assert!(Quarantined.can_become(Deleted));
        assert!(ScanFailed.can_become(Scanning));
        assert!(!Quarantined.can_become(Scanning));
        assert!(Uploading.can_become(AwaitingUpload));
    }
}

const DOWNLOAD_PURPOSE: &str = "content-download";
const DOWNLOAD_BY_HASH_PURPOSE: &str = "content-download-sha256";
/// URLs in a device's manifest: signed over the content, the device, its
/// update and its credential (`service/device_download.rs`).
pub(crate) const DEVICE_DOWNLOAD_PURPOSE: &str = "content-download-device";
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
        .ok_or_else(|| Error::not_found("content", id.to_string()))?;
    if let Some(device_model) = device_model
        && !package::files_for_model(&app.db, device_model, &[model.id]).await?
    {
        return Err(Error::not_found("content", id.to_string()));
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
        .ok_or_else(|| Error::not_found("content", id.to_string()))?;
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
        return Err(Error::not_found("object", sha256));
    }
    let same = content::Entity::find()
        .filter(content::Column::Sha256.eq(sha256.as_str()))
        .filter(content::Column::State.eq(ContentState::Promoted.as_str()))
        .all(&app.db)
        .await?;
    let Some(model) = same.first() else { return Err(Error::not_found("object", sha256)) };
    if let Some(device_model) = device_model
        && !package::files_for_model(&app.db, device_model, &same.iter().map(|c| c.id).collect::<Vec<_>>()).await?
    {
        return Err(Error::not_found("object", sha256));
    }
    download_of(model)
}

/// An operator needs CONTENT_READ; a device may download the files of the
/// packages for its model (`Some(model)`: checked once the content is known).
fn authorize_download(ctx: &Ctx) -> Result<Option<Uuid>> {
    if let crate::auth::Actor::Device(_) = &ctx.actor {
        return Ok(Some(ctx.require_device()?.model_id));
    }
    ctx.require(Permission::ContentRead)?;
    Ok(None)
}

fn download_of(model: &content::Model) -> Result<Download> {
    // A package's manifest holder is PROMOTED without any bytes.
    let sha256 = model.sha256.clone().ok_or_else(|| Error::not_found("content", model.id.to_string()))?;
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

/// Replace a content's tags with `tags` (validated like `createContent`'s).
pub async fn set_tags(app: &App, ctx: &Ctx, id: Uuid, tags: Vec<(String, String)>) -> Result<Content> {
    ctx.require(Permission::ContentWrite)?;
    let tags = validate_tags(tags)?;
    let mut tx = WriteTx::begin(app).await?;
    let current = find(tx.conn(), id).await?;
    if current.state == ContentState::Deleted.as_str() {
        return Err(Error::InvalidState(format!("content {id} is DELETED")));
    }
    let existing: BTreeMap<String, String> = content_tag::Entity::find()
        .filter(content_tag::Column::ContentId.eq(id))
        .all(tx.conn())
        .await?
        .into_iter()
        .map(|t| (t.name, t.value))
        .collect();
    // A package's manifest tags change only through the package mutations:
    // devices verify signatures over the manifest, so it never changes.
    for reserved in package::RESERVED_TAGS {
        let now = tags.iter().find(|(n, _)| n == reserved).map(|(_, v)| v);
        if now != existing.get(reserved) {
            return Err(Error::invalid(
                "tags.name",
                format!("{reserved:?} cannot be set, changed or removed here (it belongs to a package's manifest)"),
            ));
        }
    }
    let before: Vec<String> = existing.into_keys().collect();
    content_tag::Entity::delete_many().filter(content_tag::Column::ContentId.eq(id)).exec(tx.conn()).await?;
    if !tags.is_empty() {
        content_tag::Entity::insert_many(tags.iter().map(|(name, value)| content_tag::ActiveModel {
            content_id: Set(id),
            name: Set(name.clone()),
            value: Set(value.clone()),
        }))
        .exec(tx.conn())
        .await?;
    }
    tx.audit(
        ctx,
        "content.set_tags",
        "content",
        &id.to_string(),
        json!({ "before": before, "after": tags.iter().map(|(n, _)| n).collect::<Vec<_>>() }),
    )
    .await?;
    tx.notify(Event::ContentChanged(id));
    tx.commit().await?;
    get_unchecked(&app.db, id).await
}

/// Mark a content DELETED and drop its staged or quarantined object. A
/// promoted object in the repository may be shared by identical content,
/// so it stays (see docs/architecture.md).
pub async fn delete(app: &App, ctx: &Ctx, id: Uuid) -> Result<Content> {
    ctx.require(Permission::ContentWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let current = find(tx.conn(), id).await?;
    let from = ContentState::parse(&current.state)?;
    if from == ContentState::Uploading {
        return Err(Error::InvalidState(format!("content {id} is UPLOADING; wait until the upload ends")));
    }
    if let Some(holder_of) = package::by_holder(tx.conn(), id).await? {
        return Err(Error::Conflict(format!(
            "content {id} holds the manifest of package {}; delete the package (deletePackage) instead",
            holder_of.id
        )));
    }
    let users = package::using_file(tx.conn(), id).await?;
    if !users.is_empty() {
        let names: Vec<String> = users.iter().map(|p| format!("{} {} ({})", p.product, p.version, p.id)).collect();
        return Err(Error::Conflict(format!("content {id} is a file of package(s) {}", names.join(", "))));
    }
    transition_for_delete(&mut tx, id, from).await?;
    tx.audit(ctx, "content.delete", "content", &id.to_string(), json!({ "state_before": from.as_str() })).await?;
    tx.commit().await?;
    for key in [crate::storage::staging_key(id), crate::storage::quarantine_key(id)] {
        let _ = app.stores.staging.delete(&key).await;
    }
    get_unchecked(&app.db, id).await
}

/// A package holder's content becomes DELETED with its package.
pub(crate) async fn mark_deleted(tx: &mut WriteTx, id: Uuid) -> Result<()> {
    let current = find(tx.conn(), id).await?;
    let from = ContentState::parse(&current.state)?;
    if from == ContentState::Deleted {
        return Ok(());
    }
    transition_for_delete(tx, id, from).await
}

/// DELETED from any state but DELETED, PROMOTED included: promoted files
/// nobody uses any more must be removable (packages make this a CONFLICT
/// while they reference the content).
async fn transition_for_delete(tx: &mut WriteTx, id: Uuid, from: ContentState) -> Result<()> {
    if from == ContentState::Deleted {
        return Err(Error::InvalidState(format!("content {id} is already DELETED")));
    }
    let result = content::Entity::update_many()
        .col_expr(content::Column::State, Expr::value(ContentState::Deleted.as_str()))
        .col_expr(content::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(content::Column::Id.eq(id))
        .filter(content::Column::State.eq(from.as_str()))
        .exec(tx.conn())
        .await?;
    if result.rows_affected != 1 {
        return Err(Error::InvalidState(format!("content {id} changed state meanwhile")));
    }
    tx.notify(Event::ContentChanged(id));
    Ok(())
}

/// SCAN_FAILED → SCANNING and a fresh scan job.
pub async fn rescan(app: &App, ctx: &Ctx, id: Uuid) -> Result<Content> {
    ctx.require(Permission::ContentWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    find(tx.conn(), id).await?;
    transition(&mut tx, id, ContentState::ScanFailed, ContentState::Scanning).await?;
    let attempts = app.config.scanner.max_attempts;
    crate::jobs::enqueue_at(tx.conn(), SCAN_JOB, json!({ "content_id": id }), Utc::now(), attempts).await?;
    tx.audit(ctx, "content.rescan", "content", &id.to_string(), json!({})).await?;
    tx.commit().await?;
    app.wake_workers();
    get_unchecked(&app.db, id).await
}

/// Promote a CLEAN content (with `content.promotion = "manual"`): queues
/// the promotion step; the content turns PROMOTED when it has run.
pub async fn promote(app: &App, ctx: &Ctx, id: Uuid) -> Result<Content> {
    ctx.require(Permission::ContentPromote)?;
    let mut tx = WriteTx::begin(app).await?;
    let current = find(tx.conn(), id).await?;
    let state = ContentState::parse(&current.state)?;
    if state != ContentState::Clean {
        return Err(Error::InvalidState(format!("content {id} is {state}; only CLEAN content can be promoted")));
    }
    crate::jobs::enqueue_at(
        tx.conn(),
        SCAN_JOB,
        json!({ "content_id": id, "promote": true }),
        Utc::now(),
        app.config.scanner.max_attempts,
    )
    .await?;
    tx.audit(ctx, "content.promote_requested", "content", &id.to_string(), json!({})).await?;
    tx.commit().await?;
    app.wake_workers();
    get_unchecked(&app.db, id).await
}

/// The content now, then again after every change, while the caller
/// listens.
pub async fn watch(app: &App, ctx: &Ctx, id: Uuid) -> Result<impl Stream<Item = Content> + use<>> {
    ctx.require(Permission::ContentRead)?;
    let receiver = app.events.subscribe();
    let first = get_unchecked(&app.db, id).await?;
    let db = app.db.clone();
    let updates = futures::stream::unfold(receiver, move |mut receiver| {
        let db = db.clone();
        async move {
            loop {
                match receiver.recv().await {
                    Ok(Event::ContentChanged(changed)) if changed == id => {
                        if let Ok(content) = get_unchecked(&db, id).await {
                            return Some((content, receiver));
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(futures::stream::once(async move { first }).chain(updates))
}
