//! The worker loop: claim, run with a heartbeat, complete or fail.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::anyhow;
use entity::job;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::App;

/// One kind of job. `run` must be idempotent (see the module doc).
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    async fn run(&self, app: &App, job: &job::Model) -> anyhow::Result<()>;
}

pub struct Runner {
    app: App,
    handlers: HashMap<&'static str, Arc<dyn Handler>>,
    worker_id: String,
}

/// Jobs that run forever, each queueing its own next run.
const PERIODIC: [&str; 3] =
    [super::PRUNE, crate::service::command::EXPIRE_JOB, crate::service::upload_sweep::RELEASE_ABANDONED_JOB];
/// How often the runner checks that each periodic job is there, in
/// `jobs.poll_interval`s (a minute by default).
const PERIODIC_CHECK_POLLS: u32 = 30;

impl Runner {
    /// A runner with every built-in handler.
    pub fn new(app: App) -> Self {
        let worker_id = format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple());
        Self { app, handlers: HashMap::new(), worker_id }
            .with_handler(super::prune::Prune)
            .with_handler(super::tasks::content_scan::ScanJob)
            .with_handler(super::tasks::deployment_reconcile::ReconcileJob)
            .with_handler(super::tasks::command_expire::ExpireJob)
            .with_handler(super::tasks::content_release_abandoned_uploads::ReleaseAbandonedJob)
            .with_handler(super::tasks::content_sha1_backfill::Sha1BackfillJob)
    }

    /// Queue the jobs a process that runs workers queues once as it starts
    /// (before [`Runner::run`], so the job is there when the server is up):
    /// the SHA-1 backfill, when some stored content has none. A failure is
    /// logged: the next start tries again.
    pub async fn queue_startup_jobs(&self) {
        match crate::service::content::queue_sha1_backfill(&self.app).await {
            Ok(true) => tracing::info!("queued the SHA-1 backfill of content stored without one"),
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, "could not queue the SHA-1 backfill"),
        }
    }

    pub fn with_handler(mut self, handler: impl Handler) -> Self {
        self.handlers.insert(handler.kind(), Arc::new(handler));
        self
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Run `jobs.concurrency` loops until `shutdown`; a job in progress
    /// finishes (or loses its lease) before its loop ends.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut loops = JoinSet::new();
        // The periodic jobs queue their own next run; this brings one back
        // if it died (its attempts used up while the database was away).
        {
            let app = this.app.clone();
            let shutdown = shutdown.clone();
            loops.spawn(async move {
                loop {
                    for kind in PERIODIC {
                        if let Err(err) = super::ensure_periodic(&app.db, kind).await {
                            tracing::warn!(error = %err, kind, "could not schedule a periodic job");
                        }
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(app.config.jobs.poll_interval * PERIODIC_CHECK_POLLS) => {}
                    }
                }
            });
        }
        for slot in 0..this.app.config.jobs.concurrency {
            let this = this.clone();
            let shutdown = shutdown.clone();
            loops.spawn(async move { this.work(slot, shutdown).await });
        }
        tracing::info!(worker = %this.worker_id, kinds = ?this.handlers.keys().collect::<Vec<_>>(), "job workers started");
        while loops.join_next().await.is_some() {}
    }

    async fn work(&self, slot: usize, shutdown: CancellationToken) {
        let kinds: Vec<&str> = self.handlers.keys().copied().collect();
        let worker = format!("{}/{slot}", self.worker_id);
        let config = &self.app.config.jobs;
        while !shutdown.is_cancelled() {
            match super::claim(&self.app.db, &worker, &kinds, config.lease).await {
                Ok(Some(job)) => self.execute(&worker, job).await,
                Ok(None) => {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = self.app.job_wake.notified() => {}
                        () = tokio::time::sleep(config.poll_interval) => {}
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "claiming a job failed; backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(config.poll_interval * 2) => {}
                    }
                }
            }
        }
    }

    async fn execute(&self, worker: &str, job: job::Model) {
        let Some(handler) = self.handlers.get(job.kind.as_str()) else {
            return;
        };
        let lease = self.app.config.jobs.lease;
        // The span goes with the job's future (`instrument`), never entered
        // on the thread: a guard held across an `.await` would make every
        // request that thread serves meanwhile a child of this job.
        let span = tracing::info_span!("job", id = %job.id, kind = %job.kind, attempt = job.attempts);
        async move {
            let heartbeat = async {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match super::heartbeat(&self.app.db, job.id, worker, lease).await {
                        Ok(true) => {}
                        Ok(false) => return anyhow!("lease lost to another worker"),
                        Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
                    }
                }
            };
            let result = tokio::select! {
                result = handler.run(&self.app, &job) => result,
                err = heartbeat => Err(err),
            };
            let kind = job.kind.clone();
            match result {
                Ok(()) => match super::complete(&self.app.db, job.id, worker).await {
                    Ok(true) => metrics::counter!("jobs_completed_total", "kind" => kind).increment(1),
                    Ok(false) => tracing::warn!("job finished after its lease was lost"),
                    Err(err) => tracing::error!(error = %err, "could not mark the job done; it will run again"),
                },
                Err(err) => {
                    let message = format!("{err:#}");
                    match super::fail(&self.app.db, job.id, worker, &message).await {
                        Ok(outcome) => {
                            tracing::warn!(error = %message, ?outcome, "job attempt failed");
                            metrics::counter!("jobs_failed_attempts_total", "kind" => kind).increment(1);
                        }
                        Err(err) => tracing::error!(error = %err, "could not record the job failure"),
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "worker".into())
}
