//! `App`: everything a request or a job needs, built once at start.
//!
//! Rule: no state in here that two replicas would need to share; the
//! database is the only shared truth (the event bus is per process and
//! only carries notifications of what is already committed).

use std::sync::Arc;

use anyhow::Context;
use sea_orm::DatabaseConnection;
use tokio::sync::broadcast;

use crate::auth::jwt::JwtAuth;
use crate::auth::signed_url::{self, UrlSigner};
use crate::config::Config;
use crate::scan::Clamd;
use crate::signing::ManifestSigner;
use crate::storage::Stores;

/// Something that happened, published after its transaction committed.
#[derive(Clone, Debug)]
pub enum Event {
    Audit(Box<entity::audit_event::Model>),
    /// A content changed state.
    ContentChanged(uuid::Uuid),
    /// A deployment or one of its device updates changed.
    DeploymentChanged(uuid::Uuid),
    /// One device's update changed (a report).
    DeviceUpdateChanged {
        deployment: uuid::Uuid,
        update: uuid::Uuid,
    },
    /// These devices have news on their next poll (an update released, the
    /// install released, a cancel): long polls answer.
    DevicesReleased(std::sync::Arc<std::collections::HashSet<uuid::Uuid>>),
    /// Too many devices to name (from another process): every long poll
    /// looks again.
    AllPollersWake,
    /// A device's credential, status or gateway changed.
    DeviceChanged(uuid::Uuid),
    /// One command changed state.
    CommandChanged {
        batch: uuid::Uuid,
        command: uuid::Uuid,
    },
    /// Commands of this batch changed (sent, cancelled, expired).
    CommandBatchChanged(uuid::Uuid),
}

#[derive(Clone)]
pub struct App(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: DatabaseConnection,
    /// Statements run on `db` (tests count a request's queries with it).
    pub db_queries: crate::db::QueryCounter,
    pub jwt: JwtAuth,
    /// Signs and checks upload and download URLs.
    pub signer: UrlSigner,
    /// Signs device manifests; publishes the keys that verify them.
    pub manifest_signer: ManifestSigner,
    /// Base URL for links handed to clients (set once the server is bound).
    pub public_url: std::sync::OnceLock<String>,
    pub stores: Stores,
    pub clamd: Option<Clamd>,
    pub events: broadcast::Sender<Event>,
    /// Only the events that give devices news on their next poll
    /// (`DevicesReleased`, `AllPollersWake`): long polls wait on this, so
    /// the other events (audit events, reports, changes of content) never
    /// wake them.
    pub poll_events: broadcast::Sender<Event>,
    /// Wakes this process's job workers when a job was enqueued here.
    pub job_wake: tokio::sync::Notify,
    /// This process, in the events it sends to others (`events.rs`).
    pub instance: uuid::Uuid,
    /// The device API's hot-path caches (`service/device_cache.rs`).
    pub device_cache: crate::service::device_cache::DeviceCache,
    /// The reads of polls arriving together, made together
    /// (`service/device_api/batch.rs`).
    pub poll_reads: crate::service::device_api::batch::PollReads,
    /// Committed events other processes are told of in batches
    /// (`WriteTx::notify_soon`).
    pub deferred_events: crate::events::Deferred,
    /// Device writes per device and enrollments per token
    /// (`service/rate_limit.rs`).
    pub rate_limits: crate::service::rate_limit::RateLimits,
    /// Reconcile jobs this process brought forward, and when
    /// (`service::deployment::reconcile::wake`).
    pub reconcile_wakes: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, std::time::Instant>>,
    /// Resumable uploads with a PATCH or DELETE under way in this process
    /// (`service::tus`).
    pub tus_busy: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, crate::service::tus::Writer>>,
}

impl std::ops::Deref for App {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl App {
    /// Connect to everything the config names. Does not run migrations.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (db, db_queries) = crate::db::connect_counted(&config).await?;
        let jwt = JwtAuth::from_config(&config.auth, &config.data_dir)?;
        let signer = UrlSigner::new(if config.auth.url_secret.is_empty() {
            crate::auth::secret::load_or_generate(
                &config.data_dir,
                signed_url::GENERATED_SECRET_FILE,
                "auth.url_secret",
            )?
        } else {
            config.auth.url_secret.expose().as_bytes().to_vec()
        });
        let manifest_signer = ManifestSigner::from_config(&config.packages, &config.data_dir)
            .context("loading the manifest signing key")?;
        let public_url = std::sync::OnceLock::new();
        if !config.http.public_url.is_empty() {
            let _ = public_url.set(config.http.public_url.clone());
        }
        let stores = Stores::from_config(&config.storage).await.context("opening the object stores")?;
        let clamd = match config.scanner.mode {
            crate::config::ScannerMode::Clamd => Some(
                Clamd::new(config.clamd_address()?, config.scanner.timeout).with_log(config.scanner.clamd_log.clone()),
            ),
            crate::config::ScannerMode::Disabled => {
                tracing::warn!(
                    "SCANNER DISABLED (scanner.mode = \"disabled\"): uploads will NOT be scanned for malware"
                );
                None
            }
        };
        let (events, _) = broadcast::channel(1024);
        let (poll_events, _) = broadcast::channel(1024);
        let rate_limits = crate::service::rate_limit::RateLimits::new(&config.devices);
        Ok(Self(Arc::new(Inner {
            config,
            db,
            db_queries,
            jwt,
            signer,
            manifest_signer,
            public_url,
            stores,
            clamd,
            events,
            poll_events,
            job_wake: tokio::sync::Notify::new(),
            instance: uuid::Uuid::new_v4(),
            device_cache: crate::service::device_cache::DeviceCache::default(),
            poll_reads: crate::service::device_api::batch::PollReads::default(),
            deferred_events: crate::events::Deferred::default(),
            rate_limits,
            reconcile_wakes: std::sync::Mutex::default(),
            tus_busy: std::sync::Mutex::default(),
        })))
    }

    /// Tell idle workers in this process to look for work now (other
    /// processes find it on their next poll).
    pub fn wake_workers(&self) {
        self.job_wake.notify_waiters();
    }

    /// Base URL for links handed to clients.
    pub fn public_url(&self) -> &str {
        self.public_url.get().map_or("http://127.0.0.1:8080", String::as_str)
    }

    pub fn publish(&self, event: Event) {
        // No subscriber is fine: events are notifications, not the record.
        if matches!(event, Event::DevicesReleased(_) | Event::AllPollersWake) {
            let _ = self.poll_events.send(event.clone());
        }
        let _ = self.events.send(event);
    }
}
