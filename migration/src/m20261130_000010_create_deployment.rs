//! `deployment`, `device_update` and `installation`: packages applied to
//! devices, each device's progress, and what devices have installed.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    boolean, integer, integer_null, string, string_null, text, text_null, timestamp_with_time_zone,
    timestamp_with_time_zone_null, uuid, uuid_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Deployment {
    Table,
    Id,
    Name,
    PackageId,
    GroupId,
    Mode,
    State,
    MaxInFlight,
    Phases,
    CurrentPhase,
    FailureThresholdPercent,
    StartAt,
    ExpiresAt,
    InstallReleased,
    Reason,
    ReconcileJobId,
    TargetCount,
    SkippedCount,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum DeviceUpdate {
    Table,
    Id,
    DeploymentId,
    DeviceId,
    State,
    SkipReason,
    Progress,
    ErrorCode,
    Message,
    CancelAcknowledged,
    ReleasedAt,
    FinishedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Installation {
    Table,
    Id,
    DeviceId,
    Component,
    Version,
    PackageId,
    DeploymentId,
    Source,
    InstalledAt,
}

#[derive(DeriveIden)]
enum Package {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum DeviceGroup {
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
                    .table(Deployment::Table)
                    .col(uuid(Deployment::Id).primary_key())
                    .col(string(Deployment::Name))
                    .col(uuid(Deployment::PackageId))
                    .col(uuid_null(Deployment::GroupId))
                    .col(string(Deployment::Mode))
                    .col(string(Deployment::State))
                    .col(integer_null(Deployment::MaxInFlight))
                    .col(text(Deployment::Phases))
                    .col(integer(Deployment::CurrentPhase))
                    .col(integer_null(Deployment::FailureThresholdPercent))
                    .col(timestamp_with_time_zone_null(Deployment::StartAt))
                    .col(timestamp_with_time_zone_null(Deployment::ExpiresAt))
                    .col(boolean(Deployment::InstallReleased))
                    .col(text_null(Deployment::Reason))
                    .col(uuid_null(Deployment::ReconcileJobId))
                    .col(integer(Deployment::TargetCount))
                    .col(integer(Deployment::SkippedCount))
                    .col(string(Deployment::CreatedBy))
                    .col(timestamp_with_time_zone(Deployment::CreatedAt))
                    .col(timestamp_with_time_zone(Deployment::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Deployment::FinishedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_deployment_package")
                            .from(Deployment::Table, Deployment::PackageId)
                            .to(Package::Table, Package::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_deployment_group")
                            .from(Deployment::Table, Deployment::GroupId)
                            .to(DeviceGroup::Table, DeviceGroup::Id)
                            .on_delete(ForeignKeyAction::SetNull),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_deployment_state", Deployment::State),
            ("idx_deployment_package", Deployment::PackageId),
            ("idx_deployment_group", Deployment::GroupId),
        ] {
            manager.create_index(Index::create().name(name).table(Deployment::Table).col(col).to_owned()).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(DeviceUpdate::Table)
                    .col(uuid(DeviceUpdate::Id).primary_key())
                    .col(uuid(DeviceUpdate::DeploymentId))
                    .col(uuid(DeviceUpdate::DeviceId))
                    .col(string(DeviceUpdate::State))
                    .col(string_null(DeviceUpdate::SkipReason))
                    .col(integer(DeviceUpdate::Progress))
                    .col(string_null(DeviceUpdate::ErrorCode))
                    .col(text_null(DeviceUpdate::Message))
                    .col(boolean(DeviceUpdate::CancelAcknowledged))
                    .col(timestamp_with_time_zone_null(DeviceUpdate::ReleasedAt))
                    .col(timestamp_with_time_zone_null(DeviceUpdate::FinishedAt))
                    .col(timestamp_with_time_zone(DeviceUpdate::CreatedAt))
                    .col(timestamp_with_time_zone(DeviceUpdate::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_update_deployment")
                            .from(DeviceUpdate::Table, DeviceUpdate::DeploymentId)
                            .to(Deployment::Table, Deployment::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_device_update_device")
                            .from(DeviceUpdate::Table, DeviceUpdate::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_device_update_deployment_device")
                    .table(DeviceUpdate::Table)
                    .col(DeviceUpdate::DeploymentId)
                    .col(DeviceUpdate::DeviceId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("idx_device_update_deployment_state", [DeviceUpdate::DeploymentId, DeviceUpdate::State]),
            ("idx_device_update_device_state", [DeviceUpdate::DeviceId, DeviceUpdate::State]),
        ] {
            let mut index = Index::create().name(name).table(DeviceUpdate::Table).to_owned();
            for col in cols {
                index.col(col);
            }
            manager.create_index(index).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Installation::Table)
                    .col(uuid(Installation::Id).primary_key())
                    .col(uuid(Installation::DeviceId))
                    .col(string(Installation::Component))
                    .col(string(Installation::Version))
                    .col(uuid_null(Installation::PackageId))
                    .col(uuid_null(Installation::DeploymentId))
                    .col(string(Installation::Source))
                    .col(timestamp_with_time_zone(Installation::InstalledAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_installation_device")
                            .from(Installation::Table, Installation::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_installation_device")
                    .table(Installation::Table)
                    .col(Installation::DeviceId)
                    .col(Installation::InstalledAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Installation::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(DeviceUpdate::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Deployment::Table).to_owned()).await
    }
}
