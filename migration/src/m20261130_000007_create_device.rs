//! `device`, `device_attribute` and `device_installed`: the fleet, with
//! attributes and installed versions as rows (so group filters are plain,
//! indexed SQL on both backends).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    string, string_null, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid, uuid_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Device {
    Table,
    Id,
    EndpointId,
    Serial,
    ModelId,
    Status,
    CredentialHash,
    CredentialRotatedAt,
    GatewayId,
    LastSeenAt,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum DeviceAttribute {
    Table,
    DeviceId,
    Key,
    Value,
}

#[derive(DeriveIden)]
enum DeviceInstalled {
    Table,
    DeviceId,
    Component,
    Version,
    ReportedAt,
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
        manager
            .create_table(
                Table::create()
                    .table(Device::Table)
                    .col(uuid(Device::Id).primary_key())
                    .col(string(Device::EndpointId))
                    .col(string_null(Device::Serial))
                    .col(uuid(Device::ModelId))
                    .col(string(Device::Status))
                    .col(string(Device::CredentialHash))
                    .col(timestamp_with_time_zone(Device::CredentialRotatedAt))
                    .col(uuid_null(Device::GatewayId))
                    .col(timestamp_with_time_zone_null(Device::LastSeenAt))
                    .col(string(Device::CreatedBy))
                    .col(timestamp_with_time_zone(Device::CreatedAt))
                    .col(timestamp_with_time_zone(Device::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_model")
                            .from(Device::Table, Device::ModelId)
                            .to(DeviceModel::Table, DeviceModel::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_gateway")
                            .from(Device::Table, Device::GatewayId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_device_endpoint_id")
                    .table(Device::Table)
                    .col(Device::EndpointId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_device_model", Device::ModelId),
            ("idx_device_status", Device::Status),
            ("idx_device_gateway", Device::GatewayId),
            ("idx_device_last_seen", Device::LastSeenAt),
        ] {
            manager.create_index(Index::create().name(name).table(Device::Table).col(col).to_owned()).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(DeviceAttribute::Table)
                    .col(uuid(DeviceAttribute::DeviceId))
                    .col(string(DeviceAttribute::Key))
                    .col(string(DeviceAttribute::Value))
                    .primary_key(Index::create().col(DeviceAttribute::DeviceId).col(DeviceAttribute::Key))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_attribute_device")
                            .from(DeviceAttribute::Table, DeviceAttribute::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_device_attribute_key_value")
                    .table(DeviceAttribute::Table)
                    .col(DeviceAttribute::Key)
                    .col(DeviceAttribute::Value)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(DeviceInstalled::Table)
                    .col(uuid(DeviceInstalled::DeviceId))
                    .col(string(DeviceInstalled::Component))
                    .col(string(DeviceInstalled::Version))
                    .col(timestamp_with_time_zone(DeviceInstalled::ReportedAt))
                    .primary_key(Index::create().col(DeviceInstalled::DeviceId).col(DeviceInstalled::Component))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_installed_device")
                            .from(DeviceInstalled::Table, DeviceInstalled::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_device_installed_component_version")
                    .table(DeviceInstalled::Table)
                    .col(DeviceInstalled::Component)
                    .col(DeviceInstalled::Version)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(DeviceInstalled::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(DeviceAttribute::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Device::Table).to_owned()).await
    }
}
