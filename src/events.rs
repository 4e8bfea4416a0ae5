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
/// Past this many devices, a release wakes every long poll instead of
/// naming them (a NOTIFY payload holds 8,000 bytes).
const MAX_NAMED_DEVICES: usize = 100;

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

fn to_wire(event: &Event) -> WireEvent {
    match event {
        Event::Audit(audit) => WireEvent::Audit(audit.seq),
        Event::ContentChanged(id) => WireEvent::Content(*id),
        Event::DeploymentChanged(id) => WireEvent::Deployment(*id),
        Event::DeviceUpdateChanged { deployment, update } => {
            WireEvent::Update { deployment: *deployment, update: *update }
        }
        Event::DevicesReleased(devices) if devices.len() <= MAX_NAMED_DEVICES => {
            WireEvent::Devices(devices.iter().copied().collect())
        }
        Event::DevicesReleased(_) | Event::AllPollersWake => WireEvent::AllDevices,
        Event::DeviceChanged(id) => WireEvent::Device(*id),
        Event::CommandChanged { batch, command } => WireEvent::Command { batch: *batch, command: *command },
        Event::CommandBatchChanged(batch) => WireEvent::CommandBatch(*batch),
    }
}

/// NOTIFY `events` inside `tx` (PostgreSQL only; a no-op on SQLite).
pub async fn notify(tx: &DatabaseTransaction, origin: Uuid, events: &[Event]) -> Result<(), sea_orm::DbErr> {
    if tx.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    for event in events {
        let payload = serde_json::to_string(&Wire { origin, event: to_wire(event) }).unwrap_or_default();
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [CHANNEL.into(), payload.into()],
        ))
        .await?;
    }
    Ok(())
}

/// On PostgreSQL, listen for other processes' events until `shutdown`,
/// reconnecting after errors.
pub fn spawn_listener(app: App, shutdown: CancellationToken) {
    if app.db.get_database_backend() != DbBackend::Postgres {
        return;
    }
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
