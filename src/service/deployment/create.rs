//! Creating deployments: `applyPackage` and a group's current package.
//! The targets are resolved once and written as one `device_update` per
//! device (PENDING or SKIPPED), with the first reconcile pass in the same
//! transaction.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use entity::{deployment, device_installed, device_update, package_model};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, NotSet, QueryFilter, QuerySelect, Set};
use serde_json::json;
use uuid::Uuid;

use crate::app::App;
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;

use super::reconcile::{interval, reconcile_in, schedule, wake};
use super::{
    Deployment, DeploymentState, INSERT_CHUNK, Mode, NewDeployment, Policy, Skipped, UpdateState, get_unchecked,
};

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
    if let Some(window) = policy.maintenance_window.as_mut() {
        window.validate()?;
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
    let package = crate::service::catalog::deployable_package(conn, input.package).await?;
    let models: HashSet<Uuid> = package_model::Entity::find()
        .filter(package_model::Column::PackageId.eq(package.id))
        .all(conn)
        .await?
        .into_iter()
        .map(|m| m.device_model_id)
        .collect();

    let (group_id, targets) = crate::service::device_group::resolve_targets(conn, input.group, &input.devices).await?;
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
        action_type: Set(input.policy.action_type.as_str().to_owned()),
        maintenance_window: Set(input.policy.maintenance_window.as_ref().map(|w| json!(w).to_string())),
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
        ResourceKind::Deployment,
        &id.to_string(),
        json!({
            "package_id": package.id, "component": package.component, "version": package.version,
            "group_id": group_id, "mode": input.mode.as_str(), "targets": target_count,
            "skipped": skipped.len(), "policy": {
                "max_in_flight": input.policy.max_in_flight, "phases": input.policy.phases,
                "failure_threshold_percent": input.policy.failure_threshold_percent,
                "start_at": input.policy.start_at, "expires_at": input.policy.expires_at,
                "install_quorum_percent": input.policy.install_quorum_percent,
                "action_type": input.policy.action_type.as_str(),
                "maintenance_window": input.policy.maintenance_window,
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
        .ok_or_else(|| Error::not_found(ResourceKind::DeviceGroup, group.to_string()))?;
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
        ResourceKind::DeviceGroup,
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
pub(super) async fn plan_updates(
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
            .filter(device_installed::Column::Component.eq(package.component.as_str()))
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
            // Numbered by the database as the row is inserted.
            action_id: NotSet,
            state: Set(if reason.is_some() { UpdateState::Skipped } else { UpdateState::Pending }.as_str().to_owned()),
            skip_reason: Set(reason.map(str::to_owned)),
            progress: Set(0),
            error_code: Set(None),
            message: Set(None),
            cancel_acknowledged: Set(false),
            ddi_offer: Set(None),
            released_at: Set(None),
            finished_at: Set(reason.map(|_| now)),
            created_at: Set(now),
            updated_at: Set(now),
        });
    }
    Ok((rows, skipped))
}

pub(super) async fn insert_updates(conn: &impl ConnectionTrait, rows: Vec<device_update::ActiveModel>) -> Result<()> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<device_update::ActiveModel> = rows.by_ref().take(INSERT_CHUNK).collect();
        device_update::Entity::insert_many(chunk).exec_without_returning(conn).await?;
    }
    Ok(())
}
