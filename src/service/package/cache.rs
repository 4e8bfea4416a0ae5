//! The packages that devices are offered, read once per process and
//! shared: when a release wakes 10,000 long polls of one deployment, the
//! first reads the package with its files (four statements), the others
//! wait for that one read and share it.
//!
//! Rule: an entry is a copy of committed state, dropped by the events that
//! change it: the audit event of any write to the package (every package
//! mutation appends one, and audit events reach every process), any
//! content change (a file's state), a wake-everyone or a lagging event
//! stream; at the latest after [`TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::Package;
use crate::app::Event;
use crate::error::{ResourceKind, Result};

/// How long an entry is trusted without an event (a safety net).
const TTL: Duration = Duration::from_secs(15 * 60);
/// Entries at most (each is one package: a fleet has few at a time).
const MAX_ENTRIES: usize = 10_000;

type Slot = Arc<OnceCell<Arc<Package>>>;

#[derive(Default)]
pub struct PackageCache {
    entries: Mutex<HashMap<Uuid, (Instant, Slot)>>,
}

impl PackageCache {
    /// The package `id` with its files, from the cache when `cached`
    /// (the event stream keeps it right: `DeviceCache::run` is running),
    /// else read on `conn`. A caller inside a transaction passes its
    /// transaction: a read from the pool while holding a connection could
    /// wait for a connection that only such callers hold.
    pub async fn get(&self, conn: &impl ConnectionTrait, id: Uuid, cached: bool) -> Result<Arc<Package>> {
        if !cached {
            return Ok(Arc::new(super::get_any(conn, id).await?));
        }
        let slot = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            match entries.get(&id) {
                Some((at, slot)) if at.elapsed() < TTL => slot.clone(),
                _ => {
                    if entries.len() >= MAX_ENTRIES {
                        entries.clear();
                    }
                    let slot = Slot::default();
                    entries.insert(id, (Instant::now(), slot.clone()));
                    slot
                }
            }
        };
        // One read for all who ask at once; a failed read leaves the slot
        // empty for the next caller to try again.
        let package = slot.get_or_try_init(|| async { super::get_any(conn, id).await.map(Arc::new) }).await?;
        Ok(package.clone())
    }

    /// Drop what `event` makes stale.
    pub fn invalidate(&self, event: &Event) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Audit(audit) if audit.object_kind == ResourceKind::Package.audit_kind() => {
                match audit.object_id.parse::<Uuid>() {
                    Ok(id) => {
                        entries.remove(&id);
                    }
                    // A write of many packages (reindex).
                    Err(_) => entries.clear(),
                }
            }
            Event::ContentChanged(_) | Event::AllPollersWake => entries.clear(),
            _ => {}
        }
    }

    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}
