//! Per-process caches for the device API's hot path: a device's
//! credential row, the set of devices known to have nothing pending, and
//! (for the check of a device's file URL) the states of device updates.
//! With them, a poll that finds nothing new (the 304 path, most of a
//! fleet's traffic) touches no database.
//!
//! Rule: an entry is only ever a copy of committed state, dropped by the
//! events that change it (`DeviceChanged`, `DevicesReleased`,
//! `AllPollersWake`), which arrive from every process through
//! `events.rs`; a lagging or reconnecting event stream clears everything.
//! Until [`DeviceCache::run`] is running (only `serve` runs it), the cache
//! is bypassed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::{App, Event};

/// How long a credential row is trusted without an event (a safety net:
/// events drop it at once when it changes).
const AUTH_TTL: Duration = Duration::from_secs(15 * 60);
/// Entries at most (a fleet of this many devices stays cached).
const MAX_ENTRIES: usize = 1_000_000;
/// `last_seen_at` is written at most this often per device.
const SEEN_EVERY: Duration = Duration::from_secs(60);

/// What a DDI base poll tells an idle device (`service/device_api/ddi.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DdiFacts {
    /// It has reported attributes (no `configData` link).
    pub has_attributes: bool,
    /// The action id of the update it installed last.
    pub installed: Option<i32>,
}

#[derive(Default)]
pub struct DeviceCache {
    enabled: AtomicBool,
    /// Devices seen since the last flush, and whether they await activation.
    seen: Mutex<HashMap<Uuid, bool>>,
    /// When each device's `last_seen_at` was last written by this process.
    written: Mutex<HashMap<Uuid, Instant>>,
    auth: Mutex<HashMap<Uuid, (Arc<entity::device::Model>, Instant)>>,
    idle: Mutex<HashSet<Uuid>>,
    /// What a hawkBit DDI base poll shows of an idle device besides "no
    /// action"; kept only while it is idle, dropped with its idleness.
    ddi: Mutex<HashMap<Uuid, DdiFacts>>,
    /// Bumped by every event that may end a device's idleness.
    seq: AtomicU64,
    /// Device updates' states, for the check of a device's file URL
    /// (`service/device_download.rs`).
    pub updates: crate::service::device_download::UpdateCache,
    /// The packages devices are offered, with their files.
    pub packages: crate::service::package::cache::PackageCache,
}

impl DeviceCache {
    /// The package `id` with its files (see `service/package/cache.rs`).
    pub async fn package(
        &self,
        conn: &impl sea_orm::ConnectionTrait,
        id: Uuid,
    ) -> crate::error::Result<Arc<crate::service::package::Package>> {
        self.packages.get(conn, id, self.on()).await
    }

    fn on(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn device(&self, id: Uuid) -> Option<Arc<entity::device::Model>> {
        if !self.on() {
            return None;
        }
        let auth = self.auth.lock().ok()?;
        auth.get(&id).filter(|(_, at)| at.elapsed() < AUTH_TTL).map(|(row, _)| row.clone())
    }

    /// Remember a device row read at sequence `seq` (see [`Self::seq`]).
    pub fn remember(&self, row: Arc<entity::device::Model>, seq: u64) {
        if !self.on() {
            return;
        }
        if let Ok(mut auth) = self.auth.lock() {
            // Checked under the lock that invalidation also takes.
            if self.seq.load(Ordering::Acquire) != seq {
                return;
            }
            if auth.len() >= MAX_ENTRIES {
                auth.clear();
            }
            auth.insert(row.id, (row, Instant::now()));
        }
    }

    /// A device update's state, for the download check.
    pub fn update(&self, id: Uuid) -> Option<crate::service::device_download::CachedUpdate> {
        if !self.on() {
            return None;
        }
        self.updates.get(id)
    }

    /// Remember an update read at `updates.seq()` == `seq`.
    pub fn remember_update(&self, update: crate::service::device_download::CachedUpdate, seq: u64) {
        if self.on() {
            self.updates.remember(update, seq);
        }
    }

    /// The device became ACTIVE (its first call was written).
    pub fn mark_active(&self, id: Uuid, seen_at: chrono::DateTime<chrono::Utc>) {
        if let Ok(mut auth) = self.auth.lock()
            && let Some((row, _)) = auth.get_mut(&id)
        {
            let mut active = (**row).clone();
            active.status = "ACTIVE".to_owned();
            active.last_seen_at = Some(seen_at);
            *row = Arc::new(active);
        }
    }

    pub fn forget(&self, id: Uuid) {
        if let Ok(mut auth) = self.auth.lock() {
            auth.remove(&id);
        }
    }

    /// The sequence to read before looking at the database: an entry is
    /// only stored if no invalidating event came in between.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    pub fn is_idle(&self, device: Uuid) -> bool {
        self.on() && self.idle.lock().is_ok_and(|idle| idle.contains(&device))
    }

    pub fn mark_idle(&self, device: Uuid, seq: u64) {
        if !self.on() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            // Checked under the lock that invalidation also takes.
            if self.seq.load(Ordering::Acquire) == seq {
                if idle.len() >= MAX_ENTRIES {
                    idle.clear();
                }
                idle.insert(device);
            }
        }
    }

    /// The DDI facts of an idle device, if they are known.
    pub fn idle_ddi(&self, device: Uuid) -> Option<DdiFacts> {
        if !self.on() {
            return None;
        }
        let idle = self.idle.lock().ok()?;
        let ddi = self.ddi.lock().ok()?;
        idle.contains(&device).then(|| ddi.get(&device).copied()).flatten()
    }

    /// [`Self::mark_idle`], with what a DDI base poll shows of the device.
    pub fn mark_idle_ddi(&self, device: Uuid, seq: u64, facts: DdiFacts) {
        if !self.on() {
            return;
        }
        if let (Ok(mut idle), Ok(mut ddi)) = (self.idle.lock(), self.ddi.lock())
            && self.seq.load(Ordering::Acquire) == seq
        {
            if idle.len() >= MAX_ENTRIES || ddi.len() >= MAX_ENTRIES {
                idle.clear();
                ddi.clear();
            }
            idle.insert(device);
            ddi.insert(device, facts);
        }
    }

    /// Note that a device called in; written in batches by the flush (at
    /// most once a minute per device, or at once on its first call when it
    /// becomes ACTIVE). False when the cache is not running: the caller
    /// writes it itself.
    pub fn record_seen(&self, id: Uuid, activate: bool, stored: Option<chrono::DateTime<chrono::Utc>>) -> bool {
        if !self.on() {
            return false;
        }
        // Written (or being written, with the activation) by this process
        // lately: nothing to add.
        let fresh_here = self.written.lock().is_ok_and(|w| w.get(&id).is_some_and(|at| at.elapsed() < SEEN_EVERY));
        let fresh_in_db = stored.is_some_and(|at| chrono::Utc::now() - at < chrono::TimeDelta::seconds(60));
        if fresh_here || (fresh_in_db && !activate) {
            return true;
        }
        if let Ok(mut seen) = self.seen.lock() {
            *seen.entry(id).or_insert(false) |= activate;
        }
        true
    }

    fn take_seen(&self) -> HashMap<Uuid, bool> {
        self.seen.lock().map(|mut seen| std::mem::take(&mut *seen)).unwrap_or_default()
    }

    fn mark_written(&self, ids: impl Iterator<Item = Uuid>) {
        if let Ok(mut written) = self.written.lock() {
            if written.len() >= MAX_ENTRIES {
                written.clear();
            }
            let now = Instant::now();
            for id in ids {
                written.insert(id, now);
            }
        }
    }

    /// Devices whose activation the flush put off (their row was held):
    /// queued again for the next flush.
    pub(crate) fn retry_activation(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        self.unmark_written(ids);
        if let Ok(mut seen) = self.seen.lock() {
            for id in ids {
                seen.insert(*id, true);
            }
        }
    }

    fn unmark_written(&self, ids: &[Uuid]) {
        if let Ok(mut written) = self.written.lock() {
            for id in ids {
                written.remove(id);
            }
        }
    }

    /// Drop what `event` makes stale. Called by the committing write itself
    /// (so this process never serves a stale entry after its own change),
    /// and by the event loop for other processes' changes.
    pub(crate) fn invalidate(&self, event: &Event) {
        self.updates.invalidate(event);
        self.packages.invalidate(event);
        let (Ok(mut idle), Ok(mut auth), Ok(mut ddi)) = (self.idle.lock(), self.auth.lock(), self.ddi.lock()) else {
            return;
        };
        match event {
            Event::DevicesReleased(devices) => {
                for device in devices.iter() {
                    idle.remove(device);
                    ddi.remove(device);
                }
            }
            Event::DeviceChanged(device) => {
                idle.remove(device);
                ddi.remove(device);
                auth.remove(device);
                if let Ok(mut written) = self.written.lock() {
                    written.remove(device);
                }
            }
            Event::AllPollersWake => {
                idle.clear();
                ddi.clear();
                auth.clear();
                if let Ok(mut written) = self.written.lock() {
                    written.clear();
                }
            }
            _ => return,
        }
        self.seq.fetch_add(1, Ordering::AcqRel);
    }

    fn clear(&self) {
        self.updates.clear();
        self.packages.clear();
        if let (Ok(mut idle), Ok(mut auth), Ok(mut ddi)) = (self.idle.lock(), self.auth.lock(), self.ddi.lock()) {
            idle.clear();
            ddi.clear();
            auth.clear();
            self.seq.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Keep the cache in step with the event stream, and flush the seen
    /// devices every `devices.seen_flush_interval`, until `shutdown`.
    pub fn spawn(app: App, shutdown: CancellationToken) {
        let mut events = app.events.subscribe();
        app.device_cache.enabled.store(true, Ordering::Release);
        let mut flush = tokio::time::interval(app.config.devices.seen_flush_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = flush.tick() => {
                        let seen = app.device_cache.take_seen();
                        if !seen.is_empty() {
                            // Marked before the write, so a call arriving while it
                            // runs is not queued for a second one.
                            let ids: Vec<Uuid> = seen.keys().copied().collect();
                            app.device_cache.mark_written(ids.iter().copied());
                            match crate::service::device::flush_seen(&app, seen).await {
                                Ok(put_off) => app.device_cache.retry_activation(&put_off),
                                Err(err) => {
                                    app.device_cache.unmark_written(&ids);
                                    tracing::warn!(error = %err, "could not record when devices were seen");
                                }
                            }
                        }
                        continue;
                    }
                    event = events.recv() => event,
                };
                match event {
                    Ok(event) => app.device_cache.invalidate(&event),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => app.device_cache.clear(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
            app.device_cache.enabled.store(false, Ordering::Release);
            let seen = app.device_cache.take_seen();
            if !seen.is_empty()
                && let Err(err) = crate::service::device::flush_seen(&app, seen).await
            {
                tracing::warn!(error = %err, "could not record when devices were seen");
            }
            app.device_cache.clear();
        });
    }
}
