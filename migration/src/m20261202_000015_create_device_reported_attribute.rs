//! `device_reported_attribute`: what a device says about itself (its
//! inventory, its enrollment), kept apart from `device_attribute`, which
//! only operators write (registration, CSV import). A device could
//! otherwise move itself into a dynamic group defined on an operator
//! attribute.
//!
//! Existing `device_attribute` rows stay operator attributes: rows that a
//! device's inventory wrote cannot be told from an operator's, and dynamic
//! groups were defined on them, so the safe reading keeps every group's
//! membership as it was. Devices write their reports here from now on.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string, uuid};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DeviceReportedAttribute {
    Table,
    DeviceId,
    Key,
    Value,
}

#[derive(DeriveIden)]
enum Device {
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
        manager
            .create_table(
                Table::create()
                    .table(DeviceReportedAttribute::Table)
                    .col(uuid(DeviceReportedAttribute::DeviceId))
                    .col(string(DeviceReportedAttribute::Key))
                    .col(string(DeviceReportedAttribute::Value))
                    .primary_key(
                        Index::create().col(DeviceReportedAttribute::DeviceId).col(DeviceReportedAttribute::Key),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_reported_attribute_device")
                            .from(DeviceReportedAttribute::Table, DeviceReportedAttribute::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_device_reported_attribute_key_value")
                    .table(DeviceReportedAttribute::Table)
                    .col(DeviceReportedAttribute::Key)
                    .col(DeviceReportedAttribute::Value)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(DeviceReportedAttribute::Table).to_owned()).await
    }
}
