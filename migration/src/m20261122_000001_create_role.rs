//! `role` and the built-in roles of DESIGN.md §7.
//!
//! The permission names are literals on purpose: a migration records what
//! the database held at that time, whatever the code's enum becomes later.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{boolean, json_binary, string, string_uniq, timestamp_with_time_zone, uuid};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Role {
    Table,
    Id,
    Name,
    Description,
    Permissions,
    BuiltIn,
    CreatedAt,
    UpdatedAt,
}

const READS: &[&str] = &["CONTENT_READ", "PACKAGE_READ", "DEVICE_READ", "DEPLOYMENT_READ", "COMMAND_READ"];

fn built_in_roles() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let with_reads = |extra: &[&'static str]| {
        let mut all: Vec<&'static str> = READS.to_vec();
        all.extend_from_slice(extra);
        all
    };
    vec![
        ("admin", "Every permission, now and later.", vec!["*"]),
        (
            "package_admin",
            "Device Software Package Administration: content and packages.",
            with_reads(&["CONTENT_WRITE", "CONTENT_PROMOTE", "PACKAGE_WRITE"]),
        ),
        (
            "deployment_manager",
            "Applies packages, manages deployments, sends commands.",
            with_reads(&["DEPLOYMENT_WRITE", "COMMAND_SEND"]),
        ),
        ("device_admin", "Devices, device models and groups.", with_reads(&["DEVICE_WRITE", "GROUP_WRITE"])),
        ("viewer", "Reads everything but the audit trail and roles.", with_reads(&[])),
        ("auditor", "Reads everything, the audit trail and roles included.", with_reads(&["AUDIT_READ", "ROLE_READ"])),
    ]
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
                    .table(Role::Table)
                    .col(uuid(Role::Id).primary_key())
                    .col(string_uniq(Role::Name))
                    .col(string(Role::Description))
                    .col(json_binary(Role::Permissions))
                    .col(boolean(Role::BuiltIn))
                    .col(timestamp_with_time_zone(Role::CreatedAt))
                    .col(timestamp_with_time_zone(Role::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        let now = chrono::Utc::now();
        let mut insert = Query::insert();
        insert.into_table(Role::Table).columns([
            Role::Id,
            Role::Name,
            Role::Description,
            Role::Permissions,
            Role::BuiltIn,
            Role::CreatedAt,
            Role::UpdatedAt,
        ]);
        for (name, description, permissions) in built_in_roles() {
            insert.values_panic([
                uuid::Uuid::now_v7().into(),
                name.into(),
                description.into(),
                serde_json::json!(permissions).into(),
                true.into(),
                now.into(),
                now.into(),
            ]);
        }
        manager.exec_stmt(insert).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Role::Table).to_owned()).await
    }
}
