//! The job kind `commands.expire` is now `command.expire`, like every other
//! kind (`<area>.<action>`, the area singular: `content.scan`,
//! `deployment.reconcile`). Queued and running rows are renamed so the
//! periodic expiry goes on under its new name; finished rows too, so the
//! job history reads one name.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Job {
    Table,
    Kind,
}

async fn rename(manager: &SchemaManager<'_>, from: &str, to: &str) -> Result<(), DbErr> {
    manager
        .exec_stmt(
            Query::update().table(Job::Table).value(Job::Kind, to).and_where(Expr::col(Job::Kind).eq(from)).to_owned(),
        )
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rename(manager, "commands.expire", "command.expire").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rename(manager, "command.expire", "commands.expire").await
    }
}
