//! `content.sha1`: the SHA-1 of the bytes (hex), computed while uploading
//! beside SHA-256 and MD5, since stock hawkBit DDI clients (SWUpdate,
//! rauc-hawkbit-updater) check only SHA-1. Null for content stored before
//! this migration until the `content.sha1_backfill` job has read it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::string_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Content {
    Table,
    Sha1,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on every backend (SQLite DDL is transactional too).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Content::Table).add_column(string_null(Content::Sha1)).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Content::Table).drop_column(Content::Sha1).to_owned()).await
    }
}
