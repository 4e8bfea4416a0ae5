//! `device_update.ddi_offer`: how a hawkBit DDI device was last offered
//! the update, `skip` (a held install, to a device that downloads without
//! installing) or `forced`/`attempt`; none until a DDI device fetched it.
//! A `closed` feedback means "downloaded" after a `skip` and "installed"
//! after the others, whatever the deployment has done since.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::string_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DeviceUpdate {
    Table,
    DdiOffer,
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
                Table::alter().table(DeviceUpdate::Table).add_column(string_null(DeviceUpdate::DdiOffer)).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(DeviceUpdate::Table).drop_column(DeviceUpdate::DdiOffer).to_owned())
            .await
    }
}
