//! The reconciler: the only code that releases devices, moves phases and
//! ends deployments (see the module doc of `service::deployment`). It
//! reads counts and acts on them, so a pass run twice does nothing more.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use entity::{deployment, device, device_update, package_model};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};
use serde_json::json;
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::Ctx;
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;
use crate::service::device::DeviceStatus;

use super::create::{insert_updates, plan_updates};
use super::{DeploymentState, INSERT_CHUNK, Mode, UpdateState, find, parse_phases};

/// Job kind of the reconciler.
pub const RECONCILE_JOB: &str = "deployment.reconcile";

/// The payload of a `deployment.reconcile` job.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ReconcilePayload {
    pub deployment_id: Uuid,
}

pub(super) fn interval(app: &App) -> TimeDelta {
    TimeDelta::from_std(app.config.deployments.reconcile_interval).unwrap_or(TimeDelta::seconds(5))
}

/// Queue the next reconcile run of `id` at `at`, remembered on the row so
/// device reports can bring it forward.
pub(super) async fn schedule(tx: &mut WriteTx, id: Uuid, at: DateTime<Utc>) -> Result<()> {
    let job = crate::jobs::enqueue_at(
        tx.conn(),
        RECONCILE_JOB,
        serde_json::to_value(ReconcilePayload { deployment_id: id }).map_err(Error::internal)?,
        at,
        3,
    )
    .await?;
    deployment::Entity::update_many()
        .col_expr(deployment::Column::ReconcileJobId, Expr::value(job))
        .filter(deployment::Column::Id.eq(id))
        .exec(tx.conn())
        .await?;
    Ok(())
}

/// Bring the deployment's queued reconcile run forward to now.
pub(super) async fn wake(conn: &impl ConnectionTrait, row: &deployment::Model) -> Result<()> {
    if let Some(job) = row.reconcile_job_id {
        entity::job::Entity::update_many()
            .col_expr(entity::job::Column::RunAt, Expr::value(Utc::now()))
            .filter(entity::job::Column::Id.eq(job))
            .filter(entity::job::Column::State.eq(crate::jobs::QUEUED))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// Reports close together share a reconcile pass: while the run this
/// process brought forward is at most this old, it is due or under way, so
/// bringing it forward again (and waking the workers) would change nothing.
const WAKE_COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// [`wake`] for device reports, coalesced (see [`WAKE_COALESCE`]); whether
/// it woke the run (the caller then wakes this process's workers).
pub(crate) async fn wake_soon(app: &App, conn: &impl ConnectionTrait, row: &deployment::Model) -> Result<bool> {
    let Some(job) = row.reconcile_job_id else { return Ok(false) };
    {
        let mut wakes = app.reconcile_wakes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if wakes.get(&job).is_some_and(|at| at.elapsed() < WAKE_COALESCE) {
            return Ok(false);
        }
        if wakes.len() >= 10_000 {
            wakes.retain(|_, at| at.elapsed() < WAKE_COALESCE);
        }
        wakes.insert(job, std::time::Instant::now());
    }
    wake(conn, row).await?;
    Ok(true)
}

// ---------------------------------------------------------------------------
// The reconciler.

pub(super) async fn counts(conn: &impl ConnectionTrait, id: Uuid) -> Result<BTreeMap<UpdateState, u64>> {
    let rows: Vec<(String, i64)> = device_update::Entity::find()
        .select_only()
        .column(device_update::Column::State)
        .column_as(device_update::Column::Id.count(), "n")
        .filter(device_update::Column::DeploymentId.eq(id))
        .group_by(device_update::Column::State)
        .into_tuple()
        .all(conn)
        .await?;
    let mut out = BTreeMap::new();
    for (state, n) in rows {
        out.insert(UpdateState::parse(&state)?, u64::try_from(n).unwrap_or_default());
    }
    Ok(out)
}

/// Move updates of `id` in `from` states to `to` (CANCELLED, with a message).
/// Publishes `DeploymentChanged`, which also drops the deployment's updates
/// from the download check's cache (`service/device_download.rs`).
pub(super) async fn cancel_updates(tx: &mut WriteTx, id: Uuid, from: &[UpdateState], message: &str) -> Result<()> {
    tx.notify(Event::DeploymentChanged(id));
    let now = Utc::now();
    device_update::Entity::update_many()
        .col_expr(device_update::Column::State, Expr::value(UpdateState::Cancelled.as_str()))
        .col_expr(device_update::Column::Message, Expr::value(message))
        .col_expr(device_update::Column::FinishedAt, Expr::value(now))
        .col_expr(device_update::Column::UpdatedAt, Expr::value(now))
        .filter(device_update::Column::DeploymentId.eq(id))
        .filter(device_update::Column::State.is_in(from.iter().map(|s| s.as_str())))
        .exec(tx.conn())
        .await?;
    Ok(())
}

pub(super) async fn set_state(
    tx: &mut WriteTx,
    row: &deployment::Model,
    to: DeploymentState,
    reason: Option<&str>,
) -> Result<()> {
    let now = Utc::now();
    let mut update = deployment::Entity::update_many()
        .col_expr(deployment::Column::State, Expr::value(to.as_str()))
        .col_expr(deployment::Column::UpdatedAt, Expr::value(now))
        .filter(deployment::Column::Id.eq(row.id));
    if let Some(reason) = reason {
        update = update.col_expr(deployment::Column::Reason, Expr::value(reason));
    }
    if to.is_final() {
        update = update.col_expr(deployment::Column::FinishedAt, Expr::value(now));
    }
    update.exec(tx.conn()).await?;
    Ok(())
}

/// One reconcile pass inside `tx` (see the module doc). Returns whether the
/// deployment is still active.
pub(crate) async fn reconcile_in(tx: &mut WriteTx, row: &deployment::Model) -> Result<bool> {
    let row = deployment::Entity::find_by_id(row.id)
        .one(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Deployment, row.id.to_string()))?;
    let mut state = DeploymentState::parse(&row.state)?;
    if state.is_final() {
        return Ok(false);
    }
    let system = Ctx::system("deployment-reconciler");
    let now = Utc::now();
    let id = row.id;
    if state == DeploymentState::Scheduled {
        if row.start_at.is_some_and(|start| start > now) {
            return Ok(true);
        }
        set_state(tx, &row, DeploymentState::Running, None).await?;
        tx.audit(&system, "deployment.start", ResourceKind::Deployment, &id.to_string(), json!({})).await?;
        state = DeploymentState::Running;
    }
    let mode = Mode::parse(&row.mode)?;
    let auto = assign_newcomers(tx, &row).await? > 0
        || entity::device_group::Entity::find()
            .filter(entity::device_group::Column::AutoDeploymentId.eq(id))
            .count(tx.conn())
            .await?
            > 0;
    let row = find(tx.conn(), id).await?;
    let mut counts = counts(tx.conn(), id).await?;
    let count = |counts: &BTreeMap<UpdateState, u64>, s: UpdateState| counts.get(&s).copied().unwrap_or_default();

    // Expiry: nothing new starts; what is under way may finish.
    if row.expires_at.is_some_and(|at| at <= now)
        && count(&counts, UpdateState::Pending) + count(&counts, UpdateState::Released) > 0
    {
        cancel_updates(tx, id, &[UpdateState::Pending, UpdateState::Released], "the deployment expired").await?;
        deployment::Entity::update_many()
            .col_expr(deployment::Column::Reason, Expr::value("expired"))
            .filter(deployment::Column::Id.eq(id))
            .exec(tx.conn())
            .await?;
        tx.audit(&system, "deployment.expire", ResourceKind::Deployment, &id.to_string(), json!({})).await?;
        counts = self::counts(tx.conn(), id).await?;
    }

    let installed = count(&counts, UpdateState::Installed);
    let failed = count(&counts, UpdateState::Failed);
    // COORDINATED: a failure before the install stops it for everyone.
    if mode == Mode::Coordinated && !row.install_released && failed > 0 {
        cancel_updates(
            tx,
            id,
            &[
                UpdateState::Pending,
                UpdateState::Released,
                UpdateState::Acknowledged,
                UpdateState::Downloading,
                UpdateState::Downloaded,
            ],
            "a device failed before the coordinated install",
        )
        .await?;
        let reason = format!("{failed} device(s) failed before the coordinated install; nobody installs");
        set_state(tx, &row, DeploymentState::Aborted, Some(&reason)).await?;
        tx.audit(&system, "deployment.abort", ResourceKind::Deployment, &id.to_string(), json!({ "reason": reason }))
            .await?;
        tx.notify(Event::DeploymentChanged(id));
        return Ok(false);
    }
    // The failure threshold.
    let finished = installed + failed;
    if let Some(threshold) = row.failure_threshold_percent
        && finished > 0
        && failed * 100 > u64::try_from(threshold).unwrap_or_default() * finished
    {
        cancel_updates(tx, id, &[UpdateState::Pending], "the deployment was aborted").await?;
        let reason = format!(
            "{failed} of {finished} finished devices failed ({}%), above the threshold of {threshold}%",
            failed * 100 / finished
        );
        set_state(tx, &row, DeploymentState::Aborted, Some(&reason)).await?;
        tx.audit(&system, "deployment.abort", ResourceKind::Deployment, &id.to_string(), json!({ "reason": reason }))
            .await?;
        tx.notify(Event::DeploymentChanged(id));
        return Ok(false);
    }
    // COORDINATED: release the install when every target (or the policy's
    // quorum of them) has downloaded.
    let mut install_released = row.install_released;
    if mode == Mode::Coordinated && !install_released {
        let waiting: u64 =
            [UpdateState::Pending, UpdateState::Released, UpdateState::Acknowledged, UpdateState::Downloading]
                .iter()
                .map(|s| count(&counts, *s))
                .sum();
        let downloaded = count(&counts, UpdateState::Downloaded);
        let quorum = row.install_quorum_percent.is_some_and(|q| {
            downloaded * 100 >= u64::try_from(q).unwrap_or(100) * u64::try_from(row.target_count).unwrap_or_default()
        });
        if downloaded > 0 && (waiting == 0 || quorum) {
            release_install_in(tx, &row, Some(&system)).await?;
            install_released = true;
        }
    }

    // Devices parked at DOWNLOADED until the install is released do not
    // hold a place in flight: `maxInFlight` paces the downloads, and the
    // install is released to all of them together.
    let under_way: u64 = UpdateState::IN_FLIGHT.iter().map(|s| count(&counts, *s)).sum();
    let parked = if install_released { 0 } else { count(&counts, UpdateState::Downloaded) };
    let in_flight = under_way - parked;
    let pending = count(&counts, UpdateState::Pending);
    if state == DeploymentState::Running && pending > 0 {
        let phases = parse_phases(&row.phases);
        let target = u64::try_from(row.target_count).unwrap_or_default();
        let released_total = device_update::Entity::find()
            .filter(device_update::Column::DeploymentId.eq(id))
            .filter(device_update::Column::ReleasedAt.is_not_null())
            .count(tx.conn())
            .await?;
        let cap_of = |phase: usize| (target * u64::try_from(phases[phase]).unwrap_or(100)).div_ceil(100);
        let mut phase = usize::try_from(row.current_phase).unwrap_or_default().min(phases.len() - 1);
        // The next phase starts once every device of this one has finished.
        while released_total >= cap_of(phase) && in_flight == 0 && phase + 1 < phases.len() {
            phase += 1;
        }
        if phase != usize::try_from(row.current_phase).unwrap_or_default() {
            deployment::Entity::update_many()
                .col_expr(deployment::Column::CurrentPhase, Expr::value(i32::try_from(phase).unwrap_or_default()))
                .filter(deployment::Column::Id.eq(id))
                .exec(tx.conn())
                .await?;
            tx.audit(
                &system,
                "deployment.phase",
                ResourceKind::Deployment,
                &id.to_string(),
                json!({ "phase": phase, "percent": phases[phase] }),
            )
            .await?;
        }
        let mut room = cap_of(phase).saturating_sub(released_total);
        if let Some(max) = row.max_in_flight {
            room = room.min(u64::try_from(max).unwrap_or_default().saturating_sub(in_flight));
        }
        if room > 0 {
            let chosen: Vec<(Uuid, Uuid)> = device_update::Entity::find()
                .select_only()
                .columns([device_update::Column::Id, device_update::Column::DeviceId])
                .filter(device_update::Column::DeploymentId.eq(id))
                .filter(device_update::Column::State.eq(UpdateState::Pending.as_str()))
                .order_by_asc(device_update::Column::Id)
                .limit(room)
                .into_tuple()
                .all(tx.conn())
                .await?;
            for chunk in chosen.chunks(INSERT_CHUNK) {
                device_update::Entity::update_many()
                    .col_expr(device_update::Column::State, Expr::value(UpdateState::Released.as_str()))
                    .col_expr(device_update::Column::ReleasedAt, Expr::value(now))
                    .col_expr(device_update::Column::UpdatedAt, Expr::value(now))
                    .filter(device_update::Column::Id.is_in(chunk.iter().map(|(u, _)| *u)))
                    .filter(device_update::Column::State.eq(UpdateState::Pending.as_str()))
                    .exec(tx.conn())
                    .await?;
            }
            if !chosen.is_empty() {
                tx.notify(Event::DevicesReleased(Arc::new(chosen.iter().map(|(_, d)| *d).collect())));
                tx.notify(Event::DeploymentChanged(id));
            }
        }
        return Ok(true);
    }
    // A group's current package stays open for devices joining the group.
    if pending == 0 && under_way == 0 && !auto {
        set_state(tx, &row, DeploymentState::Completed, None).await?;
        tx.audit(
            &system,
            "deployment.complete",
            ResourceKind::Deployment,
            &id.to_string(),
            json!({ "installed": installed, "failed": failed, "cancelled": count(&counts, UpdateState::Cancelled) }),
        )
        .await?;
        tx.notify(Event::DeploymentChanged(id));
        return Ok(false);
    }
    Ok(true)
}

/// `audit`: who released it, when no caller audits the release itself.
pub(super) async fn release_install_in(tx: &mut WriteTx, row: &deployment::Model, audit: Option<&Ctx>) -> Result<()> {
    deployment::Entity::update_many()
        .col_expr(deployment::Column::InstallReleased, Expr::value(true))
        .col_expr(deployment::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(deployment::Column::Id.eq(row.id))
        .exec(tx.conn())
        .await?;
    if let Some(ctx) = audit {
        tx.audit(ctx, "deployment.release_install", ResourceKind::Deployment, &row.id.to_string(), json!({})).await?;
    }
    let devices: Vec<Uuid> = device_update::Entity::find()
        .select_only()
        .column(device_update::Column::DeviceId)
        .filter(device_update::Column::DeploymentId.eq(row.id))
        .filter(device_update::Column::State.eq(UpdateState::Downloaded.as_str()))
        .into_tuple()
        .all(tx.conn())
        .await?;
    tx.notify(Event::DevicesReleased(Arc::new(devices.into_iter().collect())));
    tx.notify(Event::DeploymentChanged(row.id));
    Ok(())
}

/// Auto-assignment: devices that are in the group whose current package
/// this deployment is, and have no update in it yet, get one. Returns how
/// many were added.
pub(super) async fn assign_newcomers(tx: &mut WriteTx, row: &deployment::Model) -> Result<usize> {
    let Some(group) = entity::device_group::Entity::find()
        .filter(entity::device_group::Column::AutoDeploymentId.eq(row.id))
        .one(tx.conn())
        .await?
    else {
        return Ok(0);
    };
    let within = crate::service::device_group::members_of(tx.conn(), group.id).await?;
    let existing = device_update::Entity::find()
        .select_only()
        .column(device_update::Column::DeviceId)
        .filter(device_update::Column::DeploymentId.eq(row.id))
        .into_query();
    let newcomers: Vec<(Uuid, String, Uuid)> = device::Entity::find()
        .select_only()
        .columns([device::Column::Id, device::Column::EndpointId, device::Column::ModelId])
        .filter(device::Column::Id.in_subquery(within))
        .filter(device::Column::Id.not_in_subquery(existing))
        .filter(device::Column::Status.is_in([DeviceStatus::Registered.as_str(), DeviceStatus::Active.as_str()]))
        .order_by_asc(device::Column::Id)
        .into_tuple()
        .all(tx.conn())
        .await?;
    if newcomers.is_empty() {
        return Ok(0);
    }
    let package = entity::package::Entity::find_by_id(row.package_id)
        .one(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Package, row.package_id.to_string()))?;
    let models: HashSet<Uuid> = package_model::Entity::find()
        .filter(package_model::Column::PackageId.eq(package.id))
        .all(tx.conn())
        .await?
        .into_iter()
        .map(|m| m.device_model_id)
        .collect();
    let (rows, skipped) = plan_updates(tx.conn(), row.id, &package, &models, &newcomers, Utc::now()).await?;
    insert_updates(tx.conn(), rows).await?;
    let targets = i32::try_from(newcomers.len() - skipped.len()).unwrap_or(i32::MAX);
    deployment::Entity::update_many()
        .col_expr(
            deployment::Column::TargetCount,
            sea_orm::sea_query::ExprTrait::add(Expr::col(deployment::Column::TargetCount), targets),
        )
        .col_expr(
            deployment::Column::SkippedCount,
            sea_orm::sea_query::ExprTrait::add(
                Expr::col(deployment::Column::SkippedCount),
                i32::try_from(skipped.len()).unwrap_or(i32::MAX),
            ),
        )
        .filter(deployment::Column::Id.eq(row.id))
        .exec(tx.conn())
        .await?;
    let endpoint_ids: Vec<&String> = newcomers.iter().map(|(_, e, _)| e).collect();
    tx.audit(
        &Ctx::system("deployment-reconciler"),
        "deployment.auto_assign",
        ResourceKind::Deployment,
        &row.id.to_string(),
        json!({ "group_id": group.id, "devices": endpoint_ids, "skipped": skipped.len() }),
    )
    .await?;
    Ok(newcomers.len())
}

/// One run of the job `deployment.reconcile` (`jobs/tasks/deployment_reconcile.rs`):
/// reconcile, then queue the next run while the deployment is active. A
/// stale run (another was queued since) does nothing.
pub(crate) async fn run_job(app: &App, id: Uuid, job: Uuid) -> Result<()> {
    let mut tx = WriteTx::begin(app).await?;
    let Some(row) = deployment::Entity::find_by_id(id).one(tx.conn()).await? else {
        return Ok(());
    };
    if row.reconcile_job_id.is_some_and(|current| current != job) {
        return Ok(());
    }
    let active = reconcile_in(&mut tx, &row).await?;
    if active {
        schedule(&mut tx, id, Utc::now() + interval(app)).await?;
    }
    tx.commit().await
}
