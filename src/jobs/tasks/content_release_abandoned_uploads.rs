//! `content.release_abandoned_uploads`: the periodic sweep
//! (`service::upload_sweep::release_abandoned_uploads`), queued again after
//! half of `content.upload_idle_timeout`.

use chrono::{TimeDelta, Utc};

use crate::app::App;
use crate::jobs::Handler;
use crate::service::upload_sweep::{self, RELEASE_ABANDONED_JOB};

pub struct ReleaseAbandonedJob;

#[async_trait::async_trait]
impl Handler for ReleaseAbandonedJob {
    fn kind(&self) -> &'static str {
        RELEASE_ABANDONED_JOB
    }

    async fn run(&self, app: &App, _job: &entity::job::Model) -> anyhow::Result<()> {
        let released = upload_sweep::release_abandoned_uploads(app).await?;
        if released > 0 {
            tracing::warn!(released, "released abandoned uploads");
        }
        let every = TimeDelta::from_std(app.config.content.upload_idle_timeout / 2).unwrap_or(TimeDelta::minutes(5));
        crate::jobs::ensure_queued(&app.db, RELEASE_ABANDONED_JOB, Utc::now() + every).await
    }
}
