//! Deployments: `applyPackage`, `deployment`, `deployments`,
//! `pauseDeployment`, `resumeDeployment`, `cancelDeployment`,
//! `releaseInstall`; `Device.updates` and `Device.installations`.

use async_graphql::{ComplexObject, Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::authz::{Guarded, Readable};
use super::connection::{Conn, from_page};
use super::device::Device;
use super::ids::parse_id;
use super::{app, caller};
use crate::error::ResourceKind;
use crate::service::authz::ObjectKind;
use crate::service::deployment as service;

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(
    name = "DeploymentState",
    remote = "crate::service::deployment::DeploymentState",
    rename_items = "SCREAMING_SNAKE_CASE"
)]
pub enum DeploymentStateGql {
    Scheduled,
    Running,
    Paused,
    Completed,
    Cancelled,
    Aborted,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(
    name = "DeviceUpdateState",
    remote = "crate::service::deployment::UpdateState",
    rename_items = "SCREAMING_SNAKE_CASE"
)]
pub enum UpdateStateGql {
    Pending,
    Released,
    Acknowledged,
    Downloading,
    Downloaded,
    Installing,
    Installed,
    Failed,
    Cancelled,
    Skipped,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq, Default)]
#[graphql(name = "DeploymentMode", remote = "crate::service::deployment::Mode", rename_items = "SCREAMING_SNAKE_CASE")]
pub enum ModeGql {
    /// Each device downloads and installs on its own.
    #[default]
    Standard,
    /// Devices stop at DOWNLOADED until `releaseInstall`.
    DownloadOnly,
    /// Every device downloads first; the install is released to all of
    /// them together, and a failure before it stops it for everyone.
    Coordinated,
}

/// How an update is offered to a device that speaks hawkBit DDI.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Default)]
#[graphql(
    name = "ActionType",
    remote = "crate::service::deployment::ActionType",
    rename_items = "SCREAMING_SNAKE_CASE"
)]
pub enum ActionTypeGql {
    /// Install at once.
    #[default]
    Forced,
    /// The device may ask its user before it installs.
    Soft,
}

/// A day of the week.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(name = "Weekday", rename_items = "SCREAMING_SNAKE_CASE")]
pub enum WeekdayGql {
    Monday,
    Tuesday,
    Wednesday,
    Thursday,
    Friday,
    Saturday,
    Sunday,
}

const WEEKDAYS: [WeekdayGql; 7] = [
    WeekdayGql::Monday,
    WeekdayGql::Tuesday,
    WeekdayGql::Wednesday,
    WeekdayGql::Thursday,
    WeekdayGql::Friday,
    WeekdayGql::Saturday,
    WeekdayGql::Sunday,
];

/// When the devices of a deployment may start installing: from `start`
/// (local time in `timezone`) for `durationMinutes`, every day or on the
/// `days` named. Downloads are not held; an install under way when it
/// closes finishes. hawkBit DDI devices see no deployment outside it;
/// `/device/v1` devices are told it in their poll and may not start
/// installing outside it; EnOS devices are not held.
#[derive(SimpleObject, InputObject, Clone)]
#[graphql(name = "MaintenanceWindow", input_name = "MaintenanceWindowInput")]
pub struct MaintenanceWindowGql {
    /// The days it opens on; none: every day.
    #[graphql(default)]
    days: Vec<WeekdayGql>,
    /// When it opens, "HH:MM" local time.
    start: String,
    /// How long it stays open: 1 to 1440 minutes.
    duration_minutes: i32,
    /// An IANA time zone ("Europe/Berlin"); UTC when not given.
    #[graphql(default_with = "String::from(\"UTC\")")]
    timezone: String,
}

impl From<service::window::MaintenanceWindow> for MaintenanceWindowGql {
    fn from(w: service::window::MaintenanceWindow) -> Self {
        Self {
            days: w.days.iter().filter_map(|d| WEEKDAYS.get(usize::from(*d).wrapping_sub(1)).copied()).collect(),
            start: w.start,
            duration_minutes: i32::try_from(w.duration_minutes).unwrap_or(i32::MAX),
            timezone: w.timezone,
        }
    }
}

impl From<MaintenanceWindowGql> for service::window::MaintenanceWindow {
    fn from(w: MaintenanceWindowGql) -> Self {
        let days = w
            .days
            .iter()
            .map(|d| WEEKDAYS.iter().position(|x| x == d).map_or(0, |i| u8::try_from(i + 1).unwrap_or(0)))
            .collect();
        Self::new(days, &w.start, u32::try_from(w.duration_minutes).unwrap_or(0), &w.timezone)
    }
}

/// A maintenance window at this moment.
#[derive(SimpleObject)]
pub struct MaintenanceWindowState {
    open: bool,
    /// While closed: when it opens next.
    opens_at: Option<DateTime<Utc>>,
    /// While open: when it closes.
    closes_at: Option<DateTime<Utc>>,
}

#[derive(SimpleObject, InputObject, Clone, Default)]
#[graphql(input_name = "RolloutPolicyInput")]
pub struct RolloutPolicy {
    /// Devices released and not finished at any time, at most.
    max_in_flight: Option<i32>,
    /// Cumulative shares of the devices, in percent, ending at 100
    /// (`[10, 50, 100]`); a phase starts when the one before has finished.
    #[graphql(default)]
    phases: Vec<i32>,
    /// Abort when more than this share of the finished devices failed.
    failure_threshold_percent: Option<i32>,
    start_at: Option<DateTime<Utc>>,
    /// After this, no device starts (those under way finish).
    expires_at: Option<DateTime<Utc>>,
    /// COORDINATED only: release the install once this share of the
    /// targets (percent) has downloaded, instead of waiting for all of them
    /// (devices that download later install when they are done).
    install_quorum_percent: Option<i32>,
    /// How devices speaking hawkBit DDI are offered the update (FORCED
    /// unless given). Devices of the otadepot and EnOS protocols are not
    /// told.
    #[graphql(default)]
    action_type: ActionTypeGql,
    /// When devices may start installing; none: any time.
    maintenance_window: Option<MaintenanceWindowGql>,
}

/// How many device updates are in each state.
#[derive(SimpleObject, Default)]
pub struct UpdateCounts {
    pending: u64,
    released: u64,
    acknowledged: u64,
    downloading: u64,
    downloaded: u64,
    installing: u64,
    installed: u64,
    failed: u64,
    cancelled: u64,
    skipped: u64,
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Deployment {
    id: ID,
    name: String,
    package_id: ID,
    group_id: Option<ID>,
    mode: ModeGql,
    state: DeploymentStateGql,
    policy: RolloutPolicy,
    /// Index into `policy.phases`.
    current_phase: i32,
    /// Whether devices may install (always, in STANDARD mode).
    install_released: bool,
    /// Why it was aborted, expired or cancelled.
    reason: Option<String>,
    /// Devices to update (not skipped).
    target_count: i32,
    skipped_count: i32,
    counts: UpdateCounts,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    #[graphql(skip)]
    window: Option<service::window::MaintenanceWindow>,
}

impl Readable for Deployment {
    const KIND: ObjectKind = ObjectKind::Deployment;
}

impl From<service::Deployment> for Deployment {
    fn from(d: service::Deployment) -> Self {
        use service::UpdateState as S;
        let c = |s: S| d.counts.get(&s).copied().unwrap_or_default();
        let counts = UpdateCounts {
            pending: c(S::Pending),
            released: c(S::Released),
            acknowledged: c(S::Acknowledged),
            downloading: c(S::Downloading),
            downloaded: c(S::Downloaded),
            installing: c(S::Installing),
            installed: c(S::Installed),
            failed: c(S::Failed),
            cancelled: c(S::Cancelled),
            skipped: c(S::Skipped),
        };
        let r = d.row;
        Self {
            id: ID(r.id.to_string()),
            name: r.name,
            package_id: ID(r.package_id.to_string()),
            group_id: r.group_id.map(|g| ID(g.to_string())),
            mode: d.mode.into(),
            state: d.state.into(),
            policy: RolloutPolicy {
                max_in_flight: r.max_in_flight,
                phases: d.phases,
                failure_threshold_percent: r.failure_threshold_percent,
                start_at: r.start_at,
                expires_at: r.expires_at,
                install_quorum_percent: r.install_quorum_percent,
                action_type: d.action_type.into(),
                maintenance_window: d.maintenance_window.clone().map(Into::into),
            },
            window: d.maintenance_window,
            current_phase: r.current_phase,
            install_released: r.install_released,
            reason: r.reason,
            target_count: r.target_count,
            skipped_count: r.skipped_count,
            counts,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

#[ComplexObject]
impl Deployment {
    /// Its maintenance window now (null without one).
    async fn maintenance_window_state(&self) -> Result<Option<MaintenanceWindowState>> {
        let Some(window) = &self.window else { return Ok(None) };
        let now = window.state_at(Utc::now())?;
        Ok(Some(MaintenanceWindowState { open: now.open, opens_at: now.opens_at, closes_at: now.closes_at }))
    }

    /// Its devices' updates, in release order.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn device_updates(
        &self,
        ctx: &Context<'_>,
        filter: Option<DeviceUpdateFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<DeviceUpdate>> {
        let id = parse_id("id", ResourceKind::Deployment, &self.id)?;
        let state = filter.and_then(|f| f.state).map(Into::into);
        let page = service::updates(app(ctx), caller(ctx), Some(id), None, state, first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), DeviceUpdate::from))
    }
}

#[derive(InputObject, Default)]
pub struct DeviceUpdateFilter {
    state: Option<UpdateStateGql>,
}

#[derive(SimpleObject)]
pub struct DeviceUpdate {
    id: ID,
    deployment_id: ID,
    /// A positive number unique across all device updates (at most
    /// 2^31 − 1), given when the update is created: what hawkBit DDI calls
    /// the action id.
    action_id: i32,
    /// Null without DEVICE_READ.
    device: Guarded<Device>,
    state: UpdateStateGql,
    /// `incompatible_model` or `already_installed`, for SKIPPED.
    skip_reason: Option<String>,
    progress: i32,
    error_code: Option<String>,
    message: Option<String>,
    released_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl Readable for DeviceUpdate {
    const KIND: ObjectKind = ObjectKind::DeviceUpdate;
}

impl From<service::UpdateView> for DeviceUpdate {
    fn from(u: service::UpdateView) -> Self {
        let r = u.row;
        Self {
            id: ID(r.id.to_string()),
            deployment_id: ID(r.deployment_id.to_string()),
            action_id: r.action_id,
            device: Guarded::new(u.device.into()),
            state: u.state.into(),
            skip_reason: r.skip_reason,
            progress: r.progress,
            error_code: r.error_code,
            message: r.message,
            released_at: r.released_at,
            finished_at: r.finished_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct Installation {
    id: ID,
    component: String,
    version: String,
    package_id: Option<ID>,
    /// The package's name (none when the device reported the version).
    package_name: Option<String>,
    /// The deployment that installed it; none when reported by the device.
    deployment_id: Option<ID>,
    /// `deployment`, or `device` when the device reported a version otadepot
    /// did not install.
    source: String,
    installed_at: DateTime<Utc>,
}

impl From<crate::service::device::InstallationView> for Installation {
    fn from(view: crate::service::device::InstallationView) -> Self {
        let i = view.row;
        Self {
            package_name: view.package_name,
            id: ID(i.id.to_string()),
            component: i.component,
            version: i.version,
            package_id: i.package_id.map(|p| ID(p.to_string())),
            deployment_id: i.deployment_id.map(|d| ID(d.to_string())),
            source: i.source,
            installed_at: i.installed_at,
        }
    }
}

/// `Device.updates` and `Device.installations`.
pub(crate) async fn device_updates(
    ctx: &Context<'_>,
    device: uuid::Uuid,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Conn<DeviceUpdate>> {
    let page = service::updates(app(ctx), caller(ctx), None, Some(device), None, first, after.as_deref()).await?;
    Ok(from_page(page, after.is_some(), DeviceUpdate::from))
}

pub(crate) async fn device_installations(ctx: &Context<'_>, device: uuid::Uuid) -> Result<Vec<Installation>> {
    Ok(crate::service::device::installations(app(ctx), caller(ctx), device)
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

#[derive(InputObject)]
pub struct ApplyPackageInput {
    package: ID,
    /// A group, or `devices` (ids or endpoint ids).
    group: Option<ID>,
    devices: Option<Vec<ID>>,
    name: Option<String>,
    #[graphql(default)]
    policy: RolloutPolicy,
    #[graphql(default)]
    mode: ModeGql,
}

#[derive(SimpleObject)]
pub struct SkippedDevice {
    device_id: ID,
    endpoint_id: String,
    /// `incompatible_model` or `already_installed`.
    reason: String,
}

/// How many devices were skipped for one reason.
#[derive(SimpleObject)]
pub struct SkipCount {
    /// `incompatible_model` or `already_installed`.
    reason: String,
    count: u64,
}

#[derive(SimpleObject)]
pub struct ApplyPackagePayload {
    /// Null without DEPLOYMENT_READ.
    deployment: Guarded<Deployment>,
    /// Devices of the target that get nothing, and why.
    skipped: Vec<SkippedDevice>,
    /// The skipped devices counted by reason.
    skipped_counts: Vec<SkipCount>,
}

#[derive(InputObject)]
pub struct DeploymentIdInput {
    id: ID,
}

#[derive(SimpleObject)]
pub struct DeploymentPayload {
    /// Null without DEPLOYMENT_READ.
    deployment: Guarded<Deployment>,
}

#[derive(InputObject)]
pub struct DeviceUpdateIdInput {
    id: ID,
}

#[derive(SimpleObject)]
pub struct DeviceUpdatePayload {
    /// Null without DEPLOYMENT_READ.
    device_update: Guarded<DeviceUpdate>,
}

#[derive(InputObject, Default)]
pub struct DeploymentFilter {
    state: Option<DeploymentStateGql>,
    package: Option<ID>,
    group: Option<ID>,
}

#[derive(InputObject)]
pub struct SetGroupPackageInput {
    group: ID,
    /// Null clears the group's current package.
    package: Option<ID>,
    #[graphql(default)]
    policy: RolloutPolicy,
    #[graphql(default)]
    mode: ModeGql,
}

#[derive(SimpleObject)]
pub struct SetGroupPackagePayload {
    /// The new deployment (null when cleared, or without DEPLOYMENT_READ).
    deployment: Guarded<Option<Deployment>>,
    skipped: Vec<SkippedDevice>,
    /// The skipped devices counted by reason.
    skipped_counts: Vec<SkipCount>,
}

fn skipped_counts(skipped: &[service::Skipped]) -> Vec<SkipCount> {
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    for s in skipped {
        *counts.entry(s.reason).or_default() += 1;
    }
    counts.into_iter().map(|(reason, count)| SkipCount { reason: reason.to_owned(), count }).collect()
}

fn skipped_list(skipped: Vec<service::Skipped>) -> Vec<SkippedDevice> {
    skipped
        .into_iter()
        .map(|s| SkippedDevice {
            device_id: ID(s.device_id.to_string()),
            endpoint_id: s.endpoint_id,
            reason: s.reason.to_owned(),
        })
        .collect()
}

fn policy_of(policy: RolloutPolicy) -> service::Policy {
    service::Policy {
        max_in_flight: policy.max_in_flight,
        phases: policy.phases,
        failure_threshold_percent: policy.failure_threshold_percent,
        start_at: policy.start_at,
        expires_at: policy.expires_at,
        install_quorum_percent: policy.install_quorum_percent,
        action_type: policy.action_type.into(),
        maintenance_window: policy.maintenance_window.map(Into::into),
    }
}

#[derive(Default)]
pub struct DeploymentQuery;

#[Object]
impl DeploymentQuery {
    async fn deployment(&self, ctx: &Context<'_>, id: ID) -> Result<Deployment> {
        Ok(service::get(app(ctx), caller(ctx), parse_id("id", ResourceKind::Deployment, &id)?).await?.into())
    }

    /// Newest first.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn deployments(
        &self,
        ctx: &Context<'_>,
        filter: Option<DeploymentFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<Deployment>> {
        let f = filter.unwrap_or_default();
        let filter = service::DeploymentFilter {
            state: f.state.map(Into::into),
            package: f.package.as_ref().map(|p| parse_id("filter.package", ResourceKind::Package, p)).transpose()?,
            group: f.group.as_ref().map(|g| parse_id("filter.group", ResourceKind::DeviceGroup, g)).transpose()?,
        };
        let page = service::list(app(ctx), caller(ctx), &filter, first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), Deployment::from))
    }
}

/// One push of `deploymentProgress`.
#[derive(SimpleObject)]
pub struct DeploymentProgress {
    /// The deployment with its counts, now.
    deployment: Deployment,
    /// The device update that changed, when a device report caused the push.
    update: Option<DeviceUpdate>,
}

#[derive(Default)]
pub struct DeploymentSubscription;

#[async_graphql::Subscription]
impl DeploymentSubscription {
    /// The deployment at once, then after every change: counts, phases,
    /// state, and each device's report as it happens (across server
    /// processes on PostgreSQL).
    async fn deployment_progress(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<impl futures::Stream<Item = DeploymentProgress> + use<>> {
        use futures::StreamExt;
        let id = parse_id("id", ResourceKind::Deployment, &id)?;
        let stream = service::watch(app(ctx), caller(ctx), id).await?;
        Ok(stream.map(|(deployment, update)| DeploymentProgress {
            deployment: deployment.into(),
            update: update.map(Into::into),
        }))
    }
}

#[derive(Default)]
pub struct DeploymentMutation;

#[Object]
impl DeploymentMutation {
    /// Apply a package to a group or a list of devices.
    async fn apply_package(&self, ctx: &Context<'_>, input: ApplyPackageInput) -> Result<ApplyPackagePayload> {
        let new = service::NewDeployment {
            package: parse_id("package", ResourceKind::Package, &input.package)?,
            group: input.group.as_ref().map(|g| parse_id("group", ResourceKind::DeviceGroup, g)).transpose()?,
            devices: input.devices.unwrap_or_default().into_iter().map(|d| d.0).collect(),
            name: input.name,
            policy: policy_of(input.policy),
            mode: input.mode.into(),
        };
        let (deployment, skipped) = service::apply(app(ctx), caller(ctx), new).await?;
        Ok(ApplyPackagePayload {
            deployment: Guarded::new(deployment.into()),
            skipped_counts: skipped_counts(&skipped),
            skipped: skipped_list(skipped),
        })
    }

    /// Give a group a current package: applied now, and to every device
    /// that joins the group later, without an operator.
    async fn set_group_package(
        &self,
        ctx: &Context<'_>,
        input: SetGroupPackageInput,
    ) -> Result<SetGroupPackagePayload> {
        let group = parse_id("group", ResourceKind::DeviceGroup, &input.group)?;
        let package = input
            .package
            .as_ref()
            .map(|p| parse_id("package", ResourceKind::Package, p))
            .transpose()?
            .map(|p| (p, policy_of(input.policy), input.mode.into()));
        let created = service::set_group_package(app(ctx), caller(ctx), group, package).await?;
        Ok(match created {
            None => SetGroupPackagePayload {
                deployment: Guarded::new(None),
                skipped: Vec::new(),
                skipped_counts: Vec::new(),
            },
            Some((deployment, skipped)) => SetGroupPackagePayload {
                deployment: Guarded::new(Some(deployment.into())),
                skipped_counts: skipped_counts(&skipped),
                skipped: skipped_list(skipped),
            },
        })
    }

    /// No further releases; devices under way go on.
    async fn pause_deployment(&self, ctx: &Context<'_>, input: DeploymentIdInput) -> Result<DeploymentPayload> {
        let id = parse_id("id", ResourceKind::Deployment, &input.id)?;
        Ok(DeploymentPayload { deployment: Guarded::new(service::pause(app(ctx), caller(ctx), id).await?.into()) })
    }

    async fn resume_deployment(&self, ctx: &Context<'_>, input: DeploymentIdInput) -> Result<DeploymentPayload> {
        let id = parse_id("id", ResourceKind::Deployment, &input.id)?;
        Ok(DeploymentPayload { deployment: Guarded::new(service::resume(app(ctx), caller(ctx), id).await?.into()) })
    }

    /// Devices not yet installing are CANCELLED; they learn it on their next poll.
    async fn cancel_deployment(&self, ctx: &Context<'_>, input: DeploymentIdInput) -> Result<DeploymentPayload> {
        let id = parse_id("id", ResourceKind::Deployment, &input.id)?;
        Ok(DeploymentPayload { deployment: Guarded::new(service::cancel(app(ctx), caller(ctx), id).await?.into()) })
    }

    /// One device's update, whatever protocol its device speaks: CANCELLED
    /// unless it is installing or over. A device that was offered it
    /// learns on its next poll (`CANCEL` on `/device/v1`, `cancelAction`
    /// over hawkBit DDI) and acknowledges; audited as `device_update.cancel`.
    async fn cancel_device_update(&self, ctx: &Context<'_>, input: DeviceUpdateIdInput) -> Result<DeviceUpdatePayload> {
        let id = parse_id("id", ResourceKind::Update, &input.id)?;
        Ok(DeviceUpdatePayload {
            device_update: Guarded::new(service::cancel_update(app(ctx), caller(ctx), id).await?.into()),
        })
    }

    /// Let the devices of a DOWNLOAD_ONLY (or COORDINATED) deployment install.
    async fn release_install(&self, ctx: &Context<'_>, input: DeploymentIdInput) -> Result<DeploymentPayload> {
        let id = parse_id("id", ResourceKind::Deployment, &input.id)?;
        Ok(DeploymentPayload {
            deployment: Guarded::new(service::release_install(app(ctx), caller(ctx), id).await?.into()),
        })
    }
}
