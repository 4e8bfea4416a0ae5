//! The domain: one module per area. Every rule lives here.
//!
//! A service function takes the [`App`], the caller's [`Ctx`] and its
//! input; it authorizes first (`ctx.require(..)?`), validates, writes in one
//! [`WriteTx`] together with its audit event, and returns domain types.
//! Nothing here knows about GraphQL or HTTP.
//!
//! Rule: the modules here call each other in one direction only, no loop
//! (docs/architecture.md, "Modules, and who calls whom";
//! `tests/it/layers.rs`). A read a lower module needs of a higher one's
//! tables goes into [`catalog`], not into a call upwards.

/// A state machine's states as an enum with its stored names
/// (`as_str`, `parse`).
macro_rules! states {
    ($name:ident { $($variant:ident => $text:literal,)* }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant,)* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            pub fn parse(value: &str) -> $crate::error::Result<Self> {
                match value {
                    $($text => Ok($name::$variant),)*
                    other => Err($crate::error::Error::internal(anyhow::anyhow!("unknown {} {other:?}", stringify!($name)))),
                }
            }
        }
    };
}

pub mod audit;
pub mod authz;
pub mod catalog;
pub mod command;
pub mod content;
pub mod deployment;
pub mod device;
pub mod device_api;
pub mod device_cache;
pub mod device_download;
pub mod device_group;
pub mod device_model;
pub mod enrollment;
pub mod package;
pub mod pagination;
pub mod rate_limit;
pub mod role;
pub mod scan;
pub mod tus;
pub mod upload_sweep;

use sea_orm::DatabaseTransaction;

use crate::app::{App, Event};
use crate::auth::Ctx;
use crate::error::Result;

/// A name people give a thing (a device model, a group): trimmed, 1 to 128
/// characters, no control characters.
pub(crate) fn display_name(name: &str) -> Result<String> {
    crate::domain::display_name(name)
        .ok_or_else(|| crate::error::Error::invalid("name", crate::domain::DISPLAY_NAME_RULE))
}

/// A write transaction that carries its audit events and publishes them
/// once (and only if) it commits.
pub struct WriteTx {
    app: App,
    tx: DatabaseTransaction,
    events: Vec<Event>,
    /// Published here once committed, and told to other processes a
    /// moment later, outside the transaction (see [`WriteTx::notify_soon`]).
    soon: Vec<Event>,
}

impl WriteTx {
    pub async fn begin(app: &App) -> Result<Self> {
        let tx = crate::db::begin_write(&app.db).await?;
        Ok(Self { app: app.clone(), tx, events: Vec::new(), soon: Vec::new() })
    }

    /// The connection to run statements on.
    pub fn conn(&self) -> &DatabaseTransaction {
        &self.tx
    }

    /// Append an audit event to the chain, inside this transaction.
    pub async fn audit(
        &mut self,
        ctx: &Ctx,
        action: &str,
        object_kind: crate::error::ResourceKind,
        object_id: &str,
        details: serde_json::Value,
    ) -> Result<entity::audit_event::Model> {
        let event = audit::append(&self.tx, ctx, action, object_kind.audit_kind(), object_id, details).await?;
        self.events.push(Event::Audit(Box::new(event.clone())));
        Ok(event)
    }

    /// Publish `event` to this process's subscribers once the transaction commits.
    pub fn notify(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Like [`WriteTx::notify`] for news no other process's state depends
    /// on (a report's progress within the same step): published here once
    /// committed, and sent to other processes by the next batch of
    /// `events::Deferred` (within 100 ms, one NOTIFY for many), not by
    /// this transaction. On PostgreSQL a transaction that NOTIFYs takes
    /// the notification queue's lock at commit, which serializes such
    /// commits: progress reports are most of a rollout's writes.
    pub fn notify_soon(&mut self, event: Event) {
        self.soon.push(event);
    }

    pub async fn commit(self) -> Result<()> {
        crate::events::notify(&self.tx, self.app.instance, &self.events).await?;
        self.tx.commit().await?;
        for event in self.events {
            self.app.device_cache.invalidate(&event);
            self.app.publish(event);
        }
        if !self.soon.is_empty() {
            self.app.deferred_events.push(&self.soon);
            for event in self.soon {
                self.app.device_cache.invalidate(&event);
                self.app.publish(event);
            }
        }
        Ok(())
    }
}
