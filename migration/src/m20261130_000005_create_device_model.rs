//! `device_model`: the model numbers devices, groups and packages refer to.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string, string_null, text_null, timestamp_with_time_zone, uuid};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DeviceModel {
    Table,
    Id,
    Name,
    Manufacturer,
    Description,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on every backend (SQLite DDL is transactional too).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DeviceModel::Table)
                    .col(uuid(DeviceModel::Id).primary_key())
                    .col(string(DeviceModel::Name))
                    .col(string_null(DeviceModel::Manufacturer))
                    .col(text_null(DeviceModel::Description))
                    .col(string(DeviceModel::CreatedBy))
                    .col(timestamp_with_time_zone(DeviceModel::CreatedAt))
                    .col(timestamp_with_time_zone(DeviceModel::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_device_model_name")
                    .table(DeviceModel::Table)
                    .col(DeviceModel::Name)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(DeviceModel::Table).to_owned()).await
    }
}
