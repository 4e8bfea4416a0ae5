//! Deployments: a package applied to a group or a device list, rolled out
//! by a reconciler at the pace its policy allows, while devices poll,
//! download and report.
//!
//! Rules:
//! - Targets are fixed when the deployment is created: one `device_update`
//!   per device, SKIPPED (`incompatible_model`, `already_installed`) or
//!   PENDING, written with multi-row inserts.
//! - [`reconcile`] is the only place that releases devices, changes phases
//!   and ends deployments. It is idempotent: it reads counts and acts on
//!   them, so running it twice does nothing more. It runs in the write
//!   that changes a deployment, and as the durable job
//!   `deployment.reconcile` (every `deployments.reconcile_interval`, and at
//!   once when a device report wakes it).
//! - Device reports follow the device_update state machine (DESIGN.md §4);
//!   anything else is INVALID_STATE. Only outcomes (INSTALLED, FAILED) and
//!   operator actions are audited, so a report costs a handful of
//!   statements.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use entity::{deployment, device, device_installed, device_update, installation, package_model};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Set,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, Result};
use crate::service::WriteTx;
use crate::service::device::{Device, DeviceStatus};
use crate::service::pagination::{Page, PageRequest, cursor};

/// Job kind of the reconciler.
pub const RECONCILE_JOB: &str = "deployment.reconcile";
const INSERT_CHUNK: usize = 1_000;

states!(DeploymentState {
    Scheduled => "SCHEDULED",
    Running => "RUNNING",
    Paused => "PAUSED",
    Completed => "COMPLETED",
    Cancelled => "CANCELLED",
    Aborted => "ABORTED",
});

states!(UpdateState {
    Pending => "PENDING",
    Released => "RELEASED",
    Acknowledged => "ACKNOWLEDGED",
    Downloading => "DOWNLOADING",
    Downloaded => "DOWNLOADED",
    Installing => "INSTALLING",
    Installed => "INSTALLED",
    Failed => "FAILED",
    Cancelled => "CANCELLED",
    Skipped => "SKIPPED",
});

states!(Mode {
    Standard => "STANDARD",
    DownloadOnly => "DOWNLOAD_ONLY",
    Coordinated => "COORDINATED",
});

impl DeploymentState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Aborted)
    }
}

impl UpdateState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Installed | Self::Failed | Self::Cancelled | Self::Skipped)
    }

    /// Released and not finished: counts against `maxInFlight`.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Released | Self::Acknowledged | Self::Downloading | Self::Downloaded | Self::Installing)
    }

    const IN_FLIGHT: [UpdateState; 5] =
        [Self::Released, Self::Acknowledged, Self::Downloading, Self::Downloaded, Self::Installing];
}

/// The pace of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub max_in_flight: Option<i32>,
    /// Cumulative percentages of the targets, ending at 100.
    pub phases: Vec<i32>,
    pub failure_threshold_percent: Option<i32>,
    pub start_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// COORDINATED only: release the install once this share (percent) of
    /// the targets has downloaded, instead of waiting for every one.
    pub install_quorum_percent: Option<i32>,
}

#[derive(Clone, Debug)]
pub struct NewDeployment {
    pub package: Uuid,
    pub group: Option<Uuid>,
    /// Device ids or endpoint ids (instead of a group).
    pub devices: Vec<String>,
    pub name: Option<String>,
    pub policy: Policy,
    pub mode: Mode,
}

#[derive(Clone, Debug)]
pub struct Skipped {
    pub device_id: Uuid,
    pub endpoint_id: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug)]
pub struct Deployment {
    pub row: deployment::Model,
    pub state: DeploymentState,
    pub mode: Mode,
    pub phases: Vec<i32>,
    pub counts: BTreeMap<UpdateState, u64>,
}

impl Deployment {
    /// Final, and no device still under way (an abort or cancel lets those
    /// that are installing finish): nothing will change any more.
    pub fn settled(&self) -> bool {
        self.state.is_final()
            && UpdateState::IN_FLIGHT.iter().all(|s| self.counts.get(s).copied().unwrap_or_default() == 0)
    }
}

fn parse_phases(raw: &str) -> Vec<i32> {
    serde_json::from_str(raw).unwrap_or_else(|_| vec![100])
}

fn validate_policy(policy: &mut Policy, mode: Mode) -> Result<()> {
    if let Some(q) = policy.install_quorum_percent {
        if mode != Mode::Coordinated {
            return Err(Error::invalid("policy.installQuorumPercent", "only for a COORDINATED deployment"));
        }
        if !(1..=100).contains(&q) {
            return Err(Error::invalid("policy.installQuorumPercent", "between 1 and 100"));
        }
    }
    if let Some(n) = policy.max_in_flight
        && !(1..=1_000_000).contains(&n)
    {
        return Err(Error::invalid("policy.maxInFlight", "between 1 and 1,000,000"));
    }
    if policy.phases.is_empty() {
        policy.phases = vec![100];
    }
    let mut previous = 0;
    for (i, p) in policy.phases.iter().enumerate() {
        if *p <= previous || *p > 100 {
            return Err(Error::invalid(
                format!("policy.phases[{i}]"),
                "cumulative percentages, each above the one before, up to 100",
            ));
        }
        previous = *p;
    }
    if previous != 100 {
        return Err(Error::invalid("policy.phases", "the last phase must be 100 (every device)"));
    }
    if let Some(t) = policy.failure_threshold_percent
        && !(0..=100).contains(&t)
    {
        return Err(Error::invalid("policy.failureThresholdPercent", "between 0 and 100"));
    }
    if let Some(expires) = policy.expires_at {
        if expires <= Utc::now() {
            return Err(Error::invalid("policy.expiresAt", "must be in the future"));
        }
        if policy.start_at.is_some_and(|start| start >= expires) {
            return Err(Error::invalid("policy.expiresAt", "must be after startAt"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// applyPackage

pub async fn apply(app: &App, ctx: &Ctx, input: NewDeployment) -> Result<(Deployment, Vec<Skipped>)> {
    ctx.require(Permission::DeploymentWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let (id, skipped) = apply_in(&mut tx, app, ctx, input, None).await?;
    tx.commit().await?;
    app.wake_workers();
    Ok((get_unchecked(&app.db, id).await?, skipped))
}

/// `auto_group`: make the deployment that group's current package (before
/// its first reconcile, so an empty group's deployment stays open).
async fn apply_in(
    tx: &mut WriteTx,
    app: &App,
    ctx: &Ctx,
    mut input: NewDeployment,
    auto_group: Option<Uuid>,
) -> Result<(Uuid, Vec<Skipped>)> {
    validate_policy(&mut input.policy, input.mode)?;
    if input.group.is_some() != input.devices.is_empty() {
        return Err(Error::invalid("group", "name a group or a list of devices (one of the two)"));
    }
    let name = input.name.as_deref().map(str::trim).unwrap_or_default().to_owned();
    if name.chars().count() > 255 {
        return Err(Error::invalid("name", "at most 255 characters"));
    }

    let conn = tx.conn();
    let package = crate::service::package::find_live_for_deployment(conn, input.package).await?;
    let models: HashSet<Uuid> = package_model::Entity::find()
        .filter(package_model::Column::PackageId.eq(package.id))
        .all(conn)
        .await?
        .into_iter()
        .map(|m| m.device_model_id)
        .collect();

    let (group_id, targets) = crate::service::group::resolve_targets(conn, input.group, &input.devices).await?;
    let targets: Vec<(Uuid, String, Uuid)> = targets.into_iter().map(|t| (t.id, t.endpoint_id, t.model_id)).collect();
    refuse_other_models(conn, &package, &models, group_id, &targets).await?;

    let id = Uuid::now_v7();
    let now = Utc::now();
    let (rows, skipped) = plan_updates(conn, id, &package, &models, &targets, now).await?;
    let target_count = i32::try_from(targets.len() - skipped.len()).unwrap_or(i32::MAX);
    let scheduled = input.policy.start_at.is_some_and(|start| start > now);
    let (_, created_by) = ctx.actor.audit_identity();
    let row = deployment::ActiveModel {
        id: Set(id),
        name: Set(if name.is_empty() { format!("{} {}", package.name, package.version) } else { name }),
        package_id: Set(package.id),
        group_id: Set(group_id),
        mode: Set(input.mode.as_str().to_owned()),
        state: Set(if scheduled { DeploymentState::Scheduled } else { DeploymentState::Running }.as_str().to_owned()),
        max_in_flight: Set(input.policy.max_in_flight),
        phases: Set(json!(input.policy.phases).to_string()),
        current_phase: Set(0),
        failure_threshold_percent: Set(input.policy.failure_threshold_percent),
        start_at: Set(input.policy.start_at),
        expires_at: Set(input.policy.expires_at),
        install_quorum_percent: Set(input.policy.install_quorum_percent),
        install_released: Set(input.mode == Mode::Standard),
        reason: Set(None),
        reconcile_job_id: Set(None),
        target_count: Set(target_count),
        skipped_count: Set(i32::try_from(skipped.len()).unwrap_or(i32::MAX)),
        created_by: Set(created_by),
        created_at: Set(now),
        updated_at: Set(now),
        finished_at: Set(None),
    }
    .insert(tx.conn())
    .await?;
    insert_updates(tx.conn(), rows).await?;
    tx.audit(
        ctx,
        "deployment.create",
        "deployment",
        &id.to_string(),
        json!({
            "package_id": package.id, "product": package.product, "version": package.version,
            "group_id": group_id, "mode": input.mode.as_str(), "targets": target_count,
            "skipped": skipped.len(), "policy": {
                "max_in_flight": input.policy.max_in_flight, "phases": input.policy.phases,
                "failure_threshold_percent": input.policy.failure_threshold_percent,
                "start_at": input.policy.start_at, "expires_at": input.policy.expires_at,
                "install_quorum_percent": input.policy.install_quorum_percent,
            },
        }),
    )
    .await?;
    if let Some(group) = auto_group {
        entity::device_group::Entity::update_many()
            .col_expr(entity::device_group::Column::AutoDeploymentId, Expr::value(id))
            .filter(entity::device_group::Column::Id.eq(group))
            .exec(tx.conn())
            .await?;
    }
    reconcile_in(tx, &row).await?;
    schedule(tx, id, Utc::now() + interval(app)).await?;
    Ok((id, skipped))
}

/// A package applied where it cannot run is a mistake, not an empty
/// rollout: a group of a model the package does not list, or a device list
/// none of whose devices is of such a model, is BAD_USER_INPUT naming the
/// models on both sides. A mixed device list goes ahead; the others are
/// skipped as `incompatible_model`.
async fn refuse_other_models(
    conn: &impl ConnectionTrait,
    package: &entity::package::Model,
    models: &HashSet<Uuid>,
    group: Option<Uuid>,
    targets: &[(Uuid, String, Uuid)],
) -> Result<()> {
    let (field, theirs): (&str, Vec<Uuid>) = match group {
        Some(group) => {
            let row = entity::device_group::Entity::find_by_id(group)
                .one(conn)
                .await?
                .ok_or_else(|| Error::invalid("group", format!("no device group {group}")))?;
            if models.contains(&row.model_id) {
                return Ok(());
            }
            ("group", vec![row.model_id])
        }
        None => {
            if targets.is_empty() || targets.iter().any(|(_, _, model)| models.contains(model)) {
                return Ok(());
            }
            ("devices", targets.iter().map(|(_, _, model)| *model).collect())
        }
    };
    let names = |ids: &mut dyn Iterator<Item = Uuid>| {
        let ids: Vec<Uuid> = ids.collect();
        async move {
            let mut names: Vec<String> = entity::device_model::Entity::find()
                .filter(entity::device_model::Column::Id.is_in(ids))
                .all(conn)
                .await?
                .into_iter()
                .map(|m| m.name)
                .collect();
            names.sort();
            names.dedup();
            Ok::<_, Error>(names)
        }
    };
    let listed = names(&mut models.iter().copied()).await?;
    let listed = if listed.is_empty() { "no device model".to_owned() } else { listed.join(", ") };
    let theirs = names(&mut theirs.into_iter()).await?.join(", ");
    let whose = if field == "group" { "the group holds" } else { "the devices are" };
    Err(Error::invalid(
        field,
        format!(
            "package {} {} is for {listed}; {whose} {theirs} (add the model to the package with setPackageModels, or pick a group of its model)",
            package.name, package.version
        ),
    ))
}

/// A group's current package: applied to the group now (as `applyPackage`
/// would) and to every device that joins the group later (registered,
/// approved, added, or starting to match a dynamic group's filter), until
/// another package replaces it or `None` clears it. The previous one's
/// deployment finishes what it has.
pub async fn set_group_package(
    app: &App,
    ctx: &Ctx,
    group: Uuid,
    package: Option<(Uuid, Policy, Mode)>,
) -> Result<Option<(Deployment, Vec<Skipped>)>> {
    ctx.require(Permission::DeploymentWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let row = entity::device_group::Entity::find_by_id(group)
        .one(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found("device group", group.to_string()))?;
    if let Some(previous) = row.auto_deployment_id {
        entity::device_group::Entity::update_many()
            .col_expr(entity::device_group::Column::AutoDeploymentId, Expr::value(Option::<Uuid>::None))
            .filter(entity::device_group::Column::Id.eq(group))
            .exec(tx.conn())
            .await?;
        if let Some(previous) = deployment::Entity::find_by_id(previous).one(tx.conn()).await? {
            wake(tx.conn(), &previous).await?;
        }
    }
    let created = match package {
        None => None,
        Some((package, policy, mode)) => {
            let input = NewDeployment {
                package,
                group: Some(group),
                devices: Vec::new(),
                name: Some(format!("{} (current package)", row.name)),
                policy,
                mode,
            };
            Some(apply_in(&mut tx, app, ctx, input, Some(group)).await?)
        }
    };
    tx.audit(
        ctx,
        "device_group.set_package",
        "device_group",
        &group.to_string(),
        json!({ "deployment_id": created.as_ref().map(|(id, _)| *id), "previous": row.auto_deployment_id }),
    )
    .await?;
    tx.commit().await?;
    app.wake_workers();
    match created {
        None => Ok(None),
        Some((id, skipped)) => Ok(Some((get_unchecked(&app.db, id).await?, skipped))),
    }
}

/// The update rows for `targets` (id, endpoint id, model) of deployment
/// `id`: SKIPPED when the model is not among the package's or the device
/// already runs this version, PENDING otherwise.
async fn plan_updates(
    conn: &impl ConnectionTrait,
    id: Uuid,
    package: &entity::package::Model,
    models: &HashSet<Uuid>,
    targets: &[(Uuid, String, Uuid)],
    now: DateTime<Utc>,
) -> Result<(Vec<device_update::ActiveModel>, Vec<Skipped>)> {
    let target_ids: Vec<Uuid> = targets.iter().map(|t| t.0).collect();
    let mut installed: HashSet<Uuid> = HashSet::new();
    for chunk in target_ids.chunks(INSERT_CHUNK) {
        let found: Vec<Uuid> = device_installed::Entity::find()
            .select_only()
            .column(device_installed::Column::DeviceId)
            .filter(device_installed::Column::Component.eq(package.product.as_str()))
            .filter(device_installed::Column::Version.eq(package.version.as_str()))
            .filter(device_installed::Column::DeviceId.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(conn)
            .await?;
        installed.extend(found);
    }
    let mut skipped = Vec::new();
    let mut rows = Vec::with_capacity(targets.len());
    for (device_id, endpoint_id, model) in targets {
        let reason = if !models.contains(model) {
            Some("incompatible_model")
        } else if installed.contains(device_id) {
            Some("already_installed")
        } else {
            None
        };
        if let Some(reason) = reason {
            skipped.push(Skipped { device_id: *device_id, endpoint_id: endpoint_id.clone(), reason });
        }
        rows.push(device_update::ActiveModel {
            id: Set(Uuid::now_v7()),
            deployment_id: Set(id),
            device_id: Set(*device_id),
            state: Set(if reason.is_some() { UpdateState::Skipped } else { UpdateState::Pending }.as_str().to_owned()),
            skip_reason: Set(reason.map(str::to_owned)),
            progress: Set(0),
            error_code: Set(None),
            message: Set(None),
            cancel_acknowledged: Set(false),
            released_at: Set(None),
            finished_at: Set(reason.map(|_| now)),
            created_at: Set(now),
            updated_at: Set(now),
        });
    }
    Ok((rows, skipped))
}

async fn insert_updates(conn: &impl ConnectionTrait, rows: Vec<device_update::ActiveModel>) -> Result<()> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<device_update::ActiveModel> = rows.by_ref().take(INSERT_CHUNK).collect();
        device_update::Entity::insert_many(chunk).exec(conn).await?;
    }
    Ok(())
}

/// Auto-assignment: devices that are in the group whose current package
/// this deployment is, and have no update in it yet, get one. Returns how
/// many were added.
async fn assign_newcomers(tx: &mut WriteTx, row: &deployment::Model) -> Result<usize> {
    let Some(group) = entity::device_group::Entity::find()
        .filter(entity::device_group::Column::AutoDeploymentId.eq(row.id))
        .one(tx.conn())
        .await?
    else {
        return Ok(0);
    };
    let within = crate::service::group::members_of(tx.conn(), group.id).await?;
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
        .ok_or_else(|| Error::not_found("package", row.package_id.to_string()))?;
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
        "deployment",
        &row.id.to_string(),
        json!({ "group_id": group.id, "devices": endpoint_ids, "skipped": skipped.len() }),
    )
    .await?;
    Ok(newcomers.len())
}

fn interval(app: &App) -> TimeDelta {
    TimeDelta::from_std(app.config.deployments.reconcile_interval).unwrap_or(TimeDelta::seconds(5))
}

/// Queue the next reconcile run of `id` at `at`, remembered on the row so
/// device reports can bring it forward.
async fn schedule(tx: &mut WriteTx, id: Uuid, at: DateTime<Utc>) -> Result<()> {
    let job = crate::jobs::enqueue_at(tx.conn(), RECONCILE_JOB, json!({ "deployment_id": id }), at, 3).await?;
    deployment::Entity::update_many()
        .col_expr(deployment::Column::ReconcileJobId, Expr::value(job))
        .filter(deployment::Column::Id.eq(id))
        .exec(tx.conn())
        .await?;
    Ok(())
}

/// Bring the deployment's queued reconcile run forward to now.
async fn wake(conn: &impl ConnectionTrait, row: &deployment::Model) -> Result<()> {
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
async fn wake_soon(app: &App, conn: &impl ConnectionTrait, row: &deployment::Model) -> Result<bool> {
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

async fn counts(conn: &impl ConnectionTrait, id: Uuid) -> Result<BTreeMap<UpdateState, u64>> {
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
async fn cancel_updates(tx: &mut WriteTx, id: Uuid, from: &[UpdateState], message: &str) -> Result<()> {
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

async fn set_state(tx: &mut WriteTx, row: &deployment::Model, to: DeploymentState, reason: Option<&str>) -> Result<()> {
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
        .ok_or_else(|| Error::not_found("deployment", row.id.to_string()))?;
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
        tx.audit(&system, "deployment.start", "deployment", &id.to_string(), json!({})).await?;
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
        tx.audit(&system, "deployment.expire", "deployment", &id.to_string(), json!({})).await?;
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
        tx.audit(&system, "deployment.abort", "deployment", &id.to_string(), json!({ "reason": reason })).await?;
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
        tx.audit(&system, "deployment.abort", "deployment", &id.to_string(), json!({ "reason": reason })).await?;
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
                "deployment",
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
            "deployment",
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
async fn release_install_in(tx: &mut WriteTx, row: &deployment::Model, audit: Option<&Ctx>) -> Result<()> {
    deployment::Entity::update_many()
        .col_expr(deployment::Column::InstallReleased, Expr::value(true))
        .col_expr(deployment::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(deployment::Column::Id.eq(row.id))
        .exec(tx.conn())
        .await?;
    if let Some(ctx) = audit {
        tx.audit(ctx, "deployment.release_install", "deployment", &row.id.to_string(), json!({})).await?;
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

/// The durable job: reconcile, then queue the next run while active.
pub struct ReconcileJob;

#[async_trait::async_trait]
impl crate::jobs::Handler for ReconcileJob {
    fn kind(&self) -> &'static str {
        RECONCILE_JOB
    }

    async fn run(&self, app: &App, job: &entity::job::Model) -> anyhow::Result<()> {
        let id: Uuid = job
            .payload
            .get("deployment_id")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("payload without a deployment_id"))?;
        let mut tx = WriteTx::begin(app).await?;
        let Some(row) = deployment::Entity::find_by_id(id).one(tx.conn()).await? else {
            return Ok(());
        };
        // A stale job (another run was queued since) does nothing.
        if row.reconcile_job_id.is_some_and(|current| current != job.id) {
            return Ok(());
        }
        let active = reconcile_in(&mut tx, &row).await?;
        if active {
            schedule(&mut tx, id, Utc::now() + interval(app)).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Operator actions.

async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<deployment::Model> {
    deployment::Entity::find_by_id(id).one(conn).await?.ok_or_else(|| Error::not_found("deployment", id.to_string()))
}

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
        "deployment",
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

// ---------------------------------------------------------------------------
// Reading.

async fn attach(conn: &impl ConnectionTrait, rows: Vec<deployment::Model>) -> Result<Vec<Deployment>> {
    let mut out = Vec::with_capacity(rows.len());
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut all: HashMap<Uuid, BTreeMap<UpdateState, u64>> = HashMap::new();
    if !ids.is_empty() {
        let counted: Vec<(Uuid, String, i64)> = device_update::Entity::find()
            .select_only()
            .column(device_update::Column::DeploymentId)
            .column(device_update::Column::State)
            .column_as(device_update::Column::Id.count(), "n")
            .filter(device_update::Column::DeploymentId.is_in(ids))
            .group_by(device_update::Column::DeploymentId)
            .group_by(device_update::Column::State)
            .into_tuple()
            .all(conn)
            .await?;
        for (deployment, state, n) in counted {
            all.entry(deployment)
                .or_default()
                .insert(UpdateState::parse(&state)?, u64::try_from(n).unwrap_or_default());
        }
    }
    for row in rows {
        out.push(Deployment {
            state: DeploymentState::parse(&row.state)?,
            mode: Mode::parse(&row.mode)?,
            phases: parse_phases(&row.phases),
            counts: all.remove(&row.id).unwrap_or_default(),
            row,
        });
    }
    Ok(out)
}

async fn get_unchecked(conn: &impl ConnectionTrait, id: Uuid) -> Result<Deployment> {
    Ok(attach(conn, vec![find(conn, id).await?]).await?.remove(0))
}

pub async fn get(app: &App, ctx: &Ctx, id: Uuid) -> Result<Deployment> {
    ctx.require(Permission::DeploymentRead)?;
    get_unchecked(&app.db, id).await
}

#[derive(Clone, Debug, Default)]
pub struct DeploymentFilter {
    pub state: Option<DeploymentState>,
    pub package: Option<Uuid>,
    pub group: Option<Uuid>,
}

const CURSOR_KIND: &str = "deployment";

/// Newest first.
pub async fn list(
    app: &App,
    ctx: &Ctx,
    filter: &DeploymentFilter,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<Deployment>> {
    ctx.require(Permission::DeploymentRead)?;
    let page = PageRequest::parse_uuid(CURSOR_KIND, first, after)?;
    let mut condition = Condition::all();
    if let Some(state) = filter.state {
        condition = condition.add(deployment::Column::State.eq(state.as_str()));
    }
    if let Some(package) = filter.package {
        condition = condition.add(deployment::Column::PackageId.eq(package));
    }
    if let Some(group) = filter.group {
        condition = condition.add(deployment::Column::GroupId.eq(group));
    }
    let query = deployment::Entity::find().filter(condition);
    let (rows, has_next_page, total_count) =
        crate::service::pagination::newest_first(&app.db, query, deployment::Column::Id, &page).await?;
    let items = attach(&app.db, rows).await?;
    Ok(Page {
        items: items.into_iter().map(|d| (cursor(CURSOR_KIND, d.row.id), d)).collect(),
        has_next_page,
        total_count,
    })
}

/// The deployment now, then again after each change, with the device
/// update that changed when one did.
pub async fn watch(
    app: &App,
    ctx: &Ctx,
    id: Uuid,
) -> Result<futures::stream::BoxStream<'static, (Deployment, Option<UpdateView>)>> {
    use futures::StreamExt;
    ctx.require(Permission::DeploymentRead)?;
    let receiver = app.events.subscribe();
    let first = get_unchecked(&app.db, id).await?;
    if first.settled() {
        // Nothing will change any more: the state, and the end.
        return Ok(futures::stream::once(async move { (first, None) }).boxed());
    }
    let db = app.db.clone();
    let updates = futures::stream::unfold(Some(receiver), move |receiver| {
        let db = db.clone();
        async move {
            let mut receiver = receiver?;
            loop {
                let changed = match receiver.recv().await {
                    Ok(Event::DeploymentChanged(d)) if d == id => None,
                    Ok(Event::DeviceUpdateChanged { deployment, update }) if deployment == id => Some(update),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                let Ok(deployment) = get_unchecked(&db, id).await else { continue };
                let update = match changed {
                    Some(update) => update_view(&db, update).await.ok(),
                    None => None,
                };
                // A finished deployment whose devices have all finished is
                // the last push: the stream ends.
                let next = (!deployment.settled()).then_some(receiver);
                return Some(((deployment, update), next));
            }
        }
    });
    Ok(futures::stream::once(async move { (first, None) }).chain(updates).boxed())
}

async fn update_view(conn: &impl ConnectionTrait, id: Uuid) -> Result<UpdateView> {
    let row = find_update(conn, id).await?;
    let device = crate::service::device::get_unchecked(conn, row.device_id).await?;
    Ok(UpdateView { state: UpdateState::parse(&row.state)?, device, row })
}

/// A device update with its device.
#[derive(Clone, Debug)]
pub struct UpdateView {
    pub row: device_update::Model,
    pub state: UpdateState,
    pub device: Device,
}

const UPDATE_CURSOR: &str = "device_update";

/// The updates of a deployment, or of a device (exactly one of the two).
pub async fn updates(
    app: &App,
    ctx: &Ctx,
    deployment: Option<Uuid>,
    device: Option<Uuid>,
    state: Option<UpdateState>,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<UpdateView>> {
    ctx.require(Permission::DeploymentRead)?;
    let page = PageRequest::parse_uuid(UPDATE_CURSOR, first, after)?;
    let mut condition = Condition::all();
    if let Some(deployment) = deployment {
        condition = condition.add(device_update::Column::DeploymentId.eq(deployment));
    }
    if let Some(device) = device {
        condition = condition.add(device_update::Column::DeviceId.eq(device));
    }
    if let Some(state) = state {
        condition = condition.add(device_update::Column::State.eq(state.as_str()));
    }
    let total_count = device_update::Entity::find().filter(condition.clone()).count(&app.db).await?;
    let mut query = device_update::Entity::find().filter(condition);
    if let Some(after) = page.after {
        query = query.filter(device_update::Column::Id.gt(after));
    }
    let mut rows = query.order_by_asc(device_update::Column::Id).limit(page.first + 1).all(&app.db).await?;
    let has_next_page = rows.len() as u64 > page.first;
    rows.truncate(usize::try_from(page.first).unwrap_or(usize::MAX));
    let devices = crate::service::device::by_ids(&app.db, rows.iter().map(|r| r.device_id).collect()).await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let device = devices
            .get(&row.device_id)
            .cloned()
            .ok_or_else(|| Error::internal(anyhow::anyhow!("update {} without its device", row.id)))?;
        items.push((cursor(UPDATE_CURSOR, row.id), UpdateView { state: UpdateState::parse(&row.state)?, device, row }));
    }
    Ok(Page { items, has_next_page, total_count })
}

/// A device's installation history, newest first.
/// An installation with its package's name (none when the device
/// reported a version otadepot did not install).
#[derive(Clone, Debug)]
pub struct InstallationView {
    pub row: installation::Model,
    pub package_name: Option<String>,
}

pub async fn installations(app: &App, ctx: &Ctx, device: Uuid) -> Result<Vec<InstallationView>> {
    ctx.require(Permission::DeviceRead)?;
    let rows = installation::Entity::find()
        .filter(installation::Column::DeviceId.eq(device))
        .order_by_desc(installation::Column::InstalledAt)
        .order_by_desc(installation::Column::Id)
        .limit(500)
        .all(&app.db)
        .await?;
    let ids: HashSet<Uuid> = rows.iter().filter_map(|r| r.package_id).collect();
    let names: HashMap<Uuid, String> = entity::package::Entity::find()
        .select_only()
        .columns([entity::package::Column::Id, entity::package::Column::Name])
        .filter(entity::package::Column::Id.is_in(ids))
        .into_tuple::<(Uuid, String)>()
        .all(&app.db)
        .await?
        .into_iter()
        .collect();
    Ok(rows
        .into_iter()
        .map(|row| InstallationView { package_name: row.package_id.and_then(|p| names.get(&p).cloned()), row })
        .collect())
}

/// Live deployments of a package (for deletePackage).
pub(crate) async fn active_for_package(conn: &impl ConnectionTrait, package: Uuid) -> Result<u64> {
    Ok(deployment::Entity::find()
        .filter(deployment::Column::PackageId.eq(package))
        .filter(deployment::Column::State.is_in([
            DeploymentState::Scheduled.as_str(),
            DeploymentState::Running.as_str(),
            DeploymentState::Paused.as_str(),
        ]))
        .count(conn)
        .await?)
}

// ---------------------------------------------------------------------------
// The device protocol.

/// What a device is told on a poll.
#[derive(Clone, Debug)]
pub struct PollAnswer {
    pub etag: String,
    /// None: no update pending (or the device has this answer already).
    pub update: Option<Value>,
    /// Pending commands (`service::command`), oldest first.
    pub commands: Vec<Value>,
    /// When the update's file URLs are renewed (the ETag changes then): a
    /// long poll answers at that moment.
    pub renew_at: Option<DateTime<Utc>>,
}

impl PollAnswer {
    /// Whether there is anything to send (else 204, or 304 on a match).
    pub fn has_news(&self) -> bool {
        self.update.is_some() || !self.commands.is_empty()
    }

    fn etag_only(etag: String) -> Self {
        Self { etag, update: None, commands: Vec::new(), renew_at: None }
    }
}

/// The ETag of "nothing pending".
pub const IDLE_ETAG: &str = "\"idle\"";

async fn current_update(
    conn: &impl ConnectionTrait,
    device: Uuid,
) -> Result<Option<(device_update::Model, deployment::Model)>> {
    let mut states: Vec<&str> = UpdateState::IN_FLIGHT.iter().map(|s| s.as_str()).collect();
    states.push(UpdateState::Cancelled.as_str());
    let candidates = device_update::Entity::find()
        .filter(device_update::Column::DeviceId.eq(device))
        .filter(device_update::Column::State.is_in(states))
        .filter(
            Condition::any().add(device_update::Column::State.ne(UpdateState::Cancelled.as_str())).add(
                Condition::all()
                    .add(device_update::Column::ReleasedAt.is_not_null())
                    .add(device_update::Column::CancelAcknowledged.eq(false)),
            ),
        )
        .order_by_desc(device_update::Column::Id)
        .limit(1)
        .all(conn)
        .await?;
    let Some(update) = candidates.into_iter().next() else { return Ok(None) };
    let deployment = find(conn, update.deployment_id).await?;
    Ok(Some((update, deployment)))
}

fn action_of(update: &device_update::Model, deployment: &deployment::Model) -> Result<&'static str> {
    let state = UpdateState::parse(&update.state)?;
    Ok(match state {
        UpdateState::Cancelled => "CANCEL",
        UpdateState::Downloaded | UpdateState::Installing if deployment.install_released => "INSTALL",
        _ => "DOWNLOAD",
    })
}

/// `GET /device/v1/poll`: the device's pending update (with its signed
/// manifest), or none. `if_none_match` equal to the current ETag answers
/// with the ETag alone (the 304 path, no manifest built).
///
/// `fresh`: skip the idle cache (a long poll that was just told of news).
pub async fn poll(app: &App, ctx: &Ctx, if_none_match: Option<&str>, fresh: bool) -> Result<PollAnswer> {
    let device = ctx.require_device()?;
    if !fresh && app.device_cache.is_idle(device.id) {
        return Ok(PollAnswer::etag_only(IDLE_ETAG.to_owned()));
    }
    let seq = app.device_cache.seq();
    let current = current_update(&app.db, device.id).await?;
    let commands = crate::service::command::pending(&app.db, device.id).await?;
    if current.is_none() && commands.is_empty() {
        app.device_cache.mark_idle(device.id, seq);
        return Ok(PollAnswer::etag_only(IDLE_ETAG.to_owned()));
    }
    // The ETag names what the device is told: the update's step, its file
    // URLs (their expiry window and the credential they are signed under)
    // and the pending commands (a delivered command keeps its place until
    // acknowledged).
    let mut tag = String::new();
    let mut action = None;
    let mut urls = None;
    if let Some((update, deployment)) = &current {
        let a = action_of(update, deployment)?;
        let row = crate::service::device_download::device_row(app, device.id)
            .await?
            .ok_or_else(|| Error::not_found("device", device.id.to_string()))?;
        let window =
            crate::service::device_download::window(update.id, app.config.devices.download_url_ttl, Utc::now());
        tag = format!(
            "{}:{}:{a}:{}:{}:{}",
            update.id,
            update.state,
            deployment.install_released,
            window.exp.timestamp(),
            row.credential_hash
        );
        action = Some(a);
        urls = Some((window, row));
    }
    for command in &commands {
        tag.push_str(&format!("|{}", command.id));
    }
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(tag))[..32]);
    let renew_at = urls.as_ref().map(|(window, _)| window.renew_at);
    if if_none_match == Some(etag.as_str()) {
        return Ok(PollAnswer { renew_at, ..PollAnswer::etag_only(etag) });
    }
    let update = match (current, action, urls) {
        (Some((update, deployment)), Some(action), Some((window, row))) => {
            let package = crate::service::package::get_any(&app.db, deployment.package_id).await?;
            let grant = crate::service::device_download::DeviceGrant {
                device: device.id,
                update: update.id,
                credential_hash: &row.credential_hash,
                exp: window.exp,
            };
            let manifest = crate::service::package::device_manifest_for(app, &package, &grant)?;
            Some(json!({
                "id": update.id,
                "deploymentId": deployment.id,
                "action": action,
                "state": update.state,
                "manifest": manifest,
            }))
        }
        _ => None,
    };
    // Delivery is at least once: if recording it fails, the commands stay
    // QUEUED and are handed out again; the device still gets them now.
    if let Err(err) = crate::service::command::mark_delivered(app, &commands).await {
        tracing::warn!(device = %device.id, error = %err, "could not record the delivery of commands");
    }
    Ok(PollAnswer { etag, update, commands: commands.iter().map(crate::service::command::view).collect(), renew_at })
}

/// A device's status report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub status: String,
    pub progress: Option<i32>,
    pub version: Option<String>,
    pub errcode: Option<String>,
    pub message: Option<String>,
}

/// `POST /device/v1/updates/{id}/status`: one write against the device's
/// rate limit.
pub async fn report(app: &App, ctx: &Ctx, update_id: Uuid, report: Report) -> Result<device_update::Model> {
    app.rate_limits.device_write(ctx.require_device()?.id)?;
    report_uncharged(app, ctx, update_id, report).await
}

/// [`report`] as a step of a call charged already (the EnOS routes).
async fn report_uncharged(app: &App, ctx: &Ctx, update_id: Uuid, report: Report) -> Result<device_update::Model> {
    let device = ctx.require_device()?.clone();
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
    let mut tx = WriteTx::begin(app).await?;
    let update = device_update::Entity::find_by_id(update_id)
        .filter(device_update::Column::DeviceId.eq(device.id))
        .one(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found("update", update_id.to_string()))?;
    let deployment = find(tx.conn(), update.deployment_id).await?;
    let from = UpdateState::parse(&update.state)?;
    let now = Utc::now();
    use UpdateState::*;
    let invalid =
        |to: &str| Error::InvalidState(format!("update {update_id} is {}; it cannot become {to}", from.as_str()));
    let mut message = report.message.clone();
    // The package, once read (for INSTALLED_VERSION).
    let mut installed_package = None;
    let to = match report.status.as_str() {
        "ACKNOWLEDGED" => match from {
            Released | Acknowledged => Acknowledged,
            _ => return Err(invalid("ACKNOWLEDGED")),
        },
        "DOWNLOADING" => match from {
            Released | Acknowledged | Downloading => Downloading,
            _ => return Err(invalid("DOWNLOADING")),
        },
        "DOWNLOADED" => match from {
            Released | Acknowledged | Downloading | Downloaded => Downloaded,
            _ => return Err(invalid("DOWNLOADED")),
        },
        "INSTALLING" => match from {
            Downloaded | Installing if deployment.install_released => Installing,
            Downloaded => {
                return Err(Error::InvalidState(format!(
                    "update {update_id}: the install is not released yet (a {} deployment)",
                    deployment.mode
                )));
            }
            _ => return Err(invalid("INSTALLING")),
        },
        "INSTALLED_VERSION" => match from {
            Downloaded | Installing if deployment.install_released => {
                let package = crate::service::package::get_any(tx.conn(), deployment.package_id).await?;
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
            Downloaded => {
                return Err(Error::InvalidState(format!(
                    "update {update_id}: the install is not released yet (a {} deployment)",
                    deployment.mode
                )));
            }
            _ => return Err(invalid("INSTALLED")),
        },
        "FAILED" => {
            if from.is_final() {
                return Err(invalid("FAILED"));
            }
            Failed
        }
        // The device saw the cancel.
        "CANCELLED" => {
            if from != Cancelled {
                return Err(invalid("CANCELLED"));
            }
            device_update::Entity::update_many()
                .col_expr(device_update::Column::CancelAcknowledged, Expr::value(true))
                .filter(device_update::Column::Id.eq(update_id))
                .exec(tx.conn())
                .await?;
            tx.commit().await?;
            return find_update(&app.db, update_id).await;
        }
        other => {
            return Err(Error::invalid(
                "status",
                format!(
                    "{other:?}: one of ACKNOWLEDGED, DOWNLOADING, DOWNLOADED, INSTALLING, INSTALLED_VERSION, FAILED, CANCELLED"
                ),
            ));
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
    if change.exec(tx.conn()).await?.rows_affected != 1 {
        return Err(Error::InvalidState(format!("update {update_id} changed meanwhile; report again")));
    }
    if to == Installed
        && let Some(package) = &installed_package
    {
        crate::service::device::record_installed(
            tx.conn(),
            device.id,
            &package.model.product,
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
            "device_update",
            &update_id.to_string(),
            json!({ "deployment_id": deployment.id, "errcode": report.errcode, "message": message }),
        )
        .await?;
    }
    let woke = (to.is_final() || to == Downloaded) && wake_soon(app, tx.conn(), &deployment).await?;
    tx.notify(Event::DeviceUpdateChanged { deployment: deployment.id, update: update_id });
    tx.commit().await?;
    if woke {
        app.wake_workers();
    }
    find_update(&app.db, update_id).await
}

// ---------------------------------------------------------------------------
// EnOS edge compatibility (the EnOS edge OTA protocol): the same
// model behind the EnOS sub-device endpoints.

/// What `/checkversion` answers.
#[derive(Clone, Debug)]
pub struct EnosCheck {
    pub update_id: Uuid,
    pub version: String,
    /// MD5 of the file (the seed's `signMethod: "MD5"`), or empty for a link.
    pub md5: String,
}

/// The device reports `version` (its firmware) and asks for an update:
/// the reported version is recorded, a released update is acknowledged
/// and described. It is the EnOS device's poll: only what writes counts
/// against the rate limit (a new version, the acknowledgement: one write
/// each).
pub async fn enos_check_version(app: &App, ctx: &Ctx, version: &str) -> Result<Option<EnosCheck>> {
    let device = ctx.require_device()?.clone();
    let version = version.trim();
    if !version.is_empty() {
        crate::service::device::apply_inventory(
            app,
            ctx,
            crate::service::device::Inventory {
                installed: vec![("firmware".to_owned(), Some(version.to_owned()))],
                attributes: Vec::new(),
            },
            true,
        )
        .await?;
    }
    let Some((update, deployment)) = current_update(&app.db, device.id).await? else { return Ok(None) };
    if UpdateState::parse(&update.state)? == UpdateState::Cancelled {
        return Ok(None);
    }
    let package = crate::service::package::get_any(&app.db, deployment.package_id).await?;
    if update.state == UpdateState::Released.as_str() {
        app.rate_limits.device_write(device.id)?;
        report_uncharged(app, ctx, update.id, Report { status: "ACKNOWLEDGED".into(), ..Report::default() }).await?;
    }
    let md5 = package.files.first().and_then(|f| f.md5.clone()).unwrap_or_default();
    Ok(Some(EnosCheck { update_id: update.id, version: package.model.version.clone(), md5 }))
}

/// `GET /version/{id}`: the update's (first) file, for its device only.
pub async fn enos_download(app: &App, ctx: &Ctx, update_id: Uuid) -> Result<crate::service::content::Download> {
    let device = ctx.require_device()?;
    let update = device_update::Entity::find_by_id(update_id)
        .filter(device_update::Column::DeviceId.eq(device.id))
        .one(&app.db)
        .await?
        .ok_or_else(|| Error::not_found("update", update_id.to_string()))?;
    let deployment = find(&app.db, update.deployment_id).await?;
    let package = crate::service::package::get_any(&app.db, deployment.package_id).await?;
    let file = package.files.first().ok_or_else(|| Error::not_found("file of update", update_id.to_string()))?;
    let access = crate::service::content::DownloadAccess::Caller(ctx.clone());
    crate::service::content::open_download_for_update(app, &access, file.content_id).await
}

/// `POST /downloadresult/{id}`: code 1 DOWNLOADED, anything else FAILED.
pub async fn enos_download_result(
    app: &App,
    ctx: &Ctx,
    update_id: Uuid,
    code: i64,
    message: Option<String>,
) -> Result<device_update::Model> {
    let report_of = match code {
        1 => Report { status: "DOWNLOADED".into(), ..Report::default() },
        _ => Report { status: "FAILED".into(), errcode: Some("download_failed".into()), message, ..Report::default() },
    };
    report(app, ctx, update_id, report_of).await
}

/// `POST /updateresult`: flag 0 failed, 1 in progress, 2 with process 100
/// and the target version succeeded (the seed's rule); the device's current
/// update.
pub async fn enos_update_result(
    app: &App,
    ctx: &Ctx,
    version: &str,
    flag: i64,
    process: i64,
    errcode: Option<String>,
    desc: Option<String>,
) -> Result<device_update::Model> {
    let device = ctx.require_device()?;
    // One call, one write charged, whatever steps it takes.
    app.rate_limits.device_write(device.id)?;
    let (update, deployment) = current_update(&app.db, device.id)
        .await?
        .ok_or_else(|| Error::not_found("update in progress", device.endpoint_id.clone()))?;
    let state = UpdateState::parse(&update.state)?;
    let progress = i32::try_from(process.clamp(0, 100)).unwrap_or_default();
    let mut steps: Vec<Report> = Vec::new();
    // EnOS devices report no DOWNLOADED of their own before installing.
    let to_installing = |steps: &mut Vec<Report>| {
        if matches!(state, UpdateState::Released | UpdateState::Acknowledged | UpdateState::Downloading) {
            steps.push(Report { status: "DOWNLOADED".into(), ..Report::default() });
        }
        if deployment.install_released && state != UpdateState::Installing {
            steps.push(Report { status: "INSTALLING".into(), progress: Some(progress), ..Report::default() });
        }
    };
    match flag {
        1 => to_installing(&mut steps),
        2 if process == 100 => {
            to_installing(&mut steps);
            steps.push(Report {
                status: "INSTALLED_VERSION".into(),
                version: Some(version.to_owned()),
                ..Report::default()
            });
        }
        2 => steps.push(Report {
            status: "FAILED".into(),
            errcode: errcode.clone(),
            message: Some(format!("flag 2 reported with process {process}, not 100")),
            ..Report::default()
        }),
        _ => steps.push(Report {
            status: "FAILED".into(),
            errcode: errcode.clone(),
            message: Some(desc.unwrap_or_else(|| format!("upgrade failed (flag {flag})"))),
            ..Report::default()
        }),
    }
    let mut last = update;
    for step in steps {
        last = report_uncharged(app, ctx, last.id, step).await?;
    }
    Ok(last)
}

async fn find_update(conn: &impl ConnectionTrait, id: Uuid) -> Result<device_update::Model> {
    device_update::Entity::find_by_id(id).one(conn).await?.ok_or_else(|| Error::not_found("update", id.to_string()))
}

/// Whether `event` has news for `device`'s poll (for long polls).
pub fn concerns(event: &Event, device: Uuid) -> bool {
    matches!(event, Event::DevicesReleased(devices) if devices.contains(&device))
        || matches!(event, Event::AllPollersWake)
}
