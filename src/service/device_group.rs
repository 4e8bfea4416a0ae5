//! Device groups: devices of exactly one model (TCUP: "devices having the
//! exact same device model number"). A static group lists its members; a
//! dynamic one holds every device of its model that matches its filter,
//! evaluated in SQL at the moment it is read (never by loading devices).
//! Decommissioned devices belong to no group.
//!
//! A filter's attribute condition reads the operator's attributes unless it
//! says `REPORTED` (what the device reported about itself): a device must
//! not be able to move itself into a group an operator defined.

use std::collections::{BTreeMap, HashMap};

use chrono::Utc;
use entity::{device, device_group, device_group_member};
use sea_orm::sea_query::{Query, SelectStatement};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Set,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::app::App;
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result, RowError};
use crate::service::WriteTx;
use crate::service::device::{
    self as devices, AttributeSource, Device, DeviceFilter, DeviceStatus, FilterOp, ValueFilter,
};
use crate::service::device_model::{self, DeviceModel};
use crate::service::pagination::{Page, PageRequest, cursor};

const MAX_FILTERS: usize = 16;
/// Most devices one addGroupMembers / removeGroupMembers call takes.
pub const MAX_MEMBERS_PER_CALL: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    Static,
    Dynamic,
}

impl GroupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Static => "STATIC",
            Self::Dynamic => "DYNAMIC",
        }
    }

    fn parse(value: &str) -> Result<Self> {
        match value {
            "STATIC" => Ok(Self::Static),
            "DYNAMIC" => Ok(Self::Dynamic),
            other => Err(Error::internal(anyhow::anyhow!("unknown group kind {other:?} in the database"))),
        }
    }
}

/// One condition of a dynamic group, as stored (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCondition {
    /// `attribute` (operator attributes), `reported_attribute` or
    /// `installed`.
    pub on: String,
    pub name: String,
    /// EQUALS, IN, EXISTS, PREFIX.
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A dynamic group's filter: every condition must hold.
#[derive(Clone, Debug, Default)]
pub struct GroupFilter {
    /// Each on the operator's attributes or on the reported ones.
    pub attributes: Vec<(AttributeSource, ValueFilter)>,
    pub installed: Vec<ValueFilter>,
}

fn op_name(op: FilterOp) -> &'static str {
    match op {
        FilterOp::Equals => "EQUALS",
        FilterOp::In => "IN",
        FilterOp::Exists => "EXISTS",
        FilterOp::Prefix => "PREFIX",
    }
}

fn op_parse(name: &str) -> Result<FilterOp> {
    Ok(match name {
        "EQUALS" => FilterOp::Equals,
        "IN" => FilterOp::In,
        "EXISTS" => FilterOp::Exists,
        "PREFIX" => FilterOp::Prefix,
        other => return Err(Error::internal(anyhow::anyhow!("unknown filter op {other:?}"))),
    })
}

impl GroupFilter {
    fn validate(&self) -> Result<()> {
        if self.attributes.len() + self.installed.len() > MAX_FILTERS {
            return Err(Error::invalid("filter", format!("at most {MAX_FILTERS} conditions")));
        }
        let attributes: Vec<&ValueFilter> = self.attributes.iter().map(|(_, f)| f).collect();
        let installed: Vec<&ValueFilter> = self.installed.iter().collect();
        for (field, list) in [("filter.attributes", attributes), ("filter.installedVersions", installed)] {
            for (i, f) in list.into_iter().enumerate() {
                let field = format!("{field}[{i}]");
                if f.name.trim().is_empty() || f.name.len() > 64 {
                    return Err(Error::invalid(field, "a name of 1 to 64 characters"));
                }
                match f.op {
                    FilterOp::Equals | FilterOp::Prefix if f.value.is_none() => {
                        return Err(Error::invalid(field, "EQUALS and PREFIX need a value"));
                    }
                    FilterOp::In if f.values.is_empty() || f.values.len() > 1000 => {
                        return Err(Error::invalid(field, "IN needs 1 to 1000 values"));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn to_stored(&self) -> String {
        let conditions: Vec<StoredCondition> = self
            .attributes
            .iter()
            .map(|(source, f)| match source {
                AttributeSource::Operator => ("attribute", f),
                AttributeSource::Reported => ("reported_attribute", f),
            })
            .chain(self.installed.iter().map(|f| ("installed", f)))
            .map(|(on, f)| StoredCondition {
                on: on.to_owned(),
                name: f.name.clone(),
                op: op_name(f.op).to_owned(),
                value: f.value.clone(),
                values: f.values.clone(),
            })
            .collect();
        json!(conditions).to_string()
    }

    fn from_stored(raw: &str) -> Result<Self> {
        let conditions: Vec<StoredCondition> =
            serde_json::from_str(raw).map_err(|e| Error::internal(anyhow::anyhow!("stored group filter: {e}")))?;
        let mut filter = Self::default();
        for c in conditions {
            let f = ValueFilter { name: c.name, op: op_parse(&c.op)?, value: c.value, values: c.values };
            match c.on.as_str() {
                "attribute" => filter.attributes.push((AttributeSource::Operator, f)),
                "reported_attribute" => filter.attributes.push((AttributeSource::Reported, f)),
                _ => filter.installed.push(f),
            }
        }
        Ok(filter)
    }
}

#[derive(Clone, Debug)]
pub struct Group {
    pub row: device_group::Model,
    pub kind: GroupKind,
    pub model: DeviceModel,
    pub filter: Option<GroupFilter>,
}

#[derive(Clone, Debug)]
pub struct NewGroup {
    pub name: String,
    pub description: Option<String>,
    /// A device model id or name.
    pub model: String,
    pub kind: GroupKind,
    /// Dynamic groups only; none means every device of the model.
    pub filter: Option<GroupFilter>,
}

#[derive(Clone, Debug)]
pub struct GroupChanges {
    pub id: Uuid,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Dynamic groups only.
    pub filter: Option<GroupFilter>,
}

fn validate_description(description: Option<String>) -> Result<Option<String>> {
    let Some(d) = description else { return Ok(None) };
    if d.chars().count() > 4096 {
        return Err(Error::invalid("description", "at most 4096 characters"));
    }
    Ok(Some(d.trim().to_owned()))
}

async fn name_taken(conn: &impl ConnectionTrait, name: &str, except: Option<Uuid>) -> Result<bool> {
    let mut query = device_group::Entity::find().filter(device_group::Column::Name.eq(name));
    if let Some(except) = except {
        query = query.filter(device_group::Column::Id.ne(except));
    }
    Ok(query.count(conn).await? > 0)
}

pub async fn create(app: &App, ctx: &Ctx, input: NewGroup) -> Result<Group> {
    ctx.require(Permission::GroupWrite)?;
    let name = crate::service::display_name(&input.name)?;
    let description = validate_description(input.description)?.unwrap_or_default();
    let filter = match (input.kind, input.filter) {
        (GroupKind::Static, Some(_)) => {
            return Err(Error::invalid(
                "filter",
                "a STATIC group lists its members; only DYNAMIC groups have a filter",
            ));
        }
        (GroupKind::Static, None) => None,
        (GroupKind::Dynamic, filter) => {
            let filter = filter.unwrap_or_default();
            filter.validate()?;
            Some(filter)
        }
    };
    let (_, created_by) = ctx.actor.audit_identity();
    let mut tx = WriteTx::begin(app).await?;
    let model = device_model::resolve(tx.conn(), "model", std::slice::from_ref(&input.model))
        .await
        .map_err(|_| Error::invalid("model", format!("no device model {}", input.model)))?
        .remove(0);
    if name_taken(tx.conn(), &name, None).await? {
        return Err(Error::Conflict(format!("device group {name:?} already exists")));
    }
    let now = Utc::now();
    let row = device_group::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name),
        description: Set(description),
        model_id: Set(model.id),
        kind: Set(input.kind.as_str().to_owned()),
        filter: Set(filter.as_ref().map(GroupFilter::to_stored)),
        auto_deployment_id: Set(None),
        created_by: Set(created_by),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(tx.conn())
    .await?;
    tx.audit(
        ctx,
        "device_group.create",
        ResourceKind::DeviceGroup,
        &row.id.to_string(),
        json!({ "name": row.name, "model": model.name, "kind": row.kind, "filter": row.filter }),
    )
    .await?;
    tx.commit().await?;
    Ok(Group { kind: input.kind, model, filter, row })
}

pub async fn update(app: &App, ctx: &Ctx, input: GroupChanges) -> Result<Group> {
    ctx.require(Permission::GroupWrite)?;
    let name = input.name.as_deref().map(crate::service::display_name).transpose()?;
    let description = validate_description(input.description)?;
    let mut tx = WriteTx::begin(app).await?;
    let current = find(tx.conn(), input.id).await?;
    let kind = GroupKind::parse(&current.kind)?;
    let mut row: device_group::ActiveModel = current.clone().into();
    let mut changed = Vec::new();
    if let Some(name) = name
        && name != current.name
    {
        if name_taken(tx.conn(), &name, Some(current.id)).await? {
            return Err(Error::Conflict(format!("device group {name:?} already exists")));
        }
        row.name = Set(name);
        changed.push("name");
    }
    if let Some(description) = description
        && description != current.description
    {
        row.description = Set(description);
        changed.push("description");
    }
    if let Some(filter) = input.filter {
        if kind == GroupKind::Static {
            return Err(Error::invalid("filter", "a STATIC group has no filter"));
        }
        filter.validate()?;
        row.filter = Set(Some(filter.to_stored()));
        changed.push("filter");
    }
    if changed.is_empty() {
        drop(tx);
        return get_unchecked(&app.db, input.id).await;
    }
    row.updated_at = Set(Utc::now());
    let row = row.update(tx.conn()).await?;
    tx.audit(
        ctx,
        "device_group.update",
        ResourceKind::DeviceGroup,
        &row.id.to_string(),
        json!({ "changed": changed, "name": row.name, "filter": row.filter }),
    )
    .await?;
    tx.commit().await?;
    get_unchecked(&app.db, input.id).await
}

pub async fn delete(app: &App, ctx: &Ctx, id: Uuid) -> Result<Group> {
    ctx.require(Permission::GroupWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let group = attach(tx.conn(), vec![find(tx.conn(), id).await?]).await?.remove(0);
    device_group::Entity::delete_by_id(id).exec(tx.conn()).await?;
    tx.audit(ctx, "device_group.delete", ResourceKind::DeviceGroup, &id.to_string(), json!({ "name": group.row.name }))
        .await?;
    tx.commit().await?;
    Ok(group)
}

/// Add devices (ids or endpoint ids) to a static group; each must be of the
/// group's model and not decommissioned. Already members stay. All or none.
pub async fn add_members(app: &App, ctx: &Ctx, group_id: Uuid, refs: Vec<String>) -> Result<Group> {
    change_members(app, ctx, group_id, refs, true).await
}

/// Remove devices from a static group (non-members are ignored).
pub async fn remove_members(app: &App, ctx: &Ctx, group_id: Uuid, refs: Vec<String>) -> Result<Group> {
    change_members(app, ctx, group_id, refs, false).await
}

async fn change_members(app: &App, ctx: &Ctx, group_id: Uuid, refs: Vec<String>, add: bool) -> Result<Group> {
    ctx.require(Permission::GroupWrite)?;
    if refs.is_empty() || refs.len() > MAX_MEMBERS_PER_CALL {
        return Err(Error::invalid("devices", format!("1 to {MAX_MEMBERS_PER_CALL} devices")));
    }
    let mut tx = WriteTx::begin(app).await?;
    let group = attach(tx.conn(), vec![find(tx.conn(), group_id).await?]).await?.remove(0);
    if group.kind != GroupKind::Static {
        return Err(Error::InvalidState(format!(
            "group {:?} is DYNAMIC: its members are the devices that match its filter",
            group.row.name
        )));
    }
    // Resolve every reference in a fixed number of queries.
    let ids: Vec<Uuid> = refs.iter().filter_map(|r| r.parse().ok()).collect();
    let mut by_ref: HashMap<String, device::Model> = HashMap::new();
    for chunk in ids.chunks(1000) {
        for d in device::Entity::find().filter(device::Column::Id.is_in(chunk.iter().copied())).all(tx.conn()).await? {
            by_ref.insert(d.id.to_string(), d);
        }
    }
    let endpoints: Vec<&str> = refs.iter().filter(|r| !by_ref.contains_key(*r)).map(String::as_str).collect();
    for chunk in endpoints.chunks(1000) {
        for d in device::Entity::find()
            .filter(device::Column::EndpointId.is_in(chunk.iter().copied()))
            .all(tx.conn())
            .await?
        {
            by_ref.insert(d.endpoint_id.clone(), d);
        }
    }
    let mut errors = Vec::new();
    let mut devices: BTreeMap<Uuid, String> = BTreeMap::new();
    for (i, reference) in refs.iter().enumerate() {
        let error = |message: String| RowError {
            row: i,
            key: reference.clone(),
            field: "devices".into(),
            message,
            duplicate: false,
        };
        let Some(d) = by_ref.get(reference.as_str()) else {
            errors.push(error(format!("no device {reference}")));
            continue;
        };
        if add && d.model_id != group.model.id {
            errors.push(error(format!("device {} is not a {} (the group's model)", d.endpoint_id, group.model.name)));
            continue;
        }
        if add && d.status == DeviceStatus::Decommissioned.as_str() {
            errors.push(error(format!("device {} is DECOMMISSIONED", d.endpoint_id)));
            continue;
        }
        devices.insert(d.id, d.endpoint_id.clone());
    }
    if !errors.is_empty() {
        return Err(if let [one] = errors.as_slice() {
            Error::invalid("devices", one.message.clone())
        } else {
            Error::Rows { rows: errors }
        });
    }
    let ids: Vec<Uuid> = devices.keys().copied().collect();
    let mut existing: Vec<Uuid> = Vec::new();
    for chunk in ids.chunks(1000) {
        let found: Vec<Uuid> = device_group_member::Entity::find()
            .select_only()
            .column(device_group_member::Column::DeviceId)
            .filter(device_group_member::Column::GroupId.eq(group_id))
            .filter(device_group_member::Column::DeviceId.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(tx.conn())
            .await?;
        existing.extend(found);
    }
    let now = Utc::now();
    let changed: Vec<Uuid> = if add {
        let new: Vec<Uuid> = ids.iter().copied().filter(|id| !existing.contains(id)).collect();
        for chunk in new.chunks(1000) {
            device_group_member::Entity::insert_many(chunk.iter().map(|id| device_group_member::ActiveModel {
                group_id: Set(group_id),
                device_id: Set(*id),
                added_at: Set(now),
            }))
            .exec(tx.conn())
            .await?;
        }
        new
    } else {
        for chunk in existing.chunks(1000) {
            device_group_member::Entity::delete_many()
                .filter(device_group_member::Column::GroupId.eq(group_id))
                .filter(device_group_member::Column::DeviceId.is_in(chunk.iter().copied()))
                .exec(tx.conn())
                .await?;
        }
        existing
    };
    if !changed.is_empty() {
        let action = if add { "device_group.add_members" } else { "device_group.remove_members" };
        let endpoint_ids: Vec<&String> = changed.iter().filter_map(|id| devices.get(id)).collect();
        tx.audit(
            ctx,
            action,
            ResourceKind::DeviceGroup,
            &group_id.to_string(),
            json!({ "count": endpoint_ids.len(), "endpoint_ids": endpoint_ids }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(group)
}

// ---------------------------------------------------------------------------
// Reading.

async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<device_group::Model> {
    device_group::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::DeviceGroup, id.to_string()))
}

async fn attach(conn: &impl ConnectionTrait, rows: Vec<device_group::Model>) -> Result<Vec<Group>> {
    let model_ids: Vec<Uuid> = rows.iter().map(|g| g.model_id).collect();
    let models: HashMap<Uuid, DeviceModel> = if model_ids.is_empty() {
        HashMap::new()
    } else {
        entity::device_model::Entity::find()
            .filter(entity::device_model::Column::Id.is_in(model_ids))
            .all(conn)
            .await?
            .into_iter()
            .map(|m| (m.id, m))
            .collect()
    };
    rows.into_iter()
        .map(|row| {
            Ok(Group {
                kind: GroupKind::parse(&row.kind)?,
                model: models
                    .get(&row.model_id)
                    .cloned()
                    .ok_or_else(|| Error::internal(anyhow::anyhow!("group {} has no model", row.id)))?,
                filter: row.filter.as_deref().map(GroupFilter::from_stored).transpose()?,
                row,
            })
        })
        .collect()
}

async fn get_unchecked(conn: &impl ConnectionTrait, id: Uuid) -> Result<Group> {
    Ok(attach(conn, vec![find(conn, id).await?]).await?.remove(0))
}

pub async fn get(app: &App, ctx: &Ctx, id: Uuid) -> Result<Group> {
    ctx.require(Permission::DeviceRead)?;
    get_unchecked(&app.db, id).await
}

const CURSOR_KIND: &str = "device_group";

/// In name order.
pub async fn list(
    app: &App,
    ctx: &Ctx,
    model: Option<Uuid>,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<Group>> {
    ctx.require(Permission::DeviceRead)?;
    let page = PageRequest::parse_string(CURSOR_KIND, first, after)?;
    let mut query = device_group::Entity::find();
    if let Some(model) = model {
        query = query.filter(device_group::Column::ModelId.eq(model));
    }
    let total_count = query.clone().count(&app.db).await?;
    if let Some(after) = &page.after {
        query = query.filter(device_group::Column::Name.gt(after.as_str()));
    }
    let mut rows = query.order_by_asc(device_group::Column::Name).limit(page.first + 1).all(&app.db).await?;
    let has_next_page = rows.len() as u64 > page.first;
    rows.truncate(usize::try_from(page.first).unwrap_or(usize::MAX));
    let items = attach(&app.db, rows).await?;
    Ok(Page {
        items: items.into_iter().map(|g| (cursor(CURSOR_KIND, &g.row.name), g)).collect(),
        has_next_page,
        total_count,
    })
}

/// The ids of a group's devices, as a subquery (never loaded).
pub(crate) fn members_query(group: &Group) -> Result<SelectStatement> {
    let mut query = device::Entity::find()
        .select_only()
        .column(device::Column::Id)
        .filter(device::Column::ModelId.eq(group.model.id))
        .filter(device::Column::Status.ne(DeviceStatus::Decommissioned.as_str()));
    match group.kind {
        GroupKind::Static => {
            let listed = Query::select()
                .column(device_group_member::Column::DeviceId)
                .from(device_group_member::Entity)
                .and_where(device_group_member::Column::GroupId.eq(group.row.id))
                .to_owned();
            query = query.filter(device::Column::Id.in_subquery(listed));
        }
        GroupKind::Dynamic => {
            let filter = group.filter.clone().unwrap_or_default();
            let condition = devices::condition(&DeviceFilter {
                attributes: filter
                    .attributes
                    .iter()
                    .filter(|(s, _)| *s == AttributeSource::Operator)
                    .map(|(_, f)| f.clone())
                    .collect(),
                reported_attributes: filter
                    .attributes
                    .iter()
                    .filter(|(s, _)| *s == AttributeSource::Reported)
                    .map(|(_, f)| f.clone())
                    .collect(),
                installed: filter.installed,
                ..DeviceFilter::default()
            })?;
            query = query.filter(condition);
        }
    }
    Ok(query.into_query())
}

/// How many devices the group holds now.
pub async fn device_count(app: &App, ctx: &Ctx, group: &Group) -> Result<u64> {
    ctx.require(Permission::DeviceRead)?;
    let within = members_query(group)?;
    Ok(device::Entity::find().filter(device::Column::Id.in_subquery(within)).count(&app.db).await?)
}

/// The group's devices, a page at a time.
pub async fn devices(
    app: &App,
    ctx: &Ctx,
    group: &Group,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<Device>> {
    ctx.require(Permission::DeviceRead)?;
    let filter = DeviceFilter { within: Some(members_query(group)?), ..DeviceFilter::default() };
    devices::list_unchecked(&app.db, &filter, first, after).await
}

/// The `within` subquery of a `devices(filter: {group})`.
pub(crate) async fn members_of(conn: &impl ConnectionTrait, id: Uuid) -> Result<SelectStatement> {
    members_query(&get_unchecked(conn, id).await?)
}

/// `devices(filter)`: newest first, a fixed number of queries per page.
/// Here rather than in `service::device` because `filter.group` is a
/// group's members, which this module knows (and devices do not).
pub async fn list_devices(
    app: &App,
    ctx: &Ctx,
    filter: &DeviceFilter,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<Device>> {
    ctx.require(Permission::DeviceRead)?;
    match filter.group {
        Some(group) => {
            let within = members_of(&app.db, group).await?;
            let filter = DeviceFilter { within: Some(within), group: None, ..filter.clone() };
            devices::list_unchecked(&app.db, &filter, first, after).await
        }
        None => devices::list_unchecked(&app.db, filter, first, after).await,
    }
}

/// A device a deployment or a command is aimed at.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: Uuid,
    pub endpoint_id: String,
    pub model_id: Uuid,
}

/// How many references are resolved per statement.
const RESOLVE_CHUNK: usize = 1_000;

/// The devices that a group (its members now) or a list of device ids or
/// endpoint ids names, in use (REGISTERED or ACTIVE); exactly one of the
/// two. Returns the group and the targets, each once. Unknown references
/// and devices out of use are errors, each named (`extensions.rows`).
pub(crate) async fn resolve_targets(
    conn: &impl ConnectionTrait,
    group: Option<Uuid>,
    devices: &[String],
) -> Result<(Option<Uuid>, Vec<Target>)> {
    if group.is_some() != devices.is_empty() {
        return Err(Error::invalid("group", "name a group or a list of devices (one of the two)"));
    }
    let in_use = [DeviceStatus::Registered.as_str(), DeviceStatus::Active.as_str()];
    if let Some(group) = group {
        let within = members_of(conn, group).await.map_err(|e| match e {
            Error::NotFound { .. } => Error::invalid("group", format!("no device group {group}")),
            other => other,
        })?;
        let rows: Vec<(Uuid, String, Uuid)> = device::Entity::find()
            .select_only()
            .columns([device::Column::Id, device::Column::EndpointId, device::Column::ModelId])
            .filter(device::Column::Id.in_subquery(within))
            .filter(device::Column::Status.is_in(in_use))
            .order_by_asc(device::Column::Id)
            .into_tuple()
            .all(conn)
            .await?;
        let targets =
            rows.into_iter().map(|(id, endpoint_id, model_id)| Target { id, endpoint_id, model_id }).collect();
        return Ok((Some(group), targets));
    }
    let mut targets = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for chunk in devices.chunks(RESOLVE_CHUNK) {
        let ids: Vec<Uuid> = chunk.iter().filter_map(|r| r.parse().ok()).collect();
        let found: Vec<device::Model> = device::Entity::find()
            .filter(
                Condition::any()
                    .add(device::Column::Id.is_in(ids))
                    .add(device::Column::EndpointId.is_in(chunk.iter().map(String::as_str))),
            )
            .all(conn)
            .await?;
        let by_ref: HashMap<String, &device::Model> =
            found.iter().flat_map(|d| [(d.id.to_string(), d), (d.endpoint_id.clone(), d)]).collect();
        for reference in chunk {
            let row = errors.len() + targets.len();
            let error = |message: String| RowError {
                row,
                key: reference.clone(),
                field: "devices".into(),
                message,
                duplicate: false,
            };
            match by_ref.get(reference.as_str()) {
                None => errors.push(error(format!("no device {reference}"))),
                Some(d) if !in_use.contains(&d.status.as_str()) => {
                    errors.push(error(format!("device {} is {}", d.endpoint_id, d.status)));
                }
                Some(d) => {
                    if seen.insert(d.id) {
                        targets.push(Target { id: d.id, endpoint_id: d.endpoint_id.clone(), model_id: d.model_id });
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(if let [one] = errors.as_slice() {
            Error::invalid("devices", one.message.clone())
        } else {
            Error::Rows { rows: errors }
        });
    }
    Ok((None, targets))
}
