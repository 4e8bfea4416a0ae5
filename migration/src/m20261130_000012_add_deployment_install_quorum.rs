//! `deployment.install_quorum_percent`: a COORDINATED deployment releases
//! the install once this share of its targets has downloaded (null: all).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::integer_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Deployment {
    Table,
    InstallQuorumPercent,
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
                    .add_column(integer_null(Deployment::InstallQuorumPercent))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(Deployment::Table).drop_column(Deployment::InstallQuorumPercent).to_owned(),
            )
            .await
    }
}
