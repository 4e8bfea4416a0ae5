//! Live events across processes. Every committed write publishes its
//! events to this process's subscribers ([`crate::app::App::publish`]); on
//! PostgreSQL the same transaction also NOTIFYs them on [`CHANNEL`]
//! (delivered only if it commits), and every process LISTENs there and
//! republishes what other processes wrote. So a subscription or a device's
//! long poll on one `serve` replica sees changes made through another.
//! SQLite has one process, and needs none of it.

use std::collections::HashSet;
use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, Statement};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::{App, Event};

pub const CHANNEL: &str = "otadepot_events";
/// A release names its devices in NOTIFYs of this many each (a NOTIFY
/// payload holds at most 8,000 bytes; 150 ids in JSON are about 5,900).
const DEVICES_PER_NOTIFY: usize = 150;

#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    origin: Uuid,
    event: WireEvent,
}

#[derive(Debug, Serialize, Deserialize)]
enum WireEvent {
    Audit(i64),
    Content(Uuid),
    Deployment(Uuid),
    Update { deployment: Uuid, update: Uuid },
    Devices(Vec<Uuid>),
    AllDevices,
    Device(Uuid),
    Command { batch: Uuid, command: Uuid },
    CommandBatch(Uuid),
}

/// What `event` is on the wire: one message, or for a release one per
/// [`DEVICES_PER_NOTIFY`] devices (so another replica wakes exactly the
/// long polls it names, however many).
fn to_wire(event: &Event) -> Vec<WireEvent> {
    vec![match event {
        Event::Audit(audit) => WireEvent::Audit(audit.seq),
        Event::ContentChanged(id) => WireEvent::Content(*id),
        Event::DeploymentChanged(id) => WireEvent::Deployment(*id),
        Event::DeviceUpdateChanged { deployment, update } => {
            WireEvent::Update { deployment: *deployment, update: *update }
        }
        Event::DevicesReleased(devices) => {
            let devices: Vec<Uuid> = devices.iter().copied().collect();
            return devices.chunks(DEVICES_PER_NOTIFY).map(|chunk| WireEvent::Devices(chunk.to_vec())).collect();
        }
        Event::AllPollersWake => WireEvent::AllDevices,
        Event::DeviceChanged(id) => WireEvent::Device(*id),
        Event::CommandChanged { batch, command } => WireEvent::Command { batch: *batch, command: *command },
        Event::CommandBatchChanged(batch) => WireEvent::CommandBatch(*batch),
    }]
}

/// NOTIFY `events` inside `tx` (PostgreSQL only; a no-op on SQLite): one
/// statement however many messages (`pg_notify` over a JSON array of the
/// payloads, sent in order).
pub async fn notify(tx: &DatabaseTransaction, origin: Uuid, events: &[Event]) -> Result<(), sea_orm::DbErr> {
    if tx.get_database_backend() != DbBackend::Postgres || events.is_empty() {
        return Ok(());
    }
    tx.execute_raw(notify_statement(origin, events)).await?;
    Ok(())
}

/// Events committed already that other processes learn of in batches
/// (`WriteTx::notify_soon`): one NOTIFY, outside any transaction, for all
/// that gathered in [`DEFERRED_EVERY`]. Only on PostgreSQL (SQLite has one
/// process).
#[derive(Default)]
pub struct Deferred {
    /// Whether a sender runs (only `serve` on PostgreSQL starts one);
    /// without one, nothing is kept.
    enabled: std::sync::atomic::AtomicBool,
    pending: std::sync::Mutex<Vec<Event>>,
}

/// How long deferred events gather before they are sent.
pub const DEFERRED_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl Deferred {
    pub fn push(&self, events: &[Event]) {
        if !self.enabled.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A bound, so a database that is away cannot grow it without end:
        // these are progress news, the next one supersedes them.
        if pending.len() < 100_000 {
            pending.extend(events.iter().cloned());
        }
    }

    fn take(&self) -> Vec<Event> {
        let mut events = std::mem::take(&mut *self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        // One message per thing changed is enough: its newest state is
        // read by whoever is told.
        let mut seen = HashSet::new();
        events.retain(|event| seen.insert(format!("{:?}", to_wire(event))));
        events
    }
}

/// Send what was deferred, every [`DEFERRED_EVERY`], until `shutdown`
/// (then once more).
async fn send_deferred(app: App, shutdown: CancellationToken) {
    app.deferred_events.enabled.store(true, std::sync::atomic::Ordering::Release);
    loop {
        let stop = tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(DEFERRED_EVERY) => false,
        };
        let events = app.deferred_events.take();
        if !events.is_empty()
            && let Err(err) = notify_now(&app, &events).await
        {
            tracing::warn!(error = %err, count = events.len(), "could not send deferred events to other processes");
        }
        if stop {
            app.deferred_events.enabled.store(false, std::sync::atomic::Ordering::Release);
            break;
        }
    }
}

async fn notify_now(app: &App, events: &[Event]) -> Result<(), sea_orm::DbErr> {
    app.db.execute_raw(notify_statement(app.instance, events)).await?;
    Ok(())
}

/// One `pg_notify` per wire message of `events`, in order, as one statement.
fn notify_statement(origin: Uuid, events: &[Event]) -> Statement {
    let payloads: Vec<String> = events
        .iter()
        .flat_map(to_wire)
        .map(|event| serde_json::to_string(&Wire { origin, event }).unwrap_or_default())
        .collect();
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, payload) FROM json_array_elements_text($2::json) WITH ORDINALITY AS p(payload, n) ORDER BY n",
        [CHANNEL.into(), serde_json::to_string(&payloads).unwrap_or_default().into()],
    )
}

/// On PostgreSQL, listen for other processes' events until `shutdown`,
/// reconnecting after errors.
pub fn spawn_listener(app: App, shutdown: CancellationToken) {
    if app.db.get_database_backend() != DbBackend::Postgres {
        return;
    }
    tokio::spawn(send_deferred(app.clone(), shutdown.clone()));
    tokio::spawn(async move {
        while !shutdown.is_cancelled() {
            if let Err(err) = listen(&app, &shutdown).await {
                tracing::warn!(error = %err, "event listener lost its connection; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    });
}

async fn listen(app: &App, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let pool = app.db.get_postgres_connection_pool();
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Whatever happened while not listening is unknown: drop every cache.
    app.publish(Event::AllPollersWake);
    loop {
        let notification = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            n = listener.recv() => n?,
        };
        let Ok(wire) = serde_json::from_str::<Wire>(notification.payload()) else {
            tracing::warn!(payload = notification.payload(), "unreadable event notification");
            continue;
        };
        if wire.origin == app.instance {
            continue;
        }
        let event = match wire.event {
            WireEvent::Audit(seq) => {
                let found = entity::audit_event::Entity::find()
                    .filter(sea_orm::ColumnTrait::eq(&entity::audit_event::Column::Seq, seq))
                    .one(&app.db)
                    .await?;
                match found {
                    Some(row) => Event::Audit(Box::new(row)),
                    None => continue,
                }
            }
            WireEvent::Content(id) => Event::ContentChanged(id),
            WireEvent::Deployment(id) => Event::DeploymentChanged(id),
            WireEvent::Update { deployment, update } => Event::DeviceUpdateChanged { deployment, update },
            WireEvent::Devices(ids) => Event::DevicesReleased(Arc::new(ids.into_iter().collect::<HashSet<_>>())),
            WireEvent::AllDevices => Event::AllPollersWake,
            WireEvent::Device(id) => Event::DeviceChanged(id),
            WireEvent::Command { batch, command } => Event::CommandChanged { batch, command },
            WireEvent::CommandBatch(batch) => Event::CommandBatchChanged(batch),
        };
        app.publish(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_release_names_every_device_in_payloads_notify_can_carry() {
        let devices: HashSet<Uuid> = (0..401).map(|_| Uuid::now_v7()).collect();
        let wire = to_wire(&Event::DevicesReleased(Arc::new(devices.clone())));
        assert_eq!(wire.len(), 3, "150 + 150 + 101");
        let mut named = HashSet::new();
        for event in wire {
            let payload = serde_json::to_string(&Wire { origin: Uuid::now_v7(), event }).unwrap();
            assert!(payload.len() < 8000, "a NOTIFY payload of {} bytes", payload.len());
            let Wire { event: WireEvent::Devices(ids), .. } = serde_json::from_str(&payload).unwrap() else {
                panic!("not a device list: {payload}");
            };
            named.extend(ids);
        }
        assert_eq!(named, devices);
        assert!(matches!(to_wire(&Event::AllPollersWake)[..], [WireEvent::AllDevices]));
    }
}
