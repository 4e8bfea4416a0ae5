//! `deployment.maintenance_window`: the rollout policy's optional
//! maintenance window (JSON: `days`, `start`, `duration_minutes`,
//! `timezone`), when devices may start installing; none before this.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::text_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Deployment {
    Table,
    MaintenanceWindow,
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
                Table::alter().table(Deployment::Table).add_column(text_null(Deployment::MaintenanceWindow)).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Deployment::Table).drop_column(Deployment::MaintenanceWindow).to_owned())
            .await
    }
}
