//! The SHA-1 of content stored before uploads computed it (migration
//! 000018): the job `content.sha1_backfill` (`jobs/tasks/
//! content_sha1_backfill.rs` calls [`backfill_sha1`]) reads each such
//! object once from the store it is in and fills in `content.sha1`.
//!
//! Rule: a SHA-1 is written only for the bytes the row's SHA-256 names
//! (both are computed from the one read), and only where none is set yet,
//! so a rerun, or a run beside another one, changes nothing twice.

use std::sync::Arc;

use entity::content;
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::json;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::ContentState;
use crate::app::{App, Event};
use crate::auth::Ctx;
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;

/// Job kind that fills in the SHA-1 of content stored without one.
pub const SHA1_BACKFILL_JOB: &str = "content.sha1_backfill";

/// Rows read (and objects hashed) per batch; each batch's writes commit
/// together, so a run cut off keeps what it did.
const BATCH: u64 = 50;

/// The states in which a content's bytes are stored (and so can be read).
const STORED: [ContentState; 6] = [
    ContentState::Staged,
    ContentState::Scanning,
    ContentState::Clean,
    ContentState::ScanFailed,
    ContentState::Quarantined,
    ContentState::Promoted,
];

/// What one run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backfilled {
    /// Rows given their SHA-1.
    pub filled: u64,
    /// Rows whose object was gone, or did not hash to the row's SHA-256.
    pub skipped: u64,
}

fn lacking() -> sea_orm::Select<content::Entity> {
    content::Entity::find()
        .filter(content::Column::Sha1.is_null())
        .filter(content::Column::Sha256.is_not_null())
        .filter(content::Column::State.is_in(STORED.map(ContentState::as_str)))
}

/// At startup (the job runner's): queue the backfill when some stored
/// content has no SHA-1 and no backfill is queued or running.
pub async fn queue_sha1_backfill(app: &App) -> Result<bool> {
    let tx = crate::db::begin_write(&app.db).await?;
    let needed = lacking().limit(1).count(&tx).await? > 0;
    let alive = entity::job::Entity::find()
        .filter(entity::job::Column::Kind.eq(SHA1_BACKFILL_JOB))
        .filter(entity::job::Column::State.is_in([crate::jobs::QUEUED, crate::jobs::RUNNING]))
        .count(&tx)
        .await?
        > 0;
    let queue = needed && !alive;
    if queue {
        crate::jobs::enqueue(&tx, SHA1_BACKFILL_JOB, json!({})).await?;
    }
    tx.commit().await?;
    Ok(queue)
}

/// Where a content's bytes are in `state`.
fn location(
    app: &App,
    model: &content::Model,
    state: ContentState,
) -> Option<(Arc<dyn ObjectStore>, object_store::path::Path)> {
    match state {
        ContentState::Promoted => {
            let sha256 = model.sha256.as_deref()?;
            Some((app.stores.repository.clone(), crate::storage::repository_key(sha256)))
        }
        ContentState::Quarantined => Some((app.stores.staging.clone(), crate::storage::quarantine_key(model.id))),
        ContentState::Staged | ContentState::Scanning | ContentState::Clean | ContentState::ScanFailed => {
            Some((app.stores.staging.clone(), crate::storage::staging_key(model.id)))
        }
        _ => None,
    }
}

/// Hash one object as it streams: (sha256, sha1), or None when it is gone.
async fn hash_object(store: &dyn ObjectStore, key: &object_store::path::Path) -> Result<Option<(String, String)>> {
    let unavailable =
        |e: &dyn std::fmt::Display| Error::Unavailable(format!("reading {key} to compute its SHA-1: {e}"));
    let object = match store.get(key).await {
        Ok(object) => object,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(err) => return Err(unavailable(&err)),
    };
    let mut sha256 = Sha256::new();
    let mut sha1 = Sha1::new();
    let mut stream = crate::storage::object_stream(object, crate::storage::BULK_CHUNK);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| unavailable(&e))?;
        sha256.update(&chunk);
        sha1.update(&chunk);
    }
    Ok(Some((hex::encode(sha256.finalize()), hex::encode(sha1.finalize()))))
}

/// The SHA-1 of `model`'s bytes, read from wherever its state keeps them;
/// read again once if the content moved meanwhile (a promotion deletes the
/// staged object). None when the object is gone or hashes to another
/// SHA-256 than the row says.
async fn sha1_of(app: &App, mut model: content::Model) -> Result<Option<(Uuid, String, String)>> {
    for _ in 0..2 {
        let state = ContentState::parse(&model.state)?;
        let Some((store, key)) = location(app, &model, state) else { return Ok(None) };
        match hash_object(store.as_ref(), &key).await? {
            Some((sha256, sha1)) if Some(&sha256) == model.sha256.as_ref() => {
                return Ok(Some((model.id, sha256, sha1)));
            }
            Some((sha256, _)) => {
                tracing::error!(content = %model.id, %key, actual = %sha256, expected = ?model.sha256, "stored object does not hash to its content's SHA-256; no SHA-1 written");
                return Ok(None);
            }
            None => {
                let Some(now) = content::Entity::find_by_id(model.id).one(&app.db).await? else { return Ok(None) };
                if now.state == model.state {
                    break;
                }
                model = now;
            }
        }
    }
    tracing::warn!(content = %model.id, state = %model.state, "no stored object to compute the SHA-1 of");
    Ok(None)
}

/// One run of `content.sha1_backfill`: every stored content without a
/// SHA-1, in batches of [`BATCH`] by id, each object streamed once. Each
/// row filled is audited (`content.sha1_backfill`, by the system) and
/// published as a content change, in its batch's transaction.
pub async fn backfill_sha1(app: &App) -> Result<Backfilled> {
    let ctx = Ctx::system("sha1-backfill");
    let mut done = Backfilled::default();
    let mut after: Option<Uuid> = None;
    loop {
        let mut query = lacking().order_by_asc(content::Column::Id).limit(BATCH);
        if let Some(after) = after {
            query = query.filter(content::Column::Id.gt(after));
        }
        let batch = query.all(&app.db).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id);
        let mut hashed = Vec::with_capacity(batch.len());
        for model in batch {
            match sha1_of(app, model).await? {
                Some(found) => hashed.push(found),
                None => done.skipped += 1,
            }
        }
        if hashed.is_empty() {
            continue;
        }
        let mut tx = WriteTx::begin(app).await?;
        for (id, sha256, sha1) in hashed {
            let set = content::Entity::update_many()
                .col_expr(content::Column::Sha1, Expr::value(sha1.clone()))
                .filter(content::Column::Id.eq(id))
                .filter(content::Column::Sha1.is_null())
                .filter(content::Column::Sha256.eq(sha256))
                .exec(tx.conn())
                .await?;
            if set.rows_affected == 1 {
                tx.audit(
                    &ctx,
                    "content.sha1_backfill",
                    ResourceKind::Content,
                    &id.to_string(),
                    json!({ "sha1": sha1 }),
                )
                .await?;
                tx.notify(Event::ContentChanged(id));
                done.filled += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(done)
}
