//! Database connection, migrations and the write transaction.
//!
//! Rule: every write goes through [`begin_write`], never `db.begin()`. On
//! SQLite it starts `BEGIN IMMEDIATE`, so a writer takes the lock before it
//! reads and concurrent writers queue on the busy timeout instead of failing
//! with SQLITE_BUSY halfway; on PostgreSQL it is a plain transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

use crate::config::Config;

pub async fn connect(config: &Config) -> anyhow::Result<DatabaseConnection> {
    Ok(connect_counted(config).await?.0)
}

/// Connect, counting every statement.
pub async fn connect_counted(config: &Config) -> anyhow::Result<(DatabaseConnection, QueryCounter)> {
    if config.is_sqlite() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    }
    let busy_timeout = config.database.busy_timeout;
    let mut options = ConnectOptions::new(config.database.url.expose());
    options
        .max_connections(config.database.max_connections)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(15))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(busy_timeout)
                .create_if_missing(true)
        });
    let mut db =
        Database::connect(options).await.with_context(|| "connecting to the database (database.url)".to_string())?;
    let counter = QueryCounter::default();
    let count = counter.0.clone();
    db.set_metric_callback(move |info| {
        count.fetch_add(1, Ordering::Relaxed);
        // Charged to the request whose task ran it (see `count_statements`).
        let _ = REQUEST_STATEMENTS.try_with(|n| n.set(n.get() + 1));
        metrics::counter!("db_queries_total").increment(1);
        if info.failed {
            metrics::counter!("db_query_errors_total").increment(1);
        }
        metrics::histogram!("db_query_duration_seconds").record(info.elapsed.as_secs_f64());
    });
    Ok((db, counter))
}

tokio::task_local! {
    /// The statements run by the current request (`count_statements`).
    static REQUEST_STATEMENTS: std::cell::Cell<u32>;
}

/// Run `future` counting the statements it runs on the pool (every one
/// sea-orm reports: queries, `execute_raw`, not `execute_unprepared`, and
/// not the transactions' BEGIN and COMMIT); read the count with
/// [`statements_of`] once it is done. Work it spawns is not counted.
pub fn count_statements<F: std::future::Future>(
    future: F,
) -> tokio::task::futures::TaskLocalFuture<std::cell::Cell<u32>, F> {
    REQUEST_STATEMENTS.scope(std::cell::Cell::new(0), future)
}

/// How many statements a [`count_statements`] future ran (none before it
/// is done).
pub fn statements_of<F: std::future::Future>(
    future: std::pin::Pin<&mut tokio::task::futures::TaskLocalFuture<std::cell::Cell<u32>, F>>,
) -> u32 {
    future.take_value().map_or(0, |n| n.get())
}

/// Statements run on one connection pool since it was opened (also
/// exported as `db_queries_total`): tests count the queries of a request.
#[derive(Clone, Debug, Default)]
pub struct QueryCounter(Arc<AtomicU64>);

impl QueryCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub async fn migrate_up(db: &DatabaseConnection) -> anyhow::Result<()> {
    Migrator::up(db, None).await.context("running database migrations")
}

/// Start a transaction that will write (see the module doc).
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            db.begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
        }
        // The one sanctioned place: clippy.toml points everyone else here.
        #[allow(clippy::disallowed_methods)]
        _ => db.begin().await,
    }
}

/// A cheap round trip, for readiness.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.ping().await
}
