//! Enrollment: devices register themselves with a fleet enrollment token
//! (burned into the factory image) and wait, PENDING, until an operator
//! approves them (`approveDevices`) or rejects them (`rejectDevices`). A
//! PENDING device can authenticate and ask for its own status, nothing more.
//!
//! A token reads `ote_<token id, 32 hex>_<43 base64url characters>`; only
//! its SHA-256 is stored. It may be limited to one device model, expire,
//! be revoked, and have a quota (`maxDevices`); enrollments per token are
//! rate-limited (`devices.max_enrollments_per_minute`).
//!
//! Rule: an enrollment never tells whether an endpoint id exists. An
//! endpoint id that is taken gets the same 201 and body shape as a new one,
//! with a secret that authenticates nothing; the existing device is never
//! touched, and the attempt is audited (`device.enroll_duplicate`) for the
//! operators. Both count against the quota alike.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use entity::{device, enrollment_token};
use rand::RngCore;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, Set};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::app::App;
use crate::auth::{Actor, Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;
use crate::service::device::{self as devices, Device, DeviceStatus, NewDevice, Registered};
use crate::service::device_model::{self, DeviceModel};
use crate::service::pagination::{Page, PageRequest, cursor};

const TOKEN_PREFIX: &str = "ote_";
/// Longest lifetime of a token: a year.
const MAX_TTL_SECONDS: i64 = 366 * 24 * 3600;
/// Largest `maxDevices`.
const MAX_QUOTA: i64 = 10_000_000;

/// What `createEnrollmentToken` takes.
#[derive(Clone, Debug, Default)]
pub struct NewToken {
    pub name: String,
    /// A device model id or name.
    pub model: Option<String>,
    pub expires_in_seconds: Option<i64>,
    /// Most devices that may enroll with it.
    pub max_devices: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct EnrollmentToken {
    pub row: enrollment_token::Model,
    pub model: Option<DeviceModel>,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub fn is_enrollment_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

/// Create a token; it is in the result this once.
pub async fn create(app: &App, ctx: &Ctx, input: NewToken) -> Result<(EnrollmentToken, String)> {
    ctx.require(Permission::DeviceWrite)?;
    let NewToken { name, model, expires_in_seconds, max_devices } = input;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(Error::invalid("name", "1 to 128 characters, no control characters"));
    }
    let expires_at = match expires_in_seconds {
        None => None,
        Some(s) if (60..=MAX_TTL_SECONDS).contains(&s) => Some(Utc::now() + TimeDelta::seconds(s)),
        Some(_) => return Err(Error::invalid("expiresInSeconds", format!("between 60 and {MAX_TTL_SECONDS}"))),
    };
    let max_devices = match max_devices {
        None => None,
        Some(n) if (1..=MAX_QUOTA).contains(&n) => i32::try_from(n).ok(),
        Some(_) => return Err(Error::invalid("maxDevices", format!("between 1 and {MAX_QUOTA}"))),
    };
    let mut tx = WriteTx::begin(app).await?;
    let model = match model {
        None => None,
        Some(reference) => Some(device_model::resolve(tx.conn(), "model", &[reference]).await?.remove(0)),
    };
    let id = Uuid::now_v7();
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    let token = format!("{TOKEN_PREFIX}{}_{}", id.simple(), URL_SAFE_NO_PAD.encode(random));
    let (_, created_by) = ctx.actor.audit_identity();
    let row = enrollment_token::ActiveModel {
        id: Set(id),
        name: Set(name.to_owned()),
        model_id: Set(model.as_ref().map(|m| m.id)),
        token_hash: Set(hash(&token)),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
        max_devices: Set(max_devices),
        enrolled_count: Set(0),
        created_by: Set(created_by),
        created_at: Set(Utc::now()),
    }
    .insert(tx.conn())
    .await?;
    tx.audit(
        ctx,
        "enrollment_token.create",
        ResourceKind::EnrollmentToken,
        &id.to_string(),
        json!({
            "name": row.name, "model": model.as_ref().map(|m| &m.name), "expires_at": expires_at,
            "max_devices": max_devices,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok((EnrollmentToken { row, model }, token))
}

pub async fn revoke(app: &App, ctx: &Ctx, id: Uuid) -> Result<EnrollmentToken> {
    ctx.require(Permission::DeviceWrite)?;
    let mut tx = WriteTx::begin(app).await?;
    let current = enrollment_token::Entity::find_by_id(id)
        .one(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::EnrollmentToken, id.to_string()))?;
    if current.revoked_at.is_some() {
        return Err(Error::InvalidState(format!("enrollment token {:?} is already revoked", current.name)));
    }
    enrollment_token::Entity::update_many()
        .col_expr(enrollment_token::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(enrollment_token::Column::Id.eq(id))
        .exec(tx.conn())
        .await?;
    tx.audit(
        ctx,
        "enrollment_token.revoke",
        ResourceKind::EnrollmentToken,
        &id.to_string(),
        json!({ "name": current.name }),
    )
    .await?;
    tx.commit().await?;
    let row = enrollment_token::Entity::find_by_id(id)
        .one(&app.db)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::EnrollmentToken, id.to_string()))?;
    with_model(&app.db, row).await
}

async fn with_model(conn: &impl sea_orm::ConnectionTrait, row: enrollment_token::Model) -> Result<EnrollmentToken> {
    let model = match row.model_id {
        Some(id) => Some(device_model::find(conn, id).await?),
        None => None,
    };
    Ok(EnrollmentToken { row, model })
}

const CURSOR_KIND: &str = "enrollment_token";

/// Newest first.
pub async fn list(app: &App, ctx: &Ctx, first: Option<i32>, after: Option<&str>) -> Result<Page<EnrollmentToken>> {
    ctx.require(Permission::DeviceRead)?;
    let page = PageRequest::parse_uuid(CURSOR_KIND, first, after)?;
    let (rows, has_next_page, total_count) = crate::service::pagination::newest_first(
        &app.db,
        enrollment_token::Entity::find(),
        enrollment_token::Column::Id,
        &page,
    )
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let token = with_model(&app.db, row).await?;
        items.push((cursor(CURSOR_KIND, token.row.id), token));
    }
    Ok(Page { items, has_next_page, total_count })
}

/// A device enrolls itself with `token`: it is PENDING, with a secret of its
/// own (in the result, this once). Every token failure is UNAUTHENTICATED;
/// too many enrollments a minute are TOO_MANY_REQUESTS; a token whose
/// quota is used up is INVALID_STATE. An endpoint id that exists already
/// gets an answer of the same shape whose secret works nowhere (see the
/// module's rule). The attributes a device sends are reported attributes.
pub async fn enroll(app: &App, token: &str, input: NewDevice, request_id: Option<String>) -> Result<Registered> {
    let unauthenticated = || Error::Unauthenticated("invalid enrollment token".into());
    let id = token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(id, _)| Uuid::try_parse(id).ok())
        .ok_or_else(unauthenticated)?;
    let row = enrollment_token::Entity::find_by_id(id).one(&app.db).await?.ok_or_else(unauthenticated)?;
    if !bool::from(hash(token).as_bytes().ct_eq(row.token_hash.as_bytes())) {
        return Err(unauthenticated());
    }
    if row.revoked_at.is_some() || row.expires_at.is_some_and(|at: DateTime<Utc>| at <= Utc::now()) {
        return Err(Error::Unauthenticated(format!("enrollment token {:?} is revoked or expired", row.name)));
    }
    // After the token is verified: nobody without it can use up its rate.
    app.rate_limits.enrollment(row.id)?;
    let mut input = input;
    if let Some(model_id) = row.model_id {
        let model = device_model::find(&app.db, model_id).await?;
        if input.model.is_empty() {
            input.model = model.id.to_string();
        } else if input.model != model.name && input.model != model.id.to_string() {
            return Err(Error::invalid("model", format!("this enrollment token is for {} devices only", model.name)));
        }
    }
    if input.model.is_empty() {
        return Err(Error::invalid("model", "is required"));
    }
    input.gateway = None;
    // What the device says of itself is never an operator attribute.
    input.reported_attributes = std::mem::take(&mut input.attributes);
    let ctx = Ctx::new(Actor::System(format!("enrollment:{}", row.name)), request_id);

    let mut tx = WriteTx::begin(app).await?;
    // Enrollments (and registrations) run one at a time from here, so the
    // existence check below cannot race another enrollment of the same id
    // (PostgreSQL; SQLite's write lock does it there).
    crate::service::audit::serialize_writes(tx.conn()).await?;
    // The quota: a conditional UPDATE, so concurrent enrollments cannot
    // both take the last place.
    let counted = enrollment_token::Entity::update_many()
        .col_expr(
            enrollment_token::Column::EnrolledCount,
            ExprTrait::add(Expr::col(enrollment_token::Column::EnrolledCount), 1),
        )
        .filter(enrollment_token::Column::Id.eq(row.id))
        .filter(enrollment_token::Column::RevokedAt.is_null())
        .filter(Condition::any().add(enrollment_token::Column::MaxDevices.is_null()).add(
            Expr::col(enrollment_token::Column::EnrolledCount).lt(Expr::col(enrollment_token::Column::MaxDevices)),
        ))
        .exec(tx.conn())
        .await?;
    if counted.rows_affected == 0 {
        let now = enrollment_token::Entity::find_by_id(row.id).one(tx.conn()).await?.ok_or_else(unauthenticated)?;
        if now.revoked_at.is_some() {
            return Err(Error::Unauthenticated(format!("enrollment token {:?} is revoked or expired", now.name)));
        }
        return Err(Error::InvalidState(format!(
            "enrollment token {:?} has enrolled its maxDevices ({}) devices; an operator can make a new token",
            now.name,
            now.max_devices.unwrap_or_default()
        )));
    }
    let taken =
        device::Entity::find().filter(device::Column::EndpointId.eq(input.endpoint_id.trim())).one(tx.conn()).await?;
    let registered = match taken {
        None => devices::insert_devices_in(&mut tx, &ctx, vec![input], DeviceStatus::Pending)
            .await
            .map_err(devices::one_row_error)?
            .remove(0),
        Some(existing) => {
            // The input is still checked like a new one (a bad input is the
            // same 400 either way); the existing device is left alone.
            let model = devices::check_enrollment(tx.conn(), &input).await.map_err(devices::one_row_error)?;
            tx.audit(
                &ctx,
                "device.enroll_duplicate",
                ResourceKind::Device,
                &existing.id.to_string(),
                json!({ "endpoint_id": existing.endpoint_id }),
            )
            .await?;
            devices::decoy(input, model)
        }
    };
    tx.commit().await?;
    Ok(registered)
}

/// PENDING → REGISTERED (approve) or REJECTED, for devices named by id or
/// endpoint id; all or none.
pub async fn decide(app: &App, ctx: &Ctx, refs: Vec<String>, approve: bool) -> Result<Vec<Device>> {
    ctx.require(Permission::DeviceWrite)?;
    if refs.is_empty() || refs.len() > devices::MAX_BATCH {
        return Err(Error::invalid("devices", format!("1 to {} devices", devices::MAX_BATCH)));
    }
    let mut tx = WriteTx::begin(app).await?;
    let mut found: std::collections::HashMap<String, device::Model> = std::collections::HashMap::new();
    let by_id: Vec<Uuid> = refs.iter().filter_map(|r| r.parse().ok()).collect();
    for chunk in by_id.chunks(1000) {
        for row in device::Entity::find().filter(device::Column::Id.is_in(chunk.iter().copied())).all(tx.conn()).await?
        {
            found.insert(row.id.to_string(), row);
        }
    }
    let by_endpoint: Vec<&str> = refs.iter().filter(|r| !found.contains_key(*r)).map(String::as_str).collect();
    for chunk in by_endpoint.chunks(1000) {
        for row in device::Entity::find()
            .filter(device::Column::EndpointId.is_in(chunk.iter().copied()))
            .all(tx.conn())
            .await?
        {
            found.insert(row.endpoint_id.clone(), row);
        }
    }
    let mut ids = Vec::with_capacity(refs.len());
    for reference in &refs {
        let row =
            found.get(reference.as_str()).ok_or_else(|| Error::not_found(ResourceKind::Device, reference.as_str()))?;
        if row.status != DeviceStatus::Pending.as_str() {
            return Err(Error::InvalidState(format!(
                "device {} is {}; only PENDING devices are approved or rejected",
                row.endpoint_id, row.status
            )));
        }
        ids.push((row.id, row.endpoint_id.clone()));
    }
    let to = if approve { DeviceStatus::Registered } else { DeviceStatus::Rejected };
    let now = Utc::now();
    for chunk in ids.chunks(1000) {
        device::Entity::update_many()
            .col_expr(device::Column::Status, Expr::value(to.as_str()))
            .col_expr(device::Column::UpdatedAt, Expr::value(now))
            .filter(device::Column::Id.is_in(chunk.iter().map(|(id, _)| *id)))
            .filter(device::Column::Status.eq(DeviceStatus::Pending.as_str()))
            .exec(tx.conn())
            .await?;
    }
    let action = if approve { "device.approve" } else { "device.reject" };
    let endpoint_ids: Vec<&String> = ids.iter().map(|(_, e)| e).collect();
    let object_id = if ids.len() == 1 { ids[0].0.to_string() } else { String::new() };
    tx.audit(
        ctx,
        action,
        ResourceKind::Device,
        &object_id,
        json!({ "count": ids.len(), "endpoint_ids": endpoint_ids }),
    )
    .await?;
    if ids.len() > 100 {
        tx.notify(crate::app::Event::AllPollersWake);
    } else {
        for (id, _) in &ids {
            tx.notify(crate::app::Event::DeviceChanged(*id));
        }
    }
    tx.commit().await?;
    let mut devices = Vec::with_capacity(ids.len());
    for (id, _) in ids {
        devices.push(devices::get_unchecked(&app.db, id).await?);
    }
    Ok(devices)
}
