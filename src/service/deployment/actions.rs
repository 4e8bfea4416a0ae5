//! Operator actions on a deployment: pause, resume, cancel, release the
//! install. Each checks DEPLOYMENT_WRITE and the state it starts from,
//! audits, and runs a reconcile pass in the same transaction.

use std::sync::Arc;

use entity::{deployment, device_update};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde_json::json;
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;

use super::reconcile::{cancel_updates, reconcile_in, release_install_in, set_state};
use super::{Deployment, DeploymentState, UpdateState, find, get_unchecked};

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
