//! A device's file URLs: the signed links in the manifest a poll hands
//! out (`/repo/<content>/<name>?device=…&update=…&exp=…&sig=…`), how long
//! they live, and the check when they are used.
//!
//! A URL is a capability for one device's one update. Its HMAC covers the
//! content, the device, the update and the device's credential hash at the
//! time of signing (the hash is never in the URL). At download time it
//! holds only while
//! - the device may download: REGISTERED or ACTIVE (REGISTERED too, since
//!   a device's first call is written in batches: it may have polled and
//!   still read REGISTERED for a moment); DECOMMISSIONED, REJECTED or
//!   PENDING get 403;
//! - its update is in flight (not INSTALLED, FAILED, CANCELLED or SKIPPED);
//! - its credential is the one the URL was signed under: a rotation changes
//!   the hash, so every older URL stops verifying (403).
//!
//! Lifetimes come in windows. With `devices.download_url_ttl` = 2w
//! (seconds, rounded down to even), a URL issued in window `k` expires at
//! the end of window `k + 1`: every poll within one window hands out the
//! same URL (so the poll's ETag, which covers the expiry, holds and 304s
//! keep working), and the URL a device holds never has less than half its
//! life left when it polls, since the next window's poll renews it. Windows
//! are offset per update (from the random bits of its id), so a fleet does
//! not renew all at once.
//!
//! Rule: with warm caches the check reads no database. The device row comes
//! from `DeviceCache`; the update's state from [`UpdateCache`]. Both hold
//! only copies of committed state, dropped by the events that change them
//! (`DeviceChanged`; `DeviceUpdateChanged` for a report, `DeploymentChanged`
//! for the bulk changes of a deployment, which `deployment.rs` publishes
//! whenever it cancels updates), from every process through `events.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use entity::{device, device_update};
use sea_orm::{EntityTrait, QuerySelect};
use uuid::Uuid;

use crate::app::{App, Event};
use crate::error::{Error, Result};
use crate::service::deployment::UpdateState;
use crate::service::device::DeviceStatus;

/// What a device's file URLs are signed for: the content, the device, its
/// update and its credential.
const DEVICE_DOWNLOAD_PURPOSE: &str = "content-download-device";
/// How long an update's state is trusted without an event (a safety net).
const UPDATE_TTL: Duration = Duration::from_secs(15 * 60);
/// Entries at most.
const MAX_ENTRIES: usize = 1_000_000;

/// What a device's file URLs are signed for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeviceGrant<'a> {
    pub device: Uuid,
    pub update: Uuid,
    /// The device's credential hash now (signed over, never shown).
    pub credential_hash: &'a str,
    pub exp: DateTime<Utc>,
}

/// The expiry of the URLs handed out now, and when the next ones are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UrlWindow {
    pub exp: DateTime<Utc>,
    /// From then on a poll hands out new URLs (half their life is left).
    pub renew_at: DateTime<Utc>,
}

/// The window of `update`'s URLs at `now` (see the module doc).
pub(crate) fn window(update: Uuid, ttl: Duration, now: DateTime<Utc>) -> UrlWindow {
    let half = i64::try_from(ttl.as_secs() / 2).unwrap_or(i64::MAX / 4).max(1);
    // The random tail of a UUIDv7 spreads the fleet's renewals.
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&update.as_bytes()[8..16]);
    let offset = i64::try_from(u64::from_le_bytes(tail) % u64::try_from(half).unwrap_or(1)).unwrap_or_default();
    let k = (now.timestamp() - offset).div_euclid(half);
    let at = |window: i64| DateTime::from_timestamp(offset + window * half, 0).unwrap_or(now);
    UrlWindow { exp: at(k + 2), renew_at: at(k + 1) }
}

fn parts(content: Uuid, grant: &DeviceGrant<'_>) -> [String; 4] {
    [content.to_string(), grant.device.to_string(), grant.update.to_string(), grant.credential_hash.to_owned()]
}

/// The query string of `content`'s URL for `grant`.
pub(crate) fn signed_query(app: &App, content: Uuid, grant: &DeviceGrant<'_>) -> String {
    let parts = parts(content, grant);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let sig = app.signer.sign(DEVICE_DOWNLOAD_PURPOSE, &parts, grant.exp);
    format!("device={}&update={}&exp={}&sig={sig}", grant.device, grant.update, grant.exp.timestamp())
}

/// A device's row: from the cache, else read and remembered.
pub(crate) async fn device_row(app: &App, id: Uuid) -> Result<Option<Arc<device::Model>>> {
    if let Some(row) = app.device_cache.device(id) {
        return Ok(Some(row));
    }
    let seq = app.device_cache.seq();
    let Some(row) = device::Entity::find_by_id(id).one(&app.db).await? else { return Ok(None) };
    let row = Arc::new(row);
    app.device_cache.remember(row.clone(), seq);
    Ok(Some(row))
}

/// Whether a URL signed for `device` and `update` still lets `content` be
/// downloaded (see the module doc); FORBIDDEN when it does not.
pub(crate) async fn check(
    app: &App,
    content: Uuid,
    device: &str,
    update: Option<&str>,
    exp: i64,
    sig: &str,
) -> Result<()> {
    let refused = || Error::BadSignature("does not verify");
    let device = Uuid::try_parse(device).map_err(|_| refused())?;
    let update = update.and_then(|u| Uuid::try_parse(u).ok()).ok_or_else(refused)?;
    let row = device_row(app, device).await?.ok_or_else(refused)?;
    let exp_at = DateTime::from_timestamp(exp, 0).ok_or_else(refused)?;
    let grant = DeviceGrant { device, update, credential_hash: &row.credential_hash, exp: exp_at };
    let parts = parts(content, &grant);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    // A rotated credential lands here too: the hash signed over changed.
    app.signer.verify(DEVICE_DOWNLOAD_PURPOSE, &parts, exp, sig)?;
    if !matches!(DeviceStatus::parse(&row.status)?, DeviceStatus::Registered | DeviceStatus::Active) {
        return Err(Error::BadSignature("is no longer valid: its device may not download"));
    }
    let cached = match app.device_cache.update(update) {
        Some(cached) => cached,
        None => {
            let seq = app.device_cache.updates.seq();
            let found: Option<(Uuid, Uuid, Uuid, String)> = device_update::Entity::find_by_id(update)
                .select_only()
                .columns([
                    device_update::Column::Id,
                    device_update::Column::DeviceId,
                    device_update::Column::DeploymentId,
                    device_update::Column::State,
                ])
                .into_tuple()
                .one(&app.db)
                .await?;
            let (id, device, deployment, state) = found.ok_or_else(refused)?;
            let cached = CachedUpdate { id, device, deployment, in_flight: UpdateState::parse(&state)?.in_flight() };
            app.device_cache.remember_update(cached, seq);
            cached
        }
    };
    if cached.device != device || !cached.in_flight {
        return Err(Error::BadSignature("is no longer valid: its update is over"));
    }
    Ok(())
}

/// What the download check needs of a device update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedUpdate {
    pub id: Uuid,
    pub device: Uuid,
    pub deployment: Uuid,
    /// RELEASED to INSTALLING (its files may be downloaded).
    pub in_flight: bool,
}

/// Per-process copies of device updates' states, for the download check.
#[derive(Default)]
pub struct UpdateCache {
    entries: Mutex<Entries>,
    /// Bumped by every invalidation: a reader stores what it read only if
    /// none came in between (checked under the lock).
    seq: AtomicU64,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<Uuid, (CachedUpdate, Instant)>,
    by_deployment: HashMap<Uuid, HashSet<Uuid>>,
}

impl UpdateCache {
    pub fn get(&self, id: Uuid) -> Option<CachedUpdate> {
        let entries = self.entries.lock().ok()?;
        entries.by_id.get(&id).filter(|(_, at)| at.elapsed() < UPDATE_TTL).map(|(u, _)| *u)
    }

    /// The sequence to read before reading the database (see `seq`).
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    pub fn remember(&self, update: CachedUpdate, seq: u64) {
        let Ok(mut entries) = self.entries.lock() else { return };
        if self.seq.load(Ordering::Acquire) != seq {
            return;
        }
        if entries.by_id.len() >= MAX_ENTRIES {
            *entries = Entries::default();
        }
        entries.by_id.insert(update.id, (update, Instant::now()));
        entries.by_deployment.entry(update.deployment).or_default().insert(update.id);
    }

    /// Drop what `event` makes stale.
    pub fn invalidate(&self, event: &Event) {
        let Ok(mut entries) = self.entries.lock() else { return };
        match event {
            Event::DeviceUpdateChanged { deployment, update } => {
                entries.by_id.remove(update);
                if let Some(ids) = entries.by_deployment.get_mut(deployment) {
                    ids.remove(update);
                }
            }
            Event::DeploymentChanged(deployment) => {
                if let Some(ids) = entries.by_deployment.remove(deployment) {
                    for id in ids {
                        entries.by_id.remove(&id);
                    }
                }
            }
            Event::AllPollersWake => *entries = Entries::default(),
            _ => return,
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            *entries = Entries::default();
            self.seq.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_renew_at_half_life_and_stay_put_within_one() {
        let update = Uuid::now_v7();
        let ttl = Duration::from_secs(24 * 3600);
        let start = Utc::now();
        let first = window(update, ttl, start);
        let left = first.exp - start;
        assert!(left > chrono::TimeDelta::hours(12) && left <= chrono::TimeDelta::hours(24), "{left}");
        assert!(first.renew_at > start && first.renew_at - start <= chrono::TimeDelta::hours(12));
        assert_eq!(first.exp - first.renew_at, chrono::TimeDelta::hours(12));
        // The same URL until the renewal, a new one from then on.
        let before = first.renew_at - chrono::TimeDelta::seconds(1);
        assert_eq!(window(update, ttl, before), first);
        let next = window(update, ttl, first.renew_at);
        assert_eq!(next.exp, first.exp + chrono::TimeDelta::hours(12));
        assert_eq!(next.renew_at, first.exp);
    }
}
