//! The audit trail: `auditEvents`, `verifyAuditChain`, `auditEventAdded`.

use async_graphql::{Context, ID, InputObject, Json, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

use super::connection::{Conn, from_page};
use super::{app, caller};
use crate::service::audit as service;

#[derive(SimpleObject)]
pub struct AuditActor {
    /// `user`, `device` or `system`.
    kind: String,
    id: String,
}

#[derive(SimpleObject)]
pub struct AuditEvent {
    id: ID,
    /// Position in the hash chain (1, 2, 3, ...).
    seq: i64,
    at: DateTime<Utc>,
    actor: AuditActor,
    /// What happened, as `area.verb` (`role.create`).
    action: String,
    object_kind: String,
    object_id: String,
    details: Json<serde_json::Value>,
    request_id: Option<String>,
    /// SHA-256 (hex) of the previous event.
    prev_hash: String,
    /// SHA-256 (hex) of this event's canonical form.
    hash: String,
}

impl From<entity::audit_event::Model> for AuditEvent {
    fn from(event: entity::audit_event::Model) -> Self {
        Self {
            id: ID(event.id.to_string()),
            seq: event.seq,
            at: event.at,
            actor: AuditActor { kind: event.actor_kind, id: event.actor_id },
            action: event.action,
            object_kind: event.object_kind,
            object_id: event.object_id,
            details: Json(event.details),
            request_id: event.request_id,
            prev_hash: event.prev_hash,
            hash: event.hash,
        }
    }
}

#[derive(InputObject, Default)]
pub struct AuditEventFilter {
    /// Actor id: an operator's subject, a device id, a system job name.
    actor: Option<String>,
    /// Exact action, or a prefix ending in `*` (`role.*`).
    action: Option<String>,
    object_kind: Option<String>,
    object_id: Option<String>,
    /// A device id: events with the device as actor (its reports, its
    /// command results) or as object (registration, approval, secret
    /// rotation, decommission). Batch-level events (a command sent to a
    /// group) name the batch, not each device.
    device: Option<ID>,
    /// Inclusive lower bound of `at`.
    from: Option<DateTime<Utc>>,
    /// Exclusive upper bound of `at`.
    to: Option<DateTime<Utc>>,
}

impl From<AuditEventFilter> for service::AuditFilter {
    fn from(f: AuditEventFilter) -> Self {
        Self {
            actor: f.actor,
            action: f.action,
            object_kind: f.object_kind,
            object_id: f.object_id,
            device: f.device.map(|d| d.0),
            from: f.from,
            to: f.to,
        }
    }
}

#[derive(SimpleObject)]
pub struct BrokenAuditLink {
    seq: i64,
    id: ID,
    reason: String,
}

#[derive(SimpleObject)]
pub struct AuditChainVerification {
    /// True when every event links to the one before and matches its hash.
    ok: bool,
    /// Events checked before the first broken one (or all of them).
    checked: u64,
    first_broken: Option<BrokenAuditLink>,
}

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Audit events, newest first.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditEventFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<AuditEvent>> {
        let filter = filter.unwrap_or_default().into();
        let page = service::list(app(ctx), caller(ctx), &filter, first, after.as_deref()).await?;
        Ok(from_page(page, after.is_some(), AuditEvent::from))
    }

    /// Walk the whole hash chain and report the first broken event, if any.
    async fn verify_audit_chain(&self, ctx: &Context<'_>) -> Result<AuditChainVerification> {
        let result = service::verify(app(ctx), caller(ctx)).await?;
        Ok(AuditChainVerification {
            ok: result.first_broken.is_none(),
            checked: result.checked,
            first_broken: result.first_broken.map(|b| BrokenAuditLink {
                seq: b.seq,
                id: ID(b.id.to_string()),
                reason: b.reason,
            }),
        })
    }
}

#[derive(Default)]
pub struct AuditSubscription;

#[Subscription]
impl AuditSubscription {
    /// Audit events as they are committed.
    async fn audit_event_added(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditEventFilter>,
    ) -> Result<impl Stream<Item = AuditEvent> + use<>> {
        let stream = service::subscribe(app(ctx), caller(ctx), filter.unwrap_or_default().into())?;
        Ok(stream.map(AuditEvent::from))
    }
}
