//! `enrollment_token.max_devices` (null: no quota) and
//! `enrollment_token.enrolled_count`, the enrollments answered so far. The
//! count goes up in the enrollment's own transaction by a conditional
//! UPDATE (`enrolled_count < max_devices`), so concurrent enrollments
//! never exceed the quota. Tokens made before this migration start at 0.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{integer, integer_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EnrollmentToken {
    Table,
    MaxDevices,
    EnrolledCount,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on every backend (SQLite DDL is transactional too).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        manager
            .alter_table(
                Table::alter()
                    .table(EnrollmentToken::Table)
                    .add_column(integer_null(EnrollmentToken::MaxDevices))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(EnrollmentToken::Table)
                    .add_column(integer(EnrollmentToken::EnrolledCount).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(EnrollmentToken::Table).drop_column(EnrollmentToken::EnrolledCount).to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter().table(EnrollmentToken::Table).drop_column(EnrollmentToken::MaxDevices).to_owned(),
            )
            .await
    }
}
