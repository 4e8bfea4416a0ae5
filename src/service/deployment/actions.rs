//! Operator actions on a deployment: pause, resume, cancel, release the
//! install; and the cancel of one device's update. Each checks DEPLOYMENT_WRITE and the state it starts from,
//! audits, and runs a reconcile pass in the same transaction.

use std::sync::Arc;

use chrono::Utc;
use entity::{deployment, device_update};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;

use super::reconcile::{cancel_updates, reconcile_in, release_install_in, set_state};
use super::{Deployment, DeploymentState, UpdateState, UpdateView, find, find_update, get_unchecked};

async fn operator_action(
    app: &App,
    ctx: &Ctx,
    id: Uuid,
    action: &str,
    allowed_from: &[DeploymentState],
    act: impl AsyncFnOnce(&mut WriteTx, &deployment::Model) -> Result<()>,
) -> Result<Deployment> {
    ctx.require(Permission::DeploymentWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let row = find(tx.conn(), id).await?;
    let state = DeploymentState::parse(&row.state)?;
    if !allowed_from.contains(&state) {
        return Err(Error::InvalidState(format!("deployment {id} is {}; it cannot {action}", state.as_str())));
    }
    act(&mut tx, &row).await?;
    tx.audit(
        ctx,
        &format!("deployment.{action}"),
        ResourceKind::Deployment,
        &id.to_string(),
        json!({ "state_before": state.as_str() }),
    )
    .await?;
    let row = find(tx.conn(), id).await?;
    reconcile_in(&mut tx, &row).await?;
    tx.notify(Event::DeploymentChanged(id));
    tx.commit().await?;
    app.wake_workers();
    get_unchecked(&app.db, id).await
}

/// No further releases; devices under way go on.
pub async fn pause(app: &App, ctx: &Ctx, id: Uuid) -> Result<Deployment> {
    operator_action(app, ctx, id, "pause", &[DeploymentState::Running, DeploymentState::Scheduled], async |tx, row| {
        set_state(tx, row, DeploymentState::Paused, None).await
    })
    .await
}

pub async fn resume(app: &App, ctx: &Ctx, id: Uuid) -> Result<Deployment> {
    operator_action(app, ctx, id, "resume", &[DeploymentState::Paused], async |tx, row| {
        set_state(tx, row, DeploymentState::Running, None).await
    })
    .await
}

/// Devices not yet INSTALLING are CANCELLED (a device learns of it on its
/// next poll); installing ones finish.
pub async fn cancel(app: &App, ctx: &Ctx, id: Uuid) -> Result<Deployment> {
    operator_action(
        app,
        ctx,
        id,
        "cancel",
        &[DeploymentState::Scheduled, DeploymentState::Running, DeploymentState::Paused],
        async |tx, row| {
            let told: Vec<Uuid> = device_update::Entity::find()
                .select_only()
                .column(device_update::Column::DeviceId)
                .filter(device_update::Column::DeploymentId.eq(row.id))
                .filter(device_update::Column::ReleasedAt.is_not_null())
                .filter(device_update::Column::State.is_in(UpdateState::IN_FLIGHT.iter().map(|s| s.as_str())))
                .into_tuple()
                .all(tx.conn())
                .await?;
            tx.notify(Event::DevicesReleased(Arc::new(told.into_iter().collect())));
            cancel_updates(
                tx,
                row.id,
                &[
                    UpdateState::Pending,
                    UpdateState::Released,
                    UpdateState::Acknowledged,
                    UpdateState::Downloading,
                    UpdateState::Downloaded,
                ],
                "the deployment was cancelled",
            )
            .await?;
            set_state(tx, row, DeploymentState::Cancelled, Some("cancelled by an operator")).await
        },
    )
    .await
}

/// DOWNLOAD_ONLY (or a COORDINATED one an operator pushes on): let the
/// devices that downloaded install.
pub async fn release_install(app: &App, ctx: &Ctx, id: Uuid) -> Result<Deployment> {
    operator_action(
        app,
        ctx,
        id,
        "release_install",
        &[DeploymentState::Running, DeploymentState::Paused],
        async |tx, row| {
            if row.install_released {
                return Err(Error::InvalidState(format!("deployment {} already lets devices install", row.id)));
            }
            // operator_action audits it as the operator's.
            release_install_in(tx, row, None).await
        },
    )
    .await
}

/// One device's update (`cancelDeviceUpdate`), whatever protocol its
/// device speaks: CANCELLED unless it is installing or over (as a
/// deployment's cancel leaves installing ones to finish). A device that
/// was offered it learns on its next poll (`CANCEL` on `/device/v1`,
/// `cancelAction` over DDI, no update on EnOS) and its long poll wakes;
/// the deployment is reconciled in the same transaction (it may be
/// complete now). Audited as `device_update.cancel`.
pub async fn cancel_update(app: &App, ctx: &Ctx, id: Uuid) -> Result<UpdateView> {
    ctx.require(Permission::DeploymentWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let update = find_update(tx.conn(), id).await?;
    let from = UpdateState::parse(&update.state)?;
    if from == UpdateState::Installing || from.is_final() {
        return Err(Error::InvalidState(format!(
            "update {id} is {}; only an update not yet installing can be cancelled",
            from.as_str()
        )));
    }
    let now = Utc::now();
    let changed = device_update::Entity::update_many()
        .col_expr(device_update::Column::State, Expr::value(UpdateState::Cancelled.as_str()))
        .col_expr(device_update::Column::Message, Expr::value("cancelled by an operator"))
        .col_expr(device_update::Column::FinishedAt, Expr::value(now))
        .col_expr(device_update::Column::UpdatedAt, Expr::value(now))
        .filter(device_update::Column::Id.eq(id))
        .filter(device_update::Column::State.eq(from.as_str()))
        .exec(tx.conn())
        .await?;
    if changed.rows_affected == 0 {
        return Err(Error::InvalidState(format!("update {id} changed meanwhile; look again")));
    }
    tx.audit(
        ctx,
        "device_update.cancel",
        ResourceKind::Update,
        &id.to_string(),
        json!({ "deployment_id": update.deployment_id, "device_id": update.device_id, "state_before": from.as_str() }),
    )
    .await?;
    if update.released_at.is_some() {
        tx.notify(Event::DevicesReleased(Arc::new([update.device_id].into_iter().collect())));
    }
    tx.notify(Event::DeviceUpdateChanged { deployment: update.deployment_id, update: id });
    let row = find(tx.conn(), update.deployment_id).await?;
    reconcile_in(&mut tx, &row).await?;
    tx.notify(Event::DeploymentChanged(update.deployment_id));
    tx.commit().await?;
    app.wake_workers();
    let row = find_update(&app.db, id).await?;
    let device = crate::service::device::by_ids(&app.db, vec![row.device_id])
        .await?
        .remove(&row.device_id)
        .ok_or_else(|| Error::not_found(ResourceKind::Device, row.device_id.to_string()))?;
    Ok(UpdateView { state: UpdateState::parse(&row.state)?, device, row })
}
