//! Device groups: `deviceGroup`, `deviceGroups`, `createDeviceGroup`,
//! `updateDeviceGroup`, `deleteDeviceGroup`, `addGroupMembers`,
//! `removeGroupMembers`.

use async_graphql::{ComplexObject, Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::authz::{Guarded, Readable};
use super::connection::{Conn, from_page};
use super::device::{AttributeFilter, Device, InstalledVersionFilter};
use super::device_model::DeviceModel;
use super::ids::parse_id;
use super::{app, caller};
use crate::error::ResourceKind;
use crate::service::authz::ObjectKind;
use crate::service::device_group as service;

#[derive(Enum, Clone, Copy, PartialEq, Eq, Default)]
#[graphql(
    name = "DeviceGroupKind",
    remote = "crate::service::device_group::GroupKind",
    rename_items = "SCREAMING_SNAKE_CASE"
)]
pub enum GroupKindGql {
    /// Lists its members.
    #[default]
    Static,
    /// Every device of its model that matches its filter, now.
    Dynamic,
}

/// Every condition must hold.
#[derive(SimpleObject, InputObject, Clone, Default)]
#[graphql(input_name = "DeviceGroupFilterInput")]
pub struct DeviceGroupFilter {
    /// Each reads the operator's attributes unless its `source` is
    /// REPORTED (what the device says of itself).
    #[graphql(default)]
    attributes: Vec<AttributeFilter>,
    #[graphql(default)]
    installed_versions: Vec<InstalledVersionFilter>,
}

impl From<DeviceGroupFilter> for service::GroupFilter {
    fn from(f: DeviceGroupFilter) -> Self {
        Self {
            attributes: f.attributes.into_iter().map(Into::into).collect(),
            installed: f.installed_versions.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<service::GroupFilter> for DeviceGroupFilter {
    fn from(f: service::GroupFilter) -> Self {
        Self {
            attributes: f.attributes.into_iter().map(Into::into).collect(),
            installed_versions: f.installed.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct DeviceGroup {
    #[graphql(skip)]
    inner: service::Group,
    id: ID,
    name: String,
    description: String,
    /// A group holds devices of this model only.
    model: DeviceModel,
    kind: GroupKindGql,
    /// A dynamic group's filter (null for static groups).
    filter: Option<DeviceGroupFilter>,
    /// The deployment of the group's current package (`setGroupPackage`),
    /// which devices joining the group are added to.
    current_deployment_id: Option<ID>,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Readable for DeviceGroup {
    const KIND: ObjectKind = ObjectKind::DeviceGroup;
}

impl From<service::Group> for DeviceGroup {
    fn from(g: service::Group) -> Self {
        let inner = g.clone();
        Self {
            inner,
            id: ID(g.row.id.to_string()),
            name: g.row.name,
            description: g.row.description,
            model: g.model.into(),
            kind: g.kind.into(),
            filter: g.filter.map(Into::into),
            current_deployment_id: g.row.auto_deployment_id.map(|d| ID(d.to_string())),
            created_by: g.row.created_by,
            created_at: g.row.created_at,
            updated_at: g.row.updated_at,
        }
    }
}

#[ComplexObject]
impl DeviceGroup {
    /// How many devices the group holds now (decommissioned ones never).
    async fn device_count(&self, ctx: &Context<'_>) -> Result<u64> {
        Ok(service::device_count(app(ctx), caller(ctx), &self.inner).await?)
    }

    /// The group's devices, newest first.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn devices(&self, ctx: &Context<'_>, first: Option<i32>, after: Option<String>) -> Result<Conn<Device>> {
        let page = service::devices(app(ctx), caller(ctx), &self.inner, first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), Device::from))
    }
}

#[derive(InputObject)]
pub struct CreateDeviceGroupInput {
    /// Unique.
    name: String,
    description: Option<String>,
    /// A device model id or name.
    model: ID,
    #[graphql(default)]
    kind: GroupKindGql,
    /// DYNAMIC groups only; without one, every device of the model.
    filter: Option<DeviceGroupFilter>,
}

#[derive(InputObject)]
pub struct UpdateDeviceGroupInput {
    id: ID,
    name: Option<String>,
    description: Option<String>,
    /// DYNAMIC groups only: the new, complete filter.
    filter: Option<DeviceGroupFilter>,
}

#[derive(InputObject)]
pub struct DeleteDeviceGroupInput {
    id: ID,
}

#[derive(InputObject)]
pub struct GroupMembersInput {
    group: ID,
    /// Device ids or endpoint ids (up to 10,000).
    devices: Vec<ID>,
}

#[derive(SimpleObject)]
pub struct DeviceGroupPayload {
    /// Null without DEVICE_READ.
    device_group: Guarded<DeviceGroup>,
}

impl From<service::Group> for DeviceGroupPayload {
    fn from(g: service::Group) -> Self {
        Self { device_group: Guarded::new(g.into()) }
    }
}

#[derive(Default)]
pub struct GroupQuery;

#[Object]
impl GroupQuery {
    async fn device_group(&self, ctx: &Context<'_>, id: ID) -> Result<DeviceGroup> {
        Ok(service::get(app(ctx), caller(ctx), parse_id("id", ResourceKind::DeviceGroup, &id)?).await?.into())
    }

    /// In name order.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn device_groups(
        &self,
        ctx: &Context<'_>,
        model: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<DeviceGroup>> {
        let model = model.as_ref().map(|m| parse_id("model", ResourceKind::DeviceModel, m)).transpose()?;
        let page = service::list(app(ctx), caller(ctx), model, first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), DeviceGroup::from))
    }
}

#[derive(Default)]
pub struct GroupMutation;

#[Object]
impl GroupMutation {
    async fn create_device_group(
        &self,
        ctx: &Context<'_>,
        input: CreateDeviceGroupInput,
    ) -> Result<DeviceGroupPayload> {
        let new = service::NewGroup {
            name: input.name,
            description: input.description,
            model: input.model.0,
            kind: input.kind.into(),
            filter: input.filter.map(Into::into),
        };
        Ok(service::create(app(ctx), caller(ctx), new).await?.into())
    }

    async fn update_device_group(
        &self,
        ctx: &Context<'_>,
        input: UpdateDeviceGroupInput,
    ) -> Result<DeviceGroupPayload> {
        let changes = service::GroupChanges {
            id: parse_id("id", ResourceKind::DeviceGroup, &input.id)?,
            name: input.name,
            description: input.description,
            filter: input.filter.map(Into::into),
        };
        Ok(service::update(app(ctx), caller(ctx), changes).await?.into())
    }

    /// Delete a group (its devices stay).
    async fn delete_device_group(
        &self,
        ctx: &Context<'_>,
        input: DeleteDeviceGroupInput,
    ) -> Result<DeviceGroupPayload> {
        Ok(service::delete(app(ctx), caller(ctx), parse_id("id", ResourceKind::DeviceGroup, &input.id)?).await?.into())
    }

    /// Add devices of the group's model to a static group.
    async fn add_group_members(&self, ctx: &Context<'_>, input: GroupMembersInput) -> Result<DeviceGroupPayload> {
        let refs = input.devices.into_iter().map(|d| d.0).collect();
        Ok(service::add_members(
            app(ctx),
            caller(ctx),
            parse_id("group", ResourceKind::DeviceGroup, &input.group)?,
            refs,
        )
        .await?
        .into())
    }

    async fn remove_group_members(&self, ctx: &Context<'_>, input: GroupMembersInput) -> Result<DeviceGroupPayload> {
        let refs = input.devices.into_iter().map(|d| d.0).collect();
        Ok(service::remove_members(
            app(ctx),
            caller(ctx),
            parse_id("group", ResourceKind::DeviceGroup, &input.group)?,
            refs,
        )
        .await?
        .into())
    }
}
