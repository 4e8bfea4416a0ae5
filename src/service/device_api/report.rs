//! A device's reports on its update: the steps of the device_update state
//! machine (DESIGN.md §4), one call in one transaction however many steps
//! it takes.
//!
//! Rule: a report is applied with [`apply_in`] inside the caller's
//! transaction; the call commits once, after its last step, so a failure
//! at any step leaves nothing of the call behind.

use chrono::Utc;
use entity::{deployment, device_update};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::Ctx;
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;
use crate::service::deployment::reconcile::wake_soon;
use crate::service::deployment::window::MaintenanceWindow;
use crate::service::deployment::{UpdateState, find_update};

/// What a device says of its update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportStatus {
    Acknowledged,
    Downloading,
    Downloaded,
    Installing,
    /// The device runs `version` now: INSTALLED when it is the package's,
    /// FAILED otherwise.
    InstalledVersion,
    Failed,
    /// The device saw the cancel.
    Cancelled,
}

impl ReportStatus {
    pub const ALL: [ReportStatus; 7] = [
        Self::Acknowledged,
        Self::Downloading,
        Self::Downloaded,
        Self::Installing,
        Self::InstalledVersion,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acknowledged => "ACKNOWLEDGED",
            Self::Downloading => "DOWNLOADING",
            Self::Downloaded => "DOWNLOADED",
            Self::Installing => "INSTALLING",
            Self::InstalledVersion => "INSTALLED_VERSION",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// The status by its name, or BAD_USER_INPUT on `status`.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name).ok_or_else(|| {
            Error::invalid(
                "status",
                format!(
                    "{name:?}: one of ACKNOWLEDGED, DOWNLOADING, DOWNLOADED, INSTALLING, INSTALLED_VERSION, FAILED, CANCELLED"
                ),
            )
        })
    }
}

/// A device's status report on one of its updates.
#[derive(Clone, Debug)]
pub struct StatusReport {
    pub status: ReportStatus,
    /// 0 to 100.
    pub progress: Option<i32>,
    /// INSTALLED_VERSION: the version the device now runs.
    pub version: Option<String>,
    pub errcode: Option<String>,
    pub message: Option<String>,
    /// Refuse to start installing outside the deployment's maintenance
    /// window (a device asking for it: `/device/v1`). Off for steps a
    /// protocol fills in for a device that installed already.
    pub honour_window: bool,
}

impl StatusReport {
    pub fn new(status: ReportStatus) -> Self {
        Self { status, progress: None, version: None, errcode: None, message: None, honour_window: false }
    }
}

/// What a step did, and leaves for after the commit.
pub(super) struct Applied {
    /// The update after the step.
    pub update: device_update::Model,
    /// The deployment's reconcile run was brought forward: wake this
    /// process's workers once committed.
    pub woke: bool,
}

/// One report (`POST /device/v1/updates/{id}/status`): one write against
/// the device's rate limit, one transaction.
pub async fn report(app: &App, ctx: &Ctx, update_id: Uuid, report: StatusReport) -> Result<device_update::Model> {
    app.rate_limits.device_write(ctx.require_device()?.id)?;
    let report = StatusReport { honour_window: true, ..report };
    report_steps(app, ctx, update_id, vec![report]).await
}

/// Several steps of one update, in order, in one transaction, for a call
/// charged already (a protocol whose one message moves the update several
/// steps). Returns the update after the last step.
pub async fn report_steps(
    app: &App,
    ctx: &Ctx,
    update_id: Uuid,
    steps: Vec<StatusReport>,
) -> Result<device_update::Model> {
    report_steps_noting(app, ctx, update_id, steps, Note::Keep).await
}

/// What a call leaves as the message of an update that is still running
/// (a protocol whose progress carries the device's errors: DDI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Note {
    Keep,
    Set(String),
    Clear,
}

/// [`report_steps`], and then `note` in the same transaction: set on an
/// update still in flight, cleared from any.
pub(super) async fn report_steps_noting(
    app: &App,
    ctx: &Ctx,
    update_id: Uuid,
    steps: Vec<StatusReport>,
    note: Note,
) -> Result<device_update::Model> {
    for step in &steps {
        validate(step)?;
    }
    let mut tx = WriteTx::begin(app).await?;
    let mut woke = false;
    let mut last = None;
    for step in steps {
        let applied = apply_in(&mut tx, app, ctx, update_id, step).await?;
        woke |= applied.woke;
        last = Some(applied.update);
    }
    let noted = match &note {
        Note::Keep => None,
        Note::Set(message) => Some(
            device_update::Entity::update_many()
                .col_expr(device_update::Column::Message, Expr::value(message.chars().take(1024).collect::<String>()))
                .filter(device_update::Column::Id.eq(update_id))
                .filter(device_update::Column::State.is_in(UpdateState::IN_FLIGHT.map(UpdateState::as_str))),
        ),
        Note::Clear => Some(
            device_update::Entity::update_many()
                .col_expr(device_update::Column::Message, Expr::value(Option::<String>::None))
                .filter(device_update::Column::Id.eq(update_id)),
        ),
    };
    if let Some(noted) = noted
        && let Some(update) = noted.exec_with_returning(tx.conn()).await?.into_iter().next()
    {
        last = Some(update);
    }
    tx.commit().await?;
    if woke {
        app.wake_workers();
    }
    match last {
        Some(update) => Ok(update),
        None => find_update(&app.db, update_id).await,
    }
}

pub(super) fn validate(report: &StatusReport) -> Result<()> {
    if let Some(p) = report.progress
        && !(0..=100).contains(&p)
    {
        return Err(Error::invalid("progress", "between 0 and 100"));
    }
    for (field, value, max) in
        [("errcode", &report.errcode, 64), ("message", &report.message, 1024), ("version", &report.version, 64)]
    {
        if value.as_ref().is_some_and(|v| v.chars().count() > max) {
            return Err(Error::invalid(field, format!("at most {max} characters")));
        }
    }
    Ok(())
}

/// One step inside `tx` (validated with [`validate`] first).
pub(super) async fn apply_in(
    tx: &mut WriteTx,
    app: &App,
    ctx: &Ctx,
    update_id: Uuid,
    report: StatusReport,
) -> Result<Applied> {
    let device = ctx.require_device()?.clone();
    // The update and its deployment in one statement; the change below is
    // one UPDATE … RETURNING (see the module doc for the count).
    let (update, deployment) = device_update::Entity::find_by_id(update_id)
        .filter(device_update::Column::DeviceId.eq(device.id))
        .find_also_related(deployment::Entity)
        .one(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Update, update_id.to_string()))?;
    let deployment =
        deployment.ok_or_else(|| Error::not_found(ResourceKind::Deployment, update.deployment_id.to_string()))?;
    let from = UpdateState::parse(&update.state)?;
    let now = Utc::now();
    use UpdateState::*;
    let invalid =
        |to: &str| Error::InvalidState(format!("update {update_id} is {}; it cannot become {to}", from.as_str()));
    let not_released = || {
        Error::InvalidState(format!(
            "update {update_id}: the install is not released yet (a {} deployment)",
            deployment.mode
        ))
    };
    if report.honour_window
        && from == Downloaded
        && deployment.install_released
        && matches!(report.status, ReportStatus::Installing | ReportStatus::InstalledVersion)
        && let Some(state) = MaintenanceWindow::state_of(&deployment, now)?
        && !state.open
    {
        let opens = state.opens_at.map_or_else(|| "never".to_owned(), |at| at.to_rfc3339());
        return Err(Error::InvalidState(format!(
            "update {update_id}: outside the deployment's maintenance window; it opens at {opens}"
        )));
    }
    let mut message = report.message.clone();
    // The package, once read (for INSTALLED_VERSION).
    let mut installed_package = None;
    let to = match report.status {
        ReportStatus::Acknowledged => match from {
            Released | Acknowledged => Acknowledged,
            _ => return Err(invalid("ACKNOWLEDGED")),
        },
        ReportStatus::Downloading => match from {
            Released | Acknowledged | Downloading => Downloading,
            _ => return Err(invalid("DOWNLOADING")),
        },
        ReportStatus::Downloaded => match from {
            Released | Acknowledged | Downloading | Downloaded => Downloaded,
            _ => return Err(invalid("DOWNLOADED")),
        },
        ReportStatus::Installing => match from {
            Downloaded | Installing if deployment.install_released => Installing,
            Downloaded => return Err(not_released()),
            _ => return Err(invalid("INSTALLING")),
        },
        ReportStatus::InstalledVersion => match from {
            Downloaded | Installing if deployment.install_released => {
                let package = app.device_cache.package(tx.conn(), deployment.package_id).await?;
                let version_matches = report.version.as_deref() == Some(package.model.version.as_str());
                let expected = package.model.version.clone();
                installed_package = Some(package);
                match report.version.as_deref() {
                    Some(_) if version_matches => Installed,
                    other => {
                        message =
                            Some(format!("reported version {}, expected {}", other.unwrap_or("(none)"), expected));
                        Failed
                    }
                }
            }
            Downloaded => return Err(not_released()),
            _ => return Err(invalid("INSTALLED")),
        },
        ReportStatus::Failed => {
            if from.is_final() {
                return Err(invalid("FAILED"));
            }
            Failed
        }
        ReportStatus::Cancelled => {
            if from != Cancelled {
                return Err(invalid("CANCELLED"));
            }
            let update = device_update::Entity::update_many()
                .col_expr(device_update::Column::CancelAcknowledged, Expr::value(true))
                .filter(device_update::Column::Id.eq(update_id))
                .exec_with_returning(tx.conn())
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::not_found(ResourceKind::Update, update_id.to_string()))?;
            return Ok(Applied { update, woke: false });
        }
    };
    let progress = match to {
        Installed | Downloaded => 100,
        _ => report.progress.unwrap_or(update.progress),
    };
    let mut change = device_update::Entity::update_many()
        .col_expr(device_update::Column::State, Expr::value(to.as_str()))
        .col_expr(device_update::Column::Progress, Expr::value(progress))
        .col_expr(device_update::Column::UpdatedAt, Expr::value(now))
        .filter(device_update::Column::Id.eq(update_id))
        .filter(device_update::Column::State.eq(from.as_str()));
    if to.is_final() {
        change = change.col_expr(device_update::Column::FinishedAt, Expr::value(now));
    }
    if to == Failed {
        change = change
            .col_expr(device_update::Column::ErrorCode, Expr::value(report.errcode.clone()))
            .col_expr(device_update::Column::Message, Expr::value(message.clone()));
    }
    let Some(changed) = change.exec_with_returning(tx.conn()).await?.into_iter().next() else {
        return Err(Error::InvalidState(format!("update {update_id} changed meanwhile; report again")));
    };
    if to == Installed
        && let Some(package) = &installed_package
    {
        crate::service::device::record_installed(
            tx.conn(),
            device.id,
            &package.model.component,
            &package.model.version,
            Some((package.model.id, deployment.id)),
        )
        .await?;
    }
    if to.is_final() {
        let action = if to == Installed { "device_update.installed" } else { "device_update.failed" };
        tx.audit(
            ctx,
            action,
            ResourceKind::Update,
            &update_id.to_string(),
            json!({ "deployment_id": deployment.id, "errcode": report.errcode, "message": message }),
        )
        .await?;
    }
    let woke = (to.is_final() || to == Downloaded) && wake_soon(app, tx.conn(), &deployment).await?;
    let event = Event::DeviceUpdateChanged { deployment: deployment.id, update: update_id };
    if to == from {
        // Progress within a step: nothing another process keeps depends
        // on it (its caches hold states); subscribers there hear of it
        // within 100 ms.
        tx.notify_soon(event);
    } else {
        tx.notify(event);
    }
    Ok(Applied { update: changed, woke })
}

/// The device refused the cancel of `update` (CANCELLED, not acknowledged)
/// and goes on with it: the cancel counts as answered (it is not shown
/// again), the refusal is the update's message, and it is audited.
pub(super) async fn refuse_cancel(
    app: &App,
    ctx: &Ctx,
    update: &device_update::Model,
    deployment: &deployment::Model,
    message: &str,
) -> Result<()> {
    let message: String = message.chars().take(1024).collect();
    let mut tx = WriteTx::begin(app).await?;
    let changed = device_update::Entity::update_many()
        .col_expr(device_update::Column::CancelAcknowledged, Expr::value(true))
        .col_expr(device_update::Column::Message, Expr::value(message.clone()))
        .col_expr(device_update::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(device_update::Column::Id.eq(update.id))
        .filter(device_update::Column::State.eq(UpdateState::Cancelled.as_str()))
        .filter(device_update::Column::CancelAcknowledged.eq(false))
        .exec(tx.conn())
        .await?;
    if changed.rows_affected == 0 {
        // Answered already (a repeat): nothing more to record.
        return Ok(());
    }
    tx.audit(
        ctx,
        "device_update.cancel_refused",
        ResourceKind::Update,
        &update.id.to_string(),
        json!({ "deployment_id": deployment.id, "message": message }),
    )
    .await?;
    tx.notify(Event::DeviceUpdateChanged { deployment: deployment.id, update: update.id });
    tx.commit().await?;
    Ok(())
}
