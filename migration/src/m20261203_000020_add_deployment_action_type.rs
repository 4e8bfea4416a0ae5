//! `deployment.action_type`: FORCED (the default, what every deployment
//! did before) or SOFT, the hawkBit DDI action type a device is told
//! (SOFT: it may ask its user before it installs).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::string;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Deployment {
    Table,
    ActionType,
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
                    .table(Deployment::Table)
                    .add_column(string(Deployment::ActionType).default("FORCED"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Deployment::Table).drop_column(Deployment::ActionType).to_owned())
            .await
    }
}
