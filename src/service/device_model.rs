//! Device models: the model numbers that devices, groups and packages
//! refer to (TCUP: updates go to devices "having the exact same device
//! model number").

use chrono::Utc;
use entity::device_model::{self, Column};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    Set,
};
use serde_json::json;
use uuid::Uuid;

use crate::app::App;
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;
use crate::service::pagination::{Page, PageRequest, cursor};

const CURSOR_KIND: &str = "device_model";

pub type DeviceModel = device_model::Model;

#[derive(Clone, Debug)]
pub struct NewDeviceModel {
    pub name: String,
    pub manufacturer: Option<String>,
    pub description: Option<String>,
}

/// `None` leaves a field as it is; `Some("")` clears manufacturer or description.
#[derive(Clone, Debug)]
pub struct DeviceModelChanges {
    pub id: Uuid,
    pub name: Option<String>,
    pub manufacturer: Option<String>,
    pub description: Option<String>,
}

fn optional_text(field: &str, value: Option<String>, max: usize) -> Result<Option<String>> {
    let Some(value) = value else { return Ok(None) };
    let value = value.trim().to_owned();
    if value.chars().count() > max {
        return Err(Error::invalid(field, format!("at most {max} characters")));
    }
    Ok(if value.is_empty() { None } else { Some(value) })
}

pub async fn create(app: &App, ctx: &Ctx, input: NewDeviceModel) -> Result<DeviceModel> {
    ctx.require(Permission::DeviceWrite)?;
    let name = crate::service::display_name(&input.name)?;
    let manufacturer = optional_text("manufacturer", input.manufacturer, 255)?;
    let description = optional_text("description", input.description, 4096)?;
    let (_, created_by) = ctx.actor.audit_identity();

    let mut tx = WriteTx::begin(app).await?;
    if find_by_name(tx.conn(), &name).await?.is_some() {
        return Err(Error::Conflict(format!("device model {name:?} already exists")));
    }
    let now = Utc::now();
    let model = device_model::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name),
        manufacturer: Set(manufacturer),
        description: Set(description),
        created_by: Set(created_by),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(tx.conn())
    .await?;
    tx.audit(
        ctx,
        "device_model.create",
        ResourceKind::DeviceModel,
        &model.id.to_string(),
        json!({ "name": model.name, "manufacturer": model.manufacturer }),
    )
    .await?;
    tx.commit().await?;
    Ok(model)
}

pub async fn update(app: &App, ctx: &Ctx, input: DeviceModelChanges) -> Result<DeviceModel> {
    ctx.require(Permission::DeviceWrite)?;
    let name = input.name.as_deref().map(crate::service::display_name).transpose()?;
    let manufacturer = input.manufacturer.map(|m| optional_text("manufacturer", Some(m), 255)).transpose()?;
    let description = input.description.map(|d| optional_text("description", Some(d), 4096)).transpose()?;

    let mut tx = WriteTx::begin(app).await?;
    let current = find(tx.conn(), input.id).await?;
    let mut changed = Vec::new();
    let mut model: device_model::ActiveModel = current.clone().into();
    if let Some(name) = name
        && name != current.name
    {
        if find_by_name(tx.conn(), &name).await?.is_some() {
            return Err(Error::Conflict(format!("device model {name:?} already exists")));
        }
        model.name = Set(name);
        changed.push("name");
    }
    if let Some(manufacturer) = manufacturer
        && manufacturer != current.manufacturer
    {
        model.manufacturer = Set(manufacturer);
        changed.push("manufacturer");
    }
    if let Some(description) = description
        && description != current.description
    {
        model.description = Set(description);
        changed.push("description");
    }
    if changed.is_empty() {
        return Ok(current);
    }
    model.updated_at = Set(Utc::now());
    let model = model.update(tx.conn()).await?;
    tx.audit(
        ctx,
        "device_model.update",
        ResourceKind::DeviceModel,
        &model.id.to_string(),
        json!({ "changed": changed, "name_before": current.name, "name": model.name }),
    )
    .await?;
    tx.commit().await?;
    Ok(model)
}

/// Refused (CONFLICT) while a package, a device or a group refers to the
/// model.
pub async fn delete(app: &App, ctx: &Ctx, id: Uuid) -> Result<DeviceModel> {
    ctx.require(Permission::DeviceWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let current = find(tx.conn(), id).await?;
    let packages = entity::package_model::Entity::find()
        .filter(entity::package_model::Column::DeviceModelId.eq(id))
        .count(tx.conn())
        .await?;
    let devices =
        entity::device::Entity::find().filter(entity::device::Column::ModelId.eq(id)).count(tx.conn()).await?;
    let groups = entity::device_group::Entity::find()
        .filter(entity::device_group::Column::ModelId.eq(id))
        .count(tx.conn())
        .await?;
    if packages + devices + groups > 0 {
        return Err(Error::Conflict(format!(
            "device model {:?} is used by {packages} package(s), {devices} device(s) and {groups} group(s)",
            current.name
        )));
    }
    device_model::Entity::delete_by_id(id).exec(tx.conn()).await?;
    tx.audit(ctx, "device_model.delete", ResourceKind::DeviceModel, &id.to_string(), json!({ "name": current.name }))
        .await?;
    tx.commit().await?;
    Ok(current)
}

pub async fn get(app: &App, ctx: &Ctx, id: Uuid) -> Result<DeviceModel> {
    ctx.require(Permission::DeviceRead)?;
    find(&app.db, id).await
}

/// In name order.
pub async fn list(app: &App, ctx: &Ctx, first: Option<i32>, after: Option<&str>) -> Result<Page<DeviceModel>> {
    ctx.require(Permission::DeviceRead)?;
    let page = PageRequest::parse_string(CURSOR_KIND, first, after)?;
    let total_count = device_model::Entity::find().count(&app.db).await?;
    let mut query = device_model::Entity::find();
    if let Some(after) = &page.after {
        query = query.filter(Column::Name.gt(after.as_str()));
    }
    let mut rows = query.order_by_asc(Column::Name).limit(page.first + 1).all(&app.db).await?;
    let has_next_page = rows.len() as u64 > page.first;
    rows.truncate(usize::try_from(page.first).unwrap_or(usize::MAX));
    Ok(Page {
        items: rows.into_iter().map(|m| (cursor(CURSOR_KIND, &m.name), m)).collect(),
        has_next_page,
        total_count,
    })
}

pub(crate) async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<DeviceModel> {
    device_model::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::DeviceModel, id.to_string()))
}

async fn find_by_name(conn: &impl ConnectionTrait, name: &str) -> Result<Option<DeviceModel>> {
    Ok(device_model::Entity::find().filter(Column::Name.eq(name)).one(conn).await?)
}

/// Resolve ids (or, failing that, names) to models, in the given order,
/// without duplicates; an unknown one is BAD_USER_INPUT naming `field`.
pub(crate) async fn resolve(conn: &impl ConnectionTrait, field: &str, refs: &[String]) -> Result<Vec<DeviceModel>> {
    let mut models: Vec<DeviceModel> = Vec::with_capacity(refs.len());
    for (i, reference) in refs.iter().enumerate() {
        let found = match reference.parse::<Uuid>() {
            Ok(id) => device_model::Entity::find_by_id(id).one(conn).await?,
            Err(_) => find_by_name(conn, reference).await?,
        };
        let model =
            found.ok_or_else(|| Error::invalid(format!("{field}[{i}]"), format!("no device model {reference}")))?;
        if models.iter().all(|m| m.id != model.id) {
            models.push(model);
        }
    }
    Ok(models)
}
