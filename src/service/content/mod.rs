//! Content: objects uploaded into the staging store, scanned, and promoted
//! into the repository that devices download from.
//!
//! Rule: the state machine below is the only way a content changes state
//! (`transition`), and nothing reaches PROMOTED without a CLEAN verdict.
//! The content name is metadata only: object keys come from `storage`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use entity::{content, content_tag};
use futures::{Stream, StreamExt};
use object_store::ObjectStoreExt;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Set};
use serde_json::json;
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::pagination::{Page, PageRequest, cursor};
use crate::service::{WriteTx, catalog};

mod download;
mod sha1_backfill;
mod upload;

pub use download::*;
pub use sha1_backfill::*;
pub use upload::*;

/// Job kind that scans a staged content.
pub const SCAN_JOB: &str = "content.scan";

/// The payload of a `content.scan` job (`service::scan` runs it).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ScanPayload {
    pub content_id: Uuid,
    /// An operator's `promoteContent` (needed with manual promotion).
    #[serde(default)]
    pub promote: bool,
}

pub(super) const UPLOAD_PURPOSE: &str = "content-upload";

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
    content::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Content, id.to_string()))
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

/// The payload of the `content.scan` job that `service::scan` runs.
fn scan_payload(content_id: Uuid, promote: bool) -> Result<serde_json::Value> {
    serde_json::to_value(ScanPayload { content_id, promote }).map_err(Error::internal)
}

fn store_error(err: object_store::Error) -> Error {
    Error::Unavailable(format!("the staging store failed: {err}"))
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
    for reserved in catalog::RESERVED_TAGS {
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
        ResourceKind::Content,
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
    if let Some(holder_of) = catalog::package_of_holder(tx.conn(), id).await? {
        return Err(Error::Conflict(format!(
            "content {id} holds the manifest of package {}; delete the package (deletePackage) instead",
            holder_of.id
        )));
    }
    let users = catalog::packages_using_file(tx.conn(), id).await?;
    if !users.is_empty() {
        let names: Vec<String> = users.iter().map(|p| format!("{} {} ({})", p.component, p.version, p.id)).collect();
        return Err(Error::Conflict(format!("content {id} is a file of package(s) {}", names.join(", "))));
    }
    transition_for_delete(&mut tx, id, from).await?;
    tx.audit(ctx, "content.delete", ResourceKind::Content, &id.to_string(), json!({ "state_before": from.as_str() }))
        .await?;
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
    crate::jobs::enqueue_at(tx.conn(), SCAN_JOB, scan_payload(id, false)?, Utc::now(), attempts).await?;
    tx.audit(ctx, "content.rescan", ResourceKind::Content, &id.to_string(), json!({})).await?;
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
    crate::jobs::enqueue_at(tx.conn(), SCAN_JOB, scan_payload(id, true)?, Utc::now(), app.config.scanner.max_attempts)
        .await?;
    tx.audit(ctx, "content.promote_requested", ResourceKind::Content, &id.to_string(), json!({})).await?;
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
