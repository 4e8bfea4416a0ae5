//! `audit_event`: append-only and hash-chained; `seq` orders the chain.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer_uniq, json_binary, string, string_null, timestamp_with_time_zone, uuid};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditEvent {
    Table,
    Id,
    Seq,
    At,
    ActorKind,
    ActorId,
    Action,
    ObjectKind,
    ObjectId,
    Details,
    RequestId,
    PrevHash,
    Hash,
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
                    .table(AuditEvent::Table)
                    .col(uuid(AuditEvent::Id).primary_key())
                    .col(big_integer_uniq(AuditEvent::Seq))
                    .col(timestamp_with_time_zone(AuditEvent::At))
                    .col(string(AuditEvent::ActorKind))
                    .col(string(AuditEvent::ActorId))
                    .col(string(AuditEvent::Action))
                    .col(string(AuditEvent::ObjectKind))
                    .col(string(AuditEvent::ObjectId))
                    .col(json_binary(AuditEvent::Details))
                    .col(string_null(AuditEvent::RequestId))
                    .col(string(AuditEvent::PrevHash))
                    .col(string(AuditEvent::Hash))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            ("idx_audit_event_at", vec![AuditEvent::At]),
            ("idx_audit_event_actor", vec![AuditEvent::ActorKind, AuditEvent::ActorId]),
            ("idx_audit_event_action", vec![AuditEvent::Action]),
            ("idx_audit_event_object", vec![AuditEvent::ObjectKind, AuditEvent::ObjectId]),
        ] {
            let mut index = Index::create();
            index.name(name).table(AuditEvent::Table);
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(AuditEvent::Table).to_owned()).await
    }
}
