//! What the repository holds, read by services that the package service
//! is built on: the package index (`package`, `package_file`,
//! `package_model`) as `service::content` and `service::deployment` need
//! it, and the names of the tags a package's holder content carries.
//!
//! Why a module of its own: `service::package` writes packages out of
//! contents (it calls `service::content`), so content cannot call back
//! into it to ask "is this content a package's file?". Such cross-table
//! reads live here instead, for every service to use.
//!
//! Rule: this module names only `entity/` and the error type: no other
//! service, no `App`, no authorization (its callers have authorized), and
//! it writes nothing.

use entity::{package, package_file, package_model};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, QueryTrait};
use uuid::Uuid;

use crate::error::{Error, ResourceKind, Result};

/// A package's manifest, ExoSense's `{"author", "product", "config_otau"}`.
pub const OTAU_INFO_TAG: &str = "otau_info";
/// Payload name → content id, for the uploaded files.
pub const FILES_TAG: &str = "otadepot.files";
/// The compatible device model ids.
pub const MODELS_TAG: &str = "otadepot.models";
pub const DEPRECATED_TAG: &str = "otadepot.deprecated";
/// Tags only otadepot writes on a package holder.
pub const RESERVED_TAGS: [&str; 4] = [OTAU_INFO_TAG, FILES_TAG, MODELS_TAG, DEPRECATED_TAG];

/// A package that is not deleted, or NOT_FOUND.
pub(crate) async fn live_package(conn: &impl ConnectionTrait, id: Uuid) -> Result<package::Model> {
    package::Entity::find_by_id(id)
        .filter(package::Column::DeletedAt.is_null())
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Package, id.to_string()))
}

/// A live, not deprecated package to deploy.
pub(crate) async fn deployable_package(conn: &impl ConnectionTrait, id: Uuid) -> Result<package::Model> {
    let row = live_package(conn, id).await?;
    if row.deprecated {
        return Err(Error::InvalidState(format!("package {} {} is deprecated", row.component, row.version)));
    }
    Ok(row)
}

/// The live package a holder content indexes, if any.
pub(crate) async fn package_of_holder(conn: &impl ConnectionTrait, content_id: Uuid) -> Result<Option<package::Model>> {
    Ok(package::Entity::find()
        .filter(package::Column::ContentId.eq(content_id))
        .filter(package::Column::DeletedAt.is_null())
        .one(conn)
        .await?)
}

/// Live packages whose payload holds `content_id`.
pub(crate) async fn packages_using_file(conn: &impl ConnectionTrait, content_id: Uuid) -> Result<Vec<package::Model>> {
    let ids = package_file::Entity::find()
        .select_only()
        .column(package_file::Column::PackageId)
        .filter(package_file::Column::ContentId.eq(content_id))
        .into_query();
    Ok(package::Entity::find()
        .filter(package::Column::Id.in_subquery(ids))
        .filter(package::Column::DeletedAt.is_null())
        .all(conn)
        .await?)
}

/// Whether any of `contents` is a file of a live package compatible with
/// `device_model` (what a device may download).
pub(crate) async fn files_for_model(
    conn: &impl ConnectionTrait,
    device_model: Uuid,
    contents: &[Uuid],
) -> Result<bool> {
    let for_model = package_model::Entity::find()
        .select_only()
        .column(package_model::Column::PackageId)
        .filter(package_model::Column::DeviceModelId.eq(device_model))
        .into_query();
    let live = package::Entity::find()
        .select_only()
        .column(package::Column::Id)
        .filter(package::Column::DeletedAt.is_null())
        .into_query();
    let count = package_file::Entity::find()
        .filter(package_file::Column::ContentId.is_in(contents.iter().copied()))
        .filter(package_file::Column::PackageId.in_subquery(for_model))
        .filter(package_file::Column::PackageId.in_subquery(live))
        .count(conn)
        .await?;
    Ok(count > 0)
}
