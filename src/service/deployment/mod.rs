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
//! - Devices poll and report through `service::device_api`, which moves
//!   their updates along the device_update state machine (DESIGN.md §4).
//!   Only outcomes (INSTALLED, FAILED) and operator actions are audited,
//!   so a report costs a handful of statements.
//!
//! Files: this one holds the types, the reads and the live stream;
//! `create.rs` makes deployments, `reconcile.rs` is the reconciler,
//! `actions.rs` the operator's pause, resume, cancel and release.

mod actions;
mod create;
pub(crate) mod reconcile;
pub mod window;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use entity::{deployment, device_update};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::device::Device;
use crate::service::pagination::{Page, PageRequest, cursor};

pub use actions::{cancel, cancel_update, pause, release_install, resume};
pub use create::{apply, set_group_package};
pub use reconcile::RECONCILE_JOB;

pub(super) const INSERT_CHUNK: usize = 1_000;

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

states!(ActionType {
    Forced => "FORCED",
    Soft => "SOFT",
});

impl Default for ActionType {
    /// What every deployment was before there was a choice.
    fn default() -> Self {
        Self::Forced
    }
}

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

    pub(crate) const IN_FLIGHT: [UpdateState; 5] =
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
    /// How the update is offered to hawkBit DDI devices: FORCED (install
    /// at once) or SOFT (the device may ask its user first).
    pub action_type: ActionType,
    /// When devices may start installing (`window.rs`); none: any time.
    pub maintenance_window: Option<window::MaintenanceWindow>,
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
    pub action_type: ActionType,
    pub maintenance_window: Option<window::MaintenanceWindow>,
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

pub(super) fn parse_phases(raw: &str) -> Vec<i32> {
    serde_json::from_str(raw).unwrap_or_else(|_| vec![100])
}

pub(crate) async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<deployment::Model> {
    deployment::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Deployment, id.to_string()))
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
            action_type: ActionType::parse(&row.action_type)?,
            maintenance_window: window::MaintenanceWindow::from_stored(row.maintenance_window.as_deref())?,
            phases: parse_phases(&row.phases),
            counts: all.remove(&row.id).unwrap_or_default(),
            row,
        });
    }
    Ok(out)
}

pub(crate) async fn get_unchecked(conn: &impl ConnectionTrait, id: Uuid) -> Result<Deployment> {
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

pub(crate) async fn find_update(conn: &impl ConnectionTrait, id: Uuid) -> Result<device_update::Model> {
    device_update::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Update, id.to_string()))
}
