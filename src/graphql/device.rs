//! Devices: `device`, `deviceByEndpointId`, `devices`, `registerDevice`,
//! `registerDevices`, `rotateDeviceCredential`, `setDeviceGateway`,
//! `decommissionDevice` (enrollment is in `enrollment`).

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::authz::{Guarded, Readable};
use super::connection::{Conn, from_page};
use super::device_model::DeviceModel;
use super::ids::parse_id;
use super::{app, caller};
use crate::error::ResourceKind;
use crate::service::authz::ObjectKind;
use crate::service::device as service;

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(
    name = "DeviceStatus",
    remote = "crate::service::device::DeviceStatus",
    rename_items = "SCREAMING_SNAKE_CASE"
)]
pub enum DeviceStatusGql {
    /// Enrolled itself; waits for an operator's approval.
    Pending,
    /// Registered; not heard from yet.
    Registered,
    /// Has called in.
    Active,
    Decommissioned,
    Rejected,
}

#[derive(SimpleObject)]
pub struct Attribute {
    key: String,
    value: String,
}

#[derive(SimpleObject)]
pub struct InstalledVersion {
    /// `firmware`, or an application's name.
    component: String,
    version: String,
    reported_at: DateTime<Utc>,
}

// Its fields of other areas (`updates`, `commands`, `installations`) are
// in `device_relations.rs`. (Not a doc comment: that would be the schema's
// description of `Device`.)
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Device {
    #[graphql(skip)]
    pub(super) uuid: uuid::Uuid,
    id: ID,
    /// The device's own id (EPN, assetId, controllerId).
    endpoint_id: String,
    serial: Option<String>,
    model: DeviceModel,
    status: DeviceStatusGql,
    /// Set by operators (registration, CSV import). Dynamic groups read
    /// these unless a condition says `source: REPORTED`.
    attributes: Vec<Attribute>,
    /// What the device reported about itself (inventory, enrollment); it
    /// never changes `attributes`.
    reported_attributes: Vec<Attribute>,
    installed: Vec<InstalledVersion>,
    /// The gateway that may act for this device.
    gateway_id: Option<ID>,
    last_seen_at: Option<DateTime<Utc>>,
    credential_rotated_at: DateTime<Utc>,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Readable for Device {
    const KIND: ObjectKind = ObjectKind::Device;
}

impl From<service::Device> for Device {
    fn from(d: service::Device) -> Self {
        let r = d.row;
        Self {
            uuid: r.id,
            id: ID(r.id.to_string()),
            endpoint_id: r.endpoint_id,
            serial: r.serial,
            model: d.model.into(),
            status: d.status.into(),
            attributes: d.attributes.into_iter().map(|(key, value)| Attribute { key, value }).collect(),
            reported_attributes: d
                .reported_attributes
                .into_iter()
                .map(|(key, value)| Attribute { key, value })
                .collect(),
            installed: d
                .installed
                .into_iter()
                .map(|(component, i)| InstalledVersion { component, version: i.version, reported_at: i.reported_at })
                .collect(),
            gateway_id: r.gateway_id.map(|g| ID(g.to_string())),
            last_seen_at: r.last_seen_at,
            credential_rotated_at: r.credential_rotated_at,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(InputObject)]
pub struct AttributeInput {
    key: String,
    value: String,
}

#[derive(InputObject)]
pub struct RegisterDeviceInput {
    /// The device's own id; unique.
    endpoint_id: String,
    serial: Option<String>,
    /// A device model id or name.
    model: ID,
    attributes: Option<Vec<AttributeInput>>,
    /// The gateway (device id or endpoint id) that may act for this device:
    /// registered before, or earlier in the same batch.
    gateway: Option<String>,
}

impl From<RegisterDeviceInput> for service::NewDevice {
    fn from(i: RegisterDeviceInput) -> Self {
        Self {
            endpoint_id: i.endpoint_id,
            serial: i.serial,
            model: i.model.0,
            attributes: i.attributes.unwrap_or_default().into_iter().map(|a| (a.key, a.value)).collect(),
            reported_attributes: Vec::new(),
            gateway: i.gateway,
        }
    }
}

#[derive(InputObject)]
pub struct RegisterDevicesInput {
    /// Up to 10,000; all are registered or none (the error's
    /// `extensions.rows` names every refused row).
    devices: Vec<RegisterDeviceInput>,
}

#[derive(InputObject)]
pub struct DeviceIdInput {
    id: ID,
}

/// A device and its secret, shown this once: the device presents it as
/// `Authorization: Bearer <secret>`.
#[derive(SimpleObject)]
pub struct DeviceCredentialPayload {
    /// Null without DEVICE_READ.
    device: Guarded<Device>,
    secret: String,
}

impl From<service::Registered> for DeviceCredentialPayload {
    fn from(r: service::Registered) -> Self {
        Self { device: Guarded::new(r.device.into()), secret: r.secret }
    }
}

#[derive(SimpleObject)]
pub struct RegisterDevicesPayload {
    count: usize,
    /// In input order.
    devices: Vec<DeviceCredentialPayload>,
}

#[derive(SimpleObject)]
pub struct DevicePayload {
    /// Null without DEVICE_READ.
    device: Guarded<Device>,
}

#[derive(Enum, Clone, Copy, PartialEq, Eq, Default)]
#[graphql(name = "FilterOp")]
pub enum FilterOpGql {
    #[default]
    Equals,
    In,
    Exists,
    Prefix,
}

impl From<FilterOpGql> for service::FilterOp {
    fn from(op: FilterOpGql) -> Self {
        match op {
            FilterOpGql::Equals => Self::Equals,
            FilterOpGql::In => Self::In,
            FilterOpGql::Exists => Self::Exists,
            FilterOpGql::Prefix => Self::Prefix,
        }
    }
}

/// Which of a device's attribute sets a filter condition reads.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Default)]
#[graphql(name = "AttributeSource", remote = "crate::service::device::AttributeSource")]
pub enum AttributeSourceGql {
    /// `Device.attributes`, set by operators.
    #[default]
    Operator,
    /// `Device.reportedAttributes`, what devices reported about themselves.
    Reported,
}

#[derive(InputObject, SimpleObject, Clone)]
#[graphql(input_name = "AttributeFilterInput")]
pub struct AttributeFilter {
    key: String,
    #[graphql(default)]
    op: FilterOpGql,
    /// The operator's attributes (the default) or the device's reported ones.
    #[graphql(default)]
    source: AttributeSourceGql,
    /// For EQUALS and PREFIX.
    value: Option<String>,
    /// For IN.
    values: Option<Vec<String>>,
}

#[derive(InputObject, SimpleObject, Clone)]
#[graphql(input_name = "InstalledVersionFilterInput")]
pub struct InstalledVersionFilter {
    component: String,
    #[graphql(default)]
    op: FilterOpGql,
    /// For EQUALS and PREFIX.
    version: Option<String>,
    /// For IN.
    versions: Option<Vec<String>>,
}

impl From<(service::AttributeSource, service::ValueFilter)> for AttributeFilter {
    fn from((source, f): (service::AttributeSource, service::ValueFilter)) -> Self {
        Self { key: f.name, op: f.op.into(), source: source.into(), value: f.value, values: Some(f.values) }
    }
}

impl From<crate::service::device::ValueFilter> for InstalledVersionFilter {
    fn from(f: crate::service::device::ValueFilter) -> Self {
        Self { component: f.name, op: f.op.into(), version: f.value, versions: Some(f.values) }
    }
}

impl From<service::FilterOp> for FilterOpGql {
    fn from(op: service::FilterOp) -> Self {
        match op {
            service::FilterOp::Equals => Self::Equals,
            service::FilterOp::In => Self::In,
            service::FilterOp::Exists => Self::Exists,
            service::FilterOp::Prefix => Self::Prefix,
        }
    }
}

impl From<AttributeFilter> for (service::AttributeSource, service::ValueFilter) {
    fn from(f: AttributeFilter) -> Self {
        (
            f.source.into(),
            service::ValueFilter { name: f.key, op: f.op.into(), value: f.value, values: f.values.unwrap_or_default() },
        )
    }
}

impl From<InstalledVersionFilter> for service::ValueFilter {
    fn from(f: InstalledVersionFilter) -> Self {
        Self { name: f.component, op: f.op.into(), value: f.version, values: f.versions.unwrap_or_default() }
    }
}

#[derive(InputObject, Default)]
pub struct DeviceFilter {
    model: Option<ID>,
    /// Members of this group (static or dynamic).
    group: Option<ID>,
    status: Option<DeviceStatusGql>,
    attribute: Option<AttributeFilter>,
    installed_version: Option<InstalledVersionFilter>,
    last_seen_before: Option<DateTime<Utc>>,
    last_seen_after: Option<DateTime<Utc>>,
    /// Part of the endpoint id or serial, any case.
    search: Option<String>,
}

impl DeviceFilter {
    fn into_service(self) -> Result<service::DeviceFilter> {
        let (reported, operator): (Vec<_>, Vec<_>) = self
            .attribute
            .into_iter()
            .map(<(service::AttributeSource, service::ValueFilter)>::from)
            .partition(|(source, _)| *source == service::AttributeSource::Reported);
        Ok(service::DeviceFilter {
            model: self.model.as_ref().map(|m| parse_id("filter.model", ResourceKind::DeviceModel, m)).transpose()?,
            status: self.status.map(Into::into),
            attributes: operator.into_iter().map(|(_, f)| f).collect(),
            reported_attributes: reported.into_iter().map(|(_, f)| f).collect(),
            installed: self.installed_version.into_iter().map(Into::into).collect(),
            last_seen_before: self.last_seen_before,
            last_seen_after: self.last_seen_after,
            search: self.search,
            group: self.group.as_ref().map(|g| parse_id("filter.group", ResourceKind::DeviceGroup, g)).transpose()?,
            within: None,
        })
    }
}

#[derive(InputObject)]
pub struct SetDeviceGatewayInput {
    device: ID,
    /// The gateway (device id or endpoint id); null removes it.
    gateway: Option<String>,
}

#[derive(Default)]
pub struct DeviceQuery;

#[Object]
impl DeviceQuery {
    async fn device(&self, ctx: &Context<'_>, id: ID) -> Result<Device> {
        Ok(service::get(app(ctx), caller(ctx), parse_id("id", ResourceKind::Device, &id)?).await?.into())
    }

    async fn device_by_endpoint_id(&self, ctx: &Context<'_>, endpoint_id: String) -> Result<Device> {
        Ok(service::get_by_endpoint_id(app(ctx), caller(ctx), &endpoint_id).await?.into())
    }

    /// Newest first.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn devices(
        &self,
        ctx: &Context<'_>,
        filter: Option<DeviceFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<Device>> {
        let filter = filter.unwrap_or_default().into_service()?;
        let page =
            crate::service::device_group::list_devices(app(ctx), caller(ctx), &filter, first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), Device::from))
    }
}

#[derive(Default)]
pub struct DeviceMutation;

#[Object]
impl DeviceMutation {
    /// Register a device; its secret is in the payload, this once.
    async fn register_device(&self, ctx: &Context<'_>, input: RegisterDeviceInput) -> Result<DeviceCredentialPayload> {
        Ok(service::register(app(ctx), caller(ctx), input.into()).await?.into())
    }

    /// Register up to 10,000 devices in one transaction.
    async fn register_devices(&self, ctx: &Context<'_>, input: RegisterDevicesInput) -> Result<RegisterDevicesPayload> {
        let inputs = input.devices.into_iter().map(Into::into).collect();
        let registered = service::register_many(app(ctx), caller(ctx), inputs).await?;
        Ok(RegisterDevicesPayload {
            count: registered.len(),
            devices: registered.into_iter().map(Into::into).collect(),
        })
    }

    /// A new secret; the old one stops working at once.
    async fn rotate_device_credential(
        &self,
        ctx: &Context<'_>,
        input: DeviceIdInput,
    ) -> Result<DeviceCredentialPayload> {
        Ok(service::rotate_credential(app(ctx), caller(ctx), parse_id("id", ResourceKind::Device, &input.id)?)
            .await?
            .into())
    }

    /// Let a gateway act for this device on the device API (or stop it).
    async fn set_device_gateway(&self, ctx: &Context<'_>, input: SetDeviceGatewayInput) -> Result<DevicePayload> {
        let device = crate::service::device::set_gateway(
            app(ctx),
            caller(ctx),
            parse_id("device", ResourceKind::Device, &input.device)?,
            input.gateway,
        )
        .await?;
        Ok(DevicePayload { device: Guarded::new(device.into()) })
    }

    /// For good: the credential stops working.
    async fn decommission_device(&self, ctx: &Context<'_>, input: DeviceIdInput) -> Result<DevicePayload> {
        let device =
            service::decommission(app(ctx), caller(ctx), parse_id("id", ResourceKind::Device, &input.id)?).await?;
        Ok(DevicePayload { device: Guarded::new(device.into()) })
    }
}
