//! `device_group.auto_deployment_id`: the group's current package, as a
//! deployment that devices joining the group are added to.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::uuid_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DeviceGroup {
    Table,
    AutoDeploymentId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on every backend (SQLite DDL is transactional too).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(DeviceGroup::Table)
                    .add_column(uuid_null(DeviceGroup::AutoDeploymentId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(DeviceGroup::Table).drop_column(DeviceGroup::AutoDeploymentId).to_owned())
            .await
    }
}
