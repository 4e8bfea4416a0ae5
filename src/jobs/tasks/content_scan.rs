//! `content.scan`: the next steps of one content's scan and promotion
//! (`service::scan::run_job`); queued by an upload, `rescanContent` and
//! `promoteContent`.

use crate::app::App;
use crate::jobs::Handler;
use crate::service::content::{SCAN_JOB, ScanPayload};
use crate::service::scan;

pub struct ScanJob;

#[async_trait::async_trait]
impl Handler for ScanJob {
    fn kind(&self) -> &'static str {
        SCAN_JOB
    }

    async fn run(&self, app: &App, job: &entity::job::Model) -> anyhow::Result<()> {
        let payload: ScanPayload = serde_json::from_value(job.payload.clone())
            .map_err(|e| anyhow::anyhow!("payload without a content_id: {e}"))?;
        let last_attempt = job.attempts >= job.max_attempts;
        scan::run_job(app, payload.content_id, last_attempt, payload.promote).await.map_err(|e| anyhow::anyhow!("{e}"))
    }
}
