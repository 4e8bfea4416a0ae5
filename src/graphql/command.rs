//! Remote commands: `sendCommand`, `cancelCommand`, `cancelCommandBatch`,
//! `command`, `commands`, `commandBatch`, the `commandUpdated`
//! subscription, and `Device.commands`.

use async_graphql::{ComplexObject, Context, Enum, ID, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::authz::{Guarded, Readable};
use super::connection::{Conn, from_page};
use super::device::Device;
use super::ids::parse_id;
use super::{app, caller};
use crate::error::ResourceKind;
use crate::service::authz::ObjectKind;
use crate::service::command as service;

#[derive(Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(
    name = "CommandState",
    remote = "crate::service::command::CommandState",
    rename_items = "SCREAMING_SNAKE_CASE"
)]
pub enum CommandStateGql {
    Queued,
    Delivered,
    Acknowledged,
    Succeeded,
    Failed,
    Expired,
    Cancelled,
}

/// A remote command to one device.
#[derive(SimpleObject)]
pub struct Command {
    id: ID,
    /// Shared by the commands of one `sendCommand`.
    batch_id: ID,
    device_id: ID,
    /// The device it is for (null without DEVICE_READ).
    device: Guarded<Device>,
    /// REBOOT, RESTART_AGENT or a configured custom name.
    name: String,
    args: Json<serde_json::Value>,
    state: CommandStateGql,
    /// What the device reported with SUCCEEDED or FAILED.
    result: Option<Json<serde_json::Value>>,
    message: Option<String>,
    expires_at: DateTime<Utc>,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// When a poll first handed it to the device.
    delivered_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl Readable for Command {
    const KIND: ObjectKind = ObjectKind::Command;
}

impl From<service::CommandView> for Command {
    fn from(view: service::CommandView) -> Self {
        let json = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        let c = view.row;
        Self {
            id: ID(c.id.to_string()),
            batch_id: ID(c.batch_id.to_string()),
            device_id: ID(c.device_id.to_string()),
            device: Guarded::new(view.device.into()),
            args: Json(json(&c.args)),
            state: view.state.into(),
            result: c.result.as_deref().map(|r| Json(json(r))),
            name: c.name,
            message: c.message,
            expires_at: c.expires_at,
            created_by: c.created_by,
            created_at: c.created_at,
            updated_at: c.updated_at,
            delivered_at: c.delivered_at,
            finished_at: c.finished_at,
        }
    }
}

/// How many commands of a batch are in each state.
#[derive(SimpleObject, Default)]
pub struct CommandCounts {
    queued: u64,
    delivered: u64,
    acknowledged: u64,
    succeeded: u64,
    failed: u64,
    expired: u64,
    cancelled: u64,
}

/// The commands of one `sendCommand`.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct CommandBatch {
    id: ID,
    name: String,
    created_by: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// Commands in the batch (one per device).
    total: u64,
    counts: CommandCounts,
}

impl Readable for CommandBatch {
    const KIND: ObjectKind = ObjectKind::CommandBatch;
}

impl From<service::Batch> for CommandBatch {
    fn from(b: service::Batch) -> Self {
        use service::CommandState as S;
        let c = |s: S| b.counts.get(&s).copied().unwrap_or_default();
        Self {
            id: ID(b.id.to_string()),
            counts: CommandCounts {
                queued: c(S::Queued),
                delivered: c(S::Delivered),
                acknowledged: c(S::Acknowledged),
                succeeded: c(S::Succeeded),
                failed: c(S::Failed),
                expired: c(S::Expired),
                cancelled: c(S::Cancelled),
            },
            name: b.name,
            created_by: b.created_by,
            created_at: b.created_at,
            expires_at: b.expires_at,
            total: b.total,
        }
    }
}

#[ComplexObject]
impl CommandBatch {
    /// Its commands, newest first.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn commands(
        &self,
        ctx: &Context<'_>,
        state: Option<CommandStateGql>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<Command>> {
        let filter = service::CommandFilter {
            batch: Some(parse_id("id", ResourceKind::CommandBatch, &self.id)?),
            state: state.map(Into::into),
            ..Default::default()
        };
        list(ctx, &filter, first, after).await
    }
}

async fn list(
    ctx: &Context<'_>,
    filter: &service::CommandFilter,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Conn<Command>> {
    let page = service::list(app(ctx), caller(ctx), filter, first, after.as_deref()).await?;
    Ok(from_page(page, after.is_some(), Command::from))
}

/// `Device.commands`.
pub(crate) async fn device_commands(
    ctx: &Context<'_>,
    device: uuid::Uuid,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Conn<Command>> {
    list(ctx, &service::CommandFilter { device: Some(device.to_string()), ..Default::default() }, first, after).await
}

#[derive(InputObject, Default)]
pub struct CommandFilter {
    /// A device id or endpoint id.
    device: Option<ID>,
    batch: Option<ID>,
    state: Option<CommandStateGql>,
    name: Option<String>,
}

#[derive(Default)]
pub struct CommandQuery;

#[Object]
impl CommandQuery {
    async fn command(&self, ctx: &Context<'_>, id: ID) -> Result<Command> {
        Ok(service::get(app(ctx), caller(ctx), parse_id("id", ResourceKind::Command, &id)?).await?.into())
    }

    /// Newest first.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn commands(
        &self,
        ctx: &Context<'_>,
        filter: Option<CommandFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Conn<Command>> {
        let f = filter.unwrap_or_default();
        let filter = service::CommandFilter {
            device: f.device.map(|d| d.0),
            batch: f.batch.as_ref().map(|b| parse_id("filter.batch", ResourceKind::CommandBatch, b)).transpose()?,
            state: f.state.map(Into::into),
            name: f.name,
        };
        list(ctx, &filter, first, after).await
    }

    /// A batch with its counts per state.
    async fn command_batch(&self, ctx: &Context<'_>, id: ID) -> Result<CommandBatch> {
        Ok(service::batch(app(ctx), caller(ctx), parse_id("id", ResourceKind::CommandBatch, &id)?).await?.into())
    }
}

#[derive(InputObject)]
pub struct SendCommandInput {
    /// Device ids or endpoint ids; or `group`.
    devices: Option<Vec<ID>>,
    group: Option<ID>,
    /// REBOOT, RESTART_AGENT or a name of `commands.custom_names`.
    name: String,
    /// Handed to the device as they are (at most `commands.max_args_bytes`).
    args: Option<Json<serde_json::Value>>,
    /// How long the command waits for its device (default
    /// `commands.default_expiry`).
    expires_in_seconds: Option<i64>,
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct SendCommandPayload {
    batch_id: ID,
    /// Null without COMMAND_READ.
    batch: Guarded<CommandBatch>,
}

#[ComplexObject]
impl SendCommandPayload {
    /// The commands sent, one per device, newest first (null without COMMAND_READ).
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn commands(&self, ctx: &Context<'_>, first: Option<i32>, after: Option<String>) -> Guarded<Conn<Command>> {
        let commands = async {
            let filter = service::CommandFilter {
                batch: Some(parse_id("batchId", ResourceKind::CommandBatch, &self.batch_id)?),
                ..Default::default()
            };
            list(ctx, &filter, first, after).await
        };
        Guarded::fetched(commands.await)
    }
}

#[derive(InputObject)]
pub struct CommandIdInput {
    id: ID,
}

#[derive(SimpleObject)]
pub struct CancelCommandPayload {
    /// Null without COMMAND_READ.
    command: Guarded<Command>,
}

#[derive(SimpleObject)]
pub struct CancelCommandBatchPayload {
    /// Null without COMMAND_READ.
    batch: Guarded<CommandBatch>,
}

#[derive(Default)]
pub struct CommandMutation;

#[Object]
impl CommandMutation {
    /// Send a command to devices or a group: one command per device,
    /// sharing a batch id.
    async fn send_command(&self, ctx: &Context<'_>, input: SendCommandInput) -> Result<SendCommandPayload> {
        let new = service::NewCommand {
            devices: input.devices.unwrap_or_default().into_iter().map(|d| d.0).collect(),
            group: input.group.as_ref().map(|g| parse_id("group", ResourceKind::DeviceGroup, g)).transpose()?,
            name: input.name,
            args: input.args.map(|a| a.0),
            expires_in_seconds: input.expires_in_seconds,
        };
        let batch = service::send(app(ctx), caller(ctx), new).await?;
        Ok(SendCommandPayload { batch_id: ID(batch.id.to_string()), batch: Guarded::new(batch.into()) })
    }

    /// Cancel a command that has not finished; its device no longer gets it.
    async fn cancel_command(&self, ctx: &Context<'_>, input: CommandIdInput) -> Result<CancelCommandPayload> {
        let id = parse_id("id", ResourceKind::Command, &input.id)?;
        Ok(CancelCommandPayload { command: Guarded::new(service::cancel(app(ctx), caller(ctx), id).await?.into()) })
    }

    /// Cancel every command of a batch that has not finished.
    async fn cancel_command_batch(
        &self,
        ctx: &Context<'_>,
        input: CommandIdInput,
    ) -> Result<CancelCommandBatchPayload> {
        let id = parse_id("id", ResourceKind::CommandBatch, &input.id)?;
        let batch = service::cancel_batch(app(ctx), caller(ctx), id).await?;
        Ok(CancelCommandBatchPayload { batch: Guarded::new(batch.into()) })
    }
}

/// One push of `commandUpdated`.
#[derive(SimpleObject)]
pub struct CommandBatchUpdate {
    /// The batch with its counts, now.
    batch: CommandBatch,
    /// The command that changed, when one did.
    command: Option<Command>,
}

#[derive(Default)]
pub struct CommandSubscription;

#[async_graphql::Subscription]
impl CommandSubscription {
    /// The batch at once, then after every change: its counts, and each
    /// command as its device takes it, acknowledges it and reports.
    async fn command_updated(
        &self,
        ctx: &Context<'_>,
        batch: ID,
    ) -> Result<impl futures::Stream<Item = CommandBatchUpdate> + use<>> {
        use futures::StreamExt;
        let id = parse_id("batch", ResourceKind::CommandBatch, &batch)?;
        let stream = service::watch(app(ctx), caller(ctx), id).await?;
        Ok(stream
            .map(|(batch, command)| CommandBatchUpdate { batch: batch.into(), command: command.map(Command::from) }))
    }
}
