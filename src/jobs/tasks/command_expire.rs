//! `command.expire`: mark overdue commands EXPIRED
//! (`service::command::expire_overdue`), queued again after
//! `commands.expire_interval`.

use chrono::{TimeDelta, Utc};

use crate::app::App;
use crate::jobs::Handler;
use crate::service::command::{self, EXPIRE_JOB};

pub struct ExpireJob;

#[async_trait::async_trait]
impl Handler for ExpireJob {
    fn kind(&self) -> &'static str {
        EXPIRE_JOB
    }

    async fn run(&self, app: &App, _job: &entity::job::Model) -> anyhow::Result<()> {
        let expired = command::expire_overdue(app).await?;
        if expired > 0 {
            tracing::info!(expired, "expired overdue commands");
        }
        let every = TimeDelta::from_std(app.config.commands.expire_interval).unwrap_or(TimeDelta::seconds(30));
        crate::jobs::ensure_queued(&app.db, EXPIRE_JOB, Utc::now() + every).await
    }
}
