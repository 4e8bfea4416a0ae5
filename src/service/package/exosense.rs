//! The ExoSense way to create a package: `createContent` with an
//! `otau_info` tag ([`create_content`], which takes every `createContent`
//! and hands the plain ones to `service::content::create`). The tags it
//! ends with are the ones `createSoftwarePackage` writes, so parsing and
//! checks stay shared in the parent; what is ExoSense's own is binding the
//! payload's file names to uploaded contents.

use std::collections::BTreeMap;

use entity::content;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{FILES_TAG, OTAU_INFO_TAG, check_promoted, index, is_link, parse_otau_info};
use crate::app::App;
use crate::auth::{Ctx, Permission};
use crate::error::{Error, Result};
use crate::service::WriteTx;
use crate::service::content::{self as contents, Content, ContentState, NewContent, UploadForm};

/// `createContent`. With an `otau_info` tag the content is a package's
/// holder: the package is created with it, in the same transaction, which
/// needs PACKAGE_WRITE too; a holder of length 0 is PROMOTED at once, a
/// longer one awaits its upload like any content. Without one it is a
/// plain content.
pub async fn create_content(app: &App, ctx: &Ctx, input: NewContent) -> Result<(Content, UploadForm)> {
    if !input.tags.iter().any(|(name, _)| name == OTAU_INFO_TAG) {
        return contents::create(app, ctx, input).await;
    }
    ctx.require(Permission::ContentWrite)?;
    let mut input = contents::validate(app, input)?;
    ctx.require(Permission::PackageWrite)?;
    let state = if input.length == 0 { ContentState::Promoted } else { ContentState::AwaitingUpload };
    let mut tx = WriteTx::begin(app).await?;
    bind_exosense_files(tx.conn(), input.product_id.as_deref(), &mut input.tags).await?;
    let model = contents::insert_created(&mut tx, ctx, &input, state).await?;
    let tags: BTreeMap<String, String> = input.tags.into_iter().collect();
    index(&mut tx, ctx, &model, &tags).await?;
    tx.commit().await?;
    let form = contents::upload_form(app, &model);
    Ok((Content { state, tags, model }, form))
}

/// Complete the tags of a content created with an `otau_info` tag: the
/// payload's file names are bound to the newest PROMOTED content of that
/// name (of the same product id, when the holder has one) in an
/// `otadepot.files` tag, unless the caller gave one.
async fn bind_exosense_files(
    conn: &impl ConnectionTrait,
    product_id: Option<&str>,
    tags: &mut Vec<(String, String)>,
) -> Result<()> {
    if tags.iter().any(|(n, _)| n == FILES_TAG) {
        return Ok(());
    }
    let Some((_, raw)) = tags.iter().find(|(n, _)| n == OTAU_INFO_TAG) else { return Ok(()) };
    let info = parse_otau_info(raw)?;
    let mut files = BTreeMap::new();
    for (i, entry) in info.payload.iter().enumerate() {
        if is_link(entry) {
            continue;
        }
        let field = format!("otau_info.config_otau.payload[{i}]");
        let mut query = content::Entity::find()
            .filter(content::Column::Name.eq(entry.as_str()))
            .filter(content::Column::State.ne(ContentState::Deleted.as_str()));
        if let Some(product_id) = product_id {
            query = query.filter(
                Condition::any()
                    .add(content::Column::ProductId.eq(product_id))
                    .add(content::Column::ProductId.is_null()),
            );
        }
        let candidates = query.order_by_desc(content::Column::Id).all(conn).await?;
        let Some(chosen) =
            candidates.iter().find(|c| c.state == ContentState::Promoted.as_str()).or_else(|| candidates.first())
        else {
            return Err(Error::invalid(field, format!("no uploaded content is named {entry:?}")));
        };
        check_promoted(&field, chosen)?;
        files.insert(entry.clone(), chosen.id.to_string());
    }
    tags.push((FILES_TAG.to_owned(), serde_json::to_string(&files).map_err(Error::internal)?));
    Ok(())
}
