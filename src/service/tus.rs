//! Resumable uploads (tus 1.0: core, creation, termination) of a content
//! created with `createContent`.
//!
//! The upload URL's signature authorizes the tus resource as well. Each
//! PATCH is stored as a piece `tus/<id>/<offset>` in the staging store
//! (a PATCH cut off keeps the bytes that arrived, so the client resumes
//! from there); the offset is the sum of the pieces. When the last byte
//! arrives, the pieces are streamed, in order, through the same checks as
//! a one-shot upload (length, SHA-256) into `staging/<id>`.
//!
//! Rule: the content is UPLOADING from creation until completion or
//! termination; the pieces never leave the staging store.

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, WriteMultipart};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::content::{self, Content, ContentState, UPLOAD_PURPOSE, UploadGrant, find, transition};
use crate::app::App;
use crate::auth::Ctx;
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;

/// Where a resumable upload stands.
#[derive(Clone, Debug)]
pub struct TusUpload {
    pub content_id: Uuid,
    pub offset: u64,
    pub length: u64,
    /// Set once the last byte arrived and the content is STAGED.
    pub finished: Option<Content>,
}

fn unavailable(e: object_store::Error) -> Error {
    Error::Unavailable(format!("the staging store failed: {e}"))
}

async fn authorized(app: &App, grant: &UploadGrant) -> Result<entity::content::Model> {
    let current = find(&app.db, grant.content_id).await?;
    app.signer.verify(
        UPLOAD_PURPOSE,
        &[&current.id.to_string(), &current.length.to_string()],
        grant.exp,
        &grant.sig,
    )?;
    Ok(current)
}

fn marker(id: Uuid) -> object_store::path::Path {
    crate::storage::tus_marker_key(id)
}

/// Creation: claim the content (AWAITING_UPLOAD → UPLOADING) for a tus upload.
pub async fn create(app: &App, grant: &UploadGrant, upload_length: u64) -> Result<TusUpload> {
    let current = authorized(app, grant).await?;
    let length = u64::try_from(current.length).unwrap_or_default();
    if upload_length != length {
        return Err(Error::invalid("Upload-Length", format!("{upload_length}; the content is {length} bytes")));
    }
    let mut tx = WriteTx::begin(app).await?;
    transition(&mut tx, current.id, ContentState::AwaitingUpload, ContentState::Uploading).await?;
    tx.commit().await?;
    if let Err(err) = app.stores.staging.put(&marker(current.id), object_store::PutPayload::new()).await {
        content::release_upload(app, current.id, None).await;
        return Err(unavailable(err));
    }
    Ok(TusUpload { content_id: current.id, offset: 0, length, finished: None })
}

/// HEAD: the offset, once a request still writing the upload (a stalled
/// PATCH) has stopped and kept what it received.
pub async fn offset(app: &App, grant: &UploadGrant) -> Result<TusUpload> {
    // Checked before taking over, so only a holder of the upload URL can
    // stop a PATCH; read again after, as the stopped one may have finished.
    authorized(app, grant).await?;
    let _busy = Busy::take(app, grant.content_id).await?;
    status(app, grant).await
}

/// The offset: bytes received so far.
async fn status(app: &App, grant: &UploadGrant) -> Result<TusUpload> {
    let current = authorized(app, grant).await?;
    let length = u64::try_from(current.length).unwrap_or_default();
    if ContentState::parse(&current.state)? != ContentState::Uploading || !is_tus(app, current.id).await? {
        return Err(Error::not_found(ResourceKind::TusUpload, current.id.to_string()));
    }
    Ok(TusUpload { content_id: current.id, offset: received(app, current.id).await?, length, finished: None })
}

async fn is_tus(app: &App, id: Uuid) -> Result<bool> {
    match app.stores.staging.head(&marker(id)).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(err) => Err(unavailable(err)),
    }
}

/// Sum of the received pieces.
async fn received(app: &App, id: Uuid) -> Result<u64> {
    let pieces = app
        .stores
        .staging
        .list(Some(&crate::storage::tus_prefix(id)))
        .try_collect::<Vec<_>>()
        .await
        .map_err(unavailable)?;
    Ok(pieces.iter().filter(|m| m.location != marker(id)).map(|m| m.size).sum())
}

/// How long a newer request waits for the one it takes over from to end.
const TAKE_OVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The request writing an upload right now (in this process).
#[derive(Clone)]
pub struct Writer {
    /// Which request this is (the entry is only removed by its own).
    serial: u64,
    /// Cancelled when a newer request takes over.
    stop: CancellationToken,
    /// Cancelled when this request has let go.
    gone: CancellationToken,
}

/// One request at a time per upload (in this process), so two writers
/// never race over the same piece or assemble twice. A newer request (a
/// PATCH, DELETE or HEAD: a client resuming after a stall) takes over, as
/// tusd's lock release does: the running PATCH stops reading, keeps what
/// arrived and ends; the newer one waits up to [`TAKE_OVER_WAIT`] for that,
/// then reads the offset. Without this a resumed upload got 409 for as long
/// as the stalled request lived.
struct Busy {
    app: App,
    id: Uuid,
    me: Writer,
}

impl Busy {
    async fn take(app: &App, id: Uuid) -> Result<Self> {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let me = Writer { serial, stop: CancellationToken::new(), gone: CancellationToken::new() };
        let deadline = tokio::time::Instant::now() + TAKE_OVER_WAIT;
        loop {
            let running = {
                let mut busy = app.tus_busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match busy.get(&id) {
                    Some(running) => running.clone(),
                    None => {
                        busy.insert(id, me.clone());
                        return Ok(Self { app: app.clone(), id, me });
                    }
                }
            };
            running.stop.cancel();
            if tokio::time::timeout_at(deadline, running.gone.cancelled()).await.is_err() {
                return Err(Error::Conflict(format!("another request is writing upload {id}; retry after it")));
            }
        }
    }

    /// Resolves when a newer request takes over.
    async fn taken_over(&self) {
        self.me.stop.cancelled().await;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut busy = self.app.tus_busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if busy.get(&self.id).is_some_and(|w| w.serial == self.me.serial) {
            busy.remove(&self.id);
        }
        drop(busy);
        self.me.gone.cancel();
    }
}

/// Whether a request writes upload `id` in this process right now.
pub(crate) fn is_busy(app: &App, id: Uuid) -> bool {
    app.tus_busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(&id)
}

/// PATCH: append the body at `offset` (which must be the current offset).
pub async fn append<S>(app: &App, ctx: &Ctx, grant: &UploadGrant, offset: u64, body: S) -> Result<TusUpload>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    authorized(app, grant).await?;
    let busy = Busy::take(app, grant.content_id).await?;
    let mut upload = status(app, grant).await?;
    if offset != upload.offset {
        return Err(Error::Conflict(format!("Upload-Offset is {offset}; the upload is at {}", upload.offset)));
    }
    let remaining = upload.length - upload.offset;
    let key = crate::storage::tus_piece_key(upload.content_id, offset);
    let writer = app.stores.staging.put_multipart(&key).await.map_err(unavailable)?;
    let mut writer = WriteMultipart::new_with_chunk_size(writer, 5 * 1024 * 1024);
    let mut got: u64 = 0;
    let mut body = std::pin::pin!(body);
    let mut too_long = false;
    loop {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            // A newer request resumes the upload: end with what arrived.
            () = busy.taken_over() => break,
        };
        // A cut-off request keeps what arrived: the client resumes from there.
        let Some(Ok(chunk)) = chunk else { break };
        if got + chunk.len() as u64 > remaining {
            too_long = true;
            break;
        }
        got += chunk.len() as u64;
        writer.wait_for_capacity(2).await.map_err(unavailable)?;
        writer.write(&chunk);
    }
    if too_long || got == 0 {
        let _ = writer.abort().await;
        if too_long {
            return Err(Error::invalid("body", format!("more than the {remaining} bytes left to upload")));
        }
        return Ok(upload);
    }
    writer.finish().await.map_err(unavailable)?;
    // Alive: the sweep for abandoned uploads looks at idle ones first.
    {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        entity::content::Entity::update_many()
            .col_expr(entity::content::Column::UpdatedAt, sea_orm::sea_query::Expr::value(chrono::Utc::now()))
            .filter(entity::content::Column::Id.eq(upload.content_id))
            .filter(entity::content::Column::State.eq(ContentState::Uploading.as_str()))
            .exec(&app.db)
            .await?;
    }
    upload.offset += got;
    if upload.offset == upload.length {
        upload.finished = Some(assemble(app, ctx, upload.content_id).await?);
    }
    Ok(upload)
}

/// All bytes are in: stream the pieces through the one-shot checks.
async fn assemble(app: &App, ctx: &Ctx, id: Uuid) -> Result<Content> {
    let current = find(&app.db, id).await?;
    let mut pieces: Vec<object_store::ObjectMeta> =
        app.stores.staging.list(Some(&crate::storage::tus_prefix(id))).try_collect().await.map_err(unavailable)?;
    pieces.retain(|m| m.location != marker(id));
    pieces.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    let store = app.stores.staging.clone();
    // Boxed as 'static: the stream must not borrow across the handler's awaits.
    let stream: futures::stream::BoxStream<'static, std::io::Result<Bytes>> = futures::stream::iter(pieces)
        .then(move |meta| {
            let store = store.clone();
            async move {
                store
                    .get(&meta.location)
                    .await
                    .map(|o| crate::storage::object_stream(o, crate::storage::BULK_CHUNK))
                    .map_err(std::io::Error::other)
            }
        })
        .try_flatten()
        .boxed();
    let mark = std::sync::Mutex::new(current.updated_at);
    let result = match content::receive(app, &current, stream, &mark).await {
        Ok(digests) => content::finish_upload(app, ctx, &current, &digests).await,
        Err(err) => Err(err),
    };
    discard_pieces(app, id).await;
    if result.is_err() {
        let mark = *mark.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        content::release_upload(app, id, Some(mark)).await;
    }
    result
}

/// DELETE: drop what was received and make the content uploadable again.
pub async fn terminate(app: &App, grant: &UploadGrant) -> Result<()> {
    authorized(app, grant).await?;
    let _busy = Busy::take(app, grant.content_id).await?;
    let upload = status(app, grant).await?;
    discard_pieces(app, upload.content_id).await;
    content::release_upload(app, upload.content_id, None).await;
    Ok(())
}

/// For a resumable upload of `id`: when its newest piece (or, before the
/// first, its creation) was written. None when `id` has no tus upload.
pub(crate) async fn last_activity(app: &App, id: Uuid) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    let objects: Vec<object_store::ObjectMeta> =
        app.stores.staging.list(Some(&crate::storage::tus_prefix(id))).try_collect().await.map_err(unavailable)?;
    if !objects.iter().any(|m| m.location == marker(id)) {
        return Ok(None);
    }
    Ok(objects.iter().map(|m| m.last_modified).max())
}

/// Delete what a resumable upload of `id` stored.
pub(crate) async fn discard(app: &App, id: Uuid) {
    discard_pieces(app, id).await;
}

async fn discard_pieces(app: &App, id: Uuid) {
    let pieces: Vec<_> = match app.stores.staging.list(Some(&crate::storage::tus_prefix(id))).try_collect().await {
        Ok(pieces) => pieces,
        Err(err) => {
            tracing::warn!(content = %id, error = %err, "listing tus pieces to delete failed");
            return;
        }
    };
    for piece in pieces {
        let _ = app.stores.staging.delete(&piece.location).await;
    }
}
