//! `content.sha1_backfill`: fill in the SHA-1 of content stored before
//! uploads computed it (`service::content::backfill_sha1`); queued once by
//! a starting job runner while some stored content has none.

use crate::app::App;
use crate::jobs::Handler;
use crate::service::content::{self, SHA1_BACKFILL_JOB};

pub struct Sha1BackfillJob;

#[async_trait::async_trait]
impl Handler for Sha1BackfillJob {
    fn kind(&self) -> &'static str {
        SHA1_BACKFILL_JOB
    }

    async fn run(&self, app: &App, _job: &entity::job::Model) -> anyhow::Result<()> {
        let done = content::backfill_sha1(app).await?;
        if done.filled > 0 || done.skipped > 0 {
            tracing::info!(filled = done.filled, skipped = done.skipped, "SHA-1 backfill of stored content");
        }
        Ok(())
    }
}
