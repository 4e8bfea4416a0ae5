//! The audit trail: an append-only, hash-chained log of every change.
//!
//! Each event stores the SHA-256 of the previous one (`prev_hash`) and its
//! own `hash` over its canonical form, so editing, removing or reordering a
//! row breaks the chain where it happened and [`verify`] names that row.
//!
//! Rule: appends are serialized. On PostgreSQL a transaction-scoped
//! advisory lock is taken before reading the chain head; on SQLite the
//! write transaction (`BEGIN IMMEDIATE`) already holds the only write lock.
//! Concurrent mutations therefore never fork the chain.

use chrono::{DateTime, SubsecRound, Utc};
use entity::audit_event::{self, Column};
use futures::Stream;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, Result};
use crate::service::pagination::{Page, PageRequest, cursor};

/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Arbitrary, fixed key of the advisory lock that serializes appends on PostgreSQL.
const CHAIN_LOCK_KEY: i64 = 0x6f74_6164_6570_6f74; // "otadepot"

/// Keys whose values never enter an audit event.
/// Parts of a `details` key (any case) that mark its value as a secret.
/// Broad on purpose: a harmless key that happens to match (`keyboard`)
/// loses its value in the trail, a secret under an unforeseen name
/// (`wifi_psk`, `api_key`, `passphrase`) never reaches it.
const SECRET_KEYS: &[&str] = &["secret", "pass", "token", "credential", "private", "psk", "key"];

/// Wait until no other write transaction holds the chain, and hold it
/// until `tx` ends (a no-op on SQLite, whose write transactions are
/// serialized already). Every write appends an audit event, so taking this
/// early makes a check-then-insert in `tx` race-free on PostgreSQL too.
pub async fn serialize_writes(tx: &DatabaseTransaction) -> Result<()> {
    if tx.get_database_backend() == DbBackend::Postgres {
        // `execute_raw`, not `execute_unprepared`: counted with the others.
        tx.execute_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})"),
        ))
        .await?;
    }
    Ok(())
}

/// Append one event to the chain inside `tx` (use [`super::WriteTx::audit`]).
pub async fn append(
    tx: &DatabaseTransaction,
    ctx: &Ctx,
    action: &str,
    object_kind: &str,
    object_id: &str,
    details: Value,
) -> Result<audit_event::Model> {
    serialize_writes(tx).await?;
    let head = audit_event::Entity::find().order_by_desc(Column::Seq).one(tx).await?;
    let (seq, prev_hash) = match head {
        Some(head) => (head.seq + 1, head.hash),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let (actor_kind, actor_id) = ctx.actor.audit_identity();
    let mut event = audit_event::Model {
        id: Uuid::now_v7(),
        seq,
        // Microseconds: what both databases store exactly, so the hash holds.
        at: Utc::now().trunc_subsecs(6),
        actor_kind: actor_kind.to_owned(),
        actor_id,
        action: action.to_owned(),
        object_kind: object_kind.to_owned(),
        object_id: object_id.to_owned(),
        details: redact(details),
        request_id: ctx.request_id.clone(),
        prev_hash,
        hash: String::new(),
    };
    event.hash = hash(&event);
    let active: audit_event::ActiveModel = event.clone().into();
    audit_event::Entity::insert(active).exec_without_returning(tx).await?;
    Ok(event)
}

/// The hash of an event: SHA-256 over the canonical JSON array of its
/// fields, `prev_hash` last. Documented in docs/architecture.md.
pub fn hash(event: &audit_event::Model) -> String {
    let canonical = crate::canonical_json::to_string(&serde_json::json!([
        event.seq,
        event.id.to_string(),
        format_at(event.at),
        event.actor_kind,
        event.actor_id,
        event.action,
        event.object_kind,
        event.object_id,
        event.details,
        event.request_id,
        event.prev_hash,
    ]));
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn format_at(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Replace the value of any key that looks like it holds a secret.
fn redact(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, item)| {
                    let lower = key.to_ascii_lowercase();
                    if SECRET_KEYS.iter().any(|s| lower.contains(s)) {
                        (key, Value::String("[redacted]".into()))
                    } else {
                        (key, redact(item))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        other => other,
    }
}

#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Actor id (operator subject, device id, or system job name).
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `*` (`role.*`).
    pub action: Option<String>,
    pub object_kind: Option<String>,
    pub object_id: Option<String>,
    /// A device id: events with the device as actor or as object.
    pub device: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl AuditFilter {
    fn condition(&self) -> Condition {
        let mut cond = Condition::all();
        if let Some(actor) = &self.actor {
            cond = cond.add(Column::ActorId.eq(actor.as_str()));
        }
        if let Some(action) = &self.action {
            cond = match action.strip_suffix('*') {
                Some(prefix) => cond.add(Column::Action.starts_with(prefix)),
                None => cond.add(Column::Action.eq(action.as_str())),
            };
        }
        if let Some(kind) = &self.object_kind {
            cond = cond.add(Column::ObjectKind.eq(kind.as_str()));
        }
        if let Some(id) = &self.object_id {
            cond = cond.add(Column::ObjectId.eq(id.as_str()));
        }
        if let Some(device) = &self.device {
            cond = cond.add(
                Condition::any()
                    .add(Condition::all().add(Column::ActorKind.eq("device")).add(Column::ActorId.eq(device.as_str())))
                    .add(
                        Condition::all().add(Column::ObjectKind.eq("device")).add(Column::ObjectId.eq(device.as_str())),
                    ),
            );
        }
        if let Some(from) = self.from {
            cond = cond.add(Column::At.gte(from));
        }
        if let Some(to) = self.to {
            cond = cond.add(Column::At.lt(to));
        }
        cond
    }

    fn matches(&self, event: &audit_event::Model) -> bool {
        self.actor.as_ref().is_none_or(|a| *a == event.actor_id)
            && self.action.as_ref().is_none_or(|a| match a.strip_suffix('*') {
                Some(prefix) => event.action.starts_with(prefix),
                None => *a == event.action,
            })
            && self.object_kind.as_ref().is_none_or(|k| *k == event.object_kind)
            && self.object_id.as_ref().is_none_or(|i| *i == event.object_id)
            && self.device.as_ref().is_none_or(|d| {
                (event.actor_kind == "device" && *d == event.actor_id)
                    || (event.object_kind == "device" && *d == event.object_id)
            })
            && self.from.is_none_or(|f| event.at >= f)
            && self.to.is_none_or(|t| event.at < t)
    }
}

const CURSOR_KIND: &str = "audit";

/// Newest first.
pub async fn list(
    app: &App,
    ctx: &Ctx,
    filter: &AuditFilter,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<audit_event::Model>> {
    ctx.require(Permission::AuditRead)?;
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from > to
    {
        return Err(Error::invalid("filter.from", "must not be after filter.to"));
    }
    let page = PageRequest::parse_i64(CURSOR_KIND, first, after)?;
    let condition = filter.condition();
    let total_count = audit_event::Entity::find().filter(condition.clone()).count(&app.db).await?;
    let mut query = audit_event::Entity::find().filter(condition);
    if let Some(after) = page.after {
        query = query.filter(Column::Seq.lt(after));
    }
    let mut rows = query.order_by_desc(Column::Seq).limit(page.first + 1).all(&app.db).await?;
    let has_next_page = rows.len() as u64 > page.first;
    rows.truncate(page.first as usize);
    Ok(Page { items: rows.into_iter().map(|e| (cursor(CURSOR_KIND, e.seq), e)).collect(), has_next_page, total_count })
}

/// The outcome of walking the whole chain.
#[derive(Clone, Debug)]
pub struct ChainVerification {
    pub checked: u64,
    pub first_broken: Option<BrokenLink>,
    /// The last event that checked out: its `seq` and `hash`. Recorded
    /// elsewhere, it anchors the chain (see `otadepot audit verify --anchor`).
    pub head: Option<(i64, String)>,
}

#[derive(Clone, Debug)]
pub struct BrokenLink {
    pub seq: i64,
    pub id: Uuid,
    pub reason: String,
}

/// Walk the chain from the first event, in pages, and stop at the first
/// event whose position, link or content does not hold.
pub async fn verify(app: &App, ctx: &Ctx) -> Result<ChainVerification> {
    ctx.require(Permission::AuditRead)?;
    verify_chain(&app.db).await
}

/// [`verify`] without the permission check, for the CLI.
pub async fn verify_chain(db: &impl ConnectionTrait) -> Result<ChainVerification> {
    const BATCH: u64 = 1000;
    let mut expected_seq = 1;
    let mut prev_hash = GENESIS_HASH.to_owned();
    let mut checked = 0;
    loop {
        let batch = audit_event::Entity::find()
            .filter(Column::Seq.gte(expected_seq))
            .order_by_asc(Column::Seq)
            .limit(BATCH)
            .all(db)
            .await?;
        let done = (batch.len() as u64) < BATCH;
        for event in batch {
            let broken = |reason: String| BrokenLink { seq: event.seq, id: event.id, reason };
            let problem = if event.seq != expected_seq {
                Some(format!("sequence gap: expected {expected_seq}, found {}", event.seq))
            } else if event.prev_hash != prev_hash {
                Some("prev_hash does not match the previous event's hash".to_owned())
            } else if hash(&event) != event.hash {
                Some("content does not match its hash".to_owned())
            } else {
                None
            };
            if let Some(reason) = problem {
                let head = (checked > 0).then(|| (expected_seq - 1, prev_hash.clone()));
                return Ok(ChainVerification { checked, first_broken: Some(broken(reason)), head });
            }
            checked += 1;
            expected_seq += 1;
            prev_hash = event.hash;
        }
        if done {
            let head = (checked > 0).then(|| (expected_seq - 1, prev_hash.clone()));
            return Ok(ChainVerification { checked, first_broken: None, head });
        }
    }
}

/// Live audit events matching `filter`, from now on.
pub fn subscribe(app: &App, ctx: &Ctx, filter: AuditFilter) -> Result<impl Stream<Item = audit_event::Model> + use<>> {
    ctx.require(Permission::AuditRead)?;
    let receiver = app.events.subscribe();
    Ok(futures::stream::unfold((receiver, filter), |(mut receiver, filter)| async move {
        loop {
            match receiver.recv().await {
                Ok(Event::Audit(event)) if filter.matches(&event) => {
                    return Some((*event, (receiver, filter)));
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "audit subscriber lagged; events skipped");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }))
}

/// Count of events, for metrics.
pub async fn count(db: &impl ConnectionTrait) -> Result<u64> {
    Ok(audit_event::Entity::find().count(db).await?)
}

/// Events with `from <= at < to`, oldest first, `page` at a time, handed
/// to `each` (the CLI's streaming export: one page in memory at a time).
pub async fn export(
    db: &impl ConnectionTrait,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    mut each: impl FnMut(&audit_event::Model) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    const PAGE: u64 = 1000;
    let filter = AuditFilter { from, to, ..Default::default() };
    let mut after = 0;
    let mut count = 0;
    loop {
        let page = audit_event::Entity::find()
            .filter(filter.condition())
            .filter(Column::Seq.gt(after))
            .order_by_asc(Column::Seq)
            .limit(PAGE)
            .all(db)
            .await?;
        for event in &page {
            each(event)?;
            after = event.seq;
            count += 1;
        }
        if (page.len() as u64) < PAGE {
            return Ok(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn secrets_never_reach_details() {
        let details = super::redact(json!({
            "name": "dev-1",
            "secret": "s3cr3t",
            "nested": [{"deviceToken": "abc", "ok": 1}],
            "jwt_private_key": "-----BEGIN",
            "wifi": {"PSK": "p", "ssid": "home", "passphrase": "p", "api_key": "k", "Pass": "p"},
        }));
        assert_eq!(
            details,
            json!({"name": "dev-1", "secret": "[redacted]", "nested": [{"deviceToken": "[redacted]", "ok": 1}],
                "jwt_private_key": "[redacted]",
                "wifi": {"PSK": "[redacted]", "ssid": "home", "passphrase": "[redacted]", "api_key": "[redacted]", "Pass": "[redacted]"}})
        );
    }
}
