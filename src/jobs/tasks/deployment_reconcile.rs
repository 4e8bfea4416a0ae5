//! `deployment.reconcile`: one reconcile pass of a deployment
//! (`service::deployment::reconcile`), which queues the next run while the
//! deployment is active.

use crate::app::App;
use crate::jobs::Handler;
use crate::service::deployment::reconcile::{self, RECONCILE_JOB, ReconcilePayload};

pub struct ReconcileJob;

#[async_trait::async_trait]
impl Handler for ReconcileJob {
    fn kind(&self) -> &'static str {
        RECONCILE_JOB
    }

    async fn run(&self, app: &App, job: &entity::job::Model) -> anyhow::Result<()> {
        let payload: ReconcilePayload = serde_json::from_value(job.payload.clone())
            .map_err(|e| anyhow::anyhow!("payload without a deployment_id: {e}"))?;
        reconcile::run_job(app, payload.deployment_id, job.id).await?;
        Ok(())
    }
}
