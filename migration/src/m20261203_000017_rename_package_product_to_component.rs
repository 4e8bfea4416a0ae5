//! The installed component is `component` everywhere: devices always said
//! so (`device_installed.component`), packages said `product`. The column
//! and its (component, version) index are renamed; the `otau_info` tag keeps its
//! ExoSense key `product`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Package {
    Table,
    Product,
    Component,
    Version,
}

/// Rename column `from` to `to`, and its index `idx_package_<from>_version`
/// with it (SQLite cannot rename an index: dropped and made again).
async fn rename(manager: &SchemaManager<'_>, from: Package, to: Package) -> Result<(), DbErr> {
    let index = |col: Package| format!("idx_package_{}_version", col.to_string());
    manager.drop_index(Index::drop().name(index(from)).table(Package::Table).to_owned()).await?;
    manager.alter_table(Table::alter().table(Package::Table).rename_column(from, to).to_owned()).await?;
    manager
        .create_index(Index::create().name(index(to)).table(Package::Table).col(to).col(Package::Version).to_owned())
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rename(manager, Package::Product, Package::Component).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rename(manager, Package::Component, Package::Product).await
    }
}
