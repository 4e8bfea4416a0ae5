//! `package`, `package_model` and `package_file`: the typed index of
//! software packages. The manifest itself is the `otau_info` tag of the
//! package's holder content; these rows can be rebuilt from the tags.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    boolean, integer, string, text, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
};
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Package {
    Table,
    Id,
    ContentId,
    Product,
    Name,
    Version,
    VersionKey,
    Type,
    Description,
    Deprecated,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum PackageModel {
    Table,
    PackageId,
    DeviceModelId,
}

#[derive(DeriveIden)]
enum PackageFile {
    Table,
    PackageId,
    Position,
    ContentId,
    Name,
}

#[derive(DeriveIden)]
enum Content {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum DeviceModel {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on every backend (SQLite DDL is transactional too).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The version sort key is ASCII compared byte by byte: SQLite's
        // default collation does that; PostgreSQL needs "C" (a locale
        // collation would ignore the punctuation in it).
        let mut version_key = string(Package::VersionKey);
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            version_key.extra("COLLATE \"C\"");
        }
        manager
            .create_table(
                Table::create()
                    .table(Package::Table)
                    .col(uuid(Package::Id).primary_key())
                    .col(uuid(Package::ContentId))
                    .col(string(Package::Product))
                    .col(string(Package::Name))
                    .col(string(Package::Version))
                    .col(version_key)
                    .col(string(Package::Type))
                    .col(text(Package::Description))
                    .col(boolean(Package::Deprecated))
                    .col(string(Package::CreatedBy))
                    .col(timestamp_with_time_zone(Package::CreatedAt))
                    .col(timestamp_with_time_zone(Package::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Package::DeletedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_package_content")
                            .from(Package::Table, Package::ContentId)
                            .to(Content::Table, Content::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_package_content")
                    .table(Package::Table)
                    .col(Package::ContentId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("idx_package_product_version", vec![Package::Product, Package::Version]),
            ("idx_package_version_key", vec![Package::VersionKey, Package::Id]),
            ("idx_package_name", vec![Package::Name]),
        ] {
            let mut index = Index::create().name(name).table(Package::Table).to_owned();
            for col in cols {
                index.col(col);
            }
            manager.create_index(index).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(PackageModel::Table)
                    .col(uuid(PackageModel::PackageId))
                    .col(uuid(PackageModel::DeviceModelId))
                    .primary_key(Index::create().col(PackageModel::PackageId).col(PackageModel::DeviceModelId))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_package_model_package")
                            .from(PackageModel::Table, PackageModel::PackageId)
                            .to(Package::Table, Package::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_package_model_device_model")
                            .from(PackageModel::Table, PackageModel::DeviceModelId)
                            .to(DeviceModel::Table, DeviceModel::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_package_model_device_model")
                    .table(PackageModel::Table)
                    .col(PackageModel::DeviceModelId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PackageFile::Table)
                    .col(uuid(PackageFile::PackageId))
                    .col(integer(PackageFile::Position))
                    .col(uuid(PackageFile::ContentId))
                    .col(string(PackageFile::Name))
                    .primary_key(Index::create().col(PackageFile::PackageId).col(PackageFile::Position))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_package_file_package")
                            .from(PackageFile::Table, PackageFile::PackageId)
                            .to(Package::Table, Package::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_package_file_content")
                            .from(PackageFile::Table, PackageFile::ContentId)
                            .to(Content::Table, Content::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_package_file_content")
                    .table(PackageFile::Table)
                    .col(PackageFile::ContentId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(PackageFile::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(PackageModel::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Package::Table).to_owned()).await
    }
}
