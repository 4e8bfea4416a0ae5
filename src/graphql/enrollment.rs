//! Enrollment: devices register themselves with a token (`POST
//! /device/v1/enroll`) and wait, PENDING, for an operator:
//! `enrollmentTokens`, `createEnrollmentToken`, `revokeEnrollmentToken`,
//! `approveDevices`, `rejectDevices`.

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::authz::{Guarded, Readable};
use super::connection::{Conn, from_page};
use super::device::Device;
use super::device_model::DeviceModel;
use super::ids::parse_id;
use super::{app, caller};
use crate::error::ResourceKind;
use crate::service::authz::ObjectKind;
use crate::service::enrollment as service;

#[derive(SimpleObject)]
pub struct EnrollmentToken {
    id: ID,
    name: String,
    /// Only devices of this model may enroll with it (any, when null).
    model: Option<DeviceModel>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    /// Most devices that may enroll with it (no quota when null).
    max_devices: Option<i32>,
    /// Enrollments it has answered, counted against `maxDevices`.
    enrolled_count: i32,
    created_by: String,
    created_at: DateTime<Utc>,
}

impl Readable for EnrollmentToken {
    const KIND: ObjectKind = ObjectKind::EnrollmentToken;
}

impl From<service::EnrollmentToken> for EnrollmentToken {
    fn from(t: service::EnrollmentToken) -> Self {
        let r = t.row;
        Self {
            id: ID(r.id.to_string()),
            name: r.name,
            model: t.model.map(Into::into),
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            max_devices: r.max_devices,
            enrolled_count: r.enrolled_count,
            created_by: r.created_by,
            created_at: r.created_at,
        }
    }
}

#[derive(InputObject)]
pub struct CreateEnrollmentTokenInput {
    name: String,
    /// Limit it to devices of this model (id or name).
    model: Option<ID>,
    /// Lifetime (60 s to a year); without one it lasts until revoked.
    expires_in_seconds: Option<i64>,
    /// Most devices that may enroll with it; without one, no quota.
    max_devices: Option<i32>,
}

/// The token, shown this once: devices enroll at `POST /device/v1/enroll`
/// with `Authorization: Bearer <token>`.
#[derive(SimpleObject)]
pub struct CreateEnrollmentTokenPayload {
    /// Null without DEVICE_READ.
    enrollment_token: Guarded<EnrollmentToken>,
    token: String,
}

#[derive(SimpleObject)]
pub struct EnrollmentTokenPayload {
    /// Null without DEVICE_READ.
    enrollment_token: Guarded<EnrollmentToken>,
}

#[derive(InputObject)]
pub struct EnrollmentTokenIdInput {
    id: ID,
}

#[derive(InputObject)]
pub struct DevicesInput {
    /// Device ids or endpoint ids.
    devices: Vec<ID>,
}

#[derive(SimpleObject)]
pub struct DevicesPayload {
    /// Null without DEVICE_READ.
    devices: Guarded<Vec<Device>>,
}

#[derive(Default)]
pub struct EnrollmentQuery;

#[Object]
impl EnrollmentQuery {
    /// Newest first.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn enrollment_tokens(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<EnrollmentToken>> {
        let page = service::list(app(ctx), caller(ctx), first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), EnrollmentToken::from))
    }
}

#[derive(Default)]
pub struct EnrollmentMutation;

#[Object]
impl EnrollmentMutation {
    /// A token with which devices enroll themselves (as PENDING).
    async fn create_enrollment_token(
        &self,
        ctx: &Context<'_>,
        input: CreateEnrollmentTokenInput,
    ) -> Result<CreateEnrollmentTokenPayload> {
        let new = service::NewToken {
            name: input.name,
            model: input.model.map(|m| m.0),
            expires_in_seconds: input.expires_in_seconds,
            max_devices: input.max_devices.map(i64::from),
        };
        let (token, secret) = service::create(app(ctx), caller(ctx), new).await?;
        Ok(CreateEnrollmentTokenPayload { enrollment_token: Guarded::new(token.into()), token: secret })
    }

    /// Devices can no longer enroll with it (enrolled ones stay).
    async fn revoke_enrollment_token(
        &self,
        ctx: &Context<'_>,
        input: EnrollmentTokenIdInput,
    ) -> Result<EnrollmentTokenPayload> {
        let id = parse_id("id", ResourceKind::EnrollmentToken, &input.id)?;
        let token = service::revoke(app(ctx), caller(ctx), id).await?;
        Ok(EnrollmentTokenPayload { enrollment_token: Guarded::new(token.into()) })
    }

    /// PENDING (enrolled) devices become REGISTERED; all or none.
    async fn approve_devices(&self, ctx: &Context<'_>, input: DevicesInput) -> Result<DevicesPayload> {
        let refs = input.devices.into_iter().map(|d| d.0).collect();
        let devices = service::decide(app(ctx), caller(ctx), refs, true).await?;
        Ok(DevicesPayload { devices: Guarded::new(devices.into_iter().map(Into::into).collect()) })
    }

    /// PENDING devices become REJECTED: their credential never works.
    async fn reject_devices(&self, ctx: &Context<'_>, input: DevicesInput) -> Result<DevicesPayload> {
        let refs = input.devices.into_iter().map(|d| d.0).collect();
        let devices = service::decide(app(ctx), caller(ctx), refs, false).await?;
        Ok(DevicesPayload { devices: Guarded::new(devices.into_iter().map(Into::into).collect()) })
    }
}
