//! `jobs.prune`: delete finished jobs after a while; reschedules itself
//! hourly.

use chrono::{TimeDelta, Utc};
use entity::job::{self, Column};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};

use super::{DONE, FAILED, Handler};
use crate::app::App;

pub const PRUNE: &str = "jobs.prune";

/// Done jobs are kept this long, failed ones four times longer.
const KEEP_DONE: TimeDelta = TimeDelta::days(7);
const EVERY: TimeDelta = TimeDelta::hours(1);

pub struct Prune;

#[async_trait::async_trait]
impl Handler for Prune {
    fn kind(&self) -> &'static str {
        PRUNE
    }

    async fn run(&self, app: &App, _job: &job::Model) -> anyhow::Result<()> {
        let now = Utc::now();
        let deleted = job::Entity::delete_many()
            .filter(
                Condition::any()
                    .add(Condition::all().add(Column::State.eq(DONE)).add(Column::UpdatedAt.lt(now - KEEP_DONE)))
                    .add(Condition::all().add(Column::State.eq(FAILED)).add(Column::UpdatedAt.lt(now - KEEP_DONE * 4))),
            )
            .exec(&app.db)
            .await?;
        tracing::info!(deleted = deleted.rows_affected, "pruned finished jobs");
        super::ensure_queued(&app.db, PRUNE, now + EVERY).await
    }
}
