//! The poll: what a device is offered (its current update, its pending
//! commands), with an ETag over exactly what it is told, and the long poll
//! that waits for news.
//!
//! Rule: the 304 path builds nothing. An `If-None-Match` equal to the
//! current ETag is answered from the ETag alone, and an idle device is
//! answered from the idle cache without a database read.

use chrono::{DateTime, Utc};
use entity::{deployment, device_update};
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::app::{App, Event};
use crate::auth::Ctx;
use crate::error::{Error, ResourceKind, Result};
use crate::service::deployment::UpdateState;
use crate::service::deployment::window::{MaintenanceWindow, WindowState};

/// The ETag of "nothing pending".
pub const IDLE_ETAG: &str = "\"idle\"";

/// What the device is to do with its current update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferAction {
    Download,
    /// Downloaded, and the install is released.
    Install,
    /// The update was cancelled; the device acknowledges with CANCELLED.
    Cancel,
}

impl OfferAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Download => "DOWNLOAD",
            Self::Install => "INSTALL",
            Self::Cancel => "CANCEL",
        }
    }
}

/// A device's current update, as offered to it.
#[derive(Clone, Debug)]
pub struct UpdateOffer {
    /// The device update's id (the one reports name).
    pub id: Uuid,
    pub deployment_id: Uuid,
    pub action: OfferAction,
    pub state: UpdateState,
    pub package_name: String,
    pub version: String,
    /// The signed device manifest (ExoSense `config_otau` with per-file
    /// `{name, url, length, sha256, md5}` and the signature); its file URLs
    /// need no credential until they expire.
    pub manifest: Value,
    /// The deployment's maintenance window now, when it has one: the
    /// device may start installing only while it is open.
    pub maintenance_window: Option<WindowState>,
}

/// One file of an offered update, as its manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedFile {
    pub name: String,
    pub url: String,
    pub length: i64,
    pub sha256: String,
    pub md5: Option<String>,
}

impl UpdateOffer {
    /// The files of the manifest (links are not files).
    pub fn files(&self) -> Vec<OfferedFile> {
        let text = |file: &Value, key: &str| file.get(key).and_then(Value::as_str).map(str::to_owned);
        self.manifest
            .get("files")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|file| OfferedFile {
                name: text(file, "name").unwrap_or_default(),
                url: text(file, "url").unwrap_or_default(),
                length: file.get("length").and_then(Value::as_i64).unwrap_or_default(),
                sha256: text(file, "sha256").unwrap_or_default(),
                md5: text(file, "md5"),
            })
            .collect()
    }
}

/// A pending command, as handed to its device.
#[derive(Clone, Debug)]
pub struct CommandOffer {
    pub id: Uuid,
    pub name: String,
    /// The command's arguments (JSON), null when it has none.
    pub args: Value,
    pub expires_at: DateTime<Utc>,
}

/// What a device is told on a poll.
#[derive(Clone, Debug)]
pub struct Poll {
    pub etag: String,
    /// None: no update pending (or the device has this answer already).
    pub update: Option<UpdateOffer>,
    /// Pending commands, oldest first.
    pub commands: Vec<CommandOffer>,
    /// When the update's file URLs are renewed (the ETag changes then): a
    /// long poll answers at that moment.
    pub renew_at: Option<DateTime<Utc>>,
}

impl Poll {
    /// Whether there is anything to send (else 204, or 304 on a match).
    pub fn has_news(&self) -> bool {
        self.update.is_some() || !self.commands.is_empty()
    }

    /// Whether the device holds this answer already (`If-None-Match`).
    pub fn not_modified(&self, if_none_match: Option<&str>) -> bool {
        !self.has_news() && if_none_match == Some(self.etag.as_str())
    }

    fn etag_only(etag: String) -> Self {
        Self { etag, update: None, commands: Vec::new(), renew_at: None }
    }
}

/// The updates a device may be offered: in flight, or cancelled after
/// their release and not acknowledged yet (its current one is the newest).
pub(super) fn offered() -> Condition {
    let mut states: Vec<&str> = UpdateState::IN_FLIGHT.iter().map(|s| s.as_str()).collect();
    states.push(UpdateState::Cancelled.as_str());
    Condition::all().add(device_update::Column::State.is_in(states)).add(
        Condition::any().add(device_update::Column::State.ne(UpdateState::Cancelled.as_str())).add(
            Condition::all()
                .add(device_update::Column::ReleasedAt.is_not_null())
                .add(device_update::Column::CancelAcknowledged.eq(false)),
        ),
    )
}

/// The device's current update: the newest in flight, or a cancel it has
/// not acknowledged.
pub(super) async fn current_update(
    conn: &impl ConnectionTrait,
    device: Uuid,
) -> Result<Option<(device_update::Model, deployment::Model)>> {
    let candidates = device_update::Entity::find()
        .filter(device_update::Column::DeviceId.eq(device))
        .filter(offered())
        .order_by_desc(device_update::Column::Id)
        .limit(1)
        .find_also_related(deployment::Entity)
        .all(conn)
        .await?;
    let Some((update, deployment)) = candidates.into_iter().next() else { return Ok(None) };
    let deployment =
        deployment.ok_or_else(|| Error::not_found(ResourceKind::Deployment, update.deployment_id.to_string()))?;
    Ok(Some((update, deployment)))
}

fn action_of(update: &device_update::Model, deployment: &deployment::Model) -> Result<OfferAction> {
    let state = UpdateState::parse(&update.state)?;
    Ok(match state {
        UpdateState::Cancelled => OfferAction::Cancel,
        UpdateState::Downloaded | UpdateState::Installing if deployment.install_released => OfferAction::Install,
        _ => OfferAction::Download,
    })
}

/// The device's pending update (with its signed manifest) and commands,
/// or none. `if_none_match` equal to the current ETag answers with the
/// ETag alone (the 304 path, no manifest built).
///
/// `fresh`: skip the idle cache (a long poll that was just told of news).
pub async fn poll(app: &App, ctx: &Ctx, if_none_match: Option<&str>, fresh: bool) -> Result<Poll> {
    let device = ctx.require_device()?;
    if !fresh && app.device_cache.is_idle(device.id) {
        return Ok(Poll::etag_only(IDLE_ETAG.to_owned()));
    }
    let seq = app.device_cache.seq();
    // Batched with the other polls asking at the same time (a release
    // wakes thousands at once: `batch.rs`).
    let (current, commands) = tokio::try_join!(
        app.poll_reads.current_update(&app.db, device.id),
        app.poll_reads.pending_commands(&app.db, device.id)
    )?;
    if current.is_none() && commands.is_empty() {
        app.device_cache.mark_idle(device.id, seq);
        return Ok(Poll::etag_only(IDLE_ETAG.to_owned()));
    }
    // The ETag names what the device is told: the update's step, its file
    // URLs (their expiry window and the credential they are signed under)
    // and the pending commands (a delivered command keeps its place until
    // acknowledged).
    let mut tag = String::new();
    let mut action = None;
    let mut urls = None;
    let mut window_state = None;
    if let Some((update, deployment)) = &current {
        window_state = MaintenanceWindow::state_of(deployment, Utc::now())?;
        let a = action_of(update, deployment)?;
        let row = crate::service::device_download::device_row(app, device.id)
            .await?
            .ok_or_else(|| Error::not_found(ResourceKind::Device, device.id.to_string()))?;
        let window =
            crate::service::device_download::window(update.id, app.config.devices.download_url_ttl, Utc::now());
        tag = format!(
            "{}:{}:{}:{}:{}:{}",
            update.id,
            update.state,
            a.as_str(),
            deployment.install_released,
            window.exp.timestamp(),
            row.credential_hash
        );
        if let Some(state) = &window_state {
            tag.push_str(if state.open { ":window-open" } else { ":window-closed" });
        }
        action = Some(a);
        urls = Some((window, row));
    }
    for command in &commands {
        tag.push_str(&format!("|{}", command.id));
    }
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(tag))[..32]);
    // The answer changes when the URLs are renewed or the window opens or
    // closes: a long poll answers then.
    let renew_at = [urls.as_ref().map(|(window, _)| window.renew_at), window_state.and_then(|w| w.changes_at())]
        .into_iter()
        .flatten()
        .min();
    if if_none_match == Some(etag.as_str()) {
        return Ok(Poll { renew_at, ..Poll::etag_only(etag) });
    }
    let update = match (current, action, urls) {
        (Some((update, deployment)), Some(action), Some((window, row))) => {
            let package = app.device_cache.package(&app.db, deployment.package_id).await?;
            let grant = crate::service::device_download::DeviceGrant {
                device: device.id,
                update: update.id,
                credential_hash: &row.credential_hash,
                exp: window.exp,
            };
            let manifest = crate::service::package::device_manifest_for(app, &package, &grant)?;
            Some(UpdateOffer {
                id: update.id,
                deployment_id: deployment.id,
                action,
                state: UpdateState::parse(&update.state)?,
                package_name: package.model.name.clone(),
                version: package.model.version.clone(),
                manifest,
                maintenance_window: window_state,
            })
        }
        _ => None,
    };
    // Delivery is at least once: if recording it fails, the commands stay
    // QUEUED and are handed out again; the device still gets them now.
    if let Err(err) = crate::service::command::mark_delivered(app, &commands).await {
        tracing::warn!(device = %device.id, error = %err, "could not record the delivery of commands");
    }
    let commands = commands
        .iter()
        .map(|c| CommandOffer {
            id: c.id,
            name: c.name.clone(),
            args: serde_json::from_str::<Value>(&c.args).unwrap_or(Value::Null),
            expires_at: c.expires_at,
        })
        .collect();
    Ok(Poll { etag, update, commands, renew_at })
}

/// The poll, held up to `wait` (at most `deployments.max_poll_wait`) until
/// there is news for the device: a release naming it, or the renewal of
/// its file URLs. Without `wait` it is [`poll`].
pub async fn poll_wait(
    app: &App,
    ctx: &Ctx,
    if_none_match: Option<&str>,
    wait: Option<std::time::Duration>,
) -> Result<Poll> {
    let device = ctx.require_device()?.id;
    let wait = wait.map(|w| w.min(app.config.deployments.max_poll_wait));
    // Subscribed before the first look, so nothing released in between is
    // missed (only by long polls: a plain poll never waits). The poll
    // channel carries only releases, so other devices' reports and audit
    // events do not wake this one.
    let mut events = wait.map(|_| app.poll_events.subscribe());
    let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
    let mut fresh = false;
    let answer = loop {
        let answer = poll(app, ctx, if_none_match, fresh).await?;
        fresh = true;
        if answer.has_news() || wait.is_none() {
            break answer;
        }
        let Some(events) = events.as_mut() else { break answer };
        let news = async {
            loop {
                match events.recv().await {
                    Ok(event) if concerns(&event, device) => return true,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                }
            }
        };
        // The update's file URLs are renewed at `renew_at` (a new ETag):
        // look again then, so a long poll never sits on URLs past renewal.
        let renew = answer
            .renew_at
            .and_then(|at| (at - Utc::now()).to_std().ok())
            .map(|left| tokio::time::Instant::now() + left + std::time::Duration::from_millis(50));
        let renew = renew.filter(|at| *at < deadline);
        tokio::select! {
            more = news => if !more { break answer },
            () = tokio::time::sleep_until(deadline) => break answer,
            () = async { if let Some(at) = renew { tokio::time::sleep_until(at).await } else { std::future::pending().await } } => {}
        }
    };
    Ok(answer)
}

/// Whether `event` has news for `device`'s poll (for long polls).
pub fn concerns(event: &Event, device: Uuid) -> bool {
    matches!(event, Event::DevicesReleased(devices) if devices.contains(&device))
        || matches!(event, Event::AllPollersWake)
}
