//! `command`: a remote command (reboot, restart the agent, a custom one)
//! to one device; a group command fans out to rows sharing a batch id.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    string, text, text_null, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Command {
    Table,
    Id,
    BatchId,
    DeviceId,
    Name,
    Args,
    State,
    Result,
    Message,
    ExpiresAt,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
    DeliveredAt,
    FinishedAt,
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
                    .table(Command::Table)
                    .col(uuid(Command::Id).primary_key())
                    .col(uuid(Command::BatchId))
                    .col(uuid(Command::DeviceId))
                    .col(string(Command::Name))
                    // JSON.
                    .col(text(Command::Args))
                    .col(string(Command::State))
                    // JSON, as the device reported it.
                    .col(text_null(Command::Result))
                    .col(text_null(Command::Message))
                    .col(timestamp_with_time_zone(Command::ExpiresAt))
                    .col(string(Command::CreatedBy))
                    .col(timestamp_with_time_zone(Command::CreatedAt))
                    .col(timestamp_with_time_zone(Command::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Command::DeliveredAt))
                    .col(timestamp_with_time_zone_null(Command::FinishedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_command_device")
                            .from(Command::Table, Command::DeviceId)
                            .to(Device::Table, Device::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("idx_command_device_state", [Command::DeviceId, Command::State]),
            ("idx_command_batch_state", [Command::BatchId, Command::State]),
            ("idx_command_state_expires", [Command::State, Command::ExpiresAt]),
        ] {
            let mut index = Index::create().name(name).table(Command::Table).to_owned();
            for col in cols {
                index.col(col);
            }
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Command::Table).to_owned()).await
    }
}
