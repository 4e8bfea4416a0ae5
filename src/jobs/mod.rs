//! Durable background work in the `job` table.
//!
//! A job is enqueued in the same transaction as the change that needs it
//! (so it exists exactly when the change does), claimed by one worker under
//! a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serializes
//! writers), kept alive by a heartbeat, and retried with exponential
//! backoff until `max_attempts`. A worker that dies loses its lease and the
//! job is claimed again, so handlers must be idempotent.
//!
//! Rule: a handler reads the current state and does the next step; it is
//! always safe to run twice.

mod prune;
mod runner;
mod tasks;

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::job::{self, Column};
use sea_orm::sea_query::{LockBehavior, LockType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::Value;
use uuid::Uuid;

pub use prune::PRUNE;
pub use runner::{Handler, Runner};

use crate::error::Result;

pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";
pub const DONE: &str = "done";
pub const FAILED: &str = "failed";

pub const DEFAULT_MAX_ATTEMPTS: i32 = 8;
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_CAP: Duration = Duration::from_secs(3600);

/// Add a job; pass the caller's transaction to make it part of a change.
pub async fn enqueue(conn: &impl ConnectionTrait, kind: &str, payload: Value) -> Result<Uuid> {
    enqueue_at(conn, kind, payload, Utc::now(), DEFAULT_MAX_ATTEMPTS).await
}

pub async fn enqueue_at(
    conn: &impl ConnectionTrait,
    kind: &str,
    payload: Value,
    run_at: DateTime<Utc>,
    max_attempts: i32,
) -> Result<Uuid> {
    let now = Utc::now();
    let id = Uuid::now_v7();
    job::ActiveModel {
        id: Set(id),
        kind: Set(kind.to_owned()),
        payload: Set(payload),
        state: Set(QUEUED.to_owned()),
        run_at: Set(run_at),
        attempts: Set(0),
        max_attempts: Set(max_attempts.max(1)),
        last_error: Set(None),
        locked_by: Set(None),
        locked_until: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(conn)
    .await?;
    Ok(id)
}

/// Claim the next due job of one of `kinds` for `worker`: a queued job
/// whose time has come, or a running one whose lease ran out.
pub async fn claim(
    db: &DatabaseConnection,
    worker: &str,
    kinds: &[&str],
    lease: Duration,
) -> Result<Option<job::Model>> {
    let tx = crate::db::begin_write(db).await?;
    let now = Utc::now();
    let due = Condition::any()
        .add(Condition::all().add(Column::State.eq(QUEUED)).add(Column::RunAt.lte(now)))
        .add(Condition::all().add(Column::State.eq(RUNNING)).add(Column::LockedUntil.lt(now)));
    let mut query =
        job::Entity::find().filter(Column::Kind.is_in(kinds.iter().copied())).filter(due).order_by_asc(Column::RunAt);
    if tx.get_database_backend() == DbBackend::Postgres {
        query = query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    let Some(candidate) = query.one(&tx).await? else {
        tx.commit().await?;
        return Ok(None);
    };
    let attempts = candidate.attempts + 1;
    let mut active: job::ActiveModel = candidate.into();
    active.state = Set(RUNNING.to_owned());
    active.attempts = Set(attempts);
    active.locked_by = Set(Some(worker.to_owned()));
    active.locked_until = Set(Some(now + lease_delta(lease)));
    active.updated_at = Set(now);
    let claimed = active.update(&tx).await?;
    tx.commit().await?;
    Ok(Some(claimed))
}

/// Extend the lease; false when the worker no longer holds the job.
pub async fn heartbeat(db: &DatabaseConnection, id: Uuid, worker: &str, lease: Duration) -> Result<bool> {
    let now = Utc::now();
    let result = job::Entity::update_many()
        .col_expr(Column::LockedUntil, sea_orm::sea_query::Expr::value(now + lease_delta(lease)))
        .col_expr(Column::UpdatedAt, sea_orm::sea_query::Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::State.eq(RUNNING))
        .filter(Column::LockedBy.eq(worker))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Mark done; false when the lease had been lost (another worker has it).
pub async fn complete(db: &DatabaseConnection, id: Uuid, worker: &str) -> Result<bool> {
    let result = job::Entity::update_many()
        .col_expr(Column::State, sea_orm::sea_query::Expr::value(DONE))
        .col_expr(Column::LockedBy, sea_orm::sea_query::Expr::value(Option::<String>::None))
        .col_expr(Column::LockedUntil, sea_orm::sea_query::Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(Column::UpdatedAt, sea_orm::sea_query::Expr::value(Utc::now()))
        .filter(Column::Id.eq(id))
        .filter(Column::State.eq(RUNNING))
        .filter(Column::LockedBy.eq(worker))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// What became of a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Queued again for this time.
    Retry(DateTime<Utc>),
    /// Out of attempts: state `failed`.
    GaveUp,
    /// The lease had been lost; nothing changed.
    LeaseLost,
}

/// Record a failed attempt: back off and retry, or give up after `max_attempts`.
pub async fn fail(db: &DatabaseConnection, id: Uuid, worker: &str, error: &str) -> Result<Failure> {
    let tx = crate::db::begin_write(db).await?;
    let Some(current) = job::Entity::find_by_id(id)
        .filter(Column::State.eq(RUNNING))
        .filter(Column::LockedBy.eq(worker))
        .one(&tx)
        .await?
    else {
        tx.commit().await?;
        return Ok(Failure::LeaseLost);
    };
    let now = Utc::now();
    let give_up = current.attempts >= current.max_attempts;
    let retry_at = now + lease_delta(backoff(current.attempts));
    let mut active: job::ActiveModel = current.into();
    active.last_error = Set(Some(error.chars().take(4000).collect()));
    active.locked_by = Set(None);
    active.locked_until = Set(None);
    active.updated_at = Set(now);
    let outcome = if give_up {
        active.state = Set(FAILED.to_owned());
        Failure::GaveUp
    } else {
        active.state = Set(QUEUED.to_owned());
        active.run_at = Set(retry_at);
        Failure::Retry(retry_at)
    };
    active.update(&tx).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Delay before the next attempt after `attempts` tries: 5 s, 10 s, 20 s, ...
/// capped at an hour.
pub fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(20);
    BACKOFF_BASE.saturating_mul(2u32.saturating_pow(exponent)).min(BACKOFF_CAP)
}

fn lease_delta(duration: Duration) -> chrono::TimeDelta {
    chrono::TimeDelta::from_std(duration).unwrap_or(chrono::TimeDelta::MAX)
}

/// Make sure a periodic job of `kind` exists: queued or running, or else
/// queued now (for the runner; a job queues its own next run with
/// [`ensure_queued`]).
pub async fn ensure_periodic(db: &DatabaseConnection, kind: &str) -> anyhow::Result<()> {
    let tx = crate::db::begin_write(db).await?;
    let alive = job::Entity::find()
        .filter(job::Column::Kind.eq(kind))
        .filter(job::Column::State.is_in([QUEUED, RUNNING]))
        .count(&tx)
        .await?;
    if alive == 0 {
        enqueue_at(&tx, kind, serde_json::json!({}), Utc::now(), 3).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Make sure one job of `kind` is queued, at `at` when none is: for the
/// periodic jobs that queue their own next run.
pub async fn ensure_queued(db: &DatabaseConnection, kind: &str, at: DateTime<Utc>) -> anyhow::Result<()> {
    let tx = crate::db::begin_write(db).await?;
    let waiting =
        job::Entity::find().filter(job::Column::Kind.eq(kind)).filter(job::Column::State.eq(QUEUED)).count(&tx).await?;
    if waiting == 0 {
        enqueue_at(&tx, kind, serde_json::json!({}), at, 3).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(3600));
    }
}
