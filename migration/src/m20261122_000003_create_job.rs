//! `job`: the durable work queue.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    integer, json_binary, string, string_null, text_null, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Job {
    Table,
    Id,
    Kind,
    Payload,
    State,
    RunAt,
    Attempts,
    MaxAttempts,
    LastError,
    LockedBy,
    LockedUntil,
    CreatedAt,
    UpdatedAt,
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
                    .table(Job::Table)
                    .col(uuid(Job::Id).primary_key())
                    .col(string(Job::Kind))
                    .col(json_binary(Job::Payload))
                    .col(string(Job::State))
                    .col(timestamp_with_time_zone(Job::RunAt))
                    .col(integer(Job::Attempts))
                    .col(integer(Job::MaxAttempts))
                    .col(text_null(Job::LastError))
                    .col(string_null(Job::LockedBy))
                    .col(timestamp_with_time_zone_null(Job::LockedUntil))
                    .col(timestamp_with_time_zone(Job::CreatedAt))
                    .col(timestamp_with_time_zone(Job::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("idx_job_claim").table(Job::Table).col(Job::State).col(Job::RunAt).to_owned(),
            )
            .await?;
        manager.create_index(Index::create().name("idx_job_kind").table(Job::Table).col(Job::Kind).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Job::Table).to_owned()).await
    }
}
