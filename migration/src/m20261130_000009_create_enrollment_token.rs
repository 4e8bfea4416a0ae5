//! `enrollment_token`: lets devices register themselves (as PENDING until
//! an operator approves them), for provisioning at the factory.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{string, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid, uuid_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EnrollmentToken {
    Table,
    Id,
    Name,
    ModelId,
    TokenHash,
    ExpiresAt,
    RevokedAt,
    CreatedBy,
    CreatedAt,
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
                    .table(EnrollmentToken::Table)
                    .col(uuid(EnrollmentToken::Id).primary_key())
                    .col(string(EnrollmentToken::Name))
                    .col(uuid_null(EnrollmentToken::ModelId))
                    .col(string(EnrollmentToken::TokenHash))
                    .col(timestamp_with_time_zone_null(EnrollmentToken::ExpiresAt))
                    .col(timestamp_with_time_zone_null(EnrollmentToken::RevokedAt))
                    .col(string(EnrollmentToken::CreatedBy))
                    .col(timestamp_with_time_zone(EnrollmentToken::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_enrollment_token_model")
                            .from(EnrollmentToken::Table, EnrollmentToken::ModelId)
                            .to(DeviceModel::Table, DeviceModel::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(EnrollmentToken::Table).to_owned()).await
    }
}
