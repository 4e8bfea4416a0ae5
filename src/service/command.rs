//! Remote commands (DESIGN.md §4): an operator sends REBOOT, RESTART_AGENT
//! or a configured custom command to devices. Each device gets its own row;
//! the rows of one `sendCommand` share a batch id. Devices receive pending
//! commands with their poll and report how they went.
//!
//! `QUEUED → DELIVERED → ACKNOWLEDGED → SUCCEEDED | FAILED`, and `EXPIRED`
//! or `CANCELLED` from any state that is not final. A device acknowledges
//! before it reports the outcome; a repeated acknowledgement changes
//! nothing. Delivery is at least
//! once: a DELIVERED command is handed out with every poll until the device
//! acknowledges it (a device recognizes a repeat by its id), and an
//! overdue one is never handed out. A durable job marks overdue commands
//! EXPIRED.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use entity::command::{self, Column};
use sea_orm::prelude::Expr;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::{Ctx, Permission};
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;
use crate::service::pagination::{Page, PageRequest, cursor};

/// Job kind of the expiry sweep.
pub const EXPIRE_JOB: &str = "command.expire";
/// The names every server knows.
pub const BUILT_IN: [&str; 2] = ["REBOOT", "RESTART_AGENT"];
const INSERT_CHUNK: usize = 1_000;
/// Pending commands handed out in one poll, oldest first.
pub(crate) const PER_POLL: u64 = 20;
/// Overdue commands expired per statement (the sweep loops).
const EXPIRE_CHUNK: u64 = 1_000;
const CURSOR_KIND: &str = "command";

states!(CommandState {
    Queued => "QUEUED",
    Delivered => "DELIVERED",
    Acknowledged => "ACKNOWLEDGED",
    Succeeded => "SUCCEEDED",
    Failed => "FAILED",
    Expired => "EXPIRED",
    Cancelled => "CANCELLED",
});

impl CommandState {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Expired | Self::Cancelled)
    }

    const OPEN: [CommandState; 3] = [Self::Queued, Self::Delivered, Self::Acknowledged];
}

fn open_states() -> impl Iterator<Item = &'static str> {
    CommandState::OPEN.iter().map(|s| s.as_str())
}

/// What `sendCommand` is asked.
#[derive(Clone, Debug, Default)]
pub struct NewCommand {
    /// Device ids or endpoint ids (instead of a group).
    pub devices: Vec<String>,
    pub group: Option<Uuid>,
    pub name: String,
    pub args: Option<Value>,
    pub expires_in_seconds: Option<i64>,
}

/// The commands of one `sendCommand`, counted.
#[derive(Clone, Debug)]
pub struct Batch {
    pub id: Uuid,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub total: u64,
    pub counts: BTreeMap<CommandState, u64>,
}

impl Batch {
    /// Every command of the batch is in a final state.
    pub fn is_finished(&self) -> bool {
        CommandState::OPEN.iter().all(|s| self.counts.get(s).copied().unwrap_or_default() == 0)
    }
}

fn json_text(field: &str, value: &Value, max: usize) -> Result<String> {
    let text = value.to_string();
    if text.len() > max {
        return Err(Error::invalid(field, format!("at most {max} bytes as JSON, got {}", text.len())));
    }
    Ok(text)
}

/// `sendCommand`: one QUEUED command per target device, sharing a batch id.
pub async fn send(app: &App, ctx: &Ctx, input: NewCommand) -> Result<Batch> {
    ctx.require(Permission::CommandSend)?;
    let config = &app.config.commands;
    let name = input.name.trim();
    if !BUILT_IN.contains(&name) && !config.custom_names.iter().any(|c| c == name) {
        let allowed: Vec<&str> =
            BUILT_IN.iter().copied().chain(config.custom_names.iter().map(String::as_str)).collect();
        return Err(Error::invalid("name", format!("{name:?} is not a command; one of {}", allowed.join(", "))));
    }
    let args = json_text("args", input.args.as_ref().unwrap_or(&json!({})), config.max_args_bytes)?;
    let max_expiry = i64::try_from(config.max_expiry.as_secs()).unwrap_or(i64::MAX);
    let expires_in = match input.expires_in_seconds {
        None => TimeDelta::from_std(config.default_expiry).unwrap_or(TimeDelta::days(1)),
        Some(s) if (1..=max_expiry).contains(&s) => TimeDelta::seconds(s),
        Some(_) => return Err(Error::invalid("expiresInSeconds", format!("between 1 and {max_expiry}"))),
    };

    let mut tx = WriteTx::begin(app).await?;
    let (group, targets) =
        crate::service::device_group::resolve_targets(tx.conn(), input.group, &input.devices).await?;
    if targets.is_empty() {
        return Err(Error::invalid("group", "has no devices in use (REGISTERED or ACTIVE)"));
    }
    let batch = Uuid::now_v7();
    let now = Utc::now();
    let expires_at = now + expires_in;
    let (_, created_by) = ctx.actor.audit_identity();
    for chunk in targets.chunks(INSERT_CHUNK) {
        let rows = chunk.iter().map(|t| command::ActiveModel {
            id: sea_orm::Set(Uuid::now_v7()),
            batch_id: sea_orm::Set(batch),
            device_id: sea_orm::Set(t.id),
            name: sea_orm::Set(name.to_owned()),
            args: sea_orm::Set(args.clone()),
            state: sea_orm::Set(CommandState::Queued.as_str().to_owned()),
            result: sea_orm::Set(None),
            message: sea_orm::Set(None),
            expires_at: sea_orm::Set(expires_at),
            created_by: sea_orm::Set(created_by.clone()),
            created_at: sea_orm::Set(now),
            updated_at: sea_orm::Set(now),
            delivered_at: sea_orm::Set(None),
            finished_at: sea_orm::Set(None),
        });
        command::Entity::insert_many(rows).exec_without_returning(tx.conn()).await?;
    }
    tx.audit(
        ctx,
        "command.send",
        ResourceKind::CommandBatch,
        &batch.to_string(),
        json!({
            "name": name, "args": serde_json::from_str::<Value>(&args).unwrap_or_default(),
            "group_id": group, "devices": targets.len(), "expires_at": expires_at,
        }),
    )
    .await?;
    tx.notify(Event::DevicesReleased(Arc::new(targets.iter().map(|t| t.id).collect())));
    tx.notify(Event::CommandBatchChanged(batch));
    tx.commit().await?;
    batch_unchecked(&app.db, batch).await
}

/// A command with its device (read for a whole page at once).
#[derive(Clone, Debug)]
pub struct CommandView {
    pub row: command::Model,
    pub state: CommandState,
    pub device: crate::service::device::Device,
}

async fn views(conn: &impl ConnectionTrait, rows: Vec<command::Model>) -> Result<Vec<CommandView>> {
    let devices = crate::service::device::by_ids(conn, rows.iter().map(|r| r.device_id).collect()).await?;
    rows.into_iter()
        .map(|row| {
            let device = devices
                .get(&row.device_id)
                .cloned()
                .ok_or_else(|| Error::not_found(ResourceKind::Device, row.device_id.to_string()))?;
            Ok(CommandView { state: CommandState::parse(&row.state)?, device, row })
        })
        .collect()
}

async fn view_of(conn: &impl ConnectionTrait, id: Uuid) -> Result<CommandView> {
    let row = find(conn, id).await?;
    views(conn, vec![row]).await?.pop().ok_or_else(|| Error::not_found(ResourceKind::Command, id.to_string()))
}

async fn find(conn: &impl ConnectionTrait, id: Uuid) -> Result<command::Model> {
    command::Entity::find_by_id(id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Command, id.to_string()))
}

/// `cancelCommand`: a command not yet finished becomes CANCELLED; the
/// device no longer sees it, and its later report is refused.
pub async fn cancel(app: &App, ctx: &Ctx, id: Uuid) -> Result<CommandView> {
    ctx.require(Permission::CommandSend)?;
    let mut tx = WriteTx::begin(app).await?;
    // Before reading: a device's report committing in between would
    // otherwise be overwritten by, or hidden from, this cancel.
    crate::service::audit::serialize_writes(tx.conn()).await?;
    let row = find(tx.conn(), id).await?;
    let from = CommandState::parse(&row.state)?;
    if from.is_final() {
        return Err(Error::InvalidState(format!("command {id} is {}; it cannot be cancelled", from.as_str())));
    }
    let now = Utc::now();
    let changed = command::Entity::update_many()
        .col_expr(Column::State, Expr::value(CommandState::Cancelled.as_str()))
        .col_expr(Column::FinishedAt, Expr::value(now))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::State.eq(from.as_str()))
        .exec(tx.conn())
        .await?;
    if changed.rows_affected != 1 {
        return Err(Error::InvalidState(format!("command {id} changed meanwhile; look again")));
    }
    tx.audit(
        ctx,
        "command.cancel",
        ResourceKind::Command,
        &id.to_string(),
        json!({ "batch_id": row.batch_id, "device_id": row.device_id, "name": row.name, "was": from.as_str() }),
    )
    .await?;
    // No DevicesReleased: a cancel only takes work away, and the device's
    // next poll reads its commands afresh (it is not idle while one is open).
    tx.notify(Event::CommandChanged { batch: row.batch_id, command: id });
    tx.commit().await?;
    view_of(&app.db, id).await
}

/// `cancelCommandBatch`: every command of the batch not yet finished.
pub async fn cancel_batch(app: &App, ctx: &Ctx, batch: Uuid) -> Result<Batch> {
    ctx.require(Permission::CommandSend)?;
    let mut tx = WriteTx::begin(app).await?;
    crate::service::audit::serialize_writes(tx.conn()).await?;
    batch_unchecked(tx.conn(), batch).await?;
    let open: Vec<&str> = open_states().collect();
    let now = Utc::now();
    let cancelled = command::Entity::update_many()
        .col_expr(Column::State, Expr::value(CommandState::Cancelled.as_str()))
        .col_expr(Column::FinishedAt, Expr::value(now))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::BatchId.eq(batch))
        .filter(Column::State.is_in(open))
        .exec(tx.conn())
        .await?
        .rows_affected;
    tx.audit(
        ctx,
        "command_batch.cancel",
        ResourceKind::CommandBatch,
        &batch.to_string(),
        json!({ "cancelled": cancelled }),
    )
    .await?;
    tx.notify(Event::CommandBatchChanged(batch));
    tx.commit().await?;
    batch_unchecked(&app.db, batch).await
}

pub async fn get(app: &App, ctx: &Ctx, id: Uuid) -> Result<CommandView> {
    ctx.require(Permission::CommandRead)?;
    view_of(&app.db, id).await
}

pub async fn batch(app: &App, ctx: &Ctx, id: Uuid) -> Result<Batch> {
    ctx.require(Permission::CommandRead)?;
    batch_unchecked(&app.db, id).await
}

async fn batch_unchecked(conn: &impl ConnectionTrait, id: Uuid) -> Result<Batch> {
    let first = command::Entity::find()
        .filter(Column::BatchId.eq(id))
        .order_by_asc(Column::Id)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::CommandBatch, id.to_string()))?;
    let rows: Vec<(String, i64)> = command::Entity::find()
        .select_only()
        .column(Column::State)
        .column_as(Column::Id.count(), "n")
        .filter(Column::BatchId.eq(id))
        .group_by(Column::State)
        .into_tuple()
        .all(conn)
        .await?;
    let mut counts = BTreeMap::new();
    for (state, n) in rows {
        counts.insert(CommandState::parse(&state)?, u64::try_from(n).unwrap_or_default());
    }
    Ok(Batch {
        id,
        name: first.name,
        created_by: first.created_by,
        created_at: first.created_at,
        expires_at: first.expires_at,
        total: counts.values().sum(),
        counts,
    })
}

#[derive(Clone, Debug, Default)]
pub struct CommandFilter {
    /// A device id or endpoint id.
    pub device: Option<String>,
    pub batch: Option<Uuid>,
    pub state: Option<CommandState>,
    pub name: Option<String>,
}

/// Newest first.
pub async fn list(
    app: &App,
    ctx: &Ctx,
    filter: &CommandFilter,
    first: Option<i32>,
    after: Option<&str>,
) -> Result<Page<CommandView>> {
    ctx.require(Permission::CommandRead)?;
    let page = PageRequest::parse_uuid(CURSOR_KIND, first, after)?;
    let mut condition = Condition::all();
    if let Some(device) = &filter.device {
        let by_endpoint = entity::device::Entity::find()
            .select_only()
            .column(entity::device::Column::Id)
            .filter(entity::device::Column::EndpointId.eq(device.as_str()));
        let mut named =
            Condition::any().add(Column::DeviceId.in_subquery(sea_orm::QueryTrait::into_query(by_endpoint)));
        if let Ok(id) = device.parse::<Uuid>() {
            named = named.add(Column::DeviceId.eq(id));
        }
        condition = condition.add(named);
    }
    if let Some(batch) = filter.batch {
        condition = condition.add(Column::BatchId.eq(batch));
    }
    if let Some(state) = filter.state {
        condition = condition.add(Column::State.eq(state.as_str()));
    }
    if let Some(name) = &filter.name {
        condition = condition.add(Column::Name.eq(name.trim()));
    }
    let query = command::Entity::find().filter(condition);
    let (rows, has_next_page, total_count) =
        crate::service::pagination::newest_first(&app.db, query, Column::Id, &page).await?;
    let items = views(&app.db, rows).await?;
    Ok(Page {
        items: items.into_iter().map(|c| (cursor(CURSOR_KIND, c.row.id), c)).collect(),
        has_next_page,
        total_count,
    })
}

// ---------------------------------------------------------------------------
// The device side.

/// The QUEUED ones of `commands` were handed to their device: DELIVERED.
pub(crate) async fn mark_delivered(app: &App, commands: &[command::Model]) -> Result<()> {
    let queued: Vec<&command::Model> = commands.iter().filter(|c| c.state == CommandState::Queued.as_str()).collect();
    if queued.is_empty() {
        return Ok(());
    }
    let mut tx = WriteTx::begin(app).await?;
    let now = Utc::now();
    command::Entity::update_many()
        .col_expr(Column::State, Expr::value(CommandState::Delivered.as_str()))
        .col_expr(Column::DeliveredAt, Expr::value(now))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.is_in(queued.iter().map(|c| c.id)))
        .filter(Column::State.eq(CommandState::Queued.as_str()))
        .exec(tx.conn())
        .await?;
    for c in queued {
        tx.notify(Event::CommandChanged { batch: c.batch_id, command: c.id });
    }
    tx.commit().await
}

/// What a device reports of a command.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// ACKNOWLEDGED, SUCCEEDED or FAILED (`device_api::CommandStatus`).
    pub status: CommandState,
    pub result: Option<Value>,
    pub message: Option<String>,
}

/// `POST /device/v1/commands/{id}`: ACKNOWLEDGED, then SUCCEEDED or FAILED;
/// one write against the device's rate limit.
pub async fn report(app: &App, ctx: &Ctx, id: Uuid, outcome: Outcome) -> Result<command::Model> {
    let device = ctx.require_device()?.clone();
    app.rate_limits.device_write(device.id)?;
    let result = outcome
        .result
        .as_ref()
        .filter(|r| !r.is_null())
        .map(|r| json_text("result", r, app.config.commands.max_args_bytes))
        .transpose()?;
    if outcome.message.as_ref().is_some_and(|m| m.chars().count() > 1024) {
        return Err(Error::invalid("message", "at most 1024 characters"));
    }
    let mut tx = WriteTx::begin(app).await?;
    // The write lock first, as cancel and expiry take it: the same order
    // everywhere, so a report and a cancel never deadlock on PostgreSQL.
    crate::service::audit::serialize_writes(tx.conn()).await?;
    let row = command::Entity::find_by_id(id)
        .filter(Column::DeviceId.eq(device.id))
        .one(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Command, id.to_string()))?;
    let from = CommandState::parse(&row.state)?;
    let to = match outcome.status {
        to @ (CommandState::Acknowledged | CommandState::Succeeded | CommandState::Failed) => to,
        other => {
            return Err(Error::invalid(
                "status",
                format!("{:?}: one of ACKNOWLEDGED, SUCCEEDED, FAILED", other.as_str()),
            ));
        }
    };
    let now = Utc::now();
    if !from.is_final() && row.expires_at <= now {
        return Err(Error::InvalidState(format!("command {id} expired at {}", row.expires_at.to_rfc3339())));
    }
    use CommandState::*;
    match (from, to) {
        // A poll that handed it out may not have been recorded (QUEUED):
        // the acknowledgement says it was delivered.
        (Queued | Delivered, Acknowledged) => {}
        // Acknowledged again (a retried request): nothing changes.
        (Acknowledged, Acknowledged) => return Ok(row),
        (Acknowledged, Succeeded | Failed) => {}
        (Queued | Delivered, Succeeded | Failed) => {
            return Err(Error::InvalidState(format!(
                "command {id} is {}; acknowledge it (ACKNOWLEDGED) before reporting {}",
                from.as_str(),
                to.as_str()
            )));
        }
        _ => {
            return Err(Error::InvalidState(format!(
                "command {id} is {}; it cannot become {}",
                from.as_str(),
                to.as_str()
            )));
        }
    }
    let mut change = command::Entity::update_many()
        .col_expr(Column::State, Expr::value(to.as_str()))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::State.eq(from.as_str()));
    if row.delivered_at.is_none() {
        change = change.col_expr(Column::DeliveredAt, Expr::value(now));
    }
    if to.is_final() {
        change = change
            .col_expr(Column::FinishedAt, Expr::value(now))
            .col_expr(Column::Result, Expr::value(result))
            .col_expr(Column::Message, Expr::value(outcome.message.clone()));
    }
    if change.exec(tx.conn()).await?.rows_affected != 1 {
        return Err(Error::InvalidState(format!("command {id} changed meanwhile; report again")));
    }
    if to.is_final() {
        let action = if to == CommandState::Succeeded { "command.succeeded" } else { "command.failed" };
        tx.audit(
            ctx,
            action,
            ResourceKind::Command,
            &id.to_string(),
            json!({ "batch_id": row.batch_id, "name": row.name, "message": outcome.message }),
        )
        .await?;
    }
    tx.notify(Event::CommandChanged { batch: row.batch_id, command: id });
    tx.commit().await?;
    find(&app.db, id).await
}

// ---------------------------------------------------------------------------
// Expiry.

/// Mark every overdue command EXPIRED (one audit event per batch touched);
/// returns how many.
pub async fn expire_overdue(app: &App) -> Result<u64> {
    let system = Ctx::system("command-expiry");
    let mut total = 0;
    loop {
        let mut tx = WriteTx::begin(app).await?;
        // Before selecting: two sweeps (two workers) never count the same
        // commands.
        crate::service::audit::serialize_writes(tx.conn()).await?;
        let now = Utc::now();
        let overdue: Vec<(Uuid, Uuid)> = command::Entity::find()
            .select_only()
            .columns([Column::Id, Column::BatchId])
            .filter(Column::State.is_in(open_states()))
            .filter(Column::ExpiresAt.lte(now))
            .order_by_asc(Column::Id)
            .limit(EXPIRE_CHUNK)
            .into_tuple()
            .all(tx.conn())
            .await?;
        if overdue.is_empty() {
            return Ok(total);
        }
        command::Entity::update_many()
            .col_expr(Column::State, Expr::value(CommandState::Expired.as_str()))
            .col_expr(Column::FinishedAt, Expr::value(now))
            .col_expr(Column::UpdatedAt, Expr::value(now))
            .filter(Column::Id.is_in(overdue.iter().map(|(id, _)| *id)))
            .filter(Column::State.is_in(open_states()))
            .exec(tx.conn())
            .await?;
        let mut batches: BTreeMap<Uuid, u64> = BTreeMap::new();
        for (_, batch) in &overdue {
            *batches.entry(*batch).or_default() += 1;
        }
        for (batch, expired) in &batches {
            tx.audit(
                &system,
                "command_batch.expire",
                ResourceKind::CommandBatch,
                &batch.to_string(),
                json!({ "expired": expired }),
            )
            .await?;
            tx.notify(Event::CommandBatchChanged(*batch));
        }
        tx.commit().await?;
        total += overdue.len() as u64;
    }
}

/// The batch at once, then after every change, with the command that
/// changed (when one did).
pub async fn watch(
    app: &App,
    ctx: &Ctx,
    batch: Uuid,
) -> Result<futures::stream::BoxStream<'static, (Batch, Option<CommandView>)>> {
    use futures::StreamExt;
    ctx.require(Permission::CommandRead)?;
    let receiver = app.events.subscribe();
    let first = batch_unchecked(&app.db, batch).await?;
    if first.is_finished() {
        // Nothing will change any more: the counts, and the end.
        return Ok(futures::stream::once(async move { (first, None) }).boxed());
    }
    let db = app.db.clone();
    let changes = futures::stream::unfold(Some(receiver), move |receiver| {
        let db = db.clone();
        async move {
            let mut receiver = receiver?;
            loop {
                let changed = match receiver.recv().await {
                    Ok(Event::CommandBatchChanged(b)) if b == batch => None,
                    Ok(Event::CommandChanged { batch: b, command }) if b == batch => Some(command),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                let Ok(counts) = batch_unchecked(&db, batch).await else { continue };
                let command = match changed {
                    Some(id) => view_of(&db, id).await.ok(),
                    None => None,
                };
                // Every command finished: the last push, and the end.
                let next = (!counts.is_finished()).then_some(receiver);
                return Some(((counts, command), next));
            }
        }
    });
    Ok(futures::stream::once(async move { (first, None) }).chain(changes).boxed())
}
