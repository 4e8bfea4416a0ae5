//! The fields of a `Device` that lead to other areas: `Device.updates`,
//! `Device.installations` (deployments) and `Device.commands`.
//!
//! Why a module of its own: `Command.device` and `DeviceUpdate.device`
//! lead back to the device, so `command.rs` and `deployment.rs` name
//! `device.rs`; if `device.rs` named them too, the three would import each
//! other in a loop. This module names all three and nothing names it (an
//! `impl` needs no import). Rule: a field of `Device` whose type belongs
//! to another area goes here, as a `Guarded<T>`.

use async_graphql::{Context, Result};

use super::authz::Guarded;
use super::connection::Conn;
use super::device::Device;
use super::{command, deployment};

#[async_graphql::ComplexObject]
impl Device {
    /// Its updates in every deployment, oldest first (null without DEPLOYMENT_READ).
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn updates(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Guarded<Conn<deployment::DeviceUpdate>> {
        Guarded::fetched(deployment::device_updates(ctx, self.uuid, first, after).await)
    }

    /// Commands sent to it, newest first (null without COMMAND_READ).
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn commands(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Guarded<Conn<command::Command>> {
        Guarded::fetched(command::device_commands(ctx, self.uuid, first, after).await)
    }

    /// What it installed, newest first: from deployments, or reported by
    /// the device itself.
    async fn installations(&self, ctx: &Context<'_>) -> Result<Vec<deployment::Installation>> {
        deployment::device_installations(ctx, self.uuid).await
    }
}
