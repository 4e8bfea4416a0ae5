//! Device models: `deviceModel`, `deviceModels`, `createDeviceModel`,
//! `updateDeviceModel`, `deleteDeviceModel`.

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::authz::{Guarded, Readable};
use super::connection::{Conn, from_page};
use super::ids::parse_id;
use super::{app, caller};
use crate::error::ResourceKind;
use crate::service::authz::ObjectKind;
use crate::service::device_model as service;

#[derive(SimpleObject, Clone)]
pub struct DeviceModel {
    id: ID,
    /// The model number; unique.
    name: String,
    manufacturer: Option<String>,
    description: Option<String>,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Readable for DeviceModel {
    const KIND: ObjectKind = ObjectKind::DeviceModel;
}

impl From<service::DeviceModel> for DeviceModel {
    fn from(m: service::DeviceModel) -> Self {
        Self {
            id: ID(m.id.to_string()),
            name: m.name,
            manufacturer: m.manufacturer,
            description: m.description,
            created_by: m.created_by,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(InputObject)]
pub struct CreateDeviceModelInput {
    /// The model number (unique), e.g. `X100-B`.
    name: String,
    manufacturer: Option<String>,
    description: Option<String>,
}

#[derive(InputObject)]
pub struct UpdateDeviceModelInput {
    id: ID,
    name: Option<String>,
    /// An empty string clears it.
    manufacturer: Option<String>,
    /// An empty string clears it.
    description: Option<String>,
}

#[derive(InputObject)]
pub struct DeleteDeviceModelInput {
    id: ID,
}

#[derive(SimpleObject)]
pub struct DeviceModelPayload {
    /// Null without DEVICE_READ.
    device_model: Guarded<DeviceModel>,
}

impl From<service::DeviceModel> for DeviceModelPayload {
    fn from(m: service::DeviceModel) -> Self {
        Self { device_model: Guarded::new(m.into()) }
    }
}

#[derive(Default)]
pub struct DeviceModelQuery;

#[Object]
impl DeviceModelQuery {
    async fn device_model(&self, ctx: &Context<'_>, id: ID) -> Result<DeviceModel> {
        Ok(service::get(app(ctx), caller(ctx), parse_id("id", ResourceKind::DeviceModel, &id)?).await?.into())
    }

    /// In name order.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn device_models(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<DeviceModel>> {
        let page = service::list(app(ctx), caller(ctx), first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), DeviceModel::from))
    }
}

#[derive(Default)]
pub struct DeviceModelMutation;

#[Object]
impl DeviceModelMutation {
    async fn create_device_model(
        &self,
        ctx: &Context<'_>,
        input: CreateDeviceModelInput,
    ) -> Result<DeviceModelPayload> {
        let input = service::NewDeviceModel {
            name: input.name,
            manufacturer: input.manufacturer,
            description: input.description,
        };
        Ok(service::create(app(ctx), caller(ctx), input).await?.into())
    }

    async fn update_device_model(
        &self,
        ctx: &Context<'_>,
        input: UpdateDeviceModelInput,
    ) -> Result<DeviceModelPayload> {
        let changes = service::DeviceModelChanges {
            id: parse_id("id", ResourceKind::DeviceModel, &input.id)?,
            name: input.name,
            manufacturer: input.manufacturer,
            description: input.description,
        };
        Ok(service::update(app(ctx), caller(ctx), changes).await?.into())
    }

    /// Refused (CONFLICT) while a package, a device or a group uses the model.
    async fn delete_device_model(
        &self,
        ctx: &Context<'_>,
        input: DeleteDeviceModelInput,
    ) -> Result<DeviceModelPayload> {
        Ok(service::delete(app(ctx), caller(ctx), parse_id("id", ResourceKind::DeviceModel, &input.id)?).await?.into())
    }
}
