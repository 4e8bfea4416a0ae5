//! The reads of many polls at once, made together: when a release wakes
//! thousands of long polls in the same instant, each needs its own update
//! and its pending commands. Asked one by one that is two statements a
//! device (20,000 round trips for a fleet of 10,000, through a pool of ten
//! connections); batched it is two statements per [`MAX_BATCH`] devices.
//!
//! Rule: a batch is read after every request in it was made, so each
//! caller sees state at least as new as when it asked (what a read of its
//! own would have seen). A lone poll is read at once.
//! The batch runs on a task of its own: a caller that goes away (its
//! client hung up) never cancels the read the others wait for.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;
use entity::{command, deployment, device_update};
use futures::{FutureExt, StreamExt};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::service::command::CommandState;

/// Devices per statement (well under the bind-parameter limits of both
/// databases).
const MAX_BATCH: usize = 500;
/// Statements of one batch run at once (the pool has ten connections by
/// default; the rest stays for everyone else).
const PARALLEL: usize = 4;

type Waiter<V> = (Uuid, oneshot::Sender<std::result::Result<V, String>>);

/// Requests for one kind of read, waiting to be made together, and
/// whether a drainer is making them.
struct Batcher<V> {
    queue: Mutex<(Vec<Waiter<V>>, bool)>,
}

impl<V> Default for Batcher<V> {
    fn default() -> Self {
        Self { queue: Mutex::new((Vec::new(), false)) }
    }
}

impl<V: Clone + Default + Send + 'static> Batcher<V> {
    /// `device`'s value, read with whoever asks meanwhile by `read`
    /// (devices → their values; a device it leaves out gets the default).
    ///
    /// One drainer at a time: it takes everything queued, reads it (in
    /// statements of [`MAX_BATCH`] devices, [`PARALLEL`] at once), and
    /// goes on while more arrived during that read. A lone caller is read
    /// at once; under a burst, everyone arriving during one read is in the
    /// next.
    async fn load<F, Fut>(self: &Arc<Self>, device: Uuid, read: F) -> Result<V>
    where
        F: Fn(Vec<Uuid>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<Uuid, V>>> + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.0.push((device, sender));
            !std::mem::replace(&mut queue.1, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    let waiting = {
                        let mut queue = this.queue.lock().unwrap_or_else(PoisonError::into_inner);
                        if queue.0.is_empty() {
                            queue.1 = false;
                            break;
                        }
                        std::mem::take(&mut queue.0)
                    };
                    let read = &read;
                    futures::stream::iter(chunked(waiting))
                        .for_each_concurrent(PARALLEL, |chunk| async move {
                            let devices: Vec<Uuid> = chunk.iter().map(|(d, _)| *d).collect();
                            // A read that panics fails its callers, not the drainer.
                            let outcome = std::panic::AssertUnwindSafe(read(devices)).catch_unwind().await;
                            let outcome =
                                outcome.unwrap_or_else(|_| Err(Error::internal(anyhow::anyhow!("the read panicked"))));
                            match outcome {
                                Ok(found) => {
                                    // A device may be asked for twice in one
                                    // batch (two connections, a gateway).
                                    for (device, sender) in chunk {
                                        let _ = sender.send(Ok(found.get(&device).cloned().unwrap_or_default()));
                                    }
                                }
                                Err(err) => {
                                    let message = match &err {
                                        Error::Internal(cause) => format!("{cause:#}"),
                                        other => other.to_string(),
                                    };
                                    for (_, sender) in chunk {
                                        let _ = sender.send(Err(message.clone()));
                                    }
                                }
                            }
                        })
                        .await;
                }
            });
        }
        match receiver.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(Error::internal(anyhow::anyhow!("a batched device read failed: {message}"))),
            Err(_) => Err(Error::internal(anyhow::anyhow!("a batched device read was dropped"))),
        }
    }
}

fn chunked<T>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut chunks = Vec::with_capacity(items.len().div_ceil(MAX_BATCH));
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        chunks.push(items.by_ref().take(MAX_BATCH).collect());
    }
    chunks
}

/// A device's current update with its deployment (see
/// [`super::poll::current_update`]).
pub type CurrentUpdate = Option<(device_update::Model, deployment::Model)>;

/// The batched reads of the poll: each device's current update and its
/// pending commands.
#[derive(Default)]
pub struct PollReads {
    updates: Arc<Batcher<CurrentUpdate>>,
    commands: Arc<Batcher<Vec<command::Model>>>,
}

impl PollReads {
    pub async fn current_update(&self, db: &DatabaseConnection, device: Uuid) -> Result<CurrentUpdate> {
        let db = db.clone();
        self.updates.load(device, move |devices| current_updates(db.clone(), devices)).await
    }

    pub async fn pending_commands(&self, db: &DatabaseConnection, device: Uuid) -> Result<Vec<command::Model>> {
        let db = db.clone();
        self.commands.load(device, move |devices| pending_commands(db.clone(), devices)).await
    }
}

/// For each of `devices`, the newest update in flight, or a cancel it has
/// not acknowledged, with its deployment.
async fn current_updates(db: DatabaseConnection, devices: Vec<Uuid>) -> Result<HashMap<Uuid, CurrentUpdate>> {
    let rows = device_update::Entity::find()
        .filter(device_update::Column::DeviceId.is_in(devices))
        .filter(super::poll::offered())
        .order_by_desc(device_update::Column::Id)
        .find_also_related(deployment::Entity)
        .all(&db)
        .await?;
    let mut out: HashMap<Uuid, CurrentUpdate> = HashMap::new();
    // Newest first: the first row of a device is its current update.
    for (update, deployment) in rows {
        let Some(deployment) = deployment else { continue };
        out.entry(update.device_id).or_insert(Some((update, deployment)));
    }
    Ok(out)
}

/// For each of `devices`, its QUEUED and DELIVERED commands that have not
/// expired, oldest first, at most as many as one poll hands out.
async fn pending_commands(db: DatabaseConnection, devices: Vec<Uuid>) -> Result<HashMap<Uuid, Vec<command::Model>>> {
    let rows = command::Entity::find()
        .filter(command::Column::DeviceId.is_in(devices))
        .filter(command::Column::State.is_in([CommandState::Queued.as_str(), CommandState::Delivered.as_str()]))
        .filter(command::Column::ExpiresAt.gt(Utc::now()))
        .order_by_asc(command::Column::Id)
        .all(&db)
        .await?;
    let mut out: HashMap<Uuid, Vec<command::Model>> = HashMap::new();
    for row in rows {
        let list = out.entry(row.device_id).or_default();
        if list.len() < crate::service::command::PER_POLL as usize {
            list.push(row);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_at_the_same_time_share_a_read_and_each_gets_its_own_value() {
        let batcher: Arc<Batcher<u32>> = Arc::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let devices: Vec<Uuid> = (0..1_200).map(|_| Uuid::now_v7()).collect();
        let values: HashMap<Uuid, u32> = devices.iter().enumerate().map(|(i, d)| (*d, i as u32 + 1)).collect();
        let values = Arc::new(values);
        let calls = devices.iter().map(|device| {
            let (batcher, reads, values) = (batcher.clone(), reads.clone(), values.clone());
            let device = *device;
            async move {
                batcher
                    .load(device, move |asked| {
                        let (reads, values) = (reads.clone(), values.clone());
                        async move {
                            reads.fetch_add(1, Ordering::SeqCst);
                            // As long as a database read takes, about.
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            assert!(asked.len() <= MAX_BATCH);
                            Ok(asked.iter().filter_map(|d| values.get(d).map(|v| (*d, *v))).collect())
                        }
                    })
                    .await
            }
        });
        let got = futures::future::join_all(calls).await;
        for (device, value) in devices.iter().zip(got) {
            assert_eq!(value.unwrap(), values[device]);
        }
        let reads = reads.load(Ordering::SeqCst);
        assert!((3..=12).contains(&reads), "{reads} reads for 1,200 devices asking at once");
        // The same device asked for twice at once: both get its value.
        let twice = futures::future::join_all(
            (0..2)
                .map(|_| batcher.load(devices[7], |asked| async move { Ok(asked.iter().map(|d| (*d, 8)).collect()) })),
        )
        .await;
        assert!(twice.into_iter().all(|v| v.unwrap() == 8));
        // A device the read leaves out gets the default. (A batcher of its
        // own: a drainer still finishing above would read it with the
        // closure it was started with, as every caller's is the same one in
        // the server.)
        let alone: Arc<Batcher<u32>> = Arc::default();
        let lone = alone.load(Uuid::now_v7(), |_| async { Ok(HashMap::new()) }).await.unwrap();
        assert_eq!(lone, 0);
    }

    #[tokio::test]
    async fn a_failed_read_fails_each_caller_with_a_clear_error() {
        let batcher: Arc<Batcher<u32>> = Arc::default();
        let err = batcher
            .load(Uuid::now_v7(), |_| async { Err(Error::internal(anyhow::anyhow!("the database went away"))) })
            .await
            .unwrap_err();
        let Error::Internal(cause) = err else { panic!("not an internal error: {err}") };
        assert!(format!("{cause:#}").contains("the database went away"), "{cause:#}");
    }
}
