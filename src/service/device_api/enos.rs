//! The EnOS edge OTA protocol's rules, over the same updates: what
//! `/checkversion`, `/downloadresult/{id}` and `/updateresult` mean as
//! steps of the device_update state machine.
//!
//! Rules: the mapping of EnOS codes and flags to steps is in pure
//! functions ([`download_result_report`], [`update_result_steps`]); each
//! call applies all of its steps in one transaction, so a failure midway
//! commits nothing; one call charges the rate limit as the protocol's
//! adapter doc says (`/updateresult` one write, `/checkversion` one per
//! write it makes).

use uuid::Uuid;

use super::poll::current_update;
use super::report::{self, ReportStatus, StatusReport};
use crate::app::App;
use crate::auth::{Actor, Ctx};
use crate::error::{Error, ResourceKind, Result};
use crate::service::WriteTx;
use crate::service::deployment::{UpdateState, find_update};

/// What `/checkversion` answers.
#[derive(Clone, Debug)]
pub struct EnosCheck {
    /// The endpoint id of the device the call is for.
    pub asset_id: String,
    pub update: Option<EnosUpdate>,
}

/// The update `/checkversion` describes.
#[derive(Clone, Debug)]
pub struct EnosUpdate {
    pub update_id: Uuid,
    pub version: String,
    /// MD5 of the file (the seed's `signMethod: "MD5"`), or empty for a link.
    pub md5: String,
}

/// The body of `/updateresult`.
#[derive(Clone, Debug, Default)]
pub struct UpdateResult {
    pub version: String,
    pub flag: i64,
    /// 0 to 100.
    pub process: i64,
    /// "0" means none.
    pub errcode: Option<String>,
    pub desc: Option<String>,
}

/// EnOS Edge acts for its sub-devices: an `assetId` other than the
/// caller's own endpoint id is a sub-device the caller must be the gateway
/// of (`device_api::act_for`); empty or its own, the caller itself.
pub async fn act_for_asset(app: &App, ctx: Ctx, asset_id: Option<&str>) -> Result<Ctx> {
    match (asset_id.map(str::trim).filter(|a| !a.is_empty()), &ctx.actor) {
        (Some(asset), Actor::Device(own)) if asset != own.endpoint_id => {
            crate::service::device::act_for(app, &ctx, asset).await
        }
        _ => Ok(ctx),
    }
}

/// `/downloadresult/{id}`: code 1 DOWNLOADED, anything else FAILED.
pub fn download_result_report(code: i64, message: Option<String>) -> StatusReport {
    match code {
        1 => StatusReport::new(ReportStatus::Downloaded),
        _ => {
            StatusReport { errcode: Some("download_failed".into()), message, ..StatusReport::new(ReportStatus::Failed) }
        }
    }
}

/// `/updateresult` on an update in `state`: flag 0 failed, 1 in progress,
/// 2 with process 100 and the target version succeeded (the seed's rule).
/// EnOS devices report no DOWNLOADED of their own before installing, so
/// the steps up to INSTALLING are filled in.
pub fn update_result_steps(state: UpdateState, install_released: bool, result: &UpdateResult) -> Vec<StatusReport> {
    let progress = i32::try_from(result.process.clamp(0, 100)).unwrap_or_default();
    let errcode = result.errcode.clone().filter(|e| e != "0");
    let mut steps = Vec::new();
    let to_installing = |steps: &mut Vec<StatusReport>| {
        if matches!(state, UpdateState::Released | UpdateState::Acknowledged | UpdateState::Downloading) {
            steps.push(StatusReport::new(ReportStatus::Downloaded));
        }
        if install_released && state != UpdateState::Installing {
            steps.push(StatusReport { progress: Some(progress), ..StatusReport::new(ReportStatus::Installing) });
        }
    };
    match result.flag {
        1 => to_installing(&mut steps),
        2 if result.process == 100 => {
            to_installing(&mut steps);
            steps.push(StatusReport {
                version: Some(result.version.clone()),
                ..StatusReport::new(ReportStatus::InstalledVersion)
            });
        }
        2 => steps.push(StatusReport {
            errcode,
            message: Some(format!("flag 2 reported with process {}, not 100", result.process)),
            ..StatusReport::new(ReportStatus::Failed)
        }),
        flag => steps.push(StatusReport {
            errcode,
            message: Some(result.desc.clone().unwrap_or_else(|| format!("upgrade failed (flag {flag})"))),
            ..StatusReport::new(ReportStatus::Failed)
        }),
    }
    steps
}

/// `/checkversion`: the device reports `version` (its firmware) and asks
/// for an update: the reported version is recorded, a released update is
/// acknowledged and described. It is the EnOS device's poll: it reads
/// only, unless there is something to write (a new version, the
/// acknowledgement: one write each against the rate limit), and then it
/// writes everything in one transaction.
pub async fn check_version(app: &App, ctx: &Ctx, version: &str) -> Result<EnosCheck> {
    let device = ctx.require_device()?.clone();
    let version = version.trim();
    let inventory = if version.is_empty() {
        None
    } else {
        let report = crate::service::device::Inventory {
            installed: vec![("firmware".to_owned(), Some(version.to_owned()))],
            attributes: Vec::new(),
        };
        crate::service::device::plan_inventory(&app.db, device.id, &report).await?.ok()
    };
    let mut current = current_update(&app.db, device.id).await?;
    let released = |current: &Option<(entity::device_update::Model, entity::deployment::Model)>| {
        current.as_ref().is_some_and(|(u, _)| u.state == UpdateState::Released.as_str())
    };
    if inventory.is_some() || released(&current) {
        let mut tx = WriteTx::begin(app).await?;
        if let Some(change) = inventory {
            app.rate_limits.device_write(device.id)?;
            crate::service::device::write_inventory_in(&mut tx, ctx, change).await?;
        }
        current = current_update(tx.conn(), device.id).await?;
        let mut woke = false;
        if let Some((update, _)) = current.as_ref().filter(|_| released(&current)) {
            app.rate_limits.device_write(device.id)?;
            let step = StatusReport::new(ReportStatus::Acknowledged);
            woke = report::apply_in(&mut tx, app, ctx, update.id, step).await?.woke;
        }
        tx.commit().await?;
        if woke {
            app.wake_workers();
        }
    }
    let asset_id = device.endpoint_id.clone();
    let Some((update, deployment)) = current else { return Ok(EnosCheck { asset_id, update: None }) };
    if UpdateState::parse(&update.state)? == UpdateState::Cancelled {
        return Ok(EnosCheck { asset_id, update: None });
    }
    let package = crate::service::package::get_any(&app.db, deployment.package_id).await?;
    let md5 = package.files.first().and_then(|f| f.md5.clone()).unwrap_or_default();
    Ok(EnosCheck {
        asset_id,
        update: Some(EnosUpdate { update_id: update.id, version: package.model.version.clone(), md5 }),
    })
}

/// `/downloadresult/{id}`: one write against the rate limit.
pub async fn download_result(
    app: &App,
    ctx: &Ctx,
    update_id: Uuid,
    code: i64,
    message: Option<String>,
) -> Result<entity::device_update::Model> {
    report::report(app, ctx, update_id, download_result_report(code, message)).await
}

/// `/updateresult` for the device's current update: one write against the
/// rate limit, however many steps it takes, all in one transaction.
pub async fn update_result(app: &App, ctx: &Ctx, result: UpdateResult) -> Result<entity::device_update::Model> {
    if !(0..=100).contains(&result.process) {
        return Err(Error::invalid("process", "between 0 and 100"));
    }
    let device = ctx.require_device()?;
    app.rate_limits.device_write(device.id)?;
    let mut tx = WriteTx::begin(app).await?;
    let (update, deployment) = current_update(tx.conn(), device.id)
        .await?
        .ok_or_else(|| Error::not_found(ResourceKind::UpdateInProgress, device.endpoint_id.clone()))?;
    let steps = update_result_steps(UpdateState::parse(&update.state)?, deployment.install_released, &result);
    let mut woke = false;
    for step in steps {
        report::validate(&step)?;
        woke |= report::apply_in(&mut tx, app, ctx, update.id, step).await?.woke;
    }
    tx.commit().await?;
    if woke {
        app.wake_workers();
    }
    find_update(&app.db, update.id).await
}
