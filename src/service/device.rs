//! Devices: registration (one, or up to 10,000 in one all-or-nothing
//! call), credentials, decommissioning, inventory, and the fleet queries.
//!
//! Rules:
//! - A device secret is shown once, at registration or rotation. It reads
//!   `otd_<device id, 32 hex>_<43 base64url characters>`; only its SHA-256
//!   is stored, compared in constant time.
//! - Attributes and installed versions are rows (`device_attribute`,
//!   `device_reported_attribute`, `device_installed`), so filters are
//!   indexed SQL on both backends.
//! - Operator attributes (`device_attribute`: registration, CSV import)
//!   and reported attributes (`device_reported_attribute`: the device's
//!   inventory and enrollment) are kept apart: nothing a device sends
//!   writes an operator attribute, so a device cannot move itself into a
//!   group defined on one.
//! - Gateways act one level deep: a gateway may not itself have a
//!   gateway, a device that is a gateway may not be given one, and a
//!   device acted for through its gateway acts for nobody.
//! - `last_seen_at` is written at most once a minute per device: the
//!   update is conditional on the stored value being older.
//!
//! Why one file of this size: every section (credentials, registration,
//! lifecycle, inventory, reads and fleet filters) writes or reads the same
//! four tables under the rules above, and the rules cross the sections
//! (registration and inventory both write attributes and installed
//! versions; the gateway rule binds `set_gateway` to registration).
//! Split, each part would reach into the others' private helpers. The
//! device-facing API is already apart (`service/device_api`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use entity::{device, device_attribute, device_installed, device_reported_attribute};
use rand::RngCore;
use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Actor, Ctx, DeviceActor, Permission};
use crate::error::{Error, ResourceKind, Result, RowError};
use crate::service::WriteTx;
use crate::service::device_model::{self, DeviceModel};
use crate::service::pagination::{Page, PageRequest, cursor};

/// Most devices one `registerDevices` call takes.
pub const MAX_BATCH: usize = 10_000;
pub(crate) const MAX_ATTRIBUTES: usize = 64;
/// Firmware plus up to 8 applications (TCUP's agent).
const MAX_COMPONENTS: usize = 9;
const SECRET_PREFIX: &str = "otd_";
/// How stale `last_seen_at` may get before a request writes it again.
const LAST_SEEN_GRANULARITY: TimeDelta = TimeDelta::seconds(60);
/// Rows per INSERT: under SQLite's 32,766 bound parameters.
const INSERT_CHUNK: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeviceStatus {
    /// Enrolled itself; waits for an operator's approval.
    Pending,
    /// Registered by an operator; not heard from yet.
    Registered,
    /// Has called in.
    Active,
    Decommissioned,
    /// Its enrollment was refused.
    Rejected,
}

impl DeviceStatus {
    pub const ALL: [DeviceStatus; 5] =
        [Self::Pending, Self::Registered, Self::Active, Self::Decommissioned, Self::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Registered => "REGISTERED",
            Self::Active => "ACTIVE",
            Self::Decommissioned => "DECOMMISSIONED",
            Self::Rejected => "REJECTED",
        }
    }

    pub fn parse(value: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown device status {value:?} in the database")))
    }
}

/// An installed component version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub version: String,
    pub reported_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct Device {
    pub row: device::Model,
    pub status: DeviceStatus,
    pub model: DeviceModel,
    /// Set by operators (registration, CSV import); dynamic groups read
    /// these unless a condition names the reported ones.
    pub attributes: BTreeMap<String, String>,
    /// What the device reported about itself (inventory, enrollment).
    pub reported_attributes: BTreeMap<String, String>,
    pub installed: BTreeMap<String, Installed>,
}

#[derive(Clone, Debug, Default)]
pub struct NewDevice {
    pub endpoint_id: String,
    pub serial: Option<String>,
    /// A device model id or name.
    pub model: String,
    /// Operator attributes.
    pub attributes: Vec<(String, String)>,
    /// Attributes the device gave about itself (enrollment).
    pub reported_attributes: Vec<(String, String)>,
    /// The gateway's device id or endpoint id (registered earlier, or
    /// earlier in the same batch).
    pub gateway: Option<String>,
}

// ---------------------------------------------------------------------------
// Secrets.

/// A fresh secret for device `id` and the hash that is stored.
fn new_secret(id: Uuid) -> (String, String) {
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    let secret = format!("{SECRET_PREFIX}{}_{}", id.simple(), URL_SAFE_NO_PAD.encode(random));
    let hash = hash_secret(&secret);
    (secret, hash)
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether a bearer token looks like a device secret (as opposed to an
/// operator's JWT).
pub fn is_device_secret(token: &str) -> bool {
    token.starts_with(SECRET_PREFIX)
}

/// Verify a device secret: the device it names, with a matching hash, not
/// decommissioned or rejected. Every failure is the same UNAUTHENTICATED.
pub async fn authenticate(app: &App, secret: &str, request_id: Option<String>) -> Result<Ctx> {
    let unauthenticated = || Error::Unauthenticated("invalid device credential".into());
    let id = secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(id, _)| Uuid::try_parse(id).ok())
        .ok_or_else(unauthenticated)?;
    let row = match app.device_cache.device(id) {
        Some(row) => row,
        None => {
            let seq = app.device_cache.seq();
            let row =
                std::sync::Arc::new(device::Entity::find_by_id(id).one(&app.db).await?.ok_or_else(unauthenticated)?);
            app.device_cache.remember(row.clone(), seq);
            row
        }
    };
    let presented = hash_secret(secret);
    if !bool::from(presented.as_bytes().ct_eq(row.credential_hash.as_bytes())) {
        return Err(unauthenticated());
    }
    let status = DeviceStatus::parse(&row.status)?;
    if matches!(status, DeviceStatus::Decommissioned | DeviceStatus::Rejected) {
        return Err(Error::Unauthenticated(format!("device {} is {}", row.endpoint_id, status.as_str())));
    }
    let actor = DeviceActor {
        id: row.id,
        endpoint_id: row.endpoint_id.clone(),
        model_id: row.model_id,
        approved: status != DeviceStatus::Pending,
        via_gateway: None,
    };
    let ctx = Ctx::new(Actor::Device(actor), request_id);
    touch(app, &ctx, &row, status).await;
    Ok(ctx)
}

/// Record that the device called in: `last_seen_at` at most once a minute,
/// and REGISTERED → ACTIVE on its first call (audited). Failures are
/// logged, never the caller's problem.
async fn touch(app: &App, ctx: &Ctx, row: &device::Model, status: DeviceStatus) {
    if app.device_cache.record_seen(row.id, status == DeviceStatus::Registered, row.last_seen_at) {
        return;
    }
    let now = Utc::now();
    if row.last_seen_at.is_some_and(|seen| now - seen < LAST_SEEN_GRANULARITY) && status != DeviceStatus::Registered {
        return;
    }
    // What this process now knows of the row (the write below makes it true).
    let seq = app.device_cache.seq();
    let mut seen = row.clone();
    seen.last_seen_at = Some(now);
    if status == DeviceStatus::Registered {
        seen.status = DeviceStatus::Active.as_str().to_owned();
    }
    let result: Result<()> = async {
        if status == DeviceStatus::Registered {
            let mut tx = WriteTx::begin(app).await?;
            let updated = device::Entity::update_many()
                .col_expr(device::Column::Status, Expr::value(DeviceStatus::Active.as_str()))
                .col_expr(device::Column::LastSeenAt, Expr::value(now))
                .filter(device::Column::Id.eq(row.id))
                .filter(device::Column::Status.eq(DeviceStatus::Registered.as_str()))
                .exec(tx.conn())
                .await?;
            if updated.rows_affected == 1 {
                tx.audit(
                    ctx,
                    "device.activate",
                    ResourceKind::Device,
                    &row.id.to_string(),
                    json!({ "endpoint_id": row.endpoint_id }),
                )
                .await?;
            }
            return tx.commit().await;
        }
        // Conditional: of many concurrent requests (or replicas), one writes.
        device::Entity::update_many()
            .col_expr(device::Column::LastSeenAt, Expr::value(now))
            .filter(device::Column::Id.eq(row.id))
            .filter(
                Condition::any()
                    .add(device::Column::LastSeenAt.is_null())
                    .add(device::Column::LastSeenAt.lt(now - LAST_SEEN_GRANULARITY)),
            )
            .exec(&app.db)
            .await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => app.device_cache.remember(std::sync::Arc::new(seen), seq),
        Err(err) => {
            app.device_cache.forget(row.id);
            tracing::warn!(device = %row.id, error = %err, "could not record that the device was seen");
        }
    }
}

/// Write the devices seen since the last flush: one UPDATE per 1,000 of
/// them, and REGISTERED → ACTIVE for first calls (one audit event).
/// Returns the devices whose activation was put off because another
/// transaction held their row: the cache queues them for the next flush.
pub(crate) async fn flush_seen(app: &App, seen: HashMap<Uuid, bool>) -> Result<Vec<Uuid>> {
    let now = Utc::now();
    let ids: Vec<Uuid> = seen.keys().copied().collect();
    for chunk in ids.chunks(INSERT_CHUNK) {
        device::Entity::update_many()
            .col_expr(device::Column::LastSeenAt, Expr::value(now))
            .filter(device::Column::Id.is_in(chunk.iter().copied()))
            .exec(&app.db)
            .await?;
    }
    let activate: Vec<Uuid> = seen.into_iter().filter(|(_, a)| *a).map(|(id, _)| id).collect();
    if activate.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = WriteTx::begin(app).await?;
    // Operator writes take device rows and the audit chain in both orders
    // (`set_gateway` the chain first, `rotate_credential` the row first),
    // so this background pass never waits for a row while it holds the
    // chain: it takes the chain, then only the rows nobody holds (SKIP
    // LOCKED on PostgreSQL; SQLite serializes writers). A device skipped
    // that way is handed back and tried again at the next flush.
    crate::service::audit::serialize_writes(tx.conn()).await?;
    let postgres = tx.conn().get_database_backend() == sea_orm::DbBackend::Postgres;
    let mut activated: Vec<(Uuid, String)> = Vec::new();
    let mut put_off: Vec<Uuid> = Vec::new();
    for chunk in activate.chunks(INSERT_CHUNK) {
        let mut query = device::Entity::find()
            .select_only()
            .columns([device::Column::Id, device::Column::EndpointId])
            .filter(device::Column::Id.is_in(chunk.iter().copied()))
            .filter(device::Column::Status.eq(DeviceStatus::Registered.as_str()));
        if postgres {
            query = query
                .lock_with_behavior(sea_orm::sea_query::LockType::Update, sea_orm::sea_query::LockBehavior::SkipLocked);
        }
        let registered: Vec<(Uuid, String)> = query.into_tuple().all(tx.conn()).await?;
        if postgres && registered.len() < chunk.len() {
            // Missing: no longer REGISTERED, or skipped as locked. A plain
            // read (it waits for no lock) tells them apart.
            let found: HashSet<Uuid> = registered.iter().map(|(id, _)| *id).collect();
            let missing: Vec<Uuid> = chunk.iter().copied().filter(|id| !found.contains(id)).collect();
            let skipped: Vec<Uuid> = device::Entity::find()
                .select_only()
                .column(device::Column::Id)
                .filter(device::Column::Id.is_in(missing))
                .filter(device::Column::Status.eq(DeviceStatus::Registered.as_str()))
                .into_tuple()
                .all(tx.conn())
                .await?;
            put_off.extend(skipped);
        }
        if registered.is_empty() {
            continue;
        }
        device::Entity::update_many()
            .col_expr(device::Column::Status, Expr::value(DeviceStatus::Active.as_str()))
            .filter(device::Column::Id.is_in(registered.iter().map(|(id, _)| *id)))
            .filter(device::Column::Status.eq(DeviceStatus::Registered.as_str()))
            .exec(tx.conn())
            .await?;
        for (id, endpoint) in registered {
            activated.push((id, endpoint));
        }
    }
    if !activated.is_empty() {
        let endpoint_ids: Vec<&String> = activated.iter().map(|(_, e)| e).collect();
        tx.audit(
            &Ctx::system("device-api"),
            "device.activate",
            ResourceKind::Device,
            "",
            json!({ "count": activated.len(), "endpoint_ids": endpoint_ids }),
        )
        .await?;
    }
    tx.commit().await?;
    // No event: another process that still thinks a device REGISTERED only
    // asks to activate it again, which finds nothing to do.
    for (id, _) in &activated {
        app.device_cache.mark_active(*id, now);
    }
    Ok(put_off)
}

/// A gateway acting for one of its sub-devices (named by endpoint id): the
/// sub-device's context, or NOT_FOUND when it is not this gateway's (so a
/// gateway learns nothing of other devices).
pub async fn act_for(app: &App, gateway: &Ctx, endpoint_id: &str) -> Result<Ctx> {
    let acting = gateway.require_device()?;
    let not_found = || Error::not_found(ResourceKind::Device, endpoint_id);
    // One level deep: a sub-device reached through its gateway (X-Device-Id)
    // acts for nobody else (EnOS `assetId`), whatever the rows say.
    if acting.via_gateway.is_some() {
        return Err(not_found());
    }
    let row = device::Entity::find()
        .filter(device::Column::EndpointId.eq(endpoint_id))
        .filter(device::Column::GatewayId.eq(acting.id))
        .one(&app.db)
        .await?
        .ok_or_else(not_found)?;
    let status = DeviceStatus::parse(&row.status)?;
    if matches!(status, DeviceStatus::Decommissioned | DeviceStatus::Rejected) {
        return Err(not_found());
    }
    let actor = DeviceActor {
        id: row.id,
        endpoint_id: row.endpoint_id.clone(),
        model_id: row.model_id,
        approved: status != DeviceStatus::Pending,
        via_gateway: Some(acting.id),
    };
    let ctx = Ctx::new(Actor::Device(actor), gateway.request_id.clone());
    touch(app, &ctx, &row, status).await;
    Ok(ctx)
}

/// Make `gateway` (or none) the gateway of `id`.
pub async fn set_gateway(app: &App, ctx: &Ctx, id: Uuid, gateway: Option<String>) -> Result<Device> {
    ctx.require(Permission::DeviceWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    // Gateway changes run one at a time (PostgreSQL; SQLite's write lock
    // does it there), so two concurrent ones cannot build a chain that
    // each alone would not.
    crate::service::audit::serialize_writes(tx.conn()).await?;
    let current = find(tx.conn(), id).await?;
    let gateway = match gateway.as_deref().map(str::trim).filter(|g| !g.is_empty()) {
        None => None,
        Some(reference) => {
            let g = find_by_ref(tx.conn(), reference)
                .await?
                .ok_or_else(|| Error::invalid("gateway", format!("no device {reference}")))?;
            if g.id == id {
                return Err(Error::invalid("gateway", "a device cannot be its own gateway"));
            }
            if g.gateway_id == Some(id) {
                return Err(Error::invalid(
                    "gateway",
                    format!("{} is a sub-device of {}: that would be a cycle", g.endpoint_id, current.endpoint_id),
                ));
            }
            if let Some(parent) = g.gateway_id {
                let parent = find(tx.conn(), parent).await?;
                return Err(Error::invalid(
                    "gateway",
                    format!(
                        "{} is itself a sub-device of {}; gateways act one level deep, so a gateway has no gateway",
                        g.endpoint_id, parent.endpoint_id
                    ),
                ));
            }
            let subs = sub_device_count(tx.conn(), id).await?;
            if subs > 0 {
                return Err(Error::invalid(
                    "gateway",
                    format!(
                        "{} is the gateway of {subs} device(s); gateways act one level deep, so a gateway has no gateway",
                        current.endpoint_id
                    ),
                ));
            }
            if matches!(DeviceStatus::parse(&g.status)?, DeviceStatus::Decommissioned | DeviceStatus::Rejected) {
                return Err(Error::invalid("gateway", format!("device {} is {}", g.endpoint_id, g.status)));
            }
            Some(g)
        }
    };
    device::Entity::update_many()
        .col_expr(device::Column::GatewayId, Expr::value(gateway.as_ref().map(|g| g.id)))
        .col_expr(device::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(device::Column::Id.eq(id))
        .exec(tx.conn())
        .await?;
    tx.audit(
        ctx,
        "device.set_gateway",
        ResourceKind::Device,
        &id.to_string(),
        json!({ "endpoint_id": current.endpoint_id, "gateway": gateway.as_ref().map(|g| &g.endpoint_id) }),
    )
    .await?;
    tx.commit().await?;
    get_unchecked(&app.db, id).await
}

/// How many devices name `id` as their gateway.
async fn sub_device_count(conn: &impl ConnectionTrait, id: Uuid) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(device::Entity::find().filter(device::Column::GatewayId.eq(id)).count(conn).await?)
}

// ---------------------------------------------------------------------------
// Validation.

fn validate_endpoint_id(value: &str) -> std::result::Result<String, String> {
    let value = value.trim();
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok { Ok(value.to_owned()) } else { Err("1 to 128 characters: letters, digits, '-', '_', '.' or ':'".into()) }
}

fn validate_key(value: &str) -> std::result::Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(format!("{value:?}: 1 to 64 characters: letters, digits, '-', '_' or '.'")) }
}

fn validate_value(value: &str, max: usize) -> std::result::Result<(), String> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(format!("at most {max} characters, no control characters"));
    }
    Ok(())
}

/// A checked row: (field, message) on failure.
struct CheckedDevice {
    endpoint_id: String,
    serial: Option<String>,
    attributes: Vec<(String, String)>,
    reported_attributes: Vec<(String, String)>,
}

/// Keys and values of one attribute set.
fn check_attributes(field: &str, attributes: &[(String, String)]) -> std::result::Result<(), (String, String)> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err((field.into(), format!("at most {MAX_ATTRIBUTES}")));
    }
    let mut seen = BTreeSet::new();
    for (key, value) in attributes {
        validate_key(key).map_err(|m| (format!("{field}.key"), m))?;
        validate_value(value, 256).map_err(|m| (format!("{field}.value"), format!("{key}: {m}")))?;
        if !seen.insert(key) {
            return Err((format!("{field}.key"), format!("{key:?} appears twice")));
        }
    }
    Ok(())
}

fn check(input: &NewDevice) -> std::result::Result<CheckedDevice, (String, String)> {
    let endpoint_id = validate_endpoint_id(&input.endpoint_id).map_err(|m| ("endpointId".to_owned(), m))?;
    let serial = match input.serial.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(serial) => {
            validate_value(serial, 128).map_err(|m| ("serial".to_owned(), m))?;
            Some(serial.to_owned())
        }
    };
    check_attributes("attributes", &input.attributes)?;
    check_attributes("attributes", &input.reported_attributes)?;
    Ok(CheckedDevice {
        endpoint_id,
        serial,
        attributes: input.attributes.clone(),
        reported_attributes: input.reported_attributes.clone(),
    })
}

// ---------------------------------------------------------------------------
// Registration.

/// A registered device and its secret (shown this once).
#[derive(Clone, Debug)]
pub struct Registered {
    pub device: Device,
    pub secret: String,
}

pub async fn register(app: &App, ctx: &Ctx, input: NewDevice) -> Result<Registered> {
    ctx.require(Permission::DeviceWrite)?;
    register_one(app, ctx, input, DeviceStatus::Registered).await
}

/// One device, its row error as a plain error.
async fn register_one(app: &App, ctx: &Ctx, input: NewDevice, status: DeviceStatus) -> Result<Registered> {
    insert_devices(app, ctx, vec![input], status).await.map(|mut r| r.remove(0)).map_err(one_row_error)
}

/// The error of a one-row registration as a plain error: CONFLICT for a
/// duplicate, BAD_USER_INPUT with the row's field otherwise.
pub(crate) fn one_row_error(err: Error) -> Error {
    match err {
        Error::Rows { rows } => {
            let row = rows.into_iter().next().unwrap_or_else(|| RowError {
                row: 0,
                key: String::new(),
                field: "input".into(),
                message: "refused".into(),
                duplicate: false,
            });
            if row.duplicate { Error::Conflict(row.message) } else { Error::invalid(row.field, row.message) }
        }
        other => other,
    }
}

/// Register up to [`MAX_BATCH`] devices in one transaction: all of them, or
/// none with every bad row named (`Error::Rows`).
pub async fn register_many(app: &App, ctx: &Ctx, inputs: Vec<NewDevice>) -> Result<Vec<Registered>> {
    ctx.require(Permission::DeviceWrite)?;
    insert_devices(app, ctx, inputs, DeviceStatus::Registered).await
}

async fn insert_devices(app: &App, ctx: &Ctx, inputs: Vec<NewDevice>, status: DeviceStatus) -> Result<Vec<Registered>> {
    let mut tx = WriteTx::begin(app).await?;
    let registered = insert_devices_in(&mut tx, ctx, inputs, status).await?;
    tx.commit().await?;
    Ok(registered)
}

/// The registration itself inside `tx` (the caller commits), for callers
/// that authorized it (an operator, or an enrollment token for one PENDING
/// device). A refused batch writes nothing and leaves `tx` usable.
pub(crate) async fn insert_devices_in(
    tx: &mut WriteTx,
    ctx: &Ctx,
    inputs: Vec<NewDevice>,
    status: DeviceStatus,
) -> Result<Vec<Registered>> {
    if inputs.is_empty() {
        return Err(Error::invalid("devices", "at least one device"));
    }
    if inputs.len() > MAX_BATCH {
        return Err(Error::invalid("devices", format!("at most {MAX_BATCH} per call")));
    }
    let mut errors: Vec<RowError> = Vec::new();
    let mut push = |row: usize, key: &str, field: &str, message: String, duplicate: bool| {
        errors.push(RowError { row, key: key.to_owned(), field: field.to_owned(), message, duplicate });
    };

    if inputs.iter().any(|i| i.gateway.as_deref().is_some_and(|g| !g.trim().is_empty())) {
        // Like setDeviceGateway: gateway checks run one at a time.
        crate::service::audit::serialize_writes(tx.conn()).await?;
    }
    let conn = tx.conn();
    // Models: each distinct reference looked up once.
    let mut models: HashMap<String, Option<DeviceModel>> = HashMap::new();
    for input in &inputs {
        if !models.contains_key(&input.model) {
            let found = device_model::resolve(conn, "model", std::slice::from_ref(&input.model)).await.ok();
            models.insert(input.model.clone(), found.and_then(|mut m| m.pop()));
        }
    }
    // Rows, checked one by one; duplicates within the batch.
    let mut checked: Vec<Option<CheckedDevice>> = Vec::with_capacity(inputs.len());
    let mut in_batch: HashMap<String, usize> = HashMap::new();
    for (i, input) in inputs.iter().enumerate() {
        match check(input) {
            Ok(row) => {
                if let Some(first) = in_batch.insert(row.endpoint_id.clone(), i) {
                    push(
                        i,
                        &row.endpoint_id,
                        "endpointId",
                        format!("endpoint id {} is also row {first}", row.endpoint_id),
                        true,
                    );
                }
                if models.get(&input.model).is_none_or(Option::is_none) {
                    push(i, &row.endpoint_id, "model", format!("no device model {}", input.model), false);
                }
                checked.push(Some(row));
            }
            Err((field, message)) => {
                push(i, input.endpoint_id.trim(), &field, message, false);
                checked.push(None);
            }
        }
    }
    // Duplicates against the fleet, a chunk of ids per query.
    let ids: Vec<&str> = checked.iter().flatten().map(|c| c.endpoint_id.as_str()).collect();
    let mut taken: HashSet<String> = HashSet::new();
    for chunk in ids.chunks(INSERT_CHUNK) {
        let found: Vec<String> = device::Entity::find()
            .select_only()
            .column(device::Column::EndpointId)
            .filter(device::Column::EndpointId.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(conn)
            .await?;
        taken.extend(found);
    }
    let new_ids: Vec<Uuid> = inputs.iter().map(|_| Uuid::now_v7()).collect();
    // Gateways: a device of the fleet, or an earlier row of this batch;
    // one level deep, so never a device that has a gateway itself.
    let mut gateways: Vec<Option<Uuid>> = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let key = checked[i].as_ref().map_or(input.endpoint_id.trim(), |c| c.endpoint_id.as_str());
        if let Some(c) = &checked[i]
            && taken.contains(&c.endpoint_id)
        {
            push(i, key, "endpointId", format!("device {} already exists", c.endpoint_id), true);
        }
        let Some(reference) = input.gateway.as_deref().map(str::trim).filter(|g| !g.is_empty()) else {
            gateways.push(None);
            continue;
        };
        // (its id, whether it has a gateway itself)
        let found: Option<(Uuid, bool)> = match in_batch.get(reference) {
            Some(&row) if row < i => {
                Some((new_ids[row], inputs[row].gateway.as_deref().is_some_and(|g| !g.trim().is_empty())))
            }
            _ => find_by_ref(conn, reference).await?.map(|g| (g.id, g.gateway_id.is_some())),
        };
        let gateway = match found {
            None => {
                push(i, key, "gateway", format!("no device {reference} (registered, or earlier in this batch)"), false);
                None
            }
            Some((_, true)) => {
                push(
                    i,
                    key,
                    "gateway",
                    format!(
                        "{reference} is itself a sub-device; gateways act one level deep, so a gateway has no gateway"
                    ),
                    false,
                );
                None
            }
            Some((id, false)) => Some(id),
        };
        gateways.push(gateway);
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.row);
        return Err(Error::Rows { rows: errors });
    }

    let (_, created_by) = ctx.actor.audit_identity();
    let now = Utc::now();
    let mut registered = Vec::with_capacity(inputs.len());
    let mut rows = Vec::with_capacity(inputs.len());
    let mut attribute_rows = Vec::new();
    let mut reported_rows = Vec::new();
    for (i, (input, row)) in inputs.iter().zip(checked).enumerate() {
        let row = row.ok_or_else(|| Error::internal(anyhow::anyhow!("unchecked row {i}")))?;
        let id = new_ids[i];
        let (secret, hash) = new_secret(id);
        let model = models
            .get(&input.model)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::internal(anyhow::anyhow!("unresolved model of row {i}")))?;
        let model_row = device::Model {
            id,
            endpoint_id: row.endpoint_id.clone(),
            serial: row.serial.clone(),
            model_id: model.id,
            status: status.as_str().to_owned(),
            credential_hash: hash,
            credential_rotated_at: now,
            gateway_id: gateways[i],
            last_seen_at: None,
            created_by: created_by.clone(),
            created_at: now,
            updated_at: now,
        };
        attribute_rows.extend(row.attributes.iter().map(|(k, v)| device_attribute::ActiveModel {
            device_id: Set(id),
            key: Set(k.clone()),
            value: Set(v.clone()),
        }));
        reported_rows.extend(row.reported_attributes.iter().map(|(k, v)| device_reported_attribute::ActiveModel {
            device_id: Set(id),
            key: Set(k.clone()),
            value: Set(v.clone()),
        }));
        rows.push(device::ActiveModel::from(model_row.clone()));
        registered.push(Registered {
            device: Device {
                row: model_row,
                status,
                model,
                attributes: row.attributes.into_iter().collect(),
                reported_attributes: row.reported_attributes.into_iter().collect(),
                installed: BTreeMap::new(),
            },
            secret,
        });
    }
    let conn = tx.conn();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<device::ActiveModel> = rows.by_ref().take(INSERT_CHUNK).collect();
        device::Entity::insert_many(chunk).exec_without_returning(conn).await?;
    }
    let mut attribute_rows = attribute_rows.into_iter().peekable();
    while attribute_rows.peek().is_some() {
        let chunk: Vec<device_attribute::ActiveModel> = attribute_rows.by_ref().take(INSERT_CHUNK * 3).collect();
        device_attribute::Entity::insert_many(chunk).exec_without_returning(conn).await?;
    }
    let mut reported_rows = reported_rows.into_iter().peekable();
    while reported_rows.peek().is_some() {
        let chunk: Vec<device_reported_attribute::ActiveModel> =
            reported_rows.by_ref().take(INSERT_CHUNK * 3).collect();
        device_reported_attribute::Entity::insert_many(chunk).exec_without_returning(conn).await?;
    }
    let endpoint_ids: Vec<&str> = registered.iter().map(|r| r.device.row.endpoint_id.as_str()).collect();
    let (action, object_id) = if status == DeviceStatus::Pending {
        ("device.enroll", registered[0].device.row.id.to_string())
    } else if registered.len() == 1 {
        ("device.register", registered[0].device.row.id.to_string())
    } else {
        ("device.register_batch", String::new())
    };
    tx.audit(
        ctx,
        action,
        ResourceKind::Device,
        &object_id,
        json!({ "count": endpoint_ids.len(), "endpoint_ids": endpoint_ids }),
    )
    .await?;
    Ok(registered)
}

/// An enrollment's input checked as a registration would check it (the
/// same errors), without writing: its model.
pub(crate) async fn check_enrollment(conn: &impl ConnectionTrait, input: &NewDevice) -> Result<DeviceModel> {
    let row_error = |field: String, message: String| Error::Rows {
        rows: vec![RowError { row: 0, key: input.endpoint_id.trim().to_owned(), field, message, duplicate: false }],
    };
    check(input).map_err(|(field, message)| row_error(field, message))?;
    device_model::resolve(conn, "model", std::slice::from_ref(&input.model))
        .await
        .ok()
        .and_then(|mut m| m.pop())
        .ok_or_else(|| row_error("model".into(), format!("no device model {}", input.model)))
}

/// What an enrollment of an endpoint id that exists answers: a PENDING
/// device of the same shape as a new one, under an id that exists nowhere,
/// with a secret that authenticates nothing. Nothing is written.
pub(crate) fn decoy(input: NewDevice, model: DeviceModel) -> Registered {
    let id = Uuid::now_v7();
    let (secret, hash) = new_secret(id);
    let now = Utc::now();
    let serial = input.serial.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    Registered {
        device: Device {
            row: device::Model {
                id,
                endpoint_id: input.endpoint_id.trim().to_owned(),
                serial,
                model_id: model.id,
                status: DeviceStatus::Pending.as_str().to_owned(),
                credential_hash: hash,
                credential_rotated_at: now,
                gateway_id: None,
                last_seen_at: None,
                created_by: String::new(),
                created_at: now,
                updated_at: now,
            },
            status: DeviceStatus::Pending,
            model,
            attributes: BTreeMap::new(),
            reported_attributes: input.reported_attributes.into_iter().collect(),
            installed: BTreeMap::new(),
        },
        secret,
    }
}

/// A device by id or endpoint id.
async fn find_by_ref(conn: &impl ConnectionTrait, reference: &str) -> Result<Option<device::Model>> {
    if let Ok(id) = reference.parse::<Uuid>()
        && let Some(found) = device::Entity::find_by_id(id).one(conn).await?
    {
        return Ok(Some(found));
    }
    Ok(device::Entity::find().filter(device::Column::EndpointId.eq(reference)).one(conn).await?)
}

// ---------------------------------------------------------------------------
// Credentials and lifecycle.

/// A new secret; the old one stops working at once.
pub async fn rotate_credential(app: &App, ctx: &Ctx, id: Uuid) -> Result<Registered> {
    ctx.require(Permission::DeviceWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let current = find(tx.conn(), id).await?;
    if matches!(DeviceStatus::parse(&current.status)?, DeviceStatus::Decommissioned | DeviceStatus::Rejected) {
        return Err(Error::InvalidState(format!("device {} is {}", current.endpoint_id, current.status)));
    }
    let (secret, hash) = new_secret(id);
    let now = Utc::now();
    device::Entity::update_many()
        .col_expr(device::Column::CredentialHash, Expr::value(hash))
        .col_expr(device::Column::CredentialRotatedAt, Expr::value(now))
        .col_expr(device::Column::UpdatedAt, Expr::value(now))
        .filter(device::Column::Id.eq(id))
        .exec(tx.conn())
        .await?;
    tx.audit(
        ctx,
        "device.rotate_credential",
        ResourceKind::Device,
        &id.to_string(),
        json!({ "endpoint_id": current.endpoint_id }),
    )
    .await?;
    tx.notify(Event::DeviceChanged(id));
    tx.commit().await?;
    Ok(Registered { device: get_unchecked(&app.db, id).await?, secret })
}

/// For good: its credential stops working, it leaves every group.
pub async fn decommission(app: &App, ctx: &Ctx, id: Uuid) -> Result<Device> {
    ctx.require(Permission::DeviceWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let current = find(tx.conn(), id).await?;
    let status = DeviceStatus::parse(&current.status)?;
    if status == DeviceStatus::Decommissioned {
        return Err(Error::InvalidState(format!("device {} is already DECOMMISSIONED", current.endpoint_id)));
    }
    let now = Utc::now();
    device::Entity::update_many()
        .col_expr(device::Column::Status, Expr::value(DeviceStatus::Decommissioned.as_str()))
        .col_expr(device::Column::UpdatedAt, Expr::value(now))
        .filter(device::Column::Id.eq(id))
        .exec(tx.conn())
        .await?;
    tx.audit(
        ctx,
        "device.decommission",
        ResourceKind::Device,
        &id.to_string(),
        json!({ "endpoint_id": current.endpoint_id, "status_before": status.as_str() }),
    )
    .await?;
    tx.notify(Event::DeviceChanged(id));
    tx.commit().await?;
    get_unchecked(&app.db, id).await
}

// ---------------------------------------------------------------------------
// Inventory (the device API).

/// What a device reports: a value of `None` removes that component or
/// attribute; what it does not name stays as it was.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub installed: Vec<(String, Option<String>)>,
    pub attributes: Vec<(String, Option<String>)>,
}

/// Apply a device's inventory report (`POST /device/v1/inventory`); one
/// write against the device's rate limit. Writes (and audits) only what
/// changed: a report that changes nothing writes nothing, audits nothing
/// and wakes nobody. Its attributes are reported attributes, never the
/// operator's.
pub async fn report_inventory(app: &App, ctx: &Ctx, report: Inventory) -> Result<Device> {
    let device = ctx.require_device()?;
    app.rate_limits.device_write(device.id)?;
    let change = match plan_inventory(&app.db, device.id, &report).await? {
        Err(unchanged) => return Ok(unchanged),
        Ok(change) => change,
    };
    let mut tx = WriteTx::begin(app).await?;
    write_inventory_in(&mut tx, ctx, change).await?;
    tx.commit().await?;
    get_unchecked(&app.db, device.id).await
}

/// What an inventory report changes (from [`plan_inventory`]).
pub(crate) struct InventoryChange {
    device: Uuid,
    installed: BTreeMap<String, Installed>,
    attributes: BTreeMap<String, String>,
    changed_components: BTreeMap<String, serde_json::Value>,
    changed_attributes: Vec<String>,
}

/// Check an inventory report and work out what it changes; `Err` with the
/// device as it is when it changes nothing. Reads only.
pub(crate) async fn plan_inventory(
    conn: &impl ConnectionTrait,
    device: Uuid,
    report: &Inventory,
) -> Result<std::result::Result<InventoryChange, Device>> {
    let mut names = BTreeSet::new();
    for (component, version) in &report.installed {
        validate_key(component).map_err(|m| Error::invalid("installed", m))?;
        if let Some(version) = version {
            validate_value(version, 64).map_err(|m| Error::invalid("installed", format!("{component}: {m}")))?;
            if version.trim().is_empty() {
                return Err(Error::invalid("installed", format!("{component}: an empty version")));
            }
        }
        if !names.insert(component.as_str()) {
            return Err(Error::invalid("installed", format!("{component:?} appears twice")));
        }
    }
    let mut keys = BTreeSet::new();
    for (key, value) in &report.attributes {
        validate_key(key).map_err(|m| Error::invalid("attributes", m))?;
        if let Some(value) = value {
            validate_value(value, 256).map_err(|m| Error::invalid("attributes", format!("{key}: {m}")))?;
        }
        if !keys.insert(key.as_str()) {
            return Err(Error::invalid("attributes", format!("{key:?} appears twice")));
        }
    }

    let current = get_unchecked(conn, device).await?;
    let mut installed = current.installed.clone();
    let mut changed_components = BTreeMap::new();
    for (component, version) in &report.installed {
        let before = installed.get(component).map(|i| i.version.clone());
        if before.as_ref() != version.as_ref() {
            changed_components.insert(component.clone(), json!({ "from": before, "to": version }));
            match version {
                Some(v) => {
                    installed.insert(component.clone(), Installed { version: v.clone(), reported_at: Utc::now() })
                }
                None => installed.remove(component),
            };
        }
    }
    if installed.len() > MAX_COMPONENTS {
        return Err(Error::invalid(
            "installed",
            format!("at most {MAX_COMPONENTS} components (firmware and 8 applications)"),
        ));
    }
    let mut attributes = current.reported_attributes.clone();
    let mut changed_attributes = Vec::new();
    for (key, value) in &report.attributes {
        if attributes.get(key) != value.as_ref() {
            changed_attributes.push(key.clone());
            match value {
                Some(v) => attributes.insert(key.clone(), v.clone()),
                None => attributes.remove(key),
            };
        }
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid("attributes", format!("at most {MAX_ATTRIBUTES}")));
    }
    if changed_components.is_empty() && changed_attributes.is_empty() {
        return Ok(Err(current));
    }
    Ok(Ok(InventoryChange { device, installed, attributes, changed_components, changed_attributes }))
}

/// Write (and audit, as `ctx`) what [`plan_inventory`] found, inside `tx`.
pub(crate) async fn write_inventory_in(tx: &mut WriteTx, ctx: &Ctx, change: InventoryChange) -> Result<()> {
    let InventoryChange { device, installed, attributes, changed_components, changed_attributes } = change;
    let conn = tx.conn();
    let now = Utc::now();
    for component in changed_components.keys() {
        match installed.get(component) {
            // A version otadepot did not install: history says the device reported it.
            Some(i) => record_installed(conn, device, component, &i.version, None).await?,
            None => {
                device_installed::Entity::delete_many()
                    .filter(device_installed::Column::DeviceId.eq(device))
                    .filter(device_installed::Column::Component.eq(component.as_str()))
                    .exec(conn)
                    .await?;
            }
        }
    }
    for key in &changed_attributes {
        device_reported_attribute::Entity::delete_many()
            .filter(device_reported_attribute::Column::DeviceId.eq(device))
            .filter(device_reported_attribute::Column::Key.eq(key.as_str()))
            .exec(conn)
            .await?;
        if let Some(value) = attributes.get(key) {
            device_reported_attribute::Entity::insert(device_reported_attribute::ActiveModel {
                device_id: Set(device),
                key: Set(key.clone()),
                value: Set(value.clone()),
            })
            .exec(conn)
            .await?;
        }
    }
    device::Entity::update_many()
        .col_expr(device::Column::UpdatedAt, Expr::value(now))
        .filter(device::Column::Id.eq(device))
        .exec(conn)
        .await?;
    tx.audit(
        ctx,
        "device.inventory",
        ResourceKind::Device,
        &device.to_string(),
        json!({ "installed": changed_components, "reported_attributes": changed_attributes }),
    )
    .await?;
    if !changed_attributes.is_empty() {
        // Every process's copy of what a DDI base poll shows (it asks for
        // attributes until it has some) goes with it.
        tx.notify(Event::DeviceChanged(device));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Reading.

pub(crate) async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<device::Model> {
    device::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Device, id.to_string()))
}

/// Models, attributes (both sets) and installed versions of many devices,
/// in a fixed number of queries (four, whatever the page size).
async fn attach(conn: &impl ConnectionTrait, rows: Vec<device::Model>) -> Result<Vec<Device>> {
    let ids: Vec<Uuid> = rows.iter().map(|d| d.id).collect();
    let mut attributes: HashMap<Uuid, BTreeMap<String, String>> = HashMap::new();
    let mut reported: HashMap<Uuid, BTreeMap<String, String>> = HashMap::new();
    let mut installed: HashMap<Uuid, BTreeMap<String, Installed>> = HashMap::new();
    let mut models: HashMap<Uuid, DeviceModel> = HashMap::new();
    if !ids.is_empty() {
        for a in device_attribute::Entity::find()
            .filter(device_attribute::Column::DeviceId.is_in(ids.iter().copied()))
            .all(conn)
            .await?
        {
            attributes.entry(a.device_id).or_default().insert(a.key, a.value);
        }
        for a in device_reported_attribute::Entity::find()
            .filter(device_reported_attribute::Column::DeviceId.is_in(ids.iter().copied()))
            .all(conn)
            .await?
        {
            reported.entry(a.device_id).or_default().insert(a.key, a.value);
        }
        for i in device_installed::Entity::find()
            .filter(device_installed::Column::DeviceId.is_in(ids.iter().copied()))
            .all(conn)
            .await?
        {
            installed
                .entry(i.device_id)
                .or_default()
                .insert(i.component, Installed { version: i.version, reported_at: i.reported_at });
        }
        let model_ids: BTreeSet<Uuid> = rows.iter().map(|d| d.model_id).collect();
        for m in entity::device_model::Entity::find()
            .filter(entity::device_model::Column::Id.is_in(model_ids))
            .all(conn)
            .await?
        {
            models.insert(m.id, m);
        }
    }
    rows.into_iter()
        .map(|row| {
            Ok(Device {
                status: DeviceStatus::parse(&row.status)?,
                model: models
                    .get(&row.model_id)
                    .cloned()
                    .ok_or_else(|| Error::internal(anyhow::anyhow!("device {} has no model", row.id)))?,
                attributes: attributes.remove(&row.id).unwrap_or_default(),
                reported_attributes: reported.remove(&row.id).unwrap_or_default(),
                installed: installed.remove(&row.id).unwrap_or_default(),
                row,
            })
        })
        .collect()
}

/// The calling device itself (the device API; a PENDING device may ask).
pub async fn me(app: &App, ctx: &Ctx) -> Result<Device> {
    let Actor::Device(device) = &ctx.actor else {
        return Err(Error::Unauthenticated("a device credential is required".into()));
    };
    get_unchecked(&app.db, device.id).await
}

/// Devices by id, with their models, attributes and installed versions.
pub(crate) async fn by_ids(conn: &impl ConnectionTrait, ids: Vec<Uuid>) -> Result<HashMap<Uuid, Device>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = device::Entity::find().filter(device::Column::Id.is_in(ids)).all(conn).await?;
    Ok(attach(conn, rows).await?.into_iter().map(|d| (d.row.id, d)).collect())
}

/// A component version is now on the device: its installed versions and
/// its installation history (from a deployment, or as the device reported).
pub(crate) async fn record_installed(
    conn: &impl ConnectionTrait,
    device_id: Uuid,
    component: &str,
    version: &str,
    from: Option<(Uuid, Uuid)>,
) -> Result<()> {
    let now = Utc::now();
    device_installed::Entity::insert(device_installed::ActiveModel {
        device_id: Set(device_id),
        component: Set(component.to_owned()),
        version: Set(version.to_owned()),
        reported_at: Set(now),
    })
    .on_conflict(
        sea_orm::sea_query::OnConflict::columns([
            device_installed::Column::DeviceId,
            device_installed::Column::Component,
        ])
        .update_columns([device_installed::Column::Version, device_installed::Column::ReportedAt])
        .to_owned(),
    )
    .exec_without_returning(conn)
    .await?;
    entity::installation::Entity::insert(entity::installation::ActiveModel {
        id: Set(Uuid::now_v7()),
        device_id: Set(device_id),
        component: Set(component.to_owned()),
        version: Set(version.to_owned()),
        package_id: Set(from.map(|(p, _)| p)),
        deployment_id: Set(from.map(|(_, d)| d)),
        source: Set(if from.is_some() { "deployment" } else { "device" }.to_owned()),
        installed_at: Set(now),
    })
    .exec_without_returning(conn)
    .await?;
    Ok(())
}

pub(crate) async fn get_unchecked(conn: &impl ConnectionTrait, id: Uuid) -> Result<Device> {
    let row = find(conn, id).await?;
    Ok(attach(conn, vec![row]).await?.remove(0))
}

pub async fn get(app: &App, ctx: &Ctx, id: Uuid) -> Result<Device> {
    ctx.require(Permission::DeviceRead)?;
    get_unchecked(&app.db, id).await
}

/// An installation with its package's name (none when the device
/// reported a version otadepot did not install).
#[derive(Clone, Debug)]
pub struct InstallationView {
    pub row: entity::installation::Model,
    pub package_name: Option<String>,
}

/// A device's installation history, newest first (at most 500).
pub async fn installations(app: &App, ctx: &Ctx, device: Uuid) -> Result<Vec<InstallationView>> {
    ctx.require(Permission::DeviceRead)?;
    let rows = entity::installation::Entity::find()
        .filter(entity::installation::Column::DeviceId.eq(device))
        .order_by_desc(entity::installation::Column::InstalledAt)
        .order_by_desc(entity::installation::Column::Id)
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

pub async fn get_by_endpoint_id(app: &App, ctx: &Ctx, endpoint_id: &str) -> Result<Device> {
    ctx.require(Permission::DeviceRead)?;
    let row = device::Entity::find()
        .filter(device::Column::EndpointId.eq(endpoint_id))
        .one(&app.db)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Device, endpoint_id))?;
    Ok(attach(&app.db, vec![row]).await?.remove(0))
}

/// Which of a device's two attribute sets a filter reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttributeSource {
    /// Set by operators (registration, CSV import).
    #[default]
    Operator,
    /// Reported by the device (inventory, enrollment).
    Reported,
}

/// How a filter compares a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterOp {
    Equals,
    In,
    Exists,
    Prefix,
}

#[derive(Clone, Debug)]
pub struct ValueFilter {
    /// The attribute key, or the component.
    pub name: String,
    pub op: FilterOp,
    /// For EQUALS and PREFIX.
    pub value: Option<String>,
    /// For IN.
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    pub model: Option<Uuid>,
    pub status: Option<DeviceStatus>,
    /// On operator attributes.
    pub attributes: Vec<ValueFilter>,
    /// On reported attributes.
    pub reported_attributes: Vec<ValueFilter>,
    pub installed: Vec<ValueFilter>,
    pub last_seen_before: Option<DateTime<Utc>>,
    pub last_seen_after: Option<DateTime<Utc>>,
    /// Part of the endpoint id or serial, any case.
    pub search: Option<String>,
    /// Members of this group.
    pub group: Option<Uuid>,
    /// Only devices in this set (a group's members), as a subquery.
    pub within: Option<sea_orm::sea_query::SelectStatement>,
}

fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// What a value filter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FilterOn {
    Attribute,
    ReportedAttribute,
    Installed,
}

/// One value filter as an `id IN (subquery)` condition.
fn value_condition(filter: &ValueFilter, on: FilterOn) -> Result<sea_orm::sea_query::SimpleExpr> {
    let field = if on == FilterOn::Installed { "installedVersion" } else { "attribute" };
    let need =
        |v: &Option<String>| v.clone().ok_or_else(|| Error::invalid(field, format!("{:?} needs a value", filter.op)));
    macro_rules! subquery {
        ($entity:ident, $name:ident, $value:ident) => {{
            let mut q = $entity::Entity::find()
                .select_only()
                .column($entity::Column::DeviceId)
                .filter($entity::Column::$name.eq(filter.name.as_str()));
            q = match filter.op {
                FilterOp::Equals => q.filter($entity::Column::$value.eq(need(&filter.value)?)),
                FilterOp::In => {
                    if filter.values.is_empty() {
                        return Err(Error::invalid(field, "IN needs values"));
                    }
                    q.filter($entity::Column::$value.is_in(filter.values.clone()))
                }
                FilterOp::Exists => q,
                FilterOp::Prefix => q.filter(
                    Expr::col($entity::Column::$value)
                        .like(LikeExpr::new(format!("{}%", like_escape(&need(&filter.value)?))).escape('\\')),
                ),
            };
            device::Column::Id.in_subquery(q.into_query())
        }};
    }
    Ok(match on {
        FilterOn::Attribute => subquery!(device_attribute, Key, Value),
        FilterOn::ReportedAttribute => subquery!(device_reported_attribute, Key, Value),
        FilterOn::Installed => subquery!(device_installed, Component, Version),
    })
}

/// The SQL condition of a filter (shared with dynamic groups).
pub(crate) fn condition(filter: &DeviceFilter) -> Result<Condition> {
    let mut condition = Condition::all();
    if let Some(model) = filter.model {
        condition = condition.add(device::Column::ModelId.eq(model));
    }
    if let Some(status) = filter.status {
        condition = condition.add(device::Column::Status.eq(status.as_str()));
    }
    for f in &filter.attributes {
        condition = condition.add(value_condition(f, FilterOn::Attribute)?);
    }
    for f in &filter.reported_attributes {
        condition = condition.add(value_condition(f, FilterOn::ReportedAttribute)?);
    }
    for f in &filter.installed {
        condition = condition.add(value_condition(f, FilterOn::Installed)?);
    }
    if let Some(before) = filter.last_seen_before {
        condition = condition.add(device::Column::LastSeenAt.lt(before));
    }
    if let Some(after) = filter.last_seen_after {
        condition = condition.add(device::Column::LastSeenAt.gte(after));
    }
    if let Some(search) = filter.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        let pattern = format!("%{}%", like_escape(&search.to_lowercase()));
        condition = condition.add(
            Condition::any()
                .add(
                    Func::lower(Expr::col(device::Column::EndpointId))
                        .like(LikeExpr::new(pattern.clone()).escape('\\')),
                )
                .add(Func::lower(Expr::col(device::Column::Serial)).like(LikeExpr::new(pattern).escape('\\'))),
        );
    }
    if let Some(within) = &filter.within {
        condition = condition.add(device::Column::Id.in_subquery(within.clone()));
    }
    Ok(condition)
}

const CURSOR_KIND: &str = "device";

/// Newest first; a fixed number of queries per page. `filter.group` is
/// not read here (devices know nothing of groups; groups are built on
/// devices): `service::device_group::list_devices` turns it into `within`.
pub(crate) async fn list_unchecked(
    conn: &impl ConnectionTrait,
    filter: &DeviceFilter,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<Device>> {
    let page = PageRequest::parse_uuid(CURSOR_KIND, first, after)?;
    let condition = condition(filter)?;
    let query = device::Entity::find().filter(condition);
    let (rows, has_next_page, total_count) =
        crate::service::pagination::newest_first(conn, query, device::Column::Id, &page).await?;
    let items = attach(conn, rows).await?;
    Ok(Page {
        items: items.into_iter().map(|d| (cursor(CURSOR_KIND, d.row.id), d)).collect(),
        has_next_page,
        total_count,
    })
}
