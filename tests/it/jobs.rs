//! The durable job queue on the real database: claiming, leases, retries
//! with backoff, exactly-once claiming under concurrency, and the
//! in-process workers running a built-in job.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use entity::job;
use otadepot::jobs::{self, Failure};
use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::json;

use crate::support::TestApp;

const KIND: &str = "test.echo";
const LEASE: Duration = Duration::from_secs(30);

async fn app_without_workers() -> TestApp {
    TestApp::start_with(|c| c.jobs.in_process = false).await
}

#[tokio::test]
async fn a_job_is_claimed_once_then_completed() {
    let app = app_without_workers().await;
    let db = app.db();
    let id = jobs::enqueue(db, KIND, json!({"n": 1})).await.unwrap();

    let claimed = jobs::claim(db, "w1", &[KIND], LEASE).await.unwrap().expect("due job");
    assert_eq!(claimed.id, id);
    assert_eq!(claimed.state, "running");
    assert_eq!(claimed.attempts, 1);
    assert_eq!(claimed.payload, json!({"n": 1}));
    assert!(jobs::claim(db, "w2", &[KIND], LEASE).await.unwrap().is_none(), "held under lease");
    assert!(jobs::claim(db, "w2", &["other.kind"], LEASE).await.unwrap().is_none());

    assert!(jobs::heartbeat(db, id, "w1", LEASE).await.unwrap());
    assert!(!jobs::heartbeat(db, id, "w2", LEASE).await.unwrap(), "not w2's job");
    assert!(!jobs::complete(db, id, "w2").await.unwrap());
    assert!(jobs::complete(db, id, "w1").await.unwrap());
    let row = job::Entity::find_by_id(id).one(db).await.unwrap().unwrap();
    assert_eq!(row.state, "done");
    assert!(row.locked_by.is_none());
}

#[tokio::test]
async fn an_expired_lease_lets_another_worker_take_over() {
    let app = app_without_workers().await;
    let db = app.db();
    let id = jobs::enqueue(db, KIND, json!({})).await.unwrap();
    jobs::claim(db, "crashed", &[KIND], Duration::from_millis(1)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = jobs::claim(db, "w2", &[KIND], LEASE).await.unwrap().expect("lease expired");
    assert_eq!(again.id, id);
    assert_eq!(again.attempts, 2);
    // The crashed worker cannot finish it any more.
    assert!(!jobs::complete(db, id, "crashed").await.unwrap());
    assert_eq!(jobs::fail(db, id, "crashed", "late").await.unwrap(), Failure::LeaseLost);
}

#[tokio::test]
async fn failures_back_off_then_give_up() {
    let app = app_without_workers().await;
    let db = app.db();
    let id = jobs::enqueue_at(db, KIND, json!({}), Utc::now(), 2).await.unwrap();

    jobs::claim(db, "w", &[KIND], LEASE).await.unwrap().unwrap();
    let before = Utc::now();
    let Failure::Retry(at) = jobs::fail(db, id, "w", "clamd unreachable").await.unwrap() else {
        panic!("first failure retries");
    };
    assert!(at >= before + chrono::TimeDelta::seconds(4), "backs off ~5 s: {at} vs {before}");
    assert!(jobs::claim(db, "w", &[KIND], LEASE).await.unwrap().is_none(), "not due yet");

    // Pretend the backoff has passed.
    db.execute_unprepared("UPDATE job SET run_at = created_at").await.unwrap();
    let second = jobs::claim(db, "w", &[KIND], LEASE).await.unwrap().unwrap();
    assert_eq!(second.attempts, 2);
    assert_eq!(jobs::fail(db, id, "w", "still unreachable").await.unwrap(), Failure::GaveUp);
    let row = job::Entity::find_by_id(id).one(db).await.unwrap().unwrap();
    assert_eq!(row.state, "failed");
    assert_eq!(row.last_error.as_deref(), Some("still unreachable"));
    db.execute_unprepared("UPDATE job SET run_at = created_at").await.unwrap();
    assert!(jobs::claim(db, "w", &[KIND], LEASE).await.unwrap().is_none(), "failed jobs stay failed");
}

#[tokio::test]
async fn concurrent_workers_claim_each_job_exactly_once() {
    let app = app_without_workers().await;
    let db = app.db();
    let mut ids = BTreeSet::new();
    for n in 0..30 {
        ids.insert(jobs::enqueue(db, KIND, json!({"n": n})).await.unwrap());
    }
    let workers = (0..4).map(|w| async move {
        let mut mine = Vec::new();
        while let Some(job) = jobs::claim(db, &format!("w{w}"), &[KIND], LEASE).await.unwrap() {
            mine.push(job.id);
        }
        mine
    });
    let claimed: Vec<uuid::Uuid> = futures::future::join_all(workers).await.into_iter().flatten().collect();
    assert_eq!(claimed.len(), 30, "no job claimed twice");
    assert_eq!(claimed.into_iter().collect::<BTreeSet<_>>(), ids);
}

#[tokio::test]
async fn in_process_workers_run_the_prune_job() {
    let app = TestApp::start_with(|c| c.jobs.poll_interval = Duration::from_millis(100)).await;
    let db = app.db();
    // An old finished job, and a fresh one that must stay.
    let old = jobs::enqueue(db, KIND, json!({})).await.unwrap();
    let fresh = jobs::enqueue(db, KIND, json!({})).await.unwrap();
    db.execute_unprepared(&format!(
        "UPDATE job SET state = 'done', updated_at = '2000-01-01T00:00:00Z' WHERE id = {}",
        sql_uuid(db, old)
    ))
    .await
    .unwrap();
    db.execute_unprepared(&format!("UPDATE job SET state = 'done' WHERE id = {}", sql_uuid(db, fresh))).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if job::Entity::find_by_id(old).one(db).await.unwrap().is_none() {
            break;
        }
        // The workers schedule a prune job at start (maybe already run) and
        // then hourly; make whichever is waiting due now.
        db.execute_unprepared("UPDATE job SET run_at = created_at WHERE kind = 'jobs.prune' AND state = 'queued'")
            .await
            .unwrap();
        assert!(std::time::Instant::now() < deadline, "prune job did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(job::Entity::find_by_id(fresh).one(db).await.unwrap().is_some());
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("jobs_completed_total{kind=\"jobs.prune\"}"), "{metrics}");
}

/// A uuid literal as each backend stores it.
fn sql_uuid(db: &sea_orm::DatabaseConnection, id: uuid::Uuid) -> String {
    match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => format!("'{id}'"),
        _ => format!("X'{}'", id.simple()),
    }
}

#[tokio::test]
async fn a_periodic_job_that_died_comes_back() {
    use sea_orm::{ColumnTrait, PaginatorTrait, QueryFilter};
    let app = TestApp::start_with(|c| c.jobs.poll_interval = Duration::from_millis(50)).await;
    let db = app.db();
    let alive = || async {
        job::Entity::find()
            .filter(job::Column::Kind.eq("command.expire"))
            .filter(job::Column::State.is_in(["queued", "running"]))
            .count(db)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive().await == 0 {
        assert!(std::time::Instant::now() < deadline, "never scheduled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its attempts used up (say, while the database was away). A run that
    // is under way right now queues the next one as it ends: fail that too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive().await > 0 {
        assert!(std::time::Instant::now() < deadline, "could not fail the periodic job");
        db.execute_unprepared("UPDATE job SET state = 'failed' WHERE kind = 'command.expire' AND state = 'queued'")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while alive().await == 0 {
        assert!(std::time::Instant::now() < deadline, "the periodic job did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn queued_expiry_runs_keep_going_under_the_new_job_name() {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::EntityTrait;
    let dir = tempfile::tempdir().unwrap();
    let db = sea_orm::Database::connect(crate::support::fresh_database_url(dir.path()).await).await.unwrap();
    otadepot::db::migrate_up(&db).await.unwrap();
    // Back to just before the rename (and whatever came after it).
    let migrations = Migrator::migrations();
    let rename = migrations.iter().position(|m| m.name() == "m20261202_000016_rename_command_expire_job").unwrap();
    Migrator::down(&db, Some((migrations.len() - rename) as u32)).await.unwrap();
    let old = otadepot::jobs::enqueue(&db, "commands.expire", serde_json::json!({})).await.unwrap();
    let other = otadepot::jobs::enqueue(&db, "jobs.prune", serde_json::json!({})).await.unwrap();

    otadepot::db::migrate_up(&db).await.unwrap();
    let kind = |id| {
        let db = db.clone();
        async move { job::Entity::find_by_id(id).one(&db).await.unwrap().unwrap().kind }
    };
    assert_eq!(kind(old).await, otadepot::service::command::EXPIRE_JOB);
    assert_eq!(otadepot::service::command::EXPIRE_JOB, "command.expire");
    assert_eq!(kind(other).await, "jobs.prune", "other kinds stay");
    db.close().await.unwrap();
}
