//! Starting and stopping the server: bind (port 0 works), migrate, serve,
//! and on shutdown let in-flight requests finish within the grace period.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;

pub struct Server {
    pub addr: SocketAddr,
    pub app: App,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        // Install the metrics recorder before the first request is counted.
        crate::telemetry::metrics();
        let app = App::build(config).await?;
        let config = &app.config;
        if config.database.migrate_on_start {
            crate::db::migrate_up(&app.db).await?;
        }
        let schema = crate::graphql::build(app.clone(), &config.graphql);
        let router = crate::http::router(app.clone(), schema);
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("binding {} (listen)", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        // Without http.public_url, links point at the address we are bound to.
        let _ = app.public_url.set(format!("http://{addr}"));
        let shutdown = CancellationToken::new();
        let grace = config.http.shutdown_grace;
        let token = shutdown.clone();
        crate::events::spawn_listener(app.clone(), shutdown.clone());
        crate::service::device_cache::DeviceCache::spawn(app.clone(), shutdown.clone());
        let workers = if config.jobs.in_process {
            let runner = crate::jobs::Runner::new(app.clone());
            runner.queue_startup_jobs().await;
            Some(tokio::spawn(runner.run(shutdown.clone())))
        } else {
            None
        };
        // `into_make_service` turns the router into its routes once: given
        // the router itself, `axum::serve` rebuilds the whole route table
        // for every connection (`Router::with_state` per accept), about
        // 28 KB that each open connection keeps (docs/benchmarks.md).
        let make_service = router.into_make_service();
        // TCP_NODELAY: a small answer (a 304, a short Range) goes out at
        // once instead of waiting for the client's delayed ACK (~40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "could not set TCP_NODELAY on a connection");
            }
        });
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, make_service)
                .with_graceful_shutdown(token.clone().cancelled_owned())
                .into_future();
            let deadline = async {
                token.cancelled().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                result = serve => result.context("serving HTTP")?,
                () = deadline => tracing::warn!(?grace, "shutdown grace period over; dropping remaining connections"),
            }
            if let Some(workers) = workers
                && tokio::time::timeout(grace, workers).await.is_err()
            {
                tracing::warn!(?grace, "job workers did not stop within the grace period");
            }
            Ok(())
        });
        tracing::info!(%addr, "otadepot listening");
        if let Some(clamd) = app.clamd.clone() {
            // Off the start path: a clamd that hangs must not delay it.
            tokio::spawn(async move { clamd.log_startup().await });
        }
        Ok(Self { addr, app, shutdown, task })
    }

    /// Stop accepting connections; in-flight requests go on until done.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Wait until the server has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        let result = self.task.await.context("server task panicked")?;
        self.app.db.clone().close().await.ok();
        result
    }
}
