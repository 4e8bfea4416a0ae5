//! Scanning and promotion: what the `content.scan` job does
//! (`jobs/tasks/content_scan.rs` decodes the payload and calls [`run_job`]).
//!
//! STAGED → SCANNING → CLEAN → PROMOTED, or QUARANTINED, or SCAN_FAILED.
//! The handler reads the content's state and does the next step, so a job
//! run again after a crash picks up where the last one stopped:
//! - SCANNING: scan (again) from the staged object;
//! - CLEAN: copy to the repository (skipped if the object is already
//!   there), mark PROMOTED, then delete the staged object;
//! - PROMOTED: delete a staged object a crash left behind.
//!
//! Rule: PROMOTED is only ever reached from CLEAN, and CLEAN only from a
//! clean clamd verdict (or the explicitly disabled scanner, recorded as
//! SKIPPED).

use bytes::Bytes;
use chrono::Utc;
use entity::content;
use futures::StreamExt;
use object_store::{ObjectStoreExt, WriteMultipart};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::content::{ContentState, transition};
use crate::app::App;
use crate::auth::Ctx;
use crate::config::Promotion;
use crate::error::{Error, ResourceKind, Result};
use crate::scan::{ScanError, Verdict};
use crate::service::WriteTx;

const SCANNER: &str = "scanner";

/// One run of the job `content.scan` (`jobs/tasks/content_scan.rs`): every
/// remaining step for one content; `last_attempt` makes a clamd failure
/// final (SCAN_FAILED). `promote` is an operator's `promoteContent` (needed
/// with manual promotion).
pub async fn run_job(app: &App, id: Uuid, last_attempt: bool, promote: bool) -> Result<()> {
    let ctx = Ctx::system(SCANNER);
    let mut first = true;
    loop {
        let current = load(app, id).await?;
        match ContentState::parse(&current.state)? {
            // A (re)scan starts here; a SCAN_FAILED reached during this run
            // is final until someone asks for a rescan.
            from @ (ContentState::Staged | ContentState::ScanFailed) if first => {
                let mut tx = WriteTx::begin(app).await?;
                transition(&mut tx, id, from, ContentState::Scanning).await?;
                tx.commit().await?;
            }
            ContentState::Scanning => scan(app, &ctx, &current, last_attempt).await?,
            ContentState::Clean if promote || app.config.content.promotion == Promotion::Auto => {
                promote_clean(app, &ctx, &current).await?;
            }
            ContentState::Promoted => {
                // A crash between promotion and cleanup left the staged copy.
                let _ = app.stores.staging.delete(&crate::storage::staging_key(id)).await;
                return Ok(());
            }
            // Nothing (more) to do: not uploaded, failed, quarantined,
            // deleted, or CLEAN waiting for manual promotion.
            _ => return Ok(()),
        }
        first = false;
    }
}

async fn load(app: &App, id: Uuid) -> Result<content::Model> {
    content::Entity::find_by_id(id)
        .one(&app.db)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Content, id.to_string()))
}

async fn scan(app: &App, ctx: &Ctx, current: &content::Model, last_attempt: bool) -> Result<()> {
    let Some(clamd) = &app.clamd else {
        tracing::warn!(content = %current.id, "scanner disabled: content NOT scanned, recorded as SKIPPED");
        return record_verdict(app, ctx, current, ContentState::Clean, "SKIPPED", None, None).await;
    };
    let key = crate::storage::staging_key(current.id);
    let object = match app.stores.staging.get(&key).await {
        Ok(object) => object,
        Err(object_store::Error::NotFound { .. }) => {
            let reason = "the staged object is missing".to_owned();
            return record_verdict(app, ctx, current, ContentState::ScanFailed, "ERROR", None, Some(reason)).await;
        }
        Err(err) => return Err(Error::Unavailable(format!("reading the staged object: {err}"))),
    };
    let stream = crate::storage::object_stream(object, crate::storage::BULK_CHUNK);
    match clamd.scan(stream).await {
        Ok(Verdict::Clean) => record_verdict(app, ctx, current, ContentState::Clean, "CLEAN", None, None).await,
        Ok(Verdict::Infected(signature)) => quarantine(app, ctx, current, &signature).await,
        // Over a limit (`Heuristics.Limits.Exceeded…`, StreamMaxLength):
        // not scanned whole, never clean.
        Err(ScanError::Refused(reason) | ScanError::OverLimit { detail: reason, .. }) => {
            record_verdict(app, ctx, current, ContentState::ScanFailed, "ERROR", None, Some(reason)).await
        }
        Err(ScanError::Unavailable(reason)) if last_attempt => {
            record_verdict(app, ctx, current, ContentState::ScanFailed, "ERROR", None, Some(reason)).await
        }
        // Retried by the job queue with backoff.
        Err(ScanError::Unavailable(reason)) => Err(Error::Unavailable(reason)),
    }
}

async fn record_verdict(
    app: &App,
    ctx: &Ctx,
    current: &content::Model,
    to: ContentState,
    verdict: &str,
    signature: Option<&str>,
    error: Option<String>,
) -> Result<()> {
    let mut tx = WriteTx::begin(app).await?;
    transition(&mut tx, current.id, ContentState::Scanning, to).await?;
    content::Entity::update_many()
        .col_expr(content::Column::ScanVerdict, Expr::value(verdict))
        .col_expr(content::Column::ScanSignature, Expr::value(signature.map(str::to_owned)))
        .col_expr(content::Column::ScanError, Expr::value(error.clone()))
        .col_expr(content::Column::ScannedAt, Expr::value(Utc::now()))
        .filter(content::Column::Id.eq(current.id))
        .exec(tx.conn())
        .await?;
    let action = if to == ContentState::ScanFailed { "content.scan_failed" } else { "content.scan" };
    tx.audit(
        ctx,
        action,
        ResourceKind::Content,
        &current.id.to_string(),
        json!({ "verdict": verdict, "error": error }),
    )
    .await?;
    tx.commit().await?;
    if to == ContentState::ScanFailed {
        // An operator must hear of it: the content will never be promoted.
        tracing::warn!(
            content = %current.id,
            reason = error.as_deref().unwrap_or_default(),
            "scan failed: the content stays SCAN_FAILED and is not promoted (rescanContent retries it once the cause is fixed)"
        );
    }
    Ok(())
}

/// Move the object to `quarantine/<id>` (never served) and record why.
async fn quarantine(app: &App, ctx: &Ctx, current: &content::Model, signature: &str) -> Result<()> {
    let from = crate::storage::staging_key(current.id);
    let to = crate::storage::quarantine_key(current.id);
    app.stores.staging.copy(&from, &to).await.map_err(|e| Error::Unavailable(format!("quarantining: {e}")))?;
    let mut tx = WriteTx::begin(app).await?;
    transition(&mut tx, current.id, ContentState::Scanning, ContentState::Quarantined).await?;
    content::Entity::update_many()
        .col_expr(content::Column::ScanVerdict, Expr::value("INFECTED"))
        .col_expr(content::Column::ScanSignature, Expr::value(signature))
        .col_expr(content::Column::ScannedAt, Expr::value(Utc::now()))
        .col_expr(content::Column::StagingKey, Expr::value(to.to_string()))
        .filter(content::Column::Id.eq(current.id))
        .exec(tx.conn())
        .await?;
    tx.audit(
        ctx,
        "content.quarantine",
        ResourceKind::Content,
        &current.id.to_string(),
        json!({ "signature": signature }),
    )
    .await?;
    tx.commit().await?;
    tracing::warn!(content = %current.id, signature, "clamd found malware: the content is QUARANTINED");
    let _ = app.stores.staging.delete(&from).await;
    Ok(())
}

/// CLEAN → PROMOTED: copy into the content-addressed repository (checking
/// the bytes still hash to what was scanned), commit, then drop the staged
/// object.
async fn promote_clean(app: &App, ctx: &Ctx, current: &content::Model) -> Result<()> {
    let sha256 = current
        .sha256
        .clone()
        .ok_or_else(|| Error::internal(anyhow::anyhow!("clean content {} has no sha256", current.id)))?;
    let target = crate::storage::repository_key(&sha256);
    let exists = match app.stores.repository.head(&target).await {
        Ok(meta) => i64::try_from(meta.size).ok() == Some(current.length),
        Err(object_store::Error::NotFound { .. }) => false,
        Err(err) => return Err(Error::Unavailable(format!("repository store: {err}"))),
    };
    if !exists {
        copy_verified(app, current, &sha256, &target).await?;
    }
    let mut tx = WriteTx::begin(app).await?;
    transition(&mut tx, current.id, ContentState::Clean, ContentState::Promoted).await?;
    content::Entity::update_many()
        .col_expr(content::Column::RepositoryKey, Expr::value(target.to_string()))
        .col_expr(content::Column::StagingKey, Expr::value(Option::<String>::None))
        .filter(content::Column::Id.eq(current.id))
        .exec(tx.conn())
        .await?;
    tx.audit(
        ctx,
        "content.promote",
        ResourceKind::Content,
        &current.id.to_string(),
        json!({ "sha256": sha256, "deduplicated": exists }),
    )
    .await?;
    tx.commit().await?;
    let _ = app.stores.staging.delete(&crate::storage::staging_key(current.id)).await;
    Ok(())
}

async fn copy_verified(
    app: &App,
    current: &content::Model,
    sha256: &str,
    target: &object_store::path::Path,
) -> Result<()> {
    let unavailable = |what: &str, e: object_store::Error| Error::Unavailable(format!("{what}: {e}"));
    let source = app
        .stores
        .staging
        .get(&crate::storage::staging_key(current.id))
        .await
        .map_err(|e| unavailable("reading the staged object", e))?;
    let upload = app.stores.repository.put_multipart(target).await.map_err(|e| unavailable("repository store", e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
    let mut hasher = Sha256::new();
    let mut stream = crate::storage::object_stream(source, crate::storage::BULK_CHUNK);
    let copied: Result<()> = async {
        while let Some(chunk) = stream.next().await {
            let chunk: Bytes = chunk.map_err(|e| Error::Unavailable(format!("reading the staged object: {e}")))?;
            hasher.update(&chunk);
            writer.wait_for_capacity(2).await.map_err(|e| unavailable("repository store", e))?;
            writer.write(&chunk);
        }
        Ok(())
    }
    .await;
    if let Err(err) = copied {
        let _ = writer.abort().await;
        return Err(err);
    }
    let actual = hex::encode(hasher.finalize());
    if actual != sha256 {
        let _ = writer.abort().await;
        return Err(Error::internal(anyhow::anyhow!(
            "staged object of {} hashes to {actual}, not the uploaded {sha256}",
            current.id
        )));
    }
    writer.finish().await.map_err(|e| unavailable("repository store", e))?;
    Ok(())
}
