//! The ExoSense way to create a package: `createContent` with an
//! `otau_info` tag (`service::content` calls in here). The tags it ends
//! with are the ones `createSoftwarePackage` writes, so parsing and checks
//! stay shared in the parent; what is ExoSense's own is binding the
//! payload's file names to uploaded contents.

use std::collections::BTreeMap;

use entity::content;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{FILES_TAG, OTAU_INFO_TAG, check_promoted, is_link, parse_otau_info};
use crate::error::{Error, Result};
use crate::service::content::ContentState;

/// Complete the tags of a content created with an `otau_info` tag: the
/// payload's file names are bound to the newest PROMOTED content of that
/// name (of the same product id, when the holder has one) in an
/// `otadepot.files` tag, unless the caller gave one.
pub(crate) async fn bind_exosense_files(
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
