//! Getting a content's bytes in: `createContent` and its upload form, the
//! signed upload grant, the one-shot upload (multipart or raw body) and the
//! streaming receive with its digests (SHA-256, MD5 and SHA-1) that the
//! resumable (tus) path shares.

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use entity::{content, content_tag};
use futures::{Stream, StreamExt};
use md5::Md5;
use object_store::{ObjectStoreExt, WriteMultipart};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use serde_json::json;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    Content, ContentState, NewContent, SCAN_JOB, UPLOAD_PURPOSE, UploadForm, find, get_unchecked, scan_payload,
    store_error, transition,
};
use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;
use crate::service::catalog::{OTAU_INFO_TAG, RESERVED_TAGS};

const MAX_TAGS: usize = 200;
const MAX_TAG_VALUE: usize = 64 * 1024;
/// Bytes buffered per multipart part on their way to the store.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// The multipart field that carries the file.
pub const UPLOAD_FIELD: &str = "file";

/// Create a content awaiting its bytes (`createContent` without
/// `otau_info`; with it, the content is a package's holder and
/// `service::package::create_content` makes both). The tags only packages
/// write are refused.
pub async fn create(app: &App, ctx: &Ctx, input: NewContent) -> Result<(Content, UploadForm)> {
    ctx.require(Permission::ContentWrite)?;
    let input = validate(app, input)?;
    if let Some((name, _)) = input.tags.iter().find(|(name, _)| RESERVED_TAGS.contains(&name.as_str())) {
        let reason = if name == OTAU_INFO_TAG {
            format!("{name:?}: packages are made with createSoftwarePackage or createContent")
        } else {
            format!("{name:?} belongs to a package's otau_info; give otau_info too")
        };
        return Err(Error::invalid("tags.name", reason));
    }
    let state = ContentState::AwaitingUpload;
    let mut tx = WriteTx::begin(app).await?;
    let model = insert_created(&mut tx, ctx, &input, state).await?;
    tx.commit().await?;
    let form = upload_form(app, &model);
    Ok((Content { state, tags: input.tags.into_iter().collect(), model }, form))
}

/// Insert a content `createContent` made, in `state`, with its audit event.
pub(in crate::service) async fn insert_created(
    tx: &mut WriteTx,
    ctx: &Ctx,
    input: &NewContent,
    state: ContentState,
) -> Result<content::Model> {
    let (_, created_by) = ctx.actor.audit_identity();
    let id = Uuid::now_v7();
    let model = insert_row(tx, id, input, state, created_by, Utc::now()).await?;
    tx.audit(
        ctx,
        "content.create",
        ResourceKind::Content,
        &id.to_string(),
        json!({
            "name": input.name, "type": input.kind, "length": input.length,
            "product_id": input.product_id, "tags": input.tags.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        }),
    )
    .await?;
    Ok(model)
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
        ResourceKind::Content,
        &id.to_string(),
        json!({ "name": name, "type": "manifest", "length": 0, "tags": tags.iter().map(|(n, _)| n).collect::<Vec<_>>() }),
    )
    .await?;
    Ok(model)
}

/// Insert a content row and its tags.
pub(super) async fn insert_row(
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
        sha1: Set(None),
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

pub(in crate::service) fn upload_form(app: &App, model: &content::Model) -> UploadForm {
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

pub(in crate::service) fn validate(app: &App, mut input: NewContent) -> Result<NewContent> {
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

pub(super) fn validate_tags(tags: Vec<(String, String)>) -> Result<Vec<(String, String)>> {
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
        let content_id = id.parse::<Uuid>().map_err(|_| Error::not_found(ResourceKind::Content, id))?;
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

pub(super) fn verify_grant(app: &App, current: &content::Model, grant: &UploadGrant) -> Result<()> {
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
    if input.tags.iter().any(|(name, _)| name == OTAU_INFO_TAG) {
        return Err(Error::invalid(
            "tags.name",
            format!("{OTAU_INFO_TAG:?}: packages are made with createSoftwarePackage or createContent"),
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
pub(super) async fn discard_failed_upload(app: &App, ctx: &Ctx, id: Uuid, cause: &Error) {
    let result = async {
        let mut tx = WriteTx::begin(app).await?;
        transition(&mut tx, id, ContentState::AwaitingUpload, ContentState::Deleted).await?;
        tx.audit(
            ctx,
            "content.delete",
            ResourceKind::Content,
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
pub(super) async fn receive_upload<S>(
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

pub(super) fn read_mark(mark: &std::sync::Mutex<DateTime<Utc>>) -> DateTime<Utc> {
    *mark.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) struct UploadGuard {
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

pub(in crate::service) struct Digests {
    sha256: String,
    md5: String,
    sha1: String,
    /// The content's `updated_at` as this upload last set it.
    mark: DateTime<Utc>,
}

/// Stream the body into `staging/<id>`; aborts the multipart write (so no
/// object appears) on any mismatch or error. `current` is the UPLOADING
/// row as this upload claimed it: its `updated_at` is the upload's mark,
/// moved on as bytes arrive. If the mark was moved by anyone else (the
/// sweep gave the upload up, and another upload claimed the content), this
/// upload stops and stores nothing.
pub(in crate::service) async fn receive<S>(
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
    let mut sha1 = Sha1::new();
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
            sha1.update(&chunk);
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
    Ok(Digests { sha256, md5: hex::encode(md5.finalize()), sha1: hex::encode(sha1.finalize()), mark: read_mark(mark) })
}

pub(in crate::service) async fn finish_upload(
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
        .col_expr(content::Column::Sha1, Expr::value(digests.sha1.clone()))
        .col_expr(content::Column::StagingKey, Expr::value(crate::storage::staging_key(current.id).to_string()))
        .filter(content::Column::Id.eq(current.id))
        .exec(tx.conn())
        .await?;
    let attempts = app.config.scanner.max_attempts;
    crate::jobs::enqueue_at(tx.conn(), SCAN_JOB, scan_payload(current.id, false)?, Utc::now(), attempts).await?;
    tx.audit(
        ctx,
        "content.upload",
        ResourceKind::Content,
        &current.id.to_string(),
        json!({
            "length": current.length, "sha256": digests.sha256, "md5": digests.md5, "sha1": digests.sha1,
            "created_by": current.created_by,
        }),
    )
    .await?;
    tx.commit().await?;
    app.wake_workers();
    get_unchecked(&app.db, current.id).await
}

/// UPLOADING → AWAITING_UPLOAD after a refused or broken upload; with
/// `mark`, only while the claim is still that upload's (a later upload's
/// claim is left alone).
pub(in crate::service) async fn release_upload(app: &App, id: Uuid, mark: Option<DateTime<Utc>>) {
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
