//! The `otadepot` command line: serve, migrate, schema, token, and the
//! client commands (packages, devices, audit, scanner).
//!
//! Rule: each subcommand is a thin call into the library; anyhow errors
//! with context are fine here, at the edge.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use migration::{Migrator, MigratorTrait};

use crate::config::{Config, LogFormat};

mod audit;
mod devices;

#[derive(Parser, Debug)]
#[command(name = "otadepot", version, about = "Over-the-air update server for IoT device fleets")]
pub struct Cli {
    /// TOML configuration file (defaults < file < OTADEPOT_* env).
    #[arg(long, global = true, env = "OTADEPOT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format (overrides `log_format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP server (GraphQL, device API, repository) and, by
    /// default, the background workers.
    Serve,
    /// Run only the background job workers (for deployments that scale
    /// workers apart from `serve`; set `jobs.in_process = false` there).
    Worker,
    /// Apply, roll back or list database migrations.
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Operator tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Software packages.
    Packages {
        #[command(subcommand)]
        action: PackagesAction,
    },
    /// Devices.
    Devices {
        #[command(subcommand)]
        action: DevicesAction,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// The malware scanner (clamd).
    Scanner {
        #[command(subcommand)]
        action: ScannerAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScannerAction {
    /// Stream a test object of `scanner.check_bytes` (default: the largest
    /// upload allowed) ending in the EICAR test string to clamd. Exits 0
    /// only when clamd finds EICAR, which proves it scans objects of that
    /// size whole; otherwise non-zero, naming the clamd.conf setting to raise.
    Check,
}

#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Stream the events of a time range to stdout, oldest first.
    Export {
        /// Inclusive start (RFC 3339, like 2026-11-01T00:00:00Z).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Exclusive end (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, value_enum, default_value_t = audit::Format::Jsonl)]
        format: audit::Format,
    },
    /// Check the hash chain from the first event; exit 1 naming the first
    /// event that does not hold. Prints the head (SEQ:HASH) to keep as an
    /// anchor.
    Verify {
        /// A head printed by an earlier run (SEQ:HASH): also check that
        /// this event is still there, unchanged (catches cut-off rows).
        #[arg(long, value_parser = audit::parse_anchor)]
        anchor: Option<audit::Anchor>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DevicesAction {
    /// Register devices from a CSV file with the columns endpoint_id, model
    /// (both required), serial, gateway and attr.<key>; batches of up to
    /// 10,000 rows, each all or nothing.
    Import {
        /// The CSV file (a header row first).
        file: PathBuf,
        /// Where the devices' secrets go (endpoint_id,device_id,secret); must
        /// not exist yet. They are shown this once.
        #[arg(long)]
        secrets_out: PathBuf,
        /// Rows per transaction.
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum PackagesAction {
    /// Rebuild the package index (`package`, `package_model`,
    /// `package_file`) from the manifests stored in content tags.
    Reindex,
}

#[derive(Subcommand, Debug)]
pub enum MigrateAction {
    /// Apply every pending migration (the default).
    Up,
    /// Roll back the latest migrations.
    Down {
        /// How many to roll back.
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List migrations and whether each is applied.
    Status,
}

#[derive(Subcommand, Debug)]
pub enum TokenAction {
    /// Mint an operator JWT signed with the configured HS256 secret.
    Issue {
        /// The token's subject (who the operator is; shows in the audit trail).
        #[arg(long)]
        subject: String,
        /// A role to grant; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime, like 30m, 1h, 7d (at most 365d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// Run a parsed command line. `schema` needs no configuration.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Schema = cli.command {
        let mut out = std::io::stdout().lock();
        out.write_all(crate::graphql::sdl().as_bytes())?;
        return Ok(());
    }
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(format) = cli.log_format {
        config.log_format = format;
    }
    crate::telemetry::init_logging(config.log_format);
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Worker => worker(config).await,
        Command::Migrate { action } => migrate(config, action.unwrap_or(MigrateAction::Up)).await,
        Command::Token { action: TokenAction::Issue { subject, roles, ttl } } => {
            issue_token(config, &subject, &roles, ttl).await
        }
        Command::Packages { action: PackagesAction::Reindex } => reindex_packages(config).await,
        Command::Devices { action: DevicesAction::Import { file, secrets_out, batch } } => {
            let app = crate::app::App::build(config).await?;
            if app.config.database.migrate_on_start {
                crate::db::migrate_up(&app.db).await?;
            }
            let count = devices::import(&app, &file, &secrets_out, batch).await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "imported {count} device(s); secrets in {}", secrets_out.display())?;
            Ok(())
        }
        Command::Audit { action } => {
            let app = crate::app::App::build(config).await?;
            if app.config.database.migrate_on_start {
                crate::db::migrate_up(&app.db).await?;
            }
            match action {
                AuditAction::Export { from, to, format } => {
                    let count = audit::export(&app, from, to, format, std::io::stdout().lock()).await?;
                    tracing::info!(count, "exported audit events");
                    Ok(())
                }
                AuditAction::Verify { anchor } => match audit::verify(&app, anchor).await? {
                    Ok(message) => {
                        writeln!(std::io::stdout().lock(), "{message}")?;
                        Ok(())
                    }
                    Err(message) => {
                        writeln!(std::io::stderr().lock(), "{message}")?;
                        std::process::exit(1);
                    }
                },
            }
        }
        Command::Scanner { action: ScannerAction::Check } => scanner_check(&config).await,
        Command::Schema => Ok(()),
    }
}

async fn scanner_check(config: &Config) -> anyhow::Result<()> {
    if config.scanner.mode == crate::config::ScannerMode::Disabled {
        bail!("scanner.mode is \"disabled\": there is no clamd to check");
    }
    let clamd = crate::scan::Clamd::new(config.clamd_address()?, config.scanner.timeout);
    match clamd.check(config.scanner_check_bytes()).await {
        Ok(message) => {
            writeln!(std::io::stdout().lock(), "ok: {message}")?;
            Ok(())
        }
        Err(message) => {
            writeln!(std::io::stderr().lock(), "scanner check failed: {message}")?;
            std::process::exit(1);
        }
    }
}

async fn reindex_packages(config: Config) -> anyhow::Result<()> {
    let app = crate::app::App::build(config).await?;
    if app.config.database.migrate_on_start {
        crate::db::migrate_up(&app.db).await?;
    }
    let ctx = crate::auth::Ctx::system("cli:packages-reindex");
    let count = crate::service::package::reindex(&app, &ctx).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "indexed {count} package(s)")?;
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = crate::server::Server::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutdown requested; finishing in-flight requests");
    server.shutdown();
    server.wait().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn worker(config: Config) -> anyhow::Result<()> {
    crate::telemetry::metrics();
    let app = crate::app::App::build(config).await?;
    if app.config.database.migrate_on_start {
        crate::db::migrate_up(&app.db).await?;
    }
    if let Some(clamd) = app.clamd.clone() {
        tokio::spawn(async move { clamd.log_startup().await });
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let runner = crate::jobs::Runner::new(app.clone());
    runner.queue_startup_jobs().await;
    let runner = tokio::spawn(runner.run(shutdown.clone()));
    shutdown_signal().await;
    tracing::info!("shutdown requested; finishing running jobs");
    shutdown.cancel();
    runner.await.context("worker task panicked")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

async fn migrate(config: Config, action: MigrateAction) -> anyhow::Result<()> {
    let db = crate::db::connect(&config).await?;
    match action {
        MigrateAction::Up => {
            Migrator::up(&db, None).await.context("applying migrations")?;
            tracing::info!("database is up to date");
        }
        MigrateAction::Down { steps } => {
            Migrator::down(&db, Some(steps)).await.context("rolling back migrations")?;
            tracing::info!(steps, "rolled back");
        }
        MigrateAction::Status => {
            let mut out = std::io::stdout().lock();
            for migration in Migrator::get_migration_with_status(&db).await.context("reading migration status")? {
                writeln!(out, "{:<8} {}", format!("{}", migration.status()).to_lowercase(), migration.name())?;
            }
        }
    }
    db.close().await.ok();
    Ok(())
}

async fn issue_token(config: Config, subject: &str, roles: &[String], ttl: Duration) -> anyhow::Result<()> {
    if subject.trim().is_empty() {
        bail!("--subject must not be empty");
    }
    if ttl.is_zero() || ttl > Duration::from_secs(365 * 24 * 3600) {
        bail!("--ttl must be between 1s and 365d");
    }
    let db = crate::db::connect(&config).await?;
    if config.database.migrate_on_start {
        crate::db::migrate_up(&db).await?;
    }
    let unknown = crate::service::role::unknown_names(&db, roles).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if !unknown.is_empty() {
        bail!(
            "unknown role(s): {} (see the `roles` query or docs/architecture.md for the built-in ones)",
            unknown.join(", ")
        );
    }
    db.close().await.ok();
    let jwt = crate::auth::jwt::JwtAuth::from_config(&config.auth, &config.data_dir)?;
    let token = jwt.issue(subject, roles, ttl)?;
    writeln!(std::io::stdout().lock(), "{token}")?;
    Ok(())
}
