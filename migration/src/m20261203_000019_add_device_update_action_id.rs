//! `device_update.action_id`: a number unique across all device updates,
//! for protocols that name an update by an integer (hawkBit DDI's action
//! id, which SWUpdate reads as a C `int`). Existing rows are numbered 1, 2,
//! … in the order they were created; new rows get the next number as they
//! are inserted, multi-row INSERTs included:
//! - PostgreSQL: an `integer` identity column (`GENERATED ALWAYS`), whose
//!   sequence is set past the numbered rows;
//! - SQLite: a trigger after each inserted row takes the next number from
//!   the one-row table `device_update_action_seq` (SQLite writes are
//!   serialized, so no two rows get the same one).
//!
//! Numbers are never reused, not even after their update is deleted. Past
//! 2^31 − 1 (int32's largest) an insert fails instead of wrapping around:
//! PostgreSQL's sequence reaches its maximum, the SQLite trigger aborts.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Number the existing rows in creation order (the same SQL on both).
const NUMBER_EXISTING: &str = "UPDATE device_update SET action_id = numbered.n \
     FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM device_update) AS numbered \
     WHERE numbered.id = device_update.id";

const SQLITE_UP: [&str; 5] = [
    "ALTER TABLE device_update ADD COLUMN action_id integer",
    NUMBER_EXISTING,
    "CREATE TABLE device_update_action_seq (last integer NOT NULL)",
    "INSERT INTO device_update_action_seq (last) SELECT COALESCE(MAX(action_id), 0) FROM device_update",
    "CREATE TRIGGER device_update_action_id AFTER INSERT ON device_update FOR EACH ROW BEGIN \
       SELECT RAISE(ABORT, 'device_update.action_id: every number up to 2147483647 is taken') \
         WHERE NEW.action_id IS NULL AND (SELECT last FROM device_update_action_seq) >= 2147483647; \
       UPDATE device_update_action_seq \
         SET last = CASE WHEN NEW.action_id IS NULL THEN last + 1 ELSE MAX(last, NEW.action_id) END; \
       UPDATE device_update SET action_id = (SELECT last FROM device_update_action_seq) \
         WHERE rowid = NEW.rowid AND NEW.action_id IS NULL; \
     END",
];

const SQLITE_DOWN: [&str; 4] = [
    "DROP TRIGGER device_update_action_id",
    "DROP TABLE device_update_action_seq",
    "DROP INDEX idx_device_update_action_id",
    "ALTER TABLE device_update DROP COLUMN action_id",
];

const POSTGRES_UP: [&str; 5] = [
    "ALTER TABLE device_update ADD COLUMN action_id integer",
    NUMBER_EXISTING,
    "ALTER TABLE device_update ALTER COLUMN action_id SET NOT NULL",
    "ALTER TABLE device_update ALTER COLUMN action_id ADD GENERATED ALWAYS AS IDENTITY",
    "SELECT setval(pg_get_serial_sequence('device_update', 'action_id'), \
       COALESCE((SELECT MAX(action_id) FROM device_update), 0) + 1, false)",
];

const POSTGRES_DOWN: [&str; 1] = ["ALTER TABLE device_update DROP COLUMN action_id"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// All or nothing on every backend (SQLite DDL is transactional too).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements: &[&str] = match db.get_database_backend() {
            DbBackend::Postgres => &POSTGRES_UP,
            _ => &SQLITE_UP,
        };
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_device_update_action_id")
                    .table(Alias::new("device_update"))
                    .col(Alias::new("action_id"))
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements: &[&str] = match db.get_database_backend() {
            DbBackend::Postgres => &POSTGRES_DOWN,
            _ => &SQLITE_DOWN,
        };
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
