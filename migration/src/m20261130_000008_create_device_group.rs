//! `device_group` and `device_group_member`: devices of one model, listed
//! (static) or matched by a filter (dynamic).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string, text, text_null, timestamp_with_time_zone, uuid};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DeviceGroup {
    Table,
    Id,
    Name,
    Description,
    ModelId,
    Kind,
    Filter,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum DeviceGroupMember {
    Table,
    GroupId,
    DeviceId,
    AddedAt,
}

#[derive(DeriveIden)]
enum DeviceModel {
    Table,
    Id,
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
                    .table(DeviceGroup::Table)
                    .col(uuid(DeviceGroup::Id).primary_key())
                    .col(string(DeviceGroup::Name))
                    .col(text(DeviceGroup::Description))
                    .col(uuid(DeviceGroup::ModelId))
                    .col(string(DeviceGroup::Kind))
                    .col(text_null(DeviceGroup::Filter))
                    .col(string(DeviceGroup::CreatedBy))
                    .col(timestamp_with_time_zone(DeviceGroup::CreatedAt))
                    .col(timestamp_with_time_zone(DeviceGroup::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_group_model")
                            .from(DeviceGroup::Table, DeviceGroup::ModelId)
                            .to(DeviceModel::Table, DeviceModel::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_device_group_name")
                    .table(DeviceGroup::Table)
                    .col(DeviceGroup::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeviceGroupMember::Table)
                    .col(uuid(DeviceGroupMember::GroupId))
                    .col(uuid(DeviceGroupMember::DeviceId))
                    .col(timestamp_with_time_zone(DeviceGroupMember::AddedAt))
                    .primary_key(Index::create().col(DeviceGroupMember::GroupId).col(DeviceGroupMember::DeviceId))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_group_member_group")
                            .from(DeviceGroupMember::Table, DeviceGroupMember::GroupId)
                            .to(DeviceGroup::Table, DeviceGroup::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_group_member_device")
                            .from(DeviceGroupMember::Table, DeviceGroupMember::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_device_group_member_device")
                    .table(DeviceGroupMember::Table)
                    .col(DeviceGroupMember::DeviceId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(DeviceGroupMember::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(DeviceGroup::Table).to_owned()).await
    }
}
