//! `content` and `content_tag`: uploaded objects and their metadata.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, string, string_null, text, text_null, timestamp_with_time_zone, timestamp_with_time_zone_null, uuid,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

// `ContentType` is the column name, not a stutter.
#[allow(clippy::enum_variant_names)]
#[derive(DeriveIden)]
enum Content {
    Table,
    Id,
    Name,
    ContentType,
    Type,
    Length,
    DeclaredSha256,
    Sha256,
    Md5,
    ProductId,
    State,
    StagingKey,
    RepositoryKey,
    ScanVerdict,
    ScanSignature,
    ScanError,
    ScannedAt,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ContentTag {
    Table,
    ContentId,
    Name,
    Value,
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
                    .table(Content::Table)
                    .col(uuid(Content::Id).primary_key())
                    .col(string(Content::Name))
                    .col(string(Content::ContentType))
                    .col(string(Content::Type))
                    .col(big_integer(Content::Length))
                    .col(string_null(Content::DeclaredSha256))
                    .col(string_null(Content::Sha256))
                    .col(string_null(Content::Md5))
                    .col(string_null(Content::ProductId))
                    .col(string(Content::State))
                    .col(string_null(Content::StagingKey))
                    .col(string_null(Content::RepositoryKey))
                    .col(string_null(Content::ScanVerdict))
                    .col(string_null(Content::ScanSignature))
                    .col(text_null(Content::ScanError))
                    .col(timestamp_with_time_zone_null(Content::ScannedAt))
                    .col(string(Content::CreatedBy))
                    .col(timestamp_with_time_zone(Content::CreatedAt))
                    .col(timestamp_with_time_zone(Content::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_content_state", Content::State),
            ("idx_content_type", Content::Type),
            ("idx_content_product", Content::ProductId),
            ("idx_content_sha256", Content::Sha256),
        ] {
            manager.create_index(Index::create().name(name).table(Content::Table).col(col).to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(ContentTag::Table)
                    .col(uuid(ContentTag::ContentId))
                    .col(string(ContentTag::Name))
                    .col(text(ContentTag::Value))
                    .primary_key(Index::create().col(ContentTag::ContentId).col(ContentTag::Name))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_content_tag_content")
                            .from(ContentTag::Table, ContentTag::ContentId)
                            .to(Content::Table, Content::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_content_tag_name_value")
                    .table(ContentTag::Table)
                    .col(ContentTag::Name)
                    .col(ContentTag::Value)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(ContentTag::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Content::Table).to_owned()).await
    }
}
