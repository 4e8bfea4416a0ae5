//! The sweep for abandoned uploads: what an upload left UPLOADING and
//! nobody is finishing becomes uploadable again (the job
//! `content.release_abandoned_uploads`, `jobs/tasks/`).
//!
//! A module of its own because it reads both kinds of upload: the one-shot
//! ones (`service::content`) and the resumable ones (`service::tus`, which
//! is built on content). Rule: a content is released only when neither
//! kind is alive; the update is conditional on the row as read.

use chrono::Utc;
use entity::content;
use object_store::ObjectStoreExt;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::json;

use crate::app::{App, Event};
use crate::auth::Ctx;
use crate::error::{ResourceKind, Result};
use crate::service::content::ContentState;
use crate::service::{WriteTx, tus};

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
        if tus::is_busy(app, candidate.id) {
            continue;
        }
        let tus = tus::last_activity(app, candidate.id).await?;
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
            ResourceKind::Content,
            &candidate.id.to_string(),
            json!({ "reason": reason, "idle_since": candidate.updated_at }),
        )
        .await?;
        tx.notify(Event::ContentChanged(candidate.id));
        tx.commit().await?;
        if tus.is_some() {
            tus::discard(app, candidate.id).await;
        }
        let _ = app.stores.staging.delete(&crate::storage::staging_key(candidate.id)).await;
        released += 1;
    }
    Ok(released)
}
