//! device api

use chrono::{DateTime, Utc};
use entity::{deployment, device_update};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::Ctx;
use crate::error::{Error, Result};
use crate::service::WriteTx;
use crate::service::deployment::reconcile::wake_soon;
use crate::service::deployment::{UpdateState, find, find_update};

// ---------------------------------------------------------------------------
// The device protocol.

/// What a device is told on a poll.
#[derive(Clone, Debug)]
pub struct PollAnswer {
    pub etag: String,
    /// None: no update pending (or the device has this answer already).
    pub update: Option<Value>,
    /// Pending commands (`service::command`), oldest first.
    pub commands: Vec<Value>,
    /// When the update's file URLs are renewed (the ETag changes then): a
    /// long poll answers at that moment.
    pub renew_at: Option<DateTime<Utc>>,
}

impl PollAnswer {
    /// Whether there is anything to send (else 204, or 304 on a match).
    pub fn has_news(&self) -> bool {
        self.update.is_some() || !self.commands.is_empty()
    }

    fn etag_only(etag: String) -> Self {
        Self { etag, update: None, commands: Vec::new(), renew_at: None }
    }
}

/// The ETag of "nothing pending".
pub const IDLE_ETAG: &str = "\"idle\"";

async fn current_update(
    conn: &impl ConnectionTrait,
    device: Uuid,
) -> Result<Option<(device_update::Model, deployment::Model)>> {
    let mut states: Vec<&str> = UpdateState::IN_FLIGHT.iter().map(|s| s.as_str()).collect();
    states.push(UpdateState::Cancelled.as_str());
    let candidates = device_update::Entity::find()
        .filter(device_update::Column::DeviceId.eq(device))
        .filter(device_update::Column::State.is_in(states))
        .filter(
            Condition::any().add(device_update::Column::State.ne(UpdateState::Cancelled.as_str())).add(
                Condition::all()
                    .add(device_update::Column::ReleasedAt.is_not_null())
                    .add(device_update::Column::CancelAcknowledged.eq(false)),
            ),
        )
        .order_by_desc(device_update::Column::Id)
        .limit(1)
        .all(conn)
        .await?;
    let Some(update) = candidates.into_iter().next() else { return Ok(None) };
    let deployment = find(conn, update.deployment_id).await?;
    Ok(Some((update, deployment)))
}

fn action_of(update: &device_update::Model, deployment: &deployment::Model) -> Result<&'static str> {
    let state = UpdateState::parse(&update.state)?;
    Ok(match state {
        UpdateState::Cancelled => "CANCEL",
        UpdateState::Downloaded | UpdateState::Installing if deployment.install_released => "INSTALL",
        _ => "DOWNLOAD",
    })
}

/// `GET /device/v1/poll`: the device's pending update (with its signed
/// manifest), or none. `if_none_match` equal to the current ETag answers
/// with the ETag alone (the 304 path, no manifest built).
///
/// `fresh`: skip the idle cache (a long poll that was just told of news).
pub async fn poll(app: &App, ctx: &Ctx, if_none_match: Option<&str>, fresh: bool) -> Result<PollAnswer> {
    let device = ctx.require_device()?;
    if !fresh && app.device_cache.is_idle(device.id) {
        return Ok(PollAnswer::etag_only(IDLE_ETAG.to_owned()));
    }
    let seq = app.device_cache.seq();
    let current = current_update(&app.db, device.id).await?;
    let commands = crate::service::command::pending(&app.db, device.id).await?;
    if current.is_none() && commands.is_empty() {
        app.device_cache.mark_idle(device.id, seq);
        return Ok(PollAnswer::etag_only(IDLE_ETAG.to_owned()));
    }
    // The ETag names what the device is told: the update's step, its file
    // URLs (their expiry window and the credential they are signed under)
    // and the pending commands (a delivered command keeps its place until
    // acknowledged).
    let mut tag = String::new();
    let mut action = None;
    let mut urls = None;
    if let Some((update, deployment)) = &current {
        let a = action_of(update, deployment)?;
        let row = crate::service::device_download::device_row(app, device.id)
            .await?
            .ok_or_else(|| Error::not_found("device", device.id.to_string()))?;
        let window =
            crate::service::device_download::window(update.id, app.config.devices.download_url_ttl, Utc::now());
        tag = format!(
            "{}:{}:{a}:{}:{}:{}",
            update.id,
            update.state,
            deployment.install_released,
            window.exp.timestamp(),
            row.credential_hash
        );
        action = Some(a);
        urls = Some((window, row));
    }
    for command in &commands {
        tag.push_str(&format!("|{}", command.id));
    }
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(tag))[..32]);
    let renew_at = urls.as_ref().map(|(window, _)| window.renew_at);
    if if_none_match == Some(etag.as_str()) {
        return Ok(PollAnswer { renew_at, ..PollAnswer::etag_only(etag) });
    }
    let update = match (current, action, urls) {
        (Some((update, deployment)), Some(action), Some((window, row))) => {
            let package = crate::service::package::get_any(&app.db, deployment.package_id).await?;
            let grant = crate::service::device_download::DeviceGrant {
                device: device.id,
                update: update.id,
                credential_hash: &row.credential_hash,
                exp: window.exp,
            };
            let manifest = crate::service::package::device_manifest_for(app, &package, &grant)?;
            Some(json!({
                "id": update.id,
                "deploymentId": deployment.id,
                "action": action,
                "state": update.state,
                "manifest": manifest,
            }))
        }
        _ => None,
    };
    // Delivery is at least once: if recording it fails, the commands stay
    // QUEUED and are handed out again; the device still gets them now.
    if let Err(err) = crate::service::command::mark_delivered(app, &commands).await {
        tracing::warn!(device = %device.id, error = %err, "could not record the delivery of commands");
    }
    Ok(PollAnswer { etag, update, commands: commands.iter().map(crate::service::command::view).collect(), renew_at })
}

/// A device's status report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub status: String,
    pub progress: Option<i32>,
    pub version: Option<String>,
    pub errcode: Option<String>,
    pub message: Option<String>,
}

/// `POST /device/v1/updates/{id}/status`: one write against the device's
/// rate limit.
pub async fn report(app: &App, ctx: &Ctx, update_id: Uuid, report: Report) -> Result<device_update::Model> {
    app.rate_limits.device_write(ctx.require_device()?.id)?;
    report_uncharged(app, ctx, update_id, report).await
}

/// [`report`] as a step of a call charged already (the EnOS routes).
async fn report_uncharged(app: &App, ctx: &Ctx, update_id: Uuid, report: Report) -> Result<device_update::Model> {
    let device = ctx.require_device()?.clone();
    if let Some(p) = report.progress
        && !(0..=100).contains(&p)
    {
        return Err(Error::invalid("progress", "between 0 and 100"));
    }
    for (field, value, max) in
        [("errcode", &report.errcode, 64), ("message", &report.message, 1024), ("version", &report.version, 64)]
    {
        if value.as_ref().is_some_and(|v| v.chars().count() > max) {
            return Err(Error::invalid(field, format!("at most {max} characters")));
        }
    }
    let mut tx = WriteTx::begin(app).await?;
    let update = device_update::Entity::find_by_id(update_id)
        .filter(device_update::Column::DeviceId.eq(device.id))
        .one(tx.conn())
        .await?
        .ok_or_else(|| Error::not_found("update", update_id.to_string()))?;
    let deployment = find(tx.conn(), update.deployment_id).await?;
    let from = UpdateState::parse(&update.state)?;
    let now = Utc::now();
    use UpdateState::*;
    let invalid =
        |to: &str| Error::InvalidState(format!("update {update_id} is {}; it cannot become {to}", from.as_str()));
    let mut message = report.message.clone();
    // The package, once read (for INSTALLED_VERSION).
    let mut installed_package = None;
    let to = match report.status.as_str() {
        "ACKNOWLEDGED" => match from {
            Released | Acknowledged => Acknowledged,
            _ => return Err(invalid("ACKNOWLEDGED")),
        },
        "DOWNLOADING" => match from {
            Released | Acknowledged | Downloading => Downloading,
            _ => return Err(invalid("DOWNLOADING")),
        },
        "DOWNLOADED" => match from {
            Released | Acknowledged | Downloading | Downloaded => Downloaded,
            _ => return Err(invalid("DOWNLOADED")),
        },
        "INSTALLING" => match from {
            Downloaded | Installing if deployment.install_released => Installing,
            Downloaded => {
                return Err(Error::InvalidState(format!(
                    "update {update_id}: the install is not released yet (a {} deployment)",
                    deployment.mode
                )));
            }
            _ => return Err(invalid("INSTALLING")),
        },
        "INSTALLED_VERSION" => match from {
            Downloaded | Installing if deployment.install_released => {
                let package = crate::service::package::get_any(tx.conn(), deployment.package_id).await?;
                let version_matches = report.version.as_deref() == Some(package.model.version.as_str());
                let expected = package.model.version.clone();
                installed_package = Some(package);
                match report.version.as_deref() {
                    Some(_) if version_matches => Installed,
                    other => {
                        message =
                            Some(format!("reported version {}, expected {}", other.unwrap_or("(none)"), expected));
                        Failed
                    }
                }
            }
            Downloaded => {
                return Err(Error::InvalidState(format!(
                    "update {update_id}: the install is not released yet (a {} deployment)",
                    deployment.mode
                )));
            }
            _ => return Err(invalid("INSTALLED")),
        },
        "FAILED" => {
            if from.is_final() {
                return Err(invalid("FAILED"));
            }
            Failed
        }
        // The device saw the cancel.
        "CANCELLED" => {
            if from != Cancelled {
                return Err(invalid("CANCELLED"));
            }
            device_update::Entity::update_many()
                .col_expr(device_update::Column::CancelAcknowledged, Expr::value(true))
                .filter(device_update::Column::Id.eq(update_id))
                .exec(tx.conn())
                .await?;
            tx.commit().await?;
            return find_update(&app.db, update_id).await;
        }
        other => {
            return Err(Error::invalid(
                "status",
                format!(
                    "{other:?}: one of ACKNOWLEDGED, DOWNLOADING, DOWNLOADED, INSTALLING, INSTALLED_VERSION, FAILED, CANCELLED"
                ),
            ));
        }
    };
    let progress = match to {
        Installed | Downloaded => 100,
        _ => report.progress.unwrap_or(update.progress),
    };
    let mut change = device_update::Entity::update_many()
        .col_expr(device_update::Column::State, Expr::value(to.as_str()))
        .col_expr(device_update::Column::Progress, Expr::value(progress))
        .col_expr(device_update::Column::UpdatedAt, Expr::value(now))
        .filter(device_update::Column::Id.eq(update_id))
        .filter(device_update::Column::State.eq(from.as_str()));
    if to.is_final() {
        change = change.col_expr(device_update::Column::FinishedAt, Expr::value(now));
    }
    if to == Failed {
        change = change
            .col_expr(device_update::Column::ErrorCode, Expr::value(report.errcode.clone()))
            .col_expr(device_update::Column::Message, Expr::value(message.clone()));
    }
    if change.exec(tx.conn()).await?.rows_affected != 1 {
        return Err(Error::InvalidState(format!("update {update_id} changed meanwhile; report again")));
    }
    if to == Installed
        && let Some(package) = &installed_package
    {
        crate::service::device::record_installed(
            tx.conn(),
            device.id,
            &package.model.product,
            &package.model.version,
            Some((package.model.id, deployment.id)),
        )
        .await?;
    }
    if to.is_final() {
        let action = if to == Installed { "device_update.installed" } else { "device_update.failed" };
        tx.audit(
            ctx,
            action,
            "device_update",
            &update_id.to_string(),
            json!({ "deployment_id": deployment.id, "errcode": report.errcode, "message": message }),
        )
        .await?;
    }
    let woke = (to.is_final() || to == Downloaded) && wake_soon(app, tx.conn(), &deployment).await?;
    tx.notify(Event::DeviceUpdateChanged { deployment: deployment.id, update: update_id });
    tx.commit().await?;
    if woke {
        app.wake_workers();
    }
    find_update(&app.db, update_id).await
}

// ---------------------------------------------------------------------------
// EnOS edge compatibility (the EnOS edge OTA protocol): the same
// model behind the EnOS sub-device endpoints.

/// What `/checkversion` answers.
#[derive(Clone, Debug)]
pub struct EnosCheck {
    pub update_id: Uuid,
    pub version: String,
    /// MD5 of the file (the seed's `signMethod: "MD5"`), or empty for a link.
    pub md5: String,
}

/// The device reports `version` (its firmware) and asks for an update:
/// the reported version is recorded, a released update is acknowledged
/// and described. It is the EnOS device's poll: only what writes counts
/// against the rate limit (a new version, the acknowledgement: one write
/// each).
pub async fn enos_check_version(app: &App, ctx: &Ctx, version: &str) -> Result<Option<EnosCheck>> {
    let device = ctx.require_device()?.clone();
    let version = version.trim();
    if !version.is_empty() {
        crate::service::device::apply_inventory(
            app,
            ctx,
            crate::service::device::Inventory {
                installed: vec![("firmware".to_owned(), Some(version.to_owned()))],
                attributes: Vec::new(),
            },
            true,
        )
        .await?;
    }
    let Some((update, deployment)) = current_update(&app.db, device.id).await? else { return Ok(None) };
    if UpdateState::parse(&update.state)? == UpdateState::Cancelled {
        return Ok(None);
    }
    let package = crate::service::package::get_any(&app.db, deployment.package_id).await?;
    if update.state == UpdateState::Released.as_str() {
        app.rate_limits.device_write(device.id)?;
        report_uncharged(app, ctx, update.id, Report { status: "ACKNOWLEDGED".into(), ..Report::default() }).await?;
    }
    let md5 = package.files.first().and_then(|f| f.md5.clone()).unwrap_or_default();
    Ok(Some(EnosCheck { update_id: update.id, version: package.model.version.clone(), md5 }))
}

/// `GET /version/{id}`: the update's (first) file, for its device only.
pub async fn enos_download(app: &App, ctx: &Ctx, update_id: Uuid) -> Result<crate::service::content::Download> {
    let device = ctx.require_device()?;
    let update = device_update::Entity::find_by_id(update_id)
        .filter(device_update::Column::DeviceId.eq(device.id))
        .one(&app.db)
        .await?
        .ok_or_else(|| Error::not_found("update", update_id.to_string()))?;
    let deployment = find(&app.db, update.deployment_id).await?;
    let package = crate::service::package::get_any(&app.db, deployment.package_id).await?;
    let file = package.files.first().ok_or_else(|| Error::not_found("file of update", update_id.to_string()))?;
    let access = crate::service::content::DownloadAccess::Caller(ctx.clone());
    crate::service::content::open_download_for_update(app, &access, file.content_id).await
}

/// `POST /downloadresult/{id}`: code 1 DOWNLOADED, anything else FAILED.
pub async fn enos_download_result(
    app: &App,
    ctx: &Ctx,
    update_id: Uuid,
    code: i64,
    message: Option<String>,
) -> Result<device_update::Model> {
    let report_of = match code {
        1 => Report { status: "DOWNLOADED".into(), ..Report::default() },
        _ => Report { status: "FAILED".into(), errcode: Some("download_failed".into()), message, ..Report::default() },
    };
    report(app, ctx, update_id, report_of).await
}

/// `POST /updateresult`: flag 0 failed, 1 in progress, 2 with process 100
/// and the target version succeeded (the seed's rule); the device's current
/// update.
pub async fn enos_update_result(
    app: &App,
    ctx: &Ctx,
    version: &str,
    flag: i64,
    process: i64,
    errcode: Option<String>,
    desc: Option<String>,
) -> Result<device_update::Model> {
    let device = ctx.require_device()?;
    // One call, one write charged, whatever steps it takes.
    app.rate_limits.device_write(device.id)?;
    let (update, deployment) = current_update(&app.db, device.id)
        .await?
        .ok_or_else(|| Error::not_found("update in progress", device.endpoint_id.clone()))?;
    let state = UpdateState::parse(&update.state)?;
    let progress = i32::try_from(process.clamp(0, 100)).unwrap_or_default();
    let mut steps: Vec<Report> = Vec::new();
    // EnOS devices report no DOWNLOADED of their own before installing.
    let to_installing = |steps: &mut Vec<Report>| {
        if matches!(state, UpdateState::Released | UpdateState::Acknowledged | UpdateState::Downloading) {
            steps.push(Report { status: "DOWNLOADED".into(), ..Report::default() });
        }
        if deployment.install_released && state != UpdateState::Installing {
            steps.push(Report { status: "INSTALLING".into(), progress: Some(progress), ..Report::default() });
        }
    };
    match flag {
        1 => to_installing(&mut steps),
        2 if process == 100 => {
            to_installing(&mut steps);
            steps.push(Report {
                status: "INSTALLED_VERSION".into(),
                version: Some(version.to_owned()),
                ..Report::default()
            });
        }
        2 => steps.push(Report {
            status: "FAILED".into(),
            errcode: errcode.clone(),
            message: Some(format!("flag 2 reported with process {process}, not 100")),
            ..Report::default()
        }),
        _ => steps.push(Report {
            status: "FAILED".into(),
            errcode: errcode.clone(),
            message: Some(desc.unwrap_or_else(|| format!("upgrade failed (flag {flag})"))),
            ..Report::default()
        }),
    }
    let mut last = update;
    for step in steps {
        last = report_uncharged(app, ctx, last.id, step).await?;
    }
    Ok(last)
}

/// Whether `event` has news for `device`'s poll (for long polls).
pub fn concerns(event: &Event, device: Uuid) -> bool {
    matches!(event, Event::DevicesReleased(devices) if devices.contains(&device))
        || matches!(event, Event::AllPollersWake)
}
