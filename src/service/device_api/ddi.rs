//! The hawkBit DDI protocol's rules (Direct Device Integration, what
//! SWUpdate's suricatta and rauc-hawkbit-updater speak), over the same
//! updates: what a base poll shows, what a deployment is made of, and
//! what a feedback means as steps of the device_update state machine.
//!
//! Rules:
//! - An update's DDI action id is its `action_id` (a positive int32:
//!   swupdate reads it as a C `int`); one device's action id of another
//!   device is NOT_FOUND.
//! - A device sees an update's `deploymentBase` only once its install is
//!   released: swupdate installs while it downloads and has no
//!   download-only step, so a DOWNLOAD_ONLY or COORDINATED deployment shows
//!   the link when its install is released, never before.
//! - The action stays offered until a `closed` feedback arrives (swupdate
//!   reports success only after its restart).
//! - The mapping of feedback to steps is a pure function
//!   ([`feedback_steps`]); a client skips steps (swupdate never sends
//!   `downloaded`), and the steps it skipped are filled in, all in one
//!   transaction, so a `closed` + `success` from RELEASED ends INSTALLED.
//! - A feedback that changes nothing (a repeat, progress on a finished
//!   update) is a success: a stock client answered 4xx retries the whole
//!   update at every poll.

use entity::{deployment, device_reported_attribute, device_update};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::report::{self, Note, ReportStatus, StatusReport};
use crate::app::App;
use crate::auth::Ctx;
use crate::error::{Error, ResourceKind, Result};
use crate::service::content::DownloadAccess;
use crate::service::deployment::window::MaintenanceWindow;
use crate::service::deployment::{ActionType, UpdateState};
use crate::service::device::Inventory;
use crate::service::device_cache::DdiFacts;

/// What a base poll shows a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// An update is in flight (or a cancel not acknowledged): the device
    /// polls at `ddi.polling_sleep_active`.
    pub active: bool,
    /// At most one of deploymentBase or cancelAction.
    pub action: Option<BaseAction>,
    /// The device has not sent its attributes yet: ask for them
    /// (`configData` link).
    pub config_data: bool,
    /// The action id of the update it last installed.
    pub installed: Option<i32>,
}

impl Base {
    /// The answer with nothing to do.
    fn idle(facts: DdiFacts) -> Self {
        Self { active: false, action: None, config_data: !facts.has_attributes, installed: facts.installed }
    }
}

/// The link a base poll carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseAction {
    /// `deploymentBase/{action_id}?c={etag}`.
    Deployment { action_id: i32, etag: i32 },
    /// `cancelAction/{action_id}`.
    Cancel { action_id: i32 },
}

/// A DDI deployment: what `deploymentBase/{actionId}` (and
/// `installedBase/{actionId}`) describe.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub action_id: i32,
    /// The device update's id.
    pub update_id: Uuid,
    /// `deployment.download`: `forced`, or `attempt` for a SOFT action type.
    pub download: &'static str,
    /// `deployment.update`: the same, or `skip` while the install is held.
    pub update: &'static str,
    /// `available` or `unavailable` when the deployment has a maintenance
    /// window (clients that read it wait for `available`).
    pub maintenance_window: Option<&'static str>,
    /// The package: `part` is its component.
    pub package_id: Uuid,
    pub component: String,
    pub name: String,
    pub version: String,
    pub artifacts: Vec<Artifact>,
}

/// One file of a DDI deployment.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub filename: String,
    pub content_id: Uuid,
    pub size: i64,
    pub sha1: Option<String>,
    pub md5: Option<String>,
    pub sha256: Option<String>,
    /// The query string that signs this file's URL for the device's update
    /// (none for an installed update, whose files are not offered).
    pub signed_query: Option<String>,
}

impl Artifact {
    fn of(file: &crate::service::package::PackageFile) -> Self {
        Self {
            filename: file.name.clone(),
            content_id: file.content_id,
            size: file.length,
            sha1: file.sha1.clone(),
            md5: file.md5.clone(),
            sha256: file.sha256.clone(),
            signed_query: None,
        }
    }
}

/// `status.execution` of a feedback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    Closed,
    Proceeding,
    Canceled,
    Scheduled,
    Rejected,
    Resumed,
    Downloaded,
    Download,
}

impl Execution {
    /// hawkBit's names; BAD_USER_INPUT on `status.execution` for others.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "closed" => Self::Closed,
            "proceeding" => Self::Proceeding,
            "canceled" => Self::Canceled,
            "scheduled" => Self::Scheduled,
            "rejected" => Self::Rejected,
            "resumed" => Self::Resumed,
            "downloaded" => Self::Downloaded,
            "download" => Self::Download,
            other => {
                return Err(Error::invalid(
                    "status.execution",
                    format!(
                        "{other:?}: one of closed, proceeding, canceled, scheduled, rejected, resumed, downloaded, download"
                    ),
                ));
            }
        })
    }
}

/// `status.result.finished` of a feedback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    Success,
    Failure,
    None,
}

impl Finished {
    /// hawkBit's names (absent is `none`); BAD_USER_INPUT otherwise.
    pub fn parse(name: Option<&str>) -> Result<Self> {
        Ok(match name {
            Some("success") => Self::Success,
            Some("failure") => Self::Failure,
            Some("none") | None => Self::None,
            Some(other) => {
                return Err(Error::invalid(
                    "status.result.finished",
                    format!("{other:?}: one of success, failure, none"),
                ));
            }
        })
    }
}

/// A feedback on an action, as the device sent it.
#[derive(Clone, Debug)]
pub struct Feedback {
    pub execution: Execution,
    pub finished: Finished,
    /// `progress {cnt, of}`, as sent (`cnt` may exceed `of`).
    pub progress: Option<(i64, i64)>,
    pub details: Vec<String>,
}

impl Feedback {
    /// The percentage `progress` stands for, if it says one.
    fn percent(&self) -> Option<i32> {
        let (cnt, of) = self.progress?;
        if of <= 0 {
            return None;
        }
        i32::try_from((cnt.max(0).saturating_mul(100) / of).clamp(0, 100)).ok()
    }

    /// The details as one message (at most the 1,024 characters a report
    /// keeps; the end is kept, where clients put the reason).
    fn message(&self) -> Option<String> {
        let text = self.details.iter().map(|d| d.trim()).filter(|d| !d.is_empty()).collect::<Vec<_>>().join("; ");
        if text.is_empty() {
            return None;
        }
        let chars: Vec<char> = text.chars().filter(|c| !c.is_control()).collect();
        let keep = chars.len().min(1024);
        Some(chars[chars.len() - keep..].iter().collect())
    }
}

/// The steps a feedback stands for, on an update in `state` whose install
/// is released or not and whose package has `version`. Empty: nothing to
/// change. INVALID_STATE: the feedback contradicts a finished update.
pub fn feedback_steps(
    state: UpdateState,
    install_released: bool,
    version: &str,
    feedback: &Feedback,
) -> Result<Vec<StatusReport>> {
    use UpdateState::*;
    let failed = |errcode: Option<&str>, message: Option<String>| StatusReport {
        errcode: errcode.map(str::to_owned),
        message,
        ..StatusReport::new(ReportStatus::Failed)
    };
    if state.is_final() {
        return match (state, feedback.execution, feedback.finished) {
            // The device saw the cancel (on the deployment's own feedback).
            (Cancelled, Execution::Closed | Execution::Canceled, _) => {
                Ok(vec![StatusReport::new(ReportStatus::Cancelled)])
            }
            (Installed, Execution::Closed, Finished::Failure) | (Failed, Execution::Closed, Finished::Success) => Err(
                Error::InvalidState(format!("the update is {} already; this feedback says otherwise", state.as_str())),
            ),
            // A repeat, or progress after the end.
            _ => Ok(Vec::new()),
        };
    }
    let percent = feedback.percent();
    let downloading_or_installing = |steps: &mut Vec<StatusReport>| match state {
        Pending => {}
        Released | Acknowledged | Downloading => {
            steps.push(StatusReport { progress: percent, ..StatusReport::new(ReportStatus::Downloading) })
        }
        Downloaded | Installing if install_released => {
            steps.push(StatusReport { progress: percent, ..StatusReport::new(ReportStatus::Installing) })
        }
        _ => {}
    };
    // Every part done (swupdate's "All Chunks Installed.", before its
    // reboot): it has all of it and installs (or has installed) it.
    let all_done = feedback.progress.is_some_and(|(cnt, of)| of > 0 && cnt >= of);
    let mut steps = Vec::new();
    match feedback.execution {
        Execution::Proceeding | Execution::Download
            if all_done && install_released && matches!(state, Released | Acknowledged | Downloading) =>
        {
            steps.push(StatusReport::new(ReportStatus::Downloaded));
            steps.push(StatusReport { progress: Some(100), ..StatusReport::new(ReportStatus::Installing) });
        }
        Execution::Proceeding | Execution::Download => downloading_or_installing(&mut steps),
        Execution::Scheduled | Execution::Resumed => {
            if state == Released {
                steps.push(StatusReport::new(ReportStatus::Acknowledged));
            }
        }
        Execution::Downloaded => {
            if matches!(state, Released | Acknowledged | Downloading) {
                steps.push(StatusReport::new(ReportStatus::Downloaded));
            }
        }
        Execution::Closed if feedback.finished == Finished::Failure => {
            steps.push(failed(None, feedback.message().or_else(|| Some("the device reported a failure".into()))));
        }
        // The install is held: a client closing a `skip` action ("Skipped
        // Update.") has done what it was offered, the download.
        Execution::Closed if !install_released => {
            if matches!(state, Released | Acknowledged | Downloading) {
                steps.push(StatusReport::new(ReportStatus::Downloaded));
            }
        }
        Execution::Closed => {
            if matches!(state, Released | Acknowledged | Downloading) {
                steps.push(StatusReport::new(ReportStatus::Downloaded));
            }
            if install_released && state != Installing {
                steps.push(StatusReport::new(ReportStatus::Installing));
            }
            steps.push(StatusReport {
                version: Some(version.to_owned()),
                ..StatusReport::new(ReportStatus::InstalledVersion)
            });
        }
        Execution::Rejected => steps.push(failed(
            Some("rejected"),
            Some(feedback.message().map_or_else(
                || "the device rejected the update".to_owned(),
                |m| format!("the device rejected the update: {m}"),
            )),
        )),
        Execution::Canceled => steps.push(failed(
            Some("canceled"),
            Some(feedback.message().map_or_else(
                || "the device canceled the update".to_owned(),
                |m| format!("the device canceled the update: {m}"),
            )),
        )),
    }
    Ok(steps)
}

/// The `?c=` of a deploymentBase link: changes when what the device is
/// told changes (the update, its step, whether it may install and how, the
/// window, its file URLs' window and the credential they are signed
/// under), as hawkBit's does; a signed int32 like hawkBit's.
fn link_etag(update: &device_update::Model, deployment: &deployment::Model, window_exp: i64, credential: &str) -> i32 {
    let digest = Sha256::digest(format!(
        "{}:{}:{}:{}:{}:{window_exp}:{credential}",
        update.id,
        update.state,
        deployment.install_released,
        deployment.action_type,
        deployment.maintenance_window.as_deref().unwrap_or_default(),
    ));
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Whether a DDI device is shown `update` as a deploymentBase: in flight,
/// with its install released, or not downloaded yet by a device that
/// declared it can download without installing (see the module doc).
fn deployable(update: &device_update::Model, deployment: &deployment::Model, download_only: bool) -> Result<bool> {
    let state = UpdateState::parse(&update.state)?;
    Ok(state.in_flight()
        && (deployment.install_released
            || (download_only
                && matches!(state, UpdateState::Released | UpdateState::Acknowledged | UpdateState::Downloading))))
}

/// The configData attribute with which a device declares that it can
/// download without installing (`"true"`): it is then offered a held
/// install as `update: skip`, and its `downloaded` feedback counts.
pub const DOWNLOAD_ONLY_ATTRIBUTE: &str = "download_only";

/// Whether `device` declared [`DOWNLOAD_ONLY_ATTRIBUTE`] (read only when
/// an install is held: the rare case).
async fn declares_download_only(app: &App, device: Uuid, deployment: &deployment::Model) -> Result<bool> {
    if deployment.install_released {
        return Ok(false);
    }
    let value: Option<String> = device_reported_attribute::Entity::find()
        .select_only()
        .column(device_reported_attribute::Column::Value)
        .filter(device_reported_attribute::Column::DeviceId.eq(device))
        .filter(device_reported_attribute::Column::Key.eq(DOWNLOAD_ONLY_ATTRIBUTE))
        .into_tuple()
        .one(&app.db)
        .await?;
    Ok(value.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "1")))
}

/// An error swupdate logs at every start when its bootloader interface
/// keeps no state (Debian's default, `none`): not a reason for anything.
const HARMLESS: &str = "Cannot read stored update state";

/// The base poll (`GET /{tenant}/controller/v1/{controllerId}`): reads only.
///
/// Rule: an idle device's poll (nothing in flight, no command pending)
/// reads no database once its facts are cached (`DeviceCache::idle_ddi`,
/// dropped by the events that end its idleness or change its attributes).
pub async fn base(app: &App, ctx: &Ctx) -> Result<Base> {
    let device = ctx.require_device()?;
    if let Some(facts) = app.device_cache.idle_ddi(device.id) {
        return Ok(Base::idle(facts));
    }
    let seq = app.device_cache.seq();
    let (current, commands, attributes, installed) = tokio::try_join!(
        app.poll_reads.current_update(&app.db, device.id),
        app.poll_reads.pending_commands(&app.db, device.id),
        async {
            Ok(device_reported_attribute::Entity::find()
                .select_only()
                .column(device_reported_attribute::Column::DeviceId)
                .filter(device_reported_attribute::Column::DeviceId.eq(device.id))
                .limit(1)
                .into_tuple::<Uuid>()
                .one(&app.db)
                .await?)
        },
        async { Ok(installed_action(app, device.id).await?) },
    )?;
    let facts = DdiFacts { has_attributes: attributes.is_some(), installed };
    if current.is_none() && commands.is_empty() {
        app.device_cache.mark_idle_ddi(device.id, seq, facts);
    }
    let mut answer = Base { active: current.is_some(), ..Base::idle(facts) };
    if let Some((update, deployment)) = &current {
        if update.state == UpdateState::Cancelled.as_str() {
            answer.action = Some(BaseAction::Cancel { action_id: update.action_id });
        } else if deployable(update, deployment, declares_download_only(app, device.id, deployment).await?)?
            // A window holds the start of an install: not a download
            // without one, and not an update the device is already on
            // (swupdate finds its action again through this link after
            // its reboot, to close it).
            && (!deployment.install_released
                || !matches!(UpdateState::parse(&update.state)?, UpdateState::Released | UpdateState::Acknowledged)
                || MaintenanceWindow::state_of(deployment, chrono::Utc::now())?.is_none_or(|w| w.open))
        {
            let window = crate::service::device_download::window(
                update.id,
                app.config.devices.download_url_ttl,
                chrono::Utc::now(),
            );
            let credential = crate::service::device_download::device_row(app, device.id)
                .await?
                .map(|row| row.credential_hash.clone())
                .unwrap_or_default();
            answer.action = Some(BaseAction::Deployment {
                action_id: update.action_id,
                etag: link_etag(update, deployment, window.exp.timestamp(), &credential),
            });
        }
    }
    Ok(answer)
}

async fn installed_action(app: &App, device: Uuid) -> std::result::Result<Option<i32>, sea_orm::DbErr> {
    device_update::Entity::find()
        .select_only()
        .column(device_update::Column::ActionId)
        .filter(device_update::Column::DeviceId.eq(device))
        .filter(device_update::Column::State.eq(UpdateState::Installed.as_str()))
        .order_by_desc(device_update::Column::FinishedAt)
        .order_by_desc(device_update::Column::ActionId)
        .limit(1)
        .into_tuple::<i32>()
        .one(&app.db)
        .await
}

/// The device's update with DDI action id `action_id`, and its deployment;
/// NOT_FOUND when it has none (another device's is none of its own).
async fn find_action(
    conn: &impl sea_orm::ConnectionTrait,
    device: Uuid,
    action_id: i32,
) -> Result<(device_update::Model, deployment::Model)> {
    let (update, deployment) = device_update::Entity::find()
        .filter(device_update::Column::DeviceId.eq(device))
        .filter(device_update::Column::ActionId.eq(action_id))
        // Not released yet: the device was never offered it.
        .filter(device_update::Column::ReleasedAt.is_not_null())
        .find_also_related(deployment::Entity)
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Update, action_id.to_string()))?;
    let deployment =
        deployment.ok_or_else(|| Error::not_found(ResourceKind::Deployment, update.deployment_id.to_string()))?;
    Ok((update, deployment))
}

async fn describe(app: &App, update: &device_update::Model, deployment: &deployment::Model) -> Result<Deployment> {
    let package = app.device_cache.package(&app.db, deployment.package_id).await?;
    let handling = match ActionType::parse(&deployment.action_type)? {
        ActionType::Forced => "forced",
        ActionType::Soft => "attempt",
    };
    // A held install (only a device that declared download-only support
    // sees one): download, do not install.
    let update_handling = if deployment.install_released { handling } else { "skip" };
    let maintenance_window = MaintenanceWindow::state_of(deployment, chrono::Utc::now())?
        .map(|w| if w.open { "available" } else { "unavailable" });
    Ok(Deployment {
        action_id: update.action_id,
        update_id: update.id,
        download: handling,
        update: update_handling,
        maintenance_window,
        package_id: package.model.id,
        component: package.model.component.clone(),
        name: package.model.name.clone(),
        version: package.model.version.clone(),
        artifacts: package.files.iter().map(Artifact::of).collect(),
    })
}

/// `deploymentBase/{actionId}`: the device's action, while it is offered
/// as one. The first look acknowledges a RELEASED update (one write
/// against the rate limit), so operators see the device has it.
pub async fn deployment_base(app: &App, ctx: &Ctx, action_id: i32) -> Result<Deployment> {
    let device = ctx.require_device()?;
    let (mut update, deployment) = find_action(&app.db, device.id, action_id).await?;
    if !deployable(&update, &deployment, declares_download_only(app, device.id, &deployment).await?)? {
        return Err(Error::not_found(ResourceKind::UpdateInProgress, action_id.to_string()));
    }
    if update.state == UpdateState::Released.as_str() {
        app.rate_limits.device_write(device.id)?;
        update = report::report_steps(app, ctx, update.id, vec![StatusReport::new(ReportStatus::Acknowledged)]).await?;
    }
    let row = crate::service::device_download::device_row(app, device.id)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::Device, device.id.to_string()))?;
    let window =
        crate::service::device_download::window(update.id, app.config.devices.download_url_ttl, chrono::Utc::now());
    let grant = crate::service::device_download::DeviceGrant {
        device: device.id,
        update: update.id,
        credential_hash: &row.credential_hash,
        exp: window.exp,
    };
    let mut described = describe(app, &update, &deployment).await?;
    // What it was offered decides what its `closed` will mean (a `skip`
    // closed is a download), whatever the deployment does meanwhile.
    if update.ddi_offer.as_deref() != Some(described.update) {
        device_update::Entity::update_many()
            .col_expr(device_update::Column::DdiOffer, sea_orm::sea_query::Expr::value(described.update))
            .filter(device_update::Column::Id.eq(update.id))
            .exec(&app.db)
            .await?;
    }
    for artifact in &mut described.artifacts {
        artifact.signed_query = Some(crate::service::device_download::signed_query(app, artifact.content_id, &grant));
    }
    Ok(described)
}

/// `installedBase/{actionId}`: the update the device installed last (the
/// one the base poll names), as a deployment; its files are not offered
/// any more (no signed URLs).
pub async fn installed_base(app: &App, ctx: &Ctx, action_id: i32) -> Result<Deployment> {
    let device = ctx.require_device()?;
    let (update, deployment) = find_action(&app.db, device.id, action_id).await?;
    if update.state != UpdateState::Installed.as_str() {
        return Err(Error::not_found(ResourceKind::Update, action_id.to_string()));
    }
    describe(app, &update, &deployment).await
}

/// `cancelAction/{actionId}`: the cancelled update the device has not
/// acknowledged yet (its id is the stop id as well).
pub async fn cancel_action(app: &App, ctx: &Ctx, action_id: i32) -> Result<i32> {
    let device = ctx.require_device()?;
    let (update, _) = find_action(&app.db, device.id, action_id).await?;
    if update.state != UpdateState::Cancelled.as_str() || update.cancel_acknowledged {
        return Err(Error::not_found(ResourceKind::UpdateInProgress, action_id.to_string()));
    }
    Ok(update.action_id)
}

/// `deploymentBase/{actionId}/feedback`: the steps [`feedback_steps`] finds,
/// all in one transaction; one write against the rate limit.
pub async fn feedback(app: &App, ctx: &Ctx, action_id: i32, feedback: Feedback) -> Result<device_update::Model> {
    let device = ctx.require_device()?;
    app.rate_limits.device_write(device.id)?;
    // swupdate posts from two threads at once: when another feedback moved
    // the update between the read and the write, work it out again from
    // what that one left (once).
    match feedback_once(app, ctx, action_id, feedback.clone()).await {
        Err(Error::InvalidState(_)) => feedback_once(app, ctx, action_id, feedback).await,
        done => done,
    }
}

async fn feedback_once(app: &App, ctx: &Ctx, action_id: i32, feedback: Feedback) -> Result<device_update::Model> {
    let device = ctx.require_device()?;
    let (update, deployment) = find_action(&app.db, device.id, action_id).await?;
    let package = app.device_cache.package(&app.db, deployment.package_id).await?;
    let state = UpdateState::parse(&update.state)?;
    let mut feedback = feedback;
    // The errors a client logs while it runs (swupdate's "HASH mismatch"
    // comes in a progress message; its failure says only "No suitable
    // .swu image found"): kept as the running update's message, and put
    // before the failure's own words.
    let mut errors: Vec<&str> = Vec::new();
    for line in feedback.details.iter().map(|d| d.trim()) {
        if line.contains("ERROR") && !line.contains(HARMLESS) && !errors.contains(&line) {
            errors.push(line);
        }
    }
    let note = match (feedback.execution, feedback.finished) {
        _ if state.is_final() => Note::Keep,
        (Execution::Closed, Finished::Failure) => {
            let logged = update.message.as_deref().unwrap_or_default().split("; ");
            let new: Vec<String> = logged
                .filter(|l| !l.is_empty() && !feedback.details.iter().any(|d| d.trim() == *l))
                .map(str::to_owned)
                .collect();
            feedback.details.splice(0..0, new);
            Note::Keep
        }
        (Execution::Closed, _) => Note::Clear,
        _ if !errors.is_empty() => Note::Set(errors.join("; ")),
        _ => Note::Keep,
    };
    // A `closed` answers what the device was offered: after a `skip` it
    // downloaded, even if the install was released since.
    let install_released = match update.ddi_offer.as_deref() {
        Some("skip") => false,
        Some(_) => true,
        None => deployment.install_released,
    };
    let steps = feedback_steps(state, install_released, &package.model.version, &feedback)?;
    if steps.is_empty() && note == Note::Keep {
        return Ok(update);
    }
    report::report_steps_noting(app, ctx, update.id, steps, note).await
}

/// `cancelAction/{actionId}/feedback`: `closed` (or `canceled`) acknowledges
/// the cancel; `rejected` means the device goes on with the update: the
/// cancel is acknowledged (no more cancelAction), and the refusal is kept
/// as the update's message and audited; anything else (progress of the
/// cancel) changes nothing. One write against the rate limit.
pub async fn cancel_feedback(app: &App, ctx: &Ctx, action_id: i32, feedback: Feedback) -> Result<()> {
    let device = ctx.require_device()?;
    app.rate_limits.device_write(device.id)?;
    let (update, deployment) = find_action(&app.db, device.id, action_id).await?;
    if update.state != UpdateState::Cancelled.as_str() {
        return Err(Error::InvalidState(format!(
            "action {action_id} is {}: there is no cancel to answer",
            update.state
        )));
    }
    match feedback.execution {
        Execution::Closed | Execution::Canceled if feedback.finished != Finished::Failure => {
            report::report_steps(app, ctx, update.id, vec![StatusReport::new(ReportStatus::Cancelled)]).await?;
        }
        Execution::Rejected | Execution::Closed => {
            let message = feedback.message().map_or_else(
                || "the device refused the cancel".to_owned(),
                |m| format!("the device refused the cancel: {m}"),
            );
            report::refuse_cancel(app, ctx, &update, &deployment, &message).await?;
        }
        _ => {}
    }
    Ok(())
}

/// How `configData` changes the attributes a device reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigMode {
    /// Set the ones sent, keep the others (hawkBit's default).
    Merge,
    /// The ones sent, and no others.
    Replace,
    /// Remove the ones named.
    Remove,
}

impl ConfigMode {
    /// hawkBit's names (absent is `merge`); BAD_USER_INPUT otherwise.
    pub fn parse(name: Option<&str>) -> Result<Self> {
        match name {
            None | Some("merge") => Ok(Self::Merge),
            Some("replace") => Ok(Self::Replace),
            Some("remove") => Ok(Self::Remove),
            Some(other) => Err(Error::invalid("mode", format!("{other:?}: one of merge, replace, remove"))),
        }
    }
}

/// An attribute as configData sends it, made one otadepot keeps: hawkBit
/// takes keys our attribute rule does not (1 to 64 of letters, digits,
/// `-`, `_`, `.`), and a stock client refused with a 400 here re-sends
/// configData at every poll and never installs. So other characters
/// become `_`, the key and the value are cut to 64 and 256 characters,
/// and control characters are dropped from the value.
fn kept_attribute(key: &str, value: &str) -> (String, String) {
    let mut key: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(64)
        .collect();
    if key.is_empty() {
        key.push('_');
    }
    let value = value.chars().filter(|c| !c.is_control()).take(256).collect();
    (key, value)
}

/// `configData`: the device's reported attributes (what dynamic groups
/// select on), as an inventory report: one write against the rate limit,
/// only changes written and audited. Keys and values are made ones
/// otadepot keeps ([`kept_attribute`]); of two that become the same key,
/// the later wins.
pub async fn config_data(app: &App, ctx: &Ctx, mode: ConfigMode, data: Vec<(String, String)>) -> Result<()> {
    let mut kept: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for (key, value) in &data {
        let (key, value) = kept_attribute(key, value);
        kept.insert(key, value);
    }
    // More than a device may keep would be refused whole (and re-sent at
    // every poll): the first ones by name are kept.
    if kept.len() > crate::service::device::MAX_ATTRIBUTES {
        tracing::warn!(device = %ctx.require_device()?.id, sent = kept.len(), "configData: more attributes than a device keeps; the rest are dropped");
    }
    let data: Vec<(String, String)> = kept.into_iter().take(crate::service::device::MAX_ATTRIBUTES).collect();
    let attributes: Vec<(String, Option<String>)> = match mode {
        ConfigMode::Merge => data.into_iter().map(|(k, v)| (k, Some(v))).collect(),
        ConfigMode::Remove => data.into_iter().map(|(k, _)| (k, None)).collect(),
        ConfigMode::Replace => {
            let current = crate::service::device::me(app, ctx).await?;
            let sent: std::collections::BTreeSet<&str> = data.iter().map(|(k, _)| k.as_str()).collect();
            let gone: Vec<(String, Option<String>)> = current
                .reported_attributes
                .keys()
                .filter(|k| !sent.contains(k.as_str()))
                .map(|k| (k.clone(), None))
                .collect();
            data.into_iter().map(|(k, v)| (k, Some(v))).chain(gone).collect()
        }
    };
    crate::service::device::report_inventory(app, ctx, Inventory { installed: Vec::new(), attributes }).await?;
    Ok(())
}

/// A DDI artifact download (`softwaremodules/{package}/artifacts/{filename}`,
/// the package standing for its software module): the file and the object
/// to stream. A device's own credential may fetch the files of the update
/// it is offered; a signed URL the file it was signed for, while the
/// update is in flight.
pub async fn open_artifact(
    app: &App,
    access: &DownloadAccess,
    package: Uuid,
    filename: &str,
) -> Result<(Artifact, crate::service::content::Download)> {
    let artifact = match access {
        DownloadAccess::Caller(ctx) => offered_artifact(app, ctx, package, filename).await?,
        DownloadAccess::Signed { .. } => artifact_of_package(app, package, filename).await?,
    };
    let download = match access {
        DownloadAccess::Caller(_) => {
            crate::service::content::open_download_for_update(app, access, artifact.content_id).await?
        }
        DownloadAccess::Signed { .. } => {
            crate::service::content::open_download(app, access, artifact.content_id).await?
        }
    };
    Ok((artifact, download))
}

/// The device's file `filename` of the package `package` it is offered.
async fn offered_artifact(app: &App, ctx: &Ctx, package: Uuid, filename: &str) -> Result<Artifact> {
    let device = ctx.require_device()?;
    let not_found = || Error::not_found(ResourceKind::UpdateFile, format!("{package}/{filename}"));
    let current = app.poll_reads.current_update(&app.db, device.id).await?;
    let Some((_, deployment)) =
        current.filter(|(u, d)| d.package_id == package && u.state != UpdateState::Cancelled.as_str())
    else {
        return Err(not_found());
    };
    let package = app.device_cache.package(&app.db, deployment.package_id).await?;
    package.files.iter().find(|f| f.name == filename).map(Artifact::of).ok_or_else(not_found)
}

/// The file `filename` of `package`, for a signed URL (the signature
/// names the content, the device and its update; the check is at
/// download time).
async fn artifact_of_package(app: &App, package: Uuid, filename: &str) -> Result<Artifact> {
    let not_found = || Error::not_found(ResourceKind::UpdateFile, format!("{package}/{filename}"));
    let package = app.device_cache.package(&app.db, package).await.map_err(|_| not_found())?;
    package.files.iter().find(|f| f.name == filename).map(Artifact::of).ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(execution: Execution, finished: Finished) -> Feedback {
        Feedback { execution, finished, progress: None, details: vec!["why".into()] }
    }

    fn names(steps: &[StatusReport]) -> Vec<&'static str> {
        steps.iter().map(|s| s.status.as_str()).collect()
    }

    #[test]
    fn a_success_fills_in_the_steps_the_client_skipped() {
        use UpdateState::*;
        let closed = said(Execution::Closed, Finished::Success);
        for (from, want) in [
            (Released, vec!["DOWNLOADED", "INSTALLING", "INSTALLED_VERSION"]),
            (Downloading, vec!["DOWNLOADED", "INSTALLING", "INSTALLED_VERSION"]),
            (Downloaded, vec!["INSTALLING", "INSTALLED_VERSION"]),
            (Installing, vec!["INSTALLED_VERSION"]),
        ] {
            let steps = feedback_steps(from, true, "2.0.0", &closed).expect("steps");
            assert_eq!(names(&steps), want, "from {from:?}");
            assert_eq!(steps.last().and_then(|s| s.version.as_deref()), Some("2.0.0"));
        }
        // `none` closes as hawkBit takes it: finished.
        let steps = feedback_steps(Released, true, "2.0.0", &said(Execution::Closed, Finished::None)).expect("steps");
        assert_eq!(names(&steps).last(), Some(&"INSTALLED_VERSION"));
    }

    #[test]
    fn config_data_keys_and_values_become_ones_otadepot_keeps() {
        assert_eq!(kept_attribute("hwRevision", "1.0"), ("hwRevision".into(), "1.0".into()));
        assert_eq!(kept_attribute("hw revision/ü", "a\nb\tc"), ("hw_revision__".into(), "abc".into()));
        assert_eq!(kept_attribute("", "x"), ("_".into(), "x".into()));
        let (key, value) = kept_attribute(&"k".repeat(100), &"v".repeat(300));
        assert_eq!((key.len(), value.len()), (64, 256));
    }

    #[test]
    fn closing_a_held_install_is_a_download_not_an_install() {
        use UpdateState::*;
        let skipped =
            Feedback { details: vec!["Skipped Update.".into()], ..said(Execution::Closed, Finished::Success) };
        assert_eq!(names(&feedback_steps(Acknowledged, false, "v", &skipped).expect("steps")), ["DOWNLOADED"]);
        assert!(feedback_steps(Downloaded, false, "v", &skipped).expect("steps").is_empty());
        let failed = said(Execution::Closed, Finished::Failure);
        assert_eq!(names(&feedback_steps(Downloading, false, "v", &failed).expect("steps")), ["FAILED"]);
    }

    #[test]
    fn progress_is_a_percentage_of_the_chunks_and_moves_the_step_it_is_in() {
        use UpdateState::*;
        let mut feedback = said(Execution::Proceeding, Finished::None);
        feedback.progress = Some((1, 4));
        let steps = feedback_steps(Acknowledged, true, "v", &feedback).expect("steps");
        assert_eq!((names(&steps), steps[0].progress), (vec!["DOWNLOADING"], Some(25)));
        let steps = feedback_steps(Downloaded, true, "v", &feedback).expect("steps");
        assert_eq!(names(&steps), ["INSTALLING"]);
        assert!(feedback_steps(Downloaded, false, "v", &feedback).expect("steps").is_empty(), "not released");
        feedback.progress = Some((5, 0));
        assert_eq!(feedback_steps(Downloading, true, "v", &feedback).expect("steps")[0].progress, None);
        // All parts done: downloaded, and installing (once released).
        feedback.progress = Some((9, 4));
        let steps = feedback_steps(Downloading, true, "v", &feedback).expect("steps");
        assert_eq!((names(&steps), steps[1].progress), (vec!["DOWNLOADED", "INSTALLING"], Some(100)));
        let steps = feedback_steps(Downloading, false, "v", &feedback).expect("steps");
        assert_eq!((names(&steps), steps[0].progress), (vec!["DOWNLOADING"], Some(100)), "not released");
        assert_eq!(names(&feedback_steps(Installing, true, "v", &feedback).expect("steps")), ["INSTALLING"]);
    }

    #[test]
    fn finished_updates_take_repeats_and_refuse_contradictions() {
        use UpdateState::*;
        let success = said(Execution::Closed, Finished::Success);
        let failure = said(Execution::Closed, Finished::Failure);
        assert!(feedback_steps(Installed, true, "v", &success).expect("repeat").is_empty());
        assert!(feedback_steps(Failed, true, "v", &failure).expect("repeat").is_empty());
        assert!(
            feedback_steps(Installed, true, "v", &said(Execution::Proceeding, Finished::None))
                .expect("late")
                .is_empty()
        );
        assert!(matches!(feedback_steps(Installed, true, "v", &failure), Err(Error::InvalidState(_))));
        assert!(matches!(feedback_steps(Failed, true, "v", &success), Err(Error::InvalidState(_))));
        assert_eq!(names(&feedback_steps(Cancelled, true, "v", &success).expect("ack")), ["CANCELLED"]);
    }

    #[test]
    fn failures_rejections_and_device_cancels_fail_with_their_reason() {
        use UpdateState::*;
        let mut failure = said(Execution::Closed, Finished::Failure);
        failure.details = vec!["".into(), "HASH mismatch\n".into()];
        let steps = feedback_steps(Downloading, true, "v", &failure).expect("steps");
        assert_eq!((names(&steps), steps[0].message.as_deref()), (vec!["FAILED"], Some("HASH mismatch")));
        let steps = feedback_steps(Released, true, "v", &said(Execution::Rejected, Finished::None)).expect("steps");
        assert_eq!(steps[0].errcode.as_deref(), Some("rejected"));
        let steps = feedback_steps(Installing, true, "v", &said(Execution::Canceled, Finished::None)).expect("steps");
        assert_eq!(steps[0].errcode.as_deref(), Some("canceled"));
        assert_eq!(
            names(&feedback_steps(Released, true, "v", &said(Execution::Downloaded, Finished::None)).expect("steps")),
            ["DOWNLOADED"]
        );
        assert_eq!(
            names(&feedback_steps(Released, true, "v", &said(Execution::Scheduled, Finished::None)).expect("steps")),
            ["ACKNOWLEDGED"]
        );
        let long =
            Feedback { details: vec!["x".repeat(3000) + "the end"], ..said(Execution::Closed, Finished::Failure) };
        let message = feedback_steps(Downloading, true, "v", &long).expect("steps")[0].message.clone().unwrap();
        assert!(message.chars().count() == 1024 && message.ends_with("the end"));
    }
}
