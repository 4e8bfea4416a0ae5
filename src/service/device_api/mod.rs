//! Everything a device does, whatever protocol it speaks: authenticate
//! (its own credential, or a gateway's acting for one of its
//! sub-devices), poll for its update and commands (typed offers with an
//! ETag) and wait for news, report the steps of its update, report command
//! results and its inventory, and fetch the files it is offered.
//!
//! Who calls whom:
//!
//! ```text
//! http/device.rs (otadepot /device/v1) ─┐
//! http/enos.rs   (EnOS edge OTA)       ─┤
//! http/ddi.rs    (hawkBit DDI)         ─┼─> service::device_api ─┬─> service::deployment (update states, reconcile wake)
//! (next: Murano, MQTT)                 ─┘   poll · report · enos  ├─> service::command (delivery, results)
//!                                                                  ├─> service::device (credentials, inventory)
//!                                                                  ├─> service::enrollment (self-registration)
//!                                                                  ├─> service::package (the signed manifest)
//!                                                                  └─> service::content, device_download (files, their URLs)
//! ```
//!
//! An adapter parses its wire format into these types, makes one call, and
//! writes the answer in its own wire format; it holds no rule. A protocol's
//! own rules (EnOS flags and codes, DDI execution states) are pure
//! functions here from its messages to [`ReportStatus`] steps.
//!
//! Rules:
//! - Every device call commits in one transaction, however many steps it
//!   takes ([`report_steps`], [`enos::update_result`],
//!   [`enos::check_version`]); a failure at any step commits nothing.
//! - Each call that writes charges the device's write limit
//!   (`service/rate_limit.rs`) once where it enters here; a poll charges
//!   nothing.
//! - A device sees only its own updates, commands and files: another
//!   device's is NOT_FOUND.

pub mod batch;
pub mod ddi;
pub mod enos;
mod poll;
mod report;

use uuid::Uuid;

pub use poll::{CommandOffer, IDLE_ETAG, OfferAction, OfferedFile, Poll, UpdateOffer, concerns, poll, poll_wait};
pub use report::{ReportStatus, StatusReport, report, report_steps};

use crate::app::App;
use crate::auth::Ctx;
use crate::error::{Error, ResourceKind, Result};
use crate::service::command::CommandState;
use crate::service::device::{Device, Inventory, NewDevice, Registered};

/// The calling device, from its own secret (`otd_…`). Anything else (an
/// operator's token, say) is UNAUTHENTICATED.
pub async fn authenticate(app: &App, secret: &str, request_id: Option<String>) -> Result<Ctx> {
    if !crate::service::device::is_device_secret(secret) {
        return Err(Error::Unauthenticated("a device credential is required (not an operator token)".into()));
    }
    crate::service::device::authenticate(app, secret, request_id).await
}

/// A gateway (authenticated as `gateway`) acting for its sub-device
/// `endpoint_id`: the sub-device's context, or NOT_FOUND when it is not
/// this gateway's. Gateways act one level deep.
pub async fn act_for(app: &App, gateway: &Ctx, endpoint_id: &str) -> Result<Ctx> {
    crate::service::device::act_for(app, gateway, endpoint_id).await
}

/// A device registering itself with a fleet enrollment token
/// (`service::enrollment`): PENDING until an operator approves it; its
/// secret is in the answer, this once.
pub async fn enroll(app: &App, token: &str, input: NewDevice, request_id: Option<String>) -> Result<Registered> {
    crate::service::enrollment::enroll(app, token, input, request_id).await
}

/// The device itself, as the credential says.
pub async fn device(app: &App, ctx: &Ctx) -> Result<Device> {
    crate::service::device::me(app, ctx).await
}

/// What the device runs and is: one write against its rate limit; only
/// changes are written (and audited).
pub async fn inventory(app: &App, ctx: &Ctx, report: Inventory) -> Result<Device> {
    crate::service::device::report_inventory(app, ctx, report).await
}

/// How a command went, as its device says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandStatus {
    Acknowledged,
    Succeeded,
    Failed,
}

impl CommandStatus {
    /// The status by its name, or BAD_USER_INPUT on `status`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "ACKNOWLEDGED" => Ok(Self::Acknowledged),
            "SUCCEEDED" => Ok(Self::Succeeded),
            "FAILED" => Ok(Self::Failed),
            other => Err(Error::invalid("status", format!("{other:?}: one of ACKNOWLEDGED, SUCCEEDED, FAILED"))),
        }
    }
}

/// A command result: ACKNOWLEDGED, then SUCCEEDED or FAILED with `result`
/// (JSON) and `message`; one write against the rate limit.
pub async fn command_result(
    app: &App,
    ctx: &Ctx,
    command: Uuid,
    status: CommandStatus,
    result: Option<serde_json::Value>,
    message: Option<String>,
) -> Result<entity::command::Model> {
    let status = match status {
        CommandStatus::Acknowledged => CommandState::Acknowledged,
        CommandStatus::Succeeded => CommandState::Succeeded,
        CommandStatus::Failed => CommandState::Failed,
    };
    let outcome = crate::service::command::Outcome { status, result, message };
    crate::service::command::report(app, ctx, command, outcome).await
}

/// The (first) file of the device's own update `update_id`, to stream to
/// it; another device's update is NOT_FOUND.
pub async fn update_file(app: &App, ctx: &Ctx, update_id: Uuid) -> Result<crate::service::content::Download> {
    use entity::device_update;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let device = ctx.require_device()?;
    let update = device_update::Entity::find_by_id(update_id)
        .filter(device_update::Column::DeviceId.eq(device.id))
        .one(&app.db)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Update, update_id.to_string()))?;
    let deployment = crate::service::deployment::find(&app.db, update.deployment_id).await?;
    let package = crate::service::package::get_any(&app.db, deployment.package_id).await?;
    let file =
        package.files.first().ok_or_else(|| Error::not_found(ResourceKind::UpdateFile, update_id.to_string()))?;
    let access = crate::service::content::DownloadAccess::Caller(ctx.clone());
    crate::service::content::open_download_for_update(app, &access, file.content_id).await
}
